//! control's listener: the connections it accepts, and who may use them.
//!
//! - [`Security`] is the setup: TLS from PEM files ([`tls`]) and the access policy of bearer tokens and client
//!   certificates ([`auth`]). It loads before control serves anything, so a bad file stops control at start. While
//!   control serves, a task checks the files every few seconds and applies changes; a change that does not load
//!   is logged and the previous setup stays in use.
//! - [`check_exposure`] is the plaintext dev-mode rule: without TLS control binds loopback only.
//! - [`incoming`] turns the listener into connections for tonic: plain TCP, or TLS handshakes done in their own
//!   tasks, so a slow or silent client cannot hold up the accept loop. Every connection, its handshake included, is
//!   under the limits of [`hookrelay_common::listener`] (how many at once, how long to the first request, how long
//!   idle).
//! - [`ConnInfo`] is what a connection tells each of its requests; tonic puts it in the request's extensions. The
//!   auth layer reads whether the peer's client certificate was verified, the request tracking reads the
//!   connection's [`Activity`]. Both read it through a function given here, so [`tls`] and [`auth`] need not know
//!   each other.

pub mod auth;
pub mod tls;

pub use tls::TlsFiles;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hookrelay_common::listener::{Activity, Connections, Limited, Limits};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use auth::{Access, AuthLayer, Tokens};
use tls::{ReloadingTls, stamp};

/// How often certificate, key, client CA and token files are checked for changes.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// What control's listener runs with: TLS (if configured) and the access policy.
#[derive(Debug, Clone)]
pub struct Security {
    pub tls: Option<Arc<ReloadingTls>>,
    pub access: Access,
    tokens_file: Option<PathBuf>,
    addr: SocketAddr,
}

impl Security {
    /// Loads the TLS files and the token file and checks that serving on `addr` is allowed; every problem here
    /// stops control before it serves anything.
    pub fn load(tls: Option<TlsFiles>, tokens_file: Option<PathBuf>, addr: SocketAddr) -> anyhow::Result<Self> {
        let tls = tls.map(ReloadingTls::load).transpose()?;
        let tokens = match &tokens_file {
            Some(path) => Some(Tokens::load(path).with_context(|| format!("the token file {}", path.display()))?),
            None => None,
        };
        let access = Access::new(tokens, tls.as_ref().is_some_and(|tls| tls.verifies_clients()));
        check_exposure(addr, tls.is_some())?;
        Ok(Self { tls, access, tokens_file, addr })
    }

    /// Serves `listener` under this setup and `limits`: the connections for tonic, the auth layer, and the task
    /// reloading changed files every `reload_interval` until `stop`.
    pub fn serve(
        self,
        listener: TcpListener,
        limits: Limits,
        reload_interval: Duration,
        stop: watch::Receiver<bool>,
    ) -> (Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>, AuthLayer) {
        warn_exposure(self.addr, self.tls.is_some(), &self.access);
        if self.tls.is_some() || self.tokens_file.is_some() {
            spawn_reloader(self.tls.clone(), self.tokens_file, self.access.clone(), reload_interval, stop);
        }
        (incoming(listener, self.tls, limits), AuthLayer::new(self.access, ConnInfo::client_cert_of))
    }
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

/// What a connection tells the layers about its peer; tonic inserts it into each request's extensions.
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

    /// Whether the connection of a request presented a verified client certificate, for [`AuthLayer`].
    pub fn client_cert_of(extensions: &http::Extensions) -> bool {
        extensions.get::<Self>().is_some_and(|info| info.client_cert)
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
            let (stream, peer) = tokio::select! {
                accepted = connections.accept(&listener) => accepted,
                () = tx.closed() => return,
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
