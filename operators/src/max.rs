//! The largest present value of each key, maintained under insertions and retractions, for
//! totally ordered time. Differential's `reduce` does this for any time lattice, at the price
//! of arranging its input and its output and replaying each key's history; with `u64` time a
//! key needs only the multiset of its values.

use foldhash::HashMap;
use smallvec::SmallVec;

use crate::stash::Stash;
use std::hash::Hash;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

/// Extension trait adding [`MaxTotal::max_total`].
pub trait MaxTotal<'scope, K, V> {
    /// For each key, its largest value among those present (positive total multiplicity), as
    /// a collection with one `(key, max)` per key that has any.
    ///
    /// ```
    /// use clickflow_operators::max::MaxTotal;
    /// use differential_dataflow::input::Input;
    /// use timely::dataflow::operators::Capture;
    /// use timely::dataflow::operators::capture::Extract;
    ///
    /// let captured = timely::example(|scope| {
    ///     let (mut input, ranks) = scope.new_collection::<(char, u8), isize>();
    ///     for x in [('a', 1), ('a', 3), ('a', 5), ('b', 1)] {
    ///         input.insert(x);
    ///     }
    ///     input.advance_to(1);
    ///     input.remove(('a', 5));
    ///     ranks.max_total().inner.capture()
    /// });
    /// let mut updates: Vec<_> = captured.extract().into_iter().flat_map(|(_, d)| d).collect();
    /// updates.sort();
    /// assert_eq!(updates, vec![(('a', 3), 1, 1), (('a', 5), 0, 1), (('a', 5), 1, -1), (('b', 1), 0, 1)]);
    /// ```
    fn max_total(self) -> VecCollection<'scope, u64, (K, V), isize>;
}

/// A key's present values and their multiplicities (a register sees far fewer than 2³¹).
type Values<V> = SmallVec<[(V, i32); 2]>;

impl<'scope, K, V> MaxTotal<'scope, K, V> for VecCollection<'scope, u64, (K, V), isize>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
    V: timely::ExchangeData + Ord + Copy,
{
    fn max_total(self) -> VecCollection<'scope, u64, (K, V), isize> {
        let exchange = Exchange::new(|((k, _), _, _): &((K, V), u64, isize)| k.hashed());
        self.inner
            .unary_frontier(exchange, "MaxTotal", |_cap, _info| {
                let mut waiting: Stash<((K, V), isize)> = Stash::default();
                // Each key's present values with their multiplicities, sorted by value. Most
                // keys (sketch registers) hold one or two values: kept inline.
                let mut values: HashMap<K, Values<V>> = HashMap::default();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for (kv, time, diff) in data.drain(..) {
                            waiting.push(&cap, time, (kv, diff));
                        }
                    });
                    while let Some((time, cap, updates)) =
                        waiting.pop_complete(|t| !frontier.less_equal(&t))
                    {
                        // The max of each touched key before this time's updates.
                        let mut before: HashMap<K, Option<V>> = HashMap::default();
                        for ((k, v), diff) in updates {
                            let present = values.entry(k.clone()).or_default();
                            before
                                .entry(k)
                                .or_insert_with(|| present.last().map(|(v, _)| *v));
                            match present.binary_search_by(|(x, _)| x.cmp(&v)) {
                                Ok(i) => {
                                    present[i].1 += diff as i32;
                                    if present[i].1 == 0 {
                                        present.remove(i);
                                    }
                                }
                                Err(i) => present.insert(i, (v, diff as i32)),
                            }
                        }
                        let mut session = output.session(&cap);
                        for (k, old) in before {
                            let new = values.get(&k).and_then(|p| p.last().map(|(v, _)| *v));
                            if values.get(&k).is_some_and(|p| p.is_empty()) {
                                values.remove(&k);
                            }
                            if old == new {
                                continue;
                            }
                            if let Some(v) = old {
                                session.give(((k.clone(), v), time, -1));
                            }
                            if let Some(v) = new {
                                session.give(((k, v), time, 1));
                            }
                        }
                    }
                }
            })
            .as_collection()
    }
}
