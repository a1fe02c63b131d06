//! Attachment bytes from Discord's CDN, through signed URLs that expire.
//!
//! Nothing above the store ever sees a URL: records name chunks by message and
//! attachment id, because Discord signs attachment URLs (`ex` = expiry as hex Unix
//! seconds, `is`, `hm`) and they stop working after about a day. This module keeps the
//! URLs the REST side saw (every message that passes through the store leaves its
//! attachments' URLs here) in a bounded LRU, uses them while they are fresh, and asks
//! the store to re-fetch the message when a URL is missing, about to expire, or refused
//! by the CDN (403/404), which is what Discord's docs prescribe.
//!
//! Downloads use the reqwest client the REST calls use; transient failures
//! (5xx, resets, timeouts, short bodies) are retried with the REST side's backoff.
//! A byte range of an attachment is an HTTP `Range` request ([`Want::Range`]): the CDN's
//! `206` must carry exactly the range asked for, and a `200` from a server that ignores
//! `Range` is cut down to the range as it arrives, read no further than its end.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lru::LruCache;

use crate::store::Id;

/// URLs that expire within this margin are treated as expired already: a download
/// that starts just before expiry must not be cut off by it.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// How many attachment URLs to remember (about 300 bytes each).
const URL_CACHE_ENTRIES: usize = 50_000;

/// A URL just handed out by Discord is used even if its `ex` says it is about to
/// expire (a short lifetime, or this machine's clock running ahead): it is the
/// freshest there is, and the CDN's answer decides.
const JUST_SEEN: Duration = Duration::from_secs(10);

/// A signed URL and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUrl {
    pub url: String,
    /// `None` when the URL carries no `ex` (then the CDN's answer decides).
    pub expires: Option<SystemTime>,
    /// When Discord handed it out.
    pub seen: Instant,
}

impl SignedUrl {
    /// Reads the expiry from the URL's `ex` parameter.
    pub fn new(url: String) -> SignedUrl {
        let expires = expiry_of(&url);
        SignedUrl {
            url,
            expires,
            seen: Instant::now(),
        }
    }

    /// Whether the URL can still be used for a download started now: it expires
    /// comfortably later, or Discord handed it out a moment ago.
    pub fn is_fresh(&self) -> bool {
        self.seen.elapsed() < JUST_SEEN
            || self
                .expires
                .is_none_or(|at| at > SystemTime::now() + EXPIRY_MARGIN)
    }
}

/// The expiry a signed URL's `ex` parameter (hex Unix seconds) gives.
pub fn expiry_of(url: &str) -> Option<SystemTime> {
    let query = url.split_once('?')?.1;
    let ex = query.split('&').find_map(|pair| pair.strip_prefix("ex="))?;
    let seconds = u64::from_str_radix(ex, 16).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// The URLs seen so far, by attachment id.
pub struct UrlCache {
    urls: Mutex<LruCache<Id, SignedUrl>>,
}

impl Default for UrlCache {
    fn default() -> Self {
        UrlCache {
            urls: Mutex::new(LruCache::new(
                NonZeroUsize::new(URL_CACHE_ENTRIES).expect("non-zero"),
            )),
        }
    }
}

impl UrlCache {
    /// Remembers an attachment's URL.
    pub fn remember(&self, attachment: Id, url: String) {
        self.lock().put(attachment, SignedUrl::new(url));
    }

    /// The attachment's URL if it is known and fresh.
    pub fn fresh(&self, attachment: Id) -> Option<SignedUrl> {
        self.lock()
            .get(&attachment)
            .filter(|u| u.is_fresh())
            .cloned()
    }

    /// Forgets a URL the CDN refused.
    pub fn forget(&self, attachment: Id) {
        self.lock().pop(&attachment);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Id, SignedUrl>> {
        self.urls.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one download asks the CDN for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// The whole attachment, which the caller expects to be at most `max_bytes` long.
    Whole { max_bytes: u64 },
    /// Bytes `start..end` of it (not empty), with `Range: bytes=START-(END-1)`.
    Range(std::ops::Range<u64>),
}

/// How one download went.
#[derive(Debug)]
pub enum Download {
    Bytes(Bytes),
    /// The CDN refused the URL (403/404/410): expired, or the attachment is gone.
    Refused(u16),
    /// Worth another try.
    Transient(String),
    /// Not what the caller expects, and not worth another try: longer than expected,
    /// shorter than the range asked for (the attachment is damaged, or hostile).
    Corrupt(String),
}

const SHORTER_THAN_THE_RECORD: &str = "the attachment is shorter than the record says";

/// Fetches what `want` asks of a URL once, within `timeout`, reading no more of the body
/// than that needs:
///
/// - whole: a body longer than `max_bytes` (announced or sent) is [`Download::Corrupt`];
/// - a range: a `206` must carry the `Content-Range` asked for (else
///   [`Download::Transient`], or corrupt if its total length falls short of the range's
///   end) and exactly the range's bytes (more is corrupt); a `200`
///   (a server that ignores `Range`) is read up to the range's end, keeping only the
///   range, and dropped there; a `416`, or a `200` whose body ends before the range's
///   end, means the attachment is shorter than the record says: corrupt.
///
/// A body that ends before its announced `Content-Length` is transient.
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    want: &Want,
) -> Download {
    let exchange = async {
        let mut request = client.get(url);
        if let Want::Range(range) = want {
            let last = range.end - 1;
            request = request.header(
                reqwest::header::RANGE,
                format!("bytes={}-{last}", range.start),
            );
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Download::Transient(super::rest::describe_chain(&e)),
        };
        let status = response.status().as_u16();
        if status == 429 {
            crate::store::pace::note_429();
        }
        if matches!(status, 403 | 404 | 410) {
            return Download::Refused(status);
        }
        match (want, status) {
            (Want::Whole { max_bytes }, 200) => whole(&mut response, *max_bytes).await,
            (Want::Range(range), 206) => partial(&mut response, range).await,
            (Want::Range(range), 200) => range_of_whole(&mut response, range).await,
            (Want::Range(_), 416) => Download::Corrupt(format!(
                "the CDN cannot serve the range (416): {SHORTER_THAN_THE_RECORD}"
            )),
            _ => Download::Transient(format!("the CDN answered {status}")),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Download::Transient(format!("no answer within {timeout:?}")))
}

/// A `200` to a whole download: at most `max_bytes`.
async fn whole(response: &mut reqwest::Response, max_bytes: u64) -> Download {
    let expected = response.content_length();
    let too_long = || {
        Download::Corrupt(format!(
            "the CDN sent more than the {max_bytes} bytes expected"
        ))
    };
    if expected.is_some_and(|n| n > max_bytes) {
        return too_long();
    }
    let capacity = expected.unwrap_or(0) as usize;
    match read_body(response, 0, max_bytes, capacity, true).await {
        Err(reason) => Download::Transient(reason),
        Ok(read) if read.more => too_long(),
        Ok(read) => match expected {
            Some(n) if n != read.seen => short_body(read.seen, n),
            _ => Download::Bytes(Bytes::from(read.kept)),
        },
    }
}

/// A `206` to a ranged download: the range asked for, exactly.
async fn partial(response: &mut reqwest::Response, range: &std::ops::Range<u64>) -> Download {
    let len = range.end - range.start;
    let answered = response
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Err(refused) = check_content_range(answered.as_deref(), range) {
        return refused;
    }
    let too_long =
        || Download::Corrupt(format!("the CDN sent more than the {len} bytes asked for"));
    let expected = response.content_length();
    if expected.is_some_and(|n| n > len) {
        return too_long();
    }
    match read_body(response, 0, len, len as usize, true).await {
        Err(reason) => Download::Transient(reason),
        Ok(read) if read.more => too_long(),
        Ok(read) if read.seen < len => short_body(read.seen, len),
        Ok(read) => Download::Bytes(Bytes::from(read.kept)),
    }
}

/// Whether a `206`'s `Content-Range` is the range asked for. One that starts there but
/// gives a total length short of the range's end (a server clamps the end to the
/// attachment's) means the attachment is shorter than the record says; any other
/// mismatch, or none at all, is worth another try.
fn check_content_range(
    answered: Option<&str>,
    range: &std::ops::Range<u64>,
) -> Result<(), Download> {
    let parsed = answered.and_then(parse_content_range);
    match parsed {
        Some((first, last, _)) if first == range.start && last + 1 == range.end => Ok(()),
        Some((first, _, Some(total))) if first == range.start && total < range.end => {
            Err(Download::Corrupt(format!(
                "the CDN says it is {total} bytes long: {SHORTER_THAN_THE_RECORD}"
            )))
        }
        _ => Err(Download::Transient(format!(
            "the CDN answered bytes {}-{} with another range (Content-Range: {})",
            range.start,
            range.end - 1,
            answered.unwrap_or("none")
        ))),
    }
}

/// A `200` to a ranged download (the server ignored `Range`): the range is cut out of
/// the whole body, which is read no further than the range's end.
async fn range_of_whole(
    response: &mut reqwest::Response,
    range: &std::ops::Range<u64>,
) -> Download {
    let len = range.end - range.start;
    let expected = response.content_length();
    if expected.is_some_and(|n| n < range.end) {
        return Download::Corrupt(format!(
            "the CDN sent the whole attachment, {} bytes: {SHORTER_THAN_THE_RECORD}",
            expected.unwrap_or(0)
        ));
    }
    match read_body(response, range.start, len, len as usize, false).await {
        Err(reason) => Download::Transient(reason),
        Ok(read) if read.kept.len() as u64 == len => Download::Bytes(Bytes::from(read.kept)),
        Ok(read) => match expected {
            Some(n) => short_body(read.seen, n),
            None => Download::Corrupt(format!(
                "the CDN sent the whole attachment, {} bytes: {SHORTER_THAN_THE_RECORD}",
                read.seen
            )),
        },
    }
}

fn short_body(sent: u64, announced: u64) -> Download {
    Download::Transient(format!("the CDN sent {sent} of {announced} bytes"))
}

/// What [`read_body`] read.
struct BodyRead {
    /// The bytes kept.
    kept: Vec<u8>,
    /// Whether the body went on past them (only looked for when asked to).
    more: bool,
    /// Bytes of the body read, skipped ones included.
    seen: u64,
}

/// Reads a body chunk by chunk, skipping its first `skip` bytes and keeping the `keep`
/// after them: it stops at the body's end, or once the kept bytes are complete (unless
/// `look_past`: then it reads on to see whether the body ends there, and stops at the
/// first byte past them). Never holds more than `keep` bytes, plus one chunk.
async fn read_body(
    response: &mut reqwest::Response,
    skip: u64,
    keep: u64,
    capacity: usize,
    look_past: bool,
) -> Result<BodyRead, String> {
    let end = skip.saturating_add(keep);
    // A pooled buffer for a chunk (its pages already faulted in), empty to start with.
    let mut kept = crate::buffers::take(capacity);
    kept.clear();
    let mut seen = 0u64;
    loop {
        if seen >= end && !look_past {
            return Ok(BodyRead {
                kept,
                more: false,
                seen,
            });
        }
        let part = match response.chunk().await {
            Ok(Some(part)) => part,
            Ok(None) => {
                return Ok(BodyRead {
                    kept,
                    more: false,
                    seen,
                });
            }
            Err(e) => return Err(super::rest::describe_chain(&e)),
        };
        let at = seen;
        seen += part.len() as u64;
        // The part of this chunk inside skip..end.
        let from = skip.saturating_sub(at).min(part.len() as u64) as usize;
        let to = end.saturating_sub(at).min(part.len() as u64) as usize;
        kept.extend_from_slice(&part[from..to.max(from)]);
        if seen > end {
            return Ok(BodyRead {
                kept,
                more: true,
                seen,
            });
        }
    }
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`) as (first, last, total); `None` if it is
/// malformed or inconsistent (last before first, total not past last).
fn parse_content_range(header: &str) -> Option<(u64, u64, Option<u64>)> {
    let spec = header.trim().strip_prefix("bytes ")?;
    let (span, total) = spec.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse::<u64>().ok()?),
    };
    (first <= last && total.is_none_or(|t| t > last)).then_some((first, last, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_read_from_the_url() {
        let url = "https://cdn.discordapp.com/attachments/1/2/c0?ex=6553f2a1&is=6541a5a1&hm=ab&";
        assert_eq!(
            expiry_of(url),
            Some(UNIX_EPOCH + Duration::from_secs(0x6553f2a1))
        );
        assert_eq!(expiry_of("https://x/y"), None);
        assert_eq!(expiry_of("https://x/y?ex=zz"), None);
        let seen_long_ago = |url: String| SignedUrl {
            seen: Instant::now() - 2 * JUST_SEEN,
            ..SignedUrl::new(url)
        };
        assert!(!seen_long_ago(url.into()).is_fresh());
        // Just handed out by Discord: used whatever its expiry says.
        assert!(SignedUrl::new(url.into()).is_fresh());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let later = now.as_secs() + 3600;
        assert!(seen_long_ago(format!("https://x/y?ex={later:x}&is=0")).is_fresh());
        let soon = now.as_secs() + 30;
        assert!(!seen_long_ago(format!("https://x/y?ex={soon:x}")).is_fresh());
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0, 9, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range("bytes 9-0/100"), None);
        assert_eq!(parse_content_range("bytes 0-99/99"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-9/100"), None);
    }

    #[test]
    fn a_206_must_answer_the_range_asked_for() {
        let range = 100..200;
        assert!(check_content_range(Some("bytes 100-199/1000"), &range).is_ok());
        assert!(check_content_range(Some("bytes 100-199/*"), &range).is_ok());
        let corrupt = |header| {
            matches!(
                check_content_range(Some(header), &range),
                Err(Download::Corrupt(_))
            )
        };
        let transient = |header: Option<&str>| {
            matches!(
                check_content_range(header, &range),
                Err(Download::Transient(_))
            )
        };
        // Clamped to an attachment shorter than the record says.
        assert!(corrupt("bytes 100-149/150"));
        assert!(transient(Some("bytes 100-149/*")));
        assert!(transient(Some("bytes 0-99/1000")));
        assert!(transient(Some("bytes 100-299/1000")));
        assert!(transient(Some("bytes 100-199/150")));
        assert!(transient(Some("garbage")));
        assert!(transient(None));
    }

    #[test]
    fn forgotten_urls_are_not_handed_out() {
        let cache = UrlCache::default();
        cache.remember(8, "https://x/b".into());
        assert_eq!(cache.fresh(8).unwrap().url, "https://x/b");
        cache.forget(8);
        assert!(cache.fresh(8).is_none());
    }
}
