//! The `dcloud-fs` binary: parses the command line, sets up logging and the async
//! runtime, runs the command and turns its error into one line and an exit code.

use std::process::ExitCode;

use clap::Parser;
use dcloud_fs::cli::{self, Cli};

fn main() -> ExitCode {
    bound_allocator_caches();
    // SAFETY: no other thread exists yet (the async runtime starts below).
    unsafe { cli::notify::take_from_environment() };
    let cli = Cli::parse();
    init_logging(cli.global.verbose, cli.global.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dcloud-fs: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dcloud-fs: {e}");
            if e.is_interruption() {
                ExitCode::from(cli::EXIT_INTERRUPTED as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Transfers allocate and free chunk buffers of several MiB on many threads. glibc's
/// default raises its mmap threshold after the first such free and then keeps freed
/// buffers in per-thread arenas, so the process would hold far more memory than it
/// uses. A fixed threshold of 1 MiB serves every chunk buffer by mmap (the large ones
/// that are used again go through [`dcloud_fs::buffers`]' pool instead).
///
/// Fixing the mmap threshold also fixes the trim threshold at its default of 128 KiB,
/// so every free at the top of an arena hands its pages back, and the next allocation
/// faults them in again: a read through the mount (a 128 KiB reply) paid for every page
/// it returned twice over. Arenas keep up to 8 MiB free at their top instead.
fn bound_allocator_caches() {
    // SAFETY: mallopt only changes allocator tuning; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 * 1024 * 1024);
    }
}

/// Warnings by default; -v info, -vv debug; -q errors only. RUST_LOG wins over all.
///
/// On a terminal the level is coloured (debug cyan, info green, warning yellow, error
/// red, as the Flask app's colorlog did); elsewhere the lines are plain. Under systemd
/// (stderr is the journal's stream, `$JOURNAL_STREAM`) each line starts with its
/// syslog priority (`<3>` for an error, ...), so `journalctl -p warning` filters by level.
///
/// Below debug, fuser's session module says only errors: it warns "Failed to umount
/// filesystem" whenever a mount ends by `umount` from outside, its normal way to end.
fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn,fuser::session=error",
        (false, 1) => "info,fuser::session=error",
        (false, _) => "debug",
    };
    let journal = stderr_is_the_journal();
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    if journal {
        builder.write_style(env_logger::WriteStyle::Never);
    }
    builder
        .format(move |buf, record| {
            use std::io::Write;
            let level = record.level();
            if journal {
                return writeln!(
                    buf,
                    "<{}>{}: {}",
                    syslog_priority(level),
                    record.target(),
                    record.args()
                );
            }
            let style = level_style(level);
            writeln!(
                buf,
                "[{style}{level:<5}{style:#} {}] {}",
                record.target(),
                record.args()
            )
        })
        .init();
}

/// The colour of a level on a terminal.
fn level_style(level: log::Level) -> env_logger::fmt::style::Style {
    use env_logger::fmt::style::{AnsiColor, Effects};
    match level {
        log::Level::Error => AnsiColor::Red.on_default(),
        log::Level::Warn => AnsiColor::Yellow.on_default(),
        log::Level::Info => AnsiColor::Green.on_default(),
        log::Level::Debug => AnsiColor::Cyan.on_default(),
        log::Level::Trace => AnsiColor::Cyan.on_default().effects(Effects::DIMMED),
    }
}

/// The syslog priority journald reads from a `<N>` prefix.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether stderr is the stream systemd connected to the journal: `$JOURNAL_STREAM`
/// names its device and inode.
fn stderr_is_the_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a stat struct for a valid descriptor; 2 is stderr.
    if unsafe { libc::fstat(2, stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so the struct is initialised.
    let stat = unsafe { stat.assume_init() };
    device.parse::<u64>().ok() == Some(stat.st_dev)
        && inode.parse::<u64>().ok() == Some(stat.st_ino)
}
