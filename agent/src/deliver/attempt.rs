//! One attempt: the signed Standard Webhooks request, sent through the pooled client within the endpoint's
//! timeout, with at most 4 KiB of the response read (none when the agent keeps no response snippets).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hookrelay_common::model::RESPONSE_SNIPPET_BYTES;
use hookrelay_common::outbound::{self, HttpClient, ResolveError};
use hookrelay_common::time::now_ms;
use hookrelay_common::url_policy;
use http::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};

use crate::catalog::EndpointConfig;
use crate::queue::EventRecord;

const USER_AGENT_VALUE: &str = concat!("hookrelay/", env!("CARGO_PKG_VERSION"));

/// Why an attempt got no usable response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// `timeout`, `refused_address`, `dns`, `connect`, `request` or `response`.
    pub class: &'static str,
    pub message: String,
}

/// What one attempt observed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptResult {
    pub started_at_ms: u64,
    pub duration: Duration,
    pub status: Option<u16>,
    pub error: Option<AttemptError>,
    pub snippet: String,
    /// `Retry-After` of the response, as a delay.
    pub retry_after: Option<Duration>,
}

/// Sends attempt number `attempt` of `event` to `endpoint` through the client, whose connector refuses addresses
/// the agent's policy forbids. Keeps the first `snippet_bytes` of the response (at most 4 KiB).
pub async fn send(
    client: &HttpClient,
    endpoint: &EndpointConfig,
    event: &EventRecord,
    attempt: u32,
    snippet_bytes: usize,
) -> AttemptResult {
    let started_at_ms = now_ms();
    let started = Instant::now();
    let request = build_request(endpoint, event, attempt, (started_at_ms / 1000) as i64);
    let snippet_bytes = snippet_bytes.min(RESPONSE_SNIPPET_BYTES);
    let outcome = match tokio::time::timeout(endpoint.timeout, exchange(client, request, snippet_bytes)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(AttemptError {
            class: "timeout",
            message: format!("no complete response within {}ms", endpoint.timeout.as_millis()),
        }),
    };
    let duration = started.elapsed();
    match outcome {
        Ok((status, retry_after, snippet)) => {
            AttemptResult { started_at_ms, duration, status: Some(status), error: None, snippet, retry_after }
        }
        Err(error) => AttemptResult { started_at_ms, duration, error: Some(error), ..AttemptResult::default() },
    }
}

fn build_request(endpoint: &EndpointConfig, event: &EventRecord, attempt: u32, timestamp: i64) -> Request<Full<Bytes>> {
    let signature = endpoint.signer.webhook_signature(&event.id, timestamp, &event.payload);
    let mut builder = Request::post(endpoint.url.as_str())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
        .header("webhook-id", event.id.as_str())
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signature)
        .header("hookrelay-event-type", event.event_type.as_str())
        .header("hookrelay-attempt", attempt);
    if endpoint.body_signature
        && let Some(signature) = endpoint.signer.body_signature(&event.payload)
    {
        builder = builder.header("x-hookrelay-signature", signature);
    }
    for (name, value) in &endpoint.headers {
        builder = builder.header(name, value);
    }
    builder.body(Full::new(event.payload.clone())).expect("ids, types and custom headers are validated header values")
}

async fn exchange(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
    snippet_bytes: usize,
) -> Result<(u16, Option<Duration>, String), AttemptError> {
    let response = client.request(request).await.map_err(classify)?;
    let status = response.status().as_u16();
    let retry_after = response.headers().get(RETRY_AFTER).and_then(parse_retry_after);
    let mut body = response.into_body();
    let mut snippet = BytesMut::new();
    while snippet.len() < snippet_bytes {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = snippet_bytes - snippet.len();
                    snippet.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            // The status decides the outcome; a body cut short is not worth failing a delivery over.
            Some(Err(_)) | None => break,
        }
    }
    Ok((status, retry_after, String::from_utf8_lossy(&snippet).into_owned()))
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

fn classify(error: hyper_util::client::legacy::Error) -> AttemptError {
    match outbound::find_resolve_error(&error) {
        Some(refused @ ResolveError::Refused(_)) => {
            AttemptError { class: "refused_address", message: refused.to_string() }
        }
        Some(lookup @ ResolveError::Lookup { .. }) => AttemptError { class: "dns", message: lookup.to_string() },
        None => AttemptError {
            class: if error.is_connect() { "connect" } else { "request" },
            message: url_policy::redact(&outbound::error_chain(&error)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after(&HeaderValue::from_static("120")), Some(Duration::from_secs(120)));
        let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let delay = parse_retry_after(&HeaderValue::from_str(&future).unwrap()).unwrap();
        assert!(delay <= Duration::from_secs(30) && delay >= Duration::from_secs(28), "{delay:?}");
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    }
}
