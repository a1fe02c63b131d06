//! Open files: the handle table, and the write sessions behind handles opened for
//! writing. Opening a file for reading makes a [`FileReader`] of the version it finds;
//! opening it for writing joins or starts the file's one [`WriteSession`] (a spool
//! file), so that every descriptor of a file sees the others' writes. `flush`, `fsync`
//! and `release` upload (commit) a session; the spool goes with its last handle.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::inode::{NodeKey, ROOT};
use super::read::FileReader;
use super::spool::{SpoolFile, SpoolMeta};
use super::write::WriteSession;
use super::{Attr, Fs, FsError, OpenFlags, Opened, SetAttr, check_name, now_ns, ns_of};
use crate::volume::Node;

/// What an open file handle reads from.
#[derive(Clone)]
pub(super) enum Handle {
    Read(Arc<FileReader>),
    Write(Arc<WriteSession>),
}

impl Fs {
    // ----- open files -----

    pub(super) fn new_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, handle);
        fh
    }

    /// The handle `fh` (a clone: the table's lock is not held while it is used).
    pub(super) fn handle(&self, fh: u64) -> Result<Handle, FsError> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned()
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
        }
    }

    /// The write session of the file at `key`, started if there is none: a spool file
    /// holding the file's current content (fetched), or nothing if `empty`.
    pub(super) async fn start_session(
        &self,
        key: &NodeKey,
        empty: bool,
    ) -> Result<Arc<WriteSession>, FsError> {
        if let Some(session) = self.session(key) {
            session.open_one();
            if empty {
                session.truncate(0).await?;
            }
            return Ok(session);
        }
        let volume = self.volume(key.channel).await?;
        let existing = match volume.index().node(&key.path) {
            Some(Node::File(file)) => Some(file.clone()),
            Some(Node::Dir(_)) => return Err(FsError::IsADirectory),
            None => None,
        };
        let (mode, mtime_ns) = existing
            .as_ref()
            .map_or((0o644, now_ns()), |f| (f.mode, f.mtime_ns));
        let base = volume.index().version_of(&key.path);
        let meta = self.spool_meta(key, mode, mtime_ns, base);
        let spool = SpoolFile::create(&self.spool_dir, &meta)
            .map_err(|e| FsError::Io(format!("spool {}: {e}", self.spool_dir.display())))?;
        if let Some(file) = existing.filter(|f| !empty && f.size > 0) {
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
        let session = Arc::new(WriteSession::new(key.clone(), spool, meta, size));
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        // Another open may have started one meanwhile: use that one.
        if let Some(other) = sessions.get(key) {
            session.abandon();
            other.open_one();
            return Ok(other.clone());
        }
        sessions.insert(key.clone(), session.clone());
        self.live_spools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.spool_id());
        Ok(session)
    }

    /// `open`.
    pub async fn open(&self, ino: u64, flags: OpenFlags) -> Result<Opened, FsError> {
        let key = self.key_of(ino)?;
        if flags.write {
            self.writable()?;
            let session = self.start_session(&key, flags.truncate).await?;
            let fh = self.new_handle(Handle::Write(session));
            return Ok(Opened {
                fh,
                keep_cache: false,
            });
        }
        if let Some(session) = self.session(&key) {
            session.open_one();
            let fh = self.new_handle(Handle::Write(session));
            return Ok(Opened {
                fh,
                keep_cache: false,
            });
        }
        let volume = self.volume(key.channel).await?;
        let file = match volume.index().node(&key.path) {
            Some(Node::File(file)) => file.clone(),
            Some(Node::Dir(_)) => return Err(FsError::IsADirectory),
            None => return Err(FsError::NotFound),
        };
        let keep_cache = {
            let mut last = self.last_opened.lock().unwrap_or_else(|e| e.into_inner());
            let version = (file.id, file.record_message);
            last.insert(ino, version) == Some(version)
        };
        let reader = FileReader::new(
            Arc::new(file),
            volume.fetcher(&key.path),
            self.cache.clone(),
            self.config.read_ahead_chunks,
        );
        let fh = self.new_handle(Handle::Read(Arc::new(reader)));
        Ok(Opened { fh, keep_cache })
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
        self.writable()?;
        check_name(name)?;
        if parent == ROOT {
            return Err(FsError::NotPermitted(
                "files live in channels: the root holds only channel folders".into(),
            ));
        }
        let key = self.key_of(parent)?.child(name);
        let volume = self.volume(key.channel).await?;
        crate::format::validate_path(&key.path).map_err(|e| FsError::InvalidName(e.to_string()))?;
        let stored = volume.index().node(&key.path).is_some();
        let exists = stored || self.session(&key).is_some();
        if exists && exclusive {
            return Err(FsError::Exists);
        }
        let session = self.start_session(&key, true).await?;
        session.set_meta(Some(now_ns()), Some(mode & 0o7777));
        let fh = self.new_handle(Handle::Write(session));
        let attr = self.count_lookup(self.attr_of(&key).await?);
        Ok((
            attr,
            Opened {
                fh,
                keep_cache: false,
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

    /// `write`.
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        match self.handle(fh)? {
            Handle::Read(_) => Err(FsError::BadHandle),
            Handle::Write(session) => session.write(offset, data).await,
        }
    }

    /// `write`, done at once if it needn't wait (see [`WriteSession::try_write`]): `None`
    /// if it must, and then [`Fs::write`] does it.
    pub fn try_write_now(&self, fh: u64, offset: u64, data: &[u8]) -> Option<Result<u32, FsError>> {
        match self.handle(fh) {
            Ok(Handle::Write(session)) => session.try_write(offset, data),
            Ok(Handle::Read(_)) => Some(Err(FsError::BadHandle)),
            Err(e) => Some(Err(e)),
        }
    }

    /// Uploads a session's content if it changed since its last upload.
    pub(super) async fn commit(&self, session: &Arc<WriteSession>) -> Result<(), FsError> {
        let key = session.key();
        let volume = self.volume(key.channel).await?;
        session.commit(&volume).await
    }

    /// `flush` (each `close` of a file descriptor): uploads what was written, so that
    /// close returns the error if the upload fails.
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        match self.handle(fh)? {
            Handle::Read(_) => Ok(()),
            Handle::Write(session) => self.commit(&session).await,
        }
    }

    /// `fsync`: the same as flush.
    pub async fn fsync(&self, fh: u64) -> Result<(), FsError> {
        self.flush(fh).await
    }

    /// `release` (the last close of an open): uploads anything still unwritten and
    /// lets go of the handle; the spool file goes once nothing holds it open.
    pub async fn release(&self, fh: u64) -> Result<(), FsError> {
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
        let Some(Handle::Write(session)) = handle else {
            return Ok(());
        };
        let committed = self.commit(&session).await;
        if session.close_one() {
            let key = session.key();
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if sessions.get(&key).is_some_and(|s| Arc::ptr_eq(s, &session)) {
                sessions.remove(&key);
            }
            drop(sessions);
            self.end_session(&session);
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
        if mtime_ns.is_some() || changes.mode.is_some() {
            let volume = self.volume(key.channel).await?;
            volume.set_meta(&key.path, mtime_ns, changes.mode).await?;
        }
        self.attr_of(&key).await
    }
}
