//! `rename(2)` with `RENAME_EXCHANGE`: two names swap what they name, atomically — one
//! record ([`crate::volume::Volume::exchange`]), so that no reader on any machine sees
//! one half of it. Both names must be in one channel (EXDEV across channels, which
//! are stored apart).
//!
//! What waits to be stored under either name (a file's write session, folders whose
//! record waits) is stored first ([`Fs::settle`]), so the record swaps what is
//! stored; a file still open for writing there then goes on being written under its
//! new name, as after a rename. A folder holding folders whose record still waits
//! can't be swapped (EBUSY, for the settle time of write-back).

use super::inode::NodeKey;
use super::{Fs, FsError};

/// The key `key` has after `a` and `b` swapped (`key` within one of them).
fn swapped(key: &NodeKey, a: &NodeKey, b: &NodeKey) -> NodeKey {
    let (from, to) = if key.is_within(a) { (a, b) } else { (b, a) };
    NodeKey::new(
        to.channel,
        format!("{}{}", to.path, &key.path[from.path.len()..]),
    )
}

impl Fs {
    /// `rename` with `RENAME_EXCHANGE` of `name` in `parent` and `new_name` in
    /// `new_parent`.
    pub async fn exchange(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
    ) -> Result<(), FsError> {
        let (a, b) = self.moved_keys(parent, name, new_parent, new_name, "exchanged")?;
        if a.channel != b.channel {
            return Err(FsError::CrossDevice);
        }
        if a == b {
            return Ok(());
        }
        if a.is_within(&b) || b.is_within(&a) {
            return Err(FsError::InvalidName(
                "a folder can't be exchanged with what it holds".into(),
            ));
        }
        self.settle(&a).await?;
        self.settle(&b).await?;
        let within: Vec<NodeKey> = {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            (sessions.keys())
                .filter(|key| key.is_within(&a) || key.is_within(&b))
                .cloned()
                .collect()
        };
        for key in within {
            self.settle(&key).await?;
        }
        if self.write_back.folders.any_under(&a) || self.write_back.folders.any_under(&b) {
            return Err(FsError::Busy);
        }
        let volume = self.volume(a.channel).await?;
        volume.exchange(&a.path, &b.path).await?;
        // Files still open for writing under either go on under their new names.
        let moving: Vec<_> = {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            (sessions.iter())
                .filter(|(key, _)| key.is_within(&a) || key.is_within(&b))
                .map(|(key, session)| (key.clone(), session.clone()))
                .collect()
        };
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            for (old, _) in &moving {
                sessions.remove(old);
            }
            for (old, session) in &moving {
                sessions.insert(swapped(old, &a, &b), session.clone());
            }
        }
        for (old, session) in moving {
            let new = swapped(&old, &a, &b);
            let base = volume.index().version_of(&new.path);
            session.moved_to(new, base);
        }
        {
            // The numbers go along: through a name no path can have.
            let aside = NodeKey::new(a.channel, "\0exchanging");
            let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            inodes.rename(&a, &aside);
            inodes.rename(&b, &a);
            inodes.rename(&aside, &b);
        }
        self.dir_times.name_changed(&a);
        self.dir_times.name_changed(&b);
        Ok(())
    }
}
