//! The settings in effect, and where each comes from: a flag, the environment, the
//! config file, or the default — in that order of precedence.
//!
//! clap merges a flag with its environment variable (`env = ...`), so a value it hands
//! over may be either; [`Source`] tells them apart by looking for the flag on the
//! command line. The merge for the config file and the defaults happens here, once, so
//! that the commands and `dcloud-fs config` (which prints the table) agree.

use std::ffi::OsStr;
use std::fmt;
use std::path::PathBuf;

use super::mount::{
    DEFAULT_CACHE_SIZE_MIB, DEFAULT_DISK_CACHE_MIB, DEFAULT_POLL_SECS, DEFAULT_WRITE_BACK_SECS,
};
use super::{CliError, Context, MountArgs, StoreChoice};
use crate::store::discord::DEFAULT_REQUEST_TIMEOUT;
use crate::volume::{DEFAULT_FREE_GRACE, DEFAULT_HISTORY_PARALLELISM};

/// Where a setting's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// The config file.
    File,
    /// Nothing set it.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(variable) => write!(f, "environment {variable}"),
            Source::File => f.write_str("config file"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A setting's value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Resolved<T> {
    fn new(value: T, source: Source) -> Resolved<T> {
        Resolved { value, source }
    }
}

/// Whether `--flag` (or `--flag=…`) is on the command line.
fn flag_given(flag: &str) -> bool {
    std::env::args_os().skip(1).any(|arg| {
        let arg = arg.as_encoded_bytes();
        arg == flag.as_bytes()
            || (arg.starts_with(flag.as_bytes()) && arg.get(flag.len()) == Some(&b'='))
    })
}

/// Where a value clap handed over came from: the flag if it is on the command line,
/// else the environment variable.
fn flag_or_env(flag: &'static str, variable: &'static str) -> Source {
    if flag_given(flag) {
        Source::Flag(flag)
    } else {
        Source::Env(variable)
    }
}

/// The first of: clap's value (flag or environment), the config file's, the default.
fn pick<T>(
    cli: Option<T>,
    flag: &'static str,
    variable: &'static str,
    file: Option<T>,
    default: T,
) -> Resolved<T> {
    match (cli, file) {
        (Some(value), _) => Resolved::new(value, flag_or_env(flag, variable)),
        (None, Some(value)) => Resolved::new(value, Source::File),
        (None, None) => Resolved::new(default, Source::Default),
    }
}

/// A switch (`--read-only`): on if the flag or a true environment variable says so
/// (clap reads both), else the config file's value, else off.
fn switch(
    cli: bool,
    flag: &'static str,
    variable: &'static str,
    file: Option<bool>,
) -> Resolved<bool> {
    let from_env = std::env::var_os(variable).is_some_and(|v| !v.is_empty());
    if flag_given(flag) {
        Resolved::new(true, Source::Flag(flag))
    } else if from_env {
        Resolved::new(cli, Source::Env(variable))
    } else {
        pick(None, flag, variable, file, false)
    }
}

/// A number from an environment variable that only the config file also sets.
/// A whole number (0 included) from the environment variable, if it is set.
fn env_whole_number(variable: &'static str) -> Result<Option<u64>, CliError> {
    match std::env::var(variable) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| CliError::Usage(format!("{variable}='{text}' is not a whole number"))),
        _ => Ok(None),
    }
}

/// A yes or no from the environment variable, if it is set: true/false, 1/0, yes/no,
/// on/off.
fn env_bool(variable: &'static str) -> Result<Option<bool>, CliError> {
    match std::env::var(variable) {
        Ok(text) if !text.trim().is_empty() => {
            let text = text.trim().to_ascii_lowercase();
            match text.as_str() {
                "1" | "true" | "yes" | "on" => Ok(Some(true)),
                "0" | "false" | "no" | "off" => Ok(Some(false)),
                _ => Err(CliError::Usage(format!(
                    "{variable}='{text}' is not true or false"
                ))),
            }
        }
        _ => Ok(None),
    }
}

fn env_number(variable: &'static str) -> Result<Option<u64>, CliError> {
    match std::env::var(variable) {
        Err(_) => Ok(None),
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "{variable}='{text}' is not a positive whole number"
                ))
            }),
    }
}

/// The mount's settings.
#[derive(Debug, Clone)]
pub struct MountSettings {
    pub read_only: Resolved<bool>,
    pub allow_other: Resolved<bool>,
    pub cache_size_mib: Resolved<u64>,
    pub poll_interval_secs: Resolved<u64>,
    pub write_back_secs: Resolved<u64>,
    pub disk_cache_mib: Resolved<u64>,
}

impl Context {
    /// Where to mount: the argument (or $DCLOUD_MOUNT_POINT), the config file's
    /// `mount_point`, else ~/discord.
    pub(crate) fn mount_point(&self, given: Option<PathBuf>) -> PathBuf {
        self.mount_point_setting(given).value
    }

    fn mount_point_setting(&self, given: Option<PathBuf>) -> Resolved<PathBuf> {
        let source = match std::env::var_os("DCLOUD_MOUNT_POINT") {
            Some(env) if given.as_deref().map(|p| p.as_os_str()) == Some(env.as_os_str()) => {
                Source::Env("DCLOUD_MOUNT_POINT")
            }
            _ => Source::Flag("MOUNTPOINT"),
        };
        match (given, &self.file.mount_point) {
            (Some(path), _) => Resolved::new(path, source),
            (None, Some(path)) => Resolved::new(path.clone(), Source::File),
            (None, None) => Resolved::new(
                crate::config::expand_home("~/discord".as_ref()),
                Source::Default,
            ),
        }
    }

    /// The mount's settings, from `args` (flags and environment), the config file and
    /// the defaults.
    pub(crate) fn mount_settings(&self, args: &MountArgs) -> MountSettings {
        self.merge_mount_settings(
            args.read_only,
            args.allow_other,
            args.cache_size,
            args.poll_interval,
            args.write_back,
            args.disk_cache,
        )
    }

    /// The mount's settings from what clap read (flag or environment), the config file
    /// and the defaults.
    fn merge_mount_settings(
        &self,
        read_only: bool,
        allow_other: bool,
        cache_size_mib: Option<u64>,
        poll_interval_secs: Option<u64>,
        write_back_secs: Option<u64>,
        disk_cache_mib: Option<u64>,
    ) -> MountSettings {
        MountSettings {
            read_only: switch(
                read_only,
                "--read-only",
                "DCLOUD_READ_ONLY",
                self.file.read_only,
            ),
            allow_other: switch(
                allow_other,
                "--allow-other",
                "DCLOUD_ALLOW_OTHER",
                self.file.allow_other,
            ),
            cache_size_mib: pick(
                cache_size_mib,
                "--cache-size",
                "DCLOUD_CACHE_SIZE_MIB",
                self.file.cache_size_mib,
                DEFAULT_CACHE_SIZE_MIB,
            ),
            poll_interval_secs: pick(
                poll_interval_secs,
                "--poll-interval",
                "DCLOUD_POLL_INTERVAL_SECS",
                self.file.poll_interval_secs,
                DEFAULT_POLL_SECS,
            ),
            write_back_secs: pick(
                write_back_secs,
                "--write-back",
                "DCLOUD_WRITE_BACK_SECS",
                self.file.write_back_secs,
                DEFAULT_WRITE_BACK_SECS,
            ),
            disk_cache_mib: pick(
                disk_cache_mib,
                "--disk-cache",
                "DCLOUD_DISK_CACHE_MIB",
                self.file.disk_cache_mib,
                DEFAULT_DISK_CACHE_MIB,
            ),
        }
    }

    /// The spool's bound in MiB, from what clap read (`--spool-max` or
    /// `DCLOUD_SPOOL_MAX_MIB`), the config file, else `None`: sized from the spool's
    /// free space when mounting.
    pub(crate) fn spool_max_mib(&self, cli: Option<u64>) -> Resolved<Option<u64>> {
        pick(
            cli.map(Some),
            "--spool-max",
            "DCLOUD_SPOOL_MAX_MIB",
            self.file.spool_max_mib.map(Some),
            None,
        )
    }

    /// The disk cache's size in MiB for commands other than `mount` (environment,
    /// config file, default).
    pub(crate) fn disk_cache_mib(&self) -> Result<Resolved<u64>, CliError> {
        const VARIABLE: &str = "DCLOUD_DISK_CACHE_MIB";
        let from_env = env_whole_number(VARIABLE)?;
        Ok(match from_env {
            Some(mib) => Resolved::new(mib, Source::Env(VARIABLE)),
            None => match self.file.disk_cache_mib {
                Some(mib) => Resolved::new(mib, Source::File),
                None => Resolved::new(DEFAULT_DISK_CACHE_MIB, Source::Default),
            },
        })
    }

    /// The folder for the index cache, upload journals, spool and mount log.
    pub(crate) fn cache_base(&self) -> Resolved<PathBuf> {
        pick(
            self.global.cache_dir.clone(),
            "--cache-dir",
            "DCLOUD_CACHE_DIR",
            self.file.cache_dir.clone(),
            crate::dirs::cache_dir(),
        )
    }

    /// The per-file limit override in MiB, if any: $DCLOUD_MAX_FILE_SIZE_MIB, then the
    /// config file.
    pub(crate) fn max_file_size_mib(&self) -> Result<Option<Resolved<u64>>, CliError> {
        Ok(match env_number("DCLOUD_MAX_FILE_SIZE_MIB")? {
            Some(mib) => Some(Resolved::new(mib, Source::Env("DCLOUD_MAX_FILE_SIZE_MIB"))),
            None => self
                .file
                .max_file_size_mib
                .map(|mib| Resolved::new(mib, Source::File)),
        })
    }

    /// The bound on one request to Discord, in seconds.
    pub(crate) fn request_timeout_secs(&self) -> Result<Resolved<u64>, CliError> {
        Ok(match env_number("DCLOUD_REQUEST_TIMEOUT_SECS")? {
            Some(secs) => Resolved::new(secs, Source::Env("DCLOUD_REQUEST_TIMEOUT_SECS")),
            None => match self.file.request_timeout_secs {
                Some(secs) => Resolved::new(secs, Source::File),
                None => Resolved::new(DEFAULT_REQUEST_TIMEOUT.as_secs(), Source::Default),
            },
        })
    }

    /// Whether checkpoints are posted and used (see [`crate::volume::checkpoint`]):
    /// $DCLOUD_CHECKPOINTS, then the config file, else on.
    pub(crate) fn checkpoints(&self) -> Result<Resolved<bool>, CliError> {
        const VARIABLE: &str = "DCLOUD_CHECKPOINTS";
        Ok(match (env_bool(VARIABLE)?, self.file.checkpoints) {
            (Some(on), _) => Resolved::new(on, Source::Env(VARIABLE)),
            (None, Some(on)) => Resolved::new(on, Source::File),
            (None, None) => Resolved::new(true, Source::Default),
        })
    }

    /// Records after the newest checkpoint that make the next one due (0: none is
    /// posted from here): $DCLOUD_CHECKPOINT_EVERY, then the config file, else
    /// [`crate::volume::VolumeConfig`]'s default.
    pub(crate) fn checkpoint_every(&self) -> Result<Resolved<u64>, CliError> {
        const VARIABLE: &str = "DCLOUD_CHECKPOINT_EVERY";
        Ok(
            match (env_whole_number(VARIABLE)?, self.file.checkpoint_every) {
                (Some(n), _) => Resolved::new(n, Source::Env(VARIABLE)),
                (None, Some(n)) => Resolved::new(n, Source::File),
                (None, None) => Resolved::new(
                    crate::volume::VolumeConfig::default().checkpoint_every as u64,
                    Source::Default,
                ),
            },
        )
    }

    /// How long unneeded messages stay before they are deleted, in seconds.
    pub(crate) fn free_grace_secs(&self) -> Result<Resolved<u64>, CliError> {
        const VARIABLE: &str = "DCLOUD_FREE_GRACE_SECS";
        let from_env = env_whole_number(VARIABLE)?;
        Ok(match (from_env, self.file.free_grace_secs) {
            (Some(secs), _) => Resolved::new(secs, Source::Env(VARIABLE)),
            (None, Some(secs)) => Resolved::new(secs, Source::File),
            (None, None) => Resolved::new(DEFAULT_FREE_GRACE.as_secs(), Source::Default),
        })
    }

    /// History requests in flight at once when a channel has much to read.
    pub(crate) fn history_parallelism(&self) -> Result<Resolved<u64>, CliError> {
        const VARIABLE: &str = "DCLOUD_HISTORY_PARALLELISM";
        Ok(
            match (env_number(VARIABLE)?, self.file.history_parallelism) {
                (Some(n), _) => Resolved::new(n, Source::Env(VARIABLE)),
                (None, Some(n)) => Resolved::new(n, Source::File),
                (None, None) => Resolved::new(DEFAULT_HISTORY_PARALLELISM as u64, Source::Default),
            },
        )
    }

    /// Which store the settings select, in words.
    pub(crate) fn store_summary(&self) -> String {
        match self.store_choice() {
            Ok(StoreChoice::Local(dir)) => format!("the local folder {}", dir.display()),
            Ok(StoreChoice::Discord(config)) => format!("Discord guild {}", config.guild),
            Err(e) => format!("none ({e})"),
        }
    }

    /// Every setting as `(name, value, source)` rows, for `dcloud-fs config`; the token
    /// is never shown, only whether it is set.
    pub(crate) fn settings_table(&self) -> Result<Vec<(String, String, String)>, CliError> {
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let mut row = |name: &str, value: String, source: Source| {
            rows.push((name.to_string(), value, source.to_string()));
        };
        let unset = || "(not set)".to_string();
        let global = &self.global;

        let token_source = match (&global.token, &self.file.token) {
            (Some(_), _) => Some(flag_or_env("--token", "DCLOUD_TOKEN")),
            (None, Some(_)) => Some(Source::File),
            (None, None) => None,
        };
        match token_source {
            Some(source) => row("token", "******** (set; never shown)".into(), source),
            None => row("token", unset(), Source::Default),
        }
        let guild = pick(
            global.guild,
            "--guild",
            "DCLOUD_GUILD",
            self.file.guild.map(|g| g.0),
            0,
        );
        let shown_guild = if guild.value == 0 {
            unset()
        } else {
            guild.value.to_string()
        };
        row("guild", shown_guild, guild.source);
        let text = |cli: &Option<String>, flag, var, file: &Option<String>, default: &str| {
            pick(cli.clone(), flag, var, file.clone(), default.to_string())
        };
        let category = text(
            &global.category,
            "--category",
            "DCLOUD_CATEGORY",
            &self.file.category,
            "(every channel the bot can use)",
        );
        row("category", category.value, category.source);
        let api = text(
            &global.api,
            "--api",
            "DCLOUD_API",
            &self.file.api,
            "(Discord)",
        );
        row("api", api.value, api.source);
        let local = pick(
            global.local.clone(),
            "--local",
            "DCLOUD_LOCAL",
            self.file.local.clone(),
            crate::dirs::data_dir().join("local"),
        );
        row("local", shown(&local.value), local.source);
        let key_source = if global.key_file.is_some() {
            Source::Flag("--key-file")
        } else if std::env::var_os("DCLOUD_KEY_FILE").is_some() {
            Source::Env("DCLOUD_KEY_FILE")
        } else if self.file.key_file.is_some() {
            Source::File
        } else {
            Source::Default
        };
        let mut key_file = shown(&self.key_path());
        for variable in ["DCLOUD_KEY", "DCLOUD_PASSPHRASE"] {
            if std::env::var_os(variable).is_some_and(|v| !v.is_empty()) {
                key_file = format!("{key_file} (unused: ${variable} is set)");
            }
        }
        row("key_file", key_file, key_source);
        match self.max_file_size_mib()? {
            Some(mib) => row("max_file_size_mib", mib.value.to_string(), mib.source),
            None => row(
                "max_file_size_mib",
                "(the guild's limit)".into(),
                Source::Default,
            ),
        }
        let timeout = self.request_timeout_secs()?;
        row(
            "request_timeout_secs",
            timeout.value.to_string(),
            timeout.source,
        );
        let grace = self.free_grace_secs()?;
        row("free_grace_secs", grace.value.to_string(), grace.source);
        let history = self.history_parallelism()?;
        row(
            "history_parallelism",
            history.value.to_string(),
            history.source,
        );
        let checkpoints = self.checkpoints()?;
        row(
            "checkpoints",
            checkpoints.value.to_string(),
            checkpoints.source,
        );
        let every = self.checkpoint_every()?;
        row("checkpoint_every", every.value.to_string(), every.source);
        let mount_point =
            self.mount_point_setting(std::env::var_os("DCLOUD_MOUNT_POINT").map(PathBuf::from));
        row("mount_point", shown(&mount_point.value), mount_point.source);
        // Outside `mount`, clap hasn't read the mount's variables: read them here.
        let defaults = self.merge_mount_settings(
            env_switch("DCLOUD_READ_ONLY"),
            env_switch("DCLOUD_ALLOW_OTHER"),
            env_number("DCLOUD_CACHE_SIZE_MIB")?,
            env_number("DCLOUD_POLL_INTERVAL_SECS")?,
            env_number("DCLOUD_WRITE_BACK_SECS")?,
            None,
        );
        let (read_only, allow_other) = (defaults.read_only, defaults.allow_other);
        row(
            "cache_size_mib",
            defaults.cache_size_mib.value.to_string(),
            defaults.cache_size_mib.source,
        );
        let disk_cache = self.disk_cache_mib()?;
        row(
            "disk_cache_mib",
            disk_cache.value.to_string(),
            disk_cache.source,
        );
        let cache_dir = self.cache_base();
        row("cache_dir", shown(&cache_dir.value), cache_dir.source);
        row(
            "poll_interval_secs",
            defaults.poll_interval_secs.value.to_string(),
            defaults.poll_interval_secs.source,
        );
        row(
            "write_back_secs",
            defaults.write_back_secs.value.to_string(),
            defaults.write_back_secs.source,
        );
        let spool_max = self.spool_max_mib(env_number("DCLOUD_SPOOL_MAX_MIB")?);
        row(
            "spool_max_mib",
            spool_max.value.map_or_else(
                || "(half the spool disk's free space, 512 to 16384)".into(),
                |mib| mib.to_string(),
            ),
            spool_max.source,
        );
        row("read_only", read_only.value.to_string(), read_only.source);
        row(
            "allow_other",
            allow_other.value.to_string(),
            allow_other.source,
        );
        Ok(rows)
    }
}

/// A switch's environment variable as clap reads it: set and not false.
fn env_switch(variable: &str) -> bool {
    std::env::var(variable).is_ok_and(|text| {
        let text = text.trim();
        !text.is_empty()
            && !["0", "false", "no", "off", "n", "f"]
                .iter()
                .any(|off| text.eq_ignore_ascii_case(off))
    })
}

fn shown(path: &std::path::Path) -> String {
    let text: &OsStr = path.as_os_str();
    text.to_string_lossy().into_owned()
}
