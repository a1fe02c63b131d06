//! `dcloud-fs serve`: the original app's web page, WebDAV and share links, over the
//! same filesystem core the mount serves ([`crate::fs`]).
//!
//! It is the second adapter over the fs core, beside the FUSE one: nothing below it
//! knows HTTP, and nothing here stores anything itself. A file uploaded through the
//! page or WebDAV goes into the spool and up to the channel exactly as one copied
//! into the mount (write-back; `dcloud-fs status` shows the queue), a download reads
//! through the same block cache and read-ahead, and the rules for names, renames
//! and deletes are the fs core's. Parts:
//!
//! - [`tree`]: the fs core by path, with uploads that appear under their name only
//!   when complete;
//! - `files`: the page's routes (`/files/...`: a folder's page, a file's bytes with
//!   `Range`, an upload by `PUT`) and its actions (`/api/...`), and share links'
//!   downloads (`/s/TOKEN`);
//! - [`page`]: the HTML, rendered on the server, with a small script and style sheet
//!   built into the binary;
//! - [`range`]: `Range` requests;
//! - [`dav`]: WebDAV at `/dav/` (dav-server over [`tree`]);
//! - [`auth`]: who may come in (no login on loopback without a password; else a
//!   session cookie or HTTP Basic, checked against an Argon2id hash), failed logins
//!   throttled, CSRF and DNS-rebinding checks;
//! - [`shares`]: the share links' list;
//! - [`tls`]: TLS from a certificate and key, when no reverse proxy does it;
//! - `error`: [`ServeError`], what each failure is answered with.
//!
//! Every request is logged at info when it ends: method, path, status, bytes and
//! time. A share link's token is cut from the path first, and no header, query or
//! body is logged, so tokens and passwords never reach the log.

pub mod auth;
pub mod dav;
mod error;
mod files;
pub mod page;
pub mod range;
pub mod shares;
pub mod tls;
pub mod tree;

pub use self::error::ServeError;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post, put};

use self::auth::{Access, Proof};
use self::shares::Shares;
use self::tree::Tree;
use crate::fs::Fs;

/// Where `serve` listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How `serve` behaves. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen. Default 127.0.0.1:8080 ([`DEFAULT_LISTEN`]).
    pub listen: SocketAddr,
    /// The Argon2id hash (PHC string) of the password; `None` (the default): no
    /// login, allowed only on a loopback address.
    pub password_hash: Option<String>,
    /// The address people reach the server at, for share links (e.g. an `https`
    /// address of a reverse proxy). Default: `http://` + the listen address.
    pub base_url: Option<String>,
    /// Whether `serve` speaks TLS itself ([`tls`]). Default false.
    pub tls: bool,
    /// Where the share list lives. Default: the config folder.
    pub shares_dir: std::path::PathBuf,
    /// Rows a folder's page shows before "show all". Default 1,000.
    pub listing_limit: usize,
    /// Refuse every change. Default false (the fs core refuses them too when
    /// mounted read-only; this also hides the page's buttons).
    pub read_only: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: DEFAULT_LISTEN.parse().expect("a valid address"),
            password_hash: None,
            base_url: None,
            tls: false,
            shares_dir: crate::dirs::config_dir(),
            listing_limit: 1_000,
            read_only: false,
        }
    }
}

impl ServeConfig {
    /// The address share links start with, without a trailing `/`.
    pub fn public_base(&self) -> String {
        match &self.base_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None if self.tls => format!("https://{}", self.listen),
            None => format!("http://{}", self.listen),
        }
    }

    /// Whether the session cookie is marked `Secure`: when the page is reached over
    /// HTTPS (TLS here, or an `https` base URL).
    pub fn secure_cookies(&self) -> bool {
        self.tls
            || self
                .base_url
                .as_deref()
                .is_some_and(|url| url.starts_with("https://"))
    }

    /// The host name of the base URL, if one is set.
    fn base_host(&self) -> Option<String> {
        let url = self.base_url.as_deref()?;
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let host = rest.split('/').next().unwrap_or(rest);
        Some(auth::host_name(host).to_string())
    }
}

/// What every request shares.
pub struct App {
    pub tree: Tree,
    pub config: ServeConfig,
    pub access: Access,
    pub shares: Shares,
    dav: dav_server::DavHandler,
}

impl App {
    pub fn new(fs: Arc<Fs>, config: ServeConfig) -> Arc<App> {
        let tree = Tree::new(fs);
        let dav = dav_server::DavHandler::builder()
            .filesystem(Box::new(dav::DavFs::new(tree.clone())))
            .locksystem(dav_server::memls::MemLs::new())
            .strip_prefix("/dav")
            .build_handler();
        Arc::new(App {
            tree,
            access: Access::new(config.password_hash.clone()),
            shares: Shares::new(config.shares_dir.clone()),
            config,
            dav,
        })
    }
}

/// The routes, with access checks and request logs.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/files/") }))
        .route("/files", get(|| async { Redirect::to("/files/") }))
        .route("/files/", get(files::get_root))
        .route("/files/{*path}", get(files::get).head(files::get))
        .route(
            "/files/{*path}",
            put(files::put).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/mkdir", post(files::mkdir))
        .route("/api/rename", post(files::rename))
        .route("/api/delete", post(files::delete))
        .route("/api/share", post(files::share))
        .route("/s/{token}", get(files::shared))
        .route("/login", get(files::login_form).post(files::log_in))
        .route("/logout", post(files::log_out))
        .route("/assets/app.css", get(|| asset(page::STYLE, "text/css")))
        .route(
            "/assets/app.js",
            get(|| asset(page::SCRIPT, "text/javascript")),
        )
        .route("/dav", any(dav_request))
        .route("/dav/", any(dav_request))
        .route("/dav/{*rest}", any(dav_request))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .layer(middleware::from_fn(log_request))
        .with_state(app)
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn dav_request(State(app): State<Arc<App>>, request: Request) -> Response {
    let response = app.dav.handle(request).await;
    response.map(axum::body::Body::new)
}

/// Logs each request as it ends; see the module docs for what is left out.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = loggable_path(request.uri().path());
    let sent = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let started = Instant::now();
    let response = next.run(request).await;
    let bytes = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let received = sent.map(|n| format!(" (in {n} B)")).unwrap_or_default();
    log::info!(
        "{method} {path} {} {bytes} B{received} {} ms",
        response.status().as_u16(),
        started.elapsed().as_millis()
    );
    response
}

/// `path` with a share link's token cut off.
pub fn loggable_path(path: &str) -> String {
    match path.strip_prefix("/s/") {
        Some(_) => "/s/…".to_string(),
        None => path.to_string(),
    }
}

/// Paths anyone may reach: the login form, the page's assets, share links.
fn public(path: &str) -> bool {
    path == "/login" || path.starts_with("/assets/") || path.starts_with("/s/")
}

/// Methods that change nothing.
fn safe(method: &Method) -> bool {
    matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS" | "PROPFIND")
}

/// The access checks of [`auth`], before any route: who the request is, whether
/// it may come in, and (for a change) whether it came from the page.
async fn guard(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    // What the checks look at, taken out of the request (whose body isn't `Sync`).
    let asked = Asked {
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        path_and_query: request
            .uri()
            .path_and_query()
            .map_or_else(|| "/files/".to_string(), |p| p.as_str().to_string()),
        headers: request.headers().clone(),
    };
    match check(&app, client.ip(), &asked).await {
        Ok(proof) => {
            request.extensions_mut().insert(proof);
            next.run(request).await
        }
        Err(refused) => refused,
    }
}

/// What a request asks, as the access checks see it.
struct Asked {
    method: Method,
    path: String,
    path_and_query: String,
    headers: HeaderMap,
}

async fn check(app: &App, client: IpAddr, asked: &Asked) -> Result<Proof, Response> {
    let headers = &asked.headers;
    let path = asked.path.as_str();
    let host = header_text(headers, header::HOST).unwrap_or_default();
    if !app.access.required() && !auth::host_allowed(host, app.config.base_host().as_deref()) {
        return Err(ServeError::Forbidden(format!(
            "{} is not this server's name (a server without a password answers only to \
             its loopback address, or base_url's host)",
            auth::host_name(host)
        ))
        .into_response());
    }
    if !safe(&asked.method)
        && let Some(origin) = header_text(headers, header::ORIGIN)
        && !auth::same_origin(origin, host)
    {
        return Err(
            ServeError::Forbidden("a change asked from another site".into()).into_response(),
        );
    }
    if public(path) {
        return Ok(Proof::Open);
    }
    let cookie = session_cookie(headers);
    let basic = basic_password(headers);
    let proof = match app
        .access
        .prove(cookie.as_deref(), basic.as_deref(), client)
        .await
    {
        Ok(Some(proof)) => proof,
        Ok(None) => return Err(log_in_first(asked)),
        Err(e) => {
            let mut response = ServeError::from(e).into_response();
            ask_for_basic(&mut response);
            return Err(response);
        }
    };
    let page_route = path.starts_with("/files/") || path.starts_with("/api/");
    if page_route
        && !safe(&asked.method)
        && from_a_browser(headers)
        && let Some(expected) = app.access.csrf_for(&proof)
    {
        let sent = header_text(headers, "x-csrf-token").unwrap_or_default();
        if !auth::same(sent.as_bytes(), expected.as_bytes()) {
            return Err(ServeError::Forbidden(
                "the page's token is missing or old; reload the page".into(),
            )
            .into_response());
        }
    }
    Ok(proof)
}

/// Whether a request looks like a browser's: it carries a cookie, an `Origin` or a
/// `Sec-Fetch-Site` header, which browsers add and a page can't take away. Only
/// those need the page's token: a script (curl) is no cross-site forgery.
fn from_a_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::COOKIE)
        || headers.contains_key(header::ORIGIN)
        || headers.contains_key("sec-fetch-site")
}

/// A request that must log in: a browser asking for a page goes to the form, the
/// rest are asked for Basic credentials.
fn log_in_first(asked: &Asked) -> Response {
    let wants_page = asked.method == Method::GET
        && !asked.path.starts_with("/dav")
        && header_text(&asked.headers, header::ACCEPT).is_some_and(|a| a.contains("text/html"));
    if wants_page {
        let to = format!(
            "/login?next={}",
            page::encode_segment(&asked.path_and_query)
        );
        return Redirect::to(&to).into_response();
    }
    let mut response = ServeError::LogIn.into_response();
    ask_for_basic(&mut response);
    response
}

fn ask_for_basic(response: &mut Response) {
    if response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"dcloud-fs\", charset=\"UTF-8\""),
        );
    }
}

fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The session cookie's value, if sent.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == auth::COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The password of an `Authorization: Basic` header (the user name is ignored).
fn basic_password(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = header_text(headers, header::AUTHORIZATION)?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_string())
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_reach_the_log() {
        assert_eq!(loggable_path("/s/abcdefSECRET"), "/s/…");
        assert_eq!(loggable_path("/files/a/b"), "/files/a/b");
    }

    #[test]
    fn credentials_are_read_from_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; dcloud_session=tok; b=2".parse().unwrap(),
        );
        headers.insert(
            header::AUTHORIZATION,
            "Basic dXNlcjpwYTpzcw==".parse().unwrap(),
        );
        assert_eq!(session_cookie(&headers).as_deref(), Some("tok"));
        assert_eq!(basic_password(&headers).as_deref(), Some("pa:ss"));
    }
}
