//! Decrypted chunks in memory, bounded by bytes, shared by every reader.
//!
//! Reading through the mount fetches whole chunks (up to 8 MiB each on Discord's
//! defaults) to serve reads of a few KiB, so the chunks are kept: re-reading and
//! reading the rest of a chunk are served from memory. The cache is an LRU (the `lru`
//! crate) bounded by the bytes it holds, not by entry count, because chunk sizes vary.
//!
//! A chunk being fetched is *pending*: a second reader of it (the kernel's own
//! read-ahead, another process, our prefetch) waits for the same fetch instead of
//! starting another. Keys name the chunk's attachment as well as its file id and index:
//! a new version of a file keeps its file id and the chunks it didn't change, so only
//! the attachment tells a kept chunk from a changed one, and a changed file never hits
//! a stale entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use lru::LruCache;

use crate::format::FileId;
use crate::store::Id;
use crate::volume::VolumeError;

/// One chunk of one file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    pub file: FileId,
    pub index: u64,
    /// The attachment holding the sealed chunk.
    pub attachment: Id,
}

/// What a fetch gives every reader waiting for it.
pub type Fetched = Result<Bytes, Arc<VolumeError>>;

type PendingFetch = Shared<BoxFuture<'static, Fetched>>;

struct Inner {
    chunks: LruCache<ChunkKey, Bytes>,
    bytes: u64,
    pending: HashMap<ChunkKey, PendingFetch>,
}

/// The cache. Share it behind an `Arc`.
pub struct ChunkCache {
    inner: Mutex<Inner>,
    capacity: u64,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes of chunks.
    pub fn new(capacity: u64) -> ChunkCache {
        ChunkCache {
            inner: Mutex::new(Inner {
                chunks: LruCache::unbounded(),
                bytes: 0,
                pending: HashMap::new(),
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunk, if it is cached (and marks it recently used).
    pub fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        self.lock().chunks.get(key).cloned()
    }

    /// Whether the chunk is cached or being fetched.
    pub fn has_or_pending(&self, key: &ChunkKey) -> bool {
        let inner = self.lock();
        inner.chunks.contains(key) || inner.pending.contains_key(key)
    }

    /// Caches a chunk, evicting the least recently used ones to stay within capacity.
    /// A chunk larger than the whole cache is not kept.
    pub fn insert(&self, key: ChunkKey, data: Bytes) {
        let len = data.len() as u64;
        if len > self.capacity {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.chunks.put(key, data) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += len;
        while inner.bytes > self.capacity {
            match inner.chunks.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.len() as u64,
                None => break,
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// The chunk from the cache, else from `fetch` — joining a fetch of the same chunk
    /// already under way rather than starting a second one.
    pub async fn get_or_fetch(
        self: &Arc<Self>,
        key: ChunkKey,
        fetch: impl FnOnce() -> BoxFuture<'static, Result<Bytes, VolumeError>>,
    ) -> Fetched {
        let pending = {
            let mut inner = self.lock();
            if let Some(data) = inner.chunks.get(&key) {
                return Ok(data.clone());
            }
            match inner.pending.get(&key) {
                Some(pending) => pending.clone(),
                None => {
                    let cache = Arc::clone(self);
                    let fetching = fetch();
                    let shared = async move {
                        let result = fetching.await.map_err(Arc::new);
                        cache.finish(key, &result);
                        result
                    }
                    .boxed()
                    .shared();
                    inner.pending.insert(key, shared.clone());
                    shared
                }
            }
        };
        pending.await
    }

    /// Ends a fetch: its chunk is cached (if it succeeded) and no longer pending.
    fn finish(&self, key: ChunkKey, result: &Fetched) {
        self.lock().pending.remove(&key);
        if let Ok(data) = result {
            self.insert(key, data.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn key(index: u64) -> ChunkKey {
        ChunkKey {
            file: FileId([1; 16]),
            index,
            attachment: 100 + index,
        }
    }

    #[test]
    fn the_cache_stays_within_its_bytes() {
        let cache = ChunkCache::new(100);
        cache.insert(key(0), Bytes::from(vec![0; 40]));
        cache.insert(key(1), Bytes::from(vec![1; 40]));
        assert!(cache.get(&key(0)).is_some()); // 0 is now the most recently used
        cache.insert(key(2), Bytes::from(vec![2; 40]));
        assert!(cache.get(&key(1)).is_none(), "the least recently used went");
        assert!(cache.get(&key(0)).is_some() && cache.get(&key(2)).is_some());
        assert_eq!(cache.bytes(), 80);
        cache.insert(key(3), Bytes::from(vec![3; 101]));
        assert!(
            cache.get(&key(3)).is_none(),
            "larger than the cache: not kept"
        );
        assert_eq!(cache.bytes(), 80);
    }

    #[tokio::test]
    async fn concurrent_readers_share_one_fetch() {
        let cache = Arc::new(ChunkCache::new(1 << 20));
        let fetches = Arc::new(AtomicUsize::new(0));
        let fetch = || {
            let fetches = fetches.clone();
            move || {
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    Ok(Bytes::from_static(b"chunk"))
                }
                .boxed()
            }
        };
        let (a, b) = tokio::join!(
            cache.get_or_fetch(key(0), fetch()),
            cache.get_or_fetch(key(0), fetch())
        );
        assert_eq!(a.unwrap(), "chunk");
        assert_eq!(b.unwrap(), "chunk");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // Cached now: no fetch at all.
        cache.get_or_fetch(key(0), fetch()).await.unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_fetch_is_not_cached() {
        let cache = Arc::new(ChunkCache::new(1 << 20));
        let failed = cache
            .get_or_fetch(key(0), || {
                async { Err(VolumeError::Internal("down".into())) }.boxed()
            })
            .await;
        assert!(failed.is_err());
        assert!(!cache.has_or_pending(&key(0)));
        let ok = cache
            .get_or_fetch(key(0), || async { Ok(Bytes::from_static(b"x")) }.boxed())
            .await;
        assert_eq!(ok.unwrap(), "x");
    }
}
