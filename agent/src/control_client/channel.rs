//! How the agent connects to a control replica ([`ControlLink`]): TLS for `https://` URLs (a custom CA with
//! `--control-ca`, else the public web PKI roots), an optional client certificate (mTLS), and the agent token from
//! `--control-token-file` as `authorization: Bearer` on every call. [`super::watch`] and [`super::reports`] share
//! one link and each open a channel per replica they reach.
//!
//! A channel goes to one resolved address, while TLS (SNI and certificate verification) and the HTTP/2 authority
//! keep the URL's host name: a name standing for several replicas is verified as that name on each of them.
//!
//! The token file is looked at again (one `stat`) before each call and re-read when it changed, so a rotated
//! token (a Kubernetes Secret update, say) is picked up at the next reconnect without restarting the agent. A file
//! that turns unreadable keeps the last good token in use. Certificates are read once at start.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::codegen::Service;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::replicas::{ControlUrl, Host, Target, UrlError, parse_urls};

/// Env var of `--control-token-file`.
pub const ENV_CONTROL_TOKEN_FILE: &str = "HOOKRELAY_CONTROL_TOKEN_FILE";
/// Env var of `--control-ca`.
pub const ENV_CONTROL_CA: &str = "HOOKRELAY_CONTROL_CA";
/// Env var of `--control-client-cert`.
pub const ENV_CONTROL_CLIENT_CERT: &str = "HOOKRELAY_CONTROL_CLIENT_CERT";
/// Env var of `--control-client-key`.
pub const ENV_CONTROL_CLIENT_KEY: &str = "HOOKRELAY_CONTROL_CLIENT_KEY";

/// How long connecting to one replica (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the connection to a replica, and how long one may go unanswered: a replica whose node vanished
/// never closes its connections, and the stream would wait on it instead of moving to another replica.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the link to control cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("cannot read {flag} {path}: {source}")]
    Read { flag: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the control token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("the control token file {0} holds characters a header cannot carry")]
    TokenNotAscii(PathBuf),
    #[error("--control-client-cert and --control-client-key go together")]
    HalfIdentity,
    #[error("--control-ca and --control-client-cert/--control-client-key need an https:// control URL, not {0}")]
    TlsNeedsHttps(String),
    #[error("control URL {url}: {source}")]
    Endpoint { url: String, source: tonic::transport::Error },
}

/// How the agent proves itself to control and which control it trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlCredentials {
    /// File whose first non-empty line is the agent token (scope `agent` in control's token file).
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates trusted for an `https://` control URL instead of the public web PKI roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain and key for mTLS; both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// A channel to one replica: every call carries the agent token, if one is configured.
pub type ControlChannel = InterceptedService<Channel, AgentToken>;

/// The control URLs with their connection settings, and the agent token; cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlLink {
    urls: Arc<[(ControlUrl, Endpoint)]>,
    token: AgentToken,
}

impl ControlLink {
    /// Checks `urls` (see [`parse_urls`]) and `credentials` and reads the files they name; connects to nothing.
    pub fn new(urls: &str, credentials: &ControlCredentials) -> Result<Self, LinkError> {
        let urls = parse_urls(urls)?;
        let names_tls_files =
            credentials.ca.is_some() || credentials.client_cert.is_some() || credentials.client_key.is_some();
        if let Some(plain) = urls.iter().find(|url| !url.is_https()).filter(|_| names_tls_files) {
            return Err(LinkError::TlsNeedsHttps(plain.text.clone()));
        }
        let tls = tls_settings(credentials)?;
        let mut endpoints = Vec::with_capacity(urls.len());
        for url in urls {
            let endpoint = endpoint(&url, tls.as_ref(), credentials.token_file.is_some())?;
            endpoints.push((url, endpoint));
        }
        let token = match &credentials.token_file {
            Some(path) => AgentToken::from_file(path)?,
            None => AgentToken::default(),
        };
        Ok(Self { urls: endpoints.into(), token })
    }

    /// The URLs, in the order given.
    pub fn urls(&self) -> impl ExactSizeIterator<Item = &ControlUrl> + '_ {
        self.urls.iter().map(|(url, _)| url)
    }

    /// The URL a target belongs to.
    pub fn url(&self, target: Target) -> &ControlUrl {
        &self.urls[target.url].0
    }

    /// A lazily connecting channel to `target`'s address under its URL's settings.
    pub fn channel(&self, target: Target) -> ControlChannel {
        let endpoint = &self.urls[target.url].1;
        InterceptedService::new(endpoint.connect_with_connector_lazy(ToAddress(target.address)), self.token.clone())
    }
}

/// The TLS settings from `credentials` (`None` when they name no TLS file).
fn tls_settings(credentials: &ControlCredentials) -> Result<Option<ClientTlsConfig>, LinkError> {
    let identity = match (&credentials.client_cert, &credentials.client_key) {
        (Some(cert), Some(key)) => {
            Some(Identity::from_pem(read(cert, "--control-client-cert")?, read(key, "--control-client-key")?))
        }
        (None, None) => None,
        _ => return Err(LinkError::HalfIdentity),
    };
    let ca = credentials.ca.as_deref().map(|path| read(path, "--control-ca")).transpose()?;
    if ca.is_none() && identity.is_none() {
        return Ok(None);
    }
    let mut tls = match ca {
        Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
        None => ClientTlsConfig::new().with_webpki_roots(),
    };
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(Some(tls))
}

fn endpoint(url: &ControlUrl, tls: Option<&ClientTlsConfig>, has_token: bool) -> Result<Endpoint, LinkError> {
    let failed = |source| LinkError::Endpoint { url: url.text.clone(), source };
    let mut endpoint = Endpoint::from(url.uri.clone())
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if url.is_https() {
        let tls = tls.cloned().unwrap_or_else(|| ClientTlsConfig::new().with_webpki_roots());
        endpoint = endpoint.tls_config(tls).map_err(failed)?;
    } else if has_token && !is_loopback(&url.host) {
        let url = url.text.as_str();
        tracing::warn!(url, "the agent token goes to control over plaintext http; use an https:// control URL");
    }
    Ok(endpoint)
}

fn is_loopback(host: &Host) -> bool {
    match host {
        Host::Address(address) => address.is_loopback(),
        Host::Name(name) => name == "localhost",
    }
}

/// Connects to one address whatever the URI says: the URI's host still names the server for TLS and HTTP/2.
#[derive(Debug, Clone, Copy)]
struct ToAddress(SocketAddr);

impl Service<http::Uri> for ToAddress {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let address = self.0;
        Box::pin(async move {
            let stream = TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, LinkError> {
    std::fs::read(path).map_err(|source| LinkError::Read { flag, path: path.to_owned(), source })
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().and_then(|metadata| Some((metadata.modified().ok()?, metadata.len())))
}

/// Adds `authorization: Bearer <agent token>` to each call. `Debug` never shows the token.
#[derive(Clone, Default)]
pub struct AgentToken {
    file: Option<Arc<TokenFile>>,
}

struct TokenFile {
    path: PathBuf,
    current: Mutex<(Stamp, AsciiMetadataValue)>,
}

impl fmt::Debug for AgentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "AgentToken(from {}, [redacted])", file.path.display()),
            None => f.write_str("AgentToken(none)"),
        }
    }
}

impl AgentToken {
    /// Reads the token file; fails when it is unreadable, empty or not a valid header value.
    pub fn from_file(path: &Path) -> Result<Self, LinkError> {
        let value = read_token(path)?;
        let current = Mutex::new((stamp(path), value));
        Ok(Self { file: Some(Arc::new(TokenFile { path: path.to_owned(), current })) })
    }

    /// The header value to send now, re-reading the file if it changed.
    fn header(&self) -> Option<AsciiMetadataValue> {
        let file = self.file.as_ref()?;
        let mut current = file.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = stamp(&file.path);
        if now != current.0 {
            match read_token(&file.path) {
                Ok(value) => {
                    *current = (now, value);
                    tracing::info!(path = %file.path.display(), "control token file changed; using the new token");
                }
                // Keep the old stamp so the next call tries again (the file may be mid-rotation).
                Err(error) => tracing::warn!(%error, "keeping the previous control token"),
            }
        }
        Some(current.1.clone())
    }
}

fn read_token(path: &Path) -> Result<AsciiMetadataValue, LinkError> {
    let text = std::fs::read_to_string(path).map_err(|source| LinkError::Read {
        flag: "--control-token-file",
        path: path.to_owned(),
        source,
    })?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .ok_or_else(|| LinkError::EmptyToken(path.to_owned()))?;
    let mut value = AsciiMetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| LinkError::TokenNotAscii(path.to_owned()))?;
    value.set_sensitive(true);
    Ok(value)
}

impl Interceptor for AgentToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = self.header() {
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_and_reread_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n  first-token-0123456789  \n").unwrap();
        let token = AgentToken::from_file(&path).unwrap();
        assert_eq!(token.header().unwrap().to_str().unwrap(), "Bearer first-token-0123456789");
        assert!(!format!("{token:?}").contains("first"));
        std::fs::write(&path, "second-token-0123456789-longer\n").unwrap();
        assert_eq!(token.header().unwrap().to_str().unwrap(), "Bearer second-token-0123456789-longer");
        std::fs::write(&path, "").unwrap();
        assert_eq!(token.header().unwrap().to_str().unwrap(), "Bearer second-token-0123456789-longer");
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        assert!(AgentToken::from_file(&dir.path().join("empty")).is_err());
    }

    #[tokio::test]
    async fn tls_files_need_an_https_url() {
        let credentials = ControlCredentials { ca: Some("/nonexistent".into()), ..Default::default() };
        let error = ControlLink::new("https://control-0:7100,http://127.0.0.1:7100", &credentials).unwrap_err();
        assert!(error.to_string().contains("need an https:// control URL, not http://127.0.0.1:7100"), "{error}");
        let error = ControlLink::new("https://control:7100", &credentials).unwrap_err();
        assert!(error.to_string().contains("cannot read --control-ca"), "{error}");
        let link = ControlLink::new("https://control:7100,http://127.0.0.1:7100", &ControlCredentials::default());
        assert_eq!(link.unwrap().urls().len(), 2);
        assert!(matches!(ControlLink::new("", &ControlCredentials::default()), Err(LinkError::Url(UrlError::Empty))));
    }

    /// A replica reached at one of its name's addresses is verified as the name: the server certificate names
    /// `localhost` and 127.0.0.1, the server listens on [::1] (which it does not name), and only a URL whose host
    /// the certificate names gets an answer there.
    #[tokio::test]
    async fn tls_verifies_the_url_host_name_at_the_address_connected_to() {
        use hookrelay_tests::certs::{Ca, Usage};
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

        let ca = Ca::new("control CA");
        let (cert, key) = ca.leaf("control", Usage::Server);
        let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let server = tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .unwrap()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let server = tokio::spawn(server);
        let dir = tempfile::tempdir().unwrap();
        let credentials = ControlCredentials {
            ca: Some(hookrelay_tests::write_file(dir.path(), "ca.pem", &ca.pem())),
            ..Default::default()
        };
        let target = Target { url: 0, address };
        let check = async |url: String| {
            let link = ControlLink::new(&url, &credentials).unwrap();
            HealthClient::new(link.channel(target)).check(HealthCheckRequest { service: String::new() }).await
        };

        let answer = check(format!("https://localhost:{}", address.port())).await.unwrap();
        assert_eq!(answer.into_inner().status, ServingStatus::Serving as i32);
        let refused = check(format!("https://control.invalid:{}", address.port())).await.unwrap_err();
        assert!(format!("{refused:?}").contains("NotValidForName"), "{refused:?}");
        server.abort();
    }
}
