//! The on-Discord format, version 2: the contract between every dcloud-fs that ever reads
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
//! (`c<n>.bin`, numbered by position in the message; names carry no meaning and readers
//! must not rely on them except to resolve a record's own attachments, below).
//!
//! An **encrypted chunk** is
//!
//! ```text
//! offset  size  field
//! 0       4     magic "DCFC"
//! 4       1     chunk format version (1)
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
//! 4       1     record format version (2; version 1 is described below)
//! 5       1     cipher: 0 = none (the JSON is readable), 1 = AES-256-GCM
//! 6       8     key id of the key that sealed (cipher 1) or signed (cipher 0) the
//!               record; zero for a plain record written without a key
//! 14      …     cipher 1:           nonce (12) ‖ AES-256-GCM ciphertext of the JSON ‖ tag (16)
//!               cipher 0, signed:   nonce (12) ‖ the JSON ‖ tag (16)
//!               cipher 0, unsigned: the JSON
//! ```
//!
//! Both ciphers bind the record to its channel: the associated data starts with bytes
//! 0..14 of the envelope followed by the id of the channel the record is posted in
//! (u64, little endian), so a record copied into another channel fails to open.
//!
//! - **cipher 1** encrypts the JSON under the key, associated data `bytes 0..14 ‖
//!   channel id`.
//! - **cipher 0, signed** (plain records written by someone holding a key) keeps the
//!   JSON readable to anyone, and authenticates it: the tag is AES-256-GCM's tag for an
//!   empty plaintext under the *record MAC key*, with that nonce and associated data
//!   `bytes 0..14 ‖ channel id ‖ JSON` (that is, GMAC). The record MAC key is
//!   SHA-256("dcloud-fs record mac v2\0" ‖ key), so the MAC never uses the encryption
//!   key itself. A reader without the key reads the JSON without checking the tag.
//!
//! The key id is the first 8 bytes of SHA-256("dcloud-fs key id v1\0" ‖ key): a reader
//! with another key can say so instead of failing obscurely. A reader meeting a higher
//! version skips the record (it was written by a newer dcloud-fs).
//!
//! **Which records count.** A reader that holds a key takes only records that key
//! authenticated: sealed or signed by it. Unsigned plain records, and records of another
//! key, are skipped (and counted, so `ls` can say why files are missing). A reader
//! without a key takes every plain record, signed or not, without checking.
//!
//! ## Record JSON
//!
//! A record is one atomic batch of operations on paths, applied in order, with its
//! place in the channel's order of changes:
//!
//! ```json
//! {"seq":42,"ops":[
//!   {"op":"put","path":"photos/2024/a.jpg","id":"<32 hex digits>","size":12345,
//!    "mtime_ns":1732550000000000000,"mode":420,"encrypted":true,
//!    "chunks":[{"m":"<message id>","a":"<attachment id>","n":8716288},
//!              {"f":"c1.bin","n":3629}]},
//!   {"op":"mkdir","path":"photos/empty","mtime_ns":1732550000000000000,"mode":493},
//!   {"op":"del","path":"old/name.txt"}
//! ]}
//! ```
//!
//! - `seq` (version 2) is a Lamport clock of the channel: one more than the highest
//!   `seq` of any record the writer had read in the channel when it wrote this one. It
//!   is sealed (or signed) with the record, so a record posted again later keeps its
//!   old place (see Replay).
//! - `put` creates or replaces the file at `path`. `id` is the file id (random per
//!   upload, kept across renames) that chunk AAD binds. `size` is the sum of the chunks'
//!   `n`. `mtime_ns` is nanoseconds since the Unix epoch (may be negative), `mode` the
//!   permission bits. Each chunk names its attachment either by ids (`m` message, `a`
//!   attachment, decimal strings like Discord's; plus `c`, the channel, when the message
//!   is in another channel than the record) or, for chunks attached to the record's own
//!   message, by file name (`f`); `n` is its plaintext length; plain files add `h`, the
//!   chunk's SHA-256 in hex; encrypted chunks add `t`, the chunk's AES-GCM tag in hex.
//!   A chunk sealed by another key than the record (a file written under an older key
//!   and renamed under a newer one) names that key's id in `k`.
//!   A new version of a file keeps the file id and reuses the chunks it didn't change,
//!   so `t` is what tells a reader that a chunk is this version's and not an older one
//!   at the same index (whose seal would otherwise open fine); a reader checks it.
//! - `mkdir` records a folder that exists even when empty.
//! - `link` (version 2), `{"op":"link","path":…,"moved":{"to":…,"messages":[…]}}`, says
//!   that the file at `path` is being moved to channel `to`, whose record will name
//!   those messages: from now on they are used there too. It changes nothing at `path`.
//!   A move posts it before the destination's record, so that a crash between the two
//!   channels' records can't let a delete here free what the destination uses.
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
//! A channel's contents are its records replayed in the order of their changes: for
//! every path, the operation with the highest *stamp* wins, where a version-2 record's
//! stamp is `(seq, then the lower message id, then the later position in the record)`
//! and every version-2 record stamps higher than every version-1 record (whose stamps
//! are `(message id, position)`). Replay is therefore independent of the order in which
//! messages are read, and every reader converges on the same version of a path. Two
//! writers that wrote one path without seeing each other's record may pick the same
//! `seq`: the record posted first (lower message id) wins, on every reader. A copy of
//! a record posted again later has a higher message id and the same `seq` as the
//! original, or a lower one than the path's newer versions, so it never wins; readers
//! log it.
//!
//! Chunk references in a record must name messages of the bot's own: in the record's
//! channel, a data message (`dcfs1 data <id>`) of the same file id, or a record
//! message. A reader refuses a record that names any other message.
//!
//! ## Version 1
//!
//! Version-1 records (envelope version byte 1) have the same layout without the
//! channel in the associated data and without signed plain records (cipher 0 is always
//! the bare JSON, key id zero), and their JSON has no `seq`: they replay by message id,
//! the highest winning. Chunks are the same in both versions. A reader holding a key
//! takes a channel's version-1 records only if they were posted before the channel's
//! first version-2 record that the key authenticated (the *cutover*): after it, a
//! version-1 record can only be a copy or a forgery. Version 1 used `"dcfs1 "` as the
//! content prefix too; the prefix names the message kinds, not the format version.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{self, CryptoError, KEY_ID_LEN, Key, KeyId, NONCE_LEN, TAG_LEN};
use crate::store::{Id, Limits, NewAttachment};

/// The record format version this code writes (it reads this one and every older).
pub const FORMAT_VERSION: u8 = 2;
/// The chunk format version (chunks are the same in format versions 1 and 2).
pub const CHUNK_VERSION: u8 = 1;
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
                self.bytes[4] = CHUNK_VERSION;
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
    aad[4] = CHUNK_VERSION;
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
        if data[4] != CHUNK_VERSION {
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

/// The attachment name of the chunk at `position` in its message.
pub fn chunk_filename(position: u64) -> String {
    format!("c{position}.bin")
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
    /// The key that sealed the chunk, when it isn't the key that sealed the record (`k`,
    /// version 2): a file written under an older key and renamed under a newer one.
    pub key: Option<KeyId>,
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
            key: wire.k,
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
    /// The file at `path` is being moved to another channel (version 2): its messages
    /// are used there too from now on. Changes nothing at `path`.
    Link {
        path: String,
        moved: Moved,
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

impl Record {
    fn validate(&self) -> Result<(), FormatError> {
        for op in &self.ops {
            validate_path(op.path())?;
            if let Op::Put(file) = op {
                let mut total = 0u64;
                for chunk in &file.chunks {
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
            }
        }
        Ok(())
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
    record.validate()?;
    let json = serde_json::to_vec(record).expect("records serialize");
    let mut envelope = Vec::with_capacity(RECORD_HEADER_LEN + NONCE_LEN + json.len() + TAG_LEN);
    envelope.extend_from_slice(&RECORD_MAGIC);
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
    /// The envelope's version (1 or 2).
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
fn split_sealed(body: &[u8]) -> Result<SealedParts<'_>, FormatError> {
    if body.len() < NONCE_LEN + TAG_LEN {
        return Err(damaged("record", "truncated"));
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
    if envelope.len() < RECORD_HEADER_LEN || envelope[0..4] != RECORD_MAGIC {
        return Err(FormatError::NotOurs("record"));
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
        (CIPHER_NONE, _) if key.is_none() => (split_sealed(body)?.1.to_vec(), false),
        (CIPHER_NONE, _) => {
            let key = check_key(key, written)?;
            let (nonce, json, tag) = split_sealed(body)?;
            key.derive(RECORD_MAC_LABEL)
                .open_detached(&nonce, &record_aad(header, channel, json), &mut [], &tag)
                .map_err(|_| damaged("record", "failed authentication"))?;
            (json.to_vec(), true)
        }
        (CIPHER_AES_256_GCM, _) => {
            let key = check_key(key, written)?;
            let (nonce, ciphertext, tag) = split_sealed(body)?;
            let aad = if version == 1 {
                header.to_vec()
            } else {
                record_aad(header, channel, &[])
            };
            let mut json = ciphertext.to_vec();
            key.open_detached(&nonce, &aad, &mut json, &tag)
                .map_err(|_| damaged("record", "failed authentication"))?;
            (json, true)
        }
        (other, _) => return Err(damaged("record", format!("unknown cipher {other}"))),
    };
    let mut record: Record =
        serde_json::from_slice(&json).map_err(|e| damaged("record", e.to_string()))?;
    record.validate()?;
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
            key: None,
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

    fn opened(record: &Record, version: u8, authenticated: bool) -> (Record, u8, bool) {
        (record.clone(), version, authenticated)
    }

    /// What a test compares of an opened record (who sealed it is checked on its own).
    fn summary(opened: OpenedRecord) -> (Record, u8, bool) {
        (opened.record, opened.version, opened.authenticated)
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
            opened(&record, 2, true)
        );

        let signed = seal_record(&record, RecordSeal::Signed(&key), CHANNEL).unwrap();
        assert!(
            signed.windows(6).any(|w| w == b"photos"),
            "signed stays readable"
        );
        assert_eq!(
            summary(open_record(&signed, Some(&key), CHANNEL).unwrap()),
            opened(&record, 2, true)
        );
        // Without the key it reads, unchecked.
        assert_eq!(
            summary(open_record(&signed, None, CHANNEL).unwrap()),
            opened(&record, 2, false)
        );

        let unsigned = seal_record(&record, RecordSeal::Unsigned, CHANNEL).unwrap();
        for reader in [None, Some(&key)] {
            assert_eq!(
                summary(open_record(&unsigned, reader, CHANNEL).unwrap()),
                opened(&record, 2, false)
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
        newer[4] = 3;
        assert!(matches!(
            open_record(&newer, Some(&key), CHANNEL),
            Err(FormatError::NewerVersion(3))
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
        let chunk = sealed(&key, file, 2, &[9u8; 300]).bytes;
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
                assert!(open_chunk(Some(&key), file, true, 2, &chunk_ref(300), data).is_err());
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
                opened.record.validate().unwrap();
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
