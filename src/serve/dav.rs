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
//! - PROPPATCH: dead properties are not stored (501): records have no place for them
//!   yet.

use std::io::SeekFrom;
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, FsError as DavError, FsFuture, FsStream,
    OpenOptions, ReadDirMeta,
};
use futures::FutureExt;

use super::tree::{Reader, Tree, TreePath, Upload};
use crate::fs::FsError;

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
    upload.finish(false).await
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
