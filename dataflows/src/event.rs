//! What the collector writes to the log and the engine reads back.

use serde::{Deserialize, Serialize};

/// One log record. Everything for a site shares the site's partition key, so a site's
/// events, bot counts and erasures stay in order on one partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// Records live only between the decoder and the first `flat_map`; boxing the common variant
// would add an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Record {
    Event(Event),
    /// A hit the collector recognised as a bot or crawler: only counted, never analysed.
    Bot(BotHit),
    /// A merchant asked to forget a visitor: every rollup must drop their events.
    Erase(Erasure),
}

/// The most records one log message carries. A request's records of one site share a message
/// (one append, one broker message, one offset): brokers and the log pay per message. 100
/// events stay well under the 1 MB a Kafka broker accepts by default.
pub const MAX_RECORDS_PER_MESSAGE: usize = 100;

impl Record {
    /// A log message of `records` (all of one site, in order): the record itself when alone,
    /// else a JSON array of them.
    pub fn encode_all(records: &[Record]) -> serde_json::Result<Vec<u8>> {
        match records {
            [one] => serde_json::to_vec(one),
            many => serde_json::to_vec(many),
        }
    }

    /// The records of a log message, in order: one record, or an array of them (what
    /// [`Record::encode_all`] writes; logs written one record per message read the same).
    pub fn decode_all(message: &[u8]) -> serde_json::Result<Vec<Record>> {
        match message.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => serde_json::from_slice(message),
            _ => serde_json::from_slice::<Record>(message).map(|r| vec![r]),
        }
    }
}

/// An accepted, validated tracker event. Raw client IPs and user agents never reach this
/// type: the visitor is already a hash and the user agent already parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    pub site: String,
    pub event_id: String,
    /// `"pageview"`, `"refund"` or a custom event name (a goal).
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
    /// For `refund` events: the `event_id` whose revenue is taken back.
    #[serde(default)]
    pub refund_of: Option<String>,
    /// IANA zone of the site when the event was accepted; day buckets follow it.
    pub tz: String,
    /// Parsed from the user agent at the collector (the raw string is not kept).
    #[serde(default)]
    pub client: Client,
    /// ISO 3166-1 alpha-2 code from the client IP, or `unknown` (the IP is not kept).
    #[serde(default = "unknown")]
    pub country: String,
}

/// Device, browser and operating system as read from a user agent.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Client {
    /// `desktop`, `mobile`, `tablet` or `unknown`.
    pub device: String,
    pub browser: String,
    pub browser_version: String,
    pub os: String,
    pub os_version: String,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            device: UNKNOWN.into(),
            browser: UNKNOWN.into(),
            browser_version: UNKNOWN.into(),
            os: UNKNOWN.into(),
            os_version: UNKNOWN.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Revenue {
    /// Decimal string as sent, e.g. `"12.50"`.
    pub amount: String,
    /// ISO 4217 code, upper case.
    pub currency: String,
}

impl Revenue {
    /// The amount in millionths of the currency unit, exact for up to six decimals (the
    /// collector refuses more), so sums never drift the way floats do.
    pub fn micros(&self) -> Option<i64> {
        let (sign, digits) = match self.amount.strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, self.amount.as_str()),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if frac.len() > 6 || (whole.is_empty() && frac.is_empty()) {
            return None;
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let frac: i64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<6}").parse().ok()?
        };
        whole
            .checked_mul(1_000_000)?
            .checked_add(frac)?
            .checked_mul(sign)
    }
}

/// A bot hit, counted per site and bucket.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BotHit {
    pub site: String,
    pub event_id: String,
    pub ts: i64,
    pub tz: String,
}

/// Forget `visitor` of `site` (the hash the collector computed).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Erasure {
    pub site: String,
    pub visitor: u64,
}

impl Event {
    pub fn is_pageview(&self) -> bool {
        self.name == PAGEVIEW
    }

    pub fn is_refund(&self) -> bool {
        self.name == REFUND
    }
}

pub const PAGEVIEW: &str = "pageview";
pub const REFUND: &str = "refund";
pub const UNKNOWN: &str = "unknown";

fn unknown() -> String {
    UNKNOWN.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revenue_is_exact_in_micros() {
        let r = |a: &str| {
            Revenue {
                amount: a.into(),
                currency: "EUR".into(),
            }
            .micros()
        };
        assert_eq!(r("12.50"), Some(12_500_000));
        assert_eq!(r("0.000001"), Some(1));
        assert_eq!(r("-3"), Some(-3_000_000));
        assert_eq!(r(".5"), Some(500_000));
        assert_eq!(r("1.0000001"), None);
        assert_eq!(r("abc"), None);
        assert_eq!(r("99999999999999999"), None);
    }

    #[test]
    fn records_are_tagged_json() {
        let e = Record::Erase(Erasure {
            site: "s".into(),
            visitor: 7,
        });
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"kind":"erase","site":"s","visitor":7}"#);
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), e);
    }

    #[test]
    fn a_message_carries_one_record_or_several() {
        let erase = |visitor| {
            Record::Erase(Erasure {
                site: "s".into(),
                visitor,
            })
        };
        let one = Record::encode_all(&[erase(1)]).unwrap();
        assert_eq!(one, serde_json::to_vec(&erase(1)).unwrap());
        assert_eq!(Record::decode_all(&one).unwrap(), vec![erase(1)]);
        let several = Record::encode_all(&[erase(1), erase(2), erase(3)]).unwrap();
        assert_eq!(
            Record::decode_all(&several).unwrap(),
            vec![erase(1), erase(2), erase(3)]
        );
        assert!(Record::decode_all(b"[{\"kind\":\"nope\"}]").is_err());
        assert!(Record::decode_all(b"").is_err());
    }
}
