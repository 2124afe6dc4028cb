//! `POST /v1/events`: the HTTP/JSON way to emit, for services without a gRPC client.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{EmitRequest, Intake, IntakeError};
use crate::metrics::RejectReason;

/// Room for the envelope around the payload.
const ENVELOPE_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpEvent<'a> {
    owner: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    occurred_at: Option<String>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Serialize)]
struct Accepted {
    id: String,
    deliveries: u32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

/// A JSON error answer: `{"error":{"code","field"?,"message"}}`.
pub struct ErrorBody {
    status: StatusCode,
    code: &'static str,
    field: Option<String>,
    message: String,
}

impl IntoResponse for ErrorBody {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(field) = self.field {
            error["field"] = field.into();
        }
        (self.status, Json(serde_json::json!({ "error": error }))).into_response()
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_argument",
        field: Some(field.to_owned()),
        message: message.into(),
    }
}

impl From<IntakeError> for ErrorBody {
    fn from(error: IntakeError) -> Self {
        match error {
            IntakeError::Invalid(field_error) => invalid(&field_error.field, field_error.message),
            IntakeError::Exhausted(message) => {
                ErrorBody { status: StatusCode::INSUFFICIENT_STORAGE, code: "resource_exhausted", field: None, message }
            }
            IntakeError::Unavailable(message) => {
                ErrorBody { status: StatusCode::SERVICE_UNAVAILABLE, code: "unavailable", field: None, message }
            }
            IntakeError::Storage(error) => ErrorBody {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "internal",
                field: None,
                message: format!("events could not be stored: {error}"),
            },
        }
    }
}

/// The handler of `POST /v1/events`.
pub async fn post_event(State(intake): State<Intake>, body: Body) -> Result<impl IntoResponse, ErrorBody> {
    let limit = intake.max_payload_bytes() + ENVELOPE_BYTES;
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            intake.metrics.refused(RejectReason::Invalid);
            return Err(ErrorBody {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "payload_too_large",
                field: Some("payload".into()),
                message: format!(
                    "request body is over {limit} bytes; payloads may be at most {} bytes",
                    intake.max_payload_bytes()
                ),
            });
        }
    };
    let request = parse(&body).inspect_err(|_| intake.metrics.refused(RejectReason::Invalid))?;
    let answer = intake.emit(vec![request], |_, name| name.to_owned()).await?.remove(0);
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted { id: answer.event_id, deliveries: answer.deliveries, duplicate: answer.duplicate }),
    ))
}

fn parse(body: &Bytes) -> Result<EmitRequest, ErrorBody> {
    let event: HttpEvent<'_> = serde_json::from_slice(body).map_err(|error| {
        let field = missing_or_unknown_field(&error.to_string()).unwrap_or_else(|| "body".to_owned());
        invalid(&field, format!("not a valid event: {error}"))
    })?;
    let occurred_at_ms = event
        .occurred_at
        .as_deref()
        .map(|text| {
            humantime::parse_rfc3339_weak(text)
                .ok()
                .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|since| since.as_millis() as u64)
                .ok_or_else(|| invalid("occurred_at", format!("{text:?} is not an RFC 3339 timestamp")))
        })
        .transpose()?;
    Ok(EmitRequest {
        owner: event.owner,
        event_type: event.event_type,
        id: event.id.unwrap_or_default(),
        occurred_at_ms,
        payload: Bytes::copy_from_slice(event.payload.get().as_bytes()),
        payload_unchecked: false,
    })
}

/// Runs the emit body parser on `body` and says whether it accepted it. For the fuzz targets in `agent/fuzz` only.
#[doc(hidden)]
pub fn parse_for_fuzzing(body: &[u8]) -> bool {
    parse(&Bytes::copy_from_slice(body)).is_ok()
}

/// serde names the field in "missing field `x`" and "unknown field `x`"; the error body names it too.
fn missing_or_unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `").or_else(|| message.strip_prefix("unknown field `"))?;
    Some(rest.split('`').next()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_keeps_the_payload_verbatim() {
        let body = Bytes::from_static(
            br#"{"owner":"acme","type":"a.b","id":"x1","occurred_at":"2026-01-02T03:04:05Z","payload":{"b": 1,  "a":[2]}}"#,
        );
        let request = parse(&body).ok().unwrap();
        assert_eq!(&request.payload[..], br#"{"b": 1,  "a":[2]}"#);
        assert_eq!(request.occurred_at_ms, Some(1_767_323_045_000));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&Bytes::from(body));
        }

        #[test]
        fn any_json_payload_is_kept_verbatim(
            payload in r#"(\{\}|\[1, 2\]|"[a-z ]{0,20}"|-?[1-9][0-9]{0,11}|true|null|\{"k": \[\{"n": 1\}\]\})"#,
            id in "[a-zA-Z0-9_-]{1,40}",
        ) {
            let body = format!(r#"{{"owner":"acme","type":"a.b","id":"{id}","payload":{payload}}}"#);
            let request = parse(&Bytes::from(body)).ok().expect("a valid envelope parses");
            proptest::prop_assert_eq!(&request.payload[..], payload.as_bytes());
            proptest::prop_assert_eq!(request.id, id);
        }
    }

    #[test]
    fn names_the_field_in_errors() {
        let missing = parse(&Bytes::from_static(br#"{"owner":"acme","payload":{}}"#)).err().unwrap();
        assert_eq!(missing.field.as_deref(), Some("type"));
        let unknown = parse(&Bytes::from_static(br#"{"owner":"a","type":"b","payload":1,"extra":2}"#)).err().unwrap();
        assert_eq!(unknown.field.as_deref(), Some("extra"));
        let not_json = parse(&Bytes::from_static(b"{nope")).err().unwrap();
        assert_eq!(not_json.field.as_deref(), Some("body"));
        let bad_time = parse(&Bytes::from_static(br#"{"owner":"a","type":"b","occurred_at":"yesterday","payload":1}"#))
            .err()
            .unwrap();
        assert_eq!(bad_time.field.as_deref(), Some("occurred_at"));
    }
}
