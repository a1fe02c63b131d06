//! POSIX completeness through a real mount (format version 8): hard links, extended
//! attributes, owners, special mode bits, ctime and atime, and the tools that need all
//! of them at once (`rsync -aHAX`, `tar --xattrs --same-owner`, `git clone` and
//! `git fsck`).
//!
//! These run `dcloud-fs mount -f` and go through the kernel, not through the library:
//! the kernel decides much of what a user sees (it refuses a hard link of a folder and
//! an xattr over 64 KiB itself, keeps one inode for the names of a hard-linked file,
//! caches attributes and pages), so only a mount shows whether the file system and the
//! kernel agree. Each test checks what it reads against the values it set, then again
//! after a remount (the store and the index cache), and the tree tests also on a
//! "fresh machine": a mount with no index cache, no chunk cache and no spool.
//!
//! Like `tests/mount.rs`, whose harness this file copies the little it needs of, they
//! need root, /dev/fuse and fusermount3; without them each test says why on stdout
//! and passes without checking anything. The rsync, tar and git tests also skip (with
//! a line on stdout) when their tool is missing. Each mount test gets its own HOME and
//! a local store with small limits (16 KiB attachments), and runs under both
//! write-back modes. One test checks the tree comparison itself on local copies, so
//! that a tree test's failure is the mount's.

#[path = "common/data.rs"]
mod data;
#[macro_use]
#[path = "common/mounting.rs"]
mod mounting;

use data::random_bytes;
use mounting::*;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// ----------------------------------------------------------------------------------
// System calls std doesn't have: xattrs, utimensat, and a stat that says what it is.
// ----------------------------------------------------------------------------------

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn c_name(name: &str) -> CString {
    CString::new(name).unwrap()
}

/// `-1` into the errno it stands for.
fn check(result: libc::ssize_t) -> std::io::Result<usize> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result as usize)
    }
}

/// lsetxattr(2) with `flags` (0, `XATTR_CREATE` or `XATTR_REPLACE`).
fn set_xattr_with(path: &Path, name: &str, value: &[u8], flags: i32) -> std::io::Result<()> {
    let (path, name) = (c_path(path), c_name(name));
    // SAFETY: valid NUL-terminated strings, and a buffer of `value.len()` bytes.
    let result = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    check(result as libc::ssize_t).map(drop)
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    set_xattr_with(path, name, value, 0)
}

/// lgetxattr(2): asks the size, then reads the value (again if it grew in between).
fn get_xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let (path, name) = (c_path(path), c_name(name));
    loop {
        // SAFETY: valid NUL-terminated strings; a null buffer of size 0 asks the size.
        let size = check(unsafe {
            libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0)
        })?;
        let mut value = vec![0u8; size];
        // SAFETY: valid NUL-terminated strings, and a buffer of `value.len()` bytes.
        let got = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        match check(got) {
            Ok(len) => {
                value.truncate(len);
                return Ok(value);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// llistxattr(2), the names sorted.
fn list_xattrs(path: &Path) -> std::io::Result<Vec<String>> {
    let path = c_path(path);
    loop {
        // SAFETY: a valid NUL-terminated path; a null buffer of size 0 asks the size.
        let size = check(unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut list = vec![0u8; size];
        // SAFETY: a valid NUL-terminated path, and a buffer of `list.len()` bytes.
        let got = unsafe { libc::llistxattr(path.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
        match check(got) {
            Ok(len) => {
                list.truncate(len);
                let mut names: Vec<String> = list
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| String::from_utf8(n.to_vec()).unwrap())
                    .collect();
                names.sort();
                return Ok(names);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// lremovexattr(2).
fn remove_xattr(path: &Path, name: &str) -> std::io::Result<()> {
    let (path, name) = (c_path(path), c_name(name));
    // SAFETY: valid NUL-terminated strings.
    check(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) } as libc::ssize_t).map(drop)
}

/// Every xattr of `path`, by name.
fn xattrs_of(path: &Path) -> BTreeMap<String, Vec<u8>> {
    list_xattrs(path)
        .unwrap_or_else(|e| panic!("listxattr {}: {e}", path.display()))
        .into_iter()
        .map(|name| {
            let value = get_xattr(path, &name)
                .unwrap_or_else(|e| panic!("getxattr {} {name}: {e}", path.display()));
            (name, value)
        })
        .collect()
}

/// A time for utimensat: seconds and nanoseconds, or `UTIME_NOW`/`UTIME_OMIT` in
/// `nsec`.
fn timespec(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    }
}

/// utimensat(2) of `path` (following a link), atime then mtime.
fn set_times(path: &Path, atime: libc::timespec, mtime: libc::timespec) -> std::io::Result<()> {
    let path = c_path(path);
    let times = [atime, mtime];
    // SAFETY: a valid NUL-terminated path and an array of two timespecs.
    let result = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
    check(result as libc::ssize_t).map(drop)
}

/// lstat, which must succeed.
fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
}

/// A status time as (seconds, nanoseconds).
type Stamp = (i64, i64);

fn ctime_of(meta: &fs::Metadata) -> Stamp {
    (meta.ctime(), meta.ctime_nsec())
}

fn mtime_of(meta: &fs::Metadata) -> Stamp {
    (meta.mtime(), meta.mtime_nsec())
}

fn atime_of(meta: &fs::Metadata) -> Stamp {
    (meta.atime(), meta.atime_nsec())
}

/// Now, as a [`Stamp`].
fn now_stamp() -> Stamp {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now.as_secs() as i64, i64::from(now.subsec_nanos()))
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Runs `program` with `args` in `dir`; it must exit 0. Returns its output.
fn run_tool(program: &str, dir: &Path, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let output = Command::new(program)
        .args(args.iter().map(|a| a.as_ref()))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{program} {:?} failed ({}): {}{}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

// ----------------------------------------------------------------------------------
// A tree of every kind of thing, and a comparison of two trees.
// ----------------------------------------------------------------------------------

/// Makes, at `root` (outside the mount), a tree of every kind of thing the tests copy
/// in: a plain file, a larger one mode 0o600 spanning several chunks, a hard-linked
/// pair in two folders, symbolic links (one dangling), a FIFO, a file and a folder
/// with `user.*` xattrs, a setuid file mode 0o4755, a file owned by 1234:5678, and
/// nested folders.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deep")).unwrap();
    write_file(&root.join("a.txt"), b"alpha");
    write_file(&root.join("sub/deep/c.txt"), b"deep down");
    let big = root.join("sub/big.bin");
    write_file(&big, &random_bytes(100 * KIB + 3, 21));
    set_mode(&big, 0o600);
    write_file(&root.join("h1"), &random_bytes(20 * KIB, 22));
    fs::hard_link(root.join("h1"), root.join("sub/h2")).unwrap();
    symlink("a.txt", root.join("la")).unwrap();
    symlink("/nowhere/at/all", root.join("dangling")).unwrap();
    make_node(&root.join("pipe"), libc::S_IFIFO, 0).unwrap();
    let x = root.join("x.txt");
    write_file(&x, b"with attributes");
    set_xattr(&x, "user.a", b"1").unwrap();
    set_xattr(&x, "user.b", &random_bytes(300, 23)).unwrap();
    set_xattr(&root.join("sub"), "user.folder", b"a folder's").unwrap();
    let suid = root.join("suid.sh");
    write_file(&suid, b"#!/bin/sh\necho hi\n");
    set_mode(&suid, 0o4755);
    let owned = root.join("owned.txt");
    write_file(&owned, b"someone else's");
    chown(&owned, Some(1234), Some(5678)).unwrap();
}

/// What the tree comparison looks at for one entry.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    /// 'f', 'd', 'l', 'p', 's', 'c' or 'b'.
    kind: char,
    /// The permission bits and setuid, setgid and sticky; 0 for a symbolic link, whose
    /// mode means nothing on Linux.
    mode: u32,
    uid: u32,
    gid: u32,
    /// In whole seconds (what tar keeps at least).
    mtime: i64,
    /// A file's or a link's size; 0 for the rest.
    size: u64,
    /// A file's names; 0 for the rest (a folder's count differs between file systems).
    nlink: u64,
    /// A file's content as (length, FNV-1a), readable in a failure's message.
    content: Option<(usize, u64)>,
    target: Option<PathBuf>,
    /// A file's or a folder's xattrs.
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn node_of(path: &Path) -> Node {
    let meta = lstat(path);
    let kind = meta.file_type();
    let letter = if kind.is_file() {
        'f'
    } else if kind.is_dir() {
        'd'
    } else if kind.is_symlink() {
        'l'
    } else if kind.is_fifo() {
        'p'
    } else if kind.is_socket() {
        's'
    } else if kind.is_char_device() {
        'c'
    } else {
        'b'
    };
    let content = kind.is_file().then(|| {
        let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        (data.len(), fnv1a(&data))
    });
    let target = kind.is_symlink().then(|| {
        fs::read_link(path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
    });
    Node {
        kind: letter,
        mode: if kind.is_symlink() {
            0
        } else {
            meta.mode() & 0o7777
        },
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        size: if kind.is_file() || kind.is_symlink() {
            meta.len()
        } else {
            0
        },
        nlink: if kind.is_file() { meta.nlink() } else { 0 },
        content,
        target,
        xattrs: if kind.is_file() || kind.is_dir() {
            xattrs_of(path)
        } else {
            BTreeMap::new()
        },
    }
}

/// Every entry under `root` (not `root` itself), by path relative to it.
fn tree_of(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let node = node_of(&path);
            let is_dir = node.kind == 'd';
            out.insert(path.strip_prefix(root).unwrap().to_path_buf(), node);
            if is_dir {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `copy` has the entries of `original`, each alike in type, mode, owner, mtime,
/// size, names, content, target and xattrs; and `h1` and `sub/h2` share an inode.
fn assert_same_tree(original: &Path, copy: &Path, when: &str) {
    let (want, got) = (tree_of(original), tree_of(copy));
    let want_paths: Vec<&PathBuf> = want.keys().collect();
    let got_paths: Vec<&PathBuf> = got.keys().collect();
    assert_eq!(got_paths, want_paths, "{when}: the copy has other entries");
    for (path, node) in &want {
        assert_eq!(&got[path], node, "{when}: {} differs", path.display());
    }
    let (h1, h2) = (lstat(&copy.join("h1")), lstat(&copy.join("sub/h2")));
    assert_eq!(
        h1.ino(),
        h2.ino(),
        "{when}: the hard-linked pair has two inodes"
    );
}

/// `rsync ARGS source/ target/`, which must exit 0; returns its stdout.
fn rsync(args: &[&str], source: &Path, target: &Path) -> String {
    let source = format!("{}/", source.display());
    let target = format!("{}/", target.display());
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = args
        .iter()
        .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
        .collect();
    all.push(&source);
    all.push(&target);
    String::from_utf8(run_tool("rsync", Path::new("/"), &all).stdout).unwrap()
}

/// `tar -C tree --xattrs -cf archive .`
fn tar_create(tree: &Path, archive: &Path) {
    run_tool(
        "tar",
        Path::new("/"),
        &[&"-C", &tree, &"--xattrs", &"-cf", &archive, &"."],
    );
}

/// `tar -C into --xattrs --same-owner -xpf archive`, into a new folder `into`.
fn tar_extract(archive: &Path, into: &Path) {
    fs::create_dir(into).unwrap_or_else(|e| panic!("mkdir {}: {e}", into.display()));
    run_tool(
        "tar",
        Path::new("/"),
        &[
            &"-C",
            &into,
            &"--xattrs",
            &"--same-owner",
            &"-xpf",
            &archive,
        ],
    );
}

/// The oracle of the tree tests, checked without a mount: `rsync -aHAX` and `tar`
/// copies of [`make_tree`]'s tree on the local disk compare alike, and a second rsync
/// has nothing to do. (Were this to fail, a failure of a mount test would say nothing
/// about the mount.)
#[test]
fn the_tree_comparison_finds_local_copies_alike() {
    need_fuse!();
    need_tool!("rsync");
    need_tool!("tar");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree);
    let copy = dir.path().join("copy");
    rsync(&["-aHAX"], &tree, &copy);
    assert_eq!(rsync(&["-naHAX", "--itemize-changes"], &tree, &copy), "");
    assert_same_tree(&tree, &copy, "rsync");
    let archive = dir.path().join("t.tar");
    tar_create(&tree, &archive);
    let untar = dir.path().join("untar");
    tar_extract(&archive, &untar);
    assert_same_tree(&tree, &untar, "tar");
}

// ----------------------------------------------------------------------------------
// 1. Hard links.
// ----------------------------------------------------------------------------------

/// `link(2)` within a channel: the names share an inode, its link count and its data
/// (written through either name, read through the other at once, even before an
/// upload); unlinking one leaves the others; they are kept over a remount. A link
/// across channels is EXDEV, onto a taken name EEXIST, of a folder EPERM (the
/// kernel's), and a rename of one name onto another of the same file does nothing.
fn hard_links_share_an_inode_its_count_and_its_data(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    let (a, b, c) = (env.at("docs/a"), env.at("docs/b"), env.at("docs/c"));
    write_file(&a, b"first");
    fs::hard_link(&a, &b).unwrap_or_else(|e| panic!("link a b: {e}\n{}", mount.log()));
    let (meta_a, meta_b) = (lstat(&a), lstat(&b));
    assert_eq!(meta_a.ino(), meta_b.ino(), "a and b have two inodes");
    assert_eq!((meta_a.nlink(), meta_b.nlink()), (2, 2), "nlink of a, b");
    assert!(meta_b.is_file());
    assert_eq!(fs::read(&b).unwrap(), b"first", "b's content");

    // Written through b (several chunks), read through a at once.
    let data = random_bytes(40 * KIB + 5, 31);
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&b)
        .unwrap();
    file.write_all(&data).unwrap();
    close(file).unwrap();
    assert!(fs::read(&a).unwrap() == data, "a doesn't read what b wrote");
    assert_eq!(lstat(&a).len(), data.len() as u64, "a's size");

    // A link of a link.
    fs::hard_link(&b, &c).unwrap();
    for path in [&a, &b, &c] {
        let meta = lstat(path);
        assert_eq!(meta.nlink(), 3, "nlink of {}", path.display());
        assert_eq!(meta.ino(), meta_a.ino(), "ino of {}", path.display());
    }

    // Refused: onto a taken name, across channels, of a folder.
    write_file(&env.at("docs/taken"), b"taken");
    assert_eq!(errno_of(fs::hard_link(&a, &c)), libc::EEXIST, "onto c");
    assert_eq!(
        errno_of(fs::hard_link(&a, env.at("docs/taken"))),
        libc::EEXIST,
        "onto another file"
    );
    assert_eq!(fs::read(env.at("docs/taken")).unwrap(), b"taken");
    assert_eq!(
        errno_of(fs::hard_link(&a, env.at("other/a"))),
        libc::EXDEV,
        "into another channel"
    );
    assert_eq!(
        errno_of(fs::symlink_metadata(env.at("other/a"))),
        libc::ENOENT
    );
    fs::create_dir(env.at("docs/dir")).unwrap();
    assert_eq!(
        errno_of(fs::hard_link(env.at("docs/dir"), env.at("docs/dir2"))),
        libc::EPERM,
        "of a folder"
    );

    // A rename of one name onto another of the same file does nothing.
    fs::rename(&a, &c).unwrap();
    for path in [&a, &b, &c] {
        assert_eq!(
            lstat(path).nlink(),
            3,
            "nlink of {} after rename",
            path.display()
        );
    }

    // Unlinking a name leaves the others, with the data.
    fs::remove_file(&a).unwrap();
    assert_eq!(errno_of(fs::symlink_metadata(&a)), libc::ENOENT);
    assert_eq!(lstat(&b).nlink(), 2, "nlink of b after rm a");
    fs::remove_file(&c).unwrap();
    let meta_b = lstat(&b);
    assert_eq!(meta_b.nlink(), 1, "nlink of b after rm a, c");
    assert!(fs::read(&b).unwrap() == data, "b lost its data");

    // A link into another folder of the channel, kept over a remount.
    fs::create_dir(env.at("docs/sub")).unwrap();
    fs::hard_link(&b, env.at("docs/sub/d")).unwrap();
    assert_eq!(lstat(&b).nlink(), 2);
    mount.stop();

    let mount = env.mount(&[]);
    let (meta_b, meta_d) = (lstat(&b), lstat(&env.at("docs/sub/d")));
    assert_eq!(meta_b.ino(), meta_d.ino(), "after a remount: two inodes");
    assert_eq!(
        (meta_b.nlink(), meta_d.nlink()),
        (2, 2),
        "after a remount: nlink"
    );
    assert!(fs::read(&b).unwrap() == data, "after a remount: b's data");
    assert!(
        fs::read(env.at("docs/sub/d")).unwrap() == data,
        "after a remount: sub/d's data"
    );
    for gone in ["docs/a", "docs/c"] {
        assert_eq!(
            errno_of(fs::symlink_metadata(env.at(gone))),
            libc::ENOENT,
            "{gone} is back"
        );
    }
    // Written through one name after the remount, read through the other.
    write_file(&env.at("docs/sub/d"), b"after the remount");
    assert_eq!(fs::read(&b).unwrap(), b"after the remount");
    mount.stop();
}
in_both_modes!(hard_links_share_an_inode_its_count_and_its_data);

/// `renameat2(RENAME_EXCHANGE)`.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let (a, b) = (c_path(a), c_path(b));
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let done = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `rename(2)` with `RENAME_EXCHANGE` swaps two files (their inode numbers go along),
/// a file and a folder with what it holds, also a file just written (waiting for its
/// upload); kept over a remount. Across channels EXDEV, a missing name ENOENT.
fn rename_exchange_swaps_files_and_folders(mode: WriteBack) {
    use std::os::unix::fs::MetadataExt;
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    let (a, b) = (env.at("docs/a.txt"), env.at("docs/b.txt"));
    write_file(&a, b"first");
    write_file(&b, &random_bytes(40 * KIB, 51));
    let (ino_a, ino_b) = (lstat(&a).ino(), lstat(&b).ino());
    exchange(&a, &b).unwrap_or_else(|e| panic!("exchange: {e}\n{}", mount.log()));
    assert_eq!(fs::read(&b).unwrap(), b"first");
    assert_eq!(fs::read(&a).unwrap(), random_bytes(40 * KIB, 51));
    assert_eq!((lstat(&a).ino(), lstat(&b).ino()), (ino_b, ino_a));

    let folder = env.at("docs/box");
    fs::create_dir(&folder).unwrap();
    write_file(&folder.join("inner.txt"), b"inside");
    exchange(&a, &folder).unwrap();
    assert!(lstat(&a).is_dir(), "a.txt is the folder now");
    assert_eq!(fs::read(a.join("inner.txt")).unwrap(), b"inside");
    assert_eq!(fs::read(&folder).unwrap(), random_bytes(40 * KIB, 51));

    write_file(&env.at("other/x.txt"), b"elsewhere");
    assert_eq!(
        errno_of(exchange(&b, &env.at("other/x.txt"))),
        libc::EXDEV,
        "across channels"
    );
    assert_eq!(
        errno_of(exchange(&b, &env.at("docs/none"))),
        libc::ENOENT,
        "a name that isn't there"
    );
    mount.stop();

    let mount = env.mount(&[]);
    assert_eq!(fs::read(env.at("docs/a.txt/inner.txt")).unwrap(), b"inside");
    assert_eq!(
        fs::read(env.at("docs/box")).unwrap(),
        random_bytes(40 * KIB, 51)
    );
    assert_eq!(fs::read(env.at("docs/b.txt")).unwrap(), b"first");
    mount.stop();
}
in_both_modes!(rename_exchange_swaps_files_and_folders);

/// What the mount stored of owners, modes, times and attributes comes back with the
/// CLI's `get -r` (as root owners by default, `--xattrs` for the attributes), and
/// `ls -l` shows the owners and the setuid bit.
fn get_r_restores_owners_modes_times_and_xattrs(mode: WriteBack) {
    use std::os::unix::fs::MetadataExt;
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    let folder = env.at("docs/kept");
    fs::create_dir(&folder).unwrap();
    let file = folder.join("tool.sh");
    write_file(&file, b"#!/bin/sh\n");
    chown(&file, Some(1234), Some(5678)).unwrap();
    set_mode(&file, 0o4755);
    set_xattr(&file, "user.origin", b"the mount").unwrap();
    set_times(
        &file,
        timespec(1_000_000_000, 5),
        timespec(1_500_000_000, 7),
    )
    .unwrap();
    set_xattr(&folder, "user.folder", b"yes").unwrap();
    set_mode(&folder, 0o750);
    set_times(
        &folder,
        timespec(1_600_000_000, 0),
        timespec(1_600_000_000, 0),
    )
    .unwrap();
    mount.stop();

    let listing = env.ok(&["ls", "-l", "docs/kept"]);
    assert!(
        listing.contains("-rwsr-xr-x  1234  5678 "),
        "ls -l shows the owner and setuid: {listing}"
    );
    let out = env.work().join("out");
    env.ok(&["get", "-r", "--xattrs", "docs/kept", out.to_str().unwrap()]);
    let back = out.join("tool.sh");
    let meta = fs::symlink_metadata(&back).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "owner");
    assert_eq!(meta.mode() & 0o7777, 0o4755, "mode");
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_500_000_000, 7),
        "mtime"
    );
    assert_eq!(
        (meta.atime(), meta.atime_nsec()),
        (1_000_000_000, 5),
        "atime"
    );
    assert_eq!(get_xattr(&back, "user.origin").unwrap(), b"the mount");
    assert_eq!(fs::read(&back).unwrap(), b"#!/bin/sh\n");
    let dir = fs::symlink_metadata(&out).unwrap();
    assert_eq!(dir.mode() & 0o7777, 0o750, "the folder's mode");
    assert_eq!(
        dir.mtime(),
        1_600_000_000,
        "the folder's mtime, set after its files"
    );
    assert_eq!(get_xattr(&out, "user.folder").unwrap(), b"yes");

    // Without --xattrs, none.
    let plain = env.work().join("plain");
    env.ok(&["get", "-r", "docs/kept", plain.to_str().unwrap()]);
    assert!(get_xattr(&plain.join("tool.sh"), "user.origin").is_err());
}
in_both_modes!(get_r_restores_owners_modes_times_and_xattrs);

// ----------------------------------------------------------------------------------
// 2. Extended attributes.
// ----------------------------------------------------------------------------------

/// Sets, reads, lists and removes xattrs on a file and on a folder: values up to the
/// kernel's 64 KiB (one byte more is E2BIG), an empty one, `XATTR_CREATE` and
/// `XATTR_REPLACE`, `trusted.*` as root; kept by a rename and over a remount.
fn xattrs_are_set_read_listed_removed_and_kept(mode: WriteBack) {
    need_fuse!();
    let env = Env::with_attachments_of(mode, 1024 * KIB);
    let mount = env.mount(&[]);
    let file = env.at("docs/f.txt");
    let folder = env.at("docs/folder");
    write_file(&file, b"content");
    fs::create_dir(&folder).unwrap();
    let b_value = random_bytes(1000, 41);
    let big = random_bytes(64 * KIB, 42);
    for path in [&file, &folder] {
        let what = path.display();
        set_xattr(path, "user.a", b"1")
            .unwrap_or_else(|e| panic!("setxattr user.a on {what}: {e}\n{}", mount.log()));
        set_xattr(path, "user.b", &b_value).unwrap();
        assert_eq!(get_xattr(path, "user.a").unwrap(), b"1", "{what}");
        assert!(get_xattr(path, "user.b").unwrap() == b_value, "{what}");
        assert_eq!(list_xattrs(path).unwrap(), ["user.a", "user.b"], "{what}");

        remove_xattr(path, "user.a").unwrap();
        assert_eq!(errno_of(get_xattr(path, "user.a")), libc::ENODATA, "{what}");
        assert_eq!(list_xattrs(path).unwrap(), ["user.b"], "{what}");
        assert_eq!(
            errno_of(remove_xattr(path, "user.a")),
            libc::ENODATA,
            "{what}: removing a missing one"
        );

        // XATTR_CREATE refuses a taken name; XATTR_REPLACE a missing one.
        assert_eq!(
            errno_of(set_xattr_with(path, "user.b", b"x", libc::XATTR_CREATE)),
            libc::EEXIST,
            "{what}"
        );
        assert_eq!(
            errno_of(set_xattr_with(path, "user.a", b"x", libc::XATTR_REPLACE)),
            libc::ENODATA,
            "{what}"
        );
        set_xattr_with(path, "user.a", b"again", libc::XATTR_CREATE).unwrap();
        set_xattr_with(path, "user.a", b"replaced", libc::XATTR_REPLACE).unwrap();
        assert_eq!(get_xattr(path, "user.a").unwrap(), b"replaced", "{what}");

        // Empty, and as large as the kernel lets through.
        set_xattr(path, "user.empty", b"").unwrap();
        assert_eq!(get_xattr(path, "user.empty").unwrap(), b"", "{what}");
        set_xattr(path, "user.big", &big)
            .unwrap_or_else(|e| panic!("a 64 KiB value on {what}: {e}"));
        assert!(get_xattr(path, "user.big").unwrap() == big, "{what}");
        assert_eq!(
            errno_of(set_xattr(
                path,
                "user.huge",
                &random_bytes(64 * KIB + 1, 43)
            )),
            libc::E2BIG,
            "{what}: 64 KiB + 1"
        );

        // POSIX ACLs and SELinux labels aren't kept: ENOTSUP, as on a file system
        // without them (GNU `ls -l` stops asking the mount only once told so).
        // (The kernel parses an ACL's value before the mount sees it, so only a
        // label is set here.)
        for name in ["system.posix_acl_access", "security.selinux"] {
            assert_eq!(
                errno_of(get_xattr(path, name)),
                libc::ENOTSUP,
                "{what}: {name}"
            );
            assert_eq!(
                errno_of(remove_xattr(path, name)),
                libc::ENOTSUP,
                "{what}: {name}"
            );
        }
        assert_eq!(
            errno_of(set_xattr(
                path,
                "security.selinux",
                b"system_u:object_r:etc_t:s0"
            )),
            libc::ENOTSUP,
            "{what}"
        );
        set_xattr(path, "security.other", b"kept").unwrap();
        assert_eq!(
            get_xattr(path, "security.other").unwrap(),
            b"kept",
            "{what}"
        );
        remove_xattr(path, "security.other").unwrap();

        // Root may use trusted.*.
        set_xattr(path, "trusted.x", b"root only").unwrap();
        assert_eq!(
            get_xattr(path, "trusted.x").unwrap(),
            b"root only",
            "{what}"
        );
    }
    let expected = ["trusted.x", "user.a", "user.b", "user.big", "user.empty"];
    let check_all = |path: &Path, when: &str| {
        let what = path.display();
        assert_eq!(list_xattrs(path).unwrap(), expected, "{when}: {what}");
        assert_eq!(
            get_xattr(path, "user.a").unwrap(),
            b"replaced",
            "{when}: {what}"
        );
        assert!(
            get_xattr(path, "user.b").unwrap() == b_value,
            "{when}: {what}"
        );
        assert!(
            get_xattr(path, "user.big").unwrap() == big,
            "{when}: {what}"
        );
        assert_eq!(
            get_xattr(path, "user.empty").unwrap(),
            b"",
            "{when}: {what}"
        );
        assert_eq!(
            get_xattr(path, "trusted.x").unwrap(),
            b"root only",
            "{when}: {what}"
        );
    };

    // Kept by a rename of the file and of the folder.
    let (renamed_file, renamed_folder) = (env.at("docs/g.txt"), env.at("docs/moved"));
    fs::rename(&file, &renamed_file).unwrap();
    fs::rename(&folder, &renamed_folder).unwrap();
    check_all(&renamed_file, "after a rename");
    check_all(&renamed_folder, "after a rename");
    assert_eq!(fs::read(&renamed_file).unwrap(), b"content");
    mount.stop();

    let mount = env.mount(&[]);
    check_all(&renamed_file, "after a remount");
    check_all(&renamed_folder, "after a remount");
    assert_eq!(fs::read(&renamed_file).unwrap(), b"content");
    mount.stop();
}
in_both_modes!(xattrs_are_set_read_listed_removed_and_kept);

// ----------------------------------------------------------------------------------
// 3. Owners and mode bits.
// ----------------------------------------------------------------------------------

/// Each file keeps its owner and group: a new one is its creator's, root may give it
/// away (both ids, or the group alone), a folder too; kept over a remount.
fn owners_are_kept_per_file(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    let ids = |path: &Path| {
        let meta = lstat(path);
        (meta.uid(), meta.gid())
    };
    let owned = env.at("docs/owned.txt");
    write_file(&owned, b"owned");
    assert_eq!(ids(&owned), (0, 0), "a new file is its creator's");
    chown(&owned, Some(1234), Some(5678))
        .unwrap_or_else(|e| panic!("chown 1234:5678: {e}\n{}", mount.log()));
    let group_only = env.at("docs/group-only.txt");
    write_file(&group_only, b"group");
    chown(&group_only, None, Some(42)).unwrap();
    let owned_dir = env.at("docs/owned-dir");
    fs::create_dir(&owned_dir).unwrap();
    chown(&owned_dir, Some(4321), Some(8765)).unwrap();
    let check_all = |when: &str| {
        assert_eq!(ids(&owned), (1234, 5678), "{when}: owned.txt");
        assert_eq!(ids(&group_only), (0, 42), "{when}: group-only.txt");
        assert_eq!(ids(&owned_dir), (4321, 8765), "{when}: owned-dir");
        assert_eq!(fs::read(&owned).unwrap(), b"owned", "{when}");
    };
    check_all("at once");
    mount.stop();
    let mount = env.mount(&[]);
    check_all("after a remount");
    mount.stop();
}
in_both_modes!(owners_are_kept_per_file);

/// chmod keeps setuid, setgid and sticky, and a mode shows as set: nothing masks it
/// (the mount's umask was 022); kept over a remount.
fn all_mode_bits_are_kept_and_none_masked(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    let bits = |path: &Path| lstat(path).mode() & 0o7777;
    let all_bits = env.at("docs/all-bits");
    write_file(&all_bits, b"#!/bin/sh\n");
    set_mode(&all_bits, 0o7755);
    let sticky = env.at("docs/sticky");
    fs::create_dir(&sticky).unwrap();
    set_mode(&sticky, 0o1777);
    let open = env.at("docs/open.txt");
    write_file(&open, b"anyone");
    set_mode(&open, 0o777);
    let closed = env.at("docs/closed.txt");
    write_file(&closed, b"no one");
    set_mode(&closed, 0o000);
    let check_all = |when: &str| {
        assert!(lstat(&sticky).is_dir() && lstat(&all_bits).is_file());
        let got = bits(&all_bits);
        assert_eq!(got, 0o7755, "{when}: all-bits is {got:o}");
        let got = bits(&sticky);
        assert_eq!(got, 0o1777, "{when}: sticky is {got:o}");
        let got = bits(&closed);
        assert_eq!(got, 0, "{when}: closed.txt is {got:o}");
        let got = bits(&open);
        assert_eq!(got, 0o777, "{when}: open.txt is {got:o}");
    };
    check_all("at once");
    mount.stop();
    let mount = env.mount(&[]);
    check_all("after a remount");
    mount.stop();
}
in_both_modes!(all_mode_bits_are_kept_and_none_masked);

// ----------------------------------------------------------------------------------
// 4. ctime and atime.
// ----------------------------------------------------------------------------------

/// A chmod moves ctime (to no earlier than the call) and not mtime; utimensat sets
/// atime and mtime to the nanosecond (or atime to now, leaving mtime), moves ctime,
/// and the times are kept over a remount.
fn ctime_follows_changes_and_utimensat_sets_both_times(mode: WriteBack) {
    need_fuse!();
    let env = Env::with(mode);
    let mount = env.mount(&[]);
    let path = env.at("docs/t.txt");
    write_file(&path, b"times");
    let first = lstat(&path);
    std::thread::sleep(Duration::from_millis(10));

    let before_chmod = now_stamp();
    set_mode(&path, 0o640);
    let chmodded = lstat(&path);
    assert!(
        ctime_of(&chmodded) >= before_chmod,
        "ctime {:?} is before the chmod at {before_chmod:?}",
        ctime_of(&chmodded)
    );
    assert_ne!(
        ctime_of(&chmodded),
        ctime_of(&first),
        "chmod didn't move ctime"
    );
    assert_eq!(mtime_of(&chmodded), mtime_of(&first), "chmod moved mtime");
    std::thread::sleep(Duration::from_millis(10));

    // Both times, to the nanosecond.
    let atime = (1_000_000_000, 123_456_789);
    let mtime = (1_500_000_000, 987_654_321);
    let before_utimens = now_stamp();
    set_times(
        &path,
        timespec(atime.0, atime.1),
        timespec(mtime.0, mtime.1),
    )
    .unwrap_or_else(|e| panic!("utimensat: {e}\n{}", mount.log()));
    let touched = lstat(&path);
    assert_eq!(atime_of(&touched), atime, "atime after utimensat");
    assert_eq!(mtime_of(&touched), mtime, "mtime after utimensat");
    assert!(
        ctime_of(&touched) >= before_utimens,
        "ctime {:?} is before the utimensat at {before_utimens:?}",
        ctime_of(&touched)
    );

    // atime to now, mtime left as it is (`touch -a`), on another file.
    let other = env.at("docs/u.txt");
    write_file(&other, b"atime only");
    set_times(&other, timespec(0, 0), timespec(mtime.0, mtime.1)).unwrap();
    let before_now = now_stamp();
    set_times(
        &other,
        timespec(0, libc::UTIME_NOW),
        timespec(0, libc::UTIME_OMIT),
    )
    .unwrap();
    let other_meta = lstat(&other);
    assert!(
        atime_of(&other_meta) >= before_now,
        "atime {:?} isn't now ({before_now:?})",
        atime_of(&other_meta)
    );
    assert_eq!(mtime_of(&other_meta), mtime, "UTIME_OMIT moved mtime");
    let ctime = ctime_of(&touched);
    mount.stop();

    // Kept over a remount (looked at before anything reads the files).
    let mount = env.mount(&[]);
    let kept = lstat(&path);
    assert_eq!(atime_of(&kept), atime, "atime after a remount");
    assert_eq!(mtime_of(&kept), mtime, "mtime after a remount");
    // With write-back the upload landed after the stat above: the change time stored
    // is when it landed (the README says so); without, the stat saw the stored one.
    if mode == WriteBack::Off {
        assert_eq!(ctime_of(&kept), ctime, "ctime after a remount");
    } else {
        assert!(ctime_of(&kept) >= ctime, "ctime after a remount went back");
    }
    assert_eq!(
        ctime_of(&lstat(&path)),
        ctime_of(&kept),
        "ctime moved by a stat"
    );
    assert_eq!(kept.mode() & 0o7777, 0o640, "mode after a remount");
    assert_eq!(
        atime_of(&lstat(&other)),
        atime_of(&other_meta),
        "u.txt's atime after a remount"
    );
    assert_eq!(fs::read(&path).unwrap(), b"times");
    mount.stop();
}
in_both_modes!(ctime_follows_changes_and_utimensat_sets_both_times);

// ----------------------------------------------------------------------------------
// 5-7. The tools.
// ----------------------------------------------------------------------------------

/// `rsync -aHAX` of a tree of every kind of thing (hard links, symbolic links, a FIFO,
/// xattrs, setuid, another owner) into the mount exits 0, the copy matches the tree,
/// and a second `rsync -naHAX --itemize-changes` finds nothing to do: at once, after a
/// remount, and from a fresh machine (no index cache, chunk cache or spool).
fn rsync_ahax_round_trips_a_tree_of_every_kind(mode: WriteBack) {
    need_fuse!();
    need_tool!("rsync");
    let env = Env::with(mode);
    let tree = env.dir.path().join("tree");
    make_tree(&tree);
    let copy = env.at("docs/tree");
    let rsync = |args: &[&str]| rsync(args, &tree, &copy);
    let mount = env.mount(&[]);
    rsync(&["-aHAX"]);
    assert_eq!(
        rsync(&["-naHAX", "--itemize-changes"]),
        "",
        "a second run has work"
    );
    assert_same_tree(&tree, &copy, "at once");
    mount.stop();

    let mount = env.mount(&[]);
    assert_eq!(
        rsync(&["-naHAX", "--itemize-changes"]),
        "",
        "after a remount"
    );
    assert_same_tree(&tree, &copy, "after a remount");
    mount.stop();

    env.forget_local_state();
    let mount = env.mount(&[]);
    assert_eq!(
        rsync(&["-naHAX", "--itemize-changes"]),
        "",
        "on a fresh machine"
    );
    assert_same_tree(&tree, &copy, "on a fresh machine");
    mount.stop();
}
in_both_modes!(rsync_ahax_round_trips_a_tree_of_every_kind);

/// `tar --xattrs` of the same tree, extracted into the mount with `--same-owner -p`,
/// gives back each entry's type, mode, owner, mtime, size, content, link target,
/// hard links and xattrs, at once and after a remount.
fn tar_with_xattrs_and_owners_extracts_the_tree_alike(mode: WriteBack) {
    need_fuse!();
    need_tool!("tar");
    let env = Env::with(mode);
    let tree = env.dir.path().join("tree");
    make_tree(&tree);
    let archive = env.work().join("t.tar");
    tar_create(&tree, &archive);
    let mount = env.mount(&[]);
    let untar = env.at("docs/untar");
    tar_extract(&archive, &untar);
    assert_same_tree(&tree, &untar, "at once");
    mount.stop();

    let mount = env.mount(&[]);
    assert_same_tree(&tree, &untar, "after a remount");
    mount.stop();
}
in_both_modes!(tar_with_xattrs_and_owners_extracts_the_tree_alike);

/// `git clone` of a repository of three commits into the mount gives a repository
/// that `git fsck --full` finds whole, with the three commits and the files; a
/// fourth commit made in the mount (git writes objects by link and rename) is whole
/// too, also after a remount.
fn git_clone_into_the_mount_passes_fsck(mode: WriteBack) {
    need_fuse!();
    need_tool!("git");
    let env = Env::with(mode);
    let git = |dir: &Path, args: &[&str]| -> String {
        let output = Command::new("git")
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
            .args(["-c", "init.defaultBranch=main", "-c", "safe.directory=*"])
            .args(args)
            .current_dir(dir)
            .env("HOME", env.home())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "git {args:?} in {} failed ({}): {}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let src = env.work().join("src");
    fs::create_dir(&src).unwrap();
    git(&src, &["init", "-q"]);
    let big = random_bytes(50 * KIB, 51);
    for (i, (name, content)) in [
        ("README", b"a small repository\n".to_vec()),
        ("data.bin", big.clone()),
        ("src/lib.txt", b"one\ntwo\nthree\n".to_vec()),
    ]
    .into_iter()
    .enumerate()
    {
        let path = src.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        git(&src, &["add", "."]);
        git(&src, &["commit", "-q", "-m", &format!("commit {}", i + 1)]);
    }
    set_mode(&src.join("README"), 0o755);
    git(&src, &["commit", "-q", "-a", "--amend", "--no-edit"]);

    let mount = env.mount(&[]);
    let repo = env.at("docs/repo");
    let docs = env.at("docs");
    git(
        &docs,
        &[
            "clone",
            "-q",
            "--no-hardlinks",
            src.to_str().unwrap(),
            "repo",
        ],
    );
    git(&repo, &["fsck", "--full", "--strict"]);
    let log = git(&repo, &["log", "--oneline"]);
    assert_eq!(log.lines().count(), 3, "git log: {log}");
    assert!(fs::read(repo.join("data.bin")).unwrap() == big);
    assert_eq!(
        fs::read(repo.join("src/lib.txt")).unwrap(),
        b"one\ntwo\nthree\n"
    );
    assert_eq!(lstat(&repo.join("README")).mode() & 0o777, 0o755);
    assert_eq!(git(&repo, &["status", "--porcelain"]), "", "a dirty clone");

    // A commit made in the mount.
    fs::write(repo.join("src/lib.txt"), b"one\ntwo\nthree\nfour\n").unwrap();
    git(&repo, &["commit", "-q", "-a", "-m", "commit 4"]);
    git(&repo, &["fsck", "--full", "--strict"]);
    git(&repo, &["gc", "-q"]);
    git(&repo, &["fsck", "--full", "--strict"]);
    mount.stop();

    let mount = env.mount(&[]);
    git(&repo, &["fsck", "--full", "--strict"]);
    let log = git(&repo, &["log", "--oneline"]);
    assert_eq!(log.lines().count(), 4, "git log after a remount: {log}");
    assert_eq!(
        git(&repo, &["status", "--porcelain"]),
        "",
        "dirty after a remount"
    );
    mount.stop();
}
in_both_modes!(git_clone_into_the_mount_passes_fsck);
