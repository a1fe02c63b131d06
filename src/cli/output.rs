//! How the command line shows things: file modes, sizes, times, progress bars.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

pub use crate::units::{human_size, local_time};
use crate::volume::{Progress, VerifyProgress};

/// `ls -l` style mode string, e.g. `-rw-r--r--`, `drwxr-xr-x` or `-rwsr-xr-x` (setuid,
/// setgid and sticky as `ls` shows them: `s`/`S`, `s`/`S`, `t`/`T`).
pub fn mode_string(mode: u32, is_dir: bool) -> String {
    let mut text = String::with_capacity(10);
    text.push(if is_dir { 'd' } else { '-' });
    for (shift, special, letter) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 0o7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(match (bits & 1 != 0, mode & special != 0) {
            (true, false) => 'x',
            (false, false) => '-',
            (true, true) => letter,
            (false, true) => letter.to_ascii_uppercase(),
        });
    }
    text
}

/// The owner columns of `ls -l`: user and group ids, `-` for the mounting user's (an
/// entry that records none belongs to whoever mounts the channel).
pub fn owner_columns(meta: &crate::format::Meta) -> String {
    let id = |id: Option<u32>| id.map_or_else(|| "-".to_string(), |id| id.to_string());
    format!("{:>5} {:>5}", id(meta.uid), id(meta.gid))
}

/// A progress bar on stderr for a transfer of `total` bytes, when stderr is a terminal
/// and output isn't quieted.
pub struct Bar {
    bar: Option<ProgressBar>,
}

struct BarProgress(ProgressBar);

impl Progress for BarProgress {
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl Bar {
    pub fn new(total: u64, label: &str, quiet: bool) -> Bar {
        if quiet || !std::io::stderr().is_terminal() {
            return Bar { bar: None };
        }
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{msg:30!} {bar:30} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {eta:>4}",
        )
        .expect("valid template");
        bar.set_style(style);
        bar.set_message(label.to_string());
        Bar { bar: Some(bar) }
    }

    /// What the volume reports progress to.
    pub fn progress(&self) -> Option<Arc<dyn Progress>> {
        self.bar
            .as_ref()
            .map(|bar| Arc::new(BarProgress(bar.clone())) as Arc<dyn Progress>)
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A progress bar on stderr for the chunks `verify --read-data` reads, sized when the
/// reading starts (after the structure check), when stderr is a terminal and output
/// isn't quieted.
pub struct ReadingBar {
    bar: Option<ProgressBar>,
}

struct ReadingProgress(ProgressBar);

impl VerifyProgress for ReadingProgress {
    fn reading(&self, _chunks: u64, bytes: u64) {
        self.0.set_length(bytes);
    }

    fn read(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl ReadingBar {
    pub fn new(label: &str, quiet: bool) -> ReadingBar {
        let bar = Bar::new(0, label, quiet).bar;
        ReadingBar { bar }
    }

    /// What the verification reports progress to.
    pub fn progress(&self) -> Option<Arc<dyn VerifyProgress>> {
        self.bar
            .as_ref()
            .map(|bar| Arc::new(ReadingProgress(bar.clone())) as Arc<dyn VerifyProgress>)
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_sizes_read_like_ls() {
        assert_eq!(mode_string(0o644, false), "-rw-r--r--");
        assert_eq!(mode_string(0o755, true), "drwxr-xr-x");
        assert_eq!(mode_string(0o4755, false), "-rwsr-xr-x");
        assert_eq!(mode_string(0o2644, false), "-rw-r-Sr--");
        assert_eq!(mode_string(0o1777, true), "drwxrwxrwt");
        assert_eq!(mode_string(0o1776, true), "drwxrwxrwT");
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(50 * 1024 * 1024), "50.0 MiB");
        assert_eq!(local_time(0).len(), 16);
    }
}
