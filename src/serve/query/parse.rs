//! Step 1: the query as sent, checked and resolved: which metrics, which breakdown and
//! filters, which time slots, which instants.

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use clickflow_dataflows::metric::{DIMENSION_SEPARATOR, VALUE_SEPARATOR};
use clickflow_dataflows::registry::{family_of, FAMILIES};
use clickflow_operators::time::{bucket_of, Granularity};
use serde::Deserialize;

use super::metrics::{formula, Formula};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub site_id: String,
    pub metrics: Vec<String>,
    pub date_range: DateRange,
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// `[dimension, "is" | "is_not" | "contains", [values…]]`
    #[serde(default)]
    pub filters: Vec<(String, String, Vec<String>)>,
    #[serde(default)]
    pub limit: Option<usize>,
    /// `"previous_period"`: the same query over the period just before, as `comparison`.
    #[serde(default)]
    pub compare: Option<String>,
}

/// `[from, to]` (dates in the site's zone, both inclusive, or RFC 3339 instants, `[from,
/// to)`), or a preset named relative to today in the site's zone: `today`, `yesterday`,
/// `7d`, `30d` (any `<n>d`: the n days ending today), `month` (this month to today),
/// `last_month`.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum DateRange {
    Preset(String),
    Bounds(Vec<String>),
}

/// A time dimension: stored buckets (minute, hour, day), or slots of days (week from Monday,
/// month) in the site's zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

impl Period {
    pub fn parse(s: &str) -> Option<Period> {
        Some(match s {
            "minute" => Period::Minute,
            "hour" => Period::Hour,
            "day" => Period::Day,
            "week" => Period::Week,
            "month" => Period::Month,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// The stored buckets a slot is made of.
    pub fn granularity(self) -> Granularity {
        match self {
            Period::Minute => Granularity::Minute,
            Period::Hour => Granularity::Hour,
            Period::Day | Period::Week | Period::Month => Granularity::Day,
        }
    }

    /// The start of the slot holding instant `ms`.
    pub fn slot_of(self, ms: i64, tz: Tz) -> i64 {
        let date = || local_date(ms, tz);
        match self {
            Period::Minute | Period::Hour | Period::Day => {
                bucket_of(ms, self.granularity(), tz).start
            }
            Period::Week => {
                let d = date();
                let monday = d - Days::new(d.weekday().num_days_from_monday() as u64);
                midnight(monday, tz).unwrap_or(ms)
            }
            Period::Month => {
                let d = date();
                d.with_day(1)
                    .and_then(|first| midnight(first, tz))
                    .unwrap_or(ms)
            }
        }
    }

    /// How a slot is named in results: an instant for minutes and hours, the local date of
    /// its first day otherwise (`YYYY-MM` for months).
    pub fn label(self, ms: i64, tz: Tz) -> String {
        let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        match self {
            Period::Minute | Period::Hour => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            Period::Day | Period::Week => t.with_timezone(&tz).format("%Y-%m-%d").to_string(),
            Period::Month => t.with_timezone(&tz).format("%Y-%m").to_string(),
        }
    }
}

fn local_date(ms: i64, tz: Tz) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&tz)
        .date_naive()
}

/// The instant a local date starts in `tz` (where `bucket_of` puts it: some zones skip
/// midnight, and midday always exists).
fn midnight(d: NaiveDate, tz: Tz) -> Option<i64> {
    let local = tz
        .from_local_datetime(&d.and_hms_opt(12, 0, 0)?)
        .earliest()?;
    Some(bucket_of(local.timestamp_millis(), Granularity::Day, tz).start)
}

/// Parses one end of `[from, to]`: a date (its midnight in the site's zone; `to` dates are
/// inclusive, so they mean the following midnight) or an RFC 3339 instant.
pub fn parse_bound(s: &str, tz: Tz, is_end: bool) -> Result<i64, String> {
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let d = if is_end { d.succ_opt() } else { Some(d) };
        let d = d.ok_or("date out of range")?;
        if !(1970..=9999).contains(&d.year()) {
            return Err(format!("date_range: {s} is outside 1970-9999"));
        }
        return midnight(d, tz).ok_or_else(|| format!("{s}: no midday in {tz}"));
    }
    let ms = DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .map_err(|_| format!("date_range: {s:?} is neither YYYY-MM-DD nor RFC 3339"))?;
    // 1970-01-01 .. 10000-01-01
    if !(0..253_402_300_800_000).contains(&ms) {
        return Err(format!("date_range: {s} is outside 1970-9999"));
    }
    Ok(ms)
}

/// The instants `[from, to)` a date range means, `now` being the current instant.
pub fn resolve_range(range: &DateRange, tz: Tz, now: i64) -> Result<(i64, i64), String> {
    let (from, to) = match range {
        DateRange::Bounds(bounds) => {
            let [from, to] = bounds.as_slice() else {
                return Err("date_range must be [from, to] or a preset".into());
            };
            (parse_bound(from, tz, false)?, parse_bound(to, tz, true)?)
        }
        DateRange::Preset(name) => {
            let today = local_date(now, tz);
            let days = |first: NaiveDate, end: NaiveDate| -> Result<(i64, i64), String> {
                let at = |d| midnight(d, tz).ok_or_else(|| format!("{d}: no midday in {tz}"));
                Ok((at(first)?, at(end)?))
            };
            let tomorrow = today + Days::new(1);
            let first_of_month = today.with_day(1).unwrap_or(today);
            match name.as_str() {
                "today" => days(today, tomorrow)?,
                "yesterday" => days(today - Days::new(1), today)?,
                "month" => days(first_of_month, tomorrow)?,
                "last_month" => days(first_of_month - Months::new(1), first_of_month)?,
                n => {
                    let count = n
                        .strip_suffix('d')
                        .and_then(|c| c.parse::<u64>().ok())
                        .filter(|c| (1..=3660).contains(c))
                        .ok_or_else(|| {
                            format!("date_range: unknown preset {n:?} (today, yesterday, 7d, 30d or any <n>d, month, last_month; or [from, to])")
                        })?;
                    days(today - Days::new(count - 1), tomorrow)?
                }
            }
        }
    };
    if from >= to {
        return Err("date_range: from must be before to".into());
    }
    Ok((from, to))
}

/// The period just before `[from, to)`: as many whole local days when both ends are
/// midnights in the site's zone (so a week is compared with the week before, across a DST
/// change too), the same length otherwise.
pub fn previous_period(from: i64, to: i64, tz: Tz) -> (i64, i64) {
    let (first, end) = (local_date(from, tz), local_date(to, tz));
    let whole_days = midnight(first, tz) == Some(from) && midnight(end, tz) == Some(to);
    let days = (end - first).num_days();
    if whole_days && days > 0 {
        if let Some(start) = midnight(first - Days::new(days as u64), tz) {
            return (start, from);
        }
    }
    (from - (to - from), from)
}

/// A query checked and resolved against its site: what the later steps work from.
#[derive(Clone, Debug)]
pub struct Request {
    pub site_id: String,
    pub tz: Tz,
    pub formulas: Vec<Formula>,
    pub shape: Shape,
    pub from: i64,
    pub to: i64,
}

/// Resolves `q` for a site in zone `tz` at instant `now`.
pub fn parse(q: &Query, tz: Tz, now: i64) -> Result<Request, String> {
    if q.metrics.is_empty() {
        return Err("metrics: name at least one metric".into());
    }
    if let Some(c) = q.compare.as_deref().filter(|c| *c != "previous_period") {
        return Err(format!(
            "compare: unknown comparison {c:?} (previous_period)"
        ));
    }
    let shape = shape(q)?;
    let formulas = q
        .metrics
        .iter()
        .map(|m| formula(m, &shape.breakdown))
        .collect::<Result<Vec<_>, _>>()?;
    let folds_values = !shape.breakdown_shown
        && shape
            .filters
            .iter()
            .any(|f| !(f.op == FilterOp::Is && f.values.len() == 1));
    if folds_values && formulas.iter().any(|f| f.is_distinct()) {
        return Err(
            "visitors of several breakdown values are not a sum: add the filtered dimension to dimensions, or filter to one value with \"is\"".into(),
        );
    }
    let (from, to) = resolve_range(&q.date_range, tz, now)?;
    Ok(Request {
        site_id: q.site_id.clone(),
        tz,
        formulas,
        shape,
        from,
        to,
    })
}

/// Every breakdown dimension a query may name, for error messages.
pub fn known_dimensions() -> Vec<String> {
    let mut out: Vec<String> = FAMILIES
        .iter()
        .flat_map(|f| f.dimensions.iter())
        .filter(|d| !d.is_empty())
        .flat_map(|d| d.split(DIMENSION_SEPARATOR))
        .map(|d| d.replace('*', "<key>"))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The parsed shape of a query.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    pub time: Option<Period>,
    /// The stored breakdown, e.g. `source` or `goal,prop:plan`; empty for totals.
    pub breakdown: String,
    /// Whether the breakdown is shown as result dimensions (a filter alone does not).
    pub breakdown_shown: bool,
    pub filters: Vec<Filter>,
    pub limit: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    /// Index of the filtered part in the breakdown's value.
    pub part: usize,
    pub op: FilterOp,
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FilterOp {
    Is,
    IsNot,
    Contains,
}

impl Filter {
    pub fn keeps(&self, value: &str) -> bool {
        let part = value.split(VALUE_SEPARATOR).nth(self.part).unwrap_or("");
        match self.op {
            FilterOp::Is => self.values.iter().any(|v| v == part),
            FilterOp::IsNot => !self.values.iter().any(|v| v == part),
            FilterOp::Contains => self.values.iter().any(|v| part.contains(v.as_str())),
        }
    }
}

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;

/// Splits `dimensions` into time and breakdown, and checks filters against the breakdown
/// (rollups are per breakdown, so a filter can only narrow the breakdown it is stored with).
pub fn shape(q: &Query) -> Result<Shape, String> {
    let mut time = None;
    let mut parts: Vec<String> = Vec::new();
    for d in &q.dimensions {
        if let Some(g) = d.strip_prefix("time:") {
            let g = Period::parse(g).ok_or_else(|| {
                format!(
                    "dimensions: unknown time dimension {d:?} (time:minute, time:hour, time:day, time:week, time:month)"
                )
            })?;
            if time.replace(g).is_some() {
                return Err("dimensions: at most one time dimension".into());
            }
        } else {
            parts.push(d.clone());
        }
    }
    let breakdown_shown = !parts.is_empty();
    if parts.is_empty() {
        // A filter without a breakdown narrows the totals to the filtered dimension.
        let mut dims: Vec<String> = q.filters.iter().map(|f| f.0.clone()).collect();
        dims.dedup();
        parts = dims;
    }
    let breakdown = parts.join(&DIMENSION_SEPARATOR.to_string());
    let offered = FAMILIES.iter().any(|f| {
        f.metrics
            .iter()
            .any(|m| family_of(m, &breakdown).is_some_and(|x| x.name == f.name))
    });
    if !breakdown.is_empty() && !offered {
        return Err(format!(
            "dimensions: unknown dimension {breakdown:?} (time:minute|hour|day|week|month, {}; goal with prop:<key>; goal with currency)",
            known_dimensions().join(", ")
        ));
    }
    let mut filters = Vec::new();
    for (dim, op, values) in &q.filters {
        let part = parts.iter().position(|p| p == dim).ok_or_else(|| {
            format!("filters: {dim:?} must be one of the query's dimensions ({breakdown:?}): rollups are stored per breakdown")
        })?;
        let op = match op.as_str() {
            "is" => FilterOp::Is,
            "is_not" => FilterOp::IsNot,
            "contains" => FilterOp::Contains,
            other => {
                return Err(format!(
                    "filters: unknown operator {other:?} (is, is_not, contains)"
                ))
            }
        };
        if values.is_empty() {
            return Err(format!("filters: {dim:?} needs at least one value"));
        }
        filters.push(Filter {
            part,
            op,
            values: values.clone(),
        });
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(format!("limit must be between 1 and {MAX_LIMIT}"));
    }
    Ok(Shape {
        time,
        breakdown,
        breakdown_shown,
        filters,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn q(metrics: &[&str], dims: &[&str], filters: Value) -> Query {
        serde_json::from_value(json!({
            "site_id": "s", "metrics": metrics, "date_range": ["2026-11-01", "2026-11-02"],
            "dimensions": dims, "filters": filters
        }))
        .unwrap()
    }

    #[test]
    fn shapes_split_time_breakdown_and_filters() {
        let s = shape(&q(
            &["visitors"],
            &["time:day", "source"],
            json!([["source", "is", ["Google"]]]),
        ))
        .unwrap();
        assert_eq!(s.time, Some(Period::Day));
        assert_eq!(s.breakdown, "source");
        assert!(s.filters[0].keeps("Google") && !s.filters[0].keeps("Bing"));
        let s = shape(&q(
            &["conversions"],
            &["goal", "prop:plan"],
            json!([["prop:plan", "is_not", ["free"]]]),
        ))
        .unwrap();
        assert_eq!(s.breakdown, "goal,prop:plan");
        assert!(s.filters[0].keeps("Signup\u{1f}pro") && !s.filters[0].keeps("Signup\u{1f}free"));
        // a filter alone narrows the totals
        let s = shape(&q(&["visits"], &[], json!([["country", "is", ["FR"]]]))).unwrap();
        assert_eq!(
            (s.breakdown.as_str(), s.breakdown_shown),
            ("country", false)
        );
        assert!(shape(&q(
            &["visits"],
            &["source"],
            json!([["country", "is", ["FR"]]])
        ))
        .unwrap_err()
        .contains("filters"));
        assert!(shape(&q(&["visits"], &["planet"], json!([])))
            .unwrap_err()
            .contains("unknown dimension"));
        assert!(shape(&q(
            &["visits"],
            &["source"],
            json!([["source", "like", ["x"]]])
        ))
        .unwrap_err()
        .contains("operator"));
    }

    #[test]
    fn presets_are_days_in_the_site_zone() {
        let tz: Tz = "America/New_York".parse().unwrap();
        // 2026-11-03T02:00Z is still Monday 2 November in New York.
        let now = DateTime::parse_from_rfc3339("2026-11-03T02:00:00Z")
            .unwrap()
            .timestamp_millis();
        let range = |p: &str| {
            let (from, to) = resolve_range(&DateRange::Preset(p.into()), tz, now).unwrap();
            (Period::Day.label(from, tz), Period::Day.label(to, tz))
        };
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(range("today"), pair("2026-11-02", "2026-11-03"));
        assert_eq!(range("yesterday"), pair("2026-11-01", "2026-11-02"));
        assert_eq!(range("7d"), pair("2026-10-27", "2026-11-03"));
        assert_eq!(range("month"), pair("2026-11-01", "2026-11-03"));
        assert_eq!(range("last_month"), pair("2026-10-01", "2026-11-01"));
        assert!(resolve_range(&DateRange::Preset("0d".into()), tz, now).is_err());
        // The week before a week that ends the day after summer time does: whole local days.
        let (from, to) = resolve_range(
            &DateRange::Bounds(vec!["2026-11-02".into(), "2026-11-08".into()]),
            tz,
            now,
        )
        .unwrap();
        let (before_from, before_to) = previous_period(from, to, tz);
        assert_eq!(Period::Day.label(before_from, tz), "2026-10-26");
        assert_eq!(before_to, from);
        assert_eq!(to - from, 7 * 86_400_000);
        assert_eq!(before_to - before_from, 7 * 86_400_000 + 3_600_000);
        // Not whole days: the same length just before.
        assert_eq!(previous_period(10_000, 13_000, tz), (7_000, 10_000));
    }
}
