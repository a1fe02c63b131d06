//! Finishing uploads the spool holds: at mount, those a previous mount left (files
//! closed but not stored when it stopped, or whose upload failed); during the mount,
//! retries of uploads that failed earlier (on each poll); and at shutdown, uploading
//! every file still open for writing. A spooled upload is stored only if the file is
//! still the version it was made from; otherwise the newer version wins and the spool
//! is set aside.

use std::sync::Arc;

use super::spool::{SpoolFile, SpoolMeta};
use super::write::WriteSession;
use super::{Fs, FsError};
use crate::volume::{PutOptions, PutSource};

impl Fs {
    // ----- start and stop -----

    /// Uploads what a previous mount left in the spool (files closed but not yet
    /// stored when it stopped), and sets aside files it left unfinished. Call it once,
    /// at mount. Returns how many files were stored.
    pub async fn recover_spool(&self) -> usize {
        let _one_pass = self.spool_uploads.lock().await;
        self.recover_folders().await;
        self.upload_spooled(true).await
    }

    /// With write-back on, at mount and before the mount is served: takes what a
    /// previous mount left in the spool back into the write-back queue, due now. The
    /// files it had closed and not stored become write sessions again (held by no
    /// handle), and the folders it had made wait again; so the mount shows them at once,
    /// and they go up as any closed file does, packed, rather than one message a file.
    /// What can't be taken back (its channel can't be opened now) is left to
    /// [`Fs::recover_spool`]. Returns how many files it took back.
    pub async fn adopt_spool(&self) -> usize {
        if !self.write_back.enabled() {
            return 0;
        }
        let _one_pass = self.spool_uploads.lock().await;
        let folders = self.write_back.folders.recover();
        if folders > 0 {
            log::info!("{folders} folder(s) made by an earlier mount wait for their record");
        }
        let Some(found) = self.spooled(true) else {
            return 0;
        };
        let mut adopted = 0;
        for (spool, meta) in found {
            match self.adopt(spool, meta).await {
                Ok(true) => adopted += 1,
                Ok(false) => {}
                Err(e) => log::warn!("could not take back a file of the spool ({e}); will retry"),
            }
        }
        if adopted > 0 {
            log::info!("{adopted} file(s) an earlier mount closed wait for their upload again");
        }
        adopted
    }

    /// Takes one spooled file back into the queue (see [`Fs::adopt_spool`]); `false` if
    /// it is set aside instead (a newer version was stored meanwhile).
    async fn adopt(&self, spool: SpoolFile, meta: SpoolMeta) -> Result<bool, FsError> {
        let volume = self.volume(meta.channel).await?;
        if volume.index().version_of(&meta.path) != meta.base {
            log::warn!(
                "{} changed since this unfinished upload was written; keeping the newer \
                 version and setting the older one aside",
                meta.path
            );
            spool.set_aside();
            return Ok(false);
        }
        let key = super::inode::NodeKey::new(meta.channel, meta.path.clone());
        if self.session(&key).is_some() {
            // Two unfinished uploads of one file: the spool gives the newer first.
            spool.set_aside();
            return Ok(false);
        }
        let spool = spool.counted(&self.spool_bound, false);
        let size = spool
            .data
            .metadata()
            .map_err(|e| FsError::Io(e.to_string()))?
            .len();
        let id = spool.id.clone();
        let session = Arc::new(WriteSession::recovered(key.clone(), spool, meta, size));
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.insert(key, session.clone());
        }
        self.live_spools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        self.write_back
            .schedule_in(&session, std::time::Duration::ZERO);
        Ok(true)
    }

    /// Posts the records of the folders a previous mount made and had not stored yet
    /// ([`super::folders`]), per channel, in a message or a few. Those that fail wait
    /// in the queue (or, with write-back off, for the next mount), shown meanwhile.
    async fn recover_folders(&self) {
        let folders = &self.write_back.folders;
        let found = folders.recover();
        if found == 0 {
            return;
        }
        log::info!(
            "{found} folder(s) made by an earlier mount wait for their record; posting them"
        );
        let channels: std::collections::BTreeSet<_> =
            folders.waiting_channels().into_iter().collect();
        for channel in channels {
            let taken = folders.take(channel);
            let posted = match self.volume(channel).await {
                Ok(volume) => {
                    let records = taken.iter().map(|f| f.record.clone()).collect();
                    volume
                        .put_batch(records, Vec::new())
                        .await
                        .map_err(FsError::from)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &posted {
                log::warn!(
                    "could not record {} folder(s) yet ({e}); will retry",
                    taken.len()
                );
            }
            folders.landed(&taken, posted.is_ok());
        }
    }

    /// Retries the uploads that failed earlier in this mount (unless a pass is under
    /// way already).
    pub(super) async fn retry_failed_uploads(&self) -> usize {
        match self.spool_uploads.try_lock() {
            Ok(_one_pass) => self.upload_spooled(false).await,
            Err(_) => 0,
        }
    }

    /// The spooled files whose commit began and that no live session holds
    /// ([`SpoolFile::recover`]; `at_mount` sets aside the unfinished ones); `None`,
    /// logged, if the spool can't be read.
    fn spooled(&self, at_mount: bool) -> Option<Vec<(SpoolFile, SpoolMeta)>> {
        let live = |id: &str| {
            self.live_spools
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(id)
        };
        match SpoolFile::recover(&self.spool_dir, &live, at_mount) {
            Ok(found) => Some(found),
            Err(e) => {
                log::warn!("could not read the spool {}: {e}", self.spool_dir.display());
                None
            }
        }
    }

    pub(super) async fn upload_spooled(&self, at_mount: bool) -> usize {
        let Some(found) = self.spooled(at_mount) else {
            return 0;
        };
        // What they hold counts in the spool's bound until they are uploaded; a file
        // counted that is gone from the folder (deleted by hand) no longer does.
        let mut keep = self
            .live_spools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        keep.extend(found.iter().map(|(spool, _)| spool.id.clone()));
        self.spool_bound
            .release_closed_except(&|id| keep.contains(id));
        if !found.is_empty() {
            log::info!(
                "{} unfinished upload(s) in the spool; finishing them",
                found.len()
            );
        }
        let mut stored = 0;
        for (spool, meta) in found {
            let spool = spool.counted(&self.spool_bound, false);
            match self.upload_recovered(&spool, &meta).await {
                Ok(()) => {
                    log::info!(
                        "finished uploading {} (an earlier upload had failed)",
                        meta.path
                    );
                    spool.remove();
                    stored += 1;
                }
                Err(e) => {
                    log::warn!("could not finish uploading {} ({e}); will retry", meta.path);
                    if !meta.synced
                        && let Err(e) = spool.keep_for_retry(&meta)
                    {
                        log::warn!("could not save the spool of {}: {e}", meta.path);
                    }
                }
            }
        }
        stored
    }

    pub(super) async fn upload_recovered(
        &self,
        spool: &SpoolFile,
        meta: &SpoolMeta,
    ) -> Result<(), FsError> {
        let volume = self.volume(meta.channel).await?;
        let current = volume.index().version_of(&meta.path);
        if current != meta.base {
            log::warn!(
                "{} changed since this unfinished upload was written; keeping the newer \
                 version and setting the older one aside",
                meta.path
            );
            spool.set_aside();
            return Ok(());
        }
        let data = spool
            .data
            .try_clone()
            .map_err(|e| FsError::Io(e.to_string()))?;
        let options = PutOptions {
            mtime_ns: meta.mtime_ns,
            mode: meta.mode,
            encrypted: meta.encrypted,
            owner: None,
            atime_ns: None,
        };
        volume
            .put(&meta.path, PutSource::File(data), &meta.path, options, None)
            .await?;
        Ok(())
    }

    /// Uploads every file waiting for its upload ([`super::writeback`]), then every
    /// file still open for writing (before unmounting, or after the unmount).
    pub async fn shutdown(&self) {
        let failed = self.drain_write_back().await;
        if failed > 0 {
            log::warn!("{failed} file(s) could not be uploaded; the next mount retries them");
        }
        let sessions: Vec<Arc<WriteSession>> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for session in sessions {
            if let Err(e) = self.commit(&session).await {
                log::warn!(
                    "{}: could not upload it before stopping ({e}); the next mount will retry",
                    session.key().path
                );
            }
        }
        for volume in self.volumes.opened() {
            volume.checkpoint_if_due(true).await;
            volume.save();
        }
    }
}
