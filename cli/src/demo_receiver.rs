//! The webhook receiver of `hookrelay dev`: an HTTP server on loopback that checks every delivery's Standard
//! Webhooks signature with the demo endpoint's secret, as a real receiver must, and prints one line per delivery.
//!
//! It answers 200 when the signature verifies, 401 when it does not (so hookrelay retries, as it would against a
//! real receiver), and 503 while it does not know the secret yet. `GET /webhook?challenge=X` answers
//! `{"challenge":"X"}`, the endpoint verification handshake.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use hookrelay_common::signing::{self, Secret};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Body;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Path the demo endpoint points at.
pub const PATH: &str = "/webhook";
/// Bodies above this are refused; the agent's own payload limit is far below it.
const MAX_BODY_BYTES: usize = 4 << 20;
/// How much of a body a printed line shows.
const PRINTED_BODY_CHARS: usize = 300;

/// What the receiver shares between connections: the secret to verify with, once known.
#[derive(Default)]
pub struct ReceiverState {
    // A std lock: it is held only to clone the secret, never across an await.
    secret: RwLock<Option<Secret>>,
}

impl ReceiverState {
    pub fn set_secret(&self, secret: Secret) {
        *self.secret.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(secret);
    }

    fn secret(&self) -> Option<Secret> {
        self.secret.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// Binds `127.0.0.1:port` (0 picks a free port).
pub async fn bind(port: u16) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let address = listener.local_addr()?;
    Ok((listener, address))
}

/// Serves connections until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<ReceiverState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("[receiver] accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(request, Arc::clone(&state)));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // A connection error concerns that client only (for instance it hung up); nothing to report.
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn handle<B>(request: Request<B>, state: Arc<ReceiverState>) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if request.uri().path() != PATH {
        return Ok(reply(StatusCode::NOT_FOUND, "not found\n"));
    }
    match *request.method() {
        Method::GET => Ok(challenge(request.uri().query().unwrap_or_default())),
        Method::POST => {
            let (parts, body) = request.into_parts();
            let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    println!("[receiver] could not read a request body: {error}");
                    return Ok(reply(StatusCode::BAD_REQUEST, "unreadable body\n"));
                }
            };
            let now = hookrelay_common::time::now_ms() as i64 / 1000;
            let (status, line) = receive(&parts.headers, &body, state.secret().as_ref(), now);
            println!("{line}");
            Ok(reply(status, if status.is_success() { "ok\n" } else { "refused\n" }))
        }
        _ => Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")),
    }
}

/// Checks one delivery; returns the answer and the line to print.
fn receive(headers: &hyper::HeaderMap, body: &[u8], secret: Option<&Secret>, now_secs: i64) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let id = header("webhook-id").unwrap_or_default();
    let event_type = header("hookrelay-event-type").unwrap_or_else(|| "?".to_owned());
    let attempt = header("hookrelay-attempt").unwrap_or_else(|| "?".to_owned());
    let (status, verified) = match (secret, header("webhook-timestamp"), header("webhook-signature")) {
        (None, _, _) => (StatusCode::SERVICE_UNAVAILABLE, "unknown (no secret yet, answered 503)".to_owned()),
        (Some(_), None, _) | (Some(_), _, None) => {
            (StatusCode::UNAUTHORIZED, "NO (webhook-timestamp or webhook-signature missing)".to_owned())
        }
        (Some(secret), Some(timestamp), Some(signature)) => {
            match signing::verify(secret, &id, &timestamp, &signature, body, now_secs, signing::DEFAULT_TOLERANCE_SECS)
            {
                Ok(()) => (StatusCode::OK, "yes".to_owned()),
                Err(error) => (StatusCode::UNAUTHORIZED, format!("NO ({error}, answered 401)")),
            }
        }
    };
    let body = String::from_utf8_lossy(body);
    let body: String = body.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let body = if body.chars().count() > PRINTED_BODY_CHARS {
        format!("{}…", body.chars().take(PRINTED_BODY_CHARS).collect::<String>())
    } else {
        body
    };
    let line = format!(
        "[receiver] webhook-id={} type={event_type} attempt={attempt} verified={verified} body={body}",
        if id.is_empty() { "?" } else { &id },
    );
    (status, line)
}

/// Answers the verification handshake `?challenge=X` with `{"challenge":"X"}`.
fn challenge(query: &str) -> Response<Full<Bytes>> {
    let value = query.split('&').find_map(|pair| pair.strip_prefix("challenge="));
    match value {
        Some(value) => {
            let body = serde_json::json!({ "challenge": value }).to_string();
            let mut response = reply(StatusCode::OK, &body);
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().expect("valid"));
            response
        }
        None => reply(StatusCode::BAD_REQUEST, "POST webhooks here\n"),
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use hookrelay_common::signing::Signer;

    use super::*;

    fn signed_headers(secret: &Secret, id: &str, timestamp: i64, body: &[u8]) -> hyper::HeaderMap {
        let signature = Signer::new(std::slice::from_ref(secret)).webhook_signature(id, timestamp, body);
        let mut headers = hyper::HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        headers.insert("hookrelay-event-type", "demo.hello".parse().unwrap());
        headers.insert("hookrelay-attempt", "2".parse().unwrap());
        headers
    }

    #[test]
    fn verifies_signed_deliveries_and_refuses_others() {
        let secret = Secret::generate();
        let body = br#"{"hello":"world"}"#;
        let headers = signed_headers(&secret, "evt_1", 1000, body);

        let (status, line) = receive(&headers, body, Some(&secret), 1000);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            line,
            r#"[receiver] webhook-id=evt_1 type=demo.hello attempt=2 verified=yes body={"hello":"world"}"#
        );

        let (status, line) = receive(&headers, br#"{"hello":"tampered"}"#, Some(&secret), 1000);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(line.contains("verified=NO (no matching signature"), "{line}");

        let (status, _) = receive(&headers, body, Some(&Secret::generate()), 1000);
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let (status, line) = receive(&headers, body, None, 1000);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(line.contains("verified=unknown"), "{line}");
    }

    #[tokio::test]
    async fn serves_deliveries_and_the_challenge() {
        let secret = Secret::generate();
        let state = Arc::new(ReceiverState::default());
        state.set_secret(secret.clone());
        let body = b"{}";
        let now = hookrelay_common::time::now_ms() as i64 / 1000;
        let mut request = Request::post(PATH).body(Full::new(Bytes::from_static(body))).unwrap();
        *request.headers_mut() = signed_headers(&secret, "evt_2", now, body);
        let response = handle(request, Arc::clone(&state)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);

        let request = Request::get("/webhook?challenge=abc").body(Full::new(Bytes::new())).unwrap();
        let response = handle(request, Arc::clone(&state)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&answer[..], br#"{"challenge":"abc"}"#);

        let request = Request::post("/elsewhere").body(Full::new(Bytes::new())).unwrap();
        assert_eq!(handle(request, state).await.unwrap().status(), StatusCode::NOT_FOUND);
    }
}
