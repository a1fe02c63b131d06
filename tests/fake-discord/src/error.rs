//! Errors: [`ApiError`] is a Discord JSON error answer (status, code, message, and for form
//! errors the `errors` object); [`ConnectionError`] ends a connection without an answer.

use serde_json::{Value, json};

/// An error answer of the REST API, as Discord writes it:
/// `{"message": ..., "code": ..., "errors"?: {...}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Discord's JSON error code.
    pub code: u32,
    /// Human-readable message.
    pub message: String,
    /// Per-field details (only for 50035 Invalid Form Body).
    pub errors: Option<Value>,
}

impl ApiError {
    fn new(status: u16, code: u32, message: &str) -> ApiError {
        ApiError {
            status,
            code,
            message: message.to_owned(),
            errors: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = json!({"message": self.message, "code": self.code});
        if let Some(errors) = &self.errors {
            body["errors"] = errors.clone();
        }
        body
    }

    /// 401, wrong or missing token.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, 0, "401: Unauthorized")
    }

    /// 404 for a path the API does not have.
    pub fn not_found() -> ApiError {
        ApiError::new(404, 0, "404: Not Found")
    }

    /// 405 for a known path with the wrong method.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(405, 0, "405: Method Not Allowed")
    }

    /// 404 / 10003.
    pub fn unknown_channel() -> ApiError {
        ApiError::new(404, 10003, "Unknown Channel")
    }

    /// 404 / 10004.
    pub fn unknown_guild() -> ApiError {
        ApiError::new(404, 10004, "Unknown Guild")
    }

    /// 404 / 10007.
    pub fn unknown_member() -> ApiError {
        ApiError::new(404, 10007, "Unknown Member")
    }

    /// 404 / 10008.
    pub fn unknown_message() -> ApiError {
        ApiError::new(404, 10008, "Unknown Message")
    }

    /// 404 / 10013.
    pub fn unknown_user() -> ApiError {
        ApiError::new(404, 10013, "Unknown User")
    }

    /// 403 / 50001: the bot may not see the resource at all.
    pub fn missing_access() -> ApiError {
        ApiError::new(403, 50001, "Missing Access")
    }

    /// 403 / 50013: the bot sees the resource but lacks a permission.
    pub fn missing_permissions() -> ApiError {
        ApiError::new(403, 50013, "Missing Permissions")
    }

    /// 400 / 50006.
    pub fn empty_message() -> ApiError {
        ApiError::new(400, 50006, "Cannot send an empty message")
    }

    /// 400 / 50008.
    pub fn not_a_text_channel() -> ApiError {
        ApiError::new(400, 50008, "Cannot send messages in a non-text channel")
    }

    /// 413 / 40005.
    pub fn too_large() -> ApiError {
        ApiError::new(413, 40005, "Request entity too large")
    }

    /// 400 / 30013.
    pub fn too_many_channels() -> ApiError {
        ApiError::new(400, 30013, "Maximum number of guild channels reached (500)")
    }

    /// 400 / 30003.
    pub fn too_many_pins() -> ApiError {
        ApiError::new(400, 30003, "Maximum number of pins reached (250)")
    }

    /// 400 / 50034.
    pub fn too_old_to_bulk_delete() -> ApiError {
        ApiError::new(
            400,
            50034,
            "You can only bulk delete messages that are under 14 days old.",
        )
    }

    /// 400 / 50109.
    pub fn invalid_json() -> ApiError {
        ApiError::new(400, 50109, "The request body contains invalid JSON.")
    }

    /// 400 / 50035 with one field error: `{"errors": {field: {"_errors": [{code, message}]}}}`.
    pub fn invalid_field(field: &str, code: &str, message: &str) -> ApiError {
        let mut error = ApiError::new(400, 50035, "Invalid Form Body");
        error.errors = Some(json!({field: {"_errors": [{"code": code, "message": message}]}}));
        error
    }

    /// 50035 for a field longer than `max`.
    pub fn too_long(field: &str, max: usize) -> ApiError {
        ApiError::invalid_field(
            field,
            "BASE_TYPE_MAX_LENGTH",
            &format!("Must be {max} or fewer in length."),
        )
    }

    /// 50035 for a field that must not be empty.
    pub fn required(field: &str) -> ApiError {
        ApiError::invalid_field(field, "BASE_TYPE_REQUIRED", "This field is required")
    }

    /// 50035 for a value that is not a snowflake.
    pub fn not_snowflake(field: &str, value: &str) -> ApiError {
        ApiError::invalid_field(
            field,
            "NUMBER_TYPE_COERCE",
            &format!("Value \"{value}\" is not snowflake."),
        )
    }
}

/// Ends a connection without an answer (hyper closes it when the service fails).
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Failure injection chose to drop this request.
    #[error("connection dropped on purpose (failure injection)")]
    Injected,
    /// Reading the request body failed (the client went away).
    #[error("reading the request body: {0}")]
    Body(#[from] hyper::Error),
}
