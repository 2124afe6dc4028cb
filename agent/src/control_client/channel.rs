//! The one gRPC channel to control that [`super::watch`] and [`super::reports`] share: TLS for `https://` URLs
//! (a custom CA with `--control-ca`, else the public web PKI roots), an optional client certificate (mTLS), and
//! the agent token from `--control-token-file` as `authorization: Bearer` on every call.
//!
//! The token file is looked at again (one `stat`) before each call and re-read when it changed, so a rotated
//! token (a Kubernetes Secret update, say) is picked up at the next reconnect without restarting the agent. A file
//! that turns unreadable keeps the last good token in use. Certificates are read once at start.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Env var of `--control-token-file`.
pub const ENV_CONTROL_TOKEN_FILE: &str = "HOOKRELAY_CONTROL_TOKEN_FILE";
/// Env var of `--control-ca`.
pub const ENV_CONTROL_CA: &str = "HOOKRELAY_CONTROL_CA";
/// Env var of `--control-client-cert`.
pub const ENV_CONTROL_CLIENT_CERT: &str = "HOOKRELAY_CONTROL_CLIENT_CERT";
/// Env var of `--control-client-key`.
pub const ENV_CONTROL_CLIENT_KEY: &str = "HOOKRELAY_CONTROL_CLIENT_KEY";

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

/// The channel to control: every call carries the agent token, if one is configured.
pub type ControlChannel = InterceptedService<Channel, AgentToken>;

/// A lazily connecting channel to `url` under `credentials`; fails on unusable files or flag combinations.
pub fn connect_lazy(url: &str, credentials: &ControlCredentials) -> anyhow::Result<ControlChannel> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("control url {url:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let https = endpoint.uri().scheme_str() == Some("https");
    if https {
        let mut tls = match &credentials.ca {
            Some(path) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(path, "--control-ca")?)),
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        match (&credentials.client_cert, &credentials.client_key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(
                    read(cert, "--control-client-cert")?,
                    read(key, "--control-client-key")?,
                ));
            }
            (None, None) => {}
            _ => anyhow::bail!("--control-client-cert and --control-client-key go together"),
        }
        endpoint = endpoint.tls_config(tls).context("control TLS settings")?;
    } else {
        anyhow::ensure!(
            credentials.ca.is_none() && credentials.client_cert.is_none() && credentials.client_key.is_none(),
            "--control-ca and --control-client-cert/--control-client-key need an https:// control URL, not {url}"
        );
        if credentials.token_file.is_some()
            && !endpoint
                .uri()
                .host()
                .is_some_and(|host| host == "localhost" || host.starts_with("127.") || host == "[::1]")
        {
            tracing::warn!(url, "the agent token goes to control over plaintext http; use an https:// control URL");
        }
    }
    let token = match &credentials.token_file {
        Some(path) => AgentToken::from_file(path)?,
        None => AgentToken::default(),
    };
    Ok(InterceptedService::new(endpoint.connect_lazy(), token))
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
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
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
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
                Err(error) => tracing::warn!(error = format!("{error:#}"), "keeping the previous control token"),
            }
        }
        Some(current.1.clone())
    }
}

fn read_token(path: &Path) -> anyhow::Result<AsciiMetadataValue> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the control token file {}", path.display()))?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .with_context(|| format!("the control token file {} is empty", path.display()))?;
    let mut value = AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        anyhow::anyhow!("the control token file {} holds characters a header cannot carry", path.display())
    })?;
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
        let error = connect_lazy("http://127.0.0.1:7100", &credentials).unwrap_err();
        assert!(error.to_string().contains("need an https:// control URL"), "{error}");
        let error = connect_lazy("https://control:7100", &credentials).unwrap_err();
        assert!(format!("{error:#}").contains("cannot read --control-ca"), "{error:#}");
        assert!(connect_lazy("https://control:7100", &ControlCredentials::default()).is_ok());
    }
}
