//! A receiver of control's verification challenges (`GET <url>?challenge=<value>`) on 127.0.0.1, whose answer can
//! be changed mid-test: the right echo, a wrong one, not JSON, a 500, a redirect, or too slow.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// How the receiver answers `GET` challenges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    Echo,
    WrongValue,
    NotJson,
    ServerError,
    Redirect,
    Slow,
}

/// What the receiver saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub query: String,
    pub headers: http::HeaderMap,
}

/// A challenge receiver on 127.0.0.1 whose answer can be changed mid-test.
#[derive(Clone)]
pub struct ChallengeReceiver {
    pub port: u16,
    answer: Arc<Mutex<Answer>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl ChallengeReceiver {
    /// Starts a receiver answering `answer`.
    pub async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Self {
            port: listener.local_addr().unwrap().port(),
            answer: Arc::new(Mutex::new(answer)),
            seen: Arc::default(),
        };
        let shared = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let receiver = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| receiver.clone().handle(request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }

    /// `http://127.0.0.1:PORT` + `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{path_and_query}", self.port)
    }

    /// Changes the answer from the next request on.
    pub fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn handle(
        self,
        request: http::Request<hyper::body::Incoming>,
    ) -> Result<http::Response<Full<Bytes>>, Infallible> {
        let query = request.uri().query().unwrap_or_default().to_owned();
        self.seen.lock().unwrap().push(Seen { query: query.clone(), headers: request.headers().clone() });
        let challenge = url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "challenge")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        let answer = *self.answer.lock().unwrap();
        let (status, body, location) = match answer {
            Answer::Echo => (200, serde_json::json!({ "challenge": challenge }).to_string(), None),
            Answer::WrongValue => (200, serde_json::json!({ "challenge": "guessed" }).to_string(), None),
            Answer::NotJson => (200, "ok".to_owned(), None),
            Answer::ServerError => (500, "database is down".to_owned(), None),
            Answer::Redirect => (302, String::new(), Some("https://elsewhere.example/hook?token=abc")),
            Answer::Slow => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                (200, serde_json::json!({ "challenge": challenge }).to_string(), None)
            }
        };
        let mut response = http::Response::builder().status(status).header("content-type", "application/json");
        if let Some(location) = location {
            response = response.header("location", location);
        }
        Ok(response.body(Full::new(Bytes::from(body))).unwrap())
    }
}
