//! What `get` gives back beside the bytes: the owner (`--owners`, the default as root,
//! as `tar --same-owner`), the extended attributes (`--xattrs`), the mode with its
//! setuid, setgid and sticky bits, and the modification and access times — of files,
//! links, special files and (after what they hold) folders.
//!
//! The order matters: the owner first (a `chown` clears setuid and setgid), then the
//! attributes, then the mode, the times last (everything else changes the change
//! time only, but writing into a folder changes its modification time). A link gets
//! its owner only (Linux keeps no mode, and `user.*` attributes, on links).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::format::Meta;

/// What `get` restores besides mode and times.
#[derive(Debug, Clone, Copy, Default)]
pub struct Restore {
    /// Give each entry the owner its record names (`--owners`; as root by default).
    pub owners: bool,
    /// Set its extended attributes (`--xattrs`).
    pub xattrs: bool,
}

impl Restore {
    /// What `get` restores with `--owners` and `--xattrs` given or not: owners also
    /// when run as root.
    pub fn new(owners: bool, xattrs: bool) -> Restore {
        // SAFETY: geteuid has no preconditions and can't fail.
        let root = unsafe { libc::geteuid() } == 0;
        Restore {
            owners: owners || root,
            xattrs,
        }
    }
}

/// An entry to restore: its recorded metadata.
pub struct Stored<'a> {
    pub meta: &'a Meta,
    /// Permission bits with setuid, setgid and sticky; `None` for a link.
    pub mode: Option<u32>,
    pub mtime_ns: i64,
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn check(done: libc::c_int) -> std::io::Result<()> {
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Gives `path` (not followed if a link) what `stored` records, as `restore` says.
pub fn restore(path: &Path, stored: &Stored<'_>, restore: Restore) -> std::io::Result<()> {
    let c = c_path(path)?;
    if restore.owners && (stored.meta.uid.is_some() || stored.meta.gid.is_some()) {
        let uid = stored.meta.uid.unwrap_or(u32::MAX); // -1: unchanged
        let gid = stored.meta.gid.unwrap_or(u32::MAX);
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        check(unsafe { libc::lchown(c.as_ptr(), uid, gid) })?;
    }
    if restore.xattrs && stored.mode.is_some() {
        for (name, value) in &stored.meta.xattrs {
            let cname = CString::new(name.as_bytes()).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a name")
            })?;
            // SAFETY: both strings are NUL-terminated and the value's pointer and length
            // describe one slice; all outlive the call.
            check(unsafe {
                libc::lsetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    value.0.as_ptr().cast(),
                    value.0.len(),
                    0,
                )
            })
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("extended attribute {name}: {e}"))
            })?;
        }
    }
    let Some(mode) = stored.mode else {
        return Ok(()); // a link: its owner only
    };
    std::fs::set_permissions(
        path,
        std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
    )?;
    let timespec = |ns: i64| libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: ns.rem_euclid(1_000_000_000) as libc::c_long,
    };
    let times = [
        timespec(stored.meta.atime_ns.unwrap_or(stored.mtime_ns)),
        timespec(stored.mtime_ns),
    ];
    // By path: a FIFO would block an open, and a device can't be opened at all.
    // SAFETY: `c` is NUL-terminated and `times` two timespecs; both outlive the call.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) })
}
