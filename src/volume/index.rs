//! A channel's index: its folder tree, as the replay of the channel's records.
//!
//! The index is a last-writer-wins map from path to [`Slot`]: each slot remembers the
//! entry (file, folder, or nothing for a tombstone) and the [`Stamp`] of the operation
//! that set it, `(message id, position in the record)`. An operation only lands if its
//! stamp is newer than the slot's. That makes replay independent of the order messages
//! are read in and safe to repeat: the index can be rebuilt from any mix of a cached
//! state and re-read messages, pages can be read in any order, and the operation we
//! just posted can be applied at once and again when the next refresh reads it.
//!
//! Tombstones stay in the map (they must outlive older records of their path in caches
//! elsewhere), and so do the ids of the messages that carry them: such messages are
//! never garbage collected.
//!
//! The index also tells which messages are still needed ([`Index::messages_in_use`]):
//! the record messages of live entries, the messages holding their chunks, and messages
//! with tombstones. Everything else that an operation leaves behind can be deleted —
//! unless a file moved to another channel took it along.
//!
//! ## Files moved across channels
//!
//! A file moved from this channel to another keeps its chunks where they are: the
//! destination's record names them with their channel (`c`), and this channel's
//! tombstone for it is a *moved* delete that lists the messages holding them and the
//! destination. The index remembers, for every `(channel, message)` such a delete
//! named, the destinations it went to (each with the stamp of the newest delete that
//! sent it there): [`Index::holds`] answers [`Hold::MovedTo`] for them. Whoever wants to
//! delete a message follows these links from the message's own channel, channel by
//! channel, until one [`Hold::Live`]s it (keep it) or every path ends (free it); see
//! [`crate::volume`]. Every link is kept, not only the newest: several small files
//! sharing one message can move to different channels, and each keeps the message
//! alive. Replay stays order-independent: the links are a union, and per destination
//! the newest stamp wins.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::crypto::KeyId;
use crate::format::{ChunkLocation, ChunkRef, FileId, Op, Record};
use crate::store::{Id, Message};

/// Version of the cached index layout; a cache of another version is rebuilt.
pub const INDEX_CACHE_VERSION: u32 = 2;

/// Orders operations: message id, then position within the record.
pub type Stamp = (Id, u32);

/// A chunk with its attachment resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChunk {
    /// The channel of the message, when it isn't the index's own (a file moved here
    /// from another channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Id>,
    pub message: Id,
    pub attachment: Id,
    /// Plaintext length.
    pub len: u64,
    /// SHA-256 of the plaintext (plain files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<[u8; 32]>,
    /// AES-GCM tag of the sealed chunk (encrypted files, when the record names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<[u8; 16]>,
}

impl From<&StoredChunk> for ChunkRef {
    /// The reference a record uses for a chunk already stored.
    fn from(chunk: &StoredChunk) -> ChunkRef {
        ChunkRef {
            location: ChunkLocation::Stored {
                channel: chunk.channel,
                message: chunk.message,
                attachment: chunk.attachment,
            },
            len: chunk.len,
            sha256: chunk.sha256,
            tag: chunk.tag,
        }
    }
}

/// A file as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub id: FileId,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub encrypted: bool,
    pub chunks: Vec<StoredChunk>,
    /// The message whose record put this version here.
    pub record_message: Id,
}

/// A folder recorded by `mkdir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub mtime_ns: i64,
    pub mode: u32,
    pub record_message: Id,
}

/// What lives at a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    File(FileEntry),
    Dir(DirEntry),
}

impl Entry {
    /// The messages of its own channel this entry needs: its record's and its chunks'.
    pub fn messages(&self) -> Vec<Id> {
        match self {
            Entry::File(file) => std::iter::once(file.record_message)
                .chain(
                    file.chunks
                        .iter()
                        .filter(|c| c.channel.is_none())
                        .map(|c| c.message),
                )
                .collect(),
            Entry::Dir(dir) => vec![dir.record_message],
        }
    }

    /// The messages of other channels this entry needs, `(channel, message)`: the
    /// chunks of a file moved here from elsewhere.
    pub fn foreign_messages(&self) -> Vec<(Id, Id)> {
        match self {
            Entry::File(file) => file
                .chunks
                .iter()
                .filter_map(|c| c.channel.map(|channel| (channel, c.message)))
                .collect(),
            Entry::Dir(_) => Vec::new(),
        }
    }
}

/// Whether an index holds a message (see [`Index::holds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// A live entry of this channel uses it (or it carries a tombstone of this channel).
    Live,
    /// Nothing here uses it, but files using it moved to these channels.
    MovedTo(Vec<Id>),
    /// Nothing here uses it, and no file using it moved away from here.
    No,
}

/// Where the messages of files moved away went: `(channel, message)` → destination →
/// stamp of the newest moved delete that named the message with that destination. In
/// the cache as a list (JSON map keys must be strings).
mod moved_out_serde {
    use super::{BTreeMap, Id, Stamp};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub type MovedOut = BTreeMap<(Id, Id), BTreeMap<Id, Stamp>>;

    #[derive(Serialize, Deserialize)]
    struct Link {
        channel: Id,
        message: Id,
        to: Id,
        stamp: Stamp,
    }

    pub fn serialize<S: Serializer>(map: &MovedOut, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter().flat_map(|(&(channel, message), dests)| {
            dests.iter().map(move |(&to, &stamp)| Link {
                channel,
                message,
                to,
                stamp,
            })
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<MovedOut, D::Error> {
        let mut map = MovedOut::new();
        for link in Vec::<Link>::deserialize(deserializer)? {
            map.entry((link.channel, link.message))
                .or_default()
                .insert(link.to, link.stamp);
        }
        Ok(map)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slot {
    stamp: Stamp,
    entry: Option<Entry>,
}

/// Why a record message was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Skip {
    /// Sealed with another key.
    WrongKey(KeyId),
    /// Encrypted, and no key is loaded.
    NoKey(KeyId),
    /// Written by a newer dcloud-fs.
    NewerVersion(u8),
    /// Unreadable or inconsistent.
    Damaged(String),
}

/// What a path is, as far as listing and lookups care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node<'a> {
    File(&'a FileEntry),
    /// A folder: recorded by `mkdir` (`Some`), or implied by the paths under it.
    Dir(Option<&'a DirEntry>),
}

/// One name in a folder listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<'a> {
    pub name: String,
    pub node: Node<'a>,
}

/// The replayed state of one channel. See the module docs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    version: u32,
    /// The channel this index describes.
    pub channel: Id,
    /// The key the index was read with (records of other keys are skipped).
    pub key_id: Option<KeyId>,
    /// The newest message id that replay has read up to.
    pub last_seen: Id,
    slots: BTreeMap<String, Slot>,
    tombstone_messages: BTreeSet<Id>,
    skipped: BTreeMap<Id, Skip>,
    /// Where the messages of files moved to other channels went (see the module docs).
    #[serde(default, with = "moved_out_serde")]
    moved_out: moved_out_serde::MovedOut,
    /// Messages that a change of ours made useless but that couldn't be deleted yet
    /// (the store failed, or whether another channel still needs them couldn't be
    /// told); retried after every successful refresh.
    #[serde(default)]
    pub unfreed: BTreeSet<Id>,
    /// The same for messages of other channels, `(channel, message)`: chunks of files
    /// moved here that a change of ours replaced or deleted.
    #[serde(default)]
    pub unfreed_foreign: BTreeSet<(Id, Id)>,
}

impl Index {
    /// An empty index for `channel`, read with `key_id`.
    pub fn new(channel: Id, key_id: Option<KeyId>) -> Index {
        Index {
            version: INDEX_CACHE_VERSION,
            channel,
            key_id,
            last_seen: 0,
            slots: BTreeMap::new(),
            tombstone_messages: BTreeSet::new(),
            skipped: BTreeMap::new(),
            moved_out: BTreeMap::new(),
            unfreed: BTreeSet::new(),
            unfreed_foreign: BTreeSet::new(),
        }
    }

    /// Whether a cached index can stand in for this channel and key.
    pub fn usable_for(&self, channel: Id, key_id: Option<KeyId>) -> bool {
        self.version == INDEX_CACHE_VERSION && self.channel == channel && self.key_id == key_id
    }

    /// Applies a record read from `message`. A record whose chunks name attachments the
    /// message doesn't have is damaged and applied not at all.
    pub fn apply(&mut self, message: &Message, record: &Record) -> Result<(), String> {
        let mut resolved = Vec::with_capacity(record.ops.len());
        for op in &record.ops {
            resolved.push(resolve(message, op)?);
        }
        for (position, (path, entry)) in resolved.into_iter().enumerate() {
            let stamp = (message.id, position as u32);
            if entry.is_none() {
                self.tombstone_messages.insert(message.id);
            }
            // Where a moved file's messages went counts whether or not this delete
            // wins its path: a newer put of the path doesn't bring the chunks back.
            if let Op::Del {
                moved: Some(moved), ..
            } = &record.ops[position]
            {
                for &held in &moved.messages {
                    let newest = self
                        .moved_out
                        .entry(held)
                        .or_default()
                        .entry(moved.to)
                        .or_insert(stamp);
                    *newest = (*newest).max(stamp);
                }
            }
            match self.slots.get_mut(&path) {
                Some(slot) if slot.stamp >= stamp => {}
                Some(slot) => *slot = Slot { stamp, entry },
                None => {
                    self.slots.insert(path, Slot { stamp, entry });
                }
            }
        }
        self.skipped.remove(&message.id);
        Ok(())
    }

    /// Records that a message's record couldn't be used. Returns whether this is news
    /// (so the caller logs it once).
    pub fn skip(&mut self, message: Id, why: Skip) -> bool {
        self.skipped.insert(message, why.clone()) != Some(why)
    }

    /// Messages whose records were skipped, and why.
    pub fn skipped(&self) -> &BTreeMap<Id, Skip> {
        &self.skipped
    }

    /// Notes that replay has read everything up to `id`.
    pub fn advance(&mut self, id: Id) {
        self.last_seen = self.last_seen.max(id);
    }

    /// Which change last touched `path` — a put, a folder or a tombstone — as
    /// `"<message id>:<position>"`; `None` if no record ever named it. Two reads that
    /// give the same answer saw the same state of the path.
    pub fn version_of(&self, path: &str) -> Option<String> {
        self.slots
            .get(path)
            .map(|slot| format!("{}:{}", slot.stamp.0, slot.stamp.1))
    }

    /// The live entry at `path`.
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.slots.get(path).and_then(|slot| slot.entry.as_ref())
    }

    /// The file at `path`, if it is one.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        match self.entry(path) {
            Some(Entry::File(file)) => Some(file),
            _ => None,
        }
    }

    /// What `path` is: a file, a folder (recorded or implied), or nothing. The empty
    /// path is the channel itself.
    pub fn node(&self, path: &str) -> Option<Node<'_>> {
        match self.entry(path) {
            Some(Entry::File(file)) => Some(Node::File(file)),
            Some(Entry::Dir(dir)) => Some(Node::Dir(Some(dir))),
            None if path.is_empty() || self.live_under(path).next().is_some() => {
                Some(Node::Dir(None))
            }
            None => None,
        }
    }

    /// Live entries strictly below folder `dir` ("" = everything), in path order.
    pub fn live_under<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.slots
            .range(prefix.clone()..)
            .take_while(move |(path, _)| path.starts_with(&prefix))
            .filter_map(|(path, slot)| slot.entry.as_ref().map(|entry| (path.as_str(), entry)))
    }

    /// Every live entry, in path order.
    pub fn live(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.live_under("")
    }

    /// The names directly inside folder `dir`, sorted, or `None` if `dir` isn't a folder.
    pub fn list(&self, dir: &str) -> Option<Vec<Listed<'_>>> {
        match self.node(dir)? {
            Node::File(_) => return None,
            Node::Dir(_) => {}
        }
        let skip = if dir.is_empty() { 0 } else { dir.len() + 1 };
        let mut listing: Vec<Listed<'_>> = Vec::new();
        for (path, entry) in self.live_under(dir) {
            let rest = &path[skip..];
            let (name, nested) = match rest.split_once('/') {
                Some((name, _)) => (name, true),
                None => (rest, false),
            };
            if listing.last().is_some_and(|last| last.name == name) {
                continue; // more paths under a folder already listed
            }
            let node = match (nested, entry) {
                (true, _) => Node::Dir(match self.entry(&path[..skip + name.len()]) {
                    Some(Entry::Dir(dir)) => Some(dir),
                    _ => None,
                }),
                (false, Entry::File(file)) => Node::File(file),
                (false, Entry::Dir(dir)) => Node::Dir(Some(dir)),
            };
            listing.push(Listed {
                name: name.to_string(),
                node,
            });
        }
        // Path order puts "a.txt" before the folder "a" ('.' < '/'); list by name.
        listing.sort_by(|a, b| a.name.cmp(&b.name));
        Some(listing)
    }

    /// Number of live files and their total size.
    pub fn totals(&self) -> (u64, u64) {
        self.live()
            .fold((0, 0), |(count, bytes), (_, entry)| match entry {
                Entry::File(file) => (count + 1, bytes + file.size),
                Entry::Dir(_) => (count, bytes),
            })
    }

    /// Messages still needed: record and chunk messages of live entries, and messages
    /// carrying tombstones.
    pub fn messages_in_use(&self) -> HashSet<Id> {
        let mut in_use: HashSet<Id> = self.tombstone_messages.iter().copied().collect();
        for (_, entry) in self.live() {
            in_use.extend(entry.messages());
        }
        in_use
    }

    /// Messages of this channel that must not be deleted without asking the channels
    /// their files moved to: [`Index::messages_in_use`] and those named by moved
    /// deletes.
    pub fn messages_kept(&self) -> HashSet<Id> {
        let mut kept = self.messages_in_use();
        kept.extend(
            self.moved_out
                .keys()
                .filter(|(channel, _)| *channel == self.channel)
                .map(|&(_, message)| message),
        );
        kept
    }

    /// Notes that files using `messages` now live in channel `to` too, without a record
    /// saying so here (a move whose delete here could not be posted): until the cache
    /// is dropped, freeing them here asks `to` first. An older link stands for it.
    pub fn note_moved(&mut self, messages: &[(Id, Id)], to: Id) {
        for &held in messages {
            self.moved_out
                .entry(held)
                .or_default()
                .entry(to)
                .or_insert((0, 0));
        }
    }

    /// Messages of this channel that files moved to other channels took along.
    pub fn moved_out_messages(&self) -> Vec<Id> {
        self.moved_out
            .keys()
            .filter(|(channel, _)| *channel == self.channel)
            .map(|&(_, message)| message)
            .collect()
    }

    /// Whether this channel holds message `message` of channel `channel`: a live entry
    /// uses it ([`Hold::Live`]; for this channel's own messages also the record and
    /// tombstone messages), else files that used it moved on ([`Hold::MovedTo`], the
    /// destinations newest first), else [`Hold::No`].
    pub fn holds(&self, channel: Id, message: Id) -> Hold {
        let live = if channel == self.channel {
            self.tombstone_messages.contains(&message)
                || self
                    .live()
                    .any(|(_, entry)| entry.messages().contains(&message))
        } else {
            self.live()
                .any(|(_, entry)| entry.foreign_messages().contains(&(channel, message)))
        };
        if live {
            return Hold::Live;
        }
        let dests = self.moved_to(channel, message);
        if dests.is_empty() {
            Hold::No
        } else {
            Hold::MovedTo(dests)
        }
    }

    /// The channels that files using message `message` of channel `channel` moved to
    /// from here, newest first (empty if none did).
    pub fn moved_to(&self, channel: Id, message: Id) -> Vec<Id> {
        let Some(dests) = self.moved_out.get(&(channel, message)) else {
            return Vec::new();
        };
        let mut dests: Vec<(Stamp, Id)> = dests.iter().map(|(&to, &stamp)| (stamp, to)).collect();
        dests.sort_unstable_by(|a, b| b.cmp(a));
        dests.into_iter().map(|(_, to)| to).collect()
    }

    /// The messages of other channels that live entries use, `(channel, message)`.
    pub fn foreign_in_use(&self) -> HashSet<(Id, Id)> {
        self.live()
            .flat_map(|(_, entry)| entry.foreign_messages())
            .collect()
    }
}

/// Turns an operation into the entry it sets, with attachments resolved to ids.
fn resolve(message: &Message, op: &Op) -> Result<(String, Option<Entry>), String> {
    let entry = match op {
        Op::Del { .. } => None,
        Op::Mkdir(dir) => Some(Entry::Dir(DirEntry {
            mtime_ns: dir.mtime_ns,
            mode: dir.mode,
            record_message: message.id,
        })),
        Op::Put(file) => {
            let mut chunks = Vec::with_capacity(file.chunks.len());
            for chunk in &file.chunks {
                let (channel, message_id, attachment) = match &chunk.location {
                    ChunkLocation::Stored {
                        channel,
                        message: chunk_message,
                        attachment,
                    } => (
                        channel.filter(|&c| c != message.channel_id),
                        *chunk_message,
                        *attachment,
                    ),
                    ChunkLocation::Attached { filename } => {
                        let attachment = message.attachment_named(filename).ok_or_else(|| {
                            format!("record names attachment '{filename}' that its message lacks")
                        })?;
                        (None, message.id, attachment.id)
                    }
                };
                chunks.push(StoredChunk {
                    channel,
                    message: message_id,
                    attachment,
                    len: chunk.len,
                    sha256: chunk.sha256,
                    tag: chunk.tag,
                });
            }
            Some(Entry::File(FileEntry {
                id: file.id,
                size: file.size,
                mtime_ns: file.mtime_ns,
                mode: file.mode,
                encrypted: file.encrypted,
                chunks,
                record_message: message.id,
            }))
        }
    };
    Ok((op.path().to_string(), entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{DirManifest, FileManifest};
    use crate::store::Attachment;

    fn message(id: Id, attachments: &[(&str, Id)]) -> Message {
        message_in(1, id, attachments)
    }

    fn message_in(channel_id: Id, id: Id, attachments: &[(&str, Id)]) -> Message {
        Message {
            id,
            channel_id,
            author_id: 1,
            content: String::new(),
            attachments: attachments
                .iter()
                .map(|(name, id)| Attachment {
                    id: *id,
                    filename: name.to_string(),
                    size: 1,
                })
                .collect(),
        }
    }

    fn put(path: &str, chunks: Vec<ChunkLocation>) -> Op {
        let chunks: Vec<ChunkRef> = chunks
            .into_iter()
            .map(|location| ChunkRef {
                location,
                len: 1,
                sha256: None,
                tag: None,
            })
            .collect();
        Op::Put(FileManifest {
            path: path.into(),
            id: FileId([1; 16]),
            size: chunks.len() as u64,
            mtime_ns: 0,
            mode: 0o644,
            encrypted: true,
            chunks,
        })
    }

    fn attached(name: &str) -> ChunkLocation {
        ChunkLocation::Attached {
            filename: name.into(),
        }
    }

    fn record(ops: Vec<Op>) -> Record {
        Record { ops }
    }

    #[test]
    fn newest_record_wins_whatever_the_order_of_replay() {
        let m10 = message(10, &[("c0.bin", 100)]);
        let m20 = message(20, &[("c0.bin", 200)]);
        let m30 = message(30, &[]);
        let first = record(vec![put("a.txt", vec![attached("c0.bin")])]);
        let second = record(vec![put("a.txt", vec![attached("c0.bin")])]);
        let delete = record(vec![Op::Del {
            path: "a.txt".into(),
            moved: None,
        }]);

        let mut forward = Index::new(1, None);
        forward.apply(&m10, &first).unwrap();
        forward.apply(&m20, &second).unwrap();
        assert_eq!(forward.file("a.txt").unwrap().chunks[0].attachment, 200);
        forward.apply(&m30, &delete).unwrap();
        assert!(forward.entry("a.txt").is_none());

        let mut backward = Index::new(1, None);
        backward.apply(&m30, &delete).unwrap();
        backward.apply(&m20, &second).unwrap();
        backward.apply(&m10, &first).unwrap();
        backward.apply(&m20, &second).unwrap(); // read twice
        assert!(backward.entry("a.txt").is_none());
        assert!(backward.messages_in_use().contains(&30));
    }

    #[test]
    fn rename_in_one_record_keeps_the_chunks() {
        let m10 = message(10, &[("c0.bin", 100)]);
        let mut index = Index::new(1, None);
        index
            .apply(&m10, &record(vec![put("old", vec![attached("c0.bin")])]))
            .unwrap();
        let moved = put(
            "new",
            vec![ChunkLocation::Stored {
                channel: None,
                message: 10,
                attachment: 100,
            }],
        );
        index
            .apply(
                &message(11, &[]),
                &record(vec![
                    moved,
                    Op::Del {
                        path: "old".into(),
                        moved: None,
                    },
                ]),
            )
            .unwrap();
        assert!(index.entry("old").is_none());
        let file = index.file("new").unwrap();
        assert_eq!((file.chunks[0].message, file.record_message), (10, 11));
        let in_use = index.messages_in_use();
        assert!(in_use.contains(&10) && in_use.contains(&11));
    }

    #[test]
    fn a_record_naming_a_missing_attachment_is_refused_whole() {
        let mut index = Index::new(1, None);
        let bad = record(vec![
            put("ok", vec![]),
            put("broken", vec![attached("c9.bin")]),
        ]);
        assert!(index.apply(&message(10, &[]), &bad).is_err());
        assert!(index.entry("ok").is_none());
    }

    #[test]
    fn folders_are_listed_from_paths_and_mkdir_records() {
        let mut index = Index::new(1, None);
        let ops = vec![
            put("photos/2024/a.jpg", vec![]),
            put("photos/2024/b.jpg", vec![]),
            put("photos/top.jpg", vec![]),
            put("readme", vec![]),
            Op::Mkdir(DirManifest {
                path: "empty".into(),
                mtime_ns: 5,
                mode: 0o755,
            }),
        ];
        index.apply(&message(10, &[]), &record(ops)).unwrap();
        fn names(index: &Index, dir: &str) -> Vec<String> {
            index
                .list(dir)
                .unwrap()
                .into_iter()
                .map(|l| l.name)
                .collect()
        }
        assert_eq!(names(&index, ""), vec!["empty", "photos", "readme"]);
        assert_eq!(names(&index, "photos"), vec!["2024", "top.jpg"]);
        assert_eq!(names(&index, "photos/2024"), vec!["a.jpg", "b.jpg"]);
        assert!(names(&index, "empty").is_empty());
        assert!(index.list("readme").is_none());
        assert!(index.list("nothing").is_none());
        assert!(matches!(index.node("photos"), Some(Node::Dir(None))));
        assert!(matches!(index.node("empty"), Some(Node::Dir(Some(_)))));
        // "photos2" sorts between "photos" and "photos/": it must not leak into photos.
        index
            .apply(&message(11, &[]), &record(vec![put("photos2", vec![])]))
            .unwrap();
        assert_eq!(names(&index, "photos"), vec!["2024", "top.jpg"]);
        assert_eq!(index.totals(), (5, 0));
    }

    fn moved_del(path: &str, to: Id, messages: Vec<(Id, Id)>) -> Op {
        Op::Del {
            path: path.into(),
            moved: Some(crate::format::Moved { to, messages }),
        }
    }

    fn stored(channel: Option<Id>, message: Id) -> ChunkLocation {
        ChunkLocation::Stored {
            channel,
            message,
            attachment: message * 10,
        }
    }

    /// Channel 1: "a" and "b" share message 10 (small files batched in one message),
    /// "a" moves to channel 2 (message 20), "b" to channel 3 (message 30); then a newer
    /// put of "a" (message 40) that doesn't bring the chunks back, and a second move of
    /// "b"'s message to channel 2 (message 50, older stamp for 3 stays).
    fn moves_in_channel_one() -> Vec<(Message, Record)> {
        let shared = message(10, &[("c0.bin", 100), ("c1.bin", 101)]);
        vec![
            (
                shared,
                record(vec![
                    put("a", vec![attached("c0.bin")]),
                    put("b", vec![attached("c1.bin")]),
                ]),
            ),
            (
                message(20, &[]),
                record(vec![moved_del("a", 2, vec![(1, 10)])]),
            ),
            (
                message(30, &[]),
                record(vec![moved_del("b", 3, vec![(1, 10), (9, 90)])]),
            ),
            (message(40, &[]), record(vec![put("a", vec![])])),
            (
                message(50, &[]),
                record(vec![moved_del("gone", 2, vec![(9, 90)])]),
            ),
        ]
    }

    #[test]
    fn moved_out_replay_is_order_independent() {
        let ops = moves_in_channel_one();
        let mut forward = Index::new(1, None);
        for (message, record) in &ops {
            forward.apply(message, record).unwrap();
        }
        let mut backward = Index::new(1, None);
        for (message, record) in ops.iter().rev() {
            backward.apply(message, record).unwrap();
        }
        backward.apply(&ops[2].0, &ops[2].1).unwrap(); // read twice
        let mut shuffled = Index::new(1, None);
        for i in [3, 0, 4, 2, 1] {
            shuffled.apply(&ops[i].0, &ops[i].1).unwrap();
        }
        for index in [&forward, &backward, &shuffled] {
            assert_eq!(index.moved_to(1, 10), vec![3, 2]);
            // Newest first: message 50 sent (9, 90) to 2 after message 30 sent it to 3.
            assert_eq!(index.moved_to(9, 90), vec![2, 3]);
            assert!(index.moved_to(1, 11).is_empty());
            assert_eq!(index.holds(1, 10), Hold::MovedTo(vec![3, 2]));
            assert!(index.file("a").unwrap().chunks.is_empty());
            assert!(index.entry("b").is_none());
        }
        // The cache keeps it (JSON, keyed by a list).
        let json = serde_json::to_string(&forward).unwrap();
        let read: Index = serde_json::from_str(&json).unwrap();
        assert_eq!(read.moved_out, forward.moved_out);
        assert_eq!(read.holds(9, 90), Hold::MovedTo(vec![2, 3]));
    }

    #[test]
    fn holds_tells_live_moved_and_unknown_messages_apart() {
        let mut index = Index::new(2, None);
        // A file moved here from channel 1 (chunks in 1/10 and in 2/15), and a file of
        // our own in message 16.
        index
            .apply(
                &message_in(2, 16, &[("c0.bin", 160)]),
                &record(vec![
                    put("moved", vec![stored(Some(1), 10), stored(Some(2), 15)]),
                    put("own", vec![attached("c0.bin")]),
                ]),
            )
            .unwrap();
        let moved = index.file("moved").unwrap();
        // A `c` naming the record's own channel is no channel.
        assert_eq!(moved.chunks[0].channel, Some(1));
        assert_eq!(moved.chunks[1].channel, None);
        assert_eq!(index.holds(1, 10), Hold::Live);
        assert_eq!(index.holds(2, 15), Hold::Live);
        assert_eq!(index.holds(2, 16), Hold::Live);
        assert_eq!(index.holds(1, 16), Hold::No);
        assert_eq!(index.holds(1, 11), Hold::No);
        assert_eq!(index.foreign_in_use(), HashSet::from([(1, 10)]));
        // "moved" goes on to channel 3; "own" is deleted.
        index
            .apply(
                &message_in(2, 17, &[]),
                &record(vec![moved_del("moved", 3, vec![(1, 10), (2, 15)])]),
            )
            .unwrap();
        index
            .apply(
                &message_in(2, 18, &[]),
                &record(vec![Op::Del {
                    path: "own".into(),
                    moved: None,
                }]),
            )
            .unwrap();
        assert_eq!(index.holds(1, 10), Hold::MovedTo(vec![3]));
        assert_eq!(index.holds(2, 15), Hold::MovedTo(vec![3]));
        assert_eq!(index.holds(2, 16), Hold::No);
        // Messages with tombstones are this channel's own, and stay.
        assert_eq!(index.holds(2, 17), Hold::Live);
        assert_eq!(index.holds(2, 18), Hold::Live);
        assert!(index.messages_kept().contains(&15));
        assert!(!index.messages_in_use().contains(&15));
        assert_eq!(index.moved_out_messages(), vec![15]);
    }

    #[test]
    fn skips_are_remembered_once_per_message() {
        let mut index = Index::new(1, None);
        assert!(index.skip(5, Skip::NoKey(KeyId([1; 8]))));
        assert!(!index.skip(5, Skip::NoKey(KeyId([1; 8]))));
        assert_eq!(index.skipped().len(), 1);
    }
}
