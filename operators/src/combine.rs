//! Sums sent as changes: per key and time, the weights of the records that arrived together,
//! added up into one update. For a consumer that adds changes up itself (the sink holds each
//! row's total), this replaces an arrangement of totals: nothing is kept between activations,
//! and a key touched by many records of one time costs one update downstream.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;

use differential_dataflow::collection::AsCollection;
use differential_dataflow::difference::{Multiply, Semigroup};
use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

type Sums<K, R> = HashMap<K, R, foldhash::fast::FixedState>;

pub trait SumChanges<'s, K, R> {
    /// `(key, sum)` once per key, time and activation, with diff 1: the sum of `weight × diff`
    /// over the key's updates at that time which arrived in the activation. The collection's
    /// `sum × multiplicity` per key is the key's total at every time, as in the input; keys
    /// whose changes cancel send nothing. Local to each worker (a combiner): no exchange.
    ///
    /// ```
    /// use clickflow_operators::combine::SumChanges;
    /// use differential_dataflow::input::Input;
    ///
    /// timely::example(|scope| {
    ///     // (page, (pageviews, events))
    ///     let hits = vec![(1u32, (1isize, 1isize)), (1, (0, 1)), (2, (1, 1))];
    ///     let sums = scope.new_collection_from(hits).1.sum_changes();
    ///     sums.assert_eq(scope.new_collection_from(vec![(1u32, (1isize, 2isize)), (2, (1, 1))]).1);
    /// });
    /// ```
    fn sum_changes(self) -> VecCollection<'s, u64, (K, R)>;
}

impl<'s, K, R> SumChanges<'s, K, R> for VecCollection<'s, u64, (K, R)>
where
    K: Hash + Eq + Clone + 'static,
    R: Semigroup + Multiply<isize, Output = R> + 'static,
{
    fn sum_changes(self) -> VecCollection<'s, u64, (K, R)> {
        self.inner
            .unary(Pipeline, "SumChanges", |_cap, _info| {
                // One group per time of this activation's updates (mostly one), and the maps
                // of earlier activations kept for their allocations.
                let mut groups: Vec<(Capability<u64>, Sums<K, R>)> = Vec::new();
                let mut spare: Vec<Sums<K, R>> = Vec::new();
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut at = usize::MAX;
                        for ((key, weight), time, diff) in data.drain(..) {
                            if groups.get(at).is_none_or(|(c, _)| *c.time() != time) {
                                at = match groups.iter().position(|(c, _)| *c.time() == time) {
                                    Some(at) => at,
                                    None => {
                                        let sums = spare.pop().unwrap_or_default();
                                        groups.push((cap.delayed(&time, 0), sums));
                                        groups.len() - 1
                                    }
                                };
                            }
                            let change = weight.multiply(&diff);
                            match groups[at].1.entry(key) {
                                Entry::Occupied(mut sum) => sum.get_mut().plus_equals(&change),
                                Entry::Vacant(slot) => {
                                    slot.insert(change);
                                }
                            }
                        }
                    });
                    for (cap, mut sums) in groups.drain(..) {
                        let time = *cap.time();
                        let mut session = output.session(&cap);
                        for (key, sum) in sums.drain() {
                            if !sum.is_zero() {
                                session.give(((key, sum), time, 1));
                            }
                        }
                        spare.push(sums);
                    }
                    // A burst's table is not held for good.
                    spare.retain(|s| s.capacity() <= 1 << 16);
                }
            })
            .as_collection()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use differential_dataflow::input::Input;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::Capture;

    use super::*;

    type Totals = BTreeMap<u8, (isize, isize)>;
    /// (key, (weight, weight))
    type Weighted = (u8, (isize, isize));

    fn add(totals: &mut Totals, key: u8, (a, b): (isize, isize), diff: isize) {
        let total = totals.entry(key).or_default();
        total.0 += a * diff;
        total.1 += b * diff;
        if *total == (0, 0) {
            totals.remove(&key);
        }
    }

    /// Random weighted insertions and retractions of a few keys, times sometimes sharing an
    /// activation and sometimes split over several: at every time, the changes sent add up to
    /// the input's totals, and no change is zero.
    #[test]
    fn changes_add_up_to_the_totals_at_every_time() {
        let mut next = crate::xorshift(0x9E37_79B9_7F4A_7C15u64);
        let mut script: Vec<Vec<(Weighted, isize)>> = Vec::new();
        for _ in 0..50 {
            let step = (0..next() % 30)
                .map(|_| {
                    let weight = ((next() % 3) as isize, (next() % 5) as isize - 2);
                    let diff = if next().is_multiple_of(3) { -1 } else { 1 };
                    (((next() % 6) as u8, weight), diff)
                })
                .collect();
            script.push(step);
        }
        let mut expected: Vec<Totals> = Vec::new();
        let mut totals = Totals::new();
        for step in &script {
            for ((key, weight), diff) in step {
                add(&mut totals, *key, *weight, *diff);
            }
            expected.push(totals.clone());
        }
        let steps = script.clone();
        let captured = timely::execute_directly(move |worker| {
            let (mut input, captured) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, weighted) = scope.new_collection::<Weighted, isize>();
                (input, weighted.sum_changes().inner.capture())
            });
            for (t, step) in steps.into_iter().enumerate() {
                let split = t % 3 == 0;
                for (i, (x, d)) in step.into_iter().enumerate() {
                    input.update(x, d);
                    if split && i % 4 == 3 {
                        input.flush();
                        worker.step();
                    }
                }
                input.advance_to(t as u64 + 1);
                input.flush();
                if t % 2 == 0 {
                    worker.step();
                }
            }
            input.close();
            while worker.step() {}
            captured
        });
        let mut sent: Vec<(Weighted, u64, isize)> = captured
            .extract()
            .into_iter()
            .flat_map(|(_, updates)| updates)
            .collect();
        assert!(sent.iter().all(|((_, sum), _, _)| *sum != (0, 0)));
        sent.sort_by_key(|u| u.1);
        let mut totals = Totals::new();
        let mut sent = sent.into_iter().peekable();
        for (t, want) in expected.iter().enumerate() {
            while let Some(((key, sum), _, diff)) = sent.next_if(|u| u.1 <= t as u64) {
                add(&mut totals, key, sum, diff);
            }
            assert_eq!(&totals, want, "time {t}");
        }
    }
}
