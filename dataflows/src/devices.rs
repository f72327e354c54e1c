use clickflow_operators::time::{bucket_of, Bucket};
use differential_dataflow::collection::concatenate;
use differential_dataflow::VecCollection;

use crate::aggregate::{count_rows, visitor_rows};
use crate::family::{Denominator, Derived, Family, Inputs};
use crate::metric::{Row, RowKey, VISIT_GRANULARITIES};
use crate::settings::Settings;
use crate::symbol::Sym;

/// By device type, per hour and day: pageviews (a sum), visitors (a distinct count, with the
/// registers that merge it over several buckets) and pageviews per visitor (a ratio).
pub const FAMILY: Family = Family {
    name: "devices",
    metrics: &["device_pageviews", "device_visitors", "device_visitors_hll"],
    distinct: &["device_visitors"],
    derived: &[Derived {
        name: "pageviews_per_device_visitor",
        numerator: "device_pageviews",
        denominator: Denominator::Metric("device_visitors"),
        scale: 1.0,
        decimals: 2,
    }],
    dimensions: &["device"],
    build,
};

/// (site, bucket, device)
type Key = (Sym, Bucket, Sym);

fn row(metric: &'static str) -> impl Fn(Key) -> RowKey {
    move |(site, bucket, device)| {
        RowKey::new(site, bucket, FAMILY.name, metric).by("device", device)
    }
}

fn build<'s>(inputs: &Inputs<'s>, _: &Settings) -> VecCollection<'s, u64, Row> {
    let keyed = inputs
        .hits
        .clone()
        .filter(|h| h.is_pageview())
        .flat_map(|h| {
            let tz = h.zone.tz();
            VISIT_GRANULARITIES
                .map(|g| ((h.site, bucket_of(h.ts, g, tz), h.client.device), h.visitor))
        });
    let pageviews = count_rows(keyed.clone().map(|(key, _)| key), row("device_pageviews"));
    let visitors = visitor_rows(keyed, row("device_visitors"), row("device_visitors_hll"));
    concatenate(inputs.hits.scope(), [pageviews, visitors])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clickflow_operators::time::parse_tz;

    use super::*;
    use crate::metric::MetricKey;
    use crate::testing::{check_every_epoch, random_stream, Oracle, Put};

    // Plain Rust over the surviving events, in text: what the numbers must be.
    fn oracle(o: &Oracle) -> BTreeMap<MetricKey, i64> {
        let mut put = Put::default();
        for h in o.hits.iter().filter(|h| h.is_pageview()) {
            for g in VISIT_GRANULARITIES {
                let b = bucket_of(h.ts, g, parse_tz(&h.tz));
                let key = |m: &str| {
                    MetricKey::new(&h.site, b, "devices", m).by("device", &h.client.device)
                };
                put.add(key("device_pageviews"), 1);
                put.distinct_sketched(key("device_visitors"), h.visitor);
            }
        }
        put.rows()
    }

    proptest::proptest! {
        #[test]
        fn devices_equal_oracle_at_every_epoch(seed in proptest::prelude::any::<u64>(), n in 50usize..300) {
            check_every_epoch(&random_stream(seed, n), &FAMILY, oracle);
        }
    }

    #[test]
    fn the_readme_shows_this_file() {
        let readme = include_str!("../../README.md");
        let fence = "`".repeat(3);
        let shown = readme
            .split(&format!("{fence}rust\n"))
            .find(|block| block.starts_with("use clickflow_operators::time::{bucket_of, Bucket};"))
            .map(|block| {
                block
                    .split_once(&format!("}}\n{fence}\n\n"))
                    .map_or(block, |b| b.0)
            })
            .expect("the README's worked example");
        let file = include_str!("devices.rs");
        assert_eq!(
            format!("{shown}}}\n"),
            file,
            "README and dataflows/src/devices.rs differ"
        );
    }
}
