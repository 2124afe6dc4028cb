//! A real webhook receiver on `127.0.0.1:0`: a hyper 1 HTTP/1.1 server (keep-alive) that records every request
//! (headers, body, time of arrival, the status it answered) and whose answers a test changes while it runs: a
//! script of statuses consumed one per request (`[500, 500, 200]`), then a default status, an optional delay, and
//! a hold that keeps requests waiting until released (to catch a delivery in flight).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use hookrelay_common::signing::{DEFAULT_TOLERANCE_SECS, Secret, SigningError, verify};

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Position in arrival order, from 0.
    pub seq: usize,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Every header.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Wall-clock time of arrival.
    pub received_at: SystemTime,
    /// Monotonic time of arrival.
    pub received_instant: Instant,
    /// The status the receiver answered with; `None` while the request is held or delayed.
    pub status: Option<u16>,
}

impl RecordedRequest {
    /// A header as text; `None` when absent or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// `webhook-id`, empty when absent.
    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id").unwrap_or_default()
    }

    /// `hookrelay-attempt` as a number, 0 when absent or malformed.
    pub fn attempt(&self) -> u32 {
        self.header("hookrelay-attempt").and_then(|value| value.parse().ok()).unwrap_or(0)
    }

    /// Whether the receiver answered 2xx.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|status| (200..300).contains(&status))
    }

    /// Checks the Standard Webhooks signature with `hookrelay_common::signing::verify` and the secret `whsec_…`.
    pub fn verify_signature(&self, secret: &str) -> Result<(), SigningError> {
        let secret = Secret::parse(secret)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() as i64;
        verify(
            &secret,
            self.webhook_id(),
            self.header("webhook-timestamp").unwrap_or_default(),
            self.header("webhook-signature").unwrap_or_default(),
            &self.body,
            now,
            DEFAULT_TOLERANCE_SECS,
        )
    }

    /// A one-line description for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "#{} {} {} id={} attempt={} status={:?} body={}B",
            self.seq,
            self.method,
            self.path,
            self.webhook_id(),
            self.attempt(),
            self.status,
            self.body.len()
        )
    }
}

#[derive(Debug)]
struct Behaviour {
    script: VecDeque<u16>,
    default_status: u16,
    delay: Duration,
    headers: Vec<(String, String)>,
    /// When set to n, every n-th request (by arrival) is answered 500 whatever else is configured.
    fail_every: Option<usize>,
}

#[derive(Debug)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<RecordedRequest>>,
    // `true` while requests are held.
    hold: watch::Sender<bool>,
}

/// A recording HTTP receiver. Dropping it stops accepting connections.
#[derive(Debug, Clone)]
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

#[derive(Debug)]
struct StopOnDrop(tokio::task::AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Receiver {
    /// Starts a receiver on `127.0.0.1:0` that answers 200.
    pub async fn start() -> Self {
        Self::bind("127.0.0.1:0".parse().expect("an address")).await
    }

    /// Starts a receiver on a given address (for instance the port a previous receiver used).
    pub async fn bind(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|error| panic!("bind receiver {addr}: {error}"));
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour {
                script: VecDeque::new(),
                default_status: 200,
                delay: Duration::ZERO,
                headers: Vec::new(),
                fail_every: None,
            }),
            requests: Mutex::new(Vec::new()),
            hold: watch::Sender::new(false),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Self { addr, shared, _stop: Arc::new(StopOnDrop(task.abort_handle())) }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        self.url_path("/hook")
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url_path(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn behaviour(&self) -> MutexGuard<'_, Behaviour> {
        self.shared.behaviour.lock().expect("receiver behaviour lock")
    }

    /// The next requests get these statuses, one each, then the default status again.
    pub fn set_script(&self, statuses: &[u16]) {
        self.behaviour().script = statuses.iter().copied().collect();
    }

    /// The status given when the script is empty (initially 200).
    pub fn set_status(&self, status: u16) {
        self.behaviour().default_status = status;
    }

    /// Answers every `n`-th request with 500 from now on (5 fails 20% of requests); `None` stops that.
    pub fn set_fail_every(&self, n: Option<usize>) {
        self.behaviour().fail_every = n.filter(|&n| n > 0);
    }

    /// Headers added to every answer from now on (e.g. `Retry-After`, `Location`).
    pub fn set_response_headers(&self, headers: &[(&str, &str)]) {
        self.behaviour().headers =
            headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
    }

    /// How long each request waits before it is answered (initially none).
    pub fn set_delay(&self, delay: Duration) {
        self.behaviour().delay = delay;
    }

    /// Keeps every request (arriving now or later) waiting unanswered until [`Receiver::release`]. Requests are
    /// recorded on arrival, so a test sees a delivery that is in flight.
    pub fn hold(&self) {
        self.shared.hold.send_replace(true);
    }

    /// Lets held requests be answered.
    pub fn release(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().expect("receiver requests lock").clone()
    }

    /// Number of requests so far.
    pub fn count(&self) -> usize {
        self.shared.requests.lock().expect("receiver requests lock").len()
    }

    /// The requests that carried `webhook-id: id`, in arrival order.
    pub fn requests_for(&self, id: &str) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|request| request.webhook_id() == id).collect()
    }

    /// How many requests each `webhook-id` got.
    pub fn counts_by_id(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for request in self.requests() {
            *counts.entry(request.webhook_id().to_owned()).or_default() += 1;
        }
        counts
    }

    /// The `webhook-id`s answered with 2xx at least once.
    pub fn succeeded_ids(&self) -> std::collections::BTreeSet<String> {
        self.requests().iter().filter(|r| r.succeeded()).map(|r| r.webhook_id().to_owned()).collect()
    }

    /// The first request with `webhook-id: id` that was answered 2xx.
    pub fn success_for(&self, id: &str) -> Option<RecordedRequest> {
        self.requests().into_iter().find(|request| request.webhook_id() == id && request.succeeded())
    }

    /// One line per request, for failure messages.
    pub fn summary(&self) -> String {
        let requests = self.requests();
        if requests.is_empty() {
            return "no requests".to_owned();
        }
        requests.iter().map(RecordedRequest::summary).collect::<Vec<_>>().join("; ")
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, shared.clone()));
            // Keep-alive is hyper's default for HTTP/1.1; errors (a client that went away) are the client's business.
            let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn handle(request: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let seq = {
        let mut requests = shared.requests.lock().expect("receiver requests lock");
        let seq = requests.len();
        requests.push(RecordedRequest {
            seq,
            method: parts.method.to_string(),
            path: parts.uri.path_and_query().map(ToString::to_string).unwrap_or_default(),
            headers: parts.headers,
            body,
            received_at: SystemTime::now(),
            received_instant: Instant::now(),
            status: None,
        });
        seq
    };

    let mut hold = shared.hold.subscribe();
    let _ = hold.wait_for(|held| !*held).await;
    let delay = shared.behaviour.lock().expect("receiver behaviour lock").delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, headers) = {
        let mut behaviour = shared.behaviour.lock().expect("receiver behaviour lock");
        let default = behaviour.default_status;
        let scripted = behaviour.script.pop_front().unwrap_or(default);
        let forced_failure = behaviour.fail_every.is_some_and(|n| (seq + 1) % n == 0);
        (if forced_failure { 500 } else { scripted }, behaviour.headers.clone())
    };
    shared.requests.lock().expect("receiver requests lock")[seq].status = Some(status);
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "text/plain");
    for (name, value) in headers {
        response = response.header(name, value);
    }
    let response =
        response.body(Full::new(Bytes::from(format!("test receiver says {status}")))).expect("a valid response");
    Ok(response)
}
