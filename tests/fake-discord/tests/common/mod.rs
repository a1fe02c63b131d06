//! A minimal blocking HTTP/1.1 client for the tests (one connection per request, `Connection:
//! close`), so the tests see exactly what goes over the wire, dropped connections included.

#![allow(dead_code)]

use fake_discord::{Config, FakeDiscord};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An answer as received.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends one request; `Err` when the server closed the connection without an answer.
pub fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> std::io::Result<Answer> {
    let broken =
        |what: &str| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| broken("connection closed without an answer"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| broken("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = raw[split + 4..].to_vec();
    let answer = Answer {
        status,
        headers,
        body,
    };
    if let Some(len) = answer
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        && answer.body.len() < len
    {
        return Err(broken("body cut short"));
    }
    Ok(answer)
}

/// A client of one fake server, with its token.
pub struct Client {
    pub addr: SocketAddr,
    pub token: String,
}

impl Client {
    pub fn of(server: &FakeDiscord) -> Client {
        Client {
            addr: server.addr(),
            token: server.token().to_owned(),
        }
    }

    fn auth(&self) -> Vec<(&'static str, String)> {
        vec![("Authorization", format!("Bot {}", self.token))]
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let mut headers = self.auth();
        let bytes = match body {
            Some(value) => {
                headers.push(("Content-Type", "application/json".to_owned()));
                value.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        send(
            self.addr,
            method,
            &format!("/api/v10{path}"),
            &headers,
            &bytes,
        )
        .expect("the server answers")
    }

    pub fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Answer {
        self.call("POST", path, Some(body))
    }

    /// Posts a message with files, as twilight does: `payload_json` then `files[N]`.
    pub fn post_files(&self, channel: u64, payload: &Value, files: &[(&str, &[u8])]) -> Answer {
        let boundary = "fAkEbOuNdArY123";
        let mut body = Vec::new();
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"payload_json\"\r\nContent-Type: application/json\r\n\r\n{payload}\r\n").as_bytes());
        for (i, (name, data)) in files.iter().enumerate() {
            body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"files[{i}]\"; filename=\"{name}\"\r\n\r\n").as_bytes());
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--").as_bytes());
        let mut headers = self.auth();
        headers.push((
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        ));
        send(
            self.addr,
            "POST",
            &format!("/api/v10/channels/{channel}/messages"),
            &headers,
            &body,
        )
        .expect("the server answers")
    }

    /// Downloads an attachment URL (no token, as for Discord's CDN).
    pub fn download(&self, url: &str) -> Answer {
        let target = &url[url.find("/attachments/").expect("a CDN url")..];
        send(self.addr, "GET", target, &[], b"").expect("the CDN answers")
    }
}

/// A server with small, test-friendly limits, one text channel "files", and its client.
pub fn server_with(change: impl FnOnce(&mut Config)) -> (FakeDiscord, Client, u64) {
    let mut config = Config {
        channels: vec!["files".to_owned()],
        ..Config::default()
    };
    change(&mut config);
    let server = FakeDiscord::start_in_background(config).expect("the server starts");
    let client = Client::of(&server);
    let channel = server.channel_id("files").unwrap_or(0);
    (server, client, channel)
}

/// Id of a JSON object.
pub fn id_of(object: &Value) -> u64 {
    object["id"]
        .as_str()
        .expect("an id string")
        .parse()
        .expect("a snowflake")
}
