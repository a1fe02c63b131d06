//! Who may use `serve`, and how requests prove it.
//!
//! - **No password set, loopback address**: no login; only programs on this machine
//!   reach the server. A listen address that isn't loopback without a password is
//!   refused at start ([`check_listen`]). Behind a reverse proxy the proxy connects
//!   over loopback, so a password must be set there: once one is set it is always
//!   asked for, whatever the address.
//! - **Password**: stored as an Argon2id PHC string (`serve_password_hash` in the
//!   config, written by `dcloud-fs serve --set-password`), never the password. The
//!   page logs in with a form and gets a session cookie (`HttpOnly`,
//!   `SameSite=Strict`, `Secure` when served over TLS or behind an `https` base URL);
//!   WebDAV clients and scripts send HTTP Basic with any user name. A Basic
//!   password that checked out is remembered (its SHA-256, a few minutes) so that a
//!   WebDAV client, which sends it with every request, doesn't pay an Argon2 run each
//!   time.
//! - **Failed logins are throttled** per client address: after
//!   [`FREE_FAILURES`] failures, each further attempt waits twice as long as the last
//!   (up to [`MAX_LOCKOUT`]), and attempts in that time are refused unseen (429).
//! - **CSRF**: every state-changing request from a browser (one that carries a
//!   cookie, an `Origin` or a `Sec-Fetch-Site` header, which browsers add and pages
//!   can't remove) to the page's routes carries the page's token in `X-CSRF-Token`
//!   (one per session, or one per server run without login), and every
//!   state-changing request whose `Origin` names another site is refused. A page
//!   elsewhere can't read the token; the page's actions take JSON and uploads are
//!   PUTs, and neither can be sent cross-site without a CORS preflight, which this
//!   server never grants; nor can the methods WebDAV changes things with (PUT,
//!   DELETE, MOVE, MKCOL). Scripts (curl) need no token.
//! - **DNS rebinding**: without a password, a `Host` that isn't this machine's
//!   loopback name (or the base URL's host) is refused, so a page on a name that
//!   resolves to 127.0.0.1 can't read through the user's browser.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Failed logins from one address before they are slowed down.
pub const FREE_FAILURES: u32 = 5;
/// The longest an address is made to wait after failing.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Failures are forgotten after this long without one.
const FAILURE_MEMORY: Duration = Duration::from_secs(60 * 60);
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How long a Basic password that checked out is remembered.
const BASIC_MEMORY: Duration = Duration::from_secs(5 * 60);
/// Sessions, remembered passwords and throttled addresses kept at most (the oldest
/// go first), so that nobody can fill memory.
const MAX_ENTRIES: usize = 10_000;
/// The session cookie's name.
pub const COOKIE: &str = "dcloud_session";

/// Errors of the access layer.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("wrong password")]
    WrongPassword,
    #[error("too many failed logins from this address; try again in {0} s")]
    Throttled(u64),
    #[error(
        "serve_password_hash in the config is not an Argon2id hash ({0}); set it again with \
         `dcloud-fs serve --set-password`"
    )]
    BadHash(String),
    #[error("could not hash the password: {0}")]
    Hashing(String),
}

/// Hashes `password` for the config (Argon2id, a random salt, the crate's default
/// cost: 19 MiB and 2 passes, OWASP's recommendation).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::PasswordHasher;
    let hash: argon2::password_hash::phc::PasswordHash = argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    Ok(hash.to_string())
}

/// Checks that `hash` is a PHC string of Argon2id, as the config must hold.
pub fn check_hash(hash: &str) -> Result<(), AuthError> {
    let parsed = argon2::password_hash::phc::PasswordHash::new(hash)
        .map_err(|e| AuthError::BadHash(e.to_string()))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(AuthError::BadHash(format!(
            "it is {}",
            parsed.algorithm.as_str()
        )));
    }
    Ok(())
}

fn verify(password: &str, hash: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// Whether `listen` may be used with the password setting given: a non-loopback
/// address needs a password.
pub fn check_listen(listen: SocketAddr, has_password: bool) -> Result<(), String> {
    if has_password || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "listening on {listen} (not a loopback address) needs a password: set one with \
         `dcloud-fs serve --set-password`, or listen on 127.0.0.1"
    ))
}

/// A random token: 32 bytes, base64url.
pub fn random_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Compares two byte strings in time that depends only on their length.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Session {
    expires: Instant,
    csrf: String,
}

struct Failures {
    count: u32,
    last: Instant,
    /// No attempt is looked at before this.
    until: Instant,
}

/// Who is logged in, and who failed. Shared by all requests.
pub struct Access {
    hash: Option<String>,
    /// The CSRF token of a server without login.
    open_csrf: String,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    basic: Mutex<HashMap<[u8; 32], Instant>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// What a request proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// No login needed.
    Open,
    /// A session cookie; the page's CSRF token is its own.
    Session { csrf: String },
    /// HTTP Basic.
    Basic,
}

impl Access {
    /// `hash`: the Argon2id hash of the password, if one is set.
    pub fn new(hash: Option<String>) -> Access {
        Access {
            hash,
            open_csrf: random_token(),
            sessions: Mutex::new(HashMap::new()),
            basic: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether requests must prove who they are.
    pub fn required(&self) -> bool {
        self.hash.is_some()
    }

    /// The CSRF token the page must send, for a request with `proof`.
    pub fn csrf_for(&self, proof: &Proof) -> Option<String> {
        match proof {
            Proof::Open => Some(self.open_csrf.clone()),
            Proof::Session { csrf } => Some(csrf.clone()),
            Proof::Basic => None,
        }
    }

    /// What `cookie` (the session cookie's value) and `basic` (the password of an
    /// `Authorization: Basic` header) prove, from `client`. `None`: nothing, the
    /// request must log in.
    pub async fn prove(
        &self,
        cookie: Option<&str>,
        basic: Option<&str>,
        client: IpAddr,
    ) -> Result<Option<Proof>, AuthError> {
        if !self.required() {
            return Ok(Some(Proof::Open));
        }
        if let Some(csrf) = cookie.and_then(|token| self.session(token)) {
            return Ok(Some(Proof::Session { csrf }));
        }
        match basic {
            Some(password) => {
                self.check_password(password, client).await?;
                Ok(Some(Proof::Basic))
            }
            None => Ok(None),
        }
    }

    fn session(&self, token: &str) -> Option<String> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let key = digest(token);
        match sessions.get(&key) {
            Some(session) if session.expires > Instant::now() => Some(session.csrf.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Checks a password from `client` (throttled), remembering one that checked out.
    pub async fn check_password(&self, password: &str, client: IpAddr) -> Result<(), AuthError> {
        let Some(hash) = self.hash.clone() else {
            return Ok(());
        };
        self.throttled(client)?;
        let key = digest(password);
        let now = Instant::now();
        let remembered = {
            let basic = self.basic.lock().unwrap_or_else(|e| e.into_inner());
            basic.get(&key).is_some_and(|&until| until > now)
        };
        if remembered {
            return Ok(());
        }
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || verify(&password, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            self.failed(client);
            return Err(AuthError::WrongPassword);
        }
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client);
        let mut basic = self.basic.lock().unwrap_or_else(|e| e.into_inner());
        basic.retain(|_, until| *until > now);
        if basic.len() < MAX_ENTRIES {
            basic.insert(key, now + BASIC_MEMORY);
        }
        Ok(())
    }

    /// Logs in with `password`: the new session's cookie value.
    pub async fn log_in(&self, password: &str, client: IpAddr) -> Result<String, AuthError> {
        self.check_password(password, client).await?;
        let token = random_token();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, session| session.expires > now);
        if sessions.len() >= MAX_ENTRIES
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, session)| session.expires)
                .map(|(key, _)| *key)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            digest(&token),
            Session {
                expires: now + SESSION_LIFETIME,
                csrf: random_token(),
            },
        );
        Ok(token)
    }

    /// Ends the session of cookie value `token`.
    pub fn log_out(&self, token: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&digest(token));
    }

    fn throttled(&self, client: IpAddr) -> Result<(), AuthError> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(&client) {
            Some(f) if f.until > Instant::now() => Err(AuthError::Throttled(
                (f.until - Instant::now()).as_secs().max(1),
            )),
            _ => Ok(()),
        }
    }

    fn failed(&self, client: IpAddr) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.retain(|_, f| now.duration_since(f.last) < FAILURE_MEMORY);
        if failures.len() >= MAX_ENTRIES && !failures.contains_key(&client) {
            return;
        }
        let f = failures.entry(client).or_insert(Failures {
            count: 0,
            last: now,
            until: now,
        });
        f.count += 1;
        f.last = now;
        f.until = now + lockout(f.count);
        log::warn!("failed login from {client} ({} in a row)", f.count);
    }
}

/// How long an address waits after its `count`th failure in a row.
pub fn lockout(count: u32) -> Duration {
    if count < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES).min(20);
    Duration::from_secs(1u64 << doublings).min(MAX_LOCKOUT)
}

/// Whether `host` (a `Host` header) names this machine's loopback, or `allowed`.
pub fn host_allowed(host: &str, allowed: Option<&str>) -> bool {
    let name = host_name(host);
    if allowed.is_some_and(|allowed| name.eq_ignore_ascii_case(allowed)) {
        return true;
    }
    name.eq_ignore_ascii_case("localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The name in `host[:port]` (brackets kept off an IPv6 address).
pub fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Whether an `Origin` header is this server's own (the same host as `Host`).
pub fn same_origin(origin: &str, host: &str) -> bool {
    let Some((_, rest)) = origin.split_once("://") else {
        return false;
    };
    rest.trim_end_matches('/').eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockouts_double_after_the_free_failures() {
        assert_eq!(lockout(1), Duration::ZERO);
        assert_eq!(lockout(FREE_FAILURES - 1), Duration::ZERO);
        assert_eq!(lockout(FREE_FAILURES), Duration::from_secs(1));
        assert_eq!(lockout(FREE_FAILURES + 3), Duration::from_secs(8));
        assert_eq!(lockout(FREE_FAILURES + 40), MAX_LOCKOUT);
    }

    #[test]
    fn only_loopback_goes_without_a_password() {
        assert!(check_listen("127.0.0.1:8080".parse().unwrap(), false).is_ok());
        assert!(check_listen("[::1]:8080".parse().unwrap(), false).is_ok());
        let refused = check_listen("0.0.0.0:8080".parse().unwrap(), false).unwrap_err();
        assert!(refused.contains("--set-password"), "{refused}");
        assert!(check_listen("0.0.0.0:8080".parse().unwrap(), true).is_ok());
    }

    #[test]
    fn hosts_and_origins() {
        assert!(host_allowed("127.0.0.1:8080", None));
        assert!(host_allowed("localhost:8080", None));
        assert!(host_allowed("[::1]:8080", None));
        assert!(!host_allowed("evil.example:8080", None));
        assert!(host_allowed("files.example.org", Some("files.example.org")));
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(!same_origin("http://evil.example", "127.0.0.1:8080"));
        assert!(!same_origin("null", "127.0.0.1:8080"));
    }

    #[tokio::test]
    async fn passwords_sessions_and_throttling() {
        let hash = hash_password("correct horse").unwrap();
        check_hash(&hash).unwrap();
        assert!(check_hash("$2b$12$notargon").is_err());
        let access = Access::new(Some(hash));
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(access.prove(None, None, client).await.unwrap(), None);
        let token = access.log_in("correct horse", client).await.unwrap();
        let proof = access.prove(Some(&token), None, client).await.unwrap();
        assert!(matches!(proof, Some(Proof::Session { .. })));
        access.log_out(&token);
        assert_eq!(
            access.prove(Some(&token), None, client).await.unwrap(),
            None
        );
        assert_eq!(
            access
                .prove(None, Some("correct horse"), client)
                .await
                .unwrap(),
            Some(Proof::Basic)
        );
        for _ in 0..FREE_FAILURES {
            assert!(matches!(
                access.check_password("wrong", client).await,
                Err(AuthError::WrongPassword)
            ));
        }
        // Locked out now: even the right password waits.
        assert!(matches!(
            access.check_password("correct horse", client).await,
            Err(AuthError::Throttled(_))
        ));
        // Another address is not.
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        access.check_password("correct horse", other).await.unwrap();
        // Without a password, everything is open.
        let open = Access::new(None);
        assert_eq!(
            open.prove(None, None, client).await.unwrap(),
            Some(Proof::Open)
        );
    }
}
