//! The chaos run shared by `tests/chaos.rs` (small) and `bench/chaos.rs` (issue 9's million
//! events and twenty kills): a whole Clickflow on loopback with a Postgres and a broker of
//! its own, clients posting through the collector and retrying every batch that was not
//! acknowledged (same event ids), and a driver that SIGKILLs parts of it at random moments.
//! Each kill waits for the previous one's recovery, so each recovery time is its own.
//!
//! Supervisors restart what dies: `clickflow cluster` the engine processes, a loop here the
//! collector (as systemd or Kubernetes would), the driver itself the broker and Postgres.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::common::*;

pub struct Plan {
    pub events: usize,
    pub kills: usize,
    pub seed: u64,
    /// Events per request.
    pub batch: usize,
    /// How long the rollups may take to settle once everything is posted.
    pub settle_within: Duration,
    /// How long one kill may take to recover from before the run gives up.
    pub recover_within: Duration,
    /// Events per second all clients together post at most, so kills land mid-stream.
    pub rate: usize,
}

/// The processes' stderr: shown with `CHAOS_LOG=1`, else dropped.
fn logs() -> Stdio {
    if std::env::var_os("CHAOS_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

#[derive(Clone, Debug)]
pub struct Kill {
    pub what: String,
    /// Acknowledged events when it happened.
    pub at_events: usize,
    /// Until the collector acknowledged a request again.
    pub ingest_back: Option<Duration>,
    /// Until results were committed for events received after the kill.
    pub recovered: Option<Duration>,
}

#[derive(Debug)]
pub struct Report {
    pub acknowledged: usize,
    pub requests: usize,
    pub retries: usize,
    pub kills: Vec<Kill>,
    /// Pageviews and events the oracle has and the rollups lack, and the reverse.
    pub lost: i64,
    pub doubled: i64,
    pub posting: Duration,
    pub settled_after: Option<Duration>,
    /// When the rollups did not settle: the distinct events the topic holds, to tell a
    /// broker that lost acknowledged records from an engine that lost read ones.
    pub in_log: Option<usize>,
}

/// Distinct event ids in the whole topic.
fn distinct_events_in_log(brokers: &str) -> usize {
    use clickflow::log::Log;
    let log = clickflow::log::kafka::KafkaLog::connect(brokers, "events").expect("connect");
    let partitions = log.partitions().expect("partitions");
    let start = (0..partitions).map(|p| (p, 0)).collect();
    let end: BTreeMap<u32, u64> = (0..partitions)
        .map(|p| (p, log.high_watermark(p).expect("high watermark")))
        .collect();
    let mut reader = log.reader(&start, Some(end)).expect("reader");
    let mut ids = std::collections::HashSet::new();
    while !reader.finished() {
        for m in reader
            .poll(10_000, Duration::from_millis(500))
            .expect("poll")
        {
            for r in clickflow_dataflows::Record::decode_all(&m.value).unwrap_or_default() {
                if let clickflow_dataflows::Record::Event(e) = r {
                    ids.insert(e.event_id);
                }
            }
        }
    }
    ids.len()
}

/// A kill counts as recovered once results are committed for events received this long after
/// it: the committed frontier is rounded up to the engine's epoch, so at the kill it may
/// already stand a little past the kill's instant.
const RESULTS_MARGIN_MS: i64 = 500;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn sigkill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// A child process the driver restarts after each death until `stop`.
struct Supervised {
    pid: Arc<Mutex<Option<u32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervised {
    fn start(mut spawn: impl FnMut() -> Child + Send + 'static) -> Supervised {
        let pid = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (pid_w, stop_w) = (pid.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop_w.load(Ordering::SeqCst) {
                let mut child = spawn();
                *pid_w.lock().unwrap() = Some(child.id());
                loop {
                    if stop_w.load(Ordering::SeqCst) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                *pid_w.lock().unwrap() = None;
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Supervised {
            pid,
            stop,
            thread: Some(thread),
        }
    }

    fn kill(&self) -> bool {
        match *self.pid.lock().unwrap() {
            Some(pid) => {
                sigkill(pid);
                true
            }
            None => false,
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tansu broker of this run's own, on sqlite in `dir`.
fn start_broker(dir: &Path, port: u16) -> Child {
    Command::new(env("CLICKFLOW_TEST_TANSU"))
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--storage-engine",
            "sqlite://tansu.db",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(logs())
        .spawn()
        .expect("start tansu")
}

/// Stops Postgres as a crash would (no checkpoint: the restart replays its WAL), and starts it.
fn crash_postgres(pg_dir: &Path, port: u16) {
    clickflow::local::stop_postgres_immediately(pg_dir);
    let started = eventually(Duration::from_secs(60), || {
        clickflow::local::start_postgres(pg_dir, port).ok()
    });
    assert!(started.is_some(), "postgres restarts after a crash");
}

fn committed_frontier(database: &str) -> Option<i64> {
    let mut c = postgres::Client::connect(database, postgres::NoTls).ok()?;
    c.query_one(
        "SELECT min(frontier_ms) FROM progress WHERE generation = (SELECT generation FROM active_generation)",
        &[],
    )
    .ok()?
    .get(0)
}

/// What the collector acknowledged, as the query API should report it per site.
#[derive(Default)]
struct Oracle {
    pageviews_by_page: BTreeMap<(usize, String), i64>,
    events: BTreeMap<usize, i64>,
    visitors: BTreeMap<usize, BTreeSet<String>>,
}

pub fn run(plan: &Plan) -> Report {
    let scratch = tempfile::tempdir().expect("scratch");
    let mut rng = StdRng::seed_from_u64(plan.seed);

    let pg_dir = scratch.path().join("pg");
    let pg_port = free_port();
    let database = clickflow::local::start_postgres(&pg_dir, pg_port).expect("own postgres");
    let broker_dir = scratch.path().join("tansu");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let kafka_port = free_port();
    let broker = Arc::new(Mutex::new(start_broker(&broker_dir, kafka_port)));
    let brokers = format!("127.0.0.1:{kafka_port}");
    let created = eventually(Duration::from_secs(30), || {
        Command::new(env("CLICKFLOW_TEST_TANSU"))
            .args(["topic", "create", "events", "--partitions", "4", "--broker"])
            .arg(format!("tcp://{brokers}"))
            .output()
            .ok()
            .filter(|o| o.status.success())
    });
    assert!(created.is_some(), "topic on the chaos broker");

    let setup = Setup::new(
        &database,
        &LogChoice::Kafka {
            brokers,
            topic: "events".into(),
        },
    )
    .with("CLICKFLOW__ARCHIVE__URL", "\"\"");
    setup.run(&["migrate"]);
    let sites: Vec<(String, String)> = ["chaos-a.test", "chaos-b.test"]
        .iter()
        .map(|d| setup.add_site(d, "UTC"))
        .collect();

    let serve_setup = setup.clone();
    let collector = Supervised::start(move || {
        serve_setup
            .command(&["serve"])
            .stdout(Stdio::null())
            .stderr(logs())
            .spawn()
            .expect("spawn serve")
    });
    setup.wait_healthy();
    let health_at = format!("127.0.0.1:{}", free_port());
    let _cluster = Proc(
        setup
            .command(&["cluster", "-n", "2", "-w", "1", "--listen", &health_at])
            .stdout(Stdio::null())
            .stderr(logs())
            .spawn()
            .expect("spawn cluster"),
    );
    let engine_pids = move || -> Vec<u32> {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()
            .and_then(|c| c.get(format!("http://{health_at}/healthz")).send().ok())
            .and_then(|r| r.json::<Value>().ok())
            .and_then(|h| {
                h["processes"].as_array().map(|ps| {
                    ps.iter()
                        .filter_map(|p| p["pid"].as_u64().map(|p| p as u32))
                        .collect()
                })
            })
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(60), || (engine_pids().len() == 2)
            .then_some(()))
        .is_some(),
        "both engine processes run"
    );

    // The clients: each batch is posted until it is acknowledged, with the same event ids.
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let last_ack_ms = Arc::new(AtomicI64::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let oracle = Arc::new(Mutex::new(Oracle::default()));
    // Set when a kill was never recovered from: the clients stop, the run reports.
    let give_up = Arc::new(AtomicBool::new(false));
    let posting_started = Instant::now();
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (setup, sites) = (setup.clone(), sites.clone());
            let (acknowledged, last_ack_ms, requests, retries, oracle, give_up) = (
                acknowledged.clone(),
                last_ack_ms.clone(),
                requests.clone(),
                retries.clone(),
                oracle.clone(),
                give_up.clone(),
            );
            let (events, batch, seed) = (plan.events, plan.batch, plan.seed);
            // Each of the two clients sends half the rate.
            let pause = Duration::from_secs_f64(batch as f64 * 2.0 / plan.rate.max(1) as f64);
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed * 31 + c as u64);
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap();
                let mine: Vec<usize> = (c..events).step_by(2).collect();
                let mut next_send = Instant::now();
                for chunk in mine.chunks(batch) {
                    if give_up.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(next_send.saturating_duration_since(Instant::now()));
                    next_send = Instant::now().max(next_send) + pause;
                    let ts = now_ms();
                    let sent: Vec<(usize, String, String, bool)> = chunk
                        .iter()
                        .map(|_| {
                            let site = rng.random_range(0..sites.len());
                            let page = format!("/p{}", rng.random_range(0..20));
                            (site, page, format!("v{}", rng.random_range(0..5000)), rng.random_bool(0.8))
                        })
                        .collect();
                    let body: Vec<Value> = chunk
                        .iter()
                        .zip(&sent)
                        .map(|(i, (site, page, visitor, pageview))| {
                            json!({"site": sites[*site].0, "name": if *pageview {"pageview"} else {"signup"},
                                   "url": format!("https://chaos.test{page}"), "visitor_id": visitor,
                                   "event_id": format!("chaos-{seed}-{i}"), "ts": ts})
                        })
                        .collect();
                    let body = json!({ "events": body });
                    let mut backoff = Duration::from_millis(50);
                    loop {
                        requests.fetch_add(1, Ordering::Relaxed);
                        let answer = http
                            .post(setup.url("/api/batch"))
                            .header("user-agent", BROWSER_UA)
                            .json(&body)
                            .send()
                            .ok()
                            .filter(|r| r.status().as_u16() == 202)
                            .and_then(|r| r.json::<Value>().ok());
                        if answer.is_some_and(|a| a["accepted"] == json!(chunk.len())) {
                            break;
                        }
                        if give_up.load(Ordering::SeqCst) {
                            return;
                        }
                        retries.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    let mut o = oracle.lock().unwrap();
                    for (site, page, visitor, pageview) in sent {
                        if pageview {
                            *o.pageviews_by_page.entry((site, page)).or_default() += 1;
                        }
                        *o.events.entry(site).or_default() += 1;
                        o.visitors.entry(site).or_default().insert(visitor);
                    }
                    drop(o);
                    acknowledged.fetch_add(chunk.len(), Ordering::SeqCst);
                    last_ack_ms.store(now_ms(), Ordering::SeqCst);
                }
            })
        })
        .collect();

    // The driver: kills at random points of the stream, one recovery at a time.
    let mut kinds: Vec<&str> = vec!["broker", "postgres"];
    while kinds.len() < plan.kills {
        kinds.push(if rng.random_bool(0.6) {
            "engine"
        } else {
            "collector"
        });
    }
    kinds.truncate(plan.kills);
    kinds.shuffle(&mut rng);
    // `CHAOS_KINDS=broker,engine` runs exactly those kills, in that order.
    let chosen = std::env::var("CHAOS_KINDS").unwrap_or_default();
    if !chosen.is_empty() {
        kinds = chosen.split(',').map(str::trim).collect();
    }
    let mut thresholds: Vec<usize> = (0..kinds.len())
        .map(|_| rng.random_range(plan.events / 20..plan.events * 9 / 10))
        .collect();
    thresholds.sort();
    let mut kills = Vec::new();
    for (what, threshold) in kinds.iter().zip(thresholds) {
        while acknowledged.load(Ordering::SeqCst) < threshold {
            std::thread::sleep(Duration::from_millis(20));
        }
        let at_events = acknowledged.load(Ordering::SeqCst);
        let killed_at = Instant::now();
        let killed_ms = now_ms();
        let what = match *what {
            "engine" => {
                let pids = eventually(Duration::from_secs(120), || {
                    let pids = engine_pids();
                    (pids.len() == 2).then_some(pids)
                })
                .expect("both engine processes run before a kill");
                let pid = pids[rng.random_range(0..pids.len())];
                sigkill(pid);
                format!("engine process {pid}")
            }
            "collector" => {
                collector.kill();
                "collector/API".to_string()
            }
            "broker" => {
                let mut b = broker.lock().unwrap();
                let _ = b.kill();
                let _ = b.wait();
                std::thread::sleep(Duration::from_millis(500));
                *b = start_broker(&broker_dir, kafka_port);
                "broker (SIGKILL, restarted)".to_string()
            }
            _ => {
                crash_postgres(&pg_dir, pg_port);
                "postgres (immediate stop, restarted)".to_string()
            }
        };
        let mut kill = Kill {
            what,
            at_events,
            ingest_back: None,
            recovered: None,
        };
        let deadline = killed_at + plan.recover_within;
        while Instant::now() < deadline && (kill.ingest_back.is_none() || kill.recovered.is_none())
        {
            if kill.ingest_back.is_none() && last_ack_ms.load(Ordering::SeqCst) > killed_ms {
                kill.ingest_back = Some(killed_at.elapsed());
            }
            if kill.recovered.is_none()
                && committed_frontier(&database).is_some_and(|f| f > killed_ms + RESULTS_MARGIN_MS)
            {
                kill.recovered = Some(killed_at.elapsed());
            }
            // Posting may have ended: then recovery is only the engine's.
            if acknowledged.load(Ordering::SeqCst) >= plan.events && kill.ingest_back.is_none() {
                kill.ingest_back = Some(Duration::ZERO);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("chaos: {kill:?}");
        let stuck = kill.ingest_back.is_none() || kill.recovered.is_none();
        kills.push(kill);
        if stuck {
            give_up.store(true, Ordering::SeqCst);
            break;
        }
    }
    for c in clients {
        c.join().expect("client thread");
    }
    let posting = posting_started.elapsed();

    // Settle: the rollups must reach the oracle exactly.
    let oracle = oracle.lock().unwrap();
    let settle_started = Instant::now();
    let mut last = (0, 0);
    let settle_within = if give_up.load(Ordering::SeqCst) {
        Duration::from_secs(10)
    } else {
        plan.settle_within
    };
    let settled = eventually(settle_within, || {
        let (mut lost, mut doubled) = (0i64, 0i64);
        for (s, (site, key)) in sites.iter().enumerate() {
            let pages = totals(&setup, site, key, "pageviews", &["page"])?;
            let events = totals(&setup, site, key, "events", &[])?;
            let visitors = totals(&setup, site, key, "visitors", &[])?;
            let mut compare = |want: i64, got: Option<&String>| {
                let got: i64 = got.and_then(|g| g.parse::<f64>().ok()).unwrap_or(0.0) as i64;
                lost += (want - got).max(0);
                doubled += (got - want).max(0);
            };
            for ((site_index, page), want) in &oracle.pageviews_by_page {
                if *site_index == s {
                    compare(
                        *want,
                        pages
                            .get(&format!("https://chaos.test{page}"))
                            .or_else(|| pages.get(page)),
                    );
                }
            }
            compare(oracle.events[&s], events.get(""));
            compare(oracle.visitors[&s].len() as i64, visitors.get(""));
        }
        last = (lost, doubled);
        (lost == 0 && doubled == 0).then_some(())
    });
    let in_log = settled
        .is_none()
        .then(|| distinct_events_in_log(&format!("127.0.0.1:{kafka_port}")));
    let report = Report {
        acknowledged: acknowledged.load(Ordering::SeqCst),
        requests: requests.load(Ordering::SeqCst),
        retries: retries.load(Ordering::SeqCst),
        kills,
        lost: last.0,
        doubled: last.1,
        posting,
        settled_after: settled.map(|_| settle_started.elapsed()),
        in_log,
    };
    drop(collector);
    drop(_cluster);
    if let Ok(mut b) = broker.lock() {
        let _ = b.kill();
        let _ = b.wait();
    }
    clickflow::local::stop_postgres(&pg_dir);
    report
}

impl Report {
    pub fn print(&self) {
        if let Some(n) = self.in_log {
            println!(
                "chaos: the topic holds {n} distinct events of the {} acknowledged",
                self.acknowledged
            );
        }
        println!(
            "chaos: {} events acknowledged in {} requests ({} retried), posted in {:.1} s",
            self.acknowledged,
            self.requests,
            self.retries,
            self.posting.as_secs_f64()
        );
        for k in &self.kills {
            println!(
                "  kill at {:>8} events: {:<34} ingest back {:>6}  results past the kill {:>6}",
                k.at_events,
                k.what,
                k.ingest_back
                    .map(|d| format!("{:.1} s", d.as_secs_f64()))
                    .unwrap_or_else(|| "never".into()),
                k.recovered
                    .map(|d| format!("{:.1} s", d.as_secs_f64()))
                    .unwrap_or_else(|| "never".into()),
            );
        }
        println!(
            "  lost {}, counted twice {}, settled {}",
            self.lost,
            self.doubled,
            self.settled_after
                .map(|d| format!("{:.1} s after the last post", d.as_secs_f64()))
                .unwrap_or_else(|| "never".into())
        );
    }
}
