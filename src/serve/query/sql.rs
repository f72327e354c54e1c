//! Step 3: the rollup rows a plan names, read from Postgres.

use std::collections::BTreeMap;

use super::metrics::Stored;
use super::parse::Request;
use super::plan::Plan;
use super::Error;

/// Summed stored metrics by `(bucket, breakdown value)`, and the dimension-less totals by
/// bucket (the conversion-rate denominator).
#[derive(Debug, Default)]
pub struct Sums {
    pub cells: BTreeMap<(i64, String), BTreeMap<Stored, i64>>,
    pub totals: BTreeMap<i64, BTreeMap<Stored, i64>>,
}

/// The generation readers are switched to.
pub async fn generation(client: &tokio_postgres::Client) -> Result<i32, Error> {
    Ok(client
        .query_one("SELECT generation FROM active_generation", &[])
        .await
        .map_err(Error::unavailable)?
        .get(0))
}

/// The ingest time up to which every partition's results are committed.
pub async fn frontier(
    client: &tokio_postgres::Client,
    generation: i32,
) -> Result<Option<i64>, Error> {
    Ok(client
        .query_one(
            "SELECT min(frontier_ms) FROM progress WHERE generation = $1",
            &[&generation],
        )
        .await
        .map_err(Error::unavailable)?
        .get(0))
}

pub async fn sums(
    client: &tokio_postgres::Client,
    r: &Request,
    plan: &Plan,
    generation: i32,
) -> Result<Sums, Error> {
    let mut out = Sums::default();
    let first = plan.buckets.first().copied().unwrap_or(r.from);
    for (total, group) in [(false, r.shape.breakdown.as_str()), (true, "")] {
        let pairs: Vec<Stored> = plan
            .wanted
            .iter()
            .filter(|(_, t)| *t == total)
            .map(|(s, _)| *s)
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let families: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        let metrics: Vec<&str> = pairs.iter().map(|p| p.1).collect();
        let rows = client
            .query(
                "SELECT (extract(epoch FROM r.bucket) * 1000)::bigint, r.family, w.metric, r.dimension_value,
                        (r.metrics ->> w.metric)::bigint
                   FROM rollups r JOIN unnest($4::text[], $5::text[]) AS w(family, metric)
                     ON r.family = w.family AND r.metrics ? w.metric
                  WHERE site_id = $1 AND generation = $2 AND granularity = $3 AND dimension = $6
                    AND bucket >= to_timestamp($7::bigint / 1000.0) AND bucket < to_timestamp($8::bigint / 1000.0)",
                &[&r.site_id, &generation, &plan.granularity.as_str(), &families, &metrics, &group, &first, &r.to],
            )
            .await
            .map_err(Error::unavailable)?;
        for row in rows {
            let family: String = row.get(1);
            let metric: String = row.get(2);
            let Some(stored) = pairs.iter().find(|p| p.0 == family && p.1 == metric) else {
                continue;
            };
            let value: String = row.get(3);
            // Totals (the conversion-rate denominator) are not of the filtered dimension.
            if !total && !r.shape.filters.iter().all(|f| f.keeps(&value)) {
                continue;
            }
            let target = if total {
                out.totals.entry(row.get(0)).or_default()
            } else {
                out.cells.entry((row.get(0), value)).or_default()
            };
            target.insert(*stored, row.get(4));
        }
    }
    Ok(out)
}

/// The visitor sketches (`(bucket, breakdown value, registers)`) of `family` and
/// `dimension` (the request's breakdown, or `""` for totals) in the plan's buckets, filtered
/// as the request says.
pub async fn sketches(
    client: &tokio_postgres::Client,
    r: &Request,
    plan: &Plan,
    generation: i32,
    (family, dimension): (&str, &str),
) -> Result<Vec<(i64, String, Vec<u8>)>, Error> {
    let first = plan.buckets.first().copied().unwrap_or(r.from);
    let rows = client
        .query(
            "SELECT (extract(epoch FROM bucket) * 1000)::bigint, dimension_value, sketch FROM rollups
              WHERE site_id = $1 AND generation = $2 AND granularity = $3 AND family = $4
                AND dimension = $5 AND sketch IS NOT NULL
                AND bucket >= to_timestamp($6::bigint / 1000.0) AND bucket < to_timestamp($7::bigint / 1000.0)",
            &[&r.site_id, &generation, &plan.granularity.as_str(), &family, &dimension, &first, &r.to],
        )
        .await
        .map_err(Error::unavailable)?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .filter(|(_, value, _): &(i64, String, Vec<u8>)| {
            dimension.is_empty() || r.shape.filters.iter().all(|f| f.keeps(value))
        })
        .collect())
}
