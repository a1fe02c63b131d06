//! The spool: files being written through the mount, kept on local disk until their
//! record is posted.
//!
//! A file opened for writing lives in a spool file (`<id>.data`) beside a small JSON
//! description (`<id>.json`: channel, path, mode, mtime, and whether a commit has
//! begun). Writes go to the data file; closing (or fsync) commits: the description is
//! rewritten with `committing: true` (atomically: temp file, fsync, rename), and only
//! then does the upload start. Both files are removed only after the record is posted.
//!
//! So if the daemon dies (kill -9, a crash) or the store fails mid-upload, the next
//! mount finds every description with `committing: true` and finishes those uploads;
//! until then the file shows its last committed version, never a half-written one. A
//! description without `committing` belongs to a file that was never closed: its writer
//! had not finished, so publishing it would publish a torn file; the next mount sets it
//! aside (renamed `.orphan`, with a log line naming it) instead.
//!
//! The data file is not synced before the upload: after a daemon's death its content is
//! intact in the page cache, and syncing a large file first would double the time a
//! close takes. Only a machine that goes down can lose unsynced data, so a commit
//! records the kernel's boot id, and recovery trusts an unsynced data file only in the
//! boot that wrote it. A spool that outlives its commit (the upload failed, and waits
//! for a retry) is synced and marked `synced` right away, so it survives a reboot too.
//! With write-back, files wait after their close: the whole spool is synced at once
//! ([`sync_spool`], one `syncfs`) within a second of a close, and a mark in the spool
//! folder (`synced-through`: the boot and the time the sync vouches for) tells the
//! next boot which commits it covered. An unsynced spool found after a reboot, covered
//! by no mark, is set aside, since it may be torn.
//!
//! The spool is bounded ([`super::spool_bound`]): a spool file that is
//! [`SpoolFile::counted`] counts by its size until it is removed or set aside, and a
//! writer that would make it longer than the bound allows waits for uploads to free
//! room ([`SpoolFile::make_room`]).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::spool_bound::SpoolBound;
use crate::store::Id;

/// What a spool file is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolMeta {
    pub channel: Id,
    pub path: String,
    pub mode: u32,
    pub mtime_ns: i64,
    pub encrypted: bool,
    /// A commit began: the data file is complete and must be uploaded.
    pub committing: bool,
    /// The state of the path the content was written over ([`Index::version_of`]): a
    /// recovered upload goes ahead only if the path is still in that state, so it
    /// never overwrites a newer version, or brings back a file deleted meanwhile.
    ///
    /// [`Index::version_of`]: crate::volume::Index::version_of
    #[serde(default)]
    pub base: Option<String>,
    /// The data file is synced to disk as it is (see the module docs).
    #[serde(default)]
    pub synced: bool,
    /// The boot in which the commit began (`/proc/sys/kernel/random/boot_id`).
    #[serde(default)]
    pub boot: Option<String>,
    /// When the commit began (Unix ns): a sync of the spool after it covers this file
    /// too (see [`sync_spool`]).
    #[serde(default)]
    pub completed_ns: Option<i64>,
    /// An owner given while it was written (its creator, or a `chown`): user and group
    /// ids, each `None` for the mounting user's. `None`: the stored file's is kept.
    #[serde(default)]
    pub owner: Option<(Option<u32>, Option<u32>)>,
    /// An access time given while it was written (`utimensat`).
    #[serde(default)]
    pub atime_ns: Option<i64>,
}

/// The id of the running boot, if the kernel tells it.
pub fn current_boot() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
}

impl SpoolMeta {
    /// Whether the data file can be trusted to hold what was written: synced, by
    /// itself or by a sync of the whole spool after its commit began (`synced`, the
    /// spool's mark), or written in this boot.
    fn data_trusted(&self, synced: Option<&SyncedThrough>) -> bool {
        let covered = synced.is_some_and(|mark| {
            self.boot.as_ref() == Some(&mark.boot)
                && self.completed_ns.is_some_and(|at| at <= mark.through_ns)
        });
        self.synced || covered || (self.boot.is_some() && self.boot == current_boot())
    }
}

/// One spooled file.
#[derive(Debug)]
pub struct SpoolFile {
    pub id: String,
    pub data: File,
    data_path: PathBuf,
    meta_path: PathBuf,
    /// The spool's bound, if the file is counted in it ([`SpoolFile::counted`]).
    bound: Option<Arc<SpoolBound>>,
}

impl SpoolFile {
    /// Creates an empty spool file in `dir` described by `meta`.
    pub fn create(dir: &Path, meta: &SpoolMeta) -> std::io::Result<SpoolFile> {
        fs::create_dir_all(dir)?;
        let id = crate::crypto::encode_hex(&random_id()?);
        let data_path = dir.join(format!("{id}.data"));
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&data_path)?;
        let spool = SpoolFile {
            meta_path: dir.join(format!("{id}.json")),
            id,
            data,
            data_path,
            bound: None,
        };
        spool.describe(meta)?;
        Ok(spool)
    }

    /// Rewrites the description atomically (temp file, rename); synced to disk only if
    /// `meta` says the data is (`synced`): an unsynced description matters only within
    /// this boot, when the page cache holds it anyway (see the module docs), and syncing
    /// it would cost every close of a small file two more disk flushes.
    pub fn describe(&self, meta: &SpoolMeta) -> std::io::Result<()> {
        let json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
        replace_file(&self.meta_path, &json, meta.synced)
    }

    /// Marks the data complete: described as committing, in this boot (synced only if
    /// the boot can't be told). Returns the description as written.
    pub fn begin_commit(&self, meta: &SpoolMeta) -> std::io::Result<SpoolMeta> {
        let boot = current_boot();
        if boot.is_none() {
            self.data.sync_all()?;
        }
        let meta = SpoolMeta {
            committing: true,
            synced: boot.is_none(),
            boot,
            completed_ns: Some(unix_now_ns()),
            ..meta.clone()
        };
        self.describe(&meta)?;
        Ok(meta)
    }

    /// Keeps the data for an upload after this one (this mount's retry, or the next
    /// mount's, even after a reboot): synced, and described as committing and synced.
    pub fn keep_for_retry(&self, meta: &SpoolMeta) -> std::io::Result<()> {
        self.data.sync_all()?;
        self.describe(&SpoolMeta {
            committing: true,
            synced: true,
            boot: current_boot(),
            ..meta.clone()
        })
    }

    /// Removes both files (after the record is posted, or when abandoning the file).
    pub fn remove(&self) {
        for path in [&self.data_path, &self.meta_path] {
            if let Err(e) = fs::remove_file(path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                log::warn!("could not remove spool file {}: {e}", path.display());
            }
        }
        self.uncount();
    }

    /// Keeps this spool file where the user can find it (renamed `.orphan`), instead of
    /// uploading it.
    pub fn set_aside(&self) {
        set_aside(&self.meta_path, &self.data_path, NEWER_IN_STORE);
        self.uncount();
    }

    // ----- the spool's bound ([`super::spool_bound`]) -----

    /// Counts the file in the spool's `bound` from now on, by the size its data has
    /// now, as held open by a handle (a file being written) or not (one waiting for an
    /// upload). It stays counted until it is removed or set aside, even after this
    /// value is dropped (a file kept for a retry is still on disk).
    pub fn counted(mut self, bound: &Arc<SpoolBound>, open: bool) -> SpoolFile {
        let size = self.data.metadata().map_or(0, |m| m.len());
        bound.track(&self.id, size, open);
        self.bound = Some(bound.clone());
        self
    }

    /// Waits until the spool has room for the data to be `size` bytes long.
    pub async fn make_room(&self, size: u64) {
        if let Some(bound) = &self.bound {
            bound.grow(&self.id, size).await;
        }
    }

    /// Whether the data may be `size` bytes long without waiting (then it is counted
    /// so); false if [`SpoolFile::make_room`] must wait.
    pub fn try_make_room(&self, size: u64) -> bool {
        self.bound
            .as_ref()
            .is_none_or(|bound| bound.try_grow(&self.id, size))
    }

    /// Counts the data as `size` bytes long (cut, or its size read back).
    pub fn recount(&self, size: u64) {
        if let Some(bound) = &self.bound {
            bound.resize(&self.id, size);
        }
    }

    /// Whether a handle holds the file open (then no upload frees it).
    pub fn set_open(&self, open: bool) {
        if let Some(bound) = &self.bound {
            bound.set_open(&self.id, open);
        }
    }

    fn uncount(&self) {
        if let Some(bound) = &self.bound {
            bound.release(&self.id);
        }
    }

    /// The spooled files in `dir` whose commit had begun, the latest commit first (so
    /// that of two unfinished uploads of one file, the newer one is the one that
    /// lands), leaving out those `skip` names (files still being written). With
    /// `set_aside_unfinished` (at mount, when nothing can be writing yet), those that
    /// never began a commit are renamed `.orphan` and logged; otherwise they are left
    /// alone.
    pub fn recover(
        dir: &Path,
        skip: &dyn Fn(&str) -> bool,
        set_aside_unfinished: bool,
    ) -> std::io::Result<Vec<(SpoolFile, SpoolMeta)>> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let synced = read_synced_through(dir);
        let mut found = Vec::new();
        for entry in entries {
            let meta_path = entry?.path();
            if meta_path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(id) = meta_path
                .file_stem()
                .and_then(|s| s.to_str())
                .map(String::from)
            else {
                continue;
            };
            if skip(&id) {
                continue;
            }
            let data_path = dir.join(format!("{id}.data"));
            let meta: Option<SpoolMeta> = fs::read(&meta_path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            let Some(meta) = meta.filter(|m| m.committing) else {
                if set_aside_unfinished {
                    set_aside(&meta_path, &data_path, NEVER_CLOSED);
                }
                continue;
            };
            if !meta.data_trusted(synced.as_ref()) {
                set_aside(&meta_path, &data_path, UNSYNCED);
                continue;
            }
            let data = match OpenOptions::new().read(true).write(true).open(&data_path) {
                Ok(data) => data,
                Err(e) => {
                    log::warn!(
                        "spool {}: its data is gone ({e}); {} can't be recovered",
                        meta_path.display(),
                        meta.path
                    );
                    set_aside(&meta_path, &data_path, NEVER_CLOSED);
                    continue;
                }
            };
            let began = fs::metadata(&meta_path)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            found.push((
                began,
                SpoolFile {
                    id,
                    data,
                    data_path,
                    meta_path,
                    bound: None,
                },
                meta,
            ));
        }
        found.sort_by_key(|(began, ..)| std::cmp::Reverse(*began));
        Ok(found
            .into_iter()
            .map(|(_, file, meta)| (file, meta))
            .collect())
    }
}

/// The spool's sync mark: every spool file whose commit began by `through_ns` (Unix ns)
/// in boot `boot` was on disk when the mark was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedThrough {
    pub boot: String,
    pub through_ns: i64,
}

/// The name of the sync mark in the spool folder (not a spool file: no `.json`).
const SYNCED_MARK: &str = "synced-through";

/// Syncs the file system the spool is on (`syncfs`: every spool file's data and
/// description in one call, however many there are), then writes the sync mark, so
/// that after a power cut the spool files whose commit began before the sync are
/// trusted. Blocking.
pub fn sync_spool(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let Some(boot) = current_boot() else {
        // Without a boot id every commit syncs its own file (begin_commit).
        return Ok(());
    };
    // A commit that began just before may still be writing its description: the mark
    // covers only commits begun a little before the sync (the next sync covers those).
    let through_ns = unix_now_ns() - SYNC_MARGIN_NS;
    let folder = File::open(dir)?;
    // SAFETY: syncfs on a descriptor we own; no memory is passed.
    if unsafe { libc::syncfs(folder.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mark =
        serde_json::to_vec(&SyncedThrough { boot, through_ns }).map_err(std::io::Error::other)?;
    replace_file(&dir.join(SYNCED_MARK), &mark, true)
}

/// Replaces `path` with `bytes` atomically (a temp file beside it, renamed over it),
/// mode 0600; with `sync`, the file and the folder's entry are on disk when it returns.
pub(super) fn replace_file(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(".tmp");
    let temp = PathBuf::from(temp_name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(bytes)?;
    if sync {
        file.sync_all()?;
    }
    fs::rename(&temp, path)?;
    if sync && let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// How long before a sync the commits it vouches for began, at the latest.
const SYNC_MARGIN_NS: i64 = 100_000_000;

/// The spool's sync mark, if there is a readable one.
fn read_synced_through(dir: &Path) -> Option<SyncedThrough> {
    let bytes = fs::read(dir.join(SYNCED_MARK)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn unix_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

const NEVER_CLOSED: &str = "a file that was being written when the mount stopped, never \
                            closed (its last closed version is in the store)";
const UNSYNCED: &str = "a file whose upload the machine's restart interrupted before it was \
                        on disk, so it may be incomplete (its last version is in the store)";
const NEWER_IN_STORE: &str = "an unfinished upload of a file that changed since in the store";

/// Keeps a spool file that can't be uploaded where the user can find it, logging `why`.
fn set_aside(meta_path: &Path, data_path: &Path, why: &str) {
    for path in [meta_path, data_path] {
        if path.exists() {
            let orphan = path.with_extension(format!(
                "{}.orphan",
                path.extension().and_then(|e| e.to_str()).unwrap_or("")
            ));
            match fs::rename(path, &orphan) {
                Ok(()) => log::warn!("set aside {}: {why}", orphan.display()),
                Err(e) => log::warn!("could not set aside {}: {e}", path.display()),
            }
        }
    }
}

pub(super) fn random_id() -> std::io::Result<[u8; 12]> {
    let mut id = [0u8; 12];
    getrandom::fill(&mut id).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(id)
}

/// A spool description for tests: `path` in channel 5, encrypted, not committing.
#[cfg(test)]
pub(crate) fn test_meta(path: &str) -> SpoolMeta {
    SpoolMeta {
        owner: None,
        atime_ns: None,
        channel: 5,
        path: path.into(),
        mode: 0o644,
        mtime_ns: 1,
        encrypted: true,
        committing: false,
        base: None,
        synced: false,
        boot: None,
        completed_ns: None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek};

    use super::*;

    fn meta(path: &str) -> SpoolMeta {
        test_meta(path)
    }

    #[test]
    fn files_being_written_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let live = SpoolFile::create(dir.path(), &meta("live")).unwrap();
        live.begin_commit(&meta("live")).unwrap();
        let _unfinished = SpoolFile::create(dir.path(), &meta("unfinished")).unwrap();
        let skip_live = |id: &str| id == live.id;
        assert!(
            SpoolFile::recover(dir.path(), &skip_live, false)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            4,
            "nothing set aside"
        );
    }

    #[test]
    fn only_files_whose_commit_began_are_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let mut done = SpoolFile::create(dir.path(), &meta("done")).unwrap();
        done.data.write_all(b"all of it").unwrap();
        done.begin_commit(&meta("done")).unwrap();
        let mut torn = SpoolFile::create(dir.path(), &meta("torn")).unwrap();
        torn.data.write_all(b"half").unwrap();
        drop((done, torn));
        let recovered = SpoolFile::recover(dir.path(), &|_| false, true).unwrap();
        assert_eq!(recovered.len(), 1);
        let (mut file, meta) = recovered.into_iter().next().unwrap();
        assert_eq!(meta.path, "done");
        assert!(meta.committing);
        let mut text = String::new();
        file.data.rewind().unwrap();
        file.data.read_to_string(&mut text).unwrap();
        assert_eq!(text, "all of it");
        file.remove();
        let left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(
            left.iter().all(|name| name.ends_with(".orphan")),
            "{left:?}"
        );
        assert!(
            SpoolFile::recover(dir.path(), &|_| false, true)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn an_unsynced_commit_is_trusted_only_in_the_boot_that_wrote_it() {
        if current_boot().is_none() {
            return; // no boot id here: every commit is synced
        }
        let dir = tempfile::tempdir().unwrap();
        let this_boot = SpoolFile::create(dir.path(), &meta("this-boot")).unwrap();
        this_boot.begin_commit(&meta("this-boot")).unwrap();
        let other_boot = SpoolFile::create(dir.path(), &meta("other-boot")).unwrap();
        other_boot
            .describe(&SpoolMeta {
                committing: true,
                boot: Some("another-boot".into()),
                ..meta("other-boot")
            })
            .unwrap();
        let kept = SpoolFile::create(dir.path(), &meta("kept")).unwrap();
        kept.keep_for_retry(&meta("kept")).unwrap();
        kept.describe(&SpoolMeta {
            committing: true,
            synced: true,
            boot: Some("another-boot".into()),
            ..meta("kept")
        })
        .unwrap();
        let recovered: Vec<String> = SpoolFile::recover(dir.path(), &|_| false, true)
            .unwrap()
            .into_iter()
            .map(|(_, meta)| meta.path)
            .collect();
        assert_eq!(recovered.len(), 2, "{recovered:?}");
        assert!(recovered.contains(&"this-boot".to_string()));
        assert!(recovered.contains(&"kept".to_string()));
        assert!(
            dir.path()
                .join(format!("{}.data.orphan", other_boot.id))
                .exists()
        );
    }

    #[test]
    fn a_sync_of_the_spool_vouches_for_the_commits_begun_before_it() {
        if current_boot().is_none() {
            return; // no boot id here: every commit is synced
        }
        let dir = tempfile::tempdir().unwrap();
        // Written in another boot (a power cut since): "before" began its commit before
        // a sync of the spool, "after" after it.
        let at = |ns: i64| SpoolMeta {
            committing: true,
            boot: Some("earlier-boot".into()),
            completed_ns: Some(ns),
            ..meta("x")
        };
        let before = SpoolFile::create(dir.path(), &meta("before")).unwrap();
        before
            .describe(&SpoolMeta {
                path: "before".into(),
                ..at(1_000)
            })
            .unwrap();
        let after = SpoolFile::create(dir.path(), &meta("after")).unwrap();
        after
            .describe(&SpoolMeta {
                path: "after".into(),
                ..at(3_000)
            })
            .unwrap();
        let mark = SyncedThrough {
            boot: "earlier-boot".into(),
            through_ns: 2_000,
        };
        std::fs::write(
            dir.path().join(SYNCED_MARK),
            serde_json::to_vec(&mark).unwrap(),
        )
        .unwrap();
        let recovered: Vec<String> = SpoolFile::recover(dir.path(), &|_| false, true)
            .unwrap()
            .into_iter()
            .map(|(_, meta)| meta.path)
            .collect();
        assert_eq!(recovered, vec!["before".to_string()]);
        assert!(
            dir.path()
                .join(format!("{}.data.orphan", after.id))
                .exists()
        );

        // A real sync writes a mark of this boot that covers what began before it.
        let now = SpoolFile::create(dir.path(), &meta("now")).unwrap();
        let began = now.begin_commit(&meta("now")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150));
        sync_spool(dir.path()).unwrap();
        let written = read_synced_through(dir.path()).unwrap();
        assert_eq!(Some(written.boot.clone()), current_boot());
        assert!(began.completed_ns.unwrap() <= written.through_ns);
    }
}
