//! What several benches share: a shop's event mix, reading the process's memory, and a sink
//! target that keeps only the size of the table it would write.

// Each bench includes this module and uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use clickflow_dataflows::event::{Client, Revenue};
use clickflow_dataflows::metric::Cell;
use clickflow_dataflows::pipeline::Rollup;
use clickflow_dataflows::MetricKey;
use clickflow_dataflows::{Event, Record};
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

/// A mix like a shop's: three pageviews to one custom event, some with props or revenue,
/// referrers and campaigns on some visits, visitors coming back within the day.
pub fn shop_event(i: usize, base: i64) -> Record {
    let site = i % 200;
    let referrers = [
        None,
        Some("https://www.google.com/"),
        Some("https://t.co/x"),
        Some("https://news.example/a"),
    ];
    Record::Event(Event {
        site: format!("site{site}"),
        event_id: format!("e{i}"),
        name: if i.is_multiple_of(4) {
            "signup".into()
        } else {
            "pageview".into()
        },
        ts: base + (i as i64 * 17) % 86_400_000,
        received: base + 86_400_000,
        visitor: (i as u64 * 2_654_435_761) % 50_000,
        url: if i.is_multiple_of(10) {
            format!(
                "https://site{site}.test/p{}?utm_source=mail&utm_medium=email",
                i % 50
            )
        } else {
            format!("https://site{site}.test/p{}", i % 50)
        },
        referrer: referrers[i % referrers.len()].map(str::to_owned),
        props: if i.is_multiple_of(4) {
            vec![("plan".into(), ["free", "pro"][i % 2].into())]
        } else {
            Vec::new()
        },
        revenue: i.is_multiple_of(20).then(|| Revenue {
            amount: format!("{}.50", i % 100),
            currency: "EUR".into(),
        }),
        refund_of: None,
        tz: if site.is_multiple_of(2) {
            "UTC".into()
        } else {
            "Europe/Paris".into()
        },
        client: Client {
            device: ["desktop", "mobile", "tablet"][i % 3].into(),
            browser: ["Chrome", "Safari", "Firefox"][i % 3].into(),
            browser_version: "120.0".into(),
            os: ["Windows 10", "iOS", "Linux"][i % 3].into(),
            os_version: "10".into(),
        },
        country: ["FR", "US", "DE", "unknown"][i % 4].into(),
    })
}
