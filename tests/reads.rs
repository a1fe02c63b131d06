//! Reads that cost what they read, against the project's fake Discord server: a small
//! read of a big file downloads the segments it covers and no more (counted by the
//! server's CDN), ranged reads stay byte-exact at segment and chunk boundaries and when
//! the CDN answers a Range request with the whole attachment (200), and the disk cache
//! makes a second read, by another volume as after a remount, download nothing, while
//! a damaged cached block is fetched again, never served.

#[path = "common/data.rs"]
mod data;
use data::random_bytes;

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use dcloud_fs::crypto::Key;
use dcloud_fs::format::SEGMENT_LEN;
use dcloud_fs::fs::cache::BlockCache;
use dcloud_fs::fs::read::FileReader;
use dcloud_fs::store::discord::{DiscordConfig, DiscordStore, Token};
use dcloud_fs::volume::disk_cache::{DiskCache, DiskCacheConfig};
use dcloud_fs::volume::{PutOptions, PutSource, Volume, VolumeConfig, find_channel};
use fake_discord::{Config, FakeDiscord};

const MIB: u64 = 1024 * 1024;
const CHANNEL: &str = "files";
/// A segment as stored: its plaintext and its tag.
const SEALED_SEGMENT: u64 = SEGMENT_LEN as u64 + 16;
/// A chunk's header, fetched with its first segment.
const HEADER: u64 = dcloud_fs::format::SEGMENTED_HEADER_LEN as u64;

struct Fixture {
    fake: FakeDiscord,
    key: Key,
    _dir: tempfile::TempDir,
    cache_dir: std::path::PathBuf,
}

impl Fixture {
    async fn start() -> Fixture {
        let config = Config {
            channels: vec![CHANNEL.to_string()],
            max_file_size: MIB,
            message_create_limit: (5, Duration::from_millis(300)),
            ..Config::default()
        };
        let fake = FakeDiscord::start("127.0.0.1:0".parse().unwrap(), config)
            .await
            .expect("fake Discord starts");
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("blocks");
        Fixture {
            fake,
            key: Key::generate().unwrap(),
            _dir: dir,
            cache_dir,
        }
    }

    /// A volume on a store of its own (as another process would have it), keeping
    /// fetched chunks in the disk cache if `disk` says so.
    async fn volume(&self, disk: bool) -> Volume {
        let mut config = DiscordConfig::new(Token::new(self.fake.token()), self.fake.guild_id());
        config.api = Some(self.fake.api_base());
        config.max_file_size = Some(MIB);
        config.request_timeout = Duration::from_secs(20);
        let store = Arc::new(DiscordStore::new(config).unwrap());
        let channel = find_channel(store.as_ref(), CHANNEL).await.unwrap();
        let disk_cache = disk.then(|| {
            Arc::new(
                DiskCache::open(DiskCacheConfig {
                    dir: self.cache_dir.clone(),
                    capacity_bytes: 64 * MIB,
                })
                .unwrap(),
            )
        });
        let config = VolumeConfig {
            cache_dir: None,
            free_grace: Duration::ZERO,
            disk_cache,
            ..VolumeConfig::default()
        };
        Volume::open(store, channel, Some(self.key.clone()), config)
            .await
            .unwrap()
    }

    fn downloaded(&self) -> u64 {
        self.fake.stats().bytes_downloaded
    }
}

async fn put(volume: &Volume, path: &str, data: &[u8]) {
    let options = PutOptions {
        mtime_ns: 0,
        mode: 0o644,
        encrypted: true,
        owner: None,
        atime_ns: None,
    };
    let source = PutSource::Stream(Box::new(Cursor::new(data.to_vec())));
    volume.put(path, source, path, options, None).await.unwrap();
}

fn reader(volume: &Volume, path: &str) -> FileReader {
    FileReader::new(
        Arc::new(volume.file(path).unwrap()),
        volume.fetcher(path),
        Arc::new(BlockCache::new(64 * MIB)),
        4,
    )
}

/// The whole file read through a fresh reader, as the mount reads it (which fills the
/// disk cache; `get` only reads it).
async fn read_whole(volume: &Volume, path: &str) -> Vec<u8> {
    let reader = reader(volume, path);
    let size = u32::try_from(reader.size()).unwrap();
    reader.read(0, size).await.unwrap()
}

async fn get(volume: &Volume, path: &str) -> Vec<u8> {
    let mut sink = Vec::new();
    volume.get(path, &mut sink, None).await.unwrap();
    sink
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_read_downloads_the_segments_it_covers_and_no_more() {
    let fx = Fixture::start().await;
    let volume = fx.volume(false).await;
    let data = random_bytes(3 * MIB as usize + 1000, 11);
    put(&volume, "video.bin", &data).await;
    let chunk_len = volume.file("video.bin").unwrap().chunks[0].len;
    assert!(
        chunk_len > 4 * SEGMENT_LEN as u64,
        "chunks of several segments"
    );

    // (offset, length, segments it touches)
    let segment = SEGMENT_LEN as u64;
    let last_segment = (chunk_len - 1) / segment * segment;
    let cases = [
        (0, 4096, 1),
        (segment - 10, 20, 2),        // across a segment boundary
        (5 * segment + 100, 4096, 1), // in the middle
        (chunk_len - 10, 20, 2),      // across a chunk boundary
        (last_segment, chunk_len - last_segment, 1), // a chunk's last segment, exactly
        (data.len() as u64 - 5, 5, 1), // the file's last bytes
        (chunk_len + 3 * segment, 2 * segment, 2), // whole segments
    ];
    for (offset, len, segments) in cases {
        let reader = reader(&volume, "video.bin"); // a fresh cache: nothing held
        let before = fx.downloaded();
        let got = reader.read(offset, len as u32).await.unwrap();
        let end = (offset + len).min(data.len() as u64) as usize;
        assert!(got == data[offset as usize..end], "read({offset}, {len})");
        let downloaded = fx.downloaded() - before;
        assert!(
            downloaded <= segments * SEALED_SEGMENT + HEADER,
            "read({offset}, {len}) downloaded {downloaded} bytes, {segments} segment(s) expected"
        );
        assert!(downloaded > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads_are_right_when_the_cdn_ignores_range() {
    let fx = Fixture::start().await;
    let volume = fx.volume(false).await;
    let data = random_bytes(2 * MIB as usize + 77, 12);
    put(&volume, "f", &data).await;
    fx.fake.set_knobs(|k| k.ignore_range = true);
    let reader = reader(&volume, "f");
    let mut state = 99u64;
    for _ in 0..40 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (state >> 33) % (data.len() as u64 + 10);
        let len = ((state >> 11) % 200_000) as u32;
        let got = reader.read(offset, len).await.unwrap();
        let from = (offset as usize).min(data.len());
        let to = (from + len as usize).min(data.len());
        assert!(got == data[from..to], "read({offset}, {len})");
    }
    // `get` too (its ranges cover whole chunks but their headers).
    assert!(get(&volume, "f").await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_read_after_a_remount_downloads_nothing() {
    let fx = Fixture::start().await;
    let data = random_bytes(2 * MIB as usize + 5, 13);
    {
        let volume = fx.volume(false).await;
        put(&volume, "f", &data).await;
        put(&volume, "g", &data[..300_000]).await;
    }
    // First read, through a reader as the mount reads: downloads, and keeps what it
    // fetched on disk.
    let first = fx.volume(true).await;
    assert!(read_whole(&first, "f").await == data);
    let reader1 = reader(&first, "g");
    assert!(reader1.read(100_000, 10_000).await.unwrap() == data[100_000..110_000]);
    drop((reader1, first));
    tokio::time::sleep(Duration::from_millis(300)).await; // the cache writes land
    // Another volume on another store (a remount, or the CLI): nothing downloaded,
    // whether read whole or by range.
    let second = fx.volume(true).await;
    let before = fx.downloaded();
    assert!(get(&second, "f").await == data);
    let reader2 = reader(&second, "f");
    assert!(reader2.read(MIB + 3, 70_000).await.unwrap() == data[MIB as usize + 3..][..70_000]);
    let reader3 = reader(&second, "g");
    assert!(reader3.read(100_000, 10_000).await.unwrap() == data[100_000..110_000]);
    assert_eq!(
        fx.downloaded() - before,
        0,
        "bytes downloaded on the second read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_cached_block_is_fetched_again_never_served() {
    let fx = Fixture::start().await;
    let data = random_bytes(MIB as usize + 100_000, 14);
    fx.volume(false).await;
    put(&fx.volume(false).await, "f", &data).await;
    let volume = fx.volume(true).await;
    // `get` reads the disk cache but doesn't fill it (the file it writes is the copy).
    assert!(get(&volume, "f").await == data);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut files = Vec::new();
    if fx.cache_dir.exists() {
        collect_files(&fx.cache_dir, &mut files);
    }
    assert!(files.is_empty(), "get kept {} blocks", files.len());
    assert!(read_whole(&volume, "f").await == data);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Damage one cached segment (same length, one byte changed), and cut another.
    collect_files(&fx.cache_dir, &mut files);
    // One block per fetch: here, one per chunk.
    assert!(files.len() >= 2, "{} blocks cached", files.len());
    let damaged_bytes: u64 = files[..2]
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    files.sort();
    let mut damaged = std::fs::read(&files[0]).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x20;
    std::fs::write(&files[0], damaged).unwrap();
    let cut = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &cut[..cut.len() - 1]).unwrap();
    let again = fx.volume(true).await;
    let before = fx.downloaded();
    assert!(
        read_whole(&again, "f").await == data,
        "right bytes despite the damage"
    );
    let refetched = fx.downloaded() - before;
    assert!(
        refetched > 0 && refetched <= damaged_bytes,
        "the two damaged blocks fetched again ({refetched} bytes of {damaged_bytes}), \
         nothing else"
    );
    // And a third read finds them mended.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = fx.volume(true).await;
    let before = fx.downloaded();
    assert!(get(&third, "f").await == data);
    assert_eq!(fx.downloaded() - before, 0);
}

fn collect_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            collect_files(&entry.path(), out);
        } else {
            out.push(entry.path());
        }
    }
}
