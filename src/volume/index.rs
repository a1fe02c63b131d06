//! A channel's index: its folder tree, as the replay of the channel's records.
//!
//! The index is a last-writer-wins map from path to [`Slot`]: each slot remembers the
//! entry (file, folder, or nothing for a tombstone) and the [`Stamp`] of the operation
//! that set it. A stamp orders changes as the format says (see [`crate::format`],
//! Replay): by the record's sealed Lamport `seq` (version 2; every version-2 record
//! after every version-1 one, and those by message id), ties going to the lower message
//! id. An operation only lands if its stamp is higher than the slot's. That makes replay
//! independent of the order messages are read in and safe to repeat: the index can be
//! rebuilt from any mix of a cached state and re-read messages, pages can be read in any
//! order, and the operation we just posted can be applied at once and again when the
//! next refresh reads it. Because `seq` is sealed inside the record, an old record
//! posted again (a new message id, the old `seq`) never wins over what replaced it;
//! [`Index::apply`] reports such a record, so the reader can warn about it.
//!
//! ## Whose messages
//!
//! The index knows which messages of the channel are the bot's own and of which kind
//! ([`Own`]): data messages (with their file id) and record messages, from the history
//! as it is read and from what this machine posts, and which messages of other authors
//! carry attachments. A record whose chunks name someone else's message, or a data
//! message of another file, is refused whole; and nothing is deleted that isn't in the
//! map of our own (see [`crate::volume::reclaim`]). A chunk naming a message that is in
//! neither (deleted since, say) is taken: reading it fails as a missing chunk.
//!
//! Tombstones stay in the map (they must outlive older records of their path in caches
//! elsewhere), and so do the ids of the messages that carry them: such messages are
//! never garbage collected.
//!
//! The index also tells which messages are still needed ([`Index::messages_in_use`]):
//! the record messages of live entries, the messages holding their chunks, and messages
//! with tombstones. Everything else that an operation leaves behind can be deleted —
//! unless a file moved to another channel took it along. The index counts how many
//! times live entries name each message as their slots change (and counts again from
//! the slots when its cache is read), so asking about one message ([`Index::in_use`],
//! [`Index::holds`]) is a lookup, whatever the number of files.
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::crypto::KeyId;
use crate::format::{
    CheckpointBody, CheckpointData, CheckpointMove, CheckpointPath, CheckpointStamp, ChunkKind,
    ChunkLocation, ChunkRef, DataKey, DirManifest, FileId, FileManifest, Meta, NONCE_PREFIX_LEN,
    Op, Record, Relocation,
};
use crate::idmap::IdMap;
use crate::store::{Id, Message};

/// Version of the cached index layout; a cache of another version is rebuilt.
/// (7: binary, postcard, in `.index` files; 6 and before: JSON in `.json`.)
pub const INDEX_CACHE_VERSION: u32 = 9;

/// The index cache's encoding, and its journal's ([`Index`], [`IndexDelta`]): postcard,
/// a compact binary form of these same serde types. It takes a fifth of JSON's bytes
/// and reads several times faster, and reading it is on the way of every warm mount.
/// (In it, ids and keys are bytes, not the hex strings of records.)
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("the index encodes")
}

/// Reads what [`encode`] wrote.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The layout version an encoded [`Index`] starts with (its first field), read without
/// reading the rest: a cache of another version is rebuilt, not misread.
pub fn encoded_version(bytes: &[u8]) -> Option<u32> {
    postcard::take_from_bytes::<u32>(bytes).ok().map(|(v, _)| v)
}

/// Orders the operations on a path (see the module docs): the highest stamp wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// 0 for version-1 records, 1 for version 2: every version-2 change is newer.
    era: u8,
    /// Version 2: the record's `seq`. Version 1: the message id.
    order: u64,
    /// Version 2: the message id, inverted, so that of two records with one `seq` the
    /// one posted first wins. Version 1: 0.
    tie: u64,
    /// Position of the operation in its record: a later one wins.
    position: u32,
}

impl Stamp {
    /// The stamp of operation `position` of a record of format `version` with `seq`,
    /// in message `message`.
    pub fn new(version: u8, seq: u64, message: Id, position: u32) -> Stamp {
        if version >= 2 {
            Stamp {
                era: 1,
                order: seq,
                tie: !message,
                position,
            }
        } else {
            Stamp {
                era: 0,
                order: message,
                tie: 0,
                position,
            }
        }
    }

    /// The message the operation is in.
    pub fn message(&self) -> Id {
        if self.era == 0 { self.order } else { !self.tie }
    }

    /// The record's `seq` (0 for version 1).
    pub fn seq(&self) -> u64 {
        if self.era == 0 { 0 } else { self.order }
    }

    /// The operation's position in its record.
    pub fn position(&self) -> u32 {
        self.position
    }

    /// The stamp as a checkpoint or a relocation names it: `seq` (0: version 1),
    /// message, position.
    pub fn named(&self) -> CheckpointStamp {
        CheckpointStamp {
            seq: self.seq(),
            m: self.message(),
            i: self.position,
        }
    }

    /// The stamp a checkpoint or a relocation names.
    pub fn from_named(s: CheckpointStamp) -> Stamp {
        let version = if s.seq == 0 { 1 } else { 2 };
        Stamp::new(version, s.seq, s.m, s.i)
    }
}

/// What a message of the bot's own in this channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Own {
    /// A data message holding chunks of this file.
    Data(FileId),
    /// A record message (it may carry chunks of the files it puts).
    Record,
    /// A checkpoint's head or part message (see [`crate::volume::checkpoint`]).
    Checkpoint,
}

/// An operation that lost to the path's current state although its message was posted
/// after the one that set it: a record that is older than what it would replace (a
/// copy of an old record posted again, or a writer that hadn't seen the newer one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outdated {
    pub path: String,
    /// The outdated record's `seq`.
    pub seq: u64,
    /// The message and `seq` of the change that stands.
    pub current_message: Id,
    pub current_seq: u64,
    /// The operation was a `relocate` (`gc` moving a put's chunks) that a newer change
    /// had already replaced: expected, not worth a warning.
    pub relocation: bool,
}

/// A chunk with its attachment resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChunk {
    /// The channel of the message, when it isn't the index's own (a file moved here
    /// from another channel).
    #[serde(default)]
    pub channel: Option<Id>,
    pub message: Id,
    pub attachment: Id,
    /// Plaintext length.
    pub len: u64,
    /// SHA-256 of the plaintext (plain files).
    #[serde(default)]
    pub sha256: Option<[u8; 32]>,
    /// AES-GCM tag of the sealed chunk (encrypted files, when the record names it).
    #[serde(default)]
    pub tag: Option<[u8; 16]>,
    /// The key that sealed it, when that isn't the key this index was read with (an
    /// older key a passphrase key carries along); whole chunks only.
    #[serde(default)]
    pub key: Option<KeyId>,
    /// The nonce prefix of a segmented chunk (sealed under the file's data key).
    #[serde(default)]
    pub prefix: Option<[u8; NONCE_PREFIX_LEN]>,
    /// Where the sealed chunk starts in its attachment, when that is a pack of several
    /// files' chunks (`None`: the chunk is the whole attachment).
    #[serde(default)]
    pub packed_at: Option<u64>,
}

impl StoredChunk {
    /// How the chunk is sealed, in a file that is `encrypted` or not.
    pub fn kind(&self, encrypted: bool) -> ChunkKind {
        ChunkKind::of(encrypted, self.prefix)
    }
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
            key: chunk.key,
            prefix: chunk.prefix,
            packed_at: chunk.packed_at,
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
    /// The file's data key, which its segmented chunks are sealed under.
    #[serde(default)]
    pub data_key: Option<DataKey>,
    /// A symbolic link's target: then it has no chunks (format version 7).
    #[serde(default)]
    pub symlink: Option<String>,
    /// A special file (FIFO, socket, device): then it has no chunks (version 7).
    #[serde(default)]
    pub special: Option<crate::format::Special>,
    /// The file this is one name of, when it has several (version 8; see
    /// [`Index::names_of`]).
    #[serde(default)]
    pub node: Option<FileId>,
    /// Owner, other times and extended attributes (version 8); `None` when it says
    /// nothing, as most entries don't.
    #[serde(default, with = "meta_cache")]
    pub meta: Option<Box<Meta>>,
}

/// [`Meta`] in the index cache: every field in order (postcard can't skip fields as
/// the records' JSON does).
mod meta_cache {
    use super::Meta;
    use crate::format::XattrValue;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Plain = (
        Option<u32>,
        Option<u32>,
        Option<i64>,
        Option<i64>,
        Vec<(String, XattrValue)>,
    );

    pub fn serialize<S: Serializer>(
        meta: &Option<Box<Meta>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let plain: Option<Plain> = meta.as_deref().map(|m| {
            let xattrs = m
                .xattrs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (m.uid, m.gid, m.atime_ns, m.ctime_ns, xattrs)
        });
        plain.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Box<Meta>>, D::Error> {
        let plain = Option::<Plain>::deserialize(deserializer)?;
        Ok(plain.map(|(uid, gid, atime_ns, ctime_ns, xattrs)| {
            Box::new(Meta {
                uid,
                gid,
                atime_ns,
                ctime_ns,
                xattrs: xattrs.into_iter().collect(),
            })
        }))
    }
}

/// No owner, times or attributes: what an entry without any says.
static NO_META: Meta = Meta {
    uid: None,
    gid: None,
    atime_ns: None,
    ctime_ns: None,
    xattrs: BTreeMap::new(),
};

/// The index's form of what a record says: `None` for nothing.
fn boxed(meta: &Meta) -> Option<Box<Meta>> {
    (!meta.is_empty()).then(|| Box::new(meta.clone()))
}

impl FileEntry {
    /// The manifest that puts this file (its same chunks) at `path`.
    pub fn manifest(&self, path: &str) -> FileManifest {
        FileManifest {
            path: path.to_string(),
            id: self.id,
            size: self.size,
            mtime_ns: self.mtime_ns,
            mode: self.mode,
            encrypted: self.encrypted,
            chunks: self.chunks.iter().map(ChunkRef::from).collect(),
            data_key: self.data_key,
            symlink: self.symlink.clone(),
            special: self.special,
            node: self.node,
            meta: self.meta().clone(),
        }
    }

    /// Its owner, other times and extended attributes.
    pub fn meta(&self) -> &Meta {
        self.meta.as_deref().unwrap_or(&NO_META)
    }
}

/// A folder recorded by `mkdir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub mtime_ns: i64,
    pub mode: u32,
    pub record_message: Id,
    /// Owner, other times and extended attributes (version 8), as in [`FileEntry`].
    #[serde(default, with = "meta_cache")]
    pub meta: Option<Box<Meta>>,
}

impl DirEntry {
    /// The manifest that records this folder at `path`.
    pub fn manifest(&self, path: &str) -> DirManifest {
        DirManifest {
            path: path.to_string(),
            mtime_ns: self.mtime_ns,
            mode: self.mode,
            meta: self.meta().clone(),
        }
    }

    /// Its owner, other times and extended attributes.
    pub fn meta(&self) -> &Meta {
        self.meta.as_deref().unwrap_or(&NO_META)
    }
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

/// What a record message sets in the index (see [`Index::set_by`]).
#[derive(Debug, Clone, Default)]
pub struct SetBy {
    /// The live files it holds, with their paths and the stamps that hold them.
    pub files: Vec<(String, Stamp, FileEntry)>,
    /// How many live folders it made.
    pub dirs: usize,
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
        // Collected first: a binary encoding needs the length before the items.
        let links: Vec<Link> = map
            .iter()
            .flat_map(|(&(channel, message), dests)| {
                dests.iter().map(move |(&to, &stamp)| Link {
                    channel,
                    message,
                    to,
                    stamp,
                })
            })
            .collect();
        links.serialize(serializer)
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

/// [`Index::unfreed_foreign`] in the cache, as a list (JSON map keys must be strings).
mod foreign_unfreed_serde {
    use super::{BTreeMap, Id};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<(Id, Id), u64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter().map(|(&(c, m), &since)| (c, m, since)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<(Id, Id), u64>, D::Error> {
        let list = Vec::<(Id, Id, u64)>::deserialize(deserializer)?;
        Ok(list
            .into_iter()
            .map(|(c, m, since)| ((c, m), since))
            .collect())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slot {
    stamp: Stamp,
    entry: Option<Entry>,
}

impl Slot {
    /// What decides between operations on a path: the stamp, then, at one stamp, the
    /// relocation (a file whose record message isn't the stamp's: a `relocate` set
    /// it) over the put it relocates, and the later relocation over an earlier one.
    /// Derived from the entry, so the cache needs no field for it.
    fn order(&self) -> (Stamp, Id) {
        (self.stamp, relocated_by(self.stamp, self.entry.as_ref()))
    }
}

/// The relocation record message that set `entry` with `stamp`, or 0 when the
/// operation of `stamp` itself did.
fn relocated_by(stamp: Stamp, entry: Option<&Entry>) -> Id {
    match entry {
        Some(Entry::File(file)) if file.record_message != stamp.message() => file.record_message,
        _ => 0,
    }
}

/// The slots by path, with how many times their live entries name each message: kept
/// up to date as slots change, so that "is this message in use" costs a lookup, not a
/// walk of every entry. The counts are not in the cache: they are counted again from
/// the slots when it is read.
#[derive(Debug, Clone, Default)]
struct Slots {
    map: BTreeMap<String, Slot>,
    /// Messages of this channel → how many times live entries name them (records and
    /// chunks; a message holding several chunks of one file counts once per chunk).
    uses: IdMap<Id, u32>,
    /// The same for messages of other channels, `(channel, message)`.
    foreign_uses: IdMap<(Id, Id), u32>,
    /// The names of each file that has several (hard links: live puts naming a node).
    hard_names: HashMap<FileId, BTreeSet<String>>,
}

impl Slots {
    fn from_map(map: BTreeMap<String, Slot>) -> Slots {
        let mut slots = Slots {
            map: BTreeMap::new(),
            uses: IdMap::default(),
            foreign_uses: IdMap::default(),
            hard_names: HashMap::new(),
        };
        for (path, slot) in &map {
            if let Some(entry) = &slot.entry {
                slots.count(entry, true);
                slots.name(path, entry);
            }
        }
        slots.map = map;
        slots
    }

    /// Sets the slot of `path`, keeping the counts.
    fn set(&mut self, path: String, slot: Slot) {
        if let Some(Slot {
            entry: Some(Entry::File(old)),
            ..
        }) = self.map.get(&path)
            && let Some(node) = old.node
        {
            self.unname(&path, node);
        }
        if let Some(entry) = &slot.entry {
            self.count(entry, true);
            self.name(&path, entry);
        }
        if let Some(Slot {
            entry: Some(old), ..
        }) = self.map.insert(path, slot)
        {
            self.count(&old, false);
        }
    }

    /// Notes `path` as a name of its file, if it is a hard link.
    fn name(&mut self, path: &str, entry: &Entry) {
        if let Entry::File(file) = entry
            && let Some(node) = file.node
        {
            (self.hard_names.entry(node).or_default()).insert(path.to_string());
        }
    }

    /// `path` is no longer a name of the file `node`.
    fn unname(&mut self, path: &str, node: FileId) {
        if let Some(names) = self.hard_names.get_mut(&node) {
            names.remove(path);
            if names.is_empty() {
                self.hard_names.remove(&node);
            }
        }
    }

    /// Adds (or takes away) the uses of `entry`.
    fn count(&mut self, entry: &Entry, add: bool) {
        fn bump<K: std::hash::Hash + Eq>(counts: &mut IdMap<K, u32>, key: K, add: bool) {
            if add {
                *counts.entry(key).or_default() += 1;
            } else if let std::collections::hash_map::Entry::Occupied(mut n) = counts.entry(key) {
                *n.get_mut() -= 1;
                if *n.get() == 0 {
                    n.remove();
                }
            }
        }
        match entry {
            Entry::File(file) => {
                bump(&mut self.uses, file.record_message, add);
                for chunk in &file.chunks {
                    match chunk.channel {
                        None => bump(&mut self.uses, chunk.message, add),
                        Some(channel) => {
                            bump(&mut self.foreign_uses, (channel, chunk.message), add)
                        }
                    }
                }
            }
            Entry::Dir(dir) => bump(&mut self.uses, dir.record_message, add),
        }
    }
}

impl Serialize for Slots {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Slots {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Slots, D::Error> {
        bulk::map(deserializer).map(Slots::from_map)
    }
}

/// Reads the cache's big maps and sets as a whole, not item by item: serde's own
/// `BTreeMap` and `BTreeSet` insert each item they read (a search of the tree per
/// item, string compares for the paths), where collecting the items first and
/// building the tree from them at once costs one pass over items that come in order,
/// as the cache writes them. Same bytes, same result (of items with equal keys, the
/// last wins, as with inserts); a fifth of a big channel's cache read.
mod bulk {
    use std::collections::{BTreeMap, BTreeSet};
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

    /// At most this many items are reserved ahead, whatever the input claims.
    const MAX_RESERVE: usize = 1 << 16;

    struct Pairs<K, V>(PhantomData<(K, V)>);

    impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for Pairs<K, V> {
        type Value = BTreeMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::with_capacity(access.size_hint().unwrap_or(0).min(MAX_RESERVE));
            while let Some(pair) = access.next_entry()? {
                pairs.push(pair);
            }
            Ok(BTreeMap::from_iter(pairs))
        }
    }

    struct Items<T>(PhantomData<T>);

    impl<'de, T: Ord + Deserialize<'de>> Visitor<'de> for Items<T> {
        type Value = BTreeSet<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::with_capacity(access.size_hint().unwrap_or(0).min(MAX_RESERVE));
            while let Some(item) = access.next_element()? {
                items.push(item);
            }
            Ok(BTreeSet::from_iter(items))
        }
    }

    /// A `BTreeMap`, built at once.
    pub fn map<'de, D, K, V>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Ord + Deserialize<'de>,
        V: Deserialize<'de>,
    {
        deserializer.deserialize_map(Pairs(PhantomData))
    }

    /// A `BTreeSet`, built at once.
    pub fn set<'de, D, T>(deserializer: D) -> Result<BTreeSet<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Ord + Deserialize<'de>,
    {
        deserializer.deserialize_seq(Items(PhantomData))
    }
}

/// Why a record message was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Skip {
    /// Not authenticated by the loaded key (a plain record written without a key, a
    /// version-1 record posted after the channel's cutover): hidden, as a forgery or a
    /// copy could be.
    Unauthenticated(String),
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
    /// `gc` deleted tombstones and superseded records before this message (0: never;
    /// see [`crate::format`], Checkpoints): a state that covers less is stale.
    #[serde(default)]
    pub collected: Id,
    /// When (Unix ms) the store last refused to pin a checkpoint (the bot may not pin
    /// here): none is tried again for a day. 0: never refused.
    #[serde(default)]
    pub pin_refused_at: u64,
    slots: Slots,
    #[serde(deserialize_with = "bulk::set")]
    tombstone_messages: BTreeSet<Id>,
    skipped: BTreeMap<Id, Skip>,
    /// Where the messages of files moved to other channels went (see the module docs).
    #[serde(default, with = "moved_out_serde")]
    moved_out: moved_out_serde::MovedOut,
    /// Messages that a change of ours made useless but that couldn't be deleted yet
    /// (the store failed, or whether another channel still needs them couldn't be
    /// told); retried after every successful refresh.
    /// Each with the time (Unix ms) it became unneeded: it is deleted only a grace
    /// period later (see [`crate::volume::reclaim`]).
    pub unfreed: BTreeMap<Id, u64>,
    /// The same for messages of other channels, `(channel, message)`: chunks of files
    /// moved here that a change of ours replaced or deleted.
    #[serde(with = "foreign_unfreed_serde")]
    pub unfreed_foreign: BTreeMap<(Id, Id), u64>,
    /// The bot's own messages in this channel, and what they are (see the module docs).
    #[serde(deserialize_with = "bulk::map")]
    own: BTreeMap<Id, Own>,
    /// The highest `seq` of any record read or written here: the next record's is one
    /// more.
    max_seq: u64,
    /// The first version-2 record the key authenticated here: version-1 records posted
    /// after it are not taken (see [`crate::format`], Version 1).
    cutover: Option<Id>,
    /// Record messages whose record couldn't be read although the message exists (its
    /// attachment refused): read again at every refresh.
    pub unread: BTreeSet<Id>,
    /// Messages of other authors that have attachments (what a forged chunk reference
    /// could name): a record naming one is refused. Chat without attachments costs
    /// nothing here.
    #[serde(deserialize_with = "bulk::set")]
    foreign: BTreeSet<Id>,
    /// Which writing of the cache this state is (random, new at every whole write):
    /// the cache's journal counts only the deltas written on top of this one.
    #[serde(default)]
    pub generation: u64,
    /// What changed since the cache was last written (see [`IndexDelta`]).
    #[serde(skip)]
    dirty: Dirty,
}

/// What changed in an index since it was last written to its cache, for the next
/// [`IndexDelta`].
#[derive(Debug, Clone, Default)]
struct Dirty {
    slots: BTreeSet<String>,
    own: BTreeSet<Id>,
    tombstones: Vec<Id>,
    foreign: Vec<Id>,
}

/// The changes to an index since it (or the previous delta) was written to its cache:
/// what the cache's journal holds, so that writing the cache after a change costs the
/// change, not the whole index (see [`crate::volume`]). The slots, the own messages,
/// the tombstone and foreign messages are those that changed; the rest (the small
/// bookkeeping: where replay got, skips, moves out, what waits to be freed, unread
/// records) is whole in every delta.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexDelta {
    /// The [`Index::generation`] it applies to.
    pub generation: u64,
    /// Its place in the journal: 0, 1, 2, ...
    pub seq: u64,
    slots: Vec<(String, Slot)>,
    own: Vec<(Id, Option<Own>)>,
    tombstones: Vec<Id>,
    foreign: Vec<Id>,
    last_seen: Id,
    #[serde(default)]
    collected: Id,
    #[serde(default)]
    pin_refused_at: u64,
    max_seq: u64,
    cutover: Option<Id>,
    skipped: Vec<(Id, Skip)>,
    #[serde(with = "moved_out_serde")]
    moved_out: moved_out_serde::MovedOut,
    unfreed: Vec<(Id, u64)>,
    #[serde(with = "foreign_unfreed_serde")]
    unfreed_foreign: BTreeMap<(Id, Id), u64>,
    unread: BTreeSet<Id>,
}

impl Index {
    /// The changes since the cache was last written, which from now on count as
    /// written.
    pub fn take_delta(&mut self, seq: u64) -> IndexDelta {
        let dirty = std::mem::take(&mut self.dirty);
        IndexDelta {
            generation: self.generation,
            seq,
            slots: dirty
                .slots
                .into_iter()
                .filter_map(|path| {
                    let slot = self.slots.map.get(&path)?.clone();
                    Some((path, slot))
                })
                .collect(),
            own: dirty
                .own
                .into_iter()
                .map(|m| (m, self.own.get(&m).copied()))
                .collect(),
            tombstones: dirty.tombstones,
            foreign: dirty.foreign,
            last_seen: self.last_seen,
            collected: self.collected,
            pin_refused_at: self.pin_refused_at,
            max_seq: self.max_seq,
            cutover: self.cutover,
            skipped: self.skipped.iter().map(|(&m, s)| (m, s.clone())).collect(),
            moved_out: self.moved_out.clone(),
            unfreed: self.unfreed.iter().map(|(&m, &t)| (m, t)).collect(),
            unfreed_foreign: self.unfreed_foreign.clone(),
            unread: self.unread.clone(),
        }
    }

    /// Counts everything as written to the cache (it was just written whole).
    pub fn mark_written(&mut self) {
        self.dirty = Dirty::default();
    }

    /// Applies a delta read from the cache's journal (of this generation, in order).
    pub fn apply_delta(&mut self, delta: IndexDelta) {
        for (path, slot) in delta.slots {
            self.slots.set(path, slot);
        }
        for (message, own) in delta.own {
            match own {
                Some(kind) => self.own.insert(message, kind),
                None => self.own.remove(&message),
            };
        }
        self.tombstone_messages.extend(delta.tombstones);
        self.foreign.extend(delta.foreign);
        self.last_seen = delta.last_seen;
        self.collected = delta.collected;
        self.pin_refused_at = delta.pin_refused_at;
        self.max_seq = delta.max_seq;
        self.cutover = delta.cutover;
        self.skipped = delta.skipped.into_iter().collect();
        self.moved_out = delta.moved_out;
        self.unfreed = delta.unfreed.into_iter().collect();
        self.unfreed_foreign = delta.unfreed_foreign;
        self.unread = delta.unread;
    }

    /// An empty index for `channel`, read with `key_id`.
    pub fn new(channel: Id, key_id: Option<KeyId>) -> Index {
        Index {
            version: INDEX_CACHE_VERSION,
            channel,
            key_id,
            last_seen: 0,
            collected: 0,
            pin_refused_at: 0,
            slots: Slots::default(),
            tombstone_messages: BTreeSet::new(),
            skipped: BTreeMap::new(),
            moved_out: BTreeMap::new(),
            unfreed: BTreeMap::new(),
            unfreed_foreign: BTreeMap::new(),
            own: BTreeMap::new(),
            max_seq: 0,
            cutover: None,
            unread: BTreeSet::new(),
            foreign: BTreeSet::new(),
            generation: 0,
            dirty: Dirty::default(),
        }
    }

    /// The replicated state, as a checkpoint's body (see [`crate::format`],
    /// Checkpoints): everything a replay of the channel's history decides, and nothing
    /// local (what waits to be freed, skipped records, the cache's generation).
    pub fn checkpoint_body(&self) -> CheckpointBody {
        let stamp = |s: &Stamp| s.named();
        let paths = self
            .slots
            .map
            .iter()
            .map(|(path, slot)| CheckpointPath {
                s: stamp(&slot.stamp),
                op: match &slot.entry {
                    Some(Entry::File(file)) => Op::Put(file.manifest(path)),
                    Some(Entry::Dir(dir)) => Op::Mkdir(dir.manifest(path)),
                    None => Op::Del {
                        path: path.clone(),
                        moved: None,
                    },
                },
                r: Some(relocated_by(slot.stamp, slot.entry.as_ref())).filter(|&r| r != 0),
            })
            .collect();
        let mut data: BTreeMap<FileId, Vec<Id>> = BTreeMap::new();
        let mut records = Vec::new();
        for (&message, own) in &self.own {
            match own {
                Own::Record => records.push(message),
                Own::Data(file) => data.entry(*file).or_default().push(message),
                Own::Checkpoint => {}
            }
        }
        CheckpointBody {
            channel: self.channel,
            last_seen: self.last_seen,
            collected: self.collected,
            max_seq: self.max_seq,
            cutover: self.cutover,
            paths,
            records,
            data: data
                .into_iter()
                .map(|(id, m)| CheckpointData { id, m })
                .collect(),
            tombstones: self.tombstone_messages.iter().copied().collect(),
            foreign: self.foreign.iter().copied().collect(),
            moved_out: self
                .moved_out
                .iter()
                .flat_map(|(&(c, m), dests)| {
                    dests.iter().map(move |(&to, s)| CheckpointMove {
                        c,
                        m,
                        to,
                        s: stamp(s),
                    })
                })
                .collect(),
            unread: self.unread.iter().copied().collect(),
        }
    }

    /// The index a checkpoint's body describes, read with `key_id` (the body was
    /// opened and checked by [`crate::format::open_checkpoint`]). A put whose chunks
    /// name messages that aren't the file's (see [`Index::apply`]) makes the whole
    /// checkpoint damaged.
    pub fn from_checkpoint(body: CheckpointBody, key_id: Option<KeyId>) -> Result<Index, String> {
        let mut index = Index::new(body.channel, key_id);
        index.last_seen = body.last_seen;
        index.collected = body.collected;
        index.max_seq = body.max_seq;
        index.cutover = body.cutover;
        index
            .own
            .extend(body.records.iter().map(|&m| (m, Own::Record)));
        for data in &body.data {
            index
                .own
                .extend(data.m.iter().map(|&m| (m, Own::Data(data.id))));
        }
        index.tombstone_messages.extend(body.tombstones);
        index.foreign.extend(body.foreign);
        index.unread.extend(body.unread);
        let stamp = Stamp::from_named;
        for link in body.moved_out {
            index
                .moved_out
                .entry((link.c, link.m))
                .or_default()
                .insert(link.to, stamp(link.s));
        }
        // Collected, then built at once (the paths come in order: a bulk build, not
        // 100,000 inserts).
        let mut slots = Vec::with_capacity(body.paths.len());
        for path in body.paths {
            let stamp = stamp(path.s);
            let message = Message {
                // A relocated put's record message is the relocation's.
                id: path.r.unwrap_or(stamp.message()),
                channel_id: index.channel,
                author_id: 0,
                content: String::new(),
                attachments: Vec::new(),
            };
            let (path, entry) = resolve(&message, &path.op, None)?;
            if let Some(Entry::File(file)) = &entry {
                index
                    .check_own_chunks(file)
                    .map_err(|e| format!("'{path}': {e}"))?;
            }
            slots.push((path, Slot { stamp, entry }));
        }
        index.slots = Slots::from_map(BTreeMap::from_iter(slots));
        Ok(index)
    }

    /// Forgets the messages before `before` that the index knows of but `present`
    /// (every message of the channel before it, as just read) lacks: deleted by
    /// another machine or a moderator. What `gc` does with the history it read, so
    /// that the index holds what the channel holds, not what it ever held. Returns how
    /// many were forgotten.
    pub fn forget_missing(&mut self, before: Id, present: &HashSet<Id>) -> usize {
        let gone = |id: &Id| *id < before && !present.contains(id);
        let own: Vec<Id> = self.own.keys().copied().filter(gone).collect();
        for &message in &own {
            self.forget_own(message);
        }
        let foreign = self.foreign.len();
        self.foreign.retain(|id| !gone(id));
        let tombstones = self.tombstone_messages.len();
        self.tombstone_messages.retain(|id| !gone(id));
        own.len() + (foreign - self.foreign.len()) + (tombstones - self.tombstone_messages.len())
    }

    /// Takes over what is local in `old` (what waits to be freed, records skipped or
    /// unread), for an index that replaces it.
    pub fn keep_local_state(&mut self, old: &mut Index) {
        self.unfreed.append(&mut old.unfreed);
        self.unfreed_foreign.append(&mut old.unfreed_foreign);
        self.skipped.append(&mut old.skipped);
        self.unread.append(&mut old.unread);
    }

    /// How many record messages of ours this index knows of after message `after`,
    /// counting up to `limit` (what decides when a new checkpoint is due).
    pub fn records_after(&self, after: Id, limit: usize) -> usize {
        self.own
            .range(after.saturating_add(1)..)
            .filter(|(_, own)| **own == Own::Record)
            .take(limit)
            .count()
    }

    /// The newest of [`Index::checkpoint_messages`] (0: none), found from the newest
    /// message back rather than by listing them all.
    pub fn newest_checkpoint(&self) -> Id {
        self.own
            .iter()
            .rev()
            .find(|(_, own)| **own == Own::Checkpoint)
            .map_or(0, |(&m, _)| m)
    }

    /// The checkpoint messages of ours this index knows of (heads and parts).
    pub fn checkpoint_messages(&self) -> Vec<Id> {
        self.own
            .iter()
            .filter(|(_, own)| **own == Own::Checkpoint)
            .map(|(&m, _)| m)
            .collect()
    }

    /// Notes a message of another author that has attachments.
    pub fn note_foreign(&mut self, message: Id) {
        if self.foreign.insert(message) {
            self.dirty.foreign.push(message);
        }
    }

    /// Notes a message of the bot's own.
    pub fn note_own(&mut self, message: Id, kind: Own) {
        self.own.insert(message, kind);
        self.dirty.own.insert(message);
    }

    /// What message `message` of this channel is, if it is one of the bot's own that
    /// still exists as far as this index knows.
    pub fn own(&self, message: Id) -> Option<Own> {
        self.own.get(&message).copied()
    }

    /// Notes that a message is gone.
    pub fn forget_own(&mut self, message: Id) {
        if self.own.remove(&message).is_some() {
            self.dirty.own.insert(message);
        }
    }

    /// The `seq` for the next record written here.
    pub fn next_seq(&self) -> u64 {
        self.max_seq + 1
    }

    /// Takes the `seq` for a record about to be written: two records written at once
    /// here never share one.
    pub fn take_seq(&mut self) -> u64 {
        self.max_seq += 1;
        self.max_seq
    }

    /// Notes a version-2 record that the key authenticated in message `message`.
    pub fn note_authenticated(&mut self, message: Id) {
        self.cutover = Some(self.cutover.map_or(message, |c| c.min(message)));
    }

    /// The first version-2 record the key authenticated here, if any.
    pub fn cutover(&self) -> Option<Id> {
        self.cutover
    }

    /// Whether a cached index can stand in for this channel and key.
    pub fn usable_for(&self, channel: Id, key_id: Option<KeyId>) -> bool {
        self.version == INDEX_CACHE_VERSION && self.channel == channel && self.key_id == key_id
    }

    /// Applies a record of format `version` read from `message`. A record whose chunks
    /// name attachments the message doesn't have, or messages that aren't the bot's own
    /// data messages of the file (or its record messages), is damaged and applied not
    /// at all. Returns the operations that lost to a change posted before them (see
    /// [`Outdated`]).
    ///
    /// `sealed_by` is the key that sealed the record (and so, unless they name another
    /// one, its chunks): an older key than the index's is kept with each chunk.
    pub fn apply(
        &mut self,
        message: &Message,
        record: &Record,
        version: u8,
        sealed_by: Option<KeyId>,
    ) -> Result<Vec<Outdated>, String> {
        let sealed_by = sealed_by.filter(|&key| Some(key) != self.key_id);
        let mut resolved = Vec::with_capacity(record.ops.len());
        for op in &record.ops {
            resolved.push(resolve(message, op, sealed_by)?);
        }
        if record.ops.iter().any(|op| matches!(op, Op::Link { .. })) {
            self.note_tombstone(message.id); // a guard: it stays
        }
        for (_, entry) in &resolved {
            if let Some(Entry::File(file)) = entry {
                self.check_own_chunks(file)?;
            }
        }
        for (op, (path, _)) in record.ops.iter().zip(&resolved) {
            if let Op::Relocate(relocation) = op {
                self.check_relocation(message.id, record.seq, path, relocation)?;
            }
        }
        let seq = if version >= 2 { record.seq } else { 0 };
        self.max_seq = self.max_seq.max(seq);
        let mut outdated = Vec::new();
        for (position, (path, entry)) in resolved.into_iter().enumerate() {
            // A relocation holds the path with the stamp of the put it relocates, and
            // wins over that put at that stamp (see [`Slot::order`]).
            let (stamp, relocation) = match &record.ops[position] {
                Op::Relocate(relocation) => (Stamp::from_named(relocation.s), true),
                _ => (Stamp::new(version, seq, message.id, position as u32), false),
            };
            let order = (stamp, relocated_by(stamp, entry.as_ref()));
            // Where a moved file's messages went counts whether or not this delete
            // wins its path: a newer put of the path doesn't bring the chunks back.
            let link = match &record.ops[position] {
                Op::Del {
                    moved: Some(moved), ..
                } => Some((moved, false)),
                Op::Link { moved, .. } => Some((moved, true)),
                _ => None,
            };
            if let Some((moved, link_only)) = link {
                for &held in &moved.messages {
                    let newest = self
                        .moved_out
                        .entry(held)
                        .or_default()
                        .entry(moved.to)
                        .or_insert(stamp);
                    *newest = (*newest).max(stamp);
                }
                if link_only {
                    continue; // nothing changes at the path
                }
            }
            if entry.is_none() {
                self.note_tombstone(message.id);
            }
            match self.slots.map.get(&path) {
                Some(slot) if slot.order() >= order => {
                    if slot.stamp.message() < message.id && slot.stamp != stamp {
                        outdated.push(Outdated {
                            path,
                            seq,
                            current_message: slot.stamp.message(),
                            current_seq: slot.stamp.seq(),
                            relocation,
                        });
                    }
                }
                _ => {
                    self.dirty.slots.insert(path.clone());
                    self.slots.set(path, Slot { stamp, entry });
                }
            }
        }
        self.skipped.remove(&message.id);
        self.unread.remove(&message.id);
        Ok(outdated)
    }

    /// Checks a `relocate` in the record of message `message` with `seq`: it relocates
    /// a put posted before it, with a lower `seq`, and when the index knows that put
    /// (the path holds its stamp) the file it names is the one that put put (its id):
    /// else the record is damaged.
    fn check_relocation(
        &self,
        message: Id,
        seq: u64,
        path: &str,
        relocation: &Relocation,
    ) -> Result<(), String> {
        let stamp = Stamp::from_named(relocation.s);
        if stamp.message() >= message || (stamp.seq() >= seq && stamp.seq() != 0) {
            return Err(format!(
                "'{path}': relocates a put that is not older than the relocation"
            ));
        }
        if let Some(slot) = self.slots.map.get(path)
            && slot.stamp == stamp
        {
            match &slot.entry {
                Some(Entry::File(file)) if file.id == relocation.file.id => {}
                _ => {
                    return Err(format!(
                        "'{path}': relocates the put in message {} as file {}, which that \
                         put did not put",
                        stamp.message(),
                        relocation.file.id
                    ));
                }
            }
        }
        Ok(())
    }

    fn note_tombstone(&mut self, message: Id) {
        if self.tombstone_messages.insert(message) {
            self.dirty.tombstones.push(message);
        }
    }

    /// Checks that the chunks of `file` stored in this channel are in the bot's own
    /// messages: data messages of this file, or record messages.
    fn check_own_chunks(&self, file: &FileEntry) -> Result<(), String> {
        for chunk in file.chunks.iter().filter(|c| c.channel.is_none()) {
            match self.own(chunk.message) {
                Some(Own::Record) => {}
                Some(Own::Data(id)) if id == file.id => {}
                Some(Own::Data(_)) => {
                    return Err(format!(
                        "a chunk names message {}, which holds another file's data",
                        chunk.message
                    ));
                }
                Some(Own::Checkpoint) => {
                    return Err(format!(
                        "a chunk names message {}, which holds a checkpoint",
                        chunk.message
                    ));
                }
                None if self.foreign.contains(&chunk.message) => {
                    return Err(format!(
                        "a chunk names message {}, which is someone else's",
                        chunk.message
                    ));
                }
                // Gone (a later change freed it), or never seen: the chunk is missing
                // when read, and nothing that isn't ours is ever deleted.
                None => {}
            }
        }
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
            .map
            .get(path)
            .map(|slot| format!("{}:{}", slot.stamp.message(), slot.stamp.position))
    }

    /// The live entry at `path`.
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.slots
            .map
            .get(path)
            .and_then(|slot| slot.entry.as_ref())
    }

    /// The names of the file at `path` (its hard links, `path` among them), in path
    /// order; just `path` for a file of one name, nothing if no file is there.
    pub fn names_of<'a>(&'a self, path: &str) -> Vec<&'a str> {
        let Some((
            stored,
            Slot {
                entry: Some(Entry::File(file)),
                ..
            },
        )) = self.slots.map.get_key_value(path)
        else {
            return Vec::new();
        };
        match file.node.and_then(|node| self.slots.hard_names.get(&node)) {
            Some(names) => names.iter().map(String::as_str).collect(),
            None => vec![stored.as_str()],
        }
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
        self.slots_under(dir)
            .filter_map(|(path, slot)| slot.entry.as_ref().map(|entry| (path.as_str(), entry)))
    }

    /// The slots strictly below folder `dir` ("" = every one), in path order.
    fn slots_under<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a String, &'a Slot)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.slots
            .map
            .range(prefix.clone()..)
            .take_while(move |(path, _)| path.starts_with(&prefix))
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
        in_use.extend(self.slots.uses.keys().copied());
        in_use
    }

    /// Whether a live entry uses message `message` of this channel (its record or
    /// its chunks); tombstones aside.
    pub fn used_by_entries(&self, message: Id) -> bool {
        self.slots.uses.contains_key(&message)
    }

    /// The paths whose tombstone holds them, by the message carrying the delete.
    pub fn deletes_by_message(&self) -> HashMap<Id, Vec<String>> {
        let mut deletes: HashMap<Id, Vec<String>> = HashMap::new();
        for (path, slot) in &self.slots.map {
            if slot.entry.is_none() {
                deletes
                    .entry(slot.stamp.message())
                    .or_default()
                    .push(path.clone());
            }
        }
        deletes
    }

    /// The deletes below folder `dir` ("" = everywhere) that messages newer than
    /// `after` carry, as (path, message), in path order.
    pub fn deletes_after(&self, dir: &str, after: Id) -> Vec<(String, Id)> {
        self.slots_under(dir)
            .filter(|(_, slot)| slot.entry.is_none() && slot.stamp.message() > after)
            .map(|(path, slot)| (path.clone(), slot.stamp.message()))
            .collect()
    }

    /// For each of `messages`: the live files whose record message it is (that it put,
    /// or relocated), with the stamp that holds each, and how many live folders it
    /// made. What `gc` judges a record message's repacking by (see
    /// [`crate::volume::repack`]): one walk of the slots.
    pub fn set_by(&self, messages: &HashSet<Id>) -> HashMap<Id, SetBy> {
        let mut found: HashMap<Id, SetBy> = HashMap::new();
        for (path, slot) in &self.slots.map {
            let (record, file) = match &slot.entry {
                Some(Entry::File(file)) => (file.record_message, Some(file)),
                Some(Entry::Dir(dir)) => (dir.record_message, None),
                None => continue,
            };
            if !messages.contains(&record) {
                continue;
            }
            let set = found.entry(record).or_default();
            match file {
                Some(file) => set.files.push((path.clone(), slot.stamp, file.clone())),
                None => set.dirs += 1,
            }
        }
        found
    }

    /// The record messages whose puts relocations posted at or after `since` moved
    /// away (what `gc` must not free yet: see [`crate::volume::repack`]).
    pub fn relocated_since(&self, since: Id) -> HashSet<Id> {
        self.slots
            .map
            .values()
            .filter_map(|slot| {
                let by = relocated_by(slot.stamp, slot.entry.as_ref());
                (by != 0 && by >= since).then(|| slot.stamp.message())
            })
            .collect()
    }

    /// How many times live entries name message `message` of this channel.
    pub fn uses_of(&self, message: Id) -> u32 {
        self.slots.uses.get(&message).copied().unwrap_or(0)
    }

    /// Whether `path` holds a tombstone.
    pub fn is_tombstone(&self, path: &str) -> bool {
        self.slots
            .map
            .get(path)
            .is_some_and(|slot| slot.entry.is_none())
    }

    /// Whether message `message` carries tombstones (or links) that the index keeps.
    pub fn carries_tombstones(&self, message: Id) -> bool {
        self.tombstone_messages.contains(&message)
    }

    /// Forgets the deletes that message `message` holds at `paths`, and that it carries
    /// tombstones: what `gc` does before it deletes the message (see
    /// [`crate::volume::gc`]).
    pub fn forget_tombstones(&mut self, message: Id, paths: &[String]) {
        for path in paths {
            if self
                .slots
                .map
                .get(path)
                .is_some_and(|slot| slot.entry.is_none() && slot.stamp.message() == message)
            {
                self.slots.map.remove(path);
                self.dirty.slots.insert(path.clone());
            }
        }
        self.tombstone_messages.remove(&message);
    }

    /// Whether message `message` of this channel is still needed (one of
    /// [`Index::messages_in_use`]), at the cost of a lookup.
    pub fn in_use(&self, message: Id) -> bool {
        self.tombstone_messages.contains(&message) || self.slots.uses.contains_key(&message)
    }

    /// Whether a live entry uses message `message` of another channel `channel` (one of
    /// [`Index::foreign_in_use`]), at the cost of a lookup.
    pub fn foreign_used(&self, channel: Id, message: Id) -> bool {
        self.slots.foreign_uses.contains_key(&(channel, message))
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
            self.in_use(message)
        } else {
            self.foreign_used(channel, message)
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
        self.slots.foreign_uses.keys().copied().collect()
    }
}

/// Turns an operation into the entry it sets, with attachments resolved to ids.
/// The entry that operation `op` of a record in `message`, sealed by `sealed_by`, sets
/// (`None` for a delete), as it would be applied: what a writer hands back for the
/// version it stored.
pub fn entry_of(
    message: &Message,
    op: &Op,
    sealed_by: Option<KeyId>,
) -> Result<Option<Entry>, String> {
    resolve(message, op, sealed_by).map(|(_, entry)| entry)
}

/// `chunk_key`: the key that sealed the record's chunks unless a chunk says otherwise,
/// when that isn't the index's own key.
fn resolve(
    message: &Message,
    op: &Op,
    chunk_key: Option<KeyId>,
) -> Result<(String, Option<Entry>), String> {
    let entry = match op {
        Op::Del { .. } | Op::Link { .. } => None,
        Op::Mkdir(dir) => Some(Entry::Dir(DirEntry {
            mtime_ns: dir.mtime_ns,
            mode: dir.mode,
            record_message: message.id,
            meta: boxed(&dir.meta),
        })),
        Op::Put(file) | Op::Relocate(Relocation { file, .. }) => {
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
                    key: chunk
                        .key
                        .or(chunk_key)
                        .filter(|_| chunk.kind(file.encrypted) == ChunkKind::Whole),
                    prefix: chunk.prefix,
                    packed_at: chunk.packed_at,
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
                data_key: file.data_key,
                symlink: file.symlink.clone(),
                special: file.special,
                node: file.node,
                meta: boxed(&file.meta),
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
                key: None,
                prefix: None,
                packed_at: None,
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
            data_key: None,
            symlink: None,
            special: None,
            node: None,
            meta: Default::default(),
        })
    }

    fn attached(name: &str) -> ChunkLocation {
        ChunkLocation::Attached {
            filename: name.into(),
        }
    }

    fn record(ops: Vec<Op>) -> Record {
        Record { seq: 0, ops }
    }

    /// Applies a version-1 record (replayed by message id).
    fn apply_v1(index: &mut Index, message: &Message, record: &Record) -> Result<(), String> {
        index.apply(message, record, 1, None).map(|_| ())
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
        apply_v1(&mut forward, &m10, &first).unwrap();
        apply_v1(&mut forward, &m20, &second).unwrap();
        assert_eq!(forward.file("a.txt").unwrap().chunks[0].attachment, 200);
        apply_v1(&mut forward, &m30, &delete).unwrap();
        assert!(forward.entry("a.txt").is_none());

        let mut backward = Index::new(1, None);
        apply_v1(&mut backward, &m30, &delete).unwrap();
        apply_v1(&mut backward, &m20, &second).unwrap();
        apply_v1(&mut backward, &m10, &first).unwrap();
        apply_v1(&mut backward, &m20, &second).unwrap(); // read twice
        assert!(backward.entry("a.txt").is_none());
        assert!(backward.messages_in_use().contains(&30));
    }

    #[test]
    fn rename_in_one_record_keeps_the_chunks() {
        let m10 = message(10, &[("c0.bin", 100)]);
        let mut index = Index::new(1, None);
        apply_v1(
            &mut index,
            &m10,
            &record(vec![put("old", vec![attached("c0.bin")])]),
        )
        .unwrap();
        index.note_own(10, Own::Record);
        let moved = put(
            "new",
            vec![ChunkLocation::Stored {
                channel: None,
                message: 10,
                attachment: 100,
            }],
        );
        apply_v1(
            &mut index,
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
        assert!(apply_v1(&mut index, &message(10, &[]), &bad).is_err());
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
                meta: Default::default(),
            }),
        ];
        apply_v1(&mut index, &message(10, &[]), &record(ops)).unwrap();
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
        apply_v1(
            &mut index,
            &message(11, &[]),
            &record(vec![put("photos2", vec![])]),
        )
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
            apply_v1(&mut forward, message, record).unwrap();
        }
        let mut backward = Index::new(1, None);
        for (message, record) in ops.iter().rev() {
            apply_v1(&mut backward, message, record).unwrap();
        }
        apply_v1(&mut backward, &ops[2].0, &ops[2].1).unwrap(); // read twice
        let mut shuffled = Index::new(1, None);
        for i in [3, 0, 4, 2, 1] {
            apply_v1(&mut shuffled, &ops[i].0, &ops[i].1).unwrap();
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
        let encoded = encode(&forward);
        let read: Index = decode(&encoded).unwrap();
        assert_eq!(read.moved_out, forward.moved_out);
        assert_eq!(read.holds(9, 90), Hold::MovedTo(vec![2, 3]));
    }

    #[test]
    fn holds_tells_live_moved_and_unknown_messages_apart() {
        let mut index = Index::new(2, None);
        // A file moved here from channel 1 (chunks in 1/10 and in 2/15), and a file of
        // our own in message 16.
        index.note_own(15, Own::Data(FileId([1; 16])));
        apply_v1(
            &mut index,
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
        apply_v1(
            &mut index,
            &message_in(2, 17, &[]),
            &record(vec![moved_del("moved", 3, vec![(1, 10), (2, 15)])]),
        )
        .unwrap();
        apply_v1(
            &mut index,
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

    fn record_v2(seq: u64, ops: Vec<Op>) -> Record {
        Record { seq, ops }
    }

    fn chunk_of(index: &Index, path: &str) -> Option<Id> {
        index.file(path).map(|f| f.chunks[0].attachment)
    }

    #[test]
    fn the_highest_seq_wins_and_a_record_posted_again_never_does() {
        let v1 = (
            message(10, &[("c0.bin", 100)]),
            record_v2(1, vec![put("a", vec![attached("c0.bin")])]),
        );
        let v2 = (
            message(20, &[("c0.bin", 200)]),
            record_v2(2, vec![put("a", vec![attached("c0.bin")])]),
        );
        // The first version's record posted again, attachments and all.
        let copy = (message(30, &[("c0.bin", 300)]), v1.1.clone());
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
            let all = [&v1, &v2, &copy];
            let mut index = Index::new(1, None);
            let mut outdated = Vec::new();
            for i in order {
                outdated.extend(index.apply(&all[i].0, &all[i].1, 2, None).unwrap());
            }
            assert_eq!(chunk_of(&index, "a"), Some(200), "order {order:?}");
            assert_eq!(index.next_seq(), 3);
            // The copy is reported whenever it comes after what it lost to.
            if order.iter().position(|&i| i == 2) > order.iter().position(|&i| i == 1) {
                assert!(
                    outdated
                        .iter()
                        .any(|o| o.path == "a" && o.seq == 1 && o.current_seq == 2)
                );
            }
        }
    }

    /// A `relocate` of the put at `(seq, message, position)` of `path`, its chunk
    /// attached as `c0.bin`, naming file `id`.
    fn relocate(path: &str, seq: u64, message: Id, position: u32, id: FileId) -> Op {
        let Op::Put(mut file) = put(path, vec![attached("c0.bin")]) else {
            unreachable!()
        };
        file.id = id;
        Op::Relocate(Relocation {
            s: CheckpointStamp {
                seq,
                m: message,
                i: position,
            },
            file,
        })
    }

    /// Applies records of version 6 in `order`, each with its message.
    fn replay(order: &[&(Message, Record)]) -> Index {
        let mut index = Index::new(1, None);
        for (message, record) in order {
            index.apply(message, record, 6, None).unwrap();
        }
        index
    }

    #[test]
    fn a_relocation_holds_the_stamp_of_the_put_it_relocates_in_any_order() {
        // "a" put at seq 5 in message 10 (position 1); gc relocates it in message 50
        // (seq 9) to attachment 500.
        let original = (
            message(10, &[("c0.bin", 100), ("c1.bin", 101)]),
            record_v2(
                5,
                vec![
                    put("b", vec![attached("c0.bin")]),
                    put("a", vec![attached("c1.bin")]),
                ],
            ),
        );
        let relocation = (
            message(50, &[("c0.bin", 500)]),
            record_v2(9, vec![relocate("a", 5, 10, 1, FileId([1; 16]))]),
        );
        // Original and relocation, either order: the relocation's chunk, the put's
        // stamp; the original read again changes nothing.
        for order in [[&original, &relocation], [&relocation, &original]] {
            let mut index = replay(&order);
            assert_eq!(chunk_of(&index, "a"), Some(500));
            assert_eq!(index.version_of("a").as_deref(), Some("10:1"));
            assert_eq!(index.file("a").unwrap().record_message, 50);
            index.apply(&original.0, &original.1, 6, None).unwrap();
            assert_eq!(chunk_of(&index, "a"), Some(500));
            // Message 10 is used by "b" only now.
            assert_eq!(index.uses_of(10), 2);
            assert_eq!(index.uses_of(50), 2);
        }
        // Concurrent changes of "a" on other machines win or lose exactly as they
        // would against the original put, in any order: a later seq wins; the same
        // seq wins when posted before the original (lower message id) and loses when
        // posted after; a lower seq loses.
        let change = |id: Id, seq: u64, del: bool| {
            let op = if del {
                Op::Del {
                    path: "a".into(),
                    moved: None,
                }
            } else {
                put("a", vec![attached("c0.bin")])
            };
            (
                message(id, &[("c0.bin", id * 10)]),
                record_v2(seq, vec![op]),
            )
        };
        for (other, wins) in [
            (change(60, 6, false), true),
            (change(40, 6, true), true),
            (change(8, 5, false), true),
            (change(20, 5, false), false),
            (change(30, 4, true), false),
            (change(70, 9, false), true),
        ] {
            let all = [&original, &relocation, &other];
            for order in [
                [0, 1, 2],
                [0, 2, 1],
                [1, 0, 2],
                [1, 2, 0],
                [2, 0, 1],
                [2, 1, 0],
            ] {
                let index = replay(&order.map(|i| all[i]));
                let expected = match (wins, &other.1.ops[0]) {
                    (true, Op::Del { .. }) => None,
                    (true, _) => Some(other.0.id * 10),
                    (false, _) => Some(500),
                };
                assert_eq!(
                    chunk_of(&index, "a"),
                    expected,
                    "{:?} against seq {} in {}, order {order:?}",
                    other.1.ops[0].path(),
                    other.1.seq,
                    other.0.id
                );
            }
        }
        // A relocation of the relocation (a second gc) wins over both.
        let again = (
            message(80, &[("c0.bin", 800)]),
            record_v2(12, vec![relocate("a", 5, 10, 1, FileId([1; 16]))]),
        );
        let all = [&original, &relocation, &again];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
            let index = replay(&order.map(|i| all[i]));
            assert_eq!(chunk_of(&index, "a"), Some(800), "order {order:?}");
        }
    }

    #[test]
    fn a_relocation_of_another_file_or_of_a_later_put_is_refused() {
        let original = (
            message(10, &[("c0.bin", 100)]),
            record_v2(5, vec![put("a", vec![attached("c0.bin")])]),
        );
        let mut index = replay(&[&original]);
        let bad = [
            // Another file id than the put put.
            record_v2(9, vec![relocate("a", 5, 10, 0, FileId([2; 16]))]),
            // A put posted after the relocation, or with a seq not below its own.
            record_v2(9, vec![relocate("a", 5, 60, 0, FileId([1; 16]))]),
            record_v2(5, vec![relocate("a", 5, 10, 0, FileId([1; 16]))]),
        ];
        for record in bad {
            let good = relocate("b", 5, 10, 0, FileId([1; 16]));
            let mut record = record;
            record.ops.insert(0, good);
            let applied = index.apply(&message(50, &[("c0.bin", 500)]), &record, 6, None);
            assert!(applied.is_err(), "{record:?}");
            // Refused whole: nothing of it landed.
            assert_eq!(chunk_of(&index, "a"), Some(100));
            assert!(index.file("b").is_none());
        }
    }

    #[test]
    fn a_checkpoint_keeps_a_relocated_put_with_its_stamp_and_message() {
        let original = (
            message(10, &[("c0.bin", 100)]),
            record_v2(5, vec![put("a", vec![attached("c0.bin")])]),
        );
        let relocation = (
            message(50, &[("c0.bin", 500)]),
            record_v2(9, vec![relocate("a", 5, 10, 0, FileId([1; 16]))]),
        );
        let mut index = replay(&[&original, &relocation]);
        index.note_own(10, Own::Record);
        index.note_own(50, Own::Record);
        index.advance(60);
        let body = index.checkpoint_body();
        let held = body.paths.iter().find(|p| p.op.path() == "a").unwrap();
        assert_eq!((held.s.m, held.r), (10, Some(50)));
        let json = serde_json::to_vec(&body).unwrap();
        let mut read =
            Index::from_checkpoint(serde_json::from_slice(&json).unwrap(), None).unwrap();
        assert_eq!(read.file("a"), index.file("a"));
        assert_eq!(read.version_of("a"), index.version_of("a"));
        // The original read again after the checkpoint still doesn't land.
        read.apply(&original.0, &original.1, 6, None).unwrap();
        assert_eq!(chunk_of(&read, "a"), Some(500));
        assert_eq!(read.uses_of(10), 0);
    }

    #[test]
    fn one_seq_from_two_writers_goes_to_the_record_posted_first() {
        let first = (
            message(10, &[("c0.bin", 100)]),
            record_v2(7, vec![put("a", vec![attached("c0.bin")])]),
        );
        let second = (
            message(11, &[("c0.bin", 110)]),
            record_v2(7, vec![put("a", vec![attached("c0.bin")])]),
        );
        for reversed in [false, true] {
            let mut index = Index::new(1, None);
            let (a, b) = if reversed {
                (&second, &first)
            } else {
                (&first, &second)
            };
            index.apply(&a.0, &a.1, 2, None).unwrap();
            index.apply(&b.0, &b.1, 2, None).unwrap();
            assert_eq!(chunk_of(&index, "a"), Some(100));
        }
    }

    #[test]
    fn every_version_2_change_is_newer_than_every_version_1_change() {
        let new = (
            message(10, &[("c0.bin", 100)]),
            record_v2(1, vec![put("a", vec![attached("c0.bin")])]),
        );
        let old = (
            message(50, &[("c0.bin", 500)]),
            record(vec![put("a", vec![attached("c0.bin")])]),
        );
        let mut index = Index::new(1, None);
        index.apply(&old.0, &old.1, 1, None).unwrap();
        index.apply(&new.0, &new.1, 2, None).unwrap();
        assert_eq!(chunk_of(&index, "a"), Some(100));
        let mut index = Index::new(1, None);
        index.apply(&new.0, &new.1, 2, None).unwrap();
        index.apply(&old.0, &old.1, 1, None).unwrap();
        assert_eq!(chunk_of(&index, "a"), Some(100));
    }

    #[test]
    fn chunks_must_be_in_our_own_messages_of_the_same_file() {
        let mut index = Index::new(1, None);
        let at = |message| vec![stored(None, message)];
        // Message 5 is someone else's; 6 holds another file's data; 7 this file's; 8 is
        // a record message of ours; 9 is unknown (deleted since, say).
        index.note_foreign(5);
        index.note_own(6, Own::Data(FileId([2; 16])));
        index.note_own(7, Own::Data(FileId([1; 16])));
        index.note_own(8, Own::Record);
        for (message, ok) in [(5, false), (6, false), (7, true), (8, true), (9, true)] {
            let applied = index.apply(
                &message_in(1, 20 + message, &[]),
                &record_v2(message, vec![put("f", at(message))]),
                2,
                None,
            );
            assert_eq!(applied.is_ok(), ok, "message {message}: {applied:?}");
        }
        // Another channel's messages are checked where they are (when freed).
        index
            .apply(
                &message_in(1, 40, &[]),
                &record_v2(9, vec![put("g", vec![stored(Some(3), 5)])]),
                2,
                None,
            )
            .unwrap();
    }

    #[test]
    fn the_cutover_is_the_first_authenticated_version_2_record() {
        let mut index = Index::new(1, None);
        assert_eq!(index.cutover(), None);
        index.note_authenticated(30);
        index.note_authenticated(20);
        index.note_authenticated(40);
        assert_eq!(index.cutover(), Some(20));
        let encoded = encode(&index);
        let read: Index = decode(&encoded).unwrap();
        assert_eq!(read.cutover(), Some(20));
    }

    /// The uses of every message, counted from scratch by walking every live entry:
    /// what [`Slots`] keeps up to date as slots change.
    fn recounted(index: &Index) -> (IdMap<Id, u32>, IdMap<(Id, Id), u32>) {
        let (mut uses, mut foreign) = (IdMap::default(), IdMap::default());
        for (_, entry) in index.live() {
            for message in entry.messages() {
                *uses.entry(message).or_default() += 1;
            }
            for held in entry.foreign_messages() {
                *foreign.entry(held).or_default() += 1;
            }
        }
        (uses, foreign)
    }

    fn assert_counts_match(index: &Index, step: usize) {
        let (uses, foreign) = recounted(index);
        assert_eq!(
            index.slots.uses, uses,
            "step {step}: uses of this channel's messages"
        );
        assert_eq!(
            index.slots.foreign_uses, foreign,
            "step {step}: uses of other channels'"
        );
        let mut in_use: HashSet<Id> = index.tombstone_messages.iter().copied().collect();
        in_use.extend(uses.keys());
        assert_eq!(index.messages_in_use(), in_use, "step {step}");
        assert_eq!(
            index.foreign_in_use(),
            foreign.keys().copied().collect::<HashSet<_>>(),
            "step {step}"
        );
        for message in 0..200 {
            assert_eq!(
                index.in_use(message),
                in_use.contains(&message),
                "step {step}"
            );
            assert_eq!(
                index.holds(1, message) == Hold::Live,
                in_use.contains(&message),
                "step {step}: holds({message})"
            );
            assert_eq!(
                index.foreign_used(9, message),
                foreign.contains_key(&(9, message)),
                "step {step}"
            );
        }
    }

    /// Random puts (chunks attached, stored here, stored in another channel, several in
    /// one message), replaces, deletes, moved deletes, renames and folders, applied with
    /// random `seq`s (so some lose to what stands), in random versions: the counts kept
    /// as slots change always equal a count from scratch, and so after a trip through
    /// the cache; and the deltas taken now and then, applied to the state they started
    /// from, always make the index.
    #[test]
    fn use_counts_and_cache_deltas_always_equal_a_full_recount() {
        let seeds = std::env::var("DCLOUD_USES_SEEDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(20u64);
        for seed in 0..seeds {
            let mut next = {
                let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                move |below: u64| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % below
                }
            };
            let mut index = Index::new(1, None);
            // What the cache holds: the state it started from, and the deltas since.
            let mut cached = index.clone();
            let mut seq = 0;
            let paths = ["a", "b", "d/c", "d/e", "f"];
            for step in 0..300 {
                match next(20) {
                    0 => index.note_own(next(200), Own::Record),
                    1 => index.forget_own(next(200)),
                    2 => index.note_foreign(500 + next(100)),
                    3 => index.unfreed.clear(),
                    4 => {
                        let delta = index.take_delta(seq);
                        let encoded = encode(&delta);
                        cached.apply_delta(decode(&encoded).unwrap());
                        seq += 1;
                    }
                    _ => {}
                }
                if next(5) == 0 {
                    index.unfreed.insert(next(200), step as u64);
                }
                let id = 1_000 + step as Id;
                let path = paths[next(paths.len() as u64) as usize];
                let mut attachments = Vec::new();
                let op = match next(6) {
                    0 | 1 => {
                        let chunks = (0..next(4))
                            .map(|c| match next(3) {
                                0 => {
                                    let name = format!("c{c}.bin");
                                    attachments.push((name.clone(), id * 10 + c));
                                    attached(&name)
                                }
                                1 => stored(None, next(200)),
                                _ => stored(Some(9), next(200)),
                            })
                            .collect();
                        put(path, chunks)
                    }
                    2 => Op::Del {
                        path: path.into(),
                        moved: None,
                    },
                    3 => moved_del(path, 2, vec![(1, next(200)), (9, next(200))]),
                    4 => Op::Mkdir(DirManifest {
                        path: path.into(),
                        mtime_ns: 0,
                        mode: 0o755,
                        meta: Default::default(),
                    }),
                    _ => {
                        // A rename: the entry's chunks under another path, in one record.
                        let to = paths[next(paths.len() as u64) as usize];
                        let chunks = match index.file(path) {
                            Some(file) => file
                                .chunks
                                .iter()
                                .map(|c| ChunkRef::from(c).location)
                                .collect(),
                            None => vec![stored(None, next(200))],
                        };
                        let del = Op::Del {
                            path: path.into(),
                            moved: None,
                        };
                        let names: Vec<(&str, Id)> = Vec::new();
                        let message = message(id, &names);
                        let record = record_v2(next(400), vec![del, put(to, chunks)]);
                        index.apply(&message, &record, 2, None).unwrap();
                        assert_counts_match(&index, step);
                        continue;
                    }
                };
                let names: Vec<(&str, Id)> =
                    attachments.iter().map(|(n, a)| (n.as_str(), *a)).collect();
                let message = message(id, &names);
                let version = if next(4) == 0 { 1 } else { 2 };
                let record = record_v2(next(400), vec![op]);
                index.apply(&message, &record, version, None).unwrap();
                assert_counts_match(&index, step);
            }
            cached.apply_delta(index.take_delta(seq));
            assert_eq!(
                serde_json::to_value(&cached).unwrap(),
                serde_json::to_value(&index).unwrap(),
                "seed {seed}: the cache's start and its deltas make the index"
            );
            assert_eq!(cached.slots.uses, index.slots.uses, "seed {seed}");
            let encoded = encode(&index);
            assert_eq!(encoded_version(&encoded), Some(INDEX_CACHE_VERSION));
            let read: Index = decode(&encoded).unwrap();
            assert_eq!(
                read.slots.uses, index.slots.uses,
                "seed {seed}: after the cache"
            );
            assert_eq!(
                read.slots.foreign_uses, index.slots.foreign_uses,
                "seed {seed}"
            );
            assert_counts_match(&read, usize::MAX);
            assert_eq!(
                serde_json::to_value(&read).unwrap(),
                serde_json::to_value(&index).unwrap(),
                "seed {seed}: the cache reads back whole"
            );
        }
    }

    #[test]
    fn maps_and_sets_built_at_once_read_as_inserted_ones() {
        // Out of order and with repeated keys (a cache never holds them, but what is
        // read is what inserting would give): the last of equal keys wins.
        let pairs: Vec<(u64, u32)> = vec![(5, 1), (2, 2), (5, 3), (9, 4), (2, 5)];
        let encoded = postcard::to_stdvec(&pairs).unwrap();
        let mut de = postcard::Deserializer::from_bytes(&encoded);
        let built: BTreeMap<u64, u32> = bulk::map(&mut de).unwrap();
        let inserted: BTreeMap<u64, u32> = pairs.iter().copied().collect();
        assert_eq!(built, inserted);
        assert_eq!(built, BTreeMap::from([(2, 5), (5, 3), (9, 4)]));

        let items: Vec<u64> = vec![7, 3, 7, 1];
        let encoded = postcard::to_stdvec(&items).unwrap();
        let mut de = postcard::Deserializer::from_bytes(&encoded);
        let built: BTreeSet<u64> = bulk::set(&mut de).unwrap();
        assert_eq!(built, BTreeSet::from([1, 3, 7]));

        // A length that claims more than there is fails, without reserving it.
        let mut lying = postcard::to_stdvec(&u32::MAX).unwrap();
        lying.extend_from_slice(&[1, 2]);
        let mut de = postcard::Deserializer::from_bytes(&lying);
        assert!(bulk::map::<_, u64, u64>(&mut de).is_err());
    }
}
