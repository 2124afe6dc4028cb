//! `hookrelay dev`: the whole system on loopback with no external service, for a first look and for trying changes.
//!
//! It starts `hookrelay-control` and `hookrelay-agent` from the directory of this executable (each in its own
//! process group, so a terminal's Ctrl-C reaches only this process, which then stops them in order), waits for each
//! to print its `listening on` line, serves the [demo receiver](crate::demo_receiver) in-process, creates the owner
//! `demo`, the event type `demo.hello` and an endpoint to the receiver (all idempotently: a re-run reuses them and
//! the secret kept in the data directory), emits a first event and prints the commands to try next.
//!
//! Data directory layout: `control/` and `agent/` (the services' data), `control.log` and `agent.log` (their
//! standard error), `demo-endpoint.json` (the demo endpoint's id and signing secret, mode 0600).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::proto::v1::admin_service_client::AdminServiceClient;
use hookrelay_common::signing::Secret;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tonic::Code;

use crate::args::{DEFAULT_AGENT_URL, DEFAULT_CONTROL_URL, DevArgs};
use crate::client::{CallResult as _, CliError, Target, code_name};
use crate::demo_receiver::{self, ReceiverState};

const OWNER: &str = "demo";
/// The agent's node name, as `agent list` shows it.
const AGENT_NODE_NAME: &str = "dev";
const EVENT_TYPE: &str = "demo.hello";
/// Marks the endpoint this command manages, so a re-run finds it among the owner's endpoints.
const ENDPOINT_DESCRIPTION: &str = "hookrelay dev demo receiver";
const SECRET_FILE: &str = "demo-endpoint.json";
/// How long a service may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a service may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to learn about the demo endpoint from control.
const CONFIG_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn run(args: DevArgs) -> Result<(), CliError> {
    let binaries = Binaries::find()?;
    let mut shutdown = ShutdownSignal::install().context("cannot install the Ctrl-C handler")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data directory {}", args.data_dir.display()))?;
    let data_dir = std::path::absolute(&args.data_dir).unwrap_or_else(|_| args.data_dir.clone());

    let mut services: Vec<Service> = Vec::new();
    let outcome = tokio::select! {
        outcome = start_and_watch(&args, &binaries, &data_dir, &mut services) => outcome,
        signal = shutdown.recv() => {
            eprintln!("\n{signal}: stopping");
            Ok(())
        }
    };
    // Agent first, so it can still report to control while it drains.
    for service in services.iter_mut().rev() {
        service.stop().await;
    }
    outcome
}

/// Starts everything, then waits until a service exits on its own (an error: dev runs until Ctrl-C).
async fn start_and_watch(
    args: &DevArgs,
    binaries: &Binaries,
    data_dir: &Path,
    services: &mut Vec<Service>,
) -> Result<(), CliError> {
    // The receiver binds first: a port conflict then fails before anything was started.
    let (listener, receiver_address) = demo_receiver::bind(args.receiver_port).await.with_context(|| {
        format!(
            "cannot listen on 127.0.0.1:{} for the demo receiver; choose another port with --receiver-port",
            args.receiver_port
        )
    })?;
    let receiver = Arc::new(ReceiverState::default());
    let stored = StoredEndpoint::load(data_dir);
    if let Some(stored) = &stored {
        // Deliveries still queued from an earlier run can verify from the first moment.
        receiver.set_secret(stored.secret()?);
    }
    tokio::spawn(demo_receiver::serve(listener, Arc::clone(&receiver)));

    let control_address = format!("127.0.0.1:{}", args.control_port);
    let control_data = data_dir.join("control");
    let control_log = data_dir.join("control.log");
    let control = Service::start(
        "hookrelay-control",
        &binaries.control,
        &[
            "--listen",
            &control_address,
            "--data-dir",
            path_arg(&control_data)?,
            "--allow-insecure-endpoints",
            // So `endpoint verify` can reach the demo receiver on loopback.
            "--allowed-cidrs",
            "127.0.0.0/8,::1/128",
        ],
        &control_log,
    )
    .await?;
    services.push(control);
    let control_url = format!("http://{}", services[0].address);

    let agent_address = format!("127.0.0.1:{}", args.agent_port);
    let agent_data = data_dir.join("agent");
    let agent_log = data_dir.join("agent.log");
    let agent = Service::start(
        "hookrelay-agent",
        &binaries.agent,
        &[
            "--listen",
            &agent_address,
            "--control-url",
            &control_url,
            "--data-dir",
            path_arg(&agent_data)?,
            "--node-name",
            AGENT_NODE_NAME,
            "--allowed-cidrs",
            "127.0.0.0/8,::1/128",
        ],
        &agent_log,
    )
    .await?;
    services.push(agent);
    let agent_url = format!("http://{}", services[1].address);

    let control = Target::control(control_url.clone());
    let agent = Target::agent(agent_url.clone());
    let receiver_url = format!("http://{receiver_address}{}", demo_receiver::PATH);
    let mut admin = control.admin().await?;
    let endpoint = ensure_demo_setup(&mut admin, &control, &receiver_url, data_dir, stored).await?;
    receiver.set_secret(endpoint.secret()?);

    let first = emit_first_event(&agent).await?;
    let delivery_id = wait_for_delivery(&mut admin, &first.id).await;

    print_next_steps(&NextSteps {
        control_url: &control_url,
        agent_url: &agent_url,
        receiver_url: &receiver_url,
        data_dir,
        endpoint_id: &endpoint.endpoint_id,
        delivery_id: delivery_id.as_deref(),
    });

    let (name, status) = Service::wait_any(services).await;
    Err(anyhow!("{name} exited unexpectedly ({status}); see its log in {}", data_dir.display()).into())
}

/// The service binaries, found next to this executable.
struct Binaries {
    control: PathBuf,
    agent: PathBuf,
}

impl Binaries {
    fn find() -> Result<Self, CliError> {
        let exe = std::env::current_exe().context("cannot tell where this executable is")?;
        let dir = exe.parent().ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
        let path = |name: &str| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        let (control, agent) = (path("hookrelay-control"), path("hookrelay-agent"));
        let missing: Vec<String> = [&control, &agent]
            .into_iter()
            .filter(|path| !path.is_file())
            .map(|path| path.display().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(anyhow!(
                "hookrelay dev runs the binaries next to this one, and {} missing.\n\
                 Run `cargo build --release` first (it builds hookrelay, hookrelay-control and hookrelay-agent into \
                 target/release/), then `target/release/hookrelay dev`.",
                match missing.as_slice() {
                    [one] => format!("{one} is"),
                    _ => format!("{} are", missing.join(" and ")),
                }
            )
            .into());
        }
        Ok(Self { control, agent })
    }
}

fn path_arg(path: &Path) -> Result<&str, CliError> {
    Ok(path.to_str().ok_or_else(|| anyhow!("the data directory {} is not valid UTF-8", path.display()))?)
}

/// A child process: one of hookrelay's services.
struct Service {
    name: &'static str,
    child: Child,
    address: SocketAddr,
    log: PathBuf,
}

impl Service {
    /// Spawns the service and waits for its `listening on ADDRESS` line.
    async fn start(name: &'static str, binary: &Path, args: &[&str], log: &Path) -> Result<Self, CliError> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("cannot create the log file {}", log.display()))?;
        let mut command = Command::new(binary);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file).kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();

        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some((_, address)) = line.split_once("listening on ") {
                    return Ok(Some(address.trim().to_owned()));
                }
                println!("[{name}] {line}");
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let address = match ready {
            Ok(Ok(Some(address))) => address,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = child.wait().await.map(|status| status.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(anyhow!("{name} exited before it was listening ({status}){}", log_tail(log)).into());
            }
            Err(_) => {
                let _ = child.kill().await;
                return Err(anyhow!(
                    "{name} did not print its \"listening on\" line within {}s{}",
                    START_TIMEOUT.as_secs(),
                    log_tail(log)
                )
                .into());
            }
        };
        let address =
            address.parse().with_context(|| format!("{name} printed an address that is not IP:PORT: {address:?}"))?;
        // Keep reading, so the child never writes into a closed pipe.
        tokio::spawn(forward_lines(name, lines));
        Ok(Self { name, child, address, log: log.to_owned() })
    }

    /// Waits until any of `services` exits; returns its name and status.
    async fn wait_any(services: &mut [Service]) -> (&'static str, String) {
        let waits = services.iter_mut().map(|service| {
            Box::pin(async move {
                let status = service.child.wait().await;
                (service.name, describe_exit(status))
            })
        });
        futures::future::select_all(waits).await.0
    }

    /// SIGTERM, then SIGKILL if it has not stopped within [`STOP_TIMEOUT`].
    async fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        terminate(&mut self.child);
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => eprintln!("stopped {} ({})", self.name, describe_exit(status)),
            Err(_) => {
                eprintln!(
                    "{} did not stop within {}s; killing it (its log: {})",
                    self.name,
                    STOP_TIMEOUT.as_secs(),
                    self.log.display()
                );
                let _ = self.child.kill().await;
            }
        }
    }
}

#[cfg(unix)]
fn terminate(child: &mut Child) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

#[cfg(not(unix))]
fn terminate(child: &mut Child) {
    let _ = child.start_kill();
}

fn describe_exit(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("cannot tell how it exited: {error}"),
    }
}

async fn forward_lines(name: &'static str, mut lines: tokio::io::Lines<BufReader<ChildStdout>>) {
    while let Ok(Some(line)) = lines.next_line().await {
        println!("[{name}] {line}");
    }
}

/// The last lines of a log, to show why a service did not start. A backtrace (`RUST_BACKTRACE` set) would push the
/// error itself out of view, so the tail is taken from what comes before it.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> =
        text.lines().take_while(|line| !line.trim().eq_ignore_ascii_case("stack backtrace:")).collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n").trim_end().to_owned();
    if tail.trim().is_empty() {
        format!("; its log {} is empty", log.display())
    } else {
        format!("; the end of its log {}:\n{tail}", log.display())
    }
}

/// SIGINT (Ctrl-C) or SIGTERM, registered up front so a signal during start-up is not lost.
struct ShutdownSignal {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    #[cfg(unix)]
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }

    #[cfg(not(unix))]
    fn install() -> std::io::Result<Self> {
        Ok(Self {})
    }

    /// Which signal arrived.
    #[cfg(unix)]
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "interrupted",
            _ = self.terminate.recv() => "terminated",
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted"
    }
}

/// The demo endpoint's id and secret, kept in the data directory so a re-run still verifies signatures.
#[derive(Debug, Serialize, Deserialize)]
struct StoredEndpoint {
    endpoint_id: String,
    secret: String,
}

impl StoredEndpoint {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(SECRET_FILE)
    }

    /// The stored endpoint, if a readable file is there.
    fn load(data_dir: &Path) -> Option<Self> {
        let text = std::fs::read(Self::path(data_dir)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn save(&self, data_dir: &Path) -> Result<(), CliError> {
        let path = Self::path(data_dir);
        let text = serde_json::to_vec_pretty(self).expect("serializes");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).with_context(|| format!("cannot write {}", path.display()))?;
        std::io::Write::write_all(&mut file, &text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    fn secret(&self) -> Result<Secret, CliError> {
        Ok(Secret::parse(&self.secret).map_err(|error| anyhow!("the stored demo secret is unusable: {error}"))?)
    }
}

/// Ignores ALREADY_EXISTS, so the setup can run on every start.
fn created_or_exists<T>(result: Result<tonic::Response<T>, tonic::Status>, target: &Target) -> Result<(), CliError> {
    match result {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::AlreadyExists => Ok(()),
        Err(status) => Err(target.call_error(status)),
    }
}

/// Creates what the demo needs, or reuses what an earlier run created.
async fn ensure_demo_setup(
    admin: &mut AdminServiceClient<crate::client::Authed>,
    control: &Target,
    receiver_url: &str,
    data_dir: &Path,
    stored: Option<StoredEndpoint>,
) -> Result<StoredEndpoint, CliError> {
    let owner = pb::CreateOwnerRequest { id: OWNER.to_owned(), name: "Demo (hookrelay dev)".to_owned() };
    created_or_exists(admin.create_owner(owner).await, control)?;
    let event_type = pb::CreateEventTypeRequest {
        name: EVENT_TYPE.to_owned(),
        description: "A greeting, emitted by hookrelay dev".to_owned(),
    };
    created_or_exists(admin.create_event_type(event_type).await, control)?;

    if let Some(stored) = stored {
        match admin.get_endpoint(pb::GetEndpointRequest { id: stored.endpoint_id.clone() }).await {
            Ok(found) => {
                let applied_before = agent_applied_version(admin).await;
                if reuse_endpoint(admin, control, found.into_inner(), receiver_url).await? {
                    // The agent may run from a cached config with the old URL: let it apply the change first, so
                    // the first event does not start with a failed attempt.
                    wait_for_agent_config(admin, applied_before).await;
                }
                return Ok(stored);
            }
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(control.call_error(status)),
        }
    }

    // Endpoints an earlier run made whose secret is lost cannot be verified against: replace them, so they do not
    // pile up failing deliveries.
    let mut page_token = String::new();
    let mut orphans = Vec::new();
    loop {
        let request = pb::ListEndpointsRequest { owner_id: OWNER.to_owned(), page_size: 100, page_token };
        let page = admin.list_endpoints(request).await.or_cli(control)?;
        orphans.extend(page.endpoints.into_iter().filter(|endpoint| endpoint.description == ENDPOINT_DESCRIPTION));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    for orphan in orphans {
        eprintln!("replacing demo endpoint {}: its secret is not in {}", orphan.id, data_dir.display());
        admin.delete_endpoint(pb::DeleteEndpointRequest { id: orphan.id }).await.or_cli(control)?;
    }

    let request = pb::CreateEndpointRequest {
        owner_id: OWNER.to_owned(),
        url: receiver_url.to_owned(),
        description: ENDPOINT_DESCRIPTION.to_owned(),
        filter_types: vec!["*".to_owned()],
        // Short retries, so a refused delivery shows its next attempts within a minute.
        retry_policy: Some(pb::RetryPolicy { schedule_ms: vec![1_000, 5_000, 30_000] }),
        insecure: true,
        ..Default::default()
    };
    let created = admin.create_endpoint(request).await.or_cli(control)?;
    let endpoint = created.endpoint.ok_or_else(|| anyhow!("control answered CreateEndpoint without the endpoint"))?;
    let stored = StoredEndpoint { endpoint_id: endpoint.id, secret: created.secret };
    stored.save(data_dir)?;
    Ok(stored)
}

/// Points a stored endpoint at this run's receiver and makes sure it is enabled. Returns whether it changed.
async fn reuse_endpoint(
    admin: &mut AdminServiceClient<crate::client::Authed>,
    control: &Target,
    endpoint: pb::Endpoint,
    receiver_url: &str,
) -> Result<bool, CliError> {
    let mut changed = false;
    if endpoint.url != receiver_url || !endpoint.insecure {
        changed = true;
        let request = pb::UpdateEndpointRequest {
            id: endpoint.id.clone(),
            url: Some(receiver_url.to_owned()),
            insecure: Some(true),
            ..Default::default()
        };
        admin.update_endpoint(request).await.or_cli(control)?;
    }
    if !endpoint.enabled {
        changed = true;
        eprintln!("enabling demo endpoint {} (disabled: {})", endpoint.id, endpoint.disabled_reason);
        admin.enable_endpoint(pb::EnableEndpointRequest { id: endpoint.id }).await.or_cli(control)?;
    }
    Ok(changed)
}

/// The config version the `dev` agent last acknowledged, as control knows it (0 when unknown).
async fn agent_applied_version(admin: &mut AdminServiceClient<crate::client::Authed>) -> u64 {
    let Ok(response) = admin.list_agents(pb::ListAgentsRequest {}).await else { return 0 };
    response
        .into_inner()
        .agents
        .into_iter()
        .find(|agent| agent.node_name == AGENT_NODE_NAME)
        .map_or(0, |agent| agent.applied_version)
}

/// Waits, at most [`CONFIG_TIMEOUT`], until the agent acknowledges a config newer than `before`. Control's version
/// moved past `before` with our change, so a newer acknowledgement includes it. Giving up is harmless: the delivery
/// is then retried against the new URL.
async fn wait_for_agent_config(admin: &mut AdminServiceClient<crate::client::Authed>, before: u64) {
    let deadline = tokio::time::Instant::now() + CONFIG_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if agent_applied_version(admin).await > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Emits the first event once the agent knows the demo endpoint. Control streams config to the agent
/// asynchronously, so the agent may first answer UNAVAILABLE (no config yet), refuse the owner or type (not in its
/// config yet) or accept with no delivery (endpoint not in its config yet); each of those is retried with a new id.
async fn emit_first_event(agent: &Target) -> Result<pb::EmitResponse, CliError> {
    let mut client = agent.emit().await?;
    let deadline = tokio::time::Instant::now() + CONFIG_TIMEOUT;
    loop {
        let request = pb::EmitRequest {
            owner: OWNER.to_owned(),
            r#type: EVENT_TYPE.to_owned(),
            payload: br#"{"hello":"world","from":"hookrelay dev"}"#.to_vec(),
            ..Default::default()
        };
        let last = match client.emit(request).await {
            Ok(response) if response.get_ref().deliveries > 0 => return Ok(response.into_inner()),
            Ok(_) => "accepted with no delivery: the agent does not know the demo endpoint yet".to_owned(),
            Err(status) if matches!(status.code(), Code::Unavailable | Code::InvalidArgument) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(agent.call_error(status));
                }
                format!("{}: {}", code_name(status.code()), status.message())
            }
            Err(status) => return Err(agent.call_error(status)),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!(
                "the agent did not receive the demo configuration from control within {}s (last answer: {last}); \
                 see agent.log and control.log in the data directory",
                CONFIG_TIMEOUT.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first event's delivery id, once the agent has reported it to control (a few seconds at most).
async fn wait_for_delivery(admin: &mut AdminServiceClient<crate::client::Authed>, event_id: &str) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let request = pb::ListDeliveriesRequest { owner_id: OWNER.to_owned(), page_size: 20, ..Default::default() };
        if let Ok(page) = admin.list_deliveries(request).await {
            let found = page.into_inner().deliveries.into_iter().find(|delivery| delivery.event_id == event_id);
            if let Some(delivery) = found {
                return Some(delivery.id);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

struct NextSteps<'a> {
    control_url: &'a str,
    agent_url: &'a str,
    receiver_url: &'a str,
    data_dir: &'a Path,
    endpoint_id: &'a str,
    delivery_id: Option<&'a str>,
}

fn print_next_steps(steps: &NextSteps<'_>) {
    println!("{}", next_steps_text(steps, &invoked_as()));
}

/// How this program was started, so printed commands can be pasted as they are.
fn invoked_as() -> String {
    std::env::args().next().filter(|arg0| !arg0.is_empty()).unwrap_or_else(|| "hookrelay".to_owned())
}

fn next_steps_text(steps: &NextSteps<'_>, program: &str) -> String {
    let mut cli = program.to_owned();
    if steps.control_url != DEFAULT_CONTROL_URL {
        cli.push_str(&format!(" --control {}", steps.control_url));
    }
    let mut emit_cli = cli.clone();
    if steps.agent_url != DEFAULT_AGENT_URL {
        emit_cli.push_str(&format!(" --agent {}", steps.agent_url));
    }
    let data = steps.data_dir.display();
    let delivery = steps.delivery_id.unwrap_or("<DELIVERY_ID from the list>");
    format!(
        "
hookrelay dev is running; Ctrl-C stops everything.
  control   {control} (gRPC; log: {data}/control.log)
  agent     {agent} (gRPC and HTTP POST /v1/events; log: {data}/agent.log)
  receiver  {receiver} (verifies each signature, prints each delivery here)
  endpoint  {endpoint} (owner {OWNER}, every event type; its secret is in {data}/{SECRET_FILE})

Try, from another terminal:
  # emit an event with the CLI (gRPC)
  {emit_cli} emit --owner {OWNER} --type {EVENT_TYPE} --payload '{{\"hello\":\"again\"}}'
  # emit an event over HTTP
  curl -sS -X POST {agent}/v1/events -H 'content-type: application/json' \\
    -d '{{\"owner\":\"{OWNER}\",\"type\":\"{EVENT_TYPE}\",\"payload\":{{\"hello\":\"from curl\"}}}}'
  # what was delivered, then one delivery with all its attempts
  {cli} delivery list --owner {OWNER}
  {cli} delivery get {delivery}
  # the endpoint, the agents
  {cli} endpoint get {endpoint}
  {cli} agent list
",
        control = steps.control_url,
        agent = steps.agent_url,
        receiver = steps.receiver_url,
        endpoint = steps.endpoint_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_steps_name_non_default_addresses() {
        let steps = NextSteps {
            control_url: DEFAULT_CONTROL_URL,
            agent_url: "http://127.0.0.1:7201",
            receiver_url: "http://127.0.0.1:7300/webhook",
            data_dir: Path::new("/tmp/dev"),
            endpoint_id: "ep_1",
            delivery_id: Some("dlv_1"),
        };
        let text = next_steps_text(&steps, "target/debug/hookrelay");
        assert!(text.contains(
            "target/debug/hookrelay --agent http://127.0.0.1:7201 emit --owner demo --type demo.hello --payload"
        ));
        assert!(text.contains("curl -sS -X POST http://127.0.0.1:7201/v1/events"));
        assert!(text.contains("\n  target/debug/hookrelay delivery get dlv_1\n"));
        assert!(text.contains("its secret is in /tmp/dev/demo-endpoint.json"));
    }

    #[test]
    fn log_tails_leave_backtraces_out() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("control.log");
        std::fs::write(&log, "Error: cannot listen\n\nCaused by:\n    in use\n\nStack backtrace:\n   0: main\n")
            .unwrap();
        let tail = log_tail(&log);
        assert!(tail.ends_with(":\nError: cannot listen\n\nCaused by:\n    in use"), "{tail}");
        std::fs::write(&log, "").unwrap();
        assert!(log_tail(&log).ends_with("is empty"));
    }

    #[test]
    fn the_stored_secret_round_trips_privately() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StoredEndpoint::load(dir.path()).is_none());
        let secret = Secret::generate();
        StoredEndpoint { endpoint_id: "ep_1".into(), secret: secret.expose() }.save(dir.path()).unwrap();
        let loaded = StoredEndpoint::load(dir.path()).unwrap();
        assert_eq!(loaded.endpoint_id, "ep_1");
        assert_eq!(loaded.secret().unwrap(), secret);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(StoredEndpoint::path(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
