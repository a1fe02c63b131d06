//! Records: the sealed JSON that says what a channel holds. The layout and the rules
//! are specified in the [parent module's docs](super); this module is their one
//! implementation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::checkpoint::CheckpointStamp;
use super::chunk::{ChunkKind, DataKey, NONCE_PREFIX_LEN};
use super::{
    FORMAT_VERSION, FileId, FormatError, MAX_SYMLINK_BYTES, RECORD_MAGIC, damaged, validate_path,
};
use crate::crypto::{self, CryptoError, KEY_ID_LEN, Key, KeyId, NONCE_LEN, TAG_LEN};
use crate::store::Id;

/// Bytes of the record envelope header (magic, version, cipher, key id).
const RECORD_HEADER_LEN: usize = 4 + 1 + 1 + KEY_ID_LEN;
/// Bytes of an envelope's header (a record's or a checkpoint's).
pub const ENVELOPE_HEADER_LEN: usize = RECORD_HEADER_LEN;

/// The key id in the header of an envelope with `magic` (zero: unsigned), or `None` if
/// `header` isn't one.
pub fn envelope_key_id(header: &[u8], magic: [u8; 4]) -> Option<KeyId> {
    if header.len() < RECORD_HEADER_LEN || header[0..4] != magic {
        return None;
    }
    let mut id = KeyId::default();
    id.0.copy_from_slice(&header[6..RECORD_HEADER_LEN]);
    Some(id)
}
const CIPHER_NONE: u8 = 0;
const CIPHER_AES_256_GCM: u8 = 1;

/// Where a chunk is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChunkLocation {
    /// An attachment of another message, by ids; `channel` is `Some` when that message
    /// is in another channel than the record (a file moved across channels).
    Stored {
        channel: Option<Id>,
        message: Id,
        attachment: Id,
    },
    /// An attachment of the record's own message, by file name.
    Attached { filename: String },
}

/// One chunk of a file, as a record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireChunk", into = "WireChunk")]
pub struct ChunkRef {
    pub location: ChunkLocation,
    /// Plaintext length.
    pub len: u64,
    /// SHA-256 of the plaintext (plain files only).
    pub sha256: Option<[u8; 32]>,
    /// The AES-GCM tag of the sealed chunk (encrypted files): pins this exact sealing, so
    /// an older chunk of the same file and index can't stand in for it.
    pub tag: Option<[u8; TAG_LEN]>,
    /// The key that sealed the chunk, when it isn't the key that sealed the record (`k`,
    /// version 2): a whole chunk of a file written under an older key and renamed under
    /// a newer one.
    pub key: Option<KeyId>,
    /// The nonce prefix of a segmented chunk (`p`, version 3): pins this exact sealing,
    /// and is what a reader derives the segments' nonces from.
    pub prefix: Option<[u8; NONCE_PREFIX_LEN]>,
    /// Where the sealed chunk starts in its attachment, when that attachment is a
    /// *pack* holding the sealed chunks of several files (`o`, version 4). `None`: the
    /// chunk is the whole attachment.
    pub packed_at: Option<u64>,
}

impl ChunkRef {
    /// How the chunk is sealed, which says how to read it.
    pub fn kind(&self, encrypted: bool) -> ChunkKind {
        ChunkKind::of(encrypted, self.prefix)
    }
}

#[derive(Serialize, Deserialize)]
struct WireChunk {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    f: Option<String>,
    n: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    h: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<KeyId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<u64>,
}

impl TryFrom<WireChunk> for ChunkRef {
    type Error = String;
    fn try_from(wire: WireChunk) -> Result<Self, String> {
        let id = |text: &str| text.parse::<Id>().map_err(|_| format!("bad id '{text}'"));
        let location = match (wire.c, wire.m, wire.a, wire.f) {
            (c, Some(m), Some(a), None) => ChunkLocation::Stored {
                channel: c.as_deref().map(id).transpose()?,
                message: id(&m)?,
                attachment: id(&a)?,
            },
            (None, None, None, Some(filename)) => ChunkLocation::Attached { filename },
            _ => return Err("a chunk names either m and a (and maybe c), or f".into()),
        };
        let sha256 = match wire.h {
            Some(hex) => Some(crypto::decode_hex::<32>(&hex).ok_or("bad chunk checksum")?),
            None => None,
        };
        let tag = match wire.t {
            Some(hex) => Some(crypto::decode_hex::<TAG_LEN>(&hex).ok_or("bad chunk tag")?),
            None => None,
        };
        let prefix = match wire.p {
            Some(hex) => {
                Some(crypto::decode_hex::<NONCE_PREFIX_LEN>(&hex).ok_or("bad chunk nonce prefix")?)
            }
            None => None,
        };
        Ok(ChunkRef {
            location,
            len: wire.n,
            sha256,
            tag,
            key: wire.k,
            prefix,
            packed_at: wire.o,
        })
    }
}

impl From<ChunkRef> for WireChunk {
    fn from(chunk: ChunkRef) -> WireChunk {
        let (c, m, a, f) = match chunk.location {
            ChunkLocation::Stored {
                channel,
                message,
                attachment,
            } => (
                channel.map(|c| c.to_string()),
                Some(message.to_string()),
                Some(attachment.to_string()),
                None,
            ),
            ChunkLocation::Attached { filename } => (None, None, None, Some(filename)),
        };
        WireChunk {
            c,
            m,
            a,
            f,
            n: chunk.len,
            h: chunk.sha256.map(|h| crypto::encode_hex(&h)),
            t: chunk.tag.map(|t| crypto::encode_hex(&t)),
            k: chunk.key,
            p: chunk.prefix.map(|p| crypto::encode_hex(&p)),
            o: chunk.packed_at,
        }
    }
}

/// A file version: what a `put` operation says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileManifest {
    pub path: String,
    pub id: FileId,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub encrypted: bool,
    pub chunks: Vec<ChunkRef>,
    /// The file's data key (`dk`, version 3), which its segmented chunks are sealed
    /// under. Only ever in an encrypted record.
    #[serde(rename = "dk", default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<DataKey>,
    /// A symbolic link's target (`symlink`, version 7): then the entry is a link, with
    /// no chunks, size 0 and no data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink: Option<String>,
    /// A special file (`special`, version 7): a FIFO, a socket or a device node, with
    /// no chunks, size 0 and no data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub special: Option<Special>,
    /// The file this is one name of, when it has several (`node`, version 8; hard
    /// links): every live path whose put names the same node is a name of one file.
    /// 16 random bytes, made when the file gets its second name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<FileId>,
    /// Owner, other times and extended attributes (version 8).
    #[serde(flatten)]
    pub meta: Meta,
}

/// What a file or folder has beside its mode and modification time (version 8): its
/// owner, its access and change times, and its extended attributes. Every field may
/// be absent: then the entry belongs to whoever mounts, its access and change times are
/// its modification time, and it has no extended attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The owner's user id, when it isn't the mounting user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The group id, when it isn't the mounting user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// The access time set by `utimensat` or `touch -a` (reads don't change it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime_ns: Option<i64>,
    /// When the entry last changed (its contents, or anything this record says of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime_ns: Option<i64>,
    /// Extended attributes, name to value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, XattrValue>,
}

/// Longest name of an extended attribute (Linux's `XATTR_NAME_MAX`).
pub const MAX_XATTR_NAME_BYTES: usize = 255;
/// Largest value of an extended attribute (Linux's `XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE_BYTES: usize = 64 * 1024;
/// Most bytes of names and values of all the extended attributes of one entry.
pub const MAX_XATTR_TOTAL_BYTES: usize = 128 * 1024;
/// The namespaces an extended attribute's name may start with.
pub const XATTR_NAMESPACES: [&str; 4] = ["user.", "trusted.", "security.", "system."];

/// An extended attribute's value: bytes, as unpadded base64url in a record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XattrValue(pub Vec<u8>);

impl Serialize for XattrValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        if serializer.is_human_readable() {
            let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.0);
            serializer.serialize_str(&text)
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for XattrValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine;
        if !deserializer.is_human_readable() {
            return Vec::<u8>::deserialize(deserializer).map(XattrValue);
        }
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map(XattrValue)
            .map_err(|_| serde::de::Error::custom("an xattr value is unpadded base64url"))
    }
}

impl Meta {
    /// Whether it says nothing (as every entry before version 8).
    pub fn is_empty(&self) -> bool {
        *self == Meta::default()
    }

    /// What is wrong with it, if anything: anything at all before version 8, an owner
    /// of -1 (`chown`'s "leave it"), or extended attributes out of bounds.
    pub fn problem(&self, version: u8) -> Option<&'static str> {
        if self.is_empty() {
            return None;
        }
        if version < 8 {
            return Some("an owner, times or extended attributes before version 8");
        }
        if self.uid == Some(u32::MAX) || self.gid == Some(u32::MAX) {
            return Some("an owner of -1");
        }
        let mut total = 0usize;
        for (name, value) in &self.xattrs {
            if let Some(why) = xattr_name_problem(name) {
                return Some(why);
            }
            if value.0.len() > MAX_XATTR_VALUE_BYTES {
                return Some("an extended attribute's value is over 64 KiB");
            }
            total += name.len() + value.0.len();
        }
        if total > MAX_XATTR_TOTAL_BYTES {
            return Some("extended attributes over 128 KiB in all");
        }
        None
    }
}

/// What is wrong with the name of an extended attribute, if anything: it must be of a
/// known namespace, at most 255 bytes, with something after the namespace and no NUL.
pub fn xattr_name_problem(name: &str) -> Option<&'static str> {
    if name.len() > MAX_XATTR_NAME_BYTES {
        Some("an extended attribute's name is over 255 bytes")
    } else if name.contains('\0') {
        Some("an extended attribute's name contains NUL")
    } else if !XATTR_NAMESPACES
        .iter()
        .any(|ns| name.len() > ns.len() && name.starts_with(ns))
    {
        Some("an extended attribute's name is of no known namespace")
    } else {
        None
    }
}

/// What a special file is (`special`, version 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Special {
    #[serde(rename = "type")]
    pub kind: SpecialKind,
    /// A device's number (`st_rdev`); 0 for a FIFO or a socket.
    #[serde(default)]
    pub rdev: u64,
}

/// The type of a special file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecialKind {
    Fifo,
    Socket,
    /// A character device.
    Char,
    /// A block device.
    Block,
}

impl FileManifest {
    /// A symbolic link (version 7) has a target of 1 to [`MAX_SYMLINK_BYTES`] bytes
    /// without NUL, and nothing of a file's contents; a special file (version 7)
    /// neither, nor a target, and a device number only if it is a device.
    fn validate_empty_node(&self, version: u8) -> Result<(), FormatError> {
        match self.empty_node_problem(version) {
            Some(why) => Err(damaged("record", format!("'{}': {why}", self.path))),
            None => Ok(()),
        }
    }

    /// What is wrong with a link or a special file, if anything.
    fn empty_node_problem(&self, version: u8) -> Option<&'static str> {
        let has_contents = self.size != 0 || !self.chunks.is_empty() || self.data_key.is_some();
        match (&self.symlink, self.special) {
            (None, None) => None,
            _ if version < 7 => Some("a link or special file in a record older than version 7"),
            (Some(_), Some(_)) => Some("both a symbolic link and a special file"),
            _ if has_contents => Some("a symbolic link or special file with contents"),
            (Some(target), None) if target.is_empty() || target.len() > MAX_SYMLINK_BYTES => {
                Some("a symbolic link's target is empty or longer than 4095 bytes")
            }
            (Some(target), None) if target.contains('\0') => {
                Some("a symbolic link's target contains a NUL byte")
            }
            (None, Some(special))
                if special.rdev != 0
                    && matches!(special.kind, SpecialKind::Fifo | SpecialKind::Socket) =>
            {
                Some("a device number on a FIFO or socket")
            }
            _ => None,
        }
    }

    /// Segmented chunks (version 3) are sealed under the file's data key: an encrypted
    /// file that has them carries one, a plain file has neither.
    fn validate_keys(&self, version: u8) -> Result<(), FormatError> {
        let segmented = self.chunks.iter().any(|c| c.prefix.is_some());
        let problem = if version < 3 && (segmented || self.data_key.is_some()) {
            Some("segmented chunks or a data key in a record older than version 3")
        } else if !self.encrypted && (segmented || self.data_key.is_some()) {
            Some("a plain file with segmented chunks or a data key")
        } else if segmented && self.data_key.is_none() {
            Some("segmented chunks without a data key")
        } else {
            None
        };
        match problem {
            Some(why) => Err(damaged("record", format!("'{}': {why}", self.path))),
            None => Ok(()),
        }
    }
}

/// A folder that exists on its own: what a `mkdir` operation says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirManifest {
    pub path: String,
    pub mtime_ns: i64,
    pub mode: u32,
    /// Owner, other times and extended attributes (version 8).
    #[serde(flatten)]
    pub meta: Meta,
}

/// One operation of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Put(FileManifest),
    Mkdir(DirManifest),
    Del {
        path: String,
        /// Set when the file moved to another channel, whose record now uses its chunks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        moved: Option<Moved>,
    },
    /// The file at `path` is being moved to another channel (version 2): its messages
    /// are used there too from now on. Changes nothing at `path`.
    Link {
        path: String,
        moved: Moved,
    },
    /// The put with stamp `s` moved its chunks (version 6): the same file version,
    /// with the chunk locations of `file`, holding the path with that put's stamp (see
    /// the module docs, Replay). What `gc` posts when it repacks a record message.
    Relocate(Relocation),
}

/// A `relocate` operation: a put's stamp and the file it put, with its chunks where
/// they are now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relocation {
    /// The stamp of the put it relocates: that record's `seq` (0 for version 1), its
    /// message and the put's position in it.
    pub s: CheckpointStamp,
    /// The file as that put put it (same path, id, size, times, mode, data key), with
    /// the chunks' new locations.
    #[serde(flatten)]
    pub file: FileManifest,
}

/// Where a file deleted by a move across channels went, and which messages its chunks
/// are in (they stay: the destination's record points at them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    /// The destination channel.
    #[serde(with = "id_string")]
    pub to: Id,
    /// The messages holding the file's chunks, `(channel, message)`.
    #[serde(with = "id_pairs")]
    pub messages: Vec<(Id, Id)>,
}

/// Ids as decimal strings, like Discord's.
pub(super) mod id_string {
    use super::Id;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Id, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&id.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Id, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse()
            .map_err(|_| serde::de::Error::custom(format!("bad id '{text}'")))
    }
}

/// `(channel, message)` pairs as `"<channel>/<message>"` strings.
pub(super) mod id_pairs {
    use super::Id;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(pairs: &[(Id, Id)], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(pairs.iter().map(|(c, m)| format!("{c}/{m}")))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(Id, Id)>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|text| {
                text.split_once('/')
                    .and_then(|(c, m)| Some((c.parse().ok()?, m.parse().ok()?)))
                    .ok_or_else(|| serde::de::Error::custom(format!("bad message '{text}'")))
            })
            .collect()
    }
}

impl Op {
    /// The file an operation puts there: a `put`'s, or a `relocate`'s.
    pub fn file(&self) -> Option<&FileManifest> {
        match self {
            Op::Put(file) => Some(file),
            Op::Relocate(relocation) => Some(&relocation.file),
            _ => None,
        }
    }

    /// The path the operation is about.
    pub fn path(&self) -> &str {
        match self {
            Op::Put(file) => &file.path,
            Op::Relocate(relocation) => &relocation.file.path,
            Op::Mkdir(dir) => &dir.path,
            Op::Del { path, .. } | Op::Link { path, .. } => path,
        }
    }
}

/// A record: operations applied together, atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The channel's Lamport clock when the record was written (see the module docs);
    /// 0 in version-1 records, which have none.
    #[serde(default)]
    pub seq: u64,
    pub ops: Vec<Op>,
}

/// Largest plaintext a chunk may claim to hold. Discord's largest attachment is far
/// smaller; a record claiming more is damaged, so no length read from the store can
/// make a reader allocate without bound.
pub const MAX_CHUNK_LEN: u64 = 1 << 30;
/// The largest offset of a packed chunk in its attachment (`o`) a reader accepts:
/// bounded like [`MAX_CHUNK_LEN`], so that offset plus length can't overflow.
pub const MAX_PACK_OFFSET: u64 = 1 << 40;

impl Record {
    pub(super) fn validate(&self, version: u8) -> Result<(), FormatError> {
        validate_ops(&self.ops, version)
    }
}

/// The checks of a record's operations, made in a record of `version` (and of the
/// paths of a checkpoint, which hold the same operations).
pub(super) fn validate_ops<'a>(
    ops: impl IntoIterator<Item = &'a Op>,
    version: u8,
) -> Result<(), FormatError> {
    for op in ops {
        validate_path(op.path())?;
        if let Op::Relocate(relocation) = op {
            let problem = if version < 6 {
                Some("a relocation in a record older than version 6")
            } else if relocation.s.m == 0 {
                Some("a relocation of no message")
            } else {
                None
            };
            if let Some(why) = problem {
                return Err(damaged("record", format!("'{}': {why}", op.path())));
            }
        }
        if let Some(file) = op.file() {
            let mut total = 0u64;
            for chunk in &file.chunks {
                if version < 4 && chunk.packed_at.is_some() {
                    return Err(damaged(
                        "record",
                        format!(
                            "'{}': a packed chunk in a record older than version 4",
                            file.path
                        ),
                    ));
                }
                if chunk.packed_at.is_some_and(|at| at > MAX_PACK_OFFSET) {
                    return Err(damaged(
                        "record",
                        format!("'{}': a chunk packed past the largest offset", file.path),
                    ));
                }
                if chunk.len > MAX_CHUNK_LEN {
                    return Err(damaged(
                        "record",
                        format!("'{}': a chunk claims {} bytes", file.path, chunk.len),
                    ));
                }
                total = total.checked_add(chunk.len).ok_or_else(|| {
                    damaged("record", format!("'{}': chunk sizes overflow", file.path))
                })?;
            }
            if total != file.size {
                return Err(damaged(
                    "record",
                    format!(
                        "'{}': chunks add up to {total} bytes, size says {}",
                        file.path, file.size
                    ),
                ));
            }
            if !file.encrypted && file.chunks.iter().any(|c| c.sha256.is_none()) {
                return Err(damaged(
                    "record",
                    format!("'{}': a plain chunk has no checksum", file.path),
                ));
            }
            file.validate_keys(version)?;
            file.validate_empty_node(version)?;
            if file.node.is_some() && version < 8 {
                return Err(damaged(
                    "record",
                    format!("'{}': a hard link before version 8", file.path),
                ));
            }
            validate_meta(&file.path, &file.meta, version)?;
        }
        if let Op::Mkdir(dir) = op {
            validate_meta(&dir.path, &dir.meta, version)?;
        }
    }
    Ok(())
}

/// Refuses a record whose owner, times or extended attributes of `path` are wrong.
fn validate_meta(path: &str, meta: &Meta, version: u8) -> Result<(), FormatError> {
    match meta.problem(version) {
        Some(why) => Err(damaged("record", format!("'{path}': {why}"))),
        None => Ok(()),
    }
}

/// How a record is protected when sealed.
#[derive(Clone, Copy, Debug)]
pub enum RecordSeal<'a> {
    /// Encrypted and authenticated under the key (cipher 1).
    Encrypted(&'a Key),
    /// Readable by anyone, authenticated under the key's record MAC key (cipher 0,
    /// signed): for records that only put plain files.
    Signed(&'a Key),
    /// Readable by anyone and unauthenticated (cipher 0, key id zero): what a writer
    /// without a key can do.
    Unsigned,
}

/// Label of the record MAC key (see the module docs).
const RECORD_MAC_LABEL: &[u8] = b"dcloud-fs record mac v2\0";

/// The associated data of a version-2 record: its header and its channel, then (for
/// signed plain records) the JSON.
fn record_aad(header: &[u8], channel: Id, json: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 8 + json.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(&channel.to_le_bytes());
    aad.extend_from_slice(json);
    aad
}

/// Seals a record into its envelope (the current version), bound to `channel`.
pub fn seal_record(
    record: &Record,
    seal: RecordSeal<'_>,
    channel: Id,
) -> Result<Vec<u8>, FormatError> {
    record.validate(FORMAT_VERSION)?;
    let carries_keys = record
        .ops
        .iter()
        .any(|op| op.file().is_some_and(|file| file.data_key.is_some()));
    if carries_keys && !matches!(seal, RecordSeal::Encrypted(_)) {
        return Err(damaged(
            "record",
            "a record that carries a data key must be encrypted",
        ));
    }
    let json = serde_json::to_vec(record).expect("records serialize");
    seal_envelope(RECORD_MAGIC, json, seal, channel)
}

/// Seals `json` into an envelope of the current version with `magic` (a record's, or a
/// checkpoint's), bound to `channel`: the layout and the associated data are the
/// record envelope's (see the module docs).
pub(super) fn seal_envelope(
    magic: [u8; 4],
    json: Vec<u8>,
    seal: RecordSeal<'_>,
    channel: Id,
) -> Result<Vec<u8>, FormatError> {
    let mut envelope = Vec::with_capacity(RECORD_HEADER_LEN + NONCE_LEN + json.len() + TAG_LEN);
    envelope.extend_from_slice(&magic);
    envelope.push(FORMAT_VERSION);
    match seal {
        RecordSeal::Unsigned => {
            envelope.push(CIPHER_NONE);
            envelope.extend_from_slice(&[0u8; KEY_ID_LEN]);
            envelope.extend_from_slice(&json);
        }
        RecordSeal::Signed(key) => {
            envelope.push(CIPHER_NONE);
            envelope.extend_from_slice(&key.id().0);
            let nonce = crypto::random_nonce()?;
            let aad = record_aad(&envelope, channel, &json);
            let tag = key
                .derive(RECORD_MAC_LABEL)
                .seal_detached(&nonce, &aad, &mut [])?;
            envelope.extend_from_slice(&nonce);
            envelope.extend_from_slice(&json);
            envelope.extend_from_slice(&tag);
        }
        RecordSeal::Encrypted(key) => {
            envelope.push(CIPHER_AES_256_GCM);
            envelope.extend_from_slice(&key.id().0);
            let nonce = crypto::random_nonce()?;
            let aad = record_aad(&envelope, channel, &[]);
            envelope.extend_from_slice(&nonce);
            let body_at = envelope.len();
            envelope.extend_from_slice(&json);
            let tag = key.seal_detached(&nonce, &aad, &mut envelope[body_at..])?;
            envelope.extend_from_slice(&tag);
        }
    }
    Ok(envelope)
}

/// A record as opened, with what vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedRecord {
    pub record: Record,
    /// The envelope's version (1, 2 or 3).
    pub version: u8,
    /// The loaded key authenticated it: sealed by it, or (version 2) signed by it.
    /// Plain records read without a key, and version-1 plain records, are not.
    pub authenticated: bool,
    /// The key that sealed it (cipher 1), which also sealed the chunks it puts unless
    /// they say otherwise (`k`).
    pub sealed_by: Option<KeyId>,
}

/// A record body's parts: nonce, payload, tag.
type SealedParts<'a> = ([u8; NONCE_LEN], &'a [u8], [u8; TAG_LEN]);

/// Splits `nonce ‖ payload ‖ tag`.
fn split_sealed<'a>(body: &'a [u8], what: &'static str) -> Result<SealedParts<'a>, FormatError> {
    if body.len() < NONCE_LEN + TAG_LEN {
        return Err(damaged(what, "truncated"));
    }
    let (nonce, rest) = body.split_at(NONCE_LEN);
    let (payload, tag) = rest.split_at(rest.len() - TAG_LEN);
    Ok((
        nonce.try_into().expect("nonce length"),
        payload,
        tag.try_into().expect("tag length"),
    ))
}

/// The key a record names must be the one loaded.
fn check_key(key: Option<&Key>, written: KeyId) -> Result<&Key, FormatError> {
    let key = key.ok_or(CryptoError::NoKey { written })?;
    key.for_id(written).ok_or_else(|| {
        CryptoError::WrongKey {
            written,
            have: key.id(),
        }
        .into()
    })
}

/// Opens a record envelope of any version, found in `channel`. A record sealed with
/// another key is [`CryptoError::WrongKey`], one sealed while no key is loaded
/// [`CryptoError::NoKey`]; so is a plain record signed by another key while a key is
/// loaded (that key can't vouch for it). Plain records opened without a key, and
/// unsigned ones, come back with `authenticated: false`: which of those count is the
/// reader's policy (see the module docs).
pub fn open_record(
    envelope: &[u8],
    key: Option<&Key>,
    channel: Id,
) -> Result<OpenedRecord, FormatError> {
    let opened = open_envelope(RECORD_MAGIC, "record", envelope, key, channel)?;
    let (json, version, authenticated, sealed_by) = (
        opened.json,
        opened.version,
        opened.authenticated,
        opened.sealed_by,
    );
    let mut record: Record =
        serde_json::from_slice(&json).map_err(|e| damaged("record", e.to_string()))?;
    record.validate(version)?;
    if version == 1 {
        record.seq = 0; // version 1 has no seq: whatever the JSON says means nothing
    } else if record.seq == 0 {
        return Err(damaged("record", "no seq"));
    }
    Ok(OpenedRecord {
        record,
        version,
        authenticated,
        sealed_by,
    })
}

/// An envelope's payload as opened, with what vouches for it.
pub(super) struct OpenedEnvelope {
    pub json: Vec<u8>,
    pub version: u8,
    pub authenticated: bool,
    pub sealed_by: Option<KeyId>,
}

/// Opens an envelope with `magic` of any version (`what` it is, for errors): the
/// record envelope's rules (see [`open_record`]).
pub(super) fn open_envelope(
    magic: [u8; 4],
    what: &'static str,
    envelope: &[u8],
    key: Option<&Key>,
    channel: Id,
) -> Result<OpenedEnvelope, FormatError> {
    if envelope.len() < RECORD_HEADER_LEN || envelope[0..4] != magic {
        return Err(FormatError::NotOurs(what));
    }
    let version = envelope[4];
    if version == 0 || version > FORMAT_VERSION {
        return Err(FormatError::NewerVersion(version));
    }
    let header = &envelope[..RECORD_HEADER_LEN];
    let body = &envelope[RECORD_HEADER_LEN..];
    let mut written = KeyId::default();
    written.0.copy_from_slice(&envelope[6..RECORD_HEADER_LEN]);
    let unsigned = written == KeyId::default();
    let sealed_by = (envelope[5] == CIPHER_AES_256_GCM).then_some(written);
    let (json, authenticated) = match (envelope[5], version) {
        (CIPHER_NONE, 1) => (body.to_vec(), false),
        (CIPHER_NONE, _) if unsigned => (body.to_vec(), false),
        (CIPHER_NONE, _) if key.is_none() => (split_sealed(body, what)?.1.to_vec(), false),
        (CIPHER_NONE, _) => {
            let key = check_key(key, written)?;
            let (nonce, json, tag) = split_sealed(body, what)?;
            key.derive(RECORD_MAC_LABEL)
                .open_detached(&nonce, &record_aad(header, channel, json), &mut [], &tag)
                .map_err(|_| damaged(what, "failed authentication"))?;
            (json.to_vec(), true)
        }
        (CIPHER_AES_256_GCM, _) => {
            let key = check_key(key, written)?;
            let (nonce, ciphertext, tag) = split_sealed(body, what)?;
            let aad = if version == 1 {
                header.to_vec()
            } else {
                record_aad(header, channel, &[])
            };
            let mut json = ciphertext.to_vec();
            key.open_detached(&nonce, &aad, &mut json, &tag)
                .map_err(|_| damaged(what, "failed authentication"))?;
            (json, true)
        }
        (other, _) => return Err(damaged(what, format!("unknown cipher {other}"))),
    };
    Ok(OpenedEnvelope {
        json,
        version,
        authenticated,
        sealed_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{
        CONTENT_PREFIX, ChunkBuffer, DATA_CONTENT, MessageKind, RECORD_ATTACHMENT, SEGMENT_LEN,
        Sealing, classify, data_content, open_chunk, record_message_parts,
    };
    use crate::store::Limits;
    const CHANNEL: Id = 77;

    /// A version-1 envelope, as dcloud-fs wrote them before version 2.
    fn seal_v1(record: &Record, key: Option<&Key>) -> Vec<u8> {
        let json = serde_json::to_vec(&Record {
            seq: 0,
            ops: record.ops.clone(),
        })
        .unwrap();
        let mut envelope = RECORD_MAGIC.to_vec();
        envelope.push(1);
        match key {
            None => {
                envelope.push(CIPHER_NONE);
                envelope.extend_from_slice(&[0u8; KEY_ID_LEN]);
                envelope.extend_from_slice(&json);
            }
            Some(key) => {
                envelope.push(CIPHER_AES_256_GCM);
                envelope.extend_from_slice(&key.id().0);
                let nonce = crypto::random_nonce().unwrap();
                envelope.extend_from_slice(&nonce);
                let mut body = json;
                let tag = key
                    .seal_detached(&nonce, &envelope[..RECORD_HEADER_LEN], &mut body)
                    .unwrap();
                envelope.extend_from_slice(&body);
                envelope.extend_from_slice(&tag);
            }
        }
        envelope
    }

    fn sample_record() -> Record {
        Record {
            seq: 5,
            ops: vec![
                Op::Put(FileManifest {
                    path: "photos/2024/a b ü.jpg".into(),
                    id: FileId([9; 16]),
                    size: 15,
                    mtime_ns: -5,
                    mode: 0o644,
                    encrypted: true,
                    chunks: vec![
                        ChunkRef {
                            location: ChunkLocation::Stored {
                                channel: Some(7),
                                message: u64::MAX,
                                attachment: 1,
                            },
                            len: 10,
                            sha256: None,
                            tag: Some([3; 16]),
                            key: Some(KeyId([4; KEY_ID_LEN])),
                            prefix: None,
                            packed_at: None,
                        },
                        ChunkRef {
                            location: ChunkLocation::Attached {
                                filename: "c1.bin".into(),
                            },
                            len: 5,
                            sha256: None,
                            tag: None,
                            key: None,
                            prefix: None,
                            packed_at: None,
                        },
                    ],
                    data_key: None,
                    symlink: None,
                    special: None,
                    node: None,
                    meta: Default::default(),
                }),
                Op::Mkdir(DirManifest {
                    path: "empty".into(),
                    mtime_ns: 1,
                    mode: 0o755,
                    meta: Default::default(),
                }),
                Op::Del {
                    path: "old".into(),
                    moved: None,
                },
                Op::Del {
                    path: "gone".into(),
                    moved: Some(Moved {
                        to: 8,
                        messages: vec![(7, 9), (8, u64::MAX)],
                    }),
                },
            ],
        }
    }

    fn opened(record: &Record, version: u8, authenticated: bool) -> (Record, u8, bool) {
        (record.clone(), version, authenticated)
    }

    /// What a test compares of an opened record (who sealed it is checked on its own).
    fn summary(opened: OpenedRecord) -> (Record, u8, bool) {
        (opened.record, opened.version, opened.authenticated)
    }

    #[test]
    fn a_relocation_is_a_put_with_the_stamp_it_relocates_and_needs_version_6() {
        let key = Key::generate().unwrap();
        let Op::Put(file) = sample_record().ops[0].clone() else {
            unreachable!()
        };
        let record = Record {
            seq: 9,
            ops: vec![Op::Relocate(Relocation {
                s: CheckpointStamp {
                    seq: 5,
                    m: 1234,
                    i: 2,
                },
                file,
            })],
        };
        // The layout the module docs give: a put's fields, flat, and `s`.
        let json = serde_json::to_value(&record).unwrap();
        let op = &json["ops"][0];
        assert_eq!(op["op"], "relocate");
        assert_eq!(op["s"], serde_json::json!({"seq": 5, "m": "1234", "i": 2}));
        assert_eq!(op["path"], "photos/2024/a b ü.jpg");
        assert_eq!(op["chunks"][1]["f"], "c1.bin");
        let envelope = seal_record(&record, RecordSeal::Encrypted(&key), CHANNEL).unwrap();
        assert_eq!(envelope[4], FORMAT_VERSION);
        let opened = open_record(&envelope, Some(&key), CHANNEL).unwrap();
        assert_eq!(opened.record, record);
        // A record of version 5 can't hold one.
        assert!(record.validate(5).is_err());
        assert!(record.validate(6).is_ok());
    }

    #[test]
    fn a_symlink_is_a_put_with_a_target_and_no_contents_and_needs_version_7() {
        let key = Key::generate().unwrap();
        let link = FileManifest {
            path: "docs/latest".into(),
            id: FileId([3; 16]),
            size: 0,
            mtime_ns: 7,
            mode: 0o777,
            encrypted: true,
            chunks: Vec::new(),
            data_key: None,
            symlink: Some("../releases/v2.tar".into()),
            special: None,
            node: None,
            meta: Default::default(),
        };
        let record = Record {
            seq: 3,
            ops: vec![Op::Put(link.clone())],
        };
        // The layout the module docs give.
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["ops"][0]["symlink"], "../releases/v2.tar");
        assert_eq!(json["ops"][0]["chunks"], serde_json::json!([]));
        let envelope = seal_record(&record, RecordSeal::Encrypted(&key), CHANNEL).unwrap();
        assert!(!envelope.windows(8).any(|w| w == b"releases"), "sealed");
        assert_eq!(
            open_record(&envelope, Some(&key), CHANNEL).unwrap().record,
            record
        );
        assert!(record.validate(6).is_err(), "a link before version 7");
        // A file without a target says nothing of links.
        let json = serde_json::to_value(sample_record()).unwrap();
        assert!(json["ops"][0].get("symlink").is_none());
        // A link has no contents, and a target of 1 to 4095 bytes without NUL.
        let broken = |change: &dyn Fn(&mut FileManifest)| {
            let mut file = link.clone();
            change(&mut file);
            Record {
                seq: 3,
                ops: vec![Op::Put(file)],
            }
            .validate(FORMAT_VERSION)
            .is_err()
        };
        assert!(broken(&|f| f.symlink = Some(String::new())));
        assert!(broken(&|f| f.symlink = Some("x".repeat(4096))));
        assert!(broken(&|f| f.symlink = Some("a\0b".into())));
        assert!(broken(&|f| f.data_key = Some(DataKey([1; 32]))));
        assert!(broken(&|f| {
            f.size = 5;
            f.chunks = sample_record().ops[0].file().unwrap().chunks[1..].to_vec();
        }));
        assert!(!broken(&|f| f.symlink = Some("y".repeat(4095))));
    }

    #[test]
    fn a_special_file_is_a_put_with_its_type_and_no_contents_and_needs_version_7() {
        let device = FileManifest {
            path: "dev/null".into(),
            id: FileId([4; 16]),
            size: 0,
            mtime_ns: 7,
            mode: 0o666,
            encrypted: true,
            chunks: Vec::new(),
            data_key: None,
            symlink: None,
            special: Some(Special {
                kind: SpecialKind::Char,
                rdev: 259,
            }),
            node: None,
            meta: Default::default(),
        };
        let record = |file: FileManifest| Record {
            seq: 3,
            ops: vec![Op::Put(file)],
        };
        let json = serde_json::to_value(record(device.clone())).unwrap();
        assert_eq!(
            json["ops"][0]["special"],
            serde_json::json!({"type": "char", "rdev": 259})
        );
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, record(device.clone()));
        assert!(record(device.clone()).validate(7).is_ok());
        assert!(
            record(device.clone()).validate(6).is_err(),
            "before version 7"
        );
        let mut fifo = device.clone();
        fifo.special = Some(Special {
            kind: SpecialKind::Fifo,
            rdev: 0,
        });
        assert!(record(fifo.clone()).validate(7).is_ok());
        fifo.special = Some(Special {
            kind: SpecialKind::Fifo,
            rdev: 1,
        });
        assert!(
            record(fifo).validate(7).is_err(),
            "a FIFO with a device number"
        );
        let mut both = device.clone();
        both.symlink = Some("x".into());
        assert!(record(both).validate(7).is_err(), "a link and a device");
        let mut full = device;
        full.size = 5;
        full.chunks = sample_record().ops[0].file().unwrap().chunks[1..].to_vec();
        assert!(record(full).validate(7).is_err(), "a device with contents");
    }

    #[test]
    fn records_round_trip_sealed_signed_and_unsigned() {
        let key = Key::generate().unwrap();
        let record = sample_record();
        let envelope = seal_record(&record, RecordSeal::Encrypted(&key), CHANNEL).unwrap();
        assert!(!envelope.windows(6).any(|w| w == b"photos"));
        let sealed_by = open_record(&envelope, Some(&key), CHANNEL)
            .unwrap()
            .sealed_by;
        assert_eq!(sealed_by, Some(key.id()));
        assert_eq!(
            summary(open_record(&envelope, Some(&key), CHANNEL).unwrap()),
            opened(&record, FORMAT_VERSION, true)
        );

        let signed = seal_record(&record, RecordSeal::Signed(&key), CHANNEL).unwrap();
        assert!(
            signed.windows(6).any(|w| w == b"photos"),
            "signed stays readable"
        );
        assert_eq!(
            summary(open_record(&signed, Some(&key), CHANNEL).unwrap()),
            opened(&record, FORMAT_VERSION, true)
        );
        // Without the key it reads, unchecked.
        assert_eq!(
            summary(open_record(&signed, None, CHANNEL).unwrap()),
            opened(&record, FORMAT_VERSION, false)
        );

        let unsigned = seal_record(&record, RecordSeal::Unsigned, CHANNEL).unwrap();
        for reader in [None, Some(&key)] {
            assert_eq!(
                summary(open_record(&unsigned, reader, CHANNEL).unwrap()),
                opened(&record, FORMAT_VERSION, false)
            );
        }
    }

    #[test]
    fn a_record_opens_only_in_its_own_channel() {
        let key = Key::generate().unwrap();
        let record = sample_record();
        for seal in [RecordSeal::Encrypted(&key), RecordSeal::Signed(&key)] {
            let envelope = seal_record(&record, seal, CHANNEL).unwrap();
            assert!(matches!(
                open_record(&envelope, Some(&key), CHANNEL + 1),
                Err(FormatError::Damaged { .. })
            ));
        }
    }

    #[test]
    fn a_signed_record_changed_without_the_key_fails_authentication() {
        let key = Key::generate().unwrap();
        let envelope = seal_record(&sample_record(), RecordSeal::Signed(&key), CHANNEL).unwrap();
        let text = String::from_utf8_lossy(&envelope).into_owned();
        let at = text.find("\"mode\":420").unwrap();
        let mut forged = envelope.clone();
        forged[at + 8..at + 11].copy_from_slice(b"511");
        assert!(matches!(
            open_record(&forged, Some(&key), CHANNEL),
            Err(FormatError::Damaged { .. })
        ));
        // Signed by another key: that key can't vouch for it.
        let other = Key::generate().unwrap();
        assert!(matches!(
            open_record(&envelope, Some(&other), CHANNEL),
            Err(FormatError::Crypto(CryptoError::WrongKey { .. }))
        ));
    }

    #[test]
    fn version_1_records_still_open() {
        let key = Key::generate().unwrap();
        let mut record = sample_record();
        let sealed = seal_v1(&record, Some(&key));
        let plain = seal_v1(&record, None);
        record.seq = 0;
        // Version 1 doesn't bind the channel: any channel opens it.
        assert_eq!(
            summary(open_record(&sealed, Some(&key), CHANNEL + 9).unwrap()),
            opened(&record, 1, true)
        );
        assert_eq!(
            summary(open_record(&plain, Some(&key), CHANNEL).unwrap()),
            opened(&record, 1, false)
        );
    }

    #[test]
    fn overflowing_or_huge_sizes_are_damage() {
        let mut record = sample_record();
        if let Op::Put(file) = &mut record.ops[0] {
            file.chunks[0].len = u64::MAX;
            file.chunks[1].len = 16;
            file.size = 15; // u64::MAX + 16 wraps to 15
        }
        let json = serde_json::to_vec(&record).unwrap();
        let mut envelope = RECORD_MAGIC.to_vec();
        envelope.extend_from_slice(&[FORMAT_VERSION, CIPHER_NONE, 0, 0, 0, 0, 0, 0, 0, 0]);
        envelope.extend_from_slice(&json);
        let err = open_record(&envelope, None, CHANNEL).unwrap_err();
        assert!(err.to_string().contains("claims"), "{err}");
        if let Op::Put(file) = &mut record.ops[0] {
            file.chunks[0].len = MAX_CHUNK_LEN;
            file.chunks[1].len = u64::MAX - MAX_CHUNK_LEN + 1;
        }
        assert!(seal_record(&record, RecordSeal::Unsigned, CHANNEL).is_err());
    }

    #[test]
    fn wrong_or_missing_key_is_reported_with_key_ids() {
        let key = Key::generate().unwrap();
        let other = Key::generate().unwrap();
        let envelope = seal_record(&sample_record(), RecordSeal::Encrypted(&key), CHANNEL).unwrap();
        let err = open_record(&envelope, Some(&other), CHANNEL).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("written with key id {}", key.id())),
            "{text}"
        );
        assert!(text.contains(&format!("you have {}", other.id())), "{text}");
        assert!(matches!(
            open_record(&envelope, None, CHANNEL),
            Err(FormatError::Crypto(CryptoError::NoKey { .. }))
        ));
        let mut damaged_envelope = envelope.clone();
        let last = damaged_envelope.len() - 1;
        damaged_envelope[last] ^= 1;
        assert!(matches!(
            open_record(&damaged_envelope, Some(&key), CHANNEL),
            Err(FormatError::Damaged { .. })
        ));
        let mut newer = envelope;
        newer[4] = FORMAT_VERSION + 1;
        assert!(matches!(
            open_record(&newer, Some(&key), CHANNEL),
            Err(FormatError::NewerVersion(v)) if v == FORMAT_VERSION + 1
        ));
    }

    #[test]
    fn records_with_bad_paths_or_sizes_are_refused() {
        for path in ["", "/abs", "a//b", "a/../b", "./a", "trailing/", "nul\0"] {
            assert!(validate_path(path).is_err(), "{path:?}");
        }
        validate_path("ok/nested/päth with spaces").unwrap();
        let mut record = sample_record();
        if let Op::Put(file) = &mut record.ops[0] {
            file.size += 1;
        }
        assert!(seal_record(&record, RecordSeal::Unsigned, CHANNEL).is_err());
        let evil = br#"{"ops":[{"op":"del","path":"../../etc/passwd"}]}"#;
        let mut envelope = RECORD_MAGIC.to_vec();
        envelope.extend_from_slice(&[FORMAT_VERSION, CIPHER_NONE, 0, 0, 0, 0, 0, 0, 0, 0]);
        envelope.extend_from_slice(evil);
        assert!(matches!(
            open_record(&envelope, None, CHANNEL),
            Err(FormatError::InvalidPath { .. })
        ));
    }

    /// `sample_record` with its file as version 3 writes it: a data key, and its last
    /// chunk segmented.
    fn sample_v3_record() -> Record {
        let mut record = sample_record();
        if let Op::Put(file) = &mut record.ops[0] {
            file.data_key = Some(DataKey([5; 32]));
            file.chunks[1].prefix = Some([6; NONCE_PREFIX_LEN]);
        }
        record
    }

    #[test]
    fn data_keys_and_segmented_chunks_travel_only_in_encrypted_version_3_records() {
        let key = Key::generate().unwrap();
        let record = sample_v3_record();
        let envelope = seal_record(&record, RecordSeal::Encrypted(&key), CHANNEL).unwrap();
        assert_eq!(
            summary(open_record(&envelope, Some(&key), CHANNEL).unwrap()),
            opened(&record, FORMAT_VERSION, true)
        );
        // Never in a record anyone can read.
        for seal in [RecordSeal::Signed(&key), RecordSeal::Unsigned] {
            assert!(seal_record(&record, seal, CHANNEL).is_err());
        }
        // Not in a version-2 record (whose writers didn't have them), nor in a plain
        // file, nor a segmented chunk without a data key.
        let v2 = sealed_as_version(&record, &key, 2);
        assert!(open_record(&v2, Some(&key), CHANNEL).is_err());
        let v3 = sealed_as_version(&record, &key, 3);
        assert!(open_record(&v3, Some(&key), CHANNEL).is_ok());
        let mut plain = record.clone();
        if let Op::Put(file) = &mut plain.ops[0] {
            file.encrypted = false;
            file.chunks
                .iter_mut()
                .for_each(|c| c.sha256 = Some([1; 32]));
        }
        assert!(seal_record(&plain, RecordSeal::Encrypted(&key), CHANNEL).is_err());
        let mut keyless = record.clone();
        if let Op::Put(file) = &mut keyless.ops[0] {
            file.data_key = None;
        }
        assert!(seal_record(&keyless, RecordSeal::Encrypted(&key), CHANNEL).is_err());
    }

    /// `record` sealed under `key` as if by a writer of `version` (unchecked).
    fn sealed_as_version(record: &Record, key: &Key, version: u8) -> Vec<u8> {
        let mut envelope = RECORD_MAGIC.to_vec();
        envelope.extend_from_slice(&[version, CIPHER_AES_256_GCM]);
        envelope.extend_from_slice(&key.id().0);
        let nonce = crypto::random_nonce().unwrap();
        let aad = record_aad(&envelope, CHANNEL, &[]);
        let mut json = serde_json::to_vec(record).unwrap();
        let tag = key.seal_detached(&nonce, &aad, &mut json).unwrap();
        [envelope, nonce.to_vec(), json, tag.to_vec()].concat()
    }

    #[test]
    fn message_content_classifies_and_long_records_go_to_an_attachment() {
        let limits = Limits::default();
        let file = FileId([7; 16]);
        assert_eq!(classify(&data_content(file)), MessageKind::Data(Some(file)));
        assert_eq!(classify(DATA_CONTENT), MessageKind::Data(None));
        assert!(!matches!(classify("dcfs1 database"), MessageKind::Data(_)));
        assert_eq!(classify("hello everyone"), MessageKind::Other);
        assert_eq!(classify("dcfs1 !!!"), MessageKind::Other);
        let envelope = seal_record(&sample_record(), RecordSeal::Unsigned, CHANNEL).unwrap();
        let (content, attachment) = record_message_parts(envelope.clone(), &limits);
        assert!(attachment.is_none());
        assert_eq!(classify(&content), MessageKind::InlineRecord(envelope));

        let big = vec![0u8; 2000];
        let (content, attachment) = record_message_parts(big, &limits);
        assert_eq!(classify(&content), MessageKind::AttachedRecord);
        assert_eq!(attachment.unwrap().filename, RECORD_ATTACHMENT);
    }

    /// Mutation runs of the decoders: `DCLOUD_FUZZ_ITERATIONS` (default 3000, what CI
    /// runs) rounds, each mutating valid input, from `DCLOUD_FUZZ_SEED`. Run it longer by
    /// hand with, say, `DCLOUD_FUZZ_ITERATIONS=20000000 cargo test --lib mutated`.
    fn fuzz_iterations() -> u64 {
        std::env::var("DCLOUD_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000)
    }

    /// A small xorshift generator: the runs are repeatable from their seed.
    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed | 1;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// One mutation of `bytes`: a flipped bit, a cut, bytes inserted or appended, or a
    /// run of bytes overwritten with random (or with digits, to reach number parsing).
    pub(crate) fn mutate(bytes: &mut Vec<u8>, next: &mut impl FnMut() -> u64) {
        match next() % 5 {
            0 if !bytes.is_empty() => {
                let bit = next() as usize % (bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
            1 if !bytes.is_empty() => bytes.truncate(next() as usize % bytes.len()),
            2 => {
                let at = next() as usize % (bytes.len() + 1);
                for _ in 0..1 + next() % 8 {
                    bytes.insert(at, next() as u8);
                }
            }
            3 if !bytes.is_empty() => {
                let at = next() as usize % bytes.len();
                let digits = next() % 2 == 0;
                for byte in bytes.iter_mut().skip(at).take(1 + next() as usize % 24) {
                    *byte = if digits {
                        b'0' + (next() % 10) as u8
                    } else {
                        next() as u8
                    };
                }
            }
            _ => bytes.push(next() as u8),
        }
    }

    /// Every mutation of a sealed or signed envelope, or of a chunk, is refused with an
    /// error, never accepted; mutations of unsigned plain records and of their JSON
    /// (which no key covers) and random bytes never panic, and what opens is valid.
    #[test]
    fn mutated_or_random_input_is_refused_without_panicking() {
        let seed = std::env::var("DCLOUD_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x5eed);
        let mut next = xorshift(seed);
        let key = Key::generate().unwrap();
        let file = FileId::random().unwrap();
        let record = sample_record();
        let covered = [
            seal_record(&record, RecordSeal::Encrypted(&key), CHANNEL).unwrap(),
            seal_record(&record, RecordSeal::Signed(&key), CHANNEL).unwrap(),
            seal_v1(&record, Some(&key)),
        ];
        let unsigned = seal_record(&record, RecordSeal::Unsigned, CHANNEL).unwrap();
        let v1_plain = seal_v1(&record, None);
        let data_key = Key::generate().unwrap();
        let mut buffer = ChunkBuffer::new(
            2 * SEGMENT_LEN + 300,
            Sealing::Encrypted(&data_key),
            file,
            2,
        )
        .unwrap();
        buffer
            .extend_from_slice(&[9u8; 2 * SEGMENT_LEN + 300])
            .unwrap();
        let sealed = buffer.seal().unwrap();
        let chunk_ref = ChunkRef {
            location: ChunkLocation::Attached {
                filename: "c0.bin".into(),
            },
            len: sealed.plain_len,
            sha256: None,
            tag: None,
            key: None,
            prefix: sealed.prefix,
            packed_at: None,
        };
        let chunk = sealed.as_bytes().to_vec();
        for round in 0..fuzz_iterations() {
            let original = &covered[round as usize % covered.len()];
            let mut envelope = original.clone();
            mutate(&mut envelope, &mut next);
            // (A mutation may write back what was there: then nothing changed.)
            if envelope != *original {
                assert!(open_record(&envelope, Some(&key), CHANNEL).is_err());
            }
            let mut data = chunk.clone();
            mutate(&mut data, &mut next);
            if data != chunk {
                assert!(open_chunk(Some(&data_key), file, true, 2, &chunk_ref, data).is_err());
            }

            let mut open = if round % 2 == 0 {
                unsigned.clone()
            } else {
                v1_plain.clone()
            };
            for _ in 0..1 + next() % 4 {
                mutate(&mut open, &mut next);
            }
            if let Ok(opened) = open_record(&open, None, CHANNEL) {
                opened.record.validate(opened.version).unwrap();
                // What opens is applied to an index without a panic, whatever it says.
                let message = crate::store::Message {
                    id: 1 + next() % 1000,
                    channel_id: CHANNEL,
                    author_id: 1,
                    content: String::new(),
                    attachments: Vec::new(),
                };
                let mut index = crate::volume::Index::new(CHANNEL, None);
                let _ = index.apply(&message, &opened.record, opened.version, opened.sealed_by);
                let _ = index.list("");
            }

            let random: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
            assert!(open_record(&random, Some(&key), CHANNEL).is_err());
            let text: String = random.iter().map(|&b| char::from(b % 96 + 32)).collect();
            let _ = classify(&format!("{CONTENT_PREFIX}{text}"));
        }
    }
}
