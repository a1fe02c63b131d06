//! Test data shared by the integration tests.

#![allow(dead_code)]

/// `len` deterministic pseudo-random bytes (SplitMix64), different for each seed:
/// incompressible, and reproducible when a test fails.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The stdout of a dcloud-fs run that must have succeeded (else its stderr in the panic).
pub fn succeeded(args: &[&str], output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "dcloud-fs {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The one line of stderr of a dcloud-fs run that must have failed cleanly: a non-zero
/// exit, exactly one line, no panic.
pub fn failed_with_one_line(args: &[&str], output: std::process::Output) -> String {
    assert!(!output.status.success(), "dcloud-fs {args:?} succeeded");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The paths of a volume's live files, in path order.
pub fn file_paths(volume: &dcloud_fs::volume::Volume) -> Vec<String> {
    volume
        .index()
        .live()
        .filter(|(_, entry)| matches!(entry, dcloud_fs::volume::Entry::File(_)))
        .map(|(path, _)| path.to_string())
        .collect()
}

/// Channel `name` of `store` as the CLI would read it: opened afresh, without an index
/// cache, with `key`.
pub async fn channel_volume(
    store: std::sync::Arc<dyn dcloud_fs::store::Store>,
    key: &dcloud_fs::crypto::Key,
    name: &str,
) -> dcloud_fs::volume::Volume {
    let channel = store
        .channels()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap();
    let config = dcloud_fs::volume::VolumeConfig {
        cache_dir: None,
        ..dcloud_fs::volume::VolumeConfig::default()
    };
    dcloud_fs::volume::Volume::open(store, channel, Some(key.clone()), config)
        .await
        .unwrap()
}
