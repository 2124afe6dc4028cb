//! A throwaway PostgreSQL cluster for the tests of a test binary: [`postgres`] starts it on first use (`initdb`
//! into a temporary directory, `postgres` on a free loopback port with its socket in that directory) and every test
//! takes its own database from it ([`PgCluster::fresh_database`]).
//!
//! postgres refuses to run as root, so as root the cluster runs as `nobody` (through `setpriv`), its directory
//! handed over to that user. The server is started by a small `sh` whose stdin is a pipe the test process holds:
//! when the process exits, however it exits, the pipe reaches end of file and the shell stops the server and
//! removes the directory; it runs in a process group of its own, so signals meant for the test's group do not cut
//! that short. Durability is switched off (`fsync=off`): a test cluster never outlives its process.
//!
//! Without PostgreSQL installed, [`postgres`] panics when `CI` is set (the PostgreSQL tests must run there) and
//! otherwise prints a loud `!!! SKIPPED` line naming the test and returns `None`, so the test returns early.

use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt as _, chown};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the cluster may take to accept connections after `postgres` starts.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// The superuser `initdb` creates; every connection uses it, without a password (trust on loopback).
const SUPERUSER: &str = "postgres";

/// Stops the server when the test process exits (its stdin pipe closes), then removes the cluster directory; a
/// startup failure prints the server's log first. `$1` is the directory, the rest the server's command line. The
/// pipe is passed to the watcher explicitly, as `sh` gives background jobs /dev/null for stdin; SIGTERM, as `sh`
/// starts background jobs with SIGINT ignored, and no client is left once the test process is gone.
const SUPERVISOR: &str = r#"dir=$1; shift
exec 3<&0
"$@" </dev/null >>"$dir/server.log" 2>&1 &
pid=$!
(cat <&3 >/dev/null; kill -TERM "$pid" 2>/dev/null) &
exec 3<&-
wait "$pid"; status=$?
if [ "$status" -ne 0 ]; then echo "postgres exited with status $status; its log:" >&2; cat "$dir/server.log" >&2; fi
rm -rf "$dir"
exit "$status""#;

/// A running throwaway cluster. It lives as long as the test process.
pub struct PgCluster {
    port: u16,
    bin_dir: PathBuf,
    /// Holds the supervisor's stdin open; never written.
    _lifeline: Mutex<ChildStdin>,
}

/// The test binary's cluster, started on first use; `None` (after a loud `!!! SKIPPED` line on stderr) when
/// PostgreSQL is not installed and `CI` is not set. Panics when it is missing in CI, or installed but fails to start.
pub fn postgres() -> Option<&'static PgCluster> {
    static CLUSTER: OnceLock<Result<PgCluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(|| find_binaries().map(|bin_dir| start(&bin_dir))) {
        Ok(cluster) => Some(cluster),
        Err(missing) => {
            if std::env::var_os("CI").is_some() {
                panic!("PostgreSQL is required in CI, but {missing}; .ci/run installs Debian's postgresql package");
            }
            let test = std::thread::current().name().unwrap_or("a test").to_owned();
            eprintln!("!!! SKIPPED: {test}: it needs PostgreSQL, but {missing} (install Debian's postgresql package)");
            None
        }
    }
}

impl PgCluster {
    /// The port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` (which may not exist yet), as the superuser over TCP.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a database no other test uses and returns its `postgres://` URL.
    pub fn fresh_database(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!("test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs `sql` in database `name` with `psql` and returns its unaligned output; panics when it fails.
    pub fn psql(&self, name: &str, sql: &str) -> String {
        match self.try_psql(name, sql) {
            Ok(output) => output,
            Err(error) => panic!("psql {sql:?} in database {name} failed: {error}"),
        }
    }

    fn try_psql(&self, name: &str, sql: &str) -> Result<String, String> {
        let output = Command::new(self.bin_dir.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-w", "-d", &self.url(name), "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("cannot run psql: {error}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim_end().to_owned())
        }
    }
}

/// The directory with `initdb`, `postgres` and `psql`: that of `initdb` in `PATH` (symlinks resolved), else the
/// newest `/usr/lib/postgresql/*/bin`. The error says what is missing.
fn find_binaries() -> Result<PathBuf, String> {
    let complete = |dir: &Path| ["initdb", "postgres", "psql"].iter().all(|name| dir.join(name).is_file());
    let in_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|dir| fs::canonicalize(dir.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf));
    let mut debian: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .collect();
    debian.sort();
    in_path
        .chain(debian.into_iter().rev().map(|(_, dir)| dir))
        .find(|dir| complete(dir))
        .ok_or_else(|| "no initdb, postgres and psql were found in PATH or /usr/lib/postgresql/*/bin".to_owned())
}

/// Starts a cluster with the binaries in `bin_dir`; panics with the server's log when it does not come up.
fn start(bin_dir: &Path) -> PgCluster {
    let dir = tempfile::Builder::new().prefix("hookrelay-pg-").tempdir().expect("create the cluster directory").keep();
    let owner = run_as(&dir);
    let data = dir.join("data");
    let initdb = prefixed(&owner, bin_dir.join("initdb"))
        .args(["-D".as_ref(), data.as_os_str()])
        .args(["-U", SUPERUSER, "--auth=trust", "--no-sync", "--locale=C", "--encoding=UTF8"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run initdb");
    if !initdb.status.success() {
        let _ = fs::remove_dir_all(&dir);
        panic!("initdb failed: {}{}", String::from_utf8_lossy(&initdb.stdout), String::from_utf8_lossy(&initdb.stderr));
    }
    let port = free_port();
    let settings = [
        format!("port={port}"),
        "listen_addresses=127.0.0.1".to_owned(),
        format!("unix_socket_directories={}", dir.display()),
        "fsync=off".to_owned(),
        "synchronous_commit=off".to_owned(),
        "full_page_writes=off".to_owned(),
        "shared_buffers=32MB".to_owned(),
        // Every test opens its own pool; several test threads, and the 50-way concurrency tests, run at once.
        "max_connections=300".to_owned(),
    ];
    let mut server = prefixed(&owner, bin_dir.join("postgres"));
    server.args(["-D".as_ref(), data.as_os_str()]);
    for setting in &settings {
        server.args(["-c", setting]);
    }
    let mut supervisor = Command::new("sh");
    supervisor.args(["-c", SUPERVISOR, "sh"]).arg(&dir).arg(server.get_program()).args(server.get_args());
    // A working directory the server's user can enter: postgres looks up its own.
    supervisor.current_dir(&dir);
    // A process group of its own: a signal to the test's group (Ctrl-C, a killed job) reaches only the test
    // process, whose exit then stops the server and removes the directory.
    supervisor.process_group(0);
    let mut child = supervisor.stdin(Stdio::piped()).stdout(Stdio::null()).spawn().expect("start postgres under sh");
    let lifeline = child.stdin.take().expect("piped stdin");
    let cluster = PgCluster { port, bin_dir: bin_dir.to_owned(), _lifeline: Mutex::new(lifeline) };
    wait_until_ready(&cluster, &mut child);
    // The supervisor is not waited for: it ends after this process, when the pipe closes.
    std::mem::forget(child);
    cluster
}

/// Polls until the server answers a query; panics when the supervisor ends first or the deadline passes.
fn wait_until_ready(cluster: &PgCluster, supervisor: &mut Child) {
    let started = Instant::now();
    let mut interval = Duration::from_millis(10);
    loop {
        let last = match cluster.try_psql("postgres", "SELECT 1") {
            Ok(_) => return,
            Err(error) => error,
        };
        if let Ok(Some(status)) = supervisor.try_wait() {
            panic!("postgres exited during startup ({status}); its log is above");
        }
        if started.elapsed() > STARTUP_DEADLINE {
            let _ = writeln!(std::io::stderr(), "postgres did not start; stopping it");
            drop(supervisor.stdin.take());
            panic!("postgres did not accept connections within {STARTUP_DEADLINE:?}: {last}");
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}

/// The user to run the server as: `None` for the current one, or `nobody`'s (uid, gid) when running as root, in
/// which case `dir` is handed over to it.
fn run_as(dir: &Path) -> Option<(u32, u32)> {
    let uid = fs::metadata("/proc/self").map(|meta| meta.uid()).unwrap_or_else(|_| current_uid_from_id());
    if uid != 0 {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd to find the user nobody");
    let ids = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 3 && fields[0] == "nobody")
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .expect("postgres refuses to run as root, and there is no user nobody to run it as");
    chown(dir, Some(ids.0), Some(ids.1)).expect("hand the cluster directory to nobody");
    Some(ids)
}

fn current_uid_from_id() -> u32 {
    let output = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("id -u prints a number")
}

/// `program`, run as `owner` through `setpriv` when one is given.
fn prefixed(owner: &Option<(u32, u32)>, program: PathBuf) -> Command {
    match owner {
        None => Command::new(program),
        Some((uid, gid)) => {
            // setpriv execs the program itself (runuser would fork), so the supervisor's kill reaches postgres.
            let mut command = Command::new("setpriv");
            command.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".to_owned()]);
            command.arg("--").arg(program);
            command
        }
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("read the bound port").port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_serves_fresh_databases() {
        let Some(cluster) = postgres() else { return };
        let first = cluster.fresh_database();
        let second = cluster.fresh_database();
        assert_ne!(first, second);
        let name = first.rsplit('/').next().unwrap();
        cluster.psql(name, "CREATE TABLE t (x int); INSERT INTO t VALUES (7)");
        assert_eq!(cluster.psql(name, "SELECT x FROM t"), "7");
        assert_eq!(cluster.psql("postgres", "SHOW fsync"), "off");
        assert!(std::ptr::eq(cluster, postgres().unwrap()), "one cluster per test binary");
    }
}
