//! `traffic`: per site and bucket, pageviews, events, exact distinct visitors, and the bot
//! hits the collector filtered out. Hours and days also carry the HyperLogLog registers of
//! their visitors (`visitors_hll`, see [`crate::uniques`]), so the API answers "visitors
//! between any two hours" by merging registers rather than adding distinct counts; they are
//! read off the same exact visitor sets.

use clickflow_operators::time::{bucket_of, Bucket, Granularity};
use differential_dataflow::collection::concatenate;
use differential_dataflow::VecCollection;

use crate::aggregate::{count_distinct_rows, count_rows, sums_rows, visitor_rows};
use crate::family::{Family, Inputs};
use crate::metric::{Row, RowKey};
use crate::settings::Settings;
use crate::symbol::Sym;

pub const FAMILY: Family = Family {
    name: "traffic",
    metrics: &[
        "pageviews",
        "events",
        "visitors",
        "visitors_hll",
        "bot_events",
    ],
    distinct: &["visitors"],
    derived: &[],
    dimensions: &[""],
    build,
};

fn row(metric: &'static str) -> impl Fn((Sym, Bucket)) -> RowKey {
    move |(site, bucket)| RowKey::new(site, bucket, FAMILY.name, metric)
}

fn build<'s>(inputs: &Inputs<'s>, _settings: &Settings) -> VecCollection<'s, u64, Row> {
    let bucketed = inputs.hits.clone().flat_map(|h| {
        let tz = h.zone.tz();
        Granularity::ALL.map(|g| ((h.site, bucket_of(h.ts, g, tz)), h.visitor, h.is_pageview()))
    });
    let bots = inputs.bots.clone().flat_map(|b| {
        let tz = b.zone.tz();
        Granularity::ALL.map(|g| (b.site, bucket_of(b.ts, g, tz)))
    });
    let visitors = bucketed.clone().map(|(k, v, _)| (k, v));
    let counts = bucketed
        .clone()
        .map(|(k, _, pageview)| (k, (pageview as isize, 1isize)));
    concatenate(
        inputs.hits.scope(),
        [
            sums_rows(counts, |k, (pageviews, events)| {
                [
                    (row("pageviews")(k), pageviews as i64),
                    (row("events")(k), events as i64),
                ]
            }),
            // Minutes are never merged into longer ranges: no sketch for them.
            count_distinct_rows(
                visitors
                    .clone()
                    .filter(|((_, b), _)| b.granularity == Granularity::Minute),
                row("visitors"),
            ),
            visitor_rows(
                visitors.filter(|((_, b), _)| b.granularity != Granularity::Minute),
                row("visitors"),
                row("visitors_hll"),
            ),
            count_rows(bots, row("bot_events")),
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

    /// The oracle: plain Rust over the surviving events.
    pub(crate) fn oracle(o: &Oracle) -> BTreeMap<MetricKey, i64> {
        let mut put = Put::default();
        for h in &o.hits {
            for g in Granularity::ALL {
                let b = bucket_of(h.ts, g, parse_tz(&h.tz));
                let key = |m: &str| MetricKey::new(&h.site, b, "traffic", m);
                put.add(key("pageviews"), h.is_pageview() as i64);
                put.add(key("events"), 1);
                // Minutes are never merged: no sketch for them.
                if g != Granularity::Minute {
                    put.distinct_sketched(key("visitors"), h.visitor);
                } else {
                    put.distinct(key("visitors"), h.visitor);
                }
            }
        }
        for b in &o.bots {
            for g in Granularity::ALL {
                let bucket = bucket_of(b.ts, g, parse_tz(&b.tz));
                put.add(MetricKey::new(&b.site, bucket, "traffic", "bot_events"), 1);
            }
        }
        put.rows()
    }

    oracle_property!(traffic_equals_oracle_at_every_epoch, &FAMILY, oracle);
}
