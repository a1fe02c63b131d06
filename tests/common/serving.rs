//! `dcloud-fs serve` in a test: a fresh local store with the channels asked for, a
//! filesystem core over it (write-back of 200 ms, no index cache), and the server on
//! a free port of 127.0.0.1, stopped when the [`Serving`] goes.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dcloud_fs::crypto::Key;
use dcloud_fs::fs::{Fs, FsConfig};
use dcloud_fs::serve::{App, ServeConfig};
use dcloud_fs::store::local::LocalStore;
use dcloud_fs::store::{Limits, Store};
use dcloud_fs::volume::{Volume, VolumeConfig};

pub struct Serving {
    pub dir: tempfile::TempDir,
    pub store: Arc<LocalStore>,
    pub key: Key,
    pub fs: Arc<Fs>,
    pub app: Arc<App>,
    pub address: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves a new store holding `channels`, with `password_hash` (an Argon2id hash) if
/// given. Share links live in `config/` of the test's folder.
pub async fn start(limits: Limits, channels: &[&str], password_hash: Option<String>) -> Serving {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open_or_create(&dir.path().join("store"), limits).unwrap());
    for channel in channels {
        store.create_channel(channel).await.unwrap();
    }
    let key = Key::generate().unwrap();
    let config = FsConfig {
        spool_dir: Some(dir.path().join("spool")),
        write_back: Duration::from_millis(200),
        volume: VolumeConfig {
            cache_dir: None,
            free_grace: Duration::ZERO,
            ..VolumeConfig::default()
        },
        ..FsConfig::default()
    };
    let fs = Fs::new(store.clone(), Some(key.clone()), config)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = App::new(
        fs.clone(),
        ServeConfig {
            listen: address,
            password_hash,
            shares_dir: dir.path().join("config"),
            ..ServeConfig::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(dcloud_fs::serve::serve(listener, app.clone(), async move {
        let _ = stopped.await;
    }));
    Serving {
        dir,
        store,
        key,
        fs,
        app,
        address,
        _stop: stop,
    }
}

impl Serving {
    /// Channel `name` as the CLI would read it, afresh from the store.
    pub async fn volume(&self, name: &str) -> Volume {
        crate::data::channel_volume(self.store.clone(), &self.key, name).await
    }
}
