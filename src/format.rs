//! The on-Discord format, version 1: the contract between every dcloud-fs that ever reads
//! or writes a channel. This page is meant to be enough to write a second reader.
//!
//! A channel holds a file's bytes as **chunks** (attachments) and its metadata as
//! **records** (sealed JSON). Every message dcloud-fs posts is one of two kinds, told
//! apart by its text content:
//!
//! | content                 | kind |
//! |-------------------------|------|
//! | `dcfs1 data <file id>`  | data message: only chunk attachments, of the file with that id (32 hex digits) |
//! | `dcfs1 <base64url>`     | record message, record inline (unpadded base64url of the record envelope) |
//! | `dcfs1 @record.dcfr`    | record message, record envelope in the attachment named `record.dcfr` |
//!
//! A record message may also carry chunk attachments of its own: a small file is a single
//! message (its chunks and its record together), several small files can share one (a
//! record with one `put` for each), and a large file's last chunks ride in the message of
//! its record. Messages by other authors, and messages whose content
//! doesn't start with `dcfs1 `, are not part of the file system.
//!
//! ## Chunks
//!
//! A file's bytes are cut into chunks, each stored as one attachment with an opaque name
//! (`c<index>.bin`; names carry no meaning and readers must not rely on them except to
//! resolve a record's own attachments, below).
//!
//! An **encrypted chunk** is
//!
//! ```text
//! offset  size  field
//! 0       4     magic "DCFC"
//! 4       1     format version (1)
//! 5       12    nonce, random for every chunk
//! 17      n     AES-256-GCM ciphertext of the n plaintext bytes
//! 17+n    16    AES-256-GCM tag
//! ```
//!
//! sealed with associated data `"DCFC" ‖ version ‖ file id (16 bytes) ‖ chunk index
//! (u64, little endian)`, so a chunk moved to another file or another position fails to
//! open. A **plain chunk** (plaintext mode, for files meant to be shared) is the file's
//! bytes as they are, so anyone can download and concatenate the attachments; its
//! integrity comes from the SHA-256 that the record keeps for it.
//!
//! ## Record envelope
//!
//! ```text
//! offset  size  field
//! 0       4     magic "DCFR"
//! 4       1     format version (1)
//! 5       1     cipher: 0 = none (plain JSON follows), 1 = AES-256-GCM
//! 6       8     key id of the sealing key (zero for cipher 0)
//! 14      …     cipher 0: the record JSON
//!               cipher 1: nonce (12) ‖ ciphertext of the record JSON ‖ tag (16),
//!                         associated data = bytes 0..14
//! ```
//!
//! The key id is the first 8 bytes of SHA-256("dcloud-fs key id v1\0" ‖ key): a reader
//! with another key can say so instead of failing obscurely. A reader meeting a higher
//! version skips the record (it was written by a newer dcloud-fs).
//!
//! ## Record JSON
//!
//! A record is one atomic batch of operations on paths, applied in order:
//!
//! ```json
//! {"ops":[
//!   {"op":"put","path":"photos/2024/a.jpg","id":"<32 hex digits>","size":12345,
//!    "mtime_ns":1732550000000000000,"mode":420,"encrypted":true,
//!    "chunks":[{"m":"<message id>","a":"<attachment id>","n":8716288},
//!              {"f":"c1.bin","n":3629}]},
//!   {"op":"mkdir","path":"photos/empty","mtime_ns":1732550000000000000,"mode":493},
//!   {"op":"del","path":"old/name.txt"}
//! ]}
//! ```
//!
//! - `put` creates or replaces the file at `path`. `id` is the file id (random per
//!   upload, kept across renames) that chunk AAD binds. `size` is the sum of the chunks'
//!   `n`. `mtime_ns` is nanoseconds since the Unix epoch (may be negative), `mode` the
//!   permission bits. Each chunk names its attachment either by ids (`m` message, `a`
//!   attachment, decimal strings like Discord's; plus `c`, the channel, when the message
//!   is in another channel than the record) or, for chunks attached to the record's own
//!   message, by file name (`f`); `n` is its plaintext length; plain files add `h`, the
//!   chunk's SHA-256 in hex; encrypted chunks add `t`, the chunk's AES-GCM tag in hex.
//!   A new version of a file keeps the file id and reuses the chunks it didn't change,
//!   so `t` is what tells a reader that a chunk is this version's and not an older one
//!   at the same index (whose seal would otherwise open fine); a reader checks it.
//! - `mkdir` records a folder that exists even when empty.
//! - `del` is a tombstone: the path (file or folder) no longer exists. A file moved to
//!   another channel is deleted with `"moved":{"to":"<channel id>","messages":
//!   ["<channel id>/<message id>", …]}`: the destination's record now points at those
//!   messages, which stay. Whoever later deletes or replaces the file frees them, once no
//!   channel on the file's path of moves still uses them.
//!
//! Paths are relative to the channel, `/`-separated UTF-8, with no empty, `.` or `..`
//! component, no NUL, components of at most 255 bytes. Folders other than those made by
//! `mkdir` exist implicitly as parents of paths.
//!
//! ## Replay
//!
//! A channel's contents are its records replayed by message id: for every path, the
//! operation from the message with the highest id wins (within one message, the later
//! operation). Replay is therefore independent of the order in which messages are read.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{self, CryptoError, KEY_ID_LEN, Key, KeyId, NONCE_LEN, TAG_LEN};
use crate::store::{Id, Limits, NewAttachment};

/// The format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// First bytes of an encrypted chunk.
pub const CHUNK_MAGIC: [u8; 4] = *b"DCFC";
/// First bytes of a record envelope.
pub const RECORD_MAGIC: [u8; 4] = *b"DCFR";
/// Bytes before the ciphertext of an encrypted chunk.
pub const CHUNK_HEADER_LEN: usize = 4 + 1 + NONCE_LEN;
/// Bytes an encrypted chunk adds to its plaintext.
pub const CHUNK_OVERHEAD: usize = CHUNK_HEADER_LEN + TAG_LEN;
/// Prefix of the content of every message dcloud-fs posts.
pub const CONTENT_PREFIX: &str = "dcfs1 ";
/// Start of the content of a data message; the file id follows after a space. The id
/// lets an upload that died midway find and delete the data messages it left behind.
pub const DATA_CONTENT: &str = "dcfs1 data";

/// The content of a data message holding chunks of `file`.
pub fn data_content(file: FileId) -> String {
    format!("{DATA_CONTENT} {file}")
}
/// Name of the attachment holding a record that is too long for the content.
pub const RECORD_ATTACHMENT: &str = "record.dcfr";
/// Bytes of the record envelope header (magic, version, cipher, key id).
const RECORD_HEADER_LEN: usize = 4 + 1 + 1 + KEY_ID_LEN;
const CIPHER_NONE: u8 = 0;
const CIPHER_AES_256_GCM: u8 = 1;
/// Longest path in a record, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest path component, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Errors of the format layer.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("not a dcloud-fs {0}")]
    NotOurs(&'static str),
    #[error("written by a newer dcloud-fs (format version {0}); upgrade to read it")]
    NewerVersion(u8),
    #[error("damaged {what}: {detail}")]
    Damaged { what: &'static str, detail: String },
    #[error(
        "this file is encrypted and no key is loaded; point --key-file or DCLOUD_KEY at your key"
    )]
    KeyNeeded,
    #[error("invalid path '{path}': {why}")]
    InvalidPath { path: String, why: &'static str },
}

fn damaged(what: &'static str, detail: impl Into<String>) -> FormatError {
    FormatError::Damaged {
        what,
        detail: detail.into(),
    }
}

/// A file's id: 16 random bytes, shown as 32 hex digits. Chunk AAD binds it.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub [u8; 16]);

impl FileId {
    /// A new random file id.
    pub fn random() -> Result<FileId, CryptoError> {
        let mut bytes = [0u8; 16];
        crypto::fill_random(&mut bytes)?;
        Ok(FileId(bytes))
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crypto::encode_hex(&self.0))
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({self})")
    }
}

impl Serialize for FileId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for FileId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        crypto::decode_hex::<16>(&text)
            .map(FileId)
            .ok_or_else(|| serde::de::Error::custom("a file id is 32 hex digits"))
    }
}

/// Checks that `path` is a valid path inside a channel (see the module docs).
pub fn validate_path(path: &str) -> Result<(), FormatError> {
    let invalid = |why| {
        Err(FormatError::InvalidPath {
            path: path.to_string(),
            why,
        })
    };
    if path.is_empty() {
        return invalid("it is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return invalid("it is longer than 4096 bytes");
    }
    if path.contains('\0') {
        return invalid("it contains a NUL byte");
    }
    for component in path.split('/') {
        match component {
            "" => return invalid("it has an empty component (leading, trailing or double '/')"),
            "." | ".." => return invalid("'.' and '..' are not allowed"),
            c if c.len() > MAX_NAME_BYTES => return invalid("a name is longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Chunks

/// How a file's chunks are sealed.
#[derive(Clone, Copy, Debug)]
pub enum Sealing<'a> {
    /// AES-256-GCM under this key.
    Encrypted(&'a Key),
    /// Plaintext mode: bytes as they are, checked by SHA-256.
    Plain,
}

/// Bytes a chunk grows by when sealed: encrypted, or plain.
pub fn chunk_overhead(encrypted: bool) -> usize {
    if encrypted { CHUNK_OVERHEAD } else { 0 }
}

/// First read of [`ChunkBuffer::fill_from`]; later reads double it.
const FIRST_READ_WINDOW: usize = 64 * 1024;

/// A buffer that is filled with a chunk's plaintext and then sealed in place, with room
/// for the header in front so sealing copies nothing.
pub struct ChunkBuffer {
    bytes: Vec<u8>,
    header_len: usize,
}

impl ChunkBuffer {
    /// An empty buffer for up to `capacity` plaintext bytes, to be sealed encrypted (with
    /// room for header and tag) or plain.
    pub fn new(capacity: usize, encrypted: bool) -> ChunkBuffer {
        let header_len = if encrypted { CHUNK_HEADER_LEN } else { 0 };
        let mut bytes = Vec::with_capacity(capacity + chunk_overhead(encrypted));
        bytes.resize(header_len, 0);
        ChunkBuffer { bytes, header_len }
    }

    /// Plaintext bytes held.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.header_len
    }

    /// Whether no plaintext is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads from `reader` until the buffer holds `capacity` bytes or the reader ends.
    /// Returns the number of bytes read.
    pub fn fill_from(
        &mut self,
        reader: &mut dyn std::io::Read,
        capacity: usize,
    ) -> std::io::Result<usize> {
        let start = self.bytes.len();
        let target = self.header_len + capacity;
        let mut filled = start;
        // The read window grows as data keeps coming, so a small file never touches
        // (zeroes, faults in) the several MiB a chunk may hold.
        let mut window = FIRST_READ_WINDOW;
        while filled < target {
            let end = target.min(filled + window);
            self.bytes.resize(end, 0);
            match reader.read(&mut self.bytes[filled..end]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    if filled == end {
                        window = window.saturating_mul(2);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.bytes.truncate(filled);
                    return Err(e);
                }
            }
        }
        self.bytes.truncate(filled);
        Ok(filled - start)
    }

    /// Appends plaintext.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
    }

    /// Seals the chunk as chunk `index` of file `file`.
    pub fn seal(
        mut self,
        sealing: Sealing<'_>,
        file: FileId,
        index: u64,
    ) -> Result<SealedChunk, FormatError> {
        let plain_len = self.len() as u64;
        let reserved = self.header_len > 0;
        if reserved != matches!(sealing, Sealing::Encrypted(_)) {
            return Err(damaged("chunk buffer", "made for the other sealing mode"));
        }
        match sealing {
            Sealing::Plain => {
                let sha256: [u8; 32] = Sha256::digest(&self.bytes).into();
                Ok(SealedChunk {
                    bytes: self.bytes,
                    plain_len,
                    sha256: Some(sha256),
                    tag: None,
                })
            }
            Sealing::Encrypted(key) => {
                let nonce = crypto::random_nonce()?;
                self.bytes[0..4].copy_from_slice(&CHUNK_MAGIC);
                self.bytes[4] = FORMAT_VERSION;
                self.bytes[5..CHUNK_HEADER_LEN].copy_from_slice(&nonce);
                let aad = chunk_aad(file, index);
                let tag = key.seal_detached(&nonce, &aad, &mut self.bytes[CHUNK_HEADER_LEN..])?;
                self.bytes.extend_from_slice(&tag);
                Ok(SealedChunk {
                    bytes: self.bytes,
                    plain_len,
                    sha256: None,
                    tag: Some(tag),
                })
            }
        }
    }
}

/// A sealed chunk, ready to upload.
#[derive(Debug)]
pub struct SealedChunk {
    /// The attachment's bytes.
    pub bytes: Vec<u8>,
    /// Plaintext length.
    pub plain_len: u64,
    /// SHA-256 of the plaintext, for plain chunks.
    pub sha256: Option<[u8; 32]>,
    /// The AES-GCM tag, for encrypted chunks.
    pub tag: Option<[u8; TAG_LEN]>,
}

fn chunk_aad(file: FileId, index: u64) -> [u8; 4 + 1 + 16 + 8] {
    let mut aad = [0u8; 29];
    aad[0..4].copy_from_slice(&CHUNK_MAGIC);
    aad[4] = FORMAT_VERSION;
    aad[5..21].copy_from_slice(&file.0);
    aad[21..29].copy_from_slice(&index.to_le_bytes());
    aad
}

/// Opens chunk `index` of `file` as the record describes it (`chunk`), returning its
/// plaintext. Fails on any mismatch: never returns bytes that aren't the file's.
pub fn open_chunk(
    key: Option<&Key>,
    file: FileId,
    encrypted: bool,
    index: u64,
    chunk: &ChunkRef,
    data: Vec<u8>,
) -> Result<Bytes, FormatError> {
    let mut data = data;
    let mut plaintext_at = 0;
    if encrypted {
        let key = key.ok_or(FormatError::KeyNeeded)?;
        if data.len() < CHUNK_OVERHEAD || data[0..4] != CHUNK_MAGIC {
            return Err(damaged(
                "chunk",
                format!("chunk {index} is not a dcloud-fs chunk"),
            ));
        }
        if data[4] != FORMAT_VERSION {
            return Err(FormatError::NewerVersion(data[4]));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&data[5..CHUNK_HEADER_LEN]);
        let tag_at = data.len() - TAG_LEN;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&data[tag_at..]);
        if chunk.tag.is_some_and(|expected| expected != tag) {
            return Err(damaged(
                "chunk",
                format!("chunk {index} is not the version the record names"),
            ));
        }
        data.truncate(tag_at);
        key.open_detached(
            &nonce,
            &chunk_aad(file, index),
            &mut data[CHUNK_HEADER_LEN..],
            &tag,
        )
        .map_err(|_| damaged("chunk", format!("chunk {index} failed authentication")))?;
        plaintext_at = CHUNK_HEADER_LEN;
    } else if let Some(expected) = chunk.sha256 {
        let actual: [u8; 32] = Sha256::digest(&data).into();
        if actual != expected {
            return Err(damaged(
                "chunk",
                format!("chunk {index} does not match its checksum"),
            ));
        }
    } else {
        return Err(damaged(
            "record",
            format!("plain chunk {index} has no checksum"),
        ));
    }
    if (data.len() - plaintext_at) as u64 != chunk.len {
        return Err(damaged(
            "chunk",
            format!(
                "chunk {index} holds {} bytes, the record says {}",
                data.len() - plaintext_at,
                chunk.len
            ),
        ));
    }
    // A view past the header: the plaintext is not copied again.
    Ok(Bytes::from(data).slice(plaintext_at..))
}

/// The attachment name of chunk `index`.
pub fn chunk_filename(index: u64) -> String {
    format!("c{index}.bin")
}

// ---------------------------------------------------------------------------------------
// Records

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
        Ok(ChunkRef {
            location,
            len: wire.n,
            sha256,
            tag,
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
}

/// A folder that exists on its own: what a `mkdir` operation says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirManifest {
    pub path: String,
    pub mtime_ns: i64,
    pub mode: u32,
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
mod id_string {
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
mod id_pairs {
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
    /// The path the operation is about.
    pub fn path(&self) -> &str {
        match self {
            Op::Put(file) => &file.path,
            Op::Mkdir(dir) => &dir.path,
            Op::Del { path, .. } => path,
        }
    }
}

/// A record: operations applied together, atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub ops: Vec<Op>,
}

impl Record {
    fn validate(&self) -> Result<(), FormatError> {
        for op in &self.ops {
            validate_path(op.path())?;
            if let Op::Put(file) = op {
                let total: u64 = file.chunks.iter().map(|c| c.len).sum();
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
            }
        }
        Ok(())
    }
}

/// Seals a record into its envelope: encrypted under `key`, or plain JSON if `None`.
pub fn seal_record(record: &Record, key: Option<&Key>) -> Result<Vec<u8>, FormatError> {
    record.validate()?;
    let json = serde_json::to_vec(record).expect("records serialize");
    let mut envelope = Vec::with_capacity(RECORD_HEADER_LEN + NONCE_LEN + json.len() + TAG_LEN);
    envelope.extend_from_slice(&RECORD_MAGIC);
    envelope.push(FORMAT_VERSION);
    match key {
        None => {
            envelope.push(CIPHER_NONE);
            envelope.extend_from_slice(&[0u8; KEY_ID_LEN]);
            envelope.extend_from_slice(&json);
        }
        Some(key) => {
            envelope.push(CIPHER_AES_256_GCM);
            envelope.extend_from_slice(&key.id().0);
            let nonce = crypto::random_nonce()?;
            envelope.extend_from_slice(&nonce);
            let body_at = envelope.len();
            envelope.extend_from_slice(&json);
            let (header, body) = envelope.split_at_mut(body_at);
            let tag = key.seal_detached(&nonce, &header[..RECORD_HEADER_LEN], body)?;
            envelope.extend_from_slice(&tag);
        }
    }
    Ok(envelope)
}

/// Opens a record envelope. A record sealed with another key is
/// [`CryptoError::WrongKey`], one sealed while no key is loaded [`CryptoError::NoKey`].
pub fn open_record(envelope: &[u8], key: Option<&Key>) -> Result<Record, FormatError> {
    if envelope.len() < RECORD_HEADER_LEN || envelope[0..4] != RECORD_MAGIC {
        return Err(FormatError::NotOurs("record"));
    }
    if envelope[4] != FORMAT_VERSION {
        return Err(FormatError::NewerVersion(envelope[4]));
    }
    let mut written = KeyId::default();
    written.0.copy_from_slice(&envelope[6..RECORD_HEADER_LEN]);
    let json = match envelope[5] {
        CIPHER_NONE => envelope[RECORD_HEADER_LEN..].to_vec(),
        CIPHER_AES_256_GCM => {
            let key = key.ok_or(CryptoError::NoKey { written })?;
            if key.id() != written {
                return Err(CryptoError::WrongKey {
                    written,
                    have: key.id(),
                }
                .into());
            }
            let body = &envelope[RECORD_HEADER_LEN..];
            if body.len() < NONCE_LEN + TAG_LEN {
                return Err(damaged("record", "truncated"));
            }
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&body[..NONCE_LEN]);
            let mut tag = [0u8; TAG_LEN];
            tag.copy_from_slice(&body[body.len() - TAG_LEN..]);
            let mut json = body[NONCE_LEN..body.len() - TAG_LEN].to_vec();
            key.open_detached(&nonce, &envelope[..RECORD_HEADER_LEN], &mut json, &tag)
                .map_err(|_| damaged("record", "failed authentication"))?;
            json
        }
        other => return Err(damaged("record", format!("unknown cipher {other}"))),
    };
    let record: Record =
        serde_json::from_slice(&json).map_err(|e| damaged("record", e.to_string()))?;
    record.validate()?;
    Ok(record)
}

/// What a message is, judged by its content.
#[derive(Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Chunks only, of the file with this id (`None`: no valid id given).
    Data(Option<FileId>),
    /// A record, inline: the envelope bytes.
    InlineRecord(Vec<u8>),
    /// A record in the attachment [`RECORD_ATTACHMENT`].
    AttachedRecord,
    /// Not a dcloud-fs message (or a damaged one).
    Other,
}

/// Classifies a message by its content.
pub fn classify(content: &str) -> MessageKind {
    let Some(rest) = content.strip_prefix(CONTENT_PREFIX) else {
        return MessageKind::Other;
    };
    if let Some(rest) = content.strip_prefix(DATA_CONTENT)
        && (rest.is_empty() || rest.starts_with(' '))
    {
        return MessageKind::Data(crypto::decode_hex::<16>(rest.trim_start()).map(FileId));
    }
    if rest.strip_prefix('@') == Some(RECORD_ATTACHMENT) {
        return MessageKind::AttachedRecord;
    }
    match BASE64URL.decode(rest) {
        Ok(envelope) => MessageKind::InlineRecord(envelope),
        Err(_) => MessageKind::Other,
    }
}

/// The content and, if the envelope is too long for the content, the attachment of a
/// record message.
pub fn record_message_parts(envelope: Vec<u8>, limits: &Limits) -> (String, Option<NewAttachment>) {
    let inline = format!("{CONTENT_PREFIX}{}", BASE64URL.encode(&envelope));
    if inline.len() <= limits.max_content_chars {
        (inline, None)
    } else {
        let attachment = NewAttachment {
            filename: RECORD_ATTACHMENT.to_string(),
            data: envelope.into(),
        };
        (
            format!("{CONTENT_PREFIX}@{RECORD_ATTACHMENT}"),
            Some(attachment),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(key: &Key, file: FileId, index: u64, data: &[u8]) -> SealedChunk {
        let mut buffer = ChunkBuffer::new(data.len(), true);
        buffer.extend_from_slice(data);
        buffer.seal(Sealing::Encrypted(key), file, index).unwrap()
    }

    fn chunk_ref(len: u64) -> ChunkRef {
        ChunkRef {
            location: ChunkLocation::Attached {
                filename: "c0.bin".into(),
            },
            len,
            sha256: None,
            tag: None,
        }
    }

    #[test]
    fn encrypted_chunk_round_trips_and_hides_plaintext() {
        let key = Key::generate().unwrap();
        let file = FileId::random().unwrap();
        let data = b"secret bytes of the file, secret bytes of the file".repeat(10);
        let chunk = sealed(&key, file, 3, &data);
        assert_eq!(chunk.bytes.len(), data.len() + CHUNK_OVERHEAD);
        assert!(!chunk.bytes.windows(12).any(|w| w == b"secret bytes"));
        let opened = open_chunk(
            Some(&key),
            file,
            true,
            3,
            &chunk_ref(data.len() as u64),
            chunk.bytes,
        )
        .unwrap();
        assert_eq!(opened, data);
    }

    #[test]
    fn an_older_sealing_of_the_same_chunk_is_refused_by_its_tag() {
        let key = Key::generate().unwrap();
        let file = FileId::random().unwrap();
        let old = sealed(&key, file, 2, &[1u8; 100]);
        let new = sealed(&key, file, 2, &[2u8; 100]);
        let mut reference = chunk_ref(100);
        reference.tag = new.tag;
        let opened = open_chunk(Some(&key), file, true, 2, &reference, new.bytes).unwrap();
        assert_eq!(opened, vec![2u8; 100]);
        let rolled_back = open_chunk(Some(&key), file, true, 2, &reference, old.bytes);
        assert!(
            rolled_back
                .unwrap_err()
                .to_string()
                .contains("not the version")
        );
    }

    #[test]
    fn flipped_byte_fails_to_open() {
        let key = Key::generate().unwrap();
        let file = FileId::random().unwrap();
        let chunk = sealed(&key, file, 0, &[1u8; 1000]);
        for position in [0, 4, 6, 17, 500, chunk.bytes.len() - 1] {
            let mut damaged_bytes = chunk.bytes.clone();
            damaged_bytes[position] ^= 0x40;
            assert!(
                open_chunk(Some(&key), file, true, 0, &chunk_ref(1000), damaged_bytes).is_err()
            );
        }
    }

    #[test]
    fn swapped_or_foreign_chunks_fail_to_open() {
        let key = Key::generate().unwrap();
        let file = FileId::random().unwrap();
        let first = sealed(&key, file, 0, b"first chunk");
        let second = sealed(&key, file, 1, b"secnd chunk");
        // The chunks swapped: each one at the other's position.
        assert!(
            open_chunk(
                Some(&key),
                file,
                true,
                0,
                &chunk_ref(11),
                second.bytes.clone()
            )
            .is_err()
        );
        assert!(
            open_chunk(
                Some(&key),
                file,
                true,
                1,
                &chunk_ref(11),
                first.bytes.clone()
            )
            .is_err()
        );
        // The right position, but another file.
        let other = FileId::random().unwrap();
        assert!(
            open_chunk(
                Some(&key),
                other,
                true,
                0,
                &chunk_ref(11),
                first.bytes.clone()
            )
            .is_err()
        );
        // Another key.
        let wrong = Key::generate().unwrap();
        assert!(
            open_chunk(
                Some(&wrong),
                file,
                true,
                0,
                &chunk_ref(11),
                first.bytes.clone()
            )
            .is_err()
        );
        // A length that doesn't match the record.
        assert!(open_chunk(Some(&key), file, true, 0, &chunk_ref(12), first.bytes).is_err());
    }

    #[test]
    fn plain_chunks_are_the_bytes_and_checked_by_checksum() {
        let file = FileId::random().unwrap();
        let mut buffer = ChunkBuffer::new(5, false);
        buffer.extend_from_slice(b"hello");
        let chunk = buffer.seal(Sealing::Plain, file, 0).unwrap();
        assert_eq!(chunk.bytes, b"hello");
        let mut reference = chunk_ref(5);
        reference.sha256 = chunk.sha256;
        assert_eq!(
            open_chunk(None, file, false, 0, &reference, b"hello".to_vec()).unwrap(),
            &b"hello"[..]
        );
        assert!(open_chunk(None, file, false, 0, &reference, b"hellp".to_vec()).is_err());
    }

    fn sample_record() -> Record {
        Record {
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
                        },
                        chunk_ref(5),
                    ],
                }),
                Op::Mkdir(DirManifest {
                    path: "empty".into(),
                    mtime_ns: 1,
                    mode: 0o755,
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

    #[test]
    fn records_round_trip_sealed_and_plain() {
        let key = Key::generate().unwrap();
        let record = sample_record();
        let envelope = seal_record(&record, Some(&key)).unwrap();
        assert!(!envelope.windows(6).any(|w| w == b"photos"));
        assert_eq!(open_record(&envelope, Some(&key)).unwrap(), record);

        let plain = seal_record(&record, None).unwrap();
        assert_eq!(open_record(&plain, None).unwrap(), record);
        assert_eq!(open_record(&plain, Some(&key)).unwrap(), record);
    }

    #[test]
    fn wrong_or_missing_key_is_reported_with_key_ids() {
        let key = Key::generate().unwrap();
        let other = Key::generate().unwrap();
        let envelope = seal_record(&sample_record(), Some(&key)).unwrap();
        let err = open_record(&envelope, Some(&other)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("written with key id {}", key.id())),
            "{text}"
        );
        assert!(text.contains(&format!("you have {}", other.id())), "{text}");
        assert!(matches!(
            open_record(&envelope, None),
            Err(FormatError::Crypto(CryptoError::NoKey { .. }))
        ));
        let mut damaged_envelope = envelope.clone();
        let last = damaged_envelope.len() - 1;
        damaged_envelope[last] ^= 1;
        assert!(matches!(
            open_record(&damaged_envelope, Some(&key)),
            Err(FormatError::Damaged { .. })
        ));
        let mut newer = envelope;
        newer[4] = 2;
        assert!(matches!(
            open_record(&newer, Some(&key)),
            Err(FormatError::NewerVersion(2))
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
        assert!(seal_record(&record, None).is_err());
        let evil = br#"{"ops":[{"op":"del","path":"../../etc/passwd"}]}"#;
        let mut envelope = RECORD_MAGIC.to_vec();
        envelope.extend_from_slice(&[FORMAT_VERSION, CIPHER_NONE, 0, 0, 0, 0, 0, 0, 0, 0]);
        envelope.extend_from_slice(evil);
        assert!(matches!(
            open_record(&envelope, None),
            Err(FormatError::InvalidPath { .. })
        ));
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
        let envelope = seal_record(&sample_record(), None).unwrap();
        let (content, attachment) = record_message_parts(envelope.clone(), &limits);
        assert!(attachment.is_none());
        assert_eq!(classify(&content), MessageKind::InlineRecord(envelope));

        let big = vec![0u8; 2000];
        let (content, attachment) = record_message_parts(big, &limits);
        assert_eq!(classify(&content), MessageKind::AttachedRecord);
        assert_eq!(attachment.unwrap().filename, RECORD_ATTACHMENT);
    }

    /// Every mutation of a valid envelope or chunk (a flipped bit, a cut, bytes
    /// appended), and random bytes, is refused with an error, never accepted or a panic.
    #[test]
    fn mutated_or_random_input_is_refused_without_panicking() {
        let mut state = 0x5eed_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let key = Key::generate().unwrap();
        let file = FileId::random().unwrap();
        let envelope = seal_record(&sample_record(), Some(&key)).unwrap();
        let chunk = sealed(&key, file, 2, &[9u8; 300]).bytes;
        for _ in 0..2000 {
            let mut record = envelope.clone();
            let mut data = chunk.clone();
            match next() % 3 {
                0 => {
                    let bit = next() as usize % (record.len() * 8);
                    record[bit / 8] ^= 1 << (bit % 8);
                    let bit = next() as usize % (data.len() * 8);
                    data[bit / 8] ^= 1 << (bit % 8);
                }
                1 => {
                    record.truncate(next() as usize % record.len());
                    data.truncate(next() as usize % data.len());
                }
                _ => {
                    record.push(next() as u8);
                    data.push(next() as u8);
                }
            }
            assert!(open_record(&record, Some(&key)).is_err());
            assert!(open_chunk(Some(&key), file, true, 2, &chunk_ref(300), data).is_err());

            let random: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
            assert!(open_record(&random, Some(&key)).is_err());
            let text: String = random.iter().map(|&b| char::from(b % 96 + 32)).collect();
            let _ = classify(&format!("{CONTENT_PREFIX}{text}"));
        }
    }
}
