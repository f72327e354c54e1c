//! The fields of an event, each checked with a reason a client can act on.

use std::collections::BTreeMap;

use chrono::DateTime;
use clickflow_dataflows::event::Revenue;
use serde_json::{Map, Value};

use super::refusal::{no_nul, Refusal};
use crate::config::CollectorConfig;

pub fn required_str(
    obj: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<String, Refusal> {
    optional_str(obj, field, max)?
        .ok_or_else(|| Refusal::bad(field, format!("{field} is required")))
}

pub fn optional_str(
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

/// As [`optional_str`], but an empty or blank string means absent.
pub fn optional_str_or_empty(
    obj: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<Option<String>, Refusal> {
    match obj.get(field) {
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        _ => optional_str(obj, field, max),
    }
}

pub fn props(v: Option<&Value>) -> Result<Vec<(String, String)>, Refusal> {
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

pub fn revenue(v: Option<&Value>) -> Result<Option<Revenue>, Refusal> {
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

/// The event's time from `ts` (RFC 3339 or Unix milliseconds; absent: now), refused when
/// older than the lateness bound or too far in the future.
pub fn event_time(config: &CollectorConfig, ts: Option<&Value>, now: i64) -> Result<i64, Refusal> {
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
    let lateness = config.lateness_secs as i64 * 1000;
    if now - ts > lateness {
        return Err(Refusal::bad(
            "ts",
            format!(
                "event is older than the lateness bound of {} s",
                config.lateness_secs
            ),
        ));
    }
    if ts - now > config.future_skew_secs as i64 * 1000 {
        return Err(Refusal::bad(
            "ts",
            format!(
                "event is more than {} s in the future",
                config.future_skew_secs
            ),
        ));
    }
    // Event time never exceeds receive time, so an event is always in the log at or after
    // its own time: replays and restarts that seek by time see every event of a bucket.
    Ok(ts.min(now))
}
