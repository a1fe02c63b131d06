//! The filesystem core: what `dcloud-fs mount` serves, without any FUSE types, so that
//! tests drive it directly (as awslabs/mountpoint-s3 separates its fuser adapter from
//! its filesystem) and the adapter ([`crate::fuse`]) stays a thin translation.
//!
//! The tree: the root holds one folder per channel; inside a channel, the files,
//! folders, symbolic links and special files (FIFOs, sockets, devices: records without
//! data, [`Fs::symlink`], [`Fs::mknod`]) its records describe ([`crate::volume`]).
//! Parts:
//!
//! - [`inode`]: stable inode numbers for (channel, path) names, carried across renames
//!   (also to another channel: a rename there is a move, [`Volume::move_to`], which
//!   posts records only; the bytes stay in the channel they were uploaded to);
//! - [`cache`] and [`read`]: reads at any offset fetch only the chunks they cover,
//!   through a byte-bounded LRU of decrypted chunks, with read-ahead for sequential
//!   readers;
//! - [`spool`] and [`write`]: a file opened for writing lives in a spool file on local
//!   disk; the spool survives a crash and the next mount finishes the upload;
//! - [`spool_bound`]: the spool holds at most [`FsConfig::spool_max`] bytes; a writer
//!   that would take it past that waits until uploads free room;
//! - [`writeback`]: closing a file queues its upload, which follows a settle time later
//!   (`fsync` uploads at once and returns the upload's error); with write-back off,
//!   close uploads and returns the error;
//! - `folders`: with write-back on, a folder made by `mkdir` is shown at once and its
//!   record goes up with the channel's next batch of files;
//! - `handles`: the open-file table, and which handle reads a version and which
//!   joins a write session;
//! - `channels`: the channel list and each channel's volume, opened once (channels
//!   open concurrently: a slow replay of one holds up no other; a mount opens the
//!   channels this machine holds a cache of as it comes up);
//! - `recovery`: finishing and retrying the uploads the spool holds, and uploading
//!   what is open at shutdown;
//! - `search`: names under a folder that contain a piece of text, from the index
//!   (the web page's search);
//! - `error`: [`FsError`], one per errno, and how volume and store errors map to it;
//! - [`status`]: a snapshot of the uploads and refreshes, for `dcloud-fs status`.
//!
//! The fs core opens each channel's volume once, through the process's registry of
//! open channels ([`crate::volume::registry`]), which is also their `Peers`: freeing a
//! message of a file that moved across channels asks the channels it moved through (see
//! [`crate::volume`]), through the same volumes the mount serves.
//!
//! Every operation is an `async fn` on `&self`: the adapter runs each request as a task,
//! so a slow upload or download never holds up another request. Metadata (lookup,
//! getattr, readdir, statfs) comes from the in-memory index and never waits for the
//! store, except the first time a channel is opened. Changes made elsewhere (the CLI,
//! another machine) appear within [`FsConfig::poll_interval`].
//!
//! [`Volume::move_to`]: crate::volume::Volume::move_to

pub mod cache;
mod channels;
mod dir_times;
mod error;
mod exchange;
mod folders;
mod handles;
pub mod inode;
pub mod meta;
pub mod read;
mod recovery;
mod search;
pub mod spool;
pub mod spool_bound;
pub mod status;
pub mod write;
pub mod writeback;

pub use self::error::FsError;
pub use self::search::Found;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use self::cache::BlockCache;
use self::channels::Channels;
use self::handles::OpenFile;
use self::inode::{InodeTable, NodeKey, ROOT};
use self::write::WriteSession;
use crate::crypto::Key;
use crate::store::{Id, Store};
use crate::volume::reclaim::ChannelKept;
use crate::volume::registry::Volumes;
use crate::volume::{Index, Node, Owner, VolumeConfig};

/// How the filesystem behaves. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Bytes of decrypted blocks kept in memory: what hot reads and the read-ahead
    /// window need (fetched ciphertext is kept on disk, [`VolumeConfig::disk_cache`]).
    /// Default 64 MiB.
    pub cache_bytes: u64,
    /// Chunks fetched ahead of a sequential reader. Default 4.
    pub read_ahead_chunks: u64,
    /// Where files being written are kept until uploaded. Default
    /// `$XDG_CACHE_HOME/dcloud-fs/spool/<store>`.
    pub spool_dir: Option<PathBuf>,
    /// Bytes the spool's data files may hold (files being written, and closed ones
    /// waiting for their upload); a writer that would take the spool past it waits for
    /// uploads to free room ([`spool_bound`]). Default (`None`): half the free space of
    /// the spool's file system when mounting, at most 16 GiB and at least 512 MiB
    /// ([`spool_bound::default_max`]).
    pub spool_max: Option<u64>,
    /// How often open channels are checked for changes made elsewhere. Default 5 s.
    pub poll_interval: Duration,
    /// How long after its last close a file is uploaded ([`writeback`]); zero uploads
    /// at close, which then returns the upload's error. Default 2 s.
    pub write_back: Duration,
    /// Refuse every change (EROFS). Default false.
    pub read_only: bool,
    /// Let `rmdir` at the root delete an (empty) channel. Default false.
    pub allow_delete_channels: bool,
    /// The mounting user and group: the owner of what has no owner of its own (and
    /// what a file created by them gets). Default: the mounting user's.
    pub uid: u32,
    pub gid: u32,
    /// Owner shown for everything instead of each entry's own (`--uid`). Default none.
    pub shown_uid: Option<u32>,
    /// Group shown for everything instead of each entry's own (`--gid`). Default none.
    pub shown_gid: Option<u32>,
    /// Bits taken away from the modes shown. Default 0 (modes as stored).
    pub umask: u32,
    /// Settings for the channels' volumes (index cache, parallelism).
    pub volume: VolumeConfig,
}

impl Default for FsConfig {
    fn default() -> Self {
        // SAFETY: getuid and getgid have no preconditions and can't fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        FsConfig {
            cache_bytes: 64 * 1024 * 1024,
            read_ahead_chunks: 4,
            spool_dir: None,
            spool_max: None,
            poll_interval: Duration::from_secs(5),
            write_back: Duration::from_secs(2),
            read_only: false,
            allow_delete_channels: false,
            uid,
            gid,
            shown_uid: None,
            shown_gid: None,
            umask: 0,
            volume: VolumeConfig::default(),
        }
    }
}

/// What a file or folder looks like to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
    /// The access time: set by `utimensat`, not by reads (see the README).
    pub atime: SystemTime,
    /// When the entry last changed (its record was posted).
    pub ctime: SystemTime,
    /// Permission bits (the umask applied).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// A device node's number (0 for anything else).
    pub rdev: u32,
}

/// What the index says of a path, for its attributes (see [`Fs::attr_from`]).
enum Stored {
    /// A file, or a folder recorded by `mkdir`.
    Found(Attr),
    /// A folder implied by the paths under it.
    Implied,
    /// Nothing.
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// A symbolic link ([`Fs::symlink`]); its size is its target's length.
    Symlink,
    /// A special file ([`Fs::mknod`]): no data; the kernel gives it its meaning.
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    /// The kind of a special file of the format.
    pub fn of_special(kind: crate::format::SpecialKind) -> Kind {
        use crate::format::SpecialKind;
        match kind {
            SpecialKind::Fifo => Kind::Fifo,
            SpecialKind::Socket => Kind::Socket,
            SpecialKind::Char => Kind::CharDevice,
            SpecialKind::Block => Kind::BlockDevice,
        }
    }

    /// The kind of a stored file entry: a link, a special file, or a file.
    fn of_entry(file: &crate::volume::FileEntry) -> Kind {
        match (&file.symlink, file.special) {
            (Some(_), _) => Kind::Symlink,
            (None, Some(special)) => Kind::of_special(special.kind),
            (None, None) => Kind::File,
        }
    }
}

/// One name in a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirItem {
    pub name: String,
    pub ino: u64,
    pub kind: Kind,
}

/// Changes `setattr` asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub size: Option<u64>,
    pub mtime: Option<SystemTime>,
    pub mode: Option<u32>,
}

/// How a file is opened (from the `open(2)` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFlags {
    pub write: bool,
    pub truncate: bool,
}

impl OpenFlags {
    pub fn from_raw(flags: i32) -> OpenFlags {
        let access = flags & libc::O_ACCMODE;
        OpenFlags {
            write: access == libc::O_WRONLY || access == libc::O_RDWR,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }
}

/// An open file: what `open` and `create` return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// The file is the same version as at its previous open: the kernel may keep the
    /// pages it cached.
    pub keep_cache: bool,
    /// Reads must bypass the kernel's page cache (FOPEN_DIRECT_IO): the version the
    /// handle reads has another size than the kernel was last told the inode has (the
    /// name was given to another file while it was being opened), and the kernel would
    /// cut it at that size or fill it out with zeros.
    pub direct_io: bool,
}

/// Space figures for `statfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// The filesystem. Share it behind an `Arc`.
pub struct Fs {
    store: Arc<dyn Store>,
    key: Option<Key>,
    config: FsConfig,
    spool_dir: PathBuf,
    channels: Mutex<Channels>,
    volumes: Arc<Volumes>,
    inodes: Mutex<InodeTable>,
    cache: Arc<BlockCache>,
    handles: Mutex<HashMap<u64, OpenFile>>,
    sessions: Mutex<HashMap<NodeKey, Arc<WriteSession>>>,
    /// Closed files waiting for their upload.
    write_back: Arc<writeback::WriteBack>,
    /// What the spool holds, and its bound.
    spool_bound: Arc<spool_bound::SpoolBound>,
    /// The file version each inode had when last opened, for `keep_cache`: its file id
    /// and record message (a new version keeps the file id; the record is new).
    last_opened: Mutex<HashMap<u64, (crate::format::FileId, Id)>>,
    /// The size each file's inode was last described to the kernel with (the kernel
    /// reads through its page cache up to the size it knows).
    told_sizes: Mutex<crate::idmap::IdMap<u64, u64>>,
    /// Spool files of live sessions (the others are left by failed uploads).
    live_spools: Mutex<std::collections::HashSet<String>>,
    next_fh: AtomicU64,
    /// Held while spooled uploads are being finished: one pass at a time.
    spool_uploads: tokio::sync::Mutex<()>,
    /// Shown as the modification time of folders that have no record of their own
    /// (the root, and folders implied by the paths under them).
    mounted_at_ns: i64,
    /// When the channels were last refreshed from the store, for `status`.
    refreshes: Mutex<status::Refreshes>,
    /// Folder times that moved while mounted ([`dir_times`]).
    dir_times: dir_times::DirTimes,
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.write_back.stop();
    }
}

fn time_of(mtime_ns: i64) -> SystemTime {
    if mtime_ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(mtime_ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(mtime_ns.unsigned_abs())
    }
}

fn ns_of(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

fn now_ns() -> i64 {
    ns_of(SystemTime::now())
}

/// Checks a name from the kernel.
fn check_name(name: &str) -> Result<(), FsError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(FsError::InvalidName(name.to_string()));
    }
    if name.len() > crate::format::MAX_NAME_BYTES {
        return Err(FsError::NameTooLong(name.len()));
    }
    Ok(())
}

impl Fs {
    /// Makes the filesystem and finishes the uploads a previous mount left in the
    /// spool (in the background).
    pub async fn new(
        store: Arc<dyn Store>,
        key: Option<Key>,
        config: FsConfig,
    ) -> Result<Arc<Fs>, FsError> {
        let spool_dir = config.spool_dir.clone().unwrap_or_else(|| {
            crate::dirs::cache_dir()
                .join("spool")
                .join(store.identity())
        });
        let spool_max = config
            .spool_max
            .unwrap_or_else(|| spool_bound::default_max(&spool_dir));
        log::info!(
            "spool {}: at most {}{}",
            spool_dir.display(),
            spool_bound::mib(spool_max),
            if config.spool_max.is_none() {
                " (half the free space of its disk, 512 MiB to 16 GiB)"
            } else {
                ""
            }
        );
        let fs = Arc::new(Fs {
            spool_bound: spool_bound::SpoolBound::new(spool_max),
            volumes: Volumes::new(store.clone(), key.clone(), config.volume.clone()),
            cache: Arc::new(BlockCache::new(config.cache_bytes)),
            store,
            key,
            write_back: writeback::WriteBack::new(config.write_back, spool_dir.clone()),
            spool_dir,
            channels: Mutex::default(),
            inodes: Mutex::default(),
            handles: Mutex::default(),
            sessions: Mutex::default(),
            last_opened: Mutex::default(),
            told_sizes: Mutex::default(),
            live_spools: Mutex::default(),
            next_fh: AtomicU64::new(1),
            mounted_at_ns: now_ns(),
            spool_uploads: tokio::sync::Mutex::new(()),
            refreshes: Mutex::default(),
            dir_times: dir_times::DirTimes::default(),
            config,
        });
        // The caches of the channels used before are read while the store answers.
        fs.volumes.start_cache_reads();
        fs.list_channels(true).await?;
        fs.note_refresh(None);
        fs.start_write_back();
        Ok(fs)
    }

    /// How full the spool is: the bytes in it, its bound, the writers waiting for room.
    pub fn spool_usage(&self) -> spool_bound::SpoolUsage {
        self.spool_bound.usage()
    }

    /// How long the kernel may cache names and attributes.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(1)
    }

    // ----- names and attributes -----

    fn key_of(&self, ino: u64) -> Result<NodeKey, FsError> {
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .key(ino)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    /// The number of `key`, one of the names of a file that has several: the number
    /// the file is known by already, under any of its names ([`InodeTable::ino_linked`]).
    fn linked_ino(&self, key: &NodeKey, index: &Index) -> u64 {
        let names: Vec<NodeKey> = (index.names_of(&key.path).into_iter())
            .map(|path| NodeKey::new(key.channel, path))
            .collect();
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ino_linked(key, &names)
    }

    /// The name the file at `key` is known by: `key`, unless it is one of the names of
    /// a file with several, whose inode number another of them holds.
    fn known_name(&self, key: &NodeKey, volume: &crate::volume::Volume) -> NodeKey {
        let index = volume.index();
        if index.file(&key.path).is_none_or(|file| file.node.is_none()) {
            return key.clone();
        }
        let ino = self.linked_ino(key, &index);
        drop(index);
        self.key_of(ino).unwrap_or_else(|_| key.clone())
    }

    fn ino_of(&self, key: &NodeKey) -> u64 {
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ino(key)
    }

    fn session(&self, key: &NodeKey) -> Option<Arc<WriteSession>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// The session at `key`, with one more handle on it (counted under the sessions'
    /// lock, so that a session being retired is never joined).
    fn join_session(&self, key: &NodeKey) -> Option<Arc<WriteSession>> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let session = sessions.get(key)?;
        session.open_one();
        Some(session.clone())
    }

    /// Ends a session that no handle holds: out of the table, and its spool removed (or
    /// kept, if it holds changes that are not uploaded, for the retries). With
    /// `if_uploaded`, only a session whose changes are all uploaded ends (one waiting
    /// for its upload stays). Does nothing if a handle joined it meanwhile.
    fn retire_session(&self, session: &Arc<WriteSession>, if_uploaded: bool) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if session.opens() > 0 || (if_uploaded && session.is_dirty()) {
            return;
        }
        let key = session.key();
        if sessions.get(&key).is_some_and(|s| Arc::ptr_eq(s, session)) {
            sessions.remove(&key);
        }
        drop(sessions);
        self.end_session(session);
    }

    /// A session whose name went (unlinked, or replaced by a rename): nothing of it is
    /// uploaded; if no handle holds it, it ends now.
    fn drop_unlinked(&self, session: &Arc<WriteSession>) {
        session.unlink();
        self.write_back.forget(session);
        if session.opens() == 0 {
            self.end_session(session);
        }
    }

    fn dir_attr(&self, ino: u64, mtime_ns: i64, mode: u32) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            mtime: time_of(mtime_ns),
            atime: time_of(mtime_ns),
            ctime: time_of(mtime_ns),
            perm: (mode & 0o7777 & !self.config.umask) as u16,
            nlink: 2,
            uid: self.config.shown_uid.unwrap_or(self.config.uid),
            gid: self.config.shown_gid.unwrap_or(self.config.gid),
            rdev: 0,
        }
    }

    /// A file's attributes, as the kernel is told them (the size noted: see
    /// `told_sizes`).
    fn file_attr(&self, ino: u64, size: u64, mtime_ns: i64, mode: u32) -> Attr {
        self.told_sizes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ino, size);
        self.file_attr_untold(ino, size, mtime_ns, mode)
    }

    /// [`Fs::file_attr`] without noting the size: for a batch of names, whose sizes
    /// are then noted under one take of the lock ([`Fs::note_told`]).
    fn file_attr_untold(&self, ino: u64, size: u64, mtime_ns: i64, mode: u32) -> Attr {
        Attr {
            ino,
            kind: Kind::File,
            size,
            mtime: time_of(mtime_ns),
            atime: time_of(mtime_ns),
            ctime: time_of(mtime_ns),
            perm: (mode & 0o7777 & !self.config.umask) as u16,
            nlink: 1,
            uid: self.config.shown_uid.unwrap_or(self.config.uid),
            gid: self.config.shown_gid.unwrap_or(self.config.gid),
            rdev: 0,
        }
    }

    /// A symbolic link's attributes: mode 0777 (its own mode is never checked), its
    /// size its target's length.
    fn link_attr(&self, ino: u64, target_len: u64, mtime_ns: i64) -> Attr {
        Attr {
            ino,
            kind: Kind::Symlink,
            size: target_len,
            mtime: time_of(mtime_ns),
            atime: time_of(mtime_ns),
            ctime: time_of(mtime_ns),
            perm: 0o777,
            nlink: 1,
            uid: self.config.shown_uid.unwrap_or(self.config.uid),
            gid: self.config.shown_gid.unwrap_or(self.config.gid),
            rdev: 0,
        }
    }

    /// The attributes of the node at `key`.
    async fn attr_of(&self, key: &NodeKey) -> Result<Attr, FsError> {
        let attr = self.attr_of_stored(key).await?;
        Ok(self.dir_times.apply(key, attr))
    }

    /// [`Fs::attr_of`] without the folder times of this mount ([`dir_times`]).
    async fn attr_of_stored(&self, key: &NodeKey) -> Result<Attr, FsError> {
        let mut ino = self.ino_of(key);
        if key.path.is_empty() {
            return Ok(self.channel_attr(ino, key.channel));
        }
        // A file with several names is written under the name its number is known by.
        let known_as = self.key_of(ino).unwrap_or_else(|_| key.clone());
        if let Some(session) = self.session(&known_as) {
            let attr = self.session_attr(ino, &session);
            let given = session.state();
            let volume = self.volume(key.channel).await?;
            let index = volume.index();
            // What the stored version has and the session doesn't say otherwise.
            return Ok(match index.file(&key.path) {
                Some(file) => {
                    let stored = self.with_meta(attr, file.meta());
                    let owned = given.owner.is_some();
                    Attr {
                        nlink: index.names_of(&key.path).len().max(1) as u32,
                        uid: if owned { attr.uid } else { stored.uid },
                        gid: if owned { attr.gid } else { stored.gid },
                        atime: given.atime_ns.map_or(stored.atime, |_| attr.atime),
                        ctime: stored.ctime.max(attr.ctime),
                        ..attr
                    }
                }
                None => attr,
            });
        }
        let volume = self.volume(key.channel).await?;
        let stored = {
            let index = volume.index();
            if index
                .file(&key.path)
                .is_some_and(|file| file.node.is_some())
            {
                ino = self.linked_ino(key, &index);
            }
            self.stored_attr(ino, &index, &key.path)
        };
        if let Stored::Found(attr) = &stored {
            self.note_told(std::slice::from_ref(attr));
        }
        self.attr_from(ino, key, stored)
    }

    /// Notes the sizes of the files among `attrs`, which the kernel is being told.
    fn note_told<'a>(&self, attrs: impl IntoIterator<Item = &'a Attr>) {
        let mut told = self.told_sizes.lock().unwrap_or_else(|e| e.into_inner());
        for attr in attrs.into_iter().filter(|attr| attr.kind == Kind::File) {
            told.insert(attr.ino, attr.size);
        }
    }

    /// The attributes of the names `names` in the folder `parent` of a channel (each
    /// with the number its listing gave it), each as [`Fs::attr_of`] gives them (`None`: not there, its number forgotten as `lookup`
    /// does), for a page of `readdirplus`: every name under one take of each lock and
    /// one of the index. No lookup is counted: the caller counts those it hands to the
    /// kernel ([`Fs::count_lookups`]).
    pub async fn attrs_in(&self, parent: u64, names: &[(&str, u64)]) -> Vec<Option<Attr>> {
        if parent == ROOT {
            // Channels: few, and each may need opening.
            let mut attrs = Vec::with_capacity(names.len());
            for (name, _) in names {
                attrs.push(self.find(parent, name).await.ok());
            }
            return attrs;
        }
        let Ok(folder) = self.key_of(parent) else {
            return vec![None; names.len()];
        };
        let keys: Vec<NodeKey> = names.iter().map(|(name, _)| folder.child(name)).collect();
        let inos: Vec<u64> = {
            let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            (keys.iter().zip(names))
                .map(|(key, &(_, listed))| inodes.ino_known(listed, key))
                .collect()
        };
        let sessions: Vec<Option<Arc<WriteSession>>> = {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if sessions.is_empty() {
                vec![None; keys.len()]
            } else {
                keys.iter().map(|key| sessions.get(key).cloned()).collect()
            }
        };
        let Ok(volume) = self.volume(folder.channel).await else {
            return vec![None; names.len()];
        };
        let mut inos = inos;
        let stored: Vec<Option<Stored>> = {
            let index = volume.index();
            (keys.iter().zip(&mut inos).zip(&sessions))
                .map(|((key, ino), session)| {
                    if index
                        .file(&key.path)
                        .is_some_and(|file| file.node.is_some())
                    {
                        *ino = self.linked_ino(key, &index);
                    }
                    session
                        .is_none()
                        .then(|| self.stored_attr(*ino, &index, &key.path))
                })
                .collect()
        };
        self.note_told(stored.iter().filter_map(|stored| match stored {
            Some(Stored::Found(attr)) => Some(attr),
            _ => None,
        }));
        let attrs: Vec<Option<Attr>> = (keys.iter().zip(inos).zip(sessions).zip(stored))
            .map(|(((key, ino), session), stored)| match (session, stored) {
                (Some(session), _) => Some(self.session_attr(ino, &session)),
                (None, Some(stored)) => self.attr_from(ino, key, stored).ok(),
                (None, None) => None,
            })
            .zip(&keys)
            .map(|(attr, key)| attr.map(|attr| self.dir_times.apply(key, attr)))
            .collect();
        let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        for (key, attr) in keys.iter().zip(&attrs) {
            if attr.is_none() {
                inodes.remove(key); // as `find` does: the name can come back fresh
            }
        }
        attrs
    }

    /// A file being written: what its session says.
    fn session_attr(&self, ino: u64, session: &WriteSession) -> Attr {
        let state = session.state();
        let attr = self.file_attr(ino, state.size, state.mtime_ns, state.mode);
        let owner = state.owner.unwrap_or_default();
        Attr {
            uid: (self.config.shown_uid)
                .or(owner.uid)
                .unwrap_or(self.config.uid),
            gid: (self.config.shown_gid)
                .or(owner.gid)
                .unwrap_or(self.config.gid),
            atime: state.atime_ns.map_or(attr.atime, time_of),
            ctime: time_of(state.ctime_ns),
            ..attr
        }
    }

    /// A channel folder: made when its channel was (its id says when).
    fn channel_attr(&self, ino: u64, channel: Id) -> Attr {
        let made_ms = crate::store::snowflake_time_ms(channel) as i64;
        self.dir_attr(ino, made_ms * 1_000_000, 0o755)
    }

    /// What the index says of `path` (a file's size not noted yet: the caller notes
    /// it, [`Fs::note_told`]).
    fn stored_attr(&self, ino: u64, index: &Index, path: &str) -> Stored {
        match index.node(path) {
            Some(Node::File(file)) => {
                let attr = match (&file.symlink, file.special) {
                    (Some(target), _) => self.link_attr(ino, target.len() as u64, file.mtime_ns),
                    (None, Some(special)) => Attr {
                        kind: Kind::of_special(special.kind),
                        rdev: special.rdev as u32,
                        ..self.file_attr_untold(ino, 0, file.mtime_ns, file.mode)
                    },
                    (None, None) => self.file_attr_untold(ino, file.size, file.mtime_ns, file.mode),
                };
                let nlink = if file.node.is_some() {
                    index.names_of(path).len().max(1) as u32
                } else {
                    1
                };
                Stored::Found(Attr {
                    nlink,
                    ..self.with_meta(attr, file.meta())
                })
            }
            Some(Node::Dir(Some(dir))) => {
                let attr = self.dir_attr(ino, dir.mtime_ns, dir.mode);
                Stored::Found(self.with_meta(attr, dir.meta()))
            }
            Some(Node::Dir(None)) => Stored::Implied,
            None => Stored::Absent,
        }
    }

    /// `attr` with the owner and times `meta` records (an owner the mount shows for
    /// everything, `--uid` and `--gid`, goes first).
    fn with_meta(&self, attr: Attr, meta: &crate::format::Meta) -> Attr {
        Attr {
            uid: (self.config.shown_uid)
                .or(meta.uid)
                .unwrap_or(self.config.uid),
            gid: (self.config.shown_gid)
                .or(meta.gid)
                .unwrap_or(self.config.gid),
            atime: meta.atime_ns.map_or(attr.atime, time_of),
            ctime: meta.ctime_ns.map_or(attr.ctime, time_of),
            ..attr
        }
    }

    /// The attributes of `key` from what the index said: a folder made here whose
    /// record waits ([`folders`]) comes before one implied by the paths under it.
    fn attr_from(&self, ino: u64, key: &NodeKey, stored: Stored) -> Result<Attr, FsError> {
        if let Stored::Found(attr) = stored {
            return Ok(attr);
        }
        if let Some((mtime_ns, mode)) = self.write_back.folders.attrs(key) {
            return Ok(self.dir_attr(ino, mtime_ns, mode));
        }
        match stored {
            Stored::Implied => Ok(self.dir_attr(ino, self.mounted_at_ns, 0o755)),
            _ => Err(FsError::NotFound),
        }
    }

    /// Whether anything at `key` waits to be stored: a file's write session, or a
    /// folder whose record waits.
    fn pending_at(&self, key: &NodeKey) -> bool {
        self.session(key).is_some() || self.write_back.folders.attrs(key).is_some()
    }

    /// Whether anything under the folder `key` waits to be stored: a file's write
    /// session, or a folder whose record waits. (A folder with none of that and no
    /// live entry under it in the index is empty.)
    fn pending_under(&self, key: &NodeKey) -> bool {
        self.write_back.folders.any_under(key)
            || self
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .any(|k| k != key && k.is_within(key))
    }

    /// `lookup`: the attributes of `name` in folder `parent` (one more lookup of its
    /// number held by the kernel).
    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        self.find(parent, name)
            .await
            .map(|attr| self.count_lookup(attr))
    }

    async fn find(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        check_name(name)?;
        if parent == ROOT {
            let channel = self.channel_named(name).await?;
            let key = NodeKey::new(channel.id, "");
            return self.attr_of(&key).await;
        }
        let key = self.key_of(parent)?.child(name);
        match self.attr_of(&key).await {
            Err(FsError::NotFound) => {
                // Not known here: forget the number so the name can come back fresh.
                self.inodes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                Err(FsError::NotFound)
            }
            other => other,
        }
    }

    /// `getattr`. A file that lost its name while open (unlinked, or replaced by a
    /// rename) still has the attributes its open handles see, as on a local disk.
    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        self.getattr_of(ino, None).await
    }

    /// `getattr` with the handle the kernel asks through, if any: for a file that lost
    /// its name, the version that handle reads.
    pub async fn getattr_of(&self, ino: u64, fh: Option<u64>) -> Result<Attr, FsError> {
        if ino == ROOT {
            return Ok(self.dir_attr(ROOT, self.mounted_at_ns, 0o755));
        }
        let named = match self.key_of(ino) {
            Ok(key) => self.attr_of(&key).await,
            Err(e) => Err(e),
        };
        match named {
            Err(FsError::NotFound) => self.attr_of_open(ino, fh).ok_or(FsError::NotFound),
            other => other,
        }
    }

    /// `readdir`: the names in a folder (without `.` and `..`).
    pub async fn readdir(&self, ino: u64) -> Result<Vec<DirItem>, FsError> {
        if ino == ROOT {
            let channels = self.list_channels(false).await?;
            return Ok(channels
                .into_iter()
                .map(|c| DirItem {
                    ino: self.ino_of(&NodeKey::new(c.id, "")),
                    name: c.name,
                    kind: Kind::Dir,
                })
                .collect());
        }
        let key = self.key_of(ino)?;
        let volume = self.volume(key.channel).await?;
        let listed: Vec<(String, Kind)> = {
            let index = volume.index();
            match index.node(&key.path) {
                Some(Node::Dir(_)) => {}
                Some(Node::File(_)) => return Err(FsError::NotADirectory),
                None if key.path.is_empty() => {}
                None if self.write_back.folders.attrs(&key).is_some() => {}
                None => return Err(FsError::NotFound),
            }
            index
                .list(&key.path)
                .unwrap_or_default()
                .into_iter()
                .map(|item| {
                    let kind = match item.node {
                        Node::File(file) => Kind::of_entry(file),
                        Node::Dir(_) => Kind::Dir,
                    };
                    (item.name, kind)
                })
                .collect()
        };
        let mut items: Vec<DirItem> = {
            let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            listed
                .into_iter()
                .map(|(name, kind)| DirItem {
                    ino: inodes.ino(&key.child(&name)),
                    name,
                    kind,
                })
                .collect()
        };
        // Folders whose record waits, and files being written for the first time,
        // exist only in the spool so far.
        let folders = self.write_back.folders.children(&key);
        let sessions: Vec<NodeKey> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        if folders.is_empty() && sessions.is_empty() {
            return Ok(items);
        }
        // The names listed, looked up by name: a folder of many files with many files
        // being written costs the sum of the two, not their product.
        let mut names: HashSet<String> = items.iter().map(|item| item.name.clone()).collect();
        for name in folders {
            if names.insert(name.clone()) {
                items.push(DirItem {
                    ino: self.ino_of(&key.child(&name)),
                    name,
                    kind: Kind::Dir,
                });
            }
        }
        for session in sessions {
            let (dir, name) = session
                .path
                .rsplit_once('/')
                .unwrap_or(("", session.path.as_str()));
            if session.channel == key.channel && dir == key.path && names.insert(name.to_string()) {
                items.push(DirItem {
                    name: name.to_string(),
                    ino: self.ino_of(&session),
                    kind: Kind::File,
                });
            }
        }
        Ok(items)
    }

    /// The inode number of the folder holding `ino` (the root for the root).
    pub fn parent_of(&self, ino: u64) -> u64 {
        let Ok(key) = self.key_of(ino) else {
            return ROOT;
        };
        if key.path.is_empty() {
            return ROOT;
        }
        let parent = key.path.rsplit_once('/').map_or("", |(dir, _)| dir);
        self.ino_of(&NodeKey::new(key.channel, parent))
    }

    /// `statfs`: the files and bytes stored in the channels opened so far.
    pub async fn statfs(&self) -> StatFs {
        let volumes = self.volumes.opened();
        let (mut files, mut bytes) = (0, 0);
        for volume in volumes {
            let (f, b) = volume.index().totals();
            files += f;
            bytes += b;
        }
        let bsize = 4096u32;
        // Discord sets no quota: report the used blocks plus a large free space.
        let used = bytes.div_ceil(u64::from(bsize));
        let free = (1u64 << 50) / u64::from(bsize);
        StatFs {
            blocks: used + free,
            bfree: free,
            files: files + (1 << 20),
            bsize,
            namelen: 255,
        }
    }

    /// `forget`: the kernel dropped `count` of its lookups of `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        if ino != ROOT {
            let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            inodes.forget(ino, count);
            if inodes.key(ino).is_none() {
                self.told_sizes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&ino);
            }
        }
    }

    /// Counts a lookup the kernel is about to be answered with.
    fn count_lookup(&self, attr: Attr) -> Attr {
        self.count_lookups(&[attr.ino]);
        attr
    }

    /// Counts one more lookup held by the kernel of each number (as `lookup` does):
    /// the names `readdirplus` handed it.
    pub fn count_lookups(&self, inos: &[u64]) {
        let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        for &ino in inos.iter().filter(|&&ino| ino != ROOT) {
            inodes.hold(ino);
        }
    }

    // ----- namespace changes -----

    /// `mkdir`: a folder in a channel, or (at the root) a new channel.
    pub async fn mkdir(&self, parent: u64, name: &str, mode: u32) -> Result<Attr, FsError> {
        self.mkdir_owned(parent, name, mode, Owner::default()).await
    }

    /// [`Fs::mkdir`] by `owner` ([`Fs::owner_of`]). A folder of another owner than the
    /// mounting user is recorded at once, even with write-back (a waiting folder's note
    /// keeps no owner).
    pub async fn mkdir_owned(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        owner: Owner,
    ) -> Result<Attr, FsError> {
        self.writable()?;
        check_name(name)?;
        if parent == ROOT {
            let channel = self.store.create_channel(name).await?;
            self.list_channels(true).await?;
            let attr = self.attr_of(&NodeKey::new(channel.id, "")).await?;
            return Ok(self.count_lookup(attr));
        }
        let key = self.key_of(parent)?.child(name);
        let volume = self.volume(key.channel).await?;
        if self.write_back.enabled() && owner == Owner::default() {
            return self.mkdir_later(&volume, &key, mode).await;
        }
        if self.pending_at(&key) {
            return Err(FsError::Exists);
        }
        volume.mkdir_owned(&key.path, now_ns(), mode, owner).await?;
        self.dir_times.name_changed(&key);
        Ok(self.count_lookup(self.attr_of(&key).await?))
    }

    /// `mkdir` with write-back on: shown at once, its record posted later
    /// ([`folders`]).
    async fn mkdir_later(
        &self,
        volume: &crate::volume::Volume,
        key: &NodeKey,
        mode: u32,
    ) -> Result<Attr, FsError> {
        crate::format::validate_path(&key.path).map_err(|e| FsError::InvalidName(e.to_string()))?;
        if volume.index().node(&key.path).is_some() || self.pending_at(key) {
            return Err(FsError::Exists);
        }
        self.write_back
            .add_folder(key, now_ns(), mode & 0o7777)
            .map_err(|e| FsError::Io(format!("could not note the folder in the spool: {e}")))?;
        self.dir_times.name_changed(key);
        Ok(self.count_lookup(self.attr_of(key).await?))
    }

    /// `symlink`: a link named `name` in `parent` to `target`, stored at once as a
    /// record of its own (no data; format version 7).
    pub async fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        owner: Owner,
    ) -> Result<Attr, FsError> {
        if target.len() > crate::format::MAX_SYMLINK_BYTES {
            return Err(FsError::NameTooLong(target.len()));
        }
        let (key, volume) = self.new_name(parent, name).await?;
        if volume.index().node(&key.path).is_some() || self.pending_at(&key) {
            return Err(FsError::Exists);
        }
        volume
            .symlink(&key.path, target, now_ns(), owner, false)
            .await?;
        self.dir_times.name_changed(&key);
        Ok(self.count_lookup(self.attr_of(&key).await?))
    }

    /// `mknod` of a special file (`kind` a FIFO, socket or device; regular files are
    /// [`Fs::create`]'s), stored at once as a record of its own, as a link is.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &str,
        kind: crate::format::SpecialKind,
        mode: u32,
        rdev: u64,
        owner: Owner,
    ) -> Result<Attr, FsError> {
        let (key, volume) = self.new_name(parent, name).await?;
        if volume.index().node(&key.path).is_some() || self.pending_at(&key) {
            return Err(FsError::Exists);
        }
        let special = crate::format::Special { kind, rdev };
        volume
            .mknod(&key.path, special, mode, now_ns(), owner, false)
            .await?;
        self.dir_times.name_changed(&key);
        Ok(self.count_lookup(self.attr_of(&key).await?))
    }

    /// The owner a record gives what user `uid` of group `gid` makes: none of its own
    /// for the mounting user's (so it belongs to whoever mounts).
    pub fn owner_of(&self, uid: u32, gid: u32) -> Owner {
        Owner {
            uid: (uid != self.config.uid).then_some(uid),
            gid: (gid != self.config.gid).then_some(gid),
        }
    }

    /// Where a new file, link or special file `name` in `parent` goes, and its
    /// channel's volume: a writable mount, a valid name, a channel (not the root).
    pub(super) async fn new_name(
        &self,
        parent: u64,
        name: &str,
    ) -> Result<(NodeKey, Arc<crate::volume::Volume>), FsError> {
        self.writable()?;
        check_name(name)?;
        if parent == ROOT {
            return Err(FsError::NotPermitted(
                "files live in channels: the root holds only channel folders".into(),
            ));
        }
        let key = self.key_of(parent)?.child(name);
        let volume = self.volume(key.channel).await?;
        crate::format::validate_path(&key.path).map_err(|e| FsError::InvalidName(e.to_string()))?;
        Ok((key, volume))
    }

    /// `readlink`: the target of the link `ino` (EINVAL for anything else).
    pub async fn readlink(&self, ino: u64) -> Result<String, FsError> {
        let key = self.key_of(ino)?;
        if key.path.is_empty() || self.session(&key).is_some() {
            return Err(FsError::InvalidName("not a symbolic link".into()));
        }
        let volume = self.volume(key.channel).await?;
        match volume.index().node(&key.path) {
            Some(Node::File(file)) => file
                .symlink
                .clone()
                .ok_or_else(|| FsError::InvalidName("not a symbolic link".into())),
            Some(Node::Dir(_)) => Err(FsError::InvalidName("not a symbolic link".into())),
            None => Err(FsError::NotFound),
        }
    }

    /// `unlink`.
    pub async fn unlink(&self, parent: u64, name: &str) -> Result<(), FsError> {
        self.writable()?;
        check_name(name)?;
        if parent == ROOT {
            return Err(FsError::IsADirectory);
        }
        let key = self.key_of(parent)?.child(name);
        let volume = self.volume(key.channel).await?;
        if self.write_back.folders.attrs(&key).is_some() {
            return Err(FsError::IsADirectory);
        }
        // An upload of the file may be under way (write-back): let it land first, so
        // that the removal below removes it, and no upload brings it back after.
        let pending = self.session(&key);
        let _quiet = match &pending {
            Some(session) => Some(session.exclusive().await),
            None => None,
        };
        let stored = match volume.index().node(&key.path) {
            Some(Node::Dir(_)) => return Err(FsError::IsADirectory),
            Some(Node::File(_)) => true,
            None => false,
        };
        if !stored && pending.is_none() {
            return Err(FsError::NotFound);
        }
        // The stored version goes first: if its removal fails, the file stays as it
        // was, its waiting content included.
        if stored {
            volume.remove(&key.path, false).await?;
        }
        let session = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        if let Some(session) = &session {
            // Open files that are unlinked are not uploaded any more.
            self.drop_unlinked(session);
        }
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.dir_times.name_changed(&key);
        Ok(())
    }

    /// `rmdir`: an empty folder; at the root, an empty channel, and only when the mount
    /// allows deleting channels, no file moved from it to another channel still keeps
    /// its bytes there and nobody else has messages in it (`ENOTEMPTY`, with a log line
    /// saying why; see [`crate::volume::Volume::channel_deletable`]).
    pub async fn rmdir(&self, parent: u64, name: &str) -> Result<(), FsError> {
        self.writable()?;
        check_name(name)?;
        if parent == ROOT {
            let channel = self.channel_named(name).await?;
            if !self.config.allow_delete_channels {
                return Err(FsError::NotPermitted(format!(
                    "deleting channel #{name} needs --allow-delete-channels"
                )));
            }
            let volume = self.volume(channel.id).await?;
            match volume.channel_deletable().await {
                Ok(()) => {}
                Err(ChannelKept::NotEmpty) => return Err(FsError::NotEmpty),
                Err(ChannelKept::MovedFilesUseIt(holders)) => {
                    let names: Vec<String> = holders
                        .iter()
                        .map(|&id| {
                            self.channel_by_id(id)
                                .map_or(id.to_string(), |c| format!("#{}", c.name))
                        })
                        .collect();
                    log::warn!(
                        "not deleting channel #{name}: files moved from it to {} still keep \
                         their bytes in it",
                        names.join(", ")
                    );
                    return Err(FsError::NotEmpty);
                }
                Err(ChannelKept::OthersMessages(author)) => {
                    log::warn!(
                        "not deleting channel #{name}: it holds messages of others (user \
                         {author}, at least), which deleting it would delete too"
                    );
                    return Err(FsError::NotEmpty);
                }
                Err(ChannelKept::CantTell(why)) => {
                    log::warn!(
                        "not deleting channel #{name}: can't tell whether it may go ({why})"
                    );
                    return Err(FsError::Io(why));
                }
            }
            self.store.delete_channel(channel.id).await?;
            self.volumes.forget(channel.id);
            self.list_channels(true).await?;
            return Ok(());
        }
        let key = self.key_of(parent)?.child(name);
        let volume = self.volume(key.channel).await?;
        let stored = match volume.index().node(&key.path) {
            Some(Node::Dir(_)) => true,
            Some(Node::File(_)) => return Err(FsError::NotADirectory),
            None => false,
        };
        if !stored && self.write_back.folders.attrs(&key).is_none() {
            return Err(FsError::NotFound);
        }
        if volume.index().live_under(&key.path).next().is_some() || self.pending_under(&key) {
            return Err(FsError::NotEmpty);
        }
        // A folder whose record waits just goes (waiting for a post of it under way,
        // after which the store has it).
        self.write_back.folders.remove(&key).await;
        if volume.index().node(&key.path).is_some() {
            volume.remove(&key.path, false).await?;
        }
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.dir_times.forget(&key);
        self.dir_times.name_changed(&key);
        Ok(())
    }

    /// The checks `rename` and `RENAME_EXCHANGE` share, and the keys of `name` in
    /// `parent` and `new_name` in `new_parent`: the mount writable, both names valid,
    /// neither at the top level (channels can't be `verb` through the mount).
    pub(super) fn moved_keys(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        verb: &str,
    ) -> Result<(NodeKey, NodeKey), FsError> {
        self.writable()?;
        check_name(name)?;
        check_name(new_name)?;
        if parent == ROOT || new_parent == ROOT {
            return Err(FsError::NotPermitted(format!(
                "channels can't be {verb} through the mount"
            )));
        }
        Ok((
            self.key_of(parent)?.child(name),
            self.key_of(new_parent)?.child(new_name),
        ))
    }

    /// `rename`: one record pointing at the same chunks within a channel; across
    /// channels a move ([`crate::volume::Volume::move_to`]: a record in each, the chunks
    /// stay where they are). Either way the inode numbers go along, and a file being
    /// written moves with its session (its next upload lands under the new name, in the
    /// new channel).
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> Result<(), FsError> {
        let (from, to) = self.moved_keys(parent, name, new_parent, new_name, "renamed")?;
        let volume = self.volume(from.channel).await?;
        let dest = if to.channel == from.channel {
            volume.clone()
        } else {
            self.volume(to.channel).await?
        };
        crate::format::validate_path(&to.path).map_err(|e| FsError::InvalidName(e.to_string()))?;
        let target_stored = dest.index().node(&to.path).is_some();
        let target_exists = target_stored || self.pending_at(&to);
        if no_replace && target_exists {
            return Err(FsError::Exists);
        }
        let target_pending_folder = self.write_back.folders.attrs(&to).is_some();
        let target_is_full_folder = {
            let index = dest.index();
            (matches!(index.node(&to.path), Some(Node::Dir(_))) || target_pending_folder)
                && (index.live_under(&to.path).next().is_some() || self.pending_under(&to))
        };
        if target_is_full_folder {
            return Err(FsError::NotEmpty);
        }
        let session = self.session(&from);
        let from_was_linked = volume
            .index()
            .file(&from.path)
            .is_some_and(|f| f.node.is_some());
        let from_is_folder = session.is_none()
            && (matches!(volume.index().node(&from.path), Some(Node::Dir(_)))
                || self.write_back.folders.attrs(&from).is_some());
        if target_pending_folder && !from_is_folder {
            return Err(FsError::IsADirectory);
        }
        // An upload of the file under its old name may be under way: let it finish
        // (and keep writes out) so that the name it lands under is then moved too. For
        // a folder, the same for every file being written under it, and its folders
        // whose record waits are held, so that nothing lands under the old name.
        let moving = self.sessions_moving(&from, session.as_ref());
        // A file waiting for its upload under the new name is replaced: its upload must
        // not land after the rename (nor be under way while it runs).
        let replaced_target = self
            .session(&to)
            .filter(|target| !moving.iter().any(|s| Arc::ptr_eq(s, target)));
        let mut locked: Vec<&Arc<WriteSession>> =
            moving.iter().chain(replaced_target.as_ref()).collect();
        locked.sort_by_key(|s| s.spool_id());
        let mut quiet = Vec::with_capacity(locked.len());
        for session in locked {
            quiet.push(session.exclusive().await);
        }
        let held = if from_is_folder {
            self.write_back.folders.hold_for_rename(&from).await
        } else {
            Vec::new()
        };
        let moved = async {
            if target_pending_folder {
                self.write_back.folders.remove(&to).await;
            }
            if volume.index().node(&from.path).is_some() {
                volume.move_to(&from.path, &dest, &to.path).await?;
            } else if moving.is_empty() && held.is_empty() {
                return Err(FsError::NotFound);
            } else if !from_is_folder && matches!(dest.index().node(&to.path), Some(Node::File(_)))
            {
                // A file not stored yet over a stored one: the stored one goes now, so
                // that it can't come back (after a crash before the upload, say).
                dest.remove(&to.path, false).await?;
            }
            Ok(())
        }
        .await;
        self.write_back
            .folders
            .renamed(&held, moved.is_ok().then_some((&from, &to)));
        moved?;
        if let Some(target) = &replaced_target {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if sessions.get(&to).is_some_and(|s| Arc::ptr_eq(s, target)) {
                sessions.remove(&to);
            }
            drop(sessions);
            self.drop_unlinked(target);
        }
        for session in &moving {
            let old = session.key();
            let new = NodeKey::new(
                to.channel,
                format!("{}{}", to.path, &old.path[from.path.len()..]),
            );
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.remove(&old);
            let replaced = sessions.insert(new.clone(), session.clone());
            drop(sessions);
            if let Some(replaced) = replaced {
                self.drop_unlinked(&replaced);
            }
            let base = dest.index().version_of(&new.path);
            session.moved_to(new, base);
        }
        drop(quiet);
        {
            let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            inodes.rename(&from, &to);
            if to.channel != from.channel && from_was_linked {
                // It arrives as a file of one name: the number stays with the names
                // left behind, and it gets one of its own at its next lookup.
                inodes.remove(&to);
            }
        }
        self.dir_times.name_changed(&from);
        self.dir_times.name_changed(&to);
        self.dir_times.forget(&from);
        Ok(())
    }

    /// The write sessions a rename of `from` moves: its own (`session`, for a file),
    /// or those of every file under it (a folder), in the order their content locks
    /// are taken in ([`WriteSession::commit_small`]'s).
    fn sessions_moving(
        &self,
        from: &NodeKey,
        session: Option<&Arc<WriteSession>>,
    ) -> Vec<Arc<WriteSession>> {
        if let Some(session) = session {
            return vec![session.clone()];
        }
        let mut under: Vec<Arc<WriteSession>> = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(key, _)| key.is_within(from))
            .map(|(_, session)| session.clone())
            .collect();
        under.sort_by_key(|s| s.spool_id());
        under
    }
}
