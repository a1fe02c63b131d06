//! Finding names in a channel: every file and recorded folder under a folder whose
//! name contains a piece of text, straight from the channel's index (one pass over
//! the paths under the folder, in path order, no inode numbers handed out) and the
//! files being written, for the web page's search ([`crate::serve`]).

use std::time::SystemTime;

use super::inode::ROOT;
use super::{Fs, FsError, time_of};
use crate::volume::index::Entry;

/// A name found: its path below the folder searched, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
    pub mtime: SystemTime,
}

impl Fs {
    /// Files and recorded folders under folder `ino` whose last name contains
    /// `needle`, compared without regard to case; at most `limit`, in path order.
    pub async fn search(
        &self,
        ino: u64,
        needle: &str,
        limit: usize,
    ) -> Result<Vec<Found>, FsError> {
        if ino == ROOT {
            return Err(FsError::NotPermitted("search within a channel".into()));
        }
        let key = self.key_of(ino)?;
        let volume = self.volume(key.channel).await?;
        let needle = needle.to_lowercase();
        let skip = if key.path.is_empty() {
            0
        } else {
            key.path.len() + 1
        };
        // Files being written (not yet, or not again, in the index) are found too,
        // as a listing shows them.
        let prefix = if key.path.is_empty() {
            String::new()
        } else {
            format!("{}/", key.path)
        };
        let written: Vec<Found> = {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions
                .iter()
                .filter(|(at, _)| at.channel == key.channel && at.path.starts_with(&prefix))
                .filter(|(at, _)| {
                    let name = at.path.rsplit('/').next().unwrap_or(&at.path);
                    name.to_lowercase().contains(&needle)
                })
                .map(|(at, session)| {
                    let state = session.state();
                    Found {
                        path: at.path[prefix.len()..].to_string(),
                        is_dir: false,
                        size: state.size,
                        mtime: time_of(state.mtime_ns),
                    }
                })
                .collect()
        };
        let index = volume.index();
        let mut found: Vec<Found> = index
            .live_under(&key.path)
            .filter(|(path, _)| {
                let name = path.rsplit('/').next().unwrap_or(path);
                name.to_lowercase().contains(&needle)
            })
            .take(limit)
            .map(|(path, entry)| {
                let path = path[skip..].to_string();
                match entry {
                    Entry::File(file) => Found {
                        path,
                        is_dir: false,
                        size: file.size,
                        mtime: time_of(file.mtime_ns),
                    },
                    Entry::Dir(dir) => Found {
                        path,
                        is_dir: true,
                        size: 0,
                        mtime: time_of(dir.mtime_ns),
                    },
                }
            })
            .collect();
        drop(index);
        found.retain(|f| !written.iter().any(|w| w.path == f.path));
        found.extend(written);
        found.sort_by(|a, b| a.path.cmp(&b.path));
        found.truncate(limit);
        Ok(found)
    }
}
