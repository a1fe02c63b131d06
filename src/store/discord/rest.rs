//! Running one REST call against Discord: rate gate, time bound, retries, and turning
//! what went wrong into a [`StoreError`] a user can act on.
//!
//! Every call goes through [`Rest::call`], which
//!
//! - passes the [`RateGate`] for its route key, so buckets are never overrun;
//! - bounds each attempt in time (twilight retries 429s for as long as the server sends
//!   them, and its own timeout covers one HTTP exchange, not the waits around it);
//! - retries what is worth retrying — 5xx, resets, timeouts, unreadable bodies — with
//!   exponential backoff and jitter, a bounded number of times, then reports it;
//! - never retries what would fail again: 400, 401, 403, 404, 413.
//!
//! Retrying a `POST` is only safe when the server can tell a retry from a new request;
//! message posts carry a nonce with `enforce_nonce`, so a retry after a lost response
//! returns the message the first attempt created instead of a second copy.

use std::future::Future;
use std::time::Duration;

use twilight_http::api_error::ApiError;
use twilight_http::error::{Error as HttpError, ErrorType};
use twilight_http::response::Response;

use super::ratelimit::{self, RateGate};
use crate::store::StoreError;

/// How a failed attempt should be handled.
#[derive(Debug)]
pub enum Failure {
    /// Worth another attempt (after a pause).
    Transient(String),
    /// Discord answered with an error that won't change on retry.
    Api {
        status: u16,
        code: u64,
        message: String,
    },
    /// The token was refused.
    Unauthorized,
    /// A request we built was invalid (a bug or a bad name).
    Invalid(String),
}

impl Failure {
    /// Classifies a twilight error.
    pub fn of(error: &HttpError) -> Failure {
        match error.kind() {
            ErrorType::Response { status, error, .. } => {
                let status = status.get();
                let (code, message) = match error {
                    ApiError::General(general) => (general.code, general.message.clone()),
                    ApiError::Message(m) => (50035, format!("{m:?}")),
                    ApiError::Ratelimited(r) => (0, r.message.clone()),
                    _ => (0, error.to_string()),
                };
                if status >= 500 {
                    Failure::Transient(format!("Discord answered {status}: {message}"))
                } else if status == 401 {
                    Failure::Unauthorized
                } else {
                    Failure::Api {
                        status,
                        code,
                        message,
                    }
                }
            }
            ErrorType::Unauthorized => Failure::Unauthorized,
            ErrorType::RequestTimedOut => Failure::Transient("the request timed out".into()),
            ErrorType::RequestError | ErrorType::RequestCanceled => {
                Failure::Transient(describe_chain(error))
            }
            // An error body that isn't Discord's JSON: a proxy or load balancer in the way.
            ErrorType::Parsing { body } => Failure::Transient(format!(
                "unreadable error response: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            _ => Failure::Invalid(describe_chain(error)),
        }
    }
}

/// An error and its sources on one line.
pub fn describe_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Retry and time-bound settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included).
    pub attempts: u32,
    /// Pause before the second attempt; doubled each time, with jitter.
    pub first_backoff: Duration,
    /// Longest pause between attempts.
    pub max_backoff: Duration,
    /// Bound on one attempt, including waits for rate limits inside twilight.
    pub attempt_timeout: Duration,
}

impl RetryPolicy {
    /// The pause before attempt `n + 1` (n ≥ 1): exponential, with ±50% jitter so that
    /// many clients failing together don't come back together.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self
            .first_backoff
            .saturating_mul(1 << (n - 1).min(16))
            .min(self.max_backoff);
        let jitter = 0.5 + random_fraction();
        base.mul_f64(jitter)
    }
}

/// A number in [0, 1).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The REST side of the Discord store.
pub struct Rest {
    pub client: twilight_http::Client,
    pub gate: RateGate,
    pub policy: RetryPolicy,
}

impl Rest {
    /// Runs a request made by `make` (called again for each attempt), reading its body
    /// with `read`, under the gate of `route`. `what` names it in errors ("posting a
    /// message in #docs").
    pub async fn call<T, F, R, O, RF>(
        &self,
        route: &str,
        what: &str,
        make: F,
        read: R,
    ) -> Result<O, RestError>
    where
        F: Fn() -> twilight_http::response::ResponseFuture<T>,
        R: Fn(Response<T>) -> RF,
        RF: Future<Output = Result<O, String>>,
        T: Unpin,
    {
        let mut attempt = 1;
        loop {
            let outcome = self.attempt(route, &make, &read).await;
            let reason = match outcome {
                Ok(value) => return Ok(value),
                Err(Failure::Transient(reason)) => reason,
                Err(Failure::Unauthorized) => return Err(RestError::Unauthorized),
                Err(Failure::Api {
                    status,
                    code,
                    message,
                }) => {
                    return Err(RestError::Api {
                        status,
                        code,
                        message,
                    });
                }
                Err(Failure::Invalid(reason)) => {
                    return Err(RestError::Invalid(format!("{what}: {reason}")));
                }
            };
            if attempt >= self.policy.attempts {
                return Err(RestError::Unavailable(format!(
                    "{what} failed {attempt} times, last: {reason}"
                )));
            }
            let pause = self.policy.backoff(attempt);
            log::info!("{what}: {reason}; retrying in {pause:.1?} (attempt {attempt})");
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    async fn attempt<T, F, R, O, RF>(&self, route: &str, make: &F, read: &R) -> Result<O, Failure>
    where
        F: Fn() -> twilight_http::response::ResponseFuture<T>,
        R: Fn(Response<T>) -> RF,
        RF: Future<Output = Result<O, String>>,
        T: Unpin,
    {
        let mut pass = self.gate.enter(route).await;
        let exchange = async {
            let response = make().await.map_err(|e| Failure::of(&e))?;
            pass.observe(ratelimit::parse_headers(response.headers()));
            read(response).await.map_err(Failure::Transient)
        };
        match tokio::time::timeout(self.policy.attempt_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Transient(format!(
                "no answer within {:?}",
                self.policy.attempt_timeout
            ))),
        }
    }
}

/// What a REST call ended with, before the store says what it means for the caller.
#[derive(Debug)]
pub enum RestError {
    Unauthorized,
    Api {
        status: u16,
        code: u64,
        message: String,
    },
    Invalid(String),
    Unavailable(String),
}

impl RestError {
    /// The Discord error code, if Discord answered with one.
    pub fn code(&self) -> Option<u64> {
        match self {
            RestError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The HTTP status, if Discord answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RestError::Api { status, .. } => Some(*status),
            RestError::Unauthorized => Some(401),
            _ => None,
        }
    }

    /// The general meaning of this error as a [`StoreError`]; callers map the 404s
    /// they expect to the specific not-found variants first.
    pub fn into_store_error(self, what: &str) -> StoreError {
        match self {
            RestError::Unauthorized => StoreError::Unauthorized(
                "Discord refused the bot token (401); check DCLOUD_TOKEN or `token` in the \
                 config file (Developer Portal → your app → Bot → Reset Token)"
                    .into(),
            ),
            RestError::Api {
                status: 413,
                message,
                ..
            } => StoreError::TooLarge(format!("{what}: {message}")),
            RestError::Api {
                status: 403,
                code,
                message,
            } => StoreError::PermissionDenied(format!(
                "{what}: Discord says {message} (code {code}); run `dcloud-fs doctor` to see \
                 which permission the bot lacks"
            )),
            RestError::Api {
                status,
                code,
                message,
            } => StoreError::Invalid(format!(
                "{what}: Discord answered {status}: {message} (code {code})"
            )),
            RestError::Invalid(reason) => StoreError::Invalid(reason),
            RestError::Unavailable(reason) => StoreError::Unavailable(format!(
                "{reason}; check the network (or the DCLOUD_API address) and try again"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        let policy = RetryPolicy {
            attempts: 8,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(1),
        };
        for n in 1..8 {
            let pause = policy.backoff(n);
            let base = Duration::from_millis(100 * (1 << (n - 1))).min(Duration::from_secs(2));
            assert!(pause >= base / 2 && pause <= base * 3 / 2, "{n}: {pause:?}");
        }
    }
}
