//! End to end: HTTP → log → engine (several processes) → Postgres → query API, compared
//! with an oracle computed here from the same events.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const GRANULARITIES: [&str; 3] = ["minute", "hour", "day"];

struct Site {
    id: String,
    key: String,
    tz: Tz,
}

/// (site index, event JSON) in sending order, including client retries of earlier events.
fn generate(seed: u64, n: usize, now_ms: i64) -> Vec<(usize, Value)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out: Vec<(usize, Value)> = Vec::new();
    for i in 0..n {
        if i > 10 && rng.random_bool(0.1) {
            let again = out[rng.random_range(0..out.len())].clone();
            out.push(again);
            continue;
        }
        let site = rng.random_range(0..2);
        // Out of order and late: up to 50 minutes back.
        let ts = now_ms - rng.random_range(0..3_000_000);
        let pageview = rng.random_bool(0.7);
        out.push((
            site,
            json!({
                "name": if pageview { "pageview" } else { "signup" },
                "url": format!("https://shop{site}.test/p/{}", rng.random_range(0..6)),
                "event_id": format!("ev-{seed}-{i}"),
                "visitor_id": format!("visitor-{}", rng.random_range(0..40)),
                "ts": if rng.random_bool(0.5) { json!(ts) } else { json!(DateTime::<Utc>::from_timestamp_millis(ts).unwrap().to_rfc3339()) },
            }),
        ));
    }
    out
}

fn ts_of(v: &Value) -> i64 {
    match &v["ts"] {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::String(s) => DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis(),
        _ => unreachable!(),
    }
}

fn label(ts: i64, granularity: &str, tz: Tz) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ts).unwrap();
    match granularity {
        "minute" => t.format("%Y-%m-%dT%H:%M:00Z").to_string(),
        "hour" => t.format("%Y-%m-%dT%H:00:00Z").to_string(),
        _ => t.with_timezone(&tz).format("%Y-%m-%d").to_string(),
    }
}

type Table = BTreeMap<(usize, String, String), [i64; 3]>;
type Tally = (i64, i64, BTreeSet<String>);

/// The oracle: pageviews, events and distinct visitors per site, granularity and bucket,
/// counting each event id once.
fn oracle(events: &[(usize, Value)], sites: &[Site]) -> Table {
    let mut seen = BTreeSet::new();
    let mut counts: BTreeMap<(usize, String, String), Tally> = BTreeMap::new();
    for (site, e) in events {
        if !seen.insert((*site, e["event_id"].as_str().unwrap().to_string())) {
            continue;
        }
        for g in GRANULARITIES {
            let c = counts
                .entry((*site, g.to_string(), label(ts_of(e), g, sites[*site].tz)))
                .or_default();
            c.0 += (e["name"] == "pageview") as i64;
            c.1 += 1;
            c.2.insert(e["visitor_id"].as_str().unwrap().to_string());
        }
    }
    counts
        .into_iter()
        .map(|(k, (p, e, v))| (k, [p, e, v.len() as i64]))
        .collect()
}

fn send(setup: &Setup, sites: &[Site], events: &[(usize, Value)]) {
    for chunk in events.chunks(40) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|(s, e)| {
                let mut e = e.clone();
                e["site"] = json!(sites[*s].id);
                e
            })
            .collect();
        let (status, body) = post(&setup.url("/api/batch"), &json!({ "events": batch }), None);
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], json!(chunk.len()), "{body}");
    }
}

fn query_all(setup: &Setup, sites: &[Site], range: (&str, &str)) -> Option<Table> {
    let mut table = Table::new();
    for (i, site) in sites.iter().enumerate() {
        for g in GRANULARITIES {
            let (status, body) = post(
                &setup.url("/api/v1/query"),
                &json!({ "site_id": site.id, "metrics": ["pageviews", "events", "visitors"],
                         "date_range": [range.0, range.1], "dimensions": [format!("time:{g}")] }),
                Some(&site.key),
            );
            if status != 200 {
                eprintln!("query failed: {status} {body}");
                return None;
            }
            for row in body["results"].as_array()? {
                let m: Vec<i64> = row["metrics"]
                    .as_array()?
                    .iter()
                    .map(|v| v.as_i64().unwrap_or(0))
                    .collect();
                if m.iter().any(|v| *v != 0) {
                    table.insert(
                        (i, g.to_string(), row["dimensions"][0].as_str()?.to_string()),
                        [m[0], m[1], m[2]],
                    );
                }
            }
        }
    }
    Some(table)
}

fn wait_for(setup: &Setup, sites: &[Site], range: (&str, &str), want: &Table) -> Table {
    let mut last = Table::new();
    let ok = eventually(Duration::from_secs(90), || {
        last = query_all(setup, sites, range)?;
        (last == *want).then_some(())
    });
    if ok.is_none() {
        let diff: Vec<String> = want
            .iter()
            .filter(|(k, v)| last.get(*k) != Some(*v))
            .take(10)
            .map(|(k, v)| format!("{k:?}: want {v:?} got {:?}", last.get(k)))
            .chain(
                last.iter()
                    .filter(|(k, _)| !want.contains_key(*k))
                    .take(5)
                    .map(|(k, v)| format!("{k:?}: unexpected {v:?}")),
            )
            .collect();
        panic!(
            "results never matched the oracle ({} vs {} rows):\n{}",
            last.len(),
            want.len(),
            diff.join("\n")
        );
    }
    last
}

fn day_range() -> (String, String) {
    let now = Utc::now();
    (
        (now - chrono::Duration::days(1))
            .format("%Y-%m-%d")
            .to_string(),
        (now + chrono::Duration::days(1))
            .format("%Y-%m-%d")
            .to_string(),
    )
}

struct Deployment {
    setup: Setup,
    sites: Vec<Site>,
    _server: Proc,
    scratch: tempfile::TempDir,
}

/// Database, schema and two sites, without the collector yet.
fn prepare(log: LogChoice) -> (Setup, Vec<Site>) {
    let db = fresh_database();
    let setup = Setup::new(&db, &log);
    setup.run(&["migrate"]);
    let sites = [("shop0.test", "UTC"), ("shop1.test", "Europe/Paris")]
        .iter()
        .map(|(d, tz)| {
            let (id, key) = setup.add_site(d, tz);
            Site {
                id,
                key,
                tz: tz.parse().unwrap(),
            }
        })
        .collect();
    (setup, sites)
}

fn start(setup: Setup, sites: Vec<Site>) -> Deployment {
    let server = setup.spawn(&["serve"]);
    setup.wait_healthy();
    Deployment {
        setup,
        sites,
        _server: server,
        scratch: tempfile::tempdir().unwrap(),
    }
}

fn deploy(log: LogChoice) -> Deployment {
    let (setup, sites) = prepare(log);
    start(setup, sites)
}

fn kafka() -> LogChoice {
    let (brokers, topic) = fresh_topic(4);
    LogChoice::Kafka { brokers, topic }
}

#[test]
fn two_processes_and_one_worker_both_equal_the_oracle() {
    let now = Utc::now().timestamp_millis();
    let events = generate(1, 400, now);
    let (from, to) = day_range();
    let mut results = Vec::new();
    for (processes, workers) in [(2, 2), (1, 1)] {
        let d = deploy(kafka());
        let _engine = spawn_engine(&d.setup, processes, workers, d.scratch.path());
        // Half before the engine has caught up, half while it runs.
        let (a, b) = events.split_at(events.len() / 2);
        send(&d.setup, &d.sites, a);
        std::thread::sleep(Duration::from_millis(500));
        send(&d.setup, &d.sites, b);
        let want = oracle(&events, &d.sites);
        results.push(wait_for(&d.setup, &d.sites, (&from, &to), &want));
    }
    assert_eq!(results[0], results[1], "2×2 and 1×1 agree");
}

fn committed_progress(db_url: &str) -> i64 {
    let mut c = postgres::Client::connect(db_url, postgres::NoTls).unwrap();
    c.query_one("SELECT count(*) FROM progress", &[])
        .unwrap()
        .get(0)
}

#[test]
fn killing_the_engine_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let now = Utc::now().timestamp_millis();
    let events = generate(2, 400, now);
    let (from, to) = day_range();
    let d = deploy(kafka());
    let db = d
        .setup
        .vars
        .iter()
        .find(|(k, _)| k == "DATABASE_URL")
        .unwrap()
        .1
        .clone();
    let (a, b) = events.split_at(events.len() / 2);
    let mut engine = spawn_engine(&d.setup, 1, 2, d.scratch.path());
    send(&d.setup, &d.sites, a);
    eventually(Duration::from_secs(60), || {
        (committed_progress(&db) > 0).then_some(())
    })
    .expect("a first commit");
    std::thread::sleep(Duration::from_millis(300));
    for p in &mut engine {
        p.kill(); // SIGKILL: no chance to flush anything
    }
    send(&d.setup, &d.sites, &b[..b.len() / 2]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let _engine = d
        .setup
        .spawn(&["engine", "-w", "2", "--metrics-listen", &metrics]);
    send(&d.setup, &d.sites, &b[b.len() / 2..]);
    wait_for(&d.setup, &d.sites, (&from, &to), &oracle(&events, &d.sites));

    // The restarted engine reports its work on /metrics and /healthz.
    let text = reqwest::blocking::get(format!("http://{metrics}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    let rows: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("clickflow_sink_rows_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sink rows metric in:\n{text}"));
    assert!(rows > 0.0, "{text}");
    let health = reqwest::blocking::get(format!("http://{metrics}/healthz")).unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

/// Writes three days of history straight into the embedded log (before the collector takes
/// it: one writer at a time), events up to two hours late, and returns what was written.
fn write_history(
    log_dir: &std::path::Path,
    sites: &[Site],
    seed: u64,
    now: i64,
) -> Vec<(usize, Value)> {
    use clickflow::ingest::visitor::visitor_id_hash;
    use clickflow::log::embedded::EmbeddedLog;
    use clickflow::log::{Append, Log};
    use clickflow_dataflows::{Event, Record};

    let mut rng = StdRng::seed_from_u64(seed);
    let mut history: Vec<(usize, Value)> = Vec::new();
    let mut appends = Vec::new();
    let mut received = now - 3 * 86_400_000;
    let mut i = 0;
    while received < now - 3_600_000 {
        received += rng.random_range(10_000..400_000);
        let site = rng.random_range(0..2);
        let ts = received - rng.random_range(0..7_200_000);
        let pageview = rng.random_bool(0.7);
        let visitor_id = format!("v{}", rng.random_range(0..30));
        let json = json!({"name": if pageview {"pageview"} else {"signup"}, "event_id": format!("h{i}"),
                          "visitor_id": visitor_id, "ts": ts});
        let event = Event {
            site: sites[site].id.clone(),
            event_id: format!("h{i}"),
            name: json["name"].as_str().unwrap().into(),
            ts,
            received,
            visitor: visitor_id_hash(&sites[site].id, &visitor_id),
            url: "https://x.test/".into(),
            tz: sites[site].tz.name().into(),
            ..Event::default()
        };
        appends.push(Append {
            key: event.site.clone(),
            value: serde_json::to_vec(&Record::Event(event)).unwrap(),
            timestamp: received,
        });
        history.push((site, json));
        i += 1;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let log = EmbeddedLog::open(log_dir, 4, false).unwrap();
            for r in log.append(appends).await {
                r.unwrap();
            }
        });
    history
}

/// The query range of the history tests: every day of the history, in every zone.
fn history_range() -> (String, String) {
    let now = Utc::now();
    (
        (now - chrono::Duration::days(4))
            .format("%Y-%m-%d")
            .to_string(),
        (now + chrono::Duration::days(1))
            .format("%Y-%m-%d")
            .to_string(),
    )
}

#[test]
fn replay_from_mid_history_equals_a_full_run_and_the_live_job_follows_it() {
    let scratch = tempfile::tempdir().unwrap();
    let log_dir = scratch.path().join("log");
    // Three days of history with events up to two hours late; buckets seal (and their state
    // expires) six hours after they end, long before the run catches up with the present.
    let (setup, sites) = prepare(LogChoice::Embedded {
        dir: log_dir.clone(),
    });
    let setup = setup.with("CLICKFLOW__COLLECTOR__LATENESS_SECS", "21600");
    let now = Utc::now().timestamp_millis();
    let history = write_history(&log_dir, &sites, 4, now);
    let d = start(setup, sites);
    let setup = d.setup.clone();
    let (from, to) = history_range();

    let mut live = spawn_engine(&setup, 1, 2, scratch.path());
    let full = wait_for(&setup, &d.sites, (&from, &to), &oracle(&history, &d.sites));

    let replay_from = (now - 36 * 3_600_000).to_string();
    let out = setup.run(&["replay", "--from", &replay_from, "-w", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("switched from generation 1 to 2"), "{text}");
    let replayed = query_all(&setup, &d.sites, (&from, &to)).expect("query after replay");
    assert_eq!(
        replayed, full,
        "the replayed generation equals the full run"
    );

    // The old job notices the switch and stops with its documented exit code.
    let exit = eventually(Duration::from_secs(30), || {
        live[0].0.try_wait().ok().flatten()
    })
    .expect("live job stops");
    assert_eq!(exit.code(), Some(3), "retired engine exits with code 3");

    // Restarted, the job continues on the new generation from the replay's offsets.
    let _live = spawn_engine(&setup, 1, 2, scratch.path());
    let fresh: Vec<(usize, Value)> = (0..30)
        .map(|k| (k % 2, json!({"name": "pageview", "url": "https://x.test/new", "event_id": format!("n{k}"), "visitor_id": format!("new-{k}")})))
        .collect();
    let fresh: Vec<(usize, Value)> = fresh
        .into_iter()
        .map(|(s, mut e)| {
            e["ts"] = json!(Utc::now().timestamp_millis());
            (s, e)
        })
        .collect();
    send(&setup, &d.sites, &fresh);
    let everything: Vec<(usize, Value)> = history.into_iter().chain(fresh).collect();
    wait_for(
        &setup,
        &d.sites,
        (&from, &to),
        &oracle(&everything, &d.sites),
    );
}

#[test]
fn erasing_a_visitor_fixes_sealed_days_and_survives_a_replay() {
    let scratch = tempfile::tempdir().unwrap();
    let log_dir = scratch.path().join("log");
    // Six hours of lateness: most of the three days of history are sealed when the erasure
    // arrives, so the engine's retraction cannot reach them and a recompute must.
    let (setup, sites) = prepare(LogChoice::Embedded {
        dir: log_dir.clone(),
    });
    let setup = setup
        .with("CLICKFLOW__COLLECTOR__LATENESS_SECS", "21600")
        .with("CLICKFLOW__API__ADMIN_TOKEN", "\"erase-token\"");
    let now = Utc::now().timestamp_millis();
    let history = write_history(&log_dir, &sites, 9, now);
    let d = start(setup, sites);
    let setup = d.setup.clone();
    let (from, to) = history_range();
    let _live = spawn_engine(&setup, 1, 2, scratch.path());
    wait_for(&setup, &d.sites, (&from, &to), &oracle(&history, &d.sites));

    let (status, body) = post(
        &setup.url("/api/v1/admin/erase"),
        &json!({"site_id": d.sites[0].id, "visitor_id": "v7"}),
        Some("erase-token"),
    );
    assert_eq!(status, 202, "{body}");
    let kept: Vec<(usize, Value)> = history
        .iter()
        .filter(|(site, e)| !(*site == 0 && e["visitor_id"] == "v7"))
        .cloned()
        .collect();
    assert!(kept.len() < history.len(), "the visitor had events");
    let erased = wait_for(&setup, &d.sites, (&from, &to), &oracle(&kept, &d.sites));
    let resp = reqwest::blocking::Client::new()
        .get(setup.url(&format!("/api/v1/admin/erasures?site_id={}", d.sites[0].id)))
        .bearer_auth("erase-token")
        .send()
        .unwrap();
    let status: Value = resp.json().unwrap();
    assert_eq!(status["erasures"][0]["status"], json!("done"), "{status}");
    assert!(
        status["erasures"][0]["recomputed_days"]
            .as_i64()
            .unwrap_or(0)
            >= 2,
        "sealed days were rebuilt: {status}"
    );

    // A replay from mid-history re-reads the visitor's events and still leaves them out.
    let out = setup.run(&["replay", "--from", &(now - 36 * 3_600_000).to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("switched from generation 1 to 2"), "{text}");
    let replayed = query_all(&setup, &d.sites, (&from, &to)).expect("query after replay");
    assert_eq!(
        replayed, erased,
        "erased visitors stay erased after a replay"
    );
}

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
