//! Channels written by earlier format versions (`tests/fixtures/format-v*/`, each made by
//! the dcloud-fs of its version; see the README beside it) read back byte for byte with
//! the current code: every older version stays readable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dcloud_fs::crypto::Key;
use dcloud_fs::store::Store;
use dcloud_fs::store::local::LocalStore;
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

async fn read_all(volume: &Volume) -> BTreeMap<String, Vec<u8>> {
    let paths: Vec<String> = volume
        .index()
        .live()
        .filter(|(_, entry)| matches!(entry, Entry::File(_)))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_written_by_format_version_1_reads_back_byte_exact() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1");
    let (_dir, root) = copy_of(&fixture);
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
    let mut folders = Vec::new();
    for name in ["docs", "other"] {
        let channel = volume::find_channel(store.as_ref(), name).await.unwrap();
        let volume = Volume::open(store.clone(), channel, Some(key.clone()), config.clone())
            .await
            .unwrap();
        assert!(
            volume.index().skipped().is_empty(),
            "#{name}: records skipped: {:?}",
            volume.index().skipped()
        );
        read.extend(read_all(&volume).await);
        folders.extend(
            volume
                .index()
                .live()
                .filter(|(_, entry)| matches!(entry, Entry::Dir(_)))
                .map(|(path, _)| format!("{name}/{path}")),
        );
    }
    let mut expected = BTreeMap::new();
    files_under(&fixture.join("expected"), "", &mut expected);
    assert_eq!(
        read.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &expected {
        assert!(read[path] == *bytes, "{path} differs from what was written");
    }
    assert_eq!(folders, vec!["docs/empty-folder"]);

    // A reader without the key still sees the plain file, and only it.
    let channel = volume::find_channel(store.as_ref(), "docs").await.unwrap();
    let keyless = Volume::open(store.clone(), channel, None, config.clone())
        .await
        .unwrap();
    let plain = read_all(&keyless).await;
    assert_eq!(plain.keys().collect::<Vec<_>>(), vec!["docs/shared.txt"]);
    assert!(plain["docs/shared.txt"] == expected["docs/shared.txt"]);
    drop(keyless);

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
