//! The archive end to end: a replay from before the log's retention reads the archive (in a
//! directory or an S3-compatible bucket), then the log from where the archive ends, and
//! equals a full run; on Kafka the seam neither skips nor repeats an offset.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use common::pipeline_kit::*;
use common::*;
use serde_json::{json, Value};

/// Every record `log` holds from offset 0 to its end, read through the archive where it has
/// them: each offset exactly once, in order per partition.
fn read_through_archive(
    setup: &Setup,
    log: std::sync::Arc<dyn clickflow::log::Log>,
) -> Vec<clickflow::log::Record> {
    use clickflow::log::Log;
    use clickflow::store::archive::{ArchivedLog, Catalog};
    let config = setup.config();
    let database = setup.database_url();
    let mut client = postgres::Client::connect(database, postgres::NoTls).unwrap();
    let archive = clickflow::store::archive::Archive::open(&config.archive)
        .unwrap()
        .unwrap();
    let catalog = Catalog::load(&mut client).unwrap();
    let archived = ArchivedLog::new(log.clone(), archive, catalog);
    let partitions = log.partitions().unwrap();
    let start = (0..partitions).map(|p| (p, 0)).collect();
    let end = (0..partitions)
        .map(|p| (p, log.high_watermark(p).unwrap()))
        .collect::<BTreeMap<u32, u64>>();
    let mut reader = archived.reader(&start, Some(end.clone())).unwrap();
    let mut records = Vec::new();
    while !reader.finished() {
        records.extend(reader.poll(1000, Duration::from_millis(200)).unwrap());
    }
    for p in 0..partitions {
        let offsets: Vec<u64> = records
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        assert_eq!(
            offsets,
            (0..end[&p]).collect::<Vec<u64>>(),
            "partition {p}: every offset once, in order"
        );
    }
    records
}

fn archive_once(setup: &Setup) -> String {
    let out = setup.run(&["archive", "--once"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("archived "), "{text}");
    text
}

/// (first offset held, end) of each partition of the embedded log.
fn low_watermarks(log_dir: &std::path::Path) -> Vec<(u64, u64)> {
    use clickflow::log::Log;
    let log = clickflow::log::embedded::EmbeddedLog::open_read_only(log_dir).unwrap();
    (0..log.partitions().unwrap())
        .map(|p| {
            (
                log.low_watermark(p).unwrap(),
                log.high_watermark(p).unwrap(),
            )
        })
        .collect()
}

/// Issue 9's history test: three days in the embedded log, archived; retention then drops
/// every archived record older than a day (freeing its disk blocks), new events arrive that
/// only the log holds, and a replay from before the retention point reads the archive, then
/// the log from where the archive ends, and equals the full run.
#[test]
fn a_replay_from_before_the_log_retention_reads_the_archive_and_equals_a_full_run() {
    replay_beyond_retention(None);
}

/// The same with the archive in an S3-compatible bucket (moto's server, on loopback).
#[test]
fn an_archive_in_an_s3_bucket_serves_the_same_replay() {
    let port = free_port();
    let _moto = Proc(
        std::process::Command::new(env("CLICKFLOW_TEST_MOTO"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server"),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = reqwest::blocking::Client::new();
    let bucket = eventually(Duration::from_secs(30), || {
        let r = http.put(format!("{endpoint}/clickflow-test")).send().ok()?;
        r.status().is_success().then_some(())
    });
    assert!(bucket.is_some(), "a bucket on the S3 test server");
    replay_beyond_retention(Some(&endpoint));
}

/// With `s3`, the archive is `s3://clickflow-test/archive` at that endpoint.
fn replay_beyond_retention(s3: Option<&str>) {
    use std::os::unix::fs::MetadataExt;
    let scratch = tempfile::tempdir().unwrap();
    let log_dir = scratch.path().join("log");
    let (setup, sites) = prepare(LogChoice::Embedded {
        dir: log_dir.clone(),
    });
    let mut setup = setup.with("CLICKFLOW__COLLECTOR__LATENESS_SECS", "21600");
    if let Some(endpoint) = s3 {
        for (key, value) in [
            ("URL", "s3://clickflow-test/archive"),
            ("OPTIONS__ENDPOINT", endpoint),
            ("OPTIONS__ALLOW_HTTP", "true"),
            ("OPTIONS__ACCESS_KEY_ID", "test"),
            ("OPTIONS__SECRET_ACCESS_KEY", "test"),
            ("OPTIONS__REGION", "us-east-1"),
        ] {
            setup = setup.with(&format!("CLICKFLOW__ARCHIVE__{key}"), &format!("{value:?}"));
        }
    }
    let now = Utc::now().timestamp_millis();
    let history = write_history(&log_dir, &sites, 9, now);
    let d = start(setup, sites);
    let setup = d.setup.clone();
    let (from, to) = history_range();
    let mut live = spawn_engine(&setup, 1, 2, scratch.path());
    wait_for(&setup, &d.sites, (&from, &to), &oracle(&history, &d.sites));

    let text = archive_once(&setup);
    assert!(
        text.contains(&format!("archived {} records", history.len())),
        "{text}"
    );
    let blocks = |p: u32| {
        std::fs::metadata(log_dir.join(format!("{p:05}.log")))
            .unwrap()
            .blocks()
    };
    let blocks_before: u64 = (0..4).map(blocks).sum();

    // The collector restarts with a retention of one day: it drops what is archived and old.
    let Deployment { sites, _server, .. } = d;
    drop(_server);
    let retained = setup
        .clone()
        .with("CLICKFLOW__LOG__RETENTION_SECS", "86400");
    let _server = retained.spawn(&["serve"]);
    retained.wait_healthy();
    let lows = eventually(Duration::from_secs(30), || {
        let lows = low_watermarks(&log_dir);
        lows.iter()
            .all(|(low, high)| *low > 0 || *high == 0)
            .then_some(lows)
    })
    .unwrap_or_else(|| {
        let status = retained.run(&["archive", "--status"]);
        panic!(
            "retention never dropped the old records of every partition: starts {:?}\n{}",
            low_watermarks(&log_dir),
            String::from_utf8_lossy(&status.stdout)
        )
    });
    let blocks_after: u64 = (0..4).map(blocks).sum();
    assert!(
        blocks_after * 2 < blocks_before,
        "disk space comes back: {blocks_before} → {blocks_after} blocks (starts {lows:?})"
    );

    // Events only the log holds: the archive ends before them.
    let fresh: Vec<(usize, Value)> = (0..40)
        .map(|k| (k % 2, json!({"name": "pageview", "url": "https://x.test/fresh", "event_id": format!("f{k}"),
                                "visitor_id": format!("fresh-{k}"), "ts": Utc::now().timestamp_millis()})))
        .collect();
    send(&retained, &sites, &fresh);
    let everything: Vec<(usize, Value)> = history.iter().cloned().chain(fresh).collect();
    let full = wait_for(
        &retained,
        &sites,
        (&from, &to),
        &oracle(&everything, &sites),
    );

    // Through the archive, the log reads whole again, each offset once.
    let log: std::sync::Arc<dyn clickflow::log::Log> = std::sync::Arc::new(
        clickflow::log::embedded::EmbeddedLog::open_read_only(&log_dir).unwrap(),
    );
    let records = read_through_archive(&retained, log);
    let events: usize = records
        .iter()
        .map(|r| {
            clickflow_dataflows::Record::decode_all(&r.value)
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(events, everything.len());

    // Without the archive, a replay from before the retention point refuses to run.
    let replay_from = (now - 72 * 3_600_000).to_string();
    let refused = retained
        .clone()
        .with("CLICKFLOW__ARCHIVE__URL", "\"\"")
        .command(&["replay", "--from", &replay_from])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("no longer holds records"),
        "{stderr}"
    );

    let out = retained.run(&["replay", "--from", &replay_from, "-w", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("switched from generation 1 to 2"), "{text}");
    let replayed = query_all(&retained, &sites, (&from, &to)).expect("query after replay");
    assert_eq!(
        replayed, full,
        "the replay through the archive equals the full run"
    );

    // The live job restarts on the new generation; its rehydration reaches into the archive.
    let exit = eventually(Duration::from_secs(30), || {
        live[0].0.try_wait().ok().flatten()
    })
    .expect("live job stops");
    assert_eq!(exit.code(), Some(3));
    let _live = spawn_engine(&retained, 1, 2, scratch.path());
    let later: Vec<(usize, Value)> = (0..20)
        .map(|k| (k % 2, json!({"name": "signup", "url": "https://x.test/later", "event_id": format!("l{k}"),
                                "visitor_id": format!("later-{k}"), "ts": Utc::now().timestamp_millis()})))
        .collect();
    send(&retained, &sites, &later);
    let everything: Vec<(usize, Value)> = everything.into_iter().chain(later).collect();
    wait_for(
        &retained,
        &sites,
        (&from, &to),
        &oracle(&everything, &sites),
    );
}

/// On Kafka (whose retention the test broker cannot apply), the archive still takes over the
/// offsets it holds: a replay reads them from the archive and the rest from the topic, and
/// the seam neither skips nor repeats an offset.
#[test]
fn archive_and_kafka_meet_at_the_exact_offset_where_the_archive_ends() {
    let now = Utc::now().timestamp_millis();
    let events = generate(11, 300, now);
    let (from, to) = day_range();
    let log = kafka();
    let d = deploy(log.clone());
    let _engine = spawn_engine(&d.setup, 1, 2, d.scratch.path());
    let (a, b) = events.split_at(events.len() / 2);
    send(&d.setup, &d.sites, a);
    wait_for(&d.setup, &d.sites, (&from, &to), &oracle(a, &d.sites));
    archive_once(&d.setup);
    send(&d.setup, &d.sites, b);
    let full = wait_for(&d.setup, &d.sites, (&from, &to), &oracle(&events, &d.sites));

    let LogChoice::Kafka { brokers, topic } = log else {
        unreachable!()
    };
    let kafka: std::sync::Arc<dyn clickflow::log::Log> =
        std::sync::Arc::new(clickflow::log::kafka::KafkaLog::connect(&brokers, &topic).unwrap());
    let through_archive = read_through_archive(&d.setup, kafka.clone());
    let start = (0..4).map(|p| (p, 0)).collect();
    let end: BTreeMap<u32, u64> = (0..4)
        .map(|p| (p, kafka.high_watermark(p).unwrap()))
        .collect();
    let mut direct = kafka.reader(&start, Some(end)).unwrap();
    let mut from_kafka = Vec::new();
    while !direct.finished() {
        from_kafka.extend(direct.poll(1000, Duration::from_millis(200)).unwrap());
    }
    let key = |r: &clickflow::log::Record| (r.partition, r.offset);
    let mut through_archive = through_archive;
    through_archive.sort_by_key(key);
    from_kafka.sort_by_key(key);
    assert_eq!(
        through_archive, from_kafka,
        "the archive returns the topic's records byte for byte"
    );

    let replay_from = (now - 2 * 3_600_000).to_string();
    let out = d.setup.run(&["replay", "--from", &replay_from]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("switched from generation 1 to 2"));
    let replayed = query_all(&d.setup, &d.sites, (&from, &to)).expect("query after replay");
    assert_eq!(replayed, full);
}
