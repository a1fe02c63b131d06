//! Keeping to Discord's rate limits before Discord has to say so.
//!
//! Discord counts requests in *buckets*, and tells after each request how much of its
//! bucket is left (`X-RateLimit-Remaining`) and when it fills up again
//! (`X-RateLimit-Reset-After`). This gate reads those headers and lets a request go
//! only when its bucket has room for it:
//!
//! - requests are grouped by *route key*: the route template plus its top-level
//!   resource (channel or guild id), which is how Discord counts them;
//! - while a route key's bucket is unknown (its first request, or once the reset the
//!   last answer announced has passed), one request goes alone, with none other of that
//!   route key in flight, and its answer tells the bucket's state: nothing in flight
//!   could make that answer stale;
//! - once known, up to `Remaining` (as that answer said) more requests may start before
//!   the reset, several at once: each start counts against it, and a later answer of
//!   the same window can only lower it (by `Remaining` less the other requests still
//!   in flight, which it may not have counted yet), never raise it. When nothing is
//!   left, requests wait for the reset (plus a margin), and then one goes alone again
//!   to learn the new window;
//! - a 429 ([`Pass::limited`]) empties the bucket until its `retry_after` has passed,
//!   so the requests of that route key wait too; a global 429 holds every request
//!   back for as long;
//! - all requests together stay under a global rate (Discord: 50/s per bot), spaced
//!   evenly so that a burst never trips the global limit.
//!
//! The gate is the only rate limiter: the REST calls ([`super::rest`]) are sent by the
//! store itself, not by twilight-http's client (whose limiter runs one request per
//! bucket at a time, and which re-sends a 429 at once when that limiter is off).
//!
//! Locks are held for a few field updates only, never across a wait; waiters sleep on
//! a [`Notify`] (woken when a request of their route key ends or learns the bucket)
//! or until the reset, so nothing polls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
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

/// Extra wait after a bucket's announced reset: the server's clock and ours differ by
/// the response's travel time.
const RESET_MARGIN: Duration = Duration::from_millis(50);

/// What the gate knows of a route key's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bucket {
    /// Nothing (yet, or any more): the next request goes alone to learn it.
    Unknown,
    /// Requests that may still start before `reset_at`.
    Known { left: u32, reset_at: Instant },
}

#[derive(Debug)]
struct LaneState {
    bucket: Bucket,
    /// Requests of this route key that passed the gate and have not ended.
    in_flight: u32,
    /// Counts the times the bucket became unknown: answers to requests that started
    /// before are of an older window and are not taken into account.
    epoch: u64,
}

impl LaneState {
    /// Forgets a bucket whose reset (and margin) has passed.
    fn expire(&mut self, now: Instant) {
        if let Bucket::Known { reset_at, .. } = self.bucket
            && now >= reset_at + RESET_MARGIN
        {
            self.bucket = Bucket::Unknown;
            self.epoch += 1;
        }
    }
}

/// One route key: its bucket, and the requests waiting for it.
struct Lane {
    state: Mutex<LaneState>,
    /// Woken when a request ends or a bucket is learnt.
    changed: Notify,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The global pace: when the next request may go, and until when a global 429 holds
/// every request back.
struct Global {
    next: Instant,
    held_until: Instant,
}

/// The gate every REST request passes. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct RateGate {
    lanes: Arc<Mutex<HashMap<String, Arc<Lane>>>>,
    global: Arc<Mutex<Global>>,
    global_spacing: Duration,
}

/// Held while a request runs; report what its response said through it. Dropping it
/// ends the request for the gate.
pub struct Pass {
    gate: RateGate,
    lane: Arc<Lane>,
    epoch: u64,
    /// Whether this request went alone to learn the bucket.
    learner: bool,
}

impl Pass {
    /// Records what the response said about the bucket (`None`: it said nothing).
    pub fn observe(&mut self, state: Option<BucketState>) {
        let Some(state) = state else { return };
        let mut lane = self.lane.lock();
        lane.expire(Instant::now());
        if lane.epoch != self.epoch {
            return;
        }
        let others = lane.in_flight.saturating_sub(1);
        lane.bucket = match lane.bucket {
            Bucket::Unknown if self.learner => Bucket::Known {
                left: state.remaining,
                reset_at: state.reset_at,
            },
            Bucket::Unknown => Bucket::Unknown,
            Bucket::Known { left, reset_at } => Bucket::Known {
                left: left.min(state.remaining.saturating_sub(others)),
                reset_at,
            },
        };
        drop(lane);
        self.lane.changed.notify_waiters();
    }

    /// Records a 429: Discord asked to wait `wait` before this route key's next
    /// request, or (`global`) before any request.
    pub fn limited(&mut self, wait: Duration, global: bool) {
        let until = Instant::now() + wait;
        if global {
            self.gate.hold_globally(until);
            return;
        }
        let mut lane = self.lane.lock();
        let reset_at = match lane.bucket {
            Bucket::Known { reset_at, .. } => reset_at.max(until),
            Bucket::Unknown => until,
        };
        lane.bucket = Bucket::Known { left: 0, reset_at };
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut lane = self.lane.lock();
        lane.in_flight = lane.in_flight.saturating_sub(1);
        drop(lane);
        self.lane.changed.notify_waiters();
    }
}

impl RateGate {
    /// A gate that keeps all requests under `global_per_second`.
    pub fn new(global_per_second: u32) -> RateGate {
        let now = Instant::now();
        RateGate {
            lanes: Arc::default(),
            global: Arc::new(Mutex::new(Global {
                next: now,
                held_until: now,
            })),
            global_spacing: Duration::from_secs(1) / global_per_second.max(1),
        }
    }

    /// Waits until a request on `route` may go, and returns the pass it runs under.
    pub async fn enter(&self, route: &str) -> Pass {
        let lane = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            lanes.entry(route.to_string()).or_insert_with(|| {
                Arc::new(Lane {
                    state: Mutex::new(LaneState {
                        bucket: Bucket::Unknown,
                        in_flight: 0,
                        epoch: 0,
                    }),
                    changed: Notify::new(),
                })
            });
            lanes[route].clone()
        };
        let pass = loop {
            let changed = lane.changed.notified();
            let reset = {
                let mut state = lane.lock();
                state.expire(Instant::now());
                match state.bucket {
                    Bucket::Unknown if state.in_flight == 0 => {
                        state.in_flight = 1;
                        break self.pass(&lane, state.epoch, true);
                    }
                    Bucket::Known { left, reset_at } if left > 0 => {
                        state.bucket = Bucket::Known {
                            left: left - 1,
                            reset_at,
                        };
                        state.in_flight += 1;
                        break self.pass(&lane, state.epoch, false);
                    }
                    Bucket::Unknown => None,
                    Bucket::Known { reset_at, .. } => Some(reset_at + RESET_MARGIN),
                }
            };
            // `changed` was made before the state was looked at, so a change since
            // wakes it.
            match reset {
                Some(reset) => {
                    log::debug!(
                        "rate limit: {route} waits {:?} for its bucket",
                        reset.saturating_duration_since(Instant::now())
                    );
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(reset) => {}
                    }
                }
                None => changed.await,
            }
        };
        self.pace_globally().await;
        pass
    }

    fn pass(&self, lane: &Arc<Lane>, epoch: u64, learner: bool) -> Pass {
        Pass {
            gate: self.clone(),
            lane: lane.clone(),
            epoch,
            learner,
        }
    }

    fn global(&self) -> MutexGuard<'_, Global> {
        self.global.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spaces requests so that no second holds more than the global allowance: each
    /// takes the next free slot, and takes a new one if a global 429 came meanwhile.
    async fn pace_globally(&self) {
        loop {
            let slot = {
                let mut global = self.global();
                let slot = global.next.max(Instant::now());
                global.next = slot + self.global_spacing;
                slot
            };
            tokio::time::sleep_until(slot).await;
            if self.global().held_until <= Instant::now() {
                return;
            }
        }
    }

    /// Holds every request back until `until` (a global 429).
    fn hold_globally(&self, until: Instant) {
        let mut global = self.global();
        global.held_until = global.held_until.max(until);
        global.next = global.next.max(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const ROUTE: &str = "GET /channels/1/messages";

    fn headers(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static [u8])> {
        pairs.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    fn state(remaining: u32, reset_after: Duration) -> Option<BucketState> {
        Some(BucketState {
            remaining,
            reset_at: Instant::now() + reset_after,
        })
    }

    /// Whether a request on `route` gets through the gate within an hour (of paused
    /// time: the test's clock jumps when everything waits).
    async fn goes_within_an_hour(gate: &RateGate, route: &str) -> Option<Pass> {
        tokio::time::timeout(Duration::from_secs(3600), gate.enter(route))
            .await
            .ok()
    }

    /// A gate whose bucket on ROUTE was learnt: `remaining` left, reset in 10 s.
    async fn learnt(remaining: u32) -> RateGate {
        let gate = RateGate::new(1000);
        let mut pass = gate.enter(ROUTE).await;
        pass.observe(state(remaining, Duration::from_secs(10)));
        gate
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
    async fn requests_run_at_once_up_to_the_room_left_and_no_further() {
        let gate = learnt(5).await;
        let start = Instant::now();
        let running = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
            tasks.spawn(async move {
                let _pass = gate.enter(ROUTE).await;
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Instant::now() - start
            });
        }
        let mut ended: Vec<Duration> = tasks.join_all().await;
        ended.sort();
        // Five at once, at the start; the three others only after the reset.
        assert_eq!(most.load(Ordering::SeqCst), 5);
        assert!(ended[4] < Duration::from_secs(1), "{ended:?}");
        assert!(
            ended[5] >= Duration::from_secs(10) + RESET_MARGIN,
            "{ended:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_bucket_waits_for_its_reset() {
        let gate = RateGate::new(1000);
        let start = Instant::now();
        let mut pass = gate.enter("POST /channels/1/messages").await;
        pass.observe(state(0, Duration::from_secs(5)));
        drop(pass);
        // Another route is not held up.
        let _other = gate.enter("POST /channels/2/messages").await;
        assert!(start.elapsed() < Duration::from_secs(1));
        let _again = gate.enter("POST /channels/1/messages").await;
        assert!(start.elapsed() >= Duration::from_secs(5) + RESET_MARGIN);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_bucket_lets_one_request_go_at_a_time() {
        let gate = RateGate::new(1000);
        // No answer tells the bucket: one after the other.
        let first = gate.enter(ROUTE).await;
        assert!(goes_within_an_hour(&gate, ROUTE).await.is_none());
        // Other route keys have buckets of their own.
        assert!(
            goes_within_an_hour(&gate, "GET /channels/2/messages")
                .await
                .is_some()
        );
        drop(first);
        let mut second = goes_within_an_hour(&gate, ROUTE).await.unwrap();
        assert!(goes_within_an_hour(&gate, ROUTE).await.is_none());
        // Its answer tells the room: the waiting requests go without waiting for it
        // to end.
        second.observe(state(2, Duration::from_secs(10)));
        let start = Instant::now();
        let _third = goes_within_an_hour(&gate, ROUTE).await.unwrap();
        let _fourth = goes_within_an_hour(&gate, ROUTE).await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_reset_one_request_learns_the_new_window_alone() {
        let gate = learnt(5).await;
        let _early = gate.enter(ROUTE).await;
        tokio::time::sleep(Duration::from_secs(11)).await;
        // The window is over: its room no longer counts, and the request that learns
        // the new one waits for the one still out (its answer may be of either window).
        assert!(goes_within_an_hour(&gate, ROUTE).await.is_none());
        drop(_early);
        let mut learner = goes_within_an_hour(&gate, ROUTE).await.unwrap();
        assert!(goes_within_an_hour(&gate, ROUTE).await.is_none());
        learner.observe(state(1, Duration::from_secs(10)));
        let one = goes_within_an_hour(&gate, ROUTE).await.unwrap();
        drop((learner, one));
        let start = Instant::now();
        let _two = gate.enter(ROUTE).await;
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn later_answers_lower_the_room_and_never_raise_it() {
        let gate = learnt(10).await;
        let mut a = gate.enter(ROUTE).await;
        let b = gate.enter(ROUTE).await;
        // 8 left by the count; the server says 3 after `a`, and `b` may not be in
        // that yet (another client on the bot took the rest): 2.
        a.observe(state(3, Duration::from_secs(10)));
        drop(a);
        let mut c = goes_within_an_hour(&gate, ROUTE).await.unwrap();
        let d = goes_within_an_hour(&gate, ROUTE).await.unwrap();
        // An answer that says more is left changes nothing.
        c.observe(state(40, Duration::from_secs(10)));
        drop((b, c, d));
        let start = Instant::now();
        let _e = gate.enter(ROUTE).await;
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_from_before_the_reset_are_not_taken_for_the_new_window() {
        let gate = learnt(5).await;
        let mut old = gate.enter(ROUTE).await;
        tokio::time::sleep(Duration::from_secs(11)).await;
        // This answer came after the reset: it doesn't tell the new window's room.
        old.observe(state(4, Duration::from_secs(10)));
        assert!(goes_within_an_hour(&gate, ROUTE).await.is_none());
        drop(old);
        let _learner = goes_within_an_hour(&gate, ROUTE).await.unwrap();
        assert!(goes_within_an_hour(&gate, ROUTE).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_holds_its_route_until_the_retry_after() {
        let gate = learnt(10).await;
        let start = Instant::now();
        let mut pass = gate.enter(ROUTE).await;
        pass.limited(Duration::from_secs(3), false);
        drop(pass);
        let _other = gate.enter("GET /channels/2/messages").await;
        assert!(start.elapsed() < Duration::from_secs(1));
        let mut next = gate.enter(ROUTE).await;
        assert!(start.elapsed() >= Duration::from_secs(3) + RESET_MARGIN);
        // And then it learns the bucket alone.
        assert!(goes_within_an_hour(&gate, ROUTE).await.is_none());
        next.observe(state(5, Duration::from_secs(10)));
        assert!(goes_within_an_hour(&gate, ROUTE).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_global_429_holds_every_route() {
        let gate = learnt(10).await;
        let start = Instant::now();
        let mut pass = gate.enter(ROUTE).await;
        pass.limited(Duration::from_secs(2), true);
        drop(pass);
        let _other = gate.enter("GET /channels/2/messages").await;
        assert!(start.elapsed() >= Duration::from_secs(2));
        // Its route's bucket is not emptied by it.
        let again = Instant::now();
        let _same = gate.enter(ROUTE).await;
        assert!(again.elapsed() < Duration::from_secs(1));
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

    #[tokio::test(start_paused = true)]
    async fn the_global_rate_is_kept_with_many_requests_at_once() {
        let gate = RateGate::new(10);
        let mut pass = gate.enter(ROUTE).await;
        pass.observe(state(100, Duration::from_secs(100)));
        drop(pass);
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let gate = gate.clone();
            tasks.spawn(async move {
                let pass = gate.enter(ROUTE).await;
                let at = Instant::now() - start;
                // Held for a while: many in flight at once.
                tokio::time::sleep(Duration::from_secs(5)).await;
                drop(pass);
                at
            });
        }
        let mut started: Vec<Duration> = tasks.join_all().await;
        started.sort();
        for pair in started.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(100),
                "{started:?}"
            );
        }
        // The 21st request of the gate (the one that learnt was the first).
        assert!(started[19] >= Duration::from_millis(1900), "{started:?}");
    }
}
