//! Phase (a): the ceiling. The same number of Standard-Webhooks-signed POSTs sent straight to the receiver by one
//! pooled hyper client at the benchmark's concurrency, as a well-built sender without queue or control would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hookrelay_common::signing::{Secret, Signer};
use hookrelay_tests::signed::{pooled_client, webhook_post};
use http_body_util::BodyExt as _;

use crate::payload;
use crate::sink::Sink;

/// Sends `events` signed POSTs with `concurrency` workers; returns the time from the first send until the receiver
/// had every id.
pub async fn run(
    receiver: SocketAddr,
    sink: Arc<Sink>,
    events: usize,
    concurrency: usize,
    payload_bytes: usize,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let client = pooled_client(concurrency);
    let signer = Signer::new(&[Secret::generate()]);
    let url: http::Uri = format!("http://{receiver}/hook").parse()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, signer, url, next) = (client.clone(), signer.clone(), url.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= events {
                        return anyhow::Ok(());
                    }
                    let id = format!("{}{n}", crate::BASELINE);
                    let body = Bytes::from(payload::make(n, payload_bytes));
                    let request = webhook_post(&url, &signer, &id, body)?;
                    let response = client.request(request).await.context("baseline POST")?;
                    if !response.status().is_success() {
                        bail!("the receiver answered {}", response.status());
                    }
                    response.into_body().collect().await?;
                }
            })
        })
        .collect();
    for worker in workers {
        tokio::time::timeout(deadline.saturating_sub(started.elapsed()), worker)
            .await
            .context("baseline did not finish in time")???;
    }
    let done =
        sink.tally(crate::BASELINE).complete_at().context("the receiver did not count every baseline request")?;
    Ok(done - started)
}
