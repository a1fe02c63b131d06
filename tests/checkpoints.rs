//! Checkpoints (see `src/volume/checkpoint.rs`): a reader with nothing cached starts
//! from the newest checkpoint it can authenticate and replays only the messages after
//! it; a damaged one, another key's, one whose part is gone or one unpinned falls back
//! to an older one, at worst to a full replay; and whatever it starts from, it ends
//! with the same index as a full replay (a property test over random histories).
//!
//! The store is a local one with tiny limits (4 KiB per attachment, 10,000 bytes per
//! message), so that even a small channel's checkpoint spans several parts and
//! messages.

#[path = "common/faulty.rs"]
mod faulty;
#[path = "common/fixture.rs"]
mod fixture;

use std::io::Cursor;

use dcloud_fs::crypto::Key;
use dcloud_fs::format::{self, CheckpointBody, CheckpointHead};
use dcloud_fs::store::{Id, Message, NewMessage, Store};
use dcloud_fs::volume::{PutOptions, PutSource, Volume, VolumeConfig};
use faulty::SplitMix64;
use fixture::{Fixture, open_volume};

/// Someone else in the channel.
const PERSON: Id = 42;

impl Fixture {
    /// A volume with no index cache, starting from a checkpoint if `from_checkpoint`.
    async fn open(&self, key: Option<&Key>, from_checkpoint: bool) -> Volume {
        let config = VolumeConfig {
            cache_dir: None,
            free_grace: std::time::Duration::ZERO,
            checkpoint_every: 0,
            start_from_checkpoint: from_checkpoint,
            ..VolumeConfig::default()
        };
        open_volume(self.local.clone(), &self.channel, key, config).await
    }

    async fn message(&self, id: Id) -> Message {
        self.local.message(self.channel.id, id).await.unwrap()
    }

    async fn pinned(&self) -> Vec<Id> {
        let pins = self.local.pins(self.channel.id).await.unwrap();
        pins.iter().map(|m| m.id).collect()
    }

    /// Flips a byte of the last part of the checkpoint whose head is `head`.
    async fn damage(&self, head: Id) {
        let message = self.message(head).await;
        let part = message
            .attachments
            .iter()
            .rfind(|a| format::part_number(&a.filename).is_some())
            .expect("the head holds a part");
        let path = self.local.attachment_path(self.channel.id, part.id);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
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

async fn put(volume: &Volume, path: &str, data: &[u8], encrypted: bool) {
    let source = PutSource::Stream(Box::new(Cursor::new(data.to_vec())));
    volume
        .put(path, source, path, options(encrypted), None)
        .await
        .unwrap();
}

async fn get(volume: &Volume, path: &str) -> Vec<u8> {
    let mut sink = Vec::new();
    volume.get(path, &mut sink, None).await.unwrap();
    sink
}

/// Checks that `from_checkpoint` holds what a full replay holds. The one difference
/// allowed: messages the checkpoint knew of that have been deleted since (a replay
/// can't see a deletion), which it may still list as ours.
async fn assert_same_state(fx: &Fixture, from_checkpoint: &Volume, full: &Volume, context: &str) {
    let mut a: CheckpointBody = from_checkpoint.index().checkpoint_body();
    let mut b: CheckpointBody = full.index().checkpoint_body();
    let existing = fx.message_ids(fx.channel.id).await;
    let keep_existing = |ids: &mut Vec<Id>| ids.retain(|id| existing.contains(id));
    for body in [&mut a, &mut b] {
        keep_existing(&mut body.records);
        for data in &mut body.data {
            keep_existing(&mut data.m);
        }
        body.data.retain(|d| !d.m.is_empty());
        // Where each reader's replay got to depends on when it read.
        body.last_seen = 0;
    }
    // The first record the key authenticated may have been deleted since (a replaced
    // file's record is freed): the checkpoint remembers it, a replay finds a later one.
    assert!(
        a.cutover <= b.cutover,
        "{context}: cutover {:?} > {:?}",
        a.cutover,
        b.cutover
    );
    a.cutover = b.cutover;
    assert_eq!(a.paths, b.paths, "{context}: the paths differ");
    assert_eq!(a, b, "{context}: the states differ");
}

/// Puts, a folder, a replace, a delete and a rename: a little of everything; and
/// enough files that a checkpoint spans several messages with these limits.
async fn some_history(volume: &Volume, rng: &mut SplitMix64) {
    for i in 0..120 {
        put(
            volume,
            &format!("many/file-{i:03}.txt"),
            &rng.bytes(20),
            true,
        )
        .await;
    }
    put(volume, "big.bin", &rng.bytes(20_000), true).await;
    put(volume, "docs/a.txt", b"alpha", true).await;
    put(volume, "docs/b.txt", b"beta", false).await;
    volume.mkdir("empty", 1, 0o755).await.unwrap();
    put(volume, "docs/a.txt", b"alpha, again", true).await;
    put(volume, "gone.txt", b"soon gone", true).await;
    volume.remove("gone.txt", false).await.unwrap();
    volume.rename("big.bin", "renamed.bin").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_reader_starts_from_the_checkpoint_and_reads_only_the_tail() {
    let fx = Fixture::new().await;
    let key = Key::generate().unwrap();
    let mut rng = SplitMix64::new(7);
    let writer = fx.open(Some(&key), true).await;
    some_history(&writer, &mut rng).await;
    let head = writer.post_checkpoint().await.unwrap();
    assert_eq!(fx.pinned().await, vec![head]);
    let parsed = CheckpointHead::parse(&fx.message(head).await.content).unwrap();
    assert!(
        !parsed.parts.is_empty(),
        "with these limits the checkpoint spans several messages"
    );
    // The tail: changes after the checkpoint.
    put(&writer, "after.txt", b"after the checkpoint", true).await;
    writer.remove("docs/b.txt", false).await.unwrap();
    writer
        .rename("docs/a.txt", "docs/moved-a.txt")
        .await
        .unwrap();
    let renamed = writer.index().file("renamed.bin").unwrap().clone();

    let fresh = fx.open(Some(&key), true).await;
    assert_eq!(fresh.started_from_checkpoint(), Some(head));
    let full = fx.open(Some(&key), false).await;
    assert_eq!(full.started_from_checkpoint(), None);
    assert_same_state(&fx, &fresh, &full, "checkpoint + tail").await;
    assert_eq!(get(&fresh, "after.txt").await, b"after the checkpoint");
    assert_eq!(get(&fresh, "docs/moved-a.txt").await, b"alpha, again");

    // What the checkpoint covers is not read again: delete the rename's record (which
    // holds no chunks) behind everyone's back, and a reader that starts from the
    // checkpoint still has the file where the rename put it, while a full replay
    // doesn't.
    fx.local
        .delete_message(fx.channel.id, renamed.record_message)
        .await
        .unwrap();
    let fresh = fx.open(Some(&key), true).await;
    assert_eq!(fresh.started_from_checkpoint(), Some(head));
    assert_eq!(get(&fresh, "renamed.bin").await.len(), 20_000);
    let full = fx.open(Some(&key), false).await;
    assert!(full.index().file("renamed.bin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unusable_checkpoint_falls_back_to_an_older_one_then_to_a_full_replay() {
    let fx = Fixture::new().await;
    let key = Key::generate().unwrap();
    let other_key = Key::generate().unwrap();
    let mut rng = SplitMix64::new(11);
    let writer = fx.open(Some(&key), true).await;
    some_history(&writer, &mut rng).await;
    let first = writer.post_checkpoint().await.unwrap();
    put(&writer, "second.txt", b"between the checkpoints", true).await;
    let second = writer.post_checkpoint().await.unwrap();
    put(&writer, "third.txt", b"after them", true).await;
    let mut pinned = fx.pinned().await;
    pinned.sort();
    assert_eq!(pinned, vec![first, second]);

    // Another key's checkpoint, newer than ours: not ours to trust.
    let stranger = fx.open(Some(&other_key), true).await;
    let theirs = stranger.post_checkpoint().await.unwrap();
    let full = fx.open(Some(&key), false).await;

    let started = |v: &Volume| v.started_from_checkpoint();
    let reader = fx.open(Some(&key), true).await;
    assert_eq!(
        started(&reader),
        Some(second),
        "another key's is passed over"
    );
    assert_same_state(&fx, &reader, &full, "the newest of ours").await;

    // Damaged: the one before it is used.
    fx.damage(second).await;
    let reader = fx.open(Some(&key), true).await;
    assert_eq!(
        started(&reader),
        Some(first),
        "a damaged one is passed over"
    );
    assert_same_state(&fx, &reader, &full, "after damage").await;

    // Unpinned: not found at all.
    fx.local.unpin(fx.channel.id, first).await.unwrap();
    let reader = fx.open(Some(&key), true).await;
    assert_eq!(
        started(&reader),
        None,
        "nothing usable is pinned: a full replay"
    );
    assert_same_state(&fx, &reader, &full, "full replay").await;

    // A part deleted: passed over too.
    fx.local.pin(fx.channel.id, first).await.unwrap();
    let part = CheckpointHead::parse(&fx.message(first).await.content)
        .unwrap()
        .parts[0];
    fx.local.delete_message(fx.channel.id, part).await.unwrap();
    let reader = fx.open(Some(&key), true).await;
    assert_eq!(started(&reader), None, "a checkpoint missing a part");
    assert_same_state(&fx, &reader, &full, "missing part").await;

    // The other key's reader takes its own.
    let theirs_reader = fx.open(Some(&other_key), true).await;
    assert_eq!(started(&theirs_reader), Some(theirs));
    // A reader without a key takes none of the sealed ones.
    let keyless = fx.open(None, true).await;
    assert_eq!(started(&keyless), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_checkpoints_stay_pinned_and_the_older_ones_are_deleted() {
    let fx = Fixture::new().await;
    let key = Key::generate().unwrap();
    let writer = fx.open(Some(&key), true).await;
    let mut heads = Vec::new();
    for round in 0..4 {
        put(&writer, &format!("f{round}"), b"x", true).await;
        heads.push(writer.post_checkpoint().await.unwrap());
    }
    let mut pinned = fx.pinned().await;
    pinned.sort();
    assert_eq!(pinned, heads[2..].to_vec(), "the newest two are kept");
    let existing = fx.message_ids(fx.channel.id).await;
    for old in &heads[..2] {
        assert!(!existing.contains(old), "checkpoint {old} was deleted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_posted_once_enough_records_are_newer_than_the_last() {
    let fx = Fixture::new().await;
    let key = Key::generate().unwrap();
    let config = VolumeConfig {
        cache_dir: None,
        checkpoint_every: 5,
        ..VolumeConfig::default()
    };
    let writer = open_volume(fx.local.clone(), &fx.channel, Some(&key), config).await;
    for i in 0..4 {
        put(&writer, &format!("f{i}"), b"x", true).await;
    }
    writer.checkpoint_if_due(false).await;
    assert!(fx.pinned().await.is_empty(), "four records are not enough");
    put(&writer, "f4", b"x", true).await;
    writer.checkpoint_if_due(false).await;
    assert_eq!(fx.pinned().await.len(), 1);
    writer.checkpoint_if_due(false).await;
    assert_eq!(fx.pinned().await.len(), 1, "nothing new since");
    let reader = fx.open(Some(&key), true).await;
    assert!(reader.started_from_checkpoint().is_some());
    assert_eq!(reader.index().live().count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_channel_without_a_key_checkpoints_unsigned() {
    let fx = Fixture::new().await;
    let writer = fx.open(None, true).await;
    put(&writer, "plain.txt", b"for everyone", false).await;
    let head = writer.post_checkpoint().await.unwrap();
    let reader = fx.open(None, true).await;
    assert_eq!(reader.started_from_checkpoint(), Some(head));
    assert_eq!(get(&reader, "plain.txt").await, b"for everyone");
    // A reader holding a key trusts only what its key sealed.
    let key = Key::generate().unwrap();
    let keyed = fx.open(Some(&key), true).await;
    assert_eq!(keyed.started_from_checkpoint(), None);
}

/// Random histories: puts (small, packed-sized and multi-chunk), replaces, deletes,
/// renames, folders and people's chat, with a checkpoint posted at a random point (by
/// a writer whose index may lag behind another writer's changes); then a reader
/// that starts from the checkpoint and one that replays everything must agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_plus_tail_equals_a_full_replay_over_random_histories() {
    let seeds: u64 = std::env::var("DCLOUD_TEST_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    for seed in 0..seeds {
        let fx = Fixture::new().await;
        let key = Key::generate().unwrap();
        let mut rng = SplitMix64::new(0xc4ec_0000 + seed);
        let writers = [
            fx.open(Some(&key), true).await,
            fx.open(Some(&key), true).await,
        ];
        let mut checkpointed = false;
        let steps = 30 + rng.below(20);
        let checkpoint_at = rng.below(steps);
        for step in 0..steps {
            let writer = &writers[rng.index(2)];
            // The writer sees what the other did (changes check the index first).
            writer.refresh().await.unwrap();
            let live: Vec<String> = writer
                .index()
                .live()
                .filter(|(_, e)| matches!(e, dcloud_fs::volume::Entry::File(_)))
                .map(|(p, _)| p.to_string())
                .collect();
            let name = format!("d{}/f{}", rng.below(3), rng.below(8));
            match rng.below(10) {
                0..=3 => {
                    let len = [10, 300, 9_000][rng.index(3)];
                    let data = rng.bytes(len);
                    put(writer, &name, &data, rng.chance(0.8)).await;
                }
                4 | 5 if !live.is_empty() => {
                    let victim = &live[rng.index(live.len())];
                    writer.remove(victim, false).await.unwrap();
                }
                6 if !live.is_empty() => {
                    let from = &live[rng.index(live.len())];
                    if writer.index().entry(&name).is_none() && !name.starts_with(from.as_str()) {
                        let _ = writer.rename(from, &name).await;
                    }
                }
                7 => {
                    let _ = writer.mkdir(&format!("e{}", rng.below(4)), 1, 0o755).await;
                }
                _ => {
                    let attachments = if rng.chance(0.5) {
                        vec![dcloud_fs::store::NewAttachment {
                            filename: "cat.png".into(),
                            data: rng.bytes(100).into(),
                        }]
                    } else {
                        Vec::new()
                    };
                    let chat = NewMessage {
                        content: format!("hello {step}"),
                        attachments,
                    };
                    fx.local.post_as(PERSON, fx.channel.id, chat).await.unwrap();
                }
            }
            if step == checkpoint_at {
                writers[rng.index(2)].post_checkpoint().await.unwrap();
                checkpointed = true;
            }
        }
        assert!(checkpointed);
        let from_checkpoint = fx.open(Some(&key), true).await;
        assert!(
            from_checkpoint.started_from_checkpoint().is_some(),
            "seed {seed}: the checkpoint was used"
        );
        let full = fx.open(Some(&key), false).await;
        assert_same_state(&fx, &from_checkpoint, &full, &format!("seed {seed}")).await;
        // And every file reads back the same through both.
        let paths: Vec<String> = full
            .index()
            .live()
            .filter(|(_, e)| matches!(e, dcloud_fs::volume::Entry::File(_)))
            .map(|(p, _)| p.to_string())
            .collect();
        for path in paths {
            assert_eq!(
                get(&from_checkpoint, &path).await,
                get(&full, &path).await,
                "seed {seed}: {path}"
            );
        }
    }
}

#[tokio::test]
async fn the_local_store_pins_at_most_250_messages() {
    let fx = Fixture::new().await;
    let mut ids = Vec::new();
    for i in 0..251 {
        let message = NewMessage {
            content: format!("m{i}"),
            attachments: Vec::new(),
        };
        ids.push(fx.local.post(fx.channel.id, message).await.unwrap().id);
    }
    for &id in &ids[..250] {
        fx.local.pin(fx.channel.id, id).await.unwrap();
    }
    let refused = fx.local.pin(fx.channel.id, ids[250]).await.unwrap_err();
    assert!(refused.to_string().contains("250"), "{refused}");
    fx.local.pin(fx.channel.id, ids[0]).await.unwrap(); // pinned already: fine
    fx.local
        .delete_message(fx.channel.id, ids[0])
        .await
        .unwrap();
    assert_eq!(
        fx.pinned().await.len(),
        249,
        "a deleted message is unpinned"
    );
    fx.local.pin(fx.channel.id, ids[250]).await.unwrap();
}

/// A machine's index caches are read before its channels open (what a mount does while
/// it lists the channels): the open takes that read, then catches up with what another
/// machine posted since; a read of a channel gone from the store is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_read_started_before_the_open_is_taken_then_caught_up() {
    use dcloud_fs::volume::registry::Volumes;
    let fx = Fixture::new().await;
    let cached = VolumeConfig {
        cache_dir: Some(fx.cache.path().to_path_buf()),
        ..VolumeConfig::default()
    };
    let gone = fx.local.create_channel("gone").await.unwrap();
    {
        let machine = Volumes::new(fx.local.clone(), Some(fx.key.clone()), cached.clone());
        put(
            &machine.open(fx.channel.clone()).await.unwrap(),
            "old.txt",
            b"cached",
            true,
        )
        .await;
        put(
            &machine.open(gone.clone()).await.unwrap(),
            "g.txt",
            b"g",
            true,
        )
        .await;
        for volume in machine.opened() {
            volume.save();
        }
    }
    let elsewhere = fx.open(Some(&fx.key), false).await;
    put(&elsewhere, "new.txt", b"posted since", true).await;
    put(&elsewhere, "old.txt", b"overwritten since", true).await;
    fx.local.delete_channel(gone.id).await.unwrap();

    let machine = Volumes::new(fx.local.clone(), Some(fx.key.clone()), cached);
    machine.start_cache_reads();
    let volume = machine.open(fx.channel.clone()).await.unwrap();
    assert_eq!(get(&volume, "new.txt").await, b"posted since");
    assert_eq!(get(&volume, "old.txt").await, b"overwritten since");
    assert_eq!(volume.index().live().count(), 2);
    machine.drop_cache_reads();
    assert!(
        machine.open(gone).await.is_err(),
        "the gone channel doesn't open"
    );
}
