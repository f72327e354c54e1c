//! What the metrics a merchant asks for mean: which stored rollup sums each is read from,
//! and how those sums, added over a result row's buckets, become the number returned.

use std::collections::BTreeMap;

use clickflow_dataflows::registry::{family_of, FAMILIES};
use serde_json::{json, Value};

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

/// Sums of stored metrics for one result row, over the buckets it covers.
#[derive(Default, Debug)]
pub struct Cell {
    pub sums: BTreeMap<Stored, i64>,
    pub totals: BTreeMap<Stored, i64>,
    pub buckets: usize,
    /// Visitors over all of the cell's buckets from their merged HyperLogLog registers,
    /// when the cell spans several buckets (totals, or breakdowns that keep sketches).
    pub visitors_estimate: Option<f64>,
    /// All of the site's visitors over the cell's buckets, from traffic's merged registers:
    /// the conversion rate's denominator when the cell spans several buckets.
    pub total_visitors_estimate: Option<f64>,
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
        match (
            formula,
            cell.visitors_estimate,
            cell.total_visitors_estimate,
        ) {
            (Formula::Sum { .. }, Some(e), _) => return Ok(json!(e.round() as i64)),
            (
                Formula::Ratio {
                    denominator_total: true,
                    scale,
                    decimals,
                    ..
                },
                Some(n),
                Some(d),
            ) => {
                let p = 10f64.powi(*decimals);
                let rate = if d > 0.0 {
                    n.round() / d.round() * scale
                } else {
                    0.0
                };
                return Ok(json!((rate * p).round() / p));
            }
            _ => {}
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
