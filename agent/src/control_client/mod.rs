//! The agent's side of the link to control: the config [`watch`] stream (snapshot, deltas, acks) and the
//! [`reports`] sender that drains the spool of attempt outcomes. Both reconnect by themselves with backoff, and
//! neither is on the emit or delivery path: the agent keeps working from its cached config while control is away.

pub mod channel;
pub mod reports;
pub mod watch;

use std::time::Duration;

/// Exponential backoff with jitter between reconnects.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Self { next: Self::FIRST }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The delay to wait now; the next one doubles, up to 5s.
    pub(crate) fn step(&mut self) -> Duration {
        let delay = self.next.mul_f64(rand::random_range(0.5..=1.0));
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }
}
