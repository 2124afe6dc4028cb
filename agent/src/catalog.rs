//! The configuration control streams to the agent: kept as received (to apply deltas and to cache on disk) and
//! compiled into a [`Catalog`] that the emit and delivery paths read without parsing anything.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hookrelay_common::model::{self, Filter};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::signing::{Secret, Signer};
use http::{HeaderName, HeaderValue};
use url::Url;

/// Why a config version cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    /// A delta does not start from the version the agent runs.
    #[error("delta {version} starts from version {base}, but version {applied} is applied")]
    BaseMismatch { version: u64, base: u64, applied: u64 },
    /// An endpoint in the config is unusable.
    #[error("endpoint {id}: {message}")]
    Endpoint { id: String, message: String },
}

/// The config as control sent it: snapshot plus the deltas since.
#[derive(Debug, Clone, Default)]
pub struct AppliedConfig {
    pub version: u64,
    owners: BTreeMap<String, pb::Owner>,
    event_types: BTreeMap<String, pb::EventType>,
    endpoints: BTreeMap<String, pb::AgentEndpoint>,
}

impl AppliedConfig {
    /// The config a snapshot describes.
    pub fn from_snapshot(snapshot: pb::ConfigSnapshot) -> Self {
        Self {
            version: snapshot.version,
            owners: snapshot.owners.into_iter().map(|owner| (owner.id.clone(), owner)).collect(),
            event_types: snapshot.event_types.into_iter().map(|kind| (kind.name.clone(), kind)).collect(),
            endpoints: snapshot
                .endpoints
                .into_iter()
                .filter_map(|endpoint| Some((endpoint.endpoint.as_ref()?.id.clone(), endpoint)))
                .collect(),
        }
    }

    /// This config with a delta applied.
    pub fn with_delta(&self, delta: pb::ConfigDelta) -> Result<Self, CatalogError> {
        if delta.base_version != self.version {
            return Err(CatalogError::BaseMismatch {
                version: delta.version,
                base: delta.base_version,
                applied: self.version,
            });
        }
        let mut next = self.clone();
        next.version = delta.version;
        for id in delta.delete_owners {
            next.owners.remove(&id);
        }
        for name in delta.delete_event_types {
            next.event_types.remove(&name);
        }
        for id in delta.delete_endpoints {
            next.endpoints.remove(&id);
        }
        next.owners.extend(delta.upsert_owners.into_iter().map(|owner| (owner.id.clone(), owner)));
        next.event_types.extend(delta.upsert_event_types.into_iter().map(|kind| (kind.name.clone(), kind)));
        next.endpoints.extend(
            delta
                .upsert_endpoints
                .into_iter()
                .filter_map(|endpoint| Some((endpoint.endpoint.as_ref()?.id.clone(), endpoint))),
        );
        Ok(next)
    }

    /// The config as a snapshot, for the on-disk cache.
    pub fn to_snapshot(&self) -> pb::ConfigSnapshot {
        pb::ConfigSnapshot {
            version: self.version,
            owners: self.owners.values().cloned().collect(),
            event_types: self.event_types.values().cloned().collect(),
            endpoints: self.endpoints.values().cloned().collect(),
        }
    }

    /// Compiles the config for the hot path; fails on the first unusable endpoint.
    pub fn compile(&self) -> Result<Catalog, CatalogError> {
        let mut endpoints = HashMap::new();
        let mut by_owner: HashMap<String, Vec<Arc<EndpointConfig>>> = HashMap::new();
        for agent_endpoint in self.endpoints.values() {
            let endpoint = Arc::new(EndpointConfig::compile(agent_endpoint)?);
            by_owner.entry(endpoint.owner_id.clone()).or_default().push(endpoint.clone());
            endpoints.insert(endpoint.id.clone(), endpoint);
        }
        Ok(Catalog {
            version: self.version,
            owners: self.owners.keys().cloned().collect(),
            event_types: self.event_types.keys().cloned().collect(),
            endpoints,
            by_owner,
        })
    }
}

/// The applied config, ready for the emit and delivery paths.
#[derive(Debug, Default)]
pub struct Catalog {
    pub version: u64,
    owners: HashSet<String>,
    event_types: HashSet<String>,
    endpoints: HashMap<String, Arc<EndpointConfig>>,
    by_owner: HashMap<String, Vec<Arc<EndpointConfig>>>,
}

impl Catalog {
    /// Whether the owner exists.
    pub fn has_owner(&self, owner: &str) -> bool {
        self.owners.contains(owner)
    }

    /// Whether the event type is in the catalog.
    pub fn has_event_type(&self, name: &str) -> bool {
        self.event_types.contains(name)
    }

    /// The enabled endpoints of `owner` subscribed to `event_type`.
    pub fn subscribers<'a>(
        &'a self,
        owner: &str,
        event_type: &'a str,
    ) -> impl Iterator<Item = &'a Arc<EndpointConfig>> {
        self.by_owner.get(owner).into_iter().flatten().filter(move |endpoint| {
            endpoint.enabled && endpoint.filters.iter().any(|filter| filter.matches(event_type))
        })
    }

    /// An endpoint by id.
    pub fn endpoint(&self, id: &str) -> Option<&Arc<EndpointConfig>> {
        self.endpoints.get(id)
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<EndpointConfig>> {
        self.endpoints.values()
    }
}

/// Rate limit of an endpoint: at most `limit` attempts started per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u32,
    pub period: Duration,
}

/// One endpoint, compiled.
#[derive(Debug)]
pub struct EndpointConfig {
    pub id: String,
    pub owner_id: String,
    pub url: Url,
    pub enabled: bool,
    pub filters: Vec<Filter>,
    pub signer: Signer,
    pub max_in_flight: usize,
    pub timeout: Duration,
    pub retry_schedule: Vec<Duration>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub rate_limit: Option<RateLimit>,
    /// Also send `x-hookrelay-signature: sha256=<hex HMAC of the body>`.
    pub body_signature: bool,
}

impl EndpointConfig {
    fn compile(agent_endpoint: &pb::AgentEndpoint) -> Result<Self, CatalogError> {
        let endpoint = agent_endpoint
            .endpoint
            .as_ref()
            .ok_or_else(|| CatalogError::Endpoint { id: String::new(), message: "missing endpoint".into() })?;
        let fail = |message: String| CatalogError::Endpoint { id: endpoint.id.clone(), message };
        // Control validated the URL against its own insecure policy; the agent only needs it well-formed.
        let url = Url::parse(&endpoint.url).map_err(|error| fail(format!("url: {error}")))?;
        let filters = endpoint
            .filter_types
            .iter()
            .map(|text| Filter::parse("filter_types", text).map_err(|error| fail(error.to_string())))
            .collect::<Result<_, _>>()?;
        let secrets = agent_endpoint
            .secrets
            .iter()
            .map(|secret| Secret::parse(secret).map_err(|error| fail(format!("secret: {error}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if secrets.is_empty() {
            return Err(fail("no signing secret".into()));
        }
        let mut headers = Vec::with_capacity(endpoint.headers.len());
        for (name, value) in &endpoint.headers {
            let name =
                HeaderName::try_from(name.as_str()).map_err(|error| fail(format!("header {name:?}: {error}")))?;
            let value =
                HeaderValue::try_from(value.as_str()).map_err(|error| fail(format!("header {name}: {error}")))?;
            headers.push((name, value));
        }
        let rate_limit = endpoint.rate_limit.as_ref().filter(|limit| limit.limit > 0).map(|limit| RateLimit {
            limit: limit.limit,
            period: match pb::RateLimitPeriod::try_from(limit.period) {
                Ok(pb::RateLimitPeriod::Minute) => Duration::from_secs(60),
                _ => Duration::from_secs(1),
            },
        });
        Ok(Self {
            id: endpoint.id.clone(),
            owner_id: endpoint.owner_id.clone(),
            url,
            enabled: endpoint.enabled,
            filters,
            signer: Signer::new(&secrets),
            max_in_flight: match endpoint.max_in_flight {
                0 => model::DEFAULT_MAX_IN_FLIGHT as usize,
                limit => limit as usize,
            },
            timeout: match endpoint.timeout_ms {
                0 => model::DEFAULT_TIMEOUT,
                ms => Duration::from_millis(ms),
            },
            retry_schedule: model::retry_schedule(
                endpoint.retry_policy.as_ref().map(|policy| policy.schedule_ms.as_slice()).unwrap_or_default(),
            ),
            headers,
            rate_limit,
            body_signature: endpoint.body_signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, filters: &[&str], enabled: bool) -> pb::AgentEndpoint {
        pb::AgentEndpoint {
            endpoint: Some(pb::Endpoint {
                id: id.into(),
                owner_id: "acme".into(),
                url: "http://127.0.0.1:9/hook".into(),
                filter_types: filters.iter().map(|f| f.to_string()).collect(),
                enabled,
                ..Default::default()
            }),
            secrets: vec![Secret::generate().expose()],
        }
    }

    fn snapshot() -> pb::ConfigSnapshot {
        pb::ConfigSnapshot {
            version: 3,
            owners: vec![pb::Owner { id: "acme".into(), ..Default::default() }],
            event_types: vec![pb::EventType { name: "a.b".into(), ..Default::default() }],
            endpoints: vec![endpoint("ep_1", &["a.*"], true), endpoint("ep_2", &["*"], false)],
        }
    }

    #[test]
    fn fans_out_to_enabled_matching_endpoints() {
        let catalog = AppliedConfig::from_snapshot(snapshot()).compile().unwrap();
        assert!(catalog.has_owner("acme") && catalog.has_event_type("a.b"));
        let ids: Vec<_> = catalog.subscribers("acme", "a.b").map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["ep_1"]);
        assert_eq!(catalog.subscribers("other", "a.b").count(), 0);
    }

    #[test]
    fn applies_deltas_from_the_right_base_only() {
        let config = AppliedConfig::from_snapshot(snapshot());
        let delta = pb::ConfigDelta {
            version: 4,
            base_version: 3,
            delete_endpoints: vec!["ep_1".into()],
            upsert_endpoints: vec![endpoint("ep_3", &["a.b"], true)],
            ..Default::default()
        };
        let next = config.with_delta(delta.clone()).unwrap();
        assert_eq!(next.version, 4);
        let catalog = next.compile().unwrap();
        let ids: Vec<_> = catalog.subscribers("acme", "a.b").map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["ep_3"]);
        assert_eq!(next.with_delta(delta).unwrap_err(), CatalogError::BaseMismatch { version: 4, base: 3, applied: 4 });
        assert_eq!(AppliedConfig::from_snapshot(next.to_snapshot()).version, 4);
    }

    #[test]
    fn refuses_an_endpoint_without_a_usable_secret() {
        let mut broken = snapshot();
        broken.endpoints[0].secrets = vec!["nope".into()];
        let error = AppliedConfig::from_snapshot(broken).compile().unwrap_err();
        assert!(error.to_string().starts_with("endpoint ep_1: secret"), "{error}");
    }
}
