//! Step 4: visitors of result rows that span several stored buckets (a week, a month, a
//! whole range), from the merged HyperLogLog registers stored beside each bucket's exact
//! count. Distinct counts never add up across buckets; registers merge.

use std::collections::BTreeMap;

use clickflow_dataflows::uniques::{Register, Union};
use clickflow_operators::time::Granularity;

use super::metrics::{sketch_of, Cell, Formula};
use super::parse::Request;
use super::plan::Plan;
use super::Error;

/// A result row: its time slot (if the query has a time dimension) and breakdown value (if
/// shown).
pub type RowKey = (Option<i64>, Option<String>);

/// The family whose sketches answer the request's distinct counts over several buckets,
/// where that family keeps sketches for the breakdown (as its declarations say: a distinct
/// metric `m` with a stored `m_hll`).
pub fn family_to_merge(r: &Request) -> Option<&'static str> {
    r.formulas
        .iter()
        .find_map(Formula::sketched)
        .map(|((family, _), _)| family)
}

/// The family whose dimension-less sketches a share of all distinct members (conversion
/// rate) needs as its denominator over several buckets.
pub fn totals_to_merge(r: &Request) -> Option<&'static str> {
    r.formulas.iter().find_map(|f| match f {
        Formula::Ratio {
            denominator,
            denominator_total: true,
            ..
        } => sketch_of(*denominator).map(|_| denominator.0),
        _ => None,
    })
}

/// Sets each multi-bucket row's estimate of all of the site's visitors in its slot.
pub fn merge_totals(
    plan: &Plan,
    rows: &mut BTreeMap<RowKey, Cell>,
    sketches: Vec<(i64, String, Vec<u8>)>,
) -> Result<(), Error> {
    let mut unions: BTreeMap<Option<i64>, Union> = BTreeMap::new();
    for (bucket, _, sketch) in sketches {
        unions
            .entry(plan.slot_of(bucket))
            .or_default()
            .add(decode(&sketch)?);
    }
    for ((slot, _), cell) in rows.iter_mut().filter(|(_, c)| c.buckets > 1) {
        let estimate = unions.get(slot).map_or(0.0, Union::estimate);
        cell.total_visitors_estimate = Some(estimate);
    }
    Ok(())
}

fn decode(sketch: &[u8]) -> Result<Vec<Register>, Error> {
    clickflow_dataflows::uniques::decode(sketch)
        .map_err(|e| Error::Internal(format!("a stored visitor sketch is unreadable: {e}")))
}

/// Whether some row spans several buckets that keep sketches (minutes keep none): only then
/// are sketches read.
pub fn merges(plan: &Plan, rows: &BTreeMap<RowKey, Cell>) -> bool {
    plan.granularity != Granularity::Minute && rows.values().any(|c| c.buckets > 1)
}

/// Sets each multi-bucket row's visitor estimate from the registers of its buckets.
pub fn merge(
    plan: &Plan,
    rows: &mut BTreeMap<RowKey, Cell>,
    sketches: Vec<(i64, String, Vec<u8>)>,
) -> Result<(), Error> {
    // (slot, breakdown value) → registers
    let mut unions: BTreeMap<(Option<i64>, String), Union> = BTreeMap::new();
    for (bucket, value, sketch) in sketches {
        unions
            .entry((plan.slot_of(bucket), value))
            .or_default()
            .add(decode(&sketch)?);
    }
    for ((slot, value), cell) in rows.iter_mut().filter(|(_, c)| c.buckets > 1) {
        // Without a shown breakdown (totals, or one filtered value) every kept register of
        // the slot belongs to the row.
        let union = match value {
            Some(v) => unions.get(&(*slot, v.clone())).cloned().unwrap_or_default(),
            None => {
                let mut all = Union::default();
                for (_, part) in unions.iter().filter(|((s, _), _)| s == slot) {
                    all.add(part.registers());
                }
                all
            }
        };
        cell.visitors_estimate = Some(union.estimate());
    }
    Ok(())
}
