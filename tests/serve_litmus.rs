//! litmus, the WebDAV protocol test suite (Debian package `litmus`), against
//! `serve`'s `/dav/` on a filesystem core over the local store. Its groups (basic,
//! copymove, props, locks, http) run in a few seconds; the test fails if fewer
//! tests pass than this version reaches ([`AT_LEAST`]), so WebDAV can't slip back.
//! What fails, and why, is in the README (Performance, serve). Skipped, saying so,
//! where litmus isn't installed.

#[path = "common/data.rs"]
mod data;
#[path = "common/serving.rs"]
mod serving;

use std::process::Command;

use dcloud_fs::store::Limits;

/// litmus's groups, run one at a time.
const GROUPS: [&str; 5] = ["basic", "copymove", "props", "locks", "http"];

/// Tests litmus must pass, of those it runs.
const AT_LEAST: u32 = 104;

/// (passed, failed) summed over litmus's "summary for" lines.
fn tally(output: &str) -> (u32, u32) {
    let mut passed = 0;
    let mut failed = 0;
    for line in output.lines().filter(|l| l.contains("summary for")) {
        let number_before = |word: &str| -> u32 {
            line.split(word)
                .next()
                .and_then(|head| head.split_whitespace().last())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        passed += number_before(" passed");
        failed += number_before(" failed");
    }
    (passed, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litmus_passes_what_it_passed() {
    if Command::new("litmus").arg("--version").output().is_err() {
        eprintln!("SKIPPED: litmus is not installed (Debian package litmus)");
        return;
    }
    let limits = Limits {
        max_file_size: 1024 * 1024,
        max_attachments: 10,
        max_request_size: 4 * 1024 * 1024,
        max_content_chars: 2000,
    };
    let serving = serving::start(limits, &["dav"], None).await;
    let address = serving.address;
    let url = format!("http://{address}/dav/dav/");
    let work = serving.dir.path().to_path_buf();
    // Each group on its own: litmus stops at the first group with a failure.
    let output = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        for group in GROUPS {
            let out = Command::new("timeout")
                .args(["300", "litmus", &url])
                .env("TESTS", group)
                .env("HOME", "/nonexistent")
                .current_dir(&work)
                .output()
                .unwrap();
            all.extend_from_slice(&out.stdout);
        }
        all
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output);
    eprintln!("{text}");
    let (passed, failed) = tally(&text);
    eprintln!("litmus: {passed} passed, {failed} failed");
    assert!(passed > 0, "litmus ran no test:\n{text}");
    assert!(
        passed >= AT_LEAST,
        "litmus passed {passed}, fewer than the {AT_LEAST} this version reaches"
    );
}

#[test]
fn litmus_summaries_are_counted() {
    let output = "<- summary for `basic': of 16 tests run: 15 passed, 1 failed. 93.8%\n\
                  -> 1 warning was issued.\n\
                  <- summary for `props': of 30 tests run: 20 passed, 10 failed. 66.7%\n";
    assert_eq!(tally(output), (35, 11));
}
