//! `hookrelay endpoint create|get|list|update|delete|enable|disable|rotate-secret|verify|recover`; the changes can
//! `--wait` until every connected agent applied them ([`super::wait`]).

use std::collections::HashMap;

use hookrelay_common::proto::v1 as pb;

use super::{Context, page, wait};
use crate::args::{EndpointCommand, EndpointCreateArgs, EndpointUpdateArgs, OutputFormat};
use crate::client::{CallResult as _, CliError};
use crate::output::{Done, SECRET_NOTE, Verified, print};

pub async fn run(context: &Context, command: EndpointCommand) -> Result<(), CliError> {
    let target = &context.control;
    let mut admin = target.admin().await?;
    match command {
        EndpointCommand::Create(args) => {
            let created = admin.create_endpoint(create_request(*args)).await.or_cli(target)?;
            print(context.output, &created);
            if context.output != OutputFormat::Table {
                // Standard output stays pure JSON; the table form prints the note itself.
                eprintln!("{SECRET_NOTE}");
            }
        }
        EndpointCommand::Get { id } => {
            let endpoint = admin.get_endpoint(pb::GetEndpointRequest { id }).await.or_cli(target)?;
            print(context.output, &endpoint);
        }
        EndpointCommand::List { owner, page: page_args } => {
            let (page_size, page_token) = page(page_args);
            let request = pb::ListEndpointsRequest { owner_id: owner.unwrap_or_default(), page_size, page_token };
            let endpoints = admin.list_endpoints(request).await.or_cli(target)?;
            print(context.output, &endpoints);
        }
        EndpointCommand::Update(args) => {
            let wait_args = args.wait;
            let endpoint = admin.update_endpoint(update_request(*args)).await.or_cli(target)?;
            print(context.output, &endpoint);
            wait::until_applied(context, wait_args).await?;
        }
        EndpointCommand::Delete { id, wait: wait_args } => {
            admin.delete_endpoint(pb::DeleteEndpointRequest { id: id.clone() }).await.or_cli(target)?;
            print(context.output, &Done(format!("deleted endpoint {id}")));
            wait::until_applied(context, wait_args).await?;
        }
        EndpointCommand::Enable { id, wait: wait_args } => {
            let endpoint = admin.enable_endpoint(pb::EnableEndpointRequest { id }).await.or_cli(target)?;
            print(context.output, &endpoint);
            wait::until_applied(context, wait_args).await?;
        }
        EndpointCommand::Disable { id, reason, wait: wait_args } => {
            let endpoint = admin.disable_endpoint(pb::DisableEndpointRequest { id, reason }).await.or_cli(target)?;
            print(context.output, &endpoint);
            wait::until_applied(context, wait_args).await?;
        }
        EndpointCommand::RotateSecret { id, overlap, wait: wait_args } => {
            // 0 asks control for its default overlap.
            let overlap_seconds = overlap.map_or(0, |overlap| overlap.as_secs());
            let request = pb::RotateEndpointSecretRequest { id, overlap_seconds };
            let rotated = admin.rotate_secret(request).await.or_cli(target)?;
            // Printed before waiting: the new secret is shown only this once, whatever the wait's outcome.
            print(context.output, &rotated);
            if context.output != OutputFormat::Table {
                eprintln!("{SECRET_NOTE}");
            }
            wait::until_applied(context, wait_args).await?;
        }
        EndpointCommand::Verify { id } => {
            let verified = admin.verify_endpoint(pb::VerifyEndpointRequest { id }).await.or_cli(target)?;
            print(context.output, &Verified(verified));
        }
        EndpointCommand::Recover { id, since } => {
            let request = pb::RecoverFailedRequest { endpoint_id: id, since };
            let recovered = admin.recover_failed(request).await.or_cli(target)?;
            print(context.output, &recovered);
        }
    }
    Ok(())
}

fn create_request(args: EndpointCreateArgs) -> pb::CreateEndpointRequest {
    pb::CreateEndpointRequest {
        owner_id: args.owner,
        url: args.url,
        description: args.description,
        filter_types: args.filters,
        rate_limit: args.rate_limit,
        max_in_flight: args.max_in_flight.unwrap_or(0),
        timeout_ms: args.timeout_ms.unwrap_or(0),
        retry_policy: (!args.retry_schedule_ms.is_empty())
            .then_some(pb::RetryPolicy { schedule_ms: args.retry_schedule_ms }),
        headers: args.headers.into_iter().collect(),
        insecure: args.insecure,
        disabled: args.disabled,
        verify: args.verify,
        body_signature: args.body_signature,
    }
}

/// Only what the flags name changes; a repeated flag (`--filter`, `--header`) replaces the whole list or map.
fn update_request(args: EndpointUpdateArgs) -> pb::UpdateEndpointRequest {
    let retry_policy = if args.default_retry_schedule {
        // Set but empty: back to the default schedule.
        Some(pb::RetryPolicy { schedule_ms: Vec::new() })
    } else {
        (!args.retry_schedule_ms.is_empty()).then_some(pb::RetryPolicy { schedule_ms: args.retry_schedule_ms })
    };
    let headers = if args.clear_headers {
        Some(pb::HeaderMap { values: HashMap::new() })
    } else {
        (!args.headers.is_empty()).then(|| pb::HeaderMap { values: args.headers.into_iter().collect() })
    };
    pb::UpdateEndpointRequest {
        id: args.id,
        url: args.url,
        description: args.description,
        filter_types: (!args.filters.is_empty()).then_some(pb::StringList { values: args.filters }),
        rate_limit: args.rate_limit,
        clear_rate_limit: args.clear_rate_limit,
        max_in_flight: args.max_in_flight,
        timeout_ms: args.timeout_ms,
        retry_policy,
        headers,
        insecure: match (args.insecure, args.no_insecure) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        verify: args.verify,
        body_signature: match (args.body_signature, args.no_body_signature) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::args::{Cli, Command};

    fn update(args: &[&str]) -> pb::UpdateEndpointRequest {
        let cli = Cli::try_parse_from(["hookrelay", "endpoint", "update", "ep_1"].iter().chain(args)).unwrap();
        let Command::Endpoint(EndpointCommand::Update(args)) = cli.command else { panic!("not endpoint update") };
        update_request(*args)
    }

    #[test]
    fn create_maps_every_flag() {
        let cli = Cli::try_parse_from([
            "hookrelay",
            "endpoint",
            "create",
            "--owner",
            "acme",
            "--url",
            "http://127.0.0.1:9/h",
            "--filter",
            "*",
            "--max-in-flight",
            "4",
            "--timeout-ms",
            "5000",
            "--retry-schedule-ms",
            "50,50,50",
            "--header",
            "x-a=1",
            "--insecure",
            "--disabled",
            "--verify",
        ])
        .unwrap();
        let Command::Endpoint(EndpointCommand::Create(args)) = cli.command else { panic!("not endpoint create") };
        let request = create_request(*args);
        assert_eq!(request.filter_types, ["*"]);
        assert_eq!((request.max_in_flight, request.timeout_ms), (4, 5000));
        assert_eq!(request.retry_policy, Some(pb::RetryPolicy { schedule_ms: vec![50, 50, 50] }));
        assert_eq!(request.headers, HashMap::from([("x-a".to_owned(), "1".to_owned())]));
        assert!(request.insecure && request.disabled && request.verify);
        assert_eq!(request.rate_limit, None);
    }

    #[test]
    fn update_sends_only_what_changes() {
        let request = update(&["--description", "new"]);
        assert_eq!(request.description.as_deref(), Some("new"));
        assert_eq!(
            (request.url, request.filter_types, request.headers, request.retry_policy),
            (None, None, None, None)
        );
        assert_eq!((request.insecure, request.clear_rate_limit), (None, false));

        let request = update(&["--filter", "a.b", "--filter", "c.*", "--clear-headers", "--default-retry-schedule"]);
        assert_eq!(request.filter_types, Some(pb::StringList { values: vec!["a.b".into(), "c.*".into()] }));
        assert_eq!(request.headers, Some(pb::HeaderMap::default()));
        assert_eq!(request.retry_policy, Some(pb::RetryPolicy::default()));

        assert_eq!(update(&["--no-insecure"]).insecure, Some(false));
        let request = update(&["--url", "https://b.example/h", "--verify"]);
        assert!(request.verify && request.url.is_some());
        assert!(!update(&["--description", "x"]).verify);
        assert!(update(&["--clear-rate-limit"]).clear_rate_limit);
    }
}
