//! The transactional sink: turns a collection of `(key, value)` aggregates into absolute-value
//! upserts and deletes, committed together with the log offsets they reflect.
//!
//! Writing absolute values makes a commit idempotent, so a restart that re-emits state is
//! harmless; storing offsets in the same transaction makes the committed state and the
//! committed progress agree. All updates are routed to worker 0, the single writer.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use differential_dataflow::VecCollection;
use hashbrown::HashTable;
use smallvec::SmallVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
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
    /// What a row is written as.
    type Written: Clone;
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

impl<K, V: Ord + Clone, B: Fn(&K) -> (Millis, u64)> RowModel<K, V> for OneValue<B> {
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
/// and what their values are written as.
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
    mut target: S,
    status: Arc<SinkStatus>,
) where
    K: timely::ExchangeData + Ord + Hash + Clone,
    V: timely::ExchangeData + Ord + Clone,
    M: RowModel<K, V> + 'static,
    S: Transaction<K, M::Written> + 'static,
{
    let scope = updates.scope();
    let mut builder = OperatorBuilder::new("TransactionalSink".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address);
    let mut data_in = builder.new_input(updates.inner, Exchange::new(|_: &((K, V), u64, isize)| 0));
    let mut progress_in = builder.new_input(progress, Exchange::new(|_: &PartitionProgress| 0));

    let mut pending: Vec<((K, V), u64, isize)> = Vec::new();
    let mut pending_progress: Vec<(u64, PartitionProgress)> = Vec::new();
    // Accumulated value multiplicities of every live key.
    let mut live: HashTable<(K, M::State)> = HashTable::new();
    let hasher = foldhash::fast::FixedState::default();
    // The hashes of live keys by seal time: once every change before its seal is applied, a
    // key's value is final (in `dirty` until committed) and its entry is dropped. Any entry
    // of a due hash whose seal has passed may go, so a collision of hashes costs nothing.
    let mut sealing: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    // Keys to write with the value they had at their last change before sealing.
    let mut dirty: BTreeMap<K, Option<M::Written>> = BTreeMap::new();
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
        data_in.for_each(|_cap, data| pending.append(data));
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

        // Apply completed updates in time order so an expiry is recognised by its time.
        let (mut ready, rest): (Vec<_>, Vec<_>) = pending.drain(..).partition(|u| complete(u.1));
        pending = rest;
        ready.sort_by_key(|u| u.1);
        let mut touched: Vec<K> = Vec::new();
        for ((key, value), time, diff) in ready {
            let (bucket_start, seal) = rows.bounds(&key);
            // At or after the seal time only expiry retractions arrive: the row as last
            // written (or about to be) is final.
            if bucket_start < config.write_from || time >= seal {
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
            // An emptied entry stays until its seal: a change of value (retraction, then
            // insertion) must not enter the key in `sealing` again.
            touched.push(key);
        }
        // Values are read once per round, after all of its changes, and before sealed keys
        // leave `live`.
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            let now = live
                .find(hasher.hash_one(&key), |(k, _)| *k == key)
                .and_then(|(_, state)| rows.written(&key, state));
            dirty.insert(key, now);
        }
        let sealed_before = frontier.unwrap_or(u64::MAX);
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
        // See `crate::tables`: the table churns all day and would otherwise keep its peak.
        if let Some(capacity) = shrunk_capacity(live.len(), live.capacity()) {
            live.shrink_to(capacity, |(k, _)| hasher.hash_one(k));
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
        for (key, value) in &dirty {
            match value {
                Some(v) => batch.upserts.push((key.clone(), v.clone())),
                None => batch.deletes.push(key.clone()),
            }
        }
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
