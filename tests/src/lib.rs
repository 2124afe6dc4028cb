//! The harness of hookrelay's tests and of its benchmark, one per level: real `hookrelay-control` and
//! `hookrelay-agent` processes on `127.0.0.1:0` with their own temporary data dirs ([`process`]), a server run
//! in-process on the test's runtime ([`inproc`]), gRPC and HTTP clients and the usual fixtures ([`api`]), a recording
//! webhook receiver whose answers can be changed mid-test ([`receiver`]), a receiver of verification challenges
//! ([`challenge`]), certificates made at test time ([`certs`]), polling with a deadline instead of sleeps
//! ([`eventually`]), `/metrics` scraped and parsed ([`metrics`]), server reflection as `grpcurl` asks it
//! ([`reflection`]), signature checks by the Python `standardwebhooks` package ([`python`]), the check that a
//! binary's jemalloc runs with hookrelay's options ([`allocator`]), and the signed request the benchmark's senders
//! without hookrelay make ([`signed`]).
//!
//! The crate tests of control and the agent use it too (they dev-depend on it), so it depends on neither.
//!
//! Every scenario in `tests/` runs against the binaries that `cargo test --workspace` builds next to the test
//! executables (or in `HOOKRELAY_BIN_DIR`). Nothing here synchronises with fixed sleeps: tests wait for an observable
//! condition with a deadline ([`DEADLINE`]) and, when it never comes, fail with the last state they saw and the tail
//! of each process's stderr.

#![forbid(unsafe_code)]

pub mod allocator;
pub mod api;
pub mod certs;
pub mod challenge;
pub mod eventually;
pub mod inproc;
pub mod metrics;
pub mod postgres;
pub mod process;
pub mod python;
pub mod receiver;
pub mod reflection;
pub mod signed;
pub mod stack;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use api::{EndpointSpec, Fixture};
pub use eventually::eventually;
pub use inproc::InProcess;
pub use process::{
    Agent, AgentOpts, Control, ControlOpts, spawn_agent, spawn_agent_with, spawn_control, spawn_control_with,
};
pub use receiver::{Receiver, RecordedRequest};
pub use stack::Stack;

/// How long a test waits for anything that should happen "soon": a process to listen, a config change to reach an
/// agent, a delivery to arrive, an outcome to reach control. Generous because two cores are shared by several
/// processes and test binaries.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A name that no other test (in this or another test binary) uses: `prefix-<pid>-<n>`, valid as an owner id, a
/// node name and an event id.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Writes `text` to `dir/name` and returns its path: the token, key and certificate files a config names.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
    path
}
