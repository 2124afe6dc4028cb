//! The configuration model's rules, shared by control (which validates what admins send) and the agent (which
//! compiles what control streams): names, filters, limits, defaults and retry schedules.

use std::collections::HashMap;
use std::time::Duration;

/// A value that breaks a rule, with the field it came from.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The request field, e.g. `filter_types[2]`.
    pub field: String,
    /// Why it was refused.
    pub message: String,
}

impl FieldError {
    /// A refusal of `field` because of `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Longest event type name.
pub const MAX_EVENT_TYPE_LEN: usize = 128;
/// Longest owner id.
pub const MAX_OWNER_ID_LEN: usize = 64;
/// Longest event id an emitter may choose.
pub const MAX_EVENT_ID_LEN: usize = 128;
/// Longest description or display name.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Most filters one endpoint may have.
pub const MAX_FILTERS: usize = 64;
/// Most custom headers one endpoint may have.
pub const MAX_CUSTOM_HEADERS: usize = 32;
/// Longest custom header value.
pub const MAX_HEADER_VALUE_LEN: usize = 1024;
/// Default payload limit of an event.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Default concurrent deliveries per endpoint.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 16;
/// Highest concurrent deliveries per endpoint.
pub const MAX_MAX_IN_FLIGHT: u32 = 1024;
/// Default whole-request timeout of a delivery attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest whole-request timeout an endpoint may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Connect timeout of a delivery attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a response body that are read and kept.
pub const RESPONSE_SNIPPET_BYTES: usize = 4096;
/// Default page size of list calls.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page size of list calls.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Most steps of a retry schedule.
pub const MAX_RETRY_STEPS: usize = 20;
/// Longest single retry delay.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Jitter applied to each retry delay, as a fraction either way.
pub const RETRY_JITTER: f64 = 0.2;

/// Delays between tries after the first: 5s, 5m, 30m, 2h, 5h, 10h, 10h (8 tries, about 27 hours).
pub const DEFAULT_RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Checks an owner id: 1 to 64 of `a-z 0-9 - _`, starting with a letter or digit.
pub fn validate_owner_id(field: &str, id: &str) -> Result<(), FieldError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_OWNER_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'));
    if valid {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{:?} is not a valid owner id (1 to {MAX_OWNER_ID_LEN} of a-z, 0-9, '-', '_', starting with a letter or digit)",
                shorten(id)
            ),
        ))
    }
}

/// Checks an event type name against `^[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*$`, at most 128 characters.
pub fn validate_event_type(field: &str, name: &str) -> Result<(), FieldError> {
    if name.len() <= MAX_EVENT_TYPE_LEN && is_dotted_name(name) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "{:?} is not a valid event type (dot-separated segments of a-z, 0-9, '_', '-', each starting with a letter or digit, at most {MAX_EVENT_TYPE_LEN} characters)",
                shorten(name)
            ),
        ))
    }
}

fn is_dotted_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|segment| {
            segment.as_bytes().first().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && segment.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
        })
}

/// Checks an emitter-chosen event id: 1 to 128 printable ASCII characters.
pub fn validate_event_id(field: &str, id: &str) -> Result<(), FieldError> {
    if id.is_empty() || id.len() > MAX_EVENT_ID_LEN {
        return Err(FieldError::new(field, format!("must be 1 to {MAX_EVENT_ID_LEN} characters, got {}", id.len())));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FieldError::new(field, "must be printable ASCII without spaces"));
    }
    Ok(())
}

/// Checks a description or display name length.
pub fn validate_description(field: &str, text: &str) -> Result<(), FieldError> {
    if text.len() > MAX_DESCRIPTION_LEN {
        return Err(FieldError::new(field, format!("at most {MAX_DESCRIPTION_LEN} bytes, got {}", text.len())));
    }
    Ok(())
}

/// Which event types an endpoint subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `*`: every type.
    All,
    /// `payment.*`: `payment` itself and every type below it; holds `payment.`.
    Family(String),
    /// One exact type.
    Exact(String),
}

impl Filter {
    /// Parses `*`, `prefix.*` or an exact type name.
    pub fn parse(field: &str, text: &str) -> Result<Self, FieldError> {
        if text == "*" {
            return Ok(Self::All);
        }
        if let Some(prefix) = text.strip_suffix(".*") {
            validate_event_type(field, prefix).map_err(|_| {
                FieldError::new(field, format!("{:?} is not `*`, `prefix.*` or an event type", shorten(text)))
            })?;
            return Ok(Self::Family(format!("{prefix}.")));
        }
        validate_event_type(field, text)?;
        Ok(Self::Exact(text.to_owned()))
    }

    /// Whether an event of `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Family(prefix) => {
                event_type.starts_with(prefix.as_str()) || event_type == &prefix[..prefix.len() - 1]
            }
            Self::Exact(name) => name == event_type,
        }
    }
}

/// Parses an endpoint's filters and checks each one names types of the catalog, so that no subscription silently
/// matches nothing. `is_known` answers whether a type is in the catalog; `catalog` lists it for families.
pub fn validate_filters<'a>(
    filters: &[String],
    is_known: impl Fn(&str) -> bool,
    catalog: impl Iterator<Item = &'a str> + Clone,
) -> Result<Vec<Filter>, FieldError> {
    if filters.is_empty() {
        return Err(FieldError::new("filter_types", "subscribe to at least one event type (or `*` for all)"));
    }
    if filters.len() > MAX_FILTERS {
        return Err(FieldError::new("filter_types", format!("at most {MAX_FILTERS} filters, got {}", filters.len())));
    }
    filters
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let field = format!("filter_types[{index}]");
            let filter = Filter::parse(&field, text)?;
            match &filter {
                Filter::All => {}
                Filter::Exact(name) if !is_known(name) => {
                    return Err(FieldError::new(
                        field,
                        format!("event type {:?} is not in the catalog", shorten(name)),
                    ));
                }
                Filter::Family(_) if !catalog.clone().any(|name| filter.matches(name)) => {
                    return Err(FieldError::new(
                        field,
                        format!("no event type in the catalog matches {:?}", shorten(text)),
                    ));
                }
                _ => {}
            }
            Ok(filter)
        })
        .collect()
}

/// Header names an endpoint may not set, because hookrelay owns them or HTTP does.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "user-agent",
    "te",
    "upgrade",
    "x-hookrelay-signature",
];

/// Checks an endpoint's custom headers: token names that hookrelay does not own, visible ASCII values.
pub fn validate_headers(headers: &HashMap<String, String>) -> Result<(), FieldError> {
    if headers.len() > MAX_CUSTOM_HEADERS {
        return Err(FieldError::new(
            "headers",
            format!("at most {MAX_CUSTOM_HEADERS} custom headers, got {}", headers.len()),
        ));
    }
    for (name, value) in headers {
        let field = format!("headers[{:?}]", shorten(name));
        let lower = name.to_ascii_lowercase();
        let token = !name.is_empty()
            && name.len() <= 128
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(FieldError::new(field, "header name must be an HTTP token of at most 128 characters"));
        }
        if RESERVED_HEADERS.contains(&lower.as_str())
            || lower.starts_with("webhook-")
            || lower.starts_with("hookrelay-")
        {
            return Err(FieldError::new(field, "this header is set by hookrelay and cannot be overridden"));
        }
        if value.len() > MAX_HEADER_VALUE_LEN || !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
            return Err(FieldError::new(
                field,
                format!("value must be visible ASCII of at most {MAX_HEADER_VALUE_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

/// Checks a retry schedule in milliseconds; empty means the default.
pub fn validate_retry_schedule(schedule_ms: &[u64]) -> Result<(), FieldError> {
    if schedule_ms.len() > MAX_RETRY_STEPS {
        return Err(FieldError::new(
            "retry_policy.schedule_ms",
            format!("at most {MAX_RETRY_STEPS} steps, got {}", schedule_ms.len()),
        ));
    }
    for (index, &ms) in schedule_ms.iter().enumerate() {
        if ms == 0 || ms > MAX_RETRY_DELAY.as_millis() as u64 {
            return Err(FieldError::new(
                format!("retry_policy.schedule_ms[{index}]"),
                format!("must be between 1 and {} milliseconds, got {ms}", MAX_RETRY_DELAY.as_millis()),
            ));
        }
    }
    Ok(())
}

/// The retry schedule in force: the endpoint's own or the default.
pub fn retry_schedule(schedule_ms: &[u64]) -> Vec<Duration> {
    if schedule_ms.is_empty() {
        DEFAULT_RETRY_SCHEDULE.to_vec()
    } else {
        schedule_ms.iter().map(|&ms| Duration::from_millis(ms)).collect()
    }
}

/// Checks a per-endpoint in-flight limit; 0 means the default.
pub fn validate_max_in_flight(value: u32) -> Result<(), FieldError> {
    if value > MAX_MAX_IN_FLIGHT {
        return Err(FieldError::new("max_in_flight", format!("at most {MAX_MAX_IN_FLIGHT}, got {value}")));
    }
    Ok(())
}

/// Checks a per-endpoint timeout; 0 means the default.
pub fn validate_timeout_ms(value: u64) -> Result<(), FieldError> {
    if value > MAX_TIMEOUT.as_millis() as u64 {
        return Err(FieldError::new("timeout_ms", format!("at most {} ms, got {value}", MAX_TIMEOUT.as_millis())));
    }
    Ok(())
}

/// Checks a page size; 0 means the default. Returns the size to use.
pub fn page_size(requested: u32) -> Result<usize, FieldError> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE as usize),
        1..=MAX_PAGE_SIZE => Ok(requested as usize),
        _ => Err(FieldError::new("page_size", format!("at most {MAX_PAGE_SIZE}, got {requested}"))),
    }
}

/// Most characters of a request's value that an error message quotes.
pub const QUOTED_CHARS: usize = 80;

/// A request value as error messages quote it: its first [`QUOTED_CHARS`] characters, with `…` when cut. Every error
/// that echoes what a caller sent goes through this, so an over-long field cannot make the error itself too large
/// to deliver (a gRPC status travels in a header, which clients cap at a few KiB).
pub fn shorten(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Latest `occurred_at` accepted, in unix seconds: 9999-12-31T23:59:59Z, the end of protobuf's Timestamp range.
pub const MAX_OCCURRED_AT_SECONDS: i64 = 253_402_300_799;
/// The `occurred_at` range, as refusals state it.
pub const OCCURRED_AT_RANGE: &str = "1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z";

/// Checks an event's `occurred_at` (unix seconds and nanoseconds, as in a protobuf Timestamp) and returns it in unix
/// milliseconds. Events are stored with unsigned milliseconds, so the range starts at the epoch. Both emit routes
/// apply this one rule.
pub fn validate_occurred_at(field: &str, seconds: i64, nanos: i32) -> Result<u64, FieldError> {
    if !(0..=MAX_OCCURRED_AT_SECONDS).contains(&seconds) {
        return Err(FieldError::new(
            format!("{field}.seconds"),
            format!("{seconds} is out of range: accepted are 0 to {MAX_OCCURRED_AT_SECONDS} ({OCCURRED_AT_RANGE})"),
        ));
    }
    if !(0..1_000_000_000).contains(&nanos) {
        return Err(FieldError::new(
            format!("{field}.nanos"),
            format!("{nanos} is out of range: accepted are 0 to 999999999 ({OCCURRED_AT_RANGE})"),
        ));
    }
    Ok(seconds as u64 * 1000 + nanos as u64 / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_names() {
        for good in ["a", "payment.settled", "chat.message_received", "v2.card-viewed", "0.x"] {
            validate_event_type("type", good).unwrap();
        }
        for bad in ["", "Payment", ".a", "a.", "a..b", "a b", "_a", "a._b", &"a".repeat(129)] {
            let error = validate_event_type("type", bad).unwrap_err();
            assert_eq!(error.field, "type");
        }
    }

    #[test]
    fn owner_ids() {
        validate_owner_id("owner", "team-payments_1").unwrap();
        assert!(validate_owner_id("owner", "").is_err());
        assert!(validate_owner_id("owner", "-x").is_err());
        assert!(validate_owner_id("owner", "Upper").is_err());
        assert!(validate_owner_id("owner", &"a".repeat(65)).is_err());
    }

    #[test]
    fn filters_match_exact_family_and_all() {
        let family = Filter::parse("f", "payment.*").unwrap();
        assert!(family.matches("payment.settled"));
        assert!(family.matches("payment"));
        assert!(!family.matches("payments.settled"));
        assert!(Filter::parse("f", "*").unwrap().matches("anything"));
        assert!(Filter::parse("f", "a.b").unwrap().matches("a.b"));
        assert!(Filter::parse("f", "a.*.b").is_err());
    }

    #[test]
    fn filters_must_name_catalog_types() {
        let catalog = ["payment.settled", "chat.message"];
        let known = |name: &str| catalog.contains(&name);
        let filters = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        validate_filters(&filters(&["payment.settled", "chat.*", "*"]), known, catalog.iter().copied()).unwrap();
        let error = validate_filters(&filters(&["payment.settled", "card.viewed"]), known, catalog.iter().copied())
            .unwrap_err();
        assert_eq!(error.field, "filter_types[1]");
        assert!(error.message.contains("\"card.viewed\" is not in the catalog"), "{error}");
        assert!(validate_filters(&filters(&["card.*"]), known, catalog.iter().copied()).is_err());
        assert!(validate_filters(&[], known, catalog.iter().copied()).is_err());
    }

    #[test]
    fn headers_cannot_override_ours() {
        let ok = HashMap::from([("x-team".to_string(), "payments".to_string())]);
        validate_headers(&ok).unwrap();
        for name in ["webhook-id", "Content-Type", "hookrelay-attempt", "bad header"] {
            let headers = HashMap::from([(name.to_string(), "v".to_string())]);
            assert!(validate_headers(&headers).is_err(), "{name}");
        }
        let newline = HashMap::from([("x-a".to_string(), "a\nb".to_string())]);
        assert!(validate_headers(&newline).is_err());
    }

    #[test]
    fn quoted_values_are_cut() {
        assert_eq!(shorten("acme"), "acme");
        let long = "é".repeat(100 * 1024);
        assert_eq!(shorten(&long), format!("{}…", "é".repeat(QUOTED_CHARS)));
        let error = validate_owner_id("owner", &long).unwrap_err();
        assert!(error.to_string().len() < 400, "{error}");
        let headers = HashMap::from([(long.clone(), "v".to_owned())]);
        assert!(validate_headers(&headers).unwrap_err().to_string().len() < 400);
    }

    #[test]
    fn occurred_at_is_in_range() {
        assert_eq!(validate_occurred_at("occurred_at", 1_767_323_045, 5_000_000), Ok(1_767_323_045_005));
        assert_eq!(validate_occurred_at("occurred_at", 0, 0), Ok(0));
        assert_eq!(validate_occurred_at("occurred_at", MAX_OCCURRED_AT_SECONDS, 999_999_999), Ok(253_402_300_799_999));
        for (seconds, nanos, field, needle) in [
            (-1, 0, "occurred_at.seconds", "-1 is out of range: accepted are 0 to 253402300799"),
            (i64::MAX, 0, "occurred_at.seconds", "9999-12-31T23:59:59.999999999Z"),
            (0, -1, "occurred_at.nanos", "-1 is out of range: accepted are 0 to 999999999"),
            (0, 2_000_000_000, "occurred_at.nanos", "2000000000 is out of range"),
        ] {
            let error = validate_occurred_at("occurred_at", seconds, nanos).unwrap_err();
            assert_eq!(error.field, field);
            assert!(error.message.contains(needle), "{error}");
        }
    }

    #[test]
    fn page_sizes_and_schedules() {
        assert_eq!(page_size(0).unwrap(), 20);
        assert_eq!(page_size(100).unwrap(), 100);
        assert_eq!(page_size(101).unwrap_err().to_string(), "page_size: at most 100, got 101");
        assert_eq!(retry_schedule(&[]).len(), 7);
        assert_eq!(retry_schedule(&[10, 20]), vec![Duration::from_millis(10), Duration::from_millis(20)]);
        assert!(validate_retry_schedule(&[0]).is_err());
    }
}
