//! Wiring: opens the store, binds the agent listener (mTLS) and the API
//! listener (TLS + bearer tokens, static or OIDC), each with health and
//! reflection over its own services only, runs the
//! expiry sweeper, and shuts down in order: drain agents, then stop serving.
//! An optional plaintext health listener for kubelet probes reports SERVING
//! from when the store is open and both listeners are bound until shutdown
//! begins.
//! Both listeners accept through [`crate::listen`] (connection budget and
//! first-request deadline) and answer unreadable requests through
//! [`crate::grpc::edge_status`] (INVALID_ARGUMENT / RESOURCE_EXHAUSTED).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use streamspace::v1 as pb;
use streamspace_runtime_util::HealthEndpoint;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::core::roster::Roster;
use crate::core::{Lifecycle, LifecycleConfig};
use crate::grpc::admin::{AdminApi, TemplateApi};
use crate::grpc::agent::{AgentHub, HubConfig};
use crate::grpc::auth::{Authenticator, Tokens};
use crate::grpc::edge_status::EdgeStatusLayer;
use crate::grpc::oidc::{Oidc, OidcConfig};
use crate::grpc::session::SessionApi;
use crate::listen::{self, EdgeLimits};
use crate::reflection::{Served, health_and_reflection};

pub use crate::tls::{ServerTls, TlsMaterial};

#[derive(Clone)]
pub struct ServerConfig {
    pub agent_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub database_url: String,
    /// This replica's name, recorded on the agents whose streams it holds.
    pub replica_id: String,
    /// Both listeners' TLS settings, read at every accept (so a replacement,
    /// e.g. by [`ServerTls::watch_files`], applies to new connections).
    pub tls: ServerTls,
    pub tokens: Tokens,
    /// Users from an OpenID Connect identity provider, besides the tokens.
    pub oidc: Option<OidcConfig>,
    pub hub: HubConfig,
    pub lifecycle: LifecycleConfig,
    /// Quotas from the configuration (source "config").
    pub quotas: Vec<crate::core::quota::Quota>,
    /// Run the embedded Session controller against this cluster.
    pub kube: Option<crate::k8s::KubeOptions>,
    /// Connection budget and first-request deadline, per listener.
    pub edge: EdgeLimits,
    /// Plaintext grpc.health.v1 listener for kubelet probes; None = none.
    pub health_addr: Option<SocketAddr>,
    /// Plain-HTTP `/metrics` listener (Prometheus); None = no metrics at all.
    pub metrics_addr: Option<SocketAddr>,
    /// Per-caller request rate and watch limits of the API.
    pub limits: crate::grpc::limits::LimitConfig,
    /// Where state-changing API calls are recorded (default: nowhere).
    pub audit: crate::audit::AuditLog,
}

/// A running control plane.
pub struct ControlPlane {
    pub agent_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// The bound plaintext health listener, if one was asked for.
    pub health_addr: Option<SocketAddr>,
    /// The bound metrics listener, if one was asked for.
    pub metrics_addr: Option<SocketAddr>,
    pub lifecycle: Arc<Lifecycle>,
    /// The listeners' TLS settings (expiry of the material in force).
    pub tls: ServerTls,
    /// The plaintext health listener, turned NOT_SERVING when shutdown begins.
    probe: Option<HealthEndpoint>,
    drain: CancellationToken,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    drain_grace: Duration,
    /// On SQLite: the lock that keeps a second replica off the database,
    /// released once this one has stopped.
    _single: Option<crate::store::SingleReplica>,
}

const API_MAX_MESSAGE: usize = 1 << 20;

/// What the agent listener serves (besides health and reflection).
pub const AGENT_SERVICES: &[&str] = &["streamspace.v1.AgentService"];
/// What the API listener serves (besides health and reflection).
pub const API_SERVICES: &[&str] = &[
    "streamspace.v1.SessionService",
    "streamspace.v1.TemplateService",
    "streamspace.v1.AgentAdminService",
];

impl ControlPlane {
    /// Opens the store, binds both listeners and starts serving.
    pub async fn start(cfg: ServerConfig) -> anyhow::Result<Self> {
        let drain = CancellationToken::new();
        let stop = CancellationToken::new();
        // Whatever started stops again if a later step fails.
        let stop_on_error = stop.clone().drop_guard();
        // Bound first, so probes get an answer (NOT_SERVING) while the store opens.
        let mut tasks = Vec::new();
        let probe = match cfg.health_addr {
            Some(addr) => {
                let (probe, task) =
                    HealthEndpoint::start(addr, false, stop.clone().cancelled_owned())
                        .await
                        .with_context(|| format!("binding the health listener on {addr}"))?;
                tasks.push(task);
                Some(probe)
            }
            None => None,
        };
        let single =
            crate::store::single_replica(&cfg.database_url).with_context(|| "opening the store")?;
        let store = crate::store::open(&cfg.database_url)
            .await
            .with_context(|| "opening the store")?;
        let roster = Arc::new(Roster::new(cfg.hub.heartbeat_interval * 3));
        let remote = store.remote_changes();
        let lifecycle =
            Arc::new(Lifecycle::new(store, roster, cfg.lifecycle).with_replica_id(&cfg.replica_id));
        if let Some(changes) = remote {
            let lc = lifecycle.clone();
            let s = stop.clone();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = s.cancelled() => {}
                    _ = lc.follow_remote(changes) => {}
                }
            }));
        }
        lifecycle.quotas().set("config", cfg.quotas.clone());
        let agent_listener = TcpListener::bind(cfg.agent_addr)
            .await
            .with_context(|| format!("binding the agent listener on {}", cfg.agent_addr))?;
        let api_listener = TcpListener::bind(cfg.api_addr)
            .await
            .with_context(|| format!("binding the API listener on {}", cfg.api_addr))?;
        let agent_addr = agent_listener.local_addr()?;
        let api_addr = api_listener.local_addr()?;
        let keepalive = Some(cfg.hub.heartbeat_interval);

        // Agent listener: client certificates required.
        let Served {
            reporter,
            health,
            v1,
            v1alpha,
        } = health_and_reflection(AGENT_SERVICES)?;
        reporter
            .set_serving::<pb::agent_service_server::AgentServiceServer<AgentHub>>()
            .await;
        let metrics = cfg
            .metrics_addr
            .map(|_| Arc::new(crate::metrics::Metrics::new()));
        if let Some(m) = &metrics {
            lifecycle.store().observe_writes(m.clone());
        }
        let hub = AgentHub::new(lifecycle.clone(), cfg.hub.clone(), drain.clone())
            .with_metrics(metrics.clone());
        let agent_svc = pb::agent_service_server::AgentServiceServer::new(hub)
            .max_decoding_message_size(cfg.hub.max_message_bytes as usize)
            .max_encoding_message_size(cfg.hub.max_message_bytes as usize);
        let router = Server::builder()
            .layer(EdgeStatusLayer)
            .http2_keepalive_interval(keepalive)
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .max_concurrent_streams(Some(64))
            .add_service(health)
            .add_service(v1)
            .add_service(v1alpha)
            .add_service(agent_svc);
        let (s, agent_tls) = (stop.clone(), cfg.tls.clone());
        tasks.push(tokio::spawn(async move {
            let tls = move || agent_tls.agent();
            let incoming = listen::incoming("agent", agent_listener, tls, cfg.edge);
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, s.cancelled_owned())
                .await
            {
                warn!(error = %e, "agent listener stopped");
            }
        }));

        // API listener: TLS, bearer tokens.
        let Served {
            reporter,
            health,
            v1,
            v1alpha,
        } = health_and_reflection(API_SERVICES)?;
        let oidc = match &cfg.oidc {
            Some(o) => {
                let (oidc, task) = Oidc::start(o, stop.clone()).context("OIDC")?;
                tasks.push(task);
                info!(issuer = %o.issuer, "OIDC users accepted");
                Some(oidc)
            }
            None => None,
        };
        let authenticator = Authenticator::new(cfg.tokens.clone(), oidc);
        let limits = crate::grpc::limits::ApiLimits::new(cfg.limits);
        let api_limits = limits.clone();
        // Authenticate, then count the request against the caller's rate.
        let auth = move |req| {
            let req = authenticator.authenticate(req)?;
            if let Some(who) = req.extensions().get::<crate::core::Caller>() {
                api_limits.admit(&who.user)?;
            }
            Ok(req)
        };
        use pb::agent_admin_service_server::AgentAdminServiceServer as Admin;
        use pb::session_service_server::SessionServiceServer as Sessions;
        use pb::template_service_server::TemplateServiceServer as Templates;
        reporter.set_serving::<Sessions<SessionApi>>().await;
        reporter.set_serving::<Admin<AdminApi>>().await;
        reporter.set_serving::<Templates<TemplateApi>>().await;
        let audit = &cfg.audit;
        let sessions = Sessions::new(
            SessionApi::new(lifecycle.clone(), drain.clone(), limits).with_audit(audit.clone()),
        )
        .max_decoding_message_size(API_MAX_MESSAGE);
        let admin = Admin::new(AdminApi::new(lifecycle.clone()).with_audit(audit.clone()))
            .max_decoding_message_size(API_MAX_MESSAGE);
        let templates =
            Templates::new(TemplateApi::new(lifecycle.clone()).with_audit(audit.clone()))
                .max_decoding_message_size(API_MAX_MESSAGE);
        let router = Server::builder()
            .layer(crate::grpc::observe::ApiObserveLayer::new(metrics.clone()))
            .layer(EdgeStatusLayer)
            .http2_keepalive_interval(keepalive)
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(health)
            .add_service(v1)
            .add_service(v1alpha)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                sessions,
                auth.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                admin,
                auth.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                templates, auth,
            ));
        let (s, api_tls) = (stop.clone(), cfg.tls.clone());
        tasks.push(tokio::spawn(async move {
            let tls = move || api_tls.api();
            let incoming = listen::incoming("API", api_listener, tls, cfg.edge);
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, s.cancelled_owned())
                .await
            {
                warn!(error = %e, "API listener stopped");
            }
        }));

        // Sweeper: expire overdue commands, close revoked streams (revoked on
        // another replica), enforce the session policies, retry placement.
        let lc = lifecycle.clone();
        let s = stop.clone();
        let sweep_metrics = metrics.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tick.tick() => {
                        match lc.expire_overdue().await {
                            Ok(expired) => if let Some(m) = &sweep_metrics {
                                for c in &expired {
                                    m.expired(c);
                                }
                            },
                            Err(e) => warn!(error = %e, "expiring commands"),
                        }
                        if let Err(e) = lc.keep_presence().await { warn!(error = %e, "replica presence"); }
                        if let Err(e) = lc.enforce_revocations().await { warn!(error = %e, "enforcing revocations"); }
                        if let Err(e) = lc.enforce_policies().await { warn!(error = %e, "enforcing session policies"); }
                        if let Err(e) = lc.ring_due().await { warn!(error = %e, "waking agents with due retries"); }
                        // Every 10 s: a pass prunes up to 100,000 commands
                        // (200 batches of 500), so retention keeps up with
                        // 10,000 finished commands/s.
                        if n.is_multiple_of(10) {
                            match lc.prune_commands(lc.config().retention).await {
                                Ok(0) => {}
                                Ok(pruned) => info!(pruned, "finished commands past the retention pruned"),
                                Err(e) => warn!(error = %e, "pruning commands"),
                            }
                        }
                        n += 1;
                        if n.is_multiple_of(5) && let Err(e) = lc.place_unplaced().await { warn!(error = %e, "placing sessions"); }
                    }
                }
            }
        }));
        if let Some(k) = &cfg.kube {
            tasks.extend(
                crate::k8s::start(k, lifecycle.clone(), metrics.clone(), stop.clone())
                    .await
                    .context("starting the Kubernetes controller")?,
            );
        }
        let metrics_addr = match (cfg.metrics_addr, metrics) {
            (Some(addr), Some(m)) => {
                let (bound, task) = crate::metrics::serve(
                    addr,
                    m,
                    lifecycle.clone(),
                    cfg.tls.clone(),
                    stop.clone(),
                )
                .await
                .with_context(|| format!("binding the metrics listener on {addr}"))?;
                tasks.push(task);
                Some(bound)
            }
            _ => None,
        };
        if let Some(p) = &probe {
            p.set_serving(true).await;
        }
        stop_on_error.disarm();
        info!(%agent_addr, %api_addr, kubernetes = cfg.kube.is_some(), "control plane serving");
        Ok(Self {
            agent_addr,
            api_addr,
            health_addr: probe.as_ref().map(HealthEndpoint::local_addr),
            metrics_addr,
            lifecycle,
            tls: cfg.tls,
            probe,
            drain,
            stop,
            tasks,
            drain_grace: cfg.hub.drain_grace,
            _single: single,
        })
    }

    /// Drains agents (they finish in-flight work or it stays durable for the
    /// next start), then stops both listeners.
    pub async fn shutdown(self) {
        if let Some(p) = &self.probe {
            p.set_serving(false).await;
        }
        info!("draining agents");
        self.drain.cancel();
        let deadline = tokio::time::Instant::now() + self.drain_grace;
        while !self.lifecycle.roster().all().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        info!("control plane stopped");
    }
}
