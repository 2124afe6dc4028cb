//! control's listener: TLS (rustls, ring) from PEM files that are re-read when they change, optional client
//! certificates (mTLS) verified against a client CA, and the refusal to serve plaintext anywhere but loopback.
//!
//! - [`ReloadingTls`] holds the current `rustls::ServerConfig`. A poller ([`spawn_reloader`]) checks the files'
//!   modification times every few seconds and rebuilds the config when one changed; new connections get the new
//!   certificate, open ones keep theirs. A change that does not load (a half-written file, a key that does not
//!   match) is logged and the previous config stays in use, so a botched rotation never takes control down.
//! - [`incoming`] turns the listener into connections for tonic: plain TCP, or TLS handshakes done in their own
//!   tasks (a slow or silent client cannot hold up the accept loop). Every connection, its handshake included, is
//!   under the limits of [`hookrelay_common::listener`] (how many at once, how long to the first request, how long
//!   idle). Each carries [`ConnInfo`], which tonic puts in every request's extensions; [`crate::auth`] reads it to
//!   see whether the peer presented a verified client certificate, and the listener's request tracking finds the
//!   connection's [`Activity`] there.
//! - [`check_exposure`] is the plaintext dev-mode rule: without TLS control binds loopback only.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use hookrelay_common::listener::{Activity, Connections, Limited, Limits};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::{Access, Tokens};

/// How often certificate, key, client CA and token files are checked for changes.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The PEM files of control's TLS setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that sign client certificates; enables mTLS. Clients without a certificate may still
    /// connect (admin clients use tokens); [`crate::auth`] decides what they may call.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.client_ca.as_deref());
        paths
    }

    /// Reads the files and builds a server config that offers HTTP/2 (gRPC) and HTTP/1.1 by ALPN.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let certs = read_certs(&self.cert).context("the TLS certificate")?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|error| anyhow::anyhow!("cannot read the TLS private key {}: {error}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(path).context("the client CA")? {
                    roots.add(cert).with_context(|| format!("the client CA {} is not usable", path.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated()
                    .build()
                    .context("cannot build the client certificate verifier")?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).with_context(|| {
            format!("the TLS key {} does not fit the certificate {}", self.key.display(), self.cert.display())
        })?;
        // h2 for gRPC; http/1.1 for scrapers of /metrics, which the listener also serves.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no PEM certificate", path.display());
    Ok(certs)
}

/// A modification stamp of a file: mtime and length (a rewrite within the mtime's granularity still shows).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().and_then(|metadata| Some((metadata.modified().ok()?, metadata.len())))
}

/// The TLS server config in use, rebuilt when its files change.
#[derive(Debug)]
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
    stamps: Mutex<Vec<Stamp>>,
}

impl ReloadingTls {
    /// Loads the files; fails when they do not make a usable config.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let stamps = files.paths().into_iter().map(stamp).collect();
        let config = files.server_config()?;
        Ok(Arc::new(Self { files, current: RwLock::new(Arc::new(config)), stamps: Mutex::new(stamps) }))
    }

    /// Whether client certificates are verified.
    pub fn verifies_clients(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The config new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Rebuilds the config if a file changed since the last look; true when a new config is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now: Vec<Stamp> = self.files.paths().into_iter().map(stamp).collect();
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if *stamps == now {
                return false;
            }
            *stamps = now;
        }
        match self.files.server_config() {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate files changed; reloaded");
                true
            }
            Err(error) => {
                // Often a rotation caught half-way (cert written, key not yet): the next change retries.
                tracing::error!(
                    error = format!("{error:#}"),
                    "TLS files changed but do not load; keeping the previous certificate"
                );
                false
            }
        }
    }
}

/// Checks the TLS files and the token file every `interval` until `stop` turns true, applying changes.
pub fn spawn_reloader(
    tls: Option<Arc<ReloadingTls>>,
    tokens_file: Option<PathBuf>,
    access: Access,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tokens_stamp = tokens_file.as_deref().map(stamp);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            if let Some(tls) = &tls {
                tls.reload_if_changed();
            }
            if let Some(path) = &tokens_file {
                let now = stamp(path);
                if tokens_stamp.as_ref() != Some(&now) {
                    tokens_stamp = Some(now);
                    match Tokens::load(path) {
                        Ok(tokens) => {
                            access.reload_tokens(tokens);
                            tracing::info!(path = %path.display(), "token file changed; reloaded");
                        }
                        Err(error) => {
                            tracing::error!(%error, "token file changed but does not load; keeping the previous tokens")
                        }
                    }
                }
            }
        }
    })
}

/// What a connection tells the auth layer about its peer; tonic inserts it into each request's extensions.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The peer presented a client certificate and rustls verified it against the client CA.
    pub client_cert: bool,
    /// What the connection's requests report to, for its idle deadline.
    pub activity: Option<Activity>,
}

impl ConnInfo {
    /// The connection of a request, for [`hookrelay_common::listener::TrackLayer`].
    pub fn activity_of(extensions: &http::Extensions) -> Option<Activity> {
        extensions.get::<Self>()?.activity.clone()
    }
}

/// One accepted connection.
#[derive(Debug)]
pub enum Conn {
    Plain(Limited<TcpStream>),
    Tls(Box<TlsStream<Limited<TcpStream>>>),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Self::Plain(stream) => ConnInfo {
                remote_addr: stream.get_ref().peer_addr().ok(),
                client_cert: false,
                activity: Some(stream.activity().clone()),
            },
            Self::Tls(stream) => {
                let (tcp, session) = stream.get_ref();
                ConnInfo {
                    remote_addr: tcp.get_ref().peer_addr().ok(),
                    // rustls only keeps peer certificates that its verifier accepted.
                    client_cert: session.peer_certificates().is_some_and(|certs| !certs.is_empty()),
                    activity: Some(tcp.activity().clone()),
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

/// The connections of `listener` under `limits`: plain, or TLS under the config current at accept time. Dropping
/// the stream closes the listening socket.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    limits: Limits,
) -> Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>> {
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(64);
    let connections = Connections::new(limits);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: say so, breathe, keep accepting.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Small gRPC answers should not wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
            let Some(stream) = connections.admit(stream).await else {
                tracing::warn!(
                    %peer,
                    max_connections = limits.max_connections,
                    "refused a connection: every open connection has a request in flight"
                );
                continue;
            };
            match &tls {
                None => {
                    if tx.send(Ok(Conn::Plain(stream))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let acceptor = TlsAcceptor::from(tls.current());
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        // A handshake that does not finish within the header read timeout fails: its reads do.
                        match acceptor.accept(stream).await {
                            Ok(stream) => {
                                let _ = tx.send(Ok(Conn::Tls(Box::new(stream)))).await;
                            }
                            Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        }
                    });
                }
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// The plaintext dev-mode rule: without TLS, control serves loopback only.
pub fn check_exposure(addr: SocketAddr, tls: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        tls || addr.ip().is_loopback(),
        "refusing to serve plaintext gRPC on {addr}: without TLS control listens on loopback only (127.0.0.1 or \
         ::1). Give --tls-cert and --tls-key (HOOKRELAY_TLS_CERT, HOOKRELAY_TLS_KEY), or listen on a loopback \
         address for local development"
    );
    Ok(())
}

/// Says loudly what is unprotected on `addr`: plaintext (dev mode) and/or no authentication.
fn warn_exposure(addr: SocketAddr, tls: bool, access: &Access) {
    match (tls, access.is_open()) {
        (true, false) => {}
        (true, true) => tracing::warn!(
            %addr,
            "NO AUTHENTICATION: TLS is on but neither --tokens-file nor --tls-client-ca is given, so anyone who \
             can reach {addr} can administer hookrelay"
        ),
        (false, true) => tracing::warn!(
            %addr,
            "DEVELOPMENT MODE: control serves PLAINTEXT, UNAUTHENTICATED gRPC on {addr} (loopback only). Give \
             --tls-cert/--tls-key and --tokens-file for anything but local development"
        ),
        (false, false) => tracing::warn!(
            %addr,
            "control serves PLAINTEXT gRPC on {addr} (loopback only): bearer tokens cross the connection \
             unencrypted. Give --tls-cert/--tls-key for anything but local development"
        ),
    }
}

/// What control's listener runs with: TLS (if configured) and the access policy.
#[derive(Debug, Clone)]
pub struct Security {
    pub tls: Option<Arc<ReloadingTls>>,
    pub access: Access,
    addr: SocketAddr,
}

impl Security {
    /// Loads the TLS files and the token file of `config` and checks that serving on `addr` is allowed; every
    /// problem here stops control before it serves anything.
    pub fn load(config: &crate::Config, addr: SocketAddr) -> anyhow::Result<Self> {
        let tls = config.tls.clone().map(ReloadingTls::load).transpose()?;
        let tokens = match &config.tokens_file {
            Some(path) => Some(Tokens::load(path).with_context(|| format!("the token file {}", path.display()))?),
            None => None,
        };
        let access = Access::new(tokens, tls.as_ref().is_some_and(|tls| tls.verifies_clients()));
        check_exposure(addr, tls.is_some())?;
        Ok(Self { tls, access, addr })
    }

    /// Serves `listener` under this setup: the connections for tonic, the auth layer, and the task reloading
    /// changed files until `stop`.
    pub fn serve(
        self,
        config: &crate::Config,
        listener: TcpListener,
        stop: watch::Receiver<bool>,
    ) -> (Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>, crate::auth::AuthLayer) {
        warn_exposure(self.addr, self.tls.is_some(), &self.access);
        if self.tls.is_some() || config.tokens_file.is_some() {
            spawn_reloader(
                self.tls.clone(),
                config.tokens_file.clone(),
                self.access.clone(),
                config.reload_interval,
                stop,
            );
        }
        (incoming(listener, self.tls, config.connection_limits), crate::auth::AuthLayer::new(self.access))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_loopback_only() {
        assert!(check_exposure("127.0.0.1:7100".parse().unwrap(), false).is_ok());
        assert!(check_exposure("[::1]:7100".parse().unwrap(), false).is_ok());
        let error = check_exposure("0.0.0.0:7100".parse().unwrap(), false).unwrap_err();
        assert!(error.to_string().contains("loopback only"), "{error}");
        assert!(check_exposure("10.1.2.3:7100".parse().unwrap(), false).is_err());
        assert!(check_exposure("0.0.0.0:7100".parse().unwrap(), true).is_ok());
    }
}
