//! Limits on the connections of a server, the same for the agent's emit listener and control's gRPC listener, so
//! that idle or trickling clients cannot use up its file descriptors:
//!
//! - at most [`Limits::max_connections`] at once. A connection beyond that takes the place of the connection idle
//!   for longest (one with no request in flight), which is closed; when every connection has a request in flight,
//!   the new one is closed at once, so its client learns it promptly instead of waiting in the accept backlog;
//! - a connection must bring its first complete request within [`Limits::header_read_timeout`] (a client that
//!   sends nothing, or a byte a second, is closed then);
//! - a connection with no request in flight for [`Limits::idle_timeout`] is closed.
//!
//! [`Connections::admit`] wraps each accepted stream in [`Limited`], which enforces the deadlines on its reads
//! (closing means its reads fail, so the HTTP server ends the connection); a request counts as in flight from the
//! call of the service until its response body is dropped ([`Activity::request_started`], [`TrackLayer`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Default of [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 512;
/// Default of [`Limits::header_read_timeout`], in seconds.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Default of [`Limits::idle_timeout`], in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 120;
/// How long accepting pauses after an error, which is mostly a lack of file descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How long a connection beyond the limit waits for the idle connection it displaces to close.
const DISPLACE_WAIT: Duration = Duration::from_secs(1);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; at least 1.
    pub max_connections: usize,
    /// Time from accepting a connection to its first complete request (and, in HTTP/1.1, for the headers of each
    /// later request).
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
        }
    }
}

/// The open connections of one listener.
#[derive(Debug)]
pub struct Connections {
    limits: Limits,
    slots: Arc<Semaphore>,
    open: Mutex<HashMap<u64, Activity>>,
    next_id: AtomicU64,
}

impl Connections {
    /// No connections yet.
    pub fn new(limits: Limits) -> Arc<Self> {
        let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            limits: Limits { max_connections: max, ..limits },
            slots: Arc::new(Semaphore::new(max)),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limits.max_connections - self.slots.available_permits()
    }

    /// Takes `io` under the limits: in a free slot, or in the slot of the connection idle for longest, which is
    /// closed for it. `None` (drop `io`: the client sees the connection closed) when every connection has a
    /// request in flight. Call it from the accept loop, one at a time, so that connections beyond the limit wait
    /// in the kernel's backlog, not in memory.
    pub async fn admit<IO>(self: &Arc<Self>, io: IO) -> Option<Limited<IO>> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !self.displace_longest_idle() {
                    return None;
                }
                tokio::time::timeout(DISPLACE_WAIT, self.slots.clone().acquire_owned()).await.ok()?.ok()?
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Activity::new();
        self.lock().insert(id, activity.clone());
        Some(Limited {
            io,
            activity,
            limits: self.limits,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            _slot: Slot { connections: self.clone(), id, _permit: permit },
        })
    }

    /// The next connection of `listener` taken under the limits, with its peer. TCP_NODELAY is set: small gRPC
    /// answers should not wait for Nagle's algorithm and the peer's delayed ACK. A connection refused for the limit
    /// is closed and logged; an accept error (out of file descriptors, say) is logged and tried again after a pause.
    pub async fn accept(
        self: &Arc<Self>,
        listener: &tokio::net::TcpListener,
    ) -> (Limited<tokio::net::TcpStream>, SocketAddr) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, %peer, "could not set TCP_NODELAY");
            }
            match self.admit(stream).await {
                Some(stream) => return (stream, peer),
                None => tracing::warn!(
                    %peer,
                    max_connections = self.limits.max_connections,
                    "refused a connection: every open connection has a request in flight"
                ),
            }
        }
    }

    /// Completes once every admitted connection is closed.
    pub async fn all_closed(&self) {
        let max = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(max).await;
    }

    /// Marks the connection idle for longest to be closed; false when none is idle.
    fn displace_longest_idle(&self) -> bool {
        let open = self.lock();
        let oldest = open
            .values()
            .filter_map(|activity| {
                let state = activity.lock();
                (state.in_flight == 0 && !state.displaced).then_some((state.idle_since, activity))
            })
            .min_by_key(|(since, _)| *since)
            .map(|(_, activity)| activity.clone());
        drop(open);
        match oldest {
            Some(activity) => {
                let mut state = activity.lock();
                state.displaced = true;
                if let Some(waker) = state.waker.take() {
                    waker.wake();
                }
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Activity>> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A connection's slot: freed, and the connection forgotten, when the connection is dropped.
#[derive(Debug)]
struct Slot {
    connections: Arc<Connections>,
    id: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

/// What a connection is doing: requests in flight, since when it is idle, and the waker of its reads.
#[derive(Debug, Clone)]
pub struct Activity(Arc<Mutex<State>>);

#[derive(Debug)]
struct State {
    in_flight: usize,
    requests: u64,
    idle_since: Instant,
    displaced: bool,
    waker: Option<Waker>,
}

impl Activity {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(State {
            in_flight: 0,
            requests: 0,
            idle_since: Instant::now(),
            displaced: false,
            waker: None,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A request of this connection has started; it is in flight until the guard is dropped (keep it with the
    /// response body).
    pub fn request_started(&self) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        state.requests += 1;
        InFlight(self.clone())
    }
}

/// A request in flight; see [`Activity::request_started`].
#[derive(Debug)]
pub struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            // The reads must arm the idle deadline now.
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }
}

/// A stream admitted by [`Connections::admit`]: its reads fail once the connection is to be closed.
#[derive(Debug)]
pub struct Limited<IO> {
    io: IO,
    activity: Activity,
    limits: Limits,
    sleep: Pin<Box<Sleep>>,
    _slot: Slot,
}

impl<IO> Limited<IO> {
    /// The stream inside.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// What requests on this connection report to.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// An error when the connection is to be closed; otherwise arms the wake-up for its deadline.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let deadline = {
            let mut state = self.activity.lock();
            if !state.waker.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
                state.waker = Some(cx.waker().clone());
            }
            if state.in_flight > 0 {
                return Ok(());
            }
            if state.displaced {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "closed for a newer connection"));
            }
            let wait = if state.requests == 0 { self.limits.header_read_timeout } else { self.limits.idle_timeout };
            match state.idle_since.checked_add(wait) {
                Some(deadline) => deadline,
                None => return Ok(()),
            }
        };
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle for too long")),
            Poll::Pending => Ok(()),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(error) = this.check(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A response body that keeps its request in flight until it is dropped.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _in_flight: Option<InFlight>,
}

impl<B> TrackedBody<B> {
    /// `inner`, holding `in_flight` until dropped.
    pub fn new(inner: B, in_flight: Option<InFlight>) -> Self {
        Self { inner, _in_flight: in_flight }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A tower layer that counts each request in flight on its connection, whose [`Activity`] `find` takes from the
/// request's extensions (where the server put it, e.g. in tonic's connect info).
#[derive(Debug, Clone, Copy)]
pub struct TrackLayer {
    find: fn(&http::Extensions) -> Option<Activity>,
}

impl TrackLayer {
    /// Finds each request's connection with `find`.
    pub fn new(find: fn(&http::Extensions) -> Option<Activity>) -> Self {
        Self { find }
    }
}

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track { inner, find: self.find }
    }
}

/// The service of [`TrackLayer`].
#[derive(Debug, Clone)]
pub struct Track<S> {
    inner: S,
    find: fn(&http::Extensions) -> Option<Activity>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Track<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let in_flight = (self.find)(request.extensions()).map(|activity| activity.request_started());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody::new(body, in_flight)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The clock is paused (it moves only while every task waits), so the displaced connection's wait for its slot
    // cannot run out however slowly this test is scheduled.
    #[tokio::test(start_paused = true)]
    async fn the_connection_idle_for_longest_makes_room() {
        let connections = Connections::new(Limits { max_connections: 2, ..Limits::default() });
        let first = connections.admit(tokio::io::empty()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let busy = connections.admit(tokio::io::empty()).await.unwrap();
        let _request = busy.activity().request_started();
        let first_state = first.activity().clone();
        let third = tokio::spawn({
            let connections = connections.clone();
            async move { connections.admit(tokio::io::empty()).await }
        });
        while !first_state.lock().displaced {
            tokio::task::yield_now().await;
        }
        // The server drops `first` once its read fails, which frees the slot for the third.
        drop(first);
        let _third = third.await.unwrap().expect("the third connection is admitted");
        assert_eq!(connections.open(), 2);
        // Now the third is idle and `busy` is not: the third gives way, never `busy`.
        assert!(connections.displace_longest_idle());
        assert!(!busy.activity().lock().displaced);
    }

    #[tokio::test]
    async fn nothing_is_displaced_while_every_connection_has_a_request_in_flight() {
        let connections = Connections::new(Limits { max_connections: 1, ..Limits::default() });
        let only = connections.admit(tokio::io::empty()).await.unwrap();
        let _request = only.activity().request_started();
        assert!(connections.admit(tokio::io::empty()).await.is_none());
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_read_timeout_and_an_idle_one_after_the_idle_timeout() {
        use tokio::io::AsyncReadExt as _;
        let limits = Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
        };
        let connections = Connections::new(limits);
        let (_silent_client, silent) = tokio::io::duplex(64);
        let mut silent = connections.admit(silent).await.unwrap();
        let started = Instant::now();
        let error = silent.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= limits.header_read_timeout, "{:?}", started.elapsed());

        let (_idle_client, idle) = tokio::io::duplex(64);
        let mut idle = connections.admit(idle).await.unwrap();
        drop(idle.activity().request_started());
        let started = Instant::now();
        let error = idle.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= limits.idle_timeout, "{:?}", started.elapsed());
    }
}
