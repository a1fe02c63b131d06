//! The systemd user unit, systemd/dcloud-fs.service, checked by `systemd-analyze --user
//! verify`: the unit parses with no warning, every directive is known to this systemd
//! (CI has 252), and the programs it runs exist.
//!
//! verify passes a misspelt directive or a bad value with only a warning on stderr and
//! exit status 0, so the test wants empty output as well as success. It runs as any
//! user with no user session: HOME is a temporary folder holding the installed layout
//! the unit expects (`.local/bin/dcloud-fs`, here the test build), and XDG_RUNTIME_DIR
//! another, which the user manager that verify simulates needs. Without
//! systemd-analyze the test fails, saying so (`.ci/run` installs systemd).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_dcloud-fs");

fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/dcloud-fs.service")
}

/// `systemd-analyze --user verify UNIT` with `home` as HOME.
fn verify(unit: &Path, home: &Path) -> Output {
    let runtime = tempfile::tempdir().unwrap();
    let output = Command::new("systemd-analyze")
        .args(["--user", "--man=no", "verify"])
        .arg(unit)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .current_dir(home)
        .output();
    match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze is not installed, so the unit can't be checked: install the \
             systemd package (apt-get install systemd; .ci/run does)"
        ),
        Err(e) => panic!("running systemd-analyze: {e}"),
    }
}

/// A HOME with the layout the unit expects: an executable ~/.local/bin/dcloud-fs.
fn installed_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let bin = home.path().join(".local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("dcloud-fs")).unwrap();
    home
}

fn report(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_unit_verifies_cleanly() {
    let home = installed_home();
    let output = verify(&unit_file(), home.path());
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "systemd-analyze verify found problems in {}:\n{}",
        unit_file().display(),
        report(&output)
    );
}

/// The check has teeth: a misspelt directive, a bad value and a missing binary are
/// each caught.
#[test]
fn verify_catches_mistakes() {
    let home = installed_home();
    let text = std::fs::read_to_string(unit_file()).unwrap();
    // Whole lines, not the comments that name them.
    let mistakes = [
        ("\nRestartSec=", "\nRestartSek="),
        ("\nType=notify\n", "\nType=notfy\n"),
        ("\nStartLimitBurst=10\n", "\nStartLimitBurst=ten\n"),
    ];
    for (right, wrong) in mistakes {
        assert!(text.contains(right), "the unit has no {right:?}");
        let dir = tempfile::tempdir().unwrap();
        let unit = dir.path().join("dcloud-fs.service");
        std::fs::write(&unit, text.replacen(right, wrong, 1)).unwrap();
        let output = verify(&unit, home.path());
        assert!(
            !output.status.success() || !output.stderr.is_empty(),
            "{wrong:?} went unnoticed:\n{}",
            report(&output)
        );
    }

    let empty_home = tempfile::tempdir().unwrap();
    let output = verify(&unit_file(), empty_home.path());
    assert!(
        !output.status.success(),
        "a missing ~/.local/bin/dcloud-fs went unnoticed:\n{}",
        report(&output)
    );
}
