//! The local store: a directory on disk that behaves like a Discord guild.
//!
//! It is the embedded default (try dcloud-fs without a bot) and the fast store of the test
//! suite, so it enforces Discord's limits exactly as [`super::Store`] describes them: a
//! message over the per-file, per-request or attachment-count limit is refused with
//! [`StoreError::TooLarge`] and nothing of it is stored.
//!
//! ## Layout
//!
//! ```text
//! ROOT/guild.json                         {"format":1,"user_id":…,"limits":{…}}
//! ROOT/ids.lock                           last snowflake handed out (guarded by flock)
//! ROOT/salt                               the store's own salt for passphrase keys (hex)
//! ROOT/channels/<channel id>/channel.json {"id":…,"name":"…"}
//! ROOT/channels/<channel id>/messages/<message id>.json
//! ROOT/channels/<channel id>/attachments/<attachment id>
//! ROOT/channels/<channel id>/staging/<pid>-…     (files of a post in progress)
//! ROOT/channels/<channel id>/pins/<message id>    (a pin: the Unix ms it was made)
//! ```
//!
//! The limits live in `guild.json` and may be edited there (to emulate a boosted guild,
//! or tiny limits for tests).
//!
//! ## Concurrency and crash safety
//!
//! Several processes may use one store at once (the CLI beside a mount). Ids come from
//! one counter in `ids.lock`, read and bumped under an exclusive `flock`, so they are
//! unique and increase. A post writes and fsyncs its attachments into `staging/` first,
//! then, while holding the lock, takes the message id, moves the attachments into place
//! and renames the message file into place: a message becomes visible atomically,
//! complete with its attachments, and messages of a channel become visible in id order,
//! so a reader paging with `after` never misses one. A crash mid-post leaves only
//! staged files of a dead process, which the next open sweeps away; never a message
//! with missing parts. Deleting a message removes its
//! message file first, then its attachments and its pin.
//!
//! ## Reads
//!
//! A ranged read is one `pread` of the attachment file, with three cases: a short one
//! (a random read through the mount) without the kernel's read-ahead; a long one whose
//! bytes are in the page cache, copied from there; a long one that must come from the
//! disk, with `O_DIRECT` into an aligned part of the caller's buffer
//! ([`Store::fetch_range_owned`]), which spares a third of a cold read's CPU (page
//! cache pages allocated, filled, then copied out). File systems without direct reads
//! (tmpfs) take the usual path.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    Attachment, Channel, Fetched, HistoryCursor, Id, Limits, MAX_HISTORY_PAGE, Message, NewMessage,
    Store, StoreError, StoreResult, snowflake_at_ms, valid_attachment_filename,
};

/// Version of the local store's own layout.
const LAYOUT_VERSION: u32 = 1;
/// The user id that the local store says we post as.
pub const LOCAL_USER_ID: Id = 1_000_000_000_000_001;
/// Longest channel name (Discord's limit).
const MAX_CHANNEL_NAME_CHARS: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GuildFile {
    format: u32,
    user_id: Id,
    limits: Limits,
}

/// A guild in a local directory. Cheap to clone.
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    guild: GuildFile,
}

impl LocalStore {
    /// Opens the store at `root`, creating it with `limits` if it doesn't exist yet. An
    /// existing store keeps the limits in its `guild.json`.
    pub fn open_or_create(root: &Path, limits: Limits) -> StoreResult<LocalStore> {
        let guild_path = root.join("guild.json");
        if !guild_path.exists() {
            create_layout(root, limits)?;
        }
        let store = Self::open(root)?;
        // A guild.json written by hand (to choose limits) is enough to start a store.
        let channels = root.join("channels");
        fs::create_dir_all(&channels)
            .map_err(|e| StoreError::io(format!("creating {}", channels.display()), e))?;
        store.inner.sweep_crash_debris()?;
        Ok(store)
    }

    /// Opens an existing store.
    pub fn open(root: &Path) -> StoreResult<LocalStore> {
        let guild_path = root.join("guild.json");
        let text = fs::read_to_string(&guild_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::NotSetUp(format!("{} is not a dcloud-fs local store", root.display()))
            } else {
                StoreError::io(format!("reading {}", guild_path.display()), e)
            }
        })?;
        let guild: GuildFile = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", guild_path.display())))?;
        if guild.format != LAYOUT_VERSION {
            return Err(StoreError::Corrupt(format!(
                "{} has layout version {}, this dcloud-fs reads version {LAYOUT_VERSION}",
                guild_path.display(),
                guild.format
            )));
        }
        Ok(LocalStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                guild,
            }),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Posts a message as another user, as someone else in a Discord channel would. For
    /// tests: such messages must never show up as files.
    pub async fn post_as(
        &self,
        author: Id,
        channel: Id,
        message: NewMessage,
    ) -> StoreResult<Message> {
        let inner = self.inner.clone();
        blocking(move || inner.post(author, channel, message)).await
    }

    /// Where an attachment's bytes are kept (tests use it to damage a chunk on purpose).
    pub fn attachment_path(&self, channel: Id, attachment: Id) -> PathBuf {
        self.inner.attachment_path(channel, attachment)
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T, F>(work: F) -> StoreResult<T>
where
    F: FnOnce() -> StoreResult<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::io("local store worker", std::io::Error::other(e)))?
}

impl Inner {
    /// The store's salt (`ROOT/salt`), made on first use: random, written once (the
    /// first process to link it in wins, and every other reads that one).
    fn salt(&self) -> StoreResult<String> {
        let path = self.root.join("salt");
        let read = |path: &Path| {
            fs::read_to_string(path)
                .map(|text| text.trim().to_string())
                .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))
        };
        if path.exists() {
            return read(&path);
        }
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| StoreError::io("making a salt", std::io::Error::other(e.to_string())))?;
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = self.root.join(format!(".salt.{}", std::process::id()));
        write_synced(&tmp, text.as_bytes())?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => sync_dir(&self.root).map(|()| text),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
            Err(e) => Err(StoreError::io(format!("creating {}", path.display()), e)),
        }
    }
}

fn create_layout(root: &Path, limits: Limits) -> StoreResult<()> {
    let io = |what: &str, e| StoreError::io(format!("{what} {}", root.display()), e);
    fs::create_dir_all(root.join("channels")).map_err(|e| io("creating", e))?;
    let guild = GuildFile {
        format: LAYOUT_VERSION,
        user_id: LOCAL_USER_ID,
        limits,
    };
    let text = serde_json::to_string_pretty(&guild).expect("guild file serializes");
    // Another process may create the store at the same moment: first one wins.
    let tmp = root.join(format!(".guild.json.{}", std::process::id()));
    write_synced(&tmp, text.as_bytes())?;
    match fs::hard_link(&tmp, root.join("guild.json")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("creating guild.json in", e)),
    }
    let _ = fs::remove_file(&tmp);
    Ok(())
}

/// Whether a process with this id exists.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Writes a file and fsyncs it.
fn write_synced(path: &Path, data: &[u8]) -> StoreResult<()> {
    let mut file = File::create(path)
        .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))
}

/// Fsyncs a directory so that renames and creations in it survive a crash.
fn sync_dir(path: &Path) -> StoreResult<()> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| StoreError::io(format!("syncing {}", path.display()), e))
}

fn validate_channel_name(name: &str) -> StoreResult<()> {
    let bad = |why: &str| Err(StoreError::Invalid(format!("channel name '{name}' {why}")));
    if name.is_empty() || name == "." || name == ".." {
        return bad("is not a usable name");
    }
    if name.chars().count() > MAX_CHANNEL_NAME_CHARS {
        return bad("is longer than 100 characters");
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return bad("contains '/' or a control character");
    }
    Ok(())
}

/// The exclusive lock on the id counter, held while it lives.
struct IdLock {
    file: File,
}

impl IdLock {
    fn acquire(root: &Path) -> StoreResult<IdLock> {
        let path = root.join("ids.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        // SAFETY: flock on a file descriptor we own; it is released when `file` closes.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(StoreError::io(
                format!("locking {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(IdLock { file })
    }

    /// Hands out `count` new snowflakes, each larger than every earlier one.
    fn next_ids(&mut self, count: usize) -> StoreResult<Vec<Id>> {
        let io = |e| StoreError::io("updating ids.lock", e);
        let mut text = String::new();
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.read_to_string(&mut text).map_err(io)?;
        let last: Id = text.trim().parse().unwrap_or(0);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let first = (last + 1).max(snowflake_at_ms(now_ms));
        let ids: Vec<Id> = (0..count as u64).map(|i| first + i).collect();
        let new_last = ids.last().copied().unwrap_or(last);
        self.file.set_len(0).map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file
            .write_all(new_last.to_string().as_bytes())
            .map_err(io)?;
        Ok(ids)
    }
}

impl Inner {
    fn channels_dir(&self) -> PathBuf {
        self.root.join("channels")
    }

    fn channel_dir(&self, channel: Id) -> PathBuf {
        self.channels_dir().join(channel.to_string())
    }

    fn messages_dir(&self, channel: Id) -> PathBuf {
        self.channel_dir(channel).join("messages")
    }

    fn message_path(&self, channel: Id, message: Id) -> PathBuf {
        self.messages_dir(channel).join(format!("{message}.json"))
    }

    fn attachment_path(&self, channel: Id, attachment: Id) -> PathBuf {
        self.channel_dir(channel)
            .join("attachments")
            .join(attachment.to_string())
    }

    fn check_channel(&self, channel: Id) -> StoreResult<()> {
        if self.channel_dir(channel).join("channel.json").is_file() {
            Ok(())
        } else {
            Err(StoreError::NoSuchChannel(channel))
        }
    }

    fn channels(&self) -> StoreResult<Vec<Channel>> {
        let dir = self.channels_dir();
        let entries = fs::read_dir(&dir)
            .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        let mut channels = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
            let path = entry.path().join("channel.json");
            let Ok(text) = fs::read_to_string(&path) else {
                continue; // a channel being created or deleted right now
            };
            let channel: Channel = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
            channels.push(channel);
        }
        Ok(channels)
    }

    fn create_channel(&self, name: &str) -> StoreResult<Channel> {
        validate_channel_name(name)?;
        let mut lock = IdLock::acquire(&self.root)?;
        if self.channels()?.iter().any(|c| c.name == name) {
            return Err(StoreError::ChannelExists(name.to_string()));
        }
        let id = lock.next_ids(1)?[0];
        let channel = Channel {
            id,
            name: name.to_string(),
        };
        let staging = self.channels_dir().join(format!(".new-{id}"));
        let io = |e| StoreError::io(format!("creating channel in {}", staging.display()), e);
        fs::create_dir_all(staging.join("messages")).map_err(io)?;
        fs::create_dir_all(staging.join("attachments")).map_err(io)?;
        let text = serde_json::to_string(&channel).expect("channel serializes");
        write_synced(&staging.join("channel.json"), text.as_bytes())?;
        fs::rename(&staging, self.channel_dir(id)).map_err(io)?;
        sync_dir(&self.channels_dir())?;
        Ok(channel)
    }

    fn delete_channel(&self, channel: Id) -> StoreResult<()> {
        self.check_channel(channel)?;
        let doomed = self.channels_dir().join(format!(".deleted-{channel}"));
        let io = |e| StoreError::io(format!("deleting channel {channel}"), e);
        fs::rename(self.channel_dir(channel), &doomed).map_err(io)?;
        fs::remove_dir_all(&doomed).map_err(io)
    }

    fn check_limits(&self, message: &NewMessage) -> StoreResult<()> {
        let limits = &self.guild.limits;
        if message.content.is_empty() && message.attachments.is_empty() {
            return Err(StoreError::Invalid(
                "a message needs content or attachments".into(),
            ));
        }
        if message.content.chars().count() > limits.max_content_chars {
            return Err(StoreError::Invalid(format!(
                "message content is over {} characters",
                limits.max_content_chars
            )));
        }
        if message.attachments.len() > limits.max_attachments {
            return Err(StoreError::TooLarge(format!(
                "{} attachments, at most {} per message",
                message.attachments.len(),
                limits.max_attachments
            )));
        }
        let mut names = HashSet::new();
        for attachment in &message.attachments {
            if !valid_attachment_filename(&attachment.filename) {
                return Err(StoreError::Invalid(format!(
                    "attachment name '{}' is not [A-Za-z0-9._-]",
                    attachment.filename
                )));
            }
            if !names.insert(attachment.filename.as_str()) {
                return Err(StoreError::Invalid(format!(
                    "two attachments are named '{}'",
                    attachment.filename
                )));
            }
            if attachment.data.len() as u64 > limits.max_file_size {
                return Err(StoreError::TooLarge(format!(
                    "an attachment of {} bytes, the per-file limit is {}",
                    attachment.data.len(),
                    limits.max_file_size
                )));
            }
        }
        if message.attachment_bytes() > limits.max_request_size {
            return Err(StoreError::TooLarge(format!(
                "{} bytes in one message, the per-request limit is {}",
                message.attachment_bytes(),
                limits.max_request_size
            )));
        }
        Ok(())
    }

    fn staging_dir(&self, channel: Id) -> PathBuf {
        self.channel_dir(channel).join("staging")
    }

    /// Where a post keeps an attachment until its message is published; the name
    /// carries the process id, so that a sweep can tell a dead post's files.
    fn staged_path(&self, channel: Id, attachment: Id) -> PathBuf {
        self.staging_dir(channel)
            .join(format!("{}-{attachment}", std::process::id()))
    }

    fn post(&self, author: Id, channel: Id, message: NewMessage) -> StoreResult<Message> {
        self.check_limits(&message)?;
        self.check_channel(channel)?;
        let staging = self.staging_dir(channel);
        fs::create_dir_all(&staging)
            .map_err(|e| StoreError::io(format!("creating {}", staging.display()), e))?;
        let attachment_ids = IdLock::acquire(&self.root)?.next_ids(message.attachments.len())?;
        let mut attachments = Vec::with_capacity(message.attachments.len());
        let written = attachment_ids
            .iter()
            .zip(&message.attachments)
            .try_for_each(|(&id, new)| {
                write_synced(&self.staged_path(channel, id), &new.data)?;
                attachments.push(Attachment {
                    id,
                    filename: new.filename.clone(),
                    size: new.data.len() as u64,
                });
                Ok(())
            });
        let published = written.and_then(|()| self.publish(author, channel, message, attachments));
        if published.is_err() {
            for id in attachment_ids {
                let _ = fs::remove_file(self.staged_path(channel, id));
                let _ = fs::remove_file(self.attachment_path(channel, id));
            }
        }
        published
    }

    /// Takes the message id and makes the message visible with its attachments, under
    /// the id lock so that messages appear in id order. The message file is written in
    /// `staging/` and renamed into `messages/`, so it appears whole.
    fn publish(
        &self,
        author: Id,
        channel: Id,
        message: NewMessage,
        attachments: Vec<Attachment>,
    ) -> StoreResult<Message> {
        let mut lock = IdLock::acquire(&self.root)?;
        let id = lock.next_ids(1)?[0];
        let stored = Message {
            id,
            channel_id: channel,
            author_id: author,
            content: message.content,
            attachments,
        };
        // The staged message file goes first: while it exists, the message is not
        // published, and it lists the attachments that a sweep must take back.
        let staged_message = self.staged_message_path(channel, id);
        let text = serde_json::to_string(&stored).expect("message serializes");
        write_synced(&staged_message, text.as_bytes())?;
        for attachment in &stored.attachments {
            fs::rename(
                self.staged_path(channel, attachment.id),
                self.attachment_path(channel, attachment.id),
            )
            .map_err(|e| StoreError::io(format!("publishing attachment {}", attachment.id), e))?;
        }
        if !stored.attachments.is_empty() {
            sync_dir(&self.channel_dir(channel).join("attachments"))?;
        }
        fs::rename(&staged_message, self.message_path(channel, id))
            .map_err(|e| StoreError::io(format!("publishing message {id}"), e))?;
        drop(lock);
        sync_dir(&self.messages_dir(channel))?;
        Ok(stored)
    }

    fn staged_message_path(&self, channel: Id, message: Id) -> PathBuf {
        self.staging_dir(channel)
            .join(format!("{}-message-{message}", std::process::id()))
    }

    /// Removes what posts cut short by a crash left: the staged files of processes that
    /// are gone, and the attachments that a publish cut short had already moved (its
    /// staged message file lists them). Runs under the id lock, so no publish is
    /// halfway while it looks.
    fn sweep_crash_debris(&self) -> StoreResult<()> {
        let _lock = IdLock::acquire(&self.root)?;
        let Ok(channels) = fs::read_dir(self.channels_dir()) else {
            return Ok(());
        };
        for channel in channels.flatten() {
            let Ok(staged) = fs::read_dir(channel.path().join("staging")) else {
                continue;
            };
            for entry in staged.flatten() {
                let name = entry.file_name();
                let Some((pid, rest)) = name.to_str().and_then(|n| n.split_once('-')) else {
                    continue;
                };
                if pid.parse().map_or(true, process_alive) {
                    continue;
                }
                if rest.starts_with("message-") {
                    let unpublished = fs::read(entry.path())
                        .ok()
                        .and_then(|bytes| serde_json::from_slice::<Message>(&bytes).ok());
                    for attachment in unpublished.map(|m| m.attachments).unwrap_or_default() {
                        let _ = fs::remove_file(
                            channel
                                .path()
                                .join("attachments")
                                .join(attachment.id.to_string()),
                        );
                    }
                }
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn message_ids(&self, channel: Id) -> StoreResult<Vec<Id>> {
        self.check_channel(channel)?;
        let dir = self.messages_dir(channel);
        let io = |e| StoreError::io(format!("listing {}", dir.display()), e);
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<Id>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn history(
        &self,
        channel: Id,
        cursor: HistoryCursor,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let limit = limit.clamp(1, MAX_HISTORY_PAGE);
        let ids = self.message_ids(channel)?;
        let page: Vec<Id> = match cursor {
            HistoryCursor::Latest => ids.iter().rev().take(limit).copied().collect(),
            HistoryCursor::Before(before) => ids
                .iter()
                .rev()
                .filter(|&&id| id < before)
                .take(limit)
                .copied()
                .collect(),
            HistoryCursor::After(after) => {
                let start = ids.partition_point(|&id| id <= after);
                ids[start..].iter().take(limit).rev().copied().collect()
            }
        };
        let mut messages = Vec::with_capacity(page.len());
        for id in page {
            match self.message(channel, id) {
                Ok(message) => messages.push(message),
                Err(StoreError::NoSuchMessage(_)) => {} // deleted while we listed
                Err(e) => return Err(e),
            }
        }
        Ok(messages)
    }

    fn pins_dir(&self, channel: Id) -> PathBuf {
        self.channel_dir(channel).join("pins")
    }

    /// The pinned messages, newest pin first (a pin whose message is gone is dropped).
    fn pins(&self, channel: Id) -> StoreResult<Vec<Message>> {
        self.check_channel(channel)?;
        let dir = self.pins_dir(channel);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
        };
        let mut pinned = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Id>().ok())
            else {
                continue;
            };
            let at: u64 = fs::read_to_string(entry.path())
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0);
            match self.message(channel, id) {
                Ok(message) => pinned.push((at, message)),
                Err(StoreError::NoSuchMessage(_)) => {}
                Err(e) => return Err(e),
            }
        }
        pinned.sort_by_key(|(at, message)| std::cmp::Reverse((*at, message.id)));
        Ok(pinned.into_iter().map(|(_, message)| message).collect())
    }

    fn pin(&self, channel: Id, message: Id) -> StoreResult<()> {
        self.message(channel, message)?;
        let dir = self.pins_dir(channel);
        let path = dir.join(message.to_string());
        if path.exists() {
            return Ok(());
        }
        let count = fs::read_dir(&dir).map_or(0, |entries| entries.count());
        if count >= super::MAX_PINS {
            return Err(StoreError::Invalid(format!(
                "the channel has the most pins allowed ({}); unpin some",
                super::MAX_PINS
            )));
        }
        fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        write_synced(&path, now.to_string().as_bytes())
    }

    fn unpin(&self, channel: Id, message: Id) -> StoreResult<()> {
        self.message(channel, message)?;
        let path = self.pins_dir(channel).join(message.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format!("removing {}", path.display()), e)),
        }
    }

    fn message(&self, channel: Id, message: Id) -> StoreResult<Message> {
        let path = self.message_path(channel, message);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.check_channel(channel)?;
                return Err(StoreError::NoSuchMessage(message));
            }
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))
    }

    /// An attachment's file, open, and its length: the attachment must be listed on its
    /// message, and a listed one whose file is gone is not found either.
    fn open_attachment(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
    ) -> StoreResult<(File, PathBuf, u64)> {
        let stored = self.message(channel, message)?;
        let missing = || StoreError::NoSuchAttachment {
            message,
            attachment,
        };
        if !stored.attachments.iter().any(|a| a.id == attachment) {
            return Err(missing());
        }
        let path = self.attachment_path(channel, attachment);
        match File::open(&path).and_then(|file| Ok((file.metadata()?.len(), file))) {
            Ok((len, file)) => Ok((file, path, len)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing()),
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
    }

    fn fetch_attachment(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        max_bytes: u64,
    ) -> StoreResult<Bytes> {
        let (file, path, len) = self.open_attachment(channel, message, attachment)?;
        // Attachments never change once stored: a length checked first is the length
        // read (and a file read whole is read in one go, at the file's own size).
        if len > max_bytes {
            return Err(StoreError::Corrupt(format!(
                "attachment {attachment} of message {message} is longer than the {max_bytes} \
                 bytes expected"
            )));
        }
        read_at(&file, &path, 0, len)
    }

    fn fetch_range(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        range: std::ops::Range<u64>,
    ) -> StoreResult<Fetched> {
        let wanted = super::range_len(&range)?;
        if wanted == 0 {
            return Ok(Fetched::from(Vec::new()));
        }
        let (file, path, len) = self.open_attachment(channel, message, attachment)?;
        if len < range.end {
            return Err(StoreError::Corrupt(format!(
                "attachment {attachment} of message {message} is {len} bytes long, shorter \
                 than the record says (bytes {}..{} were asked for)",
                range.start, range.end
            )));
        }
        let io_error = |e| StoreError::io(format!("reading {}", path.display()), e);
        if wanted >= DIRECT_RANGE && !in_page_cache(&file, &range) {
            if let Some(fetched) = read_direct(&path, range.clone()).map_err(io_error)? {
                return Ok(fetched);
            }
        }
        if wanted < SMALL_RANGE {
            // A few segments of a chunk: the kernel's read-ahead of a freshly opened
            // file would read twice that or more from the disk, for bytes nobody asked
            // for (a random read through the mount costs what the disk reads).
            use std::os::fd::AsRawFd;
            // SAFETY: an advice on an open descriptor; it can't fail in a way that
            // matters (the read below works either way).
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
            }
        }
        read_at(&file, &path, range.start, wanted).map(|data| Fetched::from(Vec::from(data)))
    }

    fn delete_message(&self, channel: Id, message: Id) -> StoreResult<()> {
        let stored = self.message(channel, message)?;
        let path = self.message_path(channel, message);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchMessage(message));
            }
            Err(e) => return Err(StoreError::io(format!("deleting {}", path.display()), e)),
        }
        for attachment in stored.attachments {
            let _ = fs::remove_file(self.attachment_path(channel, attachment.id));
        }
        let _ = fs::remove_file(self.pins_dir(channel).join(message.to_string()));
        Ok(())
    }
}

/// `len` bytes of `file` (at `path`) from `at`, in one read, into a pooled buffer.
fn read_at(file: &File, path: &Path, at: u64, len: u64) -> StoreResult<Bytes> {
    let mut data = crate::buffers::take(len as usize);
    file.read_exact_at(&mut data, at)
        .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
    Ok(Bytes::from(data))
}

/// Ranged reads shorter than this (a few segments: a read through the mount, not a
/// sequential run) are read without the kernel's read-ahead.
const SMALL_RANGE: u64 = 512 * 1024;

/// Ranged reads at least this long (a sequential run, a whole chunk for `get`) whose
/// bytes are not in the page cache are read with `O_DIRECT`: the disk writes them
/// straight into our buffer. Through the page cache they would be read into pages
/// first (allocated, charged and listed, a third of a cold read's CPU) and then copied
/// out, and the plaintext is cached above this layer anyway. Bytes already in the page
/// cache (a file just written) are copied from there, which is faster than the disk.
const DIRECT_RANGE: u64 = 1024 * 1024;

/// Alignment of a direct read's file offset, length and memory: the largest logical
/// block size of common disks.
const DIRECT_ALIGN: usize = 4096;

/// Whether every page of `range` of `file` is in the page cache (`mincore` of a
/// mapping of it, which reads nothing). When it can't tell, it says yes, so the read
/// goes through the page cache as any other.
fn in_page_cache(file: &File, range: &std::ops::Range<u64>) -> bool {
    let from = range.start / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
    let Ok(len) = usize::try_from(range.end - from) else {
        return true;
    };
    let Ok(offset) = libc::off_t::try_from(from) else {
        return true;
    };
    // SAFETY: a fresh read-only shared mapping of an open file, never dereferenced
    // (mincore only reports residency) and unmapped before returning.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset,
        );
        if map == libc::MAP_FAILED {
            return true;
        }
        let mut pages = vec![0u8; len.div_ceil(DIRECT_ALIGN)];
        let known = libc::mincore(map, len, pages.as_mut_ptr()) == 0;
        libc::munmap(map, len);
        !known || pages.iter().all(|page| page & 1 == 1)
    }
}

/// Bytes `range` of the file at `path` read with `O_DIRECT`, into an aligned part of
/// a pooled buffer; `None` if the file system or the disk doesn't take such reads
/// (tmpfs, larger blocks), for the caller to read it as usual.
fn read_direct(path: &Path, range: std::ops::Range<u64>) -> std::io::Result<Option<Fetched>> {
    use std::os::unix::fs::OpenOptionsExt;
    let refused = |e: &std::io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if refused(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let align = DIRECT_ALIGN as u64;
    let from = range.start / align * align;
    let to = range.end.div_ceil(align) * align;
    let span = (to - from) as usize;
    let needed = (range.end - from) as usize;
    let mut buffer = crate::buffers::take(span + DIRECT_ALIGN);
    let lead = buffer.as_ptr().align_offset(DIRECT_ALIGN);
    let mut done = 0;
    while done < needed {
        // Whole aligned blocks up to `to`; the file may end before it (a short read).
        match file.read_at(&mut buffer[lead + done..lead + span], from + done as u64) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A read the disk won't align to (or a short read that left us unaligned).
            Err(e) if refused(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    let start = lead + (range.start - from) as usize;
    buffer.truncate(start + (range.end - range.start) as usize);
    Ok(Some(Fetched { buffer, start }))
}

#[async_trait]
impl Store for LocalStore {
    async fn key_salt(&self) -> StoreResult<String> {
        let inner = self.inner.clone();
        blocking(move || inner.salt()).await
    }

    fn identity(&self) -> String {
        let root = fs::canonicalize(&self.inner.root).unwrap_or_else(|_| self.inner.root.clone());
        let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
        format!("local-{}", crate::crypto::encode_hex(&digest[..8]))
    }

    async fn limits(&self) -> StoreResult<Limits> {
        Ok(self.inner.guild.limits)
    }

    async fn current_user(&self) -> StoreResult<Id> {
        Ok(self.inner.guild.user_id)
    }

    async fn channels(&self) -> StoreResult<Vec<Channel>> {
        let inner = self.inner.clone();
        blocking(move || inner.channels()).await
    }

    async fn create_channel(&self, name: &str) -> StoreResult<Channel> {
        let inner = self.inner.clone();
        let name = name.to_string();
        blocking(move || inner.create_channel(&name)).await
    }

    async fn delete_channel(&self, channel: Id) -> StoreResult<()> {
        let inner = self.inner.clone();
        blocking(move || inner.delete_channel(channel)).await
    }

    async fn post(&self, channel: Id, message: NewMessage) -> StoreResult<Message> {
        let inner = self.inner.clone();
        let author = inner.guild.user_id;
        blocking(move || inner.post(author, channel, message)).await
    }

    async fn history(
        &self,
        channel: Id,
        cursor: HistoryCursor,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let inner = self.inner.clone();
        blocking(move || inner.history(channel, cursor, limit)).await
    }

    async fn message(&self, channel: Id, message: Id) -> StoreResult<Message> {
        let inner = self.inner.clone();
        blocking(move || inner.message(channel, message)).await
    }

    async fn fetch_attachment(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        max_bytes: u64,
    ) -> StoreResult<Bytes> {
        let inner = self.inner.clone();
        blocking(move || inner.fetch_attachment(channel, message, attachment, max_bytes)).await
    }

    async fn fetch_range(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        range: std::ops::Range<u64>,
    ) -> StoreResult<Bytes> {
        let fetched = self
            .fetch_range_owned(channel, message, attachment, range)
            .await?;
        let len = fetched.bytes().len();
        let Fetched { buffer, start } = fetched;
        Ok(crate::buffers::into_bytes(buffer, start + len).slice(start..))
    }

    async fn fetch_range_owned(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        range: std::ops::Range<u64>,
    ) -> StoreResult<Fetched> {
        // Checked here too, so that an empty range costs no trip to the blocking pool.
        if super::range_len(&range)? == 0 {
            return Ok(Fetched::from(Vec::new()));
        }
        let inner = self.inner.clone();
        blocking(move || inner.fetch_range(channel, message, attachment, range)).await
    }

    async fn pins(&self, channel: Id) -> StoreResult<Vec<Message>> {
        let inner = self.inner.clone();
        blocking(move || inner.pins(channel)).await
    }

    async fn pin(&self, channel: Id, message: Id) -> StoreResult<()> {
        let inner = self.inner.clone();
        blocking(move || inner.pin(channel, message)).await
    }

    async fn unpin(&self, channel: Id, message: Id) -> StoreResult<()> {
        let inner = self.inner.clone();
        blocking(move || inner.unpin(channel, message)).await
    }

    async fn delete_message(&self, channel: Id, message: Id) -> StoreResult<()> {
        let inner = self.inner.clone();
        blocking(move || inner.delete_message(channel, message)).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MAX_RANGE_BYTES, NewAttachment};
    use super::*;

    fn small_limits() -> Limits {
        Limits {
            max_file_size: 100,
            max_attachments: 3,
            max_request_size: 250,
            max_content_chars: 20,
        }
    }

    fn attachment(name: &str, len: usize) -> NewAttachment {
        NewAttachment {
            filename: name.to_string(),
            data: Bytes::from(vec![7u8; len]),
        }
    }

    fn text(content: &str) -> NewMessage {
        NewMessage {
            content: content.to_string(),
            attachments: vec![],
        }
    }

    #[tokio::test]
    async fn enforces_discords_limits_and_stores_nothing_on_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path(), small_limits()).unwrap();
        let channel = store.create_channel("c").await.unwrap();
        let post = |attachments: Vec<NewAttachment>| {
            let store = store.clone();
            async move {
                store
                    .post(
                        channel.id,
                        NewMessage {
                            content: String::new(),
                            attachments,
                        },
                    )
                    .await
            }
        };
        assert!(matches!(
            post(vec![attachment("a", 101)]).await,
            Err(StoreError::TooLarge(_))
        ));
        let four = (0..4).map(|i| attachment(&format!("a{i}"), 1)).collect();
        assert!(matches!(post(four).await, Err(StoreError::TooLarge(_))));
        let over_request = (0..3).map(|i| attachment(&format!("a{i}"), 90)).collect();
        assert!(matches!(
            post(over_request).await,
            Err(StoreError::TooLarge(_))
        ));
        assert!(matches!(
            post(vec![attachment("bad name", 1)]).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            store.post(channel.id, text(&"x".repeat(21))).await,
            Err(StoreError::Invalid(_))
        ));
        assert!(
            store
                .history(channel.id, HistoryCursor::Latest, 100)
                .await
                .unwrap()
                .is_empty()
        );
        let attachments_dir = dir
            .path()
            .join(format!("channels/{}/attachments", channel.id));
        assert_eq!(fs::read_dir(attachments_dir).unwrap().count(), 0);

        let ok = post(vec![attachment("a", 100), attachment("b", 100)])
            .await
            .unwrap();
        assert_eq!(ok.attachments.len(), 2);
        let bytes = store
            .fetch_attachment(channel.id, ok.id, ok.attachments[1].id, u64::MAX)
            .await
            .unwrap();
        assert_eq!(bytes.len(), 100);
    }

    #[tokio::test]
    async fn history_pages_like_discord() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path(), Limits::default()).unwrap();
        let channel = store.create_channel("c").await.unwrap();
        let mut ids = Vec::new();
        for i in 0..7 {
            ids.push(
                store
                    .post(channel.id, text(&format!("m{i}")))
                    .await
                    .unwrap()
                    .id,
            );
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let history = |cursor| {
            let store = store.clone();
            async move {
                store
                    .history(channel.id, cursor, 3)
                    .await
                    .unwrap()
                    .iter()
                    .map(|m| m.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            history(HistoryCursor::Latest).await,
            vec![ids[6], ids[5], ids[4]]
        );
        assert_eq!(
            history(HistoryCursor::Before(ids[4])).await,
            vec![ids[3], ids[2], ids[1]]
        );
        assert_eq!(
            history(HistoryCursor::After(ids[1])).await,
            vec![ids[4], ids[3], ids[2]]
        );
        assert_eq!(history(HistoryCursor::After(ids[5])).await, vec![ids[6]]);

        store.delete_message(channel.id, ids[3]).await.unwrap();
        assert!(matches!(
            store.message(channel.id, ids[3]).await,
            Err(StoreError::NoSuchMessage(_))
        ));
        assert!(
            store
                .delete_message(channel.id, ids[3])
                .await
                .unwrap_err()
                .is_not_found()
        );
        assert_eq!(
            history(HistoryCursor::After(ids[1])).await,
            vec![ids[5], ids[4], ids[2]]
        );
    }

    #[tokio::test]
    async fn channels_are_unique_and_deletable() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path(), Limits::default()).unwrap();
        let a = store.create_channel("Holiday Photos").await.unwrap();
        assert!(matches!(
            store.create_channel("Holiday Photos").await,
            Err(StoreError::ChannelExists(_))
        ));
        assert!(matches!(
            store.create_channel("a/b").await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(store.channels().await.unwrap(), vec![a.clone()]);
        store.delete_channel(a.id).await.unwrap();
        assert!(store.channels().await.unwrap().is_empty());
        assert!(matches!(
            store.post(a.id, text("x")).await,
            Err(StoreError::NoSuchChannel(_))
        ));
        // Reopening keeps the data and limits.
        let reopened = LocalStore::open(dir.path()).unwrap();
        assert_eq!(reopened.limits().await.unwrap(), Limits::default());
        assert!(LocalStore::open(&dir.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn ids_stay_unique_across_concurrent_posters() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path(), Limits::default()).unwrap();
        let channel = store.create_channel("c").await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .post(channel.id, text(&format!("{i}")))
                    .await
                    .unwrap()
                    .id
            }));
        }
        let mut ids = HashSet::new();
        for task in tasks {
            assert!(ids.insert(task.await.unwrap()));
        }
        assert_eq!(ids.len(), 20);
    }

    /// A store in `dir` with a channel holding one message of one attachment, `data`:
    /// the store and the channel's, message's and attachment's ids.
    async fn one_attachment(dir: &Path, data: &[u8]) -> (LocalStore, Id, Id, Id) {
        let store = LocalStore::open_or_create(dir, Limits::default()).unwrap();
        let channel = store.create_channel("c").await.unwrap().id;
        let posted = store
            .post(
                channel,
                NewMessage {
                    content: String::new(),
                    attachments: vec![NewAttachment {
                        filename: "c0".into(),
                        data: Bytes::copy_from_slice(data),
                    }],
                },
            )
            .await
            .unwrap();
        let (message, attachment) = (posted.id, posted.attachments[0].id);
        (store, channel, message, attachment)
    }

    #[tokio::test]
    async fn ranges_read_exactly_their_bytes_and_never_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let whole: Vec<u8> = (0..200 * 1024u32)
            .map(|i| (i * 31 + i / 251) as u8)
            .collect();
        let (store, channel, message, attachment) = one_attachment(dir.path(), &whole).await;
        let len = whole.len() as u64;
        for range in [
            0..10,
            1000..5000,
            len - 17..len,
            65530..65550,
            4242..4243,
            0..len,
        ] {
            let got = store
                .fetch_range(channel, message, attachment, range.clone())
                .await
                .unwrap();
            assert!(
                got == whole[range.start as usize..range.end as usize],
                "{range:?}"
            );
        }
        // Empty: nothing to read, not even from a message that doesn't exist.
        assert!(
            store
                .fetch_range(channel, message, attachment, 7..7)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .fetch_range(channel, 1, 2, len..len)
                .await
                .unwrap()
                .is_empty()
        );
        for past_the_end in [len - 1..len + 1, len..len + 1, len + 100..len + 200] {
            let error = store
                .fetch_range(channel, message, attachment, past_the_end.clone())
                .await
                .unwrap_err();
            assert!(
                matches!(error, StoreError::Corrupt(_)),
                "{past_the_end:?}: {error:?}"
            );
        }
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 9..3;
        for invalid in [backwards, 0..MAX_RANGE_BYTES + 1] {
            let error = store
                .fetch_range(channel, message, attachment, invalid)
                .await
                .unwrap_err();
            assert!(matches!(error, StoreError::Invalid(_)), "{error:?}");
        }
        // Not found, like fetch_attachment: an attachment not on the message, a file gone,
        // a message gone.
        let error = store
            .fetch_range(channel, message, attachment + 1, 0..1)
            .await
            .unwrap_err();
        assert!(error.is_not_found(), "{error:?}");
        fs::remove_file(store.attachment_path(channel, attachment)).unwrap();
        let error = store
            .fetch_range(channel, message, attachment, 0..1)
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::NoSuchAttachment { .. }),
            "{error:?}"
        );
        let error = store
            .fetch_attachment(channel, message, attachment, u64::MAX)
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::NoSuchAttachment { .. }),
            "{error:?}"
        );
        store.delete_message(channel, message).await.unwrap();
        let error = store
            .fetch_range(channel, message, attachment, 0..1)
            .await
            .unwrap_err();
        assert!(error.is_not_found(), "{error:?}");
    }

    /// Drops `path`'s pages from the page cache (they are clean once synced).
    fn evict(path: &Path) {
        let file = File::open(path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: an advice on an open descriptor.
        let done =
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(done, 0);
    }

    #[tokio::test]
    async fn long_ranges_read_exactly_their_bytes_from_the_disk_or_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let whole: Vec<u8> = (0..(5 << 20) + 4321u32)
            .map(|i| (i * 31 + i / 4093) as u8)
            .collect();
        let (store, channel, message, attachment) = one_attachment(dir.path(), &whole).await;
        let path = store.attachment_path(channel, attachment);
        let len = whole.len() as u64;
        let mib = 1 << 20;
        // Unaligned starts and ends, to the last byte, and the whole file.
        let ranges = [
            13..13 + 2 * mib,
            4096..4096 + mib,
            65_549..len,
            len - mib - 1..len,
            0..len,
        ];
        for cached in [false, true] {
            for range in ranges.clone() {
                if !cached {
                    evict(&path);
                }
                let file = File::open(&path).unwrap();
                assert!(cached || !in_page_cache(&file, &range));
                let got = store
                    .fetch_range_owned(channel, message, attachment, range.clone())
                    .await
                    .unwrap();
                assert!(
                    got.bytes() == &whole[range.start as usize..range.end as usize],
                    "{range:?}, cached {cached}"
                );
                let got = store
                    .fetch_range(channel, message, attachment, range.clone())
                    .await
                    .unwrap();
                assert!(
                    got == whole[range.start as usize..range.end as usize],
                    "{range:?}"
                );
            }
            // Read whole (buffered), the file is in the page cache for the second round.
            let _ = fs::read(&path).unwrap();
        }
        // Where the disk takes direct reads, the direct path itself returns the bytes.
        evict(&path);
        if let Some(direct) = read_direct(&path, 4097..4097 + 3 * mib).unwrap() {
            // The disk wrote into aligned memory: the bytes start one past a boundary.
            let address = direct.buffer.as_ptr() as usize + direct.start;
            assert_eq!(address % DIRECT_ALIGN, 4097 % DIRECT_ALIGN);
            assert!(direct.bytes() == &whole[4097..4097 + 3 * mib as usize]);
        }
    }

    #[tokio::test]
    async fn whole_fetches_keep_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open_or_create(dir.path(), small_limits()).unwrap();
        let channel = store.create_channel("c").await.unwrap().id;
        let posted = store
            .post(
                channel,
                NewMessage {
                    content: String::new(),
                    attachments: vec![attachment("a", 50), attachment("e", 0)],
                },
            )
            .await
            .unwrap();
        let fetch = |attachment: Id, max_bytes: u64| {
            let store = store.clone();
            async move {
                store
                    .fetch_attachment(channel, posted.id, attachment, max_bytes)
                    .await
            }
        };
        let (a, e) = (posted.attachments[0].id, posted.attachments[1].id);
        assert_eq!(fetch(a, 50).await.unwrap(), vec![7u8; 50]);
        assert!(matches!(fetch(a, 49).await, Err(StoreError::Corrupt(_))));
        assert!(fetch(e, 0).await.unwrap().is_empty());
    }
}
