//! scripts/install.sh and scripts/uninstall.sh, run as a user would run them, into a
//! temporary HOME (XDG_CONFIG_HOME unset, PREFIX defaulting to ~/.local), with the test
//! build as the binary (`--binary`), so that nothing is built in release mode. No
//! systemd user manager is reachable here, which the scripts must take in their stride.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_dcloud-fs");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/NAME ARGS` with `home` as HOME and an otherwise bare environment.
fn script(name: &str, home: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(repo().join("scripts").join(name));
    command
        .args(args)
        .current_dir(home)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// Runs a script that must succeed; returns its stdout.
fn succeeds(name: &str, home: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let output = script(name, home, args, env);
    assert!(
        output.status.success(),
        "{name} {args:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether the test build has a subcommand (completions, man: coming in another branch).
fn has_command(name: &str) -> bool {
    Command::new(BIN)
        .args([name, "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

struct Installed {
    bin: PathBuf,
    helper: PathBuf,
    unit: PathBuf,
    config: PathBuf,
    key: PathBuf,
    bash_completion: PathBuf,
    man_page: PathBuf,
}

impl Installed {
    fn under(home: &Path) -> Installed {
        Installed {
            bin: home.join(".local/bin/dcloud-fs"),
            helper: home.join(".local/bin/mount.dcloud-fs"),
            unit: home.join(".config/systemd/user/dcloud-fs.service"),
            config: home.join(".config/dcloud-fs/config.toml"),
            key: home.join(".config/dcloud-fs/key"),
            bash_completion: home.join(".local/share/bash-completion/completions/dcloud-fs"),
            man_page: home.join(".local/share/man/man1/dcloud-fs.1"),
        }
    }
}

#[test]
fn install_twice_then_uninstall_then_purge() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let at = Installed::under(home);

    let first = succeeds("install.sh", home, &["--binary", BIN], &[]);
    assert!(is_executable(&at.bin), "{first}");
    assert!(fs::read(&at.bin).unwrap() == fs::read(BIN).unwrap());
    assert!(is_executable(&at.helper), "{first}");
    assert_eq!(
        fs::read(&at.helper).unwrap(),
        fs::read(repo().join("scripts/mount.dcloud-fs")).unwrap()
    );
    // PREFIX is ~/.local, which the unit names as %h/.local/bin: copied as it is.
    assert_eq!(
        fs::read_to_string(&at.unit).unwrap(),
        fs::read_to_string(repo().join("systemd/dcloud-fs.service")).unwrap()
    );
    assert_eq!(
        fs::read(&at.config).unwrap(),
        fs::read(repo().join("contrib/config.toml.template")).unwrap()
    );
    assert_eq!(mode(&at.config), 0o600);
    assert_eq!(mode(&at.key), 0o600);
    // The key works: the installed program reads it.
    let id = first
        .split_once("wrote key ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no new key reported:\n{first}"));
    let output = Command::new(&at.bin)
        .arg("doctor")
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let doctor = String::from_utf8_lossy(&output.stdout);
    assert!(doctor.contains(&format!("key id {id}")), "{doctor}");
    assert!(
        first.contains("systemctl --user enable --now dcloud-fs"),
        "{first}"
    );
    assert_eq!(at.bash_completion.exists(), has_command("completions"));
    assert_eq!(at.man_page.exists(), has_command("man"));

    // Again: nothing that is there is replaced.
    let config = fs::read(&at.config).unwrap();
    let key = fs::read(&at.key).unwrap();
    let config_time = fs::metadata(&at.config).unwrap().modified().unwrap();
    let key_time = fs::metadata(&at.key).unwrap().modified().unwrap();
    let bin_time = fs::metadata(&at.bin).unwrap().modified().unwrap();
    let second = succeeds(
        "install.sh",
        home,
        &[],
        &[("DCLOUD_BINARY", Path::new(BIN))],
    );
    assert!(second.contains("kept the config file"), "{second}");
    assert!(second.contains("kept the key"), "{second}");
    assert!(fs::read(&at.config).unwrap() == config);
    assert!(fs::read(&at.key).unwrap() == key);
    assert_eq!(
        fs::metadata(&at.config).unwrap().modified().unwrap(),
        config_time
    );
    assert_eq!(fs::metadata(&at.key).unwrap().modified().unwrap(), key_time);
    assert_eq!(fs::metadata(&at.bin).unwrap().modified().unwrap(), bin_time);
    assert!(second.contains(&format!("up to date: {}", at.bin.display())));

    // Uninstall: the program goes, the key and config stay.
    let output = succeeds("uninstall.sh", home, &[], &[]);
    for gone in [
        &at.bin,
        &at.helper,
        &at.unit,
        &at.bash_completion,
        &at.man_page,
    ] {
        assert!(
            !gone.exists(),
            "{} is still there:\n{output}",
            gone.display()
        );
    }
    assert!(fs::read(&at.config).unwrap() == config, "{output}");
    assert!(fs::read(&at.key).unwrap() == key, "{output}");
    assert!(output.contains("kept"), "{output}");

    // --purge without --yes, and no terminal to ask at: refused, nothing deleted.
    let output = script("uninstall.sh", home, &["--purge"], &[]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--yes"));
    assert!(at.key.exists() && at.config.exists());

    succeeds("uninstall.sh", home, &["--purge", "--yes"], &[]);
    assert!(!at.key.exists());
    assert!(!at.config.exists());
    assert!(!home.join(".config/dcloud-fs").exists());
}

/// Installed elsewhere than ~/.local, the unit's commands point at the program there.
#[test]
fn a_prefix_elsewhere_gets_the_unit_pointed_at_it() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let prefix = home.join("opt/dc-100%");
    let config_home = home.join("xdg-config");
    succeeds(
        "install.sh",
        home,
        &["--binary", BIN],
        &[("PREFIX", &prefix), ("XDG_CONFIG_HOME", &config_home)],
    );
    assert!(is_executable(&prefix.join("bin/dcloud-fs")));
    assert!(is_executable(&prefix.join("bin/mount.dcloud-fs")));
    assert!(config_home.join("dcloud-fs/config.toml").exists());
    assert!(config_home.join("dcloud-fs/key").exists());
    let unit = fs::read_to_string(config_home.join("systemd/user/dcloud-fs.service")).unwrap();
    // '%' is doubled in unit files.
    let bin = prefix
        .join("bin/dcloud-fs")
        .display()
        .to_string()
        .replace('%', "%%");
    assert!(
        unit.contains(&format!("\nExecStart={bin} mount --foreground\n")),
        "{unit}"
    );
    assert!(
        unit.contains(&format!("\nExecStop=-{bin} umount\n")),
        "{unit}"
    );
    assert!(
        unit.lines()
            .all(|l| !l.starts_with("Exec") || !l.contains("%h/.local/bin")),
        "{unit}"
    );

    succeeds(
        "uninstall.sh",
        home,
        &["--purge", "--yes"],
        &[("PREFIX", &prefix), ("XDG_CONFIG_HOME", &config_home)],
    );
    assert!(!prefix.join("bin/dcloud-fs").exists());
    assert!(!config_home.join("systemd/user/dcloud-fs.service").exists());
    assert!(!config_home.join("dcloud-fs").exists());
}

/// shellcheck finds nothing in the scripts, where it is installed (optional: CI
/// doesn't install it; `apt-get install shellcheck` does).
#[test]
fn the_scripts_pass_shellcheck() {
    let scripts = ["install.sh", "uninstall.sh", "mount.dcloud-fs"];
    let output = match Command::new("shellcheck")
        .args(scripts.map(|s| repo().join("scripts").join(s)))
        .output()
    {
        Ok(output) => output,
        Err(_) => {
            println!("shellcheck is not installed; not checking the scripts with it");
            return;
        }
    };
    assert!(
        output.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
