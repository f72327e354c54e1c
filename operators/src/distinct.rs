//! Exact distinct counts of 64-bit hashes per key, with the HyperLogLog registers of the same
//! set, for totally ordered time.
//!
//! `distinct_total` followed by `count_total` arranges every `(key, member)` pair as a full
//! update (key, member, time, difference) and again the key; a sketch beside it keeps each
//! register's values once more. Here a key holds its members once, sorted, with their
//! multiplicities ([`Members`]: about 9 bytes a member in large sets). Members are uniform
//! hashes, so a HyperLogLog register (the members sharing their top bits) is a contiguous
//! range of them and its rank is read off the range's least member: the sketch costs nothing
//! more to keep.

use std::hash::Hash;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use foldhash::HashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use crate::members::Members;
use crate::stash::Stash;
use crate::tables::shrink_if_sparse;

/// Keys whose per-time changes the operator keeps room for between times.
const RETAINED_CHANGES: usize = 4096;

/// What [`DistinctTotal::distinct_total_sketched`] reports of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Distinct {
    /// How many distinct members the key has.
    Count(u64),
    /// The rank of HyperLogLog register `index` (see [`register_of`]).
    Register { index: u16, rank: u8 },
}

/// The register a uniform 64-bit hash falls in with `precision` index bits, and its rank: the
/// position of the first 1 bit after the index bits, from 1.
pub fn register_of(hash: u64, precision: u32) -> (u16, u8) {
    let index = (hash >> (64 - precision)) as u16;
    let rank = ((hash << precision).leading_zeros().min(64 - precision) + 1) as u8;
    (index, rank)
}

/// Extension trait adding [`DistinctTotal::distinct_total_sketched`].
pub trait DistinctTotal<'scope, K> {
    /// For each key, the number of distinct members present (positive total multiplicity) and,
    /// with `Some(precision)`, the rank of every non-empty HyperLogLog register of them. Each
    /// key has at most one `Count` and one rank per register index; a key without members
    /// has neither.
    ///
    /// ```
    /// use clickflow_operators::distinct::{Distinct, DistinctTotal};
    /// use differential_dataflow::input::Input;
    /// use timely::dataflow::operators::Capture;
    /// use timely::dataflow::operators::capture::Extract;
    ///
    /// let captured = timely::example(|scope| {
    ///     let (mut input, visits) = scope.new_collection::<(char, u64), isize>();
    ///     // 'a' is visited twice by member 7 and once by member 9.
    ///     for x in [('a', 7), ('a', 7), ('a', 9)] {
    ///         input.insert(x);
    ///     }
    ///     input.advance_to(1);
    ///     input.remove(('a', 9));
    ///     visits.distinct_total_sketched(None).inner.capture()
    /// });
    /// let mut updates: Vec<_> = captured.extract().into_iter().flat_map(|(_, d)| d).collect();
    /// updates.sort();
    /// use Distinct::Count;
    /// assert_eq!(updates, vec![(('a', Count(1)), 1, 1), (('a', Count(2)), 0, 1), (('a', Count(2)), 1, -1)]);
    /// ```
    fn distinct_total_sketched(
        self,
        precision: Option<u32>,
    ) -> VecCollection<'scope, u64, (K, Distinct), isize>;
}

/// The rank of register `index` among `members`, if any member falls in it.
fn register_rank(members: &Members, index: u16, precision: u32) -> Option<u8> {
    let shift = 64 - precision;
    let from = (index as u64) << shift;
    let to = from | (u64::MAX >> precision);
    members
        .first_in(from, to)
        .map(|m| register_of(m, precision).1)
}

impl<'scope, K> DistinctTotal<'scope, K> for VecCollection<'scope, u64, (K, u64), isize>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
{
    fn distinct_total_sketched(
        self,
        precision: Option<u32>,
    ) -> VecCollection<'scope, u64, (K, Distinct), isize> {
        let exchange = Exchange::new(|((k, _), _, _): &((K, u64), u64, isize)| k.hashed());
        self.inner
            .unary_frontier(exchange, "DistinctTotal", move |_cap, _info| {
                let mut waiting: Stash<((K, u64), isize)> = Stash::default();
                let mut keys: HashMap<K, Members> = HashMap::default();
                // One time's changes by key; kept between times for its capacity. Most keys
                // change by a member or two a time: inline, without an allocation.
                let mut changes: HashMap<K, SmallVec<[(u64, i64); 2]>> = HashMap::default();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        waiting.extend(&cap, data.drain(..).map(|(km, t, diff)| (t, (km, diff))));
                    });
                    while let Some((time, cap, updates)) =
                        waiting.pop_complete(|t| !frontier.less_equal(&t))
                    {
                        // One time's net change per key and member, so that a replacement
                        // (one retraction, one insertion) never passes through zero.
                        for ((k, member), diff) in updates {
                            changes.entry(k).or_default().push((member, diff as i64));
                        }
                        let mut session = output.session(&cap);
                        for (k, mut change) in changes.drain() {
                            change.sort_unstable_by_key(|(m, _)| *m);
                            change.dedup_by(|next, kept| {
                                let same = next.0 == kept.0;
                                if same {
                                    kept.1 += next.1;
                                }
                                same
                            });
                            change.retain(|(_, d)| *d != 0);
                            if change.is_empty() {
                                continue;
                            }
                            let members = keys.entry(k.clone()).or_default();
                            let mut registers: Vec<(u16, Option<u8>)> = Vec::new();
                            if let Some(p) = precision {
                                // Sorted members: their registers come sorted too.
                                let mut touched: Vec<u16> =
                                    change.iter().map(|(m, _)| register_of(*m, p).0).collect();
                                touched.dedup();
                                registers = touched
                                    .into_iter()
                                    .map(|i| (i, register_rank(members, i, p)))
                                    .collect();
                            }
                            let before = members.len() as u64;
                            for (m, d) in change {
                                members.add(m, d);
                            }
                            let after = members.len() as u64;
                            if before != after {
                                if before > 0 {
                                    session.give(((k.clone(), Distinct::Count(before)), time, -1));
                                }
                                if after > 0 {
                                    session.give(((k.clone(), Distinct::Count(after)), time, 1));
                                }
                            }
                            if let Some(p) = precision {
                                for (index, old) in registers {
                                    let new = register_rank(members, index, p);
                                    if old == new {
                                        continue;
                                    }
                                    if let Some(rank) = old {
                                        let r = Distinct::Register { index, rank };
                                        session.give(((k.clone(), r), time, -1));
                                    }
                                    if let Some(rank) = new {
                                        let r = Distinct::Register { index, rank };
                                        session.give(((k.clone(), r), time, 1));
                                    }
                                }
                            }
                            if after == 0 {
                                keys.remove(&k);
                            }
                        }
                        shrink_if_sparse(&mut keys);
                        // A burst's capacity is not worth holding for ever.
                        changes.shrink_to(RETAINED_CHANGES);
                    }
                }
            })
            .as_collection()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input;
    use std::collections::BTreeMap;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::Capture;

    /// Random insertions and retractions of members of a few keys, checked after every time
    /// against a plain recount (count and registers) of what is present.
    #[test]
    fn counts_and_registers_equal_a_recount_at_every_time() {
        let precision = 4;
        let mut next = crate::xorshift(0x2545_F491_4F6C_DD1Du64);
        // A pool of members, many sharing registers; multiplicities reach above one.
        let pool: Vec<u64> = (0..80).map(|_| next()).collect();
        let mut script: Vec<Vec<((u8, u64), isize)>> = Vec::new();
        let mut present: BTreeMap<(u8, u64), isize> = BTreeMap::new();
        for _ in 0..60 {
            let mut step = Vec::new();
            for _ in 0..(next() % 40) {
                let key = (
                    (next() % 3) as u8,
                    pool[(next() % pool.len() as u64) as usize],
                );
                let have = present.get(&key).copied().unwrap_or(0);
                let diff = if have > 0 && next().is_multiple_of(2) {
                    -1
                } else {
                    1
                };
                *present.entry(key).or_default() += diff;
                step.push((key, diff));
            }
            script.push(step);
        }
        let steps = script.clone();
        let captured = timely::execute_directly(move |worker| {
            let (mut input, probe, captured) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, pairs) = scope.new_collection::<(u8, u64), isize>();
                let out = pairs.distinct_total_sketched(Some(precision));
                let (probe, out) = out.probe();
                (input, probe, out.inner.capture())
            });
            for (t, step) in steps.into_iter().enumerate() {
                for (x, d) in step {
                    input.update(x, d);
                }
                input.advance_to(t as u64 + 1);
                input.flush();
                worker.step_while(|| probe.less_than(input.time()));
            }
            captured
        });
        let mut updates: Vec<_> = captured
            .extract()
            .into_iter()
            .flat_map(|(_, d)| d)
            .collect();
        updates.sort_by_key(|(_, t, _)| *t);
        let mut got: BTreeMap<(u8, Distinct), isize> = BTreeMap::new();
        let mut members: BTreeMap<(u8, u64), isize> = BTreeMap::new();
        for (t, step) in script.into_iter().enumerate() {
            for (x, d) in step {
                *members.entry(x).or_default() += d;
            }
            for (x, time, d) in &updates {
                if *time == t as u64 {
                    *got.entry(*x).or_default() += d;
                }
            }
            got.retain(|_, d| *d != 0);
            let mut want: BTreeMap<(u8, Distinct), isize> = BTreeMap::new();
            let mut count: BTreeMap<u8, u64> = BTreeMap::new();
            let mut ranks: BTreeMap<(u8, u16), u8> = BTreeMap::new();
            for ((k, m), n) in &members {
                if *n > 0 {
                    *count.entry(*k).or_default() += 1;
                    let (index, rank) = register_of(*m, precision);
                    let r = ranks.entry((*k, index)).or_default();
                    *r = (*r).max(rank);
                }
            }
            for (k, n) in count {
                want.insert((k, Distinct::Count(n)), 1);
            }
            for ((k, index), rank) in ranks {
                want.insert((k, Distinct::Register { index, rank }), 1);
            }
            assert_eq!(got, want, "at time {t}");
        }
    }
}
