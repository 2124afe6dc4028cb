//! Emitting a phase's events to the agent over gRPC at the benchmark's concurrency, and phase (b), end to end:
//! until the receiver has every one **and** control lists every delivery as succeeded.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hookrelay_common::proto::v1::admin_service_client::AdminServiceClient;
use hookrelay_common::proto::v1::emit_service_client::EmitServiceClient;
use hookrelay_common::proto::v1::{DeliveryStatus, EmitBatchRequest, EmitRequest, ListDeliveriesRequest};
use tonic::transport::Channel;

use crate::payload;
use crate::sink::{Sink, Tally};

/// What phase (b) measured.
pub struct Outcome {
    /// First emit → the receiver had every event.
    pub delivered: Duration,
    /// First emit → control listed every delivery as succeeded (observed at the end of a full listing pass).
    pub recorded: Duration,
    /// How long the successful listing pass took (the resolution of `recorded`).
    pub listing_pass: Duration,
    /// Emit round trips (milliseconds), one per call.
    pub emit_ms: Vec<f64>,
    /// Succeeded deliveries control listed for the events, beyond one per event.
    pub control_duplicates: usize,
}

/// What to emit in a phase.
pub struct Plan {
    pub owner: String,
    pub event_type: String,
    /// Event ids are this prefix and a number from 0; the receiver tallies the phase by it.
    pub id_prefix: &'static str,
    pub events: usize,
    pub concurrency: usize,
    pub batch: usize,
    pub payload_bytes: usize,
    pub deadline: Duration,
}

/// Runs phase (b): emits the plan, waits until the receiver has every event and control lists every one as
/// succeeded.
pub async fn run(
    plan: &Plan,
    emitters: &[EmitServiceClient<Channel>],
    mut admin: AdminServiceClient<Channel>,
    sink: Arc<Sink>,
) -> anyhow::Result<Outcome> {
    let created_after = prost_types::Timestamp::from(std::time::SystemTime::now() - Duration::from_secs(1));
    let started = Instant::now();
    let emit_ms = emit(plan, emitters, started).await?;
    eprintln!("hookrelay-bench: {} events emitted in {:?}", plan.events, started.elapsed());
    let delivered = wait_delivered(plan, sink.tally(plan.id_prefix), started).await?;
    eprintln!("hookrelay-bench: every event delivered after {delivered:?}");

    // Recorded: full listing passes until control has every delivery as succeeded.
    loop {
        let pass_started = Instant::now();
        let (distinct, rows) = count_succeeded(&mut admin, plan, created_after).await?;
        if distinct >= plan.events {
            return Ok(Outcome {
                delivered,
                recorded: started.elapsed(),
                listing_pass: pass_started.elapsed(),
                emit_ms,
                control_duplicates: rows - distinct,
            });
        }
        if started.elapsed() > plan.deadline {
            bail!("control recorded {distinct} of {} deliveries within {:?}", plan.events, plan.deadline);
        }
        eprintln!("hookrelay-bench: control lists {distinct} of {} so far", plan.events);
    }
}

/// Emits the plan's events with `concurrency` workers spread over `emitters`; returns each call's round trip (ms).
pub async fn emit(plan: &Plan, emitters: &[EmitServiceClient<Channel>], started: Instant) -> anyhow::Result<Vec<f64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..plan.concurrency)
        .map(|worker| {
            let mut emitter = emitters[worker % emitters.len()].clone();
            let next = next.clone();
            let (owner, event_type, id_prefix) = (plan.owner.clone(), plan.event_type.clone(), plan.id_prefix);
            let (events, batch, payload_bytes) = (plan.events, plan.batch, plan.payload_bytes);
            tokio::spawn(async move {
                let mut emit_ms = Vec::new();
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= events {
                        return anyhow::Ok(emit_ms);
                    }
                    let requests: Vec<_> = (first..(first + batch).min(events))
                        .map(|n| EmitRequest {
                            owner: owner.clone(),
                            r#type: event_type.clone(),
                            id: format!("{id_prefix}{n}"),
                            payload: payload::make(n, payload_bytes),
                            ..Default::default()
                        })
                        .collect();
                    let sent = Instant::now();
                    let answers = if requests.len() == 1 {
                        let request = requests.into_iter().next().expect("one request");
                        vec![emitter.emit(request).await.context("Emit")?.into_inner()]
                    } else {
                        let request = EmitBatchRequest { events: requests };
                        emitter.emit_batch(request).await.context("EmitBatch")?.into_inner().results
                    };
                    emit_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                    if let Some(answer) = answers.iter().find(|a| a.deliveries != 1) {
                        bail!("emit of {} created {} deliveries, expected 1", answer.id, answer.deliveries);
                    }
                }
            })
        })
        .collect();
    let mut emit_ms = Vec::with_capacity(plan.events);
    for worker in workers {
        let times = tokio::time::timeout(plan.deadline.saturating_sub(started.elapsed()), worker)
            .await
            .context("emitting did not finish in time")???;
        emit_ms.extend(times);
    }
    Ok(emit_ms)
}

/// Waits until `tally` has every event of the plan; returns when, measured from `started`.
pub async fn wait_delivered(plan: &Plan, tally: &Tally, started: Instant) -> anyhow::Result<Duration> {
    loop {
        // The receiver stamps the moment the last missing id arrived.
        if let Some(done) = tally.complete_at() {
            return Ok(done.saturating_duration_since(started));
        }
        if started.elapsed() > plan.deadline {
            bail!("only {} of {} events delivered within {:?}", tally.distinct(), plan.events, plan.deadline);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Pages through the owner's succeeded deliveries; returns (distinct benchmark events, benchmark rows).
async fn count_succeeded(
    admin: &mut AdminServiceClient<Channel>,
    plan: &Plan,
    created_after: prost_types::Timestamp,
) -> anyhow::Result<(usize, usize)> {
    let mut seen = HashSet::new();
    let mut rows = 0;
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_deliveries(ListDeliveriesRequest {
                owner_id: plan.owner.clone(),
                status: DeliveryStatus::Succeeded as i32,
                created_after: Some(created_after),
                page_size: 100,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .context("ListDeliveries")?
            .into_inner();
        for delivery in page.deliveries {
            if let Some(n) = delivery.event_id.strip_prefix(plan.id_prefix) {
                rows += 1;
                seen.insert(n.to_owned());
            }
        }
        if page.next_page_token.is_empty() {
            return Ok((seen.len(), rows));
        }
        page_token = page.next_page_token;
    }
}
