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
//! Downloads use reqwest on the same rustls stack as twilight; transient failures
//! (5xx, resets, timeouts, short bodies) are retried with the REST side's backoff.

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

/// How one download went.
#[derive(Debug)]
pub enum Download {
    Bytes(Bytes),
    /// The CDN refused the URL (403/404/410): expired, or the attachment is gone.
    Refused(u16),
    /// Worth another try.
    Transient(String),
    /// Longer than the caller expects: damaged or hostile, not worth another try.
    Oversized,
}

/// Fetches a URL's bytes once, within `timeout`, reading no more than `max_bytes` of
/// them: a longer body is [`Download::Oversized`] (announced or sent).
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    max_bytes: u64,
) -> Download {
    let exchange = async {
        let response = match client.get(url).send().await {
            Ok(response) => response,
            Err(e) => return Download::Transient(super::rest::describe_chain(&e)),
        };
        let status = response.status().as_u16();
        match status {
            200 => {}
            403 | 404 | 410 => return Download::Refused(status),
            _ => return Download::Transient(format!("the CDN answered {status}")),
        }
        let expected = response.content_length();
        if expected.is_some_and(|n| n > max_bytes) {
            return Download::Oversized;
        }
        let mut body = Vec::with_capacity(expected.unwrap_or(0) as usize);
        let mut response = response;
        loop {
            match response.chunk().await {
                Ok(Some(part)) => {
                    if (body.len() + part.len()) as u64 > max_bytes {
                        return Download::Oversized;
                    }
                    body.extend_from_slice(&part);
                }
                Ok(None) => break,
                Err(e) => return Download::Transient(super::rest::describe_chain(&e)),
            }
        }
        match expected {
            Some(n) if n != body.len() as u64 => {
                Download::Transient(format!("the CDN sent {} of {n} bytes", body.len()))
            }
            _ => Download::Bytes(Bytes::from(body)),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Download::Transient(format!("no answer within {timeout:?}")))
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
    fn forgotten_urls_are_not_handed_out() {
        let cache = UrlCache::default();
        cache.remember(8, "https://x/b".into());
        assert_eq!(cache.fresh(8).unwrap().url, "https://x/b");
        cache.forget(8);
        assert!(cache.fresh(8).is_none());
    }
}
