//! Volume-level tests under faults, against the library directly (no CLI).
//!
//! Every test runs a [`Volume`] on a [`LocalStore`] in a temporary directory with tiny
//! limits (4 KiB per attachment, 4 attachments and 10 000 bytes per message), so that
//! files of a few KiB already have many chunks spread over many messages, and a
//! [`FaultyStore`] in between that fails posts, attachment fetches or history reads on
//! purpose and counts what the volume asks of the store.
//!
//! Why: dcloud-fs promises that a file appears only once all of it is stored, that a
//! failed change leaves the channel as it was (nothing half-written, nothing orphaned),
//! that a download never hands out bytes that didn't authenticate, that other people's
//! messages in the channel never become files, that replaced and removed versions free
//! their messages, and that an upload's memory stays bounded whatever the file's size.
//! These are properties of the whole stack (format, index, transfers, store), so they
//! are checked end to end, with a deterministic PRNG (no dependencies) for data and
//! faults.
//!
//! The last tests guard a bug found here: a change whose follow-up refresh failed used
//! to report an error although its record had landed (and a put then deleted the new
//! version's chunks).

#[path = "common/data.rs"]
mod data;
#[path = "common/faulty.rs"]
mod faulty;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use data::file_paths;
use dcloud_fs::crypto::Key;
use dcloud_fs::format::{self, ChunkRef, DirManifest, FileManifest, Op, RECORD_ATTACHMENT, Record};
use dcloud_fs::store::local::{LOCAL_USER_ID, LocalStore};
use dcloud_fs::store::{
    Channel, HistoryCursor, Id, Limits, Message, NewAttachment, NewMessage, Store, StoreError,
};
use dcloud_fs::volume::{
    ChunkPlan, Entry, FileEntry, Node, PutOptions, PutSource, Skip, SmallFile, Volume,
    VolumeConfig, VolumeError,
};
use faulty::{FaultyStore, SplitMix64};
use tempfile::TempDir;

/// Small enough that a file of a few KiB has many chunks and messages.
const LIMITS: Limits = Limits {
    max_file_size: 4096,
    max_attachments: 4,
    max_request_size: 10_000,
    max_content_chars: 2000,
};

const MTIME: i64 = 1_700_000_000_123_456_789;

// ---------------------------------------------------------------------------------------
// Fixture and helpers

/// A local store with one channel, seen through a [`FaultyStore`].
struct Fixture {
    _dir: TempDir,
    cache: TempDir,
    local: Arc<LocalStore>,
    store: Arc<FaultyStore>,
    channel: Channel,
}

impl Fixture {
    async fn new(seed: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let local =
            Arc::new(LocalStore::open_or_create(&dir.path().join("store"), LIMITS).unwrap());
        let channel = local.create_channel("files").await.unwrap();
        Fixture {
            _dir: dir,
            cache: tempfile::tempdir().unwrap(),
            store: Arc::new(FaultyStore::new(local.clone(), seed)),
            local,
            channel,
        }
    }

    fn dyn_store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache.path().to_path_buf()
    }

    async fn try_open(
        &self,
        key: Option<&Key>,
        config: VolumeConfig,
    ) -> Result<Volume, VolumeError> {
        Volume::open(self.dyn_store(), self.channel.clone(), key.cloned(), config).await
    }

    /// A volume with no index cache: it replays the whole channel.
    async fn open(&self, key: Option<&Key>) -> Volume {
        self.try_open(key, config(None)).await.unwrap()
    }

    /// A volume with the fixture's index cache.
    async fn open_cached(&self, key: Option<&Key>) -> Volume {
        self.try_open(key, config(Some(self.cache_dir())))
            .await
            .unwrap()
    }

    /// Every message of the channel, oldest first, read from the store itself.
    async fn messages(&self) -> Vec<Message> {
        let mut all = Vec::new();
        let mut cursor = HistoryCursor::Latest;
        loop {
            let page = self
                .local
                .history(self.channel.id, cursor, 100)
                .await
                .unwrap();
            let (Some(oldest), count) = (page.last(), page.len()) else {
                break;
            };
            cursor = HistoryCursor::Before(oldest.id);
            all.extend(page);
            if count < 100 {
                break;
            }
        }
        all.reverse();
        all
    }

    async fn message_ids(&self) -> Vec<Id> {
        self.messages().await.iter().map(|m| m.id).collect()
    }

    /// Files in the channel's attachment directory of the local store.
    fn attachment_files(&self) -> usize {
        let dir = self
            .local
            .root()
            .join("channels")
            .join(self.channel.id.to_string())
            .join("attachments");
        std::fs::read_dir(dir).unwrap().count()
    }

    /// Checks that the store holds no orphans: every message with attachments is one a
    /// live entry needs (or one the volume knows it must still free: a change whose
    /// follow-up refresh failed, on a fetch fault say, frees at the next one), and every
    /// attachment file belongs to a message.
    async fn assert_no_orphans(&self, volume: &Volume, context: &str) {
        let messages = self.messages().await;
        let (in_use, unfreed) = {
            let index = volume.index();
            (index.messages_in_use(), index.unfreed.clone())
        };
        for message in &messages {
            if !message.attachments.is_empty() {
                assert!(
                    in_use.contains(&message.id) || unfreed.contains_key(&message.id),
                    "{context}: message {} ({:?}, {} attachments) is not used by any file",
                    message.id,
                    message.content.get(..16),
                    message.attachments.len()
                );
            }
        }
        let attachments: usize = messages.iter().map(|m| m.attachments.len()).sum();
        assert_eq!(
            self.attachment_files(),
            attachments,
            "{context}: attachment files that no message references"
        );
    }

    /// Makes the store's clock jump: the next ids are `ms` milliseconds later than the
    /// last one (ids.lock holds the last snowflake handed out; see store/local.rs).
    fn jump_clock(&self, ms: u64) {
        let path = self.local.root().join("ids.lock");
        let last: u64 = std::fs::read_to_string(&path)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::fs::write(&path, (last + (ms << 22)).to_string()).unwrap();
    }
}

fn config(cache_dir: Option<PathBuf>) -> VolumeConfig {
    VolumeConfig {
        cache_dir,
        // Freed at once: these tests count what is left.
        free_grace: std::time::Duration::ZERO,
        ..VolumeConfig::default()
    }
}

fn options(encrypted: bool) -> PutOptions {
    PutOptions {
        mtime_ns: MTIME,
        mode: 0o644,
        encrypted,
        owner: None,
        atime_ns: None,
    }
}

fn plan(encrypted: bool) -> ChunkPlan {
    ChunkPlan::new(&LIMITS, dcloud_fs::volume::chunk_kind(encrypted)).unwrap()
}

async fn put(
    volume: &Volume,
    path: &str,
    data: &[u8],
    options: PutOptions,
) -> Result<FileEntry, VolumeError> {
    let source = PutSource::Stream(Box::new(Cursor::new(data.to_vec())));
    volume.put(path, source, path, options, None).await
}

/// Gets a file into memory: the result, and whatever reached the sink.
async fn get(volume: &Volume, path: &str) -> (Result<FileEntry, VolumeError>, Vec<u8>) {
    let mut sink = Vec::new();
    let result = volume.get(path, &mut sink, None).await;
    (result, sink)
}

async fn read(volume: &Volume, path: &str) -> Vec<u8> {
    let (result, sink) = get(volume, path).await;
    if let Err(e) = result {
        panic!("get {path}: {e}");
    }
    sink
}

/// Whether an error is one the [`FaultyStore`] injected.
fn is_injected(e: &VolumeError) -> bool {
    matches!(e, VolumeError::Store(StoreError::Io { context, .. }) if context.contains("injected"))
}

/// The variant of a volume error, to compare with what a model expects.
fn kind(e: &VolumeError) -> &'static str {
    match e {
        VolumeError::NotFound { .. } => "NotFound",
        VolumeError::NotADirectory { .. } => "NotADirectory",
        VolumeError::IsADirectory { .. } => "IsADirectory",
        VolumeError::AlreadyExists { .. } => "AlreadyExists",
        VolumeError::Unsupported(_) => "Unsupported",
        e if is_injected(e) => "injected",
        _ => "other",
    }
}

/// Distinct messages holding a file's chunks.
fn chunk_messages(file: &FileEntry) -> BTreeSet<Id> {
    file.chunks.iter().map(|c| c.message).collect()
}

// ---------------------------------------------------------------------------------------
// 1. Round trips

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_at_chunk_and_message_boundaries() {
    let fx = Fixture::new(1).await;
    let key = Key::generate().unwrap();
    let volume = fx.open(Some(&key)).await;
    let mut rng = SplitMix64::new(0x0001_5eed);
    let mut written: Vec<(String, Vec<u8>, FileEntry)> = Vec::new();

    for encrypted in [true, false] {
        let plan = plan(encrypted);
        let (c, k) = (plan.chunk_len, plan.chunks_per_message);
        assert!(k >= 2, "the test limits should pack chunks: {plan:?}");
        // Chunks carry a checksum (plain) or a tag (encrypted) in the record, which caps
        // how many fit in a 4 KiB record attachment (see
        // `plain_manifest_over_the_limit_...` below).
        let many = if encrypted { 30 } else { 20 };
        let sizes = [
            0,
            1,
            c - 1,
            c,
            c + 1,
            k * c,
            k * c + 1,
            2 * k * c - 1,
            many * c,
            many * c + 17,
        ];
        for (i, &size) in sizes.iter().enumerate() {
            let path = format!("{}/size-{size}", if encrypted { "enc" } else { "plain" });
            let data = rng.bytes(size);
            let options = PutOptions {
                mtime_ns: -1_000_000_007 * (i as i64 + 1),
                mode: 0o100_000 | (0o600 + i as u32),
                encrypted,
                owner: None,
                atime_ns: None,
            };
            let entry = put(&volume, &path, &data, options).await.unwrap();
            assert_eq!(entry.size, size as u64, "{path}");
            assert_eq!(entry.encrypted, encrypted, "{path}");
            assert_eq!(entry.mtime_ns, options.mtime_ns, "{path}");
            assert_eq!(entry.mode, options.mode & 0o7777, "{path}");
            assert_eq!(entry.chunks.len(), size.div_ceil(c), "{path}");
            assert!(entry.chunks.iter().all(|ch| ch.len as usize <= c), "{path}");
            assert_eq!(
                entry.chunks.iter().map(|ch| ch.len).sum::<u64>(),
                size as u64
            );
            assert!(
                entry
                    .chunks
                    .iter()
                    .all(|ch| ch.sha256.is_some() != encrypted),
                "{path}: plain chunks have checksums, encrypted ones don't"
            );
            assert_eq!(
                chunk_messages(&entry).len(),
                entry.chunks.len().div_ceil(k),
                "{path}: chunks should be packed {k} to a message"
            );
            assert_eq!(volume.index().file(&path), Some(&entry));

            let (got, bytes) = get(&volume, &path).await;
            assert_eq!(got.unwrap(), entry);
            assert!(bytes == data, "{path}: bytes differ");
            written.push((path, data, entry));
        }
    }

    // A fresh volume (no cache) replays the same index from the channel alone.
    let fresh = fx.open(Some(&key)).await;
    let mut expected: Vec<String> = written.iter().map(|(p, _, _)| p.clone()).collect();
    expected.sort();
    assert_eq!(file_paths(&fresh), expected);
    for (path, data, entry) in &written {
        assert_eq!(fresh.index().file(path), Some(entry), "{path}");
        assert!(read(&fresh, path).await == *data, "{path}: bytes differ");
    }
    fx.assert_no_orphans(&fresh, "after round trips").await;
}

// ---------------------------------------------------------------------------------------
// 2. A put that fails part way

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_put_leaves_nothing_behind_and_keeps_the_old_version() {
    let fx = Fixture::new(2).await;
    let key = Key::generate().unwrap();
    let volume = fx.open(Some(&key)).await;
    let mut rng = SplitMix64::new(0x0002_5eed);
    let c = plan(true).chunk_len;
    // 36 chunks: 11 data messages, then the last 3 chunks and the record (on one
    // message, or two if the record is too large to share theirs).
    let big = rng.bytes(35 * c + 100);

    // How many posts does this put make? Count it on another channel.
    let probe_channel = fx.local.create_channel("probe").await.unwrap();
    let probe = Volume::open(
        fx.dyn_store(),
        probe_channel,
        Some(key.clone()),
        config(None),
    )
    .await
    .unwrap();
    let before = fx.store.counts();
    put(&probe, "big", &big, options(true)).await.unwrap();
    let posts = (fx.store.counts() - before).posts;
    assert!(posts >= 12, "a 36-chunk file took only {posts} posts");

    // A new file: whichever post fails, the file doesn't appear and nothing is left.
    for n in 1..=posts {
        fx.store.fail_post_in(n);
        let err = put(&volume, "big", &big, options(true))
            .await
            .expect_err("the put should fail");
        assert!(
            is_injected(&err),
            "post #{n} failing: unexpected error {err}"
        );
        assert!(volume.index().file("big").is_none(), "post #{n}");
        assert!(
            fx.message_ids().await.is_empty(),
            "post #{n} failing left messages behind"
        );
        assert_eq!(fx.attachment_files(), 0, "post #{n}");
    }
    let fresh = fx.open(Some(&key)).await;
    assert!(file_paths(&fresh).is_empty());
    assert!(matches!(
        fresh.file("big"),
        Err(VolumeError::NotFound { .. })
    ));

    // Replacing a file: whichever post fails, the old version stays, byte-exact.
    let old = rng.bytes(7 * c + 5);
    let old_entry = put(&volume, "big", &old, options(true)).await.unwrap();
    let baseline = fx.message_ids().await;
    let baseline_attachments = fx.attachment_files();
    for n in 1..=posts {
        fx.store.fail_post_in(n);
        let err = put(&volume, "big", &big, options(true))
            .await
            .expect_err("the put should fail");
        assert!(
            is_injected(&err),
            "post #{n} failing: unexpected error {err}"
        );
        assert_eq!(volume.index().file("big"), Some(&old_entry), "post #{n}");
        assert_eq!(fx.message_ids().await, baseline, "post #{n}");
        assert_eq!(fx.attachment_files(), baseline_attachments, "post #{n}");
    }
    assert!(read(&volume, "big").await == old);
    let fresh = fx.open(Some(&key)).await;
    assert_eq!(fresh.index().file("big"), Some(&old_entry));
    assert!(read(&fresh, "big").await == old);
    fx.assert_no_orphans(&fresh, "after failed puts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_manifest_over_the_limit_is_refused_after_upload_and_cleaned_up() {
    // A plain chunk costs ~130 bytes of record (ids and a SHA-256), so with 4 KiB
    // attachments a record holds ~30 of them: a longer plain file can't be committed.
    let fx = Fixture::new(3).await;
    let volume = fx.open(None).await;
    let mut rng = SplitMix64::new(0x0003_5eed);
    let kept = rng.bytes(100);
    put(&volume, "kept", &kept, options(false)).await.unwrap();
    let baseline = fx.message_ids().await;
    let before = fx.store.counts();
    let data = rng.bytes(60 * plan(false).chunk_len);
    let err = put(&volume, "too-many-chunks", &data, options(false))
        .await
        .unwrap_err();
    assert!(
        matches!(err, VolumeError::ManifestTooLarge { .. }),
        "unexpected error {err}"
    );
    assert!(
        (fx.store.counts() - before).posted_messages > 0,
        "it uploaded first"
    );
    assert_eq!(
        fx.message_ids().await,
        baseline,
        "the upload was not cleaned up"
    );
    assert_eq!(file_paths(&volume), vec!["kept"]);
    assert!(read(&volume, "kept").await == kept);
    fx.assert_no_orphans(&volume, "after a refused manifest")
        .await;
}

// ---------------------------------------------------------------------------------------
// 3. Random operations under random faults, against a model

const MODEL_PATHS: [&str; 8] = [
    "a",
    "b.txt",
    "dir/c",
    "dir/sub/d",
    "dir/sub/e",
    "x",
    "x/y",
    "z",
];

/// Whether `path` is a folder in the model (some file is below it).
fn model_is_dir(model: &BTreeMap<String, Vec<u8>>, path: &str) -> bool {
    let prefix = format!("{path}/");
    model.keys().any(|k| k.starts_with(&prefix))
}

/// Whether some parent of `path` is a file in the model.
fn model_parent_is_file(model: &BTreeMap<String, Vec<u8>>, path: &str) -> bool {
    let mut rest = path;
    while let Some((up, _)) = rest.rsplit_once('/') {
        if model.contains_key(up) {
            return true;
        }
        rest = up;
    }
    false
}

/// What the model says a put must do: `Ok` or the error variant.
fn expect_put(model: &BTreeMap<String, Vec<u8>>, path: &str) -> Result<(), &'static str> {
    if model_parent_is_file(model, path) {
        Err("NotADirectory")
    } else if model_is_dir(model, path) {
        Err("IsADirectory")
    } else {
        Ok(())
    }
}

/// What the model says a rename must do, and the resulting model if it succeeds.
fn expect_rename(
    model: &BTreeMap<String, Vec<u8>>,
    from: &str,
    to: &str,
) -> Result<BTreeMap<String, Vec<u8>>, &'static str> {
    if from == to {
        return Ok(model.clone());
    }
    let mut after = model.clone();
    if let Some(data) = model.get(from) {
        expect_put(model, to)?;
        after.remove(from);
        after.insert(to.to_string(), data.clone());
    } else if model_is_dir(model, from) {
        if to.starts_with(&format!("{from}/")) {
            return Err("Unsupported");
        }
        if model_parent_is_file(model, to) {
            return Err("NotADirectory");
        }
        if model.contains_key(to) {
            return Err("AlreadyExists");
        }
        if model_is_dir(model, to) {
            return Err("IsADirectory");
        }
        let prefix = format!("{from}/");
        for (path, data) in model.range(prefix.clone()..) {
            let Some(rest) = path.strip_prefix(&prefix) else {
                break;
            };
            after.remove(path);
            after.insert(format!("{to}/{rest}"), data.clone());
        }
    } else {
        return Err("NotFound");
    }
    Ok(after)
}

/// What the model says a remove must do, and the resulting model if it succeeds.
fn expect_remove(
    model: &BTreeMap<String, Vec<u8>>,
    path: &str,
    recursive: bool,
) -> Result<BTreeMap<String, Vec<u8>>, &'static str> {
    let mut after = model.clone();
    if after.remove(path).is_some() {
        return Ok(after);
    }
    if !model_is_dir(model, path) {
        return Err("NotFound");
    }
    if !recursive {
        return Err("IsADirectory");
    }
    let prefix = format!("{path}/");
    after.retain(|k, _| !k.starts_with(&prefix));
    Ok(after)
}

/// Checks an operation's outcome against the model's expectation, and returns the new
/// model: the expected one on success, the old one on failure.
fn settle<T>(
    step: usize,
    what: &str,
    model: BTreeMap<String, Vec<u8>>,
    expected: Result<BTreeMap<String, Vec<u8>>, &'static str>,
    outcome: Result<T, VolumeError>,
) -> BTreeMap<String, Vec<u8>> {
    match (expected, outcome) {
        (Ok(after), Ok(_)) => after,
        (Ok(_), Err(e)) => {
            assert!(is_injected(&e), "step {step} {what}: unexpected error {e}");
            model
        }
        (Err(want), Err(e)) => {
            assert_eq!(kind(&e), want, "step {step} {what}: {e}");
            model
        }
        (Err(want), Ok(_)) => panic!("step {step} {what}: succeeded, expected {want}"),
    }
}

/// What a model run saw, over all seeds.
#[derive(Debug, Default)]
struct ModelStats {
    failed_posts: u64,
    failed_fetches: u64,
    /// Operations that failed because of an injected fault.
    injected: usize,
}

fn status_of<T>(outcome: &Result<T, VolumeError>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(e) if is_injected(e) => "injected",
        Err(_) => "refused",
    }
}

/// The knobs of a model run.
struct ModelSetup {
    /// Largest plain file. Plain chunks cost ~130 bytes of record each, so above ~6
    /// chunks a plain file's record no longer fits in the message content and goes to a
    /// record attachment, which every later refresh must fetch.
    max_plain_size: u64,
    /// Probability that a `history` call fails.
    history_failure_rate: f64,
    /// Whether to check after every step that no unreferenced message is left. A change
    /// whose record landed but whose follow-up refresh failed leaves the version it
    /// replaced in the store until a later refresh of the same volume (or its cache)
    /// frees it; a volume opened afresh without a cache never learns of it. That costs
    /// space, never data, so the refresh-fault runs check data only.
    check_orphans: bool,
}

async fn model_run(seed: u64, steps: usize, setup: &ModelSetup, stats: &mut ModelStats) {
    let fx = Fixture::new(seed).await;
    let key = Key::from_bytes([seed as u8; 32]);
    let mut volume = fx.open(Some(&key)).await;
    fx.store
        .set_failure_rates(0.15, 0.10, setup.history_failure_rate);
    let mut rng = SplitMix64::new(seed ^ 0x00de_c0de);
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let c = plan(true).chunk_len as u64;
    // Operations that succeeded, failed by an injected fault, or were refused.
    let mut tally: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut good_gets = 0;

    for step in 0..steps {
        let roll = rng.below(100);
        let known = |rng: &mut SplitMix64, model: &BTreeMap<String, Vec<u8>>| -> String {
            if !model.is_empty() && rng.chance(0.8) {
                model.keys().nth(rng.index(model.len())).unwrap().clone()
            } else {
                MODEL_PATHS[rng.index(MODEL_PATHS.len())].to_string()
            }
        };
        let what;
        let status;
        if roll < 35 {
            let path = MODEL_PATHS[rng.index(MODEL_PATHS.len())];
            let encrypted = rng.chance(0.7);
            let max_size = if encrypted {
                40 * 1024
            } else {
                setup.max_plain_size
            };
            let size = match rng.below(6) {
                0 => 0,
                1 => c * (1 + rng.below(4)),
                _ => rng.below(max_size + 1),
            }
            .min(max_size) as usize;
            let data = rng.bytes(size);
            what = format!("put {path} ({size} bytes, encrypted: {encrypted})");
            let expected = expect_put(&model, path).map(|()| {
                let mut after = model.clone();
                after.insert(path.to_string(), data.clone());
                after
            });
            let outcome = put(&volume, path, &data, options(encrypted)).await;
            if let Ok(entry) = &outcome {
                assert_eq!(entry.size, size as u64, "step {step} {what}");
            }
            status = status_of(&outcome);
            model = settle(step, &what, model, expected, outcome);
        } else if roll < 60 {
            let path = known(&mut rng, &model);
            what = format!("get {path}");
            let (outcome, sink) = get(&volume, &path).await;
            status = status_of(&outcome);
            match (model.get(&path), outcome) {
                (Some(expected), Ok(entry)) => {
                    assert_eq!(entry.size, expected.len() as u64, "step {step} {what}");
                    assert!(sink == *expected, "step {step} {what}: WRONG BYTES");
                    good_gets += 1;
                }
                (Some(expected), Err(e)) => {
                    assert!(is_injected(&e), "step {step} {what}: unexpected error {e}");
                    assert!(
                        expected.starts_with(&sink),
                        "step {step} {what}: a failed get wrote bytes that aren't the file's"
                    );
                }
                (None, Ok(_)) => panic!("step {step} {what}: got a file the model lacks"),
                (None, Err(e)) => {
                    let want = if model_is_dir(&model, &path) {
                        "IsADirectory"
                    } else {
                        "NotFound"
                    };
                    assert_eq!(kind(&e), want, "step {step} {what}: {e}");
                    assert!(sink.is_empty());
                }
            }
        } else if roll < 75 {
            let from = known(&mut rng, &model);
            let to = MODEL_PATHS[rng.index(MODEL_PATHS.len())];
            what = format!("rename {from} -> {to}");
            let expected = expect_rename(&model, &from, to);
            let outcome = volume.rename(&from, to).await;
            status = status_of(&outcome);
            model = settle(step, &what, model, expected, outcome);
        } else if roll < 90 {
            let path = if rng.chance(0.2) {
                "dir".to_string()
            } else {
                known(&mut rng, &model)
            };
            let recursive = rng.chance(0.3);
            what = format!("remove {path} (recursive: {recursive})");
            let expected = expect_remove(&model, &path, recursive);
            let outcome = volume.remove(&path, recursive).await;
            status = status_of(&outcome);
            model = settle(step, &what, model, expected, outcome);
        } else {
            what = "reopen".to_string();
            let outcome = fx.try_open(Some(&key), config(None)).await;
            status = status_of(&outcome);
            match outcome {
                Ok(reopened) => volume = reopened,
                Err(e) => assert!(is_injected(&e), "step {step} {what}: unexpected error {e}"),
            }
        }
        *tally.entry(status).or_default() += 1;
        let expected_files: Vec<String> = model.keys().cloned().collect();
        assert_eq!(
            file_paths(&volume),
            expected_files,
            "step {step} after {what}"
        );
        // Whatever failed was cleaned up, and what was replaced was freed.
        if setup.check_orphans {
            fx.assert_no_orphans(&volume, &format!("seed {seed} step {step} after {what}"))
                .await;
        }
    }

    let counts = fx.store.counts();
    eprintln!(
        "seed {seed}: operations {tally:?}, {good_gets} good gets, {} files at the end; \
         store: {counts:?}",
        model.len()
    );
    let ok = tally.get("ok").copied().unwrap_or(0);
    assert!(
        ok > steps / 3,
        "seed {seed}: only {ok} operations succeeded"
    );
    assert!(good_gets > 0, "seed {seed}: no get succeeded");
    stats.failed_posts += counts.failed_posts;
    stats.failed_fetches += counts.failed_fetches;
    stats.injected += tally.get("injected").copied().unwrap_or(0);

    // Without faults, a volume replayed from scratch holds exactly the model.
    fx.store.clear_faults();
    let fresh = fx.open(Some(&key)).await;
    let expected_files: Vec<String> = model.keys().cloned().collect();
    assert_eq!(
        file_paths(&fresh),
        expected_files,
        "seed {seed}: final listing"
    );
    for (path, data) in &model {
        assert!(
            read(&fresh, path).await == *data,
            "seed {seed}: {path} reads back wrong"
        );
    }
    if setup.check_orphans {
        fx.assert_no_orphans(&fresh, &format!("seed {seed}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_under_random_faults_match_a_model() {
    // Records stay short enough to be inline here: no record attachment is ever
    // fetched, so a fetch fault can only hit a download. (A change whose follow-up
    // refresh fails used to report an error although it took effect: see the test
    // below, which lets faults hit those refreshes.)
    let setup = ModelSetup {
        max_plain_size: 6 * plan(false).chunk_len as u64,
        history_failure_rate: 0.0,
        check_orphans: true,
    };
    let mut stats = ModelStats::default();
    for seed in 11..=16 {
        model_run(seed, 70, &setup, &mut stats).await;
    }
    // The runs are only worth something if faults hit every kind of call.
    assert!(
        stats.failed_posts >= 5 && stats.failed_fetches >= 3 && stats.injected >= 10,
        "too few faults: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_under_faults_in_refreshes_match_a_model() {
    // Large plain files (attached records, fetched by every refresh) and failing
    // history calls: faults now also hit the refresh that follows a change.
    let setup = ModelSetup {
        max_plain_size: 40 * 1024,
        history_failure_rate: 0.05,
        check_orphans: false,
    };
    let mut stats = ModelStats::default();
    for seed in 21..=40 {
        model_run(seed, 70, &setup, &mut stats).await;
    }
}

// ---------------------------------------------------------------------------------------
// 4. Other authors' messages and damaged records

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_garbage_messages_are_ignored() {
    let fx = Fixture::new(4).await;
    let channel = fx.channel.id;
    let key = Key::generate().unwrap();
    let volume = fx.open(Some(&key)).await;
    let mut rng = SplitMix64::new(0x0004_5eed);
    let ours = rng.bytes(2 * plan(false).chunk_len + 10);
    let entry = put(&volume, "ours.txt", &ours, options(false))
        .await
        .unwrap();
    let other: Id = LOCAL_USER_ID + 12_345;
    let text = |content: &str| NewMessage {
        content: content.to_string(),
        attachments: vec![],
    };

    // A valid plain record by someone else that would take our chunks for a file of
    // theirs and delete ours.
    let forged = Record {
        seq: 1000,
        ops: vec![
            Op::Put(FileManifest {
                path: "stolen.txt".into(),
                id: entry.id,
                size: entry.size,
                mtime_ns: MTIME,
                mode: 0o644,
                encrypted: false,
                chunks: entry.chunks.iter().map(ChunkRef::from).collect(),
                data_key: None,
                symlink: None,
                special: None,
                node: None,
                meta: Default::default(),
            }),
            Op::Del {
                path: "ours.txt".into(),
                moved: None,
            },
        ],
    };
    let (content, attachment) = format::record_message_parts(
        format::seal_record(&forged, format::RecordSeal::Unsigned, channel).unwrap(),
        &LIMITS,
    );
    let forged_message = NewMessage {
        content,
        attachments: attachment.into_iter().collect(),
    };
    fx.local
        .post_as(other, channel, forged_message)
        .await
        .unwrap();
    // Our own record message copied verbatim (content and attachments) by someone else:
    // if it counted, it would become the newer version of ours.txt.
    let original = fx
        .local
        .message(channel, entry.record_message)
        .await
        .unwrap();
    let mut copied = Vec::new();
    for a in &original.attachments {
        let data = fx
            .local
            .fetch_attachment(channel, original.id, a.id, u64::MAX)
            .await
            .unwrap();
        copied.push(NewAttachment {
            filename: a.filename.clone(),
            data,
        });
    }
    fx.local
        .post_as(
            other,
            channel,
            NewMessage {
                content: original.content.clone(),
                attachments: copied,
            },
        )
        .await
        .unwrap();
    // Garbage that looks like ours.
    for content in [
        "dcfs1 AAAA",
        "dcfs1 garbage!!",
        "dcfs1 data",
        "hello everyone",
    ] {
        fx.local
            .post_as(other, channel, text(content))
            .await
            .unwrap();
    }
    let garbage_record = NewMessage {
        content: format!("dcfs1 @{RECORD_ATTACHMENT}"),
        attachments: vec![NewAttachment {
            filename: RECORD_ATTACHMENT.into(),
            data: Bytes::from(rng.bytes(300)),
        }],
    };
    fx.local
        .post_as(other, channel, garbage_record)
        .await
        .unwrap();

    // Our own damaged messages: a record that isn't one, and one whose attachment is
    // missing, are skipped and remembered; text that isn't a record is ignored.
    let own_garbage = fx.local.post(channel, text("dcfs1 AAAA")).await.unwrap();
    let own_missing = fx
        .local
        .post(channel, text(&format!("dcfs1 @{RECORD_ATTACHMENT}")))
        .await
        .unwrap();
    fx.local
        .post(channel, text("dcfs1 not a record at all!"))
        .await
        .unwrap();
    fx.local.post(channel, text("just chatting")).await.unwrap();

    let later = rng.bytes(50);
    put(&volume, "later.txt", &later, options(true))
        .await
        .unwrap();

    let expected_skips: BTreeSet<Id> = [own_garbage.id, own_missing.id].into();
    for key in [None, Some(&key)] {
        let before = fx.store.counts();
        let fresh = fx.open(key).await;
        let opened = fx.store.counts() - before;
        let listed = file_paths(&fresh);
        if key.is_some() {
            assert_eq!(listed, vec!["later.txt", "ours.txt"]);
            assert!(read(&fresh, "later.txt").await == later);
        } else {
            assert_eq!(listed, vec!["ours.txt"]);
        }
        assert_eq!(
            fresh.index().file("ours.txt").map(|f| f.record_message),
            Some(entry.record_message),
            "another author's copy of our record replaced our file"
        );
        assert!(read(&fresh, "ours.txt").await == ours);
        assert!(matches!(
            fresh.file("stolen.txt"),
            Err(VolumeError::NotFound { .. }) | Err(VolumeError::KeyNeeded { .. })
        ));
        let skipped = fresh.index().skipped().clone();
        for id in &expected_skips {
            assert!(
                matches!(skipped.get(id), Some(Skip::Damaged(_))),
                "message {id} not skipped as damaged: {skipped:?}"
            );
        }
        // Without a key, our encrypted later.txt is skipped too; nothing else is.
        let extra: Vec<&Skip> = skipped
            .iter()
            .filter(|(id, _)| !expected_skips.contains(id))
            .map(|(_, s)| s)
            .collect();
        match key {
            Some(_) => assert!(extra.is_empty(), "{extra:?}"),
            None => assert!(
                extra.len() == 1 && matches!(extra[0], Skip::NoKey(_)),
                "{extra:?}"
            ),
        }
        // Only our own (inline) records were read: no attachment of theirs was fetched.
        assert_eq!(opened.fetches, 0, "opening fetched attachments: {opened:?}");
    }
    // The volume that was open all along agrees once it has read the new messages.
    volume.refresh().await.unwrap();
    assert_eq!(file_paths(&volume), vec!["later.txt", "ours.txt"]);
    assert_eq!(volume.index().file("ours.txt"), Some(&entry));
}

// ---------------------------------------------------------------------------------------
// 5. Keys

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_key_is_reported_with_key_ids() {
    let fx = Fixture::new(5).await;
    let key_a = Key::generate().unwrap();
    let key_b = Key::generate().unwrap();
    assert_ne!(key_a.id(), key_b.id());
    let mut rng = SplitMix64::new(0x0005_5eed);
    let secret = rng.bytes(5 * plan(true).chunk_len);
    let public = rng.bytes(300);
    {
        let writer = fx.open(Some(&key_a)).await;
        put(&writer, "secret/file.bin", &secret, options(true))
            .await
            .unwrap();
        put(&writer, "public.txt", &public, options(false))
            .await
            .unwrap();
    }

    // A reader with another key can't tell the plain records of key A from forgeries,
    // and takes none (a reader without a key takes them, below).
    let wrong = fx.open(Some(&key_b)).await;
    assert!(file_paths(&wrong).is_empty());
    let check_wrong_key = |e: VolumeError| {
        let text = e.to_string();
        match e {
            VolumeError::WrongKey { written, have, .. } => {
                assert_eq!((written, have), (key_a.id(), key_b.id()));
            }
            other => panic!("expected WrongKey, got {other}"),
        }
        assert!(text.contains(&key_a.id().to_string()), "{text}");
        assert!(text.contains(&key_b.id().to_string()), "{text}");
    };
    check_wrong_key(wrong.file("secret/file.bin").unwrap_err());
    let (result, sink) = get(&wrong, "secret/file.bin").await;
    check_wrong_key(result.unwrap_err());
    assert!(sink.is_empty());
    assert!(
        wrong
            .index()
            .skipped()
            .values()
            .any(|s| *s == Skip::WrongKey(key_a.id()))
    );

    let keyless = fx.open(None).await;
    assert_eq!(file_paths(&keyless), vec!["public.txt"]);
    assert!(read(&keyless, "public.txt").await == public);
    let (result, sink) = get(&keyless, "secret/file.bin").await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, VolumeError::KeyNeeded { count: 1, .. }),
        "expected KeyNeeded, got {err}"
    );
    assert!(sink.is_empty());
    assert!(matches!(
        keyless.file("secret/file.bin"),
        Err(VolumeError::KeyNeeded { .. })
    ));
    // Without a key, encrypting is refused before anything is posted.
    let before = fx.store.counts();
    let err = put(&keyless, "new.bin", b"x", options(true))
        .await
        .unwrap_err();
    assert!(matches!(err, VolumeError::NoKey), "{err}");
    assert_eq!((fx.store.counts() - before).posts, 0);

    // The right key still reads everything.
    let right = fx.open(Some(&key_a)).await;
    assert!(read(&right, "secret/file.bin").await == secret);
}

// ---------------------------------------------------------------------------------------
// 6. Damaged chunks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_chunks_fail_the_get_and_no_bad_byte_is_written() {
    for encrypted in [true, false] {
        let fx = Fixture::new(6).await;
        let key = Key::generate().unwrap();
        let volume = fx.open(Some(&key)).await;
        let mut rng = SplitMix64::new(0x0006_5eed);
        let c = plan(encrypted).chunk_len;
        let data = rng.bytes(12 * c + 77);
        let entry = put(&volume, "f", &data, options(encrypted)).await.unwrap();
        let chunk_path = |index: usize| {
            fx.local
                .attachment_path(fx.channel.id, entry.chunks[index].attachment)
        };
        let mode = if encrypted { "encrypted" } else { "plain" };

        // One flipped byte in chunk 7.
        let damaged = 7;
        let original = std::fs::read(chunk_path(damaged)).unwrap();
        let mut flipped = original.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x20;
        std::fs::write(chunk_path(damaged), &flipped).unwrap();
        let (result, sink) = get(&volume, "f").await;
        let err = result.unwrap_err();
        assert!(
            matches!(err, VolumeError::Chunk { .. }),
            "{mode}: expected a chunk error, got {err}"
        );
        assert!(
            sink.len() <= damaged * c && data.starts_with(&sink),
            "{mode}: the sink holds more than the good prefix ({} bytes)",
            sink.len()
        );
        assert_eq!(
            sink.len(),
            damaged * c,
            "{mode}: the chunks before the damaged one should have been written"
        );
        std::fs::write(chunk_path(damaged), &original).unwrap();
        assert!(read(&volume, "f").await == data, "{mode}: restored");

        // Two whole chunks swapped (each intact, but in the other's place).
        let (second, third) = (
            std::fs::read(chunk_path(2)).unwrap(),
            std::fs::read(chunk_path(3)).unwrap(),
        );
        std::fs::write(chunk_path(2), &third).unwrap();
        std::fs::write(chunk_path(3), &second).unwrap();
        let (result, sink) = get(&volume, "f").await;
        assert!(
            matches!(result, Err(VolumeError::Chunk { .. })),
            "{mode}: swapped chunks: {result:?}"
        );
        assert_eq!(sink, data[..2 * c], "{mode}: swapped chunks");
        std::fs::write(chunk_path(2), &second).unwrap();
        std::fs::write(chunk_path(3), &third).unwrap();

        // A chunk truncated.
        std::fs::write(chunk_path(11), &third[..third.len() - 1]).unwrap();
        let (result, sink) = get(&volume, "f").await;
        assert!(
            matches!(result, Err(VolumeError::Chunk { .. })),
            "{mode}: truncated chunk: {result:?}"
        );
        assert!(data.starts_with(&sink) && sink.len() <= 11 * c, "{mode}");

        // A chunk gone from the store.
        std::fs::remove_file(chunk_path(5)).unwrap();
        let (result, sink) = get(&volume, "f").await;
        assert!(
            matches!(result, Err(VolumeError::ChunkMissing { index: 5, .. })),
            "{mode}: missing chunk: {result:?}"
        );
        assert!(data.starts_with(&sink) && sink.len() <= 5 * c, "{mode}");
    }
}

// ---------------------------------------------------------------------------------------
// 7. Freeing space

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_and_overwrite_free_the_old_messages() {
    let fx = Fixture::new(7).await;
    let key = Key::generate().unwrap();
    let volume = fx.open(Some(&key)).await;
    let mut rng = SplitMix64::new(0x0007_5eed);
    let c = plan(true).chunk_len;

    // Remove: only tombstone records, without attachments, remain.
    let first = put(&volume, "a", &rng.bytes(10 * c + 3), options(true))
        .await
        .unwrap();
    assert!(fx.attachment_files() >= 11);
    volume.remove("a", false).await.unwrap();
    let messages = fx.messages().await;
    assert!(
        messages.iter().all(|m| m.attachments.is_empty()),
        "messages with attachments remain after remove: {messages:?}"
    );
    assert_eq!(fx.attachment_files(), 0);
    for id in chunk_messages(&first)
        .into_iter()
        .chain([first.record_message])
    {
        assert!(
            fx.local.message(fx.channel.id, id).await.is_err(),
            "message {id} of the removed file is still there"
        );
    }

    // Overwrite: the old version's messages go, the new version's stay.
    let mut previous = put(&volume, "b", &rng.bytes(10 * c + 3), options(true))
        .await
        .unwrap();
    for (size, encrypted) in [(7 * c, true), (c + 1, false), (0, true), (4 * c, false)] {
        let data = rng.bytes(size);
        let current = put(&volume, "b", &data, options(encrypted)).await.unwrap();
        let present: BTreeSet<Id> = fx.message_ids().await.into_iter().collect();
        for id in chunk_messages(&previous)
            .into_iter()
            .chain([previous.record_message])
        {
            assert!(
                !present.contains(&id),
                "overwrite with {size} bytes: message {id} of the old version remains"
            );
        }
        for id in chunk_messages(&current) {
            assert!(present.contains(&id));
        }
        let with_attachments: BTreeSet<Id> = fx
            .messages()
            .await
            .into_iter()
            .filter(|m| !m.attachments.is_empty())
            .map(|m| m.id)
            .collect();
        let mut needed = chunk_messages(&current);
        if fx
            .local
            .message(fx.channel.id, current.record_message)
            .await
            .unwrap()
            .attachment_named(RECORD_ATTACHMENT)
            .is_some()
        {
            needed.insert(current.record_message);
        }
        assert_eq!(with_attachments, needed, "overwrite with {size} bytes");
        let chunk_files = fx.attachment_files()
            - fx.messages()
                .await
                .iter()
                .filter(|m| m.attachment_named(RECORD_ATTACHMENT).is_some())
                .count();
        assert_eq!(
            chunk_files,
            current.chunks.len(),
            "overwrite with {size} bytes"
        );
        assert!(read(&volume, "b").await == data);
        previous = current;
    }

    // Rename, then overwrite the renamed file: the original chunks go too; the rename's
    // record stays as a tombstone for "b", without attachments.
    volume.rename("b", "c").await.unwrap();
    let renamed = volume.file("c").unwrap();
    assert_eq!(renamed.chunks, previous.chunks);
    let fresh = rng.bytes(2 * c);
    put(&volume, "c", &fresh, options(true)).await.unwrap();
    let present: BTreeSet<Id> = fx.message_ids().await.into_iter().collect();
    assert!(chunk_messages(&previous).is_disjoint(&present));
    assert!(
        present.contains(&renamed.record_message),
        "the tombstone went"
    );
    fx.assert_no_orphans(&volume, "after overwrites").await;
}

// ---------------------------------------------------------------------------------------
// 8. Index cache

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_cache_reads_less_and_still_sees_other_writers() {
    let fx = Fixture::new(8).await;
    let key = Key::generate().unwrap();
    let mut rng = SplitMix64::new(0x0008_5eed);
    let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    {
        let cached = fx.open_cached(Some(&key)).await;
        for i in 0..30 {
            let data = rng.bytes(100 + i);
            put(&cached, &format!("f{i:02}"), &data, options(true))
                .await
                .unwrap();
            contents.insert(format!("f{i:02}"), data);
        }
        // A refresh re-reads the last 5 s before the newest message it has seen (for
        // messages that show up late): let the store's clock move on, as it would
        // between sessions, so that the 30 puts above are older than that.
        fx.jump_clock(6_000);
        let data = rng.bytes(77);
        put(&cached, "last", &data, options(true)).await.unwrap();
        contents.insert("last".into(), data);
        // A volume's own puts don't move the cache's read mark (only reading the
        // channel does), so read it once before this session ends.
        cached.refresh().await.unwrap();
    }
    {
        // Another instance, without the cache, changes the channel meanwhile.
        let other = fx.open(Some(&key)).await;
        let data = rng.bytes(3 * plan(true).chunk_len);
        put(&other, "from-other", &data, options(true))
            .await
            .unwrap();
        contents.insert("from-other".into(), data);
        let data = rng.bytes(5);
        put(&other, "f05", &data, options(false)).await.unwrap();
        contents.insert("f05".into(), data);
        other.remove("f03", false).await.unwrap();
        contents.remove("f03");
    }

    let before = fx.store.counts();
    let uncached = fx.open(Some(&key)).await;
    let full = (fx.store.counts() - before).history_messages;
    let before = fx.store.counts();
    let reopened = fx.open_cached(Some(&key)).await;
    let incremental = (fx.store.counts() - before).history_messages;
    let in_channel = fx.messages().await.len() as u64;
    assert!(in_channel >= 33, "{in_channel} messages");
    assert_eq!(full, in_channel, "a full replay reads every message once");
    assert!(
        incremental * 5 <= full,
        "the cached open read {incremental} messages, a full replay {full}"
    );

    let expected: Vec<String> = contents.keys().cloned().collect();
    assert_eq!(file_paths(&uncached), expected);
    assert_eq!(file_paths(&reopened), expected);
    for (path, data) in &contents {
        assert_eq!(
            reopened.index().file(path),
            uncached.index().file(path),
            "{path}"
        );
        assert!(read(&reopened, path).await == *data, "{path}");
    }

    // The cache belongs to its key: opening with no key doesn't use it (and sees
    // nothing encrypted).
    let before = fx.store.counts();
    let keyless = fx
        .try_open(None, config(Some(fx.cache_dir())))
        .await
        .unwrap();
    assert!((fx.store.counts() - before).history_messages >= full);
    assert_eq!(file_paths(&keyless), vec!["f05"]);
}

/// The cache file and its journal, once written.
fn cache_files(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "index")
                && path.parent().is_some_and(|p| !p.ends_with("uploads"))
            {
                found.push(path);
            }
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    let whole = found.pop().unwrap();
    let journal = whole.with_extension("journal");
    (whole, journal)
}

/// A cache of another layout (an older dcloud-fs's) is not misread: the channel is
/// read again, and the next save writes the current layout and removes the JSON cache
/// of before layout 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_cache_of_another_layout_is_rebuilt_and_the_old_json_one_removed() {
    let fx = Fixture::new(10).await;
    let cached = fx.open_cached(None).await;
    for i in 0..3 {
        put(&cached, &format!("f{i}"), b"plain", options(false))
            .await
            .unwrap();
    }
    cached.save();
    drop(cached);
    let (whole, _) = cache_files(&fx.cache_dir());
    let current = std::fs::read(&whole).unwrap();
    let layout = dcloud_fs::volume::index::INDEX_CACHE_VERSION as u8;
    assert_eq!(current[0], layout, "the layout comes first");
    // An older layout as its first byte, and what follows in no shape this one knows.
    let mut older = current.clone();
    older[0] = layout - 1;
    std::fs::write(&whole, &older).unwrap();
    let legacy = whole.with_extension("json");
    std::fs::write(&legacy, br#"{"version":6}"#).unwrap();
    // Past the seconds a warm open reads again: what it reads is the whole history.
    fx.jump_clock(6_000);
    let before = fx.store.counts();
    let reopened = fx.open_cached(None).await;
    let read = fx.store.counts() - before;
    assert!(
        read.history_messages >= 3,
        "the history was read again: {read:?}"
    );
    assert_eq!(file_paths(&reopened), ["f0", "f1", "f2"]);
    reopened.save();
    assert_eq!(std::fs::read(&whole).unwrap()[0], layout);
    assert!(!legacy.exists(), "the JSON cache of before is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saving_the_cache_appends_what_changed_and_a_cut_short_journal_is_only_stale() {
    let fx = Fixture::new(10).await;
    let key = Key::generate().unwrap();
    let mut rng = SplitMix64::new(0x0010_5eed);
    let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let cached = fx.open_cached(Some(&key)).await;
    for i in 0..20 {
        let data = rng.bytes(50 + i);
        put(&cached, &format!("f{i:02}"), &data, options(true))
            .await
            .unwrap();
        contents.insert(format!("f{i:02}"), data);
    }
    cached.save(); // the whole index: there was none
    let (whole, journal) = cache_files(&fx.cache_dir());
    let whole_bytes = std::fs::read(&whole).unwrap();
    assert!(!journal.exists());
    // A few changes: two deltas, the whole index untouched.
    for round in 0..2 {
        let data = rng.bytes(9);
        put(&cached, &format!("new{round}"), &data, options(true))
            .await
            .unwrap();
        contents.insert(format!("new{round}"), data);
        cached.remove(&format!("f0{round}"), false).await.unwrap();
        contents.remove(&format!("f0{round}"));
        cached.refresh().await.unwrap();
        cached.save();
        assert_eq!(std::fs::read(&whole).unwrap(), whole_bytes, "round {round}");
    }
    let journal_len = std::fs::metadata(&journal).unwrap().len();
    assert!(
        journal_len < whole_bytes.len() as u64 / 2,
        "{journal_len} bytes of journal, {} of index",
        whole_bytes.len()
    );
    let expected: Vec<String> = contents.keys().cloned().collect();
    let saved = cached.index().clone();
    drop(cached);

    // Reopened: the whole index and both deltas make the state it saved, and nothing
    // had to be read again but the last seconds.
    let before = fx.store.counts();
    let reopened = fx.open_cached(Some(&key)).await;
    let opened = fx.store.counts() - before;
    assert_eq!(opened.fetches, 0, "{opened:?}");
    assert_eq!(file_paths(&reopened), expected);
    assert_eq!(reopened.index().last_seen, saved.last_seen);
    assert_eq!(reopened.index().unfreed, saved.unfreed);
    assert_eq!(reopened.index().messages_in_use(), saved.messages_in_use());
    for path in &expected {
        assert_eq!(reopened.index().file(path), saved.file(path), "{path}");
    }
    drop(reopened);

    // A write cut short: the last delta doesn't count, the cache is stale, and the
    // refresh at open reads what it missed.
    let journal_bytes = std::fs::read(&journal).unwrap();
    std::fs::write(&journal, &journal_bytes[..journal_bytes.len() - 3]).unwrap();
    fx.jump_clock(6_000);
    let reopened = fx.open_cached(Some(&key)).await;
    assert_eq!(file_paths(&reopened), expected);
    for (path, data) in &contents {
        assert!(read(&reopened, path).await == *data, "{path}");
    }
    // The next write is whole again (the journal isn't what it wrote).
    put(&reopened, "after", b"x", options(true)).await.unwrap();
    reopened.save();
    assert_ne!(std::fs::read(&whole).unwrap(), whole_bytes);
    assert!(!journal.exists());
}

#[tokio::test]
async fn a_refresh_does_not_fetch_again_the_records_it_has_read() {
    let fx = Fixture::new(9).await;
    let key = Key::generate().unwrap();
    let mut rng = SplitMix64::new(0x0009_5eed);
    let data = rng.bytes(40 * plan(true).chunk_len);
    {
        let cached = fx.open_cached(Some(&key)).await;
        put(&cached, "big", &data, options(true)).await.unwrap();
        cached.refresh().await.unwrap();
    }
    // The record names 40 chunks: it is an attachment, what reading it again fetches.
    let messages = fx.messages().await;
    let record = messages.last().unwrap();
    assert!(record.attachment_named("record.dcfr").is_some());

    // Opened again at once, the refresh re-reads the last seconds (the record's
    // message among them) but fetches nothing: the cache has read that record.
    let before = fx.store.counts();
    let reopened = fx.open_cached(Some(&key)).await;
    let opened = fx.store.counts() - before;
    assert!(opened.history_messages >= 1, "{opened:?}");
    assert_eq!(opened.fetches, 0, "{opened:?}");
    assert!(read(&reopened, "big").await == data);

    // A record it hasn't read, in the same seconds, is read.
    let other = fx.open(Some(&key)).await;
    put(&other, "small", b"new", options(true)).await.unwrap();
    reopened.refresh().await.unwrap();
    assert!(read(&reopened, "small").await == b"new");
}

// ---------------------------------------------------------------------------------------
// 9. Bounded parallelism and memory

/// A source that notes, at every read, how many chunks it is ahead of the posts that
/// have completed.
struct WatchedSource {
    data: Cursor<Vec<u8>>,
    chunk_len: u64,
    store: Arc<FaultyStore>,
    max_ahead: Arc<AtomicU64>,
}

impl Read for WatchedSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.read(buf)?;
        let touched = self.data.position().div_ceil(self.chunk_len);
        let posted = self.store.counts().posted_chunk_attachments;
        self.max_ahead
            .fetch_max(touched.saturating_sub(posted), Ordering::SeqCst);
        Ok(n)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_bounds_posts_in_flight_and_chunks_in_memory() {
    let plan = plan(true);
    let (c, k) = (plan.chunk_len, plan.chunks_per_message);
    let mut rng = SplitMix64::new(0x0009_5eed);
    // 31 chunks: 10 data messages, and about as many as a 4 KiB record can list.
    let data = rng.bytes(10 * k * c + 5);
    for parallel in [1usize, 2, 4] {
        let fx = Fixture::new(9).await;
        let key = Key::generate().unwrap();
        let config = VolumeConfig {
            upload_parallel_messages: parallel,
            ..config(None)
        };
        let volume = fx.try_open(Some(&key), config).await.unwrap();
        fx.store.set_post_delay(Duration::from_millis(20));
        fx.store.reset_max_posts_in_flight();
        let max_ahead = Arc::new(AtomicU64::new(0));
        let source = WatchedSource {
            data: Cursor::new(data.clone()),
            chunk_len: c as u64,
            store: fx.store.clone(),
            max_ahead: max_ahead.clone(),
        };
        volume
            .put(
                "big",
                PutSource::Stream(Box::new(source)),
                "big",
                options(true),
                None,
            )
            .await
            .unwrap();
        let in_flight = fx.store.max_posts_in_flight();
        assert!(
            (1..=parallel as u64).contains(&in_flight),
            "upload_parallel_messages = {parallel}: {in_flight} posts were in flight at once"
        );
        if parallel > 1 {
            assert!(
                in_flight >= 2,
                "upload_parallel_messages = {parallel}: posts never overlapped"
            );
        }
        // (P + 1) · k chunk buffers: P groups posting and one being read and sealed.
        let bound = ((parallel + 1) * k) as u64;
        let ahead = max_ahead.load(Ordering::SeqCst);
        eprintln!("P = {parallel}: {in_flight} posts in flight, read {ahead} chunks ahead");
        assert!(
            ahead <= bound,
            "upload_parallel_messages = {parallel}: the source was read {ahead} chunks \
             ahead of the posts, more than {bound}"
        );
        fx.store.set_post_delay(Duration::ZERO);
        assert!(read(&volume, "big").await == data);
    }
}

// ---------------------------------------------------------------------------------------
// 10. Rename and remove of folders

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_moves_without_uploading_and_remove_guards_full_folders() {
    let fx = Fixture::new(10).await;
    let key = Key::generate().unwrap();
    let volume = fx.open(Some(&key)).await;
    let mut rng = SplitMix64::new(0x000a_5eed);
    let c = plan(true).chunk_len;
    let mut contents: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for (path, size, encrypted) in [
        ("docs/a.txt", 5 * c + 1, true),
        ("docs/sub/b.bin", 8 * c, false),
        ("docs/sub/deeper/c", 0, true),
        ("top", 100, true),
    ] {
        let data = rng.bytes(size);
        put(&volume, path, &data, options(encrypted)).await.unwrap();
        contents.insert(path, data);
    }
    volume.mkdir("docs/empty", MTIME, 0o755).await.unwrap();
    let entries: BTreeMap<&str, FileEntry> = contents
        .keys()
        .map(|p| (*p, volume.file(p).unwrap()))
        .collect();

    let before = fx.store.counts();
    volume.rename("top", "docs/top-moved").await.unwrap();
    volume.rename("docs", "archive/2024").await.unwrap();
    let moved = fx.store.counts() - before;
    assert_eq!(
        moved.posted_chunk_attachments, 0,
        "a rename uploaded chunks"
    );
    assert_eq!(moved.posted_messages, 2, "one record per rename: {moved:?}");

    let renamed = [
        ("archive/2024/a.txt", "docs/a.txt"),
        ("archive/2024/sub/b.bin", "docs/sub/b.bin"),
        ("archive/2024/sub/deeper/c", "docs/sub/deeper/c"),
        ("archive/2024/top-moved", "top"),
    ];
    for view in [&volume, &fx.open(Some(&key)).await] {
        assert_eq!(
            file_paths(view),
            renamed
                .iter()
                .map(|(to, _)| to.to_string())
                .collect::<Vec<_>>()
        );
        assert!(matches!(
            view.index().node("archive/2024/empty"),
            Some(Node::Dir(Some(_)))
        ));
        assert!(view.index().node("docs").is_none());
        assert!(view.index().node("top").is_none());
        for (to, from) in renamed {
            let file = view.file(to).unwrap();
            let old = &entries[from];
            assert_eq!(
                (file.id, &file.chunks, file.size, file.encrypted),
                (old.id, &old.chunks, old.size, old.encrypted),
                "{to}: not the same chunks"
            );
            assert!(read(view, to).await == contents[from], "{to}");
        }
    }

    // Folders with contents are only removed recursively.
    for folder in ["archive/2024", "archive/2024/sub", "archive"] {
        let err = volume.remove(folder, false).await.unwrap_err();
        assert!(
            matches!(err, VolumeError::IsADirectory { .. }),
            "{folder}: {err}"
        );
    }
    assert_eq!(file_paths(&volume).len(), 4);
    volume.remove("archive/2024/empty", false).await.unwrap();
    assert!(volume.index().node("archive/2024/empty").is_none());
    assert!(volume.rename("archive", "archive/inside").await.is_err());
    assert!(matches!(
        volume.rename("nothing", "else").await,
        Err(VolumeError::NotFound { .. })
    ));

    volume.remove("archive/2024/sub", true).await.unwrap();
    assert_eq!(
        file_paths(&volume),
        vec!["archive/2024/a.txt", "archive/2024/top-moved"]
    );
    volume.remove("archive", true).await.unwrap();
    assert!(file_paths(&volume).is_empty());
    assert!(file_paths(&fx.open(Some(&key)).await).is_empty());
    // Removing everything freed every chunk. What remains are tombstone records; the
    // folder rename's record was too long for the message content, so it kept its
    // record attachment.
    let messages = fx.messages().await;
    assert!(
        messages
            .iter()
            .flat_map(|m| &m.attachments)
            .all(|a| a.filename == RECORD_ATTACHMENT),
        "chunks remain after removing everything: {messages:?}"
    );
    fx.assert_no_orphans(&volume, "after removing everything")
        .await;
}

// ---------------------------------------------------------------------------------------
// Regression: `Volume::landed` runs after a change's record is posted, and refreshes
// before freeing the replaced version. When that refresh failed (a history or
// record-fetch error), the change used to return the error although its record was in
// the channel, and `Volume::put` then deleted the new version's data messages, leaving a
// file with missing chunks. Now the change succeeds and the freeing is retried later.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_that_reports_failure_leaves_the_old_version() {
    let fx = Fixture::new(99).await;
    let key = Key::generate().unwrap();
    let volume = fx.open(Some(&key)).await;
    let mut rng = SplitMix64::new(0x0099_5eed);
    let c = plan(true).chunk_len;
    let old = rng.bytes(4 * c);
    put(&volume, "f", &old, options(true)).await.unwrap();
    let new = rng.bytes(5 * c);
    // The only history call of an overwrite is the refresh after its record landed.
    fx.store.fail_history_in(1);
    let outcome = put(&volume, "f", &new, options(true)).await;
    let expected = match &outcome {
        Ok(_) => &new,
        Err(e) => {
            assert!(is_injected(e), "{e}");
            &old
        }
    };
    let fresh = fx.open(Some(&key)).await;
    let (result, sink) = get(&fresh, "f").await;
    assert!(
        result.is_ok() && sink == *expected,
        "put returned {outcome:?}; a fresh volume then reads f as {result:?} ({} bytes)",
        sink.len()
    );
    // The old version could not be freed then; the next good refresh frees it.
    fx.store.clear_faults();
    volume.refresh().await.unwrap();
    fx.assert_no_orphans(&volume, "after the retried freeing")
        .await;
}

// ---------------------------------------------------------------------------------------
// Small files, several to a message

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_are_packed_into_one_message_and_land_together_or_not_at_all() {
    let fx = Fixture::new(77).await;
    let key = Key::generate().unwrap();
    let volume = fx.open(Some(&key)).await;
    let mut rng = SplitMix64::new(77);
    // Ten files, one of them empty, that one message holds (with these tiny limits,
    // the record is what limits it).
    let batch = |rng: &mut SplitMix64, prefix: &str, encrypted: bool| -> Vec<SmallFile> {
        (0..10)
            .map(|i| SmallFile {
                path: format!("{prefix}/f{i}"),
                data: if i == 0 {
                    Vec::new()
                } else {
                    let len = 1 + rng.index(300);
                    rng.bytes(len)
                },
                options: options(encrypted),
            })
            .collect()
    };

    // A failed post stores none of the batch.
    let failing = batch(&mut rng, "failed", true);
    fx.store.fail_post_in(1);
    assert!(volume.put_small(failing).await.is_err());
    assert!(file_paths(&volume).is_empty());
    assert!(fx.messages().await.is_empty());

    // A good batch is one message, its nine chunks in one attachment, and every file
    // reads back; reading one fetches only its bytes of the pack.
    for (prefix, encrypted) in [("enc", true), ("plain", false)] {
        let files_in = batch(&mut rng, prefix, encrypted);
        let before = fx.store.counts();
        volume.put_small(files_in.clone()).await.unwrap();
        let posted = fx.store.counts() - before;
        assert_eq!(posted.posted_messages, 1, "{prefix}");
        assert_eq!(posted.posted_chunk_attachments, 1, "{prefix}: one pack");
        let fresh = fx.open(Some(&key)).await;
        for file in &files_in {
            let before = fx.store.counts();
            assert_eq!(read(&fresh, &file.path).await, file.data, "{}", file.path);
            let fetched = (fx.store.counts() - before).fetched_bytes;
            let kind = dcloud_fs::volume::chunk_kind(encrypted);
            let sealed = if file.data.is_empty() {
                0
            } else {
                kind.sealed_len(file.data.len() as u64)
            };
            assert_eq!(fetched, sealed, "{}: only its range of the pack", file.path);
            let entry = fresh.index().file(&file.path).cloned().unwrap();
            assert_eq!(entry.encrypted, encrypted);
            assert!(entry.chunks.iter().all(|c| c.packed_at.is_some()));
        }
    }
    // Plain files packed alone are readable without a key.
    let keyless = fx.open(None).await;
    assert!(file_paths(&keyless).iter().all(|p| p.starts_with("plain/")));
    assert_eq!(file_paths(&keyless).len(), 10);
    for path in file_paths(&keyless) {
        assert_eq!(read(&keyless, &path).await, read(&volume, &path).await);
    }

    // Deleting some of a pack's files keeps it; deleting the last one frees it.
    let shared = volume.index().file("plain/f1").unwrap().chunks[0].message;
    for i in 0..9 {
        volume.remove(&format!("plain/f{i}"), false).await.unwrap();
        volume.refresh().await.unwrap();
    }
    assert!(fx.messages().await.iter().any(|m| m.id == shared));
    assert_eq!(read(&volume, "plain/f9").await.len(), {
        let fresh = fx.open(Some(&key)).await;
        read(&fresh, "plain/f9").await.len()
    });
    volume.remove("plain/f9", false).await.unwrap();
    volume.refresh().await.unwrap();
    assert!(fx.messages().await.iter().all(|m| m.id != shared));
    fx.assert_no_orphans(&volume, "after deleting packed files")
        .await;

    // Replacing packed files frees the message they shared once none of them is left.
    let shared = volume.index().file("enc/f1").unwrap().chunks[0].message;
    let replacements: Vec<SmallFile> = batch(&mut rng, "enc", true);
    volume.put_small(replacements).await.unwrap();
    assert!(fx.messages().await.iter().all(|m| m.id != shared));
    fx.assert_no_orphans(&volume, "after replacing small files")
        .await;

    // More than a message holds goes up as several, each packed.
    let many: Vec<SmallFile> = (0..40)
        .map(|i| SmallFile {
            path: format!("many/{i}"),
            data: rng.bytes(200),
            options: options(true),
        })
        .collect();
    let before = fx.store.counts();
    volume.put_small(many.clone()).await.unwrap();
    let posted = (fx.store.counts() - before).posted_messages;
    assert!((2..=8).contains(&posted), "{posted} messages for 40 files");
    let fresh = fx.open(Some(&key)).await;
    for file in &many {
        assert_eq!(read(&fresh, &file.path).await, file.data, "{}", file.path);
    }

    // Too large, twice the same path, or a bad place: refused before anything is posted.
    let posts = fx.store.counts().posts;
    let mut twice = batch(&mut rng, "x", true);
    twice.push(twice[0].clone());
    assert!(volume.put_small(twice).await.is_err());
    let mut too_large = batch(&mut rng, "y", true);
    too_large[2].data = vec![0; volume.small_file_limit(true) as usize + 1];
    assert!(volume.put_small(too_large).await.is_err());
    let mut under_a_file = batch(&mut rng, "z", true);
    under_a_file[2].path = "enc/f1/inside".into();
    assert!(matches!(
        volume.put_small(under_a_file).await,
        Err(VolumeError::NotADirectory { .. })
    ));
    assert_eq!(fx.store.counts().posts, posts);
}

// ---------------------------------------------------------------------------------------
// 10. New versions that change a few bytes

/// A local file holding `data`, to put from.
fn file_with(data: &[u8]) -> std::fs::File {
    use std::io::{Seek, Write};
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(data).unwrap();
    file.rewind().unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_uploads_only_the_chunks_that_changed() {
    use dcloud_fs::volume::Delta;
    for encrypted in [true, false] {
        let mode = if encrypted { "encrypted" } else { "plain" };
        let fx = Fixture::new(10).await;
        let key = Key::generate().unwrap();
        let volume = fx.open(Some(&key)).await;
        let c = plan(encrypted).chunk_len;
        let mut data = SplitMix64::new(0x0010_5eed).bytes(10 * c + 100);
        let first = put(&volume, "f", &data, options(encrypted)).await.unwrap();
        let base_version = volume.index().version_of("f").unwrap();

        // Change 10 bytes inside chunk 3 and append 50 bytes to the last chunk.
        data[3 * c + 5..3 * c + 15].fill(0xAB);
        data.extend_from_slice(&[7; 50]);
        let delta = Delta {
            base_version,
            changed: vec![
                (3 * c + 5) as u64..(3 * c + 15) as u64,
                (10 * c + 100) as u64..(10 * c + 150) as u64,
            ],
        };
        let before = fx.store.counts();
        let second = volume
            .put_changes("f", file_with(&data), "f", options(encrypted), Some(&delta))
            .await
            .unwrap();
        let uploaded = fx.store.counts() - before;
        assert_eq!(
            uploaded.posted_chunk_attachments, 2,
            "{mode}: chunks 3 and 10 only"
        );
        assert_eq!(
            second.id, first.id,
            "{mode}: a new version keeps the file id"
        );
        for index in [0, 1, 2, 4, 5, 6, 7, 8, 9] {
            assert_eq!(
                second.chunks[index], first.chunks[index],
                "{mode}: chunk {index}"
            );
        }
        assert_ne!(second.chunks[3].attachment, first.chunks[3].attachment);
        assert!(read(&volume, "f").await == data, "{mode}: new content");
        let fresh = fx.open(Some(&key)).await;
        assert!(
            read(&fresh, "f").await == data,
            "{mode}: new content, replayed"
        );
        fx.assert_no_orphans(&volume, mode).await;

        // A stale delta (the file changed since its base) uploads everything.
        let stale = Delta {
            base_version: "1:0".into(),
            changed: vec![0..1, 2..3],
        };
        data[0] ^= 1;
        let before = fx.store.counts();
        let third = volume
            .put_changes("f", file_with(&data), "f", options(encrypted), Some(&stale))
            .await
            .unwrap();
        let uploaded = fx.store.counts() - before;
        assert_eq!(
            uploaded.posted_chunk_attachments, 11,
            "{mode}: a stale delta"
        );
        assert_ne!(third.id, first.id, "{mode}");
        assert!(
            read(&volume, "f").await == data,
            "{mode}: after a full upload"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_chunk_at_the_same_index_cannot_stand_in_for_a_new_one() {
    use dcloud_fs::volume::Delta;
    let fx = Fixture::new(11).await;
    let key = Key::generate().unwrap();
    let volume = fx.open(Some(&key)).await;
    let c = plan(true).chunk_len;
    let mut data = SplitMix64::new(0x0011_5eed).bytes(4 * c);
    let first = put(&volume, "f", &data, options(true)).await.unwrap();
    // Keep a copy of chunk 1 as it was: a store replaying it later must be caught.
    let old_chunk_1 = std::fs::read(
        fx.local
            .attachment_path(fx.channel.id, first.chunks[1].attachment),
    )
    .unwrap();
    data[c + 1] ^= 0xFF;
    data[c + 5] ^= 0xFF;
    let delta = Delta {
        base_version: volume.index().version_of("f").unwrap(),
        changed: vec![
            (c + 1) as u64..(c + 2) as u64,
            (c + 5) as u64..(c + 6) as u64,
        ],
    };
    let second = volume
        .put_changes("f", file_with(&data), "f", options(true), Some(&delta))
        .await
        .unwrap();
    assert_eq!(second.id, first.id);
    let new_chunk_1 = fx
        .local
        .attachment_path(fx.channel.id, second.chunks[1].attachment);
    std::fs::write(&new_chunk_1, &old_chunk_1).unwrap();
    let (result, sink) = get(&volume, "f").await;
    let err = result.unwrap_err();
    assert!(
        err.to_string().contains("not the version"),
        "the old chunk 1 must be refused: {err}"
    );
    assert_eq!(sink, data[..c], "only chunk 0 reached the sink");
}

/// A replaced version's messages stay for the grace period (another machine may be
/// reading it), then go; the time they became unneeded survives in the index cache, so
/// the next command that opens the channel after the grace frees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_messages_go_only_after_the_grace_period() {
    let fx = Fixture::new(31).await;
    let key = Key::generate().unwrap();
    let grace = VolumeConfig {
        free_grace: std::time::Duration::from_secs(3600),
        ..config(Some(fx.cache_dir()))
    };
    let volume = fx.try_open(Some(&key), grace.clone()).await.unwrap();
    let mut rng = SplitMix64::new(31);
    let old = put(
        &volume,
        "f",
        &rng.bytes(3 * plan(true).chunk_len),
        options(true),
    )
    .await
    .unwrap();
    let new_data = rng.bytes(100);
    put(&volume, "f", &new_data, options(true)).await.unwrap();
    let present: BTreeSet<Id> = fx.message_ids().await.into_iter().collect();
    let old_messages: BTreeSet<Id> = old.chunks.iter().map(|c| c.message).collect();
    assert!(present.is_superset(&old_messages), "freed before the grace");
    assert!(
        old_messages
            .iter()
            .all(|m| volume.index().unfreed.contains_key(m))
    );
    volume.refresh().await.unwrap();
    let present: BTreeSet<Id> = fx.message_ids().await.into_iter().collect();
    assert!(present.is_superset(&old_messages));
    // An hour later (as the cache tells it), the next open frees them.
    for since in volume.index().unfreed.values_mut() {
        *since -= 3_600_000;
    }
    volume.save();
    drop(volume);
    let later = fx.try_open(Some(&key), grace).await.unwrap();
    let present: BTreeSet<Id> = fx.message_ids().await.into_iter().collect();
    assert!(present.is_disjoint(&old_messages));
    assert!(read(&later, "f").await == new_data);
    fx.assert_no_orphans(&later, "after the grace").await;
}

/// A passphrase key is salted with the store's own salt now; files written under the
/// key the same passphrase gave before (one salt for every store) still read, also
/// after a rename or a new version under the new key, which keeps the old chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_a_passphrase_key_derived_the_old_way_still_read() {
    let fx = Fixture::new(32).await;
    let old = Key::from_passphrase_v1("correct horse", "").unwrap();
    let store_salt = fx.dyn_store().key_salt().await.unwrap();
    let new = Key::from_passphrase("correct horse", "", &store_salt).unwrap();
    assert_ne!(old.id(), new.id());
    let mut rng = SplitMix64::new(32);
    let data = rng.bytes(3 * plan(true).chunk_len + 5);
    {
        let before = fx.open(Some(&old)).await;
        put(&before, "old.bin", &data, options(true)).await.unwrap();
    }
    let volume = fx.open(Some(&new)).await;
    assert!(volume.index().skipped().is_empty());
    assert!(read(&volume, "old.bin").await == data);
    volume.rename("old.bin", "renamed.bin").await.unwrap();
    let fresh = fx.open(Some(&new)).await;
    assert!(read(&fresh, "renamed.bin").await == data);
    // The same passphrase for another store gives another key.
    let elsewhere = Key::from_passphrase("correct horse", "", "another store").unwrap();
    assert_ne!(elsewhere.id(), new.id());
    // A reader with only the old key can't read the rename (sealed with the new key):
    // it sees the file where the old key left it, and says why there is more.
    let stale = fx.open(Some(&old)).await;
    assert_eq!(file_paths(&stale), vec!["old.bin"]);
    assert!(
        stale
            .index()
            .skipped()
            .values()
            .any(|s| *s == Skip::WrongKey(new.id()))
    );
}

// ---------------------------------------------------------------------------------------
// 11. Reading the history in parallel

/// Posts `count` records of our own straight to the store, each making the folder
/// `d<i>` (every seventh also removing the folder made three before it), with someone
/// else's chat between them. Returns each record's message id and operations.
async fn post_folder_records(fx: &Fixture, count: usize) -> Vec<(Id, Vec<Op>)> {
    let other: Id = LOCAL_USER_ID + 777;
    let mut posted = Vec::with_capacity(count);
    for i in 0..count {
        let mut ops = vec![Op::Mkdir(DirManifest {
            path: format!("d{i:04}"),
            mtime_ns: MTIME,
            mode: 0o755,
            meta: Default::default(),
        })];
        if i % 7 == 6 {
            ops.push(Op::Del {
                path: format!("d{:04}", i - 3),
                moved: None,
            });
        }
        let record = Record {
            seq: i as u64 + 1,
            ops: ops.clone(),
        };
        let sealed = format::seal_record(&record, format::RecordSeal::Unsigned, fx.channel.id);
        let (content, attachment) = format::record_message_parts(sealed.unwrap(), &LIMITS);
        let message = NewMessage {
            content,
            attachments: attachment.into_iter().collect(),
        };
        let message = fx.local.post(fx.channel.id, message).await.unwrap();
        posted.push((message.id, ops));
        if i % 5 == 0 {
            let chat = NewMessage {
                content: format!("chat {i}"),
                attachments: vec![],
            };
            fx.local.post_as(other, fx.channel.id, chat).await.unwrap();
        }
    }
    posted
}

/// The folders that the records posted up to message `upto` leave, applied in order.
fn folders_after(records: &[(Id, Vec<Op>)], upto: Id) -> Vec<String> {
    let mut folders = BTreeSet::new();
    for (_, ops) in records.iter().filter(|(id, _)| *id <= upto) {
        for op in ops {
            match op {
                Op::Mkdir(dir) => folders.insert(dir.path.clone()),
                Op::Del { path, .. } => folders.remove(path),
                other => unreachable!("{other:?}"),
            };
        }
    }
    folders.into_iter().collect()
}

/// The folders in a volume's index.
fn folders(volume: &Volume) -> Vec<String> {
    let mut folders: Vec<String> = volume
        .index()
        .live()
        .filter(|(_, entry)| matches!(entry, Entry::Dir(_)))
        .map(|(path, _)| path.to_string())
        .collect();
    folders.sort();
    folders
}

/// A refresh that reads a long history in slices, four requests at once, and is cut
/// short by a failed history request has applied exactly the records up to the last
/// message it noted as read (`last_seen`): so the next refresh, which starts there,
/// misses nothing. It then reads the rest, and the channel reads as it does one page
/// after the other. (On one thread, so that the history calls reach the store in the
/// order they are sent, and the numbers below name the same calls every time.)
#[tokio::test]
async fn a_parallel_refresh_cut_short_has_read_a_whole_prefix() {
    let fx = Fixture::new(33).await;
    let parallel = VolumeConfig {
        history_parallelism: 4,
        ..config(None)
    };
    let volume = fx.try_open(None, parallel.clone()).await.unwrap();
    let records = post_folder_records(&fx, 450).await;
    let ids = fx.message_ids().await;
    let newest = *ids.last().unwrap();
    assert_eq!(newest, records.last().unwrap().0);
    // History call 1 reads the first page, 2 asks for the newest message, 3 reads the
    // oldest slice and the later ones the slices after it. A call fails, at times
    // after one was held back to answer last, so that the slices after it answered
    // first: the first page has been read then (perhaps more), and nothing after a
    // slice that wasn't.
    for (last, fail) in [
        (None, 4),
        (Some(3), 3),
        (Some(3), 5),
        (Some(4), 4),
        (None, 3),
    ] {
        let held = last.map(|n| fx.store.answer_last(n));
        fx.store.fail_history_in(fail);
        let error = volume.refresh().await.unwrap_err();
        assert!(is_injected(&error), "{error}");
        if let Some(held) = held {
            assert_eq!(held.calls(), 1);
        }
        let last_seen = volume.index().last_seen;
        let context = format!("call {last:?} answers last, call {fail} fails");
        assert!(
            (ids[99]..newest).contains(&last_seen),
            "{context}; read up to {last_seen}"
        );
        assert_eq!(
            folders(&volume),
            folders_after(&records, last_seen),
            "{context}"
        );
    }
    fx.store.clear_faults();
    volume.refresh().await.unwrap();
    assert_eq!(volume.index().last_seen, newest);
    let all = folders_after(&records, newest);
    assert!(all.len() > 300, "{} folders", all.len());
    assert_eq!(folders(&volume), all);
    let serial = VolumeConfig {
        history_parallelism: 1,
        ..config(None)
    };
    for config in [serial, parallel] {
        let fresh = fx.try_open(None, config).await.unwrap();
        assert_eq!(folders(&fresh), all);
        assert_eq!(fresh.index().last_seen, newest);
    }
}
