//! Checks of one request's own fields, turning gRPC requests into the values the [`Store`](crate::store::Store)
//! takes. The rules come from `hookrelay_common::model`, `ids` and `url_policy`; the rules that span records (does
//! the owner exist, is the type in the catalog, is the limit reached) are the store's.

use std::time::Duration;

use hookrelay_common::ids::{DeliveryId, EndpointId, ReportId};
use hookrelay_common::model::{
    self, shorten, validate_description, validate_event_type, validate_headers, validate_max_in_flight,
    validate_owner_id, validate_retry_schedule, validate_timeout_ms,
};
use hookrelay_common::net_policy::{AddressPolicy, describe_refusal};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::signing::Secret;
use hookrelay_common::time::{from_timestamp, to_timestamp};
use hookrelay_common::url_policy::{UrlError, ip_literal, validate_endpoint_url};

use crate::error::{Error, Result};
use crate::store::{DeliveryQuery, EndpointChange, PageRequest, Report};

/// Most reports one `ReportAttempts` call may carry.
pub const MAX_REPORTS_PER_CALL: usize = 1000;
/// Longest agent node name (a DNS name).
pub const MAX_NODE_NAME_LEN: usize = 253;
/// Longest page token; real ones are record keys.
const MAX_PAGE_TOKEN_LEN: usize = 256;
/// The reason recorded when an endpoint is disabled without one.
const DEFAULT_DISABLED_REASON: &str = "disabled by an administrator";
/// The reason recorded when an endpoint is created disabled.
const CREATED_DISABLED_REASON: &str = "created disabled";
/// How long a rotated-out secret stays valid when the request does not say.
pub const DEFAULT_ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// Longest overlap a rotation may ask for.
pub const MAX_ROTATION_OVERLAP: Duration = Duration::from_secs(30 * 24 * 3600);

/// An owner id in a request.
pub fn owner_id(field: &str, id: &str) -> Result<()> {
    Ok(validate_owner_id(field, id)?)
}

/// An event type name in a request.
pub fn event_type_name(field: &str, name: &str) -> Result<()> {
    Ok(validate_event_type(field, name)?)
}

/// An endpoint id in a request: malformed ids are refused before any lookup.
pub fn endpoint_id(field: &str, id: &str) -> Result<EndpointId> {
    EndpointId::parse(id).map_err(|error| Error::invalid(field, error.to_string()))
}

/// A delivery id in a request.
pub fn delivery_id(field: &str, id: &str) -> Result<DeliveryId> {
    DeliveryId::parse(id).map_err(|error| Error::invalid(field, error.to_string()))
}

/// Page size and token of a list call.
pub fn page(page_size: u32, page_token: &str) -> Result<PageRequest> {
    let size = model::page_size(page_size)?;
    if page_token.len() > MAX_PAGE_TOKEN_LEN {
        return Err(Error::invalid("page_token", "not a token from a previous answer"));
    }
    Ok(PageRequest { size, after: (!page_token.is_empty()).then(|| page_token.to_owned()) })
}

/// A new owner, stamped `now_ms`.
pub fn new_owner(request: pb::CreateOwnerRequest, now_ms: u64) -> Result<pb::Owner> {
    owner_id("id", &request.id)?;
    validate_description("name", &request.name)?;
    let now = Some(to_timestamp(now_ms));
    Ok(pb::Owner { id: request.id, name: request.name, created_at: now, updated_at: now })
}

/// An owner update: the id and the new name, if any.
pub fn owner_update(request: pb::UpdateOwnerRequest) -> Result<(String, Option<String>)> {
    owner_id("id", &request.id)?;
    if let Some(name) = &request.name {
        validate_description("name", name)?;
    }
    Ok((request.id, request.name))
}

/// A new catalog entry, stamped `now_ms`.
pub fn new_event_type(request: pb::CreateEventTypeRequest, now_ms: u64) -> Result<pb::EventType> {
    event_type_name("name", &request.name)?;
    validate_description("description", &request.description)?;
    let now = Some(to_timestamp(now_ms));
    Ok(pb::EventType { name: request.name, description: request.description, created_at: now, updated_at: now })
}

/// An event type update: the name and the new description, if any.
pub fn event_type_update(request: pb::UpdateEventTypeRequest) -> Result<(String, Option<String>)> {
    event_type_name("name", &request.name)?;
    if let Some(description) = &request.description {
        validate_description("description", description)?;
    }
    Ok((request.name, request.description))
}

/// What an endpoint URL must obey besides the fixed rules of `url_policy`: control's settings.
#[derive(Debug, Clone, Default)]
pub struct UrlRules {
    /// Control permits `http://` for endpoints created with the insecure flag (`--allow-insecure-endpoints`).
    pub allow_insecure: bool,
    /// Control's address policy (`--allowed-cidrs`): an IP-literal host it refuses is refused at once, since no
    /// delivery could reach it. Names are checked when they are resolved, at delivery time.
    pub addresses: AddressPolicy,
}

/// An endpoint URL, normalised. `insecure` is the endpoint's flag.
pub fn endpoint_url(url: &str, insecure: bool, rules: &UrlRules) -> Result<String> {
    let url = match validate_endpoint_url(url, insecure && rules.allow_insecure) {
        Ok(url) => url,
        Err(UrlError::Insecure) if insecure => {
            return Err(Error::invalid(
                "url",
                "insecure (http) endpoints are not permitted by this control plane; use https, or start control with \
                 --allow-insecure-endpoints",
            ));
        }
        Err(error) => return Err(Error::invalid("url", error.to_string())),
    };
    if let Some(address) = ip_literal(&url)
        && rules.addresses.check(address).is_err()
    {
        let range = describe_refusal(address).unwrap_or_else(|| "not globally routable".to_owned());
        return Err(Error::invalid(
            "url",
            format!(
                "host {} is in {range}, which control's address policy refuses, so no delivery could reach it; use a \
                 public address or a host name, or allow the range in control's and the agents' --allowed-cidrs",
                url.host_str().unwrap_or_default()
            ),
        ));
    }
    Ok(url.to_string())
}

/// A rate limit: at least one delivery per period, and a period.
pub fn rate_limit(limit: &pb::RateLimit) -> Result<()> {
    if limit.limit == 0 {
        return Err(Error::invalid("rate_limit.limit", "must be at least 1 (leave rate_limit unset for no limit)"));
    }
    match pb::RateLimitPeriod::try_from(limit.period) {
        Ok(pb::RateLimitPeriod::Second | pb::RateLimitPeriod::Minute) => Ok(()),
        _ => Err(Error::invalid(
            "rate_limit.period",
            format!("must be RATE_LIMIT_PERIOD_SECOND or RATE_LIMIT_PERIOD_MINUTE, got {}", limit.period),
        )),
    }
}

/// A new endpoint with a fresh id and secret, stamped `now_ms`; the filters are checked by the store against the
/// catalog. Returns the record to store and the secret in its `whsec_` form.
pub fn new_endpoint(
    request: pb::CreateEndpointRequest,
    rules: &UrlRules,
    now_ms: u64,
) -> Result<(pb::AgentEndpoint, String)> {
    owner_id("owner_id", &request.owner_id)?;
    let url = endpoint_url(&request.url, request.insecure, rules)?;
    validate_description("description", &request.description)?;
    validate_headers(&request.headers)?;
    if let Some(policy) = &request.retry_policy {
        validate_retry_schedule(&policy.schedule_ms)?;
    }
    validate_max_in_flight(request.max_in_flight)?;
    validate_timeout_ms(request.timeout_ms)?;
    if let Some(limit) = &request.rate_limit {
        rate_limit(limit)?;
    }
    let now = Some(to_timestamp(now_ms));
    let endpoint = pb::Endpoint {
        id: EndpointId::generate().to_string(),
        owner_id: request.owner_id,
        url,
        description: request.description,
        filter_types: request.filter_types,
        enabled: !request.disabled,
        disabled_reason: if request.disabled { CREATED_DISABLED_REASON.to_owned() } else { String::new() },
        rate_limit: request.rate_limit,
        max_in_flight: request.max_in_flight,
        timeout_ms: request.timeout_ms,
        retry_policy: request.retry_policy,
        headers: request.headers,
        insecure: request.insecure,
        body_signature: request.body_signature,
        created_at: now,
        updated_at: now,
    };
    let secret = Secret::generate().expose();
    Ok((pb::AgentEndpoint { endpoint: Some(endpoint), secrets: vec![secret.clone()] }, secret))
}

/// An endpoint update: the fields that do not depend on the stored endpoint are checked now, the URL (whose rule
/// depends on the stored insecure flag) when the change is applied.
pub fn endpoint_update(request: pb::UpdateEndpointRequest, rules: &UrlRules) -> Result<(EndpointId, EndpointChange)> {
    let id = endpoint_id("id", &request.id)?;
    if let Some(description) = &request.description {
        validate_description("description", description)?;
    }
    if let Some(headers) = &request.headers {
        validate_headers(&headers.values)?;
    }
    if let Some(policy) = &request.retry_policy {
        validate_retry_schedule(&policy.schedule_ms)?;
    }
    if let Some(max_in_flight) = request.max_in_flight {
        validate_max_in_flight(max_in_flight)?;
    }
    if let Some(timeout_ms) = request.timeout_ms {
        validate_timeout_ms(timeout_ms)?;
    }
    if let Some(limit) = &request.rate_limit {
        if request.clear_rate_limit {
            return Err(Error::invalid("clear_rate_limit", "cannot set rate_limit and clear it in one request"));
        }
        rate_limit(limit)?;
    }
    let rules = rules.clone();
    let change = move |endpoint: &mut pb::Endpoint| -> Result<()> {
        if request.url.is_some() || request.insecure.is_some() {
            let insecure = request.insecure.unwrap_or(endpoint.insecure);
            let url = request.url.as_deref().unwrap_or(&endpoint.url);
            endpoint.url = endpoint_url(url, insecure, &rules)?;
            endpoint.insecure = insecure;
        }
        if let Some(description) = request.description {
            endpoint.description = description;
        }
        if let Some(body_signature) = request.body_signature {
            endpoint.body_signature = body_signature;
        }
        if let Some(filters) = request.filter_types {
            endpoint.filter_types = filters.values;
        }
        if request.clear_rate_limit {
            endpoint.rate_limit = None;
        } else if let Some(limit) = request.rate_limit {
            endpoint.rate_limit = Some(limit);
        }
        if let Some(max_in_flight) = request.max_in_flight {
            endpoint.max_in_flight = max_in_flight;
        }
        if let Some(timeout_ms) = request.timeout_ms {
            endpoint.timeout_ms = timeout_ms;
        }
        if let Some(policy) = request.retry_policy {
            endpoint.retry_policy = Some(policy);
        }
        if let Some(headers) = request.headers {
            endpoint.headers = headers.values;
        }
        Ok(())
    };
    Ok((id, Box::new(change)))
}

/// Enabling an endpoint: clears the disabled reason.
pub fn enable_endpoint(request: pb::EnableEndpointRequest) -> Result<(EndpointId, EndpointChange)> {
    let id = endpoint_id("id", &request.id)?;
    let change = |endpoint: &mut pb::Endpoint| -> Result<()> {
        endpoint.enabled = true;
        endpoint.disabled_reason.clear();
        Ok(())
    };
    Ok((id, Box::new(change)))
}

/// Disabling an endpoint, with the reason given or a default one.
pub fn disable_endpoint(request: pb::DisableEndpointRequest) -> Result<(EndpointId, EndpointChange)> {
    let id = endpoint_id("id", &request.id)?;
    validate_description("reason", &request.reason)?;
    let reason = if request.reason.trim().is_empty() { DEFAULT_DISABLED_REASON.to_owned() } else { request.reason };
    let change = move |endpoint: &mut pb::Endpoint| -> Result<()> {
        endpoint.enabled = false;
        endpoint.disabled_reason = reason;
        Ok(())
    };
    Ok((id, Box::new(change)))
}

/// A secret rotation: the endpoint and how long its current secret stays valid (0 asks for the default).
pub fn rotation(request: pb::RotateEndpointSecretRequest) -> Result<(EndpointId, Duration)> {
    let id = endpoint_id("id", &request.id)?;
    let overlap = match request.overlap_seconds {
        0 => DEFAULT_ROTATION_OVERLAP,
        seconds if seconds > MAX_ROTATION_OVERLAP.as_secs() => {
            return Err(Error::invalid(
                "overlap_seconds",
                format!("at most {} (30 days), got {seconds}", MAX_ROTATION_OVERLAP.as_secs()),
            ));
        }
        seconds => Duration::from_secs(seconds),
    };
    Ok((id, overlap))
}

/// Wraps an endpoint change so that it fails, changing nothing, unless the endpoint ends up at `verified_url`: the
/// URL that answered the challenge must be the one stored, even if another update changed it meanwhile.
pub fn keep_verified_url(change: EndpointChange, verified_url: String) -> EndpointChange {
    Box::new(move |endpoint: &mut pb::Endpoint| {
        change(endpoint)?;
        if endpoint.url != verified_url {
            return Err(Error::FailedPrecondition(
                "the endpoint's URL changed while its verification challenge ran; try again".into(),
            ));
        }
        Ok(())
    })
}

/// An agent's node name: 1 to 253 visible ASCII characters.
pub fn node_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NODE_NAME_LEN || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {MAX_NODE_NAME_LEN} visible ASCII characters, got {:?}", shorten(name)),
        ));
    }
    Ok(())
}

/// A `ReportAttempts` call: the reporting node, its checked reports and the malformed ones set aside. A bad node name
/// or too many reports refuse the call; a malformed report is set aside with its reason and the others are kept, so
/// one bad report never holds back an agent's whole spool.
pub fn reports(request: pb::ReportAttemptsRequest) -> Result<(String, Vec<Report>, Vec<pb::RejectedReport>)> {
    node_name("node_name", &request.node_name)?;
    if request.reports.len() > MAX_REPORTS_PER_CALL {
        return Err(Error::invalid(
            "reports",
            format!("at most {MAX_REPORTS_PER_CALL} reports per call, got {}", request.reports.len()),
        ));
    }
    let mut rejected = Vec::new();
    let mut checked = Vec::with_capacity(request.reports.len());
    for (index, report) in request.reports.into_iter().enumerate() {
        let check = || {
            let field = |name: &str| format!("reports[{index}].{name}");
            let report_id = ReportId::parse(&report.report_id)
                .map_err(|error| Error::invalid(field("report_id"), error.to_string()))?;
            let delivery = report.delivery.ok_or_else(|| Error::invalid(field("delivery"), "required"))?;
            let delivery_id = DeliveryId::parse(&delivery.id)
                .map_err(|error| Error::invalid(field("delivery.id"), error.to_string()))?;
            let attempt = match report.attempt {
                None => None,
                Some(mut attempt) => {
                    if attempt.number == 0 {
                        return Err(Error::invalid(field("attempt.number"), "attempts are numbered from 1"));
                    }
                    if attempt.delivery_id.is_empty() {
                        attempt.delivery_id = delivery.id.clone();
                    } else if attempt.delivery_id != delivery.id {
                        return Err(Error::invalid(
                            field("attempt.delivery_id"),
                            format!(
                                "{:?} differs from delivery.id {:?}",
                                shorten(&attempt.delivery_id),
                                shorten(&delivery.id)
                            ),
                        ));
                    }
                    Some(attempt)
                }
            };
            Ok(Report { report_id, delivery_id, delivery, attempt })
        };
        match check() {
            Ok(report) => checked.push(report),
            Err(error) => rejected.push(pb::RejectedReport { index: index as u32, reason: error.to_string() }),
        }
    }
    Ok((request.node_name, checked, rejected))
}

/// The filters and page of a `ListDeliveries` call.
pub fn delivery_query(request: pb::ListDeliveriesRequest) -> Result<DeliveryQuery> {
    let page_size = model::page_size(request.page_size)?;
    let owner_id = non_empty(request.owner_id);
    if let Some(owner) = &owner_id {
        self::owner_id("owner_id", owner)?;
    }
    let endpoint_id = non_empty(request.endpoint_id).map(|id| endpoint_id("endpoint_id", &id)).transpose()?;
    let status = match pb::DeliveryStatus::try_from(request.status) {
        Ok(pb::DeliveryStatus::Unspecified) => None,
        Ok(status) => Some(status as i32),
        Err(_) => return Err(Error::invalid("status", format!("unknown delivery status {}", request.status))),
    };
    let event_type = non_empty(request.event_type);
    if let Some(name) = &event_type {
        event_type_name("event_type", name)?;
    }
    let time = |field: &str, ts: Option<prost_types::Timestamp>| {
        ts.map(|ts| from_timestamp(&ts).ok_or_else(|| Error::invalid(field, "must be a time after the unix epoch")))
            .transpose()
    };
    let after = non_empty(request.page_token)
        .map(|token| {
            DeliveryId::parse(&token)
                .map_err(|_| Error::invalid("page_token", "not a token from a previous ListDeliveries answer"))
        })
        .transpose()?;
    Ok(DeliveryQuery {
        owner_id,
        endpoint_id,
        status,
        event_type,
        created_after_ms: time("created_after", request.created_after)?,
        created_before_ms: time("created_before", request.created_before)?,
        page_size,
        after,
    })
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn rules(allow_insecure: bool) -> UrlRules {
        UrlRules { allow_insecure, ..UrlRules::default() }
    }

    fn message(result: Result<impl std::fmt::Debug>) -> String {
        result.unwrap_err().to_string()
    }

    fn create_request() -> pb::CreateEndpointRequest {
        pb::CreateEndpointRequest {
            owner_id: "acme".into(),
            url: "https://example.com/hook".into(),
            filter_types: vec!["payment.settled".into()],
            ..Default::default()
        }
    }

    #[test]
    fn new_endpoints_get_an_id_a_secret_and_defaults() {
        let (stored, secret) = new_endpoint(create_request(), &rules(false), 1_000).unwrap();
        let endpoint = stored.endpoint.unwrap();
        assert!(EndpointId::parse(&endpoint.id).is_ok());
        assert!(secret.starts_with("whsec_"));
        assert_eq!(stored.secrets, vec![secret]);
        assert!(endpoint.enabled);
        assert_eq!(endpoint.created_at, Some(to_timestamp(1_000)));

        let disabled = pb::CreateEndpointRequest { disabled: true, ..create_request() };
        let endpoint = new_endpoint(disabled, &rules(false), 1_000).unwrap().0.endpoint.unwrap();
        assert!(!endpoint.enabled);
        assert_eq!(endpoint.disabled_reason, "created disabled");
    }

    #[test]
    fn insecure_urls_need_the_flag_and_the_permission() {
        let http =
            |insecure| pb::CreateEndpointRequest { url: "http://example.com/".into(), insecure, ..create_request() };
        assert!(message(new_endpoint(http(true), &rules(false), 0)).contains("not permitted by this control plane"));
        assert!(
            message(new_endpoint(http(false), &rules(true), 0))
                .starts_with("url: http URLs need the endpoint's insecure")
        );
        assert!(new_endpoint(http(true), &rules(true), 0).is_ok());
        let userinfo = pb::CreateEndpointRequest { url: "https://u:p@example.com/".into(), ..create_request() };
        assert!(message(new_endpoint(userinfo, &rules(false), 0)).starts_with("url: URLs may not carry credentials"));
    }

    #[test]
    fn ip_literals_that_the_address_policy_refuses_are_refused_naming_the_range() {
        let refused = [
            ("https://169.254.169.254/latest/meta-data/", "link-local (169.254.0.0/16)"),
            ("https://[::ffff:127.0.0.1]/", "IPv4-mapped (::ffff:0:0/96) of 127.0.0.1, loopback (127.0.0.0/8)"),
            ("http://2130706433/", "loopback (127.0.0.0/8)"),
            ("http://0177.0.0.1/", "loopback (127.0.0.0/8)"),
            ("http://0x7f.0.0.1/", "loopback (127.0.0.0/8)"),
            ("http://0x7f000001/", "loopback (127.0.0.0/8)"),
            ("http://127.1/", "loopback (127.0.0.0/8)"),
            ("https://0251.0376.0251.0376/", "link-local (169.254.0.0/16)"),
            ("https://10.1/", "private (10.0.0.0/8)"),
            ("https://192.168.0.1:8443/", "private (192.168.0.0/16)"),
            ("https://100.64.0.1/", "carrier-grade NAT (100.64.0.0/10)"),
            ("https://0.0.0.0/", "\"this network\" (0.0.0.0/8)"),
            ("https://[::1]/", "loopback (::1)"),
            ("https://[::]/", "unspecified (::)"),
            ("https://[64:ff9b::10.0.0.1]/", "NAT64 (64:ff9b::/96) of 10.0.0.1, private (10.0.0.0/8)"),
            ("https://[64:ff9b::a9fe:a9fe]/", "NAT64 (64:ff9b::/96) of 169.254.169.254, link-local (169.254.0.0/16)"),
            ("https://[2002:c0a8:101::1]/", "6to4 (2002::/16) of 192.168.1.1, private (192.168.0.0/16)"),
            ("https://[2002:7f00:1::]/", "6to4 (2002::/16) of 127.0.0.1, loopback (127.0.0.0/8)"),
            ("https://[fd12:3456::1]/", "unique local (fc00::/7)"),
            ("https://[fc00::1]/", "unique local (fc00::/7)"),
            ("https://[fe80::1]/", "link-local (fe80::/10)"),
            ("https://[ff02::1]/", "multicast (ff00::/8)"),
            ("https://[2001:db8::1]/", "documentation (2001:db8::/32)"),
        ];
        let strict = rules(true);
        for (url, range) in refused {
            let error = endpoint_url(url, true, &strict).unwrap_err();
            assert!(matches!(error, Error::InvalidArgument { .. }), "{url}: {error:?}");
            let text = error.to_string();
            assert!(text.starts_with("url: host "), "{url}: {text}");
            assert!(text.contains(&format!(" is in {range}, ")), "{url}: {text}");
            assert!(text.contains("--allowed-cidrs"), "{url}: {text}");
        }
        for url in
            ["https://8.8.8.8/", "https://[2606:4700::1111]/", "https://[64:ff9b::808:808]/", "https://example.com/"]
        {
            endpoint_url(url, false, &strict).unwrap_or_else(|error| panic!("{url}: {error}"));
        }
        // Control's --allowed-cidrs opens its ranges, embedded forms included; names are checked at delivery time.
        let open =
            UrlRules { allow_insecure: true, addresses: AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]) };
        for url in ["http://127.0.0.1:9000/", "http://2130706433/", "http://[::ffff:127.0.0.1]/", "http://localhost/"] {
            endpoint_url(url, true, &open).unwrap_or_else(|error| panic!("{url}: {error}"));
        }
        assert!(endpoint_url("http://10.0.0.1/", true, &open).is_err());
        // Updates obey the same rule, when the change is applied.
        let mut endpoint = pb::Endpoint { url: "https://example.com/".into(), ..Default::default() };
        let update = pb::UpdateEndpointRequest {
            id: EndpointId::generate().to_string(),
            url: Some("https://169.254.169.254/".into()),
            ..Default::default()
        };
        let (_, change) = endpoint_update(update, &strict).unwrap();
        assert!(message(change(&mut endpoint).map(|_| ())).contains("link-local (169.254.0.0/16)"));
        assert_eq!(endpoint.url, "https://example.com/");
    }

    #[test]
    fn endpoint_fields_are_checked_with_their_names() {
        let cases: Vec<(pb::CreateEndpointRequest, &str)> = vec![
            (pb::CreateEndpointRequest { owner_id: "Acme".into(), ..create_request() }, "owner_id: "),
            (
                pb::CreateEndpointRequest {
                    headers: HashMap::from([("webhook-id".into(), "x".into())]),
                    ..create_request()
                },
                "headers[\"webhook-id\"]: ",
            ),
            (
                pb::CreateEndpointRequest {
                    retry_policy: Some(pb::RetryPolicy { schedule_ms: vec![10, 0] }),
                    ..create_request()
                },
                "retry_policy.schedule_ms[1]: ",
            ),
            (pb::CreateEndpointRequest { max_in_flight: 5000, ..create_request() }, "max_in_flight: "),
            (pb::CreateEndpointRequest { timeout_ms: 600_000, ..create_request() }, "timeout_ms: "),
            (
                pb::CreateEndpointRequest {
                    rate_limit: Some(pb::RateLimit { limit: 0, period: pb::RateLimitPeriod::Second as i32 }),
                    ..create_request()
                },
                "rate_limit.limit: ",
            ),
            (
                pb::CreateEndpointRequest {
                    rate_limit: Some(pb::RateLimit { limit: 5, period: 0 }),
                    ..create_request()
                },
                "rate_limit.period: ",
            ),
            (pb::CreateEndpointRequest { description: "d".repeat(2000), ..create_request() }, "description: "),
        ];
        for (request, prefix) in cases {
            let text = message(new_endpoint(request, &rules(false), 0));
            assert!(text.starts_with(prefix), "{text} should start with {prefix}");
        }
    }

    #[test]
    fn updates_change_only_what_is_set() {
        let (stored, _) = new_endpoint(create_request(), &rules(false), 0).unwrap();
        let mut endpoint = stored.endpoint.unwrap();
        let before = endpoint.clone();
        let request = pb::UpdateEndpointRequest {
            id: endpoint.id.clone(),
            description: Some("new".into()),
            max_in_flight: Some(4),
            ..Default::default()
        };
        let (_, change) = endpoint_update(request, &rules(false)).unwrap();
        change(&mut endpoint).unwrap();
        assert_eq!(endpoint.description, "new");
        assert_eq!(endpoint.max_in_flight, 4);
        assert_eq!((endpoint.url.as_str(), &endpoint.filter_types), (before.url.as_str(), &before.filter_types));

        // Turning insecure on for an http URL is refused when control does not permit it.
        let request = pb::UpdateEndpointRequest {
            id: endpoint.id.clone(),
            url: Some("http://example.com/".into()),
            insecure: Some(true),
            ..Default::default()
        };
        let (_, change) = endpoint_update(request, &rules(false)).unwrap();
        assert!(message(change(&mut endpoint).map(|_| ())).contains("not permitted"));

        let both = pb::UpdateEndpointRequest {
            id: endpoint.id.clone(),
            rate_limit: Some(pb::RateLimit { limit: 1, period: 1 }),
            clear_rate_limit: true,
            ..Default::default()
        };
        assert!(message(endpoint_update(both, &rules(false)).map(|_| ())).starts_with("clear_rate_limit: "));
        let bad_id = pb::UpdateEndpointRequest { id: "ep_nope".into(), ..Default::default() };
        assert!(
            message(endpoint_update(bad_id, &rules(false)).map(|_| ()))
                .starts_with("id: \"ep_nope\" is not a valid endpoint id")
        );
    }

    #[test]
    fn disabling_records_a_reason() {
        let id = EndpointId::generate().to_string();
        let mut endpoint = pb::Endpoint { enabled: true, ..Default::default() };
        let (_, change) =
            disable_endpoint(pb::DisableEndpointRequest { id: id.clone(), reason: String::new() }).unwrap();
        change(&mut endpoint).unwrap();
        assert!(!endpoint.enabled);
        assert_eq!(endpoint.disabled_reason, "disabled by an administrator");
        let (_, change) = enable_endpoint(pb::EnableEndpointRequest { id }).unwrap();
        change(&mut endpoint).unwrap();
        assert!(endpoint.enabled && endpoint.disabled_reason.is_empty());
    }

    #[test]
    fn rotations_default_to_a_day_and_are_bounded() {
        let id = EndpointId::generate().to_string();
        let request = |overlap_seconds| pb::RotateEndpointSecretRequest { id: id.clone(), overlap_seconds };
        assert_eq!(rotation(request(0)).unwrap().1, Duration::from_secs(86_400));
        assert_eq!(rotation(request(5)).unwrap().1, Duration::from_secs(5));
        assert_eq!(rotation(request(30 * 86_400)).unwrap().1, MAX_ROTATION_OVERLAP);
        assert_eq!(
            message(rotation(request(30 * 86_400 + 1))),
            "overlap_seconds: at most 2592000 (30 days), got 2592001"
        );
        let bad = pb::RotateEndpointSecretRequest { id: "ep_x".into(), overlap_seconds: 0 };
        assert!(message(rotation(bad)).starts_with("id: "));
    }

    #[test]
    fn a_verified_update_refuses_a_url_changed_meanwhile() {
        let mut endpoint = pb::Endpoint { url: "https://b.example/".into(), ..Default::default() };
        let change = keep_verified_url(Box::new(|_| Ok(())), "https://a.example/".into());
        assert!(matches!(change(&mut endpoint), Err(Error::FailedPrecondition(_))));
        let change = keep_verified_url(
            Box::new(|endpoint| {
                endpoint.url = "https://a.example/".into();
                Ok(())
            }),
            "https://a.example/".into(),
        );
        change(&mut endpoint).unwrap();
    }

    #[test]
    fn pages() {
        assert_eq!(page(0, "").unwrap(), PageRequest { size: 20, after: None });
        assert_eq!(page(5, "acme").unwrap(), PageRequest { size: 5, after: Some("acme".into()) });
        assert_eq!(message(page(101, "")), "page_size: at most 100, got 101");
    }

    fn report(report_id: &str, delivery_id: &str, number: u32) -> pb::AttemptReport {
        pb::AttemptReport {
            report_id: report_id.into(),
            delivery: Some(pb::Delivery { id: delivery_id.into(), ..Default::default() }),
            attempt: Some(pb::Attempt { number, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn reports_are_checked_one_by_one() {
        let good = report(&ReportId::generate().to_string(), &DeliveryId::generate().to_string(), 1);
        let request = |reports| pb::ReportAttemptsRequest { node_name: "node-1".into(), reports };
        let (node, checked, rejected) = reports(request(vec![good.clone()])).unwrap();
        assert_eq!(node, "node-1");
        assert_eq!(checked[0].attempt.as_ref().unwrap().delivery_id, checked[0].delivery_id.as_str());
        assert!(rejected.is_empty());

        // Malformed reports are set aside with their reason; the good ones around them are kept.
        let bad_id = report("rpt_1", &DeliveryId::generate().to_string(), 1);
        let bad_delivery = report(&ReportId::generate().to_string(), "dlv_x", 1);
        let zero = report(&ReportId::generate().to_string(), &DeliveryId::generate().to_string(), 0);
        let (_, checked, rejected) =
            reports(request(vec![bad_id, good.clone(), bad_delivery, zero, good.clone()])).unwrap();
        assert_eq!(checked.len(), 2);
        let reasons: Vec<(u32, &str)> = rejected.iter().map(|r| (r.index, r.reason.as_str())).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].0 == 0 && reasons[0].1.starts_with("reports[0].report_id: "), "{reasons:?}");
        assert!(reasons[1].0 == 2 && reasons[1].1.starts_with("reports[2].delivery.id: "), "{reasons:?}");
        assert_eq!(reasons[2], (3, "reports[3].attempt.number: attempts are numbered from 1"));
        let too_many = vec![good.clone(); MAX_REPORTS_PER_CALL + 1];
        assert_eq!(message(reports(request(too_many))), "reports: at most 1000 reports per call, got 1001");
        let anonymous = pb::ReportAttemptsRequest { node_name: String::new(), reports: vec![good] };
        assert!(message(reports(anonymous)).starts_with("node_name: "));
    }

    #[test]
    fn delivery_queries() {
        let endpoint = EndpointId::generate();
        let query = delivery_query(pb::ListDeliveriesRequest {
            endpoint_id: endpoint.to_string(),
            status: pb::DeliveryStatus::Failed as i32,
            created_after: Some(to_timestamp(5_000)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(query.endpoint_id, Some(endpoint));
        assert_eq!(query.status, Some(pb::DeliveryStatus::Failed as i32));
        assert_eq!((query.created_after_ms, query.created_before_ms, query.page_size), (Some(5_000), None, 20));

        let bad = |request| message(delivery_query(request));
        assert!(bad(pb::ListDeliveriesRequest { status: 42, ..Default::default() }).starts_with("status: "));
        assert!(
            bad(pb::ListDeliveriesRequest { page_token: "x".into(), ..Default::default() }).starts_with("page_token: ")
        );
        assert!(
            bad(pb::ListDeliveriesRequest { endpoint_id: "x".into(), ..Default::default() })
                .starts_with("endpoint_id: ")
        );
        assert_eq!(
            bad(pb::ListDeliveriesRequest { page_size: 101, ..Default::default() }),
            "page_size: at most 100, got 101"
        );
    }
}
