//! `reduce` for totally ordered time, holding each key's input values once and nothing else.
//!
//! Differential's `reduce` works for any time lattice: it arranges its input and its output
//! (each as `(key, value, time, difference)` batches merged in spines) and replays a key's
//! history to find what changed. With `u64` ingest time a key's state is just its present
//! values: the output before a time's changes is the logic applied to them, so it need not be
//! kept. A key costs its values plus one map entry; a key whose values all leave is dropped.

use std::hash::Hash;

use differential_dataflow::{AsCollection, Hashable, VecCollection};
use foldhash::HashMap;
use smallvec::SmallVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

use crate::stash::Stash;
use crate::tables::shrink_if_sparse;

/// A key's present values with their multiplicities, sorted. Most keys (a visitor's day) have
/// one or two: kept inline.
type Values<V> = SmallVec<[(V, isize); 1]>;

/// Extension trait adding [`ReduceTotal::reduce_total`].
pub trait ReduceTotal<'scope, K, V> {
    /// For each key, `logic(key, values, output)` over its present values (sorted, each with
    /// its positive multiplicity) produces its output records; whenever a key's values change,
    /// the records of its former output that differ are retracted and the new ones inserted.
    ///
    /// ```
    /// use clickflow_operators::reduce::ReduceTotal;
    /// use differential_dataflow::input::Input;
    /// use timely::dataflow::operators::Capture;
    /// use timely::dataflow::operators::capture::Extract;
    ///
    /// let captured = timely::example(|scope| {
    ///     let (mut input, values) = scope.new_collection::<(char, u32), isize>();
    ///     input.insert(('a', 3));
    ///     input.insert(('a', 5));
    ///     input.advance_to(1);
    ///     input.remove(('a', 5));
    ///     // The sum of each key's values.
    ///     values
    ///         .reduce_total("Sum", |_key, values, out| {
    ///             out.push((values.iter().map(|(v, n)| *v * *n as u32).sum::<u32>(), 1));
    ///         })
    ///         .inner
    ///         .capture()
    /// });
    /// let mut updates: Vec<_> = captured.extract().into_iter().flat_map(|(_, d)| d).collect();
    /// updates.sort();
    /// assert_eq!(updates, vec![(('a', 3), 1, 1), (('a', 8), 0, 1), (('a', 8), 1, -1)]);
    /// ```
    fn reduce_total<O, L>(self, name: &str, logic: L) -> VecCollection<'scope, u64, (K, O), isize>
    where
        O: timely::ExchangeData + Ord,
        L: FnMut(&K, &[(V, isize)], &mut Vec<(O, isize)>) + 'static;
}

impl<'scope, K, V> ReduceTotal<'scope, K, V> for VecCollection<'scope, u64, (K, V), isize>
where
    K: timely::ExchangeData + Hash + Eq + Clone,
    V: timely::ExchangeData + Ord,
{
    fn reduce_total<O, L>(
        self,
        name: &str,
        mut logic: L,
    ) -> VecCollection<'scope, u64, (K, O), isize>
    where
        O: timely::ExchangeData + Ord,
        L: FnMut(&K, &[(V, isize)], &mut Vec<(O, isize)>) + 'static,
    {
        let exchange = Exchange::new(|((k, _), _, _): &((K, V), u64, isize)| k.hashed());
        self.inner
            .unary_frontier(exchange, name, move |_cap, _info| {
                let mut waiting: Stash<((K, V), isize)> = Stash::default();
                let mut keys: HashMap<K, Values<V>> = HashMap::default();
                let mut before: Vec<(O, isize)> = Vec::new();
                let mut after: Vec<(O, isize)> = Vec::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        waiting.extend(&cap, data.drain(..).map(|(kv, t, diff)| (t, (kv, diff))));
                    });
                    while let Some((time, cap, updates)) =
                        waiting.pop_complete(|t| !frontier.less_equal(&t))
                    {
                        let mut changes: HashMap<K, Vec<(V, isize)>> = HashMap::default();
                        for ((k, v), diff) in updates {
                            changes.entry(k).or_default().push((v, diff));
                        }
                        let mut session = output.session(&cap);
                        for (k, mut change) in changes {
                            consolidate(&mut change);
                            if change.is_empty() {
                                continue;
                            }
                            let values = keys.entry(k.clone()).or_default();
                            before.clear();
                            if !values.is_empty() {
                                logic(&k, values, &mut before);
                            }
                            for (v, diff) in change {
                                match values.binary_search_by(|(x, _)| x.cmp(&v)) {
                                    Ok(i) => {
                                        values[i].1 += diff;
                                        if values[i].1 == 0 {
                                            values.remove(i);
                                        }
                                    }
                                    // Valid input never takes away what is absent.
                                    Err(i) if diff > 0 => values.insert(i, (v, diff)),
                                    Err(_) => debug_assert!(false, "retraction of an absent value"),
                                }
                            }
                            after.clear();
                            if values.is_empty() {
                                keys.remove(&k);
                            } else {
                                if values.capacity() > 2 * values.len() {
                                    values.shrink_to_fit();
                                }
                                logic(&k, values, &mut after);
                            }
                            // What changed: the new output less the old.
                            after.extend(before.drain(..).map(|(o, d)| (o, -d)));
                            consolidate(&mut after);
                            for (o, diff) in after.drain(..) {
                                session.give(((k.clone(), o), time, diff));
                            }
                        }
                        shrink_if_sparse(&mut keys);
                    }
                }
            })
            .as_collection()
    }
}

/// Sorts and sums the multiplicities of equal records, dropping those that cancel.
fn consolidate<T: Ord>(updates: &mut Vec<(T, isize)>) {
    updates.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept: Vec<(T, isize)> = Vec::with_capacity(updates.len());
    for (t, d) in updates.drain(..) {
        match kept.last_mut() {
            Some((last, n)) if *last == t => *n += d,
            _ => kept.push((t, d)),
        }
    }
    kept.retain(|(_, d)| *d != 0);
    *updates = kept;
}
