//! The outbound policy end to end as an endpoint URL meets it: every spelling of a refused address (decimal, octal,
//! hex and short IPv4 forms, IPv6 forms embedding IPv4) normalises to an address the policy refuses, global
//! addresses pass, and property tests check that no input makes validation or classification panic.

use std::net::IpAddr;

use hookrelay_common::net_policy::{AddressPolicy, non_global_reason};
use hookrelay_common::url_policy::{redact, validate_endpoint_url};
use proptest::prelude::*;
use url::Host;

/// The address an endpoint URL would connect to, when its host is an IP literal after normalisation.
fn literal(url: &str) -> IpAddr {
    let parsed = validate_endpoint_url(url, true).unwrap_or_else(|error| panic!("{url}: {error}"));
    match parsed.host() {
        Some(Host::Ipv4(ip)) => ip.into(),
        Some(Host::Ipv6(ip)) => ip.into(),
        other => panic!("{url} has no IP literal host: {other:?}"),
    }
}

#[test]
fn refused_address_spellings_in_urls() {
    let refused = [
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.0.0.1/",
        "http://0x7f000001/",
        "http://017700000001/",
        "http://127.1/",
        "http://127.0.1/",
        "http://0/",
        "http://0.0.0.0/",
        "http://10.1/",
        "http://167772161/",
        "http://0xa9fea9fe/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0251.0376.0251.0376/",
        "http://192.168.0.1:8080/",
        "http://3232235521/",
        "http://0xc0.0xa8.0.1/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",
        "http://198.18.0.1/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://[::1]/",
        "http://[::]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[0:0:0:0:0:ffff:a9fe:a9fe]/",
        "http://[64:ff9b::127.0.0.1]/",
        "http://[2002:7f00:1::]/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[ff02::1]/",
        "http://[2001:db8::1]/",
        "https://[::127.0.0.1]/",
    ];
    let policy = AddressPolicy::default();
    for url in refused {
        let address = literal(url);
        let refusal = policy.check(address).expect_err(url);
        assert!(!refusal.reason.is_empty(), "{url}");
        assert!(refusal.to_string().contains("refused"), "{url}: {refusal}");
    }
    let allowed = ["https://8.8.8.8/", "https://134744072/", "https://[2606:4700::1111]/", "https://1.1.1.1:8443/x"];
    for url in allowed {
        policy.check(literal(url)).unwrap_or_else(|refusal| panic!("{url}: {refusal}"));
    }
}

#[test]
fn allowlisted_ranges_open_only_themselves() {
    let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
    policy.check(literal("http://2130706433/")).unwrap();
    policy.check(literal("http://[::ffff:127.0.0.1]/")).unwrap();
    policy.check(literal("http://[::1]/")).unwrap();
    assert!(policy.check(literal("http://10.0.0.1/")).is_err());
    assert!(policy.check(literal("http://[fd00::1]/")).is_err());
}

proptest! {
    #[test]
    fn url_validation_never_panics_and_redaction_hides_queries(text in ".{0,200}", secret in "[a-z0-9]{8,16}") {
        let _ = validate_endpoint_url(&text, true);
        let _ = validate_endpoint_url(&text, false);
        let with_query = format!("https://example.com/{text}?token={secret}");
        prop_assert!(!redact(&with_query).contains(&secret));
    }

    #[test]
    fn classification_agrees_with_the_policy(v4 in any::<[u8; 4]>(), v6 in any::<[u8; 16]>()) {
        let policy = AddressPolicy::default();
        for address in [IpAddr::from(v4), IpAddr::from(v6)] {
            prop_assert_eq!(non_global_reason(address).is_some(), policy.check(address).is_err());
        }
    }

    #[test]
    fn ip_urls_round_trip_through_validation(v4 in any::<[u8; 4]>()) {
        let address = IpAddr::from(v4);
        let url = format!("http://{address}/hook");
        prop_assert_eq!(literal(&url), address);
    }
}
