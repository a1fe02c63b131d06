//! What the mount is doing, for `dcloud-fs status`: the files waiting for their upload
//! and those being uploaded ([`super::writeback`]), the failures among them, and when
//! the channels were last refreshed from the store ([`Fs::poll`]).
//!
//! [`Fs::status`] takes a snapshot: one short hold of the write-back queue's lock (no
//! store call, nothing that waits), so asking often costs the mount nothing. The
//! snapshot is plain data that serializes to the JSON `status --json` prints; the
//! command line adds what only it knows (the mount point, the store's pace) and serves
//! it over a socket ([`crate::cli`]). It stays bounded: at most [`MAX_FILES_LISTED`]
//! files are listed, the totals count them all.
//!
//! Files open for writing that have changed (a `cp` under way, an upload that `serve`
//! is still receiving) are listed last, as *writing*, with the bytes written so far:
//! they join the queue when closed. They are counted apart from the queue's totals.
//!
//! Upload progress is the bytes the volume reports done for a file uploaded alone
//! ([`super::write::WriteSession::uploaded_bytes`]: chunks posted, and the unchanged
//! chunks it keeps); a batch of small files goes up in one message, so its files show
//! 0 until it lands.
//!
//! Not shown: the uploads an earlier mount left in the spool, which the mount finishes
//! at its start and on each poll outside the queue ([`super::recovery`]); they are in
//! the log.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Fs;

/// Most files a status lists (the totals count every one).
pub const MAX_FILES_LISTED: usize = 1000;

/// A snapshot of the mount's uploads and refreshes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FsStatus {
    /// Seconds from a file's last close to its upload (0: close uploads).
    pub write_back_secs: u64,
    pub totals: Totals,
    /// The files waiting and being uploaded: those being uploaded first, then those
    /// that failed, then those waiting, then those still open for writing; each group
    /// by channel and path. At most [`MAX_FILES_LISTED`].
    pub files: Vec<FileStatus>,
    /// Files left out of `files` (past [`MAX_FILES_LISTED`]).
    pub files_not_listed: usize,
    /// The files whose last upload failed, with the error (at most
    /// [`MAX_FILES_LISTED`]).
    pub failures: Vec<Failure>,
    /// The last refresh of the channels from the store; None before the first.
    pub last_refresh: Option<Refresh>,
}

/// What the queue holds in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Files waiting or being uploaded.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Of `files`: waiting for their upload (for their settle time, or for a retry
    /// after a failure).
    pub waiting: usize,
    /// Their bytes.
    pub waiting_bytes: u64,
    /// Of `files`: being uploaded now.
    pub uploading: usize,
    /// Their bytes.
    pub uploading_bytes: u64,
    /// Bytes of the uploads under way done so far.
    pub uploaded_bytes: u64,
    /// Of `files`: whose last upload failed (waiting for a retry, or being retried).
    pub failing: usize,
    /// Folders made through the mount whose record waits ([`super::folders`]).
    #[serde(default)]
    pub folders: usize,
    /// Files open for writing that have changed, not yet in the queue (not counted in
    /// `files`).
    #[serde(default)]
    pub writing: usize,
    /// Their bytes so far.
    #[serde(default)]
    pub writing_bytes: u64,
}

/// Where a file is in its way to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// Being uploaded.
    Uploading,
    /// Its last upload failed; waiting for the retry.
    Failed,
    /// Closed, waiting for its settle time to pass.
    Waiting,
    /// Still open for writing (not yet in the queue); its size is what is written so
    /// far.
    Writing,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Uploading => "uploading",
            FileState::Failed => "failed",
            FileState::Waiting => "waiting",
            FileState::Writing => "writing",
        }
    }
}

/// One file in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileStatus {
    /// The channel (top-level folder) it is in.
    pub channel: String,
    /// Its path in the channel.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    pub state: FileState,
    /// Failed uploads so far.
    pub failures: u32,
    /// The last failed upload's error.
    pub last_error: Option<String>,
    /// While uploading: the bytes done so far (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_bytes: Option<u64>,
    /// While waiting or failed: seconds until its upload starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_in_secs: Option<f64>,
}

/// A file whose last upload failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub channel: String,
    pub path: String,
    pub failures: u32,
    pub error: String,
}

/// The last refresh of the channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refresh {
    /// When the last refresh that reached every channel ended (Unix milliseconds);
    /// None if none has yet.
    pub unix_ms: Option<u64>,
    /// Seconds since then.
    pub ago_secs: Option<f64>,
    /// Why the latest refresh failed, if it did (the channels keep what was read
    /// before).
    pub error: Option<String>,
}

/// When the channels were refreshed, as [`Fs`] notes it.
#[derive(Debug, Default)]
pub(super) struct Refreshes {
    last_ok: Option<SystemTime>,
    error: Option<String>,
    tried: bool,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

impl Fs {
    /// A refresh of the channels ended, having failed with `error` or not.
    pub(super) fn note_refresh(&self, error: Option<String>) {
        let mut refreshes = self.refreshes.lock().unwrap_or_else(|e| e.into_inner());
        refreshes.tried = true;
        if error.is_none() {
            refreshes.last_ok = Some(SystemTime::now());
        }
        refreshes.error = error;
    }

    /// What the mount is doing now (see the module docs).
    pub fn status(&self) -> FsStatus {
        let queued = self.write_back.files();
        let in_queue: std::collections::HashSet<String> =
            queued.iter().map(|q| q.session.spool_id()).collect();
        let mut files: Vec<FileStatus> = queued
            .into_iter()
            .map(|queued| {
                let key = queued.session.key();
                let size = queued.session.state().size;
                let state = if queued.uploading {
                    FileState::Uploading
                } else if queued.last_error.is_some() {
                    FileState::Failed
                } else {
                    FileState::Waiting
                };
                FileStatus {
                    channel: self
                        .channel_by_id(key.channel)
                        .map_or_else(|| key.channel.to_string(), |c| c.name),
                    path: key.path,
                    size,
                    state,
                    failures: queued.failures,
                    last_error: queued.last_error,
                    uploaded_bytes: queued
                        .uploading
                        .then(|| queued.session.uploaded_bytes().min(size)),
                    starts_in_secs: queued.due_in.map(|d| round_secs(d, 1)),
                }
            })
            .collect();
        let writing = self.being_written(&in_queue);
        files.sort_by(|a, b| {
            let rank = |f: &FileStatus| f.state as u8;
            (rank(a), &a.channel, &a.path).cmp(&(rank(b), &b.channel, &b.path))
        });
        let (uploading, waiting): (Vec<&FileStatus>, Vec<&FileStatus>) =
            files.iter().partition(|f| f.state == FileState::Uploading);
        let bytes = |files: &[&FileStatus]| files.iter().map(|f| f.size).sum::<u64>();
        let totals = Totals {
            files: files.len(),
            bytes: bytes(&uploading) + bytes(&waiting),
            waiting: waiting.len(),
            waiting_bytes: bytes(&waiting),
            uploading: uploading.len(),
            uploading_bytes: bytes(&uploading),
            uploaded_bytes: uploading.iter().filter_map(|f| f.uploaded_bytes).sum(),
            failing: files.iter().filter(|f| f.last_error.is_some()).count(),
            folders: self.write_back.summary().folders,
            writing: writing.len(),
            writing_bytes: writing.iter().map(|f| f.size).sum(),
        };
        files.extend(writing);
        let failures = files
            .iter()
            .filter_map(|f| {
                Some(Failure {
                    channel: f.channel.clone(),
                    path: f.path.clone(),
                    failures: f.failures,
                    error: f.last_error.clone()?,
                })
            })
            .take(MAX_FILES_LISTED)
            .collect();
        let files_not_listed = files.len().saturating_sub(MAX_FILES_LISTED);
        files.truncate(MAX_FILES_LISTED);
        FsStatus {
            write_back_secs: self.config.write_back.as_secs(),
            totals,
            files,
            files_not_listed,
            failures,
            last_refresh: self.last_refresh(),
        }
    }

    /// The files open for writing that changed and aren't in the queue, by channel
    /// and path.
    fn being_written(&self, in_queue: &std::collections::HashSet<String>) -> Vec<FileStatus> {
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| s.opens() > 0 && s.is_dirty() && !in_queue.contains(&s.spool_id()))
            .cloned()
            .collect();
        let mut files: Vec<FileStatus> = sessions
            .iter()
            .map(|session| {
                let channel = session.key().channel;
                FileStatus {
                    channel: self
                        .channel_by_id(channel)
                        .map_or_else(|| channel.to_string(), |c| c.name),
                    path: session.shown_path(),
                    size: session.state().size,
                    state: FileState::Writing,
                    failures: 0,
                    last_error: None,
                    uploaded_bytes: None,
                    starts_in_secs: None,
                }
            })
            .collect();
        files.sort_by(|a, b| (&a.channel, &a.path).cmp(&(&b.channel, &b.path)));
        files
    }

    fn last_refresh(&self) -> Option<Refresh> {
        let refreshes = self.refreshes.lock().unwrap_or_else(|e| e.into_inner());
        if !refreshes.tried {
            return None;
        }
        let ago = refreshes.last_ok.map(|at| {
            let elapsed = SystemTime::now().duration_since(at).unwrap_or_default();
            round_secs(elapsed, 1)
        });
        Some(Refresh {
            unix_ms: refreshes.last_ok.map(unix_ms),
            ago_secs: ago,
            error: refreshes.error.clone(),
        })
    }
}

/// Seconds, to `digits` decimals.
fn round_secs(duration: Duration, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (duration.as_secs_f64() * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_back_from_its_json() {
        let status = FsStatus {
            write_back_secs: 30,
            totals: Totals {
                files: 2,
                bytes: 3000,
                waiting: 1,
                waiting_bytes: 1000,
                uploading: 1,
                uploading_bytes: 2000,
                uploaded_bytes: 1024,
                failing: 0,
                folders: 0,
                writing: 0,
                writing_bytes: 0,
            },
            files: vec![
                FileStatus {
                    channel: "docs".into(),
                    path: "a/b.txt".into(),
                    size: 2000,
                    state: FileState::Uploading,
                    failures: 0,
                    last_error: None,
                    uploaded_bytes: Some(1024),
                    starts_in_secs: None,
                },
                FileStatus {
                    channel: "docs".into(),
                    path: "c".into(),
                    size: 1000,
                    state: FileState::Waiting,
                    failures: 0,
                    last_error: None,
                    uploaded_bytes: None,
                    starts_in_secs: Some(12.5),
                },
            ],
            files_not_listed: 0,
            failures: Vec::new(),
            last_refresh: Some(Refresh {
                unix_ms: Some(1_700_000_000_000),
                ago_secs: Some(1.5),
                error: None,
            }),
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["files"][0]["state"], "uploading");
        assert_eq!(json["files"][0]["uploaded_bytes"], 1024);
        assert!(json["files"][1].get("uploaded_bytes").is_none());
        assert_eq!(json["files"][1]["starts_in_secs"], 12.5);
        assert_eq!(json["totals"]["bytes"], 3000);
        let back: FsStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn seconds_are_rounded() {
        assert_eq!(round_secs(Duration::from_millis(1234), 1), 1.2);
        assert_eq!(round_secs(Duration::from_millis(1250), 1), 1.3);
    }
}
