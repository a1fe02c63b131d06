//! Hard links, and what a new version of a file keeps of the one it replaces: the one
//! place that decides which names a change of a file puts (format version 8; see
//! [`crate::format`], Record JSON).
//!
//! ## The rules
//!
//! 1. **A file with several names** is the live puts of one channel that name the same
//!    `node` ([`Index::names_of`]), a random id made when the file gets its second
//!    name (not the file id: a file moved to another channel and back keeps its id,
//!    and must not become a name of the file it was a name of before).
//!    [`Volume::link`] gives a file another name: one record that puts every name, the
//!    new one with them.
//! 2. **A change of the file is a change of every name.** A new version of a file, or
//!    a change of its mode, owner, times or extended attributes, is posted through
//!    [`Volume::new_version`], which puts every other name of the file in the same
//!    record with the same fields, so that readers never see the names disagree.
//! 3. **A name, not the file, goes** when it is deleted or renamed over: the others
//!    stay, and are put again (their link count and change time changed,
//!    [`Volume::remaining_names`]). A rename between two names of one file does nothing,
//!    as POSIX says.
//! 4. **A new version keeps what isn't its contents**: the owner, the access time and
//!    the extended attributes of the file it replaces, unless the writer says another
//!    owner ([`PutOptions::owner`]).
//! 5. **Links stay in their channel**: a file moved to another channel arrives there as
//!    a file of one name (the fs core answers EXDEV for a link across channels).
//!
//! The change time (`ctime_ns`) of everything a record puts or makes is the time it is
//! posted, set in one place, [`Volume::post_record`].
//!
//! [`PutOptions::owner`]: super::PutOptions::owner

use super::index::Node;
use super::{Owner, Volume, VolumeError};
use crate::format::{FileId, FileManifest, Op};

/// The most names one file may have (`EMLINK` beyond): all of them go in one record.
pub const MAX_LINKS: usize = 400;

/// What a new version of a file takes over from the entry it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Its owner, access time and extended attributes (a new upload of contents),
    /// with `Some` owner and access time set instead.
    Meta(Option<Owner>, Option<i64>),
    /// Nothing: the manifest says all of it (a change of metadata, made from the
    /// entry's own manifest).
    Nothing,
}

impl Volume {
    /// The operations that put `manifest` as the new version of the file at its path:
    /// what it keeps of the version it replaces ([`Keep`]), and, when that is one name of
    /// a file with several, the same version under every other name (rules 2 and 4).
    pub(super) fn new_version(&self, mut manifest: FileManifest, keep: Keep) -> Vec<Op> {
        let index = self.index();
        let old = index.file(&manifest.path);
        if let Keep::Meta(owner, atime_ns) = keep {
            if let Some(old) = old {
                manifest.meta = old.meta().clone();
            }
            if let Some(owner) = owner {
                manifest.meta.uid = owner.uid;
                manifest.meta.gid = owner.gid;
            }
            if atime_ns.is_some() {
                manifest.meta.atime_ns = atime_ns;
            }
        }
        let names = match old {
            Some(old) if old.node.is_some() => index.names_of(&manifest.path),
            _ => Vec::new(),
        };
        manifest.node = old.and_then(|old| old.node).filter(|_| names.len() > 1);
        // Stamped again when posted; set now so that a batch's size is judged with it.
        manifest.meta.ctime_ns = Some(super::records::now_ns());
        let others: Vec<Op> = names
            .iter()
            .filter(|name| **name != manifest.path)
            .map(|name| {
                Op::Put(FileManifest {
                    path: name.to_string(),
                    ..manifest.clone()
                })
            })
            .collect();
        std::iter::once(Op::Put(manifest)).chain(others).collect()
    }

    /// Gives the file at `from` the name `to` as well (a hard link, rule 1): one record
    /// that puts every name of the file. Fails if `from` is no file (a folder can't be
    /// linked), if `to` is taken, or if the file has [`MAX_LINKS`] names already.
    pub async fn link(&self, from: &str, to: &str) -> Result<(), VolumeError> {
        self.check_creatable(to, false)?;
        let ops = {
            let index = self.index();
            let file = match index.node(from) {
                Some(Node::File(file)) => file,
                Some(Node::Dir(_)) => {
                    return Err(VolumeError::Unsupported(format!(
                        "{} is a folder: folders can't have hard links",
                        self.display(from)
                    )));
                }
                None => {
                    drop(index);
                    return Err(self.not_found(from));
                }
            };
            let names = index.names_of(from);
            if names.len() >= MAX_LINKS {
                return Err(VolumeError::TooManyLinks {
                    name: self.display(from),
                });
            }
            let mut manifest = file.manifest(from);
            manifest.node = Some(file.node.map_or_else(FileId::random, Ok)?);
            let mut ops: Vec<Op> = names
                .iter()
                .map(|name| {
                    Op::Put(FileManifest {
                        path: name.to_string(),
                        ..manifest.clone()
                    })
                })
                .collect();
            manifest.path = to.to_string();
            ops.push(Op::Put(manifest));
            ops
        };
        self.post_record(ops, super::records::Riders::default())
            .await
            .map(|_| ())
    }

    /// The puts of the names of `path`'s file other than `path` (none for a file of one
    /// name), for a record that deletes or replaces `path` (rule 3): the file lost a
    /// link.
    pub(super) fn remaining_names(&self, path: &str) -> Vec<Op> {
        let index = self.index();
        let Some(file) = index.file(path).filter(|f| f.node.is_some()) else {
            return Vec::new();
        };
        let names = index.names_of(path);
        let still_hard = names.len() > 2;
        names
            .into_iter()
            .filter(|name| *name != path)
            .map(|name| {
                let mut manifest = file.manifest(name);
                manifest.node = file.node.filter(|_| still_hard);
                Op::Put(manifest)
            })
            .collect()
    }

    /// Whether `a` and `b` are two names of one file (a rename between them does
    /// nothing, rule 3).
    pub fn same_file(&self, a: &str, b: &str) -> bool {
        let index = self.index();
        match (index.file(a), index.file(b)) {
            (Some(x), Some(y)) => x.node.is_some() && x.node == y.node,
            _ => false,
        }
    }
}
