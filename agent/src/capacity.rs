//! The agent's own session limit: a start of a session the agent does not
//! run yet is refused (typed, retryable) when it would exceed the
//! `max_sessions` the agent advertises. The control plane places within that
//! limit too; this check holds even when it does not (concurrent placements,
//! a stale count).
//!
//! Commands of different sessions apply concurrently, so counting the
//! runtime's sessions is not enough: two starts could both see one free slot.
//! Admission is serialised, and a start admitted but not yet visible in the
//! runtime's inventory holds a reservation. A reservation ends when its start
//! fails, when the session is stopped, or once the runtime lists the session
//! (then the inventory counts it); a start that succeeded but whose session
//! never shows up (it died at once) stops counting after [`SETTLE`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use streamspace::v1 as pb;
use tokio::sync::Mutex;

use crate::runtime::{Runtime, RuntimeError};

/// How long a successful start counts without the runtime listing it (the
/// Kubernetes runtime's caches lag the API by a moment).
pub const SETTLE: Duration = Duration::from_secs(30);

pub struct Admission {
    agent_id: String,
    /// 0 = no limit.
    max_sessions: u32,
    /// Admitted starts: None while applying, Some(finish time) once applied.
    reserved: Mutex<HashMap<String, Option<Instant>>>,
}

impl Admission {
    pub fn new(agent_id: &str, max_sessions: u32) -> Self {
        Self {
            agent_id: agent_id.to_string(),
            max_sessions,
            reserved: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a start of `session`, or refuses it with
    /// [`FailureReason::Capacity`](pb::FailureReason::Capacity). A session the
    /// agent runs (or is starting) is always admitted: re-starts are
    /// idempotent.
    pub async fn admit(&self, rt: &dyn Runtime, session: &str) -> Result<(), RuntimeError> {
        if self.max_sessions == 0 {
            return Ok(());
        }
        let mut reserved = self.reserved.lock().await;
        let live: HashSet<String> = rt
            .inventory()
            .await?
            .into_iter()
            .map(|s| s.session_id)
            .collect();
        let now = Instant::now();
        reserved.retain(|id, done| {
            !live.contains(id) && done.is_none_or(|t| now.duration_since(t) < SETTLE)
        });
        if live.contains(session) || reserved.contains_key(session) {
            reserved.entry(session.to_string()).or_insert(None);
            return Ok(());
        }
        let n = live.len() + reserved.len();
        if n >= self.max_sessions as usize {
            return Err(RuntimeError::new(
                pb::FailureReason::Capacity,
                format!(
                    "agent {} runs {n} of {} sessions",
                    self.agent_id, self.max_sessions
                ),
                true,
            ));
        }
        reserved.insert(session.to_string(), None);
        Ok(())
    }

    /// The start of `session` finished: a failure gives its slot back at
    /// once, a success keeps it until the runtime lists the session.
    pub async fn started(&self, session: &str, ok: bool) {
        if self.max_sessions == 0 {
            return;
        }
        let mut reserved = self.reserved.lock().await;
        if ok {
            if let Some(done) = reserved.get_mut(session) {
                *done = Some(Instant::now());
            }
        } else {
            reserved.remove(session);
        }
    }

    /// The session was stopped: it no longer holds a slot.
    pub async fn stopped(&self, session: &str) {
        if self.max_sessions == 0 {
            return;
        }
        self.reserved.lock().await.remove(session);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::client::apply;
    use crate::runtime::StatusSink;
    use crate::runtime::noop::NoopRuntime;
    use pb::command_result::Outcome;

    fn start(session: &str) -> pb::Command {
        pb::Command {
            command_id: format!("start-{session}"),
            session_id: session.into(),
            action: Some(pb::command::Action::Start(pb::StartSession {
                user: "alice".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn stop(session: &str) -> pb::Command {
        pb::Command {
            command_id: format!("stop-{session}"),
            session_id: session.into(),
            action: Some(pb::command::Action::Stop(pb::StopSession::default())),
            ..Default::default()
        }
    }

    fn refused(o: &Outcome) -> bool {
        matches!(o, Outcome::Failed(f)
            if f.reason == pb::FailureReason::Capacity as i32 && f.retryable)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_starts_never_exceed_max_sessions() {
        let rt: Arc<dyn Runtime> = Arc::new(NoopRuntime::new(StatusSink::new()));
        let adm = Arc::new(Admission::new("a1", 10));
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let (rt, adm) = (rt.clone(), adm.clone());
                tokio::spawn(async move { apply(&*rt, &adm, &start(&format!("s{i}"))).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            let o = t.await.unwrap();
            match &o {
                Outcome::Succeeded(_) => ok += 1,
                o if refused(o) => {
                    let Outcome::Failed(f) = o else {
                        unreachable!()
                    };
                    assert_eq!(f.message, "agent a1 runs 10 of 10 sessions");
                }
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert_eq!(ok, 10);
        assert_eq!(rt.inventory().await.unwrap().len(), 10);
    }

    #[tokio::test]
    async fn re_starts_are_admitted_and_stops_free_slots() {
        let rt = NoopRuntime::new(StatusSink::new());
        let adm = Admission::new("a1", 2);
        for s in ["a", "b"] {
            assert!(matches!(
                apply(&rt, &adm, &start(s)).await,
                Outcome::Succeeded(_)
            ));
        }
        assert!(refused(&apply(&rt, &adm, &start("c")).await));
        // A session it runs: an idempotent re-start, never refused.
        assert!(matches!(
            apply(&rt, &adm, &start("a")).await,
            Outcome::Succeeded(_)
        ));
        assert!(matches!(
            apply(&rt, &adm, &stop("b")).await,
            Outcome::Succeeded(_)
        ));
        assert!(matches!(
            apply(&rt, &adm, &start("c")).await,
            Outcome::Succeeded(_)
        ));
    }

    #[tokio::test]
    async fn a_failed_start_gives_its_slot_back() {
        let rt = NoopRuntime::new(StatusSink::new());
        let adm = Admission::new("a1", 1);
        adm.admit(&rt, "x").await.unwrap();
        adm.started("x", false).await;
        assert!(matches!(
            apply(&rt, &adm, &start("y")).await,
            Outcome::Succeeded(_)
        ));
    }
}
