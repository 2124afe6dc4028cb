//! The webhook request a well-built sender without hookrelay makes: the benchmark's baseline client and its floor
//! relay send exactly this, so the two differ only in the path the event takes.

use bytes::Bytes;
use hookrelay_common::signing::Signer;
use hookrelay_common::time::now_ms;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The pooled HTTP/1.1 client the benchmark's senders use: keep-alive connections (up to `connections` idle ones
/// kept) with `TCP_NODELAY`.
pub fn pooled_client(connections: usize) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(connections).build(connector)
}

/// A `POST` of `body` to `url` with Standard Webhooks headers for message `id`, signed now by `signer`; an error when
/// `id` cannot be a header value.
pub fn webhook_post(
    url: &http::Uri,
    signer: &Signer,
    id: &str,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, http::Error> {
    let timestamp = (now_ms() / 1000) as i64;
    let signature = signer.webhook_signature(id, timestamp, &body);
    http::Request::post(url.clone())
        .header("content-type", "application/json")
        .header("user-agent", "hookrelay-bench")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(body))
}
