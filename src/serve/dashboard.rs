//! The dashboard: one page and its two assets, built into the binary (no CDN, no network at
//! run time), served by the API at `/` (sign-in), `/sites/<id>` and `/share/<token>`. The
//! page reads everything through the public query API with the visitor's key or share token.

use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::HeaderValue;
use warp::{Filter, Reply};

const PAGE: &str = include_str!("web/dashboard.html");
const SCRIPT: &str = include_str!("web/dashboard.js");
const STYLE: &str = include_str!("web/dashboard.css");

fn asset(body: &'static str, content_type: &'static str) -> warp::reply::Response {
    let mut reply = body.into_response();
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The page is tiny and must follow the binary's version at once.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    reply
}

pub fn routes() -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone
{
    let html = || asset(PAGE, "text/html; charset=utf-8");
    let home = warp::path::end().map(html);
    let site = warp::path!("sites" / String).map(move |_: String| html());
    let share = warp::path!("share" / String).map(move |_: String| html());
    let script = warp::path!("assets" / "dashboard.js")
        .map(|| asset(SCRIPT, "application/javascript; charset=utf-8"));
    let style =
        warp::path!("assets" / "dashboard.css").map(|| asset(STYLE, "text/css; charset=utf-8"));
    warp::get().and(
        home.or(site)
            .unify()
            .or(share)
            .unify()
            .or(script)
            .unify()
            .or(style)
            .unify(),
    )
}
