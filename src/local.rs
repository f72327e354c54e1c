//! Local mode: a throwaway Postgres started from the system's binaries, and demo traffic.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::Rng;
use serde_json::json;

use crate::collector::Collector;

fn pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some(dir) = versions.iter().rev().find(|d| d.join(name).exists()) {
        return Ok(dir.join(name));
    }
    bail!("{name} not found under /usr/lib/postgresql; run scripts/install-deps.sh (apt-get install postgresql)")
}

fn is_root() -> bool {
    // Postgres refuses to run as root, so as root every command runs as the postgres user.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn run_pg(bin: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let bin = pg_bin(bin)?;
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))
}

/// As root, the server runs as the `postgres` user, which cannot enter private directories
/// such as `/root` or a 0700 temporary directory: such a data folder moves to
/// `/var/tmp/clickflow-pg/<hash of the path>` (said in the log), everything else stays put.
fn reachable_by_postgres(dir: &Path) -> anyhow::Result<PathBuf> {
    if !is_root() {
        return Ok(dir.to_owned());
    }
    let ok = Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir.parent().unwrap_or(dir))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Ok(dir.to_owned());
    }
    let hash = format!("{:08x}", crc32fast::hash(dir.to_string_lossy().as_bytes()));
    let moved = PathBuf::from("/var/tmp/clickflow-pg").join(hash);
    std::fs::create_dir_all(&moved)?;
    tracing::info!(requested = %dir.display(), using = %moved.display(), "postgres cannot enter the data folder's parent; using another");
    Ok(moved)
}

/// Whether the PostgreSQL whose binaries `up` uses has the TimescaleDB library installed.
fn timescale_installed() -> anyhow::Result<bool> {
    let postgres = pg_bin("postgres")?;
    let version_dir = postgres.parent().and_then(Path::parent);
    Ok(version_dir.is_some_and(|d| d.join("lib/timescaledb.so").exists()))
}

/// Starts (initialising if needed) a Postgres in `dir` on `port` and returns its URL.
pub fn start_postgres(dir: &Path, port: u16) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let dir = reachable_by_postgres(&dir.canonicalize()?)?;
    let d = dir.to_string_lossy().to_string();
    if is_root() {
        Command::new("chown")
            .args(["-R", "postgres:postgres", &d])
            .status()?;
    }
    if !dir.join("PG_VERSION").exists() {
        let out = run_pg(
            "initdb",
            &["-D", &d, "-U", "postgres", "-A", "trust", "--no-sync"],
        )?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let running = run_pg("pg_ctl", &["-D", &d, "status"])?.status.success();
    if !running {
        let mut opts = format!("-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off");
        // An installed TimescaleDB works only when preloaded; it must not call home either.
        if timescale_installed()? {
            opts.push_str(
                " -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off",
            );
        }
        let log = format!("{d}/server.log");
        let out = run_pg(
            "pg_ctl",
            &["-D", &d, "-w", "-l", &log, "-o", &opts, "start"],
        )?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed (see {log}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

pub fn stop_postgres(dir: &Path) {
    pg_stop(dir, "fast");
}

/// Stops the local Postgres the way a crash would, without a checkpoint: the next start
/// recovers from its WAL (the chaos test's Postgres "kill").
pub fn stop_postgres_immediately(dir: &Path) {
    pg_stop(dir, "immediate");
}

fn pg_stop(dir: &Path, mode: &str) {
    if let Ok(dir) = dir
        .canonicalize()
        .and_then(|d| reachable_by_postgres(&d).map_err(std::io::Error::other))
    {
        let _ = run_pg(
            "pg_ctl",
            &["-D", &dir.to_string_lossy(), "-m", mode, "stop"],
        );
    }
}

/// Sends a steady trickle of plausible traffic through the collector, as a tracker would:
/// a few hundred visitors browsing pages, some arriving late, some retried.
pub async fn demo_traffic(collector: Arc<Collector>, site: String) {
    let pages = [
        "/",
        "/pricing",
        "/docs",
        "/blog/launch",
        "/blog/exact-numbers",
        "/signup",
        "/about",
    ];
    // "" is what a browser's document.referrer is on a direct visit.
    let referrers = [
        Some(""),
        Some("https://www.google.com/"),
        Some("https://news.ycombinator.com/"),
        Some("https://twitter.com/"),
    ];
    let agents = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    ];
    let campaigns = [
        "",
        "",
        "",
        "?utm_source=newsletter&utm_medium=email&utm_campaign=launch",
    ];
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let (agent, events): (&str, Vec<serde_json::Value>) = {
            let mut rng = rand::rng();
            let agent = agents[rng.random_range(0..agents.len())];
            let events = (0..rng.random_range(1..12))
                .map(|_| {
                    n += 1;
                    let visitor = rng.random_range(0..300);
                    let late_ms = if rng.random_bool(0.05) {
                        rng.random_range(60_000..1_800_000)
                    } else {
                        0
                    };
                    let ts = clickflow_operators::source::wall_clock_ms() - late_ms;
                    let page = pages[rng.random_range(0..pages.len())];
                    let campaign = campaigns[rng.random_range(0..campaigns.len())];
                    let mut event = json!({
                        "site": site, "name": "pageview", "url": format!("https://demo.local{page}{campaign}"),
                        "referrer": referrers[rng.random_range(0..referrers.len())],
                        "visitor_id": format!("demo-{visitor}"), "ts": ts, "event_id": format!("demo-{}-{n}", std::process::id()),
                    });
                    if page == "/signup" && rng.random_bool(0.3) {
                        event["name"] = json!("signup");
                        let plan = ["free", "pro"][rng.random_range(0..2)];
                        event["props"] = json!({ "plan": plan });
                    } else if page == "/pricing" && rng.random_bool(0.2) {
                        event["name"] = json!("purchase");
                        event["revenue"] = json!({"amount": format!("{}.00", rng.random_range(9..99)), "currency": "EUR"});
                    }
                    event
                })
                .collect();
            (agent, events)
        };
        let sender = crate::collector::Sender {
            user_agent: agent.to_owned(),
            ..Default::default()
        };
        let results = collector.ingest(&events, &sender).await;
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            tracing::warn!(reason = %e.reason, "demo event refused");
        }
    }
}
