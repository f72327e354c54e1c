//! What the collector says back about each event: who sent it, and whether it was accepted
//! or why not.

use std::net::IpAddr;

use serde::Serialize;

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
    pub fn bad(field: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal {
            status: 400,
            field: Some(field),
            reason: reason.into(),
        }
    }
    pub fn label(&self) -> &'static str {
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

/// A 503 for a part that failed: the cause goes to the log, never to the (anonymous) client.
pub fn unavailable(part: &str, error: &dyn std::fmt::Display) -> Refusal {
    tracing::warn!(error = %error, "collector: {part} failed");
    Refusal {
        status: 503,
        field: None,
        reason: "temporarily unavailable; retry later".into(),
    }
}

/// A 401: the event needs the site's key.
pub fn key_required(reason: &str) -> Refusal {
    Refusal {
        status: 401,
        field: Some("authorization"),
        reason: reason.into(),
    }
}

/// Text that would reach Postgres, where text cannot hold NUL: refused at the door rather
/// than failing the sink's transaction later.
pub fn no_nul(field: &'static str) -> Refusal {
    Refusal::bad(
        field,
        format!("{field} must not contain NUL characters (\\u0000)"),
    )
}
