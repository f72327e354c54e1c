//! `traffic`: per site and bucket, pageviews, events and exact distinct visitors.

use clickflow_operators::time::{bucket_of, parse_tz, Bucket, Granularity};
use differential_dataflow::collection::concatenate;
use differential_dataflow::VecCollection;

use crate::event::Event;
use crate::metric::{MetricKey, MetricRow};
use crate::registry::Family;
use crate::settings::Settings;

pub const FAMILY: Family = Family {
    name: "traffic",
    metrics: &["pageviews", "events", "visitors"],
    build,
};

fn build<'s>(
    events: VecCollection<'s, u64, Event>,
    _settings: &Settings,
) -> VecCollection<'s, u64, MetricRow> {
    let scope = events.scope();
    let bucketed = events.flat_map(|e| {
        let tz = parse_tz(&e.tz);
        Granularity::ALL.map(|g| {
            (
                (e.site.clone(), bucket_of(e.ts, g, tz)),
                e.visitor,
                e.is_pageview(),
            )
        })
    });
    let row = |metric: &'static str| {
        move |((site, bucket), n): ((String, Bucket), isize)| {
            (MetricKey::new(&site, bucket, FAMILY.name, metric), n as i64)
        }
    };
    let pageviews = bucketed
        .clone()
        .filter(|(_, _, pv)| *pv)
        .map(|(k, _, _)| k)
        .count()
        .map(row("pageviews"));
    let all_events = bucketed
        .clone()
        .map(|(k, _, _)| k)
        .count()
        .map(row("events"));
    // Distinct per bucket, never summed across buckets.
    let visitors = bucketed
        .map(|(k, v, _)| (k, v))
        .distinct()
        .map(|(k, _)| k)
        .count()
        .map(row("visitors"));
    concatenate(scope, [pageviews, all_events, visitors])
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::testing::{random_stream, run_to_completion};

    /// The oracle: plain Rust over the surviving (deduplicated) events.
    fn oracle(events: &[Event]) -> BTreeMap<MetricKey, i64> {
        let mut pv: BTreeMap<(String, Bucket), i64> = BTreeMap::new();
        let mut ev: BTreeMap<(String, Bucket), i64> = BTreeMap::new();
        let mut vis: BTreeMap<(String, Bucket), BTreeSet<u64>> = BTreeMap::new();
        for e in crate::testing::surviving(events) {
            for g in Granularity::ALL {
                let k = (e.site.clone(), bucket_of(e.ts, g, parse_tz(&e.tz)));
                if e.is_pageview() {
                    *pv.entry(k.clone()).or_default() += 1;
                }
                *ev.entry(k.clone()).or_default() += 1;
                vis.entry(k).or_default().insert(e.visitor);
            }
        }
        let mut out = BTreeMap::new();
        let mut put = |(site, b): (String, Bucket), m: &str, v: i64| {
            out.insert(MetricKey::new(&site, b, "traffic", m), v);
        };
        pv.into_iter().for_each(|(k, v)| put(k, "pageviews", v));
        ev.into_iter().for_each(|(k, v)| put(k, "events", v));
        vis.into_iter()
            .for_each(|(k, v)| put(k, "visitors", v.len() as i64));
        out
    }

    #[test]
    fn traffic_equals_oracle_under_shuffles_lateness_and_duplicates() {
        for seed in 0..8 {
            let stream = random_stream(seed, 400);
            let got = run_to_completion(&stream, "traffic");
            let want = oracle(&stream.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>());
            crate::testing::assert_same_rows(&got, &want, &format!("seed {seed}"));
        }
    }
}
