//! The REST API pipeline, in Discord's order: authentication, the request body (at the
//! bandwidth knob's speed, refused with 413 when too large), failure injection, routing,
//! rate limits (forced 429s, the global limit, the route's bucket), then the endpoint;
//! every routed answer carries its bucket's `X-RateLimit-*` headers.

use crate::body::read_body;
use crate::config::Knobs;
use crate::endpoints::{self, ApiRequest, Reply};
use crate::error::{ApiError, ConnectionError};
use crate::ratelimit::{BucketKey, BucketState, Decision, bucket_hash};
use crate::reply::{self, HttpResponse};
use crate::routes::Route;
use crate::server::Shared;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use std::time::{Duration, Instant};

/// Room for the multipart framing and JSON around the files of a request.
const REQUEST_OVERHEAD: u64 = 1024 * 1024;

/// Answers one REST request (or drops the connection, when failure injection says so).
pub async fn handle(
    shared: &Shared,
    request: Request<Incoming>,
    knobs: &Knobs,
) -> Result<HttpResponse, ConnectionError> {
    shared.count(|s| s.requests += 1);
    if !is_authorized(request.headers(), &shared.token) {
        shared.count(|s| s.unauthorized += 1);
        return Ok(finish(shared, reply::api_error(&ApiError::unauthorized())));
    }
    let (parts, body) = request.into_parts();
    let body = read_body(body, body_cap(knobs), knobs.bandwidth).await?;
    shared.count(|s| s.bytes_received += body.len);
    if let Some(failure) = injected_failure(shared, knobs) {
        return failure.map(|response| finish(shared, response));
    }
    let Some(data) = body.data else {
        return Ok(finish(shared, reply::api_error(&ApiError::too_large())));
    };
    let path = parts.uri.path().trim_start_matches("/api/v10/");
    let route = match Route::parse(&parts.method, path) {
        Ok(route) => route,
        Err(error) => return Ok(finish(shared, reply::api_error(&error))),
    };
    shared.count(|s| *s.per_route.entry(route.template().to_owned()).or_default() += 1);
    let bucket = match rate_limit(shared, knobs, &route) {
        Ok(bucket) => bucket,
        Err(refusal) => return Ok(finish(shared, refusal.response())),
    };
    let request = ApiRequest {
        query: parts.uri.query().unwrap_or(""),
        content_type: parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        body: data,
    };
    let mut response = match endpoints::dispatch(shared, knobs, route, &request) {
        Ok(Reply::Json(status, value)) => reply::json(status, &value),
        Ok(Reply::NoContent) => reply::no_content(),
        Err(error) => reply::api_error(&error),
    };
    reply::add_bucket_headers(response.headers_mut(), &bucket);
    Ok(finish(shared, response))
}

/// Counts the answer's status (and 413s) before it goes out.
fn finish(shared: &Shared, response: HttpResponse) -> HttpResponse {
    let status = response.status().as_u16();
    shared.count(|s| {
        *s.per_status.entry(status).or_default() += 1;
        if status == 413 {
            s.too_large += 1;
        }
    });
    response
}

/// Whether the request carries `Authorization: Bot <token>`.
fn is_authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bot "))
        .is_some_and(|sent| sent.trim() == token)
}

/// The most body bytes worth keeping: the largest files allowed plus framing.
fn body_cap(knobs: &Knobs) -> u64 {
    knobs.max_request_size.max(knobs.max_file_size) + REQUEST_OVERHEAD
}

/// With probability `failure_rate`: a 500/502/503 answer or (as often) no answer at all.
pub fn injected_failure(
    shared: &Shared,
    knobs: &Knobs,
) -> Option<Result<HttpResponse, ConnectionError>> {
    if !shared.dice.chance(knobs.failure_rate) {
        return None;
    }
    shared.count(|s| s.injected_failures += 1);
    if shared.dice.chance(0.5) {
        log::debug!("failure injection: dropping the connection");
        return Some(Err(ConnectionError::Injected));
    }
    let status = shared.dice.pick(&[500, 502, 503]);
    log::debug!("failure injection: answering {status}");
    Some(Ok(reply::server_error(status)))
}

/// Why a request gets a 429.
enum Refusal {
    /// Its bucket is exhausted (or a forced 429 pretends so).
    Bucket(BucketState),
    /// The global limit is reached.
    Global(Duration),
}

impl Refusal {
    fn response(&self) -> HttpResponse {
        match self {
            Refusal::Bucket(bucket) => reply::user_rate_limited(bucket),
            Refusal::Global(retry_after) => reply::global_rate_limited(*retry_after),
        }
    }
}

/// Counts the request against the limits; `Err` says why it gets a 429 instead.
fn rate_limit(shared: &Shared, knobs: &Knobs, route: &Route) -> Result<BucketState, Refusal> {
    let key = BucketKey {
        name: route.template(),
        major: route.major(),
    };
    let limit = route.limit(knobs);
    if shared.dice.chance(knobs.forced_429_rate) {
        shared.count(|s| s.forced_429 += 1);
        return Err(Refusal::Bucket(forced_bucket(shared, key, limit)));
    }
    let decision = shared.limiter().check(
        key,
        limit,
        knobs.global_limit_per_sec,
        knobs.rate_limits,
        Instant::now(),
    );
    match decision {
        Decision::Allowed(bucket) => Ok(bucket),
        Decision::Limited(bucket) => {
            shared.count(|s| s.rate_limited += 1);
            Err(Refusal::Bucket(bucket))
        }
        Decision::GlobalLimited { retry_after } => {
            shared.count(|s| {
                s.rate_limited += 1;
                s.global_rate_limited += 1;
            });
            Err(Refusal::Global(retry_after))
        }
    }
}

/// What a forced 429 reports: the route's bucket, empty for a short while.
fn forced_bucket(shared: &Shared, key: BucketKey, (limit, _): (u32, Duration)) -> BucketState {
    BucketState {
        limit,
        remaining: 0,
        reset_after: Duration::from_secs_f64(shared.dice.between(0.05, 0.3)),
        bucket: bucket_hash(key.name),
    }
}
