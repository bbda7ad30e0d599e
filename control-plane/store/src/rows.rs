//! Flat database rows and their conversion to domain types. Shared by the
//! SQLite and PostgreSQL stores: both use the same column types (TEXT,
//! BIGINT, BOOLEAN) and keep structured fields as JSON text.

use streamspace_core::model::*;
use streamspace_core::store::StoreError;

#[derive(sqlx::FromRow)]
pub struct SessionRow {
    pub name: String,
    pub user_name: String,
    pub template: String,
    pub desired: String,
    pub generation: i64,
    pub phase: String,
    pub url: String,
    pub agent_id: Option<String>,
    pub selector: String,
    pub workload: String,
    pub conditions: String,
    pub failure_reason: String,
    pub message: String,
    pub workload_name: String,
    pub delete_home: bool,
    pub external_id: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub last_activity_ms: i64,
    pub running_since_ms: i64,
    pub ran_ms: i64,
}

/// A claimed command with its queue position (RETURNING has no order).
#[derive(sqlx::FromRow)]
pub struct ClaimedRow {
    pub seq: i64,
    #[sqlx(flatten)]
    pub command: CommandRow,
}

#[derive(sqlx::FromRow)]
pub struct CommandRow {
    pub id: String,
    pub session: String,
    pub agent_id: String,
    pub generation: i64,
    pub action: String,
    pub state: String,
    pub deadline_ms: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub failure_reason: String,
    pub message: String,
    pub retryable: bool,
    pub attempt: i64,
    pub not_before_ms: i64,
    pub trace_context: String,
    pub sent_before: bool,
}

#[derive(sqlx::FromRow)]
pub struct AgentRow {
    pub id: String,
    pub platform: String,
    pub region: String,
    pub capacity: String,
    pub version: String,
    pub fencing_token: i64,
    pub last_seen_ms: i64,
    pub replica_id: String,
    pub stream_epoch: i64,
}

#[derive(sqlx::FromRow)]
pub struct TemplateRow {
    pub spec: String,
}

#[derive(sqlx::FromRow)]
pub struct RevocationRow {
    pub kind: String,
    pub value: String,
    pub reason: String,
    pub revoked_by: String,
    pub revoked_ms: i64,
}

fn corrupt(what: &str, v: &str) -> StoreError {
    StoreError::Backend(format!("stored {what} {v:?} is not valid"))
}

fn json<T: serde::de::DeserializeOwned>(what: &str, v: &str) -> Result<T, StoreError> {
    serde_json::from_str(v)
        .map_err(|e| StoreError::Backend(format!("stored {what} is not valid JSON: {e}")))
}

pub fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("domain types serialize")
}

impl TryFrom<SessionRow> for Session {
    type Error = StoreError;
    fn try_from(r: SessionRow) -> Result<Self, StoreError> {
        Ok(Session {
            desired: Desired::parse(&r.desired).ok_or_else(|| corrupt("desired", &r.desired))?,
            phase: Phase::parse(&r.phase).ok_or_else(|| corrupt("phase", &r.phase))?,
            failure_reason: FailureReason::parse(&r.failure_reason)
                .ok_or_else(|| corrupt("failure_reason", &r.failure_reason))?,
            selector: json("selector", &r.selector)?,
            workload: json("workload", &r.workload)?,
            conditions: json("conditions", &r.conditions)?,
            name: r.name,
            user: r.user_name,
            template: r.template,
            generation: r.generation,
            url: r.url,
            agent_id: r.agent_id,
            message: r.message,
            workload_name: r.workload_name,
            delete_home: r.delete_home,
            external_id: r.external_id,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            last_activity_ms: r.last_activity_ms,
            running_since_ms: r.running_since_ms,
            ran_ms: r.ran_ms,
        })
    }
}

impl TryFrom<CommandRow> for Command {
    type Error = StoreError;
    fn try_from(r: CommandRow) -> Result<Self, StoreError> {
        Ok(Command {
            action: json("action", &r.action)?,
            state: CommandState::parse(&r.state)
                .ok_or_else(|| corrupt("command state", &r.state))?,
            failure_reason: FailureReason::parse(&r.failure_reason)
                .ok_or_else(|| corrupt("failure_reason", &r.failure_reason))?,
            id: r.id,
            session: r.session,
            agent_id: r.agent_id,
            generation: r.generation,
            deadline_ms: r.deadline_ms,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            message: r.message,
            retryable: r.retryable,
            attempt: r.attempt,
            not_before_ms: r.not_before_ms,
            trace_context: r.trace_context,
            sent_before: r.sent_before,
        })
    }
}

impl TryFrom<AgentRow> for AgentRecord {
    type Error = StoreError;
    fn try_from(r: AgentRow) -> Result<Self, StoreError> {
        Ok(AgentRecord {
            capacity: json("capacity", &r.capacity)?,
            id: r.id,
            platform: r.platform,
            region: r.region,
            version: r.version,
            fencing_token: r.fencing_token,
            last_seen_ms: r.last_seen_ms,
            replica_id: r.replica_id,
            stream_epoch: r.stream_epoch,
        })
    }
}

impl TryFrom<TemplateRow> for Template {
    type Error = StoreError;
    fn try_from(r: TemplateRow) -> Result<Self, StoreError> {
        json("template", &r.spec)
    }
}

impl TryFrom<RevocationRow> for Revocation {
    type Error = StoreError;
    fn try_from(r: RevocationRow) -> Result<Self, StoreError> {
        Ok(Revocation {
            target: RevokedTarget::from_parts(&r.kind, r.value)
                .ok_or_else(|| corrupt("revocation kind", &r.kind))?,
            reason: r.reason,
            revoked_by: r.revoked_by,
            revoked_ms: r.revoked_ms,
        })
    }
}
