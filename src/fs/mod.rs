//! The filesystem core: what `dcloud-fs mount` serves, without any FUSE types, so that
//! tests can drive it directly (as awslabs/mountpoint-s3 separates its fuser adapter
//! from its filesystem). It is being built in steps; the parts so far:
//!
//! - [`inode`]: stable inode numbers for (channel, path) names, carried across renames;
//! - [`cache`]: decrypted chunks in a byte-bounded LRU, with concurrent fetches of one
//!   chunk shared;
//! - [`read`]: reads at any offset that fetch only the chunks they cover, with
//!   read-ahead for sequential readers.

pub mod cache;
pub mod inode;
pub mod read;
