//! `Volume::verify` against the local store: a channel damaged behind the volume's back
//! (messages deleted, attachments changed or cut short in the store's own folder, as a
//! moderator or a failing disk would) is reported file by file, a whole one is clean,
//! and verifying changes nothing.
//!
//! Tiny limits (4 KiB per attachment, 4 attachments and 10 000 bytes per message) make
//! files of a few KiB hold many chunks over many messages. A [`FaultyStore`] in between
//! counts what the verification asks of the store.

#[path = "common/faulty.rs"]
mod faulty;
#[path = "common/fixture.rs"]
mod fixture;

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use dcloud_fs::store::{Channel, Id, Store};
use dcloud_fs::volume::disk_cache::{DiskCache, DiskCacheConfig};
use dcloud_fs::volume::transfer::FileSeal;
use dcloud_fs::volume::{
    ChunkPlan, DataCheck, FileEntry, Problem, PutOptions, PutSource, SmallFile, VerifyOptions,
    VerifyReport, Volume, VolumeConfig,
};
use faulty::SplitMix64;
use fixture::{Fixture, LIMITS, open_volume};

impl Fixture {
    fn config(&self) -> VolumeConfig {
        VolumeConfig {
            cache_dir: Some(self.cache.path().to_path_buf()),
            free_grace: std::time::Duration::ZERO,
            ..VolumeConfig::default()
        }
    }

    async fn open_with(&self, channel: &Channel, config: VolumeConfig) -> Volume {
        open_volume(self.store.clone(), channel, Some(&self.key), config).await
    }

    async fn open(&self) -> Volume {
        self.open_with(&self.channel, self.config()).await
    }

    fn attachment_path(&self, chunk: &dcloud_fs::volume::StoredChunk) -> PathBuf {
        self.local
            .attachment_path(chunk.channel.unwrap_or(self.channel.id), chunk.attachment)
    }

    /// Flips one byte of the attachment holding `chunk`, in the chunk's range.
    fn flip_byte(&self, chunk: &dcloud_fs::volume::StoredChunk) {
        let path = self.attachment_path(chunk);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = chunk.packed_at.unwrap_or(0) as usize + chunk.len as usize / 2 + 1;
        bytes[at] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
    }

    /// Cuts attachment `attachment` of message `message` to `len` bytes: the file, and
    /// the size the store reports for it (as Discord would describe a shorter one).
    fn cut_attachment(&self, message: Id, attachment: Id, len: u64) {
        let path = self.local.attachment_path(self.channel.id, attachment);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..len as usize]).unwrap();
        let json = self
            .local
            .root()
            .join("channels")
            .join(self.channel.id.to_string())
            .join("messages")
            .join(format!("{message}.json"));
        let mut stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        for entry in stored["attachments"].as_array_mut().unwrap() {
            if entry["id"].as_u64() == Some(attachment) {
                entry["size"] = len.into();
            }
        }
        std::fs::write(&json, stored.to_string()).unwrap();
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

fn chunk_len(encrypted: bool) -> usize {
    ChunkPlan::new(&LIMITS, dcloud_fs::volume::chunk_kind(encrypted))
        .unwrap()
        .chunk_len
}

async fn put(volume: &Volume, path: &str, data: &[u8], encrypted: bool) -> FileEntry {
    let source = PutSource::Stream(Box::new(Cursor::new(data.to_vec())));
    volume
        .put(path, source, path, options(encrypted), None)
        .await
        .unwrap()
}

async fn verify(volume: &Volume, path: &str, data: DataCheck) -> VerifyReport {
    let options = VerifyOptions {
        data,
        progress: None,
    };
    volume.verify(path, &options).await.unwrap()
}

/// The sealed bytes of a file's chunks.
fn sealed_bytes(file: &FileEntry) -> u64 {
    file.chunks
        .iter()
        .map(|c| c.kind(file.encrypted).sealed_len(c.len))
        .sum()
}

/// The damaged paths of a report, with their problems.
fn damaged(report: &VerifyReport) -> Vec<(String, Vec<Problem>)> {
    report
        .damaged
        .iter()
        .map(|d| (d.path.clone(), d.problems.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_channel_verifies_clean_with_the_right_counts() {
    let fx = Fixture::new().await;
    let volume = fx.open().await;
    let mut rng = SplitMix64::new(1);
    let big = put(&volume, "big", &rng.bytes(10 * chunk_len(true) + 5), true).await;
    let plain = put(
        &volume,
        "docs/plain",
        &rng.bytes(3 * chunk_len(false)),
        false,
    )
    .await;
    let small: Vec<SmallFile> = (0..5)
        .map(|i| SmallFile {
            path: format!("small/{i}"),
            data: rng.bytes(50 + i * 10),
            options: options(true),
        })
        .collect();
    volume.put_small(small).await.unwrap();
    volume.mkdir("empty", 0, 0o755).await.unwrap();
    let files: Vec<FileEntry> = volume
        .index()
        .live()
        .filter_map(|(_, e)| match e {
            dcloud_fs::volume::Entry::File(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    let chunks: u64 = files.iter().map(|f| f.chunks.len() as u64).sum();
    assert_eq!(
        chunks,
        big.chunks.len() as u64 + plain.chunks.len() as u64 + 5
    );
    let messages = fx.message_ids(fx.channel.id).await;

    let before = fx.store.counts();
    let report = verify(&volume, "", DataCheck::Skip).await;
    let asked = fx.store.counts() - before;
    assert!(report.is_clean(), "{:?}", report.damaged);
    assert_eq!(report.channel, "files");
    assert_eq!(report.files_checked, 7);
    assert_eq!(report.folders_checked, 1);
    assert_eq!(report.chunks_checked, chunks);
    assert_eq!((report.chunks_read, report.bytes_read), (0, 0));
    assert_eq!(asked.fetches, 0, "the structure check reads no attachment");
    assert!(asked.histories >= 1);

    let before = fx.store.counts();
    let report = verify(&volume, "", DataCheck::All).await;
    let asked = fx.store.counts() - before;
    assert!(report.is_clean(), "{:?}", report.damaged);
    assert_eq!(report.chunks_read, chunks);
    let sealed: u64 = files.iter().map(sealed_bytes).sum();
    assert_eq!(report.bytes_read, sealed);
    assert_eq!(
        asked.fetched_bytes, sealed,
        "every chunk read once, from the store"
    );
    assert_eq!((asked.posts, asked.deletes), (0, 0));

    // A path: the files under it, or the file itself.
    let report = verify(&volume, "small", DataCheck::All).await;
    assert_eq!((report.files_checked, report.chunks_read), (5, 5));
    let report = verify(&volume, "big", DataCheck::Skip).await;
    assert_eq!(report.files_checked, 1);
    assert_eq!(report.chunks_checked, big.chunks.len() as u64);
    let missing = volume
        .verify("nope", &VerifyOptions::default())
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("no such file"), "{missing}");

    assert_eq!(
        fx.message_ids(fx.channel.id).await,
        messages,
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_chunk_message_is_found_and_the_file_named() {
    let fx = Fixture::new().await;
    let volume = fx.open().await;
    let mut rng = SplitMix64::new(2);
    let a = put(&volume, "a", &rng.bytes(10 * chunk_len(true)), true).await;
    put(&volume, "b", &rng.bytes(4 * chunk_len(true)), true).await;
    // The message of a's chunk 4: a data message of three chunks.
    let gone = a.chunks[4].message;
    assert_ne!(gone, a.record_message);
    fx.local.delete_message(fx.channel.id, gone).await.unwrap();
    let report = verify(&volume, "", DataCheck::Skip).await;
    let expected: Vec<Problem> = a
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.message == gone)
        .map(|(index, _)| Problem::MessageMissing {
            chunk: index as u64,
            channel: None,
            message: gone,
        })
        .collect();
    assert!(expected.len() > 1);
    assert_eq!(damaged(&report), vec![("a".to_string(), expected.clone())]);
    // Reading the data doesn't read what is gone, nor report it twice.
    let report = verify(&volume, "", DataCheck::All).await;
    assert_eq!(damaged(&report), vec![("a".to_string(), expected.clone())]);
    assert_eq!(
        report.chunks_read,
        report.chunks_checked - expected.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_record_message_is_found() {
    let fx = Fixture::new().await;
    let volume = fx.open().await;
    let mut rng = SplitMix64::new(3);
    put(&volume, "a", &rng.bytes(5 * chunk_len(true)), true).await;
    put(&volume, "keep", &rng.bytes(100), true).await;
    // After a rename, the record that puts "b" is a message of its own (the chunks
    // stay where they were).
    volume.rename("a", "b").await.unwrap();
    volume.mkdir("folder", 0, 0o755).await.unwrap();
    let (b, folder) = {
        let index = volume.index();
        let folder = match index.entry("folder") {
            Some(dcloud_fs::volume::Entry::Dir(dir)) => dir.record_message,
            other => panic!("{other:?}"),
        };
        (index.file("b").unwrap().clone(), folder)
    };
    assert!(b.chunks.iter().all(|c| c.message != b.record_message));
    fx.local
        .delete_message(fx.channel.id, b.record_message)
        .await
        .unwrap();
    fx.local
        .delete_message(fx.channel.id, folder)
        .await
        .unwrap();
    let report = verify(&volume, "", DataCheck::All).await;
    // The rename's record carried the delete of "a" too: without it, a fresh machine
    // would show "a" again (its first record is still there).
    assert_eq!(
        damaged(&report),
        vec![
            (
                "a".to_string(),
                vec![Problem::DeleteMissing {
                    message: b.record_message
                }]
            ),
            (
                "b".to_string(),
                vec![Problem::RecordMissing {
                    message: b.record_message
                }]
            ),
            (
                "folder".to_string(),
                vec![Problem::RecordMissing { message: folder }]
            ),
        ]
    );
    assert!(!report.damaged[0].only_record_missing());
    assert!(report.damaged[1].only_record_missing() && !report.damaged[1].folder);
    assert!(report.damaged[2].folder);
    // Its chunks are all there and open.
    assert_eq!(report.chunks_read, report.chunks_checked);
}

/// A delete whose message went (a moderator's doing) is found when a fresh machine
/// would read it from the history, after the newest checkpoint; one the checkpoint
/// holds isn't a problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tombstone_after_the_newest_checkpoint_is_found() {
    let fx = Fixture::new().await;
    let volume = fx.open().await;
    let mut rng = SplitMix64::new(4);
    for name in ["old", "new", "keep"] {
        put(&volume, name, &rng.bytes(100), true).await;
    }
    volume.remove("old", false).await.unwrap();
    volume.post_checkpoint().await.unwrap();
    volume.remove("new", false).await.unwrap();
    let deletes = volume.index().deletes_after("", 0);
    assert_eq!(
        deletes
            .iter()
            .map(|(path, _)| path.as_str())
            .collect::<Vec<_>>(),
        ["new", "old"]
    );
    for (_, message) in &deletes {
        fx.local
            .delete_message(fx.channel.id, *message)
            .await
            .unwrap();
    }
    let report = verify(&volume, "", DataCheck::Skip).await;
    assert_eq!(
        damaged(&report),
        vec![(
            "new".to_string(),
            vec![Problem::DeleteMissing {
                message: deletes[0].1
            }]
        )]
    );
    assert!(!report.is_clean());
    // Verifying another path doesn't look at that delete.
    assert!(verify(&volume, "keep", DataCheck::Skip).await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_found_by_reading_the_data_not_by_the_structure() {
    for encrypted in [true, false] {
        let fx = Fixture::new().await;
        let blocks = tempfile::tempdir().unwrap();
        let cache = Arc::new(
            DiskCache::open(DiskCacheConfig {
                dir: blocks.path().to_path_buf(),
                capacity_bytes: 64 << 20,
            })
            .unwrap(),
        );
        let config = VolumeConfig {
            disk_cache: Some(cache.clone()),
            ..fx.config()
        };
        let volume = fx.open_with(&fx.channel, config).await;
        let mut rng = SplitMix64::new(4);
        let file = put(
            &volume,
            "f",
            &rng.bytes(6 * chunk_len(encrypted)),
            encrypted,
        )
        .await;
        if encrypted {
            // A good copy of every chunk on this machine's disk cache: verify must read
            // the store's, not these.
            let fetcher = volume.fetcher("f");
            for (index, chunk) in file.chunks.iter().enumerate() {
                fetcher
                    .fetch(FileSeal::of(&file), index as u64, chunk)
                    .await
                    .unwrap();
            }
            assert!(cache.blocks() > 0);
        }
        let cached = (cache.blocks(), cache.bytes());
        fx.flip_byte(&file.chunks[2]);

        let report = verify(&volume, "", DataCheck::Skip).await;
        assert!(report.is_clean(), "structure only: {:?}", report.damaged);
        let report = verify(&volume, "", DataCheck::All).await;
        let found = damaged(&report);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "f");
        match &found[0].1[..] {
            [Problem::DoesNotOpen { chunk: 2, detail }] => {
                let expected = if encrypted {
                    "failed authentication"
                } else {
                    "checksum"
                };
                assert!(detail.contains(expected), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(report.chunks_read, 6);
        assert_eq!(
            (cache.blocks(), cache.bytes()),
            cached,
            "the cache is untouched"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_cut_short_is_found_for_the_files_past_its_end() {
    let fx = Fixture::new().await;
    let volume = fx.open().await;
    let mut rng = SplitMix64::new(5);
    let files: Vec<SmallFile> = (0..6)
        .map(|i| SmallFile {
            path: format!("s{i}"),
            data: rng.bytes(200),
            options: options(true),
        })
        .collect();
    volume.put_small(files).await.unwrap();
    let mut packed: Vec<(u64, String, FileEntry)> = (0..6)
        .map(|i| {
            let path = format!("s{i}");
            let file = volume.index().file(&path).unwrap().clone();
            (file.chunks[0].packed_at.unwrap(), path, file)
        })
        .collect();
    packed.sort_by_key(|(at, _, _)| *at);
    let (_, last_path, last) = packed.last().unwrap();
    let pack = &last.chunks[0];
    let sharing = packed
        .iter()
        .filter(|(_, _, f)| f.chunks[0].attachment == pack.attachment)
        .count();
    assert!(sharing >= 2, "the files share a pack");
    // The pack ends one byte into the last file's chunk.
    let cut = pack.packed_at.unwrap() + 1;
    fx.cut_attachment(pack.message, pack.attachment, cut);

    let report = verify(&volume, "", DataCheck::All).await;
    let needed = pack.packed_at.unwrap() + pack.kind(true).sealed_len(pack.len);
    assert_eq!(
        damaged(&report),
        vec![(
            last_path.clone(),
            vec![Problem::AttachmentTooShort {
                chunk: 0,
                size: cut,
                needed
            }]
        )]
    );
    assert_eq!(report.chunks_read, 5, "the others read and open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_reads_about_the_share_asked() {
    let fx = Fixture::new().await;
    let volume = fx.open().await;
    let mut rng = SplitMix64::new(6);
    // 200 chunks: twenty files of ten (one file's record of 200 chunks is over these
    // limits).
    for i in 0..20 {
        let file = put(
            &volume,
            &format!("f{i}"),
            &rng.bytes(10 * chunk_len(true)),
            true,
        )
        .await;
        assert_eq!(file.chunks.len(), 10);
        // Every other chunk damaged: a sample finds some, not all, of them.
        for chunk in file.chunks.iter().step_by(2) {
            fx.flip_byte(chunk);
        }
    }
    let sample = |percent, seed| DataCheck::Sample {
        percent,
        seed: Some(seed),
    };
    let before = fx.store.counts();
    let report = verify(&volume, "", sample(10.0, 1)).await;
    let asked = fx.store.counts() - before;
    assert_eq!(report.chunks_checked, 200);
    assert_eq!(report.chunks_read, 20);
    assert_eq!(asked.fetches, 20);
    let found = report.problems();
    assert!(found > 0 && found < 20, "{found} damaged of 20 read");
    assert!(
        report
            .damaged
            .iter()
            .flat_map(|d| &d.problems)
            .all(|p| matches!(
                p,
                Problem::DoesNotOpen { chunk, .. } if chunk % 2 == 0
            ))
    );
    // The same seed reads the same chunks; another seed, others.
    assert_eq!(verify(&volume, "", sample(10.0, 1)).await, report);
    assert_ne!(verify(&volume, "", sample(10.0, 2)).await, report);
    // Half a percent of 200 is one chunk; a sample reads at least one.
    assert_eq!(verify(&volume, "", sample(0.5, 3)).await.chunks_read, 1);
    assert_eq!(verify(&volume, "", sample(0.01, 3)).await.chunks_read, 1);
    let all = verify(&volume, "", sample(100.0, 3)).await;
    assert_eq!((all.chunks_read, all.problems()), (200, 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_a_file_moved_in_are_checked_in_their_own_channel() {
    let fx = Fixture::new().await;
    let other = fx.local.create_channel("other").await.unwrap();
    let source = fx.open().await;
    let dest = fx.open_with(&other, fx.config()).await;
    let mut rng = SplitMix64::new(7);
    let file = put(&source, "f", &rng.bytes(7 * chunk_len(true)), true).await;
    source.move_to("f", &dest, "moved").await.unwrap();
    let moved = dest.index().file("moved").unwrap().clone();
    assert!(
        moved
            .chunks
            .iter()
            .all(|c| c.channel == Some(fx.channel.id))
    );
    let report = verify(&dest, "", DataCheck::All).await;
    assert!(report.is_clean(), "{:?}", report.damaged);
    assert_eq!(report.chunks_read, 7);

    let gone = file.chunks[0].message;
    fx.local.delete_message(fx.channel.id, gone).await.unwrap();
    let report = verify(&dest, "", DataCheck::Skip).await;
    let found = damaged(&report);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, "moved");
    assert!(!found[0].1.is_empty());
    for problem in &found[0].1 {
        assert!(
            matches!(problem, Problem::MessageMissing { channel: Some(c), message, .. }
                if *c == fx.channel.id && *message == gone),
            "{problem:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_deletes_nothing_not_even_what_an_ordinary_open_would() {
    let fx = Fixture::new().await;
    let grace = VolumeConfig {
        free_grace: std::time::Duration::from_secs(3600),
        ..fx.config()
    };
    let volume = fx.open_with(&fx.channel, grace.clone()).await;
    let mut rng = SplitMix64::new(8);
    put(&volume, "f", &rng.bytes(4 * chunk_len(true)), true).await;
    put(&volume, "f", &rng.bytes(100), true).await;
    // The old version's messages wait to be freed, and are due (as the cache tells it).
    assert!(!volume.index().unfreed.is_empty());
    for since in volume.index().unfreed.values_mut() {
        *since -= 3_600_000;
    }
    volume.save();
    drop(volume);
    let messages = fx.message_ids(fx.channel.id).await;

    let before = fx.store.counts();
    let inspected = Volume::open_to_inspect(
        fx.store.clone(),
        fx.channel.clone(),
        Some(fx.key.clone()),
        grace.clone(),
    )
    .await
    .unwrap();
    let report = verify(&inspected, "", DataCheck::All).await;
    assert!(report.is_clean(), "{:?}", report.damaged);
    assert_eq!(report.files_checked, 1);
    let asked = fx.store.counts() - before;
    assert_eq!((asked.posts, asked.deletes), (0, 0));
    assert_eq!(fx.message_ids(fx.channel.id).await, messages);
    drop(inspected);

    // An ordinary open frees them: what verifying left alone.
    let opened = fx.open_with(&fx.channel, grace).await;
    assert!(fx.message_ids(fx.channel.id).await.len() < messages.len());
    assert!(opened.index().unfreed.is_empty());
}
