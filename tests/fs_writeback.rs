//! Write-back in the filesystem core (no kernel involved): a close returns once the
//! file is in the spool and its upload follows; the mount shows the new content at once;
//! files closed again within the settle time are uploaded once; `fsync` uploads and
//! returns the upload's error; failed uploads are retried and nothing is lost; stopping
//! uploads the queue and leaves the spool empty; a mount that dies leaves the closed
//! files to the next one; an unlinked waiting file is never uploaded.

#[path = "common/faulty.rs"]
mod faulty;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dcloud_fs::crypto::Key;
use dcloud_fs::fs::inode::ROOT;
use dcloud_fs::fs::{Fs, FsConfig, OpenFlags};
use dcloud_fs::store::local::LocalStore;
use dcloud_fs::store::{Limits, Store};
use dcloud_fs::volume::{Volume, VolumeConfig};
use faulty::{FaultyStore, SplitMix64};

const LIMITS: Limits = Limits {
    max_file_size: 4096,
    max_attachments: 4,
    max_request_size: 10_000,
    max_content_chars: 2000,
};

/// The settle time of these tests' mounts.
const SETTLE: Duration = Duration::from_millis(300);

const READ: OpenFlags = OpenFlags {
    write: false,
    truncate: false,
};

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<FaultyStore>,
    key: Key,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let local =
            Arc::new(LocalStore::open_or_create(&dir.path().join("store"), LIMITS).unwrap());
        local.create_channel("a").await.unwrap();
        Fixture {
            store: Arc::new(FaultyStore::new(local, 7)),
            key: Key::generate().unwrap(),
            dir,
        }
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    async fn mount(&self, write_back: Duration) -> Arc<Fs> {
        let config = FsConfig {
            spool_dir: Some(self.spool()),
            write_back,
            volume: VolumeConfig {
                cache_dir: None,
                free_grace: Duration::ZERO,
                ..VolumeConfig::default()
            },
            ..FsConfig::default()
        };
        Fs::new(self.store.clone(), Some(self.key.clone()), config)
            .await
            .unwrap()
    }

    /// What the store holds at `path` of channel `a`, read as the CLI would.
    async fn stored(&self, path: &str) -> Option<Vec<u8>> {
        let channel = self
            .store
            .channels()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.name == "a")
            .unwrap();
        let config = VolumeConfig {
            cache_dir: None,
            ..VolumeConfig::default()
        };
        let volume = Volume::open(self.store.clone(), channel, Some(self.key.clone()), config)
            .await
            .unwrap();
        volume.file(path).ok()?;
        let mut out = Vec::new();
        volume.get(path, &mut out, None).await.unwrap();
        Some(out)
    }

    /// Files in the spool folder (data and descriptions).
    fn spool_files(&self) -> Vec<String> {
        match std::fs::read_dir(self.spool()) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".data") || name.ends_with(".json"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits (up to 10 s) until the store holds `want` at `path`.
    async fn wait_stored(&self, path: &str, want: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.stored(path).await.as_deref() == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "{path} was never uploaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn folder(fs: &Fs) -> u64 {
    fs.lookup(ROOT, "a").await.unwrap().ino
}

/// Creates (or empties) `name`, writes `data`, closes it.
async fn write(fs: &Fs, name: &str, data: &[u8]) {
    let dir = folder(fs).await;
    let (_, opened) = fs.create(dir, name, 0o644, false).await.unwrap();
    fs.write(opened.fh, 0, data).await.unwrap();
    fs.flush(opened.fh).await.unwrap();
    fs.release(opened.fh).await.unwrap();
}

async fn read_back(fs: &Fs, name: &str) -> Vec<u8> {
    let dir = folder(fs).await;
    let attr = fs.lookup(dir, name).await.unwrap();
    let opened = fs.open(attr.ino, READ).await.unwrap();
    let mut out = Vec::new();
    loop {
        let piece = fs.read(opened.fh, out.len() as u64, 5000).await.unwrap();
        if piece.is_empty() {
            break;
        }
        out.extend_from_slice(&piece);
    }
    fs.release(opened.fh).await.unwrap();
    assert_eq!(
        attr.size,
        out.len() as u64,
        "{name}: size and content agree"
    );
    out
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    SplitMix64::new(seed).bytes(len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_before_the_upload_and_the_mount_shows_the_file_meanwhile() {
    let fx = Fixture::new().await;
    let fs = fx.mount(SETTLE).await;
    // A slow store: an upload takes much longer than a close may.
    fx.store.set_post_delay(Duration::from_millis(400));
    let data = bytes(10_000, 1);
    let started = Instant::now();
    write(&fs, "f", &data).await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "close waited for the upload ({:?})",
        started.elapsed()
    );
    assert_eq!(
        fx.stored("f").await,
        None,
        "uploaded before the settle time"
    );
    // Listed, sized and read from the spool meanwhile.
    let dir = folder(&fs).await;
    let names: Vec<String> = fs
        .readdir(dir)
        .await
        .unwrap()
        .into_iter()
        .map(|item| item.name)
        .collect();
    assert!(names.contains(&"f".to_string()), "{names:?}");
    assert!(read_back(&fs, "f").await == data);
    fx.wait_stored("f", &data).await;
    // Once uploaded and closed, its session ends and the spool is empty.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fx.spool_files().is_empty() {
        assert!(
            Instant::now() < deadline,
            "spool left: {:?}",
            fx.spool_files()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(read_back(&fs, "f").await == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_closed_again_within_the_settle_time_is_uploaded_once() {
    let fx = Fixture::new().await;
    let fs = fx.mount(Duration::from_millis(800)).await;
    let before = fx.store.counts();
    for round in 0..5u64 {
        write(&fs, "f", &bytes(3000, round)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = bytes(3000, 4);
    fx.wait_stored("f", &last).await;
    // One record, one chunk: the five closes became one upload.
    assert_eq!((fx.store.counts() - before).posted_messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_uploads_at_once_and_returns_the_uploads_error() {
    let fx = Fixture::new().await;
    let fs = fx.mount(Duration::from_secs(3600)).await;
    let dir = folder(&fs).await;
    let data = bytes(5000, 2);
    let (_, opened) = fs.create(dir, "f", 0o644, false).await.unwrap();
    fs.write(opened.fh, 0, &data).await.unwrap();
    fx.store.set_failure_rates(1.0, 0.0, 0.0);
    assert!(
        fs.fsync(opened.fh).await.is_err(),
        "fsync hid a failed upload"
    );
    // Close doesn't report it (as a local disk's close doesn't); the file is kept.
    fs.flush(opened.fh).await.unwrap();
    fx.store.set_failure_rates(0.0, 0.0, 0.0);
    fs.fsync(opened.fh).await.unwrap();
    // Stored when fsync returns, an hour before the settle time.
    assert_eq!(fx.stored("f").await, Some(data));
    fs.release(opened.fh).await.unwrap();
    assert!(fx.spool_files().is_empty(), "{:?}", fx.spool_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_uploads_are_retried_until_they_land() {
    let fx = Fixture::new().await;
    let fs = fx.mount(Duration::from_millis(100)).await;
    fx.store.set_failure_rates(1.0, 0.0, 0.0);
    let data = bytes(6000, 3);
    write(&fs, "f", &data).await;
    // Let the first attempt fail; the file still reads.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fx.stored("f").await, None);
    assert!(read_back(&fs, "f").await == data);
    fx.store.set_failure_rates(0.0, 0.0, 0.0);
    // The retry (2 s after the failure) lands it.
    fx.wait_stored("f", &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_uploads_the_queue_and_leaves_no_spool() {
    let fx = Fixture::new().await;
    let fs = fx.mount(Duration::from_secs(3600)).await;
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("f{i}"), bytes(1000 + i * 700, 10 + i as u64)))
        .collect();
    for (name, data) in &files {
        write(&fs, name, data).await;
    }
    assert_eq!(fx.stored("f0").await, None);
    fs.shutdown().await;
    for (name, data) in &files {
        assert_eq!(fx.stored(name).await.as_ref(), Some(data), "{name}");
    }
    assert!(fx.spool_files().is_empty(), "{:?}", fx.spool_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_that_dies_leaves_its_closed_files_to_the_next() {
    let fx = Fixture::new().await;
    let data = bytes(7000, 4);
    {
        let fs = fx.mount(Duration::from_secs(3600)).await;
        write(&fs, "f", &data).await;
        // Gone without stopping (as after kill -9): nothing was uploaded.
        drop(fs);
    }
    assert_eq!(fx.stored("f").await, None);
    let fs = fx.mount(SETTLE).await;
    assert_eq!(fs.recover_spool().await, 1);
    assert_eq!(fx.stored("f").await, Some(data));
    assert!(fx.spool_files().is_empty(), "{:?}", fx.spool_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlinked_waiting_file_is_never_uploaded() {
    let fx = Fixture::new().await;
    let fs = fx.mount(SETTLE).await;
    let before = fx.store.counts();
    write(&fs, "f", &bytes(2000, 5)).await;
    let dir = folder(&fs).await;
    fs.unlink(dir, "f").await.unwrap();
    tokio::time::sleep(SETTLE * 3).await;
    assert_eq!(fx.stored("f").await, None);
    assert_eq!((fx.store.counts() - before).posted_messages, 0);
    assert!(fs.lookup(dir, "f").await.is_err());
    assert!(fx.spool_files().is_empty(), "{:?}", fx.spool_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_back_off_close_uploads_and_returns_the_error() {
    let fx = Fixture::new().await;
    let fs = fx.mount(Duration::ZERO).await;
    let data = bytes(3000, 6);
    write(&fs, "f", &data).await;
    assert_eq!(fx.stored("f").await, Some(data));
    let dir = folder(&fs).await;
    let (_, opened) = fs.create(dir, "g", 0o644, false).await.unwrap();
    fs.write(opened.fh, 0, b"x").await.unwrap();
    fx.store.set_failure_rates(1.0, 0.0, 0.0);
    assert!(fs.flush(opened.fh).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_waiting_together_go_up_together() {
    let fx = Fixture::new().await;
    let fs = fx.mount(Duration::from_millis(500)).await;
    let before = fx.store.counts();
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("f{i:02}"), bytes(10 + i * 40, 30 + i as u64)))
        .collect();
    for (name, data) in &files {
        write(&fs, name, data).await;
    }
    for (name, data) in &files {
        fx.wait_stored(name, data).await;
    }
    // Three small files to a message with these limits (four attachments: three
    // chunks and the record): 7 messages, not 20.
    let posted = (fx.store.counts() - before).posted_messages;
    assert!(posted <= 10, "{posted} messages for 20 small files");
    fs.shutdown().await;
    assert!(fx.spool_files().is_empty(), "{:?}", fx.spool_files());
}
