//! The spool's bound: how many bytes the spool's data files may hold, and the wait of a
//! writer when they would hold more.
//!
//! Every spool data file is counted by its size (so a sparse file counts as if it were
//! written out): files being written, closed files waiting for their upload, those an
//! upload failed for (kept for the retries) and those a previous mount left. Writes
//! that make a file longer, and the fetch of an existing file's content into the spool
//! when it is opened to be changed in place, first ask for the room ([`SpoolBound::grow`]);
//! truncations, and the removal of a spool file once its upload is done, give room back.
//!
//! When the spool would go past the bound, the writer waits (a task waiting on a
//! [`Notify`], woken each time room is given back) — it doesn't fail, as a local disk
//! would with `ENOSPC`. While anyone waits, the write-back queue uploads what is
//! waiting now rather than after the settle time ([`SpoolBound::writers_waiting`], and
//! [`SpoolBound::pressed`] tells the queue when a writer begins to wait), and the log
//! says so (once, until the spool has been empty, or ten minutes later if it stays
//! full): "spool full (X MiB of Y MiB): writes wait for uploads".
//!
//! A writer waits only for what uploads can free: the spool files that no handle holds
//! open. A file still open never leaves the spool, whatever is uploaded (its session
//! ends only after its last close), so waiting for it could last forever: a writer
//! whose file is the only thing in the spool, or two writers that together pass the
//! bound, go on. So a single file larger than the bound is still written, and open
//! files never wait for each other or for their own upload; the bound caps what
//! closed files waiting for their upload add to what is being written.
//!
//! If uploads fail (the store is down), the files they were for stay in the spool and
//! writers go on waiting, until the retries land them: nothing is lost, and nothing
//! fails on its own, as with a full disk-backed cache of rclone. (A writer can be
//! killed; the files closed before stay in the spool for this mount's retries or the
//! next mount.) `ENOSPC` after a long wait was considered and left out: the wait ends
//! when the store is back, while an error would leave a half-copied tree to redo, and
//! a slow upload of one big file would draw the same error as a store that is down.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

const MIB: u64 = 1024 * 1024;
/// The default bound is at most this: larger than the bursts people write (a photo
/// import, a build's output, a 1 GiB copy never wait), small enough that what exists
/// only on this disk waiting for the store, and that unmounting uploads before it
/// returns, stays bounded (at Discord's pace of some 20 MiB/s per channel, 16 GiB is a
/// quarter of an hour).
pub const DEFAULT_MAX_CAP: u64 = 16 * 1024 * MIB;
/// The default bound is at least this, however full the disk: a few of the largest
/// chunks Discord takes (100 MiB), so that writing doesn't wait for every file.
pub const DEFAULT_MAX_FLOOR: u64 = 512 * MIB;
/// How often a spool that stays full says so in the log, at most.
const FULL_LOG_EVERY: Duration = Duration::from_secs(600);
/// The default bound when the free space can't be told.
const DEFAULT_MAX_UNKNOWN: u64 = 4 * 1024 * MIB;

/// The default bound for a spool in `dir`: half the free space of its file system now,
/// at most [`DEFAULT_MAX_CAP`] and at least [`DEFAULT_MAX_FLOOR`].
pub fn default_max(dir: &Path) -> u64 {
    default_for(free_space(dir))
}

/// The default bound for a spool on a file system with `free` bytes free (`None`: it
/// can't be told).
fn default_for(free: Option<u64>) -> u64 {
    match free {
        Some(free) => (free / 2).clamp(DEFAULT_MAX_FLOOR, DEFAULT_MAX_CAP),
        None => DEFAULT_MAX_UNKNOWN,
    }
}

/// Bytes free to unprivileged users on the file system holding `dir` (or, if it
/// doesn't exist yet, its nearest existing parent).
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut at = Some(dir);
    while let Some(path) = at {
        if path.exists() {
            let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
            let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: a NUL-terminated path and a statvfs to fill, both ours.
            if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
                return None;
            }
            return Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64));
        }
        at = path.parent();
    }
    None
}

/// `bytes` in MiB, for the log: "12 MiB", "0.3 MiB".
pub fn mib(bytes: u64) -> String {
    let mib = bytes as f64 / MIB as f64;
    if mib >= 10.0 || mib == mib.trunc() {
        format!("{mib:.0} MiB")
    } else {
        format!("{mib:.1} MiB")
    }
}

/// How full the spool is, for logs and `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolUsage {
    /// Bytes in the spool's data files.
    pub used: u64,
    /// The bound.
    pub max: u64,
    /// Of `used`, the bytes of files no handle holds open (what uploads can free).
    pub freeable: u64,
    /// Writers waiting for room.
    pub writers_waiting: usize,
}

/// One spool file's part.
#[derive(Debug, Clone, Copy)]
struct Charge {
    bytes: u64,
    /// A handle holds the file open: uploads won't free it.
    open: bool,
}

#[derive(Debug, Default)]
struct State {
    used: u64,
    /// Of `used`, the bytes of open files.
    open_bytes: u64,
    files: HashMap<String, Charge>,
    /// When "spool full" was logged, if the spool hasn't been empty since: a spool
    /// kept full by a long copy logs it once, then every [`FULL_LOG_EVERY`] at most.
    full_logged: Option<Instant>,
}

impl State {
    fn set(&mut self, id: &str, charge: Option<Charge>) {
        if let Some(old) = self.files.remove(id) {
            self.used -= old.bytes;
            if old.open {
                self.open_bytes -= old.bytes;
            }
        }
        if let Some(new) = charge {
            self.used += new.bytes;
            if new.open {
                self.open_bytes += new.bytes;
            }
            self.files.insert(id.to_string(), new);
        }
    }

    /// Whether file `id` may grow by `more` bytes now: if the spool stays within
    /// `max`, or if nothing in it could be freed by waiting (see the module docs).
    fn has_room(&self, more: u64, max: u64) -> bool {
        self.used.saturating_add(more) <= max || self.used == self.open_bytes
    }
}

/// The bound of one mount's spool, and what its files hold. See the module docs.
#[derive(Debug)]
pub struct SpoolBound {
    max: u64,
    state: Mutex<State>,
    /// Room was given back (or a file was opened: what could be freed changed).
    room: Notify,
    /// A writer began to wait.
    pressure: Notify,
    waiting: AtomicUsize,
}

impl SpoolBound {
    /// A bound of `max` bytes, with nothing counted yet.
    pub fn new(max: u64) -> Arc<SpoolBound> {
        Arc::new(SpoolBound {
            max,
            state: Mutex::default(),
            room: Notify::new(),
            pressure: Notify::new(),
            waiting: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bound, in bytes.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// How full the spool is.
    pub fn usage(&self) -> SpoolUsage {
        let state = self.lock();
        SpoolUsage {
            used: state.used,
            max: self.max,
            freeable: state.used - state.open_bytes,
            writers_waiting: self.waiting.load(Ordering::SeqCst),
        }
    }

    /// Counts spool file `id` as holding `bytes`, open or not (replacing what it was
    /// counted as). Never waits.
    pub fn track(&self, id: &str, bytes: u64, open: bool) {
        self.lock().set(id, Some(Charge { bytes, open }));
        self.room.notify_waiters();
    }

    /// Counts file `id` as holding `bytes` now (a truncation, or its size read back),
    /// open or not as before. Never waits.
    pub fn resize(&self, id: &str, bytes: u64) {
        let mut state = self.lock();
        if let Some(&Charge { open, .. }) = state.files.get(id) {
            state.set(id, Some(Charge { bytes, open }));
            self.room_given(&mut state);
        }
    }

    /// Whether file `id` is held open by a handle (so uploads won't free it).
    pub fn set_open(&self, id: &str, open: bool) {
        let mut state = self.lock();
        if let Some(&Charge { bytes, .. }) = state.files.get(id) {
            state.set(id, Some(Charge { bytes, open }));
            self.room_given(&mut state);
        }
    }

    /// File `id` left the spool (removed, or set aside).
    pub fn release(&self, id: &str) {
        let mut state = self.lock();
        state.set(id, None);
        self.room_given(&mut state);
    }

    /// Releases every file that no handle holds open and that `keep` doesn't name
    /// (those whose spool files are gone from the folder).
    pub fn release_closed_except(&self, keep: &dyn Fn(&str) -> bool) {
        let mut state = self.lock();
        let gone: Vec<String> = state
            .files
            .iter()
            .filter(|(id, charge)| !charge.open && !keep(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            state.set(&id, None);
        }
        self.room_given(&mut state);
    }

    /// After a change that may have made room: wakes the writers waiting.
    fn room_given(&self, state: &mut State) {
        if state.used == 0 && !self.writers_waiting() {
            state.full_logged = None;
        }
        self.room.notify_waiters();
    }

    /// Lets file `id` grow to `size` bytes if there is room now (see the module docs);
    /// false if it must wait ([`SpoolBound::grow`] waits).
    pub fn try_grow(&self, id: &str, size: u64) -> bool {
        let mut state = self.lock();
        self.grow_locked(&mut state, id, size)
    }

    fn grow_locked(&self, state: &mut State, id: &str, size: u64) -> bool {
        let charge = state.files.get(id).copied().unwrap_or(Charge {
            bytes: 0,
            open: true,
        });
        if size <= charge.bytes {
            return true;
        }
        if !state.has_room(size - charge.bytes, self.max) {
            return false;
        }
        state.set(
            id,
            Some(Charge {
                bytes: size,
                open: charge.open,
            }),
        );
        true
    }

    /// Lets file `id` grow to `size` bytes, waiting until there is room.
    pub async fn grow(&self, id: &str, size: u64) {
        if self.try_grow(id, size) {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        let mut told_queue = false;
        loop {
            // Registered before the look, so that no room given after it is missed.
            let room = self.room.notified();
            {
                let mut state = self.lock();
                if self.grow_locked(&mut state, id, size) {
                    log::debug!("spool: room for a write that waited");
                    return;
                }
                if state
                    .full_logged
                    .is_none_or(|at| at.elapsed() >= FULL_LOG_EVERY)
                {
                    state.full_logged = Some(Instant::now());
                    log::info!(
                        "spool full ({} of {}): writes wait for uploads",
                        mib(state.used),
                        mib(self.max)
                    );
                }
            }
            if !told_queue {
                told_queue = true;
                self.pressure.notify_one();
            }
            room.await;
        }
    }

    /// Whether writers wait for room (then the queue uploads what waits, now).
    pub fn writers_waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// Resolves once a writer begins to wait (or has begun since the last call).
    pub async fn pressed(&self) {
        self.pressure.notified().await;
    }
}

/// A writer counted as waiting, until it stops (also if its wait is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_counted_by_size_and_released() {
        let bound = SpoolBound::new(100);
        bound.track("a", 30, true);
        assert!(bound.try_grow("a", 50));
        assert!(bound.try_grow("a", 40), "shrinking by growing is a no-op");
        bound.track("b", 20, false);
        assert_eq!(
            bound.usage(),
            SpoolUsage {
                used: 70,
                max: 100,
                freeable: 20,
                writers_waiting: 0
            }
        );
        bound.resize("a", 10);
        bound.set_open("a", false);
        assert_eq!(bound.usage().freeable, 30);
        bound.release("a");
        bound.release("b");
        bound.release("unknown");
        assert_eq!(bound.usage().used, 0);
    }

    #[test]
    fn a_writer_waits_only_for_what_uploads_can_free() {
        let bound = SpoolBound::new(100);
        // Alone, a file may pass the bound.
        bound.track("big", 0, true);
        assert!(bound.try_grow("big", 250));
        // Another open file too: waiting for an open file could last forever.
        bound.track("other", 0, true);
        assert!(bound.try_grow("other", 10));
        // Once one is closed (its upload would free it), the other waits.
        bound.set_open("big", false);
        assert!(!bound.try_grow("other", 11));
        bound.release("big");
        assert!(bound.try_grow("other", 100));
    }

    #[test]
    fn files_whose_spool_is_gone_are_released() {
        let bound = SpoolBound::new(100);
        bound.track("open", 10, true);
        bound.track("kept", 20, false);
        bound.track("gone", 30, false);
        bound.release_closed_except(&|id| id == "kept");
        assert_eq!(bound.usage().used, 30);
    }

    #[tokio::test]
    async fn a_waiting_writer_goes_on_when_room_is_given_back() {
        let bound = SpoolBound::new(100);
        bound.track("closed", 80, false);
        bound.track("writer", 0, true);
        let pressed = tokio::spawn({
            let bound = bound.clone();
            async move { bound.pressed().await }
        });
        let writer = tokio::spawn({
            let bound = bound.clone();
            async move { bound.grow("writer", 50).await }
        });
        pressed.await.unwrap();
        assert!(bound.writers_waiting());
        assert!(!writer.is_finished());
        assert_eq!(
            bound.usage().used,
            80,
            "nothing counted for the waiting writer"
        );
        // Room that isn't enough leaves it waiting (once let through, it would count).
        bound.resize("closed", 60);
        tokio::task::yield_now().await;
        assert_eq!(bound.usage().used, 60);
        assert!(bound.writers_waiting());
        bound.release("closed");
        writer.await.unwrap();
        assert!(!bound.writers_waiting());
        assert_eq!(bound.usage().used, 50);
    }

    #[test]
    fn the_default_is_half_the_free_space_within_limits() {
        const GIB: u64 = 1024 * MIB;
        assert_eq!(default_for(Some(10 * GIB)), 5 * GIB);
        assert_eq!(default_for(Some(100 * GIB)), DEFAULT_MAX_CAP);
        assert_eq!(default_for(Some(100 * MIB)), DEFAULT_MAX_FLOOR);
        assert_eq!(default_for(None), DEFAULT_MAX_UNKNOWN);
        // A spool folder not made yet: the free space of the folder it will be in.
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(&dir.path().join("not/yet/made")).is_some());
        let max = default_max(&dir.path().join("not/yet/made"));
        assert!((DEFAULT_MAX_FLOOR..=DEFAULT_MAX_CAP).contains(&max));
    }
}
