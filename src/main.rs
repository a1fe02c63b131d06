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
/// uses. A fixed threshold of 1 MiB serves every chunk buffer by mmap, returned to the
/// system as soon as it is freed; the page faults that costs are small beside the
/// copying and sealing each chunk gets anyway.
fn bound_allocator_caches() {
    // SAFETY: mallopt only changes allocator tuning; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

/// Warnings by default; -v info, -vv debug; -q errors only. RUST_LOG wins over all.
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
}
