//! `dcloud-fs mount` and `dcloud-fs umount`.
//!
//! **Foreground** (`-f`): open the store and build the filesystem core
//! ([`crate::fs::Fs`]), mount it through the FUSE adapter ([`crate::fuse`]) with a few
//! worker threads on a thread of its own, finish in the background the uploads an
//! earlier mount left in the spool, and check the open channels for changes made
//! elsewhere every `--poll-interval`. Then wait: for SIGINT or SIGTERM, which upload
//! every file still open for writing, unmount and exit 0 (a second signal skips the
//! uploads; the spool keeps them for the next mount); or for the mount to go away from
//! outside (`dcloud-fs umount`, `fusermount3 -u`), which exits 0 too. If the unmount
//! finds the mount busy (a shell inside it), it is detached lazily. Under a service
//! manager that asks for it (`$NOTIFY_SOCKET`, a systemd `Type=notify` service) it
//! reports `READY=1` once mounted and `STOPPING=1` as it begins to stop, and while
//! mounted keeps its `STATUS=` line showing the write-back queue ([`super::notify`]).
//! While it runs (until it has stopped, after the last upload) it answers `dcloud-fs
//! status` on a socket beside its pid file ([`super::status_server`]); its store is
//! wrapped to count the posts for the pace that shows ([`crate::store::pace`]).
//!
//! **Background** (the default): run the same command again with `--foreground` added,
//! as a new session (`setsid`, so it outlives the terminal) with stdin and stdout on
//! /dev/null and stderr appended to `$XDG_CACHE_HOME/dcloud-fs/mount.log` (mode
//! 0600: log lines may name files). Return 0 once the mount shows in
//! /proc/self/mountinfo; if the child exits first, its last line in the log is the
//! error. The log keeps the daemon's warnings for later (more with `-v`).
//!
//! **umount**: `fusermount3 -u`, else (as root) `umount`; a mount point that isn't
//! mounted is a one-line error. The daemon notices the unmount, uploads the files
//! closed before that still wait for their upload (write-back), and exits; `umount`
//! waits for that (the daemon's pid file, [`super::pidfile`]) unless `--lazy`. So when
//! `umount` returns, every file closed before is stored, or (if its upload failed) kept
//! in the spool for the next mount.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::{CliError, Context};
use crate::crypto::CryptoError;
use crate::fs::{Fs, FsConfig};
use crate::fuse::{FuseFs, MountSettings};
use crate::store::Store;
use crate::store::pace::PacedStore;

/// FUSE worker threads: they only read requests and hand them to the runtime.
const FUSE_THREADS: usize = 4;
/// How long the background start waits for the mount to appear.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stop waits for the FUSE session to end after unmounting.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the service manager's `STATUS=` line is brought up to date (when the
/// queue changed).
const QUEUE_STATUS_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
#[command(next_help_heading = "Mount options")]
pub struct MountArgs {
    /// The folder to mount on (it must exist). Its top-level folders are the channels.
    /// Default: the config file's `mount_point`, else ~/discord.
    #[arg(env = "DCLOUD_MOUNT_POINT")]
    pub mountpoint: Option<PathBuf>,
    /// Stay in the foreground, logging to stderr, until Ctrl-C or SIGTERM (which upload
    /// the files still open, then unmount). Without it: run in the background, logging
    /// to $XDG_CACHE_HOME/dcloud-fs/mount.log, and return once mounted.
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount read-only (config: `read_only`).
    #[arg(long, env = "DCLOUD_READ_ONLY")]
    pub read_only: bool,
    /// Let other users use the mount (needs `user_allow_other` in /etc/fuse.conf
    /// unless mounting as root) (config: `allow_other`).
    #[arg(long, env = "DCLOUD_ALLOW_OTHER")]
    pub allow_other: bool,
    /// Memory for decrypted blocks, in MiB (config: `cache_size_mib`). Default: 64.
    #[arg(long, value_name = "MIB", env = "DCLOUD_CACHE_SIZE_MIB",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_size: Option<u64>,
    /// Disk for chunks fetched from Discord, kept sealed, in MiB; 0 keeps none
    /// (config: `disk_cache_mib`). Default: 4096.
    #[arg(long, value_name = "MIB", env = "DCLOUD_DISK_CACHE_MIB")]
    pub disk_cache: Option<u64>,
    /// Where files being written wait for their upload. Default: spool/<store> in the
    /// cache folder (`--cache-dir`).
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Most MiB the spool may hold (files being written, and closed ones waiting for
    /// their upload); a writer that would pass it waits for uploads to free room
    /// (config: `spool_max_mib`). Default: half the free space of the spool's disk at
    /// mount, at most 16384 and at least 512.
    #[arg(long, value_name = "MIB", env = "DCLOUD_SPOOL_MAX_MIB",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub spool_max: Option<u64>,
    /// Owner shown for every file, whatever its own (`chown` is still kept). Default:
    /// each file's own; the mounting user for files that have none.
    #[arg(long, value_name = "N")]
    pub uid: Option<u32>,
    /// Group shown for every file, whatever its own. Default: each file's own; the
    /// mounting user's group for files that have none.
    #[arg(long, value_name = "N")]
    pub gid: Option<u32>,
    /// Permission bits taken away from the modes shown (octal). Default: none (modes as
    /// stored).
    #[arg(long, value_name = "OCTAL", default_value = "0", value_parser = parse_umask)]
    pub umask: u32,
    /// Seconds between checks of the open channels for changes made elsewhere (config:
    /// `poll_interval_secs`). Default: 5.
    #[arg(long, value_name = "SECS", env = "DCLOUD_POLL_INTERVAL_SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub poll_interval: Option<u64>,
    /// Seconds after its last close that a file is uploaded: close returns once the file
    /// is in the local spool, and `fsync` waits for the upload (config:
    /// `write_back_secs`). 0 uploads at close, which then returns the upload's error.
    /// Default: 2.
    #[arg(long, value_name = "SECS", env = "DCLOUD_WRITE_BACK_SECS",
          value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub write_back: Option<u64>,
    /// Let `rmdir` of a top-level folder delete its (empty) channel.
    #[arg(long)]
    pub allow_delete_channels: bool,
}

/// Memory for decrypted blocks when nothing says otherwise, in MiB.
pub(crate) const DEFAULT_CACHE_SIZE_MIB: u64 = 64;
/// Disk for fetched chunks when nothing says otherwise, in MiB.
pub(crate) const DEFAULT_DISK_CACHE_MIB: u64 = 4096;
/// Seconds between polls when nothing says otherwise.
pub(crate) const DEFAULT_POLL_SECS: u64 = 5;
/// Seconds from a close to its upload when nothing says otherwise.
pub(crate) const DEFAULT_WRITE_BACK_SECS: u64 = 2;

fn parse_umask(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|mask| *mask <= 0o777)
        .ok_or_else(|| format!("'{text}' is not an octal umask (like 022 or 077)"))
}

/// `dcloud-fs mount`.
pub(crate) async fn mount(context: &Context, mut args: MountArgs) -> Result<(), CliError> {
    let mountpoint = check_mountpoint(&context.mount_point(args.mountpoint.take()))?;
    let args = merged(context, args);
    if args.foreground {
        run_foreground(context, args, mountpoint).await
    } else {
        // Fail here, not in the log, on what the daemon would fail on at once.
        require_key(context).await?;
        run_background(&context.cache_base().value, &mountpoint).await
    }
}

pub(super) async fn require_key(context: &Context) -> Result<crate::crypto::Key, CliError> {
    context.key().await?.ok_or_else(|| {
        CliError::Crypto(CryptoError::KeyFileMissing {
            path: context.key_path().display().to_string(),
        })
    })
}

/// The mount point, made absolute, if it is a folder with no dcloud-fs mount on it.
fn check_mountpoint(path: &Path) -> Result<PathBuf, CliError> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(CliError::Mount(format!("{shown} is not a folder"))),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(CliError::Mount(format!(
                "{shown} is a mount whose process has ended; run `dcloud-fs umount {shown}` first"
            )));
        }
        Err(e) => return Err(CliError::io(format!("mount point {shown}"), e)),
    }
    let path = path
        .canonicalize()
        .map_err(|e| CliError::io(format!("mount point {shown}"), e))?;
    if top_mount(&path)?.is_some_and(|m| m.is_ours()) {
        return Err(CliError::Mount(format!(
            "{} is mounted already (`dcloud-fs umount {}` to unmount it)",
            path.display(),
            path.display()
        )));
    }
    Ok(path)
}

/// `args` with the settings merged in: flags and environment (as clap gave them), the
/// config file, the defaults.
pub(super) fn merged(context: &Context, mut args: MountArgs) -> MountArgs {
    let settings = context.mount_settings(&args);
    args.read_only = settings.read_only.value;
    args.allow_other = settings.allow_other.value;
    args.cache_size = Some(settings.cache_size_mib.value);
    args.poll_interval = Some(settings.poll_interval_secs.value);
    args.write_back = Some(settings.write_back_secs.value);
    args.disk_cache = Some(settings.disk_cache_mib.value);
    args.spool_max = context.spool_max_mib(args.spool_max).value;
    context.set_disk_cache_mib(settings.disk_cache_mib.value);
    args
}

/// Finishes, in the background, the uploads an earlier `daemon` (mount or serve) left
/// in the spool of `fs`.
pub(super) fn finish_spool_later(fs: &Arc<Fs>, daemon: &'static str) {
    let fs = fs.clone();
    tokio::spawn(async move {
        let stored = fs.recover_spool().await;
        if stored > 0 {
            log::info!("finished {stored} upload(s) an earlier {daemon} left");
        }
    });
}

/// Checks the open channels of `fs` for changes made elsewhere, every `every`, for
/// as long as `fs` lives.
pub(super) async fn poll_every(fs: Weak<Fs>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(fs) = fs.upgrade() else { return };
        fs.poll().await;
    }
}

/// The file system's settings; `args` hold the merged settings (see [`merged`]).
pub(super) fn fs_config(
    context: &Context,
    args: &MountArgs,
    store_identity: &str,
) -> Result<FsConfig, CliError> {
    let defaults = FsConfig::default();
    Ok(FsConfig {
        cache_bytes: args
            .cache_size
            .unwrap_or(DEFAULT_CACHE_SIZE_MIB)
            .saturating_mul(1024 * 1024),
        spool_dir: Some(args.spool_dir.clone().unwrap_or_else(|| {
            context
                .cache_base()
                .value
                .join("spool")
                .join(store_identity)
        })),
        spool_max: args.spool_max.map(|mib| mib.saturating_mul(1024 * 1024)),
        poll_interval: Duration::from_secs(args.poll_interval.unwrap_or(DEFAULT_POLL_SECS)),
        write_back: Duration::from_secs(args.write_back.unwrap_or(DEFAULT_WRITE_BACK_SECS)),
        read_only: args.read_only,
        allow_delete_channels: args.allow_delete_channels,
        uid: args.uid.unwrap_or(defaults.uid),
        gid: args.gid.unwrap_or(defaults.gid),
        shown_uid: args.uid,
        shown_gid: args.gid,
        umask: args.umask,
        volume: context.volume_config()?,
        ..defaults
    })
}

/// Listens for SIGINT and SIGTERM.
pub(super) struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    pub(super) fn new() -> Result<Signals, CliError> {
        let listen =
            |kind| signal(kind).map_err(|e| CliError::io("could not listen for signals", e));
        Ok(Signals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
        })
    }

    pub(super) async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

async fn run_foreground(
    context: &Context,
    args: MountArgs,
    mountpoint: PathBuf,
) -> Result<(), CliError> {
    let key = require_key(context).await?;
    let paced = Arc::new(PacedStore::new(context.store().await?));
    let store: Arc<dyn Store> = paced.clone();
    let config = fs_config(context, &args, &store.identity())?;
    let fs = Fs::new(store, Some(key), config)
        .await
        .map_err(|e| CliError::Mount(format!("could not open the store: {e}")))?;
    // What an earlier mount left waiting is shown from the first request on.
    fs.adopt_spool().await;
    // Channels used before on this machine load from their caches while the mount
    // comes up.
    tokio::spawn({
        let fs = fs.clone();
        async move { fs.open_cached_channels().await }
    });
    let mut signals = Signals::new()?;
    let notifier = super::notify::Notifier::from_environment().map(Arc::new);

    let adapter = FuseFs::new(fs.clone(), tokio::runtime::Handle::current());
    let in_flight = adapter.in_flight();
    let session_config = crate::fuse::session_config(MountSettings {
        read_only: args.read_only,
        allow_other: args.allow_other,
        threads: FUSE_THREADS,
    });
    let at = mountpoint.clone();
    let mut session =
        tokio::task::spawn_blocking(move || fuser::Session::new(adapter, &at, &session_config))
            .await
            .map_err(|e| CliError::Mount(format!("could not mount: {e}")))?
            .map_err(|e| {
                CliError::Mount(format!("could not mount on {}: {e}", mountpoint.display()))
            })?;
    let mut unmounter = session.unmount_callable();
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let _ = ended_tx.send(session.run());
        })
        .map_err(|e| CliError::io("could not start the FUSE session", e))?;
    log::info!("mounted {}", mountpoint.display());
    let _pid_file = super::pidfile::PidFile::write(&mountpoint);
    // Declared after the pid file, so dropped before it: once `umount` sees the pid
    // file go, `status` finds no mount either.
    let stopping = Arc::new(AtomicBool::new(false));
    let _status_server = super::status_server::StatusServer::start(
        super::pidfile::socket_path(&mountpoint),
        super::status::source(&fs, &paced, &mountpoint, &stopping),
    );
    if let Some(notifier) = &notifier {
        notifier.send(&format!("READY=1\nSTATUS=mounted {}", mountpoint.display()));
    }
    let queue_notes = notifier.clone().map(|notifier| {
        tokio::spawn(tell_queue(
            notifier,
            Arc::downgrade(&fs),
            mountpoint.clone(),
            stopping.clone(),
        ))
    });
    let stop_telling = || {
        stopping.store(true, Ordering::Relaxed);
        if let Some(task) = &queue_notes {
            task.abort();
        }
    };

    finish_spool_later(&fs, "mount");
    let poller = tokio::spawn(poll_every(
        Arc::downgrade(&fs),
        Duration::from_secs(args.poll_interval.unwrap_or(DEFAULT_POLL_SECS)),
    ));

    tokio::select! {
        _ = signals.next() => {}
        result = &mut ended => {
            // Unmounted from outside (or the session failed).
            stop_telling();
            if let Some(notifier) = &notifier {
                notifier.send("STOPPING=1\nSTATUS=unmounted; stopping");
            }
            poller.abort();
            // The last requests (releases, as the kernel let go) finish first.
            let _ = tokio::time::timeout(STOP_TIMEOUT, in_flight.drained()).await;
            fs.shutdown().await;
            return match result {
                Ok(Ok(())) => {
                    log::info!("{} was unmounted", mountpoint.display());
                    Ok(())
                }
                Ok(Err(e)) => Err(CliError::Mount(format!("the FUSE session failed: {e}"))),
                Err(_) => Err(CliError::Mount("the FUSE session ended unexpectedly".into())),
            };
        }
    }

    log::info!("stopping: uploading the files still open, then unmounting");
    stop_telling();
    if let Some(notifier) = &notifier {
        notifier
            .send("STOPPING=1\nSTATUS=stopping: uploading the files still open, then unmounting");
    }
    poller.abort();
    tokio::select! {
        _ = fs.shutdown() => {}
        _ = signals.next() => log::warn!(
            "stopping without finishing the uploads; the next mount finishes them"
        ),
    }
    let at = mountpoint.clone();
    let unmounted = tokio::task::spawn_blocking(move || match unmounter.unmount() {
        Ok(()) => true,
        Err(e) => {
            log::warn!(
                "could not unmount {} ({e}); detaching it: it goes away when the last \
                 process using it lets go",
                at.display()
            );
            detach(&at);
            false
        }
    })
    .await
    .unwrap_or(false);
    // The session ends once the kernel lets go; a detached mount still in use won't.
    if unmounted && tokio::time::timeout(STOP_TIMEOUT, ended).await.is_err() {
        log::warn!("the FUSE session did not end; stopping anyway");
    }
    // The requests the kernel sent as it let go (releases of files closed just before
    // the stop) finish, so that the sessions they end leave no spool behind.
    if tokio::time::timeout(STOP_TIMEOUT, in_flight.drained())
        .await
        .is_err()
    {
        log::warn!("requests still being served; stopping anyway");
    }
    Ok(())
}

/// Keeps the service manager's `STATUS=` line showing the write-back queue: looks every
/// [`QUEUE_STATUS_EVERY`] and sends the line when it changed, until the stop begins
/// (whose own line must stay the last).
async fn tell_queue(
    notifier: Arc<super::notify::Notifier>,
    fs: Weak<Fs>,
    mountpoint: PathBuf,
    stopping: Arc<AtomicBool>,
) {
    use super::notify::queue_status;
    // What READY=1 said, in effect: an empty queue says nothing new.
    let mut told = queue_status(&mountpoint, &Default::default());
    let mut tick = tokio::time::interval(QUEUE_STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(fs) = fs.upgrade() else { return };
        let line = queue_status(&mountpoint, &fs.status().totals);
        drop(fs);
        if line != told && !stopping.load(Ordering::Relaxed) {
            notifier.send(&line);
            told = line;
        }
    }
}

/// Lazy unmount: the mount leaves the tree now and ends when nothing uses it.
fn detach(mountpoint: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) {
        // SAFETY: a valid NUL-terminated path; umount2 has no other preconditions.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
            return;
        }
    }
    let _ = Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Starts the mount as a daemon and waits until it is mounted; it logs to `mount.log`
/// in `cache_dir`.
async fn run_background(cache_dir: &Path, mountpoint: &Path) -> Result<(), CliError> {
    let log_path = cache_dir.join("mount.log");
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::io(format!("creating {}", dir.display()), e))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| CliError::io(format!("opening {}", log_path.display()), e))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let before: HashSet<u64> = mounts_at(mountpoint)?.iter().map(|m| m.id).collect();

    let exe =
        std::env::current_exe().map_err(|e| CliError::io("finding the dcloud-fs program", e))?;
    let mut command = Command::new(exe);
    command
        .args(foreground_args(std::env::args_os().skip(1).collect()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| CliError::io("starting the mount in the background", e))?;

    let started = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| CliError::io("waiting for the mount", e))?
        {
            let why = last_log_line(&log_path, log_start)
                .unwrap_or_else(|| format!("the mount process ended ({status})"));
            return Err(CliError::Mount(why));
        }
        if mounts_at(mountpoint)?
            .iter()
            .any(|m| m.is_ours() && !before.contains(&m.id))
        {
            return Ok(());
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CliError::Mount(format!(
                "{} did not appear within {} s (see {})",
                mountpoint.display(),
                START_TIMEOUT.as_secs(),
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// This command line with `--foreground` added (before a `--`, if there is one).
fn foreground_args(mut args: Vec<OsString>) -> Vec<OsString> {
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    args.insert(at, "--foreground".into());
    args
}

/// The last non-empty line the daemon wrote to the log after `start`, without the
/// program name it begins with.
fn last_log_line(log_path: &Path, start: u64) -> Option<String> {
    let mut file = std::fs::File::open(log_path).ok()?;
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.strip_prefix("dcloud-fs: ").unwrap_or(line).to_string())
}

/// `dcloud-fs umount`: unmounts, then (unless `lazy`) waits for the daemon to finish
/// the uploads of the files closed before and stop.
pub(crate) fn umount(mountpoint: &Path, lazy: bool) -> Result<(), CliError> {
    // A mount whose process died can't be canonicalized (ENOTCONN): use the path as
    // given, made absolute.
    let path = mountpoint
        .canonicalize()
        .or_else(|_| std::path::absolute(mountpoint))
        .map_err(|e| CliError::io(format!("mount point {}", mountpoint.display()), e))?;
    let Some(top) = top_mount(&path)? else {
        return Err(CliError::Mount(format!(
            "{} is not mounted",
            path.display()
        )));
    };
    if !top.is_fuse() {
        return Err(CliError::Mount(format!(
            "{} is not a dcloud-fs mount (it is {})",
            path.display(),
            top.fs_type
        )));
    }
    let daemon = super::pidfile::daemon_of(&path);
    unmount(&path)?;
    if let Some(pid) = daemon.filter(|_| !lazy) {
        super::pidfile::wait_stopped(&path, pid, UMOUNT_NOTE_EVERY);
    }
    Ok(())
}

/// How often a waiting `umount` says what it waits for.
const UMOUNT_NOTE_EVERY: Duration = Duration::from_secs(5);

/// `fusermount3 -u`, else (as root) `umount`.
fn unmount(path: &Path) -> Result<(), CliError> {
    let mut tries = vec![vec!["fusermount3", "-u", "--"]];
    // SAFETY: geteuid has no preconditions and can't fail.
    if unsafe { libc::geteuid() } == 0 {
        tries.push(vec!["umount", "--"]);
    }
    let mut first_error = None;
    for command in tries {
        let output = Command::new(command[0])
            .args(&command[1..])
            .arg(path)
            .stdin(Stdio::null())
            .output();
        let error = match output {
            Ok(output) if output.status.success() => return Ok(()),
            Ok(output) => String::from_utf8_lossy(&output.stderr)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| format!("{} failed ({})", command[0], output.status)),
            Err(e) => format!("{}: {e}", command[0]),
        };
        first_error.get_or_insert(error);
    }
    Err(CliError::Mount(format!(
        "could not unmount {}: {}",
        path.display(),
        first_error.unwrap_or_default()
    )))
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountEntry {
    id: u64,
    mount_point: PathBuf,
    fs_type: String,
    source: String,
}

impl MountEntry {
    fn is_fuse(&self) -> bool {
        self.fs_type == "fuse" || self.fs_type.starts_with("fuse.")
    }

    fn is_ours(&self) -> bool {
        self.is_fuse() && self.source == "dcloud-fs"
    }
}

/// The mounts at `path`, oldest first.
fn mounts_at(path: &Path) -> Result<Vec<MountEntry>, CliError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CliError::io("reading /proc/self/mountinfo", e))?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect())
}

/// The mount that is visible at `path` (the last one mounted there).
fn top_mount(path: &Path) -> Result<Option<MountEntry>, CliError> {
    Ok(mounts_at(path)?.pop())
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                id: fields.first()?.parse().ok()?,
                mount_point: PathBuf::from(unescape_mountinfo(fields.get(4)?)),
                fs_type: unescape_mountinfo(fields.get(dash + 1)?)
                    .to_string_lossy()
                    .into_owned(),
                source: unescape_mountinfo(fields.get(dash + 2)?)
                    .to_string_lossy()
                    .into_owned(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    95 22 0:50 / /tmp/my\\040mnt rw,nosuid,nodev,noatime - fuse dcloud-fs rw,user_id=0\n\
                    96 22 0:51 / /mnt/x rw shared:7 master:2 - fuse.dcloud-fs dcloud-fs rw\n\
                    garbage\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[1].id, 95);
        assert_eq!(mounts[1].mount_point, PathBuf::from("/tmp/my mnt"));
        assert!(mounts[1].is_ours());
        assert!(mounts[2].is_ours());
        assert!(!mounts[0].is_fuse());
        assert_eq!(mounts[0].source, "/dev/sda1");
    }

    #[test]
    fn the_daemon_gets_foreground_added() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            foreground_args(args(&["mount", "/mnt"])),
            args(&["mount", "/mnt", "--foreground"])
        );
        assert_eq!(
            foreground_args(args(&["mount", "--", "-odd"])),
            args(&["mount", "--foreground", "--", "-odd"])
        );
    }

    #[test]
    fn umasks_are_octal() {
        assert_eq!(parse_umask("022"), Ok(0o022));
        assert_eq!(parse_umask("77"), Ok(0o077));
        assert!(parse_umask("8").is_err());
        assert!(parse_umask("1000").is_err());
    }
}
