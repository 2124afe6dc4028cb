//! `hookrelay agent list`.

use hookrelay_common::proto::v1 as pb;

use super::Context;
use crate::args::AgentCommand;
use crate::client::{CallResult as _, CliError};
use crate::output::print;

pub async fn run(context: &Context, command: AgentCommand) -> Result<(), CliError> {
    let target = &context.control;
    match command {
        AgentCommand::List => {
            let agents = target.admin().await?.list_agents(pb::ListAgentsRequest {}).await.or_cli(target)?;
            print(context.output, &agents);
        }
    }
    Ok(())
}
