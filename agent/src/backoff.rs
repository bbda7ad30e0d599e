//! Reconnect delays: exponential backoff with full jitter and a cap, forever
//! Full jitter spreads a reconnect storm evenly over the window.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay: base * 2^attempt, at most cap.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A uniformly random delay in [0, ceiling], then doubles the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(if ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=ms)
        })
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Jumps to the cap: for refusals that only an operator can fix, which
    /// must never be retried in a tight loop.
    pub fn saturate(&mut self) {
        self.attempt = 31;
    }
}

/// Whether a stream that ended with `code` is refused for a reason a quick
/// retry cannot fix (identity, revocation, protocol version, a malformed
/// frame): then the next attempt waits up to the cap.
pub fn refusal(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        PermissionDenied | FailedPrecondition | InvalidArgument | Unauthenticated
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_wait_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        b.saturate();
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        b.next_delay();
        assert_eq!(b.ceiling(), Duration::from_secs(30), "stays at the cap");
        assert!(refusal(tonic::Code::PermissionDenied));
        assert!(refusal(tonic::Code::FailedPrecondition));
        assert!(!refusal(tonic::Code::Unavailable));
        assert!(!refusal(tonic::Code::AlreadyExists));
    }

    #[test]
    fn grows_to_cap_and_jitters_below_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceilings = vec![];
        for _ in 0..8 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d <= c, "{d:?} > {c:?}");
            ceilings.push(c.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
