//! The body of a checkpoint of version 9 and later: the state the JSON body of versions
//! 5 to 8 holds ([`CheckpointBody`]), in postcard, a compact binary encoding whose
//! layout the [format docs](crate::format) give (Checkpoints, the binary body).
//!
//! Why binary: a fresh machine reads a big channel's whole index from its checkpoint.
//! For 100,000 files the JSON body was 44 MB, and parsing it (ids as decimal strings,
//! tags and keys in base64, every operation buffered to find its `op` tag) took most of
//! a fresh mount's CPU; this body holds the same in about a third of the bytes and
//! decodes without a text parser. It is converted to and from [`CheckpointBody`], so
//! the checks a reader makes ([`CheckpointBody::validate`]) and the index built from it
//! are the same for both encodings.

use serde::{Deserialize, Serialize};

use super::{CheckpointBody, CheckpointData, CheckpointMove, CheckpointPath, CheckpointStamp};
use crate::crypto::KeyId;
use crate::format::{
    ChunkLocation, ChunkRef, DataKey, DirManifest, FileId, FileManifest, FormatError, Meta, Op,
    Special, SpecialKind, XattrValue, damaged,
};
use crate::store::Id;

/// The whole body, its fields in the order written.
#[derive(Serialize, Deserialize)]
struct Body {
    channel: Id,
    last_seen: Id,
    collected: Id,
    max_seq: u64,
    cutover: Option<Id>,
    paths: Vec<Path>,
    records: Vec<Id>,
    data: Vec<([u8; 16], Vec<Id>)>,
    tombstones: Vec<Id>,
    foreign: Vec<Id>,
    moved_out: Vec<Move>,
    unread: Vec<Id>,
}

#[derive(Serialize, Deserialize)]
struct Stamp {
    seq: u64,
    m: Id,
    i: u32,
}

#[derive(Serialize, Deserialize)]
struct Move {
    c: Id,
    m: Id,
    to: Id,
    s: Stamp,
}

#[derive(Serialize, Deserialize)]
struct Path {
    s: Stamp,
    r: Option<Id>,
    path: String,
    held: Held,
}

/// What holds a path: variant 0, 1, 2 in postcard.
#[derive(Serialize, Deserialize)]
enum Held {
    Put(File),
    Mkdir(Dir),
    Del,
}

#[derive(Serialize, Deserialize)]
struct File {
    id: [u8; 16],
    size: u64,
    mtime_ns: i64,
    mode: u32,
    encrypted: bool,
    chunks: Vec<Chunk>,
    data_key: Option<[u8; 32]>,
    symlink: Option<String>,
    /// The kind (0 FIFO, 1 socket, 2 character device, 3 block device) and `rdev`.
    special: Option<(u8, u64)>,
    node: Option<[u8; 16]>,
    meta: BinaryMeta,
}

#[derive(Serialize, Deserialize)]
struct Dir {
    mtime_ns: i64,
    mode: u32,
    meta: BinaryMeta,
}

#[derive(Serialize, Deserialize)]
struct Chunk {
    channel: Option<Id>,
    message: Id,
    attachment: Id,
    len: u64,
    sha256: Option<[u8; 32]>,
    tag: Option<[u8; 16]>,
    key: Option<[u8; 8]>,
    prefix: Option<[u8; 8]>,
    packed_at: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct BinaryMeta {
    uid: Option<u32>,
    gid: Option<u32>,
    atime_ns: Option<i64>,
    ctime_ns: Option<i64>,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// `body` in the binary encoding. Fails only for a chunk held in a record's own message
/// by file name, which no checkpoint holds (the index knows every chunk by ids).
pub(super) fn encode(body: &CheckpointBody) -> Result<Vec<u8>, FormatError> {
    let paths = (body.paths.iter())
        .map(path_out)
        .collect::<Result<Vec<Path>, FormatError>>()?;
    let binary = Body {
        channel: body.channel,
        last_seen: body.last_seen,
        collected: body.collected,
        max_seq: body.max_seq,
        cutover: body.cutover,
        paths,
        records: body.records.clone(),
        data: (body.data.iter()).map(|d| (d.id.0, d.m.clone())).collect(),
        tombstones: body.tombstones.clone(),
        foreign: body.foreign.clone(),
        moved_out: (body.moved_out.iter())
            .map(|m| Move {
                c: m.c,
                m: m.m,
                to: m.to,
                s: stamp_out(m.s),
            })
            .collect(),
        unread: body.unread.clone(),
    };
    Ok(postcard::to_stdvec(&binary).expect("checkpoints encode"))
}

/// The body `bytes` encode; any trailing byte makes it damaged.
pub(super) fn decode(bytes: &[u8]) -> Result<CheckpointBody, FormatError> {
    let bad = |e: String| damaged("checkpoint", e);
    let (body, rest): (Body, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| bad(format!("binary body: {e}")))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes after the body", rest.len())));
    }
    Ok(CheckpointBody {
        channel: body.channel,
        last_seen: body.last_seen,
        collected: body.collected,
        max_seq: body.max_seq,
        cutover: body.cutover,
        paths: (body.paths.into_iter())
            .map(path_in)
            .collect::<Result<_, _>>()?,
        records: body.records,
        data: (body.data.into_iter())
            .map(|(id, m)| CheckpointData { id: FileId(id), m })
            .collect(),
        tombstones: body.tombstones,
        foreign: body.foreign,
        moved_out: (body.moved_out.into_iter())
            .map(|m| CheckpointMove {
                c: m.c,
                m: m.m,
                to: m.to,
                s: stamp_in(m.s),
            })
            .collect(),
        unread: body.unread,
    })
}

fn stamp_out(s: CheckpointStamp) -> Stamp {
    Stamp {
        seq: s.seq,
        m: s.m,
        i: s.i,
    }
}

fn stamp_in(s: Stamp) -> CheckpointStamp {
    CheckpointStamp {
        seq: s.seq,
        m: s.m,
        i: s.i,
    }
}

fn path_out(path: &CheckpointPath) -> Result<Path, FormatError> {
    let held = match &path.op {
        Op::Put(file) => Held::Put(File {
            id: file.id.0,
            size: file.size,
            mtime_ns: file.mtime_ns,
            mode: file.mode,
            encrypted: file.encrypted,
            chunks: (file.chunks.iter())
                .map(|chunk| chunk_out(&file.path, chunk))
                .collect::<Result<_, _>>()?,
            data_key: file.data_key.map(|k| k.0),
            symlink: file.symlink.clone(),
            special: file.special.map(|s| (kind_out(s.kind), s.rdev)),
            node: file.node.map(|n| n.0),
            meta: meta_out(&file.meta),
        }),
        Op::Mkdir(dir) => Held::Mkdir(Dir {
            mtime_ns: dir.mtime_ns,
            mode: dir.mode,
            meta: meta_out(&dir.meta),
        }),
        Op::Del { moved: None, .. } => Held::Del,
        other => {
            return Err(damaged(
                "checkpoint",
                format!("'{}' is held by what no checkpoint holds", other.path()),
            ));
        }
    };
    Ok(Path {
        s: stamp_out(path.s),
        r: path.r,
        path: path.op.path().to_string(),
        held,
    })
}

fn path_in(path: Path) -> Result<CheckpointPath, FormatError> {
    let Path { s, r, path, held } = path;
    let op = match held {
        Held::Put(file) => Op::Put(FileManifest {
            chunks: (file.chunks.into_iter()).map(chunk_in).collect(),
            id: FileId(file.id),
            size: file.size,
            mtime_ns: file.mtime_ns,
            mode: file.mode,
            encrypted: file.encrypted,
            data_key: file.data_key.map(DataKey),
            symlink: file.symlink,
            special: match file.special {
                None => None,
                Some((kind, rdev)) => Some(Special {
                    kind: kind_in(kind).ok_or_else(|| {
                        damaged("checkpoint", format!("'{path}': special file kind {kind}"))
                    })?,
                    rdev,
                }),
            },
            node: file.node.map(FileId),
            meta: meta_in(file.meta),
            path,
        }),
        Held::Mkdir(dir) => Op::Mkdir(DirManifest {
            path,
            mtime_ns: dir.mtime_ns,
            mode: dir.mode,
            meta: meta_in(dir.meta),
        }),
        Held::Del => Op::Del { path, moved: None },
    };
    Ok(CheckpointPath {
        s: stamp_in(s),
        op,
        r,
    })
}

fn chunk_out(path: &str, chunk: &ChunkRef) -> Result<Chunk, FormatError> {
    let ChunkLocation::Stored {
        channel,
        message,
        attachment,
    } = chunk.location
    else {
        return Err(damaged(
            "checkpoint",
            format!("'{path}': a chunk known by file name only"),
        ));
    };
    Ok(Chunk {
        channel,
        message,
        attachment,
        len: chunk.len,
        sha256: chunk.sha256,
        tag: chunk.tag,
        key: chunk.key.map(|k| k.0),
        prefix: chunk.prefix,
        packed_at: chunk.packed_at,
    })
}

fn chunk_in(chunk: Chunk) -> ChunkRef {
    ChunkRef {
        location: ChunkLocation::Stored {
            channel: chunk.channel,
            message: chunk.message,
            attachment: chunk.attachment,
        },
        len: chunk.len,
        sha256: chunk.sha256,
        tag: chunk.tag,
        key: chunk.key.map(KeyId),
        prefix: chunk.prefix,
        packed_at: chunk.packed_at,
    }
}

fn meta_out(meta: &Meta) -> BinaryMeta {
    BinaryMeta {
        uid: meta.uid,
        gid: meta.gid,
        atime_ns: meta.atime_ns,
        ctime_ns: meta.ctime_ns,
        xattrs: (meta.xattrs.iter())
            .map(|(name, value)| (name.clone(), value.0.clone()))
            .collect(),
    }
}

fn meta_in(meta: BinaryMeta) -> Meta {
    Meta {
        uid: meta.uid,
        gid: meta.gid,
        atime_ns: meta.atime_ns,
        ctime_ns: meta.ctime_ns,
        xattrs: (meta.xattrs.into_iter())
            .map(|(name, value)| (name, XattrValue(value)))
            .collect(),
    }
}

const SPECIAL_KINDS: [SpecialKind; 4] = [
    SpecialKind::Fifo,
    SpecialKind::Socket,
    SpecialKind::Char,
    SpecialKind::Block,
];

fn kind_out(kind: SpecialKind) -> u8 {
    SPECIAL_KINDS
        .iter()
        .position(|k| *k == kind)
        .expect("every kind") as u8
}

fn kind_in(kind: u8) -> Option<SpecialKind> {
    SPECIAL_KINDS.get(kind as usize).copied()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn stamp(m: Id, i: u32) -> CheckpointStamp {
        CheckpointStamp { seq: m / 10, m, i }
    }

    fn chunk(channel: Option<Id>, message: Id, packed_at: Option<u64>) -> ChunkRef {
        ChunkRef {
            location: ChunkLocation::Stored {
                channel,
                message,
                attachment: message + 1,
            },
            len: 1000,
            sha256: None,
            tag: Some([7; 16]),
            key: Some(KeyId([3; 8])),
            prefix: Some([9; 8]),
            packed_at,
        }
    }

    fn file(path: &str) -> FileManifest {
        FileManifest {
            path: path.into(),
            id: FileId([1; 16]),
            size: 2000,
            mtime_ns: -5,
            mode: 0o4755,
            encrypted: true,
            chunks: vec![chunk(None, 500, None), chunk(Some(42), 600, Some(77))],
            data_key: Some(DataKey([5; 32])),
            symlink: None,
            special: None,
            node: Some(FileId([2; 16])),
            meta: Meta {
                uid: Some(1234),
                gid: Some(5678),
                atime_ns: Some(i64::MIN),
                ctime_ns: Some(i64::MAX),
                xattrs: BTreeMap::from([
                    ("user.a".to_string(), XattrValue(b"blue".to_vec())),
                    ("user.empty".to_string(), XattrValue(Vec::new())),
                ]),
            },
        }
    }

    /// A body with every kind of path and every optional field, set and unset.
    fn every_kind() -> CheckpointBody {
        let plain = FileManifest {
            path: "d/plain".into(),
            encrypted: false,
            chunks: vec![ChunkRef {
                sha256: Some([8; 32]),
                tag: None,
                key: None,
                prefix: None,
                ..chunk(None, 700, None)
            }],
            size: 1000,
            data_key: None,
            node: None,
            meta: Meta::default(),
            ..file("d/plain")
        };
        let empty = |path: &str, symlink: Option<&str>, special: Option<Special>| FileManifest {
            chunks: Vec::new(),
            size: 0,
            data_key: None,
            symlink: symlink.map(String::from),
            special,
            ..file(path)
        };
        let paths = vec![
            (Op::Put(file("d/é file")), None),
            (Op::Put(plain), Some(720)),
            (Op::Put(empty("d/link", Some("../x"), None)), None),
            (
                Op::Put(empty(
                    "d/dev",
                    None,
                    Some(Special {
                        kind: SpecialKind::Block,
                        rdev: 0x0803,
                    }),
                )),
                None,
            ),
            (
                Op::Put(empty(
                    "d/fifo",
                    None,
                    Some(Special {
                        kind: SpecialKind::Fifo,
                        rdev: 0,
                    }),
                )),
                None,
            ),
            (
                Op::Mkdir(DirManifest {
                    path: "d".into(),
                    mtime_ns: 12,
                    mode: 0o1777,
                    meta: file("d").meta,
                }),
                None,
            ),
            (
                Op::Del {
                    path: "gone".into(),
                    moved: None,
                },
                None,
            ),
        ];
        CheckpointBody {
            channel: 77,
            last_seen: 900,
            collected: 300,
            max_seq: 90,
            cutover: Some(5),
            paths: (paths.into_iter().enumerate())
                .map(|(i, (op, r))| CheckpointPath {
                    s: stamp(800, i as u32),
                    op,
                    r,
                })
                .collect(),
            records: vec![800, 810],
            data: vec![CheckpointData {
                id: FileId([1; 16]),
                m: vec![500, 600],
            }],
            tombstones: vec![800],
            foreign: vec![7, u64::MAX],
            moved_out: vec![CheckpointMove {
                c: 77,
                m: 400,
                to: 88,
                s: stamp(410, 2),
            }],
            unread: vec![850],
        }
    }

    #[test]
    fn every_field_comes_back_as_it_went() {
        let body = every_kind();
        let bytes = encode(&body).unwrap();
        assert_eq!(decode(&bytes).unwrap(), body);
        let json = serde_json::to_vec(&body).unwrap();
        assert!(
            bytes.len() * 2 < json.len(),
            "{} bytes against {} in JSON",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn a_cut_or_lengthened_or_altered_body_is_damaged_not_a_panic() {
        let bytes = encode(&every_kind()).unwrap();
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "cut to {len} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        // Every byte changed in turn: an error or another body, never a panic, and
        // never a length taken at its word (a huge count fails at the end of the input).
        for at in 0..bytes.len() {
            for value in [0x00, 0x7f, 0xff] {
                let mut altered = bytes.clone();
                altered[at] = value;
                let _ = decode(&altered);
            }
        }
    }

    #[test]
    fn what_no_checkpoint_holds_is_refused_when_written() {
        let mut body = every_kind();
        body.paths[0].op = Op::Del {
            path: "x".into(),
            moved: Some(crate::format::Moved {
                to: 88,
                messages: vec![(77, 1)],
            }),
        };
        assert!(encode(&body).is_err());
        let mut body = every_kind();
        if let Op::Put(file) = &mut body.paths[0].op {
            file.chunks[0].location = ChunkLocation::Attached {
                filename: "c0.bin".into(),
            };
        }
        assert!(encode(&body).is_err());
    }

    #[test]
    fn an_unknown_special_kind_is_damaged() {
        let mut body = every_kind();
        let Op::Put(fifo) = &mut body.paths[4].op else {
            panic!("the FIFO")
        };
        assert_eq!(fifo.special.map(|s| s.kind), Some(SpecialKind::Fifo));
        let bytes = encode(&body).unwrap();
        let mut binary: Body = postcard::from_bytes(&bytes).unwrap();
        let Held::Put(fifo) = &mut binary.paths[4].held else {
            panic!("the FIFO")
        };
        fifo.special = Some((4, 0));
        let altered = postcard::to_stdvec(&binary).unwrap();
        assert!(decode(&altered).is_err());
    }
}
