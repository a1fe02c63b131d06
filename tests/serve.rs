//! `serve` over real HTTP, against a filesystem core on the local store: uploads
//! (streamed, named only when complete, cut-off ones storing nothing), downloads
//! with Range (206, Content-Range, 416), listings, new folder, rename, delete, the
//! access rules (no login on loopback, password by form and by Basic, throttled
//! failures, CSRF, foreign Origin and Host), share links (valid, expired, revoked),
//! and WebDAV (PROPFIND, PUT, GET, MKCOL, MOVE, COPY, DELETE, and dead properties by
//! PROPPATCH).

#[path = "common/data.rs"]
mod data;
#[path = "common/serving.rs"]
mod serving;

use std::time::{Duration, Instant};

use dcloud_fs::serve::auth;
use dcloud_fs::serve::shares::Shares;
use dcloud_fs::store::{Limits, Store};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};

const LIMITS: Limits = Limits {
    max_file_size: 256 * 1024,
    max_attachments: 4,
    max_request_size: 1024 * 1024,
    max_content_chars: 2000,
};
const PASSWORD: &str = "correct horse battery";

struct Server {
    serving: serving::Serving,
    base: String,
    client: reqwest::Client,
}

async fn start(password: bool) -> Server {
    let hash = password.then(|| auth::hash_password(PASSWORD).unwrap());
    let serving = serving::start(LIMITS, &["a", "b"], hash).await;
    Server {
        base: format!("http://{}", serving.address),
        serving,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The CSRF token a page of `folder` carries (with `cookie`, if logged in).
    async fn csrf(&self, folder: &str, cookie: Option<&str>) -> String {
        let mut request = self
            .client
            .get(self.url(folder))
            .header(header::ACCEPT, "text/html");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        let page = request.send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.unwrap();
        let start = html
            .find("name=\"csrf-token\" content=\"")
            .expect("a token")
            + 27;
        html[start..start + html[start..].find('"').unwrap()].to_string()
    }

    /// A PUT as the page sends it (a browser's `Sec-Fetch-Site`, and the token).
    async fn put(&self, path: &str, body: Vec<u8>, csrf: &str) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .header("sec-fetch-site", "same-origin")
            .header("x-csrf-token", csrf)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn api(&self, action: &str, body: serde_json::Value, csrf: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/{action}")))
            .header("sec-fetch-site", "same-origin")
            .header("x-csrf-token", csrf)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str, headers: HeaderMap) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .headers(headers)
            .send()
            .await
            .unwrap()
    }

    /// Waits (up to 20 s) until channel `channel` holds `want` at `path`.
    async fn wait_stored(&self, channel: &str, path: &str, want: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let volume = self.serving.volume(channel).await;
            if volume.file(path).is_ok() {
                let mut out = Vec::new();
                volume.get(path, &mut out, None).await.unwrap();
                if out == want {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{channel}/{path} was never stored"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn range(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::RANGE, value.parse().unwrap());
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_downloads_ranges_and_listings() {
    let server = start(false).await;
    let csrf = server.csrf("/files/a/", None).await;
    let data = data::random_bytes(1_500_000, 1);
    let put = server
        .put(
            "/files/a/docs/clip.bin?mtime=1700000000000",
            data.clone(),
            &csrf,
        )
        .await;
    assert_eq!(put.status(), StatusCode::CREATED, "{:?}", put.text().await);

    let all = server.get("/files/a/docs/clip.bin", HeaderMap::new()).await;
    assert_eq!(all.status(), StatusCode::OK);
    assert_eq!(all.headers()[header::ACCEPT_RANGES], "bytes");
    assert_eq!(all.headers()[header::CONTENT_LENGTH], "1500000");
    assert_eq!(all.bytes().await.unwrap(), data);

    let part = server
        .get("/files/a/docs/clip.bin", range("bytes=1000-1999"))
        .await;
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()[header::CONTENT_RANGE],
        "bytes 1000-1999/1500000"
    );
    assert_eq!(part.bytes().await.unwrap(), data[1000..2000]);
    let tail = server
        .get("/files/a/docs/clip.bin", range("bytes=-10"))
        .await;
    assert_eq!(tail.bytes().await.unwrap(), data[data.len() - 10..]);
    let past = server
        .get("/files/a/docs/clip.bin", range("bytes=2000000-"))
        .await;
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.headers()[header::CONTENT_RANGE], "bytes */1500000");

    // The listing, as JSON and as the page.
    let listing: serde_json::Value = server
        .get("/files/a/docs/?json", HeaderMap::new())
        .await
        .json()
        .await
        .unwrap();
    let entries = listing["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listing}");
    assert_eq!(entries[0]["name"], "clip.bin");
    assert_eq!(entries[0]["size"], 1_500_000);
    assert_eq!(entries[0]["mtime_ms"], 1_700_000_000_000i64);
    let page = server
        .client
        .get(server.url("/files/a/docs/"))
        .header(header::ACCEPT, "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("clip.bin") && page.contains("1.4 MiB"),
        "{page}"
    );
    // Search finds it from the channel.
    let found = server
        .client
        .get(server.url("/files/a/?q=CLIP"))
        .header(header::ACCEPT, "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(found.contains("docs/clip.bin"), "{found}");

    // It reaches the channel (write-back), byte-exact.
    server.wait_stored("a", "docs/clip.bin", &data).await;

    // A name that is taken, with noreplace: 409, and the file is as it was.
    let again = server
        .put(
            "/files/a/docs/clip.bin?noreplace=1",
            b"other".to_vec(),
            &csrf,
        )
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let error: serde_json::Value = again.json().await.unwrap();
    assert_eq!(error["error"], "a/docs/clip.bin: already exists");
    // Replacing is the default.
    let replaced = server
        .put("/files/a/docs/clip.bin", b"other".to_vec(), &csrf)
        .await;
    assert_eq!(replaced.status(), StatusCode::CREATED);
    let now = server.get("/files/a/docs/clip.bin", HeaderMap::new()).await;
    assert_eq!(now.bytes().await.unwrap(), "other".as_bytes());
    // Missing things are one-line errors.
    let missing = server.get("/files/a/nothing.txt", HeaderMap::new()).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let error: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(error["error"], "a/nothing.txt: no such file or folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_renames_moves_and_deletes() {
    let server = start(false).await;
    let csrf = server.csrf("/files/a/", None).await;
    let ok = |response: reqwest::Response| async move {
        let status = response.status();
        assert!(status.is_success(), "{status}: {:?}", response.text().await);
    };
    ok(server
        .api("mkdir", serde_json::json!({"path": "a/new"}), &csrf)
        .await)
    .await;
    ok(server.put("/files/a/new/x.txt", b"x".to_vec(), &csrf).await).await;
    let taken = server
        .api("mkdir", serde_json::json!({"path": "a/new"}), &csrf)
        .await;
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    ok(server
        .api(
            "rename",
            serde_json::json!({"from": "a/new/x.txt", "to": "a/new/y.txt"}),
            &csrf,
        )
        .await)
    .await;
    // Into another channel.
    ok(server
        .api(
            "rename",
            serde_json::json!({"from": "a/new/y.txt", "to": "b/y.txt"}),
            &csrf,
        )
        .await)
    .await;
    let moved = server.get("/files/b/y.txt", HeaderMap::new()).await;
    assert_eq!(moved.bytes().await.unwrap(), "x".as_bytes());
    let gone = server.get("/files/a/new/y.txt", HeaderMap::new()).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    ok(server
        .put("/files/a/new/deep/z.txt", b"z".to_vec(), &csrf)
        .await)
    .await;
    let not_empty = server
        .api("delete", serde_json::json!({"path": "a/new"}), &csrf)
        .await;
    assert_eq!(not_empty.status(), StatusCode::CONFLICT);
    ok(server
        .api(
            "delete",
            serde_json::json!({"path": "a/new", "recursive": true}),
            &csrf,
        )
        .await)
    .await;
    let listing: serde_json::Value = server
        .get("/files/a/?json", HeaderMap::new())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listing["entries"].as_array().unwrap().len(), 0, "{listing}");
    // A new channel from the root.
    ok(server
        .api("mkdir", serde_json::json!({"path": "c"}), &csrf)
        .await)
    .await;
    assert!(
        server
            .serving
            .store
            .channels()
            .await
            .unwrap()
            .iter()
            .any(|c| c.name == "c")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_upload_stores_nothing_and_keeps_the_old_file() {
    use tokio::io::AsyncWriteExt;
    let server = start(false).await;
    let csrf = server.csrf("/files/a/", None).await;
    let put = server
        .put("/files/a/keep.txt", b"the old one".to_vec(), &csrf)
        .await;
    assert_eq!(put.status(), StatusCode::CREATED);
    // Stored, so the queue is empty when the next upload starts.
    server.wait_stored("a", "keep.txt", b"the old one").await;
    let address = server.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "PUT /files/a/keep.txt HTTP/1.1\r\nHost: {address}\r\nX-CSRF-Token: {csrf}\r\n\
         Content-Length: 4000000\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(&[7u8; 2_500_000]).await.unwrap();
    // While it is received, `status` shows it by its name, with what is written so far.
    let writing = |status: &dcloud_fs::fs::status::FsStatus| {
        status
            .files
            .iter()
            .find(|f| f.state == dcloud_fs::fs::status::FileState::Writing)
            .map(|f| (f.channel.clone(), f.path.clone(), f.size))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = server.serving.fs.status();
        if let Some((channel, path, size)) = writing(&status) {
            assert_eq!((channel.as_str(), path.as_str()), ("a", "keep.txt"));
            if size >= 2 << 20 {
                assert_eq!(status.totals.writing, 1);
                assert_eq!(status.totals.files, 0, "not in the queue yet");
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(writing(&server.serving.fs.status()), None);
    let now = server.get("/files/a/keep.txt", HeaderMap::new()).await;
    assert_eq!(now.bytes().await.unwrap(), "the old one".as_bytes());
    let listing: serde_json::Value = server
        .get("/files/a/?json", HeaderMap::new())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listing["entries"].as_array().unwrap().len(), 1, "{listing}");
    // Nothing but the old file reaches the channel.
    server.wait_stored("a", "keep.txt", b"the old one").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        data::file_paths(&server.serving.volume("a").await),
        ["keep.txt"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_pages_token_and_its_origin() {
    let server = start(false).await;
    let csrf = server.csrf("/files/a/", None).await;
    let without = server.put("/files/a/x.txt", b"x".to_vec(), "").await;
    assert_eq!(without.status(), StatusCode::FORBIDDEN);
    let wrong = server
        .put("/files/a/x.txt", b"x".to_vec(), "not-the-token")
        .await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let foreign = server
        .client
        .post(server.url("/api/mkdir"))
        .header("x-csrf-token", &csrf)
        .header(header::ORIGIN, "http://evil.example")
        .json(&serde_json::json!({"path": "a/x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    // A name other than loopback's (DNS rebinding) is refused even to read.
    let rebound = server
        .client
        .get(server.url("/files/a/?json"))
        .header(header::HOST, "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    let fine = server.put("/files/a/x.txt", b"x".to_vec(), &csrf).await;
    assert_eq!(fine.status(), StatusCode::CREATED);
    // A script, which no browser stands behind, needs no token.
    let script = server
        .client
        .put(server.url("/files/a/y.txt"))
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_is_asked_by_form_or_basic_and_failures_are_throttled() {
    let server = start(true).await;
    // A browser goes to the form; a script is asked for Basic.
    let page = server
        .client
        .get(server.url("/files/a/"))
        .header(header::ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert!(
        page.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/login")
    );
    let script = server.get("/files/a/?json", HeaderMap::new()).await;
    assert_eq!(script.status(), StatusCode::UNAUTHORIZED);
    assert!(
        script.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let dav = server.get("/dav/a/", HeaderMap::new()).await;
    assert_eq!(dav.status(), StatusCode::UNAUTHORIZED);

    let log_in = |password: &'static str| {
        server
            .client
            .post(server.url("/login"))
            .form(&[("password", password), ("next", "/files/a/")])
            .send()
    };
    let wrong = log_in("wrong").await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.text().await.unwrap().contains("Wrong password"));
    let right = log_in(PASSWORD).await.unwrap();
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    assert_eq!(right.headers()[header::LOCATION], "/files/a/");
    let cookie = right.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();

    // The session's page carries its token; changes need it.
    let csrf = server.csrf("/files/a/", Some(&cookie)).await;
    let no_token = server
        .client
        .put(server.url("/files/a/s.txt"))
        .header(header::COOKIE, &cookie)
        .body("s")
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    let with_token = server
        .client
        .put(server.url("/files/a/s.txt"))
        .header(header::COOKIE, &cookie)
        .header("x-csrf-token", &csrf)
        .body("s")
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), StatusCode::CREATED);

    // Basic, as WebDAV clients and scripts send it.
    let basic = server
        .client
        .get(server.url("/files/a/s.txt"))
        .basic_auth("anyone", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::OK);
    assert_eq!(basic.bytes().await.unwrap(), "s".as_bytes());

    // Logged out, the cookie opens nothing.
    let out = server
        .client
        .post(server.url("/logout"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let after = server
        .client
        .get(server.url("/files/a/?json"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    // Failures in a row lock this address out, the right password included.
    for _ in 0..auth::FREE_FAILURES {
        let _ = log_in("wrong").await.unwrap();
    }
    let locked = log_in(PASSWORD).await.unwrap();
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(locked.text().await.unwrap().contains("try again in"));
    let basic_locked = server
        .client
        .get(server.url("/files/a/s.txt"))
        .basic_auth("anyone", Some("wrong again"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic_locked.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_links_open_one_file_until_they_expire_or_are_revoked() {
    let server = start(true).await;
    let put = server
        .client
        .put(server.url("/files/a/film.mp4"))
        .basic_auth("", Some(PASSWORD))
        .body(data::random_bytes(100_000, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let made: serde_json::Value = server
        .client
        .post(server.url("/api/share"))
        .basic_auth("", Some(PASSWORD))
        .json(&serde_json::json!({"path": "a/film.mp4", "expires": "7d"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = made["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/s/", server.base)), "{made}");
    // No account needed, Range works.
    let shared = server
        .client
        .get(url)
        .headers(range("bytes=10-19"))
        .send()
        .await
        .unwrap();
    assert_eq!(shared.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        shared.bytes().await.unwrap(),
        data::random_bytes(100_000, 3)[10..20]
    );
    // The link opens that file only.
    let other = server
        .client
        .get(format!("{url}/../a"))
        .send()
        .await
        .unwrap();
    assert_ne!(other.status(), StatusCode::OK);

    let shares = Shares::new(server.serving.dir.path().join("config"));
    shares.revoke(made["id"].as_str().unwrap()).unwrap();
    let revoked = server.client.get(url).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::NOT_FOUND);

    let (token, _) = shares
        // Expiries count whole seconds from a whole-second start: 3 s is at least 2.
        .create("a/film.mp4", Some(Duration::from_secs(3)))
        .unwrap();
    let fresh = server
        .client
        .get(server.url(&format!("/s/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let expired = server
        .client
        .get(server.url(&format!("/s/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), StatusCode::GONE);
    let error: serde_json::Value = expired.json().await.unwrap();
    assert_eq!(error["error"], "this share link has expired");
    let unknown = server
        .client
        .get(server.url("/s/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

fn method(name: &str) -> reqwest::Method {
    reqwest::Method::from_bytes(name.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_lists_writes_moves_copies_and_deletes() {
    let server = start(false).await;
    let dav = |m: &str, path: &str| server.client.request(method(m), server.url(path));
    let put = dav("PUT", "/dav/a/note.txt")
        .body("hello dav")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let get = dav("GET", "/dav/a/note.txt").send().await.unwrap();
    assert_eq!(get.bytes().await.unwrap(), "hello dav".as_bytes());
    let ranged = dav("GET", "/dav/a/note.txt")
        .header(header::RANGE, "bytes=6-8")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await.unwrap(), "dav".as_bytes());

    let mkcol = dav("MKCOL", "/dav/a/sub/").send().await.unwrap();
    assert_eq!(mkcol.status(), StatusCode::CREATED);
    let orphan = dav("MKCOL", "/dav/a/none/sub/").send().await.unwrap();
    assert_eq!(orphan.status(), StatusCode::CONFLICT);

    let moved = dav("MOVE", "/dav/a/note.txt")
        .header("Destination", server.url("/dav/a/sub/moved.txt"))
        .send()
        .await
        .unwrap();
    assert!(moved.status().is_success(), "{}", moved.status());
    let copied = dav("COPY", "/dav/a/sub/moved.txt")
        .header("Destination", server.url("/dav/b/copy.txt"))
        .send()
        .await
        .unwrap();
    assert!(copied.status().is_success(), "{}", copied.status());

    let listing = dav("PROPFIND", "/dav/a/sub/")
        .header("Depth", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status().as_u16(), 207);
    let xml = listing.text().await.unwrap();
    assert!(
        xml.contains("moved.txt") && xml.contains("<D:getcontentlength>9<"),
        "{xml}"
    );

    let deleted = dav("DELETE", "/dav/a/sub/").send().await.unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let gone = dav("PROPFIND", "/dav/a/sub/")
        .header("Depth", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    server.wait_stored("b", "copy.txt", b"hello dav").await;
    // What WebDAV wrote is what the fs core shows.
    assert!(server.serving.fs.statfs().await.files >= 1);
}

/// A PROPPATCH body setting and removing `(namespace, name, value)` properties.
fn proppatch(set: &[(&str, &str, &str)], remove: &[(&str, &str)]) -> String {
    let mut body = String::from("<?xml version=\"1.0\"?><D:propertyupdate xmlns:D=\"DAV:\">");
    for (namespace, name, value) in set {
        body += &format!(
            "<D:set><D:prop><Z:{name} xmlns:Z=\"{namespace}\">{value}</Z:{name}></D:prop></D:set>"
        );
    }
    for (namespace, name) in remove {
        body +=
            &format!("<D:remove><D:prop><Z:{name} xmlns:Z=\"{namespace}\"/></D:prop></D:remove>");
    }
    body + "</D:propertyupdate>"
}

/// A PROPFIND body asking for `(namespace, name)` properties.
fn propfind(props: &[(&str, &str)]) -> String {
    let mut body = String::from("<?xml version=\"1.0\"?><D:propfind xmlns:D=\"DAV:\"><D:prop>");
    for (namespace, name) in props {
        body += &format!("<Z:{name} xmlns:Z=\"{namespace}\"/>");
    }
    body + "</D:prop></D:propfind>"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webdav_dead_properties_are_attributes_patched_whole_and_kept_by_move_and_copy() {
    const NS: &str = "http://example.com/ns";
    let server = start(false).await;
    let dav = |m: &str, path: &str| server.client.request(method(m), server.url(path));
    let put = dav("PUT", "/dav/a/p.txt")
        .body("props")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let patch = |path: &'static str, body: String| {
        let request = dav("PROPPATCH", path).body(body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 207);
            response.text().await.unwrap()
        }
    };
    let find = |path: &'static str, props: &[(&str, &str)]| {
        let request = dav("PROPFIND", path)
            .header("Depth", "0")
            .body(propfind(props));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 207);
            response.text().await.unwrap()
        }
    };

    let set = patch(
        "/dav/a/p.txt",
        proppatch(&[(NS, "color", "blue"), (NS, "size", "<Z:big/>")], &[]),
    )
    .await;
    assert!(set.contains("200 OK") && !set.contains("424"), "{set}");
    // (dav-server 0.11 leaves out a property that isn't there, where RFC 4918 would
    // answer it 404.)
    let found = find("/dav/a/p.txt", &[(NS, "color"), (NS, "size"), (NS, "none")]).await;
    assert!(found.contains(">blue<") && found.contains("big"), "{found}");
    assert!(!found.contains("none"), "{found}");
    // Stored in the record, as an attribute of the file.
    let stored = |path: &'static str| {
        let volume = server.serving.volume("a");
        async move {
            let volume = volume.await;
            let index = volume.index();
            match index.node(path) {
                Some(dcloud_fs::volume::Node::File(file)) => {
                    file.meta().xattrs.keys().cloned().collect::<Vec<_>>()
                }
                other => panic!("{path}: {other:?}"),
            }
        }
    };
    let color = format!("user.webdav.{{{NS}}}color");
    assert!(stored("p.txt").await.contains(&color));

    // One name an attribute can't take (over 255 bytes) fails the whole patch.
    let long = format!("http://example.com/{}", "n".repeat(300));
    let refused = patch(
        "/dav/a/p.txt",
        proppatch(
            &[(NS, "shape", "round"), (&long, "x", "y")],
            &[(NS, "color")],
        ),
    )
    .await;
    assert!(
        refused.contains("403") && refused.contains("424"),
        "{refused}"
    );
    let after = find("/dav/a/p.txt", &[(NS, "color"), (NS, "shape")]).await;
    assert!(
        after.contains(">blue<") && !after.contains("round"),
        "{after}"
    );

    // Removed; removing one that isn't there succeeds.
    let removed = patch(
        "/dav/a/p.txt",
        proppatch(&[], &[(NS, "color"), (NS, "never")]),
    )
    .await;
    assert!(
        !removed.contains("424") && removed.contains("200 OK"),
        "{removed}"
    );
    assert!(!stored("p.txt").await.contains(&color));

    // Kept by a MOVE (a rename) and copied by a COPY.
    let moved = dav("MOVE", "/dav/a/p.txt")
        .header("Destination", server.url("/dav/a/q.txt"))
        .send()
        .await
        .unwrap();
    assert!(moved.status().is_success(), "{}", moved.status());
    let copied = dav("COPY", "/dav/a/q.txt")
        .header("Destination", server.url("/dav/a/r.txt"))
        .send()
        .await
        .unwrap();
    assert!(copied.status().is_success(), "{}", copied.status());
    for path in ["/dav/a/q.txt", "/dav/a/r.txt"] {
        let found = find(path, &[(NS, "size")]).await;
        assert!(
            found.contains("big") && !found.contains("404"),
            "{path}: {found}"
        );
    }
    // A channel folder holds none.
    let channel = patch("/dav/a/", proppatch(&[(NS, "color", "red")], &[])).await;
    assert!(channel.contains("403"), "{channel}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symbolic_link_is_not_followed_and_its_download_is_refused_in_one_line() {
    let server = start(false).await;
    let fs = &server.serving.fs;
    let channel = fs.lookup(dcloud_fs::fs::inode::ROOT, "a").await.unwrap();
    fs.symlink(channel.ino, "link", "../elsewhere", Default::default())
        .await
        .unwrap();
    let answer = server.get("/files/a/link", HeaderMap::new()).await;
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    let text = answer.text().await.unwrap();
    assert!(text.contains("symbolic link"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "{text}");
}
