//! A server run inside the test, on the test's runtime and a free loopback port, until the test stops it: control or
//! an agent through their `run(config, listener, shutdown)`, or a fake peer. For tests that set what no flag sets
//! or stand in for the other side; [`crate::process`] runs the real binaries.
//!
//! This crate does not depend on control or the agent (they dev-depend on it), so the caller passes the function
//! that serves; control's tests start control this way in one place, `control/tests/support`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use futures::future::BoxFuture;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use hookrelay_common::proto::v1::admin_service_client::AdminServiceClient;
use hookrelay_common::proto::v1::agent_service_client::AgentServiceClient;

use crate::DEADLINE;

/// Resolves when the test stops the server, or drops its [`InProcess`] handle.
pub type Shutdown = BoxFuture<'static, ()>;

/// A server running in-process, with a temporary directory of its own.
pub struct InProcess {
    // Removed when the handle is dropped.
    dir: TempDir,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Binds `127.0.0.1:0` and spawns `serve(dir, listener, shutdown)`: `dir` is a fresh temporary directory for
    /// the server's data and for the files its config names.
    pub async fn start<Serve, Served>(serve: Serve) -> Self
    where
        Serve: FnOnce(&Path, TcpListener, Shutdown) -> Served,
        Served: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let dir = tempfile::Builder::new().prefix("hookrelay-test-").tempdir().expect("a temporary directory");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("the bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown: Shutdown = Box::pin(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(serve(dir.path(), listener, shutdown));
        Self { dir, addr, stop: Some(stop), task }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client of control's AdminService.
    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::connect(self.url()).await.expect("connects")
    }

    /// A client of control's AgentService, as an agent calls it.
    pub async fn agent(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::connect(self.url()).await.expect("connects")
    }

    /// The whole HTTP/1.1 answer to `GET /metrics`, head and body (async: the server runs on the test's runtime).
    pub async fn metrics(&self) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.expect("connects");
        let request = format!("GET /metrics HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n", self.addr);
        stream.write_all(request.as_bytes()).await.expect("sends the request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("reads the answer");
        response
    }

    /// Asks it to stop and waits (at most [`DEADLINE`]) for it to end; panics unless it ended well.
    pub async fn stop(mut self) {
        self.stop.take().expect("not stopped yet").send(()).expect("still running");
        let ended = tokio::time::timeout(DEADLINE, &mut self.task).await.expect("it stops in time");
        if let Err(error) = ended.expect("it did not panic") {
            panic!("it ended with an error: {error:#}");
        }
    }

    /// What it failed with, for a server that must refuse to start: waits (at most [`DEADLINE`]) for it to end by
    /// itself and returns the error; panics if it ended well.
    pub async fn failure(mut self) -> String {
        let ended = tokio::time::timeout(DEADLINE, &mut self.task).await.expect("it gives up in time");
        format!("{:#}", ended.expect("it did not panic").expect_err("it must not start"))
    }
}
