//! Channels and their volumes: the channel list (listed again after the poll
//! interval), and the volume of each channel, opened on first use and shared by every
//! request, through the process's registry of open channels
//! ([`crate::volume::registry`], the one the CLI uses): a channel opens once, and
//! channels open concurrently (no lock is held across a replay, so a slow channel holds
//! up no other). The registry is also the volumes' `Peers`: freeing a message of a file
//! that moved across channels asks the channels it moved through, through the same
//! volumes the mount serves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::{Fs, FsError};
use crate::store::{Channel, Id};
use crate::volume::Volume;

/// The channels, as last listed.
#[derive(Default)]
pub(super) struct Channels {
    by_name: BTreeMap<String, Channel>,
    listed: Option<Instant>,
}

impl Fs {
    // ----- channels and volumes -----

    /// The channels, listed again if the list is older than the poll interval (or
    /// `force`).
    pub(super) async fn list_channels(&self, force: bool) -> Result<Vec<Channel>, FsError> {
        {
            let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = channels
                .listed
                .is_some_and(|at| at.elapsed() < self.config.poll_interval);
            if fresh && !force {
                return Ok(channels.by_name.values().cloned().collect());
            }
        }
        let listed = self.store.channels().await?;
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.by_name = listed.iter().map(|c| (c.name.clone(), c.clone())).collect();
        channels.listed = Some(Instant::now());
        Ok(listed)
    }

    pub(super) async fn channel_named(&self, name: &str) -> Result<Channel, FsError> {
        let channels = self.list_channels(false).await?;
        if let Some(channel) = channels.into_iter().find(|c| c.name == name) {
            return Ok(channel);
        }
        // Perhaps made a moment ago elsewhere.
        self.list_channels(true)
            .await?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or(FsError::NotFound)
    }

    pub(super) fn channel_by_id(&self, id: Id) -> Option<Channel> {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.by_name.values().find(|c| c.id == id).cloned()
    }

    /// The channel's volume, opened on first use (see the module docs).
    pub(super) async fn volume(&self, channel: Id) -> Result<Arc<Volume>, FsError> {
        if let Some(volume) = self.volumes.already_open(channel) {
            return Ok(volume);
        }
        let info = match self.channel_by_id(channel) {
            Some(info) => info,
            None => self
                .list_channels(true)
                .await?
                .into_iter()
                .find(|c| c.id == channel)
                .ok_or(FsError::NotFound)?,
        };
        Ok(self.volumes.open(info).await?)
    }

    /// Opens every channel this machine holds a cached index of, all at once: what a
    /// mount starts in the background, so that a channel used before is loaded (its
    /// cache read, the messages after it fetched) while the mount comes up, not on the
    /// first request that needs it. A channel the first request needs meanwhile waits
    /// for this same open, not a second one. A failed open is logged and left for that
    /// first request to try again. The cache reads [`Fs::new`] started that no open
    /// took are dropped then.
    pub async fn open_cached_channels(&self) {
        let channels = match self.list_channels(false).await {
            Ok(channels) => channels,
            Err(e) => {
                log::debug!("opening the cached channels: could not list them: {e}");
                self.volumes.drop_cache_reads();
                return;
            }
        };
        let opening = channels
            .into_iter()
            .filter(|channel| self.volumes.has_cache(channel.id))
            .map(|channel| async move {
                if let Err(e) = self.volume(channel.id).await {
                    log::info!("#{}: could not open it yet: {e}", channel.name);
                }
            });
        futures::future::join_all(opening).await;
        self.volumes.drop_cache_reads();
    }

    /// Reads what changed elsewhere in every open channel, and the channel list; notes
    /// when that last reached them all, for `status`.
    pub async fn poll(&self) {
        let volumes = self.volumes.opened();
        let mut failed = None;
        for volume in volumes {
            if let Err(e) = volume.refresh().await {
                log::info!(
                    "#{}: could not check for changes: {e}",
                    volume.channel().name
                );
                failed.get_or_insert(format!("#{}: {e}", volume.channel().name));
                continue;
            }
            volume.checkpoint_if_due(false).await;
        }
        if let Err(e) = self.list_channels(true).await {
            log::info!("could not list channels: {e}");
            failed.get_or_insert(format!("listing the channels: {e}"));
        }
        self.note_refresh(failed);
        self.retry_failed_uploads().await;
    }
}
