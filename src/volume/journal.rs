//! A local journal of uploads in progress, so that an upload killed outright (SIGKILL, a
//! crash, a power cut) doesn't leave its data messages in the channel for ever.
//!
//! A put stores its chunks in data messages first and posts the record that makes them
//! a file last. If the process dies in between, the data messages are orphans: nothing
//! refers to them, so no replay shows them, but they take space. So every upload writes
//! a small journal file when it starts — which file id, which process, since when — and
//! removes it once the upload is committed or cleaned up. Every data message carries its
//! file's id in its content (see [`crate::format`]), so the journal needs nothing more:
//! when a channel is opened, each journal of an upload to it whose process is gone is
//! reclaimed by reading the channel from the upload's start and deleting our data
//! messages of that file id that nothing uses (if the record landed before the crash,
//! they are in use and stay). That closes even the window between a message being
//! stored and the uploader hearing of it.
//!
//! Journals live beside the index cache, `<cache>/uploads/<store>/<channel>-<file id>.json`,
//! and cover the uploads made on this machine with a cache directory.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::index::Own;
use super::reclaim::{Facts, Verdict, verdict};
use crate::format::{self, FileId, MessageKind};
use crate::store::local::process_alive;
use crate::store::{HistoryCursor, Id, MAX_HISTORY_PAGE, Store, StoreError, snowflake_at_ms};

/// How far before a journal's start time the reclaim reads (clocks of this machine and
/// the store's may differ a little).
const CLOCK_SLACK_MS: u64 = 60_000;

#[derive(Debug, Serialize, Deserialize)]
struct JournalFile {
    /// The process doing the upload.
    pid: u32,
    /// The file id of the version being uploaded.
    file: FileId,
    /// When the upload started, Unix milliseconds.
    started_ms: u64,
}

/// The journal of one upload. Dropping it without [`UploadJournal::close`] leaves the
/// file for a later reclaim, as a crash does.
#[derive(Debug)]
pub struct UploadJournal {
    path: PathBuf,
}

impl UploadJournal {
    /// Starts the journal of an upload of `file` to `channel`.
    pub fn start(dir: &Path, channel: Id, file: FileId) -> std::io::Result<UploadJournal> {
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let state = JournalFile {
            pid: std::process::id(),
            file,
            started_ms,
        };
        let path = dir.join(format!("{channel}-{file}.json"));
        let json = serde_json::to_vec(&state).expect("journal serializes");
        super::write_private_atomically(&path, &json)?;
        Ok(UploadJournal { path })
    }

    /// The upload is over (committed, or cleaned up): the journal goes.
    pub fn close(self) {
        if let Err(e) = fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!(
                "could not remove the upload journal {}: {e}",
                self.path.display()
            );
        }
    }
}

/// The journal of an upload, started only when the upload first posts a data message:
/// a file that fits in the message of its record (most small files) leaves nothing to
/// reclaim and costs no journal.
#[derive(Debug)]
pub struct LazyJournal {
    /// Where journals go; `None`: keep none.
    dir: Option<PathBuf>,
    channel: Id,
    file: FileId,
    started: Mutex<Option<UploadJournal>>,
}

impl LazyJournal {
    /// The journal an upload of `file` to `channel` will keep in `dir`.
    pub fn new(dir: Option<PathBuf>, channel: Id, file: FileId) -> LazyJournal {
        LazyJournal {
            dir,
            channel,
            file,
            started: Mutex::new(None),
        }
    }

    /// Starts the journal if it isn't yet; call before posting a data message. A
    /// journal that can't be written is a warning, not a failure of the upload.
    pub fn ensure_started(&self) {
        let Some(dir) = &self.dir else { return };
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if started.is_some() {
            return;
        }
        let journal = fs::create_dir_all(dir)
            .and_then(|()| UploadJournal::start(dir, self.channel, self.file));
        match journal {
            Ok(journal) => *started = Some(journal),
            Err(e) => log::warn!(
                "no upload journal in {} ({e}); if this upload dies midway, what it stored stays",
                dir.display()
            ),
        }
    }

    /// The upload is over: removes the journal, if one was started.
    pub fn close(&self) {
        let started = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(journal) = started {
            journal.close();
        }
    }
}

/// Reclaims the journals in `dir` of uploads to `channel` whose process is gone: deletes
/// the data messages by `user` of their file ids that `in_use` (asked only if such a
/// journal exists: it walks the whole index) doesn't name, then the journals. Returns
/// how many messages were deleted.
pub async fn reclaim_abandoned(
    dir: &Path,
    store: &dyn Store,
    channel: Id,
    user: Id,
    in_use: &(dyn Fn() -> HashSet<Id> + Sync),
) -> Result<usize, StoreError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(0);
    };
    let prefix = format!("{channel}-");
    let mut deleted = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(&prefix) || !name.ends_with(".json") {
            continue;
        }
        let path = entry.path();
        let Some(journal) = fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<JournalFile>(&bytes).ok())
        else {
            continue; // not one of ours
        };
        if process_alive(journal.pid) {
            continue;
        }
        let orphans = find_orphans(store, channel, user, &journal, &in_use()).await?;
        let failed = super::transfer::delete_quietly(store, channel, &orphans).await;
        deleted += orphans.len() - failed.len();
        if failed.is_empty() {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(deleted)
}

/// Our data messages of the journal's file, since it started, that nothing uses.
async fn find_orphans(
    store: &dyn Store,
    channel: Id,
    user: Id,
    journal: &JournalFile,
    in_use: &HashSet<Id>,
) -> Result<Vec<Id>, StoreError> {
    let mut cursor = snowflake_at_ms(journal.started_ms.saturating_sub(CLOCK_SLACK_MS));
    let mut orphans = Vec::new();
    loop {
        let page = store
            .history(channel, HistoryCursor::After(cursor), MAX_HISTORY_PAGE)
            .await?;
        for message in &page {
            let of_this_upload = message.author_id == user
                && format::classify(&message.content) == MessageKind::Data(Some(journal.file));
            if !of_this_upload {
                continue;
            }
            // The same rules as every deletion (see `reclaim`): ours, and unused.
            let facts = Facts {
                own: Some(Own::Data(journal.file)),
                used_here: in_use.contains(&message.id),
                pinned: false,
                moved_away: false,
                holder: None,
            };
            if verdict(&facts) == Verdict::Delete {
                orphans.push(message.id);
            }
        }
        match page.iter().map(|m| m.id).max() {
            Some(newest) if page.len() == MAX_HISTORY_PAGE => cursor = newest,
            _ => return Ok(orphans),
        }
    }
}
