//! The verification challenge: before an endpoint is trusted with deliveries, control sends
//! `GET <url>?challenge=<random>` (the parameter appended to any query the URL has) with the endpoint's custom
//! headers, and requires `200 {"challenge":"<same>"}` within [`DEFAULT_CHALLENGE_TIMEOUT`]. Anything else fails
//! with `FAILED_PRECONDITION` saying what came back: the status and a short body snippet, a redirect (never
//! followed), no answer in time, or the connection error, including a refusal by the address policy.
//!
//! The request goes through [`hookrelay_common::outbound`], the same policy-checked client deliveries use: the host
//! is resolved once, every address is checked against control's [`AddressPolicy`] (`--allowed-cidrs`), and only a
//! checked address is connected to. Messages show the URL without its query string.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hookrelay_common::model::RESPONSE_SNIPPET_BYTES;
use hookrelay_common::net_policy::AddressPolicy;
use hookrelay_common::outbound::{self, HttpClient, ResolveError};
use hookrelay_common::url_policy;
use http_body_util::{BodyExt as _, Full};
use rand::RngCore as _;

use crate::error::{Error, Result};

/// How long a receiver has to answer the challenge, connection included.
pub const DEFAULT_CHALLENGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The query parameter that carries the challenge.
pub const CHALLENGE_PARAMETER: &str = "challenge";
/// Most characters of the receiver's body quoted in an error.
const SNIPPET_CHARS: usize = 200;
const USER_AGENT: &str = concat!("hookrelay/", env!("CARGO_PKG_VERSION"));

/// Sends verification challenges through one pooled, policy-checked client.
#[derive(Clone)]
pub struct Verifier {
    client: HttpClient,
    timeout: Duration,
}

impl Verifier {
    /// A verifier whose requests obey `policy` and give up after `timeout`.
    pub fn new(policy: AddressPolicy, timeout: Duration) -> std::result::Result<Self, rustls::Error> {
        Ok(Self::with_client(outbound::build_client(Arc::new(policy))?, timeout))
    }

    /// A verifier over an existing client (tests use one with a scripted resolver).
    pub fn with_client(client: HttpClient, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// Challenges `url`, sending `headers` too. Returns how long the answer took, or `FAILED_PRECONDITION` saying
    /// what came back instead of the challenge.
    pub async fn verify(&self, url: &str, headers: &HashMap<String, String>) -> Result<Duration> {
        let challenge = random_challenge();
        let mut target = url::Url::parse(url).map_err(|error| Error::invalid("url", error.to_string()))?;
        target.query_pairs_mut().append_pair(CHALLENGE_PARAMETER, &challenge);
        let mut request = http::Request::get(target.as_str())
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(http::header::ACCEPT, "application/json");
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request =
            request.body(Full::<Bytes>::default()).map_err(|error| Error::invalid("headers", error.to_string()))?;

        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, exchange(&self.client, request)).await;
        let elapsed = started.elapsed();
        let failed = |what: String| {
            Error::FailedPrecondition(format!("verification challenge to {} failed: {what}", url_policy::redact(url)))
        };
        let (status, location, body) = match answer {
            Err(_) => return Err(failed(format!("no complete answer within {}s", self.timeout.as_secs_f64()))),
            Ok(Err(error)) => return Err(failed(describe(&error))),
            Ok(Ok(answer)) => answer,
        };
        if status == http::StatusCode::OK {
            return match answered_challenge(&body) {
                Some(value) if value == challenge => Ok(elapsed),
                Some(_) => Err(failed(format!(
                    "answered 200 with another challenge value than the one sent: {}",
                    snippet(&body)
                ))),
                None => Err(failed(format!(
                    "answered 200 without {{\"challenge\":\"<the value sent>\"}} in its JSON body: {}",
                    snippet(&body)
                ))),
            };
        }
        let status_text = match status.canonical_reason() {
            Some(reason) => format!("{} {reason}", status.as_u16()),
            None => status.as_u16().to_string(),
        };
        if status.is_redirection() {
            let to = location.map(|to| format!(" to {}", url_policy::redact(&to))).unwrap_or_default();
            return Err(failed(format!(
                "answered {status_text}{to}; redirects are not followed, the URL itself must answer 200"
            )));
        }
        Err(failed(format!("answered {status_text} instead of 200: {}", snippet(&body))))
    }
}

/// 32 random bytes as hex: URL-safe and unguessable.
fn random_challenge() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Sends the request and reads the status, the `location` header and at most [`RESPONSE_SNIPPET_BYTES`] of body.
async fn exchange(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
) -> std::result::Result<(http::StatusCode, Option<String>, Bytes), hyper_util::client::legacy::Error> {
    let response = client.request(request).await?;
    let status = response.status();
    let location = response
        .headers()
        .get(http::header::LOCATION)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let mut body = response.into_body();
    let mut read = BytesMut::new();
    while read.len() < RESPONSE_SNIPPET_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = RESPONSE_SNIPPET_BYTES - read.len();
                    read.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    Ok((status, location, read.freeze()))
}

/// The `challenge` string of a JSON object body, if there is one.
fn answered_challenge(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get(CHALLENGE_PARAMETER)?.as_str().map(str::to_owned)
}

/// The body as one short line, for an error message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut shown: String = line.chars().filter(|c| !c.is_control()).take(SNIPPET_CHARS).collect();
    if line.chars().count() > SNIPPET_CHARS {
        shown.push('…');
    }
    format!("body {shown:?}")
}

/// What went wrong before an answer arrived.
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    match outbound::find_resolve_error(error) {
        Some(ResolveError::Refused(refusal)) => format!(
            "address {} is refused by control's address policy: {} (control's --allowed-cidrs opens chosen ranges)",
            refusal.address, refusal.reason
        ),
        Some(lookup @ ResolveError::Lookup { .. }) => lookup.to_string(),
        None => {
            let kind = if error.is_connect() { "could not connect" } else { "the request failed" };
            url_policy::redact(&format!("{kind}: {}", outbound::error_chain(error)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_random_hex() {
        let (first, second) = (random_challenge(), random_challenge());
        assert_eq!(first.len(), 64);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(first, second);
    }

    #[test]
    fn answers_and_snippets() {
        assert_eq!(answered_challenge(br#"{"challenge":"abc","extra":1}"#).as_deref(), Some("abc"));
        assert_eq!(answered_challenge(br#"{"challenge":5}"#), None);
        assert_eq!(answered_challenge(b"abc"), None);
        assert_eq!(snippet(b""), "(empty body)");
        assert_eq!(snippet(b"  oops\n\tbroken  "), "body \"oops broken\"");
        let long = snippet("x".repeat(500).as_bytes());
        assert!(long.ends_with("…\"") && long.len() < 220, "{long}");
    }
}
