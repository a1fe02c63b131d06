//! The filesystem core's read path, driven directly (no kernel): reads at any offset
//! return exactly the file's bytes, only the blocks a read covers are fetched, a reader
//! that goes on sequentially (or says it will) gets a read-ahead window that a seek
//! closes again, and a damaged chunk fails the reads that need it — and only those.
//!
//! Runs on the local store with tiny limits (4 KiB attachments), so that a file of
//! 50 KiB has a dozen chunks.

#[path = "common/data.rs"]
mod data;

use data::random_bytes;

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use dcloud_fs::crypto::Key;
use dcloud_fs::fs::cache::BlockCache;
use dcloud_fs::fs::read::FileReader;
use dcloud_fs::store::local::LocalStore;
use dcloud_fs::store::{Limits, Store};
use dcloud_fs::volume::disk_cache::{DiskCache, DiskCacheConfig};
use dcloud_fs::volume::{PutOptions, PutSource, Volume, VolumeConfig, find_channel};

const LIMITS: Limits = Limits {
    max_file_size: 4096,
    max_attachments: 4,
    max_request_size: 10_000,
    max_content_chars: 2000,
};

/// Chunks of about 32 KiB, so that a file of a few chunks' worth of records reaches
/// past the streak that opens the read-ahead window.
const CHUNKS_OF_32_KIB: Limits = Limits {
    max_file_size: 32 * 1024,
    max_request_size: 100_000,
    ..LIMITS
};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<LocalStore>,
    volume: Volume,
}

async fn fixture_with(data: &[u8]) -> Fixture {
    fixture_limited(data, LIMITS).await
}

async fn fixture_limited(data: &[u8], limits: Limits) -> Fixture {
    fixture_cached(data, limits, None).await
}

/// The fixture, with `disk_cache` under its volume.
async fn fixture_cached(
    data: &[u8],
    limits: Limits,
    disk_cache: Option<Arc<DiskCache>>,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open_or_create(&dir.path().join("store"), limits).unwrap());
    store.create_channel("files").await.unwrap();
    let channel = find_channel(store.as_ref(), "files").await.unwrap();
    let config = VolumeConfig {
        cache_dir: None,
        // Freed at once: these tests count what is left.
        free_grace: std::time::Duration::ZERO,
        disk_cache,
        ..VolumeConfig::default()
    };
    let volume = Volume::open(
        store.clone(),
        channel,
        Some(Key::generate().unwrap()),
        config,
    )
    .await
    .unwrap();
    let options = PutOptions {
        mtime_ns: 0,
        mode: 0o644,
        encrypted: true,
        owner: None,
        atime_ns: None,
    };
    let source = PutSource::Stream(Box::new(Cursor::new(data.to_vec())));
    volume.put("f", source, "f", options, None).await.unwrap();
    Fixture {
        _dir: dir,
        store,
        volume,
    }
}

impl Fixture {
    fn reader(&self, cache: &Arc<BlockCache>, read_ahead: u64) -> FileReader {
        FileReader::new(
            Arc::new(self.volume.file("f").unwrap()),
            self.volume.fetcher("f"),
            cache.clone(),
            read_ahead,
        )
    }
}

#[tokio::test]
async fn reads_at_any_offset_return_the_files_bytes() {
    let data = random_bytes(50_000, 1);
    let fx = fixture_with(&data).await;
    let cache = Arc::new(BlockCache::new(1 << 20));
    let reader = fx.reader(&cache, 0);
    assert_eq!(reader.size(), data.len() as u64);
    let mut state = 7u64;
    for _ in 0..300 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (state >> 33) % (data.len() as u64 + 100);
        let size = ((state >> 13) % 20_000) as u32;
        let got = reader.read(offset, size).await.unwrap();
        let from = (offset as usize).min(data.len());
        let to = (from + size as usize).min(data.len());
        assert_eq!(got, data[from..to], "read({offset}, {size})");
    }
    assert!(reader.read(0, 0).await.unwrap().is_empty());
}

/// Waits for the fetches under way to land in the cache, and returns its bytes.
async fn settled(cache: &BlockCache) -> u64 {
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = cache.bytes();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn only_the_blocks_a_read_covers_are_fetched_until_reading_goes_on() {
    let limits = CHUNKS_OF_32_KIB;
    let data = random_bytes(1_200_000, 2);
    let fx = fixture_limited(&data, limits).await;
    let chunk_len = fx.volume.file("f").unwrap().chunks[0].len;
    // A read in the middle, not sequential: only its chunk (one block: chunks are
    // smaller than a block here).
    let cache = Arc::new(BlockCache::new(8 << 20));
    let reader = fx.reader(&cache, 4);
    reader.read(5 * chunk_len + 10, 100).await.unwrap();
    assert_eq!(settled(&cache).await, chunk_len);
    // The first 64 KiB, in small sequential reads (a file manager's peek): only them.
    let cache = Arc::new(BlockCache::new(8 << 20));
    let reader = fx.reader(&cache, 4);
    let peek = 64 * 1024;
    for offset in (0..peek).step_by(4096) {
        reader.read(offset, 4096).await.unwrap();
    }
    assert_eq!(settled(&cache).await, peek.div_ceil(chunk_len) * chunk_len);
    // Reading on past the streak: the window opens, and chunks arrive ahead of the
    // reader, at most four (its read-ahead) past it.
    let streak = dcloud_fs::fs::read::STREAK_BEFORE_READ_AHEAD;
    for offset in (peek..streak + peek).step_by(4096) {
        reader.read(offset, 4096).await.unwrap();
    }
    let read = (streak + peek).div_ceil(chunk_len) * chunk_len;
    let held = settled(&cache).await;
    assert!(held > read, "read ahead: {held} held, {read} read");
    assert!(held <= read + 5 * chunk_len, "{held} held, {read} read");
    // A seek closes it: a read elsewhere fetches only its chunk.
    let before = settled(&cache).await;
    reader.read(30 * chunk_len, 10).await.unwrap();
    assert_eq!(settled(&cache).await, before + chunk_len);
}

#[tokio::test]
async fn a_download_has_its_window_full_from_the_first_read_and_leaves_the_disk_cache_alone() {
    let limits = CHUNKS_OF_32_KIB;
    let data = random_bytes(1_200_000, 4);
    let disk_dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(
        DiskCache::open(DiskCacheConfig {
            dir: disk_dir.path().join("blocks"),
            capacity_bytes: 64 << 20,
        })
        .unwrap(),
    );
    let fx = fixture_cached(&data, limits, Some(disk.clone())).await;
    let chunk_len = fx.volume.file("f").unwrap().chunks[0].len;
    let cache = Arc::new(BlockCache::new(8 << 20));
    let reader = fx.reader(&cache, 4);
    reader.advise_download(2 * chunk_len);
    let got = reader.read(2 * chunk_len, 100).await.unwrap();
    assert_eq!(got, data[2 * chunk_len as usize..][..100]);
    // Its own chunk and the four after it, all asked for at the first read.
    assert_eq!(settled(&cache).await, 5 * chunk_len);
    // A seek closes the window as for any reader.
    reader.read(30 * chunk_len, 10).await.unwrap();
    assert_eq!(settled(&cache).await, 6 * chunk_len);
    // Nothing it fetched went to disk (the downloader keeps the copy, as with `get`)...
    assert_eq!(disk.bytes(), 0);
    // ...while a reader that wasn't told fills the disk cache.
    let other = fx.reader(&Arc::new(BlockCache::new(8 << 20)), 0);
    assert_eq!(other.read(0, 100).await.unwrap(), data[..100]);
    assert!(disk.bytes() > 0);
}

#[tokio::test]
async fn a_damaged_chunk_fails_only_the_reads_that_need_it() {
    let data = random_bytes(50_000, 3);
    let fx = fixture_with(&data).await;
    let file = fx.volume.file("f").unwrap();
    let damaged = &file.chunks[3];
    let path = fx
        .store
        .attachment_path(fx.volume.channel().id, damaged.attachment);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let cache = Arc::new(BlockCache::new(1 << 20));
    let reader = fx.reader(&cache, 0);
    let chunk_len = file.chunks[0].len;
    assert!(reader.read(3 * chunk_len, 10).await.is_err());
    assert!(
        reader
            .read(2 * chunk_len, (2 * chunk_len) as u32)
            .await
            .is_err()
    );
    let before = reader.read(0, (3 * chunk_len) as u32).await.unwrap();
    assert_eq!(before, data[..3 * chunk_len as usize]);
    let after = reader.read(4 * chunk_len, 1000).await.unwrap();
    assert_eq!(
        after,
        data[4 * chunk_len as usize..4 * chunk_len as usize + 1000]
    );
}
