//! The tracker in a real browser: Debian's Chromium, headless, driven through chromedriver
//! (WebDriver), on a test site served on loopback. The rollups afterwards must equal exactly
//! what the browser did: nothing lost, nothing twice.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use warp::Filter;

/// Chromium's own user agent says "HeadlessChrome", which the collector counts as a bot, as
/// it should: visitors get the user agents of ordinary desktop browsers.
const DESKTOP_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

struct Driver {
    _process: Proc,
    url: String,
}

/// chromedriver on a free port, ready for sessions.
fn chromedriver() -> Driver {
    let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromedriver is missing: run scripts/install-deps.sh (Debian's chromium-driver)");
    let port = free_port();
    let child = Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let process = Proc(child);
    let url = format!("http://127.0.0.1:{port}");
    let ready = eventually(Duration::from_secs(20), || {
        reqwest::blocking::get(format!("{url}/status"))
            .ok()
            .filter(|r| r.status().is_success())
    });
    assert!(ready.is_some(), "chromedriver never answered on {url}");
    Driver {
        _process: process,
        url,
    }
}

/// A headless Chromium session with its own empty profile and the given user agent.
async fn browser(driver: &Driver, user_agent: &str, profile: &std::path::Path) -> Client {
    let args = json!([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        format!("--user-data-dir={}", profile.display()),
        format!("--user-agent={user_agent}"),
    ]);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": "/usr/bin/chromium", "args": args}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session from chromedriver")
}

/// The merchant's test site: pages carrying the tracker tag, and SPA buttons.
fn merchant_site(
    collector: &str,
    site: &str,
) -> impl Filter<Extract = (warp::reply::Html<String>,), Error = warp::Rejection> + Clone {
    let tag = move |extra: &str| {
        format!(
            r#"<script defer data-site="{site}" data-allow-localhost data-outbound data-downloads {extra} src="{collector}/js/clickflow.js"></script>"#
        )
    };
    let page = |title: &str, head: String, body: &str| {
        format!("<!doctype html><html><head><title>{title}</title>{head}</head><body>{body}</body></html>")
    };
    let home = page(
        "Home",
        tag(""),
        r##"<button id="pricing" onclick="history.pushState({}, '', '/pricing')">Pricing</button>
        <button id="signup" onclick="clickflow('signup', {props: {plan: 'pro'}, revenue: {amount: '12.50', currency: 'EUR'}})">Sign up</button>"##,
    );
    let queued = page(
        "Queued",
        // The README's snippet: calls made before the tracker loads wait in a queue.
        format!(
            r#"<script>window.clickflow = window.clickflow || function () {{ (clickflow.q = clickflow.q || []).push(arguments) }}; clickflow("early", {{props: {{when: "before load"}}}});</script>{}"#,
            tag("")
        ),
        "queued",
    );
    let app = page(
        "Hash app",
        tag("data-hash"),
        r##"<a id="settings" href="#/settings">Settings</a> <a id="anchor" href="#top">Top</a>"##,
    );
    let landing = page(
        "Landing",
        tag(""),
        r##"<a id="out" href="https://example.org/partner" onclick="event.preventDefault()">Partner</a>
        <a id="pdf" href="/files/report.pdf" onclick="event.preventDefault()">Report</a>"##,
    );
    let pages: BTreeMap<&'static str, String> = [
        ("", home.clone()),
        ("pricing", home),
        ("queued.html", queued),
        ("app.html", app),
        ("landing", landing),
    ]
    .into_iter()
    .collect();
    warp::path::tail().and_then(move |tail: warp::path::Tail| {
        let found = pages.get(tail.as_str()).cloned();
        async move {
            found
                .map(warp::reply::html)
                .ok_or_else(warp::reject::not_found)
        }
    })
}

/// Another site (not tracked) that links to the merchant's landing page.
fn referring_site(
    landing: String,
) -> impl Filter<Extract = (warp::reply::Html<String>,), Error = warp::Rejection> + Clone {
    warp::path!("ref").map(move || {
        warp::reply::html(format!(
            r#"<!doctype html><html><body><a id="in" href="{landing}">Visit the shop</a></body></html>"#
        ))
    })
}

async fn serve<F>(routes: F) -> SocketAddr
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    addr
}

/// Waits until the page's document has loaded and the tracker has run.
async fn loaded(b: &Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let ready = b
            .execute("return document.readyState == 'complete' && typeof window.clickflow == 'function' && !window.clickflow.q", vec![])
            .await
            .ok();
        if ready == Some(Value::Bool(true)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the page never loaded its tracker");
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[test]
fn what_the_browser_did_is_what_the_rollups_say() {
    let running = running_site("shop.test");
    let (setup, site, key, scratch) = (
        &running.setup,
        &running.site,
        &running.key,
        &running.scratch,
    );
    let driver = chromedriver();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shop = runtime.block_on(serve(merchant_site(&setup.url(""), site)));
    let shop = format!("http://127.0.0.1:{}", shop.port());
    // Another host name than the shop's: Chromium sends it as the referrer's origin.
    let other = runtime.block_on(serve(referring_site(format!("{shop}/landing"))));
    let other = format!("http://localhost:{}", other.port());

    runtime.block_on(async {
        // Visitor A: a direct visit (document.referrer is ""), a single-page app, a reload.
        let a = browser(&driver, BROWSER_UA, &scratch.path().join("profile-a")).await;
        a.goto(&format!("{shop}/")).await.unwrap();
        loaded(&a).await;
        click(&a, "#pricing").await; // pageview /pricing
        click(&a, "#pricing").await; // the same URL again: no pageview
        a.execute("history.replaceState({}, '', '/pricing')", vec![])
            .await
            .unwrap(); // nor here
        click(&a, "#signup").await; // custom event with props and revenue
                                    // The second pushState made a history entry of its own: back to /pricing (the same
                                    // URL, no pageview), then back to / (popstate: a pageview).
        a.back().await.unwrap();
        a.back().await.unwrap();
        a.refresh().await.unwrap(); // a reload of /: a pageview
        loaded(&a).await;
        // Opted out: this reload sends nothing.
        a.execute("localStorage.clickflow_ignore = 'true'", vec![])
            .await
            .unwrap();
        a.refresh().await.unwrap();
        loaded(&a).await;
        a.execute("localStorage.removeItem('clickflow_ignore')", vec![])
            .await
            .unwrap();
        a.goto(&format!("{shop}/app.html")).await.unwrap(); // pageview /app.html
        loaded(&a).await;
        click(&a, "#settings").await; // hash route: pageview /app.html#/settings
                                      // In hash mode any hash change is a route: #top is /app.html again.
        click(&a, "#anchor").await;
        a.goto(&format!("{shop}/queued.html")).await.unwrap(); // pageview, then "early"
        loaded(&a).await;
        a.close().await.unwrap();

        // Visitor B: arrives from a link on another site, clicks out, downloads a file.
        let b = browser(&driver, DESKTOP_MAC, &scratch.path().join("profile-b")).await;
        b.goto(&format!("{other}/ref")).await.unwrap();
        click(&b, "#in").await; // pageview /landing, referred by localhost
        loaded(&b).await;
        click(&b, "#out").await;
        click(&b, "#pdf").await;
        b.close().await.unwrap();
    });

    // In the browser: 9 pageviews (A: / three times, /pricing, /app.html twice, its route
    // /settings, /queued.html; B: /landing) and 4 custom events. Nothing more: the replayed
    // URLs and the opted-out reload sent nothing.
    let download = format!("File Download {shop}/files/report.pdf");
    let want: Vec<Want> = vec![
        ("pageviews", &[], expect(&[("", "9")])),
        ("events", &[], expect(&[("", "13")])),
        ("visitors", &[], expect(&[("", "2")])),
        (
            "pageviews",
            &["page"],
            expect(&[
                ("/", "3"),
                ("/pricing", "1"),
                ("/app.html", "2"),
                ("/app.html#/settings", "1"),
                ("/queued.html", "1"),
                ("/landing", "1"),
            ]),
        ),
        (
            "conversions",
            &["goal"],
            expect(&[
                ("signup", "1"),
                ("early", "1"),
                ("Outbound Link: Click", "1"),
                ("File Download", "1"),
            ]),
        ),
        (
            "conversions",
            &["goal", "prop:url"],
            expect(&[
                ("Outbound Link: Click https://example.org/partner", "1"),
                (&download, "1"),
            ]),
        ),
        (
            "conversions",
            &["goal", "prop:plan"],
            expect(&[("signup pro", "1")]),
        ),
        (
            "total_revenue",
            &["goal", "currency"],
            expect(&[("signup EUR", "12.5")]),
        ),
        (
            "visits",
            &["source"],
            expect(&[("Direct / None", "1"), ("localhost", "1")]),
        ),
    ];
    await_rollups(setup, site, key, &want);
    // And the collector accepted exactly those 13 events, none of them from a bot: a
    // duplicate send would have had an id of its own and shown above, a bot hit here.
    let metrics = reqwest::blocking::get(setup.url("/metrics"))
        .and_then(|r| r.text())
        .unwrap();
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        counter("clickflow_events_accepted_total "),
        13.0,
        "{metrics}"
    );
    assert_eq!(counter("clickflow_bot_events_total "), 0.0, "{metrics}");
}

/// Runs `script` (which returns a value) in the page until it returns true.
async fn until(b: &Client, script: &str, what: &str) {
    until_within(b, script, what, Duration::from_secs(20)).await
}

async fn until_within(b: &Client, script: &str, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if b.execute(script, vec![]).await.ok() == Some(Value::Bool(true)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the dashboard never showed {what}");
}

/// Every KPI card, the graph and every panel have their answers (a number or a reason).
const SETTLED: &str = "return [...document.querySelectorAll('.kpi .value')].every(v => v.dataset.value !== undefined || v.textContent == '—')
    && document.getElementById('graph').dataset.values !== undefined
    && [...document.querySelectorAll('.panel .table')].every(t => !t.textContent.includes('Loading'))";

/// What the page shows: KPI values, graph values, and each panel's rows as
/// `[dimension value, [metric values]]`, as the page's data-value attributes carry them.
const SHOWN: &str = "return {
    kpis: Object.fromEntries([...document.querySelectorAll('.kpi')].map(k => [k.id.slice(4), k.querySelector('.value').dataset.value ?? null])),
    kpi_text: Object.fromEntries([...document.querySelectorAll('.kpi')].map(k => [k.id.slice(4), k.querySelector('.value').textContent])),
    graph: JSON.parse(document.getElementById('graph').dataset.values || 'null'),
    panels: Object.fromEntries([...document.querySelectorAll('.panel')].map(p => [p.id.slice(6),
        [...p.querySelectorAll('tr.row')].map(r => [r.querySelector('td').textContent,
            [...r.querySelectorAll('td[data-value]')].map(td => Number(td.dataset.value))])])),
    chips: [...document.querySelectorAll('.chip')].map(c => c.textContent),
    live: document.getElementById('current-visitors').dataset.value,
    url: location.search
}";

fn api_query(setup: &Setup, site: &str, key: &str, body: Value) -> Value {
    let mut q = body;
    q["site_id"] = json!(site);
    let (status, answer) = post(&setup.url("/api/v1/query"), &q, Some(key));
    assert_eq!(status, 200, "{q}: {answer}");
    answer
}

#[test]
fn the_dashboard_shows_the_apis_numbers_and_filters_by_a_click() {
    let running = running_site("shop.test");
    let (setup, site, key, scratch) = (
        &running.setup,
        &running.site,
        &running.key,
        &running.scratch,
    );

    // A seeded morning: visitors from three sources on four pages, some converting.
    let now = chrono::Utc::now().timestamp_millis();
    let referrers = [
        "https://www.google.com/",
        "https://news.ycombinator.com/item",
        "",
    ];
    let pages = ["/", "/pricing", "/docs", "/blog/launch"];
    let mut events = Vec::new();
    for v in 0..40u64 {
        let referrer = referrers[(v % 3) as usize];
        for p in 0..=(v % 4) {
            events.push(
                json!({"site": site, "name": "pageview", "visitor_id": format!("v{v}"),
                "url": format!("https://shop.test{}", pages[p as usize]), "referrer": referrer,
                "ts": now - ((40 - v) * 60_000) as i64 + p as i64 * 10_000}),
            );
        }
        if v % 5 == 0 {
            events.push(
                json!({"site": site, "name": "signup", "visitor_id": format!("v{v}"),
                "url": "https://shop.test/pricing", "ts": now - ((40 - v) * 60_000) as i64 + 50_000,
                "revenue": {"amount": "19.00", "currency": "EUR"}}),
            );
        }
    }
    let (status, body) = post(&setup.url("/api/batch"), &json!({"events": events}), None);
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(events.len() as u64)),
        "{body}"
    );
    await_rollups(
        setup,
        site,
        key,
        &[("visitors", &[], expect(&[("", "40")]))],
    );
    // Visits close when their visitor has been idle for 30 minutes: wait for sessions.
    let driver = chromedriver();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let screenshots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let dashboard = setup.url(&format!("/sites/{site}?period=today#key={key}"));

    let (before, after) = runtime.block_on(async {
        let b = browser(&driver, BROWSER_UA, &scratch.path().join("profile-d")).await;
        b.set_window_size(1280, 1500).await.unwrap();
        b.goto(&dashboard).await.unwrap();
        until(&b, SETTLED, "every number").await;
        let before = b.execute(SHOWN, vec![]).await.unwrap();
        std::fs::write(
            screenshots.join("dashboard-desktop.png"),
            b.screenshot().await.unwrap(),
        )
        .unwrap();
        b.set_window_size(390, 1800).await.unwrap();
        std::fs::write(
            screenshots.join("dashboard-mobile.png"),
            b.screenshot().await.unwrap(),
        )
        .unwrap();
        b.set_window_size(1280, 1000).await.unwrap();
        // A click on the Google row of the sources panel filters the whole dashboard.
        let google = b
            .find(Locator::Css("#panel-sources tr.row[data-name='Google']"))
            .await
            .expect("a Google row in the sources panel");
        google.click().await.unwrap();
        until(
            &b,
            "return document.querySelectorAll('.chip').length == 1",
            "a filter chip",
        )
        .await;
        until(&b, SETTLED, "every number under the filter").await;
        let after = b.execute(SHOWN, vec![]).await.unwrap();
        b.close().await.unwrap();
        (before, after)
    });

    // Every KPI is the API's own answer for the same query.
    let today = |metrics: Value, dims: Value, filters: Value| {
        api_query(
            setup,
            site,
            key,
            json!({"metrics": metrics, "date_range": "today",
            "dimensions": dims, "filters": filters}),
        )
    };
    for (kpi, metric) in [
        ("visitors", "visitors"),
        ("visits", "visits"),
        ("pageviews", "pageviews"),
        ("bounce_rate", "bounce_rate"),
        ("visit_duration", "visit_duration"),
    ] {
        let want = &today(json!([metric]), json!([]), json!([]))["results"][0]["metrics"][0];
        let shown: f64 = before["kpis"][kpi].as_str().unwrap().parse().unwrap();
        assert_eq!(shown, want.as_f64().unwrap(), "KPI {kpi}: {before}");
    }
    let revenue = today(
        json!(["total_revenue"]),
        json!(["goal", "currency"]),
        json!([]),
    );
    let eur: f64 = revenue["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["dimensions"][1] == "EUR")
        .map(|r| r["metrics"][0].as_f64().unwrap())
        .sum();
    assert!(eur > 0.0, "{revenue}");
    assert_eq!(
        before["kpis"]["revenue"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap(),
        eur,
        "{before}"
    );
    assert_eq!(
        before["kpi_text"]["revenue"],
        format!("EUR {eur:.2}"),
        "{before}"
    );
    let visitors =
        today(json!(["visitors"]), json!([]), json!([]))["results"][0]["metrics"][0].clone();
    assert_eq!(
        before["kpi_text"]["visitors"],
        visitors.to_string(),
        "{before}"
    );
    // The graph, hour by hour.
    let graph = today(json!(["visitors"]), json!(["time:hour"]), json!([]));
    let series: Vec<&Value> = graph["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["metrics"][0])
        .collect();
    assert_eq!(
        before["graph"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        series,
        "{before}"
    );
    // Each panel's first tab: its rows and numbers.
    for (panel, dims, metrics) in [
        ("pages", json!(["page"]), json!(["visitors", "pageviews"])),
        ("sources", json!(["source"]), json!(["visitors", "visits"])),
        ("devices", json!(["device"]), json!(["visitors", "visits"])),
        (
            "countries",
            json!(["country"]),
            json!(["visitors", "visits"]),
        ),
        (
            "goals",
            json!(["goal"]),
            json!(["visitors", "conversions", "conversion_rate"]),
        ),
    ] {
        let mut q =
            json!({"metrics": metrics, "date_range": "today", "dimensions": dims, "limit": 10});
        let answer = api_query(setup, site, key, q.take());
        let want: Vec<Value> = answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                json!([
                    r["dimensions"][0],
                    r["metrics"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| m.as_f64().unwrap())
                        .collect::<Vec<_>>()
                ])
            })
            .collect();
        assert!(!want.is_empty(), "{panel}: {answer}");
        let shown: Vec<Value> = before["panels"][panel]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let values: Vec<f64> = r[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_f64().unwrap())
                    .collect();
                json!([r[0], values])
            })
            .collect();
        assert_eq!(shown, want, "panel {panel}");
    }
    // The live counter: visitors active in the last five minutes, from the realtime API.
    let live = reqwest::blocking::Client::new()
        .get(setup.url(&format!("/api/v1/realtime?site_id={site}")))
        .bearer_auth(key)
        .send()
        .and_then(|r| r.json::<Value>())
        .unwrap();
    assert_eq!(
        before["live"].as_str().map(|v| v.parse::<i64>().unwrap()),
        live["current_visitors"].as_i64(),
        "{before}"
    );

    // After the click: a chip, the filter in the URL, and a graph of Google's visits.
    assert_eq!(after["chips"], json!(["source is Google×"]), "{after}");
    assert!(
        after["url"]
            .as_str()
            .unwrap()
            .contains("filter=source%3AGoogle"),
        "{after}"
    );
    let filtered = today(
        json!(["visits"]),
        json!(["time:hour"]),
        json!([["source", "is", ["Google"]]]),
    );
    let series: Vec<&Value> = filtered["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["metrics"][0])
        .collect();
    assert_eq!(
        after["graph"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        series,
        "{after}"
    );
    let google_visits: f64 = after["kpis"]["visits"].as_str().unwrap().parse().unwrap();
    assert!(
        google_visits > 0.0
            && google_visits
                < before["kpis"]["visits"]
                    .as_str()
                    .unwrap()
                    .parse::<f64>()
                    .unwrap(),
        "{after}"
    );
    // Pageviews are not kept per source: the card says so instead of a wrong number.
    assert_eq!(after["kpi_text"]["pageviews"], "—", "{after}");

    // A read-only link: made with the site's key, reads like it, makes no links of its own,
    // and stops working once revoked.
    let http = reqwest::blocking::Client::new();
    let created: Value = http
        .post(setup.url(&format!("/api/v1/shares?site_id={site}")))
        .bearer_auth(key)
        .send()
        .and_then(|r| r.json())
        .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let opened: Value = http
        .get(setup.url(&format!("/api/v1/shares/{token}")))
        .send()
        .and_then(|r| r.json())
        .unwrap();
    assert_eq!(opened, json!({"site_id": site, "domain": "shop.test"}));
    let pageviews = json!({"site_id": site, "metrics": ["pageviews"], "date_range": "today"});
    let (status, body) = post(&setup.url("/api/v1/query"), &pageviews, Some(&token));
    assert_eq!(status, 200, "{body}");
    let by_share = http
        .post(setup.url(&format!("/api/v1/shares?site_id={site}")))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(by_share.status(), 401);
    let revoked = http
        .delete(setup.url(&format!("/api/v1/shares/{token}")))
        .bearer_auth(key)
        .send()
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let (status, body) = post(&setup.url("/api/v1/query"), &pageviews, Some(&token));
    assert_eq!(status, 401, "{body}");
}

/// The README's promise to a new user, step by step: `clickflow up --demo`, the printed
/// dashboard URL opened in a browser, the demo site's numbers moving there without a reload,
/// the printed script tag pasted as it is into a page of their own, and their visit showing up
/// on the dashboard by itself.
#[test]
fn a_new_user_sees_the_demo_move_then_their_own_visit() {
    let up = LocalUp::start();
    let driver = chromedriver();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let page = format!(
        "<!doctype html><html><head><title>My page</title>\n{}\n</head><body>Hello</body></html>",
        up.tag
    );
    let own = runtime
        .block_on(serve(
            warp::path!("hello.html").map(move || warp::reply::html(page.clone())),
        ))
        .port();
    let pageviews = "+document.querySelector('#kpi-pageviews .value').dataset.value";
    let minute = Duration::from_secs(60);

    runtime.block_on(async {
        let owner = browser(&driver, BROWSER_UA, &scratch.path().join("owner")).await;
        owner.set_window_size(1280, 1200).await.unwrap();
        owner.goto(&up.dashboard).await.unwrap();
        until(&owner, SETTLED, "the demo site's numbers").await;
        let url = owner.current_url().await.unwrap();
        assert!(
            !url.as_str().contains("key="),
            "the API key left the address bar: {url}"
        );
        until_within(
            &owner,
            &format!("return {pageviews} > 0"),
            "demo pageviews",
            minute,
        )
        .await;
        let first = owner
            .execute(&format!("return {pageviews}"), vec![])
            .await
            .unwrap();
        let first = first.as_f64().expect("a pageview count");
        until_within(
            &owner,
            &format!("return {pageviews} > {first}"),
            "the pageviews moving without a reload",
            minute,
        )
        .await;
        until_within(
            &owner,
            "return +document.getElementById('current-visitors').dataset.value > 0",
            "current visitors",
            minute,
        )
        .await;

        // Someone opens the new user's page.
        let visitor = browser(&driver, DESKTOP_MAC, &scratch.path().join("visitor")).await;
        visitor
            .goto(&format!("http://127.0.0.1:{own}/hello.html"))
            .await
            .unwrap();
        loaded(&visitor).await;
        visitor.close().await.unwrap();

        let row = "document.querySelector(\"#panel-pages tr.row[data-name='/hello.html']\")";
        until_within(
            &owner,
            &format!("return !!{row}"),
            "the new page in the Pages panel",
            minute,
        )
        .await;
        let cells = owner
            .execute(
                &format!("return [...{row}.querySelectorAll('td[data-value]')].map(td => +td.dataset.value)"),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(cells, json!([1, 1]), "one visitor, one pageview");
        owner.close().await.unwrap();
    });
}
