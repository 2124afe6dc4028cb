//! The decision after an attempt: done, try again later (and when), or give up, always with the reason.

use std::time::Duration;

use hookrelay_common::model::RETRY_JITTER;
use rand::Rng;

use super::attempt::AttemptResult;

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The receiver answered 2xx.
    Succeeded,
    /// Try again after `delay`.
    Retry { delay: Duration, reason: String },
    /// Stop: the delivery has failed.
    GiveUp { reason: String },
    /// Stop, and disable the endpoint: the receiver answered 410 Gone.
    Gone { reason: String },
}

/// Decides after attempt number `attempt` (1-based) with the endpoint's retry schedule.
pub fn decide(result: &AttemptResult, attempt: u32, schedule: &[Duration]) -> Decision {
    let reason = match (result.status, &result.error) {
        (Some(status), _) if (200..300).contains(&status) => return Decision::Succeeded,
        (Some(410), _) => {
            return Decision::Gone { reason: "status 410 Gone: the receiver asked for no more deliveries".to_owned() };
        }
        (Some(status), _) if (300..400).contains(&status) => format!("status {status}: redirects are not followed"),
        (Some(status), _) => format!("status {status}"),
        (None, Some(error)) => format!("{}: {}", error.class, error.message),
        (None, None) => "no response".to_owned(),
    };
    let Some(&step) = schedule.get(attempt.saturating_sub(1) as usize) else {
        return Decision::GiveUp { reason: format!("{reason}; gave up after {attempt} attempts") };
    };
    let mut delay = jitter(step);
    if let (Some(429 | 503), Some(retry_after)) = (result.status, result.retry_after) {
        let largest = schedule.iter().max().copied().unwrap_or(step);
        delay = delay.max(retry_after.min(largest));
    }
    Decision::Retry { delay, reason: format!("{reason}; retrying in {}ms", delay.as_millis()) }
}

/// `step` moved by up to ±20%.
fn jitter(step: Duration) -> Duration {
    let factor = rand::rng().random_range(1.0 - RETRY_JITTER..=1.0 + RETRY_JITTER);
    step.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::attempt::AttemptError;

    fn status(code: u16) -> AttemptResult {
        AttemptResult { status: Some(code), ..AttemptResult::default() }
    }

    #[test]
    fn success_retry_and_give_up() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(300)];
        assert_eq!(decide(&status(204), 1, &schedule), Decision::Succeeded);
        let Decision::Retry { delay, reason } = decide(&status(500), 1, &schedule) else { panic!() };
        assert!((4_000..=6_000).contains(&(delay.as_millis() as u64)), "{delay:?}");
        assert!(reason.starts_with("status 500; retrying in"), "{reason}");
        let Decision::Retry { delay, .. } = decide(&status(500), 2, &schedule) else { panic!() };
        assert!(delay >= Duration::from_secs(240));
        let Decision::GiveUp { reason } = decide(&status(500), 3, &schedule) else { panic!() };
        assert_eq!(reason, "status 500; gave up after 3 attempts");
    }

    #[test]
    fn gone_stops_at_once() {
        let Decision::Gone { reason } = decide(&status(410), 1, &[Duration::from_secs(5)]) else { panic!() };
        assert!(reason.contains("410 Gone"), "{reason}");
    }

    #[test]
    fn redirects_fail_and_errors_carry_their_class() {
        let schedule = [Duration::from_millis(10)];
        let Decision::Retry { reason, .. } = decide(&status(302), 1, &schedule) else { panic!() };
        assert!(reason.starts_with("status 302: redirects are not followed"), "{reason}");
        let timeout = AttemptResult {
            error: Some(AttemptError { class: "timeout", message: "no answer within 15s".into() }),
            ..AttemptResult::default()
        };
        let Decision::GiveUp { reason } = decide(&timeout, 2, &schedule) else { panic!() };
        assert!(reason.starts_with("timeout: no answer within 15s"), "{reason}");
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_largest_step() {
        let schedule = [Duration::from_secs(1), Duration::from_secs(60)];
        let mut busy = status(429);
        busy.retry_after = Some(Duration::from_secs(30));
        let Decision::Retry { delay, .. } = decide(&busy, 1, &schedule) else { panic!() };
        assert_eq!(delay, Duration::from_secs(30));
        busy.retry_after = Some(Duration::from_secs(3600));
        let Decision::Retry { delay, .. } = decide(&busy, 1, &schedule) else { panic!() };
        assert_eq!(delay, Duration::from_secs(60));
    }
}
