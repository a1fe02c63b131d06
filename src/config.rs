//! The config file, `$XDG_CONFIG_HOME/dcloud-fs/config.toml`.
//!
//! It holds what a user sets once: which store (a Discord guild through a bot, or a
//! local folder), the bot's token, the key file, and how to mount. Command-line flags
//! override the environment, which overrides this file, which overrides the defaults;
//! the CLI does that merge (and `dcloud-fs config` shows it), this module only reads
//! and checks the file. `contrib/config.toml.template` documents every key; a test
//! checks that it names each one.
//!
//! Paths may start with `~/`, meaning the home folder.
//!
//! The file is strict: an unknown key or a value of the wrong kind is an error that
//! names the key and the file, so a typo never silently means "use the default". A
//! file that holds a token must not be readable by other users, like the key file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What the config file may say. Every key is optional.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The bot's token (as `DCLOUD_TOKEN`). Setting it selects the Discord store.
    pub token: Option<String>,
    /// The guild (server) id, a number or a string of digits (as `DCLOUD_GUILD`).
    pub guild: Option<Snowflake>,
    /// Base address of the Discord API (as `DCLOUD_API`); unset means Discord.
    pub api: Option<String>,
    /// Only channels in this category (id or name) are folders (as `DCLOUD_CATEGORY`).
    pub category: Option<String>,
    /// Use the local store in this folder instead of Discord (as `DCLOUD_LOCAL`).
    pub local: Option<PathBuf>,
    /// The key file (as `DCLOUD_KEY_FILE`).
    pub key_file: Option<PathBuf>,
    /// Per-file limit in MiB, instead of the one the guild's boost tier gives.
    pub max_file_size_mib: Option<u64>,
    /// Bound on one request to Discord, in seconds (default 120).
    pub request_timeout_secs: Option<u64>,
    /// Seconds a message a change made unneeded stays before it is deleted (default
    /// 120; 0 deletes at once).
    pub free_grace_secs: Option<u64>,
    /// History requests in flight at once when a channel has many messages to read
    /// (default 4; 1 reads one page after the other).
    pub history_parallelism: Option<u64>,
    /// Whether checkpoints are posted and a machine without an index cache starts from
    /// one (default true; false replays the whole history, as before checkpoints).
    pub checkpoints: Option<bool>,
    /// Records of this key newer than the newest checkpoint after which a new one is
    /// posted (default 1,000; 0 posts none, but still starts from the newest one).
    pub checkpoint_every: Option<u64>,
    /// Where `mount` and `umount` mount when given no mount point (default `~/discord`).
    pub mount_point: Option<PathBuf>,
    /// Memory for decrypted blocks, in MiB (default 64).
    pub cache_size_mib: Option<u64>,
    /// Disk for fetched chunks, still sealed, in MiB, for stores not on local disk
    /// (default 4096; 0 keeps none).
    pub disk_cache_mib: Option<u64>,
    /// Index cache, upload journals and spool (default `$XDG_CACHE_HOME/dcloud-fs`).
    pub cache_dir: Option<PathBuf>,
    /// Seconds between checks of open channels for changes made elsewhere (default 5).
    pub poll_interval_secs: Option<u64>,
    /// Seconds after its last close that a file written through the mount is uploaded
    /// (default 2; 0 uploads at close, which then waits for it).
    pub write_back_secs: Option<u64>,
    /// Most MiB the spool may hold, files being written and closed ones waiting for
    /// their upload; writers then wait for uploads (default: half the free space of
    /// the spool's disk at mount, at most 16384 and at least 512).
    pub spool_max_mib: Option<u64>,
    /// Mount read-only (default false).
    pub read_only: Option<bool>,
    /// Let other users into the mount (default false).
    pub allow_other: Option<bool>,
    /// Where `serve` listens (default 127.0.0.1:8080).
    pub serve_listen: Option<String>,
    /// The Argon2id hash of `serve`'s password (`dcloud-fs serve --set-password`);
    /// without one, `serve` needs no login and listens only on loopback.
    pub serve_password_hash: Option<String>,
    /// The address people reach `serve` at, for share links (default: http://LISTEN).
    pub serve_base_url: Option<String>,
    /// A PEM certificate chain for `serve` to speak HTTPS with (with `serve_tls_key`).
    pub serve_tls_cert: Option<PathBuf>,
    /// The PEM private key of `serve_tls_cert`.
    pub serve_tls_key: Option<PathBuf>,
}

/// The keys a config file may hold, in the order the template documents them.
pub const KEYS: [&str; 26] = [
    "token",
    "guild",
    "category",
    "api",
    "local",
    "key_file",
    "max_file_size_mib",
    "request_timeout_secs",
    "free_grace_secs",
    "history_parallelism",
    "checkpoints",
    "checkpoint_every",
    "mount_point",
    "cache_size_mib",
    "disk_cache_mib",
    "cache_dir",
    "poll_interval_secs",
    "write_back_secs",
    "spool_max_mib",
    "read_only",
    "allow_other",
    "serve_listen",
    "serve_password_hash",
    "serve_base_url",
    "serve_tls_cert",
    "serve_tls_key",
];

/// `path` with a leading `~/` (or a lone `~`) replaced by the home folder.
pub fn expand_home(path: &Path) -> PathBuf {
    let home = || std::env::var_os("HOME").map(PathBuf::from);
    if path == Path::new("~") {
        return home().unwrap_or_else(|| path.to_path_buf());
    }
    match (path.strip_prefix("~"), home()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

/// A snowflake id written as a TOML integer or a string of digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snowflake(pub u64);

impl<'de> Deserialize<'de> for Snowflake {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(Snowflake(n)),
            Raw::Text(text) => text.trim().parse().map(Snowflake).map_err(|_| {
                serde::de::Error::custom(format!("'{text}' is not an id (digits only)"))
            }),
        }
    }
}

/// Errors reading the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("config file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} holds a token and other users can read it; run `chmod 600 {path}`")]
    Exposed { path: PathBuf },
}

/// Where the config file is by default.
pub fn default_path() -> PathBuf {
    crate::dirs::config_dir().join("config.toml")
}

/// Reads the config file at `path`. A missing file is an empty config unless
/// `required` (it was named explicitly).
pub fn load(path: &Path, required: bool) -> Result<ConfigFile, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(ConfigFile::default());
        }
        Err(source) => {
            return Err(ConfigError::Unreadable {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut config: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        message: one_line(&e.to_string()),
    })?;
    for value in [
        &mut config.local,
        &mut config.key_file,
        &mut config.mount_point,
        &mut config.cache_dir,
        &mut config.serve_tls_cert,
        &mut config.serve_tls_key,
    ]
    .into_iter()
    .flatten()
    {
        *value = expand_home(value);
    }
    let positive = [
        ("max_file_size_mib", config.max_file_size_mib),
        ("request_timeout_secs", config.request_timeout_secs),
        ("history_parallelism", config.history_parallelism),
        ("cache_size_mib", config.cache_size_mib),
        ("poll_interval_secs", config.poll_interval_secs),
        ("spool_max_mib", config.spool_max_mib),
    ];
    if let Some((key, _)) = positive.iter().find(|(_, value)| *value == Some(0)) {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!("{key} must be at least 1"),
        });
    }
    if config.token.is_some() {
        let mode = std::fs::metadata(path)
            .map_err(|source| ConfigError::Unreadable {
                path: path.to_path_buf(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(ConfigError::Exposed {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(config)
}

/// toml's errors span several lines (with a caret under the spot); keep the gist.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^'))
        .collect();
    lines.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_full_file_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "token = \"abc\"\nguild = \"123456789012345678\"\napi = \"http://127.0.0.1:1\"\n\
             category = \"files\"\nmax_file_size_mib = 50\nrequest_timeout_secs = 300\n",
            0o600,
        );
        let config = load(&path, true).unwrap();
        assert_eq!(config.guild, Some(Snowflake(123456789012345678)));
        assert_eq!(config.max_file_size_mib, Some(50));
        let numeric = write(dir.path(), "guild = 42\n", 0o644);
        assert_eq!(load(&numeric, true).unwrap().guild, Some(Snowflake(42)));
    }

    #[test]
    fn mistakes_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "tokn = \"abc\"\n", 0o600);
        let message = load(&path, true).unwrap_err().to_string();
        assert!(
            message.contains("tokn") && message.contains("config.toml"),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
        let path = write(dir.path(), "guild = \"abc\"\n", 0o600);
        let message = load(&path, true).unwrap_err().to_string();
        assert!(
            message.contains("guild") || message.contains("abc"),
            "{message}"
        );
    }

    #[test]
    fn mount_keys_read_and_paths_expand_the_home_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "mount_point = \"~/drive\"\ncache_size_mib = 64\ncache_dir = \"/var/c\"\n\
             poll_interval_secs = 9\nread_only = true\nallow_other = false\n",
            0o644,
        );
        let config = load(&path, true).unwrap();
        let home = PathBuf::from(std::env::var_os("HOME").unwrap());
        assert_eq!(config.mount_point, Some(home.join("drive")));
        assert_eq!(config.cache_dir, Some(PathBuf::from("/var/c")));
        assert_eq!(
            (config.cache_size_mib, config.poll_interval_secs),
            (Some(64), Some(9))
        );
        assert_eq!(
            (config.read_only, config.allow_other),
            (Some(true), Some(false))
        );
        let zero = write(dir.path(), "poll_interval_secs = 0\n", 0o644);
        let message = load(&zero, true).unwrap_err().to_string();
        assert!(message.contains("poll_interval_secs"), "{message}");
        let bad = write(dir.path(), "read_only = \"yes\"\n", 0o644);
        let message = load(&bad, true).unwrap_err().to_string();
        assert!(
            message.contains("read_only") || message.contains("bool"),
            "{message}"
        );
    }

    #[test]
    fn the_template_documents_every_key_and_reads_as_it_is() {
        let template = include_str!("../contrib/config.toml.template");
        for key in KEYS {
            assert!(
                template.contains(&format!("\n#{key} = ")),
                "the template has no commented example of '{key}'"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), template, 0o600);
        assert_eq!(load(&path, true).unwrap(), ConfigFile::default());
        // Uncommented, every example must be a valid value of its key.
        let uncommented: String = template
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if KEYS.iter().any(|k| rest.starts_with(&format!("{k} = "))) => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = write(dir.path(), &uncommented, 0o600);
        let all = load(&path, true).unwrap();
        assert!(all.token.is_some() && all.allow_other.is_some());
    }

    #[test]
    fn missing_and_exposed_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        assert_eq!(load(&missing, false).unwrap(), ConfigFile::default());
        assert!(load(&missing, true).is_err());
        let path = write(dir.path(), "token = \"zq-secret-zq\"\n", 0o644);
        let message = load(&path, false).unwrap_err().to_string();
        assert!(
            message.contains("chmod 600") && !message.contains("zq-secret-zq"),
            "{message}"
        );
    }
}
