//! Signed CDN URLs, shaped like Discord's: `?ex=<hex expiry>&is=<hex issue time>&hm=<hex mac>&`.
//!
//! The mac is SHA-256 over a secret and the path, `ex` and `is`. Rotating the secret makes
//! every URL handed out so far stop working, which is how tests expire URLs at will.

use sha2::{Digest, Sha256};
use std::time::Duration;

/// Signs and checks attachment URLs.
#[derive(Debug)]
pub struct UrlSigner {
    secret: [u8; 32],
}

/// Why the CDN refuses a URL (it answers 404 for all of them, as Discord does).
#[derive(Debug, PartialEq, Eq)]
pub enum UrlRejection {
    /// `ex`, `is` or `hm` missing or not hex.
    Malformed,
    /// The mac does not match (tampered, or signed before the secret was rotated).
    BadSignature,
    /// `ex` is in the past.
    Expired,
}

impl UrlSigner {
    /// A signer with a fresh random secret.
    pub fn new() -> UrlSigner {
        UrlSigner {
            secret: random_secret(),
        }
    }

    /// Invalidates every URL signed so far.
    pub fn rotate(&mut self) {
        self.secret = random_secret();
    }

    /// The query string (`ex=..&is=..&hm=..&`) for `path`, valid for `lifetime` from `now_ms`.
    pub fn query(&self, path: &str, now_ms: u64, lifetime: Duration) -> String {
        let issued = now_ms / 1000;
        let expires = (now_ms + lifetime.as_millis() as u64).div_ceil(1000);
        let mac = self.mac(path, expires, issued);
        format!("ex={expires:x}&is={issued:x}&hm={mac}&")
    }

    /// Checks the query of a URL for `path` at `now_ms`.
    pub fn verify(&self, path: &str, query: &str, now_ms: u64) -> Result<(), UrlRejection> {
        let field = |name: &str| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        };
        let parse_hex = |name| {
            field(name)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .ok_or(UrlRejection::Malformed)
        };
        let expires = parse_hex("ex")?;
        let issued = parse_hex("is")?;
        let mac = field("hm").ok_or(UrlRejection::Malformed)?;
        if mac != self.mac(path, expires, issued) {
            return Err(UrlRejection::BadSignature);
        }
        if now_ms >= expires * 1000 {
            return Err(UrlRejection::Expired);
        }
        Ok(())
    }

    fn mac(&self, path: &str, expires: u64, issued: u64) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.secret);
        hasher.update(path.as_bytes());
        hasher.update(expires.to_be_bytes());
        hasher.update(issued.to_be_bytes());
        hex(&hasher.finalize())
    }
}

impl Default for UrlSigner {
    fn default() -> Self {
        UrlSigner::new()
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("the OS random source works");
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/attachments/1/2/a.bin";

    #[test]
    fn a_signed_url_verifies_until_it_expires() {
        let signer = UrlSigner::new();
        let query = signer.query(PATH, 10_000, Duration::from_secs(5));
        assert_eq!(signer.verify(PATH, &query, 10_000), Ok(()));
        assert_eq!(signer.verify(PATH, &query, 14_999), Ok(()));
        assert_eq!(
            signer.verify(PATH, &query, 15_000),
            Err(UrlRejection::Expired)
        );
        assert_eq!(
            signer.verify("/attachments/1/3/a.bin", &query, 10_000),
            Err(UrlRejection::BadSignature)
        );
        assert_eq!(signer.verify(PATH, "ex=1", 0), Err(UrlRejection::Malformed));
    }

    #[test]
    fn rotating_the_secret_invalidates_old_urls() {
        let mut signer = UrlSigner::new();
        let query = signer.query(PATH, 10_000, Duration::from_secs(5));
        signer.rotate();
        assert_eq!(
            signer.verify(PATH, &query, 10_000),
            Err(UrlRejection::BadSignature)
        );
    }
}
