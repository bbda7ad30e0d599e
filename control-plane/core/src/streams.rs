//! What an agent's stream asks of the core: attach (with the fencing rules),
//! the next commands to send, heartbeats, the stream's state, and detach. The
//! gRPC adapter translates frames into these calls and knows nothing of the
//! store or the roster behind them.
//!
//! The core also remembers, per agent, which session (and trace) each
//! delivered command belongs to, so a result is applied with no extra read of
//! its command (the
//! command path is hot: one statement per claim, ack or result). The memory is
//! only a cache: a miss (a command delivered before a restart, or forgotten
//! when the memory filled up) falls back to the store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::lifecycle::{Lifecycle, LifecycleError};
use super::model::{AgentRecord, Capacity, Command, Revocation, now_ms};
use super::roster::{AgentHello, AttachRefused, Registration};

/// Most delivered commands remembered per agent; the memory of an agent is
/// forgotten as a whole when it would exceed this (commands whose result never
/// comes would otherwise stay forever).
const DELIVERED_MEMORY: usize = 4096;

/// What the core remembers of a delivered command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveredCommand {
    pub session: String,
    /// The command's `traceparent` ("" when it has none).
    pub trace: String,
}

/// Command id -> what was delivered to each agent.
#[derive(Default)]
pub(crate) struct Delivered {
    by_agent: Mutex<HashMap<String, HashMap<String, DeliveredCommand>>>,
}

impl Delivered {
    fn remember(&self, agent: &str, cmds: &[Command]) {
        if cmds.is_empty() {
            return;
        }
        let mut all = self.by_agent.lock().expect("delivered lock");
        let d = all.entry(agent.to_string()).or_default();
        if d.len() + cmds.len() > DELIVERED_MEMORY {
            d.clear();
        }
        d.extend(cmds.iter().map(|c| {
            let what = DeliveredCommand {
                session: c.session.clone(),
                trace: c.trace_context.clone(),
            };
            (c.id.clone(), what)
        }));
    }

    /// `agent`'s delivered command `cmd_id`, forgotten once taken.
    pub(crate) fn take(&self, agent: &str, cmd_id: &str) -> Option<DeliveredCommand> {
        let mut all = self.by_agent.lock().expect("delivered lock");
        all.get_mut(agent).and_then(|d| d.remove(cmd_id))
    }

    fn forget(&self, agent: &str) {
        self.by_agent.lock().expect("delivered lock").remove(agent);
    }
}

/// Why an agent could not attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The attach rules refused the stream (a healthy one exists, or a stale
    /// fencing token).
    #[error(transparent)]
    Refused(#[from] AttachRefused),
    /// The agent id or its certificate is on the deny list.
    #[error("{0}")]
    Revoked(Revocation),
    #[error(transparent)]
    Failed(#[from] LifecycleError),
}

impl Lifecycle {
    /// Attaches a stream for `hello.id`: refuses a revoked agent id or
    /// certificate, applies the attach rules against the highest fencing
    /// token the store remembers, then records the agent. The deny list is
    /// read again once the stream is registered: a revocation written in
    /// between either finds the stream in the roster or is found here.
    /// The caller then reports the agent's inventory with `attached`.
    pub async fn attach(&self, hello: &AgentHello) -> Result<Registration, AttachError> {
        if let Some(r) = self.revoked(&hello.id, &hello.cert_serial).await? {
            return Err(AttachError::Revoked(r));
        }
        let store = self.store();
        let seen = store
            .get_agent(&hello.id)
            .await
            .map_err(LifecycleError::from)?
            .map(|a| a.fencing_token.max(0) as u64)
            .unwrap_or(0);
        let reg = self
            .roster()
            .register(hello.clone(), seen, Instant::now())?;
        let record = AgentRecord {
            id: hello.id.clone(),
            platform: hello.platform.clone(),
            region: hello.region.clone(),
            capacity: hello.capacity,
            version: hello.version.clone(),
            fencing_token: hello.fencing_token as i64,
            last_seen_ms: now_ms(),
            replica_id: self.replica_id().to_string(),
            stream_epoch: 0,
        };
        // From here on, a replica that held the agent before claims nothing.
        match store.take_over_agent(&record).await {
            Ok(epoch) => self.roster().set_epoch(&hello.id, reg.conn_id, epoch),
            Err(e) => {
                self.roster().unregister(&hello.id, reg.conn_id);
                return Err(LifecycleError::from(e).into());
            }
        }
        match self.revoked(&hello.id, &hello.cert_serial).await {
            Ok(None) => Ok(reg),
            Ok(Some(r)) => {
                self.roster().unregister(&hello.id, reg.conn_id);
                Err(AttachError::Revoked(r))
            }
            Err(e) => {
                self.roster().unregister(&hello.id, reg.conn_id);
                Err(e.into())
            }
        }
    }

    /// Stream `conn_id` of `agent` ended. If it was still the agent's
    /// stream, the agent is offline: forget what it was delivered and record
    /// when it was last seen. A replaced stream's end changes nothing.
    pub async fn detach(&self, agent: &str, conn_id: u64) {
        let epoch = self.roster().epoch(agent, conn_id);
        if !self.roster().unregister(agent, conn_id) {
            return;
        }
        self.delivered.forget(agent);
        if let Some(epoch) = epoch {
            let _ = self.store().release_agent(agent, epoch, now_ms()).await;
        }
    }

    /// The commands to send `agent` on stream `conn_id` now: its pending
    /// commands, oldest first, marked delivered so that at most `window` are
    /// outstanding at once. Fails with [`LifecycleError::Aborted`] when the
    /// stream is no longer the agent's stream here; a stream that another
    /// replica took over claims nothing (the store fences it) and is closed
    /// by [`Lifecycle::enforce_holds`].
    pub async fn next_commands(
        &self,
        agent: &str,
        conn_id: u64,
        window: u32,
    ) -> Result<Vec<Command>, LifecycleError> {
        let superseded = || {
            LifecycleError::Aborted(format!(
                "agent {agent}: another stream took the agent over; this one is closed"
            ))
        };
        let epoch = self.roster().epoch(agent, conn_id).ok_or_else(superseded)?;
        let cmds = self
            .store()
            .claim_commands(agent, epoch, window, now_ms())
            .await?;
        self.delivered.remember(agent, &cmds);
        Ok(cmds)
    }

    /// A heartbeat on stream `conn_id` (ignored if it is no longer the agent's stream).
    pub fn heartbeat(&self, agent: &str, conn_id: u64, seq: u64, in_use: Capacity) {
        self.roster()
            .heartbeat(agent, conn_id, seq, in_use, Instant::now());
    }

    /// Why a revocation closed stream `conn_id` of `agent`, if one did.
    pub fn revoked_stream(&self, agent: &str, conn_id: u64) -> Option<String> {
        self.roster().revoked(agent, conn_id)
    }

    /// Whether stream `conn_id` is the agent's stream and an operator drained it.
    pub fn draining(&self, agent: &str, conn_id: u64) -> bool {
        self.roster().current_and(agent, conn_id, |a| a.draining)
    }

    /// Whether stream `conn_id` is the agent's stream and its heartbeats
    /// stopped for at least [`Lifecycle::heartbeat_timeout`].
    pub fn heartbeat_overdue(&self, agent: &str, conn_id: u64) -> bool {
        let timeout = self.heartbeat_timeout();
        self.roster()
            .current_and(agent, conn_id, |a| a.last_heartbeat.elapsed() >= timeout)
    }

    /// A stream with no heartbeat for this long counts as dead.
    pub fn heartbeat_timeout(&self) -> std::time::Duration {
        self.roster().heartbeat_timeout()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Action, CommandState, FailureReason};

    fn cmd(id: usize, session: &str) -> Command {
        Command {
            id: format!("c{id}"),
            session: session.into(),
            agent_id: "a".into(),
            generation: 1,
            action: Action::Hibernate,
            state: CommandState::Delivered,
            deadline_ms: 0,
            created_ms: 0,
            updated_ms: 0,
            failure_reason: FailureReason::None,
            message: String::new(),
            retryable: false,
            attempt: 1,
            not_before_ms: 0,
            trace_context: String::new(),
            sent_before: false,
        }
    }

    #[test]
    fn a_delivered_command_names_its_session_once_and_only_to_its_agent() {
        let d = Delivered::default();
        d.remember("a", &[cmd(1, "s1"), cmd(2, "s2")]);
        assert_eq!(
            d.take("b", "c1"),
            None,
            "another agent's command is not known"
        );
        assert_eq!(d.take("a", "c2").map(|c| c.session).as_deref(), Some("s2"));
        assert_eq!(d.take("a", "c2"), None, "taken once");
        d.forget("a");
        assert_eq!(d.take("a", "c1"), None, "forgotten when the agent detached");
    }

    #[test]
    fn the_memory_is_bounded_per_agent() {
        let d = Delivered::default();
        let first: Vec<_> = (0..DELIVERED_MEMORY).map(|i| cmd(i, "s")).collect();
        d.remember("a", &first);
        d.remember("b", &[cmd(0, "other")]);
        d.remember("a", &[cmd(DELIVERED_MEMORY, "s")]);
        assert_eq!(
            d.take("a", "c0"),
            None,
            "full: the old entries are forgotten"
        );
        assert_eq!(
            d.take("a", &format!("c{DELIVERED_MEMORY}"))
                .map(|c| c.session)
                .as_deref(),
            Some("s")
        );
        assert_eq!(
            d.take("b", "c0").map(|c| c.session).as_deref(),
            Some("other"),
            "other agents keep theirs"
        );
    }
}
