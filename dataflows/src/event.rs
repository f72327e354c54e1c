//! The event as the collector writes it to the log and the engine reads it back.

use serde::{Deserialize, Serialize};

/// An accepted, validated tracker event. Raw client IPs never reach this type: the visitor is
/// already a hash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    pub site: String,
    pub event_id: String,
    /// `"pageview"` or a custom event name.
    pub name: String,
    /// Event time in ms, never later than `received`.
    pub ts: i64,
    /// Server receive time in ms.
    pub received: i64,
    pub visitor: u64,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub referrer: Option<String>,
    /// Flat string properties, sorted by key.
    #[serde(default)]
    pub props: Vec<(String, String)>,
    #[serde(default)]
    pub revenue: Option<Revenue>,
    /// IANA zone of the site when the event was accepted; day buckets follow it.
    pub tz: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Revenue {
    /// Decimal string as sent, e.g. `"12.50"`.
    pub amount: String,
    /// ISO 4217 code, upper case.
    pub currency: String,
}

impl Event {
    pub fn is_pageview(&self) -> bool {
        self.name == PAGEVIEW
    }
}

pub const PAGEVIEW: &str = "pageview";
