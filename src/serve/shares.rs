//! Share links: a URL that lets someone without an account download one file
//! through `serve`.
//!
//! A link is `BASE/s/TOKEN`, TOKEN 32 random bytes (base64url): unguessable. The
//! link names a path (`channel/path`), so it follows that name: a file replaced
//! under it is served in its new version, one renamed away or deleted is gone
//! (404). The server decrypts and sends that one file's bytes and nothing else: the
//! link holder never sees a key, a record or another name.
//!
//! The links live in `shares.json` in the config folder (mode 0600) of the machine
//! that serves, and only the SHA-256 of each token is kept there: a copy of the file
//! opens nothing. So a link is shown once, when made; `share --list` shows each
//! link's id (the start of that digest), path and expiry, and `share --revoke ID`
//! ends it. Changes are made under an exclusive `flock` of `shares.lock` and
//! written to a temporary file renamed over the old one, so the CLI and a running
//! `serve` can change the list at once, and a crash leaves the old list or the new
//! one. `serve` reads the file on each link's use, so a revoke takes effect at once.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The version of `shares.json`'s layout.
pub const SHARES_FORMAT: u32 = 1;
/// Hex digits of a link's id.
const ID_LEN: usize = 12;
/// The most links kept, and the largest file read.
const MAX_SHARES: usize = 100_000;
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Errors of the share list.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged ({why}); move it away to start a new list")]
    Damaged { path: PathBuf, why: String },
    #[error("no share link {0}; `dcloud-fs share --list` shows them")]
    Unknown(String),
    #[error("share id {0} is ambiguous; give more of it")]
    Ambiguous(String),
    #[error("too many share links ({MAX_SHARES}); revoke some first")]
    TooMany,
}

/// One share link, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The start of the token's digest: what `--list` shows and `--revoke` takes.
    pub id: String,
    /// SHA-256 of the token, hex.
    pub digest: String,
    /// `channel/path` of the file.
    pub path: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// Seconds since the epoch; `None`: never.
    pub expires: Option<u64>,
}

impl Share {
    /// Whether the link has expired at `now` (seconds since the epoch).
    pub fn expired_at(&self, now: u64) -> bool {
        self.expires.is_some_and(|expires| now >= expires)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SharesFile {
    format: u32,
    shares: Vec<Share>,
}

/// What a token finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Live(Share),
    Expired(Share),
    Unknown,
}

/// The share list of one machine.
#[derive(Debug, Clone)]
pub struct Shares {
    dir: PathBuf,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Shares {
    /// The list kept in folder `dir` (the config folder).
    pub fn new(dir: impl Into<PathBuf>) -> Shares {
        Shares { dir: dir.into() }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("shares.json")
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> ShareError {
        let path = path.to_path_buf();
        move |source| ShareError::Io { path, source }
    }

    /// Makes a link to `path`, valid for `valid_for` (`None`: until revoked). Returns
    /// the token (shown once) and the link as kept.
    pub fn create(
        &self,
        path: &str,
        valid_for: Option<Duration>,
    ) -> Result<(String, Share), ShareError> {
        let token = super::auth::random_token();
        let digest = hex_digest(&token);
        let created = now_secs();
        let share = Share {
            id: digest[..ID_LEN].to_string(),
            digest,
            path: path.to_string(),
            created,
            expires: valid_for.map(|d| created.saturating_add(d.as_secs())),
        };
        self.change(|file| {
            if file.shares.len() >= MAX_SHARES {
                return Err(ShareError::TooMany);
            }
            file.shares.push(share.clone());
            Ok(())
        })?;
        Ok((token, share))
    }

    /// Every link, oldest first.
    pub fn list(&self) -> Result<Vec<Share>, ShareError> {
        Ok(self.read()?.shares)
    }

    /// Ends the link whose id starts with `id` (or whose token, or URL, is `id`).
    pub fn revoke(&self, id: &str) -> Result<Share, ShareError> {
        let id = id.rsplit('/').next().unwrap_or(id);
        let by_token = hex_digest(id);
        self.change(|file| {
            let matching: Vec<usize> = (0..file.shares.len())
                .filter(|&i| {
                    let share = &file.shares[i];
                    share.digest == by_token || (id.len() >= 4 && share.id.starts_with(id))
                })
                .collect();
            match matching[..] {
                [i] => Ok(file.shares.remove(i)),
                [] => Err(ShareError::Unknown(id.to_string())),
                _ => Err(ShareError::Ambiguous(id.to_string())),
            }
        })
    }

    /// What `token` opens.
    pub fn find(&self, token: &str) -> Result<Lookup, ShareError> {
        let digest = hex_digest(token);
        let file = self.read()?;
        let found = file
            .shares
            .into_iter()
            .find(|share| super::auth::same(share.digest.as_bytes(), digest.as_bytes()));
        Ok(match found {
            Some(share) if share.expired_at(now_secs()) => Lookup::Expired(share),
            Some(share) => Lookup::Live(share),
            None => Lookup::Unknown,
        })
    }

    fn read(&self) -> Result<SharesFile, ShareError> {
        let path = self.file();
        let bytes = match File::open(&path) {
            Ok(file) => {
                use std::io::Read;
                let mut bytes = Vec::new();
                file.take(MAX_FILE_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .map_err(self.io(&path))?;
                bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SharesFile {
                    format: SHARES_FORMAT,
                    shares: Vec::new(),
                });
            }
            Err(e) => return Err(self.io(&path)(e)),
        };
        let damaged = |why: String| ShareError::Damaged {
            path: path.clone(),
            why,
        };
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(damaged("too large".into()));
        }
        let file: SharesFile =
            serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
        if file.format != SHARES_FORMAT {
            return Err(damaged(format!("format {} is not known", file.format)));
        }
        Ok(file)
    }

    /// Reads, changes and writes the list under the lock.
    fn change<T>(
        &self,
        edit: impl FnOnce(&mut SharesFile) -> Result<T, ShareError>,
    ) -> Result<T, ShareError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let lock_path = self.dir.join("shares.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(self.io(&lock_path))?;
        // SAFETY: flock on a descriptor we own; released when `lock` closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(self.io(&lock_path)(std::io::Error::last_os_error()));
        }
        let mut file = self.read()?;
        let result = edit(&mut file)?;
        let path = self.file();
        let temporary = self.dir.join(format!("shares.json.{}", std::process::id()));
        let text = serde_json::to_vec_pretty(&file).expect("the share list serializes");
        let write = || -> std::io::Result<()> {
            let mut out = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&temporary)?;
            out.write_all(&text)?;
            out.sync_all()?;
            std::fs::rename(&temporary, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            self.io(&path)(e)
        })?;
        drop(lock);
        Ok(result)
    }
}

/// Parses a duration as `share --expires` takes it: `30m`, `12h`, `7d`, `2w`, or
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (like 30m, 12h, 7d)"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("'{text}': the unit is one of s, m, h, d, w")),
    };
    if number == 0 {
        return Err("a share must last more than 0 s".into());
    }
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_made_found_expired_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let shares = Shares::new(dir.path());
        let (token, share) = shares.create("films/clip.mp4", None).unwrap();
        assert_eq!(shares.find(&token).unwrap(), Lookup::Live(share.clone()));
        assert_eq!(shares.find("not-a-token").unwrap(), Lookup::Unknown);
        // Only the digest is kept.
        let text = std::fs::read_to_string(dir.path().join("shares.json")).unwrap();
        assert!(!text.contains(&token));
        let mode = std::fs::metadata(dir.path().join("shares.json"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let (old, _) = shares
            .create("films/old.mp4", Some(Duration::from_secs(3_600)))
            .unwrap();
        // An hour is long enough that the lookup can't cross the boundary
        // (a 1 s link made at x.999 s had expired by the time it was looked up).
        let mut expired = match shares.find(&old).unwrap() {
            Lookup::Live(share) => share,
            other => panic!("{other:?}"),
        };
        assert!(!expired.expired_at(expired.created + 3_599));
        assert!(expired.expired_at(expired.created + 3_600));
        expired.expires = Some(0);
        assert!(expired.expired_at(now_secs()));

        assert_eq!(shares.list().unwrap().len(), 2);
        assert_eq!(shares.revoke(&share.id).unwrap().path, "films/clip.mp4");
        assert_eq!(shares.find(&token).unwrap(), Lookup::Unknown);
        // By URL too.
        shares.revoke(&format!("http://host/s/{old}")).unwrap();
        assert!(shares.list().unwrap().is_empty());
        assert!(matches!(
            shares.revoke("abcdef"),
            Err(ShareError::Unknown(_))
        ));
    }

    #[test]
    fn a_damaged_list_is_an_error_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shares.json"), b"{not json").unwrap();
        let shares = Shares::new(dir.path());
        assert!(matches!(shares.find("x"), Err(ShareError::Damaged { .. })));
        assert!(shares.create("a/b", None).is_err());
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1_800));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("7y").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
