//! Running one REST call against Discord: rate gate, time bound, retries, and turning
//! what went wrong into a [`StoreError`] a user can act on.
//!
//! twilight-http builds the requests (routes, bodies, multipart forms); [`Rest`] sends
//! them itself, over reqwest. twilight's client can't be the one to send them: its
//! rate limiter lets one request per bucket be in flight, and without that limiter
//! it re-sends a request that got a 429 at once, as often as the server answers 429,
//! without telling the caller. Every call goes through [`Rest::call`], which
//!
//! - passes the [`RateGate`] for its route key, so buckets are never overrun, and
//!   tells it what each answer's rate-limit headers said;
//! - bounds each attempt in time (the exchange, body included; not the wait at the
//!   gate before it);
//! - on a 429, counts it ([`crate::store::pace::note_429`]), has the gate hold the
//!   route key (or, for a global 429, every request) for the `retry_after` Discord
//!   asked for (at most [`MAX_429_WAIT`]), and tries again; it waits out at most
//!   [`MAX_429_RETRIES`] 429s in one call, and gives up at the next;
//! - retries what is worth retrying — 5xx, resets, timeouts, unreadable bodies — with
//!   exponential backoff and jitter, a bounded number of times, then reports it;
//! - never retries what would fail again: 400, 401, 403, 404, 413; and after a 401
//!   sends nothing more (Discord bans, for a while, an address that keeps sending
//!   requests it refuses).
//!
//! Retrying a `POST` is only safe when the server can tell a retry from a new request;
//! message posts carry a nonce with `enforce_nonce`, so a retry after a lost response
//! returns the message the first attempt created instead of a second copy.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, USER_AGENT};
use twilight_http::api_error::ApiError;
use twilight_http::error::Error as HttpError;
use twilight_http::request::TryIntoRequest;
use twilight_http::response::Response;

use super::ratelimit::{self, RateGate};
use crate::store::StoreError;

/// Longest wait a 429 is given, whatever its `retry_after` says.
pub const MAX_429_WAIT: Duration = Duration::from_secs(60);
/// 429s one call waits out before it gives up.
pub const MAX_429_RETRIES: u32 = 10;

/// How a failed attempt should be handled.
#[derive(Debug)]
pub enum Failure {
    /// Worth another attempt (after a pause).
    Transient(String),
    /// Discord answered 429: try again once the gate lets the request go.
    RateLimited {
        /// The wait Discord asked for (capped).
        wait: Duration,
        global: bool,
    },
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
    /// Classifies an answer that isn't a success (nor a 429) by its status and body.
    pub fn of_answer(status: u16, body: &[u8]) -> Failure {
        if status == 401 {
            return Failure::Unauthorized;
        }
        let (code, message) = match serde_json::from_slice::<ApiError>(body) {
            Ok(ApiError::General(general)) => (general.code, general.message),
            Ok(ApiError::Message(m)) => (50035, format!("{m:?}")),
            Ok(ApiError::Ratelimited(r)) => (0, r.message),
            Ok(other) => (0, other.to_string()),
            // An error body that isn't Discord's JSON: a proxy or load balancer in the way.
            Err(_) => {
                return Failure::Transient(format!(
                    "unreadable error response ({status}): {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ));
            }
        };
        if status >= 500 {
            Failure::Transient(format!("Discord answered {status}: {message}"))
        } else {
            Failure::Api {
                status,
                code,
                message,
            }
        }
    }
}

/// The part of a 429's body that says how long to wait.
#[derive(Default, serde::Deserialize)]
struct RateLimitedBody {
    retry_after: Option<f64>,
    global: Option<bool>,
}

/// What a 429 asks for: its body's `retry_after` (seconds, with decimals) and `global`,
/// else the `Retry-After` header and `X-RateLimit-Global` / `X-RateLimit-Scope:
/// global`, else a second; at most [`MAX_429_WAIT`].
fn rate_limited(headers: &[(&str, &[u8])], body: &[u8]) -> Failure {
    let header = |wanted: &str| {
        headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
            .map(str::trim)
    };
    let said: RateLimitedBody = serde_json::from_slice(body).unwrap_or_default();
    let retry_after = said
        .retry_after
        .or_else(|| header("retry-after").and_then(|v| v.parse::<f64>().ok()));
    let global = said.global.unwrap_or_else(|| {
        header("x-ratelimit-global").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || header("x-ratelimit-scope").is_some_and(|v| v.eq_ignore_ascii_case("global"))
    });
    let wait = retry_after
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .unwrap_or(Duration::from_secs(1))
        .min(MAX_429_WAIT);
    Failure::RateLimited { wait, global }
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
    /// Bound on one attempt: the HTTP exchange, its answer's body included (not the
    /// wait at the rate gate before it).
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

/// The User-Agent Discord asks bots to send: `DiscordBot (URL, version)`.
const BOT_USER_AGENT: &str = concat!("DiscordBot (dcloud-fs, ", env!("CARGO_PKG_VERSION"), ")");

/// A successful answer's body, typed by the model the request's builder promises.
pub struct Answer<T> {
    pub body: Bytes,
    model: PhantomData<fn() -> T>,
}

/// A request twilight built, typed by the model its builder promises.
pub struct Made<T> {
    request: Result<twilight_http::request::Request, HttpError>,
    model: PhantomData<fn() -> T>,
}

/// The request a twilight builder describes (what `make` in [`Rest::call`] returns).
pub fn made<T, B>(builder: B) -> Made<T>
where
    B: TryIntoRequest + IntoFuture<Output = Result<Response<T>, HttpError>>,
{
    Made {
        request: builder.try_into_request(),
        model: PhantomData,
    }
}

/// The REST side of the Discord store.
pub struct Rest {
    /// Builds the requests; never sends one (see the module docs).
    pub client: twilight_http::Client,
    http: reqwest::Client,
    /// `https://discord.com/api/v10`, or the same under another address.
    base: String,
    /// `Bot <token>`, marked sensitive.
    authorization: HeaderValue,
    /// Discord refused the token once: nothing more is sent.
    token_refused: AtomicBool,
    pub gate: RateGate,
    pub policy: RetryPolicy,
}

impl Rest {
    /// REST over `http` to `base` (the API's root, `.../api/v10`), with `token`.
    pub fn new(
        client: twilight_http::Client,
        http: reqwest::Client,
        base: String,
        token: &str,
        gate: RateGate,
        policy: RetryPolicy,
    ) -> Result<Rest, StoreError> {
        let mut authorization = HeaderValue::from_str(&format!("Bot {token}")).map_err(|_| {
            StoreError::NotSetUp(
                "the bot token holds characters no token has; copy it again from the \
                 Developer Portal (your app → Bot → Reset Token)"
                    .into(),
            )
        })?;
        authorization.set_sensitive(true);
        Ok(Rest {
            client,
            http,
            base: base.trim_end_matches('/').to_string(),
            authorization,
            token_refused: AtomicBool::new(false),
            gate,
            policy,
        })
    }

    /// Runs a request made by `make` (with [`made`]; called again for each attempt,
    /// once the gate lets it go), reading its body with `read`, under the gate of
    /// `route`. `what` names it in errors ("posting a message in #docs").
    pub async fn call<T, F, R, O>(
        &self,
        route: &str,
        what: &str,
        make: F,
        read: R,
    ) -> Result<O, RestError>
    where
        F: Fn() -> Made<T>,
        R: Fn(Answer<T>) -> Result<O, String>,
    {
        let mut attempt = 1;
        let mut limited = 0;
        loop {
            let outcome = self.attempt(route, &make, &read).await;
            let reason = match outcome {
                Ok(value) => return Ok(value),
                Err(Failure::RateLimited { wait, global }) => {
                    crate::store::pace::note_429();
                    limited += 1;
                    if limited > MAX_429_RETRIES {
                        return Err(RestError::RateLimited(format!(
                            "{what}: Discord kept rate-limiting it ({limited} answers 429 in \
                             a row, the last asking to wait {wait:.1?}); another program may \
                             be using the same bot token, try again later"
                        )));
                    }
                    let scope = if global { "every request" } else { route };
                    log::info!("{what}: 429, {scope} waits {wait:.1?} (429 number {limited})");
                    // The gate holds the next attempt back until then.
                    continue;
                }
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

    async fn attempt<T, F, R, O>(&self, route: &str, make: &F, read: &R) -> Result<O, Failure>
    where
        F: Fn() -> Made<T>,
        R: Fn(Answer<T>) -> Result<O, String>,
    {
        if self.token_refused.load(Ordering::Relaxed) {
            return Err(Failure::Unauthorized);
        }
        let mut pass = self.gate.enter(route).await;
        let request = make()
            .request
            .map_err(|e| Failure::Invalid(describe_chain(&e)))?;
        let request = self.http_request(request)?;
        let exchange = async {
            let response = request
                .send()
                .await
                .map_err(|e| Failure::Transient(describe_reqwest(&e)))?;
            let status = response.status().as_u16();
            if status == 429 {
                let headers = response.headers().clone();
                // If the body can't be read, the headers say how long to wait too.
                let body = response.bytes().await.unwrap_or_default();
                let headers: Vec<(&str, &[u8])> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes()))
                    .collect();
                let failure = rate_limited(&headers, &body);
                if let Failure::RateLimited { wait, global } = failure {
                    pass.limited(wait, global);
                }
                return Err(failure);
            }
            pass.observe(ratelimit::parse_headers(
                response
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_bytes())),
            ));
            let body = response.bytes().await.map_err(|e| {
                Failure::Transient(format!("reading the answer: {}", describe_reqwest(&e)))
            })?;
            match status {
                200..=299 => read(Answer {
                    body,
                    model: PhantomData,
                })
                .map_err(Failure::Transient),
                401 => {
                    self.token_refused.store(true, Ordering::Relaxed);
                    Err(Failure::Unauthorized)
                }
                _ => Err(Failure::of_answer(status, &body)),
            }
        };
        match tokio::time::timeout(self.policy.attempt_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Transient(format!(
                "no answer within {:?}",
                self.policy.attempt_timeout
            ))),
        }
    }

    /// The HTTP request twilight's `request` describes, as twilight's client would
    /// send it (its URL under [`Self::base`], the token, a JSON body or multipart form,
    /// its headers such as an audit-log reason).
    fn http_request(
        &self,
        request: twilight_http::request::Request,
    ) -> Result<reqwest::RequestBuilder, Failure> {
        let name = request.method().name();
        let method = reqwest::Method::from_bytes(name.as_bytes())
            .map_err(|_| Failure::Invalid(format!("an HTTP method named {name}")))?;
        let url = format!("{}/{}", self.base, request.path());
        let mut builder = self
            .http
            .request(method.clone(), url)
            .header(USER_AGENT, BOT_USER_AGENT);
        if request.use_authorization_token() {
            builder = builder.header(AUTHORIZATION, self.authorization.clone());
        }
        if let Some(headers) = request.headers() {
            for (name, value) in headers {
                builder = builder.header(name.as_str(), value.as_bytes());
            }
        }
        builder = if let Some(form) = request.form() {
            let content_type = HeaderValue::from_bytes(&form.content_type())
                .map_err(|e| Failure::Invalid(format!("a multipart form's type: {e}")))?;
            builder
                .header(CONTENT_TYPE, content_type)
                .body(form.clone().build())
        } else if let Some(body) = request.body() {
            builder
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec())
        } else if matches!(
            method,
            reqwest::Method::PUT | reqwest::Method::POST | reqwest::Method::PATCH
        ) {
            // Discord answers 411 to a body-less PUT without a length.
            builder.header(CONTENT_LENGTH, "0")
        } else {
            builder
        };
        Ok(builder)
    }
}

/// A reqwest error on one line, saying plainly when it was a timeout.
fn describe_reqwest(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "the request timed out".to_string()
    } else {
        describe_chain(error)
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
    /// Discord kept answering 429 (the message says what and what to do).
    RateLimited(String),
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
            RestError::RateLimited(reason) => StoreError::Unavailable(reason),
            RestError::Unavailable(reason) => StoreError::Unavailable(format!(
                "{reason}; check the network (or the DCLOUD_API address) and try again"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_of(headers: &[(&'static str, &'static str)], body: &str) -> (Duration, bool) {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        match rate_limited(&headers, body.as_bytes()) {
            Failure::RateLimited { wait, global } => (wait, global),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_429_says_how_long_to_wait_in_its_body_or_headers() {
        let body = r#"{"message": "You are being rate limited.", "retry_after": 0.25,
                       "global": false, "code": 0}"#;
        assert_eq!(
            wait_of(&[("retry-after", "1")], body),
            (Duration::from_millis(250), false)
        );
        let global = r#"{"message": "", "retry_after": 2, "global": true}"#;
        assert_eq!(wait_of(&[], global), (Duration::from_secs(2), true));
        // No usable body: the headers; nothing at all: a second.
        assert_eq!(
            wait_of(
                &[("Retry-After", "3"), ("X-RateLimit-Scope", "global")],
                "<html>"
            ),
            (Duration::from_secs(3), true)
        );
        assert_eq!(wait_of(&[], ""), (Duration::from_secs(1), false));
        // Never longer than the cap, and never a negative or absurd wait.
        assert_eq!(wait_of(&[], r#"{"retry_after": 1e9}"#).0, MAX_429_WAIT);
        assert_eq!(
            wait_of(&[], r#"{"retry_after": -5}"#).0,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn error_answers_are_classified() {
        let general = br#"{"code": 10008, "message": "Unknown Message"}"#;
        assert!(matches!(
            Failure::of_answer(404, general),
            Failure::Api {
                status: 404,
                code: 10008,
                ..
            }
        ));
        assert!(matches!(
            Failure::of_answer(502, general),
            Failure::Transient(_)
        ));
        assert!(matches!(
            Failure::of_answer(401, b""),
            Failure::Unauthorized
        ));
        // A proxy's page instead of Discord's JSON: worth another try.
        assert!(matches!(
            Failure::of_answer(404, b"<html>not found</html>"),
            Failure::Transient(_)
        ));
    }

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
