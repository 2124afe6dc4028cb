//! Rules for endpoint URLs (https only unless insecure is allowed, no userinfo or fragment, a host, at most 2048
//! characters, IDN normalised), the IP literal a URL names, and a redacted form for logs and errors that never shows
//! the query string.

use std::net::IpAddr;

use url::{Host, Url};

use crate::model::shorten;

/// Longest endpoint URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Why an endpoint URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Longer than [`MAX_URL_LEN`].
    #[error("URL is {0} characters long, at most 2048 are allowed")]
    TooLong(usize),
    /// Not an absolute URL.
    #[error("not a valid absolute URL: {0}")]
    Malformed(String),
    /// A scheme other than https (or http where allowed); holds its first characters.
    #[error("scheme {0:?} is not allowed: use https")]
    Scheme(String),
    /// `http` asked for without the insecure flag, or control does not permit it.
    #[error("http URLs need the endpoint's insecure flag and a control that permits insecure endpoints")]
    Insecure,
    /// `user:password@` in the URL.
    #[error("URLs may not carry credentials (user:password@); use a custom header instead")]
    Userinfo,
    /// A `#fragment`, which is never sent.
    #[error("URLs may not have a fragment (#...)")]
    Fragment,
    /// No host, or none written where the parser would take the path for one (`https:///x` reads as host `x`).
    #[error("host is required: write the URL as https://host/path")]
    NoHost,
}

/// Parses and checks an endpoint URL. `allow_http` is true only when the endpoint asked for insecure delivery and
/// control permits it. The returned URL is normalised (IDN to punycode, IPv4 spellings to dotted decimal).
pub fn validate_endpoint_url(raw: &str, allow_http: bool) -> Result<Url, UrlError> {
    if raw.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong(raw.len()));
    }
    let url = Url::parse(raw.trim()).map_err(|error| UrlError::Malformed(error.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => return Err(UrlError::Insecure),
        other => return Err(UrlError::Scheme(shorten(other))),
    }
    if !writes_a_host(raw) {
        return Err(UrlError::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Userinfo);
    }
    if url.fragment().is_some() {
        return Err(UrlError::Fragment);
    }
    if url.host().is_none() {
        return Err(UrlError::NoHost);
    }
    if url.as_str().len() > MAX_URL_LEN {
        return Err(UrlError::TooLong(url.as_str().len()));
    }
    Ok(url)
}

/// Whether the text itself has `scheme://` and a non-empty host. The parser forgives http(s) URLs without one:
/// `https:///x`, `https:/x` and `https:x` all become `https://x/`, a host the user never wrote.
fn writes_a_host(raw: &str) -> bool {
    // The parser drops tabs and newlines anywhere and reads `\` as `/` in http(s) URLs; so does this check.
    let text: String = raw.trim().chars().filter(|c| !matches!(c, '\t' | '\n' | '\r')).collect();
    let Some((_, rest)) = text.split_once(':') else { return false };
    let mut chars = rest.chars();
    let slash = |c: Option<char>| matches!(c, Some('/' | '\\'));
    if !(slash(chars.next()) && slash(chars.next())) {
        return false;
    }
    let authority = chars.as_str().split(['/', '\\', '?', '#']).next().unwrap_or_default();
    let host_and_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if host_and_port.starts_with('[') {
        host_and_port
    } else {
        host_and_port.split(':').next().unwrap_or_default()
    };
    !host.is_empty()
}

/// The address a URL names when its host is an IP literal (after normalisation: `http://2130706433/` names
/// 127.0.0.1); `None` for a name, which only resolution turns into addresses.
pub fn ip_literal(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(address) => Some(address.into()),
        Host::Ipv6(address) => Some(address.into()),
        Host::Domain(_) => None,
    }
}

/// The URL for logs and errors: scheme, host, port and path, with any query replaced by `?[redacted]`.
pub fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((before, _)) => format!("{before}?[redacted]"),
        None => url.split('#').next().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_https_and_normalises() {
        let url = validate_endpoint_url("https://Bücher.example/hook?x=1", false).unwrap();
        assert_eq!(url.host_str(), Some("xn--bcher-kva.example"));
        let url = validate_endpoint_url("http://0x7f.1/hook", true).unwrap();
        assert_eq!(url.host_str(), Some("127.0.0.1"));
    }

    #[test]
    fn refuses_what_the_rules_forbid() {
        assert_eq!(validate_endpoint_url("http://example.com/", false), Err(UrlError::Insecure));
        assert_eq!(validate_endpoint_url("ftp://example.com/", true), Err(UrlError::Scheme("ftp".into())));
        assert_eq!(validate_endpoint_url("https://u:p@example.com/", false), Err(UrlError::Userinfo));
        assert_eq!(validate_endpoint_url("https://example.com/#x", false), Err(UrlError::Fragment));
        assert!(matches!(validate_endpoint_url("not a url", false), Err(UrlError::Malformed(_))));
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert!(matches!(validate_endpoint_url(&long, false), Err(UrlError::TooLong(_))));
        assert_eq!(validate_endpoint_url("file:///etc/passwd", true), Err(UrlError::Scheme("file".into())));
    }

    #[test]
    fn a_host_must_be_written() {
        for url in ["https:///nohost", "https:/nohost", "https:nohost", "https:\\\\\\nohost", "https://\t/nohost"] {
            assert_eq!(validate_endpoint_url(url, false), Err(UrlError::NoHost), "{url:?}");
        }
        assert_eq!(UrlError::NoHost.to_string(), "host is required: write the URL as https://host/path");
        for url in ["https://example.com", "https://example.com:8443/x", "https://[::1]:8443/", "  https://a.b/c?d#"] {
            let accepted = validate_endpoint_url(url, false);
            assert!(!matches!(accepted, Err(UrlError::NoHost)), "{url:?}: {accepted:?}");
        }
        let long_scheme = format!("{}://example.com/", "a".repeat(1000));
        let refused = validate_endpoint_url(&long_scheme, true).unwrap_err().to_string();
        assert!(refused.len() < 200, "{refused}");
    }

    #[test]
    fn ip_literals_are_normalised() {
        let literal = |url: &str| ip_literal(&validate_endpoint_url(url, true).unwrap());
        assert_eq!(literal("http://0x7f.0.0.1/"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(literal("http://[::ffff:127.0.0.1]/"), Some("::ffff:7f00:1".parse().unwrap()));
        assert_eq!(literal("https://example.com/"), None);
    }

    #[test]
    fn redaction_hides_the_query() {
        assert_eq!(redact("https://h/p?token=secret"), "https://h/p?[redacted]");
        assert_eq!(redact("https://h/p"), "https://h/p");
    }
}
