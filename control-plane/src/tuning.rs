//! Flags that tune the control plane, shared by `serve` and `dev` (both
//! flatten [`Tuning`] into their arguments), and how they become the
//! configuration of the hub, the listeners and the lifecycle. Kept apart from
//! `cli.rs` so `dev.rs` uses them without importing the CLI that dispatches
//! to it.

use std::time::Duration;

use clap::Args;

use crate::core::LifecycleConfig;
use crate::grpc::agent::HubConfig;

#[derive(Debug, Clone, Args)]
pub struct Tuning {
    /// Agent certificates must carry spiffe://<trust-domain>/agent/<id>.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "streamspace.local")]
    pub trust_domain: String,
    /// Heartbeat interval told to agents; three missed ones close the stream.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 10_000)]
    pub heartbeat_interval_ms: u64,
    /// How long an agent has to finish a command before it expires.
    #[arg(long, env = "COMMAND_TIMEOUT_SECONDS", default_value_t = 120)]
    pub command_timeout_seconds: u64,
    /// Most commands outstanding on one agent.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: u32,
    /// Seconds agents get to finish in-flight work on shutdown.
    #[arg(long, env = "DRAIN_GRACE_SECONDS", default_value_t = 5)]
    pub drain_grace_seconds: u64,
    /// A new connection must finish TLS and send its first HTTP/2 frame
    /// within this long (e.g. 10s, 500ms), or it is closed. Both listeners.
    #[arg(long, env = "FIRST_REQUEST_TIMEOUT", default_value = "10s", value_parser = crate::listen::parse_duration)]
    pub first_request_timeout: Duration,
    /// Most connections open at once on each listener; more are closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// API requests per second each caller may sustain (0 = no limit); over
    /// it, RESOURCE_EXHAUSTED with retry info.
    #[arg(long, env = "API_RATE", default_value_t = 100.0)]
    pub api_rate: f64,
    /// API requests a caller may make at once above --api-rate.
    #[arg(long, env = "API_BURST", default_value_t = 200)]
    pub api_burst: u32,
    /// Concurrent WatchSessions streams per caller (0 = no limit).
    #[arg(long, env = "MAX_WATCHES", default_value_t = 16)]
    pub max_watches: u32,
    /// Frames per second one agent stream is handled at (0 = no limit); above
    /// it that agent's stream is read more slowly.
    #[arg(long, env = "AGENT_FRAME_RATE", default_value_t = 2000.0)]
    pub agent_frame_rate: f64,
    /// Frames one agent may send at once above --agent-frame-rate.
    #[arg(long, env = "AGENT_FRAME_BURST", default_value_t = 4000)]
    pub agent_frame_burst: u32,
    /// How long before a session's maximum duration it gets the condition
    /// Expiring=True (reason MaxDurationSoon), e.g. 5m.
    #[arg(long, env = "MAX_DURATION_WARNING", default_value = "5m", value_parser = crate::listen::parse_duration)]
    pub max_duration_warning: Duration,
    /// Finished commands (and so the outbox's history) are kept this long,
    /// then pruned in small batches, e.g. 7d, 1h. Active commands never are.
    #[arg(long, env = "RETENTION", default_value = "7d", value_parser = crate::listen::parse_duration)]
    pub retention: Duration,
    /// Times a command that failed with `retryable` is sent again (after a
    /// backoff) before its session is FAILED; 0 turns automatic retry off.
    #[arg(long, env = "COMMAND_RETRIES", default_value_t = 3)]
    pub command_retries: u32,
    /// Delay before the first automatic retry; it doubles per retry.
    #[arg(long, env = "RETRY_BACKOFF", default_value = "1s", value_parser = crate::listen::parse_duration)]
    pub retry_backoff: Duration,
    /// Plain-HTTP listener serving Prometheus metrics at `/metrics`
    /// (OpenMetrics text), e.g. 0.0.0.0:9090; empty (the default) = no
    /// metrics are kept at all.
    #[arg(long, env = "METRICS_ADDR", default_value = "", value_parser = streamspace_runtime_util::parse_health_addr)]
    pub metrics_addr: std::option::Option<std::net::SocketAddr>,
    /// Quotas per user and per role (YAML: `quotas: {name: {user|role,
    /// maxSessions, maxRunningSessions, cpu, memory}}`); read at start.
    /// Empty = none from the configuration (`Quota` objects still apply).
    #[arg(long, env = "QUOTAS_FILE")]
    pub quotas: Option<std::path::PathBuf>,
}

impl Tuning {
    /// The quotas of `--quotas` (none without it).
    pub fn quotas(&self) -> anyhow::Result<Vec<crate::core::quota::Quota>> {
        match &self.quotas {
            None => Ok(vec![]),
            Some(p) => crate::quotas::load(p).map_err(|e| anyhow::anyhow!("--quotas: {e}")),
        }
    }

    pub fn hub(&self) -> HubConfig {
        HubConfig {
            trust_domain: self.trust_domain.clone(),
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms.max(100)),
            max_in_flight: self.max_in_flight.max(1),
            drain_grace: Duration::from_secs(self.drain_grace_seconds),
            frame_rate: self.agent_frame_rate.max(0.0),
            frame_burst: self.agent_frame_burst,
            ..HubConfig::default()
        }
    }

    pub fn limits(&self) -> crate::grpc::limits::LimitConfig {
        crate::grpc::limits::LimitConfig {
            rate: self.api_rate.max(0.0),
            burst: self.api_burst,
            max_watches: self.max_watches,
        }
    }

    pub fn edge(&self) -> crate::listen::EdgeLimits {
        crate::listen::EdgeLimits {
            first_request_timeout: self.first_request_timeout,
            max_connections: self.max_connections as usize,
        }
    }

    pub fn lifecycle(&self) -> LifecycleConfig {
        LifecycleConfig {
            command_timeout: Duration::from_secs(self.command_timeout_seconds.max(1)),
            max_duration_warning: self.max_duration_warning,
            retention: self.retention,
            command_retries: self.command_retries,
            retry_backoff: self.retry_backoff,
        }
    }
}
