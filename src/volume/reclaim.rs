//! What may be deleted, and when: every decision to delete a message of the store that
//! a change left behind goes through [`verdict`], in passes of [`Volume::free_unused`].
//!
//! ## The rules
//!
//! A message that a change of ours made useless (the old version's record and chunks,
//! the chunks of a file moved here that was then replaced) waits in
//! [`Index::unfreed`] (or [`Index::unfreed_foreign`], for another channel's) for a pass,
//! which runs after every refresh. For each one, in this order:
//!
//! 1. **Only our own.** A message that isn't the bot's own *of our kinds* in its channel
//!    (a data message or a record message, as [`Own`] records from the history and from
//!    what we posted) is never deleted: not someone else's message, not one whose kind
//!    can't be told, not one already gone. It leaves the list, with a log line.
//! 2. **In use here.** A message that a live entry of its own channel uses (its record,
//!    its chunks) or that carries a tombstone stays, and leaves the list.
//! 3. **Pinned.** A message pinned ([`Pins`]) stays for now and is asked about again in
//!    a later pass: a local reader has open the version that uses it, or an upload is
//!    about to publish a version that keeps its chunks.
//! 4. **Moved away.** A message that files moved to another channel took along, or a
//!    message of another channel, stays while a channel on the chain of moves uses it:
//!    following the moves from the message's own channel, a channel whose live entries
//!    use it keeps it; one whose files using it moved on passes the question to their
//!    destinations (each read up to date first); a channel seen before counts as not
//!    using it (the file came back). When every path ends, it goes.
//! 5. **Doubt keeps.** When any of this can't be told now (the other channels can't be
//!    reached or read), the message stays for a later pass.
//!
//! And none of it is asked before the message has been unneeded for a grace period
//! ([`super::VolumeConfig::free_grace`], 2 minutes by default): a reader on another
//! machine that opened the old version just before it was replaced can go on reading
//! it that long (a local reader pins it for as long as it reads, rule 3). The time
//! each message became unneeded is kept in the index cache, so a command that exits
//! before the grace is over leaves it to the next one (or to a mount's next poll).
//!
//! Otherwise it is deleted.
//!
//! ## Collection (`gc`)
//!
//! [`super::gc`] adds candidates of any machine's making to a pass, with their grace
//! over, and the rules above still decide. It only ever proposes messages of ours older
//! than its horizon (now minus its grace, 24 hours by default, and nothing the index
//! hasn't read):
//!
//! 6. **Unused.** A data message, or a record message, that no live entry uses (a
//!    replaced version's chunks, an upload that died on any machine, a pack whose files
//!    are all gone, a record whose operations all lost). Only records the key counts
//!    are judged, and data messages only when the channel holds no record the key
//!    can't read (another key's files may use them).
//! 7. **Guards stay.** A record with a `link` or a moved delete is never proposed:
//!    it tells which messages other channels use.
//! 8. **Unneeded deletes.** A tombstone message, once none of the deletes that hold
//!    their paths is needed: a delete is needed while a message that stays still puts
//!    or makes its path (a replay of the history would bring the file back without
//!    it). Its deletes are forgotten first, and a checkpoint marked *collected* is
//!    posted before anything is deleted, so that an index that never read them starts
//!    again from the checkpoint.
//!
//! ## Deleting and reusing at once
//!
//! A new version of a file may keep chunks of the version it replaces; they are chosen
//! when its upload starts, and another change (an unlink, another writer) may free that
//! version meanwhile. So the upload pins the messages it keeps *under the same lock* as
//! a pass marks what it is about to delete ([`Pins::pin`], [`Pins::start_deleting`]):
//! either the pass sees the pin and leaves the message for later, or the upload sees
//! the message being (or already) deleted and uploads those chunks again. A pinned
//! message is never deleted, so a version is never published pointing at chunks freed
//! under it; once its record has landed, its entry keeps them (rule 2).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use super::index::{Hold, Own};
use super::{Volume, VolumeError, transfer};
use crate::store::Id;

/// A message of some channel: `(channel, message)`.
type Held = (Id, Id);

/// Now, in milliseconds since the Unix epoch: when a message became unneeded.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a pass does with one message (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delete it now.
    Delete,
    /// Never delete it on this account: it leaves the list.
    Keep,
    /// Ask again in a later pass.
    Later,
}

/// What a pass knows of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// What it is, if it is the bot's own in its channel.
    pub own: Option<Own>,
    /// A live entry (or a tombstone) of its own channel uses it.
    pub used_here: bool,
    /// Pinned by a reader or an upload.
    pub pinned: bool,
    /// Files using it moved away from its channel (or it is another channel's).
    pub moved_away: bool,
    /// For a message that moved away: which channel uses it, found by following the
    /// moves (`Ok(None)`: none), or why that can't be told now.
    pub holder: Option<Result<Option<Id>, String>>,
}

/// The rules of the module docs, in their order.
pub fn verdict(facts: &Facts) -> Verdict {
    if facts.own.is_none() || facts.used_here {
        return Verdict::Keep;
    }
    if facts.pinned {
        return Verdict::Later;
    }
    if !facts.moved_away {
        return Verdict::Delete;
    }
    match &facts.holder {
        Some(Ok(None)) => Verdict::Delete,
        Some(Ok(Some(_))) => Verdict::Keep,
        Some(Err(_)) | None => Verdict::Later,
    }
}

/// Messages that must not be deleted for now, `(channel, message)`, and those a pass
/// is deleting. Clones share them: one set for every volume of a store, so that a
/// reader in one channel holds back a pass of another.
#[derive(Clone, Default)]
pub struct Pins(Arc<Mutex<PinState>>);

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pins({} pinned)", self.lock().counts.len())
    }
}

#[derive(Default)]
struct PinState {
    counts: HashMap<(Id, Id), usize>,
    deleting: HashSet<(Id, Id)>,
}

/// Holds messages pinned until dropped.
pub struct PinGuard {
    pins: Pins,
    messages: Vec<(Id, Id)>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut state = self.pins.lock();
        for held in &self.messages {
            if let Some(count) = state.counts.get_mut(held) {
                *count -= 1;
                if *count == 0 {
                    state.counts.remove(held);
                }
            }
        }
    }
}

impl Pins {
    fn lock(&self) -> std::sync::MutexGuard<'_, PinState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pins `messages`, unless a pass is deleting one of them: then nothing is pinned
    /// and that message comes back as the error.
    pub fn pin(&self, messages: &[(Id, Id)]) -> Result<PinGuard, (Id, Id)> {
        let mut state = self.lock();
        if let Some(&gone) = messages.iter().find(|m| state.deleting.contains(m)) {
            return Err(gone);
        }
        for &held in messages {
            *state.counts.entry(held).or_default() += 1;
        }
        Ok(PinGuard {
            pins: self.clone(),
            messages: messages.to_vec(),
        })
    }

    /// Whether `message` is pinned now.
    pub fn is_pinned(&self, message: (Id, Id)) -> bool {
        self.lock().counts.contains_key(&message)
    }

    /// Marks those of `messages` that aren't pinned as being deleted and returns them;
    /// the pinned ones come back second, for a later pass.
    fn start_deleting(&self, messages: Vec<Held>) -> (Vec<Held>, Vec<Held>) {
        let mut state = self.lock();
        let (pinned, free): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|m| state.counts.contains_key(m));
        state.deleting.extend(free.iter().copied());
        (free, pinned)
    }

    fn done_deleting(&self, messages: &[(Id, Id)]) {
        let mut state = self.lock();
        for held in messages {
            state.deleting.remove(held);
        }
    }
}

impl Volume {
    /// Pins the messages of this channel's file entry's chunks and record (a reader of
    /// that version, or an upload keeping its chunks): a pass won't delete them while
    /// the guard lives. Fails if one of them is being deleted or is gone already.
    pub fn pin_messages(&self, messages: &[(Id, Id)]) -> Result<PinGuard, VolumeError> {
        {
            let index = self.index();
            if let Some(&(_, gone)) = messages
                .iter()
                .find(|&&(channel, m)| channel == self.channel.id && index.own(m).is_none())
            {
                return Err(VolumeError::Internal(format!(
                    "message {gone} is gone from #{}",
                    self.channel.name
                )));
            }
        }
        self.config.pins.pin(messages).map_err(|(_, m)| {
            VolumeError::Internal(format!(
                "message {m} of #{} is being deleted",
                self.channel.name
            ))
        })
    }

    /// Whether some unneeded message's grace period is over (a pass would look at it).
    pub(super) fn frees_due(&self) -> bool {
        let grace = self.config.free_grace.as_millis() as u64;
        let now = now_ms();
        let index = self.index();
        index
            .unfreed
            .values()
            .chain(index.unfreed_foreign.values())
            .any(|&since| now.saturating_sub(since) >= grace)
    }

    /// A pass: deletes the messages in [`Index::unfreed`] and [`Index::unfreed_foreign`]
    /// that the rules allow, now that the index is up to date; those to ask about again
    /// stay. Returns whether anything changed.
    pub(super) async fn free_unused(&self) -> bool {
        let grace = self.config.free_grace.as_millis() as u64;
        let due = |since: u64| now_ms().saturating_sub(since) >= grace;
        let (candidates, before) = {
            let mut index = self.index();
            if index.unfreed.is_empty() && index.unfreed_foreign.is_empty() {
                return false;
            }
            let before = (index.unfreed.clone(), index.unfreed_foreign.clone());
            let (own, waiting): (BTreeMap<Id, u64>, _) = std::mem::take(&mut index.unfreed)
                .into_iter()
                .partition(|&(_, since)| due(since));
            index.unfreed = waiting;
            let (foreign, waiting): (BTreeMap<Held, u64>, _) =
                std::mem::take(&mut index.unfreed_foreign)
                    .into_iter()
                    .partition(|&(_, since)| due(since));
            index.unfreed_foreign = waiting;
            let own = own
                .into_iter()
                .map(|(message, since)| ((self.channel.id, message), since));
            (own.chain(foreign).collect::<Vec<_>>(), before)
        };
        if candidates.is_empty() {
            return false;
        }
        let mut fresh = HashSet::new();
        let mut delete = Vec::new();
        let mut later = Vec::new();
        let since: HashMap<Held, u64> = candidates.iter().copied().collect();
        for ((channel, message), _) in candidates {
            let facts = self.facts(channel, message, &mut fresh).await;
            match verdict(&facts) {
                Verdict::Delete => delete.push((channel, message)),
                Verdict::Later => later.push((channel, message)),
                Verdict::Keep => {
                    if facts.own.is_none() {
                        log::warn!(
                            "#{}: not deleting message {message} of channel {channel}: it is \
                             not a message of ours",
                            self.channel.name
                        );
                    }
                }
            }
        }
        let (delete, pinned) = self.config.pins.start_deleting(delete);
        later.extend(pinned);
        let deleted_any = !delete.is_empty();
        let mut by_channel: BTreeMap<Id, Vec<Id>> = BTreeMap::new();
        for &(channel, message) in &delete {
            by_channel.entry(channel).or_default().push(message);
        }
        for (channel, messages) in by_channel {
            let failed = transfer::delete_quietly(self.store.as_ref(), channel, &messages).await;
            let gone: Vec<Id> = messages
                .iter()
                .copied()
                .filter(|m| !failed.contains(m))
                .collect();
            self.forget_deleted(channel, &gone).await;
            later.extend(failed.into_iter().map(|m| (channel, m)));
        }
        self.config.pins.done_deleting(&delete);
        let mut index = self.index();
        for held in later {
            let since = since.get(&held).copied().unwrap_or_else(now_ms);
            if held.0 == self.channel.id {
                index.unfreed.insert(held.1, since);
            } else {
                index.unfreed_foreign.insert(held, since);
            }
        }
        deleted_any || (index.unfreed.clone(), index.unfreed_foreign.clone()) != before
    }

    /// What a pass needs to know of message `message` of channel `channel` (each fact
    /// of the index a lookup: the index counts the uses of every message as it changes).
    async fn facts(&self, channel: Id, message: Id, fresh: &mut HashSet<Id>) -> Facts {
        let pinned = self.config.pins.is_pinned((channel, message));
        if channel == self.channel.id {
            let (own, moved_away, used_here) = {
                let index = self.index();
                (
                    index.own(message),
                    !index.moved_to(channel, message).is_empty(),
                    index.in_use(message),
                )
            };
            let holder = if moved_away && own.is_some() && !used_here && !pinned {
                Some(self.holder_from(channel, message, fresh).await)
            } else {
                None
            };
            return Facts {
                own,
                used_here,
                pinned,
                moved_away,
                holder,
            };
        }
        // Another channel's message (a chunk of a file moved here): that channel says
        // whether it is ours, and the chain of moves from there whether it is used.
        let peer = match self.peers() {
            Some(peers) => peers.peer(channel).await,
            None => Err(VolumeError::Internal(
                "the other channels can't be reached from here".into(),
            )),
        };
        let own = match &peer {
            Ok(peer) => peer.index().own(message),
            // Can't be told: count it as ours so that doubt keeps it for later.
            Err(_) => Some(Own::Record),
        };
        let holder = match peer {
            Ok(_) if !pinned => Some(self.holder_from(channel, message, fresh).await),
            Ok(_) => None,
            Err(e) => Some(Err(e.to_string())),
        };
        Facts {
            own,
            used_here: self.index().foreign_used(channel, message),
            pinned,
            moved_away: true,
            holder,
        }
    }

    async fn holder_from(
        &self,
        channel: Id,
        message: Id,
        fresh: &mut HashSet<Id>,
    ) -> Result<Option<Id>, String> {
        let found = self
            .search(channel, message, vec![channel], HashSet::new(), fresh)
            .await;
        match &found {
            Ok(Some(holder)) => log::debug!(
                "#{}: message {message} of channel {channel} stays: a file in channel \
                 {holder} uses it",
                self.channel.name
            ),
            Err(e) => log::info!(
                "#{}: can't tell yet whether message {message} of channel {channel} is \
                 still needed ({e}); will try again later",
                self.channel.name
            ),
            Ok(None) => {}
        }
        found.map_err(|e| e.to_string())
    }

    /// Notes in the owning channel's index that `messages` are gone.
    async fn forget_deleted(&self, channel: Id, messages: &[Id]) {
        let forget = |volume: &Volume| {
            let mut index = volume.index();
            for &message in messages {
                index.forget_own(message);
            }
        };
        if channel == self.channel.id {
            forget(self);
        } else if let Some(peers) = self.peers()
            && let Ok(peer) = peers.peer(channel).await
        {
            forget(&peer);
        }
    }

    /// Which channel still uses message `message` of channel `channel`, if any: starting
    /// at the message's own channel, a channel whose index [`Hold::Live`]s it holds it;
    /// one whose files using it moved on sends the search to their destinations (each
    /// read up to date first); a channel seen before counts as not holding it (the file
    /// came back). Any doubt — the other channels can't be reached ([`Volume::set_peers`]
    /// was not called), a channel can't be opened or read — is an error: the caller
    /// keeps the message.
    pub async fn holder(&self, channel: Id, message: Id) -> Result<Option<Id>, VolumeError> {
        self.search(
            channel,
            message,
            vec![channel],
            HashSet::new(),
            &mut HashSet::new(),
        )
        .await
    }

    /// [`Volume::holder`] from the channels `start`, having seen `seen` already.
    /// `fresh` are the other channels read up to date in this pass already (a pass
    /// over many messages reads each channel once).
    async fn search(
        &self,
        channel: Id,
        message: Id,
        start: Vec<Id>,
        mut seen: HashSet<Id>,
        fresh: &mut HashSet<Id>,
    ) -> Result<Option<Id>, VolumeError> {
        let mut queue = VecDeque::from(start);
        while let Some(at) = queue.pop_front() {
            if !seen.insert(at) {
                continue;
            }
            let hold = if at == self.channel.id {
                self.index().holds(channel, message)
            } else {
                let peers = self.peers().ok_or_else(|| {
                    VolumeError::Internal("the other channels can't be reached from here".into())
                })?;
                let volume = peers.peer(at).await?;
                if fresh.insert(at) {
                    volume.catch_up().await.inspect_err(|_| {
                        fresh.remove(&at);
                    })?;
                }
                volume.index().holds(channel, message)
            };
            match hold {
                Hold::Live => return Ok(Some(at)),
                Hold::MovedTo(dests) => queue.extend(dests),
                Hold::No => {}
            }
        }
        Ok(None)
    }

    /// Whether this whole channel may be deleted (`rmdir` of a channel): only when it
    /// holds no live file or folder, no bytes that files moved elsewhere still use, and
    /// no message of anyone else (deleting the channel would delete theirs too). The
    /// history is read for that last one, up to the first message by someone else.
    pub async fn channel_deletable(&self) -> Result<(), ChannelKept> {
        if self.index().live().next().is_some() {
            return Err(ChannelKept::NotEmpty);
        }
        let holders = self
            .moved_files_elsewhere()
            .await
            .map_err(|e| ChannelKept::CantTell(e.to_string()))?;
        if !holders.is_empty() {
            return Err(ChannelKept::MovedFilesUseIt(holders));
        }
        let mut cursor = crate::store::HistoryCursor::Latest;
        loop {
            let page = self
                .store
                .history(self.channel.id, cursor, crate::store::MAX_HISTORY_PAGE)
                .await
                .map_err(|e| ChannelKept::CantTell(e.to_string()))?;
            if let Some(theirs) = page.iter().find(|m| m.author_id != self.user) {
                return Err(ChannelKept::OthersMessages(theirs.author_id));
            }
            match page.last() {
                Some(oldest) if page.len() == crate::store::MAX_HISTORY_PAGE => {
                    cursor = crate::store::HistoryCursor::Before(oldest.id);
                }
                _ => return Ok(()),
            }
        }
    }

    /// The other channels where files moved away from this one still use its messages
    /// (for each such message, the first channel found): deleting this channel would
    /// destroy their bytes. Errors if that can't be told.
    pub async fn moved_files_elsewhere(&self) -> Result<BTreeSet<Id>, VolumeError> {
        let messages = self.index().moved_out_messages();
        let mut holders = BTreeSet::new();
        let mut fresh = HashSet::new();
        for message in messages {
            let start = self.index().moved_to(self.channel.id, message);
            let seen = HashSet::from([self.channel.id]);
            let found = self
                .search(self.channel.id, message, start, seen, &mut fresh)
                .await?;
            holders.extend(found);
        }
        Ok(holders)
    }
}

/// Why a channel may not be deleted ([`Volume::channel_deletable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelKept {
    /// It holds files or folders.
    NotEmpty,
    /// Files moved from it to these channels still keep their bytes in it.
    MovedFilesUseIt(BTreeSet<Id>),
    /// Someone else (this user id, the first found) has messages in it.
    OthersMessages(Id),
    /// That can't be told now.
    CantTell(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::FileId;

    fn facts(own: bool) -> Facts {
        Facts {
            own: own.then_some(Own::Data(FileId([1; 16]))),
            used_here: false,
            pinned: false,
            moved_away: false,
            holder: None,
        }
    }

    #[test]
    fn only_our_own_unused_unpinned_messages_are_deleted() {
        assert_eq!(verdict(&facts(true)), Verdict::Delete);
        // Someone else's (or gone): never, whatever else holds.
        assert_eq!(verdict(&facts(false)), Verdict::Keep);
        let mut moved_unused = facts(false);
        moved_unused.moved_away = true;
        moved_unused.holder = Some(Ok(None));
        assert_eq!(verdict(&moved_unused), Verdict::Keep);
        // In use here: never.
        let used = Facts {
            used_here: true,
            ..facts(true)
        };
        assert_eq!(verdict(&used), Verdict::Keep);
        // Pinned: later, even when nothing else uses it.
        let pinned = Facts {
            pinned: true,
            ..facts(true)
        };
        assert_eq!(verdict(&pinned), Verdict::Later);
    }

    #[test]
    fn a_message_that_moved_away_goes_only_when_no_channel_holds_it() {
        let moved = |holder| Facts {
            moved_away: true,
            holder,
            ..facts(true)
        };
        assert_eq!(verdict(&moved(Some(Ok(None)))), Verdict::Delete);
        assert_eq!(verdict(&moved(Some(Ok(Some(7))))), Verdict::Keep);
        // Doubt keeps it for later.
        assert_eq!(verdict(&moved(Some(Err("down".into())))), Verdict::Later);
        assert_eq!(verdict(&moved(None)), Verdict::Later);
    }

    #[test]
    fn a_pin_and_a_deletion_exclude_each_other() {
        let pins = Pins::default();
        let guard = pins.pin(&[(1, 10), (1, 11)]).unwrap();
        let (free, later) = pins.start_deleting(vec![(1, 10), (1, 12)]);
        assert_eq!((free, later), (vec![(1, 12)], vec![(1, 10)]));
        // What a pass is deleting can't be pinned, and nothing of the request is.
        assert_eq!(pins.pin(&[(1, 13), (1, 12)]).err(), Some((1, 12)));
        assert!(!pins.is_pinned((1, 13)));
        pins.done_deleting(&[(1, 12)]);
        drop(guard);
        assert!(!pins.is_pinned((1, 10)));
        let twice = (pins.pin(&[(2, 1)]).unwrap(), pins.pin(&[(2, 1)]).unwrap());
        drop(twice.0);
        assert!(pins.is_pinned((2, 1)));
        drop(twice.1);
        assert!(!pins.is_pinned((2, 1)));
    }
}
