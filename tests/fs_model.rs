//! The filesystem core against a reference model, under random operations and a store
//! that fails at random — no kernel involved.
//!
//! The model is what a user of a local disk expects, plus dcloud-fs's promise about
//! failures: a map of committed file contents, the content each open file shows, and
//! the uploads that failed and wait in the spool. Random sequences of create, open,
//! write at any offset, truncate, read, close, rename (within a channel and to the
//! other one: there are two), unlink and remount run against both, with 35% of posts
//! and 10% of chunk fetches failing. After every step the
//! filesystem must agree with the model: reads return the model's bytes or an error,
//! never other bytes; a failed close leaves the last committed content visible; and
//! a remount finishes the failed uploads — the newest one of each file, and only if
//! nothing newer was committed meanwhile. A move to the other channel posts twice (the
//! destination's record, then the source's delete): when the second post fails, the
//! file is in both channels, and the harness moves it again, as the error asks.

#[path = "common/faulty.rs"]
mod faulty;

use std::collections::BTreeMap;
use std::sync::Arc;

use dcloud_fs::crypto::Key;
use dcloud_fs::fs::inode::ROOT;
use dcloud_fs::fs::{Fs, FsConfig, FsError, Kind, OpenFlags, SetAttr};
use dcloud_fs::store::local::LocalStore;
use dcloud_fs::store::{Limits, Store};
use dcloud_fs::volume::VolumeConfig;
use faulty::{FaultyStore, SplitMix64};

const LIMITS: Limits = Limits {
    max_file_size: 4096,
    max_attachments: 4,
    max_request_size: 10_000,
    max_content_chars: 2000,
};

/// The channels, and the files: names in either channel.
const CHANNELS: [&str; 2] = ["a", "b"];
const NAMES: [&str; 8] = [
    "a/f0", "a/f1", "a/f2", "a/f3", "b/f0", "b/f1", "b/f2", "b/f3",
];

/// Fraction of posts and of chunk fetches that fail while the operations run.
const POST_FAILURES: f64 = 0.35;
const FETCH_FAILURES: f64 = 0.10;

/// Prints a step when FS_MODEL_TRACE is set (to replay a failing seed).
macro_rules! trace {
    ($($arg:tt)*) => {
        if std::env::var_os("FS_MODEL_TRACE").is_some() {
            eprintln!($($arg)*);
        }
    };
}

/// An open handle in the model.
struct OpenFile {
    fh: u64,
    path: String,
}

/// A session in the model: the content its handles see, and the version it is based
/// on (bumped by its own successful commits).
struct Session {
    content: Vec<u8>,
    base: u64,
    opens: usize,
    /// Changed since its last successful commit (a close without changes uploads
    /// nothing).
    dirty: bool,
}

#[derive(Default)]
struct Model {
    committed: BTreeMap<String, Vec<u8>>,
    /// Bumped by every change that lands at a path.
    versions: BTreeMap<String, u64>,
    sessions: BTreeMap<String, Session>,
    open: Vec<OpenFile>,
    /// Failed uploads left in the spool, oldest first: (path, content, base version).
    pending: Vec<(String, Vec<u8>, u64)>,
    /// What happened, to check that the run exercised what it should.
    closes_landed: usize,
    moves_across: usize,
    half_moves: usize,
    closes_failed: usize,
    recovered: usize,
}

impl Model {
    fn version(&self, path: &str) -> u64 {
        self.versions.get(path).copied().unwrap_or(0)
    }

    fn bump(&mut self, path: &str) {
        *self.versions.entry(path.to_string()).or_default() += 1;
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<FaultyStore>,
    key: Key,
    config: FsConfig,
    fs: Arc<Fs>,
    /// The inode numbers of the channels' folders.
    channels: [u64; 2],
}

impl Harness {
    async fn new(seed: u64) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let local =
            Arc::new(LocalStore::open_or_create(&dir.path().join("store"), LIMITS).unwrap());
        for channel in CHANNELS {
            local.create_channel(channel).await.unwrap();
        }
        let store = Arc::new(FaultyStore::new(local, seed));
        let config = FsConfig {
            cache_bytes: 64 * 1024,
            spool_dir: Some(dir.path().join("spool")),
            // The model's close stores the file or fails (write-back is
            // tests/fs_writeback.rs's).
            write_back: std::time::Duration::ZERO,
            volume: VolumeConfig {
                cache_dir: None,
                // Freed at once: these tests count what is left.
                free_grace: std::time::Duration::ZERO,
                ..VolumeConfig::default()
            },
            ..FsConfig::default()
        };
        let key = Key::generate().unwrap();
        let fs = Fs::new(store.clone(), Some(key.clone()), config.clone())
            .await
            .unwrap();
        let mut h = Harness {
            _dir: dir,
            store,
            key,
            config,
            fs,
            channels: [0; 2],
        };
        h.look_up_channels().await;
        h
    }

    async fn remount(&mut self) {
        self.fs = Fs::new(
            self.store.clone(),
            Some(self.key.clone()),
            self.config.clone(),
        )
        .await
        .unwrap();
        self.fs.recover_spool().await;
        self.look_up_channels().await;
    }

    async fn look_up_channels(&mut self) {
        for (i, channel) in CHANNELS.iter().enumerate() {
            self.channels[i] = self.fs.lookup(ROOT, channel).await.unwrap().ino;
        }
    }

    /// The folder holding a file of [`NAMES`], and the file's name in it.
    fn split<'a>(&self, path: &'a str) -> (u64, &'a str) {
        let (channel, name) = path.split_once('/').unwrap();
        let i = CHANNELS.iter().position(|c| *c == channel).unwrap();
        (self.channels[i], name)
    }

    async fn ino(&self, path: &str) -> Result<u64, FsError> {
        let (parent, name) = self.split(path);
        Ok(self.fs.lookup(parent, name).await?.ino)
    }

    /// The whole content of a file through a fresh read-only open.
    async fn read_all(&self, path: &str) -> Result<Vec<u8>, FsError> {
        let ino = self.ino(path).await?;
        let opened = self
            .fs
            .open(
                ino,
                OpenFlags {
                    write: false,
                    truncate: false,
                },
            )
            .await?;
        let result = self.fs.read(opened.fh, 0, 1 << 20).await;
        self.fs.release(opened.fh).await?;
        result
    }
}

/// Compares contents without printing megabytes: lengths and the first difference.
fn assert_same(got: Option<&Vec<u8>>, want: Option<&Vec<u8>>, what: &str) {
    if got == want {
        return;
    }
    let describe =
        |v: Option<&Vec<u8>>| v.map_or("absent".to_string(), |v| format!("{} bytes", v.len()));
    let first_difference = match (got, want) {
        (Some(g), Some(w)) => g.iter().zip(w.iter()).position(|(a, b)| a != b),
        _ => None,
    };
    panic!(
        "{what}: got {}, want {}, first difference at {first_difference:?}",
        describe(got),
        describe(want)
    );
}

/// Closes handle `i` of the model: flush then release, as close(2) does.
async fn close(h: &Harness, model: &mut Model, i: usize) {
    let open = model.open.remove(i);
    let flushed = h.fs.flush(open.fh).await;
    let released = h.fs.release(open.fh).await;
    let session = model.sessions.get_mut(&open.path).unwrap();
    session.opens -= 1;
    let landed = flushed.is_ok() || released.is_ok();
    trace!(
        "close {} fh {}: flush {:?} release {:?}",
        open.path,
        open.fh,
        flushed.is_ok(),
        released.is_ok()
    );
    if landed {
        model.closes_landed += 1;
    } else {
        model.closes_failed += 1;
    }
    if landed && session.dirty {
        let content = session.content.clone();
        model.committed.insert(open.path.clone(), content);
        model.bump(&open.path);
        let version = model.version(&open.path);
        let session = model.sessions.get_mut(&open.path).unwrap();
        session.base = version;
        session.dirty = false;
    }
    let session = model.sessions.get(&open.path).unwrap();
    if session.opens == 0 {
        let session = model.sessions.remove(&open.path).unwrap();
        if !landed {
            model
                .pending
                .push((open.path.clone(), session.content, session.base));
        }
    }
}

async fn step(h: &mut Harness, model: &mut Model, rng: &mut SplitMix64) {
    let name = NAMES[rng.index(NAMES.len())];
    let op = rng.below(100);
    trace!(
        "op {op} on {name}; open: {:?}",
        model
            .open
            .iter()
            .map(|o| (&o.path, o.fh))
            .collect::<Vec<_>>()
    );
    match op {
        // Create (truncating an existing file).
        0..=11 => {
            let (parent, leaf) = h.split(name);
            let result = h.fs.create(parent, leaf, 0o644, false).await;
            if let Ok((attr, opened)) = result {
                assert_eq!(attr.size, 0);
                let base = model.version(name);
                let session = model.sessions.entry(name.to_string()).or_insert(Session {
                    content: Vec::new(),
                    base,
                    opens: 0,
                    dirty: true,
                });
                session.content.clear();
                session.dirty = true;
                session.opens += 1;
                model.open.push(OpenFile {
                    fh: opened.fh,
                    path: name.to_string(),
                });
            }
        }
        // Open an existing file for writing.
        12..=19 => {
            let Ok(ino) = h.ino(name).await else {
                assert!(
                    !model.committed.contains_key(name) && !model.sessions.contains_key(name),
                    "{name} exists in the model"
                );
                return;
            };
            let flags = OpenFlags {
                write: true,
                truncate: false,
            };
            if let Ok(opened) = h.fs.open(ino, flags).await {
                let base = model.version(name);
                let committed = model.committed.get(name).cloned().unwrap_or_default();
                let session = model.sessions.entry(name.to_string()).or_insert(Session {
                    content: committed,
                    base,
                    opens: 0,
                    dirty: false,
                });
                session.opens += 1;
                model.open.push(OpenFile {
                    fh: opened.fh,
                    path: name.to_string(),
                });
            }
        }
        // Write at an offset.
        20..=39 if !model.open.is_empty() => {
            let i = rng.index(model.open.len());
            let path = model.open[i].path.clone();
            let size = model.sessions[&path].content.len() as u64;
            let offset = rng.below(size + 3000);
            let len = 1 + rng.index(6000);
            let data = rng.bytes(len);
            let written = h.fs.write(model.open[i].fh, offset, &data).await.unwrap();
            assert_eq!(written as usize, data.len());
            let session = model.sessions.get_mut(&path).unwrap();
            session.dirty = true;
            let content = &mut session.content;
            let end = offset as usize + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[offset as usize..end].copy_from_slice(&data);
        }
        // Truncate through a handle.
        40..=45 if !model.open.is_empty() => {
            let i = rng.index(model.open.len());
            let path = model.open[i].path.clone();
            let size = model.sessions[&path].content.len() as u64;
            let new_size = rng.below(size + 5000);
            let ino = h.ino(&path).await.unwrap();
            let changes = SetAttr {
                size: Some(new_size),
                ..SetAttr::default()
            };
            let attr =
                h.fs.setattr(ino, Some(model.open[i].fh), changes)
                    .await
                    .unwrap();
            assert_eq!(attr.size, new_size);
            let session = model.sessions.get_mut(&path).unwrap();
            session.content.resize(new_size as usize, 0);
            session.dirty = true;
        }
        // Read through an open handle.
        46..=55 if !model.open.is_empty() => {
            let i = rng.index(model.open.len());
            let content = &model.sessions[&model.open[i].path].content;
            let offset = rng.below(content.len() as u64 + 100);
            let size = rng.below(10_000) as u32;
            let got = h.fs.read(model.open[i].fh, offset, size).await.unwrap();
            let from = (offset as usize).min(content.len());
            let to = (from + size as usize).min(content.len());
            if got != content[from..to] {
                assert_same(
                    Some(&got),
                    Some(&content[from..to].to_vec()),
                    "read of an open file",
                );
            }
        }
        // Close.
        56..=69 if !model.open.is_empty() => {
            let i = rng.index(model.open.len());
            close(h, model, i).await;
        }
        // Read a file nobody is writing.
        70..=75 if !model.sessions.contains_key(name) => match h.read_all(name).await {
            Ok(content) => assert_same(Some(&content), model.committed.get(name), name),
            Err(FsError::NotFound) => assert!(!model.committed.contains_key(name)),
            Err(FsError::Io(_)) => {} // an injected fetch failure: an error, not bytes
            Err(e) => panic!("read {name}: {e:?}"),
        },
        // Rename a file nobody is writing over one nobody is writing, in its channel or
        // to the other one (mostly a file that exists; sometimes any name).
        76..=86 => {
            let stored: Vec<&str> = NAMES
                .into_iter()
                .filter(|n| model.committed.contains_key(*n) && !model.sessions.contains_key(*n))
                .collect();
            let name = if stored.is_empty() || rng.chance(0.2) {
                name
            } else {
                stored[rng.index(stored.len())]
            };
            let to = NAMES[rng.index(NAMES.len())];
            if to == name || model.sessions.contains_key(name) || model.sessions.contains_key(to) {
                return;
            }
            let ((parent, leaf), (new_parent, new_leaf)) = (h.split(name), h.split(to));
            let across = parent != new_parent;
            let before = h.store.counts();
            let mut result = h.fs.rename(parent, leaf, new_parent, new_leaf, false).await;
            let posted = (h.store.counts() - before).posted_messages;
            if across && result.is_ok() {
                model.moves_across += 1;
            }
            if across && result.is_err() && posted > 0 {
                // The destination's record landed, the source's delete didn't: the file
                // is in both channels. Moving it again finishes the move.
                trace!("half move {name} -> {to}; moving again");
                model.half_moves += 1;
                h.store.clear_faults();
                result = h.fs.rename(parent, leaf, new_parent, new_leaf, false).await;
                h.store
                    .set_failure_rates(POST_FAILURES, FETCH_FAILURES, 0.0);
                assert!(result.is_ok(), "moving {name} to {to} again: {result:?}");
            }
            match result {
                Ok(()) => {
                    let content = model.committed.remove(name).unwrap();
                    model.committed.insert(to.to_string(), content);
                    model.bump(name);
                    model.bump(to);
                }
                Err(FsError::NotFound) => assert!(!model.committed.contains_key(name)),
                Err(FsError::Io(_)) => {}
                Err(e) => panic!("rename {name} {to}: {e:?}"),
            }
        }
        // Unlink a file nobody is writing.
        87..=92 if !model.sessions.contains_key(name) => {
            match h.fs.unlink(h.split(name).0, h.split(name).1).await {
                Ok(()) => {
                    model.committed.remove(name).unwrap();
                    model.bump(name);
                }
                Err(FsError::NotFound) => assert!(!model.committed.contains_key(name)),
                Err(FsError::Io(_)) => {}
                Err(e) => panic!("unlink {name}: {e:?}"),
            }
        }
        // Remount: close everything, then start again from the store and the spool.
        93..=95 => {
            while !model.open.is_empty() {
                close(h, model, 0).await;
            }
            h.store.clear_faults();
            h.remount().await;
            finish_pending(model);
            h.store
                .set_failure_rates(POST_FAILURES, FETCH_FAILURES, 0.0);
        }
        _ => {}
    }
}

/// Checks every name against the model (faults off while checking).
async fn check(h: &Harness, model: &Model) {
    h.store.clear_faults();
    let mut listed = Vec::new();
    for (i, channel) in CHANNELS.iter().enumerate() {
        for item in h.fs.readdir(h.channels[i]).await.unwrap() {
            listed.push((format!("{channel}/{}", item.name), item.kind));
        }
    }
    for name in NAMES {
        let in_listing = listed
            .iter()
            .any(|(path, kind)| path == name && *kind == Kind::File);
        let expected = model.committed.contains_key(name) || model.sessions.contains_key(name);
        assert_eq!(in_listing, expected, "{name} listed");
        if !model.sessions.contains_key(name) {
            let content = h.read_all(name).await.ok();
            assert_same(content.as_ref(), model.committed.get(name), name);
        }
    }
    h.store
        .set_failure_rates(POST_FAILURES, FETCH_FAILURES, 0.0);
}

#[tokio::test]
async fn the_core_matches_a_reference_model_under_random_failures() {
    let mut totals = (0, 0, 0, 0, 0);
    for seed in seeds() {
        eprintln!("seed {seed}");
        let mut h = Harness::new(seed).await;
        h.store
            .set_failure_rates(POST_FAILURES, FETCH_FAILURES, 0.0);
        let mut model = Model::default();
        let mut rng = SplitMix64::new(1000 + seed);
        for round in 0..150 {
            step(&mut h, &mut model, &mut rng).await;
            if round % 10 == 9 {
                check(&h, &model).await;
            }
        }
        while !model.open.is_empty() {
            close(&h, &mut model, 0).await;
        }
        h.store.clear_faults();
        h.remount().await;
        finish_pending(&mut model);
        check(&h, &model).await;
        totals.0 += model.closes_landed;
        totals.1 += model.closes_failed;
        totals.2 += model.recovered;
        totals.3 += model.moves_across;
        totals.4 += model.half_moves;
    }
    let (landed, failed, recovered, moves, half_moves) = totals;
    eprintln!(
        "closes landed {landed}, failed {failed}; recovered {recovered}; moves across \
         channels {moves}, of which half done at first {half_moves}"
    );
    assert!(
        landed > 50 && failed > 5 && recovered > 0 && moves > 0 && moves + half_moves > 5,
        "landed {landed}, failed {failed}, recovered {recovered}, moves {moves}"
    );
}

/// Seeds 0..4, or 0..$FS_MODEL_SEEDS for a longer search.
fn seeds() -> std::ops::Range<u64> {
    let count = std::env::var("FS_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    0..count
}

/// What a remount does with the failed uploads: the newest of each file lands, if
/// nothing newer was committed since it was written.
fn finish_pending(model: &mut Model) {
    for (path, content, base) in std::mem::take(&mut model.pending).into_iter().rev() {
        if model.version(&path) == base {
            model.committed.insert(path.clone(), content);
            model.bump(&path);
            model.recovered += 1;
        }
    }
}
