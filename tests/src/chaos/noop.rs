//! In-process agents on the noop runtime: the real agent stream client over
//! real mTLS, each with its own certificate and a declared `max_sessions`,
//! whose sessions cost nothing. Lets a test place hundreds of sessions on a
//! two-core machine and look only at what the control plane decides.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use streamspace::v1 as pb;
use streamspace_agent::runtime::StatusSink;
use streamspace_agent::runtime::noop::NoopRuntime;
use streamspace_agent::{Client, ClientConfig, ClientTls};
use tokio_util::sync::CancellationToken;

use crate::TestPki;

/// Agents running until dropped.
pub struct NoopAgents {
    shutdown: CancellationToken,
}

impl NoopAgents {
    /// Starts one agent per `(id, max_sessions)`, attaching to `agent_addr`.
    pub fn start(pki: &TestPki, agent_addr: SocketAddr, agents: &[(&str, u32)]) -> Self {
        let shutdown = CancellationToken::new();
        for (id, max_sessions) in agents {
            let pem = pki.agent_pem(id);
            let cfg = ClientConfig {
                agent_id: id.to_string(),
                control_plane_url: format!("https://{agent_addr}"),
                platform: "noop".into(),
                region: "test".into(),
                capacity: pb::Capacity {
                    max_sessions: *max_sessions,
                    ..Default::default()
                },
                tls: ClientTls {
                    ca: pki.ca.cert.clone(),
                    cert: pem.cert,
                    key: pem.key,
                    server_name: Some("localhost".into()),
                },
                backoff_base: Duration::from_millis(50),
                backoff_cap: Duration::from_millis(1000),
                fencing_token: Arc::new(AtomicU64::new(0)),
            };
            let (sink, statuses) = StatusSink::channel(4096);
            let client = Client::new(cfg, Arc::new(NoopRuntime::new(sink)), statuses);
            let token = shutdown.clone();
            tokio::spawn(async move { client.run(token).await });
        }
        Self { shutdown }
    }
}

impl Drop for NoopAgents {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
