//! `POST /v1/events`: the HTTP/JSON way to emit, for services without a gRPC client. The body is JSON in UTF-8 and
//! says so: `content-type: application/json` (parameters such as `; charset=utf-8` allowed); any other type, or
//! none (curl's `-d` sends `application/x-www-form-urlencoded`), is refused with 415.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use hookrelay_common::model::{OCCURRED_AT_RANGE, shorten};

use super::{EmitRequest, Intake, IntakeError, utf8_text};
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

/// Refuses a body that is not declared `application/json`.
fn check_content_type(headers: &HeaderMap) -> Result<(), ErrorBody> {
    let declared = headers.get(header::CONTENT_TYPE).map(|value| value.to_str().unwrap_or("(not visible ASCII)"));
    let essence = declared.map(|value| value.split(';').next().unwrap_or_default().trim());
    if essence.is_some_and(|essence| essence.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    let got = match declared {
        Some(value) => format!("content-type {:?} is not accepted", shorten(value)),
        None => "the request has no content-type".to_owned(),
    };
    Err(ErrorBody {
        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        code: "unsupported_media_type",
        field: None,
        message: format!("{got}: send content-type: application/json (with curl: -H 'content-type: application/json')"),
    })
}

/// The handler of `POST /v1/events`.
pub async fn post_event(
    State(intake): State<Intake>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ErrorBody> {
    check_content_type(&headers).inspect_err(|_| intake.metrics.refused(RejectReason::Invalid))?;
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
    let text = utf8_text("body", body).map_err(|error| invalid(&error.field, error.message))?;
    let event: HttpEvent<'_> = serde_json::from_str(text).map_err(|error| {
        // serde quotes what it read (a field name, a string of the wrong type): cut the message and the name.
        let field =
            missing_or_unknown_field(&error.to_string()).map_or_else(|| "body".to_owned(), |name| shorten(&name));
        invalid(&field, format!("not a valid event: {}", shorten_serde_message(&error.to_string())))
    })?;
    let occurred_at = event.occurred_at.as_deref().map(unix_time).transpose()?;
    Ok(EmitRequest {
        owner: event.owner,
        event_type: event.event_type,
        id: event.id.unwrap_or_default(),
        occurred_at,
        payload: Bytes::copy_from_slice(event.payload.get().as_bytes()),
        payload_unchecked: false,
    })
}

/// An RFC 3339 time as unix seconds and nanoseconds, as a protobuf Timestamp holds it; the range is checked at intake
/// by the rule both routes share (`model::validate_occurred_at`). The parser itself reads no time before the epoch.
fn unix_time(text: &str) -> Result<(i64, i32), ErrorBody> {
    let since = humantime::parse_rfc3339_weak(text).map(|at| at.duration_since(std::time::UNIX_EPOCH));
    match since {
        Ok(Ok(since)) => Ok((since.as_secs() as i64, since.subsec_nanos() as i32)),
        Ok(Err(_)) | Err(humantime::TimestampError::OutOfRange) => Err(invalid(
            "occurred_at",
            format!("{:?} is out of range (a field, or the time): accepted are {OCCURRED_AT_RANGE}", shorten(text)),
        )),
        Err(_) => Err(invalid("occurred_at", format!("{:?} is not an RFC 3339 timestamp", shorten(text)))),
    }
}

/// serde_json's message with each quoted run (a `"string"` it read, a `` `field` `` name) cut by [`shorten`]: they
/// are the only parts of its messages that the caller controls.
fn shorten_serde_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(512));
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' && c != '`' {
            continue;
        }
        // A run ends at the same quote; inside "…", serde escapes quotes and backslashes as Debug does.
        let mut run = String::new();
        let mut closed = false;
        while let Some(inner) = chars.next() {
            if inner == c {
                closed = true;
                break;
            }
            run.push(inner);
            if c == '"' && inner == '\\' {
                run.extend(chars.next());
            }
        }
        out.push_str(&shorten(&run));
        if closed {
            out.push(c);
        }
    }
    out
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
        assert_eq!(request.occurred_at, Some((1_767_323_045, 0)));
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
        let not_utf8 = parse(&Bytes::from_static(b"{\"owner\":\"a\xff\"}")).err().unwrap();
        assert_eq!(not_utf8.field.as_deref(), Some("body"));
        assert!(not_utf8.message.contains("byte 0xff at byte offset 11"), "{}", not_utf8.message);
        let not_json = parse(&Bytes::from_static(b"{nope")).err().unwrap();
        assert_eq!(not_json.field.as_deref(), Some("body"));
        let bad_time = parse(&Bytes::from_static(br#"{"owner":"a","type":"b","occurred_at":"yesterday","payload":1}"#))
            .err()
            .unwrap();
        assert_eq!(bad_time.field.as_deref(), Some("occurred_at"));
        assert_eq!(unix_time("1970-01-01T00:00:01.25Z").ok(), Some((1, 250_000_000)));
        let early = unix_time("1969-12-31T23:59:59Z").err().unwrap();
        assert_eq!(early.field.as_deref(), Some("occurred_at"));
        assert!(early.message.contains("is out of range (a field, or the time): accepted are 1970-01-01T00:00:00Z to"));
    }

    #[test]
    fn only_json_is_accepted() {
        let with = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            }
            check_content_type(&headers)
        };
        for good in ["application/json", "Application/JSON", "application/json; charset=utf-8", "application/json;x=y"]
        {
            assert!(with(Some(good)).is_ok(), "{good}");
        }
        for bad in [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("application/jsonx"), None] {
            let refused = with(bad).err().unwrap();
            assert_eq!((refused.status, refused.code), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
            assert!(refused.message.contains("send content-type: application/json"), "{}", refused.message);
        }
    }

    #[test]
    fn quoted_input_is_cut_in_errors() {
        let long = "x".repeat(100 * 1024);
        for body in [
            format!(r#"{{"owner":"a","type":"b","payload":1,"{long}":2}}"#),
            format!(r#"{{"owner":1,"type":"b","payload":{{}},"occurred_at":"{long}"}}"#),
            format!(r#"{{"owner":"a","type":["{long}"],"payload":1}}"#),
            format!(r#"{{"owner":"a","type":"b","occurred_at":"{long}","payload":1}}"#),
        ] {
            let error = parse(&Bytes::from(body)).err().unwrap();
            assert!(error.message.len() < 400, "{}", &error.message[..400]);
            assert!(
                error.field.as_ref().is_none_or(|field| field.len() < 400),
                "a field name of {:?}",
                error.field.map(|f| f.len())
            );
        }
        assert_eq!(
            shorten_serde_message(r#"invalid type: string "a\"b", expected u8 at line 1 column 9"#),
            r#"invalid type: string "a\"b", expected u8 at line 1 column 9"#
        );
    }
}
