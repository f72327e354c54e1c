//! Fuzzing on stable Rust, shared by `bench/fuzz.rs` (millions of inputs) and `tests/fuzz.rs`
//! (a smoke run in the suite): generated inputs, JSON that is mostly the shape a parser
//! expects, with every field at times missing, of the wrong type, empty, huge, or made of
//! awkward text, and sometimes not JSON at all; and the three targets that feed them through
//! Clickflow's parsers.

// Shared by the fuzz bench and its smoke test; each uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use clickflow::config::{CollectorConfig, LogConfig};
use clickflow_dataflows::event::Client;
use clickflow_dataflows::symbol::Interner;
use clickflow_dataflows::{Event, Hit, Record};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

/// Text that has broken parsers before: empty, whitespace, quotes, control and
/// right-to-left characters, surrogates' neighbours, long runs, numbers as text, URLs that are
/// almost URLs.
const AWKWARD: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "\t\n\r",
    "'",
    "\"",
    "\\",
    "%",
    "%00",
    "%zz",
    "😀",
    "\u{202e}gnp.exe",
    "\u{feff}",
    "\u{fffd}",
    "ß",
    "İ",
    "NaN",
    "-0",
    "1e309",
    "99999999999999999999999",
    "-9223372036854775809",
    "0x10",
    "null",
    "[]",
    "{}",
    "http://",
    "https://",
    "https:///path",
    "https://[::1",
    "https://example.com:99999/",
    "https://例え.jp/パス?q=値#frag",
    "https://a.test/#!/x",
    "https://a.test/?utm_source=&utm_medium=%ff",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "android-app://com.google.android.gm/",
    "//no-scheme.test/x",
    "Mozilla/5.0",
    "Googlebot/2.1",
    "curl/8.0",
    "python-requests/2.31",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "2026-02-30",
    "2026-11-26T25:00:00Z",
    "today",
    "30d",
    "-5d",
    "99999999d",
    "time:hour",
    "time:",
    "prop:",
    "prop:plan",
    "goal",
    "is",
    "contains",
    "'; DROP TABLE rollups; --",
];

pub fn text(rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        0..5 => AWKWARD[rng.random_range(0..AWKWARD.len())].to_string(),
        5 => (0..rng.random_range(0..40))
            .map(|_| char::from_u32(rng.random_range(0..0x11000)).unwrap_or('?'))
            .collect(),
        6 => "x".repeat(rng.random_range(100..5000)),
        7 => format!(
            "https://{}.test/{}?{}",
            ["a", "b", "www.c"][rng.random_range(0..3)],
            AWKWARD[rng.random_range(0..AWKWARD.len())],
            AWKWARD[rng.random_range(0..AWKWARD.len())]
        ),
        _ => format!(
            "{}{}",
            AWKWARD[rng.random_range(0..AWKWARD.len())],
            rng.random::<u16>()
        ),
    }
}

pub fn number(rng: &mut StdRng) -> Value {
    match rng.random_range(0..6) {
        0 => json!(rng.random::<i64>()),
        1 => json!(rng.random::<u64>()),
        2 => json!(rng.random::<f64>() * 1e12 - 5e11),
        3 => json!(0),
        4 => json!(-1),
        _ => json!(1_800_000_000_000i64 + rng.random_range(-10_000_000_000i64..10_000_000_000)),
    }
}

/// Any JSON value, up to `depth` levels deep.
pub fn any(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => number(rng),
        3 | 4 => json!(text(rng)),
        5 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| any(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.random_range(0..4) {
                m.insert(text(rng), any(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

/// `good` most of the time, anything else sometimes, or nothing (`None`: leave it out).
fn field(rng: &mut StdRng, good: Value) -> Option<Value> {
    match rng.random_range(0..10) {
        0 => None,
        1 => Some(any(rng, 2)),
        2 => Some(json!(text(rng))),
        _ => Some(good),
    }
}

/// An event for the collector: Clickflow's own shape, Plausible's, or a mixture.
pub fn event(rng: &mut StdRng, site: &str) -> Value {
    let mut m = Map::new();
    let site_value = if rng.random_bool(0.8) {
        json!(site)
    } else {
        json!(text(rng))
    };
    let plausible = rng.random_bool(0.2);
    let name = [
        "pageview",
        "signup",
        "purchase",
        "refund",
        "Outbound Link: Click",
    ][rng.random_range(0..5)];
    let url = format!("https://shop.test/{}", text(rng));
    let put = |m: &mut Map<String, Value>, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    if plausible {
        put(
            &mut m,
            ["domain", "d"][rng.random_range(0..2)],
            field(rng, json!("shop.test")),
        );
        put(
            &mut m,
            ["name", "n"][rng.random_range(0..2)],
            field(rng, json!(name)),
        );
        put(
            &mut m,
            ["url", "u"][rng.random_range(0..2)],
            field(rng, json!(url)),
        );
        put(&mut m, ["referrer", "r"][rng.random_range(0..2)], {
            let good = json!(text(rng));
            field(rng, good)
        });
        put(&mut m, ["props", "p"][rng.random_range(0..2)], {
            let good = json!({"plan": text(rng)});
            field(rng, good)
        });
        put(&mut m, ["revenue", "$"][rng.random_range(0..2)], {
            let good = json!({"amount": text(rng), "currency": "EUR"});
            field(rng, good)
        });
    } else {
        put(&mut m, "site", Some(site_value));
        put(&mut m, "name", field(rng, json!(name)));
        put(&mut m, "url", field(rng, json!(url)));
        put(&mut m, "referrer", {
            let good = json!(text(rng));
            field(rng, good)
        });
        put(&mut m, "event_id", {
            let good = json!(text(rng));
            field(rng, good)
        });
        put(&mut m, "visitor_id", {
            let good = json!(text(rng));
            field(rng, good)
        });
        put(&mut m, "ts", {
            let good = number(rng);
            field(rng, good)
        });
        put(&mut m, "props", {
            let good = json!({ text(rng): any(rng, 1) });
            field(rng, good)
        });
        put(&mut m, "revenue", {
            let good = json!({"amount": text(rng), "currency": text(rng)});
            field(rng, good)
        });
        if name == "refund" || rng.random_bool(0.05) {
            put(&mut m, "refund_of", {
                let good = json!(text(rng));
                field(rng, good)
            });
        }
        if rng.random_bool(0.05) {
            put(&mut m, "user_agent", Some(json!(text(rng))));
        }
        if rng.random_bool(0.05) {
            put(&mut m, "ip", Some(json!(text(rng))));
        }
    }
    if rng.random_bool(0.1) {
        m.insert(text(rng), any(rng, 2));
    }
    Value::Object(m)
}

/// A request body for an ingest route: one event, a batch, JSON of another shape, or bytes
/// that are not JSON.
pub fn ingest_body(rng: &mut StdRng, site: &str) -> Vec<u8> {
    let value = match rng.random_range(0..10) {
        0..5 => event(rng, site),
        5..7 => {
            json!({"events": (0..rng.random_range(0..8)).map(|_| event(rng, site)).collect::<Vec<_>>()})
        }
        7 => {
            let name = ["page_view", "purchase", "refund", "x"][rng.random_range(0..4)];
            json!({"client_id": text(rng), "events": [{"name": name,
              "params": {"page_location": text(rng), "value": number(rng), "currency": text(rng), "transaction_id": text(rng)}}]})
        }
        8 => any(rng, 3),
        _ => {
            let mut bytes = serde_json::to_vec(&event(rng, site)).unwrap_or_default();
            let cut = rng.random_range(0..=bytes.len());
            bytes.truncate(cut);
            if rng.random_bool(0.5) {
                bytes.push(rng.random());
            }
            return bytes;
        }
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// A query for the query API, mostly well-formed.
pub fn query(rng: &mut StdRng, site: &str) -> Value {
    let metrics = [
        "visitors",
        "visits",
        "pageviews",
        "events",
        "bounce_rate",
        "visit_duration",
        "views_per_visit",
        "conversions",
        "conversion_rate",
        "total_revenue",
        "entries",
        "exits",
        "current_visitors",
    ];
    let dims = [
        "time:minute",
        "time:hour",
        "time:day",
        "time:week",
        "time:month",
        "page",
        "source",
        "channel",
        "referrer",
        "device",
        "browser",
        "os",
        "country",
        "goal",
        "currency",
        "prop:plan",
        "utm_source",
    ];
    let pick = |rng: &mut StdRng, from: &[&str]| -> Value {
        if rng.random_bool(0.9) {
            json!(from[rng.random_range(0..from.len())])
        } else {
            json!(text(rng))
        }
    };
    let mut m = Map::new();
    let put = |m: &mut Map<String, Value>, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put(&mut m, "site_id", field(rng, json!(site)));
    let ms: Vec<Value> = (0..rng.random_range(0..4))
        .map(|_| pick(rng, &metrics))
        .collect();
    put(&mut m, "metrics", field(rng, json!(ms)));
    let ds: Vec<Value> = (0..rng.random_range(0..3))
        .map(|_| pick(rng, &dims))
        .collect();
    put(&mut m, "dimensions", field(rng, json!(ds)));
    let preset = ["today", "7d", "30d", "month", "last_month", "yesterday"][rng.random_range(0..6)];
    let range = match rng.random_range(0..4) {
        0 => json!(preset),
        1 => json!([text(rng), text(rng)]),
        2 => json!(["2026-11-01", "2026-11-26"]),
        _ => json!([
            format!(
                "2026-{:02}-{:02}",
                rng.random_range(0..14),
                rng.random_range(0..33)
            ),
            "2026-11-26"
        ]),
    };
    put(&mut m, "date_range", field(rng, range));
    if rng.random_bool(0.4) {
        let f = json!([[
            pick(rng, &dims),
            pick(rng, &["is", "is_not", "contains", "matches"]),
            [text(rng)]
        ]]);
        put(&mut m, "filters", field(rng, f));
    }
    if rng.random_bool(0.2) {
        put(&mut m, "compare", field(rng, json!("previous_period")));
    }
    if rng.random_bool(0.2) {
        put(&mut m, "limit", {
            let good = number(rng);
            field(rng, good)
        });
    }
    Value::Object(m)
}

/// Runs `f` on input `i`; a panic is reported with the input, then re-raised.
fn guarded<T>(what: &str, i: u64, input: &dyn std::fmt::Debug, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{what}: input #{i} panicked: {input:?}");
            std::panic::resume_unwind(e)
        }
    }
}

pub fn enrich(n: u64, seed: u64) -> BTreeMap<&'static str, u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let enricher = clickflow::ingest::client::Enricher::new(None).expect("enricher");
    let mut words = Interner::default();
    let mut out = BTreeMap::new();
    for i in 0..n {
        if i % 10_000 == 0 {
            words = Interner::default();
        }
        if i % 4 == 0 {
            let mut bytes: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) {
                bytes.insert(0, b'{');
            }
            let decoded = guarded("decode", i, &bytes, || Record::decode_all(&bytes).is_ok());
            *out.entry(if decoded { "decoded" } else { "undecodable" })
                .or_default() += 1;
            continue;
        }
        let agent = text(&mut rng);
        let event = Event {
            site: text(&mut rng),
            event_id: text(&mut rng),
            name: text(&mut rng),
            ts: rng.random(),
            received: rng.random(),
            visitor: rng.random(),
            url: text(&mut rng),
            referrer: rng.random_bool(0.7).then(|| text(&mut rng)),
            props: (0..rng.random_range(0..3))
                .map(|_| (text(&mut rng), text(&mut rng)))
                .collect(),
            revenue: None,
            refund_of: None,
            tz: ["UTC", "Europe/Paris", "Nowhere/Land", ""][rng.random_range(0..4)].into(),
            client: Client::default(),
            country: text(&mut rng),
        };
        let seen = format!("{event:?} agent {agent:?}");
        guarded("enrich", i, &seen, || {
            let client = enricher.client(&agent);
            let bot = enricher.is_bot(&agent);
            let hit = Hit::intern(Event { client, ..event }, &mut words);
            std::hint::black_box((hit, bot));
        });
        *out.entry("enriched").or_default() += 1;
    }
    out
}

pub fn query_target(n: u64, seed: u64) -> BTreeMap<&'static str, u64> {
    use clickflow::serve::query::{parse, plan, Query};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    let zones = [
        chrono_tz::Tz::UTC,
        chrono_tz::Tz::Europe__Paris,
        chrono_tz::Tz::Pacific__Kiritimati,
    ];
    for i in 0..n {
        let body = query(&mut rng, "cf_site");
        let tz = zones[rng.random_range(0..zones.len())];
        let now = 1_795_000_000_000i64 + rng.random_range(0..100_000_000_000i64);
        let outcome = guarded("query", i, &body, || {
            let Ok(q) = serde_json::from_value::<Query>(body.clone()) else {
                return "not a query";
            };
            match parse::parse(&q, tz, now) {
                Err(_) => "refused by parse",
                Ok(r) => match plan::plan(&r) {
                    Err(_) => "refused by plan",
                    Ok(p) => {
                        std::hint::black_box(p.buckets.len());
                        "planned"
                    }
                },
            }
        });
        *out.entry(outcome).or_default() += 1;
    }
    out
}

pub fn ingest(n: u64, seed: u64) -> anyhow::Result<BTreeMap<String, u64>> {
    let server = std::env::var("CLICKFLOW_TEST_PG")
        .map_err(|_| anyhow::anyhow!("ingest needs CLICKFLOW_TEST_PG (source .testenv/env)"))?;
    let database = format!("clickflow_fuzz_{}", std::process::id());
    let mut admin = clickflow::store::connect(&server)?;
    // Separate statements: CREATE DATABASE cannot share an implicit transaction.
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {database}"))?;
    admin.batch_execute(&format!("CREATE DATABASE {database}"))?;
    let url = format!(
        "{}/{database}",
        server.rsplit_once('/').map(|(b, _)| b).unwrap_or(&server)
    );
    let mut client = clickflow::store::connect(&url)?;
    clickflow::store::migrate(&mut client, &Default::default())?;
    let site = clickflow::store::add_site(&mut client, "shop.test", "UTC")?;
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let routes = runtime.block_on(async {
        let log = clickflow::log::open(
            &LogConfig {
                dir: dir.path().join("log"),
                fsync: false,
                ..Default::default()
            },
            clickflow::log::Access::Append,
        )?;
        let pool = clickflow::serve::api::pool(&url, 4)?;
        let collector = Arc::new(clickflow::ingest::Collector::new(
            CollectorConfig::default(),
            log,
            pool,
        )?);
        anyhow::Ok(clickflow::ingest::routes(collector).recover(clickflow::http::recover))
    })?;
    use warp::Filter;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    let progress = indicatif::ProgressBar::new(n);
    for i in 0..n {
        let body = ingest_body(&mut rng, &site.id);
        let path = match rng.random_range(0..6) {
            0..3 => "/api/event".to_string(),
            3 | 4 => "/api/batch".to_string(),
            _ => format!(
                "/mp/collect?measurement_id={}&api_secret={}",
                if rng.random_bool(0.8) {
                    site.id.as_str()
                } else {
                    "cf_nope"
                },
                if rng.random_bool(0.8) {
                    site.api_key.as_str()
                } else {
                    "wrong"
                }
            ),
        };
        let content_type = [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
        ][rng.random_range(0..4)];
        let agent = text(&mut rng);
        let reply = runtime.block_on(
            warp::test::request()
                .method("POST")
                .path(&path)
                .header("content-type", content_type)
                .header(
                    "user-agent",
                    agent.replace(|c: char| c.is_control() || !c.is_ascii(), ""),
                )
                .remote_addr(([127, 0, 0, 1], 40000).into())
                .body(body.clone())
                .reply(&routes),
        );
        let status = reply.status().as_u16();
        let reason = serde_json::from_slice::<serde_json::Value>(reply.body())
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned));
        let fine = (200..300).contains(&status)
            || ((400..500).contains(&status) && reason.as_deref().is_some_and(|r| !r.is_empty()));
        if !fine {
            anyhow::bail!(
                "ingest input #{i}: {path} answered {status} {:?} to {:?}",
                String::from_utf8_lossy(reply.body()),
                String::from_utf8_lossy(&body)
            );
        }
        *out.entry(status.to_string()).or_default() += 1;
        if i % 1000 == 0 {
            progress.set_position(i);
        }
    }
    progress.finish_and_clear();
    Ok(out)
}
