//! Packing: small files that go up together share attachments and one record.
//!
//! Discord limits messages, not bytes: about five per five seconds in a channel. So a
//! batch of small files ([`super::Volume::put_small`]) is one message: their sealed
//! chunks laid end to end in a few attachments (*packs*, each at most the store's
//! per-attachment limit), and one record that puts them all, naming each chunk by its
//! pack and the offset it starts at (`o`, format version 4). A reader fetches only the
//! byte range of the file it reads (segments of it, for an encrypted file), so a pack
//! costs nothing to read that a file of its own wouldn't.
//!
//! Why it is built this way:
//!
//! - **One message, all or none.** The record rides on the message that carries the
//!   packs, so the batch appears whole or (if the post fails) not at all, and no
//!   data message is left to clean up.
//! - **A message's worth.** A batch is cut ([`PackBudget`]) to what one message holds:
//!   at most [`MAX_PACKED_FILES`] files, one attachment kept free for the record, and
//!   the sealed bytes plus the record within the request budget. The record's size
//!   depends on the paths, so [`fits_one_message`] checks the batch as sealed, and a
//!   batch that doesn't fit is halved.
//! - **Freed as a whole.** Discord deletes messages, not parts of them: a pack's message
//!   stays while any file in it is live (the reclaim rules count every chunk reference),
//!   and goes with the last one. Rewriting mostly dead packs (compaction) is left to
//!   the garbage collection of the checkpoints work.
//! - **What the channel shows.** A pack shows the total size of its files, not each
//!   one's; the record (sealed) hides how the total splits.

use crate::crypto::Key;
use crate::format::{self, ChunkLocation, DataKey, FileId, FileManifest, Op, Record};
use crate::store::{Limits, NewAttachment};

use super::transfer::{self, ChunkPlan};
use super::{SmallFile, VolumeError, chunk_kind};

/// The most files one message of packed small files holds. Bounds a record (a few
/// hundred bytes a file, under a MiB) and what a failed post has to redo.
pub const MAX_PACKED_FILES: usize = 2000;

/// What one message of packed small files may hold (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    /// Files in one message.
    pub files: usize,
    /// Sealed bytes of the packs of one message.
    pub sealed_bytes: u64,
    /// The largest small file, in plaintext bytes, plain and encrypted (see
    /// [`PackLimits::file_limit`]).
    file_limit_plain: u64,
    file_limit_encrypted: u64,
}

impl PackLimits {
    /// The limits that follow from the store's.
    pub fn new(limits: &Limits) -> PackLimits {
        let budget = transfer::request_budget(limits);
        // Room for the record beside the packs: an eighth of the request.
        let sealed_bytes = (budget - budget / 8)
            .min(limits.max_file_size * limits.max_attachments.saturating_sub(1).max(1) as u64);
        let file_limit = |encrypted: bool| {
            let kind = chunk_kind(encrypted);
            let chunk = ChunkPlan::new(limits, kind).map_or(0, |p| p.chunk_len as u64);
            kind.capacity((budget / 8).min(limits.max_file_size))
                .min(chunk)
        };
        PackLimits {
            files: MAX_PACKED_FILES,
            sealed_bytes,
            file_limit_plain: file_limit(false),
            file_limit_encrypted: file_limit(true),
        }
    }

    /// The largest file that is packed (in plaintext bytes): one chunk, an eighth of a
    /// message at most.
    pub fn file_limit(&self, encrypted: bool) -> u64 {
        if encrypted {
            self.file_limit_encrypted
        } else {
            self.file_limit_plain
        }
    }

    /// A budget for one message.
    pub fn budget(self) -> PackBudget {
        PackBudget {
            limits: self,
            files: 0,
            sealed: 0,
        }
    }
}

/// Counts the files of one batch against [`PackLimits`], so that a caller gathering
/// small files knows when to send what it has.
#[derive(Debug, Clone, Copy)]
pub struct PackBudget {
    limits: PackLimits,
    files: usize,
    sealed: u64,
}

impl PackBudget {
    /// Counts a file of `size` bytes if it fits beside those counted so far; `false`
    /// (counting nothing) if the batch is full. A batch always takes its first file.
    pub fn take(&mut self, size: u64, encrypted: bool) -> bool {
        let sealed = chunk_kind(encrypted).sealed_len(size);
        let fits = self.files < self.limits.files
            && self.sealed.saturating_add(sealed) <= self.limits.sealed_bytes;
        if fits || self.files == 0 {
            self.files += 1;
            self.sealed = self.sealed.saturating_add(sealed);
            true
        } else {
            false
        }
    }

    /// Files counted.
    pub fn files(&self) -> usize {
        self.files
    }
}

/// Seals `files` (each at most the pack limit) as chunk 0 of each, laid end to end in
/// packs of at most `limits.max_file_size` bytes (named by position, like any chunk
/// attachment), and makes the record operations that put them.
pub(super) fn pack_small_files(
    files: Vec<SmallFile>,
    key: Option<&Key>,
    limits: &Limits,
) -> Result<(Vec<NewAttachment>, Vec<Op>), VolumeError> {
    let mut packs: Vec<Vec<u8>> = Vec::new();
    let mut ops = Vec::with_capacity(files.len());
    for file in files {
        let id = FileId::random()?;
        let data_key = match (file.options.encrypted, key) {
            (true, Some(_)) => Some(DataKey::random()?),
            (true, None) => return Err(VolumeError::NoKey),
            (false, _) => None,
        };
        let mut chunks = Vec::new();
        if !file.data.is_empty() {
            let sealing_key = data_key.map(|k| k.key());
            let sealing = sealing_key
                .as_ref()
                .map_or(format::Sealing::Plain, format::Sealing::Encrypted);
            let mut buffer = format::ChunkBuffer::new(file.data.len(), sealing, id, 0)?;
            buffer.extend_from_slice(&file.data)?;
            let sealed = buffer.seal()?;
            let bytes = sealed.as_bytes();
            let room = packs
                .last()
                .is_some_and(|p| (p.len() + bytes.len()) as u64 <= limits.max_file_size);
            if !room {
                packs.push(Vec::new());
            }
            let position = packs.len() - 1;
            let pack = packs.last_mut().expect("a pack was just made");
            let offset = pack.len() as u64;
            pack.extend_from_slice(bytes);
            chunks.push(format::ChunkRef {
                location: ChunkLocation::Attached {
                    filename: format::chunk_filename(position as u64),
                },
                len: sealed.plain_len,
                sha256: sealed.sha256,
                tag: None,
                key: None,
                prefix: sealed.prefix,
                packed_at: Some(offset),
            });
        }
        ops.push(Op::Put(FileManifest {
            path: file.path,
            id,
            size: file.data.len() as u64,
            mtime_ns: file.options.mtime_ns,
            mode: file.options.mode & 0o7777,
            encrypted: file.options.encrypted,
            chunks,
            data_key,
            symlink: None,
            special: None,
            node: None,
            meta: format::Meta::default(),
        }));
    }
    Ok((pack_attachments(packs), ops))
}

/// Packs as the attachments of their message, named by their position (which is how
/// chunk references name them: [`format::chunk_filename`]).
pub(super) fn pack_attachments(packs: Vec<Vec<u8>>) -> Vec<NewAttachment> {
    packs
        .into_iter()
        .enumerate()
        .map(|(position, data)| NewAttachment {
            filename: format::chunk_filename(position as u64),
            data: data.into(),
        })
        .collect()
}

/// Whether packs and the record that puts their files fit one message, with the record
/// attached: an attachment to spare, the record within the per-attachment limit, and
/// everything within the request budget. The record's size is that of its JSON sealed,
/// with the largest `seq`.
pub(super) fn fits_one_message(packs: &[NewAttachment], ops: &[Op], limits: &Limits) -> bool {
    let record = Record {
        seq: u64::MAX,
        ops: ops.to_vec(),
    };
    let Ok(json) = serde_json::to_vec(&record) else {
        return false;
    };
    // Envelope header, nonce and tag, with room to spare.
    let record_len = json.len() as u64 + 64;
    let packed: u64 = packs.iter().map(|p| p.data.len() as u64).sum();
    packs.len() < limits.max_attachments
        && packs
            .iter()
            .all(|p| p.data.len() as u64 <= limits.max_file_size)
        && record_len <= limits.max_file_size
        && packed + record_len <= transfer::request_budget(limits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::PutOptions;

    const LIMITS: Limits = Limits {
        max_file_size: 4096,
        max_attachments: 4,
        max_request_size: 10_000,
        max_content_chars: 2000,
    };

    fn small(path: &str, len: usize, encrypted: bool) -> SmallFile {
        SmallFile {
            path: path.into(),
            data: (0..len).map(|i| i as u8).collect(),
            options: PutOptions {
                mtime_ns: 0,
                mode: 0o644,
                encrypted,
                owner: None,
                atime_ns: None,
            },
        }
    }

    #[test]
    fn files_share_packs_end_to_end_and_a_new_pack_starts_when_one_is_full() {
        let key = Key::generate().unwrap();
        let files: Vec<_> = (0..5)
            .map(|i| small(&format!("f{i}"), 1000, true))
            .collect();
        let (packs, ops) = pack_small_files(files, Some(&key), &LIMITS).unwrap();
        let sealed = chunk_kind(true).sealed_len(1000) as usize;
        let per_pack = 4096 / sealed;
        assert_eq!(packs.len(), 5_usize.div_ceil(per_pack));
        assert_eq!(packs[0].data.len(), per_pack * sealed);
        let places: Vec<(String, u64)> = ops
            .iter()
            .map(|op| match op {
                Op::Put(put) => match &put.chunks[0].location {
                    ChunkLocation::Attached { filename } => {
                        (filename.clone(), put.chunks[0].packed_at.unwrap())
                    }
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(places[0], ("c0.bin".into(), 0));
        assert_eq!(places[1], ("c0.bin".into(), sealed as u64));
        assert_eq!(places[per_pack], ("c1.bin".into(), 0));
        // Each chunk opens from its range of the pack.
        for (op, (name, at)) in ops.iter().zip(&places) {
            let Op::Put(put) = op else { unreachable!() };
            let pack = packs.iter().find(|p| &p.filename == name).unwrap();
            let at = *at as usize;
            let opened = format::open_chunk(
                Some(&put.data_key.unwrap().key()),
                put.id,
                true,
                0,
                &put.chunks[0],
                pack.data[at..at + sealed].to_vec(),
            )
            .unwrap();
            assert_eq!(opened.concat(), small("x", 1000, true).data);
        }
    }

    #[test]
    fn a_budget_cuts_batches_to_a_message() {
        let limits = PackLimits::new(&LIMITS);
        assert!(limits.sealed_bytes <= transfer::request_budget(&LIMITS));
        let mut budget = limits.budget();
        let mut taken = 0;
        while budget.take(1000, true) {
            taken += 1;
        }
        assert!(taken >= 2);
        assert_eq!(budget.files(), taken);
        // A file larger than the budget is taken when it comes first.
        let mut fresh = limits.budget();
        assert!(fresh.take(limits.sealed_bytes * 2, true));
        assert!(!fresh.take(1, true));
        let mut count = PackLimits { files: 3, ..limits }.budget();
        assert!(count.take(0, false) && count.take(0, false) && count.take(0, false));
        assert!(!count.take(0, false));
    }

    #[test]
    fn a_message_fits_only_with_an_attachment_and_room_to_spare() {
        let key = Key::generate().unwrap();
        let files = vec![small("a", 1000, true), small("b", 1000, true)];
        let (packs, ops) = pack_small_files(files, Some(&key), &LIMITS).unwrap();
        assert!(fits_one_message(&packs, &ops, &LIMITS));
        let four = vec![packs[0].clone(); 4];
        assert!(!fits_one_message(&four, &ops, &LIMITS));
        let long: Vec<Op> = (0..200)
            .map(|i| {
                let Op::Put(mut put) = ops[0].clone() else {
                    unreachable!()
                };
                put.path = format!("{}/{i}", "x".repeat(200));
                Op::Put(put)
            })
            .collect();
        assert!(!fits_one_message(&packs, &long, &LIMITS));
    }
}
