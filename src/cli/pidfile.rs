//! Which process serves a mount point: the daemon writes its pid to a file named after
//! the mount point (in `$XDG_RUNTIME_DIR/dcloud-fs/mounts`, else the cache folder's
//! `run/mounts`), and removes it once it has stopped: after the unmount it goes on
//! uploading the files closed before ([`crate::fs::writeback`]), and `dcloud-fs umount`
//! waits for that by waiting for the file to go (or its process to die).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The pid file of the daemon of `mountpoint` (an absolute, canonical path).
fn path_for(mountpoint: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(mountpoint.as_os_str().as_bytes());
    crate::dirs::runtime_dir()
        .join("mounts")
        .join(format!("{}.pid", crate::crypto::encode_hex(&digest[..8])))
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
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, std::process::id().to_string()));
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
    let text = std::fs::read_to_string(path_for(mountpoint)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until the daemon `pid` of `mountpoint` has stopped (its pid file gone, or the
/// process), saying every `every` what it waits for.
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
}
