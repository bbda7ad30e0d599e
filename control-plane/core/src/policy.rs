//! Session policies the control plane enforces on its own: the idle timeout
//! (hibernate) and the maximum duration (terminate, with a warning before).
//! Pure functions over a [`Session`] and the time; the lifecycle runs them
//! inside store transitions, so each decision is taken on the stored state
//! and a restart keeps every deadline (the times they count from are
//! stored: `last_activity_ms`, `running_since_ms`, `ran_ms`).
//!
//! Time is counted as follows:
//! - Activity: becoming RUNNING, `TouchSession`, and heartbeats of the
//!   session's agent that list it as active. The idle timeout counts from the
//!   last of these, only while the session is RUNNING and wanted RUNNING.
//! - Running time: the sum of the periods in phase RUNNING; hibernated,
//!   provisioning or failed time does not count.

use crate::model::{Desired, Millis, Phase, Session};

/// Condition set when the idle timeout hibernated the session.
pub const IDLE: &str = "Idle";
/// Its reason.
pub const IDLE_TIMEOUT: &str = "IdleTimeout";
/// Condition set as the maximum duration approaches, and when it is reached.
pub const EXPIRING: &str = "Expiring";
/// Reason of [`EXPIRING`] during the warning period.
pub const MAX_DURATION_SOON: &str = "MaxDurationSoon";
/// Reason of [`EXPIRING`] once the session is terminated for it.
pub const MAX_DURATION_REACHED: &str = "MaxDurationReached";

/// Keeps the policy clocks of `after` (the session about to be written) in
/// step with its phase change from `before`.
pub fn account(before: Option<&Session>, after: &mut Session, now: Millis) {
    let was_running = before.is_some_and(|b| b.phase == Phase::Running);
    let is_running = after.phase == Phase::Running;
    match (was_running, is_running) {
        (false, true) => {
            after.running_since_ms = now;
            // Becoming RUNNING (start, wake) is activity.
            after.last_activity_ms = after.last_activity_ms.max(now);
        }
        (true, false) => {
            if after.running_since_ms > 0 {
                after.ran_ms += (now - after.running_since_ms).max(0);
            }
            after.running_since_ms = 0;
        }
        _ => {}
    }
}

/// RUNNING time of `s` up to `now`.
pub fn running_time(s: &Session, now: Millis) -> Millis {
    let current = if s.phase == Phase::Running && s.running_since_ms > 0 {
        (now - s.running_since_ms).max(0)
    } else {
        0
    };
    s.ran_ms + current
}

/// What a policy requires of a session now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Hibernate: no activity for `idle_ms`.
    Idle { idle_ms: Millis },
    /// Terminate: RUNNING for `ran_ms` in total.
    MaxDuration { ran_ms: Millis },
    /// Warn: the maximum duration is `left_ms` away.
    Warn { left_ms: Millis },
}

/// The policy `s` is due for at `now`, if any (`warning_ms`: how long
/// before the maximum duration the warning appears). The maximum duration
/// comes first; a session warned once is not warned again.
pub fn due(s: &Session, now: Millis, warning_ms: Millis) -> Option<Due> {
    if s.desired != Desired::Running || s.phase != Phase::Running {
        return None;
    }
    let t = s.workload.timeouts;
    let max_ms = secs_ms(t.max_secs);
    if max_ms > 0 {
        let ran_ms = running_time(s, now);
        if ran_ms >= max_ms {
            return Some(Due::MaxDuration { ran_ms });
        }
        let left_ms = max_ms - ran_ms;
        let warned = s.condition(EXPIRING).is_some_and(|c| c.status);
        if left_ms <= warning_ms && !warned {
            return Some(Due::Warn { left_ms });
        }
    }
    let idle_limit = secs_ms(t.idle_secs);
    if idle_limit > 0 {
        let since = s.last_activity_ms.max(s.running_since_ms);
        let idle_ms = now - since;
        if idle_ms >= idle_limit {
            return Some(Due::Idle { idle_ms });
        }
    }
    None
}

/// When `s` is next due (for a sweeper's sleep), if it ever is.
pub fn next_due(s: &Session, now: Millis, warning_ms: Millis) -> Option<Millis> {
    if s.desired != Desired::Running || s.phase != Phase::Running {
        return None;
    }
    let t = s.workload.timeouts;
    let mut next: Option<Millis> = None;
    let mut at = |m: Millis| next = Some(next.map_or(m, |n| n.min(m)));
    let max_ms = secs_ms(t.max_secs);
    if max_ms > 0 {
        let left = max_ms - running_time(s, now);
        at(now + left.max(0));
        let warned = s.condition(EXPIRING).is_some_and(|c| c.status);
        if !warned {
            at(now + (left - warning_ms).max(0));
        }
    }
    let idle_limit = secs_ms(t.idle_secs);
    if idle_limit > 0 {
        at(s.last_activity_ms.max(s.running_since_ms) + idle_limit);
    }
    next
}

fn secs_ms(secs: u64) -> Millis {
    i64::try_from(secs)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .unwrap_or(Millis::MAX)
}

/// A duration in milliseconds as people read it ("3s", "2m5s", "1h0m3s").
pub fn shown(ms: Millis) -> String {
    let s = ms.max(0) / 1000;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, sec) => format!("{h}h{m}m{sec}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timeouts;
    use proptest::prelude::*;

    fn running(idle: u64, max: u64, since: Millis) -> Session {
        let mut s = Session::named("s", Desired::Running, Phase::Pending);
        s.workload.timeouts = Timeouts {
            idle_secs: idle,
            max_secs: max,
        };
        let before = s.clone();
        s.phase = Phase::Running;
        account(Some(&before), &mut s, since);
        s
    }

    #[test]
    fn idle_counts_from_the_last_activity() {
        let mut s = running(3, 0, 1_000);
        assert_eq!(due(&s, 3_999, 0), None);
        assert_eq!(due(&s, 4_000, 0), Some(Due::Idle { idle_ms: 3_000 }));
        s.last_activity_ms = 3_500;
        assert_eq!(due(&s, 4_000, 0), None);
        assert_eq!(next_due(&s, 4_000, 0), Some(6_500));
    }

    #[test]
    fn only_running_sessions_wanted_running_are_due() {
        let mut s = running(3, 5, 0);
        s.desired = Desired::Hibernated;
        assert_eq!(due(&s, 100_000, 0), None);
        let mut s = running(3, 5, 0);
        let before = s.clone();
        s.phase = Phase::Hibernated;
        account(Some(&before), &mut s, 2_000);
        assert_eq!(due(&s, 100_000, 0), None);
        assert_eq!(next_due(&s, 100_000, 0), None);
    }

    #[test]
    fn running_time_excludes_hibernation_and_warns_once() {
        let mut s = running(0, 10, 1_000);
        // 4 s running, hibernated for an hour, running again.
        let b = s.clone();
        s.phase = Phase::Hibernated;
        account(Some(&b), &mut s, 5_000);
        let b = s.clone();
        s.phase = Phase::Running;
        account(Some(&b), &mut s, 3_605_000);
        assert_eq!(running_time(&s, 3_606_000), 5_000);
        assert_eq!(due(&s, 3_606_000, 2_000), None);
        assert_eq!(
            due(&s, 3_609_000, 2_000),
            Some(Due::Warn { left_ms: 2_000 })
        );
        s.set_condition(EXPIRING, true, MAX_DURATION_SOON, "");
        assert_eq!(due(&s, 3_610_000, 2_000), None, "warned once");
        assert_eq!(
            due(&s, 3_611_000, 2_000),
            Some(Due::MaxDuration { ran_ms: 10_000 })
        );
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(shown(3_000), "3s");
        assert_eq!(shown(125_000), "2m5s");
        assert_eq!(shown(3_603_000), "1h0m3s");
    }

    proptest! {
        /// Whatever the phase changes and their times: running time never
        /// decreases, never exceeds the wall time, and a session is never
        /// due before `next_due` says.
        #[test]
        fn clocks_are_monotonic_and_next_due_is_never_late(
            steps in proptest::collection::vec((0i64..5_000, any::<bool>()), 1..30),
            idle in 0u64..10,
            max in 0u64..30,
        ) {
            let mut s = running(idle, max, 1);
            let mut now = 1;
            let mut last_ran = 0;
            for (dt, run) in steps {
                let next = next_due(&s, now, 1_000);
                now += dt;
                if let Some(n) = next
                    && now < n
                {
                    prop_assert!(due(&s, now, 1_000).is_none(), "due before {n} at {now}");
                }
                let b = s.clone();
                s.phase = if run { Phase::Running } else { Phase::Hibernated };
                account(Some(&b), &mut s, now);
                let ran = running_time(&s, now);
                prop_assert!(ran >= last_ran);
                prop_assert!(ran <= now);
                last_ran = ran;
            }
        }
    }
}
