//! The `dcloud-fs` command line: argument parsing (clap) and the commands, each a thin
//! layer over [`crate::volume`] (and `mount`, over [`crate::fs`] and [`crate::fuse`]).
//!
//! Names on the command line are `CHANNEL` or `CHANNEL/PATH`: the first component is
//! the channel (a top-level folder), the rest a path inside it. Commands that move bytes
//! or names (`put`, `get`, `mv`) follow `cp`'s rules for where things land: into a
//! folder if the destination is one (or ends in `/`), else to the destination's name.
//! Every failure is one line on stderr and a non-zero exit; with several sources, the
//! others are still done and the exit code says that something failed.

mod commands;
mod gc;
mod inspect;
mod mount;
pub mod notify;
mod output;
mod pidfile;
mod restore;
mod serve;
mod settings;
mod status;
mod status_server;
mod verify;

pub use mount::MountArgs;
pub use status::StatusArgs;
pub use verify::VerifyArgs;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, ConfigError, ConfigFile};
use crate::crypto::{self, CryptoError, Key};
use crate::store::discord::{DiscordConfig, DiscordStore, Token};
use crate::store::local::LocalStore;
use crate::store::{Limits, Store, StoreError};
use crate::volume::disk_cache::{DiskCache, DiskCacheConfig};
use crate::volume::registry::Volumes;
use crate::volume::{Interrupt, Pins, Volume, VolumeConfig, VolumeError, find_channel};

/// Store files in Discord channels: one folder per channel, files as chunked,
/// AES-256-GCM-encrypted attachments. The key never leaves this machine.
#[derive(Debug, Parser)]
#[command(name = "dcloud-fs", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
///
/// Which store: `--local DIR` (or $DCLOUD_LOCAL) uses a local folder; otherwise a bot
/// token (flag, $DCLOUD_TOKEN or the config file) selects the Discord guild; otherwise
/// the config file's `local`, else the default local store. Flags override the
/// environment, which overrides the config file.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file. Default: $XDG_CONFIG_HOME/dcloud-fs/config.toml (if it exists).
    #[arg(long, global = true, env = "DCLOUD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use the local store in DIR, a folder that behaves like a Discord guild (created
    /// if missing). Default: $XDG_DATA_HOME/dcloud-fs/local.
    #[arg(long, global = true, env = "DCLOUD_LOCAL", value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// The Discord bot's token; selects the Discord store. Prefer $DCLOUD_TOKEN or the
    /// config file: other users can see a command line.
    #[arg(
        long,
        global = true,
        env = "DCLOUD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// The Discord guild (server) id.
    #[arg(long, global = true, env = "DCLOUD_GUILD", value_name = "ID")]
    pub guild: Option<u64>,
    /// Base address of the Discord API, e.g. http://127.0.0.1:PORT for a fake server.
    /// Default: Discord.
    #[arg(long, global = true, env = "DCLOUD_API", value_name = "URL")]
    pub api: Option<String>,
    /// Only channels in this category (id or name) are folders; new ones go there.
    #[arg(long, global = true, env = "DCLOUD_CATEGORY", value_name = "CATEGORY")]
    pub category: Option<String>,
    /// Key file to use. Without it: $DCLOUD_KEY (base64), else a key derived from
    /// $DCLOUD_PASSPHRASE (and $DCLOUD_SALT), else $DCLOUD_KEY_FILE, else
    /// $XDG_CONFIG_HOME/dcloud-fs/key.
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Chunks a download fetches at once, and twice the data messages an upload posts
    /// at once (memory grows with it: about 8 MiB a chunk).
    #[arg(short = 'j', long, global = true, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Keep no index cache (read every channel's whole history each time).
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Folder for the index cache, upload journals, the mount's spool and log. Default:
    /// $XDG_CACHE_HOME/dcloud-fs.
    #[arg(long, global = true, env = "DCLOUD_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new key file (never overwrites one).
    Keygen(KeygenArgs),
    /// Create a channel (top-level folder), or a folder inside one.
    Mkdir {
        /// No error if it exists already.
        #[arg(short, long)]
        parents: bool,
        /// CHANNEL, or CHANNEL/PATH for a folder inside it (parents are implied).
        target: String,
    },
    /// List channels with their file count and total size.
    Channels,
    /// Upload files (and, with -r, folders) into a channel.
    Put(PutArgs),
    /// Download a file or (with -r) a folder.
    Get(GetArgs),
    /// List channels, or the contents of a channel or folder.
    Ls(LsArgs),
    /// Delete files or folders, freeing their messages in the store.
    Rm(RmArgs),
    /// Move or rename a file or folder, also to another channel (nothing is uploaded
    /// again).
    Mv {
        /// CHANNEL/PATH to move.
        source: String,
        /// CHANNEL[/PATH] to move it to (into it, if it is a folder or ends in '/').
        dest: String,
    },
    /// Check the store: one API round trip to Discord, timed.
    Ping,
    /// Show a channel: ids, Discord name and topic, the bot's permissions, files.
    Info {
        /// The channel (folder) name.
        channel: String,
    },
    /// List every attachment in a channel, ours and other users', newest first.
    Attachments {
        /// The channel (folder) name.
        channel: String,
    },
    /// List the guild's members (needs the bot's Server Members intent).
    Members,
    /// Check the set-up: key, token, guild, the bot's permissions, limits, FUSE.
    Doctor,
    /// Check that channels are whole: every chunk and record of every file is still in
    /// the store (with --read-data, that the chunks open too). Changes nothing; exits
    /// non-zero if something is wrong.
    Verify(VerifyArgs),
    /// Delete what no file needs any more: superseded records, tombstones no message
    /// needs, data no file uses (older than a day), older checkpoints. Reports the
    /// messages and bytes freed.
    Gc(gc::GcArgs),
    /// Mount the channels as a file system (one folder per channel).
    Mount(MountArgs),
    /// Serve the channels over HTTP: a web page (browse, upload, download, rename,
    /// delete, share), WebDAV at /dav/, and share links.
    Serve(serve::ServeArgs),
    /// Make a link that lets someone without an account download one file through
    /// `serve`; or list or revoke links.
    Share(serve::ShareArgs),
    /// Show what a running mount is doing: the files waiting for their upload and being
    /// uploaded, failures, the store's pace, the last refresh.
    Status(StatusArgs),
    /// Unmount a mount made by `dcloud-fs mount`, and wait until the files closed
    /// before are uploaded.
    Umount {
        /// The folder it is mounted on. Default: the config file's `mount_point`, else
        /// ~/discord.
        #[arg(env = "DCLOUD_MOUNT_POINT")]
        mountpoint: Option<PathBuf>,
        /// Return once unmounted, without waiting for the uploads (the daemon goes on
        /// with them; what it can't finish, the next mount does).
        #[arg(long)]
        lazy: bool,
    },
    /// Show the settings in effect and where each comes from (flag, environment, config
    /// file, default); the token is never shown.
    Config,
    /// Print a shell completion script (e.g. `dcloud-fs completions bash >
    /// ~/.local/share/bash-completion/completions/dcloud-fs`).
    Completions {
        /// The shell.
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
    /// Print the manual page (roff), e.g. `dcloud-fs man | man -l -`.
    Man,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Derive the key from a passphrase (Argon2id) instead of random bytes, salted with
    /// the configured store's own salt: the same passphrase and salt give the same key
    /// for that store on any machine. Read from the terminal, or one line of stdin.
    #[arg(long)]
    pub passphrase: bool,
    /// Salt for --passphrase (e.g. your e-mail address), so that your key differs from
    /// anyone else's with the same passphrase. Keep it: it is needed again.
    #[arg(long, requires = "passphrase", default_value = "")]
    pub salt: String,
    /// With --passphrase: derive the key as dcloud-fs did before per-store salts (one
    /// salt for every store), to recreate a key file made then.
    #[arg(long, requires = "passphrase")]
    pub legacy_kdf: bool,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Copy folders and everything in them.
    #[arg(short, long)]
    pub recursive: bool,
    /// Store unencrypted (plaintext mode): anyone in the channel can read the file.
    #[arg(long)]
    pub plain: bool,
    /// Follow symbolic links in folders (copy what they point to) instead of storing
    /// them as links.
    #[arg(short = 'L', long)]
    pub dereference: bool,
    /// Local files or folders, then CHANNEL[/PATH] to put them in.
    #[arg(required = true, num_args = 2.., value_name = "SRC... DEST")]
    pub paths: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Copy a folder and everything in it.
    #[arg(short, long)]
    pub recursive: bool,
    /// Give each file and folder the owner it has in the channel (the default as root;
    /// others can't give files away).
    #[arg(long)]
    pub owners: bool,
    /// Give each file and folder its extended attributes.
    #[arg(long)]
    pub xattrs: bool,
    /// CHANNEL/PATH to download.
    pub source: String,
    /// Local file or folder to write to; '-' writes a file to stdout.
    pub dest: OsString,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Long listing: mode, encryption, size, modification time.
    #[arg(short, long)]
    pub long: bool,
    /// CHANNEL or CHANNEL/PATH; without it, the channels.
    pub target: Option<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove folders and everything in them.
    #[arg(short, long)]
    pub recursive: bool,
    /// CHANNEL/PATH to remove (CHANNEL alone with -r empties the channel).
    #[arg(required = true)]
    pub targets: Vec<String>,
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    /// Mounting or unmounting failed.
    #[error("{0}")]
    Mount(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Small files stored together in one message, which failed.
    #[error("{} file(s) not stored ({}): {source}", names.len(), names.join(", "))]
    Batch {
        names: Vec<String>,
        #[source]
        source: VolumeError,
    },
    /// A check found problems; each was reported already.
    #[error("{0}")]
    Problems(String),
    /// Some of several items failed; each was reported already.
    #[error("{0} of the items failed (see above)")]
    Partial(usize),
}

impl CliError {
    /// Whether the command stopped because it was asked to (Ctrl-C).
    pub fn is_interruption(&self) -> bool {
        matches!(
            self,
            CliError::Volume(VolumeError::Interrupted)
                | CliError::Batch {
                    source: VolumeError::Interrupted,
                    ..
                }
        )
    }

    fn io(context: impl Into<String>, source: std::io::Error) -> CliError {
        CliError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Completions { shell } => return print_completions(shell),
        Command::Man => return print_man_page(),
        _ => {}
    }
    let interrupt = Interrupt::default();
    // A mount handles its signals itself: they stop it cleanly, not its transfers;
    // `status --watch` stops at Ctrl-C (and `status` moves nothing).
    if !matches!(
        cli.command,
        Command::Mount(_) | Command::Serve(_) | Command::Status(_)
    ) {
        tokio::spawn(stop_on_signals(interrupt.clone()));
    }
    let context = Context::new(cli.global, interrupt)?;
    let result = run_command(&context, cli.command).await;
    context.checkpoint_if_due().await;
    result
}

async fn run_command(context: &Context, command: Command) -> Result<(), CliError> {
    match command {
        Command::Keygen(args) => commands::keygen(context, args).await,
        Command::Mkdir { parents, target } => commands::mkdir(context, &target, parents).await,
        Command::Channels => commands::channels(context).await,
        Command::Put(args) => commands::put(context, args).await,
        Command::Get(args) => commands::get(context, args).await,
        Command::Ls(args) => commands::ls(context, args).await,
        Command::Rm(args) => commands::rm(context, args).await,
        Command::Mv { source, dest } => commands::mv(context, &source, &dest).await,
        Command::Ping => inspect::ping(context).await,
        Command::Info { channel } => inspect::info(context, &channel).await,
        Command::Attachments { channel } => inspect::attachments(context, &channel).await,
        Command::Members => inspect::members(context).await,
        Command::Doctor => inspect::doctor(context).await,
        Command::Verify(args) => verify::verify(context, args).await,
        Command::Gc(args) => gc::gc(context, args).await,
        Command::Mount(args) => mount::mount(context, args).await,
        Command::Serve(args) => serve::serve(context, args).await,
        Command::Share(args) => serve::share(context, args).await,
        Command::Status(args) => status::status(context, args).await,
        Command::Umount { mountpoint, lazy } => {
            mount::umount(&context.mount_point(mountpoint), lazy)
        }
        Command::Config => commands::show_config(context),
        Command::Completions { .. } | Command::Man => unreachable!("answered above"),
    }
}

/// Writes the completion script for `shell` (bash, zsh or fish) to stdout.
fn print_completions(shell: &str) -> Result<(), CliError> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let shell = match shell {
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        "fish" => Shell::Fish,
        other => return Err(CliError::Usage(format!("no completions for '{other}'"))),
    };
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "dcloud-fs", &mut std::io::stdout());
    Ok(())
}

/// Writes the manual page, made from the command-line definitions, to stdout.
fn print_man_page() -> Result<(), CliError> {
    use clap::CommandFactory;
    let page = clap_mangen::Man::new(Cli::command());
    match page.render(&mut std::io::stdout()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::io("writing the manual page", e))
        }
        _ => Ok(()), // a reader that stopped early (`| head`) is no failure
    }
}

/// The first SIGINT or SIGTERM asks running transfers to stop and clean up (a put
/// deletes what it uploaded, a get its partial file); a second one ends the process at
/// once.
async fn stop_on_signals(interrupt: Interrupt) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        log::warn!("could not listen for Ctrl-C; an interrupted transfer may leave debris");
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    interrupt.trigger();
    eprintln!("dcloud-fs: stopping; cleaning up what was half done (again to quit at once)");
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    std::process::exit(EXIT_INTERRUPTED);
}

/// Exit status after an interruption (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

/// What commands share: the global options, and the store and key, opened on demand.
pub(crate) struct Context {
    global: GlobalArgs,
    /// The config file's settings (empty if there is none).
    file: ConfigFile,
    /// Triggered by Ctrl-C or SIGTERM: transfers stop and clean up.
    interrupt: Interrupt,
    store: tokio::sync::OnceCell<OpenStore>,
    /// The channels opened so far, shared by the command's volumes, which reach each
    /// other through it. Dropped with the context, which saves their caches.
    volumes: tokio::sync::OnceCell<Arc<Volumes>>,
    /// What must not be deleted for now, shared by the command's volumes.
    pins: Pins,
    /// The key, once loaded.
    key: tokio::sync::OnceCell<Option<Key>>,
    /// The disk cache's size in MiB given by `mount --disk-cache`, over the settings.
    disk_cache_flag: std::sync::OnceLock<u64>,
    /// The disk cache, once opened (`None`: none is kept).
    disk_cache: std::sync::OnceLock<Option<Arc<DiskCache>>>,
}

/// The store the settings select.
#[derive(Debug, Clone)]
pub(crate) enum StoreChoice {
    Local(PathBuf),
    Discord(DiscordConfig),
}

/// An opened store, and the Discord store itself when it is one (for the commands
/// only Discord has).
#[derive(Clone)]
pub(crate) struct OpenStore {
    store: Arc<dyn Store>,
    discord: Option<Arc<DiscordStore>>,
}

impl Context {
    fn new(global: GlobalArgs, interrupt: Interrupt) -> Result<Context, CliError> {
        let file = match &global.config {
            Some(path) => config::load(path, true)?,
            None => config::load(&config::default_path(), false)?,
        };
        Ok(Context {
            global,
            file,
            interrupt,
            store: tokio::sync::OnceCell::new(),
            volumes: tokio::sync::OnceCell::new(),
            pins: Pins::default(),
            key: tokio::sync::OnceCell::new(),
            disk_cache_flag: std::sync::OnceLock::new(),
            disk_cache: std::sync::OnceLock::new(),
        })
    }

    /// The config file's settings.
    pub(crate) fn config_file(&self) -> &ConfigFile {
        &self.file
    }

    /// The config file in use, and whether it was named (flag or $DCLOUD_CONFIG).
    fn config_path(&self) -> (PathBuf, bool) {
        match &self.global.config {
            Some(path) => (path.clone(), true),
            None => (config::default_path(), false),
        }
    }

    /// Which store the flags, environment and config file select.
    fn store_choice(&self) -> Result<StoreChoice, CliError> {
        if let Some(dir) = &self.global.local {
            return Ok(StoreChoice::Local(dir.clone()));
        }
        let token = self
            .global
            .token
            .clone()
            .or_else(|| self.file.token.clone());
        let Some(token) = token.filter(|t| !t.trim().is_empty()) else {
            let dir = self
                .file
                .local
                .clone()
                .unwrap_or_else(|| crate::dirs::data_dir().join("local"));
            return Ok(StoreChoice::Local(dir));
        };
        let guild = self
            .global
            .guild
            .or(self.file.guild.map(|g| g.0))
            .ok_or_else(|| {
                CliError::Usage(
                    "a bot token is set but no guild: set DCLOUD_GUILD or `guild` in the config \
                     file (in Discord: right-click the server → Copy Server ID)"
                        .into(),
                )
            })?;
        let mut discord = DiscordConfig::new(Token::new(&token), guild);
        discord.api = self.global.api.clone().or_else(|| self.file.api.clone());
        discord.category = self
            .global
            .category
            .clone()
            .or_else(|| self.file.category.clone());
        discord.max_file_size = self
            .max_file_size_mib()?
            .map(|mib| mib.value.saturating_mul(1024 * 1024));
        discord.request_timeout =
            std::time::Duration::from_secs(self.request_timeout_secs()?.value.max(1));
        Ok(StoreChoice::Discord(discord))
    }

    /// The store, opened once.
    async fn open_store(&self) -> Result<&OpenStore, CliError> {
        self.store
            .get_or_try_init(|| async {
                let choice = self.store_choice()?;
                let opened = match &choice {
                    StoreChoice::Local(root) => OpenStore {
                        store: Arc::new(LocalStore::open_or_create(root, Limits::default())?),
                        discord: None,
                    },
                    StoreChoice::Discord(config) => {
                        let discord = Arc::new(DiscordStore::new(config.clone())?);
                        OpenStore {
                            store: discord.clone(),
                            discord: Some(discord),
                        }
                    }
                };
                Ok::<_, CliError>(opened)
            })
            .await
    }

    /// The store.
    async fn store(&self) -> Result<Arc<dyn Store>, CliError> {
        Ok(self.open_store().await?.store.clone())
    }

    /// Where keygen writes, and where the key is read from when no other source is set.
    fn key_path(&self) -> PathBuf {
        self.global
            .key_file
            .clone()
            .or_else(|| std::env::var_os("DCLOUD_KEY_FILE").map(PathBuf::from))
            .or_else(|| self.file.key_file.clone())
            .unwrap_or_else(crypto::default_key_path)
    }

    /// The key, if one is configured: --key-file, then $DCLOUD_KEY, $DCLOUD_PASSPHRASE
    /// (salted with the store's salt, so it opens the store first), $DCLOUD_KEY_FILE,
    /// and the default key file if it exists. Loaded once per command.
    async fn key(&self) -> Result<Option<Key>, CliError> {
        self.key.get_or_try_init(|| self.load_key()).await.cloned()
    }

    async fn load_key(&self) -> Result<Option<Key>, CliError> {
        if let Some(path) = &self.global.key_file {
            return Ok(Some(crypto::load_key_file(path)?));
        }
        if let Some(text) = std::env::var("DCLOUD_KEY").ok().filter(|t| !t.is_empty()) {
            return Ok(Some(Key::from_base64(&text, "DCLOUD_KEY")?));
        }
        if let Some(passphrase) = std::env::var("DCLOUD_PASSPHRASE")
            .ok()
            .filter(|p| !p.is_empty())
        {
            let salt = std::env::var("DCLOUD_SALT").unwrap_or_default();
            let store_salt = self.store().await?.key_salt().await?;
            return Ok(Some(Key::from_passphrase(&passphrase, &salt, &store_salt)?));
        }
        let explicit =
            std::env::var_os("DCLOUD_KEY_FILE").is_some() || self.file.key_file.is_some();
        match crypto::load_key_file(&self.key_path()) {
            Ok(key) => Ok(Some(key)),
            Err(CryptoError::KeyFileMissing { .. }) if !explicit => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Posts a checkpoint of every channel the command changed that is due one (see
    /// [`crate::volume::checkpoint`]); a command that only read posts nothing.
    async fn checkpoint_if_due(&self) {
        if let Some(volumes) = self.volumes.get() {
            for volume in volumes.opened().into_iter().filter(|v| v.wrote()) {
                volume.checkpoint_if_due(false).await;
            }
        }
    }

    fn volume_config(&self) -> Result<VolumeConfig, CliError> {
        let jobs = usize::from(self.global.jobs);
        let defaults = VolumeConfig::default();
        // Without checkpoints, nothing posts one (but `gc`, which needs its own: see
        // `crate::volume::gc`) and a machine without a cache replays the whole history.
        let checkpoints = self.checkpoints()?.value;
        Ok(VolumeConfig {
            upload_parallel_messages: jobs.div_ceil(2),
            download_parallel_chunks: jobs,
            history_parallelism: usize::try_from(self.history_parallelism()?.value)
                .unwrap_or(usize::MAX),
            cache_dir: if self.global.no_cache {
                None
            } else {
                Some(self.cache_base().value.join("index"))
            },
            interrupt: self.interrupt.clone(),
            pins: self.pins.clone(),
            free_grace: std::time::Duration::from_secs(self.free_grace_secs()?.value),
            disk_cache: self.disk_cache()?,
            checkpoint_every: if checkpoints {
                usize::try_from(self.checkpoint_every()?.value).unwrap_or(usize::MAX)
            } else {
                0
            },
            start_from_checkpoint: checkpoints,
            ..defaults
        })
    }

    /// The disk cache of fetched chunks, opened once, for a store that isn't on local
    /// disk already (a local store's chunks are a disk read away as they are), and
    /// only once the store is open. A cache folder that can't be used is logged and
    /// worked without: the cache saves downloads, it is never needed to read.
    fn disk_cache(&self) -> Result<Option<Arc<DiskCache>>, CliError> {
        let mib = match self.disk_cache_flag.get() {
            Some(&mib) => mib,
            None => self.disk_cache_mib()?.value,
        };
        let Some(store) = self.store.get().filter(|s| s.discord.is_some()) else {
            return Ok(None);
        };
        let dir = self
            .cache_base()
            .value
            .join("blocks")
            .join(store.store.identity());
        Ok(self
            .disk_cache
            .get_or_init(|| {
                if mib == 0 || self.global.no_cache {
                    return None;
                }
                let config = DiskCacheConfig {
                    dir: dir.clone(),
                    capacity_bytes: mib.saturating_mul(1024 * 1024),
                };
                match DiskCache::open(config) {
                    Ok(cache) => Some(Arc::new(cache)),
                    Err(e) => {
                        log::warn!(
                            "not keeping fetched chunks on disk: {} can't be used ({e})",
                            dir.display()
                        );
                        None
                    }
                }
            })
            .clone())
    }

    /// Sets the disk cache's size from `mount --disk-cache`, before anything opens it.
    pub(crate) fn set_disk_cache_mib(&self, mib: u64) {
        let _ = self.disk_cache_flag.set(mib);
    }

    /// Opens the channel named `name` with the configured key (once per command: the
    /// same volume the next time).
    async fn volume(
        &self,
        store: &Arc<dyn Store>,
        key: &Option<Key>,
        name: &str,
    ) -> Result<Arc<Volume>, CliError> {
        let channel = find_channel(store.as_ref(), name).await?;
        let config = self.volume_config()?;
        let volumes = self
            .volumes
            .get_or_init(|| async { Volumes::new(store.clone(), key.clone(), config) })
            .await;
        Ok(volumes.open(channel).await?)
    }
}

/// Splits `CHANNEL[/PATH]` into the channel and the path inside it ("" for the channel
/// itself). Trailing slashes are dropped; the returned flag says whether there was one.
pub fn split_target(target: &str) -> Result<(String, String, bool), CliError> {
    let trailing_slash = target.ends_with('/');
    let trimmed = target.trim_end_matches('/');
    let (channel, path) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    if channel.is_empty() {
        return Err(CliError::Usage(format!(
            "'{target}' names no channel; write CHANNEL or CHANNEL/PATH"
        )));
    }
    if !path.is_empty() {
        crate::format::validate_path(path).map_err(VolumeError::from)?;
    }
    Ok((channel.to_string(), path.to_string(), trailing_slash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_channel_and_path() {
        assert_eq!(
            split_target("docs").unwrap(),
            ("docs".into(), "".into(), false)
        );
        assert_eq!(
            split_target("docs/").unwrap(),
            ("docs".into(), "".into(), true)
        );
        assert_eq!(
            split_target("docs/a/b.txt").unwrap(),
            ("docs".into(), "a/b.txt".into(), false)
        );
        assert_eq!(
            split_target("docs/a/").unwrap(),
            ("docs".into(), "a".into(), true)
        );
        assert!(split_target("/x").is_err());
        assert!(split_target("docs/a/../b").is_err());
    }

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
