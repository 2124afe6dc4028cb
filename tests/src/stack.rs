//! The setup most scenarios start from: a control, one agent of it, a fresh owner and event type, and an emit
//! client of the agent.

use tonic::transport::Channel;

use hookrelay_common::proto::v1::EmitResponse;
use hookrelay_common::proto::v1::emit_service_client::EmitServiceClient;

use crate::api::{self, Fixture};
use crate::process::{Agent, Control, spawn_agent, spawn_control};

/// A control, an agent connected to it, a fixture (owner + event type) and an emit client.
pub struct Stack {
    /// The control process.
    pub control: Control,
    /// The agent process.
    pub agent: Agent,
    /// Owner, event type and admin client.
    pub fixture: Fixture,
    /// A gRPC client of the agent's EmitService.
    pub emitter: EmitServiceClient<Channel>,
}

impl Stack {
    /// Starts control and agent and creates the fixture.
    pub async fn start() -> Self {
        let control = spawn_control().await;
        let agent = spawn_agent(&control).await;
        let fixture = Fixture::new(control.admin().await).await;
        let emitter = agent.emitter().await;
        Self { control, agent, fixture, emitter }
    }

    /// Emits probes of the fixture's owner and type until the agent routes them to `expected` endpoints; see
    /// [`api::emit_until_routed`].
    pub async fn emit_until_routed(&mut self, expected: u32) -> EmitResponse {
        api::emit_until_routed(&mut self.emitter, &self.fixture.owner, &self.fixture.event_type, expected).await
    }

    /// Reconnects the emit client (after the agent restarted).
    pub async fn reconnect_emitter(&mut self) {
        self.emitter = self.agent.emitter().await;
    }
}
