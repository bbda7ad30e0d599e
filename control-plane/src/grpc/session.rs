//! `SessionService`: translates requests into lifecycle calls.

use std::sync::Arc;

use streamspace::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::{self, invalid_status, session_pb, status};
use crate::audit::{AuditLog, method};
use crate::core::Lifecycle;
use crate::core::model::Desired;
use crate::core::store::SessionFilter;
use crate::core::validate::{self, invalid};

pub struct SessionApi {
    lifecycle: Arc<Lifecycle>,
    shutdown: CancellationToken,
    limits: super::limits::ApiLimits,
    audit: AuditLog,
}

impl SessionApi {
    pub fn new(
        lifecycle: Arc<Lifecycle>,
        shutdown: CancellationToken,
        limits: super::limits::ApiLimits,
    ) -> Self {
        Self {
            lifecycle,
            shutdown,
            limits,
            audit: AuditLog::default(),
        }
    }

    /// Hibernate, wake and delete: sets the desired state of the named session.
    async fn set_desired<T: Named>(
        &self,
        req: &Request<T>,
        desired: Desired,
        delete_home: bool,
    ) -> Result<Response<pb::Session>, Status> {
        let who = caller(req)?;
        let s = self
            .lifecycle
            .set_desired(&who, req.get_ref().name(), desired, delete_home)
            .await
            .map_err(status)?;
        Ok(Response::new(session_pb(&s)))
    }

    /// Writes a line to `audit` for every create, hibernate, wake and delete.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }
}

/// A request that names one session.
trait Named {
    fn name(&self) -> &str;
}

macro_rules! named {
    ($($t:ty),+) => { $(impl Named for $t { fn name(&self) -> &str { &self.name } })+ };
}
named!(
    pb::HibernateSessionRequest,
    pb::WakeSessionRequest,
    pb::DeleteSessionRequest
);

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

fn page_token(ms: i64, name: &str) -> String {
    format!("{ms}/{name}")
}

#[allow(clippy::result_large_err)]
fn parse_page_token(t: &str) -> Result<Option<(i64, String)>, Status> {
    if t.is_empty() {
        return Ok(None);
    }
    t.split_once('/')
        .filter(|(ms, name)| {
            ms.len() <= 20 && validate::dns_label("", name, validate::MAX_SESSION_NAME).is_ok()
        })
        .and_then(|(ms, name)| Some((ms.parse().ok()?, name.to_string())))
        .map(Some)
        .ok_or_else(|| {
            invalid_status(invalid(
                "page_token",
                "is not a token returned by ListSessions",
            ))
        })
}

#[allow(clippy::result_large_err)]
fn optional_user(u: &str) -> Result<Option<String>, Status> {
    if u.is_empty() {
        return Ok(None);
    }
    validate::user_name("user", u).map_err(invalid_status)?;
    Ok(Some(u.to_string()))
}

#[tonic::async_trait]
impl pb::session_service_server::SessionService for SessionApi {
    async fn create_session(
        &self,
        req: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let audit = self
            .audit
            .start(&req, method::CREATE_SESSION, &req.get_ref().name);
        audit.finish(
            async move {
                let who = caller(&req)?;
                let r = req.into_inner();
                let new = convert::new_session_from(r).map_err(invalid_status)?;
                let s = self
                    .lifecycle
                    .create_session(&who, new)
                    .await
                    .map_err(status)?;
                Ok(Response::new(session_pb(&s)))
            }
            .await,
        )
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let who = caller(&req)?;
        let s = self
            .lifecycle
            .get_session(&who, &req.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(session_pb(&s)))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let limit = match r.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let filter = SessionFilter {
            user: optional_user(&r.user)?,
            phase: convert::phase_from("phase", r.phase).map_err(invalid_status)?,
            after: parse_page_token(&r.page_token)?,
            limit: limit + 1,
        };
        let mut sessions = self
            .lifecycle
            .list_sessions(&who, filter)
            .await
            .map_err(status)?;
        let next_page_token = if sessions.len() > limit as usize {
            sessions.truncate(limit as usize);
            sessions
                .last()
                .map(|s| page_token(s.created_ms, &s.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions.iter().map(session_pb).collect(),
            next_page_token,
        }))
    }

    type WatchSessionsStream = ReceiverStream<Result<pb::SessionEvent, Status>>;

    async fn watch_sessions(
        &self,
        req: Request<pb::WatchSessionsRequest>,
    ) -> Result<Response<Self::WatchSessionsStream>, Status> {
        let who = caller(&req)?;
        // Held by the stream's task: the slot is free again when the watch ends.
        let slot = self.limits.watch(&who.user)?;
        let r = req.into_inner();
        let user = optional_user(&r.user)?;
        // Same authorization as listing; fails early if not allowed.
        let probe = SessionFilter {
            user: user.clone(),
            limit: 1,
            ..Default::default()
        };
        self.lifecycle
            .list_sessions(&who, probe)
            .await
            .map_err(status)?;
        let only = match (&user, who.admin) {
            (Some(u), _) => Some(u.clone()),
            (None, true) => None,
            (None, false) => Some(who.user.clone()),
        };
        let mut events = self.lifecycle.subscribe();
        let (tx, rx) = mpsc::channel(256);
        if r.send_initial {
            let mut after = None;
            loop {
                let page = SessionFilter {
                    user: only.clone(),
                    after: after.clone(),
                    limit: 500,
                    ..Default::default()
                };
                let batch = self
                    .lifecycle
                    .list_sessions(&who, page)
                    .await
                    .map_err(status)?;
                for s in &batch {
                    let ev = pb::SessionEvent {
                        r#type: pb::session_event::Type::Added as i32,
                        session: Some(session_pb(s)),
                    };
                    if tx.send(Ok(ev)).await.is_err() {
                        return Ok(Response::new(ReceiverStream::new(rx)));
                    }
                }
                match batch.last() {
                    Some(s) if batch.len() == 500 => after = Some((s.created_ms, s.name.clone())),
                    _ => break,
                }
            }
        }
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("control plane shutting down; watch again"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    ev = events.recv() => match ev {
                        Ok(ev) => {
                            if only.as_ref().is_some_and(|u| *u != ev.session.user) { continue; }
                            if tx.send(Ok(convert::event_pb(&ev))).await.is_err() { return; }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let _ = tx.send(Err(Status::aborted(format!(
                                "watcher fell {n} events behind; list and watch again")))).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn hibernate_session(
        &self,
        req: Request<pb::HibernateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let audit = self
            .audit
            .start(&req, method::HIBERNATE_SESSION, &req.get_ref().name);
        audit.finish(self.set_desired(&req, Desired::Hibernated, false).await)
    }

    /// Not audited: a portal calls it every few seconds while a tab is open,
    /// and it changes no desired state.
    async fn touch_session(
        &self,
        req: Request<pb::TouchSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let who = caller(&req)?;
        let s = self
            .lifecycle
            .touch(&who, &req.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(session_pb(&s)))
    }

    async fn wake_session(
        &self,
        req: Request<pb::WakeSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let audit = self
            .audit
            .start(&req, method::WAKE_SESSION, &req.get_ref().name);
        audit.finish(self.set_desired(&req, Desired::Running, false).await)
    }

    async fn delete_session(
        &self,
        req: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let audit = self
            .audit
            .start(&req, method::DELETE_SESSION, &req.get_ref().name);
        let delete_home = req.get_ref().delete_home;
        audit.finish(
            self.set_desired(&req, Desired::Terminated, delete_home)
                .await,
        )
    }
}
