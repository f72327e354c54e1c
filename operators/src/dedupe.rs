//! Deduplication that remembers keys, not records: the first record of each key passes, later
//! ones are dropped, and the key is forgotten at a time the caller chooses.

use std::collections::BTreeMap;

use foldhash::HashSet;

use crate::stash::Stash;
use crate::tables::shrink_if_sparse;
use std::hash::Hash;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

/// Keeps the first record of every key of an append-only collection (a log).
pub trait FirstOfKey<'scope, D> {
    /// Passes the first record of each `key` (the earliest time; within one time, the least
    /// record) and drops the rest until the input frontier reaches `forget_at(record)` of the
    /// first, after which the key may pass again. Only the key and its forget time are held,
    /// so state follows distinct keys, not records.
    ///
    /// The input must be append-only (no retractions): the survivor is never taken back here.
    /// Retract it downstream (with [`crate::expiry::Expire`]) when it should expire.
    ///
    /// ```
    /// use clickflow_operators::dedupe::FirstOfKey;
    /// use differential_dataflow::input::Input;
    ///
    /// timely::example(|scope| {
    ///     // (id, payload): two copies of id 1, the second one later.
    ///     let (mut input, records) = scope.new_collection::<(u32, char), isize>();
    ///     records
    ///         .first_of_key(|(id, _)| *id, |_| u64::MAX)
    ///         .inspect(|x| assert!(x.0 != (1, 'b')));
    ///     input.insert((1, 'a'));
    ///     input.insert((2, 'c'));
    ///     input.advance_to(1);
    ///     input.insert((1, 'b'));
    /// });
    /// ```
    fn first_of_key<K, FK, FF>(
        self,
        key: FK,
        forget_at: FF,
    ) -> VecCollection<'scope, u64, D, isize>
    where
        K: Hash + Eq + Clone + Hashable<Output = u64> + 'static,
        FK: Fn(&D) -> K + 'static,
        FF: Fn(&D) -> u64 + 'static;
}

impl<'scope, D> FirstOfKey<'scope, D> for VecCollection<'scope, u64, D, isize>
where
    D: timely::ExchangeData + Ord,
{
    fn first_of_key<K, FK, FF>(self, key: FK, forget_at: FF) -> VecCollection<'scope, u64, D, isize>
    where
        K: Hash + Eq + Clone + Hashable<Output = u64> + 'static,
        FK: Fn(&D) -> K + 'static,
        FF: Fn(&D) -> u64 + 'static,
    {
        let key = std::rc::Rc::new(key);
        let route = key.clone();
        let exchange = Exchange::new(move |(d, _, _): &(D, u64, isize)| route(d).hashed());
        self.inner
            .unary_frontier(exchange, "FirstOfKey", move |_cap, _info| {
                // Records wait here until their time is complete, so copies are judged in time
                // order whatever order the exchange delivers them in.
                let mut waiting: Stash<D> = Stash::default();
                let mut seen: HashSet<K> = HashSet::default();
                let mut forget: BTreeMap<u64, Vec<K>> = BTreeMap::new();
                // Forgets every key due at or before `upto` (all of them at `None`).
                let forget_through = |forget: &mut BTreeMap<u64, Vec<K>>,
                                      seen: &mut HashSet<K>,
                                      upto: Option<u64>| {
                    while let Some(due) = forget.first_entry() {
                        if upto.is_some_and(|t| *due.key() > t) {
                            break;
                        }
                        for k in due.remove() {
                            seen.remove(&k);
                        }
                    }
                };
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        debug_assert!(
                            data.iter().all(|(_, _, diff)| *diff > 0),
                            "first_of_key needs an append-only input"
                        );
                        let appended = data.drain(..).filter(|(_, _, diff)| *diff > 0);
                        waiting.extend(&cap, appended.map(|(record, time, _)| (time, record)));
                    });
                    while let Some((time, cap, mut records)) =
                        waiting.pop_complete(|t| !frontier.less_equal(&t))
                    {
                        // Keys due to be forgotten by now go first: a copy arriving at or after
                        // its first's forget time passes again.
                        forget_through(&mut forget, &mut seen, Some(time));
                        records.sort();
                        let mut session = output.session(&cap);
                        for record in records {
                            let k = key(&record);
                            if !seen.insert(k.clone()) {
                                continue;
                            }
                            let due = forget.entry(forget_at(&record).max(time + 1)).or_default();
                            // A day's ids share one forget time: a vector of millions, which
                            // doubling would leave up to half empty.
                            if due.len() == due.capacity() {
                                due.reserve_exact(due.len() / 8 + 16);
                            }
                            due.push(k);
                            session.give((record, time, 1));
                        }
                    }
                    // Idle stretches free memory too.
                    let now = frontier.frontier().iter().min().copied();
                    forget_through(&mut forget, &mut seen, now);
                    shrink_if_sparse(&mut seen);
                }
            })
            .as_collection()
    }
}
