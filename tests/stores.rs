//! Both stores, side by side: plain Postgres (monthly partitions) and TimescaleDB (a
//! hypertable, compressed once sealed). The same events through two pipelines give the same
//! answer to every query, before and after the Timescale chunks are compressed, and after
//! more late events land in compressed chunks; the minute retention drops minute rows only.
//! `migrate` says which store it chose, and why not the other.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const SITE: &str = "cf_stores_test";
const KEY: &str = "cfk_stores_test_key";
const DAY_MS: i64 = 86_400_000;
/// Events reach 9 days back: lateness is 10 days in these runs.
const LATENESS_SECS: &str = "864000";
const MINUTE_RETENTION_SECS: &str = "172800";

fn timescale_server() -> String {
    let url = env("CLICKFLOW_TEST_TIMESCALE");
    assert!(
        !url.is_empty(),
        "no TimescaleDB test server: scripts/install-deps.sh --tests builds TimescaleDB from ../shared/timescaledb and scripts/test-env.sh starts it"
    );
    url
}

/// One store running the whole pipeline: its own database, log, `serve` and engine, with
/// the same site (id, key) as the other, so that visitor hashes, and so the sketches, are
/// identical in both.
struct Store {
    name: &'static str,
    database: String,
    setup: Setup,
    _server: Proc,
    _engine: Vec<Proc>,
    _scratch: tempfile::TempDir,
}

impl Store {
    fn start(name: &'static str, server: &str, store: &str) -> Store {
        let database = fresh_database_on(server);
        let scratch = tempfile::tempdir().expect("scratch dir");
        let setup = Setup::embedded(&database, scratch.path().join("log"))
            .with("CLICKFLOW__DATABASE__STORE", store)
            .with("CLICKFLOW__COLLECTOR__LATENESS_SECS", LATENESS_SECS)
            .with("CLICKFLOW__DATABASE__COMPRESS_AFTER_SECS", "1209600")
            .with(
                "CLICKFLOW__DATABASE__MINUTE_RETENTION_SECS",
                MINUTE_RETENTION_SECS,
            );
        setup.run(&["migrate"]);
        let mut client = postgres::Client::connect(&database, postgres::NoTls).expect("connect");
        client
            .execute(
                "INSERT INTO sites (id, domain, time_zone, api_key) VALUES ($1, 'stores.test', 'Europe/Paris', $2)",
                &[&SITE, &KEY],
            )
            .expect("site");
        let (server, engine) = serve_and_engine(&setup, scratch.path());
        Store {
            name,
            database,
            setup,
            _server: server,
            _engine: engine,
            _scratch: scratch,
        }
    }

    fn query(&self, q: &Value) -> (u16, Value) {
        let mut q = q.clone();
        q["site_id"] = json!(SITE);
        post(&self.setup.url("/api/v1/query"), &q, Some(KEY))
    }

    fn sql(&self) -> postgres::Client {
        postgres::Client::connect(&self.database, postgres::NoTls).expect("connect")
    }

    fn events(&self) -> Option<i64> {
        let (status, body) = self.query(&json!({"metrics": ["events"], "date_range": "30d"}));
        (status == 200).then(|| body["results"][0]["metrics"][0].as_i64())?
    }
}

/// `n` events of `visitors` visitors over the days `days` back from now, at least an hour
/// old (so every visit has ended), from a seeded generator.
fn events(seed: u64, n: usize, days: std::ops::Range<i64>) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = chrono::Utc::now().timestamp_millis();
    let pages = [
        "/",
        "/pricing",
        "/docs",
        "/blog/launch",
        "/signup",
        "/about",
    ];
    let referrers = [
        "",
        "https://www.google.com/",
        "https://news.ycombinator.com/item",
        "https://twitter.com/x",
    ];
    let agents = [
        BROWSER_UA,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    ];
    (0..n)
        .map(|i| {
            let day = rng.random_range(days.clone());
            let ts = now - DAY_MS * day - rng.random_range(3_600_000..DAY_MS / 2);
            let page = pages[rng.random_range(0..pages.len())];
            let campaign = if rng.random_bool(0.2) {
                "?utm_source=newsletter&utm_medium=email&utm_campaign=launch"
            } else {
                ""
            };
            let mut e = json!({
                "site": SITE, "name": "pageview",
                "url": format!("https://stores.test{page}{campaign}"),
                "referrer": referrers[rng.random_range(0..referrers.len())],
                "visitor_id": format!("v{}", rng.random_range(0..60)),
                "user_agent": agents[rng.random_range(0..agents.len())],
                "ts": ts, "event_id": format!("s{seed}-{i}"),
            });
            if page == "/signup" && rng.random_bool(0.4) {
                e["name"] = json!("signup");
                let plan = ["free", "pro"][rng.random_range(0..2)];
                e["props"] = json!({ "plan": plan });
            } else if page == "/pricing" && rng.random_bool(0.3) {
                e["name"] = json!("purchase");
                e["revenue"] =
                    json!({"amount": format!("{}.50", rng.random_range(5..90)), "currency": "EUR"});
            }
            e
        })
        .collect()
}

/// Posts `events` to every store, in batches; each must accept them all.
fn post_all(stores: &[&Store], events: &[Value]) {
    for store in stores {
        for chunk in events.chunks(200) {
            let (status, body) = post(
                &store.setup.url("/api/batch"),
                &json!({ "events": chunk }),
                // The key lets a server name each visitor's user agent.
                Some(KEY),
            );
            assert_eq!(
                (status, body["accepted"].as_u64()),
                (202, Some(chunk.len() as u64)),
                "{}: {body}",
                store.name
            );
        }
    }
}

/// What a merchant asks: totals, time series at every granularity, every breakdown, goals,
/// revenue, a filter and a comparison.
fn questions() -> Vec<Value> {
    let range = json!("10d");
    let mut qs = vec![
        json!({"metrics": ["visitors", "visits", "pageviews", "events", "bounce_rate", "visit_duration", "views_per_visit"], "date_range": range}),
        json!({"metrics": ["visitors", "pageviews", "visits"], "date_range": range, "dimensions": ["time:day"]}),
        json!({"metrics": ["pageviews", "visitors"], "date_range": range, "dimensions": ["time:hour"]}),
        json!({"metrics": ["visitors"], "date_range": range, "dimensions": ["time:week"]}),
        json!({"metrics": ["visitors", "pageviews"], "date_range": "month", "dimensions": ["time:month"]}),
        json!({"metrics": ["pageviews"], "date_range": "yesterday", "dimensions": ["time:minute"]}),
        json!({"metrics": ["visitors", "pageviews"], "date_range": range, "dimensions": ["page"]}),
        json!({"metrics": ["entries"], "date_range": range, "dimensions": ["page"]}),
        json!({"metrics": ["exits"], "date_range": range, "dimensions": ["page"]}),
        json!({"metrics": ["total_revenue", "revenue_events"], "date_range": range, "dimensions": ["goal", "currency"]}),
        json!({"metrics": ["visitors", "conversions", "conversion_rate"], "date_range": range, "dimensions": ["goal"]}),
        json!({"metrics": ["visits", "bounce_rate"], "date_range": range, "filters": [["source", "is", ["Google"]]]}),
        json!({"metrics": ["visitors", "pageviews"], "date_range": "7d", "compare": "previous_period"}),
    ];
    for dim in [
        "source",
        "channel",
        "referrer",
        "utm_source",
        "utm_campaign",
        "device",
        "browser",
        "os",
        "country",
    ] {
        qs.push(
            json!({"metrics": ["visitors", "visits"], "date_range": range, "dimensions": [dim]}),
        );
    }
    qs
}

/// Every question's answer (results and comparison) from `store`.
fn answers(store: &Store) -> Vec<Value> {
    questions()
        .iter()
        .map(|q| {
            let (status, body) = store.query(q);
            assert_eq!(status, 200, "{}: {q}: {body}", store.name);
            json!({"results": body["results"], "comparison": body["comparison"]})
        })
        .collect()
}

/// Waits until both stores hold `events` events and give the same answer to every
/// question; fails with the first difference otherwise. Returns the answers.
fn agree(plain: &Store, timescale: &Store, events: i64, when: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let counts = (plain.events(), timescale.events());
        if counts == (Some(events), Some(events)) {
            let (a, b) = (answers(plain), answers(timescale));
            let differ = questions()
                .into_iter()
                .zip(a.iter().zip(&b))
                .find(|(_, (x, y))| x != y);
            match differ {
                None => return a,
                Some((q, (x, y))) if Instant::now() > deadline => {
                    panic!("{when}: the stores answer {q} differently:\nplain:     {x}\ntimescale: {y}")
                }
                Some(_) => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "{when}: events stored (plain, timescale) = {counts:?}, want {events} in each"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn bytes(store: &Store) -> i64 {
    store
        .sql()
        .query_one("SELECT hypertable_size('rollups')", &[])
        .expect("hypertable_size")
        .get(0)
}

#[test]
fn both_stores_answer_alike_through_compression_and_retention() {
    let timescale_url = timescale_server();
    // CLICKFLOW_TEST_PG is the Timescale server when the suite runs again on it.
    let plain = Store::start("plain", &env("CLICKFLOW_TEST_PLAIN"), "postgres");
    let timescale = Store::start("timescale", &timescale_url, "timescale");
    let layout = |s: &Store| -> i64 {
        s.sql()
            .query_one(
                "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'rollups'::regclass",
                &[],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!((layout(&plain), layout(&timescale)), (1, 0));

    let first = events(1, 1500, 0..9);
    post_all(&[&plain, &timescale], &first);
    let before = agree(&plain, &timescale, first.len() as i64, "as written");
    assert!(
        before[0]["results"][0]["metrics"][0].as_f64() > Some(10.0),
        "visitors: {}",
        before[0]
    );

    // Compress every chunk that has rows of those days (not the timeless realtime chunk, at
    // 4000-01-01). Counted afterwards: the compression policy may already have compressed
    // the older chunk, and which weekly chunks the days fall in depends on today's date;
    // nine days always span two.
    let mut ts = timescale.sql();
    let uncompressed = bytes(&timescale);
    ts.execute(
        "SELECT compress_chunk(c, if_not_compressed => true)
           FROM show_chunks('rollups', older_than => '3000-01-01'::timestamptz) c",
        &[],
    )
    .expect("compress_chunk");
    let compressed: i64 = ts
        .query_one(
            "SELECT count(*) FROM timescaledb_information.chunks
              WHERE hypertable_name = 'rollups' AND is_compressed
                AND range_end < '3000-01-01'::timestamptz",
            &[],
        )
        .expect("compressed chunks")
        .get(0);
    assert!(compressed >= 2, "{compressed} chunks compressed");
    let after = bytes(&timescale);
    eprintln!(
        "rollups of {} events: {uncompressed} B as written, {after} B compressed ({compressed} chunks)",
        first.len()
    );
    assert_eq!(
        answers(&timescale),
        before,
        "compressed chunks answer as before"
    );

    // Late events into days whose chunks are compressed: the sink rewrites rows there.
    let late = events(2, 600, 1..9);
    post_all(&[&plain, &timescale], &late);
    let total = (first.len() + late.len()) as i64;
    let grown = agree(
        &plain,
        &timescale,
        total,
        "after late events into compressed chunks",
    );
    assert_ne!(grown, before);

    // Minute retention: `serve` drops old minute rows hourly; `clickflow retention` now.
    // (`serve` first runs it ten minutes after start: not within this test.)
    let old_minutes = |sql: &mut postgres::Client| -> i64 {
        sql.query_one(
            "SELECT count(*) FROM rollups WHERE granularity = 'minute' AND family <> 'realtime'
                AND bucket < now() - make_interval(secs => $1)",
            &[&MINUTE_RETENTION_SECS.parse::<f64>().unwrap()],
        )
        .unwrap()
        .get(0)
    };
    for store in [&plain, &timescale] {
        let mut sql = store.sql();
        let old = old_minutes(&mut sql);
        assert!(old > 0, "{}: no minute rows to drop", store.name);
        let out = store.setup.run(&["retention"]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.starts_with(&format!("dropped {old} minute rows")),
            "{}: {old} to drop; {said}",
            store.name
        );
        let left = old_minutes(&mut sql);
        let old_hours: i64 = sql
            .query_one(
                "SELECT count(*) FROM rollups WHERE granularity = 'hour' AND bucket < now() - interval '3 days'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "{}: old minute rows left", store.name);
        assert!(old_hours > 0, "{}: hour rows must stay", store.name);
        let (status, body) = store.query(
            &json!({"metrics": ["pageviews"], "dimensions": ["time:minute"],
            "date_range": [day(-5), day(-5)]}),
        );
        assert_eq!(status, 400, "{}: {body}", store.name);
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("minute_retention_secs")),
            "{}: {body}",
            store.name
        );
    }
    assert_eq!(
        agree(&plain, &timescale, total, "after retention"),
        grown,
        "retention changed no answer inside it"
    );
}

/// `migrate` picks TimescaleDB where it is ready, says why not where it is installed but not
/// preloaded, and keeps the compression policy in line with the setting.
#[test]
fn migrate_names_the_store_and_why() {
    let timescale_url = timescale_server();
    let on = |server: &str, store: &str| {
        Setup::embedded(
            &fresh_database_on(server),
            std::env::temp_dir().join("unused"),
        )
        .with("CLICKFLOW__DATABASE__STORE", store)
        .with("RUST_LOG", "warn")
    };
    let said = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    // The plain test server has the extension installed (the same PostgreSQL) but not
    // preloaded: "auto" falls back and says why, "timescale" refuses and says what to do.
    let plain = env("CLICKFLOW_TEST_PLAIN");
    let out = on(&plain, "auto").run(&["migrate"]);
    let text = said(&out);
    assert!(text.contains("plain Postgres"), "{text}");
    assert!(text.contains("shared_preload_libraries"), "{text}");
    let out = on(&plain, "timescale")
        .command(&["migrate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(said(&out).contains("not preloaded"), "{}", said(&out));

    // On the Timescale server: a hypertable, compression segmented by site, ordered by bucket,
    // and one compression policy, which follows the setting when it changes.
    let setup = on(&timescale_url, "auto");
    let text = said(&setup.run(&["migrate"]));
    assert!(text.contains("TimescaleDB hypertable"), "{text}");
    let database = setup
        .vars
        .iter()
        .find(|(k, _)| k == "DATABASE_URL")
        .map(|(_, v)| v.clone())
        .unwrap();
    let mut sql = postgres::Client::connect(&database, postgres::NoTls).unwrap();
    let settings: Vec<(String, Option<i16>, Option<i16>)> = sql
        .query(
            "SELECT attname, segmentby_column_index, orderby_column_index
               FROM timescaledb_information.compression_settings WHERE hypertable_name = 'rollups'
              ORDER BY segmentby_column_index NULLS LAST, orderby_column_index",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(settings[0], ("site_id".into(), Some(1), None));
    assert!(
        settings.contains(&("bucket".into(), None, Some(1))),
        "{settings:?}"
    );
    let policies = |sql: &mut postgres::Client| -> Vec<String> {
        sql.query(
            "SELECT config->>'compress_after' FROM timescaledb_information.jobs
              WHERE proc_name = 'policy_compression' AND hypertable_name = 'rollups'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    assert_eq!(policies(&mut sql), vec!["3 days".to_string()]);
    setup
        .clone()
        .with("CLICKFLOW__DATABASE__COMPRESS_AFTER_SECS", "432000")
        .run(&["migrate"]);
    assert_eq!(policies(&mut sql), vec!["5 days".to_string()]);
}
