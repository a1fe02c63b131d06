//! The mount's status socket: how `dcloud-fs status` asks a running mount what it is
//! doing.
//!
//! The protocol is as small as it can be: a client connects to the Unix stream socket,
//! the server writes one JSON document (the status, see [`super::status`]) and closes
//! the connection. The client sends nothing. That keeps the server bounded (no request
//! to parse, nothing a client can make it wait for but the write itself, which has a
//! time limit) and any tool can read it (`socat - UNIX-CONNECT:...`).
//!
//! The socket lives beside the daemon's pid file ([`super::pidfile::socket_path`]):
//! `$XDG_RUNTIME_DIR/dcloud-fs/mounts/<hash of the mount point>.sock`. It is made so
//! that only its owner can use it, with no moment when it is open to others:
//!
//! - mode 0600 from the start: the socket's mode is set (`fchmod`) before `bind`
//!   creates the file, which takes the mode from it (Linux), so there is no window
//!   between a `bind` and a `chmod`;
//! - no symlink is followed: `bind` creates a new name (it fails on any existing one,
//!   a symlink included), under a temporary name of this process's, which `rename`
//!   then moves over the real one: a socket left by a mount that was killed is
//!   replaced at once, and whatever else sat at that name is replaced, not written
//!   through;
//! - a client that is neither the mount's user nor root is turned away (its
//!   credentials, `SO_PEERCRED`), should the folder's permissions be loose.
//!
//! The server runs on the mount's tokio runtime, serving a few clients at once
//! ([`MAX_CLIENTS`]; more are closed at once), and goes with the guard
//! [`StatusServer`], which removes the socket.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// Clients served at once.
pub const MAX_CLIENTS: usize = 8;
/// How long the server tries to write one status.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for the status.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest status a client reads.
const MAX_STATUS_BYTES: u64 = 16 << 20;

/// What the server sends: the status, made when a client connects.
pub type Source = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// The running server; dropping it stops it and removes the socket.
pub struct StatusServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl StatusServer {
    /// Listens on `path` and answers each client with `source()`. A socket that can't
    /// be made costs only `status`, so it is logged, not fatal.
    pub fn start(path: PathBuf, source: Source) -> Option<StatusServer> {
        let listener = match bind_private(&path) {
            Ok(listener) => listener,
            Err(e) => {
                log::warn!(
                    "could not make the status socket {} ({e}): `dcloud-fs status` won't \
                     reach this mount",
                    path.display()
                );
                return None;
            }
        };
        let task = tokio::spawn(serve(listener, source));
        Some(StatusServer { path, task })
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Makes the socket at `path`, mode 0600, without following symlinks (see the module
/// docs), and listens on it.
fn bind_private(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the socket path has no file name"))?;
    let mut temporary = name.to_os_string();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = dir.join(temporary);
    match std::fs::remove_file(&temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let address = socket_address(&temporary)?;
    // SAFETY: socket has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just made, owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let fd = socket.as_raw_fd();
    // SAFETY: valid descriptor. On Linux the file bind makes takes the socket's mode.
    if unsafe { libc::fchmod(fd, 0o600) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `address` is a sockaddr_un of the size passed.
    let bound = unsafe {
        libc::bind(
            fd,
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let made = (|| {
        let meta = std::fs::symlink_metadata(&temporary)?;
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::other("bind made no socket"));
        }
        if meta.permissions().mode() & 0o7777 != 0o600 {
            // Not a kernel that takes the mode from the socket: the name is ours, in
            // our folder, and not yet where clients look.
            std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))?;
        }
        // SAFETY: valid descriptor.
        if unsafe { libc::listen(fd, MAX_CLIENTS as libc::c_int) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::fs::rename(&temporary, path)
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    let listener = std::os::unix::net::UnixListener::from(socket);
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// The `sockaddr_un` of `path` (at most 107 bytes, as the kernel takes).
fn socket_address(path: &Path) -> std::io::Result<libc::sockaddr_un> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: an all-zero sockaddr_un is valid (and NUL-terminates any shorter path).
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= address.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the path is longer than the {} bytes a socket's may be",
                address.sun_path.len() - 1
            ),
        ));
    }
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(address)
}

/// Answers each client with one status, then closes.
async fn serve(listener: tokio::net::UnixListener, source: Source) {
    let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    // SAFETY: geteuid has no preconditions and can't fail.
    let me = unsafe { libc::geteuid() };
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: try again in a moment.
                log::debug!("status socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let allowed = stream
            .peer_cred()
            .is_ok_and(|peer| peer.uid() == me || peer.uid() == 0);
        if !allowed {
            continue;
        }
        let Ok(slot) = clients.clone().try_acquire_owned() else {
            continue;
        };
        let status = source();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
                stream.write_all(&status).await?;
                stream.shutdown().await
            })
            .await;
        });
    }
}

/// Why no status could be read.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing listens there: no socket, or one whose mount is gone.
    NotRunning,
    /// Something else went wrong.
    Failed(String),
}

/// Reads the status the server at `path` sends.
pub fn read(path: &Path) -> Result<Vec<u8>, ReadError> {
    use std::io::ErrorKind;
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => ReadError::NotRunning,
        _ => ReadError::Failed(format!("connecting to {}: {e}", path.display())),
    })?;
    let failed = |e: std::io::Error| ReadError::Failed(format!("reading {}: {e}", path.display()));
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(failed)?;
    let mut status = Vec::new();
    (&mut stream)
        .take(MAX_STATUS_BYTES)
        .read_to_end(&mut status)
        .map_err(failed)?;
    if status.is_empty() {
        // The mount closed without answering: it is stopping.
        return Err(ReadError::NotRunning);
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    fn source(text: &'static str) -> Source {
        Arc::new(move || text.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_client_reads_one_document_from_a_private_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mounts").join("abc.sock");
        let server = StatusServer::start(path.clone(), source(r#"{"ok":true}"#)).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        for _ in 0..3 {
            let path = path.clone();
            let read = tokio::task::spawn_blocking(move || read(&path))
                .await
                .unwrap();
            assert_eq!(read.unwrap(), br#"{"ok":true}"#);
        }
        drop(server);
        assert!(!path.exists(), "the socket goes with the server");
        let gone = tokio::task::spawn_blocking(move || read(&path))
            .await
            .unwrap();
        assert!(matches!(gone, Err(ReadError::NotRunning)), "{gone:?}");
    }

    #[tokio::test]
    async fn a_stale_socket_or_a_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        // A socket nobody listens on any more, as a killed mount leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let stale = tokio::task::spawn_blocking({
            let path = path.clone();
            move || read(&path)
        })
        .await
        .unwrap();
        assert!(matches!(stale, Err(ReadError::NotRunning)), "{stale:?}");
        let server = StatusServer::start(path.clone(), source("one")).unwrap();
        let read_one = {
            let path = path.clone();
            move || read(&path)
        };
        assert_eq!(
            tokio::task::spawn_blocking(read_one.clone())
                .await
                .unwrap()
                .unwrap(),
            b"one"
        );
        drop(server);

        // A symlink at the name: replaced, and its target left alone.
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let server = StatusServer::start(path.clone(), source("two")).unwrap();
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_socket()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(
            tokio::task::spawn_blocking(read_one)
                .await
                .unwrap()
                .unwrap(),
            b"two"
        );
        drop(server);
    }

    #[test]
    fn socket_paths_that_are_too_long_are_refused() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        assert!(socket_address(&long).is_err());
        assert!(socket_address(Path::new("/run/user/1000/dcloud-fs/mounts/a.sock")).is_ok());
    }
}
