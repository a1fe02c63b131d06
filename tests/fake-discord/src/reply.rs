//! Building HTTP answers: JSON and text bodies, Discord error bodies, and the rate limit
//! headers (`X-RateLimit-*`, `Retry-After`) on ordinary answers and on 429s.

use crate::body::ResponseBody;
use crate::error::ApiError;
use crate::ratelimit::BucketState;
use crate::time::now_secs_f64;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// An HTTP answer of the fake server.
pub type HttpResponse = Response<ResponseBody>;

/// An answer with a body of the given type.
pub fn with_body(
    status: u16,
    content_type: &'static str,
    body: impl Into<bytes::Bytes>,
) -> HttpResponse {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON answer.
pub fn json(status: u16, value: &Value) -> HttpResponse {
    with_body(status, "application/json", value.to_string())
}

/// A plain-text answer.
pub fn text(status: u16, body: &'static str) -> HttpResponse {
    with_body(status, "text/plain; charset=utf-8", body)
}

/// 204 No Content.
pub fn no_content() -> HttpResponse {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// A Discord error answer.
pub fn api_error(error: &ApiError) -> HttpResponse {
    json(error.status, &error.body())
}

/// A 5xx answer as a gateway or server in trouble would give.
pub fn server_error(status: u16) -> HttpResponse {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    json(
        status,
        &json!({"message": format!("{status}: {reason}"), "code": 0}),
    )
}

/// Adds a bucket's `X-RateLimit-*` headers.
pub fn add_bucket_headers(headers: &mut HeaderMap, bucket: &BucketState) {
    let reset_after = bucket.reset_after.as_secs_f64();
    set(headers, "x-ratelimit-limit", bucket.limit.to_string());
    set(
        headers,
        "x-ratelimit-remaining",
        bucket.remaining.to_string(),
    );
    set(
        headers,
        "x-ratelimit-reset",
        format!("{:.3}", now_secs_f64() + reset_after),
    );
    set(
        headers,
        "x-ratelimit-reset-after",
        format!("{reset_after:.3}"),
    );
    set(headers, "x-ratelimit-bucket", bucket.bucket.clone());
}

/// 429 for an exhausted bucket (scope `user`).
pub fn user_rate_limited(bucket: &BucketState) -> HttpResponse {
    let mut response = rate_limited_body(bucket.reset_after, false);
    add_bucket_headers(response.headers_mut(), bucket);
    set(
        response.headers_mut(),
        "x-ratelimit-scope",
        "user".to_owned(),
    );
    response
}

/// 429 for the global limit (scope `global`).
pub fn global_rate_limited(retry_after: Duration) -> HttpResponse {
    let mut response = rate_limited_body(retry_after, true);
    set(
        response.headers_mut(),
        "x-ratelimit-global",
        "true".to_owned(),
    );
    set(
        response.headers_mut(),
        "x-ratelimit-scope",
        "global".to_owned(),
    );
    response
}

fn rate_limited_body(retry_after: Duration, global: bool) -> HttpResponse {
    let secs = (retry_after.as_secs_f64() * 1000.0).ceil() / 1000.0;
    let body = json!({
        "message": "You are being rate limited.",
        "retry_after": secs,
        "global": global,
    });
    let mut response = json(429, &body);
    let whole_secs = secs.ceil().max(1.0) as u64;
    set(
        response.headers_mut(),
        RETRY_AFTER.as_str(),
        whole_secs.to_string(),
    );
    response
}

fn set(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}
