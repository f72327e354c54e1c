//! What the metrics a merchant asks for mean: which stored rollup sums each is read from,
//! and how those sums, added over a result row's buckets, become the number returned.

use std::collections::BTreeMap;

use clickflow_dataflows::metric::SKETCH_SUFFIX;
use clickflow_dataflows::registry::{self, family_of, Denominator, FAMILIES};
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
    /// A stored sum scaled into units (revenue micros into currency), rounded to `decimals`.
    Amount {
        stored: Stored,
        scale: f64,
        decimals: i32,
    },
}

impl Formula {
    pub fn stored(&self) -> Vec<(Stored, bool)> {
        match self {
            Formula::Sum { stored, .. } | Formula::Amount { stored, .. } => vec![(*stored, false)],
            Formula::Ratio {
                numerator,
                denominator,
                denominator_total,
                ..
            } => vec![(*numerator, false), (*denominator, *denominator_total)],
        }
    }

    /// Whether the metric counts distinct members somewhere (never summable), as the
    /// families declare.
    pub fn is_distinct(&self) -> bool {
        match self {
            Formula::Sum { distinct, .. } => *distinct,
            Formula::Ratio {
                numerator,
                denominator,
                ..
            } => is_distinct(*numerator) || is_distinct(*denominator),
            Formula::Amount { stored, .. } => is_distinct(*stored),
        }
    }

    /// The distinct count whose registers answer this metric over several buckets, with
    /// the name of its sketch metric, where its family keeps one.
    pub fn sketched(&self) -> Option<(Stored, &'static str)> {
        let counted = match self {
            Formula::Sum {
                stored,
                distinct: true,
            } => *stored,
            Formula::Ratio { numerator, .. } if is_distinct(*numerator) => *numerator,
            _ => return None,
        };
        Some((counted, sketch_of(counted)?))
    }
}

fn is_distinct((family, metric): Stored) -> bool {
    registry::is_distinct(family, metric)
}

/// The sketch metric (`<metric>_hll`) its family stores beside a distinct count, if any.
pub fn sketch_of((family, metric): Stored) -> Option<&'static str> {
    let family = FAMILIES.iter().find(|f| f.name == family)?;
    family
        .metrics
        .iter()
        .copied()
        .find(|m| m.strip_suffix(SKETCH_SUFFIX) == Some(metric))
}

fn stored(metric: &str, dimension: &str) -> Option<Stored> {
    if metric.ends_with(SKETCH_SUFFIX) {
        return None;
    }
    let family = family_of(metric, dimension)?;
    let name = family.metrics.iter().find(|m| **m == metric)?;
    Some((family.name, name))
}

/// Resolves a requested metric for a breakdown (`""`: none).
pub fn formula(metric: &str, dimension: &str) -> Result<Formula, String> {
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
    if let Some(s) = stored(metric, dimension) {
        return Ok(Formula::Sum {
            stored: s,
            distinct: is_distinct(s),
        });
    }
    let Some((family, derived)) = registry::derived(metric) else {
        let stored_somewhere = !metric.ends_with(SKETCH_SUFFIX)
            && FAMILIES.iter().any(|f| f.metrics.contains(&metric));
        return Err(if stored_somewhere {
            unavailable()
        } else {
            unknown_metric(metric)
        });
    };
    let numerator = stored(derived.numerator, dimension).ok_or_else(unavailable)?;
    let (scale, decimals) = (derived.scale, derived.decimals);
    Ok(match derived.denominator {
        Denominator::Amount => Formula::Amount {
            stored: numerator,
            scale,
            decimals,
        },
        Denominator::Metric(m) => Formula::Ratio {
            numerator,
            denominator: stored(m, dimension).ok_or_else(unavailable)?,
            denominator_total: false,
            scale,
            decimals,
        },
        // A share of the whole: meaningful only where the breakdown narrows the numerator,
        // that is, by the declaring family's own breakdowns.
        Denominator::Total(total_family, total_metric) => {
            if numerator.0 != family.name {
                return Err(format!(
                    "metrics: {metric} needs a breakdown by {}",
                    family.dimensions.join(" or ")
                ));
            }
            Formula::Ratio {
                numerator,
                denominator: (total_family, total_metric),
                denominator_total: true,
                scale,
                decimals,
            }
        }
    })
}

fn unknown_metric(metric: &str) -> String {
    let mut known: Vec<&str> = FAMILIES
        .iter()
        .flat_map(|f| f.metrics.iter().copied())
        .filter(|m| !m.ends_with(SKETCH_SUFFIX))
        .chain(
            FAMILIES
                .iter()
                .flat_map(|f| f.derived.iter().map(|d| d.name)),
        )
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
    if formula.is_distinct() && cell.values.len() > 1 {
        return Err(
            "visitors of several breakdown values are not a sum: add the filtered dimension to dimensions, or filter to one value with \"is\""
                .into(),
        );
    }
    if formula.is_distinct() && cell.buckets > 1 {
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
    let round = |x: f64, decimals: i32| {
        let p = 10f64.powi(decimals);
        (x * p).round() / p
    };
    let sum = |stored: &Stored| cell.sums.get(stored).copied().unwrap_or(0);
    Ok(match formula {
        Formula::Sum { stored, .. } => json!(sum(stored)),
        Formula::Amount {
            stored,
            scale,
            decimals,
        } => json!(round(sum(stored) as f64 * scale, *decimals)),
        Formula::Ratio {
            numerator,
            denominator,
            denominator_total,
            scale,
            decimals,
        } => {
            let pool = if *denominator_total {
                &cell.totals
            } else {
                &cell.sums
            };
            let d = pool.get(denominator).copied().unwrap_or(0) as f64;
            if d == 0.0 {
                json!(0)
            } else {
                json!(round(sum(numerator) as f64 / d * scale, *decimals))
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
        assert!(formula("conversion_rate", "")
            .unwrap_err()
            .contains("needs a breakdown by goal"));
        assert!(matches!(
            formula("total_revenue", "goal,currency").unwrap(),
            Formula::Amount {
                stored: ("revenue", "revenue_micros"),
                ..
            }
        ));
        assert_eq!(
            formula("visitors", "page").unwrap().sketched(),
            Some((("pages", "visitors"), "visitors_hll"))
        );
        assert_eq!(formula("pageviews", "").unwrap().sketched(), None);
        assert!(formula("current_visitors", "").unwrap().is_distinct());
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
