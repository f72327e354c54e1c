//! Engine throughput from an in-memory source: events per second through the whole pipeline
//! (expiry, dedupe, every registered family), with 1 and 2 worker threads.
//!
//!     cargo bench --bench engine -- [events] [events per epoch]
//!
//! Events are fed in epochs of 10 000 and then 1 000 (or the given size, across all workers;
//! time advances per batch, never per event), spread over 200 sites and 50 000 visitors, with
//! event times over one day. Rows go through the transactional sink (into a table that keeps
//! only sizes). Each run prints events/s and the latency from closing an epoch to its rows
//! having reached the sink (p50, p99).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use std::time::{Duration, Instant};

use clickflow_dataflows::{registry, Record, Settings};
use differential_dataflow::input::Input;

/// Runs `total` events through the pipeline in epochs of `epoch_events` (across all workers);
/// returns the wall time and, per epoch, the time from closing it to its rows being ready
/// for the sink (the probe after the rendering stage).
fn run(workers: usize, total: usize, epoch_events: usize) -> (Duration, Vec<Duration>) {
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) = scope.new_collection::<Record, isize>();
            // Rows go through the sink as in the engine (into a table that keeps only sizes).
            let rollup = registry::metrics(events, &Settings::default());
            let probe = common::probe_and_sink(rollup, common::TableSize::default());
            (input, probe)
        });
        let base = 1_795_400_000_000i64;
        let start = Instant::now();
        let mut epoch = (base + 86_400_000) as u64;
        let mut sent = 0usize;
        let per_worker = (epoch_events / peers).max(1);
        let mut latencies = Vec::with_capacity(total / epoch_events + 1);
        for i in (index..total).step_by(peers) {
            input.insert(common::shop_event(i, base));
            sent += 1;
            if sent.is_multiple_of(per_worker) {
                epoch += 1_000;
                input.advance_to(epoch);
                input.flush();
                let closed = Instant::now();
                while probe.less_than(input.time()) {
                    worker.step();
                }
                latencies.push(closed.elapsed());
            }
        }
        input.advance_to(epoch + 1_000);
        input.flush();
        while probe.less_than(input.time()) {
            worker.step();
        }
        (start.elapsed(), latencies)
    })
    .expect("timely");
    let mut results: Vec<(Duration, Vec<Duration>)> = guards
        .join()
        .into_iter()
        .map(|r| r.expect("worker"))
        .collect();
    let elapsed = results.iter().map(|r| r.0).max().unwrap_or_default();
    (elapsed, std::mem::take(&mut results[0].1))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let total = args.first().copied().unwrap_or(1_000_000);
    let epochs: Vec<usize> = match args.get(1) {
        Some(e) => vec![*e],
        None => vec![10_000, 1_000],
    };
    println!(
        "engine throughput, {total} events, all families ({} registered)",
        clickflow_dataflows::registry::FAMILIES.len()
    );
    for epoch_events in epochs {
        for workers in [1, 2] {
            let (elapsed, mut latencies) = run(workers, total, epoch_events);
            latencies.sort();
            println!(
                "  {epoch_events:>6}-event epochs, {workers} worker(s): {:>8.0} events/s  ({:.2} s)  epoch closed -> rows ready p50 {:.1} ms, p99 {:.1} ms",
                total as f64 / elapsed.as_secs_f64(),
                elapsed.as_secs_f64(),
                percentile(&latencies, 0.5).as_secs_f64() * 1e3,
                percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            );
        }
    }
}
