//! Moving a file's bytes to and from the store, streaming, with several chunks in flight.
//!
//! ## Chunk size
//!
//! Messages are what Discord rate-limits (about five per channel every five seconds), so
//! a chunk plan packs as many bytes into a message as the limits allow: `k` chunks per
//! message, each at most the per-file limit, all together within the per-request limit
//! less a small margin. For Discord's defaults (10 MiB per file, 25 MiB per request)
//! that is three chunks of 8 MiB (24 MiB a message), not two of 10 MiB. Chunk lengths are
//! rounded down to whole MiB so that 1 MiB reads never straddle two chunks.
//!
//! ## Upload
//!
//! ```text
//!  source ──read──▶ chunk buffer ──seal (blocking pool, in parallel)──▶ group of k
//!                                         group ──post (≤ P in flight)──▶ data message
//! ```
//!
//! The source is read sequentially, one chunk at a time, on the blocking pool. Each chunk
//! is sealed in place on the blocking pool as soon as it is read, so sealing runs in
//! parallel with reading and with other chunks. Every full group of `k` chunks is posted
//! as a data message by its own task, at most `P` at once. A semaphore of `(P + 1) · k`
//! chunk buffers bounds memory: reading waits while that many chunks are being sealed or
//! posted, whatever the file's size.
//!
//! A new version of a file may keep chunks of the version it replaces (see
//! [`super::Delta`]): the uploader skips over those in the source and hands their
//! references back with the new ones, so only changed chunks are sealed and posted.
//!
//! The last, partial group is not posted here: it goes back to the caller, which posts it
//! together with the file's record, so a small file is one message. If anything fails,
//! every data message already posted is deleted before the error is returned, so a failed
//! upload leaves nothing behind and, having no record, never shows up as a file.
//!
//! ## Download
//!
//! Each chunk is fetched and opened (on the blocking pool) by a task of its own, at most
//! `n` chunks ahead of the one being written, and the sink receives them in order. Being
//! tasks, fetches and decryption go on while the sink is busy; memory holds at most `n`
//! chunks plus the one being written.
//!
//! A reader of part of a file ([`ChunkFetcher::fetch_blocks`]) gets only the segments
//! it asks for of a segmented chunk: one ranged fetch per run of them that the disk
//! cache doesn't hold (a chunk of the older kinds opens only whole, so it is fetched
//! whole). Fetched runs go to the disk cache still sealed, one block per fetch; what
//! comes from the disk cache is opened like a download, and dropped and fetched again
//! if it doesn't open.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::VolumeError;
use super::disk_cache::{BlockKey, DiskCache};
use super::index::{FileEntry, StoredChunk};
use super::journal::LazyJournal;
use crate::crypto::Key;
use crate::format::{
    self, ChunkBuffer, ChunkKind, ChunkLocation, ChunkRef, DataKey, FileId, SealedChunk, Sealing,
};
use crate::store::{Fetched, Id, Limits, NewAttachment, NewMessage, Store, StoreError};

/// Something that wants to hear how many bytes have moved (a progress bar).
pub trait Progress: Send + Sync {
    /// `bytes` more bytes are done.
    fn advance(&self, bytes: u64);
}

/// Asks running transfers to stop (on Ctrl-C, say). A transfer checks it before each
/// chunk; a stopped one cleans up as after any failure and fails with
/// [`VolumeError::Interrupted`]. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Asks every transfer that holds a clone to stop.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Interrupted)` once a stop was asked for.
    pub fn check(&self) -> Result<(), VolumeError> {
        if self.is_set() {
            Err(VolumeError::Interrupted)
        } else {
            Ok(())
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// How a file is cut into chunks and chunks into messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Plaintext bytes per chunk (the last chunk may be shorter).
    pub chunk_len: usize,
    /// Chunks per data message.
    pub chunks_per_message: usize,
}

impl ChunkPlan {
    /// The plan that puts the most bytes in a message within `limits`, for chunks
    /// sealed as `kind`.
    pub fn new(limits: &Limits, kind: ChunkKind) -> Result<ChunkPlan, VolumeError> {
        let overhead = kind.sealed_len(0);
        let budget = request_budget(limits);
        let per_file = limits.max_file_size.min(budget);
        let too_small = || VolumeError::LimitsTooSmall {
            limits: format!("{limits:?}"),
        };
        if per_file <= overhead || limits.max_attachments == 0 {
            return Err(too_small());
        }
        // Keep one attachment free for a record that rides with the last chunks.
        let max_per_message = (limits.max_attachments.saturating_sub(1)).max(1) as u64;
        let per_message = budget.div_ceil(per_file).clamp(1, max_per_message);
        let sealed = (budget / per_message).min(per_file);
        let plain = kind.capacity(sealed);
        let rounded = if plain >= 2 * MIB {
            plain / MIB * MIB
        } else if plain >= 8 * 1024 {
            plain / 4096 * 4096
        } else {
            plain
        };
        if rounded == 0 {
            return Err(too_small());
        }
        Ok(ChunkPlan {
            chunk_len: rounded as usize,
            chunks_per_message: per_message as usize,
        })
    }
}

/// Attachment bytes to put in one message: the per-request limit less 1/64 for what
/// else a request carries (multipart headers, the message's own JSON).
pub fn request_budget(limits: &Limits) -> u64 {
    limits.max_request_size - limits.max_request_size / 64
}

/// A chunk read and being sealed, with the memory permit it holds.
struct PendingChunk {
    index: u64,
    seal: JoinHandle<Result<SealedChunk, format::FormatError>>,
    _permit: OwnedSemaphorePermit,
}

/// A data message posted by the upload.
struct PostedGroup {
    message: Id,
    /// The chunks it holds, with their indices.
    chunks: Vec<(u64, ChunkRef)>,
}

/// What an upload leaves for the caller to commit.
#[derive(Debug)]
pub struct Uploaded {
    /// Chunks already stored, with their indices, in no particular order: those posted
    /// in data messages and those reused from the previous version.
    pub stored: Vec<(u64, ChunkRef)>,
    /// The data messages posted, to delete if the commit fails.
    pub posted: Vec<Id>,
    /// The last chunks (index, sealed bytes), to attach to the record's message.
    pub tail: Vec<(u64, SealedChunk)>,
    /// Plaintext bytes read from the source.
    pub size: u64,
}

/// One upload of one file version.
pub struct Uploader {
    pub store: Arc<dyn Store>,
    pub channel: Id,
    /// `Some` to encrypt under this data key (the file's), `None` for plaintext mode.
    pub data_key: Option<DataKey>,
    pub file: FileId,
    pub plan: ChunkPlan,
    /// Data messages being posted at once.
    pub parallel_messages: usize,
    pub progress: Option<Arc<dyn Progress>>,
    /// Names the source in error messages.
    pub source_name: String,
    pub interrupt: Interrupt,
    /// Started before the first data message is posted.
    pub journal: LazyJournal,
    /// Chunks of the previous version to keep, by index (`Some` = unchanged: the source
    /// is skipped over instead of sealed and posted). Empty to upload everything.
    pub reuse: Vec<Option<StoredChunk>>,
}

type Source = Box<dyn Read + Send>;

impl Uploader {
    /// Reads `source` to its end, storing all but the last chunks. On failure, deletes
    /// what it posted.
    pub async fn run(&self, source: Source) -> Result<Uploaded, VolumeError> {
        let mut posted = Vec::new();
        let mut stored = Vec::new();
        let result = self.pipeline(source, &mut posted, &mut stored).await;
        match result {
            Ok((tail, size)) => Ok(Uploaded {
                stored,
                posted,
                tail,
                size,
            }),
            Err(e) => {
                delete_quietly(self.store.as_ref(), self.channel, &posted).await;
                Err(e)
            }
        }
    }

    async fn pipeline(
        &self,
        source: Source,
        posted: &mut Vec<Id>,
        stored: &mut Vec<(u64, ChunkRef)>,
    ) -> Result<(Vec<(u64, SealedChunk)>, u64), VolumeError> {
        let per_message = self.plan.chunks_per_message;
        let parallel = self.parallel_messages.max(1);
        let permits = Arc::new(Semaphore::new((parallel + 1) * per_message));
        let mut posts: FuturesOrdered<JoinHandle<Result<PostedGroup, VolumeError>>> =
            FuturesOrdered::new();
        let mut group: Vec<PendingChunk> = Vec::with_capacity(per_message);
        let mut source = Some(source);
        let mut size = 0u64;
        let mut index = 0u64;
        let mut failure = None;

        loop {
            if let Err(e) = self.interrupt.check() {
                failure = Some(e);
                break;
            }
            if let Some(Some(kept)) = self.reuse.get(index as usize) {
                let rest = self.skip(source.take().expect("source kept"), kept.len);
                source = match rest.await {
                    Ok(rest) => Some(rest),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                size += kept.len;
                stored.push((index, ChunkRef::from(kept)));
                if let Some(progress) = &self.progress {
                    progress.advance(kept.len);
                }
                index += 1;
                if kept.len < self.plan.chunk_len as u64 {
                    break; // a short chunk is the last
                }
                continue;
            }
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let (buffer, rest) = match self
                .read_chunk(source.take().expect("source kept"), index)
                .await
            {
                Ok(read) => read,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            source = Some(rest);
            if buffer.is_empty() {
                break;
            }
            let full = buffer.len() == self.plan.chunk_len;
            size += buffer.len() as u64;
            group.push(PendingChunk {
                index,
                seal: self.spawn_seal(buffer),
                _permit: permit,
            });
            index += 1;
            if !full {
                break; // a short read is the end of the source
            }
            if group.len() == per_message {
                if posts.len() >= parallel {
                    if let Err(e) = collect(posts.next().await, posted, stored) {
                        failure = Some(e);
                        break;
                    }
                }
                let chunks = std::mem::replace(&mut group, Vec::with_capacity(per_message));
                self.journal.ensure_started();
                posts.push_back(tokio::spawn(post_group(
                    self.store.clone(),
                    self.channel,
                    chunks,
                    self.progress.clone(),
                    self.file,
                )));
            }
        }
        // Wait for every post, even after a failure: a post still in flight could land
        // later and leave an orphan behind.
        while let Some(done) = posts.next().await {
            if let Err(e) = collect(Some(done), posted, stored) {
                failure.get_or_insert(e);
            }
        }
        let mut tail = Vec::with_capacity(group.len());
        for pending in group {
            match joined(pending.seal.await).and_then(|r| r.map_err(VolumeError::from)) {
                Ok(sealed) => tail.push((pending.index, sealed)),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok((tail, size)),
        }
    }

    /// Reads chunk `index` from the source, sealing its segments as they fill (all but
    /// the last, which [`ChunkBuffer::seal`] seals).
    async fn read_chunk(
        &self,
        mut source: Source,
        index: u64,
    ) -> Result<(ChunkBuffer, Source), VolumeError> {
        let capacity = self.plan.chunk_len;
        let key = self.data_key.map(|k| k.key());
        let file = self.file;
        let read = tokio::task::spawn_blocking(move || {
            let sealing = key.as_ref().map_or(Sealing::Plain, Sealing::Encrypted);
            let mut buffer =
                ChunkBuffer::new(capacity, sealing, file, index).map_err(std::io::Error::other)?;
            buffer
                .fill_from(&mut source, capacity)
                .map(|_| (buffer, source))
        })
        .await;
        joined(read)?.map_err(|source| VolumeError::Io {
            context: format!("reading {}", self.source_name),
            source,
        })
    }

    /// Reads past `len` bytes of the source: a chunk kept from the previous version.
    async fn skip(&self, mut source: Source, len: u64) -> Result<Source, VolumeError> {
        let skipped = tokio::task::spawn_blocking(move || {
            let copied = std::io::copy(&mut (&mut source).take(len), &mut std::io::sink())?;
            if copied < len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the source ended inside a chunk it was expected to hold",
                ));
            }
            Ok(source)
        })
        .await;
        joined(skipped)?.map_err(|source| VolumeError::Io {
            context: format!("reading {}", self.source_name),
            source,
        })
    }

    fn spawn_seal(
        &self,
        buffer: ChunkBuffer,
    ) -> JoinHandle<Result<SealedChunk, format::FormatError>> {
        tokio::task::spawn_blocking(move || buffer.seal())
    }
}

fn collect(
    done: Option<Result<Result<PostedGroup, VolumeError>, tokio::task::JoinError>>,
    posted: &mut Vec<Id>,
    stored: &mut Vec<(u64, ChunkRef)>,
) -> Result<(), VolumeError> {
    let Some(done) = done else { return Ok(()) };
    let group = joined(done)??;
    posted.push(group.message);
    stored.extend(group.chunks);
    Ok(())
}

/// Turns a task that panicked or was cancelled into an error instead of a crash.
fn joined<T>(result: Result<T, tokio::task::JoinError>) -> Result<T, VolumeError> {
    result.map_err(|e| VolumeError::Internal(format!("a transfer task failed: {e}")))
}

/// Seals the group's chunks (waiting for their seal tasks) and posts them as one data
/// message.
async fn post_group(
    store: Arc<dyn Store>,
    channel: Id,
    group: Vec<PendingChunk>,
    progress: Option<Arc<dyn Progress>>,
    file: FileId,
) -> Result<PostedGroup, VolumeError> {
    let mut sealed = Vec::with_capacity(group.len());
    let mut permits = Vec::with_capacity(group.len());
    for pending in group {
        sealed.push((pending.index, joined(pending.seal.await)??));
        permits.push(pending._permit);
    }
    let indices: Vec<u64> = sealed.iter().map(|(index, _)| *index).collect();
    let (attachments, mut chunks) = attach(sealed.into_iter().map(|(_, c)| c).collect(), 0);
    let bytes: u64 = chunks.iter().map(|c| c.len).sum();
    let message = store
        .post(
            channel,
            NewMessage {
                content: format::data_content(file),
                attachments,
            },
        )
        .await?;
    drop(permits);
    resolve_attached(&message, &mut chunks)?;
    if let Some(progress) = &progress {
        progress.advance(bytes);
    }
    Ok(PostedGroup {
        message: message.id,
        chunks: indices.into_iter().zip(chunks).collect(),
    })
}

/// Turns sealed chunks, in the order they go into one message, into attachments named
/// by their position from `first` on (not by their index in the file, which would tell
/// anyone reading the channel where in a file each chunk is), and the chunk references
/// that name them.
pub fn attach(sealed: Vec<SealedChunk>, first: usize) -> (Vec<NewAttachment>, Vec<ChunkRef>) {
    sealed
        .into_iter()
        .enumerate()
        .map(|(position, chunk)| {
            let filename = format::chunk_filename((first + position) as u64);
            let reference = ChunkRef {
                location: ChunkLocation::Attached {
                    filename: filename.clone(),
                },
                len: chunk.plain_len,
                sha256: chunk.sha256,
                tag: None,
                key: None,
                prefix: chunk.prefix,
                packed_at: None,
            };
            let attachment = NewAttachment {
                filename,
                data: chunk.into_bytes(),
            };
            (attachment, reference)
        })
        .unzip()
}

/// Rewrites references by file name into ids of the posted message's attachments.
pub fn resolve_attached(
    message: &crate::store::Message,
    chunks: &mut [ChunkRef],
) -> Result<(), VolumeError> {
    for chunk in chunks {
        if let ChunkLocation::Attached { filename } = &chunk.location {
            let attachment = message.attachment_named(filename).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "message {} came back without attachment {filename}",
                    message.id
                ))
            })?;
            chunk.location = ChunkLocation::Stored {
                channel: None,
                message: message.id,
                attachment: attachment.id,
            };
        }
    }
    Ok(())
}

/// Deletes messages, ignoring those already gone and logging other failures (used to
/// clean up, where the operation's own outcome is what to report). Returns the messages
/// that could not be deleted.
pub async fn delete_quietly(store: &dyn Store, channel: Id, messages: &[Id]) -> Vec<Id> {
    let failed = store.delete_messages(channel, messages).await;
    failed
        .into_iter()
        .map(|(message, e)| {
            log::warn!("could not delete message {message} in channel {channel}: {e}");
            message
        })
        .collect()
}

/// Bytes `span` of sealed `chunk` (counted from the chunk's start), as bytes of its
/// attachment: the same, unless the attachment is a pack that holds the chunk from
/// [`StoredChunk::packed_at`] on. (Both are bounded by the record, so this can't
/// overflow: see [`format::MAX_PACK_OFFSET`].)
fn in_attachment(chunk: &StoredChunk, span: std::ops::Range<u64>) -> std::ops::Range<u64> {
    let base = chunk.packed_at.unwrap_or(0);
    base + span.start..base + span.end
}

/// What opening a file's chunks needs to know of the file.
#[derive(Debug, Clone, Copy)]
pub struct FileSeal {
    pub id: FileId,
    pub encrypted: bool,
    /// The key its segmented chunks are sealed under.
    pub data_key: Option<DataKey>,
}

impl FileSeal {
    /// The seal of an indexed file version.
    pub fn of(file: &FileEntry) -> FileSeal {
        FileSeal {
            id: file.id,
            encrypted: file.encrypted,
            data_key: file.data_key,
        }
    }
}

/// Plaintext of some of a chunk's blocks: each [`format::SEGMENT_LEN`] long (the last
/// of the chunk may be shorter), from block `first` on. A block is a segment of a
/// segmented chunk; a chunk that opens only whole is cut into blocks the same way.
#[derive(Debug, Clone)]
pub struct Blocks {
    pub first: u64,
    pub blocks: Vec<Bytes>,
}

/// Where a file's chunks are fetched from, and how they are opened. Cheap to clone, so
/// that every chunk fetch can run as its own task.
///
/// A segmented chunk is fetched by ranges: only the segments asked for. With a disk
/// cache, every segment (or whole chunk, for the kinds that open only whole) is looked
/// for there first and kept there once fetched, still sealed; a cached copy that fails
/// to open is dropped and fetched again, never served.
#[derive(Clone)]
pub struct ChunkFetcher {
    pub store: Arc<dyn Store>,
    pub channel: Id,
    pub key: Option<Key>,
    /// Names the file in error messages (`channel/path`).
    pub name: String,
    pub interrupt: Interrupt,
    /// Sealed bytes kept on local disk, if any.
    pub disk_cache: Option<Arc<DiskCache>>,
    /// Whether what is fetched goes into the disk cache too (it is read from there
    /// either way). [`ChunkFetcher::download`] doesn't: the file it writes is the local
    /// copy, and filling the cache would write every byte twice.
    pub fill_disk_cache: bool,
}

impl ChunkFetcher {
    /// Chunk `index` of `file`, opened: its plaintext in blocks, or an error — never
    /// bytes that didn't authenticate (or match their checksum).
    pub async fn fetch(
        &self,
        file: FileSeal,
        index: u64,
        chunk: &StoredChunk,
    ) -> Result<Vec<Bytes>, VolumeError> {
        let all = 0..format::segment_count(chunk.len);
        Ok(self.fetch_blocks(file, index, chunk, all).await?.blocks)
    }

    /// Blocks `wanted` (within the chunk) of chunk `index` of `file`, opened: just those
    /// of a segmented chunk, all of one that opens only whole.
    pub async fn fetch_blocks(
        &self,
        file: FileSeal,
        index: u64,
        chunk: &StoredChunk,
        wanted: std::ops::Range<u64>,
    ) -> Result<Blocks, VolumeError> {
        match chunk.kind(file.encrypted) {
            ChunkKind::Segmented => self.fetch_segments(file, index, chunk, wanted).await,
            kind => Ok(Blocks {
                first: 0,
                blocks: self.fetch_whole(file, kind, index, chunk).await?,
            }),
        }
    }

    /// A chunk that opens only whole (plain, or chunk version 1).
    async fn fetch_whole(
        &self,
        file: FileSeal,
        kind: ChunkKind,
        index: u64,
        chunk: &StoredChunk,
    ) -> Result<Vec<Bytes>, VolumeError> {
        let sealed_len = kind.sealed_len(chunk.len);
        let block = BlockKey {
            attachment: chunk.attachment,
            offset: in_attachment(chunk, 0..0).start,
            len: u32::try_from(sealed_len).unwrap_or(u32::MAX),
        };
        let key = self.whole_key(chunk)?;
        let whole = std::iter::once(0..sealed_len).collect();
        let cached = self.cached_on_disk(chunk, whole).await.pop();
        if let Some(Some((block, cached))) = cached {
            match self
                .open_whole(file, index, chunk, key.clone(), cached)
                .await
            {
                Ok(blocks) => return Ok(blocks),
                Err(e) => self.drop_damaged(block, &e),
            }
        }
        let channel = chunk.channel.unwrap_or(self.channel);
        let data = match chunk.packed_at {
            // One chunk of a pack: just its bytes.
            Some(_) => {
                self.store
                    .fetch_range(
                        channel,
                        chunk.message,
                        chunk.attachment,
                        in_attachment(chunk, 0..sealed_len),
                    )
                    .await
            }
            None => {
                self.store
                    .fetch_attachment(channel, chunk.message, chunk.attachment, sealed_len)
                    .await
            }
        };
        let data = Vec::from(data.map_err(|e| self.store_error(e, index))?);
        self.keep_on_disk(vec![(block, Bytes::copy_from_slice(&data))]);
        self.open_whole(file, index, chunk, key, data).await
    }

    async fn open_whole(
        &self,
        file: FileSeal,
        index: u64,
        chunk: &StoredChunk,
        key: Option<Key>,
        data: Vec<u8>,
    ) -> Result<Vec<Bytes>, VolumeError> {
        let reference = ChunkRef::from(chunk);
        let opened = tokio::task::spawn_blocking(move || {
            format::open_chunk(
                key.as_ref(),
                file.id,
                file.encrypted,
                index,
                &reference,
                data,
            )
        })
        .await;
        joined(opened)?.map_err(|source| self.chunk_error(source))
    }

    /// Segments `wanted` of a segmented chunk: those on disk from there, the rest by
    /// ranged fetches of the runs missing.
    async fn fetch_segments(
        &self,
        file: FileSeal,
        index: u64,
        chunk: &StoredChunk,
        wanted: std::ops::Range<u64>,
    ) -> Result<Blocks, VolumeError> {
        let count = format::segment_count(chunk.len);
        let wanted = wanted.start.min(count - 1)..wanted.end.clamp(wanted.start + 1, count);
        let key = file
            .data_key
            .ok_or_else(|| {
                self.chunk_error(format::FormatError::Damaged {
                    what: "record",
                    detail: format!("chunk {index} is segmented but the file has no data key"),
                })
            })?
            .key();
        let mut blocks: Vec<Option<Bytes>> = vec![None; (wanted.end - wanted.start) as usize];
        self.fill_from_disk(file, index, chunk, &key, wanted.clone(), &mut blocks)
            .await;
        for run in missing_runs(&blocks) {
            let segments = wanted.start + run.start as u64..wanted.start + run.end as u64;
            let mut span = format::segments_span(chunk.len, segments.clone());
            // A run from the first segment brings the header along (13 bytes more), so
            // that a chunk of another sealing is named as such.
            let start = if segments.start == 0 {
                span.start = 0;
                RunStart::Header
            } else {
                RunStart::Segment(segments.start)
            };
            let data = self
                .store
                .fetch_range_owned(
                    chunk.channel.unwrap_or(self.channel),
                    chunk.message,
                    chunk.attachment,
                    in_attachment(chunk, span.clone()),
                )
                .await
                .map_err(|e| self.store_error(e, index))?;
            // The run as one block: a file per fetch, not per segment.
            let keep = BlockKey {
                attachment: chunk.attachment,
                offset: in_attachment(chunk, span).start,
                len: data.bytes().len() as u32,
            };
            let opened = self
                .open_run(
                    file,
                    index,
                    chunk,
                    &key,
                    SealedRun {
                        start,
                        data,
                        keep: Some(keep),
                    },
                )
                .await?;
            for (slot, block) in blocks[run].iter_mut().zip(opened) {
                *slot = Some(block);
            }
        }
        Ok(Blocks {
            first: wanted.start,
            blocks: blocks
                .into_iter()
                .map(|b| b.expect("every run filled"))
                .collect(),
        })
    }

    /// Fills `blocks` (segments `wanted`) with what the disk cache holds: all of them
    /// from one cached block if one covers them, else each segment from any block that
    /// covers it. A cached copy that doesn't open is dropped (and fetched by the caller).
    async fn fill_from_disk(
        &self,
        file: FileSeal,
        index: u64,
        chunk: &StoredChunk,
        key: &Key,
        wanted: std::ops::Range<u64>,
        blocks: &mut [Option<Bytes>],
    ) {
        if self.disk_cache.is_none() {
            return;
        }
        let whole = format::segments_span(chunk.len, wanted.clone());
        if let Some(Some((block, data))) = self
            .cached_on_disk(chunk, std::iter::once(whole).collect())
            .await
            .pop()
        {
            match self
                .open_run(
                    file,
                    index,
                    chunk,
                    key,
                    SealedRun::cached(RunStart::Segment(wanted.start), data),
                )
                .await
            {
                Ok(opened) => {
                    for (slot, opened) in blocks.iter_mut().zip(opened) {
                        *slot = Some(opened);
                    }
                    return;
                }
                Err(e) => self.drop_damaged(block, &e),
            }
        }
        let spans = wanted
            .clone()
            .map(|segment| format::segments_span(chunk.len, segment..segment + 1))
            .collect();
        let cached = self.cached_on_disk(chunk, spans).await;
        for (at, found) in cached.into_iter().enumerate() {
            let Some((block, data)) = found else { continue };
            let segment = wanted.start + at as u64;
            match self
                .open_run(
                    file,
                    index,
                    chunk,
                    key,
                    SealedRun::cached(RunStart::Segment(segment), data),
                )
                .await
            {
                Ok(mut opened) => blocks[at] = opened.pop(),
                Err(e) => self.drop_damaged(block, &e),
            }
        }
    }

    /// Opens the sealed bytes of a run of segments: a short run (a random read's) right
    /// here, a longer one on the blocking pool. `keep` names the run's block in the
    /// disk cache when it was just fetched: it is written there first, from the same
    /// buffer, then opened in place.
    async fn open_run(
        &self,
        file: FileSeal,
        index: u64,
        chunk: &StoredChunk,
        key: &Key,
        run: SealedRun,
    ) -> Result<Vec<Bytes>, VolumeError> {
        let SealedRun { start, data, keep } = run;
        let reference = ChunkRef::from(chunk);
        let key = key.clone();
        let keep = keep
            .filter(|_| self.fill_disk_cache)
            .and_then(|block| Some((self.disk_cache.clone()?, block)));
        let inline = keep.is_none() && data.bytes().len() <= INLINE_OPEN_BYTES;
        let Fetched { buffer, start: at } = data;
        let open = move || {
            // Kept on disk as fetched, before it is opened in place: no copy of it.
            if let Some((cache, block)) = keep {
                cache.put(&block, buffer.get(at..).unwrap_or_default());
            }
            match start {
                RunStart::Header => format::open_segments_with_header_at(
                    &key, file.id, index, &reference, buffer, at,
                ),
                RunStart::Segment(first) => {
                    format::open_segments_at(&key, file.id, index, &reference, first, buffer, at)
                }
            }
        };
        let opened = if inline {
            open()
        } else {
            joined(tokio::task::spawn_blocking(open).await)?
        };
        opened.map_err(|source| self.chunk_error(source))
    }

    /// The key that sealed a whole chunk: ours, or an older one ours carries along.
    fn whole_key(&self, chunk: &StoredChunk) -> Result<Option<Key>, VolumeError> {
        match (&self.key, chunk.key) {
            (Some(key), Some(id)) => Ok(Some(key.for_id(id).cloned().ok_or_else(|| {
                VolumeError::WrongKey {
                    name: self.name.clone(),
                    written: id,
                    have: key.id(),
                }
            })?)),
            (key, _) => Ok(key.clone()),
        }
    }

    /// Byte ranges of sealed `chunk` (from its start) found on disk, in order (`None`
    /// where no cached block holds one), with the block each came from.
    async fn cached_on_disk(
        &self,
        chunk: &StoredChunk,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> Vec<Option<(BlockKey, Vec<u8>)>> {
        let Some(cache) = self.disk_cache.clone() else {
            return vec![None; ranges.len()];
        };
        let count = ranges.len();
        let attachment = chunk.attachment;
        let ranges: Vec<_> = ranges
            .into_iter()
            .map(|range| in_attachment(chunk, range))
            .collect();
        tokio::task::spawn_blocking(move || {
            ranges
                .into_iter()
                .map(|range| cache.get_range(attachment, range))
                .collect()
        })
        .await
        .unwrap_or_else(|_| vec![None; count])
    }

    /// Keeps fetched blocks on disk, in the background.
    fn keep_on_disk(&self, blocks: Vec<(BlockKey, Bytes)>) {
        if !self.fill_disk_cache {
            return;
        }
        if let Some(cache) = self.disk_cache.clone() {
            tokio::task::spawn_blocking(move || {
                for (key, data) in blocks {
                    cache.put(&key, &data);
                }
            });
        }
    }

    /// A cached block that didn't open is dropped (and fetched again by the caller).
    fn drop_damaged(&self, block: BlockKey, error: &VolumeError) {
        log::warn!(
            "{}: a cached copy failed to open ({error}); fetching it again",
            self.name
        );
        if let Some(cache) = &self.disk_cache {
            cache.remove(&block);
        }
    }

    /// A fetch's failure: a missing chunk, a chunk shorter or longer than its record
    /// says (damaged), or the store's own trouble.
    fn store_error(&self, error: StoreError, index: u64) -> VolumeError {
        match error {
            e if e.is_not_found() => VolumeError::ChunkMissing {
                name: self.name.clone(),
                index,
            },
            StoreError::Corrupt(detail) => self.chunk_error(format::FormatError::Damaged {
                what: "chunk",
                detail: format!("chunk {index}: {detail}"),
            }),
            e => VolumeError::Store(e),
        }
    }

    fn chunk_error(&self, source: format::FormatError) -> VolumeError {
        VolumeError::Chunk {
            name: self.name.clone(),
            source,
        }
    }

    /// Writes the whole file to `sink`, in order, with up to `parallel` chunks being
    /// fetched and opened at once. Each chunk is its own task, so fetching and opening
    /// go on while earlier chunks are being written.
    pub async fn download(
        &self,
        file: &FileEntry,
        mut sink: Sink<'_>,
        parallel: usize,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<(), VolumeError> {
        let seal = FileSeal::of(file);
        let parallel = parallel.max(1);
        // The store is told of each message's chunks `ahead` chunks before the first of
        // them is fetched (a Discord store then looks up their signed URLs meanwhile),
        // so that no fetch waits for a message to be read.
        let ahead = 2 * parallel;
        // The disk cache is read, not filled: the file written is the local copy.
        let reader = ChunkFetcher {
            fill_disk_cache: false,
            ..self.clone()
        };
        let mut chunks = futures::stream::iter(file.chunks.iter().cloned().enumerate())
            .map(|(index, chunk)| {
                let told = if index == 0 {
                    0..=ahead
                } else {
                    index + ahead..=index + ahead
                };
                for at in told {
                    self.prepare_fetch(&file.chunks, at);
                }
                let fetcher = reader.clone();
                tokio::spawn(async move { fetcher.fetch(seal, index as u64, &chunk).await })
            })
            .buffered(parallel);
        let write_error = |source| VolumeError::Io {
            context: format!("writing {}", self.name),
            source,
        };
        // The chunks are written as they come, while the next ones keep being fetched:
        // the stream is polled (and new fetches started) while a write is under way, so
        // `parallel` fetches stay in flight. One fetched chunk may wait for the write.
        let (fetched, to_write) = tokio::sync::mpsc::channel(1);
        let fetch = async move {
            while let Some(chunk) = chunks.next().await {
                if fetched.send(chunk).await.is_err() {
                    break; // the writing stopped
                }
            }
        };
        let write = async {
            // Owned here, so that a write that stops drops it and the fetching stops too.
            let mut to_write = to_write;
            while let Some(chunk) = to_write.recv().await {
                self.interrupt.check()?;
                let blocks = joined(chunk)??;
                let len: u64 = blocks.iter().map(|b| b.len() as u64).sum();
                sink.write(blocks).await.map_err(write_error)?;
                if let Some(progress) = &progress {
                    progress.advance(len);
                }
            }
            sink.flush().await.map_err(write_error)
        };
        futures::join!(fetch, write).1
    }

    /// Tells the store, in the background, that chunk `at` of `chunks` will be fetched
    /// soon, if it is the first of its message's (the others share its message).
    fn prepare_fetch(&self, chunks: &[StoredChunk], at: usize) {
        let Some(chunk) = chunks.get(at) else { return };
        let message = |c: &StoredChunk| (c.channel.unwrap_or(self.channel), c.message);
        if at > 0 && message(&chunks[at - 1]) == message(chunk) {
            return;
        }
        let store = self.store.clone();
        let (channel, message) = message(chunk);
        let attachment = chunk.attachment;
        tokio::spawn(async move { store.prepare_fetch(channel, message, attachment).await });
    }
}

/// Sealed runs up to this long (two segments, tens of microseconds of AES) are opened
/// on the task that fetched them: sending them to the blocking pool would cost a thread
/// hand-off as long as the work, on every random read.
const INLINE_OPEN_BYTES: usize =
    2 * (format::SEGMENT_LEN + crate::crypto::TAG_LEN) + format::SEGMENTED_HEADER_LEN;

/// A run of sealed segments to open.
struct SealedRun {
    /// Where its bytes start.
    start: RunStart,
    data: Fetched,
    /// Its block in the disk cache, when it was just fetched (to be kept there).
    keep: Option<BlockKey>,
}

impl SealedRun {
    /// A run read from the disk cache.
    fn cached(start: RunStart, data: Vec<u8>) -> SealedRun {
        SealedRun {
            start,
            data: Fetched::from(data),
            keep: None,
        }
    }
}

/// Where a run's sealed bytes start.
#[derive(Debug, Clone, Copy)]
enum RunStart {
    /// At the chunk's header (the run is from segment 0, header included).
    Header,
    /// At this segment.
    Segment(u64),
}

/// The runs of consecutive missing blocks, as index ranges.
fn missing_runs(blocks: &[Option<Bytes>]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut at = 0;
    while at < blocks.len() {
        if blocks[at].is_some() {
            at += 1;
            continue;
        }
        let start = at;
        while at < blocks.len() && blocks[at].is_none() {
            at += 1;
        }
        runs.push(start..at);
    }
    runs
}

/// Where a download's bytes go.
pub enum Sink<'a> {
    /// Any async writer (stdout, a buffer, ...).
    Writer(&'a mut (dyn AsyncWrite + Unpin + Send)),
    /// A local file, written on the blocking pool straight from each chunk's buffer
    /// (an async file would copy every chunk once more).
    File(Arc<std::fs::File>),
}

impl Sink<'_> {
    async fn write(&mut self, blocks: Vec<Bytes>) -> std::io::Result<()> {
        match self {
            Sink::Writer(writer) => {
                for block in blocks {
                    writer.write_all(&block).await?;
                }
                Ok(())
            }
            Sink::File(file) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || {
                    blocks
                        .iter()
                        .try_for_each(|block| (&*file).write_all(block))
                })
                .await
                .map_err(std::io::Error::other)?
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Writer(writer) => writer.flush().await,
            Sink::File(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ChunkKind;

    const SEGMENTED: ChunkKind = ChunkKind::Segmented;

    #[test]
    fn discord_defaults_pack_three_8_mib_chunks_per_message() {
        let plan = ChunkPlan::new(&Limits::default(), SEGMENTED).unwrap();
        assert_eq!(
            plan,
            ChunkPlan {
                chunk_len: 8 * 1024 * 1024,
                chunks_per_message: 3
            }
        );
        let sealed = SEGMENTED.sealed_len(plan.chunk_len as u64);
        assert!(sealed <= Limits::default().max_file_size);
        assert!(3 * sealed <= Limits::default().max_request_size);
    }

    #[test]
    fn boosted_and_tiny_limits_give_valid_plans() {
        let boosted = Limits {
            max_file_size: 100 * 1024 * 1024,
            max_request_size: 100 * 1024 * 1024,
            ..Limits::default()
        };
        let plan = ChunkPlan::new(&boosted, SEGMENTED).unwrap();
        assert_eq!(plan.chunks_per_message, 1);
        assert!(SEGMENTED.sealed_len(plan.chunk_len as u64) <= boosted.max_file_size);

        let tiny = Limits {
            max_file_size: 1000,
            max_attachments: 3,
            max_request_size: 2500,
            max_content_chars: 2000,
        };
        let plan = ChunkPlan::new(&tiny, SEGMENTED).unwrap();
        assert!(plan.chunks_per_message <= 2);
        assert!(SEGMENTED.sealed_len(plan.chunk_len as u64) <= tiny.max_file_size);
        assert!(
            plan.chunks_per_message as u64 * SEGMENTED.sealed_len(plan.chunk_len as u64)
                <= tiny.max_request_size
        );

        let useless = Limits {
            max_file_size: 10,
            ..tiny
        };
        assert!(ChunkPlan::new(&useless, SEGMENTED).is_err());
    }
}
