//! `gc` (see `src/volume/gc.rs`): it deletes superseded records, tombstones no message
//! needs, data no file uses and older checkpoints, and nothing younger than its grace;
//! afterwards a full replay and a reader starting from its checkpoint both see exactly
//! the files there were, a cache older than the collection starts again from the
//! checkpoint instead of showing deleted files, and a writer working at the same time
//! never loses a message its files use.
//!
//! The grace is a couple of seconds here (a day on the command line), with a short
//! sleep to let the history age past it.

#[path = "common/faulty.rs"]
mod faulty;
#[path = "common/fixture.rs"]
mod fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use dcloud_fs::crypto::Key;
use dcloud_fs::format::{self, FileId, MessageKind};
use dcloud_fs::store::{Message, NewAttachment, NewMessage, Store};
use dcloud_fs::volume::gc::{GcOptions, GcReport};
use dcloud_fs::volume::{Entry, PutOptions, PutSource, SmallFile, Volume, VolumeConfig};
use faulty::SplitMix64;
use fixture::{Fixture, open_volume};

/// The grace of these tests.
const GRACE: Duration = Duration::from_secs(2);

impl Fixture {
    /// A volume that never frees anything itself (as if other machines had made the
    /// history), caching its index in `cache` if given.
    async fn open(&self, key: &Key, cache: Option<&Path>, from_checkpoint: bool) -> Volume {
        let config = VolumeConfig {
            cache_dir: cache.map(Path::to_path_buf),
            free_grace: Duration::from_secs(3600),
            checkpoint_every: 0,
            start_from_checkpoint: from_checkpoint,
            collection_check_age: GRACE,
            ..VolumeConfig::default()
        };
        open_volume(self.local.clone(), &self.channel, Some(key), config).await
    }
}

fn options() -> PutOptions {
    PutOptions {
        mtime_ns: 1_700_000_000_000_000_000,
        mode: 0o644,
        encrypted: true,
    }
}

async fn put(volume: &Volume, path: &str, data: &[u8]) {
    let source = PutSource::Stream(Box::new(Cursor::new(data.to_vec())));
    volume
        .put(path, source, path, options(), None)
        .await
        .unwrap();
}

async fn get(volume: &Volume, path: &str) -> Vec<u8> {
    let mut sink = Vec::new();
    if let Err(e) = volume.get(path, &mut sink, None).await {
        panic!("get {path}: {e}");
    }
    sink
}

/// Every file of a volume and its content.
async fn contents(volume: &Volume) -> BTreeMap<String, Vec<u8>> {
    let paths: Vec<String> = volume
        .index()
        .live()
        .filter(|(_, e)| matches!(e, Entry::File(_)))
        .map(|(p, _)| p.to_string())
        .collect();
    let mut files = BTreeMap::new();
    for path in paths {
        let data = get(volume, &path).await;
        files.insert(path, data);
    }
    files
}

/// Every path a volume shows, folders included.
fn paths(volume: &Volume) -> BTreeSet<String> {
    volume.index().live().map(|(p, _)| p.to_string()).collect()
}

async fn gc(volume: &Volume, dry_run: bool) -> GcReport {
    volume
        .gc(&GcOptions {
            dry_run,
            grace: GRACE,
        })
        .await
        .unwrap()
}

/// A history of another machine's making: files put one by one, replaced, deleted; a
/// packed folder with two of its files deleted; an upload that died after posting its
/// data.
async fn old_history(fx: &Fixture, volume: &Volume, rng: &mut SplitMix64) {
    for i in 0..10 {
        put(
            volume,
            &format!("single/f{i}"),
            &rng.bytes(200 + 900 * (i % 3)),
        )
        .await;
    }
    for i in 0..3 {
        put(volume, &format!("single/f{i}"), b"replaced").await;
    }
    for i in 6..10 {
        volume.remove(&format!("single/f{i}"), false).await.unwrap();
    }
    let packed: Vec<SmallFile> = (0..5)
        .map(|i| SmallFile {
            path: format!("packed/p{i}"),
            data: format!("packed file {i}").into_bytes(),
            options: options(),
        })
        .collect();
    volume.put_small(packed).await.unwrap();
    volume.remove("packed/p0", false).await.unwrap();
    volume.remove("packed/p1", false).await.unwrap();
    volume.mkdir("folder", 1, 0o755).await.unwrap();
    volume.mkdir("gone-folder", 1, 0o755).await.unwrap();
    volume.remove("gone-folder", false).await.unwrap();
    let dead = NewMessage {
        content: format::data_content(FileId::random().unwrap()),
        attachments: vec![NewAttachment {
            filename: "c0.bin".into(),
            data: rng.bytes(1000).into(),
        }],
    };
    fx.local.post(fx.channel.id, dead).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_what_no_file_needs_and_every_reader_still_sees_the_same_files() {
    let fx = Fixture::new().await;
    let key = Key::generate().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut rng = SplitMix64::new(3);
    let writer = fx.open(&key, None, true).await;
    // A machine that read the channel early and then went away (its cache stays).
    put(&writer, "single/early", b"early").await;
    put(&writer, "single/doomed", b"deleted after that machine left").await;
    let early_cache = tempfile::tempdir().unwrap();
    {
        let early = fx.open(&key, Some(early_cache.path()), true).await;
        assert!(early.index().file("single/doomed").is_some());
        early.save();
    }
    writer.remove("single/doomed", false).await.unwrap();
    old_history(&fx, &writer, &mut rng).await;
    let before = contents(&writer).await;
    let before_paths = paths(&writer);
    tokio::time::sleep(GRACE + Duration::from_millis(500)).await;
    // Young changes: gc leaves them alone.
    put(&writer, "young/kept.txt", b"young").await;
    put(&writer, "young/gone.txt", b"young and gone").await;
    writer.remove("young/gone.txt", false).await.unwrap();

    let ids_before = fx.message_ids(fx.channel.id).await;
    let collector = fx.open(&key, Some(cache.path()), true).await;
    let dry = gc(&collector, true).await;
    let ids_after_dry = fx.message_ids(fx.channel.id).await;
    assert_eq!(ids_before, ids_after_dry, "a dry run deletes nothing");
    assert!(dry.dry_run && dry.messages > 0);

    let report = gc(&collector, false).await;
    assert_eq!(
        report.superseded_records, dry.superseded_records,
        "{report:?}"
    );
    assert_eq!(report.tombstones, dry.tombstones, "{report:?}");
    assert_eq!(report.unused_data, dry.unused_data, "{report:?}");
    // Three replaced versions (each a record with its chunks), the four deleted
    // files' records, and the two records of the deleted folder's mkdir and ... are
    // superseded; the dead upload is unused data.
    assert!(report.superseded_records >= 7, "{report:?}");
    assert_eq!(report.unused_data, 1, "the dead upload: {report:?}");
    // The deletes of single files and of the folder go; the two packed files' deletes
    // stay, because the pack that puts them stays.
    assert!(report.tombstones >= 5, "{report:?}");
    assert_eq!(report.tombstones_kept, 2, "{report:?}");
    assert!(report.bytes > 1000, "{report:?}");
    let remaining = fx.messages().await;
    let head = report.checkpoint.expect("gc posted a checkpoint");
    let head_message = remaining.iter().find(|m| m.id == head).unwrap();
    let added = 1 + format::CheckpointHead::parse(&head_message.content)
        .unwrap()
        .parts
        .len();
    assert_eq!(
        ids_before.len() + added - report.messages,
        remaining.len() - pin_notices(&remaining),
        "the messages deleted are those reported: {report:?}"
    );

    // Young messages are all there.
    let young = writer
        .index()
        .file("young/kept.txt")
        .unwrap()
        .record_message;
    assert!(remaining.iter().any(|m| m.id == young));

    // Every reader sees the same files: the collector, a full replay, a reader that
    // starts from gc's checkpoint.
    let mut expected = before.clone();
    expected.insert("young/kept.txt".into(), b"young".to_vec());
    let mut expected_paths = before_paths.clone();
    expected_paths.insert("young/kept.txt".into());
    for (what, reader) in [
        ("the collector", None),
        ("a full replay", Some(fx.open(&key, None, false).await)),
        ("gc's checkpoint", Some(fx.open(&key, None, true).await)),
    ] {
        let reader = reader.as_ref().unwrap_or(&collector);
        assert_eq!(paths(reader), expected_paths, "{what}");
        assert_eq!(contents(reader).await, expected, "{what}");
    }
    let from_checkpoint = fx.open(&key, None, true).await;
    assert_eq!(from_checkpoint.started_from_checkpoint(), report.checkpoint);

    // The machine that went away: its cache predates the deletes gc removed, so it
    // starts again from the checkpoint instead of showing the deleted files.
    let early = fx.open(&key, Some(early_cache.path()), true).await;
    assert_eq!(
        paths(&early),
        expected_paths,
        "a cache older than the collection"
    );
    assert_eq!(contents(&early).await, expected);

    // A second gc finds nothing more to do (the young messages, once old enough, are
    // the next one's).
    let again = gc(&collector, false).await;
    assert_eq!(
        again.superseded_records + again.tombstones + again.unused_data,
        0,
        "{again:?}"
    );
    assert_eq!(again.messages, 0, "{again:?}");
    assert_eq!(
        again.checkpoint, None,
        "nothing to collect: no checkpoint either"
    );
}

/// Discord's (and the local store's) pin notices are not ours to count.
fn pin_notices(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| {
            matches!(format::classify(&m.content), MessageKind::Other) && m.content.is_empty()
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_beside_a_concurrent_writer_never_frees_a_message_a_file_uses() {
    for seed in 0..3u64 {
        let fx = Fixture::new().await;
        let key = Key::generate().unwrap();
        let mut rng = SplitMix64::new(0x6c00 + seed);
        let writer = fx.open(&key, None, true).await;
        old_history(&fx, &writer, &mut rng).await;
        tokio::time::sleep(GRACE + Duration::from_millis(300)).await;
        let collector = fx.open(&key, None, true).await;
        let writing = async {
            let mut rng = SplitMix64::new(0x77 + seed);
            for step in 0..40 {
                let live: Vec<String> = writer
                    .index()
                    .live()
                    .filter(|(_, e)| matches!(e, Entry::File(_)))
                    .map(|(p, _)| p.to_string())
                    .collect();
                match rng.below(4) {
                    0 | 1 => {
                        let path = format!("w/f{}", rng.below(6));
                        let len = [50, 3000, 9000][rng.index(3)];
                        put(&writer, &path, &rng.bytes(len)).await;
                    }
                    2 if !live.is_empty() => {
                        let from = &live[rng.index(live.len())];
                        writer.rename(from, &format!("r/{step}")).await.unwrap();
                    }
                    _ if !live.is_empty() => {
                        writer
                            .remove(&live[rng.index(live.len())], false)
                            .await
                            .unwrap();
                    }
                    _ => {}
                }
            }
        };
        let collecting = async {
            let mut reports = Vec::new();
            for _ in 0..3 {
                reports.push(gc(&collector, false).await);
            }
            reports
        };
        let ((), reports) = tokio::join!(writing, collecting);
        assert!(
            reports.iter().any(|r| r.messages > 0),
            "seed {seed}: gc did something"
        );
        // Every file the writer has reads back (a get fails on a message gone), and
        // every reader agrees with it.
        writer.refresh().await.unwrap();
        let expected = contents(&writer).await;
        for (what, reader) in [
            ("the writer", None),
            ("a full replay", Some(fx.open(&key, None, false).await)),
            ("a checkpoint", Some(fx.open(&key, None, true).await)),
        ] {
            let reader = reader.as_ref().unwrap_or(&writer);
            assert_eq!(contents(reader).await, expected, "seed {seed}: {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_leaves_the_data_of_records_its_key_cannot_read() {
    let fx = Fixture::new().await;
    let key = Key::generate().unwrap();
    let other = Key::generate().unwrap();
    let mut rng = SplitMix64::new(9);
    let mine = fx.open(&key, None, true).await;
    old_history(&fx, &mine, &mut rng).await;
    // Another key's big file: its chunks in data messages no record of ours names.
    let theirs = fx.open(&other, None, true).await;
    let big = rng.bytes(20_000);
    put(&theirs, "theirs.bin", &big).await;
    tokio::time::sleep(GRACE + Duration::from_millis(300)).await;
    let report = gc(&mine, false).await;
    assert_eq!(report.unused_data, 0, "{report:?}");
    assert!(
        report.unused_data_kept >= 2,
        "the dead upload and theirs: {report:?}"
    );
    assert!(report.superseded_records > 0, "{report:?}");
    let theirs = fx.open(&other, None, false).await;
    assert_eq!(get(&theirs, "theirs.bin").await, big);
}
