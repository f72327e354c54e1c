//! `realtime`: current visitors per site, those with an event in the last few minutes
//! (`Settings::realtime_window_ms`, event time against ingest time). The row describes "now"
//! and never seals. Pageviews of the last 30 minutes come from `traffic`'s minute buckets.

use clickflow_operators::expiry::Expire;
use clickflow_operators::time::{Bucket, Granularity};
use differential_dataflow::VecCollection;

use crate::aggregate::count_distinct_rows;
use crate::family::{Family, Inputs};
use crate::metric::{Row, RowKey, TIMELESS_END_MS};
use crate::settings::Settings;
use crate::symbol::Sym;

pub const FAMILY: Family = Family {
    name: "realtime",
    metrics: &["current_visitors"],
    distinct: &["current_visitors"],
    derived: &[],
    dimensions: &[""],
    build,
};

/// Where timeless rows live: bucket start and end both at [`TIMELESS_END_MS`], so they are
/// never sealed and are replaced like any open row after a restart.
pub const NOW: Bucket = Bucket {
    granularity: Granularity::Minute,
    start: TIMELESS_END_MS,
    end: TIMELESS_END_MS,
};

fn build<'s>(inputs: &Inputs<'s>, settings: &Settings) -> VecCollection<'s, u64, Row> {
    let window = settings.realtime_window_ms;
    // `expire_at` negates every update, including the day-seal retractions upstream, so
    // composing two expiries keeps each record from its arrival to the earlier of the two.
    let active = inputs
        .hits
        .clone()
        .map(|h| (h.site, h.visitor, h.ts))
        .expire_at(move |(_, _, ts)| ts.saturating_add(window).max(0) as u64)
        .map(|(site, visitor, _)| (site, visitor));
    count_distinct_rows(active, |site: Sym| {
        RowKey::new(site, NOW, FAMILY.name, "current_visitors")
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::metric::MetricKey;
    use crate::testing::{oracle_property, Oracle, Put};

    pub(crate) fn oracle(o: &Oracle) -> BTreeMap<MetricKey, i64> {
        let mut current: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        if let Some(now) = o.now {
            for h in &o.hits {
                if h.ts + o.settings.realtime_window_ms >= now as i64 {
                    current.entry(h.site.clone()).or_default().insert(h.visitor);
                }
            }
        }
        let mut put = Put::default();
        for (site, visitors) in current {
            put.add(
                MetricKey::new(&site, NOW, "realtime", "current_visitors"),
                visitors.len() as i64,
            );
        }
        put.rows()
    }

    oracle_property!(realtime_equals_oracle_at_every_epoch, &FAMILY, oracle);
}
