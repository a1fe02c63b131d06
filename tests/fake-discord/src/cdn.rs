//! The CDN: `GET /attachments/{channel}/{attachment}/{filename}?ex&is&hm`, no token needed.
//! It answers 404 (as Discord's CDN does) when the signature is wrong or stale, the URL
//! has expired, or the attachment is gone; otherwise the bytes, at the bandwidth knob's
//! speed, with single-range `Range` support (206 with `Content-Range`, 416 when
//! unsatisfiable) unless the `ignore_range` knob makes it answer every request 200 with
//! the whole attachment, as a server without range support does. Failure injection may answer 5xx, drop the
//! connection before answering, or break it off in the middle of the body.

use crate::body::ResponseBody;
use crate::config::Knobs;
use crate::error::{ApiError, ConnectionError};
use crate::reply::{self, HttpResponse};
use crate::server::Shared;
use crate::time::now_ms;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{ACCEPT_RANGES, CONTENT_RANGE, CONTENT_TYPE, HeaderValue, RANGE};
use hyper::{Method, Request, Response, StatusCode};

const GONE: &str = "This content is no longer available.";

/// Answers one CDN request.
pub async fn handle(
    shared: &Shared,
    request: Request<Incoming>,
    knobs: &Knobs,
) -> Result<HttpResponse, ConnectionError> {
    shared.count(|s| s.cdn_requests += 1);
    if request.headers().contains_key(RANGE) {
        shared.count(|s| s.range_requests += 1);
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(reply::api_error(&ApiError::method_not_allowed()));
    }
    let break_midway = match injected_failure(shared, knobs) {
        Some(CdnFailure::Answer(status)) => return Ok(reply::server_error(status)),
        Some(CdnFailure::Drop) => return Err(ConnectionError::Injected),
        Some(CdnFailure::BreakMidway) => true,
        None => false,
    };
    let uri = request.uri();
    let Some(data) = attachment_bytes(shared, uri.path(), uri.query().unwrap_or("")) else {
        return Ok(reply::text(404, GONE));
    };
    let range = request
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| !knobs.ignore_range);
    let (status, body, content_range) = match range.map(|r| parse_range(r, data.len())) {
        None => (StatusCode::OK, data.clone(), None),
        Some(Some((start, end))) => (
            StatusCode::PARTIAL_CONTENT,
            data.slice(start..=end),
            Some(format!("bytes {start}-{end}/{}", data.len())),
        ),
        Some(None) => return Ok(unsatisfiable(data.len())),
    };
    shared.count(|s| s.bytes_downloaded += body.len() as u64);
    let len = body.len();
    let mut body = ResponseBody::full(body).throttled(knobs.bandwidth);
    if break_midway {
        body = body.breaking_at(len / 2);
    }
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let accepted = if knobs.ignore_range { "none" } else { "bytes" };
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static(accepted));
    if let Some(value) = content_range.and_then(|v| HeaderValue::try_from(v).ok()) {
        headers.insert(CONTENT_RANGE, value);
    }
    Ok(response)
}

enum CdnFailure {
    /// Answer with this 5xx status.
    Answer(u16),
    Drop,
    BreakMidway,
}

/// Half 5xx answers; half dropped connections, before the answer or in the middle of it.
fn injected_failure(shared: &Shared, knobs: &Knobs) -> Option<CdnFailure> {
    if !shared.dice.chance(knobs.failure_rate) {
        return None;
    }
    shared.count(|s| s.injected_failures += 1);
    Some(match shared.dice.pick(&[0, 1, 2, 3]) {
        0 | 1 => CdnFailure::Answer(shared.dice.pick(&[500, 502, 503])),
        2 => CdnFailure::Drop,
        _ => CdnFailure::BreakMidway,
    })
}

/// The bytes behind a signed, unexpired URL of an attachment that still exists.
fn attachment_bytes(shared: &Shared, path: &str, query: &str) -> Option<Bytes> {
    let mut segments = path.strip_prefix("/attachments/")?.split('/');
    let channel: u64 = segments.next()?.parse().ok()?;
    let attachment: u64 = segments.next()?.parse().ok()?;
    let filename = segments.next()?;
    if segments.next().is_some() {
        return None;
    }
    let guild = shared.guild();
    guild.signer.verify(path, query, now_ms()).ok()?;
    let stored = guild.attachment(attachment)?;
    (stored.channel_id == channel && stored.filename == filename).then(|| stored.data.clone())
}

/// The inclusive byte range of a single-range `Range` header; `None` if unsatisfiable.
fn parse_range(header: &str, len: usize) -> Option<(usize, usize)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let last = len - 1;
    if start.is_empty() {
        let suffix: usize = end.parse().ok()?;
        return (suffix > 0).then(|| (len.saturating_sub(suffix), last));
    }
    let start: usize = start.parse().ok()?;
    let end = if end.is_empty() {
        last
    } else {
        end.parse::<usize>().ok()?.min(last)
    };
    (start <= end).then_some((start, end))
}

fn unsatisfiable(len: usize) -> HttpResponse {
    let mut response = reply::text(416, "Range Not Satisfiable");
    if let Ok(value) = HeaderValue::try_from(format!("bytes */{len}")) {
        response.headers_mut().insert(CONTENT_RANGE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
    }
}
