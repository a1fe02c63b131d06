//! Checking that a channel is whole ([`Volume::verify`], `dcloud-fs verify`): that every
//! file the index shows can still be read, from any machine. restic's `check
//! --read-data-subset` is the model.
//!
//! A channel is damaged without anyone noticing until someone reads the file: a
//! moderator deletes a message (a chunk's, or a record's), an attachment goes missing
//! or comes back short, or its bytes change. A verification looks at the live entries
//! of the index (all of them, or those under a path) in two steps.
//!
//! **Structure** (always). For every chunk every live file names: its message exists
//! and carries the attachment, and the attachment (as the store describes it) is long
//! enough for the chunk's byte range: `o + sealed length` for a chunk in a pack, where
//! the sealed length follows from the chunk's kind ([`crate::format::ChunkKind`]); a
//! chunk that is a whole attachment must be exactly that long (the reader refuses any
//! other length). For every live entry, file or folder, its record message exists:
//! without it, a machine without this index cache (a fresh one, or this one after a
//! `--no-cache` open) would not see the entry at all. And every delete under the path
//! that is newer than the newest checkpoint still has its message: a fresh machine
//! loads the checkpoint and replays what follows it, so without that message the file
//! could come back there (older deletes are in the checkpoint). No attachment byte is
//! read.
//!
//! The messages of this channel come from its history, read once over the range of
//! ids that the entries name ([`Volume::messages_in`]): a page of a hundred messages per
//! request, where asking for each message would cost a request per message. That range
//! includes the chat posted between our messages, which costs its pages too; a channel
//! that is mostly chat pays for it. Chunks in other channels (files moved here keep
//! their chunks where they were, `c` in the record) are few: each distinct message is
//! asked for on its own.
//!
//! **Data** ([`DataCheck::All`], or [`DataCheck::Sample`] for a random share of the
//! chunks). Each chunk the structure check found in place is fetched and opened through
//! the read path everyone uses ([`super::transfer::ChunkFetcher`]): every segment's tag
//! (under the file's data key, with the nonce prefix the record pins), a whole chunk's
//! tag, a plain chunk's SHA-256. The fetcher is given no disk cache, so that the bytes
//! checked are the store's, not a copy kept on this machine, and the cache isn't filled
//! with blocks nobody asked to read. A chunk that fails the structure check is not read
//! (its problem is known already). At most `download_parallel_chunks` chunks are in
//! flight, each whole in memory until it is opened.
//!
//! Nothing is changed: no record is posted and nothing is deleted (open the volume with
//! [`Volume::open_to_inspect`] so that the open doesn't either). A store that fails
//! (network down, after its retries) fails the verification with its error, rather than
//! being reported as damage. What a verification can't tell: whether records this key
//! can't read hide files (they are counted by the index, see `ls`), and whether the
//! bytes of a chunk it didn't read are intact.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::RangeInclusive;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use super::history::HistoryReader;
use super::index::{Entry, FileEntry, Node, StoredChunk};
use super::transfer::{ChunkFetcher, FileSeal};
use super::{Volume, VolumeError};
use crate::store::{Id, Message};

/// How much of the data a verification reads.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum DataCheck {
    /// None: the structure only.
    #[default]
    Skip,
    /// Every chunk.
    All,
    /// `percent` (more than 0, at most 100) of the chunks, at least one, picked at
    /// random: by `seed`, or by a random seed if `None`.
    Sample { percent: f64, seed: Option<u64> },
}

/// What hears how a verification goes (a progress bar).
pub trait VerifyProgress: Send + Sync {
    /// The data check starts: `chunks` chunks of `bytes` sealed bytes to read.
    fn reading(&self, chunks: u64, bytes: u64);
    /// One more chunk was read (or failed to be), `bytes` long.
    fn read(&self, bytes: u64);
}

/// What [`Volume::verify`] checks.
#[derive(Clone, Default)]
pub struct VerifyOptions {
    pub data: DataCheck,
    pub progress: Option<Arc<dyn VerifyProgress>>,
}

/// What is wrong with one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The message of the record that puts the entry here is gone: a machine without
    /// this index cache would not see the entry.
    RecordMissing {
        #[serde(serialize_with = "id_string")]
        message: Id,
    },
    /// The message holding the chunk is gone.
    MessageMissing {
        chunk: u64,
        /// The channel it was in, when that isn't this one (a file moved here).
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "optional_id_string"
        )]
        channel: Option<Id>,
        #[serde(serialize_with = "id_string")]
        message: Id,
    },
    /// The message exists but doesn't carry the chunk's attachment.
    AttachmentMissing {
        chunk: u64,
        #[serde(serialize_with = "id_string")]
        message: Id,
        #[serde(serialize_with = "id_string")]
        attachment: Id,
    },
    /// The attachment ends before the chunk does.
    AttachmentTooShort { chunk: u64, size: u64, needed: u64 },
    /// The attachment, which is the whole chunk, is longer than the chunk.
    AttachmentTooLong {
        chunk: u64,
        size: u64,
        expected: u64,
    },
    /// The chunk was read and doesn't open: a tag that doesn't verify, a checksum
    /// that doesn't match, a length that isn't the record's, a key that isn't loaded.
    DoesNotOpen { chunk: u64, detail: String },
    /// The path is deleted, and the message of that delete, newer than the newest
    /// checkpoint, is gone: a fresh machine (which replays what follows the
    /// checkpoint) would show the file again if a record putting it is still there.
    DeleteMissing {
        #[serde(serialize_with = "id_string")]
        message: Id,
    },
}

impl Problem {
    /// The chunk it is about, if any.
    pub fn chunk(&self) -> Option<u64> {
        match self {
            Problem::RecordMissing { .. } | Problem::DeleteMissing { .. } => None,
            Problem::MessageMissing { chunk, .. }
            | Problem::AttachmentMissing { chunk, .. }
            | Problem::AttachmentTooShort { chunk, .. }
            | Problem::AttachmentTooLong { chunk, .. }
            | Problem::DoesNotOpen { chunk, .. } => Some(*chunk),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::RecordMissing { message } => write!(
                f,
                "its record (message {message}) is gone: a machine without this index \
                 cache would not see it"
            ),
            Problem::MessageMissing {
                chunk,
                channel: None,
                message,
            } => write!(f, "chunk {chunk}: its message {message} is gone"),
            Problem::MessageMissing {
                chunk,
                channel: Some(channel),
                message,
            } => write!(
                f,
                "chunk {chunk}: its message {message} in channel {channel} is gone"
            ),
            Problem::AttachmentMissing {
                chunk,
                message,
                attachment,
            } => write!(
                f,
                "chunk {chunk}: message {message} no longer has its attachment {attachment}"
            ),
            Problem::AttachmentTooShort {
                chunk,
                size,
                needed,
            } => write!(
                f,
                "chunk {chunk}: its attachment is {size} bytes, too short for the {needed} \
                 its record needs"
            ),
            Problem::AttachmentTooLong {
                chunk,
                size,
                expected,
            } => write!(
                f,
                "chunk {chunk}: its attachment is {size} bytes, its record says {expected}"
            ),
            Problem::DoesNotOpen { chunk, detail } => {
                write!(f, "chunk {chunk} does not open: {detail}")
            }
            Problem::DeleteMissing { message } => write!(
                f,
                "deleted, but the delete (message {message}, after the newest checkpoint) \
                 is gone: a fresh machine may show it again"
            ),
        }
    }
}

/// The problems of one file or folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damaged {
    /// Its path in the channel.
    pub path: String,
    /// A folder (recorded by `mkdir`), not a file.
    pub folder: bool,
    /// In chunk order, the record's first.
    pub problems: Vec<Problem>,
}

impl Damaged {
    /// Whether only its record is missing: its bytes are all there.
    pub fn only_record_missing(&self) -> bool {
        self.problems
            .iter()
            .all(|p| matches!(p, Problem::RecordMissing { .. }))
    }
}

/// What a verification of one channel found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The channel's name.
    pub channel: String,
    pub files_checked: u64,
    /// Folders recorded by `mkdir` (implied folders have no record to check).
    pub folders_checked: u64,
    /// Chunk references whose message and attachment were checked.
    pub chunks_checked: u64,
    /// Chunks fetched and opened.
    pub chunks_read: u64,
    /// Sealed bytes fetched from the store.
    pub bytes_read: u64,
    /// The entries with problems, in path order.
    pub damaged: Vec<Damaged>,
}

impl VerifyReport {
    /// Problems found, over every entry.
    pub fn problems(&self) -> usize {
        self.damaged.iter().map(|d| d.problems.len()).sum()
    }

    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
    }
}

/// A chunk the structure check found in place, to read: (file, chunk index).
type ToRead = (usize, u64);

/// The files a verification looks at, with their paths.
type Files = Vec<(String, FileEntry)>;
/// The recorded folders it looks at, with their paths and record messages.
type Folders = Vec<(String, Id)>;

impl Volume {
    /// Verifies the files and folders at or under `path` ("" for the whole channel):
    /// see the module docs. Changes nothing; fails only if the store does (or the path
    /// isn't there, or the verification is interrupted), and reports what it found
    /// wrong in the [`VerifyReport`].
    pub async fn verify(
        &self,
        path: &str,
        options: &VerifyOptions,
    ) -> Result<VerifyReport, VolumeError> {
        let (files, folders) = self.entries_to_verify(path)?;
        let mut report = VerifyReport {
            channel: self.channel.name.clone(),
            files_checked: files.len() as u64,
            folders_checked: folders.len() as u64,
            ..VerifyReport::default()
        };
        let mut found: BTreeMap<String, Vec<Problem>> = BTreeMap::new();
        let deletes = self.deletes_to_verify(path);
        let here = self.messages_here(&files, &folders, &deletes).await?;
        let elsewhere = self.messages_elsewhere(&files).await?;
        let mut sound: Vec<ToRead> = Vec::new();
        for (at, (path, file)) in files.iter().enumerate() {
            let mut problems = Vec::new();
            if !here.contains_key(&file.record_message) {
                problems.push(Problem::RecordMissing {
                    message: file.record_message,
                });
            }
            for (index, chunk) in file.chunks.iter().enumerate() {
                let index = index as u64;
                report.chunks_checked += 1;
                let message = match chunk.channel {
                    None => here.get(&chunk.message),
                    Some(channel) => elsewhere
                        .get(&(channel, chunk.message))
                        .and_then(Option::as_ref),
                };
                match check_chunk(file, index, chunk, message) {
                    Some(problem) => problems.push(problem),
                    None => sound.push((at, index)),
                }
            }
            if !problems.is_empty() {
                found.insert(path.clone(), problems);
            }
        }
        for (path, message) in &deletes {
            if !here.contains_key(message) {
                found.insert(
                    path.clone(),
                    vec![Problem::DeleteMissing { message: *message }],
                );
            }
        }
        for (path, record) in &folders {
            if !here.contains_key(record) {
                found.insert(
                    path.clone(),
                    vec![Problem::RecordMissing { message: *record }],
                );
            }
        }
        let chosen = choose(sound, options.data);
        if !chosen.is_empty() {
            self.read_chunks(&files, chosen, options, &mut report, &mut found)
                .await?;
        }
        let folder_paths: HashSet<&String> = folders.iter().map(|(path, _)| path).collect();
        report.damaged = found
            .into_iter()
            .map(|(path, mut problems)| {
                problems.sort_by_key(|p| p.chunk().map_or(0, |c| c + 1));
                Damaged {
                    folder: folder_paths.contains(&path),
                    path,
                    problems,
                }
            })
            .collect();
        Ok(report)
    }

    /// The live files at or under `path`, and the recorded folders (with their record
    /// messages), in path order.
    fn entries_to_verify(&self, path: &str) -> Result<(Files, Folders), VolumeError> {
        let index = self.index();
        let entries: Vec<(String, Entry)> = match index.node(path) {
            None => {
                drop(index);
                return Err(self.not_found(path));
            }
            Some(Node::File(file)) => vec![(path.to_string(), Entry::File(file.clone()))],
            Some(Node::Dir(_)) => index
                .entry(path)
                .map(|entry| (path.to_string(), entry.clone()))
                .into_iter()
                .chain(
                    index
                        .live_under(path)
                        .map(|(p, entry)| (p.to_string(), entry.clone())),
                )
                .collect(),
        };
        let (mut files, mut folders) = (Vec::new(), Vec::new());
        for (path, entry) in entries {
            match entry {
                Entry::File(file) => files.push((path, file)),
                Entry::Dir(dir) => folders.push((path, dir.record_message)),
            }
        }
        Ok((files, folders))
    }

    /// The deletes under `path` that a fresh machine reads from the history
    /// (those newer than the newest checkpoint: it loads that, and replays the rest),
    /// with the messages that carry them.
    fn deletes_to_verify(&self, path: &str) -> Vec<(String, Id)> {
        let index = self.index();
        let newest = index.newest_checkpoint();
        index.deletes_after(path, newest)
    }

    /// The messages of this channel that the entries name (records, chunks) and that
    /// carry the deletes, by id: those that still exist.
    async fn messages_here(
        &self,
        files: &[(String, FileEntry)],
        folders: &[(String, Id)],
        deletes: &[(String, Id)],
    ) -> Result<HashMap<Id, Message>, VolumeError> {
        let mut wanted: HashSet<Id> = folders.iter().map(|(_, record)| *record).collect();
        wanted.extend(deletes.iter().map(|(_, message)| *message));
        for (_, file) in files {
            wanted.insert(file.record_message);
            wanted.extend(
                file.chunks
                    .iter()
                    .filter(|c| c.channel.is_none())
                    .map(|c| c.message),
            );
        }
        let (Some(&first), Some(&last)) = (wanted.iter().min(), wanted.iter().max()) else {
            return Ok(HashMap::new());
        };
        let messages = self.messages_in(first..=last).await?;
        Ok(messages
            .into_iter()
            .filter(|m| wanted.contains(&m.id))
            .map(|m| (m.id, m))
            .collect())
    }

    /// The messages of other channels that chunks name, `(channel, message)`: `None`
    /// for those that are gone (or whose channel is).
    async fn messages_elsewhere(
        &self,
        files: &[(String, FileEntry)],
    ) -> Result<HashMap<(Id, Id), Option<Message>>, VolumeError> {
        let mut found = HashMap::new();
        for (_, file) in files {
            for chunk in &file.chunks {
                let Some(channel) = chunk.channel else {
                    continue;
                };
                if found.contains_key(&(channel, chunk.message)) {
                    continue;
                }
                self.config.interrupt.check()?;
                let message = match self.store.message(channel, chunk.message).await {
                    Ok(message) => Some(message),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(e.into()),
                };
                found.insert((channel, chunk.message), message);
            }
        }
        Ok(found)
    }

    /// Fetches and opens the chunks `chosen`, noting what doesn't open in `found`.
    async fn read_chunks(
        &self,
        files: &[(String, FileEntry)],
        chosen: Vec<ToRead>,
        options: &VerifyOptions,
        report: &mut VerifyReport,
        found: &mut BTreeMap<String, Vec<Problem>>,
    ) -> Result<(), VolumeError> {
        let sealed_len = |&(at, index): &ToRead| {
            let file = &files[at].1;
            let chunk = &file.chunks[index as usize];
            chunk.kind(file.encrypted).sealed_len(chunk.len)
        };
        if let Some(progress) = &options.progress {
            let bytes = chosen.iter().map(sealed_len).sum();
            progress.reading(chosen.len() as u64, bytes);
        }
        let fetchers: Vec<ChunkFetcher> = files
            .iter()
            .map(|(path, _)| ChunkFetcher {
                // The store's bytes, not a copy on this machine; and none kept.
                disk_cache: None,
                fill_disk_cache: false,
                ..self.fetcher(path)
            })
            .collect();
        let interrupt = self.config.interrupt.clone();
        let mut reads = futures::stream::iter(chosen)
            .map(|(at, index)| {
                let fetcher = fetchers[at].clone();
                let file = &files[at].1;
                let seal = FileSeal::of(file);
                let chunk = file.chunks[index as usize].clone();
                let interrupt = interrupt.clone();
                let read = tokio::spawn(async move {
                    interrupt.check()?;
                    fetcher.fetch(seal, index, &chunk).await.map(drop)
                });
                async move { ((at, index), read.await) }
            })
            .buffer_unordered(self.config.download_parallel_chunks.max(1));
        while let Some((read, outcome)) = reads.next().await {
            let (at, index) = read;
            let outcome =
                outcome.map_err(|e| VolumeError::Internal(format!("a verify task failed: {e}")))?;
            let bytes = sealed_len(&read);
            let problem = match outcome {
                Ok(()) => None,
                Err(VolumeError::Chunk { source, .. }) => Some(Problem::DoesNotOpen {
                    chunk: index,
                    detail: source.to_string(),
                }),
                Err(e @ VolumeError::WrongKey { .. }) => Some(Problem::DoesNotOpen {
                    chunk: index,
                    detail: e.to_string(),
                }),
                Err(VolumeError::ChunkMissing { .. }) => {
                    let chunk = &files[at].1.chunks[index as usize];
                    Some(Problem::AttachmentMissing {
                        chunk: index,
                        message: chunk.message,
                        attachment: chunk.attachment,
                    })
                }
                Err(e) => return Err(e),
            };
            if !matches!(problem, Some(Problem::AttachmentMissing { .. })) {
                report.chunks_read += 1;
                report.bytes_read += bytes;
            }
            if let Some(progress) = &options.progress {
                progress.read(bytes);
            }
            if let Some(problem) = problem {
                found.entry(files[at].0.clone()).or_default().push(problem);
            }
        }
        Ok(())
    }
}

/// What is wrong with chunk `index` of `file`, held (as far as the store says) by
/// `message` (`None`: the message is gone).
fn check_chunk(
    file: &FileEntry,
    index: u64,
    chunk: &StoredChunk,
    message: Option<&Message>,
) -> Option<Problem> {
    let Some(message) = message else {
        return Some(Problem::MessageMissing {
            chunk: index,
            channel: chunk.channel,
            message: chunk.message,
        });
    };
    let Some(attachment) = message
        .attachments
        .iter()
        .find(|a| a.id == chunk.attachment)
    else {
        return Some(Problem::AttachmentMissing {
            chunk: index,
            message: chunk.message,
            attachment: chunk.attachment,
        });
    };
    let sealed = chunk.kind(file.encrypted).sealed_len(chunk.len);
    let needed = chunk.packed_at.unwrap_or(0).saturating_add(sealed);
    if attachment.size < needed {
        return Some(Problem::AttachmentTooShort {
            chunk: index,
            size: attachment.size,
            needed,
        });
    }
    if chunk.packed_at.is_none() && attachment.size > sealed {
        return Some(Problem::AttachmentTooLong {
            chunk: index,
            size: attachment.size,
            expected: sealed,
        });
    }
    None
}

/// The chunks of `sound` that `check` reads: none, all, or a random sample (in random
/// order).
fn choose(mut sound: Vec<ToRead>, check: DataCheck) -> Vec<ToRead> {
    match check {
        DataCheck::Skip => Vec::new(),
        DataCheck::All => sound,
        DataCheck::Sample { percent, seed } => {
            let count = sample_size(sound.len(), percent);
            let mut rng = SplitMix64(seed.unwrap_or_else(|| getrandom::u64().unwrap_or(0)));
            // A partial Fisher–Yates shuffle: the first `count` are a uniform sample.
            for at in 0..count {
                let pick = at + (rng.next() % (sound.len() - at) as u64) as usize;
                sound.swap(at, pick);
            }
            sound.truncate(count);
            sound
        }
    }
}

/// How many of `total` chunks a sample of `percent` reads: the share rounded, at least
/// one if there are any, at most all.
pub fn sample_size(total: usize, percent: f64) -> usize {
    if total == 0 {
        return 0;
    }
    let share = (total as f64 * percent.clamp(0.0, 100.0) / 100.0).round() as usize;
    share.clamp(1, total)
}

/// splitmix64: enough to pick a sample, and reproducible from its seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Volume {
    /// The messages of this channel with ids in `range`, oldest first, read with the
    /// history reader ([`super::history`], in parallel); what `verify` and `gc` read.
    pub(super) async fn messages_in(
        &self,
        range: RangeInclusive<Id>,
    ) -> Result<Vec<Message>, VolumeError> {
        let mut reader = HistoryReader::new(
            self.store.clone(),
            self.channel.id,
            range.start().saturating_sub(1),
            self.history_parallelism(),
        );
        let mut messages = Vec::new();
        while let Some(page) = reader.next_page().await? {
            let past_end = page.last().is_some_and(|m| m.id >= *range.end());
            messages.extend(page.into_iter().filter(|m| range.contains(&m.id)));
            if past_end {
                break;
            }
        }
        Ok(messages)
    }
}

fn id_string<S: serde::Serializer>(id: &Id, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(id)
}

fn optional_id_string<S: serde::Serializer>(
    id: &Option<Id>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => serializer.collect_str(id),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_the_share_asked_at_least_one_and_at_most_all() {
        assert_eq!(sample_size(0, 10.0), 0);
        assert_eq!(sample_size(200, 10.0), 20);
        assert_eq!(sample_size(200, 0.5), 1);
        assert_eq!(sample_size(1000, 0.5), 5);
        assert_eq!(sample_size(3, 0.001), 1);
        assert_eq!(sample_size(3, 100.0), 3);
    }

    #[test]
    fn a_seeded_sample_is_reproducible_and_distinct() {
        let sound: Vec<ToRead> = (0..200).map(|i| (i / 10, (i % 10) as u64)).collect();
        let check = DataCheck::Sample {
            percent: 10.0,
            seed: Some(7),
        };
        let first = choose(sound.clone(), check);
        assert_eq!(first, choose(sound.clone(), check));
        assert_eq!(first.len(), 20);
        let distinct: HashSet<ToRead> = first.iter().copied().collect();
        assert_eq!(distinct.len(), 20);
        let other = choose(
            sound,
            DataCheck::Sample {
                percent: 10.0,
                seed: Some(8),
            },
        );
        assert_ne!(first, other);
    }

    #[test]
    fn problems_read_as_sentences_and_serialize_with_string_ids() {
        let problem = Problem::MessageMissing {
            chunk: 3,
            channel: None,
            message: 1_234_567_890_123_456_789,
        };
        assert_eq!(
            problem.to_string(),
            "chunk 3: its message 1234567890123456789 is gone"
        );
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "message_missing", "chunk": 3,
                "message": "1234567890123456789"})
        );
    }
}
