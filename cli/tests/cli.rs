//! The `hookrelay` binary as users run it: help text, exit codes and messages when nothing answers.

use std::net::TcpListener;
use std::process::{Command, Output};

fn hookrelay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(args)
        .env_remove("HOOKRELAY_CONTROL_URL")
        .env_remove("HOOKRELAY_AGENT_URL")
        .output()
        .expect("the hookrelay binary runs")
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
    // Dropped here: the port is closed again.
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_every_command_with_examples() {
    let output = hookrelay(&["--help"]);
    assert!(output.status.success(), "{output:?}");
    let help = text(&output.stdout);
    for command in ["owner", "event-type", "endpoint", "delivery", "agent", "emit", "dev"] {
        assert!(help.contains(&format!("\n  {command} ")), "--help does not list {command}:\n{help}");
    }
    for needle in ["Examples:", "hookrelay emit --owner acme", "--control <URL>", "HOOKRELAY_CONTROL_URL", "Exit codes"]
    {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }

    let output = hookrelay(&["endpoint", "create", "--help"]);
    assert!(output.status.success(), "{output:?}");
    let help = text(&output.stdout);
    for needle in ["--rate-limit <N/PERIOD>", "--header <NAME=VALUE>", "--retry-schedule-ms", "shown only this once"] {
        assert!(help.contains(needle), "endpoint create --help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn unreachable_control_exits_3_with_a_clear_message() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let output = hookrelay(&["--control", &url, "owner", "list"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with(&format!("error: cannot reach control at {url}: ")), "{stderr}");
    assert!(stderr.to_lowercase().contains("connection refused"), "{stderr}");
    assert!(stderr.contains("hint: is hookrelay-control running there?"), "{stderr}");
    assert!(output.stdout.is_empty(), "{output:?}");
}

#[test]
fn the_control_address_comes_from_the_environment_too() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let output = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args(["delivery", "list", "--status", "failed"])
        .env("HOOKRELAY_CONTROL_URL", &url)
        .output()
        .expect("the hookrelay binary runs");
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(text(&output.stderr).contains(&format!("cannot reach control at {url}")), "{output:?}");
}

#[test]
fn unreachable_agent_exits_3_naming_the_agent() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let output = hookrelay(&["--agent", &url, "emit", "--owner", "demo", "--type", "demo.hello", "--payload", "{}"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with(&format!("error: cannot reach agent at {url}: ")), "{stderr}");
    assert!(stderr.contains("--agent or HOOKRELAY_AGENT_URL"), "{stderr}");
}

#[test]
fn usage_errors_exit_2_before_connecting() {
    // Nothing listens on the default address in most test environments, but these fail before any connection.
    let output = hookrelay(&["endpoint", "create", "--owner", "acme", "--url", "https://a.example/h"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(text(&output.stderr).contains("--filter <FILTER>"), "{output:?}");

    let output = hookrelay(&["emit", "--owner", "a", "--type", "t", "--payload", "{not json"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(text(&output.stderr).contains("payload is not JSON"), "{output:?}");

    let output =
        hookrelay(&["endpoint", "create", "--owner", "a", "--url", "u", "--filter", "*", "--rate-limit", "10"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(text(&output.stderr).contains("N/s or N/min"), "{output:?}");
}
