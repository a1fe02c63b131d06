//! `dcloud-fs serve` and `dcloud-fs share`.
//!
//! **serve** builds the filesystem core as `mount --foreground` does (same store,
//! key, caches and write-back; its own spool, `spool/<store>-serve`, so that it and
//! a mount on the same machine never take each other's files) and serves it over
//! HTTP ([`crate::serve`]) until SIGINT or SIGTERM, which upload every file still
//! being written and stop. While it runs, `dcloud-fs status http://ADDR` (or plain
//! `status`, when it is the only daemon) shows its uploads, as for a mount.
//!
//! The password: `serve --set-password` reads one (twice, from the terminal, or one
//! line of stdin) and writes its Argon2id hash into the config file as
//! `serve_password_hash`, replacing an earlier one, keeping the rest of the file as
//! it was, mode 0600.
//!
//! **share** makes, lists and revokes share links ([`crate::serve::shares`]); the
//! links are served by `serve` on this machine.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Args;

use super::mount::MountArgs;
use super::{CliError, Context};
use crate::fs::Fs;
use crate::serve::shares::{self, Shares};
use crate::serve::{App, ServeConfig, auth};
use crate::store::Store;
use crate::store::pace::PacedStore;

#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Serve options")]
pub struct ServeArgs {
    /// Address to listen on (config: `serve_listen`). Default: 127.0.0.1:8080. Any
    /// other than a loopback address needs a password (--set-password).
    #[arg(long, value_name = "ADDR", env = "DCLOUD_SERVE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Refuse every change; the page shows no upload, rename or delete.
    #[arg(long)]
    pub read_only: bool,
    /// The address people reach the server at, for share links, e.g. the https
    /// address of a reverse proxy (config: `serve_base_url`). Default: http://ADDR.
    #[arg(long, value_name = "URL", env = "DCLOUD_SERVE_BASE_URL")]
    pub base_url: Option<String>,
    /// Seconds after an upload ends that its file goes up to the channel (as `mount
    /// --write-back`; config: `write_back_secs`). Default: 2.
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub write_back: Option<u64>,
    /// Where uploads wait for their upload to the channel. Default: spool/<store>-serve
    /// in the cache folder.
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// PEM certificate chain to serve HTTPS with, with --tls-key (config:
    /// `serve_tls_cert`). Default: plain HTTP (put a reverse proxy in front for TLS).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (config: `serve_tls_key`).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Set the password (read from the terminal, or one line of stdin), store its
    /// Argon2id hash in the config file, and exit.
    #[arg(long)]
    pub set_password: bool,
}

#[derive(Debug, Args)]
pub struct ShareArgs {
    /// CHANNEL/PATH of the file to share.
    #[arg(required_unless_present_any = ["list", "revoke"])]
    pub target: Option<String>,
    /// How long the link works: like 30m, 12h, 7d, 4w. Default: until revoked.
    #[arg(long, value_name = "DURATION", value_parser = shares::parse_duration)]
    pub expires: Option<std::time::Duration>,
    /// List the links (id, file, expiry).
    #[arg(long, conflicts_with_all = ["target", "revoke", "expires"])]
    pub list: bool,
    /// End a link: its id (from --list), or the link itself.
    #[arg(long, value_name = "ID", conflicts_with_all = ["target", "expires"])]
    pub revoke: Option<String>,
}

/// The certificate and key to serve TLS with, if any (flags, else the config file).
fn tls_files(context: &Context, args: &ServeArgs) -> Result<Option<(PathBuf, PathBuf)>, CliError> {
    let file = context.config_file();
    let cert = args
        .tls_cert
        .clone()
        .or_else(|| file.serve_tls_cert.clone());
    let key = args.tls_key.clone().or_else(|| file.serve_tls_key.clone());
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((cert, key))),
        (None, None) => Ok(None),
        _ => Err(CliError::Usage(
            "TLS needs both a certificate and its key (serve_tls_cert and serve_tls_key)".into(),
        )),
    }
}

/// The serve settings from the flags, the environment and the config file.
fn serve_config(context: &Context, args: &ServeArgs) -> Result<ServeConfig, CliError> {
    let file = context.config_file();
    let defaults = ServeConfig::default();
    let listen = match (args.listen, &file.serve_listen) {
        (Some(listen), _) => listen,
        (None, Some(text)) => text.parse().map_err(|_| {
            CliError::Usage(format!(
                "serve_listen in the config file: '{text}' is not an address like 127.0.0.1:8080"
            ))
        })?,
        (None, None) => defaults.listen,
    };
    let password_hash = file.serve_password_hash.clone();
    if let Some(hash) = &password_hash {
        auth::check_hash(hash).map_err(|e| CliError::Usage(e.to_string()))?;
    }
    auth::check_listen(listen, password_hash.is_some()).map_err(CliError::Usage)?;
    let base_url = args
        .base_url
        .clone()
        .or_else(|| file.serve_base_url.clone());
    if let Some(url) = &base_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(CliError::Usage(format!(
            "the base URL '{url}' must start with http:// or https://"
        )));
    }
    Ok(ServeConfig {
        listen,
        tls: tls_files(context, args)?.is_some(),
        password_hash,
        base_url,
        read_only: args.read_only,
        ..defaults
    })
}

/// The fs core's settings: those of `mount`, with serve's own spool.
fn mount_args(args: &ServeArgs) -> MountArgs {
    MountArgs {
        mountpoint: None,
        foreground: true,
        read_only: args.read_only,
        allow_other: false,
        cache_size: None,
        disk_cache: None,
        spool_dir: args.spool_dir.clone(),
        spool_max: None,
        uid: None,
        gid: None,
        umask: 0o022,
        poll_interval: None,
        write_back: args.write_back,
        allow_delete_channels: false,
    }
}

/// `dcloud-fs serve`.
pub(crate) async fn serve(context: &Context, args: ServeArgs) -> Result<(), CliError> {
    if args.set_password {
        return set_password(context);
    }
    let config = serve_config(context, &args)?;
    let acceptor = match tls_files(context, &args)? {
        Some((cert, key)) => Some(
            crate::serve::tls::acceptor(&cert, &key).map_err(|e| CliError::Usage(e.to_string()))?,
        ),
        None => None,
    };
    let key = super::mount::require_key(context).await?;
    let paced = Arc::new(PacedStore::new(context.store().await?));
    let store: Arc<dyn Store> = paced.clone();
    let mut fs_args = super::mount::merged(context, mount_args(&args));
    if fs_args.spool_dir.is_none() {
        let spool = context
            .cache_base()
            .value
            .join("spool")
            .join(format!("{}-serve", store.identity()));
        fs_args.spool_dir = Some(spool);
    }
    let fs_config = super::mount::fs_config(context, &fs_args, &store.identity())?;
    let fs = Fs::new(store, Some(key), fs_config)
        .await
        .map_err(|e| CliError::Mount(format!("could not open the store: {e}")))?;
    fs.adopt_spool().await;
    super::mount::finish_spool_later(&fs, "serve");
    let poller = tokio::spawn(super::mount::poll_every(
        Arc::downgrade(&fs),
        std::time::Duration::from_secs(
            fs_args
                .poll_interval
                .unwrap_or(super::mount::DEFAULT_POLL_SECS),
        ),
    ));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| CliError::io(format!("could not listen on {}", config.listen), e))?;
    let address = listener
        .local_addr()
        .map_err(|e| CliError::io("could not read the listening address", e))?;
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let name = format!("{scheme}://{address}");
    let _pid_file = super::pidfile::PidFile::write(Path::new(&name));
    let stopping = Arc::new(AtomicBool::new(false));
    let _status_server = super::status_server::StatusServer::start(
        super::pidfile::socket_path(Path::new(&name)),
        super::status::source(&fs, &paced, Path::new(&name), &stopping),
    );
    let app = App::new(fs.clone(), config);
    eprintln!(
        "dcloud-fs: serving on {name}{} (Ctrl-C to stop)",
        if app.access.required() {
            " with a password"
        } else {
            ""
        }
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async move {
        let _ = stop_rx.await;
    };
    let server = match acceptor {
        Some(acceptor) => tokio::spawn(crate::serve::tls::serve(listener, app, acceptor, stopped)),
        None => tokio::spawn(crate::serve::serve(listener, app, stopped)),
    };
    let mut signals = super::mount::Signals::new()?;
    tokio::select! {
        _ = signals.next() => {}
        result = server => {
            poller.abort();
            fs.shutdown().await;
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(CliError::io("the server failed", e)),
                Err(e) => Err(CliError::Mount(format!("the server stopped: {e}"))),
            };
        }
    }
    eprintln!("dcloud-fs: stopping: uploading the files still being written");
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stop_tx.send(());
    poller.abort();
    tokio::select! {
        _ = fs.shutdown() => {}
        _ = signals.next() => log::warn!(
            "stopping without finishing the uploads; the next serve finishes them"
        ),
    }
    Ok(())
}

/// Reads the new password and writes its hash into the config file.
fn set_password(context: &Context) -> Result<(), CliError> {
    let password = read_new_password()?;
    let hash = auth::hash_password(&password).map_err(|e| CliError::Usage(e.to_string()))?;
    let (path, _) = context.config_path();
    write_config_key(&path, "serve_password_hash", &hash)?;
    eprintln!(
        "dcloud-fs: the password is set (its Argon2id hash is in {}); restart `serve` to use it",
        path.display()
    );
    Ok(())
}

fn read_new_password() -> Result<String, CliError> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("New password for `serve`: ")
            .map_err(|e| CliError::io("could not read the password", e))?;
        let again = rpassword::prompt_password("Again: ")
            .map_err(|e| CliError::io("could not read the password", e))?;
        if first != again {
            return Err(CliError::Usage(
                "the two passwords differ; nothing changed".into(),
            ));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| CliError::io("could not read the password from stdin", e))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.chars().count() < 8 {
        return Err(CliError::Usage(
            "the password must have at least 8 characters; nothing changed".into(),
        ));
    }
    Ok(password)
}

/// Sets `key = "value"` in the TOML file at `path` (made if missing): the line
/// that sets it is replaced, or one is added; the rest stays as it was. Written to
/// a temporary file renamed over the old one, mode 0600.
pub(crate) fn write_config_key(path: &Path, key: &str, value: &str) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| CliError::io(format!("config file {}", path.display()), e);
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let line = format!("{key} = {}", toml_string(value));
    let mut replaced = false;
    let mut lines: Vec<String> = Vec::new();
    for existing in old.lines() {
        let sets_key = existing
            .trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if sets_key {
            if !replaced {
                lines.push(line.clone());
                replaced = true;
            }
        } else {
            lines.push(existing.to_string());
        }
    }
    if !replaced {
        // Top-level keys go before any table, so the key isn't read as the table's.
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with('['))
            .unwrap_or(lines.len());
        lines.insert(at, line);
    }
    let text = lines.join("\n") + "\n";
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let temporary = path.with_extension(format!("toml.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&temporary)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        io(e)
    })
}

/// `value` as a TOML basic string.
fn toml_string(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `dcloud-fs share`.
pub(crate) async fn share(context: &Context, args: ShareArgs) -> Result<(), CliError> {
    let shares = Shares::new(crate::dirs::config_dir());
    let fail = |e: shares::ShareError| CliError::Usage(e.to_string());
    if args.list {
        let list = shares.list().map_err(fail)?;
        if list.is_empty() {
            println!("no share links");
        }
        for share in list {
            let expires = match share.expires {
                Some(at) => format!(
                    "expires {}",
                    crate::units::local_time(at as i64 * 1_000_000_000)
                ),
                None => "never expires".to_string(),
            };
            println!("{}  {}  {expires}", share.id, share.path);
        }
        return Ok(());
    }
    if let Some(id) = args.revoke {
        let share = shares.revoke(&id).map_err(fail)?;
        println!("revoked {} ({})", share.id, share.path);
        return Ok(());
    }
    let target = args.target.unwrap_or_default();
    let (channel, path, _) = super::split_target(&target)?;
    if path.is_empty() {
        return Err(CliError::Usage(
            "give CHANNEL/PATH of a file to share".into(),
        ));
    }
    let store = context.store().await?;
    let volume = context
        .volume(&store, &context.key().await?, &channel)
        .await?;
    volume.file(&path)?;
    let config = serve_config(
        context,
        // Where serve will be reached, as `serve` would take it from the environment.
        &ServeArgs {
            listen: std::env::var("DCLOUD_SERVE_LISTEN")
                .ok()
                .and_then(|text| text.parse().ok()),
            base_url: std::env::var("DCLOUD_SERVE_BASE_URL").ok(),
            ..ServeArgs::default()
        },
    )?;
    let (token, made) = shares
        .create(&format!("{channel}/{path}"), args.expires)
        .map_err(fail)?;
    println!("{}/s/{token}", config.public_base());
    eprintln!(
        "dcloud-fs: share link {} to {channel}/{path} ({}); `dcloud-fs serve` must run for it \
         to work; `dcloud-fs share --revoke {}` ends it",
        made.id,
        match args.expires {
            Some(d) => format!("valid for {} s", d.as_secs()),
            None => "valid until revoked".to_string(),
        },
        made.id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_key_is_replaced_or_added_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        write_config_key(&path, "serve_password_hash", "$argon2id$x").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "serve_password_hash = \"$argon2id$x\"\n"
        );
        std::fs::write(
            &path,
            "# my settings\ntoken = \"abc\"\nserve_password_hash = \"old\"\n",
        )
        .unwrap();
        write_config_key(&path, "serve_password_hash", "new\"q").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "# my settings\ntoken = \"abc\"\nserve_password_hash = \"new\\\"q\"\n"
        );
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["serve_password_hash"].as_str(), Some("new\"q"));
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }
}
