//! The merchant query API: `POST /api/v1/query`, plus `/healthz` and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use clickflow_dataflows::registry::family_of;
use clickflow_operators::time::{bucket_of, Granularity};
use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::collector::error_reply;
use crate::log::Log;

pub struct Api {
    pub pool: deadpool_postgres::Pool,
    pub log: Option<Arc<dyn Log>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub site_id: String,
    pub metrics: Vec<String>,
    pub date_range: Vec<String>,
    #[serde(default)]
    pub dimensions: Vec<String>,
}

#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(reason: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, reason.into())
    }
    fn unavailable(e: impl std::fmt::Display) -> ApiError {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {e}"),
        )
    }
}

/// Parses one end of a date range: a date (midnight in the site's zone; `to` dates are
/// inclusive, so they mean the following midnight) or an RFC 3339 instant.
fn parse_bound(s: &str, tz: Tz, is_end: bool) -> Result<i64, ApiError> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let d = if is_end {
            d.succ_opt()
                .ok_or_else(|| ApiError::bad("date out of range"))?
        } else {
            d
        };
        let midnight = d
            .and_hms_opt(0, 0, 0)
            .ok_or_else(|| ApiError::bad("date out of range"))?;
        let local = tz
            .from_local_datetime(&midnight)
            .earliest()
            .ok_or_else(|| ApiError::bad(format!("{s}: no midnight in {tz}")))?;
        return Ok(bucket_of(local.timestamp_millis(), Granularity::Day, tz).start);
    }
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .map_err(|_| {
            ApiError::bad(format!(
                "date_range: {s:?} is neither YYYY-MM-DD nor RFC 3339"
            ))
        })
}

fn label(ms: i64, g: Granularity, tz: Tz) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    match g {
        Granularity::Day => t.with_timezone(&tz).format("%Y-%m-%d").to_string(),
        _ => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

impl Api {
    /// Finds the site of a bearer key: `None` is a 401.
    async fn site_of_key(&self, key: &str) -> Result<Option<(String, String)>, ApiError> {
        let client = self.pool.get().await.map_err(ApiError::unavailable)?;
        let row = client
            .query_opt(
                "SELECT id, time_zone FROM sites WHERE api_key = $1",
                &[&key],
            )
            .await
            .map_err(ApiError::unavailable)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    pub async fn query(&self, auth: Option<String>, body: &[u8]) -> Result<Value, ApiError> {
        let key = auth
            .as_deref()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError(
                    StatusCode::UNAUTHORIZED,
                    "missing Authorization: Bearer <site API key>".into(),
                )
            })?;
        let (key_site, tz_name) = self
            .site_of_key(key)
            .await?
            .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unknown API key".into()))?;
        let q: Query = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad(format!("invalid query: {e}")))?;
        if q.site_id != key_site {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("this API key does not grant access to site {:?}", q.site_id),
            ));
        }
        let tz: Tz = tz_name.parse().unwrap_or(Tz::UTC);
        if q.metrics.is_empty() {
            return Err(ApiError::bad("metrics: name at least one metric"));
        }
        for m in &q.metrics {
            if family_of(m).is_none() {
                return Err(ApiError::bad(format!(
                    "metrics: unknown metric {m:?} (known: pageviews, events, visitors)"
                )));
            }
        }
        let [from_s, to_s] = q.date_range.as_slice() else {
            return Err(ApiError::bad("date_range must be [from, to]"));
        };
        let (from, to) = (
            parse_bound(from_s, tz, false)?,
            parse_bound(to_s, tz, true)?,
        );
        if from >= to {
            return Err(ApiError::bad("date_range: from must be before to"));
        }
        let time_dimension = match q.dimensions.as_slice() {
            [] => None,
            [d] => match d.strip_prefix("time:").and_then(Granularity::parse) {
                Some(g) => Some(g),
                None => {
                    return Err(ApiError::bad(format!(
                        "dimensions: unknown dimension {d:?} (time:minute, time:hour, time:day)"
                    )))
                }
            },
            _ => {
                return Err(ApiError::bad(
                    "dimensions: at most one dimension (time:minute, time:hour or time:day)",
                ))
            }
        };
        let max_buckets = 50_000;
        let granularity = time_dimension.unwrap_or_else(|| {
            if bucket_of(from, Granularity::Day, tz).start == from
                && bucket_of(to, Granularity::Day, tz).start == to
            {
                Granularity::Day
            } else if from % 3_600_000 == 0 && to % 3_600_000 == 0 {
                Granularity::Hour
            } else {
                Granularity::Minute
            }
        });
        let buckets = {
            let mut out = Vec::new();
            let mut t = bucket_of(from, granularity, tz).start;
            while t < to {
                out.push(t);
                if out.len() > max_buckets {
                    return Err(ApiError::bad(format!(
                        "date_range spans more than {max_buckets} {} buckets",
                        granularity.as_str()
                    )));
                }
                t = bucket_of(t, granularity, tz).end;
            }
            out
        };
        let client = self.pool.get().await.map_err(ApiError::unavailable)?;
        let generation: i32 = client
            .query_one("SELECT generation FROM active_generation", &[])
            .await
            .map_err(ApiError::unavailable)?
            .get(0);
        let rows = client
            .query(
                "SELECT (extract(epoch FROM bucket) * 1000)::bigint, metric, value FROM rollups
                  WHERE site_id = $1 AND generation = $2 AND granularity = $3 AND family = 'traffic'
                    AND dimension = '' AND metric = ANY($4)
                    AND bucket >= to_timestamp($5::bigint / 1000.0) AND bucket < to_timestamp($6::bigint / 1000.0)",
                &[&q.site_id, &generation, &granularity.as_str(), &q.metrics, &buckets.first().copied().unwrap_or(from), &to],
            )
            .await
            .map_err(ApiError::unavailable)?;
        let frontier: Option<i64> = client
            .query_one(
                "SELECT min(frontier_ms) FROM progress WHERE generation = $1",
                &[&generation],
            )
            .await
            .map_err(ApiError::unavailable)?
            .get(0);
        let mut values: BTreeMap<(i64, String), i64> = BTreeMap::new();
        for r in rows {
            values.insert((r.get(0), r.get(1)), r.get(2));
        }
        let value = |b: i64, m: &str| values.get(&(b, m.to_owned())).copied().unwrap_or(0);
        let results: Vec<Value> = match time_dimension {
            Some(g) => buckets
                .iter()
                .map(|b| json!({ "dimensions": [label(*b, g, tz)], "metrics": q.metrics.iter().map(|m| value(*b, m)).collect::<Vec<_>>() }))
                .collect(),
            None => {
                let mut metrics = Vec::new();
                for m in &q.metrics {
                    if m == "visitors" && buckets.len() != 1 {
                        // Distinct counts do not add up across buckets; refusing beats a wrong number.
                        return Err(ApiError::bad(
                            "visitors over a range of several buckets is not a sum: ask with a time dimension, or for one day/hour/minute",
                        ));
                    }
                    metrics.push(buckets.iter().map(|b| value(*b, m)).sum::<i64>());
                }
                vec![json!({ "dimensions": [], "metrics": metrics })]
            }
        };
        Ok(json!({
            "results": results,
            "meta": {
                "site_id": q.site_id,
                "time_zone": tz_name,
                "metrics": q.metrics,
                "dimensions": q.dimensions,
                "granularity": granularity.as_str(),
                "date_range": [rfc3339(from), rfc3339(to)],
                "generation": generation,
                "complete_until": frontier.map(rfc3339),
            }
        }))
    }

    async fn health(&self) -> Result<(), String> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| format!("database: {e}"))?;
        client
            .query_one("SELECT 1", &[])
            .await
            .map_err(|e| format!("database: {e}"))?;
        if let Some(log) = &self.log {
            log.partitions().map_err(|e| format!("log: {e}"))?;
        }
        Ok(())
    }
}

pub fn routes(
    api: Arc<Api>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let a1 = api.clone();
    let query = warp::path!("api" / "v1" / "query")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::bytes())
        .then(move |auth: Option<String>, body: bytes::Bytes| {
            let api = a1.clone();
            async move {
                match api.query(auth, &body).await {
                    Ok(v) => warp::reply::json(&v).into_response(),
                    Err(ApiError(status, reason)) => error_reply(status, &reason, None),
                }
            }
        });
    let a2 = api.clone();
    let health = warp::path!("healthz").and(warp::get()).then(move || {
        let api = a2.clone();
        async move {
            match api.health().await {
                Ok(()) => warp::reply::json(&json!({"status": "ok"})).into_response(),
                Err(e) => error_reply(StatusCode::SERVICE_UNAVAILABLE, &e, None),
            }
        }
    });
    let metrics = warp::path!("metrics").and(warp::get()).map(|| {
        warp::reply::with_header(
            crate::metrics::render(),
            "content-type",
            "text/plain; version=0.0.4",
        )
        .into_response()
    });
    query.or(health).unify().or(metrics).unify()
}

pub fn pool(url: &str, size: usize) -> anyhow::Result<deadpool_postgres::Pool> {
    let pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
    let manager = deadpool_postgres::Manager::new(pg, tokio_postgres::NoTls);
    deadpool_postgres::Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| anyhow::anyhow!("database pool: {e}"))
}
