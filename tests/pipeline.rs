//! End to end: HTTP → log → engine (several processes) → Postgres → query API, compared
//! with an oracle computed here from the same events.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::pipeline_kit::*;
use common::*;
use serde_json::{json, Value};

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
