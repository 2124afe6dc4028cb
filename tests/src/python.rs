//! Signature checks by an independent implementation: the PyPI package `standardwebhooks`, in a venv at
//! `<target dir>/pyvenv` (or `HOOKRELAY_PYVENV`), created once with `python3 -m venv` and `pip install`.
//!
//! The version is the one docs/examples/requirements.txt pins, so these tests and the documentation's receiver
//! examples verify with the same release. Each verification that passes records the version it ran with in
//! `<target dir>/tested-versions/cargo-python-standardwebhooks`; docs/tools/check_docs.py compares the version
//! docs/receiving-webhooks.md states with it.
//!
//! Several test binaries may ask for the venv at the same time, so creation is guarded by a lock directory (created
//! atomically; a lock left by a dead process is taken over) and finished venvs carry a marker file. Without
//! `python3` the check is skipped with a loud message; with `python3` but a failed install the test fails, because
//! then the suite would silently check less than it claims.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::process::bin_dir;
use crate::receiver::RecordedRequest;

/// The pins the documentation's examples install; the `standardwebhooks` line is the requirement here too.
const DOCS_REQUIREMENTS: &str = include_str!("../../docs/examples/requirements.txt");
/// Holds the requirement the venv was made for: a venv made for another one is made again.
const MARKER: &str = ".hookrelay-standardwebhooks-ready";

const VERIFY_SCRIPT: &str = r#"
import base64, json, sys
from importlib.metadata import version
from standardwebhooks.webhooks import Webhook
request = json.load(sys.stdin)
try:
    Webhook(request["secret"]).verify(base64.b64decode(request["body"]), request["headers"])
except Exception as error:
    print(f"{type(error).__name__}: {error}")
    sys.exit(1)
print("verified", version("standardwebhooks"))
"#;

/// The requirement installed into the venv: docs/examples/requirements.txt's `standardwebhooks==X` line.
pub fn requirement() -> &'static str {
    DOCS_REQUIREMENTS
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("standardwebhooks"))
        .expect("docs/examples/requirements.txt pins standardwebhooks")
}

/// Where passing verifications record the library version they ran with.
pub fn tested_version_path() -> PathBuf {
    let profile = bin_dir();
    profile.parent().unwrap_or(&profile).join("tested-versions").join("cargo-python-standardwebhooks")
}

/// The venv directory: `HOOKRELAY_PYVENV`, else `<target dir>/pyvenv` (the parent of the profile directory).
pub fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HOOKRELAY_PYVENV") {
        return PathBuf::from(dir);
    }
    let profile = bin_dir();
    profile.parent().unwrap_or(&profile).join("pyvenv")
}

/// The venv's python with `standardwebhooks` importable, `None` when `python3` is missing (after saying so loudly).
/// Panics when python exists but the venv cannot be made.
pub fn standardwebhooks_python() -> Option<PathBuf> {
    static PYTHON: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
    match PYTHON.get_or_init(prepare) {
        Ok(python) => python.clone(),
        Err(error) => panic!("cannot prepare the Python standardwebhooks venv: {error}"),
    }
}

fn prepare() -> Result<Option<PathBuf>, String> {
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    if ready(&venv, &python) {
        return Ok(Some(python));
    }
    if !python3_exists() {
        eprintln!(
            "\n!!!!! SKIPPED: python3 is not installed, so signatures are NOT checked with the Python \
             standardwebhooks package. Install python3 (with venv) to run this check. !!!!!\n"
        );
        return Ok(None);
    }
    let _lock = DirLock::acquire(&venv.with_extension("lock"), Duration::from_secs(600))?;
    if ready(&venv, &python) {
        return Ok(Some(python));
    }
    run(Command::new("python3").arg("-m").arg("venv").arg("--clear").arg(&venv))?;
    let install = ["-m", "pip", "install", "--disable-pip-version-check", "--quiet", requirement()];
    run(Command::new(&python).args(install))?;
    if !imports(&python) {
        return Err(format!("{} cannot import standardwebhooks after installing it", python.display()));
    }
    std::fs::write(venv.join(MARKER), requirement()).map_err(|e| format!("write the marker: {e}"))?;
    Ok(Some(python))
}

/// Whether the venv was made for today's requirement and imports the package.
fn ready(venv: &Path, python: &Path) -> bool {
    std::fs::read_to_string(venv.join(MARKER)).is_ok_and(|made_for| made_for.trim() == requirement()) && imports(python)
}

fn python3_exists() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn imports(python: &Path) -> bool {
    python.is_file()
        && Command::new(python)
            .args(["-c", "import standardwebhooks.webhooks"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|error| format!("cannot run {command:?}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Writes `version` to [`tested_version_path`] (atomically: test binaries verify concurrently). A failure to write
/// only costs the documentation check its evidence, so it is reported, not fatal.
fn record_tested_version(version: &str) {
    let path = tested_version_path();
    let temporary = path.with_extension(format!("{}.tmp", std::process::id()));
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&temporary, format!("{}\n", version.trim())))
        .and_then(|()| std::fs::rename(&temporary, &path));
    if let Err(error) = written {
        eprintln!("cannot record the tested standardwebhooks version in {}: {error}", path.display());
    }
}

/// A lock held while the directory exists; taken over when the pid written in it is no longer alive.
struct DirLock {
    path: PathBuf,
}

impl DirLock {
    fn acquire(path: &Path, limit: Duration) -> Result<Self, String> {
        let deadline = Instant::now() + limit;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => {
                    let _ = std::fs::write(path.join("pid"), std::process::id().to_string());
                    return Ok(Self { path: path.to_path_buf() });
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(path.join("pid")).ok();
                    let dead = owner
                        .as_deref()
                        .and_then(|pid| pid.trim().parse::<u32>().ok())
                        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                    if dead {
                        let _ = std::fs::remove_dir_all(path);
                        continue;
                    }
                    if Instant::now() >= deadline {
                        return Err(format!("{} stayed locked for {limit:?} (owner pid {owner:?})", path.display()));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(error) => return Err(format!("create {}: {error}", path.display())),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Verifies a recorded request with `standardwebhooks.webhooks.Webhook(secret).verify(body, headers)`.
/// `None` when python3 is missing (skipped, loudly); `Some(Err(python's error))` when verification fails.
pub async fn verify_with_standardwebhooks(request: &RecordedRequest, secret: &str) -> Option<Result<(), String>> {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned().into())))
        .collect();
    let input = serde_json::json!({"secret": secret, "body": BASE64.encode(&request.body), "headers": headers});
    tokio::task::spawn_blocking(move || {
        let python = standardwebhooks_python()?;
        Some(run_verify(&python, &input))
    })
    .await
    .expect("the python verification task")
}

fn run_verify(python: &Path, input: &serde_json::Value) -> Result<(), String> {
    let mut child = Command::new(python)
        .args(["-c", VERIFY_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run {}: {error}", python.display()))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.to_string().as_bytes())
        .map_err(|error| format!("write to python: {error}"))?;
    let output = child.wait_with_output().map_err(|error| format!("wait for python: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success()
        && let Some(version) = stdout.strip_prefix("verified ")
    {
        record_tested_version(version);
        Ok(())
    } else {
        Err(format!("{stdout} {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}
