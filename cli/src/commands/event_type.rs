//! `hookrelay event-type create|get|list|update|delete`.

use hookrelay_common::proto::v1 as pb;

use super::{Context, page};
use crate::args::EventTypeCommand;
use crate::client::{CallResult as _, CliError};
use crate::output::{Done, print};

pub async fn run(context: &Context, command: EventTypeCommand) -> Result<(), CliError> {
    let target = &context.control;
    let mut admin = target.admin().await?;
    match command {
        EventTypeCommand::Create { name, description } => {
            let request = pb::CreateEventTypeRequest { name, description };
            let event_type = admin.create_event_type(request).await.or_cli(target)?;
            print(context.output, &event_type);
        }
        EventTypeCommand::Get { name } => {
            let event_type = admin.get_event_type(pb::GetEventTypeRequest { name }).await.or_cli(target)?;
            print(context.output, &event_type);
        }
        EventTypeCommand::List { page: page_args } => {
            let (page_size, page_token) = page(page_args);
            let request = pb::ListEventTypesRequest { page_size, page_token };
            let event_types = admin.list_event_types(request).await.or_cli(target)?;
            print(context.output, &event_types);
        }
        EventTypeCommand::Update { name, description } => {
            let request = pb::UpdateEventTypeRequest { name, description: Some(description) };
            let event_type = admin.update_event_type(request).await.or_cli(target)?;
            print(context.output, &event_type);
        }
        EventTypeCommand::Delete { name } => {
            admin.delete_event_type(pb::DeleteEventTypeRequest { name: name.clone() }).await.or_cli(target)?;
            print(context.output, &Done(format!("deleted event type {name}")));
        }
    }
    Ok(())
}
