//! Real mounts: `dcloud-fs mount -f` run as a user would run it, driven by the tools a
//! user would use (`cp`, `dd`, `ls`, `mv`, `rm`) and by std::fs calls.
//!
//! They need root, /dev/fuse and fusermount3 (CI has all three; `.ci/run` installs
//! fuse3); without them each test says why on stdout and passes without checking
//! anything. Each test gets its own HOME and a local store with small limits (16 KiB
//! attachments, four to a message), so a few hundred KiB span many chunks and
//! messages. A mount is a child process that is stopped with SIGTERM when the test
//! ends, and unmounted by force if it didn't go by itself: no test leaves a mount or
//! a process behind, even when it fails.
//!
//! The kill -9 test runs against the fake Discord server instead, whose latency knob
//! holds an upload in flight long enough to kill the daemon in the middle of it.

#[path = "common/data.rs"]
mod data;
#[macro_use]
#[path = "common/mounting.rs"]
mod mounting;

use data::random_bytes;
use mounting::*;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_discord::{Config, FakeDiscord};

fn cp_in_and_out_ls_and_reads_at_any_offset(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let data = random_bytes(300 * KIB + 17, 1);
    fs::write(env.work().join("src.bin"), &data).unwrap();
    // A folder longer than one readdir reply.
    let many = env.work().join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..150 {
        fs::write(many.join(format!("file-{i:03}.txt")), format!("{i}")).unwrap();
    }
    env.ok(&["put", "-r", "many", "other"]);
    let mount = env.mount(&[]);
    let mut names: Vec<String> = fs::read_dir(env.at("other/many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let expected: Vec<String> = (0..150).map(|i| format!("file-{i:03}.txt")).collect();
    assert_eq!(names, expected);
    let long = env.tool("ls", &[&"-l", &env.at("other/many")]);
    assert_eq!(long.lines().filter(|l| l.starts_with("-rw")).count(), 150);
    assert_eq!(fs::read(env.at("other/many/file-123.txt")).unwrap(), b"123");

    env.tool("cp", &[&"src.bin", &env.at("docs/")]);
    env.tool("cp", &[&env.at("docs/src.bin"), &"back.bin"]);
    assert!(fs::read(env.work().join("back.bin")).unwrap() == data);
    let listing = env.tool("ls", &[&"-l", &env.at("docs")]);
    let line = listing.lines().find(|l| l.ends_with(" src.bin")).unwrap();
    assert!(line.starts_with("-rw-r--r--"), "{listing}");
    assert!(line.contains(&format!(" {} ", data.len())), "{listing}");
    let channels = env.tool("ls", &[&env.mnt()]);
    assert_eq!(channels.lines().collect::<Vec<_>>(), ["docs", "other"]);

    // Reads at any offset, in any order, through one descriptor.
    let file = File::open(env.at("docs/src.bin")).unwrap();
    let mut state = 7u64;
    for _ in 0..40 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (state >> 33) as usize % data.len();
        let len = ((state >> 13) as usize % (40 * KIB)).min(data.len() - offset);
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset as u64).unwrap();
        assert!(buf == data[offset..offset + len], "at {offset}+{len}");
    }
    // Past the end: nothing.
    let mut buf = [0u8; 10];
    assert_eq!(file.read_at(&mut buf, data.len() as u64 + 5).unwrap(), 0);
    // dd of a few blocks in the middle.
    let dd = Command::new("dd")
        .arg(format!("if={}", env.at("docs/src.bin").display()))
        .args(["bs=4096", "skip=17", "count=3", "status=none"])
        .output()
        .unwrap();
    assert!(dd.status.success());
    assert!(dd.stdout == data[17 * 4096..20 * 4096]);
    drop(file);

    // The store has it, as the CLI sees it.
    env.sync_if_write_back(&["docs/src.bin"]);
    assert!(env.get("docs/src.bin") == data);
    // And what the CLI stores shows in the mount within the poll interval (1 s here).
    fs::write(env.work().join("from-cli.txt"), b"put by the CLI").unwrap();
    env.ok(&["put", "from-cli.txt", "docs"]);
    let shown = wait_for(Duration::from_secs(10), || {
        fs::read(env.at("docs/from-cli.txt")).is_ok_and(|d| d == b"put by the CLI")
    });
    assert!(shown, "a file put by the CLI never showed in the mount");
    mount.stop();
}
in_both_modes!(cp_in_and_out_ls_and_reads_at_any_offset);

fn append_truncate_and_overwrite_in_place(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    let path = env.at("docs/log.txt");
    let mut expected = random_bytes(50 * KIB, 2);
    write_file(&path, &expected);

    let more = random_bytes(20 * KIB + 3, 3);
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&more).unwrap();
    drop(file);
    expected.extend_from_slice(&more);
    assert!(fs::read(&path).unwrap() == expected);

    // Shorter, then longer (zeros), by path and by descriptor.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(30 * KIB as u64).unwrap();
    drop(file);
    expected.truncate(30 * KIB);
    assert_eq!(fs::metadata(&path).unwrap().len(), expected.len() as u64);
    assert!(fs::read(&path).unwrap() == expected);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(40 * KIB as u64).unwrap();
    drop(file);
    expected.resize(40 * KIB, 0);
    assert!(fs::read(&path).unwrap() == expected);

    // A write in the middle of a stored file, through a read-write descriptor.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.seek(SeekFrom::Start(10_000)).unwrap();
    file.write_all(b"in the middle").unwrap();
    file.seek(SeekFrom::Start(9_990)).unwrap();
    let mut around = [0u8; 30];
    file.read_exact(&mut around).unwrap();
    expected[10_000..10_013].copy_from_slice(b"in the middle");
    assert!(around[..] == expected[9_990..10_020]);
    drop(file);
    assert!(fs::read(&path).unwrap() == expected);

    // O_TRUNC on an existing file.
    write_file(&path, b"short");
    assert_eq!(fs::read(&path).unwrap(), b"short");
    mount.stop();
    assert_eq!(env.get("docs/log.txt"), b"short");
}
in_both_modes!(append_truncate_and_overwrite_in_place);

/// The chunk attachments of a channel, as `(message id, file name)`.
fn chunk_attachments(env: &Env, channel: &str) -> BTreeSet<(String, String)> {
    env.ok(&["attachments", channel])
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (message, name) = (fields.first()?, fields.last()?);
            (name.starts_with('c') && name.ends_with(".bin"))
                .then(|| (message.to_string(), name.to_string()))
        })
        .collect()
}

fn changing_a_few_bytes_uploads_only_the_chunk_they_are_in(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    let path = env.at("docs/big.bin");
    let mut expected = random_bytes(300 * KIB, 12);
    write_file(&path, &expected);
    env.sync_if_write_back(&["docs/big.bin"]);
    let before = chunk_attachments(&env, "docs");
    assert!(before.len() > 10, "a file of many chunks: {before:?}");

    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"patched", 150_000).unwrap();
    close(file).unwrap();
    expected[150_000..150_007].copy_from_slice(b"patched");
    env.sync_if_write_back(&["docs/big.bin"]);

    let after = chunk_attachments(&env, "docs");
    let uploaded: Vec<_> = after.difference(&before).collect();
    assert_eq!(uploaded.len(), 1, "one chunk uploaded again: {uploaded:?}");
    assert!(fs::read(&path).unwrap() == expected);
    mount.stop();
    assert!(env.get("docs/big.bin") == expected);
}
in_both_modes!(changing_a_few_bytes_uploads_only_the_chunk_they_are_in);

fn a_child_closing_an_inherited_descriptor_publishes_nothing(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    let data = random_bytes(60 * KIB, 7);
    let mut file = File::create(env.at("docs/half.bin")).unwrap();
    file.write_all(&data[..30 * KIB]).unwrap();
    // Every child gets a copy of the descriptor and closes it at exec: the kernel
    // sends a flush for it, which must not upload the half-written file.
    let listing = env.ok(&["ls", "docs"]);
    assert!(
        !listing.contains("half.bin"),
        "published half written: {listing}"
    );
    file.write_all(&data[30 * KIB..]).unwrap();
    close(file).unwrap();
    env.sync_if_write_back(&["docs/half.bin"]);
    assert!(env.get("docs/half.bin") == data);
    mount.stop();
}
in_both_modes!(a_child_closing_an_inherited_descriptor_publishes_nothing);

fn mv_within_and_across_channels(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    let data = random_bytes(120 * KIB, 4);
    write_file(&env.at("docs/a.bin"), &data);
    // Stored before it moves: the moves below must upload nothing again.
    env.sync_if_write_back(&["docs/a.bin"]);

    // Within a channel: a rename, into a subfolder too.
    fs::rename(env.at("docs/a.bin"), env.at("docs/b.bin")).unwrap();
    assert!(!env.at("docs/a.bin").exists());
    assert!(fs::read(env.at("docs/b.bin")).unwrap() == data);
    fs::create_dir(env.at("docs/sub")).unwrap();
    env.tool("mv", &[&env.at("docs/b.bin"), &env.at("docs/sub/")]);
    assert!(fs::read(env.at("docs/sub/b.bin")).unwrap() == data);
    // A folder, with what is in it.
    fs::rename(env.at("docs/sub"), env.at("docs/folder")).unwrap();
    assert!(fs::read(env.at("docs/folder/b.bin")).unwrap() == data);
    fs::rename(env.at("docs/folder"), env.at("docs/sub")).unwrap();

    // chmod and touch are kept.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let path = env.at("docs/sub/b.bin");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    env.tool("touch", &[&"-m", &"-d", &"2020-02-03 04:05:06Z", &path]);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.mtime(), 1_580_702_706);

    // Across channels: a move (rename(2) works), not a copy: the inode number goes
    // along, and nothing is uploaded again.
    let ino = meta.ino();
    // Chunks, not record attachments: a record that grew past the message content
    // goes to an attachment of its own.
    let chunks = || chunk_attachments(&env, "docs").len() + chunk_attachments(&env, "other").len();
    let attachments = chunks();
    env.tool("mv", &[&env.at("docs/sub/b.bin"), &env.at("other/c.bin")]);
    assert!(!env.at("docs/sub/b.bin").exists());
    assert_eq!(fs::metadata(env.at("other/c.bin")).unwrap().ino(), ino);
    assert!(fs::read(env.at("other/c.bin")).unwrap() == data);
    assert_eq!(chunks(), attachments);
    // A folder, with what is in it, and rm at the destination frees the bytes.
    let more = random_bytes(70 * KIB, 5);
    fs::create_dir_all(env.at("docs/dir/inner")).unwrap();
    write_file(&env.at("docs/dir/inner/m.bin"), &more);
    env.sync_if_write_back(&["docs/dir/inner/m.bin"]);
    let ino = fs::metadata(env.at("docs/dir/inner/m.bin")).unwrap().ino();
    let with_more = chunks();
    assert!(with_more > attachments);
    fs::rename(env.at("docs/dir"), env.at("other/dir")).unwrap();
    assert!(!env.at("docs/dir").exists());
    let moved = env.at("other/dir/inner/m.bin");
    assert_eq!(fs::metadata(&moved).unwrap().ino(), ino);
    assert!(fs::read(&moved).unwrap() == more);
    assert_eq!(chunks(), with_more);
    env.tool("rm", &[&"-r", &env.at("other/dir")]);
    assert!(!env.at("other/dir").exists());
    assert_eq!(chunks(), attachments);

    // Channels themselves can't be renamed; a hard link can't reach another channel
    // (within one: see tests/mount_posix.rs).
    assert_eq!(
        errno_of(fs::rename(env.at("docs"), env.at("papers"))),
        libc::EPERM
    );
    assert_eq!(
        errno_of(fs::hard_link(env.at("other/c.bin"), env.at("docs/d.bin"))),
        libc::EXDEV
    );
    mount.stop();
    assert!(env.get("other/c.bin") == data);
    // mv kept the mode and time.
    let listing = env.ok(&["ls", "-l", "other"]);
    assert!(
        listing.contains("-rw-------") && listing.contains("2020-02-03"),
        "{listing}"
    );
    let listing = env.ok(&["ls", "docs/sub"]);
    assert!(!listing.contains("b.bin"), "{listing}");
}
in_both_modes!(mv_within_and_across_channels);

fn rm_mkdir_rmdir(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    fs::create_dir(env.at("docs/sub")).unwrap();
    fs::create_dir(env.at("docs/sub/deeper")).unwrap();
    write_file(&env.at("docs/sub/f.txt"), b"hello");
    assert_eq!(
        errno_of(fs::remove_dir(env.at("docs/sub"))),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(fs::remove_dir(env.at("docs/sub/f.txt"))),
        libc::ENOTDIR
    );
    assert_eq!(
        errno_of(fs::remove_file(env.at("docs/sub/deeper"))),
        libc::EISDIR
    );
    env.tool("rm", &[&env.at("docs/sub/f.txt")]);
    assert!(!env.at("docs/sub/f.txt").exists());
    fs::remove_dir(env.at("docs/sub/deeper")).unwrap();
    fs::remove_dir(env.at("docs/sub")).unwrap();
    assert!(!env.at("docs/sub").exists());
    assert_eq!(
        errno_of(fs::remove_file(env.at("docs/nothing"))),
        libc::ENOENT
    );

    // A folder at the top is a channel; deleting one needs --allow-delete-channels.
    fs::create_dir(env.at("new-channel")).unwrap();
    assert!(env.ok(&["ls"]).contains("new-channel"));
    assert_eq!(errno_of(fs::remove_dir(env.at("new-channel"))), libc::EPERM);
    // A special file is removed like a file (`special_files_are_stored_and_kept`).
    let fifo = std::ffi::CString::new(env.at("docs/fifo").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    fs::remove_file(env.at("docs/fifo")).unwrap();
    // Files live in channels only.
    assert_eq!(errno_of(fs::write(env.at("loose.txt"), b"x")), libc::EPERM);
    mount.stop();
    assert!(env.ok(&["ls", "docs"]).trim().is_empty());
}
in_both_modes!(rm_mkdir_rmdir);

/// A folder made through the mount shows there at once (with write-back it may reach
/// the store later, with the next upload: at the latest when the mount stops); one
/// made in another channel and under a new folder too; all of them are in the store
/// once the mount has stopped, and a remount shows them.
fn mkdir_shows_at_once_and_is_stored_by_the_unmount(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    fs::create_dir(env.at("docs/made")).unwrap();
    fs::create_dir_all(env.at("other/outer/inner")).unwrap();
    write_file(&env.at("other/outer/inner/f.txt"), b"in a new folder");
    for folder in ["docs/made", "other/outer", "other/outer/inner"] {
        assert!(fs::metadata(env.at(folder)).unwrap().is_dir(), "{folder}");
    }
    let names = env.tool("ls", &[&env.at("docs")]);
    assert_eq!(names.trim(), "made");
    assert_eq!(
        fs::read(env.at("other/outer/inner/f.txt")).unwrap(),
        b"in a new folder"
    );
    if mode == WriteBack::Off {
        assert_eq!(env.ok(&["ls", "docs"]).trim(), "made/");
    }
    mount.stop();
    assert_eq!(env.ok(&["ls", "docs"]).trim(), "made/");
    assert_eq!(env.ok(&["ls", "other/outer"]).trim(), "inner/");
    assert_eq!(env.get("other/outer/inner/f.txt"), b"in a new folder");
    let mount = env.mount(&[]);
    assert!(fs::metadata(env.at("docs/made")).unwrap().is_dir());
    assert!(fs::metadata(env.at("other/outer/inner")).unwrap().is_dir());
    mount.stop();
}
in_both_modes!(mkdir_shows_at_once_and_is_stored_by_the_unmount);

fn editor_save_by_rename_replaces_the_file(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    fs::write(env.work().join("notes.txt"), b"first version\n").unwrap();
    env.ok(&["put", "notes.txt", "docs"]);
    let mount = env.mount(&[]);
    assert_eq!(
        fs::read(env.at("docs/notes.txt")).unwrap(),
        b"first version\n"
    );

    // What vim and many editors do: write a temporary file, fsync it, rename it over
    // the original.
    let new = random_bytes(40 * KIB, 5);
    let temp = env.at("docs/.notes.txt.swp");
    let mut file = File::create(&temp).unwrap();
    file.write_all(&new).unwrap();
    file.sync_all().unwrap();
    close(file).unwrap();
    fs::rename(&temp, env.at("docs/notes.txt")).unwrap();
    assert!(fs::read(env.at("docs/notes.txt")).unwrap() == new);
    assert!(!temp.exists());
    let names = env.tool("ls", &[&"-a", &env.at("docs")]);
    assert_eq!(names.lines().collect::<Vec<_>>(), [".", "..", "notes.txt"]);

    // And the way other editors do it: rename while the new file is still open.
    let newer = random_bytes(10 * KIB, 6);
    let mut file = File::create(&temp).unwrap();
    file.write_all(&newer).unwrap();
    fs::rename(&temp, env.at("docs/notes.txt")).unwrap();
    file.sync_all().unwrap();
    close(file).unwrap();
    let got = fs::read(env.at("docs/notes.txt")).unwrap();
    assert!(
        got == newer,
        "{} bytes, {} expected; the earlier version: {}; {}",
        got.len(),
        newer.len(),
        got == new,
        mount.log()
    );
    mount.stop();
    assert!(env.get("docs/notes.txt") == newer);
    assert!(!env.ok(&["ls", "docs"]).contains(".swp"));
}
in_both_modes!(editor_save_by_rename_replaces_the_file);

fn parallel_writers_then_remount_and_read_only(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    let files: Vec<(String, Vec<u8>)> = (0..2)
        .map(|i| {
            (
                format!("docs/w{i}.bin"),
                random_bytes(200 * KIB + i, 10 + i as u64),
            )
        })
        .collect();
    std::thread::scope(|scope| {
        for (path, data) in &files {
            let path = env.at(path);
            scope.spawn(move || {
                let mut file = File::create(&path).unwrap();
                for piece in data.chunks(7 * KIB) {
                    file.write_all(piece).unwrap();
                }
                close(file).unwrap();
            });
        }
    });
    for (path, data) in &files {
        assert!(fs::read(env.at(path)).unwrap() == *data, "{path}");
    }
    mount.stop();

    // A new mount reads them from the store.
    let mount = env.mount(&["--read-only"]);
    for (path, data) in &files {
        assert!(fs::read(env.at(path)).unwrap() == *data, "{path}");
    }
    assert_eq!(
        errno_of(fs::write(env.at("docs/w0.bin"), b"x")),
        libc::EROFS
    );
    assert_eq!(
        errno_of(fs::remove_file(env.at("docs/w0.bin"))),
        libc::EROFS
    );
    mount.stop();
    for (path, data) in &files {
        assert!(env.get(path) == *data, "{path}");
    }
}
in_both_modes!(parallel_writers_then_remount_and_read_only);

#[test]
fn background_mount_and_umount() {
    need_fuse!();
    let env = Env::bare(Backend::Local);
    let mnt = env.mnt();
    let mnt = mnt.to_str().unwrap();
    // No key: refused at once, in one line.
    let error = env.fails(&["mount", mnt]);
    assert!(error.contains("keygen"), "{error}");
    env.ok(&["keygen"]);
    env.ok(&["mkdir", "docs"]);
    let error = env.fails(&["mount", "no-such-folder"]);
    assert!(error.contains("no-such-folder"), "{error}");
    let error = env.fails(&["umount", mnt]);
    assert!(error.contains("not mounted"), "{error}");

    let guard = Daemon { env: &env };
    env.ok(&["mount", mnt]);
    assert!(is_mounted(&env.mnt()));
    let error = env.fails(&["mount", mnt]);
    assert!(error.contains("mounted already"), "{error}");
    write_file(&env.at("docs/hello.txt"), b"hello");
    env.ok(&["umount", mnt]);
    assert!(!is_mounted(&env.mnt()));
    assert!(
        wait_for(Duration::from_secs(10), || daemon_pids(&env.mnt())
            .is_empty()),
        "the daemon did not exit after umount"
    );
    drop(guard);
    assert_eq!(env.get("docs/hello.txt"), b"hello");
}

/// Stops any daemon left on the test's mount point.
struct Daemon<'a> {
    env: &'a Env,
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        force_unmount(&self.env.mnt());
        let pids = daemon_pids(&self.env.mnt());
        for &pid in &pids {
            // SAFETY: kill has no memory preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Processes whose command line names `mnt` with --foreground: daemons started by a
/// background mount.
fn daemon_pids(mnt: &Path) -> Vec<i32> {
    let mnt = mnt.to_str().unwrap();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&mnt.as_bytes()) && args.contains(&b"--foreground".as_slice())
        })
        .collect()
}

/// Under systemd (`Type=notify`): `READY=1` once the mount is up, `STOPPING=1` when a
/// SIGTERM begins the stop.
#[test]
fn tells_a_service_manager_when_it_is_ready_and_when_it_stops() {
    need_fuse!();
    use std::os::unix::net::UnixDatagram;
    let env = Env::new();
    let socket_path = env.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let receive = || {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf)?;
        Ok::<_, std::io::Error>(String::from_utf8(buf[..n].to_vec()).unwrap())
    };
    let mnt = env.mnt();
    let spool = env.spool();
    let log = env.dir.path().join("mount-notify.log");
    let child = env
        .command(&[
            "mount",
            "-f",
            "--write-back",
            "30",
            "--spool-dir",
            spool.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mount = Mount {
        env: &env,
        child: Some(child),
        log,
    };

    let ready = receive().unwrap_or_else(|e| panic!("no READY=1 ({e}): {}", mount.log()));
    let mounted_then = is_mounted(&mnt);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready
            .lines()
            .any(|l| l == format!("STATUS=mounted {}", mnt.display())),
        "{ready:?}"
    );
    assert!(mounted_then, "READY=1 came before the mount was up");
    write_file(&env.at("docs/ready.txt"), b"ready");
    // The STATUS= line follows the queue (looked at every 2 s): the file waits 30 s.
    let queued = receive().unwrap_or_else(|e| panic!("no queue STATUS ({e}): {}", mount.log()));
    assert_eq!(
        queued,
        format!("STATUS=mounted {}; 1 file waiting, 5 B", mnt.display())
    );

    mount.stop();
    let stopping = loop {
        let message = receive().unwrap_or_else(|e| panic!("no STOPPING=1 ({e})"));
        if message.lines().any(|l| l == "STOPPING=1") {
            break message;
        }
        assert!(message.starts_with("STATUS=mounted "), "{message:?}");
    };
    assert!(stopping.contains("STATUS="), "{stopping:?}");
    assert_eq!(env.get("docs/ready.txt"), b"ready");
}

/// Stopping the way the systemd unit stops it: `dcloud-fs umount` (its ExecStop), then
/// SIGTERM to whatever is left. Idle, the umount does it all and the SIGTERM that
/// follows at once changes nothing; busy (a file still open for writing), the umount
/// fails and the SIGTERM uploads the file, then unmounts.
fn stopping_the_way_the_service_does(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mnt = env.mnt();
    let mnt_arg = mnt.to_str().unwrap();

    let mut mount = env.mount(&[]);
    write_file(&env.at("docs/closed.txt"), b"closed");
    env.ok(&["umount", mnt_arg]);
    let mut child = mount.child.take().unwrap();
    signal(&child, libc::SIGTERM);
    assert_eq!(
        wait_child(&mut child, Duration::from_secs(20)),
        Some(0),
        "{}",
        mount.log()
    );
    assert!(!is_mounted(&mnt));
    drop(mount);
    assert_eq!(env.get("docs/closed.txt"), b"closed");

    let mount = env.mount(&[]);
    let mut open = File::create(env.at("docs/open.txt")).unwrap();
    open.write_all(b"still open").unwrap();
    let error = env.fails(&["umount", mnt_arg]);
    assert!(error.contains("could not unmount"), "{error}");
    assert!(is_mounted(&mnt));
    mount.stop();
    drop(open);
    assert_eq!(env.get("docs/open.txt"), b"still open");
}
in_both_modes!(stopping_the_way_the_service_does);

/// The mount(8) helper, scripts/mount.dcloud-fs, laid out as scripts/install.sh lays it
/// out (beside a `dcloud-fs`).
fn install_mount_helper(env: &Env) -> PathBuf {
    let bin = env.dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("mount.dcloud-fs");
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mount.dcloud-fs"),
        &helper,
    )
    .unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("dcloud-fs")).unwrap();
    helper
}

/// `mount -t fuse 'HELPER#dcloud-fs' MOUNTPOINT -o OPTIONS`: mount(8) runs mount.fuse3,
/// which runs `HELPER dcloud-fs MOUNTPOINT -o OPTIONS`, as for an /etc/fstab entry; and
/// `umount` undoes it. mount(8) removes HOME from a helper's environment, so the config
/// folder comes from XDG_CONFIG_HOME here (a real entry reads the user's home).
#[test]
fn mount_t_fuse_runs_the_helper_and_umount_undoes_it() {
    need_fuse!();
    let env = Env::new();
    fs::write(env.work().join("hello.txt"), b"hello").unwrap();
    env.ok(&["put", "hello.txt", "docs"]);
    let helper = install_mount_helper(&env);
    let mnt = env.mnt();
    let home = env.home();
    let spool = env.spool();
    let mount_command = |program: &str| {
        let mut command = Command::new(program);
        command
            .current_dir(env.work())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("DCLOUD_LOCAL", env.store());
        command
    };
    let _guard = Daemon { env: &env };

    let options = format!(
        "ro,umask=077,cache_size=64,poll_interval=1,spool_dir={},noauto,nofail,_netdev,\
         x-systemd.automount",
        spool.display()
    );
    let output = mount_command("mount")
        .args(["-t", "fuse"])
        .arg(format!("{}#dcloud-fs", helper.display()))
        .arg(&mnt)
        .args(["-o", &options])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(is_mounted(&mnt), "mount returned before the mount was up");
    assert_eq!(fs::read(env.at("docs/hello.txt")).unwrap(), b"hello");
    let mode = fs::metadata(env.at("docs/hello.txt"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077,
        0,
        "umask=077"
    );
    assert_eq!(
        errno_of(File::create(env.at("docs/new.txt"))),
        libc::EROFS,
        "ro"
    );

    let output = mount_command("umount").arg(&mnt).output().unwrap();
    assert!(
        output.status.success(),
        "umount failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!is_mounted(&mnt));
    assert!(
        wait_for(Duration::from_secs(10), || daemon_pids(&mnt).is_empty()),
        "the daemon did not exit after umount"
    );

    // Options it can't honour are refused, in one line, before anything is mounted.
    let output = mount_command("mount")
        .args(["-t", "fuse"])
        .arg(format!("{}#dcloud-fs", helper.display()))
        .arg(&mnt)
        .args(["-o", "rw,frobnicate=1"])
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(error.contains("unknown option 'frobnicate=1'"), "{error}");
    assert!(!is_mounted(&mnt));
}

/// The helper called the way mount(8) calls /sbin/mount.fuse.dcloud-fs for
/// `-t fuse.dcloud-fs` (no mount.fuse3 in between): the generic options mount(8) adds
/// are taken; `-f` (fake) mounts nothing; a read-write mount stores what is written.
#[test]
fn the_helper_takes_what_mount_passes_it() {
    need_fuse!();
    let env = Env::new();
    let helper = install_mount_helper(&env);
    let mnt = env.mnt();
    let spool = env.spool();
    // As mount(8) runs it: no PATH (the helper sets a default one).
    let run = |args: &[&str]| {
        Command::new(&helper)
            .args(args)
            .current_dir(env.work())
            .env_clear()
            .env("HOME", env.home())
            .env("DCLOUD_LOCAL", env.store())
            .output()
            .unwrap()
    };
    let _guard = Daemon { env: &env };
    let options = format!(
        "rw,nosuid,nodev,user,exec,spool_dir={},allow_delete_channels",
        spool.display()
    );
    let mnt_arg = mnt.to_str().unwrap();

    let output = run(&["dcloud-fs", mnt_arg, "-f", "-v", "-o", &options]);
    assert!(output.status.success(), "{output:?}");
    assert!(!is_mounted(&mnt), "-f (fake) mounted");

    let output = run(&["dcloud-fs", mnt_arg, "-n", "-o", &options]);
    assert!(output.status.success(), "{output:?}");
    assert!(is_mounted(&mnt));
    write_file(&env.at("docs/written.txt"), b"through the helper");
    env.ok(&["umount", mnt_arg]);
    assert!(
        wait_for(Duration::from_secs(10), || daemon_pids(&mnt).is_empty()),
        "the daemon did not exit after umount"
    );
    assert_eq!(env.get("docs/written.txt"), b"through the helper");
}

#[test]
fn kill_9_loses_no_closed_file_and_publishes_no_torn_one() {
    need_fuse!();
    let fake = FakeDiscord::start_in_background(Config {
        channels: vec!["docs".into()],
        message_create_limit: (5, Duration::from_millis(500)),
        message_delete_limit: (5, Duration::from_millis(200)),
        ..Config::default()
    })
    .unwrap();
    let env = Env::bare(Backend::Discord(fake));
    let Backend::Discord(fake) = &env.backend else {
        unreachable!()
    };
    env.ok(&["keygen"]);
    let mut mount = env.mount(&[]);

    // Stored before the kill: close returned.
    let a = random_bytes(100 * KIB, 20);
    write_file(&env.at("docs/a.bin"), &a);

    // Closed while the store is slow: the kill comes in the middle of its upload.
    fake.set_knobs(|k| k.latency = Duration::from_secs(3));
    let b = random_bytes(150 * KIB, 21);
    let b_path = env.at("docs/b.bin");
    let b_data = b.clone();
    let writer = std::thread::spawn(move || {
        let mut file = File::create(b_path)?;
        file.write_all(&b_data)?;
        close(file)
    });
    // Open and half written at the kill: it must never be published.
    let mut torn = File::create(env.at("docs/torn.bin")).unwrap();
    torn.write_all(&random_bytes(30 * KIB, 22)).unwrap();

    let committing = wait_for(Duration::from_secs(20), || {
        fs::read_dir(env.spool()).is_ok_and(|entries| {
            entries.filter_map(Result::ok).any(|entry| {
                let path = entry.path();
                path.extension().is_some_and(|e| e == "json")
                    && fs::read_to_string(path)
                        .is_ok_and(|t| t.contains("b.bin") && t.contains("\"committing\":true"))
            })
        })
    });
    assert!(committing, "b.bin's upload never began: {}", mount.log());
    mount.kill_9();
    assert!(
        writer.join().unwrap().is_err(),
        "b.bin's close can't succeed"
    );
    drop(torn);
    drop(mount);
    fake.set_knobs(|k| k.latency = Duration::ZERO);

    // The next mount finishes b.bin's upload; a.bin was there all along. Whenever b.bin
    // shows, it is whole.
    let mount = env.mount(&[]);
    assert!(fs::read(env.at("docs/a.bin")).unwrap() == a);
    let appeared = wait_for(Duration::from_secs(20), || {
        match fs::read(env.at("docs/b.bin")) {
            Ok(data) => {
                assert!(data == b, "b.bin showed torn ({} bytes)", data.len());
                true
            }
            Err(_) => false,
        }
    });
    assert!(appeared, "b.bin was not recovered: {}", mount.log());
    assert!(mount.log().contains("b.bin"), "{}", mount.log());
    assert!(!env.at("docs/torn.bin").exists());
    // Set aside in the spool folder, for the user to find.
    let set_aside = wait_for(Duration::from_secs(10), || {
        fs::read_dir(env.spool()).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".orphan"))
        })
    });
    assert!(
        set_aside,
        "torn.bin's spool was not set aside: {}",
        mount.log()
    );
    mount.stop();
    assert!(env.get("docs/b.bin") == b);
    assert!(!env.ok(&["ls", "docs"]).contains("torn.bin"));
}

/// With write-back, `cp` returns once the files are in the spool: the mount shows them
/// at once, the store doesn't have them yet, and `dcloud-fs umount` returns once they
/// are all uploaded (the daemon has stopped by then).
#[test]
fn write_back_closes_at_once_and_umount_waits_for_the_uploads() {
    need_fuse!();
    let fake = FakeDiscord::start_in_background(Config {
        channels: vec!["docs".into()],
        message_create_limit: (5, Duration::from_millis(500)),
        latency: Duration::from_millis(20),
        ..Config::default()
    })
    .unwrap();
    let env = Env::bare(Backend::Discord(fake));
    env.ok(&["keygen"]);
    let src = env.work().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let name = if i % 3 == 0 {
                format!("sub/f{i}")
            } else {
                format!("f{i}")
            };
            (name, random_bytes(1 + i * 1500, 40 + i as u64))
        })
        .collect();
    for (name, data) in &files {
        fs::write(src.join(name), data).unwrap();
    }
    fs::create_dir_all(src.join("empty/deeper")).unwrap();
    // A settle time longer than the test: nothing is uploaded before the unmount, not
    // even the folders' records.
    let mut mount = env.mount(&["--write-back", "600"]);
    env.tool(
        "cp",
        &[&"-r", &format!("{}/.", src.display()), &env.at("docs")],
    );
    env.tool("diff", &[&"-r", &src, &env.at("docs")]);
    let listed = env.ok(&["ls", "docs"]);
    assert!(
        !listed.contains("f1") && !listed.contains("empty") && !listed.contains("sub"),
        "uploaded before the settle time: {listed}"
    );

    let mnt = env.mnt();
    env.ok(&["umount", mnt.to_str().unwrap()]);
    let mut child = mount.child.take().unwrap();
    assert!(
        child.try_wait().unwrap().is_some(),
        "umount returned before the daemon had stopped: {}",
        mount.log()
    );
    for (name, data) in &files {
        assert!(env.get(&format!("docs/{name}")) == *data, "{name}");
    }
    assert!(env.ok(&["ls", "docs/empty"]).contains("deeper"));
    assert!(mount.log().contains("before stopping"), "{}", mount.log());
}

/// `dcloud-fs status` while files wait for their upload: found without naming the
/// mount (the only one running), it lists each with its size (`--json`, and the human
/// report); `--watch` follows until the mount stops. Once `umount` has returned (the
/// uploads done), no mount runs: a one-line error, and no socket left.
#[test]
fn status_shows_the_files_waiting_and_no_mount_after_umount() {
    need_fuse!();
    let env = Env::new();
    let mnt = env.mnt().canonicalize().unwrap();
    let mnt_arg = mnt.to_str().unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("docs/a.txt", b"hello".to_vec()),
        ("docs/sub/b.bin", random_bytes(40 * KIB + 3, 70)),
        ("other/c.bin", random_bytes(3 * KIB, 71)),
    ];
    let mut mount = env.mount(&["--write-back", "30"]);
    fs::create_dir(env.at("docs/sub")).unwrap();
    for (path, data) in &files {
        write_file(&env.at(path), data);
    }

    let json: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"]))
        .unwrap_or_else(|e| panic!("status --json is no JSON ({e}): {}", mount.log()));
    assert_eq!(json["mount_point"], mnt_arg, "{json:#}");
    assert_eq!(json["state"], "mounted");
    assert_eq!(json["write_back_secs"], 30);
    let total: usize = files.iter().map(|(_, data)| data.len()).sum();
    assert_eq!(json["totals"]["files"], files.len(), "{json:#}");
    assert_eq!(json["totals"]["waiting"], files.len());
    assert_eq!(json["totals"]["bytes"], total);
    assert_eq!(json["totals"]["failing"], 0);
    let listed = json["files"].as_array().unwrap();
    assert_eq!(listed.len(), files.len(), "{json:#}");
    for (path, data) in &files {
        let (channel, inside) = path.split_once('/').unwrap();
        let file = listed
            .iter()
            .find(|f| f["channel"] == channel && f["path"] == inside)
            .unwrap_or_else(|| panic!("{path} not listed: {json:#}"));
        assert_eq!(file["size"], data.len(), "{path}");
        assert_eq!(file["state"], "waiting", "{path}");
        assert_eq!(file["failures"], 0, "{path}");
        assert!(file["last_error"].is_null(), "{path}");
        let starts_in = file["starts_in_secs"].as_f64().unwrap();
        assert!(starts_in > 0.0 && starts_in <= 30.0, "{path}: {starts_in}");
    }
    assert!(json["last_refresh"]["unix_ms"].is_u64(), "{json:#}");
    assert!(json["pace"]["messages_per_sec"].is_number(), "{json:#}");
    assert_eq!(json["pace"]["http_429s"], 0);

    // The human report, naming the mount point.
    let report = env.ok(&["status", mnt_arg]);
    let first = report.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("{mnt_arg}: 3 files waiting (")),
        "{report}"
    );
    assert!(
        first.contains("last refresh") && first.contains("msg/s"),
        "{report}"
    );
    for (path, _) in &files {
        assert!(
            report
                .lines()
                .any(|l| l.contains("waiting") && l.contains(path)),
            "{path}: {report}"
        );
    }
    // No store was written to meanwhile.
    assert!(!env.ok(&["ls", "docs"]).contains("a.txt"));

    let mut watcher = env
        .command(&["status", "--watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    env.ok(&["umount", mnt_arg]);
    let mut daemon = mount.child.take().unwrap();
    assert!(
        daemon.try_wait().unwrap().is_some(),
        "umount returned before the daemon had stopped: {}",
        mount.log()
    );
    let watched = wait_child(&mut watcher, Duration::from_secs(10));
    if watched.is_none() {
        let _ = watcher.kill();
    }
    let mut out = String::new();
    watcher
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(watched, Some(0), "status --watch did not end: {out}");
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.contains(r#""state":"waiting""#)),
        "{out}"
    );
    assert_eq!(
        out.lines().last().unwrap(),
        format!("{mnt_arg}: the mount has stopped")
    );

    let error = env.fails(&["status"]);
    assert!(error.contains("no dcloud-fs mount is running"), "{error}");
    let error = env.fails(&["status", mnt_arg]);
    assert!(
        error.contains(&format!("no dcloud-fs mount is running at {mnt_arg}")),
        "{error}"
    );
    let runtime = env.home().join(".cache/dcloud-fs/run/mounts");
    let left: Vec<_> = fs::read_dir(&runtime)
        .map(|dir| dir.filter_map(|e| Some(e.ok()?.file_name())).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", runtime.display());
    for (path, data) in &files {
        assert!(env.get(path) == *data, "{path}");
    }
}

/// With write-back, a kill -9 right after `cp` returned loses nothing: the next mount
/// uploads every file whose close had returned.
#[test]
fn write_back_loses_no_closed_file_to_a_kill_9() {
    need_fuse!();
    let env = Env::new();
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            (
                format!("f{i}"),
                random_bytes(100 + i * 20 * KIB, 60 + i as u64),
            )
        })
        .collect();
    let mut mount = env.mount(&["--write-back", "600"]);
    for (name, data) in &files {
        write_file(&env.at(&format!("docs/{name}")), data);
    }
    mount.kill_9();
    drop(mount);
    assert!(
        !env.ok(&["ls", "docs"]).contains("f0"),
        "uploaded before the kill"
    );

    let mount = env.mount(&[]);
    let recovered = wait_for(Duration::from_secs(30), || {
        files
            .iter()
            .all(|(name, data)| fs::read(env.at(&format!("docs/{name}"))).is_ok_and(|d| d == *data))
    });
    assert!(recovered, "not all recovered: {}", mount.log());
    mount.stop();
    for (name, data) in &files {
        assert!(env.get(&format!("docs/{name}")) == *data, "{name}");
    }
}

/// A rename that lands while the file's upload is under way (here: the close of a
/// second descriptor, which the kernel sends without holding the file's lock) must
/// leave the file under its new name.
fn rename_during_an_upload_lands_under_the_new_name(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    // About 130 chunks: as many as a record fits in the tiny test limits.
    let data = random_bytes(1536 * KIB, 9);
    let mut file = File::create(env.at("docs/temp")).unwrap();
    file.write_all(&data).unwrap();
    let copy = file.try_clone().unwrap();
    let closing = std::thread::spawn(move || close(copy));
    std::thread::sleep(Duration::from_millis(30));
    fs::rename(env.at("docs/temp"), env.at("docs/target")).unwrap();
    if let Err(e) = closing.join().unwrap() {
        panic!("close of the copy: {e}\n{}", mount.log());
    }
    if let Err(e) = close(file) {
        panic!("close: {e}\n{}", mount.log());
    }
    let shown = env.tool("ls", &[&env.at("docs")]);
    env.sync_if_write_back(&["docs/target"]);
    let stored = env.ok(&["ls", "docs"]);
    mount.stop();
    assert_eq!(shown.trim(), "target", "the mount shows {shown}");
    assert_eq!(stored.trim(), "target", "the store has {stored}");
    assert!(env.get("docs/target") == data);
}
in_both_modes!(rename_during_an_upload_lands_under_the_new_name);

// ----- the concurrent stress test -----
//
// Several processes share one mount and a few names, spread over two channels (so a
// rename may be a move), for a bounded time: each writes whole files (to a name of its own, then renamed over a shared name,
// as editors save; or straight into a shared name made with O_EXCL), renames and
// unlinks shared names, and reads them. Every file written describes itself (writer,
// version, length and a checksum of its body), so a torn or mixed file is told apart
// from a whole one. The processes are this test binary run again with
// `DCLOUD_STRESS_WORKER` set, which makes `stress_worker` the worker: processes, not
// threads, because what is tested is several programs using one mount at once.
//
// An outcome another process may cause is expected: ENOENT from an open, rename or
// unlink of a name another process just renamed or unlinked, EEXIST from an O_EXCL
// create, and a read that sees a prefix of a file still being written. Anything else
// (EIO, a failed close, a read of bytes no writer wrote) is an error. After the run the
// mount is stopped and mounted again, and every file listed must read as one whole
// version.
//
// `DCLOUD_STRESS_SECS` (default 10) and `DCLOUD_STRESS_PROCESSES` (default 3) set the
// run; by hand, 60 s with 4 processes:
//
//     DCLOUD_STRESS_SECS=60 DCLOUD_STRESS_PROCESSES=4 \
//         cargo test --test mount stress -- --nocapture

/// The shared names, spread over the channels.
const STRESS_NAMES: usize = 6;
const STRESS_CHANNELS: [&str; 2] = ["docs", "other"];
const STRESS_MAGIC: &str = "DCSTRESS";

/// The body of version `version` by writer `writer`.
fn stress_body(writer: u64, version: u64, len: usize) -> Vec<u8> {
    random_bytes(len, (writer << 40) ^ version)
}

/// FNV-1a, 64 bits: the checksum in a stress file's header.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A whole stress file: a header line, then the body.
fn stress_file(writer: u64, version: u64, len: usize) -> Vec<u8> {
    let body = stress_body(writer, version, len);
    let mut file = format!(
        "{STRESS_MAGIC} {writer} {version} {len} {:016x}\n",
        fnv1a(&body)
    )
    .into_bytes();
    file.extend_from_slice(&body);
    file
}

/// What a read of a stress file saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// One whole version.
    Whole,
    /// The start of one version (it is still being written).
    Prefix,
    /// Anything else: what is wrong with it.
    Damaged(String),
}

fn check_stress_file(data: &[u8]) -> Seen {
    let Some(newline) = data.iter().position(|&b| b == b'\n') else {
        let magic = STRESS_MAGIC.as_bytes();
        if data.len() < 64 && data.iter().zip(magic).all(|(a, b)| a == b) {
            return Seen::Prefix;
        }
        return Seen::Damaged(format!("{} bytes without a header", data.len()));
    };
    let header = String::from_utf8_lossy(&data[..newline]);
    let fields: Vec<&str> = header.split(' ').collect();
    let parsed = match fields[..] {
        [STRESS_MAGIC, writer, version, len, sum] => (|| {
            Some((
                writer.parse::<u64>().ok()?,
                version.parse::<u64>().ok()?,
                len.parse::<usize>().ok()?,
                u64::from_str_radix(sum, 16).ok()?,
            ))
        })(),
        _ => None,
    };
    let Some((writer, version, len, sum)) = parsed else {
        return Seen::Damaged(format!("a bad header: {header:?}"));
    };
    let body = &data[newline + 1..];
    let expected = stress_body(writer, version, len);
    if fnv1a(&expected) != sum {
        return Seen::Damaged(format!("{header:?}: the checksum is not its body's"));
    }
    if body.len() > len {
        let (own, more) = body.split_at(len);
        let zeros = more.iter().all(|&b| b == 0);
        return Seen::Damaged(format!(
            "{header:?}: {} bytes of body ({} its own, then {} {})",
            body.len(),
            if own == expected { "all" } else { "not" },
            more.len(),
            if zeros { "zeros" } else { "other bytes" }
        ));
    }
    if body != &expected[..body.len()] {
        let at = body.iter().zip(&expected).position(|(a, b)| a != b);
        return Seen::Damaged(format!("{header:?}: other bytes from {at:?}"));
    }
    if body.len() < len {
        return Seen::Prefix;
    }
    Seen::Whole
}

/// What one worker did.
#[derive(Debug, Default)]
struct StressCounts {
    ops: u64,
    /// Outcomes another process caused (ENOENT, EEXIST), as expected.
    expected: u64,
    /// Reads that saw a file still being written.
    prefixes: u64,
    errors: Vec<String>,
}

impl StressCounts {
    fn to_line(&self) -> String {
        format!(
            "ops={} expected={} prefixes={} errors={}",
            self.ops,
            self.expected,
            self.prefixes,
            self.errors.len()
        )
    }

    fn parse(output: &str) -> StressCounts {
        let mut counts = StressCounts::default();
        for line in output.lines() {
            if let Some(error) = line.strip_prefix("stress-error: ") {
                counts.errors.push(error.to_string());
            } else if let Some(totals) = line.strip_prefix("stress-counts: ") {
                for field in totals.split(' ') {
                    let (name, value) = field.split_once('=').unwrap();
                    let value: u64 = value.parse().unwrap();
                    match name {
                        "ops" => counts.ops = value,
                        "expected" => counts.expected = value,
                        "prefixes" => counts.prefixes = value,
                        _ => {}
                    }
                }
            }
        }
        counts
    }
}

/// One operation's outcome: done, an outcome another process caused, or an error.
enum Outcome {
    Done,
    Expected,
    Error(String),
}

fn outcome_of(what: &str, result: std::io::Result<()>) -> Outcome {
    match result {
        Ok(()) => Outcome::Done,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EEXIST)) => {
            Outcome::Expected
        }
        Err(e) => Outcome::Error(format!("{what}: {e}")),
    }
}

/// Writes `data` through `file` in pieces, then closes it (where the upload's error
/// shows). The first error is returned; the descriptor is closed either way.
fn write_and_close(mut file: File, data: &[u8]) -> std::io::Result<()> {
    let written = data
        .chunks(8 * KIB)
        .try_for_each(|piece| file.write_all(piece));
    let closed = close(file);
    written.and(closed)
}

/// The worker (a process of its own; see above): until the deadline, random operations
/// on the shared names under `dir` (the mount point).
fn stress_worker(writer: u64, dir: &Path, deadline: Instant) -> StressCounts {
    let mut counts = StressCounts::default();
    let mut rng = writer.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |below: u64| {
        // xorshift64
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % below
    };
    // Half the names in each channel: a rename between them is a move.
    let name = |i: u64| {
        let channel = STRESS_CHANNELS[(i as usize * STRESS_CHANNELS.len()) / STRESS_NAMES];
        dir.join(channel).join(format!("n{i}"))
    };
    let mut version = 0;
    while Instant::now() < deadline {
        counts.ops += 1;
        let roll = next(100);
        let outcome = if roll < 45 {
            version += 1;
            let data = stress_file(writer, version, next(120 * KIB as u64) as usize);
            let target = name(next(STRESS_NAMES as u64));
            if roll < 30 {
                // Whole, under a name of its own, then renamed over a shared one.
                let own = dir.join(STRESS_CHANNELS[0]).join(format!("w{writer}.tmp"));
                let written = File::create(&own).and_then(|file| write_and_close(file, &data));
                match written {
                    Err(e) => Outcome::Error(format!("writing {}: {e}", own.display())),
                    Ok(()) => outcome_of("rename into place", fs::rename(&own, &target)),
                }
            } else {
                // Straight into a new shared name, which others may rename or unlink
                // while it is written: the data follows the name, or goes with it.
                match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                {
                    Err(e) => outcome_of("create", Err(e)),
                    Ok(file) => match write_and_close(file, &data) {
                        Ok(()) => Outcome::Done,
                        Err(e) => Outcome::Error(format!("writing {}: {e}", target.display())),
                    },
                }
            }
        } else if roll < 60 {
            let (from, to) = (
                name(next(STRESS_NAMES as u64)),
                name(next(STRESS_NAMES as u64)),
            );
            outcome_of("rename", fs::rename(from, to))
        } else if roll < 70 {
            outcome_of("unlink", fs::remove_file(name(next(STRESS_NAMES as u64))))
        } else {
            let path = name(next(STRESS_NAMES as u64));
            match File::open(&path) {
                Err(e) => outcome_of("open", Err(e)),
                Ok(mut file) => {
                    // Slowly, so that other processes change the name meanwhile.
                    let mut data = Vec::new();
                    let mut piece = vec![0; 8 * KIB];
                    let read = loop {
                        match file.read(&mut piece) {
                            Ok(0) => break Ok(()),
                            Ok(n) => data.extend_from_slice(&piece[..n]),
                            Err(e) => break Err(e),
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    };
                    match read {
                        Err(e) => Outcome::Error(format!("reading {}: {e}", path.display())),
                        Ok(()) if data.is_empty() => Outcome::Done,
                        Ok(()) => match check_stress_file(&data) {
                            Seen::Whole => Outcome::Done,
                            Seen::Prefix => {
                                counts.prefixes += 1;
                                Outcome::Done
                            }
                            Seen::Damaged(why) => {
                                let size = file.metadata().map(|m| m.len());
                                Outcome::Error(format!(
                                    "read {} ({} bytes, size now {size:?}): {why}",
                                    path.display(),
                                    data.len()
                                ))
                            }
                        },
                    }
                }
            }
        };
        match outcome {
            Outcome::Done => {}
            Outcome::Expected => counts.expected += 1,
            Outcome::Error(e) => counts.errors.push(e),
        }
    }
    counts
}

/// Run by the stress test as each of its processes (`DCLOUD_STRESS_WORKER` set); on its
/// own it has nothing to do.
#[test]
#[ignore = "a worker process of `stress_several_processes_share_names`, which runs it"]
fn stress_worker_process() {
    let Ok(writer) = std::env::var("DCLOUD_STRESS_WORKER") else {
        println!("nothing to do: the stress test runs this as its worker processes");
        return;
    };
    let dir = PathBuf::from(std::env::var("DCLOUD_STRESS_DIR").unwrap());
    let secs: u64 = std::env::var("DCLOUD_STRESS_SECS")
        .unwrap()
        .parse()
        .unwrap();
    let counts = stress_worker(
        writer.parse().unwrap(),
        &dir,
        Instant::now() + Duration::from_secs(secs),
    );
    for error in &counts.errors {
        println!("stress-error: {error}");
    }
    println!("stress-counts: {}", counts.to_line());
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().unwrap())
}

fn stress_several_processes_share_names(mode: WriteBack) {
    need_fuse!();
    let secs = env_number("DCLOUD_STRESS_SECS", 10);
    let processes = env_number("DCLOUD_STRESS_PROCESSES", 3);
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    let workers: Vec<Child> = (1..=processes)
        .map(|writer| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "stress_worker_process",
                    "--nocapture",
                ])
                .args(["--test-threads", "1", "--quiet"])
                .env("DCLOUD_STRESS_WORKER", writer.to_string())
                .env("DCLOUD_STRESS_DIR", env.mnt())
                .env("DCLOUD_STRESS_SECS", secs.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total = StressCounts::default();
    for (writer, worker) in (1..).zip(workers) {
        let output = worker.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "worker {writer} failed: {stdout}");
        let counts = StressCounts::parse(&stdout);
        assert!(counts.ops > 0, "worker {writer} did nothing: {stdout}");
        total.ops += counts.ops;
        total.expected += counts.expected;
        total.prefixes += counts.prefixes;
        total.errors.extend(
            counts
                .errors
                .into_iter()
                .map(|e| format!("worker {writer}: {e}")),
        );
    }
    let first_log = mount.log.clone();
    mount.stop();

    // Mounted again, every file there reads as one whole version.
    let mount = env.mount(&[]);
    let mut files = 0;
    let mut damaged = Vec::new();
    let listed = STRESS_CHANNELS
        .iter()
        .flat_map(|channel| fs::read_dir(env.at(channel)).unwrap());
    for item in listed {
        let path = item.unwrap().path();
        files += 1;
        match fs::read(&path) {
            Err(e) => damaged.push(format!("{}: {e}", path.display())),
            Ok(data) if data.is_empty() => {}
            Ok(data) => match check_stress_file(&data) {
                Seen::Whole => {}
                other => damaged.push(format!("{}: {other:?}", path.display())),
            },
        }
    }
    let second_log = mount.log.clone();
    mount.stop();
    // Both mounts, to the end: no upload or read failed (the filesystem core's
    // warnings). A spool the remount sets aside is counted, not failed: the kernel may
    // drop the release of a file closed just before the stop, and then its session's
    // spool stays; its content is stored. The volume layer's warnings are shown.
    let log = fs::read_to_string(first_log).unwrap() + &fs::read_to_string(second_log).unwrap();
    let (set_aside, logged): (Vec<&str>, Vec<&str>) = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .partition(|l| l.contains("set aside") && l.contains("never closed"));
    let (warnings, volume_warnings): (Vec<&str>, Vec<&str>) = logged
        .into_iter()
        .partition(|l| !l.contains("dcloud_fs::volume"));
    for line in volume_warnings.iter().take(10) {
        println!("stress: the volume layer logged: {line}");
    }
    println!(
        "stress: {processes} processes, {secs} s, {} names: {} operations ({} ENOENT/EEXIST \
         from the others, {} reads of a file being written), {} errors, {} warnings logged \
         (and {} by the volume layer); after a remount {files} file(s), {} damaged, {} \
         spool(s) set aside",
        STRESS_NAMES,
        total.ops,
        total.expected,
        total.prefixes,
        total.errors.len(),
        warnings.len(),
        volume_warnings.len(),
        damaged.len(),
        set_aside.len()
    );
    assert!(
        total.errors.is_empty() && damaged.is_empty() && warnings.is_empty(),
        "errors: {:#?}\ndamaged: {damaged:#?}\nthe mounts' warnings:\n{}",
        &total.errors[..total.errors.len().min(30)],
        warnings[..warnings.len().min(30)].join("\n")
    );
}
in_both_modes!(stress_several_processes_share_names);

#[test]
fn stress_files_tell_whole_from_torn() {
    let file = stress_file(3, 7, 5000);
    assert_eq!(check_stress_file(&file), Seen::Whole);
    assert_eq!(check_stress_file(&file[..100]), Seen::Prefix);
    assert_eq!(check_stress_file(&file[..4]), Seen::Prefix);
    let mut mixed = file.clone();
    mixed[3000..].copy_from_slice(&stress_file(3, 8, 5000)[3000..]);
    assert!(matches!(check_stress_file(&mixed), Seen::Damaged(_)));
    let mut longer = file.clone();
    longer.push(0);
    assert!(matches!(check_stress_file(&longer), Seen::Damaged(_)));
    assert!(matches!(check_stress_file(b"garbage\n"), Seen::Damaged(_)));
}

/// Whether another process could take an exclusive lock on `path` now, without
/// waiting: a `flock` one, or (`posix`) an `fcntl` one over the whole file.
fn another_process_could_lock(path: &Path, posix: bool) -> bool {
    use std::os::unix::ffi::OsStrExt;
    // Made before the fork: the child must not allocate.
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: the child calls only async-signal-safe functions (open, fcntl or flock,
    // _exit) before it exits; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let fd = libc::open(c_path.as_ptr(), libc::O_RDWR);
            if fd < 0 {
                libc::_exit(2);
            }
            let locked = if posix {
                let mut lock: libc::flock = std::mem::zeroed();
                lock.l_type = libc::F_WRLCK as libc::c_short;
                lock.l_whence = libc::SEEK_SET as libc::c_short;
                libc::fcntl(fd, libc::F_SETLK, &lock) == 0
            } else {
                libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0
            };
            libc::_exit(if locked { 0 } else { 1 });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status), "the child died: {status}");
        match libc::WEXITSTATUS(status) {
            0 => true,
            1 => false,
            code => panic!("the child could not open {}: {code}", path.display()),
        }
    }
}

/// `fcntl` over the whole file of `file`: `kind` is F_WRLCK or F_UNLCK.
fn posix_lock(file: &File, kind: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed flock is valid; fcntl reads it and the descriptor is open.
    let done = unsafe {
        let mut lock: libc::flock = std::mem::zeroed();
        lock.l_type = kind as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock)
    };
    assert_eq!(done, 0, "fcntl: {}", std::io::Error::last_os_error());
}

/// Locks bind the processes that use one mount, as on a local disk: the kernel keeps
/// them (the filesystem doesn't ask for them, so FUSE handles `flock` and `fcntl`
/// locks within the mount). They don't reach another mount or machine (README).
#[test]
fn flock_and_fcntl_locks_bind_other_processes_on_the_mount() {
    need_fuse!();
    let env = Env::new();
    let mount = env.mount(&[]);
    let path = env.at("docs/locked.txt");
    write_file(&path, b"shared");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an open descriptor.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
    assert!(
        !another_process_could_lock(&path, false),
        "flock held, yet taken"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) }, 0);
    assert!(
        another_process_could_lock(&path, false),
        "flock released, yet refused"
    );
    posix_lock(&file, libc::F_WRLCK);
    assert!(
        !another_process_could_lock(&path, true),
        "fcntl lock held, yet taken"
    );
    posix_lock(&file, libc::F_UNLCK);
    assert!(
        another_process_could_lock(&path, true),
        "fcntl lock released, yet refused"
    );
    drop(file);
    mount.stop();
}

/// Symbolic links (format version 7): made, read, followed, listed, renamed and removed
/// through the mount, refused over a taken name, copied as links by `cp -a`, and kept
/// over a remount, where the CLI lists them too.
fn symlinks_are_made_read_renamed_and_kept(mode: WriteBack) {
    use std::os::unix::fs::symlink;
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    write_file(&env.at("docs/real.txt"), b"real");
    symlink("real.txt", env.at("docs/link")).unwrap();
    symlink("../nowhere/x", env.at("docs/dangling")).unwrap();
    assert_eq!(
        fs::read_link(env.at("docs/link")).unwrap(),
        Path::new("real.txt")
    );
    // The kernel follows it.
    assert_eq!(fs::read(env.at("docs/link")).unwrap(), b"real");
    let meta = fs::symlink_metadata(env.at("docs/link")).unwrap();
    assert!(meta.file_type().is_symlink());
    assert_eq!(meta.len(), "real.txt".len() as u64);
    assert_eq!(errno_of(fs::read(env.at("docs/dangling"))), libc::ENOENT);
    assert_eq!(
        errno_of(symlink("x", env.at("docs/real.txt"))),
        libc::EEXIST
    );
    fs::rename(env.at("docs/link"), env.at("docs/renamed")).unwrap();
    fs::remove_file(env.at("docs/dangling")).unwrap();
    let tree = env.dir.path().join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    write_file(&tree.join("a.txt"), b"a");
    symlink("../a.txt", tree.join("sub/up")).unwrap();
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&tree)
        .arg(env.at("docs/tree"))
        .status()
        .unwrap();
    assert!(copied.success());
    assert_eq!(
        fs::read_link(env.at("docs/tree/sub/up")).unwrap(),
        Path::new("../a.txt")
    );
    assert_eq!(fs::read(env.at("docs/tree/sub/up")).unwrap(), b"a");
    mount.stop();

    let mount = env.mount(&[]);
    assert_eq!(
        fs::read_link(env.at("docs/renamed")).unwrap(),
        Path::new("real.txt")
    );
    assert_eq!(
        errno_of(fs::symlink_metadata(env.at("docs/link"))),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(fs::symlink_metadata(env.at("docs/dangling"))),
        libc::ENOENT
    );
    assert_eq!(
        fs::read_link(env.at("docs/tree/sub/up")).unwrap(),
        Path::new("../a.txt")
    );
    mount.stop();
    let listing = env.ok(&["ls", "-l", "docs"]);
    assert!(listing.contains("renamed -> real.txt"), "{listing}");
}
in_both_modes!(symlinks_are_made_read_renamed_and_kept);

/// FIFOs, sockets and device nodes (format version 7): made through the mount with
/// their type, mode and device number, a FIFO working as one (the kernel's pipe), a
/// device not opened (`nodev`), kept over a remount and listed by the CLI.
fn special_files_are_stored_and_kept(mode: WriteBack) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    make_node(&env.at("docs/pipe"), libc::S_IFIFO, 0).unwrap();
    make_node(&env.at("docs/sock"), libc::S_IFSOCK, 0).unwrap();
    let null = libc::makedev(1, 3);
    make_node(&env.at("docs/null"), libc::S_IFCHR, null).unwrap();
    assert_eq!(
        errno_of(make_node(&env.at("docs/pipe"), libc::S_IFIFO, 0)),
        libc::EEXIST
    );
    // The FIFO carries bytes from a writer to a reader, as any FIFO does.
    let pipe = env.at("docs/pipe");
    let writer = std::thread::spawn(move || fs::write(pipe, b"through the pipe").unwrap());
    assert_eq!(fs::read(env.at("docs/pipe")).unwrap(), b"through the pipe");
    writer.join().unwrap();
    // A FUSE mount is `nodev`: the device is there, and isn't opened.
    assert_eq!(errno_of(fs::read(env.at("docs/null"))), libc::EACCES);
    mount.stop();

    let mount = env.mount(&[]);
    let meta = |name: &str| fs::symlink_metadata(env.at(name)).unwrap();
    assert!(meta("docs/pipe").file_type().is_fifo());
    assert!(meta("docs/sock").file_type().is_socket());
    assert!(meta("docs/null").file_type().is_char_device());
    assert_eq!(meta("docs/null").rdev(), null);
    assert_eq!(meta("docs/pipe").mode() & 0o777, 0o640);
    mount.stop();
    let listing = env.ok(&["ls", "-l", "docs"]);
    assert!(listing.contains("prw-r-----"), "{listing}");
    assert!(
        listing.contains("crw-r-----") && listing.contains("1, 3"),
        "{listing}"
    );
}
in_both_modes!(special_files_are_stored_and_kept);

/// `rsync -a` of a tree holding symbolic links, a FIFO and odd modes into the mount
/// exits 0 (it exited 23 when links were refused), and a second `rsync -na
/// --itemize-changes` finds nothing to do, also after a remount. Needs rsync
/// (`.ci/run` installs it); says so and passes without it.
fn rsync_a_round_trips_a_tree_with_links_and_a_fifo(mode: WriteBack) {
    use std::os::unix::fs::{PermissionsExt, symlink};
    need_fuse!();
    if Command::new("rsync").arg("--version").output().is_err() {
        println!("skipping the rsync test: no rsync");
        return;
    }
    let env = Env::with(mode);
    let tree = env.dir.path().join("tree");
    fs::create_dir_all(tree.join("sub/deep")).unwrap();
    write_file(&tree.join("a.txt"), b"alpha");
    write_file(&tree.join("sub/b.bin"), &random_bytes(100 * KIB, 9));
    fs::set_permissions(tree.join("sub/b.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    symlink("a.txt", tree.join("la")).unwrap();
    symlink("../a.txt", tree.join("sub/up")).unwrap();
    symlink("/nowhere", tree.join("dangling")).unwrap();
    make_node(&tree.join("pipe"), libc::S_IFIFO, 0).unwrap();
    let rsync = |args: &[&str]| {
        let out = Command::new("rsync")
            .args(args)
            .arg(format!("{}/", tree.display()))
            .arg(format!("{}/", env.at("docs/tree").display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "rsync {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let mount = env.mount(&[]);
    rsync(&["-a"]);
    assert_eq!(
        rsync(&["-na", "--itemize-changes"]),
        "",
        "a second run has work"
    );
    mount.stop();
    let mount = env.mount(&[]);
    assert_eq!(rsync(&["-na", "--itemize-changes"]), "", "after a remount");
    mount.stop();
}
in_both_modes!(rsync_a_round_trips_a_tree_with_links_and_a_fifo);
