//! The config hub: serves each agent's `Watch` stream, in the manner of Envoy's xDS.
//!
//! A session starts with the agent's `AgentHello`. Control subscribes to the store's change feed *before* it reads
//! the snapshot, sends the snapshot, then forwards every delta newer than what it sent, so no change falls between
//! the two. Deltas are pushed only when config changes. The agent answers each version with an ack (recorded as its
//! applied version) or a nack (recorded as its last error, and answered with a fresh snapshot). A watcher that lags
//! behind the feed, or sees a gap in versions, also gets a fresh snapshot. Every message refreshes the agent's
//! `last_seen`; `connected` is true while at least one of its streams is open.
//!
//! Sessions end when the agent closes its side, when it goes away, or when control stops (so open streams never
//! hold up a graceful shutdown).

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hookrelay_common::proto::v1 as pb;
use pb::watch_request::Kind as RequestKind;
use pb::watch_response::Kind as ResponseKind;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::error::Result;
use crate::store::{AgentEvent, Store};
use crate::validate;

/// Responses buffered per stream before the session waits for the agent to read.
const STREAM_BUFFER: usize = 16;

/// The stream of responses of one `Watch` call.
pub type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

/// Command messages (each up to 1,000 replays) queued per stream before a sender waits for the agent to read.
const COMMAND_BUFFER: usize = 16;

/// How long a sender waits for room in a stream's commands before it counts the agent as not reading.
const COMMAND_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Open streams per node name, each with the sender of its command channel. A std mutex: it is held only to
/// update the map or clone a sender, never across an await.
type Connections = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::Sender<pb::AgentCommands>)>>>>;

/// Serves Watch streams and knows which agents are connected.
#[derive(Clone)]
pub struct ConfigHub {
    store: Arc<dyn Store>,
    connections: Connections,
    stop: watch::Receiver<bool>,
    command_timeout: Duration,
}

impl ConfigHub {
    /// A hub over `store`; its sessions end once `stop` turns true.
    pub fn new(store: Arc<dyn Store>, stop: watch::Receiver<bool>) -> Self {
        Self { store, connections: Connections::default(), stop, command_timeout: COMMAND_SEND_TIMEOUT }
    }

    /// Whether `node_name` has a Watch stream open.
    pub fn is_connected(&self, node_name: &str) -> bool {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node_name)
            .is_some_and(|open| !open.is_empty())
    }

    /// How many nodes have a Watch stream open.
    pub fn connected_agents(&self) -> usize {
        let connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
        connections.values().filter(|open| !open.is_empty()).count()
    }

    /// Sends commands down the newest open stream of `node_name`, waiting while its agent is behind (a recovery of
    /// a million deliveries queues them here at the pace the agent reads them, not all at once in control's
    /// memory); false when it has no open stream or its agent read nothing for the command timeout.
    pub async fn send_commands(&self, node_name: &str, commands: pb::AgentCommands) -> bool {
        let senders: Vec<_> = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node_name)
            .map(|open| open.iter().rev().map(|(_, sender)| sender.clone()).collect())
            .unwrap_or_default();
        for sender in senders {
            match tokio::time::timeout(self.command_timeout, sender.reserve()).await {
                Ok(Ok(permit)) => {
                    permit.send(commands);
                    return true;
                }
                // Closed: an older stream of the node may still be open.
                Ok(Err(_)) => {}
                Err(_) => {
                    let waited = self.command_timeout;
                    tracing::warn!(node = %node_name, ?waited, "the agent read no commands; these were not sent");
                    return false;
                }
            }
        }
        false
    }

    /// Starts a session reading `inbound` and returns its response stream.
    pub fn open<S>(&self, inbound: S) -> WatchStream
    where
        S: Stream<Item = Result<pb::WatchRequest, Status>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let session = Session { hub: self.clone(), tx, sent_version: None };
        tokio::spawn(session.run(inbound));
        ReceiverStream::new(rx)
    }
}

/// Marks a node connected for as long as it lives, and receives the commands sent to it.
struct Connection {
    connections: Connections,
    node_name: String,
    id: u64,
}

impl Connection {
    fn open(connections: &Connections, node_name: &str) -> (Self, mpsc::Receiver<pb::AgentCommands>) {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(COMMAND_BUFFER);
        connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(node_name.to_owned())
            .or_default()
            .push((id, sender));
        (Self { connections: connections.clone(), node_name: node_name.to_owned(), id }, receiver)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut connections = self.connections.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = connections.get_mut(&self.node_name) {
            open.retain(|(id, _)| *id != self.id);
            if open.is_empty() {
                connections.remove(&self.node_name);
            }
        }
    }
}

/// Why a session ended early.
enum End {
    /// The agent stopped reading; nothing more to say.
    Gone,
    /// Tell the agent this status, then end.
    Fail(Status),
}

impl From<crate::error::Error> for End {
    fn from(error: crate::error::Error) -> Self {
        Self::Fail(error.into())
    }
}

struct Session {
    hub: ConfigHub,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    /// The config version the agent has been sent last.
    sent_version: Option<u64>,
}

/// Completes once control stops (or whoever could stop it is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

impl Session {
    async fn run<S>(mut self, inbound: S)
    where
        S: Stream<Item = Result<pb::WatchRequest, Status>> + Send + 'static,
    {
        let mut inbound = pin!(inbound);
        let hello = match inbound.next().await {
            Some(Ok(pb::WatchRequest { kind: Some(RequestKind::Hello(hello)) })) => hello,
            Some(Ok(_)) => {
                let status = Status::invalid_argument("the first message of a Watch stream must be an AgentHello");
                let _ = self.tx.send(Err(status)).await;
                return;
            }
            Some(Err(_)) | None => return,
        };
        if let Err(error) = validate::node_name("hello.node_name", &hello.node_name) {
            let _ = self.tx.send(Err(error.into())).await;
            return;
        }
        let node_name = hello.node_name.clone();
        let (_connection, commands) = Connection::open(&self.hub.connections, &node_name);
        tracing::info!(node = %node_name, agent_version = %hello.agent_version, applied_version = hello.applied_version, "agent connected");

        let ended = self.serve(&node_name, hello, inbound, commands).await;
        if let Err(End::Fail(status)) = ended {
            tracing::warn!(node = %node_name, %status, "watch stream failed");
            let _ = self.tx.send(Err(status)).await;
        }
        if let Err(error) = self.hub.store.record_agent(&node_name, AgentEvent::Goodbye).await {
            tracing::warn!(node = %node_name, %error, "could not record the agent's disconnection");
        }
        tracing::info!(node = %node_name, "agent disconnected");
    }

    async fn serve<S>(
        &mut self,
        node_name: &str,
        hello: pb::AgentHello,
        mut inbound: S,
        mut commands: mpsc::Receiver<pb::AgentCommands>,
    ) -> Result<(), End>
    where
        S: Stream<Item = Result<pb::WatchRequest, Status>> + Unpin,
    {
        let store = self.hub.store.clone();
        let hello = AgentEvent::Hello { agent_version: hello.agent_version, applied_version: hello.applied_version };
        store.record_agent(node_name, hello).await?;
        // Subscribe first: a change committed while the snapshot is read is then both in it and in the feed,
        // and the feed's copy is skipped by version.
        let mut deltas = store.subscribe_config();
        self.send_snapshot().await?;
        let mut stop = self.hub.stop.clone();
        loop {
            tokio::select! {
                () = stopped(&mut stop) => return Ok(()),
                _ = self.tx.closed() => return Err(End::Gone),
                Some(commands) = commands.recv() => {
                    let response = pb::WatchResponse { kind: Some(ResponseKind::Commands(commands)) };
                    self.tx.send(Ok(response)).await.map_err(|_| End::Gone)?;
                }
                request = inbound.next() => match request {
                    Some(Ok(request)) => self.handle(node_name, request).await?,
                    Some(Err(status)) => {
                        tracing::debug!(node = %node_name, %status, "watch stream broke");
                        return Err(End::Gone);
                    }
                    None => return Ok(()),
                },
                delta = deltas.recv() => match delta {
                    Ok(delta) => self.forward(node_name, &delta).await?,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::info!(node = %node_name, missed, "watcher fell behind the change feed; resending a snapshot");
                        self.send_snapshot().await?;
                    }
                    Err(RecvError::Closed) => return Ok(()),
                },
            }
        }
    }

    async fn handle(&mut self, node_name: &str, request: pb::WatchRequest) -> Result<(), End> {
        let store = &self.hub.store;
        match request.kind {
            Some(RequestKind::Ack(ack)) => {
                store.record_agent(node_name, AgentEvent::Ack { version: ack.version }).await?;
            }
            Some(RequestKind::Nack(nack)) => {
                tracing::warn!(node = %node_name, version = nack.version, error = %nack.error, "agent rejected config; resending a snapshot");
                let event = AgentEvent::Nack { version: nack.version, error: nack.error };
                store.record_agent(node_name, event).await?;
                self.send_snapshot().await?;
            }
            Some(RequestKind::Status(status)) => {
                store.record_agent(node_name, AgentEvent::Status { queue_depth: status.queue_depth }).await?;
            }
            Some(RequestKind::Hello(_)) => {
                return Err(End::Fail(Status::invalid_argument(
                    "AgentHello may only be the first message of a stream",
                )));
            }
            None => {
                return Err(End::Fail(Status::invalid_argument("empty WatchRequest")));
            }
        }
        Ok(())
    }

    async fn forward(&mut self, node_name: &str, delta: &pb::ConfigDelta) -> Result<(), End> {
        let sent = self.sent_version.unwrap_or(0);
        if delta.version <= sent {
            return Ok(());
        }
        if delta.base_version != sent {
            tracing::info!(node = %node_name, sent, base = delta.base_version, "config versions skipped; resending a snapshot");
            return self.send_snapshot().await;
        }
        self.send(ResponseKind::Delta(delta.clone()), delta.version).await
    }

    async fn send_snapshot(&mut self) -> Result<(), End> {
        let snapshot = self.hub.store.config_snapshot().await?;
        let version = snapshot.version;
        self.send(ResponseKind::Snapshot(snapshot), version).await
    }

    async fn send(&mut self, kind: ResponseKind, version: u64) -> Result<(), End> {
        self.tx.send(Ok(pb::WatchResponse { kind: Some(kind) })).await.map_err(|_| End::Gone)?;
        self.sent_version = Some(version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use hookrelay_common::time::{now_ms, to_timestamp};
    use tokio::time::timeout;

    use super::*;
    use crate::store::SledStore;

    struct Harness {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        hub: ConfigHub,
        stop: watch::Sender<bool>,
    }

    fn harness() -> Harness {
        use hookrelay_common::sealed::MasterKey;

        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), MasterKey::generate()).unwrap());
        let (stop, stopped) = watch::channel(false);
        Harness { hub: ConfigHub::new(store.clone(), stopped), store, stop, _dir: dir }
    }

    fn request(kind: RequestKind) -> Result<pb::WatchRequest, Status> {
        Ok(pb::WatchRequest { kind: Some(kind) })
    }

    fn hello(node: &str) -> Result<pb::WatchRequest, Status> {
        request(RequestKind::Hello(pb::AgentHello {
            node_name: node.into(),
            agent_version: "0.1.0".into(),
            applied_version: 0,
        }))
    }

    async fn next(stream: &mut WatchStream) -> Result<pb::WatchResponse, Status> {
        timeout(Duration::from_secs(5), stream.next()).await.expect("a response in time").expect("an open stream")
    }

    async fn create_owner(store: &Arc<dyn Store>, id: &str) {
        let now = Some(to_timestamp(now_ms()));
        let owner = pb::Owner { id: id.into(), name: id.into(), created_at: now, updated_at: now };
        store.create_owner(owner).await.unwrap();
    }

    #[tokio::test]
    async fn snapshot_then_deltas_then_snapshot_after_a_nack() {
        let h = harness();
        create_owner(&h.store, "before").await;
        let (agent_tx, agent_rx) = mpsc::channel(8);
        let mut responses = h.hub.open(ReceiverStream::new(agent_rx));
        agent_tx.send(hello("node-1")).await.unwrap();

        let Some(ResponseKind::Snapshot(snapshot)) = next(&mut responses).await.unwrap().kind else {
            panic!("expected a snapshot first");
        };
        assert_eq!(snapshot.version, 1);
        assert_eq!(snapshot.owners[0].id, "before");
        assert!(h.hub.is_connected("node-1"));

        create_owner(&h.store, "after").await;
        let Some(ResponseKind::Delta(delta)) = next(&mut responses).await.unwrap().kind else {
            panic!("expected a delta");
        };
        assert_eq!((delta.base_version, delta.version), (1, 2));
        assert_eq!(delta.upsert_owners[0].id, "after");

        agent_tx.send(request(RequestKind::Ack(pb::ConfigAck { version: 2 }))).await.unwrap();
        agent_tx.send(request(RequestKind::Status(pb::AgentStatus { queue_depth: 9 }))).await.unwrap();
        agent_tx.send(request(RequestKind::Nack(pb::ConfigNack { version: 2, error: "boom".into() }))).await.unwrap();
        let Some(ResponseKind::Snapshot(again)) = next(&mut responses).await.unwrap().kind else {
            panic!("expected a snapshot after the nack");
        };
        assert_eq!(again.version, 2);
        let agents = h.store.list_agents().await.unwrap();
        assert_eq!(agents[0].node_name, "node-1");
        assert_eq!(agents[0].applied_version, 2);
        assert_eq!(agents[0].queue_depth, 9);
        assert_eq!(agents[0].last_error, "version 2: boom");

        drop(agent_tx);
        assert!(timeout(Duration::from_secs(5), responses.next()).await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!h.hub.is_connected("node-1"));
    }

    #[tokio::test]
    async fn the_first_message_must_be_a_hello() {
        let h = harness();
        let inbound = tokio_stream::iter(vec![request(RequestKind::Ack(pb::ConfigAck { version: 1 }))]);
        let mut responses = h.hub.open(inbound);
        let status = next(&mut responses).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("must be an AgentHello"), "{status}");
    }

    #[tokio::test]
    async fn commands_wait_for_a_slow_agent_and_give_up_on_one_that_reads_nothing() {
        let mut h = harness();
        h.hub.command_timeout = Duration::from_millis(300);
        let (agent_tx, agent_rx) = mpsc::channel(8);
        let mut responses = h.hub.open(ReceiverStream::new(agent_rx));
        agent_tx.send(hello("node-3")).await.unwrap();
        next(&mut responses).await.unwrap();
        let command = |n: usize| pb::AgentCommands {
            replays: vec![pb::Delivery { id: format!("dlv_{n}"), ..Default::default() }],
        };

        // The agent reads nothing: the stream's buffer, the session's hand and the command buffer fill, then a
        // sender waits out the timeout and gets false. Nothing sent before is lost.
        let mut sent = 0;
        while h.hub.send_commands("node-3", command(sent)).await {
            sent += 1;
            assert!(sent <= STREAM_BUFFER + COMMAND_BUFFER + 1, "commands kept being queued for an agent reading none");
        }
        assert!(sent >= COMMAND_BUFFER, "only {sent} commands were queued");
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            while received.len() < sent + 1 {
                if let Some(ResponseKind::Commands(commands)) = next(&mut responses).await.unwrap().kind {
                    received.extend(commands.replays.into_iter().map(|delivery| delivery.id));
                }
            }
            received
        });
        // Once the agent reads, a waiting sender goes through.
        assert!(h.hub.send_commands("node-3", command(sent)).await);
        let received = reader.await.unwrap();
        assert_eq!(received, (0..=sent).map(|n| format!("dlv_{n}")).collect::<Vec<_>>());
        assert!(!h.hub.send_commands("node-9", command(0)).await, "a node without a stream takes no commands");
        drop(agent_tx);
    }

    #[tokio::test]
    async fn stopping_ends_open_streams() {
        let h = harness();
        let (agent_tx, agent_rx) = mpsc::channel(8);
        let mut responses = h.hub.open(ReceiverStream::new(agent_rx));
        agent_tx.send(hello("node-2")).await.unwrap();
        next(&mut responses).await.unwrap();
        h.stop.send(true).unwrap();
        assert!(timeout(Duration::from_secs(5), responses.next()).await.unwrap().is_none());
    }
}
