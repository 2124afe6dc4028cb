//! `AdminService`: owners, event types, endpoints (with secret rotation and the verification challenge),
//! deliveries and agents.

use std::sync::Arc;

use hookrelay_common::ids::EndpointId;
use hookrelay_common::net_policy::AddressPolicy;
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::signing::Secret;
use hookrelay_common::time::{now_ms, to_timestamp};
use pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::respond;
use crate::challenge::Verifier;
use crate::error::Result;
use crate::rotation::ExpiryTimer;
use crate::store::{EndpointChange, Store};
use crate::validate::{self, UrlRules};
use crate::watch::ConfigHub;

/// The admin API over a store.
pub struct AdminApi {
    store: Arc<dyn Store>,
    hub: ConfigHub,
    verifier: Verifier,
    expiry: ExpiryTimer,
    url_rules: UrlRules,
    max_endpoints_per_owner: usize,
}

/// What the admin API works with besides the store.
pub struct AdminParts {
    /// Answers which agents are connected.
    pub hub: ConfigHub,
    /// Sends verification challenges.
    pub verifier: Verifier,
    /// Ends rotation overlaps.
    pub expiry: ExpiryTimer,
    /// Permit `http://` endpoints created with the insecure flag.
    pub allow_insecure_endpoints: bool,
    /// Control's address policy (`--allowed-cidrs`), which endpoint URLs written with an IP literal must pass.
    pub address_policy: AddressPolicy,
    /// Most endpoints one owner may have.
    pub max_endpoints_per_owner: usize,
}

impl AdminApi {
    /// The admin API over `store`.
    pub fn new(store: Arc<dyn Store>, parts: AdminParts) -> Self {
        let AdminParts { hub, verifier, expiry, allow_insecure_endpoints, address_policy, max_endpoints_per_owner } =
            parts;
        let url_rules = UrlRules { allow_insecure: allow_insecure_endpoints, addresses: address_policy };
        Self { store, hub, verifier, expiry, url_rules, max_endpoints_per_owner }
    }

    /// The URL `request` leaves the endpoint at, challenged; returns the change guarded to keep that URL.
    async fn verified_update(&self, request: pb::UpdateEndpointRequest) -> Result<(EndpointId, EndpointChange)> {
        let (id, preview) = validate::endpoint_update(request.clone(), &self.url_rules)?;
        let mut after = self.store.get_endpoint(&id).await?;
        preview(&mut after)?;
        self.verifier.verify(&after.url, &after.headers).await?;
        let (id, change) = validate::endpoint_update(request, &self.url_rules)?;
        Ok((id, validate::keep_verified_url(change, after.url)))
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_owner(&self, request: Request<pb::CreateOwnerRequest>) -> Answer<pb::Owner> {
        let owner = validate::new_owner(request.into_inner(), now_ms())?;
        respond(self.store.create_owner(owner).await)
    }

    async fn get_owner(&self, request: Request<pb::GetOwnerRequest>) -> Answer<pb::Owner> {
        let id = request.into_inner().id;
        validate::owner_id("id", &id)?;
        respond(self.store.get_owner(&id).await)
    }

    async fn list_owners(&self, request: Request<pb::ListOwnersRequest>) -> Answer<pb::ListOwnersResponse> {
        let request = request.into_inner();
        let page = self.store.list_owners(validate::page(request.page_size, &request.page_token)?).await?;
        Ok(Response::new(pb::ListOwnersResponse { owners: page.items, next_page_token: page.next_page_token }))
    }

    async fn update_owner(&self, request: Request<pb::UpdateOwnerRequest>) -> Answer<pb::Owner> {
        let (id, name) = validate::owner_update(request.into_inner())?;
        respond(self.store.update_owner(&id, name).await)
    }

    async fn delete_owner(&self, request: Request<pb::DeleteOwnerRequest>) -> Answer<pb::DeleteOwnerResponse> {
        let id = request.into_inner().id;
        validate::owner_id("id", &id)?;
        self.store.delete_owner(&id).await?;
        Ok(Response::new(pb::DeleteOwnerResponse {}))
    }

    async fn create_event_type(&self, request: Request<pb::CreateEventTypeRequest>) -> Answer<pb::EventType> {
        let event_type = validate::new_event_type(request.into_inner(), now_ms())?;
        respond(self.store.create_event_type(event_type).await)
    }

    async fn get_event_type(&self, request: Request<pb::GetEventTypeRequest>) -> Answer<pb::EventType> {
        let name = request.into_inner().name;
        validate::event_type_name("name", &name)?;
        respond(self.store.get_event_type(&name).await)
    }

    async fn list_event_types(
        &self,
        request: Request<pb::ListEventTypesRequest>,
    ) -> Answer<pb::ListEventTypesResponse> {
        let request = request.into_inner();
        let page = self.store.list_event_types(validate::page(request.page_size, &request.page_token)?).await?;
        Ok(Response::new(pb::ListEventTypesResponse { event_types: page.items, next_page_token: page.next_page_token }))
    }

    async fn update_event_type(&self, request: Request<pb::UpdateEventTypeRequest>) -> Answer<pb::EventType> {
        let (name, description) = validate::event_type_update(request.into_inner())?;
        respond(self.store.update_event_type(&name, description).await)
    }

    async fn delete_event_type(
        &self,
        request: Request<pb::DeleteEventTypeRequest>,
    ) -> Answer<pb::DeleteEventTypeResponse> {
        let name = request.into_inner().name;
        validate::event_type_name("name", &name)?;
        self.store.delete_event_type(&name).await?;
        Ok(Response::new(pb::DeleteEventTypeResponse {}))
    }

    async fn create_endpoint(&self, request: Request<pb::CreateEndpointRequest>) -> Answer<pb::CreateEndpointResponse> {
        let request = request.into_inner();
        let verify = request.verify;
        let (endpoint, secret) = validate::new_endpoint(request, &self.url_rules, now_ms())?;
        if verify && let Some(fields) = &endpoint.endpoint {
            // No outbound request on behalf of an owner that does not exist.
            self.store.get_owner(&fields.owner_id).await?;
            self.verifier.verify(&fields.url, &fields.headers).await?;
        }
        let stored = self.store.create_endpoint(endpoint, self.max_endpoints_per_owner).await?;
        Ok(Response::new(pb::CreateEndpointResponse { endpoint: stored.endpoint, secret }))
    }

    async fn get_endpoint(&self, request: Request<pb::GetEndpointRequest>) -> Answer<pb::Endpoint> {
        let id = validate::endpoint_id("id", &request.into_inner().id)?;
        respond(self.store.get_endpoint(&id).await)
    }

    async fn list_endpoints(&self, request: Request<pb::ListEndpointsRequest>) -> Answer<pb::ListEndpointsResponse> {
        let request = request.into_inner();
        let owner_id = (!request.owner_id.is_empty()).then_some(request.owner_id.as_str());
        if let Some(owner_id) = owner_id {
            validate::owner_id("owner_id", owner_id)?;
        }
        let page = validate::page(request.page_size, &request.page_token)?;
        let page = self.store.list_endpoints(owner_id, page).await?;
        Ok(Response::new(pb::ListEndpointsResponse { endpoints: page.items, next_page_token: page.next_page_token }))
    }

    async fn update_endpoint(&self, request: Request<pb::UpdateEndpointRequest>) -> Answer<pb::Endpoint> {
        let request = request.into_inner();
        let (id, change) = if request.verify {
            self.verified_update(request).await?
        } else {
            validate::endpoint_update(request, &self.url_rules)?
        };
        respond(self.store.update_endpoint(&id, change).await)
    }

    async fn delete_endpoint(&self, request: Request<pb::DeleteEndpointRequest>) -> Answer<pb::DeleteEndpointResponse> {
        let id = validate::endpoint_id("id", &request.into_inner().id)?;
        self.store.delete_endpoint(&id).await?;
        Ok(Response::new(pb::DeleteEndpointResponse {}))
    }

    async fn enable_endpoint(&self, request: Request<pb::EnableEndpointRequest>) -> Answer<pb::Endpoint> {
        let (id, change) = validate::enable_endpoint(request.into_inner())?;
        respond(self.store.update_endpoint(&id, change).await)
    }

    async fn disable_endpoint(&self, request: Request<pb::DisableEndpointRequest>) -> Answer<pb::Endpoint> {
        let (id, change) = validate::disable_endpoint(request.into_inner())?;
        respond(self.store.update_endpoint(&id, change).await)
    }

    async fn rotate_secret(
        &self,
        request: Request<pb::RotateEndpointSecretRequest>,
    ) -> Answer<pb::RotateEndpointSecretResponse> {
        let (id, overlap) = validate::rotation(request.into_inner())?;
        let secret = Secret::generate().expose();
        let expires_at_ms = now_ms() + overlap.as_millis() as u64;
        let rotated = self.store.rotate_secret(&id, secret.clone(), expires_at_ms).await?;
        self.expiry.schedule(expires_at_ms);
        Ok(Response::new(pb::RotateEndpointSecretResponse {
            endpoint: rotated.endpoint,
            secret,
            previous_secret_expires_at: Some(to_timestamp(expires_at_ms)),
        }))
    }

    async fn verify_endpoint(&self, request: Request<pb::VerifyEndpointRequest>) -> Answer<pb::VerifyEndpointResponse> {
        let id = validate::endpoint_id("id", &request.into_inner().id)?;
        let endpoint = self.store.get_endpoint(&id).await?;
        let took = self.verifier.verify(&endpoint.url, &endpoint.headers).await?;
        Ok(Response::new(pb::VerifyEndpointResponse { endpoint: Some(endpoint), duration_ms: took.as_millis() as u64 }))
    }

    async fn list_deliveries(&self, request: Request<pb::ListDeliveriesRequest>) -> Answer<pb::ListDeliveriesResponse> {
        let query = validate::delivery_query(request.into_inner())?;
        let page = self.store.list_deliveries(query).await?;
        Ok(Response::new(pb::ListDeliveriesResponse { deliveries: page.items, next_page_token: page.next_page_token }))
    }

    async fn get_delivery(&self, request: Request<pb::GetDeliveryRequest>) -> Answer<pb::GetDeliveryResponse> {
        let id = validate::delivery_id("id", &request.into_inner().id)?;
        let (delivery, attempts) = self.store.get_delivery(&id).await?;
        Ok(Response::new(pb::GetDeliveryResponse { delivery: Some(delivery), attempts }))
    }

    async fn replay_delivery(&self, request: Request<pb::ReplayDeliveryRequest>) -> Answer<pb::ReplayDeliveryResponse> {
        let id = validate::delivery_id("id", &request.into_inner().id)?;
        let delivery = crate::replay::replay_delivery(self.store.as_ref(), &self.hub, &id).await?;
        Ok(Response::new(pb::ReplayDeliveryResponse { delivery: Some(delivery) }))
    }

    async fn recover_failed(&self, request: Request<pb::RecoverFailedRequest>) -> Answer<pb::RecoverFailedResponse> {
        let request = request.into_inner();
        let endpoint_id = validate::endpoint_id("endpoint_id", &request.endpoint_id)?;
        let since_ms = match request.since {
            None => 0,
            Some(since) => hookrelay_common::time::from_timestamp(&since)
                .ok_or_else(|| crate::error::Error::invalid("since", "must be a time after the unix epoch"))?,
        };
        let recovery = crate::replay::recover_failed(self.store.as_ref(), &self.hub, &endpoint_id, since_ms).await?;
        Ok(Response::new(recovery))
    }

    async fn list_agents(&self, _request: Request<pb::ListAgentsRequest>) -> Answer<pb::ListAgentsResponse> {
        // Read before the agents, so that an agent listed at this version or later has every change made before.
        let config_version = self.store.stats()?.config_version;
        let mut agents = self.store.list_agents().await?;
        for agent in &mut agents {
            agent.connected = self.hub.is_connected(&agent.node_name);
        }
        Ok(Response::new(pb::ListAgentsResponse { agents, config_version }))
    }
}
