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
use super::index::{FileEntry, StoredChunk};
use super::journal::LazyJournal;
use crate::crypto::Key;
use crate::format::{self, ChunkBuffer, ChunkLocation, ChunkRef, FileId, SealedChunk, Sealing};
use crate::store::{Id, Limits, NewAttachment, NewMessage, Store, StoreError};

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
    /// The plan that puts the most bytes in a message within `limits`, for chunks that
    /// grow by `overhead` bytes when sealed.
    pub fn new(limits: &Limits, overhead: usize) -> Result<ChunkPlan, VolumeError> {
        let budget = request_budget(limits);
        let per_file = limits.max_file_size.min(budget);
        let too_small = || VolumeError::LimitsTooSmall {
            limits: format!("{limits:?}"),
        };
        if per_file <= overhead as u64 || limits.max_attachments == 0 {
            return Err(too_small());
        }
        // Keep one attachment free for a record that rides with the last chunks.
        let max_per_message = (limits.max_attachments.saturating_sub(1)).max(1) as u64;
        let per_message = budget.div_ceil(per_file).clamp(1, max_per_message);
        let sealed = (budget / per_message).min(per_file);
        let plain = sealed - overhead as u64;
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
    /// `Some` to encrypt under this key, `None` for plaintext mode.
    pub key: Option<Key>,
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
            let (buffer, rest) = match self.read_chunk(source.take().expect("source kept")).await {
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
                seal: self.spawn_seal(buffer, index),
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

    async fn read_chunk(&self, mut source: Source) -> Result<(ChunkBuffer, Source), VolumeError> {
        let capacity = self.plan.chunk_len;
        let encrypted = self.key.is_some();
        let read = tokio::task::spawn_blocking(move || {
            let mut buffer = ChunkBuffer::new(capacity, encrypted);
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
        index: u64,
    ) -> JoinHandle<Result<SealedChunk, format::FormatError>> {
        let key = self.key.clone();
        let file = self.file;
        tokio::task::spawn_blocking(move || {
            let sealing = key.as_ref().map_or(Sealing::Plain, Sealing::Encrypted);
            buffer.seal(sealing, file, index)
        })
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
                tag: chunk.tag,
                key: None,
            };
            let attachment = NewAttachment {
                filename,
                data: Bytes::from(chunk.bytes),
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
    let mut failed = Vec::new();
    for &message in messages {
        match store.delete_message(channel, message).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                log::warn!("could not delete message {message} in channel {channel}: {e}");
                failed.push(message);
            }
        }
    }
    failed
}

/// Where a file's chunks are fetched from, and how they are opened. Cheap to clone, so
/// that every chunk fetch can run as its own task.
#[derive(Clone)]
pub struct ChunkFetcher {
    pub store: Arc<dyn Store>,
    pub channel: Id,
    pub key: Option<Key>,
    /// Names the file in error messages (`channel/path`).
    pub name: String,
    pub interrupt: Interrupt,
}

impl ChunkFetcher {
    /// Fetches chunk `index` of `file` and opens it: its plaintext, or an error — never
    /// bytes that didn't authenticate (or match their checksum).
    pub async fn fetch(
        &self,
        file: FileId,
        encrypted: bool,
        index: u64,
        chunk: StoredChunk,
    ) -> Result<Bytes, VolumeError> {
        let data = self
            .store
            .fetch_attachment(
                chunk.channel.unwrap_or(self.channel),
                chunk.message,
                chunk.attachment,
                chunk.len + format::chunk_overhead(encrypted) as u64,
            )
            .await
            .map_err(|e| match e {
                e if e.is_not_found() => VolumeError::ChunkMissing {
                    name: self.name.clone(),
                    index,
                },
                e => VolumeError::Store(e),
            })?;
        // The key that sealed it: ours, or an older one ours carries along.
        let key = match (&self.key, chunk.key) {
            (Some(key), Some(id)) => {
                Some(
                    key.for_id(id)
                        .cloned()
                        .ok_or_else(|| VolumeError::WrongKey {
                            name: self.name.clone(),
                            written: id,
                            have: key.id(),
                        })?,
                )
            }
            (key, _) => key.clone(),
        };
        let reference = ChunkRef::from(&chunk);
        let opened = tokio::task::spawn_blocking(move || {
            format::open_chunk(
                key.as_ref(),
                file,
                encrypted,
                index,
                &reference,
                Vec::from(data),
            )
        })
        .await;
        joined(opened)?.map_err(|source| VolumeError::Chunk {
            name: self.name.clone(),
            source,
        })
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
        let (id, encrypted) = (file.id, file.encrypted);
        let mut chunks = futures::stream::iter(file.chunks.iter().cloned().enumerate())
            .map(|(index, chunk)| {
                let fetcher = self.clone();
                tokio::spawn(async move { fetcher.fetch(id, encrypted, index as u64, chunk).await })
            })
            .buffered(parallel.max(1));
        let write_error = |source| VolumeError::Io {
            context: format!("writing {}", self.name),
            source,
        };
        while let Some(chunk) = chunks.next().await {
            self.interrupt.check()?;
            let data = joined(chunk)??;
            let len = data.len() as u64;
            sink.write(data).await.map_err(write_error)?;
            if let Some(progress) = &progress {
                progress.advance(len);
            }
        }
        sink.flush().await.map_err(write_error)
    }
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
    async fn write(&mut self, data: Bytes) -> std::io::Result<()> {
        match self {
            Sink::Writer(writer) => writer.write_all(&data).await,
            Sink::File(file) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || (&*file).write_all(&data))
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
    use crate::format::CHUNK_OVERHEAD;

    #[test]
    fn discord_defaults_pack_three_8_mib_chunks_per_message() {
        let plan = ChunkPlan::new(&Limits::default(), CHUNK_OVERHEAD).unwrap();
        assert_eq!(
            plan,
            ChunkPlan {
                chunk_len: 8 * 1024 * 1024,
                chunks_per_message: 3
            }
        );
        let sealed = (plan.chunk_len + CHUNK_OVERHEAD) as u64;
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
        let plan = ChunkPlan::new(&boosted, CHUNK_OVERHEAD).unwrap();
        assert_eq!(plan.chunks_per_message, 1);
        assert!((plan.chunk_len + CHUNK_OVERHEAD) as u64 <= boosted.max_file_size);

        let tiny = Limits {
            max_file_size: 1000,
            max_attachments: 3,
            max_request_size: 2500,
            max_content_chars: 2000,
        };
        let plan = ChunkPlan::new(&tiny, CHUNK_OVERHEAD).unwrap();
        assert!(plan.chunks_per_message <= 2);
        assert!((plan.chunk_len + CHUNK_OVERHEAD) as u64 <= tiny.max_file_size);
        assert!(
            plan.chunks_per_message as u64 * (plan.chunk_len + CHUNK_OVERHEAD) as u64
                <= tiny.max_request_size
        );

        let useless = Limits {
            max_file_size: 10,
            ..tiny
        };
        assert!(ChunkPlan::new(&useless, CHUNK_OVERHEAD).is_err());
    }
}
