//! What every listener answers the same way: JSON error replies, the JSON body filter, and
//! warp's rejections turned into errors with reasons.

use bytes::Bytes;
use serde_json::{json, Value};
use warp::http::StatusCode;
use warp::{Filter, Reply};

/// A JSON error reply.
pub fn error_reply(status: StatusCode, reason: &str, field: Option<&str>) -> warp::reply::Response {
    let mut body = json!({ "error": reason });
    if let Some(f) = field {
        body["field"] = json!(f);
    }
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

pub fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

#[derive(Debug)]
struct UnsupportedContentType(String);
impl warp::reject::Reject for UnsupportedContentType {}

pub fn json_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|ct: Option<String>| async move {
            let ct = ct.unwrap_or_default();
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            // text/plain is what navigator.sendBeacon sends.
            if mime == "application/json" || mime == "text/plain" {
                Ok(())
            } else {
                Err(warp::reject::custom(UnsupportedContentType(ct)))
            }
        })
        .untuple_one()
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes())
}

pub fn parse_json(body: &Bytes) -> Result<Value, Box<warp::reply::Response>> {
    serde_json::from_slice(body).map_err(|e| {
        let reason = format!("body is not valid JSON: {e}");
        Box::new(error_reply(StatusCode::BAD_REQUEST, &reason, None))
    })
}

/// Turns warp's rejections into JSON errors with the right status.
pub async fn recover(
    r: warp::Rejection,
) -> Result<warp::reply::Response, std::convert::Infallible> {
    let (status, reason) = if r.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_string())
    } else if let Some(UnsupportedContentType(ct)) = r.find::<UnsupportedContentType>() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type must be application/json (got {ct:?})"),
        )
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "body too large".to_string())
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required".to_string(),
        )
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_string(),
        )
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else {
        (StatusCode::BAD_REQUEST, format!("{r:?}"))
    };
    Ok(error_reply(status, &reason, None))
}
