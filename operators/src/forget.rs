//! Expiry with erasure: records live from their time until their seal, unless their group (a
//! visitor) is forgotten first. Erasures are rare; records are many. An antijoin would arrange
//! every record by group to serve the rare erasure; this keeps the records it already holds
//! for their expiry and searches them when an erasure arrives.

use std::collections::BTreeMap;

use foldhash::HashSet;

use crate::stash::Stash;
use std::hash::Hash;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::broadcast::Broadcast;
use timely::dataflow::operators::Capability;

/// Extension trait adding [`ExpireOrForget::expire_or_forget`].
pub trait ExpireOrForget<'scope, D> {
    /// Passes each record of an append-only collection from its time until `seal(record)`
    /// (as [`crate::expiry::Expire::expire_at`]), except records whose `group(record)` is in
    /// `forgotten`: those already passed are retracted when the group is forgotten, later ones
    /// never pass. A group stays forgotten for good.
    ///
    /// Holds each live record once (for its retraction) and the forgotten groups; an erasure
    /// costs a scan of the live records, which suits erasures being rare.
    ///
    /// ```
    /// use clickflow_operators::forget::ExpireOrForget;
    /// use differential_dataflow::input::Input;
    /// use timely::dataflow::operators::Capture;
    /// use timely::dataflow::operators::capture::Extract;
    ///
    /// let captured = timely::example(|scope| {
    ///     // (visitor, payload), living until time 100
    ///     let (mut hits, records) = scope.new_collection::<(u32, char), isize>();
    ///     let (mut erase, erased) = scope.new_collection::<u32, isize>();
    ///     let kept = records.expire_or_forget(erased, |(v, _)| *v, |_| 100);
    ///     hits.insert((1, 'a'));
    ///     hits.insert((2, 'b'));
    ///     hits.advance_to(5);
    ///     erase.advance_to(5);
    ///     erase.insert(1);
    ///     hits.insert((1, 'c'));
    ///     kept.inner.capture()
    /// });
    /// let mut updates: Vec<_> = captured.extract().into_iter().flat_map(|(_, d)| d).collect();
    /// updates.sort();
    /// assert_eq!(updates, vec![((1, 'a'), 0, 1), ((1, 'a'), 5, -1), ((2, 'b'), 0, 1), ((2, 'b'), 100, -1)]);
    /// ```
    fn expire_or_forget<G, FG, FS>(
        self,
        forgotten: VecCollection<'scope, u64, G, isize>,
        group: FG,
        seal: FS,
    ) -> VecCollection<'scope, u64, D, isize>
    where
        G: timely::ExchangeData + Clone + Hash + Eq,
        FG: Fn(&D) -> G + 'static,
        FS: Fn(&D) -> u64 + 'static;
}

impl<'scope, D> ExpireOrForget<'scope, D> for VecCollection<'scope, u64, D, isize>
where
    D: timely::ExchangeData + Clone,
{
    fn expire_or_forget<G, FG, FS>(
        self,
        forgotten: VecCollection<'scope, u64, G, isize>,
        group: FG,
        seal: FS,
    ) -> VecCollection<'scope, u64, D, isize>
    where
        G: timely::ExchangeData + Clone + Hash + Eq,
        FG: Fn(&D) -> G + 'static,
        FS: Fn(&D) -> u64 + 'static,
    {
        // Records stay on the worker that has them; every worker hears every erasure.
        let erasures = forgotten.inner.broadcast();
        self.inner
            .binary_frontier(
                erasures,
                Pipeline,
                Pipeline,
                "ExpireOrForget",
                move |_cap, _info| {
                    let mut records: Stash<D> = Stash::default();
                    let mut erasing: Stash<G> = Stash::default();
                    let mut gone: HashSet<G> = HashSet::default();
                    // Live records by the time they are retracted.
                    let mut pending: BTreeMap<u64, Vec<D>> = BTreeMap::new();
                    // Held at the earliest pending retraction.
                    let mut held: Option<Capability<u64>> = None;
                    move |(input, frontier), (erase_input, erase_frontier), output| {
                        input.for_each(|cap, data| {
                            for (record, time, diff) in data.drain(..) {
                                debug_assert!(diff > 0, "expire_or_forget takes appends only");
                                if diff > 0 {
                                    records.push(&cap, time, record);
                                }
                            }
                        });
                        erase_input.for_each(|cap, data| {
                            for (g, time, diff) in data.drain(..) {
                                if diff > 0 {
                                    erasing.push(&cap, time, g);
                                }
                            }
                        });
                        let complete =
                            |t: u64| !frontier.less_equal(&t) && !erase_frontier.less_equal(&t);
                        // Times in order; at each time erasures go first, then expiries due,
                        // then new records (a record sealed at its own time never passes).
                        loop {
                            let next_erase = erasing.next_time();
                            let next_record = records.next_time();
                            let next_seal = pending.keys().next().copied();
                            let Some(t) = [next_erase, next_record, next_seal]
                                .into_iter()
                                .flatten()
                                .min()
                            else {
                                break;
                            };
                            if !complete(t) {
                                break;
                            }
                            if next_erase == Some(t) {
                                if let Some((cap, groups)) = erasing.take(t) {
                                    let fresh: HashSet<G> =
                                        groups.into_iter().filter(|g| !gone.contains(g)).collect();
                                    if !fresh.is_empty() {
                                        let mut session = output.session(&cap);
                                        for live in pending.values_mut() {
                                            live.retain(|d| {
                                                let erase = fresh.contains(&group(d));
                                                if erase {
                                                    session.give((d.clone(), t, -1));
                                                }
                                                !erase
                                            });
                                        }
                                        pending.retain(|_, live| !live.is_empty());
                                        gone.extend(fresh);
                                    }
                                }
                            }
                            if next_seal == Some(t) {
                                if let (Some(live), Some(cap)) = (pending.remove(&t), held.as_ref())
                                {
                                    let at = cap.delayed(&t);
                                    output
                                        .session(&at)
                                        .give_iterator(live.into_iter().map(|d| (d, t, -1)));
                                }
                            }
                            if next_record == Some(t) {
                                if let Some((cap, batch)) = records.take(t) {
                                    let mut session = output.session(&cap);
                                    for d in batch {
                                        let until = seal(&d);
                                        if until <= t || gone.contains(&group(&d)) {
                                            continue;
                                        }
                                        session.give((d.clone(), t, 1));
                                        if until != u64::MAX {
                                            if held.as_ref().is_none_or(|h| *h.time() > until) {
                                                held = Some(cap.delayed(&until));
                                            }
                                            pending.entry(until).or_default().push(d);
                                        }
                                    }
                                }
                            }
                        }
                        match pending.keys().next() {
                            Some(&next) => {
                                if let Some(h) = held.as_mut() {
                                    h.downgrade(&next);
                                }
                            }
                            None => held = None,
                        }
                    }
                },
            )
            .as_collection()
    }
}
