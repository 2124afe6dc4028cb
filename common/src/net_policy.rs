//! Which addresses deliveries may connect to. Anything not globally routable is refused (private, loopback,
//! link-local, CGNAT, multicast, reserved, documentation ranges, and IPv6 forms that embed such an IPv4 address)
//! unless an operator allowed its range. Callers check the exact address they then connect to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Env var of `--allowed-cidrs`, in the agent (deliveries) and in control (verification challenges) alike.
pub const ENV_ALLOWED_CIDRS: &str = "HOOKRELAY_ALLOWED_CIDRS";

/// An address that deliveries may not reach, with the reason.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("address {address} is refused: {reason} (allow its range in the agent's allowed_cidrs to deliver there)")]
pub struct AddressRefused {
    /// The refused address.
    pub address: IpAddr,
    /// Which range it falls in.
    pub reason: &'static str,
}

/// The outbound address policy: refuse non-global addresses except those in `allowed`.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// A policy that opens the given ranges on top of the global internet.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// The ranges opened by the operator.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Whether a connection to `address` may be made.
    pub fn check(&self, address: IpAddr) -> Result<(), AddressRefused> {
        let embedded = match address {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let is_allowed = |ip: IpAddr| self.allowed.iter().any(|net| net.contains(&ip));
        if is_allowed(address) || embedded.is_some_and(is_allowed) {
            return Ok(());
        }
        match non_global_reason(address) {
            Some(reason) => Err(AddressRefused { address, reason }),
            None => Ok(()),
        }
    }
}

/// Why `address` is not globally routable, or `None` when it is.
pub fn non_global_reason(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => ipv4_reason(v4),
        IpAddr::V6(v6) => ipv6_reason(v6),
    }
}

fn in_v4(address: Ipv4Addr, network: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    u32::from(address) & mask == u32::from(Ipv4Addr::from(network)) & mask
}

fn ipv4_reason(address: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "\"this network\" (0.0.0.0/8)"),
        ([10, 0, 0, 0], 8, "private (10.0.0.0/8)"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT (100.64.0.0/10)"),
        ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
        ([169, 254, 0, 0], 16, "link-local (169.254.0.0/16)"),
        ([172, 16, 0, 0], 12, "private (172.16.0.0/12)"),
        ([192, 0, 0, 0], 24, "IETF protocol assignments (192.0.0.0/24)"),
        ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
        ([192, 31, 196, 0], 24, "AS112 (192.31.196.0/24)"),
        ([192, 52, 193, 0], 24, "AMT (192.52.193.0/24)"),
        ([192, 88, 99, 0], 24, "6to4 relay anycast (192.88.99.0/24)"),
        ([192, 168, 0, 0], 16, "private (192.168.0.0/16)"),
        ([192, 175, 48, 0], 24, "AS112 (192.175.48.0/24)"),
        ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
        ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
        ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
        ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
        ([255, 255, 255, 255], 32, "broadcast (255.255.255.255)"),
        ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4)"),
    ];
    RANGES.iter().find(|(network, prefix, _)| in_v4(address, *network, *prefix)).map(|(_, _, reason)| *reason)
}

/// The IPv4 address an IPv6 address carries in a mapped, compatible, NAT64 or 6to4 form.
fn embedded_ipv4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    embedding(address).map(|(v4, _)| v4)
}

/// The IPv6 forms that carry an IPv4 address.
#[derive(Clone, Copy)]
enum Form {
    Mapped,
    Compatible,
    Nat64,
    SixToFour,
}

impl Form {
    fn range(self) -> &'static str {
        match self {
            Self::Mapped => "IPv4-mapped (::ffff:0:0/96)",
            Self::Compatible => "IPv4-compatible (::/96)",
            Self::Nat64 => "NAT64 (64:ff9b::/96)",
            Self::SixToFour => "6to4 (2002::/16)",
        }
    }

    /// The refusal reason of this form of a refused IPv4 address.
    fn reason(self) -> &'static str {
        match self {
            Self::Mapped => "IPv4-mapped (::ffff:0:0/96) IPv6 form of a refused IPv4 address",
            Self::Compatible => "IPv4-compatible (::/96) IPv6 form of a refused IPv4 address",
            Self::Nat64 => "NAT64 (64:ff9b::/96) IPv6 form of a refused IPv4 address",
            Self::SixToFour => "6to4 (2002::/16) IPv6 form of a refused IPv4 address",
        }
    }
}

/// The embedded IPv4 address and the form that carries it.
fn embedding(address: Ipv6Addr) -> Option<(Ipv4Addr, Form)> {
    let segments = address.segments();
    let octets = address.octets();
    let tail = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    match segments {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some((tail, Form::Mapped)),
        // :: and ::1 are classified on their own.
        [0, 0, 0, 0, 0, 0, _, _] if u128::from(address) > 1 => Some((tail, Form::Compatible)),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some((tail, Form::Nat64)),
        // 2002:AABB:CCDD::/48.
        [0x2002, high, low, ..] => Some((Ipv4Addr::from((u32::from(high) << 16) | u32::from(low)), Form::SixToFour)),
        _ => None,
    }
}

/// Why `address` is refused by default, in full: [`non_global_reason`], except that an IPv6 form of a refused IPv4
/// address also names that address and its range, e.g. `NAT64 (64:ff9b::/96) of 10.0.0.1, private (10.0.0.0/8)`.
pub fn describe_refusal(address: IpAddr) -> Option<String> {
    if let IpAddr::V6(v6) = address
        && let Some((v4, form)) = embedding(v6)
    {
        return ipv4_reason(v4).map(|reason| format!("{} of {v4}, {reason}", form.range()));
    }
    non_global_reason(address).map(str::to_owned)
}

fn in_v6(address: Ipv6Addr, network: u128, prefix: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
    u128::from(address) & mask == network & mask
}

fn ipv6_reason(address: Ipv6Addr) -> Option<&'static str> {
    if address.is_unspecified() {
        return Some("unspecified (::)");
    }
    if address.is_loopback() {
        return Some("loopback (::1)");
    }
    if let Some((v4, form)) = embedding(address) {
        return ipv4_reason(v4).map(|_| form.reason());
    }
    const RANGES: &[(u128, u32, &str)] = &[
        (0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48, "local-use NAT64 (64:ff9b:1::/48)"),
        (0x0100_0000_0000_0000_0000_0000_0000_0000, 64, "discard-only (100::/64)"),
        (0x2001_0000_0000_0000_0000_0000_0000_0000, 32, "Teredo (2001::/32)"),
        (0x2001_0002_0000_0000_0000_0000_0000_0000, 48, "benchmarking (2001:2::/48)"),
        (0x2001_0010_0000_0000_0000_0000_0000_0000, 28, "ORCHID (2001:10::/28)"),
        (0x2001_0020_0000_0000_0000_0000_0000_0000, 28, "ORCHIDv2 (2001:20::/28)"),
        (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32, "documentation (2001:db8::/32)"),
        (0x3fff_0000_0000_0000_0000_0000_0000_0000, 20, "documentation (3fff::/20)"),
        (0x5f00_0000_0000_0000_0000_0000_0000_0000, 16, "segment routing (5f00::/16)"),
        (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7, "unique local (fc00::/7)"),
        (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10, "link-local (fe80::/10)"),
        (0xfec0_0000_0000_0000_0000_0000_0000_0000, 10, "site-local (fec0::/10)"),
        (0xff00_0000_0000_0000_0000_0000_0000_0000, 8, "multicast (ff00::/8)"),
    ];
    if let Some((_, _, reason)) = RANGES.iter().find(|(network, prefix, _)| in_v6(address, *network, *prefix)) {
        return Some(reason);
    }
    // Only 2000::/3 is allocated as global unicast.
    if !in_v6(address, 0x2000_0000_0000_0000_0000_0000_0000_0000, 3) {
        return Some("not global unicast (outside 2000::/3)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(address: &str) -> bool {
        AddressPolicy::default().check(address.parse().unwrap()).is_err()
    }

    #[test]
    fn refuses_non_global_addresses() {
        for address in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
            "2001::1",
            "64:ff9b:1::1",
        ] {
            assert!(refused(address), "{address} should be refused");
        }
    }

    #[test]
    fn accepts_global_addresses() {
        for address in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!refused(address), "{address} should be accepted");
        }
    }

    #[test]
    fn refusals_name_the_range_and_the_embedded_address() {
        let describe = |address: &str| describe_refusal(address.parse().unwrap());
        assert_eq!(describe("169.254.169.254").as_deref(), Some("link-local (169.254.0.0/16)"));
        assert_eq!(describe("fd00::1").as_deref(), Some("unique local (fc00::/7)"));
        assert_eq!(
            describe("::ffff:127.0.0.1").as_deref(),
            Some("IPv4-mapped (::ffff:0:0/96) of 127.0.0.1, loopback (127.0.0.0/8)")
        );
        assert_eq!(
            describe("64:ff9b::10.0.0.1").as_deref(),
            Some("NAT64 (64:ff9b::/96) of 10.0.0.1, private (10.0.0.0/8)")
        );
        assert_eq!(
            describe("2002:c0a8:101::1").as_deref(),
            Some("6to4 (2002::/16) of 192.168.1.1, private (192.168.0.0/16)")
        );
        assert_eq!(describe("8.8.8.8"), None);
        assert_eq!(describe("64:ff9b::808:808"), None);
    }

    #[test]
    fn allowlist_opens_chosen_ranges_including_embedded_forms() {
        let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        policy.check("127.0.0.1".parse().unwrap()).unwrap();
        policy.check("::ffff:127.0.0.1".parse().unwrap()).unwrap();
        let refusal = policy.check("10.0.0.1".parse().unwrap()).unwrap_err();
        assert_eq!(refusal.reason, "private (10.0.0.0/8)");
        assert!(policy.check("::1".parse().unwrap()).is_err());
    }
}
