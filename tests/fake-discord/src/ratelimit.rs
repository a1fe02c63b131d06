//! Discord's rate limits: per-route buckets counted per major parameter (channel or guild
//! id), and a global per-second limit. Windows are fixed and start with the first request
//! after the previous window ended. The server reports each bucket in `X-RateLimit-*`
//! headers; the bucket id is a hash of the route, the same for every channel, as on Discord.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The state of one bucket after a request, for the `X-RateLimit-*` headers.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketState {
    /// Requests per window.
    pub limit: u32,
    /// Requests left in this window.
    pub remaining: u32,
    /// Time until the window ends.
    pub reset_after: Duration,
    /// `X-RateLimit-Bucket`: opaque, one per route.
    pub bucket: String,
}

/// What the limiter says about a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Go ahead; the bucket now looks like this.
    Allowed(BucketState),
    /// The route's bucket is exhausted until `reset_after`.
    Limited(BucketState),
    /// Too many requests this second over all routes.
    GlobalLimited {
        /// Time until the global window ends.
        retry_after: Duration,
    },
}

/// Which limit a route falls under: its bucket name and its major parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// The bucket's name (a route template, or a shared name like "message create").
    pub name: &'static str,
    /// The major parameter (channel or guild id; 0 when the route has none).
    pub major: u64,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    used: u32,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            started: now,
            used: 0,
        }
    }

    /// Starts a new window if the current one is over.
    fn roll(&mut self, now: Instant, length: Duration) {
        if now >= self.started + length {
            *self = Window::new(now);
        }
    }

    fn reset_after(&self, now: Instant, length: Duration) -> Duration {
        (self.started + length).saturating_duration_since(now)
    }
}

const GLOBAL_WINDOW: Duration = Duration::from_secs(1);

/// Counts requests per bucket and globally.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<BucketKey, Window>,
    global: Option<Window>,
}

impl RateLimiter {
    /// Counts a request against the global limit and then its bucket. When `enforce` is
    /// false nothing is refused, but the headers still tell the truth.
    pub fn check(
        &mut self,
        key: BucketKey,
        (limit, length): (u32, Duration),
        global_limit: u32,
        enforce: bool,
        now: Instant,
    ) -> Decision {
        let global = self.global.get_or_insert_with(|| Window::new(now));
        global.roll(now, GLOBAL_WINDOW);
        if enforce && global.used >= global_limit {
            return Decision::GlobalLimited {
                retry_after: global.reset_after(now, GLOBAL_WINDOW),
            };
        }
        global.used += 1;

        let window = self.buckets.entry(key).or_insert_with(|| Window::new(now));
        window.roll(now, length);
        let exhausted = window.used >= limit;
        if !exhausted {
            window.used += 1;
        }
        let state = BucketState {
            limit,
            remaining: limit.saturating_sub(window.used),
            reset_after: window.reset_after(now, length),
            bucket: bucket_hash(key.name),
        };
        if enforce && exhausted {
            Decision::Limited(state)
        } else {
            Decision::Allowed(state)
        }
    }
}

/// The opaque `X-RateLimit-Bucket` value of a bucket name.
pub fn bucket_hash(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    crate::signing::hex(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: BucketKey = BucketKey {
        name: "message create",
        major: 1,
    };
    const LIMIT: (u32, Duration) = (2, Duration::from_secs(5));

    #[test]
    fn a_bucket_refuses_once_exhausted_and_resets_after_its_window() {
        let mut limiter = RateLimiter::default();
        let start = Instant::now();
        let Decision::Allowed(first) = limiter.check(KEY, LIMIT, 50, true, start) else {
            panic!("first request refused");
        };
        assert_eq!((first.limit, first.remaining), (2, 1));
        assert!(matches!(
            limiter.check(KEY, LIMIT, 50, true, start),
            Decision::Allowed(BucketState { remaining: 0, .. })
        ));
        let Decision::Limited(limited) =
            limiter.check(KEY, LIMIT, 50, true, start + Duration::from_secs(1))
        else {
            panic!("third request allowed");
        };
        assert_eq!(limited.reset_after, Duration::from_secs(4));
        let other_channel = BucketKey { major: 2, ..KEY };
        assert!(matches!(
            limiter.check(other_channel, LIMIT, 50, true, start),
            Decision::Allowed(_)
        ));
        assert!(matches!(
            limiter.check(KEY, LIMIT, 50, true, start + Duration::from_secs(5)),
            Decision::Allowed(BucketState { remaining: 1, .. })
        ));
    }

    #[test]
    fn the_global_limit_counts_every_route() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        for major in 0..3 {
            let key = BucketKey { major, ..KEY };
            assert!(matches!(
                limiter.check(key, LIMIT, 3, true, now),
                Decision::Allowed(_)
            ));
        }
        let key = BucketKey { major: 9, ..KEY };
        assert!(matches!(
            limiter.check(key, LIMIT, 3, true, now),
            Decision::GlobalLimited { .. }
        ));
        assert!(matches!(
            limiter.check(key, LIMIT, 3, false, now),
            Decision::Allowed(_)
        ));
    }
}
