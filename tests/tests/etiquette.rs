//! HTTP etiquette and endpoint protection against a real receiver: Retry-After is honoured (capped at the schedule's
//! largest step), 410 Gone stops the delivery and disables the endpoint, redirects are never followed, slow
//! receivers time out with the reason recorded, rate limits space deliveries out, a failing endpoint's circuit
//! opens (held and probed) and closes again on success, and an endpoint failing for longer than the auto-disable
//! window is disabled, with the window counted across an agent restart.

use std::time::Duration;

use hookrelay_common::proto::v1::admin_service_client::AdminServiceClient;
use hookrelay_common::proto::v1::{
    Delivery, DeliveryStatus, DisableEndpointRequest, EnableEndpointRequest, Endpoint, GetEndpointRequest,
    ListDeliveriesRequest,
};
use hookrelay_common::time::{from_timestamp, now_ms};
use hookrelay_tests::api::{emit_until_routed, get_delivery, list_all_deliveries};
use hookrelay_tests::{
    Agent, AgentOpts, Control, DEADLINE, EndpointSpec, Fixture, Receiver, Stack, eventually, spawn_agent_with,
    spawn_control, unique,
};
use tonic::transport::Channel;

/// Starts a stack with one endpoint on a fresh receiver and waits until a probe went through.
async fn stack_with(spec: impl FnOnce(String) -> EndpointSpec) -> (Stack, Receiver, String) {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = stack.fixture.create_endpoint(spec(receiver.url())).await;
    let probe = stack.emit_until_routed(1).await;
    eventually("the probe is delivered", DEADLINE, async || {
        receiver.success_for(&probe.id).map(drop).ok_or_else(|| receiver.summary())
    })
    .await;
    (stack, receiver, endpoint.id)
}

/// Waits until control lists the delivery of event `id` to `endpoint_id` as failed.
async fn failed_delivery(admin: &mut AdminServiceClient<Channel>, endpoint_id: &str, id: &str) -> Delivery {
    eventually(&format!("the delivery of {id} fails"), DEADLINE, async || {
        let filter = ListDeliveriesRequest { endpoint_id: endpoint_id.to_owned(), ..Default::default() };
        let listed = list_all_deliveries(admin, filter).await.map_err(|s| format!("{s:?}"))?;
        listed
            .into_iter()
            .find(|d| d.event_id == id && d.status == DeliveryStatus::Failed as i32)
            .ok_or_else(|| "not failed yet".to_owned())
    })
    .await
}

async fn emit(stack: &mut Stack, id: &str) {
    let request = stack.fixture.emit_request(id, &serde_json::json!({"id": id}));
    let answer = stack.emitter.emit(request).await.expect("Emit").into_inner();
    assert_eq!(answer.deliveries, 1, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_up_to_the_largest_step() {
    let (mut stack, receiver, _) = stack_with(|url| EndpointSpec::new(url).schedule_ms(&[50, 1500])).await;
    receiver.set_script(&[429]);
    receiver.set_response_headers(&[("retry-after", "1")]);
    let id = unique("busy");
    emit(&mut stack, &id).await;
    let tries = eventually("delivered after the 429", DEADLINE, async || {
        let tries = receiver.requests_for(&id);
        if tries.iter().any(|r| r.succeeded()) { Ok(tries) } else { Err(receiver.summary()) }
    })
    .await;
    assert_eq!(tries.len(), 2, "{}", receiver.summary());
    let gap = tries[1].received_instant - tries[0].received_instant;
    assert!(gap >= Duration::from_millis(950), "Retry-After: 1 was not honoured: retried after {gap:?}");

    receiver.set_script(&[503]);
    receiver.set_response_headers(&[("retry-after", "3600")]);
    let capped = unique("capped");
    emit(&mut stack, &capped).await;
    let tries = eventually("delivered after the capped wait", DEADLINE, async || {
        let tries = receiver.requests_for(&capped);
        if tries.iter().any(|r| r.succeeded()) { Ok(tries) } else { Err(receiver.summary()) }
    })
    .await;
    let gap = tries[1].received_instant - tries[0].received_instant;
    assert!(gap >= Duration::from_millis(1100), "retried after {gap:?}, sooner than the largest step allows");
    assert!(gap < Duration::from_secs(10), "Retry-After: 3600 was not capped at the 1.5s step: {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_stops_the_delivery_and_disables_the_endpoint() {
    let (mut stack, receiver, endpoint_id) = stack_with(|url| EndpointSpec::new(url).schedule_ms(&[50, 50])).await;
    receiver.set_status(410);
    let id = unique("gone");
    emit(&mut stack, &id).await;
    let mut admin = stack.control.admin().await;
    let endpoint = eventually("control disables the endpoint", DEADLINE, async || {
        let endpoint = admin
            .get_endpoint(GetEndpointRequest { id: endpoint_id.clone() })
            .await
            .map_err(|s| format!("{s:?}"))?
            .into_inner();
        if endpoint.enabled { Err(format!("{endpoint:?}")) } else { Ok(endpoint) }
    })
    .await;
    assert!(endpoint.disabled_reason.contains("410"), "{endpoint:?}");
    assert_eq!(receiver.requests_for(&id).len(), 1, "a 410 is not retried: {}", receiver.summary());
    let delivery = failed_delivery(&mut admin, &endpoint_id, &id).await;
    assert_eq!((delivery.attempts, delivery.last_status_code), (1, 410), "{delivery:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_failures_and_never_followed() {
    let (mut stack, receiver, endpoint_id) = stack_with(|url| EndpointSpec::new(url).schedule_ms(&[50])).await;
    receiver.set_script(&[302, 302]);
    receiver.set_response_headers(&[("location", "/elsewhere")]);
    let id = unique("moved");
    emit(&mut stack, &id).await;
    let mut admin = stack.control.admin().await;
    let delivery = failed_delivery(&mut admin, &endpoint_id, &id).await;
    assert_eq!(delivery.last_status_code, 302);
    assert!(receiver.requests().iter().all(|r| r.path == "/hook"), "a redirect was followed: {}", receiver.summary());
    let attempts = get_delivery(&mut admin, &delivery.id).await.expect("GetDelivery").attempts;
    assert!(attempts[0].reason.contains("redirects are not followed"), "{attempts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_receivers_time_out_with_the_reason_recorded() {
    let (mut stack, receiver, endpoint_id) =
        stack_with(|url| EndpointSpec::new(url).schedule_ms(&[50]).timeout_ms(300)).await;
    receiver.set_delay(Duration::from_secs(2));
    let id = unique("slow");
    emit(&mut stack, &id).await;
    let mut admin = stack.control.admin().await;
    let delivery = failed_delivery(&mut admin, &endpoint_id, &id).await;
    let attempts = get_delivery(&mut admin, &delivery.id).await.expect("GetDelivery").attempts;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    for attempt in &attempts {
        assert_eq!(attempt.error_class, "timeout", "{attempt:?}");
        assert_eq!(attempt.status_code, 0, "{attempt:?}");
        assert!(attempt.duration_ms >= 290 && attempt.duration_ms < 1500, "{attempt:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spaces_deliveries_out() {
    let (mut stack, receiver, _) = stack_with(|url| EndpointSpec::new(url).per_second(5)).await;
    let ids: Vec<String> = (0..10).map(|_| unique("limited")).collect();
    for id in &ids {
        emit(&mut stack, id).await;
    }
    let arrivals = eventually("all ten are delivered", DEADLINE, async || {
        let mut arrivals = Vec::new();
        for id in &ids {
            arrivals.push(receiver.success_for(id).ok_or_else(|| receiver.summary())?.received_instant);
        }
        Ok::<_, String>(arrivals)
    })
    .await;
    let mut sorted = arrivals.clone();
    sorted.sort();
    // A bucket of 5 refilled at 5 per second: any n > 5 deliveries span at least (n - 5) × 200 ms.
    for (i, start) in sorted.iter().enumerate() {
        for (j, end) in sorted.iter().enumerate().skip(i + 5) {
            let count = (j - i + 1) as u32;
            let least = Duration::from_millis(200) * (count - 5);
            let slack = Duration::from_millis(40);
            assert!(*end - *start + slack >= least, "{count} deliveries within {:?} at 5/s", *end - *start);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_held_and_probed_then_reopens() {
    // Five quick retries would hammer the receiver; the breaker (5 consecutive failures) must stop that.
    let (mut stack, receiver, _) =
        stack_with(|url| EndpointSpec::new(url).schedule_ms(&[20, 20, 20, 20, 20, 1500, 1500, 1500])).await;
    receiver.set_status(500);
    let ids: Vec<String> = (0..8).map(|_| unique("held")).collect();
    for id in &ids {
        emit(&mut stack, id).await;
    }
    let base = receiver.count();
    eventually("the endpoint has failed enough to open its circuit", DEADLINE, async || {
        if receiver.count() - base >= 5 { Ok(()) } else { Err(receiver.summary()) }
    })
    .await;
    // Once open, only one probe is in flight, paced at the schedule (20 ms, then 1.5 s).
    let opened_at = receiver.count();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let during = receiver.count() - opened_at;
    assert!(during <= 4, "{during} requests in 1.2s while the circuit should be open: {}", receiver.summary());

    receiver.set_status(200);
    eventually("a probe succeeds and the held deliveries follow", DEADLINE, async || {
        let missing: Vec<_> = ids.iter().filter(|id| receiver.success_for(id).is_none()).collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("{} missing", missing.len())) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_disable_window_outlives_an_agent_restart() {
    let FailingEndpoint { control, mut agent, endpoint, receiver: _receiver } = failing_endpoint(3).await;

    // The first failure may be recorded a moment after the receiver saw it, but before the old process exits (a
    // graceful stop lets the attempt finish); a window started by the new process would begin after this.
    agent.terminate().await;
    let stopped_at = now_ms();
    agent.restart().await;

    let since = auto_disabled_since(&mut control.admin().await, &endpoint.id).await;
    assert!(since <= stopped_at, "the window began before the restart ({since} <= {stopped_at}), not again after it");
}

/// Control and an agent that auto-disables after `window_secs`, with an endpoint whose receiver answers 500 (a retry
/// every 200 ms) and has seen a first attempt.
struct FailingEndpoint {
    control: Control,
    agent: Agent,
    endpoint: Endpoint,
    receiver: Receiver,
}

async fn failing_endpoint(window_secs: u64) -> FailingEndpoint {
    let control = spawn_control().await;
    let args = vec!["--auto-disable-after-secs".to_owned(), window_secs.to_string()];
    let agent = spawn_agent_with(AgentOpts { extra_args: args, ..AgentOpts::new(control.url()) }).await;
    let mut fixture = Fixture::new(control.admin().await).await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let spec = EndpointSpec::new(receiver.url()).schedule_ms(&[200; 20]);
    let (endpoint, _) = fixture.create_endpoint(spec).await;
    let mut emitter = agent.emitter().await;
    emit_until_routed(&mut emitter, &fixture.owner, &fixture.event_type, 1).await;
    eventually("the receiver sees a failing attempt", DEADLINE, async || {
        if receiver.count() > 0 { Ok(()) } else { Err("no request yet".to_owned()) }
    })
    .await;
    FailingEndpoint { control, agent, endpoint, receiver }
}

/// Waits until control has the endpoint disabled; returns when its failures began, from the disabled reason.
async fn auto_disabled_since(admin: &mut AdminServiceClient<Channel>, endpoint_id: &str) -> u64 {
    let disabled = eventually("control disables the endpoint", DEADLINE, async || {
        let request = GetEndpointRequest { id: endpoint_id.to_owned() };
        let endpoint = admin.get_endpoint(request).await.map_err(|s| format!("{s:?}"))?.into_inner();
        if endpoint.enabled { Err(format!("{endpoint:?}")) } else { Ok(endpoint) }
    })
    .await;
    disabled
        .disabled_reason
        .strip_prefix("every attempt failed since ")
        .and_then(|rest| rest.split_once(' '))
        .and_then(|(since, _)| since.parse::<prost_types::Timestamp>().ok())
        .and_then(|since| from_timestamp(&since))
        .unwrap_or_else(|| panic!("the reason names when the failures began: {disabled:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_enabled_again_starts_a_fresh_auto_disable_window() {
    const WINDOW_SECS: u64 = 2;
    let FailingEndpoint { control, endpoint, agent: _agent, receiver: _receiver } = failing_endpoint(WINDOW_SECS).await;
    let failing_from = now_ms();

    // An operator disables the endpoint while its window runs, and enables it again after the window would have
    // run out: the window must start again, not disable the endpoint at its next failure.
    let mut admin = control.admin().await;
    let request = DisableEndpointRequest { id: endpoint.id.clone(), reason: "maintenance".into() };
    admin.disable_endpoint(request).await.expect("DisableEndpoint");
    let window_over = failing_from + WINDOW_SECS * 1000 + 500;
    tokio::time::sleep(Duration::from_millis(window_over.saturating_sub(now_ms()))).await;
    let reenabled_at = now_ms();
    admin.enable_endpoint(EnableEndpointRequest { id: endpoint.id.clone() }).await.expect("EnableEndpoint");

    // Disabled again once a fresh window runs out.
    let since = auto_disabled_since(&mut admin, &endpoint.id).await;
    assert!(since >= reenabled_at, "the window began after the endpoint was enabled again ({since} >= {reenabled_at})");
}
