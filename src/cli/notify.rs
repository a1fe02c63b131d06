//! Readiness notification for systemd (`Type=notify` services): the few lines of
//! sd_notify(3) that `dcloud-fs mount --foreground` needs, without libsystemd.
//!
//! A service manager that wants to hear from the process sets `$NOTIFY_SOCKET` to the
//! address of a Unix datagram socket: a path, or a Linux abstract socket written with a
//! leading `@`. Each message is one datagram of `KEY=VALUE` lines. The mount sends
//! `READY=1` (with `STATUS=mounted <mount point>`) once the mount is there, so that
//! `systemctl start` returns when the folders can be used and units ordered after it
//! find them; and `STOPPING=1` when it begins to stop, so the manager shows
//! "deactivating" while the files still open are uploaded. While mounted, the
//! `STATUS=` line carries the write-back queue ([`queue_status`]: `mounted <mount
//! point>; 12 files waiting, 3.1 MiB`), sent again when it changes (the mount looks
//! every few seconds), so `systemctl status` shows what is left to upload. Without
//! `$NOTIFY_SOCKET` nothing is sent. A message that can't be sent is a warning in the
//! log, never an error: the mount works without it.
//!
//! The binary takes the variable out of its environment before it starts any thread
//! ([`take_from_environment`]), so the programs it runs (fusermount3) don't inherit it
//! and can't speak for the service.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

use crate::fs::status::Totals;

const VARIABLE: &str = "NOTIFY_SOCKET";

/// `$NOTIFY_SOCKET` as it was when [`take_from_environment`] removed it.
static TAKEN: OnceLock<Option<OsString>> = OnceLock::new();

/// Moves `$NOTIFY_SOCKET` out of the environment (into this module), so that child
/// processes don't inherit it.
///
/// # Safety
///
/// Changes the environment: call it while the process has a single thread (first thing
/// in `main`), as [`std::env::remove_var`] requires.
pub unsafe fn take_from_environment() {
    let value = std::env::var_os(VARIABLE);
    if value.is_some() {
        // SAFETY: the caller guarantees that no other thread exists yet.
        unsafe { std::env::remove_var(VARIABLE) };
    }
    let _ = TAKEN.set(value);
}

/// Where to send notifications, if a service manager asked for them.
pub(crate) struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    shown: String,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for (as taken by [`take_from_environment`],
    /// else as the environment has it); None without one, or (with a warning) when the
    /// address is not one this can reach.
    pub(crate) fn from_environment() -> Option<Notifier> {
        let value = match TAKEN.get() {
            Some(taken) => taken.clone(),
            None => std::env::var_os(VARIABLE),
        }?;
        match Notifier::new(&value) {
            Ok(notifier) => Some(notifier),
            Err(e) => {
                log::warn!(
                    "{VARIABLE}={}: {e}; not telling the service manager when the mount is ready",
                    value.to_string_lossy()
                );
                None
            }
        }
    }

    /// A notifier for `address`: an absolute path, or `@name` for an abstract socket.
    fn new(address: &std::ffi::OsStr) -> std::io::Result<Notifier> {
        let bytes = address.as_bytes();
        let parsed = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(address)?,
            Some(b'@') => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(&bytes[1..])?
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "not a socket path or an abstract socket (@name)",
                ));
            }
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            address: parsed,
            shown: address.to_string_lossy().into_owned(),
        })
    }

    /// Sends `state`: `KEY=VALUE` lines, such as `READY=1\nSTATUS=...`.
    pub(crate) fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.address) {
            log::warn!(
                "could not notify the service manager at {} ({e})",
                self.shown
            );
        }
    }
}

/// The `STATUS=` line of a mount at `mountpoint` whose queue holds `totals`:
/// `STATUS=mounted /x; 12 files waiting, 3.1 MiB`, `...; all uploaded`, or with
/// failures `...; 3 files waiting, 1.0 KiB, 2 failing`.
pub(crate) fn queue_status(mountpoint: &std::path::Path, totals: &Totals) -> String {
    let queue = if totals.files == 0 {
        "all uploaded".to_string()
    } else {
        let mut text = format!(
            "{} {} waiting, {}",
            totals.files,
            if totals.files == 1 { "file" } else { "files" },
            super::output::human_size(totals.bytes)
        );
        if totals.failing > 0 {
            text.push_str(&format!(", {} failing", totals.failing));
        }
        text
    };
    let folders = match totals.folders {
        1 => "1 folder waiting".to_string(),
        n => format!("{n} folders waiting"),
    };
    let queue = match (totals.files, totals.folders) {
        (_, 0) => queue,
        (0, _) => folders,
        _ => format!("{queue}, {folders}"),
    };
    format!("STATUS=mounted {}; {queue}", mountpoint.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_status_line_carries_the_queue() {
        let at = std::path::Path::new("/home/a/discord");
        let mut totals = Totals::default();
        assert_eq!(
            queue_status(at, &totals),
            "STATUS=mounted /home/a/discord; all uploaded"
        );
        totals.files = 12;
        totals.bytes = 3_250_586;
        assert_eq!(
            queue_status(at, &totals),
            "STATUS=mounted /home/a/discord; 12 files waiting, 3.1 MiB"
        );
        totals.files = 1;
        totals.bytes = 10;
        totals.failing = 1;
        assert_eq!(
            queue_status(at, &totals),
            "STATUS=mounted /home/a/discord; 1 file waiting, 10 B, 1 failing"
        );
        totals.folders = 2;
        assert_eq!(
            queue_status(at, &totals),
            "STATUS=mounted /home/a/discord; 1 file waiting, 10 B, 1 failing, 2 folders waiting"
        );
        totals.files = 0;
        assert_eq!(
            queue_status(at, &totals),
            "STATUS=mounted /home/a/discord; 2 folders waiting"
        );
    }

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notifies_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.as_os_str()).unwrap();
        notifier.send("READY=1\nSTATUS=mounted /x");
        assert_eq!(receive(&listener), "READY=1\nSTATUS=mounted /x");
    }

    #[test]
    fn notifies_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("dcloud-fs-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let notifier = Notifier::new(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.send("STOPPING=1");
        assert_eq!(receive(&listener), "STOPPING=1");
    }

    #[test]
    fn other_addresses_are_refused() {
        assert!(Notifier::new(OsStr::new("relative/path")).is_err());
        assert!(Notifier::new(OsStr::new("vsock:2:1234")).is_err());
        assert!(Notifier::new(OsStr::new("")).is_err());
    }
}
