//! The Discord store against the project's fake Discord server.
//!
//! Each test starts its own fake server (in-process, on a free port) and talks to it
//! through the real `DiscordStore`: twilight-http's requests sent through reqwest for
//! REST, reqwest for the CDN, the rate gate, retries and URL refreshes — everything
//! but Discord itself. Most tests use a small per-file limit (64 KiB, set on both
//! sides) so that files of a few hundred KiB already span several chunks and
//! messages, and a short rate-limit window so the suite stays fast; the rules are
//! Discord's, only the numbers shrink.
//!
//! What is checked is what the store promises the layers above: byte-exact round
//! trips through the whole stack, also when the server fails 10% of requests, forces
//! 429s or lets URLs expire; that steady work never overruns a bucket; that a 413
//! makes the store step down and the upload succeed in smaller pieces with nothing
//! left over; that other users' messages and garbage never become files; and that a
//! bad token or a missing permission is a clear error.

#[path = "common/data.rs"]
mod data;

use data::{file_paths, random_bytes};

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use dcloud_fs::crypto::Key;
use dcloud_fs::format;
use dcloud_fs::store::discord::{DiscordConfig, DiscordStore, Token};
use dcloud_fs::store::{HistoryCursor, Limits, NewAttachment, NewMessage, Store, StoreError};
use dcloud_fs::volume::{
    ChunkPlan, PutOptions, PutSource, Volume, VolumeConfig, VolumeError, find_channel,
};
use fake_discord::{Config, FakeDiscord};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// The per-file limit most tests use, on both sides.
const SMALL_FILE_LIMIT: u64 = 64 * KIB;
const CHANNEL: &str = "files";

/// A fake guild with one channel, a small per-file limit and quick rate-limit windows.
fn small_guild() -> Config {
    Config {
        channels: vec![CHANNEL.to_string()],
        max_file_size: SMALL_FILE_LIMIT,
        message_create_limit: (5, Duration::from_millis(500)),
        message_delete_limit: (5, Duration::from_millis(200)),
        ..Config::default()
    }
}

struct Fixture {
    fake: FakeDiscord,
    store: Arc<DiscordStore>,
    key: Key,
}

impl Fixture {
    /// Starts `config`'s fake server and a store for it; `per_file` overrides the
    /// store's per-file limit (the fake's guild reports no boost).
    async fn start(config: Config, per_file: Option<u64>) -> Fixture {
        let fake = FakeDiscord::start("127.0.0.1:0".parse().unwrap(), config)
            .await
            .expect("fake Discord starts");
        let store =
            Arc::new(DiscordStore::new(store_config(&fake, fake.token(), per_file)).unwrap());
        Fixture {
            fake,
            store,
            key: Key::generate().unwrap(),
        }
    }

    async fn volume(&self) -> Volume {
        open_volume(self.store.clone(), &self.key).await
    }

    /// A second store on the same guild, as another machine would have it.
    async fn fresh_volume(&self) -> Volume {
        let config = store_config(&self.fake, self.fake.token(), Some(SMALL_FILE_LIMIT));
        open_volume(Arc::new(DiscordStore::new(config).unwrap()), &self.key).await
    }
}

/// Opens the test channel, with no index cache (every open replays the channel).
async fn open_volume(store: Arc<DiscordStore>, key: &Key) -> Volume {
    let channel = find_channel(store.as_ref(), CHANNEL).await.unwrap();
    let config = VolumeConfig {
        cache_dir: None,
        // Freed at once: these tests count what is left.
        free_grace: std::time::Duration::ZERO,
        ..VolumeConfig::default()
    };
    Volume::open(store, channel, Some(key.clone()), config)
        .await
        .unwrap()
}

fn store_config(fake: &FakeDiscord, token: &str, per_file: Option<u64>) -> DiscordConfig {
    let mut config = DiscordConfig::new(Token::new(token), fake.guild_id());
    config.api = Some(fake.api_base());
    config.max_file_size = per_file;
    config.request_timeout = Duration::from_secs(20);
    config
}

fn options() -> PutOptions {
    PutOptions {
        mtime_ns: 1_700_000_000_000_000_000,
        mode: 0o644,
        encrypted: true,
        owner: None,
        atime_ns: None,
    }
}

async fn put(volume: &Volume, path: &str, data: &[u8]) -> Result<(), VolumeError> {
    let source = PutSource::Stream(Box::new(Cursor::new(data.to_vec())));
    volume
        .put(path, source, path, options(), None)
        .await
        .map(|_| ())
}

async fn put_file(volume: &Volume, path: &str, data: &[u8]) -> Result<(), VolumeError> {
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, data).unwrap();
    volume
        .put(path, PutSource::File(file), path, options(), None)
        .await
        .map(|_| ())
}

async fn read(volume: &Volume, path: &str) -> Vec<u8> {
    let mut sink = Vec::new();
    if let Err(e) = volume.get(path, &mut sink, None).await {
        panic!("get {path}: {e}");
    }
    sink
}

/// The chunk length the store's plan gives at the small per-file limit.
fn small_chunk() -> usize {
    let limits = Limits {
        max_file_size: SMALL_FILE_LIMIT,
        max_request_size: 25 * MIB,
        ..Limits::default()
    };
    ChunkPlan::new(&limits, format::ChunkKind::Segmented)
        .unwrap()
        .chunk_len
}

#[tokio::test]
async fn files_round_trip_at_chunk_and_message_boundaries() {
    let fx = Fixture::start(small_guild(), Some(SMALL_FILE_LIMIT)).await;
    let volume = fx.volume().await;
    let chunk = small_chunk();
    let per_message = 9;
    let sizes = [
        0,
        1,
        chunk - 1,
        chunk,
        chunk + 1,
        per_message * chunk - 1,
        per_message * chunk + 1,
        3 * per_message * chunk + 17,
    ];
    for (i, size) in sizes.iter().enumerate() {
        put(
            &volume,
            &format!("dir/f{i}"),
            &random_bytes(*size, i as u64),
        )
        .await
        .unwrap();
    }
    for (i, size) in sizes.iter().enumerate() {
        assert_eq!(
            read(&volume, &format!("dir/f{i}")).await,
            random_bytes(*size, i as u64),
            "size {size}"
        );
    }
    // Rename, overwrite and remove, then look from a machine with no cache.
    volume.rename("dir/f1", "moved/one").await.unwrap();
    put(&volume, "dir/f2", b"replaced").await.unwrap();
    volume.remove("dir/f3", false).await.unwrap();
    let other = fx.fresh_volume().await;
    assert_eq!(file_paths(&other), file_paths(&volume));
    assert_eq!(read(&other, "moved/one").await, random_bytes(1, 1));
    assert_eq!(read(&other, "dir/f2").await, b"replaced");
    assert!(matches!(
        other.get("dir/f3", &mut Vec::new(), None).await,
        Err(VolumeError::NotFound { .. })
    ));
    assert_eq!(fx.fake.stats().rate_limited, 0, "{:?}", fx.fake.stats());
}

#[tokio::test]
async fn steady_uploads_and_deletes_never_overrun_a_bucket() {
    let fx = Fixture::start(small_guild(), Some(SMALL_FILE_LIMIT)).await;
    let volume = fx.volume().await;
    // About 24 messages to one channel: several windows of the create bucket.
    let data = random_bytes(20 * 9 * small_chunk(), 7);
    put(&volume, "big", &data).await.unwrap();
    for i in 0..4 {
        put(&volume, &format!("small{i}"), b"x").await.unwrap();
    }
    volume.remove("big", false).await.unwrap();
    let stats = fx.fake.stats();
    assert!(stats.messages_created >= 24, "{stats:?}");
    assert_eq!(stats.rate_limited, 0, "a bucket was overrun: {stats:?}");
}

#[tokio::test]
async fn forced_429s_are_waited_out() {
    let config = Config {
        forced_429_rate: 0.3,
        ..small_guild()
    };
    let fx = Fixture::start(config, Some(SMALL_FILE_LIMIT)).await;
    let volume = fx.volume().await;
    let data = random_bytes(4 * 9 * small_chunk() + 5, 3);
    put(&volume, "f", &data).await.unwrap();
    assert_eq!(read(&volume, "f").await, data);
    // Forced 429s are random: rename until some were sent (each rename is a request or
    // two), so the test never depends on a lucky draw. 0.7^(17 + 2*40) is never.
    let mut name = "f".to_string();
    for i in 0..40 {
        if fx.fake.stats().forced_429 >= 2 {
            break;
        }
        let next = format!("g{i}");
        volume.rename(&name, &next).await.unwrap();
        name = next;
    }
    assert!(fx.fake.stats().forced_429 >= 2, "{:?}", fx.fake.stats());
    assert_eq!(read(&fx.fresh_volume().await, &name).await, data);
    // The store waits them out and counts each for `status` (the count is the
    // process's: other tests may add theirs).
    let forced = fx.fake.stats().forced_429;
    let counted = dcloud_fs::store::pace::http_429s();
    assert!(counted >= forced, "{counted} 429s counted, {forced} sent");
}

#[tokio::test]
async fn ten_percent_of_requests_failing_still_round_trips_byte_exact() {
    let fx = Fixture::start(small_guild(), Some(SMALL_FILE_LIMIT)).await;
    let volume = fx.volume().await;
    fx.fake.set_knobs(|knobs| knobs.failure_rate = 0.1);
    let mut expected = Vec::new();
    for i in 0..6u64 {
        let data = random_bytes((i as usize * 3 + 1) * small_chunk() + i as usize, 100 + i);
        put(&volume, &format!("f{i}"), &data).await.unwrap();
        expected.push((format!("f{i}"), data));
    }
    volume.remove("f0", false).await.unwrap();
    volume.rename("f1", "renamed").await.unwrap();
    for (path, data) in &expected[2..] {
        assert_eq!(&read(&volume, path).await, data, "{path}");
    }
    let other = fx.fresh_volume().await;
    assert_eq!(read(&other, "renamed").await, expected[1].1);
    assert_eq!(file_paths(&other).len(), 5);
    assert!(fx.fake.stats().injected_failures > 0);
    fx.fake.set_knobs(|knobs| knobs.failure_rate = 0.0);
    // Retried posts were not duplicated: every message is a record or a chunk in use.
    let in_use = other.index().messages_in_use();
    let count = fx.fake.message_count(other.channel().id);
    assert_eq!(count, in_use.len(), "messages left behind");
}

#[tokio::test]
async fn expired_urls_are_refreshed_mid_download() {
    let fx = Fixture::start(small_guild(), Some(SMALL_FILE_LIMIT)).await;
    let volume = fx.volume().await;
    let data = random_bytes(3 * 9 * small_chunk(), 11);
    put(&volume, "f", &data).await.unwrap();
    // The URLs the store holds look fresh, but the CDN refuses them all.
    fx.fake.expire_all_urls();
    assert_eq!(read(&volume, "f").await, data);
    // URLs that live less than the store's safety margin are refreshed before use.
    fx.fake
        .set_knobs(|knobs| knobs.url_lifetime = Duration::from_secs(20));
    let volume = fx.fresh_volume().await;
    assert_eq!(read(&volume, "f").await, data);
}

#[tokio::test]
async fn a_413_steps_the_limits_down_and_the_upload_succeeds() {
    // The store believes in a boosted guild's 50 MiB; the guild takes Discord's
    // default 10 MiB per file and 25 MiB per message.
    let config = Config {
        channels: vec![CHANNEL.to_string()],
        ..Config::default()
    };
    let fx = Fixture::start(config, Some(50 * MIB)).await;
    let volume = fx.volume().await;
    let data = random_bytes((30 * MIB) as usize, 5);
    put_file(&volume, "big", &data).await.unwrap();
    assert!(fx.fake.stats().too_large > 0);
    let limits = fx.store.limits().await.unwrap();
    assert!(limits.max_file_size <= 10 * MIB, "{limits:?}");
    assert_eq!(read(&volume, "big").await, data);
    // Nothing of the refused attempts is left in the channel.
    let in_use = volume.index().messages_in_use();
    assert_eq!(fx.fake.message_count(volume.channel().id), in_use.len());
}

#[tokio::test]
async fn other_authors_and_garbage_never_become_files() {
    let fx = Fixture::start(small_guild(), Some(SMALL_FILE_LIMIT)).await;
    let volume = fx.volume().await;
    put(&volume, "real", b"real bytes").await.unwrap();
    let channel = volume.channel().id;
    // Another user copies one of our records word for word, and posts chat.
    let page = fx
        .store
        .history(channel, HistoryCursor::Latest, 10)
        .await
        .unwrap();
    let record = page
        .iter()
        .find(|m| m.content.starts_with("dcfs1 "))
        .unwrap();
    fx.fake
        .post_foreign_message(channel, 4242, &record.content, vec![]);
    fx.fake.post_foreign_message(
        channel,
        4242,
        "hello",
        vec![("c0".into(), b"not ours".to_vec())],
    );
    // The bot itself posts garbage that looks like records.
    for content in ["dcfs1 !!!not-base64", "dcfs1 AAAA", "dcfs1 data zz"] {
        fx.store
            .post(
                channel,
                NewMessage {
                    content: content.into(),
                    attachments: vec![],
                },
            )
            .await
            .unwrap();
    }
    fx.store
        .post(
            channel,
            NewMessage {
                content: format!("dcfs1 @{}", format::RECORD_ATTACHMENT),
                attachments: vec![NewAttachment {
                    filename: format::RECORD_ATTACHMENT.into(),
                    data: bytes::Bytes::from_static(b"DCFR garbage"),
                }],
            },
        )
        .await
        .unwrap();
    let other = fx.fresh_volume().await;
    assert_eq!(file_paths(&other), ["real"]);
    assert_eq!(read(&other, "real").await, b"real bytes");
}

/// Posts `count` messages of ours in the test channel; returns their ids.
async fn post_messages(fx: &Fixture, channel: u64, count: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    for n in 0..count {
        let message = NewMessage {
            content: format!("message {n}"),
            attachments: vec![],
        };
        ids.push(fx.store.post(channel, message).await.unwrap().id);
    }
    ids
}

/// Requests the fake server saw on `route`.
fn route_requests(fake: &FakeDiscord, route: &str) -> u64 {
    fake.stats().per_route.get(route).copied().unwrap_or(0)
}

const BULK_DELETE: &str = "POST /channels/{channel.id}/messages/bulk-delete";
const SINGLE_DELETE: &str = "DELETE /channels/{channel.id}/messages/{message.id}";

#[tokio::test]
async fn many_messages_go_in_bulk_deletes_and_old_ones_one_by_one() {
    // The channel and its first messages three weeks old: too old for a bulk delete.
    let config = Config {
        backdate: Duration::from_secs(21 * 24 * 3600),
        message_create_limit: (1000, Duration::from_secs(1)),
        ..small_guild()
    };
    let fx = Fixture::start(config, Some(SMALL_FILE_LIMIT)).await;
    let channel = find_channel(fx.store.as_ref(), CHANNEL).await.unwrap().id;
    let old = post_messages(&fx, channel, 3).await;
    fx.fake.set_knobs(|k| k.backdate = Duration::ZERO);
    let young = post_messages(&fx, channel, 130).await;
    let mut all: Vec<u64> = old.iter().chain(&young).copied().collect();
    all.push(young[young.len() - 1] + 1_000); // never there: counts as deleted
    let failed = fx.store.delete_messages(channel, &all).await;
    assert!(failed.is_empty(), "{failed:?}");
    let left = fx
        .store
        .history(channel, HistoryCursor::Latest, 100)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    // 131 young ids: a bulk delete of 100 and one of 31; the old ones one by one.
    assert_eq!(route_requests(&fx.fake, BULK_DELETE), 2);
    assert_eq!(route_requests(&fx.fake, SINGLE_DELETE), 3);
    assert_eq!(fx.fake.stats().per_status.get(&400), None);
}

#[tokio::test]
async fn without_manage_messages_deletes_go_one_by_one() {
    let mut config = small_guild();
    config.bot_permissions &= !(1 << 13); // no MANAGE_MESSAGES
    let fx = Fixture::start(config, Some(SMALL_FILE_LIMIT)).await;
    let channel = find_channel(fx.store.as_ref(), CHANNEL).await.unwrap().id;
    let ids = post_messages(&fx, channel, 6).await;
    assert!(
        fx.store
            .delete_messages(channel, &ids[..3])
            .await
            .is_empty()
    );
    assert!(
        fx.store
            .delete_messages(channel, &ids[3..])
            .await
            .is_empty()
    );
    // The refusal is remembered: one bulk delete tried, then only single deletes.
    assert_eq!(route_requests(&fx.fake, BULK_DELETE), 1);
    assert_eq!(route_requests(&fx.fake, SINGLE_DELETE), 6);
    let left = fx
        .store
        .history(channel, HistoryCursor::Latest, 100)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_wrong_token_is_a_clear_error_that_never_shows_it() {
    let fx = Fixture::start(small_guild(), None).await;
    let secret = "wrong.token-zq9";
    let store = DiscordStore::new(store_config(&fx.fake, secret, None)).unwrap();
    let error = store.channels().await.unwrap_err();
    assert!(matches!(error, StoreError::Unauthorized(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("token") && !text.contains(secret), "{text}");
    assert!(!format!("{error:?}").contains(secret));
}

#[tokio::test]
async fn folders_keep_their_names_and_need_manage_channels() {
    let fx = Fixture::start(small_guild(), None).await;
    let name = "Tax Returns 2025 ✓";
    let created = fx.store.create_channel(name).await.unwrap();
    let channels = fx.store.channels().await.unwrap();
    assert!(
        channels
            .iter()
            .any(|c| c.name == name && c.id == created.id)
    );
    assert!(fx.fake.channel_id("tax-returns-2025").is_some());
    assert!(matches!(
        fx.store.create_channel(name).await,
        Err(StoreError::ChannelExists(_))
    ));
    fx.store.delete_channel(created.id).await.unwrap();
    assert!(
        !fx.store
            .channels()
            .await
            .unwrap()
            .iter()
            .any(|c| c.name == name)
    );

    let mut config = small_guild();
    config.bot_permissions &= !(1 << 4); // no MANAGE_CHANNELS
    let fx = Fixture::start(config, None).await;
    let error = fx.store.create_channel("new").await.unwrap_err();
    assert!(
        matches!(error, StoreError::PermissionDenied(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("Manage Channels"), "{error}");
}

#[tokio::test]
async fn members_need_the_members_intent() {
    let fx = Fixture::start(small_guild(), None).await;
    let error = fx.store.members().await.unwrap_err();
    assert!(
        error.to_string().contains("Server Members Intent"),
        "{error}"
    );
    let fx = Fixture::start(
        Config {
            members_intent: true,
            ..small_guild()
        },
        None,
    )
    .await;
    let members = fx.store.members().await.unwrap();
    assert!(members.iter().any(|m| m.bot));
}

/// A fake guild whose per-file limit holds a 200 KiB attachment, one posted there raw
/// (through the store, no volume), and its bytes.
async fn one_raw_attachment() -> (Fixture, u64, u64, u64, Vec<u8>) {
    let config = Config {
        channels: vec![CHANNEL.to_string()],
        max_file_size: MIB,
        ..Config::default()
    };
    let fx = Fixture::start(config, None).await;
    let channel = find_channel(fx.store.as_ref(), CHANNEL).await.unwrap().id;
    let whole = random_bytes(200 * KIB as usize, 77);
    let posted = fx
        .store
        .post(
            channel,
            NewMessage {
                content: "raw".into(),
                attachments: vec![NewAttachment {
                    filename: "c0".into(),
                    data: bytes::Bytes::from(whole.clone()),
                }],
            },
        )
        .await
        .unwrap();
    let (message, attachment) = (posted.id, posted.attachments[0].id);
    (fx, channel, message, attachment, whole)
}

/// Ranges at the start, in the middle, ending at the end, across a 64 KiB boundary,
/// of one byte, the whole, and empty.
fn boundary_ranges(len: u64) -> Vec<std::ops::Range<u64>> {
    vec![
        0..10,
        0..64 * KIB,
        1000..5000,
        len - 17..len,
        65530..65550,
        64 * KIB - 1..64 * KIB + 1,
        4242..4243,
        len - 1..len,
        0..len,
        9..9,
    ]
}

/// Fetches every boundary range and compares it with the slice of the whole.
async fn ranges_match(fx: &Fixture, channel: u64, message: u64, attachment: u64, whole: &[u8]) {
    for range in boundary_ranges(whole.len() as u64) {
        let got = fx
            .store
            .fetch_range(channel, message, attachment, range.clone())
            .await
            .unwrap_or_else(|e| panic!("{range:?}: {e}"));
        assert!(
            got == whole[range.start as usize..range.end as usize],
            "{range:?}: {} bytes, not the slice",
            got.len()
        );
    }
}

#[tokio::test]
async fn ranges_of_an_attachment_are_its_slices() {
    let (fx, channel, message, attachment, whole) = one_raw_attachment().await;
    let before = fx.fake.stats();
    ranges_match(&fx, channel, message, attachment, &whole).await;
    let stats = fx.fake.stats();
    let asked: u64 = boundary_ranges(whole.len() as u64)
        .iter()
        .map(|r| r.end - r.start)
        .sum();
    // One request per non-empty range, each answered with its range only.
    assert_eq!(stats.range_requests - before.range_requests, 9);
    assert_eq!(stats.bytes_downloaded - before.bytes_downloaded, asked);
    assert_eq!(stats.injected_failures, 0);
}

#[tokio::test]
async fn ranges_are_cut_out_of_whole_answers_when_the_cdn_ignores_range() {
    let (fx, channel, message, attachment, whole) = one_raw_attachment().await;
    fx.fake.set_knobs(|k| k.ignore_range = true);
    let before = fx.fake.stats();
    ranges_match(&fx, channel, message, attachment, &whole).await;
    let stats = fx.fake.stats();
    assert_eq!(stats.range_requests - before.range_requests, 9);
    // Every answer was the whole attachment (read only up to the range's end).
    assert_eq!(
        stats.bytes_downloaded - before.bytes_downloaded,
        9 * whole.len() as u64
    );
}

#[tokio::test]
async fn ranges_past_the_end_are_corrupt_with_or_without_range_support() {
    let (fx, channel, message, attachment, whole) = one_raw_attachment().await;
    let len = whole.len() as u64;
    for ignore_range in [false, true] {
        fx.fake.set_knobs(|k| k.ignore_range = ignore_range);
        for past_the_end in [len - 5..len + 5, len..len + 1, len + 100..len + 200] {
            let error = fx
                .store
                .fetch_range(channel, message, attachment, past_the_end.clone())
                .await
                .unwrap_err();
            assert!(
                matches!(error, StoreError::Corrupt(_)),
                "ignore_range {ignore_range}, {past_the_end:?}: {error:?}"
            );
            assert!(error.to_string().contains("shorter"), "{error}");
        }
    }
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 9..3;
    let error = fx
        .store
        .fetch_range(channel, message, attachment, backwards)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Invalid(_)), "{error:?}");
}

#[tokio::test]
async fn ranges_survive_failures_and_expired_urls() {
    let (fx, channel, message, attachment, whole) = one_raw_attachment().await;
    fx.fake.expire_all_urls();
    let got = fx
        .store
        .fetch_range(channel, message, attachment, 65530..65550)
        .await
        .unwrap();
    assert!(got == whole[65530..65550]);
    // 30% of requests fail: a store that tries 12 times loses a range once in 2
    // million, where the default 5 tries would lose one of these 40 ranges in 10 runs.
    let mut config = store_config(&fx.fake, fx.fake.token(), None);
    config.attempts = 12;
    let store = DiscordStore::new(config).unwrap();
    fx.fake.set_knobs(|k| k.failure_rate = 0.3);
    for ignore_range in [false, true] {
        fx.fake.set_knobs(|k| k.ignore_range = ignore_range);
        for start in (0..whole.len() as u64 - 4096).step_by(10_000) {
            let range = start..start + 4096;
            let got = store
                .fetch_range(channel, message, attachment, range.clone())
                .await
                .unwrap();
            assert!(
                got == whole[range.start as usize..range.end as usize],
                "{range:?}"
            );
        }
    }
    assert!(fx.fake.stats().injected_failures > 0);
}

#[tokio::test]
async fn a_range_of_a_deleted_attachment_is_not_found() {
    let (fx, channel, message, attachment, whole) = one_raw_attachment().await;
    let got = fx
        .store
        .fetch_range(channel, message, attachment, 0..100)
        .await
        .unwrap();
    assert!(got == whole[..100]);
    fx.store.delete_message(channel, message).await.unwrap();
    for ignore_range in [false, true] {
        fx.fake.set_knobs(|k| k.ignore_range = ignore_range);
        let error = fx
            .store
            .fetch_range(channel, message, attachment, 0..100)
            .await
            .unwrap_err();
        assert!(error.is_not_found(), "{error:?}");
    }
}

/// The command line against a fake server running in the background.
mod cli {
    use std::path::PathBuf;
    use std::process::{Command, Output};

    use super::*;

    const BIN: &str = env!("CARGO_BIN_EXE_dcloud-fs");

    struct Env {
        dir: tempfile::TempDir,
        fake: FakeDiscord,
    }

    impl Env {
        fn new(config: Config) -> Env {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("work")).unwrap();
            Env {
                dir,
                fake: FakeDiscord::start_in_background(config).unwrap(),
            }
        }

        fn work(&self) -> PathBuf {
            self.dir.path().join("work")
        }

        fn run_with_token(&self, token: &str, args: &[&str]) -> Output {
            Command::new(BIN)
                .args(args)
                .current_dir(self.work())
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", self.dir.path().join("home"))
                .env("DCLOUD_API", self.fake.api_base())
                .env("DCLOUD_TOKEN", token)
                .env("DCLOUD_GUILD", self.fake.guild_id().to_string())
                .output()
                .unwrap()
        }

        fn ok(&self, args: &[&str]) -> String {
            data::succeeded(args, self.run_with_token(self.fake.token(), args))
        }
    }

    #[test]
    fn doctor_passes_and_files_round_trip() {
        let env = Env::new(Config::default());
        env.ok(&["keygen"]);
        let doctor = env.ok(&["doctor"]);
        assert!(doctor.contains("all checks passed"), "{doctor}");
        assert!(!doctor.contains(env.fake.token()));
        env.ok(&["mkdir", "My Files"]);
        let data = random_bytes((12 * MIB) as usize + 3, 9);
        std::fs::write(env.work().join("big.bin"), &data).unwrap();
        env.ok(&["put", "big.bin", "My Files/sub/"]);
        let listing = env.ok(&["ls", "-l", "My Files/sub"]);
        assert!(listing.contains("big.bin"), "{listing}");
        env.ok(&["get", "My Files/sub/big.bin", "back.bin"]);
        assert!(std::fs::read(env.work().join("back.bin")).unwrap() == data);
        let raw = env.ok(&["attachments", "My Files"]);
        assert!(raw.contains("this bot") && raw.contains("record"), "{raw}");
        env.ok(&["rm", "My Files/sub/big.bin"]);
        assert!(!env.ok(&["ls", "-l", "My Files"]).contains("sub"));
        assert!(env.ok(&["ping"]).contains("pong"));
        assert!(env.ok(&["info", "My Files"]).contains("#my-files"));
    }

    #[test]
    fn a_wrong_token_is_one_line_that_never_shows_it() {
        let env = Env::new(Config::default());
        let secret = "wrong.token-zq9";
        let output = env.run_with_token(secret, &["ls"]);
        assert!(!output.status.success());
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("token") && !stderr.contains(secret),
            "{stderr}"
        );
        let doctor = env.run_with_token(secret, &["doctor"]);
        assert!(!doctor.status.success());
        let stdout = String::from_utf8(doctor.stdout).unwrap();
        assert!(stdout.contains("FAIL  token"), "{stdout}");
    }
}

#[tokio::test]
async fn a_fresh_machine_starts_from_a_pinned_checkpoint_found_among_many_pins() {
    let config = Config {
        message_create_limit: (100, Duration::from_millis(500)),
        ..small_guild()
    };
    let fx = Fixture::start(config, Some(SMALL_FILE_LIMIT)).await;
    let volume = fx.volume().await;
    let files: Vec<dcloud_fs::volume::SmallFile> = (0..1200)
        .map(|i| dcloud_fs::volume::SmallFile {
            path: format!("notes/note-{i:04}.txt"),
            data: format!("note number {i}").into_bytes(),
            options: options(),
        })
        .collect();
    volume.put_small(files).await.unwrap();
    put(&volume, "big.bin", &random_bytes(3 * small_chunk(), 5))
        .await
        .unwrap();
    // People's pins, more than one page of them (Discord pages pins by 50).
    let channel = find_channel(fx.store.as_ref(), CHANNEL).await.unwrap();
    for i in 0..55 {
        let message = NewMessage {
            content: format!("pinned by people {i}"),
            attachments: Vec::new(),
        };
        let posted = fx.store.post(channel.id, message).await.unwrap();
        fx.store.pin(channel.id, posted.id).await.unwrap();
    }
    let head = volume.post_checkpoint().await.unwrap();
    let pinned = fx.store.pins(channel.id).await.unwrap();
    assert_eq!(pinned.len(), 56);
    assert_eq!(pinned[0].id, head, "newest pin first");
    let head_message = fx.store.message(channel.id, head).await.unwrap();
    let parts = head_message
        .attachments
        .iter()
        .filter(|a| format::part_number(&a.filename).is_some())
        .count();
    assert!(parts >= 2, "the checkpoint spans several attachments");

    let fresh = fx.fresh_volume().await;
    assert_eq!(fresh.started_from_checkpoint(), Some(head));
    assert!(
        fresh.index().skipped().is_empty(),
        "pin notices are nobody's records"
    );
    assert_eq!(file_paths(&fresh), file_paths(&volume));
    assert_eq!(
        read(&fresh, "notes/note-0123.txt").await,
        b"note number 123"
    );
    assert_eq!(
        read(&fresh, "big.bin").await,
        random_bytes(3 * small_chunk(), 5)
    );
}

/// Posts `count` records of the bot's own straight into the fake's channel (as if
/// posted long ago: no requests, no rate limits), each making a folder, some making one
/// again or removing one, with a human's chat between them. Returns the folders they
/// leave.
async fn post_folder_records(fx: &Fixture, channel: u64, count: usize) -> Vec<String> {
    let limits = fx.store.limits().await.unwrap();
    let mut folders = std::collections::BTreeSet::new();
    for i in 0..count {
        let path = format!("d{:03}", i % 500);
        folders.insert(path.clone());
        let mut ops = vec![format::Op::Mkdir(format::DirManifest {
            path,
            mtime_ns: 1_700_000_000_000_000_000 + i as i64,
            mode: 0o755,
            meta: Default::default(),
        })];
        if i % 9 == 8 {
            let gone = format!("d{:03}", i * 7 % 500);
            folders.remove(&gone);
            ops.push(format::Op::Del {
                path: gone,
                moved: None,
            });
        }
        let record = format::Record {
            seq: i as u64 + 1,
            ops,
        };
        let sealed =
            format::seal_record(&record, format::RecordSeal::Encrypted(&fx.key), channel).unwrap();
        let (content, attachment) = format::record_message_parts(sealed, &limits);
        let attachments = attachment
            .into_iter()
            .map(|a| (a.filename, a.data.to_vec()))
            .collect();
        fx.fake
            .post_foreign_message(channel, fx.fake.bot_user_id(), &content, attachments);
        if i % 4 == 0 {
            fx.fake
                .post_foreign_message(channel, 4242, &format!("chat {i}"), vec![]);
        }
    }
    folders.into_iter().collect()
}

/// A listing that tells versions apart: every live path, whether it is a folder, and
/// the change that last set it.
fn listing(volume: &Volume) -> Vec<(String, bool, Option<String>)> {
    let index = volume.index();
    index
        .live()
        .map(|(path, entry)| {
            let folder = matches!(entry, dcloud_fs::volume::Entry::Dir(_));
            (path.to_string(), folder, index.version_of(path))
        })
        .collect()
}

/// A channel of 1,500 messages, records of the bot's between a human's chat, opens to
/// the same index whether the volume is set to read its history one page after the
/// other or in slices of four requests at once (which the Discord store caps at one:
/// it runs one channel's history requests one at a time).
#[tokio::test]
async fn a_long_history_opens_the_same_read_serially_or_in_slices() {
    let fx = Fixture::start(small_guild(), Some(SMALL_FILE_LIMIT)).await;
    let channel = find_channel(fx.store.as_ref(), CHANNEL).await.unwrap();
    let folders = post_folder_records(&fx, channel.id, 1_200).await;
    assert_eq!(fx.fake.message_count(channel.id), 1_500);
    let mut listings = Vec::new();
    for parallelism in [1, 4] {
        let config = VolumeConfig {
            cache_dir: None,
            history_parallelism: parallelism,
            ..VolumeConfig::default()
        };
        let volume = Volume::open(
            fx.store.clone(),
            channel.clone(),
            Some(fx.key.clone()),
            config,
        )
        .await
        .unwrap();
        assert!(volume.index().skipped().is_empty());
        let listed = listing(&volume);
        let names: Vec<&str> = listed.iter().map(|(path, _, _)| path.as_str()).collect();
        assert_eq!(names, folders, "parallelism {parallelism}");
        listings.push((listed, volume.index().last_seen));
    }
    assert_eq!(listings[0], listings[1]);
    assert_eq!(fx.store.concurrent_history_reads(), 1);
}

/// A server that answers every request with 429: a call gives up after a bounded
/// number of them, with an error that says so.
#[tokio::test]
async fn endless_429s_end_in_a_clear_error() {
    let fx = Fixture::start(small_guild(), Some(SMALL_FILE_LIMIT)).await;
    let channel = find_channel(fx.store.as_ref(), CHANNEL).await.unwrap();
    fx.fake.set_knobs(|knobs| knobs.forced_429_rate = 1.0);
    let before = fx.fake.stats().forced_429;
    let error = fx
        .store
        .history(channel.id, HistoryCursor::Latest, 10)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("kept rate-limiting"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    assert_eq!(
        fx.fake.stats().forced_429 - before,
        u64::from(dcloud_fs::store::discord::rest::MAX_429_RETRIES) + 1
    );
}
