//! The command lifecycle service: runs the pure steps of `steps` inside store
//! transitions, publishes session events and rings agents' bells. Every
//! session change in the control plane goes through here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tracing::{Instrument, debug, info, info_span, warn};

use super::model::*;
use super::placement;
use super::quota::{QuotaBook, QuotaCheck};
use super::roster::Roster;
use super::steps::{self, StepConfig};
use super::store::{Change, SessionFilter, SessionWrite, Store, StoreError, StreamFence};
use super::streams::Delivered;
use super::trace;
use super::validate::{self, Invalid, invalid};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The agent chosen for a session filled up before the write (retried
    /// by placement; never reaches a caller).
    #[error("agent {0} has no free session slot")]
    NoRoom(String),
    /// A quota would be exceeded; the text names it, its limit and use.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The work was taken over by someone else (an agent's stream by another
    /// stream or replica).
    #[error("{0}")]
    Aborted(String),
}

/// What session `s` requests, as a usage: its CPU and memory, and one
/// running session if `running`.
fn requested(s: &Session, running: bool) -> Usage {
    let (cpu_millis, memory_bytes) = s.workload.resources.requests.amounts();
    Usage {
        sessions: 0,
        running: u64::from(running),
        cpu_millis,
        memory_bytes,
    }
}

/// How often a create re-counts slots after the store refused the one it picked.
const PLACEMENT_ATTEMPTS: usize = 8;

impl From<StoreError> for LifecycleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists(w) => Self::AlreadyExists(format!("{w} already exists")),
            StoreError::NotFound(w) => Self::NotFound(format!("{w} not found")),
            StoreError::Rejected(e) => e,
            StoreError::NoRoom(agent) => Self::NoRoom(agent),
            StoreError::QuotaExceeded(m) => Self::ResourceExhausted(m),
            StoreError::Backend(m) => Self::Unavailable(m),
        }
    }
}

/// Who is calling the user-facing API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub admin: bool,
    /// The caller's roles (token file column, OIDC groups): which role
    /// quotas hold the caller's own sessions.
    pub roles: Vec<String>,
}

impl Caller {
    /// An administrator acting as itself, with no roles.
    pub fn admin(user: &str) -> Caller {
        Caller {
            user: user.to_string(),
            admin: true,
            roles: vec![],
        }
    }

    /// The roles that count for sessions of `owner`: the caller's own when
    /// it acts for itself; none when an administrator acts for another user
    /// (whose roles the control plane does not know; their user quotas
    /// still hold).
    fn roles_for(&self, owner: &str) -> &[String] {
        if self.user == owner { &self.roles } else { &[] }
    }

    fn may_act_on(&self, owner: &str) -> bool {
        self.admin || self.user == owner
    }
}

/// The answer for a session the caller may not see, whether or not it
/// exists: telling the two apart would let anyone probe which names exist.
fn not_found(name: &str) -> LifecycleError {
    LifecycleError::NotFound(format!("session {} not found", validate::shown(name)))
}

/// A create request, already converted from the wire.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    pub name: String,
    pub template: String,
    pub user: String,
    pub resources: Resources,
    pub persistent_home: Option<bool>,
    pub timeouts: Timeouts,
    pub selector: Selector,
    pub desired: Option<Desired>,
    /// UID of the Kubernetes object the session belongs to.
    pub external_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct SessionEvent {
    pub kind: EventKind,
    pub session: Session,
}

#[derive(Debug, Clone, Copy)]
pub struct LifecycleConfig {
    /// How long an agent has to finish a command.
    pub command_timeout: Duration,
    /// How long before a session's maximum duration it is warned.
    pub max_duration_warning: Duration,
    /// How long finished commands are kept.
    pub retention: Duration,
    /// Automatic retries of a command that failed with `retryable`.
    pub command_retries: u32,
    /// Delay before the first automatic retry; doubles per retry.
    pub retry_backoff: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(120),
            max_duration_warning: Duration::from_secs(300),
            retention: Duration::from_secs(7 * 86_400),
            command_retries: 3,
            retry_backoff: Duration::from_secs(1),
        }
    }
}

pub struct Lifecycle {
    store: Arc<dyn Store>,
    roster: Arc<Roster>,
    quotas: Arc<QuotaBook>,
    events: broadcast::Sender<SessionEvent>,
    cfg: LifecycleConfig,
    /// The session of each command delivered to each agent (a cache).
    pub(crate) delivered: Delivered,
    /// Commands written to the outbox since start (for metrics).
    accepted: std::sync::atomic::AtomicU64,
    /// This control-plane replica's name, recorded on the agents it holds.
    replica_id: String,
    /// Agents whose streams other live replicas hold (placement candidates
    /// too), refreshed by [`Lifecycle::keep_presence`].
    pub(crate) held_elsewhere: std::sync::Mutex<Vec<super::model::AgentRecord>>,
    /// Set while [`Lifecycle::follow_remote`] runs (a shared store): this
    /// replica's own session writes are published by that one task too, so
    /// watchers see one order (see `replicas.rs`).
    pub(crate) local_writes:
        std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<SessionEvent>>>,
}

impl Lifecycle {
    pub fn new(store: Arc<dyn Store>, roster: Arc<Roster>, cfg: LifecycleConfig) -> Self {
        let (events, _) = broadcast::channel(4096);
        Self {
            store,
            roster,
            quotas: Arc::default(),
            events,
            cfg,
            delivered: Delivered::default(),
            accepted: Default::default(),
            replica_id: "local".into(),
            held_elsewhere: Default::default(),
            local_writes: Default::default(),
        }
    }

    /// Names this replica (`--replica-id`; "local" by default): the store
    /// records it on the agents whose streams it holds.
    pub fn with_replica_id(mut self, id: impl Into<String>) -> Self {
        self.replica_id = id.into();
        self
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Places a session among the attached agents (see `placement::pick`).
    fn pick(
        &self,
        s: &Session,
        used: &std::collections::HashMap<String, Usage>,
    ) -> Result<super::store::Slot, placement::NoFit> {
        let request = requested(s, false);
        let elsewhere = self.held_elsewhere.lock().expect("held_elsewhere lock");
        self.roster.with_candidates(&elsewhere, |agents| {
            placement::pick(&s.selector, request, agents, used)
        })
    }

    /// The quotas in force (the configuration's and the `Quota` objects').
    pub fn quotas(&self) -> &Arc<QuotaBook> {
        &self.quotas
    }

    /// What creating (`new`) or waking session `s` asks of its owner's
    /// quotas, for `caller`.
    fn quota_check(&self, caller: &Caller, s: &Session, new: bool) -> Option<QuotaCheck> {
        let quotas = self.quotas.applying_to(&s.user, caller.roles_for(&s.user));
        if quotas.is_empty() {
            return None;
        }
        let running = s.desired == Desired::Running;
        let mut add = if running {
            requested(s, true)
        } else {
            Usage::default()
        };
        add.sessions = u64::from(new);
        Some(QuotaCheck {
            user: s.user.clone(),
            quotas,
            add,
        })
    }

    pub fn config(&self) -> &LifecycleConfig {
        &self.cfg
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn roster(&self) -> &Arc<Roster> {
        &self.roster
    }

    /// Every committed session change, in commit order per session.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    /// Whether anything here subscribed to session events.
    pub(crate) fn has_watchers(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Sends `event` to this replica's watchers.
    pub(crate) fn publish(&self, event: SessionEvent) {
        let _ = self.events.send(event);
    }

    /// Publishes a session this replica wrote: at once, or through the task
    /// that also publishes other replicas' writes when there is one.
    fn publish_own(&self, event: SessionEvent) {
        let queued = match &*self.local_writes.lock().expect("local_writes lock") {
            Some(tx) => tx.send(event.clone()).is_ok(),
            None => false,
        };
        if !queued {
            self.publish(event);
        }
    }

    pub(crate) fn step_cfg(&self) -> StepConfig {
        StepConfig {
            now: now_ms(),
            command_timeout_ms: self.cfg.command_timeout.as_millis() as i64,
            max_retries: self.cfg.command_retries,
            retry_backoff_ms: self.cfg.retry_backoff.as_millis() as i64,
        }
    }

    /// Commands written to the outbox since this control plane started.
    pub fn commands_accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_accepted(&self) {
        self.accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Publishes what a committed change did and wakes the agent that has a new command.
    fn committed(&self, before: Option<&Session>, change: &Change) {
        match (&change.session, before) {
            (SessionWrite::Upsert(s), _) => {
                self.publish_own(SessionEvent {
                    kind: EventKind::Modified,
                    session: s.clone(),
                });
            }
            (SessionWrite::Delete, Some(s)) => {
                info!(session = %s.name, "session removed");
                self.publish_own(SessionEvent {
                    kind: EventKind::Deleted,
                    session: s.clone(),
                });
            }
            _ => {}
        }
        if let Some(c) = &change.new_command {
            self.count_accepted();
            debug!(command = %c.id, session = %c.session, agent = %c.agent_id, action = c.action.name(), "command written");
            self.roster.ring(&c.agent_id);
        }
    }

    /// Runs `f` as one transition of session `name` and publishes the result.
    /// Every session write passes here, so the policy clocks (see
    /// [`crate::policy::account`]) follow each phase change.
    pub(crate) async fn transition<F>(&self, name: &str, f: F) -> Result<Change, LifecycleError>
    where
        F: FnOnce(Option<Session>, Option<Command>) -> Result<Change, LifecycleError>
            + Send
            + 'static,
    {
        self.transition_fenced(name, None, f).await
    }

    /// [`Lifecycle::transition`], decided only while `fence` is still the
    /// agent's stream (see [`StreamFence`]); otherwise nothing changes.
    pub(crate) async fn transition_fenced<F>(
        &self,
        name: &str,
        fence: Option<StreamFence>,
        f: F,
    ) -> Result<Change, LifecycleError>
    where
        F: FnOnce(Option<Session>, Option<Command>) -> Result<Change, LifecycleError>
            + Send
            + 'static,
    {
        // Read here: the closure may run on the store's writer thread,
        // outside the caller's span.
        let parent = trace::current();
        let traced = !parent.is_empty();
        let f = move |s: Option<Session>, active: Option<Command>| {
            let before = s.clone();
            let mut change = f(s, active)?;
            if let SessionWrite::Upsert(after) = &mut change.session {
                crate::policy::account(before.as_ref(), after, now_ms());
            }
            stamp(&mut change, parent);
            Ok(change)
        };
        // A span only inside a trace (a command's result, an API call):
        // status frames and sweeps change sessions outside any, and a span
        // each would only be a one-span trace.
        let span = if !traced {
            tracing::Span::none()
        } else {
            info_span!("store.transition", session = name)
        };
        let t = self
            .store
            .transition_fenced(name, fence, Box::new(f))
            .instrument(span)
            .await?;
        if t.superseded {
            debug!(
                session = name,
                "a report from a superseded stream of the agent is ignored"
            );
        }
        if !t.change.is_empty() {
            self.committed(t.before.as_ref(), &t.change);
        }
        Ok(t.change)
    }

    // ---- user-facing operations -------------------------------------------

    pub async fn create_session(
        &self,
        caller: &Caller,
        req: NewSession,
    ) -> Result<Session, LifecycleError> {
        let user = validate::new_session(&caller.user, &req)?;
        if !caller.may_act_on(&user) {
            return Err(LifecycleError::PermissionDenied(format!(
                "user: {} may not create sessions for {user}",
                caller.user
            )));
        }
        let desired = req.desired.unwrap_or(Desired::Running);
        let template = self
            .store
            .get_template(&req.template)
            .await?
            .ok_or_else(|| {
                invalid(
                    "template",
                    format!("no template named {:?} exists", req.template),
                )
            })?;
        let resources =
            validate::over_defaults("resources", &req.resources, &template.default_resources)?;
        let timeouts = validate::timeouts_within("timeouts", &req.timeouts, &template)?;
        let workload = WorkloadSpec {
            image: template.image.clone(),
            command: template.command.clone(),
            ports: template.ports.clone(),
            streaming_port: template.streaming_port.clone(),
            env: template.env.clone(),
            resources,
            persistent_home: req.persistent_home.unwrap_or(template.persistent_home),
            home_size: template.home_size.clone(),
            timeouts,
            run_as_root: template.run_as_root,
        };
        let cfg = self.step_cfg();
        let mut s = Session {
            name: req.name.clone(),
            user,
            template: template.name.clone(),
            desired,
            generation: 1,
            phase: Phase::Pending,
            url: String::new(),
            agent_id: None,
            selector: req.selector.clone(),
            workload,
            conditions: vec![],
            failure_reason: FailureReason::None,
            message: String::new(),
            workload_name: String::new(),
            delete_home: false,
            external_id: req.external_id.clone(),
            created_ms: cfg.now,
            updated_ms: cfg.now,
            last_activity_ms: cfg.now,
            running_since_ms: 0,
            ran_ms: 0,
        };
        let quota = self.quota_check(caller, &s, true);
        let cmd = self.insert_placed(&mut s, quota, cfg).await?;
        info!(session = %s.name, user = %s.user, template = %s.template, agent = ?s.agent_id, "session created");
        self.publish_own(SessionEvent {
            kind: EventKind::Added,
            session: s.clone(),
        });
        if let Some(c) = cmd {
            self.roster.ring(&c.agent_id);
        }
        Ok(s)
    }

    /// Places the new session `s` and inserts it with its first command.
    /// Placement reads slot counts that other creates may be changing; the
    /// store re-checks the slot as it inserts, and a refused slot means
    /// "count again": after [`PLACEMENT_ATTEMPTS`] refusals the session is
    /// written unplaced and waits for room like any other.
    async fn insert_placed(
        &self,
        s: &mut Session,
        quota: Option<QuotaCheck>,
        cfg: StepConfig,
    ) -> Result<Option<Command>, LifecycleError> {
        let mut why = None;
        for _ in 0..PLACEMENT_ATTEMPTS {
            let used = self.store.usage_per_agent().await?;
            let slot = match self.pick(s, &used) {
                Ok(slot) => slot,
                Err(e) => {
                    why = Some(e);
                    break;
                }
            };
            let mut placed = s.clone();
            steps::mark_placed(&mut placed, &slot.agent);
            let mut change = steps::plan(placed.clone(), None, cfg);
            stamp(&mut change, trace::current());
            match self
                .store
                .insert_session(
                    &placed,
                    change.new_command.as_ref(),
                    Some(&slot),
                    quota.as_ref(),
                )
                .instrument(
                    info_span!("store.insert_session", session = %placed.name, agent = %slot.agent),
                )
                .await
            {
                Ok(()) => {
                    *s = placed;
                    if change.new_command.is_some() {
                        self.count_accepted();
                    }
                    return Ok(change.new_command);
                }
                Err(StoreError::NoRoom(agent)) => {
                    debug!(session = %s.name, agent, "slot taken meanwhile; placing again");
                    why = Some(placement::NoFit {
                        reason: "InsufficientResources",
                        message: format!("agent {agent} was filled by concurrent creates"),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(why) = why {
            steps::mark_unplaced(s, &why);
        }
        self.store
            .insert_session(s, None, None, quota.as_ref())
            .await?;
        Ok(None)
    }

    pub async fn get_session(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Session, LifecycleError> {
        validate::dns_label("name", name, validate::MAX_SESSION_NAME)?;
        match self.store.get_session(name).await? {
            Some(s) if caller.may_act_on(&s.user) => Ok(s),
            _ => Err(not_found(name)),
        }
    }

    pub async fn list_sessions(
        &self,
        caller: &Caller,
        mut f: SessionFilter,
    ) -> Result<Vec<Session>, LifecycleError> {
        match &f.user {
            Some(u) if !caller.may_act_on(u) => {
                return Err(LifecycleError::PermissionDenied(format!(
                    "user: {} may not list the sessions of {u}",
                    caller.user
                )));
            }
            None if !caller.admin => f.user = Some(caller.user.clone()),
            _ => {}
        }
        Ok(self.store.list_sessions(&f).await?)
    }

    /// Sets the desired state of a session (hibernate, wake, delete).
    pub async fn set_desired(
        &self,
        caller: &Caller,
        name: &str,
        desired: Desired,
        delete_home: bool,
    ) -> Result<Session, LifecycleError> {
        validate::dns_label("name", name, validate::MAX_SESSION_NAME)?;
        let cfg = self.step_cfg();
        let (caller, name_owned) = (caller.clone(), name.to_string());
        let quotas = self.quotas.clone();
        let change = self
            .transition(name, move |s, active| {
                let name = name_owned;
                let s = match s {
                    Some(s) if caller.may_act_on(&s.user) => s,
                    _ => return Err(not_found(&name)),
                };
                if s.desired == Desired::Terminated && desired != Desired::Terminated {
                    return Err(LifecycleError::FailedPrecondition(format!(
                        "session {name:?} is being deleted"
                    )));
                }
                let waking = desired == Desired::Running && s.desired != Desired::Running;
                let quota = if waking {
                    let applying = quotas.applying_to(&s.user, caller.roles_for(&s.user));
                    (!applying.is_empty()).then(|| QuotaCheck {
                        user: s.user.clone(),
                        quotas: applying,
                        add: requested(&s, true),
                    })
                } else {
                    None
                };
                let mut change = steps::set_desired(s, active, desired, delete_home, cfg);
                change.quota = quota;
                Ok(change)
            })
            .await?;
        match change.session {
            SessionWrite::Upsert(s) => Ok(s),
            SessionWrite::Delete | SessionWrite::Keep => {
                // Deleted in this very transition: report it terminated.
                let mut s = self
                    .store
                    .get_session(name)
                    .await?
                    .unwrap_or_else(|| Session::named(name, desired, Phase::Stopped));
                if matches!(change.session, SessionWrite::Delete) {
                    s.desired = Desired::Terminated;
                    s.phase = Phase::Stopped;
                }
                Ok(s)
            }
        }
    }

    /// Binds a session to the Kubernetes object (UID) that represents it.
    pub async fn link_external(&self, name: &str, uid: &str) -> Result<(), LifecycleError> {
        let now = now_ms();
        let uid = uid.to_string();
        self.transition(name, move |s, _| {
            Ok(match s {
                Some(mut s) if s.external_id.is_none() => {
                    s.external_id = Some(uid);
                    s.updated_ms = now;
                    Change {
                        session: SessionWrite::Upsert(s),
                        ..Change::default()
                    }
                }
                _ => Change::default(),
            })
        })
        .await?;
        Ok(())
    }

    /// Places every session still waiting for an agent (after an attach, and
    /// periodically, as capacity frees up).
    pub async fn place_unplaced(&self) -> Result<(), LifecycleError> {
        let names = self.store.unplaced_sessions().await?;
        if names.is_empty() {
            return Ok(());
        }
        let mut used = self.store.usage_per_agent().await?;
        for name in names {
            let Some(s) = self.store.get_session(&name).await? else {
                continue;
            };
            let cfg = self.step_cfg();
            match self.pick(&s, &used) {
                Ok(slot) => {
                    let (agent, request) = (slot.agent.clone(), slot.request);
                    match self
                        .transition(&name, move |s, active| {
                            Ok(steps::placed(s, active, &slot, cfg))
                        })
                        .await
                    {
                        Ok(_) => {
                            let u = used.entry(agent).or_default();
                            *u = u.plus(Usage {
                                sessions: 1,
                                ..request
                            });
                        }
                        // Filled meanwhile: count again, and leave this one for the next pass.
                        Err(LifecycleError::NoRoom(_)) => {
                            used = self.store.usage_per_agent().await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(why) => {
                    self.transition(&name, move |s, _| Ok(steps::unplaced(s, &why, cfg.now)))
                        .await?;
                }
            }
        }
        Ok(())
    }

    // ---- agent-facing operations -------------------------------------------

    /// The agent acknowledged a command. One statement on the normal path;
    /// an ack for a command this agent was never sent is refused.
    pub async fn acknowledged(&self, agent: &str, cmd_id: &str) -> Result<(), LifecycleError> {
        if !self.store.ack_command(agent, cmd_id, now_ms()).await? {
            // Not delivered any more (a late ack) is fine; unknown is not.
            self.command_of(agent, cmd_id).await?;
        }
        Ok(())
    }

    /// The agent finished a command. The command's session comes from what
    /// `next_commands` delivered, which saves reading the command first; the
    /// store answers when that memory does not know it.
    pub async fn finished(
        &self,
        agent: &str,
        cmd_id: &str,
        outcome: Outcome,
    ) -> Result<(), LifecycleError> {
        let (session, parent) = match self.delivered.take(agent, cmd_id) {
            Some(d) => (d.session, d.trace),
            None => {
                let c = self.command_of(agent, cmd_id).await?;
                (c.session, c.trace_context)
            }
        };
        let span = info_span!(
            "command.result",
            command_id = cmd_id,
            agent_id = agent,
            session_id = %session,
            outcome = outcome.name(),
        );
        trace::set_parent(&span, &parent);
        let cfg = self.step_cfg();
        let (a, id) = (agent.to_string(), cmd_id.to_string());
        let change = self
            .transition(&session, move |s, active| {
                let active = active.filter(|c| c.agent_id == a);
                Ok(steps::finished(s, active, &id, &outcome, cfg))
            })
            .instrument(span)
            .await?;
        if let Some(c) = change.update_command {
            info!(command = %c.id, session = %c.session, agent, action = c.action.name(), state = %c.state, message = %c.message, "command finished");
        }
        Ok(())
    }

    async fn command_of(&self, agent: &str, cmd_id: &str) -> Result<Command, LifecycleError> {
        match self.store.get_command(cmd_id).await? {
            Some(c) if c.agent_id == agent => Ok(c),
            _ => Err(invalid(
                "command_id",
                format!(
                    "no command {} was sent to agent {agent}",
                    validate::shown(cmd_id)
                ),
            )
            .into()),
        }
    }

    /// The agent reported the observed state of one session on its stream
    /// `conn_id`. Ignored once another stream of the agent attached, here or
    /// on another replica: what that stream reported is newer.
    pub async fn observed(
        &self,
        agent: &str,
        conn_id: u64,
        o: &Observed,
    ) -> Result<(), LifecycleError> {
        let Some(fence) = self.stream_fence(agent, conn_id) else {
            debug!(agent, session = %o.session, "a status from a replaced stream is ignored");
            return Ok(());
        };
        let cfg = self.step_cfg();
        let (a, o2) = (agent.to_string(), o.clone());
        self.transition_fenced(&o.session, Some(fence), move |s, active| {
            Ok(steps::observed(s, active, &a, &o2, cfg))
        })
        .await?;
        Ok(())
    }

    /// The fence of `agent`'s stream `conn_id`, while it is the agent's
    /// stream here.
    fn stream_fence(&self, agent: &str, conn_id: u64) -> Option<StreamFence> {
        let epoch = self.roster.epoch(agent, conn_id)?;
        Some(StreamFence {
            agent: agent.to_string(),
            epoch,
        })
    }

    /// The agent (re)attached on stream `conn_id` with this inventory:
    /// update what it reports, repair what it no longer runs, stop what
    /// nobody wants, re-send what is unfinished and place sessions that were
    /// waiting for an agent. Fenced like [`Lifecycle::observed`]: a newer
    /// stream's inventory wins.
    pub async fn attached(
        &self,
        agent: &str,
        conn_id: u64,
        inventory: &[Observed],
    ) -> Result<(), LifecycleError> {
        let requeued = self.store.requeue_commands(agent).await?;
        for o in inventory {
            self.observed(agent, conn_id, o).await?;
        }
        let reported: std::collections::HashSet<&str> =
            inventory.iter().map(|o| o.session.as_str()).collect();
        for s in self.store.sessions_on_agent(agent).await? {
            if reported.contains(s.name.as_str()) {
                continue;
            }
            let Some(fence) = self.stream_fence(agent, conn_id) else {
                break;
            };
            let cfg = self.step_cfg();
            self.transition_fenced(&s.name, Some(fence), move |s, active| {
                Ok(steps::absent(s, active, cfg))
            })
            .await?;
        }
        self.place_unplaced().await?;
        info!(
            agent,
            inventory = inventory.len(),
            requeued,
            "agent reconciled"
        );
        self.roster.ring(agent);
        Ok(())
    }

    /// Expires every active command past its deadline.
    /// Expires the commands past their deadline; returns them.
    pub async fn expire_overdue(&self) -> Result<Vec<Command>, LifecycleError> {
        let now = now_ms();
        let overdue = self.store.overdue_commands(now).await?;
        for c in &overdue {
            warn!(command = %c.id, session = %c.session, agent = %c.agent_id, action = c.action.name(), "command expired");
            let id = c.id.clone();
            self.transition(&c.session, move |s, active| {
                Ok(steps::expired(s, active, &id, now))
            })
            .await?;
            // Its in-flight slot is free: let the agent's stream send more.
            self.roster.ring(&c.agent_id);
        }
        Ok(overdue)
    }

    // ---- templates ---------------------------------------------------------

    pub async fn put_template(
        &self,
        caller: &Caller,
        t: Template,
    ) -> Result<Template, LifecycleError> {
        if !caller.admin {
            return Err(LifecycleError::PermissionDenied(
                "only an admin may change templates".into(),
            ));
        }
        validate::template(&t)?;
        self.store.put_template(&t).await?;
        Ok(t)
    }

    pub async fn delete_template(&self, caller: &Caller, name: &str) -> Result<(), LifecycleError> {
        if !caller.admin {
            return Err(LifecycleError::PermissionDenied(
                "only an admin may change templates".into(),
            ));
        }
        validate::dns_label("name", name, validate::MAX_NAME)?;
        if !self.store.delete_template(name).await? {
            return Err(LifecycleError::NotFound(format!(
                "template {name:?} not found"
            )));
        }
        Ok(())
    }
}

/// Gives a new command the trace it is accepted in, unless it already has
/// one (a retry keeps its first attempt's).
fn stamp(change: &mut Change, parent: String) {
    if let Some(c) = change
        .new_command
        .as_mut()
        .filter(|c| c.trace_context.is_empty())
    {
        c.trace_context = parent;
    }
}
