//! The guild in memory: users, channels, messages, attachments and pins, and the rules
//! Discord applies to them that do not depend on the request (names, caps, nonces).
//! Permissions and request limits are the API layer's business; this module trusts callers.

use crate::error::ApiError;
use crate::signing::UrlSigner;
use crate::time::{SnowflakeGenerator, now_ms, snowflake_ms};
use bytes::Bytes;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Channel type 0.
pub const TEXT: u8 = 0;
/// Channel type 4.
pub const CATEGORY: u8 = 4;
/// Message type of a normal message.
pub const DEFAULT_MESSAGE: u8 = 0;
/// Message type of the system message Discord posts when a message is pinned.
pub const PIN_NOTICE: u8 = 6;

const MAX_CHANNELS: usize = 500;
const MAX_PINS: usize = 250;
const MAX_NAME: usize = 100;
const MAX_TOPIC: usize = 1024;
/// How long `enforce_nonce` remembers a nonce.
const NONCE_MEMORY: Duration = Duration::from_secs(5 * 60);
/// Bulk delete refuses messages older than this.
const BULK_DELETE_MAX_AGE_MS: u64 = 14 * 24 * 3600 * 1000;

/// A user of the fake Discord.
#[derive(Clone, Debug)]
pub struct User {
    /// Snowflake.
    pub id: u64,
    /// Username.
    pub username: String,
    /// Whether it is a bot account.
    pub bot: bool,
}

/// A channel of the guild.
#[derive(Clone, Debug)]
pub struct Channel {
    /// Snowflake.
    pub id: u64,
    /// [`TEXT`] or [`CATEGORY`].
    pub kind: u8,
    /// Name (already rewritten for text channels).
    pub name: String,
    /// Topic of a text channel.
    pub topic: Option<String>,
    /// Sort position.
    pub position: i64,
    /// Category it is in.
    pub parent_id: Option<u64>,
    /// Id of the last message ever created in it (kept when that message is deleted).
    pub last_message_id: Option<u64>,
    /// Messages by id (so by time).
    pub messages: BTreeMap<u64, Message>,
    /// Pinned messages, in the order they were pinned.
    pub pins: Vec<Pin>,
    nonces: HashMap<(u64, String), (u64, Instant)>,
}

/// A pinned message.
#[derive(Clone, Copy, Debug)]
pub struct Pin {
    /// The message.
    pub message_id: u64,
    /// When it was pinned (Unix ms).
    pub pinned_at_ms: u64,
}

/// A message.
#[derive(Clone, Debug)]
pub struct Message {
    /// Snowflake (holds its creation time).
    pub id: u64,
    /// Channel it is in.
    pub channel_id: u64,
    /// Author's user id.
    pub author_id: u64,
    /// Text.
    pub content: String,
    /// Nonce as the client sent it (string or integer).
    pub nonce: Option<Value>,
    /// [`DEFAULT_MESSAGE`] or [`PIN_NOTICE`].
    pub kind: u8,
    /// Attachments, in upload order.
    pub attachments: Vec<AttachmentMeta>,
    /// Whether it is pinned.
    pub pinned: bool,
    /// The message a pin notice refers to.
    pub reference: Option<u64>,
}

/// What a message says about one of its attachments.
#[derive(Clone, Debug)]
pub struct AttachmentMeta {
    /// Snowflake.
    pub id: u64,
    /// File name (sanitized).
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type, when Discord would know one.
    pub content_type: Option<String>,
}

/// An attachment's bytes and where they belong, for the CDN.
#[derive(Clone, Debug)]
pub struct StoredAttachment {
    /// Channel of its message.
    pub channel_id: u64,
    /// File name (as in its URL).
    pub filename: String,
    /// The bytes.
    pub data: Bytes,
}

/// A file to attach to a new message.
#[derive(Clone, Debug)]
pub struct NewFile {
    /// File name as sent (sanitized on storing).
    pub filename: String,
    /// The bytes.
    pub data: Bytes,
    /// MIME type the client declared, if any.
    pub content_type: Option<String>,
}

/// A message to post.
#[derive(Clone, Debug, Default)]
pub struct NewMessage {
    /// Text.
    pub content: String,
    /// Nonce (string or integer).
    pub nonce: Option<Value>,
    /// Return the earlier message with this nonce instead of posting again.
    pub enforce_nonce: bool,
    /// Attachments.
    pub files: Vec<NewFile>,
}

/// What posting did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// A new message with this id.
    Created(u64),
    /// Nothing: the message with this id has the same nonce (`enforce_nonce`).
    Existing(u64),
}

/// Which page of history to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// The newest messages.
    Latest,
    /// Messages older than this id.
    Before(u64),
    /// Messages newer than this id (the oldest of them).
    After(u64),
    /// Messages around this id.
    Around(u64),
}

/// A channel to create.
#[derive(Clone, Debug)]
pub struct ChannelSpec {
    /// Name as sent.
    pub name: String,
    /// [`TEXT`] or [`CATEGORY`].
    pub kind: u8,
    /// Topic.
    pub topic: Option<String>,
    /// Category.
    pub parent_id: Option<u64>,
}

/// Changes to a channel: `None` keeps a field, `Some(None)` clears a nullable one.
#[derive(Clone, Debug, Default)]
pub struct ChannelPatch {
    /// New name.
    pub name: Option<String>,
    /// New topic.
    pub topic: Option<Option<String>>,
    /// New category.
    pub parent_id: Option<Option<u64>>,
    /// New position.
    pub position: Option<i64>,
}

/// The guild and everything in it.
#[derive(Debug)]
pub struct GuildState {
    /// The guild's id (also its @everyone role's id).
    pub guild_id: u64,
    /// The bot's user id.
    pub bot_user_id: u64,
    /// The guild owner (a human).
    pub owner_id: u64,
    /// The bot's managed role.
    pub bot_role_id: u64,
    /// Signs attachment URLs.
    pub signer: UrlSigner,
    ids: SnowflakeGenerator,
    channels: BTreeMap<u64, Channel>,
    attachments: HashMap<u64, StoredAttachment>,
    users: BTreeMap<u64, User>,
    members: BTreeMap<u64, u64>,
}

impl GuildState {
    /// A guild with the bot, its owner and one more human as members, and text channels
    /// with the given names; its ids (the channels' too) are dated `backdate_ms` in the
    /// past (0: now; see [`GuildState::set_backdate_ms`]).
    pub fn new(
        guild_id: u64,
        bot_user_id: u64,
        channel_names: &[String],
        backdate_ms: u64,
    ) -> GuildState {
        let mut ids = SnowflakeGenerator::default();
        ids.set_backdate_ms(backdate_ms);
        let mut guild = GuildState {
            guild_id,
            bot_user_id,
            owner_id: guild_id + 1,
            bot_role_id: guild_id + 3,
            signer: UrlSigner::new(),
            ids,
            channels: BTreeMap::new(),
            attachments: HashMap::new(),
            users: BTreeMap::new(),
            members: BTreeMap::new(),
        };
        let joined = snowflake_ms(guild_id);
        guild.add_member(bot_user_id, "dcloud-bot", true, joined);
        guild.add_member(guild.owner_id, "guild-owner", false, joined);
        guild.add_member(guild_id + 2, "alice", false, joined);
        for name in channel_names {
            let spec = ChannelSpec {
                name: name.clone(),
                kind: TEXT,
                topic: None,
                parent_id: None,
            };
            if let Err(error) = guild.create_channel(spec) {
                log::warn!("initial channel {name:?} not created: {}", error.message);
            }
        }
        guild
    }

    fn add_member(&mut self, id: u64, username: &str, bot: bool, joined_ms: u64) {
        self.users.insert(
            id,
            User {
                id,
                username: username.to_owned(),
                bot,
            },
        );
        self.members.insert(id, joined_ms);
    }

    /// A user, made up on first sight (for messages by others).
    pub fn ensure_user(&mut self, id: u64) -> &User {
        self.users.entry(id).or_insert_with(|| User {
            id,
            username: format!("user-{id}"),
            bot: false,
        })
    }

    /// A known user.
    pub fn user(&self, id: u64) -> Option<&User> {
        self.users.get(&id)
    }

    /// Guild members with their join time (Unix ms), by user id.
    pub fn members(&self) -> impl Iterator<Item = (&User, u64)> {
        self.members
            .iter()
            .filter_map(|(id, joined)| Some((self.users.get(id)?, *joined)))
    }

    /// A guild member with its join time.
    pub fn member(&self, user_id: u64) -> Option<(&User, u64)> {
        let joined = *self.members.get(&user_id)?;
        Some((self.users.get(&user_id)?, joined))
    }

    /// All channels, by position then id.
    pub fn channels(&self) -> Vec<&Channel> {
        let mut channels: Vec<&Channel> = self.channels.values().collect();
        channels.sort_by_key(|c| (c.position, c.id));
        channels
    }

    /// A channel by id.
    pub fn channel(&self, id: u64) -> Result<&Channel, ApiError> {
        self.channels.get(&id).ok_or_else(ApiError::unknown_channel)
    }

    fn channel_mut(&mut self, id: u64) -> Result<&mut Channel, ApiError> {
        self.channels
            .get_mut(&id)
            .ok_or_else(ApiError::unknown_channel)
    }

    /// The first text channel with this (rewritten) name.
    pub fn channel_named(&self, name: &str) -> Option<&Channel> {
        let wanted = text_channel_name(name).unwrap_or_else(|_| name.to_owned());
        self.channels
            .values()
            .find(|c| c.kind == TEXT && c.name == wanted)
    }

    /// Creates a channel, rewriting a text channel's name as Discord does; returns its id.
    pub fn create_channel(&mut self, spec: ChannelSpec) -> Result<u64, ApiError> {
        if spec.kind != TEXT && spec.kind != CATEGORY {
            return Err(ApiError::invalid_field(
                "type",
                "BASE_TYPE_CHOICES",
                "Value must be one of {0, 4}.",
            ));
        }
        let name = channel_name(&spec.name, spec.kind)?;
        check_topic(spec.topic.as_deref())?;
        if let Some(parent) = spec.parent_id {
            self.check_parent(parent)?;
        }
        if self.channels.len() >= MAX_CHANNELS {
            return Err(ApiError::too_many_channels());
        }
        let id = self.ids.next();
        let position = self
            .channels
            .values()
            .filter(|c| c.kind == spec.kind)
            .count() as i64;
        let channel = Channel {
            id,
            kind: spec.kind,
            name,
            topic: spec.topic.filter(|_| spec.kind == TEXT),
            position,
            parent_id: spec.parent_id,
            last_message_id: None,
            messages: BTreeMap::new(),
            pins: Vec::new(),
            nonces: HashMap::new(),
        };
        self.channels.insert(id, channel);
        Ok(id)
    }

    fn check_parent(&self, parent: u64) -> Result<(), ApiError> {
        match self.channels.get(&parent) {
            Some(c) if c.kind == CATEGORY => Ok(()),
            _ => Err(ApiError::invalid_field(
                "parent_id",
                "CHANNEL_PARENT_INVALID",
                "Category does not exist",
            )),
        }
    }

    /// Changes a channel's name, topic, category or position.
    pub fn update_channel(&mut self, id: u64, patch: ChannelPatch) -> Result<(), ApiError> {
        let kind = self.channel(id)?.kind;
        let name = patch
            .name
            .as_deref()
            .map(|n| channel_name(n, kind))
            .transpose()?;
        if let Some(topic) = &patch.topic {
            check_topic(topic.as_deref())?;
        }
        if let Some(Some(parent)) = patch.parent_id {
            self.check_parent(parent)?;
        }
        let channel = self.channel_mut(id)?;
        if let Some(name) = name {
            channel.name = name;
        }
        if let Some(topic) = patch.topic {
            channel.topic = topic;
        }
        if let Some(parent) = patch.parent_id {
            channel.parent_id = parent;
        }
        if let Some(position) = patch.position {
            channel.position = position;
        }
        Ok(())
    }

    /// Deletes a channel with its messages and their attachments.
    pub fn delete_channel(&mut self, id: u64) -> Result<Channel, ApiError> {
        let channel = self
            .channels
            .remove(&id)
            .ok_or_else(ApiError::unknown_channel)?;
        for message in channel.messages.values() {
            self.forget_attachments(message);
        }
        for child in self.channels.values_mut() {
            if child.parent_id == Some(id) {
                child.parent_id = None;
            }
        }
        Ok(channel)
    }

    /// Posts a message (or, with `enforce_nonce`, finds the one posted with the same nonce).
    pub fn post_message(
        &mut self,
        channel_id: u64,
        author_id: u64,
        new: NewMessage,
    ) -> Result<Posted, ApiError> {
        let now = Instant::now();
        let nonce_key = new.nonce.as_ref().map(nonce_text);
        let channel = self.channel(channel_id)?;
        if channel.kind != TEXT {
            return Err(ApiError::not_a_text_channel());
        }
        if let (true, Some(key)) = (new.enforce_nonce, &nonce_key)
            && let Some(existing) = channel.remembered_nonce(author_id, key, now)
        {
            return Ok(Posted::Existing(existing));
        }
        let id = self.ids.next();
        let mut attachments = Vec::with_capacity(new.files.len());
        for file in new.files {
            let meta = self.store_attachment(channel_id, file);
            attachments.push(meta);
        }
        let message = Message {
            id,
            channel_id,
            author_id,
            content: new.content,
            nonce: new.nonce,
            kind: DEFAULT_MESSAGE,
            attachments,
            pinned: false,
            reference: None,
        };
        let channel = self.channel_mut(channel_id)?;
        if let Some(key) = nonce_key {
            channel.nonces.retain(|_, (_, at)| now - *at < NONCE_MEMORY);
            channel.nonces.insert((author_id, key), (id, now));
        }
        channel.insert(message);
        Ok(Posted::Created(id))
    }

    fn store_attachment(&mut self, channel_id: u64, file: NewFile) -> AttachmentMeta {
        let id = self.ids.next();
        let filename = sanitize_filename(&file.filename);
        let content_type = file
            .content_type
            .or_else(|| content_type_for(&filename).map(str::to_owned));
        let meta = AttachmentMeta {
            id,
            filename: filename.clone(),
            size: file.data.len() as u64,
            content_type,
        };
        let stored = StoredAttachment {
            channel_id,
            filename,
            data: file.data,
        };
        self.attachments.insert(id, stored);
        meta
    }

    /// Dates new ids `ms` milliseconds in the past (the `backdate` knob).
    pub fn set_backdate_ms(&mut self, ms: u64) {
        self.ids.set_backdate_ms(ms);
    }

    /// A message of a channel.
    pub fn message(&self, channel_id: u64, message_id: u64) -> Result<&Message, ApiError> {
        self.channel(channel_id)?
            .messages
            .get(&message_id)
            .ok_or_else(ApiError::unknown_message)
    }

    /// A page of a channel's history, newest first.
    pub fn history(
        &self,
        channel_id: u64,
        cursor: Cursor,
        limit: usize,
    ) -> Result<Vec<&Message>, ApiError> {
        let messages = &self.channel(channel_id)?.messages;
        let page = match cursor {
            Cursor::Latest => messages.values().rev().take(limit).collect(),
            Cursor::Before(id) => messages
                .range(..id)
                .rev()
                .map(|(_, m)| m)
                .take(limit)
                .collect(),
            Cursor::After(id) => {
                let mut oldest: Vec<&Message> = messages
                    .range(id.saturating_add(1)..)
                    .map(|(_, m)| m)
                    .take(limit)
                    .collect();
                oldest.reverse();
                oldest
            }
            Cursor::Around(id) => {
                let newer_wanted = limit / 2;
                let mut page: Vec<&Message> = messages
                    .range(id.saturating_add(1)..)
                    .map(|(_, m)| m)
                    .take(newer_wanted)
                    .collect();
                page.reverse();
                let older_wanted = limit - page.len();
                page.extend(
                    messages
                        .range(..=id)
                        .rev()
                        .map(|(_, m)| m)
                        .take(older_wanted),
                );
                page
            }
        };
        Ok(page)
    }

    /// Deletes a message and its attachments.
    pub fn delete_message(
        &mut self,
        channel_id: u64,
        message_id: u64,
    ) -> Result<Message, ApiError> {
        let channel = self.channel_mut(channel_id)?;
        let message = channel
            .messages
            .remove(&message_id)
            .ok_or_else(ApiError::unknown_message)?;
        channel.pins.retain(|p| p.message_id != message_id);
        self.forget_attachments(&message);
        Ok(message)
    }

    /// Deletes several messages at once; unknown ids are skipped. Refuses (deleting
    /// nothing) if any of them is older than two weeks.
    pub fn bulk_delete(&mut self, channel_id: u64, ids: &[u64]) -> Result<usize, ApiError> {
        self.channel(channel_id)?;
        let oldest_allowed = now_ms().saturating_sub(BULK_DELETE_MAX_AGE_MS);
        if ids.iter().any(|&id| snowflake_ms(id) < oldest_allowed) {
            return Err(ApiError::too_old_to_bulk_delete());
        }
        let mut deleted = 0;
        for &id in ids {
            if self.delete_message(channel_id, id).is_ok() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    fn forget_attachments(&mut self, message: &Message) {
        for attachment in &message.attachments {
            self.attachments.remove(&attachment.id);
        }
    }

    /// Pins a message and posts the pin notice (by `pinned_by`), as Discord does.
    pub fn pin(
        &mut self,
        channel_id: u64,
        message_id: u64,
        pinned_by: u64,
    ) -> Result<(), ApiError> {
        let channel = self.channel(channel_id)?;
        let message = channel
            .messages
            .get(&message_id)
            .ok_or_else(ApiError::unknown_message)?;
        if message.pinned {
            return Ok(());
        }
        if channel.pins.len() >= MAX_PINS {
            return Err(ApiError::too_many_pins());
        }
        let notice_id = self.ids.next();
        let channel = self.channel_mut(channel_id)?;
        if let Some(message) = channel.messages.get_mut(&message_id) {
            message.pinned = true;
        }
        channel.pins.push(Pin {
            message_id,
            pinned_at_ms: now_ms(),
        });
        channel.insert(Message {
            id: notice_id,
            channel_id,
            author_id: pinned_by,
            content: String::new(),
            nonce: None,
            kind: PIN_NOTICE,
            attachments: Vec::new(),
            pinned: false,
            reference: Some(message_id),
        });
        Ok(())
    }

    /// Unpins a message (a message that is not pinned stays so).
    pub fn unpin(&mut self, channel_id: u64, message_id: u64) -> Result<(), ApiError> {
        let channel = self.channel_mut(channel_id)?;
        let message = channel
            .messages
            .get_mut(&message_id)
            .ok_or_else(ApiError::unknown_message)?;
        message.pinned = false;
        channel.pins.retain(|p| p.message_id != message_id);
        Ok(())
    }

    /// Pinned messages with their pin time, most recently pinned first.
    pub fn pins(&self, channel_id: u64) -> Result<Vec<(&Message, u64)>, ApiError> {
        let channel = self.channel(channel_id)?;
        Ok(channel
            .pins
            .iter()
            .rev()
            .filter_map(|pin| Some((channel.messages.get(&pin.message_id)?, pin.pinned_at_ms)))
            .collect())
    }

    /// An attachment's bytes, while its message exists.
    pub fn attachment(&self, id: u64) -> Option<&StoredAttachment> {
        self.attachments.get(&id)
    }

    /// The time of the latest pin in a channel.
    pub fn last_pin_ms(&self, channel_id: u64) -> Option<u64> {
        self.channels
            .get(&channel_id)?
            .pins
            .iter()
            .map(|p| p.pinned_at_ms)
            .max()
    }
}

impl Channel {
    fn insert(&mut self, message: Message) {
        self.last_message_id = Some(message.id);
        self.messages.insert(message.id, message);
    }

    fn remembered_nonce(&self, author_id: u64, nonce: &str, now: Instant) -> Option<u64> {
        let (id, at) = self.nonces.get(&(author_id, nonce.to_owned()))?;
        (now - *at < NONCE_MEMORY && self.messages.contains_key(id)).then_some(*id)
    }
}

/// A nonce as text, so `"12"` and `12` are the same nonce.
fn nonce_text(nonce: &Value) -> String {
    match nonce {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn channel_name(raw: &str, kind: u8) -> Result<String, ApiError> {
    if kind == TEXT {
        return text_channel_name(raw);
    }
    let length = raw.chars().count();
    if length == 0 || length > MAX_NAME {
        return Err(bad_name_length());
    }
    Ok(raw.to_owned())
}

fn bad_name_length() -> ApiError {
    ApiError::invalid_field(
        "name",
        "BASE_TYPE_BAD_LENGTH",
        &format!("Must be between 1 and {MAX_NAME} in length."),
    )
}

fn check_topic(topic: Option<&str>) -> Result<(), ApiError> {
    match topic {
        Some(topic) if topic.chars().count() > MAX_TOPIC => {
            Err(ApiError::too_long("topic", MAX_TOPIC))
        }
        _ => Ok(()),
    }
}

/// A text channel name as Discord rewrites it: lowercase, runs of whitespace and dashes
/// become one dash, ASCII punctuation other than `-` and `_` is dropped.
pub fn text_channel_name(raw: &str) -> Result<String, ApiError> {
    if raw.chars().count() > MAX_NAME {
        return Err(bad_name_length());
    }
    let mut name = String::with_capacity(raw.len());
    for c in raw.trim().chars().flat_map(char::to_lowercase) {
        let mapped = match c {
            c if c.is_whitespace() || c == '-' => '-',
            '_' => '_',
            c if c.is_ascii_punctuation() || c.is_control() => continue,
            c => c,
        };
        if mapped == '-' && name.ends_with('-') {
            continue;
        }
        name.push(mapped);
    }
    if name.is_empty() || name == "-" {
        return Err(bad_name_length());
    }
    Ok(name)
}

/// An attachment name as Discord stores it: characters outside `[A-Za-z0-9._-]` become `_`.
pub fn sanitize_filename(raw: &str) -> String {
    let name: String = raw
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .collect();
    if name.is_empty() {
        "unknown".to_owned()
    } else {
        name
    }
}

/// The MIME type Discord reports for a file name's extension (none for unknown ones).
fn content_type_for(filename: &str) -> Option<&'static str> {
    let extension = filename.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match extension.as_str() {
        "txt" => "text/plain; charset=utf-8",
        "json" => "application/json; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "bin" => "application/octet-stream",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guild() -> GuildState {
        GuildState::new(1_300_000_000_000_000_001, 42, &["general".to_owned()], 0)
    }

    fn text(content: &str) -> NewMessage {
        NewMessage {
            content: content.to_owned(),
            ..NewMessage::default()
        }
    }

    #[test]
    fn text_channel_names_are_rewritten() {
        assert_eq!(text_channel_name("  My  Folder! ").unwrap(), "my-folder");
        assert_eq!(text_channel_name("a -- b_c.d").unwrap(), "a-b_cd");
        assert_eq!(text_channel_name("Ünïcode Ok").unwrap(), "ünïcode-ok");
        assert!(text_channel_name("!!!").is_err());
        assert!(text_channel_name("").is_err());
        assert!(text_channel_name(&"x".repeat(101)).is_err());
    }

    #[test]
    fn history_pages_newest_first_in_every_mode() {
        let mut guild = guild();
        let channel = guild.channel_named("general").unwrap().id;
        let ids: Vec<u64> = (0..10)
            .map(|i| {
                match guild
                    .post_message(channel, 42, text(&i.to_string()))
                    .unwrap()
                {
                    Posted::Created(id) => id,
                    Posted::Existing(_) => unreachable!(),
                }
            })
            .collect();
        let page = |cursor, limit| -> Vec<u64> {
            guild
                .history(channel, cursor, limit)
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect()
        };
        assert_eq!(page(Cursor::Latest, 3), vec![ids[9], ids[8], ids[7]]);
        assert_eq!(page(Cursor::Before(ids[7]), 2), vec![ids[6], ids[5]]);
        assert_eq!(page(Cursor::After(ids[2]), 3), vec![ids[5], ids[4], ids[3]]);
        assert_eq!(
            page(Cursor::Around(ids[5]), 4),
            vec![ids[7], ids[6], ids[5], ids[4]]
        );
    }

    #[test]
    fn enforce_nonce_returns_the_earlier_message() {
        let mut guild = guild();
        let channel = guild.channel_named("general").unwrap().id;
        let with_nonce = |enforce| NewMessage {
            nonce: Some(Value::from("n-1")),
            enforce_nonce: enforce,
            ..text("x")
        };
        let first = guild.post_message(channel, 42, with_nonce(true)).unwrap();
        let Posted::Created(id) = first else { panic!() };
        assert_eq!(
            guild.post_message(channel, 42, with_nonce(true)).unwrap(),
            Posted::Existing(id)
        );
        assert!(matches!(
            guild.post_message(channel, 42, with_nonce(false)).unwrap(),
            Posted::Created(_)
        ));
    }

    #[test]
    fn pinning_posts_a_notice_and_deleting_forgets_attachments() {
        let mut guild = guild();
        let channel = guild.channel_named("general").unwrap().id;
        let file = NewFile {
            filename: "a b.bin".to_owned(),
            data: Bytes::from_static(b"abc"),
            content_type: None,
        };
        let new = NewMessage {
            files: vec![file],
            ..NewMessage::default()
        };
        let Posted::Created(id) = guild.post_message(channel, 42, new).unwrap() else {
            panic!()
        };
        let attachment = guild.message(channel, id).unwrap().attachments[0].clone();
        assert_eq!(attachment.filename, "a_b.bin");
        guild.pin(channel, id, 42).unwrap();
        assert_eq!(guild.pins(channel).unwrap().len(), 1);
        let notice = guild.history(channel, Cursor::Latest, 1).unwrap()[0];
        assert_eq!((notice.kind, notice.reference), (PIN_NOTICE, Some(id)));
        guild.delete_message(channel, id).unwrap();
        assert!(guild.attachment(attachment.id).is_none());
        assert!(guild.pins(channel).unwrap().is_empty());
    }
}
