//! `hookrelay delivery list|get`.

use hookrelay_common::proto::v1 as pb;

use super::{Context, page};
use crate::args::{DeliveryCommand, DeliveryListArgs};
use crate::client::{CallResult as _, CliError};
use crate::output::print;

pub async fn run(context: &Context, command: DeliveryCommand) -> Result<(), CliError> {
    let target = &context.control;
    let mut admin = target.admin().await?;
    match command {
        DeliveryCommand::List(args) => {
            let deliveries = admin.list_deliveries(list_request(args)).await.or_cli(target)?;
            print(context.output, &deliveries);
        }
        DeliveryCommand::Get { id } => {
            let delivery = admin.get_delivery(pb::GetDeliveryRequest { id }).await.or_cli(target)?;
            print(context.output, &delivery);
        }
        DeliveryCommand::Replay { id } => {
            let replay = admin.replay_delivery(pb::ReplayDeliveryRequest { id }).await.or_cli(target)?;
            print(context.output, &replay);
        }
    }
    Ok(())
}

fn list_request(args: DeliveryListArgs) -> pb::ListDeliveriesRequest {
    let (page_size, page_token) = page(args.page);
    pb::ListDeliveriesRequest {
        owner_id: args.owner.unwrap_or_default(),
        endpoint_id: args.endpoint.unwrap_or_default(),
        status: args.status.map_or(pb::DeliveryStatus::Unspecified, pb::DeliveryStatus::from).into(),
        event_type: args.event_type.unwrap_or_default(),
        created_after: args.since,
        created_before: args.until,
        page_size,
        page_token,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::args::{Cli, Command};

    #[test]
    fn list_filters_map_to_the_request() {
        let cli = Cli::try_parse_from([
            "hookrelay",
            "delivery",
            "list",
            "--owner",
            "acme",
            "--status",
            "failed",
            "--event-type",
            "a.b",
            "--since",
            "2026-01-01T00:00:00Z",
            "--page-size",
            "5",
        ])
        .unwrap();
        let Command::Delivery(DeliveryCommand::List(args)) = cli.command else { panic!("not delivery list") };
        let request = list_request(args);
        assert_eq!(request.owner_id, "acme");
        assert_eq!(request.endpoint_id, "");
        assert_eq!(request.status, i32::from(pb::DeliveryStatus::Failed));
        assert_eq!(request.event_type, "a.b");
        assert_eq!(request.created_after.map(|ts| ts.seconds), Some(1_767_225_600));
        assert_eq!(request.created_before, None);
        assert_eq!((request.page_size, request.page_token.as_str()), (5, ""));
    }
}
