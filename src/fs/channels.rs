//! Channels and their volumes: the channel list (listed again after the poll
//! interval), the volume of each channel opened on first use and shared by every
//! request, and the filesystem as the volumes' [`Peers`] (freeing a message of a file
//! that moved across channels asks the channels it moved through, through the same
//! volumes the mount serves, so that a channel is open once).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tokio::sync::OnceCell;

use super::{Fs, FsError};
use crate::store::{Channel, Id, StoreError};
use crate::volume::{Peers, Volume, VolumeError};

/// The channels, as last listed.
#[derive(Default)]
pub(super) struct Channels {
    by_name: BTreeMap<String, Channel>,
    listed: Option<Instant>,
}

/// The channels' volumes, opened or being opened: a cell per channel, filled by the
/// first request that needs the volume while the others for that channel wait on the
/// cell. The table's lock is held only to find a cell, never across an open (a replay
/// of a channel), so a slow channel holds up no other. If an open fails, the next
/// request tries again.
#[derive(Default)]
pub(super) struct Volumes {
    cells: Mutex<HashMap<Id, Arc<OnceCell<Arc<Volume>>>>>,
}

impl Volumes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Arc<OnceCell<Arc<Volume>>>>> {
        self.cells.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cell of `channel`'s volume, made if there is none.
    fn cell(&self, channel: Id) -> Arc<OnceCell<Arc<Volume>>> {
        self.lock().entry(channel).or_default().clone()
    }

    /// The volumes opened so far.
    pub(super) fn opened(&self) -> Vec<Arc<Volume>> {
        self.lock()
            .values()
            .filter_map(|cell| cell.get().cloned())
            .collect()
    }

    /// Forgets a channel's volume (the channel was deleted).
    pub(super) fn forget(&self, channel: Id) {
        self.lock().remove(&channel);
    }
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

    /// The channel's volume, opened on first use. Opening replays the channel's new
    /// records, which can take long: requests for that channel wait for it (one open
    /// per channel, never two), those for other channels don't.
    pub(super) async fn volume(&self, channel: Id) -> Result<Arc<Volume>, FsError> {
        let cell = self.volumes.cell(channel);
        let volume = cell
            .get_or_try_init(|| async {
                let info = match self.channel_by_id(channel) {
                    Some(info) => info,
                    None => self
                        .list_channels(true)
                        .await?
                        .into_iter()
                        .find(|c| c.id == channel)
                        .ok_or(FsError::NotFound)?,
                };
                let volume = Volume::open(
                    self.store.clone(),
                    info,
                    self.key.clone(),
                    self.config.volume.clone(),
                )
                .await?;
                let peers: Weak<dyn Peers> = self.me.clone();
                volume.set_peers(peers);
                Ok::<_, FsError>(Arc::new(volume))
            })
            .await?;
        Ok(volume.clone())
    }

    /// Reads what changed elsewhere in every open channel, and the channel list.
    pub async fn poll(&self) {
        let volumes = self.volumes.opened();
        for volume in volumes {
            if let Err(e) = volume.refresh().await {
                log::info!(
                    "#{}: could not check for changes: {e}",
                    volume.channel().name
                );
            }
        }
        if let Err(e) = self.list_channels(true).await {
            log::info!("could not list channels: {e}");
        }
        self.retry_failed_uploads().await;
    }
}

/// The volumes reach each other's channels through the filesystem's own table, so that
/// a channel is open once.
#[async_trait::async_trait]
impl Peers for Fs {
    async fn peer(&self, channel: Id) -> Result<Arc<Volume>, VolumeError> {
        self.volume(channel).await.map_err(|e| match e {
            FsError::NotFound => VolumeError::Store(StoreError::NoSuchChannel(channel)),
            other => VolumeError::Internal(format!("channel {channel}: {other}")),
        })
    }
}
