//! A merchant's question, answered from the rollups in five steps, one module each:
//! [`parse`] (the query checked and resolved against its site) → [`plan`] (which stored
//! buckets and sums) → [`sql`] (read them) → [`sketch`] (merge visitor sketches where a
//! row spans several buckets) → [`answer`] (evaluate, order, shape). [`metrics`] says what
//! each metric means. `api` only routes and authorizes.

pub mod answer;
pub mod metrics;
pub mod parse;
pub mod plan;
pub mod sketch;
pub mod sql;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{json, Value};

pub use metrics::{evaluate, formula, Cell, Formula, Stored};
pub use parse::{shape, DateRange, Filter, FilterOp, Period, Query, Request, Shape};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The query is wrong: a 400 with the reason.
    #[error("{0}")]
    Bad(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Postgres errors say "db error" at the top and the reason in their sources.
    pub fn unavailable(e: impl std::error::Error) -> Error {
        let mut reason = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        Error::Unavailable(reason)
    }
}

/// An instant as the API writes it (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Answers `q` for its site (zone `tz_name`) at instant `now`.
pub async fn run(
    client: &tokio_postgres::Client,
    q: &Query,
    tz_name: &str,
    now: i64,
    minute_retention_secs: u64,
) -> Result<Value, Error> {
    let tz: Tz = tz_name.parse().unwrap_or(Tz::UTC);
    let request = parse::parse(q, tz, now).map_err(Error::Bad)?;
    let kept = Kept {
        minutes_from: (minute_retention_secs > 0)
            .then(|| now - minute_retention_secs as i64 * 1000),
        minute_retention_secs,
    };
    let generation = sql::generation(client).await?;
    let (results, granularity, estimated) = period(client, &request, generation, &kept).await?;
    let comparison = match q.compare {
        Some(_) => {
            let (from, to) = parse::previous_period(request.from, request.to, tz);
            let before = Request {
                from,
                to,
                ..request.clone()
            };
            let (results, _, _) = period(client, &before, generation, &kept).await?;
            json!({"date_range": [rfc3339(from), rfc3339(to)], "results": results})
        }
        None => Value::Null,
    };
    let frontier = sql::frontier(client, generation).await?;
    let mut answer = json!({
        "results": results,
        "meta": {
            "site_id": q.site_id,
            "time_zone": tz_name,
            "metrics": q.metrics,
            "dimensions": q.dimensions,
            "filters": q.filters,
            "granularity": request.shape.time.map_or(granularity.as_str(), Period::as_str),
            "date_range": [rfc3339(request.from), rfc3339(request.to)],
            "generation": generation,
            "complete_until": frontier.map(rfc3339),
            "estimated": if estimated {
                json!({"visitors": "HyperLogLog over the row's buckets: nearly exact while each bucket holds up to 1024 visitors (2^25 registers), about 1.6 % standard error beyond (4096 registers); see the README"})
            } else {
                Value::Null
            },
        }
    });
    if !comparison.is_null() {
        answer["comparison"] = comparison;
    }
    Ok(answer)
}

/// What the store still holds: minute rows are dropped after `database.minute_retention_secs`.
struct Kept {
    minutes_from: Option<i64>,
    minute_retention_secs: u64,
}

impl Kept {
    /// A plan that reads minute buckets the retention has dropped would answer zeros: refused.
    fn check(&self, plan: &plan::Plan) -> Result<(), String> {
        let dropped = self
            .minutes_from
            .zip(plan.buckets.first())
            .is_some_and(|(from, first)| *first < from);
        if plan.granularity == clickflow_operators::time::Granularity::Minute && dropped {
            return Err(format!(
                "minute buckets are kept for {} (database.minute_retention_secs = {}) and this date_range starts before that: use time:hour or an hour-aligned date_range",
                span(self.minute_retention_secs),
                self.minute_retention_secs
            ));
        }
        Ok(())
    }
}

/// `secs` as people say it: "30 days", "6 hours", "90 s".
fn span(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3_600 == 0 => format!("{} hours", s / 3_600),
        s => format!("{s} s"),
    }
}

/// Steps 2–5 for one period: the results, the granularity read, and whether visitors were
/// estimated from sketches.
async fn period(
    client: &tokio_postgres::Client,
    request: &Request,
    generation: i32,
    kept: &Kept,
) -> Result<(Vec<Value>, clickflow_operators::time::Granularity, bool), Error> {
    let plan = plan::plan(request).map_err(Error::Bad)?;
    kept.check(&plan).map_err(Error::Bad)?;
    let sums = sql::sums(client, request, &plan, generation).await?;
    let mut rows = answer::group(request, &plan, &sums);
    let multi_bucket = sketch::merges(&plan, &rows);
    let merged = sketch::family_to_merge(request).filter(|_| multi_bucket);
    if let Some(family) = merged {
        let dimension = request.shape.breakdown.as_str();
        let sketches =
            sql::sketches(client, request, &plan, generation, (family, dimension)).await?;
        sketch::merge(&plan, &mut rows, sketches)?;
    }
    if let Some(family) = sketch::totals_to_merge(request).filter(|_| multi_bucket) {
        let sketches = sql::sketches(client, request, &plan, generation, (family, "")).await?;
        sketch::merge_totals(&plan, &mut rows, sketches)?;
    }
    let results = answer::results(request, &rows).map_err(Error::Bad)?;
    Ok((results, plan.granularity, merged.is_some()))
}
