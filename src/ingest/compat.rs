//! Ingest for trackers already on merchants' pages and servers: Plausible's Events API and
//! GA4's Measurement Protocol, translated into Clickflow's own event shape, which then goes
//! through the same validation, bot rules and durable append as `/api/event`.

use serde_json::{json, Map, Value};

use std::collections::HashMap;

use super::refusal::{Refusal, Sender};
use super::sites::check_key;
use super::Collector;

/// Whether an event posted to `/api/event` is in Plausible's shape: no `site`, and the
/// `domain` (or the script's short `d`) that Plausible finds sites by.
pub fn is_plausible(raw: &Value) -> bool {
    raw.as_object().is_some_and(|o| {
        !o.contains_key("site") && (o.contains_key("domain") || o.contains_key("d"))
    })
}

/// A Plausible event: the domains it is for, and the event in Clickflow's shape without its
/// `site` (one per domain, set once the domains are resolved).
#[derive(Debug, PartialEq)]
pub struct Plausible {
    pub domains: Vec<String>,
    pub event: Map<String, Value>,
}

/// Reads Plausible's Events API shape (`name`, `url`, `domain`, `referrer`, `props`,
/// `revenue`) and its script's short keys (`n`, `u`, `d`, `r`, `p` or `m`, `$`). `domain`
/// may list several sites, comma-separated, as Plausible's script allows; props and revenue
/// may arrive JSON-encoded in a string, as older scripts send them.
pub fn from_plausible(raw: &Value) -> Result<Plausible, Refusal> {
    let obj = raw
        .as_object()
        .ok_or_else(|| Refusal::bad("event", "an event must be a JSON object"))?;
    let get = |long: &str, short: &str| obj.get(long).or_else(|| obj.get(short));
    let text = |v: Option<&Value>, field: &'static str| -> Result<Option<String>, Refusal> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Refusal::bad(field, format!("{field} must be a string"))),
        }
    };
    let domains: Vec<String> = text(get("domain", "d"), "domain")?
        .unwrap_or_default()
        .split(',')
        .map(normalize_domain)
        .filter(|d| !d.is_empty())
        .collect();
    if domains.is_empty() {
        return Err(Refusal::bad("domain", "domain is required"));
    }
    if domains.len() > 10 {
        return Err(Refusal::bad("domain", "at most 10 domains per event"));
    }
    let mut event = Map::new();
    let name = text(get("name", "n"), "name")?.unwrap_or_default();
    // Plausible's script calls a pageview "pageview", as Clickflow does.
    event.insert("name".into(), json!(name));
    if let Some(url) = text(get("url", "u"), "url")? {
        event.insert("url".into(), json!(url));
    }
    if let Some(referrer) = text(get("referrer", "r"), "referrer")? {
        event.insert("referrer".into(), json!(referrer));
    }
    let props = get("props", "p").or_else(|| get("meta", "m"));
    if let Some(props) = decoded(props, "props")? {
        event.insert("props".into(), props);
    }
    if let Some(revenue) = decoded(get("revenue", "$"), "revenue")? {
        event.insert("revenue".into(), revenue);
    }
    Ok(Plausible { domains, event })
}

/// A site's domain as Plausible matches it: lower case, no `www.`, no trailing dot.
pub fn normalize_domain(domain: &str) -> String {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    d.strip_prefix("www.").unwrap_or(&d).to_owned()
}

/// An object, or an object JSON-encoded in a string.
fn decoded(v: Option<&Value>, field: &'static str) -> Result<Option<Value>, Refusal> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(inner @ Value::Object(_)) => Ok(Some(inner)),
            _ => Err(Refusal::bad(
                field,
                format!("{field} must be an object (or one encoded as a JSON string)"),
            )),
        },
        Some(other) => Ok(Some(other.clone())),
    }
}

/// GA4 parameters that describe the page or the session rather than the event: read into
/// Clickflow's fields or dropped, never kept as props.
const GA4_RESERVED: &[&str] = &[
    "page_location",
    "page_referrer",
    "page_title",
    "session_id",
    "engagement_time_msec",
    "value",
    "currency",
    "transaction_id",
    "timestamp_micros",
    "debug_mode",
];

/// A Measurement Protocol request: its events in Clickflow's shape, each translated or
/// refused on its own. A request without `client_id` or `events` is refused whole.
///
/// - the visitor is `user_id` or else `client_id` (GA4's own identity of a browser or app);
/// - `page_view` is a pageview of `page_location`, referred by `page_referrer`;
/// - `purchase` carries `value` and `currency` as revenue, and its `transaction_id` as its
///   event id, so a resent purchase counts once; `refund` refunds the purchase of the same
///   `transaction_id`;
/// - other events keep their name; their scalar params become props;
/// - `timestamp_micros` (per event or per request) is the event time; `user_agent` and
///   `ip_override`, when a server sends them, describe the visitor.
pub fn from_ga4(body: &Value, site: &str) -> Result<Vec<Result<Value, Refusal>>, Refusal> {
    let obj = body
        .as_object()
        .ok_or_else(|| Refusal::bad("body", "a Measurement Protocol body is a JSON object"))?;
    let identity = |field: &'static str| -> Result<Option<String>, Refusal> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(Refusal::bad(
                field,
                format!("{field} must be a non-empty string"),
            )),
        }
    };
    let visitor = match identity("user_id")? {
        Some(user) => user,
        None => identity("client_id")?
            .ok_or_else(|| Refusal::bad("client_id", "client_id is required"))?,
    };
    let events = obj
        .get("events")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .ok_or_else(|| Refusal::bad("events", "events must be a non-empty array"))?;
    let request_micros = obj.get("timestamp_micros");
    let mut common = Map::new();
    common.insert("site".into(), json!(site));
    common.insert("visitor_id".into(), json!(visitor));
    if let Some(ua) = obj.get("user_agent") {
        common.insert("user_agent".into(), ua.clone());
    }
    if let Some(ip) = obj.get("ip_override") {
        common.insert("ip".into(), ip.clone());
    }
    Ok(events
        .iter()
        .map(|e| ga4_event(e, &common, request_micros))
        .collect())
}

fn ga4_event(
    e: &Value,
    common: &Map<String, Value>,
    request_micros: Option<&Value>,
) -> Result<Value, Refusal> {
    let name = e
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| Refusal::bad("name", "every event needs a name"))?;
    let empty = Map::new();
    let params = match e.get("params") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => return Err(Refusal::bad("params", "params must be an object")),
    };
    let param_text = |k: &str| match params.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let mut out = common.clone();
    if let Some(url) = param_text("page_location") {
        out.insert("url".into(), json!(url));
    }
    if let Some(referrer) = param_text("page_referrer") {
        out.insert("referrer".into(), json!(referrer));
    }
    match e.get("timestamp_micros").or(request_micros) {
        None | Some(Value::Null) => {}
        Some(micros) => {
            let micros = micros
                .as_i64()
                .or_else(|| micros.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| {
                    Refusal::bad(
                        "timestamp_micros",
                        "timestamp_micros must be whole microseconds",
                    )
                })?;
            out.insert("ts".into(), json!(micros.div_euclid(1000)));
        }
    }
    match name {
        "page_view" => {
            out.insert("name".into(), json!("pageview"));
        }
        "purchase" => {
            out.insert("name".into(), json!("purchase"));
            if let Some(id) = param_text("transaction_id") {
                out.insert("event_id".into(), json!(id));
            }
            if let Some(value) = params.get("value").filter(|v| !v.is_null()) {
                let currency = param_text("currency").ok_or_else(|| {
                    Refusal::bad("currency", "a purchase with a value needs its currency")
                })?;
                out.insert(
                    "revenue".into(),
                    json!({"amount": value, "currency": currency}),
                );
            }
        }
        "refund" => {
            let id = param_text("transaction_id").ok_or_else(|| {
                Refusal::bad(
                    "transaction_id",
                    "a refund names the purchase's transaction_id",
                )
            })?;
            out.insert("name".into(), json!("refund"));
            out.insert("event_id".into(), json!(format!("refund:{id}")));
            out.insert("refund_of".into(), json!(id));
        }
        other => {
            out.insert("name".into(), json!(other));
            let props: Map<String, Value> = params
                .iter()
                .filter(|(k, v)| {
                    !GA4_RESERVED.contains(&k.as_str())
                        && matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !props.is_empty() {
                out.insert("props".into(), Value::Object(props));
            }
        }
    }
    Ok(Value::Object(out))
}

/// Plausible's shape, one event per domain it names, in Clickflow's.
pub async fn translate_plausible(c: &Collector, raw: &Value) -> Result<Vec<Value>, Refusal> {
    let plausible = from_plausible(raw)?;
    let mut events = Vec::with_capacity(plausible.domains.len());
    for domain in &plausible.domains {
        let site = c
            .sites
            .site_of_domain(domain)
            .await?
            .ok_or_else(|| Refusal {
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
pub async fn translate_ga4(
    c: &Collector,
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
    let info = c.sites.site(site).await?.ok_or_else(|| Refusal {
        status: 404,
        field: Some("measurement_id"),
        reason: format!("unknown site {site:?} (measurement_id is the tracking id)"),
    })?;
    check_key(site, &info, secret).map_err(|mut r| {
        r.field = Some("api_secret");
        r.reason = format!("api_secret is not the API key of site {site:?}");
        r
    })?;
    sender.api_key = Some(secret.clone());
    sender.server = true;
    from_ga4(body, site)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_documented_shape() {
        let raw = json!({"name": "Signup", "url": "https://www.shop.example/pricing",
            "domain": "www.Shop.example", "referrer": "https://news.example/",
            "props": {"plan": "pro", "seats": 3},
            "revenue": {"amount": 1322.22, "currency": "USD"}});
        assert!(is_plausible(&raw));
        let p = from_plausible(&raw).unwrap();
        assert_eq!(p.domains, vec!["shop.example"]);
        assert_eq!(
            Value::Object(p.event),
            json!({"name": "Signup", "url": "https://www.shop.example/pricing",
                "referrer": "https://news.example/", "props": {"plan": "pro", "seats": 3},
                "revenue": {"amount": 1322.22, "currency": "USD"}})
        );
    }

    #[test]
    fn plausible_script_short_keys() {
        // What Plausible's script sends: short keys, a null referrer on direct visits,
        // several domains, props as a JSON string in older scripts.
        let raw = json!({"n": "pageview", "u": "https://a.example/", "d": "a.example,b.example",
            "r": null, "w": 1280, "h": 0, "m": "{\"author\":\"ann\"}"});
        let p = from_plausible(&raw).unwrap();
        assert_eq!(p.domains, vec!["a.example", "b.example"]);
        assert_eq!(
            Value::Object(p.event),
            json!({"name": "pageview", "url": "https://a.example/", "props": {"author": "ann"}})
        );
        assert!(!is_plausible(
            &json!({"site": "cf_x", "domain": "a.example"})
        ));
        let refused = from_plausible(&json!({"n": "pageview", "d": " , "})).unwrap_err();
        assert_eq!(refused.field, Some("domain"));
        let refused = from_plausible(&json!({"d": "a.example", "p": "not json"})).unwrap_err();
        assert_eq!(refused.field, Some("props"));
    }

    #[test]
    fn ga4_events_translate() {
        let body = json!({"client_id": "123.456", "timestamp_micros": 1_700_000_000_123_456i64,
        "events": [
            {"name": "page_view", "params": {"page_location": "https://s.example/a",
                "page_referrer": "https://google.com/", "engagement_time_msec": 100}},
            {"name": "purchase", "params": {"transaction_id": "T-1", "value": 12.5,
                "currency": "EUR", "items": [{"item_id": "x"}]}},
            {"name": "refund", "params": {"transaction_id": "T-1"}},
            {"name": "signup", "params": {"plan": "pro", "session_id": "9", "nested": {}}},
            {"name": "purchase", "params": {"value": 3}},
            {"params": {}}
        ]});
        let out = from_ga4(&body, "cf_s").unwrap();
        let ok = |i: usize| out[i].as_ref().unwrap().clone();
        let base = |extra: Value| {
            let mut v =
                json!({"site": "cf_s", "visitor_id": "123.456", "ts": 1_700_000_000_123i64});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        assert_eq!(
            ok(0),
            base(json!({"name": "pageview", "url": "https://s.example/a",
            "referrer": "https://google.com/"}))
        );
        assert_eq!(
            ok(1),
            base(json!({"name": "purchase", "event_id": "T-1",
            "revenue": {"amount": 12.5, "currency": "EUR"}}))
        );
        assert_eq!(
            ok(2),
            base(json!({"name": "refund", "event_id": "refund:T-1",
            "refund_of": "T-1"}))
        );
        assert_eq!(
            ok(3),
            base(json!({"name": "signup", "props": {"plan": "pro"}}))
        );
        assert_eq!(out[4].as_ref().unwrap_err().field, Some("currency"));
        assert_eq!(out[5].as_ref().unwrap_err().field, Some("name"));
    }

    #[test]
    fn ga4_request_level_refusals() {
        let no_client = from_ga4(&json!({"events": [{"name": "x"}]}), "s").unwrap_err();
        assert_eq!(no_client.field, Some("client_id"));
        let no_events = from_ga4(&json!({"client_id": "1", "events": []}), "s").unwrap_err();
        assert_eq!(no_events.field, Some("events"));
        let user = from_ga4(
            &json!({"client_id": "1", "user_id": "u-7", "events": [{"name": "x"}]}),
            "s",
        )
        .unwrap();
        assert_eq!(user[0].as_ref().unwrap()["visitor_id"], "u-7");
    }
}
