//! A persistent on-disk cache of fetched ciphertext blocks, bounded by the bytes it
//! holds and evicted least recently used first.
//!
//! Chunks are sealed as 64 KiB segments, each authenticated on its own, so a read needs
//! only the segments it covers. The segments fetched are kept here, still sealed, so
//! that re-reading a file — also after a remount, or from the CLI — downloads nothing.
//! Reads through a mount fill it; `get` only reads it (the file it writes is the copy,
//! and filling the cache too would write every byte twice).
//! A block is a byte range of one attachment ([`BlockKey`]); attachments never change
//! once stored, so a block's bytes never go stale, and attachment ids (the store's
//! snowflakes) are unique within a store, so one folder serves one store.
//!
//! ## Why keeping it on disk is safe
//!
//! No plaintext is ever stored: the bytes are exactly what the store served, sealed
//! under the volume's key, and the caller authenticates them on every read, exactly as
//! if they had just been downloaded. A damaged or tampered file therefore can't yield
//! wrong data: authentication fails, the caller [`DiskCache::remove`]s the block and
//! fetches it again. What the cache does *not* hide from someone who can read the
//! folder: which attachments (and which ranges of them) were read, roughly when (the
//! files' mtimes), and their sizes. The folder is created mode 0700 and the files 0600.
//!
//! ## Layout
//!
//! `dir/<attachment % 256 as 2 hex digits>/<attachment>-<offset>-<len>`, numbers in
//! decimal, so that no folder gets huge. A block is written to a temp file in its shard
//! (`.tmp-<pid>-<n>`, mode 0600) and renamed into place, so a reader only ever sees a
//! whole file. Files are not synced: after a power cut a block may be short (removed
//! at open or on read, since its length is in its name) or garbage of the right length
//! (caught by authentication). [`DiskCache::open`] parses the names back and rebuilds
//! the LRU, oldest mtime first; inside the shards it removes files it can't parse, of
//! the wrong length, and temp files older than a minute (leftovers of a crash; a
//! younger one may be another process's write in progress). Anything else in `dir` is
//! left alone.
//!
//! ## Recency and accounting
//!
//! The LRU lives in memory (the `lru` crate), keyed by block, under one mutex. Block
//! contents are read and written outside the lock; only the metadata operations that
//! must agree with the in-memory LRU (renaming a block into place, unlinking the
//! evicted ones) happen under it, so within one process the accounting is exact. A
//! read marks the block recently used in memory and sets the file's mtime (at most once
//! a minute per block, to keep reads cheap), which is how the order survives a
//! restart — to within that minute.
//!
//! ## Several processes on one folder
//!
//! A mount and a CLI command may use the same folder at once. That is safe: files
//! appear by atomic rename, a file evicted by the other process is just a miss (and is
//! forgotten), a block the other process stored is found by `get` and adopted, and a
//! file vanishing at any point is tolerated. The capacity is then approximate: each
//! process accounts for the blocks it stored, read or found at open, so the folder may
//! hold more than the capacity until the next `open` trims it.
//!
//! The cache is an optimisation, never a reason a read fails: `put` and `get` swallow
//! I/O errors (the first one is logged as a warning, the rest at debug level).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lru::LruCache;

/// How often at most a read of a block sets its file's mtime.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// How old a temp file must be for `open` to take it for a crash's leftover.
const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// How temp files' names start (no block's name does).
const TEMP_PREFIX: &str = ".tmp-";

/// Numbers temp files uniquely within this process (with the pid, across processes).
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// One cached block: a byte range of one attachment (ids are the store's snowflakes,
/// unique within a store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub attachment: u64,
    pub offset: u64,
    pub len: u32,
}

/// Where the cache lives and how much it may hold. Defaults are the caller's to choose.
#[derive(Debug, Clone)]
pub struct DiskCacheConfig {
    pub dir: PathBuf,
    /// The most bytes of blocks kept (block contents only; the file system's own
    /// overhead per file isn't counted). Approximate when several processes share `dir`.
    pub capacity_bytes: u64,
}

/// What the LRU remembers of a block (its size is its key's `len`).
struct Entry {
    /// When this process last set the file's mtime (`None`: not yet).
    touched: Option<Instant>,
}

struct State {
    lru: LruCache<BlockKey, Entry>,
    bytes: u64,
    /// The blocks of each attachment, by offset (to find one that covers a range).
    spans: HashMap<u64, BTreeMap<u64, u32>>,
}

impl State {
    /// Adds `key` as the most recently used block (or marks it so).
    fn insert(&mut self, key: BlockKey, touched: Option<Instant>) {
        if self.lru.put(key, Entry { touched }).is_none() {
            self.bytes += u64::from(key.len);
            let spans = self.spans.entry(key.attachment).or_default();
            let len = spans.entry(key.offset).or_insert(key.len);
            *len = (*len).max(key.len);
        }
    }

    /// Forgets `key`; whether it was known.
    fn forget(&mut self, key: &BlockKey) -> bool {
        let known = self.lru.pop(key).is_some();
        if known {
            self.bytes -= u64::from(key.len);
            self.unindex(key);
        }
        known
    }

    /// Drops `key` from the spans. (A shorter block at the same offset, if another
    /// process left one, is then found by its exact key only: a miss at worst.)
    fn unindex(&mut self, key: &BlockKey) {
        if let Some(spans) = self.spans.get_mut(&key.attachment) {
            if spans.get(&key.offset) == Some(&key.len) {
                spans.remove(&key.offset);
            }
            if spans.is_empty() {
                self.spans.remove(&key.attachment);
            }
        }
    }

    /// A block of `attachment` that holds all of `range`, if one is known.
    fn covering(&self, attachment: u64, range: &Range<u64>) -> Option<BlockKey> {
        let spans = self.spans.get(&attachment)?;
        spans
            .range(..=range.start)
            .rev()
            .map(|(&offset, &len)| BlockKey {
                attachment,
                offset,
                len,
            })
            .find(|k| k.offset + u64::from(k.len) >= range.end)
    }

    /// Takes least recently used blocks off until at most `capacity` bytes are held.
    fn pop_over(&mut self, capacity: u64) -> Vec<BlockKey> {
        let mut victims = Vec::new();
        while self.bytes > capacity {
            let Some((key, _)) = self.lru.pop_lru() else {
                break;
            };
            self.bytes -= u64::from(key.len);
            self.unindex(&key);
            victims.push(key);
        }
        victims
    }
}

/// The cache. `Send + Sync`; share it behind an `Arc`. Its methods do blocking I/O:
/// call them from the blocking pool.
pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
    /// Whether an I/O failure was logged as a warning already.
    warned: AtomicBool,
    /// [`TOUCH_INTERVAL`], shorter in tests.
    touch_interval: Duration,
}

/// What reading a block's file found.
enum Loaded {
    Block(File, Vec<u8>),
    WrongLength,
}

impl DiskCache {
    /// Opens (creating, mode 0700) the folder and rebuilds the LRU from what is there
    /// (oldest mtime = least recently used), evicting down to capacity; removes leftover
    /// temp files and files it can't account for inside its shards.
    pub fn open(config: DiskCacheConfig) -> io::Result<DiskCache> {
        let DiskCacheConfig {
            dir,
            capacity_bytes,
        } = config;
        create_dir(&dir).map_err(|e| context(e, "creating", &dir))?;
        let mut found = scan(&dir)?;
        found.sort_unstable_by_key(|(mtime, key)| (*mtime, key.attachment, key.offset, key.len));
        let mut state = State {
            lru: LruCache::unbounded(),
            bytes: 0,
            spans: HashMap::new(),
        };
        for (_, key) in found {
            state.insert(key, None);
        }
        let cache = DiskCache {
            dir,
            capacity: capacity_bytes,
            state: Mutex::new(state),
            warned: AtomicBool::new(false),
            touch_interval: TOUCH_INTERVAL,
        };
        cache.evict(&mut cache.lock());
        Ok(cache)
    }

    /// The block's bytes if cached and exactly `key.len` long (a file of another length
    /// is removed and `None` returned); marks it recently used.
    pub fn get(&self, key: &BlockKey) -> Option<Vec<u8>> {
        let path = self.block_path(key);
        let (file, data) = match read_block(&path, key.len) {
            Ok(Loaded::Block(file, data)) => (file, data),
            Ok(Loaded::WrongLength) => {
                log::debug!(
                    "disk cache: {} has the wrong length, removed",
                    path.display()
                );
                self.remove(key);
                return None;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Never stored, or evicted by another process.
                self.lock().forget(key);
                return None;
            }
            Err(e) => {
                self.failed("reading", &path, &e);
                return None;
            }
        };
        if self.note_read(key, &path) {
            if let Err(e) = file.set_modified(SystemTime::now()) {
                log::debug!("disk cache: touching {}: {e}", path.display());
            }
        }
        Some(data)
    }

    /// Bytes `range` of `attachment`, if a cached block holds them all: that block's key
    /// (to [`DiskCache::remove`] it if they turn out damaged) and the bytes. Marks the
    /// block recently used.
    pub fn get_range(&self, attachment: u64, range: Range<u64>) -> Option<(BlockKey, Vec<u8>)> {
        let key = self.lock().covering(attachment, &range)?;
        let path = self.block_path(&key);
        match read_part(
            &path,
            key.len,
            range.start - key.offset,
            range.end - range.start,
        ) {
            Ok(Some((file, data))) => {
                if self.note_read(&key, &path) {
                    if let Err(e) = file.set_modified(SystemTime::now()) {
                        log::debug!("disk cache: touching {}: {e}", path.display());
                    }
                }
                Some((key, data))
            }
            Ok(None) => {
                log::debug!(
                    "disk cache: {} has the wrong length, removed",
                    path.display()
                );
                self.remove(&key);
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.lock().forget(&key);
                None
            }
            Err(e) => {
                self.failed("reading", &path, &e);
                None
            }
        }
    }

    /// Stores a block (`data.len() == key.len`) atomically, then evicts least recently
    /// used blocks until within capacity. A block larger than the capacity isn't kept.
    /// Failures are logged and swallowed.
    pub fn put(&self, key: &BlockKey, data: &[u8]) {
        let path = self.block_path(key);
        if data.len() != key.len as usize {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} bytes given for a block of {}", data.len(), key.len),
            );
            self.failed("storing", &path, &e);
            return;
        }
        if u64::from(key.len) > self.capacity {
            return;
        }
        let temp = match write_temp(&path, data) {
            Ok(temp) => temp,
            Err(e) => {
                self.failed("writing", &path, &e);
                return;
            }
        };
        let mut state = self.lock();
        if let Err(e) = fs::rename(&temp, &path) {
            drop(state);
            remove_quietly(&temp);
            self.failed("renaming into", &path, &e);
            return;
        }
        state.insert(*key, Some(Instant::now()));
        self.evict(&mut state);
    }

    /// Forgets a block (the caller found it damaged) and removes its file.
    pub fn remove(&self, key: &BlockKey) {
        let mut state = self.lock();
        state.forget(key);
        remove_quietly(&self.block_path(key));
    }

    /// Bytes held (as far as this process knows).
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Blocks held (as far as this process knows).
    pub fn blocks(&self) -> usize {
        self.lock().lru.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn block_path(&self, key: &BlockKey) -> PathBuf {
        self.dir
            .join(shard_name(key.attachment))
            .join(block_name(key))
    }

    /// Marks a block just read as recently used; whether its mtime should be set now.
    /// A block this process didn't know of (stored by another) is adopted if its file
    /// is still there.
    fn note_read(&self, key: &BlockKey, path: &Path) -> bool {
        let mut state = self.lock();
        if let Some(entry) = state.lru.get_mut(key) {
            let due = entry
                .touched
                .is_none_or(|at| at.elapsed() >= self.touch_interval);
            if due {
                entry.touched = Some(Instant::now());
            }
            return due;
        }
        if !path.exists() {
            return false;
        }
        state.insert(*key, Some(Instant::now()));
        self.evict(&mut state);
        true
    }

    /// Evicts least recently used blocks until within capacity (their files are
    /// unlinked under the lock, so that a concurrent `put` of one can't be undone).
    fn evict(&self, state: &mut State) {
        for victim in state.pop_over(self.capacity) {
            remove_quietly(&self.block_path(&victim));
        }
    }

    /// Logs an I/O failure: the first as a warning, the rest at debug level.
    fn failed(&self, what: &str, path: &Path, error: &io::Error) {
        if self.warned.swap(true, Ordering::Relaxed) {
            log::debug!("disk cache: {what} {}: {error}", path.display());
        } else {
            log::warn!(
                "disk cache: {what} {}: {error} (the block is fetched instead; further \
                 cache failures are logged at debug level)",
                path.display()
            );
        }
    }
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .field("bytes", &self.bytes())
            .field("blocks", &self.blocks())
            .finish()
    }
}

/// The shard folder of an attachment's blocks.
fn shard_name(attachment: u64) -> String {
    format!("{:02x}", attachment % 256)
}

/// A shard folder's number, if `name` is one.
fn parse_shard(name: &str) -> Option<u64> {
    let value = u64::from_str_radix(name, 16).ok()?;
    (value < 256 && shard_name(value) == name).then_some(value)
}

fn block_name(key: &BlockKey) -> String {
    format!("{}-{}-{}", key.attachment, key.offset, key.len)
}

/// The block a file is named for, if the name is exactly what [`block_name`] makes.
fn parse_block_name(name: &str) -> Option<BlockKey> {
    let mut parts = name.split('-');
    let key = BlockKey {
        attachment: parts.next()?.parse().ok()?,
        offset: parts.next()?.parse().ok()?,
        len: parts.next()?.parse().ok()?,
    };
    (parts.next().is_none() && block_name(&key) == name).then_some(key)
}

fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// An I/O error saying what was being done to which path.
fn context(error: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("disk cache: {what} {}: {error}", path.display()),
    )
}

/// Removes a file, tolerating its absence (another process may have removed it).
fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::debug!("disk cache: removing {}: {e}", path.display()),
    }
}

/// Reads a block's file, at most `len + 1` bytes of it.
fn read_block(path: &Path, len: u32) -> io::Result<Loaded> {
    let file = File::open(path)?;
    if file.metadata()?.len() != u64::from(len) {
        return Ok(Loaded::WrongLength);
    }
    let mut data = Vec::with_capacity(len as usize);
    (&file).take(u64::from(len) + 1).read_to_end(&mut data)?;
    if data.len() != len as usize {
        return Ok(Loaded::WrongLength);
    }
    Ok(Loaded::Block(file, data))
}

/// `len` bytes at `at` of the block file at `path`, which must be `block_len` long;
/// `None` if it isn't.
fn read_part(
    path: &Path,
    block_len: u32,
    at: u64,
    len: u64,
) -> io::Result<Option<(File, Vec<u8>)>> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path)?;
    if file.metadata()?.len() != u64::from(block_len) || at + len > u64::from(block_len) {
        return Ok(None);
    }
    let mut data = vec![0; len as usize];
    file.read_exact_at(&mut data, at)?;
    Ok(Some((file, data)))
}

/// Writes `data` to a new temp file beside `path` (creating the shard folder if need
/// be); the temp file's path.
fn write_temp(path: &Path, data: &[u8]) -> io::Result<PathBuf> {
    let shard = path.parent().unwrap_or(Path::new("."));
    create_dir(shard)?;
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let temp = shard.join(format!("{TEMP_PREFIX}{}-{seq}", std::process::id()));
    let written = write_new(&temp, data);
    if written.is_err() {
        remove_quietly(&temp);
    }
    written.map(|()| temp)
}

fn write_new(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    // The kernel stamps writes with a coarse clock; an exact mtime keeps the order of
    // blocks stored in quick succession for the next `open`.
    file.set_modified(SystemTime::now())
}

/// The blocks in `dir`'s shards, with their mtimes; removes what doesn't belong there.
fn scan(dir: &Path) -> io::Result<Vec<(SystemTime, BlockKey)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| context(e, "reading", dir))? {
        let entry = entry.map_err(|e| context(e, "reading", dir))?;
        let Some(shard) = entry.file_name().to_str().and_then(parse_shard) else {
            continue;
        };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            scan_shard(&entry.path(), shard, &mut found)?;
        }
    }
    Ok(found)
}

fn scan_shard(
    shard_dir: &Path,
    shard: u64,
    found: &mut Vec<(SystemTime, BlockKey)>,
) -> io::Result<()> {
    let entries = match fs::read_dir(shard_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(e, "reading", shard_dir)),
    };
    let now = SystemTime::now();
    for entry in entries {
        let entry = entry.map_err(|e| context(e, "reading", shard_dir))?;
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Some(block) = scan_file(&entry.path(), shard, now) {
            found.push(block);
        }
    }
    Ok(())
}

/// One regular file in a shard: the block it holds, or `None` (and removed if it is a
/// stale temp file, unparseable, in the wrong shard or of the wrong length).
fn scan_file(path: &Path, shard: u64, now: SystemTime) -> Option<(SystemTime, BlockKey)> {
    let name = path.file_name()?.to_string_lossy();
    let metadata = fs::metadata(path).ok()?;
    let mtime = metadata.modified().unwrap_or(UNIX_EPOCH);
    if name.starts_with(TEMP_PREFIX) {
        let stale = now
            .duration_since(mtime)
            .is_ok_and(|age| age >= STALE_TEMP_AGE);
        if stale {
            remove_quietly(path);
        }
        return None;
    }
    let key = parse_block_name(&name).filter(|key| key.attachment % 256 == shard);
    match key {
        Some(key) if metadata.len() == u64::from(key.len) => Some((mtime, key)),
        _ => {
            log::debug!("disk cache: removing {}", path.display());
            remove_quietly(path);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(attachment: u64, offset: u64, len: u32) -> BlockKey {
        BlockKey {
            attachment,
            offset,
            len,
        }
    }

    /// Deterministic bytes for a block.
    fn data(key: &BlockKey) -> Vec<u8> {
        (0..key.len)
            .map(|i| (key.attachment as u32 ^ key.offset as u32 ^ i.wrapping_mul(31)) as u8)
            .collect()
    }

    fn open(dir: &Path, capacity_bytes: u64) -> DiskCache {
        let mut cache = DiskCache::open(DiskCacheConfig {
            dir: dir.to_path_buf(),
            capacity_bytes,
        })
        .expect("cache opens");
        cache.touch_interval = Duration::ZERO;
        cache
    }

    fn put(cache: &DiskCache, key: &BlockKey) {
        cache.put(key, &data(key));
    }

    /// Keeps mtimes (set from the wall clock) strictly ordered between steps.
    fn tick() {
        std::thread::sleep(Duration::from_millis(5));
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<DiskCache>();
    }

    #[test]
    fn a_range_is_read_from_a_block_that_covers_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open(dir.path(), 1000);
        let run = key(9, 100, 300);
        put(&cache, &run);
        let (found, bytes) = cache.get_range(9, 150..250).expect("covered");
        assert_eq!(found, run);
        assert_eq!(bytes, data(&run)[50..150]);
        assert_eq!(cache.get_range(9, 100..400).unwrap().1, data(&run));
        assert!(
            cache.get_range(9, 50..150).is_none(),
            "starts before the block"
        );
        assert!(cache.get_range(9, 350..401).is_none(), "ends after it");
        assert!(cache.get_range(8, 150..250).is_none(), "another attachment");
        // After a reopen too; and not once it is removed.
        drop(cache);
        let cache = open(dir.path(), 1000);
        assert!(cache.get_range(9, 150..250).is_some());
        cache.remove(&run);
        assert!(cache.get_range(9, 150..250).is_none());
        // A file cut short is a miss, and is dropped.
        put(&cache, &run);
        let path = cache.block_path(&run);
        std::fs::write(&path, &data(&run)[..299]).unwrap();
        assert!(cache.get_range(9, 150..250).is_none());
        assert_eq!(cache.blocks(), 0);
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("cache");
        let cache = open(&root, 1 << 20);
        let a = key(1234567890123, 65552, 100);
        assert_eq!(cache.get(&a), None);
        put(&cache, &a);
        assert_eq!(cache.get(&a), Some(data(&a)));
        assert_eq!((cache.bytes(), cache.blocks()), (100, 1));
        let path = root
            .join(shard_name(a.attachment))
            .join("1234567890123-65552-100");
        assert_eq!(fs::read(&path).expect("block file"), data(&a));
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&path), 0o600);
        // Another range of the same attachment is another block.
        assert_eq!(cache.get(&key(a.attachment, 0, 100)), None);
        // Putting it again changes nothing.
        put(&cache, &a);
        assert_eq!((cache.bytes(), cache.blocks()), (100, 1));
        cache.remove(&a);
        assert_eq!(cache.get(&a), None);
        assert!(!path.exists());
        assert_eq!((cache.bytes(), cache.blocks()), (0, 0));
    }

    #[test]
    fn wrong_sized_data_is_not_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open(dir.path(), 1000);
        let a = key(1, 0, 10);
        cache.put(&a, &[0; 9]);
        assert_eq!(cache.get(&a), None);
        assert_eq!(cache.blocks(), 0);
    }

    #[test]
    fn evicts_least_recently_used_by_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open(dir.path(), 30);
        let [a, b, c, d] = [key(1, 0, 10), key(2, 0, 10), key(3, 0, 10), key(4, 0, 10)];
        for k in [&a, &b, &c] {
            put(&cache, k);
        }
        assert_eq!(cache.bytes(), 30);
        assert!(cache.get(&a).is_some()); // a is now the most recent; b the least
        put(&cache, &d);
        assert_eq!(cache.get(&b), None);
        assert!(!cache.block_path(&b).exists());
        for k in [&a, &c, &d] {
            assert_eq!(cache.get(k), Some(data(k)));
        }
        // A bigger block pushes out as many as it needs, oldest first (a, then c).
        let e = key(5, 0, 20);
        put(&cache, &e);
        assert_eq!(cache.get(&a), None);
        assert_eq!(cache.get(&c), None);
        assert!(cache.get(&d).is_some() && cache.get(&e).is_some());
        assert_eq!((cache.bytes(), cache.blocks()), (30, 2));
    }

    #[test]
    fn reopen_keeps_blocks_and_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let [a, b, c] = [key(1, 0, 10), key(2, 0, 10), key(3, 0, 10)];
        {
            let cache = open(dir.path(), 30);
            for k in [&a, &b, &c] {
                put(&cache, k);
                tick();
            }
            assert!(cache.get(&a).is_some()); // order now b, c, a
            tick();
        }
        {
            let cache = open(dir.path(), 30);
            assert_eq!((cache.bytes(), cache.blocks()), (30, 3));
            put(&cache, &key(4, 0, 10)); // evicts b
            assert_eq!(cache.get(&b), None);
            assert!(cache.get(&c).is_some() && cache.get(&a).is_some());
            tick();
        }
        // Reopening with a smaller capacity evicts the oldest: of d, c, a, keep a.
        let cache = open(dir.path(), 15);
        assert_eq!((cache.bytes(), cache.blocks()), (10, 1));
        assert_eq!(cache.get(&a), Some(data(&a)));
        assert!(!cache.block_path(&c).exists());
    }

    #[test]
    fn wrong_length_file_is_a_miss_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open(dir.path(), 1000);
        let [a, b] = [key(1, 0, 10), key(2, 0, 10)];
        put(&cache, &a);
        put(&cache, &b);
        let file = OpenOptions::new()
            .write(true)
            .open(cache.block_path(&a))
            .expect("open block");
        file.set_len(5).expect("truncate");
        assert_eq!(cache.get(&a), None);
        assert!(!cache.block_path(&a).exists());
        assert_eq!((cache.bytes(), cache.blocks()), (10, 1));
        // Found at open: a longer file is removed too.
        fs::write(cache.block_path(&b), [0; 11]).expect("lengthen");
        drop(cache);
        let cache = open(dir.path(), 1000);
        assert_eq!(cache.blocks(), 0);
        assert!(!cache.block_path(&b).exists());
    }

    #[test]
    fn block_bigger_than_capacity_is_not_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open(dir.path(), 10);
        let small = key(1, 0, 10);
        put(&cache, &small);
        let big = key(2, 0, 11);
        put(&cache, &big);
        assert_eq!(cache.get(&big), None);
        assert!(!cache.block_path(&big).exists());
        assert_eq!(cache.get(&small), Some(data(&small)));
        let none = open(&dir.path().join("zero"), 0);
        put(&none, &small);
        assert_eq!((none.get(&small), none.blocks()), (None, 0));
    }

    #[test]
    fn open_removes_leftovers_and_strays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = open(dir.path(), 1000);
        let a = key(7, 0, 10);
        put(&cache, &a);
        drop(cache);
        let shard = dir.path().join(shard_name(7));
        let old_temp = shard.join(".tmp-1-1");
        let young_temp = shard.join(".tmp-2-1");
        let junk = shard.join("junk");
        let wrong_shard = shard.join("8-0-10");
        let padded = shard.join("7-00-10");
        for path in [&old_temp, &young_temp, &junk, &wrong_shard, &padded] {
            fs::write(path, [0; 10]).expect("write stray");
        }
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&old_temp)
            .and_then(|f| f.set_modified(hour_ago))
            .expect("age temp");
        let outside = dir.path().join("notes.txt");
        fs::write(&outside, b"mine").expect("write outside");

        let cache = open(dir.path(), 1000);
        assert_eq!(cache.blocks(), 1);
        assert_eq!(cache.get(&a), Some(data(&a)));
        for path in [&old_temp, &junk, &wrong_shard, &padded] {
            assert!(!path.exists(), "{} should be removed", path.display());
        }
        // A young temp file may be another process's write in progress; files outside
        // the shards aren't the cache's.
        assert!(young_temp.exists());
        assert!(outside.exists());
    }

    #[test]
    fn concurrent_puts_and_gets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capacity = 40 * 100;
        let cache = Arc::new(open(dir.path(), capacity));
        std::thread::scope(|scope| {
            for thread in 0..6u64 {
                let cache = Arc::clone(&cache);
                scope.spawn(move || {
                    for round in 0..200u64 {
                        let k = key((thread * 7 + round) % 60, round % 3, 100);
                        if let Some(bytes) = cache.get(&k) {
                            assert_eq!(bytes, data(&k));
                        } else {
                            put(&cache, &k);
                        }
                        if round % 50 == 0 {
                            cache.remove(&key(round % 60, 0, 100));
                        }
                    }
                });
            }
        });
        assert!(cache.bytes() <= capacity);
        // Within one process the accounting is exact: it matches the files.
        let mut on_disk = 0;
        for shard in fs::read_dir(dir.path()).expect("read dir") {
            for file in fs::read_dir(shard.expect("entry").path()).expect("read shard") {
                let file = file.expect("entry");
                assert!(!file.file_name().to_string_lossy().starts_with(TEMP_PREFIX));
                on_disk += file.metadata().expect("metadata").len();
            }
        }
        assert_eq!(on_disk, cache.bytes());
        assert_eq!(cache.bytes(), cache.blocks() as u64 * 100);
    }

    #[test]
    fn second_instance_on_the_same_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let [a, b] = [key(1, 0, 10), key(2, 0, 10)];
        let first = open(dir.path(), 1000);
        put(&first, &a);
        let second = open(dir.path(), 1000);
        assert_eq!(second.get(&a), Some(data(&a)));
        // A block the other instance stores later is found and adopted.
        put(&first, &b);
        assert_eq!(second.blocks(), 1);
        assert_eq!(second.get(&b), Some(data(&b)));
        assert_eq!((second.bytes(), second.blocks()), (20, 2));
        // One the other removes is a miss, and forgotten.
        first.remove(&a);
        assert_eq!(second.get(&a), None);
        assert_eq!((second.bytes(), second.blocks()), (10, 1));
        // Evicting a block the other instance knows of is tolerated too.
        second.remove(&b);
        assert_eq!(first.get(&b), None);
        first.remove(&b);
        assert_eq!((first.bytes(), first.blocks()), (0, 0));
    }
}
