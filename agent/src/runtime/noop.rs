//! A runtime that runs nothing: every command succeeds at once and sessions
//! report RUNNING/HIBERNATED. Used by the benchmark's simulated agents so
//! only the control plane and the protocol are measured.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use streamspace::v1 as pb;

use super::names::{check_session, check_user};
use super::{Runtime, RuntimeError, StatusSink, status};

pub struct NoopRuntime {
    sessions: Mutex<HashMap<String, pb::SessionPhase>>,
    status: StatusSink,
}

impl NoopRuntime {
    pub fn new(status: StatusSink) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            status,
        }
    }

    /// Moves a session that exists to `phase`; NOT_FOUND otherwise.
    fn set_existing(&self, session: &str, phase: pb::SessionPhase) -> Result<(), RuntimeError> {
        check_session(session)?;
        if !self
            .sessions
            .lock()
            .expect("noop lock")
            .contains_key(session)
        {
            return Err(RuntimeError::not_found(session));
        }
        self.set(session, Some(phase))
    }

    fn set(&self, session: &str, phase: Option<pb::SessionPhase>) -> Result<(), RuntimeError> {
        let mut s = self.sessions.lock().expect("noop lock");
        match phase {
            Some(p) => {
                s.insert(session.to_string(), p);
            }
            None => {
                s.remove(session);
            }
        }
        let p = phase.unwrap_or(pb::SessionPhase::Stopped);
        let url = if p == pb::SessionPhase::Running {
            format!("noop://{session}")
        } else {
            String::new()
        };
        self.status
            .report(session, p, &url, pb::FailureReason::Unspecified, "", "");
        Ok(())
    }
}

#[async_trait]
impl Runtime for NoopRuntime {
    async fn inventory(&self) -> Result<Vec<pb::SessionStatus>, RuntimeError> {
        let s = self.sessions.lock().expect("noop lock");
        Ok(s.iter()
            .map(|(id, p)| {
                let url = if *p == pb::SessionPhase::Running {
                    format!("noop://{id}")
                } else {
                    String::new()
                };
                status(id, *p, &url, pb::FailureReason::Unspecified, "", "")
            })
            .collect())
    }

    async fn start(&self, session: &str, start: &pb::StartSession) -> Result<(), RuntimeError> {
        check_session(session)?;
        check_user(&start.user)?;
        self.set(session, Some(pb::SessionPhase::Running))
    }

    async fn stop(&self, session: &str, _: bool) -> Result<(), RuntimeError> {
        check_session(session)?;
        self.set(session, None)
    }

    async fn hibernate(&self, session: &str) -> Result<(), RuntimeError> {
        self.set_existing(session, pb::SessionPhase::Hibernated)
    }

    async fn wake(&self, session: &str) -> Result<(), RuntimeError> {
        self.set_existing(session, pb::SessionPhase::Running)
    }

    fn in_use(&self) -> pb::Capacity {
        pb::Capacity {
            max_sessions: self.sessions.lock().expect("noop lock").len() as u32,
            ..Default::default()
        }
    }
}
