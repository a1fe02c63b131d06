//! Moving files and folders across channels, at the volume level (and through the fs
//! core for what only it does: inode numbers and deleting channels), on the local store.
//!
//! A move posts records only: the destination's record points at the chunks where they
//! are, and the source's *moved* delete names the messages holding them. What these
//! tests pin down is who frees those messages, and when: the last channel on the file's
//! path of moves that uses them, and never while any channel still does — after a
//! delete or a new version in the destination, after several hops, after the file came
//! back, and for messages shared by several small files that went different ways.
//!
//! Tiny limits (4 KiB per attachment, 4 per message), so that a 30 KiB file has eight
//! chunks in three messages.

#[path = "common/data.rs"]
mod data;
#[path = "common/faulty.rs"]
mod faulty;

use std::collections::{BTreeSet, HashMap};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use data::random_bytes;
use dcloud_fs::crypto::Key;
use dcloud_fs::fs::inode::ROOT;
use dcloud_fs::fs::{Fs, FsConfig, FsError, OpenFlags};
use dcloud_fs::store::local::LocalStore;
use dcloud_fs::store::{Channel, HistoryCursor, Id, Limits, Store};
use dcloud_fs::volume::{
    FileEntry, Node, Peers, PutOptions, PutSource, SmallFile, Volume, VolumeConfig, VolumeError,
    channel_with_id,
};
use faulty::FaultyStore;
use tempfile::TempDir;

const LIMITS: Limits = Limits {
    max_file_size: 4096,
    max_attachments: 4,
    max_request_size: 10_000,
    max_content_chars: 2000,
};

const OPTIONS: PutOptions = PutOptions {
    mtime_ns: 1_700_000_000_000_000_000,
    mode: 0o640,
    encrypted: true,
    owner: None,
    atime_ns: None,
};

/// A local store with channels x, b and c, seen through a counting [`FaultyStore`], and
/// the volumes opened on it so far, which reach each other ([`Peers`]).
struct World {
    dir: TempDir,
    local: Arc<LocalStore>,
    store: Arc<FaultyStore>,
    key: Key,
    channels: HashMap<String, Channel>,
    volumes: Arc<Volumes>,
}

/// The volumes of one [`World`], opened on demand: the [`Peers`] of each of them.
struct Volumes {
    store: Arc<dyn Store>,
    key: Key,
    config: VolumeConfig,
    me: Weak<Volumes>,
    open: tokio::sync::Mutex<HashMap<Id, Arc<Volume>>>,
    /// Volumes opened without peers (to show what a volume does alone).
    alone: bool,
}

impl Volumes {
    fn new(store: Arc<dyn Store>, key: Key, config: VolumeConfig, alone: bool) -> Arc<Volumes> {
        Arc::new_cyclic(|me| Volumes {
            store,
            key,
            config,
            me: me.clone(),
            open: tokio::sync::Mutex::default(),
            alone,
        })
    }
}

#[async_trait]
impl Peers for Volumes {
    async fn peer(&self, channel: Id) -> Result<Arc<Volume>, VolumeError> {
        let mut open = self.open.lock().await;
        if let Some(volume) = open.get(&channel) {
            return Ok(volume.clone());
        }
        let info = channel_with_id(self.store.as_ref(), channel).await?;
        let volume = Arc::new(
            Volume::open(
                self.store.clone(),
                info,
                Some(self.key.clone()),
                self.config.clone(),
            )
            .await?,
        );
        if !self.alone {
            let peers: Weak<dyn Peers> = self.me.clone();
            volume.set_peers(peers);
        }
        open.insert(channel, volume.clone());
        Ok(volume)
    }
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let local =
            Arc::new(LocalStore::open_or_create(&dir.path().join("store"), LIMITS).unwrap());
        let mut channels = HashMap::new();
        for name in ["x", "b", "c"] {
            channels.insert(name.to_string(), local.create_channel(name).await.unwrap());
        }
        let store = Arc::new(FaultyStore::new(local.clone(), 7));
        let key = Key::generate().unwrap();
        let volumes = Volumes::new(store.clone(), key.clone(), config(None), false);
        World {
            dir,
            local,
            store,
            key,
            channels,
            volumes,
        }
    }

    fn id(&self, channel: &str) -> Id {
        self.channels[channel].id
    }

    /// The volume of `channel`, the same one every time.
    async fn vol(&self, channel: &str) -> Arc<Volume> {
        self.volumes.peer(self.id(channel)).await.unwrap()
    }

    /// A new set of volumes, opened fresh (no cache: they replay every channel).
    fn fresh(&self, alone: bool, cache_dir: Option<PathBuf>) -> Arc<Volumes> {
        Volumes::new(
            self.store.clone(),
            self.key.clone(),
            config(cache_dir),
            alone,
        )
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The ids of every message in `channel`, read from the store itself.
    async fn messages(&self, channel: &str) -> BTreeSet<Id> {
        let mut all = BTreeSet::new();
        let mut cursor = HistoryCursor::Latest;
        loop {
            let page = self
                .local
                .history(self.id(channel), cursor, 100)
                .await
                .unwrap();
            let Some(oldest) = page.last() else { break };
            cursor = HistoryCursor::Before(oldest.id);
            let full = page.len() == 100;
            all.extend(page.iter().map(|m| m.id));
            if !full {
                break;
            }
        }
        all
    }

    /// Attachment files of `channel` in the local store.
    fn attachments(&self, channel: &str) -> usize {
        let dir = self
            .local
            .root()
            .join("channels")
            .join(self.id(channel).to_string())
            .join("attachments");
        std::fs::read_dir(dir).map_or(0, |d| d.count())
    }
}

fn config(cache_dir: Option<PathBuf>) -> VolumeConfig {
    VolumeConfig {
        cache_dir,
        // Freed at once: these tests count what is left.
        free_grace: std::time::Duration::ZERO,
        ..VolumeConfig::default()
    }
}

async fn put(volume: &Volume, path: &str, data: &[u8]) -> FileEntry {
    let source = PutSource::Stream(Box::new(Cursor::new(data.to_vec())));
    volume.put(path, source, path, OPTIONS, None).await.unwrap()
}

async fn read(volume: &Volume, path: &str) -> Vec<u8> {
    let mut sink = Vec::new();
    if let Err(e) = volume.get(path, &mut sink, None).await {
        panic!("get {}: {e}", volume.display(path));
    }
    sink
}

fn is_not_found(result: Result<FileEntry, VolumeError>) -> bool {
    matches!(result, Err(VolumeError::NotFound { .. }))
}

/// The distinct messages holding a file's chunks.
fn chunk_messages(file: &FileEntry) -> BTreeSet<Id> {
    file.chunks.iter().map(|c| c.message).collect()
}

#[tokio::test]
async fn a_moved_file_keeps_its_chunks_until_its_new_channel_deletes_it() {
    let w = World::new().await;
    let (x, b) = (w.vol("x").await, w.vol("b").await);
    let data = random_bytes(30_000, 1);
    let stored = put(&x, "docs/f.bin", &data).await;
    let chunks = chunk_messages(&stored);
    assert!(stored.chunks.len() >= 8 && chunks.len() >= 3, "{stored:?}");
    let attachments_before = w.attachments("x");

    let before = w.store.counts();
    x.move_to("docs/f.bin", &b, "moved/g.bin").await.unwrap();
    let posted = w.store.counts() - before;
    // Three records (the link and the delete in x, the put in b), and no chunk
    // uploaded again.
    assert_eq!(posted.posted_messages, 3, "{posted:?}");
    assert_eq!(posted.posted_chunk_attachments, 0, "{posted:?}");
    assert_eq!(posted.deletes, 0, "{posted:?}");
    assert_eq!(w.attachments("x"), attachments_before);
    assert_eq!(w.attachments("b"), 0);
    assert!(w.messages("x").await.is_superset(&chunks));

    assert!(is_not_found(x.file("docs/f.bin")));
    assert!(x.index().node("docs").is_none());
    let moved = b.file("moved/g.bin").unwrap();
    assert_eq!(
        (moved.id, moved.size, moved.mode),
        (stored.id, 30_000, 0o640)
    );
    assert_eq!(moved.mtime_ns, OPTIONS.mtime_ns);
    assert!(moved.chunks.iter().all(|c| c.channel == Some(w.id("x"))));
    assert!(read(&b, "moved/g.bin").await == data);
    assert_eq!(
        x.moved_files_elsewhere().await.unwrap(),
        BTreeSet::from([w.id("b")])
    );

    // A fresh machine (no cache) replaying both channels sees the same.
    let other = w.fresh(false, None);
    let (x2, b2) = (
        other.peer(w.id("x")).await.unwrap(),
        other.peer(w.id("b")).await.unwrap(),
    );
    assert!(is_not_found(x2.file("docs/f.bin")));
    assert_eq!(b2.file("moved/g.bin").unwrap(), moved);
    assert!(read(&b2, "moved/g.bin").await == data);
    assert_eq!(
        x2.moved_files_elsewhere().await.unwrap(),
        BTreeSet::from([w.id("b")])
    );
    drop((x2, b2, other));

    // Deleting it in its new channel frees its chunks in the old one.
    b.remove("moved/g.bin", false).await.unwrap();
    assert!(w.messages("x").await.is_disjoint(&chunks));
    assert_eq!(w.attachments("x"), 0);
    assert!(x.moved_files_elsewhere().await.unwrap().is_empty());
    // What is left are records without attachments: the link and the tombstone.
    assert_eq!(w.messages("x").await.len(), 2);
}

#[tokio::test]
async fn a_shared_message_stays_while_any_of_its_small_files_uses_it() {
    let w = World::new().await;
    let (x, b, c) = (w.vol("x").await, w.vol("b").await, w.vol("c").await);
    let small = |path: &str, seed| SmallFile {
        path: path.into(),
        data: random_bytes(500, seed),
        options: OPTIONS,
    };
    x.put_small(vec![small("s1", 1), small("s2", 2), small("s3", 3)])
        .await
        .unwrap();
    let shared = chunk_messages(&x.file("s1").unwrap());
    assert_eq!(shared, chunk_messages(&x.file("s2").unwrap()));
    assert_eq!(shared, chunk_messages(&x.file("s3").unwrap()));
    assert_eq!(w.attachments("x"), 1, "one pack");

    // s1 goes to b and is deleted there: s2 and s3 still use the message.
    x.move_to("s1", &b, "s1").await.unwrap();
    b.remove("s1", false).await.unwrap();
    assert!(w.messages("x").await.is_superset(&shared));
    assert!(read(&x, "s2").await == random_bytes(500, 2));

    // s2 goes to b, s3 to c (the message is named by two moved deletes, to two
    // channels); deleting s3 in c leaves it for s2 in b.
    x.move_to("s2", &b, "s2").await.unwrap();
    x.move_to("s3", &c, "s3").await.unwrap();
    let holders = x.moved_files_elsewhere().await.unwrap();
    assert!(!holders.is_empty() && holders.is_subset(&BTreeSet::from([w.id("b"), w.id("c")])));
    c.remove("s3", false).await.unwrap();
    assert!(w.messages("x").await.is_superset(&shared));
    assert!(read(&b, "s2").await == random_bytes(500, 2));
    assert_eq!(
        x.moved_files_elsewhere().await.unwrap(),
        BTreeSet::from([w.id("b")])
    );

    // The last one out frees it.
    b.remove("s2", false).await.unwrap();
    assert!(w.messages("x").await.is_disjoint(&shared));
    assert_eq!(w.attachments("x"), 0);
}

#[tokio::test]
async fn the_last_file_out_of_a_shared_message_frees_it_from_the_source() {
    let w = World::new().await;
    let (x, b) = (w.vol("x").await, w.vol("b").await);
    let small = |path: &str, seed| SmallFile {
        path: path.into(),
        data: random_bytes(700, seed),
        options: OPTIONS,
    };
    x.put_small(vec![small("s1", 1), small("s2", 2)])
        .await
        .unwrap();
    let shared = chunk_messages(&x.file("s1").unwrap());
    x.move_to("s1", &b, "s1").await.unwrap();
    b.remove("s1", false).await.unwrap();
    assert!(w.messages("x").await.is_superset(&shared));
    // Deleting the other one in x asks b (which no longer uses it) and frees it.
    x.remove("s2", false).await.unwrap();
    assert!(w.messages("x").await.is_disjoint(&shared));
    assert_eq!(w.attachments("x"), 0);
}

#[tokio::test]
async fn a_file_moved_on_twice_is_freed_by_its_last_channel() {
    let w = World::new().await;
    let (x, b, c) = (w.vol("x").await, w.vol("b").await, w.vol("c").await);
    let data = random_bytes(20_000, 3);
    let chunks = chunk_messages(&put(&x, "f", &data).await);
    x.move_to("f", &b, "f").await.unwrap();
    b.move_to("f", &c, "dir/f").await.unwrap();
    let moved = c.file("dir/f").unwrap();
    assert!(moved.chunks.iter().all(|c| c.channel == Some(w.id("x"))));
    assert!(read(&c, "dir/f").await == data);
    // Deleting in b (the file is gone there anyway) and in x changes nothing.
    assert!(is_not_found(b.file("f")));
    assert!(w.messages("x").await.is_superset(&chunks));
    assert_eq!(
        x.moved_files_elsewhere().await.unwrap(),
        BTreeSet::from([w.id("c")])
    );

    c.remove("dir", true).await.unwrap();
    assert!(w.messages("x").await.is_disjoint(&chunks));
    assert_eq!(w.attachments("x"), 0);
}

#[tokio::test]
async fn a_file_that_came_back_is_freed_where_it_started() {
    let w = World::new().await;
    let (x, b) = (w.vol("x").await, w.vol("b").await);
    let data = random_bytes(20_000, 4);
    let stored = put(&x, "f", &data).await;
    let chunks = chunk_messages(&stored);
    x.move_to("f", &b, "f").await.unwrap();
    b.move_to("f", &x, "back").await.unwrap();
    let back = x.file("back").unwrap();
    // Home again: the chunks are the channel's own.
    assert!(back.chunks.iter().all(|c| c.channel.is_none()));
    assert_eq!(chunk_messages(&back), chunks);
    assert!(read(&x, "back").await == data);
    assert!(x.moved_files_elsewhere().await.unwrap().is_empty());

    x.remove("back", false).await.unwrap();
    assert!(w.messages("x").await.is_disjoint(&chunks));
    assert_eq!(w.attachments("x"), 0);
    assert_eq!(w.attachments("b"), 0);
}

#[tokio::test]
async fn a_new_version_in_the_new_channel_frees_the_old_chunks() {
    let w = World::new().await;
    let (x, b) = (w.vol("x").await, w.vol("b").await);
    let chunks = chunk_messages(&put(&x, "f", &random_bytes(20_000, 5)).await);
    x.move_to("f", &b, "f").await.unwrap();
    let newer = random_bytes(9_000, 6);
    let replaced = put(&b, "f", &newer).await;
    assert!(replaced.chunks.iter().all(|c| c.channel.is_none()));
    assert!(read(&b, "f").await == newer);
    assert!(w.messages("x").await.is_disjoint(&chunks));
    assert_eq!(w.attachments("x"), 0);
    assert_eq!(w.attachments("b"), replaced.chunks.len());

    // Moving onto an existing file replaces it the same way.
    let other = random_bytes(5_000, 7);
    let from_x = chunk_messages(&put(&x, "g", &other).await);
    x.move_to("g", &b, "f").await.unwrap();
    assert!(read(&b, "f").await == other);
    assert!(w.messages("x").await.is_superset(&from_x));
    assert_eq!(w.attachments("b"), 0);
}

#[tokio::test]
async fn a_folder_moves_with_everything_in_it() {
    let w = World::new().await;
    let (x, b) = (w.vol("x").await, w.vol("b").await);
    x.mkdir("top/empty", 5, 0o700).await.unwrap();
    let one = random_bytes(9_000, 8);
    let two = random_bytes(100, 9);
    put(&x, "top/one", &one).await;
    put(&x, "top/sub/two", &two).await;
    put(&x, "stays", &two).await;
    b.mkdir("into", 5, 0o755).await.unwrap();
    let before = w.store.counts();
    x.move_to("top", &b, "into/top").await.unwrap();
    assert_eq!((w.store.counts() - before).posted_chunk_attachments, 0);
    assert!(x.index().node("top").is_none());
    assert!(matches!(x.index().node("stays"), Some(Node::File(_))));
    assert!(matches!(
        b.index().node("into/top/empty"),
        Some(Node::Dir(Some(dir))) if dir.mode == 0o700
    ));
    assert!(read(&b, "into/top/one").await == one);
    assert!(read(&b, "into/top/sub/two").await == two);

    // The same checks as a rename: not onto a file's path as a folder, not over a folder.
    put(&x, "other/f", &two).await;
    assert!(matches!(
        x.move_to("other", &b, "into/top/one").await,
        Err(VolumeError::AlreadyExists { .. })
    ));
    assert!(matches!(
        x.move_to("stays", &b, "into/top").await,
        Err(VolumeError::IsADirectory { .. })
    ));
    assert!(matches!(
        x.move_to("stays", &b, "into/top/one/deeper").await,
        Err(VolumeError::NotADirectory { .. })
    ));
    assert!(matches!(
        x.move_to("nothing", &b, "n").await,
        Err(VolumeError::NotFound { .. })
    ));

    let attachments = w.attachments("x");
    b.remove("into", true).await.unwrap();
    // Only the files still in x keep attachments there.
    let left: usize = ["stays", "other/f"]
        .iter()
        .map(|p| x.file(p).unwrap().chunks.len())
        .sum();
    assert!(attachments > left);
    assert_eq!(w.attachments("x"), left);
}

#[tokio::test]
async fn without_peers_nothing_a_moved_file_may_use_is_freed() {
    let w = World::new().await;
    let (x, b) = (w.vol("x").await, w.vol("b").await);
    let chunks = chunk_messages(&put(&x, "f", &random_bytes(20_000, 10)).await);
    x.move_to("f", &b, "f").await.unwrap();
    drop((x, b));

    // Volumes that can't reach each other delete the file in b and keep x's messages,
    // both the ones b's file used and those the source channel can't decide alone.
    let alone = w.fresh(true, Some(w.cache_dir()));
    let b_alone = alone.peer(w.id("b")).await.unwrap();
    b_alone.remove("f", false).await.unwrap();
    assert!(w.messages("x").await.is_superset(&chunks));
    assert!(matches!(
        b_alone.moved_files_elsewhere().await,
        Ok(set) if set.is_empty()
    ));
    let x_alone = alone.peer(w.id("x")).await.unwrap();
    assert!(x_alone.moved_files_elsewhere().await.is_err());
    drop((b_alone, x_alone));
    drop(alone); // saves the caches, with the messages still to free

    // The next volumes of b (from its cache) that can ask free them.
    let together = w.fresh(false, Some(w.cache_dir()));
    let b_again = together.peer(w.id("b")).await.unwrap();
    assert!(!b_again.index().unfreed_foreign.is_empty());
    b_again.refresh().await.unwrap();
    assert!(b_again.index().unfreed_foreign.is_empty());
    assert!(w.messages("x").await.is_disjoint(&chunks));
    assert_eq!(w.attachments("x"), 0);
}

/// Through the fs core: a move keeps the inode number, and a channel whose messages a
/// moved file still uses can't be deleted.
#[tokio::test]
async fn the_fs_core_moves_across_channels_and_keeps_needed_channels() {
    let w = World::new().await;
    let config = FsConfig {
        spool_dir: Some(w.dir.path().join("spool")),
        allow_delete_channels: true,
        // Close stores the file: the test looks at the channels after it.
        write_back: std::time::Duration::ZERO,
        volume: config(None),
        ..FsConfig::default()
    };
    let fs = Fs::new(w.store.clone(), Some(w.key.clone()), config)
        .await
        .unwrap();
    let x = fs.lookup(ROOT, "x").await.unwrap().ino;
    let b = fs.lookup(ROOT, "b").await.unwrap().ino;
    let data = random_bytes(15_000, 11);
    let (attr, opened) = fs.create(x, "f", 0o644, false).await.unwrap();
    fs.write(opened.fh, 0, &data).await.unwrap();
    fs.flush(opened.fh).await.unwrap();
    fs.release(opened.fh).await.unwrap();
    let attachments = w.attachments("x");

    fs.rename(x, "f", b, "g", false).await.unwrap();
    let moved = fs.lookup(b, "g").await.unwrap();
    assert_eq!(moved.ino, attr.ino);
    assert_eq!(moved.size, 15_000);
    assert!(matches!(fs.lookup(x, "f").await, Err(FsError::NotFound)));
    assert_eq!(w.attachments("x"), attachments);
    assert_eq!(w.attachments("b"), 0);
    let opened = fs
        .open(
            moved.ino,
            OpenFlags {
                write: false,
                truncate: false,
            },
        )
        .await
        .unwrap();
    assert!(fs.read(opened.fh, 0, 1 << 20).await.unwrap() == data);
    fs.release(opened.fh).await.unwrap();

    // x is empty, but g's bytes are in it.
    assert!(matches!(fs.rmdir(ROOT, "x").await, Err(FsError::NotEmpty)));
    // A file name that exists is kept with no_replace.
    let (_, opened) = fs.create(x, "h", 0o644, false).await.unwrap();
    fs.release(opened.fh).await.unwrap();
    assert!(matches!(
        fs.rename(x, "h", b, "g", true).await,
        Err(FsError::Exists)
    ));
    fs.unlink(x, "h").await.unwrap();

    fs.unlink(b, "g").await.unwrap();
    assert_eq!(w.attachments("x"), 0);
    fs.rmdir(ROOT, "x").await.unwrap();
    assert!(matches!(fs.lookup(ROOT, "x").await, Err(FsError::NotFound)));
}

#[tokio::test]
async fn a_move_whose_second_record_failed_leaves_two_safe_copies() {
    let w = World::new().await;
    let (x, b) = (w.vol("x").await, w.vol("b").await);
    let data = random_bytes(20_000, 12);
    let chunks = chunk_messages(&put(&x, "f", &data).await);
    // The link and the destination's record land, the source's delete doesn't.
    w.store.fail_post_in(3);
    let err = x.move_to("f", &b, "f").await.unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert!(read(&x, "f").await == data);
    assert!(read(&b, "f").await == data);
    // Deleting the copy left in x keeps the chunks b's copy uses, and the other way;
    // also on another machine (fresh volumes, no cache), which learns it from the link.
    let elsewhere = w.fresh(false, None);
    let x_elsewhere = elsewhere.peer(w.id("x")).await.unwrap();
    x_elsewhere.remove("f", false).await.unwrap();
    assert!(w.messages("x").await.is_superset(&chunks));
    assert!(read(&b, "f").await == data);
    drop((x_elsewhere, elsewhere));
    x.refresh().await.unwrap();
    assert!(is_not_found(x.file("f")));
    assert!(w.messages("x").await.is_superset(&chunks));
    assert!(read(&b, "f").await == data);
    b.remove("f", false).await.unwrap();
    assert!(w.messages("x").await.is_disjoint(&chunks));
    assert_eq!(w.attachments("x"), 0);

    // Moving again finishes a half-done move.
    let chunks = chunk_messages(&put(&x, "g", &data).await);
    w.store.fail_post_in(3);
    x.move_to("g", &b, "g").await.unwrap_err();
    x.move_to("g", &b, "g").await.unwrap();
    assert!(is_not_found(x.file("g")));
    assert!(read(&b, "g").await == data);
    assert!(w.messages("x").await.is_superset(&chunks));
    b.remove("g", false).await.unwrap();
    assert_eq!(w.attachments("x"), 0);
}
