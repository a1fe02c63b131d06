//! Decrypted blocks in memory, bounded by bytes, shared by every reader.
//!
//! A block is 64 KiB of a chunk's plaintext (a segment of a segmented chunk; a chunk
//! that opens only whole is cut the same way). Reads through the mount are served from
//! blocks, so a 4 KiB read costs one block, and re-reading or reading on is served from
//! memory. The cache is an LRU (the `lru` crate) bounded by the bytes it holds.
//!
//! Blocks are fetched in *runs*: consecutive blocks of one chunk, fetched and opened by
//! one task (one ranged request to the store). While a run is under way its blocks are
//! *pending*: a second reader of any of them (the kernel's own read-ahead, another
//! process, our prefetch) waits for that run instead of starting another. A run is a
//! task of its own, so a prefetch goes on with nobody waiting for it.
//!
//! Keys name the chunk's attachment as well as its file id and index: a new version of
//! a file keeps its file id and the chunks it didn't change, so only the attachment
//! tells a kept chunk from a changed one, and a changed file never hits a stale entry.
//!
//! Blocks of one run are views of one buffer, so the buffer is freed only when all of
//! them are gone; the bytes counted are the blocks' own, which is what the buffers hold
//! less the 16-byte tags between segments.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use lru::LruCache;

use crate::format::FileId;
use crate::store::Id;
use crate::volume::VolumeError;
use crate::volume::transfer::Blocks;

/// One block of one chunk of one file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockId {
    pub file: FileId,
    pub chunk: u64,
    /// The attachment holding the sealed chunk.
    pub attachment: Id,
    pub block: u64,
}

impl BlockId {
    /// The same chunk's block `block`.
    fn with_block(self, block: u64) -> BlockId {
        BlockId { block, ..self }
    }
}

/// What a run gives every reader waiting for it.
type RunResult = Result<Arc<Blocks>, Arc<VolumeError>>;
type PendingRun = Shared<BoxFuture<'static, RunResult>>;

struct Inner {
    blocks: LruCache<BlockId, Bytes>,
    bytes: u64,
    pending: HashMap<BlockId, PendingRun>,
}

/// The cache. Share it behind an `Arc`.
pub struct BlockCache {
    inner: Mutex<Inner>,
    capacity: u64,
}

/// Fetches blocks `range` of a chunk (it may return more: a chunk that opens only
/// whole comes back whole).
pub type FetchRun = BoxFuture<'static, Result<Blocks, VolumeError>>;

/// What starts a [`FetchRun`] for a range of blocks.
pub type RunFetcher<'a> = dyn Fn(Range<u64>) -> FetchRun + Sync + 'a;

impl BlockCache {
    /// A cache holding at most `capacity` bytes of blocks.
    pub fn new(capacity: u64) -> BlockCache {
        BlockCache {
            inner: Mutex::new(Inner {
                blocks: LruCache::unbounded(),
                bytes: 0,
                pending: HashMap::new(),
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The block, if it is cached (and marks it recently used).
    pub fn get(&self, id: &BlockId) -> Option<Bytes> {
        self.lock().blocks.get(id).cloned()
    }

    /// Whether the block is cached or being fetched.
    pub fn has_or_pending(&self, id: &BlockId) -> bool {
        let inner = self.lock();
        inner.blocks.contains(id) || inner.pending.contains_key(id)
    }

    /// Caches a block, evicting the least recently used ones to stay within capacity.
    /// A block larger than the whole cache is not kept.
    pub fn insert(&self, id: BlockId, data: Bytes) {
        let mut inner = self.lock();
        Self::insert_locked(&mut inner, self.capacity, id, data);
    }

    fn insert_locked(inner: &mut Inner, capacity: u64, id: BlockId, data: Bytes) {
        let len = data.len() as u64;
        if len > capacity {
            return;
        }
        if let Some(old) = inner.blocks.put(id, data) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += len;
        while inner.bytes > capacity {
            match inner.blocks.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.len() as u64,
                None => break,
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Starts fetching the blocks of `blocks` (of the chunk `chunk` names) that are
    /// neither cached nor pending, one run per stretch of them (at most
    /// [`MAX_RUN_BLOCKS`] each), each as its own task.
    /// `whole` says the chunk opens only whole: then any missing block fetches the
    /// chunk, and all its blocks are pending meanwhile.
    pub fn start(
        self: &Arc<Self>,
        chunk: BlockId,
        blocks: Range<u64>,
        whole: Option<Range<u64>>,
        fetch: &RunFetcher<'_>,
    ) {
        let runs = {
            let inner = self.lock();
            let missing = |b: &u64| {
                let id = chunk.with_block(*b);
                !inner.blocks.contains(&id) && !inner.pending.contains_key(&id)
            };
            match &whole {
                Some(all) if blocks.clone().any(|b| missing(&b)) => vec![all.clone()],
                Some(_) => Vec::new(),
                None => stretches(blocks, missing)
                    .into_iter()
                    .flat_map(|run| pieces(run, MAX_RUN_BLOCKS))
                    .collect(),
            }
        };
        for run in runs {
            self.start_run(chunk, run.clone(), fetch(run));
        }
    }

    /// Registers blocks `run` as pending on a task that fetches them.
    fn start_run(self: &Arc<Self>, chunk: BlockId, run: Range<u64>, fetch: FetchRun) {
        let cache = Arc::clone(self);
        let fetched = run.clone();
        let task = tokio::spawn(async move {
            let result = fetch.await.map(Arc::new).map_err(Arc::new);
            cache.finish(chunk, fetched, &result);
            result
        });
        let shared = async move {
            task.await.unwrap_or_else(|e| {
                Err(Arc::new(VolumeError::Internal(format!(
                    "a read task failed: {e}"
                ))))
            })
        }
        .boxed()
        .shared();
        let mut inner = self.lock();
        for block in run.clone() {
            inner
                .pending
                .entry(chunk.with_block(block))
                .or_insert_with(|| shared.clone());
        }
    }

    /// Ends a run: its blocks are cached (if it succeeded) and no longer pending.
    fn finish(&self, chunk: BlockId, run: Range<u64>, result: &RunResult) {
        let mut inner = self.lock();
        for block in run.clone() {
            inner.pending.remove(&chunk.with_block(block));
        }
        if let Ok(blocks) = result {
            for (at, data) in blocks.blocks.iter().enumerate() {
                let id = chunk.with_block(blocks.first + at as u64);
                Self::insert_locked(&mut inner, self.capacity, id, data.clone());
            }
        }
    }

    /// Block `id`: cached, from the run fetching it, or (neither: it was evicted since
    /// it was asked for) from a run of its own started now with `fetch`.
    pub async fn block(
        self: &Arc<Self>,
        id: BlockId,
        whole: Option<Range<u64>>,
        fetch: &RunFetcher<'_>,
    ) -> Result<Bytes, Arc<VolumeError>> {
        for _ in 0..3 {
            let pending = {
                let mut inner = self.lock();
                if let Some(data) = inner.blocks.get(&id) {
                    return Ok(data.clone());
                }
                inner.pending.get(&id).cloned()
            };
            let Some(pending) = pending else {
                self.start(id, id.block..id.block + 1, whole.clone(), fetch);
                continue;
            };
            let blocks = pending.await?;
            if let Some(data) = id
                .block
                .checked_sub(blocks.first)
                .and_then(|at| blocks.blocks.get(at as usize))
            {
                return Ok(data.clone());
            }
        }
        Err(Arc::new(VolumeError::Internal(format!(
            "block {} of chunk {} could not be fetched",
            id.block, id.chunk
        ))))
    }
}

/// Most blocks one run fetches (2 MiB): a long stretch is fetched as several runs at
/// once, so that opening them spreads over the cores and the first blocks are there
/// before the last ones have arrived.
pub const MAX_RUN_BLOCKS: u64 = 32;

/// `run` cut into pieces of at most `most` values.
fn pieces(run: Range<u64>, most: u64) -> impl Iterator<Item = Range<u64>> {
    (run.start..run.end)
        .step_by(most as usize)
        .map(move |start| start..(start + most).min(run.end))
}

/// The stretches of consecutive values in `range` for which `wanted` holds.
fn stretches(range: Range<u64>, wanted: impl Fn(&u64) -> bool) -> Vec<Range<u64>> {
    let mut runs: Vec<Range<u64>> = Vec::new();
    for value in range {
        if !wanted(&value) {
            continue;
        }
        match runs.last_mut() {
            Some(last) if last.end == value => last.end += 1,
            _ => runs.push(value..value + 1),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn id(block: u64) -> BlockId {
        BlockId {
            file: FileId([1; 16]),
            chunk: 0,
            attachment: 100,
            block,
        }
    }

    #[test]
    fn the_cache_stays_within_its_bytes() {
        let cache = BlockCache::new(100);
        cache.insert(id(0), Bytes::from(vec![0; 40]));
        cache.insert(id(1), Bytes::from(vec![1; 40]));
        assert!(cache.get(&id(0)).is_some()); // 0 is now the most recently used
        cache.insert(id(2), Bytes::from(vec![2; 40]));
        assert!(cache.get(&id(1)).is_none(), "the least recently used went");
        assert!(cache.get(&id(0)).is_some() && cache.get(&id(2)).is_some());
        assert_eq!(cache.bytes(), 80);
        cache.insert(id(3), Bytes::from(vec![3; 101]));
        assert!(
            cache.get(&id(3)).is_none(),
            "larger than the cache: not kept"
        );
        assert_eq!(cache.bytes(), 80);
    }

    /// A fetch that counts its calls and returns block `b` as the byte `b` eight times.
    fn counting(fetches: Arc<AtomicUsize>) -> impl Fn(Range<u64>) -> FetchRun {
        move |run: Range<u64>| {
            let fetches = fetches.clone();
            async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(Blocks {
                    first: run.start,
                    blocks: run.map(|b| Bytes::from(vec![b as u8; 8])).collect(),
                })
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn concurrent_readers_share_one_run() {
        let cache = Arc::new(BlockCache::new(1 << 20));
        let fetches = Arc::new(AtomicUsize::new(0));
        let fetch = counting(fetches.clone());
        cache.start(id(0), 0..4, None, &fetch);
        let (a, b) = tokio::join!(
            cache.block(id(1), None, &fetch),
            cache.block(id(3), None, &fetch)
        );
        assert_eq!(a.unwrap(), vec![1u8; 8]);
        assert_eq!(b.unwrap(), vec![3u8; 8]);
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "one run for all four");
        // Cached now; a start over them fetches nothing, one past them fetches one.
        cache.start(id(0), 0..5, None, &fetch);
        cache.block(id(4), None, &fetch).await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_chunk_that_opens_only_whole_is_one_run() {
        let cache = Arc::new(BlockCache::new(1 << 20));
        let fetches = Arc::new(AtomicUsize::new(0));
        let fetch = counting(fetches.clone());
        let got = cache.block(id(2), Some(0..6), &fetch).await.unwrap();
        assert_eq!(got, vec![2u8; 8]);
        for b in 0..6 {
            assert!(cache.get(&id(b)).is_some());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_run_is_not_cached() {
        let cache = Arc::new(BlockCache::new(1 << 20));
        let fail = |_: Range<u64>| -> FetchRun {
            async { Err(VolumeError::Internal("down".into())) }.boxed()
        };
        assert!(cache.block(id(0), None, &fail).await.is_err());
        assert!(!cache.has_or_pending(&id(0)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let ok = cache.block(id(0), None, &counting(fetches)).await;
        assert_eq!(ok.unwrap(), vec![0u8; 8]);
    }

    #[test]
    fn long_runs_are_cut_into_pieces() {
        assert_eq!(
            pieces(3..10, 3).collect::<Vec<_>>(),
            vec![3..6, 6..9, 9..10]
        );
        assert_eq!(pieces(0..2, 32).collect::<Vec<_>>(), vec![0..2]);
    }

    #[test]
    fn stretches_of_missing_blocks() {
        let missing = [1u64, 2, 4, 7, 8, 9];
        assert_eq!(
            stretches(0..10, |b| missing.contains(b)),
            vec![1..3, 4..5, 7..10]
        );
    }
}
