//! Which process serves a mount point: the daemon writes its pid to a file named after
//! the mount point (in `$XDG_RUNTIME_DIR/dcloud-fs/mounts`, else the cache folder's
//! `run/mounts`), and removes it once it has stopped: after the unmount it goes on
//! uploading the files closed before ([`crate::fs::writeback`]), and `dcloud-fs umount`
//! waits for that by waiting for the file to go (or its process to die), and then
//! briefly for the process to exit (a zombie counts as exited).
//!
//! The file holds the pid on its first line and the mount point after it, so that
//! `dcloud-fs status` can list the mounts running ([`running`]); the daemon's status
//! socket ([`socket_path`], [`super::status_server`]) sits beside it, named the same way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The folder of the pid files and status sockets.
fn mounts_dir() -> PathBuf {
    crate::dirs::runtime_dir().join("mounts")
}

/// The name the files of `mountpoint` (an absolute, canonical path) share.
fn stem_for(mountpoint: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(mountpoint.as_os_str().as_bytes());
    crate::crypto::encode_hex(&digest[..8])
}

/// The pid file of the daemon of `mountpoint` (an absolute, canonical path).
fn path_for(mountpoint: &Path) -> PathBuf {
    mounts_dir().join(format!("{}.pid", stem_for(mountpoint)))
}

/// The status socket of the daemon of `mountpoint` (an absolute, canonical path).
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    mounts_dir().join(format!("{}.sock", stem_for(mountpoint)))
}

/// What a pid file says: the pid, and the mount point if it names one (files written
/// before it did hold the pid only).
fn parse(bytes: &[u8]) -> Option<(u32, Option<PathBuf>)> {
    use std::os::unix::ffi::OsStrExt;
    let (first, rest) = match bytes.iter().position(|b| *b == b'\n') {
        Some(at) => (&bytes[..at], Some(&bytes[at + 1..])),
        None => (bytes, None),
    };
    let pid = std::str::from_utf8(first).ok()?.trim().parse().ok()?;
    let mountpoint = rest
        .map(|rest| rest.strip_suffix(b"\n").unwrap_or(rest))
        .filter(|path| !path.is_empty())
        .map(|path| PathBuf::from(std::ffi::OsStr::from_bytes(path)));
    Some((pid, mountpoint))
}

/// The daemon's pid file, removed when dropped.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's pid for `mountpoint`. A failure only costs `umount` its
    /// wait, so it is logged, not fatal.
    pub fn write(mountpoint: &Path) -> Option<PidFile> {
        let path = path_for(mountpoint);
        let mut text = format!("{}\n", std::process::id()).into_bytes();
        {
            use std::os::unix::ffi::OsStrExt;
            text.extend_from_slice(mountpoint.as_os_str().as_bytes());
            text.push(b'\n');
        }
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, &text));
        match written {
            Ok(()) => Some(PidFile { path }),
            Err(e) => {
                log::warn!(
                    "could not write {} ({e}): `dcloud-fs umount` won't wait for the uploads",
                    path.display()
                );
                None
            }
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pid of the daemon serving `mountpoint`, if one wrote its file and still runs.
pub fn daemon_of(mountpoint: &Path) -> Option<u32> {
    let (pid, _) = parse(&std::fs::read(path_for(mountpoint)).ok()?)?;
    alive(pid).then_some(pid)
}

/// The mounts whose daemons run (their pid files name a live process), as (mount
/// point, pid), by mount point.
pub fn running() -> Vec<(PathBuf, u32)> {
    let Ok(entries) = std::fs::read_dir(mounts_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, u32)> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "pid" {
                return None;
            }
            let (pid, mountpoint) = parse(&std::fs::read(&path).ok()?)?;
            let mountpoint = mountpoint?;
            // A file left by a daemon that was killed names a pid that is gone (or
            // that another process has now: its status socket then doesn't answer).
            (alive(pid) && path_for(&mountpoint) == path).then_some((mountpoint, pid))
        })
        .collect();
    found.sort();
    found
}

/// Whether process `pid` runs: it exists and is not a zombie (a daemon that has exited
/// but that its parent, the test or shell that started it, has not reaped yet).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`; comm may hold anything, so the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// How long `umount` waits for the daemon to exit once its pid file is gone (it saves
/// the index caches on the way out).
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Waits until the daemon `pid` of `mountpoint` has stopped (its pid file gone, or the
/// process; then, for a few seconds at most, until the process has exited too),
/// saying every `every` what it waits for.
pub fn wait_stopped(mountpoint: &Path, pid: u32, every: Duration) {
    let path = path_for(mountpoint);
    let mut next_word = Instant::now() + every;
    while path.exists() && alive(pid) {
        if Instant::now() >= next_word {
            eprintln!(
                "dcloud-fs: waiting for the mount's uploads to finish (pid {pid}; \
                 `dcloud-fs umount --lazy` doesn't wait)"
            );
            next_word = Instant::now() + every;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The pid file goes as the daemon's mount ends; the process ends a moment later.
    let exit_by = Instant::now() + EXIT_WAIT;
    while alive(pid) && Instant::now() < exit_by {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_name_the_pid_and_the_mount_point() {
        assert_eq!(parse(b"42"), Some((42, None)));
        assert_eq!(parse(b"42\n"), Some((42, None)));
        assert_eq!(
            parse(b"42\n/home/a b/discord\n"),
            Some((42, Some(PathBuf::from("/home/a b/discord"))))
        );
        // A newline in the mount point is kept.
        assert_eq!(
            parse(b"7\n/x\ny\n"),
            Some((7, Some(PathBuf::from("/x\ny"))))
        );
        assert_eq!(parse(b"x\n/y"), None);
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
        let at = Path::new("/mnt/d");
        assert_eq!(
            socket_path(at).with_extension("pid"),
            path_for(at),
            "the socket sits beside the pid file, named the same way"
        );
    }
}
