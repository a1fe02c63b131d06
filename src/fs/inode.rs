//! Inode numbers: stable names for the kernel.
//!
//! The kernel knows files by inode number and expects a number to mean the same file
//! for as long as it holds it (and `ls -i`, `find` and `rsync` notice when numbers
//! change). Our files are named by (channel, path), so this table hands out a number
//! per name the first time the kernel sees it and keeps it for the mount's life:
//!
//! - numbers are never reused, so a stale number can't reach another file;
//! - a rename moves the number (and those of everything under a renamed folder) to
//!   the new name, so an open file keeps its identity across an editor's save;
//! - the root is [`ROOT`]; a channel is its folder at path `""`;
//! - the names of a file that has several (hard links) share one number
//!   ([`InodeTable::ino_linked`]): the number names the first of them it was given
//!   for, and the others are aliases of it; when that name goes, an alias takes its
//!   place.
//!
//! The table grows with the names looked up (a few dozen bytes each: one copy of each
//! name, shared by both directions, hashed with foldhash, whose per-process seed keeps
//! names chosen to collide from slowing it down; a listing of 100,000 new names
//! inserts each once, on the way of the first `ls -lR` after a mount). It counts the
//! lookups the kernel was answered with, as FUSE requires, and drops a number only
//! when the kernel has forgotten as many as it was given: a lookup answered just
//! before a `forget` of the same number must keep it alive.

use std::collections::HashMap;
use std::sync::Arc;

use crate::idmap::IdMap;
use crate::store::Id;

/// The root folder (the channels).
pub const ROOT: u64 = 1;

/// What an inode number names: a channel, and a path inside it (`""` for the channel
/// folder itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeKey {
    pub channel: Id,
    pub path: String,
}

impl NodeKey {
    pub fn new(channel: Id, path: impl Into<String>) -> NodeKey {
        NodeKey {
            channel,
            path: path.into(),
        }
    }

    /// The key of `name` inside this folder.
    pub fn child(&self, name: &str) -> NodeKey {
        if self.path.is_empty() {
            return NodeKey::new(self.channel, name);
        }
        let mut path = String::with_capacity(self.path.len() + 1 + name.len());
        path.push_str(&self.path);
        path.push('/');
        path.push_str(name);
        NodeKey::new(self.channel, path)
    }

    /// Whether this key is `folder` or lies under it.
    pub fn is_within(&self, folder: &NodeKey) -> bool {
        self.channel == folder.channel
            && (folder.path.is_empty()
                || self.path == folder.path
                || self
                    .path
                    .strip_prefix(&folder.path)
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

/// The two-way map between inode numbers and names.
#[derive(Debug)]
pub struct InodeTable {
    by_ino: IdMap<u64, Arc<NodeKey>>,
    by_key: HashMap<Arc<NodeKey>, u64, foldhash::fast::RandomState>,
    /// Lookups the kernel holds per number.
    lookups: IdMap<u64, u64>,
    /// How many names beside its own each shared number has (hard links).
    aliases: IdMap<u64, u32>,
    next: u64,
}

impl Default for InodeTable {
    fn default() -> Self {
        InodeTable {
            by_ino: IdMap::default(),
            by_key: HashMap::default(),
            lookups: IdMap::default(),
            aliases: IdMap::default(),
            next: ROOT + 1,
        }
    }
}

impl InodeTable {
    /// The number for `key`, handing out a new one the first time.
    pub fn ino(&mut self, key: &NodeKey) -> u64 {
        if let Some(&ino) = self.by_key.get(key) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        let key = Arc::new(key.clone());
        self.by_key.insert(key.clone(), ino);
        self.by_ino.insert(ino, key);
        ino
    }

    /// Counts one more lookup of a number in use, which the kernel will hold (for the
    /// replies of lookup, create and mkdir); unknown numbers are ignored.
    pub fn hold(&mut self, ino: u64) {
        if self.by_ino.contains_key(&ino) {
            *self.lookups.entry(ino).or_default() += 1;
        }
    }

    /// The number of `key`, where `ino` is what it was a moment ago (a listing's): that
    /// one if it still names `key` (a cheaper check than finding `key`), else as
    /// [`InodeTable::ino`] gives it.
    pub fn ino_known(&mut self, ino: u64, key: &NodeKey) -> u64 {
        if self.by_ino.get(&ino).is_some_and(|known| **known == *key) {
            return ino;
        }
        self.ino(key)
    }

    /// The name behind a number, if the number is in use.
    pub fn key(&self, ino: u64) -> Option<&NodeKey> {
        self.by_ino.get(&ino).map(|key| &**key)
    }

    /// The number of `key`, one of `names` (the names of one file): the number any of
    /// them has already (the lowest, if they have several), else a new one. A number
    /// `key` had on its own, which the kernel doesn't hold, gives way to the shared one.
    pub fn ino_linked(&mut self, key: &NodeKey, names: &[NodeKey]) -> u64 {
        let own = self.ino(key);
        let shared = (names.iter())
            .filter(|name| *name != key)
            .filter_map(|name| self.by_key.get(name).copied())
            .filter(|&ino| ino != own)
            .min();
        match shared {
            Some(shared) if !self.lookups.contains_key(&own) && shared < own => {
                self.remove(key);
                self.alias(key, shared);
                shared
            }
            _ => own,
        }
    }

    /// Gives `key` the number `ino` too (a new name of that file).
    pub fn alias(&mut self, key: &NodeKey, ino: u64) {
        if !self.by_ino.contains_key(&ino) {
            return;
        }
        self.remove(key);
        self.by_key.insert(Arc::new(key.clone()), ino);
        *self.aliases.entry(ino).or_default() += 1;
    }

    /// Moves `from` — and, if it is a folder, everything under it — to `to`. A number
    /// that `to` (or a name under it) had before is dropped: that file was replaced.
    pub fn rename(&mut self, from: &NodeKey, to: &NodeKey) {
        let replaced: Vec<Arc<NodeKey>> = self
            .by_key
            .keys()
            .filter(|key| key.is_within(to))
            .cloned()
            .collect();
        for key in replaced {
            self.remove(&key);
        }
        let moving: Vec<(Arc<NodeKey>, u64)> = self
            .by_key
            .iter()
            .filter(|(key, _)| key.is_within(from))
            .map(|(key, ino)| (key.clone(), *ino))
            .collect();
        for (key, ino) in moving {
            self.by_key.remove(&key);
            let suffix = &key.path[from.path.len()..];
            let moved = Arc::new(NodeKey::new(to.channel, format!("{}{suffix}", to.path)));
            if self.by_ino.get(&ino).is_some_and(|named| **named == *key) {
                self.by_ino.insert(ino, moved.clone());
            }
            self.by_key.insert(moved, ino);
        }
    }

    /// Drops the number of a name that no longer exists (after unlink or rmdir), so
    /// that the name can come back later as a new file with a new number. A number
    /// shared with other names (hard links) stays, named by one of them.
    pub fn remove(&mut self, key: &NodeKey) {
        let Some(ino) = self.by_key.remove(key) else {
            return;
        };
        let named_by_it = self.by_ino.get(&ino).is_some_and(|named| **named == *key);
        let Some(aliases) = self.aliases.get_mut(&ino) else {
            self.by_ino.remove(&ino);
            return;
        };
        *aliases -= 1;
        if *aliases == 0 {
            self.aliases.remove(&ino);
        }
        if named_by_it {
            let heir = (self.by_key.iter())
                .find(|(_, other)| **other == ino)
                .map(|(name, _)| name.clone());
            match heir {
                Some(heir) => {
                    self.by_ino.insert(ino, heir);
                }
                None => {
                    self.by_ino.remove(&ino);
                }
            }
        }
    }

    /// The kernel forgot `count` lookups of a number; once it holds none, the number
    /// goes.
    pub fn forget(&mut self, ino: u64, count: u64) {
        let held = self.lookups.entry(ino).or_default();
        *held = held.saturating_sub(count);
        if *held > 0 {
            return;
        }
        self.lookups.remove(&ino);
        if let Some(key) = self.by_ino.remove(&ino) {
            self.by_key.remove(&key);
        }
        if self.aliases.remove(&ino).is_some() {
            self.by_key.retain(|_, other| *other != ino);
        }
    }

    /// How many numbers are in use.
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// Whether no numbers are in use.
    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_never_reused() {
        let mut table = InodeTable::default();
        let looked_up = |table: &mut InodeTable, key: &NodeKey| {
            let ino = table.ino(key);
            table.hold(ino);
            ino
        };
        let a = NodeKey::new(7, "a");
        let first = table.ino(&a);
        assert!(first > ROOT);
        assert_eq!(table.ino(&a), first);
        assert_eq!(table.key(first), Some(&a));
        table.remove(&a);
        assert_eq!(table.key(first), None);
        let again = looked_up(&mut table, &a);
        assert_ne!(
            again, first,
            "a removed file's number is not handed out again"
        );
        assert_eq!(looked_up(&mut table, &a), again);
        table.forget(again, 1);
        assert_eq!(table.key(again), Some(&a), "one lookup is still held");
        table.forget(again, 1);
        assert!(table.is_empty());
    }

    #[test]
    fn renames_carry_numbers_along_with_what_is_under_a_folder() {
        let mut table = InodeTable::default();
        let dir = table.ino(&NodeKey::new(1, "docs"));
        let file = table.ino(&NodeKey::new(1, "docs/a/b.txt"));
        let sibling = table.ino(&NodeKey::new(1, "docs2/x"));
        let target = table.ino(&NodeKey::new(2, "old"));
        table.rename(&NodeKey::new(1, "docs"), &NodeKey::new(2, "old"));
        assert_eq!(table.key(dir), Some(&NodeKey::new(2, "old")));
        assert_eq!(table.key(file), Some(&NodeKey::new(2, "old/a/b.txt")));
        assert_eq!(table.key(sibling), Some(&NodeKey::new(1, "docs2/x")));
        assert_eq!(
            table.key(target),
            None,
            "the replaced file's number is gone"
        );
        assert_eq!(table.ino(&NodeKey::new(2, "old")), dir);
    }

    #[test]
    fn children_of_a_channel_have_plain_paths() {
        let channel = NodeKey::new(3, "");
        assert_eq!(channel.child("a").path, "a");
        assert_eq!(channel.child("a").child("b").path, "a/b");
        assert!(NodeKey::new(3, "a/b").is_within(&channel));
        assert!(!NodeKey::new(4, "a").is_within(&channel));
        assert!(!NodeKey::new(3, "ab").is_within(&NodeKey::new(3, "a")));
    }
}
