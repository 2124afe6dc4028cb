//! Connections to control and agents, and the CLI's errors with their exit codes: 1 when the server refused the
//! request (its gRPC status is printed as `CODE: message`), 3 when the server could not be reached at all, so
//! scripts can tell "fix the request" from "fix the network", 4 when a change was made but `--wait` ran out before
//! every connected agent applied it (so it must not be made again). Usage errors (2) are clap's.

use std::error::Error as _;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use hookrelay_common::proto::v1::admin_service_client::AdminServiceClient;
use hookrelay_common::proto::v1::emit_service_client::EmitServiceClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

/// How long to wait for a TCP connection before calling the server unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take. Admin calls are small; this only bounds a hung server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A server the CLI talks to.
#[derive(Debug, Clone)]
pub struct Target {
    /// `control` or `agent`, for messages.
    pub name: &'static str,
    pub url: String,
    /// Which flag and variable point at it, for hints.
    pub flag: &'static str,
    pub env: &'static str,
    /// Token and CA; behind an `Arc` so errors that carry the target stay small.
    pub credentials: std::sync::Arc<Credentials>,
}

/// How the CLI authenticates to a server and which CA it trusts.
#[derive(Debug, Default)]
pub struct Credentials {
    /// Sent as `authorization: Bearer <token>` on every call.
    pub bearer: Bearer,
    /// PEM CA certificates trusted for `https://` (instead of the public web PKI roots).
    pub ca: Option<Vec<u8>>,
}

/// A channel whose calls carry the bearer token (if any).
pub type Authed = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to each call. `Debug` never shows the token.
#[derive(Clone, Default)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    /// The header for `token`; fails on characters a header cannot carry.
    pub fn new(token: &str) -> Result<Self, CliError> {
        let mut value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| CliError::Failed(anyhow::anyhow!("the token contains characters a header cannot carry")))?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Bearer([redacted])" } else { "Bearer(none)" })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Target {
    pub fn control(url: String) -> Self {
        Self { name: "control", url, flag: "--control", env: "HOOKRELAY_CONTROL_URL", credentials: Default::default() }
    }

    pub fn agent(url: String) -> Self {
        Self { name: "agent", url, flag: "--agent", env: "HOOKRELAY_AGENT_URL", credentials: Default::default() }
    }

    /// The same target, calling with `bearer` and trusting `ca` for https.
    pub fn with_credentials(self, bearer: Bearer, ca: Option<Vec<u8>>) -> Self {
        Self { credentials: std::sync::Arc::new(Credentials { bearer, ca }), ..self }
    }

    /// Opens an HTTP/2 connection (TLS for `https://`), failing with [`CliError::Unreachable`] when nothing
    /// answers or the handshake fails.
    pub async fn connect(&self) -> Result<Authed, CliError> {
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|error| self.unreachable(&error))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if self.url.starts_with("https://") {
            let tls = match &self.credentials.ca {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_webpki_roots(),
            };
            endpoint = endpoint.tls_config(tls).map_err(|error| self.unreachable(&error))?;
        }
        let channel = endpoint.connect().await.map_err(|error| self.unreachable(&error))?;
        Ok(InterceptedService::new(channel, self.credentials.bearer.clone()))
    }

    pub async fn admin(&self) -> Result<AdminServiceClient<Authed>, CliError> {
        Ok(AdminServiceClient::new(self.connect().await?))
    }

    pub async fn emit(&self) -> Result<EmitServiceClient<Authed>, CliError> {
        Ok(EmitServiceClient::new(self.connect().await?))
    }

    fn unreachable(&self, error: &(dyn std::error::Error + 'static)) -> CliError {
        CliError::Unreachable { target: self.clone(), detail: error_chain(error) }
    }

    /// Classifies a failed call: a status the server sent is a refusal; one made up by the client because the
    /// connection failed or broke (it then carries the transport error as its source) means unreachable.
    pub fn call_error(&self, status: Status) -> CliError {
        match status.source() {
            Some(source) => {
                let mut detail = error_chain(source);
                if !status.message().is_empty() && !detail.contains(status.message()) {
                    detail = format!("{}: {detail}", status.message());
                }
                CliError::Unreachable { target: self.clone(), detail }
            }
            None => CliError::Rejected(status),
        }
    }
}

/// The answer of a call, or the CLI error it amounts to.
pub trait CallResult<T> {
    fn or_cli(self, target: &Target) -> Result<T, CliError>;
}

impl<T> CallResult<T> for Result<tonic::Response<T>, Status> {
    fn or_cli(self, target: &Target) -> Result<T, CliError> {
        self.map(tonic::Response::into_inner).map_err(|status| target.call_error(status))
    }
}

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// The server answered with an error status.
    Rejected(Status),
    /// Nothing answered, or the connection broke.
    Unreachable { target: Target, detail: String },
    /// Anything else: local files, `hookrelay dev` setup.
    Failed(anyhow::Error),
    /// `--wait` ran out: the change was made, but not every connected agent applied it (the message names them).
    NotApplied(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Rejected(_) | Self::Failed(_) => ExitCode::from(1),
            Self::Unreachable { .. } => ExitCode::from(3),
            Self::NotApplied(_) => ExitCode::from(4),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        Self::Failed(error)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(status) if status.message().is_empty() => {
                write!(f, "{}: {}", code_name(status.code()), status.code().description())
            }
            Self::Rejected(status) => {
                write!(f, "{}: {}", code_name(status.code()), status.message())
            }
            Self::Unreachable { target, detail } => {
                write!(f, "cannot reach {} at {}: {detail}", target.name, target.url)?;
                match target.name {
                    "control" => write!(
                        f,
                        "\nhint: is hookrelay-control running there? `hookrelay dev` starts everything locally; \
                         {} or {} choose another address",
                        target.flag, target.env
                    ),
                    _ => write!(
                        f,
                        "\nhint: is hookrelay-agent running there? `hookrelay dev` starts everything locally; \
                         {} or {} choose another address",
                        target.flag, target.env
                    ),
                }
            }
            Self::Failed(error) => write!(f, "{error:#}"),
            Self::NotApplied(message) => f.write_str(message),
        }
    }
}

/// The canonical gRPC name of a status code, e.g. `INVALID_ARGUMENT`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `outer: inner: root cause`, without the generic `transport error` wrapper and without repeats.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if text != "transport error" && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    if parts.is_empty() { "transport error".to_owned() } else { parts.join(": ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_print_the_code_and_message() {
        let target = Target::control("http://127.0.0.1:1".into());
        let error =
            target.call_error(Status::invalid_argument("filter_types[0]: event type \"x\" is not in the catalog"));
        assert_eq!(error.to_string(), "INVALID_ARGUMENT: filter_types[0]: event type \"x\" is not in the catalog");
        assert_eq!(error.exit_code(), ExitCode::from(1));
        let error = target.call_error(Status::new(Code::NotFound, ""));
        assert!(error.to_string().starts_with("NOT_FOUND: "));
    }

    #[test]
    fn client_side_failures_mean_unreachable() {
        let target = Target::agent("http://127.0.0.1:1".into());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let error = target.call_error(Status::from_error(Box::new(io)));
        assert_eq!(error.exit_code(), ExitCode::from(3));
        let text = error.to_string();
        assert!(text.starts_with("cannot reach agent at http://127.0.0.1:1: connection refused"), "{text}");
        assert!(text.contains("--agent or HOOKRELAY_AGENT_URL"), "{text}");
    }
}
