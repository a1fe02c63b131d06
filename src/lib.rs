//! dcloud-fs: files stored in Discord channels as chunked, AES-256-GCM-encrypted
//! attachments, described by small sealed records.
//!
//! Layers, each depending only on the ones below it:
//!
//! - [`fuse`]: the thin adapter from the kernel's FUSE requests (fuser) to [`fs`];
//! - [`serve`]: the other adapter over [`fs`]: the web page, WebDAV and share links
//!   (axum, dav-server);
//! - [`fs`]: the filesystem core the mount serves (inodes, block cache, reads);
//! - [`volume`]: one channel as a folder tree — the index replayed from the channel's
//!   records, and the transfers (put, get, rename, delete) that change it;
//! - [`format`]: the on-Discord format (chunks, records, message kinds), versioned;
//! - [`crypto`]: keys and AES-256-GCM;
//! - [`store`]: the message-level storage seam (Discord, or a local directory);
//! - [`buffers`]: a pool of large buffers that sealing and fetching share.
//!
//! The command line (`src/main.rs`, [`cli`], reading [`config`]) sits on top.

pub mod buffers;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod dirs;
pub mod format;
pub mod fs;
pub mod fuse;
pub mod idmap;
pub mod serve;
pub mod store;
pub mod units;
pub mod volume;
