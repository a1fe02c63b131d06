//! The store's recent pace, for `dcloud-fs status`: how many messages were posted in
//! the last minute, and how many 429s ("too many requests") came back meanwhile.
//!
//! Discord limits messages, not bytes (about five message creates per five seconds
//! per channel), so messages per second is the figure that says whether a queue of
//! uploads is moving as fast as it can; a 429 says that something pushed past a
//! bucket (another process on the same bot, or a server that forces them).
//!
//! - [`Window`]: counts of one kind of event per second over the last
//!   [`WINDOW_SECS`] seconds, in a fixed ring of 60 slots: bounded memory whatever the
//!   rate, and a lock held only for an increment.
//! - [`PacedStore`]: a [`Store`] that passes every call through to another and counts
//!   the posts that succeed. The mount wraps its store in one; nothing else changes.
//! - 429s are counted for the whole process ([`note_429`], [`http_429s`]): the Discord
//!   store reports those of its REST calls (which wait them out and try again, see
//!   [`super::discord::rest`]) and those of its CDN downloads. One process serves one mount, so the figure is the mount's. The
//!   local store never sends any.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Channel, Fetched, HistoryCursor, Id, Limits, Message, NewMessage, Store, StoreResult};

/// The window the pace is measured over, in seconds.
pub const WINDOW_SECS: u64 = 60;

/// One second's count.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Which second (since the window's start) the count is for.
    second: u64,
    count: u64,
}

/// Events per second over the last [`WINDOW_SECS`] seconds.
#[derive(Debug)]
pub struct Window {
    start: Instant,
    slots: Mutex<[Slot; WINDOW_SECS as usize]>,
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

impl Window {
    /// An empty window, starting now.
    pub fn new() -> Window {
        Window::starting_at(Instant::now())
    }

    fn starting_at(start: Instant) -> Window {
        Window {
            start,
            slots: Mutex::new([Slot::default(); WINDOW_SECS as usize]),
        }
    }

    fn second_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_secs()
    }

    /// One more event, now.
    pub fn note(&self) {
        self.note_at(Instant::now());
    }

    fn note_at(&self, at: Instant) {
        let second = self.second_of(at);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[(second % WINDOW_SECS) as usize];
        if slot.second != second {
            *slot = Slot { second, count: 0 };
        }
        slot.count += 1;
    }

    /// The events of the last [`WINDOW_SECS`] seconds (this one included), and how many
    /// seconds that window spans so far (less than a minute just after the start).
    pub fn recent(&self) -> (u64, f64) {
        self.recent_at(Instant::now())
    }

    fn recent_at(&self, at: Instant) -> (u64, f64) {
        let now = self.second_of(at);
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let count = slots
            .iter()
            .filter(|slot| slot.count > 0 && slot.second + WINDOW_SECS > now)
            .map(|slot| slot.count)
            .sum();
        let span = at
            .saturating_duration_since(self.start)
            .as_secs_f64()
            .clamp(1.0, WINDOW_SECS as f64);
        (count, span)
    }
}

/// The 429s this process has seen, from any store.
static HTTP_429S: LazyLock<Window> = LazyLock::new(Window::new);

/// A 429 came back (and is being waited out).
pub fn note_429() {
    HTTP_429S.note();
}

/// The 429s this process saw in the last [`WINDOW_SECS`] seconds.
pub fn http_429s() -> u64 {
    HTTP_429S.recent().0
}

/// The pace, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaceSnapshot {
    /// The window the figures are for, in seconds ([`WINDOW_SECS`]).
    pub window_secs: u64,
    /// Messages posted in the window.
    pub messages: u64,
    /// Messages posted per second over the window (over the time since the start, if
    /// that is shorter).
    pub messages_per_sec: f64,
    /// 429 answers seen in the window.
    pub http_429s: u64,
}

/// A store that counts its successful posts, passing every call to `inner`.
pub struct PacedStore {
    inner: Arc<dyn Store>,
    posts: Window,
}

impl PacedStore {
    /// `inner`, counted.
    pub fn new(inner: Arc<dyn Store>) -> PacedStore {
        PacedStore {
            inner,
            posts: Window::new(),
        }
    }

    /// The posts of the last minute, and the process's 429s.
    pub fn pace(&self) -> PaceSnapshot {
        let (messages, span) = self.posts.recent();
        PaceSnapshot {
            window_secs: WINDOW_SECS,
            messages,
            messages_per_sec: messages as f64 / span,
            http_429s: http_429s(),
        }
    }
}

#[async_trait]
impl Store for PacedStore {
    fn identity(&self) -> String {
        self.inner.identity()
    }

    async fn limits(&self) -> StoreResult<Limits> {
        self.inner.limits().await
    }

    async fn key_salt(&self) -> StoreResult<String> {
        self.inner.key_salt().await
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
        let posted = self.inner.post(channel, message).await;
        if posted.is_ok() {
            self.posts.note();
        }
        posted
    }

    async fn history(
        &self,
        channel: Id,
        cursor: HistoryCursor,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        self.inner.history(channel, cursor, limit).await
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
        self.inner
            .fetch_attachment(channel, message, attachment, max_bytes)
            .await
    }

    async fn fetch_range(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        range: std::ops::Range<u64>,
    ) -> StoreResult<Bytes> {
        self.inner
            .fetch_range(channel, message, attachment, range)
            .await
    }

    async fn fetch_range_owned(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        range: std::ops::Range<u64>,
    ) -> StoreResult<Fetched> {
        self.inner
            .fetch_range_owned(channel, message, attachment, range)
            .await
    }

    async fn delete_messages(&self, channel: Id, messages: &[Id]) -> Vec<(Id, super::StoreError)> {
        self.inner.delete_messages(channel, messages).await
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
        self.inner.delete_message(channel, message).await
    }

    async fn prepare_fetch(&self, channel: Id, message: Id, attachment: Id) {
        self.inner.prepare_fetch(channel, message, attachment).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_window_counts_the_last_minute_only() {
        let start = Instant::now();
        let window = Window::starting_at(start);
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(window.recent_at(at(0)), (0, 1.0));
        for _ in 0..3 {
            window.note_at(at(0));
        }
        window.note_at(at(10));
        assert_eq!(window.recent_at(at(10)), (4, 10.0));
        assert_eq!(window.recent_at(at(59)), (4, 59.0));
        // Second 0 falls out at 60, second 10 at 70.
        assert_eq!(window.recent_at(at(60)), (1, 60.0));
        window.note_at(at(60)); // reuses second 0's slot
        assert_eq!(window.recent_at(at(69)), (2, 60.0));
        assert_eq!(window.recent_at(at(70)), (1, 60.0));
        assert_eq!(window.recent_at(at(500)), (0, 60.0));
    }

    #[tokio::test]
    async fn a_paced_store_counts_the_posts_that_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let local = super::super::local::LocalStore::open_or_create(
            &dir.path().join("store"),
            Limits::default(),
        )
        .unwrap();
        let store = PacedStore::new(Arc::new(local));
        let channel = store.create_channel("docs").await.unwrap();
        for i in 0..3 {
            let message = NewMessage {
                content: format!("m{i}"),
                attachments: Vec::new(),
            };
            store.post(channel.id, message).await.unwrap();
        }
        // An empty message is refused: not counted.
        assert!(store.post(channel.id, NewMessage::default()).await.is_err());
        let pace = store.pace();
        assert_eq!(pace.messages, 3);
        assert_eq!(pace.window_secs, WINDOW_SECS);
        assert!(pace.messages_per_sec > 0.0 && pace.messages_per_sec <= 3.0);
    }
}
