//! `--wait`: after a change, poll `ListAgents` until every agent connected to control has applied it.
//!
//! The admin calls do not return the config version a change produced, so the target is control's version as the
//! first `ListAgents` after the change reports it: the change's own version or a later one, which an agent only
//! reaches after applying the change too. An agent that is not connected is not waited for (it gets a snapshot when
//! it reconnects); one that disconnects while we wait stops being waited for. Both are named on standard error.

use std::time::{Duration, Instant};

use hookrelay_common::proto::v1 as pb;

use super::Context;
use crate::args::WaitArgs;
use crate::client::{CallResult as _, CliError};

/// `--wait-timeout` when not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two `ListAgents` calls. Agents acknowledge a change as soon as they have persisted it.
const POLL: Duration = Duration::from_millis(200);
/// At most this many agents are named in one message.
const NAMED: usize = 10;

/// Does nothing without `--wait`; otherwise returns once every connected agent runs control's current config
/// version, or fails with [`CliError::NotApplied`] naming those that do not when the timeout passes.
pub async fn until_applied(context: &Context, args: WaitArgs) -> Result<(), CliError> {
    if !args.wait {
        return Ok(());
    }
    let timeout = args.wait_timeout.unwrap_or(DEFAULT_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let target = &context.control;
    let mut admin = target.admin().await?;
    let first = admin.list_agents(pb::ListAgentsRequest {}).await.or_cli(target)?;
    let version = first.config_version;
    if version == 0 {
        return Err(anyhow::anyhow!(
            "control did not report its config version (it is older than this hookrelay): cannot --wait; \
             compare the versions in `hookrelay agent list` instead"
        )
        .into());
    }
    let mut agents = first.agents;
    loop {
        let progress = Progress::of(&agents, version);
        if progress.behind.is_empty() {
            eprintln!("{}", progress.done_message(version));
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(CliError::NotApplied(progress.timeout_message(version, timeout)));
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
        agents = admin.list_agents(pb::ListAgentsRequest {}).await.or_cli(target)?.agents;
    }
}

/// Where the agents stand against a config version.
#[derive(Debug, Default)]
struct Progress<'a> {
    /// Connected and at the version or later.
    applied: Vec<&'a pb::Agent>,
    /// Connected and behind it: what we wait for.
    behind: Vec<&'a pb::Agent>,
    /// Not connected and behind it: not waited for.
    disconnected: Vec<&'a pb::Agent>,
}

impl<'a> Progress<'a> {
    fn of(agents: &'a [pb::Agent], version: u64) -> Self {
        let mut progress = Self::default();
        for agent in agents {
            match (agent.connected, agent.applied_version >= version) {
                (true, true) => progress.applied.push(agent),
                (true, false) => progress.behind.push(agent),
                (false, false) => progress.disconnected.push(agent),
                // A disconnected agent that already runs the change needs no mention.
                (false, true) => {}
            }
        }
        progress
    }

    fn done_message(&self, version: u64) -> String {
        let mut message = match self.applied.len() {
            0 => format!("no agent is connected to control: nothing to wait for (config version {version})"),
            1 => format!("the connected agent applied config version {version}"),
            count => format!("all {count} connected agents applied config version {version}"),
        };
        self.add_disconnected(&mut message, version);
        message
    }

    fn timeout_message(&self, version: u64, timeout: Duration) -> String {
        let count = self.behind.len();
        let mut message = format!(
            "the change was made, but {count} connected agent{} did not apply config version {version} within {}: {}",
            if count == 1 { "" } else { "s" },
            humantime::format_duration(timeout),
            names(&self.behind),
        );
        self.add_disconnected(&mut message, version);
        message.push_str("\nhint: `hookrelay agent list` shows each agent's applied config version and last error");
        message
    }

    fn add_disconnected(&self, message: &mut String, version: u64) {
        if !self.disconnected.is_empty() {
            message.push_str(&format!(
                "\nnot waited for, not connected (they get config version {version} when they reconnect): {}",
                names(&self.disconnected)
            ));
        }
    }
}

/// `node-a (at 5), node-b (at 4, last error: ...)`, at most [`NAMED`] of them.
fn names(agents: &[&pb::Agent]) -> String {
    let mut parts: Vec<String> = agents
        .iter()
        .take(NAMED)
        .map(|agent| match agent.last_error.as_str() {
            "" => format!("{} (at {})", agent.node_name, agent.applied_version),
            error => format!("{} (at {}, last error: {error})", agent.node_name, agent.applied_version),
        })
        .collect();
    if agents.len() > NAMED {
        parts.push(format!("and {} more", agents.len() - NAMED));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, connected: bool, applied_version: u64) -> pb::Agent {
        pb::Agent { node_name: name.to_owned(), connected, applied_version, ..Default::default() }
    }

    #[test]
    fn only_connected_agents_behind_the_version_are_waited_for() {
        let agents =
            [agent("a", true, 7), agent("b", true, 6), agent("c", false, 3), agent("d", false, 9), agent("e", true, 8)];
        let progress = Progress::of(&agents, 7);
        let names = |list: &[&pb::Agent]| list.iter().map(|agent| agent.node_name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&progress.applied), ["a", "e"]);
        assert_eq!(names(&progress.behind), ["b"]);
        assert_eq!(names(&progress.disconnected), ["c"]);
    }

    #[test]
    fn messages_name_the_agents() {
        let mut failing = agent("b", true, 6);
        failing.last_error = "endpoint ep_1: bad".to_owned();
        let agents = [agent("a", true, 7), failing, agent("c", false, 3)];
        let message = Progress::of(&agents, 7).timeout_message(7, Duration::from_secs(3));
        assert!(
            message.starts_with(
                "the change was made, but 1 connected agent did not apply config version 7 within 3s: \
                 b (at 6, last error: endpoint ep_1: bad)\nnot waited for, not connected (they get config version 7 \
                 when they reconnect): c (at 3)\nhint: "
            ),
            "{message}"
        );
        let done = Progress::of(&agents[..1], 7).done_message(7);
        assert_eq!(done, "the connected agent applied config version 7");
        assert_eq!(
            Progress::of(&[], 2).done_message(2),
            "no agent is connected to control: nothing to wait for (config version 2)"
        );
        let many: Vec<pb::Agent> = (0..12).map(|n| agent(&format!("n{n}"), true, 1)).collect();
        let listed = names(&Progress::of(&many, 2).behind);
        assert!(listed.ends_with("n9 (at 1), and 2 more"), "{listed}");
    }
}
