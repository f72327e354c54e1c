//! `goals`: every custom event name is a goal. Per goal: conversions (events) and unique
//! converting visitors; per goal and custom property value, the same. The API divides
//! converting visitors by the bucket's visitors for the conversion rate.

use clickflow_operators::time::{bucket_of, Bucket};
use differential_dataflow::collection::concatenate;
use differential_dataflow::VecCollection;

use crate::aggregate::{count_rows, visitor_rows};
use crate::family::{Denominator, Derived, Family, Inputs};
use crate::hit::Hit;
use crate::metric::{Row, RowKey, VISIT_GRANULARITIES};
use crate::settings::Settings;
use crate::symbol::Sym;

pub const FAMILY: Family = Family {
    name: "goals",
    metrics: &["conversions", "visitors", "visitors_hll"],
    distinct: &["visitors"],
    derived: &[Derived {
        name: "conversion_rate",
        numerator: "visitors",
        denominator: Denominator::Total("traffic", "visitors"),
        scale: 100.0,
        decimals: 1,
    }],
    dimensions: &["goal", "goal,prop:*"],
    build,
};

const GOAL: Sym = Sym::word("goal");

/// (site, bucket, dimension, value)
type Key = (Sym, Bucket, [Sym; 2], [Sym; 2]);

/// The breakdowns one goal event contributes to: `goal` = its name, and `goal,prop:<key>` =
/// its name and the prop's value (the hit carries each prop key as `prop:<key>` already).
pub fn goal_keys(h: &Hit) -> Vec<([Sym; 2], [Sym; 2])> {
    let mut out = vec![([GOAL, Sym::NONE], [h.name, Sym::NONE])];
    for (k, v) in h.props() {
        out.push(([GOAL, *k], [h.name, *v]));
    }
    out
}

fn build<'s>(inputs: &Inputs<'s>, _settings: &Settings) -> VecCollection<'s, u64, Row> {
    let keyed = inputs
        .hits
        .clone()
        .filter(|h| !h.is_pageview())
        .flat_map(|h| {
            let tz = h.zone.tz();
            let dims = goal_keys(&h);
            let mut out: Vec<(Key, u64)> = Vec::with_capacity(dims.len() * 2);
            for g in VISIT_GRANULARITIES {
                let b = bucket_of(h.ts, g, tz);
                for (d, v) in &dims {
                    out.push(((h.site, b, *d, *v), h.visitor));
                }
            }
            out
        });
    let row = |metric: &'static str| {
        move |(site, bucket, d, v): Key| {
            RowKey::new(site, bucket, FAMILY.name, metric).by_parts(d, v)
        }
    };
    concatenate(
        inputs.hits.scope(),
        [
            count_rows(keyed.clone().map(|(k, _)| k), row("conversions")),
            visitor_rows(keyed, row("visitors"), row("visitors_hll")),
        ],
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use clickflow_operators::time::parse_tz;

    use super::*;
    use crate::metric::MetricKey;
    use crate::testing::{oracle_property, Oracle, Put};

    pub(crate) fn oracle(o: &Oracle) -> BTreeMap<MetricKey, i64> {
        let mut put = Put::default();
        for h in o.hits.iter().filter(|h| !h.is_pageview()) {
            for g in VISIT_GRANULARITIES {
                let b = bucket_of(h.ts, g, parse_tz(&h.tz));
                let mut dims = vec![("goal".to_string(), h.name.clone())];
                for (k, v) in &h.props {
                    dims.push((format!("goal,prop:{k}"), format!("{}\u{1f}{v}", h.name)));
                }
                for (d, v) in dims {
                    let key = |m: &str| MetricKey::new(&h.site, b, "goals", m).by(&d, &v);
                    put.add(key("conversions"), 1);
                    put.distinct_sketched(key("visitors"), h.visitor);
                }
            }
        }
        put.rows()
    }

    oracle_property!(goals_equal_oracle_at_every_epoch, &FAMILY, oracle);
}
