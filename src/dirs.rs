//! Where dcloud-fs keeps its files on the local machine, after the XDG base directory
//! specification: the key and settings under `$XDG_CONFIG_HOME/dcloud-fs`, index caches
//! under `$XDG_CACHE_HOME/dcloud-fs`, and the default local store under
//! `$XDG_DATA_HOME/dcloud-fs`. Unset or relative variables fall back to the
//! specification's defaults under `$HOME`.

use std::path::PathBuf;

const APP: &str = "dcloud-fs";

/// `$XDG_CONFIG_HOME/dcloud-fs`, else `~/.config/dcloud-fs`.
pub fn config_dir() -> PathBuf {
    xdg_dir("XDG_CONFIG_HOME", ".config")
}

/// `$XDG_CACHE_HOME/dcloud-fs`, else `~/.cache/dcloud-fs`.
pub fn cache_dir() -> PathBuf {
    xdg_dir("XDG_CACHE_HOME", ".cache")
}

/// `$XDG_DATA_HOME/dcloud-fs`, else `~/.local/share/dcloud-fs`.
pub fn data_dir() -> PathBuf {
    xdg_dir("XDG_DATA_HOME", ".local/share")
}

/// `$XDG_RUNTIME_DIR/dcloud-fs`, else the cache folder's `run`: what lives only while
/// a process runs (which daemon serves which mount point).
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join(APP),
        _ => cache_dir().join("run"),
    }
}

fn xdg_dir(variable: &str, fallback_under_home: &str) -> PathBuf {
    match std::env::var_os(variable).map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join(APP),
        _ => home_dir().join(fallback_under_home).join(APP),
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}
