//! The Discord store: a guild, through a bot, over Discord's REST API.
//!
//! REST requests are built by twilight-http and sent through reqwest by [`rest`] (rate
//! gate, time bounds, retries, 429s); attachment bytes come from the CDN through the
//! same reqwest client ([`cdn`]: signed URLs that expire). Folders are the text
//! channels the bot may use ([`folders`]).
//!
//! What this store guarantees to the layers above, on top of the [`Store`] contract:
//!
//! - **Limits are read, not assumed**: the per-file limit follows the guild's boost
//!   tier (or the configured override). When Discord still answers 413 (code 40005),
//!   the store steps its limits down to the next size Discord is known to use and
//!   reports [`StoreError::TooLarge`]; the volume then uploads again in smaller pieces
//!   and deletes what the refused attempt left.
//! - **Posts are idempotent**: each post carries a random nonce with
//!   `enforce_nonce`, so the retry of a post whose answer was lost returns the first
//!   attempt's message instead of creating a second.
//! - **The token stays secret**: it is held in a [`Token`] whose `Debug` and `Display`
//!   print stars, and no error or log line includes it.
//! - **Other authors are not trusted**: [`Store::current_user`] is the bot, and the
//!   volume ignores everything else; [`DiscordStore::attachments`] lists them for
//!   inspection only.

pub mod cdn;
pub mod folders;
pub mod ratelimit;
pub mod rest;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use twilight_model::channel::{
    Channel as TwilightChannel, ChannelType, Message as TwilightMessage,
};
use twilight_model::guild::{Permissions, PremiumTier};
use twilight_model::http::attachment::Attachment as TwilightAttachment;
use twilight_model::id::Id as TwilightId;
use twilight_model::id::marker::{ChannelMarker, GuildMarker, MessageMarker, UserMarker};

use self::cdn::{Download, UrlCache, Want};
use self::folders::PermissionContext;
use self::ratelimit::RateGate;
use self::rest::{Answer, Rest, RestError, RetryPolicy, made};
use super::{
    Attachment, Channel, HistoryCursor, Id, Limits, Message, NewMessage, Store, StoreError,
    StoreResult,
};

const MIB: u64 = 1024 * 1024;

/// A bot token. Never shown: `Debug` and `Display` print stars.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token; a leading `Bot ` is accepted and dropped.
    pub fn new(token: &str) -> Token {
        let token = token.trim();
        Token(token.strip_prefix("Bot ").unwrap_or(token).to_string())
    }

    /// The token itself, for the one place that sends it.
    fn expose(&self) -> &str {
        &self.0
    }

    /// A hint of which token this is (its length and last two characters), for
    /// `dcloud-fs config` to show.
    pub fn masked(&self) -> String {
        let tail: String = self
            .0
            .chars()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("****{tail} ({} characters)", self.0.chars().count())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(****)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// How long one request may take when nothing says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How to reach the guild, and how patiently.
#[derive(Debug, Clone)]
pub struct DiscordConfig {
    /// The bot's token (`DCLOUD_TOKEN`).
    pub token: Token,
    /// The guild (server) id (`DCLOUD_GUILD`).
    pub guild: Id,
    /// Base address of the API (`DCLOUD_API`): `None` for Discord itself, or
    /// `http://127.0.0.1:PORT` for a fake server.
    pub api: Option<String>,
    /// Only channels in this category (its id or name) are folders, and new folders
    /// are created in it. Default: every text channel.
    pub category: Option<String>,
    /// Per-file limit in bytes, instead of the one the guild's boost tier gives.
    pub max_file_size: Option<u64>,
    /// Bound on one HTTP request (an upload of a whole message included). Default
    /// 120 s: a 25 MiB message at 250 KB/s.
    pub request_timeout: Duration,
    /// Attempts for a request that fails transiently (5xx, reset, timeout). Default 5.
    pub attempts: u32,
    /// Requests per second across the bot, under Discord's global 50. Default 45.
    pub global_rate: u32,
}

impl DiscordConfig {
    /// A config with the documented defaults.
    pub fn new(token: Token, guild: Id) -> DiscordConfig {
        DiscordConfig {
            token,
            guild,
            api: None,
            category: None,
            max_file_size: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            attempts: 5,
            global_rate: 45,
        }
    }
}

/// What the store learns about the guild once, on first use.
#[derive(Debug, Clone)]
struct GuildFacts {
    user: Id,
    user_name: String,
    guild_name: String,
    premium_tier: u8,
    permissions: PermissionContext,
    /// The category folders live in, if configured.
    category: Option<Id>,
}

/// A Discord guild as a [`Store`].
pub struct DiscordStore {
    rest: Rest,
    cdn: reqwest::Client,
    urls: UrlCache,
    config: DiscordConfig,
    guild: TwilightId<GuildMarker>,
    identity: String,
    facts: OnceCell<GuildFacts>,
    /// Limits lowered after Discord refused a message as too large.
    stepped_down: Mutex<Option<Limits>>,
    /// One URL look-up at a time per channel: it reads the page of history from the
    /// message on, which gives the URLs of the next 100 messages too, so that the
    /// look-ups after it (the other chunks of a file, mostly) find them known.
    refreshing: Mutex<HashMap<Id, Arc<tokio::sync::Mutex<()>>>>,
    /// Discord refused a bulk delete other than for a message's age (the bot lacks
    /// Manage Messages, say): messages are deleted one by one from then on.
    bulk_refused: std::sync::atomic::AtomicBool,
}

/// How old a message may be for Discord to delete it in bulk: two weeks, less an hour
/// for clocks that disagree.
const BULK_DELETE_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600 - 3600);
/// Most messages one bulk delete takes (and fewest: 2).
const BULK_DELETE_MAX: usize = 100;

impl DiscordStore {
    /// Prepares a store for `config`. Makes no request yet; the first call checks the
    /// token and the guild. Must run inside a tokio runtime.
    pub fn new(config: DiscordConfig) -> StoreResult<DiscordStore> {
        let guild = TwilightId::new_checked(config.guild)
            .ok_or_else(|| StoreError::NotSetUp("the guild id can't be 0".into()))?;
        // twilight and reqwest share rustls; it needs one crypto provider chosen.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let api = api_root(config.api.as_deref())?;
        // twilight's client only builds the requests ([`rest`] sends them): no token,
        // no rate limiter of its own.
        let builder = twilight_http::Client::builder().ratelimiter(None);
        // Each client loads the system's root certificates, tens of milliseconds at
        // the start of every command: the two load at once.
        let (client, http) = std::thread::scope(|scope| {
            let http = scope.spawn(|| {
                reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(30))
                    .build()
            });
            let client = builder.build();
            (client, http.join())
        });
        let http = http
            .map_err(|_| StoreError::NotSetUp("HTTP client: its set-up panicked".into()))?
            .map_err(|e| StoreError::NotSetUp(format!("HTTP client: {e}")))?;
        let identity = match &config.api {
            None => format!("discord-{}", config.guild),
            Some(api) => {
                let digest = Sha256::digest(api.as_bytes());
                format!(
                    "discord-{}-{}",
                    config.guild,
                    crate::crypto::encode_hex(&digest[..4])
                )
            }
        };
        let rest = Rest::new(
            client,
            http.clone(),
            api,
            config.token.expose(),
            RateGate::new(config.global_rate),
            RetryPolicy {
                attempts: config.attempts.max(1),
                first_backoff: Duration::from_millis(250),
                max_backoff: Duration::from_secs(8),
                attempt_timeout: config.request_timeout,
            },
        )?;
        Ok(DiscordStore {
            rest,
            cdn: http,
            urls: UrlCache::default(),
            guild,
            identity,
            config,
            facts: OnceCell::new(),
            stepped_down: Mutex::new(None),
            refreshing: Mutex::default(),
            bulk_refused: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// One bulk delete of 2 to 100 messages of `channel`.
    async fn bulk_delete(&self, channel: Id, messages: &[Id]) -> StoreResult<()> {
        let channel_id = self.twilight_channel(channel)?;
        let ids: Vec<TwilightId<MessageMarker>> = messages
            .iter()
            .map(|&m| TwilightId::new_checked(m).ok_or(StoreError::NoSuchMessage(m)))
            .collect::<StoreResult<_>>()?;
        self.rest
            .call(
                &format!("POST /channels/{channel}/messages/bulk-delete"),
                "deleting messages",
                || made(self.rest.client.delete_messages(channel_id, &ids)),
                no_body,
            )
            .await
            .map_err(|e| Self::channel_error(channel, None, "deleting messages", e))
    }

    async fn facts(&self) -> StoreResult<&GuildFacts> {
        self.facts.get_or_try_init(|| self.learn_guild()).await
    }

    async fn learn_guild(&self) -> StoreResult<GuildFacts> {
        // The guild, and (the bot, then its roles there), at once: each is a round trip.
        let guild = async {
            self.rest
                .call(
                    &format!("GET /guilds/{}", self.guild),
                    "reading the guild",
                    || made(self.rest.client.guild(self.guild)),
                    model,
                )
                .await
                .map_err(|e| self.guild_error(e))
        };
        let me_and_member = async {
            let me = self.fetch_current_user("checking the bot token").await?;
            let member = self.fetch_member(me.id).await?;
            Ok::<_, StoreError>((me, member))
        };
        let (guild, (me, member)) = tokio::try_join!(guild, me_and_member)?;
        let everyone = guild
            .roles
            .iter()
            .find(|r| r.id.get() == self.guild.get())
            .map_or(Permissions::empty(), |r| r.permissions);
        let roles = guild
            .roles
            .iter()
            .filter(|r| member.roles.contains(&r.id))
            .map(|r| (r.id, r.permissions))
            .collect();
        let premium_tier = match guild.premium_tier {
            PremiumTier::None => 0,
            PremiumTier::Tier1 => 1,
            PremiumTier::Tier2 => 2,
            PremiumTier::Tier3 => 3,
            PremiumTier::Other(n) => n,
            _ => 0,
        };
        let mut facts = GuildFacts {
            user: me.id.get(),
            user_name: me.name.clone(),
            guild_name: guild.name.clone(),
            premium_tier,
            permissions: PermissionContext {
                guild: self.guild,
                owner: guild.owner_id,
                bot: me.id,
                everyone,
                roles,
            },
            category: None,
        };
        if let Some(wanted) = &self.config.category {
            let channels = self.guild_channels().await?;
            facts.category = Some(find_category(&channels, wanted)?);
        }
        Ok(facts)
    }

    /// A member of the guild: the bot, for its roles.
    async fn fetch_member(
        &self,
        user: TwilightId<UserMarker>,
    ) -> StoreResult<twilight_model::guild::Member> {
        self.rest
            .call(
                &format!("GET /guilds/{}/members", self.guild),
                "reading the bot's roles",
                || made(self.rest.client.guild_member(self.guild, user)),
                model,
            )
            .await
            .map_err(|e| self.guild_error(e))
    }

    /// The bot's own user (one request; also how the token is checked).
    async fn fetch_current_user(
        &self,
        what: &str,
    ) -> StoreResult<twilight_model::user::CurrentUser> {
        self.rest
            .call(
                "GET /users/@me",
                what,
                || made(self.rest.client.current_user()),
                model,
            )
            .await
            .map_err(|e| e.into_store_error(what))
    }

    fn guild_error(&self, e: RestError) -> StoreError {
        match e.code() {
            Some(10004) | Some(50001) => StoreError::NotSetUp(format!(
                "the bot can't see guild {}: check DCLOUD_GUILD (right-click the server → Copy \
                 Server ID) and that the bot was invited to it",
                self.guild
            )),
            _ => e.into_store_error("reading the guild"),
        }
    }

    async fn guild_channels(&self) -> StoreResult<Vec<TwilightChannel>> {
        self.rest
            .call(
                &format!("GET /guilds/{}/channels", self.guild),
                "listing the guild's channels",
                || made(self.rest.client.guild_channels(self.guild)),
                models,
            )
            .await
            .map_err(|e| self.guild_error(e))
    }

    /// The per-file limit the guild's boost tier gives.
    fn tier_file_size(premium_tier: u8) -> u64 {
        match premium_tier {
            0 | 1 => 10 * MIB,
            2 => 50 * MIB,
            _ => 100 * MIB,
        }
    }

    fn base_limits(&self, facts: &GuildFacts) -> Limits {
        let file = self
            .config
            .max_file_size
            .unwrap_or_else(|| Self::tier_file_size(facts.premium_tier));
        Limits {
            max_file_size: file,
            max_attachments: 10,
            // 25 MiB per request, but a boosted guild takes a single file up to its limit.
            max_request_size: (25 * MIB).max(file),
            max_content_chars: 2000,
        }
    }

    /// Lowers the limits after Discord refused `message` as too large: to the next
    /// size below what was sent, among the sizes Discord is known to use.
    fn step_down(&self, current: Limits, message: &NewMessage) {
        let largest = message
            .attachments
            .iter()
            .map(|a| a.data.len() as u64)
            .max()
            .unwrap_or(0);
        let total = message.attachment_bytes();
        let mut lowered = current;
        if message.attachments.len() <= 1 {
            lowered.max_file_size = lowered.max_file_size.min(size_below(largest));
        } else {
            lowered.max_request_size = lowered.max_request_size.min(size_below(total));
            // Discord has never taken less than 8 MiB a file: attachments well above
            // that may be what was refused, not only their total.
            if largest > 10 * MIB {
                lowered.max_file_size = lowered.max_file_size.min(size_below(largest));
            }
            lowered.max_file_size = lowered.max_file_size.min(lowered.max_request_size);
        }
        log::warn!(
            "Discord refused {total} bytes in {} attachment(s) as too large; limits now {} \
             per file, {} per message",
            message.attachments.len(),
            lowered.max_file_size,
            lowered.max_request_size
        );
        *self.stepped_down.lock().unwrap_or_else(|e| e.into_inner()) = Some(lowered);
    }

    fn twilight_channel(&self, channel: Id) -> StoreResult<TwilightId<ChannelMarker>> {
        folders::channel_id(channel).ok_or(StoreError::NoSuchChannel(channel))
    }

    /// Converts a message and remembers its attachments' URLs.
    fn message_from(&self, message: &TwilightMessage) -> Message {
        for attachment in &message.attachments {
            self.urls
                .remember(attachment.id.get(), attachment.url.clone());
        }
        Message {
            id: message.id.get(),
            channel_id: message.channel_id.get(),
            author_id: message.author.id.get(),
            content: message.content.clone(),
            attachments: message
                .attachments
                .iter()
                .map(|a| Attachment {
                    id: a.id.get(),
                    filename: a.filename.clone(),
                    size: a.size,
                })
                .collect(),
        }
    }

    /// Maps an error about a channel's messages.
    fn channel_error(channel: Id, message: Option<Id>, what: &str, e: RestError) -> StoreError {
        match (e.code(), message) {
            (Some(10003), _) => StoreError::NoSuchChannel(channel),
            (Some(10008), Some(message)) => StoreError::NoSuchMessage(message),
            _ => e.into_store_error(what),
        }
    }

    async fn get_message(&self, channel: Id, message: Id) -> StoreResult<Message> {
        let channel_id = self.twilight_channel(channel)?;
        let message_id: TwilightId<MessageMarker> =
            TwilightId::new_checked(message).ok_or(StoreError::NoSuchMessage(message))?;
        let found = self
            .rest
            .call(
                &format!("GET /channels/{channel}/messages/:id"),
                "reading a message",
                || made(self.rest.client.message(channel_id, message_id)),
                model,
            )
            .await
            .map_err(|e| Self::channel_error(channel, Some(message), "reading a message", e))?;
        Ok(self.message_from(&found))
    }

    /// Downloads what `want` asks of an attachment from the CDN: through a fresh signed
    /// URL (refreshed once if the CDN refuses it), retrying transient failures with the
    /// REST side's backoff.
    async fn download(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        want: Want,
    ) -> StoreResult<Bytes> {
        let policy = self.rest.policy;
        let mut refused_once = false;
        let mut attempt = 1;
        loop {
            let url = self.fresh_url(channel, message, attachment).await?;
            let timeout = self.config.request_timeout;
            let reason = match cdn::download(&self.cdn, &url, timeout, &want).await {
                Download::Bytes(bytes) => return Ok(bytes),
                Download::Corrupt(reason) => {
                    return Err(StoreError::Corrupt(format!(
                        "attachment {attachment} of message {message}: {reason}"
                    )));
                }
                Download::Refused(status) if !refused_once => {
                    // Expired early, or signed differently than we thought: re-read the
                    // message for a fresh URL, once.
                    log::debug!("the CDN refused an attachment URL ({status}); refreshing it");
                    self.urls.forget(attachment);
                    refused_once = true;
                    continue;
                }
                Download::Refused(status) => {
                    return Err(StoreError::NoSuchAttachment {
                        message,
                        attachment,
                    })
                    .inspect_err(|_| {
                        log::warn!(
                            "the CDN refused attachment {attachment} of message {message} \
                             ({status}) even with a fresh URL"
                        )
                    });
                }
                Download::Transient(reason) => reason,
            };
            if attempt >= policy.attempts {
                return Err(StoreError::Unavailable(format!(
                    "downloading attachment {attachment} failed {attempt} times, last: \
                     {reason}; check the network and try again"
                )));
            }
            let pause = policy.backoff(attempt);
            log::info!("downloading attachment {attachment}: {reason}; retrying in {pause:.1?}");
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// A fresh URL for an attachment: from the cache, else by re-reading its message.
    async fn fresh_url(&self, channel: Id, message: Id, attachment: Id) -> StoreResult<String> {
        if let Some(url) = self.urls.fresh(attachment) {
            return Ok(url.url);
        }
        let lock = self
            .refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel)
            .or_default()
            .clone();
        let found = async {
            let _one_at_a_time = lock.lock().await;
            // Another task may have looked it up while we waited.
            if let Some(url) = self.urls.fresh(attachment) {
                return Ok(Err(url.url));
            }
            // The page from the message on (one request for the URLs of up to 100
            // messages); the message alone if it isn't there, which tells what is wrong.
            let cursor = HistoryCursor::After(message.saturating_sub(1));
            match self.history(channel, cursor, super::MAX_HISTORY_PAGE).await {
                Ok(_) => {
                    if let Some(url) = self.urls.fresh(attachment) {
                        return Ok(Err(url.url));
                    }
                }
                Err(e) => log::debug!("reading the history from message {message}: {e}"),
            }
            self.get_message(channel, message).await.map(Ok)
        }
        .await;
        {
            // The last one done with the channel's lock forgets it (the map holds one
            // reference, this call another; anyone waiting holds more).
            let mut refreshing = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
            if Arc::strong_count(&lock) <= 2 {
                refreshing.remove(&channel);
            }
        }
        let found = match found? {
            Ok(found) => found,
            Err(url) => return Ok(url),
        };
        if found.attachments.iter().all(|a| a.id != attachment) {
            return Err(StoreError::NoSuchAttachment {
                message,
                attachment,
            });
        }
        self.urls.fresh(attachment).map(|u| u.url).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "Discord listed attachment {attachment} without a URL for it"
            ))
        })
    }

    // ----- What the CLI shows beyond the Store trait -----

    /// Times one API round trip (reading the bot's own user).
    pub async fn ping(&self) -> StoreResult<Duration> {
        let start = Instant::now();
        self.fetch_current_user("pinging Discord").await?;
        Ok(start.elapsed())
    }

    /// The guild as the bot sees it.
    pub async fn guild_summary(&self) -> StoreResult<GuildSummary> {
        let facts = self.facts().await?;
        Ok(GuildSummary {
            guild_id: self.config.guild,
            guild_name: facts.guild_name.clone(),
            bot_id: facts.user,
            bot_name: facts.user_name.clone(),
            premium_tier: facts.premium_tier,
            limits: self.limits().await?,
            permissions: facts.permissions.in_guild(),
            category: facts.category,
        })
    }

    /// Everything about one folder's channel.
    pub async fn channel_info(&self, channel: Id) -> StoreResult<ChannelInfo> {
        let facts = self.facts().await?;
        let channel_id = self.twilight_channel(channel)?;
        let found = self
            .rest
            .call(
                &format!("GET /channels/{channel}"),
                "reading a channel",
                || made(self.rest.client.channel(channel_id)),
                model,
            )
            .await
            .map_err(|e| Self::channel_error(channel, None, "reading a channel", e))?;
        let overwrites = found.permission_overwrites.clone().unwrap_or_default();
        Ok(ChannelInfo {
            id: channel,
            discord_name: found.name.clone().unwrap_or_default(),
            topic: found.topic.clone(),
            category: found.parent_id.map(|p| p.get()),
            position: found.position,
            last_message: found.last_message_id.map(|m| m.get()),
            permissions: facts.permissions.in_channel(found.kind, &overwrites),
        })
    }

    /// The guild's members (needs the privileged Server Members intent).
    pub async fn members(&self) -> StoreResult<Vec<MemberInfo>> {
        let mut members = Vec::new();
        let mut after: Option<TwilightId<UserMarker>> = None;
        loop {
            let page = self
                .rest
                .call(
                    &format!("GET /guilds/{}/members", self.guild),
                    "listing members",
                    || {
                        let request = self.rest.client.guild_members(self.guild).limit(1000);
                        match after {
                            Some(id) => made(request.after(id)),
                            None => made(request),
                        }
                    },
                    models,
                )
                .await
                .map_err(|e| match e.code() {
                    Some(50001) => StoreError::PermissionDenied(
                        "listing members needs the Server Members intent: Discord Developer \
                         Portal → your app → Bot → Privileged Gateway Intents → Server Members \
                         Intent"
                            .into(),
                    ),
                    _ => e.into_store_error("listing members"),
                })?;
            let full = page.len() >= 1000;
            after = page.last().map(|m| m.user.id);
            members.extend(page.into_iter().map(|m| MemberInfo {
                id: m.user.id.get(),
                name: m.user.name.clone(),
                nick: m.nick.clone(),
                bot: m.user.bot,
            }));
            if !full {
                return Ok(members);
            }
        }
    }
}

/// The guild, for `doctor` and `ping`.
#[derive(Debug, Clone)]
pub struct GuildSummary {
    pub guild_id: Id,
    pub guild_name: String,
    pub bot_id: Id,
    pub bot_name: String,
    pub premium_tier: u8,
    pub limits: Limits,
    /// The bot's permissions guild-wide.
    pub permissions: Permissions,
    pub category: Option<Id>,
}

/// One channel, for `info`.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub id: Id,
    pub discord_name: String,
    pub topic: Option<String>,
    pub category: Option<Id>,
    pub position: Option<i32>,
    pub last_message: Option<Id>,
    /// The bot's permissions in it.
    pub permissions: Permissions,
}

/// One guild member, for `members`.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub id: Id,
    pub name: String,
    pub nick: Option<String>,
    pub bot: bool,
}

/// Reads an answer's JSON into its model type.
fn model<T: serde::de::DeserializeOwned>(answer: Answer<T>) -> Result<T, String> {
    serde_json::from_slice(&answer.body).map_err(|e| format!("unreadable answer: {e}"))
}

/// Reads an answer's JSON list into its model type.
fn models<T: serde::de::DeserializeOwned>(
    answer: Answer<twilight_http::response::marker::ListBody<T>>,
) -> Result<Vec<T>, String> {
    serde_json::from_slice(&answer.body).map_err(|e| format!("unreadable answer: {e}"))
}

/// Reads an answer whose body doesn't matter.
fn no_body<T>(_answer: Answer<T>) -> Result<(), String> {
    Ok(())
}

/// The root of the REST API: Discord's, or the one under `api` (`http://host:port`,
/// with or without `/api/v10`).
fn api_root(api: Option<&str>) -> StoreResult<String> {
    let Some(api) = api else {
        return Ok("https://discord.com/api/v10".to_string());
    };
    let bad = || {
        StoreError::NotSetUp(format!(
            "DCLOUD_API '{api}' is not an address like http://127.0.0.1:8080"
        ))
    };
    let (scheme, rest) = if let Some(rest) = api.strip_prefix("http://") {
        ("http", rest)
    } else if let Some(rest) = api.strip_prefix("https://") {
        ("https", rest)
    } else {
        return Err(bad());
    };
    let host = rest.trim_end_matches('/').trim_end_matches("/api/v10");
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok(format!("{scheme}://{host}/api/v10"))
}

/// The largest size Discord is known to use as a limit that is below `size`, else half
/// of it.
fn size_below(size: u64) -> u64 {
    [100 * MIB, 50 * MIB, 25 * MIB, 10 * MIB, 8 * MIB]
        .into_iter()
        .find(|&known| known < size)
        .unwrap_or(size / 2)
}

/// The category named by `wanted` (its id, or its name, case-insensitively).
fn find_category(channels: &[TwilightChannel], wanted: &str) -> StoreResult<Id> {
    channels
        .iter()
        .filter(|c| c.kind == ChannelType::GuildCategory)
        .find(|c| {
            c.id.to_string() == wanted
                || c.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(wanted))
        })
        .map(|c| c.id.get())
        .ok_or_else(|| {
            StoreError::NotSetUp(format!(
                "no category '{wanted}' in the guild (config `category`); create it or fix the name"
            ))
        })
}

/// The JSON part of a message post.
fn payload_json(message: &NewMessage, nonce: u64) -> Vec<u8> {
    let attachments: Vec<serde_json::Value> = message
        .attachments
        .iter()
        .enumerate()
        .map(|(i, a)| serde_json::json!({"id": i, "filename": a.filename}))
        .collect();
    let mut payload = serde_json::json!({
        "nonce": nonce.to_string(),
        "enforce_nonce": true,
        "allowed_mentions": {"parse": []},
        "attachments": attachments,
    });
    if !message.content.is_empty() {
        payload["content"] = serde_json::Value::String(message.content.clone());
    }
    serde_json::to_vec(&payload).expect("JSON of strings and numbers")
}

/// A message's attachments as twilight takes them (a copy of their bytes).
fn twilight_attachments(message: &NewMessage) -> Vec<TwilightAttachment> {
    message
        .attachments
        .iter()
        .enumerate()
        .map(|(i, a)| TwilightAttachment::from_bytes(a.filename.clone(), a.data.to_vec(), i as u64))
        .collect()
}

/// A random nonce that fits Discord's 25 characters as a decimal string.
fn random_nonce() -> StoreResult<u64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Invalid(format!("no randomness for a nonce: {e}")))?;
    Ok(u64::from_le_bytes(bytes) >> 1)
}

#[async_trait]
impl Store for DiscordStore {
    async fn key_salt(&self) -> StoreResult<String> {
        Ok(format!("discord guild {}", self.config.guild))
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }

    async fn limits(&self) -> StoreResult<Limits> {
        let facts = self.facts().await?;
        let base = self.base_limits(facts);
        let stepped = *self.stepped_down.lock().unwrap_or_else(|e| e.into_inner());
        Ok(stepped.unwrap_or(base))
    }

    async fn current_user(&self) -> StoreResult<Id> {
        Ok(self.facts().await?.user)
    }

    async fn channels(&self) -> StoreResult<Vec<Channel>> {
        // Both are a round trip (or three) to Discord; neither needs the other.
        let (facts, channels) = tokio::try_join!(self.facts(), self.guild_channels())?;
        let mut folders = Vec::new();
        for channel in channels {
            if !folders::is_text(channel.kind) {
                continue;
            }
            if facts.category.is_some() && channel.parent_id.map(|p| p.get()) != facts.category {
                continue;
            }
            let overwrites = channel.permission_overwrites.as_deref().unwrap_or_default();
            let permissions = facts.permissions.in_channel(channel.kind, overwrites);
            let name = channel.name.as_deref().unwrap_or_default();
            if !permissions.contains(folders::FOLDER_PERMISSIONS) {
                log::debug!(
                    "#{name}: not a folder, the bot lacks {:?} there",
                    folders::FOLDER_PERMISSIONS.difference(permissions)
                );
                continue;
            }
            folders.push(Channel {
                id: channel.id.get(),
                name: folders::folder_name(name, channel.topic.as_deref()),
            });
        }
        Ok(folders::distinct_names(folders))
    }

    async fn create_channel(&self, name: &str) -> StoreResult<Channel> {
        folders::validate_folder_name(name).map_err(StoreError::Invalid)?;
        let facts = self.facts().await?;
        let exists = |channels: &[Channel]| channels.iter().find(|c| c.name == name).cloned();
        if exists(&self.channels().await?).is_some() {
            return Err(StoreError::ChannelExists(name.to_string()));
        }
        let slug = folders::channel_slug(name);
        let topic = folders::topic_for(name);
        let parent = facts.category.and_then(TwilightId::new_checked);
        let what = format!("creating channel #{slug}");
        let created = self
            .rest
            .call(
                &format!("POST /guilds/{}/channels", self.guild),
                &what,
                || {
                    let request = self
                        .rest
                        .client
                        .create_guild_channel(self.guild, &slug)
                        .kind(ChannelType::GuildText)
                        .topic(&topic);
                    match parent {
                        Some(parent) => made(request.parent_id(parent)),
                        None => made(request),
                    }
                },
                model,
            )
            .await;
        match created {
            Ok(channel) => Ok(Channel {
                id: channel.id.get(),
                name: name.to_string(),
            }),
            Err(RestError::Api { status: 403, .. }) => Err(StoreError::PermissionDenied(format!(
                "creating a folder makes a channel, which needs the Manage Channels \
                 permission; give the bot's role Manage Channels, or create #{slug} in \
                 Discord and set its topic to \"{topic}\""
            ))),
            // The answer was lost after retries: the channel may exist all the same.
            Err(RestError::Unavailable(reason)) => match exists(&self.channels().await?) {
                Some(channel) => Ok(channel),
                None => Err(RestError::Unavailable(reason).into_store_error(&what)),
            },
            Err(e) => Err(e.into_store_error(&what)),
        }
    }

    async fn delete_channel(&self, channel: Id) -> StoreResult<()> {
        let channel_id = self.twilight_channel(channel)?;
        let deleted = self
            .rest
            .call(
                &format!("DELETE /channels/{channel}"),
                "deleting a channel",
                || made(self.rest.client.delete_channel(channel_id)),
                no_body,
            )
            .await;
        match deleted {
            Ok(()) => Ok(()),
            Err(RestError::Api { status: 403, .. }) => Err(StoreError::PermissionDenied(
                "deleting a channel needs the Manage Channels permission".into(),
            )),
            Err(e) => Err(Self::channel_error(channel, None, "deleting a channel", e)),
        }
    }

    async fn post(&self, channel: Id, message: NewMessage) -> StoreResult<Message> {
        let channel_id = self.twilight_channel(channel)?;
        let limits = self.limits().await?;
        let payload = payload_json(&message, random_nonce()?);
        let what = format!("posting a message of {} bytes", message.attachment_bytes());
        let posted = self
            .rest
            .call(
                &format!("POST /channels/{channel}/messages"),
                &what,
                || {
                    // Built only once the rate gate lets the request go, and dropped as
                    // soon as twilight has copied them into its request body, so a
                    // message waiting for its bucket holds no second copy of its bytes.
                    let files = twilight_attachments(&message);
                    let request = self
                        .rest
                        .client
                        .create_message(channel_id)
                        .payload_json(&payload);
                    if files.is_empty() {
                        made(request)
                    } else {
                        made(request.attachments(&files))
                    }
                },
                model,
            )
            .await;
        match posted {
            Ok(posted) => Ok(self.message_from(&posted)),
            Err(e) if e.status() == Some(413) || e.code() == Some(40005) => {
                self.step_down(limits, &message);
                Err(e.into_store_error(&what))
            }
            Err(e) => Err(Self::channel_error(channel, None, &what, e)),
        }
    }

    async fn history(
        &self,
        channel: Id,
        cursor: HistoryCursor,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        let channel_id = self.twilight_channel(channel)?;
        let limit = limit.clamp(1, super::MAX_HISTORY_PAGE) as u16;
        let page = self
            .rest
            .call(
                &format!("GET /channels/{channel}/messages"),
                "reading the channel's history",
                || {
                    let request = self.rest.client.channel_messages(channel_id);
                    let id = |id: Id| TwilightId::new_checked(id.max(1)).expect("non-zero");
                    match cursor {
                        HistoryCursor::Latest => made(request.limit(limit)),
                        HistoryCursor::Before(before) => {
                            made(request.before(id(before)).limit(limit))
                        }
                        HistoryCursor::After(after) => made(request.after(id(after)).limit(limit)),
                    }
                },
                models,
            )
            .await
            .map_err(|e| Self::channel_error(channel, None, "reading the channel's history", e))?;
        let mut messages: Vec<Message> = page.iter().map(|m| self.message_from(m)).collect();
        // Newest first, whatever order the page came in.
        messages.sort_by_key(|m| std::cmp::Reverse(m.id));
        Ok(messages)
    }

    async fn message(&self, channel: Id, message: Id) -> StoreResult<Message> {
        self.get_message(channel, message).await
    }

    async fn fetch_attachment(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        max_bytes: u64,
    ) -> StoreResult<Bytes> {
        self.download(channel, message, attachment, Want::Whole { max_bytes })
            .await
    }

    async fn fetch_range(
        &self,
        channel: Id,
        message: Id,
        attachment: Id,
        range: std::ops::Range<u64>,
    ) -> StoreResult<Bytes> {
        if super::range_len(&range)? == 0 {
            return Ok(Bytes::new());
        }
        self.download(channel, message, attachment, Want::Range(range))
            .await
    }

    async fn prepare_fetch(&self, channel: Id, message: Id, attachment: Id) {
        if let Err(e) = self.fresh_url(channel, message, attachment).await {
            log::debug!("looking up the URL of attachment {attachment} ahead: {e}");
        }
    }

    /// One, for now: the rate gate would run several of a channel's history requests
    /// at once, but the volume's sliced reading of a history is not yet tried on it.
    fn concurrent_history_reads(&self) -> usize {
        1
    }

    async fn pins(&self, channel: Id) -> StoreResult<Vec<Message>> {
        let channel_id = self.twilight_channel(channel)?;
        let what = "reading the channel's pins";
        let mut pinned = Vec::new();
        let mut before = None;
        // Pages of 50, newest pin first, by the time of the pin.
        loop {
            let listing = self
                .rest
                .call(
                    &format!("GET /channels/{channel}/messages/pins"),
                    what,
                    || {
                        let request = self.rest.client.pins(channel_id).limit(50);
                        match before {
                            Some(at) => made(request.before(at)),
                            None => made(request),
                        }
                    },
                    model,
                )
                .await
                .map_err(|e| Self::channel_error(channel, None, what, e))?;
            before = listing.items.last().map(|pin| pin.pinned_at);
            pinned.extend(
                listing
                    .items
                    .iter()
                    .map(|pin| self.message_from(&pin.message)),
            );
            if !listing.has_more || listing.items.is_empty() || pinned.len() >= super::MAX_PINS {
                break;
            }
        }
        Ok(pinned)
    }

    async fn pin(&self, channel: Id, message: Id) -> StoreResult<()> {
        let channel_id = self.twilight_channel(channel)?;
        let message_id: TwilightId<MessageMarker> =
            TwilightId::new_checked(message).ok_or(StoreError::NoSuchMessage(message))?;
        let pinned = self
            .rest
            .call(
                &format!("PUT /channels/{channel}/messages/pins/:id"),
                "pinning a message",
                || made(self.rest.client.create_pin(channel_id, message_id)),
                no_body,
            )
            .await;
        match pinned {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(30003) => Err(StoreError::Invalid(format!(
                "the channel has the most pins Discord allows ({}); unpin some",
                super::MAX_PINS
            ))),
            Err(RestError::Api { status: 403, .. }) => Err(StoreError::PermissionDenied(
                "pinning a message needs the Pin Messages (or Manage Messages) permission; \
                 give it to the bot's role"
                    .into(),
            )),
            Err(e) => Err(Self::channel_error(
                channel,
                Some(message),
                "pinning a message",
                e,
            )),
        }
    }

    async fn unpin(&self, channel: Id, message: Id) -> StoreResult<()> {
        let channel_id = self.twilight_channel(channel)?;
        let message_id: TwilightId<MessageMarker> =
            TwilightId::new_checked(message).ok_or(StoreError::NoSuchMessage(message))?;
        self.rest
            .call(
                &format!("DELETE /channels/{channel}/messages/pins/:id"),
                "unpinning a message",
                || made(self.rest.client.delete_pin(channel_id, message_id)),
                no_body,
            )
            .await
            .map_err(|e| Self::channel_error(channel, Some(message), "unpinning a message", e))
    }

    /// Messages younger than two weeks go a hundred at a time in bulk deletes (one
    /// request, where Discord allows 5 single deletes a second in a channel); older
    /// ones, and any in a bulk delete Discord refused, one by one.
    async fn delete_messages(&self, channel: Id, messages: &[Id]) -> Vec<(Id, StoreError)> {
        use std::sync::atomic::Ordering;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let oldest =
            super::snowflake_at_ms(now_ms.saturating_sub(BULK_DELETE_MAX_AGE.as_millis() as u64));
        let (mut young, mut one_by_one): (Vec<Id>, Vec<Id>) =
            messages.iter().partition(|&&m| m > oldest);
        if self.bulk_refused.load(Ordering::Relaxed) {
            one_by_one.append(&mut young);
        }
        for batch in young.chunks(BULK_DELETE_MAX) {
            if batch.len() < 2 || self.bulk_refused.load(Ordering::Relaxed) {
                one_by_one.extend_from_slice(batch);
                continue;
            }
            if let Err(e) = self.bulk_delete(channel, batch).await {
                log::debug!("bulk delete in channel {channel} refused ({e}); one by one");
                if matches!(e, StoreError::PermissionDenied(_)) {
                    self.bulk_refused.store(true, Ordering::Relaxed);
                }
                one_by_one.extend_from_slice(batch);
            }
        }
        let mut failed = Vec::new();
        for message in one_by_one {
            match self.delete_message(channel, message).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => failed.push((message, e)),
            }
        }
        failed
    }

    async fn delete_message(&self, channel: Id, message: Id) -> StoreResult<()> {
        let channel_id = self.twilight_channel(channel)?;
        let message_id: TwilightId<MessageMarker> =
            TwilightId::new_checked(message).ok_or(StoreError::NoSuchMessage(message))?;
        self.rest
            .call(
                &format!("DELETE /channels/{channel}/messages/:id"),
                "deleting a message",
                || made(self.rest.client.delete_message(channel_id, message_id)),
                no_body,
            )
            .await
            .map_err(|e| Self::channel_error(channel, Some(message), "deleting a message", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_show() {
        let token = Token::new("Bot abc.def.secretvalue");
        assert_eq!(token.expose(), "abc.def.secretvalue");
        assert!(!format!("{token:?} {token}").contains("secret"));
        assert!(!token.masked().contains("secret"));
        let config = DiscordConfig::new(token, 1);
        assert!(!format!("{config:?}").contains("secret"));
    }

    #[test]
    fn api_addresses_parse() {
        assert_eq!(api_root(None).unwrap(), "https://discord.com/api/v10");
        assert_eq!(
            api_root(Some("http://127.0.0.1:8080")).unwrap(),
            "http://127.0.0.1:8080/api/v10"
        );
        assert_eq!(
            api_root(Some("https://proxy.example/api/v10/")).unwrap(),
            "https://proxy.example/api/v10"
        );
        assert!(api_root(Some("127.0.0.1:8080")).is_err());
        assert!(api_root(Some("http://")).is_err());
    }

    #[test]
    fn limits_step_down_to_known_sizes() {
        assert_eq!(size_below(24 * MIB), 10 * MIB);
        assert_eq!(size_below(50 * MIB), 25 * MIB);
        assert_eq!(size_below(9 * MIB), 8 * MIB);
        assert_eq!(size_below(8 * MIB), 4 * MIB);
    }

    #[test]
    fn payload_carries_nonce_and_names() {
        let message = NewMessage {
            content: "dcfs1 data 00".into(),
            attachments: vec![super::super::NewAttachment {
                filename: "c0".into(),
                data: Bytes::from_static(b"x"),
            }],
        };
        let json: serde_json::Value = serde_json::from_slice(&payload_json(&message, 42)).unwrap();
        assert_eq!(json["nonce"], "42");
        assert_eq!(json["enforce_nonce"], true);
        assert_eq!(json["attachments"][0]["filename"], "c0");
        assert_eq!(json["content"], "dcfs1 data 00");
    }
}
