//! The message-level storage seam: a guild of channels holding messages with attachments.
//!
//! [`Store`] is shaped after what Discord's REST API offers a bot, and nothing more, so
//! that everything above it (format, index, transfers, the filesystem) works the same on
//! Discord and on the [`local`] store, and so that tests can swap in a store that fails on
//! purpose. Its semantics follow Discord's:
//!
//! - ids are snowflakes: 64-bit, increasing with time (`(id >> 22)` is milliseconds since
//!   2015-01-01), unique within the guild; messages of a channel sort by id in the order
//!   they were posted;
//! - a message has text content (at most [`Limits::max_content_chars`] characters) and up
//!   to [`Limits::max_attachments`] attachments, each at most
//!   [`Limits::max_file_size`] bytes, all of them together at most
//!   [`Limits::max_request_size`]; over a limit the post fails with
//!   [`StoreError::TooLarge`] (Discord: HTTP 413, code 40005) and nothing is stored;
//! - [`Store::history`] pages like Discord's "get channel messages": at most 100
//!   messages, newest first, after or before a cursor id;
//! - attachments are fetched by (channel, message, attachment) id, whole
//!   ([`Store::fetch_attachment`]) or a byte range of one ([`Store::fetch_range`], an
//!   HTTP `Range` request on Discord's CDN); there are no URLs in this interface,
//!   because Discord's expire;
//! - every message has an author; a bot only trusts its own ([`Store::current_user`]);
//! - a channel pins at most [`MAX_PINS`] messages ([`Store::pins`]); deleting a message
//!   unpins it.
//!
//! Stores are `Send + Sync` and used through `Arc<dyn Store>`; every call may run
//! concurrently with others.

pub mod discord;
pub mod local;
pub mod pace;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A snowflake id (channel, message, attachment, user).
pub type Id = u64;

/// Milliseconds between the Unix epoch and Discord's epoch (2015-01-01T00:00:00Z).
pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// The Unix time in milliseconds at which a snowflake was made.
pub fn snowflake_time_ms(id: Id) -> u64 {
    (id >> 22) + DISCORD_EPOCH_MS
}

/// The smallest snowflake made at Unix time `unix_ms` (a cursor for "after this time").
pub fn snowflake_at_ms(unix_ms: u64) -> Id {
    unix_ms.saturating_sub(DISCORD_EPOCH_MS) << 22
}

/// Most pinned messages a channel may hold (Discord's cap).
pub const MAX_PINS: usize = 250;

/// Most messages one history call returns (Discord's cap).
pub const MAX_HISTORY_PAGE: usize = 100;

/// Longest byte range one [`Store::fetch_range`] call reads: 1 GiB and a MiB, far above
/// any attachment Discord accepts (100 MiB at boost tier 3), so that only a nonsensical
/// range (a bug, or a length read from damaged data) is refused before any allocation.
pub const MAX_RANGE_BYTES: u64 = (1 << 30) + (1 << 20);

/// The length of a range asked of [`Store::fetch_range`], or [`StoreError::Invalid`] if
/// it is backwards or longer than [`MAX_RANGE_BYTES`]. Every store checks ranges with it.
pub fn range_len(range: &std::ops::Range<u64>) -> StoreResult<u64> {
    let Some(len) = range.end.checked_sub(range.start) else {
        return Err(StoreError::Invalid(format!(
            "the byte range {}..{} ends before it starts",
            range.start, range.end
        )));
    };
    if len > MAX_RANGE_BYTES {
        return Err(StoreError::Invalid(format!(
            "the byte range {}..{} is longer than the {MAX_RANGE_BYTES} bytes one read may be",
            range.start, range.end
        )));
    }
    Ok(len)
}

/// What a store accepts in one message. Read from the store, never assumed: a Discord
/// guild's per-file limit depends on its boost tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest single attachment in bytes (Discord: 10 MiB without boosts, 50 MiB at
    /// tier 2, 100 MiB at tier 3).
    pub max_file_size: u64,
    /// Most attachments on one message (Discord: 10).
    pub max_attachments: usize,
    /// Largest total of attachment bytes in one message (Discord: 25 MiB per request).
    pub max_request_size: u64,
    /// Most characters of message content (Discord: 2000).
    pub max_content_chars: usize,
}

impl Default for Limits {
    /// Discord's limits for a guild without boosts.
    fn default() -> Self {
        Limits {
            max_file_size: 10 * 1024 * 1024,
            max_attachments: 10,
            max_request_size: 25 * 1024 * 1024,
            max_content_chars: 2000,
        }
    }
}

/// A channel: one top-level folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub id: Id,
    /// The folder's name exactly as the user gave it (a store that can't keep it as the
    /// channel's own name, like Discord, keeps it elsewhere and maps it back).
    pub name: String,
}

/// An attachment as the store describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: Id,
    pub filename: String,
    pub size: u64,
}

/// A message as the store describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: Id,
    pub channel_id: Id,
    pub author_id: Id,
    pub content: String,
    pub attachments: Vec<Attachment>,
}

impl Message {
    /// The attachment with this file name, if any.
    pub fn attachment_named(&self, filename: &str) -> Option<&Attachment> {
        self.attachments.iter().find(|a| a.filename == filename)
    }
}

/// An attachment to post.
#[derive(Debug, Clone)]
pub struct NewAttachment {
    /// Only `[A-Za-z0-9._-]`, as Discord keeps them.
    pub filename: String,
    pub data: Bytes,
}

/// A message to post.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    pub content: String,
    pub attachments: Vec<NewAttachment>,
}

impl NewMessage {
    /// Total attachment bytes, which is what the per-request limit counts.
    pub fn attachment_bytes(&self) -> u64 {
        self.attachments.iter().map(|a| a.data.len() as u64).sum()
    }
}

/// Which page of a channel's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryCursor {
    /// The newest messages.
    Latest,
    /// The messages just before this id (older ones).
    Before(Id),
    /// The messages just after this id (the oldest ones newer than it).
    After(Id),
}

/// Whether a string is a valid attachment file name (non-empty, `[A-Za-z0-9._-]`).
pub fn valid_attachment_filename(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such channel (id {0})")]
    NoSuchChannel(Id),
    #[error("no such message (id {0})")]
    NoSuchMessage(Id),
    #[error("no such attachment (id {attachment} on message {message})")]
    NoSuchAttachment { message: Id, attachment: Id },
    /// Discord's 413 / code 40005.
    #[error("the store refused the upload as too large: {0}")]
    TooLarge(String),
    /// A request the store will never accept (bad name, empty message, ...).
    #[error("the store refused the request: {0}")]
    Invalid(String),
    #[error("a channel named '{0}' already exists")]
    ChannelExists(String),
    #[error("the store is not set up: {0}")]
    NotSetUp(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The store's own files are damaged.
    #[error("the store's data is damaged: {0}")]
    Corrupt(String),
    /// The credentials were refused (Discord: 401).
    #[error("{0}")]
    Unauthorized(String),
    /// The bot lacks a permission (Discord: 403).
    #[error("{0}")]
    PermissionDenied(String),
    /// The store could not be reached or kept failing (network down, 5xx, timeouts),
    /// after retries.
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the thing asked for doesn't exist (safe to ignore when deleting).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::NoSuchChannel(_)
                | StoreError::NoSuchMessage(_)
                | StoreError::NoSuchAttachment { .. }
        )
    }
}

/// Bytes fetched by [`Store::fetch_range_owned`]: `buffer[start..]`.
#[derive(Debug)]
pub struct Fetched {
    /// The buffer the bytes were read into.
    pub buffer: Vec<u8>,
    /// Where in `buffer` they start.
    pub start: usize,
}

impl From<Vec<u8>> for Fetched {
    fn from(buffer: Vec<u8>) -> Fetched {
        Fetched { buffer, start: 0 }
    }
}

impl Fetched {
    /// The fetched bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buffer[self.start.min(self.buffer.len())..]
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// A guild, seen at the message level. See the module docs for the semantics.
#[async_trait]
pub trait Store: Send + Sync {
    /// A stable string naming this store (e.g. `local-<hash of its path>`), used to keep
    /// index caches of different stores apart. Safe for a file name.
    fn identity(&self) -> String;

    /// What one message may carry.
    async fn limits(&self) -> StoreResult<Limits>;

    /// A salt of this store's own, the same on every machine that uses it, for keys
    /// derived from a passphrase: so that no two stores share one salt (a table
    /// precomputed against one is worth nothing against another).
    async fn key_salt(&self) -> StoreResult<String>;

    /// The id of the user we post as; only its messages are files.
    async fn current_user(&self) -> StoreResult<Id>;

    /// The channels (folders), in no particular order.
    async fn channels(&self) -> StoreResult<Vec<Channel>>;

    /// Creates a channel named `name`.
    async fn create_channel(&self, name: &str) -> StoreResult<Channel>;

    /// Deletes a channel and every message in it.
    async fn delete_channel(&self, channel: Id) -> StoreResult<()>;

    /// Posts a message; all of it is stored, or none of it.
    async fn post(&self, channel: Id, message: NewMessage) -> StoreResult<Message>;

    /// One page of history: at most `limit` (≤ 100) messages, newest first.
    async fn history(
        &self,
        channel: Id,
        cursor: HistoryCursor,
        limit: usize,
    ) -> StoreResult<Vec<Message>>;

    /// One message.
    async fn message(&self, channel: Id, message: Id) -> StoreResult<Message>;

    /// The bytes of one attachment, which the caller expects to be at most `max_bytes`
    /// long: a longer one is [`StoreError::Corrupt`], and no more than that is read
    /// (what the store sends is untrusted input).
    async fn fetch_attachment(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        max_bytes: u64,
    ) -> StoreResult<Bytes>;

    /// Bytes `range` of one attachment (the caller knows the attachment's length from a
    /// record, so the range must lie inside it): exactly `range.end - range.start` bytes,
    /// or an error. An attachment shorter than the range's end is [`StoreError::Corrupt`]
    /// (what the store sends is untrusted); a missing one is not-found, as with
    /// [`Store::fetch_attachment`]. An empty range is empty bytes, without any I/O; a
    /// backwards one, or one longer than [`MAX_RANGE_BYTES`], is [`StoreError::Invalid`]
    /// (see [`range_len`]).
    async fn fetch_range(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        range: std::ops::Range<u64>,
    ) -> StoreResult<Bytes>;

    /// [`Store::fetch_range`] into a buffer the caller owns and may change (to open the
    /// bytes in place). By default the fetched bytes themselves; a store may instead
    /// read into a larger buffer, its bytes from [`Fetched::start`] (the local store's
    /// direct reads, which need aligned buffers).
    async fn fetch_range_owned(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        range: std::ops::Range<u64>,
    ) -> StoreResult<Fetched> {
        let data = self
            .fetch_range(channel, message, attachment, range)
            .await?;
        Ok(Fetched::from(Vec::from(data)))
    }

    /// Deletes one message and its attachments.
    async fn delete_message(&self, channel: Id, message: Id) -> StoreResult<()>;

    /// How many history requests of one channel this store runs at once: more in
    /// flight than that only queue, so a reader that slices the history asks for no
    /// more. By default no limit of its own.
    fn concurrent_history_reads(&self) -> usize {
        usize::MAX
    }

    /// Deletes several messages of one channel, with their attachments. Returns those
    /// it could not delete, with the error; one that is gone already counts as deleted.
    /// The default deletes them one by one; a store that can delete many in a request
    /// (Discord's bulk delete) does.
    async fn delete_messages(&self, channel: Id, messages: &[Id]) -> Vec<(Id, StoreError)> {
        let mut failed = Vec::new();
        for &message in messages {
            match self.delete_message(channel, message).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => failed.push((message, e)),
            }
        }
        failed
    }

    /// The channel's pinned messages (at most [`MAX_PINS`]), newest pin first. A store
    /// without pins has none.
    async fn pins(&self, channel: Id) -> StoreResult<Vec<Message>> {
        let _ = channel;
        Ok(Vec::new())
    }

    /// Pins a message (pinning one that is pinned already does nothing). A channel
    /// holds at most [`MAX_PINS`]; beyond that the store refuses with
    /// [`StoreError::Invalid`] (Discord: 400, code 30003).
    async fn pin(&self, channel: Id, message: Id) -> StoreResult<()> {
        let _ = (channel, message);
        Err(StoreError::Invalid("this store can't pin messages".into()))
    }

    /// Unpins a message (one that isn't pinned stays so).
    async fn unpin(&self, channel: Id, message: Id) -> StoreResult<()> {
        let _ = (channel, message);
        Err(StoreError::Invalid("this store can't pin messages".into()))
    }

    /// A hint that an attachment of `message` will be fetched soon: a store that fetches
    /// through signed URLs may look its URL up now, so that the fetch doesn't wait for
    /// it. Never needed for a fetch to work, and it fetches no attachment bytes; what
    /// goes wrong is the fetch's to report.
    async fn prepare_fetch(&self, channel: Id, message: Id, attachment: Id) {
        let _ = (channel, message, attachment);
    }
}
