//! The JSON objects of Discord's API (user, guild, role, member, channel, message,
//! attachment), with the fields Discord sends, so that clients' models (twilight's among
//! them) deserialize them. Ids are strings, as on Discord.

use crate::config::Knobs;
use crate::signing::UrlSigner;
use crate::state::{AttachmentMeta, CATEGORY, Channel, GuildState, Message, PIN_NOTICE, User};
use crate::time::{iso8601, snowflake_ms};
use serde_json::{Value, json};
use std::time::Duration;

/// What signing attachment URLs needs.
pub struct UrlContext<'a> {
    /// `http://127.0.0.1:PORT`.
    pub base: &'a str,
    /// The current signer.
    pub signer: &'a UrlSigner,
    /// Lifetime of the URLs signed now.
    pub lifetime: Duration,
    /// Now, in Unix ms.
    pub now_ms: u64,
}

impl UrlContext<'_> {
    /// A signed CDN URL of an attachment.
    pub fn attachment_url(&self, channel_id: u64, attachment_id: u64, filename: &str) -> String {
        let path = attachment_path(channel_id, attachment_id, filename);
        let query = self.signer.query(&path, self.now_ms, self.lifetime);
        format!("{}{path}?{query}", self.base)
    }
}

/// The CDN path of an attachment (what the signature covers).
pub fn attachment_path(channel_id: u64, attachment_id: u64, filename: &str) -> String {
    format!("/attachments/{channel_id}/{attachment_id}/{filename}")
}

/// A user object.
pub fn user(user: &User) -> Value {
    json!({
        "id": user.id.to_string(),
        "username": user.username,
        "avatar": null,
        "discriminator": if user.bot { "4242" } else { "0" },
        "public_flags": 0,
        "flags": 0,
        "bot": user.bot,
        "banner": null,
        "accent_color": null,
        "global_name": null,
        "avatar_decoration_data": null,
        "banner_color": null,
    })
}

/// The current user object (`GET /users/@me`).
pub fn current_user(bot: &User) -> Value {
    let mut object = user(bot);
    object["mfa_enabled"] = json!(false);
    object["locale"] = json!("en-US");
    object["verified"] = json!(true);
    object["email"] = Value::Null;
    object["premium_type"] = json!(0);
    object
}

/// The guild's roles: @everyone (id = guild id) and the bot's managed role.
pub fn roles(guild: &GuildState, knobs: &Knobs) -> Vec<Value> {
    let everyone = role(
        guild.guild_id,
        "@everyone",
        0,
        knobs.everyone_permissions,
        None,
    );
    let bot = role(
        guild.bot_role_id,
        "dcloud-bot",
        1,
        knobs.bot_permissions,
        Some(guild.bot_user_id),
    );
    vec![everyone, bot]
}

fn role(id: u64, name: &str, position: i64, permissions: u64, bot_id: Option<u64>) -> Value {
    let mut object = json!({
        "id": id.to_string(),
        "name": name,
        "description": null,
        "permissions": permissions.to_string(),
        "position": position,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": null, "tertiary_color": null},
        "hoist": false,
        "managed": bot_id.is_some(),
        "mentionable": false,
        "icon": null,
        "unicode_emoji": null,
        "flags": 0,
    });
    if let Some(bot_id) = bot_id {
        object["tags"] = json!({"bot_id": bot_id.to_string()});
    }
    object
}

/// The guild object (`GET /guilds/{id}`).
pub fn guild(guild: &GuildState, knobs: &Knobs, with_counts: bool) -> Value {
    let tier = knobs.effective_premium_tier();
    let boosts = [0, 2, 7, 14][usize::from(tier.min(3))];
    let mut object = json!({
        "id": guild.guild_id.to_string(),
        "name": "dcloud fake guild",
        "icon": null,
        "icon_hash": null,
        "description": null,
        "splash": null,
        "discovery_splash": null,
        "banner": null,
        "features": [],
        "owner_id": guild.owner_id.to_string(),
        "application_id": null,
        "region": "deprecated",
        "afk_channel_id": null,
        "afk_timeout": 300,
        "system_channel_id": null,
        "system_channel_flags": 0,
        "widget_enabled": false,
        "widget_channel_id": null,
        "verification_level": 0,
        "roles": roles(guild, knobs),
        "default_message_notifications": 0,
        "mfa_level": 0,
        "explicit_content_filter": 0,
        "max_presences": null,
        "max_members": 500_000,
        "max_stage_video_channel_users": 50,
        "max_video_channel_users": 25,
        "vanity_url_code": null,
        "premium_tier": tier,
        "premium_subscription_count": boosts,
        "premium_progress_bar_enabled": false,
        "preferred_locale": "en-US",
        "rules_channel_id": null,
        "safety_alerts_channel_id": null,
        "public_updates_channel_id": null,
        "nsfw": false,
        "nsfw_level": 0,
        "emojis": [],
        "stickers": [],
        "hub_type": null,
        "incidents_data": null,
    });
    if with_counts {
        object["approximate_member_count"] = json!(guild.members().count());
        object["approximate_presence_count"] = json!(0);
    }
    object
}

/// A guild member object.
pub fn member(guild: &GuildState, member: &User, joined_ms: u64) -> Value {
    let roles: Vec<String> = if member.id == guild.bot_user_id {
        vec![guild.bot_role_id.to_string()]
    } else {
        Vec::new()
    };
    json!({
        "user": user(member),
        "nick": null,
        "avatar": null,
        "banner": null,
        "roles": roles,
        "joined_at": iso8601(joined_ms),
        "premium_since": null,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "communication_disabled_until": null,
        "unusual_dm_activity_until": null,
    })
}

/// A guild channel object (text channel or category).
pub fn channel(guild: &GuildState, channel: &Channel) -> Value {
    let mut object = json!({
        "id": channel.id.to_string(),
        "type": channel.kind,
        "guild_id": guild.guild_id.to_string(),
        "name": channel.name,
        "position": channel.position,
        "parent_id": channel.parent_id.map(|id| id.to_string()),
        "permission_overwrites": [],
        "nsfw": false,
        "flags": 0,
    });
    if channel.kind != CATEGORY {
        object["topic"] = json!(channel.topic);
        object["last_message_id"] = json!(channel.last_message_id.map(|id| id.to_string()));
        object["rate_limit_per_user"] = json!(0);
        object["icon_emoji"] = Value::Null;
        object["theme_color"] = Value::Null;
        if let Some(at) = guild.last_pin_ms(channel.id) {
            object["last_pin_timestamp"] = json!(iso8601(at));
        }
    }
    object
}

/// A message object, with freshly signed attachment URLs.
pub fn message(guild: &GuildState, message: &Message, urls: &UrlContext) -> Value {
    let author = guild.user(message.author_id).map_or(Value::Null, user);
    let attachments: Vec<Value> = message
        .attachments
        .iter()
        .map(|a| attachment(message.channel_id, a, urls))
        .collect();
    let mut object = json!({
        "type": message.kind,
        "content": message.content,
        "mentions": [],
        "mention_roles": [],
        "attachments": attachments,
        "embeds": [],
        "timestamp": iso8601(snowflake_ms(message.id)),
        "edited_timestamp": null,
        "flags": 0,
        "components": [],
        "id": message.id.to_string(),
        "channel_id": message.channel_id.to_string(),
        "author": author,
        "pinned": message.pinned,
        "mention_everyone": false,
        "tts": false,
    });
    if let Some(nonce) = &message.nonce {
        object["nonce"] = nonce.clone();
    }
    if let (PIN_NOTICE, Some(reference)) = (message.kind, message.reference) {
        object["message_reference"] = json!({
            "type": 0,
            "channel_id": message.channel_id.to_string(),
            "guild_id": guild.guild_id.to_string(),
            "message_id": reference.to_string(),
        });
    }
    object
}

fn attachment(channel_id: u64, meta: &AttachmentMeta, urls: &UrlContext) -> Value {
    let url = urls.attachment_url(channel_id, meta.id, &meta.filename);
    let mut object = json!({
        "id": meta.id.to_string(),
        "filename": meta.filename,
        "size": meta.size,
        "url": url,
        "proxy_url": url,
    });
    if let Some(content_type) = &meta.content_type {
        object["content_type"] = json!(content_type);
    }
    object
}
