//! Who may call what on control's listener: bearer tokens with scopes from a token file, and mTLS client
//! certificates for agents. [`AuthLayer`] is a tower layer in front of every gRPC service; it decides from the
//! request path alone, before the request body is read, so handlers never see an unauthenticated call.
//!
//! | path | needs |
//! |---|---|
//! | `AdminService/Get*`, `AdminService/List*` | a token of scope `read` or `admin` |
//! | every other `AdminService` method | a token of scope `admin` |
//! | `AgentService/*` | a token of scope `agent`, or a client certificate verified against `--tls-client-ca` |
//! | `grpc.health.v1.Health/*`, `/metrics` | nothing (probes and scrapers carry no token) |
//! | anything else (reflection, ...) | a token of scope `read` or `admin` |
//!
//! No token, a malformed `authorization` header or an unknown token answer UNAUTHENTICATED; a valid token of the
//! wrong scope answers PERMISSION_DENIED. Messages name what was expected but never echo the presented token.
//! Tokens are compared in constant time against every configured token (no early exit), so timing tells an
//! attacker nothing about how close a guess was.
//!
//! With neither a token file nor a client CA, [`Access::open`] lets everything through: the plaintext development
//! mode, which control only allows on loopback.
//!
//! Whether a peer presented a verified client certificate comes from the connection; [`AuthLayer::new`] takes the
//! function that reads it from a request's extensions, so this module does not depend on the listener's types.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use subtle::ConstantTimeEq as _;
use tonic::Status;

/// Shortest token accepted from the token file; shorter ones are too easy to guess.
pub const MIN_TOKEN_LEN: usize = 16;

const ADMIN_SERVICE: &str = "/hookrelay.v1.AdminService/";
const AGENT_SERVICE: &str = "/hookrelay.v1.AgentService/";
const HEALTH_SERVICE: &str = "/grpc.health.v1.Health/";
const METRICS: &str = "/metrics";

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every `AdminService` method (and everything `read` allows).
    Admin,
    /// `AdminService` `Get*` and `List*` only.
    Read,
    /// `AgentService` (Watch, ReportAttempts): what agents present.
    Agent,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Read => "read",
            Self::Agent => "agent",
        }
    }

    /// Whether a token of this scope may make a call that needs `needed`.
    fn allows(self, needed: Scope) -> bool {
        self == needed || (self == Self::Admin && needed == Self::Read)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a token file was refused. Messages name the line, never its token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("line {line}: expected `scope:token` with scope admin, read or agent")]
    Syntax { line: usize },
    #[error("line {line}: unknown scope {scope:?}; use admin, read or agent")]
    UnknownScope { line: usize, scope: String },
    #[error("line {line}: the token is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort { line: usize },
    #[error("line {line}: the token contains whitespace or control characters")]
    BadCharacters { line: usize },
    #[error("line {line}: the same token appears on line {first}")]
    Duplicate { line: usize, first: usize },
    #[error("the token file holds no tokens")]
    Empty,
}

/// The tokens of a token file. `Debug` shows scopes only.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<(Scope, Vec<u8>)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scopes: Vec<&str> = self.entries.iter().map(|(scope, _)| scope.name()).collect();
        f.debug_struct("Tokens").field("scopes", &scopes).field("tokens", &"[redacted]").finish()
    }
}

impl Tokens {
    /// Parses the token file format: one `scope:token` per line (scope `admin`, `read` or `agent`); blank lines
    /// and lines starting with `#` are ignored; tokens are at least [`MIN_TOKEN_LEN`] printable characters.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut entries: Vec<(Scope, Vec<u8>)> = Vec::new();
        let mut lines_of: Vec<usize> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (scope, token) = trimmed.split_once(':').ok_or(TokenFileError::Syntax { line })?;
            let scope = match scope.trim() {
                "admin" => Scope::Admin,
                "read" => Scope::Read,
                "agent" => Scope::Agent,
                other => return Err(TokenFileError::UnknownScope { line, scope: other.to_owned() }),
            };
            if token.chars().count() < MIN_TOKEN_LEN {
                return Err(TokenFileError::TooShort { line });
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(TokenFileError::BadCharacters { line });
            }
            if let Some(position) = entries.iter().position(|(_, known)| known.as_slice() == token.as_bytes()) {
                return Err(TokenFileError::Duplicate { line, first: lines_of[position] });
            }
            entries.push((scope, token.as_bytes().to_vec()));
            lines_of.push(line);
        }
        if entries.is_empty() {
            return Err(TokenFileError::Empty);
        }
        Ok(Self { entries })
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: path.to_owned(), source })?;
        Self::parse(&text)
    }

    /// The scope of `presented`, if it is one of the tokens. Compares against every token, whatever matches.
    fn scope_of(&self, presented: &[u8]) -> Option<Scope> {
        let mut found = None;
        for (scope, token) in &self.entries {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(*scope);
            }
        }
        found
    }
}

/// The access policy of control's listener; cheap to clone. The tokens can be replaced while serving
/// ([`Access::reload_tokens`]).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `None` when no token file is configured.
    tokens: Option<Arc<RwLock<Arc<Tokens>>>>,
    /// Whether the TLS layer verifies client certificates against a client CA.
    client_certs: bool,
}

impl Access {
    /// Everything allowed: the development mode.
    pub fn open() -> Self {
        Self::default()
    }

    /// The policy for these tokens (if any) and whether client certificates are verified.
    pub fn new(tokens: Option<Tokens>, client_certs: bool) -> Self {
        Self { tokens: tokens.map(|tokens| Arc::new(RwLock::new(Arc::new(tokens)))), client_certs }
    }

    /// Whether calls are let through without credentials.
    pub fn is_open(&self) -> bool {
        self.tokens.is_none() && !self.client_certs
    }

    /// Replaces the tokens (after the token file changed). No-op without a token file.
    pub fn reload_tokens(&self, tokens: Tokens) {
        if let Some(current) = &self.tokens {
            *current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(tokens);
        }
    }

    fn tokens(&self) -> Option<Arc<Tokens>> {
        self.tokens.as_ref().map(|current| current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }

    /// Decides one call from its path, its `authorization` header and whether the peer presented a client
    /// certificate that the TLS layer verified.
    pub fn check(
        &self,
        path: &str,
        authorization: Option<&http::HeaderValue>,
        client_cert: bool,
    ) -> Result<(), Status> {
        if self.is_open() {
            return Ok(());
        }
        let needed = match required_scope(path) {
            None => return Ok(()),
            Some(needed) => needed,
        };
        if needed == Scope::Agent && self.client_certs && client_cert {
            return Ok(());
        }
        let what = match needed {
            Scope::Agent if self.client_certs => {
                "AgentService needs the agent token (`authorization: Bearer <token>`, scope agent) or a client \
                 certificate signed by control's client CA"
            }
            Scope::Agent => "AgentService needs the agent token (`authorization: Bearer <token>`, scope agent)",
            Scope::Admin => "this method needs a bearer token of scope admin (`authorization: Bearer <token>`)",
            Scope::Read => "this method needs a bearer token of scope read or admin (`authorization: Bearer <token>`)",
        };
        let Some(tokens) = self.tokens() else {
            return Err(Status::unauthenticated(format!("{what}; control has no tokens configured (--tokens-file)")));
        };
        let Some(header) = authorization else {
            return Err(Status::unauthenticated(format!("missing credentials: {what}")));
        };
        let presented = bearer(header).ok_or_else(|| {
            Status::unauthenticated(format!("the authorization header is not of the form `Bearer <token>`; {what}"))
        })?;
        let scope = tokens.scope_of(presented).ok_or_else(|| {
            Status::unauthenticated(format!("the bearer token is not valid (unknown or revoked); {what}"))
        })?;
        if scope.allows(needed) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "the bearer token has scope {scope} but {} needs scope {}",
                method_name(path),
                match needed {
                    Scope::Read => "read or admin",
                    other => other.name(),
                }
            )))
        }
    }
}

/// The scope a call to `path` needs; `None` for calls open to everyone (health probes).
fn required_scope(path: &str) -> Option<Scope> {
    if let Some(method) = path.strip_prefix(ADMIN_SERVICE) {
        Some(if method.starts_with("Get") || method.starts_with("List") { Scope::Read } else { Scope::Admin })
    } else if path.starts_with(AGENT_SERVICE) {
        Some(Scope::Agent)
    } else if path.starts_with(HEALTH_SERVICE) || path == METRICS {
        None
    } else {
        Some(Scope::Read)
    }
}

/// `hookrelay.v1.AdminService/CreateOwner` for messages.
fn method_name(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// The token of an `authorization: Bearer <token>` header (scheme case-insensitive, as RFC 6750 allows).
fn bearer(header: &http::HeaderValue) -> Option<&[u8]> {
    let bytes = header.as_bytes();
    let scheme = bytes.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = bytes[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Whether a request's connection presented a verified client certificate, read from the request's extensions.
pub type ClientCertOf = fn(&http::Extensions) -> bool;

/// Puts [`Access`] in front of every service of a tonic server (`Server::builder().layer(AuthLayer::new(..))`).
#[derive(Debug, Clone)]
pub struct AuthLayer {
    access: Access,
    client_cert_of: ClientCertOf,
}

impl AuthLayer {
    pub fn new(access: Access, client_cert_of: ClientCertOf) -> Self {
        Self { access, client_cert_of }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, access: self.access.clone(), client_cert_of: self.client_cert_of }
    }
}

/// The service [`AuthLayer`] makes: refuses with a gRPC status, or passes the request on untouched.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    access: Access,
    client_cert_of: ClientCertOf,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Auth<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let verdict = self.access.check(
            request.uri().path(),
            request.headers().get(http::header::AUTHORIZATION),
            (self.client_cert_of)(request.extensions()),
        );
        match verdict {
            Ok(()) => {
                // The clone is not ready; the polled one must serve this request (tower's usual swap).
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(request))
            }
            Err(status) => {
                tracing::debug!(path = request.uri().path(), code = ?status.code(), "call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-token-0123456789";
    const READ: &str = "read-token-0123456789";
    const AGENT: &str = "agent-token-0123456789";

    fn access(client_certs: bool) -> Access {
        let text = format!("# tokens\nadmin:{ADMIN}\n\nread:{READ}\nagent:{AGENT}\n");
        Access::new(Some(Tokens::parse(&text).unwrap()), client_certs)
    }

    fn check(access: &Access, path: &str, header: Option<&str>, cert: bool) -> Result<(), tonic::Code> {
        let header = header.map(|text| http::HeaderValue::from_str(text).unwrap());
        access.check(path, header.as_ref(), cert).map_err(|status| status.code())
    }

    #[test]
    fn scopes_decide_by_method() {
        let access = access(false);
        let create = "/hookrelay.v1.AdminService/CreateOwner";
        let list = "/hookrelay.v1.AdminService/ListOwners";
        let watch = "/hookrelay.v1.AgentService/Watch";
        let bearer = |token: &str| format!("Bearer {token}");
        assert_eq!(check(&access, create, Some(&bearer(ADMIN)), false), Ok(()));
        assert_eq!(check(&access, list, Some(&bearer(ADMIN)), false), Ok(()));
        assert_eq!(check(&access, list, Some(&bearer(READ)), false), Ok(()));
        assert_eq!(check(&access, create, Some(&bearer(READ)), false), Err(tonic::Code::PermissionDenied));
        assert_eq!(check(&access, create, Some(&bearer(AGENT)), false), Err(tonic::Code::PermissionDenied));
        assert_eq!(check(&access, watch, Some(&bearer(AGENT)), false), Ok(()));
        assert_eq!(check(&access, watch, Some(&bearer(ADMIN)), false), Err(tonic::Code::PermissionDenied));
        assert_eq!(check(&access, watch, None, false), Err(tonic::Code::Unauthenticated));
        assert_eq!(check(&access, create, None, false), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            check(&access, create, Some("Bearer nope-nope-nope-nope"), false),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(check(&access, create, Some(ADMIN), false), Err(tonic::Code::Unauthenticated));
        assert_eq!(check(&access, create, Some(&format!("bearer  {ADMIN} ")), false), Ok(()));
        assert_eq!(check(&access, "/grpc.health.v1.Health/Check", None, false), Ok(()));
        assert_eq!(check(&access, "/metrics", None, false), Ok(()));
        assert_eq!(
            check(&access, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", None, false),
            Err(tonic::Code::Unauthenticated)
        );
    }

    #[test]
    fn client_certificates_only_count_with_a_client_ca_and_only_for_agents() {
        let watch = "/hookrelay.v1.AgentService/Watch";
        assert_eq!(check(&access(false), watch, None, true), Err(tonic::Code::Unauthenticated));
        assert_eq!(check(&access(true), watch, None, true), Ok(()));
        assert_eq!(check(&access(true), watch, None, false), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            check(&access(true), "/hookrelay.v1.AdminService/GetOwner", None, true),
            Err(tonic::Code::Unauthenticated)
        );
        // A client CA without a token file: agents by certificate, admin calls refused rather than open.
        let certs_only = Access::new(None, true);
        assert_eq!(check(&certs_only, watch, None, true), Ok(()));
        assert_eq!(
            check(&certs_only, "/hookrelay.v1.AdminService/GetOwner", None, true),
            Err(tonic::Code::Unauthenticated)
        );
    }

    #[test]
    fn open_access_lets_everything_through() {
        assert_eq!(check(&Access::open(), "/hookrelay.v1.AdminService/DeleteOwner", None, false), Ok(()));
    }

    #[test]
    fn messages_never_echo_the_token() {
        let header = http::HeaderValue::from_static("Bearer guessed-token-0123456789");
        let status = access(false).check("/hookrelay.v1.AdminService/CreateOwner", Some(&header), false).unwrap_err();
        assert!(!status.message().contains("guessed"), "{}", status.message());
        assert!(status.message().contains("not valid"), "{}", status.message());
        let header = http::HeaderValue::from_str(&format!("Bearer {READ}")).unwrap();
        let status = access(false).check("/hookrelay.v1.AdminService/CreateOwner", Some(&header), false).unwrap_err();
        assert_eq!(
            status.message(),
            "the bearer token has scope read but hookrelay.v1.AdminService/CreateOwner needs scope admin"
        );
    }

    #[test]
    fn token_file_errors_name_the_line() {
        assert!(matches!(Tokens::parse("admin"), Err(TokenFileError::Syntax { line: 1 })));
        assert!(matches!(Tokens::parse("\nroot:0123456789abcdef"), Err(TokenFileError::UnknownScope { line: 2, .. })));
        assert!(matches!(Tokens::parse("admin:short"), Err(TokenFileError::TooShort { line: 1 })));
        assert!(matches!(Tokens::parse("admin:0123456789 abcdef"), Err(TokenFileError::BadCharacters { line: 1 })));
        assert!(matches!(
            Tokens::parse("admin:0123456789abcdef\nread:0123456789abcdef"),
            Err(TokenFileError::Duplicate { line: 2, first: 1 })
        ));
        assert!(matches!(Tokens::parse("# nothing\n"), Err(TokenFileError::Empty)));
        let tokens = Tokens::parse("admin:0123456789abcdef").unwrap();
        assert!(!format!("{tokens:?}").contains("0123"));
    }
}
