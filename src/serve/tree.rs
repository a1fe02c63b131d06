//! The filesystem core seen by path: what the web page and WebDAV name files with.
//!
//! The fs core ([`crate::fs::Fs`]) speaks the kernel's language: inode numbers, a
//! lookup count per number, file handles. The HTTP side names things by path
//! (`/channel/folder/file`), so this module walks a path one `lookup` at a time and
//! holds the number it ends on the way the kernel would: one lookup counted, given
//! back (`forget`) when the [`Held`] guard goes, and held for as long as a file opened
//! through it is open. Everything the mount guarantees therefore holds here too: a
//! reader keeps the version it opened, a file written is spooled on local disk and
//! uploaded after its close (write-back), and a rename carries open files along.
//!
//! Uploads never leave a half-written file under the real name: [`Tree::create`]
//! writes under a hidden temporary name in the same folder and [`Upload::finish`]
//! renames it over the target (as an editor saves), while [`Upload::abort`] (or
//! dropping an unfinished upload) unlinks it. A rename of a file still being written
//! moves its spool session, so the temporary name never reaches the store.

use std::sync::Arc;
use std::time::SystemTime;

use crate::fs::inode::ROOT;
use crate::fs::{Attr, Found, Fs, FsError, Kind, OpenFlags, SetAttr};
use crate::volume::XattrChange;

/// Bytes a download asks the fs core for at a time.
pub const READ_PIECE: u32 = 1 << 20;
/// What a temporary upload's name starts with. Listings through `serve` hide it.
pub const UPLOAD_PREFIX: &str = ".dcloud-upload-";
/// Mode of files and folders made through `serve`.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// A path in the tree: no names is the root (the channels), the first name is a
/// channel, the rest a path inside it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TreePath {
    names: Vec<String>,
}

impl TreePath {
    /// Parses `a/b/c` (leading, trailing and doubled slashes are ignored). `.` and `..`
    /// are refused rather than resolved, so a path can't climb out of where it points.
    pub fn parse(text: &str) -> Result<TreePath, FsError> {
        let mut names = Vec::new();
        for name in text.split('/').filter(|name| !name.is_empty()) {
            if name == "." || name == ".." || name.contains('\0') {
                return Err(FsError::InvalidName(format!("'{name}' in a path")));
            }
            names.push(name.to_string());
        }
        Ok(TreePath { names })
    }

    pub fn root() -> TreePath {
        TreePath::default()
    }

    pub fn is_root(&self) -> bool {
        self.names.is_empty()
    }

    /// The names, the channel first.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The last name, if any.
    pub fn name(&self) -> Option<&str> {
        self.names.last().map(String::as_str)
    }

    /// The folder holding this path and the last name; `None` for the root.
    pub fn split(&self) -> Option<(TreePath, &str)> {
        let (name, parent) = self.names.split_last()?;
        Some((
            TreePath {
                names: parent.to_vec(),
            },
            name,
        ))
    }

    /// This path with `name` added.
    pub fn join(&self, name: &str) -> TreePath {
        let mut names = self.names.clone();
        names.push(name.to_string());
        TreePath { names }
    }

    /// `channel/path`, as the CLI names it (`""` for the root).
    pub fn display(&self) -> String {
        self.names.join("/")
    }
}

/// One number held as the kernel holds one: a lookup counted, forgotten on drop.
pub struct Held {
    fs: Arc<Fs>,
    pub attr: Attr,
}

impl Held {
    fn counted(fs: &Arc<Fs>, attr: Attr) -> Held {
        Held {
            fs: fs.clone(),
            attr,
        }
    }

    pub fn ino(&self) -> u64 {
        self.attr.ino
    }

    pub fn is_dir(&self) -> bool {
        self.attr.kind == Kind::Dir
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.attr.ino != ROOT {
            self.fs.forget(self.attr.ino, 1);
        }
    }
}

/// One name in a folder's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    pub mtime: SystemTime,
}

/// The fs core by path. Cheap to clone.
#[derive(Clone)]
pub struct Tree {
    fs: Arc<Fs>,
}

impl Tree {
    pub fn new(fs: Arc<Fs>) -> Tree {
        Tree { fs }
    }

    pub fn fs(&self) -> &Arc<Fs> {
        &self.fs
    }

    /// The root's attributes, held (the root needs no count).
    async fn root(&self) -> Result<Held, FsError> {
        let attr = self.fs.getattr(ROOT).await?;
        Ok(Held::counted(&self.fs, attr))
    }

    /// What `path` names, held.
    pub async fn stat(&self, path: &TreePath) -> Result<Held, FsError> {
        let mut held = self.root().await?;
        for name in path.names() {
            if !held.is_dir() {
                return Err(FsError::NotADirectory);
            }
            let attr = self.fs.lookup(held.ino(), name).await?;
            held = Held::counted(&self.fs, attr);
        }
        Ok(held)
    }

    /// The folder `path` names, held; [`FsError::NotADirectory`] for a file.
    async fn folder(&self, path: &TreePath) -> Result<Held, FsError> {
        let held = self.stat(path).await?;
        if !held.is_dir() {
            return Err(FsError::NotADirectory);
        }
        Ok(held)
    }

    /// The names in folder `path` with their sizes and times, sorted by name; the
    /// temporary names of uploads in progress left out.
    pub async fn list(&self, path: &TreePath) -> Result<Vec<Entry>, FsError> {
        let folder = self.folder(path).await?;
        let items = self.fs.readdir(folder.ino()).await?;
        let items: Vec<_> = items
            .into_iter()
            .filter(|item| !item.name.starts_with(UPLOAD_PREFIX))
            .collect();
        let names: Vec<(&str, u64)> = items
            .iter()
            .map(|item| (item.name.as_str(), item.ino))
            .collect();
        let attrs = self.fs.attrs_in(folder.ino(), &names).await;
        let mut entries: Vec<Entry> = items
            .iter()
            .zip(attrs)
            .filter_map(|(item, attr)| {
                let attr = attr?;
                Some(Entry {
                    name: item.name.clone(),
                    is_dir: attr.kind == Kind::Dir,
                    size: attr.size,
                    mtime: attr.mtime,
                })
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Files and folders anywhere under `path` whose name contains `needle` (case
    /// folded), with their paths relative to `path`, at most `limit`.
    pub async fn search(
        &self,
        path: &TreePath,
        needle: &str,
        limit: usize,
    ) -> Result<Vec<Found>, FsError> {
        let folder = self.folder(path).await?;
        let mut found = self.fs.search(folder.ino(), needle, limit).await?;
        found.retain(|item| {
            !item
                .path
                .rsplit('/')
                .next()
                .is_some_and(|name| name.starts_with(UPLOAD_PREFIX))
        });
        Ok(found)
    }

    /// Opens the file `path` for reading: the version there now, kept for as long
    /// as the reader lives.
    pub async fn open(&self, path: &TreePath) -> Result<Reader, FsError> {
        self.open_held(self.stat(path).await?).await
    }

    /// Opens the file `held` names (from [`Tree::stat`]) for reading.
    pub async fn open_held(&self, held: Held) -> Result<Reader, FsError> {
        if held.is_dir() {
            return Err(FsError::IsADirectory);
        }
        let opened = self
            .fs
            .open(
                held.ino(),
                OpenFlags {
                    write: false,
                    truncate: false,
                },
            )
            .await?;
        // The size of the version opened: a file replaced between the lookup and the
        // open is read (and sized) as the handle sees it.
        let attr = self.fs.getattr_of(held.ino(), Some(opened.fh)).await?;
        Ok(Reader {
            fs: self.fs.clone(),
            fh: opened.fh,
            attr,
            _held: held,
        })
    }

    /// Starts an upload to `path`, creating the folders on the way; it shows under
    /// its name once [`Upload::finish`]ed. With `replace` false an existing file is
    /// [`FsError::Exists`].
    pub async fn create(&self, path: &TreePath, replace: bool) -> Result<Upload, FsError> {
        let (parent, name) = path
            .split()
            .ok_or_else(|| FsError::NotPermitted("the root holds only channels".into()))?;
        if parent.is_root() {
            return Err(FsError::NotPermitted(
                "files live in channels: the root holds only channel folders".into(),
            ));
        }
        let folder = self.make_folders(&parent).await?;
        match self.fs.lookup(folder.ino(), name).await {
            Ok(attr) => {
                let existing = Held::counted(&self.fs, attr);
                if existing.is_dir() {
                    return Err(FsError::IsADirectory);
                }
                if !replace {
                    return Err(FsError::Exists);
                }
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let temporary = format!("{UPLOAD_PREFIX}{}", random_suffix());
        let (attr, opened) = self
            .fs
            .create(folder.ino(), &temporary, FILE_MODE, true)
            .await?;
        // `status` shows it by the name it will have, not the temporary one.
        self.fs.show_as(opened.fh, path.names()[1..].join("/"));
        Ok(Upload {
            fs: self.fs.clone(),
            fh: Some(opened.fh),
            file: Some(Held::counted(&self.fs, attr)),
            folder,
            temporary,
            name: name.to_string(),
            replace,
            written: 0,
        })
    }

    /// Makes folder `path` and any missing folders above it (`mkdir -p`); a channel
    /// that is missing is created too. Returns the folder, held.
    pub async fn make_folders(&self, path: &TreePath) -> Result<Held, FsError> {
        let mut held = self.root().await?;
        for name in path.names() {
            if !held.is_dir() {
                return Err(FsError::NotADirectory);
            }
            let attr = match self.fs.lookup(held.ino(), name).await {
                Ok(attr) => attr,
                Err(FsError::NotFound) => match self.fs.mkdir(held.ino(), name, DIR_MODE).await {
                    Ok(attr) => attr,
                    // Made by someone else in the meantime.
                    Err(FsError::Exists) => self.fs.lookup(held.ino(), name).await?,
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            };
            held = Held::counted(&self.fs, attr);
        }
        if !held.is_dir() {
            return Err(FsError::NotADirectory);
        }
        Ok(held)
    }

    /// Makes the one folder `path` (its parent must exist): [`FsError::Exists`] if
    /// the name is taken. At the root, a new channel.
    pub async fn mkdir(&self, path: &TreePath) -> Result<(), FsError> {
        let (parent, name) = path.split().ok_or(FsError::Exists)?;
        let folder = self.folder(&parent).await?;
        let attr = self.fs.mkdir(folder.ino(), name, DIR_MODE).await?;
        drop(Held::counted(&self.fs, attr));
        Ok(())
    }

    /// Deletes the file or empty folder `path`; with `recursive`, a folder with
    /// everything in it.
    pub async fn remove(&self, path: &TreePath, recursive: bool) -> Result<(), FsError> {
        let (parent, name) = path
            .split()
            .ok_or_else(|| FsError::NotPermitted("the root can't be deleted".into()))?;
        let target = self.stat(path).await?;
        if target.is_dir() && recursive && !parent.is_root() {
            self.empty_folder(path).await?;
        }
        let folder = self.folder(&parent).await?;
        if !target.is_dir() {
            return self.fs.unlink(folder.ino(), name).await;
        }
        match self.fs.rmdir(folder.ino(), name).await {
            // A folder only implied by the paths under it is gone with them.
            Err(FsError::NotFound) if recursive => Ok(()),
            other => other,
        }
    }

    /// Deletes everything in folder `path`, deepest first.
    async fn empty_folder(&self, path: &TreePath) -> Result<(), FsError> {
        let mut pending = vec![(path.clone(), false)];
        while let Some((folder, emptied)) = pending.pop() {
            if emptied {
                if folder != *path {
                    let (parent, name) = folder.split().expect("below the channel");
                    let held = self.folder(&parent).await?;
                    match self.fs.rmdir(held.ino(), name).await {
                        // Implied by the files just deleted: gone with them.
                        Ok(()) | Err(FsError::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            pending.push((folder.clone(), true));
            let held = self.folder(&folder).await?;
            for item in self.fs.readdir(held.ino()).await? {
                if item.kind == Kind::Dir {
                    pending.push((folder.join(&item.name), false));
                } else {
                    self.fs.unlink(held.ino(), &item.name).await?;
                }
            }
        }
        Ok(())
    }

    /// Renames or moves `from` to `to` (also into another channel); with `replace`
    /// false an existing `to` is [`FsError::Exists`].
    pub async fn rename(
        &self,
        from: &TreePath,
        to: &TreePath,
        replace: bool,
    ) -> Result<(), FsError> {
        let (from_parent, from_name) = from
            .split()
            .ok_or_else(|| FsError::NotPermitted("the root can't be moved".into()))?;
        let (to_parent, to_name) = to
            .split()
            .ok_or_else(|| FsError::NotPermitted("nothing can replace the root".into()))?;
        let source = self.folder(&from_parent).await?;
        let target = self.folder(&to_parent).await?;
        self.fs
            .rename(source.ino(), from_name, target.ino(), to_name, !replace)
            .await
    }

    /// The names of the extended attributes of `path` that start with `prefix`, in
    /// order.
    pub async fn xattr_names(&self, path: &TreePath, prefix: &str) -> Result<Vec<String>, FsError> {
        let held = self.stat(path).await?;
        let mut names = self.fs.listxattr(held.ino()).await?;
        names.retain(|name| name.starts_with(prefix));
        Ok(names)
    }

    /// The value of the extended attribute `name` of `path`.
    pub async fn xattr(&self, path: &TreePath, name: &str) -> Result<Vec<u8>, FsError> {
        let held = self.stat(path).await?;
        self.fs.getxattr(held.ino(), name).await
    }

    /// The extended attributes of `path` whose names start with `prefix`, with their
    /// values, in name order.
    pub async fn xattrs(
        &self,
        path: &TreePath,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, FsError> {
        let mut found = Vec::new();
        for name in self.xattr_names(path, prefix).await? {
            match self.xattr(path, &name).await {
                Ok(value) => found.push((name, value)),
                Err(FsError::NoAttribute) => {} // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// Changes extended attributes of `path`: all of `changes` in one record, or none
    /// ([`Fs::change_xattrs`]).
    pub async fn change_xattrs(
        &self,
        path: &TreePath,
        changes: Vec<XattrChange>,
    ) -> Result<(), FsError> {
        let held = self.stat(path).await?;
        self.fs.change_xattrs(held.ino(), changes).await
    }

    /// Sets the modification time of `path`.
    pub async fn set_mtime(&self, path: &TreePath, mtime: SystemTime) -> Result<(), FsError> {
        let held = self.stat(path).await?;
        self.fs
            .setattr(
                held.ino(),
                None,
                SetAttr {
                    mtime: Some(mtime),
                    ..SetAttr::default()
                },
            )
            .await
            .map(|_| ())
    }
}

/// A file open for reading, at the version it had when opened.
pub struct Reader {
    fs: Arc<Fs>,
    fh: u64,
    attr: Attr,
    _held: Held,
}

impl Reader {
    pub fn attr(&self) -> &Attr {
        &self.attr
    }

    pub fn size(&self) -> u64 {
        self.attr.size
    }

    /// Says that the reads go on from `offset` to the end of the file, once, for a
    /// client that keeps the copy ([`Fs::advise_download`]).
    pub fn advise_download(&self, offset: u64) {
        self.fs.advise_download(self.fh, offset);
    }

    /// Up to `len` bytes at `offset` (fewer only at the end of the file).
    pub async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        self.fs.read(self.fh, offset, len).await
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        release_later(&self.fs, self.fh);
    }
}

/// Lets go of a handle from a destructor: `release` is async, so it runs as a task.
fn release_later(fs: &Arc<Fs>, fh: u64) {
    let fs = fs.clone();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = fs.release(fh).await;
        });
    }
}

/// A file being uploaded under a temporary name; see the module docs.
pub struct Upload {
    fs: Arc<Fs>,
    fh: Option<u64>,
    file: Option<Held>,
    folder: Held,
    temporary: String,
    name: String,
    replace: bool,
    written: u64,
}

impl Upload {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Adds `data` at the end. Waits while the spool is full.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), FsError> {
        let fh = self.fh.ok_or(FsError::BadHandle)?;
        let mut done = 0;
        while done < data.len() {
            let n = self.fs.write(fh, self.written, &data[done..]).await? as usize;
            if n == 0 {
                return Err(FsError::Io("the spool took no bytes".into()));
            }
            done += n;
            self.written += n as u64;
        }
        Ok(())
    }

    /// Sets the modification time the file will have.
    pub async fn set_mtime(&mut self, mtime: SystemTime) -> Result<(), FsError> {
        let (Some(fh), Some(file)) = (self.fh, &self.file) else {
            return Err(FsError::BadHandle);
        };
        self.fs
            .setattr(
                file.ino(),
                Some(fh),
                SetAttr {
                    mtime: Some(mtime),
                    ..SetAttr::default()
                },
            )
            .await
            .map(|_| ())
    }

    /// Closes the file and gives it its name; its upload to the store follows
    /// (write-back), or, with `wait`, is done before this returns, with its error.
    pub async fn finish(mut self, wait: bool) -> Result<(), FsError> {
        let fh = self.fh.ok_or(FsError::BadHandle)?;
        let named = self
            .fs
            .rename(
                self.folder.ino(),
                &self.temporary,
                self.folder.ino(),
                &self.name,
                !self.replace,
            )
            .await;
        if let Err(e) = named {
            self.abort_now(fh).await;
            return Err(e);
        }
        self.fh = None;
        let synced = if wait {
            self.fs.fsync(fh).await
        } else {
            Ok(())
        };
        let released = self.fs.release(fh).await;
        self.file = None;
        synced.and(released)
    }

    /// Drops the upload: nothing is stored, an earlier file of that name stays.
    pub async fn abort(mut self) {
        if let Some(fh) = self.fh.take() {
            self.abort_now(fh).await;
        }
    }

    async fn abort_now(&mut self, fh: u64) {
        self.fh = None;
        // Unlinked first, so that the release uploads nothing.
        let _ = self.fs.unlink(self.folder.ino(), &self.temporary).await;
        let _ = self.fs.release(fh).await;
        self.file = None;
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Dropped unfinished (the client went away): as `abort`, from a task.
        let Some(fh) = self.fh.take() else { return };
        let fs = self.fs.clone();
        let folder = self.folder.ino();
        let temporary = std::mem::take(&mut self.temporary);
        let file = self.file.take();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = fs.unlink(folder, &temporary).await;
                let _ = fs.release(fh).await;
                drop(file);
            });
        }
    }
}

/// 16 random hex digits for a temporary name.
fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    // A failure of the system's random source leaves zeros: names are told apart
    // by the exclusive create, which then fails, rather than overwrite anything.
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_without_climbing_out() {
        let path = TreePath::parse("/films//2024/clip.mp4").unwrap();
        assert_eq!(path.names(), ["films", "2024", "clip.mp4"]);
        assert_eq!(path.display(), "films/2024/clip.mp4");
        let (parent, name) = path.split().unwrap();
        assert_eq!(parent.display(), "films/2024");
        assert_eq!(name, "clip.mp4");
        assert!(TreePath::parse("/").unwrap().is_root());
        assert!(TreePath::parse("a/../b").is_err());
        assert!(TreePath::parse("a/./b").is_err());
        assert!(TreePath::parse("a/b\0").is_err());
        assert_eq!(TreePath::root().join("x").display(), "x");
    }
}
