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
    let db = fresh_database();
    let scratch = tempfile::tempdir().unwrap();
    let setup = Setup::embedded(&db, scratch.path().join("log"));
    setup.run(&["migrate"]);
    let (site, key) = setup.add_site("shop.test", "UTC");
    let _server = setup.spawn(&["serve"]);
    setup.wait_healthy();
    let _engine = spawn_engine(&setup, 1, 1, scratch.path());
    let driver = chromedriver();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shop = runtime.block_on(serve(merchant_site(&setup.url(""), &site)));
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
    await_rollups(&setup, &site, &key, &want);
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
