//! The FUSE adapter: translates the kernel's requests (through fuser 0.18) into calls
//! on the filesystem core ([`crate::fs::Fs`]) and its answers back into replies.
//!
//! It is thin on purpose, as mountpoint-s3's `S3FuseFilesystem` is over its
//! `S3Filesystem`: everything that decides what a file is lives in [`crate::fs`], which
//! tests drive without a kernel; this module only converts types.
//!
//! - **No FUSE thread waits for the network.** fuser calls each method on one of a few
//!   worker threads and lets a reply be sent from any thread, so every request that may
//!   touch the store is spawned as a task on the tokio runtime and answered from there;
//!   the worker goes straight back to reading the next request. A slow upload on close
//!   therefore never delays a `ls` or a read of another file. (A task that panics drops
//!   its reply, which fuser answers with EIO.) The one exception is a write that no
//!   upload holds up: it goes into the local spool file on the worker thread itself,
//!   which spares copying each 1 MiB request and a hand-off between threads.
//! - **Errors** are [`FsError::errno`]; names that are not UTF-8 are EINVAL (the store
//!   keeps UTF-8 paths only).
//! - **Folders** list `.` and `..` first, then the core's names; entry `i` carries the
//!   offset `i + 1`, so the kernel resumes a long listing where it stopped. A listing is
//!   taken once per `opendir` handle (at offset 0) and served from that snapshot, so a
//!   name changing mid-listing never shifts the offsets. `..` carries the root's
//!   number in every folder: the kernel resolves `..` from its own dentries, so only a
//!   program reading raw listings sees that number.
//! - **Symbolic links and special files** are stored (format version 7): `symlink`
//!   and `readlink`, and `mknod` of a FIFO, socket or device node, whose meaning the
//!   kernel gives them (a FIFO is a pipe on this machine; a FUSE mount is `nodev`, so a
//!   device isn't opened).
//! - **Owners, times, extended attributes, hard links** (format version 8):
//!   `setattr` of the owner and the access time, `link`, the four xattr calls, and
//!   `rename` with `RENAME_EXCHANGE` go to the core ([`crate::fs::meta`]); each new
//!   entry is owned by the caller the kernel names (`Request::uid`), so that
//!   `--allow-other` users own what they make. POSIX ACLs are ENOTSUP and
//!   `RENAME_WHITEOUT` EINVAL.
//! - **Only the writer's own close uploads.** The kernel sends `flush` at every close
//!   of a descriptor, including the copies a child gets at `fork` and closes at `exec`
//!   or exit; uploading then would publish a file its writer is still writing. So a
//!   `flush` from another process than the one that opened the file for writing is
//!   answered at once (its `release`, the last close, still uploads), as
//!   mountpoint-s3 does. Processes are told apart by thread group (`Tgid` in
//!   /proc/PID/status): the kernel names the calling thread, not its process.
//! - **Attributes** say `blksize` 1 MiB (coreutils sizes its reads and writes from it,
//!   and the kernel is told to pass up to 1 MiB per request), `blocks` the size in
//!   512-byte units, and the access, modification and change times the core gives
//!   (the creation time is the modification time).
//! - **Kernel settings** (at `init`): 1 MiB writes, read-ahead as large as the kernel
//!   allows, atomic `O_TRUNC` (so opening a file for overwriting doesn't fetch its old
//!   content first), `readdirplus` (an `ls -l` costs one request per screenful, not one
//!   per name) and parallel lookups in one folder.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use crate::fs::meta::{OwnerChange, SetXattr};
use crate::fs::{Attr, DirItem, Fs, FsError, Kind, OpenFlags, SetAttr};

/// `st_blksize` of every file: the size coreutils reads and writes in.
const BLKSIZE: u32 = 1024 * 1024;
/// The largest write the kernel passes in one request.
const MAX_WRITE: u32 = 1024 * 1024;
/// The read-ahead asked of the kernel (it may allow less).
const MAX_READAHEAD: u32 = 1024 * 1024;
/// Requests the kernel keeps in flight in the background (read-ahead, releases).
const MAX_BACKGROUND: u16 = 64;
/// Names whose attributes `readdirplus` looks up at once (under one take of the
/// index): big enough that the locks cost nothing per name, small enough that what
/// doesn't fit the kernel's buffer (looked up in vain) stays small.
const READDIRPLUS_BATCH: usize = 128;
// The core numbers the root as the kernel does, so inode numbers pass through as they are.
const _: () = assert!(crate::fs::inode::ROOT == INodeNo::ROOT.0);

/// How the mount behaves, as far as fuser is concerned.
#[derive(Debug, Clone, Copy, Default)]
pub struct MountSettings {
    /// Mount read-only (`ro`); the core refuses changes too.
    pub read_only: bool,
    /// Let other users than the mounting one in (`allow_other`; for a user other than
    /// root it needs `user_allow_other` in /etc/fuse.conf).
    pub allow_other: bool,
    /// Worker threads reading requests from the kernel.
    pub threads: usize,
}

/// fuser's session settings for `settings`: source and type `dcloud-fs`, permissions
/// checked by the kernel against the attributes shown, no access times.
pub fn session_config(settings: MountSettings) -> fuser::Config {
    let mut options = vec![
        MountOption::FSName("dcloud-fs".into()),
        MountOption::Subtype("dcloud-fs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    options.push(if settings.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    let mut config = fuser::Config::default();
    config.mount_options = options;
    if settings.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(settings.threads.max(1));
    config
}

/// The fuser filesystem: the core, the runtime its requests run on, and the listings
/// of open folders.
pub struct FuseFs {
    fs: Arc<Fs>,
    runtime: tokio::runtime::Handle,
    dirs: Arc<Mutex<HashMap<u64, Arc<Vec<Entry>>>>>,
    next_dir_handle: AtomicU64,
    /// The process that opened each handle open for writing.
    writers: Arc<Mutex<HashMap<u64, u32>>>,
    /// The requests being served.
    in_flight: InFlight,
}

/// Counts the requests being served, so that a stop can wait for the last ones (the
/// releases the kernel sends as it unmounts, which end write sessions and remove their
/// spool files) before the process exits and drops them.
#[derive(Clone, Default)]
pub struct InFlight {
    inner: Arc<InFlightInner>,
}

#[derive(Default)]
struct InFlightInner {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One request being served.
struct Serving(Arc<InFlightInner>);

impl Drop for Serving {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    fn enter(&self) -> Serving {
        self.inner.count.fetch_add(1, Ordering::AcqRel);
        Serving(self.inner.clone())
    }

    /// Waits until no request is being served.
    pub async fn drained(&self) {
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.inner.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One name in a folder listing, `.` and `..` included.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    ino: u64,
    kind: Kind,
}

impl FuseFs {
    /// An adapter that runs `fs`'s operations on `runtime`.
    pub fn new(fs: Arc<Fs>, runtime: tokio::runtime::Handle) -> FuseFs {
        FuseFs {
            fs,
            runtime,
            dirs: Arc::default(),
            next_dir_handle: AtomicU64::new(1),
            writers: Arc::default(),
            in_flight: InFlight::default(),
        }
    }

    /// The count of its requests being served (a handle on it that outlives the session).
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// Runs `work` on the runtime with a handle on the core.
    fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<Fs>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let serving = self.in_flight.enter();
        let work = work(self.fs.clone());
        self.runtime.spawn(async move {
            work.await;
            drop(serving);
        });
    }
}

/// The process (thread group) a thread belongs to, if /proc says.
fn process_of(thread: u32) -> Option<u32> {
    if thread == 0 {
        return None;
    }
    std::fs::read_to_string(format!("/proc/{thread}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|tgid| tgid.trim().parse().ok())
}

/// Notes that `fh` was opened for writing by the thread `pid`.
fn note_writer(writers: &Mutex<HashMap<u64, u32>>, fh: u64, pid: u32) {
    if let Some(process) = process_of(pid) {
        writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, process);
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// A name from the kernel as the core takes it.
fn name_of(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_string).ok_or(Errno::EINVAL)
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

/// An extended attribute's value or list: its size when asked with size 0, else the
/// bytes if they fit (ERANGE if not).
fn reply_sized(reply: ReplyXattr, size: u32, bytes: &[u8]) {
    if size == 0 {
        reply.size(bytes.len() as u32);
    } else if bytes.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(bytes);
    }
}

/// The kernel's view of a core attribute.
fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.mtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn time_of(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// The listing of folder `ino`: `.`, `..`, then its names.
async fn listing(fs: &Fs, ino: u64) -> Result<Vec<Entry>, FsError> {
    let items: Vec<DirItem> = fs.readdir(ino).await?;
    let mut entries = Vec::with_capacity(items.len() + 2);
    entries.push(Entry {
        name: ".".into(),
        ino,
        kind: Kind::Dir,
    });
    entries.push(Entry {
        name: "..".into(),
        ino: fs.parent_of(ino),
        kind: Kind::Dir,
    });
    entries.extend(items.into_iter().map(|item| Entry {
        name: item.name,
        ino: item.ino,
        kind: item.kind,
    }));
    Ok(entries)
}

impl FuseFs {
    /// The listing for a `readdir` at `offset` on handle `fh`: taken afresh at offset 0
    /// (or when the handle has none), else the handle's snapshot.
    async fn entries_at(
        fs: &Fs,
        dirs: &Mutex<HashMap<u64, Arc<Vec<Entry>>>>,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<Arc<Vec<Entry>>, FsError> {
        if offset > 0 {
            let dirs = dirs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entries) = dirs.get(&fh) {
                return Ok(entries.clone());
            }
        }
        let entries = Arc::new(listing(fs, ino).await?);
        dirs.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, entries.clone());
        Ok(entries)
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        let wanted = InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let supported = wanted & config.capabilities();
        if let Err(missing) = config.add_capabilities(supported) {
            log::debug!("the kernel lacks FUSE capabilities {missing:?}");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            match fs.lookup(parent.0, &name).await {
                Ok(attr) => reply.entry(&fs.ttl(), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(move |fs| async move {
            match fs.getattr_of(ino.0, fh.map(|fh| fh.0)).await {
                Ok(attr) => reply.attr(&fs.ttl(), &file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = SetAttr {
            size,
            mtime: mtime.map(time_of),
            mode: mode.map(|m| m & 0o7777),
        };
        let owner = OwnerChange {
            uid,
            gid,
            atime: atime.map(time_of),
        };
        self.spawn(move |fs| async move {
            let result = match (owner.is_empty(), size) {
                // The owner or the access time, with the mode and modification time
                // asked for at once.
                (false, None) => {
                    fs.set_owner_and_times(ino.0, owner, changes.mtime, changes.mode)
                        .await
                }
                (false, Some(_)) => match fs.setattr(ino.0, fh.map(|fh| fh.0), changes).await {
                    Ok(_) => fs.set_owner_and_times(ino.0, owner, None, None).await,
                    Err(e) => Err(e),
                },
                (true, _) => fs.setattr(ino.0, fh.map(|fh| fh.0), changes).await,
            };
            match result {
                Ok(attr) => reply.attr(&fs.ttl(), &file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        use crate::format::SpecialKind;
        let special = match mode & libc::S_IFMT {
            libc::S_IFREG => None,
            libc::S_IFIFO => Some(SpecialKind::Fifo),
            libc::S_IFSOCK => Some(SpecialKind::Socket),
            libc::S_IFCHR => Some(SpecialKind::Char),
            libc::S_IFBLK => Some(SpecialKind::Block),
            _ => return reply.error(Errno::EINVAL),
        };
        let name = match name_of(name) {
            Ok(name) => name,
            Err(e) => return reply.error(e),
        };
        let (uid, gid) = (req.uid(), req.gid());
        if let Some(kind) = special {
            // A FIFO or a socket has no device number, whatever the caller passed.
            let rdev = match kind {
                SpecialKind::Char | SpecialKind::Block => u64::from(rdev),
                SpecialKind::Fifo | SpecialKind::Socket => 0,
            };
            return self.spawn(move |fs| async move {
                let owner = fs.owner_of(uid, gid);
                match fs
                    .mknod(parent.0, &name, kind, mode & 0o7777, rdev, owner)
                    .await
                {
                    Ok(attr) => reply.entry(&fs.ttl(), &file_attr(&attr), Generation(0)),
                    Err(e) => reply.error(errno(&e)),
                }
            });
        }
        self.spawn(move |fs| async move {
            let result = async {
                let owner = fs.owner_of(uid, gid);
                let (attr, opened) =
                    (fs.create_owned(parent.0, &name, mode & 0o7777, true, owner)).await?;
                fs.release(opened.fh).await?;
                Ok::<_, FsError>(attr)
            }
            .await;
            match result {
                Ok(attr) => reply.entry(&fs.ttl(), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(e) => return reply.error(e),
        };
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(move |fs| async move {
            let owner = fs.owner_of(uid, gid);
            match fs.mkdir_owned(parent.0, &name, mode & 0o7777, owner).await {
                Ok(attr) => reply.entry(&fs.ttl(), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            match fs.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            match fs.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = match (name_of(link_name), name_of(target.as_os_str())) {
            (Ok(name), Ok(target)) => (name, target),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(move |fs| async move {
            let owner = fs.owner_of(uid, gid);
            match fs.symlink(parent.0, &name, &target, owner).await {
                Ok(attr) => reply.entry(&fs.ttl(), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(move |fs| async move {
            match fs.readlink(ino.0).await {
                Ok(target) => reply.data(target.as_bytes()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        use fuser::RenameFlags;
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        if !(flags - RenameFlags::RENAME_NOREPLACE - RenameFlags::RENAME_EXCHANGE).is_empty()
            || (no_replace && exchange)
        {
            // RENAME_WHITEOUT is for overlay file systems; both at once is meaningless.
            return reply.error(Errno::EINVAL);
        }
        let (name, newname) = match (name_of(name), name_of(newname)) {
            (Ok(name), Ok(newname)) => (name, newname),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            let result = if exchange {
                fs.exchange(parent.0, &name, newparent.0, &newname).await
            } else {
                fs.rename(parent.0, &name, newparent.0, &newname, no_replace)
                    .await
            };
            match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = match name_of(newname) {
            Ok(name) => name,
            Err(e) => return reply.error(e),
        };
        self.spawn(move |fs| async move {
            match fs.link(ino.0, newparent.0, &name).await {
                Ok(attr) => reply.entry(&fs.ttl(), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: fuser::OpenFlags, reply: ReplyOpen) {
        let flags = OpenFlags::from_raw(flags.0);
        let (pid, writers) = (req.pid(), self.writers.clone());
        self.spawn(move |fs| async move {
            match fs.open(ino.0, flags).await {
                Ok(opened) => {
                    if flags.write {
                        note_writer(&writers, opened.fh, pid);
                    }
                    let mut fopen = FopenFlags::empty();
                    if opened.keep_cache {
                        fopen |= FopenFlags::FOPEN_KEEP_CACHE;
                    }
                    if opened.direct_io {
                        fopen |= FopenFlags::FOPEN_DIRECT_IO;
                    }
                    reply.opened(FileHandle(opened.fh), fopen)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(move |fs| async move {
            match fs.read(fh.0, offset, size).await {
                Ok(data) => {
                    reply.data(&data);
                    crate::buffers::give_back(data);
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Into the spool at once when no upload holds the file: a local write, and it
        // saves copying the data and handing it to another thread.
        match self.fs.try_write_now(fh.0, offset, data) {
            Some(Ok(written)) => return reply.written(written),
            Some(Err(e)) => return reply.error(errno(&e)),
            None => {}
        }
        // The request's buffer is fuser's, reused for the next request: copy.
        let data = data.to_vec();
        self.spawn(move |fs| async move {
            match fs.write(fh.0, offset, &data).await {
                Ok(written) => reply.written(written),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let (pid, writers) = (req.pid(), self.writers.clone());
        self.spawn(move |fs| async move {
            let opener = writers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&fh.0)
                .copied();
            if let Some(opener) = opener
                && process_of(pid).is_some_and(|closer| closer != opener)
            {
                // A copy of the descriptor in another process (a child after fork):
                // the writer may not be done. Its last close uploads.
                log::debug!(
                    "flush of handle {} by process {pid}: not the writer's",
                    fh.0
                );
                return reply.ok();
            }
            match fs.flush(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        self.spawn(move |fs| async move {
            match fs.release(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |fs| async move {
            match fs.fsync(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: fuser::OpenFlags, reply: ReplyOpen) {
        let fh = self.next_dir_handle.fetch_add(1, Ordering::Relaxed);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dirs = self.dirs.clone();
        self.spawn(move |fs| async move {
            let entries = match FuseFs::entries_at(&fs, &dirs, ino.0, fh.0, offset).await {
                Ok(entries) => entries,
                Err(e) => return reply.error(errno(&e)),
            };
            for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
                let next = i as u64 + 1;
                if reply.add(INodeNo(entry.ino), next, file_type(entry.kind), &entry.name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dirs = self.dirs.clone();
        self.spawn(move |fs| async move {
            let entries = match FuseFs::entries_at(&fs, &dirs, ino.0, fh.0, offset).await {
                Ok(entries) => entries,
                Err(e) => return reply.error(errno(&e)),
            };
            let ttl = fs.ttl();
            // Each name's attributes, as a lookup would give them, a batch at a time
            // (one take of the index for all of it); the kernel counts each name it
            // gets as one lookup, so those that fit are counted before the reply goes.
            // A name gone meanwhile is left out. `.` and `..` aren't counted.
            let mut handed = Vec::new();
            let mut at = offset as usize;
            'pages: while at < entries.len() {
                let batch = &entries[at..entries.len().min(at + READDIRPLUS_BATCH)];
                let attrs = if at < 2 {
                    let mut attrs = Vec::new();
                    for entry in batch.iter().take(2 - at) {
                        attrs.push(fs.getattr(entry.ino).await.ok());
                    }
                    attrs
                } else {
                    let names: Vec<(&str, u64)> =
                        batch.iter().map(|e| (e.name.as_str(), e.ino)).collect();
                    fs.attrs_in(ino.0, &names).await
                };
                for (entry, attr) in batch.iter().zip(attrs) {
                    let next = at as u64 + 1;
                    let counted = at >= 2;
                    at += 1;
                    let Some(attr) = attr else { continue };
                    if reply.add(
                        INodeNo(attr.ino),
                        next,
                        &entry.name,
                        &ttl,
                        &file_attr(&attr),
                        Generation(0),
                    ) {
                        break 'pages;
                    }
                    if counted {
                        handed.push(attr.ino);
                    }
                }
            }
            fs.count_lookups(&handed);
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Folder changes are records, posted before the change returned.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(move |fs| async move {
            let st = fs.statfs().await;
            reply.statfs(
                st.blocks, st.bfree, st.bfree, st.files, st.files, st.bsize, st.namelen, st.bsize,
            );
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(_) => return reply.error(Errno::ENOTSUP),
        };
        let how = if flags & libc::XATTR_CREATE != 0 {
            SetXattr::Create
        } else if flags & libc::XATTR_REPLACE != 0 {
            SetXattr::Replace
        } else {
            SetXattr::Always
        };
        let value = value.to_vec();
        self.spawn(move |fs| async move {
            match fs.setxattr(ino.0, &name, &value, how).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(_) => return reply.error(Errno::ENODATA),
        };
        match self.fs.getxattr_now(ino.0, &name) {
            Some(Ok(value)) => return reply_sized(reply, size, &value),
            Some(Err(e)) => return reply.error(errno(&e)),
            None => {}
        }
        self.spawn(move |fs| async move {
            match fs.getxattr(ino.0, &name).await {
                Ok(value) => reply_sized(reply, size, &value),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let answer = move |reply: ReplyXattr, names: Result<Vec<String>, FsError>| match names {
            Ok(names) => {
                let mut list = Vec::new();
                for name in names {
                    list.extend_from_slice(name.as_bytes());
                    list.push(0);
                }
                reply_sized(reply, size, &list)
            }
            Err(e) => reply.error(errno(&e)),
        };
        if let Some(names) = self.fs.listxattr_now(ino.0) {
            return answer(reply, names);
        }
        self.spawn(move |fs| async move { answer(reply, fs.listxattr(ino.0).await) });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(_) => return reply.error(Errno::ENODATA),
        };
        self.spawn(move |fs| async move {
            match fs.removexattr(ino.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (default_permissions).
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_of(name) {
            Ok(name) => name,
            Err(e) => return reply.error(e),
        };
        let exclusive = flags & libc::O_EXCL != 0;
        let (pid, writers) = (req.pid(), self.writers.clone());
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn(move |fs| async move {
            let owner = fs.owner_of(uid, gid);
            match (fs.create_owned(parent.0, &name, mode & 0o7777, exclusive, owner)).await {
                Ok((attr, opened)) => {
                    note_writer(&writers, opened.fh, pid);
                    reply.created(
                        &fs.ttl(),
                        &file_attr(&attr),
                        Generation(0),
                        FileHandle(opened.fh),
                        FopenFlags::empty(),
                    )
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn attributes_carry_the_core_s_values() {
        let mtime = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let attr = Attr {
            ino: 7,
            kind: Kind::File,
            size: 1025,
            mtime,
            atime: mtime - Duration::from_secs(5),
            ctime: mtime + Duration::from_secs(5),
            perm: 0o644,
            nlink: 1,
            uid: 1000,
            gid: 100,
            rdev: 0,
        };
        let fa = file_attr(&attr);
        assert_eq!(fa.ino, INodeNo(7));
        assert_eq!(fa.kind, FileType::RegularFile);
        assert_eq!(fa.size, 1025);
        assert_eq!(fa.blocks, 3);
        assert_eq!(
            (fa.atime, fa.mtime, fa.ctime, fa.crtime),
            (attr.atime, mtime, attr.ctime, mtime)
        );
        assert_eq!((fa.perm, fa.uid, fa.gid, fa.nlink), (0o644, 1000, 100, 1));
        assert_eq!(fa.blksize, BLKSIZE);
    }

    #[test]
    fn threads_belong_to_their_process() {
        let me = std::process::id();
        assert_eq!(process_of(me), Some(me));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
            let _ = done_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        assert_ne!(tid, me);
        assert_eq!(process_of(tid), Some(me));
        drop(done_tx);
        thread.join().unwrap();
        assert_eq!(process_of(0), None);
    }

    #[test]
    fn names_must_be_utf8() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(name_of(OsStr::new("a.txt")), Ok("a.txt".to_string()));
        assert_eq!(name_of(OsStr::from_bytes(b"\xff")), Err(Errno::EINVAL));
    }

    #[test]
    fn errors_map_to_their_errno() {
        assert_eq!(errno(&FsError::NotFound), Errno::ENOENT);
        assert_eq!(errno(&FsError::Exists), Errno::EEXIST);
        assert_eq!(errno(&FsError::NotEmpty).code(), libc::ENOTEMPTY);
    }

    #[test]
    fn session_settings_follow_the_options() {
        let config = session_config(MountSettings {
            read_only: true,
            allow_other: true,
            threads: 4,
        });
        assert!(config.mount_options.contains(&MountOption::RO));
        assert!(
            config
                .mount_options
                .contains(&MountOption::DefaultPermissions)
        );
        assert_eq!(config.acl, fuser::SessionACL::All);
        assert_eq!(config.n_threads, Some(4));
        let config = session_config(MountSettings::default());
        assert!(config.mount_options.contains(&MountOption::RW));
        assert_eq!(config.acl, fuser::SessionACL::Owner);
        assert_eq!(config.n_threads, Some(1));
    }
}
