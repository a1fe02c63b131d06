//! `dcloud-fs verify [CHANNEL[/PATH]] [--read-data [--sample PCT]] [--json]`: whether
//! channels are whole ([`crate::volume::verify`]), one line per damaged file or folder
//! with what to do about it, then a summary line. Exits non-zero if anything is wrong
//! (or a channel couldn't be verified).
//!
//! Channels are opened with [`Volume::open_to_inspect`], so verifying changes nothing
//! in the store; the index cache is brought up to date as any open does.

use clap::Args;
use serde::Serialize;

use super::commands::warn_hidden;
use super::output::{self, ReadingBar};
use super::{CliError, Context, split_target};
use crate::volume::{
    Damaged, DataCheck, Problem, VerifyOptions, VerifyReport, Volume, VolumeError, find_channel,
};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Also download the chunks and check that each opens (its tags, or a plain
    /// file's checksum): as much traffic as reading every file.
    #[arg(long)]
    pub read_data: bool,
    /// With --read-data: only a random PCT percent of the chunks (at least one), e.g.
    /// 10 or 0.5.
    #[arg(long, requires = "read_data", value_name = "PCT", value_parser = parse_percent)]
    pub sample: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// CHANNEL or CHANNEL/PATH; without it, every channel.
    pub target: Option<String>,
}

/// A share in percent: more than 0, at most 100.
fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    if value.is_finite() && value > 0.0 && value <= 100.0 {
        Ok(value)
    } else {
        Err(format!("'{text}' is not a share above 0 and at most 100"))
    }
}

/// The JSON document `--json` prints.
#[derive(Serialize)]
struct JsonReport<'a> {
    channels: &'a [VerifyReport],
    /// Channels that couldn't be verified, with the error.
    failed: Vec<JsonFailure>,
    problems: usize,
}

#[derive(Serialize)]
struct JsonFailure {
    channel: String,
    error: String,
}

/// `dcloud-fs verify`.
pub(crate) async fn verify(context: &Context, args: VerifyArgs) -> Result<(), CliError> {
    let store = context.store().await?;
    let key = context.key().await?;
    let (channels, path) = match &args.target {
        Some(target) => {
            let (channel, path, _) = split_target(target)?;
            (vec![find_channel(store.as_ref(), &channel).await?], path)
        }
        None => {
            let mut all = store.channels().await?;
            all.sort_by(|a, b| a.name.cmp(&b.name));
            (all, String::new())
        }
    };
    let data = match (args.read_data, args.sample) {
        (false, _) => DataCheck::Skip,
        (true, None) => DataCheck::All,
        (true, Some(percent)) => DataCheck::Sample {
            percent,
            seed: None,
        },
    };
    let single = args.target.is_some();
    let mut reports = Vec::new();
    let mut failed = Vec::new();
    for channel in channels {
        let name = channel.name.clone();
        let volume = Volume::open_to_inspect(
            store.clone(),
            channel,
            key.clone(),
            context.volume_config()?,
        );
        let result = match volume.await {
            Ok(volume) => verify_one(context, &volume, &path, data, args.json).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(report) => reports.push(report),
            Err(e @ VolumeError::Interrupted) => return Err(e.into()),
            Err(e) if single => return Err(e.into()),
            Err(e) => {
                eprintln!("dcloud-fs: could not verify {name}: {e}");
                failed.push(JsonFailure {
                    channel: name,
                    error: e.to_string(),
                });
            }
        }
    }
    let problems: usize = reports.iter().map(VerifyReport::problems).sum();
    let damaged: usize = reports.iter().map(|r| r.damaged.len()).sum();
    if args.json {
        let document = JsonReport {
            channels: &reports,
            failed,
            problems,
        };
        let failures = document.failed.len();
        println!(
            "{}",
            serde_json::to_string_pretty(&document).unwrap_or_default()
        );
        return outcome(problems, damaged, failures);
    }
    println!("{}", summary(&reports, args.read_data, problems, damaged));
    outcome(problems, damaged, failed.len())
}

/// Verifies one opened channel, printing its damaged entries unless `json`.
async fn verify_one(
    context: &Context,
    volume: &Volume,
    path: &str,
    data: DataCheck,
    json: bool,
) -> Result<VerifyReport, VolumeError> {
    warn_hidden(volume);
    let bar = (data != DataCheck::Skip)
        .then(|| ReadingBar::new(&volume.display(path), context.global.quiet || json));
    let options = VerifyOptions {
        data,
        progress: bar.as_ref().and_then(ReadingBar::progress),
    };
    let result = volume.verify(path, &options).await;
    if let Some(bar) = bar {
        bar.finish();
    }
    let report = result?;
    if !json {
        for damaged in &report.damaged {
            println!("{}", damaged_line(&report.channel, damaged));
        }
    }
    Ok(report)
}

/// Most problems a line names; the rest are counted.
const PROBLEMS_SHOWN: usize = 3;

/// One line for a damaged file or folder: what is wrong, and what to do.
fn damaged_line(channel: &str, damaged: &Damaged) -> String {
    let described = described(&damaged.problems);
    let mut what: Vec<String> = described.iter().take(PROBLEMS_SHOWN).cloned().collect();
    if described.len() > PROBLEMS_SHOWN {
        what.push(format!("and {} more", described.len() - PROBLEMS_SHOWN));
    }
    let delete_missing = matches!(damaged.problems[..], [Problem::DeleteMissing { .. }]);
    let advice = if damaged.only_record_missing() {
        "`mv` it to another name and back to record it again (nothing is uploaded)"
    } else if delete_missing {
        "`put` an empty file there and `rm` it, to record the delete again"
    } else {
        "restore it from a copy and `put` it again, or `rm` it"
    };
    format!(
        "{channel}/{}{}: {} — {advice}",
        damaged.path,
        if damaged.folder { "/" } else { "" },
        what.join("; ")
    )
}

/// The problems in words, a run of chunks of one missing message (the chunks of a
/// deleted data message) as one.
fn described(problems: &[Problem]) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < problems.len() {
        if let Problem::MessageMissing {
            chunk: first,
            channel,
            message,
        } = &problems[at]
        {
            let mut last = *first;
            let mut end = at + 1;
            while let Some(Problem::MessageMissing {
                chunk,
                channel: other_channel,
                message: other,
            }) = problems.get(end)
            {
                if other_channel != channel || other != message || *chunk != last + 1 {
                    break;
                }
                last = *chunk;
                end += 1;
            }
            if end - at > 1 {
                let place = channel.map_or(String::new(), |c| format!(" in channel {c}"));
                out.push(format!(
                    "chunks {first}–{last}: their message {message}{place} is gone"
                ));
                at = end;
                continue;
            }
        }
        out.push(problems[at].to_string());
        at += 1;
    }
    out
}

/// The last line: what was checked and what was found.
fn summary(reports: &[VerifyReport], read_data: bool, problems: usize, damaged: usize) -> String {
    let sum = |count: fn(&VerifyReport) -> u64| reports.iter().map(count).sum::<u64>();
    let mut line = format!(
        "verified {} channel(s): {} file(s), {} folder(s), {} chunk(s)",
        reports.len(),
        sum(|r| r.files_checked),
        sum(|r| r.folders_checked),
        sum(|r| r.chunks_checked),
    );
    if read_data {
        line.push_str(&format!(
            ", {} read ({})",
            sum(|r| r.chunks_read),
            output::human_size(sum(|r| r.bytes_read))
        ));
    }
    if problems == 0 {
        line.push_str("; no problems");
    } else {
        line.push_str(&format!(
            "; {problems} problem(s) in {damaged} file(s) or folder(s)"
        ));
    }
    line
}

/// The command's result: an error if anything was wrong.
fn outcome(problems: usize, damaged: usize, failures: usize) -> Result<(), CliError> {
    if failures > 0 {
        return Err(CliError::Partial(failures));
    }
    if problems > 0 {
        return Err(CliError::Problems(format!(
            "{problems} problem(s) found in {damaged} file(s) or folder(s)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_above_zero_and_at_most_a_hundred() {
        assert_eq!(parse_percent("10"), Ok(10.0));
        assert_eq!(parse_percent("0.5"), Ok(0.5));
        assert_eq!(parse_percent("100%"), Ok(100.0));
        for bad in ["0", "-1", "100.1", "NaN", "inf", "ten"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_damaged_line_names_the_file_its_problems_and_what_to_do() {
        let mut damaged = Damaged {
            path: "a/b.txt".into(),
            folder: false,
            problems: (0..5)
                .map(|chunk| Problem::MessageMissing {
                    chunk: chunk * 2,
                    channel: None,
                    message: 7,
                })
                .collect(),
        };
        let line = damaged_line("docs", &damaged);
        assert!(line.starts_with("docs/a/b.txt: chunk 0: its message 7 is gone;"));
        assert!(line.contains("and 2 more"), "{line}");
        // The chunks of one message that is gone, in a row, are one.
        damaged.problems = (3..6)
            .map(|chunk| Problem::MessageMissing {
                chunk,
                channel: None,
                message: 7,
            })
            .chain([Problem::DoesNotOpen {
                chunk: 8,
                detail: "bad".into(),
            }])
            .collect();
        let line = damaged_line("docs", &damaged);
        assert!(
            line.starts_with(
                "docs/a/b.txt: chunks 3–5: their message 7 is gone; chunk 8 does not open: bad —"
            ),
            "{line}"
        );
        assert!(line.ends_with("`put` it again, or `rm` it"), "{line}");
        damaged.problems = vec![Problem::RecordMissing { message: 9 }];
        assert!(damaged_line("docs", &damaged).contains("`mv` it"));
        damaged.problems = vec![Problem::DeleteMissing { message: 9 }];
        let line = damaged_line("docs", &damaged);
        assert!(
            line.contains("the delete (message 9") && line.contains("`rm` it"),
            "{line}"
        );
    }
}
