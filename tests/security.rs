//! Security checks as tests: one site's key (or share link) never reads or changes another
//! site's data on any route; SQL-injection strings are data, nothing more; admin routes
//! refuse everyone but the admin token; raw IP addresses and user agents never reach the log
//! or Postgres.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ADMIN: &str = "cfadmin_security_test_token_0123456789";

/// A refusal: 401, 403 or 404, with a reason in `error`.
#[track_caller]
fn refused(what: &str, (status, body): (u16, Value)) {
    assert!(
        matches!(status, 401 | 403 | 404),
        "{what}: want a refusal, got {status} {body}"
    );
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: a refusal says why: {body}"
    );
}

#[test]
fn a_sites_key_or_share_link_never_reaches_another_site() {
    let running = running_site_with("a.test", &[("CLICKFLOW__API__ADMIN_TOKEN", ADMIN)]);
    let setup = &running.setup;
    let (a, key_a) = (running.site.clone(), running.key.clone());
    let (b, key_b) = setup.add_site("b.test", "UTC");
    let url = |p: &str| setup.url(p);

    // Each site gets its own pages; b's must never show up in a's answers.
    for (site, key, page) in [(&a, &key_a, "/only-a"), (&b, &key_b, "/only-b")] {
        let (status, body) = post(
            &url("/api/event"),
            &json!({"site": site, "name": "pageview", "url": format!("https://x.test{page}"), "visitor_id": "v"}),
            None,
        );
        assert_eq!(status, 202, "{body}");
        await_rollups(
            setup,
            site,
            key,
            &[("pageviews", &["page"], expect(&[(page, "1")]))],
        );
    }

    let share_of = |key: &str, site: &str| -> String {
        let (status, body) = request(
            "POST",
            &url(&format!("/api/v1/shares?site_id={site}")),
            None,
            Some(key),
        );
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().expect("token").to_string()
    };
    let share_a = share_of(&key_a, &a);
    let share_b = share_of(&key_b, &b);
    let query_b =
        json!({"site_id": b, "metrics": ["pageviews"], "date_range": "7d", "dimensions": ["page"]});

    // a's key and a's share link, on every route that names a site, against site b.
    for (who, credential) in [
        ("a's key", key_a.as_str()),
        ("a's share link", share_a.as_str()),
    ] {
        refused(
            &format!("{who}: query b"),
            request(
                "POST",
                &url("/api/v1/query"),
                Some(&query_b),
                Some(credential),
            ),
        );
        refused(
            &format!("{who}: realtime of b"),
            request(
                "GET",
                &url(&format!("/api/v1/realtime?site_id={b}")),
                None,
                Some(credential),
            ),
        );
        refused(
            &format!("{who}: share b"),
            request(
                "POST",
                &url(&format!("/api/v1/shares?site_id={b}")),
                None,
                Some(credential),
            ),
        );
        refused(
            &format!("{who}: revoke b's link"),
            request(
                "DELETE",
                &url(&format!("/api/v1/shares/{share_b}")),
                None,
                Some(credential),
            ),
        );
        refused(
            &format!("{who}: erasures of b"),
            request(
                "GET",
                &url(&format!("/api/v1/admin/erasures?site_id={b}")),
                None,
                Some(credential),
            ),
        );
        refused(
            &format!("{who}: erase in b"),
            request(
                "POST",
                &url("/api/v1/admin/erase"),
                Some(&json!({"site_id": b, "visitor_id": "v"})),
                Some(credential),
            ),
        );
        // Events that speak for b's visitors (their user agent) need b's own key.
        refused(
            &format!("{who}: server-side event for b"),
            request(
                "POST",
                &url("/api/event"),
                Some(
                    &json!({"site": b, "name": "pageview", "url": "https://b.test/forged",
                             "user_agent": BROWSER_UA}),
                ),
                Some(credential),
            ),
        );
        refused(
            &format!("{who}: GA4 Measurement Protocol into b"),
            request(
                "POST",
                &url(&format!(
                    "/mp/collect?measurement_id={b}&api_secret={credential}"
                )),
                Some(&json!({"client_id": "1.2", "events": [{"name": "page_view",
                    "params": {"page_location": "https://b.test/forged"}}]})),
                None,
            ),
        );
    }
    // A share link reads, and does nothing else, even for its own site.
    refused(
        "a's share link: share a",
        request(
            "POST",
            &url(&format!("/api/v1/shares?site_id={a}")),
            None,
            Some(&share_a),
        ),
    );
    refused(
        "a's share link: revoke itself",
        request(
            "DELETE",
            &url(&format!("/api/v1/shares/{share_a}")),
            None,
            Some(&share_a),
        ),
    );

    // b's link was not revoked, nothing was forged into b, and a's own reads never show b.
    let (status, body) = request(
        "GET",
        &url(&format!("/api/v1/shares/{share_b}")),
        None,
        None,
    );
    assert_eq!(
        (status, body["site_id"].as_str()),
        (200, Some(b.as_str())),
        "{body}"
    );
    let (status, body) = request("POST", &url("/api/v1/query"), Some(&query_b), Some(&key_b));
    assert_eq!(status, 200, "{body}");
    let pages: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["dimensions"][0].as_str())
        .collect();
    assert_eq!(pages, ["/only-b"], "{body}");
    for credential in [&key_a, &share_a] {
        let (status, body) = request(
            "POST",
            &url("/api/v1/query"),
            Some(
                &json!({"site_id": a, "metrics": ["pageviews"], "date_range": "7d", "dimensions": ["page"]}),
            ),
            Some(credential),
        );
        assert_eq!(status, 200, "{body}");
        assert!(!body.to_string().contains("only-b"), "{body}");
    }
}

#[test]
fn admin_routes_answer_only_the_admin_token() {
    let running = running_site_with("admin.test", &[("CLICKFLOW__API__ADMIN_TOKEN", ADMIN)]);
    let (setup, site, key) = (&running.setup, &running.site, &running.key);
    let (status, body) = request(
        "POST",
        &setup.url(&format!("/api/v1/shares?site_id={site}")),
        None,
        Some(key),
    );
    assert_eq!(status, 201, "{body}");
    let share = body["token"].as_str().unwrap().to_string();
    let erase = json!({"site_id": site, "visitor_id": "someone"});
    let erasures = setup.url(&format!("/api/v1/admin/erasures?site_id={site}"));
    let wrong = format!("{ADMIN}x");
    let near = &ADMIN[..ADMIN.len() - 1];
    for (who, credential) in [
        ("nobody", None),
        ("the site's key", Some(key.as_str())),
        ("a share link", Some(share.as_str())),
        ("a longer token", Some(wrong.as_str())),
        ("a prefix of the token", Some(near)),
    ] {
        refused(
            &format!("{who}: erase"),
            request(
                "POST",
                &setup.url("/api/v1/admin/erase"),
                Some(&erase),
                credential,
            ),
        );
        refused(
            &format!("{who}: erasures"),
            request("GET", &erasures, None, credential),
        );
    }
    let (status, body) = request(
        "POST",
        &setup.url("/api/v1/admin/erase"),
        Some(&erase),
        Some(ADMIN),
    );
    assert_eq!(status, 202, "{body}");
    let (status, body) = request("GET", &erasures, None, Some(ADMIN));
    assert_eq!(status, 200, "{body}");

    // Without api.admin_token the admin routes are off, whatever is presented.
    let plain = running_site("noadmin.test");
    let (status, body) = request(
        "POST",
        &plain.setup.url("/api/v1/admin/erase"),
        Some(&json!({"site_id": plain.site, "visitor_id": "someone"})),
        Some(""),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("disabled"),
        "{body}"
    );
}

#[test]
fn injection_strings_are_only_data() {
    let running = running_site("inject.test");
    let (setup, site, key) = (&running.setup, &running.site, &running.key);
    let nasty = [
        "'; DROP TABLE rollups; --",
        "x' OR '1'='1",
        "\" OR 1=1 --",
        "$1",
        "%' --",
        "); DELETE FROM sites; --",
        "\\'; SELECT pg_sleep(10); --",
    ];
    // As event names (the goal dimension) and as a prop value, one visitor each.
    let events: Vec<Value> = nasty
        .iter()
        .enumerate()
        .map(|(i, n)| {
            json!({"site": site, "name": n, "url": "https://inject.test/", "visitor_id": format!("v{i}"),
                   "props": {"plan": n}})
        })
        .collect();
    let (status, body) = post(&setup.url("/api/batch"), &json!({"events": events}), None);
    assert_eq!(status, 202, "{body}");
    let each: Vec<(&str, &str)> = nasty.iter().map(|n| (*n, "1")).collect();
    let with_plan: Vec<(String, &str)> = nasty.iter().map(|n| (format!("{n} {n}"), "1")).collect();
    let with_plan: Vec<(&str, &str)> = with_plan.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    await_rollups(
        setup,
        site,
        key,
        &[
            ("conversions", &["goal"], expect(&each)),
            ("conversions", &["goal", "prop:plan"], expect(&with_plan)),
        ],
    );

    let query = |q: Value| {
        let mut q = q;
        q["site_id"] = json!(site);
        post(&setup.url("/api/v1/query"), &q, Some(key))
    };
    // As filter values: each matches exactly its own event.
    for n in nasty {
        for dim in ["goal", "prop:plan"] {
            let (status, body) = query(json!({"metrics": ["conversions"], "date_range": "7d",
                "dimensions": ["goal", "prop:plan"], "filters": [[dim, "is", [n]]]}));
            assert_eq!(status, 200, "{dim} is {n:?}: {body}");
            let rows: Vec<(&Value, &Value)> = body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (&r["dimensions"], &r["metrics"][0]))
                .collect();
            assert_eq!(
                rows,
                [(&json!([n, n]), &json!(1))],
                "{dim} is {n:?}: {body}"
            );
        }
    }
    // As names of metrics, dimensions, filter dimensions, operators, sites: 4xx with reasons.
    for n in nasty {
        for q in [
            json!({"metrics": [n], "date_range": "7d"}),
            json!({"metrics": ["events"], "date_range": "7d", "dimensions": [n]}),
            json!({"metrics": ["events"], "date_range": "7d", "filters": [[n, "is", ["x"]]]}),
            json!({"metrics": ["events"], "date_range": "7d", "filters": [["goal", n, ["x"]]]}),
            json!({"metrics": ["events"], "date_range": n}),
        ] {
            let (status, body) = query(q.clone());
            assert_eq!(status, 400, "{q}: {body}");
            assert!(body["error"].is_string(), "{q}: {body}");
        }
        let (status, body) = post(
            &setup.url("/api/v1/query"),
            &json!({"site_id": n, "metrics": ["events"], "date_range": "7d"}),
            Some(key),
        );
        assert_eq!(status, 403, "{body}");
    }
    // Everything is still there.
    let mut sql = postgres::Client::connect(
        &setup
            .vars
            .iter()
            .find(|(k, _)| k == "DATABASE_URL")
            .unwrap()
            .1,
        postgres::NoTls,
    )
    .unwrap();
    let sites: i64 = sql
        .query_one("SELECT count(*) FROM sites", &[])
        .unwrap()
        .get(0);
    assert_eq!(sites, 1);
    let (status, body) = query(json!({"metrics": ["events"], "date_range": "7d"}));
    assert_eq!(
        (status, body["results"][0]["metrics"][0].as_i64()),
        (200, Some(nasty.len() as i64)),
        "{body}"
    );
}

#[test]
fn raw_ips_and_user_agents_never_reach_the_log_the_archive_or_postgres() {
    let running = running_site_with(
        "private.test",
        &[(
            "CLICKFLOW__COLLECTOR__TRUSTED_PROXIES",
            "[\"127.0.0.1/32\"]",
        )],
    );
    let (setup, site, key) = (&running.setup, &running.site, &running.key);
    // Distinctive values: nothing else in the system could contain them.
    let agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Zq7TrackedAgent/42.7";
    let agent_token = "Zq7TrackedAgent";
    let forwarded = "198.51.100.203";
    let on_behalf_ip = "203.0.113.177";
    let on_behalf_agent = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15 Xv9ServerSide/3.1";
    let on_behalf_token = "Xv9ServerSide";

    // A browser behind the trusted proxy, and a server speaking for a visitor.
    let (status, body) = post_with(
        &setup.url("/api/event"),
        &json!({"site": site, "name": "pageview", "url": "https://private.test/marker-page-a", "referrer": ""}),
        None,
        &[("user-agent", agent), ("x-forwarded-for", forwarded)],
    );
    assert_eq!(status, 202, "{body}");
    let (status, body) = post(
        &setup.url("/api/event"),
        &json!({"site": site, "name": "pageview", "url": "https://private.test/b",
                "ip": on_behalf_ip, "user_agent": on_behalf_agent}),
        Some(key),
    );
    assert_eq!(status, 202, "{body}");
    await_rollups(
        setup,
        site,
        key,
        &[
            ("pageviews", &[], expect(&[("", "2")])),
            (
                "visitors",
                &["browser"],
                expect(&[("Chrome", "1"), ("Safari", "1")]),
            ),
        ],
    );
    std::thread::sleep(Duration::from_millis(500));

    let secrets = [agent_token, forwarded, on_behalf_ip, on_behalf_token];
    // The search must see what is there: the page is kept, in the log and in Postgres.
    let marker = "marker-page-a";
    let mut marker_seen = (false, false);
    // Every byte of the log.
    let mut files = vec![running.scratch.path().join("log")];
    let mut searched = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        searched += bytes.len();
        marker_seen.0 |= bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s} found in {}",
                path.display()
            );
        }
    }
    assert!(searched > 0, "the log holds the events");
    // Every record of the archive, decompressed (compressed bytes would hide anything).
    let archived = setup.run(&["archive", "--once"]);
    assert!(
        String::from_utf8_lossy(&archived.stdout).starts_with("archived "),
        "{}",
        String::from_utf8_lossy(&archived.stdout)
    );
    let mut files = vec![running.scratch.path().join("log-archive")];
    let mut archive_marker = false;
    let mut parquet_files = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let name = path.display().to_string();
        let Some(partition) = name
            .split("partition=")
            .nth(1)
            .and_then(|rest| rest.get(..5))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        parquet_files += 1;
        let mut cursor = clickflow::store::archive::format::FileCursor::open(
            std::fs::File::open(&path).unwrap(),
            partition,
        )
        .unwrap();
        while let Some(records) = cursor.next_group(0).unwrap() {
            for r in records {
                let text = [r.key, r.value].concat();
                archive_marker |= text.windows(marker.len()).any(|w| w == marker.as_bytes());
                for s in secrets {
                    assert!(
                        !text.windows(s.len()).any(|w| w == s.as_bytes()),
                        "{s} found in archive file {name}"
                    );
                }
            }
        }
    }
    assert!(
        parquet_files > 0 && archive_marker,
        "the archive holds the page"
    );
    // Every row of every table, as text.
    let database = setup.database_url();
    let mut sql = postgres::Client::connect(database, postgres::NoTls).unwrap();
    let tables: Vec<String> = sql
        .query(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.iter().any(|t| t.ends_with("rollups")), "{tables:?}");
    let mut rows = 0;
    for table in &tables {
        let text: Option<String> = sql
            .query_one(
                &format!("SELECT string_agg(t::text, E'\\n') FROM {table} t"),
                &[],
            )
            .unwrap()
            .get(0);
        let text = text.unwrap_or_default();
        rows += text.lines().count();
        marker_seen.1 |= text.contains(marker);
        for s in secrets {
            assert!(!text.contains(s), "{s} found in table {table}");
        }
    }
    assert!(rows > 0);
    assert_eq!(
        marker_seen,
        (true, true),
        "the page is found in (log, Postgres)"
    );
}

/// Revenue is changed only by the site's server. A refund needs the site's key, and events
/// sent with the key live in an id namespace of their own: an anonymous sender can neither
/// refund an order nor post a fake purchase under a real order's number ahead of it (the
/// real one would have counted as its duplicate).
#[test]
fn only_the_sites_server_refunds_or_names_its_orders() {
    let running = running_site("shop.test");
    let (setup, site, key) = (&running.setup, &running.site, &running.key);
    let url = setup.url("/api/event");
    let purchase = |id: &str, amount: &str| {
        json!({"site": site, "name": "purchase", "url": "https://shop.test/thanks", "event_id": id,
               "visitor_id": "buyer", "revenue": {"amount": amount, "currency": "EUR"}})
    };
    let refund = |of: &str| {
        json!({"site": site, "name": "refund", "event_id": format!("refund-{of}"), "refund_of": of,
               "visitor_id": "buyer"})
    };
    let server = "python-requests/2.31.0";

    // (A server's purchases name the visitor's browser, or they would count as bot hits;
    // here the header does.)
    let (status, body) = post(&url, &purchase("T-1001", "10.00"), Some(key));
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["event_id"],
        json!("T-1001"),
        "ids are answered as sent"
    );
    refused("an anonymous refund", post(&url, &refund("T-1001"), None));
    refused(
        "a refund with another key",
        post_as(&url, &refund("T-1001"), Some("cfk_wrong"), server),
    );
    // A fake purchase posted first under the next order's number counts as what it is, an
    // anonymous purchase; the real order still counts.
    let (status, body) = post(&url, &purchase("T-1002", "1.00"), None);
    assert_eq!(status, 202, "{body}");
    let (status, body) = post(&url, &purchase("T-1002", "50.00"), Some(key));
    assert_eq!(status, 202, "{body}");
    // The keyed namespace is not writable anonymously.
    let (status, body) = post(&url, &purchase("key:T-1003", "5.00"), None);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("reserved"),
        "{body}"
    );
    // The server's refund takes its order back.
    let (status, body) = post_as(&url, &refund("T-1001"), Some(key), server);
    assert_eq!(status, 202, "{body}");
    await_rollups(
        setup,
        site,
        key,
        &[(
            "total_revenue",
            &["goal", "currency"],
            expect(&[("purchase EUR", "51")]),
        )],
    );
}

/// With `api.listen` set, the public listener serves ingest and its health probe, nothing
/// else: queries, share links, the dashboard, admin actions and metrics answer only on the
/// API's own listener.
#[test]
fn a_separate_api_listener_takes_the_api_off_the_public_one() {
    let db = fresh_database();
    let scratch = tempfile::tempdir().unwrap();
    let api_listen = format!("127.0.0.1:{}", free_port());
    let setup = Setup::embedded(&db, scratch.path().join("log"))
        .with("CLICKFLOW__API__LISTEN", &format!("{api_listen:?}"))
        .with("CLICKFLOW__API__ADMIN_TOKEN", &format!("{ADMIN:?}"));
    setup.run(&["migrate"]);
    let (site, key) = setup.add_site("apart.test", "UTC");
    let _server = setup.spawn(&["serve"]);
    setup.wait_healthy();
    let api_url = |p: &str| format!("http://{api_listen}{p}");
    let query = json!({"site_id": site, "metrics": ["pageviews"], "date_range": "7d"});

    let (status, body) = post(
        &setup.url("/api/event"),
        &json!({"site": site, "name": "pageview", "url": "https://apart.test/"}),
        None,
    );
    assert_eq!(status, 202, "ingest stays public: {body}");
    let public_only = [
        ("POST", "/api/v1/query"),
        ("GET", &format!("/api/v1/realtime?site_id={site}")),
        ("POST", &format!("/api/v1/shares?site_id={site}")),
        ("GET", "/metrics"),
        ("GET", &format!("/sites/{site}")),
        ("GET", &format!("/api/v1/admin/erasures?site_id={site}")),
    ];
    for (method, path) in public_only {
        let (status, body) = request(method, &setup.url(path), Some(&query), Some(&key));
        assert_eq!(
            status, 404,
            "{method} {path} on the public listener: {body}"
        );
    }
    let (status, body) = post(&api_url("/api/v1/query"), &query, Some(&key));
    assert_eq!(status, 200, "the API listener answers queries: {body}");
    let (status, _) = request("GET", &api_url("/metrics"), None, None);
    assert_eq!(status, 200, "metrics on the API listener");
    let (status, _) = request("GET", &setup.url("/healthz"), None, None);
    assert_eq!(status, 200, "the public health probe");
}

/// When Postgres is down, anonymous clients learn that they should retry, not the
/// database's error text (addresses, users, SQL); the operator finds it in the log.
#[test]
fn database_errors_stay_in_the_log() {
    let db = fresh_database();
    let scratch = tempfile::tempdir().unwrap();
    let setup = Setup::embedded(&db, scratch.path().join("log"));
    setup.run(&["migrate"]);
    let (site, key) = setup.add_site("down.test", "UTC");
    // The same server, but a database name that does not exist, and then a closed port.
    let server = db.rsplit_once('/').unwrap().0;
    let closed = format!("postgres://nobody@127.0.0.1:{}/none", free_port());
    for url in [format!("{server}/no_such_database_x"), closed] {
        let down = setup.clone().with("DATABASE_URL", &url);
        let _server = down.spawn(&["serve"]);
        let answered = eventually(Duration::from_secs(30), || {
            reqwest::blocking::get(down.url("/js/clickflow.js")).ok()
        });
        assert!(answered.is_some(), "serve starts without its database");
        let replies = [
            post(
                &down.url("/api/event"),
                &json!({"site": site, "name": "pageview", "url": "https://down.test/"}),
                None,
            ),
            post(
                &down.url("/api/v1/query"),
                &json!({"site_id": site, "metrics": ["pageviews"], "date_range": "7d"}),
                Some(&key),
            ),
            request("GET", &down.url("/healthz"), None, None),
        ];
        for (status, body) in replies {
            assert_eq!(status, 503, "{url}: {body}");
            let reason = body["error"].as_str().unwrap_or_default().to_lowercase();
            assert!(!reason.is_empty(), "a reason: {body}");
            for internal in [
                "db error",
                "no_such_database",
                "connection refused",
                "127.0.0.1",
                "nobody",
                "postgres",
                "error connecting",
            ] {
                assert!(!reason.contains(internal), "{url}: {internal:?} in {body}");
            }
        }
    }
}
