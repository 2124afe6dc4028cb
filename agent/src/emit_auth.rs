//! The optional emit token (`--emit-token-file`): when set, `POST /v1/events` and the gRPC `EmitService` need
//! `authorization: Bearer <token>`; everything else on the listener (health, reflection, metrics) stays open.
//! A refusal is HTTP 401 `{"error":{"code":"unauthenticated","message":...}}` or gRPC UNAUTHENTICATED. The token
//! is compared in constant time, and the file is re-read when it changes (one `stat` per emit at most).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use subtle::ConstantTimeEq as _;

/// Env var of `--emit-token-file`.
pub const ENV_EMIT_TOKEN_FILE: &str = "HOOKRELAY_EMIT_TOKEN_FILE";

const EMIT_GRPC: &str = "/hookrelay.v1.EmitService/";
const EMIT_HTTP: &str = "/v1/events";

type Stamp = Option<(SystemTime, u64)>;

/// The token emitters must present.
pub struct EmitToken {
    path: PathBuf,
    current: Mutex<(Stamp, Arc<[u8]>)>,
}

impl std::fmt::Debug for EmitToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmitToken(from {}, [redacted])", self.path.display())
    }
}

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().and_then(|metadata| Some((metadata.modified().ok()?, metadata.len())))
}

fn read_token(path: &Path) -> anyhow::Result<Arc<[u8]>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the emit token file {}", path.display()))?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .with_context(|| format!("the emit token file {} is empty", path.display()))?;
    Ok(Arc::from(token.as_bytes()))
}

impl EmitToken {
    /// Reads the token file (its first non-empty line); fails when it is unreadable or empty.
    pub fn from_file(path: &Path) -> anyhow::Result<Arc<Self>> {
        let token = read_token(path)?;
        Ok(Arc::new(Self { path: path.to_owned(), current: Mutex::new((stamp(path), token)) }))
    }

    fn current(&self) -> Arc<[u8]> {
        let mut current = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = stamp(&self.path);
        if now != current.0 {
            match read_token(&self.path) {
                Ok(token) => *current = (now, token),
                Err(error) => tracing::warn!(error = format!("{error:#}"), "keeping the previous emit token"),
            }
        }
        current.1.clone()
    }

    /// Whether `header` is `Bearer <the token>`.
    fn admits(&self, header: Option<&http::HeaderValue>) -> Result<(), &'static str> {
        let header = header.ok_or("missing credentials: emit needs `authorization: Bearer <token>`")?;
        let bytes = header.as_bytes();
        let token = bytes
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| bytes[7..].trim_ascii())
            .ok_or("the authorization header is not of the form `Bearer <token>`")?;
        if bool::from(self.current().as_ref().ct_eq(token)) {
            Ok(())
        } else {
            Err("the bearer token is not valid for emit")
        }
    }
}

/// Middleware (`axum::middleware::from_fn_with_state`) that guards emit with `token`.
pub async fn require(State(token): State<Arc<EmitToken>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !(path == EMIT_HTTP || path.starts_with(EMIT_GRPC)) {
        return next.run(request).await;
    }
    match token.admits(request.headers().get(http::header::AUTHORIZATION)) {
        Ok(()) => next.run(request).await,
        Err(message) if path.starts_with(EMIT_GRPC) => tonic::Status::unauthenticated(message).into_http(),
        Err(message) => (
            http::StatusCode::UNAUTHORIZED,
            [(http::header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({ "error": { "code": "unauthenticated", "message": message } })),
        )
            .into_response(),
    }
}

/// `router` with emit guarded by `token` when one is configured.
pub fn guard(router: axum::Router, token: Option<Arc<EmitToken>>) -> axum::Router {
    match token {
        Some(token) => router.layer(axum::middleware::from_fn_with_state(token, require)),
        None => router,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emit-token");
        std::fs::write(&path, "emit-token-0123456789\n").unwrap();
        let token = EmitToken::from_file(&path).unwrap();
        let header = |text: &str| http::HeaderValue::from_str(text).unwrap();
        assert!(token.admits(Some(&header("Bearer emit-token-0123456789"))).is_ok());
        assert!(token.admits(Some(&header("bearer emit-token-0123456789 "))).is_ok());
        assert!(token.admits(None).unwrap_err().starts_with("missing credentials"));
        assert!(token.admits(Some(&header("Bearer emit-token-012345678"))).is_err());
        assert!(token.admits(Some(&header("emit-token-0123456789"))).is_err());
        std::fs::write(&path, "rotated-token-0123456789-x\n").unwrap();
        assert!(token.admits(Some(&header("Bearer rotated-token-0123456789-x"))).is_ok());
        assert!(!format!("{token:?}").contains("rotated"));
    }
}
