//! Checkpoints (version 5): a channel's whole replayed state, sealed, so that a reader
//! that has nothing cached loads one and replays only the messages after it. The layout
//! and the rules are specified in the [parent module's docs](super) (Checkpoints); this
//! module is their one implementation: the messages' contents, the envelope, and the
//! body with its checks: JSON in versions 5 to 8, binary since 9 ([`binary`]), both
//! read into one [`CheckpointBody`] and checked alike.

use serde::{Deserialize, Serialize};

use super::record::{OpenedEnvelope, id_string, open_envelope, seal_envelope};
use super::{FileId, FormatError, Op, RecordSeal, damaged, validate_path};
use crate::crypto::Key;
use crate::store::{Id, Limits, NewAttachment};

mod binary;

/// The first checkpoint version whose body is binary ([`binary`]); the JSON bodies of
/// versions 5 to 8 stay readable.
pub const BINARY_CHECKPOINT_VERSION: u8 = 9;

/// First bytes of a checkpoint envelope.
pub const CHECKPOINT_MAGIC: [u8; 4] = *b"DCFK";
/// Start of the content of a checkpoint's head message (the one that is pinned):
/// `dcfs1 checkpoint <last seen> <collected>[ <part message>,<part message>,…]`.
pub const CHECKPOINT_CONTENT: &str = "dcfs1 checkpoint";
/// The content of a message holding parts of a checkpoint that didn't fit its head.
pub const CHECKPOINT_PART_CONTENT: &str = "dcfs1 checkpoint part";
/// Largest checkpoint envelope a reader accepts (the sum of its parts), so that no
/// length read from the store makes it allocate without bound.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;
/// Most part messages a head may name (its content must stay under Discord's 2000
/// characters: 20 per id).
pub const MAX_CHECKPOINT_PART_MESSAGES: usize = 90;

/// What a checkpoint's head message says in its content. Not authenticated: a reader
/// checks it against the sealed body it assembles (a wrong part list fails to open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointHead {
    /// The body's `last_seen`: the newest message the state covers.
    pub covers: Id,
    /// The body's `collected`: `gc` deleted messages older than this one (0: never).
    pub collected: Id,
    /// The messages holding the envelope's first parts, in order; the head's own
    /// attachments hold the last ones.
    pub parts: Vec<Id>,
}

impl CheckpointHead {
    /// The head message's content.
    pub fn content(&self) -> String {
        let mut content = format!("{CHECKPOINT_CONTENT} {} {}", self.covers, self.collected);
        if !self.parts.is_empty() {
            let parts: Vec<String> = self.parts.iter().map(Id::to_string).collect();
            content.push(' ');
            content.push_str(&parts.join(","));
        }
        content
    }

    /// Reads a head message's content (`None`: not a checkpoint head).
    pub fn parse(content: &str) -> Option<CheckpointHead> {
        let rest = content
            .strip_prefix(CHECKPOINT_CONTENT)?
            .strip_prefix(' ')?;
        let mut words = rest.split(' ');
        let covers = words.next()?.parse().ok()?;
        let collected = words.next()?.parse().ok()?;
        let parts = match words.next() {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|id| id.parse().ok())
                .collect::<Option<Vec<Id>>>()?,
        };
        if words.next().is_some() || parts.len() > MAX_CHECKPOINT_PART_MESSAGES {
            return None;
        }
        Some(CheckpointHead {
            covers,
            collected,
            parts,
        })
    }
}

/// The name of the `n`th part attachment of a checkpoint message.
pub fn part_filename(n: usize) -> String {
    format!("k{n}.bin")
}

/// The number of a part attachment's name (`None`: not a part).
pub fn part_number(filename: &str) -> Option<usize> {
    filename
        .strip_prefix('k')?
        .strip_suffix(".bin")?
        .parse()
        .ok()
}

/// A checkpoint envelope cut into attachments, grouped into messages within `limits`:
/// every message but the last is a part message, the last is the head.
pub fn checkpoint_messages(envelope: &[u8], limits: &Limits) -> Vec<Vec<NewAttachment>> {
    let part_len = limits.max_file_size.min(limits.max_request_size).max(1) as usize;
    let mut messages: Vec<Vec<NewAttachment>> = vec![Vec::new()];
    let mut in_message = 0u64;
    for piece in envelope.chunks(part_len) {
        let full = messages.last().is_some_and(|m| {
            !m.is_empty()
                && (m.len() >= limits.max_attachments
                    || in_message + piece.len() as u64 > limits.max_request_size)
        });
        if full {
            messages.push(Vec::new());
            in_message = 0;
        }
        let message = messages.last_mut().expect("one message at least");
        message.push(NewAttachment {
            filename: part_filename(message.len()),
            data: bytes::Bytes::copy_from_slice(piece),
        });
        in_message += piece.len() as u64;
    }
    messages
}

/// The stamp of the operation that holds a path (see Replay): the record's `seq` (0
/// for a version-1 record), its message and the operation's position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStamp {
    pub seq: u64,
    #[serde(with = "id_string")]
    pub m: Id,
    pub i: u32,
}

/// One path of the state: the operation that holds it and its stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPath {
    pub s: CheckpointStamp,
    pub op: Op,
    /// The relocation record message that holds a `put` when a `relocate` (version 6)
    /// set it: its chunks named by `f` there are named by `m` and `a` here, and this
    /// message (not `s.m`) is the file's record message. `None`: `s.m` is.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_id")]
    pub r: Option<Id>,
}

/// The data messages of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointData {
    pub id: FileId,
    #[serde(with = "id_list")]
    pub m: Vec<Id>,
}

/// A link of a file moved away: message `m` of channel `c` is used in channel `to`
/// since the moved delete with stamp `s`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMove {
    #[serde(with = "id_string")]
    pub c: Id,
    #[serde(with = "id_string")]
    pub m: Id,
    #[serde(with = "id_string")]
    pub to: Id,
    pub s: CheckpointStamp,
}

/// A checkpoint's body: a channel's replayed state (see the module docs of
/// [`super`], Checkpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointBody {
    #[serde(with = "id_string")]
    pub channel: Id,
    #[serde(with = "id_string")]
    pub last_seen: Id,
    /// `gc` deleted tombstones and superseded records older than this message (0:
    /// never): a reader whose state is older must start again from this checkpoint.
    #[serde(with = "id_string")]
    pub collected: Id,
    pub max_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_id")]
    pub cutover: Option<Id>,
    pub paths: Vec<CheckpointPath>,
    #[serde(with = "id_list")]
    pub records: Vec<Id>,
    pub data: Vec<CheckpointData>,
    #[serde(with = "id_list")]
    pub tombstones: Vec<Id>,
    #[serde(with = "id_list")]
    pub foreign: Vec<Id>,
    pub moved_out: Vec<CheckpointMove>,
    #[serde(with = "id_list")]
    pub unread: Vec<Id>,
}

impl CheckpointBody {
    /// The checks a reader makes of a body it opened: it is for `channel`, covers no
    /// message after its head, and every path is valid, held once, by a `put`,
    /// `mkdir` or `del` that is valid as a record's.
    fn validate(&self, channel: Id, head: Id, version: u8) -> Result<(), FormatError> {
        let bad = |detail: String| Err(damaged("checkpoint", detail));
        if self.channel != channel {
            return bad(format!("made for channel {}", self.channel));
        }
        if self.last_seen >= head {
            return bad("covers messages posted after it".into());
        }
        if self.collected > self.last_seen {
            return bad("collected past what it covers".into());
        }
        let mut seen = std::collections::HashSet::with_capacity(self.paths.len());
        for path in &self.paths {
            validate_path(path.op.path())?;
            if !seen.insert(path.op.path()) {
                return bad(format!("'{}' is in it twice", path.op.path()));
            }
            if matches!(path.op, Op::Link { .. } | Op::Relocate(_)) {
                return bad(format!(
                    "'{}' is held by a link or a relocation",
                    path.op.path()
                ));
            }
            if let Some(r) = path.r {
                let problem = if version < 6 {
                    Some("a relocated put in a checkpoint older than version 6")
                } else if !matches!(path.op, Op::Put(_)) {
                    Some("a relocated operation that is not a put")
                } else if r <= path.s.m || r >= head {
                    Some("a relocation that is not between its put and the checkpoint")
                } else {
                    None
                };
                if let Some(why) = problem {
                    return bad(format!("'{}': {why}", path.op.path()));
                }
            }
            if path.s.seq > self.max_seq {
                return bad(format!("'{}' has a seq above the highest", path.op.path()));
            }
        }
        super::record::validate_ops(self.paths.iter().map(|p| &p.op), version)
            .map_err(|e| damaged("checkpoint", e.to_string()))
    }

    fn carries_keys(&self) -> bool {
        self.paths
            .iter()
            .any(|p| matches!(&p.op, Op::Put(file) if file.data_key.is_some()))
    }
}

/// Seals a checkpoint body, bound to its channel: encrypted under `key`, or unsigned
/// when there is none (a channel written without a key).
pub fn seal_checkpoint(body: &CheckpointBody, key: Option<&Key>) -> Result<Vec<u8>, FormatError> {
    let seal = match key {
        Some(key) => RecordSeal::Encrypted(key),
        None if body.carries_keys() => {
            return Err(damaged(
                "checkpoint",
                "a checkpoint that carries data keys must be encrypted",
            ));
        }
        None => RecordSeal::Unsigned,
    };
    seal_envelope(CHECKPOINT_MAGIC, binary::encode(body)?, seal, body.channel)
}

/// Opens (and consumes) a checkpoint envelope assembled from the parts its head `head` (message id)
/// names, found in `channel`. With a key, only a checkpoint sealed by that key counts
/// (another key's is [`crate::crypto::CryptoError::WrongKey`], an unsigned one is
/// refused); without one, only an unsigned one.
pub fn open_checkpoint(
    envelope: Vec<u8>,
    key: Option<&Key>,
    channel: Id,
    head: Id,
) -> Result<CheckpointBody, FormatError> {
    let OpenedEnvelope {
        json,
        version,
        authenticated,
        sealed_by,
    } = open_envelope(CHECKPOINT_MAGIC, "checkpoint", &envelope, key, channel)?;
    drop(envelope); // the JSON is a copy: don't hold both while it is parsed
    if version < 5 {
        return Err(damaged("checkpoint", format!("envelope version {version}")));
    }
    match (key, authenticated, sealed_by) {
        (Some(_), true, Some(_)) | (None, false, None) => {}
        (Some(_), _, _) => return Err(damaged("checkpoint", "not sealed by the key")),
        (None, _, _) => return Err(FormatError::KeyNeeded),
    }
    let body: CheckpointBody = if version >= BINARY_CHECKPOINT_VERSION {
        binary::decode(&json)?
    } else {
        serde_json::from_slice(&json).map_err(|e| damaged("checkpoint", e.to_string()))?
    };
    drop(json);
    body.validate(channel, head, version)?;
    if key.is_none() && body.carries_keys() {
        return Err(damaged("checkpoint", "data keys in an unsigned checkpoint"));
    }
    Ok(body)
}

/// Whether `content` is one of the checkpoint kinds (for [`super::classify`]): a head
/// or a part. Both have a space after the prefix's word, so that a reader of version 4
/// finds no base64 in them and takes them for messages that aren't ours.
pub(super) fn is_checkpoint_content(content: &str) -> bool {
    content
        .strip_prefix(CHECKPOINT_CONTENT)
        .is_some_and(|rest| rest.starts_with(' '))
}

/// Lists of ids as decimal strings.
mod id_list {
    use super::Id;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ids: &[Id], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(ids.iter().map(Id::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Id>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| {
                text.parse()
                    .map_err(|_| serde::de::Error::custom(format!("bad id '{text}'")))
            })
            .collect()
    }
}

/// An optional id as a decimal string.
mod opt_id {
    use super::Id;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<Id>, serializer: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => serializer.serialize_str(&id.to_string()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Id>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| {
                text.parse()
                    .map_err(|_| serde::de::Error::custom(format!("bad id '{text}'")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{MessageKind, classify};
    use base64::Engine;

    fn body(channel: Id) -> CheckpointBody {
        CheckpointBody {
            channel,
            last_seen: 900,
            collected: 0,
            max_seq: 3,
            cutover: Some(5),
            paths: vec![CheckpointPath {
                s: CheckpointStamp {
                    seq: 3,
                    m: 800,
                    i: 0,
                },
                op: Op::Del {
                    path: "a/b.txt".into(),
                    moved: None,
                },
                r: None,
            }],
            records: vec![800],
            data: Vec::new(),
            tombstones: vec![800],
            foreign: vec![7],
            moved_out: Vec::new(),
            unread: Vec::new(),
        }
    }

    #[test]
    fn heads_and_parts_are_checkpoints_here_and_nothing_to_a_version_4_reader() {
        let head = CheckpointHead {
            covers: 900,
            collected: 12,
            parts: vec![901, 902],
        };
        let content = head.content();
        assert_eq!(content, "dcfs1 checkpoint 900 12 901,902");
        assert_eq!(CheckpointHead::parse(&content), Some(head));
        for content in [
            content.as_str(),
            CHECKPOINT_PART_CONTENT,
            "dcfs1 checkpoint 900",
        ] {
            assert_eq!(classify(content), MessageKind::Checkpoint, "{content}");
            // What a version-4 reader does with an unknown `dcfs1 ` message: base64.
            let rest = content.strip_prefix("dcfs1 ").unwrap();
            assert!(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(rest)
                    .is_err()
            );
        }
        assert_eq!(CheckpointHead::parse(CHECKPOINT_PART_CONTENT), None);
        assert_eq!(CheckpointHead::parse("dcfs1 checkpoint 9 0 1,x"), None);
        assert_eq!(CheckpointHead::parse("dcfs1 checkpoint 9"), None);
    }

    #[test]
    fn the_envelope_is_cut_within_the_limits() {
        let limits = Limits {
            max_file_size: 100,
            max_attachments: 3,
            max_request_size: 250,
            max_content_chars: 2000,
        };
        let envelope: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let messages = checkpoint_messages(&envelope, &limits);
        let mut joined = Vec::new();
        for message in &messages {
            assert!(message.len() <= 3 && !message.is_empty());
            let bytes: usize = message.iter().map(|a| a.data.len()).sum();
            assert!(bytes <= 250);
            for (n, attachment) in message.iter().enumerate() {
                assert_eq!(part_number(&attachment.filename), Some(n));
                joined.extend_from_slice(&attachment.data);
            }
        }
        assert_eq!(joined, envelope);
        assert_eq!(messages.len(), 5, "two parts of 100 bytes per message");
    }

    #[test]
    fn a_checkpoint_opens_only_with_its_key_in_its_channel_and_whole() {
        let key = Key::generate().unwrap();
        let sealed = seal_checkpoint(&body(77), Some(&key)).unwrap();
        assert_eq!(
            open_checkpoint(sealed.clone(), Some(&key), 77, 1000).unwrap(),
            body(77)
        );
        let other = Key::generate().unwrap();
        assert!(open_checkpoint(sealed.clone(), Some(&other), 77, 1000).is_err());
        assert!(open_checkpoint(sealed.clone(), None, 77, 1000).is_err());
        assert!(
            open_checkpoint(sealed.clone(), Some(&key), 78, 1000).is_err(),
            "another channel"
        );
        assert!(
            open_checkpoint(sealed[..sealed.len() - 1].to_vec(), Some(&key), 77, 1000).is_err()
        );
        assert!(
            open_checkpoint(sealed.clone(), Some(&key), 77, 900).is_err(),
            "a head older than what it covers"
        );
        let mut flipped = sealed.clone();
        flipped[40] ^= 1;
        assert!(open_checkpoint(flipped.clone(), Some(&key), 77, 1000).is_err());
        // Unsigned: only for readers without a key.
        let unsigned = seal_checkpoint(&body(77), None).unwrap();
        assert_eq!(
            open_checkpoint(unsigned.clone(), None, 77, 1000).unwrap(),
            body(77)
        );
        assert!(open_checkpoint(unsigned.clone(), Some(&key), 77, 1000).is_err());
        // A record envelope is not a checkpoint.
        let mut record = sealed.clone();
        record[..4].copy_from_slice(b"DCFR");
        assert!(open_checkpoint(record.clone(), Some(&key), 77, 1000).is_err());
    }

    #[test]
    fn a_body_with_a_path_twice_or_a_bad_path_is_damaged() {
        let key = Key::generate().unwrap();
        let mut twice = body(77);
        twice.paths.push(twice.paths[0].clone());
        let sealed = seal_checkpoint(&twice, Some(&key)).unwrap();
        assert!(open_checkpoint(sealed.clone(), Some(&key), 77, 1000).is_err());
        let mut bad = body(77);
        bad.paths[0].op = Op::Del {
            path: "../x".into(),
            moved: None,
        };
        let sealed = seal_checkpoint(&bad, Some(&key)).unwrap();
        assert!(open_checkpoint(sealed.clone(), Some(&key), 77, 1000).is_err());
    }
}
