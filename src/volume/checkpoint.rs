//! Checkpoints of a channel's index: when one is posted, how a reader with nothing
//! cached finds and starts from one, and which ones are kept.
//!
//! A checkpoint is the replicated part of the index ([`Index::checkpoint_body`]),
//! sealed like a record and bound to the channel, in the attachments of one pinned
//! *head* message (and of part messages before it when it doesn't fit one message; see
//! [`crate::format`], Checkpoints). So a new machine reads the pins (one request), one
//! checkpoint, and only the history after it, instead of every message the channel
//! ever held.
//!
//! - **When.** [`Volume::checkpoint_if_due`]: once [`VolumeConfig::checkpoint_every`]
//!   records of ours are newer than the newest checkpoint message this index knows of
//!   (the CLI after a change, the mount as it refreshes), and at a clean unmount once
//!   a tenth of that many are (`at_unmount`: 100 by default; a channel whose history
//!   since is a page of messages gains nothing from a checkpoint, and each one costs
//!   a pin and the pin notice Discord posts). Posting costs the whole index once (for 100,000
//!   files, tens of MB in a few messages) against the thousand or more record messages
//!   it saves every fresh reader.
//!   If the store refuses the pin (the bot lacks the permission), what was posted is
//!   deleted and no checkpoint is tried again for a day.
//! - **Which are kept.** After pinning a new one, the poster unpins and deletes its
//!   checkpoints beyond the newest [`VolumeConfig::checkpoints_kept`] that this key
//!   can open; other keys' are left alone. So a channel holds a few pins of ours
//!   whatever its age, well under Discord's 250, and the previous checkpoint is there
//!   to fall back to.
//! - **Which is used.** [`Volume::open`] without a cache reads the pins and tries the
//!   bot's checkpoint heads newest first: the first whose parts assemble, open with
//!   the loaded key and pass the body's checks (made for this channel, covering only
//!   messages before its head, valid paths and chunks) becomes the index, and replay
//!   goes on from its `last_seen` like a cache's. One that fails (damaged, another
//!   key's, a part deleted) is logged and the next older one tried; with none, the
//!   whole history is read. The history after a checkpoint is read while the
//!   checkpoint downloads and opens (its head says where it ends, and the reading
//!   goes on in a task of its own: [`super::history::ReadAhead`]), so a fresh
//!   machine's round trips for the tail overlap the checkpoint's transfer and
//!   decoding. A checkpoint unpinned by someone is not found, which costs
//!   a longer replay, never a wrong index: whatever a checkpoint says, the records after
//!   it still win over it, because replay decides by stamps, not by reading order.
//! - **Trust.** Only checkpoints the loaded key sealed count (without a key, only
//!   unsigned ones), as for records: holding the bot's token is not enough to make one.
//!   Pinning an older checkpoint again only makes readers replay more.

use std::cmp::Reverse;

use super::index::Own;
use super::{Index, Volume, VolumeError};
use crate::crypto::KeyId;

/// The default [`super::VolumeConfig::collection_check_age`]: how old an index's
/// newest message must be before a refresh asks whether `gc` collected the channel past
/// it (see [`Volume::restart_if_collected`]); `gc`'s grace (a day on the command line)
/// must not be shorter.
pub const COLLECTION_CHECK_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
use crate::format::{self, CHECKPOINT_PART_CONTENT, CheckpointHead, MAX_CHECKPOINT_BYTES, damaged};
use crate::store::{Id, Message, NewMessage, StoreError};

/// How long after the store refused to pin a checkpoint none is posted again (the
/// bot lacks the permission; posting the whole index to delete it again at every
/// command would cost much for nothing).
const PIN_RETRY_MS: u64 = 24 * 3600 * 1000;

impl Volume {
    /// Posts a checkpoint if one is due (see the module docs). Failures are logged: a
    /// checkpoint only saves time.
    pub async fn checkpoint_if_due(&self, at_unmount: bool) {
        let every = self.config.checkpoint_every;
        if every == 0 {
            return;
        }
        let due = {
            let index = self.index();
            if super::reclaim::now_ms().saturating_sub(index.pin_refused_at) < PIN_RETRY_MS {
                return;
            }
            let newest = index.newest_checkpoint();
            let wanted = if at_unmount {
                (every / 10).max(1)
            } else {
                every
            };
            index.records_after(newest, wanted) >= wanted
        };
        if !due {
            return;
        }
        match self.post_checkpoint().await {
            Ok(head) => log::info!("#{}: posted checkpoint {head}", self.channel.name),
            Err(e) => log::warn!(
                "#{}: could not post a checkpoint ({e}); fresh machines replay more \
                 history until one is posted",
                self.channel.name
            ),
        }
    }

    /// Seals the index as it is now into a checkpoint, posts and pins it, and retires
    /// the checkpoints beyond the ones kept. Returns the head message.
    pub async fn post_checkpoint(&self) -> Result<Id, VolumeError> {
        let keep = self.config.checkpoints_kept;
        Ok(self.post_checkpoint_retiring(keep).await?.0)
    }

    /// [`Volume::post_checkpoint`], keeping `keep` of this key's checkpoints (the new
    /// one included); returns the head and how many were retired.
    pub(super) async fn post_checkpoint_retiring(
        &self,
        keep: usize,
    ) -> Result<(Id, usize), VolumeError> {
        self.catch_up().await?;
        let body = self.index().checkpoint_body();
        let envelope = format::seal_checkpoint(&body, self.key.as_ref())?;
        let (covers, collected) = (body.last_seen, body.collected);
        drop(body);
        let mut messages = format::checkpoint_messages(&envelope, &self.limits());
        drop(envelope);
        let head_parts = messages.pop().unwrap_or_default();
        let mut parts = Vec::with_capacity(messages.len());
        let mut posted = Vec::new();
        let result = async {
            for attachments in messages {
                let message = NewMessage {
                    content: CHECKPOINT_PART_CONTENT.to_string(),
                    attachments,
                };
                let part = self.store.post(self.channel.id, message).await?;
                self.index().note_own(part.id, Own::Checkpoint);
                posted.push(part.id);
                parts.push(part.id);
            }
            let content = CheckpointHead {
                covers,
                collected,
                parts,
            }
            .content();
            let head = self
                .store
                .post(
                    self.channel.id,
                    NewMessage {
                        content,
                        attachments: head_parts,
                    },
                )
                .await?;
            self.index().note_own(head.id, Own::Checkpoint);
            posted.push(head.id);
            self.store.pin(self.channel.id, head.id).await?;
            Ok::<Id, VolumeError>(head.id)
        }
        .await;
        self.unsaved
            .store(true, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(head) => Ok((head, self.retire_checkpoints(keep).await)),
            Err(e) => {
                // What was posted of it is no use without a pinned head.
                self.delete_checkpoint_messages(&posted).await;
                if matches!(e, VolumeError::Store(StoreError::PermissionDenied(_))) {
                    self.index().pin_refused_at = super::reclaim::now_ms();
                }
                Err(e)
            }
        }
    }

    /// Unpins and deletes this key's checkpoints beyond the newest `keep`; returns how
    /// many.
    async fn retire_checkpoints(&self, keep: usize) -> usize {
        let heads = match self.checkpoint_heads().await {
            Ok(heads) => heads,
            Err(e) => {
                log::info!("#{}: could not read the pins: {e}", self.channel.name);
                return 0;
            }
        };
        let mut retired = 0;
        let mine = self.key.as_ref().map(|k| k.id()).unwrap_or_default();
        let mut kept = 0;
        for (message, head) in heads {
            if self.checkpoint_key(&message, &head).await != Some(mine) {
                continue; // another key's, or damaged: not ours to retire
            }
            kept += 1;
            if kept <= keep.max(1) {
                continue;
            }
            if let Err(e) = self.store.unpin(self.channel.id, message.id).await {
                log::info!(
                    "#{}: could not unpin checkpoint {}: {e}",
                    self.channel.name,
                    message.id
                );
                continue;
            }
            let mut ids = head.parts.clone();
            ids.push(message.id);
            self.delete_checkpoint_messages(&ids).await;
            retired += 1;
        }
        retired
    }

    /// The key id a checkpoint's envelope names (zero: unsigned), read from the
    /// envelope's first bytes alone.
    async fn checkpoint_key(&self, head_message: &Message, head: &CheckpointHead) -> Option<KeyId> {
        let first = match head.parts.first() {
            Some(&id) => self.store.message(self.channel.id, id).await.ok()?,
            None => head_message.clone(),
        };
        let part = first
            .attachments
            .iter()
            .find(|a| format::part_number(&a.filename) == Some(0))?;
        let header = self
            .store
            .fetch_range(
                first.channel_id,
                first.id,
                part.id,
                0..format::ENVELOPE_HEADER_LEN as u64,
            )
            .await
            .ok()?;
        format::envelope_key_id(&header, format::CHECKPOINT_MAGIC)
    }

    async fn delete_checkpoint_messages(&self, ids: &[Id]) {
        for &id in ids {
            match self.store.delete_message(self.channel.id, id).await {
                Ok(()) => self.index().forget_own(id),
                Err(e) if e.is_not_found() => self.index().forget_own(id),
                Err(e) => log::info!(
                    "#{}: could not delete checkpoint message {id}: {e}",
                    self.channel.name
                ),
            }
        }
        self.unsaved
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The bot's checkpoint heads among the pins, newest first.
    async fn checkpoint_heads(&self) -> Result<Vec<(Message, CheckpointHead)>, VolumeError> {
        let mut heads: Vec<(Message, CheckpointHead)> = self
            .store
            .pins(self.channel.id)
            .await?
            .into_iter()
            .filter(|m| m.author_id == self.user)
            .filter_map(|m| CheckpointHead::parse(&m.content).map(|head| (m, head)))
            .collect();
        heads.sort_by_key(|(m, _)| Reverse(m.id));
        Ok(heads)
    }

    /// The index of the newest checkpoint that can be used, if any (see the module
    /// docs); every one passed over is logged.
    pub(super) async fn index_from_checkpoint(&self) -> Option<(Id, Index)> {
        let heads = match self.checkpoint_heads().await {
            Ok(heads) => heads,
            Err(e) => {
                log::info!(
                    "#{}: could not read the pins ({e}); reading the whole history",
                    self.channel.name
                );
                return None;
            }
        };
        let found = !heads.is_empty();
        let mine = self.key.as_ref().map(|k| k.id()).unwrap_or_default();
        for (message, head) in heads {
            // Another key's is passed over for the price of its first bytes.
            if let Some(other) = self.checkpoint_key(&message, &head).await
                && other != mine
            {
                log::info!(
                    "#{}: checkpoint {} is sealed by key {other}, not this one; trying an \
                     older one",
                    self.channel.name,
                    message.id
                );
                continue;
            }
            // The history after it is read while it downloads and opens.
            self.read_ahead_after(head.covers);
            match self.read_checkpoint(&message, &head).await {
                Ok(index) => {
                    log::info!(
                        "#{}: starting from checkpoint {} (covering up to message {})",
                        self.channel.name,
                        message.id,
                        head.covers
                    );
                    return Some((message.id, index));
                }
                Err(e) => log::warn!(
                    "#{}: checkpoint {} can't be used ({e}); trying an older one",
                    self.channel.name,
                    message.id
                ),
            }
        }
        if found {
            log::warn!(
                "#{}: no checkpoint could be used; reading the whole history",
                self.channel.name
            );
        }
        None
    }

    /// When `gc` collected the channel past what this index has read (a cache older
    /// than the collection: the deletes it removed were never read here), starts again
    /// from the checkpoint it posted, keeping what is local (what waits to be freed,
    /// skipped records). Asked by [`Volume::catch_up`] when the index's newest message
    /// is older than [`super::VolumeConfig::collection_check_age`], at most once per
    /// that long: `gc` never touches younger messages, so a fresher index can't lack
    /// any.
    pub(super) async fn restart_if_collected(&self) {
        let last_seen = self.index().last_seen;
        let heads = match self.checkpoint_heads().await {
            Ok(heads) => heads,
            Err(e) => {
                log::info!(
                    "#{}: could not read the pins to see whether gc ran: {e}",
                    self.channel.name
                );
                return;
            }
        };
        for (message, head) in heads {
            if head.collected <= last_seen {
                continue;
            }
            match self.read_checkpoint(&message, &head).await {
                Ok(mut index) => {
                    log::info!(
                        "#{}: gc collected the channel since this index was cached; \
                         starting again from checkpoint {}",
                        self.channel.name,
                        message.id
                    );
                    let mut old = self.index();
                    index.keep_local_state(&mut old);
                    *old = index;
                    drop(old);
                    self.write_cache_whole();
                    return;
                }
                Err(e) => log::warn!(
                    "#{}: checkpoint {} can't be used ({e})",
                    self.channel.name,
                    message.id
                ),
            }
        }
    }

    /// Assembles, opens and checks one checkpoint.
    async fn read_checkpoint(
        &self,
        head_message: &Message,
        head: &CheckpointHead,
    ) -> Result<Index, VolumeError> {
        let mut messages = Vec::with_capacity(head.parts.len() + 1);
        for &id in &head.parts {
            let part = self.store.message(self.channel.id, id).await?;
            if part.author_id != self.user || part.content != CHECKPOINT_PART_CONTENT {
                return Err(damaged(
                    "checkpoint",
                    format!("message {id} is not one of its parts"),
                )
                .into());
            }
            messages.push(part);
        }
        messages.push(head_message.clone());
        let mut envelope = Vec::new();
        for message in &messages {
            let mut parts: Vec<(usize, &crate::store::Attachment)> = message
                .attachments
                .iter()
                .filter_map(|a| format::part_number(&a.filename).map(|n| (n, a)))
                .collect();
            parts.sort_by_key(|(n, _)| *n);
            if parts.iter().enumerate().any(|(i, (n, _))| i != *n) {
                return Err(
                    damaged("checkpoint", format!("message {} lacks a part", message.id)).into(),
                );
            }
            for (_, attachment) in parts {
                if envelope.len() as u64 + attachment.size > MAX_CHECKPOINT_BYTES {
                    return Err(damaged("checkpoint", "larger than any checkpoint may be").into());
                }
                let bytes = self
                    .store
                    .fetch_attachment(self.channel.id, message.id, attachment.id, attachment.size)
                    .await?;
                envelope.extend_from_slice(&bytes);
            }
        }
        let body = format::open_checkpoint(
            envelope,
            self.key.as_ref(),
            self.channel.id,
            head_message.id,
        )?;
        if body.last_seen != head.covers || body.collected != head.collected {
            return Err(damaged("checkpoint", "its head says it covers another message").into());
        }
        let mut index = Index::from_checkpoint(body, self.key.as_ref().map(|k| k.id()))
            .map_err(|e| VolumeError::from(damaged("checkpoint", e)))?;
        for message in &messages {
            index.note_own(message.id, Own::Checkpoint);
        }
        Ok(index)
    }
}
