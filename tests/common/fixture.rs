//! A channel in a fresh [`LocalStore`] with tiny limits, for the tests that work on a
//! volume through the library (checkpoints, gc, verify): its temporary folders, a key,
//! the store (also behind a [`FaultyStore`] that counts what it is asked, with no faults
//! unless a test sets some), and the store's own view of the channel's messages.
//!
//! It uses `crate::faulty`: a test that includes it includes `common/faulty.rs` as
//! `mod faulty` too. Each test adds its own ways of opening volumes (`impl Fixture` in
//! the test), as each configures them differently.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;

use dcloud_fs::crypto::Key;
use dcloud_fs::store::local::LocalStore;
use dcloud_fs::store::{Channel, HistoryCursor, Id, Limits, Message, Store};
use dcloud_fs::volume::{Volume, VolumeConfig};
use tempfile::TempDir;

use crate::faulty::FaultyStore;

/// 4 KiB per attachment, 4 attachments and 10,000 bytes per message: files of a few
/// KiB hold many chunks over many messages, and even a small channel's checkpoint
/// spans several parts and messages.
pub const LIMITS: Limits = Limits {
    max_file_size: 4096,
    max_attachments: 4,
    max_request_size: 10_000,
    max_content_chars: 2000,
};

pub struct Fixture {
    _dir: TempDir,
    /// An empty folder, for a test that wants an index cache.
    pub cache: TempDir,
    pub local: Arc<LocalStore>,
    /// `local` behind a [`FaultyStore`] (seed 1).
    pub store: Arc<FaultyStore>,
    /// The channel `files` of `local`.
    pub channel: Channel,
    /// A key of its own.
    pub key: Key,
}

impl Fixture {
    pub async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let local =
            Arc::new(LocalStore::open_or_create(&dir.path().join("store"), LIMITS).unwrap());
        let channel = local.create_channel("files").await.unwrap();
        Fixture {
            _dir: dir,
            cache: tempfile::tempdir().unwrap(),
            store: Arc::new(FaultyStore::new(local.clone(), 1)),
            local,
            channel,
            key: Key::generate().unwrap(),
        }
    }

    /// Every message of `channel`, newest first, read from the local store itself.
    pub async fn messages_of(&self, channel: Id) -> Vec<Message> {
        let mut all = Vec::new();
        let mut cursor = HistoryCursor::Latest;
        loop {
            let page = self.local.history(channel, cursor, 100).await.unwrap();
            let Some(oldest) = page.last().map(|m| m.id) else {
                break;
            };
            let full = page.len() == 100;
            all.extend(page);
            if !full {
                break;
            }
            cursor = HistoryCursor::Before(oldest);
        }
        all
    }

    /// Every message of the fixture's channel, newest first, read from the local store.
    pub async fn messages(&self) -> Vec<Message> {
        self.messages_of(self.channel.id).await
    }

    /// Every message id of `channel`, read from the local store itself.
    pub async fn message_ids(&self, channel: Id) -> BTreeSet<Id> {
        let messages = self.messages_of(channel).await;
        messages.iter().map(|m| m.id).collect()
    }
}

/// Opens a volume of `channel` through `store`, which must succeed.
pub async fn open_volume(
    store: Arc<dyn Store>,
    channel: &Channel,
    key: Option<&Key>,
    config: VolumeConfig,
) -> Volume {
    Volume::open(store, channel.clone(), key.cloned(), config)
        .await
        .unwrap()
}
