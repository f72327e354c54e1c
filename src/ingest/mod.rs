//! HTTP ingest: `POST /api/event` (Clickflow's events and Plausible's), `POST /api/batch`,
//! `POST /mp/collect` (GA4's Measurement Protocol), open to any origin for trackers on
//! merchants' pages; and the tracker script itself. An event is answered `202` only
//! after the log acknowledged it durable; every refusal says which field and why.
//!
//! [`routes`] reads requests (Clickflow's, [`compat`]'s shapes) → [`Collector::validate`]
//! checks each event's [`fields`] against its site ([`sites`]), hashes its visitor
//! ([`visitor`]) and enriches it ([`client`]) → [`batch`] appends the records to the log.

pub mod batch;
pub mod client;
pub mod compat;
pub mod fields;
pub mod refusal;
pub mod routes;
pub mod sites;
pub mod tracker;
pub mod visitor;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use clickflow_dataflows::event::{BotHit, Event, Record, PAGEVIEW, REFUND};
use ipnet::IpNet;
use serde_json::Value;

use crate::config::CollectorConfig;
use crate::log::Log;
use crate::telemetry::{BOT_EVENTS, EVENTS_ACCEPTED, EVENTS_REJECTED};
use batch::Batch;
use client::Enricher;
use fields::{event_time, optional_str, optional_str_or_empty, props, required_str, revenue};
use refusal::key_required;
pub use refusal::{Accepted, Refusal, Sender};
pub use routes::routes;
use sites::{check_key, namespaced_ids, Sites, KEYED_ID_PREFIX};
use visitor::{client_ip, hash64, visitor_id_hash};

pub struct Collector {
    pub config: CollectorConfig,
    pub log: Arc<dyn Log>,
    trusted: Vec<IpNet>,
    sites: Sites,
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
            trusted,
            sites: Sites::new(pool),
            enricher,
        })
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
        let ts = event_time(&self.config, obj.get("ts"), now)?;
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

        let site_info = self.sites.site(&site).await?.ok_or_else(|| Refusal {
            status: 404,
            field: Some("site"),
            reason: format!("unknown site {site:?}"),
        })?;
        let keyed = match sender.api_key.as_deref() {
            Some(presented) => {
                check_key(&site, &site_info, presented)?;
                true
            }
            None => false,
        };
        let on_behalf = ua_override.is_some() || ip_override.is_some();
        if on_behalf && !keyed {
            return Err(key_required(
                "an event naming the visitor's user_agent or ip must come from a server \
                 presenting the site's API key (Authorization: Bearer <key>)",
            ));
        }
        if name == REFUND && !keyed {
            return Err(key_required(
                "a refund must come from the merchant's server presenting the site's API key \
                 (Authorization: Bearer <key>): anyone can post to the collector",
            ));
        }
        let (event_id, refund_of) = namespaced_ids(keyed, event_id, refund_of)?;
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
                let salt = self.sites.daily_salt(now).await?;
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
                tracing::error!(error = %e, "ingest task failed");
                (0..n)
                    .map(|_| {
                        Err(Refusal {
                            status: 500,
                            field: None,
                            reason: "internal error; it has been logged".into(),
                        })
                    })
                    .collect()
            })
    }

    /// Validates and appends; returns per-input results in order (what was logged, or why not).
    pub async fn ingest(&self, raws: &[Value], sender: &Sender) -> Vec<Result<Accepted, Refusal>> {
        let now = clickflow_operators::source::wall_clock_ms();
        let mut results: Vec<Result<Accepted, Refusal>> = Vec::with_capacity(raws.len());
        let mut batch = Batch::default();
        for raw in raws {
            match self.validate(raw, sender, now).await {
                Ok(record) => {
                    let (event_id, bot) = match &record {
                        Record::Event(e) => (e.event_id.as_str(), false),
                        Record::Bot(b) => (b.event_id.as_str(), true),
                        Record::Erase(_) => ("", false),
                    };
                    // The id as the client sent it, not as it is logged.
                    let event_id = event_id
                        .strip_prefix(KEYED_ID_PREFIX)
                        .unwrap_or(event_id)
                        .to_owned();
                    let accepted = Accepted { event_id, bot };
                    batch.add(results.len(), record);
                    results.push(Ok(accepted));
                }
                Err(r) => results.push(Err(r)),
            }
        }
        batch.append(self.log.as_ref(), now, &mut results).await;
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
