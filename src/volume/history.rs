//! Reading a channel's history: every message newer than a cursor, handed out a page at
//! a time in id order, fetched with several requests in flight.
//!
//! A store pages history like Discord: at most 100 messages a request, after (or
//! before) a cursor id. Read one page after the other, a channel of 200,000 messages
//! costs 2,000 round trips back to back. But a snowflake holds the millisecond it was
//! made at ([`crate::store::snowflake_time_ms`]: the time sits in the id's high bits),
//! so ids order like time, and the ids between two messages can be cut into slices
//! that are paged independently. [`HistoryReader`] reads in rounds:
//!
//! 1. **Serially**: the page after the cursor. A page that isn't full is the rest of
//!    the history: the read ends there, one request in all (a refresh of a channel
//!    that changed a little costs what it cost before).
//! 2. **In slices**, after a full page (and with a parallelism above 1): it asks for the
//!    newest message ([`HistoryCursor::Latest`], limit 1) and cuts the ids from the
//!    page's last to the newest into slices, each paged with `After(slice start)` until
//!    the ids pass the slice's end, with at most `parallelism` requests in flight.
//! 3. Then serially again, from the newest message seen when the slices were cut, so
//!    that messages posted during the read are read too; a full page there starts
//!    another round of slices, a page that isn't full ends the read.
//!
//! ## Cutting slices
//!
//! How many messages lie between two ids is unknown until they are read: a channel's
//! chat comes in bursts and gaps. So slices are cut only when a request is due, each
//! to hold about [`SLICE_TARGET`] messages at the density the latest page showed. (A
//! page after cursor `c` whose last id is `l` holds every message in `(c, l]`, so
//! `(l - c) / len` ids per message is the density there, whether the page stayed in
//! its slice or ran past its end.) At a steady density one request reads a whole slice
//! and runs a little past its end. What it reads past the end reads the slices after
//! it as far as it goes, those no request is reading yet (a gap is crossed so, and
//! the slices after it are cut wider); where a request is on its way already, it is
//! dropped. A slice that turns out denser (a full page inside it) goes on from its new
//! cursor, and is cut again first if the rest of it is wide at the new density. Slices
//! are cut at ids, not at whole milliseconds, so a burst within one millisecond (ids
//! one apart, as the local store and the fake Discord hand them out) is cut like any
//! other. Handed out, the messages of consecutive slices are joined into pages of up
//! to [`MAX_HISTORY_PAGE`] again.
//!
//! ## Order
//!
//! Pages are handed out in id order, oldest first, whatever order their requests end
//! in. The caller relies on it twice: records are applied older before newer (what
//! [`super::records`]'s version-1 cutover rule assumes), and after each page it notes
//! the page's last id as read ([`super::Index::advance`]), which is only right if
//! every message before it has been handed out — so that a read cut short by an error
//! resumes from a prefix that was read whole. A slice's pages therefore wait until
//! every slice before it has been handed out. The waiting is bounded: a request goes
//! to the oldest unfinished slice whenever it has none in flight, and to a later slice
//! only if it is among the next [`AHEAD_PER_REQUEST`] × `parallelism` slices and fewer
//! than that many pages' worth of messages are held or on their way. Requests run as tasks of their own,
//! so they go on while the caller works on a page; dropping the reader cancels them.
//!
//! [`ReadAhead`] runs a reader in a task of its own from the moment it is made, a
//! bounded number of pages ahead of its caller: a refresh reads the history so while
//! it fetches and applies the records of the pages before, and a fresh machine while
//! it downloads and opens the checkpoint the history goes on from.
//!
//! ## Errors
//!
//! A request's error is the error of [`HistoryReader::next_page`]: the pages handed out
//! before it stay handed out, nothing after them is, and the reader is spent (every
//! later call fails). Reading again from the last id handed out resumes the read.
//!
//! ## Cost
//!
//! At parallelism 1 the reading is the serial one: one request at a time, each after
//! the last page's last id (the next one is sent before the page is handed out, so it
//! overlaps the caller's work). Above 1, a long read takes more requests than pages:
//! the one for the newest message, the one at the end of each round, and, because a
//! slice holds fewer messages than a page and what runs past its end is dropped where
//! the next slice is being read, about a quarter more at a steady density, and up to
//! twice the pages in the bursty histories of the tests. (Measured at 50 ms a request
//! with parallelism 4: 20,000 messages at random intervals, 201 requests in 10 s
//! serially, 265 in 3.4 s; 2,000 to 4,000 messages in bursts and gaps, about 1.7 times
//! the requests in half the time; [`SLICE_TARGET`] is the best of 60, 70, 80, 90 and
//! 95 there.) Rate limits are the store's to keep; this module adds no waits.
//!
//! The Discord store's rate gate can run up to a bucket's room of one channel's
//! history requests at once, but it still says 1 ([`Store::concurrent_history_reads`]),
//! and the volume asks a reader for no more than that: measured on the fake Discord at
//! 50 ms, slices cost 1.7–1.9 times the requests under a global pace of 45 a second,
//! so a long replay gains (20,000 messages: 12.6 s → 9.3 s at 8) but the short tail
//! after a checkpoint loses (a fresh mount 0.90 s → 1.09 s). Slicing only long ranges
//! is the mend before it is turned on.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::store::{HistoryCursor, Id, MAX_HISTORY_PAGE, Message, Store, StoreError};

/// Messages a slice is cut to hold, at the density last seen: less than a page, so that
/// one request usually reads a whole slice.
pub const SLICE_TARGET: u64 = MAX_HISTORY_PAGE as u64 * 4 / 5;

/// The most requests a reader has in flight, whatever it is asked for.
pub const MAX_PARALLELISM: usize = 64;

/// How far ahead of the oldest unfinished slice reading may go, per request allowed
/// in flight: in slices, and in pages' worth of messages held or on their way.
pub const AHEAD_PER_REQUEST: usize = 4;

/// Reads every message of a channel newer than a cursor, in id order, with several
/// requests in flight. See the module docs.
pub struct HistoryReader {
    store: Arc<dyn Store>,
    channel: Id,
    parallelism: usize,
    state: State,
    /// The slices of the current round, oldest first; empty outside a round.
    slices: VecDeque<Slice>,
    /// The newest message when the current round began: where its slices end.
    newest: Id,
    /// Ids per message, at the density the latest page showed.
    spacing: u64,
    /// Names the next slice (answers find their slice by it).
    next_slice: u64,
    /// Messages fetched and not handed out yet.
    held: usize,
    requests: JoinSet<Answer>,
}

/// Where the read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The page after `cursor` is asked for.
    Serial { cursor: Id },
    /// The newest message is asked for; the ids after `cursor` up to it are sliced.
    Newest { cursor: Id },
    /// A round of slices is read.
    Sliced,
    /// Read to the end.
    Done,
    /// A request failed.
    Failed,
}

/// Part of a round: the messages with ids in `(cursor, end]` are still to be read.
#[derive(Debug)]
struct Slice {
    key: u64,
    cursor: Id,
    end: Id,
    /// Read, not handed out yet, oldest first.
    pages: VecDeque<Vec<Message>>,
    /// A request for the page after `cursor` is in flight.
    fetching: bool,
    /// Read to its end.
    done: bool,
}

/// What a request asked.
#[derive(Debug, Clone, Copy)]
enum Ask {
    /// The page after `after`, for the slice `slice` (or the serial read).
    Page { after: Id, slice: Option<u64> },
    /// The newest message.
    Newest,
}

type Answer = (Ask, Result<Vec<Message>, StoreError>);

impl HistoryReader {
    /// A reader of every message of `channel` with an id above `after`, with at most
    /// `parallelism` requests in flight (0 counts as 1, and more than
    /// [`MAX_PARALLELISM`] as that). Nothing is asked before the
    /// first [`HistoryReader::next_page`].
    pub fn new(store: Arc<dyn Store>, channel: Id, after: Id, parallelism: usize) -> Self {
        HistoryReader {
            store,
            channel,
            parallelism: parallelism.clamp(1, MAX_PARALLELISM),
            state: State::Serial { cursor: after },
            slices: VecDeque::new(),
            newest: after,
            spacing: 1,
            next_slice: 0,
            held: 0,
            requests: JoinSet::new(),
        }
    }

    /// The next page: messages sorted by id, each newer than every message handed out
    /// before, none missing in between; never empty. `None` once the history is read
    /// to its end (its end when the read got there). After an error, every call fails.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Message>>, StoreError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Failed => return Err(spent()),
                State::Serial { cursor } if self.requests.is_empty() => {
                    self.ask(Ask::Page {
                        after: cursor,
                        slice: None,
                    });
                }
                State::Sliced => {
                    if let Some(page) = self.ready_page() {
                        self.send_slice_requests();
                        return Ok(Some(page));
                    }
                    if self.slices.is_empty() {
                        self.state = State::Serial {
                            cursor: self.newest,
                        };
                        continue;
                    }
                    self.send_slice_requests();
                }
                State::Serial { .. } | State::Newest { .. } => {}
            }
            let (ask, result) = self.answer().await?;
            let messages = match result {
                Ok(messages) => messages,
                Err(e) => return Err(self.fail(e)),
            };
            match ask {
                Ask::Newest => self.on_newest(&messages),
                Ask::Page { after, slice: None } => {
                    if let Some(page) = self.on_serial_page(after, messages) {
                        return Ok(Some(page));
                    }
                }
                Ask::Page {
                    after,
                    slice: Some(key),
                } => self.on_slice_page(key, after, messages),
            }
        }
    }

    /// Sends a request.
    fn ask(&mut self, ask: Ask) {
        let store = self.store.clone();
        let channel = self.channel;
        self.requests.spawn(async move {
            let result = match ask {
                Ask::Page { after, .. } => {
                    store
                        .history(channel, HistoryCursor::After(after), MAX_HISTORY_PAGE)
                        .await
                }
                Ask::Newest => store.history(channel, HistoryCursor::Latest, 1).await,
            };
            (ask, result)
        });
    }

    /// The next request to end.
    async fn answer(&mut self) -> Result<Answer, StoreError> {
        match self.requests.join_next().await {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Some(Err(e)) => Err(self.fail(StoreError::Unavailable(format!(
                "a history request was cancelled: {e}"
            )))),
            None => Err(self.fail(StoreError::Unavailable(
                "no history request was in flight (a bug)".into(),
            ))),
        }
    }

    /// Ends the read with `error`.
    fn fail(&mut self, error: StoreError) -> StoreError {
        self.state = State::Failed;
        self.requests.abort_all();
        self.slices.clear();
        self.held = 0;
        error
    }

    /// A serial page: handed out, after the next request is sent (the next page, or
    /// the newest message if the page was full and slices may be read).
    fn on_serial_page(&mut self, after: Id, messages: Vec<Message>) -> Option<Vec<Message>> {
        let full = messages.len() >= MAX_HISTORY_PAGE;
        let page = oldest_first(after, messages);
        let (Some(first), Some(last)) = (page.first().map(|m| m.id), page.last().map(|m| m.id))
        else {
            self.state = State::Done;
            return None;
        };
        if !full {
            self.state = State::Done;
        } else if self.parallelism > 1 {
            self.spacing = spacing(first, last, page.len() as u64 - 1);
            self.state = State::Newest { cursor: last };
            self.ask(Ask::Newest);
        } else {
            self.state = State::Serial { cursor: last };
            self.ask(Ask::Page {
                after: last,
                slice: None,
            });
        }
        Some(page)
    }

    /// The newest message: a round of slices up to it begins (or, if there is nothing
    /// newer than the cursor after all, the serial read goes on).
    fn on_newest(&mut self, messages: &[Message]) {
        let State::Newest { cursor } = self.state else {
            return;
        };
        let newest = messages.iter().map(|m| m.id).max().unwrap_or(0);
        if newest <= cursor {
            self.state = State::Serial { cursor };
            return;
        }
        self.newest = newest;
        self.slices.clear();
        let key = self.new_key();
        self.slices.push_back(Slice {
            key,
            cursor,
            end: newest,
            pages: VecDeque::new(),
            fetching: false,
            done: false,
        });
        self.state = State::Sliced;
    }

    /// A page of a slice. It holds every message after the cursor it was asked after
    /// up to its last (to the end of the history, if it isn't full), so it reads the
    /// slice up to there, and the slices after it as far as it reaches, unless a
    /// request of their own is on its way (or they are read already): then what lies
    /// in them is dropped.
    fn on_slice_page(&mut self, key: u64, after: Id, messages: Vec<Message>) {
        let full = messages.len() >= MAX_HISTORY_PAGE;
        let page = oldest_first(after, messages);
        let Some(at) = self.slices.iter().position(|s| s.key == key) else {
            return;
        };
        self.slices[at].fetching = false;
        let read_to = match page.last() {
            Some(last) if full => last.id,
            _ => Id::MAX,
        };
        if let Some(last) = page.last() {
            self.spacing = spacing(after, last.id, page.len() as u64);
        }
        let mut messages = page.into_iter().peekable();
        for (i, slice) in self.slices.iter_mut().enumerate().skip(at) {
            if slice.cursor >= read_to {
                break;
            }
            let takes = i == at || !(slice.fetching || slice.done);
            let mut part = Vec::new();
            while let Some(message) = messages.next_if(|m| m.id <= slice.end) {
                if takes && message.id > slice.cursor {
                    part.push(message);
                }
            }
            if !takes {
                continue;
            }
            if !part.is_empty() {
                self.held += part.len();
                slice.pages.push_back(part);
            }
            if read_to >= slice.end {
                slice.done = true;
            } else {
                slice.cursor = read_to;
            }
        }
    }

    /// The oldest messages held, as one page of at most [`MAX_HISTORY_PAGE`], if every
    /// slice before them has been handed out; slices read and handed out whole are
    /// dropped.
    fn ready_page(&mut self) -> Option<Vec<Message>> {
        let mut ready: Vec<Message> = Vec::new();
        while let Some(front) = self.slices.front_mut() {
            if let Some(page) = front.pages.front() {
                if !ready.is_empty() && ready.len() + page.len() > MAX_HISTORY_PAGE {
                    break;
                }
                let page = front.pages.pop_front().expect("a page");
                self.held -= page.len();
                ready.extend(page);
            } else if front.done {
                self.slices.pop_front();
            } else {
                break;
            }
        }
        (!ready.is_empty()).then_some(ready)
    }

    /// Sends requests for slices while fewer than `parallelism` are in flight: for the
    /// oldest unfinished slice always, for later ones within the bounds of the module
    /// docs. A slice much wider than [`SLICE_TARGET`] messages at the density last seen
    /// is cut first, and the request goes to its front.
    fn send_slice_requests(&mut self) {
        let ahead = AHEAD_PER_REQUEST * self.parallelism;
        while self.requests.len() < self.parallelism {
            let Some(oldest) = self.slices.iter().position(|s| !s.done) else {
                return;
            };
            let may_go_ahead =
                self.held + self.requests.len() * MAX_HISTORY_PAGE < ahead * MAX_HISTORY_PAGE;
            let Some(at) = self
                .slices
                .iter()
                .enumerate()
                .take(oldest + ahead)
                .position(|(i, s)| !s.done && !s.fetching && (i == oldest || may_go_ahead))
            else {
                return;
            };
            let span = self.spacing.saturating_mul(SLICE_TARGET).max(1);
            let slice = &mut self.slices[at];
            if slice.end - slice.cursor > span.saturating_add(span / 2) {
                let cut = slice.cursor + span;
                let rest_end = std::mem::replace(&mut slice.end, cut);
                let key = self.new_key();
                self.slices.insert(
                    at + 1,
                    Slice {
                        key,
                        cursor: cut,
                        end: rest_end,
                        pages: VecDeque::new(),
                        fetching: false,
                        done: false,
                    },
                );
            }
            let slice = &mut self.slices[at];
            slice.fetching = true;
            let ask = Ask::Page {
                after: slice.cursor,
                slice: Some(slice.key),
            };
            self.ask(ask);
        }
    }

    fn new_key(&mut self) -> u64 {
        self.next_slice += 1;
        self.next_slice
    }
}

/// A [`HistoryReader`] driven by a task of its own from the moment it is made, so that
/// the history is read while the caller does something else first (a fresh machine
/// downloads and opens a checkpoint while the messages after it are read: see
/// [`super::checkpoint`]). Up to `ahead` pages wait for the caller; then the reading
/// waits for it. Its pages are the reader's, with the same guarantees (order, nothing
/// missing, the reader's error then an error at every call); dropping it stops the
/// reading.
pub struct ReadAhead {
    pages: tokio::sync::mpsc::Receiver<Result<Option<Vec<Message>>, StoreError>>,
    /// The reading ended (its end or an error was handed out).
    ended: Option<Ended>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone, Copy)]
enum Ended {
    AtTheEnd,
    ByAnError,
}

impl ReadAhead {
    /// Starts reading with `reader` now (on the current tokio runtime).
    pub fn start(mut reader: HistoryReader, ahead: usize) -> ReadAhead {
        let (sender, pages) = tokio::sync::mpsc::channel(ahead.max(1));
        let task = tokio::spawn(async move {
            loop {
                let next = reader.next_page().await;
                let last = !matches!(next, Ok(Some(_)));
                if sender.send(next).await.is_err() || last {
                    return;
                }
            }
        });
        ReadAhead {
            pages,
            ended: None,
            task,
        }
    }

    /// The next page, as [`HistoryReader::next_page`].
    pub async fn next_page(&mut self) -> Result<Option<Vec<Message>>, StoreError> {
        match self.ended {
            Some(Ended::AtTheEnd) => return Ok(None),
            Some(Ended::ByAnError) => return Err(spent()),
            None => {}
        }
        let next = self.pages.recv().await.unwrap_or_else(|| {
            // The task ended without saying so: it panicked or its runtime is gone.
            Err(StoreError::Unavailable(
                "reading the channel's history stopped midway".into(),
            ))
        });
        match next {
            Ok(Some(page)) => Ok(Some(page)),
            Ok(None) => {
                self.ended = Some(Ended::AtTheEnd);
                Ok(None)
            }
            Err(e) => {
                self.ended = Some(Ended::ByAnError);
                Err(e)
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The error of a read that failed before.
fn spent() -> StoreError {
    StoreError::Unavailable("reading the channel's history stopped at an earlier error".into())
}

/// A page as a store answered it (newest first, untrusted), oldest first, without
/// anything at or before the cursor it was asked after and without repeats.
fn oldest_first(after: Id, mut messages: Vec<Message>) -> Vec<Message> {
    messages.retain(|m| m.id > after);
    messages.sort_by_key(|m| m.id);
    messages.dedup_by_key(|m| m.id);
    messages
}

/// Ids per message when `count` messages take the ids after `from` up to `to`.
fn spacing(from: Id, to: Id, count: u64) -> u64 {
    (to.saturating_sub(from) / count.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::store::{
        Channel, Limits, NewMessage, StoreResult, snowflake_at_ms, snowflake_time_ms,
    };

    const CHANNEL: Id = 42;

    /// A store of one channel's messages with chosen ids, in memory. Its history calls
    /// yield to the scheduler a few times (more or fewer by cursor) before they answer,
    /// so that requests overlap and end out of order; it counts how many are in flight
    /// at once, can fail one call, and can post messages once the newest message has
    /// been asked for (as if they were posted during the read).
    #[derive(Default)]
    struct MemoryStore {
        messages: Mutex<BTreeMap<Id, Message>>,
        /// Posted right after a `Latest` call answered.
        posted_after_latest: Mutex<Vec<Id>>,
        calls: AtomicU64,
        /// The history call (counting from 1) that fails; 0: none.
        fail_call: AtomicU64,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    fn message(id: Id) -> Message {
        Message {
            id,
            channel_id: CHANNEL,
            author_id: 7,
            content: format!("m{id}"),
            attachments: vec![],
        }
    }

    impl MemoryStore {
        fn with(ids: &[Id]) -> Arc<MemoryStore> {
            let store = MemoryStore::default();
            store.post(ids);
            Arc::new(store)
        }

        fn post(&self, ids: &[Id]) {
            let mut messages = self.messages.lock().unwrap();
            for &id in ids {
                messages.insert(id, message(id));
            }
        }

        fn ids(&self) -> Vec<Id> {
            self.messages.lock().unwrap().keys().copied().collect()
        }

        fn newest(&self) -> Id {
            self.ids().last().copied().unwrap_or(0)
        }
    }

    fn not_here<T>() -> StoreResult<T> {
        Err(StoreError::Invalid("not in this test store".into()))
    }

    #[async_trait]
    impl Store for MemoryStore {
        fn identity(&self) -> String {
            "memory".into()
        }
        async fn limits(&self) -> StoreResult<Limits> {
            Ok(Limits::default())
        }
        async fn key_salt(&self) -> StoreResult<String> {
            not_here()
        }
        async fn current_user(&self) -> StoreResult<Id> {
            Ok(7)
        }
        async fn channels(&self) -> StoreResult<Vec<Channel>> {
            not_here()
        }
        async fn create_channel(&self, _: &str) -> StoreResult<Channel> {
            not_here()
        }
        async fn delete_channel(&self, _: Id) -> StoreResult<()> {
            not_here()
        }
        async fn post(&self, _: Id, _: NewMessage) -> StoreResult<Message> {
            not_here()
        }
        async fn message(&self, _: Id, _: Id) -> StoreResult<Message> {
            not_here()
        }
        async fn fetch_attachment(&self, _: Id, _: Id, _: Id, _: u64) -> StoreResult<Bytes> {
            not_here()
        }
        async fn fetch_range(
            &self,
            _: Id,
            _: Id,
            _: Id,
            _: std::ops::Range<u64>,
        ) -> StoreResult<Bytes> {
            not_here()
        }
        async fn delete_message(&self, _: Id, _: Id) -> StoreResult<()> {
            not_here()
        }

        async fn history(
            &self,
            channel: Id,
            cursor: HistoryCursor,
            limit: usize,
        ) -> StoreResult<Vec<Message>> {
            assert_eq!(channel, CHANNEL);
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if call == self.fail_call.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable(format!(
                    "history call {call} fails"
                )));
            }
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let turns = match cursor {
                HistoryCursor::After(id) | HistoryCursor::Before(id) => (id >> 3) % 5,
                HistoryCursor::Latest => 2,
            };
            for _ in 0..turns {
                tokio::task::yield_now().await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let limit = limit.clamp(1, MAX_HISTORY_PAGE);
            let messages = self.messages.lock().unwrap();
            let page: Vec<Message> = match cursor {
                HistoryCursor::Latest => messages.values().rev().take(limit).cloned().collect(),
                HistoryCursor::Before(id) => messages
                    .range(..id)
                    .rev()
                    .map(|(_, m)| m.clone())
                    .take(limit)
                    .collect(),
                HistoryCursor::After(id) => {
                    let mut page: Vec<Message> = messages
                        .range(id.saturating_add(1)..)
                        .map(|(_, m)| m.clone())
                        .take(limit)
                        .collect();
                    page.reverse();
                    page
                }
            };
            drop(messages);
            if cursor == HistoryCursor::Latest {
                let later = std::mem::take(&mut *self.posted_after_latest.lock().unwrap());
                self.post(&later);
            }
            Ok(page)
        }
    }

    /// splitmix64, for ids.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % n
        }
    }

    /// About 4,000 ids spread unevenly in time: bursts (hundreds in a few milliseconds,
    /// ids one apart within a millisecond), chat a few seconds apart, gaps of hours and
    /// of months, and one message alone at the end after a long gap.
    fn uneven_ids(seed: u64) -> Vec<Id> {
        fn add(ms: u64, ids: &mut Vec<Id>) {
            let at = snowflake_at_ms(ms);
            ids.push(ids.last().map_or(at, |&last| (last + 1).max(at)));
        }
        let mut dice = Dice(seed);
        let mut ms = 1_600_000_000_000u64;
        let mut ids = Vec::new();
        for _ in 0..24 {
            match dice.below(4) {
                0 => {
                    // A burst: many messages in a few milliseconds.
                    for _ in 0..150 + dice.below(400) {
                        ms += dice.below(2);
                        add(ms, &mut ids);
                    }
                }
                1 => {
                    // Chat: seconds apart.
                    for _ in 0..50 + dice.below(200) {
                        ms += 1_000 + dice.below(20_000);
                        add(ms, &mut ids);
                    }
                }
                2 => ms += 3_600_000 * (1 + dice.below(48)),
                _ => {
                    ms += 86_400_000 * (30 + dice.below(200));
                    add(ms, &mut ids);
                }
            }
        }
        ms += 86_400_000 * 400;
        add(ms, &mut ids);
        ids
    }

    /// Reads to the end, checking every page on the way; the ids read.
    async fn read_all(reader: &mut HistoryReader, bound: usize) -> Vec<Id> {
        let mut read: Vec<Id> = Vec::new();
        while let Some(page) = reader.next_page().await.unwrap() {
            check_page(&read, &page);
            read.extend(page.iter().map(|m| m.id));
            assert!(reader.held <= bound, "{} messages held", reader.held);
        }
        read
    }

    fn check_page(read: &[Id], page: &[Message]) {
        assert!(!page.is_empty() && page.len() <= MAX_HISTORY_PAGE);
        assert!(page.windows(2).all(|w| w[0].id < w[1].id), "not sorted");
        if let Some(&last) = read.last() {
            assert!(
                page[0].id > last,
                "page starts at {} after {last}",
                page[0].id
            );
        }
    }

    /// The most messages the reader may hold: the pages it may have asked for ahead,
    /// and one answer per request in flight.
    fn held_bound(parallelism: usize) -> usize {
        (AHEAD_PER_REQUEST * parallelism + parallelism) * MAX_HISTORY_PAGE
    }

    #[tokio::test]
    async fn uneven_history_is_read_whole_once_and_in_order_at_any_parallelism() {
        for seed in [1, 2, 3] {
            let ids = uneven_ids(seed);
            assert!(ids.len() > 2_000, "{} ids", ids.len());
            let store = MemoryStore::with(&ids);
            // From the start, and from a cursor inside the history (a refresh).
            let middle = ids[ids.len() / 3];
            for parallelism in [1, 2, 4, 8] {
                for after in [0, middle] {
                    store.max_in_flight.store(0, Ordering::SeqCst);
                    let mut reader = HistoryReader::new(store.clone(), CHANNEL, after, parallelism);
                    let read = read_all(&mut reader, held_bound(parallelism)).await;
                    let expected: Vec<Id> = ids.iter().copied().filter(|&id| id > after).collect();
                    assert_eq!(read, expected, "seed {seed}, parallelism {parallelism}");
                    let max = store.max_in_flight.load(Ordering::SeqCst);
                    assert!(max <= parallelism, "{max} requests in flight");
                    assert!(reader.next_page().await.unwrap().is_none());
                }
            }
        }
    }

    #[tokio::test]
    async fn serial_reading_asks_one_page_after_the_other() {
        let ids = uneven_ids(4);
        let store = MemoryStore::with(&ids);
        let mut reader = HistoryReader::new(store.clone(), CHANNEL, 0, 1);
        let read = read_all(&mut reader, MAX_HISTORY_PAGE).await;
        assert_eq!(read, ids);
        // Every page full but the last, and no request besides: what the reader did
        // before it read in parallel.
        let pages = ids.len() / MAX_HISTORY_PAGE + 1;
        assert_eq!(store.calls.load(Ordering::SeqCst), pages as u64);
        assert_eq!(store.max_in_flight.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_short_history_takes_one_request() {
        let store = MemoryStore::with(&uneven_ids(5)[..60]);
        let mut reader = HistoryReader::new(store.clone(), CHANNEL, 0, 8);
        assert_eq!(read_all(&mut reader, MAX_HISTORY_PAGE).await.len(), 60);
        assert_eq!(store.calls.load(Ordering::SeqCst), 1);
        let empty = MemoryStore::with(&[]);
        let mut reader = HistoryReader::new(empty.clone(), CHANNEL, 0, 8);
        assert!(reader.next_page().await.unwrap().is_none());
        assert_eq!(empty.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn parallel_reading_has_several_requests_in_flight() {
        let ids = uneven_ids(6);
        let store = MemoryStore::with(&ids);
        let mut reader = HistoryReader::new(store.clone(), CHANNEL, 0, 8);
        assert_eq!(read_all(&mut reader, held_bound(8)).await, ids);
        let max = store.max_in_flight.load(Ordering::SeqCst);
        assert!(
            (4..=8).contains(&max),
            "at most {max} requests were in flight"
        );
    }

    #[tokio::test]
    async fn messages_posted_during_the_read_are_read() {
        for parallelism in [1, 2, 4, 8] {
            let ids = uneven_ids(7);
            let store = MemoryStore::with(&ids);
            let after_ms = |ms: u64| snowflake_at_ms(snowflake_time_ms(store.newest()) + ms);
            // Posted once the reader has asked for the newest message: past where its
            // slices end. 250 of them: the serial reading after the slices has pages
            // to read, and a full one among them starts another round.
            let burst = after_ms(10);
            let later: Vec<Id> = (0..250).map(|i| burst + i).collect();
            store.posted_after_latest.lock().unwrap().extend(&later);
            let mut reader = HistoryReader::new(store.clone(), CHANNEL, 0, parallelism);
            let mut read: Vec<Id> = Vec::new();
            let mut pages = 0;
            while let Some(page) = reader.next_page().await.unwrap() {
                check_page(&read, &page);
                read.extend(page.iter().map(|m| m.id));
                pages += 1;
                if pages == 5 {
                    // Posted while the read goes on, after everything so far.
                    let at = snowflake_at_ms(snowflake_time_ms(store.newest()) + 1_000);
                    store.post(&(0..120).map(|i| at + i * 3).collect::<Vec<_>>());
                }
            }
            let everything = store.ids();
            assert!(everything.len() >= ids.len() + 120);
            // Without slices the newest message is never asked for.
            assert_eq!(everything.contains(&later[0]), parallelism > 1);
            assert_eq!(read, everything, "parallelism {parallelism}");
        }
    }

    #[tokio::test]
    async fn a_failed_request_ends_the_read_after_a_whole_prefix() {
        let ids = uneven_ids(8);
        for parallelism in [1, 2, 4, 8] {
            for fail_call in [1, 2, 3, 4, 6, 9, 17] {
                let store = MemoryStore::with(&ids);
                store.fail_call.store(fail_call, Ordering::SeqCst);
                let mut reader = HistoryReader::new(store.clone(), CHANNEL, 0, parallelism);
                let mut read: Vec<Id> = Vec::new();
                let error = loop {
                    match reader.next_page().await {
                        Ok(Some(page)) => {
                            check_page(&read, &page);
                            read.extend(page.iter().map(|m| m.id));
                        }
                        Ok(None) => panic!("call {fail_call} never failed"),
                        Err(e) => break e,
                    }
                };
                assert!(error.to_string().contains("fails"), "{error}");
                let context = format!("parallelism {parallelism}, call {fail_call}");
                // What was handed out is the start of the history, whole: noting its
                // last id as read loses nothing.
                assert_eq!(read, ids[..read.len()], "{context}");
                assert!(read.len() < ids.len(), "{context}");
                assert!(reader.next_page().await.is_err(), "{context}");
                // Reading again from there reads the rest.
                let resume = read.last().copied().unwrap_or(0);
                let mut again = HistoryReader::new(store.clone(), CHANNEL, resume, parallelism);
                read.extend(read_all(&mut again, held_bound(parallelism)).await);
                assert_eq!(read, ids, "{context}");
            }
        }
    }

    #[tokio::test]
    async fn reading_ahead_reads_before_it_is_asked_and_hands_out_the_same_pages() {
        let ids = uneven_ids(9);
        for parallelism in [1, 4] {
            let store = MemoryStore::with(&ids);
            let reader = HistoryReader::new(store.clone(), CHANNEL, 0, parallelism);
            let mut ahead = ReadAhead::start(reader, 3);
            // Nobody asks for a page yet: the task reads the first pages all the same,
            // and stops at the pages it may hold (with one request's answer more).
            for _ in 0..200 {
                tokio::task::yield_now().await;
            }
            let asked = store.calls.load(Ordering::SeqCst);
            assert!(
                asked >= 3,
                "{asked} requests before the first page was asked for"
            );
            assert!(
                asked < (ids.len() / MAX_HISTORY_PAGE) as u64,
                "{asked} requests: it read on without waiting"
            );
            let mut read: Vec<Id> = Vec::new();
            while let Some(page) = ahead.next_page().await.unwrap() {
                check_page(&read, &page);
                read.extend(page.iter().map(|m| m.id));
            }
            assert_eq!(read, ids, "parallelism {parallelism}");
            assert!(ahead.next_page().await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn reading_ahead_fails_after_a_whole_prefix_and_then_at_every_call() {
        let ids = uneven_ids(10);
        for fail_call in [1, 3, 7] {
            let store = MemoryStore::with(&ids);
            store.fail_call.store(fail_call, Ordering::SeqCst);
            let mut ahead = ReadAhead::start(HistoryReader::new(store.clone(), CHANNEL, 0, 1), 2);
            let mut read: Vec<Id> = Vec::new();
            let error = loop {
                match ahead.next_page().await {
                    Ok(Some(page)) => read.extend(page.iter().map(|m| m.id)),
                    Ok(None) => panic!("call {fail_call} never failed"),
                    Err(e) => break e,
                }
            };
            assert!(error.to_string().contains("fails"), "{error}");
            assert_eq!(read, ids[..read.len()], "call {fail_call}");
            assert_eq!(read.len(), (fail_call as usize - 1) * MAX_HISTORY_PAGE);
            for _ in 0..3 {
                assert!(ahead.next_page().await.is_err(), "call {fail_call}");
            }
        }
    }

    #[tokio::test]
    async fn dropping_a_read_ahead_stops_its_reading() {
        let ids = uneven_ids(11);
        let store = MemoryStore::with(&ids);
        let ahead = ReadAhead::start(HistoryReader::new(store.clone(), CHANNEL, 0, 1), 1);
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        drop(ahead);
        let asked = store.calls.load(Ordering::SeqCst);
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        assert_eq!(store.calls.load(Ordering::SeqCst), asked);
        assert!(asked < (ids.len() / MAX_HISTORY_PAGE) as u64);
    }
}
