//! pjdfstest, the POSIX file-system test suite (its Rust port, `cargo install
//! pjdfstest`), on a real mount: `dcloud-fs mount --allow-other` of a local store, the
//! suite run in a channel folder. The test fails if a group passes fewer of its test
//! cases than this version reaches ([`AT_LEAST`]), so POSIX behaviour can't slip back;
//! raise the floors as it gets better. What fails, and why, is in the README (POSIX).
//!
//! Needs root, /dev/fuse, fusermount3, the `pjdfstest` binary (on PATH or in
//! `~/.cargo/bin`) and the suite's two dummy users: `tests` (group `tests`) and
//! `nobody` (group `nogroup`); `.ci/run` installs and creates them. Without them the
//! test says why and passes, except under CI (`CI` set), where it fails instead.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dcloud-fs");

/// Test cases each group must pass (of those pjdfstest 0.2.2 runs in it).
const AT_LEAST: [(&str, u32); 15] = [
    ("chmod", 32),
    ("chown", 24),
    ("ftruncate", 6),
    ("link", 38),
    ("mkdir", 20),
    ("mkfifo", 20),
    ("mknod", 38),
    ("open", 25),
    ("posix_fallocate", 5),
    ("rename", 50),
    ("rmdir", 22),
    ("symlink", 23),
    ("truncate", 18),
    ("unlink", 33),
    ("utimensat", 20),
];

/// The suite's configuration: the features the mount has, and its dummy users.
const CONFIG: &str = r#"
[features]
posix_fallocate = {}
utimensat = {}
utime_now = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
"#;

/// Why the suite can't run here, if it can't.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions and can't fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    if Command::new("fusermount3").arg("-V").output().is_err() {
        return Some("no fusermount3 (install fuse3)".into());
    }
    for (kind, name) in [
        ("passwd", "tests"),
        ("group", "tests"),
        ("group", "nogroup"),
    ] {
        let known = Command::new("getent")
            .args([kind, name])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !known {
            return Some(format!(
                "no {kind} entry '{name}' (useradd -M tests; nogroup comes with Debian)"
            ));
        }
    }
    if pjdfstest().is_none() {
        return Some("no pjdfstest binary (cargo install --locked pjdfstest)".into());
    }
    None
}

fn pjdfstest() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("pjdfstest"));
    let in_cargo =
        std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin/pjdfstest"));
    on_path.chain(in_cargo).find(|path| path.is_file())
}

/// A mount in the foreground, unmounted and stopped when it goes.
struct Mount {
    child: Child,
    point: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        // SAFETY: kill with a child's pid and SIGTERM has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.point)
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(home: &Path, args: &[&str]) {
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(out.status.success(), "dcloud-fs {args:?}: {out:?}");
}

/// Test cases per group, as pjdfstest's lines `group::case ... ok|FAILED|skipped`.
fn tally(output: &str) -> BTreeMap<String, (u32, u32, u32)> {
    let mut groups: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    for line in output.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(verdict), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Some((group, _)) = name.split_once("::") else {
            continue;
        };
        let counts = groups.entry(group.to_string()).or_default();
        match verdict {
            "ok" => counts.0 += 1,
            "FAILED" => counts.1 += 1,
            "skipped" => counts.2 += 1,
            _ => {}
        }
    }
    groups
}

#[test]
fn pjdfstest_passes_at_least_what_this_version_reaches() {
    if let Some(why) = cannot_run() {
        assert!(
            std::env::var_os("CI").is_none(),
            "pjdfstest can't run under CI: {why}"
        );
        println!("SKIPPED: pjdfstest needs {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The dummy users reach the mount point through it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    let point = dir.path().join("mnt");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&point).unwrap();
    cli(&home, &["keygen"]);
    cli(&home, &["mkdir", "posix"]);
    let child = Command::new(BIN)
        .args(["mount", "-f", "--allow-other"])
        .arg(&point)
        .env_clear()
        .env("HOME", &home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mount = Mount {
        child,
        point: point.clone(),
    };
    let folder = point.join("posix");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !folder.is_dir() {
        assert!(Instant::now() < deadline, "the mount never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("pjdfstest.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = Command::new(pjdfstest().unwrap())
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&folder)
        .current_dir(&folder)
        .output()
        .unwrap();
    drop(mount);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let groups = tally(&text);
    let mut report = String::from("group            passed failed skipped\n");
    for (group, (ok, failed, skipped)) in &groups {
        report.push_str(&format!("{group:<16} {ok:>6} {failed:>6} {skipped:>7}\n"));
    }
    let (ok, failed): (u32, u32) = groups
        .values()
        .fold((0, 0), |(o, f), (ok, failed, _)| (o + ok, f + failed));
    report.push_str(&format!(
        "all              {ok:>6} {failed:>6}  ({:.1} % of those run)\n",
        100.0 * f64::from(ok) / f64::from((ok + failed).max(1))
    ));
    println!("{report}");
    for (group, floor) in AT_LEAST {
        let passed = groups.get(group).map_or(0, |counts| counts.0);
        assert!(
            passed >= floor,
            "pjdfstest group {group}: {passed} passed, fewer than the {floor} this version \
             reached\n{report}"
        );
    }
}
