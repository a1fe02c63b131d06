//! `gc`: deletes what no file needs any more and a checkpoint covers, from any machine's
//! doing. What may be deleted is decided by [`super::reclaim`]'s rules (its module doc
//! states them, gc's included); this module finds the candidates and runs the steps in
//! the order that keeps every reader right.
//!
//! A pass of [`super::reclaim`] frees only what a change *of ours* left behind. The rest
//! stays forever otherwise: tombstones, records that later changes superseded on other
//! machines, chunks of uploads that died on other machines, packs whose files are all
//! gone, old checkpoints. [`Volume::gc`]:
//!
//! 1. reads the channel up to date, then its whole history before the *horizon*: the
//!    older of now minus the grace period (24 h by default) and the newest message read.
//!    Nothing newer is touched, so an upload in progress (its data messages posted,
//!    its record not yet) and a writer that read the channel a little while ago are safe;
//! 2. forgets the messages the index knows of that are no longer there (deleted by
//!    another machine or a moderator), so that the index holds what the channel holds
//!    rather than what it ever held; then opens every record of ours before the
//!    horizon, and sorts our messages: in use by
//!    a live entry (kept), carrying a link or a moved delete (kept: they guard messages
//!    other channels use), tombstones, and the rest (unused: superseded records and
//!    data messages no live entry names). Only records this key counts are judged
//!    (sealed or signed by it; without a key, every plain one), and when the channel
//!    holds records it can't read (another key's), no data message is proposed: they
//!    may use it;
//!    Records in use only by some of the files they put (the others deleted or
//!    replaced) are *repacked* when that pays ([`super::repack`]): their live files'
//!    chunks are copied into a new message whose record relocates them, keeping their
//!    stamps. The old record is then superseded (or holds only tombstones), but young:
//!    a machine that read the channel before the relocation may still point into it
//!    (a rename), so it stays, and keeps its deletes, until the relocation is older
//!    than the horizon; the next gc frees it and them. With `dry_run`, nothing is
//!    posted (and it reports what it would repack);
//! 3. decides which tombstones can go: a delete is only needed while some message that
//!    stays still puts (or makes) its path, because a reader that replays the history
//!    would otherwise bring the file back. So a tombstone message goes when none of the
//!    deletes that hold their paths is still needed, counted to a fixed point (a
//!    tombstone message that stays keeps the puts it holds);
//! 4. forgets those deletes in the index, marks it *collected* up to the horizon, and
//!    posts a checkpoint of it *before* deleting anything, so that a reader whose cache
//!    is older than the horizon finds the checkpoint and starts again from it (see
//!    [`super::checkpoint`]) instead of missing deletes that are gone;
//! 5. hands the candidates to a pass of [`super::reclaim`] with their grace over, so
//!    that its rules still apply (ours only, in use here, pinned by a reader or an
//!    upload, used by a channel a file moved to, doubt keeps);
//! 6. retires every older checkpoint of its key: a state older than the collection
//!    could lack the deletes that are gone.
//!
//! With `dry_run` it stops after step 3 and reports what it would delete. When there
//! is nothing to delete, it stops there too, after posting a checkpoint if a record is
//! newer than the newest one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::Serialize;

use super::index::Own;
use super::{Volume, VolumeError, reclaim, repack};
use crate::format::{self, MessageKind, Op};
use crate::store::{Id, Message, snowflake_at_ms};

/// The default [`GcOptions::grace`]: a day.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How `gc` runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report what would be deleted, and delete nothing.
    pub dry_run: bool,
    /// Messages younger than this are never touched. Default [`DEFAULT_GC_GRACE`].
    pub grace: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            grace: DEFAULT_GC_GRACE,
        }
    }
}

/// What `gc` deleted (or, in a dry run, would delete) in one channel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub channel: String,
    pub dry_run: bool,
    /// Records whose every operation later changes replaced.
    pub superseded_records: usize,
    /// Messages of tombstones no message that stays needs.
    pub tombstones: usize,
    /// Deletes still needed: a message that stays puts their path.
    pub tombstones_kept: usize,
    /// Data messages (and packs) no live file uses: replaced versions, dead uploads.
    pub unused_data: usize,
    /// Data messages no file of this key uses, left alone because the channel holds
    /// records this key can't read, which may use them.
    pub unused_data_kept: usize,
    /// Record messages still partly in use whose live files were relocated into new
    /// packs (see [`super::repack`]), so that they and the deletes they kept could go;
    /// the files relocated and the sealed bytes copied.
    pub repacked_records: usize,
    pub repacked_files: usize,
    pub repacked_bytes: u64,
    /// The messages posted to hold them (packs and relocation records).
    pub repack_messages: usize,
    /// Older checkpoints retired.
    pub checkpoints: usize,
    /// Messages deleted in all, and their attachments' bytes.
    pub messages: usize,
    pub bytes: u64,
    /// The checkpoint posted, if any.
    #[serde(serialize_with = "optional_id")]
    pub checkpoint: Option<Id>,
}

fn optional_id<S: serde::Serializer>(id: &Option<Id>, serializer: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => serializer.collect_str(id),
        None => serializer.serialize_none(),
    }
}

/// What step 2 found.
#[derive(Default)]
struct Sorted {
    superseded: Vec<Id>,
    unused_data: Vec<Id>,
    /// Tombstone messages not otherwise in use, with the paths whose delete they hold
    /// (the winning ones) and the paths they put.
    tombstones: BTreeMap<Id, (Vec<String>, Vec<String>)>,
    /// Paths put or made by messages that stay.
    named: BTreeSet<String>,
    /// Records in use by live entries (and carrying no guard): what may be
    /// repacked. Their puts are not in `named` yet.
    repackable: Vec<repack::Candidate>,
    bytes: HashMap<Id, u64>,
    /// Records of ours this key can't read (or doesn't trust).
    unreadable: usize,
    /// Data messages left alone because of them.
    data_kept: usize,
}

impl Volume {
    /// Collects the channel (see the module docs).
    pub async fn gc(&self, options: &GcOptions) -> Result<GcReport, VolumeError> {
        self.catch_up().await?;
        let grace_ms = options.grace.as_millis() as u64;
        let horizon = snowflake_at_ms(reclaim::now_ms().saturating_sub(grace_ms))
            .min(self.index().last_seen.saturating_add(1));
        let messages = match horizon {
            0 | 1 => Vec::new(),
            _ => self.messages_in(1..=horizon - 1).await?,
        };
        let present: std::collections::HashSet<Id> = messages.iter().map(|m| m.id).collect();
        let forgotten = self.index().forget_missing(horizon, &present);
        if forgotten > 0 {
            log::info!(
                "#{}: forgot {forgotten} message(s) that are no longer in the channel",
                self.channel.name
            );
            self.write_cache_whole();
        }
        let mut sorted = self.sort_messages(&messages, horizon).await?;
        let mut report = GcReport {
            channel: self.channel.name.clone(),
            dry_run: options.dry_run,
            unused_data_kept: sorted.data_kept,
            ..GcReport::default()
        };
        self.repack_partly_used(&mut sorted, &mut report, options.dry_run)
            .await;
        let (collectable, kept) = collectable_tombstones(&mut sorted);
        report.tombstones_kept = kept;
        let candidates: Vec<(Id, Category)> = sorted
            .superseded
            .iter()
            .map(|&m| (m, Category::Superseded))
            .chain(
                sorted
                    .unused_data
                    .iter()
                    .map(|&m| (m, Category::UnusedData)),
            )
            .chain(collectable.keys().map(|&m| (m, Category::Tombstone)))
            .collect();
        if candidates.is_empty() {
            // Nothing to collect: the checkpoint is brought up to date, if it isn't.
            let stale = {
                let index = self.index();
                let newest = index.newest_checkpoint();
                index.records_after(newest, 1) > 0
            };
            if stale && !options.dry_run {
                report.checkpoint = Some(self.post_checkpoint().await?);
            }
            return Ok(report);
        }
        if options.dry_run {
            for &(message, category) in &candidates {
                report.count(category, sorted.bytes.get(&message).copied().unwrap_or(0));
            }
            return Ok(report);
        }
        if !collectable.is_empty() || !sorted.superseded.is_empty() {
            let mut index = self.index();
            for (&message, paths) in &collectable {
                index.forget_tombstones(message, paths);
            }
            // At most what the index covers (the horizon is one past it when every
            // message is older than the grace): a reader that read that far lacks
            // nothing.
            let covered = horizon.min(index.last_seen);
            index.collected = index.collected.max(covered);
        }
        self.write_cache_whole();
        let (head, retired) = self.post_checkpoint_retiring(1).await?;
        report.checkpoint = Some(head);
        report.checkpoints = retired;
        {
            let mut index = self.index();
            for &(message, _) in &candidates {
                index.unfreed.insert(message, 0);
            }
        }
        self.free_unused().await;
        let index = self.index();
        for &(message, category) in &candidates {
            if index.own(message).is_none() {
                report.count(category, sorted.bytes.get(&message).copied().unwrap_or(0));
            }
        }
        report.messages += report.checkpoints;
        Ok(report)
    }

    /// Step 2b: repacks the records in use that pay for it (see [`super::repack`]).
    /// Every record in use stays this run, repacked or not, and names its puts: the
    /// relocations are young, and machines that read the channel before them still
    /// take the files to live in the old records (a rename would point into them), so
    /// those go at the next gc once the relocations are older than its horizon.
    async fn repack_partly_used(&self, sorted: &mut Sorted, report: &mut GcReport, dry_run: bool) {
        let candidates = std::mem::take(&mut sorted.repackable);
        let plan = self.plan_repack(&candidates);
        if dry_run {
            report.repacked_records = plan.messages.len();
            report.repacked_files = plan.moves.len();
            report.repacked_bytes = plan.bytes;
        } else if !plan.moves.is_empty() {
            let done = self.repack(plan).await;
            report.repacked_records = done.messages.len();
            report.repacked_files = done.files;
            report.repacked_bytes = done.bytes;
            report.repack_messages = done.posted;
        }
        for candidate in candidates {
            sorted.named.extend(candidate.puts);
        }
    }

    /// Step 2: our messages before the horizon, sorted.
    async fn sort_messages(
        &self,
        messages: &[Message],
        horizon: Id,
    ) -> Result<Sorted, VolumeError> {
        let mut sorted = Sorted::default();
        let mut deletes = self.index().deletes_by_message();
        let young = self.index().relocated_since(horizon);
        for message in messages.iter().filter(|m| m.author_id == self.user) {
            let bytes = message.attachments.iter().map(|a| a.size).sum();
            sorted.bytes.insert(message.id, bytes);
            let (in_use, tombstone, held) = {
                let index = self.index();
                (
                    index.used_by_entries(message.id),
                    index.in_use(message.id),
                    !index.moved_to(self.channel.id, message.id).is_empty(),
                )
            };
            match format::classify(&message.content) {
                MessageKind::Data(Some(file)) => {
                    self.index().note_own(message.id, Own::Data(file));
                    if !in_use && !held {
                        sorted.unused_data.push(message.id);
                    }
                }
                MessageKind::InlineRecord(_) | MessageKind::AttachedRecord => {
                    let opened = match self.read_record(message).await? {
                        Some(opened) if self.key.is_none() || opened.authenticated => opened,
                        // Another key's, unauthenticated, damaged or newer: not ours to
                        // judge, and whatever data messages it uses may look unused.
                        _ => {
                            sorted.unreadable += 1;
                            continue;
                        }
                    };
                    let ops = &opened.record.ops;
                    let guards = ops
                        .iter()
                        .any(|op| matches!(op, Op::Link { .. } | Op::Del { moved: Some(_), .. }));
                    let puts = ops
                        .iter()
                        .filter(|op| matches!(op, Op::Put(_) | Op::Relocate(_) | Op::Mkdir(_)))
                        .map(|op| op.path().to_string());
                    if in_use && !guards && !held {
                        sorted.repackable.push(repack::Candidate {
                            message: message.clone(),
                            puts: puts.collect(),
                        });
                    } else if in_use || guards || held || young.contains(&message.id) {
                        // (Superseded by relocations younger than the horizon: machines
                        // that haven't read them may still use it; it goes next time.)
                        sorted.named.extend(puts);
                    } else if tombstone {
                        let held_deletes = deletes.remove(&message.id).unwrap_or_default();
                        sorted
                            .tombstones
                            .insert(message.id, (held_deletes, puts.collect()));
                    } else {
                        sorted.superseded.push(message.id);
                    }
                }
                MessageKind::Data(None) | MessageKind::Checkpoint | MessageKind::Other => {}
            }
        }
        if sorted.unreadable > 0 && !sorted.unused_data.is_empty() {
            // Their files are unknown here: a data message no file *we* know uses may
            // be one of theirs.
            log::warn!(
                "#{}: not collecting {} data message(s) no file of this key uses: {} \
                 record(s) here can't be read with this key and may use them",
                self.channel.name,
                sorted.unused_data.len(),
                sorted.unreadable
            );
            sorted.data_kept = std::mem::take(&mut sorted.unused_data).len();
        }
        Ok(sorted)
    }
}

/// Step 3: the tombstone messages that can go (with the deletes they hold), and how
/// many deletes must stay. A tombstone message that stays keeps the paths it puts
/// named, which may keep another's deletes: counted to a fixed point.
fn collectable_tombstones(sorted: &mut Sorted) -> (BTreeMap<Id, Vec<String>>, usize) {
    let mut staying: BTreeSet<Id> = BTreeSet::new();
    loop {
        let mut changed = false;
        for (&message, (deletes, puts)) in &sorted.tombstones {
            if staying.contains(&message) {
                continue;
            }
            if deletes.iter().any(|path| sorted.named.contains(path)) {
                staying.insert(message);
                sorted.named.extend(puts.iter().cloned());
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let kept = staying.iter().map(|m| sorted.tombstones[m].0.len()).sum();
    let collectable = sorted
        .tombstones
        .iter()
        .filter(|(m, _)| !staying.contains(m))
        .map(|(&m, (deletes, _))| (m, deletes.clone()))
        .collect();
    (collectable, kept)
}

#[derive(Debug, Clone, Copy)]
enum Category {
    Superseded,
    UnusedData,
    Tombstone,
}

impl GcReport {
    fn count(&mut self, category: Category, bytes: u64) {
        match category {
            Category::Superseded => self.superseded_records += 1,
            Category::UnusedData => self.unused_data += 1,
            Category::Tombstone => self.tombstones += 1,
        }
        self.messages += 1;
        self.bytes += bytes;
    }
}
