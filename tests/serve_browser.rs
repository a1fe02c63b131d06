//! The web page in a real browser: headless Chromium, driven through WebDriver
//! (chromedriver), against `serve` on a filesystem core over the local store. It
//! opens the page, uploads a file through the page's file input, sees it listed,
//! downloads it back through the page's link (checked byte for byte, in the browser,
//! by SHA-256), and takes a screenshot (kept in the target folder).
//!
//! Skipped, saying so, where Chromium or chromedriver is missing or can't start
//! (Debian's `chromium` and `chromium-driver` packages provide them; CI installs
//! them).

#[path = "common/data.rs"]
mod data;
#[path = "common/serving.rs"]
mod serving;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dcloud_fs::store::Limits;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const LIMITS: Limits = Limits {
    max_file_size: 512 * 1024,
    max_attachments: 4,
    max_request_size: 2 * 1024 * 1024,
    max_content_chars: 2000,
};

fn find(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.exists())
}

struct Driver {
    child: Child,
    base: String,
    client: reqwest::Client,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Starts chromedriver and a headless Chromium session, or says why it can't.
    async fn start(downloads: &Path) -> Result<Driver, String> {
        let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"])
            .ok_or("no Chromium (Debian package chromium)")?;
        let chromedriver = find(&["/usr/bin/chromedriver"])
            .ok_or("no chromedriver (Debian package chromium-driver)")?;
        let port = {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap().port()
        };
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("chromedriver did not start: {e}"))?;
        let mut driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while driver
            .client
            .get(format!("{}/status", driver.base))
            .send()
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("chromedriver did not answer".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1100,800"],
                "prefs": {"download.default_directory": downloads}
            }
        }}});
        let made: Value = driver
            .client
            .post(format!("{}/session", driver.base))
            .json(&capabilities)
            .send()
            .await
            .map_err(|e| format!("no session: {e}"))?
            .json()
            .await
            .map_err(|e| format!("no session: {e}"))?;
        driver.session = made["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| format!("Chromium did not start: {}", made["value"]["message"]))?
            .to_string();
        Ok(driver)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.client.request(method.clone(), url);
        if method == reqwest::Method::POST {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, body).await
    }

    async fn script(&self, source: &str) -> Value {
        self.post("/execute/async", json!({"script": source, "args": []}))
            .await
    }

    async fn element(&self, css: &str) -> Option<String> {
        let found = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        found
            .as_object()?
            .iter()
            .find(|(key, _)| key.starts_with("element-"))
            .and_then(|(_, id)| id.as_str().map(str::to_string))
    }

    /// Waits (up to 30 s) for an element matching `css`.
    async fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(id) = self.element(css).await {
                return id;
            }
            assert!(Instant::now() < deadline, "the page never showed {css}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_uploads_lists_and_downloads_in_a_real_browser() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let driver = match Driver::start(&downloads).await {
        Ok(driver) => driver,
        Err(why) => {
            eprintln!("SKIPPED: the browser test needs headless Chromium: {why}");
            return;
        }
    };

    let serving = serving::start(LIMITS, &["photos"], None).await;
    let address = serving.address;

    // A file of a few chunks, to upload.
    let data = data::random_bytes(1_300_000, 11);
    let upload = dir.path().join("beach photo.jpg");
    std::fs::write(&upload, &data).unwrap();
    let want: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    driver
        .post(
            "/url",
            json!({"url": format!("http://{address}/files/photos/")}),
        )
        .await;
    let title = driver
        .call(reqwest::Method::GET, "/title", Value::Null)
        .await;
    assert_eq!(title, "photos · dcloud-fs");
    let input = driver.wait_for("#pick-files").await;
    driver
        .post(
            &format!("/element/{input}/value"),
            json!({"text": upload.display().to_string()}),
        )
        .await;
    driver.wait_for("#upload-list .state.done").await;
    // The listing, redrawn by the page, shows it.
    let link = driver
        .wait_for("a.file[href='/files/photos/beach%20photo.jpg']")
        .await;
    let shown = driver
        .call(
            reqwest::Method::GET,
            &format!("/element/{link}/text"),
            Value::Null,
        )
        .await;
    assert_eq!(shown, "beach photo.jpg");

    // Downloaded back through the page's own link, in the browser: byte for byte.
    let got = driver
        .script(
            "const done = arguments[arguments.length - 1];
             const a = document.querySelector('a.file');
             fetch(a.href).then(r => r.arrayBuffer())
               .then(b => crypto.subtle.digest('SHA-256', b))
               .then(h => done(Array.from(new Uint8Array(h))
                 .map(x => x.toString(16).padStart(2, '0')).join('')))
               .catch(e => done('failed: ' + e));",
        )
        .await;
    assert_eq!(got, want);

    let shot = driver
        .call(reqwest::Method::GET, "/screenshot", Value::Null)
        .await;
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot of the page: {}", out.display());
    let _ = driver.call(reqwest::Method::DELETE, "", Value::Null).await;
}
