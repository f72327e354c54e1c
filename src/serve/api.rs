//! The merchant API: `POST /api/v1/query`, realtime, read-only share links, admin actions,
//! the dashboard's pages, `/healthz` and `/metrics`. Routing and authorization only: the
//! query path lives in `query`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono_tz::Tz;
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::http::error_reply;
use crate::log::Log;
use crate::serve::query::{self, Query};

pub struct Api {
    pub pool: deadpool_postgres::Pool,
    pub log: Option<Arc<dyn Log>>,
    /// Present when `api.admin_token` is set: enables `/api/v1/admin/*`.
    pub admin: Option<Admin>,
    /// `database.minute_retention_secs`: older minute buckets are gone, and queries for them
    /// are refused.
    pub minute_retention_secs: u64,
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
    /// The database failed: the operator reads why in the log; the client, who may be anyone
    /// holding a share link, learns only that it should retry.
    fn unavailable(e: impl std::error::Error) -> ApiError {
        ApiError::from(query::Error::unavailable(e))
    }
}

impl From<query::Error> for ApiError {
    fn from(e: query::Error) -> ApiError {
        match e {
            query::Error::Bad(reason) => ApiError::bad(reason),
            query::Error::Unavailable(reason) => {
                tracing::warn!(error = %reason, "query API: database unavailable");
                ApiError(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE.into())
            }
            query::Error::Internal(reason) => {
                tracing::error!(error = %reason, "query API: internal error");
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; it has been logged".into(),
                )
            }
        }
    }
}

/// What a client is told when the database fails, whatever the cause.
pub const UNAVAILABLE: &str = "the database is unavailable; retry later";

impl ApiError {}

/// Share tokens start so, API keys with `cfk_`.
const SHARE_PREFIX: &str = "cfs_";

impl Api {
    /// Finds the site (and its zone) of a bearer credential: a site's API key or, where
    /// `shares` allows, a live read-only share token. `None` is a 401.
    async fn site_of_key(
        &self,
        key: &str,
        shares: bool,
    ) -> Result<Option<(String, String)>, ApiError> {
        let client = self.pool.get().await.map_err(ApiError::unavailable)?;
        let sql = if shares && key.starts_with(SHARE_PREFIX) {
            "SELECT s.id, s.time_zone FROM shares h JOIN sites s ON s.id = h.site_id
              WHERE h.token = $1 AND h.revoked_at IS NULL"
        } else {
            "SELECT id, time_zone FROM sites WHERE api_key = $1"
        };
        let row = client
            .query_opt(sql, &[&key])
            .await
            .map_err(ApiError::unavailable)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Checks a bearer credential grants reading `site_id` (an API key or a share token);
    /// returns the site's zone.
    async fn authorize(&self, auth: Option<&str>, site_id: &str) -> Result<String, ApiError> {
        self.authorize_with(auth, site_id, true).await
    }

    /// As [`Api::authorize`], with share tokens refused where `shares` is false (managing
    /// shares takes the site's own key).
    async fn authorize_with(
        &self,
        auth: Option<&str>,
        site_id: &str,
        shares: bool,
    ) -> Result<String, ApiError> {
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
            .site_of_key(key, shares)
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

    /// `POST /api/v1/shares?site_id=`: a new read-only link to the site's dashboard.
    pub async fn create_share(
        &self,
        auth: Option<String>,
        site_id: String,
    ) -> Result<Value, ApiError> {
        self.authorize_with(auth.as_deref(), &site_id, false)
            .await?;
        let token = crate::store::random_token(SHARE_PREFIX, 32);
        let client = self.pool.get().await.map_err(ApiError::unavailable)?;
        client
            .execute(
                "INSERT INTO shares (token, site_id) VALUES ($1, $2)",
                &[&token, &site_id],
            )
            .await
            .map_err(ApiError::unavailable)?;
        Ok(json!({"token": token, "url": format!("/share/{token}")}))
    }

    /// `GET /api/v1/shares/<token>`: the site a live share token opens (the token is the
    /// credential: without it nothing is said).
    pub async fn share(&self, token: String) -> Result<Value, ApiError> {
        let client = self.pool.get().await.map_err(ApiError::unavailable)?;
        let row = client
            .query_opt(
                "SELECT s.id, s.domain FROM shares h JOIN sites s ON s.id = h.site_id
                  WHERE h.token = $1 AND h.revoked_at IS NULL",
                &[&token],
            )
            .await
            .map_err(ApiError::unavailable)?
            .ok_or_else(|| {
                ApiError(
                    StatusCode::NOT_FOUND,
                    "no such share, or it was revoked".into(),
                )
            })?;
        let (site_id, domain): (String, String) = (row.get(0), row.get(1));
        Ok(json!({"site_id": site_id, "domain": domain}))
    }

    /// `DELETE /api/v1/shares/<token>` with the site's own key: the link stops working.
    pub async fn revoke_share(
        &self,
        auth: Option<String>,
        token: String,
    ) -> Result<Value, ApiError> {
        let site_id = self.share(token.clone()).await?["site_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.authorize_with(auth.as_deref(), &site_id, false)
            .await?;
        let client = self.pool.get().await.map_err(ApiError::unavailable)?;
        client
            .execute(
                "UPDATE shares SET revoked_at = now() WHERE token = $1 AND revoked_at IS NULL",
                &[&token],
            )
            .await
            .map_err(ApiError::unavailable)?;
        Ok(json!({"revoked": true}))
    }

    pub async fn query(&self, auth: Option<String>, body: &[u8]) -> Result<Value, ApiError> {
        if auth.is_none() {
            self.authorize(None, "").await?;
        }
        let q: Query = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad(format!("invalid query: {e}")))?;
        let tz_name = self.authorize(auth.as_deref(), &q.site_id).await?;
        let client = self.pool.get().await.map_err(ApiError::unavailable)?;
        let now = clickflow_operators::source::wall_clock_ms();
        query::run(&client, &q, &tz_name, now, self.minute_retention_secs)
            .await
            .map_err(ApiError::from)
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
        let visitor = crate::ingest::visitor::visitor_id_hash(&req.site_id, &req.visitor_id);
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
            // Sealed days older than the log's retention are rebuilt from the archive.
            let log = crate::store::archive::ArchivedLog::wrap_or_log(log, &config);
            crate::engine::erase::recompute_and_record(&config, log.as_ref(), &site, visitor, now)
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
                    "requested_at": query::rfc3339(r.get(3)),
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
                json!({ "minute": query::Period::Minute.label(m, Tz::UTC), "pageviews": by_minute.get(&m).copied().unwrap_or(0) })
            })
            .collect();
        Ok(json!({
            "site_id": site_id,
            "current_visitors": current,
            "pageviews_per_minute": minutes,
        }))
    }

    /// Which part is down, without its error text (logged instead): `/healthz` is public.
    async fn health(&self) -> Result<(), String> {
        let down = |part: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "healthz: {part} unavailable");
            format!("{part} unavailable")
        };
        let client = self.pool.get().await.map_err(|e| down("database", &e))?;
        client
            .query_one("SELECT 1", &[])
            .await
            .map_err(|e| down("database", &e))?;
        if let Some(log) = &self.log {
            log.partitions().map_err(|e| down("log", &e))?;
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
    let health = health_route(api.clone());
    let metrics = warp::path!("metrics").and(warp::get()).map(|| {
        warp::reply::with_header(
            crate::telemetry::render(),
            "content-type",
            "text/plain; version=0.0.4",
        )
        .into_response()
    });
    let a6 = api.clone();
    let create_share = warp::path!("api" / "v1" / "shares")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::query::<BTreeMap<String, String>>())
        .then(move |auth: Option<String>, q: BTreeMap<String, String>| {
            let api = a6.clone();
            async move {
                match q.get("site_id").filter(|s| !s.is_empty()) {
                    Some(site) => reply(
                        api.create_share(auth, site.clone()).await,
                        StatusCode::CREATED,
                    ),
                    None => error_reply(
                        StatusCode::BAD_REQUEST,
                        "site_id is required",
                        Some("site_id"),
                    ),
                }
            }
        });
    let a7 = api.clone();
    let share = warp::path!("api" / "v1" / "shares" / String)
        .and(warp::get())
        .then(move |token: String| {
            let api = a7.clone();
            async move { reply(api.share(token).await, StatusCode::OK) }
        });
    let a8 = api.clone();
    let revoke_share = warp::path!("api" / "v1" / "shares" / String)
        .and(warp::delete())
        .and(warp::header::optional::<String>("authorization"))
        .then(move |token: String, auth: Option<String>| {
            let api = a8.clone();
            async move { reply(api.revoke_share(auth, token).await, StatusCode::OK) }
        });
    query
        .or(create_share)
        .unify()
        .or(share)
        .unify()
        .or(revoke_share)
        .unify()
        .or(crate::serve::dashboard::routes())
        .unify()
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

/// `GET /healthz`: also served on the collector's listener when the API has its own.
pub fn health_route(
    api: Arc<Api>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("healthz").and(warp::get()).then(move || {
        let api = api.clone();
        async move {
            match api.health().await {
                Ok(()) => warp::reply::json(&json!({"status": "ok"})).into_response(),
                Err(e) => error_reply(StatusCode::SERVICE_UNAVAILABLE, &e, None),
            }
        }
    })
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
