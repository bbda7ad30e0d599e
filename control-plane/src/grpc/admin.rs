//! `AgentAdminService` and `TemplateService`: operator views and the catalog.

use std::sync::Arc;
use std::time::Instant;

use streamspace::v1 as pb;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::{self, duration_pb, invalid_status, status, template_pb};
use crate::core::model::AgentRecord;
use crate::core::validate::{self, invalid};
use crate::core::{Caller, Lifecycle, LifecycleError};

pub struct AdminApi {
    lifecycle: Arc<Lifecycle>,
}

impl AdminApi {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self { lifecycle }
    }

    async fn agents(&self) -> Result<Vec<pb::Agent>, Status> {
        let store = self.lifecycle.store();
        let err = |e: crate::core::store::StoreError| status(e.into());
        let records = store.list_agents().await.map_err(err)?;
        let sessions = store.sessions_per_agent().await.map_err(err)?;
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
                    sessions: sessions.get(&a.id).copied().unwrap_or(0),
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
}

pub struct TemplateApi {
    lifecycle: Arc<Lifecycle>,
}

impl TemplateApi {
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self { lifecycle }
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
        let who = caller(&req)?;
        let t = req
            .into_inner()
            .template
            .ok_or_else(|| invalid_status(invalid("template", "is required")))?;
        let t = convert::template_from(t).map_err(invalid_status)?;
        let t = self.lifecycle.put_template(&who, t).await.map_err(status)?;
        Ok(Response::new(template_pb(&t)))
    }

    async fn delete_template(
        &self,
        req: Request<pb::DeleteTemplateRequest>,
    ) -> Result<Response<()>, Status> {
        let who = caller(&req)?;
        self.lifecycle
            .delete_template(&who, &req.get_ref().name)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }
}
