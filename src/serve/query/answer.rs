//! Step 5: stored sums grouped into result rows, each requested metric evaluated, rows
//! ordered and cut, and the answer shaped as JSON.

use std::collections::BTreeMap;

use clickflow_dataflows::metric::VALUE_SEPARATOR;
use serde_json::{json, Value};

use super::metrics::{evaluate, Cell, Stored};
use super::parse::Request;
use super::plan::Plan;
use super::sketch::RowKey;
use super::sql::Sums;

/// The result rows and the sums each covers; every time slot is there, zeros included,
/// unless the breakdown is shown (then a row is a value that has data).
pub fn group(r: &Request, plan: &Plan, sums: &Sums) -> BTreeMap<RowKey, Cell> {
    let shown = r.shape.breakdown_shown;
    let key_of = |bucket: i64, value: &str| (plan.slot_of(bucket), shown.then(|| value.to_owned()));
    let mut rows: BTreeMap<RowKey, Cell> = BTreeMap::new();
    if !shown {
        for b in &plan.buckets {
            rows.entry(key_of(*b, "")).or_default();
        }
    }
    for ((bucket, value), stored) in &sums.cells {
        let cell = rows.entry(key_of(*bucket, value)).or_default();
        cell.values.insert(value.clone());
        for (s, v) in stored {
            *cell.sums.entry(*s).or_default() += v;
        }
    }
    // The dimension-less totals of each slot (all buckets' without a time dimension).
    let mut totals: BTreeMap<Option<i64>, BTreeMap<Stored, i64>> = BTreeMap::new();
    for (b, stored) in &sums.totals {
        let slot = totals.entry(plan.slot_of(*b)).or_default();
        for (s, v) in stored {
            *slot.entry(*s).or_default() += v;
        }
    }
    for (key, cell) in rows.iter_mut() {
        cell.buckets = plan.buckets_in(key.0);
        if let Some(slot) = totals.get(&key.0) {
            cell.totals.clone_from(slot);
        }
    }
    rows
}

/// The `results` array: each row's time label and breakdown values, and its metrics in the
/// order asked; breakdown rows top first by the first metric, at most `limit` per slot.
pub fn results(r: &Request, rows: &BTreeMap<RowKey, Cell>) -> Result<Vec<Value>, String> {
    let mut out: Vec<(Option<i64>, Option<String>, Vec<Value>)> = Vec::new();
    for ((slot, value), cell) in rows {
        let metrics = r
            .formulas
            .iter()
            .map(|f| evaluate(f, cell))
            .collect::<Result<Vec<_>, _>>()?;
        out.push((*slot, value.clone(), metrics));
    }
    if r.shape.breakdown_shown {
        let by_first = |v: &Vec<Value>| v.first().and_then(|x| x.as_f64()).unwrap_or(0.0);
        out.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(by_first(&b.2).total_cmp(&by_first(&a.2)))
                .then(a.1.cmp(&b.1))
        });
        let mut per_slot: BTreeMap<Option<i64>, usize> = BTreeMap::new();
        out.retain(|row| {
            let n = per_slot.entry(row.0).or_default();
            *n += 1;
            *n <= r.shape.limit
        });
    }
    Ok(out
        .into_iter()
        .map(|(slot, value, metrics)| {
            let mut dims: Vec<Value> = Vec::new();
            if let (Some(s), Some(period)) = (slot, r.shape.time) {
                dims.push(json!(period.label(s, r.tz)));
            }
            if let Some(v) = value {
                dims.extend(v.split(VALUE_SEPARATOR).map(|p| json!(p)));
            }
            json!({ "dimensions": dims, "metrics": metrics })
        })
        .collect())
}
