//! Which control replica to talk to. `--control-url` is one URL or several, comma-separated; each URL whose host is a
//! name stands for every address the name resolves to (a headless Service, say), so one name can be several
//! replicas too. The *targets* are these addresses, in URL order.
//!
//! A [`Rotation`] is one caller's position among the targets (the config stream and the report sender have one
//! each): it keeps to a target while it answers and moves to the next one when it does not. Names are resolved
//! again at the start of each round, so replicas that moved are found. Delays follow `Round`: the same jittered
//! delay before each target of a round, doubled after a round in which every target failed, back to the first once
//! one answers. A dead replica is therefore tried at most once per round, never in a tight loop.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::Uri;

use super::Backoff;
use super::channel::{ControlChannel, ControlLink};

/// How long resolving one name may take before the round goes on without it.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `--control-url` is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("no control URL given")]
    Empty,
    #[error("control URL {url:?} is not a URL: {reason}")]
    Invalid { url: String, reason: String },
    #[error("control URL {url:?} must start with http:// or https://")]
    Scheme { url: String },
    #[error("control URL {url:?} names no host")]
    NoHost { url: String },
}

/// One URL of `--control-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlUrl {
    /// As given (trimmed); what logs name.
    pub text: String,
    /// Parsed.
    pub uri: Uri,
    /// The host: an address, or a name to resolve.
    pub host: Host,
    /// The port, or the scheme's default.
    pub port: u16,
}

/// The host of a control URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Address(IpAddr),
    Name(String),
}

impl ControlUrl {
    /// True for `https://`.
    pub fn is_https(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }

    /// The addresses of this URL's replicas: its address, or what its name resolves to now (sorted, so that a
    /// resolver that shuffles its answers does not shuffle the rotation). Empty when resolving fails.
    pub async fn resolve(&self) -> Vec<SocketAddr> {
        let name = match &self.host {
            Host::Address(address) => return vec![SocketAddr::new(*address, self.port)],
            Host::Name(name) => name.as_str(),
        };
        let mut addresses: Vec<SocketAddr> =
            match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, self.port))).await {
                Ok(Ok(found)) => found.collect(),
                Ok(Err(error)) => {
                    tracing::warn!(url = %self.text, %error, "cannot resolve the control host");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!(url = %self.text, "resolving the control host timed out");
                    Vec::new()
                }
            };
        addresses.sort_unstable();
        addresses.dedup();
        addresses
    }
}

/// Parses `--control-url`: URLs separated by commas (blanks around them and empty items are ignored).
pub fn parse_urls(text: &str) -> Result<Vec<ControlUrl>, UrlError> {
    let urls = text.split(',').map(str::trim).filter(|url| !url.is_empty()).map(parse_url);
    let urls = urls.collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(UrlError::Empty);
    }
    Ok(urls)
}

fn parse_url(text: &str) -> Result<ControlUrl, UrlError> {
    let uri: Uri = text.parse().map_err(|error: http::uri::InvalidUri| UrlError::Invalid {
        url: text.to_owned(),
        reason: error.to_string(),
    })?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err(UrlError::Scheme { url: text.to_owned() }),
    };
    let host = match uri.host() {
        Some(host) if !host.is_empty() => host,
        _ => return Err(UrlError::NoHost { url: text.to_owned() }),
    };
    let host = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(address) => Host::Address(address),
        Err(_) => Host::Name(host.to_owned()),
    };
    let port = uri.port_u16().unwrap_or(default_port);
    Ok(ControlUrl { text: text.to_owned(), uri, host, port })
}

/// One replica: an address of one of the URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Index into the URLs.
    pub url: usize,
    pub address: SocketAddr,
}

/// The schedule of attempts over a list of targets: which target is next and how long to wait before it. Pure
/// state, so its rules are tested without a network.
#[derive(Debug)]
pub(crate) struct Round {
    targets: Vec<Target>,
    position: usize,
    /// Targets that failed since the round began (or since one answered).
    failures: usize,
    /// Resolve the URLs again before the next attempt.
    refresh: bool,
    /// The target that failed last, to continue after it in a new list.
    last_failed: Option<Target>,
    backoff: Backoff,
}

impl Round {
    /// A schedule that starts at target `start` (modulo the count) of the first list.
    pub(crate) fn new(start: usize) -> Self {
        Self {
            targets: Vec::new(),
            position: start,
            failures: 0,
            refresh: true,
            last_failed: None,
            backoff: Backoff::new(),
        }
    }

    /// True when the next attempt needs a fresh list of targets ([`Self::set_targets`]).
    pub(crate) fn needs_targets(&self) -> bool {
        self.refresh || self.targets.is_empty()
    }

    /// Installs a freshly resolved list; the next target is the one after the last failed one if it is still
    /// listed, else the same position as before.
    pub(crate) fn set_targets(&mut self, targets: Vec<Target>) {
        self.refresh = false;
        if targets.is_empty() {
            self.targets = targets;
            return;
        }
        self.position = match self.last_failed.and_then(|failed| targets.iter().position(|target| *target == failed)) {
            Some(index) => index + 1,
            None => self.position,
        } % targets.len();
        self.targets = targets;
    }

    /// The target to try now; `None` when no URL resolved.
    pub(crate) fn current(&self) -> Option<Target> {
        self.targets.get(self.position).copied()
    }

    /// The current target answered: stay on it, and the next failure waits the shortest delay.
    pub(crate) fn healthy(&mut self) {
        self.failures = 0;
        self.backoff.reset();
    }

    /// The current target failed (or no URL resolved): moves to the next and returns how long to wait first. A
    /// first failure after success, and a completed round, resolve the names again; a completed round doubles
    /// the delay.
    pub(crate) fn failed(&mut self) -> Duration {
        let delay = self.backoff.delay();
        if self.failures == 0 {
            self.refresh = true;
        }
        self.failures += 1;
        self.last_failed = self.current();
        if !self.targets.is_empty() {
            self.position = (self.position + 1) % self.targets.len();
        }
        if self.failures >= self.targets.len().max(1) {
            self.failures = 0;
            self.refresh = true;
            self.backoff.grow();
        }
        delay
    }
}

/// The replica a caller talks to: its channel and a name for logs.
#[derive(Debug, Clone)]
pub struct Replica {
    pub channel: ControlChannel,
    pub name: ReplicaName,
}

/// `url` for an address literal, `url (address)` for a name, so a log line says which of a name's addresses it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaName(String);

impl fmt::Display for ReplicaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One caller's position among the replicas; see the module doc.
pub struct Rotation {
    link: ControlLink,
    round: Round,
    current: Option<Replica>,
}

impl Rotation {
    /// A rotation over `link`'s URLs that starts at a random target, so agents spread over the replicas.
    pub fn new(link: ControlLink) -> Self {
        Self { link, round: Round::new(rand::random_range(0..1024)), current: None }
    }

    /// The replica to talk to: the one in use, else the next one of the round. Waits (with backoff) while no URL
    /// resolves. Cancel-safe.
    pub async fn replica(&mut self) -> Replica {
        if let Some(replica) = &self.current {
            return replica.clone();
        }
        loop {
            if self.round.needs_targets() {
                let mut targets = Vec::new();
                for (index, url) in self.link.urls().enumerate() {
                    targets.extend(url.resolve().await.into_iter().map(|address| Target { url: index, address }));
                }
                self.round.set_targets(targets);
            }
            if let Some(target) = self.round.current() {
                let replica = Replica { channel: self.link.channel(target), name: self.name(target) };
                self.current = Some(replica.clone());
                return replica;
            }
            let delay = self.round.failed();
            tracing::warn!(retry_in = ?delay, "no control URL resolves to an address");
            tokio::time::sleep(delay).await;
        }
    }

    /// The replica in use answered.
    pub fn healthy(&mut self) {
        self.round.healthy();
    }

    /// The replica in use failed: the next [`Self::replica`] is another one, after the returned delay.
    pub fn failed(&mut self) -> Duration {
        self.current = None;
        self.round.failed()
    }

    fn name(&self, target: Target) -> ReplicaName {
        let url = self.link.url(target);
        match url.host {
            Host::Address(_) => ReplicaName(url.text.clone()),
            Host::Name(_) => ReplicaName(format!("{} ({})", url.text, target.address)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_several_comma_separated() {
        let urls = parse_urls("http://127.0.0.1:7100").unwrap();
        assert_eq!(urls.len(), 1);
        assert_eq!((&urls[0].host, urls[0].port), (&Host::Address([127, 0, 0, 1].into()), 7100));

        let urls = parse_urls(" https://control-0.control:7100 , https://[::1]:7101,http://10.0.0.7, ").unwrap();
        let hosts: Vec<_> = urls.iter().map(|url| (url.host.clone(), url.port, url.is_https())).collect();
        assert_eq!(
            hosts,
            [
                (Host::Name("control-0.control".into()), 7100, true),
                (Host::Address("::1".parse().unwrap()), 7101, true),
                (Host::Address([10, 0, 0, 7].into()), 80, false),
            ]
        );
        assert_eq!(urls[0].text, "https://control-0.control:7100");
        assert_eq!(parse_urls("https://control").unwrap()[0].port, 443);
        assert_eq!(parse_urls("http://agent:pw@control:7100").unwrap()[0].host, Host::Name("control".into()));
    }

    #[test]
    fn bad_lists_are_refused_with_the_url_at_fault() {
        assert_eq!(parse_urls(""), Err(UrlError::Empty));
        assert_eq!(parse_urls(" , "), Err(UrlError::Empty));
        assert_eq!(parse_urls("http://a:7100,ftp://b"), Err(UrlError::Scheme { url: "ftp://b".into() }));
        assert_eq!(parse_urls("control:7100"), Err(UrlError::Scheme { url: "control:7100".into() }));
        assert!(matches!(parse_urls("http://a b"), Err(UrlError::Invalid { url, .. }) if url == "http://a b"));
        assert!(matches!(parse_urls("/just/a/path"), Err(UrlError::Scheme { .. })));
    }

    #[tokio::test]
    async fn addresses_stand_for_themselves_and_names_resolve() {
        let urls = parse_urls("http://127.0.0.2:7100,http://localhost:7101").unwrap();
        assert_eq!(urls[0].resolve().await, ["127.0.0.2:7100".parse().unwrap()]);
        let local = urls[1].resolve().await;
        assert!(local.contains(&"127.0.0.1:7101".parse().unwrap()), "{local:?}");
        assert!(parse_urls("http://no-such-host.invalid:7100").unwrap()[0].resolve().await.is_empty());
    }

    /// Over a real link: the first URL refuses connections, the second serves; whatever the random start, the
    /// rotation reaches the second within one round and stays there while it answers.
    #[tokio::test]
    async fn a_rotation_moves_past_a_dead_replica_and_stays_on_one_that_answers() {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let link = ControlLink::new(&format!("http://{dead},http://{live}"), &Default::default()).unwrap();
        let mut rotation = Rotation::new(link);
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            let replica = rotation.replica().await;
            let request = HealthCheckRequest { service: String::new() };
            match HealthClient::new(replica.channel).check(request).await {
                Ok(_) => {
                    rotation.healthy();
                    outcomes.push((replica.name.to_string(), true));
                }
                Err(_) => {
                    let delay = rotation.failed();
                    assert!(delay <= Duration::from_millis(120), "{delay:?}");
                    outcomes.push((replica.name.to_string(), false));
                }
            }
        }
        let (dead, live) = (format!("http://{dead}"), format!("http://{live}"));
        let expected = |start: &[(String, bool)]| {
            let mut expected = start.to_vec();
            expected.resize(4, (live.clone(), true));
            expected
        };
        assert!(
            outcomes == expected(&[]) || outcomes == expected(&[(dead.clone(), false)]),
            "{outcomes:?} (dead {dead}, live {live})"
        );
        server.abort();
    }

    fn targets(count: usize) -> Vec<Target> {
        (0..count).map(|n| Target { url: 0, address: SocketAddr::from(([127, 0, 0, 1], 7100 + n as u16)) }).collect()
    }

    /// The base `delay` was jittered from (the ±20% ranges of the bases do not overlap); 0 if none fits.
    fn ms(delay: Duration) -> u64 {
        let ms = delay.as_secs_f64() * 1000.0;
        let bases = [100, 200, 400, 800, 1600, 3200, 5000];
        bases.into_iter().find(|base| (*base as f64 * 0.8..=*base as f64 * 1.2).contains(&ms)).unwrap_or(0)
    }

    #[test]
    fn each_target_is_tried_once_a_round_and_full_rounds_back_off() {
        let mut round = Round::new(1);
        assert!(round.needs_targets());
        round.set_targets(targets(3));
        let port = |round: &Round| round.current().unwrap().address.port();
        let mut seen = Vec::new();
        for _ in 0..9 {
            let tried = port(&round);
            let delay = ms(round.failed());
            if round.needs_targets() {
                round.set_targets(targets(3));
            }
            seen.push((tried, delay));
        }
        #[rustfmt::skip]
        let expected = [
            (7101, 100), (7102, 100), (7100, 100),
            (7101, 200), (7102, 200), (7100, 200),
            (7101, 400), (7102, 400), (7100, 400),
        ];
        assert_eq!(seen, expected);

        round.healthy();
        assert_eq!(port(&round), 7101);
        assert_eq!(ms(round.failed()), 100, "an answer resets the delay");
        assert!(round.needs_targets(), "a break after success resolves the names again");
        round.set_targets(targets(3));
        assert_eq!(port(&round), 7102, "and moves on to the next replica");
    }

    #[test]
    fn a_single_target_backs_off_at_every_failure_up_to_5s() {
        let mut round = Round::new(0);
        round.set_targets(targets(1));
        let delays: Vec<u64> = (0..8)
            .map(|_| {
                let delay = ms(round.failed());
                round.set_targets(targets(1));
                delay
            })
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn a_new_list_continues_after_the_target_that_failed() {
        let mut round = Round::new(0);
        round.set_targets(targets(3));
        round.healthy();
        round.failed();
        // The name now resolves to one more address, listed first: the next is still the one after 7100.
        let mut moved = targets(3);
        moved.insert(0, Target { url: 0, address: "127.0.0.9:7100".parse().unwrap() });
        round.set_targets(moved);
        assert_eq!(round.current().unwrap().address.port(), 7101);
        // Nothing resolves: a failed round, backing off; then the list comes back.
        round.set_targets(Vec::new());
        assert_eq!(round.current(), None);
        round.failed();
        assert!(round.needs_targets());
        round.set_targets(targets(2));
        assert!(round.current().is_some());
    }
}
