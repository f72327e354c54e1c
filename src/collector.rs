//! HTTP ingest: `POST /api/event` (Clickflow's events and Plausible's), `POST /api/batch`,
//! `POST /mp/collect` (GA4's Measurement Protocol), open to any origin for trackers on
//! merchants' pages; and the tracker script itself. An event is answered `202` only
//! after the log acknowledged it durable; every refusal says which field and why.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use clickflow_dataflows::event::{
    BotHit, Event, Record, Revenue, MAX_RECORDS_PER_MESSAGE, PAGEVIEW, REFUND,
};
use ipnet::IpNet;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;
use warp::http::StatusCode;
use warp::Filter;

use crate::compat;
use crate::config::CollectorConfig;
use crate::enrich::Enricher;
use crate::log::{Append, Log};
use crate::metrics::{BOT_EVENTS, EVENTS_ACCEPTED, EVENTS_REJECTED};

/// A site as the collector needs it.
#[derive(Clone, Debug)]
pub struct SiteInfo {
    pub time_zone: String,
    /// The key a server presents to send events on behalf of visitors (`user_agent`, `ip`).
    pub api_key: String,
}

/// What the client sent about itself: the connection's view (socket peer or trusted
/// `X-Forwarded-For`, `User-Agent` header) and, for servers, the site API key it presented.
#[derive(Clone, Debug, Default)]
pub struct Sender {
    pub ip: Option<IpAddr>,
    pub user_agent: String,
    /// The token of `Authorization: Bearer <key>`, when present.
    pub api_key: Option<String>,
    /// A server proven to hold the site's key (GA4's `api_secret`) that sends only on behalf
    /// of visitors: its own user agent and address describe it, never a visitor, so they are
    /// neither used nor judged by the bot rules.
    pub server: bool,
}

/// An event the log acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub event_id: String,
    /// Logged as a bot hit only (counted as `bot_events`, not analysed).
    pub bot: bool,
}

/// Why one event was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    #[serde(skip)]
    pub status: u16,
    pub field: Option<&'static str>,
    pub reason: String,
}

impl Refusal {
    pub(crate) fn bad(field: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal {
            status: 400,
            field: Some(field),
            reason: reason.into(),
        }
    }
    fn label(&self) -> &'static str {
        match (self.status, self.field) {
            (401 | 403, _) => "unauthorized",
            (404, _) => "unknown_site",
            (503, _) => "log_unavailable",
            (_, Some("ts")) => "bad_timestamp",
            (_, Some(f)) => f,
            _ => "invalid",
        }
    }
}

pub struct Collector {
    pub config: CollectorConfig,
    pub log: Arc<dyn Log>,
    pub pool: deadpool_postgres::Pool,
    trusted: Vec<IpNet>,
    sites: moka::future::Cache<String, Option<SiteInfo>>,
    domains: moka::future::Cache<String, Option<String>>,
    salt: RwLock<Option<(i64, Vec<u8>)>>,
    enricher: Enricher,
}

impl Collector {
    pub fn new(
        config: CollectorConfig,
        log: Arc<dyn Log>,
        pool: deadpool_postgres::Pool,
    ) -> anyhow::Result<Collector> {
        let geo_db = (!config.geoip_db.as_os_str().is_empty()).then_some(config.geoip_db.as_path());
        let enricher = Enricher::new(geo_db)?;
        if !enricher.has_geo() {
            tracing::info!("no collector.geoip_db configured: every country is `unknown`");
        }
        let trusted = config
            .trusted_proxies
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("collector.trusted_proxies: {e}"))?;
        Ok(Collector {
            config,
            log,
            pool,
            trusted,
            // Unknown sites are cached too, briefly, so a flood of bad ids cannot hammer the DB.
            sites: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            domains: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            salt: RwLock::new(None),
            enricher,
        })
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
            .map_err(|e| Refusal {
                status: 503,
                field: None,
                reason: format!("site lookup failed: {e}"),
            })
    }

    async fn site(&self, id: &str) -> Result<Option<SiteInfo>, Refusal> {
        let sql = "SELECT time_zone, api_key FROM sites WHERE id = $1";
        self.cached(&self.sites, id, sql, |r| SiteInfo {
            time_zone: r.get(0),
            api_key: r.get(1),
        })
        .await
    }

    /// The site registered for `domain` (as [`compat::normalize_domain`] has it), for
    /// Plausible's API, which names sites by domain. The oldest site wins if several share it.
    async fn site_of_domain(&self, domain: &str) -> Result<Option<String>, Refusal> {
        let sql = "SELECT id FROM sites WHERE regexp_replace(lower(rtrim(domain, '.')), '^www\\.', '') = $1
                    ORDER BY created_at, id LIMIT 1";
        self.cached(&self.domains, domain, sql, |r| r.get(0)).await
    }

    /// Plausible's shape, one event per domain it names, in Clickflow's.
    async fn translate_plausible(&self, raw: &Value) -> Result<Vec<Value>, Refusal> {
        let plausible = compat::from_plausible(raw)?;
        let mut events = Vec::with_capacity(plausible.domains.len());
        for domain in &plausible.domains {
            let site = self.site_of_domain(domain).await?.ok_or_else(|| Refusal {
                status: 404,
                field: Some("domain"),
                reason: format!("no site is registered for domain {domain:?}"),
            })?;
            let mut event = plausible.event.clone();
            event.insert("site".into(), json!(site));
            events.push(Value::Object(event));
        }
        Ok(events)
    }

    /// GA4's Measurement Protocol: `measurement_id` is the site's tracking id and
    /// `api_secret` its API key, which lets the request speak for its visitors.
    async fn translate_ga4(
        &self,
        query: &HashMap<String, String>,
        body: &Value,
        sender: &mut Sender,
    ) -> Result<Vec<Result<Value, Refusal>>, Refusal> {
        let param = |name: &'static str| {
            query
                .get(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| Refusal {
                    status: 401,
                    field: Some(name),
                    reason: format!("{name} is required in the query string"),
                })
        };
        let site = param("measurement_id")?;
        let secret = param("api_secret")?;
        let info = self.site(site).await?.ok_or_else(|| Refusal {
            status: 404,
            field: Some("measurement_id"),
            reason: format!("unknown site {site:?} (measurement_id is the tracking id)"),
        })?;
        authorize_on_behalf(site, &info, Some(secret)).map_err(|mut r| {
            r.field = Some("api_secret");
            r.reason = format!("api_secret is not the API key of site {site:?}");
            r
        })?;
        sender.api_key = Some(secret.clone());
        sender.server = true;
        compat::from_ga4(body, site)
    }

    /// The salt of the current UTC day, created on first use; yesterday's is never reused,
    /// so cookieless visitor ids cannot be linked across days.
    async fn daily_salt(&self, now_ms: i64) -> Result<Vec<u8>, Refusal> {
        let day = now_ms.div_euclid(86_400_000);
        if let Some((d, salt)) = self.salt.read().await.as_ref() {
            if *d == day {
                return Ok(salt.clone());
            }
        }
        let unavailable = |e: String| Refusal {
            status: 503,
            field: None,
            reason: format!("salt unavailable: {e}"),
        };
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
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
            .map_err(|e| unavailable(e.to_string()))?;
        let salt: Vec<u8> = row.get(0);
        *self.salt.write().await = Some((day, salt.clone()));
        Ok(salt)
    }

    pub fn client_ip(&self, peer: Option<SocketAddr>, forwarded: Option<&str>) -> Option<IpAddr> {
        client_ip(&self.trusted, peer, forwarded)
    }

    /// Validates one raw event into the record written to the log: the enriched event, or a
    /// bare bot hit. The IP and user agent go no further than this function.
    ///
    /// A server sending on behalf of its visitors (GA4's Measurement Protocol and Plausible's
    /// Events API work the same way) names each visitor's `user_agent` and `ip` in the event;
    /// those replace the connection's own, which describe the server and its HTTP library.
    /// Only a sender presenting the site's API key may do so, or anyone could forge visitors.
    async fn validate(&self, raw: &Value, sender: &Sender, now: i64) -> Result<Record, Refusal> {
        let obj = raw
            .as_object()
            .ok_or_else(|| Refusal::bad("event", "an event must be a JSON object"))?;
        let site = required_str(obj, "site", 64)?;
        let name = required_str(obj, "name", 120)?;
        let url = optional_str(obj, "url", 2048)?;
        if name == PAGEVIEW && url.is_none() {
            return Err(Refusal::bad("url", "url is required for pageviews"));
        }
        if let Some(u) = &url {
            match url::Url::parse(u) {
                Ok(parsed)
                    if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {}
                _ => return Err(Refusal::bad("url", "url must be an absolute http(s) URL")),
            }
        }
        // Browsers report `document.referrer` as "" on every direct visit: that is direct
        // traffic, not a malformed event.
        let referrer = optional_str_or_empty(obj, "referrer", 2048)?;
        let ua_override = optional_str(obj, "user_agent", 1024)?;
        let ip_override = match optional_str(obj, "ip", 64)? {
            Some(text) => Some(text.trim().parse::<IpAddr>().map_err(|_| {
                Refusal::bad("ip", format!("ip {text:?} is not an IPv4 or IPv6 address"))
            })?),
            None => None,
        };
        let event_id = match optional_str(obj, "event_id", 128)? {
            Some(id) => id,
            None => uuid::Uuid::now_v7().to_string(),
        };
        let ts = self.event_time(obj.get("ts"), now)?;
        let props = props(obj.get("props"))?;
        let revenue = revenue(obj.get("revenue"))?;
        let visitor_id = optional_str(obj, "visitor_id", 256)?;
        let refund_of = optional_str(obj, "refund_of", 128)?;
        if name == REFUND && refund_of.is_none() {
            return Err(Refusal::bad(
                "refund_of",
                "a refund names the event_id of the purchase it refunds",
            ));
        }
        if name != REFUND && refund_of.is_some() {
            return Err(Refusal::bad(
                "refund_of",
                "refund_of is only allowed on events named \"refund\"",
            ));
        }

        let site_info = self.site(&site).await?.ok_or_else(|| Refusal {
            status: 404,
            field: Some("site"),
            reason: format!("unknown site {site:?}"),
        })?;
        let on_behalf = ua_override.is_some() || ip_override.is_some();
        if on_behalf {
            authorize_on_behalf(&site, &site_info, sender.api_key.as_deref())?;
        }
        let own_agent = if sender.server {
            ""
        } else {
            &sender.user_agent
        };
        let user_agent = ua_override.as_deref().unwrap_or(own_agent);
        let ip = if on_behalf || sender.server {
            ip_override
        } else {
            sender.ip
        };
        // Refunds come from merchants' servers (HTTP libraries, no browser): never bots. A
        // server that names no visitor user agent gives nothing to judge.
        let judged = name != REFUND && !(sender.server && ua_override.is_none());
        if judged && self.enricher.is_bot(user_agent) {
            return Ok(Record::Bot(BotHit {
                site,
                event_id,
                ts,
                tz: site_info.time_zone,
            }));
        }
        let visitor = match visitor_id {
            Some(v) => visitor_id_hash(&site, &v),
            None => {
                let salt = self.daily_salt(now).await?;
                let ip = ip.map(|i| i.to_string()).unwrap_or_default();
                hash64(&[&salt, site.as_bytes(), ip.as_bytes(), user_agent.as_bytes()])
            }
        };
        Ok(Record::Event(Event {
            site,
            event_id,
            name,
            ts,
            received: now,
            visitor,
            url: url.unwrap_or_default(),
            referrer,
            props,
            revenue,
            refund_of,
            tz: site_info.time_zone,
            client: self.enricher.client(user_agent),
            country: self.enricher.country(ip),
        }))
    }

    fn event_time(&self, ts: Option<&Value>, now: i64) -> Result<i64, Refusal> {
        let ts = match ts {
            None | Some(Value::Null) => return Ok(now),
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| Refusal::bad("ts", "ts must be whole Unix milliseconds"))?,
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map(|d| d.timestamp_millis())
                .map_err(|_| {
                    Refusal::bad(
                        "ts",
                        format!("ts {s:?} is neither RFC 3339 nor Unix milliseconds"),
                    )
                })?,
            Some(_) => {
                return Err(Refusal::bad(
                    "ts",
                    "ts must be an RFC 3339 string or Unix milliseconds",
                ))
            }
        };
        let lateness = self.config.lateness_secs as i64 * 1000;
        if now - ts > lateness {
            return Err(Refusal::bad(
                "ts",
                format!(
                    "event is older than the lateness bound of {} s",
                    self.config.lateness_secs
                ),
            ));
        }
        if ts - now > self.config.future_skew_secs as i64 * 1000 {
            return Err(Refusal::bad(
                "ts",
                format!(
                    "event is more than {} s in the future",
                    self.config.future_skew_secs
                ),
            ));
        }
        // Event time never exceeds receive time, so an event is always in the log at or after
        // its own time: replays and restarts that seek by time see every event of a bucket.
        Ok(ts.min(now))
    }

    /// [`Collector::ingest`] in a task of its own, so that a client that hangs up mid-request
    /// (a page unloading after a beacon) cannot cancel it between the log's acknowledgement
    /// and the bookkeeping that follows.
    pub async fn ingest_detached(
        self: &Arc<Self>,
        raws: Vec<Value>,
        sender: Sender,
    ) -> Vec<Result<Accepted, Refusal>> {
        let collector = self.clone();
        let n = raws.len();
        tokio::spawn(async move { collector.ingest(&raws, &sender).await })
            .await
            .unwrap_or_else(|e| {
                (0..n)
                    .map(|_| {
                        Err(Refusal {
                            status: 500,
                            field: None,
                            reason: format!("ingest failed: {e}"),
                        })
                    })
                    .collect()
            })
    }

    /// Validates and appends; returns per-input results in order (what was logged, or why not).
    pub async fn ingest(&self, raws: &[Value], sender: &Sender) -> Vec<Result<Accepted, Refusal>> {
        let now = clickflow_operators::source::wall_clock_ms();
        let mut results: Vec<Result<Accepted, Refusal>> = Vec::with_capacity(raws.len());
        // A request's records of one site, in order, with the slots of their results.
        let mut by_site: Vec<(String, Vec<usize>, Vec<Record>)> = Vec::new();
        let mut site_at: HashMap<String, usize> = HashMap::new();
        for raw in raws {
            match self.validate(raw, sender, now).await {
                Ok(record) => {
                    let (site, event_id, bot) = match &record {
                        Record::Event(e) => (&e.site, e.event_id.clone(), false),
                        Record::Bot(b) => (&b.site, b.event_id.clone(), true),
                        Record::Erase(x) => (&x.site, String::new(), false),
                    };
                    let at = *site_at.entry(site.clone()).or_insert_with(|| {
                        by_site.push((site.clone(), Vec::new(), Vec::new()));
                        by_site.len() - 1
                    });
                    by_site[at].1.push(results.len());
                    by_site[at].2.push(record);
                    results.push(Ok(Accepted { event_id, bot }));
                }
                Err(r) => results.push(Err(r)),
            }
        }
        // One log message per site and up to MAX_RECORDS_PER_MESSAGE records: the log and a
        // broker pay per message, not per byte.
        let mut appends = Vec::new();
        let mut appended_slots: Vec<&[usize]> = Vec::new();
        for (site, slots, records) in &by_site {
            for (slots, records) in slots
                .chunks(MAX_RECORDS_PER_MESSAGE)
                .zip(records.chunks(MAX_RECORDS_PER_MESSAGE))
            {
                match Record::encode_all(records) {
                    Ok(value) => {
                        appends.push(Append {
                            key: site.clone(),
                            value,
                            timestamp: now,
                        });
                        appended_slots.push(slots);
                    }
                    Err(e) => {
                        for slot in slots {
                            results[*slot] = Err(Refusal::bad("event", e.to_string()));
                        }
                    }
                }
            }
        }
        if !appends.is_empty() {
            let acks = self.log.append(appends).await;
            for (slots, ack) in appended_slots.into_iter().zip(acks) {
                if let Err(e) = ack {
                    for slot in slots {
                        results[*slot] = Err(Refusal {
                            status: 503,
                            field: None,
                            reason: format!("{e}; retry later"),
                        });
                    }
                }
            }
        }
        for r in &results {
            match r {
                Ok(accepted) => {
                    EVENTS_ACCEPTED.inc();
                    if accepted.bot {
                        BOT_EVENTS.inc();
                    }
                }
                Err(refusal) => EVENTS_REJECTED.with_label_values(&[refusal.label()]).inc(),
            }
        }
        results
    }
}

/// The client address: the socket peer, or, when the peer is a trusted proxy, the nearest
/// hop of `X-Forwarded-For` that is not itself trusted (hops further left can be forged).
pub fn client_ip(
    trusted: &[IpNet],
    peer: Option<SocketAddr>,
    forwarded: Option<&str>,
) -> Option<IpAddr> {
    let peer = peer.map(|p| p.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    match (peer, forwarded) {
        (Some(ip), Some(xff)) if is_trusted(&ip) => {
            let hops: Vec<IpAddr> = xff
                .split(',')
                .filter_map(|h| h.trim().parse().ok())
                .collect();
            hops.iter()
                .rev()
                .find(|h| !is_trusted(h))
                .or(hops.first())
                .copied()
                .or(Some(ip))
        }
        (ip, _) => ip,
    }
}

/// Checks that the sender of an event carrying a visitor's `user_agent` or `ip` presented
/// `site`'s API key.
fn authorize_on_behalf(
    site: &str,
    info: &SiteInfo,
    presented: Option<&str>,
) -> Result<(), Refusal> {
    let Some(presented) = presented else {
        return Err(Refusal {
            status: 401,
            field: Some("authorization"),
            reason: "an event naming the visitor's user_agent or ip must come from a server \
                     presenting the site's API key (Authorization: Bearer <key>)"
                .into(),
        });
    };
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

/// The visitor of a tracker-supplied `visitor_id`; the erase endpoint finds visitors by it.
pub fn visitor_id_hash(site: &str, visitor_id: &str) -> u64 {
    hash64(&[b"visitor-id", site.as_bytes(), visitor_id.as_bytes()])
}

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]))
}

fn required_str(
    obj: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<String, Refusal> {
    optional_str(obj, field, max)?
        .ok_or_else(|| Refusal::bad(field, format!("{field} is required")))
}

fn optional_str(
    obj: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<Option<String>, Refusal> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(Refusal::bad(field, format!("{field} must not be empty")))
        }
        Some(Value::String(s)) if s.chars().count() > max => Err(Refusal::bad(
            field,
            format!("{field} is longer than {max} characters"),
        )),
        Some(Value::String(s)) if s.contains('\0') => Err(no_nul(field)),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Refusal::bad(field, format!("{field} must be a string"))),
    }
}

/// Text that would reach Postgres, where text cannot hold NUL: refused at the door rather
/// than failing the sink's transaction later.
fn no_nul(field: &'static str) -> Refusal {
    Refusal::bad(
        field,
        format!("{field} must not contain NUL characters (\\u0000)"),
    )
}

/// As [`optional_str`], but an empty or blank string means absent.
fn optional_str_or_empty(
    obj: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<Option<String>, Refusal> {
    match obj.get(field) {
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        _ => optional_str(obj, field, max),
    }
}

fn props(v: Option<&Value>) -> Result<Vec<(String, String)>, Refusal> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(Refusal::bad(
                "props",
                "props must be a flat object of strings",
            ))
        }
    };
    if obj.len() > 30 {
        return Err(Refusal::bad("props", "at most 30 props per event"));
    }
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(Refusal::bad(
                    "props",
                    format!("props.{k} must be a string, number or boolean"),
                ))
            }
        };
        if k.contains('\0') || v.contains('\0') {
            return Err(no_nul("props"));
        }
        if k.is_empty() || k.len() > 100 || v.len() > 1000 {
            return Err(Refusal::bad(
                "props",
                format!("props.{k}: keys are 1-100 and values up to 1000 bytes"),
            ));
        }
        out.insert(k.clone(), v);
    }
    Ok(out.into_iter().collect())
}

fn revenue(v: Option<&Value>) -> Result<Option<Revenue>, Refusal> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(Refusal::bad(
                "revenue",
                "revenue must be {\"amount\": \"12.50\", \"currency\": \"EUR\"}",
            ))
        }
    };
    let amount = match obj.get("amount") {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(Refusal::bad(
                "revenue",
                "revenue.amount is required (a decimal string)",
            ))
        }
    };
    let valid_amount = {
        let digits = amount.strip_prefix('-').unwrap_or(&amount);
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        !int.is_empty()
            && int.len() <= 12
            && frac.len() <= 6
            && int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
    };
    if !valid_amount {
        return Err(Refusal::bad(
            "revenue",
            format!("revenue.amount {amount:?} is not a decimal number"),
        ));
    }
    let currency = match obj.get("currency") {
        Some(Value::String(c)) if c.len() == 3 && c.chars().all(|ch| ch.is_ascii_alphabetic()) => {
            c.to_ascii_uppercase()
        }
        _ => {
            return Err(Refusal::bad(
                "revenue",
                "revenue.currency must be a 3-letter ISO 4217 code",
            ))
        }
    };
    Ok(Some(Revenue { amount, currency }))
}

/// A JSON error reply.
pub fn error_reply(status: StatusCode, reason: &str, field: Option<&str>) -> warp::reply::Response {
    let mut body = json!({ "error": reason });
    if let Some(f) = field {
        body["field"] = json!(f);
    }
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

use warp::Reply;

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

#[derive(Debug)]
struct UnsupportedContentType(String);
impl warp::reject::Reject for UnsupportedContentType {}

fn json_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|ct: Option<String>| async move {
            let ct = ct.unwrap_or_default();
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            // text/plain is what navigator.sendBeacon sends.
            if mime == "application/json" || mime == "text/plain" {
                Ok(())
            } else {
                Err(warp::reject::custom(UnsupportedContentType(ct)))
            }
        })
        .untuple_one()
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes())
}

fn sender(
    collector: Arc<Collector>,
) -> impl Filter<Extract = (Sender,), Error = warp::Rejection> + Clone {
    warp::addr::remote()
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(warp::header::optional::<String>("user-agent"))
        .and(warp::header::optional::<String>("authorization"))
        .map(
            move |peer: Option<SocketAddr>,
                  xff: Option<String>,
                  ua: Option<String>,
                  auth: Option<String>| Sender {
                ip: collector.client_ip(peer, xff.as_deref()),
                user_agent: ua.unwrap_or_default(),
                api_key: auth
                    .as_deref()
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .map(|k| k.trim().to_owned())
                    .filter(|k| !k.is_empty()),
                server: false,
            },
        )
}

fn parse_json(body: &Bytes) -> Result<Value, Box<warp::reply::Response>> {
    serde_json::from_slice(body).map_err(|e| {
        let reason = format!("body is not valid JSON: {e}");
        Box::new(error_reply(StatusCode::BAD_REQUEST, &reason, None))
    })
}

/// The reply to `/api/event`: the event's id, or why it was refused. A Plausible event for
/// several domains is several events; the first refusal, if any, is the answer.
fn event_reply(results: &[Result<Accepted, Refusal>]) -> warp::reply::Response {
    if let Some(Err(r)) = results.iter().find(|r| r.is_err()) {
        return error_reply(status_of(r.status), &r.reason, r.field);
    }
    let accepted: Vec<&Accepted> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let Some(first) = accepted.first() else {
        return error_reply(StatusCode::BAD_REQUEST, "no event", None);
    };
    let bots = accepted.iter().filter(|a| a.bot).count();
    warp::reply::with_status(
        warp::reply::json(&json!({
            "accepted": accepted.len(),
            "event_id": first.event_id,
            "bots": bots,
        })),
        StatusCode::ACCEPTED,
    )
    .into_response()
}

/// The reply to a batch: how many were accepted (and how many of those were bots), and each
/// refused event's index and reason. `503` only when nothing was accepted because the log
/// was unavailable, so a client retries exactly then.
fn batch_reply(results: &[Result<Accepted, Refusal>]) -> warp::reply::Response {
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    // Said out loud, so a server posting with its HTTP library's user agent (and no
    // per-event `user_agent`) sees why its events do not show as visits.
    let bots = results
        .iter()
        .filter(|r| matches!(r, Ok(a) if a.bot))
        .count();
    let unavailable = results
        .iter()
        .any(|r| matches!(r, Err(x) if x.status == 503));
    let rejected: Vec<Value> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.as_ref()
                .err()
                .map(|x| json!({"index": i, "reason": x.reason, "field": x.field}))
        })
        .collect();
    let status = if accepted == 0 && unavailable {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::ACCEPTED
    };
    warp::reply::with_status(
        warp::reply::json(&json!({"accepted": accepted, "bots": bots, "rejected": rejected})),
        status,
    )
    .into_response()
}

fn too_many(max: usize, got: usize) -> Option<warp::reply::Response> {
    (got > max).then(|| {
        error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a batch holds at most {max} events, got {got}"),
            Some("events"),
        )
    })
}

/// The ingest routes.
pub fn routes(
    collector: Arc<Collector>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let limit = collector.config.max_body_bytes;
    let c1 = collector.clone();
    // Clickflow's own events and Plausible's (told apart by `site` vs `domain`), so that
    // Plausible's script works with its data-api pointed here.
    let event = warp::path!("api" / "event")
        .and(warp::post())
        .and(json_body(limit))
        .and(sender(collector.clone()))
        .then(move |body: Bytes, sender: Sender| {
            let c = c1.clone();
            async move {
                let raw = match parse_json(&body) {
                    Ok(v) => v,
                    Err(reply) => return *reply,
                };
                let events = if compat::is_plausible(&raw) {
                    match c.translate_plausible(&raw).await {
                        Ok(events) => events,
                        Err(r) => return event_reply(&[Err(r)]),
                    }
                } else {
                    vec![raw]
                };
                event_reply(&c.ingest_detached(events, sender).await)
            }
        });
    let c2 = collector.clone();
    let batch = warp::path!("api" / "batch")
        .and(warp::post())
        .and(json_body(limit))
        .and(sender(collector.clone()))
        .then(move |body: Bytes, sender: Sender| {
            let c = c2.clone();
            async move {
                let mut raw = match parse_json(&body) {
                    Ok(v) => v,
                    Err(reply) => return *reply,
                };
                let events = raw
                    .get_mut("events")
                    .and_then(|e| e.as_array_mut())
                    .map(std::mem::take);
                let Some(events) = events else {
                    return error_reply(
                        StatusCode::BAD_REQUEST,
                        "a batch is {\"events\": [ ... ]}",
                        Some("events"),
                    );
                };
                if let Some(reply) = too_many(c.config.max_batch_events, events.len()) {
                    return reply;
                }
                batch_reply(&c.ingest_detached(events, sender).await)
            }
        });
    let c3 = collector.clone();
    let ga4 = warp::path!("mp" / "collect")
        .and(warp::post())
        .and(warp::query::<HashMap<String, String>>())
        .and(json_body(limit))
        .and(sender(collector))
        .then(
            move |query: HashMap<String, String>, body: Bytes, mut sender: Sender| {
                let c = c3.clone();
                async move {
                    let raw = match parse_json(&body) {
                        Ok(v) => v,
                        Err(reply) => return *reply,
                    };
                    let translated = match c.translate_ga4(&query, &raw, &mut sender).await {
                        Ok(t) => t,
                        Err(r) => return error_reply(status_of(r.status), &r.reason, r.field),
                    };
                    if let Some(reply) = too_many(c.config.max_batch_events, translated.len()) {
                        return reply;
                    }
                    let valid: Vec<Value> =
                        translated.iter().filter_map(|t| t.clone().ok()).collect();
                    let mut ingested = c.ingest_detached(valid, sender).await.into_iter();
                    let results: Vec<Result<Accepted, Refusal>> = translated
                        .into_iter()
                        .map(|t| match t {
                            Ok(_) => ingested
                                .next()
                                .unwrap_or_else(|| Err(Refusal::bad("event", "not ingested"))),
                            Err(r) => Err(r),
                        })
                        .collect();
                    batch_reply(&results)
                }
            },
        );
    // Trackers post from merchants' pages, another origin than the collector's. Beacons and
    // text/plain posts need no preflight; a fetch with JSON does, and gets it answered here.
    let cors = warp::cors()
        .allow_any_origin()
        .allow_methods(["POST"])
        .allow_headers(["content-type"])
        .max_age(86_400);
    event
        .or(batch)
        .unify()
        .or(ga4)
        .unify()
        .with(cors)
        .map(warp::reply::Reply::into_response)
        .or(crate::tracker::route())
        .unify()
}

/// Turns warp's rejections into JSON errors with the right status.
pub async fn recover(
    r: warp::Rejection,
) -> Result<warp::reply::Response, std::convert::Infallible> {
    let (status, reason) = if r.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_string())
    } else if let Some(UnsupportedContentType(ct)) = r.find::<UnsupportedContentType>() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type must be application/json (got {ct:?})"),
        )
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "body too large".to_string())
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required".to_string(),
        )
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_string(),
        )
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else {
        (StatusCode::BAD_REQUEST, format!("{r:?}"))
    };
    Ok(error_reply(status, &reason, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 4000))
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = Some("198.51.100.7, 203.0.113.9, 10.0.0.2");
        // From the load balancer: the nearest untrusted hop, not the forgeable leftmost one.
        assert_eq!(
            client_ip(&trusted, peer("10.0.0.1"), xff),
            Some("203.0.113.9".parse().unwrap())
        );
        // From anyone else the header is ignored.
        assert_eq!(
            client_ip(&trusted, peer("192.0.2.1"), xff),
            Some("192.0.2.1".parse().unwrap())
        );
        // A trusted peer without the header is the client.
        assert_eq!(
            client_ip(&trusted, peer("10.0.0.1"), None),
            Some("10.0.0.1".parse().unwrap())
        );
        // Garbage hops are skipped.
        assert_eq!(
            client_ip(&trusted, peer("10.0.0.1"), Some("nonsense")),
            Some("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn visitor_hash_separates_sites_and_fields() {
        assert_ne!(
            hash64(&[b"ab", b"c"]),
            hash64(&[b"a", b"bc"]),
            "length-prefixed parts"
        );
        assert_ne!(
            hash64(&[b"salt", b"site1", b"ip"]),
            hash64(&[b"salt", b"site2", b"ip"])
        );
    }
}
