//! Chunks: how a file's bytes are sealed into attachments, and opened again, whole or a
//! few segments at a time. The layouts are specified in the [parent module's
//! docs](super); this module is their one implementation.
//!
//! Three kinds of chunk exist ([`ChunkKind`]):
//!
//! - **segmented** (chunk version 2, what this code writes for encrypted files): a
//!   series of 64 KiB segments, each sealed on its own under the file's data key, so
//!   that a read of 4 KiB fetches and opens 64 KiB, not the whole chunk;
//! - **whole** (chunk version 1, read only): one AES-256-GCM seal over the chunk under
//!   the channel key, opened only whole;
//! - **plain** (plaintext mode): the bytes as they are, checked by the SHA-256 the
//!   record keeps, also opened only whole.
//!
//! Sealing works in place: a [`ChunkBuffer`] is laid out as the sealed chunk from the
//! start (header, then each segment's slot followed by room for its tag), so reading
//! the plaintext into it is the only copy, and encrypting writes over it. Buffers for
//! full-sized chunks come from a small pool and go back to it when the attachment is
//! dropped ([`SealedChunk::into_bytes`]), so a long upload doesn't allocate, zero and
//! fault in a fresh 8 MiB for every chunk. Opening works in place too, and hands out
//! each segment's plaintext as a view of the downloaded buffer (no copy).

use std::ops::Range;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::record::ChunkRef;
use super::{FileId, FormatError, damaged};
use crate::buffers;
use crate::crypto::{self, CryptoError, KEY_LEN, Key, NONCE_LEN, TAG_LEN};

/// First bytes of an encrypted chunk, of either version.
pub const CHUNK_MAGIC: [u8; 4] = *b"DCFC";
/// The chunk format version this code writes: segmented.
pub const CHUNK_VERSION: u8 = 2;
/// The chunk format version of whole chunks (format versions 1 and 2), read only.
pub const WHOLE_CHUNK_VERSION: u8 = 1;
/// Plaintext bytes per segment of a segmented chunk (the last may be shorter).
pub const SEGMENT_LEN: usize = 64 * 1024;
/// Bytes of the random nonce prefix of a segmented chunk.
pub const NONCE_PREFIX_LEN: usize = 8;
/// Bytes before the first segment of a segmented chunk: magic, version, nonce prefix.
pub const SEGMENTED_HEADER_LEN: usize = 4 + 1 + NONCE_PREFIX_LEN;
/// Bytes before the ciphertext of a whole (version 1) chunk: magic, version, nonce.
pub const WHOLE_HEADER_LEN: usize = 4 + 1 + NONCE_LEN;
/// Bytes a whole (version 1) chunk adds to its plaintext.
pub const WHOLE_OVERHEAD: usize = WHOLE_HEADER_LEN + TAG_LEN;

const SEGMENT: u64 = SEGMENT_LEN as u64;
const SEGMENT_SPAN: u64 = SEGMENT + TAG_LEN as u64;

/// How a chunk is sealed, which decides how it is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// Plaintext mode: the bytes, checked by SHA-256; opened whole.
    Plain,
    /// Chunk version 1: one AES-256-GCM seal; opened whole.
    Whole,
    /// Chunk version 2: 64 KiB segments, each sealed on its own; opened by segment.
    Segmented,
}

impl ChunkKind {
    /// The kind of a chunk of a file that is `encrypted` or not, whose reference has a
    /// nonce prefix or not.
    pub fn of(encrypted: bool, prefix: Option<[u8; NONCE_PREFIX_LEN]>) -> ChunkKind {
        match (encrypted, prefix) {
            (false, _) => ChunkKind::Plain,
            (true, Some(_)) => ChunkKind::Segmented,
            (true, None) => ChunkKind::Whole,
        }
    }

    /// The attachment's length for `plain_len` bytes of plaintext.
    pub fn sealed_len(self, plain_len: u64) -> u64 {
        match self {
            ChunkKind::Plain => plain_len,
            ChunkKind::Whole => plain_len + WHOLE_OVERHEAD as u64,
            ChunkKind::Segmented => {
                SEGMENTED_HEADER_LEN as u64 + plain_len + TAG_LEN as u64 * segment_count(plain_len)
            }
        }
    }

    /// The most plaintext a chunk of this kind can hold in `sealed` bytes.
    pub fn capacity(self, sealed: u64) -> u64 {
        match self {
            ChunkKind::Plain => sealed,
            ChunkKind::Whole => sealed.saturating_sub(WHOLE_OVERHEAD as u64),
            ChunkKind::Segmented => {
                let body = sealed.saturating_sub(SEGMENTED_HEADER_LEN as u64);
                let full = body / SEGMENT_SPAN;
                let rest = (body % SEGMENT_SPAN).saturating_sub(TAG_LEN as u64);
                full * SEGMENT + rest
            }
        }
    }
}

/// Segments of a segmented chunk of `plain_len` bytes (an empty chunk has one, empty).
pub fn segment_count(plain_len: u64) -> u64 {
    plain_len.div_ceil(SEGMENT).max(1)
}

/// Where segment `segment`'s plaintext is in its chunk.
pub fn segment_plain(plain_len: u64, segment: u64) -> Range<u64> {
    let start = (segment * SEGMENT).min(plain_len);
    start..(start + SEGMENT).min(plain_len)
}

/// Where segments `segments` of a segmented chunk of `plain_len` bytes are in its
/// attachment: one contiguous range of sealed bytes (each segment's ciphertext and tag).
pub fn segments_span(plain_len: u64, segments: Range<u64>) -> Range<u64> {
    let at = |segment: u64| {
        let plain = segment_plain(plain_len, segment).start;
        SEGMENTED_HEADER_LEN as u64 + plain + TAG_LEN as u64 * segment
    };
    let end = if segments.end >= segment_count(plain_len) {
        ChunkKind::Segmented.sealed_len(plain_len)
    } else {
        at(segments.end)
    };
    at(segments.start)..end
}

/// A file's data key (`dk`): random per file, kept inside its sealed record, and what
/// its segmented chunks are sealed under. `Debug` doesn't show it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DataKey(pub [u8; KEY_LEN]);

impl DataKey {
    /// A new random data key.
    pub fn random() -> Result<DataKey, CryptoError> {
        let mut bytes = [0u8; KEY_LEN];
        crypto::fill_random(&mut bytes)?;
        Ok(DataKey(bytes))
    }

    /// The key to seal and open with.
    pub fn key(&self) -> Key {
        Key::from_bytes(self.0)
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl serde::Serialize for DataKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&crypto::encode_hex(&self.0))
        } else {
            serde::Serialize::serialize(&self.0, serializer) // the index cache: bytes
        }
    }
}

impl<'de> serde::Deserialize<'de> for DataKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            return <[u8; KEY_LEN]>::deserialize(deserializer).map(DataKey);
        }
        let text = String::deserialize(deserializer)?;
        crypto::decode_hex::<KEY_LEN>(&text)
            .map(DataKey)
            .ok_or_else(|| serde::de::Error::custom("a data key is 64 hex digits"))
    }
}

/// How a file's chunks are sealed.
#[derive(Clone, Copy, Debug)]
pub enum Sealing<'a> {
    /// Segmented, under the file's data key.
    Encrypted(&'a Key),
    /// Plaintext mode: bytes as they are, checked by SHA-256.
    Plain,
}

/// A buffer that is filled with a chunk's plaintext and sealed in place. It is laid
/// out as the sealed chunk from the start: header, then for each segment its
/// plaintext's slot followed by room for its tag. So reading into it is the only copy
/// and sealing copies nothing. Each segment is sealed as soon as the next one starts
/// filling (the last one when the chunk is sealed, since only then is it known to be
/// the last), while its bytes are still in the processor's cache.
pub struct ChunkBuffer {
    /// The sealed layout; bytes past what is filled are unspecified.
    bytes: Vec<u8>,
    /// Plaintext bytes held.
    plain_len: usize,
    /// How segments are sealed (encrypted chunks); `None` for a plain chunk.
    sealer: Option<Sealer>,
}

/// What seals the segments of one chunk, and how far it got.
struct Sealer {
    key: Key,
    file: FileId,
    index: u64,
    prefix: [u8; NONCE_PREFIX_LEN],
    /// Segments sealed so far (all but the last filled, at most).
    sealed: u64,
}

impl ChunkBuffer {
    /// An empty buffer for up to `capacity` plaintext bytes of chunk `index` of file
    /// `file`, sealed as `sealing` says.
    pub fn new(
        capacity: usize,
        sealing: Sealing<'_>,
        file: FileId,
        index: u64,
    ) -> Result<ChunkBuffer, FormatError> {
        let sealer = match sealing {
            Sealing::Plain => None,
            Sealing::Encrypted(key) => {
                let mut prefix = [0u8; NONCE_PREFIX_LEN];
                crypto::fill_random(&mut prefix)?;
                Some(Sealer {
                    key: key.clone(),
                    file,
                    index,
                    prefix,
                    sealed: 0,
                })
            }
        };
        let kind = if sealer.is_some() {
            ChunkKind::Segmented
        } else {
            ChunkKind::Plain
        };
        Ok(ChunkBuffer {
            bytes: buffers::take(kind.sealed_len(capacity as u64) as usize),
            plain_len: 0,
            sealer,
        })
    }

    /// Plaintext bytes held.
    pub fn len(&self) -> usize {
        self.plain_len
    }

    /// Whether no plaintext is held.
    pub fn is_empty(&self) -> bool {
        self.plain_len == 0
    }

    fn segmented(&self) -> bool {
        self.sealer.is_some()
    }

    /// Where plaintext byte `offset` goes in the buffer.
    fn position(&self, offset: usize) -> usize {
        if self.segmented() {
            SEGMENTED_HEADER_LEN + offset + TAG_LEN * (offset / SEGMENT_LEN)
        } else {
            offset
        }
    }

    /// The free slot for the next plaintext bytes, up to the end of their segment (or
    /// of the buffer), at most `limit` bytes; grows the buffer if a small one was made.
    fn next_slot(&mut self, limit: usize) -> &mut [u8] {
        let offset = self.plain_len;
        let in_segment = if self.segmented() {
            SEGMENT_LEN - offset % SEGMENT_LEN
        } else {
            usize::MAX
        };
        let len = limit.min(in_segment);
        let at = self.position(offset);
        if self.bytes.len() < at + len + TAG_LEN {
            self.bytes.resize(at + len + TAG_LEN, 0);
        }
        &mut self.bytes[at..at + len]
    }

    /// Notes `n` more plaintext bytes written into the slot [`Self::next_slot`] gave.
    /// Bytes in a new segment mean the one before is full and not the last: it is
    /// sealed now, while still in the processor's cache.
    fn filled(&mut self, n: usize) -> Result<(), FormatError> {
        let started_segment = self.plain_len % SEGMENT_LEN == 0 && self.plain_len > 0;
        self.plain_len += n;
        if started_segment && n > 0 {
            let segment = ((self.plain_len - n) / SEGMENT_LEN) as u64;
            self.seal_segments(segment, false)?;
        }
        Ok(())
    }

    /// Seals the segments not sealed yet below `end`; the one before `end` as the
    /// chunk's last if `last_included`, else all of them as full segments.
    fn seal_segments(&mut self, end: u64, last_included: bool) -> Result<(), FormatError> {
        let plain_len = self.plain_len as u64;
        let Some(sealer) = &mut self.sealer else {
            return Ok(());
        };
        let mut aad = segment_aad(sealer.file, sealer.index);
        while sealer.sealed < end {
            let segment = sealer.sealed;
            let last = last_included && segment + 1 == end;
            let start = segments_span(plain_len, segment..segment + 1).start as usize;
            let text_len = if last {
                let plain = segment_plain(plain_len, segment);
                (plain.end - plain.start) as usize
            } else {
                SEGMENT_LEN
            };
            let (text, rest) = self.bytes[start..].split_at_mut(text_len);
            set_segment(&mut aad, segment, last);
            let nonce = segment_nonce(sealer.prefix, segment);
            let tag = sealer.key.seal_detached(&nonce, &aad, text)?;
            rest[..TAG_LEN].copy_from_slice(&tag);
            sealer.sealed += 1;
        }
        Ok(())
    }

    /// Reads from `reader` until the buffer holds `capacity` bytes or the reader ends.
    /// Returns the number of bytes read.
    pub fn fill_from(
        &mut self,
        reader: &mut dyn std::io::Read,
        capacity: usize,
    ) -> std::io::Result<usize> {
        let start = self.plain_len;
        while self.plain_len < capacity {
            let want = capacity - self.plain_len;
            match reader.read(self.next_slot(want)) {
                Ok(0) => break,
                Ok(n) => self.filled(n).map_err(std::io::Error::other)?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.plain_len - start)
    }

    /// Appends plaintext.
    pub fn extend_from_slice(&mut self, mut data: &[u8]) -> Result<(), FormatError> {
        while !data.is_empty() {
            let slot = self.next_slot(data.len());
            let n = slot.len();
            slot.copy_from_slice(&data[..n]);
            self.filled(n)?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Seals what is left (the last segment, with its flag) and returns the chunk.
    pub fn seal(mut self) -> Result<SealedChunk, FormatError> {
        let plain_len = self.plain_len as u64;
        let kind = if self.segmented() {
            ChunkKind::Segmented
        } else {
            ChunkKind::Plain
        };
        let len = kind.sealed_len(plain_len) as usize;
        if self.bytes.len() < len {
            self.bytes.resize(len, 0);
        }
        let (sha256, prefix) = match &self.sealer {
            None => (Some(Sha256::digest(&self.bytes[..len]).into()), None),
            Some(sealer) => {
                let prefix = sealer.prefix;
                self.bytes[0..4].copy_from_slice(&CHUNK_MAGIC);
                self.bytes[4] = CHUNK_VERSION;
                self.bytes[5..SEGMENTED_HEADER_LEN].copy_from_slice(&prefix);
                self.seal_segments(segment_count(plain_len), true)?;
                (None, Some(prefix))
            }
        };
        Ok(SealedChunk {
            bytes: std::mem::take(&mut self.bytes),
            len,
            plain_len,
            sha256,
            prefix,
        })
    }
}

/// A sealed chunk, ready to upload.
pub struct SealedChunk {
    bytes: Vec<u8>,
    /// Bytes of `bytes` that are the attachment.
    len: usize,
    /// Plaintext length.
    pub plain_len: u64,
    /// SHA-256 of the plaintext, for plain chunks.
    pub sha256: Option<[u8; 32]>,
    /// The nonce prefix, for segmented chunks: what the record pins the chunk by.
    pub prefix: Option<[u8; NONCE_PREFIX_LEN]>,
}

impl std::fmt::Debug for SealedChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedChunk")
            .field("len", &self.len)
            .field("plain_len", &self.plain_len)
            .finish_non_exhaustive()
    }
}

impl SealedChunk {
    /// The attachment's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The attachment's bytes, as `Bytes` that give a pooled buffer back when dropped.
    pub fn into_bytes(mut self) -> Bytes {
        buffers::into_bytes(std::mem::take(&mut self.bytes), self.len)
    }
}

impl Drop for SealedChunk {
    /// A chunk dropped unsent (an upload that failed) gives its buffer back too.
    fn drop(&mut self) {
        buffers::give_back(std::mem::take(&mut self.bytes));
    }
}

// ---------------------------------------------------------------------------------------
// Opening

/// Associated data of a segment: `"DCFC" ‖ 2 ‖ file id ‖ chunk index (u64 LE) ‖
/// segment index (u32 LE) ‖ last (1 or 0)`; [`set_segment`] fills in the last two.
fn segment_aad(file: FileId, index: u64) -> [u8; 4 + 1 + 16 + 8 + 4 + 1] {
    let mut aad = [0u8; 34];
    aad[0..4].copy_from_slice(&CHUNK_MAGIC);
    aad[4] = CHUNK_VERSION;
    aad[5..21].copy_from_slice(&file.0);
    aad[21..29].copy_from_slice(&index.to_le_bytes());
    aad
}

fn set_segment(aad: &mut [u8; 34], segment: u64, last: bool) {
    aad[29..33].copy_from_slice(&(segment as u32).to_le_bytes());
    aad[33] = u8::from(last);
}

/// A segment's nonce: the chunk's prefix ‖ the segment index (u32, big endian).
fn segment_nonce(prefix: [u8; NONCE_PREFIX_LEN], segment: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..NONCE_PREFIX_LEN].copy_from_slice(&prefix);
    nonce[NONCE_PREFIX_LEN..].copy_from_slice(&(segment as u32).to_be_bytes());
    nonce
}

/// Opens segments `first..` of segmented chunk `index` of `file`, as the record
/// describes it (`chunk`), from `sealed`: their bytes as stored, exactly (see
/// [`segments_span`]). Returns each segment's plaintext, as views of `sealed`. Fails on
/// any mismatch (a segment moved, dropped, cut short, from another chunk or another
/// sealing): never returns bytes that aren't the file's.
pub fn open_segments(
    key: &Key,
    file: FileId,
    index: u64,
    chunk: &ChunkRef,
    first: u64,
    sealed: Vec<u8>,
) -> Result<Vec<Bytes>, FormatError> {
    open_segments_in(key, file, index, chunk, first, sealed, 0)
}

/// [`open_segments`] of the sealed bytes `buffer[skip..]` (a buffer read into at an
/// offset, as direct reads need aligned memory).
pub fn open_segments_at(
    key: &Key,
    file: FileId,
    index: u64,
    chunk: &ChunkRef,
    first: u64,
    buffer: Vec<u8>,
    skip: usize,
) -> Result<Vec<Bytes>, FormatError> {
    open_segments_in(key, file, index, chunk, first, buffer, skip)
}

/// [`open_segments`] of segments from 0 on, given with the chunk's header in front (so
/// that a chunk that isn't the version the record names says so).
pub fn open_segments_with_header(
    key: &Key,
    file: FileId,
    index: u64,
    chunk: &ChunkRef,
    sealed: Vec<u8>,
) -> Result<Vec<Bytes>, FormatError> {
    open_segments_with_header_at(key, file, index, chunk, sealed, 0)
}

/// [`open_segments_with_header`] of the bytes `buffer[skip..]`.
pub fn open_segments_with_header_at(
    key: &Key,
    file: FileId,
    index: u64,
    chunk: &ChunkRef,
    buffer: Vec<u8>,
    skip: usize,
) -> Result<Vec<Bytes>, FormatError> {
    check_header(index, chunk, buffer.get(skip..).unwrap_or_default())?;
    let skip = skip + SEGMENTED_HEADER_LEN;
    open_segments_in(key, file, index, chunk, 0, buffer, skip)
}

/// The header of a segmented chunk must be one, of the sealing the record names.
fn check_header(index: u64, chunk: &ChunkRef, data: &[u8]) -> Result<(), FormatError> {
    if data.len() < SEGMENTED_HEADER_LEN || data[0..4] != CHUNK_MAGIC {
        return Err(damaged("chunk", format!("chunk {index} is not ours")));
    }
    if data[4] != CHUNK_VERSION {
        return Err(damaged(
            "chunk",
            format!("chunk {index} is not the kind the record names"),
        ));
    }
    if Some(&data[5..SEGMENTED_HEADER_LEN]) != chunk.prefix.as_ref().map(|p| &p[..]) {
        return Err(damaged(
            "chunk",
            format!("chunk {index} is not the version the record names"),
        ));
    }
    Ok(())
}

/// [`open_segments`] of the bytes of `buffer` from `skip` on (so that a whole
/// attachment opens without moving its segments off the header).
fn open_segments_in(
    key: &Key,
    file: FileId,
    index: u64,
    chunk: &ChunkRef,
    first: u64,
    buffer: Vec<u8>,
    skip: usize,
) -> Result<Vec<Bytes>, FormatError> {
    let Some(prefix) = chunk.prefix else {
        return Err(damaged("record", format!("chunk {index} is not segmented")));
    };
    let count = segment_count(chunk.len);
    let whole = segments_span(chunk.len, 0..count);
    let start = segments_span(chunk.len, first..first + 1).start;
    let end = start + (buffer.len() - skip.min(buffer.len())) as u64;
    let last = (first..count)
        .find(|&s| segments_span(chunk.len, first..s + 1).end == end)
        .filter(|_| first < count && end <= whole.end)
        .ok_or_else(|| {
            damaged(
                "chunk",
                format!(
                    "chunk {index}: {} bytes from segment {first} are no whole segments",
                    end - start
                ),
            )
        })?;
    let mut sealed = buffer;
    let mut aad = segment_aad(file, index);
    let mut spans = Vec::with_capacity((last + 1 - first) as usize);
    for segment in first..=last {
        let span = segments_span(chunk.len, segment..segment + 1);
        let at = skip + (span.start - start) as usize..skip + (span.end - start) as usize;
        let piece = &mut sealed[at.clone()];
        let (text, tag) = piece.split_at_mut(piece.len() - TAG_LEN);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().expect("tag length");
        set_segment(&mut aad, segment, segment + 1 == count);
        key.open_detached(&segment_nonce(prefix, segment), &aad, text, &tag)
            .map_err(|_| {
                damaged(
                    "chunk",
                    format!("chunk {index}, segment {segment} failed authentication"),
                )
            })?;
        spans.push(at.start..at.end - TAG_LEN);
    }
    let len = sealed.len();
    let sealed = buffers::into_bytes(sealed, len);
    Ok(spans.into_iter().map(|span| sealed.slice(span)).collect())
}

/// Opens a whole chunk `index` of `file` of any kind, as the record describes it
/// (`chunk`), from its attachment's bytes `data`, with `key` (the file's data key for
/// a segmented chunk, the key that sealed it for a whole one, none for a plain one).
/// Returns its plaintext in pieces of [`SEGMENT_LEN`] (views, not copies). Fails on any
/// mismatch: never returns bytes that aren't the file's.
pub fn open_chunk(
    key: Option<&Key>,
    file: FileId,
    encrypted: bool,
    index: u64,
    chunk: &ChunkRef,
    data: Vec<u8>,
) -> Result<Vec<Bytes>, FormatError> {
    let kind = chunk.kind(encrypted);
    if data.len() as u64 != kind.sealed_len(chunk.len) {
        return Err(damaged(
            "chunk",
            format!(
                "chunk {index} is {} bytes long, the record says it holds {}",
                data.len(),
                chunk.len
            ),
        ));
    }
    let plain = match kind {
        ChunkKind::Segmented => {
            let key = key.ok_or(FormatError::KeyNeeded)?;
            return open_segments_with_header(key, file, index, chunk, data);
        }
        ChunkKind::Whole => open_whole(key, file, index, chunk, data)?,
        ChunkKind::Plain => {
            let expected = chunk
                .sha256
                .ok_or_else(|| damaged("record", format!("plain chunk {index} has no checksum")))?;
            let actual: [u8; 32] = Sha256::digest(&data).into();
            if actual != expected {
                return Err(damaged(
                    "chunk",
                    format!("chunk {index} does not match its checksum"),
                ));
            }
            Bytes::from(data)
        }
    };
    Ok(in_segments(plain))
}

/// Plaintext cut into views of [`SEGMENT_LEN`] (one, empty, for an empty chunk).
fn in_segments(plain: Bytes) -> Vec<Bytes> {
    let count = segment_count(plain.len() as u64);
    (0..count)
        .map(|s| {
            let span = segment_plain(plain.len() as u64, s);
            plain.slice(span.start as usize..span.end as usize)
        })
        .collect()
}

fn whole_aad(file: FileId, index: u64) -> [u8; 4 + 1 + 16 + 8] {
    let mut aad = [0u8; 29];
    aad[0..4].copy_from_slice(&CHUNK_MAGIC);
    aad[4] = WHOLE_CHUNK_VERSION;
    aad[5..21].copy_from_slice(&file.0);
    aad[21..29].copy_from_slice(&index.to_le_bytes());
    aad
}

/// Opens a whole (version 1) chunk.
fn open_whole(
    key: Option<&Key>,
    file: FileId,
    index: u64,
    chunk: &ChunkRef,
    mut data: Vec<u8>,
) -> Result<Bytes, FormatError> {
    let key = key.ok_or(FormatError::KeyNeeded)?;
    if data[0..4] != CHUNK_MAGIC {
        return Err(damaged(
            "chunk",
            format!("chunk {index} is not a dcloud-fs chunk"),
        ));
    }
    if data[4] != WHOLE_CHUNK_VERSION {
        return Err(damaged(
            "chunk",
            format!("chunk {index} is not the kind the record names"),
        ));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&data[5..WHOLE_HEADER_LEN]);
    let tag_at = data.len() - TAG_LEN;
    let tag: [u8; TAG_LEN] = data[tag_at..].try_into().expect("tag length");
    if chunk.tag.is_some_and(|expected| expected != tag) {
        return Err(damaged(
            "chunk",
            format!("chunk {index} is not the version the record names"),
        ));
    }
    data.truncate(tag_at);
    key.open_detached(
        &nonce,
        &whole_aad(file, index),
        &mut data[WHOLE_HEADER_LEN..],
        &tag,
    )
    .map_err(|_| damaged("chunk", format!("chunk {index} failed authentication")))?;
    // A view past the header: the plaintext is not copied again.
    Ok(Bytes::from(data).slice(WHOLE_HEADER_LEN..))
}

/// The attachment name of the chunk at `position` in its message.
pub fn chunk_filename(position: u64) -> String {
    format!("c{position}.bin")
}

/// Seals a whole (version 1) chunk, as dcloud-fs wrote them before segments: for tests
/// of what older versions wrote.
#[doc(hidden)]
pub fn seal_whole_v1(key: &Key, file: FileId, index: u64, plain: &[u8]) -> (Vec<u8>, [u8; 16]) {
    let nonce = crypto::random_nonce().expect("random nonce");
    let mut bytes = Vec::with_capacity(plain.len() + WHOLE_OVERHEAD);
    bytes.extend_from_slice(&CHUNK_MAGIC);
    bytes.push(WHOLE_CHUNK_VERSION);
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(plain);
    let tag = key
        .seal_detached(
            &nonce,
            &whole_aad(file, index),
            &mut bytes[WHOLE_HEADER_LEN..],
        )
        .expect("seals");
    bytes.extend_from_slice(&tag);
    (bytes, tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ChunkLocation;

    const S: usize = SEGMENT_LEN;

    fn sealed(key: &Key, file: FileId, index: u64, data: &[u8]) -> SealedChunk {
        let mut buffer =
            ChunkBuffer::new(data.len(), Sealing::Encrypted(key), file, index).unwrap();
        buffer.extend_from_slice(data).unwrap();
        buffer.seal().unwrap()
    }

    fn reference(chunk: &SealedChunk) -> ChunkRef {
        ChunkRef {
            location: ChunkLocation::Attached {
                filename: "c0.bin".into(),
            },
            len: chunk.plain_len,
            sha256: chunk.sha256,
            tag: None,
            key: None,
            prefix: chunk.prefix,
            packed_at: None,
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 997) as u8).collect()
    }

    fn joined(blocks: Vec<Bytes>) -> Vec<u8> {
        blocks.concat()
    }

    /// The sealed bytes of segments `segments` of `chunk`.
    fn span_of(chunk: &SealedChunk, segments: Range<u64>) -> Vec<u8> {
        let span = segments_span(chunk.plain_len, segments);
        chunk.as_bytes()[span.start as usize..span.end as usize].to_vec()
    }

    #[test]
    fn segmented_chunks_round_trip_whole_and_by_range() {
        let key = Key::generate().unwrap();
        let file = FileId::random().unwrap();
        for len in [0, 1, 100, S - 1, S, S + 1, 3 * S, 3 * S + 5] {
            let plain = data(len);
            let chunk = sealed(&key, file, 4, &plain);
            let count = segment_count(len as u64);
            assert_eq!(
                chunk.as_bytes().len() as u64,
                ChunkKind::Segmented.sealed_len(len as u64)
            );
            let r = reference(&chunk);
            let whole = open_chunk(Some(&key), file, true, 4, &r, chunk.as_bytes().to_vec());
            assert_eq!(joined(whole.unwrap()), plain, "{len} bytes, whole");
            for first in 0..count {
                for last in first..count {
                    let opened =
                        open_segments(&key, file, 4, &r, first, span_of(&chunk, first..last + 1))
                            .unwrap();
                    let want = segment_plain(len as u64, first).start as usize
                        ..segment_plain(len as u64, last).end as usize;
                    assert_eq!(joined(opened), plain[want], "{len} bytes, {first}..={last}");
                }
            }
        }
    }

    #[test]
    fn the_plaintext_doesnt_show() {
        let key = Key::generate().unwrap();
        let plain = b"secret bytes of the file, secret bytes of the file".repeat(3000);
        let chunk = sealed(&key, FileId::random().unwrap(), 0, &plain);
        assert!(!chunk.as_bytes().windows(12).any(|w| w == b"secret bytes"));
    }

    #[test]
    fn capacity_is_the_inverse_of_the_sealed_length() {
        for kind in [ChunkKind::Plain, ChunkKind::Whole, ChunkKind::Segmented] {
            for plain in [0u64, 1, 65535, 65536, 65537, 8 << 20, (8 << 20) + 3] {
                let sealed = kind.sealed_len(plain);
                assert!(kind.capacity(sealed) >= plain, "{kind:?} {plain}");
                assert!(kind.sealed_len(kind.capacity(sealed)) <= sealed);
                assert!(kind.sealed_len(kind.capacity(sealed) + 1) > sealed);
            }
        }
    }

    #[test]
    fn reordered_dropped_or_cut_segments_are_refused() {
        let key = Key::generate().unwrap();
        let file = FileId::random().unwrap();
        let plain = data(3 * S);
        let chunk = sealed(&key, file, 0, &plain);
        let r = reference(&chunk);
        let seg = |i: u64| span_of(&chunk, i..i + 1);
        // Reordered: segment 1's bytes where segment 0 belongs, and the other way.
        let swapped = [seg(1), seg(0), seg(2)].concat();
        assert!(open_segments(&key, file, 0, &r, 0, swapped).is_err());
        assert!(open_segments(&key, file, 0, &r, 0, seg(1)).is_err());
        // Dropped: segments 0 and 2 only, where 0..2 belongs (and as a whole chunk).
        let dropped = [seg(0), seg(2)].concat();
        assert!(open_segments(&key, file, 0, &r, 0, dropped.clone()).is_err());
        let mut whole = chunk.as_bytes()[..SEGMENTED_HEADER_LEN].to_vec();
        whole.extend_from_slice(&dropped);
        assert!(open_chunk(Some(&key), file, true, 0, &r, whole).is_err());
        // Cut short, and a record made to claim only what is left: the segment that is
        // now last wasn't sealed as the last one.
        let cut = chunk.as_bytes()[..segments_span(3 * S as u64, 0..2).end as usize].to_vec();
        let mut shorter = r.clone();
        shorter.len = 2 * S as u64;
        assert!(open_chunk(Some(&key), file, true, 0, &r, cut.clone()).is_err());
        let refused = open_chunk(Some(&key), file, true, 0, &shorter, cut).unwrap_err();
        assert!(refused.to_string().contains("failed authentication"));
        // A last segment claimed to be a middle one: a longer record than the chunk.
        let mut longer = r.clone();
        longer.len = 4 * S as u64;
        assert!(open_segments(&key, file, 0, &longer, 2, seg(2)).is_err());
        // Bytes that are no whole segments.
        assert!(open_segments(&key, file, 0, &r, 0, seg(0)[..100].to_vec()).is_err());
        assert!(open_segments(&key, file, 0, &r, 3, Vec::new()).is_err());
    }

    #[test]
    fn an_older_sealing_or_another_place_is_refused() {
        let key = Key::generate().unwrap();
        let file = FileId::random().unwrap();
        let old = sealed(&key, file, 2, &data(S + 10));
        let new = sealed(&key, file, 2, &data(S + 10));
        let r = reference(&new);
        let opened = open_chunk(Some(&key), file, true, 2, &r, new.as_bytes().to_vec());
        assert!(opened.is_ok());
        let rolled_back = open_chunk(Some(&key), file, true, 2, &r, old.as_bytes().to_vec());
        assert!(
            rolled_back
                .unwrap_err()
                .to_string()
                .contains("not the version")
        );
        assert!(open_segments(&key, file, 2, &r, 0, span_of(&old, 0..2)).is_err());
        // Another chunk index, another file, another key.
        let bytes = || span_of(&new, 0..2);
        assert!(open_segments(&key, file, 3, &r, 0, bytes()).is_err());
        assert!(open_segments(&key, FileId::random().unwrap(), 2, &r, 0, bytes()).is_err());
        assert!(open_segments(&Key::generate().unwrap(), file, 2, &r, 0, bytes()).is_err());
        assert!(open_segments(&key, file, 2, &r, 0, bytes()).is_ok());
    }

    #[test]
    fn flipped_bytes_fail_to_open() {
        let key = Key::generate().unwrap();
        let file = FileId::random().unwrap();
        let chunk = sealed(&key, file, 0, &data(S + 1000));
        let r = reference(&chunk);
        let len = chunk.as_bytes().len();
        for position in [0, 4, 6, 13, 500, S + 13, S + 29, S + 40, len - 1] {
            let mut damaged_bytes = chunk.as_bytes().to_vec();
            damaged_bytes[position] ^= 0x40;
            assert!(
                open_chunk(Some(&key), file, true, 0, &r, damaged_bytes).is_err(),
                "byte {position}"
            );
        }
    }

    #[test]
    fn whole_version_1_chunks_still_open_and_are_pinned_by_their_tag() {
        let key = Key::generate().unwrap();
        let file = FileId::random().unwrap();
        let plain = data(S * 2 + 7);
        let (bytes, tag) = seal_whole_v1(&key, file, 1, &plain);
        let (older, _) = seal_whole_v1(&key, file, 1, &plain);
        let r = ChunkRef {
            location: ChunkLocation::Attached {
                filename: "c0.bin".into(),
            },
            len: plain.len() as u64,
            sha256: None,
            tag: Some(tag),
            key: None,
            prefix: None,
            packed_at: None,
        };
        let opened = open_chunk(Some(&key), file, true, 1, &r, bytes.clone()).unwrap();
        assert_eq!(opened.len(), 3, "cut into blocks");
        assert_eq!(joined(opened), plain);
        let rolled_back = open_chunk(Some(&key), file, true, 1, &r, older);
        assert!(
            rolled_back
                .unwrap_err()
                .to_string()
                .contains("not the version")
        );
        assert!(open_chunk(Some(&key), file, true, 0, &r, bytes.clone()).is_err());
        assert!(open_chunk(None, file, true, 1, &r, bytes).is_err());
    }

    #[test]
    fn plain_chunks_are_the_bytes_and_checked_by_checksum() {
        let file = FileId::random().unwrap();
        let mut buffer = ChunkBuffer::new(5, Sealing::Plain, file, 0).unwrap();
        buffer.extend_from_slice(b"hello").unwrap();
        let chunk = buffer.seal().unwrap();
        assert_eq!(chunk.as_bytes(), b"hello");
        let r = reference(&chunk);
        let opened = open_chunk(None, file, false, 0, &r, b"hello".to_vec()).unwrap();
        assert_eq!(joined(opened), b"hello");
        assert!(open_chunk(None, file, false, 0, &r, b"hellp".to_vec()).is_err());
    }

    #[test]
    fn a_buffer_filled_from_a_reader_seals_like_one_extended() {
        let key = Key::generate().unwrap();
        let file = FileId([9; 16]);
        for len in [2 * S + 300, 2 * S, S, 1] {
            filled_and_extended_agree(&key, file, &data(len));
        }
    }

    fn filled_and_extended_agree(key: &Key, file: FileId, plain: &[u8]) {
        let mut filled = ChunkBuffer::new(8 << 20, Sealing::Encrypted(key), file, 0).unwrap();
        // A reader that hands out odd-sized pieces.
        struct Dribble<'a>(&'a [u8]);
        impl std::io::Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(1000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let read = filled.fill_from(&mut Dribble(plain), 8 << 20).unwrap();
        assert_eq!(read, plain.len());
        let chunk = filled.seal().unwrap();
        let r = reference(&chunk);
        let bytes = chunk.into_bytes();
        let opened = open_chunk(Some(key), file, true, 0, &r, bytes.to_vec()).unwrap();
        assert_eq!(joined(opened), plain, "{} bytes", plain.len());
        drop(bytes); // the pooled buffer goes back, and is used again below
        let again = sealed(key, file, 0, plain);
        let r = reference(&again);
        let opened = open_chunk(Some(key), file, true, 0, &r, again.as_bytes().to_vec());
        assert_eq!(joined(opened.unwrap()), plain);
    }
}
