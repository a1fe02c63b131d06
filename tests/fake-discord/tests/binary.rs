//! The `fake-discord` binary: prints the three `DCLOUD_*` lines, serves, stops on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn the_binary_announces_itself_serves_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-discord"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token",
            "tok",
            "--channel",
            "Big Files",
        ])
        .args(["--max-file-size", "52428800", "--latency-ms", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    let (api, token, guild) = (next(), next(), next());
    let api = api.strip_prefix("DCLOUD_API=http://").expect("an API line");
    assert_eq!(token, "DCLOUD_TOKEN=tok");
    let guild = guild.strip_prefix("DCLOUD_GUILD=").expect("a guild line");

    let client = common::Client {
        addr: api.parse().unwrap(),
        token: "tok".to_owned(),
    };
    let channels = client.get(&format!("/guilds/{guild}/channels")).json();
    assert_eq!(channels[0]["name"], "big-files");
    assert_eq!(
        client.get(&format!("/guilds/{guild}")).json()["premium_tier"],
        2
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(child.wait().unwrap().success(), "a clean exit on SIGTERM");
}
