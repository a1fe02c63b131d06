//! Owners, access times, extended attributes and hard links through the mount (format
//! version 8): each change is one record ([`Volume::change_meta`], [`Volume::link`]);
//! which names of a file a change puts is the volume's rule ([`crate::volume::links`]).
//!
//! These change what is stored, so an entry that waits to be stored — a file being
//! written or waiting for its upload, a folder whose record waits — is stored first
//! ([`Fs::settle`]), and the change is made on what landed. Permission checks are the
//! kernel's (`default_permissions`): who may `chown` or set a `trusted.*` attribute is
//! decided before a request reaches the fs.
//!
//! Extended attributes are kept per entry, sealed in its record (see [`crate::format`]):
//! names of the `user.`, `trusted.`, `security.` and `system.` namespaces, values up to
//! 64 KiB (E2BIG beyond, which the kernel checks first), 128 KiB of names and values in
//! all per entry (ENOSPC beyond). Two kinds are not kept, and answer ENOTSUP to get,
//! set and remove alike, as on a file system without them ([`refuse_unkept`]):
//! - POSIX ACLs (`system.posix_acl_*`): the kernel would have to enforce them, and the
//!   mount doesn't ask it to;
//! - SELinux labels (`security.selinux`): they are the host's policy, and a host that
//!   enforces one labels a FUSE mount itself and never asks it.
//!
//! The second answer matters for speed too: GNU `ls -l` asks every file it lists for
//! both, and stops asking for the rest of a file system only once it is told ENOTSUP
//! (ENODATA, "not set", would cost two requests per name listed).
//! Symbolic links take none (`user.*` is refused on them by the kernel too).

use std::sync::Arc;
use std::time::SystemTime;

use super::inode::{NodeKey, ROOT};
use super::{Attr, Fs, FsError, Kind, check_name, ns_of};
use crate::volume::{MetaChange, Node, Volume, VolumeError, XattrChange, XattrRefused};

/// Changes of the owner and the access time that `setattr` asks for (with the mode
/// and modification time, which [`Fs::setattr`] handles itself otherwise).
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnerChange {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SystemTime>,
}

impl OwnerChange {
    pub fn is_empty(&self) -> bool {
        self.uid.is_none() && self.gid.is_none() && self.atime.is_none()
    }
}

/// How an extended attribute's value is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetXattr {
    /// Set it, whether it exists or not.
    Always,
    /// Only if it doesn't exist (`XATTR_CREATE`).
    Create,
    /// Only if it exists (`XATTR_REPLACE`).
    Replace,
}

impl Fs {
    /// Stores what waits to be stored at `key` now: a file's write session (uploaded as
    /// `fsync` would) or a folder whose record waits.
    pub(super) async fn settle(&self, key: &NodeKey) -> Result<(), FsError> {
        if let Some(session) = self.session(key) {
            self.synced(&session).await?;
            self.retire_session(&session, true);
        }
        if let Some((mtime_ns, mode)) = self.write_back.folders.attrs(key) {
            let volume = self.volume(key.channel).await?;
            self.write_back.folders.remove(key).await;
            let stored = volume.index().node(&key.path).map(|node| match node {
                Node::Dir(Some(_)) | Node::File(_) => true,
                Node::Dir(None) => false,
            });
            match stored {
                None => volume.mkdir(&key.path, mtime_ns, mode).await?,
                // Implied by what landed under it meanwhile: its own record now.
                Some(false) => {
                    volume
                        .set_meta(&key.path, Some(mtime_ns), Some(mode))
                        .await?
                }
                Some(true) => {}
            }
        }
        Ok(())
    }

    /// The stored entry `ino` names, settled first, with its channel's volume.
    async fn settled(&self, ino: u64) -> Result<(NodeKey, Arc<Volume>), FsError> {
        if ino == ROOT {
            return Err(FsError::NotPermitted("the root can't be changed".into()));
        }
        let key = self.key_of(ino)?;
        if key.path.is_empty() {
            return Err(FsError::NotPermitted(
                "a channel folder has no owner or attributes of its own".into(),
            ));
        }
        self.settle(&key).await?;
        let volume = self.volume(key.channel).await?;
        Ok((key, volume))
    }

    /// `setattr` of the owner or the access time (with the mode and modification time
    /// asked for in the same call). A file being written keeps them for its upload, as
    /// it keeps the mode ([`Fs::setattr`]); anything else is changed by one record.
    pub async fn set_owner_and_times(
        &self,
        ino: u64,
        owner: OwnerChange,
        mtime: Option<SystemTime>,
        mode: Option<u32>,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        if ino == ROOT {
            return Err(FsError::NotPermitted("the root can't be changed".into()));
        }
        let key = self.key_of(ino)?;
        let current = self.getattr(ino).await?;
        let new_owner = (owner.uid.is_some() || owner.gid.is_some()).then(|| {
            self.owner_of(
                owner.uid.unwrap_or(current.uid),
                owner.gid.unwrap_or(current.gid),
            )
        });
        let (mtime_ns, atime_ns) = (mtime.map(ns_of), owner.atime.map(ns_of));
        if let Some(session) = self.session(&key) {
            session.set_attrs(mtime_ns, mode, new_owner, atime_ns);
            if session.opens() == 0 {
                // Waiting for its upload (or being uploaded): goes up as a close's would.
                self.closed(&session).await?;
            }
            return self.attr_of(&key).await;
        }
        if key.path.is_empty() {
            return Err(FsError::NotPermitted(
                "a channel folder has no owner of its own".into(),
            ));
        }
        self.settle(&key).await?;
        let volume = self.volume(key.channel).await?;
        let change = MetaChange {
            mtime_ns,
            atime_ns,
            mode,
            owner: new_owner,
            xattrs: Vec::new(),
        };
        volume.change_meta(&key.path, &change).await?;
        self.dir_times.attrs_changed(&key, mtime_ns.is_some());
        self.attr_of(&key).await
    }

    /// `getxattr`: the value of `name` on `ino`.
    pub async fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        refuse_unkept(name)?;
        let key = self.key_of(ino)?;
        let volume = self.volume(key.channel).await?;
        xattr_of(&volume, &key, name)
    }

    /// [`Fs::getxattr`] at once, without waiting for anything: `None` if the channel
    /// isn't open yet. `ls -l` asks two attributes of every file it lists (an SELinux
    /// label and an ACL), so these are answered on the FUSE thread itself.
    pub fn getxattr_now(&self, ino: u64, name: &str) -> Option<Result<Vec<u8>, FsError>> {
        if let Err(e) = refuse_unkept(name) {
            return Some(Err(e));
        }
        let key = match self.key_of(ino) {
            Ok(key) => key,
            Err(e) => return Some(Err(e)),
        };
        let volume = self.volumes.already_open(key.channel)?;
        Some(xattr_of(&volume, &key, name))
    }

    /// `listxattr`: the names of the extended attributes of `ino`, in order.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<String>, FsError> {
        let key = self.key_of(ino)?;
        if key.path.is_empty() {
            return Ok(Vec::new());
        }
        let volume = self.volume(key.channel).await?;
        Ok(xattr_names(&volume, &key))
    }

    /// [`Fs::listxattr`] at once (see [`Fs::getxattr_now`]).
    pub fn listxattr_now(&self, ino: u64) -> Option<Result<Vec<String>, FsError>> {
        let key = match self.key_of(ino) {
            Ok(key) => key,
            Err(e) => return Some(Err(e)),
        };
        if key.path.is_empty() {
            return Some(Ok(Vec::new()));
        }
        let volume = self.volumes.already_open(key.channel)?;
        Some(Ok(xattr_names(&volume, &key)))
    }

    /// `setxattr`: sets `name` on `ino` to `value`, as `how` says.
    pub async fn setxattr(
        &self,
        ino: u64,
        name: &str,
        value: &[u8],
        how: SetXattr,
    ) -> Result<(), FsError> {
        let change = XattrChange::Set {
            name: name.to_string(),
            value: value.to_vec(),
            only: match how {
                SetXattr::Always => None,
                SetXattr::Create => Some(false),
                SetXattr::Replace => Some(true),
            },
        };
        self.change_xattrs(ino, vec![change]).await
    }

    /// `removexattr`: removes `name` from `ino`.
    pub async fn removexattr(&self, ino: u64, name: &str) -> Result<(), FsError> {
        self.change_xattrs(ino, vec![XattrChange::Remove(name.to_string())])
            .await
    }

    /// Makes `changes` to the extended attributes of `ino` in order, in one record:
    /// all of them, or none if one is refused (what WebDAV's PROPPATCH needs). No
    /// changes, no record.
    pub async fn change_xattrs(&self, ino: u64, changes: Vec<XattrChange>) -> Result<(), FsError> {
        self.writable()?;
        for change in &changes {
            let name = change.name();
            refuse_unkept(name)?;
            if matches!(change, XattrChange::Set { .. })
                && crate::format::xattr_name_problem(name).is_some()
            {
                return Err(FsError::Unsupported(format!(
                    "extended attribute '{name}': not of the user, trusted or security namespace"
                )));
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let (key, volume) = self.settled(ino).await?;
        let change = MetaChange {
            xattrs: changes,
            ..MetaChange::default()
        };
        self.dir_times.attrs_changed(&key, false);
        match volume.change_meta(&key.path, &change).await {
            Err(VolumeError::Xattr { why, .. }) => Err(match why {
                XattrRefused::Exists => FsError::Exists,
                XattrRefused::Missing => FsError::NoAttribute,
                XattrRefused::Invalid => FsError::TooLarge,
                XattrRefused::Full => FsError::NoSpace,
            }),
            // The record would be larger than the store takes in one message.
            Err(VolumeError::ManifestTooLarge { .. }) => Err(FsError::NoSpace),
            other => other.map_err(FsError::from),
        }
    }

    /// `link`: gives the file `ino` the name `new_name` in `new_parent` too (a hard
    /// link, in the same channel: EXDEV across channels; EPERM for a folder).
    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &str) -> Result<Attr, FsError> {
        self.writable()?;
        check_name(new_name)?;
        if ino == ROOT || new_parent == ROOT {
            return Err(FsError::NotPermitted("the root holds only channels".into()));
        }
        let from = self.key_of(ino)?;
        let to = self.key_of(new_parent)?.child(new_name);
        if to.channel != from.channel {
            return Err(FsError::CrossDevice);
        }
        let volume = self.volume(from.channel).await?;
        crate::format::validate_path(&to.path).map_err(|e| FsError::InvalidName(e.to_string()))?;
        let is_folder = from.path.is_empty()
            || matches!(volume.index().node(&from.path), Some(Node::Dir(_)))
            || self.write_back.folders.attrs(&from).is_some();
        if is_folder {
            return Err(FsError::NotPermitted(
                "folders can't have hard links".into(),
            ));
        }
        if volume.index().node(&to.path).is_some() || self.pending_at(&to) {
            return Err(FsError::Exists);
        }
        self.settle(&from).await?;
        volume.link(&from.path, &to.path).await?;
        self.dir_times.name_changed(&to);
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .alias(&to, ino);
        let attr = self.attr_of(&to).await?;
        debug_assert!(attr.kind != Kind::Dir);
        Ok(self.count_lookup(attr))
    }
}

/// The value of `name` on the entry at `key`, as stored.
fn xattr_of(volume: &Volume, key: &NodeKey, name: &str) -> Result<Vec<u8>, FsError> {
    let index = volume.index();
    let value = match index.node(&key.path) {
        Some(Node::File(file)) => file.meta().xattrs.get(name).cloned(),
        Some(Node::Dir(Some(dir))) => dir.meta().xattrs.get(name).cloned(),
        _ => None,
    };
    value.map(|v| v.0).ok_or(FsError::NoAttribute)
}

/// The names of the attributes of the entry at `key`, in order.
fn xattr_names(volume: &Volume, key: &NodeKey) -> Vec<String> {
    let index = volume.index();
    match index.node(&key.path) {
        Some(Node::File(file)) => kept_names(file.meta()),
        Some(Node::Dir(Some(dir))) => kept_names(dir.meta()),
        _ => Vec::new(),
    }
}

/// The names in `meta` that the mount serves (what another program stored there may
/// hold more: see [`refuse_unkept`]).
fn kept_names(meta: &crate::format::Meta) -> Vec<String> {
    (meta.xattrs.keys())
        .filter(|name| refuse_unkept(name).is_ok())
        .cloned()
        .collect()
}

/// POSIX ACLs and SELinux labels are not kept (see the module docs): ENOTSUP.
fn refuse_unkept(name: &str) -> Result<(), FsError> {
    let what = if name.starts_with("system.") {
        "POSIX ACLs are"
    } else if name == "security.selinux" {
        "SELinux labels are"
    } else {
        return Ok(());
    };
    Err(FsError::Unsupported(format!(
        "{name}: {what} not kept on dcloud-fs"
    )))
}
