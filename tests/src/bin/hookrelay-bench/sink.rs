//! The benchmark's receiver: a hyper HTTP/1.1 keep-alive server on loopback that answers 200 at once and tallies,
//! without locks, which `webhook-id`s arrived how often and how long after their emit (the payload carries the emit
//! time). Ids are `bench-<phase>-<n>`, so each phase has its own dense tally indexed by `n`. A receiver can start
//! late on an address chosen earlier, which is how the backlog scenario's receiver is "down" and then comes back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::payload;

/// What arrived in one phase.
pub struct Tally {
    prefix: String,
    counts: Vec<AtomicU32>,
    // Emit → first receipt, in microseconds; u64::MAX until received.
    latency_us: Vec<AtomicU64>,
    distinct: AtomicUsize,
    total: AtomicUsize,
    complete_at: OnceLock<Instant>,
}

impl Tally {
    /// A tally of ids `<prefix><n>` for `n` below `events`.
    pub fn new(prefix: &str, events: usize) -> Self {
        Self {
            prefix: prefix.to_owned(),
            counts: (0..events).map(|_| AtomicU32::new(0)).collect(),
            latency_us: (0..events).map(|_| AtomicU64::new(u64::MAX)).collect(),
            distinct: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            complete_at: OnceLock::new(),
        }
    }

    fn record(&self, id: &str, body: &[u8], now_us: u64) -> bool {
        let Some(n) = id.strip_prefix(self.prefix.as_str()).and_then(|n| n.parse::<usize>().ok()) else {
            return false;
        };
        let Some(count) = self.counts.get(n) else { return false };
        self.total.fetch_add(1, Ordering::Relaxed);
        if count.fetch_add(1, Ordering::AcqRel) == 0 {
            if let Some(emitted) = payload::emit_us(body) {
                self.latency_us[n].store(now_us.saturating_sub(emitted), Ordering::Relaxed);
            }
            if self.distinct.fetch_add(1, Ordering::AcqRel) + 1 == self.counts.len() {
                let _ = self.complete_at.set(Instant::now());
            }
        }
        true
    }

    /// Distinct ids received.
    pub fn distinct(&self) -> usize {
        self.distinct.load(Ordering::Acquire)
    }

    /// Requests received beyond the first of each id.
    pub fn duplicates(&self) -> usize {
        self.total.load(Ordering::Acquire).saturating_sub(self.distinct())
    }

    /// When the last missing id arrived.
    pub fn complete_at(&self) -> Option<Instant> {
        self.complete_at.get().copied()
    }

    /// Emit → receipt latencies (milliseconds) of the ids received.
    pub fn latencies_ms(&self) -> Vec<f64> {
        self.latency_us
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .filter(|&l| l != u64::MAX)
            .map(|l| l as f64 / 1000.0)
            .collect()
    }
}

/// The receiver's tallies, one per phase, and a count of requests that belong to none (probes).
pub struct Sink {
    tallies: Vec<Tally>,
    pub others: AtomicUsize,
}

impl Sink {
    /// A receiver counting the phases `tallies`.
    pub fn new(tallies: Vec<Tally>) -> Self {
        Self { tallies, others: AtomicUsize::new(0) }
    }

    /// The tally of the phase whose ids start with `prefix`.
    pub fn tally(&self, prefix: &str) -> &Tally {
        self.tallies
            .iter()
            .find(|tally| tally.prefix == prefix)
            .unwrap_or_else(|| panic!("the benchmark has no phase {prefix}"))
    }

    fn record(&self, id: &str, body: &[u8], now_us: u64) {
        if !self.tallies.iter().any(|tally| tally.record(id, body, now_us)) {
            self.others.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the receiver on `127.0.0.1:0`.
pub async fn start(sink: Arc<Sink>) -> anyhow::Result<SocketAddr> {
    start_on("127.0.0.1:0".parse()?, sink).await
}

/// An address on loopback with nothing listening on it (yet): a receiver that is down.
pub async fn reserve_address() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0").await?.local_addr()?)
}

/// Starts the receiver on `addr`.
pub async fn start_on(addr: SocketAddr, sink: Arc<Sink>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let sink = sink.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(request, sink.clone()));
                let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(addr)
}

async fn handle(request: Request<Incoming>, sink: Arc<Sink>) -> Result<Response<Full<Bytes>>, Infallible> {
    let id = request.headers().get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    sink.record(&id, &body, payload::now_us());
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}
