//! The agent's side of the link to control: the config [`watch`] stream (snapshot, deltas, acks) and the
//! [`reports`] sender that drains the spool of attempt outcomes. Neither is on the emit or delivery path: the agent
//! keeps working from its cached config while control is away.
//!
//! Control may run as several replicas: `--control-url` lists one URL per replica, and a host name stands for every
//! address it resolves to ([`replicas`]). The stream and the sender each keep to the replica that answers; when a
//! call fails or the stream breaks they move on to the next replica, waiting a jittered delay (`Backoff`) that
//! doubles after each full round of failures and starts over once a replica answers. [`channel`] builds the
//! connection to one replica (TLS, agent token).

pub mod channel;
pub mod replicas;
pub mod reports;
pub mod watch;

use std::time::Duration;

/// The delay before the next attempt to reach control: exponential, bounded, jittered so that agents that lost the
/// same replica at the same moment do not all reach for the next one in step.
#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);
    /// Each delay is the base times a factor drawn from 1 ± this.
    const JITTER: f64 = 0.2;

    pub(crate) fn new() -> Self {
        Self { base: Self::FIRST }
    }

    /// Back to the first, shortest delay.
    pub(crate) fn reset(&mut self) {
        self.base = Self::FIRST;
    }

    /// The delay to wait now: the base, jittered.
    pub(crate) fn delay(&self) -> Duration {
        self.base.mul_f64(rand::random_range(1.0 - Self::JITTER..=1.0 + Self::JITTER))
    }

    /// Doubles the base, up to [`Self::MAX`].
    pub(crate) fn grow(&mut self) {
        self.base = (self.base * 2).min(Self::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(delay: Duration, base_ms: u64) -> bool {
        let (low, high) = (base_ms as f64 * 0.8, base_ms as f64 * 1.2);
        (low..=high).contains(&(delay.as_secs_f64() * 1000.0))
    }

    #[test]
    fn delays_double_from_100ms_to_5s_with_20_percent_jitter() {
        let mut backoff = Backoff::new();
        for base_ms in [100, 200, 400, 800, 1600, 3200, 5000, 5000] {
            let delays: Vec<Duration> = (0..200).map(|_| backoff.delay()).collect();
            assert!(delays.iter().all(|delay| within(*delay, base_ms)), "base {base_ms} ms: {delays:?}");
            let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
            // 200 draws from ±20% spread over more than a quarter of the range unless the jitter is broken.
            assert!(
                *max - *min > Duration::from_millis(base_ms) / 10,
                "base {base_ms} ms not jittered: {min:?}..{max:?}"
            );
            backoff.grow();
        }
        backoff.reset();
        assert!(within(backoff.delay(), 100));
    }
}
