//! An endpoint URL whose host is an IP literal that control's address policy refuses is refused when it is created
//! or changed (INVALID_ARGUMENT naming the range), in every spelling the URL parser normalises; a range opened by
//! control's `--allowed-cidrs` passes, and names pass (they are checked when they are resolved, at delivery time).

use hookrelay_common::proto::v1::{GetEndpointRequest, UpdateEndpointRequest};
use hookrelay_tests::{EndpointSpec, Stack};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_ip_literals_are_refused_at_creation_naming_the_range() {
    // The harness's control allows 127.0.0.0/8 and ::1 (its test receivers), as its agents do.
    let stack = Stack::start().await;
    let mut fixture = stack.fixture;
    let refused = [
        ("https://169.254.169.254/latest/meta-data/", "link-local (169.254.0.0/16)"),
        ("http://0xa9fea9fe/", "link-local (169.254.0.0/16)"),
        ("http://0251.0376.0251.0376/", "link-local (169.254.0.0/16)"),
        ("http://167772161/", "private (10.0.0.0/8)"),
        ("https://[::ffff:10.0.0.1]/", "IPv4-mapped (::ffff:0:0/96) of 10.0.0.1, private (10.0.0.0/8)"),
        ("https://[64:ff9b::a9fe:a9fe]/", "NAT64 (64:ff9b::/96) of 169.254.169.254, link-local (169.254.0.0/16)"),
        ("https://[2002:c0a8:101::]/", "6to4 (2002::/16) of 192.168.1.1, private (192.168.0.0/16)"),
        ("https://[fd00::1]/", "unique local (fc00::/7)"),
        ("https://[fe80::1]/", "link-local (fe80::/10)"),
    ];
    for (url, range) in refused {
        let status =
            fixture.admin.create_endpoint(fixture.endpoint_request(&EndpointSpec::new(url))).await.expect_err(url);
        assert_eq!(status.code(), Code::InvalidArgument, "{url}: {status:?}");
        assert!(status.message().starts_with("url: host "), "{url}: {}", status.message());
        assert!(status.message().contains(&format!("is in {range}, ")), "{url}: {}", status.message());
        assert!(status.message().contains("--allowed-cidrs"), "{url}: {}", status.message());
    }

    // What control's --allowed-cidrs opens passes, stored in its normal form; so does a name.
    let (loopback, _) = fixture.create_endpoint(EndpointSpec::new("http://2130706433:9/hook")).await;
    assert_eq!(loopback.url, "http://127.0.0.1:9/hook");
    let (named, _) = fixture.create_endpoint(EndpointSpec::new("https://metadata.example/hook")).await;

    // An update to a refused literal changes nothing.
    let update = UpdateEndpointRequest {
        id: named.id.clone(),
        url: Some("https://[::ffff:169.254.169.254]/".into()),
        ..Default::default()
    };
    let status = fixture.admin.update_endpoint(update).await.expect_err("the update must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("of 169.254.169.254, link-local (169.254.0.0/16)"), "{}", status.message());
    let kept = fixture.admin.get_endpoint(GetEndpointRequest { id: named.id.clone() }).await.expect("GetEndpoint");
    assert_eq!(kept.into_inner().url, "https://metadata.example/hook");

    let listed = fixture.list_endpoints().await;
    assert_eq!(listed.len(), 2, "only the two accepted endpoints exist: {listed:?}");
}
