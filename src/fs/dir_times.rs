//! Folder times while mounted: a folder's modification and change times move when a
//! name is made or removed in it, as POSIX says, and its change time when its own
//! attributes change.
//!
//! They are kept in memory, not stored: storing them would add a folder record to
//! every batch of files (and a conflict between machines writing one folder). So a
//! folder shows its stored modification time again after a remount, unless someone set
//! it (`touch`, `rsync -a`, `tar x`), which is stored as before; setting it also ends
//! what this table says of it, so that the time set is the one shown.

use std::collections::HashMap;
use std::sync::Mutex;

use super::inode::NodeKey;
use super::{Attr, Kind, now_ns, time_of};

/// What the table says of one folder.
#[derive(Debug, Clone, Copy)]
struct Times {
    /// When a name in it was last made or removed (`None`: its stored time stands).
    mtime_ns: Option<i64>,
    /// When it last changed in any way.
    ctime_ns: i64,
}

/// The folders changed while mounted (see the module docs).
#[derive(Debug, Default)]
pub(super) struct DirTimes {
    folders: Mutex<HashMap<NodeKey, Times>>,
}

/// The folder holding `key` (a channel's folder for a name at its top).
fn parent_of(key: &NodeKey) -> NodeKey {
    let parent = key.path.rsplit_once('/').map_or("", |(parent, _)| parent);
    NodeKey::new(key.channel, parent)
}

impl DirTimes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeKey, Times>> {
        self.folders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A name was made or removed at `key`: its folder's times move to now.
    pub fn name_changed(&self, key: &NodeKey) {
        let now = now_ns();
        self.lock().insert(
            parent_of(key),
            Times {
                mtime_ns: Some(now),
                ctime_ns: now,
            },
        );
    }

    /// The folder `key`'s own attributes changed (with `mtime_set`, its modification
    /// time was set, and is stored: that one is shown from now on).
    pub fn attrs_changed(&self, key: &NodeKey, mtime_set: bool) {
        let now = now_ns();
        let mut folders = self.lock();
        let times = folders.entry(key.clone()).or_insert(Times {
            mtime_ns: None,
            ctime_ns: now,
        });
        times.ctime_ns = now;
        if mtime_set {
            times.mtime_ns = None;
        }
    }

    /// The folder `key` is gone.
    pub fn forget(&self, key: &NodeKey) {
        self.lock().remove(key);
    }

    /// `attr` of `key` with the times this table has for it, if it is a folder.
    pub fn apply(&self, key: &NodeKey, attr: Attr) -> Attr {
        if attr.kind != Kind::Dir {
            return attr;
        }
        let Some(times) = self.lock().get(key).copied() else {
            return attr;
        };
        let ctime = time_of(times.ctime_ns);
        Attr {
            mtime: times.mtime_ns.map_or(attr.mtime, time_of),
            ctime: ctime.max(attr.ctime),
            ..attr
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn folder_attr() -> Attr {
        let old = UNIX_EPOCH + Duration::from_secs(1_000);
        Attr {
            ino: 5,
            kind: Kind::Dir,
            size: 0,
            mtime: old,
            atime: old,
            ctime: old,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
        }
    }

    #[test]
    fn a_name_made_moves_its_folder_s_times_until_one_is_set() {
        let times = DirTimes::default();
        let folder = NodeKey::new(1, "a/b");
        assert_eq!(times.apply(&folder, folder_attr()), folder_attr());
        times.name_changed(&NodeKey::new(1, "a/b/new.txt"));
        let moved = times.apply(&folder, folder_attr());
        assert!(moved.mtime > folder_attr().mtime && moved.ctime >= moved.mtime);
        // `touch -d` of the folder: the time set (stored, in `attr`) is shown.
        times.attrs_changed(&folder, true);
        let set = times.apply(&folder, folder_attr());
        assert_eq!(set.mtime, folder_attr().mtime);
        assert!(set.ctime > folder_attr().ctime);
        // Only folders, and only the folder of the name.
        let file = Attr {
            kind: Kind::File,
            ..folder_attr()
        };
        times.name_changed(&NodeKey::new(1, "a/b/x"));
        assert_eq!(times.apply(&folder, file), file);
        assert_eq!(
            times.apply(&NodeKey::new(1, "a"), folder_attr()),
            folder_attr()
        );
        times.forget(&folder);
        assert_eq!(times.apply(&folder, folder_attr()), folder_attr());
    }
}
