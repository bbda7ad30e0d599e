//! Runtimes apply commands to a platform and report what runs. Every action
//! is idempotent ("apply", not "create"): starting a running session, stopping
//! a stopped one or hibernating a hibernated one succeeds and changes nothing.

pub mod kube_objects;
pub mod kubernetes;
pub mod names;
pub mod noop;
pub mod ports;
pub mod process;
pub mod status;

use async_trait::async_trait;
use streamspace::v1 as pb;

pub use status::{StatusSink, status};

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

/// What a workload requests: (millicores, bytes); a missing or unparsable
/// quantity counts as 0 (the control plane validated them).
pub fn requested(r: Option<&pb::Resources>) -> (u64, u64) {
    let Some(req) = r.and_then(|r| r.requests.as_ref()) else {
        return (0, 0);
    };
    let q = |s: &str, f: fn(&str) -> Result<u64, String>| match s {
        "" => 0,
        s => f(s).unwrap_or(0),
    };
    (
        q(&req.cpu, streamspace::quantity::cpu_millis),
        q(&req.memory, streamspace::quantity::memory_bytes),
    )
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
    /// Sessions a user is connected to now, where the runtime can see it
    /// (sent in heartbeats as activity for the idle timeout). None by
    /// default: the kubernetes runtime cannot see into the pod's network.
    fn active_sessions(&self) -> Vec<String> {
        Vec::new()
    }
    /// Called once when the agent exits.
    async fn shutdown(&self) {}
}
