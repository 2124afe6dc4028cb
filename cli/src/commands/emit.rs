//! `hookrelay emit`: one event through an agent's EmitService.

use hookrelay_common::proto::v1 as pb;

use super::Context;
use crate::args::EmitArgs;
use crate::client::{CallResult as _, CliError};
use crate::output::print;

pub async fn run(context: &Context, args: EmitArgs) -> Result<(), CliError> {
    let target = &context.agent;
    let request = pb::EmitRequest {
        owner: args.owner,
        r#type: args.event_type,
        id: args.id.unwrap_or_default(),
        occurred_at: args.occurred_at,
        payload: args.payload.0,
    };
    let response = target.emit().await?.emit(request).await.or_cli(target)?;
    print(context.output, &response);
    Ok(())
}
