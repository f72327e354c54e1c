//! `revenue`: per goal and currency, the total revenue (in millionths of the currency unit,
//! exact) and the number of events carrying it; the API divides them for the average.
//! A `refund` event naming a purchase's `event_id` takes that purchase's revenue back, in the
//! purchase's own buckets, whichever of the two arrives first.

use clickflow_operators::time::{bucket_of, parse_tz, Bucket};
use differential_dataflow::collection::concatenate;
use differential_dataflow::VecCollection;

use crate::aggregate::{count_rows, sum_rows};
use crate::metric::{join_dimensions, MetricKey, MetricRow, VALUE_SEPARATOR, VISIT_GRANULARITIES};
use crate::pipeline::Inputs;
use crate::registry::Family;
use crate::settings::Settings;

pub const FAMILY: Family = Family {
    name: "revenue",
    metrics: &["revenue_micros", "revenue_events"],
    dimensions: &["goal,currency"],
    build,
};

/// (site, bucket, goal and currency)
type Key = (String, Bucket, String);

fn build<'s>(inputs: &Inputs<'s>, _settings: &Settings) -> VecCollection<'s, u64, MetricRow> {
    let refunded = inputs
        .refunds
        .clone()
        .flat_map(|r| r.refund_of.clone().map(|id| (r.site.clone(), id)))
        .distinct();
    let paid = inputs
        .hits
        .clone()
        .flat_map(|h| {
            let micros = h.revenue.as_ref().and_then(|r| r.micros())?;
            Some(((h.site.clone(), h.event_id.clone()), (h, micros)))
        })
        .antijoin(refunded)
        .flat_map(|(_, (h, micros))| {
            let tz = parse_tz(&h.tz);
            let currency = h
                .revenue
                .as_ref()
                .map(|r| r.currency.clone())
                .unwrap_or_default();
            let value = join_dimensions(&[&h.name, &currency], VALUE_SEPARATOR);
            VISIT_GRANULARITIES.map(|g| {
                (
                    (h.site.clone(), bucket_of(h.ts, g, tz), value.clone()),
                    micros,
                )
            })
        });
    let row = |metric: &'static str| {
        move |(site, bucket, value): Key| {
            MetricKey::new(&site, bucket, FAMILY.name, metric).by("goal,currency", &value)
        }
    };
    concatenate(
        inputs.hits.scope(),
        [
            sum_rows(paid.clone(), row("revenue_micros")),
            count_rows(paid.map(|(k, _)| k), row("revenue_events")),
        ],
    )
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::testing::{oracle_property, Oracle, Put};

    fn oracle(o: &Oracle) -> BTreeMap<MetricKey, i64> {
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

    oracle_property!(revenue_equals_oracle_at_every_epoch, "revenue", oracle);
}
