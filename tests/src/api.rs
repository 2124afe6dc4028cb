//! Clients of the processes under test and the fixtures most scenarios need: gRPC channels connected with retries,
//! `POST /v1/events` over HTTP, an owner + event type + endpoint set up in one call, emit helpers that wait until
//! an agent routes by a given config, and paginated reads of control's delivery log.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::transport::{Channel, Endpoint as ChannelEndpoint};

use hookrelay_common::proto::v1::admin_service_client::AdminServiceClient;
use hookrelay_common::proto::v1::emit_service_client::EmitServiceClient;
use hookrelay_common::proto::v1::{
    Agent as AgentInfo, CreateEndpointRequest, CreateEventTypeRequest, CreateOwnerRequest, Delivery, DeliveryStatus,
    EmitRequest, EmitResponse, Endpoint, GetDeliveryRequest, GetDeliveryResponse, ListAgentsRequest,
    ListDeliveriesRequest, ListEndpointsRequest, RateLimit, RateLimitPeriod, RetryPolicy,
};

use crate::{DEADLINE, eventually, unique};

/// A gRPC channel to `addr`, retrying the connection until [`DEADLINE`] (a process that just printed its listening
/// line accepts at once; one that is restarting may take a moment).
pub async fn connect(addr: SocketAddr) -> Channel {
    let endpoint = ChannelEndpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(2))
        .timeout(DEADLINE);
    let deadline = Instant::now() + DEADLINE;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("cannot connect to {addr} within {DEADLINE:?}: {error:?}"),
        }
    }
}

/// The answer of an HTTP call: status and body, the body parsed as JSON when it is JSON.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// HTTP status code.
    pub status: u16,
    /// The raw body.
    pub body: Bytes,
    /// The body as JSON, `Null` when it is not JSON.
    pub json: serde_json::Value,
}

/// `POST http://<agent>/v1/events` with `body` as is.
pub async fn post_events_raw(agent: SocketAddr, body: impl Into<Bytes>) -> HttpAnswer {
    post_events_with_headers(agent, &[], body).await
}

/// `POST http://<agent>/v1/events` with `body` as is and `headers` besides `content-type: application/json`.
pub async fn post_events_with_headers(
    agent: SocketAddr,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpAnswer {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request =
        http::Request::post(format!("http://{agent}/v1/events")).header(http::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).expect("a valid request");
    let response = tokio::time::timeout(DEADLINE, client.request(request))
        .await
        .unwrap_or_else(|_| panic!("POST /v1/events to {agent} got no answer within {DEADLINE:?}"))
        .unwrap_or_else(|error| panic!("POST /v1/events to {agent} failed: {error:?}"));
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("the response body").to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    HttpAnswer { status, body, json }
}

/// `POST http://<agent>/v1/events` with a JSON body.
pub async fn post_event(agent: SocketAddr, event: &serde_json::Value) -> HttpAnswer {
    post_events_raw(agent, serde_json::to_vec(event).expect("JSON")).await
}

/// An `EmitRequest` for `owner`/`event_type` with a JSON payload and an optional id.
pub fn emit_request(owner: &str, event_type: &str, id: &str, payload: &serde_json::Value) -> EmitRequest {
    EmitRequest {
        owner: owner.to_owned(),
        r#type: event_type.to_owned(),
        id: id.to_owned(),
        payload: serde_json::to_vec(payload).expect("JSON"),
        ..Default::default()
    }
}

/// What a test asks of a new endpoint. [`EndpointSpec::new`] gives the test defaults: insecure (`http://127.0.0.1`),
/// every type of the fixture, a fast retry schedule of 50 ms steps.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// The receiver's URL.
    pub url: String,
    /// Filters; the fixture's event type when empty.
    pub filter_types: Vec<String>,
    /// Retry delays after the first try, in milliseconds.
    pub schedule_ms: Vec<u64>,
    /// Whole-request timeout in milliseconds; 0 means the default.
    pub timeout_ms: u64,
    /// Concurrent deliveries; 0 means the default.
    pub max_in_flight: u32,
    /// Custom headers.
    pub headers: Vec<(String, String)>,
    /// Create it disabled.
    pub disabled: bool,
    /// At most this many attempts started per period.
    pub rate_limit: Option<RateLimit>,
}

impl EndpointSpec {
    /// An endpoint delivering to `url` with the test defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            filter_types: Vec::new(),
            schedule_ms: vec![50, 50, 50],
            timeout_ms: 0,
            max_in_flight: 0,
            headers: Vec::new(),
            disabled: false,
            rate_limit: None,
        }
    }

    /// Replaces the retry schedule.
    pub fn schedule_ms(mut self, schedule: &[u64]) -> Self {
        self.schedule_ms = schedule.to_vec();
        self
    }

    /// Replaces the filters.
    pub fn filters(mut self, filters: &[&str]) -> Self {
        self.filter_types = filters.iter().map(|f| (*f).to_owned()).collect();
        self
    }

    /// Sets the timeout.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }

    /// Sets the in-flight limit.
    pub fn max_in_flight(mut self, limit: u32) -> Self {
        self.max_in_flight = limit;
        self
    }

    /// Limits attempts to `limit` per second.
    pub fn per_second(mut self, limit: u32) -> Self {
        self.rate_limit = Some(RateLimit { limit, period: RateLimitPeriod::Second as i32 });
        self
    }

    /// Adds a custom header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A fresh owner and event type in a control, for one test: names are unique so tests never see each other's data.
pub struct Fixture {
    /// The admin client used to set it up.
    pub admin: AdminServiceClient<Channel>,
    /// The owner id.
    pub owner: String,
    /// The event type name.
    pub event_type: String,
}

impl Fixture {
    /// Creates an owner and an event type (`<prefix>.happened`) in the control at `admin`.
    pub async fn new(mut admin: AdminServiceClient<Channel>) -> Self {
        let owner = unique("owner");
        let event_type = format!("{}.happened", unique("test").replace('-', "_"));
        admin
            .create_owner(CreateOwnerRequest { id: owner.clone(), name: format!("Test owner {owner}") })
            .await
            .unwrap_or_else(|status| panic!("CreateOwner {owner}: {status:?}"));
        admin
            .create_event_type(CreateEventTypeRequest {
                name: event_type.clone(),
                description: "an event type of the test suite".to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("CreateEventType {event_type}: {status:?}"));
        Self { admin, owner, event_type }
    }

    /// Adds another event type to the catalog and returns its name.
    pub async fn add_event_type(&mut self, suffix: &str) -> String {
        let name = format!("{}.{suffix}", self.event_type.split('.').next().expect("a prefix"));
        self.admin
            .create_event_type(CreateEventTypeRequest {
                name: name.clone(),
                description: format!("test type {suffix}"),
            })
            .await
            .unwrap_or_else(|status| panic!("CreateEventType {name}: {status:?}"));
        name
    }

    /// The `CreateEndpointRequest` for `spec` under this fixture's owner.
    pub fn endpoint_request(&self, spec: &EndpointSpec) -> CreateEndpointRequest {
        let filter_types =
            if spec.filter_types.is_empty() { vec![self.event_type.clone()] } else { spec.filter_types.clone() };
        CreateEndpointRequest {
            owner_id: self.owner.clone(),
            url: spec.url.clone(),
            description: "test receiver".to_owned(),
            filter_types,
            max_in_flight: spec.max_in_flight,
            timeout_ms: spec.timeout_ms,
            retry_policy: Some(RetryPolicy { schedule_ms: spec.schedule_ms.clone() }),
            headers: spec.headers.iter().cloned().collect(),
            insecure: true,
            disabled: spec.disabled,
            rate_limit: spec.rate_limit,
            // Unset: no verification challenge, and whatever later fields default to.
            ..Default::default()
        }
    }

    /// Creates an endpoint; returns it and its signing secret.
    pub async fn create_endpoint(&mut self, spec: EndpointSpec) -> (Endpoint, String) {
        let request = self.endpoint_request(&spec);
        let response = self
            .admin
            .create_endpoint(request)
            .await
            .unwrap_or_else(|status| panic!("CreateEndpoint {}: {status:?}", spec.url))
            .into_inner();
        let endpoint = response.endpoint.expect("CreateEndpointResponse.endpoint");
        assert!(response.secret.starts_with("whsec_"), "the secret is whsec_…: {:?}", response.secret.len());
        (endpoint, response.secret)
    }

    /// The endpoints of this fixture's owner (the first page).
    pub async fn list_endpoints(&mut self) -> Vec<Endpoint> {
        let request = ListEndpointsRequest { owner_id: self.owner.clone(), ..Default::default() };
        self.admin.list_endpoints(request).await.expect("ListEndpoints").into_inner().endpoints
    }

    /// An `EmitRequest` of this fixture's owner and type.
    pub fn emit_request(&self, id: &str, payload: &serde_json::Value) -> EmitRequest {
        emit_request(&self.owner, &self.event_type, id, payload)
    }
}

/// Emits fresh events (ids `probe-…`) until the agent answers with `expected` deliveries, which shows it applied a
/// config where that many enabled endpoints match; returns the accepted answer (whose deliveries will happen).
/// Earlier probes may have matched fewer endpoints and created deliveries of their own (or none).
pub async fn emit_until_routed(
    emitter: &mut EmitServiceClient<Channel>,
    owner: &str,
    event_type: &str,
    expected: u32,
) -> EmitResponse {
    eventually(&format!("the agent routes {owner}/{event_type} to {expected} endpoint(s)"), DEADLINE, async || {
        let request = emit_request(owner, event_type, &unique("probe"), &serde_json::json!({"probe": true}));
        match emitter.emit(request).await {
            Ok(answer) if answer.get_ref().deliveries == expected => Ok(answer.into_inner()),
            Ok(answer) => Err(format!("emit answered {:?}", answer.get_ref())),
            Err(status) => Err(format!("emit failed: {status:?}")),
        }
    })
    .await
}

/// Every delivery control lists for `filter`, following page tokens (100 per page).
pub async fn list_all_deliveries(
    admin: &mut AdminServiceClient<Channel>,
    filter: ListDeliveriesRequest,
) -> Result<Vec<Delivery>, tonic::Status> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListDeliveriesRequest { page_size: 100, page_token: page_token.clone(), ..filter.clone() };
        let page = admin.list_deliveries(request).await?.into_inner();
        all.extend(page.deliveries);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        assert_ne!(page.next_page_token, page_token, "ListDeliveries returned the same page token twice");
        page_token = page.next_page_token;
    }
}

/// The deliveries of an owner, all pages.
pub async fn deliveries_of_owner(
    admin: &mut AdminServiceClient<Channel>,
    owner: &str,
) -> Result<Vec<Delivery>, tonic::Status> {
    list_all_deliveries(admin, ListDeliveriesRequest { owner_id: owner.to_owned(), ..Default::default() }).await
}

/// The event ids of an owner's deliveries that control lists as succeeded.
pub async fn succeeded_event_ids(
    admin: &mut AdminServiceClient<Channel>,
    owner: &str,
) -> Result<BTreeSet<String>, tonic::Status> {
    let listed = deliveries_of_owner(admin, owner).await?;
    let succeeded = listed.into_iter().filter(|d| d.status == DeliveryStatus::Succeeded as i32);
    Ok(succeeded.map(|d| d.event_id).collect())
}

/// `GetDelivery`.
pub async fn get_delivery(
    admin: &mut AdminServiceClient<Channel>,
    id: &str,
) -> Result<GetDeliveryResponse, tonic::Status> {
    Ok(admin.get_delivery(GetDeliveryRequest { id: id.to_owned() }).await?.into_inner())
}

/// The agent named `node_name` as `ListAgents` shows it.
pub async fn agent_info(
    admin: &mut AdminServiceClient<Channel>,
    node_name: &str,
) -> Result<Option<AgentInfo>, tonic::Status> {
    let agents = admin.list_agents(ListAgentsRequest {}).await?.into_inner().agents;
    Ok(agents.into_iter().find(|agent| agent.node_name == node_name))
}
