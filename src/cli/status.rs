//! `dcloud-fs status`: what a running mount is doing, asked over its status socket
//! ([`super::status_server`]).
//!
//! The mount answers with one JSON document, [`MountStatus`]: the files waiting for
//! their upload and those being uploaded, with sizes, progress and failures (the fs
//! core's snapshot, [`crate::fs::status`]), the store's pace over the last minute
//! ([`crate::store::pace`]) and the last refresh of the channels. `--json` prints it as
//! it is; otherwise a summary line and a line per file. `--watch` asks again every
//! second and redraws (clearing a terminal; elsewhere one report after another, and
//! with `--json` one document per line), until Ctrl-C, or until the mount stops.
//!
//! Which mount, without a MOUNTPOINT: the one running (the daemons' pid files,
//! [`super::pidfile::running`]); if several run, the one `mount_point` (the config
//! file, or `$DCLOUD_MOUNT_POINT`) names; if none is named, the error lists them.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::{Deserialize, Serialize};

use super::output::human_size;
use super::status_server::{self, ReadError};
use super::{CliError, Context};
use crate::fs::Fs;
use crate::fs::status::{FileState, FsStatus};
use crate::store::pace::{PaceSnapshot, PacedStore};

/// The version of [`MountStatus`]'s layout.
pub const STATUS_FORMAT: u32 = 1;
/// How many files the human report lists (`--json` lists up to
/// [`crate::fs::status::MAX_FILES_LISTED`]).
const FILES_SHOWN: usize = 20;
/// How often `--watch` asks.
const WATCH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The mount's folder. Default: the mount running, or (if several run) the config
    /// file's `mount_point`.
    pub mountpoint: Option<PathBuf>,
    /// Ask again every second and redraw, until Ctrl-C or until the mount stops.
    #[arg(short, long)]
    pub watch: bool,
    /// Print the status as JSON (with --watch: one document per line).
    #[arg(long)]
    pub json: bool,
}

/// What a running mount says about itself (the document its socket sends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountStatus {
    /// [`STATUS_FORMAT`].
    pub format: u32,
    pub mount_point: String,
    /// The daemon's process id.
    pub pid: u32,
    /// `mounted`, or `stopping` (unmounted, uploading what was closed before).
    pub state: String,
    /// When the status was made (Unix milliseconds).
    pub unix_ms: u64,
    #[serde(flatten)]
    pub fs: FsStatus,
    /// The store's pace over the last minute.
    pub pace: PaceSnapshot,
}

/// The message when no mount runs.
const NO_MOUNT: &str = "no dcloud-fs mount is running (start one with `dcloud-fs mount`)";

/// `dcloud-fs status`.
pub(crate) async fn status(context: &Context, args: StatusArgs) -> Result<(), CliError> {
    let mountpoint = which_mount(context, args.mountpoint.as_deref())?;
    let socket = super::pidfile::socket_path(&mountpoint);
    let first = match ask(&socket) {
        Ok(status) => status,
        Err(ReadError::NotRunning) => return Err(not_running_at(&mountpoint)),
        Err(ReadError::Failed(why)) => return Err(CliError::Mount(why)),
    };
    if !args.watch {
        let mut out = std::io::stdout().lock();
        let text = if args.json {
            serde_json::to_string_pretty(&first).unwrap_or_default() + "\n"
        } else {
            render(&first)
        };
        return write_out(&mut out, &text);
    }
    watch(&socket, &mountpoint, first, args.json).await
}

/// Asks the mount at `socket`.
fn ask(socket: &Path) -> Result<MountStatus, ReadError> {
    let bytes = status_server::read(socket)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ReadError::Failed(format!("the mount sent a status this can't read: {e}")))
}

/// Redraws every second until Ctrl-C (or SIGTERM), or until the mount stops.
async fn watch(
    socket: &Path,
    mountpoint: &Path,
    first: MountStatus,
    json: bool,
) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind| signal(kind).map_err(|e| CliError::io("could not listen for Ctrl-C", e));
    let (mut interrupt, mut terminate) = (
        listen(SignalKind::interrupt())?,
        listen(SignalKind::terminate())?,
    );
    let terminal = std::io::stdout().is_terminal();
    let mut status = first;
    loop {
        let text = if json {
            serde_json::to_string(&status).unwrap_or_default() + "\n"
        } else if terminal {
            // Home, clear the screen, then the report.
            format!("\x1b[H\x1b[2J{}", render(&status))
        } else {
            render(&status) + "\n"
        };
        write_out(&mut std::io::stdout().lock(), &text)?;
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        }
        let socket = socket.to_path_buf();
        let asked = tokio::task::spawn_blocking(move || ask(&socket))
            .await
            .unwrap_or_else(|e| Err(ReadError::Failed(e.to_string())));
        status = match asked {
            Ok(status) => status,
            Err(ReadError::NotRunning) => {
                let line = format!("{}: the mount has stopped\n", mountpoint.display());
                return write_out(&mut std::io::stdout().lock(), &line);
            }
            Err(ReadError::Failed(why)) => return Err(CliError::Mount(why)),
        };
    }
}

/// Writes `text`; a reader that went away (`| head`) is no failure.
fn write_out(out: &mut impl Write, text: &str) -> Result<(), CliError> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::io("writing the status", e))
        }
        _ => Ok(()),
    }
}

fn not_running_at(mountpoint: &Path) -> CliError {
    let others: Vec<String> = super::pidfile::running()
        .into_iter()
        .filter(|(at, _)| at != mountpoint)
        .map(|(at, _)| at.display().to_string())
        .collect();
    if others.is_empty() {
        CliError::Mount(format!(
            "no dcloud-fs mount is running at {} (start one with `dcloud-fs mount`)",
            mountpoint.display()
        ))
    } else {
        CliError::Mount(format!(
            "no dcloud-fs mount is running at {}; running: {}",
            mountpoint.display(),
            others.join(", ")
        ))
    }
}

/// A path as the pid files name mount points: absolute and canonical (as given, made
/// absolute, if it can't be resolved: a mount whose process died).
fn canonical(path: &Path) -> PathBuf {
    // A `serve` is named by its address (`http://127.0.0.1:8080`).
    if path
        .to_str()
        .is_some_and(|p| p.starts_with("http://") || p.starts_with("https://"))
    {
        return path.to_path_buf();
    }
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// The mount to ask (see the module docs).
fn which_mount(context: &Context, given: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(path) = given {
        return Ok(canonical(path));
    }
    let running = super::pidfile::running();
    match running.as_slice() {
        [] => return Err(CliError::Mount(NO_MOUNT.into())),
        [(only, _)] => return Ok(only.clone()),
        _ => {}
    }
    let configured = std::env::var_os("DCLOUD_MOUNT_POINT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| context.file.mount_point.clone());
    match configured {
        Some(path) => Ok(canonical(&path)),
        None => {
            let listed: Vec<String> = running
                .iter()
                .map(|(at, pid)| format!("{} (pid {pid})", at.display()))
                .collect();
            Err(CliError::Usage(format!(
                "{} dcloud-fs mounts are running: {}; say which (`dcloud-fs status \
                 MOUNTPOINT`), or set `mount_point` in the config file",
                running.len(),
                listed.join(", ")
            )))
        }
    }
}

/// `1 file`, `3 files`.
fn files(n: usize) -> String {
    if n == 1 {
        "1 file".into()
    } else {
        format!("{n} files")
    }
}

/// The summary line: `/mnt: 3 files waiting (1.2 MiB), 1 uploading, 0 failing; last
/// refresh 4 s ago; pace 0.8 msg/s, 0 429s in the last minute`.
pub fn summary_line(status: &MountStatus) -> String {
    let totals = &status.fs.totals;
    let mut line = status.mount_point.clone();
    if status.state != "mounted" {
        line.push_str(&format!(" ({})", status.state));
    }
    line.push_str(": ");
    if totals.files == 0 && totals.folders == 0 {
        // Files still being written aren't uploaded, but none is waiting.
        line.push_str(if totals.writing == 0 {
            "all uploaded"
        } else {
            "nothing queued"
        });
    } else if totals.files > 0 {
        line.push_str(&format!(
            "{} waiting ({}), {} uploading",
            files(totals.waiting),
            human_size(totals.waiting_bytes),
            totals.uploading,
        ));
        if totals.uploading > 0 {
            line.push_str(&format!(
                " ({} of {})",
                human_size(totals.uploaded_bytes),
                human_size(totals.uploading_bytes)
            ));
        }
        line.push_str(&format!(", {} failing", totals.failing));
    }
    if totals.folders > 0 {
        line.push_str(&format!(
            "{}{} folder{} waiting",
            if totals.files > 0 { ", " } else { "" },
            totals.folders,
            if totals.folders == 1 { "" } else { "s" }
        ));
    }
    if totals.writing > 0 {
        line.push_str(&format!(
            ", {} being written ({} so far)",
            files(totals.writing),
            human_size(totals.writing_bytes)
        ));
    }
    line.push_str("; ");
    line.push_str(&match &status.fs.last_refresh {
        None => "no refresh yet".to_string(),
        Some(refresh) => match (&refresh.error, refresh.ago_secs) {
            (None, Some(ago)) => format!("last refresh {} ago", seconds(ago)),
            (Some(error), Some(ago)) => {
                format!(
                    "last refresh {} ago, the latest failed: {error}",
                    seconds(ago)
                )
            }
            (Some(error), None) => format!("no refresh yet ({error})"),
            (None, None) => "no refresh yet".to_string(),
        },
    });
    let pace = &status.pace;
    line.push_str(&format!(
        "; pace {:.1} msg/s, {} 429s in the last {}",
        pace.messages_per_sec,
        pace.http_429s,
        if pace.window_secs == 60 {
            "minute".to_string()
        } else {
            format!("{} s", pace.window_secs)
        }
    ));
    line
}

/// `4 s`, `2 min 5 s`.
fn seconds(secs: f64) -> String {
    let whole = secs.max(0.0).round() as u64;
    if whole < 120 {
        format!("{whole} s")
    } else if whole < 7200 {
        format!("{} min {} s", whole / 60, whole % 60)
    } else {
        format!("{} h {} min", whole / 3600, whole % 3600 / 60)
    }
}

/// The human report: the summary line, then a line per file.
pub fn render(status: &MountStatus) -> String {
    let mut text = summary_line(status);
    text.push('\n');
    let shown = &status.fs.files[..status.fs.files.len().min(FILES_SHOWN)];
    let width = shown
        .iter()
        .map(|f| f.channel.chars().count() + 1 + f.path.chars().count())
        .max()
        .unwrap_or(0)
        .min(60);
    for file in shown {
        let name = format!("{}/{}", file.channel, file.path);
        let detail = match file.state {
            FileState::Uploading => {
                let done = file.uploaded_bytes.unwrap_or(0);
                let mut detail = format!("{} done", human_size(done));
                if let Some(percent) = done.saturating_mul(100).checked_div(file.size) {
                    detail.push_str(&format!(" ({percent}%)"));
                }
                if file.failures > 0 {
                    detail.push_str(&format!(", try {}", file.failures + 1));
                }
                detail
            }
            FileState::Failed => format!(
                "{} failed, retry in {}: {}",
                if file.failures == 1 {
                    "once".to_string()
                } else {
                    format!("{} times", file.failures)
                },
                seconds(file.starts_in_secs.unwrap_or(0.0)),
                file.last_error.as_deref().unwrap_or("?")
            ),
            FileState::Waiting => {
                format!("starts in {}", seconds(file.starts_in_secs.unwrap_or(0.0)))
            }
            FileState::Writing => "open, still being written".to_string(),
        };
        text.push_str(&format!(
            "  {:<9} {name:<width$}  {:>10}  {detail}\n",
            file.state.as_str(),
            human_size(file.size),
        ));
    }
    let listed = status.fs.totals.files + status.fs.totals.writing;
    let more = listed.saturating_sub(shown.len());
    if more > 0 {
        text.push_str(&format!(
            "  ... and {} more (`dcloud-fs status --json` lists up to {})\n",
            files(more),
            crate::fs::status::MAX_FILES_LISTED
        ));
    }
    text
}

/// What the mount's status socket sends: the status of `fs` mounted at `mountpoint`,
/// as JSON (nothing once the filesystem is gone).
pub(crate) fn source(
    fs: &Arc<Fs>,
    store: &Arc<PacedStore>,
    mountpoint: &Path,
    stopping: &Arc<AtomicBool>,
) -> status_server::Source {
    let fs = Arc::downgrade(fs);
    let store = store.clone();
    let stopping = stopping.clone();
    let mount_point = mountpoint.display().to_string();
    Arc::new(move || {
        let Some(fs) = fs.upgrade() else {
            return Vec::new();
        };
        let status = MountStatus {
            format: STATUS_FORMAT,
            mount_point: mount_point.clone(),
            pid: std::process::id(),
            state: if stopping.load(Ordering::Relaxed) {
                "stopping"
            } else {
                "mounted"
            }
            .into(),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            fs: fs.status(),
            pace: store.pace(),
        };
        serde_json::to_vec(&status).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::status::{FileStatus, Refresh, Totals};

    fn sample() -> MountStatus {
        let file = |path: &str, size, state, failures, error: Option<&str>| FileStatus {
            channel: "docs".into(),
            path: path.into(),
            size,
            state,
            failures,
            last_error: error.map(str::to_string),
            uploaded_bytes: (state == FileState::Uploading).then_some(size / 2),
            starts_in_secs: (state != FileState::Uploading).then_some(3.6),
        };
        MountStatus {
            format: STATUS_FORMAT,
            mount_point: "/mnt/d".into(),
            pid: 42,
            state: "mounted".into(),
            unix_ms: 1_700_000_000_000,
            fs: FsStatus {
                write_back_secs: 2,
                totals: Totals {
                    files: 5,
                    bytes: 4 * 1024 * 1024 + 1000 + 600 * 1024 + 10,
                    waiting: 4,
                    waiting_bytes: 1000 + 600 * 1024 + 10,
                    uploading: 1,
                    uploading_bytes: 4 * 1024 * 1024,
                    uploaded_bytes: 2 * 1024 * 1024,
                    failing: 1,
                    folders: 2,
                    writing: 1,
                    writing_bytes: 3 * 1024 * 1024,
                },
                files: vec![
                    file("big", 4 * 1024 * 1024, FileState::Uploading, 0, None),
                    file("bad", 10, FileState::Failed, 2, Some("the store is down")),
                    file("a", 1000, FileState::Waiting, 0, None),
                    file("b", 300 * 1024, FileState::Waiting, 0, None),
                    file("c", 300 * 1024, FileState::Waiting, 0, None),
                    file("incoming", 3 * 1024 * 1024, FileState::Writing, 0, None),
                ],
                files_not_listed: 0,
                failures: Vec::new(),
                last_refresh: Some(Refresh {
                    unix_ms: Some(1_699_999_996_000),
                    ago_secs: Some(4.2),
                    error: None,
                }),
            },
            pace: PaceSnapshot {
                window_secs: 60,
                messages: 48,
                messages_per_sec: 0.8,
                http_429s: 0,
            },
        }
    }

    #[test]
    fn the_summary_says_what_waits_the_refresh_and_the_pace() {
        let status = sample();
        assert_eq!(
            summary_line(&status),
            "/mnt/d: 4 files waiting (601.0 KiB), 1 uploading (2.0 MiB of 4.0 MiB), 1 \
             failing, 2 folders waiting, 1 file being written (3.0 MiB so far); last refresh 4 \
             s ago; pace 0.8 msg/s, 0 429s in the last minute"
        );
        let report = render(&status);
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(lines.len(), 7, "{report}");
        assert!(lines[6].contains("writing") && lines[6].contains("docs/incoming"));
        assert!(lines[1].contains("uploading") && lines[1].contains("2.0 MiB done (50%)"));
        assert!(lines[2].contains("failed") && lines[2].contains("the store is down"));
        assert!(lines[3].contains("waiting") && lines[3].contains("starts in 4 s"));
    }

    #[test]
    fn an_idle_mount_is_all_uploaded() {
        let mut status = sample();
        status.fs.files.clear();
        status.fs.totals = Totals::default();
        status.state = "stopping".into();
        status.fs.last_refresh = None;
        assert_eq!(
            render(&status),
            "/mnt/d (stopping): all uploaded; no refresh yet; pace 0.8 msg/s, 0 429s in the \
             last minute\n"
        );
        // A file still being written isn't uploaded.
        status.fs.totals.writing = 1;
        status.fs.totals.writing_bytes = 2048;
        assert!(
            summary_line(&status).starts_with(
                "/mnt/d (stopping): nothing queued, 1 file being written (2.0 KiB so far);"
            ),
            "{}",
            summary_line(&status)
        );
    }

    #[test]
    fn the_document_round_trips_through_json() {
        let status = sample();
        let json = serde_json::to_value(&status).unwrap();
        // The fs core's fields sit at the top level, beside the mount's.
        assert_eq!(json["mount_point"], "/mnt/d");
        assert_eq!(json["totals"]["files"], 5);
        assert_eq!(json["files"][1]["state"], "failed");
        assert_eq!(json["pace"]["http_429s"], 0);
        let back: MountStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(seconds(0.4), "0 s");
        assert_eq!(seconds(59.6), "60 s");
        assert_eq!(seconds(125.0), "2 min 5 s");
        assert_eq!(seconds(7300.0), "2 h 1 min");
    }
}
