//! The emit listener's connection loop: HTTP/1.1 (`POST /v1/events`, `/metrics`) and HTTP/2 (gRPC) on one port,
//! each connection under the limits of [`hookrelay_common::listener`] (how many at once, how long to the first
//! request, how long idle), HTTP/2 keep-alive pings that find vanished peers, and a graceful stop.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use hookrelay_common::listener::{Connections, Limits, TrackedBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codegen::Service as _;

/// Interval of HTTP/2 pings on a connection that sent nothing, and how long the answer may take.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);
/// Serves `router` on `listener` until `shutdown` completes; then closes the listening socket, lets each
/// connection finish the requests in flight (within `drain`) and returns.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let connections = Connections::new(limits);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(HTTP2_KEEPALIVE).keep_alive_timeout(HTTP2_KEEPALIVE);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = connections.accept(&listener) => accepted,
        };
        let activity = stream.activity().clone();
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = activity.request_started();
            // axum's router is always ready, so it is called without `poll_ready`.
            let response = router.clone().call(request);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, Some(in_flight))))
            }
        });
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
            let stopped = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stopped => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "emit connection ended");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(drain, connections.all_closed()).await.is_err() {
        tracing::warn!(
            open = connections.open(),
            "emit connections still open after the grace period; stopping anyway"
        );
    }
}
