//! Protobuf <-> domain conversion and domain error -> gRPC status. The only
//! place the wire format meets the core.

use std::time::Duration;

use prost_types::Timestamp;
use streamspace::v1 as pb;
use tonic::Status;

use crate::core::model::*;
use crate::core::validate::{Invalid, invalid};
use crate::core::{LifecycleError, NewSession, SessionEvent};

pub fn status(e: LifecycleError) -> Status {
    match e {
        LifecycleError::Invalid(i) => Status::invalid_argument(i.to_string()),
        LifecycleError::NotFound(m) => Status::not_found(m),
        LifecycleError::AlreadyExists(m) => Status::already_exists(m),
        LifecycleError::PermissionDenied(m) => Status::permission_denied(m),
        LifecycleError::FailedPrecondition(m) => Status::failed_precondition(m),
        LifecycleError::NoRoom(a) => {
            Status::resource_exhausted(format!("agent {a} has no free session slot"))
        }
        LifecycleError::ResourceExhausted(m) => Status::resource_exhausted(m),
        LifecycleError::Unavailable(m) => Status::unavailable(m),
        LifecycleError::Aborted(m) => Status::aborted(m),
    }
}

pub fn invalid_status(i: Invalid) -> Status {
    Status::invalid_argument(i.to_string())
}

pub fn timestamp(ms: Millis) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

pub fn duration_pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn secs(field: &str, d: &Option<prost_types::Duration>) -> Result<u64, Invalid> {
    match d {
        None => Ok(0),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(invalid(field, "must not be negative")),
        Some(d) => Ok(d.seconds as u64),
    }
}

fn secs_pb(s: u64) -> Option<prost_types::Duration> {
    (s > 0).then(|| duration_pb(Duration::from_secs(s)))
}

pub fn timeouts_from(field: &str, t: &Option<pb::Timeouts>) -> Result<Timeouts, Invalid> {
    let Some(t) = t else {
        return Ok(Timeouts::default());
    };
    Ok(Timeouts {
        idle_secs: secs(&format!("{field}.idle_timeout"), &t.idle_timeout)?,
        max_secs: secs(
            &format!("{field}.max_session_duration"),
            &t.max_session_duration,
        )?,
    })
}

/// A CreateSession request as the core's create request (the wire checks
/// only; the rest is `validate::new_session` and the lifecycle's).
pub fn new_session_from(r: pb::CreateSessionRequest) -> Result<NewSession, Invalid> {
    Ok(NewSession {
        timeouts: timeouts_from("timeouts", &r.timeouts)?,
        desired: desired_from("desired_state", r.desired_state)?,
        resources: resources_from(&r.resources),
        selector: r
            .selector
            .map(|s| Selector {
                platform: s.platform,
                region: s.region,
            })
            .unwrap_or_default(),
        name: r.name,
        template: r.template,
        user: r.user,
        persistent_home: r.persistent_home,
        external_id: None,
    })
}

pub fn timeouts_pb(t: &Timeouts) -> pb::Timeouts {
    pb::Timeouts {
        idle_timeout: secs_pb(t.idle_secs),
        max_session_duration: secs_pb(t.max_secs),
    }
}

pub fn resources_from(r: &Option<pb::Resources>) -> Resources {
    let list = |l: &Option<pb::ResourceList>| {
        l.as_ref()
            .map(|l| ResourceList {
                cpu: l.cpu.trim().to_string(),
                memory: l.memory.trim().to_string(),
            })
            .unwrap_or_default()
    };
    r.as_ref()
        .map(|r| Resources {
            requests: list(&r.requests),
            limits: list(&r.limits),
        })
        .unwrap_or_default()
}

pub fn resources_pb(r: &Resources) -> pb::Resources {
    let list = |l: &ResourceList| pb::ResourceList {
        cpu: l.cpu.clone(),
        memory: l.memory.clone(),
    };
    pb::Resources {
        requests: Some(list(&r.requests)),
        limits: Some(list(&r.limits)),
    }
}

pub fn phase_pb(p: Phase) -> pb::SessionPhase {
    match p {
        Phase::Pending => pb::SessionPhase::Pending,
        Phase::Provisioning => pb::SessionPhase::Provisioning,
        Phase::Running => pb::SessionPhase::Running,
        Phase::Hibernated => pb::SessionPhase::Hibernated,
        Phase::Stopped => pb::SessionPhase::Stopped,
        Phase::Failed => pb::SessionPhase::Failed,
    }
}

pub fn phase_from(field: &str, p: i32) -> Result<Option<Phase>, Invalid> {
    Ok(match pb::SessionPhase::try_from(p) {
        Ok(pb::SessionPhase::Unspecified) => None,
        Ok(pb::SessionPhase::Pending) => Some(Phase::Pending),
        Ok(pb::SessionPhase::Provisioning) => Some(Phase::Provisioning),
        Ok(pb::SessionPhase::Running) => Some(Phase::Running),
        Ok(pb::SessionPhase::Hibernated) => Some(Phase::Hibernated),
        Ok(pb::SessionPhase::Stopped) => Some(Phase::Stopped),
        Ok(pb::SessionPhase::Failed) => Some(Phase::Failed),
        Err(_) => return Err(invalid(field, format!("unknown phase value {p}"))),
    })
}

pub fn desired_pb(d: Desired) -> pb::DesiredState {
    match d {
        Desired::Running => pb::DesiredState::Running,
        Desired::Hibernated => pb::DesiredState::Hibernated,
        Desired::Terminated => pb::DesiredState::Terminated,
    }
}

pub fn desired_from(field: &str, d: i32) -> Result<Option<Desired>, Invalid> {
    Ok(match pb::DesiredState::try_from(d) {
        Ok(pb::DesiredState::Unspecified) => None,
        Ok(pb::DesiredState::Running) => Some(Desired::Running),
        Ok(pb::DesiredState::Hibernated) => Some(Desired::Hibernated),
        Ok(pb::DesiredState::Terminated) => Some(Desired::Terminated),
        Err(_) => return Err(invalid(field, format!("unknown desired state value {d}"))),
    })
}

pub fn reason_pb(r: FailureReason) -> pb::FailureReason {
    use pb::FailureReason as P;
    match r {
        FailureReason::None => P::Unspecified,
        FailureReason::Invalid => P::Invalid,
        FailureReason::NotFound => P::NotFound,
        FailureReason::Capacity => P::Capacity,
        FailureReason::Image => P::Image,
        FailureReason::Unschedulable => P::Unschedulable,
        FailureReason::CrashLoop => P::CrashLoop,
        FailureReason::Platform => P::Platform,
        FailureReason::Deadline => P::Deadline,
        FailureReason::Internal => P::Internal,
    }
}

pub fn reason_from(r: i32) -> FailureReason {
    use pb::FailureReason as P;
    match P::try_from(r).unwrap_or(P::Internal) {
        P::Unspecified => FailureReason::None,
        P::Invalid => FailureReason::Invalid,
        P::NotFound => FailureReason::NotFound,
        P::Capacity => FailureReason::Capacity,
        P::Image => FailureReason::Image,
        P::Unschedulable => FailureReason::Unschedulable,
        P::CrashLoop => FailureReason::CrashLoop,
        P::Platform => FailureReason::Platform,
        P::Deadline => FailureReason::Deadline,
        P::Internal => FailureReason::Internal,
    }
}

pub fn capacity_from(c: &Option<pb::Capacity>) -> Capacity {
    c.as_ref()
        .map(|c| Capacity {
            max_sessions: c.max_sessions,
            cpu_millis: c.cpu_millis,
            memory_bytes: c.memory_bytes,
        })
        .unwrap_or_default()
}

pub fn capacity_pb(c: &Capacity) -> pb::Capacity {
    pb::Capacity {
        max_sessions: c.max_sessions,
        cpu_millis: c.cpu_millis,
        memory_bytes: c.memory_bytes,
    }
}

fn ports_pb(p: &[Port]) -> Vec<pb::PortSpec> {
    p.iter()
        .map(|p| pb::PortSpec {
            name: p.name.clone(),
            container_port: p.container_port,
        })
        .collect()
}

pub fn session_pb(s: &Session) -> pb::Session {
    pb::Session {
        name: s.name.clone(),
        user: s.user.clone(),
        template: s.template.clone(),
        desired_state: desired_pb(s.desired) as i32,
        phase: phase_pb(s.phase) as i32,
        url: s.url.clone(),
        agent_id: s.agent_id.clone().unwrap_or_default(),
        generation: s.generation as u64,
        resources: Some(resources_pb(&s.workload.resources)),
        persistent_home: s.workload.persistent_home,
        timeouts: Some(timeouts_pb(&s.workload.timeouts)),
        selector: Some(pb::AgentSelector {
            platform: s.selector.platform.clone(),
            region: s.selector.region.clone(),
        }),
        conditions: s
            .conditions
            .iter()
            .map(|c| pb::Condition {
                r#type: c.kind.clone(),
                status: if c.status { "True" } else { "False" }.into(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect(),
        failure_reason: reason_pb(s.failure_reason) as i32,
        message: s.message.clone(),
        workload: s.workload_name.clone(),
        create_time: timestamp(s.created_ms),
        update_time: timestamp(s.updated_ms),
        last_activity_time: (s.last_activity_ms > 0)
            .then(|| timestamp(s.last_activity_ms))
            .flatten(),
    }
}

pub fn event_pb(e: &SessionEvent) -> pb::SessionEvent {
    use crate::core::EventKind;
    let t = match e.kind {
        EventKind::Added => pb::session_event::Type::Added,
        EventKind::Modified => pb::session_event::Type::Modified,
        EventKind::Deleted => pb::session_event::Type::Deleted,
    };
    pb::SessionEvent {
        r#type: t as i32,
        session: Some(session_pb(&e.session)),
    }
}

pub fn template_pb(t: &Template) -> pb::Template {
    pb::Template {
        name: t.name.clone(),
        display_name: t.display_name.clone(),
        description: t.description.clone(),
        image: t.image.clone(),
        command: t.command.clone(),
        ports: ports_pb(&t.ports),
        streaming_port: t.streaming_port.clone(),
        env: t.env.clone().into_iter().collect(),
        default_resources: Some(resources_pb(&t.default_resources)),
        persistent_home: t.persistent_home,
        timeouts: Some(timeouts_pb(&t.timeouts)),
        home_size: t.home_size.clone(),
        run_as_root: t.run_as_root,
    }
}

pub fn template_from(t: pb::Template) -> Result<Template, Invalid> {
    Ok(Template {
        timeouts: timeouts_from("template.timeouts", &t.timeouts)?,
        default_resources: resources_from(&t.default_resources),
        name: t.name,
        display_name: t.display_name,
        description: t.description,
        image: t.image,
        command: t.command,
        ports: t
            .ports
            .into_iter()
            .map(|p| Port {
                name: p.name,
                container_port: p.container_port,
            })
            .collect(),
        streaming_port: t.streaming_port,
        env: t.env.into_iter().collect(),
        persistent_home: t.persistent_home,
        home_size: t.home_size,
        run_as_root: t.run_as_root,
    })
}

fn workload_pb(w: &WorkloadSpec) -> pb::WorkloadSpec {
    pb::WorkloadSpec {
        image: w.image.clone(),
        command: w.command.clone(),
        ports: ports_pb(&w.ports),
        streaming_port: w.streaming_port.clone(),
        env: w.env.clone().into_iter().collect(),
        resources: Some(resources_pb(&w.resources)),
        persistent_home: w.persistent_home,
        home_size: w.home_size.clone(),
        timeouts: Some(timeouts_pb(&w.timeouts)),
        run_as_root: w.run_as_root,
    }
}

pub fn command_pb(c: &Command) -> pb::Command {
    use pb::command::Action as A;
    let action = match &c.action {
        Action::Start {
            user,
            template,
            workload,
        } => A::Start(pb::StartSession {
            user: user.clone(),
            template: template.clone(),
            workload: Some(workload_pb(workload)),
        }),
        Action::Stop { delete_home } => A::Stop(pb::StopSession {
            delete_home: *delete_home,
        }),
        Action::Hibernate => A::Hibernate(pb::HibernateSession {}),
        Action::Wake => A::Wake(pb::WakeSession {}),
    };
    pb::Command {
        command_id: c.id.clone(),
        session_id: c.session.clone(),
        session_generation: c.generation as u64,
        deadline: timestamp(c.deadline_ms),
        trace_context: Default::default(),
        action: Some(action),
    }
}

/// A command as the outbox tools show it.
pub fn outbox_command_pb(c: &Command) -> pb::OutboxCommand {
    use crate::core::model::CommandState as S;
    use pb::CommandState as P;
    let state = match c.state {
        S::Pending => P::Pending,
        S::Delivered => P::Delivered,
        S::Acknowledged => P::Acknowledged,
        S::Succeeded => P::Succeeded,
        S::Failed => P::Failed,
        S::Expired => P::Expired,
        S::Superseded => P::Superseded,
    };
    pb::OutboxCommand {
        id: c.id.clone(),
        session: c.session.clone(),
        agent_id: c.agent_id.clone(),
        session_generation: c.generation.max(0) as u64,
        action: c.action.name().into(),
        state: state as i32,
        deadline: timestamp(c.deadline_ms),
        create_time: timestamp(c.created_ms),
        update_time: timestamp(c.updated_ms),
        failure_reason: reason_pb(c.failure_reason) as i32,
        message: c.message.clone(),
        retryable: c.retryable,
        attempt: c.attempt.max(1) as u32,
        not_before: (c.not_before_ms > 0)
            .then(|| timestamp(c.not_before_ms))
            .flatten(),
    }
}

/// A wire command state (not UNSPECIFIED) as the core's.
pub fn command_state_from(s: pb::CommandState) -> crate::core::model::CommandState {
    use crate::core::model::CommandState as S;
    use pb::CommandState as P;
    match s {
        P::Unspecified | P::Pending => S::Pending,
        P::Delivered => S::Delivered,
        P::Acknowledged => S::Acknowledged,
        P::Succeeded => S::Succeeded,
        P::Failed => S::Failed,
        P::Expired => S::Expired,
        P::Superseded => S::Superseded,
    }
}

/// A non-negative duration in milliseconds (0 when unset).
pub fn duration_from(field: &str, d: &Option<prost_types::Duration>) -> Result<Millis, Invalid> {
    match d {
        None => Ok(0),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(invalid(field, "must not be negative")),
        Some(d) => Ok(d
            .seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(d.nanos / 1_000_000))),
    }
}

/// A status frame or inventory entry from an agent.
pub fn observed_from(field: &str, s: &pb::SessionStatus) -> Result<Observed, Invalid> {
    crate::core::validate::dns_label(
        &format!("{field}.session_id"),
        &s.session_id,
        crate::core::validate::MAX_SESSION_NAME,
    )?;
    let phase = phase_from(&format!("{field}.phase"), s.phase)?
        .ok_or_else(|| invalid(format!("{field}.phase"), "is required"))?;
    crate::core::validate::text(&format!("{field}.url"), &s.url)?;
    crate::core::validate::text(&format!("{field}.message"), &s.message)?;
    crate::core::validate::text(&format!("{field}.workload"), &s.workload)?;
    Ok(Observed {
        session: s.session_id.clone(),
        phase,
        url: s.url.clone(),
        failure_reason: reason_from(s.reason),
        message: s.message.clone(),
        workload_name: s.workload.clone(),
    })
}

pub fn outcome_from(r: &pb::CommandResult) -> Result<Outcome, Invalid> {
    match &r.outcome {
        Some(pb::command_result::Outcome::Succeeded(_)) => Ok(Outcome::Succeeded),
        Some(pb::command_result::Outcome::Failed(f)) => {
            crate::core::validate::text("result.failed.message", &f.message)?;
            Ok(Outcome::Failed {
                reason: match reason_from(f.reason) {
                    FailureReason::None => FailureReason::Internal,
                    r => r,
                },
                message: f.message.clone(),
                retryable: f.retryable,
            })
        }
        None => Err(invalid(
            "result.outcome",
            "is required (succeeded or failed)",
        )),
    }
}
