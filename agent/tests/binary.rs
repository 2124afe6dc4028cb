//! The real `hookrelay-agent` binary: flags, startup without control, and a clean SIGTERM.

use std::process::Command;

use hookrelay_tests::api::post_events_raw;
use hookrelay_tests::{AgentOpts, spawn_agent_with};

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay-agent");

#[test]
fn help_lists_the_flags() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in ["--listen", "--control-url", "--data-dir", "--node-name", "--allowed-cidrs"] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn bad_flag_values_are_refused_with_the_reason() {
    let output = Command::new(BIN).args(["--allowed-cidrs", "10.0.0.0/99"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--allowed-cidrs"), "{stderr}");
}

#[tokio::test]
async fn without_config_emit_is_unavailable_and_sigterm_stops_cleanly() {
    // Nothing listens on port 9 of loopback: control is unreachable.
    let opts =
        AgentOpts { node_name: Some("t".into()), program: Some(BIN.into()), ..AgentOpts::new("http://127.0.0.1:9") };
    let mut agent = spawn_agent_with(opts).await;

    let answer = post_events_raw(agent.addr(), r#"{"owner":"a","type":"b","payload":{}}"#).await;
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(answer.json["error"]["code"], "unavailable", "{:?}", answer.body);

    let answer = post_events_raw(agent.addr(), "{not json").await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);

    let status = agent.terminate().await;
    assert!(status.success(), "exit status {status}");
}
