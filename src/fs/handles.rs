//! Open files: the handle table, and the write sessions behind handles opened for
//! writing. Opening a file for reading makes a [`FileReader`] of the version it finds;
//! opening it for writing joins or starts the file's one [`WriteSession`] (a spool
//! file), so that every descriptor of a file sees the others' writes. `flush`, `fsync`
//! and `release` upload (commit) a session; the spool goes with its last handle.
//!
//! As on a local disk, an open file is the file it was opened as, whatever happens to
//! its name meanwhile: a reader keeps reading its version (pinned, so this mount frees
//! none of its messages until it is closed: [`crate::volume::reclaim`]); a session whose
//! name is renamed uploads under the new name, one whose name is unlinked uploads
//! nothing and its close succeeds; and a file that lost its name still answers
//! `getattr` from its handles. The kernel reads through its page cache up to the size
//! it was last told an inode has, so a handle that reads a file of another size than
//! that (the name went to another file between the kernel's lookup and the open) reads
//! around the page cache (`direct_io`), not cut short or padded with zeros.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::inode::{NodeKey, ROOT};
use super::read::FileReader;
use super::spool::{SpoolFile, SpoolMeta};
use super::write::{SessionView, WriteSession};
use super::{Attr, Fs, FsError, OpenFlags, Opened, SetAttr, now_ns, ns_of};
use crate::store::Id;
use crate::volume::{FileEntry, Node, Owner, PinGuard, Volume};

/// What an open file handle reads from.
#[derive(Clone)]
pub(super) enum Handle {
    Read(Arc<FileReader>),
    Write(Arc<WriteSession>),
}

/// An entry of the handle table: the handle, and the inode it was opened on.
pub(super) struct OpenFile {
    ino: u64,
    handle: Handle,
}

impl Handle {
    /// Size, modification time and mode of what the handle reads.
    fn view(&self) -> SessionView {
        match self {
            Handle::Read(reader) => {
                let entry = reader.entry();
                SessionView {
                    size: entry.size,
                    mtime_ns: entry.mtime_ns,
                    mode: entry.mode,
                    owner: None,
                    atime_ns: None,
                    ctime_ns: entry.meta().ctime_ns.unwrap_or(entry.mtime_ns),
                }
            }
            Handle::Write(session) => session.state(),
        }
    }
}

impl Fs {
    // ----- open files -----

    pub(super) fn new_handle(&self, ino: u64, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, OpenFile { ino, handle });
        fh
    }

    /// The attributes of inode `ino` as one of its open handles sees them: for a file
    /// that lost its name (unlinked, or replaced by a rename) while open, which the
    /// kernel still asks about (fstat, and before reads) and which must go on working
    /// as on a local disk.
    /// Several handles of the inode may read different versions (opened before and
    /// after its name was given to another file): `fh`'s is preferred.
    pub(super) fn attr_of_open(&self, ino: u64, fh: Option<u64>) -> Option<Attr> {
        let view = {
            let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
            fh.and_then(|fh| handles.get(&fh))
                .filter(|open| open.ino == ino)
                .or_else(|| handles.values().find(|open| open.ino == ino))
                .map(|open| open.handle.view())?
        };
        // Open, without a name any more: no links.
        Some(Attr {
            nlink: 0,
            ..self.file_attr(ino, view.size, view.mtime_ns, view.mode)
        })
    }

    /// Whether the kernel was last told that inode `ino` has `size` bytes. When it
    /// wasn't, the name `ino` was opened by was given to another file between the
    /// kernel's lookup and the open (a rename over it), and the handle reads that file.
    fn kernel_knows_size(&self, ino: u64, size: u64) -> bool {
        let told = self
            .told_sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .copied();
        let knows = told.is_none_or(|told| told == size);
        if !knows {
            log::debug!(
                "inode {ino} opened as a file of {size} bytes, told {told:?}: reads bypass \
                 the page cache"
            );
        }
        knows
    }

    /// The handle `fh` (a clone: the table's lock is not held while it is used).
    pub(super) fn handle(&self, fh: u64) -> Result<Handle, FsError> {
        self.open_file(fh).map(|(_, handle)| handle)
    }

    /// The inode handle `fh` was opened on, and the handle.
    fn open_file(&self, fh: u64) -> Result<(u64, Handle), FsError> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .map(|open| (open.ino, open.handle.clone()))
            .ok_or(FsError::BadHandle)
    }

    pub(super) fn writable(&self) -> Result<(), FsError> {
        if self.config.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    pub(super) fn spool_meta(
        &self,
        key: &NodeKey,
        mode: u32,
        mtime_ns: i64,
        base: Option<String>,
    ) -> SpoolMeta {
        SpoolMeta {
            channel: key.channel,
            path: key.path.clone(),
            mode,
            mtime_ns,
            encrypted: self.key.is_some(),
            committing: false,
            base,
            synced: false,
            boot: None,
            completed_ns: None,
            owner: None,
            atime_ns: None,
        }
    }

    /// The write session of the file at `key`, started if there is none: a spool file
    /// holding the file's current content (fetched), or nothing if `empty`.
    pub(super) async fn start_session(
        &self,
        key: &NodeKey,
        empty: bool,
    ) -> Result<Arc<WriteSession>, FsError> {
        if let Some(session) = self.join_session(key) {
            if empty {
                session.truncate(0).await?;
            }
            return Ok(session);
        }
        let volume = self.volume(key.channel).await?;
        // The version the session starts from is pinned while it is fetched, so that an
        // overwrite meanwhile can't free it under us.
        let (existing, _pin) = match pinned_file(&volume, &key.path) {
            Ok((file, pin)) => (Some(file), pin),
            Err(FsError::NotFound) => (None, None),
            Err(e) => return Err(e),
        };
        let base = volume.index().version_of(&key.path);
        // Emptying a file with content is a change even if nothing is written after.
        let emptied = empty && existing.as_ref().is_some_and(|f| f.size > 0);
        let (mode, mtime_ns) = existing
            .as_ref()
            .map_or((0o644, now_ns()), |f| (f.mode, f.mtime_ns));
        let meta = self.spool_meta(key, mode, mtime_ns, base);
        let spool = SpoolFile::create(&self.spool_dir, &meta)
            .map_err(|e| FsError::Io(format!("spool {}: {e}", self.spool_dir.display())))?
            .counted(&self.spool_bound, true);
        if let Some(file) = existing.filter(|f| !empty && f.size > 0) {
            // The content fetched is written to the spool: it waits for room as
            // writes do.
            spool.make_room(file.size).await;
            let data = spool
                .data
                .try_clone()
                .map_err(|e| FsError::Io(e.to_string()))?;
            if let Err(e) = volume.get_to_file(&key.path, Arc::new(data), None).await {
                spool.remove();
                return Err(e.into());
            }
            log::debug!("fetched {} ({} bytes) to write it", key.path, file.size);
        }
        let size = spool
            .data
            .metadata()
            .map_err(|e| FsError::Io(e.to_string()))?
            .len();
        spool.recount(size);
        let session = Arc::new(WriteSession::new(key.clone(), spool, meta, size));
        let started = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            // Another open may have started one meanwhile: use that one.
            match sessions.get(key) {
                Some(other) => {
                    other.open_one(); // under the lock, as join_session counts
                    Err(other.clone())
                }
                None => {
                    sessions.insert(key.clone(), session.clone());
                    Ok(())
                }
            }
        };
        if let Err(other) = started {
            session.abandon();
            return Ok(other);
        }
        self.live_spools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.spool_id());
        if emptied {
            session.truncate(0).await?;
        }
        Ok(session)
    }

    /// `open`.
    pub async fn open(&self, ino: u64, flags: OpenFlags) -> Result<Opened, FsError> {
        let key = self.key_of(ino)?;
        if flags.write {
            self.writable()?;
            let session = self.start_session(&key, flags.truncate).await?;
            let fh = self.new_handle(ino, Handle::Write(session));
            return Ok(Opened {
                fh,
                keep_cache: false,
                direct_io: false,
            });
        }
        if let Some(session) = self.join_session(&key) {
            let direct_io = !self.kernel_knows_size(ino, session.state().size);
            let fh = self.new_handle(ino, Handle::Write(session));
            return Ok(Opened {
                fh,
                keep_cache: false,
                direct_io,
            });
        }
        let volume = self.volume(key.channel).await?;
        let (file, pin) = pinned_file(&volume, &key.path)?;
        if let Some(target) = &file.symlink {
            // The kernel follows links itself and never opens one; an adapter that
            // doesn't (serve) gets this.
            return Err(FsError::NotPermitted(format!(
                "{} is a symbolic link (to {target}), which is not followed here",
                key.path
            )));
        }
        if file.special.is_some() {
            // Nor a special file: the kernel gives those their meaning.
            return Err(FsError::NotPermitted(format!(
                "{} is a special file (a FIFO, socket or device), with no bytes to read",
                key.path
            )));
        }
        let direct_io = !self.kernel_knows_size(ino, file.size);
        let keep_cache = !direct_io && {
            let mut last = self.last_opened.lock().unwrap_or_else(|e| e.into_inner());
            let version = (file.id, file.record_message);
            last.insert(ino, version) == Some(version)
        };
        let reader = FileReader::new(
            Arc::new(file),
            volume.fetcher(&key.path),
            self.cache.clone(),
            self.config.read_ahead_chunks,
        )
        .pinned(pin);
        let fh = self.new_handle(ino, Handle::Read(Arc::new(reader)));
        Ok(Opened {
            fh,
            keep_cache,
            direct_io,
        })
    }

    /// `create`: a new, empty file (or, with `O_TRUNC` semantics, an existing one
    /// emptied), opened for writing.
    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        exclusive: bool,
    ) -> Result<(Attr, Opened), FsError> {
        self.create_owned(parent, name, mode, exclusive, Owner::default())
            .await
    }

    /// [`Fs::create`] by `owner` (see [`Fs::owner_of`]): a new file is theirs.
    pub async fn create_owned(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        exclusive: bool,
        owner: Owner,
    ) -> Result<(Attr, Opened), FsError> {
        let (key, volume) = self.new_name(parent, name).await?;
        // Another name of a file with several: the file is written under the name its
        // inode number is known by (where its session is).
        let key = self.known_name(&key, &volume);
        if self.write_back.folders.attrs(&key).is_some() {
            return Err(if exclusive {
                FsError::Exists
            } else {
                FsError::IsADirectory
            });
        }
        let stored = volume.index().node(&key.path).is_some();
        let exists = stored || self.session(&key).is_some();
        if exists && exclusive {
            return Err(FsError::Exists);
        }
        let session = self.start_session(&key, true).await?;
        session.set_meta(Some(now_ns()), Some(mode & 0o7777));
        if !exists && owner != Owner::default() {
            session.set_attrs(None, None, Some(owner), None);
        }
        if !exists {
            self.dir_times.name_changed(&key);
        }
        let fh = self.new_handle(self.ino_of(&key), Handle::Write(session));
        let attr = self.count_lookup(self.attr_of(&key).await?);
        Ok((
            attr,
            Opened {
                fh,
                keep_cache: false,
                direct_io: false,
            },
        ))
    }

    /// `read`.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        match self.handle(fh)? {
            Handle::Read(reader) => reader.read(offset, size).await.map_err(|e| {
                log::warn!("read failed: {e}");
                FsError::Io(e.to_string())
            }),
            Handle::Write(session) => session.read(offset, size).await,
        }
    }

    /// Tells a read handle that its caller downloads the file from `offset` to the
    /// end, once ([`FileReader::advise_download`]: read-ahead at its widest at once,
    /// and the disk cache not filled, as for `get`). Nothing for a write handle.
    pub fn advise_download(&self, fh: u64, offset: u64) {
        if let Ok(Handle::Read(reader)) = self.handle(fh) {
            reader.advise_download(offset);
        }
    }

    /// Shows the file open for writing on `fh` in `status` as `path` (in its channel)
    /// until it is closed: an adapter that writes under a temporary name gives the name
    /// the file will have. Nothing for a read handle.
    pub fn show_as(&self, fh: u64, path: String) {
        if let Ok(Handle::Write(session)) = self.handle(fh) {
            session.show_as(path);
        }
    }

    /// `write`.
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        match self.open_file(fh)? {
            (_, Handle::Read(_)) => Err(FsError::BadHandle),
            (ino, Handle::Write(session)) => {
                let written = session.write(offset, data).await?;
                self.note_written(ino, offset, written);
                Ok(written)
            }
        }
    }

    /// `write`, done at once if it needn't wait (see [`WriteSession::try_write`]): `None`
    /// if it must, and then [`Fs::write`] does it.
    pub fn try_write_now(&self, fh: u64, offset: u64, data: &[u8]) -> Option<Result<u32, FsError>> {
        match self.open_file(fh) {
            Ok((ino, Handle::Write(session))) => {
                let written = session.try_write(offset, data)?;
                if let Ok(written) = written {
                    self.note_written(ino, offset, written);
                }
                Some(written)
            }
            Ok((_, Handle::Read(_))) => Some(Err(FsError::BadHandle)),
            Err(e) => Some(Err(e)),
        }
    }

    /// A write through the kernel grows the size the kernel knows, as it does there.
    fn note_written(&self, ino: u64, offset: u64, written: u32) {
        let end = offset.saturating_add(u64::from(written));
        let mut told = self.told_sizes.lock().unwrap_or_else(|e| e.into_inner());
        let size = told.entry(ino).or_default();
        *size = (*size).max(end);
    }

    /// Uploads a session's content if it changed since its last upload.
    pub(super) async fn commit(&self, session: &Arc<WriteSession>) -> Result<(), FsError> {
        loop {
            let key = session.key();
            let volume = self.volume(key.channel).await?;
            if session.commit(&volume).await? {
                return Ok(());
            }
            // It moved to another channel while the commit waited: upload it there.
        }
    }

    /// `flush` (each `close` of a file descriptor): queues the upload of what was
    /// written ([`super::writeback`]); with write-back off, uploads it, so that close
    /// returns the error if the upload fails.
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        match self.handle(fh)? {
            Handle::Read(_) => Ok(()),
            Handle::Write(session) => self.closed(&session).await,
        }
    }

    /// `fsync`: uploads what was written now, and returns the upload's error.
    pub async fn fsync(&self, fh: u64) -> Result<(), FsError> {
        match self.handle(fh)? {
            Handle::Read(_) => Ok(()),
            Handle::Write(session) => self.synced(&session).await,
        }
    }

    /// `release` (the last close of an open): lets go of the handle, after uploading
    /// anything still unwritten (queued, with write-back); the spool file goes once
    /// nothing holds it open and nothing waits to be uploaded.
    pub async fn release(&self, fh: u64) -> Result<(), FsError> {
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh)
            .map(|open| open.handle);
        let Some(Handle::Write(session)) = handle else {
            return Ok(());
        };
        let mut committed = self.closed(&session).await;
        if session.close_one() {
            // A `setattr` that came while the upload ran (the kernel sends `release`
            // after close returned, so a `touch` may land meanwhile) changed it again:
            // without write-back nothing else would upload that.
            while committed.is_ok() && !self.write_back.enabled() && session.is_dirty() {
                committed = self.closed(&session).await;
            }
            // A file queued for upload stays until the queue has uploaded it; otherwise
            // the session ends (its spool kept if the upload failed).
            let queued = committed.is_ok() && self.write_back.enabled();
            self.retire_session(&session, queued);
        }
        committed
    }

    /// The last handle of a session is gone.
    pub(super) fn end_session(&self, session: &WriteSession) {
        session.finish();
        self.live_spools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&session.spool_id());
    }

    /// `setattr`: size (truncate), modification time, mode.
    pub async fn setattr(
        &self,
        ino: u64,
        fh: Option<u64>,
        changes: SetAttr,
    ) -> Result<Attr, FsError> {
        if ino == ROOT {
            return Err(FsError::NotPermitted("the root can't be changed".into()));
        }
        self.writable()?;
        let key = self.key_of(ino)?;
        let session = match fh.map(|fh| self.handle(fh)) {
            Some(Ok(Handle::Write(session))) => Some(session),
            _ => self.session(&key),
        };
        let mtime_ns = changes.mtime.map(ns_of);
        if let Some(session) = session {
            if let Some(size) = changes.size {
                session.truncate(size).await?;
            }
            session.set_meta(mtime_ns, changes.mode);
            if session.opens() == 0 {
                // A closed file waiting for its upload (or being uploaded): the change
                // goes up as a close's would.
                self.closed(&session).await?;
            }
            return self.attr_of(&key).await;
        }
        if let Some(size) = changes.size {
            // truncate(2) of a file nobody has open: a write session of its own.
            let session = self.start_session(&key, size == 0).await?;
            let result = async {
                session.truncate(size).await?;
                session.set_meta(mtime_ns, changes.mode);
                self.commit(&session).await
            }
            .await;
            if session.close_one() {
                self.sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                self.end_session(&session);
            }
            result?;
            return self.attr_of(&key).await;
        }
        let pending_folder = (mtime_ns.is_some() || changes.mode.is_some())
            && self
                .write_back
                .folders
                .set_attrs(&key, mtime_ns, changes.mode)
                .await;
        if !pending_folder && (mtime_ns.is_some() || changes.mode.is_some()) {
            let volume = self.volume(key.channel).await?;
            volume.set_meta(&key.path, mtime_ns, changes.mode).await?;
        }
        self.dir_times.attrs_changed(&key, mtime_ns.is_some());
        self.attr_of(&key).await
    }
}

/// The file at `path` and a pin of the messages its chunks are in
/// ([`Volume::pin_messages`]), so that no freeing pass deletes them while it is open. A
/// version whose messages are being freed was replaced meanwhile: the newer one is
/// taken. One the volume can't pin otherwise is read unpinned, with a log line (as
/// before pins: a read of a chunk freed under it then fails, it never mixes versions).
pub(super) fn pinned_file(
    volume: &Volume,
    path: &str,
) -> Result<(FileEntry, Option<PinGuard>), FsError> {
    let mut attempts = 0;
    loop {
        let file = match volume.index().node(path) {
            Some(Node::File(file)) => file.clone(),
            Some(Node::Dir(_)) => return Err(FsError::IsADirectory),
            None => return Err(FsError::NotFound),
        };
        let own = volume.channel().id;
        let mut messages: Vec<(Id, Id)> = file
            .chunks
            .iter()
            .map(|c| (c.channel.unwrap_or(own), c.message))
            .collect();
        messages.sort_unstable();
        messages.dedup();
        let why = match volume.pin_messages(&messages) {
            Ok(pin) => return Ok((file, Some(pin))),
            Err(why) => why,
        };
        attempts += 1;
        let replaced = volume
            .index()
            .file(path)
            .is_none_or(|now| (now.id, now.record_message) != (file.id, file.record_message));
        if !replaced || attempts == 3 {
            log::info!("{}: read without a pin ({why})", volume.display(path));
            return Ok((file, None));
        }
    }
}
