//! `clickflow replay`: reprocess history from a timestamp into a new generation of the
//! rollups, and switch readers to it once it has caught up.

use std::sync::Arc;
use std::time::Duration;

use clickflow_operators::sink::SinkStatus;

use crate::config::Config;
use crate::log;
use crate::store;
use crate::store::archive::ArchivedLog;

/// `--from` as RFC 3339 or Unix milliseconds.
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .map_err(|_| anyhow::anyhow!("--from {s:?} is neither RFC 3339 nor Unix milliseconds"))
}

/// `clickflow replay`: recomputes every bucket from `from` into a new generation with a
/// progress bar, then switches readers to it.
pub fn replay(config: &Config, from: &str, workers: usize) -> anyhow::Result<()> {
    let from_ms = parse_time(from)?;
    let url = config.database_url()?;
    let mut client = store::connect(&url)?;
    let log = ArchivedLog::wrap(
        log::open(&config.log, log::Access::Read)?,
        &config.archive,
        &mut client,
    )?;
    let plan = super::plan_replay(&mut client, log.as_ref(), from_ms)?;
    let total: u64 = plan
        .end
        .iter()
        .flatten()
        .map(|(p, e)| e.saturating_sub(plan.start[p]))
        .sum();
    eprintln!(
        "replay: generation {} from {} ({} records to read)",
        plan.generation,
        chrono::DateTime::from_timestamp_millis(plan.write_from)
            .map(|d| d.to_rfc3339())
            .unwrap_or_default(),
        total
    );
    let status = Arc::new(SinkStatus::default());
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replay [{elapsed_precise}] {wide_bar} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (bar2, status2) = (bar.clone(), status.clone());
    let replay_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker_done = replay_done.clone();
    let end_ms = clickflow_operators::source::wall_clock_ms();
    let start_ms = plan.write_from;
    let ticker = std::thread::spawn(move || loop {
        if ticker_done.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let f = status2
            .committed_frontier
            .load(std::sync::atomic::Ordering::Relaxed) as i64;
        let pct = if f > start_ms {
            ((f - start_ms) * 100 / (end_ms - start_ms).max(1)).clamp(0, 100)
        } else {
            0
        };
        bar2.set_position(pct as u64);
        bar2.set_message(format!(
            "{} rows written",
            status2
                .rows_written
                .load(std::sync::atomic::Ordering::Relaxed)
        ));
        std::thread::sleep(Duration::from_millis(200));
    });
    let generation = plan.generation;
    let outcome = super::run(
        config,
        timely::Config::process(workers.max(1)),
        plan,
        log,
        status.clone(),
    );
    replay_done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ticker.join();
    bar.finish_and_clear();
    outcome?;
    let old = super::switch_to(&mut client, generation)?;
    println!(
        "replay done: readers switched from generation {old} to {generation} ({} rows written); restart the live engine to follow it",
        status.rows_written.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
