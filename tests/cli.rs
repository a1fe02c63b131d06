//! The `dcloud-fs` command line, run as a user would run it, on the local store.
//!
//! Each test gets its own HOME (so its own key, cache and default store). Most use a
//! store with tiny Discord-like limits, so that a few kilobytes already make files of
//! many chunks spread over many messages; the big-file test uses Discord's real limits.

#[path = "common/data.rs"]
mod data;

use data::random_bytes;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dcloud_fs::store::Limits;
use dcloud_fs::volume::ChunkPlan;

const BIN: &str = env!("CARGO_BIN_EXE_dcloud-fs");

/// Tiny limits: chunks of a few KiB, three to a message.
fn tiny_limits() -> Limits {
    Limits {
        max_file_size: 4096,
        max_attachments: 4,
        max_request_size: 10_000,
        max_content_chars: 2000,
    }
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// A fresh user with a store that has `limits`.
    fn new(limits: Limits) -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(env.store()).unwrap();
        let guild =
            serde_json::json!({"format": 1, "user_id": 1_000_000_000_000_001u64, "limits": limits});
        fs::write(env.store().join("guild.json"), guild.to_string()).unwrap();
        fs::create_dir_all(env.work()).unwrap();
        env
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A scratch folder for local files.
    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(self.work())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("DCLOUD_LOCAL", self.store())
            // Replaced messages are deleted at once: the tests count what is left.
            .env("DCLOUD_FREE_GRACE_SECS", "0");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        data::succeeded(args, self.run(args))
    }

    /// Runs a command that must fail with one line on stderr; returns that line.
    fn fails(&self, args: &[&str]) -> String {
        data::failed_with_one_line(args, self.run(args))
    }

    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.work().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        path
    }

    fn read(&self, name: &str) -> Vec<u8> {
        fs::read(self.work().join(name)).unwrap()
    }

    /// Every file under the store, for looking at what it holds.
    fn stored_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(&self.store(), &mut files);
        files
    }

    /// Attachments of the messages in the store (what a Discord channel would show).
    fn message_attachments(&self) -> usize {
        self.stored_files()
            .into_iter()
            .filter(|p| p.parent().unwrap().ends_with("messages"))
            .filter(|p| p.extension().is_some_and(|e| e == "json")) // not a post cut short
            .filter_map(|p| fs::read(p).ok())
            .filter_map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .map(|m| m["attachments"].as_array().map_or(0, Vec::len))
            .sum()
    }

    /// Attachment files in the store.
    fn attachments(&self) -> Vec<PathBuf> {
        self.stored_files()
            .into_iter()
            .filter(|p| p.parent().unwrap().ends_with("attachments"))
            .collect()
    }
}

fn tiny_chunk() -> usize {
    ChunkPlan::new(&tiny_limits(), dcloud_fs::format::ChunkKind::Segmented)
        .unwrap()
        .chunk_len
}

fn with_key_and_channel(limits: Limits) -> Env {
    let env = Env::new(limits);
    env.ok(&["keygen"]);
    env.ok(&["mkdir", "docs"]);
    env
}

#[test]
fn round_trips_at_chunk_boundaries() {
    let env = with_key_and_channel(tiny_limits());
    let chunk = tiny_chunk();
    let per_message = 3;
    let sizes = [
        0,
        1,
        chunk - 1,
        chunk,
        chunk + 1,
        per_message * chunk,
        per_message * chunk + 1,
        7 * per_message * chunk + 5,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let data = random_bytes(size, i as u64);
        let name = format!("f{size}");
        env.write(&name, &data);
        env.ok(&["put", &name, "docs"]);
        env.ok(&["get", &format!("docs/{name}"), &format!("{name}.back")]);
        assert_eq!(env.read(&format!("{name}.back")), data, "size {size}");
    }
    let listing = env.ok(&["ls", "-l", "docs"]);
    for size in sizes {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" f{size}")))
            .unwrap_or_else(|| panic!("f{size} not listed: {listing}"));
        assert!(line.contains(&format!(" {size} ")), "{line}");
        assert!(line.starts_with("-rw"), "{line}");
    }
}

#[test]
fn fifty_mib_random_file_round_trips_on_discord_limits() {
    let env = with_key_and_channel(Limits::default());
    let data = random_bytes(50 * 1024 * 1024, 42);
    env.write("big.bin", &data);
    env.ok(&["put", "big.bin", "docs/backups/big.bin"]);
    let listing = env.ok(&["ls", "-l", "docs/backups"]);
    assert!(listing.contains(&format!(" {} ", data.len())), "{listing}");
    env.ok(&["get", "docs/backups/big.bin", "back.bin"]);
    assert!(
        env.read("back.bin") == data,
        "50 MiB file came back different"
    );
    // Every attachment is within Discord's per-file limit.
    for attachment in env.attachments() {
        assert!(fs::metadata(&attachment).unwrap().len() <= Limits::default().max_file_size);
    }
}

#[test]
fn names_with_spaces_unicode_and_nested_paths() {
    let env = with_key_and_channel(tiny_limits());
    let names = [
        "a file with spaces.txt",
        "naïve café ☕.md",
        "日本語のファイル",
    ];
    for (i, name) in names.iter().enumerate() {
        env.write(name, &random_bytes(5000 + i, i as u64));
        env.ok(&["put", name, &format!("docs/deep/er/{name}")]);
    }
    assert_eq!(env.ok(&["ls", "docs"]), "deep/\n");
    let listed = env.ok(&["ls", "docs/deep/er"]);
    for name in names {
        assert!(listed.lines().any(|l| l == name), "{name} not in {listed}");
        env.ok(&["get", &format!("docs/deep/er/{name}"), "out"]);
        assert_eq!(env.read("out"), env.read(name));
    }
}

#[test]
fn mv_then_get_and_rm_then_get() {
    let env = with_key_and_channel(tiny_limits());
    let data = random_bytes(20_000, 7);
    env.write("x.bin", &data);
    env.ok(&["put", "x.bin", "docs"]);
    let attachments_before = env.attachments().len();
    env.ok(&["mv", "docs/x.bin", "docs/sub/y.bin"]);
    // Renaming uploads no chunk again.
    assert_eq!(env.attachments().len(), attachments_before);
    assert_eq!(env.ok(&["ls", "docs"]), "sub/\n");
    env.ok(&["get", "docs/sub/y.bin", "y.bin"]);
    assert_eq!(env.read("y.bin"), data);
    let err = env.fails(&["get", "docs/x.bin", "x2.bin"]);
    assert!(err.contains("no such file or folder: docs/x.bin"), "{err}");

    env.ok(&["rm", "docs/sub/y.bin"]);
    let err = env.fails(&["get", "docs/sub/y.bin", "y2.bin"]);
    assert!(err.contains("no such file"), "{err}");
    assert!(!env.work().join("y2.bin").exists());
    // The messages are really freed: no attachment is left.
    assert_eq!(env.attachments().len(), 0);
}

#[test]
fn mv_across_channels_and_into_folders() {
    let env = with_key_and_channel(tiny_limits());
    env.ok(&["mkdir", "other"]);
    let data = random_bytes(12_345, 9);
    env.write("m.bin", &data);
    env.ok(&["put", "m.bin", "docs/folder/m.bin"]);
    let uploaded = env.attachments();
    assert!(uploaded.len() > 3, "{uploaded:?}");
    env.ok(&["mv", "docs/folder", "other/"]);
    // Only records were posted: the chunks are the same attachments as before.
    assert_eq!(env.attachments(), uploaded);
    assert_eq!(env.ok(&["ls", "other/folder"]), "m.bin\n");
    assert!(env.fails(&["ls", "docs/folder"]).contains("no such file"));
    env.ok(&["get", "other/folder/m.bin", "back"]);
    assert_eq!(env.read("back"), data);
    env.ok(&["mkdir", "other/dir"]);
    env.ok(&["mv", "other/folder/m.bin", "other/dir"]);
    assert_eq!(env.ok(&["ls", "other/dir"]), "m.bin\n");
    // Deleting the file in its new channel frees its chunks in the old one.
    env.ok(&["rm", "other/dir/m.bin"]);
    assert_eq!(env.attachments(), Vec::<PathBuf>::new());
    assert!(
        env.fails(&["get", "other/dir/m.bin", "gone"])
            .contains("no such file")
    );
}

#[test]
fn stored_bytes_hold_none_of_the_plaintext_or_names() {
    let env = with_key_and_channel(tiny_limits());
    let marker = b"CONFIDENTIAL-MARKER-1234";
    let data: Vec<u8> = marker.iter().copied().cycle().take(30_000).collect();
    env.write("secret-plans.txt", &data);
    env.ok(&[
        "put",
        "secret-plans.txt",
        "docs/private-folder/secret-plans.txt",
    ]);
    let files = env.stored_files();
    assert!(files.len() > 5);
    for file in files {
        let bytes = fs::read(&file).unwrap();
        for needle in [&marker[..12], b"secret-plans", b"private-folder"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds {:?}",
                file.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    // The key never goes into the store.
    let key_text = fs::read_to_string(env.home().join(".config/dcloud-fs/key")).unwrap();
    let key = key_text.trim();
    for file in env.stored_files() {
        let text = String::from_utf8_lossy(&fs::read(&file).unwrap()).to_string();
        assert!(!text.contains(key));
    }
}

#[test]
fn wrong_key_missing_key_and_exposed_key_are_clear_errors() {
    let env = with_key_and_channel(tiny_limits());
    env.write("a.txt", b"some text");
    env.ok(&["put", "a.txt", "docs"]);
    let first_id = env.ok(&["ls", "docs"]);
    assert_eq!(first_id, "a.txt\n");

    // Another key.
    let other = env.dir.path().join("other.key");
    let out = env.ok(&["--key-file", other.to_str().unwrap(), "keygen"]);
    let other_id = out.split_whitespace().nth(2).unwrap().to_string();
    let err = env.fails(&[
        "--key-file",
        other.to_str().unwrap(),
        "get",
        "docs/a.txt",
        "b.txt",
    ]);
    assert!(
        err.contains("wrong key (file was written with key id"),
        "{err}"
    );
    assert!(err.contains(&format!("you have {other_id}")), "{err}");
    assert!(!env.work().join("b.txt").exists());

    // No key at all.
    let key_path = env.home().join(".config/dcloud-fs/key");
    let moved = env.dir.path().join("moved.key");
    fs::rename(&key_path, &moved).unwrap();
    let err = env.fails(&["get", "docs/a.txt", "b.txt"]);
    assert!(err.contains("no key is loaded"), "{err}");
    let err = env.fails(&["put", "a.txt", "docs/new.txt"]);
    assert!(err.contains("keygen") && err.contains("--plain"), "{err}");

    // A key file others can read.
    fs::rename(&moved, &key_path).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = env.fails(&["ls", "docs"]);
    assert!(err.contains("chmod 600"), "{err}");
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();

    // The key from the environment works the same as the file.
    let key_text = fs::read_to_string(&key_path).unwrap();
    let output = env
        .command(&["get", "docs/a.txt", "-"])
        .env("DCLOUD_KEY", key_text.trim())
        .env("DCLOUD_KEY_FILE", env.dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(output.stdout, b"some text");
    // keygen refuses to overwrite.
    let err = env.fails(&["keygen"]);
    assert!(err.contains("refusing to overwrite"), "{err}");
}

#[test]
fn passphrase_keys_are_the_same_everywhere() {
    let env = with_key_and_channel(tiny_limits());
    let make = |name: &str| {
        let path = env.dir.path().join(name);
        let mut child = env
            .command(&[
                "--key-file",
                path.to_str().unwrap(),
                "keygen",
                "--passphrase",
                "--salt",
                "me@example.org",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"correct horse battery staple\n")
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        fs::read_to_string(path).unwrap()
    };
    assert_eq!(make("k1"), make("k2"));
    let output = env
        .command(&["put", "--help"])
        .env("DCLOUD_PASSPHRASE", "x")
        .output()
        .unwrap();
    assert!(output.status.success());
}

#[test]
fn plain_files_need_no_key_and_are_stored_as_is() {
    let env = Env::new(tiny_limits());
    env.ok(&["mkdir", "public"]);
    let data = random_bytes(9000, 3);
    env.write("share.bin", &data);
    env.ok(&["put", "--plain", "share.bin", "public"]);
    assert!(env.ok(&["ls", "-l", "public"]).contains(" plain "));
    env.ok(&["get", "public/share.bin", "back"]);
    assert_eq!(env.read("back"), data);
    // The attachments are the file's bytes: concatenated in order they are the file.
    let mut stored: Vec<Vec<u8>> = env
        .attachments()
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect();
    stored.sort_by_key(|chunk| data.windows(chunk.len()).position(|w| w == &chunk[..]));
    assert_eq!(stored.concat(), data);
}

#[test]
fn folders_round_trip_recursively() {
    let env = with_key_and_channel(tiny_limits());
    env.write("tree/a.txt", b"alpha");
    env.write("tree/sub/b.bin", &random_bytes(10_000, 1));
    env.write("tree/sub/deeper/c", b"");
    fs::create_dir_all(env.work().join("tree/empty")).unwrap();
    let err = env.fails(&["put", "tree", "docs"]);
    assert!(err.contains("use -r"), "{err}");
    env.ok(&["put", "-r", "tree", "docs"]);
    assert_eq!(env.ok(&["ls", "docs/tree"]), "a.txt\nempty/\nsub/\n");
    let err = env.fails(&["get", "docs/tree", "copy"]);
    assert!(err.contains("use -r"), "{err}");
    env.ok(&["get", "-r", "docs/tree", "copy"]);
    for file in ["a.txt", "sub/b.bin", "sub/deeper/c"] {
        assert_eq!(
            env.read(&format!("copy/{file}")),
            env.read(&format!("tree/{file}")),
            "{file}"
        );
    }
    assert!(env.work().join("copy/empty").is_dir());
    let err = env.fails(&["rm", "docs/tree"]);
    assert!(err.contains("use -r"), "{err}");
    env.ok(&["rm", "-r", "docs/tree"]);
    assert_eq!(env.ok(&["ls", "docs"]), "");
    assert_eq!(env.attachments().len(), 0);
}

#[test]
fn symbolic_links_travel_as_links_unless_followed() {
    use std::os::unix::fs::symlink;
    let env = with_key_and_channel(tiny_limits());
    env.write("tree/a.txt", b"alpha");
    env.write("tree/sub/b.txt", b"beta");
    symlink("a.txt", env.work().join("tree/la")).unwrap();
    symlink("../a.txt", env.work().join("tree/sub/up")).unwrap();
    symlink("/nowhere/at/all", env.work().join("tree/dangling")).unwrap();
    symlink("sub", env.work().join("tree/to-sub")).unwrap();
    env.ok(&["put", "-r", "tree", "docs"]);
    let listing = env.ok(&["ls", "-l", "docs/tree"]);
    assert!(
        listing.contains("lrwxrwxrwx") && listing.contains("la -> a.txt"),
        "{listing}"
    );
    assert!(listing.contains("to-sub -> sub"), "{listing}");
    // Back as links, what they point to not followed (a dangling one included).
    env.ok(&["get", "-r", "docs/tree", "copy"]);
    for (link, target) in [
        ("la", "a.txt"),
        ("sub/up", "../a.txt"),
        ("dangling", "/nowhere/at/all"),
        ("to-sub", "sub"),
    ] {
        let path = env.work().join("copy").join(link);
        assert_eq!(fs::read_link(&path).unwrap(), Path::new(target), "{link}");
    }
    assert!(env.work().join("copy/sub").is_dir());
    assert_eq!(env.read("copy/sub/b.txt"), b"beta");
    // One link alone: made as a link; to stdout it has no bytes.
    env.ok(&["get", "docs/tree/la", "one"]);
    assert_eq!(
        fs::read_link(env.work().join("one")).unwrap(),
        Path::new("a.txt")
    );
    let err = env.fails(&["get", "docs/tree/la", "-"]);
    assert!(err.contains("symbolic link"), "{err}");
    // -L follows them instead (a dangling one is an error, the rest are stored).
    fs::remove_file(env.work().join("tree/dangling")).unwrap();
    env.ok(&["put", "-r", "-L", "tree", "docs/followed/"]);
    let listing = env.ok(&["ls", "-l", "docs/followed/tree"]);
    assert!(!listing.contains("->"), "{listing}");
    assert_eq!(env.ok(&["ls", "docs/followed/tree/to-sub"]), "b.txt\nup\n");
    env.ok(&["get", "docs/followed/tree/la", "followed"]);
    assert_eq!(env.read("followed"), b"alpha");
}

/// Makes the special file `path` of type `kind` (`S_IFIFO`, ...) with `rdev`.
fn make_node(path: &Path, kind: libc::mode_t, rdev: libc::dev_t) {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let made = unsafe { libc::mknod(c_path.as_ptr(), kind | 0o640, rdev) };
    assert_eq!(
        made,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn special_files_travel_with_their_type_mode_and_device_number() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let env = with_key_and_channel(tiny_limits());
    env.write("tree/a.txt", b"alpha");
    make_node(&env.work().join("tree/pipe"), libc::S_IFIFO, 0);
    make_node(&env.work().join("tree/sock"), libc::S_IFSOCK, 0);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        make_node(
            &env.work().join("tree/null"),
            libc::S_IFCHR,
            libc::makedev(1, 3),
        );
    }
    env.ok(&["put", "-r", "tree", "docs"]);
    let listing = env.ok(&["ls", "-l", "docs/tree"]);
    assert!(
        listing.contains("prw-r-----") && listing.contains("srw-r-----"),
        "{listing}"
    );
    env.ok(&["get", "-r", "docs/tree", "copy"]);
    let meta = |name: &str| fs::symlink_metadata(env.work().join("copy").join(name)).unwrap();
    assert!(meta("pipe").file_type().is_fifo());
    assert!(meta("sock").file_type().is_socket());
    assert_eq!(meta("pipe").mode() & 0o777, 0o640);
    assert_eq!(env.read("copy/a.txt"), b"alpha");
    if root {
        assert!(
            listing.contains("crw-r-----") && listing.contains("1, 3"),
            "{listing}"
        );
        assert!(meta("null").file_type().is_char_device());
        assert_eq!(meta("null").rdev(), libc::makedev(1, 3));
    }
    let err = env.fails(&["get", "docs/tree/pipe", "-"]);
    assert!(err.contains("special file"), "{err}");
}

#[test]
fn a_damaged_chunk_fails_the_get_and_leaves_no_partial_file() {
    let env = with_key_and_channel(tiny_limits());
    let data = random_bytes(30_000, 11);
    env.write("d.bin", &data);
    env.ok(&["put", "d.bin", "docs"]);
    env.write("existing", b"keep me");
    let mut attachments = env.attachments();
    attachments.sort();
    let victim = &attachments[attachments.len() / 2];
    let mut bytes = fs::read(victim).unwrap();
    bytes[40] ^= 0x01;
    fs::write(victim, bytes).unwrap();
    let err = env.fails(&["get", "docs/d.bin", "existing"]);
    assert!(err.contains("failed authentication"), "{err}");
    assert_eq!(env.read("existing"), b"keep me");
    let leftovers: Vec<_> = fs::read_dir(env.work())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Deleting the chunk's message entirely is a clear error too.
    fs::remove_file(victim).unwrap();
    let err = env.fails(&["get", "docs/d.bin", "-"]);
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn unknown_channels_and_files_are_one_line_errors() {
    let env = with_key_and_channel(tiny_limits());
    let err = env.fails(&["ls", "nope"]);
    assert!(
        err.contains("no channel named 'nope'") && err.contains("docs"),
        "{err}"
    );
    let err = env.fails(&["get", "docs/missing", "x"]);
    assert!(
        err.contains("no such file or folder: docs/missing"),
        "{err}"
    );
    let err = env.fails(&["put", "does-not-exist", "docs"]);
    assert!(err.contains("does-not-exist"), "{err}");
    let err = env.fails(&["rm", "docs"]);
    assert!(err.contains("use -r"), "{err}");
    let err = env.fails(&["mkdir", "docs"]);
    assert!(err.contains("already exists"), "{err}");
    env.ok(&["mkdir", "-p", "docs"]);
    env.ok(&["mkdir", "docs/sub"]);
    assert!(env.fails(&["mkdir", "docs/sub"]).contains("already exists"));
    env.ok(&["mkdir", "-p", "docs/sub"]);
    let err = env.fails(&["get", "docs/a/../b", "x"]);
    assert!(err.contains("invalid path"), "{err}");
}

#[test]
fn channels_lists_counts_and_sizes() {
    let env = with_key_and_channel(tiny_limits());
    env.ok(&["mkdir", "photos"]);
    env.write("one", &[1u8; 2048]);
    env.ok(&["put", "one", "photos/a"]);
    env.ok(&["put", "one", "photos/b"]);
    let table = env.ok(&["channels"]);
    let photos = table.lines().find(|l| l.starts_with("photos")).unwrap();
    assert!(
        photos.contains(" 2 ") && photos.contains("4.0 KiB"),
        "{photos}"
    );
    assert_eq!(env.ok(&["ls"]), "docs\nphotos\n");
}

#[test]
fn every_command_has_help() {
    let env = Env::new(tiny_limits());
    for command in [
        "keygen", "mkdir", "channels", "put", "get", "ls", "rm", "mv",
    ] {
        let help = env.ok(&[command, "--help"]);
        assert!(help.contains("Usage: dcloud-fs"), "{command}: {help}");
    }
}

#[test]
fn overwriting_replaces_and_frees_the_old_version() {
    let env = with_key_and_channel(tiny_limits());
    env.write("v1", &random_bytes(20_000, 1));
    env.write("v2", &random_bytes(3_000, 2));
    env.ok(&["put", "v1", "docs/f"]);
    env.ok(&["put", "v2", "docs/f"]);
    env.ok(&["get", "docs/f", "back"]);
    assert_eq!(env.read("back"), env.read("v2"));
    let stored: u64 = env
        .attachments()
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        stored < 4_000,
        "old version not freed: {stored} bytes stored"
    );
}

#[test]
fn a_second_machine_sees_the_same_files_without_a_cache() {
    let env = with_key_and_channel(tiny_limits());
    env.write("f", b"shared");
    env.ok(&["put", "f", "docs"]);
    let key = fs::read_to_string(env.home().join(".config/dcloud-fs/key")).unwrap();
    // Another HOME: no cache, same store, same key.
    let output = env
        .command(&["--no-cache", "get", "docs/f", "-"])
        .env("HOME", env.dir.path().join("home2"))
        .env("DCLOUD_KEY", key.trim())
        .output()
        .unwrap();
    assert_eq!(output.stdout, b"shared");
}

#[test]
fn ctrl_c_during_put_stops_and_leaves_nothing_behind() {
    let env = with_key_and_channel(tiny_limits());
    // Tiny chunks: thousands of messages, seconds of work to interrupt.
    env.write("big", &random_bytes(12 * 1024 * 1024, 5));
    let child = env
        .command(&["put", "big", "docs"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the upload is under way (some attachments stored), then interrupt.
    let started = std::time::Instant::now();
    while env.attachments().len() < 30 {
        assert!(started.elapsed().as_secs() < 60, "the upload never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(env.ok(&["ls", "docs"]), "");
    assert_eq!(
        env.attachments().len(),
        0,
        "uploaded chunks were left behind"
    );
}

#[test]
fn get_restores_mode_and_modification_time() {
    let env = with_key_and_channel(tiny_limits());
    let source = env.write("ro.txt", b"read only");
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(&source)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    fs::set_permissions(&source, fs::Permissions::from_mode(0o444)).unwrap();
    env.ok(&["put", "ro.txt", "docs"]);
    assert!(env.ok(&["ls", "-l", "docs"]).starts_with("-r--r--r-- "));
    env.ok(&["get", "docs/ro.txt", "back.txt"]);
    let metadata = fs::metadata(env.work().join("back.txt")).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o777, 0o444);
    assert_eq!(metadata.modified().unwrap(), mtime);
    assert_eq!(env.read("back.txt"), b"read only");
}

#[test]
fn an_unreadable_record_is_reported_not_shown() {
    let env = with_key_and_channel(tiny_limits());
    env.write("ok.txt", b"fine");
    env.ok(&["put", "ok.txt", "docs"]);
    // A record of ours whose bytes are garbage (as if damaged in the store).
    let channel_dir = fs::read_dir(env.store().join("channels"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("channel.json").exists())
        .unwrap();
    let channel_id: u64 = channel_dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let id = 1_000_000_000_000_000_000u64;
    let message = serde_json::json!({"id": id, "channel_id": channel_id,
        "author_id": 1_000_000_000_000_001u64, "content": "dcfs1 AAAAAAAAAAAAAAAAAAAA", "attachments": []});
    fs::write(
        channel_dir.join(format!("messages/{id}.json")),
        message.to_string(),
    )
    .unwrap();

    let output = env.run(&["--no-cache", "ls", "docs"]);
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok.txt\n");
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 record(s) in 'docs' are damaged"));
    let err = env.fails(&["-q", "--no-cache", "get", "docs/lost.txt", "x"]);
    assert!(
        err.contains("no such file or folder: docs/lost.txt") && err.contains("could not be read"),
        "{err}"
    );
}

#[test]
fn an_upload_killed_outright_is_reclaimed_at_the_next_open() {
    let env = with_key_and_channel(tiny_limits());
    env.write("keep", b"kept");
    env.ok(&["put", "keep", "docs"]);
    let kept = env.message_attachments();
    env.write("big", &random_bytes(12 * 1024 * 1024, 6));
    let mut child = env.command(&["put", "big", "docs"]).spawn().unwrap();
    let started = std::time::Instant::now();
    while env.message_attachments() < kept + 30 {
        assert!(started.elapsed().as_secs() < 60, "the upload never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert!(
        env.message_attachments() > kept,
        "the killed upload left nothing to reclaim"
    );
    // Any command that opens the channel reclaims what the dead upload left.
    assert_eq!(env.ok(&["ls", "docs"]), "keep\n");
    assert_eq!(
        env.message_attachments(),
        kept,
        "orphaned chunks were not reclaimed"
    );
    // Nor is anything left of a post the kill cut short inside the store.
    assert_eq!(env.attachments().len(), kept);
    let staged = env
        .stored_files()
        .into_iter()
        .filter(|p| p.parent().unwrap().ends_with("staging"))
        .count();
    assert_eq!(staged, 0, "staged files of the dead upload are left");
    env.ok(&["get", "docs/keep", "back"]);
    assert_eq!(env.read("back"), b"kept");
    let journals = env.home().join(".cache/dcloud-fs/index/uploads");
    let left: Vec<_> = fs::read_dir(journals)
        .into_iter()
        .flatten()
        .flat_map(|store| fs::read_dir(store.unwrap().path()).unwrap())
        .collect();
    assert!(left.is_empty(), "journals left: {left:?}");
}

#[test]
fn small_files_are_packed_into_one_message_and_fail_alone() {
    let env = with_key_and_channel(tiny_limits());
    for i in 0..10 {
        env.write(
            &format!("tree/f{i}.txt"),
            format!("small file {i}").as_bytes(),
        );
    }
    env.write("tree/big.bin", &random_bytes(20_000, 1));
    let messages = || {
        env.stored_files()
            .into_iter()
            .filter(|p| p.parent().unwrap().ends_with("messages"))
            .count()
    };
    env.ok(&["put", "-r", "tree", "docs"]);
    // Ten small files packed into one message (their chunks in one attachment); the
    // big file takes its own (2 data + 1 record).
    assert_eq!(messages(), 1 + 3);
    env.ok(&["get", "-r", "docs/tree", "copy"]);
    for i in 0..10 {
        assert_eq!(
            env.read(&format!("copy/f{i}.txt")),
            format!("small file {i}").as_bytes()
        );
    }
    assert_eq!(env.read("copy/big.bin"), env.read("tree/big.bin"));

    // A file that can't go where it should fails alone; the others of its batch land.
    env.ok(&["rm", "-r", "docs/tree"]);
    env.ok(&["mkdir", "docs/tree/f3.txt"]);
    env.ok(&["mkdir", "docs/tree/f7.txt"]);
    let output = env.run(&["put", "-r", "tree", "docs"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("docs/tree/f3.txt is a folder"), "{stderr}");
    assert!(stderr.contains("docs/tree/f7.txt is a folder"), "{stderr}");
    let listed = env.ok(&["ls", "docs/tree"]);
    assert_eq!(listed.lines().count(), 11, "{listed}");
    assert!(listed.contains("f3.txt/") && listed.contains("f4.txt") && listed.contains("big.bin"));
}

/// `dcloud-fs config` shows each setting with where it comes from, in the order
/// flag > environment > config file > default, and never the token.
#[test]
fn config_shows_each_setting_and_its_source() {
    let env = Env::new(tiny_limits());
    let config_dir = env.home().join(".config/dcloud-fs");
    fs::create_dir_all(&config_dir).unwrap();
    let config = config_dir.join("config.toml");
    fs::write(
        &config,
        "token = \"zq-secret-token-zq\"\nguild = 77\ncache_size_mib = 64\n\
         poll_interval_secs = 9\nmount_point = \"~/drive\"\nread_only = true\n",
    )
    .unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    let output = env
        .command(&["config", "--cache-dir", "/var/tmp/flagged"])
        .env("DCLOUD_POLL_INTERVAL_SECS", "3")
        .env("DCLOUD_GUILD", "88")
        .output()
        .unwrap();
    let shown = data::succeeded(&["config"], output);
    assert!(!shown.contains("zq-secret-token-zq"), "{shown}");
    let row = |name: &str| -> String {
        shown
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name}: {shown}"))
            .to_string()
    };
    assert!(row("token").contains("config file"), "{shown}");
    assert!(row("guild").contains("88") && row("guild").contains("DCLOUD_GUILD"));
    assert!(row("cache_size_mib").contains("64") && row("cache_size_mib").contains("config file"));
    assert!(row("poll_interval_secs").contains("3 ") || row("poll_interval_secs").contains(" 3"));
    assert!(row("poll_interval_secs").contains("DCLOUD_POLL_INTERVAL_SECS"));
    assert!(
        row("cache_dir").contains("/var/tmp/flagged") && row("cache_dir").contains("--cache-dir")
    );
    let drive = env.home().join("drive");
    assert!(
        row("mount_point").contains(drive.to_str().unwrap()),
        "{shown}"
    );
    assert!(row("read_only").contains("true"));
    assert!(row("allow_other").contains("default"));
    assert!(
        shown.contains("(DCLOUD_LOCAL)") || shown.contains("local folder"),
        "{shown}"
    );

    // A bad value in the environment is one line naming the variable.
    let output = env
        .command(&["config"])
        .env("DCLOUD_REQUEST_TIMEOUT_SECS", "soon")
        .output()
        .unwrap();
    let line = data::failed_with_one_line(&["config"], output);
    assert!(line.contains("DCLOUD_REQUEST_TIMEOUT_SECS"), "{line}");
}

/// `checkpoints = false` (or `DCLOUD_CHECKPOINTS=false`): a machine without an index
/// cache replays the whole history instead of starting from the newest checkpoint.
#[test]
fn checkpoints_can_be_turned_off() {
    let env = Env::new(tiny_limits());
    env.ok(&["keygen"]);
    env.ok(&["mkdir", "docs"]);
    fs::write(env.work().join("a.txt"), "a").unwrap();
    env.ok(&["put", "a.txt", "docs/"]);
    // gc posts a checkpoint (and deletes nothing: everything is younger than a day).
    env.ok(&["gc", "docs"]);
    let fresh_ls = |checkpoints: Option<&str>| {
        let mut command = env.command(&["--no-cache", "-v", "ls", "docs"]);
        if let Some(value) = checkpoints {
            command.env("DCLOUD_CHECKPOINTS", value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("a.txt"));
        stderr
    };
    assert!(fresh_ls(None).contains("starting from checkpoint"));
    let stderr = fresh_ls(Some("false"));
    assert!(!stderr.contains("starting from checkpoint"), "{stderr}");
    assert!(fresh_ls(Some("on")).contains("starting from checkpoint"));

    let config_dir = env.home().join(".config/dcloud-fs");
    fs::create_dir_all(&config_dir).unwrap();
    fs::write(config_dir.join("config.toml"), "checkpoints = false\n").unwrap();
    let stderr = fresh_ls(None);
    assert!(!stderr.contains("starting from checkpoint"), "{stderr}");
    let shown = env.ok(&["config"]);
    let row = shown
        .lines()
        .find(|line| line.split_whitespace().next() == Some("checkpoints"))
        .unwrap_or_else(|| panic!("no checkpoints row: {shown}"));
    assert!(
        row.contains("false") && row.contains("config file"),
        "{row}"
    );
    let output = env
        .command(&["config"])
        .env("DCLOUD_CHECKPOINTS", "sometimes")
        .output()
        .unwrap();
    let line = data::failed_with_one_line(&["config"], output);
    assert!(line.contains("DCLOUD_CHECKPOINTS"), "{line}");
}

/// `checkpoint_every` (or `DCLOUD_CHECKPOINT_EVERY`): how many records make a checkpoint
/// due; 0 posts none from this machine, which still starts from the newest one.
#[test]
fn how_often_checkpoints_are_posted_can_be_set() {
    let env = Env::new(tiny_limits());
    env.ok(&["keygen"]);
    env.ok(&["mkdir", "docs"]);
    let fresh_ls = || {
        let output = env
            .command(&["--no-cache", "-v", "ls", "docs"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        stderr
    };
    let put = |name: &str, every: &str| {
        fs::write(env.work().join(name), name).unwrap();
        let output = env
            .command(&["put", name, "docs/"])
            .env("DCLOUD_CHECKPOINT_EVERY", every)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    };
    // Never: no checkpoint, a fresh machine replays.
    put("a.txt", "0");
    assert!(!fresh_ls().contains("starting from checkpoint"));
    // After every record: the put posted one.
    put("b.txt", "1");
    let first = fresh_ls();
    assert!(first.contains("starting from checkpoint"), "{first}");
    // 0 again: the next put posts none, and a fresh machine still starts from the one
    // there is (the same one) and reads the record after it.
    put("c.txt", "0");
    let again = fresh_ls();
    let from = |log: &str| {
        log.lines()
            .find(|l| l.contains("starting from checkpoint"))
            .map(|l| {
                l.split("starting from checkpoint")
                    .nth(1)
                    .unwrap()
                    .to_owned()
            })
    };
    assert_eq!(from(&again), from(&first), "{again}");
    let listing = env.ok(&["ls", "docs"]);
    assert!(
        ["a.txt", "b.txt", "c.txt"]
            .iter()
            .all(|n| listing.contains(n)),
        "{listing}"
    );

    let config_dir = env.home().join(".config/dcloud-fs");
    fs::create_dir_all(&config_dir).unwrap();
    fs::write(config_dir.join("config.toml"), "checkpoint_every = 0\n").unwrap();
    let shown = env.ok(&["config"]);
    let row = shown
        .lines()
        .find(|line| line.split_whitespace().next() == Some("checkpoint_every"))
        .unwrap_or_else(|| panic!("no checkpoint_every row: {shown}"));
    assert!(row.contains('0') && row.contains("config file"), "{row}");
    let output = env
        .command(&["config"])
        .env("DCLOUD_CHECKPOINT_EVERY", "often")
        .output()
        .unwrap();
    let line = data::failed_with_one_line(&["config"], output);
    assert!(line.contains("DCLOUD_CHECKPOINT_EVERY"), "{line}");
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definitions() {
    let env = Env::new(tiny_limits());
    for shell in ["bash", "zsh", "fish"] {
        let script = env.ok(&["completions", shell]);
        assert!(
            script.contains("dcloud-fs") && script.contains("umount") && script.contains("mount"),
            "{shell}: {}",
            &script[..script.len().min(300)]
        );
    }
    let page = env.ok(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH dcloud-fs 1"),
        "{page}"
    );
    assert!(page.contains("doctor") && page.contains("config"));
    assert!(!env.run(&["completions", "tcsh"]).status.success());
}

#[test]
fn status_without_a_mount_running_is_one_line() {
    let env = with_key_and_channel(tiny_limits());
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "--watch"],
    ] {
        let error = env.fails(args);
        assert!(
            error.contains("no dcloud-fs mount is running")
                && error.contains("start one with `dcloud-fs mount`"),
            "{args:?}: {error}"
        );
    }
    let work = env.work();
    let error = env.fails(&["status", work.to_str().unwrap()]);
    assert!(
        error.contains(&format!(
            "no dcloud-fs mount is running at {}",
            work.canonicalize().unwrap().display()
        )),
        "{error}"
    );
}

#[test]
fn verify_passes_a_whole_channel_and_names_a_file_whose_chunk_message_is_gone() {
    let env = with_key_and_channel(tiny_limits());
    env.write("d.bin", &random_bytes(30_000, 21));
    env.write("ok.txt", b"fine");
    env.ok(&["put", "d.bin", "ok.txt", "docs"]);
    let out = env.ok(&["verify"]);
    assert!(
        out.ends_with("verified 1 channel(s): 2 file(s), 0 folder(s), 11 chunk(s); no problems\n"),
        "{out}"
    );
    let out = env.ok(&["verify", "docs", "--read-data", "--sample", "0.5"]);
    assert!(out.contains("11 chunk(s), 1 read ("), "{out}");
    assert!(env.ok(&["verify", "--help"]).contains("--read-data"));

    // A data message of d.bin deleted from the store, as a moderator would.
    let data_message = env
        .stored_files()
        .into_iter()
        .filter(|p| p.parent().unwrap().ends_with("messages"))
        .find(|p| {
            let message: serde_json::Value = serde_json::from_slice(&fs::read(p).unwrap()).unwrap();
            message["content"]
                .as_str()
                .is_some_and(|c| c.starts_with("dcfs1 data"))
        })
        .expect("d.bin has data messages");
    fs::remove_file(data_message).unwrap();
    let args = ["verify", "docs"];
    let output = env.run(&args);
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let stderr = data::failed_with_one_line(&args, output);
    assert!(
        stderr.contains("3 problem(s) found in 1 file(s)"),
        "{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("docs/d.bin: chunks ")
            && lines[0].contains("is gone")
            && lines[0].ends_with("restore it from a copy and `put` it again, or `rm` it"),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with("3 problem(s) in 1 file(s) or folder(s)"),
        "{stdout}"
    );
    // The same as JSON.
    let output = env.run(&["verify", "--json"]);
    assert!(!output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["problems"], 3);
    let damaged = &report["channels"][0]["damaged"];
    assert_eq!(damaged.as_array().unwrap().len(), 1);
    assert_eq!(damaged[0]["path"], "d.bin");
    assert_eq!(damaged[0]["problems"][0]["kind"], "message_missing");
    // A path verifies what is at or under it only: ok.txt is whole.
    assert!(
        env.ok(&["verify", "docs/ok.txt"])
            .ends_with("no problems\n")
    );
}

#[test]
fn gc_says_what_it_would_delete_and_leaves_young_messages_alone() {
    let env = with_key_and_channel(tiny_limits());
    env.write("a.txt", b"one");
    env.ok(&["put", "a.txt", "docs"]);
    env.write("a.txt", b"two");
    env.ok(&["put", "a.txt", "docs"]);
    env.ok(&["rm", "docs/a.txt"]);
    let before = env.stored_files().len();
    // Everything is younger than gc's day of grace: nothing goes, not even in a real run.
    let out = env.ok(&["gc", "docs", "--dry-run"]);
    assert_eq!(out, "docs: would delete 0 messages, 0 B\n");
    assert_eq!(env.stored_files().len(), before, "a dry run posts nothing");
    let out = env.ok(&["gc"]);
    assert_eq!(out, "docs: deleted 0 messages, 0 B\n");
    // It brought the checkpoint up to date (a message, its attachment and its pin)...
    let after = env.stored_files().len();
    assert!(after > before, "a checkpoint was posted");
    // ...which a second run finds current.
    env.ok(&["gc"]);
    assert_eq!(env.stored_files().len(), after, "nothing more");
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["gc", "--json"])).unwrap();
    assert_eq!(json[0]["channel"], "docs");
    assert_eq!(json[0]["messages"], 0);
    let args = ["gc", "nosuch"];
    let error = data::failed_with_one_line(&args, env.run(&args));
    assert!(error.contains("no channel named 'nosuch'"), "{error}");
}
