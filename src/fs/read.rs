//! Reading a file version at any offset: only the chunks that cover the range are
//! fetched, through the shared [`ChunkCache`]; a reader that goes sequentially gets the
//! next chunks fetched ahead, in parallel, while it consumes the current one.
//!
//! A [`FileReader`] is made per open file handle from the file's entry as it was at
//! open, so a file replaced by another writer meanwhile keeps serving the version that
//! was opened: the reader pins that version's messages ([`crate::volume::reclaim`]), so
//! this mount frees them only once it is closed. (Another machine may still delete
//! them; then the read fails with EIO instead of mixing versions.) A chunk that can't be
//! fetched or doesn't authenticate fails the read; it never yields other bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::FutureExt;

use super::cache::{ChunkCache, ChunkKey, Fetched};
use crate::volume::FileEntry;
use crate::volume::PinGuard;
use crate::volume::transfer::ChunkFetcher;

/// Reads one file version.
pub struct FileReader {
    entry: Arc<FileEntry>,
    /// Where each chunk starts in the file; one more entry for the end.
    starts: Vec<u64>,
    fetcher: ChunkFetcher,
    cache: Arc<ChunkCache>,
    /// Chunks to fetch ahead of a sequential reader.
    read_ahead: u64,
    /// Where the last read ended: a read starting there is sequential.
    last_end: AtomicU64,
    /// Keeps the version's messages from being freed while it is open
    /// ([`crate::volume::reclaim`]).
    _pin: Option<PinGuard>,
}

impl FileReader {
    pub fn new(
        entry: Arc<FileEntry>,
        fetcher: ChunkFetcher,
        cache: Arc<ChunkCache>,
        read_ahead: u64,
    ) -> FileReader {
        let mut starts = Vec::with_capacity(entry.chunks.len() + 1);
        let mut offset = 0;
        starts.push(0);
        for chunk in &entry.chunks {
            offset += chunk.len;
            starts.push(offset);
        }
        FileReader {
            entry,
            starts,
            fetcher,
            cache,
            read_ahead,
            last_end: AtomicU64::new(u64::MAX),
            _pin: None,
        }
    }

    /// The reader, holding `pin` (the version's messages,
    /// [`crate::volume::Volume::pin_messages`]) for as long as it lives.
    pub fn pinned(self, pin: Option<PinGuard>) -> FileReader {
        FileReader { _pin: pin, ..self }
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
        let first = self.chunk_at(offset);
        let last = self.chunk_at(end - 1);
        let sequential = self.last_end.swap(end, Ordering::Relaxed) == offset || offset == 0;
        if sequential {
            self.prefetch(last as u64 + 1, self.read_ahead);
        }
        let fetches = (first..=last).map(|index| self.chunk(index as u64));
        let chunks: Vec<Fetched> = futures::future::join_all(fetches).await;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (index, chunk) in (first..=last).zip(chunks) {
            let chunk = chunk?;
            let start = self.starts[index];
            let from = offset.saturating_sub(start) as usize;
            let to = ((end - start) as usize).min(chunk.len());
            out.extend_from_slice(&chunk[from..to]);
        }
        Ok(out)
    }

    /// The cache key of chunk `index` (in range).
    fn key(&self, index: u64) -> ChunkKey {
        ChunkKey {
            file: self.entry.id,
            index,
            attachment: self.entry.chunks[index as usize].attachment,
        }
    }

    /// One chunk, from the cache or fetched.
    async fn chunk(&self, index: u64) -> Fetched {
        let key = self.key(index);
        self.cache
            .get_or_fetch(key, || self.fetch_future(index))
            .await
    }

    fn fetch_future(
        &self,
        index: u64,
    ) -> futures::future::BoxFuture<'static, Result<Bytes, crate::volume::VolumeError>> {
        let fetcher = self.fetcher.clone();
        let entry = self.entry.clone();
        async move {
            let chunk = entry.chunks[index as usize].clone();
            fetcher.fetch(entry.id, entry.encrypted, index, chunk).await
        }
        .boxed()
    }

    /// Starts fetching `count` chunks from `first` into the cache, in the background.
    pub fn prefetch(&self, first: u64, count: u64) {
        let total = self.entry.chunks.len() as u64;
        for index in first..first.saturating_add(count).min(total) {
            let key = self.key(index);
            if self.cache.has_or_pending(&key) {
                continue;
            }
            let cache = self.cache.clone();
            let fetch = self.fetch_future(index);
            tokio::spawn(async move {
                if let Err(e) = cache.get_or_fetch(key, || fetch).await {
                    log::debug!("read-ahead of chunk {index} failed: {e}");
                }
            });
        }
    }
}
