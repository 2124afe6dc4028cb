//! The real `hookrelay-agent` binary: flags, startup without control, and a clean SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Sends a raw HTTP/1.1 request and returns the status code and body.
fn http_post(address: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[test]
fn without_config_emit_is_unavailable_and_sigterm_stops_cleanly() {
    let data = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 of loopback: control is unreachable.
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--control-url", "http://127.0.0.1:9", "--node-name", "t"])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.trim().strip_prefix("hookrelay-agent listening on ").expect(&line).to_owned();

    let (status, body) = http_post(&address, "/v1/events", r#"{"owner":"a","type":"b","payload":{}}"#);
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "unavailable");

    let (status, body) = http_post(&address, "/v1/events", "{not json");
    assert_eq!(status, 400, "{body}");

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "agent did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
