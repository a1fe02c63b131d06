//! The filesystem core when several callers use one file or one channel at once, with
//! local-disk semantics (no kernel involved; tests/mount.rs has the same on a real mount,
//! under load, in its stress test):
//!
//! - a reader keeps reading the version it opened, after an overwrite or an unlink,
//!   and the messages of that version are freed once it closes;
//! - a write through a descriptor whose name was renamed lands under the new name; one
//!   whose name was unlinked is dropped, and its close succeeds;
//! - a channel whose opening (the replay of its records) is slow holds up no request
//!   for another channel, and concurrent requests for it open it once.

#[path = "common/faulty.rs"]
mod faulty;

use std::sync::Arc;
use std::time::Duration;

use dcloud_fs::crypto::Key;
use dcloud_fs::fs::inode::ROOT;
use dcloud_fs::fs::{Fs, FsConfig, FsError, OpenFlags};
use dcloud_fs::store::local::LocalStore;
use dcloud_fs::store::{Channel, Id, Limits, Store};
use dcloud_fs::volume::{Volume, VolumeConfig};
use faulty::{FaultyStore, SplitMix64};

const LIMITS: Limits = Limits {
    max_file_size: 4096,
    max_attachments: 4,
    max_request_size: 10_000,
    max_content_chars: 2000,
};

const READ: OpenFlags = OpenFlags {
    write: false,
    truncate: false,
};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<FaultyStore>,
    key: Key,
    config: FsConfig,
    fs: Arc<Fs>,
}

impl Fixture {
    /// Channels `a` and `b`, and a mount of them with no chunk cache to speak of (so
    /// that reads go to the store) and no read-ahead.
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let local =
            Arc::new(LocalStore::open_or_create(&dir.path().join("store"), LIMITS).unwrap());
        for channel in ["a", "b"] {
            local.create_channel(channel).await.unwrap();
        }
        let store = Arc::new(FaultyStore::new(local, 1));
        let config = FsConfig {
            cache_bytes: 1,
            read_ahead_chunks: 0,
            spool_dir: Some(dir.path().join("spool")),
            // Close stores the file: these tests look at the store after it.
            write_back: Duration::ZERO,
            volume: VolumeConfig {
                cache_dir: None,
                // Freed at the first pass once nothing needs them (the grace for other
                // machines' readers is not what is tested here).
                free_grace: Duration::ZERO,
                ..VolumeConfig::default()
            },
            ..FsConfig::default()
        };
        let key = Key::generate().unwrap();
        let fs = Fs::new(store.clone(), Some(key.clone()), config.clone())
            .await
            .unwrap();
        Fixture {
            _dir: dir,
            store,
            key,
            config,
            fs,
        }
    }

    async fn channel(&self, name: &str) -> Channel {
        let channels = self.store.channels().await.unwrap();
        channels.into_iter().find(|c| c.name == name).unwrap()
    }

    async fn folder(&self, channel: &str) -> u64 {
        self.fs.lookup(ROOT, channel).await.unwrap().ino
    }

    /// Creates (or empties) `name` in folder `dir`, writes `data` and closes it.
    async fn write(&self, dir: u64, name: &str, data: &[u8]) {
        let (_, opened) = self.fs.create(dir, name, 0o644, false).await.unwrap();
        assert_eq!(
            self.fs.write(opened.fh, 0, data).await.unwrap() as usize,
            data.len()
        );
        self.fs.flush(opened.fh).await.unwrap();
        self.fs.release(opened.fh).await.unwrap();
    }

    /// Reads all of an open handle.
    async fn read_all(&self, fh: u64) -> Result<Vec<u8>, FsError> {
        let mut out = Vec::new();
        loop {
            let piece = self.fs.read(fh, out.len() as u64, 3000).await?;
            if piece.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&piece);
        }
    }

    /// The messages holding the chunks of the stored file `path` of `channel`, read by
    /// a volume of its own (as the CLI would).
    async fn chunk_messages(&self, channel: &str, path: &str) -> Vec<Id> {
        let config = VolumeConfig {
            cache_dir: None,
            ..VolumeConfig::default()
        };
        let volume = Volume::open(
            self.store.clone(),
            self.channel(channel).await,
            Some(self.key.clone()),
            config,
        )
        .await
        .unwrap();
        let mut messages: Vec<Id> = volume
            .file(path)
            .unwrap()
            .chunks
            .iter()
            .map(|c| c.message)
            .collect();
        messages.dedup();
        messages
    }

    /// How many of `messages` of `channel` the store still has.
    async fn still_stored(&self, channel: &str, messages: &[Id]) -> usize {
        let channel = self.channel(channel).await.id;
        let mut count = 0;
        for &message in messages {
            if self.store.message(channel, message).await.is_ok() {
                count += 1;
            }
        }
        count
    }
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    SplitMix64::new(seed).bytes(len)
}

#[tokio::test]
async fn a_reader_keeps_the_version_it_opened_after_an_overwrite() {
    let fx = Fixture::new().await;
    let a = fx.folder("a").await;
    let old = bytes(30_000, 1);
    fx.write(a, "f", &old).await;
    let old_messages = fx.chunk_messages("a", "f").await;
    assert!(old_messages.len() > 1, "{old_messages:?}");

    let ino = fx.fs.lookup(a, "f").await.unwrap().ino;
    let reader = fx.fs.open(ino, READ).await.unwrap();
    let new = bytes(20_000, 2);
    fx.write(a, "f", &new).await;
    // The overwrite freed what it could; the version open for reading stays whole.
    assert_eq!(fx.read_all(reader.fh).await.unwrap(), old);
    assert_eq!(
        fx.still_stored("a", &old_messages).await,
        old_messages.len()
    );
    let again = fx.fs.open(ino, READ).await.unwrap();
    assert_eq!(fx.read_all(again.fh).await.unwrap(), new);
    fx.fs.release(again.fh).await.unwrap();

    // Closed: the next pass frees the old version's messages.
    fx.fs.release(reader.fh).await.unwrap();
    fx.fs.poll().await;
    assert_eq!(fx.still_stored("a", &old_messages).await, 0);
    let reader = fx.fs.open(ino, READ).await.unwrap();
    assert_eq!(fx.read_all(reader.fh).await.unwrap(), new);
    fx.fs.release(reader.fh).await.unwrap();
}

#[tokio::test]
async fn an_unlinked_file_open_for_reading_still_reads_and_stats() {
    let fx = Fixture::new().await;
    let a = fx.folder("a").await;
    let data = bytes(25_000, 3);
    fx.write(a, "f", &data).await;
    let messages = fx.chunk_messages("a", "f").await;
    let ino = fx.fs.lookup(a, "f").await.unwrap().ino;
    let reader = fx.fs.open(ino, READ).await.unwrap();
    fx.fs.unlink(a, "f").await.unwrap();
    assert!(matches!(fx.fs.lookup(a, "f").await, Err(FsError::NotFound)));

    // fstat of the open file, and reads of it, as on a local disk.
    assert_eq!(fx.fs.getattr(ino).await.unwrap().size, data.len() as u64);
    assert_eq!(
        fx.fs.getattr_of(ino, Some(reader.fh)).await.unwrap().size,
        data.len() as u64
    );
    assert_eq!(fx.read_all(reader.fh).await.unwrap(), data);

    fx.fs.release(reader.fh).await.unwrap();
    assert!(matches!(fx.fs.getattr(ino).await, Err(FsError::NotFound)));
    fx.fs.poll().await;
    assert_eq!(fx.still_stored("a", &messages).await, 0);
}

#[tokio::test]
async fn writes_through_a_renamed_descriptor_land_under_the_new_name() {
    let fx = Fixture::new().await;
    let (a, b) = (fx.folder("a").await, fx.folder("b").await);
    let data = bytes(20_000, 4);
    let (_, opened) = fx.fs.create(a, "w", 0o644, false).await.unwrap();
    fx.fs.write(opened.fh, 0, &data[..7000]).await.unwrap();
    // Renamed once with nothing stored yet, then (after a flush stored it) moved to
    // the other channel.
    fx.fs.rename(a, "w", a, "w2", false).await.unwrap();
    fx.fs
        .write(opened.fh, 7000, &data[7000..12_000])
        .await
        .unwrap();
    fx.fs.flush(opened.fh).await.unwrap();
    fx.fs.rename(a, "w2", b, "w3", false).await.unwrap();
    fx.fs
        .write(opened.fh, 12_000, &data[12_000..])
        .await
        .unwrap();
    fx.fs.flush(opened.fh).await.unwrap();
    fx.fs.release(opened.fh).await.unwrap();

    for name in ["w", "w2"] {
        assert!(matches!(
            fx.fs.lookup(a, name).await,
            Err(FsError::NotFound)
        ));
    }
    let ino = fx.fs.lookup(b, "w3").await.unwrap().ino;
    let reader = fx.fs.open(ino, READ).await.unwrap();
    assert_eq!(fx.read_all(reader.fh).await.unwrap(), data);
    fx.fs.release(reader.fh).await.unwrap();

    // And so the store has it.
    let fs = Fs::new(fx.store.clone(), Some(fx.key.clone()), fx.config.clone())
        .await
        .unwrap();
    let b = fs.lookup(ROOT, "b").await.unwrap().ino;
    let ino = fs.lookup(b, "w3").await.unwrap().ino;
    let reader = fs.open(ino, READ).await.unwrap();
    assert_eq!(
        fs.read(reader.fh, 0, 1 << 20).await.unwrap(),
        data,
        "after a remount"
    );
}

#[tokio::test]
async fn writes_through_an_unlinked_descriptor_are_dropped_and_close_succeeds() {
    let fx = Fixture::new().await;
    let a = fx.folder("a").await;
    // One stored before the unlink, one never stored.
    fx.write(a, "stored", &bytes(9000, 5)).await;
    let ino = fx.fs.lookup(a, "stored").await.unwrap().ino;
    let stored = fx
        .fs
        .open(
            ino,
            OpenFlags {
                write: true,
                truncate: false,
            },
        )
        .await
        .unwrap();
    let (_, fresh) = fx.fs.create(a, "fresh", 0o644, false).await.unwrap();
    fx.fs.write(fresh.fh, 0, &bytes(5000, 6)).await.unwrap();
    fx.fs.write(stored.fh, 100, &bytes(5000, 7)).await.unwrap();

    fx.fs.unlink(a, "stored").await.unwrap();
    fx.fs.unlink(a, "fresh").await.unwrap();
    for fh in [stored.fh, fresh.fh] {
        fx.fs.write(fh, 6000, b"more").await.unwrap();
        fx.fs.flush(fh).await.unwrap();
        fx.fs.release(fh).await.unwrap();
    }
    assert!(fx.fs.readdir(a).await.unwrap().is_empty());
    let fs = Fs::new(fx.store.clone(), Some(fx.key.clone()), fx.config.clone())
        .await
        .unwrap();
    assert_eq!(fs.recover_spool().await, 0);
    let a = fs.lookup(ROOT, "a").await.unwrap().ino;
    assert!(fs.readdir(a).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_slow_channel_holds_up_no_other_and_is_opened_once() {
    let fx = Fixture::new().await;
    let (a, b) = (fx.folder("a").await, fx.folder("b").await);
    let hold = fx.store.hold_history(fx.channel("a").await.id);
    // Two requests for channel a: the first opens it, and waits for its history.
    let first = tokio::spawn({
        let fs = fx.fs.clone();
        async move { fs.readdir(a).await.map(|items| items.len()) }
    });
    let second = tokio::spawn({
        let fs = fx.fs.clone();
        async move { fs.lookup(a, "missing").await.map(|attr| attr.ino) }
    });
    hold.arrived().await;

    // Meanwhile channel b is opened, written and read. (The time limit only turns a
    // deadlock into a failure.)
    let data = bytes(10_000, 8);
    let served = tokio::time::timeout(Duration::from_secs(60), async {
        fx.write(b, "f", &data).await;
        let ino = fx.fs.lookup(b, "f").await.unwrap().ino;
        let reader = fx.fs.open(ino, READ).await.unwrap();
        let read = fx.read_all(reader.fh).await.unwrap();
        fx.fs.release(reader.fh).await.unwrap();
        read
    })
    .await
    .expect("channel b waited for channel a's open");
    assert_eq!(served, data);
    assert!(!first.is_finished() && !second.is_finished());

    hold.release();
    assert_eq!(first.await.unwrap().unwrap(), 0);
    assert!(matches!(second.await.unwrap(), Err(FsError::NotFound)));
    // One replay of channel a (one page: it is empty), not one per request.
    assert_eq!(hold.calls(), 1);
}
