//! `sessions`: visits, bounces, total visit duration and pageviews in visits, per bucket of
//! the visit's start. The query API derives bounce rate, average duration and views per visit
//! from these sums, so every derived number stays exact when a late event merges two visits.

use clickflow_operators::time::{bucket_of, Bucket};
use differential_dataflow::VecCollection;

use crate::aggregate::sums_rows;
use crate::family::{Denominator, Derived, Family, Inputs};
use crate::metric::{visit_rows_open_until, Row, RowKey, VISIT_GRANULARITIES};
use crate::settings::Settings;
use crate::symbol::Sym;

pub const FAMILY: Family = Family {
    name: "sessions",
    metrics: &["visits", "bounces", "visit_duration_ms", "visit_pageviews"],
    distinct: &[],
    derived: &[
        Derived {
            name: "bounce_rate",
            numerator: "bounces",
            denominator: Denominator::Metric("visits"),
            scale: 100.0,
            decimals: 1,
        },
        Derived {
            name: "visit_duration",
            numerator: "visit_duration_ms",
            denominator: Denominator::Metric("visits"),
            scale: 0.001,
            decimals: 1,
        },
        Derived {
            name: "views_per_visit",
            numerator: "visit_pageviews",
            denominator: Denominator::Metric("visits"),
            scale: 1.0,
            decimals: 2,
        },
    ],
    dimensions: &[""],
    build,
};

fn build<'s>(inputs: &Inputs<'s>, _settings: &Settings) -> VecCollection<'s, u64, Row> {
    let per_bucket = inputs.visits().flat_map(|v| {
        let tz = v.zone.tz();
        VISIT_GRANULARITIES.map(|g| {
            let b = bucket_of(v.start, g, tz);
            ((v.site, b, visit_rows_open_until(b, tz)), v.clone())
        })
    });
    let row = |metric: &'static str| {
        move |(site, bucket, until): (Sym, Bucket, i64)| {
            RowKey::new(site, bucket, FAMILY.name, metric).open_until(until)
        }
    };
    // One arrangement for the four sums of each bucket.
    let weighted = per_bucket.map(|(k, v)| {
        let sums = (
            1isize,
            v.is_bounce() as isize,
            v.duration_ms() as isize,
            v.pageviews as isize,
        );
        (k, sums)
    });
    sums_rows(
        weighted,
        move |k, (visits, bounces, duration, pageviews)| {
            [
                (row("visits")(k), visits as i64),
                (row("bounces")(k), bounces as i64),
                (row("visit_duration_ms")(k), duration as i64),
                (row("visit_pageviews")(k), pageviews as i64),
            ]
        },
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use clickflow_operators::time::parse_tz;

    use super::*;
    use crate::metric::MetricKey;
    use crate::testing::{oracle_property, oracle_visits, Oracle, Put};

    pub(crate) fn oracle(o: &Oracle) -> BTreeMap<MetricKey, i64> {
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

    oracle_property!(sessions_equal_oracle_at_every_epoch, &FAMILY, oracle);
}
