//! The archive's costs: bytes per event on disk (against the embedded log's), archiving
//! events/s, and replay read events/s from the archive (against reading the log).
//!
//!     source .testenv/env   # after `bash scripts/test-env.sh start`
//!     cargo bench --bench archive -- [events]
//!
//! The shop event mix of `bench/engine.rs` goes into a 4-partition embedded log twice: once a
//! record per message (the JS tracker's one event per request) and once 20 per message (a
//! server posting batches). Each log is archived by the real archiver (Parquet, zstd, the
//! catalog in a fresh database on `$CLICKFLOW_TEST_PG`), then read back through
//! `ArchivedLog` from offset 0 with every message decoded, as a replay reads it.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickflow::config::ArchiveConfig;
use clickflow::log::embedded::EmbeddedLog;
use clickflow::log::{Append, Log};
use clickflow::store::archive::archiver::Archiver;
use clickflow::store::archive::{Archive, ArchivedLog, Catalog};
use clickflow_dataflows::Record;

const PARTITIONS: u32 = 4;

fn fresh_database() -> String {
    let server = std::env::var("CLICKFLOW_TEST_PG")
        .expect("CLICKFLOW_TEST_PG: run `bash scripts/test-env.sh start; source .testenv/env`");
    let name = format!("cf_archive_bench_{}", std::process::id());
    let mut client = postgres::Client::connect(&server, postgres::NoTls).expect("connect");
    for statement in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        client.batch_execute(&statement).expect("create database");
    }
    let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(&server);
    format!("{base}/{name}")
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "log" || e == "parquet")
            {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

fn run(events: usize, per_message: usize) {
    let scratch = tempfile::tempdir().expect("scratch");
    let log_dir = scratch.path().join("log");
    let base = 1_795_400_000_000i64;
    {
        let log = EmbeddedLog::open(&log_dir, PARTITIONS, false).expect("log");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut appends = Vec::new();
        // Message m holds the next `per_message` events of site m % 200 (the collector writes
        // one message per site and request), so every event index is sent exactly once.
        let mut m = 0usize;
        while (m / 200) * per_message * 200 < events {
            let (site, round) = (m % 200, m / 200);
            let records: Vec<Record> = (0..per_message)
                .map(|j| site + 200 * (round * per_message + j))
                .filter(|k| *k < events)
                .map(|k| common::shop_event(k, base))
                .collect();
            m += 1;
            let Some(Record::Event(first)) = records.first() else {
                continue;
            };
            appends.push(Append {
                key: first.site.clone(),
                value: Record::encode_all(&records).expect("encode"),
                // Three days of append time, so the archive cuts files at day ends.
                timestamp: base + (m as i64 * 3 * 86_400_000 * per_message as i64) / events as i64,
            });
            if appends.len() == 10_000 {
                for ack in rt.block_on(log.append(std::mem::take(&mut appends))) {
                    ack.expect("append");
                }
            }
        }
        for ack in rt.block_on(log.append(appends)) {
            ack.expect("append");
        }
    }
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open_read_only(&log_dir).expect("log"));
    let messages: u64 = (0..PARTITIONS)
        .map(|p| log.high_watermark(p).expect("hw"))
        .sum();
    let log_bytes = dir_bytes(&log_dir);

    let database = fresh_database();
    let mut client = postgres::Client::connect(&database, postgres::NoTls).expect("db");
    clickflow::store::migrate(&mut client, &Default::default()).expect("migrate");
    let config = ArchiveConfig {
        url: scratch.path().join("archive").display().to_string(),
        staging_dir: scratch.path().join("staging"),
        ..ArchiveConfig::default()
    };
    let archive = Archive::open(&config)
        .expect("archive")
        .expect("configured");
    let started = Instant::now();
    let mut archiver =
        Archiver::start(log.clone(), archive.clone(), client, &config).expect("archiver");
    archiver
        .run(true, &AtomicBool::new(false), |_| {})
        .expect("archive");
    let archive_secs = started.elapsed().as_secs_f64();
    let archived = archiver.archived.clone();
    drop(archiver);
    let archive_bytes = dir_bytes(&scratch.path().join("archive"));

    // Read back as a replay does: the whole log through the archive, every message decoded.
    let mut client = postgres::Client::connect(&database, postgres::NoTls).expect("db");
    let catalog = Catalog::load(&mut client).expect("catalog");
    let read = |source: &dyn Log| -> (usize, Duration) {
        let start: BTreeMap<u32, u64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
        let end: BTreeMap<u32, u64> = (0..PARTITIONS)
            .map(|p| (p, log.high_watermark(p).expect("hw")))
            .collect();
        let began = Instant::now();
        let mut reader = source.reader(&start, Some(end)).expect("reader");
        let mut decoded = 0;
        while !reader.finished() {
            for m in reader.poll(20_000, Duration::ZERO).expect("poll") {
                decoded += Record::decode_all(&m.value).expect("decode").len();
            }
        }
        (decoded, began.elapsed())
    };
    let through_archive = ArchivedLog::new(log.clone(), archive, catalog);
    let (from_archive, archive_time) = read(&through_archive);
    let (from_log, log_time) = read(log.as_ref());
    assert_eq!(from_archive, from_log, "the archive holds every event");

    let per_event = |bytes: u64| bytes as f64 / from_log as f64;
    println!(
        "{per_message:>3} events/message: {from_log} events in {messages} messages, {} files",
        archived.files
    );
    println!(
        "    bytes per event: log {:.1}, archive {:.1} ({:.1}× smaller)",
        per_event(log_bytes),
        per_event(archive_bytes),
        log_bytes as f64 / archive_bytes.max(1) as f64
    );
    println!(
        "    archiving: {:.0} events/s ({archive_secs:.2} s, catalog commits included)",
        from_log as f64 / archive_secs
    );
    println!(
        "    replay read + decode: archive {:.0} events/s, log {:.0} events/s",
        from_archive as f64 / archive_time.as_secs_f64(),
        from_log as f64 / log_time.as_secs_f64()
    );
}

fn main() {
    let events = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000usize);
    println!("archive bench: {events} shop events, {PARTITIONS} partitions");
    for per_message in [1, 20] {
        run(events, per_message);
    }
}
