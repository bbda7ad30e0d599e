//! Per-caller limits on the API listener: a request rate (a token bucket per
//! user) and a number of concurrent `WatchSessions` streams. A caller over a
//! limit gets `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` detail saying
//! when to try again; other callers are not affected.
//!
//! On the agent listener, a [`Pacer`] per stream bounds how fast one agent's
//! frames are handled: above the rate the stream's reader waits, so HTTP/2
//! flow control pushes back on that agent alone.
//!
//! Buckets live in memory, one per user, created on first use and dropped once
//! full and idle, so the table stays as small as the set of recent callers.
//! Time is `tokio::time::Instant`, so tests can run it with paused time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Limits of one API listener.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    /// Requests per second each caller may sustain (0 = no limit).
    pub rate: f64,
    /// Requests a caller may make at once above the rate.
    pub burst: u32,
    /// Concurrent WatchSessions streams per caller (0 = no limit).
    pub max_watches: u32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            rate: 100.0,
            burst: 200,
            max_watches: 16,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets above this many prompt dropping the ones that are full again.
const PRUNE_AT: usize = 4096;

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<String, Bucket>,
    watches: HashMap<String, u32>,
}

/// The limits shared by every service of the API listener.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    cfg: LimitConfig,
    state: Arc<Mutex<State>>,
}

fn exhausted(message: String, retry_after: Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

impl ApiLimits {
    pub fn new(cfg: LimitConfig) -> Self {
        Self {
            cfg,
            state: Arc::default(),
        }
    }

    /// Takes one request from `user`'s bucket, or says when one is available.
    pub fn admit(&self, user: &str) -> Result<(), Status> {
        if self.cfg.rate <= 0.0 {
            return Ok(());
        }
        let burst = f64::from(self.cfg.burst.max(1));
        let now = Instant::now();
        let mut st = self.state.lock().expect("limits lock");
        if st.buckets.len() >= PRUNE_AT {
            let rate = self.cfg.rate;
            st.buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = st.buckets.entry(user.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * self.cfg.rate;
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - b.tokens) / self.cfg.rate);
        Err(exhausted(
            format!(
                "request rate limit: at most {} requests per second (burst {}) per caller; retry in {} ms",
                self.cfg.rate,
                self.cfg.burst,
                wait.as_millis().max(1)
            ),
            wait,
        ))
    }

    /// Counts one more watch for `user`; the guard gives it back when dropped.
    pub fn watch(&self, user: &str) -> Result<WatchGuard, Status> {
        let mut st = self.state.lock().expect("limits lock");
        let n = st.watches.entry(user.to_string()).or_insert(0);
        if self.cfg.max_watches > 0 && *n >= self.cfg.max_watches {
            return Err(exhausted(
                format!(
                    "watch limit: at most {} concurrent WatchSessions streams per caller; close one first",
                    self.cfg.max_watches
                ),
                Duration::from_secs(1),
            ));
        }
        *n += 1;
        Ok(WatchGuard {
            user: user.to_string(),
            state: self.state.clone(),
        })
    }
}

/// One open watch; dropping it (the stream ended) frees the slot.
#[derive(Debug)]
pub struct WatchGuard {
    user: String,
    state: Arc<Mutex<State>>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut st = self.state.lock().expect("limits lock");
        if let Some(n) = st.watches.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.watches.remove(&self.user);
            }
        }
    }
}

/// Paces one agent stream's frames: `rate` per second after a `burst`.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Pacer {
    /// A pacer; `rate` 0 never waits.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes a token for the frame just handled, waiting until there is one.
    pub async fn pace(&mut self) {
        if self.rate <= 0.0 {
            return;
        }
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return;
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate);
        tokio::time::sleep(wait).await;
        self.tokens = 0.0;
        self.at = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: u32, max_watches: u32) -> ApiLimits {
        ApiLimits::new(LimitConfig {
            rate,
            burst,
            max_watches,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_over_its_rate_is_told_when_to_retry_and_others_are_not_affected() {
        let l = limits(10.0, 5, 0);
        for _ in 0..5 {
            l.admit("alice").unwrap();
        }
        let refused = l.admit("alice").unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(
            refused.message().contains("10 requests per second"),
            "{refused:?}"
        );
        let retry = refused.get_details_retry_info().expect("retry info");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(100)));
        l.admit("bob").unwrap();
        tokio::time::advance(Duration::from_millis(100)).await;
        l.admit("alice").unwrap();
        assert!(l.admit("alice").is_err());
        // A second later the bucket holds 5 again (the burst), not 10.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..5 {
            l.admit("alice").unwrap();
        }
        assert!(l.admit("alice").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_zero_means_no_limit() {
        let l = limits(0.0, 1, 0);
        for _ in 0..10_000 {
            l.admit("alice").unwrap();
        }
    }

    #[test]
    fn watches_are_counted_per_caller_and_given_back() {
        let l = limits(0.0, 1, 2);
        let a = l.watch("alice").unwrap();
        let _b = l.watch("alice").unwrap();
        let refused = l.watch("alice").unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.message().contains("at most 2"), "{refused:?}");
        l.watch("bob").unwrap();
        drop(a);
        l.watch("alice").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_pacer_lets_a_burst_through_then_holds_the_rate() {
        let mut p = Pacer::new(100.0, 10);
        let start = Instant::now();
        for _ in 0..10 {
            p.pace().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst does not wait");
        for _ in 0..100 {
            p.pace().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(990) && took <= Duration::from_millis(1010),
            "100 frames over the burst at 100/s took {took:?}"
        );
        let mut free = Pacer::new(0.0, 1);
        let t = Instant::now();
        for _ in 0..1000 {
            free.pace().await;
        }
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_full_buckets_are_dropped() {
        let l = limits(1000.0, 1, 0);
        for i in 0..PRUNE_AT {
            l.admit(&format!("u{i}")).unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        l.admit("last").unwrap();
        assert!(l.state.lock().unwrap().buckets.len() < 10);
    }
}
