//! A file being written: its spool file, its size and metadata, and the commit that
//! uploads it.
//!
//! Every open of one file for writing shares one session, so two descriptors see each
//! other's writes, as on a local disk. Writes land in the spool file at their offsets;
//! a commit (close, fsync) uploads the spool's content as a new version of the file
//! when something changed since the last commit. While a commit reads the spool,
//! writes wait (a tokio `RwLock`: writes share it, the commit takes it alone), so an
//! upload never mixes two states of the file.
//!
//! A session also remembers which byte ranges were written or truncated since the
//! version it started from (or last committed), so that a commit uploads only the
//! chunks those ranges touch and keeps the others ([`Volume::put_changes`]): changing a
//! few bytes of a large file re-uploads one chunk, not the file.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use super::inode::NodeKey;
use super::spool::{SpoolFile, SpoolMeta};
use super::{FsError, now_ns};
use crate::format::DirManifest;
use crate::volume::{Delta, Owner, Progress, PutOptions, SmallFile, Volume, VolumeError};

/// How a spooled file is put.
fn options_of(meta: &SpoolMeta) -> PutOptions {
    PutOptions {
        mtime_ns: meta.mtime_ns,
        mode: meta.mode,
        encrypted: meta.encrypted,
        owner: meta.owner.map(|(uid, gid)| Owner { uid, gid }),
        atime_ns: meta.atime_ns,
    }
}

/// The part of a session the attributes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionView {
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    /// An owner given while written (see [`SpoolMeta::owner`]).
    pub owner: Option<Owner>,
    pub atime_ns: Option<i64>,
    /// Its change time: the later of its modification and its last `setattr`.
    pub ctime_ns: i64,
}

struct State {
    key: NodeKey,
    meta: SpoolMeta,
    size: u64,
    /// Changed since the last successful commit.
    dirty: bool,
    /// The byte ranges that changed since the version in `meta.base`.
    changed: ChangedRanges,
    /// Open handles sharing the session.
    opens: usize,
    /// Unlinked while open: never uploaded.
    unlinked: bool,
    /// The spool is described on disk as complete (closed with write-back, or a commit
    /// that failed kept it for a retry): the next change must take that back, or a
    /// crash would publish a torn file.
    described_complete: bool,
    /// When `setattr` last changed it (its change time, if later than its contents').
    attrs_changed_ns: i64,
    /// The path `status` shows while the file is open for writing, when that isn't its
    /// own: an upload through `serve`, written under a temporary name.
    shown_as: Option<String>,
}

/// One file being written.
pub struct WriteSession {
    spool: SpoolFile,
    state: Mutex<State>,
    /// Writes share it; a commit holds it alone.
    content: tokio::sync::RwLock<()>,
    /// Bytes of the upload under way done so far, for `status` (0 between uploads).
    progress: Arc<UploadProgress>,
}

/// How far the upload of a session has come: the bytes the volume reports done.
#[derive(Default)]
struct UploadProgress(AtomicU64);

impl Progress for UploadProgress {
    fn advance(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Reads small spool files whole: (data file, size, path, options) each.
fn read_small_files(
    spooled: Vec<(std::fs::File, u64, String, PutOptions)>,
) -> std::io::Result<Vec<SmallFile>> {
    spooled
        .into_iter()
        .map(|(file, size, path, options)| {
            let mut data = vec![0; size as usize];
            file.read_exact_at(&mut data, 0)?;
            Ok(SmallFile {
                path,
                data,
                options,
            })
        })
        .collect()
}

/// Where a write of `data` at `offset` ends, if it writes anything.
fn write_end(offset: u64, data: &[u8]) -> Option<u64> {
    (!data.is_empty()).then(|| offset.saturating_add(data.len() as u64))
}

fn io_error(context: &str, e: std::io::Error) -> FsError {
    log::warn!("{context}: {e}");
    FsError::Io(format!("{context}: {e}"))
}

impl WriteSession {
    /// A session over `spool`, opened once. The spool holds `size` bytes: the content
    /// of the version in `meta.base` if it isn't empty (an empty spool is taken as
    /// wholly changed).
    pub fn new(key: NodeKey, spool: SpoolFile, meta: SpoolMeta, size: u64) -> WriteSession {
        let mut changed = ChangedRanges::default();
        if size == 0 {
            changed.add(0, u64::MAX);
        }
        WriteSession {
            spool,
            state: Mutex::new(State {
                key,
                meta,
                size,
                dirty: false,
                changed,
                opens: 1,
                unlinked: false,
                described_complete: false,
                attrs_changed_ns: i64::MIN,
                shown_as: None,
            }),
            content: tokio::sync::RwLock::new(()),
            progress: Arc::default(),
        }
    }

    /// A session over the spool of a file a previous mount closed and had not stored
    /// (taken back into the write-back queue at mount, [`super::Fs::adopt_spool`]): held
    /// by no handle, described complete on disk, and wholly to upload.
    pub fn recovered(key: NodeKey, spool: SpoolFile, meta: SpoolMeta, size: u64) -> WriteSession {
        let session = WriteSession::new(key, spool, meta, size);
        {
            let mut state = session.lock();
            state.opens = 0;
            state.dirty = true;
            state.described_complete = true;
            state.changed = ChangedRanges::default();
            state.changed.add(0, u64::MAX);
        }
        session
    }

    /// Bytes of the upload under way done so far (of one file uploaded alone; a batch
    /// of small files goes up in one message, all at once): 0 when none is.
    pub fn uploaded_bytes(&self) -> u64 {
        self.progress.0.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Size, modification time and mode as they are now.
    pub fn state(&self) -> SessionView {
        let state = self.lock();
        SessionView {
            size: state.size,
            mtime_ns: state.meta.mtime_ns,
            mode: state.meta.mode,
            owner: (state.meta.owner).map(|(uid, gid)| Owner { uid, gid }),
            atime_ns: state.meta.atime_ns,
            ctime_ns: state.attrs_changed_ns.max(state.meta.mtime_ns),
        }
    }

    /// The id of its spool file.
    pub fn spool_id(&self) -> String {
        self.spool.id.clone()
    }

    /// Where the file is.
    pub fn key(&self) -> NodeKey {
        self.lock().key.clone()
    }

    /// Shows the file in `status`, while it is open for writing, as `path` in its
    /// channel instead of its own path.
    pub fn show_as(&self, path: String) {
        self.lock().shown_as = Some(path);
    }

    /// The path `status` shows for it while it is open for writing.
    pub fn shown_path(&self) -> String {
        let state = self.lock();
        state
            .shown_as
            .clone()
            .unwrap_or_else(|| state.key.path.clone())
    }

    /// Another handle opened the file.
    pub fn open_one(&self) {
        let mut state = self.lock();
        state.opens += 1;
        if state.opens == 1 {
            self.spool.set_open(true);
        }
    }

    /// A handle was released; true if it was the last.
    pub fn close_one(&self) -> bool {
        let mut state = self.lock();
        state.opens = state.opens.saturating_sub(1);
        if state.opens == 0 {
            // Nothing holds the spool now: its upload can free it.
            self.spool.set_open(false);
        }
        state.opens == 0
    }

    /// Up to `size` bytes from `offset`.
    pub async fn read(&self, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let _shared = self.content.read().await;
        let end = self.lock().size.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Vec::new());
        }
        // The size was read before the spool: a truncation meanwhile (another open
        // with O_TRUNC, say) makes the spool shorter, and the read ends where it does,
        // as a read racing a truncation on a local disk would.
        let mut buffer = vec![0; (end - offset) as usize];
        let mut filled = 0;
        while filled < buffer.len() {
            match self
                .spool
                .data
                .read_at(&mut buffer[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("reading the spool file", e)),
            }
        }
        buffer.truncate(filled);
        Ok(buffer)
    }

    /// Writes `data` at `offset`; if that makes the spool file longer, first waits
    /// for room in the spool ([`super::spool_bound`]), with no lock held, so that
    /// nothing an upload needs waits for this writer.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        if let Some(end) = write_end(offset, data) {
            self.spool.make_room(end).await;
        }
        let _shared = self.content.read().await;
        self.write_unlocked(offset, data)
    }

    /// Writes `data` at `offset` now, if no upload holds the file and the spool has
    /// room; `None` if not (then [`WriteSession::write`] waits). Writing to the spool
    /// is a local write, so a caller that must not wait for the network can do it in
    /// place.
    pub fn try_write(&self, offset: u64, data: &[u8]) -> Option<Result<u32, FsError>> {
        let _shared = self.content.try_read().ok()?;
        if let Some(end) = write_end(offset, data)
            && !self.spool.try_make_room(end)
        {
            return None;
        }
        Some(self.write_unlocked(offset, data))
    }

    /// Writes with the content lock held (shared).
    fn write_unlocked(&self, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        self.spool
            .data
            .write_all_at(data, offset)
            .map_err(|e| io_error("writing the spool file", e))?;
        let mut state = self.lock();
        let end = offset + data.len() as u64;
        state.size = state.size.max(end);
        state.meta.mtime_ns = now_ns();
        state.dirty = true;
        state.changed.add(offset, end);
        self.withdraw_complete(&mut state);
        Ok(data.len() as u32)
    }

    /// After a change: a spool described as complete (to upload) no longer is.
    fn withdraw_complete(&self, state: &mut State) {
        if std::mem::take(&mut state.described_complete) {
            state.meta.committing = false;
            if let Err(e) = self.spool.describe(&state.meta) {
                log::warn!("could not update the spool of {}: {e}", state.meta.path);
            }
        }
    }

    /// Whether the file changed since its last upload (and still has a name to be
    /// uploaded under).
    pub fn is_dirty(&self) -> bool {
        let state = self.lock();
        state.dirty && !state.unlinked
    }

    /// Whether the file is sealed with the key when uploaded.
    pub fn encrypted(&self) -> bool {
        self.lock().meta.encrypted
    }

    /// Handles open on the session.
    pub fn opens(&self) -> usize {
        self.lock().opens
    }

    /// A close with write-back: if the file changed, describes its spool as complete,
    /// so that from now on a mount that dies uploads it at its next start. Returns
    /// whether there is anything to upload.
    pub fn mark_complete(&self) -> Result<bool, FsError> {
        let mut state = self.lock();
        if !state.dirty || state.unlinked {
            return Ok(false);
        }
        if !state.described_complete {
            state.meta = self
                .spool
                .begin_commit(&state.meta)
                .map_err(|e| io_error("saving the spool file", e))?;
            state.described_complete = true;
        }
        Ok(true)
    }

    /// Sets the size (cuts, or extends with zeros).
    pub async fn truncate(&self, size: u64) -> Result<(), FsError> {
        let _shared = self.content.read().await;
        self.spool
            .data
            .set_len(size)
            .map_err(|e| io_error("resizing the spool file", e))?;
        // Counted as it is, without waiting: a cut gives room back, and an extension
        // writes no data (the file is sparse).
        self.spool.recount(size);
        let mut state = self.lock();
        state.size = size;
        state.meta.mtime_ns = now_ns();
        state.dirty = true;
        state.changed.add(size, u64::MAX);
        self.withdraw_complete(&mut state);
        Ok(())
    }

    /// Sets the modification time and/or mode.
    pub fn set_meta(&self, mtime_ns: Option<i64>, mode: Option<u32>) {
        self.set_attrs(mtime_ns, mode, None, None);
    }

    /// Sets what `setattr` asks for (`None`: unchanged), uploaded with the contents.
    pub fn set_attrs(
        &self,
        mtime_ns: Option<i64>,
        mode: Option<u32>,
        owner: Option<Owner>,
        atime_ns: Option<i64>,
    ) {
        let mut state = self.lock();
        if let Some(mtime_ns) = mtime_ns {
            state.meta.mtime_ns = mtime_ns;
        }
        if let Some(mode) = mode {
            state.meta.mode = mode & 0o7777;
        }
        if let Some(owner) = owner {
            state.meta.owner = Some((owner.uid, owner.gid));
        }
        if atime_ns.is_some() {
            state.meta.atime_ns = atime_ns;
        }
        state.attrs_changed_ns = now_ns();
        state.dirty = true;
        if state.described_complete
            && let Err(e) = self.spool.describe(&state.meta)
        {
            // A restart would upload the file with the time and mode it had before.
            log::warn!("could not record the new attributes in the spool: {e}");
        }
    }

    /// The file was unlinked: it won't be uploaded.
    pub fn unlink(&self) {
        self.lock().unlinked = true;
    }

    /// The file was renamed while open: it will be uploaded under its new name.
    pub fn moved_to(&self, key: NodeKey, base: Option<String>) {
        let mut state = self.lock();
        state.meta.path = key.path.clone();
        state.meta.channel = key.channel;
        // What the new name holds now is what the upload goes over (a recovered upload
        // goes ahead only if the name still holds it).
        state.meta.base = base;
        state.key = key;
        if let Err(e) = self.spool.describe(&state.meta) {
            log::warn!("could not record the new name in the spool: {e}");
        }
    }

    /// Waits for any upload of the file to finish and keeps writes and uploads out
    /// while the guard is held (a rename moving the file).
    pub async fn exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.content.write().await
    }

    /// Uploads the spool's content as the file's new version if anything changed since
    /// the last commit. On failure the spool stays marked as committing, so the next
    /// mount uploads it if this one doesn't manage to.
    ///
    /// Returns `false`, uploading nothing, if the file moved to another channel than
    /// `volume`'s while the commit waited for its turn (a rename across channels).
    pub async fn commit(&self, volume: &Volume) -> Result<bool, FsError> {
        let _alone = self.content.write().await;
        if self.lock().key.channel != volume.channel().id {
            return Ok(false);
        }
        let Some((meta, delta)) = self.begin_upload()? else {
            return Ok(true);
        };
        let data = self
            .spool
            .data
            .try_clone()
            .map_err(|e| io_error("reading the spool file", e))?;
        let shown = volume.display(&meta.path);
        self.progress.0.store(0, Ordering::Relaxed);
        let progress: Arc<dyn Progress> = self.progress.clone();
        let put = volume
            .put_changes_with_progress(
                &meta.path,
                data,
                &shown,
                options_of(&meta),
                delta.as_ref(),
                Some(progress),
            )
            .await;
        self.progress.0.store(0, Ordering::Relaxed);
        put.map_err(|e| self.upload_failed(&meta, &shown, &e))?;
        self.uploaded(volume, &meta, &shown);
        Ok(true)
    }

    /// Uploads `sessions`, small files of one channel, together, with the records of
    /// `folders` made in it: their chunks and records in one message
    /// ([`Volume::put_batch`]), all or none of them. Those files that changed since
    /// their last upload are uploaded; the others are left alone.
    ///
    /// Returns the sessions left out because they moved to another channel while the
    /// batch waited for its turn (a rename across channels), to be uploaded there.
    pub async fn commit_small(
        volume: &Volume,
        folders: Vec<DirManifest>,
        sessions: &[Arc<WriteSession>],
    ) -> Result<Vec<Arc<WriteSession>>, FsError> {
        // Each session's content lock, taken in one order (writes take one at a
        // time, so no two batches or writers can wait on each other in a circle).
        let mut ordered: Vec<&Arc<WriteSession>> = sessions.iter().collect();
        ordered.sort_by_key(|s| s.spool.id.clone());
        let mut _alone = Vec::with_capacity(ordered.len());
        for session in &ordered {
            _alone.push(session.content.write().await);
        }
        let mut spooled = Vec::new();
        let mut taken = Vec::new();
        let mut moved = Vec::new();
        for session in sessions {
            if session.lock().key.channel != volume.channel().id {
                moved.push(session.clone());
                continue;
            }
            let Some((meta, _)) = session.begin_upload()? else {
                continue;
            };
            let size = session.lock().size;
            let data = session
                .spool
                .data
                .try_clone()
                .map_err(|e| io_error("reading the spool file", e))?;
            spooled.push((data, size, meta.path.clone(), options_of(&meta)));
            taken.push((session, meta));
        }
        if spooled.is_empty() && folders.is_empty() {
            return Ok(moved);
        }
        // The spool files are read off the async threads (a disk may be slow).
        let read = tokio::task::spawn_blocking(move || read_small_files(spooled))
            .await
            .map_err(|e| FsError::Io(e.to_string()))
            .and_then(|read| read.map_err(|e| io_error("reading the spool file", e)));
        let files = match read {
            Ok(files) => files,
            Err(e) => {
                for (session, meta) in &taken {
                    let failed = VolumeError::Internal(e.to_string());
                    session.upload_failed(meta, &volume.display(&meta.path), &failed);
                }
                return Err(e);
            }
        };
        if let Err(e) = volume.put_batch(folders, files).await {
            let error = FsError::Io(e.to_string());
            for (session, meta) in &taken {
                session.upload_failed(meta, &volume.display(&meta.path), &e);
            }
            return Err(error);
        }
        for (session, meta) in &taken {
            session.uploaded(volume, meta, &volume.display(&meta.path));
        }
        Ok(moved)
    }

    /// With the content lock held alone: if the file changed, describes the spool as
    /// complete (a mount that dies from here on uploads it at its next start) and
    /// returns what to upload: the description, and the ranges changed since the
    /// version it was written over.
    fn begin_upload(&self) -> Result<Option<(SpoolMeta, Option<Delta>)>, FsError> {
        let (meta, delta) = {
            let state = self.lock();
            if !state.dirty || state.unlinked {
                return Ok(None);
            }
            let delta = state.meta.base.clone().map(|base_version| Delta {
                base_version,
                changed: state.changed.ranges(),
            });
            (state.meta.clone(), delta)
        };
        let began = self
            .spool
            .begin_commit(&meta)
            .map_err(|e| io_error("saving the spool file", e))?;
        let mut state = self.lock();
        if !state.described_complete {
            state.meta.committing = began.committing;
            state.meta.boot = began.boot;
            state.meta.completed_ns = began.completed_ns;
            state.meta.synced = began.synced;
            state.described_complete = true;
        }
        Ok(Some((meta, delta)))
    }

    /// An upload failed: the spool is synced and kept for a retry (this mount's or the
    /// next one's). Returns the error to report.
    fn upload_failed(&self, meta: &SpoolMeta, shown: &str, e: &VolumeError) -> FsError {
        log::warn!("{shown}: upload failed: {e}");
        match self.spool.keep_for_retry(meta) {
            Ok(()) => self.lock().described_complete = true,
            Err(e) => log::warn!("could not save the spool of {shown}: {e}"),
        }
        FsError::Io(e.to_string())
    }

    /// An upload landed: the session holds no unuploaded change, and is based on the
    /// version it made.
    fn uploaded(&self, volume: &Volume, meta: &SpoolMeta, shown: &str) {
        let mut state = self.lock();
        // A `setattr` during the upload (it doesn't wait for one) is still to upload:
        // anything `set_attrs` changes.
        state.dirty = state.meta.mtime_ns != meta.mtime_ns
            || state.meta.mode != meta.mode
            || state.meta.owner != meta.owner
            || state.meta.atime_ns != meta.atime_ns;
        state.changed = ChangedRanges::default();
        state.meta.committing = false;
        state.described_complete = false;
        state.meta.base = volume.index().version_of(&meta.path);
        if let Err(e) = self.spool.describe(&state.meta) {
            log::warn!("could not update the spool after uploading {shown}: {e}");
        }
    }

    /// The last handle is gone: removes the spool, unless its content still waits to
    /// be uploaded (a failed commit), which the next mount will retry.
    pub fn finish(&self) {
        let state = self.lock();
        if state.dirty && !state.unlinked {
            if let Err(e) = self.spool.keep_for_retry(&state.meta) {
                log::warn!("could not save the spool of {}: {e}", state.meta.path);
            }
            log::warn!(
                "{} was not uploaded; it stays in the spool and the next mount uploads it",
                state.meta.path
            );
            return;
        }
        self.spool.remove();
    }

    /// Drops a session that was never used.
    pub fn abandon(&self) {
        self.spool.remove();
    }
}

/// Byte ranges, merged as they are added.
#[derive(Debug, Default)]
struct ChangedRanges {
    /// start → end, not overlapping or touching.
    ranges: BTreeMap<u64, u64>,
}

impl ChangedRanges {
    /// Adds `start..end`.
    fn add(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Swallow every range that overlaps or touches the new one.
        if let Some((&before, &before_end)) = self.ranges.range(..=start).next_back()
            && before_end >= start
        {
            start = before;
            end = end.max(before_end);
        }
        let swallowed: Vec<u64> = self.ranges.range(start..=end).map(|(&s, _)| s).collect();
        for other in swallowed {
            if let Some(other_end) = self.ranges.remove(&other) {
                end = end.max(other_end);
            }
        }
        self.ranges.insert(start, end);
    }

    /// The ranges, in order.
    fn ranges(&self) -> Vec<std::ops::Range<u64>> {
        self.ranges
            .iter()
            .map(|(&start, &end)| start..end)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_racing_a_truncation_returns_what_the_spool_holds() {
        let dir = tempfile::tempdir().unwrap();
        let meta = crate::fs::spool::test_meta("f");
        let spool = SpoolFile::create(dir.path(), &meta).unwrap();
        let session = WriteSession::new(NodeKey::new(5, "f"), spool, meta, 0);
        session.write(0, &[7; 100]).await.unwrap();
        // What a truncation by another handle does between a read's look at the size
        // and its read of the spool.
        session.spool.data.set_len(10).unwrap();
        assert_eq!(session.read(0, 100).await.unwrap(), vec![7; 10]);
        assert_eq!(session.read(50, 100).await.unwrap(), Vec::<u8>::new());
        session.abandon();
    }

    #[test]
    fn changed_ranges_merge_what_overlaps_or_touches() {
        let mut changed = ChangedRanges::default();
        changed.add(10, 20);
        changed.add(30, 40);
        changed.add(20, 25); // touches the first
        changed.add(5, 12); // overlaps its start
        changed.add(50, 50); // empty
        assert_eq!(changed.ranges(), vec![5..25, 30..40]);
        changed.add(24, 31); // bridges both
        assert_eq!(changed.ranges(), vec![5..40]);
        changed.add(100, u64::MAX);
        changed.add(0, 1);
        assert_eq!(changed.ranges(), vec![0..1, 5..40, 100..u64::MAX]);
    }
}
