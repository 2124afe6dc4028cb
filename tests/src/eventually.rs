//! Waiting for a condition instead of sleeping: poll a check at short intervals until it holds or a deadline
//! passes, then fail with what the check saw last. Tests never synchronise with fixed sleeps.

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Ok`, and returns that value. `check` returns `Err(observed state)` while the
/// condition does not hold yet; after `deadline` the test panics with `what` and the last observed state.
/// Intervals start at 10 ms and grow to 100 ms.
pub async fn eventually<T>(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    let mut interval = Duration::from_millis(10);
    let mut polls = 0u32;
    loop {
        polls += 1;
        let last = match check().await {
            Ok(value) => return value,
            Err(observed) => observed,
        };
        if started.elapsed() >= deadline {
            panic!("timed out after {deadline:?} ({polls} checks) waiting until {what}; last observed: {last}");
        }
        tokio::time::sleep(interval.min(deadline.saturating_sub(started.elapsed()))).await;
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}

/// Asserts that an (async) boolean condition becomes true within [`crate::DEADLINE`]; the message (format
/// arguments, evaluated at each check) should describe the state to help a failure make sense.
///
/// ```text
/// assert_eventually!(receiver.count() >= 3, "receiver saw {:?}", receiver.summary());
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($arg:tt)+) => {
        $crate::eventually::eventually(stringify!($cond), $crate::DEADLINE, async || {
            if $cond { Ok(()) } else { Err(format!($($arg)+)) }
        })
        .await
    };
}

/// Runs `open` until the directory it opens is no longer locked, for at most 10 s: right after a sled database in
/// this process was dropped, sled's own background flush thread can still hold the lock for a moment (a new process
/// never meets this). Any other outcome is returned as it is.
pub fn when_unlocked<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open() {
            Err(error) if error.to_string().contains("could not acquire lock") => {
                assert!(Instant::now() < deadline, "the database stayed locked: {error}");
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}
