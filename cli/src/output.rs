//! How responses are printed: aligned tables for people (`--output table`, the default), or the response message as
//! JSON (`--output json`, see [`crate::json`]). Every printed response implements [`Render`]; this module owns the
//! table side and the text helpers (RFC3339 times, durations, rate limits) that tables share.

use std::io::Write as _;

use comfy_table::{Cell, Table, presets};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::{model, url_policy};

use crate::args::OutputFormat;
use crate::json::{ToJson, attempt_outcome_name, delivery_status_name, rfc3339};

/// A response that prints as a table or as JSON.
pub trait Render: ToJson {
    /// The human form, without a trailing newline.
    fn table(&self) -> String;
}

/// Prints `value` to standard output in the chosen format.
pub fn print(format: OutputFormat, value: &impl Render) {
    let text = render(format, value);
    // Not `println!`: a reader that stops early (`| head`) closes the pipe, which is no reason to panic.
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// `value` in the chosen format, without a trailing newline.
pub fn render(format: OutputFormat, value: &impl Render) -> String {
    match format {
        OutputFormat::Table => value.table(),
        OutputFormat::Json => serde_json::to_string_pretty(&value.to_json()).expect("a JSON value always serializes"),
        OutputFormat::Yaml => {
            let yaml = serde_yaml_ng::to_string(&value.to_json()).expect("a JSON value always serializes as YAML");
            yaml.trim_end().to_owned()
        }
    }
}

fn time_or_dash(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(|| "-".to_owned(), rfc3339)
}

fn or_dash(text: &str) -> String {
    if text.is_empty() { "-".to_owned() } else { text.to_owned() }
}

/// A duration in milliseconds in the largest unit that divides it: `50ms`, `5s`, `30m`, `2h`.
pub fn duration_ms(ms: u64) -> String {
    const SECOND: u64 = 1000;
    const MINUTE: u64 = 60 * SECOND;
    const HOUR: u64 = 60 * MINUTE;
    match ms {
        0 => "0ms".to_owned(),
        ms if ms % HOUR == 0 => format!("{}h", ms / HOUR),
        ms if ms % MINUTE == 0 => format!("{}m", ms / MINUTE),
        ms if ms % SECOND == 0 => format!("{}s", ms / SECOND),
        ms => format!("{ms}ms"),
    }
}

/// `10/min`, `5/s`, or `none`.
pub fn rate_limit_text(limit: Option<&pb::RateLimit>) -> String {
    let Some(limit) = limit else {
        return "none".to_owned();
    };
    match pb::RateLimitPeriod::try_from(limit.period) {
        Ok(pb::RateLimitPeriod::Second) => format!("{}/s", limit.limit),
        Ok(pb::RateLimitPeriod::Minute) => format!("{}/min", limit.limit),
        _ => format!("{} per unknown period {}", limit.limit, limit.period),
    }
}

fn retry_schedule_text(policy: Option<&pb::RetryPolicy>) -> String {
    let schedule = policy.map(|policy| policy.schedule_ms.as_slice()).unwrap_or_default();
    let steps = |ms: &mut dyn Iterator<Item = u64>| ms.map(duration_ms).collect::<Vec<_>>().join(", ");
    if schedule.is_empty() {
        let defaults = model::DEFAULT_RETRY_SCHEDULE.iter().map(|delay| delay.as_millis() as u64);
        format!("default ({})", steps(&mut defaults.into_iter()))
    } else {
        steps(&mut schedule.iter().copied())
    }
}

/// `succeeded` for `DELIVERY_STATUS_SUCCEEDED`.
fn short_enum_name(name: Option<&'static str>, prefix: &str, value: i32) -> String {
    match name {
        Some(name) => name.strip_prefix(prefix).unwrap_or(name).to_ascii_lowercase().replace('_', " "),
        None => format!("unknown ({value})"),
    }
}

fn delivery_status_text(status: i32) -> String {
    short_enum_name(delivery_status_name(status), "DELIVERY_STATUS_", status)
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// At most `max` characters on one line.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let flat = flat.trim();
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max.saturating_sub(1)).collect::<String>())
    } else {
        flat.to_owned()
    }
}

/// A borderless table with a header row, like `kubectl get`: columns separated by two spaces.
pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(header.iter().map(Cell::new));
    for row in rows {
        table.add_row(row);
    }
    pad_columns(&mut table);
    table.trim_fmt()
}

/// `key: value` lines, values aligned.
pub fn details(pairs: &[(&str, String)]) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    for (key, value) in pairs {
        table.add_row(vec![format!("{key}:"), value.clone()]);
    }
    pad_columns(&mut table);
    table.trim_fmt()
}

fn pad_columns(table: &mut Table) {
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
}

fn with_next_page(text: String, next_page_token: &str) -> String {
    if next_page_token.is_empty() { text } else { format!("{text}\n\nmore results: --page-token {next_page_token}") }
}

impl Render for pb::Owner {
    fn table(&self) -> String {
        details(&[
            ("id", self.id.clone()),
            ("name", or_dash(&self.name)),
            ("created", time_or_dash(self.created_at.as_ref())),
            ("updated", time_or_dash(self.updated_at.as_ref())),
        ])
    }
}

impl Render for pb::ListOwnersResponse {
    fn table(&self) -> String {
        if self.owners.is_empty() {
            return with_next_page("no owners".to_owned(), &self.next_page_token);
        }
        let rows = self.owners.iter().map(|owner| {
            vec![
                owner.id.clone(),
                or_dash(&owner.name),
                time_or_dash(owner.created_at.as_ref()),
                time_or_dash(owner.updated_at.as_ref()),
            ]
        });
        with_next_page(table(&["ID", "NAME", "CREATED", "UPDATED"], rows), &self.next_page_token)
    }
}

impl Render for pb::EventType {
    fn table(&self) -> String {
        details(&[
            ("name", self.name.clone()),
            ("description", or_dash(&self.description)),
            ("created", time_or_dash(self.created_at.as_ref())),
            ("updated", time_or_dash(self.updated_at.as_ref())),
        ])
    }
}

impl Render for pb::ListEventTypesResponse {
    fn table(&self) -> String {
        if self.event_types.is_empty() {
            return with_next_page("no event types".to_owned(), &self.next_page_token);
        }
        let rows = self.event_types.iter().map(|event_type| {
            vec![
                event_type.name.clone(),
                one_line(&or_dash(&event_type.description), 60),
                time_or_dash(event_type.created_at.as_ref()),
            ]
        });
        with_next_page(table(&["NAME", "DESCRIPTION", "CREATED"], rows), &self.next_page_token)
    }
}

fn enabled_text(endpoint: &pb::Endpoint) -> String {
    match (endpoint.enabled, endpoint.disabled_reason.is_empty()) {
        (true, _) => "yes".to_owned(),
        (false, true) => "no".to_owned(),
        (false, false) => format!("no ({})", endpoint.disabled_reason),
    }
}

impl Render for pb::Endpoint {
    fn table(&self) -> String {
        let mut headers: Vec<String> = self.headers.iter().map(|(name, value)| format!("{name}={value}")).collect();
        headers.sort();
        details(&[
            ("id", self.id.clone()),
            ("owner", self.owner_id.clone()),
            ("url", self.url.clone()),
            ("description", or_dash(&self.description)),
            ("filters", self.filter_types.join(", ")),
            ("enabled", enabled_text(self)),
            ("rate limit", rate_limit_text(self.rate_limit.as_ref())),
            (
                "max in flight",
                match self.max_in_flight {
                    0 => format!("{} (default)", model::DEFAULT_MAX_IN_FLIGHT),
                    n => n.to_string(),
                },
            ),
            (
                "timeout",
                match self.timeout_ms {
                    0 => format!("{} (default)", duration_ms(model::DEFAULT_TIMEOUT.as_millis() as u64)),
                    ms => duration_ms(ms),
                },
            ),
            ("retry schedule", retry_schedule_text(self.retry_policy.as_ref())),
            ("headers", if headers.is_empty() { "-".to_owned() } else { headers.join(", ") }),
            ("insecure", yes_no(self.insecure).to_owned()),
            ("body signature", yes_no(self.body_signature).to_owned()),
            ("created", time_or_dash(self.created_at.as_ref())),
            ("updated", time_or_dash(self.updated_at.as_ref())),
        ])
    }
}

/// The note printed with a new endpoint's secret.
pub const SECRET_NOTE: &str =
    "This secret is shown only now: store it where the receiver can read it. hookrelay never displays it again.";

impl Render for pb::CreateEndpointResponse {
    fn table(&self) -> String {
        let endpoint = self.endpoint.as_ref().map(Render::table).unwrap_or_default();
        format!("{endpoint}\n\nsecret: {}\n{SECRET_NOTE}", self.secret)
    }
}

impl Render for pb::RotateEndpointSecretResponse {
    fn table(&self) -> String {
        let endpoint = self.endpoint.as_ref().map(Render::table).unwrap_or_default();
        format!(
            "{endpoint}\n\nnew secret: {}\nthe previous secret stays valid until {}; deliveries carry a signature for \
             each until then.\n{SECRET_NOTE}",
            self.secret,
            time_or_dash(self.previous_secret_expires_at.as_ref())
        )
    }
}

/// A passed verification challenge.
pub struct Verified(pub pb::VerifyEndpointResponse);

impl ToJson for Verified {
    fn to_json(&self) -> serde_json::Value {
        self.0.to_json()
    }
}

impl Render for Verified {
    fn table(&self) -> String {
        let endpoint = self.0.endpoint.as_ref();
        format!(
            "endpoint {} answered the verification challenge in {}ms ({})",
            endpoint.map_or("-", |endpoint| endpoint.id.as_str()),
            self.0.duration_ms,
            endpoint.map_or_else(|| "-".to_owned(), |endpoint| url_policy::redact(&endpoint.url)),
        )
    }
}

impl Render for pb::ListEndpointsResponse {
    fn table(&self) -> String {
        if self.endpoints.is_empty() {
            return with_next_page("no endpoints".to_owned(), &self.next_page_token);
        }
        let rows = self.endpoints.iter().map(|endpoint| {
            vec![
                endpoint.id.clone(),
                endpoint.owner_id.clone(),
                // A query string may carry a token: lists never show it.
                url_policy::redact(&endpoint.url),
                one_line(&endpoint.filter_types.join(","), 40),
                one_line(&enabled_text(endpoint), 40),
                time_or_dash(endpoint.created_at.as_ref()),
            ]
        });
        with_next_page(table(&["ID", "OWNER", "URL", "FILTERS", "ENABLED", "CREATED"], rows), &self.next_page_token)
    }
}

/// `HTTP 500`, the error, or `-` when nothing was tried yet.
fn result_text(status_code: u32, error_class: &str, error: &str) -> String {
    match (status_code, error_class.is_empty(), error.is_empty()) {
        (0, true, true) => "-".to_owned(),
        (0, true, false) => error.to_owned(),
        (0, false, true) => error_class.to_owned(),
        (0, false, false) => format!("{error_class}: {error}"),
        (code, _, _) => format!("HTTP {code}"),
    }
}

impl Render for pb::ListDeliveriesResponse {
    fn table(&self) -> String {
        if self.deliveries.is_empty() {
            return with_next_page("no deliveries".to_owned(), &self.next_page_token);
        }
        let rows = self.deliveries.iter().map(|delivery| {
            vec![
                delivery.id.clone(),
                delivery.event_type.clone(),
                delivery.endpoint_id.clone(),
                delivery_status_text(delivery.status),
                delivery.attempts.to_string(),
                one_line(&result_text(delivery.last_status_code, "", &delivery.last_error), 40),
                time_or_dash(delivery.created_at.as_ref()),
            ]
        });
        let header = ["ID", "TYPE", "ENDPOINT", "STATUS", "ATTEMPTS", "LAST RESULT", "CREATED"];
        with_next_page(table(&header, rows), &self.next_page_token)
    }
}

impl Render for pb::GetDeliveryResponse {
    fn table(&self) -> String {
        let mut text = match &self.delivery {
            Some(delivery) => details(&[
                ("id", delivery.id.clone()),
                ("event id", delivery.event_id.clone()),
                ("owner", delivery.owner_id.clone()),
                ("endpoint", delivery.endpoint_id.clone()),
                ("type", delivery.event_type.clone()),
                ("status", delivery_status_text(delivery.status)),
                ("attempts", delivery.attempts.to_string()),
                ("last result", result_text(delivery.last_status_code, "", &delivery.last_error)),
                ("next attempt", time_or_dash(delivery.next_attempt_at.as_ref())),
                ("created", time_or_dash(delivery.created_at.as_ref())),
                ("updated", time_or_dash(delivery.updated_at.as_ref())),
                ("delivered", time_or_dash(delivery.delivered_at.as_ref())),
                ("agent", or_dash(&delivery.agent)),
            ]),
            None => "no delivery in the response".to_owned(),
        };
        text.push_str("\n\n");
        if self.attempts.is_empty() {
            text.push_str("no attempts yet");
            return text;
        }
        let rows = self.attempts.iter().map(|attempt| {
            vec![
                attempt.number.to_string(),
                time_or_dash(attempt.started_at.as_ref()),
                duration_ms(attempt.duration_ms),
                // The class is enough here: the reason, and `--output json`, carry the whole error.
                one_line(&result_text(attempt.status_code, "", &attempt.error_class), 30),
                short_enum_name(attempt_outcome_name(attempt.outcome), "ATTEMPT_OUTCOME_", attempt.outcome),
                one_line(&or_dash(if attempt.reason.is_empty() { &attempt.error } else { &attempt.reason }), 80),
                time_or_dash(attempt.next_attempt_at.as_ref()),
                one_line(&or_dash(&attempt.response_snippet), 40),
            ]
        });
        let header = ["#", "STARTED", "DURATION", "RESULT", "OUTCOME", "REASON", "NEXT ATTEMPT", "RESPONSE"];
        text.push_str(&table(&header, rows));
        text
    }
}

impl Render for pb::ListAgentsResponse {
    fn table(&self) -> String {
        let control = format!("control's config version: {}", self.config_version);
        if self.agents.is_empty() {
            return format!("{control}\nno agents");
        }
        let rows = self.agents.iter().map(|agent| {
            vec![
                agent.node_name.clone(),
                or_dash(&agent.agent_version),
                yes_no(agent.connected).to_owned(),
                time_or_dash(agent.last_seen.as_ref()),
                agent.applied_version.to_string(),
                agent.queue_depth.to_string(),
                one_line(&or_dash(&agent.last_error), 60),
            ]
        });
        let header = ["NODE", "VERSION", "CONNECTED", "LAST SEEN", "CONFIG VERSION", "QUEUE", "LAST ERROR"];
        format!("{control}\n{}", table(&header, rows))
    }
}

impl Render for pb::ReplayDeliveryResponse {
    fn table(&self) -> String {
        match &self.delivery {
            Some(delivery) => format!(
                "replay of delivery {} requested from agent {}: watch it with `hookrelay delivery get {}`",
                delivery.id, delivery.agent, delivery.id
            ),
            None => "replay requested".to_owned(),
        }
    }
}

impl Render for pb::RecoverFailedResponse {
    fn table(&self) -> String {
        let mut text = format!("replay requested for {} failed deliveries", self.requested);
        if self.skipped > 0 {
            text.push_str(&format!(
                "; {} skipped because their agent is not connected (run again once it is)",
                self.skipped
            ));
        }
        if self.unreplayable > 0 {
            text.push_str(&format!(
                "; {} cannot be replayed (reported by an older agent without a payload reference)",
                self.unreplayable
            ));
        }
        text
    }
}

impl Render for pb::EmitResponse {
    fn table(&self) -> String {
        let deliveries = match self.deliveries {
            1 => "1 delivery".to_owned(),
            n => format!("{n} deliveries"),
        };
        if self.duplicate {
            format!("event {} was accepted before ({deliveries}): nothing new was created", self.id)
        } else if self.deliveries == 0 {
            format!("accepted event {}: no enabled endpoint of this owner subscribes to its type", self.id)
        } else {
            format!("accepted event {}: {deliveries}", self.id)
        }
    }
}

/// The answer of a call whose response message is empty (deletes): a sentence for people, `{}` as JSON.
pub struct Done(pub String);

impl ToJson for Done {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

impl Render for Done {
    fn table(&self) -> String {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_is_the_json_document() {
        let owner = pb::Owner { id: "acme".into(), name: "Acme: payments".into(), ..Default::default() };
        let yaml = render(OutputFormat::Yaml, &owner);
        assert!(yaml.contains("id: acme"), "{yaml}");
        assert!(yaml.contains("name: 'Acme: payments'") || yaml.contains("name: \"Acme: payments\""), "{yaml}");
        assert!(yaml.contains("created_at: null"), "{yaml}");
    }

    fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos })
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(&ts(0, 0).unwrap()), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(&ts(1_767_225_600, 123_456_789).unwrap()), "2026-01-01T00:00:00.123Z");
        assert_eq!(time_or_dash(None), "-");
    }

    #[test]
    fn durations_and_limits() {
        assert_eq!(duration_ms(50), "50ms");
        assert_eq!(duration_ms(1500), "1500ms");
        assert_eq!(duration_ms(5000), "5s");
        assert_eq!(duration_ms(30 * 60_000), "30m");
        assert_eq!(duration_ms(10 * 3_600_000), "10h");
        let limit = pb::RateLimit { limit: 10, period: pb::RateLimitPeriod::Minute.into() };
        assert_eq!(rate_limit_text(Some(&limit)), "10/min");
        assert_eq!(rate_limit_text(None), "none");
        assert_eq!(retry_schedule_text(None), "default (5s, 5m, 30m, 2h, 5h, 10h, 10h)");
        let policy = pb::RetryPolicy { schedule_ms: vec![50, 50, 50] };
        assert_eq!(retry_schedule_text(Some(&policy)), "50ms, 50ms, 50ms");
    }

    #[test]
    fn list_tables_align_columns_and_hint_at_the_next_page() {
        let response = pb::ListOwnersResponse {
            owners: vec![
                pb::Owner { id: "acme".into(), name: "Acme Corp".into(), created_at: ts(0, 0), ..Default::default() },
                pb::Owner { id: "b".into(), ..Default::default() },
            ],
            next_page_token: "tok".into(),
        };
        assert_eq!(
            response.table(),
            "\
ID    NAME       CREATED                   UPDATED
acme  Acme Corp  1970-01-01T00:00:00.000Z  -
b     -          -                         -

more results: --page-token tok"
        );
        assert_eq!(pb::ListOwnersResponse::default().table(), "no owners");
    }

    #[test]
    fn endpoint_details_show_defaults_and_never_a_secret() {
        let endpoint = pb::Endpoint {
            id: "ep_1".into(),
            owner_id: "acme".into(),
            url: "https://acme.example/hooks?token=abc".into(),
            filter_types: vec!["payment.*".into(), "refund.created".into()],
            enabled: false,
            disabled_reason: "410 Gone".into(),
            ..Default::default()
        };
        let text = endpoint.table();
        assert!(text.starts_with("id:              ep_1\nowner:           acme\n"), "{text}");
        assert!(text.contains("filters:         payment.*, refund.created\n"), "{text}");
        assert!(text.contains("enabled:         no (410 Gone)\n"), "{text}");
        assert!(text.contains("max in flight:   16 (default)\n"), "{text}");
        assert!(text.contains("timeout:         15s (default)\n"), "{text}");

        let list = pb::ListEndpointsResponse { endpoints: vec![endpoint], next_page_token: String::new() };
        assert!(!list.table().contains("token=abc"), "lists redact query strings");

        let created = pb::CreateEndpointResponse { endpoint: None, secret: "whsec_abc".into() };
        assert!(created.table().contains("secret: whsec_abc\nThis secret is shown only now"));

        let rotated = pb::RotateEndpointSecretResponse {
            endpoint: None,
            secret: "whsec_new".into(),
            previous_secret_expires_at: ts(1_767_225_600, 0),
        };
        let text = rotated.table();
        assert!(text.contains("new secret: whsec_new\n"), "{text}");
        assert!(text.contains("valid until 2026-01-01T00:00:00.000Z"), "{text}");
        let verified = Verified(pb::VerifyEndpointResponse {
            endpoint: Some(pb::Endpoint { id: "ep_1".into(), url: "https://h/p?token=x".into(), ..Default::default() }),
            duration_ms: 12,
        });
        assert_eq!(
            verified.table(),
            "endpoint ep_1 answered the verification challenge in 12ms (https://h/p?[redacted])"
        );
    }

    #[test]
    fn delivery_with_attempts() {
        let response = pb::GetDeliveryResponse {
            delivery: Some(pb::Delivery {
                id: "dlv_1".into(),
                status: pb::DeliveryStatus::Succeeded.into(),
                attempts: 2,
                last_status_code: 200,
                ..Default::default()
            }),
            attempts: vec![
                pb::Attempt {
                    number: 1,
                    duration_ms: 12,
                    error_class: "connect".into(),
                    error: "connection refused".into(),
                    outcome: pb::AttemptOutcome::RetryScheduled.into(),
                    reason: "connection errors are retried".into(),
                    ..Default::default()
                },
                pb::Attempt {
                    number: 2,
                    duration_ms: 3,
                    status_code: 200,
                    outcome: pb::AttemptOutcome::Succeeded.into(),
                    response_snippet: "ok\n".into(),
                    ..Default::default()
                },
            ],
        };
        let text = response.table();
        assert!(text.contains("status:        succeeded\n"), "{text}");
        assert!(text.contains("last result:   HTTP 200\n"), "{text}");
        assert!(
            text.contains("1  -        12ms      connect   retry scheduled  connection errors are retried  -"),
            "{text}"
        );
        assert!(
            text.contains("2  -        3ms       HTTP 200  succeeded        -                              -"),
            "{text}"
        );
    }

    #[test]
    fn emit_answers() {
        let response = pb::EmitResponse { id: "evt_1".into(), deliveries: 1, duplicate: false };
        assert_eq!(response.table(), "accepted event evt_1: 1 delivery");
        let response = pb::EmitResponse { id: "evt_1".into(), deliveries: 2, duplicate: true };
        assert_eq!(response.table(), "event evt_1 was accepted before (2 deliveries): nothing new was created");
    }
}
