//! `goals`: every custom event name is a goal. Per goal: conversions (events) and unique
//! converting visitors; per goal and custom property value, the same. The API divides
//! converting visitors by the bucket's visitors for the conversion rate.

use clickflow_operators::time::{bucket_of, parse_tz, Bucket};
use differential_dataflow::collection::concatenate;
use differential_dataflow::VecCollection;

use crate::aggregate::{count_distinct_rows, count_rows, visitor_sketch_rows};
use crate::metric::{join_dimensions, MetricKey, MetricRow, VALUE_SEPARATOR, VISIT_GRANULARITIES};
use crate::pipeline::Inputs;
use crate::registry::Family;
use crate::settings::Settings;

pub const FAMILY: Family = Family {
    name: "goals",
    metrics: &["conversions", "visitors", "visitors_hll"],
    dimensions: &["goal", "goal,prop:*"],
    build,
};

/// (site, bucket, dimension, value)
type Key = (String, Bucket, String, String);

/// The breakdowns one goal event contributes to.
pub fn goal_keys(h: &crate::enrich::Hit) -> Vec<(String, String)> {
    let mut out = vec![("goal".to_owned(), h.name.clone())];
    for (k, v) in &h.props {
        out.push((
            format!("goal,prop:{k}"),
            join_dimensions(&[&h.name, v], VALUE_SEPARATOR),
        ));
    }
    out
}

fn build<'s>(inputs: &Inputs<'s>, _settings: &Settings) -> VecCollection<'s, u64, MetricRow> {
    let keyed = inputs
        .hits
        .clone()
        .filter(|h| !h.is_pageview())
        .flat_map(|h| {
            let tz = parse_tz(&h.tz);
            let dims = goal_keys(&h);
            let mut out: Vec<(Key, u64)> = Vec::new();
            for g in VISIT_GRANULARITIES {
                let b = bucket_of(h.ts, g, tz);
                for (d, v) in &dims {
                    out.push(((h.site.clone(), b, d.clone(), v.clone()), h.visitor));
                }
            }
            out
        });
    let row = |metric: &'static str| {
        move |(site, bucket, d, v): Key| {
            MetricKey::new(&site, bucket, FAMILY.name, metric).by(&d, &v)
        }
    };
    concatenate(
        inputs.hits.scope(),
        [
            count_rows(keyed.clone().map(|(k, _)| k), row("conversions")),
            count_distinct_rows(keyed.clone(), row("visitors")),
            visitor_sketch_rows(keyed, row("visitors")),
        ],
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::testing::{oracle_property, Oracle, Put};

    fn oracle(o: &Oracle) -> BTreeMap<MetricKey, i64> {
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

    oracle_property!(goals_equal_oracle_at_every_epoch, "goals", oracle);
}
