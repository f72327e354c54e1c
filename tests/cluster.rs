//! `clickflow cluster -n 2 -w 1`: the supervisor starts a two-process engine job, reports it
//! on `/healthz`, restarts the whole job when one process is SIGKILLed, and the rollups end
//! equal to everything the collector accepted: nothing lost, nothing counted twice.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn pageviews(setup: &Setup, site: &str, key: &str, n: usize, from: usize) {
    post_pageviews(setup, site, "cluster.test", from..from + n, (7, 50), 250);
    await_rollups(
        setup,
        site,
        key,
        &[("pageviews", &[], expect(&[("", &(from + n).to_string())]))],
    );
}

/// A collector on an embedded log and `clickflow cluster` with `args`, serving `/healthz` on
/// `listen`.
struct Supervised {
    setup: Setup,
    listen: String,
    cluster: Proc,
    _server: Proc,
    _scratch: tempfile::TempDir,
}

fn supervised(args: &[&str]) -> Supervised {
    let scratch = tempfile::tempdir().unwrap();
    let setup = Setup::embedded(&fresh_database(), scratch.path().join("log"));
    setup.run(&["migrate"]);
    let server = setup.spawn(&["serve"]);
    setup.wait_healthy();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut command = vec!["cluster", "--listen", &listen];
    command.extend_from_slice(args);
    let cluster = Proc(setup.command(&command).spawn().expect("clickflow cluster"));
    Supervised {
        setup,
        listen,
        cluster,
        _server: server,
        _scratch: scratch,
    }
}

/// The supervisor's `/healthz`: status code and body.
fn health(listen: &str) -> Option<(u16, Value)> {
    let r = reqwest::blocking::get(format!("http://{listen}/healthz")).ok()?;
    Some((r.status().as_u16(), r.json().ok()?))
}

fn pids(health: &Value) -> Vec<u64> {
    health["processes"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["pid"].as_u64()).collect())
        .unwrap_or_default()
}

#[test]
fn the_supervisor_restarts_the_job_and_nothing_is_lost() {
    // Every field bound: those left out of a pattern would be dropped here, collector and
    // scratch directory with them.
    let Supervised {
        setup,
        listen,
        mut cluster,
        _server,
        _scratch,
    } = supervised(&["-n", "2", "-w", "1"]);
    let (site, key) = setup.add_site("cluster.test", "UTC");
    let health = || health(&listen);
    let first = eventually(Duration::from_secs(30), || {
        health().filter(|(code, h)| *code == 200 && pids(h).len() == 2)
    })
    .expect("two engine processes running");
    let first_pids = pids(&first.1);

    pageviews(&setup, &site, &key, 600, 0);
    let settled = eventually(Duration::from_secs(30), || {
        health().filter(|(_, h)| h["lag_records"] == 0 && h["status"] == "running")
    })
    .expect("no lag once the rollups are complete");
    assert!(
        settled.1["committed_frontier_ms"].as_i64() > Some(0),
        "{}",
        settled.1
    );
    assert_eq!(settled.1["rehydration"]["fraction"], 1.0, "{}", settled.1);

    // One process dies without warning: the supervisor restarts the whole job.
    let victim = first_pids[1];
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let restarted = eventually(Duration::from_secs(60), || {
        health().filter(|(code, h)| {
            *code == 200
                && h["restarts"].as_u64() >= Some(1)
                && pids(h).len() == 2
                && pids(h).iter().all(|p| !first_pids.contains(p))
        })
    })
    .expect("both processes replaced");
    assert!(
        restarted.1["processes"][1]["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("signal")),
        "{}",
        restarted.1
    );
    for p in &first_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/status"))
                    .is_ok_and(|s| s.contains("zombie")),
            "old process {p} is gone"
        );
    }

    // More events after the restart: the totals are exact.
    pageviews(&setup, &site, &key, 400, 600);
    let events = post(
        &setup.url("/api/v1/query"),
        &json!({"site_id": site, "metrics": ["events", "visitors"], "date_range": "today"}),
        Some(&key),
    );
    assert_eq!(
        events.1["results"][0]["metrics"],
        json!([1000, 50]),
        "{}",
        events.1
    );

    // SIGTERM stops the supervisor and its processes.
    let last = pids(&health().unwrap().1);
    Command::new("kill")
        .args(["-TERM", &cluster.0.id().to_string()])
        .status()
        .unwrap();
    let status = eventually(Duration::from_secs(20), || {
        cluster.0.try_wait().ok().flatten()
    })
    .expect("the supervisor exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    for p in last {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "engine process {p} stopped with the supervisor"
        );
    }
    cluster.kill();
}

#[test]
fn a_killed_supervisor_takes_its_engines_with_it() {
    let mut job = supervised(&["-n", "2"]);
    let engines = eventually(Duration::from_secs(30), || {
        Some(pids(&health(&job.listen)?.1)).filter(|p| p.len() == 2)
    })
    .expect("two engines");
    job.cluster.kill(); // SIGKILL: no clean-up code runs
    let gone = eventually(Duration::from_secs(10), || {
        engines
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "engines {engines:?} outlived their supervisor"
    );
}
