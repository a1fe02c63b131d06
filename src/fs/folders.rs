//! Folders made through the mount with write-back on, waiting for their record.
//!
//! A folder costs one record (`Mkdir`), and at Discord's pace a message costs about a
//! second: `cp -r` of a tree of 100 folders spent 100 s on its `mkdir`s alone. So with
//! write-back on, `mkdir` returns once the folder is noted here, and its record goes up
//! later, in the same message as the channel's next batch of small files
//! ([`crate::volume::Volume::put_batch`]), or with the other folders waiting, a settle
//! time after the `mkdir` if no file comes.
//!
//! The rules, all of them here:
//!
//! - **Shown at once.** Until its record lands, the mount shows the folder from here:
//!   lookups, attributes, and listings of it and of its parent.
//! - **Nothing lost.** Each folder's note is a small file in the spool
//!   (`folders/<id>.json`: channel, path, time, mode). It is not synced when written:
//!   the spool's sync, within a second of a change ([`super::writeback`]), covers it.
//!   A mount killed before the record landed leaves the notes, and the next mount posts
//!   them ([`super::Fs::recover_spool`]). A note that can't be read (torn by a power
//!   cut) is dropped with a log line.
//! - **Removed before it went up** (`rmdir`): the note goes, and nothing is posted.
//! - **Renamed before it went up** (it or a folder above it): the note moves with it,
//!   as the write sessions of the files under it do. The folders under the old name
//!   are held (not posted) from before the store's part of the rename until after, so
//!   none goes up under a name that no longer exists.
//! - **Changed before it went up** (`chmod`, `utimes`, as `cp -a` and `rsync -a` do to
//!   folders they fill): the note changes; nothing is posted.
//! - **While its record is being posted**, an `rmdir`, a rename or a change of it waits
//!   for the post to end, then goes on against what the store has by then.
//! - **A failed post** leaves the folders waiting; they go again after a backoff.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::inode::NodeKey;
use crate::format::DirManifest;
use crate::store::Id;

/// The pause before a failed post of folders is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A folder waiting for its record.
#[derive(Debug, Clone)]
struct Folder {
    /// The name of its note in the spool (`<note>.json`).
    note: String,
    mtime_ns: i64,
    mode: u32,
    due: Instant,
    /// Its record is being posted.
    posting: bool,
}

impl Folder {
    /// Marks the folder at `slot` as being posted (or held), and says what it is.
    fn take(&mut self, (channel, path): &(Id, String)) -> TakenFolder {
        self.posting = true;
        TakenFolder {
            key: NodeKey::new(*channel, path.clone()),
            record: DirManifest {
                path: path.clone(),
                mtime_ns: self.mtime_ns,
                mode: self.mode,
                meta: crate::format::Meta::default(),
            },
        }
    }
}

/// A folder's note in the spool.
#[derive(Debug, Serialize, Deserialize)]
struct Note {
    channel: Id,
    path: String,
    mtime_ns: i64,
    mode: u32,
}

/// A folder taken for posting: where it is, and its record.
#[derive(Debug, Clone)]
pub struct TakenFolder {
    pub key: NodeKey,
    pub record: DirManifest,
}

/// The folders of one mount waiting for their record (see the module docs).
pub struct PendingFolders {
    dir: PathBuf,
    folders: Mutex<BTreeMap<(Id, String), Folder>>,
    /// A post of folders ended.
    landed: Notify,
}

impl PendingFolders {
    /// The folders noted in `spool_dir/folders` (none are read until
    /// [`PendingFolders::recover`]).
    pub fn new(spool_dir: &Path) -> PendingFolders {
        PendingFolders {
            dir: spool_dir.join("folders"),
            folders: Mutex::default(),
            landed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Id, String), Folder>> {
        self.folders.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_path(&self, note: &str) -> PathBuf {
        self.dir.join(format!("{note}.json"))
    }

    fn write_note(
        &self,
        note: &str,
        key: &NodeKey,
        mtime_ns: i64,
        mode: u32,
    ) -> std::io::Result<()> {
        let json = serde_json::to_vec(&Note {
            channel: key.channel,
            path: key.path.clone(),
            mtime_ns,
            mode,
        })
        .map_err(std::io::Error::other)?;
        super::spool::replace_file(&self.note_path(note), &json, false)
    }

    fn remove_note(&self, note: &str) {
        let path = self.note_path(note);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("could not remove {}: {e}", path.display());
        }
    }

    /// Notes a new folder at `key`, its record due at `due`.
    pub fn add(
        &self,
        key: &NodeKey,
        mtime_ns: i64,
        mode: u32,
        due: Instant,
    ) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let note = crate::crypto::encode_hex(&super::spool::random_id()?);
        self.write_note(&note, key, mtime_ns, mode)?;
        let folder = Folder {
            note,
            mtime_ns,
            mode,
            due,
            posting: false,
        };
        if let Some(old) = self.lock().insert(slot(key), folder) {
            self.remove_note(&old.note);
        }
        Ok(())
    }

    /// The time and mode of the folder at `key`, if it waits for its record.
    pub fn attrs(&self, key: &NodeKey) -> Option<(i64, u32)> {
        self.lock().get(&slot(key)).map(|f| (f.mtime_ns, f.mode))
    }

    /// The names of the waiting folders right inside the folder `dir`.
    pub fn children(&self, dir: &NodeKey) -> Vec<String> {
        self.lock()
            .range(within_range(dir))
            .filter_map(|((_, path), _)| {
                let rest = if dir.path.is_empty() {
                    path.as_str()
                } else {
                    path.strip_prefix(&dir.path)?.strip_prefix('/')?
                };
                (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
            })
            .collect()
    }

    /// Whether a folder waits for its record strictly under the folder `dir`.
    pub fn any_under(&self, dir: &NodeKey) -> bool {
        self.lock()
            .range(within_range(dir))
            .any(|((_, path), _)| path != &dir.path && within(dir, path))
    }

    /// Waits until no folder at or under `dir` is being posted, then runs `then` with
    /// the folders locked: so nothing is taken for posting between the wait and `then`.
    async fn when_quiet<T>(
        &self,
        dir: &NodeKey,
        then: impl Fn(&mut BTreeMap<(Id, String), Folder>) -> T,
    ) -> T {
        loop {
            let landed = self.landed.notified();
            {
                let mut folders = self.lock();
                let posting = folders
                    .range(within_range(dir))
                    .any(|((_, path), f)| f.posting && within(dir, path));
                if !posting {
                    return then(&mut folders);
                }
            }
            landed.await;
        }
    }

    /// Forgets the folder at `key` (an `rmdir` before its record went up; one being
    /// posted is waited for first). Returns whether it was waiting.
    pub async fn remove(&self, key: &NodeKey) -> bool {
        let removed = self
            .when_quiet(key, |folders| folders.remove(&slot(key)))
            .await;
        match removed {
            Some(folder) => {
                self.remove_note(&folder.note);
                true
            }
            None => false,
        }
    }

    /// Changes the time and mode of the waiting folder at `key` (one being posted is
    /// waited for first). Returns whether it was waiting.
    pub async fn set_attrs(&self, key: &NodeKey, mtime_ns: Option<i64>, mode: Option<u32>) -> bool {
        let changed = self
            .when_quiet(key, |folders| {
                let folder = folders.get_mut(&slot(key))?;
                folder.mtime_ns = mtime_ns.unwrap_or(folder.mtime_ns);
                folder.mode = mode.map_or(folder.mode, |m| m & 0o7777);
                Some(folder.clone())
            })
            .await;
        let Some(folder) = changed else {
            return false;
        };
        if let Err(e) = self.write_note(&folder.note, key, folder.mtime_ns, folder.mode) {
            log::warn!(
                "could not record the new attributes of folder {} in the spool: {e}",
                key.path
            );
        }
        true
    }

    /// Holds the folders at or under `from` for a rename (posts under way are waited
    /// for first): none of them is posted until [`PendingFolders::renamed`] says where
    /// they went.
    pub async fn hold_for_rename(&self, from: &NodeKey) -> Vec<TakenFolder> {
        self.when_quiet(from, |folders| {
            folders
                .range_mut(within_range(from))
                .filter(|((_, path), _)| within(from, path))
                .map(|(slot, folder)| folder.take(slot))
                .collect()
        })
        .await
    }

    /// Lets go of folders held for a rename: moved from `from` to `to` if it happened
    /// (`Some`), else where they were.
    pub fn renamed(&self, held: &[TakenFolder], moved: Option<(&NodeKey, &NodeKey)>) {
        let mut rewritten = Vec::new();
        {
            let mut folders = self.lock();
            for taken in held {
                let Some(mut folder) = folders.remove(&slot(&taken.key)) else {
                    continue;
                };
                folder.posting = false;
                let key = match moved {
                    Some((from, to)) => {
                        let suffix = &taken.key.path[from.path.len()..];
                        let key = NodeKey::new(to.channel, format!("{}{suffix}", to.path));
                        rewritten.push((key.clone(), folder.clone()));
                        key
                    }
                    None => taken.key.clone(),
                };
                folders.insert(slot(&key), folder);
            }
        }
        for (key, folder) in rewritten {
            if let Err(e) = self.write_note(&folder.note, &key, folder.mtime_ns, folder.mode) {
                log::warn!(
                    "could not record the new name of folder {} in the spool: {e}",
                    key.path
                );
            }
        }
        self.landed.notify_waiters();
    }

    /// Takes every waiting folder of `channel` for posting.
    pub fn take(&self, channel: Id) -> Vec<TakenFolder> {
        let mut folders = self.lock();
        let range = (channel, String::new())..(channel.saturating_add(1), String::new());
        folders
            .range_mut(range)
            .filter(|(_, f)| !f.posting)
            .map(|(slot, folder)| folder.take(slot))
            .collect()
    }

    /// The channels with a waiting folder due by `now`.
    pub fn due_channels(&self, now: Instant) -> HashSet<Id> {
        self.lock()
            .iter()
            .filter(|(_, f)| !f.posting && f.due <= now)
            .map(|((channel, _), _)| *channel)
            .collect()
    }

    /// Makes the waiting folders of `channel` due no sooner than `due`: a file closed
    /// in the channel is due then, and its folders go up with it, in one message.
    pub fn defer(&self, channel: Id, due: Instant) {
        let range = (channel, String::new())..(channel.saturating_add(1), String::new());
        for (_, folder) in self.lock().range_mut(range) {
            if !folder.posting {
                folder.due = folder.due.max(due);
            }
        }
    }

    /// The channels with a folder waiting.
    pub fn waiting_channels(&self) -> HashSet<Id> {
        self.lock().keys().map(|(channel, _)| *channel).collect()
    }

    /// When the next waiting folder is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.lock()
            .values()
            .filter(|f| !f.posting)
            .map(|f| f.due)
            .min()
    }

    /// Stops showing and posting `taken` in this mount, keeping their notes for the
    /// next one (their post failed while stopping).
    pub fn forget(&self, taken: &[TakenFolder]) {
        let mut folders = self.lock();
        for folder in taken {
            folders.remove(&slot(&folder.key));
        }
    }

    /// A post of `taken` ended: landed (they are in the index now; their notes go), or
    /// failed (they wait again, for a retry).
    pub fn landed(&self, taken: &[TakenFolder], ok: bool) {
        let retry_at = Instant::now() + RETRY_AFTER;
        let mut gone = Vec::new();
        {
            let mut folders = self.lock();
            for folder in taken {
                let slot = slot(&folder.key);
                if ok {
                    if let Some(f) = folders.remove(&slot) {
                        gone.push(f.note);
                    }
                } else if let Some(f) = folders.get_mut(&slot) {
                    f.posting = false;
                    f.due = retry_at;
                }
            }
        }
        for note in gone {
            self.remove_note(&note);
        }
        self.landed.notify_waiters();
    }

    /// How many folders wait for their record, or are being posted.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Reads the notes a previous mount left (see the module docs), as waiting folders
    /// due now. Returns how many it read.
    pub fn recover(&self) -> usize {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
            Err(e) => {
                log::warn!("could not read {}: {e}", self.dir.display());
                return 0;
            }
        };
        let now = Instant::now();
        let mut read = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(note) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .map(String::from)
            else {
                continue;
            };
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Note>(&bytes).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(n) => {
                    let folder = Folder {
                        note,
                        mtime_ns: n.mtime_ns,
                        mode: n.mode & 0o7777,
                        due: now,
                        posting: false,
                    };
                    // Taken back once: a folder this mount knows already stays as it is.
                    if let std::collections::btree_map::Entry::Vacant(slot) =
                        self.lock().entry((n.channel, n.path))
                    {
                        slot.insert(folder);
                        read += 1;
                    }
                }
                Err(e) => {
                    log::warn!(
                        "dropping the folder note {} ({e}): it is torn, so the folder it \
                         named, made just before a crash, is not recorded",
                        path.display()
                    );
                    self.remove_note(&note);
                }
            }
        }
        read
    }
}

fn slot(key: &NodeKey) -> (Id, String) {
    (key.channel, key.path.clone())
}

/// Whether `path` (of `dir`'s channel) is `dir` or under it.
fn within(dir: &NodeKey, path: &str) -> bool {
    dir.path.is_empty()
        || path == dir.path
        || path
            .strip_prefix(&dir.path)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The slots that may lie at or under `dir`: its path and the paths after it that
/// start with it (to be filtered with [`within`]: `a-b` sorts between `a` and `a/b`).
fn within_range(dir: &NodeKey) -> std::ops::Range<(Id, String)> {
    let start = (dir.channel, dir.path.clone());
    let end = if dir.path.is_empty() {
        (dir.channel.saturating_add(1), String::new())
    } else {
        // Every path that starts with `dir.path` sorts before it with one more char.
        (dir.channel, format!("{}\u{10FFFF}", dir.path))
    };
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> NodeKey {
        NodeKey::new(7, path)
    }

    #[tokio::test]
    async fn folders_are_listed_moved_taken_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let pending = PendingFolders::new(dir.path());
        let now = Instant::now();
        for path in ["a", "a/b", "a-b", "a/b/c", "z"] {
            pending.add(&key(path), 5, 0o755, now).unwrap();
        }
        pending.add(&NodeKey::new(8, "a"), 5, 0o755, now).unwrap();
        let mut top = pending.children(&key(""));
        top.sort();
        assert_eq!(top, ["a", "a-b", "z"]);
        assert_eq!(pending.children(&key("a")), ["b"]);
        assert!(pending.any_under(&key("a")));
        assert!(!pending.any_under(&key("a-b")));
        assert_eq!(pending.attrs(&key("a/b")), Some((5, 0o755)));

        let held = pending.hold_for_rename(&key("a")).await;
        assert_eq!(held.len(), 3);
        let taken_meanwhile = pending.take(7);
        assert_eq!(taken_meanwhile.len(), 2, "the held ones are not taken");
        assert!(
            taken_meanwhile
                .iter()
                .all(|t| t.key.path != "a" && !t.key.path.starts_with("a/"))
        );
        pending.landed(&taken_meanwhile, false);
        pending.renamed(&held, Some((&key("a"), &key("x"))));
        assert_eq!(pending.children(&key("x")), ["b"]);
        assert!(pending.attrs(&key("a/b/c")).is_none());
        assert!(pending.attrs(&key("x/b/c")).is_some());
        assert!(pending.attrs(&key("a-b")).is_some(), "a sibling stays");

        // A mount killed now: the notes say the same.
        let again = PendingFolders::new(dir.path());
        assert_eq!(again.recover(), 6);
        assert!(again.attrs(&key("x/b/c")).is_some());

        let taken = pending.take(7);
        assert_eq!(taken.len(), 5);
        assert!(pending.take(7).is_empty(), "taken once");
        pending.landed(&taken[..1], false);
        assert_eq!(pending.take(7).len(), 1, "a failed one waits again");
        pending.landed(&taken, true);
        assert_eq!(pending.len(), 1);
        assert!(pending.remove(&NodeKey::new(8, "a")).await);
        assert_eq!(PendingFolders::new(dir.path()).recover(), 0, "no note left");
    }

    #[tokio::test]
    async fn an_rmdir_waits_for_a_post_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let pending = std::sync::Arc::new(PendingFolders::new(dir.path()));
        pending.add(&key("a"), 5, 0o755, Instant::now()).unwrap();
        let taken = pending.take(7);
        let remover = {
            let pending = pending.clone();
            tokio::spawn(async move { pending.remove(&key("a")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!remover.is_finished(), "waits while the record is posted");
        pending.landed(&taken, true);
        assert!(
            !remover.await.unwrap(),
            "landed: no longer waiting, the store has it"
        );
    }

    #[test]
    fn a_torn_note_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("folders")).unwrap();
        fs::write(dir.path().join("folders/x.json"), b"{\"chan").unwrap();
        let pending = PendingFolders::new(dir.path());
        assert_eq!(pending.recover(), 0);
        assert!(!dir.path().join("folders/x.json").exists());
    }
}
