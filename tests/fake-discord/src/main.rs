//! `fake-discord`: runs the fake Discord server as a process, for benchmarks and manual
//! tests. It prints `DCLOUD_API=`, `DCLOUD_TOKEN=` and `DCLOUD_GUILD=` lines (a script can
//! `source` them) and serves until SIGINT or SIGTERM.

use clap::Parser;
use fake_discord::{Config, FakeDiscord};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// A fake Discord REST API and CDN, in memory.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Bot token clients must send (default: random).
    #[arg(long)]
    token: Option<String>,
    /// Guild id.
    #[arg(long)]
    guild: Option<u64>,
    /// A text channel to create at start (repeatable).
    #[arg(long = "channel")]
    channels: Vec<String>,
    /// Largest attachment in bytes (10 MiB; 50 or 100 MiB emulate boosted guilds).
    #[arg(long)]
    max_file_size: Option<u64>,
    /// Delay added to every API and CDN request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Cap on upload and download speed, in bytes per second.
    #[arg(long)]
    bandwidth: Option<u64>,
    /// Lifetime of signed attachment URLs, in seconds.
    #[arg(long)]
    url_lifetime_secs: Option<u64>,
    /// Fraction of requests that fail on purpose (5xx or dropped connection).
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Fraction of API requests answered 429 although no bucket is exhausted.
    #[arg(long = "forced-429-rate", default_value_t = 0.0)]
    forced_429_rate: f64,
    /// Do not enforce rate limits (headers are still sent).
    #[arg(long)]
    no_rate_limits: bool,
    /// Grant the privileged members intent (listing guild members).
    #[arg(long)]
    members_intent: bool,
    /// Permission bits of the bot's role.
    #[arg(long)]
    bot_permissions: Option<u64>,
    /// Ignore `Range` headers: answer every CDN download 200 with the whole attachment.
    #[arg(long)]
    ignore_range: bool,
}

impl Args {
    fn into_config(self) -> Config {
        let defaults = Config::default();
        Config {
            token: self.token.unwrap_or(defaults.token),
            guild_id: self.guild.unwrap_or(defaults.guild_id),
            channels: self.channels,
            max_file_size: self.max_file_size.unwrap_or(defaults.max_file_size),
            latency: Duration::from_millis(self.latency_ms),
            bandwidth: self.bandwidth,
            url_lifetime: self
                .url_lifetime_secs
                .map_or(defaults.url_lifetime, Duration::from_secs),
            failure_rate: self.failure_rate,
            forced_429_rate: self.forced_429_rate,
            rate_limits: !self.no_rate_limits,
            members_intent: self.members_intent,
            ignore_range: self.ignore_range,
            bot_permissions: self.bot_permissions.unwrap_or(defaults.bot_permissions),
            ..defaults
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let listen = args.listen;
    // Listen for signals before announcing, so a script may stop us as soon as it read the lines.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let server = FakeDiscord::start(listen, args.into_config()).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "DCLOUD_API={}", server.api_base())?;
    writeln!(stdout, "DCLOUD_TOKEN={}", server.token())?;
    writeln!(stdout, "DCLOUD_GUILD={}", server.guild_id())?;
    stdout.flush()?;
    drop(stdout);
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    server.shutdown();
    Ok(())
}
