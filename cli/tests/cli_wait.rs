//! `hookrelay endpoint … --wait` against a real control and real agents: it returns once every connected agent
//! applied the change, waits for an agent that lags (stopped with SIGSTOP), gives up after `--wait-timeout` with
//! exit code 4 naming that agent, and does not wait for an agent that is not connected (killed), naming it instead.

use std::process::{Output, Stdio};

use hookrelay_common::proto::v1 as pb;
use hookrelay_tests::{Agent, Control, DEADLINE, EndpointSpec, Fixture, eventually, spawn_agent, spawn_control};

/// Control, two agents of it, both connected at control's version, and an endpoint.
struct Setup {
    control: Control,
    agents: [Agent; 2],
    fixture: Fixture,
    endpoint_id: String,
}

impl Setup {
    async fn start() -> Self {
        let control = spawn_control().await;
        let agents = [spawn_agent(&control).await, spawn_agent(&control).await];
        let mut fixture = Fixture::new(control.admin().await).await;
        let (endpoint, _secret) = fixture.create_endpoint(EndpointSpec::new("https://receiver.example/hooks")).await;
        let mut setup = Self { control, agents, fixture, endpoint_id: endpoint.id };
        let version = setup.list().await.config_version;
        setup.until_applied("both agents are connected and applied the endpoint", version).await;
        setup
    }

    async fn list(&mut self) -> pb::ListAgentsResponse {
        self.fixture.admin.list_agents(pb::ListAgentsRequest {}).await.expect("ListAgents").into_inner()
    }

    /// Waits until both agents are connected at `version` or later.
    async fn until_applied(&mut self, what: &str, version: u64) {
        let names = self.agents.each_ref().map(|agent| agent.node_name().to_owned());
        let mut admin = self.fixture.admin.clone();
        eventually(what, DEADLINE, async || {
            let agents = admin.list_agents(pb::ListAgentsRequest {}).await.map_err(|e| e.to_string())?.into_inner();
            let ready = names.iter().all(|name| {
                agents.agents.iter().any(|a| &a.node_name == name && a.connected && a.applied_version >= version)
            });
            if ready { Ok(()) } else { Err(format!("{agents:?}")) }
        })
        .await;
    }

    /// `hookrelay --control <control> ARGS`.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookrelay"));
        command
            .args(["--control", &self.control.url()])
            .args(args)
            .env_remove("HOOKRELAY_TOKEN")
            .env_remove("HOOKRELAY_CA")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        let output = tokio::time::timeout(DEADLINE, self.command(args).output()).await;
        output.expect("hookrelay finished in time").expect("hookrelay runs")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn signal(agent: &Agent, name: &str) {
    let pid = agent.pid().expect("a running agent").to_string();
    let status = std::process::Command::new("kill").args([name, &pid]).status().expect("run kill");
    assert!(status.success(), "kill {name} {pid} failed");
}

#[tokio::test]
async fn wait_returns_once_every_connected_agent_applied_the_change() {
    let mut setup = Setup::start().await;
    let id = setup.endpoint_id.clone();
    let changes: [&[&str]; 3] = [
        &["endpoint", "rotate-secret", &id, "--wait", "-o", "json"],
        &["endpoint", "disable", &id, "--reason", "receiver retired", "--wait"],
        &["endpoint", "update", &id, "--description", "changed", "--wait", "--wait-timeout", "20s"],
    ];
    for args in changes {
        let before = setup.list().await.config_version;
        let output = setup.run(args).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {output:?}");
        // What the agents run the moment the command returned: the change, or something later.
        let after = setup.list().await;
        assert!(after.config_version > before, "{args:?} changed nothing: {before} -> {after:?}");
        for agent in &setup.agents {
            let listed = after.agents.iter().find(|a| a.node_name == agent.node_name()).expect("listed");
            assert!(listed.applied_version > before, "{args:?} returned before {listed:?} applied it; {stderr}");
        }
        assert!(stderr.contains("all 2 connected agents applied config version"), "{args:?}: {stderr}");
    }
    // The rotation's secret was still printed, as JSON on standard output.
    let rotated = setup.run(&["endpoint", "rotate-secret", &id, "--wait", "-o", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&rotated.stdout).expect("JSON on stdout");
    assert!(json["secret"].as_str().is_some_and(|secret| secret.starts_with("whsec_")), "{json}");
}

#[tokio::test]
async fn wait_holds_for_a_lagging_agent_and_gives_up_after_the_timeout_naming_it() {
    let mut setup = Setup::start().await;
    let id = setup.endpoint_id.clone();
    let stalled = setup.agents[1].node_name().to_owned();
    let healthy = setup.agents[0].node_name().to_owned();

    // A stopped agent keeps its stream open, so control still counts it as connected, but it applies nothing.
    signal(&setup.agents[1], "-STOP");
    let output = setup.run(&["endpoint", "disable", &id, "--wait", "--wait-timeout", "2s"]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    assert!(
        stderr.contains("error: the change was made, but 1 connected agent did not apply config version"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("within 2s: {stalled} (at ")), "{stderr}");
    assert!(!stderr.contains(&healthy), "the agent that applied it is named: {stderr}");
    assert!(
        text(&output.stdout).contains("disabled by an administrator"),
        "the change's answer is printed: {output:?}"
    );

    // Waiting without a timeout in reach: the command is still waiting while the agent is stopped, and returns
    // once it runs again and applies the change.
    let before = setup.list().await.config_version;
    let mut waiting = setup.command(&["endpoint", "enable", &id, "--wait"]).spawn().expect("hookrelay runs");
    let mut admin = setup.fixture.admin.clone();
    eventually("the change is made", DEADLINE, async || {
        let version = admin.list_agents(pb::ListAgentsRequest {}).await.map_err(|e| e.to_string())?;
        let version = version.into_inner().config_version;
        if version > before { Ok(()) } else { Err(format!("control at {version}")) }
    })
    .await;
    let healthy_at_change = setup.list().await.config_version;
    setup.until_applied_by(&healthy, healthy_at_change).await;
    assert!(waiting.try_wait().expect("try_wait").is_none(), "--wait returned while {stalled} was stopped");
    signal(&setup.agents[1], "-CONT");
    let output = tokio::time::timeout(DEADLINE, waiting.wait_with_output()).await.expect("done in time").unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(text(&output.stderr).contains("all 2 connected agents applied config version"), "{output:?}");
}

#[tokio::test]
async fn wait_does_not_wait_for_an_agent_that_is_not_connected() {
    let mut setup = Setup::start().await;
    let id = setup.endpoint_id.clone();
    let gone = setup.agents[1].node_name().to_owned();
    setup.agents[1].kill9();
    let mut admin = setup.fixture.admin.clone();
    eventually("control sees the killed agent disconnected", DEADLINE, async || {
        let agents = admin.list_agents(pb::ListAgentsRequest {}).await.map_err(|e| e.to_string())?.into_inner();
        match agents.agents.iter().find(|agent| agent.node_name == gone) {
            Some(agent) if !agent.connected => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let output = setup.run(&["endpoint", "rotate-secret", &id, "--wait", "--wait-timeout", "10s"]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(stderr.contains("the connected agent applied config version"), "{stderr}");
    assert!(stderr.contains("not waited for, not connected (they get config version"), "{stderr}");
    assert!(stderr.contains(&format!("when they reconnect): {gone} (at ")), "{stderr}");
}

impl Setup {
    /// Waits until the agent named `name` is connected at `version` or later.
    async fn until_applied_by(&mut self, name: &str, version: u64) {
        let mut admin = self.fixture.admin.clone();
        eventually(&format!("{name} applied version {version}"), DEADLINE, async || {
            let agents = admin.list_agents(pb::ListAgentsRequest {}).await.map_err(|e| e.to_string())?.into_inner();
            match agents.agents.iter().find(|agent| agent.node_name == name) {
                Some(agent) if agent.connected && agent.applied_version >= version => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
}
