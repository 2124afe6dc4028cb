//! Real `hookrelay-control` and `hookrelay-agent` child processes.
//!
//! A [`Node`] is one logical server: it keeps its data dir and, after the first start on `127.0.0.1:0`, its port,
//! so it can be killed (`kill -9`), stopped (SIGTERM) and started again as the same node. Its stderr is appended to
//! a log file whose tail is printed when the test fails (when the node is dropped during a panic). Children are
//! killed when their handle is dropped, so a failing test leaves nothing behind. [`Control`] and [`Agent`] are nodes
//! of the two binaries with the flags every test needs; they dereference to their [`Node`].

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use hookrelay_common::proto::v1::admin_service_client::AdminServiceClient;
use hookrelay_common::proto::v1::emit_service_client::EmitServiceClient;

use crate::{DEADLINE, api, unique};

/// Name of the control binary.
pub const CONTROL_BIN: &str = "hookrelay-control";
/// Name of the agent binary.
pub const AGENT_BIN: &str = "hookrelay-agent";

/// Where the hookrelay binaries are: `HOOKRELAY_BIN_DIR`, else the profile directory of the running executable
/// (`target/<profile>/deps/test-x` or `target/<profile>/hookrelay-bench` → `target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HOOKRELAY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the path of the running executable");
    let mut dir = exe.parent().expect("the executable's directory").to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    dir
}

/// The path of a hookrelay binary, or a panic that says how to build it.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} does not exist: run `cargo test --workspace`, which builds it (or `cargo build -p {name}`), \
         or point HOOKRELAY_BIN_DIR at a directory that has it",
        path.display()
    );
    path
}

/// One logical server process: its binary, arguments, data dir, port and stderr log, across restarts.
pub struct Node {
    label: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    env_remove: Vec<String>,
    // The variable that gives the listening address instead of `--listen`.
    listen_env: Option<String>,
    // Holds `data/` and `stderr.log`; removed when the node is dropped.
    root: TempDir,
    addr: Option<SocketAddr>,
    child: Option<Child>,
    starts: u32,
    // The first stdout line of the last start, and where its stderr begins in the log.
    listening_line: String,
    stderr_from: u64,
}

impl Node {
    /// A node that runs `program` with `args` (and `--listen`, added by [`Node::start`]); not started yet.
    pub fn new(label: impl Into<String>, program: PathBuf, args: Vec<OsString>) -> Self {
        let root = tempfile::Builder::new().prefix("hookrelay-test-").tempdir().expect("a temporary directory");
        std::fs::create_dir_all(root.path().join("data")).expect("the data dir");
        Self {
            label: label.into(),
            program,
            args,
            envs: Vec::new(),
            env_remove: Vec::new(),
            listen_env: None,
            root,
            addr: None,
            child: None,
            starts: 0,
            listening_line: String::new(),
            stderr_from: 0,
        }
    }

    /// The data dir, the same across restarts.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The stderr log of every start, with a marker line before each.
    pub fn stderr_path(&self) -> PathBuf {
        self.root.path().join("stderr.log")
    }

    /// The address the node listens on; known after the first start.
    pub fn addr(&self) -> SocketAddr {
        self.addr.unwrap_or_else(|| panic!("{} has not been started", self.label))
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The first line the last start printed on stdout, `<binary> listening on ADDR`.
    pub fn listening_line(&self) -> &str {
        &self.listening_line
    }

    /// The process id of the running child.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether a child runs now.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the process: on `127.0.0.1:0` the first time, on the same address afterwards. Waits for the stdout
    /// line `... listening on ADDR` and returns once it came. A restart whose port is still briefly taken is tried
    /// again until [`DEADLINE`].
    pub async fn start(&mut self) {
        assert!(!self.is_running(), "{} is already running", self.label);
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.try_start(deadline).await {
                Ok(addr) => {
                    if let Some(previous) = self.addr {
                        assert_eq!(previous, addr, "{} came back on another address", self.label);
                    }
                    self.addr = Some(addr);
                    return;
                }
                // The port of a restarted node can be held for a moment by a connection of the previous run.
                Err(error) if self.addr.is_some() && error.contains("in use") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("{} did not start: {error}\n{}", self.label, self.stderr_report(60)),
            }
        }
    }

    /// Starts it again on the same port and data dir.
    pub async fn restart(&mut self) {
        self.start().await;
    }

    async fn try_start(&mut self, deadline: Instant) -> Result<SocketAddr, String> {
        self.starts += 1;
        let listen = self.addr.map_or_else(|| "127.0.0.1:0".to_owned(), |addr| addr.to_string());
        let log_path = self.stderr_path();
        let mut log = OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| e.to_string())?;
        let mut args = self.args.clone();
        let mut command = Command::new(&self.program);
        match &self.listen_env {
            Some(name) => {
                command.env(name, &listen);
            }
            None => args.extend(["--listen".into(), listen.into()]),
        }
        writeln!(log, "===== start #{} of {}: {} {:?}", self.starts, self.label, self.program.display(), args)
            .map_err(|e| e.to_string())?;
        self.stderr_from = log.metadata().map_err(|e| e.to_string())?.len();
        let stderr = log.try_clone().map_err(|e| e.to_string())?;
        for name in &self.env_remove {
            command.env_remove(name);
        }
        let mut child = command
            .args(&args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .env("RUST_BACKTRACE", "1")
            .envs(self.envs.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", self.program.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);

        // A thread reads stdout for as long as the child lives: the first line goes to us, the rest to the log.
        let (lines_tx, mut lines_rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || forward_stdout(stdout, lines_tx, log));

        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = match tokio::time::timeout(remaining, lines_rx.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                let status = self.wait_exit(Duration::from_secs(5));
                let tail = tail_lines(&log_path, 20);
                return Err(format!("exited ({status:?}) before printing its listening line; stderr: {tail}"));
            }
            Err(_) => {
                self.kill9();
                return Err(format!("printed no listening line within {DEADLINE:?}"));
            }
        };
        let addr = line
            .rsplit_once(" listening on ")
            .and_then(|(_, addr)| addr.trim().parse::<SocketAddr>().ok())
            .ok_or_else(|| format!("unexpected first stdout line {line:?} (expected `... listening on ADDR`)"))?;
        self.listening_line = line;
        Ok(addr)
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let until = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }

    /// Kills the process with SIGKILL (`kill -9`) and reaps it. Its data dir and port stay for a restart.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (up to [`DEADLINE`]) for the process to exit; returns its exit status. Panics if it
    /// does not exit in time (after killing it).
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid().unwrap_or_else(|| panic!("{} is not running", self.label));
        let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run `kill -TERM`");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let child = self.child.as_mut().expect("running child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                self.kill9();
                panic!("{} did not exit within {DEADLINE:?} of SIGTERM\n{}", self.label, self.stderr_report(60));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the process of the last start wrote on stderr (the log from that start's marker line on, without the
    /// stdout lines forwarded to it).
    pub fn stderr_of_last_start(&self) -> String {
        let mut log = File::open(self.stderr_path()).expect("the stderr log");
        log.seek(SeekFrom::Start(self.stderr_from)).expect("seek in the stderr log");
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes).expect("read the stderr log");
        let text = String::from_utf8_lossy(&bytes);
        text.lines().filter(|line| !line.starts_with(STDOUT_MARK)).map(|line| format!("{line}\n")).collect()
    }

    /// The last `lines` lines of the stderr log, framed for a failure message.
    pub fn stderr_report(&self, lines: usize) -> String {
        format!(
            "----- last {lines} lines of {} stderr ({}) -----\n{}\n----- end of {} stderr -----",
            self.label,
            self.stderr_path().display(),
            tail_lines(&self.stderr_path(), lines),
            self.label
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.stderr_report(80));
        }
    }
}

/// How the stderr log marks the stdout lines after the first.
const STDOUT_MARK: &str = "[stdout] ";

fn forward_stdout(stdout: std::process::ChildStdout, first: mpsc::UnboundedSender<String>, mut log: File) {
    let mut first = Some(first);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        match first.take() {
            Some(sender) => {
                let _ = sender.send(line);
            }
            None => {
                let _ = writeln!(log, "{STDOUT_MARK}{line}");
            }
        }
    }
}

/// The last `lines` lines of a text file (lossily decoded), or a note that it cannot be read.
pub fn tail_lines(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// How to run a control process.
#[derive(Debug, Clone, Default)]
pub struct ControlOpts {
    /// Extra flags after the ones the harness always passes (`--data-dir`, `--allow-insecure-endpoints`,
    /// `--allowed-cidrs`).
    pub extra_args: Vec<String>,
    /// Use this binary instead of the one in [`bin_dir`].
    pub program: Option<PathBuf>,
    /// Extra environment, e.g. `RUST_LOG` (which otherwise is the caller's or `info`).
    pub envs: Vec<(String, String)>,
    /// Variables of the caller's environment the process does not inherit.
    pub env_remove: Vec<String>,
    /// Give the listening address in this variable (`HOOKRELAY_CONTROL_LISTEN`) instead of `--listen`.
    pub listen_env: Option<String>,
}

/// A running (or stopped) `hookrelay-control`; the [`Node`] it dereferences to restarts, stops and kills it.
pub struct Control {
    node: Node,
}

/// Starts a control process with the defaults of [`ControlOpts`].
pub async fn spawn_control() -> Control {
    spawn_control_with(ControlOpts::default()).await
}

/// Starts a control process on `127.0.0.1:0` with a temporary data dir, `--allow-insecure-endpoints` and loopback
/// allowed (`--allowed-cidrs 127.0.0.0/8,::1/128`, as for agents): test receivers are `http://127.0.0.1`.
pub async fn spawn_control_with(opts: ControlOpts) -> Control {
    let program = opts.program.unwrap_or_else(|| binary(CONTROL_BIN));
    let mut node = Node::new("control", program, Vec::new());
    let mut args: Vec<OsString> =
        vec!["--data-dir".into(), node.data_dir().into(), "--allow-insecure-endpoints".into()];
    args.extend(["--allowed-cidrs".into(), "127.0.0.0/8,::1/128".into()]);
    args.extend(opts.extra_args.into_iter().map(OsString::from));
    node.args = args;
    node.envs = opts.envs;
    node.env_remove = opts.env_remove;
    node.listen_env = opts.listen_env;
    node.start().await;
    Control { node }
}

impl Control {
    /// An admin client, connected (with retries until [`DEADLINE`]).
    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(api::connect(self.addr()).await)
    }
}

impl Deref for Control {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl DerefMut for Control {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

/// How to run an agent process.
#[derive(Debug, Clone)]
pub struct AgentOpts {
    /// `--control-url`.
    pub control_url: String,
    /// `--node-name`; a unique name when `None`.
    pub node_name: Option<String>,
    /// Extra flags after the ones the harness always passes.
    pub extra_args: Vec<String>,
    /// Use this binary instead of the one in [`bin_dir`].
    pub program: Option<PathBuf>,
    /// Extra environment, e.g. `RUST_LOG` (which otherwise is the caller's or `info`).
    pub envs: Vec<(String, String)>,
    /// `--data-dir`; a directory in the node's temporary root when `None`.
    pub data_dir: Option<PathBuf>,
}

impl AgentOpts {
    /// An agent of the control at `control_url`.
    pub fn new(control_url: impl Into<String>) -> Self {
        Self {
            control_url: control_url.into(),
            node_name: None,
            extra_args: Vec::new(),
            program: None,
            envs: Vec::new(),
            data_dir: None,
        }
    }
}

/// A running (or stopped) `hookrelay-agent`; the [`Node`] it dereferences to restarts, stops and kills it.
pub struct Agent {
    node: Node,
    node_name: String,
}

/// Starts an agent of `control`.
pub async fn spawn_agent(control: &Control) -> Agent {
    spawn_agent_with(AgentOpts::new(control.url())).await
}

/// Starts an agent on `127.0.0.1:0` with a temporary data dir, a unique node name and loopback allowed as a
/// delivery target (`--allowed-cidrs 127.0.0.0/8,::1/128`).
pub async fn spawn_agent_with(opts: AgentOpts) -> Agent {
    let program = opts.program.unwrap_or_else(|| binary(AGENT_BIN));
    let node_name = opts.node_name.unwrap_or_else(|| unique("agent"));
    let mut node = Node::new(format!("agent {node_name}"), program, Vec::new());
    let mut args: Vec<OsString> = vec![
        "--data-dir".into(),
        opts.data_dir.unwrap_or_else(|| node.data_dir()).into(),
        "--control-url".into(),
        opts.control_url.into(),
        "--node-name".into(),
        node_name.clone().into(),
        "--allowed-cidrs".into(),
        "127.0.0.0/8,::1/128".into(),
    ];
    args.extend(opts.extra_args.into_iter().map(OsString::from));
    node.args = args;
    node.envs = opts.envs;
    node.start().await;
    Agent { node, node_name }
}

impl Agent {
    /// `--node-name`, as `ListAgents` shows it.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// An emit client, connected (with retries until [`DEADLINE`]).
    pub async fn emitter(&self) -> EmitServiceClient<Channel> {
        EmitServiceClient::new(api::connect(self.addr()).await)
    }
}

impl Deref for Agent {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}
