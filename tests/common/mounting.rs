//! The real-mount tests' harness (tests/mount.rs, tests/mount_posix.rs): a user with a
//! HOME, a store (a local folder with small limits, or the fake Discord), a key and the
//! channels `docs` and `other`; `dcloud-fs mount -f` as a child, stopped as a service
//! manager would; and the suite run in both write-back modes (`in_both_modes!`).
//! Include it with `#[macro_use] #[path = "common/mounting.rs"] mod mounting;` after
//! `mod data;` (it uses `crate::data`).

#![allow(dead_code, unused_macros)]

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fake_discord::FakeDiscord;

pub const BIN: &str = env!("CARGO_BIN_EXE_dcloud-fs");
pub const KIB: usize = 1024;

/// Why real mounts can't run here, if they can't.
pub fn cannot_mount() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions and can't fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root");
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse");
    }
    let found = Command::new("fusermount3")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        return Some("no fusermount3 (install fuse3)");
    }
    None
}

/// How the mounts of a test upload what is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteBack {
    /// `--write-back 0`: close uploads, and returns the upload's error.
    Off,
    /// The default settle time: close returns once the file is in the spool; the
    /// store has it after a sync point a user would use (`sync FILE`, an unmount).
    Default,
}

/// Runs test `$name(mode: WriteBack)` twice, as `$name::write_back_off` and
/// `$name::write_back_on` (the default write-back): the suite under both.
macro_rules! in_both_modes {
    ($name:ident) => {
        mod $name {
            #[test]
            fn write_back_off() {
                super::$name(super::WriteBack::Off);
            }

            #[test]
            fn write_back_on() {
                super::$name(super::WriteBack::Default);
            }
        }
    };
}

/// Returns early (passing) from a test that can't mount here.
macro_rules! need_fuse {
    () => {
        if let Some(why) = cannot_mount() {
            println!("skipping a real-mount test: {why}");
            return;
        }
    };
}

/// Where the store is: a local folder, or the fake Discord server.
pub enum Backend {
    Local,
    Discord(FakeDiscord),
}

/// A user: a HOME, a store, a scratch folder and a mount point.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    /// How [`Env::mount`] mounts when the test doesn't say `--write-back`.
    pub write_back: WriteBack,
}

impl Env {
    /// A local store with small limits, a key, and channels `docs` and `other`.
    pub fn new() -> Env {
        Env::with(WriteBack::Off)
    }

    /// [`Env::new`], whose mounts upload as `write_back` says.
    pub fn with(write_back: WriteBack) -> Env {
        Env::with_attachments_of(write_back, 16 * KIB)
    }

    /// [`Env::with`], with a store that takes attachments of at most `max_file_size`
    /// bytes (16 KiB cuts files in many chunks; a record with large extended attributes
    /// needs more).
    pub fn with_attachments_of(write_back: WriteBack, max_file_size: usize) -> Env {
        let mut env = Env::bare_with(Backend::Local, max_file_size);
        env.write_back = write_back;
        env.ok(&["keygen"]);
        env.ok(&["mkdir", "docs"]);
        env.ok(&["mkdir", "other"]);
        env
    }

    /// The folders only: no key, no channels.
    pub fn bare(backend: Backend) -> Env {
        Env::bare_with(backend, 16 * KIB)
    }

    fn bare_with(backend: Backend, max_file_size: usize) -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
            backend,
            write_back: WriteBack::Off,
        };
        if let Backend::Local = env.backend {
            fs::create_dir_all(env.store()).unwrap();
            let guild = serde_json::json!({
                "format": 1,
                "user_id": 1_000_000_000_000_001u64,
                "limits": {
                    "max_file_size": max_file_size,
                    "max_attachments": 4,
                    "max_request_size": (4 * max_file_size + 6000).max(70_000),
                    "max_content_chars": 2000,
                },
            });
            fs::write(env.store().join("guild.json"), guild.to_string()).unwrap();
        }
        fs::create_dir_all(env.work()).unwrap();
        fs::create_dir_all(env.mnt()).unwrap();
        env
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// The mount point.
    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// A path under the mount point.
    pub fn at(&self, path: &str) -> PathBuf {
        self.mnt().join(path)
    }

    /// With write-back on, `sync FILE` (an fsync of it) for each path under the mount:
    /// the sync point a user would reach before looking at the store. With it off,
    /// nothing: close has uploaded the file.
    pub fn sync_if_write_back(&self, paths: &[&str]) {
        if self.write_back == WriteBack::Off {
            return;
        }
        let paths: Vec<PathBuf> = paths.iter().map(|p| self.at(p)).collect();
        let args: Vec<&dyn AsRef<std::ffi::OsStr>> = paths
            .iter()
            .map(|p| p as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        self.tool("sync", &args);
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(self.work())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            // Replaced messages are deleted at once: the tests count what is left.
            .env("DCLOUD_FREE_GRACE_SECS", "0");
        match &self.backend {
            Backend::Local => {
                command.env("DCLOUD_LOCAL", self.store());
            }
            Backend::Discord(fake) => {
                command
                    .env("DCLOUD_API", fake.api_base())
                    .env("DCLOUD_TOKEN", fake.token())
                    .env("DCLOUD_GUILD", fake.guild_id().to_string());
            }
        }
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs a dcloud-fs command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        crate::data::succeeded(args, self.run(args))
    }

    /// Runs a dcloud-fs command that must fail with one line; returns the line.
    pub fn fails(&self, args: &[&str]) -> String {
        crate::data::failed_with_one_line(args, self.run(args))
    }

    /// A file's content in the store, read with the CLI (not through a mount).
    pub fn get(&self, path: &str) -> Vec<u8> {
        let output = self.run(&["get", path, "-"]);
        assert!(
            output.status.success(),
            "get {path}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// Runs a tool (cp, mv, ls, ...) that must succeed; returns its stdout.
    pub fn tool(&self, program: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
        let output = Command::new(program)
            .args(args.iter().map(|a| a.as_ref()))
            .current_dir(self.work())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `dcloud-fs mount -f` with `extra` options, once it is mounted. Without a
    /// `--write-back` among them, as the test's [`WriteBack`] says: off
    /// (`--write-back 0`, so that the store has a file once its close returns), or the
    /// default settle time; the write-back tests say `--write-back`.
    pub fn mount(&self, extra: &[&str]) -> Mount<'_> {
        let spool = self.spool();
        let mnt = self.mnt();
        let mut args = vec!["-v", "mount", "-f", "--poll-interval", "1"];
        args.extend(["--spool-dir", spool.to_str().unwrap()]);
        if !extra.contains(&"--write-back") && self.write_back == WriteBack::Off {
            args.extend(["--write-back", "0"]);
        }
        args.extend(extra);
        args.push(mnt.to_str().unwrap());
        let log = self.dir.path().join(format!("mount-{}.log", unique()));
        let child = self
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut mount = Mount {
            env: self,
            child: Some(child),
            log,
        };
        mount.wait_mounted();
        mount
    }
}

impl Env {
    /// Forgets everything this machine knows besides the key, as a new machine of the
    /// same user would start: the index cache, the chunk cache, the run folder and the
    /// spool. Only between mounts.
    pub fn forget_local_state(&self) {
        for dir in [self.home().join(".cache"), self.spool()] {
            if dir.exists() {
                fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
}

pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Whether a FUSE file system is mounted at `path` (as /proc/self/mountinfo says).
pub fn is_mounted(path: &Path) -> bool {
    let path = path.to_str().unwrap().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let fs_type = fields
                .iter()
                .position(|f| *f == "-")
                .and_then(|dash| fields.get(dash + 1));
            fields.get(4) == Some(&path.as_str()) && fs_type.is_some_and(|t| t.starts_with("fuse"))
        })
}

/// Waits up to `limit` for `done`.
pub fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// A running `mount -f`. Dropping it stops it (and unmounts by force if need be).
pub struct Mount<'a> {
    pub env: &'a Env,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Mount<'_> {
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_mounted(&mut self) {
        let mnt = self.env.mnt();
        let start = Instant::now();
        while !is_mounted(&mnt) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mount exited ({status}): {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "not mounted after 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, as the user's Ctrl-C or a service manager would stop it; it must
    /// unmount and exit 0.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        signal(&child, libc::SIGTERM);
        let status = wait_child(&mut child, Duration::from_secs(20));
        assert_eq!(
            status,
            Some(0),
            "mount did not stop cleanly: {}",
            self.log()
        );
        assert!(!is_mounted(&self.env.mnt()), "still mounted after stopping");
    }

    /// SIGKILL: the daemon dies on the spot; its mount stays behind, dead.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().unwrap();
        signal(&child, libc::SIGKILL);
        let _ = child.wait();
        force_unmount(&self.env.mnt());
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if wait_child(&mut child, Duration::from_secs(10)).is_none() {
                signal(&child, libc::SIGKILL);
                let _ = child.wait();
            }
        }
        force_unmount(&self.env.mnt());
    }
}

pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

/// The exit code, once the child exits (None if it didn't within `limit`, or died of a
/// signal).
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts whatever is left at `mnt`.
pub fn force_unmount(mnt: &Path) {
    for _ in 0..3 {
        if !is_mounted(mnt) {
            return;
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
        if is_mounted(mnt) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(mnt)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Writes `data` to a new file through the mount; close must succeed (it uploads).
pub fn write_file(path: &Path, data: &[u8]) {
    let mut file = File::create(path).unwrap();
    file.write_all(data).unwrap();
    close(file).unwrap_or_else(|e| panic!("closing {}: {e}", path.display()));
}

/// Closes `file`, returning what close(2) says (dropping a `File` ignores it, and a
/// close on this file system is where an upload's error shows).
pub fn close(file: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    // SAFETY: the descriptor is ours (taken out of the File) and closed once.
    if unsafe { libc::close(file.into_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn errno_of(result: std::io::Result<impl Sized>) -> i32 {
    match result {
        Ok(_) => panic!("succeeded"),
        Err(e) => e.raw_os_error().unwrap_or(0),
    }
}

/// Makes the special file `path` of type `kind` (`S_IFIFO`, ...) with `rdev`.
pub fn make_node(path: &Path, kind: libc::mode_t, rdev: libc::dev_t) -> std::io::Result<()> {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mknod(c_path.as_ptr(), kind | 0o640, rdev) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `program --version` runs.
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Returns early (passing) from a test whose tool isn't installed.
macro_rules! need_tool {
    ($program:expr) => {
        if !have($program) {
            println!("skipping a real-mount test: no {}", $program);
            return;
        }
    };
}
