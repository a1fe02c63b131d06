//! Control endpoints for benchmarks, outside the API and without a token:
//! `GET /_fake/stats`, `GET /_fake/knobs`, `POST /_fake/knobs` (a partial JSON object of
//! [`crate::Knobs`]; answers the knobs now in force), `POST /_fake/expire-urls`, and
//! `POST /_fake/foreign-message` (`{"channel":…,"author":…,"content":…,
//! "attachments":[["name","text"],…]}`: a message by someone else than the bot, for
//! trying by hand what the bot does with other people's messages; answers its `id`).

use crate::reply::{self, HttpResponse};
use crate::server::Shared;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::json;

/// Answers one control request.
pub async fn handle(shared: &Shared, request: Request<Incoming>) -> HttpResponse {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    match (method, path.as_str()) {
        (Method::GET, "/_fake/stats") => reply::json(200, &json!(shared.stats())),
        (Method::GET, "/_fake/knobs") => reply::json(200, &json!(shared.knobs())),
        (Method::POST, "/_fake/knobs") => change_knobs(shared, request).await,
        (Method::POST, "/_fake/expire-urls") => {
            shared.guild().signer.rotate();
            reply::no_content()
        }
        (Method::POST, "/_fake/foreign-message") => foreign_message(shared, request).await,
        _ => reply::text(404, "404: Not Found"),
    }
}

/// A message posted by someone else than the bot.
#[derive(serde::Deserialize)]
struct ForeignMessage {
    channel: u64,
    author: u64,
    content: String,
    #[serde(default)]
    attachments: Vec<(String, String)>,
}

async fn foreign_message(shared: &Shared, request: Request<Incoming>) -> HttpResponse {
    let message: ForeignMessage = match json_body(request).await {
        Ok(message) => message,
        Err(answer) => return answer,
    };
    let attachments = message
        .attachments
        .into_iter()
        .map(|(name, text)| (name, text.into_bytes()))
        .collect();
    let posted = shared.post_foreign(
        message.channel,
        message.author,
        &message.content,
        attachments,
    );
    match posted {
        Ok(id) => reply::json(200, &json!({"id": id.to_string()})),
        Err(error) => reply::json(400, &json!({"message": error})),
    }
}

/// The request's body as JSON, or the answer to give when it isn't.
async fn json_body<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, HttpResponse> {
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(reply::text(400, "unreadable body")),
    };
    serde_json::from_slice(&body)
        .map_err(|error| reply::json(400, &json!({"message": error.to_string()})))
}

async fn change_knobs(shared: &Shared, request: Request<Incoming>) -> HttpResponse {
    let patch: serde_json::Value = match json_body(request).await {
        Ok(patch) => patch,
        Err(answer) => return answer,
    };
    let applied = shared.change_knobs(|knobs| {
        let mut changed = knobs.clone();
        changed.apply_json(&patch)?;
        *knobs = changed.clone();
        Ok::<_, serde_json::Error>(changed)
    });
    match applied {
        Ok(knobs) => reply::json(200, &json!(knobs)),
        Err(error) => reply::json(400, &json!({"message": error.to_string()})),
    }
}
