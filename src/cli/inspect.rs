//! The commands that look at the store rather than move files: `ping`, `info`,
//! `attachments`, `members` and `doctor` — the original bot's commands, as
//! subcommands that work without a gateway connection.
//!
//! They work on both stores where that means something (`attachments` lists any
//! channel's history through the store trait); `members` is Discord's alone and says
//! so on the local store. `doctor` prints one line per check, `ok`, `warn` or `FAIL`,
//! with what to do about each failure, and exits non-zero if any check failed.

use std::path::Path;

use twilight_model::guild::Permissions;

use super::output;
use super::{CliError, Context, StoreChoice};
use crate::format::{self, MessageKind};
use crate::store::{HistoryCursor, MAX_HISTORY_PAGE, Store, StoreError};
use crate::volume::{Volume, find_channel};

/// `ping`: one timed round trip.
pub async fn ping(context: &Context) -> Result<(), CliError> {
    let opened = context.open_store().await?;
    match &opened.discord {
        Some(discord) => {
            let took = discord.ping().await?;
            println!("pong: Discord answered in {} ms", took.as_millis());
        }
        None => {
            let started = std::time::Instant::now();
            opened.store.channels().await?;
            println!(
                "pong: the local store answered in {} ms (no network involved)",
                started.elapsed().as_millis()
            );
        }
    }
    Ok(())
}

/// `info CHANNEL`.
pub async fn info(context: &Context, name: &str) -> Result<(), CliError> {
    let opened = context.open_store().await?;
    let channel = find_channel(opened.store.as_ref(), name).await?;
    println!("folder       {}", channel.name);
    println!("channel id   {}", channel.id);
    if let Some(discord) = &opened.discord {
        let info = discord.channel_info(channel.id).await?;
        println!("discord name #{}", info.discord_name);
        if let Some(topic) = info.topic.filter(|t| !t.is_empty()) {
            println!("topic        {topic}");
        }
        if let Some(category) = info.category {
            println!("category     {category}");
        }
        if let Some(last) = info.last_message {
            println!("last message {last}");
        }
        println!("bot may      {}", permission_names(info.permissions));
    }
    let volume = Volume::open(
        opened.store.clone(),
        channel,
        context.key().await?,
        context.volume_config()?,
    )
    .await?;
    let (files, bytes) = volume.index().totals();
    let skipped = volume.index().skipped().len();
    println!("files        {files} ({})", output::human_size(bytes));
    if skipped > 0 {
        println!("unreadable   {skipped} record(s) (other key, damaged or newer format)");
    }
    Ok(())
}

/// `attachments CHANNEL`: the raw view, every attachment of every author.
pub async fn attachments(context: &Context, name: &str) -> Result<(), CliError> {
    let opened = context.open_store().await?;
    let store = opened.store.as_ref();
    let channel = find_channel(store, name).await?;
    let me = store.current_user().await?;
    println!(
        "{:<20} {:<20} {:<7} {:>10}  FILENAME",
        "MESSAGE", "AUTHOR", "KIND", "SIZE"
    );
    let mut cursor = HistoryCursor::Latest;
    let (mut count, mut total) = (0u64, 0u64);
    loop {
        let page = store.history(channel.id, cursor, MAX_HISTORY_PAGE).await?;
        let Some(oldest) = page.last().map(|m| m.id) else {
            break;
        };
        for message in &page {
            let author = if message.author_id == me {
                "this bot".to_string()
            } else {
                message.author_id.to_string()
            };
            let kind = match (message.author_id == me, format::classify(&message.content)) {
                (false, _) => "foreign",
                (true, MessageKind::Data(_)) => "data",
                (true, MessageKind::InlineRecord(_) | MessageKind::AttachedRecord) => "record",
                (true, MessageKind::Checkpoint) => "checkpoint",
                (true, MessageKind::Other) => "other",
            };
            for attachment in &message.attachments {
                println!(
                    "{:<20} {:<20} {:<7} {:>10}  {}",
                    message.id,
                    author,
                    kind,
                    output::human_size(attachment.size),
                    attachment.filename
                );
                count += 1;
                total += attachment.size;
            }
        }
        if page.len() < MAX_HISTORY_PAGE {
            break;
        }
        cursor = HistoryCursor::Before(oldest);
    }
    println!("{count} attachment(s), {}", output::human_size(total));
    Ok(())
}

/// `members`.
pub async fn members(context: &Context) -> Result<(), CliError> {
    let opened = context.open_store().await?;
    let Some(discord) = &opened.discord else {
        return Err(CliError::Usage(
            "`members` lists a Discord guild's members; the local store has none (set a bot \
             token to use Discord)"
                .into(),
        ));
    };
    let members = discord.members().await?;
    println!("{:<20} {:<32} NICKNAME", "ID", "NAME");
    for member in &members {
        let name = if member.bot {
            format!("{} [bot]", member.name)
        } else {
            member.name.clone()
        };
        println!(
            "{:<20} {:<32} {}",
            member.id,
            name,
            member.nick.as_deref().unwrap_or("")
        );
    }
    println!("{} member(s)", members.len());
    Ok(())
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

/// Collects and prints the checks.
#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn line(&mut self, status: Status, check: &str, detail: impl AsRef<str>) {
        let label = match status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => {
                self.failed += 1;
                "FAIL"
            }
        };
        println!("{label}  {check}: {}", detail.as_ref());
    }
}

/// `doctor`.
pub async fn doctor(context: &Context) -> Result<(), CliError> {
    let mut report = Report::default();
    check_key(context, &mut report).await;
    match context.store_choice() {
        Err(e) => report.line(Status::Fail, "settings", e.to_string()),
        Ok(StoreChoice::Local(dir)) => check_local(context, &dir, &mut report).await,
        Ok(StoreChoice::Discord(_)) => check_discord(context, &mut report).await,
    }
    check_fuse(&mut report);
    if report.failed > 0 {
        return Err(CliError::Usage(format!(
            "{} check(s) failed; fix them as shown above",
            report.failed
        )));
    }
    println!("all checks passed");
    Ok(())
}

async fn check_key(context: &Context, report: &mut Report) {
    match context.key().await {
        Ok(Some(key)) => report.line(Status::Ok, "key", format!("key id {}", key.id())),
        Ok(None) => report.line(
            Status::Fail,
            "key",
            "no key: run `dcloud-fs keygen` (or set DCLOUD_KEY_FILE / DCLOUD_PASSPHRASE)",
        ),
        Err(e) => report.line(Status::Fail, "key", e.to_string()),
    }
}

async fn check_local(context: &Context, dir: &Path, report: &mut Report) {
    match context.store().await {
        Ok(store) => {
            report.line(
                Status::Ok,
                "store",
                format!("local store at {} (no Discord bot in use)", dir.display()),
            );
            match store.channels().await {
                Ok(channels) => report.line(
                    Status::Ok,
                    "folders",
                    format!("{} channel(s)", channels.len()),
                ),
                Err(e) => report.line(Status::Fail, "folders", e.to_string()),
            }
        }
        Err(e) => report.line(Status::Fail, "store", e.to_string()),
    }
}

/// The permissions dcloud-fs uses, what for, and whether lacking one is fatal.
const NEEDED_PERMISSIONS: [(Permissions, &str, &str, Status); 6] = [
    (
        Permissions::VIEW_CHANNEL,
        "View Channels",
        "see the channels",
        Status::Fail,
    ),
    (
        Permissions::SEND_MESSAGES,
        "Send Messages",
        "store files",
        Status::Fail,
    ),
    (
        Permissions::ATTACH_FILES,
        "Attach Files",
        "store file contents",
        Status::Fail,
    ),
    (
        Permissions::READ_MESSAGE_HISTORY,
        "Read Message History",
        "list and read files",
        Status::Fail,
    ),
    (
        Permissions::MANAGE_MESSAGES,
        "Manage Messages",
        "bulk-delete and pin",
        Status::Warn,
    ),
    (
        Permissions::MANAGE_CHANNELS,
        "Manage Channels",
        "create folders with mkdir",
        Status::Warn,
    ),
];

async fn check_discord(context: &Context, report: &mut Report) {
    let opened = match context.open_store().await {
        Ok(opened) => opened,
        Err(e) => return report.line(Status::Fail, "settings", e.to_string()),
    };
    let Some(discord) = &opened.discord else {
        return;
    };
    match discord.ping().await {
        Ok(took) => report.line(
            Status::Ok,
            "token",
            format!("Discord accepts it (round trip {} ms)", took.as_millis()),
        ),
        Err(e) => return report.line(Status::Fail, "token", e.to_string()),
    }
    let summary = match discord.guild_summary().await {
        Ok(summary) => summary,
        Err(e) => return report.line(Status::Fail, "guild", e.to_string()),
    };
    report.line(
        Status::Ok,
        "guild",
        format!(
            "'{}' ({}), as bot '{}' ({})",
            summary.guild_name, summary.guild_id, summary.bot_name, summary.bot_id
        ),
    );
    for (permission, name, used_for, severity) in NEEDED_PERMISSIONS {
        if summary.permissions.contains(permission) {
            report.line(Status::Ok, "permission", format!("{name} ({used_for})"));
        } else {
            report.line(
                severity,
                "permission",
                format!(
                    "the bot lacks {name}, needed to {used_for}: Server Settings → Roles → the \
                     bot's role → {name}"
                ),
            );
        }
    }
    report.line(
        Status::Ok,
        "limits",
        format!(
            "{} per file (boost tier {}), {} per message",
            output::human_size(summary.limits.max_file_size),
            summary.premium_tier,
            output::human_size(summary.limits.max_request_size)
        ),
    );
    match discord.channels().await {
        Ok(channels) if channels.is_empty() => report.line(
            Status::Warn,
            "folders",
            "no text channel the bot can use; `dcloud-fs mkdir NAME` creates one",
        ),
        Ok(channels) => report.line(
            Status::Ok,
            "folders",
            format!("{} channel(s) usable as folders", channels.len()),
        ),
        Err(StoreError::NotSetUp(message)) => report.line(Status::Fail, "folders", message),
        Err(e) => report.line(Status::Fail, "folders", e.to_string()),
    }
}

fn check_fuse(report: &mut Report) {
    let device = Path::new("/dev/fuse").exists();
    let helper = ["fusermount3", "fusermount"]
        .iter()
        .find(|name| on_path(name));
    match (device, helper) {
        (true, Some(helper)) => report.line(Status::Ok, "fuse", format!("/dev/fuse and {helper}")),
        (false, _) => report.line(
            Status::Warn,
            "fuse",
            "no /dev/fuse: mounting needs the fuse kernel module (`modprobe fuse`)",
        ),
        (true, None) => report.line(
            Status::Warn,
            "fuse",
            "no fusermount3: mounting needs it (Debian/Ubuntu: `apt install fuse3`)",
        ),
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Permission bits as the names Discord's settings use.
fn permission_names(permissions: Permissions) -> String {
    let names: Vec<&str> = NEEDED_PERMISSIONS
        .iter()
        .filter(|(p, ..)| permissions.contains(*p))
        .map(|(_, name, ..)| *name)
        .collect();
    if names.is_empty() {
        "none of what dcloud-fs needs".into()
    } else {
        names.join(", ")
    }
}
