//! Query planning: which rollup rows answer a merchant's question, and how stored sums turn
//! into the numbers they asked for. Pure functions; `api` runs the plan against Postgres.

use std::collections::BTreeMap;

use clickflow_dataflows::metric::{DIMENSION_SEPARATOR, VALUE_SEPARATOR};
use clickflow_dataflows::registry::{family_of, FAMILIES};
use clickflow_operators::time::Granularity;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub site_id: String,
    pub metrics: Vec<String>,
    pub date_range: Vec<String>,
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// `[dimension, "is" | "is_not" | "contains", [values…]]`
    #[serde(default)]
    pub filters: Vec<(String, String, Vec<String>)>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A stored rollup metric: `(family, metric)`.
pub type Stored = (&'static str, &'static str);

/// How one requested metric is computed from stored sums over the rows of a result row.
#[derive(Clone, Debug, PartialEq)]
pub enum Formula {
    /// A count or sum. `distinct` ones (visitors) cannot be added across buckets.
    Sum { stored: Stored, distinct: bool },
    /// `numerator / denominator × scale`, rounded to `decimals`; the denominator may come from
    /// the dimension-less total (conversion rate divides by all visitors).
    Ratio {
        numerator: Stored,
        denominator: Stored,
        denominator_total: bool,
        scale: f64,
        decimals: i32,
    },
}

impl Formula {
    pub fn stored(&self) -> Vec<(Stored, bool)> {
        match self {
            Formula::Sum { stored, .. } => vec![(*stored, false)],
            Formula::Ratio {
                numerator,
                denominator,
                denominator_total,
                ..
            } => vec![(*numerator, false), (*denominator, *denominator_total)],
        }
    }

    /// Whether the metric counts distinct visitors somewhere (never summable).
    pub fn is_distinct(&self) -> bool {
        self.distinct()
    }

    fn distinct(&self) -> bool {
        match self {
            Formula::Sum { distinct, .. } => *distinct,
            Formula::Ratio {
                numerator,
                denominator,
                ..
            } => is_distinct(numerator.1) || is_distinct(denominator.1),
        }
    }
}

fn is_distinct(metric: &str) -> bool {
    matches!(metric, "visitors" | "current_visitors")
}

/// Metrics computed from stored ones: `(name, numerator, denominator, scale, decimals)`.
const DERIVED: &[(&str, &str, &str, f64, i32)] = &[
    ("bounce_rate", "bounces", "visits", 100.0, 1),
    ("visit_duration", "visit_duration_ms", "visits", 0.001, 1),
    ("views_per_visit", "visit_pageviews", "visits", 1.0, 2),
    (
        "time_on_page",
        "time_on_page_ms",
        "timed_pageviews",
        0.001,
        1,
    ),
    ("total_revenue", "revenue_micros", "", 0.000_001, 2),
    (
        "average_revenue",
        "revenue_micros",
        "revenue_events",
        0.000_001,
        2,
    ),
    ("conversion_rate", "visitors", "visitors", 100.0, 1),
];

fn stored(metric: &str, dimension: &str) -> Option<Stored> {
    if metric.ends_with(clickflow_dataflows::metric::SKETCH_SUFFIX) {
        return None;
    }
    let family = family_of(metric, dimension)?;
    let name = family.metrics.iter().find(|m| **m == metric)?;
    Some((family.name, name))
}

/// Resolves a requested metric for a breakdown (`""`: none).
pub fn formula(metric: &str, dimension: &str) -> Result<Formula, String> {
    if let Some(s) = stored(metric, dimension) {
        return Ok(Formula::Sum {
            stored: s,
            distinct: is_distinct(metric),
        });
    }
    let Some(&(_, num, den, scale, decimals)) = DERIVED.iter().find(|d| d.0 == metric) else {
        let stored_somewhere = !metric.ends_with(clickflow_dataflows::metric::SKETCH_SUFFIX)
            && FAMILIES.iter().any(|f| f.metrics.contains(&metric));
        if stored_somewhere {
            return Err(format!(
                "metrics: {metric} is not available {}",
                if dimension.is_empty() {
                    "without a breakdown".to_owned()
                } else {
                    format!("by {dimension:?}")
                }
            ));
        }
        return Err(unknown_metric(metric));
    };
    let unavailable = || {
        format!(
            "metrics: {metric} is not available {}",
            if dimension.is_empty() {
                "without a breakdown".to_owned()
            } else {
                format!("by {dimension:?}")
            }
        )
    };
    let numerator = stored(num, dimension).ok_or_else(unavailable)?;
    if metric == "conversion_rate" {
        if !dimension.starts_with("goal") {
            return Err("metrics: conversion_rate needs a breakdown by goal".into());
        }
        return Ok(Formula::Ratio {
            numerator,
            denominator: ("traffic", "visitors"),
            denominator_total: true,
            scale,
            decimals,
        });
    }
    if den.is_empty() {
        return Ok(Formula::Ratio {
            numerator,
            denominator: numerator,
            denominator_total: false,
            scale: f64::NAN,
            decimals,
        });
    }
    let denominator = stored(den, dimension).ok_or_else(unavailable)?;
    Ok(Formula::Ratio {
        numerator,
        denominator,
        denominator_total: false,
        scale,
        decimals,
    })
}

fn unknown_metric(metric: &str) -> String {
    let mut known: Vec<&str> = FAMILIES
        .iter()
        .flat_map(|f| f.metrics.iter().copied())
        .filter(|m| !m.ends_with(clickflow_dataflows::metric::SKETCH_SUFFIX))
        .chain(DERIVED.iter().map(|d| d.0))
        .collect();
    known.sort();
    known.dedup();
    format!(
        "metrics: unknown metric {metric:?} (known: {})",
        known.join(", ")
    )
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
#[derive(Debug, PartialEq)]
pub struct Shape {
    pub time: Option<Granularity>,
    /// The stored breakdown, e.g. `source` or `goal,prop:plan`; empty for totals.
    pub breakdown: String,
    /// Whether the breakdown is shown as result dimensions (a filter alone does not).
    pub breakdown_shown: bool,
    pub filters: Vec<Filter>,
    pub limit: usize,
}

#[derive(Debug, PartialEq)]
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
            let g = Granularity::parse(g).ok_or_else(|| {
                format!(
                    "dimensions: unknown time dimension {d:?} (time:minute, time:hour, time:day)"
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
            "dimensions: unknown dimension {breakdown:?} (time:minute, time:hour, time:day, {}; goal with prop:<key>; goal with currency)",
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

/// Sums of stored metrics for one result row, over the buckets it covers.
#[derive(Default, Debug)]
pub struct Cell {
    pub sums: BTreeMap<Stored, i64>,
    pub totals: BTreeMap<Stored, i64>,
    pub buckets: usize,
    /// Visitors over all of the cell's buckets from their merged HyperLogLog registers,
    /// when the cell spans several buckets (totals, or breakdowns that keep sketches).
    pub visitors_estimate: Option<f64>,
    /// Breakdown values folded into the cell (a filter without a breakdown can fold several).
    pub values: std::collections::BTreeSet<String>,
}

/// The value of `formula` in `cell`: an integer for counts, a rounded number for ratios,
/// `null` when a distinct count would have to be added across buckets.
pub fn evaluate(formula: &Formula, cell: &Cell) -> Result<Value, String> {
    if formula.distinct() && cell.values.len() > 1 {
        return Err(
            "visitors of several breakdown values are not a sum: add the filtered dimension to dimensions, or filter to one value with \"is\""
                .into(),
        );
    }
    if formula.distinct() && cell.buckets > 1 {
        if let (Formula::Sum { .. }, Some(e)) = (formula, cell.visitors_estimate) {
            return Ok(json!(e.round() as i64));
        }
        return Err(
            "visitors over a range of several buckets is not a sum: ask with a time dimension, for one bucket, or for totals over whole hours or days"
                .into(),
        );
    }
    Ok(match formula {
        Formula::Sum { stored, .. } => json!(cell.sums.get(stored).copied().unwrap_or(0)),
        Formula::Ratio {
            numerator,
            denominator,
            denominator_total,
            scale,
            decimals,
        } => {
            let n = cell.sums.get(numerator).copied().unwrap_or(0) as f64;
            let round = |x: f64| {
                let p = 10f64.powi(*decimals);
                (x * p).round() / p
            };
            if scale.is_nan() {
                // a plain amount in currency units
                return Ok(json!(round(n / 1e6)));
            }
            let pool = if *denominator_total {
                &cell.totals
            } else {
                &cell.sums
            };
            let d = pool.get(denominator).copied().unwrap_or(0) as f64;
            if d == 0.0 {
                json!(0)
            } else {
                json!(round(n / d * scale))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(metrics: &[&str], dims: &[&str], filters: Value) -> Query {
        serde_json::from_value(json!({
            "site_id": "s", "metrics": metrics, "date_range": ["2026-11-01", "2026-11-02"],
            "dimensions": dims, "filters": filters
        }))
        .unwrap()
    }

    #[test]
    fn metrics_resolve_to_families_by_breakdown() {
        assert_eq!(
            formula("visitors", "").unwrap(),
            Formula::Sum {
                stored: ("traffic", "visitors"),
                distinct: true
            }
        );
        assert_eq!(
            formula("visitors", "source").unwrap(),
            Formula::Sum {
                stored: ("sources", "visitors"),
                distinct: true
            }
        );
        assert!(matches!(
            formula("bounce_rate", "").unwrap(),
            Formula::Ratio {
                numerator: ("sessions", "bounces"),
                denominator: ("sessions", "visits"),
                ..
            }
        ));
        assert!(matches!(
            formula("conversion_rate", "goal").unwrap(),
            Formula::Ratio {
                numerator: ("goals", "visitors"),
                denominator: ("traffic", "visitors"),
                denominator_total: true,
                ..
            }
        ));
        assert!(formula("visit_duration", "source")
            .unwrap_err()
            .contains("not available by \"source\""));
        assert!(formula("conversion_rate", "").is_err());
        assert!(formula("cats", "").unwrap_err().contains("unknown metric"));
    }

    #[test]
    fn shapes_split_time_breakdown_and_filters() {
        let s = shape(&q(
            &["visitors"],
            &["time:day", "source"],
            json!([["source", "is", ["Google"]]]),
        ))
        .unwrap();
        assert_eq!(s.time, Some(Granularity::Day));
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
    fn ratios_and_distinct_counts_evaluate_honestly() {
        let mut cell = Cell {
            buckets: 1,
            ..Cell::default()
        };
        cell.sums.insert(("sessions", "bounces"), 1);
        cell.sums.insert(("sessions", "visits"), 3);
        let bounce = formula("bounce_rate", "").unwrap();
        assert_eq!(evaluate(&bounce, &cell).unwrap(), json!(33.3));
        cell.sums.insert(("revenue", "revenue_micros"), 12_500_000);
        cell.sums.insert(("revenue", "revenue_events"), 2);
        let avg = formula("average_revenue", "goal,currency").unwrap();
        assert_eq!(evaluate(&avg, &cell).unwrap(), json!(6.25));
        let total = formula("total_revenue", "goal,currency").unwrap();
        assert_eq!(evaluate(&total, &cell).unwrap(), json!(12.5));
        cell.buckets = 2;
        assert!(evaluate(&formula("visitors", "").unwrap(), &cell).is_err());
        assert_eq!(evaluate(&bounce, &cell).unwrap(), json!(33.3));
    }
}
