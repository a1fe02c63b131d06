//! Channels written by earlier format versions (`tests/fixtures/format-v*/`, each made by
//! the dcloud-fs of its version; see the README beside it) read back byte for byte with
//! the current code: every older version stays readable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dcloud_fs::crypto::Key;
use dcloud_fs::store::local::LocalStore;
use dcloud_fs::store::{HistoryCursor, MAX_HISTORY_PAGE, Store};
use dcloud_fs::volume::{self, Entry, Volume, VolumeConfig};

/// The fixture's store, copied to a temporary folder (opening a store writes to it).
fn copy_of(fixture: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    copy_tree(&fixture.join("store"), &root);
    (dir, root)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every file under `dir`, by its path relative to it.
fn files_under(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if entry.file_type().unwrap().is_dir() {
            files_under(&entry.path(), &path, out);
        } else {
            out.insert(path, std::fs::read(entry.path()).unwrap());
        }
    }
}

/// Every regular file of `volume` read back, by `channel/path` (links and special files,
/// which have no bytes, are left to [`empty_nodes_of`]).
async fn read_all(volume: &Volume) -> BTreeMap<String, Vec<u8>> {
    let paths: Vec<String> = volume
        .index()
        .live()
        .filter(|(_, entry)| {
            matches!(entry, Entry::File(file) if file.symlink.is_none() && file.special.is_none())
        })
        .map(|(path, _)| path.to_string())
        .collect();
    let mut files = BTreeMap::new();
    for path in paths {
        let mut sink = Vec::new();
        volume.get(&path, &mut sink, None).await.unwrap();
        files.insert(format!("{}/{path}", volume.channel().name), sink);
    }
    files
}

/// A fixture's store (a copy of it), its key, and the expected plaintext of every live
/// file, by `channel/path`.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    key: Key,
    config: VolumeConfig,
    expected: BTreeMap<String, Vec<u8>>,
}

/// Opens the fixture `tests/fixtures/<name>` and checks what every fixture must hold:
/// with the fixture's key, each of `channels` opens with no record skipped, its files
/// read back byte for byte as `expected/` has them (and no other file is there), and its
/// folder records are `folders`; a reader without the key sees exactly the `plain` files.
async fn reads_back_byte_exact(
    name: &str,
    channels: &[&str],
    folders: &[&str],
    plain: &[&str],
) -> Fixture {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let (dir, root) = copy_of(&fixture);
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(&root).unwrap());
    let key_text = std::fs::read_to_string(fixture.join("key.b64")).unwrap();
    let key = Key::from_base64(&key_text, "the fixture's key").unwrap();
    let config = VolumeConfig {
        cache_dir: None,
        // Freed at once: these tests count what is left.
        free_grace: std::time::Duration::ZERO,
        ..VolumeConfig::default()
    };
    let mut read = BTreeMap::new();
    let mut found_folders = Vec::new();
    for &channel_name in channels {
        let channel = volume::find_channel(store.as_ref(), channel_name)
            .await
            .unwrap();
        let volume = Volume::open(store.clone(), channel, Some(key.clone()), config.clone())
            .await
            .unwrap();
        assert!(
            volume.index().skipped().is_empty(),
            "{name} #{channel_name}: records skipped: {:?}",
            volume.index().skipped()
        );
        read.extend(read_all(&volume).await);
        found_folders.extend(
            volume
                .index()
                .live()
                .filter(|(_, entry)| matches!(entry, Entry::Dir(_)))
                .map(|(path, _)| format!("{channel_name}/{path}")),
        );
    }
    let mut expected = BTreeMap::new();
    files_under(&fixture.join("expected"), "", &mut expected);
    assert_eq!(
        read.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &expected {
        assert!(
            read[path] == *bytes,
            "{name}: {path} differs from what was written"
        );
    }
    assert_eq!(found_folders, folders);

    // A reader without the key still sees the plain files, and only them.
    let mut seen_plain = BTreeMap::new();
    for &channel_name in channels {
        let channel = volume::find_channel(store.as_ref(), channel_name)
            .await
            .unwrap();
        let keyless = Volume::open(store.clone(), channel, None, config.clone())
            .await
            .unwrap();
        seen_plain.extend(read_all(&keyless).await);
    }
    assert_eq!(seen_plain.keys().collect::<Vec<_>>(), plain);
    for (path, bytes) in &seen_plain {
        assert!(
            *bytes == expected[path],
            "{name}: {path} differs without the key"
        );
    }
    Fixture {
        _dir: dir,
        store,
        key,
        config,
        expected,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_written_by_format_version_1_reads_back_byte_exact() {
    let Fixture {
        _dir,
        store,
        key,
        config,
        expected,
    } = reads_back_byte_exact(
        "format-v1",
        &["docs", "other"],
        &["docs/empty-folder"],
        &["docs/shared.txt"],
    )
    .await;

    // The first version-2 change in the channel is its cutover: after it, a version-1
    // record (what a forger without the key can still make) no longer counts.
    let channel = volume::find_channel(store.as_ref(), "docs").await.unwrap();
    let writer = Volume::open(
        store.clone(),
        channel.clone(),
        Some(key.clone()),
        config.clone(),
    )
    .await
    .unwrap();
    let options = volume::PutOptions {
        mtime_ns: 0,
        mode: 0o644,
        encrypted: true,
        owner: None,
        atime_ns: None,
    };
    let source = volume::PutSource::Stream(Box::new(&b"written by version 2"[..]));
    writer
        .put("new.txt", source, "new.txt", options, None)
        .await
        .unwrap();
    drop(writer);
    store
        .post(channel.id, forged_v1_put("shared.txt", b"EVIL!"))
        .await
        .unwrap();
    let reader = Volume::open(store.clone(), channel, Some(key), config)
        .await
        .unwrap();
    let after = read_all(&reader).await;
    assert!(after["docs/shared.txt"] == expected["docs/shared.txt"]);
    assert_eq!(after["docs/new.txt"], b"written by version 2");
    assert_eq!(after.len(), 11);
    assert!(
        reader
            .index()
            .skipped()
            .values()
            .any(|skip| matches!(skip, volume::Skip::Unauthenticated(_)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_written_by_format_version_2_reads_back_byte_exact() {
    use base64::Engine;
    // With the key, only authenticated records count: that the plain file reads back
    // with it at all shows its (signed) record still verifies.
    let fixture = reads_back_byte_exact(
        "format-v2",
        &["docs", "other"],
        &["docs/empty-folder"],
        &["docs/shared.txt"],
    )
    .await;

    // The fixture is what it says: every record in it is a version-2 envelope, and the
    // plain ones are signed (cipher 0 with the key's id), so a later format can't
    // quietly regenerate it.
    let mut signed_plain = 0;
    for channel in fixture.store.channels().await.unwrap() {
        let messages = fixture
            .store
            .history(channel.id, HistoryCursor::Latest, MAX_HISTORY_PAGE)
            .await
            .unwrap();
        assert!(messages.len() < MAX_HISTORY_PAGE, "one page holds it all");
        for message in messages {
            let Some(encoded) = message.content.strip_prefix("dcfs1 ") else {
                continue;
            };
            if encoded.starts_with("data ") {
                continue;
            }
            let envelope = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded)
                .unwrap_or_else(|e| panic!("message {}: {e} (records are inline)", message.id));
            assert_eq!(&envelope[..5], b"DCFR\x02", "message {}", message.id);
            if envelope[5] == 0 {
                assert_eq!(
                    envelope[6..14],
                    fixture.key.id().0,
                    "message {}",
                    message.id
                );
                signed_plain += 1;
            }
        }
    }
    assert_eq!(signed_plain, 2, "the plain file's put and its rename");
}

/// A version-1 plain record, as anyone with the bot's token and no key can make one,
/// that puts `data` at `path`.
fn forged_v1_put(path: &str, data: &[u8]) -> dcloud_fs::store::NewMessage {
    use base64::Engine;
    use sha2::Digest;
    let sha: [u8; 32] = sha2::Sha256::digest(data).into();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let json = format!(
        r#"{{"ops":[{{"op":"put","path":"{path}","id":"{}","size":{},"mtime_ns":0,"mode":420,"encrypted":false,"chunks":[{{"f":"c0.bin","n":{},"h":"{}"}}]}}]}}"#,
        hex(&[7; 16]),
        data.len(),
        data.len(),
        hex(&sha)
    );
    let mut envelope = b"DCFR\x01\x00".to_vec();
    envelope.extend_from_slice(&[0; 8]);
    envelope.extend_from_slice(json.as_bytes());
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(envelope);
    dcloud_fs::store::NewMessage {
        content: format!("dcfs1 {encoded}"),
        attachments: vec![dcloud_fs::store::NewAttachment {
            filename: "c0.bin".into(),
            data: bytes::Bytes::copy_from_slice(data),
        }],
    }
}

/// Every record of a fixture's channels, opened with its key: `(channel name, message,
/// envelope version, record)`.
async fn records_of(fixture: &Fixture) -> Vec<(String, u64, u8, dcloud_fs::format::Record)> {
    use dcloud_fs::format::{self, MessageKind};
    let mut records = Vec::new();
    for channel in fixture.store.channels().await.unwrap() {
        let messages = fixture
            .store
            .history(channel.id, HistoryCursor::Latest, MAX_HISTORY_PAGE)
            .await
            .unwrap();
        assert!(messages.len() < MAX_HISTORY_PAGE, "one page holds it all");
        for message in messages {
            let envelope = match format::classify(&message.content) {
                MessageKind::InlineRecord(envelope) => envelope,
                MessageKind::AttachedRecord => {
                    let attachment = message.attachment_named(format::RECORD_ATTACHMENT).unwrap();
                    fixture
                        .store
                        .fetch_attachment(channel.id, message.id, attachment.id, attachment.size)
                        .await
                        .unwrap()
                        .to_vec()
                }
                _ => continue,
            };
            let opened = format::open_record(&envelope, Some(&fixture.key), channel.id)
                .unwrap_or_else(|e| panic!("message {}: {e}", message.id));
            records.push((
                channel.name.clone(),
                message.id,
                opened.version,
                opened.record,
            ));
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_written_by_format_version_3_reads_back_byte_exact() {
    use dcloud_fs::format::{ChunkLocation, Op};
    let fixture = reads_back_byte_exact(
        "format-v3",
        &["docs", "other"],
        &["docs/empty-folder"],
        &["docs/shared.txt"],
    )
    .await;

    // The fixture is what it says: version-3 records only, with segmented chunks (a
    // nonce prefix, several segments each) under per-file data keys, and a version
    // written in place that keeps its data key and the chunks it didn't change.
    let records = records_of(&fixture).await;
    assert!(records.iter().all(|(_, _, version, _)| *version == 3));
    let puts_of = |path: &str| -> Vec<(u64, dcloud_fs::format::FileManifest)> {
        records
            .iter()
            .flat_map(|(channel, message, _, record)| {
                record.ops.iter().filter_map(move |op| match op {
                    Op::Put(put) if format!("{channel}/{}", put.path) == path => {
                        Some((*message, put.clone()))
                    }
                    _ => None,
                })
            })
            .collect()
    };
    let mut big = puts_of("docs/renamed.bin");
    big.sort_by_key(|(message, _)| *message);
    let (patch_message, patched) = big.last().unwrap().clone();
    assert!(patched.data_key.is_some());
    assert_eq!(patched.chunks.len(), 3);
    assert!(
        patched
            .chunks
            .iter()
            .all(|c| c.prefix.is_some() && c.tag.is_none())
    );
    assert!(
        patched.chunks.iter().any(|c| c.len > 2 * 65_536),
        "multi-segment"
    );
    let kept = patched
        .chunks
        .iter()
        .filter(|c| matches!(c.location, ChunkLocation::Stored { message, .. } if message != patch_message))
        .count();
    assert_eq!(kept, 2, "the in-place write kept two of the three chunks");
    assert!(
        big.iter()
            .filter(|(_, put)| put.data_key == patched.data_key)
            .count()
            >= 2,
        "every version of the file keeps its data key"
    );
    let plain = puts_of("docs/shared.txt");
    assert!(
        plain
            .iter()
            .all(|(_, put)| put.data_key.is_none() && !put.encrypted)
    );
    assert_eq!(fixture.expected.len(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_written_by_format_version_4_reads_back_byte_exact() {
    use dcloud_fs::format::Op;
    let fixture = reads_back_byte_exact(
        "format-v4",
        &["docs", "other"],
        &["docs/empty-folder"],
        &["docs/shared.txt"],
    )
    .await;

    // The fixture is what it says: version-4 records only, and the packed folder's
    // files share one attachment, each at an offset of its own.
    let records = records_of(&fixture).await;
    assert!(records.iter().all(|(_, _, version, _)| *version == 4));
    let mut packed = std::collections::BTreeMap::<(u64, String), Vec<u64>>::new();
    for (_, message, _, record) in &records {
        for op in &record.ops {
            if let Op::Put(put) = op
                && put.path.starts_with("small/")
            {
                for chunk in &put.chunks {
                    let at = chunk.packed_at.expect("a packed chunk has an offset");
                    let place = match &chunk.location {
                        dcloud_fs::format::ChunkLocation::Attached { filename } => {
                            (*message, filename.clone())
                        }
                        dcloud_fs::format::ChunkLocation::Stored {
                            message,
                            attachment,
                            ..
                        } => (*message, attachment.to_string()),
                    };
                    packed.entry(place).or_default().push(at);
                }
            }
        }
    }
    let (_, offsets) = packed
        .iter()
        .max_by_key(|(_, offsets)| offsets.len())
        .expect("packed chunks");
    let distinct: std::collections::BTreeSet<_> = offsets.iter().collect();
    assert!(
        distinct.len() >= 10,
        "the folder's files share a pack: {packed:?}"
    );
    assert_eq!(fixture.expected.len(), 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_written_by_format_version_5_reads_back_byte_exact() {
    use dcloud_fs::format::Op;
    let fixture = reads_back_byte_exact(
        "format-v5",
        &["docs", "other"],
        &["docs/empty-folder"],
        &["docs/shared.txt"],
    )
    .await;

    // The fixture is what it says: version-5 records only, a pinned version-5
    // checkpoint in `docs` with one record after it, and the packed folder's files
    // sharing one attachment.
    let records = records_of(&fixture).await;
    assert!(records.iter().all(|(_, _, version, _)| *version == 5));
    let packed: std::collections::BTreeSet<u64> = records
        .iter()
        .flat_map(|(_, _, _, record)| record.ops.iter())
        .filter_map(|op| match op {
            Op::Put(put) if put.path.starts_with("small/") => put.chunks[0].packed_at,
            _ => None,
        })
        .collect();
    assert!(packed.len() >= 10, "the folder's files share a pack");
    reads_the_same_from_its_checkpoint_and_by_a_full_replay(&fixture, &records, 5).await;
    assert_eq!(fixture.expected.len(), 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_written_by_format_version_6_reads_back_byte_exact() {
    use dcloud_fs::format::Op;
    let fixture = reads_back_byte_exact(
        "format-v6",
        &["docs", "other"],
        &["docs/empty-folder"],
        &["docs/shared.txt"],
    )
    .await;

    // The fixture is what it says: version-6 records only, one of them relocating the
    // file left of the folder `few/` (its pack's other files deleted), and a pinned
    // version-6 checkpoint in `docs` with one record after it.
    let records = records_of(&fixture).await;
    assert!(records.iter().all(|(_, _, version, _)| *version == 6));
    let relocated: Vec<&str> = records
        .iter()
        .flat_map(|(_, _, _, record)| record.ops.iter())
        .filter_map(|op| match op {
            Op::Relocate(relocation) => Some(relocation.file.path.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(relocated, ["few/f3.txt"]);
    reads_the_same_from_its_checkpoint_and_by_a_full_replay(&fixture, &records, 6).await;
    assert_eq!(fixture.expected.len(), 19);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_written_by_format_version_7_reads_back_byte_exact() {
    use dcloud_fs::format::{Special, SpecialKind};
    use dcloud_fs::volume::Node;
    let fixture = reads_back_byte_exact("format-v7", &["docs"], &["docs/empty-folder"], &[]).await;

    // The fixture is what it says: version-7 records only, and a pinned version-7
    // checkpoint in `docs` with one record after it.
    let records = records_of(&fixture).await;
    assert!(records.iter().all(|(_, _, version, _)| *version == 7));
    reads_the_same_from_its_checkpoint_and_by_a_full_replay(&fixture, &records, 7).await;
    assert_eq!(fixture.expected.len(), 11);

    // The links and special files `put -r` stored (one link renamed since) are there as
    // they were made, read from the checkpoint and by a full replay alike.
    let link = |target: &str| (Some(target.to_string()), None);
    let special = |kind, rdev| (None, Some(Special { kind, rdev }));
    let made = BTreeMap::from([
        ("tree/dangling".to_string(), link("missing.txt")),
        (
            "tree/null".to_string(),
            special(SpecialKind::Char, libc::makedev(1, 3)),
        ),
        ("tree/pipe".to_string(), special(SpecialKind::Fifo, 0)),
        ("tree/renamed-to-a".to_string(), link("a.txt")),
        ("tree/to-sub".to_string(), link("sub")),
    ]);
    for from_checkpoint in [true, false] {
        let volume = open_docs(&fixture, from_checkpoint).await;
        assert_eq!(volume.started_from_checkpoint().is_some(), from_checkpoint);
        assert_eq!(
            empty_nodes_of(&volume),
            made,
            "from the checkpoint: {from_checkpoint}"
        );
        let index = volume.index();
        for (path, (symlink, special)) in &made {
            match index.node(path) {
                Some(Node::File(entry)) => {
                    assert_eq!(&entry.symlink, symlink, "{path}");
                    assert_eq!(&entry.special, special, "{path}");
                    assert!(
                        entry.size == 0 && entry.chunks.is_empty(),
                        "{path}: no data"
                    );
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        assert!(index.node("tree/to-a").is_none(), "the link was renamed");
        assert!(matches!(index.node("tree/sub"), Some(Node::Dir(None))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_written_by_format_version_8_reads_back_byte_exact() {
    use dcloud_fs::format::XattrValue;
    use dcloud_fs::volume::Node;
    let fixture = reads_back_byte_exact(
        "format-v8",
        &["docs"],
        &["docs/empty-folder", "docs/meta"],
        &[],
    )
    .await;

    // The fixture is what it says: version-8 records only, and a pinned version-8
    // checkpoint in `docs` with one record after it.
    let records = records_of(&fixture).await;
    assert!(records.iter().all(|(_, _, version, _)| *version == 8));
    reads_the_same_from_its_checkpoint_and_by_a_full_replay(&fixture, &records, 8).await;
    assert_eq!(fixture.expected.len(), 14);

    // What the mount made of `meta/` (a hard link pair, extended attributes of a file
    // and of a folder, an owner, an access time, a link) is there as made, read from
    // the checkpoint and by a full replay alike.
    let xattr = |name: &str, value: &str| {
        BTreeMap::from([(name.to_string(), XattrValue(value.as_bytes().to_vec()))])
    };
    for from_checkpoint in [true, false] {
        let volume = open_docs(&fixture, from_checkpoint).await;
        assert_eq!(volume.started_from_checkpoint().is_some(), from_checkpoint);
        assert_eq!(
            empty_nodes_of(&volume),
            BTreeMap::from([(
                "meta/to-first".to_string(),
                (Some("first.txt".to_string()), None)
            )]),
            "from the checkpoint: {from_checkpoint}"
        );
        let index = volume.index();
        let file = |path: &str| match index.node(path) {
            Some(Node::File(entry)) => entry,
            other => panic!("{path}: {other:?} (from the checkpoint: {from_checkpoint})"),
        };

        // Two names of one file: one node, and each name knows the other.
        let (first, second) = (file("meta/first.txt"), file("meta/second.txt"));
        assert!(
            first.node.is_some(),
            "from the checkpoint: {from_checkpoint}"
        );
        assert_eq!(first.node, second.node);
        let names = ["meta/first.txt", "meta/second.txt"];
        assert_eq!(index.names_of("meta/first.txt"), names);
        assert_eq!(index.names_of("meta/second.txt"), names);
        assert!(file("meta/tagged.txt").node.is_none(), "a file of one name");
        assert_eq!(index.names_of("notes.txt"), ["notes.txt"]);

        // Extended attributes, of a file and of a folder.
        assert_eq!(
            file("meta/tagged.txt").meta().xattrs,
            xattr("user.origin", "https://example.org/")
        );
        match index.node("meta") {
            Some(Node::Dir(Some(dir))) => {
                assert_eq!(dir.meta().xattrs, xattr("user.colour", "blue"));
            }
            other => panic!("meta: {other:?}"),
        }
        assert!(first.meta().xattrs.is_empty());

        // An owner other than whoever mounts (the files root made through the mount
        // have none: they belong to the mounting user).
        let owned = file("meta/owned.txt").meta();
        assert_eq!((owned.uid, owned.gid), (Some(1234), Some(5678)));
        assert_eq!((first.meta().uid, first.meta().gid), (None, None));

        // An access time other than the modification time (`touch -a`).
        let touched = file("meta/touched.txt");
        assert_eq!(touched.mtime_ns, 1_704_164_645_000_000_000); // 2024-01-02 03:04:05Z
        assert_eq!(touched.meta().atime_ns, Some(1_749_283_750_000_000_000)); // 2025-06-07 08:09:10Z

        // The link, with no data.
        let link = file("meta/to-first");
        assert_eq!(link.symlink.as_deref(), Some("first.txt"));
        assert!(link.size == 0 && link.chunks.is_empty());
    }
}

/// The fixture's `docs` opened afresh (no cache): from its checkpoint, or by a full
/// replay.
async fn open_docs(fixture: &Fixture, from_checkpoint: bool) -> Volume {
    let docs = volume::find_channel(fixture.store.as_ref(), "docs")
        .await
        .unwrap();
    let config = VolumeConfig {
        start_from_checkpoint: from_checkpoint,
        ..fixture.config.clone()
    };
    Volume::open(
        fixture.store.clone(),
        docs,
        Some(fixture.key.clone()),
        config,
    )
    .await
    .unwrap()
}

/// The links (their targets) and special files (their kinds and device numbers) of
/// `volume`, by path.
fn empty_nodes_of(
    volume: &Volume,
) -> BTreeMap<String, (Option<String>, Option<dcloud_fs::format::Special>)> {
    volume
        .index()
        .live()
        .filter_map(|(path, entry)| match entry {
            Entry::File(file) if file.symlink.is_some() || file.special.is_some() => {
                Some((path.to_string(), (file.symlink.clone(), file.special)))
            }
            _ => None,
        })
        .collect()
}

/// The fixture's `docs` has a pinned checkpoint of `version` with one record after
/// it, and reads the same files from it (with that tail) as by a full replay.
async fn reads_the_same_from_its_checkpoint_and_by_a_full_replay(
    fixture: &Fixture,
    records: &[(String, u64, u8, dcloud_fs::format::Record)],
    version: u8,
) {
    use dcloud_fs::format::{self, MessageKind};
    let docs = volume::find_channel(fixture.store.as_ref(), "docs")
        .await
        .unwrap();
    let pins = fixture.store.pins(docs.id).await.unwrap();
    let head = pins
        .iter()
        .find(|m| matches!(format::classify(&m.content), MessageKind::Checkpoint))
        .expect("a pinned checkpoint");
    let first = fixture
        .store
        .fetch_range(docs.id, head.id, head.attachments[0].id, 0..5)
        .await
        .unwrap();
    assert_eq!(
        first[..],
        [b'D', b'C', b'F', b'K', version],
        "a version-{version} checkpoint envelope"
    );
    let after = records
        .iter()
        .filter(|(channel, message, _, _)| channel == "docs" && *message > head.id)
        .count();
    assert_eq!(after, 1, "one record after the checkpoint");
    for from_checkpoint in [true, false] {
        let volume = open_docs(fixture, from_checkpoint).await;
        assert_eq!(
            volume.started_from_checkpoint().is_some(),
            from_checkpoint,
            "from the checkpoint: {from_checkpoint}"
        );
        let read = read_all(&volume).await;
        let expected: BTreeMap<String, Vec<u8>> = fixture
            .expected
            .iter()
            .filter(|(path, _)| path.starts_with("docs/"))
            .map(|(path, bytes)| (path.clone(), bytes.clone()))
            .collect();
        assert!(read == expected, "from the checkpoint: {from_checkpoint}");
    }
}
