//! Sites as the collector sees them: their zone and key, looked up through caches so that
//! ingest stays off the database, the daily salt of cookieless visitor ids, and the keys that
//! let a server speak for its visitors.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;

use super::refusal::{unavailable, Refusal};

/// A site as the collector needs it.
#[derive(Clone, Debug)]
pub struct SiteInfo {
    pub time_zone: String,
    /// The key a server presents to send events on behalf of visitors (`user_agent`, `ip`).
    pub api_key: String,
}

fn lookup_cache<T: Clone + Send + Sync + 'static>() -> moka::future::Cache<String, Option<T>> {
    moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(Duration::from_secs(30))
        .build()
}

/// The sites' cache, the domains' cache (Plausible names sites by domain) and the daily salt.
pub struct Sites {
    pool: deadpool_postgres::Pool,
    sites: moka::future::Cache<String, Option<SiteInfo>>,
    domains: moka::future::Cache<String, Option<String>>,
    salt: RwLock<Option<(i64, Vec<u8>)>>,
}

impl Sites {
    pub fn new(pool: deadpool_postgres::Pool) -> Sites {
        // Unknown sites are cached too, briefly, so a flood of bad ids cannot hammer the DB.
        Sites {
            pool,
            sites: lookup_cache(),
            domains: lookup_cache(),
            salt: RwLock::new(None),
        }
    }

    /// A row looked up by `key` through `cache` (unknown keys are cached too, briefly, so a
    /// flood of bad ids cannot hammer the database); a failed lookup is a 503.
    async fn cached<T: Clone + Send + Sync + 'static>(
        &self,
        cache: &moka::future::Cache<String, Option<T>>,
        key: &str,
        sql: &'static str,
        read: fn(&tokio_postgres::Row) -> T,
    ) -> Result<Option<T>, Refusal> {
        // Postgres text cannot hold NUL, so no site is named with one: not found, without
        // asking (asking is a database error).
        if key.contains('\0') {
            return Ok(None);
        }
        let pool = self.pool.clone();
        let owned = key.to_owned();
        cache
            .try_get_with(key.to_owned(), async move {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                let row = client
                    .query_opt(sql, &[&owned])
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(row.as_ref().map(read))
            })
            .await
            .map_err(|e| unavailable("site lookup", &e))
    }

    pub async fn site(&self, id: &str) -> Result<Option<SiteInfo>, Refusal> {
        let sql = "SELECT time_zone, api_key FROM sites WHERE id = $1";
        self.cached(&self.sites, id, sql, |r| SiteInfo {
            time_zone: r.get(0),
            api_key: r.get(1),
        })
        .await
    }

    /// The site registered for `domain` (as [`compat::normalize_domain`] has it), for
    /// Plausible's API, which names sites by domain. The oldest site wins if several share it.
    pub async fn site_of_domain(&self, domain: &str) -> Result<Option<String>, Refusal> {
        let sql = "SELECT id FROM sites WHERE regexp_replace(lower(rtrim(domain, '.')), '^www\\.', '') = $1
                    ORDER BY created_at, id LIMIT 1";
        self.cached(&self.domains, domain, sql, |r| r.get(0)).await
    }

    /// The salt of the current UTC day, created on first use; yesterday's is never reused,
    /// so cookieless visitor ids cannot be linked across days.
    pub async fn daily_salt(&self, now_ms: i64) -> Result<Vec<u8>, Refusal> {
        let day = now_ms.div_euclid(86_400_000);
        if let Some((d, salt)) = self.salt.read().await.as_ref() {
            if *d == day {
                return Ok(salt.clone());
            }
        }
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| unavailable("daily salt", &e))?;
        let fresh: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        let date = DateTime::<Utc>::from_timestamp_millis(day * 86_400_000)
            .unwrap_or_default()
            .date_naive();
        let row = client
            .query_one(
                "WITH ins AS (INSERT INTO salts (day, salt) VALUES ($1::text::date, $2) ON CONFLICT (day) DO NOTHING RETURNING salt)
                 SELECT salt FROM ins UNION ALL SELECT salt FROM salts WHERE day = $1::text::date LIMIT 1",
                &[&date.to_string(), &fresh],
            )
            .await
            .map_err(|e| unavailable("daily salt", &e))?;
        let salt: Vec<u8> = row.get(0);
        *self.salt.write().await = Some((day, salt.clone()));
        Ok(salt)
    }
}

/// Checks that a presented key is `site`'s API key: a server that presents a key relies on
/// it (its refunds, its event ids), so a wrong one is refused rather than ignored.
pub fn check_key(site: &str, info: &SiteInfo, presented: &str) -> Result<(), Refusal> {
    // Compare digests, so the time taken says nothing about how much of the key matched.
    if Sha256::digest(presented.as_bytes()) != Sha256::digest(info.api_key.as_bytes()) {
        return Err(Refusal {
            status: 403,
            field: Some("authorization"),
            reason: format!("the presented API key is not the key of site {site:?}"),
        });
    }
    Ok(())
}

/// Event ids of events sent with the site's key are logged under this prefix, which
/// anonymous senders may not use: deduplication and refunds work per `(site, event id)`, and
/// servers name purchases by guessable order numbers, so without it anyone could post a fake
/// purchase `T-1002` first (the real one would count as its duplicate) or refund it.
pub const KEYED_ID_PREFIX: &str = "key:";

/// The ids an event is logged under: a keyed sender's in [`KEYED_ID_PREFIX`]'s namespace
/// (a refund always is keyed, so it names a purchase there), an anonymous one's as sent.
pub fn namespaced_ids(
    keyed: bool,
    event_id: String,
    refund_of: Option<String>,
) -> Result<(String, Option<String>), Refusal> {
    if keyed {
        let prefixed = |id: String| format!("{KEYED_ID_PREFIX}{id}");
        return Ok((prefixed(event_id), refund_of.map(prefixed)));
    }
    if event_id.starts_with(KEYED_ID_PREFIX) {
        return Err(Refusal::bad(
            "event_id",
            format!(
                "event ids starting with {KEYED_ID_PREFIX:?} are reserved for servers presenting \
                 the site's API key"
            ),
        ));
    }
    Ok((event_id, refund_of))
}
