//! Runs the real `hookrelay-control` binary: flags, the listening line, gRPC, SIGTERM. Building this test also
//! makes `cargo test --workspace` build the binary for the cross-process tests of other crates.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hookrelay_common::proto::v1 as pb;
use hookrelay_tests::{Control, ControlOpts, spawn_control_with};

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay-control");

/// This crate's binary as a [`Control`] with `RUST_LOG=warn`, `opts` and the listening line it must print.
async fn start(opts: ControlOpts) -> Control {
    let mut envs = vec![("RUST_LOG".to_owned(), "warn".to_owned())];
    envs.extend(opts.envs);
    let control = spawn_control_with(ControlOpts { program: Some(BIN.into()), envs, ..opts }).await;
    let line = control.listening_line();
    assert!(line.starts_with("hookrelay-control listening on "), "unexpected first line {line:?}");
    control
}

#[test]
fn help_lists_every_flag_and_env_var() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "--listen",
        "HOOKRELAY_CONTROL_LISTEN",
        "127.0.0.1:7100",
        "--data-dir",
        "HOOKRELAY_CONTROL_DATA_DIR",
        "--allow-insecure-endpoints",
        "HOOKRELAY_ALLOW_INSECURE_ENDPOINTS",
        "--max-endpoints-per-owner",
        "HOOKRELAY_MAX_ENDPOINTS_PER_OWNER",
        "--master-key-file",
        "HOOKRELAY_MASTER_KEY_FILE",
        "HOOKRELAY_MASTER_KEY may hold the key itself",
        "--allowed-cidrs",
        "HOOKRELAY_ALLOWED_CIDRS",
    ] {
        assert!(help.contains(expected), "--help lacks {expected}:\n{help}");
    }
}

#[test]
fn bad_flag_values_fail_with_a_clear_message() {
    for (args, expected) in [
        (&["--listen", "nope"][..], "invalid value 'nope' for '--listen <ADDR>'"),
        (&["--max-endpoints-per-owner", "0"][..], "invalid value '0' for '--max-endpoints-per-owner <N>'"),
        (&["--no-such-flag"][..], "unexpected argument '--no-such-flag'"),
        (&["--allowed-cidrs", "10.0.0.0/8,nope"][..], "invalid value 'nope' for '--allowed-cidrs <CIDR,...>'"),
    ] {
        let output = Command::new(BIN).args(args).output().unwrap();
        assert!(!output.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn an_unusable_data_dir_fails_before_serving_anything() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let output =
        Command::new(BIN).args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(file.join("data")).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("cannot create the data directory"), "{stderr}");
}

/// Runs the binary on `data_dir` until it exits by itself (a startup failure); returns its stdout and stderr.
fn failed_start(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> (String, String) {
    let mut command = Command::new(BIN);
    command.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir).args(args);
    command.env_remove("HOOKRELAY_MASTER_KEY").env_remove("HOOKRELAY_MASTER_KEY_FILE");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    assert!(!output.status.success(), "control should refuse to start");
    (String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
}

#[tokio::test]
async fn a_wrong_master_key_fails_before_the_listening_line() {
    let right = hookrelay_common::sealed::MasterKey::generate().expose_base64();
    let mut control = start(ControlOpts {
        envs: vec![("HOOKRELAY_MASTER_KEY".to_owned(), right.clone())],
        env_remove: vec!["HOOKRELAY_MASTER_KEY_FILE".to_owned()],
        ..ControlOpts::default()
    })
    .await;
    assert!(control.terminate().await.success());
    let data = control.data_dir();

    let wrong = hookrelay_common::sealed::MasterKey::generate().expose_base64();
    let (stdout, stderr) = failed_start(&data, &[("HOOKRELAY_MASTER_KEY", &wrong)], &[]);
    assert!(stdout.is_empty(), "nothing claims to listen: {stdout}");
    assert!(stderr.contains("the master key does not match"), "{stderr}");
    assert!(!stderr.contains(&wrong) && !stderr.contains(&right), "keys never appear in messages");

    let (_, stderr) = failed_start(&data, &[("HOOKRELAY_MASTER_KEY", "not-a-key")], &[]);
    assert!(stderr.contains("HOOKRELAY_MASTER_KEY is not usable: master key must be base64 of 32 bytes"), "{stderr}");
    let key_file = data.join("elsewhere.key");
    std::fs::write(&key_file, format!("{right}\n")).unwrap();
    let (_, stderr) =
        failed_start(&data, &[("HOOKRELAY_MASTER_KEY", &right)], &["--master-key-file", key_file.to_str().unwrap()]);
    assert!(stderr.contains("give the master key once"), "{stderr}");
}

#[tokio::test]
async fn serves_grpc_and_stops_cleanly_on_sigterm() {
    let mut control =
        start(ControlOpts { listen_env: Some("HOOKRELAY_CONTROL_LISTEN".to_owned()), ..ControlOpts::default() }).await;
    let addr = control.addr().to_string();
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");
    let mut admin = control.admin().await;
    let owner = admin
        .create_owner(pb::CreateOwnerRequest { id: "acme".into(), name: "Acme".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(owner.id, "acme");
    let started = Instant::now();
    let status = control.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "stopping took {:?}", started.elapsed());

    // What it acknowledged survived the restart.
    control.restart().await;
    let found = control.admin().await.get_owner(pb::GetOwnerRequest { id: "acme".into() }).await.unwrap();
    assert_eq!(found.into_inner().name, "Acme");
    assert!(control.terminate().await.success());
}
