//! `hookrelay owner create|get|list|update|delete`.

use hookrelay_common::proto::v1 as pb;

use super::{Context, page};
use crate::args::OwnerCommand;
use crate::client::{CallResult as _, CliError};
use crate::output::{Done, print};

pub async fn run(context: &Context, command: OwnerCommand) -> Result<(), CliError> {
    let target = &context.control;
    let mut admin = target.admin().await?;
    match command {
        OwnerCommand::Create { id, name } => {
            let owner = admin.create_owner(pb::CreateOwnerRequest { id, name }).await.or_cli(target)?;
            print(context.output, &owner);
        }
        OwnerCommand::Get { id } => {
            let owner = admin.get_owner(pb::GetOwnerRequest { id }).await.or_cli(target)?;
            print(context.output, &owner);
        }
        OwnerCommand::List { page: page_args } => {
            let (page_size, page_token) = page(page_args);
            let owners = admin.list_owners(pb::ListOwnersRequest { page_size, page_token }).await.or_cli(target)?;
            print(context.output, &owners);
        }
        OwnerCommand::Update { id, name } => {
            let owner = admin.update_owner(pb::UpdateOwnerRequest { id, name: Some(name) }).await.or_cli(target)?;
            print(context.output, &owner);
        }
        OwnerCommand::Delete { id } => {
            admin.delete_owner(pb::DeleteOwnerRequest { id: id.clone() }).await.or_cli(target)?;
            print(context.output, &Done(format!("deleted owner {id}")));
        }
    }
    Ok(())
}
