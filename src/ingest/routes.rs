//! The ingest routes: request shapes in, replies out. Each event's fate is decided by
//! [`Collector::ingest`]; this module only reads requests and words the answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::{Filter, Reply};

use super::refusal::{Accepted, Refusal, Sender};
use super::{compat, Collector};
use crate::http::{error_reply, json_body, parse_json, status_of};

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
    let for_event = collector.clone();
    // Clickflow's own events and Plausible's (told apart by `site` vs `domain`), so that
    // Plausible's script works with its data-api pointed here.
    let event = warp::path!("api" / "event")
        .and(warp::post())
        .and(json_body(limit))
        .and(sender(collector.clone()))
        .then(move |body: Bytes, sender: Sender| {
            let c = for_event.clone();
            async move {
                let raw = match parse_json(&body) {
                    Ok(v) => v,
                    Err(reply) => return *reply,
                };
                let events = if compat::is_plausible(&raw) {
                    match compat::translate_plausible(&c, &raw).await {
                        Ok(events) => events,
                        Err(r) => return event_reply(&[Err(r)]),
                    }
                } else {
                    vec![raw]
                };
                event_reply(&c.ingest_detached(events, sender).await)
            }
        });
    let for_batch = collector.clone();
    let batch = warp::path!("api" / "batch")
        .and(warp::post())
        .and(json_body(limit))
        .and(sender(collector.clone()))
        .then(move |body: Bytes, sender: Sender| {
            let c = for_batch.clone();
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
    let for_ga4 = collector.clone();
    let ga4 = warp::path!("mp" / "collect")
        .and(warp::post())
        .and(warp::query::<HashMap<String, String>>())
        .and(json_body(limit))
        .and(sender(collector))
        .then(
            move |query: HashMap<String, String>, body: Bytes, mut sender: Sender| {
                let c = for_ga4.clone();
                async move {
                    let raw = match parse_json(&body) {
                        Ok(v) => v,
                        Err(reply) => return *reply,
                    };
                    let translated =
                        match compat::translate_ga4(&c, &query, &raw, &mut sender).await {
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
        .or(super::tracker::route())
        .unify()
}
