//! Keys and authenticated encryption (AES-256-GCM).
//!
//! Everything dcloud-fs encrypts goes through [`Key::seal_detached`] and
//! [`Key::open_detached`]: AES-256-GCM with a fresh random 96-bit nonce per call and
//! associated data (AAD) chosen by the caller. The on-Discord layouts that put nonce,
//! ciphertext and tag together, and the AAD that binds a chunk to its file and position,
//! live in [`crate::format`]; this module only knows keys and the cipher.
//!
//! ## Keys
//!
//! A key is 32 random bytes. It comes from one of three places (the CLI picks one, see
//! `cli`):
//! - a key file holding the key in base64 on one line, created by `dcloud-fs keygen`
//!   with mode 0600. A key file that the group or others can read is refused: a key that
//!   others can read is no key ([`load_key_file`]).
//! - `DCLOUD_KEY`, the same base64 text, for machines that keep secrets in the
//!   environment ([`Key::from_base64`]).
//! - a passphrase stretched with Argon2id ([`Key::from_passphrase`]). The derivation is
//!   deterministic (a versioned label, the store's own salt — the guild for Discord, a
//!   random salt kept in a local store's `guild.json` — and an optional user salt), so
//!   the same passphrase gives the same key for that store on every machine: that is
//!   what makes a passphrase useful for recovering your files on a new machine; and a
//!   table precomputed against one store is worth nothing against another. Keys derived
//!   before per-store salts ([`Key::from_passphrase_v1`]: the same salt for everyone)
//!   still open what they sealed: a passphrase key carries the older key along
//!   ([`Key::for_id`]) and seals with the new one only.
//!
//! ## Key ids
//!
//! Every record names the key that sealed it by an 8-byte key id, the first bytes of
//! SHA-256 over a domain-separation label and the key. The id reveals nothing useful
//! about the key, and lets a reader with the wrong key say "wrong key (written with X,
//! you have Y)" instead of reporting garbage.
//!
//! ## Nonces
//!
//! Nonces are 96 random bits from the operating system for every seal. With random
//! nonces, AES-GCM stays safe up to about 2^32 seals under one key, which is far more
//! chunks and records than a guild can hold.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

/// Length of a key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of an AES-GCM nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM authentication tag in bytes.
pub const TAG_LEN: usize = 16;
/// Length of a key id in bytes.
pub const KEY_ID_LEN: usize = 8;

/// Label hashed with the key to make its id; versioned so that a future scheme can't
/// collide with this one.
const KEY_ID_LABEL: &[u8] = b"dcloud-fs key id v1\0";
/// Fixed part of the Argon2id salt before per-store salts; a user salt is appended.
const PASSPHRASE_SALT_PREFIX: &str = "dcloud-fs passphrase v1:";
/// Fixed part of the Argon2id salt; the store's salt, a NUL and the user salt follow.
const PASSPHRASE_SALT_PREFIX_V2: &str = "dcloud-fs passphrase v2:";
/// Argon2id memory cost in KiB (64 MiB, RFC 9106's second recommended setting).
const ARGON2_MEMORY_KIB: u32 = 64 * 1024;
/// Argon2id passes over memory.
const ARGON2_PASSES: u32 = 3;
/// Argon2id lanes. One lane keeps the result independent of the machine's core count.
const ARGON2_LANES: u32 = 1;

/// Errors of the crypto layer.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A ciphertext failed authentication: it was altered, truncated, moved to another
    /// file or position, or sealed with another key.
    #[error("authentication failed: the data is corrupt or was not sealed for this place")]
    Authentication,
    /// The data was sealed with a key other than the one loaded.
    #[error("wrong key (file was written with key id {written}, you have {have})")]
    WrongKey { written: KeyId, have: KeyId },
    /// The data is encrypted and no key is loaded.
    #[error(
        "this file is encrypted (key id {written}) and no key is loaded; \
         point --key-file or DCLOUD_KEY at your key"
    )]
    NoKey { written: KeyId },
    /// A key file or DCLOUD_KEY that isn't 32 bytes of base64.
    #[error("{origin} does not hold a dcloud-fs key (expected 32 bytes in base64 on one line)")]
    MalformedKey { origin: String },
    /// A key file that someone other than its owner can read.
    #[error(
        "key file {path} can be read by others (mode {mode:03o}); \
         run `chmod 600 {path}` and check who has seen it"
    )]
    KeyFileExposed { path: String, mode: u32 },
    /// No key file where one was expected.
    #[error("no key file at {path}; create one with `dcloud-fs keygen` or set DCLOUD_KEY")]
    KeyFileMissing { path: String },
    /// keygen would overwrite an existing key.
    #[error(
        "a key file already exists at {path}; refusing to overwrite it (it may be the only \
         copy of your key). Move it away first if you really want a new key"
    )]
    KeyFileExists { path: String },
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    KeyFileIo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
    /// Argon2id refused its parameters (e.g. not enough memory).
    #[error("deriving a key from the passphrase failed: {0}")]
    Kdf(String),
    /// An empty passphrase.
    #[error("the passphrase is empty")]
    EmptyPassphrase,
}

/// Identifies a key without revealing it: 8 bytes, shown as 16 hex digits.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&self.to_string())
        } else {
            serde::Serialize::serialize(&self.0, serializer) // the index cache: bytes
        }
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            return <[u8; KEY_ID_LEN]>::deserialize(deserializer).map(KeyId);
        }
        let text = String::deserialize(deserializer)?;
        let bytes = decode_hex::<KEY_ID_LEN>(&text)
            .ok_or_else(|| serde::de::Error::custom("a key id is 16 hex digits"))?;
        Ok(KeyId(bytes))
    }
}

/// Decodes exactly `N` bytes from `2 * N` hex digits.
pub fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Encodes bytes as lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A 32-byte AES-256-GCM key with its id. `Debug` shows only the id.
#[derive(Clone)]
pub struct Key {
    id: KeyId,
    cipher: Aes256Gcm,
    bytes: [u8; KEY_LEN],
    /// A key this one replaces, that still opens what it sealed (a passphrase key as
    /// derived before per-store salts): used to read, never to seal.
    older: Option<std::sync::Arc<Key>>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id)
    }
}

impl Key {
    /// Makes a key from its raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        let mut hasher = Sha256::new();
        hasher.update(KEY_ID_LABEL);
        hasher.update(bytes);
        let digest = hasher.finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Key {
            id: KeyId(id),
            cipher: Aes256Gcm::new(&bytes.into()),
            bytes,
            older: None,
        }
    }

    /// A new key from the operating system's random number generator.
    pub fn generate() -> Result<Key, CryptoError> {
        let mut bytes = [0u8; KEY_LEN];
        fill_random(&mut bytes)?;
        Ok(Key::from_bytes(bytes))
    }

    /// Parses the base64 text of a key file or of `DCLOUD_KEY`. `origin` names where the
    /// text came from, for the error message.
    pub fn from_base64(text: &str, origin: &str) -> Result<Key, CryptoError> {
        let malformed = || CryptoError::MalformedKey {
            origin: origin.to_string(),
        };
        let decoded = BASE64.decode(text.trim()).map_err(|_| malformed())?;
        let bytes: [u8; KEY_LEN] = decoded.try_into().map_err(|_| malformed())?;
        Ok(Key::from_bytes(bytes))
    }

    /// Derives the key for the store whose salt is `store_salt` from a passphrase with
    /// Argon2id (64 MiB, 3 passes, 1 lane), salted with a versioned label, the store's
    /// salt and `user_salt` (may be empty; it makes the key yours alone even if someone
    /// else picks the same passphrase for the same store). The same passphrase and
    /// salts give the same key on every machine, and a precomputation against one
    /// store is worth nothing against another. The key also opens what the same
    /// passphrase sealed before per-store salts ([`Key::from_passphrase_v1`]), so that
    /// files written then stay readable; it seals with the new key only.
    pub fn from_passphrase(
        passphrase: &str,
        user_salt: &str,
        store_salt: &str,
    ) -> Result<Key, CryptoError> {
        let salt = format!("{PASSPHRASE_SALT_PREFIX_V2}{store_salt}\0{user_salt}");
        let key = argon2id(passphrase, &salt)?;
        Ok(key.with_older(Key::from_passphrase_v1(passphrase, user_salt)?))
    }

    /// Derives a key from a passphrase as dcloud-fs did before per-store salts: the
    /// salt is a fixed label and `user_salt`, the same for every store and user (so one
    /// precomputation serves against all of them). Only to open what such a key sealed.
    pub fn from_passphrase_v1(passphrase: &str, user_salt: &str) -> Result<Key, CryptoError> {
        argon2id(passphrase, &format!("{PASSPHRASE_SALT_PREFIX}{user_salt}"))
    }

    /// This key, also opening what `older` sealed.
    pub fn with_older(mut self, older: Key) -> Key {
        self.older = Some(std::sync::Arc::new(older));
        self
    }

    /// The key (this one, or the older one it also opens with) whose id is `id`.
    pub fn for_id(&self, id: KeyId) -> Option<&Key> {
        if id == self.id {
            Some(self)
        } else {
            self.older.as_deref().and_then(|older| older.for_id(id))
        }
    }

    /// A key for another purpose, derived from this one: SHA-256 over `label` and the
    /// key. The label must say what the subkey is for (and its version), so that no two
    /// uses share a key. The subkey's id is its own, not this key's.
    pub fn derive(&self, label: &[u8]) -> Key {
        let mut hasher = Sha256::new();
        hasher.update(label);
        hasher.update(self.bytes);
        Key::from_bytes(hasher.finalize().into())
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }
}

/// Argon2id (64 MiB, 3 passes, 1 lane) of `passphrase` with `salt`.
fn argon2id(passphrase: &str, salt: &str) -> Result<Key, CryptoError> {
    if passphrase.is_empty() {
        return Err(CryptoError::EmptyPassphrase);
    }
    let params = argon2::Params::new(
        ARGON2_MEMORY_KIB,
        ARGON2_PASSES,
        ARGON2_LANES,
        Some(KEY_LEN),
    )
    .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut bytes = [0u8; KEY_LEN];
    argon
        .hash_password_into(passphrase.as_bytes(), salt.as_bytes(), &mut bytes)
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Ok(Key::from_bytes(bytes))
}

impl Key {
    /// The key as base64 text, the format of key files and `DCLOUD_KEY`.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.bytes)
    }

    /// Encrypts `data` in place under `nonce` and `aad`, returning the tag.
    pub fn seal_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let nonce: Nonce<_> = (*nonce).into();
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce, aad, data.into())
            .map_err(|_| CryptoError::Authentication)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts `data` in place, checking `tag` over the ciphertext and `aad`. On
    /// failure `data` holds garbage and must be dropped.
    pub fn open_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), CryptoError> {
        let nonce: Nonce<_> = (*nonce).into();
        let tag: Tag = (*tag).into();
        self.cipher
            .decrypt_inout_detached(&nonce, aad, data.into(), &tag)
            .map_err(|_| CryptoError::Authentication)
    }
}

/// Fills `buf` from the operating system's random number generator.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

/// A fresh random nonce.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    Ok(nonce)
}

/// Loads a key file, refusing one that the group or others can read.
pub fn load_key_file(path: &Path) -> Result<Key, CryptoError> {
    let shown = path.display().to_string();
    let io_error = |source| CryptoError::KeyFileIo {
        path: shown.clone(),
        source,
    };
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CryptoError::KeyFileMissing { path: shown });
        }
        Err(e) => return Err(io_error(e)),
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::KeyFileExposed { path: shown, mode });
    }
    let text = fs::read_to_string(path).map_err(io_error)?;
    Key::from_base64(&text, &format!("key file {shown}"))
}

/// Writes `key` to a new key file with mode 0600, creating its folder (mode 0700) if
/// needed. Never overwrites an existing file.
pub fn write_key_file(path: &Path, key: &Key) -> Result<(), CryptoError> {
    let shown = path.display().to_string();
    let io_error = |source| CryptoError::KeyFileIo {
        path: shown.clone(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_error)?;
    }
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(CryptoError::KeyFileExists { path: shown });
        }
        Err(e) => return Err(io_error(e)),
    };
    let written = file
        .write_all(format!("{}\n", key.to_base64()).as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(path);
        return Err(io_error(e));
    }
    Ok(())
}

/// The default key file: `$XDG_CONFIG_HOME/dcloud-fs/key`, else `~/.config/dcloud-fs/key`.
pub fn default_key_path() -> PathBuf {
    crate::dirs::config_dir().join("key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips() {
        let key = Key::generate().unwrap();
        let nonce = random_nonce().unwrap();
        let mut data = b"hello chunk".to_vec();
        let tag = key.seal_detached(&nonce, b"aad", &mut data).unwrap();
        assert_ne!(&data, b"hello chunk");
        key.open_detached(&nonce, b"aad", &mut data, &tag).unwrap();
        assert_eq!(&data, b"hello chunk");
    }

    #[test]
    fn flipped_byte_or_other_aad_fails_to_open() {
        let key = Key::generate().unwrap();
        let nonce = random_nonce().unwrap();
        let mut data = vec![7u8; 100];
        let tag = key.seal_detached(&nonce, b"aad", &mut data).unwrap();

        let mut flipped = data.clone();
        flipped[50] ^= 1;
        assert!(matches!(
            key.open_detached(&nonce, b"aad", &mut flipped, &tag),
            Err(CryptoError::Authentication)
        ));
        let mut moved = data.clone();
        assert!(
            key.open_detached(&nonce, b"other", &mut moved, &tag)
                .is_err()
        );
        let other = Key::generate().unwrap();
        assert!(
            other
                .open_detached(&nonce, b"aad", &mut data, &tag)
                .is_err()
        );
    }

    #[test]
    fn key_ids_differ_and_are_stable() {
        let a = Key::from_bytes([1; KEY_LEN]);
        let b = Key::from_bytes([2; KEY_LEN]);
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id(), Key::from_bytes([1; KEY_LEN]).id());
        assert_eq!(a.id().to_string().len(), 16);
        let parsed: KeyId = serde_json::from_str(&serde_json::to_string(&a.id()).unwrap()).unwrap();
        assert_eq!(parsed, a.id());
    }

    #[test]
    fn passphrase_derivation_is_deterministic_and_salted() {
        let a = Key::from_passphrase("correct horse", "", "guild 1").unwrap();
        let b = Key::from_passphrase("correct horse", "", "guild 1").unwrap();
        let c = Key::from_passphrase("correct horse", "me@example.org", "guild 1").unwrap();
        let d = Key::from_passphrase("correct horse", "", "guild 2").unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_ne!(a.id(), d.id(), "each store salts its own");
        assert!(matches!(
            Key::from_passphrase("", "", "guild 1"),
            Err(CryptoError::EmptyPassphrase)
        ));
        // The key derived the old way (one salt for all) is carried along, to read.
        let old = Key::from_passphrase_v1("correct horse", "").unwrap();
        assert_ne!(old.id(), a.id());
        assert_eq!(a.for_id(old.id()).map(Key::id), Some(old.id()));
        assert_eq!(d.for_id(old.id()).map(Key::id), Some(old.id()));
        assert!(
            c.for_id(old.id()).is_none(),
            "another user salt, another old key"
        );
        assert_eq!(a.for_id(a.id()).map(Key::id), Some(a.id()));
    }

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        let key = Key::generate().unwrap();
        write_key_file(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_key_file(&path).unwrap().id(), key.id());
        assert!(matches!(
            write_key_file(&path, &Key::generate().unwrap()),
            Err(CryptoError::KeyFileExists { .. })
        ));
        assert_eq!(load_key_file(&path).unwrap().id(), key.id());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_key_file(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(matches!(
            load_key_file(&dir.path().join("nope")),
            Err(CryptoError::KeyFileMissing { .. })
        ));
    }

    #[test]
    fn malformed_key_text_is_a_clear_error() {
        let err = Key::from_base64("not base64!", "DCLOUD_KEY").unwrap_err();
        assert!(err.to_string().contains("DCLOUD_KEY"));
        let short = BASE64.encode([0u8; 16]);
        assert!(Key::from_base64(&short, "x").is_err());
        let key = Key::generate().unwrap();
        assert_eq!(
            Key::from_base64(&key.to_base64(), "x").unwrap().id(),
            key.id()
        );
    }
}
