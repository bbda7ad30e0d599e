//! Agent flags. Names and env vars of seed 001 are kept (`--agent-id`/
//! `AGENT_ID`, `--control-plane-url`/`CONTROL_PLANE_URL`, ...), plus
//! certificate and runtime flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use streamspace::v1 as pb;

use crate::client::ClientConfig;

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
    /// Maximum concurrent sessions (0 = no limit): starts beyond it are refused.
    #[arg(long, env = "MAX_SESSIONS", default_value_t = 100)]
    pub max_sessions: u32,
    /// Agent client certificate (PEM), SAN URI spiffe://<trust-domain>/agent/<id>.
    /// Re-read (with --tls-key and --ca-cert) at every reconnect.
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
    /// Ports for session processes (process runtime), LOW-HIGH inside
    /// 1024-65535; keep it outside the kernel's ephemeral range
    /// (/proc/sys/net/ipv4/ip_local_port_range), else the agent warns.
    #[arg(long, env = "SESSION_PORTS", default_value = crate::runtime::ports::DEFAULT_RANGE)]
    pub session_ports: crate::runtime::ports::PortRange,
    /// Directory of host-wide port locks (process runtime). Agents sharing a
    /// network namespace must share it, so they never hand out one port
    /// twice. Default: `<temp dir>/streamspace-ports`.
    #[arg(long, env = "PORT_LOCK_DIR")]
    pub port_lock_dir: Option<PathBuf>,
    /// Seconds a session process gets between SIGTERM and SIGKILL.
    #[arg(long, env = "STOP_GRACE_SECONDS", default_value_t = 10)]
    pub stop_grace_seconds: u64,
    /// Seconds a start waits for the session's process to open its port
    /// (process runtime): a process that exits before it does fails the
    /// start as retryable (CRASH_LOOP), so the control plane tries again
    /// with backoff; one still starting after this is left to come up.
    /// 0 = a start returns once the process is spawned.
    #[arg(long, env = "START_WAIT_SECONDS", default_value_t = 10)]
    pub start_wait_seconds: u64,
    /// Stop every session when the agent exits (process runtime).
    #[arg(long, env = "STOP_SESSIONS_ON_EXIT", default_value_t = false)]
    pub stop_sessions_on_exit: bool,
    /// First reconnect delay ceiling, in milliseconds.
    #[arg(long, env = "BACKOFF_BASE_MS", default_value_t = 250)]
    pub backoff_base_ms: u64,
    /// Largest reconnect delay, in milliseconds.
    #[arg(long, env = "BACKOFF_MAX_MS", default_value_t = 30_000)]
    pub backoff_max_ms: u64,
    /// Storage class of home volumes (kubernetes runtime); empty = cluster default.
    #[arg(long, env = "STORAGE_CLASS", default_value = "")]
    pub storage_class: String,
    /// Size of a home volume when the template names none.
    #[arg(long, env = "HOME_SIZE", default_value = "5Gi")]
    pub home_size: String,
    /// Cluster DNS domain used in session URLs.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Run as one of several replicas: only the holder of a Lease attaches.
    #[arg(long, env = "ENABLE_HA", default_value_t = false)]
    pub enable_ha: bool,
    /// This replica's identity in the Lease (required with --enable-ha).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Lease name; defaults to streamspace-agent-<agent-id>.
    #[arg(long, env = "LEASE_NAME")]
    pub lease_name: Option<String>,
    /// How long a Lease stays valid after its last renewal.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 4)]
    pub lease_duration_seconds: u64,
    /// A leader that cannot renew for this long steps down.
    #[arg(long, env = "RENEW_DEADLINE_MS", default_value_t = 3000)]
    pub renew_deadline_ms: u64,
    /// How often the leader renews and standbys retry.
    #[arg(long, env = "RETRY_PERIOD_MS", default_value_t = 500)]
    pub retry_period_ms: u64,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// OTLP/gRPC endpoint for traces, e.g. http://jaeger:4317; empty = the
    /// standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, and no traces when
    /// that is unset too.
    #[arg(long, default_value = "")]
    pub otlp_endpoint: String,
    /// Plaintext grpc.health.v1 listener for kubelet gRPC probes (only the
    /// health service), e.g. 0.0.0.0:8081; empty = none. SERVING while the
    /// agent runs, as leader or as HA standby.
    #[arg(long, env = "HEALTH_ADDR", default_value = "", value_parser = streamspace_runtime_util::parse_health_addr)]
    pub health_addr: std::option::Option<SocketAddr>,
    /// Plain-HTTP listener serving Prometheus metrics at `/metrics`
    /// (OpenMetrics text), e.g. 0.0.0.0:9091; empty (the default) = no
    /// metrics are kept at all.
    #[arg(long, env = "METRICS_ADDR", default_value = "", value_parser = streamspace_runtime_util::parse_health_addr)]
    pub metrics_addr: std::option::Option<SocketAddr>,
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Checks that the certificate and key parse and belong together, so a
/// mismatched pair fails at start with a clear message instead of as an
/// opaque handshake error on every connection attempt.
pub fn check_identity(cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("--tls-cert: not a PEM certificate")?;
    anyhow::ensure!(!certs.is_empty(), "--tls-cert: contains no certificate");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("--tls-key: not a PEM private key")?;
    rustls::sign::CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .context("--tls-cert / --tls-key: the key does not belong to the certificate")?;
    Ok(())
}

impl AgentArgs {
    /// The client settings; the TLS files are checked now and re-read at
    /// every reconnect.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let cert = read(&self.tls_cert, "--tls-cert")?;
        let key = read(&self.tls_key, "--tls-key")?;
        check_identity(&cert, &key)?;
        let files = crate::identity::TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ca: self.ca_cert.clone(),
        };
        let tls = crate::identity::load(&files, self.tls_server_name.clone())
            .context("--tls-cert / --tls-key / --ca-cert")?;
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
            tls,
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_cap: Duration::from_millis(self.backoff_max_ms),
            fencing_token: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn lease_config(&self) -> anyhow::Result<crate::lease::LeaseConfig> {
        let identity = self
            .pod_name
            .clone()
            .filter(|p| !p.is_empty())
            .context("--enable-ha needs --pod-name / POD_NAME")?;
        Ok(crate::lease::LeaseConfig {
            name: self
                .lease_name
                .clone()
                .unwrap_or_else(|| format!("streamspace-agent-{}", self.agent_id)),
            identity,
            lease_duration: Duration::from_secs(self.lease_duration_seconds.max(1)),
            renew_deadline: Duration::from_millis(self.renew_deadline_ms.max(100)),
            retry_period: Duration::from_millis(self.retry_period_ms.max(50)),
            owner: None,
        })
    }

    pub fn object_config(&self) -> crate::runtime::kube_objects::ObjectConfig {
        crate::runtime::kube_objects::ObjectConfig {
            namespace: self.namespace.clone(),
            storage_class: Some(self.storage_class.clone()).filter(|s| !s.is_empty()),
            home_size: self.home_size.clone(),
            cluster_domain: self.cluster_domain.clone(),
        }
    }

    /// A Kubernetes client from --kubeconfig, or in-cluster / the default chain.
    pub async fn kube_client(&self) -> anyhow::Result<kube::Client> {
        let config = match &self.kubeconfig {
            Some(p) => {
                let kc = kube::config::Kubeconfig::read_from(p)
                    .with_context(|| format!("reading --kubeconfig {}", p.display()))?;
                kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await?
            }
            None => kube::Config::infer()
                .await
                .context("no --kubeconfig and no in-cluster configuration")?,
        };
        Ok(kube::Client::try_from(config)?)
    }
}

#[cfg(test)]
mod tests {
    use super::{AgentArgs, check_identity};
    use clap::Parser;

    /// `--health-addr` and `--metrics-addr` take an address; empty (the
    /// default) means none.
    #[test]
    fn health_addr_is_optional() {
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "streamspace-agent",
                "--agent-id=a",
                "--control-plane-url=https://cp:7443",
                "--tls-cert=c",
                "--tls-key=k",
                "--ca-cert=ca",
            ];
            argv.extend(extra);
            AgentArgs::try_parse_from(argv).map(|a| (a.health_addr, a.metrics_addr))
        };
        assert_eq!(parse(&[]).unwrap(), (None, None));
        assert_eq!(parse(&["--health-addr="]).unwrap(), (None, None));
        assert_eq!(
            parse(&["--health-addr=0.0.0.0:8081"]).unwrap(),
            (Some("0.0.0.0:8081".parse().unwrap()), None)
        );
        assert!(parse(&["--health-addr=8081"]).is_err());
        assert_eq!(
            parse(&["--metrics-addr=127.0.0.1:9091"]).unwrap(),
            (None, Some("127.0.0.1:9091".parse().unwrap()))
        );
        let e = parse(&["--metrics-addr=9091"]).unwrap_err().to_string();
        assert!(
            e.contains("--metrics-addr") && e.contains("HOST:PORT"),
            "{e}"
        );
    }

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["agent".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_passes_and_a_mismatched_one_names_the_flags() {
        let (c1, k1) = pair();
        let (_, k2) = pair();
        check_identity(&c1, &k1).unwrap();
        let e = format!("{:#}", check_identity(&c1, &k2).unwrap_err());
        assert!(e.contains("--tls-cert / --tls-key"), "{e}");
        let e = format!("{:#}", check_identity("garbage", &k1).unwrap_err());
        assert!(e.contains("--tls-cert"), "{e}");
    }
}
