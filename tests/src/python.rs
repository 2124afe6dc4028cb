//! Signature checks by an independent implementation: the PyPI package `standardwebhooks`, in a venv at
//! `<target dir>/pyvenv` (or `HOOKRELAY_PYVENV`), created once with `python3 -m venv` and `pip install`.
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

/// The requirement installed into the venv.
pub const REQUIREMENT: &str = "standardwebhooks>=1.0,<2";
const MARKER: &str = ".hookrelay-standardwebhooks-ready";

const VERIFY_SCRIPT: &str = r#"
import base64, json, sys
from standardwebhooks.webhooks import Webhook
request = json.load(sys.stdin)
try:
    Webhook(request["secret"]).verify(base64.b64decode(request["body"]), request["headers"])
except Exception as error:
    print(f"{type(error).__name__}: {error}")
    sys.exit(1)
print("verified")
"#;

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
    if venv.join(MARKER).is_file() && imports(&python) {
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
    if venv.join(MARKER).is_file() && imports(&python) {
        return Ok(Some(python));
    }
    run(Command::new("python3").arg("-m").arg("venv").arg("--clear").arg(&venv))?;
    run(Command::new(&python).args(["-m", "pip", "install", "--disable-pip-version-check", "--quiet", REQUIREMENT]))?;
    if !imports(&python) {
        return Err(format!("{} cannot import standardwebhooks after installing it", python.display()));
    }
    std::fs::write(venv.join(MARKER), REQUIREMENT).map_err(|e| format!("write the marker: {e}"))?;
    Ok(Some(python))
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
    if output.status.success() && stdout == "verified" {
        Ok(())
    } else {
        Err(format!("{stdout} {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}
