//! Rules for endpoint URLs (https only unless insecure is allowed, no userinfo or fragment, a host, at most 2048
//! characters, IDN normalised) and a redacted form for logs and errors that never shows the query string.

use url::Url;

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
    /// A scheme other than https (or http where allowed).
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
    /// No host.
    #[error("URL has no host")]
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
        other => return Err(UrlError::Scheme(other.to_owned())),
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
    fn redaction_hides_the_query() {
        assert_eq!(redact("https://h/p?token=secret"), "https://h/p?[redacted]");
        assert_eq!(redact("https://h/p"), "https://h/p");
    }
}
