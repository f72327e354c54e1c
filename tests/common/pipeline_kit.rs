//! What the end-to-end tests of the pipeline and of the archive share: two sites, a seeded
//! stream of events (with retries, late and out of order) or three days of history written
//! straight into the log, the oracle of pageviews, events and visitors per bucket, and the
//! queries that read the same table back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::*;

pub const GRANULARITIES: [&str; 3] = ["minute", "hour", "day"];

pub struct Site {
    pub id: String,
    pub key: String,
    pub tz: Tz,
}

/// (site index, event JSON) in sending order, including client retries of earlier events.
pub fn generate(seed: u64, n: usize, now_ms: i64) -> Vec<(usize, Value)> {
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

pub fn ts_of(v: &Value) -> i64 {
    match &v["ts"] {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::String(s) => DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis(),
        _ => unreachable!(),
    }
}

pub fn label(ts: i64, granularity: &str, tz: Tz) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ts).unwrap();
    match granularity {
        "minute" => t.format("%Y-%m-%dT%H:%M:00Z").to_string(),
        "hour" => t.format("%Y-%m-%dT%H:00:00Z").to_string(),
        _ => t.with_timezone(&tz).format("%Y-%m-%d").to_string(),
    }
}

pub type Table = BTreeMap<(usize, String, String), [i64; 3]>;
pub type Tally = (i64, i64, BTreeSet<String>);

/// The oracle: pageviews, events and distinct visitors per site, granularity and bucket,
/// counting each event id once.
pub fn oracle(events: &[(usize, Value)], sites: &[Site]) -> Table {
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

pub fn send(setup: &Setup, sites: &[Site], events: &[(usize, Value)]) {
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

pub fn query_all(setup: &Setup, sites: &[Site], range: (&str, &str)) -> Option<Table> {
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

pub fn wait_for(setup: &Setup, sites: &[Site], range: (&str, &str), want: &Table) -> Table {
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

pub fn day_range() -> (String, String) {
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

pub struct Deployment {
    pub setup: Setup,
    pub sites: Vec<Site>,
    pub _server: Proc,
    pub scratch: tempfile::TempDir,
}

/// Database, schema and two sites, without the collector yet.
pub fn prepare(log: LogChoice) -> (Setup, Vec<Site>) {
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

pub fn start(setup: Setup, sites: Vec<Site>) -> Deployment {
    let server = setup.spawn(&["serve"]);
    setup.wait_healthy();
    Deployment {
        setup,
        sites,
        _server: server,
        scratch: tempfile::tempdir().unwrap(),
    }
}

pub fn deploy(log: LogChoice) -> Deployment {
    let (setup, sites) = prepare(log);
    start(setup, sites)
}

pub fn kafka() -> LogChoice {
    let (brokers, topic) = fresh_topic(4);
    LogChoice::Kafka { brokers, topic }
}

/// Writes three days of history straight into the embedded log (before the collector takes
/// it: one writer at a time), events up to two hours late, and returns what was written.
pub fn write_history(
    log_dir: &std::path::Path,
    sites: &[Site],
    seed: u64,
    now: i64,
) -> Vec<(usize, Value)> {
    use clickflow::ingest::visitor::visitor_id_hash;
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
pub fn history_range() -> (String, String) {
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
