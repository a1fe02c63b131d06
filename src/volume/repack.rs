//! Repacking: how `gc` frees a record message that is still partly in use, so that the
//! deletes its dead puts keep can go (restic's `prune` repacking packs is the model).
//!
//! A batch of small files is one message: the packs and the one record that puts them
//! all ([`super::pack`]). When some of those files are deleted or replaced and others
//! stay, the message stays (its packs hold the live chunks), so it still *puts* the dead
//! paths, so their deletes must stay: a replay of the history without them would bring
//! the files back. Repacking moves the live files out:
//!
//! 1. **Which.** A record message of ours before gc's horizon, in use by live entries
//!    but not only by them: some of its puts are dead (superseded or deleted). It is
//!    repacked only if every use of it comes from the files it set itself (no file
//!    renamed elsewhere points at its chunks, it made no live folder, no file of it
//!    has chunks in another channel, it carries no link or moved delete and no file
//!    moved away uses it) — otherwise it would stay all the same — and only when it
//!    pays: always when a dead put's path holds a tombstone (the delete it blocks can
//!    then go, at the next run: see below), else when the live files' sealed bytes are at most
//!    [`REPACK_LIVE_SHARE`] of its attachments' bytes (the space freed is worth the
//!    copy).
//! 2. **Copy.** The live chunks in its attachments are fetched by byte range (one
//!    range per attachment, from the first live chunk to the end of the last) and laid
//!    end to end in new packs, as they are: a sealed chunk's bytes are position
//!    independent (everything is counted from its offset `o`, see [`crate::format`],
//!    Packs), so nothing is sealed again and every tag, prefix and checksum stays.
//!    Chunks of those files in other messages keep their references.
//! 3. **Relocate.** One new record message holds the packs and a record of one
//!    `relocate` per file (format version 6): the file as it was, with its chunks at
//!    their new places, carrying the stamp of the put it replaces. It holds the path
//!    with exactly that stamp, winning over that put only (see [`super::index`]), so a
//!    concurrent change on another machine wins or loses as it would have against the
//!    original, and replay stays independent of the order messages are read in.
//!    Several old messages' files share new messages, cut to what one message holds
//!    like any batch of small files.
//!
//! After that the old message is wholly superseded (or holds only tombstones), but by
//! a change younger than gc's grace: a machine that read the channel before the
//! relocation still takes the files to live in it, and a rename there would point
//! into it. So it stays for this run, and its dead puts keep their deletes; the next
//! `gc` after the grace (when the relocation is older than its horizon) sorts it as
//! superseded, and the normal steps (checkpoint, then [`super::reclaim`]'s rules) free
//! it and the deletes it held. It takes two runs, a grace apart, by design: deleting
//! it in the run that relocated its files lost a renamed file in the concurrent-writer
//! test (`tests/gc.rs`). A message whose relocation failed to post stays as it was,
//! and is tried again at the next `gc`.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::index::{SetBy, Stamp, StoredChunk};
use super::pack::{self, MAX_PACKED_FILES, PackLimits};
use super::records::Riders;
use super::{FileEntry, Volume, VolumeError};
use crate::format::{self, ChunkLocation, ChunkRef, Op, Relocation};
use crate::store::{Id, Message, NewAttachment};

/// A record message whose live files' sealed bytes are at most this share of its
/// attachments' bytes is repacked even when no delete waits for it.
pub const REPACK_LIVE_SHARE: f64 = 0.5;

/// A record message in use that `gc` may repack: the message as read, and the paths
/// its record puts, relocates or makes.
pub(super) struct Candidate {
    pub message: Message,
    pub puts: Vec<String>,
}

/// A file to move out of its record message `from`.
#[derive(Debug, Clone)]
pub(super) struct Move {
    from: Id,
    path: String,
    stamp: Stamp,
    file: FileEntry,
    /// Sealed bytes of its chunks in `from`.
    sealed: u64,
}

/// What [`Volume::plan_repack`] found: the files to move, grouped by old message.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub moves: Vec<Move>,
    /// The old messages, each with how many of its files move.
    pub messages: BTreeMap<Id, usize>,
    /// Sealed bytes to copy.
    pub bytes: u64,
}

/// What [`Volume::repack`] did.
#[derive(Debug, Default)]
pub(super) struct Repacked {
    /// Old messages whose every live file was relocated.
    pub messages: Vec<Id>,
    pub files: usize,
    pub bytes: u64,
    /// Relocation messages posted.
    pub posted: usize,
}

/// Where packs laid out first-fit in order stand, `(packs, bytes in the last)`, after
/// chunks of `chunks` sealed bytes are added to `at`.
fn place(at: (usize, u64), chunks: &[u64], max_file: u64) -> (usize, u64) {
    let (mut packs, mut in_last) = at;
    for &len in chunks {
        if packs == 0 || in_last + len > max_file {
            packs += 1;
            in_last = 0;
        }
        in_last += len;
    }
    (packs, in_last)
}

/// The sealed length of a chunk of a file that is `encrypted` or not.
fn sealed_len(chunk: &StoredChunk, encrypted: bool) -> u64 {
    chunk.kind(encrypted).sealed_len(chunk.len)
}

impl Volume {
    /// Step 1 of the module docs: which of `candidates` to repack.
    pub(super) fn plan_repack(&self, candidates: &[Candidate]) -> Plan {
        let ids: HashSet<Id> = candidates.iter().map(|c| c.message.id).collect();
        let index = self.index();
        let set = index.set_by(&ids);
        let mut plan = Plan::default();
        for candidate in candidates {
            let id = candidate.message.id;
            let Some(SetBy { files, dirs }) = set.get(&id) else {
                continue; // used only by other records' files: it stays anyway
            };
            let dead = candidate.puts.len().saturating_sub(files.len());
            if dead == 0 || *dirs > 0 {
                continue;
            }
            if files
                .iter()
                .any(|(_, _, f)| f.chunks.iter().any(|c| c.channel.is_some()))
            {
                continue;
            }
            // Every use of the message must be one of its own files': its record,
            // and its chunks there.
            let own_uses: u32 = files
                .iter()
                .map(|(_, _, f)| 1 + f.chunks.iter().filter(|c| c.message == id).count() as u32)
                .sum();
            if index.uses_of(id) != own_uses {
                continue;
            }
            let live: u64 = files
                .iter()
                .flat_map(|(_, _, f)| {
                    f.chunks
                        .iter()
                        .filter(|c| c.message == id)
                        .map(|c| sealed_len(c, f.encrypted))
                })
                .sum();
            let total: u64 = candidate
                .message
                .attachments
                .iter()
                .filter(|a| a.filename != format::RECORD_ATTACHMENT)
                .map(|a| a.size)
                .sum();
            let blocks_a_delete = candidate.puts.iter().any(|p| index.is_tombstone(p));
            let mostly_dead = live as f64 <= total as f64 * REPACK_LIVE_SHARE;
            if !blocks_a_delete && !mostly_dead {
                continue;
            }
            plan.messages.insert(id, files.len());
            plan.bytes += live;
            for (path, stamp, file) in files {
                let sealed = file
                    .chunks
                    .iter()
                    .filter(|c| c.message == id)
                    .map(|c| sealed_len(c, file.encrypted))
                    .sum();
                plan.moves.push(Move {
                    from: id,
                    path: path.clone(),
                    stamp: *stamp,
                    file: file.clone(),
                    sealed,
                });
            }
        }
        plan
    }

    /// Steps 2 and 3 of the module docs: copies and relocates the files of `plan`. A
    /// batch that fails is logged and left out (its old messages stay as they were).
    pub(super) async fn repack(&self, plan: Plan) -> Repacked {
        let limits = self.limits();
        let pack_limits = PackLimits::new(&limits);
        let max_packs = limits.max_attachments.saturating_sub(1).max(1);
        // Cut into batches of what one message holds (packs laid out first-fit in
        // order, as [`lay_out`] does).
        let mut batches: Vec<Vec<Move>> = Vec::new();
        let mut current: Vec<Move> = Vec::new();
        let (mut packs, mut sealed) = ((0usize, 0u64), 0u64);
        for moving in plan.moves {
            let chunks: Vec<u64> = moving
                .file
                .chunks
                .iter()
                .filter(|c| c.message == moving.from)
                .map(|c| sealed_len(c, moving.file.encrypted))
                .collect();
            let mut placed = place(packs, &chunks, limits.max_file_size);
            let full = current.len() >= MAX_PACKED_FILES
                || placed.0 > max_packs
                || sealed + moving.sealed > pack_limits.sealed_bytes;
            if full && !current.is_empty() {
                batches.push(std::mem::take(&mut current));
                sealed = 0;
                placed = place((0, 0), &chunks, limits.max_file_size);
            }
            packs = placed;
            sealed += moving.sealed;
            current.push(moving);
        }
        if !current.is_empty() {
            batches.push(current);
        }
        let mut left: HashMap<Id, usize> = plan.messages.clone().into_iter().collect();
        let mut done = Repacked::default();
        while let Some(batch) = batches.pop() {
            let built = self.lay_out(&batch).await;
            let (attachments, ops) = match built {
                Ok(built) => built,
                Err(e) => {
                    log::warn!(
                        "#{}: could not copy {} file(s) to repack them ({e}); their records \
                         stay as they are",
                        self.channel.name,
                        batch.len()
                    );
                    continue;
                }
            };
            if !pack::fits_one_message(&attachments, &ops, &limits) && batch.len() > 1 {
                let mut batch = batch;
                let second = batch.split_off(batch.len() / 2);
                batches.push(batch);
                batches.push(second);
                continue;
            }
            let riders = Riders {
                attachments,
                ..Riders::default()
            };
            match self.post_record(ops, riders).await {
                Ok((posted, _)) => {
                    done.posted += 1;
                    log::info!(
                        "#{}: relocated {} file(s) into message {}",
                        self.channel.name,
                        batch.len(),
                        posted.id
                    );
                    for moving in &batch {
                        done.files += 1;
                        done.bytes += moving.sealed;
                        if let Some(n) = left.get_mut(&moving.from) {
                            *n -= 1;
                        }
                    }
                }
                Err(e) => log::warn!(
                    "#{}: could not post the relocation of {} file(s) ({e}); their records \
                     stay as they are",
                    self.channel.name,
                    batch.len()
                ),
            }
        }
        done.messages = plan
            .messages
            .keys()
            .copied()
            .filter(|m| left.get(m) == Some(&0))
            .collect();
        done
    }

    /// The packs and the `relocate` operations of one batch: each moving chunk's sealed
    /// bytes fetched (one range per attachment) and laid end to end.
    async fn lay_out(&self, batch: &[Move]) -> Result<(Vec<NewAttachment>, Vec<Op>), VolumeError> {
        let max_file = self.limits().max_file_size;
        // The span of each source attachment that the batch needs.
        let mut spans: BTreeMap<(Id, Id), (u64, u64)> = BTreeMap::new();
        for moving in batch {
            for chunk in moving
                .file
                .chunks
                .iter()
                .filter(|c| c.message == moving.from)
            {
                let start = chunk.packed_at.unwrap_or(0);
                let end = start + sealed_len(chunk, moving.file.encrypted);
                let span = spans
                    .entry((chunk.message, chunk.attachment))
                    .or_insert((start, end));
                span.0 = span.0.min(start);
                span.1 = span.1.max(end);
            }
        }
        let mut fetched: HashMap<(Id, Id), (u64, bytes::Bytes)> = HashMap::new();
        for (&(message, attachment), &(start, end)) in &spans {
            let bytes = self
                .store
                .fetch_range(self.channel.id, message, attachment, start..end)
                .await?;
            if bytes.len() as u64 != end - start {
                return Err(VolumeError::Internal(format!(
                    "attachment {attachment} of message {message} gave {} bytes of {start}..{end}",
                    bytes.len()
                )));
            }
            fetched.insert((message, attachment), (start, bytes));
        }
        let mut packs: Vec<Vec<u8>> = Vec::new();
        let mut ops = Vec::with_capacity(batch.len());
        for moving in batch {
            let mut manifest = moving.file.manifest(&moving.path);
            for (chunk, reference) in moving.file.chunks.iter().zip(&mut manifest.chunks) {
                if chunk.message != moving.from {
                    continue; // elsewhere: the reference stays
                }
                let (start, bytes) = &fetched[&(chunk.message, chunk.attachment)];
                let at = (chunk.packed_at.unwrap_or(0) - start) as usize;
                let len = sealed_len(chunk, moving.file.encrypted) as usize;
                let sealed = &bytes[at..at + len];
                let room = packs
                    .last()
                    .is_some_and(|p| (p.len() + len) as u64 <= max_file);
                if !room {
                    packs.push(Vec::new());
                }
                let position = packs.len() - 1;
                let pack = packs.last_mut().expect("a pack was just made");
                let offset = pack.len() as u64;
                pack.extend_from_slice(sealed);
                *reference = ChunkRef {
                    location: ChunkLocation::Attached {
                        filename: format::chunk_filename(position as u64),
                    },
                    packed_at: Some(offset),
                    ..reference.clone()
                };
            }
            ops.push(Op::Relocate(Relocation {
                s: moving.stamp.named(),
                file: manifest,
            }));
        }
        Ok((pack::pack_attachments(packs), ops))
    }
}
