//! Agent flags. Names and env vars of seed 001 are kept (`--agent-id`/
//! `AGENT_ID`, `--control-plane-url`/`CONTROL_PLANE_URL`, ...), plus
//! certificate and runtime flags.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use streamspace::v1 as pb;

use crate::client::{ClientConfig, ClientTls};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "streamspace-agent",
    version,
    about = "StreamSpace agent: runs sessions for the control plane"
)]
pub struct AgentArgs {
    /// Unique agent identifier (e.g. k8s-prod-us-east-1); must match the certificate.
    #[arg(long, env = "AGENT_ID")]
    pub agent_id: String,
    /// Control plane agent endpoint, e.g. https://control.example.com:7443
    #[arg(long, env = "CONTROL_PLANE_URL")]
    pub control_plane_url: String,
    /// Runtime: kubernetes or process.
    #[arg(long, env = "PLATFORM", default_value = "kubernetes")]
    pub platform: String,
    /// Deployment region, used by placement selectors.
    #[arg(long, env = "REGION", default_value = "")]
    pub region: String,
    /// Kubernetes namespace for sessions.
    #[arg(long, env = "NAMESPACE", default_value = "streamspace")]
    pub namespace: String,
    /// Path to a kubeconfig (empty for in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Maximum CPU cores available.
    #[arg(long, env = "MAX_CPU", default_value_t = 100)]
    pub max_cpu: u64,
    /// Maximum memory in GB.
    #[arg(long, env = "MAX_MEMORY", default_value_t = 128)]
    pub max_memory: u64,
    /// Maximum concurrent sessions.
    #[arg(long, env = "MAX_SESSIONS", default_value_t = 100)]
    pub max_sessions: u32,
    /// Agent client certificate (PEM), SAN URI spiffe://<trust-domain>/agent/<id>.
    #[arg(long, env = "AGENT_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// Private key of the client certificate (PEM).
    #[arg(long, env = "AGENT_TLS_KEY")]
    pub tls_key: PathBuf,
    /// CA that signed the control plane's server certificate (PEM).
    #[arg(long, env = "AGENT_CA_CERT")]
    pub ca_cert: PathBuf,
    /// Server name to verify, if not the URL's host.
    #[arg(long, env = "AGENT_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// State directory of the process runtime.
    #[arg(
        long,
        env = "AGENT_DATA_DIR",
        default_value = "/var/lib/streamspace-agent"
    )]
    pub data_dir: PathBuf,
    /// Seconds a session process gets between SIGTERM and SIGKILL.
    #[arg(long, env = "STOP_GRACE_SECONDS", default_value_t = 10)]
    pub stop_grace_seconds: u64,
    /// Stop every session when the agent exits (process runtime).
    #[arg(long, env = "STOP_SESSIONS_ON_EXIT", default_value_t = false)]
    pub stop_sessions_on_exit: bool,
    /// First reconnect delay ceiling, in milliseconds.
    #[arg(long, env = "BACKOFF_BASE_MS", default_value_t = 250)]
    pub backoff_base_ms: u64,
    /// Largest reconnect delay, in milliseconds.
    #[arg(long, env = "BACKOFF_MAX_MS", default_value_t = 30_000)]
    pub backoff_max_ms: u64,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

impl AgentArgs {
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        Ok(ClientConfig {
            agent_id: self.agent_id.clone(),
            control_plane_url: self.control_plane_url.clone(),
            platform: self.platform.clone(),
            region: self.region.clone(),
            capacity: pb::Capacity {
                max_sessions: self.max_sessions,
                cpu_millis: self.max_cpu * 1000,
                memory_bytes: self.max_memory << 30,
            },
            tls: ClientTls {
                ca: read(&self.ca_cert, "--ca-cert")?,
                cert: read(&self.tls_cert, "--tls-cert")?,
                key: read(&self.tls_key, "--tls-key")?,
                server_name: self.tls_server_name.clone(),
            },
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_cap: Duration::from_millis(self.backoff_max_ms),
            fencing_token: Arc::new(AtomicU64::new(0)),
        })
    }
}
