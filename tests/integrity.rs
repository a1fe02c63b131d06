//! What someone holding the bot's token but not the key can do to a channel, against
//! the project's fake Discord: every attack of the threat model (README, "What the key
//! protects") is tried here and must fail. The attacker posts as the bot, through a
//! store of its own with the same token, and knows the format (it uses this crate);
//! it only lacks the key. The key holder must keep reading the newest version it
//! wrote, see a warning or a count of what it refused, and never delete a message that
//! isn't its own.

#[path = "common/data.rs"]
mod data;

use data::file_paths;

use std::io::Cursor;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dcloud_fs::crypto::Key;
use dcloud_fs::format::{self, ChunkLocation, ChunkRef, FileId, FileManifest, Op, Record};
use dcloud_fs::store::discord::{DiscordConfig, DiscordStore, Token};
use dcloud_fs::store::{Channel, HistoryCursor, Id, Message, NewAttachment, NewMessage, Store};
use dcloud_fs::volume::{PutOptions, PutSource, Skip, Volume, VolumeConfig, find_channel};
use fake_discord::{Config, FakeDiscord};

const KIB: u64 = 1024;
const FILES: &str = "files";
const OTHER: &str = "other";
/// Someone else in the guild.
const STRANGER: Id = 4242;

/// Warnings logged by the code under test, for the checks that a reader names what it
/// refused.
struct Warnings(Mutex<Vec<String>>);

impl log::Log for Warnings {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = record.args().to_string();
            self.0.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

fn warnings() -> &'static Warnings {
    static WARNINGS: OnceLock<&'static Warnings> = OnceLock::new();
    WARNINGS.get_or_init(|| {
        let warnings: &'static Warnings = Box::leak(Box::new(Warnings(Mutex::default())));
        log::set_logger(warnings).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
        warnings
    })
}

/// Whether a warning containing all of `parts` was logged.
fn warned(parts: &[&str]) -> bool {
    warnings()
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|line| parts.iter().all(|part| line.contains(part)))
}

struct Fixture {
    fake: FakeDiscord,
    /// The key holder's store.
    store: Arc<DiscordStore>,
    /// The attacker's: the same token, another process.
    attacker: Arc<DiscordStore>,
    key: Key,
}

impl Fixture {
    async fn start() -> Fixture {
        warnings();
        let config = Config {
            channels: vec![FILES.to_string(), OTHER.to_string()],
            max_file_size: 64 * KIB,
            message_create_limit: (50, Duration::from_millis(100)),
            message_delete_limit: (50, Duration::from_millis(100)),
            ..Config::default()
        };
        let fake = FakeDiscord::start("127.0.0.1:0".parse().unwrap(), config)
            .await
            .expect("fake Discord starts");
        let store = |fake: &FakeDiscord| {
            let mut config = DiscordConfig::new(Token::new(fake.token()), fake.guild_id());
            config.api = Some(fake.api_base());
            config.request_timeout = Duration::from_secs(20);
            Arc::new(DiscordStore::new(config).unwrap())
        };
        Fixture {
            store: store(&fake),
            attacker: store(&fake),
            fake,
            key: Key::generate().unwrap(),
        }
    }

    async fn channel(&self, name: &str) -> Channel {
        find_channel(self.store.as_ref(), name).await.unwrap()
    }

    /// The key holder's volume of `name`, with an index cache in `cache` (warm) or
    /// none (a fresh machine).
    async fn volume(&self, name: &str, cache: Option<&std::path::Path>) -> Volume {
        self.volume_with(name, Some(&self.key), cache).await
    }

    async fn volume_with(
        &self,
        name: &str,
        key: Option<&Key>,
        cache: Option<&std::path::Path>,
    ) -> Volume {
        let config = VolumeConfig {
            cache_dir: cache.map(|c| c.to_path_buf()),
            // Freed at once: these tests count what is left.
            free_grace: std::time::Duration::ZERO,
            ..VolumeConfig::default()
        };
        Volume::open(
            self.store.clone(),
            self.channel(name).await,
            key.cloned(),
            config,
        )
        .await
        .unwrap()
    }

    /// A message's content and attachment bytes, as the attacker saves them.
    async fn save(&self, channel: Id, message: Id) -> NewMessage {
        let original = self.attacker.message(channel, message).await.unwrap();
        let mut attachments = Vec::new();
        for a in &original.attachments {
            let data = self
                .attacker
                .fetch_attachment(channel, message, a.id, a.size)
                .await
                .unwrap();
            attachments.push(NewAttachment {
                filename: a.filename.clone(),
                data,
            });
        }
        NewMessage {
            content: original.content,
            attachments,
        }
    }

    /// Posts as the bot, without the key.
    async fn post(&self, channel: Id, message: NewMessage) -> Message {
        self.attacker.post(channel, message).await.unwrap()
    }

    async fn exists(&self, channel: Id, message: Id) -> bool {
        self.store.message(channel, message).await.is_ok()
    }
}

fn options(encrypted: bool) -> PutOptions {
    PutOptions {
        mtime_ns: 1_700_000_000_000_000_000,
        mode: 0o644,
        encrypted,
        owner: None,
        atime_ns: None,
    }
}

async fn put(volume: &Volume, path: &str, data: &[u8], encrypted: bool) -> Id {
    let source = PutSource::Stream(Box::new(Cursor::new(data.to_vec())));
    volume
        .put(path, source, path, options(encrypted), None)
        .await
        .unwrap()
        .record_message
}

async fn read(volume: &Volume, path: &str) -> Vec<u8> {
    let mut sink = Vec::new();
    volume.get(path, &mut sink, None).await.unwrap();
    sink
}

fn skipped_as(volume: &Volume, what: fn(&Skip) -> bool) -> usize {
    volume
        .index()
        .skipped()
        .values()
        .filter(|s| what(s))
        .count()
}

/// A record message the attacker can make: plain, unsigned, any `seq`.
fn forged(record: &Record, channel: Id, attachments: Vec<NewAttachment>) -> NewMessage {
    let envelope = format::seal_record(record, format::RecordSeal::Unsigned, channel).unwrap();
    let (content, attachment) =
        format::record_message_parts(envelope, &dcloud_fs::store::Limits::default());
    let mut attachments = attachments;
    attachments.extend(attachment);
    NewMessage {
        content,
        attachments,
    }
}

/// An inline record's content with `from` replaced by `to` in its (readable) JSON, as an
/// attacker would edit a signed plain record.
fn edited_json(content: &str, from: &str, to: &str) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let envelope = engine
        .decode(content.strip_prefix("dcfs1 ").unwrap())
        .unwrap();
    let at = envelope
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("the JSON holds it");
    let mut edited = envelope[..at].to_vec();
    edited.extend_from_slice(to.as_bytes());
    edited.extend_from_slice(&envelope[at + from.len()..]);
    format!("dcfs1 {}", engine.encode(edited))
}

/// A plain put of `data` at `path` whose one chunk rides on the record's message.
fn plain_put(path: &str, data: &[u8], seq: u64) -> (Record, Vec<NewAttachment>) {
    use sha2::Digest;
    let record = Record {
        seq,
        ops: vec![Op::Put(FileManifest {
            path: path.into(),
            id: FileId([9; 16]),
            size: data.len() as u64,
            mtime_ns: 0,
            mode: 0o644,
            encrypted: false,
            chunks: vec![ChunkRef {
                location: ChunkLocation::Attached {
                    filename: "c0.bin".into(),
                },
                len: data.len() as u64,
                sha256: Some(sha2::Sha256::digest(data).into()),
                tag: None,
                key: None,
                prefix: None,
                packed_at: None,
            }],
            data_key: None,
            symlink: None,
            special: None,
            node: None,
            meta: Default::default(),
        })],
    };
    let attachment = NewAttachment {
        filename: "c0.bin".into(),
        data: bytes::Bytes::copy_from_slice(data),
    };
    (record, vec![attachment])
}

#[tokio::test]
async fn an_old_record_posted_again_never_rolls_a_file_back() {
    let fx = Fixture::start().await;
    let cache = tempfile::tempdir().unwrap();
    let volume = fx.volume(FILES, Some(cache.path())).await;
    let channel = volume.channel().id;
    let first = put(&volume, "a.txt", b"the first version", true).await;
    // The attacker saves the first version's record message (a small file: record and
    // chunk in one message) while it is there...
    let saved = fx.save(channel, first).await;
    put(&volume, "a.txt", b"the second version", true).await;
    assert!(
        !fx.exists(channel, first).await,
        "the first version was freed"
    );
    // ... and posts it again once the second version replaced it.
    let copy = fx.post(channel, saved).await;

    // Warm: the volume that was open all along, and one opened on its cache.
    volume.refresh().await.unwrap();
    assert_eq!(read(&volume, "a.txt").await, b"the second version");
    assert!(warned(&[&copy.id.to_string(), "a.txt", "ignored"]));
    drop(volume);
    let warm = fx.volume(FILES, Some(cache.path())).await;
    assert_eq!(read(&warm, "a.txt").await, b"the second version");
    // Fresh: a new machine replays the channel, copy included.
    let fresh = fx.volume(FILES, None).await;
    assert_eq!(read(&fresh, "a.txt").await, b"the second version");
    assert_eq!(file_paths(&fresh), ["a.txt"]);
}

#[tokio::test]
async fn a_record_copied_into_another_channel_does_not_open_there() {
    let fx = Fixture::start().await;
    let volume = fx.volume(FILES, None).await;
    let record = put(&volume, "secret.txt", b"only in files", true).await;
    let plain = put(&volume, "shared.txt", b"plain, signed", false).await;
    let other = fx.channel(OTHER).await;
    for message in [record, plain] {
        let saved = fx.save(volume.channel().id, message).await;
        fx.post(other.id, saved).await;
    }
    let there = fx.volume(OTHER, None).await;
    assert!(file_paths(&there).is_empty());
    assert_eq!(
        skipped_as(&there, |s| matches!(s, Skip::Damaged(_))),
        2,
        "{:?}",
        there.index().skipped()
    );
    assert!(warned(&["failed authentication"]));
}

#[tokio::test]
async fn a_plain_record_forged_without_the_key_changes_nothing_for_the_key_holder() {
    let fx = Fixture::start().await;
    let volume = fx.volume(FILES, None).await;
    let channel = volume.channel().id;
    put(&volume, "a.txt", b"the owner's bytes", true).await;
    put(&volume, "shared.txt", b"the owner's plain bytes", false).await;
    // Plain records with a seq far ahead, replacing both files.
    for path in ["a.txt", "shared.txt"] {
        let (record, chunk) = plain_put(path, b"FORGED", 1_000_000);
        fx.post(channel, forged(&record, channel, chunk)).await;
    }
    // And a signed record whose JSON the attacker edited: its tag no longer matches.
    let signed = put(&volume, "b.txt", b"signed", false).await;
    let mut saved = fx.save(channel, signed).await;
    saved.content = edited_json(&saved.content, "mode\":420", "mode\":511");
    fx.post(channel, saved).await;

    for reader in [fx.volume(FILES, None).await, volume] {
        reader.refresh().await.unwrap();
        assert_eq!(read(&reader, "a.txt").await, b"the owner's bytes");
        assert_eq!(
            read(&reader, "shared.txt").await,
            b"the owner's plain bytes"
        );
        assert_eq!(read(&reader, "b.txt").await, b"signed");
        assert_eq!(
            skipped_as(&reader, |s| matches!(s, Skip::Unauthenticated(_))),
            2
        );
        let hint = reader.not_found("missing").to_string();
        assert!(hint.contains("not authenticated by your key"), "{hint}");
    }
    assert!(warned(&["did not sign"]));
}

#[tokio::test]
async fn nothing_deletes_a_message_that_is_not_our_own() {
    let fx = Fixture::start().await;
    let key_holder = fx.volume(FILES, None).await;
    let channel = key_holder.channel().id;
    // Someone else's message with an attachment, and a plain record (posted as the
    // bot) whose chunk names it: rm or an overwrite of that path would delete it.
    let theirs = fx.fake.post_foreign_message(
        channel,
        STRANGER,
        "my holiday photo",
        vec![("c0.bin".into(), b"photo bytes".to_vec())],
    );
    let their_message = fx.store.message(channel, theirs).await.unwrap();
    let (mut record, _) = plain_put("stolen.txt", b"photo bytes", 50);
    if let Op::Put(file) = &mut record.ops[0] {
        file.chunks[0].location = ChunkLocation::Stored {
            channel: None,
            message: theirs,
            attachment: their_message.attachments[0].id,
        };
    }
    fx.post(channel, forged(&record, channel, vec![])).await;
    // The same for someone else's message in another channel (which replay can't
    // check): a keyless reader takes that record, but deleting or replacing the file
    // still never deletes the message.
    let other = fx.channel(OTHER).await;
    let elsewhere = fx.fake.post_foreign_message(
        other.id,
        STRANGER,
        "another photo",
        vec![("c0.bin".into(), b"photo bytes".to_vec())],
    );
    let elsewhere_message = fx.store.message(other.id, elsewhere).await.unwrap();
    let (mut record, _) = plain_put("moved.txt", b"photo bytes", 51);
    if let Op::Put(file) = &mut record.ops[0] {
        file.chunks[0].location = ChunkLocation::Stored {
            channel: Some(other.id),
            message: elsewhere,
            attachment: elsewhere_message.attachments[0].id,
        };
    }
    fx.post(channel, forged(&record, channel, vec![])).await;
    // A keyless reader takes plain records unchecked, but not one that names someone
    // else's message here; the key holder takes no unsigned record at all.
    let keyless = fx.volume_with(FILES, None, None).await;
    assert_eq!(file_paths(&keyless), ["moved.txt"]);
    assert!(warned(&["someone else's"]));
    keyless.remove("moved.txt", false).await.unwrap();
    for volume in [&keyless, &key_holder] {
        volume.refresh().await.unwrap();
        assert!(volume.remove("stolen.txt", false).await.is_err());
        let source = PutSource::Stream(Box::new(Cursor::new(b"mine".to_vec())));
        volume
            .put("stolen.txt", source, "stolen.txt", options(false), None)
            .await
            .unwrap();
        volume.remove("stolen.txt", false).await.unwrap();
    }
    assert!(
        fx.exists(channel, theirs).await,
        "their message was deleted"
    );
    assert!(
        fx.exists(other.id, elsewhere).await,
        "their message was deleted"
    );
}

#[tokio::test]
async fn damaged_sizes_and_huge_records_are_refused_without_harm() {
    let fx = Fixture::start().await;
    let volume = fx.volume_with(FILES, None, None).await;
    let channel = volume.channel().id;
    // Chunk lengths that overflow when added up.
    let (mut record, chunk) = plain_put("overflow.bin", b"x", 7);
    if let Op::Put(file) = &mut record.ops[0] {
        let mut second = file.chunks[0].clone();
        second.len = u64::MAX;
        file.chunks.push(second);
        file.size = 0; // 1 + u64::MAX wraps to 0
    }
    let json = serde_json::to_vec(&record).unwrap();
    let mut envelope = b"DCFR\x02\x00".to_vec();
    envelope.extend_from_slice(&[0; 8]);
    envelope.extend_from_slice(&json);
    let (content, _) = format::record_message_parts(envelope, &dcloud_fs::store::Limits::default());
    fx.post(
        channel,
        NewMessage {
            content,
            attachments: chunk,
        },
    )
    .await;
    // A record attachment bigger than any record the store's limits allow (the fake
    // guild takes 64 KiB; this reader's store believes in 16 KiB).
    let big = NewAttachment {
        filename: format::RECORD_ATTACHMENT.into(),
        data: bytes::Bytes::from(vec![b'{'; 60 * 1024]),
    };
    let huge = fx
        .post(
            channel,
            NewMessage {
                content: format!("dcfs1 @{}", format::RECORD_ATTACHMENT),
                attachments: vec![big],
            },
        )
        .await;
    let mut config = DiscordConfig::new(Token::new(fx.fake.token()), fx.fake.guild_id());
    config.api = Some(fx.fake.api_base());
    config.max_file_size = Some(16 * KIB);
    let small = Arc::new(DiscordStore::new(config).unwrap());
    let fetched_before = fx.fake.stats();
    let reader = Volume::open(
        small,
        fx.channel(FILES).await,
        None,
        VolumeConfig {
            cache_dir: None,
            // Freed at once: these tests count what is left.
            free_grace: std::time::Duration::ZERO,
            ..VolumeConfig::default()
        },
    )
    .await
    .unwrap();
    assert!(file_paths(&reader).is_empty());
    let skipped = reader.index().skipped().clone();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        matches!(&skipped[&huge.id], Skip::Damaged(why) if why.contains("over the store's limit"))
    );
    assert!(skipped.values().any(
        |s| matches!(s, Skip::Damaged(why) if why.contains("claims") || why.contains("overflow"))
    ));
    // The huge record was never downloaded (the CDN served nothing to the reader).
    assert_eq!(fx.fake.stats().cdn_requests, fetched_before.cdn_requests);
    let history = fx
        .store
        .history(channel, HistoryCursor::Latest, 10)
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
}

#[tokio::test]
async fn a_channel_holding_someone_elses_messages_is_never_deleted_with_them() {
    use dcloud_fs::volume::reclaim::ChannelKept;
    let fx = Fixture::start().await;
    let volume = fx.volume(FILES, None).await;
    put(&volume, "a.txt", b"ours", true).await;
    assert_eq!(volume.channel_deletable().await, Err(ChannelKept::NotEmpty));
    volume.remove("a.txt", false).await.unwrap();
    assert_eq!(volume.channel_deletable().await, Ok(()));
    // Someone says hello in it: deleting the channel would delete their message too.
    let channel = volume.channel().id;
    fx.fake
        .post_foreign_message(channel, STRANGER, "hello", Vec::new());
    assert_eq!(
        volume.channel_deletable().await,
        Err(ChannelKept::OthersMessages(STRANGER))
    );
}
