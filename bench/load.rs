//! End-to-end load: HTTP → log → engine → Postgres → query API.
//!
//!     cargo bench --bench load -- [seconds] [client threads] [events/s, 0 = as fast as possible]
//!
//! Starts its own Postgres (system binaries, temporary directory), a `clickflow serve` and a
//! `clickflow engine -w 2`, then drives `/api/batch` from client threads for the given time.
//! Reports sustained accepted events/s, and freshness: for every acknowledged batch, the time
//! from its 202 until the API's event total includes it (probed every 50 ms).
//! `LOAD_KAFKA=127.0.0.1:19092` uses that Kafka-protocol broker (`scripts/test-env.sh start`
//! runs tansu there) instead of the embedded log.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(20);
    let clients = args.get(1).copied().unwrap_or(4) as usize;
    let rate = args.get(2).copied().unwrap_or(0);
    // Each client sends a batch of 100 every `pace`, so together they offer `rate` events/s.
    let pace = (rate > 0).then(|| Duration::from_secs_f64(100.0 * clients as f64 / rate as f64));
    let scratch = tempfile::tempdir()?;
    let db = clickflow::local::start_postgres(&scratch.path().join("pg"), free_port())?;
    let mut client = clickflow::store::connect(&db)?;
    clickflow::store::migrate(&mut client, &Default::default())?;
    let site = clickflow::store::add_site(&mut client, "load.test", "UTC")?;
    let listen = format!("127.0.0.1:{}", free_port());
    let bin = env!("CARGO_BIN_EXE_clickflow");
    // LOAD_KAFKA=host:port runs against that Kafka-protocol broker (a fresh topic) instead
    // of the embedded log.
    let kafka = std::env::var("LOAD_KAFKA").ok();
    let topic = format!("load-{}", std::process::id());
    if let Some(brokers) = &kafka {
        // tansu's own CLI (CLICKFLOW_TEST_TANSU, as scripts/test-env.sh exports it).
        let tansu = std::env::var("CLICKFLOW_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
        let made = Command::new(&tansu)
            .args(["topic", "create", &topic, "--partitions", "4"])
            .args(["--broker", &format!("tcp://{brokers}")])
            .output()?;
        anyhow::ensure!(
            made.status.success(),
            "creating topic {topic} with {tansu}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let log_env: Vec<(&str, String)> = match &kafka {
        Some(brokers) => vec![
            ("CLICKFLOW__LOG__KIND", "kafka".into()),
            ("CLICKFLOW__LOG__BROKERS", format!("{brokers:?}")),
            ("CLICKFLOW__LOG__TOPIC", format!("{topic:?}")),
        ],
        None => vec![
            ("CLICKFLOW__LOG__KIND", "embedded".into()),
            (
                "CLICKFLOW__LOG__DIR",
                format!("{:?}", scratch.path().join("log").display().to_string()),
            ),
        ],
    };
    let spawn = |args: &[&str]| -> anyhow::Result<Killed> {
        Ok(Killed(
            Command::new(bin)
                .args(args)
                .env("DATABASE_URL", &db)
                .envs(log_env.iter().map(|(k, v)| (*k, v)))
                .env("CLICKFLOW__COLLECTOR__LISTEN", format!("{listen:?}"))
                .env("CLICKFLOW__ENGINE__EPOCH_MS", "100")
                .env("CLICKFLOW__ENGINE__COMMIT_INTERVAL_MS", "100")
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .spawn()?,
        ))
    };
    let _server = spawn(&["serve"])?;
    // A browser user agent: requests without one are filtered as bots.
    let http = reqwest::blocking::Client::builder()
        .user_agent("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0")
        .build()?;
    let health = format!("http://{listen}/healthz");
    let started = Instant::now();
    while !http
        .get(&health)
        .send()
        .map(|r| r.status().is_success())
        .unwrap_or(false)
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The engine reads the embedded log the collector creates: start it once the collector is up.
    let _engine = spawn(&["engine", "-w", "2"])?;

    // Acknowledged batches: (time of the 202, cumulative events acknowledged then).
    let acked = Arc::new(AtomicU64::new(0));
    let acks: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let visible: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let today = chrono::Utc::now();
    let range = [
        (today - chrono::Duration::days(1))
            .format("%Y-%m-%d")
            .to_string(),
        (today + chrono::Duration::days(1))
            .format("%Y-%m-%d")
            .to_string(),
    ];
    let prober = {
        let (visible, stop, http) = (visible.clone(), stop.clone(), http.clone());
        let (url, key, site_id, range) = (
            format!("http://{listen}/api/v1/query"),
            site.api_key.clone(),
            site.id.clone(),
            range.clone(),
        );
        std::thread::spawn(move || {
            let body = json!({"site_id": site_id, "metrics": ["events"], "date_range": range});
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if let Ok(r) = http.post(&url).bearer_auth(&key).json(&body).send() {
                    if let Ok(v) = r.json::<Value>() {
                        if let Some(n) = v["results"][0]["metrics"][0].as_u64() {
                            visible.lock().expect("lock").push((t, n));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let load_started = Instant::now();
    let deadline = load_started + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (acked, acks, http, site_id) = (acked.clone(), acks.clone(), http.clone(), site.id.clone());
            let url = format!("http://{listen}/api/batch");
            std::thread::spawn(move || {
                let mut n = 0u64;
                let mut next = Instant::now();
                while Instant::now() < deadline {
                    if let Some(pace) = pace {
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                        next += pace;
                    }
                    let events: Vec<Value> = (0..100)
                        .map(|i| {
                            n += 1;
                            json!({"site": site_id, "name": if i % 5 == 0 { "signup" } else { "pageview" },
                                   "url": format!("https://load.test/p{}", n % 100),
                                   "visitor_id": format!("c{c}-v{}", n % 5000), "event_id": format!("c{c}-{n}")})
                        })
                        .collect();
                    if let Ok(r) = http.post(&url).json(&json!({"events": events})).send() {
                        if r.status().as_u16() == 202 {
                            let accepted = r.json::<Value>().ok().and_then(|v| v["accepted"].as_u64()).unwrap_or(0);
                            let total = acked.fetch_add(accepted, Ordering::SeqCst) + accepted;
                            acks.lock().expect("lock").push((Instant::now(), total));
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let load_secs = load_started.elapsed().as_secs_f64();
    let total = acked.load(Ordering::SeqCst);
    // Let the engine finish what was acknowledged, then stop probing.
    let drain_start = Instant::now();
    while visible
        .lock()
        .expect("lock")
        .last()
        .map(|v| v.1)
        .unwrap_or(0)
        < total
        && drain_start.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = prober.join();

    let visible = visible.lock().expect("lock").clone();
    let mut fresh: Vec<f64> = acks
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|(t, cum)| {
            visible
                .iter()
                .find(|(vt, n)| vt >= t && n >= cum)
                .map(|(vt, _)| (*vt - *t).as_secs_f64() * 1000.0)
        })
        .collect();
    fresh.sort_by(|a, b| a.total_cmp(b));
    let offered = if rate > 0 {
        format!("{rate} events/s offered")
    } else {
        "as fast as possible".into()
    };
    let log = match &kafka {
        Some(brokers) => format!("Kafka at {brokers}"),
        None => "embedded log (fsync)".into(),
    };
    println!("end-to-end load: {seconds} s, {clients} client threads, {offered}, batches of 100, {log}, engine -w 2");
    println!(
        "  accepted:   {total} events, {:.0} events/s sustained",
        total as f64 / load_secs
    );
    println!(
        "  freshness:  p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (202 → visible in /api/v1/query, {} batches)",
        percentile(&fresh, 0.5),
        percentile(&fresh, 0.99),
        fresh.last().copied().unwrap_or(f64::NAN),
        fresh.len()
    );
    println!(
        "  all visible: {}",
        visible.last().map(|v| v.1 == total).unwrap_or(false)
    );
    // What the rollups cost in Postgres (partitions or chunks are the parent's children).
    let stored = client.query_one(
        "SELECT (SELECT count(*) FROM rollups),
                (SELECT count(*) FROM rollups WHERE sketch IS NOT NULL),
                pg_total_relation_size('rollups') + coalesce((SELECT sum(pg_total_relation_size(inhrelid))
                   FROM pg_inherits WHERE inhparent = 'rollups'::regclass), 0)::bigint",
        &[],
    )?;
    let (rows, sketch_rows, bytes): (i64, i64, i64) = (stored.get(0), stored.get(1), stored.get(2));
    let per_event = |x: i64| x as f64 / (total.max(1)) as f64;
    println!(
        "  postgres:   {rows} rollup rows ({sketch_rows} with a sketch), {:.2} rows/event, {} MiB table + indexes, {:.0} B/event",
        per_event(rows),
        bytes / (1 << 20),
        per_event(bytes)
    );
    drop(_engine);
    drop(_server);
    clickflow::local::stop_postgres(&scratch.path().join("pg"));
    Ok(())
}
