//! `revenue`: per goal and currency, the total revenue (in millionths of the currency unit,
//! exact) and the number of events carrying it; the API divides them for the average.
//! A `refund` event naming a purchase's `event_id` takes that purchase's revenue back, in the
//! purchase's own buckets, whichever of the two arrives first.

use clickflow_operators::time::{bucket_of, Bucket};
use differential_dataflow::VecCollection;

use crate::aggregate::sums_rows;
use crate::family::{Denominator, Derived, Family, Inputs};
use crate::metric::{Row, RowKey, VISIT_GRANULARITIES};
use crate::settings::Settings;
use crate::symbol::Sym;

pub const FAMILY: Family = Family {
    name: "revenue",
    metrics: &["revenue_micros", "revenue_events"],
    distinct: &[],
    derived: &[
        Derived {
            name: "total_revenue",
            numerator: "revenue_micros",
            denominator: Denominator::Amount,
            scale: 0.000_001,
            decimals: 2,
        },
        Derived {
            name: "average_revenue",
            numerator: "revenue_micros",
            denominator: Denominator::Metric("revenue_events"),
            scale: 0.000_001,
            decimals: 2,
        },
    ],
    dimensions: &["goal,currency"],
    build,
};

const GOAL_CURRENCY: [Sym; 2] = [Sym::word("goal"), Sym::word("currency")];

/// (site, bucket, goal, currency)
type Key = (Sym, Bucket, Sym, Sym);

fn build<'s>(inputs: &Inputs<'s>, _settings: &Settings) -> VecCollection<'s, u64, Row> {
    let refunded = inputs
        .refunds
        .clone()
        .flat_map(|r| r.refund_of().map(|id| (r.site, id)))
        .distinct();
    let paid = inputs
        .hits
        .clone()
        .flat_map(|h| {
            let (micros, currency) = h.revenue()?;
            Some(((h.site, h.id), (h, micros, currency)))
        })
        .antijoin(refunded)
        .flat_map(|(_, (h, micros, currency))| {
            let tz = h.zone.tz();
            VISIT_GRANULARITIES
                .map(|g| ((h.site, bucket_of(h.ts, g, tz), h.name, currency), micros))
        });
    let row = |metric: &'static str| {
        move |(site, bucket, goal, currency): Key| {
            RowKey::new(site, bucket, FAMILY.name, metric).by_parts(GOAL_CURRENCY, [goal, currency])
        }
    };
    let weighted = paid.map(|(k, micros)| (k, (micros as isize, 1isize)));
    sums_rows(weighted, move |k, (micros, events)| {
        [
            (row("revenue_micros")(k), micros as i64),
            (row("revenue_events")(k), events as i64),
        ]
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, HashSet};

    use clickflow_operators::time::parse_tz;

    use super::*;
    use crate::metric::MetricKey;
    use crate::testing::{oracle_property, Oracle, Put};

    pub(crate) fn oracle(o: &Oracle) -> BTreeMap<MetricKey, i64> {
        let refunded: HashSet<(String, String)> = o
            .refunds
            .iter()
            .filter_map(|r| Some((r.site.clone(), r.refund_of.clone()?)))
            .collect();
        let mut put = Put::default();
        for h in &o.hits {
            let Some(rev) = &h.revenue else { continue };
            if refunded.contains(&(h.site.clone(), h.event_id.clone())) {
                continue;
            }
            // independent of Revenue::micros: integer and fraction parsed apart
            let (whole, frac) = rev.amount.split_once('.').unwrap_or((&rev.amount, ""));
            let micros = whole.parse::<i64>().unwrap() * 1_000_000
                + format!("{frac:0<6}").parse::<i64>().unwrap();
            for g in VISIT_GRANULARITIES {
                let b = bucket_of(h.ts, g, parse_tz(&h.tz));
                let value = format!("{}\u{1f}{}", h.name, rev.currency);
                let key =
                    |m: &str| MetricKey::new(&h.site, b, "revenue", m).by("goal,currency", &value);
                put.add(key("revenue_micros"), micros);
                put.add(key("revenue_events"), 1);
            }
        }
        put.rows()
    }

    oracle_property!(revenue_equals_oracle_at_every_epoch, &FAMILY, oracle);
}
