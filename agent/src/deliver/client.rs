//! The agent's one pooled HTTP client (HTTP/1.1 keep-alive, HTTP/2 by ALPN, rustls). Its resolver refuses
//! addresses the [`AddressPolicy`] forbids, and the connector connects only to the addresses the resolver returned,
//! so a host cannot resolve to a public address for the check and a private one for the connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hookrelay_common::model::CONNECT_TIMEOUT;
use hookrelay_common::net_policy::{AddressPolicy, AddressRefused};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;

/// The pooled client every attempt goes through.
pub type HttpClient = Client<HttpsConnector<HttpConnector<PolicyResolver>>, Full<Bytes>>;

/// A failed lookup, or one whose every address the policy refused.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("dns lookup of {host} failed: {source}")]
    Lookup { host: String, source: std::io::Error },
    #[error(transparent)]
    Refused(#[from] AddressRefused),
}

/// A DNS resolver that drops refused addresses and fails when none is left.
#[derive(Clone, Debug)]
pub struct PolicyResolver {
    policy: Arc<AddressPolicy>,
}

impl tower::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ResolveError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ResolveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|source| ResolveError::Lookup { host: host.clone(), source })?;
            let mut allowed = Vec::new();
            let mut first_refusal = None;
            for address in resolved {
                match policy.check(address.ip()) {
                    Ok(()) => allowed.push(address),
                    Err(refusal) => {
                        first_refusal.get_or_insert(refusal);
                    }
                }
            }
            match (allowed.is_empty(), first_refusal) {
                (true, Some(refusal)) => Err(refusal.into()),
                (true, None) => Err(ResolveError::Lookup {
                    host,
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
                }),
                (false, _) => Ok(allowed.into_iter()),
            }
        })
    }
}

/// Builds the pooled client.
pub fn build(policy: Arc<AddressPolicy>) -> anyhow::Result<HttpClient> {
    let mut http = HttpConnector::new_with_resolver(PolicyResolver { policy });
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(https))
}
