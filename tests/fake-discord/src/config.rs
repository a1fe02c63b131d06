//! What a fake server is started with ([`Config`]) and the part of it that may change while
//! it runs ([`Knobs`]): limits, delays, failure rates, whether the CDN honours `Range`. Defaults are Discord's own numbers for
//! a guild without boosts, so a test that changes nothing sees Discord-like behaviour.

use crate::permissions;
use serde::{Deserialize, Serialize};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// How a fake server starts. `Config::default()` is a Discord-like guild without boosts.
#[derive(Clone, Debug)]
pub struct Config {
    /// The bot token clients must send as `Authorization: Bot <token>`.
    pub token: String,
    /// The one guild the bot is in.
    pub guild_id: u64,
    /// The bot's user id.
    pub bot_user_id: u64,
    /// Text channels that exist from the start (names are rewritten as Discord does).
    pub channels: Vec<String>,
    /// Largest attachment: 10 MiB unboosted, 50 MiB at tier 2, 100 MiB at tier 3.
    pub max_file_size: u64,
    /// Boost tier reported in the guild object; 0 means "derive it from `max_file_size`".
    pub premium_tier: u8,
    /// Most attachments in one message.
    pub max_attachments: usize,
    /// Most file bytes in one request (a single file may be up to `max_file_size`).
    pub max_request_size: u64,
    /// How long a signed CDN URL works.
    pub url_lifetime: Duration,
    /// Delay added to every API and CDN request.
    pub latency: Duration,
    /// Cap in bytes per second on upload bodies and CDN downloads.
    pub bandwidth: Option<u64>,
    /// Fraction of requests that fail on purpose (half 5xx, half dropped connections).
    pub failure_rate: f64,
    /// Fraction of API requests answered 429 although no bucket is exhausted.
    pub forced_429_rate: f64,
    /// Whether the buckets below are enforced (headers are sent either way).
    pub rate_limits: bool,
    /// Message creates per channel: count per window.
    pub message_create_limit: (u32, Duration),
    /// Message deletes per channel: count per window.
    pub message_delete_limit: (u32, Duration),
    /// Every other route, per route and major parameter: count per window.
    pub default_route_limit: (u32, Duration),
    /// API requests per second over all routes.
    pub global_limit_per_sec: u32,
    /// Permission bits of the bot's role.
    pub bot_permissions: u64,
    /// Permission bits of the guild's @everyone role (the bot holds them too).
    pub everyone_permissions: u64,
    /// Whether the bot has the privileged GUILD_MEMBERS intent (needed to list members).
    pub members_intent: bool,
    /// Whether the CDN ignores `Range` headers and answers every download 200 with the
    /// whole attachment, as a server without range support does.
    pub ignore_range: bool,
    /// How far in the past new ids (channels, messages, attachments) are dated: their
    /// snowflakes carry now minus this. Ids still only grow: raising it once something
    /// was made now dates nothing back until the clock has caught up, so make the oldest
    /// things first. Zero: now, as Discord does.
    pub backdate: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let knobs = Knobs::default();
        Config {
            token: random_token(),
            guild_id: 1_300_000_000_000_000_001,
            bot_user_id: 1_300_000_000_000_000_100,
            channels: Vec::new(),
            max_file_size: knobs.max_file_size,
            premium_tier: knobs.premium_tier,
            max_attachments: knobs.max_attachments,
            max_request_size: knobs.max_request_size,
            url_lifetime: knobs.url_lifetime,
            latency: knobs.latency,
            bandwidth: knobs.bandwidth,
            failure_rate: knobs.failure_rate,
            forced_429_rate: knobs.forced_429_rate,
            rate_limits: knobs.rate_limits,
            message_create_limit: knobs.message_create_limit,
            message_delete_limit: knobs.message_delete_limit,
            default_route_limit: knobs.default_route_limit,
            global_limit_per_sec: knobs.global_limit_per_sec,
            bot_permissions: knobs.bot_permissions,
            everyone_permissions: knobs.everyone_permissions,
            members_intent: knobs.members_intent,
            ignore_range: knobs.ignore_range,
            backdate: knobs.backdate,
        }
    }
}

impl Config {
    /// The runtime-changeable part of this configuration.
    pub fn knobs(&self) -> Knobs {
        Knobs {
            max_file_size: self.max_file_size,
            premium_tier: self.premium_tier,
            max_attachments: self.max_attachments,
            max_request_size: self.max_request_size,
            url_lifetime: self.url_lifetime,
            latency: self.latency,
            bandwidth: self.bandwidth,
            failure_rate: self.failure_rate,
            forced_429_rate: self.forced_429_rate,
            rate_limits: self.rate_limits,
            message_create_limit: self.message_create_limit,
            message_delete_limit: self.message_delete_limit,
            default_route_limit: self.default_route_limit,
            global_limit_per_sec: self.global_limit_per_sec,
            bot_permissions: self.bot_permissions,
            everyone_permissions: self.everyone_permissions,
            members_intent: self.members_intent,
            ignore_range: self.ignore_range,
            backdate: self.backdate,
        }
    }
}

/// The settings of a running server that tests and benchmarks may change
/// ([`crate::FakeDiscord::set_knobs`], or `POST /_fake/knobs` with a partial JSON object).
///
/// In JSON, durations are seconds (with decimals) and limits are `[count, window_secs]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Knobs {
    /// Largest attachment in bytes.
    pub max_file_size: u64,
    /// Boost tier reported in the guild object; 0 means "derive it from `max_file_size`".
    pub premium_tier: u8,
    /// Most attachments in one message.
    pub max_attachments: usize,
    /// Most file bytes in one request (a single file may be up to `max_file_size`).
    pub max_request_size: u64,
    /// How long a newly signed CDN URL works.
    #[serde(with = "secs")]
    pub url_lifetime: Duration,
    /// Delay added to every API and CDN request.
    #[serde(with = "secs")]
    pub latency: Duration,
    /// Cap in bytes per second on upload bodies and CDN downloads.
    pub bandwidth: Option<u64>,
    /// Fraction of requests that fail on purpose (half 5xx, half dropped connections).
    pub failure_rate: f64,
    /// Fraction of API requests answered 429 although no bucket is exhausted.
    pub forced_429_rate: f64,
    /// Whether buckets are enforced.
    pub rate_limits: bool,
    /// Message creates per channel.
    #[serde(with = "limit")]
    pub message_create_limit: (u32, Duration),
    /// Message deletes per channel.
    #[serde(with = "limit")]
    pub message_delete_limit: (u32, Duration),
    /// Every other route, per route and major parameter.
    #[serde(with = "limit")]
    pub default_route_limit: (u32, Duration),
    /// API requests per second over all routes.
    pub global_limit_per_sec: u32,
    /// Permission bits of the bot's role.
    pub bot_permissions: u64,
    /// Permission bits of @everyone.
    pub everyone_permissions: u64,
    /// Whether the bot may list guild members.
    pub members_intent: bool,
    /// Whether the CDN ignores `Range` (answers 200 with the whole attachment).
    #[serde(default)]
    pub ignore_range: bool,
    /// How far in the past new messages are dated (see [`Config::backdate`]): a
    /// benchmark makes a history that looks days old this way.
    #[serde(default, with = "secs")]
    pub backdate: Duration,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            max_file_size: 10 * MIB,
            premium_tier: 0,
            max_attachments: 10,
            max_request_size: 25 * MIB,
            url_lifetime: Duration::from_secs(24 * 3600),
            latency: Duration::ZERO,
            bandwidth: None,
            failure_rate: 0.0,
            forced_429_rate: 0.0,
            rate_limits: true,
            message_create_limit: (5, Duration::from_secs(5)),
            message_delete_limit: (5, Duration::from_secs(1)),
            default_route_limit: (50, Duration::from_secs(1)),
            global_limit_per_sec: 50,
            bot_permissions: permissions::DEFAULT_BOT,
            everyone_permissions: permissions::DEFAULT_EVERYONE,
            members_intent: false,
            ignore_range: false,
            backdate: Duration::ZERO,
        }
    }
}

impl Knobs {
    /// The boost tier the guild object reports: the configured one, else the lowest tier
    /// whose upload limit covers `max_file_size`.
    pub fn effective_premium_tier(&self) -> u8 {
        if self.premium_tier != 0 {
            return self.premium_tier;
        }
        match self.max_file_size {
            size if size <= 10 * MIB => 0,
            size if size <= 50 * MIB => 2,
            _ => 3,
        }
    }

    /// Every permission the bot holds in the guild (its role plus @everyone).
    pub fn bot_permission_bits(&self) -> u64 {
        self.bot_permissions | self.everyone_permissions
    }

    /// Applies a partial JSON object: fields it names change, the others stay.
    pub fn apply_json(&mut self, patch: &serde_json::Value) -> Result<(), serde_json::Error> {
        let mut merged = serde_json::to_value(&*self)?;
        if let (Some(target), Some(changes)) = (merged.as_object_mut(), patch.as_object()) {
            for (name, value) in changes {
                target.insert(name.clone(), value.clone());
            }
        }
        *self = serde_json::from_value(merged)?;
        Ok(())
    }
}

/// A random token of the shape `fake.<32 hex digits>`.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("fake.{}", crate::signing::hex(&bytes))
}

/// Serde for a [`Duration`] as seconds with decimals.
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(value.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(deserializer)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// Serde for a rate limit `(count, window)` as `[count, window_secs]`.
mod limit {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(
        value: &(u32, Duration),
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        (value.0, value.1.as_secs_f64()).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<(u32, Duration), D::Error> {
        let (count, secs) = <(u32, f64)>::deserialize(deserializer)?;
        let window = Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)?;
        Ok((count, window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_json_changes_only_named_knobs() {
        let mut knobs = Knobs::default();
        let patch = serde_json::json!({"latency": 0.25, "message_create_limit": [3, 2.0]});
        knobs.apply_json(&patch).unwrap();
        assert_eq!(knobs.latency, Duration::from_millis(250));
        assert_eq!(knobs.message_create_limit, (3, Duration::from_secs(2)));
        assert_eq!(knobs.max_attachments, 10);
        assert!(!knobs.ignore_range);
        knobs
            .apply_json(&serde_json::json!({"ignore_range": true}))
            .unwrap();
        assert!(knobs.ignore_range);
        assert_eq!(knobs.latency, Duration::from_millis(250));
        assert!(
            knobs
                .apply_json(&serde_json::json!({"latency": "x"}))
                .is_err()
        );
    }

    #[test]
    fn premium_tier_follows_the_file_limit() {
        let mut knobs = Knobs::default();
        assert_eq!(knobs.effective_premium_tier(), 0);
        knobs.max_file_size = 50 * MIB;
        assert_eq!(knobs.effective_premium_tier(), 2);
        knobs.max_file_size = 100 * MIB;
        assert_eq!(knobs.effective_premium_tier(), 3);
    }
}
