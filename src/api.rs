//! The merchant query API: `POST /api/v1/query`, plus `/healthz` and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use clickflow_dataflows::metric::VALUE_SEPARATOR;
use clickflow_operators::time::{bucket_of, Granularity};
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::collector::error_reply;
use crate::log::Log;
use crate::query::{self, Query};

pub struct Api {
    pub pool: deadpool_postgres::Pool,
    pub log: Option<Arc<dyn Log>>,
    /// Present when `api.admin_token` is set: enables `/api/v1/admin/*`.
    pub admin: Option<Admin>,
}

/// What the admin endpoints need beyond the pool: the token, the log to append erase
/// records to, and the configuration the recompute runs the pipeline with.
pub struct Admin {
    pub token: String,
    pub config: crate::config::Config,
    pub log: Arc<dyn Log>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseRequest {
    site_id: String,
    visitor_id: String,
}

#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(reason: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, reason.into())
    }
    fn unavailable(e: impl std::error::Error) -> ApiError {
        // Postgres errors say "db error" at the top and the reason in their source.
        let mut reason = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {reason}"),
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
        if !(1970..=9999).contains(&d.year()) {
            return Err(ApiError::bad(format!(
                "date_range: {s} is outside 1970-9999"
            )));
        }
        // Midday always exists; the day starts where bucket_of says (some zones skip midnight).
        let midday = d
            .and_hms_opt(12, 0, 0)
            .ok_or_else(|| ApiError::bad("date out of range"))?;
        let local = tz
            .from_local_datetime(&midday)
            .earliest()
            .ok_or_else(|| ApiError::bad(format!("{s}: no midday in {tz}")))?;
        return Ok(bucket_of(local.timestamp_millis(), Granularity::Day, tz).start);
    }
    let ms = DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .map_err(|_| {
            ApiError::bad(format!(
                "date_range: {s:?} is neither YYYY-MM-DD nor RFC 3339"
            ))
        })?;
    // 1970-01-01 .. 10000-01-01
    if !(0..253_402_300_800_000).contains(&ms) {
        return Err(ApiError::bad(format!(
            "date_range: {s} is outside 1970-9999"
        )));
    }
    Ok(ms)
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

    /// Authenticates a site API key and checks it grants `site_id`; returns the site's zone.
    async fn authorize(&self, auth: Option<&str>, site_id: &str) -> Result<String, ApiError> {
        let key = auth
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
        if site_id != key_site {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("this API key does not grant access to site {site_id:?}"),
            ));
        }
        Ok(tz_name)
    }

    pub async fn query(&self, auth: Option<String>, body: &[u8]) -> Result<Value, ApiError> {
        if auth.is_none() {
            self.authorize(None, "").await?;
        }
        let q: Query = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad(format!("invalid query: {e}")))?;
        let tz_name = self.authorize(auth.as_deref(), &q.site_id).await?;
        let tz: Tz = tz_name.parse().unwrap_or(Tz::UTC);
        if q.metrics.is_empty() {
            return Err(ApiError::bad("metrics: name at least one metric"));
        }
        let shape = query::shape(&q).map_err(ApiError::bad)?;
        let formulas = q
            .metrics
            .iter()
            .map(|m| query::formula(m, &shape.breakdown))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad)?;
        let folds_values = !shape.breakdown_shown
            && shape
                .filters
                .iter()
                .any(|f| !(f.op == query::FilterOp::Is && f.values.len() == 1));
        if folds_values && formulas.iter().any(|f| f.is_distinct()) {
            return Err(ApiError::bad(
                "visitors of several breakdown values are not a sum: add the filtered dimension to dimensions, or filter to one value with \"is\"",
            ));
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
        let coarsest_materialized = if shape.breakdown.is_empty()
            && formulas.iter().all(|f| {
                f.stored()
                    .iter()
                    .all(|((family, _), _)| *family == "traffic")
            }) {
            Granularity::Minute
        } else {
            Granularity::Hour
        };
        let granularity = shape.time.unwrap_or_else(|| {
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
        if granularity == Granularity::Minute && coarsest_materialized != Granularity::Minute {
            return Err(ApiError::bad(
                "minute buckets exist for pageviews, events, visitors and bot_events only: use time:hour or an hour-aligned date_range",
            ));
        }
        let max_buckets = 50_000;
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
        let mut wanted: Vec<(query::Stored, bool)> =
            formulas.iter().flat_map(|f| f.stored()).collect();
        wanted.sort();
        wanted.dedup();
        let client = self.pool.get().await.map_err(ApiError::unavailable)?;
        let generation: i32 = client
            .query_one("SELECT generation FROM active_generation", &[])
            .await
            .map_err(ApiError::unavailable)?
            .get(0);
        let first = buckets.first().copied().unwrap_or(from);
        // (bucket, breakdown value) → stored metric → value; totals per bucket apart.
        let mut cells: BTreeMap<(i64, String), BTreeMap<query::Stored, i64>> = BTreeMap::new();
        let mut totals: BTreeMap<i64, BTreeMap<query::Stored, i64>> = BTreeMap::new();
        for (total, group) in [(false, &shape.breakdown), (true, &String::new())] {
            let pairs: Vec<query::Stored> = wanted
                .iter()
                .filter(|(_, t)| *t == total)
                .map(|(s, _)| *s)
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let families: Vec<String> = pairs.iter().map(|p| p.0.to_owned()).collect();
            let metrics: Vec<String> = pairs.iter().map(|p| p.1.to_owned()).collect();
            let rows = client
                .query(
                    "SELECT (extract(epoch FROM r.bucket) * 1000)::bigint, r.family, w.metric, r.dimension_value,
                            (r.metrics ->> w.metric)::bigint
                       FROM rollups r JOIN unnest($4::text[], $5::text[]) AS w(family, metric)
                         ON r.family = w.family AND r.metrics ? w.metric
                      WHERE site_id = $1 AND generation = $2 AND granularity = $3 AND dimension = $6
                        AND bucket >= to_timestamp($7::bigint / 1000.0) AND bucket < to_timestamp($8::bigint / 1000.0)",
                    &[&q.site_id, &generation, &granularity.as_str(), &families, &metrics, group, &first, &to],
                )
                .await
                .map_err(ApiError::unavailable)?;
            for r in rows {
                let family: String = r.get(1);
                let metric: String = r.get(2);
                let Some(stored) = pairs.iter().find(|p| p.0 == family && p.1 == metric) else {
                    continue;
                };
                let value: String = r.get(3);
                // Totals (the conversion-rate denominator) are not of the filtered dimension.
                if !total && !shape.filters.iter().all(|f| f.keeps(&value)) {
                    continue;
                }
                let target = if total {
                    totals.entry(r.get(0)).or_default()
                } else {
                    cells.entry((r.get(0), value)).or_default()
                };
                target.insert(*stored, r.get(4));
            }
        }
        let frontier: Option<i64> = client
            .query_one(
                "SELECT min(frontier_ms) FROM progress WHERE generation = $1",
                &[&generation],
            )
            .await
            .map_err(ApiError::unavailable)?
            .get(0);
        // Result rows: (time label or none, breakdown value or none) → summed cell.
        let mut grouped: BTreeMap<(Option<i64>, Option<String>), query::Cell> = BTreeMap::new();
        let key_of = |bucket: i64, value: &str| {
            (
                shape.time.map(|_| bucket),
                shape.breakdown_shown.then(|| value.to_owned()),
            )
        };
        if !shape.breakdown_shown {
            // every time slot shows up, zero-filled
            for b in &buckets {
                grouped.entry(key_of(*b, "")).or_default();
            }
        }
        for ((bucket, value), sums) in &cells {
            let cell = grouped.entry(key_of(*bucket, value)).or_default();
            cell.values.insert(value.clone());
            for (s, v) in sums {
                *cell.sums.entry(*s).or_default() += v;
            }
        }
        for (key, cell) in grouped.iter_mut() {
            // A cell covers the buckets of its time slot, or all of them without time.
            cell.buckets = if shape.time.is_some() {
                1
            } else {
                buckets.len()
            };
            for (b, sums) in &totals {
                if key.0.is_none_or(|t| t == *b) {
                    for (s, v) in sums {
                        *cell.totals.entry(*s).or_default() += v;
                    }
                }
            }
        }
        // Visitors over several hours or days: merge the buckets' HyperLogLog registers (the
        // `visitors_hll` rows beside the visitors rows: traffic's for totals).
        let sketched =
            clickflow_dataflows::registry::family_of("visitors_hll", &shape.breakdown).is_some();
        let distinct_family = formulas
            .iter()
            .find_map(|f| match f {
                query::Formula::Sum {
                    stored: (family, "visitors"),
                    distinct: true,
                } => Some(*family),
                _ => None,
            })
            .filter(|_| sketched);
        let mut estimated = false;
        if let (Some(family), None, true, false) = (
            distinct_family,
            shape.time,
            buckets.len() > 1,
            granularity == Granularity::Minute,
        ) {
            let dimension = shape.breakdown.as_str();
            let rows = client
                .query(
                    "SELECT dimension_value, sketch FROM rollups
                      WHERE site_id = $1 AND generation = $2 AND granularity = $3 AND family = $4
                        AND dimension = $5 AND sketch IS NOT NULL
                        AND bucket >= to_timestamp($6::bigint / 1000.0) AND bucket < to_timestamp($7::bigint / 1000.0)",
                    &[&q.site_id, &generation, &granularity.as_str(), &family, &dimension, &first, &to],
                )
                .await
                .map_err(ApiError::unavailable)?;
            // breakdown value (empty for totals) → registers
            let mut registers: BTreeMap<String, Vec<(u16, u8)>> = BTreeMap::new();
            for r in &rows {
                let value: String = r.get(0);
                if !shape.breakdown.is_empty() && !shape.filters.iter().all(|f| f.keeps(&value)) {
                    continue;
                }
                let sketch: Vec<u8> = r.get(1);
                let decoded = clickflow_dataflows::uniques::decode(&sketch).map_err(|e| {
                    ApiError(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("a stored visitor sketch is unreadable: {e}"),
                    )
                })?;
                registers.entry(value).or_default().extend(decoded);
            }
            for ((_, value), cell) in grouped.iter_mut() {
                // Without a shown breakdown (totals, or one filtered value) every kept
                // register belongs to the one result row.
                let regs: Vec<(u16, u8)> = match value {
                    Some(v) => registers.get(v).cloned().unwrap_or_default(),
                    None => registers.values().flatten().copied().collect(),
                };
                cell.visitors_estimate = Some(clickflow_dataflows::uniques::estimate(regs));
            }
            estimated = true;
        }
        let mut results: Vec<(Option<i64>, Option<String>, Vec<Value>)> = Vec::new();
        for ((bucket, value), cell) in &grouped {
            let metrics = formulas
                .iter()
                .map(|f| query::evaluate(f, cell))
                .collect::<Result<Vec<_>, _>>()
                .map_err(ApiError::bad)?;
            results.push((*bucket, value.clone(), metrics));
        }
        if shape.breakdown_shown {
            // Top values first within each time slot, by the first metric.
            let by_first = |v: &Vec<Value>| v.first().and_then(|x| x.as_f64()).unwrap_or(0.0);
            results.sort_by(|a, b| {
                a.0.cmp(&b.0)
                    .then(by_first(&b.2).total_cmp(&by_first(&a.2)))
                    .then(a.1.cmp(&b.1))
            });
            let mut per_slot: BTreeMap<Option<i64>, usize> = BTreeMap::new();
            results.retain(|r| {
                let n = per_slot.entry(r.0).or_default();
                *n += 1;
                *n <= shape.limit
            });
        }
        let results: Vec<Value> = results
            .into_iter()
            .map(|(bucket, value, metrics)| {
                let mut dims: Vec<Value> = Vec::new();
                if let (Some(b), Some(g)) = (bucket, shape.time) {
                    dims.push(json!(label(b, g, tz)));
                }
                if let Some(v) = value {
                    dims.extend(v.split(VALUE_SEPARATOR).map(|p| json!(p)));
                }
                json!({ "dimensions": dims, "metrics": metrics })
            })
            .collect();
        Ok(json!({
            "results": results,
            "meta": {
                "site_id": q.site_id,
                "time_zone": tz_name,
                "metrics": q.metrics,
                "dimensions": q.dimensions,
                "filters": q.filters,
                "granularity": granularity.as_str(),
                "date_range": [rfc3339(from), rfc3339(to)],
                "generation": generation,
                "complete_until": frontier.map(rfc3339),
                "estimated": if estimated {
                    json!({"visitors": "HyperLogLog over the range's buckets (4096 registers): about 1.6 % standard error; see the README"})
                } else {
                    Value::Null
                },
            }
        }))
    }

    fn admin(&self, auth: Option<&str>) -> Result<&Admin, ApiError> {
        let admin = self.admin.as_ref().ok_or_else(|| {
            ApiError(
                StatusCode::FORBIDDEN,
                "admin endpoints are disabled: set api.admin_token".into(),
            )
        })?;
        let given = auth.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
        // Constant-time comparison is moot for a random 32-byte token over TLS, but cheap.
        let ok = given.is_some_and(|g| {
            g.len() == admin.token.len()
                && g.bytes()
                    .zip(admin.token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "admin endpoints need Authorization: Bearer <api.admin_token>".into(),
            ));
        }
        Ok(admin)
    }

    /// `POST /api/v1/admin/erase`: forgets a visitor. Open buckets are corrected by the live
    /// engine within seconds; sealed days are recomputed in the background.
    pub async fn erase(&self, auth: Option<String>, body: &[u8]) -> Result<Value, ApiError> {
        let admin = self.admin(auth.as_deref())?;
        let req: EraseRequest = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad(format!(
                "invalid erase request ({e}): expected {{\"site_id\": ..., \"visitor_id\": ...}}"
            ))
        })?;
        if req.visitor_id.is_empty() || req.visitor_id.len() > 256 {
            return Err(ApiError::bad(
                "visitor_id must be 1-256 bytes, as the tracker sent it",
            ));
        }
        let client = self.pool.get().await.map_err(ApiError::unavailable)?;
        let exists = client
            .query_opt("SELECT 1 FROM sites WHERE id = $1", &[&req.site_id])
            .await
            .map_err(ApiError::unavailable)?
            .is_some();
        if !exists {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("unknown site {:?}", req.site_id),
            ));
        }
        let visitor = crate::collector::visitor_id_hash(&req.site_id, &req.visitor_id);
        let now = clickflow_operators::source::wall_clock_ms();
        let record = clickflow_dataflows::Record::Erase(clickflow_dataflows::event::Erasure {
            site: req.site_id.clone(),
            visitor,
        });
        let value = serde_json::to_vec(&record).map_err(|e| ApiError::bad(e.to_string()))?;
        // The log first: once the erase record is durable the live engine acts on it; the
        // table row (for restarts, replays and the recompute) follows. A retry repeats both.
        let ack = admin
            .log
            .append(vec![crate::log::Append {
                key: req.site_id.clone(),
                value,
                timestamp: now,
            }])
            .await
            .pop()
            .ok_or_else(|| {
                ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "log: no acknowledgement; retry later".into(),
                )
            })?;
        ack.map_err(|e| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("log unavailable: {e}; retry later"),
            )
        })?;
        client
            .execute(
                "INSERT INTO erasures (site_id, visitor, log_time_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (site_id, visitor) DO UPDATE
                   SET log_time_ms = EXCLUDED.log_time_ms, status = 'pending', requested_at = now()",
                &[&req.site_id, &(visitor as i64), &now],
            )
            .await
            .map_err(ApiError::unavailable)?;
        let (config, log, site) = (admin.config.clone(), admin.log.clone(), req.site_id.clone());
        tokio::task::spawn_blocking(move || {
            crate::erase::recompute_and_record(&config, log.as_ref(), &site, visitor, now)
        });
        Ok(json!({
            "site_id": req.site_id,
            "visitor_id": req.visitor_id,
            "status": "pending",
            "detail": "open buckets are corrected by the engine within seconds; sealed days are being recomputed",
            "status_url": format!("/api/v1/admin/erasures?site_id={}", req.site_id),
        }))
    }

    /// `GET /api/v1/admin/erasures?site_id=`: the erasures of a site and their recompute state.
    pub async fn erasures(&self, auth: Option<String>, site_id: String) -> Result<Value, ApiError> {
        self.admin(auth.as_deref())?;
        let client = self.pool.get().await.map_err(ApiError::unavailable)?;
        let rows = client
            .query(
                "SELECT visitor::text, status, recomputed_days, (extract(epoch FROM requested_at) * 1000)::bigint
                   FROM erasures WHERE site_id = $1 ORDER BY requested_at",
                &[&site_id],
            )
            .await
            .map_err(ApiError::unavailable)?;
        let erasures: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "visitor": r.get::<_, String>(0),
                    "status": r.get::<_, String>(1),
                    "recomputed_days": r.get::<_, Option<i32>>(2),
                    "requested_at": rfc3339(r.get(3)),
                })
            })
            .collect();
        Ok(json!({ "site_id": site_id, "erasures": erasures }))
    }

    /// `GET /api/v1/realtime?site_id=`: current visitors and pageviews per minute over the
    /// last 30 minutes.
    pub async fn realtime(&self, auth: Option<String>, site_id: String) -> Result<Value, ApiError> {
        self.authorize(auth.as_deref(), &site_id).await?;
        let client = self.pool.get().await.map_err(ApiError::unavailable)?;
        let generation: i32 = client
            .query_one("SELECT generation FROM active_generation", &[])
            .await
            .map_err(ApiError::unavailable)?
            .get(0);
        let current: i64 = client
            .query_opt(
                "SELECT coalesce((metrics ->> 'current_visitors')::bigint, 0) FROM rollups
                  WHERE site_id = $1 AND generation = $2 AND family = 'realtime' AND granularity = 'minute'
                   AND bucket = to_timestamp($3::bigint / 1000.0)",
                &[&site_id, &generation, &clickflow_dataflows::realtime::NOW.start],
            )
            .await
            .map_err(ApiError::unavailable)?
            .map(|r| r.get(0))
            .unwrap_or(0);
        let now = clickflow_operators::source::wall_clock_ms();
        let last = now.div_euclid(60_000) * 60_000;
        let first = last - 29 * 60_000;
        let rows = client
            .query(
                "SELECT (extract(epoch FROM bucket) * 1000)::bigint, coalesce((metrics ->> 'pageviews')::bigint, 0) FROM rollups
                  WHERE site_id = $1 AND generation = $2 AND family = 'traffic'
                    AND granularity = 'minute' AND dimension = ''
                    AND bucket >= to_timestamp($3::bigint / 1000.0) AND bucket <= to_timestamp($4::bigint / 1000.0)",
                &[&site_id, &generation, &first, &last],
            )
            .await
            .map_err(ApiError::unavailable)?;
        let by_minute: BTreeMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let minutes: Vec<Value> = (0..30)
            .map(|i| {
                let m = first + i * 60_000;
                json!({ "minute": label(m, Granularity::Minute, Tz::UTC), "pageviews": by_minute.get(&m).copied().unwrap_or(0) })
            })
            .collect();
        Ok(json!({
            "site_id": site_id,
            "current_visitors": current,
            "pageviews_per_minute": minutes,
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
            async move { reply(api.query(auth, &body).await, StatusCode::OK) }
        });
    let a3 = api.clone();
    let erase = warp::path!("api" / "v1" / "admin" / "erase")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit(16 * 1024))
        .and(warp::body::bytes())
        .then(move |auth: Option<String>, body: bytes::Bytes| {
            let api = a3.clone();
            async move { reply(api.erase(auth, &body).await, StatusCode::ACCEPTED) }
        });
    let a4 = api.clone();
    let erasures = warp::path!("api" / "v1" / "admin" / "erasures")
        .and(site_get())
        .then(move |auth: Option<String>, site: Result<String, String>| {
            let api = a4.clone();
            async move {
                match site {
                    Ok(site) => reply(api.erasures(auth, site).await, StatusCode::OK),
                    Err(e) => error_reply(StatusCode::BAD_REQUEST, &e, Some("site_id")),
                }
            }
        });
    let a5 = api.clone();
    let realtime = warp::path!("api" / "v1" / "realtime").and(site_get()).then(
        move |auth: Option<String>, site: Result<String, String>| {
            let api = a5.clone();
            async move {
                match site {
                    Ok(site) => reply(api.realtime(auth, site).await, StatusCode::OK),
                    Err(e) => error_reply(StatusCode::BAD_REQUEST, &e, Some("site_id")),
                }
            }
        },
    );
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
    query
        .or(health)
        .unify()
        .or(metrics)
        .unify()
        .or(erase)
        .unify()
        .or(erasures)
        .unify()
        .or(realtime)
        .unify()
}

/// A GET with an optional bearer and a required `?site_id=`.
fn site_get(
) -> impl Filter<Extract = (Option<String>, Result<String, String>), Error = warp::Rejection> + Clone
{
    warp::get()
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::<BTreeMap<String, String>>())
        .map(|auth: Option<String>, q: BTreeMap<String, String>| {
            let site = q
                .get("site_id")
                .cloned()
                .ok_or_else(|| "site_id is required".to_owned());
            (auth, site)
        })
        .untuple_one()
}

fn reply(result: Result<Value, ApiError>, ok: StatusCode) -> warp::reply::Response {
    match result {
        Ok(v) => warp::reply::with_status(warp::reply::json(&v), ok).into_response(),
        Err(ApiError(status, reason)) => error_reply(status, &reason, None),
    }
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
