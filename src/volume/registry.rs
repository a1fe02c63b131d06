//! The channels a process has open: one [`Volume`] per channel, shared by everything in
//! the process that uses the channel (the CLI's commands, the mount's requests), and the
//! [`Peers`] through which the volumes reach each other's channels (see
//! [`super::reclaim`]: freeing a moved file's messages asks the channels it moved
//! through).
//!
//! A channel is opened once: callers that want the same channel while it opens wait
//! for that one open (a shared once-cell per channel), and a failed open leaves nothing
//! behind, so the next caller tries again. Different channels open at the same time: no
//! lock is held across a replay, so one slow channel holds up only its own users.
//!
//! A mount starts reading every index cache it holds before it has asked the store
//! anything ([`Volumes::start_cache_reads`]): a big channel's cache takes a fraction
//! of a second to read, which then overlaps the round trips that list the channels
//! instead of following them. The first open of each channel takes the read started
//! for it; what no open took is dropped ([`Volumes::drop_cache_reads`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{
    CacheRead, Peers, Volume, VolumeConfig, VolumeError, cached_channels, channel_with_id,
    start_cache_read,
};
use crate::crypto::Key;
use crate::store::{Channel, Id, Store};

/// The open channels of one store, with one key and one configuration.
pub struct Volumes {
    store: Arc<dyn Store>,
    key: Option<Key>,
    config: VolumeConfig,
    me: Weak<Volumes>,
    open: Mutex<HashMap<Id, Arc<OnceCell<Arc<Volume>>>>>,
    /// Reads of index caches started before their channel opened.
    cache_reads: Mutex<HashMap<Id, CacheRead>>,
}

impl Volumes {
    pub fn new(store: Arc<dyn Store>, key: Option<Key>, config: VolumeConfig) -> Arc<Volumes> {
        Arc::new_cyclic(|me| Volumes {
            store,
            key,
            config,
            me: me.clone(),
            open: Mutex::default(),
            cache_reads: Mutex::default(),
        })
    }

    /// Starts reading the index cache of every channel this machine holds one of (see
    /// the module docs). Needs a Tokio runtime.
    pub fn start_cache_reads(&self) {
        let key = self.key.as_ref().map(Key::id);
        let channels = cached_channels(&self.config, self.store.as_ref(), key);
        let mut reads = self.reads();
        for channel in channels {
            reads.entry(channel).or_insert_with(|| {
                start_cache_read(&self.config, self.store.clone(), channel, self.key.clone())
            });
        }
    }

    /// Drops the cache reads no open took (channels gone from the store, say).
    pub fn drop_cache_reads(&self) {
        self.reads().clear();
    }

    fn reads(&self) -> std::sync::MutexGuard<'_, HashMap<Id, CacheRead>> {
        self.cache_reads.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cells(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Arc<OnceCell<Arc<Volume>>>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The volume of `channel`, opened on first use.
    pub async fn open(&self, channel: Channel) -> Result<Arc<Volume>, VolumeError> {
        let cell = self.cells().entry(channel.id).or_default().clone();
        let volume = cell
            .get_or_try_init(|| async {
                let cache_read = self.reads().remove(&channel.id);
                let volume = Arc::new(
                    Volume::open_read(
                        self.store.clone(),
                        channel,
                        self.key.clone(),
                        self.config.clone(),
                        cache_read,
                    )
                    .await?,
                );
                let peers: Weak<dyn Peers> = self.me.clone();
                volume.set_peers(peers);
                Ok::<_, VolumeError>(volume)
            })
            .await?;
        Ok(volume.clone())
    }

    /// The volume of the channel with id `channel`, opened on first use (its name is
    /// looked up in the store then).
    pub async fn by_id(&self, channel: Id) -> Result<Arc<Volume>, VolumeError> {
        if let Some(volume) = self.already_open(channel) {
            return Ok(volume);
        }
        let info = channel_with_id(self.store.as_ref(), channel).await?;
        self.open(info).await
    }

    /// Whether this machine holds a cached index of `channel` (see
    /// [`super::has_cache`]).
    pub fn has_cache(&self, channel: Id) -> bool {
        super::has_cache(
            &self.config,
            self.store.as_ref(),
            channel,
            self.key.as_ref().map(Key::id),
        )
    }

    /// The volume of `channel` if it is open.
    pub fn already_open(&self, channel: Id) -> Option<Arc<Volume>> {
        self.cells()
            .get(&channel)
            .and_then(|cell| cell.get().cloned())
    }

    /// Every volume open now.
    pub fn opened(&self) -> Vec<Arc<Volume>> {
        self.cells()
            .values()
            .filter_map(|cell| cell.get().cloned())
            .collect()
    }

    /// Forgets the volume of a channel that is gone.
    pub fn forget(&self, channel: Id) {
        self.cells().remove(&channel);
    }
}

#[async_trait]
impl Peers for Volumes {
    async fn peer(&self, channel: Id) -> Result<Arc<Volume>, VolumeError> {
        self.by_id(channel).await
    }
}
