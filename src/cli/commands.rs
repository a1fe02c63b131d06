//! The commands themselves.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, IsTerminal};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::output::{self, Bar};
use super::restore::{self, Restore};
use super::{CliError, Context, GetArgs, KeygenArgs, LsArgs, PutArgs, RmArgs, split_target};
use crate::crypto::{self, CryptoError, Key};
use crate::store::{Store, StoreError};
use crate::volume::{
    Entry, Listed, Node, Owner, PackBudget, PutOptions, PutSource, Skip, SmallFile, Volume,
    VolumeError,
};

/// Prints an error of one item among several.
fn report(error: &CliError) {
    eprintln!("dcloud-fs: {error}");
}

/// The result of a command over several items: each failure is reported as it happens
/// and the others still done; a command over a single item just returns its error. An
/// interruption (Ctrl-C) ends the whole command.
struct Outcome {
    single_item: bool,
    failures: usize,
    only_error: Option<CliError>,
    interrupted: bool,
}

impl Outcome {
    fn new(items: usize) -> Outcome {
        Outcome {
            single_item: items == 1,
            failures: 0,
            only_error: None,
            interrupted: false,
        }
    }

    /// Notes one item's result; returns whether to go on with the next.
    fn record(&mut self, result: Result<(), CliError>) -> bool {
        match result {
            Ok(()) => {}
            Err(e) if e.is_interruption() => self.interrupted = true,
            Err(e) => {
                self.failures += 1;
                if self.single_item && self.failures == 1 {
                    self.only_error = Some(e);
                } else {
                    // More than one failure after all (a folder's files): report each.
                    if let Some(first) = self.only_error.take() {
                        report(&first);
                    }
                    report(&e);
                }
            }
        }
        !self.interrupted
    }

    fn finish(self) -> Result<(), CliError> {
        match (self.interrupted, self.only_error, self.failures) {
            (true, _, _) => Err(VolumeError::Interrupted.into()),
            (false, Some(e), _) => Err(e),
            (false, None, 0) => Ok(()),
            (false, None, failures) => Err(CliError::Partial(failures)),
        }
    }
}

/// `a` joined with `b` as a channel path.
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The last component of a channel path.
fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn utf8_name(name: &OsStr, whole: &Path) -> Result<String, CliError> {
    name.to_str()
        .map(str::to_string)
        .ok_or_else(|| CliError::Usage(format!("{}: file names must be UTF-8", whole.display())))
}

pub async fn keygen(context: &Context, args: KeygenArgs) -> Result<(), CliError> {
    let path = context.key_path();
    if path.exists() {
        return Err(CryptoError::KeyFileExists {
            path: path.display().to_string(),
        }
        .into());
    }
    let key = if args.passphrase && args.legacy_kdf {
        Key::from_passphrase_v1(&read_passphrase()?, &args.salt)?
    } else if args.passphrase {
        let store_salt = context.store().await?.key_salt().await?;
        Key::from_passphrase(&read_passphrase()?, &args.salt, &store_salt)?
    } else {
        Key::generate()?
    };
    crypto::write_key_file(&path, &key)?;
    println!("wrote key {} to {}", key.id(), path.display());
    eprintln!(
        "Keep a copy of this file somewhere safe: without it your encrypted files can't be read."
    );
    Ok(())
}

/// A passphrase from the terminal (asked twice, not echoed) or one line of stdin.
fn read_passphrase() -> Result<String, CliError> {
    let io = |e| CliError::io("reading the passphrase", e);
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Passphrase: ").map_err(io)?;
        let second = rpassword::prompt_password("Same passphrase again: ").map_err(io)?;
        if first != second {
            return Err(CliError::Usage("the two passphrases differ".into()));
        }
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(io)?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }
}

/// `mkdir [-p]`: `existing_ok` makes an existing folder no error.
pub async fn mkdir(context: &Context, target: &str, existing_ok: bool) -> Result<(), CliError> {
    let (channel, path, _) = split_target(target)?;
    let store = context.store().await?;
    if path.is_empty() {
        return match store.create_channel(&channel).await {
            Ok(_) => Ok(()),
            Err(StoreError::ChannelExists(_)) if existing_ok => Ok(()),
            Err(StoreError::ChannelExists(name)) => Err(VolumeError::AlreadyExists { name }.into()),
            Err(e) => Err(e.into()),
        };
    }
    let volume = context
        .volume(&store, &context.key().await?, &channel)
        .await?;
    let is_dir = matches!(volume.index().node(&path), Some(Node::Dir(_)));
    if is_dir && existing_ok {
        return Ok(());
    }
    volume.mkdir(&path, now_ns(), 0o755).await?;
    Ok(())
}

pub async fn channels(context: &Context) -> Result<(), CliError> {
    let store = context.store().await?;
    let key = context.key().await?;
    let mut channels = store.channels().await?;
    channels.sort_by(|a, b| a.name.cmp(&b.name));
    println!("{:<30} {:>8} {:>12}", "CHANNEL", "FILES", "SIZE");
    for channel in channels {
        let name = channel.name.clone();
        let volume = Volume::open(
            store.clone(),
            channel,
            key.clone(),
            context.volume_config()?,
        )
        .await?;
        let (files, bytes) = volume.index().totals();
        println!("{name:<30} {files:>8} {:>12}", output::human_size(bytes));
        warn_hidden(&volume);
    }
    Ok(())
}

/// Tells, on stderr, about records of this channel the loaded key can't read.
pub(super) fn warn_hidden(volume: &Volume) {
    let index = volume.index();
    let (mut wrong_key, mut no_key, mut other) = (None, 0, 0);
    let (mut wrong_count, mut unauthenticated) = (0, 0);
    for skip in index.skipped().values() {
        match skip {
            Skip::WrongKey(id) => {
                wrong_key = Some(*id);
                wrong_count += 1;
            }
            Skip::NoKey(_) => no_key += 1,
            Skip::Unauthenticated(_) => unauthenticated += 1,
            Skip::NewerVersion(_) | Skip::Damaged(_) => other += 1,
        }
    }
    let channel = &volume.channel().name;
    if let Some(id) = wrong_key {
        eprintln!(
            "note: {wrong_count} record(s) in '{channel}' were written with another key (key id {id}); their files are not shown"
        );
    }
    if no_key > 0 {
        eprintln!(
            "note: {no_key} record(s) in '{channel}' are encrypted and no key is loaded; their files are not shown"
        );
    }
    if unauthenticated > 0 {
        eprintln!(
            "note: {unauthenticated} record(s) in '{channel}' are not authenticated by your key (written without it, or copies or forgeries); their changes are not shown (run with -v for details)"
        );
    }
    if other > 0 {
        eprintln!(
            "note: {other} record(s) in '{channel}' are damaged or from a newer dcloud-fs (run with -v for details)"
        );
    }
}

pub async fn put(context: &Context, args: PutArgs) -> Result<(), CliError> {
    let (dest, sources) = args.paths.split_last().expect("clap requires two paths");
    let dest = dest
        .to_str()
        .ok_or_else(|| CliError::Usage("DEST must be CHANNEL[/PATH] in UTF-8".into()))?;
    let (channel, dest_path, trailing_slash) = split_target(dest)?;
    let store = context.store().await?;
    let volume = context
        .volume(&store, &context.key().await?, &channel)
        .await?;
    let dest_is_dir = matches!(volume.index().node(&dest_path), Some(Node::Dir(_)));
    let into = dest_path.is_empty() || trailing_slash || sources.len() > 1 || dest_is_dir;
    let mut uploader = TreeUploader {
        context,
        volume: &volume,
        recursive: args.recursive,
        plain: args.plain,
        dereference: args.dereference,
        small_limit: volume.small_file_limit(!args.plain),
        pending: Vec::new(),
        budget: volume.pack_limits().budget(),
        deferred: Vec::new(),
    };
    let mut outcome = Outcome::new(sources.len());
    for source in sources {
        let source = Path::new(source);
        let target = match (into, source.file_name()) {
            (false, _) => Ok(dest_path.clone()),
            (true, Some(name)) => utf8_name(name, source).map(|name| join(&dest_path, &name)),
            (true, None) => Err(CliError::Usage(format!(
                "{}: has no file name",
                source.display()
            ))),
        };
        let done = match target {
            Ok(target) => uploader.put_path(source, &target).await,
            Err(e) => Err(e),
        };
        if !outcome.record(done) {
            break;
        }
    }
    uploader.flush().await;
    for error in uploader.deferred.drain(..) {
        if !outcome.record(Err(error)) {
            break;
        }
    }
    outcome.finish()
}

/// Uploads files and folder trees into one volume. Small files wait in `pending` and
/// go up packed, a message's worth at a time ([`Volume::put_small`]); larger ones
/// stream one by one.
struct TreeUploader<'a> {
    context: &'a Context,
    volume: &'a Volume,
    recursive: bool,
    plain: bool,
    /// Follow symbolic links in folders instead of storing them.
    dereference: bool,
    /// Files up to this size are batched.
    small_limit: u64,
    /// Small files waiting for their batch: (local path, channel path).
    pending: Vec<(PathBuf, String)>,
    /// What `pending` fills of one message.
    budget: PackBudget,
    /// Failures of small files, known only when their batch is stored.
    deferred: Vec<CliError>,
}

impl TreeUploader<'_> {
    async fn put_path(&mut self, source: &Path, target: &str) -> Result<(), CliError> {
        let metadata =
            fs::metadata(source).map_err(|e| CliError::io(source.display().to_string(), e))?;
        if metadata.is_dir() {
            if !self.recursive {
                return Err(CliError::Usage(format!(
                    "{} is a folder; use -r to copy it with everything in it",
                    source.display()
                )));
            }
            return self.put_tree(source, target).await;
        }
        if !metadata.is_file() {
            return Err(CliError::Usage(format!(
                "{}: not a regular file",
                source.display()
            )));
        }
        self.put_file(source, target).await
    }

    /// Copies a folder tree; failures of single files are reported and counted, and
    /// the others still copied.
    async fn put_tree(&mut self, root: &Path, target: &str) -> Result<(), CliError> {
        let mut outcome = Outcome::new(usize::MAX);
        let mut pending = vec![(root.to_path_buf(), target.to_string())];
        while let Some((dir, target)) = pending.pop() {
            let listed = fs::read_dir(&dir)
                .and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
                .map_err(|e| CliError::io(dir.display().to_string(), e));
            let mut entries = match listed {
                Ok(entries) => entries,
                Err(e) => {
                    if outcome.record(Err(e)) {
                        continue;
                    }
                    break;
                }
            };
            entries.sort_by_key(|e| e.file_name());
            if entries.is_empty() {
                let exists = self.volume.index().node(&target).is_some();
                if !exists {
                    let mode = fs::metadata(&dir).map(|m| m.mode()).unwrap_or(0o755);
                    let mtime = fs::metadata(&dir)
                        .map(|m| mtime_ns(&m))
                        .unwrap_or_else(|_| now_ns());
                    let made = self.volume.mkdir(&target, mtime, mode).await;
                    if !outcome.record(made.map_err(CliError::from)) {
                        break;
                    }
                }
                continue;
            }
            for entry in entries.into_iter().rev() {
                let path = entry.path();
                let result = match (entry.file_type(), utf8_name(&entry.file_name(), &path)) {
                    (_, Err(e)) => Err(e),
                    (Err(e), _) => Err(CliError::io(path.display().to_string(), e)),
                    (Ok(kind), Ok(name)) if kind.is_dir() => {
                        pending.push((path.clone(), join(&target, &name)));
                        Ok(())
                    }
                    (Ok(kind), Ok(name)) if kind.is_file() => {
                        self.put_file(&path, &join(&target, &name)).await
                    }
                    (Ok(kind), Ok(name)) if kind.is_symlink() && self.dereference => {
                        match fs::metadata(&path) {
                            Ok(meta) if meta.is_dir() => {
                                pending.push((path.clone(), join(&target, &name)));
                                Ok(())
                            }
                            Ok(meta) if meta.is_file() => {
                                self.put_file(&path, &join(&target, &name)).await
                            }
                            Ok(_) => Err(CliError::Usage(format!(
                                "{}: not a regular file",
                                path.display()
                            ))),
                            Err(e) => Err(CliError::io(path.display().to_string(), e)),
                        }
                    }
                    (Ok(kind), Ok(name)) if kind.is_symlink() => {
                        self.put_link(&path, &join(&target, &name)).await
                    }
                    (Ok(kind), Ok(name)) if special_kind(kind).is_some() => {
                        self.put_special(&path, &join(&target, &name)).await
                    }
                    (Ok(_), Ok(_)) => Err(CliError::Usage(format!(
                        "{}: not a regular file",
                        path.display()
                    ))),
                };
                if !outcome.record(result) {
                    return outcome.finish();
                }
            }
        }
        outcome.finish()
    }

    /// Uploads one file, or queues it for a batch if it is small.
    /// Stores the symbolic link `source` as a link at `target` (what it points to is
    /// not read), replacing a file there.
    async fn put_link(&mut self, source: &Path, target: &str) -> Result<(), CliError> {
        let shown = source.display().to_string();
        let link = fs::read_link(source).map_err(|e| CliError::io(&shown, e))?;
        let link = link
            .to_str()
            .ok_or_else(|| CliError::Usage(format!("{shown}: the link's target is not UTF-8")))?;
        let mtime = fs::symlink_metadata(source)
            .map(|m| mtime_ns(&m))
            .unwrap_or_else(|_| now_ns());
        self.volume
            .symlink(target, link, mtime, Owner::default(), true)
            .await?;
        Ok(())
    }

    /// Stores the FIFO, socket or device node `source` as a special file at `target`
    /// (its type, device number, mode and time; nothing is read from it).
    async fn put_special(&mut self, source: &Path, target: &str) -> Result<(), CliError> {
        use std::os::unix::fs::MetadataExt;
        let shown = source.display().to_string();
        let meta = fs::symlink_metadata(source).map_err(|e| CliError::io(&shown, e))?;
        let kind = special_kind(meta.file_type())
            .ok_or_else(|| CliError::Usage(format!("{shown}: not a special file")))?;
        let rdev = match kind {
            crate::format::SpecialKind::Char | crate::format::SpecialKind::Block => meta.rdev(),
            _ => 0,
        };
        let special = crate::format::Special { kind, rdev };
        self.volume
            .mknod(
                target,
                special,
                meta.mode(),
                mtime_ns(&meta),
                Owner::default(),
                true,
            )
            .await?;
        Ok(())
    }

    async fn put_file(&mut self, source: &Path, target: &str) -> Result<(), CliError> {
        let shown = source.display().to_string();
        let file = fs::File::open(source).map_err(|e| CliError::io(&shown, e))?;
        let metadata = file.metadata().map_err(|e| CliError::io(&shown, e))?;
        if metadata.len() <= self.small_limit {
            if !self.budget.take(metadata.len(), !self.plain) {
                self.flush().await;
                self.budget.take(metadata.len(), !self.plain);
            }
            self.pending
                .push((source.to_path_buf(), target.to_string()));
            return Ok(());
        }
        self.put_large(file, &metadata, &shown, target).await
    }

    /// Streams one file up, with a progress bar.
    async fn put_large(
        &self,
        file: fs::File,
        metadata: &fs::Metadata,
        shown: &str,
        target: &str,
    ) -> Result<(), CliError> {
        let options = self.options(metadata);
        let bar = Bar::new(
            metadata.len(),
            &self.volume.display(target),
            self.context.global.quiet,
        );
        let result = self
            .volume
            .put(
                target,
                put_source(file, metadata),
                shown,
                options,
                bar.progress(),
            )
            .await;
        bar.finish();
        result?;
        log::info!("put {shown} -> {}", self.volume.display(target));
        Ok(())
    }

    fn options(&self, metadata: &fs::Metadata) -> PutOptions {
        PutOptions {
            mtime_ns: mtime_ns(metadata),
            mode: metadata.permissions().mode() & 0o7777,
            encrypted: !self.plain,
            owner: None,
            atime_ns: None,
        }
    }

    /// Stores the queued small files as one message; failures go to `deferred`.
    async fn flush(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        self.budget = self.volume.pack_limits().budget();
        let mut files = Vec::with_capacity(batch.len());
        for (source, target) in &batch {
            let shown = source.display().to_string();
            let read = fs::read(source).and_then(|data| Ok((data, fs::metadata(source)?)));
            let queued = match read {
                // A file that grew since it was queued goes on its own.
                Ok((data, metadata)) if data.len() as u64 > self.small_limit => {
                    drop(data);
                    match fs::File::open(source) {
                        Ok(file) => self.put_large(file, &metadata, &shown, target).await,
                        Err(e) => Err(CliError::io(&shown, e)),
                    }
                }
                Ok((data, metadata)) => {
                    let options = self.options(&metadata);
                    // A file that can't go where it should fails alone, not its batch.
                    self.volume
                        .check_put(target, options)
                        .map_err(CliError::from)
                        .map(|()| {
                            files.push(SmallFile {
                                path: target.clone(),
                                data,
                                options,
                            })
                        })
                }
                Err(e) => Err(CliError::io(shown, e)),
            };
            if let Err(e) = queued {
                self.deferred.push(e);
            }
        }
        if files.is_empty() {
            return;
        }
        let names: Vec<String> = files.iter().map(|f| self.volume.display(&f.path)).collect();
        match self.volume.put_small(files).await {
            Ok(()) => log::info!("put {} small file(s): {}", names.len(), names.join(", ")),
            Err(source) => self.deferred.push(CliError::Batch { names, source }),
        }
    }
}

fn mtime_ns(metadata: &fs::Metadata) -> i64 {
    metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec()
}

pub async fn get(context: &Context, args: GetArgs) -> Result<(), CliError> {
    let (channel, path, _) = split_target(&args.source)?;
    let store = context.store().await?;
    let volume = context
        .volume(&store, &context.key().await?, &channel)
        .await?;
    let (is_dir, link, special) = match volume.index().node(&path) {
        None => (None, None, false),
        Some(Node::File(file)) => (Some(false), file.symlink.clone(), file.special.is_some()),
        Some(Node::Dir(_)) => (Some(true), None, false),
    };
    let dest = PathBuf::from(&args.dest);
    match is_dir {
        None => Err(volume.not_found(&path).into()),
        Some(false) if link.is_some() && args.dest == "-" => Err(CliError::Usage(format!(
            "{} is a symbolic link (to {}): it has no bytes to write",
            volume.display(&path),
            link.unwrap_or_default()
        ))),
        Some(false) if special && args.dest == "-" => Err(CliError::Usage(format!(
            "{} is a special file (a FIFO, socket or device): it has no bytes to write",
            volume.display(&path)
        ))),
        Some(false) if args.dest == "-" => {
            let mut stdout = tokio::io::stdout();
            volume.get(&path, &mut stdout, None).await?;
            Ok(())
        }
        Some(false) => {
            let target = if dest.is_dir() {
                dest.join(base_name(&path))
            } else {
                dest
            };
            let restore = Restore::new(args.owners, args.xattrs);
            download_file(context, &volume, &path, &target, restore).await
        }
        Some(true) if !args.recursive => Err(VolumeError::IsADirectory {
            name: volume.display(&path),
            hint: " (use -r to copy it with everything in it)",
        }
        .into()),
        Some(true) if args.dest == "-" => Err(CliError::Usage(
            "a folder can't be written to stdout".into(),
        )),
        Some(true) => {
            let name = if path.is_empty() {
                channel.as_str()
            } else {
                base_name(&path)
            };
            let root = if dest.is_dir() { dest.join(name) } else { dest };
            let restore = Restore::new(args.owners, args.xattrs);
            download_tree(context, &volume, &path, &root, restore).await
        }
    }
}

/// Downloads every file and folder below `path` into the local folder `root`.
async fn download_tree(
    context: &Context,
    volume: &Volume,
    path: &str,
    root: &Path,
    restore: Restore,
) -> Result<(), CliError> {
    fs::create_dir_all(root).map_err(|e| CliError::io(root.display().to_string(), e))?;
    let skip = if path.is_empty() { 0 } else { path.len() + 1 };
    let entries: Vec<(String, bool)> = volume
        .index()
        .live_under(path)
        .map(|(p, entry)| (p[skip..].to_string(), matches!(entry, Entry::Dir(_))))
        .collect();
    // Links are made as links (what they point to isn't followed).
    let mut outcome = Outcome::new(usize::MAX);
    for (relative, is_dir) in entries {
        let target = root.join(&relative);
        let result = if is_dir {
            fs::create_dir_all(&target).map_err(|e| CliError::io(target.display().to_string(), e))
        } else {
            let parent = target.parent().unwrap_or(root);
            match fs::create_dir_all(parent) {
                Ok(()) => {
                    let source = join(path, &relative);
                    download_file(context, volume, &source, &target, restore).await
                }
                Err(e) => Err(CliError::io(parent.display().to_string(), e)),
            }
        };
        if !outcome.record(result) {
            break;
        }
    }
    // The folders recorded, deepest first (the one copied last), once what they hold
    // is written.
    let folders: Vec<(String, crate::volume::DirEntry)> = {
        let index = volume.index();
        let top = match index.entry(path) {
            Some(Entry::Dir(dir)) => Some((String::new(), dir.clone())),
            _ => None,
        };
        (top.into_iter())
            .chain(index.live_under(path).filter_map(|(p, entry)| match entry {
                Entry::Dir(dir) => Some((p[skip..].to_string(), dir.clone())),
                Entry::File(_) => None,
            }))
            .collect()
    };
    for (relative, dir) in folders.iter().rev() {
        let target = root.join(relative);
        let stored = restore::Stored {
            meta: dir.meta(),
            mode: Some(dir.mode),
            mtime_ns: dir.mtime_ns,
        };
        let result = restore::restore(&target, &stored, restore)
            .map_err(|e| CliError::io(target.display().to_string(), e));
        if !outcome.record(result) {
            break;
        }
    }
    outcome.finish()
}

/// Downloads one file to `target` through a temporary file beside it, so that a failed
/// download never leaves a partial file (or spoils an existing one). A symbolic link is
/// made as a link, by the same rename.
async fn download_file(
    context: &Context,
    volume: &Volume,
    path: &str,
    target: &Path,
    restore: Restore,
) -> Result<(), CliError> {
    let shown = target.display().to_string();
    let entry = volume.file(path)?;
    let dir = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| CliError::Usage(format!("{shown}: not a file name")))?;
    let temporary = dir.join(format!(
        ".{}.dcfs-partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = match (&entry.symlink, entry.special) {
        (Some(link), _) => {
            std::os::unix::fs::symlink(link, &temporary).map_err(|e| CliError::io(&shown, e))
        }
        (None, Some(special)) => {
            make_special(&temporary, special, entry.mode).map_err(|e| CliError::io(&shown, e))
        }
        (None, None) => download_into(context, volume, path, entry.size, &temporary, &shown).await,
    };
    let stored = restore::Stored {
        meta: entry.meta(),
        mode: entry.symlink.is_none().then_some(entry.mode),
        mtime_ns: entry.mtime_ns,
    };
    let result = result
        .and_then(|()| {
            restore::restore(&temporary, &stored, restore).map_err(|e| CliError::io(&shown, e))
        })
        .and_then(|()| fs::rename(&temporary, target).map_err(|e| CliError::io(&shown, e)));
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Downloads the file (of `size` bytes) into `temporary` (its mode and times are
/// [`restore`]'s, after).
async fn download_into(
    context: &Context,
    volume: &Volume,
    path: &str,
    size: u64,
    temporary: &Path,
    shown: &str,
) -> Result<(), CliError> {
    let file = Arc::new(fs::File::create(temporary).map_err(|e| CliError::io(shown, e))?);
    let bar = Bar::new(size, &volume.display(path), context.global.quiet);
    let result = volume.get_to_file(path, file.clone(), bar.progress()).await;
    bar.finish();
    result?;
    Ok(())
}

pub async fn ls(context: &Context, args: LsArgs) -> Result<(), CliError> {
    let Some(target) = args.target else {
        if args.long {
            return channels(context).await;
        }
        let mut names: Vec<String> = context
            .store()
            .await?
            .channels()
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect();
        names.sort();
        for name in names {
            println!("{name}");
        }
        return Ok(());
    };
    let (channel, path, _) = split_target(&target)?;
    let store = context.store().await?;
    let volume = context
        .volume(&store, &context.key().await?, &channel)
        .await?;
    warn_hidden(&volume);
    let index = volume.index();
    let listing: Vec<Listed<'_>> = match index.node(&path) {
        None => {
            drop(index);
            return Err(volume.not_found(&path).into());
        }
        Some(Node::File(file)) => vec![Listed {
            name: path.clone(),
            node: Node::File(file),
        }],
        Some(Node::Dir(_)) => index.list(&path).unwrap_or_default(),
    };
    for item in listing {
        println!("{}", listing_line(&item, args.long));
    }
    Ok(())
}

/// What kind of special file a local file is, if it is one.
fn special_kind(kind: fs::FileType) -> Option<crate::format::SpecialKind> {
    use crate::format::SpecialKind;
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        Some(SpecialKind::Fifo)
    } else if kind.is_socket() {
        Some(SpecialKind::Socket)
    } else if kind.is_char_device() {
        Some(SpecialKind::Char)
    } else if kind.is_block_device() {
        Some(SpecialKind::Block)
    } else {
        None
    }
}

/// Makes the special file `special` at `path` with `mode` (a device needs root).
fn make_special(path: &Path, special: crate::format::Special, mode: u32) -> std::io::Result<()> {
    use crate::format::SpecialKind;
    use std::os::unix::ffi::OsStrExt;
    let kind = match special.kind {
        SpecialKind::Fifo => libc::S_IFIFO,
        SpecialKind::Socket => libc::S_IFSOCK,
        SpecialKind::Char => libc::S_IFCHR,
        SpecialKind::Block => libc::S_IFBLK,
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path that lives through the call.
    let made = unsafe {
        libc::mknod(
            c_path.as_ptr(),
            kind | (mode & 0o7777) as libc::mode_t,
            special.rdev as libc::dev_t,
        )
    };
    if made == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The type letter of a special file in `ls -l`, and what stands in its size column
/// (a device's `major, minor`).
fn special_columns(special: Option<crate::format::Special>) -> (char, String) {
    use crate::format::SpecialKind;
    let Some(special) = special else {
        return ('-', String::new());
    };
    let device = || {
        let rdev = special.rdev as libc::dev_t;
        format!("{}, {}", libc::major(rdev), libc::minor(rdev))
    };
    match special.kind {
        SpecialKind::Fifo => ('p', "0".into()),
        SpecialKind::Socket => ('s', "0".into()),
        SpecialKind::Char => ('c', device()),
        SpecialKind::Block => ('b', device()),
    }
}

fn listing_line(item: &Listed<'_>, long: bool) -> String {
    let kind = |file: &crate::volume::FileEntry| if file.encrypted { "enc" } else { "plain" };
    match (&item.node, long) {
        (Node::File(_), false) => item.name.clone(),
        (Node::File(file), true) if file.special.is_some() => {
            let (letter, size) = special_columns(file.special);
            format!(
                "{letter}{} {} {:<5} {:>14} {} {}",
                &output::mode_string(file.mode, false)[1..],
                output::owner_columns(file.meta()),
                kind(file),
                size,
                output::local_time(file.mtime_ns),
                item.name
            )
        }
        (Node::File(file), true) if file.symlink.is_some() => format!(
            "l{} {} {:<5} {:>14} {} {} -> {}",
            &output::mode_string(0o777, false)[1..],
            output::owner_columns(file.meta()),
            kind(file),
            file.symlink.as_ref().map_or(0, String::len),
            output::local_time(file.mtime_ns),
            item.name,
            file.symlink.as_deref().unwrap_or_default()
        ),
        (Node::Dir(_), false) => format!("{}/", item.name),
        (Node::File(file), true) => format!(
            "{} {} {:<5} {:>14} {} {}",
            output::mode_string(file.mode, false),
            output::owner_columns(file.meta()),
            kind(file),
            file.size,
            output::local_time(file.mtime_ns),
            item.name
        ),
        (Node::Dir(dir), true) => {
            let (mode, mtime) = dir.map_or((0o755, None), |d| (d.mode, Some(d.mtime_ns)));
            let owner = dir.map_or_else(
                || output::owner_columns(&crate::format::Meta::default()),
                |d| output::owner_columns(d.meta()),
            );
            format!(
                "{} {owner} {:<5} {:>14} {} {}/",
                output::mode_string(mode, true),
                "",
                "-",
                mtime.map_or_else(|| " ".repeat(16), output::local_time),
                item.name
            )
        }
    }
}

pub async fn rm(context: &Context, args: RmArgs) -> Result<(), CliError> {
    let store = context.store().await?;
    let key = context.key().await?;
    let mut volumes: HashMap<String, Arc<Volume>> = HashMap::new();
    let mut outcome = Outcome::new(args.targets.len());
    for target in &args.targets {
        let result = remove_one(context, &store, &key, &mut volumes, target, args.recursive).await;
        if !outcome.record(result) {
            break;
        }
    }
    outcome.finish()
}

async fn remove_one(
    context: &Context,
    store: &Arc<dyn Store>,
    key: &Option<Key>,
    volumes: &mut HashMap<String, Arc<Volume>>,
    target: &str,
    recursive: bool,
) -> Result<(), CliError> {
    let (channel, path, _) = split_target(target)?;
    if path.is_empty() && !recursive {
        return Err(CliError::Usage(format!(
            "'{channel}' is a channel; use -r to delete every file in it"
        )));
    }
    if !volumes.contains_key(&channel) {
        let volume = context.volume(store, key, &channel).await?;
        volumes.insert(channel.clone(), volume);
    }
    volumes[&channel].remove(&path, recursive).await?;
    Ok(())
}

pub async fn mv(context: &Context, source: &str, dest: &str) -> Result<(), CliError> {
    let (from_channel, from_path, _) = split_target(source)?;
    if from_path.is_empty() {
        return Err(CliError::Usage(
            "moving a whole channel is not supported; move the files in it (CHANNEL/PATH)".into(),
        ));
    }
    let (to_channel, to_path, trailing_slash) = split_target(dest)?;
    let store = context.store().await?;
    let key = context.key().await?;
    let from = context.volume(&store, &key, &from_channel).await?;
    let to = context.volume(&store, &key, &to_channel).await?;
    let into = to_path.is_empty()
        || trailing_slash
        || matches!(to.index().node(&to_path), Some(Node::Dir(_)));
    let target = if into {
        join(&to_path, base_name(&from_path))
    } else {
        to_path
    };
    // Within a channel a rename; across channels a move. Neither uploads anything.
    from.move_to(&from_path, &to, &target).await?;
    Ok(())
}

/// A regular file can be read again if the upload must be redone; anything else (a
/// pipe, a device) is read once.
fn put_source(file: fs::File, metadata: &fs::Metadata) -> PutSource {
    if metadata.is_file() {
        PutSource::File(file)
    } else {
        PutSource::Stream(Box::new(file))
    }
}

/// `dcloud-fs config`: the config file, then every setting, its value and its source.
pub fn show_config(context: &Context) -> Result<(), CliError> {
    let (path, named) = context.config_path();
    let state = if path.exists() {
        "read"
    } else if named {
        "missing"
    } else {
        "none there; every key at its default or from flags and environment"
    };
    println!("config file: {} ({state})", path.display());
    println!("store: {}", context.store_summary());
    println!("precedence: flag > environment > config file > default");
    println!();
    let rows = context.settings_table()?;
    let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .min(60);
    println!(
        "{:<name_width$}  {:<value_width$}  FROM",
        "SETTING", "VALUE"
    );
    for (name, value, source) in rows {
        println!("{name:<name_width$}  {value:<value_width$}  {source}");
    }
    Ok(())
}
