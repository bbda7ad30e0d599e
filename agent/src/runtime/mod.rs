//! Runtimes apply commands to a platform and report what runs. Every action
//! is idempotent ("apply", not "create"): starting a running session, stopping
//! a stopped one or hibernating a hibernated one succeeds and changes nothing.

pub mod kube_objects;
pub mod kubernetes;
pub mod noop;
pub mod process;

use async_trait::async_trait;
use streamspace::v1 as pb;
use tokio::sync::mpsc;

/// A failed action, with a typed reason and whether a retry can help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    pub reason: pb::FailureReason,
    pub message: String,
    pub retryable: bool,
}

impl RuntimeError {
    pub fn new(reason: pb::FailureReason, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            reason,
            message: message.into(),
            retryable,
        }
    }

    pub fn not_found(session: &str) -> Self {
        Self::new(
            pb::FailureReason::NotFound,
            format!("session {session} does not run on this agent"),
            false,
        )
    }
}

/// Where runtimes report session transitions. Never blocks: if the agent is
/// disconnected and the buffer is full, the status is dropped (the next
/// Hello's inventory carries the current state anyway).
#[derive(Clone)]
pub struct StatusSink(mpsc::Sender<pb::SessionStatus>);

impl StatusSink {
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<pb::SessionStatus>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self(tx), rx)
    }

    pub fn report(
        &self,
        session: &str,
        phase: pb::SessionPhase,
        url: &str,
        reason: pb::FailureReason,
        message: &str,
        workload: &str,
    ) {
        let _ = self
            .0
            .try_send(status(session, phase, url, reason, message, workload));
    }
}

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

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Every session this runtime runs now, with its observed state.
    async fn inventory(&self) -> Result<Vec<pb::SessionStatus>, RuntimeError>;
    /// Makes sure the session's workload exists and runs.
    async fn start(&self, session: &str, start: &pb::StartSession) -> Result<(), RuntimeError>;
    /// Removes the workload; succeeds if it is already gone.
    async fn stop(&self, session: &str, delete_home: bool) -> Result<(), RuntimeError>;
    async fn hibernate(&self, session: &str) -> Result<(), RuntimeError>;
    async fn wake(&self, session: &str) -> Result<(), RuntimeError>;
    /// What is in use now, for heartbeats.
    fn in_use(&self) -> pb::Capacity;
    /// Called once when the agent exits.
    async fn shutdown(&self) {}
}
