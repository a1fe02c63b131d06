//! Text channels as folders: which channels count, and their names both ways.
//!
//! Discord rewrites text channel names (lowercase, dashes for spaces, most punctuation
//! dropped), so a folder called `Tax Returns 2025` can't be a channel of that name. A
//! channel created by dcloud-fs gets a readable slug as its Discord name and keeps the
//! folder's exact name in its topic, after [`TOPIC_PREFIX`], which Discord leaves
//! alone. A channel made by hand in Discord (no prefix) is shown under its Discord
//! name. Two channels claiming one name are told apart by appending `~<channel id>` to
//! every one but the oldest, so that each folder name maps back to exactly one channel.
//!
//! A channel is a folder only if the bot may see it, read its history, post and
//! attach files there — the permissions are worked out the way Discord does (roles,
//! then the channel's overwrites), with twilight-util's calculator.

use std::collections::HashMap;

use twilight_model::channel::ChannelType;
use twilight_model::channel::permission_overwrite::PermissionOverwrite;
use twilight_model::guild::Permissions;
use twilight_model::id::Id as TwilightId;
use twilight_model::id::marker::{GuildMarker, RoleMarker, UserMarker};
use twilight_util::permission_calculator::PermissionCalculator;

use crate::store::{Channel, Id};

/// Marks a topic that holds a folder's exact name.
pub const TOPIC_PREFIX: &str = "dcloud-fs folder: ";

/// What the bot needs in a channel for it to be a folder.
pub const FOLDER_PERMISSIONS: Permissions = Permissions::VIEW_CHANNEL
    .union(Permissions::READ_MESSAGE_HISTORY)
    .union(Permissions::SEND_MESSAGES)
    .union(Permissions::ATTACH_FILES);

/// Longest folder name (a topic holds 1024 characters).
pub const MAX_FOLDER_NAME_CHARS: usize = 1000;

/// Checks a folder (channel) name: non-empty, at most [`MAX_FOLDER_NAME_CHARS`], no
/// `/`, no control characters, not `.` or `..`.
pub fn validate_folder_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("'{name}' can't be a folder name"));
    }
    if name.chars().count() > MAX_FOLDER_NAME_CHARS {
        return Err(format!(
            "a folder name has at most {MAX_FOLDER_NAME_CHARS} characters"
        ));
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return Err(format!(
            "'{}' holds a '/' or a control character, which a folder name can't",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// The Discord channel name to create for a folder: lowercase letters, digits and
/// single dashes, at most 100 characters (Discord would rewrite anything else).
pub fn channel_slug(folder: &str) -> String {
    let mut slug = String::new();
    for c in folder.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() || c == '_' {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 100 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "folder".to_string()
    } else {
        slug.to_string()
    }
}

/// The topic that records a folder's name.
pub fn topic_for(folder: &str) -> String {
    format!("{TOPIC_PREFIX}{folder}")
}

/// The folder name a channel shows: the one in its topic, else its Discord name.
pub fn folder_name(channel_name: &str, topic: Option<&str>) -> String {
    topic
        .and_then(|t| t.strip_prefix(TOPIC_PREFIX))
        .filter(|name| validate_folder_name(name).is_ok())
        .unwrap_or(channel_name)
        .to_string()
}

/// Gives every channel a distinct folder name: the oldest channel (lowest id) keeps a
/// contested name, the others get `~<id>` appended.
pub fn distinct_names(mut channels: Vec<Channel>) -> Vec<Channel> {
    channels.sort_by_key(|c| c.id);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for channel in &channels {
        *seen.entry(channel.name.clone()).or_default() += 1;
    }
    let mut claimed: HashMap<String, bool> = HashMap::new();
    for channel in &mut channels {
        if seen[&channel.name] > 1 && claimed.insert(channel.name.clone(), true).is_some() {
            channel.name = format!("{}~{}", channel.name, channel.id);
        }
    }
    channels
}

/// What decides the bot's permissions in the guild.
#[derive(Debug, Clone)]
pub struct PermissionContext {
    pub guild: TwilightId<GuildMarker>,
    pub owner: TwilightId<UserMarker>,
    pub bot: TwilightId<UserMarker>,
    /// The @everyone role's permissions.
    pub everyone: Permissions,
    /// The bot's roles and their permissions.
    pub roles: Vec<(TwilightId<RoleMarker>, Permissions)>,
}

impl PermissionContext {
    fn calculator(&self) -> PermissionCalculator<'_> {
        PermissionCalculator::new(self.guild, self.bot, self.everyone, &self.roles)
            .owner_id(self.owner)
    }

    /// The bot's permissions in the guild as a whole.
    pub fn in_guild(&self) -> Permissions {
        self.calculator().root()
    }

    /// The bot's permissions in a channel.
    pub fn in_channel(&self, kind: ChannelType, overwrites: &[PermissionOverwrite]) -> Permissions {
        self.calculator().in_channel(kind, overwrites)
    }
}

/// Whether a channel of this kind can be a folder.
pub fn is_text(kind: ChannelType) -> bool {
    kind == ChannelType::GuildText
}

/// A channel id as twilight wants it (ids are never zero on Discord).
pub fn channel_id(id: Id) -> Option<TwilightId<twilight_model::id::marker::ChannelMarker>> {
    TwilightId::new_checked(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_what_discord_keeps() {
        assert_eq!(channel_slug("Tax Returns 2025"), "tax-returns-2025");
        assert_eq!(channel_slug("  a -- b!!c  "), "a-b-c");
        assert_eq!(channel_slug("Ünïcode ✓"), "n-code");
        assert_eq!(channel_slug("✓✓"), "folder");
        assert!(channel_slug(&"x".repeat(300)).len() <= 100);
    }

    #[test]
    fn names_map_back_through_the_topic() {
        let name = "Tax Returns 2025 ✓";
        assert_eq!(
            folder_name(&channel_slug(name), Some(&topic_for(name))),
            name
        );
        assert_eq!(folder_name("general", Some("chat here")), "general");
        assert_eq!(folder_name("general", None), "general");
        // A topic naming something that can't be a folder is ignored.
        assert_eq!(folder_name("x", Some("dcloud-fs folder: a/b")), "x");
    }

    #[test]
    fn contested_names_are_made_distinct() {
        let channels = vec![
            Channel {
                id: 30,
                name: "docs".into(),
            },
            Channel {
                id: 10,
                name: "docs".into(),
            },
            Channel {
                id: 20,
                name: "notes".into(),
            },
        ];
        let named = distinct_names(channels);
        let names: Vec<_> = named.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["docs", "notes", "docs~30"]);
    }

    #[test]
    fn folder_names_are_checked() {
        assert!(validate_folder_name("Tax Returns").is_ok());
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            assert!(validate_folder_name(bad).is_err(), "{bad:?}");
        }
    }
}
