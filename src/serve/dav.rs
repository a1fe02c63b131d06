//! WebDAV at `/dav/`: dav-server's protocol handling over a file-system adapter onto
//! [`Tree`], so that Finder, Windows Explorer, GNOME Files, davfs2 and rclone see the
//! same volume the mount and the page do.
//!
//! What maps to what:
//!
//! - PROPFIND, GET (with Range), HEAD: [`Tree::stat`], [`Tree::list`], [`Tree::open`];
//! - PUT: [`Tree::create`], written as it arrives and named only once the whole body
//!   is in (a PUT cut short, or shorter than its `Content-Length`, stores nothing and
//!   leaves an earlier file of that name as it was); a PUT of a part of a file
//!   (`Content-Range`, SabreDAV's PATCH) is not supported (501);
//! - MKCOL, DELETE, MOVE: [`Tree::mkdir`], [`Tree::remove`], [`Tree::rename`] (a MOVE
//!   to another channel is a move of records; nothing is uploaded again);
//! - COPY: the bytes are read and written again (a copy is a new file with its own
//!   chunks: files never share chunks, which keeps deleting one simple);
//! - LOCK, UNLOCK: dav-server's in-memory lock table (locks last until the server
//!   stops, and bind only WebDAV clients, not the mount or the page); a LOCK of a
//!   name that doesn't exist makes it an empty file, as RFC 4918 says;
//! - PROPPATCH, and the dead properties PROPFIND shows: extended attributes of the
//!   entry, named [`DEAD_PROP_PREFIX`] and the property's name in Clark notation
//!   (`user.webdav.{namespace}name`), holding the property's XML as the client sent
//!   it. So they are sealed in the entry's record like any attribute, follow a MOVE
//!   (a rename) and show through the mount too (`getfattr -d -m user.webdav`). A
//!   PROPPATCH is one record: all its changes land or none (RFC 4918, 9.2), a bad name
//!   or value failing it whole (403 for a name an attribute can't take, 507 for a
//!   value over 64 KiB or an entry over 128 KiB in all, 424 for the others). A COPY
//!   copies a file's dead properties (one more record). The channels and the root
//!   hold none: PROPPATCH answers 403 there.

use std::io::SeekFrom;
use std::time::SystemTime;

use axum::http::StatusCode;
use bytes::{Buf, Bytes};
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, DavProp, FsError as DavError, FsFuture,
    FsStream, OpenOptions, ReadDirMeta,
};
use futures::FutureExt;

use super::tree::{Reader, Tree, TreePath, Upload};
use crate::format::{MAX_XATTR_VALUE_BYTES, xattr_name_problem};
use crate::fs::FsError;
use crate::volume::XattrChange;

/// What the extended attribute of a dead property is named: this, then the
/// property's name in Clark notation (`{namespace}name`, or `name` without one).
pub const DEAD_PROP_PREFIX: &str = "user.webdav.";

/// Bytes gathered before they go to the spool.
const WRITE_PIECE: usize = 1 << 20;

/// The adapter: a [`Tree`] as dav-server's file system.
#[derive(Clone)]
pub struct DavFs {
    tree: Tree,
}

impl DavFs {
    pub fn new(tree: Tree) -> DavFs {
        DavFs { tree }
    }
}

/// The WebDAV status for an fs error.
fn dav_error(e: FsError) -> DavError {
    match e {
        FsError::NotFound => DavError::NotFound,
        FsError::Exists => DavError::Exists,
        FsError::Unsupported(_) => DavError::NotImplemented,
        FsError::NotADirectory
        | FsError::IsADirectory
        | FsError::NotEmpty
        | FsError::ReadOnly
        | FsError::NotPermitted(_)
        | FsError::InvalidName(_)
        | FsError::NameTooLong(_)
        | FsError::TooManyLinks
        | FsError::CrossDevice => DavError::Forbidden,
        FsError::NoAttribute => DavError::NotFound,
        FsError::TooLarge | FsError::NoSpace => DavError::InsufficientStorage,
        FsError::BadHandle | FsError::Io(_) | FsError::Busy => {
            log::warn!("webdav: {e}");
            DavError::GeneralFailure
        }
    }
}

fn tree_path(path: &DavPath) -> Result<TreePath, DavError> {
    let text = std::str::from_utf8(path.as_bytes()).map_err(|_| DavError::Forbidden)?;
    TreePath::parse(text).map_err(|_| DavError::Forbidden)
}

/// What PROPFIND shows of a file or folder.
#[derive(Debug, Clone)]
struct Meta {
    size: u64,
    mtime: SystemTime,
    is_dir: bool,
}

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.size
    }
    fn modified(&self) -> Result<SystemTime, DavError> {
        Ok(self.mtime)
    }
    fn is_dir(&self) -> bool {
        self.is_dir
    }
}

struct Item {
    name: String,
    meta: Meta,
}

impl DavDirEntry for Item {
    fn name(&self) -> Vec<u8> {
        self.name.clone().into_bytes()
    }
    fn metadata(&self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        async move { Ok(meta) }.boxed()
    }
    fn is_dir(&self) -> FsFuture<'_, bool> {
        let is_dir = self.meta.is_dir;
        async move { Ok(is_dir) }.boxed()
    }
}

impl DavFs {
    /// Makes `path` an empty file at once (nothing will be written through what
    /// this returns: a LOCK of an unmapped URL opens and drops it).
    async fn new_empty(&self, path: &TreePath) -> Result<Box<dyn DavFile>, DavError> {
        let upload = self.tree.create(path, false).await.map_err(dav_error)?;
        upload.finish(false).await.map_err(dav_error)?;
        let reader = self.tree.open(path).await.map_err(dav_error)?;
        Ok(Box::new(DavReader { reader, at: 0 }))
    }
}

impl DavFileSystem for DavFs {
    fn open<'a>(
        &'a self,
        path: &'a DavPath,
        options: OpenOptions,
    ) -> FsFuture<'a, Box<dyn DavFile>> {
        async move {
            let path = tree_path(path)?;
            if !options.write {
                let reader = self.tree.open(&path).await.map_err(dav_error)?;
                return Ok(Box::new(DavReader { reader, at: 0 }) as Box<dyn DavFile>);
            }
            if !options.truncate || options.append {
                // Writing into an existing file in place (a partial PUT) isn't
                // supported; a file that doesn't exist yet starts empty either way
                // (a LOCK of an unmapped URL makes one).
                match self.tree.stat(&path).await {
                    Err(FsError::NotFound) if options.create => {
                        return self.new_empty(&path).await;
                    }
                    Err(e) => return Err(dav_error(e)),
                    Ok(_) => return Err(DavError::NotImplemented),
                }
            }
            if !options.create {
                // Only an existing file may be replaced.
                self.tree.stat(&path).await.map_err(dav_error)?;
            }
            let upload = self
                .tree
                .create(&path, !options.create_new)
                .await
                .map_err(dav_error)?;
            Ok(Box::new(DavUpload {
                upload: Some(upload),
                pending: Vec::with_capacity(WRITE_PIECE),
                expected: options.size,
                written: 0,
            }) as Box<dyn DavFile>)
        }
        .boxed()
    }

    fn read_dir<'a>(
        &'a self,
        path: &'a DavPath,
        _meta: ReadDirMeta,
    ) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        async move {
            let path = tree_path(path)?;
            let entries = self.tree.list(&path).await.map_err(dav_error)?;
            let items = entries.into_iter().map(|entry| {
                Ok(Box::new(Item {
                    name: entry.name,
                    meta: Meta {
                        size: entry.size,
                        mtime: entry.mtime,
                        is_dir: entry.is_dir,
                    },
                }) as Box<dyn DavDirEntry>)
            });
            let stream: FsStream<Box<dyn DavDirEntry>> = Box::pin(futures::stream::iter(items));
            Ok(stream)
        }
        .boxed()
    }

    fn metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        async move {
            let path = tree_path(path)?;
            let held = self.tree.stat(&path).await.map_err(dav_error)?;
            Ok(Box::new(Meta {
                size: held.attr.size,
                mtime: held.attr.mtime,
                is_dir: held.is_dir(),
            }) as Box<dyn DavMetaData>)
        }
        .boxed()
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let path = tree_path(path)?;
            // A missing parent is NotFound, which dav-server answers MKCOL with 409.
            self.tree.mkdir(&path).await.map_err(dav_error)
        }
        .boxed()
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        self.remove_file(path)
    }

    /// A file, or an empty folder: dav-server empties a folder first.
    fn remove_file<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let path = tree_path(path)?;
            self.tree.remove(&path, false).await.map_err(dav_error)
        }
        .boxed()
    }

    fn rename<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (from, to) = (tree_path(from)?, tree_path(to)?);
            self.tree.rename(&from, &to, true).await.map_err(dav_error)
        }
        .boxed()
    }

    fn copy<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (from, to) = (tree_path(from)?, tree_path(to)?);
            copy_file(&self.tree, &from, &to).await.map_err(dav_error)
        }
        .boxed()
    }

    fn set_modified<'a>(&'a self, path: &'a DavPath, tm: SystemTime) -> FsFuture<'a, ()> {
        async move {
            let path = tree_path(path)?;
            self.tree.set_mtime(&path, tm).await.map_err(dav_error)
        }
        .boxed()
    }

    fn have_props<'a>(
        &'a self,
        path: &'a DavPath,
    ) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        // Entries inside a channel; a channel folder has no record of its own.
        let inside = tree_path(path).is_ok_and(|p| p.names().len() >= 2);
        Box::pin(std::future::ready(inside))
    }

    fn patch_props<'a>(
        &'a self,
        path: &'a DavPath,
        patch: Vec<(bool, DavProp)>,
    ) -> FsFuture<'a, Vec<(StatusCode, DavProp)>> {
        async move {
            let path = tree_path(path)?;
            let present = self.dead_prop_names(&path).await?;
            let changes = match dead_prop_changes(&patch, present) {
                Ok(changes) => changes,
                Err((at, status)) => return Ok(failed_patch(patch, Some(at), status)),
            };
            match self.tree.change_xattrs(&path, changes).await {
                Ok(()) => Ok(patch
                    .into_iter()
                    .map(|(_, prop)| (StatusCode::OK, without_value(prop)))
                    .collect()),
                Err(FsError::NoSpace | FsError::TooLarge) => {
                    Ok(failed_patch(patch, None, StatusCode::INSUFFICIENT_STORAGE))
                }
                Err(FsError::ReadOnly | FsError::NotPermitted(_) | FsError::Unsupported(_)) => {
                    Ok(failed_patch(patch, None, StatusCode::FORBIDDEN))
                }
                Err(e) => Err(dav_error(e)),
            }
        }
        .boxed()
    }

    fn get_props<'a>(&'a self, path: &'a DavPath, do_content: bool) -> FsFuture<'a, Vec<DavProp>> {
        async move {
            let path = tree_path(path)?;
            let found = self
                .tree
                .xattrs(&path, DEAD_PROP_PREFIX)
                .await
                .map_err(dav_error)?;
            Ok(found
                .into_iter()
                .filter_map(|(name, value)| dead_prop(&name, do_content.then_some(value)))
                .collect())
        }
        .boxed()
    }

    fn get_prop<'a>(&'a self, path: &'a DavPath, prop: DavProp) -> FsFuture<'a, Vec<u8>> {
        async move {
            let path = tree_path(path)?;
            let name = dead_prop_xattr(&prop);
            self.tree.xattr(&path, &name).await.map_err(dav_error)
        }
        .boxed()
    }

    fn get_quota(&self) -> FsFuture<'_, (u64, Option<u64>)> {
        async move {
            let statfs = self.tree.fs().statfs().await;
            let used = statfs
                .blocks
                .saturating_sub(statfs.bfree)
                .saturating_mul(u64::from(statfs.bsize));
            Ok((used, None))
        }
        .boxed()
    }
}

impl DavFs {
    /// The attribute names of the dead properties `path` holds.
    async fn dead_prop_names(
        &self,
        path: &TreePath,
    ) -> Result<std::collections::HashSet<String>, DavError> {
        let names = self.tree.xattr_names(path, DEAD_PROP_PREFIX).await;
        Ok(names.map_err(dav_error)?.into_iter().collect())
    }
}

/// The attribute that holds `prop`.
fn dead_prop_xattr(prop: &DavProp) -> String {
    match prop.namespace.as_deref() {
        Some(namespace) if !namespace.is_empty() => {
            format!("{DEAD_PROP_PREFIX}{{{namespace}}}{}", prop.name)
        }
        _ => format!("{DEAD_PROP_PREFIX}{}", prop.name),
    }
}

/// The dead property an attribute named `xattr` holds, with its XML if given; `None`
/// for a name that isn't one ([`dead_prop_xattr`] in reverse).
fn dead_prop(xattr: &str, xml: Option<Vec<u8>>) -> Option<DavProp> {
    let clark = xattr.strip_prefix(DEAD_PROP_PREFIX)?;
    let (namespace, name) = match clark.strip_prefix('{') {
        Some(rest) => {
            let (namespace, name) = rest.split_once('}')?;
            (Some(namespace.to_string()), name)
        }
        None => (None, clark),
    };
    if name.is_empty() || name.contains(['{', '}']) {
        return None;
    }
    Some(DavProp {
        name: name.to_string(),
        prefix: None,
        namespace,
        xml,
    })
}

/// The attribute changes a PROPPATCH makes, in its order, given the attributes the
/// entry holds (removing one it doesn't hold succeeds and changes nothing); or the
/// place of the first property that can't be stored, with its status.
fn dead_prop_changes(
    patch: &[(bool, DavProp)],
    mut present: std::collections::HashSet<String>,
) -> Result<Vec<XattrChange>, (usize, StatusCode)> {
    let mut changes = Vec::with_capacity(patch.len());
    for (at, (set, prop)) in patch.iter().enumerate() {
        let name = dead_prop_xattr(prop);
        if xattr_name_problem(&name).is_some() {
            return Err((at, StatusCode::FORBIDDEN));
        }
        if *set {
            let value = prop.xml.clone().unwrap_or_default();
            if value.len() > MAX_XATTR_VALUE_BYTES {
                return Err((at, StatusCode::INSUFFICIENT_STORAGE));
            }
            present.insert(name.clone());
            changes.push(XattrChange::Set {
                name,
                value,
                only: None,
            });
        } else if present.remove(&name) {
            changes.push(XattrChange::Remove(name));
        }
    }
    Ok(changes)
}

/// A PROPPATCH that changed nothing: `status` for the property at `at` (for every
/// one without it), 424 (Failed Dependency) for the others.
fn failed_patch(
    patch: Vec<(bool, DavProp)>,
    at: Option<usize>,
    status: StatusCode,
) -> Vec<(StatusCode, DavProp)> {
    (patch.into_iter().enumerate())
        .map(|(i, (_, prop))| {
            let own = at.is_none_or(|at| at == i);
            let status = if own {
                status
            } else {
                StatusCode::FAILED_DEPENDENCY
            };
            (status, without_value(prop))
        })
        .collect()
}

/// `prop` named only, as a PROPPATCH answer names it.
fn without_value(prop: DavProp) -> DavProp {
    DavProp { xml: None, ..prop }
}

/// Copies the file `from` to `to` (replacing a file there), byte for byte.
async fn copy_file(tree: &Tree, from: &TreePath, to: &TreePath) -> Result<(), FsError> {
    let reader = tree.open(from).await?;
    let mut upload = tree.create(to, true).await?;
    let mut at = 0;
    while at < reader.size() {
        let piece = reader.read(at, super::tree::READ_PIECE).await?;
        if piece.is_empty() {
            upload.abort().await;
            return Err(FsError::Io(format!("{} ended early", from.display())));
        }
        at += piece.len() as u64;
        upload.write(&piece).await?;
    }
    upload.set_mtime(reader.attr().mtime).await?;
    upload.finish(false).await?;
    // Its dead properties (RFC 4918, 9.8.2), once it is there to hold them.
    let props = tree.xattrs(from, DEAD_PROP_PREFIX).await?;
    let copies = (props.into_iter())
        .map(|(name, value)| XattrChange::Set {
            name,
            value,
            only: None,
        })
        .collect();
    tree.change_xattrs(to, copies).await
}

/// A file open for reading through WebDAV.
struct DavReader {
    reader: Reader,
    at: u64,
}

impl std::fmt::Debug for DavReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DavReader").field("at", &self.at).finish()
    }
}

impl DavFile for DavReader {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let attr = *self.reader.attr();
        async move {
            Ok(Box::new(Meta {
                size: attr.size,
                mtime: attr.mtime,
                is_dir: false,
            }) as Box<dyn DavMetaData>)
        }
        .boxed()
    }

    fn write_buf(&mut self, _buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async { Err(DavError::Forbidden) }.boxed()
    }

    fn write_bytes(&mut self, _buf: Bytes) -> FsFuture<'_, ()> {
        async { Err(DavError::Forbidden) }.boxed()
    }

    fn read_bytes(&mut self, count: usize) -> FsFuture<'_, Bytes> {
        async move {
            let count = count.min(super::tree::READ_PIECE as usize) as u32;
            let bytes = self.reader.read(self.at, count).await.map_err(dav_error)?;
            self.at += bytes.len() as u64;
            Ok(Bytes::from(bytes))
        }
        .boxed()
    }

    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move {
            let size = self.reader.size() as i128;
            let to = match pos {
                SeekFrom::Start(n) => n as i128,
                SeekFrom::End(n) => size + n as i128,
                SeekFrom::Current(n) => self.at as i128 + n as i128,
            };
            if to < 0 {
                return Err(DavError::GeneralFailure);
            }
            self.at = to as u64;
            Ok(self.at)
        }
        .boxed()
    }

    fn flush(&mut self) -> FsFuture<'_, ()> {
        async { Ok(()) }.boxed()
    }
}

/// A file being PUT: see the module docs.
struct DavUpload {
    upload: Option<Upload>,
    pending: Vec<u8>,
    /// The size the client announced (`Content-Length`).
    expected: Option<u64>,
    written: u64,
}

impl std::fmt::Debug for DavUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DavUpload")
            .field("written", &self.written)
            .finish()
    }
}

impl DavUpload {
    async fn add(&mut self, data: &[u8]) -> Result<(), DavError> {
        if self.upload.is_none() {
            return Err(DavError::GeneralFailure);
        }
        self.written += data.len() as u64;
        if self
            .expected
            .is_some_and(|expected| self.written > expected)
        {
            return Err(DavError::GeneralFailure);
        }
        self.pending.extend_from_slice(data);
        if self.pending.len() >= WRITE_PIECE {
            self.write_pending().await?;
        }
        Ok(())
    }

    async fn write_pending(&mut self) -> Result<(), DavError> {
        let Some(upload) = self.upload.as_mut() else {
            return Err(DavError::GeneralFailure);
        };
        let result = upload.write(&self.pending).await;
        self.pending.clear();
        if let Err(e) = result {
            if let Some(upload) = self.upload.take() {
                upload.abort().await;
            }
            return Err(dav_error(e));
        }
        Ok(())
    }
}

impl DavFile for DavUpload {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let size = self.written;
        async move {
            Ok(Box::new(Meta {
                size,
                mtime: SystemTime::now(),
                is_dir: false,
            }) as Box<dyn DavMetaData>)
        }
        .boxed()
    }

    fn write_buf(&mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async move {
            while buf.has_remaining() {
                let chunk = buf.chunk().to_vec();
                buf.advance(chunk.len());
                self.add(&chunk).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn write_bytes(&mut self, buf: Bytes) -> FsFuture<'_, ()> {
        async move { self.add(&buf).await }.boxed()
    }

    fn read_bytes(&mut self, _count: usize) -> FsFuture<'_, Bytes> {
        async { Err(DavError::Forbidden) }.boxed()
    }

    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        let written = self.written;
        async move {
            match pos {
                SeekFrom::Start(n) if n == written => Ok(written),
                SeekFrom::Current(0) => Ok(written),
                _ => Err(DavError::NotImplemented),
            }
        }
        .boxed()
    }

    /// The end of the body: the file gets its name (if all of it came).
    fn flush(&mut self) -> FsFuture<'_, ()> {
        async move {
            if !self.pending.is_empty() {
                self.write_pending().await?;
            }
            let Some(upload) = self.upload.take() else {
                return Err(DavError::GeneralFailure);
            };
            if self
                .expected
                .is_some_and(|expected| expected != self.written)
            {
                upload.abort().await;
                return Err(DavError::GeneralFailure);
            }
            upload.finish(false).await.map_err(dav_error)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn prop(namespace: Option<&str>, name: &str, xml: Option<&str>) -> DavProp {
        DavProp {
            name: name.into(),
            prefix: Some("Z".into()),
            namespace: namespace.map(Into::into),
            xml: xml.map(|x| x.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_dead_property_and_its_attribute_name_map_both_ways() {
        for (namespace, name, xattr) in [
            (
                Some("http://example.com/ns"),
                "color",
                "user.webdav.{http://example.com/ns}color",
            ),
            (None, "plain", "user.webdav.plain"),
            (Some(""), "plain", "user.webdav.plain"),
            (Some("urn:x"), "\u{10348}", "user.webdav.{urn:x}\u{10348}"),
        ] {
            let p = prop(namespace, name, None);
            assert_eq!(dead_prop_xattr(&p), xattr);
            let back = dead_prop(xattr, None).unwrap();
            assert_eq!(back.name, name);
            assert_eq!(
                back.namespace.as_deref(),
                namespace.filter(|n| !n.is_empty())
            );
        }
        for not_one in [
            "user.other",
            "user.webdav.",
            "user.webdav.{ns",
            "user.webdav.{ns}",
        ] {
            assert!(dead_prop(not_one, None).is_none(), "{not_one}");
        }
    }

    #[test]
    fn a_patch_is_checked_whole_before_anything_changes() {
        let ns = Some("urn:x");
        let present: HashSet<String> = ["user.webdav.{urn:x}old".to_string()].into();
        // Removing what isn't there changes nothing; set then remove removes.
        let changes = dead_prop_changes(
            &[
                (false, prop(ns, "never", None)),
                (true, prop(ns, "new", Some("<Z:new/>"))),
                (false, prop(ns, "new", None)),
                (false, prop(ns, "old", None)),
            ],
            present.clone(),
        )
        .unwrap();
        let names: Vec<String> = changes
            .iter()
            .map(|c| match c {
                XattrChange::Set { name, .. } => format!("set {name}"),
                XattrChange::Remove(name) => format!("remove {name}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "set user.webdav.{urn:x}new",
                "remove user.webdav.{urn:x}new",
                "remove user.webdav.{urn:x}old"
            ]
        );
        // A name no attribute can take, or a value over 64 KiB: that one's status.
        let long = "n".repeat(300);
        let refused = dead_prop_changes(
            &[
                (true, prop(ns, "a", Some("<Z:a/>"))),
                (true, prop(ns, &long, Some("x"))),
            ],
            present.clone(),
        );
        assert_eq!(refused.unwrap_err(), (1, StatusCode::FORBIDDEN));
        let big = "x".repeat(MAX_XATTR_VALUE_BYTES + 1);
        let refused = dead_prop_changes(&[(true, prop(ns, "a", Some(&big)))], present);
        assert_eq!(refused.unwrap_err(), (0, StatusCode::INSUFFICIENT_STORAGE));
        let answer = failed_patch(
            vec![
                (true, prop(ns, "a", Some("<Z:a/>"))),
                (true, prop(ns, "b", None)),
            ],
            Some(1),
            StatusCode::FORBIDDEN,
        );
        let statuses: Vec<StatusCode> = answer.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            statuses,
            [StatusCode::FAILED_DEPENDENCY, StatusCode::FORBIDDEN]
        );
        assert!(answer.iter().all(|(_, p)| p.xml.is_none()));
    }
}
