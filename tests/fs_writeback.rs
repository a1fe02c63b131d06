//! Write-back in the filesystem core (no kernel involved): a close returns once the
//! file is in the spool and its upload follows; the mount shows the new content at once;
//! files closed again within the settle time are uploaded once; `fsync` uploads and
//! returns the upload's error; failed uploads are retried and nothing is lost; stopping
//! uploads the queue and leaves the spool empty; a mount that dies leaves the closed
//! files to the next one; an unlinked waiting file is never uploaded; a full spool makes
//! writers wait for uploads (which then start at once), and loses nothing.

#[path = "common/data.rs"]
mod data;
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
        self.mount_bounded(write_back, None).await
    }

    /// A mount whose spool holds at most `spool_max` bytes (`None`: the default).
    async fn mount_bounded(&self, write_back: Duration, spool_max: Option<u64>) -> Arc<Fs> {
        let config = FsConfig {
            spool_dir: Some(self.spool()),
            spool_max,
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

    /// Channel `a` as the CLI opens it: read afresh from the store.
    async fn volume(&self) -> Volume {
        data::channel_volume(self.store.clone(), &self.key, "a").await
    }

    /// What the store holds at `path` of channel `a`, read as the CLI would.
    async fn stored(&self, path: &str) -> Option<Vec<u8>> {
        let volume = self.volume().await;
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

// ----- a full spool -----

/// The spool bound of the tests below: one file of [`SPOOLED`] and a bit more.
const BOUND: u64 = 64 * 1024;
/// The size of the files they write.
const SPOOLED: usize = 40_000;
/// How much of a second file fits beside a first one, in writes of [`PIECE`].
const PIECE: usize = 8_000;

/// Waits (up to 10 s) until `what` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fails the test instead of hanging it if `work` doesn't end within 20 s.
async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .unwrap_or_else(|_| panic!("{what} never ended (a deadlock?)"))
}

/// Writes `data` through `fh` in writes of [`PIECE`].
async fn write_all(fs: &Fs, fh: u64, data: &[u8]) {
    for (i, piece) in data.chunks(PIECE).enumerate() {
        let written = fs.write(fh, (i * PIECE) as u64, piece).await.unwrap();
        assert_eq!(written as usize, piece.len());
    }
}

/// Creates `name` and writes `data` in writes of [`PIECE`], then closes it: in a task.
fn spawn_writer(fs: &Arc<Fs>, name: &'static str, data: Vec<u8>) -> tokio::task::JoinHandle<()> {
    let fs = fs.clone();
    tokio::spawn(async move {
        let dir = folder(&fs).await;
        let (_, opened) = fs.create(dir, name, 0o644, false).await.unwrap();
        write_all(&fs, opened.fh, &data).await;
        fs.flush(opened.fh).await.unwrap();
        fs.release(opened.fh).await.unwrap();
    })
}

/// Stops the mount, then checks that the store holds each file as written and that the
/// spool is empty.
async fn all_stored(fx: &Fixture, fs: &Fs, files: &[(&str, &[u8])]) {
    for (name, data) in files {
        assert!(read_back(fs, name).await == *data, "{name} read back");
    }
    within("stopping", fs.shutdown()).await;
    for (name, data) in files {
        assert!(
            fx.stored(name).await.as_deref() == Some(*data),
            "{name} stored"
        );
    }
    assert!(fx.spool_files().is_empty(), "{:?}", fx.spool_files());
    assert_eq!(fs.spool_usage().used, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_past_the_spools_bound_waits_for_uploads_which_start_at_once() {
    let fx = Fixture::new().await;
    // An hour's settle time: only a waiting writer makes anything upload.
    let fs = fx
        .mount_bounded(Duration::from_secs(3600), Some(BOUND))
        .await;
    let posts = fx.store.hold_posts();
    let first = bytes(SPOOLED, 40);
    write(&fs, "a", &first).await;
    assert_eq!(fs.spool_usage().used, SPOOLED as u64);
    assert_eq!(posts.calls(), 0, "uploaded before its settle time");

    let second = bytes(SPOOLED, 41);
    let writer = spawn_writer(&fs, "b", second.clone());
    // The writer can't go past the bound: the queue uploads "a" now to make room.
    within("the upload of a", posts.arrived()).await;
    let usage = fs.spool_usage();
    assert_eq!(usage.writers_waiting, 1, "{usage:?}");
    let fits = (BOUND as usize - SPOOLED) / PIECE * PIECE;
    assert_eq!(usage.used, (SPOOLED + fits) as u64, "{usage:?}");
    assert!(usage.used <= BOUND);
    assert!(!writer.is_finished());

    // Once "a" is stored its spool goes, and the writer goes on.
    posts.release();
    within("the waiting writer", writer).await.unwrap();
    assert_eq!(fx.stored("a").await, Some(first.clone()));
    assert_eq!(fs.spool_usage().writers_waiting, 0);
    all_stored(&fx, &fs, &[("a", &first), ("b", &second)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_larger_than_the_bound_are_written_and_open_files_never_wait_for_each_other() {
    let fx = Fixture::new().await;
    let fs = fx
        .mount_bounded(Duration::from_secs(3600), Some(BOUND))
        .await;
    // Nothing can be uploaded: a writer that waited for an upload would wait forever.
    let posts = fx.store.hold_posts();
    let dir = folder(&fs).await;
    let big_data = bytes(BOUND as usize * 3 / 2, 42);
    let (_, big) = fs.create(dir, "big", 0o644, false).await.unwrap();
    within(
        "writing a file larger than the bound",
        write_all(&fs, big.fh, &big_data),
    )
    .await;
    // Two more files open beside it, written in turns: an open file never leaves the
    // spool, so none of them waits for another.
    let (_, one) = fs.create(dir, "one", 0o644, false).await.unwrap();
    let (_, two) = fs.create(dir, "two", 0o644, false).await.unwrap();
    let (data_one, data_two) = (bytes(SPOOLED, 43), bytes(SPOOLED, 44));
    within("two more writers past the bound", async {
        for start in (0..SPOOLED).step_by(PIECE) {
            let end = (start + PIECE).min(SPOOLED);
            fs.write(one.fh, start as u64, &data_one[start..end])
                .await
                .unwrap();
            fs.write(two.fh, start as u64, &data_two[start..end])
                .await
                .unwrap();
        }
    })
    .await;
    assert_eq!(fs.spool_usage().used, BOUND * 3 / 2 + 2 * SPOOLED as u64);
    assert_eq!(posts.calls(), 0, "nothing needed an upload");
    for fh in [big.fh, one.fh, two.fh] {
        fs.flush(fh).await.unwrap();
        fs.release(fh).await.unwrap();
    }
    posts.release();
    all_stored(
        &fx,
        &fs,
        &[("big", &big_data), ("one", &data_one), ("two", &data_two)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_stored_file_to_change_it_waits_for_room_for_its_content() {
    let fx = Fixture::new().await;
    let fs = fx
        .mount_bounded(Duration::from_secs(3600), Some(BOUND))
        .await;
    let old = bytes(SPOOLED, 45);
    let dir = folder(&fs).await;
    let (_, opened) = fs.create(dir, "old", 0o644, false).await.unwrap();
    fs.write(opened.fh, 0, &old).await.unwrap();
    fs.fsync(opened.fh).await.unwrap();
    fs.release(opened.fh).await.unwrap();
    until("the stored file leaves the spool", || {
        fs.spool_usage().used == 0
    })
    .await;

    let waiting = bytes(SPOOLED, 46);
    write(&fs, "a", &waiting).await;
    let posts = fx.store.hold_posts();
    // Changing "old" in place fetches it into the spool first: no room for that.
    let ino = fs.lookup(dir, "old").await.unwrap().ino;
    let opener = tokio::spawn({
        let fs = fs.clone();
        async move {
            let flags = OpenFlags {
                write: true,
                truncate: false,
            };
            let opened = fs.open(ino, flags).await.unwrap();
            fs.write(opened.fh, 100, b"patched").await.unwrap();
            fs.flush(opened.fh).await.unwrap();
            fs.release(opened.fh).await.unwrap();
        }
    });
    within("the upload of a", posts.arrived()).await;
    assert_eq!(fs.spool_usage().writers_waiting, 1);
    assert!(!opener.is_finished());
    posts.release();
    within("the open waiting for room", opener).await.unwrap();
    let mut patched = old.clone();
    patched[100..107].copy_from_slice(b"patched");
    all_stored(&fx, &fs, &[("a", &waiting), ("old", &patched)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_uploads_fail_writers_wait_and_go_on_once_the_store_is_back() {
    let fx = Fixture::new().await;
    let fs = fx
        .mount_bounded(Duration::from_secs(3600), Some(BOUND))
        .await;
    fx.store.set_failure_rates(1.0, 0.0, 0.0);
    let first = bytes(SPOOLED, 47);
    write(&fs, "a", &first).await;
    let second = bytes(SPOOLED, 48);
    let writer = spawn_writer(&fs, "b", second.clone());
    until("an upload of a fails", || {
        fx.store.counts().failed_posts > 0
    })
    .await;
    // The writer neither fails nor passes the bound.
    let usage = fs.spool_usage();
    assert_eq!(usage.writers_waiting, 1, "{usage:?}");
    assert!(usage.used <= BOUND, "{usage:?}");
    assert!(!writer.is_finished());
    // The store is back: the retry (2 s after the failure) lands "a", and "b" goes on.
    fx.store.set_failure_rates(0.0, 0.0, 0.0);
    within("the waiting writer", writer).await.unwrap();
    all_stored(&fx, &fs, &[("a", &first), ("b", &second)]).await;
}

// ----- folders made with write-back on -----

impl Fixture {
    /// The mode of the folder the store records at `path` of channel `a` (`None`: no
    /// folder record there).
    async fn stored_folder(&self, path: &str) -> Option<u32> {
        let volume = self.volume().await;
        match volume.index().node(path) {
            Some(dcloud_fs::volume::Node::Dir(Some(dir))) => Some(dir.mode),
            _ => None,
        }
    }

    /// The folder notes in the spool.
    fn folder_notes(&self) -> usize {
        std::fs::read_dir(self.spool().join("folders")).map_or(0, |d| d.count())
    }
}

/// Creates `name` in folder `parent`, writes `data`, closes it.
async fn write_in(fs: &Fs, parent: u64, name: &str, data: &[u8]) {
    let (_, opened) = fs.create(parent, name, 0o644, false).await.unwrap();
    fs.write(opened.fh, 0, data).await.unwrap();
    fs.flush(opened.fh).await.unwrap();
    fs.release(opened.fh).await.unwrap();
}

fn names(items: Vec<dcloud_fs::fs::DirItem>) -> Vec<String> {
    let mut names: Vec<String> = items.into_iter().map(|i| i.name).collect();
    names.sort();
    names
}

/// A tree made through the mount costs one message, not one a folder and one a file:
/// the folders show at once, and their records go up with the files in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_show_at_once_and_go_up_in_the_message_of_their_files() {
    let fx = Fixture::new().await;
    let fs = fx.mount(Duration::from_millis(500)).await;
    let before = fx.store.counts();
    let top = folder(&fs).await;
    let docs = fs.mkdir(top, "docs", 0o750).await.unwrap();
    let old = fs.mkdir(docs.ino, "old", 0o755).await.unwrap();
    let empty = fs.mkdir(top, "empty", 0o700).await.unwrap();
    write_in(&fs, old.ino, "f", b"in a new folder").await;
    assert_eq!(
        (fx.store.counts() - before).posted_messages,
        0,
        "nothing yet"
    );
    assert_eq!(names(fs.readdir(top).await.unwrap()), ["docs", "empty"]);
    assert_eq!(names(fs.readdir(docs.ino).await.unwrap()), ["old"]);
    assert_eq!(names(fs.readdir(old.ino).await.unwrap()), ["f"]);
    assert!(names(fs.readdir(empty.ino).await.unwrap()).is_empty());
    assert_eq!(fs.lookup(top, "docs").await.unwrap().perm, 0o750);
    assert!(matches!(
        fs.mkdir(top, "docs", 0o755).await,
        Err(dcloud_fs::fs::FsError::Exists)
    ));
    fx.wait_stored("docs/old/f", b"in a new folder").await;
    assert_eq!(fx.stored_folder("docs").await, Some(0o750));
    assert_eq!(fx.stored_folder("docs/old").await, Some(0o755));
    assert_eq!(fx.stored_folder("empty").await, Some(0o700));
    assert_eq!(
        (fx.store.counts() - before).posted_messages,
        1,
        "three folders and a file in one message"
    );
    fs.shutdown().await;
    assert_eq!(fx.folder_notes(), 0);
}

/// A folder removed, renamed or changed before its record went up costs nothing more:
/// the removed one never reaches the store, the renamed one (and the file being written
/// in it) goes up under its new name, the changed one with its new mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_removed_renamed_or_changed_before_it_went_up() {
    let fx = Fixture::new().await;
    let fs = fx.mount(Duration::from_secs(3600)).await;
    let before = fx.store.counts();
    let top = folder(&fs).await;
    let gone = fs.mkdir(top, "gone", 0o755).await.unwrap();
    let inner = fs.mkdir(gone.ino, "inner", 0o755).await.unwrap();
    assert!(matches!(
        fs.rmdir(top, "gone").await,
        Err(dcloud_fs::fs::FsError::NotEmpty)
    ));
    fs.rmdir(gone.ino, "inner").await.unwrap();
    fs.rmdir(top, "gone").await.unwrap();
    assert!(fs.lookup(top, "gone").await.is_err());
    let _ = inner;

    let draft = fs.mkdir(top, "draft", 0o755).await.unwrap();
    let sub = fs.mkdir(draft.ino, "sub", 0o755).await.unwrap();
    write_in(&fs, sub.ino, "f", b"moves along").await;
    assert!(matches!(
        fs.rmdir(draft.ino, "sub").await,
        Err(dcloud_fs::fs::FsError::NotEmpty)
    ));
    fs.rename(top, "draft", top, "final", false).await.unwrap();
    assert!(fs.lookup(top, "draft").await.is_err());
    let moved = fs.lookup(top, "final").await.unwrap();
    assert_eq!(moved.ino, draft.ino, "the inode goes along");
    assert_eq!(names(fs.readdir(moved.ino).await.unwrap()), ["sub"]);

    let changed = fs.mkdir(top, "changed", 0o755).await.unwrap();
    let mode = dcloud_fs::fs::SetAttr {
        mode: Some(0o711),
        ..Default::default()
    };
    assert_eq!(
        fs.setattr(changed.ino, None, mode).await.unwrap().perm,
        0o711
    );
    assert_eq!(
        (fx.store.counts() - before).posted_messages,
        0,
        "nothing yet"
    );

    fs.shutdown().await;
    assert_eq!(
        fx.stored("final/sub/f").await.as_deref(),
        Some(&b"moves along"[..])
    );
    assert_eq!(fx.stored("draft/sub/f").await, None);
    assert_eq!(fx.stored_folder("final").await, Some(0o755));
    assert_eq!(fx.stored_folder("draft").await, None);
    assert_eq!(fx.stored_folder("gone").await, None);
    assert_eq!(fx.stored_folder("changed").await, Some(0o711));
    assert_eq!((fx.store.counts() - before).posted_messages, 1);
    assert_eq!(fx.folder_notes(), 0);
}

/// A mount killed before its folders' records went up leaves them to the next mount,
/// which posts them; so is a stored folder kept from an `rmdir` while a file written in
/// it waits for its upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_that_dies_leaves_its_folders_to_the_next() {
    let fx = Fixture::new().await;
    {
        let fs = fx.mount(Duration::from_secs(3600)).await;
        let top = folder(&fs).await;
        let kept = fs.mkdir(top, "kept", 0o705).await.unwrap();
        fs.mkdir(kept.ino, "deeper", 0o755).await.unwrap();
        // Gone without stopping (as after kill -9): nothing was posted.
        drop(fs);
    }
    assert_eq!(fx.stored_folder("kept").await, None);
    assert_eq!(fx.folder_notes(), 2);
    let fs = fx.mount(Duration::from_secs(3600)).await;
    let top = folder(&fs).await;
    fs.recover_spool().await;
    assert_eq!(fx.stored_folder("kept").await, Some(0o705));
    assert_eq!(fx.stored_folder("kept/deeper").await, Some(0o755));
    assert_eq!(fx.folder_notes(), 0);

    let kept = fs.lookup(top, "kept").await.unwrap();
    write_in(&fs, kept.ino, "f", b"waiting").await;
    let deeper = fs.lookup(kept.ino, "deeper").await.unwrap();
    fs.rmdir(kept.ino, "deeper").await.unwrap();
    assert!(fs.lookup(kept.ino, "deeper").await.is_err());
    let _ = deeper;
    assert!(matches!(
        fs.rmdir(top, "kept").await,
        Err(dcloud_fs::fs::FsError::NotEmpty)
    ));
    fs.shutdown().await;
    assert_eq!(fx.stored("kept/f").await.as_deref(), Some(&b"waiting"[..]));
    assert_eq!(fx.stored_folder("kept/deeper").await, None);
}

/// With write-back off, `mkdir` posts its record before it returns, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_back_off_mkdir_posts_at_once() {
    let fx = Fixture::new().await;
    let fs = fx.mount(Duration::ZERO).await;
    let top = folder(&fs).await;
    fs.mkdir(top, "now", 0o755).await.unwrap();
    assert_eq!(fx.stored_folder("now").await, Some(0o755));
    assert_eq!(fx.folder_notes(), 0);
}

/// Files a killed mount had closed are shown by the next mount from its first request,
/// before they are stored, and go up packed like any closed file (not a message each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_mount_shows_what_a_killed_one_left_and_uploads_it_packed() {
    let fx = Fixture::new().await;
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("f{i:02}"), bytes(100 + i * 50, 60 + i as u64)))
        .collect();
    {
        let fs = fx.mount(Duration::from_secs(3600)).await;
        let top = folder(&fs).await;
        let sub = fs.mkdir(top, "sub", 0o755).await.unwrap();
        for (name, data) in &files {
            write(&fs, name, data).await;
        }
        write_in(&fs, sub.ino, "inner", b"in a folder").await;
        // Gone without stopping (as after kill -9): nothing was uploaded.
        drop(fs);
    }
    let before = fx.store.counts();
    let fs = fx.mount(SETTLE).await;
    let hold = fx.store.hold_posts();
    assert_eq!(fs.adopt_spool().await, 13);
    // Their uploads are held: the mount shows them meanwhile (a read of a file waits
    // for an upload of it under way, so only names and sizes are looked at here).
    let top = folder(&fs).await;
    for (name, data) in &files {
        let attr = fs.lookup(top, name).await.unwrap();
        assert_eq!(attr.size, data.len() as u64, "{name}, before it is stored");
    }
    let sub = fs.lookup(top, "sub").await.unwrap();
    assert_eq!(names(fs.readdir(sub.ino).await.unwrap()), ["inner"]);
    hold.release();
    for (name, data) in &files {
        assert_eq!(&read_back(&fs, name).await, data, "{name}");
    }
    fs.shutdown().await;
    for (name, data) in &files {
        assert_eq!(fx.stored(name).await.as_deref(), Some(&data[..]), "{name}");
    }
    assert_eq!(
        fx.stored("sub/inner").await.as_deref(),
        Some(&b"in a folder"[..])
    );
    assert_eq!(fx.stored_folder("sub").await, Some(0o755));
    let posted = (fx.store.counts() - before).posted_messages;
    assert!(
        posted <= 6,
        "{posted} messages for 13 small files and a folder"
    );
    assert!(fx.spool_files().is_empty(), "{:?}", fx.spool_files());
    assert_eq!(fx.folder_notes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_that_dies_leaves_its_closed_empty_file_to_the_next() {
    let fx = Fixture::new().await;
    {
        let fs = fx.mount(Duration::from_secs(3600)).await;
        write(&fs, "empty", b"").await;
        // Gone without stopping (as after kill -9): nothing was uploaded.
        drop(fs);
    }
    assert_eq!(fx.stored("empty").await, None);
    let fs = fx.mount(SETTLE).await;
    assert_eq!(fs.recover_spool().await, 1, "{:?}", fx.spool_files());
    assert_eq!(fx.stored("empty").await, Some(Vec::new()));
    assert!(fx.spool_files().is_empty(), "{:?}", fx.spool_files());
}

/// A `chmod` of a closed file while its upload is under way is not lost: it goes up
/// after that upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_mode_during_an_upload_goes_up_after_it() {
    let fx = Fixture::new().await;
    let fs = fx.mount(SETTLE).await;
    let hold = fx.store.hold_posts();
    write(&fs, "f", b"content").await;
    // The queue's upload starts and waits in the store.
    within("the upload to start", hold.arrived()).await;
    let top = folder(&fs).await;
    let ino = fs.lookup(top, "f").await.unwrap().ino;
    let chmod = dcloud_fs::fs::SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    assert_eq!(fs.setattr(ino, None, chmod).await.unwrap().perm, 0o600);
    hold.release();
    fs.shutdown().await;
    assert_eq!(fx.volume().await.file("f").unwrap().mode, 0o600);
    assert_eq!(fx.stored("f").await.as_deref(), Some(&b"content"[..]));
}
