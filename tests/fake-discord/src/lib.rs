//! A fake Discord server for dcloud-fs's tests and benchmarks: the REST API (v10) and the
//! attachment CDN that the Discord store uses, in memory, faithful where a client can tell
//! the difference — `Authorization: Bot <token>`, snowflakes, JSON error codes, attachment
//! limits (413 / 40005), signed expiring CDN URLs, rate limits with Discord's headers and
//! 429 bodies — plus knobs to add latency, cap bandwidth and inject failures.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use fake_discord::{Config, FakeDiscord};
//! let config = Config { channels: vec!["files".into()], ..Config::default() };
//! let server = FakeDiscord::start("127.0.0.1:0".parse().unwrap(), config).await?;
//! println!("{} {}", server.api_base(), server.token());
//! # Ok(()) }
//! ```

mod api;
mod body;
mod cdn;
mod config;
mod control;
mod dice;
mod endpoints;
mod error;
mod multipart;
pub mod permissions;
mod ratelimit;
mod render;
mod reply;
mod routes;
mod server;
mod signing;
mod state;
mod stats;
mod time;

pub use config::{Config, Knobs};
pub use server::FakeDiscord;
pub use stats::Stats;
pub use time::{DISCORD_EPOCH_MS, snowflake_ms};
