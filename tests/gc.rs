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
        owner: None,
        atime_ns: None,
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
    // stay, because the pack that puts them stays: it is repacked (its three live files
    // relocated into a new message), and goes at the next gc after the grace.
    assert!(report.tombstones >= 5, "{report:?}");
    assert_eq!(report.tombstones_kept, 2, "{report:?}");
    assert_eq!(
        (report.repacked_records, report.repacked_files),
        (1, 3),
        "{report:?}"
    );
    assert_eq!(
        (dry.repacked_records, dry.repacked_files, dry.repacked_bytes),
        (1, 3, report.repacked_bytes),
        "a dry run says what it would repack: {dry:?}"
    );
    assert!(report.bytes > 1000, "{report:?}");
    let remaining = fx.messages().await;
    let head = report.checkpoint.expect("gc posted a checkpoint");
    let head_message = remaining.iter().find(|m| m.id == head).unwrap();
    let added = 1 + format::CheckpointHead::parse(&head_message.content)
        .unwrap()
        .parts
        .len();
    assert_eq!(
        ids_before.len() + added + report.repack_messages - report.messages,
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

/// A packed folder of eight files, three of them deleted and one replaced, on another
/// machine; returns the pack's record message.
async fn partly_dead_pack(volume: &Volume) -> u64 {
    let packed: Vec<SmallFile> = (0..8)
        .map(|i| SmallFile {
            path: format!("pack/p{i}"),
            data: format!("packed file {i}, {}", "x".repeat(40 * i)).into_bytes(),
            options: options(),
        })
        .collect();
    volume.put_small(packed).await.unwrap();
    let pack = volume.index().file("pack/p0").unwrap().record_message;
    for i in [1, 4, 6] {
        volume.remove(&format!("pack/p{i}"), false).await.unwrap();
    }
    put(volume, "pack/p2", b"replaced on its own").await;
    pack
}

/// The paths whose tombstones a reader holds in messages older than `before`.
fn deletes_before(volume: &Volume, before: u64) -> Vec<String> {
    volume
        .index()
        .deletes_by_message()
        .into_iter()
        .filter(|(message, _)| *message < before)
        .flat_map(|(_, paths)| paths)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_repacks_a_partly_dead_pack_then_leaves_no_tombstone_before_the_horizon() {
    let fx = Fixture::new().await;
    let key = Key::generate().unwrap();
    let writer = fx.open(&key, None, true).await;
    let pack = partly_dead_pack(&writer).await;
    put(&writer, "single/kept", b"kept").await;
    let expected = contents(&writer).await;
    assert_eq!(expected.len(), 6);
    assert_eq!(deletes_before(&writer, u64::MAX).len(), 3);
    tokio::time::sleep(GRACE + Duration::from_millis(500)).await;
    let horizon = fx.messages().await[0].id + 1;

    let collector = fx.open(&key, None, true).await;
    let dry = gc(&collector, true).await;
    assert_eq!(
        (
            dry.repacked_records,
            dry.repacked_files,
            dry.tombstones_kept
        ),
        (1, 4, 3),
        "{dry:?}"
    );
    assert!(fx.message_ids(fx.channel.id).await.contains(&pack));
    let first = gc(&collector, false).await;
    assert_eq!(
        (first.repacked_records, first.repacked_files),
        (1, 4),
        "{first:?}"
    );
    assert_eq!(first.repacked_bytes, dry.repacked_bytes);
    assert!(first.repacked_bytes > 0);
    assert_eq!(first.repack_messages, 1, "{first:?}");
    // The relocation is young: the old pack and the deletes it keeps stay for now.
    assert_eq!(first.tombstones_kept, 3, "{first:?}");
    assert!(fx.message_ids(fx.channel.id).await.contains(&pack));
    let moved = collector.index().file("pack/p0").unwrap().record_message;
    assert!(moved > horizon);
    assert_eq!(contents(&collector).await, expected);

    // Once it is older than the grace, the next gc frees the pack and the deletes.
    tokio::time::sleep(GRACE + Duration::from_millis(500)).await;
    let horizon = fx.messages().await[0].id + 1;
    let report = gc(&collector, false).await;
    assert_eq!(report.repacked_records, 0, "{report:?}");
    assert_eq!(report.tombstones_kept, 0, "{report:?}");
    assert!(report.tombstones >= 3, "{report:?}");
    assert!(report.superseded_records >= 1, "{report:?}");
    assert!(
        !fx.message_ids(fx.channel.id).await.contains(&pack),
        "the old pack message is freed"
    );

    // Every reader sees the same files, byte for byte, and none holds a delete older
    // than the horizon: the collector, a fresh machine starting from gc's checkpoint,
    // and a full replay of what is left; and the machine that wrote it all reads the
    // relocation.
    writer.refresh().await.unwrap();
    for (what, reader) in [
        ("the collector", None),
        ("gc's checkpoint", Some(fx.open(&key, None, true).await)),
        ("a full replay", Some(fx.open(&key, None, false).await)),
    ] {
        let reader = reader.as_ref().unwrap_or(&collector);
        assert_eq!(contents(reader).await, expected, "{what}");
        assert_eq!(
            deletes_before(reader, horizon),
            Vec::<String>::new(),
            "{what}"
        );
    }
    let fresh = fx.open(&key, None, true).await;
    assert_eq!(fresh.started_from_checkpoint(), report.checkpoint);
    assert_eq!(contents(&writer).await, expected, "the writer's own index");
    assert!(writer.index().file("pack/p5").unwrap().record_message == moved);

    // The store holds no message before the horizon with a delete in it.
    for message in fx.messages().await.iter().filter(|m| m.id < horizon) {
        if let Some(record) = open_record(&fx, &key, message).await {
            assert!(
                !record
                    .ops
                    .iter()
                    .any(|op| matches!(op, format::Op::Del { .. })),
                "message {} still holds a delete",
                message.id
            );
        }
    }

    // A third gc has nothing to do.
    let again = gc(&collector, false).await;
    assert_eq!(
        (again.repacked_records, again.messages),
        (0, 0),
        "{again:?}"
    );
}

/// The record of a message, if it is one of ours.
async fn open_record(fx: &Fixture, key: &Key, message: &Message) -> Option<format::Record> {
    let envelope = match format::classify(&message.content) {
        MessageKind::InlineRecord(envelope) => envelope,
        MessageKind::AttachedRecord => {
            let attachment = message.attachment_named(format::RECORD_ATTACHMENT)?;
            fx.local
                .fetch_attachment(fx.channel.id, message.id, attachment.id, attachment.size)
                .await
                .unwrap()
                .to_vec()
        }
        _ => return None,
    };
    Some(
        format::open_record(&envelope, Some(key), fx.channel.id)
            .unwrap()
            .record,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_overwrite_of_a_relocated_file_wins_before_or_after_the_relocation() {
    for before_relocation in [true, false] {
        let fx = Fixture::new().await;
        let key = Key::generate().unwrap();
        let writer = fx.open(&key, None, true).await;
        partly_dead_pack(&writer).await;
        tokio::time::sleep(GRACE + Duration::from_millis(500)).await;
        // The collector goes through the faulty store, whose posts a test can hold.
        let config = VolumeConfig {
            cache_dir: None,
            free_grace: Duration::from_secs(3600),
            checkpoint_every: 0,
            collection_check_age: GRACE,
            ..VolumeConfig::default()
        };
        let collector = open_volume(fx.store.clone(), &fx.channel, Some(&key), config).await;
        let overwrite = b"written on another machine while gc ran".to_vec();
        let report = if before_relocation {
            // gc has read the channel and is posting the relocation; the other
            // machine's overwrite lands first.
            let hold = fx.store.hold_posts();
            let collecting = async { gc(&collector, false).await };
            let writing = async {
                hold.arrived().await;
                put(&writer, "pack/p3", &overwrite).await;
                hold.release();
            };
            let (report, ()) = tokio::join!(collecting, writing);
            report
        } else {
            // The other machine writes after the relocation, without having read it:
            // its record takes the seq the relocation's record took, and must still win.
            let report = gc(&collector, false).await;
            let relocation_seq = collector.index().next_seq() - 1;
            assert_eq!(writer.index().next_seq(), relocation_seq, "same seq");
            put(&writer, "pack/p3", &overwrite).await;
            report
        };
        assert_eq!(report.repacked_records, 1, "{report:?}");
        let what = if before_relocation { "before" } else { "after" };
        for round in ["after gc", "after the next gc"] {
            if round == "after the next gc" {
                // The old pack goes now; what the writer wrote stays.
                tokio::time::sleep(GRACE + Duration::from_millis(500)).await;
                let again = gc(&collector, false).await;
                assert!(again.superseded_records >= 1, "{what}: {again:?}");
            }
            writer.refresh().await.unwrap();
            collector.refresh().await.unwrap();
            for (who, reader) in [
                ("the writer", &writer),
                ("the collector", &collector),
                ("a full replay", &fx.open(&key, None, false).await),
                ("a checkpoint", &fx.open(&key, None, true).await),
            ] {
                assert_eq!(
                    get(reader, "pack/p3").await,
                    overwrite,
                    "{what}, {round}: {who}"
                );
                assert_eq!(
                    get(reader, "pack/p5").await,
                    format!("packed file 5, {}", "x".repeat(200)).into_bytes(),
                    "{what}, {round}: {who}"
                );
            }
        }
    }
}
