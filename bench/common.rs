//! What several benches share: reading the process's memory, and a sink target that keeps
//! only the size of the table it would write.

// Each bench includes this module and uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use clickflow_dataflows::metric::Cell;
use clickflow_dataflows::pipeline::Rollup;
use clickflow_dataflows::MetricKey;
use clickflow_operators::sink::{CommitBatch, SinkConfig, SinkStatus, Transaction};
use timely::dataflow::operators::probe::Handle;
use timely::dataflow::operators::ToStream;

/// A field of /proc/self/status in KiB (`VmRSS:`, `VmHWM:`), 0 where unreadable.
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the rollups table would hold: per row (hash of its primary key), the bytes of its
/// sketch (0 without). Keeps the bench's own memory to a few bytes per row.
#[derive(Clone, Default)]
pub struct TableSize(pub Arc<Mutex<HashMap<u64, usize>>>);

impl TableSize {
    /// Rows, and sketch bytes over all rows.
    pub fn size(&self) -> (usize, usize) {
        let table = self.0.lock().expect("table");
        (table.len(), table.values().sum())
    }

    /// What this stand-in for the table takes of the bench's own memory (a 16-byte slot and
    /// a control byte per row it has room for): it grows with every row ever stored, which
    /// the engine does not hold.
    pub fn own_bytes(&self) -> usize {
        self.0.lock().expect("table").capacity() * 17
    }
}

impl Transaction<MetricKey, Cell> for TableSize {
    fn commit(&mut self, batch: &CommitBatch<MetricKey, Cell>) -> Result<(), String> {
        let id = |k: &MetricKey| {
            let mut h = std::hash::DefaultHasher::new();
            (&k.site, k.granularity, k.bucket_start, &k.family).hash(&mut h);
            (&k.dimension, &k.dimension_value).hash(&mut h);
            h.finish()
        };
        let mut table = self.0.lock().map_err(|e| e.to_string())?;
        for k in &batch.deletes {
            table.remove(&id(k));
        }
        for (k, cell) in &batch.upserts {
            let bytes = cell.sketch.as_ref().map_or(0, |(_, b)| b.len());
            table.insert(id(k), bytes);
        }
        Ok(())
    }
}

/// Sinks `rollup` into `target` as the engine does (without log progress) and returns a probe
/// of the rows before the sink: past it, an epoch's rows are computed.
pub fn probe_and_sink<T: Transaction<MetricKey, Cell> + 'static>(
    mut rollup: Rollup<'_>,
    target: T,
) -> Handle<u64> {
    let probe;
    (probe, rollup.rows) = rollup.rows.probe();
    let progress = Vec::<(u32, u64)>::new()
        .to_stream(rollup.rows.scope())
        .container::<Vec<_>>();
    rollup.sink(
        progress,
        SinkConfig::default(),
        target,
        Arc::new(SinkStatus::default()),
    );
    probe
}
