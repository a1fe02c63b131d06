//! Keeping to Discord's rate limits before Discord has to say so.
//!
//! twilight-http has a rate limiter, but 0.18 learns a bucket's state only from 429
//! responses (it reads the `X-RateLimit-*` headers only when `X-RateLimit-Scope` is
//! present, and Discord sends that header only on 429s). Left alone it would run each
//! bucket into a 429 once per window. So this gate reads the headers Discord sends on
//! every successful response and holds a request back until its bucket has room:
//!
//! - requests are grouped by *route key*: the route template plus its top-level
//!   resource (channel or guild id), which is how Discord counts them;
//! - requests of one route key run one at a time (twilight does the same per bucket),
//!   so the last response's `Remaining`/`Reset-After` describe the bucket exactly when
//!   the next request is due; when nothing remains, the request waits for the reset;
//! - all requests together stay under a global rate (Discord: 50/s per bot), spaced
//!   evenly so that a burst never trips the global limit.
//!
//! twilight's own limiter stays on behind this gate: if a 429 happens anyway (another
//! process using the same bot, or a server that forces one), it waits as told and
//! retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tokio::time::Instant;

/// What the last response of a bucket said about it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketState {
    /// Requests left in the current window.
    pub remaining: u32,
    /// When the window resets.
    pub reset_at: Instant,
}

/// Parses the rate-limit headers of a response, if it has them.
pub fn parse_headers<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Option<BucketState> {
    let mut remaining = None;
    let mut reset_after = None;
    for (name, value) in headers {
        let value = std::str::from_utf8(value).ok();
        if name.eq_ignore_ascii_case("x-ratelimit-remaining") {
            remaining = value.and_then(|v| v.trim().parse::<u32>().ok());
        } else if name.eq_ignore_ascii_case("x-ratelimit-reset-after") {
            reset_after = value
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0);
        }
    }
    Some(BucketState {
        remaining: remaining?,
        reset_at: Instant::now() + Duration::from_secs_f64(reset_after?.min(3600.0)),
    })
}

/// One route key's lane: requests queue on the mutex; the state is the last response's.
#[derive(Default)]
struct Lane {
    state: Option<BucketState>,
}

/// The gate every REST request passes. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct RateGate {
    lanes: Arc<Mutex<HashMap<String, Arc<AsyncMutex<Lane>>>>>,
    global: Arc<AsyncMutex<Instant>>,
    global_spacing: Duration,
}

/// Held while a request runs; report the response's headers through it.
pub struct Pass {
    lane: OwnedMutexGuard<Lane>,
}

impl Pass {
    /// Records what the response said about the bucket.
    pub fn observe(&mut self, state: Option<BucketState>) {
        if state.is_some() {
            self.lane.state = state;
        }
    }
}

impl RateGate {
    /// A gate that keeps all requests under `global_per_second`.
    pub fn new(global_per_second: u32) -> RateGate {
        RateGate {
            lanes: Arc::default(),
            global: Arc::new(AsyncMutex::new(Instant::now())),
            global_spacing: Duration::from_secs(1) / global_per_second.max(1),
        }
    }

    /// Waits until a request on `route` may go, and returns the pass it runs under.
    pub async fn enter(&self, route: &str) -> Pass {
        let lane = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            lanes.entry(route.to_string()).or_default().clone()
        };
        let mut lane = lane.lock_owned().await;
        if let Some(state) = lane.state
            && state.remaining == 0
        {
            let now = Instant::now();
            if state.reset_at > now {
                log::debug!(
                    "rate limit: {route} waits {:?} for its bucket",
                    state.reset_at - now
                );
                // A little past the reset: the server's clock and ours differ by the
                // response's travel time.
                tokio::time::sleep_until(state.reset_at + RESET_MARGIN).await;
            }
            lane.state = None;
        }
        self.pace_globally().await;
        Pass { lane }
    }

    /// Spaces requests so that no second holds more than the global allowance.
    async fn pace_globally(&self) {
        let mut next = self.global.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep_until(*next).await;
        }
        *next = Instant::now().max(*next) + self.global_spacing;
    }
}

/// Extra wait after a bucket's announced reset.
const RESET_MARGIN: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static [u8])> {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    #[test]
    fn headers_parse_and_partial_headers_are_ignored() {
        let state = parse_headers(
            headers(&[
                ("x-ratelimit-limit", "5"),
                ("X-RateLimit-Remaining", "3"),
                ("x-ratelimit-reset-after", "4.25"),
            ])
            .into_iter(),
        )
        .unwrap();
        assert_eq!(state.remaining, 3);
        let wait = state.reset_at - Instant::now();
        assert!(wait > Duration::from_secs(4) && wait <= Duration::from_millis(4250));
        assert!(parse_headers(headers(&[("x-ratelimit-remaining", "3")]).into_iter()).is_none());
        assert!(
            parse_headers(
                headers(&[
                    ("x-ratelimit-remaining", "x"),
                    ("x-ratelimit-reset-after", "1")
                ])
                .into_iter()
            )
            .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_bucket_waits_for_its_reset() {
        let gate = RateGate::new(1000);
        let start = Instant::now();
        let mut pass = gate.enter("POST /channels/1/messages").await;
        pass.observe(Some(BucketState {
            remaining: 0,
            reset_at: Instant::now() + Duration::from_secs(5),
        }));
        drop(pass);
        // Another route is not held up.
        let _other = gate.enter("POST /channels/2/messages").await;
        assert!(start.elapsed() < Duration::from_secs(1));
        let _again = gate.enter("POST /channels/1/messages").await;
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_global_rate_is_kept() {
        let gate = RateGate::new(10);
        let start = Instant::now();
        for i in 0..21 {
            let _pass = gate.enter(&format!("GET /channels/{i}")).await;
        }
        // 21 requests at 10/s: the last goes two seconds after the first.
        assert!(start.elapsed() >= Duration::from_secs(2));
        assert!(start.elapsed() < Duration::from_millis(2100));
    }
}
