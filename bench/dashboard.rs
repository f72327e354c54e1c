//! The dashboard's first load on a big site: every query the page makes when it opens with
//! the 30-day preset, against Postgres holding a 30-day, 5 M-event dataset.
//!
//!     CLICKFLOW_TEST_PG=postgres://… cargo bench --bench dashboard -- [events] [loads]
//!
//! The dataset (Zipf sites, pages, visitors and sources over the 30 days ending now) goes
//! through the engine's whole pipeline and its Postgres sink once, into the database
//! `clickflow_dashboard_<events>`, which later runs reuse. Then the query API is served
//! in-process and the page's first load is replayed `loads` times for the busiest site: the
//! same queries `src/serve/web/dashboard.js` sends (six KPI cards with their comparison, the graph,
//! the first tab of five panels), at most six at a time as a browser sends them to one host.
//! Prints the first load's wall time (p50, p95, max) and each query's median.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clickflow::engine::pg_sink::PgSink;
use clickflow::serve::api::Api;
use clickflow::store;
use clickflow_dataflows::event::{Client, Revenue};
use clickflow_dataflows::{registry, Event, Record, Settings};
use common::probe_and_sink;
use differential_dataflow::input::Input;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const SITES: usize = 50;
const DAY_MS: i64 = 86_400_000;

/// Draws from 0..n with P(k) ∝ 1/(k+1)^s.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf(cdf)
    }
    fn draw(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.0.partition_point(|c| *c < u).min(self.0.len() - 1)
    }
}

const REFERRERS: &[&str] = &[
    "",
    "https://www.google.com/",
    "https://news.ycombinator.com/item",
    "https://t.co/x",
    "https://www.bing.com/",
    "https://duckduckgo.com/",
];
const COUNTRIES: &[&str] = &["US", "DE", "FR", "GB", "IN", "BR", "JP", "CA"];
const DEVICES: &[(&str, &str, &str)] = &[
    ("desktop", "Chrome", "Windows 10"),
    ("desktop", "Firefox", "Linux"),
    ("mobile", "Safari", "iOS"),
    ("mobile", "Chrome", "Android"),
    ("desktop", "Safari", "Mac OSX"),
];

/// Streams the dataset through the pipeline into Postgres; returns the site ids.
fn build(url: &str, events: u64, now: i64) -> anyhow::Result<Vec<String>> {
    let mut client = store::connect(url)?;
    store::migrate(&mut client, &Default::default())?;
    let sites: Vec<String> = (0..SITES)
        .map(|i| store::add_site(&mut client, &format!("shop{i}.test"), "UTC").map(|s| s.id))
        .collect::<anyhow::Result<_>>()?;
    let generation: i32 = client
        .query_one("SELECT generation FROM active_generation", &[])?
        .get(0);
    let settings = Settings::default();
    let ids = sites.clone();
    let url = url.to_owned();
    let started = Instant::now();
    timely::execute_directly(move |worker| {
        // Made here: a Postgres connection may not be shared between threads.
        let sink = PgSink::new(
            &url,
            generation,
            true,
            settings.seal_lateness_ms,
            Arc::new(AtomicBool::new(false)),
        );
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, records) = scope.new_collection::<Record, isize>();
            let rollup = registry::metrics(records, &settings);
            (input, probe_and_sink(rollup, sink))
        });
        let mut rng = StdRng::seed_from_u64(7);
        let (site_of, page_of, visitor_of) = (
            Zipf::new(SITES, 1.1),
            Zipf::new(200, 1.0),
            Zipf::new(500_000, 0.8),
        );
        let start = now - 30 * DAY_MS;
        let step = (30 * DAY_MS) as f64 / events as f64;
        let progress = indicatif::ProgressBar::new(events);
        let mut stepped = 0u64;
        for i in 0..events {
            let ts = start + (i as f64 * step) as i64;
            let site = site_of.draw(&mut rng);
            let visitor = visitor_of.draw(&mut rng) as u64;
            let (device, browser, os) = DEVICES[(visitor % DEVICES.len() as u64) as usize];
            let (name, revenue) = match rng.random_range(0..100) {
                0..94 => ("pageview", None),
                94..98 => ("signup", None),
                _ => (
                    "purchase",
                    Some(Revenue {
                        amount: format!("{}.00", rng.random_range(5..200)),
                        currency: "EUR".into(),
                    }),
                ),
            };
            let record = Record::Event(Event {
                site: ids[site].clone(),
                event_id: format!("e{i}"),
                name: name.into(),
                ts,
                received: ts,
                visitor: visitor.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ site as u64,
                url: format!("https://shop{site}.test/p{}", page_of.draw(&mut rng)),
                referrer: Some(REFERRERS[(visitor % REFERRERS.len() as u64) as usize].into())
                    .filter(|r: &String| !r.is_empty()),
                props: Vec::new(),
                revenue,
                refund_of: None,
                tz: "UTC".into(),
                client: Client {
                    device: device.into(),
                    browser: browser.into(),
                    browser_version: "1".into(),
                    os: os.into(),
                    os_version: "1".into(),
                },
                country: COUNTRIES[(visitor % COUNTRIES.len() as u64) as usize].into(),
            });
            // Minute epochs of ingest time: the rows are the same whatever the epochs, and a
            // sparse month in one-second epochs would be mostly per-epoch overhead.
            let t = (ts.max(0) as u64).div_ceil(60_000) * 60_000;
            if t > *input.time() {
                input.advance_to(t);
                // Keep at most about 10 000 events in flight.
                if i >= stepped + 10_000 {
                    input.flush();
                    while probe.less_than(input.time()) {
                        worker.step();
                    }
                    stepped = i;
                    progress.set_position(i);
                }
            }
            input.insert(record);
        }
        input.close();
        while worker.step() {}
        progress.finish_and_clear();
    });
    let rows: i64 = client
        .query_one("SELECT count(*) FROM rollups", &[])?
        .get(0);
    let bytes: i64 = client
        .query_one(
            "SELECT (pg_total_relation_size('rollups') + coalesce(sum(pg_total_relation_size(inhrelid)), 0))::bigint
               FROM pg_inherits WHERE inhparent = 'rollups'::regclass",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or(0);
    println!(
        "dataset: {events} events through every family in {:.0} s; {rows} rollup rows ({:.2} per event), {:.0} MiB ({:.0} B per event)",
        started.elapsed().as_secs_f64(),
        rows as f64 / events as f64,
        bytes as f64 / 1048576.0,
        bytes as f64 / events as f64
    );
    client.batch_execute("CREATE TABLE dashboard_bench_done (at timestamptz DEFAULT now())")?;
    Ok(sites)
}

/// The page's first load with `period` (`src/serve/web/dashboard.js`: cards, graph, panels).
fn first_load(site: &str, period: &str) -> Vec<(&'static str, Value)> {
    let q = |metrics: Value, dims: Value| {
        json!({"site_id": site, "metrics": metrics, "date_range": period, "dimensions": dims,
               "filters": []})
    };
    let card = |metric: &str, dims: Value| {
        let mut c = q(json!([metric]), dims);
        c["compare"] = json!("previous_period");
        c
    };
    let panel = |metrics: Value, dims: Value| {
        let mut p = q(metrics, dims);
        p["limit"] = json!(10);
        p
    };
    vec![
        ("card visitors", card("visitors", json!([]))),
        ("card visits", card("visits", json!([]))),
        ("card pageviews", card("pageviews", json!([]))),
        ("card bounce_rate", card("bounce_rate", json!([]))),
        ("card visit_duration", card("visit_duration", json!([]))),
        (
            "card revenue",
            card("total_revenue", json!(["goal", "currency"])),
        ),
        ("graph", q(json!(["visitors"]), json!(["time:day"]))),
        (
            "panel pages",
            panel(json!(["visitors", "pageviews"]), json!(["page"])),
        ),
        (
            "panel sources",
            panel(json!(["visitors", "visits"]), json!(["source"])),
        ),
        (
            "panel devices",
            panel(json!(["visitors", "visits"]), json!(["device"])),
        ),
        (
            "panel countries",
            panel(json!(["visitors", "visits"]), json!(["country"])),
        ),
        (
            "panel goals",
            panel(
                json!(["visitors", "conversions", "conversion_rate"]),
                json!(["goal"]),
            ),
        ),
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let events = args.first().copied().unwrap_or(5_000_000);
    let loads = args.get(1).copied().unwrap_or(30) as usize;
    let server = std::env::var("CLICKFLOW_TEST_PG").map_err(|_| {
        anyhow::anyhow!(
            "CLICKFLOW_TEST_PG is not set: bash scripts/test-env.sh start; source .testenv/env"
        )
    })?;
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    let name = format!("clickflow_dashboard_{events}");
    let url = format!("{base}/{name}");
    let mut admin = store::connect(&server)?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])?
        .is_some();
    let done = exists
        && store::connect(&url)?
            .query_opt(
                "SELECT 1 FROM pg_tables WHERE tablename = 'dashboard_bench_done'",
                &[],
            )?
            .is_some();
    if !done {
        if exists {
            admin.batch_execute(&format!("DROP DATABASE {name}"))?;
        }
        admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
        let now = chrono::Utc::now().timestamp_millis();
        build(&url, events, now)?;
    } else {
        println!("dataset: reusing {name}");
    }
    let mut client = store::connect(&url)?;
    // The busiest site: the most pageviews over the 30 days.
    let row = client.query_one(
        "SELECT r.site_id, s.api_key, sum((r.metrics ->> 'pageviews')::bigint)::bigint AS n
           FROM rollups r JOIN sites s ON s.id = r.site_id
          WHERE r.family = 'traffic' AND r.granularity = 'day' AND r.dimension = ''
          GROUP BY 1, 2 ORDER BY n DESC LIMIT 1",
        &[],
    )?;
    let (site, key, pageviews): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
    println!("busiest site {site}: {pageviews} pageviews in the dataset");

    let runtime = tokio::runtime::Runtime::new()?;
    let api = Arc::new(Api {
        pool: clickflow::serve::api::pool(&url, 16)?,
        log: None,
        admin: None,
        minute_retention_secs: 0,
    });
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let routes = clickflow::serve::api::routes(api);
    runtime.spawn(warp::serve(routes).incoming(listener).run());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(6)
        .build()?;
    let endpoint = format!("http://{addr}/api/v1/query");
    let queries = first_load(&site, "30d");
    let mut totals = Vec::new();
    let mut each: Vec<Vec<Duration>> = vec![Vec::new(); queries.len()];
    for round in 0..=loads {
        let began = Instant::now();
        let timings = runtime.block_on(async {
            // A browser sends at most six requests to one host at a time.
            let gate = Arc::new(tokio::sync::Semaphore::new(6));
            let tasks: Vec<_> = queries
                .iter()
                .map(|(label, body)| {
                    let (http, endpoint, key, gate) =
                        (http.clone(), endpoint.clone(), key.clone(), gate.clone());
                    let (label, body) = (*label, body.clone());
                    tokio::spawn(async move {
                        let _permit = gate.acquire_owned().await;
                        let sent = Instant::now();
                        let reply = http
                            .post(&endpoint)
                            .bearer_auth(&key)
                            .json(&body)
                            .send()
                            .await
                            .and_then(|r| r.error_for_status());
                        let answer: Value = match reply {
                            Ok(r) => r.json().await.unwrap_or(Value::Null),
                            Err(e) => panic!("{label}: {e}"),
                        };
                        assert!(answer["results"].is_array(), "{label}: {answer}");
                        sent.elapsed()
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("a query task"));
            }
            out
        });
        // The first round warms Postgres's cache and the connection pool; not counted.
        if round > 0 {
            totals.push(began.elapsed());
            for (i, t) in timings.into_iter().enumerate() {
                each[i].push(t);
            }
        }
    }
    totals.sort();
    println!(
        "dashboard first load (30d, {} queries, 6 at a time), {loads} loads: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        queries.len(),
        percentile(&totals, 0.5),
        percentile(&totals, 0.95),
        percentile(&totals, 1.0)
    );
    for ((label, _), times) in queries.iter().zip(each.iter_mut()) {
        times.sort();
        println!("  {label:<22} median {:.1} ms", percentile(times, 0.5));
    }
    Ok(())
}
