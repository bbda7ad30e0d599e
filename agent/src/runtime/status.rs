//! Where runtimes report session transitions, and where the stream reads
//! them. The sink never loses the latest state: it keeps the latest status
//! of every session and the set of sessions whose latest status has not been
//! sent yet. A report overwrites the session's entry (older unsent states are
//! superseded, not queued), so the sink is bounded by the number of sessions
//! and never blocks a runtime; a session's entry is forgotten once its
//! STOPPED status was taken for sending.
//!
//! A crash observed while the agent is disconnected is therefore still known
//! when the stream is back: the stream sends a session's latest status after
//! every command result, so a result replayed from the de-duplication cache
//! is followed by what the agent observes now, not by nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use streamspace::v1 as pb;
use tokio::sync::Notify;

/// Builds a status frame stamped now.
pub fn status(
    session: &str,
    phase: pb::SessionPhase,
    url: &str,
    reason: pb::FailureReason,
    message: &str,
    workload: &str,
) -> pb::SessionStatus {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    pb::SessionStatus {
        session_id: session.to_string(),
        phase: phase as i32,
        url: url.to_string(),
        reason: reason as i32,
        message: message.to_string(),
        workload: workload.to_string(),
        observed_at: Some(prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
    }
}

/// The latest status per session, shared by the runtime (writer) and the
/// stream (reader). Cloning gives another handle on the same state.
#[derive(Clone, Default)]
pub struct StatusSink(Arc<Shared>);

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken on every report; holds a permit when nobody waits.
    changed: Notify,
}

#[derive(Default)]
struct State {
    latest: HashMap<String, pb::SessionStatus>,
    /// Sessions whose latest status is unsent, in the order they became so.
    dirty: VecDeque<String>,
    dirty_set: HashSet<String>,
}

impl State {
    /// Takes `session`'s latest status for sending: clean, and forgotten if
    /// it says STOPPED (nothing more to say about a session that is gone).
    fn take(&mut self, session: &str) -> Option<pb::SessionStatus> {
        if self.dirty_set.remove(session) {
            self.dirty.retain(|s| s != session);
        }
        let s = self.latest.get(session)?.clone();
        if s.phase == pb::SessionPhase::Stopped as i32 {
            self.latest.remove(session);
        }
        Some(s)
    }
}

impl StatusSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Two handles on one new sink: the runtime's and the stream's. (The
    /// argument is kept for callers of the former bounded channel; nothing is
    /// bounded by it any more — the sink holds one entry per session.)
    pub fn channel(_capacity: usize) -> (Self, Self) {
        let s = Self::new();
        (s.clone(), s)
    }

    /// Records the session's current state; it replaces any unsent older one.
    pub fn report(
        &self,
        session: &str,
        phase: pb::SessionPhase,
        url: &str,
        reason: pb::FailureReason,
        message: &str,
        workload: &str,
    ) {
        self.put(status(session, phase, url, reason, message, workload));
    }

    /// Records a built status frame (see [`report`](Self::report)).
    pub fn put(&self, s: pb::SessionStatus) {
        let mut st = self.0.state.lock().expect("status sink lock");
        if st.dirty_set.insert(s.session_id.clone()) {
            st.dirty.push_back(s.session_id.clone());
        }
        st.latest.insert(s.session_id.clone(), s);
        drop(st);
        self.0.changed.notify_one();
    }

    /// Resolves when something was reported since the last call (possibly
    /// already taken since: then [`take_dirty`](Self::take_dirty) is empty).
    pub async fn changed(&self) {
        self.0.changed.notified().await
    }

    /// The latest status of every session whose latest status is unsent, in
    /// the order they changed; they count as sent from now on.
    pub fn take_dirty(&self) -> Vec<pb::SessionStatus> {
        let mut st = self.0.state.lock().expect("status sink lock");
        let ids: Vec<String> = st.dirty.iter().cloned().collect();
        ids.iter().filter_map(|id| st.take(id)).collect()
    }

    /// The session's latest status, to send now (it counts as sent); None if
    /// the agent has observed nothing about it since its last STOPPED.
    pub fn take_latest(&self, session: &str) -> Option<pb::SessionStatus> {
        self.0.state.lock().expect("status sink lock").take(session)
    }

    /// Marks everything sent without sending it: a new stream starts with
    /// Hello's inventory, a snapshot taken after this, so older changes are
    /// in it. The latest states are kept (a result replayed later is followed
    /// by its session's latest state).
    pub fn clear_dirty(&self) {
        let mut st = self.0.state.lock().expect("status sink lock");
        st.dirty.clear();
        st.dirty_set.clear();
        let stopped: Vec<String> = st
            .latest
            .iter()
            .filter(|(_, s)| s.phase == pb::SessionPhase::Stopped as i32)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stopped {
            st.latest.remove(&id);
        }
    }

    /// Sessions the sink holds an entry for (a bound check for tests and
    /// operators).
    pub fn len(&self) -> usize {
        self.0.state.lock().expect("status sink lock").latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::FailureReason as R;
    use pb::SessionPhase as P;

    fn phases(v: &[pb::SessionStatus]) -> Vec<(String, i32)> {
        v.iter().map(|s| (s.session_id.clone(), s.phase)).collect()
    }

    #[test]
    fn reports_coalesce_to_the_latest_per_session() {
        let s = StatusSink::new();
        s.report("a", P::Provisioning, "", R::Unspecified, "", "");
        s.report("b", P::Provisioning, "", R::Unspecified, "", "");
        s.report("a", P::Running, "u", R::Unspecified, "", "");
        s.report("a", P::Failed, "", R::CrashLoop, "exited (3)", "");
        assert_eq!(
            phases(&s.take_dirty()),
            vec![
                ("a".into(), P::Failed as i32),
                ("b".into(), P::Provisioning as i32)
            ]
        );
        assert!(s.take_dirty().is_empty(), "taken means sent");
        assert_eq!(s.take_latest("a").unwrap().message, "exited (3)");
    }

    #[test]
    fn nothing_is_lost_while_no_stream_reads() {
        let s = StatusSink::new();
        for i in 0..10_000 {
            s.report(
                &format!("s{}", i % 100),
                P::Running,
                "",
                R::Unspecified,
                "",
                "",
            );
        }
        s.report("s7", P::Failed, "", R::CrashLoop, "died", "");
        assert_eq!(s.len(), 100, "bounded by the number of sessions");
        let all = s.take_dirty();
        assert_eq!(all.len(), 100);
        assert!(
            all.iter()
                .any(|x| x.session_id == "s7" && x.phase == P::Failed as i32)
        );
    }

    #[test]
    fn a_crash_before_a_reconnect_is_still_the_latest_state() {
        let s = StatusSink::new();
        s.report("a", P::Running, "u", R::Unspecified, "", "");
        s.take_dirty();
        // Disconnected: the process dies.
        s.report("a", P::Failed, "", R::CrashLoop, "the process exited", "");
        // Reconnect: the inventory snapshot replaces the unsent changes...
        s.clear_dirty();
        assert!(s.take_dirty().is_empty());
        // ...but a replayed result is followed by the observed state.
        assert_eq!(s.take_latest("a").unwrap().phase, P::Failed as i32);
    }

    #[test]
    fn stopped_sessions_are_forgotten_once_sent() {
        let s = StatusSink::new();
        s.report("a", P::Running, "u", R::Unspecified, "", "");
        s.report("a", P::Stopped, "", R::Unspecified, "", "");
        assert_eq!(
            phases(&s.take_dirty()),
            vec![("a".into(), P::Stopped as i32)]
        );
        assert!(s.is_empty());
        assert!(s.take_latest("a").is_none());
    }

    #[tokio::test]
    async fn a_report_wakes_the_reader_even_if_it_was_not_waiting() {
        let s = StatusSink::new();
        s.report("a", P::Running, "u", R::Unspecified, "", "");
        tokio::time::timeout(std::time::Duration::from_secs(5), s.changed())
            .await
            .expect("the permit was kept");
    }
}
