//! Local mode: a throwaway Postgres started from the system's binaries, and demo traffic.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::Rng;
use serde_json::json;

use crate::config::Config;
use crate::engine::start::start_live;
use crate::engine::Outcome;
use crate::ingest::Collector;
use crate::log;
use crate::serve::serve;
use crate::store;
use crate::store::archive::archiver::Archiver;
use crate::store::archive::Archive;

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
        let sender = crate::ingest::Sender {
            user_agent: agent.to_owned(),
            ..Default::default()
        };
        let results = collector.ingest(&events, &sender).await;
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            tracing::warn!(reason = %e.reason, "demo event refused");
        }
    }
}

/// The tag a merchant pastes. `up` serves only this machine, whose own test pages are on
/// localhost, so its tag counts localhost pages too.
pub fn script_tag(site: &str, collector: &str, local: bool) -> String {
    let allow = if local { " data-allow-localhost" } else { "" };
    format!(
        r#"<script defer data-site="{site}"{allow} src="http://{collector}/js/clickflow.js"></script>"#
    )
}

/// `clickflow up`: collector, query API, engine (restarted when it stops) and archiver (when
/// configured) in one process with the embedded log; prints the URLs, the script tag and a
/// curl to try.
pub fn up(mut config: Config, demo: bool, workers: usize) -> anyhow::Result<()> {
    // Local mode uses the country database install-deps fetched, unless told otherwise.
    let bundled_geo = std::path::Path::new(".deps/geo/geo-whois-asn-country.mmdb");
    if config.collector.geoip_db.as_os_str().is_empty() && bundled_geo.exists() {
        config.collector.geoip_db = bundled_geo.to_path_buf();
    }
    let url = config.database.url.clone();
    let mut client = store::connect(&url)?;
    store::migrate(&mut client, &config.database)?;
    let site = match store::site_of_domain(&mut client, "demo.local")? {
        Some(s) => (s.id, s.api_key),
        None => {
            let s = store::add_site(&mut client, "demo.local", "UTC")?;
            (s.id, s.api_key)
        }
    };
    // Opened before the engine starts, so the engine always finds the log it reads.
    let ingest_log = log::open(&config.log, log::Access::Append)?;
    let engine_config = config.clone();
    std::thread::spawn(move || loop {
        let attempt = start_live(&engine_config, timely::Config::process(workers.max(1)));
        match attempt {
            Ok(Outcome::Retired) => tracing::info!("engine following the new generation"),
            Ok(Outcome::Finished) => return,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "engine stopped; restarting in 2 s");
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    });
    if !config.archive.url.trim().is_empty() {
        let archive_config = config.clone();
        std::thread::spawn(move || loop {
            let attempt = (|| -> anyhow::Result<()> {
                let Some(store) = Archive::open(&archive_config.archive)? else {
                    return Ok(());
                };
                let log = log::open(&archive_config.log, log::Access::Read)?;
                let client = store::connect(&archive_config.database.url)?;
                let mut archiver = Archiver::start(log, store, client, &archive_config.archive)?;
                archiver.run(false, &std::sync::atomic::AtomicBool::new(false), |_| {})
            })();
            match attempt {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "archiver stopped; restarting in 10 s");
                    std::thread::sleep(Duration::from_secs(10));
                }
            }
        });
    }
    let listen = config.collector.listen.clone();
    println!("Clickflow is up.");
    println!(
        "  collector:  POST http://{listen}/api/event   (site {})",
        site.0
    );
    println!(
        "  query API:  POST http://{listen}/api/v1/query  (Authorization: Bearer {})",
        site.1
    );
    println!(
        "  dashboard:  http://{listen}/sites/{}#key={}",
        site.0, site.1
    );
    println!(
        "  tracker:    {}\n              (paste it into a page served over http, e.g. by `python3 -m http.server`;\n              file: pages are not counted)",
        script_tag(&site.0, &listen, true)
    );
    println!("  health:     http://{listen}/healthz    metrics: http://{listen}/metrics");
    println!("  database:   {}", store::redact(&url));
    if !config.archive.url.trim().is_empty() {
        println!(
            "  archive:    {} (Parquet, a file per partition and day or hour)",
            config.archive.url
        );
    }
    println!("Try:\n  curl -s -X POST http://{listen}/api/v1/query -H 'Authorization: Bearer {}' -H 'content-type: application/json' \\\n    -d '{{\"site_id\":\"{}\",\"metrics\":[\"pageviews\",\"visitors\",\"events\"],\"date_range\":[\"{}\",\"{}\"],\"dimensions\":[\"time:minute\"]}}'",
        site.1, site.0, chrono::Utc::now().format("%Y-%m-%d"), chrono::Utc::now().format("%Y-%m-%d"));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(serve(config, Some(ingest_log), Some(tx)));
        if demo {
            if let Ok(collector) = rx.await {
                tokio::spawn(demo_traffic(collector, site.0.clone()));
                println!("Demo traffic is flowing into site {}.", site.0);
            }
        }
        tokio::select! {
            r = server => r.map_err(|e| anyhow::anyhow!("server task: {e}"))?,
            _ = tokio::signal::ctrl_c() => { println!("stopping"); Ok(()) }
        }
    })
}
