//! The transactional sink: turns a collection of `(key, value)` aggregates into absolute-value
//! upserts and deletes, committed together with the log offsets they reflect.
//!
//! Writing absolute values makes a commit idempotent, so a restart that re-emits state is
//! harmless; storing offsets in the same transaction makes the committed state and the
//! committed progress agree.
//!
//! Two stages: every worker settles the keys that hash to it (accumulates their changes and
//! reads each touched key's value once its round is complete), and worker 0, the single
//! writer, gathers only those settled values. The per-update work is spread over all workers;
//! the writer sees one value per changed key and round.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use differential_dataflow::VecCollection;
use hashbrown::HashTable;
use smallvec::SmallVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::source::PartitionProgress;
use crate::tables::shrunk_capacity;
use crate::time::Millis;

/// One atomic write: everything that changed among unsealed keys since the last commit, and
/// the offsets of every partition those changes reflect.
#[derive(Clone, Debug, PartialEq)]
pub struct CommitBatch<K, V> {
    pub upserts: Vec<(K, V)>,
    pub deletes: Vec<K>,
    /// The next offset per partition, as of `frontier`.
    pub progress: Vec<PartitionProgress>,
    /// Every ingest time before this one is reflected in the batch. A finished bounded run
    /// reports the time just past the latest record it read.
    pub frontier: u64,
    /// Set on the first commit after a restart: rows of buckets starting at or after this
    /// instant that are still open at `frontier` are replaced by `upserts` wholesale, which
    /// removes rows whose value vanished while the engine was down.
    pub replace_from: Option<Millis>,
}

/// Where committed batches go (Postgres in production, a vector in tests).
pub trait Transaction<K, V> {
    /// Writes the batch atomically; on error nothing may have been written.
    fn commit(&mut self, batch: &CommitBatch<K, V>) -> Result<(), String>;
}

/// A table in memory: what tests, and in-process recomputes, commit into.
#[derive(Clone, Debug)]
pub struct MemoryTable<K, V>(pub Arc<std::sync::Mutex<BTreeMap<K, V>>>);

impl<K, V> Default for MemoryTable<K, V> {
    fn default() -> Self {
        MemoryTable(Arc::default())
    }
}

impl<K: Ord + Clone, V: Clone> Transaction<K, V> for MemoryTable<K, V> {
    fn commit(&mut self, batch: &CommitBatch<K, V>) -> Result<(), String> {
        let mut table = self.0.lock().map_err(|e| e.to_string())?;
        for k in &batch.deletes {
            table.remove(k);
        }
        for (k, v) in &batch.upserts {
            table.insert(k.clone(), v.clone());
        }
        Ok(())
    }
}

/// Settings of [`transactional_sink`].
#[derive(Clone, Debug, Default)]
pub struct SinkConfig {
    /// Offsets committed before a restart: output is held until the input has passed them,
    /// so the first write after a restart is the complete, rebuilt state.
    pub hold_until: BTreeMap<u32, u64>,
    /// Keys of buckets starting before this are never written: their data was not fully
    /// re-read (restart or replay) and the stored rows are final.
    pub write_from: Millis,
    /// Lower bound between two commits, so a burst of small epochs shares one transaction.
    pub min_commit_interval: Duration,
}

/// Counters a supervisor can read while the sink runs (progress bars, `/metrics`).
#[derive(Debug, Default)]
pub struct SinkStatus {
    /// The frontier of the last commit (0 before the first).
    pub committed_frontier: AtomicU64,
    pub commits: AtomicU64,
    pub rows_written: AtomicU64,
    pub holding: AtomicU64,
}

/// How the sink reads the rows it is given, and what it holds of each live key.
pub trait RowModel<K, V> {
    /// What a row is written as (settled on any worker, written by worker 0).
    type Written: timely::ExchangeData + Clone;
    /// What the sink holds of a live key: the multiplicities of its values, in a form of the
    /// model's choosing.
    type State: Default;
    /// The key's bucket start and its seal time: changes at or after the seal time are expiry
    /// retractions and are not written, so sealed rows stay as they are.
    fn bounds(&self, key: &K) -> (Millis, u64);
    /// Adds `diff` to the multiplicity of `value`.
    fn apply(&self, state: &mut Self::State, value: V, diff: isize);
    /// What to write for a key in `state` once a round's changes are applied: most rows have
    /// one value of multiplicity 1 when consistent, a row may have several (a sketch's
    /// registers). `None` deletes the row.
    fn written(&self, key: &K, state: &Self::State) -> Option<Self::Written>;
}

/// Values with their multiplicities, sorted by value, none zero; inline for the common
/// one-value key (two while its value changes).
pub type Multiset<V> = SmallVec<[(V, isize); 2]>;

/// Adds `diff` to the multiplicity of `value` in `values` (sorted by value, none zero), whatever
/// the inline capacity and the integer that counts.
pub fn add_to<A, V, D>(values: &mut SmallVec<A>, value: V, diff: D)
where
    A: smallvec::Array<Item = (V, D)>,
    V: Ord,
    D: Copy + Default + PartialEq + std::ops::AddAssign,
{
    match values.binary_search_by(|(v, _)| v.cmp(&value)) {
        Ok(at) => {
            values[at].1 += diff;
            if values[at].1 == D::default() {
                values.remove(at);
            }
        }
        Err(at) => {
            // An eighth more, not double: the sink holds every live row's registers.
            if values.len() == values.capacity() {
                values.reserve_exact(values.len() / 8 + 2);
            }
            values.insert(at, (value, diff))
        }
    }
}

/// Rows of one value each, bounded by a function of the key.
pub struct OneValue<B>(pub B);

impl<K, V: Ord + Clone + timely::ExchangeData, B: Fn(&K) -> (Millis, u64)> RowModel<K, V>
    for OneValue<B>
{
    type Written = V;
    type State = Multiset<V>;
    fn bounds(&self, key: &K) -> (Millis, u64) {
        (self.0)(key)
    }
    fn apply(&self, state: &mut Multiset<V>, value: V, diff: isize) {
        add_to(state, value, diff);
    }
    fn written(&self, _key: &K, values: &Multiset<V>) -> Option<V> {
        values.iter().find(|(_, d)| *d > 0).map(|(v, _)| v.clone())
    }
}

/// Sinks `updates` through `target` on worker 0; `rows` says how keys are bounded in time
/// and what their values are written as. Commits wait for `progress` too: its frontier, not
/// only its offsets, bounds what a commit may claim.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use clickflow_operators::sink::{transactional_sink, CommitBatch, OneValue, SinkConfig, SinkStatus, Transaction};
/// use differential_dataflow::input::Input;
/// use timely::dataflow::operators::ToStream;
///
/// struct Memory(Arc<Mutex<Vec<CommitBatch<String, i64>>>>);
/// impl Transaction<String, i64> for Memory {
///     fn commit(&mut self, b: &CommitBatch<String, i64>) -> Result<(), String> {
///         self.0.lock().unwrap().push(b.clone());
///         Ok(())
///     }
/// }
/// let written = Arc::new(Mutex::new(Vec::new()));
/// let target = Memory(written.clone());
/// timely::example(move |scope| {
///     let counts = scope.new_collection_from(vec![("a".to_string(), 3i64)]).1;
///     let progress = vec![(0u32, 1u64)].to_stream(scope).container::<Vec<_>>();
///     transactional_sink(counts, progress, SinkConfig::default(), OneValue(|_k: &String| (0, u64::MAX)),
///         target, Arc::new(SinkStatus::default()));
/// });
/// let batches = written.lock().unwrap();
/// assert_eq!(batches.last().unwrap().upserts, vec![("a".to_string(), 3)]);
/// assert_eq!(batches.last().unwrap().progress, vec![(0, 1)]);
/// ```
pub fn transactional_sink<'scope, K, V, M, S>(
    updates: VecCollection<'scope, u64, (K, V), isize>,
    progress: Stream<'scope, u64, Vec<PartitionProgress>>,
    config: SinkConfig,
    rows: M,
    target: S,
    status: Arc<SinkStatus>,
) where
    K: timely::ExchangeData + Ord + Hash + Clone,
    V: timely::ExchangeData + Ord + Clone,
    M: RowModel<K, V> + 'static,
    S: Transaction<K, M::Written> + 'static,
{
    let settled = settle(updates, rows, config.write_from);
    write(settled, progress, config, target, status);
}

/// Seeds the hash that picks a key's settling worker (any constant; the same everywhere).
const ROUTING_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// A key's value as of the end of a round (`None`: the key has no row).
type Settled<K, W> = (K, Option<W>);
/// Settled values on their way from every worker to the writer.
type SettledStream<'scope, K, W> = Stream<'scope, u64, Vec<(Settled<K, W>, u64, isize)>>;

/// Every worker, for the keys that hash to it: applies complete changes in time order and
/// emits each touched key's value once per round, at the round's last time. Changes at or
/// after a key's seal are expiry retractions and are dropped, so sealed rows stay as written.
fn settle<'scope, K, V, M>(
    updates: VecCollection<'scope, u64, (K, V), isize>,
    rows: M,
    write_from: Millis,
) -> SettledStream<'scope, K, M::Written>
where
    K: timely::ExchangeData + Eq + Hash + Clone,
    V: timely::ExchangeData,
    M: RowModel<K, V> + 'static,
{
    let hasher = foldhash::fast::FixedState::default();
    // Routing by another hash than the table's: with the same one, every key on a worker
    // would share the hash's low bits modulo the workers, and leave table slots unused.
    let route = move |((k, _), _, _): &((K, V), u64, isize)| {
        foldhash::fast::FixedState::with_seed(ROUTING_SEED).hash_one(k)
    };
    updates
        .inner
        .unary_frontier(Exchange::new(route), "SinkSettle", move |_cap, _info| {
            let mut pending: Vec<((K, V), u64, isize)> = Vec::new();
            // The least capability of the updates in `pending`.
            let mut held: Option<Capability<u64>> = None;
            // Accumulated value multiplicities of every live key.
            let mut live: HashTable<(K, M::State)> = HashTable::new();
            // The hashes of live keys by seal time: once every change before its seal is
            // applied, a key's value is final (already emitted) and its entry is dropped. Any
            // entry of a due hash whose seal has passed may go, so a collision costs nothing.
            let mut sealing: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            let mut touched: Vec<(u64, K)> = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    pending.append(data);
                    if let Some(cap) = cap.retain_least(0) {
                        if held.as_ref().is_none_or(|h| cap.time() < h.time()) {
                            held = Some(cap);
                        }
                    }
                });
                let complete = |t: u64| !frontier.less_equal(&t);
                // Complete updates in time order, so an expiry is recognised by its time. No
                // update is earlier than the capability held: while that is incomplete, so
                // are they all, and an activation costs nothing per update held.
                let mut ready = Vec::new();
                if held.as_ref().is_some_and(|h| complete(*h.time())) {
                    if pending.iter().all(|u| complete(u.1)) {
                        ready = std::mem::take(&mut pending);
                    } else {
                        let rest;
                        (ready, rest) = pending.drain(..).partition(|u| complete(u.1));
                        pending = rest;
                    }
                }
                ready.sort_by_key(|u| u.1);
                let last = ready.last().map(|u| u.1);
                for ((key, value), time, diff) in ready {
                    let (bucket_start, seal) = rows.bounds(&key);
                    if bucket_start < write_from || time >= seal {
                        continue;
                    }
                    let hash = hasher.hash_one(&key);
                    let (_, state) = live
                        .entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k))
                        .or_insert_with(|| {
                            sealing.entry(seal).or_default().push(hash);
                            (key.clone(), M::State::default())
                        })
                        .into_mut();
                    rows.apply(state, value, diff);
                    // An emptied entry stays until its seal: a change of value (retraction,
                    // then insertion) must not enter `sealing` twice.
                    touched.push((hash, key));
                }
                // Values are read once per round, after all of its changes, and before sealed
                // keys leave `live`. Sorting by hash brings equal keys together; keys of equal
                // hashes that interleave are merely read twice.
                if let (Some(time), Some(cap)) = (last, &held) {
                    touched.sort_unstable_by_key(|(hash, _)| *hash);
                    touched.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
                    let cap = cap.delayed(&time);
                    let mut session = output.session(&cap);
                    for (hash, key) in touched.drain(..) {
                        let now = live
                            .find(hash, |(k, _)| *k == key)
                            .and_then(|(_, state)| rows.written(&key, state));
                        session.give(((key, now), time, 1));
                    }
                }
                if last.is_some() {
                    match pending.iter().map(|u| u.1).min() {
                        Some(earliest) => {
                            if let Some(cap) = held.as_mut() {
                                cap.downgrade(&earliest);
                            }
                        }
                        None => held = None,
                    }
                }
                let sealed_before = frontier
                    .frontier()
                    .iter()
                    .min()
                    .copied()
                    .unwrap_or(u64::MAX);
                while let Some(entry) = sealing.first_entry() {
                    if *entry.key() > sealed_before {
                        break;
                    }
                    for hash in entry.remove() {
                        while let Ok(sealed) =
                            live.find_entry(hash, |(k, _)| rows.bounds(k).1 <= sealed_before)
                        {
                            sealed.remove();
                        }
                    }
                }
                // See `crate::tables`: the table churns all day and would otherwise keep its
                // peak.
                if let Some(capacity) = shrunk_capacity(live.len(), live.capacity()) {
                    live.shrink_to(capacity, |(k, _)| hasher.hash_one(k));
                }
            }
        })
}

/// Worker 0: gathers settled values and commits them with the offsets they reflect.
fn write<'scope, K, W, S>(
    settled: SettledStream<'scope, K, W>,
    progress: Stream<'scope, u64, Vec<PartitionProgress>>,
    config: SinkConfig,
    mut target: S,
    status: Arc<SinkStatus>,
) where
    K: timely::ExchangeData + Ord + Hash + Clone,
    W: timely::ExchangeData + Clone,
    S: Transaction<K, W> + 'static,
{
    let scope = settled.scope();
    let mut builder = OperatorBuilder::new("TransactionalSink".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address);
    let to_writer = |_: &(Settled<K, W>, u64, isize)| 0;
    let mut data_in = builder.new_input(settled, Exchange::new(to_writer));
    let mut progress_in = builder.new_input(progress, Exchange::new(|_: &PartitionProgress| 0));

    let mut pending: Vec<(Settled<K, W>, u64)> = Vec::new();
    let mut pending_progress: Vec<(u64, PartitionProgress)> = Vec::new();
    // Keys to write, with the time of the value and the value. A key is settled on one
    // worker, in time order, but two rounds' values may arrive in either order.
    let mut dirty: HashMap<K, (u64, Option<W>), foldhash::fast::RandomState> = HashMap::default();
    let mut offsets: BTreeMap<u32, u64> = BTreeMap::new();
    let mut offsets_dirty = false;
    // The ingest time just past the latest record read: what a finished (bounded) run
    // commits as its frontier, since its input frontier is empty.
    let mut read_until: u64 = 0;
    // Only worker 0 receives updates; the others have nothing to hold or replace.
    let mut holding = scope.index() == 0 && !config.hold_until.is_empty();
    let mut replace_next = holding;
    let mut last_commit: Option<Instant> = None;
    // After a failed commit, no new attempt before this instant, however often we run.
    let mut retry_at: Option<Instant> = None;
    // Set once the input is exhausted and the last batch is committed; until then the operator
    // reports itself incomplete so timely keeps it (and a retrying final commit) alive.
    let done = std::rc::Rc::new(std::cell::Cell::new(false));
    let done_outer = done.clone();
    status.holding.store(holding as u64, Ordering::Relaxed);

    let mut logic = move |frontiers: &[timely::progress::frontier::MutableAntichain<u64>]| {
        data_in.for_each(|_cap, data| {
            pending.extend(data.drain(..).map(|(settled, time, _)| (settled, time)))
        });
        progress_in.for_each(|cap, data| {
            if let Some(time) = cap.least().copied() {
                pending_progress.extend(data.drain(..).map(|p| (time, p)));
            }
        });
        if done.get() {
            return;
        }
        let frontier_of = |i: usize| frontiers[i].frontier().iter().min().copied();
        let frontier = match (frontier_of(0), frontier_of(1)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let complete = |t: u64| frontier.is_none_or(|f| t < f);

        // Settled values of times the progress has not passed wait, so a commit never holds
        // a value its offsets do not reflect.
        let mut i = 0;
        while i < pending.len() {
            if !complete(pending[i].1) {
                i += 1;
                continue;
            }
            let ((key, value), time) = pending.swap_remove(i);
            match dirty.entry(key) {
                Entry::Occupied(mut held) => {
                    if held.get().0 <= time {
                        held.insert((time, value));
                    }
                }
                Entry::Vacant(slot) => {
                    slot.insert((time, value));
                }
            }
        }
        let (ready, rest): (Vec<_>, Vec<_>) =
            pending_progress.drain(..).partition(|(t, _)| complete(*t));
        pending_progress = rest;
        for (time, (partition, next)) in ready {
            read_until = read_until.max(time + 1);
            if offsets.get(&partition).is_none_or(|o| next > *o) {
                offsets.insert(partition, next);
                offsets_dirty = true;
            }
        }

        if holding {
            let passed = config
                .hold_until
                .iter()
                .all(|(p, committed)| offsets.get(p).is_some_and(|o| o >= committed));
            if !passed {
                return;
            }
            holding = false;
            status.holding.store(0, Ordering::Relaxed);
        }

        let finished = frontier.is_none();
        if dirty.is_empty() && !offsets_dirty && !replace_next {
            done.set(finished);
            return;
        }
        if let Some(at) = retry_at {
            let now = Instant::now();
            if now < at {
                activator.activate_after(at - now);
                return;
            }
        }
        if let (Some(last), false) = (last_commit, finished) {
            let elapsed = last.elapsed();
            if elapsed < config.min_commit_interval {
                activator.activate_after(config.min_commit_interval - elapsed);
                return;
            }
        }
        let mut batch = CommitBatch {
            upserts: Vec::new(),
            deletes: Vec::new(),
            progress: offsets.iter().map(|(p, o)| (*p, *o)).collect(),
            frontier: frontier.unwrap_or(read_until),
            replace_from: replace_next.then_some(config.write_from),
        };
        for (key, (_, value)) in &dirty {
            match value {
                Some(v) => batch.upserts.push((key.clone(), v.clone())),
                None => batch.deletes.push(key.clone()),
            }
        }
        // In key order, as a reader of the batch (and a test) expects whatever the hashing.
        batch.upserts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        batch.deletes.sort_unstable();
        match target.commit(&batch) {
            Ok(()) => {
                retry_at = None;
                dirty.clear();
                offsets_dirty = false;
                replace_next = false;
                last_commit = Some(Instant::now());
                status.commits.fetch_add(1, Ordering::Relaxed);
                status.rows_written.fetch_add(
                    (batch.upserts.len() + batch.deletes.len()) as u64,
                    Ordering::Relaxed,
                );
                status
                    .committed_frontier
                    .store(batch.frontier, Ordering::Relaxed);
                done.set(finished);
            }
            Err(e) => {
                // Nothing was written; everything stays dirty and is retried after a pause.
                tracing::warn!(error = %e, "sink commit failed; retrying in 500 ms");
                retry_at = Some(Instant::now() + Duration::from_millis(500));
                activator.activate_after(Duration::from_millis(500));
            }
        }
    };
    builder.build_reschedule(move |_caps| {
        move |frontiers| {
            logic(frontiers);
            !done_outer.get()
        }
    });
}
