//! Domain types: sessions, commands, templates and agents as the control
//! plane reasons about them. Plain Rust; the gRPC and store adapters convert.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* $var),+ }
        impl $name {
            /// The stable lower-case name stored in the database.
            pub fn as_str(self) -> &'static str { match self { $(Self::$var => $s),+ } }
            /// Parses the stored name.
            pub fn parse(s: &str) -> Option<Self> { match s { $($s => Some(Self::$var),)+ _ => None } }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

str_enum!(
    /// What the user wants a session to be.
    Desired { Running = "running", Hibernated = "hibernated", Terminated = "terminated" }
);

str_enum!(
    /// What the agent last reported (or the control plane last concluded).
    Phase {
        Pending = "pending",
        Provisioning = "provisioning",
        Running = "running",
        Hibernated = "hibernated",
        Stopped = "stopped",
        Failed = "failed",
    }
);

str_enum!(
    /// Where a durable command is in its lifecycle.
    CommandState {
        /// Written, not yet sent on a stream.
        Pending = "pending",
        /// Sent on a stream; no ack yet.
        Delivered = "delivered",
        /// The agent confirmed receipt.
        Acknowledged = "acknowledged",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Its deadline passed before a result arrived.
        Expired = "expired",
        /// A newer desired state replaced it before it was sent.
        Superseded = "superseded",
    }
);

impl CommandState {
    /// Pending, delivered or acknowledged: the command still occupies its session's slot.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Delivered | Self::Acknowledged)
    }
}

str_enum!(
    /// Why a command or session failed.
    FailureReason {
        None = "",
        Invalid = "invalid",
        NotFound = "not_found",
        Capacity = "capacity",
        Image = "image",
        Unschedulable = "unschedulable",
        CrashLoop = "crash_loop",
        Platform = "platform",
        Deadline = "deadline",
        Internal = "internal",
    }
);

/// Compute quantities as the user wrote them (Kubernetes quantity syntax).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceList {
    pub cpu: String,
    pub memory: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub requests: ResourceList,
    pub limits: ResourceList,
}

/// What sessions hold, summed: on one agent (placement) or of one user
/// (quotas). CPU and memory are the sessions' requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub sessions: u64,
    /// Sessions whose desired state is Running.
    pub running: u64,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Usage {
    pub fn plus(self, o: Usage) -> Usage {
        Usage {
            sessions: self.sessions.saturating_add(o.sessions),
            running: self.running.saturating_add(o.running),
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
        }
    }
}

impl ResourceList {
    /// The quantities in base units (millicores, bytes); an empty or
    /// unparsable quantity counts as 0 (requests are validated on create).
    pub fn amounts(&self) -> (u64, u64) {
        let cpu = match self.cpu.as_str() {
            "" => 0,
            c => super::quantity::cpu_millis(c).unwrap_or(0),
        };
        let mem = match self.memory.as_str() {
            "" => 0,
            m => super::quantity::memory_bytes(m).unwrap_or(0),
        };
        (cpu, mem)
    }
}

impl Resources {
    /// `self` with every empty quantity taken from `defaults`.
    pub fn or(&self, defaults: &Resources) -> Resources {
        let pick = |a: &str, b: &str| {
            if a.is_empty() {
                b.to_string()
            } else {
                a.to_string()
            }
        };
        Resources {
            requests: ResourceList {
                cpu: pick(&self.requests.cpu, &defaults.requests.cpu),
                memory: pick(&self.requests.memory, &defaults.requests.memory),
            },
            limits: ResourceList {
                cpu: pick(&self.limits.cpu, &defaults.limits.cpu),
                memory: pick(&self.limits.memory, &defaults.limits.memory),
            },
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    pub container_port: u32,
}

/// Idle and total-run limits, in seconds (0 = none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    pub idle_secs: u64,
    pub max_secs: u64,
}

/// A kind of session users can create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub image: String,
    pub command: Vec<String>,
    pub ports: Vec<Port>,
    pub streaming_port: String,
    pub env: std::collections::BTreeMap<String, String>,
    pub default_resources: Resources,
    pub persistent_home: bool,
    pub timeouts: Timeouts,
    pub home_size: String,
    pub run_as_root: bool,
}

/// Everything an agent needs to run one session: the template resolved
/// against the session's overrides at creation time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub image: String,
    pub command: Vec<String>,
    pub ports: Vec<Port>,
    pub streaming_port: String,
    pub env: std::collections::BTreeMap<String, String>,
    pub resources: Resources,
    pub persistent_home: bool,
    pub home_size: String,
    pub timeouts: Timeouts,
    pub run_as_root: bool,
}

/// Restricts placement to matching agents; empty matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    pub platform: String,
    pub region: String,
}

/// A Kubernetes-style condition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// A session as stored: desired state, observed state, placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub name: String,
    pub user: String,
    pub template: String,
    pub desired: Desired,
    /// Bumped whenever `desired` changes; commands carry the generation they serve.
    pub generation: i64,
    pub phase: Phase,
    pub url: String,
    /// The agent it is placed on; `None` while no agent could take it.
    pub agent_id: Option<String>,
    pub selector: Selector,
    pub workload: WorkloadSpec,
    pub conditions: Vec<Condition>,
    pub failure_reason: FailureReason,
    pub message: String,
    /// Pod name or process id, for operators.
    pub workload_name: String,
    /// Whether the stop that terminates this session also deletes the home.
    pub delete_home: bool,
    /// UID of the Kubernetes Session object it belongs to, if any.
    pub external_id: Option<String>,
    pub created_ms: Millis,
    pub updated_ms: Millis,
    /// The last activity known (idle timeout); see [`crate::policy`].
    pub last_activity_ms: Millis,
    /// When the current RUNNING period began; 0 when not RUNNING.
    pub running_since_ms: Millis,
    /// RUNNING time of the periods before the current one.
    pub ran_ms: Millis,
}

impl Session {
    /// A bare session with only a name, desired state and phase: the base of
    /// placeholders (an orphan's clean-up, a just-deleted session's reply).
    pub fn named(name: &str, desired: Desired, phase: Phase) -> Session {
        Session {
            name: name.to_string(),
            user: String::new(),
            template: String::new(),
            desired,
            generation: 0,
            phase,
            url: String::new(),
            agent_id: None,
            selector: Selector::default(),
            workload: WorkloadSpec::default(),
            conditions: vec![],
            failure_reason: FailureReason::None,
            message: String::new(),
            workload_name: String::new(),
            delete_home: false,
            external_id: None,
            created_ms: 0,
            updated_ms: 0,
            last_activity_ms: 0,
            running_since_ms: 0,
            ran_ms: 0,
        }
    }

    /// Removes the condition of `kind`, if any.
    pub fn clear_condition(&mut self, kind: &str) {
        self.conditions.retain(|c| c.kind != kind);
    }

    /// The condition of `kind`, if set.
    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    /// Sets (or replaces) the condition of `kind`.
    pub fn set_condition(&mut self, kind: &str, status: bool, reason: &str, message: &str) {
        let c = Condition {
            kind: kind.into(),
            status,
            reason: reason.into(),
            message: message.into(),
        };
        match self.conditions.iter_mut().find(|c| c.kind == kind) {
            Some(old) => *old = c,
            None => self.conditions.push(c),
        }
    }
}

/// The step a command asks an agent to take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    Start {
        user: String,
        template: String,
        workload: Box<WorkloadSpec>,
    },
    Stop {
        delete_home: bool,
    },
    Hibernate,
    Wake,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Start { .. } => "start",
            Action::Stop { .. } => "stop",
            Action::Hibernate => "hibernate",
            Action::Wake => "wake",
        }
    }
}

/// A durable command: written before it is sent, finished by the agent's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    pub session: String,
    pub agent_id: String,
    pub generation: i64,
    pub action: Action,
    pub state: CommandState,
    pub deadline_ms: Millis,
    pub created_ms: Millis,
    pub updated_ms: Millis,
    pub failure_reason: FailureReason,
    pub message: String,
    pub retryable: bool,
    /// 1 for the first attempt of a step, then one more per automatic retry.
    pub attempt: i64,
    /// Not sent before this time (a retry's backoff); 0: at once.
    pub not_before_ms: Millis,
    /// The W3C `traceparent` of the span that accepted the command (a retry
    /// keeps its first attempt's), so its delivery, the agent's work and its
    /// result join that trace; "" when tracing is off.
    pub trace_context: String,
    /// Delivered once and put back to pending when its agent's stream ended:
    /// the agent may have applied it, so it is waited for (sent again, the
    /// agent answers from its memory of applied commands), never superseded.
    pub sent_before: bool,
}

/// What an agent may hold (0 = no limit declared).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub max_sessions: u32,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// An agent as remembered by the store (whether or not it is connected now).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentRecord {
    pub id: String,
    pub platform: String,
    pub region: String,
    pub capacity: Capacity,
    pub version: String,
    /// Highest HA fencing token ever seen for this id.
    pub fencing_token: i64,
    pub last_seen_ms: Millis,
    /// The control-plane replica that holds the agent's stream ("" when none).
    pub replica_id: String,
    /// Raised by every attach; a replica claims the agent's commands only
    /// while the epoch it attached with is current.
    pub stream_epoch: i64,
}

/// One session's state as an agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub session: String,
    pub phase: Phase,
    pub url: String,
    pub failure_reason: FailureReason,
    pub message: String,
    pub workload_name: String,
}

/// How a command ended, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed {
        reason: FailureReason,
        message: String,
        retryable: bool,
    },
}

impl Outcome {
    /// `succeeded` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed { .. } => "failed",
        }
    }
}

/// What a revocation refuses: every stream of an agent id, or only the
/// streams that present one client certificate (by serial number).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RevokedTarget {
    Agent(String),
    /// Lowercase hex without leading zeros (see `revocation::normal_serial`).
    Serial(String),
}

impl RevokedTarget {
    /// The stable name of the kind, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Agent(_) => "agent",
            Self::Serial(_) => "serial",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Self::Agent(v) | Self::Serial(v) => v,
        }
    }

    /// Parses a stored (kind, value) pair.
    pub fn from_parts(kind: &str, value: String) -> Option<Self> {
        match kind {
            "agent" => Some(Self::Agent(value)),
            "serial" => Some(Self::Serial(value)),
            _ => None,
        }
    }
}

impl std::fmt::Display for RevokedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Agent(id) => write!(f, "agent id {id:?}"),
            Self::Serial(s) => write!(f, "certificate serial {s}"),
        }
    }
}

/// An entry of the agent deny list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub target: RevokedTarget,
    pub reason: String,
    /// The user who revoked it.
    pub revoked_by: String,
    pub revoked_ms: Millis,
}

impl std::fmt::Display for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was revoked at {} by {}: {}",
            self.target,
            rfc3339(self.revoked_ms),
            self.revoked_by,
            self.reason
        )
    }
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds
/// (`2026-11-30T12:34:56.789Z`).
pub fn rfc3339(ms: Millis) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod time_tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }
}
