//! The persistence boundary. The core decides *what* changes; a store makes
//! each decision atomic. Implementations: SQLite and PostgreSQL (crate `streamspace-store`).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::model::{
    AgentRecord, Capacity, Command, CommandState, Millis, Phase, Revocation, RevokedTarget,
    Session, Template, Usage,
};
use super::quota::QuotaCheck;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The transition function refused the change; nothing was written.
    #[error(transparent)]
    Rejected(#[from] super::LifecycleError),
    /// The change placed a session on an agent whose slots are all taken
    /// (see [`Slot`]); nothing was written.
    #[error("agent {0} has no free session slot")]
    NoRoom(String),
    /// The change would break one of the user's quotas (see
    /// [`QuotaCheck`]); nothing was written. The text names the quota.
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("database error: {0}")]
    Backend(String),
}

/// A session taking room on an agent. Placement picks an agent from usage
/// read before the write; with many creates at once that is stale, so the
/// store sums again inside the writing transaction (serialized per agent)
/// and refuses the write with [`StoreError::NoRoom`] when the session does
/// not fit: the agent's sessions would exceed `max_sessions`, or their
/// requests its CPU or memory. Capacity then holds under any concurrency, on
/// every replica. Every session placed on the agent counts, hibernated ones
/// too (their room is kept for their wake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub agent: String,
    /// The agent's advertised capacity; 0 in a field means no limit there.
    pub capacity: Capacity,
    /// What the placed session requests (CPU and memory).
    pub request: Usage,
}

impl Slot {
    /// Whether a session requesting `self.request` fits next to `used`.
    pub fn fits(&self, used: &Usage) -> bool {
        let c = &self.capacity;
        let within = |limit: u64, used: u64, add: u64| limit == 0 || used + add <= limit;
        within(u64::from(c.max_sessions), used.sessions, 1)
            && within(c.cpu_millis, used.cpu_millis, self.request.cpu_millis)
            && within(c.memory_bytes, used.memory_bytes, self.request.memory_bytes)
    }

    /// Whether any limit is declared (else the store need not sum).
    pub fn limited(&self) -> bool {
        self.capacity != Capacity::default()
    }
}

/// What one transition writes, decided by the lifecycle from the current rows.
#[derive(Debug, Default)]
pub struct Change {
    pub session: SessionWrite,
    /// The session's active command with its new state (ack, result, supersede).
    pub update_command: Option<Command>,
    /// A new command to insert (written before it is ever sent).
    pub new_command: Option<Command>,
    /// Set when this change places the session on an agent.
    pub slot: Option<Slot>,
    /// Set when this change adds to what the session's user holds (a create
    /// or a wake): the store refuses it if a quota would be exceeded.
    pub quota: Option<QuotaCheck>,
}

// One per transition and short-lived: boxing the session would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
pub enum SessionWrite {
    #[default]
    Keep,
    Upsert(Session),
    Delete,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        matches!(self.session, SessionWrite::Keep)
            && self.update_command.is_none()
            && self.new_command.is_none()
    }
}

/// Decides a [`Change`] from the session row (if any) and its active command
/// (pending, delivered or acknowledged; at most one exists per session).
/// Owned (`'static`) so a store may run it on its own writer thread.
pub type TransitionFn = Box<
    dyn FnOnce(Option<Session>, Option<Command>) -> Result<Change, super::LifecycleError>
        + Send
        + 'static,
>;

/// What a transition wrote, and the session row it started from.
#[derive(Debug, Default)]
pub struct Transitioned {
    pub change: Change,
    pub before: Option<Session>,
    /// The transition's stream fence failed: nothing was decided or written.
    pub superseded: bool,
}

/// An agent's stream, as a transition decided from what it reported is
/// fenced: `epoch` is the stream epoch its attach was given.
///
/// An agent sends on one stream at a time, and the Hello of a new stream
/// carries a snapshot taken after the last frame of the old one. A frame
/// still in flight on a superseded stream (buffered on a drained stream, or
/// read late by a slow replica) is therefore older than what the new stream
/// reported; applied after it, it would move a session back to a phase it has
/// left and plan a command for a state that no longer exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFence {
    pub agent: String,
    pub epoch: i64,
}

/// Filters for listing sessions; newest first, paginated by (created, name).
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub user: Option<String>,
    pub phase: Option<Phase>,
    /// Only sessions strictly after this (created_ms, name) cursor in newest-first order.
    pub after: Option<(Millis, String)>,
    pub limit: u32,
}

/// Filters for listing commands (the outbox tools); newest first.
#[derive(Debug, Clone, Default)]
pub struct CommandFilter {
    pub session: Option<String>,
    pub agent: Option<String>,
    pub state: Option<CommandState>,
    /// Only commands last updated before this time.
    pub updated_before: Option<Millis>,
    pub limit: u32,
}

/// What [`Store::tally`] counts (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Sessions per observed phase.
    SessionsByPhase,
    /// Commands not finished, per state (pending, delivered, acknowledged).
    ActiveCommandsByState,
}

/// Told of each committed write transaction (the control plane's metrics
/// implement it). A store calls it on its write path, the SQLite writer
/// thread included, so it must be quick and must not block.
pub trait WriteObserver: Send + Sync + 'static {
    /// A write transaction of `store` (`sqlite` or `postgres`) committed
    /// `seconds` after it began, carrying `ops` operations: the jobs of one
    /// SQLite group commit; always 1 on PostgreSQL, where each write is its
    /// own transaction.
    fn write_committed(&self, store: &'static str, seconds: f64, ops: usize);
}

/// A change that another control-plane replica wrote to a shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteChange {
    /// A command for `agent` was written: the replica holding it sends it.
    Commands { agent: String },
    /// Session `name` (of `user`) was written or deleted.
    Session { name: String, user: String },
    /// Changes may have been missed (the feed reconnected): re-read.
    Lost,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Whether several control-plane replicas may share this store
    /// (PostgreSQL); false for one process's own database (SQLite).
    fn shared(&self) -> bool {
        false
    }
    /// The changes other replicas write, from now on; `None` for a store
    /// that no other replica writes. Call once.
    fn remote_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<RemoteChange>> {
        None
    }
    /// Records that replica `id` is alive at `now`.
    async fn renew_replica(&self, _id: &str, _now: Millis) -> Result<(), StoreError> {
        Ok(())
    }
    /// Replicas that renewed their presence at or after `since`.
    async fn live_replicas(&self, _since: Millis) -> Result<Vec<String>, StoreError> {
        Ok(vec![])
    }
    /// Agents with a pending command, due by `now`, written before `before`
    /// (a wake-up that may have been lost).
    async fn agents_with_waiting_commands(
        &self,
        _now: Millis,
        _before: Millis,
    ) -> Result<Vec<String>, StoreError> {
        Ok(vec![])
    }
    /// Reports every write transaction committed from now on to `observer`;
    /// the first observer set stays. Without one (the default) nothing is
    /// timed at all.
    fn observe_writes(&self, _observer: Arc<dyn WriteObserver>) {}
    /// Rows per group of `what`; groups without rows are left out.
    async fn tally(&self, what: Tally) -> Result<Vec<(String, u64)>, StoreError>;
    async fn get_session(&self, name: &str) -> Result<Option<Session>, StoreError>;
    async fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<Session>, StoreError>;
    /// Inserts a new session and, optionally, its first command, atomically;
    /// with a `slot`, only if the agent has room (else [`StoreError::NoRoom`]);
    /// with a `quota`, only within the user's quotas (else
    /// [`StoreError::QuotaExceeded`]).
    async fn insert_session(
        &self,
        session: &Session,
        command: Option<&Command>,
        slot: Option<&Slot>,
        quota: Option<&QuotaCheck>,
    ) -> Result<(), StoreError>;
    /// Loads the session row and its active command under a lock, lets `f`
    /// decide the change and writes it, all in one transaction (refused with
    /// [`StoreError::NoRoom`] if the change takes a [`Slot`] that is not
    /// free, with [`StoreError::QuotaExceeded`] if its [`QuotaCheck`]
    /// fails; the user's usage is read before the change). Returns the change as written and the row it was decided from.
    async fn transition(&self, session: &str, f: TransitionFn) -> Result<Transitioned, StoreError> {
        self.transition_fenced(session, None, f).await
    }
    /// [`Store::transition`], with a `fence` only while its epoch is still
    /// the agent's stream epoch (checked in the transaction, after the
    /// session's lock, so a take-over either waits for it or is seen by it):
    /// otherwise `f` is not called, nothing is written and the result is
    /// [`Transitioned::superseded`].
    async fn transition_fenced(
        &self,
        session: &str,
        fence: Option<StreamFence>,
        f: TransitionFn,
    ) -> Result<Transitioned, StoreError>;
    /// Names of sessions that wait for an agent (no agent, not terminated).
    async fn unplaced_sessions(&self) -> Result<Vec<String>, StoreError>;
    /// Sessions placed on `agent`.
    async fn sessions_on_agent(&self, agent: &str) -> Result<Vec<Session>, StoreError>;
    /// What the sessions placed on each agent hold.
    async fn usage_per_agent(&self) -> Result<HashMap<String, Usage>, StoreError>;
    /// What `user`'s sessions hold (the quotas' view: deleted ones excluded).
    async fn usage_of_user(&self, user: &str) -> Result<Usage, StoreError>;

    async fn get_command(&self, id: &str) -> Result<Option<Command>, StoreError>;
    async fn list_commands(&self, filter: &CommandFilter) -> Result<Vec<Command>, StoreError>;
    /// Deletes at most `limit` finished commands last updated before
    /// `before`, oldest first; returns how many. Never an active one.
    async fn prune_commands(&self, before: Millis, limit: u32) -> Result<u64, StoreError>;
    /// Agents with a delayed (retry) command whose time has come, not sent yet.
    async fn agents_with_due_commands(&self, now: Millis) -> Result<Vec<String>, StoreError>;
    /// Marks `agent`'s delivered command `id` acknowledged (one statement:
    /// an ack changes no session). Returns false if no such delivered
    /// command exists (unknown, another agent's, or already past delivery).
    async fn ack_command(&self, agent: &str, id: &str, now: Millis) -> Result<bool, StoreError>;
    /// Records activity on sessions `names` at `now` (only those placed on
    /// `agent`, unless it is empty); returns how many moved forward.
    async fn touch_sessions(
        &self,
        agent: &str,
        names: &[String],
        now: Millis,
    ) -> Result<u64, StoreError>;
    /// Marks `agent`'s pending commands delivered, oldest first, so that at
    /// most `window` are delivered-or-acknowledged at once, and returns them.
    /// Claims nothing unless `epoch` is still the agent's stream epoch (see
    /// [`Store::take_over_agent`]): a replica that lost the agent sends none.
    async fn claim_commands(
        &self,
        agent: &str,
        epoch: i64,
        window: u32,
        now: Millis,
    ) -> Result<Vec<Command>, StoreError>;
    /// Puts `agent`'s delivered and acknowledged commands back to pending so
    /// they are sent again (after a reconnect). Returns how many.
    async fn requeue_commands(&self, agent: &str) -> Result<u64, StoreError>;
    /// Active commands whose deadline is before `now`.
    async fn overdue_commands(&self, now: Millis) -> Result<Vec<Command>, StoreError>;
    /// Active commands per agent (for operators).
    async fn active_commands_per_agent(&self) -> Result<HashMap<String, u32>, StoreError>;

    async fn upsert_agent(&self, agent: &AgentRecord) -> Result<(), StoreError>;
    /// An attach: writes the agent's row (as [`Store::upsert_agent`]) held by
    /// `agent.replica_id` with the next stream epoch, and returns that epoch.
    /// Every claim of an older epoch claims nothing from then on.
    async fn take_over_agent(&self, agent: &AgentRecord) -> Result<i64, StoreError>;
    /// A stream of epoch `epoch` ended: the agent is held by no replica and
    /// was last seen `now`, unless a newer stream took it over. Returns
    /// whether it was still the agent's stream.
    async fn release_agent(&self, id: &str, epoch: i64, now: Millis) -> Result<bool, StoreError>;
    async fn get_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError>;
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    async fn put_template(&self, t: &Template) -> Result<(), StoreError>;
    async fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError>;
    async fn list_templates(&self) -> Result<Vec<Template>, StoreError>;
    /// Returns whether it existed.
    async fn delete_template(&self, name: &str) -> Result<bool, StoreError>;

    /// Adds an entry to the agent deny list ([`StoreError::AlreadyExists`]
    /// if its target is revoked already).
    async fn insert_revocation(&self, r: &Revocation) -> Result<(), StoreError>;
    /// Removes the entry for `target`; returns it if there was one.
    async fn delete_revocation(
        &self,
        target: &RevokedTarget,
    ) -> Result<Option<Revocation>, StoreError>;
    /// Every entry, oldest first.
    async fn list_revocations(&self) -> Result<Vec<Revocation>, StoreError>;
    /// The oldest entry that refuses agent `agent` or certificate `serial`.
    async fn find_revocation(
        &self,
        agent: &str,
        serial: &str,
    ) -> Result<Option<Revocation>, StoreError>;
}
