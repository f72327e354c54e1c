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
    use clickflow::collector::visitor_id_hash;
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
