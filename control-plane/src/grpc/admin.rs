//! `AgentAdminService` and `TemplateService`: operator views, the agent deny
//! list and the catalog. Every change is written to the audit log.

use std::sync::Arc;
use std::time::Instant;

use streamspace::v1 as pb;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::{self, duration_pb, invalid_status, status, template_pb};
use crate::audit::{AuditLog, method};
use crate::core::model::AgentRecord;
use crate::core::model::now_ms;
use crate::core::model::{Revocation, RevokedTarget};
use crate::core::revocation;
use crate::core::store::CommandFilter;
use crate::core::validate::{self, invalid};
use crate::core::{Caller, Lifecycle, LifecycleError};

/// The wire target of a revoke or unrevoke request, as sent.
macro_rules! raw_target {
    ($t:expr, $m:ident) => {
        match $t {
            Some(pb::$m::Target::AgentId(id)) => Some(RevokedTarget::Agent(id)),
            Some(pb::$m::Target::CertificateSerial(s)) => Some(RevokedTarget::Serial(s)),
            None => None,
        }
    };
}

pub struct AdminApi {
    lifecycle: Arc<Lifecycle>,
    audit: AuditLog,
}

impl AdminApi {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            lifecycle,
            audit: AuditLog::default(),
        }
    }

    /// Writes a line to `audit` for every drain, revoke and unrevoke.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }

    async fn drain(
        &self,
        req: Request<pb::DrainAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        admin(&req)?;
        let id = req.get_ref().id.clone();
        validate::dns_label("id", &id, validate::MAX_NAME).map_err(invalid_status)?;
        if !self.lifecycle.roster().drain(&id) {
            return Err(Status::failed_precondition(format!(
                "agent {id:?} is not connected"
            )));
        }
        let mut agents = self.agents().await?;
        agents.retain(|a| a.id == id);
        agents
            .pop()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("agent {id:?} not found")))
    }

    async fn agents(&self) -> Result<Vec<pb::Agent>, Status> {
        let store = self.lifecycle.store();
        let err = |e: crate::core::store::StoreError| status(e.into());
        let records = store.list_agents().await.map_err(err)?;
        let usage = store.usage_per_agent().await.map_err(err)?;
        let in_flight = store.active_commands_per_agent().await.map_err(err)?;
        let roster = self.lifecycle.roster();
        Ok(records
            .into_iter()
            .map(|a: AgentRecord| {
                let online = roster.get(&a.id);
                pb::Agent {
                    connected: online.is_some(),
                    heartbeat_age: online.as_ref().map(|o| {
                        duration_pb(Instant::now().saturating_duration_since(o.last_heartbeat))
                    }),
                    draining: online.as_ref().is_some_and(|o| o.draining),
                    capacity: Some(convert::capacity_pb(&a.capacity)),
                    sessions: usage.get(&a.id).map_or(0, |u| u.sessions as u32),
                    commands_in_flight: in_flight.get(&a.id).copied().unwrap_or(0),
                    fencing_token: a.fencing_token.max(0) as u64,
                    last_seen: convert::timestamp(a.last_seen_ms),
                    id: a.id,
                    platform: a.platform,
                    region: a.region,
                    agent_version: a.version,
                }
            })
            .collect())
    }
}

#[allow(clippy::result_large_err)]
fn admin<T>(req: &Request<T>) -> Result<Caller, Status> {
    let c = caller(req)?;
    if !c.admin {
        return Err(Status::permission_denied(
            "only an admin may use AgentAdminService",
        ));
    }
    Ok(c)
}

#[tonic::async_trait]
impl pb::agent_admin_service_server::AgentAdminService for AdminApi {
    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        admin(&req)?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: self.agents().await?,
        }))
    }

    async fn get_agent(
        &self,
        req: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        admin(&req)?;
        let id = &req.get_ref().id;
        validate::dns_label("id", id, validate::MAX_NAME).map_err(invalid_status)?;
        self.agents()
            .await?
            .into_iter()
            .find(|a| a.id == *id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("agent {id:?} not found")))
    }

    async fn drain_agent(
        &self,
        req: Request<pb::DrainAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let audit = self
            .audit
            .start(&req, method::DRAIN_AGENT, &req.get_ref().id);
        audit.finish(self.drain(req).await)
    }

    async fn revoke_agent(
        &self,
        req: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::Revocation>, Status> {
        let audit = self.audit.start(
            &req,
            method::REVOKE_AGENT,
            &shown_target(raw_target!(
                req.get_ref().target.clone(),
                revoke_agent_request
            )),
        );
        audit.finish(
            async move {
                let who = caller(&req)?;
                let r = req.into_inner();
                let target = target_from(raw_target!(r.target, revoke_agent_request))?;
                let (rev, released) = self
                    .lifecycle
                    .revoke(&who, target, &r.reason)
                    .await
                    .map_err(status)?;
                let mut pb = revocation_pb(&rev);
                pb.sessions_released = released;
                Ok(Response::new(pb))
            }
            .await,
        )
    }

    async fn unrevoke_agent(
        &self,
        req: Request<pb::UnrevokeAgentRequest>,
    ) -> Result<Response<pb::UnrevokeAgentResponse>, Status> {
        let audit = self.audit.start(
            &req,
            method::UNREVOKE_AGENT,
            &shown_target(raw_target!(
                req.get_ref().target.clone(),
                unrevoke_agent_request
            )),
        );
        audit.finish(
            async move {
                let who = caller(&req)?;
                let target =
                    target_from(raw_target!(req.into_inner().target, unrevoke_agent_request))?;
                let rev = self
                    .lifecycle
                    .unrevoke(&who, target)
                    .await
                    .map_err(status)?;
                Ok(Response::new(pb::UnrevokeAgentResponse {
                    lifted: Some(revocation_pb(&rev)),
                }))
            }
            .await,
        )
    }

    async fn list_revocations(
        &self,
        req: Request<pb::ListRevocationsRequest>,
    ) -> Result<Response<pb::ListRevocationsResponse>, Status> {
        let who = caller(&req)?;
        let list = self.lifecycle.revocations(&who).await.map_err(status)?;
        Ok(Response::new(pb::ListRevocationsResponse {
            revocations: list.iter().map(revocation_pb).collect(),
        }))
    }

    async fn list_commands(
        &self,
        req: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        admin(&req)?;
        let r = req.into_inner();
        let state = match pb::CommandState::try_from(r.state) {
            Ok(pb::CommandState::Unspecified) => None,
            Ok(s) => Some(convert::command_state_from(s)),
            Err(_) => {
                return Err(invalid_status(invalid(
                    "state",
                    format!("unknown command state {}", r.state),
                )));
            }
        };
        let older = convert::duration_from("older_than", &r.older_than).map_err(invalid_status)?;
        let filter = CommandFilter {
            session: Some(r.session).filter(|s| !s.is_empty()),
            agent: Some(r.agent_id).filter(|a| !a.is_empty()),
            state,
            updated_before: (older > 0).then(|| now_ms() - older),
            limit: r.page_size,
        };
        let list = self.lifecycle.list_commands(filter).await.map_err(status)?;
        Ok(Response::new(pb::ListCommandsResponse {
            commands: list.iter().map(convert::outbox_command_pb).collect(),
        }))
    }

    async fn get_command(
        &self,
        req: Request<pb::GetCommandRequest>,
    ) -> Result<Response<pb::OutboxCommand>, Status> {
        admin(&req)?;
        let c = self
            .lifecycle
            .get_command(&req.get_ref().id)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::outbox_command_pb(&c)))
    }

    async fn retry_command(
        &self,
        req: Request<pb::RetryCommandRequest>,
    ) -> Result<Response<pb::RetryCommandResponse>, Status> {
        let audit = self
            .audit
            .start(&req, method::RETRY_COMMAND, &req.get_ref().id);
        let r = async {
            let who = admin(&req)?;
            let (s, c) = self
                .lifecycle
                .retry_command(&req.get_ref().id, &who.user)
                .await
                .map_err(status)?;
            Ok(Response::new(pb::RetryCommandResponse {
                session: Some(convert::session_pb(&s)),
                command: c.as_ref().map(convert::outbox_command_pb),
            }))
        }
        .await;
        audit.finish(r)
    }

    async fn cancel_command(
        &self,
        req: Request<pb::CancelCommandRequest>,
    ) -> Result<Response<pb::OutboxCommand>, Status> {
        let audit = self
            .audit
            .start(&req, method::CANCEL_COMMAND, &req.get_ref().id);
        let r = async {
            let who = admin(&req)?;
            let c = self
                .lifecycle
                .cancel_command(&req.get_ref().id, &who.user)
                .await
                .map_err(status)?;
            Ok(Response::new(convert::outbox_command_pb(&c)))
        }
        .await;
        audit.finish(r)
    }
}

/// The target of a revoke or unrevoke request, checked and normalized.
#[allow(clippy::result_large_err)]
fn target_from(t: Option<RevokedTarget>) -> Result<RevokedTarget, Status> {
    let t = t.ok_or_else(|| {
        invalid_status(invalid(
            "target",
            "is required: set agent_id or certificate_serial",
        ))
    })?;
    let field = match &t {
        RevokedTarget::Agent(_) => "agent_id",
        RevokedTarget::Serial(_) => "certificate_serial",
    };
    revocation::check_target(field, t).map_err(invalid_status)
}

/// The target as the audit log names it.
fn shown_target(t: Option<RevokedTarget>) -> String {
    match t {
        Some(RevokedTarget::Agent(id)) => format!("agent/{}", validate::shown(&id)),
        Some(RevokedTarget::Serial(s)) => format!("serial/{}", validate::shown(&s)),
        None => String::new(),
    }
}

fn revocation_pb(r: &Revocation) -> pb::Revocation {
    use pb::revocation::Target;
    pb::Revocation {
        target: Some(match &r.target {
            RevokedTarget::Agent(id) => Target::AgentId(id.clone()),
            RevokedTarget::Serial(s) => Target::CertificateSerial(s.clone()),
        }),
        reason: r.reason.clone(),
        revoked_by: r.revoked_by.clone(),
        revoked_at: convert::timestamp(r.revoked_ms),
        sessions_released: 0,
    }
}

pub struct TemplateApi {
    lifecycle: Arc<Lifecycle>,
    audit: AuditLog,
}

impl TemplateApi {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self {
            lifecycle,
            audit: AuditLog::default(),
        }
    }

    /// Writes a line to `audit` for every put and delete.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self
    }
}

#[tonic::async_trait]
impl pb::template_service_server::TemplateService for TemplateApi {
    async fn list_templates(
        &self,
        req: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        caller(&req)?;
        let ts = self
            .lifecycle
            .store()
            .list_templates()
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(pb::ListTemplatesResponse {
            templates: ts.iter().map(template_pb).collect(),
        }))
    }

    async fn get_template(
        &self,
        req: Request<pb::GetTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        caller(&req)?;
        let name = &req.get_ref().name;
        validate::dns_label("name", name, validate::MAX_NAME).map_err(invalid_status)?;
        let t = self
            .lifecycle
            .store()
            .get_template(name)
            .await
            .map_err(|e| status(e.into()))?
            .ok_or_else(|| {
                status(LifecycleError::NotFound(format!(
                    "template {name:?} not found"
                )))
            })?;
        Ok(Response::new(template_pb(&t)))
    }

    async fn put_template(
        &self,
        req: Request<pb::PutTemplateRequest>,
    ) -> Result<Response<pb::Template>, Status> {
        let name = req.get_ref().template.as_ref().map(|t| t.name.clone());
        let audit = self.audit.start(
            &req,
            method::PUT_TEMPLATE,
            name.as_deref().unwrap_or_default(),
        );
        audit.finish(
            async move {
                let who = caller(&req)?;
                let t = req
                    .into_inner()
                    .template
                    .ok_or_else(|| invalid_status(invalid("template", "is required")))?;
                let t = convert::template_from(t).map_err(invalid_status)?;
                let t = self.lifecycle.put_template(&who, t).await.map_err(status)?;
                Ok(Response::new(template_pb(&t)))
            }
            .await,
        )
    }

    async fn delete_template(
        &self,
        req: Request<pb::DeleteTemplateRequest>,
    ) -> Result<Response<()>, Status> {
        let audit = self
            .audit
            .start(&req, method::DELETE_TEMPLATE, &req.get_ref().name);
        audit.finish(
            async move {
                let who = caller(&req)?;
                self.lifecycle
                    .delete_template(&who, &req.get_ref().name)
                    .await
                    .map_err(status)?;
                Ok(Response::new(()))
            }
            .await,
        )
    }
}
