//! Reading a file version at any offset: only the 64 KiB blocks that cover the range are
//! fetched (a ranged fetch of those segments, for segmented chunks), through the shared
//! [`BlockCache`], and a reader that goes on sequentially gets a read-ahead window that
//! grows with it.
//!
//! ## Read-ahead
//!
//! Modelled on mountpoint-s3's prefetcher: the window starts at nothing, so the first
//! read of a file fetches only the blocks it covers (the kernel's own read-ahead, at
//! most 1 MiB and 128 KiB for a first small read, is the small window after it: a file
//! manager reading the first KiB of each file for thumbnails costs a block or two per
//! file, not a chunk). Once a reader has gone [`STREAK_BEFORE_READ_AHEAD`] bytes
//! sequentially, the window opens at that size and doubles on each sequential read, up
//! to `read_ahead_chunks` chunks, fetched as one run per chunk, in parallel; it ends
//! at the end of a chunk, so each run is a whole chunk. A read anywhere else (a seek)
//! closes it again. A caller that knows it downloads to the end (a whole-file download
//! through `serve`) says so with [`FileReader::advise_download`]: the window opens at
//! its widest from the first read, and, as for `get`, the disk cache isn't filled.
//! New fetches start as soon as a chunk's worth of the window (half
//! of a window smaller than a chunk) is not yet asked for, so the window stays full (as
//! many chunks in flight as `get` keeps) and a sequential reader costs a few large
//! requests (whole chunks, at full speed), not one per read.
//!
//! A [`FileReader`] is made per open file handle from the file's entry as it was at
//! open, so a file replaced by another writer meanwhile keeps serving the version that
//! was opened: the reader pins that version's messages ([`crate::volume::reclaim`]), so
//! this mount frees them only once it is closed. (Another machine may still delete
//! them; then the read fails with EIO instead of mixing versions.) A block that can't
//! be fetched or doesn't authenticate fails the read; it never yields other bytes.

use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;

use super::cache::{BlockCache, BlockId, FetchRun};
use crate::format::{self, ChunkKind, SEGMENT_LEN};
use crate::volume::FileEntry;
use crate::volume::PinGuard;
use crate::volume::transfer::{ChunkFetcher, FileSeal};

/// Sequential bytes a reader must have read before read-ahead starts: past what the
/// kernel's own read-ahead asks for at the start of a file.
pub const STREAK_BEFORE_READ_AHEAD: u64 = 256 * 1024;

const BLOCK: u64 = SEGMENT_LEN as u64;

/// Where a reader is, for read-ahead.
#[derive(Debug, Default)]
struct Stream {
    /// Where the last read ended.
    last_end: u64,
    /// Bytes read sequentially up to `last_end`.
    streak: u64,
    /// The read-ahead window, in bytes (0: closed).
    window: u64,
    /// How far read-ahead has been asked for.
    requested_end: u64,
    /// The caller said it downloads on to the end ([`FileReader::advise_download`]):
    /// the window opens at its widest on the first sequential read.
    told_sequential: bool,
}

/// Reads one file version.
pub struct FileReader {
    entry: Arc<FileEntry>,
    /// Where each chunk starts in the file; one more entry for the end.
    starts: Vec<u64>,
    fetcher: ChunkFetcher,
    cache: Arc<BlockCache>,
    /// The widest read-ahead window, in bytes.
    max_window: u64,
    /// The length of a chunk (the first's; the last may be shorter).
    chunk_len: u64,
    stream: Mutex<Stream>,
    /// Whether fetched blocks go into the disk cache (not once
    /// [`FileReader::advise_download`] said so).
    fill_disk_cache: AtomicBool,
    /// Keeps the version's messages from being freed while it is open
    /// ([`crate::volume::reclaim`]).
    _pin: Option<PinGuard>,
}

impl FileReader {
    /// A reader of `entry` whose read-ahead reaches at most `read_ahead_chunks` chunks.
    pub fn new(
        entry: Arc<FileEntry>,
        fetcher: ChunkFetcher,
        cache: Arc<BlockCache>,
        read_ahead_chunks: u64,
    ) -> FileReader {
        let mut starts = Vec::with_capacity(entry.chunks.len() + 1);
        let mut offset = 0;
        starts.push(0);
        for chunk in &entry.chunks {
            offset += chunk.len;
            starts.push(offset);
        }
        let chunk_len = entry.chunks.first().map_or(0, |c| c.len);
        FileReader {
            entry,
            starts,
            fetcher,
            cache,
            max_window: read_ahead_chunks.saturating_mul(chunk_len),
            chunk_len,
            stream: Mutex::new(Stream {
                last_end: u64::MAX,
                ..Stream::default()
            }),
            fill_disk_cache: AtomicBool::new(true),
            _pin: None,
        }
    }

    /// The reader, holding `pin` (the version's messages,
    /// [`crate::volume::Volume::pin_messages`]) for as long as it lives.
    pub fn pinned(self, pin: Option<PinGuard>) -> FileReader {
        FileReader { _pin: pin, ..self }
    }

    /// Told that the caller downloads the file from `offset` to its end, once, and
    /// keeps the copy (as `POSIX_FADV_SEQUENTIAL | POSIX_FADV_NOREUSE`; a whole-file
    /// HTTP download knows it, the kernel never says), the reader does as `get` does:
    /// the read-ahead window opens at its widest at once instead of growing from
    /// nothing, and what it fetches is not written to the disk cache (the client holds
    /// the copy; filling the cache would write every byte twice and push out what is
    /// read again). Blocks already on disk are still read from there. A read elsewhere
    /// (a seek) closes the window as usual.
    pub fn advise_download(&self, offset: u64) {
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        stream.last_end = offset;
        stream.told_sequential = true;
        self.fill_disk_cache.store(false, Ordering::Relaxed);
    }

    /// The version it reads.
    pub fn entry(&self) -> &FileEntry {
        &self.entry
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    /// The chunk holding byte `offset` (which must be below the size).
    fn chunk_at(&self, offset: u64) -> usize {
        // The last start that is <= offset.
        self.starts.partition_point(|&start| start <= offset) - 1
    }

    /// Up to `size` bytes from `offset` (fewer at the end of the file, none past it).
    pub async fn read(
        &self,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Arc<crate::volume::VolumeError>> {
        let end = (offset.saturating_add(u64::from(size))).min(self.size());
        if offset >= end {
            return Ok(Vec::new());
        }
        if let Some(ahead) = self.advance(offset, end) {
            self.start_range(ahead);
        }
        self.start_range(offset..end);
        // A pooled buffer for a large read (the caller gives it back): a new one would
        // be mapped and faulted in on every read.
        let mut out = crate::buffers::take((end - offset) as usize);
        let mut filled = 0;
        for (id, within) in self.blocks_of(offset..end) {
            let block = self
                .cache
                .block(id, self.whole(id.chunk), &|run| {
                    self.fetch_run(id.chunk, run)
                })
                .await?;
            let to = (within.end as usize).min(block.len());
            let from = (within.start as usize).min(to);
            out[filled..filled + (to - from)].copy_from_slice(&block[from..to]);
            filled += to - from;
        }
        out.truncate(filled);
        Ok(out)
    }

    /// Notes a read of `offset..end`; returns the range to read ahead, if any.
    fn advance(&self, offset: u64, end: u64) -> Option<Range<u64>> {
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        let sequential = offset == stream.last_end || (offset == 0 && stream.streak == 0);
        if sequential {
            stream.streak += end - offset;
            stream.window = if stream.told_sequential {
                self.max_window
            } else if stream.window > 0 {
                stream.window.saturating_mul(2)
            } else if stream.streak >= STREAK_BEFORE_READ_AHEAD {
                stream.streak
            } else {
                0
            }
            .min(self.max_window);
        } else {
            stream.streak = end - offset;
            stream.window = 0;
            stream.requested_end = 0;
            stream.told_sequential = false;
        }
        stream.last_end = end;
        if stream.window == 0 {
            return None;
        }
        // Whole chunks: the window reaches to the end of the chunk it ends in.
        let mut target = end.saturating_add(stream.window).min(self.size());
        if target < self.size() {
            target = self.starts[self.chunk_at(target - 1) + 1];
        }
        let from = stream.requested_end.max(end);
        // Asked for again as soon as a chunk's worth (or half a small window) is free,
        // so that the window stays full.
        let step = (stream.window / 2).min(self.chunk_len).max(1);
        if target <= from || target - from < step {
            return None;
        }
        stream.requested_end = target;
        Some(from..target)
    }

    /// The blocks covering `range`, with the part of each that is in it.
    fn blocks_of(&self, range: Range<u64>) -> Vec<(BlockId, Range<u64>)> {
        let mut out = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let chunk = self.chunk_at(at);
            let start = self.starts[chunk];
            let block = (at - start) / BLOCK;
            let block_start = start + block * BLOCK;
            let block_end = (block_start + BLOCK).min(self.starts[chunk + 1]);
            let stop = block_end.min(range.end);
            out.push((
                self.id(chunk as u64, block),
                at - block_start..stop - block_start,
            ));
            at = stop;
        }
        out
    }

    /// Starts fetching the blocks of `range` that are neither cached nor on their way:
    /// a run per chunk.
    fn start_range(&self, range: Range<u64>) {
        if range.start >= range.end {
            return;
        }
        let first = self.chunk_at(range.start);
        let last = self.chunk_at(range.end - 1);
        for chunk in first..=last {
            let start = self.starts[chunk];
            let from = range.start.max(start) - start;
            let to = range.end.min(self.starts[chunk + 1]) - start;
            let blocks = from / BLOCK..to.div_ceil(BLOCK).max(from / BLOCK + 1);
            let index = chunk as u64;
            self.cache
                .start(self.id(index, 0), blocks, self.whole(index), &|run| {
                    self.fetch_run(index, run)
                });
        }
    }

    /// All the blocks of a chunk that opens only whole; `None` for a segmented one.
    fn whole(&self, chunk: u64) -> Option<Range<u64>> {
        let stored = &self.entry.chunks[chunk as usize];
        (stored.kind(self.entry.encrypted) != ChunkKind::Segmented)
            .then(|| 0..format::segment_count(stored.len))
    }

    fn id(&self, chunk: u64, block: u64) -> BlockId {
        BlockId {
            file: self.entry.id,
            chunk,
            attachment: self.entry.chunks[chunk as usize].attachment,
            block,
        }
    }

    fn fetch_run(&self, chunk: u64, run: Range<u64>) -> FetchRun {
        let mut fetcher = self.fetcher.clone();
        fetcher.fill_disk_cache &= self.fill_disk_cache.load(Ordering::Relaxed);
        let entry = self.entry.clone();
        async move {
            let stored = &entry.chunks[chunk as usize];
            fetcher
                .fetch_blocks(FileSeal::of(&entry), chunk, stored, run)
                .await
        }
        .boxed()
    }
}
