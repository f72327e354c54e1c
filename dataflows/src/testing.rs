//! Helpers for oracle tests: random event streams and a runner that pushes them through the
//! real pipeline and the real transactional sink into an in-memory "table".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use clickflow_operators::sink::{
    transactional_sink, CommitBatch, SinkConfig, SinkStatus, Transaction,
};
use clickflow_operators::time::epoch_of;
use differential_dataflow::input::Input;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use timely::dataflow::operators::ToStream;

use crate::event::Event;
use crate::metric::MetricKey;
use crate::pipeline::metrics;
use crate::settings::Settings;

pub const TEST_LATENESS_MS: u64 = 2 * 3_600_000;
const EPOCH_MS: u64 = 1_000;

/// Events paired with the log timestamp at which they arrive, in arrival order. Event times
/// lag arrival by up to an hour (late and back-dated events); about one in ten events is a
/// client retry of an earlier one.
pub fn random_stream(seed: u64, n: usize) -> Vec<(Event, i64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let zones = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"];
    let start = 1_795_400_000_000i64 + rng.random_range(0..86_400_000);
    let mut out: Vec<(Event, i64)> = Vec::with_capacity(n);
    let mut arrival = start;
    for i in 0..n {
        arrival += rng.random_range(0..90_000);
        if i > 0 && rng.random_bool(0.1) {
            let (copy, _) = out[rng.random_range(0..out.len())].clone();
            if (arrival - copy.ts) < 3_600_000 {
                out.push((copy, arrival));
                continue;
            }
        }
        let site = rng.random_range(0..3usize);
        let ts = arrival - rng.random_range(0..3_600_000);
        let pageview = rng.random_bool(0.7);
        let event = Event {
            site: format!("site{site}"),
            event_id: format!("e{i}"),
            name: if pageview {
                "pageview".into()
            } else {
                "signup".into()
            },
            ts,
            received: arrival,
            visitor: rng.random_range(0..25),
            url: format!("https://s{site}.example/p{}", rng.random_range(0..5)),
            referrer: None,
            props: Vec::new(),
            revenue: None,
            tz: zones[site % zones.len()].to_string(),
        };
        out.push((event, arrival));
    }
    out
}

/// The events that count: one per `(site, event_id)`, the least, as the dataflow picks it.
pub fn surviving(events: &[Event]) -> Vec<Event> {
    let mut by_id: HashMap<(String, String), Event> = HashMap::new();
    for e in events {
        let k = (e.site.clone(), e.event_id.clone());
        match by_id.get(&k) {
            Some(old) if old <= e => {}
            _ => {
                by_id.insert(k, e.clone());
            }
        }
    }
    by_id.into_values().collect()
}

#[derive(Clone, Default)]
struct MemoryTable(Arc<Mutex<BTreeMap<MetricKey, i64>>>);

impl Transaction<MetricKey, i64> for MemoryTable {
    fn commit(&mut self, batch: &CommitBatch<MetricKey, i64>) -> Result<(), String> {
        let mut table = self.0.lock().map_err(|e| e.to_string())?;
        for k in &batch.deletes {
            table.remove(k);
        }
        for (k, v) in &batch.upserts {
            table.insert(k.clone(), *v);
        }
        Ok(())
    }
}

/// Runs the whole pipeline over `stream` (fed in arrival order, a random number of events per
/// epoch) and returns the rows of `family` left in the sink's table once every bucket sealed.
pub fn run_to_completion(stream: &[(Event, i64)], family: &str) -> BTreeMap<MetricKey, i64> {
    let table = MemoryTable::default();
    let rows = table.0.clone();
    let stream = stream.to_vec();
    timely::execute_directly(move |worker| {
        let settings = Settings {
            seal_lateness_ms: TEST_LATENESS_MS,
        };
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Event, isize>();
            let out = metrics(events, &settings);
            let progress = Vec::<(u32, u64)>::new()
                .to_stream(scope)
                .container::<Vec<_>>();
            let lateness = settings.seal_lateness_ms;
            let (probe, out) = out.probe();
            transactional_sink(
                out,
                progress,
                SinkConfig::default(),
                move |k: &MetricKey| (k.bucket_start, k.seal_time(lateness)),
                table,
                Arc::new(SinkStatus::default()),
            );
            (input, probe)
        });
        for (event, arrival) in stream {
            let t = epoch_of(arrival, EPOCH_MS);
            if t > *input.time() {
                input.advance_to(t);
                input.flush();
                while probe.less_than(input.time()) {
                    worker.step();
                }
            }
            input.insert(event);
        }
        input.close();
        while worker.step() {}
    });
    let table = rows.lock().expect("table lock").clone();
    table
        .into_iter()
        .filter(|(k, _)| k.family == family)
        .collect()
}

/// Compares two tables and reports the first few differing rows instead of both tables.
pub fn assert_same_rows(
    got: &BTreeMap<MetricKey, i64>,
    want: &BTreeMap<MetricKey, i64>,
    context: &str,
) {
    let mut diffs = Vec::new();
    for (k, v) in want {
        if got.get(k) != Some(v) {
            diffs.push(format!("{k:?}: got {:?}, want {v}", got.get(k)));
        }
    }
    for (k, v) in got {
        if !want.contains_key(k) {
            diffs.push(format!("{k:?}: got {v}, want nothing"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{context}: {} of {} rows differ; first:\n{}",
        diffs.len(),
        want.len(),
        diffs.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
    );
}
