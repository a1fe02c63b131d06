//! Test helpers: a [`Store`] wrapper that fails on purpose and counts what it is asked
//! to do, and a tiny deterministic PRNG (no dependency needed).
//!
//! [`FaultyStore`] wraps a [`LocalStore`] and can make `post`, fetches (`fetch_attachment`
//! and `fetch_range`, counted together as fetches) and `history` fail — a chosen call number, or each call with a probability drawn from a
//! seeded PRNG — with [`StoreError::Io`], before the inner store is touched (so a failed
//! post stores nothing, like an HTTP error that Discord answered). Faults can be changed
//! while a volume uses the store. It also counts calls and the most `post` calls that
//! were in flight at the same time.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dcloud_fs::format::RECORD_ATTACHMENT;
use dcloud_fs::store::local::LocalStore;
use dcloud_fs::store::{
    Channel, HistoryCursor, Id, Limits, Message, NewMessage, Store, StoreError, StoreResult,
};

/// splitmix64: tiny, fast, deterministic, good enough to pick sizes, bytes and faults.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// An index into a slice of length `n` (`n > 0`).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// What to fail. Call numbers count every call of that kind since the store was made,
/// starting at 1.
#[derive(Debug)]
struct Faults {
    rng: SplitMix64,
    post_probability: f64,
    fetch_probability: f64,
    history_probability: f64,
    fail_posts: BTreeSet<u64>,
    fail_fetches: BTreeSet<u64>,
    fail_histories: BTreeSet<u64>,
    post_delay: Duration,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub posts: u64,
    pub failed_posts: u64,
    /// Attachments on posts that succeeded, the record attachment excluded.
    pub posted_chunk_attachments: u64,
    /// Posts that succeeded.
    pub posted_messages: u64,
    /// `fetch_attachment` and `fetch_range` calls.
    pub fetches: u64,
    pub failed_fetches: u64,
    pub histories: u64,
    pub failed_histories: u64,
    /// Messages returned by all `history` calls.
    pub history_messages: u64,
    pub deletes: u64,
    /// Bytes that fetches returned.
    pub fetched_bytes: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, earlier: Counts) -> Counts {
        Counts {
            posts: self.posts - earlier.posts,
            failed_posts: self.failed_posts - earlier.failed_posts,
            posted_chunk_attachments: self.posted_chunk_attachments
                - earlier.posted_chunk_attachments,
            posted_messages: self.posted_messages - earlier.posted_messages,
            fetches: self.fetches - earlier.fetches,
            failed_fetches: self.failed_fetches - earlier.failed_fetches,
            histories: self.histories - earlier.histories,
            failed_histories: self.failed_histories - earlier.failed_histories,
            history_messages: self.history_messages - earlier.history_messages,
            deletes: self.deletes - earlier.deletes,
            fetched_bytes: self.fetched_bytes - earlier.fetched_bytes,
        }
    }
}

/// A store that fails on purpose. See the module docs.
pub struct FaultyStore {
    inner: Arc<LocalStore>,
    faults: Mutex<Faults>,
    posts: AtomicU64,
    failed_posts: AtomicU64,
    posted_chunk_attachments: AtomicU64,
    posted_messages: AtomicU64,
    fetches: AtomicU64,
    failed_fetches: AtomicU64,
    histories: AtomicU64,
    failed_histories: AtomicU64,
    history_messages: AtomicU64,
    deletes: AtomicU64,
    fetched_bytes: AtomicU64,
    posts_in_flight: AtomicU64,
    max_posts_in_flight: AtomicU64,
    /// Channels whose `history` calls wait ([`FaultyStore::hold_history`]).
    history_holds: Mutex<HashMap<Id, Arc<HistoryHold>>>,
    /// `history` calls in flight.
    histories_in_flight: AtomicU64,
    /// The `history` call that answers last ([`FaultyStore::answer_last`]).
    last_answer: Mutex<Option<LastAnswer>>,
    /// Makes every `post` wait ([`FaultyStore::hold_posts`]).
    post_hold: Mutex<Option<Arc<HistoryHold>>>,
}

/// Holds a channel's `history` calls (or, from [`FaultyStore::hold_posts`], every
/// `post`) until released, and counts them: what a slow channel looks like to whoever
/// opens it, or a store whose uploads don't end.
#[derive(Debug)]
pub struct HistoryHold {
    /// A permit per call that arrived.
    arrived: tokio::sync::Semaphore,
    /// Closed once released.
    released: tokio::sync::Semaphore,
    calls: AtomicU64,
}

impl HistoryHold {
    /// Waits until one more call arrived (and is held).
    pub async fn arrived(&self) {
        self.arrived.acquire().await.unwrap().forget();
    }

    /// Lets the held calls and every later one through.
    pub fn release(&self) {
        self.released.close();
    }

    /// The calls so far, held or let through.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The `history` call that answers last ([`FaultyStore::answer_last`]).
#[derive(Debug)]
struct LastAnswer {
    call: u64,
    /// A call after it has ended.
    later_ended: bool,
    hold: Arc<HistoryHold>,
}

/// Counts a `history` call in flight until it ends (even if it is cancelled).
struct HistoryInFlight<'a> {
    store: &'a FaultyStore,
    number: u64,
}

impl<'a> HistoryInFlight<'a> {
    fn new(store: &'a FaultyStore, number: u64) -> Self {
        store.histories_in_flight.fetch_add(1, Ordering::SeqCst);
        HistoryInFlight { store, number }
    }
}

impl Drop for HistoryInFlight<'_> {
    fn drop(&mut self) {
        self.store
            .histories_in_flight
            .fetch_sub(1, Ordering::SeqCst);
        self.store.check_last_answer(Some(self.number));
    }
}

/// Decrements the in-flight counter however the post ends (even if it is cancelled).
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn injected(what: &str, number: u64) -> StoreError {
    StoreError::io(
        format!("injected fault in {what} call #{number}"),
        std::io::Error::other("injected by FaultyStore"),
    )
}

impl FaultyStore {
    pub fn new(inner: Arc<LocalStore>, seed: u64) -> FaultyStore {
        FaultyStore {
            inner,
            faults: Mutex::new(Faults {
                rng: SplitMix64::new(seed),
                post_probability: 0.0,
                fetch_probability: 0.0,
                history_probability: 0.0,
                fail_posts: BTreeSet::new(),
                fail_fetches: BTreeSet::new(),
                fail_histories: BTreeSet::new(),
                post_delay: Duration::ZERO,
            }),
            posts: AtomicU64::new(0),
            failed_posts: AtomicU64::new(0),
            posted_chunk_attachments: AtomicU64::new(0),
            posted_messages: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            failed_fetches: AtomicU64::new(0),
            histories: AtomicU64::new(0),
            failed_histories: AtomicU64::new(0),
            history_messages: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            posts_in_flight: AtomicU64::new(0),
            max_posts_in_flight: AtomicU64::new(0),
            history_holds: Mutex::default(),
            histories_in_flight: AtomicU64::new(0),
            last_answer: Mutex::default(),
            post_hold: Mutex::default(),
        }
    }

    /// Makes every `post` from now on wait until the hold is released (before it is
    /// counted or stores anything).
    pub fn hold_posts(&self) -> Arc<HistoryHold> {
        let hold = Arc::new(HistoryHold {
            arrived: tokio::sync::Semaphore::new(0),
            released: tokio::sync::Semaphore::new(0),
            calls: AtomicU64::new(0),
        });
        *self.post_hold.lock().unwrap_or_else(|p| p.into_inner()) = Some(hold.clone());
        hold
    }

    /// Makes `channel`'s `history` calls wait until the hold is released.
    pub fn hold_history(&self, channel: Id) -> Arc<HistoryHold> {
        let hold = Arc::new(HistoryHold {
            arrived: tokio::sync::Semaphore::new(0),
            released: tokio::sync::Semaphore::new(0),
            calls: AtomicU64::new(0),
        });
        self.history_holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel, hold.clone());
        hold
    }

    /// Makes the `n`-th `history` call from now (1 = the next one) answer after the
    /// calls in flight beside it: once counted, it waits until a later call has ended
    /// and no other is in flight. Returns a hold that counts it (its `release` is not
    /// needed).
    pub fn answer_last(&self, n: u64) -> Arc<HistoryHold> {
        let hold = Arc::new(HistoryHold {
            arrived: tokio::sync::Semaphore::new(0),
            released: tokio::sync::Semaphore::new(0),
            calls: AtomicU64::new(0),
        });
        *self.last_answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastAnswer {
            call: self.histories.load(Ordering::SeqCst) + n,
            later_ended: false,
            hold: hold.clone(),
        });
        hold
    }

    /// Lets the call that answers last go if its time has come ([`FaultyStore::answer_last`]).
    fn check_last_answer(&self, ended: Option<u64>) {
        let mut last = self.last_answer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = last.as_mut() else { return };
        if ended.is_some_and(|call| call > state.call) {
            state.later_ended = true;
        }
        if state.later_ended
            && state.hold.calls() > 0
            && self.histories_in_flight.load(Ordering::SeqCst) == 1
        {
            state.hold.release();
            *last = None;
        }
    }

    pub fn inner(&self) -> &Arc<LocalStore> {
        &self.inner
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the `n`-th `post` from now (1 = the next one) fail.
    pub fn fail_post_in(&self, n: u64) {
        let at = self.posts.load(Ordering::SeqCst) + n;
        self.faults().fail_posts.insert(at);
    }

    /// Makes the `n`-th fetch (`fetch_attachment` or `fetch_range`) from now fail.
    pub fn fail_fetch_in(&self, n: u64) {
        let at = self.fetches.load(Ordering::SeqCst) + n;
        self.faults().fail_fetches.insert(at);
    }

    /// Makes the `n`-th `history` call from now fail.
    pub fn fail_history_in(&self, n: u64) {
        let at = self.histories.load(Ordering::SeqCst) + n;
        self.faults().fail_histories.insert(at);
    }

    /// Fails each post / fetch / history call with these probabilities.
    pub fn set_failure_rates(&self, post: f64, fetch: f64, history: f64) {
        let mut faults = self.faults();
        faults.post_probability = post;
        faults.fetch_probability = fetch;
        faults.history_probability = history;
    }

    /// No more faults of any kind.
    pub fn clear_faults(&self) {
        let mut faults = self.faults();
        faults.post_probability = 0.0;
        faults.fetch_probability = 0.0;
        faults.history_probability = 0.0;
        faults.fail_posts.clear();
        faults.fail_fetches.clear();
        faults.fail_histories.clear();
    }

    /// Makes every post take at least this long (so that parallel posts overlap).
    pub fn set_post_delay(&self, delay: Duration) {
        self.faults().post_delay = delay;
    }

    pub fn counts(&self) -> Counts {
        let load = |c: &AtomicU64| c.load(Ordering::SeqCst);
        Counts {
            posts: load(&self.posts),
            failed_posts: load(&self.failed_posts),
            posted_chunk_attachments: load(&self.posted_chunk_attachments),
            posted_messages: load(&self.posted_messages),
            fetches: load(&self.fetches),
            failed_fetches: load(&self.failed_fetches),
            histories: load(&self.histories),
            failed_histories: load(&self.failed_histories),
            history_messages: load(&self.history_messages),
            deletes: load(&self.deletes),
            fetched_bytes: load(&self.fetched_bytes),
        }
    }

    /// The most posts that were in flight at once since the last reset.
    pub fn max_posts_in_flight(&self) -> u64 {
        self.max_posts_in_flight.load(Ordering::SeqCst)
    }

    pub fn reset_max_posts_in_flight(&self) {
        self.max_posts_in_flight.store(0, Ordering::SeqCst);
    }

    /// Counts a fetch (whole or ranged) and fails it if its number is due to fail.
    fn fetch_fault(&self, what: &str) -> StoreResult<()> {
        let number = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        let fail = {
            let mut faults = self.faults();
            let faults = &mut *faults;
            let p = faults.fetch_probability;
            Self::decide(number, &mut faults.fail_fetches, p, &mut faults.rng)
        };
        if fail {
            self.failed_fetches.fetch_add(1, Ordering::SeqCst);
            return Err(injected(what, number));
        }
        Ok(())
    }

    /// Whether call `number` of a kind fails, given the explicit list and probability.
    fn decide(number: u64, listed: &mut BTreeSet<u64>, p: f64, rng: &mut SplitMix64) -> bool {
        // Draw for every call so the fault pattern only depends on the call sequence.
        let random = rng.chance(p);
        listed.remove(&number) || random
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn key_salt(&self) -> StoreResult<String> {
        self.inner.key_salt().await
    }

    fn identity(&self) -> String {
        self.inner.identity()
    }

    async fn limits(&self) -> StoreResult<Limits> {
        self.inner.limits().await
    }

    async fn current_user(&self) -> StoreResult<Id> {
        self.inner.current_user().await
    }

    async fn channels(&self) -> StoreResult<Vec<Channel>> {
        self.inner.channels().await
    }

    async fn create_channel(&self, name: &str) -> StoreResult<Channel> {
        self.inner.create_channel(name).await
    }

    async fn delete_channel(&self, channel: Id) -> StoreResult<()> {
        self.inner.delete_channel(channel).await
    }

    async fn post(&self, channel: Id, message: NewMessage) -> StoreResult<Message> {
        let hold = self
            .post_hold
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(hold) = hold {
            hold.calls.fetch_add(1, Ordering::SeqCst);
            hold.arrived.add_permits(1);
            let _ = hold.released.acquire().await;
        }
        let now = self.posts_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _in_flight = InFlight(&self.posts_in_flight);
        self.max_posts_in_flight.fetch_max(now, Ordering::SeqCst);
        let number = self.posts.fetch_add(1, Ordering::SeqCst) + 1;
        let (fail, delay) = {
            let mut faults = self.faults();
            let faults = &mut *faults;
            let p = faults.post_probability;
            let fail = Self::decide(number, &mut faults.fail_posts, p, &mut faults.rng);
            (fail, faults.post_delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if fail {
            self.failed_posts.fetch_add(1, Ordering::SeqCst);
            return Err(injected("post", number));
        }
        let chunks = message
            .attachments
            .iter()
            .filter(|a| a.filename != RECORD_ATTACHMENT)
            .count() as u64;
        let posted = self.inner.post(channel, message).await?;
        self.posted_messages.fetch_add(1, Ordering::SeqCst);
        self.posted_chunk_attachments
            .fetch_add(chunks, Ordering::SeqCst);
        Ok(posted)
    }

    async fn history(
        &self,
        channel: Id,
        cursor: HistoryCursor,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let hold = self
            .history_holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&channel)
            .cloned();
        if let Some(hold) = hold {
            hold.calls.fetch_add(1, Ordering::SeqCst);
            hold.arrived.add_permits(1);
            // Closed when released: then every wait ends.
            let _ = hold.released.acquire().await;
        }
        let number = self.histories.fetch_add(1, Ordering::SeqCst) + 1;
        let _in_flight = HistoryInFlight::new(self, number);
        let held = self
            .last_answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|last| last.call == number)
            .map(|last| last.hold.clone());
        if let Some(hold) = held {
            hold.calls.fetch_add(1, Ordering::SeqCst);
            hold.arrived.add_permits(1);
            self.check_last_answer(None);
            let _ = hold.released.acquire().await;
        }
        let fail = {
            let mut faults = self.faults();
            let faults = &mut *faults;
            let p = faults.history_probability;
            Self::decide(number, &mut faults.fail_histories, p, &mut faults.rng)
        };
        if fail {
            self.failed_histories.fetch_add(1, Ordering::SeqCst);
            return Err(injected("history", number));
        }
        let page = self.inner.history(channel, cursor, limit).await?;
        self.history_messages
            .fetch_add(page.len() as u64, Ordering::SeqCst);
        Ok(page)
    }

    async fn message(&self, channel: Id, message: Id) -> StoreResult<Message> {
        self.inner.message(channel, message).await
    }

    async fn fetch_attachment(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        max_bytes: u64,
    ) -> StoreResult<Bytes> {
        self.fetch_fault("fetch_attachment")?;
        let data = self
            .inner
            .fetch_attachment(channel, message, attachment, max_bytes)
            .await?;
        self.fetched_bytes
            .fetch_add(data.len() as u64, Ordering::SeqCst);
        Ok(data)
    }

    async fn fetch_range(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        range: std::ops::Range<u64>,
    ) -> StoreResult<Bytes> {
        self.fetch_fault("fetch_range")?;
        let data = self
            .inner
            .fetch_range(channel, message, attachment, range)
            .await?;
        self.fetched_bytes
            .fetch_add(data.len() as u64, Ordering::SeqCst);
        Ok(data)
    }

    fn concurrent_history_reads(&self) -> usize {
        self.inner.concurrent_history_reads()
    }

    async fn pins(&self, channel: Id) -> StoreResult<Vec<Message>> {
        self.inner.pins(channel).await
    }

    async fn pin(&self, channel: Id, message: Id) -> StoreResult<()> {
        self.inner.pin(channel, message).await
    }

    async fn unpin(&self, channel: Id, message: Id) -> StoreResult<()> {
        self.inner.unpin(channel, message).await
    }

    async fn delete_message(&self, channel: Id, message: Id) -> StoreResult<()> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete_message(channel, message).await
    }
}
