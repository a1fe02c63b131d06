//! The REST endpoints: each checks what Discord checks (the resource exists, the bot's
//! permissions, the request's limits) in Discord's order and answers with Discord's JSON.

use crate::config::Knobs;
use crate::error::ApiError;
use crate::multipart::{self, Part};
use crate::permissions::{
    ATTACH_FILES, MANAGE_CHANNELS, MANAGE_MESSAGES, PIN_MESSAGES, READ_MESSAGE_HISTORY,
    SEND_MESSAGES, VIEW_CHANNEL, allows,
};
use crate::render::{self, UrlContext};
use crate::routes::Route;
use crate::server::Shared;
use crate::state::{
    ChannelPatch, ChannelSpec, Cursor, GuildState, Message, NewFile, NewMessage, Posted, TEXT,
};
use crate::time::{iso8601, now_ms, parse_iso8601};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::MutexGuard;

const MAX_CONTENT: usize = 2000;
const MAX_NONCE: usize = 25;
const MAX_REFRESH_URLS: usize = 50;

/// What an endpoint gets from the request.
pub struct ApiRequest<'a> {
    /// The query string (without `?`).
    pub query: &'a str,
    /// The Content-Type header.
    pub content_type: &'a str,
    /// The body.
    pub body: Bytes,
}

/// A successful answer.
pub enum Reply {
    /// A JSON body with this status.
    Json(u16, Value),
    /// 204.
    NoContent,
}

type Outcome = Result<Reply, ApiError>;

/// Runs the endpoint of `route`.
pub fn dispatch(shared: &Shared, knobs: &Knobs, route: Route, request: &ApiRequest) -> Outcome {
    let mut api = Endpoints {
        guild: shared.guild(),
        knobs,
        shared,
    };
    match route {
        Route::CurrentUser => api.current_user(),
        Route::GetUser(user) => api.get_user(user),
        Route::GetGuild(guild) => api.get_guild(guild, request),
        Route::GetRoles(guild) => api.get_roles(guild),
        Route::ListMembers(guild) => api.list_members(guild, request),
        Route::GetMember(guild, user) => api.get_member(guild, user),
        Route::GetChannels(guild) => api.get_channels(guild),
        Route::CreateChannel(guild) => api.create_channel(guild, request),
        Route::GetChannel(channel) => api.get_channel(channel),
        Route::UpdateChannel(channel) => api.update_channel(channel, request),
        Route::DeleteChannel(channel) => api.delete_channel(channel),
        Route::CreateMessage(channel) => api.create_message(channel, request),
        Route::GetMessages(channel) => api.get_messages(channel, request),
        Route::GetMessage(channel, message) => api.get_message(channel, message),
        Route::DeleteMessage(channel, message) => api.delete_message(channel, message),
        Route::BulkDelete(channel) => api.bulk_delete(channel, request),
        Route::GetPinsLegacy(channel) => api.get_pins_legacy(channel),
        Route::GetPins(channel) => api.get_pins(channel, request),
        Route::PinLegacy(channel, message) | Route::Pin(channel, message) => {
            api.pin(channel, message)
        }
        Route::UnpinLegacy(channel, message) | Route::Unpin(channel, message) => {
            api.unpin(channel, message)
        }
        Route::RefreshUrls => api.refresh_urls(request),
    }
}

struct Endpoints<'a> {
    guild: MutexGuard<'a, GuildState>,
    knobs: &'a Knobs,
    shared: &'a Shared,
}

impl Endpoints<'_> {
    fn current_user(&self) -> Outcome {
        let bot = self
            .guild
            .user(self.guild.bot_user_id)
            .ok_or_else(ApiError::unknown_user)?;
        Ok(Reply::Json(200, render::current_user(bot)))
    }

    fn get_user(&self, user: u64) -> Outcome {
        let user = self.guild.user(user).ok_or_else(ApiError::unknown_user)?;
        Ok(Reply::Json(200, render::user(user)))
    }

    fn get_guild(&self, guild: u64, request: &ApiRequest) -> Outcome {
        self.check_guild(guild)?;
        let with_counts = query_param(request.query, "with_counts") == Some("true");
        Ok(Reply::Json(
            200,
            render::guild(&self.guild, self.knobs, with_counts),
        ))
    }

    fn get_roles(&self, guild: u64) -> Outcome {
        self.check_guild(guild)?;
        Ok(Reply::Json(
            200,
            json!(render::roles(&self.guild, self.knobs)),
        ))
    }

    fn list_members(&self, guild: u64, request: &ApiRequest) -> Outcome {
        self.check_guild(guild)?;
        if !self.knobs.members_intent {
            return Err(ApiError::missing_access());
        }
        let limit = int_param(request.query, "limit", 1, 1, 1000)?;
        let after = snowflake_param(request.query, "after")?.unwrap_or(0);
        let members: Vec<Value> = self
            .guild
            .members()
            .filter(|(user, _)| user.id > after)
            .take(limit)
            .map(|(user, joined)| render::member(&self.guild, user, joined))
            .collect();
        Ok(Reply::Json(200, json!(members)))
    }

    fn get_member(&self, guild: u64, user: u64) -> Outcome {
        self.check_guild(guild)?;
        let (user, joined) = self
            .guild
            .member(user)
            .ok_or_else(ApiError::unknown_member)?;
        Ok(Reply::Json(200, render::member(&self.guild, user, joined)))
    }

    fn get_channels(&self, guild: u64) -> Outcome {
        self.check_guild(guild)?;
        let channels: Vec<Value> = self
            .guild
            .channels()
            .into_iter()
            .map(|c| render::channel(&self.guild, c))
            .collect();
        Ok(Reply::Json(200, json!(channels)))
    }

    fn create_channel(&mut self, guild: u64, request: &ApiRequest) -> Outcome {
        self.check_guild(guild)?;
        self.require(MANAGE_CHANNELS)?;
        let body: CreateChannelBody = json_body(&request.body)?;
        let spec = ChannelSpec {
            name: body.name.ok_or_else(|| ApiError::required("name"))?,
            kind: body.kind.unwrap_or(TEXT),
            topic: body.topic,
            parent_id: optional_snowflake(body.parent_id.as_ref(), "parent_id")?,
        };
        let id = self.guild.create_channel(spec)?;
        let rendered = render::channel(&self.guild, self.guild.channel(id)?);
        self.shared.count(|s| s.channels_created += 1);
        Ok(Reply::Json(201, rendered))
    }

    fn get_channel(&self, channel: u64) -> Outcome {
        let found = self.visible_channel(channel)?;
        Ok(Reply::Json(200, render::channel(&self.guild, found)))
    }

    fn update_channel(&mut self, channel: u64, request: &ApiRequest) -> Outcome {
        self.visible_channel(channel)?;
        self.require(MANAGE_CHANNELS)?;
        let body: Value = json_body(&request.body)?;
        let patch = channel_patch(&body)?;
        self.guild.update_channel(channel, patch)?;
        let updated = self.guild.channel(channel)?;
        Ok(Reply::Json(200, render::channel(&self.guild, updated)))
    }

    fn delete_channel(&mut self, channel: u64) -> Outcome {
        self.visible_channel(channel)?;
        self.require(MANAGE_CHANNELS)?;
        let deleted = self.guild.delete_channel(channel)?;
        Ok(Reply::Json(200, render::channel(&self.guild, &deleted)))
    }

    fn create_message(&mut self, channel: u64, request: &ApiRequest) -> Outcome {
        self.visible_channel(channel)?;
        self.require(SEND_MESSAGES)?;
        let new = self.message_from(request)?;
        if !new.files.is_empty() {
            self.require(ATTACH_FILES)?;
        }
        let (files, bytes) = (
            new.files.len() as u64,
            new.files.iter().map(|f| f.data.len() as u64).sum::<u64>(),
        );
        let bot = self.guild.bot_user_id;
        match self.guild.post_message(channel, bot, new)? {
            Posted::Created(id) => {
                self.shared.count(|s| {
                    s.messages_created += 1;
                    s.attachments_created += files;
                    s.bytes_uploaded += bytes;
                });
                self.message_reply(channel, id)
            }
            Posted::Existing(id) => self.message_reply(channel, id),
        }
    }

    /// Reads and checks a message to create from a JSON or multipart body.
    fn message_from(&self, request: &ApiRequest) -> Result<NewMessage, ApiError> {
        let (payload, parts) = match multipart::boundary(request.content_type) {
            Some(boundary) => {
                let parts = multipart::parse(&request.body, &boundary)
                    .map_err(|e| ApiError::invalid_field("files", "MULTIPART_INVALID", e.0))?;
                (payload_from_parts(&parts)?, parts)
            }
            None => (json_body::<MessagePayload>(&request.body)?, Vec::new()),
        };
        let files = files_from_parts(parts, &payload);
        self.check_message(&payload, &files)?;
        Ok(NewMessage {
            content: payload.content.unwrap_or_default(),
            nonce: payload.nonce,
            enforce_nonce: payload.enforce_nonce.unwrap_or(false),
            files,
        })
    }

    fn check_message(&self, payload: &MessagePayload, files: &[NewFile]) -> Result<(), ApiError> {
        let content = payload.content.as_deref().unwrap_or("");
        if content.chars().count() > MAX_CONTENT {
            return Err(ApiError::too_long("content", MAX_CONTENT));
        }
        check_nonce(payload.nonce.as_ref())?;
        if files.len() > self.knobs.max_attachments {
            return Err(ApiError::too_long(
                "attachments",
                self.knobs.max_attachments,
            ));
        }
        let sizes = files.iter().map(|f| f.data.len() as u64);
        let total: u64 = sizes.clone().sum();
        let file_too_large = sizes.clone().any(|size| size > self.knobs.max_file_size);
        let request_too_large = files.len() > 1 && total > self.knobs.max_request_size;
        if file_too_large || request_too_large {
            return Err(ApiError::too_large());
        }
        if content.trim().is_empty() && files.is_empty() {
            return Err(ApiError::empty_message());
        }
        Ok(())
    }

    fn get_messages(&self, channel: u64, request: &ApiRequest) -> Outcome {
        self.visible_channel(channel)?;
        let limit = int_param(request.query, "limit", 50, 1, 100)?;
        let cursor = cursor_from(request.query)?;
        if !self.holds(READ_MESSAGE_HISTORY) {
            return Ok(Reply::Json(200, json!([])));
        }
        let urls = self.urls();
        let page: Vec<Value> = self
            .guild
            .history(channel, cursor, limit)?
            .into_iter()
            .map(|m| render::message(&self.guild, m, &urls))
            .collect();
        Ok(Reply::Json(200, json!(page)))
    }

    fn get_message(&self, channel: u64, message: u64) -> Outcome {
        self.visible_channel(channel)?;
        if !self.holds(READ_MESSAGE_HISTORY) {
            return Err(ApiError::missing_access());
        }
        self.message_reply(channel, message)
    }

    fn delete_message(&mut self, channel: u64, message: u64) -> Outcome {
        self.visible_channel(channel)?;
        let author = self.guild.message(channel, message)?.author_id;
        if author != self.guild.bot_user_id {
            self.require(MANAGE_MESSAGES)?;
        }
        self.guild.delete_message(channel, message)?;
        self.shared.count(|s| s.messages_deleted += 1);
        Ok(Reply::NoContent)
    }

    fn bulk_delete(&mut self, channel: u64, request: &ApiRequest) -> Outcome {
        self.visible_channel(channel)?;
        self.require(MANAGE_MESSAGES)?;
        let body: BulkDeleteBody = json_body(&request.body)?;
        let messages = body
            .messages
            .ok_or_else(|| ApiError::required("messages"))?;
        if !(2..=100).contains(&messages.len()) {
            return Err(ApiError::invalid_field(
                "messages",
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 2 and 100 in length.",
            ));
        }
        let mut ids = messages
            .iter()
            .map(|v| snowflake_value(v, "messages"))
            .collect::<Result<Vec<u64>, ApiError>>()?;
        ids.sort_unstable();
        ids.dedup();
        let deleted = self.guild.bulk_delete(channel, &ids)? as u64;
        self.shared.count(|s| s.messages_deleted += deleted);
        Ok(Reply::NoContent)
    }

    fn get_pins_legacy(&self, channel: u64) -> Outcome {
        self.readable_channel(channel)?;
        let urls = self.urls();
        let pins: Vec<Value> = self
            .guild
            .pins(channel)?
            .into_iter()
            .map(|(m, _)| render::message(&self.guild, m, &urls))
            .collect();
        Ok(Reply::Json(200, json!(pins)))
    }

    fn get_pins(&self, channel: u64, request: &ApiRequest) -> Outcome {
        self.readable_channel(channel)?;
        let limit = int_param(request.query, "limit", 50, 1, 50)?;
        let before = match query_param(request.query, "before") {
            Some(text) => Some(parse_iso8601(&percent_decode(text)).ok_or_else(|| {
                ApiError::invalid_field("before", "DATE_TYPE_PARSE", "Could not parse date.")
            })?),
            None => None,
        };
        let urls = self.urls();
        let older: Vec<(&Message, u64)> = self
            .guild
            .pins(channel)?
            .into_iter()
            .filter(|(_, at)| before.is_none_or(|before| *at < before))
            .collect();
        let items: Vec<Value> = older
            .iter()
            .take(limit)
            .map(|(m, at)| {
                json!({"pinned_at": iso8601(*at), "message": render::message(&self.guild, m, &urls)})
            })
            .collect();
        let has_more = older.len() > limit;
        Ok(Reply::Json(
            200,
            json!({"items": items, "has_more": has_more}),
        ))
    }

    fn pin(&mut self, channel: u64, message: u64) -> Outcome {
        self.visible_channel(channel)?;
        self.require_pinning()?;
        let bot = self.guild.bot_user_id;
        self.guild.pin(channel, message, bot)?;
        Ok(Reply::NoContent)
    }

    fn unpin(&mut self, channel: u64, message: u64) -> Outcome {
        self.visible_channel(channel)?;
        self.require_pinning()?;
        self.guild.unpin(channel, message)?;
        Ok(Reply::NoContent)
    }

    fn refresh_urls(&self, request: &ApiRequest) -> Outcome {
        let body: RefreshBody = json_body(&request.body)?;
        let urls = body
            .attachment_urls
            .ok_or_else(|| ApiError::required("attachment_urls"))?;
        if urls.len() > MAX_REFRESH_URLS {
            return Err(ApiError::too_long("attachment_urls", MAX_REFRESH_URLS));
        }
        let signing = self.urls();
        let refreshed: Vec<Value> = urls
            .iter()
            .filter_map(|original| {
                let (channel, attachment, filename) = attachment_of_url(original)?;
                let stored = self.guild.attachment(attachment)?;
                (stored.channel_id == channel && stored.filename == filename).then(|| {
                    let fresh = signing.attachment_url(channel, attachment, &stored.filename);
                    json!({"original": original, "refreshed": fresh})
                })
            })
            .collect();
        Ok(Reply::Json(200, json!({"refreshed_urls": refreshed})))
    }

    // Helpers.

    fn message_reply(&self, channel: u64, message: u64) -> Outcome {
        let found = self.guild.message(channel, message)?;
        Ok(Reply::Json(
            200,
            render::message(&self.guild, found, &self.urls()),
        ))
    }

    fn urls(&self) -> UrlContext<'_> {
        UrlContext {
            base: &self.shared.api_base,
            signer: &self.guild.signer,
            lifetime: self.knobs.url_lifetime,
            now_ms: now_ms(),
        }
    }

    fn check_guild(&self, guild: u64) -> Result<(), ApiError> {
        if guild == self.guild.guild_id {
            Ok(())
        } else {
            Err(ApiError::unknown_guild())
        }
    }

    fn holds(&self, needed: u64) -> bool {
        allows(self.knobs.bot_permission_bits(), needed)
    }

    fn require(&self, needed: u64) -> Result<(), ApiError> {
        if self.holds(needed) {
            Ok(())
        } else {
            Err(ApiError::missing_permissions())
        }
    }

    fn require_pinning(&self) -> Result<(), ApiError> {
        if self.holds(MANAGE_MESSAGES) || self.holds(PIN_MESSAGES) {
            Ok(())
        } else {
            Err(ApiError::missing_permissions())
        }
    }

    /// The channel, if it exists (10003) and the bot can see it (50001).
    fn visible_channel(&self, channel: u64) -> Result<&crate::state::Channel, ApiError> {
        let found = self.guild.channel(channel)?;
        if self.holds(VIEW_CHANNEL) {
            Ok(found)
        } else {
            Err(ApiError::missing_access())
        }
    }

    /// The channel, if the bot can also read its history.
    fn readable_channel(&self, channel: u64) -> Result<(), ApiError> {
        self.visible_channel(channel)?;
        if self.holds(READ_MESSAGE_HISTORY) {
            Ok(())
        } else {
            Err(ApiError::missing_access())
        }
    }
}

#[derive(Deserialize, Default)]
struct MessagePayload {
    content: Option<String>,
    nonce: Option<Value>,
    enforce_nonce: Option<bool>,
    attachments: Option<Vec<PayloadAttachment>>,
}

#[derive(Deserialize)]
struct PayloadAttachment {
    id: Value,
    filename: Option<String>,
}

#[derive(Deserialize)]
struct CreateChannelBody {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<u8>,
    topic: Option<String>,
    parent_id: Option<Value>,
}

#[derive(Deserialize)]
struct BulkDeleteBody {
    messages: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct RefreshBody {
    attachment_urls: Option<Vec<String>>,
}

/// A JSON body (an empty body reads as `{}`): 50109 if it is not JSON, 50035 if it has
/// the wrong shape.
fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|error| {
        if error.is_syntax() || error.is_eof() {
            ApiError::invalid_json()
        } else {
            ApiError::invalid_field("_errors", "BASE_TYPE_BAD", &error.to_string())
        }
    })
}

fn payload_from_parts(parts: &[Part]) -> Result<MessagePayload, ApiError> {
    let mut payload = match parts.iter().find(|p| p.name == "payload_json") {
        Some(part) => json_body(&part.data)?,
        None => MessagePayload::default(),
    };
    if let Some(content) = parts
        .iter()
        .find(|p| p.name == "content" && p.filename.is_none())
    {
        payload.content = Some(String::from_utf8_lossy(&content.data).into_owned());
    }
    Ok(payload)
}

/// The file parts of a form, named by `attachments[].filename` when the payload gives one
/// for the part's `files[N]` index, else by the part's own filename.
fn files_from_parts(parts: Vec<Part>, payload: &MessagePayload) -> Vec<NewFile> {
    parts
        .into_iter()
        .filter(|p| p.name != "payload_json")
        .filter(|p| p.filename.is_some() || p.name.starts_with("file"))
        .map(|part| {
            let declared = declared_filename(&part.name, payload);
            NewFile {
                filename: declared
                    .or(part.filename)
                    .unwrap_or_else(|| "unknown".to_owned()),
                data: part.data,
                content_type: part
                    .content_type
                    .filter(|ct| !ct.eq_ignore_ascii_case("application/octet-stream")),
            }
        })
        .collect()
}

fn declared_filename(part_name: &str, payload: &MessagePayload) -> Option<String> {
    let index = part_name.strip_prefix("files[")?.strip_suffix(']')?;
    payload.attachments.as_ref()?.iter().find_map(|a| {
        let id = match &a.id {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        (id == index).then(|| a.filename.clone()).flatten()
    })
}

fn check_nonce(nonce: Option<&Value>) -> Result<(), ApiError> {
    match nonce {
        None | Some(Value::Null) | Some(Value::Number(_)) => Ok(()),
        Some(Value::String(text)) if text.chars().count() <= MAX_NONCE => Ok(()),
        Some(Value::String(_)) => Err(ApiError::too_long("nonce", MAX_NONCE)),
        Some(_) => Err(ApiError::invalid_field(
            "nonce",
            "BASE_TYPE_BAD",
            "Must be a string or an integer.",
        )),
    }
}

fn channel_patch(body: &Value) -> Result<ChannelPatch, ApiError> {
    let text = |field: &str| -> Result<Option<Option<String>>, ApiError> {
        match body.get(field) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
            Some(_) => Err(ApiError::invalid_field(
                field,
                "BASE_TYPE_STRING",
                "Must be a string.",
            )),
        }
    };
    let name = match text("name")? {
        Some(Some(name)) => Some(name),
        Some(None) => return Err(ApiError::required("name")),
        None => None,
    };
    let parent_id = match body.get("parent_id") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(value) => Some(Some(snowflake_value(value, "parent_id")?)),
    };
    Ok(ChannelPatch {
        name,
        topic: text("topic")?,
        parent_id,
        position: body.get("position").and_then(Value::as_i64),
    })
}

/// A snowflake given as a string of digits or a number.
fn snowflake_value(value: &Value, field: &str) -> Result<u64, ApiError> {
    match value {
        Value::String(text) => text.parse().ok(),
        Value::Number(number) => number.as_u64(),
        _ => None,
    }
    .ok_or_else(|| ApiError::not_snowflake(field, &value.to_string()))
}

fn optional_snowflake(value: Option<&Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => snowflake_value(value, field).map(Some),
    }
}

/// The raw value of a query parameter.
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// An integer query parameter in `min..=max` (50035 otherwise), `default` if absent.
fn int_param(
    query: &str,
    name: &str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(text) = query_param(query, name) else {
        return Ok(default);
    };
    let value: usize = text.parse().map_err(|_| {
        ApiError::invalid_field(
            name,
            "NUMBER_TYPE_COERCE",
            &format!("Value \"{text}\" is not int."),
        )
    })?;
    if value < min {
        return Err(ApiError::invalid_field(
            name,
            "NUMBER_TYPE_MIN",
            &format!("int value should be greater than or equal to {min}."),
        ));
    }
    if value > max {
        return Err(ApiError::invalid_field(
            name,
            "NUMBER_TYPE_MAX",
            &format!("int value should be less than or equal to {max}."),
        ));
    }
    Ok(value)
}

fn snowflake_param(query: &str, name: &str) -> Result<Option<u64>, ApiError> {
    query_param(query, name)
        .map(|text| {
            text.parse()
                .map_err(|_| ApiError::not_snowflake(name, text))
        })
        .transpose()
}

/// The history cursor of a query: `around`, else `before`, else `after`.
fn cursor_from(query: &str) -> Result<Cursor, ApiError> {
    if let Some(id) = snowflake_param(query, "around")? {
        return Ok(Cursor::Around(id));
    }
    if let Some(id) = snowflake_param(query, "before")? {
        return Ok(Cursor::Before(id));
    }
    if let Some(id) = snowflake_param(query, "after")? {
        return Ok(Cursor::After(id));
    }
    Ok(Cursor::Latest)
}

/// Decodes `%XX` escapes (enough for timestamps in query strings).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// (channel, attachment, filename) of an attachment URL.
fn attachment_of_url(url: &str) -> Option<(u64, u64, String)> {
    let path = &url[url.find("/attachments/")? + "/attachments/".len()..];
    let path = path.split(['?', '#']).next()?;
    let mut segments = path.split('/');
    let channel = segments.next()?.parse().ok()?;
    let attachment = segments.next()?.parse().ok()?;
    let filename = segments.next()?.to_owned();
    segments
        .next()
        .is_none()
        .then_some((channel, attachment, filename))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_helpers_read_and_validate() {
        assert_eq!(int_param("limit=7", "limit", 50, 1, 100), Ok(7));
        assert_eq!(int_param("", "limit", 50, 1, 100), Ok(50));
        assert_eq!(
            int_param("limit=101", "limit", 50, 1, 100)
                .unwrap_err()
                .code,
            50035
        );
        assert_eq!(
            int_param("limit=0", "limit", 50, 1, 100).unwrap_err().code,
            50035
        );
        assert_eq!(cursor_from("after=5&limit=2"), Ok(Cursor::After(5)));
        assert_eq!(
            percent_decode("2024-01-01T00%3A00%3A00%2B00%3A00"),
            "2024-01-01T00:00:00+00:00"
        );
        assert_eq!(
            attachment_of_url("http://h/attachments/1/2/a.bin?ex=1&is=2&hm=3&"),
            Some((1, 2, "a.bin".to_owned()))
        );
    }
}
