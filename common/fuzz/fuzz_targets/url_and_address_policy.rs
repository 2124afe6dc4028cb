//! URL validation and SSRF address classification on hostile input.
//!
//! Input layout: the first byte picks the mode; the rest is either a URL string or raw address bytes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hookrelay_common::net_policy::{AddressPolicy, non_global_reason};
use hookrelay_common::url_policy::{MAX_URL_LEN, redact, validate_endpoint_url};
use libfuzzer_sys::fuzz_target;
use url::{Host, Position};

/// `check` with no allowlist refuses exactly what `non_global_reason` names, with that reason.
fn check_address(address: IpAddr) {
    let reason = non_global_reason(address);
    match AddressPolicy::default().check(address) {
        Ok(()) => assert!(reason.is_none(), "{address} passed the policy but non_global_reason says {reason:?}"),
        Err(refused) => {
            assert!(!refused.reason.is_empty(), "{address} refused with an empty reason");
            assert_eq!(refused.address, address);
            assert_eq!(Some(refused.reason), reason, "{address}: check and non_global_reason disagree");
        }
    }
    // An IPv4 address and its IPv4-mapped IPv6 form get the same verdict.
    if let IpAddr::V4(v4) = address {
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        assert_eq!(AddressPolicy::default().check(mapped).is_ok(), reason.is_none(), "{address} and {mapped} disagree");
    }
}

/// `redact` keeps everything before the first '?' and nothing after it.
fn check_redact(text: &str) {
    let redacted = redact(text);
    if let Some((before, _)) = text.split_once('?') {
        assert_eq!(redacted, format!("{before}?[redacted]"), "redact({text:?}) leaks the query");
    } else {
        assert!(text.starts_with(&redacted), "redact({text:?}) = {redacted:?} is not a prefix");
    }
}

fn check_url(raw: &str, allow_http: bool) {
    check_redact(raw);
    let Ok(url) = validate_endpoint_url(raw, allow_http) else { return };
    assert!(url.scheme() == "https" || (allow_http && url.scheme() == "http"), "scheme {} got through", url.scheme());
    assert!(url.username().is_empty() && url.password().is_none(), "userinfo got through: {url}");
    assert!(url.fragment().is_none(), "fragment got through: {url}");
    assert!(url.as_str().len() <= MAX_URL_LEN, "over-long URL got through");
    let host = url.host().expect("validated URL without a host");
    // Validating the normalised form again gives the same URL.
    let again = validate_endpoint_url(url.as_str(), allow_http).expect("normalised URL refused on a second pass");
    assert_eq!(again, url);
    // The redacted form never carries the query.
    let redacted = redact(url.as_str());
    if url.query().is_some() {
        // Exactly the part before the query, then the marker: no byte of the query survives. (A substring test
        // would be wrong: the query's text can also appear in the path.)
        assert_eq!(redacted, format!("{}?[redacted]", &url[..Position::AfterPath]), "redact leaks the query");
    } else {
        assert_eq!(redacted, url.as_str());
    }
    match host {
        Host::Ipv4(v4) => check_address(IpAddr::V4(v4)),
        Host::Ipv6(v6) => check_address(IpAddr::V6(v6)),
        Host::Domain(domain) => {
            // A domain that is really an IP literal must have been normalised to one by the parser.
            assert!(domain.parse::<Ipv4Addr>().is_err(), "IPv4 literal {domain:?} left as a domain");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 | 1 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                check_url(text, mode % 4 == 1);
            }
        }
        2 => {
            if let Ok(octets) = <[u8; 4]>::try_from(rest.get(..4).unwrap_or_default()) {
                check_address(IpAddr::V4(Ipv4Addr::from(octets)));
            }
        }
        _ => {
            if let Ok(octets) = <[u8; 16]>::try_from(rest.get(..16).unwrap_or_default()) {
                check_address(IpAddr::V6(Ipv6Addr::from(octets)));
            }
        }
    }
});
