//! Step 2: which stored buckets and sums answer a request, and how buckets fall into the
//! result's time slots.

use std::collections::BTreeMap;

use clickflow_operators::time::{bucket_of, Granularity};

use super::metrics::Stored;
use super::parse::Request;

/// At most this many stored buckets per query.
pub const MAX_BUCKETS: usize = 50_000;

#[derive(Debug)]
pub struct Plan {
    /// The stored granularity read.
    pub granularity: Granularity,
    /// The starts of the stored buckets covering `[from, to)`, in order.
    pub buckets: Vec<i64>,
    /// The stored sums to read: `(stored metric, read from the dimension-less totals)`.
    pub wanted: Vec<(Stored, bool)>,
    /// The slot of each bucket, beside `buckets` (`None` without a time dimension): worked
    /// out once, as rows and sketches ask for it per stored row.
    slots: Vec<Option<i64>>,
    /// How many buckets each slot covers.
    sizes: BTreeMap<Option<i64>, usize>,
}

impl Plan {
    /// The result time slot a bucket of the plan belongs to.
    pub fn slot_of(&self, bucket: i64) -> Option<i64> {
        self.buckets
            .binary_search(&bucket)
            .ok()
            .and_then(|i| self.slots[i])
    }

    /// How many stored buckets the result row of `slot` covers.
    pub fn buckets_in(&self, slot: Option<i64>) -> usize {
        self.sizes.get(&slot).copied().unwrap_or(0)
    }
}

pub fn plan(r: &Request) -> Result<Plan, String> {
    let (from, to, tz) = (r.from, r.to, r.tz);
    // Minute buckets exist for traffic's totals only.
    let minutes_stored = r.shape.breakdown.is_empty()
        && r.formulas.iter().all(|f| {
            f.stored()
                .iter()
                .all(|((family, _), _)| *family == "traffic")
        });
    let granularity = match r.shape.time {
        Some(period) => period.granularity(),
        None if bucket_of(from, Granularity::Day, tz).start == from
            && bucket_of(to, Granularity::Day, tz).start == to =>
        {
            Granularity::Day
        }
        None if from % 3_600_000 == 0 && to % 3_600_000 == 0 => Granularity::Hour,
        None => Granularity::Minute,
    };
    if granularity == Granularity::Minute && !minutes_stored {
        return Err("minute buckets exist for pageviews, events, visitors and bot_events only: use time:hour or an hour-aligned date_range".into());
    }
    let mut buckets = Vec::new();
    let mut t = bucket_of(from, granularity, tz).start;
    while t < to {
        buckets.push(t);
        if buckets.len() > MAX_BUCKETS {
            return Err(format!(
                "date_range spans more than {MAX_BUCKETS} {} buckets",
                granularity.as_str()
            ));
        }
        t = bucket_of(t, granularity, tz).end;
    }
    let mut wanted: Vec<(Stored, bool)> = r.formulas.iter().flat_map(|f| f.stored()).collect();
    wanted.sort();
    wanted.dedup();
    let slots: Vec<Option<i64>> = buckets
        .iter()
        .map(|b| r.shape.time.map(|p| p.slot_of(*b, tz)))
        .collect();
    let mut sizes: BTreeMap<Option<i64>, usize> = BTreeMap::new();
    for slot in &slots {
        *sizes.entry(*slot).or_default() += 1;
    }
    Ok(Plan {
        granularity,
        buckets,
        wanted,
        slots,
        sizes,
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse::{parse, Period, Query};
    use super::*;
    use chrono_tz::Tz;
    use serde_json::json;

    fn plan_of(dims: &[&str], range: serde_json::Value, tz: Tz) -> Plan {
        let q: Query = serde_json::from_value(json!({
            "site_id": "s", "metrics": ["pageviews"], "date_range": range, "dimensions": dims
        }))
        .unwrap();
        plan(&parse(&q, tz, 0).unwrap()).unwrap()
    }

    #[test]
    fn weeks_and_months_are_slots_of_days() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        // Wednesday 2026-10-21 .. Sunday 2026-11-08, across the end of summer time.
        let p = plan_of(&["time:week"], json!(["2026-10-21", "2026-11-08"]), tz);
        assert_eq!(p.granularity, Granularity::Day);
        assert_eq!(p.buckets.len(), 19);
        let slots: Vec<String> = p
            .buckets
            .iter()
            .map(|b| Period::Week.label(p.slot_of(*b).unwrap(), tz))
            .collect();
        assert_eq!(slots.first().unwrap(), "2026-10-19"); // the Monday, clipped to Wednesday
        assert_eq!(p.buckets_in(p.slot_of(p.buckets[0])), 5);
        assert_eq!(p.buckets_in(p.slot_of(p.buckets[5])), 7); // the week of the clock change
        assert_eq!(slots.last().unwrap(), "2026-11-02");
        let m = plan_of(&["time:month"], json!(["2026-10-30", "2026-11-02"]), tz);
        let months: Vec<String> = m
            .buckets
            .iter()
            .map(|b| Period::Month.label(m.slot_of(*b).unwrap(), tz))
            .collect();
        assert_eq!(months, ["2026-10", "2026-10", "2026-11", "2026-11"]);
    }
}
