//! The running server: the state it shares between connections, the accept loop, the
//! first routing step (REST API, CDN, control endpoints) and [`FakeDiscord`], the handle
//! tests and the binary hold.
//!
//! A plain hyper service is used (no framework) so that a request can end with the
//! connection closed and no answer at all, as failure injection needs.

use crate::config::{Config, Knobs};
use crate::dice::Dice;
use crate::error::ConnectionError;
use crate::ratelimit::RateLimiter;
use crate::reply::{self, HttpResponse};
use crate::routes::Route;
use crate::state::{GuildState, NewFile, NewMessage, Posted};
use crate::stats::Stats;
use crate::{api, cdn, control};
use bytes::Bytes;
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// What every request handler shares.
pub(crate) struct Shared {
    /// The bot token.
    pub token: String,
    /// `http://127.0.0.1:PORT`.
    pub api_base: String,
    /// Random source for failure injection.
    pub dice: Dice,
    knobs: Mutex<Knobs>,
    guild: Mutex<GuildState>,
    limiter: Mutex<RateLimiter>,
    stats: Mutex<Stats>,
    /// API requests in the server now, per route template.
    in_flight: Mutex<HashMap<&'static str, u64>>,
}

impl Shared {
    fn new(config: Config, addr: SocketAddr) -> Shared {
        let guild = GuildState::new(
            config.guild_id,
            config.bot_user_id,
            &config.channels,
            config.backdate.as_millis() as u64,
        );
        Shared {
            api_base: format!("http://{addr}"),
            dice: Dice::new(),
            knobs: Mutex::new(config.knobs()),
            guild: Mutex::new(guild),
            limiter: Mutex::new(RateLimiter::default()),
            stats: Mutex::new(Stats::default()),
            in_flight: Mutex::default(),
            token: config.token,
        }
    }

    /// A copy of the current knobs.
    pub fn knobs(&self) -> Knobs {
        lock(&self.knobs).clone()
    }

    /// Changes the knobs.
    pub fn change_knobs<T>(&self, change: impl FnOnce(&mut Knobs) -> T) -> T {
        let (result, backdate) = {
            let mut knobs = lock(&self.knobs);
            let result = change(&mut knobs);
            (result, knobs.backdate)
        };
        self.guild().set_backdate_ms(backdate.as_millis() as u64);
        result
    }

    /// The guild, locked. Never lock it from inside [`Shared::count`].
    pub fn guild(&self) -> MutexGuard<'_, GuildState> {
        lock(&self.guild)
    }

    /// The rate limiter, locked.
    pub fn limiter(&self) -> MutexGuard<'_, RateLimiter> {
        lock(&self.limiter)
    }

    /// Updates the statistics.
    pub fn count(&self, update: impl FnOnce(&mut Stats)) {
        update(&mut lock(&self.stats));
    }

    /// A copy of the statistics.
    pub fn stats(&self) -> Stats {
        lock(&self.stats).clone()
    }

    /// Posts a message as another user (not the bot): someone else in the channel.
    /// Returns its id, or why it can't be posted.
    pub fn post_foreign(
        &self,
        channel_id: u64,
        author_id: u64,
        content: &str,
        attachments: Vec<(String, Vec<u8>)>,
    ) -> Result<u64, String> {
        let files = attachments
            .into_iter()
            .map(|(filename, data)| NewFile {
                filename,
                data: Bytes::from(data),
                content_type: None,
            })
            .collect();
        let message = NewMessage {
            content: content.to_owned(),
            files,
            ..NewMessage::default()
        };
        let mut guild = self.guild();
        guild.ensure_user(author_id);
        match guild.post_message(channel_id, author_id, message) {
            Ok(Posted::Created(id) | Posted::Existing(id)) => Ok(id),
            Err(error) => Err(error.message),
        }
    }
}

/// Locks a mutex, ignoring poisoning (a panicking handler leaves consistent enough state
/// for a test double).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake Discord server. Dropping it stops the server.
pub struct FakeDiscord {
    shared: Arc<Shared>,
    addr: SocketAddr,
    guild_id: u64,
    bot_user_id: u64,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeDiscord {
    /// Starts a server listening on `listen`, on the current tokio runtime.
    pub async fn start(listen: SocketAddr, config: Config) -> std::io::Result<FakeDiscord> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (server, stop) = FakeDiscord::new(config, addr);
        tokio::spawn(serve(listener, server.shared.clone(), stop));
        Ok(server)
    }

    /// Starts a server on 127.0.0.1 and a free port, on its own thread and runtime
    /// (for synchronous tests, for instance ones that run the dcloud-fs binary).
    pub fn start_in_background(config: Config) -> std::io::Result<FakeDiscord> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-discord")
            .enable_all()
            .build()?;
        let (mut server, stop) = FakeDiscord::new(config, addr);
        let shared = server.shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-discord".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, shared, stop).await,
                        Err(error) => log::error!("fake-discord cannot listen: {error}"),
                    }
                });
            })?;
        server.thread = Some(thread);
        Ok(server)
    }

    fn new(config: Config, addr: SocketAddr) -> (FakeDiscord, oneshot::Receiver<()>) {
        let (stop, stopped) = oneshot::channel();
        let server = FakeDiscord {
            guild_id: config.guild_id,
            bot_user_id: config.bot_user_id,
            shared: Arc::new(Shared::new(config, addr)),
            addr,
            stop: Some(stop),
            thread: None,
        };
        (server, stopped)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the REST API is under `/api/v10`, the CDN under `/attachments`.
    pub fn api_base(&self) -> String {
        self.shared.api_base.clone()
    }

    /// The bot token clients must send.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The guild's id.
    pub fn guild_id(&self) -> u64 {
        self.guild_id
    }

    /// The bot's user id.
    pub fn bot_user_id(&self) -> u64 {
        self.bot_user_id
    }

    /// A copy of the current knobs.
    pub fn knobs(&self) -> Knobs {
        self.shared.knobs()
    }

    /// Changes knobs while the server runs (they apply to requests that arrive afterwards).
    pub fn set_knobs(&self, change: impl FnOnce(&mut Knobs)) {
        self.shared.change_knobs(change);
    }

    /// Makes every attachment URL handed out so far stop working (the CDN answers 404);
    /// fetching the message again, or refresh-urls, gives working ones.
    pub fn expire_all_urls(&self) {
        self.shared.guild().signer.rotate();
    }

    /// Posts a message as another user (a human, made up if unknown), with attachments
    /// given as (filename, bytes). Returns its id.
    ///
    /// # Panics
    ///
    /// If the channel does not exist or is not a text channel.
    pub fn post_foreign_message(
        &self,
        channel_id: u64,
        author_id: u64,
        content: &str,
        attachments: Vec<(String, Vec<u8>)>,
    ) -> u64 {
        self.shared
            .post_foreign(channel_id, author_id, content, attachments)
            .unwrap_or_else(|error| panic!("cannot post in channel {channel_id}: {error}"))
    }

    /// The id of the text channel with this name (rewritten as Discord would).
    pub fn channel_id(&self, name: &str) -> Option<u64> {
        self.shared.guild().channel_named(name).map(|c| c.id)
    }

    /// How many messages a channel holds (0 for an unknown channel).
    pub fn message_count(&self, channel_id: u64) -> usize {
        self.shared
            .guild()
            .channel(channel_id)
            .map_or(0, |c| c.messages.len())
    }

    /// What the server has seen and done so far.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Stops the server and waits for its thread, if it has one.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        self.stop_now();
    }
}

impl std::fmt::Debug for FakeDiscord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDiscord")
            .field("addr", &self.addr)
            .field("guild_id", &self.guild_id)
            .finish_non_exhaustive()
    }
}

/// Accepts connections until told to stop; stopping aborts the open connections.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
                Err(error) => {
                    log::warn!("accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| handle(shared.clone(), request));
    if let Err(error) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("connection ended: {error}");
    }
}

/// Sends a request to the REST API, the CDN or the control endpoints.
async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<HttpResponse, ConnectionError> {
    let path = request.uri().path();
    if path.starts_with("/_fake/") {
        return Ok(control::handle(&shared, request).await);
    }
    if !log::log_enabled!(target: "fake_discord::requests", log::Level::Info) {
        return route(shared, request).await;
    }
    // The request log (`RUST_LOG=fake_discord::requests=info`): when each request came
    // (ms since the Unix epoch), how long its answer took to start, and what it was.
    let arrived = crate::time::now_ms();
    let started = std::time::Instant::now();
    // The query of API requests (a history page's cursor), not of the CDN's signed URLs.
    let query = match request.uri().query() {
        Some(query) if path.starts_with("/api/") => format!("?{query}"),
        _ => String::new(),
    };
    let what = format!("{} {path}{query}", request.method());
    let ranged = request.headers().contains_key(hyper::header::RANGE);
    let answer = route(shared, request).await;
    let status = answer.as_ref().map_or(0, |r| r.status().as_u16());
    log::info!(
        target: "fake_discord::requests",
        "{arrived} +{}ms {status} {what}{}",
        started.elapsed().as_millis(),
        if ranged { " (range)" } else { "" }
    );
    answer
}

/// [`handle`] after the control endpoints: the latency, then the REST API or the CDN.
async fn route(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<HttpResponse, ConnectionError> {
    let _in_flight = InFlight::enter(&shared, &request);
    let knobs = shared.knobs();
    if !knobs.latency.is_zero() {
        tokio::time::sleep(knobs.latency).await;
    }
    let path = request.uri().path();
    if path.starts_with("/api/v10/") {
        api::handle(&shared, request, &knobs).await
    } else if path.starts_with("/attachments/") {
        cdn::handle(&shared, request, &knobs).await
    } else {
        Ok(reply::text(404, "404: Not Found"))
    }
}

/// An API request in the server, counted in [`Stats::most_in_flight`] while it lives.
struct InFlight<'a> {
    shared: &'a Shared,
    template: Option<&'static str>,
}

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared, request: &Request<Incoming>) -> InFlight<'a> {
        let template = request
            .uri()
            .path()
            .strip_prefix("/api/v10/")
            .and_then(|path| Route::parse(request.method(), path).ok())
            .map(|route| route.template());
        if let Some(template) = template {
            let now = {
                let mut in_flight = lock(&shared.in_flight);
                let now = in_flight.entry(template).or_default();
                *now += 1;
                *now
            };
            shared.count(|s| {
                let most = s.most_in_flight.entry(template.to_owned()).or_default();
                *most = (*most).max(now);
            });
        }
        InFlight { shared, template }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(template) = self.template {
            let mut in_flight = lock(&self.shared.in_flight);
            if let Some(now) = in_flight.get_mut(template) {
                *now = now.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FakeDiscord;

    #[test]
    fn the_handle_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<FakeDiscord>();
    }
}
