//! Outbound HTTP under the address policy: one pooled client (HTTP/1.1 keep-alive, HTTP/2 by ALPN, rustls) whose
//! connector refuses every address the [`AddressPolicy`] forbids and connects only to addresses it checked.
//!
//! - A host written as an IP literal skips DNS in hyper's connector, so [`PolicyConnector`] checks it before
//!   connecting.
//! - A host name goes through [`PolicyResolver`]: one lookup, refused addresses dropped, and the connector then
//!   connects to exactly the addresses that passed. There is no second lookup, so DNS rebinding (a public answer
//!   for the check, a private one for the connection) cannot slip through.
//! - Any refusal surfaces as a [`ResolveError`] somewhere in the request error's source chain; [`find_resolve_error`]
//!   digs it out so callers can record it with its reason.
//!
//! The lookup itself is behind [`Lookup`] so tests can answer with chosen addresses.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::model::CONNECT_TIMEOUT;
use crate::net_policy::{AddressPolicy, AddressRefused};

/// The error type of connectors and of hyper's client internals.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A future that resolves a host name.
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// The pooled client that every policy-checked request goes through.
pub type HttpClient = Client<HttpsConnector<PolicyConnector>, Full<Bytes>>;

/// Turns a host name into addresses: the system resolver in production, a fixed answer in tests.
pub trait Lookup: Send + Sync + 'static {
    /// Every address `host` resolves to, in the resolver's order.
    fn lookup(&self, host: String) -> LookupFuture;
}

/// The operating system's resolver (`getaddrinfo`, on tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: String) -> LookupFuture {
        Box::pin(async move {
            let addresses = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addresses.map(|address| address.ip()).collect())
        })
    }
}

/// A lookup that failed, or a host none of whose addresses the policy allows.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The lookup failed or found no address.
    #[error("dns lookup of {host} failed: {source}")]
    Lookup {
        /// The host name looked up.
        host: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The literal address, or every address the name resolved to, is refused; holds the first refusal.
    #[error(transparent)]
    Refused(#[from] AddressRefused),
}

/// Resolves `host` once and keeps the addresses `policy` allows; fails with the first refusal when none is left.
pub async fn resolve_checked(
    policy: &AddressPolicy,
    lookup: &dyn Lookup,
    host: &str,
) -> Result<Vec<IpAddr>, ResolveError> {
    let resolved = lookup
        .lookup(host.to_owned())
        .await
        .map_err(|source| ResolveError::Lookup { host: host.to_owned(), source })?;
    let mut allowed = Vec::with_capacity(resolved.len());
    let mut first_refusal = None;
    for address in resolved {
        match policy.check(address) {
            Ok(()) => allowed.push(address),
            Err(refusal) => {
                first_refusal.get_or_insert(refusal);
            }
        }
    }
    match (allowed.is_empty(), first_refusal) {
        (false, _) => Ok(allowed),
        (true, Some(refusal)) => Err(refusal.into()),
        (true, None) => Err(ResolveError::Lookup {
            host: host.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        }),
    }
}

/// hyper's resolver hook: [`resolve_checked`] with the connector's policy and lookup.
#[derive(Clone)]
pub struct PolicyResolver {
    policy: Arc<AddressPolicy>,
    lookup: Arc<dyn Lookup>,
}

impl fmt::Debug for PolicyResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyResolver").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl tower::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ResolveError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ResolveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let (policy, lookup) = (self.policy.clone(), self.lookup.clone());
        Box::pin(async move {
            let allowed = resolve_checked(&policy, lookup.as_ref(), name.as_str()).await?;
            // Port 0 here; hyper sets the URL's port on each address.
            Ok(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect::<Vec<_>>().into_iter())
        })
    }
}

/// The TCP connector: checks literal addresses itself, and names through [`PolicyResolver`].
#[derive(Clone, Debug)]
pub struct PolicyConnector {
    http: HttpConnector<PolicyResolver>,
    policy: Arc<AddressPolicy>,
}

impl PolicyConnector {
    /// A connector for `policy` resolving names with `lookup`, with the shared connect timeout.
    pub fn new(policy: Arc<AddressPolicy>, lookup: Arc<dyn Lookup>) -> Self {
        let mut http = HttpConnector::new_with_resolver(PolicyResolver { policy: policy.clone(), lookup });
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        Self { http, policy }
    }
}

/// The address of a URI whose host is an IP literal (`127.0.0.1`, `[::1]`).
fn literal_address(uri: &Uri) -> Option<IpAddr> {
    let host = uri.host()?;
    host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')).unwrap_or(host).parse().ok()
}

impl tower::Service<Uri> for PolicyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Some(address) = literal_address(&uri)
            && let Err(refusal) = self.policy.check(address)
        {
            return Box::pin(std::future::ready(Err(Box::new(ResolveError::Refused(refusal)) as BoxError)));
        }
        let connecting = self.http.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The pooled client for `policy`, resolving with the system resolver.
pub fn build_client(policy: Arc<AddressPolicy>) -> Result<HttpClient, rustls::Error> {
    build_client_with_lookup(policy, Arc::new(SystemLookup))
}

/// The pooled client for `policy`, resolving with `lookup`.
pub fn build_client_with_lookup(
    policy: Arc<AddressPolicy>,
    lookup: Arc<dyn Lookup>,
) -> Result<HttpClient, rustls::Error> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(PolicyConnector::new(policy, lookup));
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(https))
}

/// The [`ResolveError`] in `error`'s source chain (`error` included), if the request failed on the policy or DNS.
pub fn find_resolve_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a ResolveError> {
    let mut next = Some(error);
    while let Some(cause) = next {
        if let Some(found) = cause.downcast_ref::<ResolveError>() {
            return Some(found);
        }
        next = cause.source();
    }
    None
}

/// `outer: inner: root cause` of an error chain, skipping messages that repeat an earlier one.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt as _;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// Answers each lookup with the next prepared list (the last one repeats) and counts the lookups.
    struct Scripted {
        answers: Mutex<Vec<Vec<IpAddr>>>,
        calls: AtomicUsize,
    }

    impl Scripted {
        fn new(answers: &[&[&str]]) -> Arc<Self> {
            let answers = answers.iter().map(|list| list.iter().map(|ip| ip.parse().unwrap()).collect()).collect();
            Arc::new(Self { answers: Mutex::new(answers), calls: AtomicUsize::new(0) })
        }
    }

    impl Lookup for Scripted {
        fn lookup(&self, _host: String) -> LookupFuture {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut answers = self.answers.lock().unwrap();
            let answer = if answers.len() > 1 { answers.remove(0) } else { answers[0].clone() };
            Box::pin(std::future::ready(Ok(answer)))
        }
    }

    /// An HTTP/1.1 server on 127.0.0.1 that answers 200 and closes each connection after one request; returns its
    /// port and the number of connections it accepted.
    async fn server() -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|_request| async {
                        let response = http::Response::builder()
                            .header("connection", "close")
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (port, accepted)
    }

    fn policy(allowed: &[&str]) -> Arc<AddressPolicy> {
        Arc::new(AddressPolicy::new(allowed.iter().map(|net| net.parse().unwrap()).collect()))
    }

    async fn get(client: &HttpClient, url: &str) -> Result<String, hyper_util::client::legacy::Error> {
        let response = client.request(http::Request::get(url).body(Full::default()).unwrap()).await?;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn refusal(error: &hyper_util::client::legacy::Error) -> &AddressRefused {
        match find_resolve_error(error) {
            Some(ResolveError::Refused(refusal)) => refusal,
            other => panic!("expected a refusal, got {other:?} from {}", error_chain(error)),
        }
    }

    #[tokio::test]
    async fn literal_addresses_are_checked_before_connecting() {
        let (port, accepted) = server().await;
        let lookup = Scripted::new(&[&[]]);
        let refusing = build_client_with_lookup(policy(&[]), lookup.clone()).unwrap();
        for url in [format!("http://127.0.0.1:{port}/"), format!("http://[::ffff:127.0.0.1]:{port}/")] {
            let error = get(&refusing, &url).await.unwrap_err();
            assert!(refusal(&error).reason.contains("loopback") || refusal(&error).reason.contains("IPv6 form"));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection was made");
        assert_eq!(lookup.calls.load(Ordering::SeqCst), 0, "literals are not looked up");

        let allowing = build_client_with_lookup(policy(&["127.0.0.1/32"]), lookup).unwrap();
        assert_eq!(get(&allowing, &format!("http://127.0.0.1:{port}/")).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn names_connect_only_to_addresses_that_passed() {
        let (port, accepted) = server().await;
        // 127.0.0.2 is loopback outside the allowlist: dropped, and the connection goes to 127.0.0.1.
        let lookup = Scripted::new(&[&["127.0.0.2", "127.0.0.1"]]);
        let client = build_client_with_lookup(policy(&["127.0.0.1/32"]), lookup.clone()).unwrap();
        assert_eq!(get(&client, &format!("http://receiver.test:{port}/")).await.unwrap(), "ok");
        assert_eq!((lookup.calls.load(Ordering::SeqCst), accepted.load(Ordering::SeqCst)), (1, 1));
    }

    #[tokio::test]
    async fn a_rebinding_name_is_checked_on_every_connection() {
        let (port, accepted) = server().await;
        // First an allowed answer, then a refused one: the second connection must not use the first check.
        let lookup = Scripted::new(&[&["127.0.0.1"], &["127.0.0.2"]]);
        let client = build_client_with_lookup(policy(&["127.0.0.1/32"]), lookup.clone()).unwrap();
        let url = format!("http://rebind.test:{port}/");
        assert_eq!(get(&client, &url).await.unwrap(), "ok");
        // The server closed the connection, so the next request connects (and looks up) again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let error = get(&client, &url).await.unwrap_err();
        assert_eq!(refusal(&error).address, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(lookup.calls.load(Ordering::SeqCst), 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "the refused address was never connected to");
    }

    #[tokio::test]
    async fn resolution_reports_the_first_refusal_or_the_lookup_failure() {
        let lookup = Scripted::new(&[&["8.8.8.8", "10.0.0.1"]]);
        let allowed = resolve_checked(&policy(&[]), lookup.as_ref(), "mixed.test").await.unwrap();
        assert_eq!(allowed, ["8.8.8.8".parse::<IpAddr>().unwrap()]);

        let lookup = Scripted::new(&[&["169.254.169.254", "::1"]]);
        let error = resolve_checked(&policy(&[]), lookup.as_ref(), "metadata.test").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            AddressPolicy::default().check("169.254.169.254".parse().unwrap()).unwrap_err().to_string()
        );

        let lookup = Scripted::new(&[&[]]);
        let error = resolve_checked(&policy(&[]), lookup.as_ref(), "empty.test").await.unwrap_err();
        assert_eq!(error.to_string(), "dns lookup of empty.test failed: no addresses");
    }

    #[test]
    fn literal_hosts_are_recognised() {
        let address = |uri: &str| literal_address(&uri.parse().unwrap());
        assert_eq!(address("http://127.0.0.1:80/"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(address("https://[::1]/x"), Some("::1".parse().unwrap()));
        assert_eq!(address("https://example.com/"), None);
        // Not a standard literal: goes through the resolver, which checks what it resolves to.
        assert_eq!(address("http://127.1/"), None);
    }
}
