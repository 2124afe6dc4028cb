//! Reading a hookrelay process's `/metrics` the way Prometheus does (HTTP/1.1 on the given address) and parsing the
//! OpenMetrics text it answers; shared by the ops tests of both binaries.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::DEADLINE;

/// One scrape: the samples by series (`name{labels}` as written) and the declared type of each family.
#[derive(Debug)]
pub struct Scrape {
    pub samples: HashMap<String, f64>,
    pub types: HashMap<String, String>,
}

impl Scrape {
    /// The value of `series`; panics naming the series present when it is missing.
    pub fn value(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("{series} missing from {:?}", self.samples.keys()))
    }

    /// Parses an OpenMetrics text exposition, checking that it ends with `# EOF` and names no series twice.
    pub fn parse(text: &str) -> Self {
        assert!(text.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF: {text}");
        let mut samples = HashMap::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if let Some(declaration) = line.strip_prefix("# TYPE ") {
                let (family, kind) = declaration.split_once(' ').expect("# TYPE name kind");
                types.insert(family.to_owned(), kind.to_owned());
            } else if !line.starts_with('#') {
                // Label values here never hold spaces, so the value is after the last space.
                let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
                assert!(samples.insert(series.to_owned(), value).is_none(), "{series} twice");
            }
        }
        Self { samples, types }
    }
}

/// Scrapes `/metrics` at `addr` (`host:port`), asserting a 200 with the OpenMetrics content type.
pub fn scrape(addr: &str) -> Scrape {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|error| panic!("connect to {addr}: {error}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set a read timeout");
    write!(stream, "GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    Scrape::parse(body)
}

/// Scrapes until `ready` holds, for at most [`DEADLINE`]; `what` names the wait in the failure message.
pub async fn scrape_until(addr: &str, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let scraped = scrape(addr);
        if ready(&scraped) {
            return scraped;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", scraped.samples);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
