//! A file being written: its spool file, its size and metadata, and the commit that
//! uploads it.
//!
//! Every open of one file for writing shares one session, so two descriptors see each
//! other's writes, as on a local disk. Writes land in the spool file at their offsets;
//! a commit (close, fsync) uploads the spool's content as a new version of the file
//! when something changed since the last commit. While a commit reads the spool,
//! writes wait (a tokio `RwLock`: writes share it, the commit takes it alone), so an
//! upload never mixes two states of the file.

use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use super::inode::NodeKey;
use super::spool::{SpoolFile, SpoolMeta};
use super::{FsError, now_ns};
use crate::volume::{PutOptions, PutSource, Volume};

/// The part of a session the attributes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionView {
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
}

struct State {
    key: NodeKey,
    meta: SpoolMeta,
    size: u64,
    /// Changed since the last successful commit.
    dirty: bool,
    /// Open handles sharing the session.
    opens: usize,
    /// Unlinked while open: never uploaded.
    unlinked: bool,
}

/// One file being written.
pub struct WriteSession {
    spool: SpoolFile,
    state: Mutex<State>,
    /// Writes share it; a commit holds it alone.
    content: tokio::sync::RwLock<()>,
}

fn io_error(context: &str, e: std::io::Error) -> FsError {
    log::warn!("{context}: {e}");
    FsError::Io(format!("{context}: {e}"))
}

impl WriteSession {
    /// A session over `spool`, which holds `size` bytes, opened once.
    pub fn new(key: NodeKey, spool: SpoolFile, meta: SpoolMeta, size: u64) -> WriteSession {
        WriteSession {
            spool,
            state: Mutex::new(State {
                key,
                meta,
                size,
                dirty: false,
                opens: 1,
                unlinked: false,
            }),
            content: tokio::sync::RwLock::new(()),
        }
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

    /// Another handle opened the file.
    pub fn open_one(&self) {
        self.lock().opens += 1;
    }

    /// A handle was released; true if it was the last.
    pub fn close_one(&self) -> bool {
        let mut state = self.lock();
        state.opens = state.opens.saturating_sub(1);
        state.opens == 0
    }

    /// Up to `size` bytes from `offset`.
    pub async fn read(&self, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let _shared = self.content.read().await;
        let end = self.lock().size.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buffer = vec![0; (end - offset) as usize];
        self.spool
            .data
            .read_exact_at(&mut buffer, offset)
            .map_err(|e| io_error("reading the spool file", e))?;
        Ok(buffer)
    }

    /// Writes `data` at `offset`.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let _shared = self.content.read().await;
        self.spool
            .data
            .write_all_at(data, offset)
            .map_err(|e| io_error("writing the spool file", e))?;
        let mut state = self.lock();
        state.size = state.size.max(offset + data.len() as u64);
        state.meta.mtime_ns = now_ns();
        state.dirty = true;
        Ok(data.len() as u32)
    }

    /// Sets the size (cuts, or extends with zeros).
    pub async fn truncate(&self, size: u64) -> Result<(), FsError> {
        let _shared = self.content.read().await;
        self.spool
            .data
            .set_len(size)
            .map_err(|e| io_error("resizing the spool file", e))?;
        let mut state = self.lock();
        state.size = size;
        state.meta.mtime_ns = now_ns();
        state.dirty = true;
        Ok(())
    }

    /// Sets the modification time and/or mode.
    pub fn set_meta(&self, mtime_ns: Option<i64>, mode: Option<u32>) {
        let mut state = self.lock();
        if let Some(mtime_ns) = mtime_ns {
            state.meta.mtime_ns = mtime_ns;
        }
        if let Some(mode) = mode {
            state.meta.mode = mode & 0o7777;
        }
        state.dirty = true;
    }

    /// The file was unlinked: it won't be uploaded.
    pub fn unlink(&self) {
        self.lock().unlinked = true;
    }

    /// The file was renamed while open: it will be uploaded under its new name.
    pub fn moved_to(&self, key: NodeKey) {
        let mut state = self.lock();
        state.meta.path = key.path.clone();
        state.meta.channel = key.channel;
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
    pub async fn commit(&self, volume: &Volume) -> Result<(), FsError> {
        let _alone = self.content.write().await;
        let meta = {
            let state = self.lock();
            if !state.dirty || state.unlinked {
                return Ok(());
            }
            state.meta.clone()
        };
        self.spool
            .begin_commit(&meta)
            .map_err(|e| io_error("saving the spool file", e))?;
        let data = self
            .spool
            .data
            .try_clone()
            .map_err(|e| io_error("reading the spool file", e))?;
        let options = PutOptions {
            mtime_ns: meta.mtime_ns,
            mode: meta.mode,
            encrypted: meta.encrypted,
        };
        let shown = volume.display(&meta.path);
        volume
            .put(&meta.path, PutSource::File(data), &shown, options, None)
            .await
            .map_err(|e| {
                log::warn!("{shown}: upload failed: {e}");
                FsError::Io(e.to_string())
            })?;
        let mut state = self.lock();
        state.dirty = false;
        state.meta.committing = false;
        state.meta.base = volume.index().version_of(&meta.path);
        if let Err(e) = self.spool.describe(&state.meta) {
            log::warn!("could not update the spool after uploading {shown}: {e}");
        }
        Ok(())
    }

    /// The last handle is gone: removes the spool, unless its content still waits to
    /// be uploaded (a failed commit), which the next mount will retry.
    pub fn finish(&self) {
        let state = self.lock();
        if state.dirty && !state.unlinked {
            if let Err(e) = self.spool.begin_commit(&state.meta) {
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
