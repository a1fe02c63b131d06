//! Discord permission bits the fake server checks, with Discord's values, so that tests can
//! build `Config::bot_permissions` from names instead of magic numbers.

/// Grants every permission.
pub const ADMINISTRATOR: u64 = 1 << 3;
/// Create, edit and delete channels.
pub const MANAGE_CHANNELS: u64 = 1 << 4;
/// See a channel.
pub const VIEW_CHANNEL: u64 = 1 << 10;
/// Post messages.
pub const SEND_MESSAGES: u64 = 1 << 11;
/// Delete other people's messages, bulk delete, pin.
pub const MANAGE_MESSAGES: u64 = 1 << 13;
/// Upload files.
pub const ATTACH_FILES: u64 = 1 << 15;
/// Read a channel's history.
pub const READ_MESSAGE_HISTORY: u64 = 1 << 16;
/// Pin messages (split off MANAGE_MESSAGES by Discord in 2025; either one allows pinning).
pub const PIN_MESSAGES: u64 = 1 << 51;

/// What the bot's own role holds unless told otherwise: everything the project needs.
pub const DEFAULT_BOT: u64 = VIEW_CHANNEL
    | SEND_MESSAGES
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | MANAGE_MESSAGES
    | MANAGE_CHANNELS;

/// What the guild's @everyone role holds unless told otherwise.
pub const DEFAULT_EVERYONE: u64 = VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY;

/// Whether `held` (the union of the bot's roles) includes every bit of `needed`.
pub fn allows(held: u64, needed: u64) -> bool {
    held & ADMINISTRATOR != 0 || held & needed == needed
}
