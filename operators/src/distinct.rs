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
//!
//! Small sets are sketched at a high precision, as HyperLogLog++'s sparse form is: with
//! 2²⁵ registers two of a few hundred members almost never share one, so the registers of
//! small buckets (most of them, on the long tail) merge into nearly exact counts. A key
//! whose set outgrows [`Sketching::sparse_until`] switches to the dense precision, whose
//! registers are at most a few thousand whatever the set's size.

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
    /// The rank of HyperLogLog register `index` at `precision` (see [`register_of`]).
    Register { precision: u8, index: u32, rank: u8 },
}

/// The precisions a key's registers are kept at: `sparse` while the key has at most
/// `sparse_until` members, `dense` beyond. The two are read off the same members, so a key
/// crossing the bound retracts its registers at one precision and inserts them at the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sketching {
    pub dense: u32,
    pub sparse: u32,
    pub sparse_until: usize,
}

impl Sketching {
    /// One precision whatever the set's size.
    pub fn fixed(precision: u32) -> Sketching {
        Sketching {
            dense: precision,
            sparse: precision,
            sparse_until: 0,
        }
    }

    /// The precision of a key with `members` members.
    pub fn precision_for(&self, members: usize) -> u32 {
        if members <= self.sparse_until {
            self.sparse
        } else {
            self.dense
        }
    }
}

/// The register a uniform 64-bit hash falls in with `precision` index bits (1 to 32), and its
/// rank: the position of the first 1 bit after the index bits, from 1.
pub fn register_of(hash: u64, precision: u32) -> (u32, u8) {
    let index = (hash >> (64 - precision)) as u32;
    let rank = ((hash << precision).leading_zeros().min(64 - precision) + 1) as u8;
    (index, rank)
}

/// Extension trait adding [`DistinctTotal::distinct_total_sketched`].
pub trait DistinctTotal<'scope, K> {
    /// For each key, the number of distinct members present (positive total multiplicity) and,
    /// with `Some(sketching)`, the rank of every non-empty HyperLogLog register of them at the
    /// precision its size calls for. Each key has at most one `Count` and one rank per
    /// register index; a key without members has neither.
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
        sketching: Option<Sketching>,
    ) -> VecCollection<'scope, u64, (K, Distinct), isize>;
}

/// The rank of register `index` among `members`, if any member falls in it.
fn register_rank(members: &Members, index: u32, precision: u32) -> Option<u8> {
    let shift = 64 - precision;
    let from = (index as u64) << shift;
    let to = from | (u64::MAX >> precision);
    members
        .first_in(from, to)
        .map(|m| register_of(m, precision).1)
}

/// Every non-empty register of `members` at `precision`, as `(precision, index, rank)` in
/// index order: members are sorted, so a register's first member is its least, whose rank
/// is the register's.
fn all_registers(members: &Members, precision: u32) -> Vec<(u8, u32, u8)> {
    let mut out: Vec<(u8, u32, u8)> = Vec::new();
    for (member, _) in members.iter() {
        let (index, rank) = register_of(member, precision);
        if out.last().is_none_or(|(_, last, _)| *last != index) {
            out.push((precision as u8, index, rank));
        }
    }
    out
}

/// A key's registers before a change: the ranks of the touched ones at the key's precision,
/// or all of them (with their precision) where the change may switch precision.
enum Registers {
    Touched(u32, Vec<(u32, Option<u8>)>),
    All(Vec<(u8, u32, u8)>),
}

/// The changes that turn the sorted registers `old` into the sorted `new`.
fn difference(old: Vec<(u8, u32, u8)>, new: Vec<(u8, u32, u8)>) -> Vec<((u8, u32, u8), isize)> {
    let mut out = Vec::new();
    let (mut old, mut new) = (old.into_iter().peekable(), new.into_iter().peekable());
    loop {
        let retract = match (old.peek(), new.peek()) {
            (None, None) => return out,
            (Some(a), Some(b)) if a == b => {
                old.next();
                new.next();
                continue;
            }
            (Some(a), Some(b)) => a < b,
            (a, _) => a.is_some(),
        };
        if retract {
            out.extend(old.next().map(|r| (r, -1)));
        } else {
            out.extend(new.next().map(|r| (r, 1)));
        }
    }
}

impl<'scope, K> DistinctTotal<'scope, K> for VecCollection<'scope, u64, (K, u64), isize>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
{
    fn distinct_total_sketched(
        self,
        sketching: Option<Sketching>,
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
                            let before = members.len();
                            // The registers this change may move, with their ranks before it:
                            // those it touches, or all of them where the key may cross
                            // `sparse_until` (its precision then changes).
                            let old: Option<Registers> = sketching.map(|s| {
                                let p = s.precision_for(before);
                                let (low, high) =
                                    (before.saturating_sub(change.len()), before + change.len());
                                if s.precision_for(low) != s.precision_for(high) {
                                    return Registers::All(all_registers(members, p));
                                }
                                // Sorted members: their registers come sorted too.
                                let mut touched: Vec<u32> =
                                    change.iter().map(|(m, _)| register_of(*m, p).0).collect();
                                touched.dedup();
                                let ranks = touched
                                    .into_iter()
                                    .map(|i| (i, register_rank(members, i, p)))
                                    .collect();
                                Registers::Touched(p, ranks)
                            });
                            for (m, d) in change {
                                members.add(m, d);
                            }
                            let after = members.len();
                            if before != after {
                                if before > 0 {
                                    let c = Distinct::Count(before as u64);
                                    session.give(((k.clone(), c), time, -1));
                                }
                                if after > 0 {
                                    let c = Distinct::Count(after as u64);
                                    session.give(((k.clone(), c), time, 1));
                                }
                            }
                            let register_changes = match (old, sketching) {
                                (Some(Registers::Touched(p, ranks)), _) => {
                                    let mut out = Vec::new();
                                    for (index, old) in ranks {
                                        let new = register_rank(members, index, p);
                                        if old != new {
                                            let at = |r: u8| (p as u8, index, r);
                                            out.extend(old.map(|r| (at(r), -1)));
                                            out.extend(new.map(|r| (at(r), 1)));
                                        }
                                    }
                                    out
                                }
                                (Some(Registers::All(old)), Some(s)) => {
                                    let new = all_registers(members, s.precision_for(after));
                                    difference(old, new)
                                }
                                _ => Vec::new(),
                            };
                            for ((precision, index, rank), diff) in register_changes {
                                let r = Distinct::Register {
                                    precision,
                                    index,
                                    rank,
                                };
                                session.give(((k.clone(), r), time, diff));
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
    /// against a plain recount (count and registers) of what is present. Keys grow past and
    /// shrink below `sparse_until`, so their precision switches both ways.
    #[test]
    fn counts_and_registers_equal_a_recount_at_every_time() {
        let sketching = Sketching {
            dense: 4,
            sparse: 8,
            sparse_until: 12,
        };
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
                let out = pairs.distinct_total_sketched(Some(sketching));
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
        let mut crossed = false;
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
            let mut present: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
            for ((k, m), n) in &members {
                if *n > 0 {
                    present.entry(*k).or_default().push(*m);
                }
            }
            let mut switched = false;
            for (k, set) in present {
                want.insert((k, Distinct::Count(set.len() as u64)), 1);
                let precision = sketching.precision_for(set.len());
                switched |= precision == sketching.dense;
                let mut ranks: BTreeMap<u32, u8> = BTreeMap::new();
                for m in set {
                    let (index, rank) = register_of(m, precision);
                    let r = ranks.entry(index).or_default();
                    *r = (*r).max(rank);
                }
                for (index, rank) in ranks {
                    let precision = precision as u8;
                    want.insert(
                        (
                            k,
                            Distinct::Register {
                                precision,
                                index,
                                rank,
                            },
                        ),
                        1,
                    );
                }
            }
            crossed |= switched;
            assert_eq!(got, want, "at time {t}");
        }
        assert!(crossed, "some key grew past sparse_until");
    }
}
