//! The fs core's errors: one [`FsError`] per errno the kernel gets, and the mapping from
//! the volume's and the store's errors to them. Kept apart so the adapter
//! ([`crate::fuse`]) and every part of the core share one mapping, and the rule for
//! what gets logged (the unexpected errors, once, where they are mapped) is in one place.

use crate::store::StoreError;
use crate::volume::VolumeError;

/// Errors of the filesystem core; each maps to one errno.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or folder")]
    NotFound,
    #[error("not a folder")]
    NotADirectory,
    #[error("is a folder")]
    IsADirectory,
    #[error("already exists")]
    Exists,
    #[error("folder not empty")]
    NotEmpty,
    #[error("mounted read-only")]
    ReadOnly,
    #[error("{0}")]
    NotPermitted(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// A name longer than a record's path allows (255 bytes, as `NAME_MAX`).
    #[error("a name of {0} bytes is longer than 255 bytes")]
    NameTooLong(usize),
    #[error("stale file handle")]
    BadHandle,
    /// A file with as many names as it may have ([`crate::volume::links::MAX_LINKS`]).
    #[error("too many links")]
    TooManyLinks,
    /// A hard link to another channel.
    #[error("a hard link can't reach another channel")]
    CrossDevice,
    /// No extended attribute of that name.
    #[error("no such attribute")]
    NoAttribute,
    /// An extended attribute's value is larger than the caller's buffer, or than 64 KiB.
    #[error("attribute too large")]
    TooLarge,
    /// An entry's extended attributes would take more than they may in all.
    #[error("no room for more attributes")]
    NoSpace,
    /// Something under the name waits for its upload.
    #[error("busy: files in it wait for their upload")]
    Busy,
    #[error("{0}")]
    Io(String),
}

impl FsError {
    /// The errno the kernel gets.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::Unsupported(_) => libc::ENOTSUP,
            FsError::InvalidName(_) => libc::EINVAL,
            FsError::NameTooLong(_) => libc::ENAMETOOLONG,
            FsError::BadHandle => libc::EBADF,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::CrossDevice => libc::EXDEV,
            FsError::NoAttribute => libc::ENODATA,
            FsError::TooLarge => libc::E2BIG,
            FsError::NoSpace => libc::ENOSPC,
            FsError::Busy => libc::EBUSY,
            FsError::Io(_) => libc::EIO,
        }
    }
}

impl From<VolumeError> for FsError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::NotFound { .. } | VolumeError::NoSuchChannel { .. } => FsError::NotFound,
            VolumeError::NotADirectory { .. } => FsError::NotADirectory,
            VolumeError::IsADirectory { .. } => FsError::IsADirectory,
            VolumeError::AlreadyExists { .. } => FsError::Exists,
            VolumeError::TooManyLinks { .. } => FsError::TooManyLinks,
            VolumeError::Unsupported(m) => FsError::Unsupported(m),
            VolumeError::Format(crate::format::FormatError::InvalidPath { path, why }) => {
                FsError::InvalidName(format!("{path}: {why}"))
            }
            VolumeError::Store(e) => e.into(),
            other => {
                log::warn!("{other}");
                FsError::Io(other.to_string())
            }
        }
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchChannel(_) => FsError::NotFound,
            StoreError::ChannelExists(_) => FsError::Exists,
            StoreError::PermissionDenied(m) => {
                log::warn!("{m}");
                FsError::NotPermitted(m)
            }
            StoreError::Invalid(m) => FsError::InvalidName(m),
            other => {
                log::warn!("{other}");
                FsError::Io(other.to_string())
            }
        }
    }
}
