//! Control served in-process by `hookrelay_control::run` on a free loopback port, for the test crates that drive it
//! over real gRPC. Each test crate uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use hookrelay_common::proto::v1::admin_service_client::AdminServiceClient;
use hookrelay_common::proto::v1::agent_service_client::AgentServiceClient;
use hookrelay_control::Config;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tonic::transport::Channel;

/// A running in-process control with its own data dir.
pub struct Control {
    _data: tempfile::TempDir,
    /// `host:port` it listens on.
    pub addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Control {
    /// Starts control with the defaults for a fresh data dir, changed by `configure`.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = Config::new(data.path());
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hookrelay_control::run(config, listener, async move {
            let _ = stopped.await;
        }));
        Self { _data: data, addr, stop: Some(stop), task }
    }

    /// Its URL, `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::connect(self.url()).await.unwrap()
    }

    pub async fn agent(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::connect(self.url()).await.unwrap()
    }

    /// `/metrics` over HTTP/1.1 (async: the server runs on the test's runtime).
    pub async fn metrics(&self) -> String {
        let mut stream = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let request = format!("GET /metrics HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n", self.addr);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// Asks it to stop and waits (at most 5 s) for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.take().unwrap().send(()).unwrap();
        timeout(Duration::from_secs(5), self.task).await.expect("control stops in time").unwrap()
    }
}
