//! `sessions`: visits, bounces, total visit duration and pageviews in visits, per bucket of
//! the visit's start. The query API derives bounce rate, average duration and views per visit
//! from these sums, so every derived number stays exact when a late event merges two visits.

use clickflow_operators::time::{bucket_of, parse_tz, Bucket};
use differential_dataflow::collection::concatenate;
use differential_dataflow::VecCollection;

use crate::aggregate::{count_rows, sum_rows};
use crate::metric::{visit_rows_open_until, MetricKey, MetricRow, VISIT_GRANULARITIES};
use crate::pipeline::Inputs;
use crate::registry::Family;
use crate::settings::Settings;

pub const FAMILY: Family = Family {
    name: "sessions",
    metrics: &["visits", "bounces", "visit_duration_ms", "visit_pageviews"],
    dimensions: &[""],
    build,
};

fn build<'s>(inputs: &Inputs<'s>, _settings: &Settings) -> VecCollection<'s, u64, MetricRow> {
    let per_bucket = inputs.visits.clone().flat_map(|v| {
        let tz = parse_tz(&v.tz);
        VISIT_GRANULARITIES.map(|g| {
            let b = bucket_of(v.start, g, tz);
            ((v.site.clone(), b, visit_rows_open_until(b, tz)), v.clone())
        })
    });
    let row = |metric: &'static str| {
        move |(site, bucket, until): (String, Bucket, i64)| {
            MetricKey::new(&site, bucket, FAMILY.name, metric).open_until(until)
        }
    };
    concatenate(
        inputs.visits.scope(),
        [
            count_rows(per_bucket.clone().map(|(k, _)| k), row("visits")),
            count_rows(
                per_bucket
                    .clone()
                    .filter(|(_, v)| v.is_bounce())
                    .map(|(k, _)| k),
                row("bounces"),
            ),
            sum_rows(
                per_bucket.clone().map(|(k, v)| (k, v.duration_ms())),
                row("visit_duration_ms"),
            ),
            sum_rows(
                per_bucket.map(|(k, v)| (k, v.pageviews)),
                row("visit_pageviews"),
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::testing::{oracle_property, oracle_visits, Oracle, Put};

    fn oracle(o: &Oracle) -> BTreeMap<MetricKey, i64> {
        let mut put = Put::default();
        for v in oracle_visits(&o.hits, o.settings.visit_timeout_ms) {
            for g in VISIT_GRANULARITIES {
                let b = bucket_of(v.start, g, parse_tz(&v.tz));
                let key = |m: &str| {
                    MetricKey::new(&v.site, b, "sessions", m)
                        .open_until(visit_rows_open_until(b, parse_tz(&v.tz)))
                };
                put.add(key("visits"), 1);
                put.add(key("bounces"), v.is_bounce() as i64);
                put.add(key("visit_duration_ms"), v.duration_ms());
                put.add(key("visit_pageviews"), v.pageviews);
            }
        }
        put.rows()
    }

    oracle_property!(sessions_equal_oracle_at_every_epoch, "sessions", oracle);
}
