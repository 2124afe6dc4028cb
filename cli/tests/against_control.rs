//! The `hookrelay` CLI against a real control process: HTTPS with a CA file and tokens from a flag, the environment
//! or a file, with the server's refusals and an unknown certificate as distinct exit codes; secret rotation and
//! endpoint verification against a receiver of verification challenges.

use std::path::Path;
use std::time::Duration;

use hookrelay_common::proto::v1 as pb;
use hookrelay_tests::certs::{Ca, Usage};
use hookrelay_tests::challenge::{Answer, ChallengeReceiver};
use hookrelay_tests::{Control, ControlOpts, spawn_control, spawn_control_with, write_file};

const ADMIN: &str = "admin-5c1f0e2b9a7d4c38";
const READ: &str = "read-0e9d8c7b6a594837";

/// Runs the CLI with `args` and only the `envs` given of its own variables; returns (exit code, stdout, stderr).
async fn cli(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"));
    command.args(args);
    for name in ["HOOKRELAY_TOKEN", "HOOKRELAY_TOKEN_FILE", "HOOKRELAY_CA", "HOOKRELAY_CONTROL_URL"] {
        command.env_remove(name);
    }
    command.envs(envs.iter().copied());
    let output = tokio::time::timeout(Duration::from_secs(30), command.output()).await.unwrap().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Control serving TLS with a certificate of `ca` for `localhost` / 127.0.0.1, and the admin and read tokens.
async fn tls_control(dir: &Path, ca: &Ca) -> Control {
    let (cert, key) = ca.leaf("control", Usage::Server);
    let tokens = write_file(dir, "tokens", &format!("admin:{ADMIN}\nread:{READ}\n"));
    let path = |path: std::path::PathBuf| path.to_str().unwrap().to_owned();
    let extra_args = vec![
        "--tls-cert".to_owned(),
        path(write_file(dir, "tls.crt", &cert)),
        "--tls-key".to_owned(),
        path(write_file(dir, "tls.key", &key)),
        "--tokens-file".to_owned(),
        path(tokens),
    ];
    spawn_control_with(ControlOpts { extra_args, ..ControlOpts::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_https_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cli CA");
    let control = tls_control(dir.path(), &ca).await;
    let url = format!("https://127.0.0.1:{}", control.addr().port());
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem());
    let ca_file = ca_file.to_str().unwrap();

    let (code, _, stderr) =
        cli(&["owner", "create", "acme", "--control", &url, "--ca", ca_file, "--token", ADMIN], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    // The token from the environment, and from a file.
    let (code, stdout, stderr) =
        cli(&["owner", "list", "--control", &url], &[("HOOKRELAY_CA", ca_file), ("HOOKRELAY_TOKEN", READ)]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("acme"), "{stdout}");
    let token_file = write_file(dir.path(), "cli-token", &format!("{READ}\n"));
    let (code, _, stderr) = cli(
        &["owner", "get", "acme", "--control", &url, "--ca", ca_file, "--token-file", token_file.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");

    // Refusals are the server's (exit 1) and say what is missing.
    let (code, _, stderr) = cli(&["owner", "list", "--control", &url, "--ca", ca_file], &[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("UNAUTHENTICATED: missing credentials"), "{stderr}");
    let (code, _, stderr) =
        cli(&["owner", "delete", "acme", "--control", &url, "--ca", ca_file, "--token", READ], &[]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");

    // Without --ca the public roots do not know this certificate: unreachable (exit 3).
    let (code, _, stderr) = cli(&["owner", "list", "--control", &url, "--token", READ], &[]).await;
    assert_eq!(code, 3, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_rotates_secrets_and_verifies_endpoints() {
    let control = spawn_control().await;
    let mut admin = control.admin().await;
    admin.create_owner(pb::CreateOwnerRequest { id: "acme".into(), name: "Acme".into() }).await.unwrap();
    let receiver = ChallengeReceiver::start(Answer::Echo).await;
    let control_url = control.url();
    let run = async |args: &[&str]| {
        let mut all = vec!["--control", control_url.as_str()];
        all.extend_from_slice(args);
        cli(&all, &[]).await
    };

    let url = receiver.url("/hook");
    let (code, stdout, stderr) = run(&[
        "endpoint",
        "create",
        "--owner",
        "acme",
        "--url",
        &url,
        "--filter",
        "*",
        "--insecure",
        "--verify",
        "-o",
        "json",
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    let created: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let id = created["endpoint"]["id"].as_str().unwrap().to_owned();
    assert_eq!(receiver.seen().len(), 1, "--verify sent the challenge");

    let (code, stdout, stderr) = run(&["endpoint", "rotate-secret", &id, "--overlap", "2h", "-o", "json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let rotated: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let secret = rotated["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret != created["secret"].as_str().unwrap());
    assert!(rotated["previous_secret_expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(stderr.contains("shown only now"), "{stderr}");

    let (code, stdout, _) = run(&["endpoint", "rotate-secret", &id]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("new secret: whsec_") && stdout.contains("the previous secret stays valid until"),
        "{stdout}"
    );

    let (code, stdout, stderr) = run(&["endpoint", "verify", &id]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with(&format!("endpoint {id} answered the verification challenge in ")), "{stdout}");
    let (code, stdout, _) = run(&["endpoint", "verify", &id, "-o", "json"]).await;
    assert_eq!(code, 0);
    let verified: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(verified["endpoint"]["id"], id.as_str());
    assert!(verified["duration_ms"].is_u64());

    receiver.set(Answer::ServerError);
    let (code, stdout, stderr) = run(&["endpoint", "verify", &id]).await;
    assert_eq!(code, 1, "a refusal exits 1");
    assert!(stdout.is_empty());
    assert!(stderr.starts_with("error: FAILED_PRECONDITION: verification challenge to "), "{stderr}");
    assert!(stderr.contains("answered 500 Internal Server Error"), "{stderr}");

    let (code, _, stderr) = run(&["endpoint", "update", &id, "--description", "x", "--verify"]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("answered 500"), "{stderr}");
    let (code, _, stderr) = run(&["endpoint", "rotate-secret", &id, "--overlap", "soon"]).await;
    assert_eq!(code, 2, "{stderr}");
}
