//! Every family end to end: HTTP (real user agents, forwarded client IPs) → Kafka → two engine
//! processes → Postgres → query API, with late, shuffled and retried events, goals with
//! properties, purchases and refunds, bots, and an erasure in the middle of the stream.
//! The expected numbers are computed here, by plain Rust over the JSON that was sent.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.71 Safari/537.36";
const SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const TIMEOUT_MS: i64 = 30 * 60_000;

/// One request as sent: site index, event JSON, user agent, forwarded client IP.
#[derive(Clone)]
struct Sent {
    site: usize,
    event: Value,
    agent: &'static str,
    ip: &'static str,
}

fn browser_of(agent: &str) -> &'static str {
    match agent {
        CHROME => "Chrome",
        SAFARI => "Safari",
        _ => "Firefox",
    }
}

fn country_of(ip: &str) -> &'static str {
    match ip {
        "8.8.8.8" => "US",
        _ => "AU",
    }
}

fn generate(seed: u64, n: usize, now: i64) -> Vec<Sent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let agents = [CHROME, SAFARI, FIREFOX];
    let ips = ["8.8.8.8", "1.1.1.1"];
    let referrers = [
        Value::Null,
        json!("https://www.google.com/search?q=shoes"),
        json!("https://t.co/abc"),
    ];
    let mut out: Vec<Sent> = Vec::new();
    let mut purchases: Vec<(usize, String, i64)> = Vec::new();
    for i in 0..n {
        if i > 10 && rng.random_bool(0.1) {
            let again = out[rng.random_range(0..out.len())].clone();
            out.push(again);
            continue;
        }
        let site = rng.random_range(0..2);
        let visitor = rng.random_range(0..25);
        // A visitor keeps their browser and address.
        let agent = agents[visitor % agents.len()];
        let ip = ips[visitor % ips.len()];
        let ts = now - rng.random_range(0..3_000_000);
        let page = ["/", "/shoes", "/cart"][rng.random_range(0..3)];
        let campaign = if rng.random_bool(0.2) {
            "?utm_source=newsletter&utm_medium=email"
        } else {
            ""
        };
        let mut e = json!({
            "name": "pageview",
            "url": format!("https://shop{site}.test{page}{campaign}"),
            "referrer": referrers[rng.random_range(0..referrers.len())],
            "event_id": format!("ev-{seed}-{i}"),
            "visitor_id": format!("visitor-{visitor}"),
            "ts": ts,
        });
        let kind = rng.random_range(0..100);
        let mut agent = agent;
        if kind < 5 {
            agent = GOOGLEBOT;
        } else if kind < 20 {
            e["name"] = json!("signup");
            let plan = ["free", "pro"][rng.random_range(0..2)];
            e["props"] = json!({ "plan": plan });
        } else if kind < 32 {
            e["name"] = json!("purchase");
            let currency = ["EUR", "USD"][rng.random_range(0..2)];
            let amount = format!(
                "{}.{:02}",
                rng.random_range(1..90),
                rng.random_range(0..100)
            );
            e["revenue"] = json!({ "amount": amount, "currency": currency });
            purchases.push((site, format!("ev-{seed}-{i}"), ts));
        } else if kind < 36 {
            if let Some((psite, id, pts)) = purchases.iter().rev().find(|p| p.0 == site).cloned() {
                e["name"] = json!("refund");
                e["refund_of"] = json!(id);
                // Refunds come from the merchant's server, not a browser.
                agent = "python-requests/2.31.0";
                e["ts"] = json!(ts.max(pts));
                let _ = psite;
            }
        }
        out.push(Sent {
            site,
            event: e,
            agent,
            ip,
        });
    }
    out
}

fn day(ts: i64, tz: Tz) -> String {
    DateTime::<Utc>::from_timestamp_millis(ts)
        .unwrap()
        .with_timezone(&tz)
        .format("%Y-%m-%d")
        .to_string()
}

/// (query name, site, day, breakdown value) → number
type Expected = BTreeMap<(String, usize, String, String), String>;

fn source_of(e: &Value) -> &'static str {
    let url = e["url"].as_str().unwrap_or_default();
    if url.contains("utm_source=newsletter") {
        return "newsletter";
    }
    match e["referrer"].as_str() {
        Some(r) if r.contains("google") => "Google",
        Some(r) if r.contains("t.co") => "Twitter",
        _ => "Direct / None",
    }
}

fn oracle(sent: &[Sent], tzs: &[Tz], erased: &HashSet<(usize, String)>) -> Expected {
    let mut seen = HashSet::new();
    let mut events: Vec<&Sent> = Vec::new();
    let mut bots: BTreeMap<(usize, String), i64> = BTreeMap::new();
    for s in sent {
        if !seen.insert((s.site, s.event["event_id"].as_str().unwrap().to_owned())) {
            continue;
        }
        let ts = s.event["ts"].as_i64().unwrap();
        if s.agent == GOOGLEBOT {
            *bots.entry((s.site, day(ts, tzs[s.site]))).or_default() += 1;
            continue;
        }
        if erased.contains(&(s.site, s.event["visitor_id"].as_str().unwrap().to_owned())) {
            continue;
        }
        events.push(s);
    }
    let refunded: HashSet<(usize, String)> = events
        .iter()
        .filter(|s| s.event["name"] == "refund")
        .map(|s| (s.site, s.event["refund_of"].as_str().unwrap().to_owned()))
        .collect();
    let activity: Vec<&Sent> = events
        .into_iter()
        .filter(|s| s.event["name"] != "refund")
        .collect();
    let mut out = Expected::new();
    let mut put = |q: &str, site: usize, d: String, v: String, n: i64| {
        let e = out
            .entry((q.to_owned(), site, d, v))
            .or_insert_with(|| "0".into());
        *e = (e.parse::<i64>().unwrap() + n).to_string();
    };
    let mut visitors: BTreeMap<(usize, String), BTreeSet<String>> = BTreeMap::new();
    let mut by_browser: BTreeMap<(usize, String, &str), BTreeSet<String>> = BTreeMap::new();
    let mut goal_visitors: BTreeMap<(usize, String, String), BTreeSet<String>> = BTreeMap::new();
    let mut revenue: BTreeMap<(usize, String, String), i64> = BTreeMap::new();
    let mut per_visitor_day: BTreeMap<(usize, String, String), Vec<&Sent>> = BTreeMap::new();
    for s in &activity {
        let ts = s.event["ts"].as_i64().unwrap();
        let d = day(ts, tzs[s.site]);
        let name = s.event["name"].as_str().unwrap();
        let visitor = s.event["visitor_id"].as_str().unwrap().to_owned();
        put(
            "pageviews",
            s.site,
            d.clone(),
            String::new(),
            (name == "pageview") as i64,
        );
        put("events", s.site, d.clone(), String::new(), 1);
        visitors
            .entry((s.site, d.clone()))
            .or_default()
            .insert(visitor.clone());
        by_browser
            .entry((s.site, d.clone(), browser_of(s.agent)))
            .or_default()
            .insert(visitor.clone());
        if name != "pageview" {
            put("conversions", s.site, d.clone(), name.to_owned(), 1);
            goal_visitors
                .entry((s.site, d.clone(), name.to_owned()))
                .or_default()
                .insert(visitor.clone());
        }
        if let Some(rev) = s.event.get("revenue") {
            if !refunded.contains(&(s.site, s.event["event_id"].as_str().unwrap().to_owned())) {
                let (whole, frac) = rev["amount"].as_str().unwrap().split_once('.').unwrap();
                let cents = whole.parse::<i64>().unwrap() * 100 + frac.parse::<i64>().unwrap();
                *revenue
                    .entry((
                        s.site,
                        d.clone(),
                        format!("{name} {}", rev["currency"].as_str().unwrap()),
                    ))
                    .or_default() += cents;
            }
        }
        per_visitor_day
            .entry((s.site, d, visitor))
            .or_default()
            .push(s);
    }
    for ((site, d), v) in visitors {
        put("visitors", site, d, String::new(), v.len() as i64);
    }
    for ((site, d, goal), v) in goal_visitors {
        put("goal_visitors", site, d, goal, v.len() as i64);
    }
    for ((site, d, browser), v) in by_browser {
        put(
            "visitors_by_browser",
            site,
            d,
            browser.to_owned(),
            v.len() as i64,
        );
    }
    for ((site, d), n) in bots {
        put("bot_events", site, d, String::new(), n);
    }
    // Visits: a visitor's events of one local day, cut at gaps over 30 minutes; attributed by
    // the first pageview. Events are sorted by time, then id, as the engine sorts ties.
    for ((site, d, _), mut evs) in per_visitor_day {
        evs.sort_by_key(|s| {
            (
                s.event["ts"].as_i64().unwrap(),
                s.event["event_id"].as_str().unwrap().to_owned(),
            )
        });
        let mut runs: Vec<Vec<&Sent>> = Vec::new();
        for s in evs {
            let ts = s.event["ts"].as_i64().unwrap();
            match runs.last_mut() {
                Some(run)
                    if ts - run.last().unwrap().event["ts"].as_i64().unwrap() <= TIMEOUT_MS =>
                {
                    run.push(s)
                }
                _ => runs.push(vec![s]),
            }
        }
        for run in runs {
            let views: Vec<&&Sent> = run
                .iter()
                .filter(|s| s.event["name"] == "pageview")
                .collect();
            let first = views.first().copied().copied().unwrap_or(run[0]);
            put("visits", site, d.clone(), String::new(), 1);
            put(
                "bounces",
                site,
                d.clone(),
                String::new(),
                (views.len() == 1 && run.len() == 1) as i64,
            );
            put(
                "visits_by_source",
                site,
                d.clone(),
                source_of(&first.event).to_owned(),
                1,
            );
            put(
                "visits_by_country",
                site,
                d.clone(),
                country_of(first.ip).to_owned(),
                1,
            );
        }
    }
    for ((site, d, key), cents) in revenue {
        out.insert(
            ("total_revenue".into(), site, d, key),
            format!("{:.2}", cents as f64 / 100.0),
        );
    }
    out.retain(|_, v| v != "0" && v != "0.00");
    out
}

/// (name, metric, breakdown) of each query asked per site and day.
const QUERIES: &[(&str, &str, &[&str])] = &[
    ("pageviews", "pageviews", &[]),
    ("events", "events", &[]),
    ("visitors", "visitors", &[]),
    ("bot_events", "bot_events", &[]),
    ("visits", "visits", &[]),
    ("bounces", "bounces", &[]),
    ("visits_by_source", "visits", &["source"]),
    ("visits_by_country", "visits", &["country"]),
    ("visitors_by_browser", "visitors", &["browser"]),
    ("conversions", "conversions", &["goal"]),
    ("goal_visitors", "visitors", &["goal"]),
    ("total_revenue", "total_revenue", &["goal", "currency"]),
];

fn observed(setup: &Setup, sites: &[(String, String)]) -> Option<Expected> {
    let now = Utc::now();
    let from = (now - chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let to = (now + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let mut out = Expected::new();
    for (i, (site, key)) in sites.iter().enumerate() {
        for (name, metric, breakdown) in QUERIES {
            let mut dims = vec!["time:day".to_string()];
            dims.extend(breakdown.iter().map(|d| d.to_string()));
            let (status, body) = post(
                &setup.url("/api/v1/query"),
                &json!({"site_id": site, "metrics": [metric], "date_range": [from, to], "dimensions": dims}),
                Some(key),
            );
            if status != 200 {
                eprintln!("{name}: {status} {body}");
                return None;
            }
            for row in body["results"].as_array()? {
                let d = dimension_values(row)?;
                let value = &row["metrics"][0];
                let shown = if value.is_f64() {
                    format!("{:.2}", value.as_f64()?)
                } else {
                    value.to_string()
                };
                if shown == "0" || shown == "0.00" {
                    continue;
                }
                out.insert(
                    (name.to_string(), i, d[0].to_owned(), d[1..].join(" ")),
                    shown,
                );
            }
        }
    }
    Some(out)
}

#[test]
fn every_family_through_kafka_and_two_engine_processes_equals_the_oracle() {
    let (brokers, topic) = fresh_topic(4);
    let db = fresh_database();
    let geo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".deps/geo/geo-whois-asn-country.mmdb");
    assert!(
        geo.exists(),
        "run scripts/install-deps.sh: {} is missing",
        geo.display()
    );
    let setup = Setup::new(&db, &LogChoice::Kafka { brokers, topic })
        .with(
            "CLICKFLOW__COLLECTOR__GEOIP_DB",
            &format!("{:?}", geo.display().to_string()),
        )
        .with(
            "CLICKFLOW__COLLECTOR__TRUSTED_PROXIES",
            "[\"127.0.0.1/32\"]",
        )
        .with("CLICKFLOW__API__ADMIN_TOKEN", "\"admin-secret\"");
    setup.run(&["migrate"]);
    let zones = [("shop0.test", "UTC"), ("shop1.test", "Europe/Paris")];
    let sites: Vec<(String, String)> = zones.iter().map(|(d, tz)| setup.add_site(d, tz)).collect();
    let tzs: Vec<Tz> = zones.iter().map(|(_, tz)| tz.parse().unwrap()).collect();
    let _server = setup.spawn(&["serve"]);
    setup.wait_healthy();
    let scratch = tempfile::tempdir().unwrap();
    let _engine = spawn_engine(&setup, 2, 1, scratch.path());

    let now = Utc::now().timestamp_millis();
    let sent = generate(7, 500, now);
    let send = |batch: &[Sent]| {
        for s in batch {
            let mut e = s.event.clone();
            e["site"] = json!(sites[s.site].0);
            // Orders and their refunds come from the merchant's server, with the site's key.
            let server = matches!(e["name"].as_str(), Some("purchase" | "refund"));
            let (status, body) = post_with(
                &setup.url("/api/event"),
                &e,
                server.then_some(sites[s.site].1.as_str()),
                &[("user-agent", s.agent), ("x-forwarded-for", s.ip)],
            );
            assert_eq!(status, 202, "{e}: {body}");
        }
    };
    let (a, b) = sent.split_at(sent.len() / 2);
    send(a);
    // Erase a visitor of site 0 mid-stream: their earlier events are retracted, later ones
    // never count.
    let (status, body) = post(
        &setup.url("/api/v1/admin/erase"),
        &json!({"site_id": sites[0].0, "visitor_id": "visitor-3"}),
        None,
    );
    assert_eq!(status, 401, "the admin token is required: {body}");
    let (status, body) = post(
        &setup.url("/api/v1/admin/erase"),
        &json!({"site_id": sites[0].0, "visitor_id": "visitor-3"}),
        Some("admin-secret"),
    );
    assert_eq!(status, 202, "{body}");
    let (status, body) = post(
        &setup.url("/api/v1/admin/erase"),
        &json!({"site_id": "nope", "visitor_id": "v"}),
        Some("admin-secret"),
    );
    assert_eq!(status, 404, "{body}");
    send(b);

    let erased: HashSet<(usize, String)> = [(0, "visitor-3".to_owned())].into();
    let want = oracle(&sent, &tzs, &erased);
    assert!(
        want.keys().any(|k| k.0 == "total_revenue"),
        "the stream has revenue"
    );
    assert!(
        want.keys().any(|k| k.0 == "bot_events"),
        "the stream has bots"
    );
    let mut last = Expected::new();
    let matched = eventually(Duration::from_secs(120), || {
        last = observed(&setup, &sites)?;
        (last == want).then_some(())
    });
    if matched.is_none() {
        let diffs: Vec<String> = want
            .iter()
            .filter(|(k, v)| last.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k:?}: want {v} got {:?}", last.get(k)))
            .chain(
                last.iter()
                    .filter(|(k, _)| !want.contains_key(*k))
                    .map(|(k, v)| format!("{k:?}: unexpected {v}")),
            )
            .take(20)
            .collect();
        panic!("the API never matched the oracle:\n{}", diffs.join("\n"));
    }
    // Visitors over the whole range, without a time dimension: the merged HyperLogLog
    // registers of the range's days, exact at this size.
    let now = Utc::now();
    let range = [
        (now - chrono::Duration::days(1))
            .format("%Y-%m-%d")
            .to_string(),
        (now + chrono::Duration::days(1))
            .format("%Y-%m-%d")
            .to_string(),
    ];
    for (i, (site, key)) in sites.iter().enumerate() {
        let distinct: HashSet<&str> = sent
            .iter()
            .filter(|s| s.site == i && s.agent != GOOGLEBOT && s.event["name"] != "refund")
            .map(|s| s.event["visitor_id"].as_str().unwrap())
            .filter(|v| !erased.contains(&(i, v.to_string())))
            .collect();
        let (status, body) = post(
            &setup.url("/api/v1/query"),
            &json!({"site_id": site, "metrics": ["visitors", "visits"], "date_range": range}),
            Some(key),
        );
        assert_eq!(status, 200, "{body}");
        assert_close(&body["results"][0]["metrics"][0], distinct.len(), &body);
        assert!(body["meta"]["estimated"]["visitors"].is_string(), "{body}");
        // …and per browser, from the breakdown's own registers.
        let (status, body) = post(
            &setup.url("/api/v1/query"),
            &json!({"site_id": site, "metrics": ["visitors"], "date_range": range, "dimensions": ["browser"]}),
            Some(key),
        );
        assert_eq!(status, 200, "{body}");
        let rows = body["results"].as_array().unwrap();
        assert!(!rows.is_empty(), "{body}");
        for row in rows {
            let browser = row["dimensions"][0].as_str().unwrap();
            let want: HashSet<&str> = sent
                .iter()
                .filter(|s| s.site == i && s.agent != GOOGLEBOT && s.event["name"] != "refund")
                .filter(|s| browser_of(s.agent) == browser)
                .map(|s| s.event["visitor_id"].as_str().unwrap())
                .filter(|v| !erased.contains(&(i, v.to_string())))
                .collect();
            assert_close(&row["metrics"][0], want.len(), &body);
        }
    }
    // Weeks and months are slots of days: pageviews add up the days' (the oracle's), visitors
    // come from the days' merged sketches. "7d" holds every event; "today" compared with
    // the previous period is today against yesterday.
    let pageviews_on = |i: usize, d: &str| -> i64 {
        want.get(&("pageviews".to_owned(), i, d.to_owned(), String::new()))
            .map_or(0, |v| v.parse().unwrap())
    };
    for (i, (site, key)) in sites.iter().enumerate() {
        let tz = tzs[i];
        // The range's days (dates in the site's zone), and today and yesterday there.
        let first = chrono::NaiveDate::parse_from_str(&range[0], "%Y-%m-%d").unwrap();
        let days: Vec<String> = (0..3)
            .map(|d| {
                (first + chrono::Days::new(d))
                    .format("%Y-%m-%d")
                    .to_string()
            })
            .collect();
        let today = now.with_timezone(&tz).date_naive();
        let yesterday = (today - chrono::Days::new(1))
            .format("%Y-%m-%d")
            .to_string();
        let today = today.format("%Y-%m-%d").to_string();
        for (period, slot_of) in [
            (
                "week",
                Box::new(|d: &str| {
                    let date = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
                    let monday = date
                        - chrono::Days::new(
                            chrono::Datelike::weekday(&date).num_days_from_monday() as u64,
                        );
                    monday.format("%Y-%m-%d").to_string()
                }) as Box<dyn Fn(&str) -> String>,
            ),
            ("month", Box::new(|d: &str| d[..7].to_owned())),
        ] {
            let (status, body) = post(
                &setup.url("/api/v1/query"),
                &json!({"site_id": site, "metrics": ["pageviews", "visitors"], "date_range": range,
                        "dimensions": [format!("time:{period}")]}),
                Some(key),
            );
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["meta"]["granularity"], period, "{body}");
            let rows = body["results"].as_array().unwrap();
            let mut slots: Vec<String> = days.iter().map(|d| slot_of(d)).collect();
            slots.dedup();
            let labels: Vec<&str> = rows
                .iter()
                .map(|r| r["dimensions"][0].as_str().unwrap())
                .collect();
            assert_eq!(labels, slots, "{body}");
            for row in rows {
                let slot = row["dimensions"][0].as_str().unwrap();
                let in_slot = |d: &str| slot_of(d) == slot;
                let pageviews: i64 = days
                    .iter()
                    .filter(|d| in_slot(d))
                    .map(|d| pageviews_on(i, d))
                    .sum();
                assert_eq!(
                    row["metrics"][0].as_i64(),
                    Some(pageviews),
                    "{period} {slot}: {body}"
                );
                let visitors: HashSet<&str> = sent
                    .iter()
                    .filter(|s| s.site == i && s.agent != GOOGLEBOT && s.event["name"] != "refund")
                    .filter(|s| in_slot(&day(s.event["ts"].as_i64().unwrap(), tz)))
                    .map(|s| s.event["visitor_id"].as_str().unwrap())
                    .filter(|v| !erased.contains(&(i, v.to_string())))
                    .collect();
                assert_close(&row["metrics"][1], visitors.len(), &body);
            }
        }
        let total: i64 = days.iter().map(|d| pageviews_on(i, d)).sum();
        let (status, body) = post(
            &setup.url("/api/v1/query"),
            &json!({"site_id": site, "metrics": ["pageviews"], "date_range": "7d"}),
            Some(key),
        );
        assert_eq!(
            (status, body["results"][0]["metrics"][0].as_i64()),
            (200, Some(total)),
            "{body}"
        );
        let (status, body) = post(
            &setup.url("/api/v1/query"),
            &json!({"site_id": site, "metrics": ["pageviews"], "date_range": "today",
                    "compare": "previous_period"}),
            Some(key),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["results"][0]["metrics"][0].as_i64(),
            Some(pageviews_on(i, &today)),
            "{body}"
        );
        assert_eq!(
            body["comparison"]["results"][0]["metrics"][0].as_i64(),
            Some(pageviews_on(i, &yesterday)),
            "{body}"
        );
    }
    // Conversion rate of one goal: its converting visitors over all of the day's visitors
    // (the filter narrows the goals, not the denominator).
    for (i, (site, key)) in sites.iter().enumerate() {
        for ((q, s, day, goal), converting) in &want {
            if q != "goal_visitors" || *s != i || goal != "signup" {
                continue;
            }
            let all: f64 = want[&("visitors".to_owned(), i, day.clone(), String::new())]
                .parse()
                .unwrap();
            let rate = (converting.parse::<f64>().unwrap() / all * 1000.0).round() / 10.0;
            let (status, body) = post(
                &setup.url("/api/v1/query"),
                &json!({"site_id": site, "metrics": ["conversion_rate"], "date_range": [day, day],
                        "dimensions": ["goal"], "filters": [["goal", "is", ["signup"]]]}),
                Some(key),
            );
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                body["results"][0]["metrics"][0].as_f64(),
                Some(rate),
                "{body}"
            );
        }
    }
    // The erasure's recompute found no sealed day to rebuild (everything is minutes old).
    let (status, body) = reqwest_get(
        &setup.url(&format!("/api/v1/admin/erasures?site_id={}", sites[0].0)),
        "admin-secret",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["erasures"][0]["status"], json!("done"), "{body}");

    // Realtime: visitors active in the last five minutes, pageviews per minute.
    let (status, body) = reqwest_get(
        &setup.url(&format!("/api/v1/realtime?site_id={}", sites[1].0)),
        &sites[1].1,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["pageviews_per_minute"].as_array().map(|a| a.len()),
        Some(30),
        "{body}"
    );
    let recent: HashSet<String> = sent
        .iter()
        .filter(|s| s.site == 1 && s.agent != GOOGLEBOT && s.event["name"] != "refund")
        .filter(|s| s.event["ts"].as_i64().unwrap() + 300_000 >= Utc::now().timestamp_millis())
        .map(|s| s.event["visitor_id"].as_str().unwrap().to_owned())
        .collect();
    let current = body["current_visitors"].as_i64().unwrap();
    // Visitors drop out as the clock moves while we ask, never in.
    assert!(
        current >= recent.len() as i64 - 3 && current <= 25,
        "{current} vs {}: {body}",
        recent.len()
    );
}

/// A HyperLogLog estimate against the exact count: at these sizes the only error is a
/// register collision (two visitors in one of 2²⁵ sparse registers, odds about n²/2²⁶),
/// which loses one visitor each.
fn assert_close(got: &Value, exact: usize, body: &Value) {
    let got = got.as_i64().unwrap_or(-1);
    let exact = exact as i64;
    assert!(
        got <= exact && got >= exact - 2,
        "estimate {got} vs exact {exact}: {body}"
    );
}

fn reqwest_get(url: &str, bearer: &str) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .get(url)
        .bearer_auth(bearer)
        .send()
        .expect("GET");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

/// The reported shortfall, end to end: a page's 59 visitors over two hours, three pairs of
/// whom share one of the 4 096 dense registers (so 4 096 registers alone read 56), read 59
/// through the query API, which merges the two hours' sketches.
#[test]
fn a_small_pages_visitors_over_hours_are_all_counted() {
    use clickflow::ingest::visitor::visitor_id_hash;
    let running = running_site_with(
        "collide.test",
        &[("CLICKFLOW__COLLECTOR__LATENESS_SECS", "86400")],
    );
    let (setup, site, key) = (&running.setup, &running.site, &running.key);
    // Visitor ids whose hashes share a dense register (top 12 bits) in pairs, and 53 more
    // alone in theirs.
    let dense = |id: &str| visitor_id_hash(site, id) >> 52;
    let mut first_in: BTreeMap<u64, String> = BTreeMap::new();
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut n = 0;
    while pairs.len() < 3 {
        let id = format!("collider-{n}");
        n += 1;
        match first_in.get(&dense(&id)) {
            Some(other) if !pairs.iter().any(|(a, _)| a == other) => {
                pairs.push((other.clone(), id));
            }
            Some(_) => {}
            None => {
                first_in.insert(dense(&id), id);
            }
        }
    }
    let taken: BTreeSet<u64> = pairs.iter().map(|(a, _)| dense(a)).collect();
    let mut ids: Vec<String> = pairs
        .iter()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    let mut used = taken.clone();
    let mut n = 0;
    while ids.len() < 59 {
        let id = format!("alone-{n}");
        n += 1;
        if used.insert(dense(&id)) {
            ids.push(id);
        }
    }
    assert_eq!(used.len(), 56, "59 visitors fill 56 dense registers");

    let now = Utc::now().timestamp_millis();
    let (early, late) = (now - 90 * 60_000, now - 30 * 60_000);
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .flat_map(|(i, id)| {
            // Every visitor in the earlier hour, every other one in the later hour too.
            let times = if i % 2 == 0 {
                vec![early]
            } else {
                vec![early, late]
            };
            times.into_iter().map(move |ts| {
                json!({"site": site, "name": "pageview", "url": "https://collide.test/small",
                       "visitor_id": id, "ts": ts, "event_id": format!("{id}-{ts}")})
            })
        })
        .collect();
    let (status, body) = post(&setup.url("/api/batch"), &json!({ "events": events }), None);
    assert_eq!(
        (status, body["accepted"].clone()),
        (202, json!(events.len())),
        "{body}"
    );

    let hour = |ms: i64| ms - ms.rem_euclid(3_600_000);
    let at = |ms: i64| {
        DateTime::<Utc>::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339()
    };
    let range = json!([at(hour(early)), at(hour(late) + 3_600_000)]);
    let got = eventually(Duration::from_secs(60), || {
        let (status, body) = post(
            &setup.url("/api/v1/query"),
            &json!({"site_id": site, "metrics": ["pageviews", "visitors"], "date_range": range,
                    "dimensions": ["page"]}),
            Some(key),
        );
        let row = body["results"].get(0).cloned()?;
        (status == 200 && row["metrics"][0] == json!(events.len())).then_some(body)
    })
    .expect("the pageviews arrive");
    assert_eq!(
        got["results"][0]["metrics"],
        json!([events.len(), 59]),
        "{got}"
    );
    assert!(
        got["meta"]["estimated"].is_object(),
        "two hours merged: {got}"
    );
}
