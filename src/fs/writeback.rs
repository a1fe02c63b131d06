//! Write-back: a close returns once the file's content is in the spool, and its upload
//! follows in the background, as rclone's `--vfs-cache-mode writes` does.
//!
//! The rules, all of them here:
//!
//! - **Close** (`flush`) of a changed file marks its spool complete (the description
//!   says `committing`, so a mount killed from then on uploads it at the next start, see
//!   [`super::spool`]) and queues it, due [`FsConfig::write_back`] later. A file closed
//!   again before then is due later again: a file written in several goes within the
//!   settle time is uploaded once. Close returns no upload error: like a local disk's
//!   writeback, errors show at `fsync`.
//! - **`fsync`** uploads the file now (waiting for an upload under way) and returns that
//!   upload's result.
//! - **The queue** uploads due files a few uploads at a time ([`PARALLEL_UPLOADS`]).
//!   Due files are taken only while an upload slot is free; while all are busy (at
//!   Discord's pace, a message takes about a second) they gather. Small files of one
//!   channel taken together go up packed, a message's worth at a time
//!   ([`WriteSession::commit_small`]: their chunks share attachments, and one record
//!   puts them all, in one message, all or none; see [`crate::volume::pack`]); the
//!   others one by one, through the same commit as a close without write-back
//!   ([`WriteSession::commit`]). A failed upload stays in the spool
//!   and is tried again, alone, after a backoff (2 s, doubling up to a minute); each
//!   failure is logged. Writes to a file while its upload is under way wait for it.
//! - **Folders** made through the mount wait here too ([`super::folders`] states their
//!   rules): a close in their channel makes them due with it, and the channel's
//!   waiting folders ride in the first message of the files taken with them (or go
//!   alone, in one message, when they fall due with no file).
//! - **Until it is uploaded**, a closed file keeps its write session: lookups, listings,
//!   attributes and reads see the new content from the spool. Once uploaded and with no
//!   handle left, the session ends and its spool goes.
//! - **Durability**: a second after a close at most, the spool's file system is synced
//!   (`syncfs`, one call for every file waiting) and the time it was synced up to is
//!   recorded in the spool ([`super::spool::sync_spool`]), so that after a
//!   power cut the next mount trusts, and uploads, every file closed before that time.
//! - **A full spool** ([`super::spool_bound`]): while a writer waits for room, the
//!   queue uploads every file waiting now, without the settle time (those in a retry's
//!   backoff keep it), so that room frees up; the writer goes on as their spool goes.
//! - **Stopping** ([`Fs::shutdown`]) uploads everything queued, logging progress.
//! - **`write_back` of zero** turns all this off: close uploads and returns the
//!   upload's error, as before write-back existed.
//!
//! [`FsConfig::write_back`]: super::FsConfig::write_back
//! [`Fs::shutdown`]: super::Fs::shutdown

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::folders::{PendingFolders, TakenFolder};
use super::spool_bound::SpoolBound;
use super::write::WriteSession;
use super::{Fs, FsError};

/// Uploads the queue runs at once.
pub const PARALLEL_UPLOADS: usize = 4;
/// How long after a close the spool is synced to disk at the latest.
pub const SYNC_AFTER: Duration = Duration::from_secs(1);
/// The pause before the first retry of a failed upload; doubled after each failure.
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// The longest pause between retries.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// A file waiting for its upload.
struct Waiting {
    session: Arc<WriteSession>,
    due: Instant,
    /// Failed uploads so far.
    failures: u32,
}

/// What the queue holds, by spool id.
#[derive(Default)]
struct Queue {
    waiting: HashMap<String, Waiting>,
    uploading: HashSet<String>,
    /// Failures of the files being uploaded, carried over if they fail again.
    failures: HashMap<String, u32>,
    /// A close happened since the spool was last synced: when the sync is due.
    sync_due: Option<Instant>,
    /// The last upload error of each file that has one, for `status` and the log.
    errors: HashMap<String, String>,
    /// The uploads under way, for `status`: the queue's, and those of `fsync` and of
    /// closes with write-back off, with how many of them each file has (two may
    /// overlap: an `fsync` waits for the queue's upload of its file).
    shown_uploading: HashMap<String, (Arc<WriteSession>, usize)>,
}

impl Queue {
    /// An upload of `session` began.
    fn show_uploading(&mut self, session: &Arc<WriteSession>) {
        self.shown_uploading
            .entry(session.spool_id())
            .or_insert_with(|| (session.clone(), 0))
            .1 += 1;
    }

    /// An upload of the file with spool `id` ended.
    fn unshow_uploading(&mut self, id: &str) {
        if let Some((_, count)) = self.shown_uploading.get_mut(id) {
            *count -= 1;
            if *count == 0 {
                self.shown_uploading.remove(id);
            }
        }
    }
}

/// A file waiting for its upload or being uploaded, as `status` shows it.
pub struct QueuedFile {
    pub session: Arc<WriteSession>,
    /// Its upload is under way (else it waits: for its settle time, or for a retry).
    pub uploading: bool,
    /// Failed uploads so far.
    pub failures: u32,
    /// The last upload's error, if it failed.
    pub last_error: Option<String>,
    /// How long until its upload starts, if it waits.
    pub due_in: Option<Duration>,
}

/// Shows an upload that doesn't go through the queue (`fsync`, a close with
/// write-back off) in `status` while it runs.
pub(super) struct ShownUpload<'a> {
    queue: &'a WriteBack,
    id: String,
}

impl Drop for ShownUpload<'_> {
    fn drop(&mut self) {
        self.queue.lock().unshow_uploading(&self.id);
    }
}

/// The write-back queue of one mount.
pub struct WriteBack {
    settle: Duration,
    spool_dir: PathBuf,
    queue: Mutex<Queue>,
    /// Folders made through the mount, waiting for their record ([`super::folders`]).
    pub(super) folders: PendingFolders,
    /// Something was queued, or an upload ended.
    changed: Notify,
    uploads: Semaphore,
}

/// What is waiting, for logs and `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueSummary {
    pub files: usize,
    pub bytes: u64,
    pub failing: usize,
    /// Folders waiting for their record.
    pub folders: usize,
}

/// What the worker takes off the queue at once: files, each with whether an upload of
/// it failed before, and the folders of their channels (and of channels whose folders
/// are due) waiting for their record.
#[derive(Default)]
pub(super) struct Taken {
    files: Vec<(Arc<WriteSession>, bool)>,
    folders: Vec<TakenFolder>,
}

impl Taken {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.folders.is_empty()
    }
}

/// What one upload does: files alone, or a batch of small files with folders.
struct Unit {
    folders: Vec<TakenFolder>,
    files: Vec<Arc<WriteSession>>,
}

impl WriteBack {
    /// A queue that uploads files `settle` after their last close.
    pub fn new(settle: Duration, spool_dir: PathBuf) -> Arc<WriteBack> {
        Arc::new(WriteBack {
            settle,
            folders: PendingFolders::new(&spool_dir),
            spool_dir,
            queue: Mutex::default(),
            changed: Notify::new(),
            uploads: Semaphore::new(PARALLEL_UPLOADS),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether closes upload later (else at once).
    pub fn enabled(&self) -> bool {
        !self.settle.is_zero()
    }

    /// Notes a folder made at `key`, its record due the settle time from now.
    pub(super) fn add_folder(
        &self,
        key: &super::inode::NodeKey,
        mtime_ns: i64,
        mode: u32,
    ) -> std::io::Result<()> {
        let now = Instant::now();
        self.folders.add(key, mtime_ns, mode, now + self.settle)?;
        self.lock().sync_due.get_or_insert(now + SYNC_AFTER);
        self.changed.notify_one();
        Ok(())
    }

    /// Queues `session`, due the settle time from now (later again if it was queued).
    fn schedule(&self, session: &Arc<WriteSession>) {
        self.schedule_in(session, self.settle);
    }

    /// Queues `session`, due `settle` from now.
    pub(super) fn schedule_in(&self, session: &Arc<WriteSession>, settle: Duration) {
        let now = Instant::now();
        let mut queue = self.lock();
        let id = session.spool_id();
        let failures = queue.waiting.get(&id).map_or(0, |w| w.failures);
        queue.waiting.insert(
            id,
            Waiting {
                session: session.clone(),
                due: now + settle,
                failures,
            },
        );
        queue.sync_due.get_or_insert(now + SYNC_AFTER);
        drop(queue);
        self.folders.defer(session.key().channel, now + settle);
        self.changed.notify_one();
    }

    /// Takes the files due by `now` off the waiting list, as being uploaded, and the
    /// folders of their channels, and of those whose folders are due.
    fn take_due(&self, now: Instant) -> Taken {
        let files = self.take_due_files(now);
        let mut channels = self.folders.due_channels(now);
        channels.extend(files.iter().map(|(s, _)| s.key().channel));
        let folders = channels
            .into_iter()
            .flat_map(|channel| self.folders.take(channel))
            .collect();
        Taken { files, folders }
    }

    /// Takes the files due by `now` off the waiting list, as being uploaded, each with
    /// whether an upload of it failed before.
    fn take_due_files(&self, now: Instant) -> Vec<(Arc<WriteSession>, bool)> {
        let mut queue = self.lock();
        let due: Vec<String> = queue
            .waiting
            .iter()
            .filter(|(id, w)| w.due <= now && !queue.uploading.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        let mut sessions = Vec::with_capacity(due.len());
        for id in due {
            if let Some(waiting) = queue.waiting.remove(&id) {
                queue.failures.insert(id.clone(), waiting.failures);
                queue.uploading.insert(id);
                queue.show_uploading(&waiting.session);
                sessions.push((waiting.session, waiting.failures > 0));
            }
        }
        sessions
    }

    /// When the worker must look again: the next file due (if an upload could start),
    /// or the next sync.
    fn next_wake(&self) -> Option<Instant> {
        let can_upload = self.uploads.available_permits() > 0;
        let queue = self.lock();
        let next_due = queue
            .waiting
            .iter()
            .filter(|(id, _)| can_upload && !queue.uploading.contains(*id))
            .map(|(_, w)| w.due)
            .chain(self.folders.next_due().filter(|_| can_upload))
            .min();
        match (next_due, queue.sync_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Notes how the upload of `session` ended. Returns whether the file is done with:
    /// uploaded and not queued again meanwhile.
    fn finished(&self, session: &Arc<WriteSession>, outcome: &Result<(), FsError>) -> bool {
        let id = session.spool_id();
        let mut queue = self.lock();
        queue.uploading.remove(&id);
        queue.unshow_uploading(&id);
        let failures = queue.failures.remove(&id).unwrap_or(0);
        let done = match outcome {
            Ok(()) => {
                queue.errors.remove(&id);
                !queue.waiting.contains_key(&id) && !session.is_dirty()
            }
            Err(e) => {
                queue.errors.insert(id.clone(), e.to_string());
                let failures = failures + 1;
                let retry_in = FIRST_RETRY
                    .saturating_mul(1 << (failures - 1).min(10))
                    .min(MAX_RETRY);
                log::warn!(
                    "{}: upload failed ({e}); it stays in the spool, next try in {retry_in:?}",
                    session.key().path
                );
                let waiting = queue.waiting.entry(id).or_insert_with(|| Waiting {
                    session: session.clone(),
                    due: Instant::now() + retry_in,
                    failures: 0,
                });
                waiting.failures = failures;
                false
            }
        };
        drop(queue);
        self.changed.notify_one();
        done
    }

    /// Takes `session` off the queue (uploaded by `fsync`, or unlinked); an upload of it
    /// under way is left to end.
    pub(super) fn forget(&self, session: &WriteSession) {
        let id = session.spool_id();
        let mut queue = self.lock();
        queue.waiting.remove(&id);
        queue.errors.remove(&id);
    }

    /// The sessions queued or being uploaded.
    pub fn summary(&self) -> QueueSummary {
        let queue = self.lock();
        QueueSummary {
            files: queue.waiting.len() + queue.uploading.len(),
            bytes: queue.waiting.values().map(|w| w.session.state().size).sum(),
            failing: queue.errors.len(),
            folders: self.folders.len(),
        }
    }

    /// Every file waiting or being uploaded, for `status`.
    pub fn files(&self) -> Vec<QueuedFile> {
        let now = Instant::now();
        let queue = self.lock();
        let mut files: Vec<QueuedFile> = queue
            .shown_uploading
            .iter()
            .map(|(id, (session, _))| QueuedFile {
                session: session.clone(),
                uploading: true,
                failures: queue
                    .failures
                    .get(id)
                    .or(queue.waiting.get(id).map(|w| &w.failures))
                    .copied()
                    .unwrap_or(0),
                last_error: queue.errors.get(id).cloned(),
                due_in: None,
            })
            .collect();
        files.extend(
            queue
                .waiting
                .iter()
                .filter(|(id, _)| !queue.shown_uploading.contains_key(*id))
                .map(|(id, waiting)| QueuedFile {
                    session: waiting.session.clone(),
                    uploading: false,
                    failures: waiting.failures,
                    last_error: queue.errors.get(id).cloned(),
                    due_in: Some(waiting.due.saturating_duration_since(now)),
                }),
        );
        files
    }

    /// Shows an upload of `session` that doesn't go through the queue in `status`,
    /// until the guard is dropped.
    pub(super) fn show_upload(&self, session: &Arc<WriteSession>) -> ShownUpload<'_> {
        self.lock().show_uploading(session);
        ShownUpload {
            queue: self,
            id: session.spool_id(),
        }
    }

    /// Wakes the worker, to see that the filesystem is gone.
    pub(super) fn stop(&self) {
        self.changed.notify_one();
    }

    /// Whether nothing is queued or being uploaded.
    fn is_empty(&self) -> bool {
        let queue = self.lock();
        queue.waiting.is_empty() && queue.uploading.is_empty() && self.folders.len() == 0
    }

    /// Syncs the spool if a close asked for it by now.
    async fn sync_if_due(&self, now: Instant) {
        let due = {
            let mut queue = self.lock();
            match queue.sync_due {
                Some(at) if at <= now => queue.sync_due.take(),
                _ => None,
            }
        };
        if due.is_none() {
            return;
        }
        let dir = self.spool_dir.clone();
        let synced = tokio::task::spawn_blocking(move || super::spool::sync_spool(&dir)).await;
        match synced {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!(
                "could not sync the spool {} to disk ({e}); files closed meanwhile are \
                 safe from a crash of the mount, not from a power cut",
                self.spool_dir.display()
            ),
            Err(e) => log::warn!("syncing the spool: {e}"),
        }
    }
}

impl Fs {
    /// Starts the worker that uploads the queue (once, when the filesystem is made).
    pub(super) fn start_write_back(self: &Arc<Fs>) {
        if !self.write_back.enabled() {
            return;
        }
        let queue = self.write_back.clone();
        let fs = Arc::downgrade(self);
        tokio::spawn(run_queue(queue, fs, self.spool_bound.clone()));
    }

    /// A close of a file written through `session`: queued for upload (or uploaded
    /// now, with write-back off).
    pub(super) async fn closed(&self, session: &Arc<WriteSession>) -> Result<(), FsError> {
        if !self.write_back.enabled() {
            let _shown = self.write_back.show_upload(session);
            return self.commit(session).await;
        }
        if !session.mark_complete()? {
            return Ok(());
        }
        self.write_back.schedule(session);
        Ok(())
    }

    /// `fsync` of a file written through `session`: uploads it now.
    pub(super) async fn synced(&self, session: &Arc<WriteSession>) -> Result<(), FsError> {
        let shown = self.write_back.show_upload(session);
        self.commit(session).await?;
        drop(shown);
        if !session.is_dirty() {
            self.write_back.forget(session);
        }
        Ok(())
    }

    /// Uploads files and folders taken off the queue: per channel, the small files
    /// that haven't failed before together, a message's worth at a time, with the
    /// channel's folders in the first ([`Volume::put_batch`]), the others one by one;
    /// each at most [`PARALLEL_UPLOADS`] at once. Each file whose upload is done with
    /// ends its session if no handle holds it.
    ///
    /// [`Volume::put_batch`]: crate::volume::Volume::put_batch
    async fn upload_taken(&self, taken: Taken) {
        type ChannelWork = (Vec<(Arc<WriteSession>, bool)>, Vec<TakenFolder>);
        let mut by_channel: HashMap<u64, ChannelWork> = HashMap::new();
        for (session, failed_before) in taken.files {
            by_channel
                .entry(session.key().channel)
                .or_default()
                .0
                .push((session, failed_before));
        }
        for folder in taken.folders {
            by_channel
                .entry(folder.key.channel)
                .or_default()
                .1
                .push(folder);
        }
        let mut units = Vec::new();
        for (channel, (sessions, folders)) in by_channel {
            units.extend(self.upload_units(channel, sessions, folders).await);
        }
        let uploads = units.into_iter().map(|unit| async move {
            let slot = self.write_back.uploads.acquire().await;
            self.upload_unit(unit).await;
            drop(slot);
            // A slot is free: the worker may take what fell due meanwhile.
            self.write_back.changed.notify_one();
        });
        futures::future::join_all(uploads).await;
    }

    /// How the files and folders of one channel go up: batches of small files (the
    /// folders with the first, or alone), and single files.
    async fn upload_units(
        &self,
        channel: u64,
        sessions: Vec<(Arc<WriteSession>, bool)>,
        folders: Vec<TakenFolder>,
    ) -> Vec<Unit> {
        let alone = |files| Unit {
            folders: Vec::new(),
            files,
        };
        let Ok(volume) = self.volume(channel).await else {
            // Each alone: its upload reports why the channel can't be opened.
            let mut units: Vec<Unit> = sessions.into_iter().map(|(s, _)| alone(vec![s])).collect();
            units.push(Unit {
                folders,
                files: Vec::new(),
            });
            return units;
        };
        let limits = volume.pack_limits();
        let (mut small, mut units) = (Vec::new(), Vec::new());
        for (session, failed_before) in sessions {
            let size = session.state().size;
            if !failed_before && size <= limits.file_limit(session.encrypted()) {
                small.push((size, session));
            } else {
                units.push(alone(vec![session]));
            }
        }
        // A message's worth of small files to a unit: packed together. The folders
        // ride with the first (and count in its budget).
        let mut budget = limits.budget();
        for _ in &folders {
            budget.take(0, true);
        }
        let mut batch = Unit {
            folders,
            files: Vec::new(),
        };
        for (size, session) in small {
            if !budget.take(size, session.encrypted()) {
                units.push(std::mem::replace(&mut batch, alone(Vec::new())));
                budget = limits.budget();
                budget.take(size, session.encrypted());
            }
            batch.files.push(session);
        }
        if !batch.files.is_empty() || !batch.folders.is_empty() {
            units.push(batch);
        }
        units
    }

    /// Uploads one unit (one file, or a batch of small ones and folders) and notes how
    /// it ended.
    async fn upload_unit(&self, unit: Unit) {
        let mut moved = Vec::new();
        let outcome = match (unit.files.as_slice(), unit.folders.is_empty()) {
            ([one], true) => self.commit(one).await,
            (batch, _) => {
                let channel = unit
                    .folders
                    .first()
                    .map_or_else(|| batch[0].key().channel, |f| f.key.channel);
                match self.volume(channel).await {
                    Ok(volume) => {
                        let folders = unit.folders.iter().map(|f| f.record.clone()).collect();
                        WriteSession::commit_small(&volume, folders, batch)
                            .await
                            .map(|left_out| moved = left_out)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if !unit.folders.is_empty() {
            if let Err(e) = &outcome {
                log::warn!(
                    "recording {} folder(s) failed ({e}); they stay in the spool, next try \
                     soon",
                    unit.folders.len()
                );
            }
            self.write_back
                .folders
                .landed(&unit.folders, outcome.is_ok());
        }
        let outcome = outcome.map_err(|e| e.to_string());
        for session in &unit.files {
            let mut outcome = outcome.clone().map_err(FsError::Io);
            if moved.iter().any(|m| Arc::ptr_eq(m, session)) {
                // Renamed to another channel while the batch waited: uploaded there.
                outcome = self.commit(session).await;
            }
            if self.write_back.finished(session, &outcome) {
                self.retire_session(session, true);
            }
        }
    }

    /// Uploads everything queued now, and waits for uploads under way (at shutdown).
    /// A file whose upload fails stays in the spool for the next mount. Returns how
    /// many files could not be uploaded.
    pub(super) async fn drain_write_back(&self) -> usize {
        let summary = self.write_back.summary();
        if summary.files > 0 || summary.folders > 0 {
            log::info!(
                "uploading the {} file(s) ({:.1} MiB) and {} folder(s) waiting before \
                 stopping",
                summary.files,
                summary.bytes as f64 / (1024.0 * 1024.0),
                summary.folders
            );
        }
        let mut failed = 0;
        loop {
            let changed = self.write_back.changed.notified();
            let everything = Instant::now() + Duration::from_secs(86_400);
            let due = self.write_back.take_due(everything);
            if due.is_empty() {
                if self.write_back.is_empty() {
                    return failed;
                }
                // Uploads the worker started are under way: wait for them.
                let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
                continue;
            }
            let sessions: Vec<Arc<WriteSession>> =
                due.files.iter().map(|(s, _)| s.clone()).collect();
            let folders = due.folders.clone();
            self.upload_taken(due).await;
            // Folders whose record failed stay in the spool for the next mount.
            if folders
                .iter()
                .any(|f| self.write_back.folders.attrs(&f.key).is_some())
            {
                let failed_folders: Vec<TakenFolder> = folders
                    .into_iter()
                    .filter(|f| self.write_back.folders.attrs(&f.key).is_some())
                    .collect();
                failed += failed_folders.len();
                self.write_back.folders.forget(&failed_folders);
            }
            // Failed ones are not retried here: the spool keeps them for the next mount.
            for session in &sessions {
                if session.is_dirty() {
                    self.write_back.forget(session);
                    failed += 1;
                }
            }
            let left = self.write_back.summary();
            if left.files > 0 || left.folders > 0 {
                log::info!(
                    "{} file(s) and {} folder(s) still to upload",
                    left.files,
                    left.folders
                );
            }
        }
    }
}

/// The worker: uploads files as they fall due (at once while writers wait for room in
/// the spool), syncs the spool after closes; ends when the filesystem is gone.
async fn run_queue(queue: Arc<WriteBack>, fs: Weak<Fs>, bound: Arc<SpoolBound>) {
    loop {
        let changed = queue.changed.notified();
        let pressed = bound.pressed();
        let now = Instant::now();
        if bound.writers_waiting() {
            queue.hurry(now);
        }
        queue.sync_if_due(now).await;
        // Files fall due one by one; while every upload slot is busy they gather, and
        // go up together when one frees: at Discord's pace a message costs about a
        // second, so the busier the channel, the more files each message packs.
        let taken = if queue.uploads.available_permits() > 0 {
            queue.take_due(now)
        } else {
            Taken::default()
        };
        if !taken.is_empty() {
            let Some(fs) = fs.upgrade() else { return };
            tokio::spawn(async move { fs.upload_taken(taken).await });
        }
        if fs.strong_count() == 0 {
            return;
        }
        match queue.next_wake() {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changed => {}
                    _ = pressed => {}
                }
            }
            None => tokio::select! {
                _ = changed => {}
                _ = pressed => {}
            },
        }
    }
}

// ----- the spool's bound -----

impl WriteBack {
    /// Makes every file waiting due by `now`, but those waiting for a retry after a
    /// failure (a store that is down is not asked more often): writers wait for the
    /// room their uploads free ([`super::spool_bound`]).
    fn hurry(&self, now: Instant) {
        let mut queue = self.lock();
        for waiting in queue.waiting.values_mut() {
            if waiting.failures == 0 && waiting.due > now {
                waiting.due = now;
            }
        }
    }
}
