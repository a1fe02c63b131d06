//! The page's routes: a folder's page (or its listing as JSON), a file's bytes
//! (with `Range`, so players seek and downloads resume), uploads by `PUT` streamed
//! into the spool, the actions the page's buttons send (`/api/...`: new folder,
//! rename or move, delete, share), share links' downloads, and the login form.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use futures::StreamExt;
use serde::Deserialize;

use super::auth::{self, Proof};
use super::page::{self, FolderView, Row, Sort};
use super::range::{self, Want};
use super::shares::{self, Lookup};
use super::tree::{READ_PIECE, Reader, TreePath};
use super::{App, ServeError};

/// Bytes of an upload gathered before they go to the spool.
const WRITE_PIECE: usize = 1 << 20;
/// Search results shown at most.
const SEARCH_LIMIT: usize = 1_000;

/// What a folder's or a file's URL may ask.
#[derive(Debug, Default, Deserialize)]
pub struct GetQuery {
    sort: Option<String>,
    order: Option<String>,
    q: Option<String>,
    limit: Option<String>,
    /// A file: as an attachment (`?download`).
    download: Option<String>,
    /// A folder: its listing as JSON (`?json`).
    json: Option<String>,
}

fn parse(raw: &str) -> Result<TreePath, ServeError> {
    TreePath::parse(raw).map_err(ServeError::at(raw))
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// An error as the client wants it: a page for a browser, else JSON.
fn answer(result: Result<Response, ServeError>, headers: &HeaderMap) -> Response {
    match result {
        Ok(response) => response,
        Err(e) if wants_html(headers) => e.page(),
        Err(e) => e.into_response(),
    }
}

pub async fn get_root(
    State(app): State<Arc<App>>,
    Extension(proof): Extension<Proof>,
    Query(query): Query<GetQuery>,
    headers: HeaderMap,
) -> Response {
    let result = folder(&app, &proof, TreePath::root(), &query).await;
    answer(result, &headers)
}

pub async fn get(
    State(app): State<Arc<App>>,
    Extension(proof): Extension<Proof>,
    Path(raw): Path<String>,
    Query(query): Query<GetQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let path = parse(&raw)?;
        let held = app
            .tree
            .stat(&path)
            .await
            .map_err(ServeError::at(path.display()))?;
        if held.is_dir() {
            drop(held);
            if !raw.ends_with('/') && query.json.is_none() {
                // So that the page's relative links resolve inside the folder.
                return Ok(Redirect::permanent(&page::href("/files", &path, true)).into_response());
            }
            return folder(&app, &proof, path, &query).await;
        }
        let reader = app
            .tree
            .open_held(held)
            .await
            .map_err(ServeError::at(path.display()))?;
        Ok(download(reader, &path, &headers, query.download.is_some()))
    }
    .await;
    answer(result, &headers)
}

/// A folder's page, or its listing as JSON.
async fn folder(
    app: &App,
    proof: &Proof,
    path: TreePath,
    query: &GetQuery,
) -> Result<Response, ServeError> {
    let search = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let mut rows: Vec<Row> = match search {
        Some(needle) if !path.is_root() => app
            .tree
            .search(&path, needle, SEARCH_LIMIT)
            .await
            .map_err(ServeError::at(path.display()))?
            .into_iter()
            .filter_map(|found| {
                let relative = TreePath::parse(&found.path).ok()?;
                let mut full = path.clone();
                for name in relative.names() {
                    full = full.join(name);
                }
                Some(Row {
                    label: found.path,
                    path: full,
                    is_dir: found.is_dir,
                    size: found.size,
                    mtime: found.mtime,
                })
            })
            .collect(),
        _ => app
            .tree
            .list(&path)
            .await
            .map_err(ServeError::at(path.display()))?
            .into_iter()
            .map(|entry| Row {
                path: path.join(&entry.name),
                label: entry.name,
                is_dir: entry.is_dir,
                size: entry.size,
                mtime: entry.mtime,
            })
            .collect(),
    };
    let sort = Sort::parse(query.sort.as_deref());
    let descending = query.order.as_deref() == Some("desc");
    page::sort_rows(&mut rows, sort, descending);
    if query.json.is_some() {
        return Ok(Json(listing_json(&path, &rows)).into_response());
    }
    let total = rows.len();
    if query.limit.as_deref() != Some("all") {
        rows.truncate(app.config.listing_limit);
    }
    let view = FolderView {
        path,
        rows,
        total,
        sort,
        descending,
        search: search.map(str::to_string),
        csrf: app.access.csrf_for(proof),
        read_only: app.config.read_only,
        logged_in: matches!(proof, Proof::Session { .. }),
    };
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Html(page::folder_page(&view)),
    )
        .into_response())
}

fn listing_json(path: &TreePath, rows: &[Row]) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "name": row.label,
                "path": row.path.display(),
                "is_dir": row.is_dir,
                "size": row.size,
                "mtime_ms": page::epoch_ms(row.mtime),
            })
        })
        .collect();
    serde_json::json!({ "path": path.display(), "entries": entries })
}

/// The bytes of an open file, as the request's `Range` and `If-Range` ask.
fn download(reader: Reader, path: &TreePath, headers: &HeaderMap, attachment: bool) -> Response {
    let size = reader.size();
    let mtime = reader.attr().mtime;
    let modified = httpdate::fmt_http_date(mtime);
    let etag = format!(
        "\"{:x}-{:x}-{:x}\"",
        reader.attr().ino,
        size,
        page::epoch_ms(mtime)
    );
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if text(header::IF_NONE_MATCH).is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag)) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    // A Range applies only to the version the client holds.
    let range_applies =
        text(header::IF_RANGE).is_none_or(|validator| validator == etag || validator == modified);
    let want = if range_applies {
        range::want(text(header::RANGE), size)
    } else {
        Want::All
    };
    let name = path.name().unwrap_or("file");
    let mut response = match want {
        Want::Unsatisfiable => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return response;
        }
        Want::All => {
            // A whole file is a download, as `get`'s: read-ahead needn't wait to see
            // it, and the client keeps the copy, so it isn't kept on disk here too. (A
            // Range may be a video player's seek that reads a little and stops, and
            // comes back.)
            reader.advise_download(0);
            body_of(reader, 0, size, StatusCode::OK)
        }
        Want::Part { start, end } => {
            let mut response = body_of(reader, start, end, StatusCode::PARTIAL_CONTENT);
            if let Ok(value) = HeaderValue::from_str(&range::content_range(start, end, size)) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            response
        }
    };
    let kind = mime_guess::from_path(name).first_or_octet_stream();
    let disposition = format!(
        "{}; filename*=UTF-8''{}",
        if attachment { "attachment" } else { "inline" },
        page::encode_segment(name)
    );
    let set = response.headers_mut();
    for (key, value) in [
        (header::CONTENT_TYPE, kind.essence_str().to_string()),
        (header::ACCEPT_RANGES, "bytes".into()),
        (header::ETAG, etag),
        (header::LAST_MODIFIED, modified),
        (header::CONTENT_DISPOSITION, disposition),
        (header::CACHE_CONTROL, "private, no-cache".into()),
        // Stored files are never run as this site's pages.
        (header::CONTENT_SECURITY_POLICY, "sandbox".into()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            set.insert(key, value);
        }
    }
    response
}

/// A response streaming bytes `start..end` of the file, a piece at a time. A read
/// that fails ends the body early, so the client sees a cut transfer, never wrong
/// bytes.
fn body_of(reader: Reader, start: u64, end: u64, status: StatusCode) -> Response {
    let stream = futures::stream::unfold((reader, start), move |(reader, at)| async move {
        if at >= end {
            return None;
        }
        let want = (end - at).min(u64::from(READ_PIECE)) as u32;
        match reader.read(at, want).await {
            Ok(bytes) if bytes.is_empty() => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file ended early",
                )),
                (reader, end),
            )),
            Ok(bytes) => {
                let next = at + bytes.len() as u64;
                Some((Ok(Bytes::from(bytes)), (reader, next)))
            }
            Err(e) => {
                log::warn!("download cut short: {e}");
                Some((Err(std::io::Error::other(e.to_string())), (reader, end)))
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(&(end - start).to_string()) {
        response.headers_mut().insert(header::CONTENT_LENGTH, value);
    }
    response
}

/// What an upload may say.
#[derive(Debug, Default, Deserialize)]
pub struct PutQuery {
    /// Fail with 409 if the name is taken (`?noreplace=1`).
    noreplace: Option<String>,
    /// The file's modification time, in milliseconds since the epoch.
    mtime: Option<i64>,
    /// Answer only once the file is stored in the channel, with the upload's error
    /// (`?wait=1`), as `fsync` on the mount.
    wait: Option<String>,
}

/// `PUT /files/CHANNEL/PATH`: the body becomes that file (folders on the way are
/// made). 201 once it is in the spool; its upload to the channel follows (or, with
/// `?wait=1`, has been done).
pub async fn put(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
    Query(query): Query<PutQuery>,
    body: Body,
) -> Result<Response, ServeError> {
    let path = parse(&raw)?;
    let at = || ServeError::at(path.display());
    let replace = query.noreplace.is_none();
    let mut upload = app.tree.create(&path, replace).await.map_err(at())?;
    let mut stream = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::with_capacity(WRITE_PIECE);
    while let Some(frame) = stream.next().await {
        let data = match frame {
            Ok(data) => data,
            Err(e) => {
                upload.abort().await;
                return Err(ServeError::BadRequest(format!(
                    "{}: the upload was cut off ({e}); nothing was stored",
                    path.display()
                )));
            }
        };
        pending.extend_from_slice(&data);
        if pending.len() >= WRITE_PIECE {
            if let Err(e) = upload.write(&pending).await {
                upload.abort().await;
                return Err(at()(e));
            }
            pending.clear();
        }
    }
    if let Err(e) = upload.write(&pending).await {
        upload.abort().await;
        return Err(at()(e));
    }
    if let Some(ms) = query.mtime {
        let mtime = if ms >= 0 {
            UNIX_EPOCH + Duration::from_millis(ms as u64)
        } else {
            UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
        };
        upload.set_mtime(mtime).await.map_err(at())?;
    }
    let size = upload.written();
    upload.finish(query.wait.is_some()).await.map_err(at())?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "path": path.display(), "size": size })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct PathBody {
    path: String,
    #[serde(default)]
    recursive: bool,
}

#[derive(Debug, Deserialize)]
pub struct RenameBody {
    from: String,
    to: String,
    #[serde(default)]
    replace: bool,
}

#[derive(Debug, Deserialize)]
pub struct ShareBody {
    path: String,
    /// Like `7d`; `None`: never.
    expires: Option<String>,
}

fn done() -> Response {
    Json(serde_json::json!({ "ok": true })).into_response()
}

/// `POST /api/mkdir {path}`: a folder, or (a single name) a channel.
pub async fn mkdir(
    State(app): State<Arc<App>>,
    Json(body): Json<PathBody>,
) -> Result<Response, ServeError> {
    let path = parse(&body.path)?;
    app.tree
        .mkdir(&path)
        .await
        .map_err(ServeError::at(path.display()))?;
    Ok(done())
}

/// `POST /api/rename {from, to, replace}`: also into another folder or channel.
pub async fn rename(
    State(app): State<Arc<App>>,
    Json(body): Json<RenameBody>,
) -> Result<Response, ServeError> {
    let from = parse(&body.from)?;
    let to = parse(&body.to)?;
    app.tree
        .rename(&from, &to, body.replace)
        .await
        .map_err(ServeError::at(format!(
            "{} -> {}",
            from.display(),
            to.display()
        )))?;
    Ok(done())
}

/// `POST /api/delete {path, recursive}`.
pub async fn delete(
    State(app): State<Arc<App>>,
    Json(body): Json<PathBody>,
) -> Result<Response, ServeError> {
    let path = parse(&body.path)?;
    app.tree
        .remove(&path, body.recursive)
        .await
        .map_err(ServeError::at(path.display()))?;
    Ok(done())
}

/// `POST /api/share {path, expires}`: a new share link.
pub async fn share(
    State(app): State<Arc<App>>,
    Json(body): Json<ShareBody>,
) -> Result<Response, ServeError> {
    let path = parse(&body.path)?;
    let held = app
        .tree
        .stat(&path)
        .await
        .map_err(ServeError::at(path.display()))?;
    if held.is_dir() {
        return Err(ServeError::BadRequest(format!(
            "{}: only a file can be shared",
            path.display()
        )));
    }
    let valid_for = body
        .expires
        .as_deref()
        .map(shares::parse_duration)
        .transpose()
        .map_err(ServeError::BadRequest)?;
    let (token, made) = app.shares.create(&path.display(), valid_for)?;
    Ok(Json(serde_json::json!({
        "url": format!("{}/s/{token}", app.config.public_base()),
        "id": made.id,
        "expires": made.expires,
    }))
    .into_response())
}

/// `GET /s/TOKEN`: the shared file, to anyone with the link.
pub async fn shared(
    State(app): State<Arc<App>>,
    Path(token): Path<String>,
    Query(query): Query<GetQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let share = match app.shares.find(&token)? {
            Lookup::Live(share) => share,
            Lookup::Expired(_) => return Err(ServeError::Expired),
            Lookup::Unknown => return Err(ServeError::NoShare),
        };
        let path = parse(&share.path)?;
        let reader = app.tree.open(&path).await.map_err(|e| match e {
            crate::fs::FsError::NotFound | crate::fs::FsError::IsADirectory => ServeError::NoShare,
            other => ServeError::at("the shared file")(other),
        })?;
        Ok(download(reader, &path, &headers, query.download.is_some()))
    }
    .await;
    answer(result, &headers)
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Where to go after logging in: a path on this site only.
fn next_page(next: Option<&str>) -> String {
    match next {
        Some(next) if next.starts_with('/') && !next.starts_with("//") => next.to_string(),
        _ => "/files/".to_string(),
    }
}

pub async fn login_form(State(app): State<Arc<App>>, Query(query): Query<LoginQuery>) -> Response {
    if !app.access.required() {
        return Redirect::to("/files/").into_response();
    }
    Html(page::login_page(None, &next_page(query.next.as_deref()))).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    password: String,
    next: Option<String>,
}

pub async fn log_in(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<std::net::SocketAddr>,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = next_page(form.next.as_deref());
    match app.access.log_in(&form.password, client.ip()).await {
        Ok(token) => {
            let secure = if app.config.secure_cookies() {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                auth::COOKIE,
                auth::SESSION_LIFETIME.as_secs()
            );
            let mut response = Redirect::to(&next).into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(e) => {
            let error = ServeError::from(e);
            let status = error.status();
            let message = match status {
                StatusCode::UNAUTHORIZED => "Wrong password.".to_string(),
                _ => error.to_string(),
            };
            (status, Html(page::login_page(Some(&message), &next))).into_response()
        }
    }
}

pub async fn log_out(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(token) = super::session_cookie(&headers) {
        app.access.log_out(&token);
    }
    let mut response = Redirect::to("/login").into_response();
    let expired = format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        auth::COOKIE
    );
    if let Ok(value) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_go_on_only_to_this_site() {
        assert_eq!(next_page(Some("/files/a/")), "/files/a/");
        assert_eq!(next_page(Some("//evil.example/")), "/files/");
        assert_eq!(next_page(Some("https://evil.example/")), "/files/");
        assert_eq!(next_page(None), "/files/");
    }
}
