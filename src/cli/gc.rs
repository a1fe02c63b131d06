//! `dcloud-fs gc [CHANNEL] [--dry-run] [--json]`: deletes what no file needs any more
//! ([`crate::volume::gc`]): one line per channel with what went and the bytes freed,
//! and the partly used records it repacked (files relocated, bytes copied).

use clap::Args;

use super::output;
use super::{CliError, Context};
use crate::volume::gc::{GcOptions, GcReport};
use crate::volume::{Volume, find_channel};

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Say what would be deleted, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the reports as JSON.
    #[arg(long)]
    pub json: bool,
    /// The channel; without it, every channel.
    pub channel: Option<String>,
}

/// `dcloud-fs gc`.
pub(crate) async fn gc(context: &Context, args: GcArgs) -> Result<(), CliError> {
    let store = context.store().await?;
    let key = context.key().await?;
    let channels = match &args.channel {
        Some(name) => vec![find_channel(store.as_ref(), name.trim_end_matches('/')).await?],
        None => {
            let mut all = store.channels().await?;
            all.sort_by(|a, b| a.name.cmp(&b.name));
            all
        }
    };
    let options = GcOptions {
        dry_run: args.dry_run,
        ..GcOptions::default()
    };
    let mut reports = Vec::new();
    let mut failed = 0;
    for channel in channels {
        let name = channel.name.clone();
        let result = async {
            let volume = Volume::open(
                store.clone(),
                channel,
                key.clone(),
                context.volume_config()?,
            )
            .await?;
            let report = volume.gc(&options).await?;
            volume.save();
            Ok::<GcReport, CliError>(report)
        }
        .await;
        match result {
            Ok(report) => {
                if !args.json {
                    println!("{}", line(&report));
                }
                reports.push(report);
            }
            Err(e) if args.channel.is_some() => return Err(e),
            Err(e) => {
                eprintln!("dcloud-fs: could not collect {name}: {e}");
                failed += 1;
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).unwrap_or_default()
        );
    }
    if failed > 0 {
        return Err(CliError::Partial(failed));
    }
    Ok(())
}

/// One channel's report in words.
fn line(report: &GcReport) -> String {
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let mut parts = Vec::new();
    let mut part = |count: usize, what: &str| {
        if count > 0 {
            parts.push(format!("{count} {what}"));
        }
    };
    part(report.superseded_records, "superseded records");
    part(report.tombstones, "tombstone messages");
    part(report.unused_data, "unused data messages");
    part(report.checkpoints, "older checkpoints");
    let what = if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    };
    let data_kept = if report.unused_data_kept > 0 {
        format!(
            "; {} data messages kept: records here that your key can't read may use them",
            report.unused_data_kept
        )
    } else {
        String::new()
    };
    let kept = if report.tombstones_kept > 0 {
        format!(
            "; {} deletes kept: a message still in use puts their path",
            report.tombstones_kept
        )
    } else {
        String::new()
    };
    let repacked = if report.repacked_records > 0 {
        format!(
            "; {} {} partly used records ({} files, {} copied into new packs)",
            if report.dry_run {
                "would repack"
            } else {
                "repacked"
            },
            report.repacked_records,
            report.repacked_files,
            output::human_size(report.repacked_bytes),
        )
    } else {
        String::new()
    };
    format!(
        "{}: {verb} {} messages, {}{what}{repacked}{kept}{data_kept}",
        report.channel,
        report.messages,
        output::human_size(report.bytes),
    )
}
