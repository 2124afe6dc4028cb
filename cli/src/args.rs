//! The command line: every subcommand and flag (clap derive), and the parsers that turn flag text into request
//! values (`10/min` rate limits, `k=v` headers, `@file` payloads, RFC3339 times). A value that does not parse is a
//! usage error (exit code 2), reported by clap before anything is sent.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use hookrelay_common::proto::v1::{DeliveryStatus, RateLimit, RateLimitPeriod};

/// Default address of control's gRPC API.
pub const DEFAULT_CONTROL_URL: &str = "http://127.0.0.1:7100";
/// Default address of the agent that `emit` talks to.
pub const DEFAULT_AGENT_URL: &str = "http://127.0.0.1:7200";

const EXAMPLES: &str = "\
Examples:
  # Everything on this machine (control, agent, a demo receiver), no external services:
  hookrelay dev

  hookrelay owner create acme --name \"Acme Corp\"
  hookrelay event-type create payment.settled --description \"A payment reached the bank\"
  hookrelay endpoint create --owner acme --url https://acme.example/hooks \\
      --filter payment.settled --filter 'invoice.*' --rate-limit 10/s --header x-team=payments
  hookrelay emit --owner acme --type payment.settled --payload '{\"amount\":42}'
  hookrelay emit --owner acme --type payment.settled --id pay_123 --payload @event.json
  hookrelay delivery list --owner acme --status failed --since 2026-01-01T00:00:00Z
  hookrelay delivery get dlv_0190c3...
  hookrelay endpoint list --owner acme --output json | jq '.endpoints[].url'

Exit codes: 0 ok, 1 the server refused the request, 2 usage error, 3 control or agent unreachable, 4 a change was
made but --wait ran out before every connected agent applied it.";

/// Manage hookrelay: owners, event types, endpoints, deliveries and agents; emit events; run a local sandbox.
#[derive(Debug, Parser)]
#[command(name = "hookrelay", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Control's gRPC address.
    #[arg(long, global = true, env = "HOOKRELAY_CONTROL_URL", default_value = DEFAULT_CONTROL_URL,
          value_parser = parse_server_url, value_name = "URL", help_heading = "Global options")]
    pub control: String,

    /// The agent that `emit` sends to (its gRPC address).
    #[arg(long, global = true, env = "HOOKRELAY_AGENT_URL", default_value = DEFAULT_AGENT_URL,
          value_parser = parse_server_url, value_name = "URL", help_heading = "Global options")]
    pub agent: String,

    /// Bearer token for control (scope admin, or read for get/list commands); sent as `authorization: Bearer`.
    #[arg(
        long,
        global = true,
        env = "HOOKRELAY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        conflicts_with = "token_file",
        help_heading = "Global options"
    )]
    pub token: Option<String>,

    /// File holding the bearer token for control (its first line), instead of --token.
    #[arg(long, global = true, env = "HOOKRELAY_TOKEN_FILE", value_name = "PATH", help_heading = "Global options")]
    pub token_file: Option<std::path::PathBuf>,

    /// CA certificates (PEM) to trust for an https:// control URL, instead of the public web PKI roots.
    #[arg(long, global = true, env = "HOOKRELAY_CA", value_name = "PATH", help_heading = "Global options")]
    pub ca: Option<std::path::PathBuf>,

    /// Bearer token for the agent's emit (when the agent runs with --emit-token-file).
    #[arg(
        long,
        global = true,
        env = "HOOKRELAY_AGENT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        help_heading = "Global options"
    )]
    pub agent_token: Option<String>,

    /// How to print results: human tables, or the response message as JSON.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table,
          help_heading = "Global options")]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people; timestamps in RFC3339 (UTC).
    Table,
    /// The response message as JSON (proto field names, enum names, RFC3339 timestamps).
    Json,
    /// The same document as YAML.
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Tenants: a team, a customer, a chat room. Endpoints and events belong to one owner.
    #[command(subcommand)]
    Owner(OwnerCommand),
    /// The catalog of event types that endpoints can subscribe to.
    #[command(subcommand)]
    EventType(EventTypeCommand),
    /// Where webhooks go: URL, subscriptions, limits, retry schedule, headers.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Events on their way to endpoints, with every attempt.
    #[command(subcommand)]
    Delivery(DeliveryCommand),
    /// The delivery agents control knows about.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Emit one event through an agent (gRPC EmitService.Emit).
    #[command(after_help = "\
Examples:
  hookrelay emit --owner acme --type payment.settled --payload '{\"amount\":42}'
  hookrelay emit --owner acme --type payment.settled --id pay_123 --payload @event.json
  echo '{\"n\":1}' | hookrelay emit --owner acme --type payment.settled --payload @-")]
    Emit(EmitArgs),
    /// Run control, an agent and a demo receiver on this machine, ready to try.
    ///
    /// Starts hookrelay-control and hookrelay-agent on loopback, serves a receiver that verifies every webhook's
    /// signature and prints it, creates the owner `demo`, the event type `demo.hello` and an endpoint to the
    /// receiver, emits a first event and prints the commands to try next. Ctrl-C stops everything.
    #[command(after_help = "\
The binaries hookrelay-control and hookrelay-agent must sit next to this one (`cargo build --release` builds all
three into target/release/). Data and the children's logs go to --data-dir; a re-run reuses them.")]
    Dev(DevArgs),
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  hookrelay completions bash > /etc/bash_completion.d/hookrelay
  hookrelay completions zsh > \"${fpath[1]}/_hookrelay\"")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `--page-size` and `--page-token` of list commands.
#[derive(Debug, Clone, Default, Args)]
pub struct PageArgs {
    /// Items per page (server default 20, at most 100).
    #[arg(long, value_name = "N")]
    pub page_size: Option<u32>,
    /// Continue from the `next_page_token` of a previous page.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum OwnerCommand {
    /// Create an owner.
    #[command(after_help = "Example:\n  hookrelay owner create acme --name \"Acme Corp\"")]
    Create {
        /// Owner id: 1 to 64 of a-z, 0-9, '-', '_'.
        id: String,
        /// Human-readable name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Show one owner.
    Get { id: String },
    /// List owners.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Rename an owner.
    Update {
        id: String,
        /// New human-readable name.
        #[arg(long)]
        name: String,
    },
    /// Delete an owner (refused while it has endpoints).
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum EventTypeCommand {
    /// Add an event type to the catalog.
    #[command(
        after_help = "Example:\n  hookrelay event-type create payment.settled --description \"A payment reached the bank\""
    )]
    Create {
        /// Dot-separated lowercase name, e.g. `payment.settled`.
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show one event type.
    Get { name: String },
    /// List the catalog.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Change an event type's description.
    Update {
        name: String,
        #[arg(long)]
        description: String,
    },
    /// Remove an event type (refused while endpoints subscribe to it; the error lists them).
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Create an endpoint. Prints its signing secret, which is shown only this once.
    #[command(after_help = "\
Examples:
  hookrelay endpoint create --owner acme --url https://acme.example/hooks --filter '*'
  hookrelay endpoint create --owner acme --url https://acme.example/hooks --filter payment.settled \\
      --filter 'invoice.*' --rate-limit 10/min --max-in-flight 4 --timeout-ms 5000 \\
      --retry-schedule-ms 1000,60000,600000 --header x-team=payments
  hookrelay endpoint create --owner acme --url http://127.0.0.1:9000/hook --filter '*' --insecure
  hookrelay endpoint create --owner acme --url https://acme.example/hooks --filter '*' --verify")]
    Create(Box<EndpointCreateArgs>),
    /// Show one endpoint (never its secret).
    Get { id: String },
    /// List endpoints, optionally of one owner.
    List {
        /// Only this owner's endpoints.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Change an endpoint; flags not given keep their value.
    #[command(after_help = "\
Examples:
  hookrelay endpoint update ep_0190... --filter payment.settled --filter refund.created
  hookrelay endpoint update ep_0190... --clear-rate-limit --default-retry-schedule
  hookrelay endpoint update ep_0190... --url https://new.acme.example/hooks --verify
  hookrelay endpoint update ep_0190... --url https://new.acme.example/hooks --wait")]
    Update(Box<EndpointUpdateArgs>),
    /// Delete an endpoint.
    Delete {
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Enable an endpoint (also resumes one that was disabled automatically).
    Enable {
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Disable an endpoint: nothing new is delivered to it.
    #[command(after_help = "\
Examples:
  hookrelay endpoint disable ep_0190... --reason \"receiver retired\" --wait")]
    Disable {
        id: String,
        /// Why, recorded on the endpoint.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Make a new signing secret primary. Prints it, shown only this once; the previous secret stays valid for the
    /// overlap, during which every delivery carries a signature for each.
    #[command(after_help = "\
Examples:
  hookrelay endpoint rotate-secret ep_0190...
  hookrelay endpoint rotate-secret ep_0190... --overlap 2h
  hookrelay endpoint rotate-secret ep_0190... --wait --wait-timeout 2m")]
    RotateSecret {
        id: String,
        /// How long the previous secret stays valid: `24h` (the default), `90m`, `7days`; at most 30 days.
        #[arg(long, value_parser = parse_overlap, value_name = "DURATION")]
        overlap: Option<Duration>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Send the verification challenge to the endpoint's URL: `GET <url>?challenge=<random>` must answer
    /// `200 {"challenge":"<same>"}` within 10s.
    Verify { id: String },
    /// Replay every failed delivery of an endpoint (created at or after --since), e.g. after fixing the receiver.
    #[command(after_help = "\
Examples:
  hookrelay endpoint recover ep_0190... --since 2026-01-01T00:00:00Z")]
    Recover {
        id: String,
        /// Only deliveries created at or after this time (RFC3339); all retained ones when absent.
        #[arg(long, value_parser = parse_rfc3339, value_name = "TIME")]
        since: Option<prost_types::Timestamp>,
    },
}

#[derive(Debug, Args)]
pub struct EndpointCreateArgs {
    /// Owner of the endpoint.
    #[arg(long)]
    pub owner: String,
    /// Where to POST (https; http only with --insecure on a control that permits it).
    #[arg(long)]
    pub url: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Event types to receive: an exact type, `prefix.*` or `*`. Repeatable, or comma-separated.
    #[arg(long = "filter", value_name = "FILTER", required = true, value_delimiter = ',')]
    pub filters: Vec<String>,
    /// At most this many deliveries started per second or minute: `5/s`, `10/min`.
    #[arg(long, value_parser = parse_rate_limit, value_name = "N/PERIOD")]
    pub rate_limit: Option<RateLimit>,
    /// Concurrent deliveries to this endpoint (default 16).
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Whole-request timeout of an attempt in milliseconds (default 15000).
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Delays between tries in milliseconds, comma-separated (default 5s,5m,30m,2h,5h,10h,10h).
    #[arg(long, value_name = "MS,MS,...", value_delimiter = ',')]
    pub retry_schedule_ms: Vec<u64>,
    /// Extra header sent with every delivery, `name=value`. Repeatable.
    #[arg(long = "header", value_parser = parse_header, value_name = "NAME=VALUE")]
    pub headers: Vec<(String, String)>,
    /// Allow an http:// URL (control must be started with --allow-insecure-endpoints).
    #[arg(long)]
    pub insecure: bool,
    /// Create the endpoint disabled.
    #[arg(long)]
    pub disabled: bool,
    /// Create it only if the URL answers the verification challenge (see `endpoint verify`).
    #[arg(long)]
    pub verify: bool,
    /// Also send `x-hookrelay-signature: sha256=<hex HMAC of the body>` (for receivers of that simpler scheme).
    #[arg(long)]
    pub body_signature: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("changes").required(true).multiple(true).args([
    "url", "description", "filters", "rate_limit", "clear_rate_limit", "max_in_flight", "timeout_ms",
    "retry_schedule_ms", "default_retry_schedule", "headers", "clear_headers", "insecure", "no_insecure",
    "body_signature", "no_body_signature",
])))]
pub struct EndpointUpdateArgs {
    pub id: String,
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Replaces the subscriptions: an exact type, `prefix.*` or `*`. Repeatable, or comma-separated.
    #[arg(long = "filter", value_name = "FILTER", value_delimiter = ',')]
    pub filters: Vec<String>,
    /// New rate limit: `5/s`, `10/min`.
    #[arg(long, value_parser = parse_rate_limit, value_name = "N/PERIOD", conflicts_with = "clear_rate_limit")]
    pub rate_limit: Option<RateLimit>,
    /// Remove the rate limit.
    #[arg(long)]
    pub clear_rate_limit: bool,
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Replaces the retry schedule (milliseconds, comma-separated).
    #[arg(long, value_name = "MS,MS,...", value_delimiter = ',', conflicts_with = "default_retry_schedule")]
    pub retry_schedule_ms: Vec<u64>,
    /// Go back to the default retry schedule.
    #[arg(long)]
    pub default_retry_schedule: bool,
    /// Replaces all custom headers, `name=value`. Repeatable.
    #[arg(long = "header", value_parser = parse_header, value_name = "NAME=VALUE", conflicts_with = "clear_headers")]
    pub headers: Vec<(String, String)>,
    /// Remove all custom headers.
    #[arg(long)]
    pub clear_headers: bool,
    /// Allow an http:// URL.
    #[arg(long, conflicts_with = "no_insecure")]
    pub insecure: bool,
    /// Require https again.
    #[arg(long)]
    pub no_insecure: bool,
    /// Change nothing unless the URL the endpoint ends up with answers the verification challenge.
    #[arg(long)]
    pub verify: bool,
    /// Also send `x-hookrelay-signature: sha256=<hex HMAC of the body>`.
    #[arg(long, conflicts_with = "no_body_signature")]
    pub body_signature: bool,
    /// Stop sending `x-hookrelay-signature`.
    #[arg(long)]
    pub no_body_signature: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `--wait` and `--wait-timeout` of the commands that change what agents deliver.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct WaitArgs {
    /// After the change, wait until every agent connected to control has applied it (its applied config version
    /// reaches the one control had after the change), as `hookrelay agent list` shows. Agents not connected are not
    /// waited for (they get the change when they reconnect); they are named on standard error. Exits 4, naming the
    /// connected agents that had not applied the change, when --wait-timeout passes first.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits: `30s` (the default), `2m`.
    #[arg(long, value_parser = parse_wait_timeout, value_name = "DURATION", requires = "wait")]
    pub wait_timeout: Option<Duration>,
}

#[derive(Debug, Subcommand)]
pub enum DeliveryCommand {
    /// List deliveries, newest first.
    #[command(after_help = "\
Examples:
  hookrelay delivery list --owner acme --status failed
  hookrelay delivery list --endpoint ep_0190... --since 2026-01-01T00:00:00Z --until 2026-01-02T00:00:00+01:00")]
    List(DeliveryListArgs),
    /// Show one delivery with all its attempts.
    Get { id: String },
    /// Deliver a finished delivery again from the payload its agent retains: a new series of attempts with the same
    /// webhook-id. The agent holding it must be connected.
    #[command(after_help = "\
Examples:
  hookrelay delivery replay dlv_0190...")]
    Replay { id: String },
}

#[derive(Debug, Args)]
pub struct DeliveryListArgs {
    #[arg(long)]
    pub owner: Option<String>,
    #[arg(long)]
    pub endpoint: Option<String>,
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    #[arg(long)]
    pub event_type: Option<String>,
    /// Created at or after this time (RFC3339, e.g. 2026-01-01T00:00:00Z).
    #[arg(long, value_parser = parse_rfc3339, value_name = "TIME")]
    pub since: Option<prost_types::Timestamp>,
    /// Created before this time (RFC3339).
    #[arg(long, value_parser = parse_rfc3339, value_name = "TIME")]
    pub until: Option<prost_types::Timestamp>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// A delivery status filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Pending,
    Delivering,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<StatusArg> for DeliveryStatus {
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::Pending => Self::Pending,
            StatusArg::Delivering => Self::Delivering,
            StatusArg::Succeeded => Self::Succeeded,
            StatusArg::Failed => Self::Failed,
            StatusArg::Cancelled => Self::Cancelled,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List agents: node, version, last seen, applied config version, queue depth.
    List,
}

#[derive(Debug, Args)]
pub struct EmitArgs {
    #[arg(long)]
    pub owner: String,
    /// Event type, e.g. `payment.settled`.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: String,
    /// The occurrence's identity (re-emitting it creates nothing new); the agent assigns one when absent.
    #[arg(long)]
    pub id: Option<String>,
    /// When it happened (RFC3339); the agent uses now when absent.
    #[arg(long, value_parser = parse_rfc3339, value_name = "TIME")]
    pub occurred_at: Option<prost_types::Timestamp>,
    /// JSON payload, `@FILE` to read it from a file, or `@-` from standard input.
    #[arg(long, value_parser = parse_payload, value_name = "JSON|@FILE")]
    pub payload: Payload,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where control and the agent keep their data, their logs and the demo endpoint's secret.
    #[arg(long, default_value = "./hookrelay-dev-data", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Control's port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 7100)]
    pub control_port: u16,
    /// The agent's port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 7200)]
    pub agent_port: u16,
    /// The demo receiver's port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 7300)]
    pub receiver_port: u16,
}

/// JSON payload bytes, kept exactly as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

/// Accepts `http://host:port` (plaintext HTTP/2) and `https://host:port` (TLS) addresses.
pub fn parse_server_url(text: &str) -> Result<String, String> {
    let uri: hyper::Uri = text.parse().map_err(|error| format!("not a URL: {error}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("expected http://HOST:PORT or https://HOST:PORT".to_owned()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("expected http://HOST:PORT or https://HOST:PORT".to_owned());
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// Parses `N/PERIOD`: `5/s`, `10/min` (also `sec`, `second`, `m`, `minute`, with or without a plural s).
pub fn parse_rate_limit(text: &str) -> Result<RateLimit, String> {
    let (count, period) = text.split_once('/').ok_or_else(|| format!("{text:?} is not N/s or N/min, e.g. 10/min"))?;
    let limit: u32 = count.trim().parse().map_err(|_| format!("{count:?} is not a whole number"))?;
    if limit == 0 {
        return Err("the limit must be at least 1 (use --clear-rate-limit on update to remove it)".to_owned());
    }
    let period = match period.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => RateLimitPeriod::Second,
        "m" | "min" | "mins" | "minute" | "minutes" => RateLimitPeriod::Minute,
        other => return Err(format!("unknown period {other:?}: use s or min")),
    };
    Ok(RateLimit { limit, period: period.into() })
}

/// Parses a rotation overlap: a duration such as `24h`, `90m` or `7days`, in whole seconds and at least one.
pub fn parse_overlap(text: &str) -> Result<Duration, String> {
    let overlap = humantime::parse_duration(text.trim())
        .map_err(|error| format!("{text:?} is not a duration like 24h, 90m or 7days: {error}"))?;
    if overlap.subsec_nanos() != 0 || overlap.is_zero() {
        return Err(format!("{text:?}: the overlap is a whole number of seconds, at least 1s"));
    }
    Ok(overlap)
}

/// Parses `--wait-timeout`: a duration such as `30s` or `2m`, more than zero.
pub fn parse_wait_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text.trim())
        .map_err(|error| format!("{text:?} is not a duration like 30s or 2m: {error}"))?;
    if timeout.is_zero() {
        return Err(format!("{text:?}: the timeout must be more than zero"));
    }
    Ok(timeout)
}

/// Parses a custom header given as `name=value`.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not name=value"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("{text:?} has no header name before '='"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// Parses an RFC3339 time (`2026-01-01T00:00:00Z`, `2026-01-01T01:00:00+01:00`).
pub fn parse_rfc3339(text: &str) -> Result<prost_types::Timestamp, String> {
    let timestamp: jiff::Timestamp =
        text.trim().parse().map_err(|error| format!("not an RFC3339 time like 2026-01-01T00:00:00Z: {error}"))?;
    Ok(prost_types::Timestamp { seconds: timestamp.as_second(), nanos: timestamp.subsec_nanosecond() })
}

/// Reads a payload: literal JSON, `@FILE`, or `@-` for standard input. It must be valid JSON; the bytes are sent
/// verbatim.
pub fn parse_payload(text: &str) -> Result<Payload, String> {
    let bytes = match text.strip_prefix('@') {
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                .map_err(|error| format!("cannot read standard input: {error}"))?;
            bytes
        }
        Some(path) => std::fs::read(path).map_err(|error| format!("cannot read {path}: {error}"))?,
        None => text.as_bytes().to_vec(),
    };
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|error| format!("payload is not JSON: {error}"))?;
    Ok(Payload(bytes))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hookrelay").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rate_limits() {
        assert_eq!(parse_rate_limit("10/min"), Ok(RateLimit { limit: 10, period: RateLimitPeriod::Minute.into() }));
        assert_eq!(parse_rate_limit("5/s"), Ok(RateLimit { limit: 5, period: RateLimitPeriod::Second.into() }));
        assert_eq!(
            parse_rate_limit(" 7 / Seconds "),
            Ok(RateLimit { limit: 7, period: RateLimitPeriod::Second.into() })
        );
        assert_eq!(parse_rate_limit("3/m").unwrap().period, i32::from(RateLimitPeriod::Minute));
        assert!(parse_rate_limit("10").unwrap_err().contains("N/s or N/min"));
        assert!(parse_rate_limit("0/s").unwrap_err().contains("at least 1"));
        assert!(parse_rate_limit("-1/s").is_err());
        assert!(parse_rate_limit("10/h").unwrap_err().contains("unknown period"));
    }

    #[test]
    fn overlaps() {
        assert_eq!(parse_overlap("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_overlap("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_overlap("7days"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_overlap("0s").unwrap_err().contains("at least 1s"));
        assert!(parse_overlap("1500ms").unwrap_err().contains("whole number of seconds"));
        assert!(parse_overlap("soon").unwrap_err().contains("not a duration"));
        let cli = parse(&["endpoint", "rotate-secret", "ep_1", "--overlap", "2h"]).unwrap();
        let Command::Endpoint(EndpointCommand::RotateSecret { id, overlap, .. }) = cli.command else {
            panic!("not rotate")
        };
        assert_eq!((id.as_str(), overlap), ("ep_1", Some(Duration::from_secs(7_200))));
        let cli = parse(&["endpoint", "verify", "ep_1", "-o", "json"]).unwrap();
        assert!(matches!(cli.command, Command::Endpoint(EndpointCommand::Verify { .. })));
    }

    #[test]
    fn wait_flags() {
        let cli = parse(&["endpoint", "rotate-secret", "ep_1", "--wait", "--wait-timeout", "2m"]).unwrap();
        let Command::Endpoint(EndpointCommand::RotateSecret { wait, .. }) = cli.command else { panic!("not rotate") };
        assert!(wait.wait);
        assert_eq!(wait.wait_timeout, Some(Duration::from_secs(120)));
        let cli = parse(&["endpoint", "disable", "ep_1", "--wait"]).unwrap();
        let Command::Endpoint(EndpointCommand::Disable { wait, .. }) = cli.command else { panic!("not disable") };
        assert_eq!((wait.wait, wait.wait_timeout), (true, None));
        let cli = parse(&["endpoint", "update", "ep_1", "--description", "x", "--wait"]).unwrap();
        let Command::Endpoint(EndpointCommand::Update(args)) = cli.command else { panic!("not update") };
        assert!(args.wait.wait);
        // A timeout without --wait, a zero timeout, and --wait as the only "change" of an update are usage errors.
        let error = parse(&["endpoint", "enable", "ep_1", "--wait-timeout", "5s"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(parse(&["endpoint", "delete", "ep_1", "--wait", "--wait-timeout", "0s"]).is_err());
        let error = parse(&["endpoint", "update", "ep_1", "--wait"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn yaml_output_and_completions() {
        let cli = parse(&["agent", "list", "-o", "yaml"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Yaml);
        let cli = parse(&["completions", "zsh"]).unwrap();
        assert!(matches!(cli.command, Command::Completions { shell: clap_complete::Shell::Zsh }));
        assert!(parse(&["completions", "cmd.exe"]).is_err());
    }

    #[test]
    fn replay_and_recover() {
        let cli = parse(&["delivery", "replay", "dlv_1"]).unwrap();
        assert!(matches!(cli.command, Command::Delivery(DeliveryCommand::Replay { id }) if id == "dlv_1"));
        let cli = parse(&["endpoint", "recover", "ep_1", "--since", "2026-01-01T00:00:00Z"]).unwrap();
        let Command::Endpoint(EndpointCommand::Recover { id, since }) = cli.command else { panic!("not recover") };
        assert_eq!((id.as_str(), since.map(|ts| ts.seconds)), ("ep_1", Some(1_767_225_600)));
        assert!(parse(&["endpoint", "recover", "ep_1", "--since", "yesterday"]).is_err());
    }

    #[test]
    fn headers() {
        assert_eq!(parse_header("x-team=payments"), Ok(("x-team".into(), "payments".into())));
        assert_eq!(parse_header("authorization=Bearer a=b"), Ok(("authorization".into(), "Bearer a=b".into())));
        assert_eq!(parse_header("x-empty="), Ok(("x-empty".into(), String::new())));
        assert!(parse_header("x-team").is_err());
        assert!(parse_header("=value").is_err());
    }

    #[test]
    fn payloads_inline_and_from_files() {
        assert_eq!(parse_payload(r#"{"a":1}"#), Ok(Payload(br#"{"a":1}"#.to_vec())));
        assert!(parse_payload("{not json").unwrap_err().contains("not JSON"));

        let mut file = tempfile::NamedTempFile::new().unwrap();
        // Whitespace and key order are kept: the payload is sent verbatim.
        file.write_all(b"{ \"b\": 2,\n  \"a\": 1 }\n").unwrap();
        let argument = format!("@{}", file.path().display());
        assert_eq!(parse_payload(&argument), Ok(Payload(b"{ \"b\": 2,\n  \"a\": 1 }\n".to_vec())));

        assert!(parse_payload("@/nonexistent/payload.json").unwrap_err().contains("cannot read /nonexistent"));
    }

    #[test]
    fn times_and_urls() {
        let time = parse_rfc3339("2026-01-01T01:00:00+01:00").unwrap();
        assert_eq!((time.seconds, time.nanos), (1_767_225_600, 0));
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00.250Z").unwrap().nanos, 250_000_000);
        assert!(parse_rfc3339("yesterday").is_err());

        assert_eq!(parse_server_url("http://127.0.0.1:7100/"), Ok("http://127.0.0.1:7100".into()));
        assert_eq!(parse_server_url("https://control:7100"), Ok("https://control:7100".into()));
        assert!(parse_server_url("ftp://control:7100").is_err());
        assert!(parse_server_url("127.0.0.1:7100").is_err());
    }

    #[test]
    fn endpoint_create_flags() {
        let cli = parse(&[
            "endpoint",
            "create",
            "--owner",
            "acme",
            "--url",
            "https://a.example/h",
            "--filter",
            "a.b",
            "--filter",
            "c.*,d",
            "--rate-limit",
            "10/min",
            "--retry-schedule-ms",
            "50,50,50",
            "--header",
            "x-a=1",
            "--header",
            "x-b=2",
            "--insecure",
        ])
        .unwrap();
        let Command::Endpoint(EndpointCommand::Create(args)) = cli.command else { panic!("not endpoint create") };
        assert_eq!(args.filters, ["a.b", "c.*", "d"]);
        assert_eq!(args.rate_limit, Some(RateLimit { limit: 10, period: RateLimitPeriod::Minute.into() }));
        assert_eq!(args.retry_schedule_ms, [50, 50, 50]);
        assert_eq!(args.headers, [("x-a".into(), "1".into()), ("x-b".into(), "2".into())]);
        assert!(args.insecure && !args.disabled);
        assert_eq!(cli.output, OutputFormat::Table);
    }

    #[test]
    fn usage_errors() {
        // No filter: an endpoint must subscribe to something.
        let error = parse(&["endpoint", "create", "--owner", "acme", "--url", "https://a.example/h"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        // An update must change something.
        let error = parse(&["endpoint", "update", "ep_1"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let error = parse(&["endpoint", "update", "ep_1", "--rate-limit", "1/s", "--clear-rate-limit"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        let error = parse(&["emit", "--owner", "a", "--type", "t", "--payload", "{"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["delivery", "list", "--status", "failed", "-o", "json", "--control", "http://c:1"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        assert_eq!(cli.control, "http://c:1");
        let Command::Delivery(DeliveryCommand::List(args)) = cli.command else { panic!("not delivery list") };
        assert_eq!(args.status, Some(StatusArg::Failed));
    }
}
