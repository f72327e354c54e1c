//! The Postgres side of the transactional sink: one transaction per commit batch holding the
//! absolute values of changed rollup rows and the offsets they reflect.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clickflow_dataflows::metric::Cell;
use clickflow_dataflows::MetricKey;
use clickflow_operators::sink::{CommitBatch, Transaction};
use postgres::{Client, GenericClient};

use crate::store;

/// Writes into one generation; `live` sinks stop (and flag `retired`) once a replay switched
/// readers to another generation, so two jobs never write the same rows.
pub struct PgSink {
    url: String,
    client: Option<Client>,
    generation: i32,
    live: bool,
    seal_lateness_ms: u64,
    partitioned: Option<bool>,
    /// Months whose partition is known to exist (committed, so never rolled back).
    months: HashSet<(i32, u32)>,
    pub retired: Arc<AtomicBool>,
}

impl PgSink {
    pub fn new(
        url: &str,
        generation: i32,
        live: bool,
        seal_lateness_ms: u64,
        retired: Arc<AtomicBool>,
    ) -> PgSink {
        PgSink {
            url: url.to_owned(),
            client: None,
            generation,
            live,
            seal_lateness_ms,
            partitioned: None,
            months: HashSet::new(),
            retired,
        }
    }

    fn write(&mut self, batch: &CommitBatch<MetricKey, Cell>) -> anyhow::Result<()> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(store::connect(&self.url)?);
        }
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("no connection"))?;
        if self.partitioned.is_none() {
            self.partitioned = Some(store::layout(client)? == store::Layout::NativePartitions);
        }
        let mut tx = client.transaction()?;
        let active = store::active_generation(&mut tx)?;
        let status: String = tx
            .query_one(
                "SELECT status FROM generations WHERE id = $1 FOR SHARE",
                &[&self.generation],
            )?
            .get(0);
        let allowed = if self.live {
            active == self.generation
        } else {
            status == "building"
        };
        if !allowed {
            self.retired.store(true, Ordering::SeqCst);
            anyhow::bail!(
                "generation {} is no longer writable (active is {active}, status {status})",
                self.generation
            );
        }
        let mut created = HashSet::new();
        if self.partitioned == Some(true) {
            for (k, _) in &batch.upserts {
                let month = store::partition_month(k.bucket_start)?;
                if !self.months.contains(&month) && created.insert(month) {
                    store::ensure_partition(&mut tx, month)?;
                }
            }
        }
        let lateness = self.seal_lateness_ms as i64;
        let frontier = batch.frontier.min(i64::MAX as u64) as i64;
        if let Some(from) = batch.replace_from {
            tx.execute(
                "DELETE FROM rollups WHERE generation = $1 AND bucket >= to_timestamp($2::bigint / 1000.0)
                   AND coalesce(open_until, bucket_end) + $3::bigint * interval '1 millisecond' > to_timestamp($4::bigint / 1000.0)",
                &[&self.generation, &from.max(-62_135_596_800_000), &lateness, &frontier],
            )?;
        }
        if !batch.deletes.is_empty() {
            let empty = Cell::default();
            let cols = Columns::of(batch.deletes.iter().map(|k| (k, &empty)));
            tx.execute(
                "DELETE FROM rollups r USING unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::text[])
                    AS d(site_id, granularity, bucket, family, dimension, dimension_value)
                 WHERE r.generation = $1 AND r.site_id = d.site_id AND r.granularity = d.granularity
                   AND r.bucket = to_timestamp(d.bucket::float8 / 1000) AND r.family = d.family
                   AND r.dimension = d.dimension AND r.dimension_value = d.dimension_value",
                &[&self.generation, &cols.site, &cols.granularity, &cols.bucket, &cols.family, &cols.dimension, &cols.dimension_value],
            )?;
        }
        upsert(
            &mut tx,
            self.generation,
            batch.upserts.iter().map(|(k, c)| (k, c)),
        )?;
        let partitions: Vec<i32> = batch.progress.iter().map(|(p, _)| *p as i32).collect();
        let offsets: Vec<i64> = batch.progress.iter().map(|(_, o)| *o as i64).collect();
        tx.execute(
            "INSERT INTO progress (generation, partition, next_offset, frontier_ms)
             SELECT $1, p, o, $4 FROM unnest($2::int4[], $3::int8[]) AS u(p, o)
             ON CONFLICT (generation, partition) DO UPDATE
               SET next_offset = EXCLUDED.next_offset, frontier_ms = EXCLUDED.frontier_ms, updated_at = now()",
            &[&self.generation, &partitions, &offsets, &frontier],
        )?;
        tx.commit()?;
        // Only now: a partition created in a transaction that failed does not exist.
        self.months.extend(created);
        Ok(())
    }
}

/// Writes the absolute values of `rows` into `generation`, in one statement: `metrics` is a
/// JSON object of the row's metrics, `sketch` its visitor sketch.
pub fn upsert<'a>(
    tx: &mut impl GenericClient,
    generation: i32,
    rows: impl Iterator<Item = (&'a MetricKey, &'a Cell)>,
) -> anyhow::Result<u64> {
    let cols = Columns::of(rows);
    if cols.site.is_empty() {
        return Ok(0);
    }
    Ok(tx.execute(
        "INSERT INTO rollups (generation, site_id, granularity, bucket, bucket_end, family, dimension, dimension_value, metrics, sketch, open_until)
         SELECT $1, site_id, granularity, to_timestamp(bucket::float8 / 1000), to_timestamp(bucket_end::float8 / 1000),
                family, dimension, dimension_value, metrics::jsonb, sketch, to_timestamp(open_until::float8 / 1000)
           FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bytea[], $11::int8[])
             AS u(site_id, granularity, bucket, bucket_end, family, dimension, dimension_value, metrics, sketch, open_until)
         ON CONFLICT (site_id, generation, granularity, family, dimension, dimension_value, bucket)
         DO UPDATE SET metrics = EXCLUDED.metrics, sketch = EXCLUDED.sketch, open_until = EXCLUDED.open_until, updated_at = now()",
        &[
            &generation, &cols.site, &cols.granularity, &cols.bucket, &cols.bucket_end, &cols.family,
            &cols.dimension, &cols.dimension_value, &cols.metrics, &cols.sketch, &cols.open_until,
        ],
    )?)
}

#[derive(Default)]
struct Columns {
    site: Vec<String>,
    granularity: Vec<String>,
    bucket: Vec<i64>,
    bucket_end: Vec<i64>,
    family: Vec<String>,
    dimension: Vec<String>,
    dimension_value: Vec<String>,
    metrics: Vec<String>,
    sketch: Vec<Option<Vec<u8>>>,
    open_until: Vec<i64>,
}

impl Columns {
    fn of<'a>(rows: impl Iterator<Item = (&'a MetricKey, &'a Cell)>) -> Columns {
        let mut c = Columns::default();
        for (k, cell) in rows {
            c.site.push(k.site.clone());
            c.granularity.push(k.granularity.as_str().to_owned());
            c.bucket.push(k.bucket_start);
            c.bucket_end.push(k.bucket_end);
            c.family.push(k.family.clone());
            c.dimension.push(k.dimension.clone());
            c.dimension_value.push(k.dimension_value.clone());
            c.open_until.push(k.open_until);
            let mut metrics = serde_json::Map::new();
            for (name, v) in &cell.numbers {
                metrics.insert((*name).to_owned(), (*v).into());
            }
            c.metrics
                .push(serde_json::Value::Object(metrics).to_string());
            c.sketch
                .push(cell.sketch.as_ref().map(|(_, bytes)| bytes.clone()));
        }
        c
    }
}

impl Transaction<MetricKey, Cell> for PgSink {
    fn commit(&mut self, batch: &CommitBatch<MetricKey, Cell>) -> Result<(), String> {
        let result = self.write(batch).map_err(|e| format!("{e:#}"));
        if result.is_err() {
            // A failed statement leaves the connection usable, but a dropped one must be rebuilt.
            if self.client.as_ref().is_some_and(|c| c.is_closed()) {
                self.client = None;
            }
        } else {
            crate::telemetry::SINK_ROWS.inc_by((batch.upserts.len() + batch.deletes.len()) as u64);
            crate::telemetry::SINK_FRONTIER.set(batch.frontier.min(i64::MAX as u64) as i64);
        }
        result
    }
}
