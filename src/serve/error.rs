//! `serve`'s errors: one [`ServeError`] per way a request fails, each with the HTTP
//! status it is answered with and the same one-line message the CLI would print
//! (never a stack trace). Pages get it as an HTML page, scripts and the page's own
//! requests as `{"error": "..."}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::auth::AuthError;
use super::shares::ShareError;
use crate::fs::FsError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: {source}")]
    Fs {
        path: String,
        #[source]
        source: FsError,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("log in first")]
    LogIn,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error("this share link has expired")]
    Expired,
    #[error("no such share link (it may have been revoked)")]
    NoShare,
}

impl ServeError {
    /// An fs error about `path`.
    pub fn at(path: impl std::fmt::Display) -> impl FnOnce(FsError) -> ServeError {
        let path = path.to_string();
        move |source| ServeError::Fs {
            path: if path.is_empty() { "/".into() } else { path },
            source,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::Fs { source, .. } => match source {
                FsError::NotFound => StatusCode::NOT_FOUND,
                FsError::NotADirectory
                | FsError::IsADirectory
                | FsError::Exists
                | FsError::NotEmpty => StatusCode::CONFLICT,
                FsError::ReadOnly
                | FsError::NotPermitted(_)
                | FsError::TooManyLinks
                | FsError::CrossDevice => StatusCode::FORBIDDEN,
                FsError::NoAttribute => StatusCode::NOT_FOUND,
                FsError::TooLarge | FsError::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
                FsError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
                FsError::InvalidName(_) | FsError::NameTooLong(_) => StatusCode::BAD_REQUEST,
                FsError::BadHandle => StatusCode::INTERNAL_SERVER_ERROR,
                FsError::Busy => StatusCode::CONFLICT,
                FsError::Io(_) => StatusCode::BAD_GATEWAY,
            },
            ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServeError::LogIn | ServeError::Auth(AuthError::WrongPassword) => {
                StatusCode::UNAUTHORIZED
            }
            ServeError::Auth(AuthError::Throttled(_)) => StatusCode::TOO_MANY_REQUESTS,
            ServeError::Auth(_) | ServeError::Share(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServeError::Expired => StatusCode::GONE,
            ServeError::NoShare => StatusCode::NOT_FOUND,
        }
    }

    /// The error as a page, for a browser that asked for one.
    pub fn page(&self) -> Response {
        let status = self.status();
        (
            status,
            Html(super::page::error_page(status.as_u16(), &self.to_string())),
        )
            .into_response()
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            log::warn!("{self}");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}
