//! Control endpoints for benchmarks, outside the API and without a token:
//! `GET /_fake/stats`, `GET /_fake/knobs`, `POST /_fake/knobs` (a partial JSON object of
//! [`crate::Knobs`]; answers the knobs now in force) and `POST /_fake/expire-urls`.

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
        _ => reply::text(404, "404: Not Found"),
    }
}

async fn change_knobs(shared: &Shared, request: Request<Incoming>) -> HttpResponse {
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return reply::text(400, "unreadable body"),
    };
    let patch: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(error) => return reply::json(400, &json!({"message": error.to_string()})),
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
