//! `GET /js/clickflow.js`: the tracker a merchant puts on their pages, built into the binary.
//!
//! The source (`src/ingest/tracker.js`) is kept readable; what is served has its full-line
//! comments, indentation and blank lines removed, and is gzipped once at start for clients that
//! accept it. Line breaks stay, so JavaScript's automatic semicolons mean what they meant.

use std::io::Write;
use std::sync::LazyLock;

use bytes::Bytes;
use warp::http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use warp::http::HeaderValue;
use warp::Filter;
use warp::Reply;

const SOURCE: &str = include_str!("tracker.js");

/// The served script.
pub static SCRIPT: LazyLock<String> = LazyLock::new(|| compact(SOURCE));

/// The served script, gzipped at the best level.
pub static SCRIPT_GZIP: LazyLock<Bytes> = LazyLock::new(|| gzip(SCRIPT.as_bytes()));

/// Drops full-line `//` comments, indentation and blank lines.
pub fn compact(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for line in source.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn gzip(bytes: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// The route. Cached for an hour: a tracker update reaches every page within that.
pub fn route() -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("js" / "clickflow.js")
        .and(warp::get())
        .and(warp::header::optional::<String>("accept-encoding"))
        .map(|accept: Option<String>| {
            let gzipped = accept.is_some_and(|a| {
                a.split(',')
                    .any(|coding| coding.split(';').next().unwrap_or("").trim() == "gzip")
            });
            let body = if gzipped {
                SCRIPT_GZIP.to_vec()
            } else {
                SCRIPT.as_bytes().to_vec()
            };
            let mut reply = body.into_response();
            let headers = reply.headers_mut();
            let js = HeaderValue::from_static("application/javascript; charset=utf-8");
            headers.insert(CONTENT_TYPE, js);
            headers.insert(
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
            if gzipped {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            reply
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plausible's script is under 1 KB gzipped; ours must stay within 1.5 KB.
    #[test]
    fn served_script_is_small() {
        let size = SCRIPT_GZIP.len();
        assert!(size <= 1536, "tracker is {size} bytes gzipped, over 1536");
        assert!(SCRIPT.len() < SOURCE.len());
    }

    #[test]
    fn compacting_keeps_code_and_line_breaks() {
        let js = "// a comment\n  var a = 1 // kept: not a full line\n\n  var b = a\n  ;[b].forEach(f)\n";
        assert_eq!(
            compact(js),
            "var a = 1 // kept: not a full line\nvar b = a\n;[b].forEach(f)\n"
        );
    }

    #[tokio::test]
    async fn served_plain_or_gzipped() {
        let plain = warp::test::request()
            .path("/js/clickflow.js")
            .reply(&route())
            .await;
        assert_eq!(plain.status(), 200);
        assert_eq!(plain.body(), SCRIPT.as_bytes());
        assert!(plain.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/javascript"));
        let gz = warp::test::request()
            .path("/js/clickflow.js")
            .header("accept-encoding", "br, gzip;q=0.9")
            .reply(&route())
            .await;
        assert_eq!(gz.headers()[CONTENT_ENCODING], "gzip");
        let mut decoded = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(gz.body().as_ref()),
            &mut decoded,
        )
        .unwrap();
        assert_eq!(decoded, *SCRIPT);
    }
}
