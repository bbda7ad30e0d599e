//! Wiring: opens the store, binds the agent listener (mTLS) and the API
//! listener (TLS + bearer tokens, static or OIDC), both with health and reflection, runs the
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

/// PEM material for both listeners.
#[derive(Clone)]
pub struct TlsMaterial {
    pub server_cert: String,
    pub server_key: String,
    /// CA that signs agent client certificates.
    pub agent_ca: String,
}

#[derive(Clone)]
pub struct ServerConfig {
    pub agent_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub database_url: String,
    pub tls: TlsMaterial,
    pub tokens: Tokens,
    /// Users from an OpenID Connect identity provider, besides the tokens.
    pub oidc: Option<OidcConfig>,
    pub hub: HubConfig,
    pub lifecycle: LifecycleConfig,
    /// Run the embedded Session controller against this cluster.
    pub kube: Option<crate::k8s::KubeOptions>,
    /// Connection budget and first-request deadline, per listener.
    pub edge: EdgeLimits,
    /// Plaintext grpc.health.v1 listener for kubelet probes; None = none.
    pub health_addr: Option<SocketAddr>,
}

/// A running control plane.
pub struct ControlPlane {
    pub agent_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// The bound plaintext health listener, if one was asked for.
    pub health_addr: Option<SocketAddr>,
    pub lifecycle: Arc<Lifecycle>,
    /// The plaintext health listener, turned NOT_SERVING when shutdown begins.
    probe: Option<HealthEndpoint>,
    drain: CancellationToken,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    drain_grace: Duration,
}

const API_MAX_MESSAGE: usize = 1 << 20;

fn health_and_reflection() -> anyhow::Result<(
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let (reporter, health) = tonic_health::server::health_reporter();
    // Both reflection versions are served (grpcurl 1.8 asks v1alpha, newer
    // clients v1), and each lists every service, itself and the other included.
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(streamspace::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let v1 = builder().build_v1()?;
    let v1alpha = builder().build_v1alpha()?;
    Ok((reporter, health, v1, v1alpha))
}

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
        let store = crate::store::open(&cfg.database_url)
            .await
            .with_context(|| "opening the store")?;
        let roster = Arc::new(Roster::new(cfg.hub.heartbeat_interval * 3));
        let lifecycle = Arc::new(Lifecycle::new(store, roster, cfg.lifecycle));
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
        let agent_tls = listen::server_tls(
            &cfg.tls.server_cert,
            &cfg.tls.server_key,
            Some(&cfg.tls.agent_ca),
        )
        .context("agent listener TLS")?;
        let (reporter, health, v1, v1alpha) = health_and_reflection()?;
        reporter
            .set_serving::<pb::agent_service_server::AgentServiceServer<AgentHub>>()
            .await;
        let hub = AgentHub::new(lifecycle.clone(), cfg.hub.clone(), drain.clone());
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
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            let incoming = listen::incoming("agent", agent_listener, agent_tls, cfg.edge);
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, s.cancelled_owned())
                .await
            {
                warn!(error = %e, "agent listener stopped");
            }
        }));

        // API listener: TLS, bearer tokens.
        let api_tls = listen::server_tls(&cfg.tls.server_cert, &cfg.tls.server_key, None)
            .context("API listener TLS")?;
        let (reporter, health, v1, v1alpha) = health_and_reflection()?;
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
        let auth = move |req| authenticator.authenticate(req);
        use pb::agent_admin_service_server::AgentAdminServiceServer as Admin;
        use pb::session_service_server::SessionServiceServer as Sessions;
        use pb::template_service_server::TemplateServiceServer as Templates;
        reporter.set_serving::<Sessions<SessionApi>>().await;
        reporter.set_serving::<Admin<AdminApi>>().await;
        reporter.set_serving::<Templates<TemplateApi>>().await;
        let sessions = Sessions::new(SessionApi::new(lifecycle.clone(), drain.clone()))
            .max_decoding_message_size(API_MAX_MESSAGE);
        let admin =
            Admin::new(AdminApi::new(lifecycle.clone())).max_decoding_message_size(API_MAX_MESSAGE);
        let templates = Templates::new(TemplateApi::new(lifecycle.clone()))
            .max_decoding_message_size(API_MAX_MESSAGE);
        let router = Server::builder()
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
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            let incoming = listen::incoming("API", api_listener, api_tls, cfg.edge);
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, s.cancelled_owned())
                .await
            {
                warn!(error = %e, "API listener stopped");
            }
        }));

        // Sweeper: expire overdue commands, retry placement.
        let lc = lifecycle.clone();
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(e) = lc.expire_overdue().await { warn!(error = %e, "expiring commands"); }
                        n += 1;
                        if n.is_multiple_of(5) && let Err(e) = lc.place_unplaced().await { warn!(error = %e, "placing sessions"); }
                    }
                }
            }
        }));
        if let Some(k) = &cfg.kube {
            tasks.extend(
                crate::k8s::start(k, lifecycle.clone(), stop.clone())
                    .await
                    .context("starting the Kubernetes controller")?,
            );
        }
        if let Some(p) = &probe {
            p.set_serving(true).await;
        }
        stop_on_error.disarm();
        info!(%agent_addr, %api_addr, kubernetes = cfg.kube.is_some(), "control plane serving");
        Ok(Self {
            agent_addr,
            api_addr,
            health_addr: probe.as_ref().map(HealthEndpoint::local_addr),
            lifecycle,
            probe,
            drain,
            stop,
            tasks,
            drain_grace: cfg.hub.drain_grace,
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
