//! The command lifecycle as pure functions: given a session row and its
//! active command, decide what to write. No I/O here; `Lifecycle` runs these
//! inside store transitions so every decision is atomic.
//!
//! Rules (DESIGN.md 2-4):
//! - at most one active command (pending, delivered, acknowledged) per session;
//! - a new desired state supersedes a command that was not yet delivered, and
//!   waits for one that was (also when it is pending again because its
//!   agent's stream ended: the agent may have applied it);
//! - after every result, the next step toward the desired state is computed
//!   from the observed phase (level-triggered);
//! - failures are not retried automatically: the session shows FAILED with
//!   the reason until the user asks again (wake, hibernate, delete);
//! - results settle commands, statuses say what runs. A status that arrives
//!   while a command is active is newer than the command, so a result does
//!   not overwrite it: a start that succeeded leaves a RUNNING or FAILED
//!   observation as it is. The agent sends the session's current status
//!   after every result, so the last word is always an observation.

use super::model::{
    Action, Command, CommandState, Desired, FailureReason, Millis, Observed, Outcome, Phase,
    Session,
};
use super::placement::NoFit;
use super::store::{Change, SessionWrite, Slot};

/// What moves a session one step toward its desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do now (converged, waiting for the workload, or failed).
    Wait,
    Send(Action),
    /// The session is terminated and nothing runs: remove the row.
    Delete,
}

/// The next step for `s`, assuming no command is active.
pub fn next_step(s: &Session) -> Step {
    use Phase::*;
    let start = || {
        Step::Send(Action::Start {
            user: s.user.clone(),
            template: s.template.clone(),
            workload: Box::new(s.workload.clone()),
        })
    };
    match s.desired {
        Desired::Running => match s.phase {
            Pending | Stopped => start(),
            Hibernated => Step::Send(Action::Wake),
            Provisioning | Running | Failed => Step::Wait,
        },
        Desired::Hibernated => match s.phase {
            Pending | Stopped => start(),
            Provisioning | Running => Step::Send(Action::Hibernate),
            Hibernated | Failed => Step::Wait,
        },
        Desired::Terminated => match (s.phase, &s.agent_id) {
            (Stopped, _) | (_, None) => Step::Delete,
            _ => Step::Send(Action::Stop {
                delete_home: s.delete_home,
            }),
        },
    }
}

/// Settings that shape new commands.
#[derive(Debug, Clone, Copy)]
pub struct StepConfig {
    pub now: Millis,
    /// How long an agent has to finish a command before it expires.
    pub command_timeout_ms: Millis,
    /// Automatic retries of a command that failed with `retryable` (0: none).
    pub max_retries: u32,
    /// Delay before the first retry; each further one doubles it.
    pub retry_backoff_ms: Millis,
}

impl StepConfig {
    /// Settings at `now` with the given command timeout and no retries.
    pub fn at(now: Millis, command_timeout_ms: Millis) -> Self {
        Self {
            now,
            command_timeout_ms,
            max_retries: 0,
            retry_backoff_ms: 0,
        }
    }
}

fn new_command(s: &Session, agent: &str, action: Action, cfg: StepConfig) -> Command {
    Command {
        id: uuid::Uuid::new_v4().to_string(),
        session: s.name.clone(),
        agent_id: agent.to_string(),
        generation: s.generation,
        action,
        state: CommandState::Pending,
        deadline_ms: cfg.now + cfg.command_timeout_ms,
        created_ms: cfg.now,
        updated_ms: cfg.now,
        failure_reason: FailureReason::None,
        message: String::new(),
        retryable: false,
        attempt: 1,
        not_before_ms: 0,
        trace_context: String::new(),
        sent_before: false,
    }
}

/// Writes `s` and whatever its next step needs. `active` is the session's
/// active command, if any: a delivered one (or one sent before and pending
/// again after a reconnect) is waited for; a pending one is kept if it
/// already is the next step, otherwise superseded.
pub fn plan(mut s: Session, active: Option<Command>, cfg: StepConfig) -> Change {
    s.updated_ms = cfg.now;
    mark_ready(&mut s);
    let mut change = Change::default();
    if let Some(mut cmd) = active {
        if cmd.state != CommandState::Pending || cmd.sent_before {
            change.session = SessionWrite::Upsert(s);
            return change;
        }
        let step = next_step(&s);
        if matches!(&step, Step::Send(a) if *a == cmd.action) {
            change.session = SessionWrite::Upsert(s);
            return change;
        }
        cmd.state = CommandState::Superseded;
        cmd.updated_ms = cfg.now;
        cmd.message = format!("superseded by generation {}", s.generation);
        change.update_command = Some(cmd);
    }
    match next_step(&s) {
        Step::Wait => change.session = SessionWrite::Upsert(s),
        Step::Delete => change.session = SessionWrite::Delete,
        Step::Send(action) => {
            if let Some(agent) = s.agent_id.clone() {
                change.new_command = Some(new_command(&s, &agent, action, cfg));
            }
            change.session = SessionWrite::Upsert(s);
        }
    }
    change
}

/// The user changed the desired state. Idempotent: asking for the state the
/// session already has and is not failing in changes nothing.
pub fn set_desired(
    mut s: Session,
    active: Option<Command>,
    desired: Desired,
    delete_home: bool,
    cfg: StepConfig,
) -> Change {
    if s.desired == desired && s.phase != Phase::Failed && s.delete_home == delete_home {
        return Change::default();
    }
    if s.desired == Desired::Terminated && desired != Desired::Terminated {
        // A session being deleted cannot be revived; the caller checks this
        // first, so this is only a safety net.
        return Change::default();
    }
    s.desired = desired;
    s.generation += 1;
    s.delete_home = delete_home;
    if desired == Desired::Running {
        // Woken: whatever hibernated it for idleness is history.
        s.clear_condition(crate::policy::IDLE);
    }
    if s.phase == Phase::Failed && active.is_none() && desired != Desired::Terminated {
        // Retry: Start is "apply", so it repairs whatever is left.
        s.phase = Phase::Pending;
        s.failure_reason = FailureReason::None;
        s.message = format!("retrying after failure at generation {}", s.generation);
    }
    plan(s, active, cfg)
}

/// The agent finished `cmd_id`. A result for a command that is no longer
/// active (expired, superseded, already finished) changes nothing.
pub fn finished(
    session: Option<Session>,
    active: Option<Command>,
    cmd_id: &str,
    outcome: &Outcome,
    cfg: StepConfig,
) -> Change {
    let Some(mut cmd) = active.filter(|c| c.id == cmd_id) else {
        return Change::default();
    };
    cmd.updated_ms = cfg.now;
    let Some(mut s) = session else {
        // An orphan clean-up command: nothing to update but the command.
        cmd.state = match outcome {
            Outcome::Succeeded => CommandState::Succeeded,
            Outcome::Failed { .. } => CommandState::Failed,
        };
        return Change {
            update_command: Some(cmd),
            ..Change::default()
        };
    };
    match outcome {
        Outcome::Succeeded => {
            cmd.state = CommandState::Succeeded;
            match cmd.action {
                // Pending/Stopped: nothing observed since the start was sent.
                Action::Start { .. } if matches!(s.phase, Phase::Pending | Phase::Stopped) => {
                    s.phase = Phase::Provisioning;
                    s.failure_reason = FailureReason::None;
                    s.message = String::new();
                }
                Action::Wake if s.phase == Phase::Hibernated => {
                    s.phase = Phase::Provisioning;
                    s.message = String::new();
                }
                Action::Hibernate => {
                    s.phase = Phase::Hibernated;
                    s.url.clear();
                    s.message = String::new();
                }
                Action::Stop { .. } => {
                    s.phase = Phase::Stopped;
                    s.url.clear();
                    s.message = String::new();
                }
                _ => {}
            }
            let mut change = plan(s, None, cfg);
            change.update_command = Some(cmd);
            change
        }
        Outcome::Failed {
            reason,
            message,
            retryable,
        } => {
            cmd.state = CommandState::Failed;
            cmd.failure_reason = *reason;
            cmd.message = message.clone();
            cmd.retryable = *retryable;
            let total = i64::from(cfg.max_retries) + 1;
            if *retryable && cmd.attempt < total {
                return retried(s, cmd, message, total, cfg);
            }
            let what = if cmd.attempt > 1 {
                format!(
                    "{} failed after {} attempts",
                    cmd.action.name(),
                    cmd.attempt
                )
            } else {
                format!("{} failed", cmd.action.name())
            };
            fail(&mut s, *reason, &format!("{what}: {message}"), cfg.now);
            Change {
                session: SessionWrite::Upsert(s),
                update_command: Some(cmd),
                ..Change::default()
            }
        }
    }
}

/// An operator retries command `cmd_id` of a FAILED session: allowed only
/// for the session's latest command, when it failed or expired and nothing
/// is active. The session is planned again from PENDING (a start is
/// "apply", so it repairs whatever is left), which writes a new command.
pub fn retry(
    session: Option<Session>,
    active: Option<Command>,
    latest: Option<&Command>,
    cmd_id: &str,
    by: &str,
    cfg: StepConfig,
) -> Result<Change, String> {
    let Some(mut s) = session else {
        return Err(format!("command {cmd_id}: its session no longer exists"));
    };
    if let Some(a) = active {
        return Err(format!(
            "command {cmd_id}: session {} has an active command ({} {}, {})",
            s.name,
            a.action.name(),
            a.id,
            a.state.as_str()
        ));
    }
    match latest {
        Some(c)
            if c.id == cmd_id
                && matches!(c.state, CommandState::Failed | CommandState::Expired) => {}
        Some(c) if c.id == cmd_id => {
            return Err(format!(
                "command {cmd_id}: only a failed or expired command can be retried, it is {}",
                c.state.as_str()
            ));
        }
        _ => {
            return Err(format!(
                "command {cmd_id}: only the session's latest command can be retried"
            ));
        }
    }
    if s.phase != Phase::Failed {
        return Err(format!(
            "command {cmd_id}: session {} is {}, not failed: nothing to retry",
            s.name,
            s.phase.as_str()
        ));
    }
    s.phase = Phase::Pending;
    s.failure_reason = FailureReason::None;
    s.message = format!("command {cmd_id} retried by {by}");
    Ok(plan(s, None, cfg))
}

/// An operator cancels command `cmd_id`, which must be the session's active
/// command and not sent yet (pending). It fails with reason INVALID and the
/// session is FAILED, saying who cancelled it; a later wake, hibernate or
/// delete plans afresh.
pub fn cancel(
    session: Option<Session>,
    active: Option<Command>,
    cmd_id: &str,
    by: &str,
    cfg: StepConfig,
) -> Result<Change, String> {
    let Some(mut cmd) = active.filter(|c| c.id == cmd_id) else {
        return Err(format!(
            "command {cmd_id}: only its session's active command can be cancelled"
        ));
    };
    if cmd.state != CommandState::Pending {
        return Err(format!(
            "command {cmd_id}: only a pending command can be cancelled; it is {} (the agent has it)",
            cmd.state.as_str()
        ));
    }
    if cmd.sent_before {
        return Err(format!(
            "command {cmd_id}: it was delivered before its agent reconnected and may have been applied; it is sent again, not cancelled"
        ));
    }
    let message = format!("cancelled by {by}");
    cmd.state = CommandState::Failed;
    cmd.failure_reason = FailureReason::Invalid;
    cmd.message = message.clone();
    cmd.updated_ms = cfg.now;
    let mut change = Change {
        update_command: Some(cmd.clone()),
        ..Change::default()
    };
    if let Some(mut s) = session {
        fail(
            &mut s,
            FailureReason::Invalid,
            &format!("{} command {} {message}", cmd.action.name(), cmd.id),
            cfg.now,
        );
        change.session = SessionWrite::Upsert(s);
    }
    Ok(change)
}

/// `cmd` failed with a retryable reason and has attempts left: the session
/// is planned again as if the failed step had not been tried, and the new
/// command for the same step is the next attempt, sent after a backoff that
/// doubles per attempt. The session says so in its message (not FAILED).
fn retried(mut s: Session, cmd: Command, message: &str, total: i64, cfg: StepConfig) -> Change {
    let exp = u32::try_from(cmd.attempt - 1).unwrap_or(u32::MAX).min(20);
    let delay = cfg.retry_backoff_ms.saturating_mul(1 << exp);
    if matches!(cmd.action, Action::Start { .. }) && s.phase != Phase::Running {
        // Nothing runs that the start made: start it again (apply).
        s.phase = Phase::Pending;
    }
    s.failure_reason = FailureReason::None;
    s.message = format!(
        "{} failed (attempt {} of {total}): {message}; retrying in {}",
        cmd.action.name(),
        cmd.attempt,
        crate::policy::shown(delay.max(1000))
    );
    let mut change = plan(s, None, cfg);
    if let Some(next) = change
        .new_command
        .as_mut()
        .filter(|n| n.action.name() == cmd.action.name())
    {
        next.attempt = cmd.attempt + 1;
        next.trace_context = cmd.trace_context.clone();
        next.not_before_ms = cfg.now + delay;
        next.deadline_ms = next.not_before_ms + cfg.command_timeout_ms;
    }
    change.update_command = Some(cmd);
    change
}

fn fail(s: &mut Session, reason: FailureReason, message: &str, now: Millis) {
    s.phase = Phase::Failed;
    s.failure_reason = reason;
    s.message = message.to_string();
    s.url.clear();
    s.updated_ms = now;
    mark_ready(s);
}

/// The Ready condition of a session in `phase`: whether it answers on its
/// URL, the phase as the reason, and a message that is true of that phase.
/// `detail` is what the agent last said about the session (or why it
/// failed); it is added where it tells the reader more.
pub fn ready(phase: Phase, detail: &str) -> (bool, String, String) {
    let what = match phase {
        Phase::Pending => "the session waits to be started on an agent",
        Phase::Provisioning => "the session is starting; it answers on its URL once Running",
        Phase::Running => "the session answers on its URL",
        Phase::Hibernated => {
            "the session is hibernated (scaled to zero, nothing runs) and does not answer; wake it to resume"
        }
        Phase::Stopped => "the session is stopped; nothing runs",
        Phase::Failed => "the session failed",
    };
    let message = match (phase, detail) {
        (Phase::Failed, d) if !d.is_empty() => d.to_string(),
        (Phase::Provisioning | Phase::Stopped, d) if !d.is_empty() => format!("{what} ({d})"),
        _ => what.to_string(),
    };
    (phase == Phase::Running, capitalize(phase.as_str()), message)
}

/// Sets `s`'s Ready condition from its phase and message.
fn mark_ready(s: &mut Session) {
    let (ok, reason, message) = ready(s.phase, &s.message);
    s.set_condition("Ready", ok, &reason, &message);
}

/// `cmd` passed its deadline without a result.
pub fn expired(
    session: Option<Session>,
    active: Option<Command>,
    cmd_id: &str,
    now: Millis,
) -> Change {
    let Some(mut cmd) = active.filter(|c| c.id == cmd_id) else {
        return Change::default();
    };
    cmd.state = CommandState::Expired;
    cmd.updated_ms = now;
    cmd.failure_reason = FailureReason::Deadline;
    let msg = format!(
        "{} command {} expired: agent {} did not report a result before its deadline",
        cmd.action.name(),
        cmd.id,
        cmd.agent_id
    );
    cmd.message = msg.clone();
    let mut change = Change {
        update_command: Some(cmd),
        ..Change::default()
    };
    if let Some(mut s) = session {
        fail(&mut s, FailureReason::Deadline, &msg, now);
        change.session = SessionWrite::Upsert(s);
    }
    change
}

/// An agent reported the observed state of one session (a status frame or
/// an entry of Hello's inventory).
pub fn observed(
    session: Option<Session>,
    active: Option<Command>,
    agent: &str,
    o: &Observed,
    cfg: StepConfig,
) -> Change {
    let Some(mut s) = session else {
        // The agent runs something the control plane does not want: stop it.
        let runs = !matches!(o.phase, Phase::Stopped | Phase::Pending);
        if runs && active.is_none() {
            let orphan = Session::named(&o.session, Desired::Terminated, Phase::Running);
            let cmd = new_command(&orphan, agent, Action::Stop { delete_home: false }, cfg);
            return Change {
                new_command: Some(cmd),
                ..Change::default()
            };
        }
        return Change::default();
    };
    if s.agent_id.as_deref() != Some(agent) {
        return Change::default();
    }
    let before = (
        s.phase,
        s.url.clone(),
        s.message.clone(),
        s.workload_name.clone(),
    );
    s.phase = o.phase;
    s.url = if o.phase == Phase::Running {
        o.url.clone()
    } else {
        String::new()
    };
    s.failure_reason = o.failure_reason;
    s.message = o.message.clone();
    if !o.workload_name.is_empty() {
        s.workload_name = o.workload_name.clone();
    }
    mark_ready(&mut s);
    if before
        == (
            s.phase,
            s.url.clone(),
            s.message.clone(),
            s.workload_name.clone(),
        )
    {
        return Change::default();
    }
    if active.is_some() {
        s.updated_ms = cfg.now;
        return Change {
            session: SessionWrite::Upsert(s),
            ..Change::default()
        };
    }
    plan(s, None, cfg)
}

/// The agent's Hello inventory does not list `s`, which is placed on it.
pub fn absent(session: Option<Session>, active: Option<Command>, cfg: StepConfig) -> Change {
    let Some(mut s) = session else {
        return Change::default();
    };
    if active.is_some() {
        return Change::default();
    }
    if matches!(
        s.phase,
        Phase::Provisioning | Phase::Running | Phase::Hibernated
    ) {
        s.phase = Phase::Stopped;
        s.url.clear();
        s.message = "the agent no longer runs this session".into();
    }
    if s.desired == Desired::Terminated {
        return Change {
            session: SessionWrite::Delete,
            ..Change::default()
        };
    }
    match next_step(&s) {
        Step::Wait if s.phase != Phase::Stopped => Change::default(),
        _ => plan(s, None, cfg),
    }
}

/// The unplaced session `s` takes `slot` (the store refuses the change if
/// the slot is no longer free).
pub fn placed(
    session: Option<Session>,
    active: Option<Command>,
    slot: &Slot,
    cfg: StepConfig,
) -> Change {
    match session {
        Some(mut s) if s.agent_id.is_none() && s.desired != Desired::Terminated => {
            mark_placed(&mut s, &slot.agent);
            let mut change = plan(s, active, cfg);
            change.slot = Some(slot.clone());
            change
        }
        _ => Change::default(),
    }
}

/// Records that `s` runs on `agent`.
pub fn mark_placed(s: &mut Session, agent: &str) {
    s.agent_id = Some(agent.to_string());
    s.set_condition(
        "Scheduled",
        true,
        "Placed",
        &format!("placed on agent {agent}"),
    );
}

/// Records why no agent can take `s`; returns whether that changed anything.
pub fn mark_unplaced(s: &mut Session, why: &NoFit) -> bool {
    let message = format!("waiting for an agent: {}", why.message);
    if s.message == message {
        return false;
    }
    s.message = message;
    s.set_condition("Scheduled", false, why.reason, &why.message);
    true
}

/// No agent can take the unplaced session `s` yet: keep its reason current.
pub fn unplaced(session: Option<Session>, why: &NoFit, now: Millis) -> Change {
    match session {
        Some(mut s) if s.agent_id.is_none() && s.desired != Desired::Terminated => {
            if !mark_unplaced(&mut s, why) {
                return Change::default();
            }
            s.updated_ms = now;
            Change {
                session: SessionWrite::Upsert(s),
                ..Change::default()
            }
        }
        _ => Change::default(),
    }
}

/// The agent that runs `s` is gone for good (revoked): end its active
/// command, and put the session back to be placed again (or remove it, if it
/// is being deleted). Nothing is sent to that agent any more. `why` names
/// the revocation.
pub fn released(
    session: Option<Session>,
    active: Option<Command>,
    agent: &str,
    why: &str,
    now: Millis,
) -> Change {
    let Some(mut s) = session.filter(|s| s.agent_id.as_deref() == Some(agent)) else {
        return Change::default();
    };
    let mut change = Change::default();
    if let Some(mut cmd) = active.filter(|c| c.agent_id == agent) {
        cmd.state = CommandState::Expired;
        cmd.updated_ms = now;
        cmd.message = format!("{} command {} ended: {why}", cmd.action.name(), cmd.id);
        change.update_command = Some(cmd);
    }
    if s.desired == Desired::Terminated {
        change.session = SessionWrite::Delete;
        return change;
    }
    s.agent_id = None;
    s.phase = Phase::Pending;
    s.url.clear();
    s.workload_name.clear();
    s.failure_reason = FailureReason::None;
    s.message = format!("lost its agent: {why}; waiting to be placed again");
    s.set_condition("Scheduled", false, "AgentRevoked", why);
    s.updated_ms = now;
    mark_ready(&mut s);
    change.session = SessionWrite::Upsert(s);
    change
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Observed;

    fn cfg() -> StepConfig {
        StepConfig::at(1_000, 60_000)
    }

    /// A session placed on `agent-a`, wanted running, not yet observed.
    fn session() -> Session {
        let mut s = Session::named("s1", Desired::Running, Phase::Pending);
        s.user = "alice".into();
        s.agent_id = Some("agent-a".into());
        s
    }

    fn status(phase: Phase) -> Observed {
        Observed {
            session: "s1".into(),
            phase,
            url: if phase == Phase::Running {
                "http://127.0.0.1:1/".into()
            } else {
                String::new()
            },
            failure_reason: FailureReason::None,
            message: String::new(),
            workload_name: String::new(),
        }
    }

    /// Applies `change` to the rows, as a store would.
    fn apply(
        s: Option<Session>,
        active: Option<Command>,
        change: Change,
    ) -> (Option<Session>, Option<Command>) {
        let s = match change.session {
            SessionWrite::Keep => s,
            SessionWrite::Upsert(s) => Some(s),
            SessionWrite::Delete => None,
        };
        let active = match (change.new_command, change.update_command, active) {
            (Some(new), _, _) => Some(new),
            (None, Some(u), _) if u.state.is_active() => Some(u),
            (None, Some(_), _) => None,
            (None, None, a) => a,
        };
        (s, active)
    }

    /// A retryable failure is tried again after a doubling backoff until
    /// the attempts run out, then the session fails naming them; a failure
    /// that is not retryable fails the session at once.
    #[test]
    fn retryable_failures_are_retried_with_backoff_then_fail() {
        let mut c = cfg();
        c.max_retries = 2;
        c.retry_backoff_ms = 1_000;
        let (s, active) = apply(Some(session()), None, plan(session(), None, c));
        let (mut s, mut active) = (s.unwrap(), active.unwrap());
        let fail = |retryable| Outcome::Failed {
            reason: FailureReason::Capacity,
            message: "no room".into(),
            retryable,
        };
        for (attempt, delay) in [(2, 1_000), (3, 2_000)] {
            let change = finished(
                Some(s.clone()),
                Some(active.clone()),
                &active.id,
                &fail(true),
                c,
            );
            let next = change.new_command.clone().expect("a retry");
            assert_eq!(next.attempt, attempt);
            assert_eq!(next.not_before_ms, c.now + delay);
            assert_eq!(next.deadline_ms, next.not_before_ms + c.command_timeout_ms);
            assert_eq!(next.action.name(), "start");
            let (s2, a2) = apply(Some(s), Some(active), change);
            s = s2.unwrap();
            assert_ne!(s.phase, Phase::Failed);
            assert!(
                s.message.contains(&format!("attempt {} of 3", attempt - 1)),
                "{}",
                s.message
            );
            active = a2.unwrap();
        }
        let change = finished(
            Some(s.clone()),
            Some(active.clone()),
            &active.id,
            &fail(true),
            c,
        );
        assert!(change.new_command.is_none(), "attempts exhausted");
        let (s3, _) = apply(Some(s.clone()), Some(active.clone()), change);
        let s3 = s3.unwrap();
        assert_eq!(s3.phase, Phase::Failed);
        assert!(
            s3.message.contains("failed after 3 attempts"),
            "{}",
            s3.message
        );
        // Not retryable: failed at once.
        let (s, active) = apply(Some(session()), None, plan(session(), None, c));
        let active = active.unwrap();
        let change = finished(s, Some(active.clone()), &active.id, &fail(false), c);
        assert!(change.new_command.is_none());
        let SessionWrite::Upsert(s) = change.session else {
            panic!("written")
        };
        assert_eq!(s.phase, Phase::Failed);
    }

    /// Retry takes only the latest failed or expired command of a failed
    /// session with nothing active, and writes a new start; cancel takes only
    /// a pending active command and fails the session saying who.
    #[test]
    fn operators_retry_and_cancel_only_what_the_rules_allow() {
        let (_, first) = apply(Some(session()), None, plan(session(), None, cfg()));
        let mut first = first.unwrap();
        // Cancel while pending: the command and the session fail.
        let c = cancel(
            Some(session()),
            Some(first.clone()),
            &first.id,
            "root",
            cfg(),
        )
        .unwrap();
        let SessionWrite::Upsert(failed) = &c.session else {
            panic!("the session is written")
        };
        assert_eq!(failed.phase, Phase::Failed);
        assert!(
            failed.message.contains("cancelled by root"),
            "{}",
            failed.message
        );
        assert_eq!(
            c.update_command.as_ref().unwrap().state,
            CommandState::Failed
        );
        // Delivered: no cancel.
        first.state = CommandState::Delivered;
        let e = cancel(
            Some(session()),
            Some(first.clone()),
            &first.id,
            "root",
            cfg(),
        )
        .unwrap_err();
        assert!(e.contains("only a pending command"), "{e}");
        // Retry: refused while active, for another id, for a succeeded one.
        let mut s = session();
        s.phase = Phase::Failed;
        let e = retry(
            Some(s.clone()),
            Some(first.clone()),
            Some(&first),
            &first.id,
            "root",
            cfg(),
        )
        .unwrap_err();
        assert!(e.contains("has an active command"), "{e}");
        first.state = CommandState::Expired;
        let e = retry(Some(s.clone()), None, Some(&first), "other", "root", cfg()).unwrap_err();
        assert!(e.contains("latest command"), "{e}");
        let mut done = first.clone();
        done.state = CommandState::Succeeded;
        let e = retry(Some(s.clone()), None, Some(&done), &done.id, "root", cfg()).unwrap_err();
        assert!(e.contains("failed or expired"), "{e}");
        // Allowed: the session is planned again with a new command.
        let c = retry(Some(s), None, Some(&first), &first.id, "root", cfg()).unwrap();
        let new = c.new_command.expect("a new command");
        assert_ne!(new.id, first.id);
        assert_eq!(new.action.name(), "start");
    }

    /// A command put back to pending after its agent's stream ended may have
    /// been applied: a new desired state waits for it (it is sent again and
    /// answered), and no operator cancels it, exactly as when delivered.
    #[test]
    fn a_command_sent_before_a_reconnect_is_waited_for() {
        let (_, first) = apply(Some(session()), None, plan(session(), None, cfg()));
        let mut first = first.unwrap();
        let mut running = session();
        running.phase = Phase::Running;
        // Never sent: a new desired state supersedes it.
        let c = set_desired(
            running.clone(),
            Some(first.clone()),
            Desired::Hibernated,
            false,
            cfg(),
        );
        assert_eq!(
            c.update_command.map(|c| c.state),
            Some(CommandState::Superseded)
        );
        // Sent, then requeued: waited for; nothing new is sent meanwhile.
        first.sent_before = true;
        let c = set_desired(
            running.clone(),
            Some(first.clone()),
            Desired::Hibernated,
            false,
            cfg(),
        );
        assert!(
            c.update_command.is_none() && c.new_command.is_none(),
            "{c:?}"
        );
        let SessionWrite::Upsert(s) = c.session else {
            panic!("the new desired state is written")
        };
        assert_eq!(s.desired, Desired::Hibernated);
        let e = cancel(Some(running), Some(first.clone()), &first.id, "root", cfg()).unwrap_err();
        assert!(e.contains("may have been applied"), "{e}");
    }

    /// The start's result and a status observed while it ran give the same
    /// phase in either order.
    #[test]
    fn a_result_and_a_status_commute() {
        for observed in [Phase::Running, Phase::Failed, Phase::Provisioning] {
            let mut outcomes = vec![];
            for status_first in [true, false] {
                let change = plan(session(), None, cfg());
                let (mut s, mut active) = apply(Some(session()), None, change);
                let id = active.as_ref().unwrap().id.clone();
                active.as_mut().unwrap().state = CommandState::Acknowledged;
                let mut events: Vec<bool> = vec![true, false];
                if !status_first {
                    events.reverse();
                }
                for is_status in events {
                    let change = if is_status {
                        observed_step(s.clone(), active.clone(), &status(observed))
                    } else {
                        finished(s.clone(), active.clone(), &id, &Outcome::Succeeded, cfg())
                    };
                    (s, active) = apply(s, active, change);
                }
                outcomes.push(s.unwrap().phase);
            }
            assert_eq!(outcomes, [observed, observed], "observed {observed:?}");
        }
    }

    fn observed_step(s: Option<Session>, active: Option<Command>, o: &Observed) -> Change {
        observed(s, active, "agent-a", o, cfg())
    }

    /// A session whose process is gone converges: a start replayed as
    /// succeeded followed by the agent's current status (failed) ends
    /// FAILED, not PROVISIONING.
    #[test]
    fn a_replayed_success_then_a_crash_status_ends_failed() {
        let change = plan(session(), None, cfg());
        let (s, active) = apply(Some(session()), None, change);
        let id = active.as_ref().unwrap().id.clone();
        let (s, active) = apply(
            s.clone(),
            active.clone(),
            finished(s, active, &id, &Outcome::Succeeded, cfg()),
        );
        assert_eq!(s.as_ref().unwrap().phase, Phase::Provisioning);
        assert!(active.is_none());
        let (s, _) = apply(
            s.clone(),
            None,
            observed_step(s, None, &status(Phase::Failed)),
        );
        assert_eq!(s.unwrap().phase, Phase::Failed);
    }

    /// Each phase's Ready condition says something true of that phase: only
    /// a running session claims to answer, a hibernated one says how to
    /// resume, and the agent's detail is kept where it explains the phase.
    #[test]
    fn ready_says_what_is_true_of_each_phase() {
        use Phase::*;
        for p in [Pending, Provisioning, Running, Hibernated, Stopped, Failed] {
            let (ok, reason, message) = ready(p, "");
            assert_eq!(ok, p == Running, "{p}");
            assert_eq!(reason.to_lowercase(), p.as_str());
            assert_eq!(
                message.starts_with("the session answers"),
                p == Running,
                "{p}: {message}"
            );
        }
        let (_, _, m) = ready(Hibernated, "scaled to 0");
        assert_eq!(
            m,
            "the session is hibernated (scaled to zero, nothing runs) and does not answer; wake it to resume"
        );
        let (_, _, m) = ready(Provisioning, "pod s1-abc is Pending");
        assert!(m.starts_with("the session is starting") && m.ends_with("(pod s1-abc is Pending)"));
        let (_, _, m) = ready(Stopped, "the agent no longer runs this session");
        assert!(m.contains("stopped") && m.contains("no longer runs"), "{m}");
        let (_, _, m) = ready(Failed, "start failed: image missing");
        assert_eq!(m, "start failed: image missing");
        assert_eq!(ready(Failed, "").2, "the session failed");
    }

    /// A running session that hibernates stops claiming to answer on its
    /// URL, and one woken from hibernation does not carry the hibernated
    /// message into its new phase.
    #[test]
    fn hibernating_and_waking_rewrite_the_ready_condition() {
        let ready_of = |s: &Option<Session>| {
            let c = s
                .as_ref()
                .unwrap()
                .conditions
                .iter()
                .find(|c| c.kind == "Ready");
            let c = c.expect("a Ready condition").clone();
            (c.status, c.reason, c.message)
        };
        let mut s = session();
        s.phase = Phase::Provisioning;
        let (s, _) = apply(
            Some(s.clone()),
            None,
            observed_step(Some(s), None, &status(Phase::Running)),
        );
        assert!(ready_of(&s).0);
        let mut s = s.unwrap();
        s.desired = Desired::Hibernated;
        let (s, active) = apply(Some(s.clone()), None, plan(s, None, cfg()));
        let id = active.as_ref().unwrap().id.clone();
        assert_eq!(active.as_ref().unwrap().action, Action::Hibernate);
        let (s, _) = apply(
            s.clone(),
            active.clone(),
            finished(s, active, &id, &Outcome::Succeeded, cfg()),
        );
        let (ok, reason, message) = ready_of(&s);
        assert!(!ok);
        assert_eq!(reason, "Hibernated");
        assert!(message.contains("wake it to resume"), "{message}");
        let mut hibernated = status(Phase::Hibernated);
        hibernated.message = "scaled to 0".into();
        let (s, _) = apply(s.clone(), None, observed_step(s, None, &hibernated));
        let mut s = s.unwrap();
        s.desired = Desired::Running;
        let (s, active) = apply(Some(s.clone()), None, plan(s, None, cfg()));
        let id = active.as_ref().unwrap().id.clone();
        let (s, _) = apply(
            s.clone(),
            active.clone(),
            finished(s, active, &id, &Outcome::Succeeded, cfg()),
        );
        let (ok, reason, message) = ready_of(&s);
        assert_eq!((ok, reason.as_str()), (false, "Provisioning"));
        assert!(!message.contains("scaled to 0"), "{message}");
    }

    /// Absent from the agent's inventory with no command active: a running
    /// session is restarted, a terminated one removed.
    #[test]
    fn absent_sessions_are_repaired() {
        let mut s = session();
        s.phase = Phase::Running;
        let change = absent(Some(s.clone()), None, cfg());
        let (after, active) = apply(Some(s.clone()), None, change);
        assert_eq!(after.unwrap().phase, Phase::Stopped);
        assert!(matches!(active.unwrap().action, Action::Start { .. }));
        s.desired = Desired::Terminated;
        assert!(matches!(
            absent(Some(s), None, cfg()).session,
            SessionWrite::Delete
        ));
    }

    /// A revoked agent's session: its command ends, the session loses the
    /// agent and waits to be placed again; one being deleted is removed.
    #[test]
    fn released_sessions_wait_for_another_agent() {
        let mut s = session();
        s.phase = Phase::Running;
        s.url = "http://x/".into();
        let (s, active) = apply(Some(s.clone()), None, plan(s, None, cfg()));
        let s = s.unwrap();
        let active = Some(Command {
            action: Action::Hibernate,
            ..active.unwrap_or_else(|| new_command(&s, "agent-a", Action::Hibernate, cfg()))
        });
        let change = released(Some(s.clone()), active.clone(), "agent-a", "revoked", 5);
        assert_eq!(
            change.update_command.as_ref().map(|c| c.state),
            Some(CommandState::Expired)
        );
        let (after, _) = apply(Some(s.clone()), active.clone(), change);
        let after = after.unwrap();
        assert_eq!((after.agent_id, after.phase), (None, Phase::Pending));
        assert!(after.url.is_empty() && after.message.contains("revoked"));
        assert!(released(Some(s.clone()), None, "agent-b", "x", 5).is_empty());
        let mut t = s;
        t.desired = Desired::Terminated;
        assert!(matches!(
            released(Some(t), None, "agent-a", "x", 5).session,
            SessionWrite::Delete
        ));
    }
}
