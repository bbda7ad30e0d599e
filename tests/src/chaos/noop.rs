//! In-process agents on the noop runtime: the real agent stream client over
//! real mTLS, each with its own certificate and a declared `max_sessions`,
//! whose sessions cost nothing. Lets a test place hundreds of sessions on a
//! two-core machine and look only at what the control plane decides.

use std::net::SocketAddr;
use std::sync::Arc;

use streamspace::v1 as pb;
use streamspace_agent::Client;
use streamspace_agent::runtime::StatusSink;
use streamspace_agent::runtime::noop::NoopRuntime;
use tokio_util::sync::CancellationToken;

use crate::TestPki;

/// Agents running until dropped.
pub struct NoopAgents {
    shutdown: CancellationToken,
}

impl NoopAgents {
    /// Starts one agent per `(id, max_sessions)`, attaching to `agent_addr`.
    pub fn start(pki: &TestPki, agent_addr: SocketAddr, agents: &[(&str, u32)]) -> Self {
        let with: Vec<(&str, pb::Capacity)> = agents
            .iter()
            .map(|(id, max_sessions)| {
                let c = pb::Capacity {
                    max_sessions: *max_sessions,
                    ..Default::default()
                };
                (*id, c)
            })
            .collect();
        Self::with_capacity(pki, agent_addr, &with)
    }

    /// Starts one agent per `(id, capacity)` (sessions, CPU, memory).
    pub fn with_capacity(
        pki: &TestPki,
        agent_addr: SocketAddr,
        agents: &[(&str, pb::Capacity)],
    ) -> Self {
        let shutdown = CancellationToken::new();
        for (id, capacity) in agents {
            let mut cfg = pki.client_config(id, agent_addr, "noop", capacity.max_sessions);
            cfg.capacity = *capacity;
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
