//! Emitting a phase's events to the agent at the benchmark's concurrency, and phase (b), end to end:
//! until the receiver has every one **and** control lists every delivery as succeeded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hookrelay_common::proto::v1::admin_service_client::AdminServiceClient;
use hookrelay_common::proto::v1::{DeliveryStatus, EmitRequest, ListDeliveriesRequest};
use hookrelay_common::time::{now_ms, to_timestamp};
use tonic::transport::Channel;

use crate::emitter::Emitter;
use crate::payload;
use crate::sink::{Sink, Tally};

/// What phase (b) measured.
pub struct Outcome {
    /// First emit → the receiver had every event.
    pub delivered: Duration,
    /// First emit → control listed every delivery as succeeded (observed at the end of the listing pass that found
    /// the last one).
    pub recorded: Duration,
    /// How long that last listing pass took (the resolution of `recorded`).
    pub listing_pass: Duration,
    /// Emit round trips (milliseconds), one per call.
    pub emit_ms: Vec<f64>,
    /// Succeeded deliveries control listed for the events, beyond one per event.
    pub control_duplicates: usize,
}

/// What to emit in a phase.
#[derive(Clone)]
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
    emitters: &[Emitter],
    mut admin: AdminServiceClient<Channel>,
    sink: Arc<Sink>,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let emitted = emit(plan, emitters, started).await?;
    eprintln!("hookrelay-bench: {} events emitted in {:?}", plan.events, started.elapsed());
    let delivered = wait_delivered(plan, sink.tally(plan.id_prefix), started).await?;
    eprintln!("hookrelay-bench: every event delivered after {delivered:?}");

    // Recorded: listing passes until control has listed every delivery as succeeded. A delivery listed as succeeded
    // stays so, so each pass after the first lists only from the earliest event still missing (emitted at most a
    // second before its delivery was created), and takes milliseconds rather than a full pass over the run.
    let mut succeeded = Succeeded::default();
    let mut from_ms = emitted.sent_at_ms.iter().copied().min().unwrap_or_else(now_ms);
    loop {
        let pass_started = Instant::now();
        list_succeeded(&mut admin, plan, from_ms.saturating_sub(1000), &mut succeeded).await?;
        if succeeded.events.len() >= plan.events {
            return Ok(Outcome {
                delivered,
                recorded: started.elapsed(),
                listing_pass: pass_started.elapsed(),
                emit_ms: emitted.call_ms,
                control_duplicates: succeeded.deliveries - succeeded.events.len(),
            });
        }
        if started.elapsed() > plan.deadline {
            bail!(
                "control recorded {} of {} deliveries within {:?}",
                succeeded.events.len(),
                plan.events,
                plan.deadline
            );
        }
        let missing = (0..plan.events).filter(|n| !succeeded.events.contains_key(n));
        from_ms = missing.map(|n| emitted.sent_at_ms[n]).min().unwrap_or(from_ms);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the emit workers measured.
pub struct Emitted {
    /// Round trip of each call (ms).
    pub call_ms: Vec<f64>,
    /// When the call carrying each event (by its number) was sent, in unix ms.
    pub sent_at_ms: Vec<u64>,
}

/// Emits the plan's events with `concurrency` workers spread over `emitters`.
pub async fn emit(plan: &Plan, emitters: &[Emitter], started: Instant) -> anyhow::Result<Emitted> {
    let sent_at_ms: Arc<Vec<AtomicU64>> = Arc::new((0..plan.events).map(|_| AtomicU64::new(0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..plan.concurrency)
        .map(|worker| {
            let mut emitter = emitters[worker % emitters.len()].clone();
            let (next, sent_at_ms) = (next.clone(), sent_at_ms.clone());
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
                    let sent_ms = now_ms();
                    for n in first..(first + batch).min(events) {
                        sent_at_ms[n].store(sent_ms, Ordering::Relaxed);
                    }
                    let answers = emitter.emit(requests).await?;
                    emit_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                    if let Some(answer) = answers.iter().find(|a| a.deliveries != 1) {
                        bail!("emit of {} created {} deliveries, expected 1", answer.id, answer.deliveries);
                    }
                }
            })
        })
        .collect();
    let mut call_ms = Vec::with_capacity(plan.events);
    for worker in workers {
        let times = tokio::time::timeout(plan.deadline.saturating_sub(started.elapsed()), worker)
            .await
            .context("emitting did not finish in time")???;
        call_ms.extend(times);
    }
    let sent_at_ms = sent_at_ms.iter().map(|at| at.load(Ordering::Relaxed)).collect();
    Ok(Emitted { call_ms, sent_at_ms })
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

/// The plan's deliveries control listed as succeeded so far.
#[derive(Default)]
struct Succeeded {
    /// Event number → its succeeded delivery ids.
    events: HashMap<usize, HashSet<String>>,
    /// Distinct succeeded delivery ids of the plan's events.
    deliveries: usize,
}

/// Pages through the owner's succeeded deliveries created at or after `from_ms`, adding the plan's to `succeeded`.
async fn list_succeeded(
    admin: &mut AdminServiceClient<Channel>,
    plan: &Plan,
    from_ms: u64,
    succeeded: &mut Succeeded,
) -> anyhow::Result<()> {
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_deliveries(ListDeliveriesRequest {
                owner_id: plan.owner.clone(),
                status: DeliveryStatus::Succeeded as i32,
                created_after: Some(to_timestamp(from_ms)),
                page_size: 100,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .context("ListDeliveries")?
            .into_inner();
        for delivery in page.deliveries {
            let Some(n) = delivery.event_id.strip_prefix(plan.id_prefix).and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            if n < plan.events && succeeded.events.entry(n).or_default().insert(delivery.id) {
                succeeded.deliveries += 1;
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}
