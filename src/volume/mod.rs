//! One channel as a folder tree: the index replayed from its records, and the operations
//! that change it (put, get, mkdir, rename, remove, move). Its parts:
//!
//! - [`index`]: the replayed state, and the rules of replay;
//! - [`history`]: the channel's history, read with several requests at once and handed
//!   out in order;
//! - [`records`]: how records are written (the one place that seals, lays out and posts
//!   them) and which records read from the history count;
//! - [`reclaim`]: what may be deleted, and when (the one place that decides it);
//! - [`transfer`]: chunks to and from the store;
//! - [`pack`]: small files that go up together, packed into shared attachments;
//! - [`journal`]: uploads in progress, for cleaning up after a crash;
//! - [`registry`]: the channels a process has open, and how they reach each other;
//! - [`verify`]: checking that a channel is whole (every chunk and record in place, and
//!   with a data check, every chunk opening).
//!
//! ## Reading the channel
//!
//! [`Volume::open`] loads the channel's cached index from local disk (if it was made for
//! the same channel and key) and then [`Volume::refresh`]es it: it pages through the
//! messages newer than the last one the cache has seen, oldest first, and applies the
//! records among them. Replay doesn't depend on the order messages are read in (see
//! [`index`]), so the pages can overlap the cache a little — refresh re-reads a few
//! seconds before the cache's last message, in case a message with a smaller id became
//! visible late — at no risk (records it has read already are not fetched again). Only our own messages count, and of those only the records
//! the loaded key authenticated ([`records`]); the others are skipped with one log line
//! each and remembered, so that `get` of a missing file can say "wrong key" rather than
//! "no such file".
//!
//! ## Changing it
//!
//! Every change is one record message, posted after everything it refers to is stored:
//!
//! - **put**: the chunks are uploaded first ([`transfer::Uploader`]); the record rides
//!   on the message carrying the last chunks. Until that message exists the file doesn't;
//!   if anything fails, the chunks already posted are deleted. A new version keeps the
//!   chunks it didn't change ([`Delta`]), pinned against deletion until its record lands.
//! - **rename**: one record `[put new-path (same chunks), del old-path]`; nothing is
//!   uploaded again and the change is atomic.
//! - **remove**: one record of tombstones.
//! - **move to another channel** ([`Volume::move_to`]): a *link* here (the destination
//!   uses these messages from now on), a record in the destination that puts the file
//!   with the same chunks, each naming the channel it is in (`c`), then a *moved* delete
//!   here. Nothing is uploaded again; the bytes stay in the source channel.
//!
//! After a change lands, the messages it made useless (the old version's chunks and
//! record) wait in [`Index::unfreed`] (and its cache) and are deleted by a later pass,
//! after a grace period, if [`reclaim`]'s rules allow: ours, unused here, not pinned, and
//! not used by a channel a file moved to. The index is refreshed before every pass, so
//! that a concurrent writer's record that still uses them is seen; two writers racing on
//! the same channel can still leave unreferenced messages behind (never delete
//! referenced ones they both know of), which only costs space. Once a change's record
//! is stored the change has happened: nothing after that point fails it.

pub mod checkpoint;
pub mod disk_cache;
pub mod gc;
pub mod history;
pub mod index;
pub mod journal;
pub mod links;
pub mod pack;
pub mod reclaim;
pub mod records;
pub mod registry;
pub mod repack;
pub mod transfer;
pub mod verify;

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use async_trait::async_trait;
use tokio::io::AsyncWrite;

pub use index::{
    DirEntry, Entry, FileEntry, Hold, Index, IndexDelta, Listed, Node, Own, Skip, StoredChunk,
};
pub use pack::{PackBudget, PackLimits};
pub use reclaim::{PinGuard, Pins};
pub use transfer::{ChunkPlan, Interrupt, Progress};
pub use verify::{Damaged, DataCheck, Problem, VerifyOptions, VerifyProgress, VerifyReport};

use futures::StreamExt;

use crate::crypto::{self, CryptoError, Key, KeyId};
use crate::format::{
    self, ChunkKind, ChunkLocation, DataKey, DirManifest, FileId, FileManifest, FormatError, Moved,
    Op, Record,
};
use crate::store::{
    Channel, Id, Limits, Message, Store, StoreError, snowflake_at_ms, snowflake_time_ms,
};

/// How far before the cache's last message a refresh starts reading again.
const REPLAY_OVERLAP_MS: u64 = 5_000;

/// Pages of history read ahead of the one being applied (up to 100 messages each).
const READ_AHEAD_PAGES: usize = 16;

/// Pages of history whose records are fetched and opened at once, the one being
/// applied included (each fetches up to [`records`]'s `RECORD_FETCHES` attachments at
/// once).
const PAGES_OPENED_AHEAD: usize = 4;

/// Where reading the history again starts for an index that has read up to
/// `last_seen`: [`REPLAY_OVERLAP_MS`] before it (0: from the start).
fn replay_cursor(last_seen: Id) -> Id {
    if last_seen == 0 {
        0
    } else {
        snowflake_at_ms(snowflake_time_ms(last_seen).saturating_sub(REPLAY_OVERLAP_MS))
    }
}

/// Most operations in one record (keeps records of big `rm -r`s well under the limits).
const MAX_OPS_PER_RECORD: usize = 500;

/// Errors of the volume layer: what the user did or what went wrong, with the names
/// they used.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("no channel named '{name}'{}", channel_hint(available))]
    NoSuchChannel {
        name: String,
        available: Vec<String>,
    },
    #[error("no such file or folder: {name}{hint}")]
    NotFound { name: String, hint: String },
    #[error("{name}: wrong key (file was written with key id {written}, you have {have})")]
    WrongKey {
        name: String,
        written: KeyId,
        have: KeyId,
    },
    #[error(
        "{name}: no readable file here, and {count} record(s) in this channel are encrypted \
         while no key is loaded; point --key-file or DCLOUD_KEY at your key"
    )]
    KeyNeeded { name: String, count: usize },
    #[error("{name} is not a folder")]
    NotADirectory { name: String },
    #[error("{name} is a folder{hint}")]
    IsADirectory { name: String, hint: &'static str },
    #[error("{name} already exists")]
    AlreadyExists { name: String },
    #[error("{name} has too many names already (at most 400 hard links to one file)")]
    TooManyLinks { name: String },
    #[error("{name}: extended attribute not changed: {why:?}")]
    Xattr { name: String, why: XattrRefused },
    #[error(
        "no key is loaded, and files are encrypted by default; create one with \
         `dcloud-fs keygen` (or set DCLOUD_KEY), or store the file unencrypted with --plain"
    )]
    NoKey,
    #[error("{name}: {source}")]
    Chunk {
        name: String,
        #[source]
        source: FormatError,
    },
    #[error("{name}: chunk {index} is missing from the store (its message was deleted)")]
    ChunkMissing { name: String, index: u64 },
    #[error(
        "{name}: its manifest ({bytes} bytes) is over the store's per-file limit; the file has too many chunks"
    )]
    ManifestTooLarge { name: String, bytes: usize },
    #[error("the store's limits leave no room for a chunk: {limits}")]
    LimitsTooSmall { limits: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The transfer was asked to stop ([`Interrupt`]); what it had stored is deleted.
    #[error("interrupted; the unfinished transfer was cleaned up")]
    Interrupted,
    /// Something the file system can't do (moving a folder into itself, ...).
    #[error("{0}")]
    Unsupported(String),
    #[error("internal error: {0}")]
    Internal(String),
}

fn channel_hint(available: &[String]) -> String {
    if available.is_empty() {
        " (there are no channels yet; create one with `dcloud-fs mkdir NAME`)".to_string()
    } else {
        format!(
            " (channels: {}; create a new one with `dcloud-fs mkdir NAME`)",
            available.join(", ")
        )
    }
}

/// Settings of a volume.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    /// Data messages an upload posts at once. Each holds up to `k` chunks in memory
    /// (`k` = chunks per message, 3 on Discord's default limits), and one more group is
    /// read while they post, so an upload holds at most `(this + 1) · k` chunks: 72 MiB
    /// at the default of 2. Two keep a channel busy while a message is in flight.
    pub upload_parallel_messages: usize,
    /// Chunks a download fetches at once (each up to 8 MiB in memory). Default 4.
    pub download_parallel_chunks: usize,
    /// History requests a refresh has in flight at once when it reads many messages
    /// (a channel read for the first time, or long unread): the history is cut into
    /// slices by time and read in parallel, and still applied oldest first
    /// ([`history`]). 1 reads one page after the other; at most
    /// [`history::MAX_PARALLELISM`] count. Default 4; the store keeps to the rate
    /// limits, and a store that runs fewer at once ([`Store::concurrent_history_reads`]:
    /// the Discord store, one) is asked for no more.
    pub history_parallelism: usize,
    /// Where index caches are kept; `None` keeps none (every open replays the whole
    /// channel). Default: `$XDG_CACHE_HOME/dcloud-fs/index`.
    pub cache_dir: Option<PathBuf>,
    /// Stops this volume's transfers when triggered. Default: never triggered.
    pub interrupt: Interrupt,
    /// Messages that must not be deleted for now (readers, uploads reusing chunks);
    /// clones share them, so give every volume of a store clones of one. Default: a
    /// new, empty set.
    pub pins: Pins,
    /// How long a message a change made unneeded stays before it is deleted, so that
    /// another machine that has the old version open can go on reading it a while.
    /// Default [`DEFAULT_FREE_GRACE`] (2 minutes).
    pub free_grace: std::time::Duration,
    /// Where fetched chunks are kept on local disk, still sealed, so that reading them
    /// again downloads nothing; `None` keeps none. Default: none (the CLI and the mount
    /// open one for stores that aren't on local disk already).
    pub disk_cache: Option<Arc<disk_cache::DiskCache>>,
    /// Records of ours newer than the newest checkpoint after which a new checkpoint
    /// is posted (see [`checkpoint`]); 0 never posts one. Default 1,000.
    pub checkpoint_every: usize,
    /// Checkpoints of this key kept pinned: the newest, and older ones to fall back to.
    /// Default 2.
    pub checkpoints_kept: usize,
    /// Whether an open without a usable cache starts from the newest checkpoint (else
    /// it replays the whole history). Default true.
    pub start_from_checkpoint: bool,
    /// How old the index's newest message must be before a refresh asks whether `gc`
    /// collected the channel past it (see [`checkpoint`]); `gc`'s grace must not be
    /// shorter. Default [`checkpoint::COLLECTION_CHECK_AGE`] (an hour).
    pub collection_check_age: std::time::Duration,
}

/// The default [`VolumeConfig::history_parallelism`].
pub const DEFAULT_HISTORY_PARALLELISM: usize = 4;

/// The default [`VolumeConfig::free_grace`].
pub const DEFAULT_FREE_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            upload_parallel_messages: 2,
            download_parallel_chunks: 4,
            history_parallelism: DEFAULT_HISTORY_PARALLELISM,
            cache_dir: Some(crate::dirs::cache_dir().join("index")),
            interrupt: Interrupt::default(),
            pins: Pins::default(),
            free_grace: DEFAULT_FREE_GRACE,
            disk_cache: None,
            checkpoint_every: 1_000,
            checkpoints_kept: 2,
            start_from_checkpoint: true,
            collection_check_age: checkpoint::COLLECTION_CHECK_AGE,
        }
    }
}

/// How a new version of a file differs from the version it was made from, so that
/// [`Volume::put_changes`] uploads only the chunks that changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// The version the new content was made from ([`Index::version_of`] when it was
    /// read).
    pub base_version: String,
    /// Byte ranges written since, `start..end`, sorted and not overlapping; an end of
    /// `u64::MAX` runs to the end of the file (a truncation).
    pub changed: Vec<std::ops::Range<u64>>,
}

impl Delta {
    /// Whether any change touches `range`.
    fn touches(&self, range: std::ops::Range<u64>) -> bool {
        let first_after = self.changed.partition_point(|c| c.end <= range.start);
        self.changed
            .get(first_after)
            .is_some_and(|c| c.start < range.end)
    }

    /// The file id and the chunks of `base` (the file at version `current`) that a new
    /// version of `size` bytes, cut by `plan`, can keep: those no change touches, with
    /// the same length at the same index. `None` if nothing can be kept: the file
    /// changed since the base version, was sealed differently or cut in other sizes, or
    /// lacks the chunk tags that stop a reader from taking an older chunk for a kept one.
    fn unchanged_chunks(
        &self,
        current: &str,
        base: &FileEntry,
        plan: &ChunkPlan,
        encrypted: bool,
        size: u64,
    ) -> Option<(FileId, Vec<Option<StoredChunk>>)> {
        let chunk_len = plan.chunk_len as u64;
        let same_cut = base.chunks.iter().rev().skip(1).all(|c| c.len == chunk_len)
            && base.chunks.last().is_none_or(|c| c.len <= chunk_len);
        let pinned = base.chunks.iter().all(|c| {
            if encrypted {
                c.tag.is_some() || c.prefix.is_some()
            } else {
                c.sha256.is_some()
            }
        });
        if current != self.base_version || base.encrypted != encrypted || !same_cut || !pinned {
            return None;
        }
        let reuse: Vec<Option<StoredChunk>> = base
            .chunks
            .iter()
            .enumerate()
            .map(|(index, chunk)| {
                let start = index as u64 * chunk_len;
                let new_len = size.saturating_sub(start).min(chunk_len);
                let keep =
                    new_len > 0 && chunk.len == new_len && !self.touches(start..start + new_len);
                keep.then(|| chunk.clone())
            })
            .collect();
        reuse
            .iter()
            .any(Option::is_some)
            .then_some((base.id, reuse))
    }
}

/// Metadata for a new file version.
#[derive(Debug, Clone, Copy)]
pub struct PutOptions {
    pub mtime_ns: i64,
    /// Permission bits.
    pub mode: u32,
    /// Encrypt (the default) or store in plaintext mode.
    pub encrypted: bool,
    /// The owner to give the file; `None`: the owner of the file it replaces (a new
    /// file: the mounting user).
    pub owner: Option<Owner>,
    /// The access time to give it; `None`: the one of the file it replaces.
    pub atime_ns: Option<i64>,
}

/// Who owns a file: a user id and a group id, each `None` for whoever mounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Owner {
    /// What a record says of a new entry with this owner.
    pub fn meta(self) -> format::Meta {
        format::Meta {
            uid: self.uid,
            gid: self.gid,
            ..format::Meta::default()
        }
    }
}

/// Where [`Volume::put`] reads a file from.
pub enum PutSource {
    /// A file, read from its start; read again if the upload must be redone.
    File(std::fs::File),
    /// A stream (stdin, a pipe), read once.
    Stream(Box<dyn std::io::Read + Send>),
}

/// Times an upload is redone in smaller pieces after the store refused it as too large.
const MAX_STEP_DOWNS: u32 = 6;

/// A reader of `file` from its start.
fn rewound(file: &std::fs::File) -> std::io::Result<Box<dyn std::io::Read + Send>> {
    use std::io::Seek;
    let mut reader = file.try_clone()?;
    reader.seek(std::io::SeekFrom::Start(0))?;
    Ok(Box::new(reader))
}

/// A small file for [`Volume::put_small`], read whole.
#[derive(Debug, Clone)]
pub struct SmallFile {
    pub path: String,
    pub data: Vec<u8>,
    pub options: PutOptions,
}

/// What one packed message holds: folders' records, and small files.
#[derive(Debug, Clone)]
enum Packed {
    Folder(DirManifest),
    File(SmallFile),
}

impl Packed {
    /// Its bytes in a message's budget.
    fn size(&self) -> u64 {
        match self {
            Packed::Folder(_) => 0,
            Packed::File(file) => file.data.len() as u64,
        }
    }
}

/// Looks a channel up by its id.
pub async fn channel_with_id(store: &dyn Store, id: Id) -> Result<Channel, VolumeError> {
    store
        .channels()
        .await?
        .into_iter()
        .find(|c| c.id == id)
        .ok_or(VolumeError::Store(StoreError::NoSuchChannel(id)))
}

/// Looks a channel up by its folder name.
pub async fn find_channel(store: &dyn Store, name: &str) -> Result<Channel, VolumeError> {
    let channels = store.channels().await?;
    if let Some(channel) = channels.iter().find(|c| c.name == name) {
        return Ok(channel.clone());
    }
    let mut available: Vec<String> = channels.into_iter().map(|c| c.name).collect();
    available.sort();
    Err(VolumeError::NoSuchChannel {
        name: name.to_string(),
        available,
    })
}

/// The other channels' volumes, as whoever opened this one keeps them (the fs core, the
/// CLI): what a volume asks when it must know whether a file moved elsewhere still
/// needs a message (see the module docs). Implementations hand out the volume they
/// already have open for a channel, or open it.
#[async_trait]
pub trait Peers: Send + Sync {
    /// The volume of `channel`, opened with the same store, key and settings.
    async fn peer(&self, channel: Id) -> Result<Arc<Volume>, VolumeError>;
}

/// One channel, opened. Methods take `&self`; the index sits behind a mutex that is
/// never held across a store call. The index cache is written when the volume is
/// dropped (or [`Volume::save`]d), not after every change: a cache that misses the
/// last changes is only slower to open, never wrong (replay reads them again). And a
/// write costs what changed since the last one, not the whole index: the cache is a
/// whole index (sealed, written atomically) and a journal beside it of the deltas
/// written since ([`IndexDelta`], each sealed, length-prefixed, appended). A delta
/// counts only on top of the whole index it was written for (its generation, new at
/// every whole write) and in order; reading stops at the first that doesn't open (a
/// write cut short), which leaves a cache that is only stale. The whole index is
/// written again when the journal has grown to half its size, or when the files
/// aren't what this volume last wrote (another process wrote them, a cut-short tail):
/// opening costs at most one and a half times the index, and writing stays in
/// proportion to the changes.
pub struct Volume {
    store: Arc<dyn Store>,
    channel: Channel,
    key: Option<Key>,
    user: Id,
    /// The store's limits, read at open and again when the store refuses a message as
    /// too large (it lowers them then).
    limits: std::sync::RwLock<Limits>,
    config: VolumeConfig,
    index: Mutex<Index>,
    /// The index changed since the cache was last written.
    unsaved: AtomicBool,
    /// The cache as this volume last read or wrote it (`None`: the next write is whole).
    cache_file: Mutex<Option<CacheFile>>,
    /// The other channels, once set ([`Volume::set_peers`]); weak, as the one who keeps
    /// them keeps this volume too.
    peers: OnceLock<Weak<dyn Peers>>,
    /// Messages warned about already (records older than what they would replace).
    warned: Mutex<HashSet<Id>>,
    /// Held while a record is posted (see [`records`]).
    posting: tokio::sync::Mutex<()>,
    /// The checkpoint (its head message) the index started from, if it did.
    started_from: OnceLock<Id>,
    /// When a refresh last asked whether `gc` collected the channel past the index.
    collection_asked: Mutex<Option<std::time::Instant>>,
    /// Whether this volume posted a record.
    wrote: AtomicBool,
    /// History being read ahead of the next [`Volume::catch_up`], from this cursor
    /// ([`Volume::read_ahead_after`]).
    read_ahead: Mutex<Option<(Id, history::ReadAhead)>>,
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.save();
    }
}

impl Volume {
    /// Opens a channel: loads its cached index and reads what is new.
    pub async fn open(
        store: Arc<dyn Store>,
        channel: Channel,
        key: Option<Key>,
        config: VolumeConfig,
    ) -> Result<Volume, VolumeError> {
        Volume::open_read(store, channel, key, config, None).await
    }

    /// [`Volume::open`] with the cache's read already under way (see
    /// [`start_cache_read`]), or started here if `cache_read` is `None`.
    pub(crate) async fn open_read(
        store: Arc<dyn Store>,
        channel: Channel,
        key: Option<Key>,
        config: VolumeConfig,
        cache_read: Option<CacheRead>,
    ) -> Result<Volume, VolumeError> {
        let volume = Volume::load(store, channel, key, config, cache_read).await?;
        volume.refresh().await?;
        volume.reclaim_abandoned_uploads().await;
        Ok(volume)
    }

    /// Opens a channel to look at it without changing it: like [`Volume::open`], it
    /// loads the cached index and reads what is new, but it deletes nothing (neither
    /// the messages earlier changes left unneeded nor what uploads that died midway
    /// left behind: the next [`Volume::open`] or refresh does that). What `verify`
    /// opens channels with. The volume is an ordinary one from then on.
    pub async fn open_to_inspect(
        store: Arc<dyn Store>,
        channel: Channel,
        key: Option<Key>,
        config: VolumeConfig,
    ) -> Result<Volume, VolumeError> {
        let volume = Volume::load(store, channel, key, config, None).await?;
        volume.catch_up().await?;
        Ok(volume)
    }

    /// The volume with its cached index loaded (or, without a usable cache, the newest
    /// checkpoint it can use; see [`checkpoint`]), before the history after it is read.
    async fn load(
        store: Arc<dyn Store>,
        channel: Channel,
        key: Option<Key>,
        config: VolumeConfig,
        cache_read: Option<CacheRead>,
    ) -> Result<Volume, VolumeError> {
        let key_id = key.as_ref().map(Key::id);
        // The cache is read and opened (CPU and disk: a big channel's takes a fraction
        // of a second) while the store answers who we are and its limits (round trips).
        let loading = cache_read
            .unwrap_or_else(|| start_cache_read(&config, store.clone(), channel.id, key.clone()));
        let (loaded, user, limits) = tokio::join!(loading, store.current_user(), store.limits());
        let loaded = loaded.unwrap_or_else(|e| {
            log::warn!(
                "reading the index cache of channel {} failed: {e}",
                channel.id
            );
            None
        });
        let (index, cache_file) = match loaded {
            Some((index, file)) => (Some(index), Some(file)),
            None => (None, None),
        };
        let cached = index.is_some();
        let index = index.unwrap_or_else(|| Index::new(channel.id, key_id));
        let volume = Volume {
            user: user?,
            limits: std::sync::RwLock::new(limits?),
            store,
            channel,
            key,
            config,
            index: Mutex::new(index),
            unsaved: AtomicBool::new(false),
            cache_file: Mutex::new(cache_file),
            peers: OnceLock::new(),
            warned: Mutex::default(),
            posting: tokio::sync::Mutex::new(()),
            started_from: OnceLock::new(),
            collection_asked: Mutex::new(None),
            wrote: AtomicBool::new(false),
            read_ahead: Mutex::new(None),
        };
        if !cached
            && volume.config.start_from_checkpoint
            && let Some((head, index)) = volume.index_from_checkpoint().await
        {
            *volume.index() = index;
            let _ = volume.started_from.set(head);
            // The newest checkpoint: nothing is collected past it.
            *volume
                .collection_asked
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        }
        Ok(volume)
    }

    /// Deletes what uploads on this machine that died midway left in this channel.
    async fn reclaim_abandoned_uploads(&self) {
        let Some(dir) = self.journal_dir() else {
            return;
        };
        let in_use = || self.index().messages_kept();
        let deleted = journal::reclaim_abandoned(
            &dir,
            self.store.as_ref(),
            self.channel.id,
            self.user,
            &in_use,
        )
        .await;
        match deleted {
            Ok(0) => {}
            Ok(count) => log::info!(
                "#{}: deleted {count} message(s) left by an upload that died midway",
                self.channel.name
            ),
            Err(e) => log::warn!(
                "#{}: could not clean up after an upload that died midway: {e}",
                self.channel.name
            ),
        }
    }

    /// The checkpoint (its head message) this volume's index started from, when it
    /// had no cache and found one it could use.
    pub fn started_from_checkpoint(&self) -> Option<Id> {
        self.started_from.get().copied()
    }

    /// History requests to have in flight at once: the configured number, and no more
    /// than the store runs at once.
    pub(crate) fn history_parallelism(&self) -> usize {
        self.config
            .history_parallelism
            .min(self.store.concurrent_history_reads())
    }

    /// Whether this volume posted a record (changed the channel) since it was opened.
    pub fn wrote(&self) -> bool {
        self.wrote.load(Ordering::Relaxed)
    }

    /// The channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Tells the volume how to reach the other channels' volumes. Until this is set,
    /// messages that files moved to other channels may still need are never deleted.
    /// Only the first call counts.
    pub fn set_peers(&self, peers: Weak<dyn Peers>) {
        let _ = self.peers.set(peers);
    }

    fn peers(&self) -> Option<Arc<dyn Peers>> {
        self.peers.get().and_then(Weak::upgrade)
    }

    /// The store's limits as last read.
    pub fn limits(&self) -> Limits {
        *self.limits.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the limits again after the store refused a message as too large. Returns
    /// whether they are lower now (so that trying again in smaller pieces can work).
    async fn limits_stepped_down(&self) -> Result<bool, VolumeError> {
        let before = self.limits();
        let now = self.store.limits().await?;
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(now.max_file_size < before.max_file_size
            || now.max_request_size < before.max_request_size
            || now.max_attachments < before.max_attachments)
    }

    /// The index, locked. Don't hold it across an await.
    pub fn index(&self) -> MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `channel/path`, for messages.
    pub fn display(&self, path: &str) -> String {
        if path.is_empty() {
            self.channel.name.clone()
        } else {
            format!("{}/{path}", self.channel.name)
        }
    }

    /// Reads the messages posted since the index last looked, then deletes the
    /// messages that changes of ours left unneeded ([`Index::unfreed`]). The index is
    /// marked for saving only if that changed something.
    pub async fn refresh(&self) -> Result<(), VolumeError> {
        let read_new = self.catch_up().await?;
        let freed = self.free_unused().await;
        if read_new || freed {
            self.unsaved.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads the messages posted since the index last looked, and nothing more (what
    /// another channel's volume asks of this one while it follows a moved file: it
    /// must not start freeing in turn). Returns whether anything new was read.
    async fn catch_up(&self) -> Result<bool, VolumeError> {
        if self.collection_check_due() {
            self.restart_if_collected().await;
        }
        self.read_unread().await?;
        let last_seen = self.index().last_seen;
        let cursor = replay_cursor(last_seen);
        // Pages come oldest first, each after everything handed out before it: once
        // one is applied, everything up to its last message is read. The records of
        // the next few pages are fetched and opened while one is applied.
        let mut reading = self
            .take_read_ahead(cursor)
            .unwrap_or_else(|| self.read_history_after(cursor));
        let mut opening = futures::stream::FuturesOrdered::new();
        let mut read_all = false;
        loop {
            tokio::select! {
                biased;
                Some(opened) = opening.next(), if !opening.is_empty() => {
                    let (page, records, newest): (Vec<Message>, _, Id) = opened?;
                    self.apply_page(&page, records);
                    self.index().advance(newest);
                }
                next = reading.next_page(), if !read_all && opening.len() < PAGES_OPENED_AHEAD => {
                    match next? {
                        Some(page) => opening.push_back(self.open_page(page, cursor, last_seen)),
                        None => read_all = true,
                    }
                }
                else => break,
            }
        }
        let read_new = self.index().last_seen != last_seen;
        if read_new {
            log::debug!("#{}: read new messages", self.channel.name);
            self.unsaved.store(true, Ordering::Relaxed);
        }
        Ok(read_new)
    }

    /// A page of history [`Volume::catch_up`] read after `cursor`, without the records
    /// of ours read before (up to `last_seen`), with its records opened, and the id it
    /// is read up to.
    async fn open_page(
        &self,
        mut page: Vec<Message>,
        cursor: Id,
        last_seen: Id,
    ) -> Result<(Vec<Message>, Vec<(usize, format::OpenedRecord)>, Id), VolumeError> {
        let newest = page.last().map_or(cursor, |m| m.id);
        page.retain(|m| !self.already_read(m, last_seen));
        let records = self.open_records(&page).await?;
        Ok((page, records, newest))
    }

    /// Starts reading the history after `cursor`, in a task of its own (see
    /// [`history::ReadAhead`]).
    fn read_history_after(&self, cursor: Id) -> history::ReadAhead {
        let reader = history::HistoryReader::new(
            self.store.clone(),
            self.channel.id,
            cursor,
            self.history_parallelism(),
        );
        history::ReadAhead::start(reader, READ_AHEAD_PAGES)
    }

    /// Starts reading now the history the next [`Volume::catch_up`] will read if the
    /// index's `last_seen` is then `last_seen` (what a checkpoint being opened will
    /// make it), so that its round trips overlap the work before it.
    pub(super) fn read_ahead_after(&self, last_seen: Id) {
        let cursor = replay_cursor(last_seen);
        let reading = self.read_history_after(cursor);
        *self.read_ahead.lock().unwrap_or_else(|e| e.into_inner()) = Some((cursor, reading));
    }

    /// The history read started by [`Volume::read_ahead_after`], if it starts at
    /// `cursor`; one that starts elsewhere is dropped (stopped).
    fn take_read_ahead(&self, cursor: Id) -> Option<history::ReadAhead> {
        let started = self
            .read_ahead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        started.and_then(|(from, reading)| (from == cursor).then_some(reading))
    }

    /// Whether a refresh should ask whether `gc` collected the channel past this
    /// index (see [`checkpoint`]): its newest message is older than
    /// [`VolumeConfig::collection_check_age`], and it wasn't asked within that long.
    fn collection_check_due(&self) -> bool {
        let last_seen = self.index().last_seen;
        let age = reclaim::now_ms().saturating_sub(snowflake_time_ms(last_seen));
        let limit = self.config.collection_check_age;
        if last_seen == 0 || age < limit.as_millis() as u64 {
            return false;
        }
        let mut asked = self
            .collection_asked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if asked.is_some_and(|at| at.elapsed() < limit) {
            return false;
        }
        *asked = Some(std::time::Instant::now());
        true
    }

    /// Whether `message`, met again in the overlap of a refresh, is a record of ours
    /// the index has read already: one it noted in a page read to the end before
    /// (`last_seen` is where that reading got). Messages don't change, so reading it
    /// again (fetching its attachment, a round trip) would apply nothing new; a record
    /// that couldn't be read is in [`Index::unread`] and read again by itself.
    fn already_read(&self, message: &Message, last_seen: Id) -> bool {
        message.id <= last_seen && self.index().own(message.id) == Some(index::Own::Record)
    }

    /// Makes the next save write the whole index, not a delta (after changes a delta
    /// can't say: slots forgotten, tombstone messages gone).
    pub(super) fn write_cache_whole(&self) {
        *self.cache_file.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.unsaved.store(true, Ordering::Relaxed);
    }

    /// Writes the index cache if the index changed since it was last written.
    pub fn save(&self) {
        if self.unsaved.swap(false, Ordering::Relaxed) {
            self.save_cache();
        }
    }

    fn save_cache(&self) {
        let Some(path) = cache_path(
            &self.config,
            self.store.as_ref(),
            self.channel.id,
            self.key.as_ref().map(Key::id),
        ) else {
            return;
        };
        let journal = journal_path(&path);
        let mut file = self.cache_file.lock().unwrap_or_else(|e| e.into_inner());
        // A delta, if the journal is what we last left it and not too long yet.
        if let Some(state) = file.as_mut().filter(|state| {
            state.journal_len < state.whole_len / 2
                && fs::metadata(&journal).map_or(0, |m| m.len()) == state.journal_len
                && fs::metadata(&path).is_ok_and(|m| m.len() == state.whole_len)
                && self.index().generation == state.generation
        }) {
            let delta = self.index().take_delta(state.next_seq);
            let encoded = index::encode(&delta);
            match seal_cache(self.key.as_ref(), encoded).map_err(std::io::Error::other) {
                Ok(sealed) => match append_frame(&journal, &sealed) {
                    Ok(written) => {
                        state.journal_len += written;
                        state.next_seq += 1;
                        return;
                    }
                    Err(e) => log::info!(
                        "could not append to the index journal {}: {e}; writing the whole \
                         index",
                        journal.display()
                    ),
                },
                Err(e) => log::warn!("could not seal an index delta: {e}"),
            }
        }
        // The whole index, under a new generation: an older journal no longer counts.
        *file = None;
        let generation = getrandom::u64().unwrap_or_else(|_| reclaim::now_ms());
        let encoded = {
            let mut index = self.index();
            index.generation = generation;
            index.mark_written();
            index::encode(&*index)
        };
        let bytes = match seal_cache(self.key.as_ref(), encoded) {
            Ok(bytes) => bytes,
            Err(e) => {
                log::warn!("could not seal the index cache {}: {e}", path.display());
                return;
            }
        };
        if let Err(e) = write_private_atomically(&path, &bytes) {
            log::warn!("could not save the index cache {}: {e}", path.display());
            return;
        }
        match fs::remove_file(&journal) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                log::info!(
                    "could not remove the index journal {}: {e}",
                    journal.display()
                );
                return;
            }
        }
        // A JSON cache of an older dcloud-fs, which this one no longer reads.
        let _ = fs::remove_file(path.with_extension("json"));
        *file = Some(CacheFile {
            generation,
            whole_len: bytes.len() as u64,
            journal_len: 0,
            next_seq: 0,
        });
    }

    /// The error for a path that isn't in the index: "wrong key" or "no key" when the
    /// channel has records this key can't read, else "not found".
    pub fn not_found(&self, path: &str) -> VolumeError {
        let name = self.display(path);
        let index = self.index();
        let (mut no_key, mut unreadable, mut unauthenticated) = (0, 0, 0);
        for skip in index.skipped().values() {
            match (skip, &self.key) {
                (Skip::WrongKey(written), Some(key)) => {
                    return VolumeError::WrongKey {
                        name,
                        written: *written,
                        have: key.id(),
                    };
                }
                (Skip::NoKey(_), _) => no_key += 1,
                (Skip::Unauthenticated(_), _) => unauthenticated += 1,
                (Skip::Damaged(_) | Skip::NewerVersion(_), _) => unreadable += 1,
                (Skip::WrongKey(_), None) => {}
            }
        }
        if no_key > 0 {
            return VolumeError::KeyNeeded {
                name,
                count: no_key,
            };
        }
        let mut hints = Vec::new();
        if unreadable > 0 {
            hints.push(format!(
                "{unreadable} record(s) in this channel could not be read: damaged, or \
                 written by a newer dcloud-fs"
            ));
        }
        if unauthenticated > 0 {
            hints.push(format!(
                "{unauthenticated} record(s) in this channel are not authenticated by your \
                 key and are not shown"
            ));
        }
        let hint = if hints.is_empty() {
            String::new()
        } else {
            format!(" ({})", hints.join("; "))
        };
        VolumeError::NotFound { name, hint }
    }

    /// The file at `path`.
    pub fn file(&self, path: &str) -> Result<FileEntry, VolumeError> {
        match self.index().node(path) {
            Some(Node::File(file)) => return Ok(file.clone()),
            Some(Node::Dir(_)) => {
                return Err(VolumeError::IsADirectory {
                    name: self.display(path),
                    hint: "",
                });
            }
            None => {}
        }
        Err(self.not_found(path))
    }

    /// Checks that a file or folder can be created at `path`: its parents are folders
    /// (or nothing yet) and nothing but possibly a file (`replace_file`) is there.
    fn check_creatable(&self, path: &str, replace_file: bool) -> Result<(), VolumeError> {
        format::validate_path(path)?;
        let index = self.index();
        let mut parent = path;
        while let Some((up, _)) = parent.rsplit_once('/') {
            if let Some(Node::File(_)) = index.node(up) {
                return Err(VolumeError::NotADirectory {
                    name: self.display(up),
                });
            }
            parent = up;
        }
        match index.node(path) {
            None => Ok(()),
            Some(Node::File(_)) if replace_file => Ok(()),
            Some(Node::File(_)) => Err(VolumeError::AlreadyExists {
                name: self.display(path),
            }),
            Some(Node::Dir(_)) => Err(VolumeError::IsADirectory {
                name: self.display(path),
                hint: "",
            }),
        }
    }

    /// Checks that a file can be put at `path` with `options` (before reading it).
    pub fn check_put(&self, path: &str, options: PutOptions) -> Result<(), VolumeError> {
        self.check_creatable(path, true)?;
        if options.encrypted && self.key.is_none() {
            return Err(VolumeError::NoKey);
        }
        Ok(())
    }

    /// Uploads a new version of the file at `path` from `source`, replacing any file
    /// there. The file appears only once all of it is stored.
    ///
    /// If the store refuses a message as too large (its limits were lower than it
    /// said; it lowers them then), the upload is undone and, when the source can be
    /// read again, done again in smaller pieces.
    pub async fn put(
        &self,
        path: &str,
        source: PutSource,
        source_name: &str,
        options: PutOptions,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<FileEntry, VolumeError> {
        self.put_with_delta(path, source, source_name, options, progress, None)
            .await
    }

    /// Like [`Volume::put`] from a file, for a new version made by changing `delta`'s
    /// ranges of the version `delta` names: the chunks that no change touches are kept
    /// (the new version keeps the file id, and its record names them), and only the
    /// others are uploaded. Without a delta, or if the file changed elsewhere since that
    /// version, or the chunk size differs now, everything is uploaded.
    pub async fn put_changes(
        &self,
        path: &str,
        file: std::fs::File,
        source_name: &str,
        options: PutOptions,
        delta: Option<&Delta>,
    ) -> Result<FileEntry, VolumeError> {
        self.put_changes_with_progress(path, file, source_name, options, delta, None)
            .await
    }

    /// [`Volume::put_changes`], telling `progress` how many bytes are done (the
    /// unchanged chunks it keeps count as done).
    pub async fn put_changes_with_progress(
        &self,
        path: &str,
        file: std::fs::File,
        source_name: &str,
        options: PutOptions,
        delta: Option<&Delta>,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<FileEntry, VolumeError> {
        let source = PutSource::File(file);
        self.put_with_delta(path, source, source_name, options, progress, delta)
            .await
    }

    async fn put_with_delta(
        &self,
        path: &str,
        source: PutSource,
        source_name: &str,
        options: PutOptions,
        progress: Option<Arc<dyn Progress>>,
        delta: Option<&Delta>,
    ) -> Result<FileEntry, VolumeError> {
        let mut source = Some(source);
        let mut attempt = 1;
        loop {
            let read_error = |e| VolumeError::Io {
                context: format!("reading {source_name}"),
                source: e,
            };
            let (reader, again, size) = match source.take() {
                Some(PutSource::File(file)) => {
                    let size = file.metadata().map_err(read_error)?.len();
                    let reader = rewound(&file).map_err(read_error)?;
                    (reader, Some(PutSource::File(file)), Some(size))
                }
                Some(PutSource::Stream(reader)) => (reader, None, None),
                None => unreachable!("a source for every attempt"),
            };
            let changes = delta.zip(size);
            let result = self
                .put_once(
                    path,
                    reader,
                    source_name,
                    options,
                    progress.clone(),
                    changes,
                )
                .await;
            match result {
                Err(VolumeError::Store(StoreError::TooLarge(reason)))
                    if again.is_some() && attempt < MAX_STEP_DOWNS =>
                {
                    if !self.limits_stepped_down().await? {
                        return Err(VolumeError::Store(StoreError::TooLarge(reason)));
                    }
                    log::warn!(
                        "{}: the store refused a message as too large; uploading again in \
                         smaller pieces",
                        self.display(path)
                    );
                    source = again;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn put_once(
        &self,
        path: &str,
        source: Box<dyn std::io::Read + Send>,
        source_name: &str,
        options: PutOptions,
        progress: Option<Arc<dyn Progress>>,
        changes: Option<(&Delta, u64)>,
    ) -> Result<FileEntry, VolumeError> {
        self.check_creatable(path, true)?;
        if options.encrypted && self.key.is_none() {
            return Err(VolumeError::NoKey);
        }
        let plan = ChunkPlan::new(&self.limits(), chunk_kind(options.encrypted))?;
        let kept = changes.and_then(|(delta, size)| {
            let index = self.index();
            let base = index.file(path)?;
            let current = index.version_of(path)?;
            delta
                .unchanged_chunks(&current, base, &plan, options.encrypted, size)
                .map(|(id, reuse)| (id, base.data_key, reuse))
        });
        // The kept chunks are pinned until the new version's record has landed, under
        // the same exclusion as deletions (see [`reclaim`]): if another change is freeing
        // them already, everything is uploaded instead.
        let kept = kept.and_then(|(id, data_key, reuse)| {
            let messages: Vec<(Id, Id)> = reuse
                .iter()
                .flatten()
                .map(|c| (c.channel.unwrap_or(self.channel.id), c.message))
                .collect();
            match self.pin_messages(&messages) {
                Ok(pin) => Some((id, data_key, reuse, pin)),
                Err(e) => {
                    log::info!(
                        "{}: uploading all of it: the chunks it would keep are going ({e})",
                        self.display(path)
                    );
                    None
                }
            }
        });
        let (file_id, data_key, reuse, _kept_pinned) = match kept {
            Some((id, data_key, reuse, pin)) => (id, data_key, reuse, Some(pin)),
            None => (FileId::random()?, None, Vec::new(), None),
        };
        // A new version keeps its file's data key, which its kept chunks are sealed
        // under; a new file (or one from before data keys) gets its own.
        let data_key = match (options.encrypted, data_key) {
            (true, Some(key)) => Some(key),
            (true, None) => Some(DataKey::random()?),
            (false, _) => None,
        };
        let uploader = transfer::Uploader {
            store: self.store.clone(),
            channel: self.channel.id,
            data_key,
            file: file_id,
            plan,
            parallel_messages: self.config.upload_parallel_messages,
            progress: progress.clone(),
            source_name: source_name.to_string(),
            interrupt: self.config.interrupt.clone(),
            journal: journal::LazyJournal::new(self.journal_dir(), self.channel.id, file_id),
            reuse,
        };
        let result = self
            .upload_and_commit(path, &uploader, source, options, progress)
            .await;
        uploader.journal.close();
        result
    }

    fn journal_dir(&self) -> Option<PathBuf> {
        Some(
            self.config
                .cache_dir
                .as_ref()?
                .join("uploads")
                .join(self.store.identity()),
        )
    }

    async fn upload_and_commit(
        &self,
        path: &str,
        uploader: &transfer::Uploader,
        source: Box<dyn std::io::Read + Send>,
        options: PutOptions,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<FileEntry, VolumeError> {
        let started = std::time::Instant::now();
        let uploaded = uploader.run(source).await?;
        let posted = uploaded.posted.clone();
        let kept = uploader.reuse.iter().flatten().count();
        // The data messages, and the record's own.
        let (size, sent) = (uploaded.size, uploaded.posted.len() + 1);
        let tail_bytes: u64 = uploaded.tail.iter().map(|(_, c)| c.plain_len).sum();
        let committed = match self.config.interrupt.check() {
            Ok(()) => {
                self.post_file_record(path, uploader, uploaded, options)
                    .await
            }
            Err(e) => Err(e),
        };
        let (posted_record, record) = match committed {
            Ok(committed) => committed,
            Err(e) => {
                transfer::delete_quietly(self.store.as_ref(), self.channel.id, &posted).await;
                return Err(e);
            }
        };
        // From here on the new version exists: nothing may delete its chunks.
        if let Some(progress) = &progress {
            progress.advance(tail_bytes);
        }
        let chunks = match record.ops.first() {
            Some(Op::Put(manifest)) => manifest.chunks.len(),
            _ => 0,
        };
        log::info!(
            "stored {}: {size} bytes, {} new chunk(s){} in {sent} message(s), {:.1?}",
            self.display(path),
            chunks - kept,
            if kept > 0 {
                format!(" ({kept} unchanged kept)")
            } else {
                String::new()
            },
            started.elapsed()
        );
        // The version stored, whatever another caller did to the path since its record
        // landed (an unlink, a rename): that fails nothing. (Sealed with our own key:
        // its chunks name no other.)
        match record
            .ops
            .first()
            .map(|op| index::entry_of(&posted_record, op, None))
        {
            Some(Ok(Some(Entry::File(file)))) => Ok(file),
            _ => Err(VolumeError::Internal(format!(
                "{}: the record posted puts no file",
                self.display(path)
            ))),
        }
    }

    /// Posts the record of an uploaded file, with its last chunks riding on its message
    /// ([`Volume::post_record`]), and lets it land.
    async fn post_file_record(
        &self,
        path: &str,
        uploader: &transfer::Uploader,
        uploaded: transfer::Uploaded,
        options: PutOptions,
    ) -> Result<(Message, Record), VolumeError> {
        let tail_indices: Vec<u64> = uploaded.tail.iter().map(|(index, _)| *index).collect();
        let tail_sealed = uploaded.tail.into_iter().map(|(_, chunk)| chunk).collect();
        let (tail_attachments, tail_chunks) = transfer::attach(tail_sealed, 0);
        let mut chunks = uploaded.stored;
        chunks.extend(tail_indices.into_iter().zip(tail_chunks));
        chunks.sort_by_key(|(index, _)| *index);
        let manifest = FileManifest {
            path: path.to_string(),
            id: uploader.file,
            size: uploaded.size,
            mtime_ns: options.mtime_ns,
            mode: options.mode & 0o7777,
            encrypted: uploader.data_key.is_some(),
            chunks: chunks.into_iter().map(|(_, chunk)| chunk).collect(),
            data_key: uploader.data_key,
            symlink: None,
            special: None,
            node: None,
            meta: format::Meta::default(),
        };
        let ops = self.new_version(manifest, links::Keep::Meta(options.owner, options.atime_ns));
        let riders = records::Riders {
            attachments: tail_attachments,
            file: Some(uploader.file),
            data_messages: uploaded
                .posted
                .iter()
                .map(|&message| (message, uploader.file))
                .collect(),
            journal: Some(&uploader.journal),
        };
        self.post_record(ops, riders).await
    }

    /// Posts records of `ops`, in batches, and lets each land.
    async fn post_ops(&self, ops: Vec<Op>) -> Result<(), VolumeError> {
        for batch in ops.chunks(MAX_OPS_PER_RECORD) {
            self.post_record(batch.to_vec(), records::Riders::default())
                .await?;
        }
        Ok(())
    }

    /// After a record of ours is stored: applies it, and notes as unneeded what the
    /// entries it replaced held — and, if a change another writer made to a path beats
    /// ours (it had seen more), what our losing operation put there. Returns whether
    /// anything became unneeded (then [`Volume::free_after_change`] should run). The
    /// change has happened whatever goes wrong here, so nothing here fails it.
    fn apply_own(&self, message: &Message, record: &Record) -> bool {
        let mut index = self.index();
        let mut freed = Vec::new();
        let mut freed_foreign = Vec::new();
        for op in &record.ops {
            let Some(old) = index.entry(op.path()) else {
                continue;
            };
            match op {
                // A link changes nothing at its path.
                Op::Link { .. } => {}
                // A moved file's chunks stay: the destination uses them. Its record
                // message may go, unless it holds some of them.
                Op::Del {
                    moved: Some(moved), ..
                } => freed.extend(
                    old.messages()
                        .into_iter()
                        .filter(|m| !moved.messages.contains(&(self.channel.id, *m))),
                ),
                _ => {
                    freed.extend(old.messages());
                    freed_foreign.extend(old.foreign_messages());
                }
            }
        }
        if self.key.is_some() {
            index.note_authenticated(message.id);
        }
        let sealed_by = self.key.as_ref().map(Key::id);
        match index.apply(message, record, format::FORMAT_VERSION, sealed_by) {
            Ok(outdated) => {
                for lost in &outdated {
                    let op = record.ops.iter().find(|op| op.path() == lost.path);
                    if let Some(Ok(Some(entry))) =
                        op.map(|op| index::entry_of(message, op, sealed_by))
                    {
                        log::info!(
                            "{}: a change made elsewhere (message {}) stands over ours",
                            self.display(&lost.path),
                            lost.current_message
                        );
                        freed.extend(entry.messages());
                    }
                }
            }
            Err(why) => log::error!(
                "#{}: our own record in message {} failed to apply: {why}",
                self.channel.name,
                message.id
            ),
        }
        let replaced_something = !freed.is_empty() || !freed_foreign.is_empty();
        let now = reclaim::now_ms();
        for message in freed {
            index.unfreed.entry(message).or_insert(now);
        }
        for held in freed_foreign {
            index.unfreed_foreign.entry(held).or_insert(now);
        }
        self.unsaved.store(true, Ordering::Relaxed);
        replaced_something
    }

    /// After a change of ours made messages unneeded: re-reads the channel first, to
    /// see what others did meanwhile; the refresh then frees what nothing needs.
    async fn free_after_change(&self) {
        if let Err(e) = self.refresh().await {
            log::warn!(
                "#{}: could not re-read the channel to free replaced messages ({e}); \
                 will try again next time",
                self.channel.name
            );
        }
    }

    /// Writes the file at `path` to `sink`.
    pub async fn get(
        &self,
        path: &str,
        sink: &mut (dyn AsyncWrite + Unpin + Send),
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<FileEntry, VolumeError> {
        self.download(path, transfer::Sink::Writer(sink), progress)
            .await
    }

    /// Writes the file at `path` into a local file, from its start position.
    pub async fn get_to_file(
        &self,
        path: &str,
        file: Arc<std::fs::File>,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<FileEntry, VolumeError> {
        self.download(path, transfer::Sink::File(file), progress)
            .await
    }

    async fn download(
        &self,
        path: &str,
        sink: transfer::Sink<'_>,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<FileEntry, VolumeError> {
        let file = self.file(path)?;
        let started = std::time::Instant::now();
        self.fetcher(path)
            .download(&file, sink, self.config.download_parallel_chunks, progress)
            .await?;
        log::debug!(
            "fetched {}: {} bytes in {} chunk(s), {:.1?}",
            self.display(path),
            file.size,
            file.chunks.len(),
            started.elapsed()
        );
        Ok(file)
    }

    /// What fetches the chunks of the file at `path`.
    pub fn fetcher(&self, path: &str) -> transfer::ChunkFetcher {
        transfer::ChunkFetcher {
            store: self.store.clone(),
            channel: self.channel.id,
            key: self.key.clone(),
            name: self.display(path),
            interrupt: self.config.interrupt.clone(),
            disk_cache: self.config.disk_cache.clone(),
            fill_disk_cache: true,
        }
    }

    /// What one message of packed small files ([`Volume::put_small`]) holds.
    pub fn pack_limits(&self) -> PackLimits {
        PackLimits::new(&self.limits())
    }

    /// The largest file [`Volume::put_small`] takes: one chunk, an eighth of a message.
    pub fn small_file_limit(&self, encrypted: bool) -> u64 {
        self.pack_limits().file_limit(encrypted)
    }

    /// Stores small files (each at most [`Volume::small_file_limit`]) packed: their
    /// sealed chunks share attachments, and one record puts them all, in one message
    /// ([`pack`]). A batch more than a message holds (see [`Volume::pack_limits`]) is
    /// stored as several. Discord limits messages, not bytes, per channel, so a folder
    /// of small files costs a few messages, not one each. Each message's files all
    /// appear, or (on error) none of them; an error stops the batches after it.
    pub async fn put_small(&self, files: Vec<SmallFile>) -> Result<(), VolumeError> {
        self.put_batch(Vec::new(), files).await
    }

    /// Records folders and stores small files as [`Volume::put_small`] does, the
    /// folders' records in the first message (a folder counts as a file without bytes
    /// in a message's budget). A folder that exists by now (made elsewhere meanwhile),
    /// or whose path is no longer creatable (a file took a name on it), is left out
    /// with a log line: the folders come from a mount that showed them before their
    /// record was posted. When the channel has a key, folders go with the encrypted
    /// files (or alone, in an encrypted record): never in a signed record, which shows
    /// its paths.
    pub async fn put_batch(
        &self,
        folders: Vec<DirManifest>,
        files: Vec<SmallFile>,
    ) -> Result<(), VolumeError> {
        let limits = self.pack_limits();
        let mut seen = std::collections::HashSet::new();
        for file in &files {
            self.check_put(&file.path, file.options)?;
            if !seen.insert(file.path.as_str()) {
                return Err(VolumeError::AlreadyExists {
                    name: self.display(&file.path),
                });
            }
            if file.data.len() as u64 > limits.file_limit(file.options.encrypted) {
                return Err(VolumeError::Internal(format!(
                    "{} is not a small file",
                    file.path
                )));
            }
        }
        let folders = self.folders_still_to_make(folders);
        if folders.is_empty() && files.is_empty() {
            return Ok(());
        }
        // Plain files apart from encrypted ones: a record that put both would be
        // sealed, and a reader without the key would miss the plain ones.
        let (encrypted, plain): (Vec<_>, Vec<_>) =
            files.into_iter().partition(|f| f.options.encrypted);
        let (with_encrypted, with_plain) = if self.key.is_some() {
            (folders, Vec::new())
        } else {
            (Vec::new(), folders)
        };
        for (group, folders, encrypted) in [
            (encrypted, with_encrypted, true),
            (plain, with_plain, false),
        ] {
            let items = folders
                .into_iter()
                .map(Packed::Folder)
                .chain(group.into_iter().map(Packed::File));
            let mut batch = Vec::new();
            let mut budget = limits.budget();
            for item in items {
                let size = item.size();
                if !budget.take(size, encrypted) {
                    Box::pin(self.put_packed(std::mem::take(&mut batch))).await?;
                    budget = limits.budget();
                    budget.take(size, encrypted);
                }
                batch.push(item);
            }
            Box::pin(self.put_packed(batch)).await?;
        }
        Ok(())
    }

    /// The folders of a batch that still need their record (see [`Volume::put_batch`]).
    fn folders_still_to_make(&self, folders: Vec<DirManifest>) -> Vec<DirManifest> {
        let mut seen = std::collections::HashSet::new();
        folders
            .into_iter()
            .filter(|folder| {
                if !seen.insert(folder.path.clone()) {
                    return false;
                }
                match self.index().node(&folder.path) {
                    Some(Node::Dir(Some(_))) => return false,
                    Some(Node::Dir(None)) => {}
                    Some(Node::File(_)) => {
                        log::warn!(
                            "not recording folder {}: a file of that name was stored meanwhile",
                            self.display(&folder.path)
                        );
                        return false;
                    }
                    None => {}
                }
                match self.check_creatable(&folder.path, false) {
                    Ok(()) | Err(VolumeError::IsADirectory { .. }) => true,
                    Err(e) => {
                        log::warn!("not recording folder {}: {e}", self.display(&folder.path));
                        false
                    }
                }
            })
            .collect()
    }

    /// Stores one batch of checked folders and small files: one message if it fits,
    /// else halves.
    async fn put_packed(&self, items: Vec<Packed>) -> Result<(), VolumeError> {
        if items.is_empty() {
            return Ok(());
        }
        self.config.interrupt.check()?;
        let retry = (items.len() > 1).then(|| items.clone());
        let (mut ops, mut files) = (Vec::new(), Vec::new());
        for item in items {
            match item {
                Packed::Folder(folder) => ops.push(Op::Mkdir(folder)),
                Packed::File(file) => files.push(file),
            }
        }
        let key = self.key.clone();
        let limits = self.limits();
        let owners: Vec<(Option<Owner>, Option<i64>)> = (files.iter())
            .map(|f| (f.options.owner, f.options.atime_ns))
            .collect();
        let sealed = tokio::task::spawn_blocking(move || {
            pack::pack_small_files(files, key.as_ref(), &limits)
        })
        .await;
        let (attachments, file_ops) =
            sealed.map_err(|e| VolumeError::Internal(e.to_string()))??;
        for (op, (owner, atime_ns)) in file_ops.into_iter().zip(owners) {
            match op {
                Op::Put(manifest) => {
                    ops.extend(self.new_version(manifest, links::Keep::Meta(owner, atime_ns)));
                }
                other => ops.push(other),
            }
        }
        let halves = |items: Option<Vec<Packed>>| {
            let mut first = items.unwrap_or_default();
            let second = first.split_off(first.len() / 2);
            (first, second)
        };
        if !pack::fits_one_message(&attachments, &ops, &limits) {
            if retry.is_none() {
                return Err(VolumeError::Internal(
                    "a small file does not fit one message".into(),
                ));
            }
            let (first, second) = halves(retry);
            Box::pin(self.put_packed(first)).await?;
            return Box::pin(self.put_packed(second)).await;
        }
        let riders = records::Riders {
            attachments,
            ..records::Riders::default()
        };
        match self.post_record(ops, riders).await {
            Err(VolumeError::Store(StoreError::TooLarge(reason))) if retry.is_some() => {
                // The store's limits were lower than it said: store the batch in two.
                if !self.limits_stepped_down().await? {
                    return Err(VolumeError::Store(StoreError::TooLarge(reason)));
                }
                let (first, second) = halves(retry);
                Box::pin(self.put_packed(first)).await?;
                Box::pin(self.put_packed(second)).await
            }
            other => other.map(|_| ()),
        }
    }

    /// Records a folder at `path` (its parents are implied).
    pub async fn mkdir(&self, path: &str, mtime_ns: i64, mode: u32) -> Result<(), VolumeError> {
        self.mkdir_owned(path, mtime_ns, mode, Owner::default())
            .await
    }

    /// [`Volume::mkdir`] of a folder owned by `owner`.
    pub async fn mkdir_owned(
        &self,
        path: &str,
        mtime_ns: i64,
        mode: u32,
        owner: Owner,
    ) -> Result<(), VolumeError> {
        if let Some(Node::Dir(_)) = self.index().node(path) {
            return Err(VolumeError::AlreadyExists {
                name: self.display(path),
            });
        }
        self.check_creatable(path, false)?;
        self.post_ops(vec![Op::Mkdir(DirManifest {
            path: path.to_string(),
            mtime_ns,
            mode: mode & 0o7777,
            meta: owner.meta(),
        })])
        .await
    }

    /// Makes a symbolic link at `path` to `target` (format version 7): one record, no
    /// data. Sealed like a file's record when the volume has a key. Fails if `path`
    /// is taken, unless `replace` and a file (or link) is there.
    pub async fn symlink(
        &self,
        path: &str,
        target: &str,
        mtime_ns: i64,
        owner: Owner,
        replace: bool,
    ) -> Result<(), VolumeError> {
        if target.is_empty() || target.len() > format::MAX_SYMLINK_BYTES || target.contains('\0') {
            return Err(VolumeError::Format(format::FormatError::InvalidPath {
                path: target.to_string(),
                why: "a link's target is 1 to 4095 bytes, without NUL",
            }));
        }
        let node = EmptyNode {
            symlink: Some(target.to_string()),
            special: None,
            mode: 0o777,
            owner,
        };
        self.put_empty_node(path, node, mtime_ns, replace).await
    }

    /// Makes a special file (a FIFO, a socket, a device node) at `path` (format
    /// version 7): one record, no data, as [`Volume::symlink`].
    pub async fn mknod(
        &self,
        path: &str,
        special: format::Special,
        mode: u32,
        mtime_ns: i64,
        owner: Owner,
        replace: bool,
    ) -> Result<(), VolumeError> {
        let node = EmptyNode {
            symlink: None,
            special: Some(special),
            mode: mode & 0o7777,
            owner,
        };
        self.put_empty_node(path, node, mtime_ns, replace).await
    }

    /// Posts the record of a node with no data: a link or a special file.
    async fn put_empty_node(
        &self,
        path: &str,
        node: EmptyNode,
        mtime_ns: i64,
        replace: bool,
    ) -> Result<(), VolumeError> {
        self.check_creatable(path, replace)?;
        self.post_ops(vec![Op::Put(FileManifest {
            path: path.to_string(),
            id: FileId::random()?,
            size: 0,
            mtime_ns,
            mode: node.mode,
            encrypted: self.key.is_some(),
            chunks: Vec::new(),
            data_key: None,
            symlink: node.symlink,
            special: node.special,
            node: None,
            meta: node.owner.meta(),
        })])
        .await
    }

    /// Changes the modification time and/or mode of the file or folder at `path`: one
    /// record, pointing at the same chunks (nothing is uploaded again).
    pub async fn set_meta(
        &self,
        path: &str,
        mtime_ns: Option<i64>,
        mode: Option<u32>,
    ) -> Result<(), VolumeError> {
        let change = MetaChange {
            mtime_ns,
            mode,
            ..MetaChange::default()
        };
        self.change_meta(path, &change).await
    }

    /// Changes what `change` says of the file or folder at `path` (its times, mode,
    /// owner, an extended attribute): one record, pointing at the same chunks, putting
    /// every name of a file that has several ([`links`]).
    pub async fn change_meta(&self, path: &str, change: &MetaChange) -> Result<(), VolumeError> {
        let ops = {
            let index = self.index();
            let op = match index.node(path) {
                None => {
                    drop(index);
                    return Err(self.not_found(path));
                }
                Some(Node::File(file)) => {
                    let mut manifest = file.manifest(path);
                    (change.apply(
                        &mut manifest.mtime_ns,
                        &mut manifest.mode,
                        &mut manifest.meta,
                    ))
                    .map_err(|e| e.at(self.display(path)))?;
                    Op::Put(manifest)
                }
                Some(Node::Dir(dir)) => {
                    let mut manifest = dir.map_or_else(
                        || DirManifest {
                            path: path.to_string(),
                            mtime_ns: records::now_ns(),
                            mode: 0o755,
                            meta: format::Meta::default(),
                        },
                        |dir| dir.manifest(path),
                    );
                    (change.apply(
                        &mut manifest.mtime_ns,
                        &mut manifest.mode,
                        &mut manifest.meta,
                    ))
                    .map_err(|e| e.at(self.display(path)))?;
                    Op::Mkdir(manifest)
                }
            };
            drop(index);
            match op {
                Op::Put(manifest) => self.new_version(manifest, links::Keep::Nothing),
                other => vec![other],
            }
        };
        if path.is_empty() {
            return Ok(()); // the channel itself has no record to change
        }
        self.post_record(ops, records::Riders::default())
            .await
            .map(|_| ())
    }

    /// Removes the file or folder at `path` (a folder with contents only if
    /// `recursive`), freeing its messages.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), VolumeError> {
        let ops = {
            let index = self.index();
            match index.node(path) {
                None => {
                    drop(index);
                    return Err(self.not_found(path));
                }
                Some(Node::File(_)) => {
                    drop(index);
                    let mut ops = vec![Op::Del {
                        path: path.to_string(),
                        moved: None,
                    }];
                    ops.extend(self.remaining_names(path));
                    ops
                }
                Some(Node::Dir(explicit)) => {
                    let mut paths: Vec<String> =
                        index.live_under(path).map(|(p, _)| p.to_string()).collect();
                    if !paths.is_empty() && !recursive {
                        return Err(VolumeError::IsADirectory {
                            name: self.display(path),
                            hint: " (use -r to remove it with everything in it)",
                        });
                    }
                    if explicit.is_some() {
                        paths.push(path.to_string());
                    }
                    paths
                        .into_iter()
                        .map(|path| Op::Del { path, moved: None })
                        .collect()
                }
            }
        };
        if ops.is_empty() {
            return Ok(()); // the channel itself, already empty
        }
        self.post_ops(ops).await
    }

    /// Swaps what is at `a` and at `b` in this channel (`RENAME_EXCHANGE`), folders with
    /// everything under them: one record pointing at the same chunks, so that no reader
    /// sees one without the other. Both must exist, and neither may hold the other.
    pub async fn exchange(&self, a: &str, b: &str) -> Result<(), VolumeError> {
        if a.is_empty() || b.is_empty() {
            return Err(VolumeError::Unsupported(
                "can't exchange a channel itself".into(),
            ));
        }
        if a == b {
            return Ok(());
        }
        if a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/")) {
            return Err(VolumeError::Unsupported(format!(
                "can't exchange {} with what holds it or is in it",
                self.display(a)
            )));
        }
        let ops = {
            let index = self.index();
            for path in [a, b] {
                if index.node(path).is_none() {
                    drop(index);
                    return Err(self.not_found(path));
                }
            }
            let under = |root: &str| -> Vec<(String, Entry)> {
                (index.entry(root).cloned())
                    .map(|entry| (root.to_string(), entry))
                    .into_iter()
                    .chain(
                        index
                            .live_under(root)
                            .map(|(p, e)| (p.to_string(), e.clone())),
                    )
                    .collect()
            };
            let (at_a, at_b) = (under(a), under(b));
            let put_at = |entries: &[(String, Entry)], from: &str, to: &str| -> Vec<Op> {
                (entries.iter())
                    .map(|(path, entry)| {
                        let target = format!("{to}{}", &path[from.len()..]);
                        match entry {
                            Entry::File(file) => Op::Put(file.manifest(&target)),
                            Entry::Dir(dir) => Op::Mkdir(dir.manifest(&target)),
                        }
                    })
                    .collect()
            };
            let mut ops = put_at(&at_a, a, b);
            ops.extend(put_at(&at_b, b, a));
            let put: std::collections::HashSet<String> =
                ops.iter().map(|op| op.path().to_string()).collect();
            let gone: Vec<Op> = (at_a.iter().chain(&at_b))
                .filter(|(path, _)| !put.contains(path))
                .map(|(path, _)| Op::Del {
                    path: path.clone(),
                    moved: None,
                })
                .collect();
            ops.extend(gone);
            ops
        };
        if ops.len() > MAX_OPS_PER_RECORD {
            return Err(VolumeError::Unsupported(format!(
                "{} and {} hold too much to exchange in one record (at most {MAX_OPS_PER_RECORD} \
                 entries)",
                self.display(a),
                self.display(b)
            )));
        }
        self.post_record(ops, records::Riders::default())
            .await
            .map(|_| ())
    }

    /// Moves the file or folder at `from` to `to` within this channel, without
    /// uploading anything again. A file at `to` is replaced.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), VolumeError> {
        if from.is_empty() || to.is_empty() {
            return Err(VolumeError::Unsupported(format!(
                "can't move a channel itself ({} to {})",
                self.display(from),
                self.display(to)
            )));
        }
        if from == to {
            return Ok(());
        }
        let ops = {
            let index = self.index();
            let node = index.node(from).map(|node| matches!(node, Node::File(_)));
            match node {
                None => {
                    drop(index);
                    return Err(self.not_found(from));
                }
                Some(true) => {
                    drop(index);
                    if self.same_file(from, to) {
                        return Ok(()); // two names of one file: nothing to do
                    }
                    self.check_creatable(to, true)?;
                    let file = self.file(from)?;
                    let mut ops = vec![
                        Op::Put(file.manifest(to)),
                        Op::Del {
                            path: from.to_string(),
                            moved: None,
                        },
                    ];
                    // The file replaced at `to` lost a name.
                    ops.extend(self.remaining_names(to));
                    ops
                }
                Some(false) => {
                    if to.starts_with(&format!("{from}/")) {
                        return Err(VolumeError::Unsupported(format!(
                            "can't move {} into itself",
                            self.display(from)
                        )));
                    }
                    let moved: Vec<(String, Entry)> = index
                        .live_under(from)
                        .map(|(p, e)| (p.to_string(), e.clone()))
                        .chain(index.entry(from).cloned().map(|e| (from.to_string(), e)))
                        .collect();
                    drop(index);
                    self.check_creatable(to, false)?;
                    let mut ops = Vec::with_capacity(moved.len() * 2);
                    for (path, entry) in moved {
                        let target = format!("{to}{}", &path[from.len()..]);
                        ops.push(match entry {
                            Entry::File(file) => Op::Put(file.manifest(&target)),
                            Entry::Dir(dir) => Op::Mkdir(dir.manifest(&target)),
                        });
                        ops.push(Op::Del { path, moved: None });
                    }
                    if ops.is_empty() {
                        return Ok(());
                    }
                    ops
                }
            }
        };
        self.post_ops(ops).await
    }
}

impl Volume {
    /// Moves the file or folder at `from` to `to` in the channel of `dest`, without
    /// uploading anything again: the chunks stay where they are. The same checks as
    /// [`Volume::rename`] apply (into which this turns when `dest` is this channel), and
    /// a file at `to` is replaced (its messages are freed as by any change).
    ///
    /// Three steps, each a record: first this channel gets `link`s, a durable note
    /// that the destination uses the messages holding the files' chunks from now on;
    /// then `dest` gets a record putting every file (chunks named with their channel,
    /// `c`) and folder at its new path; then this channel gets the deletes: *moved*
    /// deletes for files, naming those messages and the destination, plain ones for
    /// folders. Large folders take several records on each step, like
    /// [`Volume::remove`].
    ///
    /// Not atomic across the two channels, but never unsafe: if the process dies (or
    /// the store fails) after the links, the files are still here and only here; after
    /// the destination's record, they show in both channels, sharing their chunks, and
    /// the links make every reader of this channel (on any machine, with any cache)
    /// keep what the destination uses when the copy here is deleted. A half-done move
    /// (the error says so) is finished by moving the same name again.
    pub async fn move_to(&self, from: &str, dest: &Volume, to: &str) -> Result<(), VolumeError> {
        if dest.channel.id == self.channel.id {
            return self.rename(from, to).await;
        }
        if from.is_empty() || to.is_empty() {
            return Err(VolumeError::Unsupported(format!(
                "can't move a channel itself ({} to {})",
                self.display(from),
                dest.display(to)
            )));
        }
        let moving: Vec<(String, Entry)> = {
            let index = self.index();
            match index.node(from) {
                None => {
                    drop(index);
                    return Err(self.not_found(from));
                }
                Some(Node::File(file)) => vec![(from.to_string(), Entry::File(file.clone()))],
                // The folder's own record first, then what is below it in path order.
                Some(Node::Dir(_)) => index
                    .entry(from)
                    .cloned()
                    .map(|e| (from.to_string(), e))
                    .into_iter()
                    .chain(
                        index
                            .live_under(from)
                            .map(|(p, e)| (p.to_string(), e.clone())),
                    )
                    .collect(),
            }
        };
        let is_file = matches!(moving.as_slice(), [(path, Entry::File(_))] if path == from);
        dest.check_creatable(to, is_file)?;
        if moving.is_empty() {
            return Ok(()); // a folder implied by nothing (can't happen) or already gone
        }
        let mut puts = Vec::with_capacity(moving.len());
        let mut dels = Vec::with_capacity(moving.len());
        for (path, entry) in moving {
            let target = format!("{to}{}", &path[from.len()..]);
            match entry {
                Entry::File(file) => {
                    puts.push(Op::Put(self.manifest_in(&target, &file, dest.channel.id)));
                    let mut messages: Vec<(Id, Id)> = Vec::new();
                    for chunk in &file.chunks {
                        let held = (chunk.channel.unwrap_or(self.channel.id), chunk.message);
                        if !messages.contains(&held) {
                            messages.push(held);
                        }
                    }
                    dels.push(Op::Del {
                        path,
                        moved: Some(Moved {
                            to: dest.channel.id,
                            messages,
                        }),
                    });
                }
                Entry::Dir(dir) => {
                    puts.push(Op::Mkdir(dir.manifest(&target)));
                    dels.push(Op::Del { path, moved: None });
                }
            }
        }
        // First the guard (a durable link here: the destination uses these messages
        // from now on), then the destination's record, then the deletes here.
        let links: Vec<Op> = dels
            .iter()
            .filter_map(|op| match op {
                Op::Del {
                    path,
                    moved: Some(moved),
                } => Some(Op::Link {
                    path: path.clone(),
                    moved: moved.clone(),
                }),
                _ => None,
            })
            .collect();
        if !links.is_empty() {
            self.post_ops(links).await?;
        }
        dest.post_ops(puts).await?;
        let result = self.post_ops(dels).await;
        if let Err(e) = &result {
            // The files are in both channels now, sharing their chunks; the links
            // posted first tell every reader of this channel that the destination uses
            // them too, so deleting the copy here doesn't free what the other needs.
            log::warn!(
                "{} is now also at {}, but deleting it here failed ({e}); move it again to \
                 finish the move",
                self.display(from),
                dest.display(to)
            );
        }
        result
    }

    /// The manifest that puts an indexed file of this channel (its same chunks) at
    /// `path` in channel `dest`: every chunk names its channel, unless that is `dest`.
    fn manifest_in(&self, path: &str, file: &FileEntry, dest: Id) -> FileManifest {
        let mut manifest = file.manifest(path);
        if dest != self.channel.id {
            manifest.node = None; // links stay in their channel
        }
        for chunk in &mut manifest.chunks {
            if let ChunkLocation::Stored { channel, .. } = &mut chunk.location {
                let at = channel.unwrap_or(self.channel.id);
                *channel = (at != dest).then_some(at);
            }
        }
        manifest
    }
}

/// How this code seals a new chunk of a file that is `encrypted` or not.
pub fn chunk_kind(encrypted: bool) -> ChunkKind {
    if encrypted {
        ChunkKind::Segmented
    } else {
        ChunkKind::Plain
    }
}

fn cache_path(
    config: &VolumeConfig,
    store: &dyn Store,
    channel: Id,
    key: Option<KeyId>,
) -> Option<PathBuf> {
    Some(
        config
            .cache_dir
            .as_ref()?
            .join(store.identity())
            .join(format!("{channel}{}", cache_name_end(key))),
    )
}

/// The name the index cache has: `.index` since it is [`index::encode`]'s binary form
/// (it was JSON in `.json`, which [`Volume::save`] removes when it writes the new one).
const CACHE_EXTENSION: &str = "index";

/// What the name of a cache file of `key` ends with, after the channel's id.
fn cache_name_end(key: Option<KeyId>) -> String {
    let key = key.map_or_else(|| "nokey".to_string(), |k| k.to_string());
    format!("-{key}.{CACHE_EXTENSION}")
}

/// The index cache as a volume last read or wrote it: the generation of the whole
/// index, the length of its file, how long the journal of deltas on top of it is, and
/// the next delta's place in it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CacheFile {
    generation: u64,
    whole_len: u64,
    journal_len: u64,
    next_seq: u64,
}

/// The journal of deltas beside the index cache at `path`.
fn journal_path(path: &std::path::Path) -> PathBuf {
    path.with_extension("journal")
}

/// Whether this machine holds a cached index of `channel` read with `key`: opening
/// the channel then costs reading that cache and the messages after it.
pub(crate) fn has_cache(
    config: &VolumeConfig,
    store: &dyn Store,
    channel: Id,
    key: Option<KeyId>,
) -> bool {
    cache_path(config, store, channel, key).is_some_and(|path| path.is_file())
}

/// A read of a channel's index cache under way (see [`load_cache`]).
pub(crate) type CacheRead = tokio::task::JoinHandle<Option<(Index, CacheFile)>>;

/// Starts reading `channel`'s index cache on a blocking thread.
pub(crate) fn start_cache_read(
    config: &VolumeConfig,
    store: Arc<dyn Store>,
    channel: Id,
    key: Option<Key>,
) -> CacheRead {
    let config = config.clone();
    tokio::task::spawn_blocking(move || load_cache(&config, store.as_ref(), channel, key.as_ref()))
}

/// The channels this machine holds an index cache of for `store` and `key` (the names
/// of the files [`cache_path`] gives), read off the cache folder.
pub(crate) fn cached_channels(
    config: &VolumeConfig,
    store: &dyn Store,
    key: Option<KeyId>,
) -> Vec<Id> {
    let Some(dir) = config.cache_dir.as_ref().map(|d| d.join(store.identity())) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let suffix = cache_name_end(key);
    entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.strip_suffix(&suffix)?.parse::<Id>().ok()
        })
        .collect()
}

/// The cached index (the whole one and the deltas of its journal that apply to it),
/// and where its files stand.
fn load_cache(
    config: &VolumeConfig,
    store: &dyn Store,
    channel: Id,
    key: Option<&Key>,
) -> Option<(Index, CacheFile)> {
    let path = cache_path(config, store, channel, key.map(|k| k.id()))?;
    let sealed = fs::read(&path).ok()?;
    let whole_len = sealed.len() as u64;
    let Some(bytes) = open_cache(key, sealed) else {
        log::info!("ignoring index cache {}: it doesn't open", path.display());
        return None;
    };
    // The layout's version comes first: a cache of another one is rebuilt, quietly.
    if index::encoded_version(&bytes) != Some(index::INDEX_CACHE_VERSION) {
        log::debug!("index cache {} is of another version", path.display());
        return None;
    }
    let mut index = match index::decode::<Index>(&bytes) {
        Ok(index) if index.usable_for(channel, key.map(|k| k.id())) => index,
        Ok(_) => return None,
        Err(e) => {
            log::info!("ignoring unreadable index cache {}: {e}", path.display());
            return None;
        }
    };
    let mut file = CacheFile {
        generation: index.generation,
        whole_len,
        journal_len: 0,
        next_seq: 0,
    };
    let journal = fs::read(journal_path(&path)).unwrap_or_default();
    let mut at = 0usize;
    while let Some(len) = journal.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(frame) = journal.get(at + 4..at + 4 + len) else {
            break;
        };
        let delta = open_cache(key, frame.to_vec())
            .and_then(|encoded| index::decode::<IndexDelta>(&encoded).ok());
        match delta {
            Some(delta) if delta.generation == file.generation && delta.seq == file.next_seq => {
                index.apply_delta(delta);
            }
            _ => break,
        }
        at += 4 + len;
        file.journal_len = at as u64;
        file.next_seq += 1;
    }
    Some((index, file))
}

/// Appends one length-prefixed frame to the journal at `path` (created private).
/// Returns the bytes written.
fn append_frame(path: &std::path::Path, frame: &[u8]) -> std::io::Result<u64> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let len = u32::try_from(frame.len()).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(4 + frame.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(frame);
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(&out)?;
    Ok(out.len() as u64)
}

/// First bytes of an index cache sealed under the key.
const SEALED_CACHE_MAGIC: &[u8; 4] = b"DCIX";
/// Label of the key index caches are sealed under.
const CACHE_KEY_LABEL: &[u8] = b"dcloud-fs index cache v1\0";

/// An index cache as it is written: sealed under a key derived from the channel key
/// when there is one (it holds file names and files' data keys, which must not lie
/// on disk in the clear: with them, the sealed blocks of the disk cache would open),
/// else the encoded index itself (a reader without a key only ever reads plain files).
fn seal_cache(key: Option<&Key>, encoded: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
    let Some(key) = key else { return Ok(encoded) };
    let nonce = crypto::random_nonce()?;
    let mut sealed = Vec::with_capacity(4 + nonce.len() + encoded.len() + crypto::TAG_LEN);
    sealed.extend_from_slice(SEALED_CACHE_MAGIC);
    sealed.extend_from_slice(&nonce);
    let body = sealed.len();
    sealed.extend_from_slice(&encoded);
    let tag = key.derive(CACHE_KEY_LABEL).seal_detached(
        &nonce,
        SEALED_CACHE_MAGIC,
        &mut sealed[body..],
    )?;
    sealed.extend_from_slice(&tag);
    Ok(sealed)
}

/// The encoded index of a cache written by [`seal_cache`], if it opens with `key`.
fn open_cache(key: Option<&Key>, mut sealed: Vec<u8>) -> Option<Vec<u8>> {
    let Some(key) = key else {
        return (!sealed.starts_with(SEALED_CACHE_MAGIC)).then_some(sealed);
    };
    let header = 4 + crypto::NONCE_LEN;
    if !sealed.starts_with(SEALED_CACHE_MAGIC) || sealed.len() < header + crypto::TAG_LEN {
        return None;
    }
    let tag_at = sealed.len() - crypto::TAG_LEN;
    let tag: [u8; crypto::TAG_LEN] = sealed[tag_at..].try_into().ok()?;
    let nonce: [u8; crypto::NONCE_LEN] = sealed[4..header].try_into().ok()?;
    sealed.truncate(tag_at);
    key.derive(CACHE_KEY_LABEL)
        .open_detached(&nonce, SEALED_CACHE_MAGIC, &mut sealed[header..], &tag)
        .ok()?;
    sealed.drain(..header);
    Some(sealed)
}

/// Writes a file only its owner can read (the index holds file names), atomically.
pub(crate) fn write_private_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(data)?;
    drop(file);
    fs::rename(&tmp, path)
}

/// A change of an entry's metadata ([`Volume::change_meta`]); `None`: unchanged.
#[derive(Debug, Clone, Default)]
pub struct MetaChange {
    pub mtime_ns: Option<i64>,
    pub atime_ns: Option<i64>,
    pub mode: Option<u32>,
    pub owner: Option<Owner>,
    /// Changes of extended attributes, made in order: all of them or, if one is
    /// refused, none.
    pub xattrs: Vec<XattrChange>,
}

/// A change of one extended attribute.
#[derive(Debug, Clone)]
pub enum XattrChange {
    /// Sets `name` to `value`; with `only`, only if it exists (`Some(true)`, as
    /// `XATTR_REPLACE`) or doesn't (`Some(false)`, as `XATTR_CREATE`).
    Set {
        name: String,
        value: Vec<u8>,
        only: Option<bool>,
    },
    /// Removes `name`, which must exist.
    Remove(String),
}

/// Why an extended attribute couldn't be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrRefused {
    /// `XATTR_CREATE` of one that exists.
    Exists,
    /// `XATTR_REPLACE` or removal of one that doesn't.
    Missing,
    /// A value over 64 KiB, or a bad name.
    Invalid,
    /// More than the entry may hold in all.
    Full,
}

impl XattrChange {
    /// The attribute it changes.
    pub fn name(&self) -> &str {
        match self {
            XattrChange::Set { name, .. } | XattrChange::Remove(name) => name,
        }
    }

    /// Makes the change in `xattrs` (the entry's whole size is checked after).
    fn apply(
        &self,
        xattrs: &mut std::collections::BTreeMap<String, format::XattrValue>,
    ) -> Result<(), XattrRefused> {
        match self {
            XattrChange::Remove(name) => {
                xattrs.remove(name).ok_or(XattrRefused::Missing)?;
            }
            XattrChange::Set { name, value, only } => {
                if format::xattr_name_problem(name).is_some()
                    || value.len() > format::MAX_XATTR_VALUE_BYTES
                {
                    return Err(XattrRefused::Invalid);
                }
                match (only, xattrs.contains_key(name)) {
                    (Some(true), false) => return Err(XattrRefused::Missing),
                    (Some(false), true) => return Err(XattrRefused::Exists),
                    _ => {}
                }
                xattrs.insert(name.clone(), format::XattrValue(value.clone()));
            }
        }
        Ok(())
    }
}

impl XattrRefused {
    fn at(self, name: String) -> VolumeError {
        VolumeError::Xattr { name, why: self }
    }
}

impl MetaChange {
    /// Applies the change to an entry's modification time, mode and `meta`.
    fn apply(
        &self,
        mtime_ns: &mut i64,
        mode: &mut u32,
        meta: &mut format::Meta,
    ) -> Result<(), XattrRefused> {
        *mtime_ns = self.mtime_ns.unwrap_or(*mtime_ns);
        *mode = self.mode.map_or(*mode, |m| m & 0o7777);
        if let Some(owner) = self.owner {
            meta.uid = owner.uid;
            meta.gid = owner.gid;
        }
        if let Some(atime) = self.atime_ns {
            meta.atime_ns = Some(atime);
        }
        for change in &self.xattrs {
            change.apply(&mut meta.xattrs)?;
        }
        let grew = (self.xattrs.iter()).any(|c| matches!(c, XattrChange::Set { .. }));
        if grew && meta.problem(format::FORMAT_VERSION).is_some() {
            return Err(XattrRefused::Full);
        }
        Ok(())
    }
}

/// What a node without data is: a link's target, or a special file; its mode.
struct EmptyNode {
    symlink: Option<String>,
    special: Option<format::Special>,
    mode: u32,
    owner: Owner,
}
