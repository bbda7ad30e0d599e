//! Flags and subcommands of `streamspace-control-plane`: `serve`, `dev`
//! (the embedded default) and `certs` (a CA, server and agent certificates,
//! as files or, with `certs kubernetes`, as Secrets).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::grpc::auth::Tokens;
use crate::pki::{self, Pem};
use crate::server::{ControlPlane, ServerConfig};
use crate::tls::{ServerTls, TlsFiles};
use crate::tuning::Tuning;

#[derive(Debug, Parser)]
#[command(
    name = "streamspace-control-plane",
    version,
    about = "StreamSpace control plane"
)]
pub struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,
    /// OTLP/gRPC endpoint for traces, e.g. http://jaeger:4317; empty = the
    /// standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, and no traces when
    /// that is unset too. docs/OBSERVABILITY.md describes the spans.
    #[arg(long, default_value = "", global = true)]
    pub otlp_endpoint: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the agent and API listeners.
    Serve(Box<ServeArgs>),
    /// Run everything on loopback: SQLite, a dev PKI, the control plane and a local process agent.
    Dev(crate::dev::DevArgs),
    /// Create certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Agent listener (mTLS).
    #[arg(long, env = "AGENT_ADDR", default_value = "0.0.0.0:7443")]
    pub agent_addr: SocketAddr,
    /// API listener (TLS + bearer tokens, static or OIDC).
    #[arg(long, env = "API_ADDR", default_value = "0.0.0.0:8443")]
    pub api_addr: SocketAddr,
    /// sqlite://PATH (embedded) or postgres://USER@HOST/DB (production).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://streamspace.db")]
    pub database_url: String,
    /// This replica's name, recorded on the agents whose streams it holds
    /// (several replicas share one PostgreSQL database; SQLite runs one).
    /// Default: the pod name (POD_NAME), else the host name.
    #[arg(long, env = "POD_NAME", default_value_t = default_replica_id())]
    pub replica_id: String,
    /// Server certificate (PEM), used by both listeners. Watched: a new
    /// certificate (with its key) applies to new connections without a restart.
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: PathBuf,
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: PathBuf,
    /// CA bundle that signs agent client certificates (PEM; several CAs
    /// while one is rotated). Watched like --tls-cert.
    #[arg(long, env = "AGENT_CA")]
    pub agent_ca: PathBuf,
    /// Token file: one `token,user,role` line per caller (role admin or user).
    #[arg(long, env = "TOKENS_FILE")]
    pub tokens_file: PathBuf,
    /// Plaintext grpc.health.v1 listener for kubelet gRPC probes (only the
    /// health service), e.g. 0.0.0.0:8081; empty = none. SERVING once the
    /// store is open and both listeners are bound, NOT_SERVING from shutdown.
    #[arg(long, env = "HEALTH_ADDR", default_value = "", value_parser = streamspace_runtime_util::parse_health_addr)]
    pub health_addr: std::option::Option<SocketAddr>,
    /// Audit log: one JSON line per state-changing API call (who, what,
    /// target, outcome), appended to this file; `-` = stdout. Empty (the
    /// default) = no audit log. Separate from the debug log (stderr).
    #[arg(long, env = "AUDIT_LOG", default_value = "")]
    pub audit_log: String,
    #[command(flatten)]
    pub oidc: crate::oidc_flags::OidcArgs,
    #[command(flatten)]
    pub tuning: Tuning,
    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Run the embedded Session controller: `--kubernetes` alone (or with
    /// `=true` / ` true`) turns it on, `--kubernetes=false` off. Default: on
    /// when running inside a cluster (KUBERNETES_SERVICE_HOST is set).
    #[arg(
        long = "kubernetes",
        env = "KUBERNETES_CONTROLLER",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub enabled: Option<bool>,
    /// Kubeconfig for the controller; empty = in-cluster.
    #[arg(long = "kubeconfig", env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Watch Session/Template objects only in this namespace; empty = all.
    #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,
    /// Namespace where sessions created through the API appear as objects.
    #[arg(long, env = "MIRROR_NAMESPACE", default_value = "streamspace")]
    pub mirror_namespace: String,
    /// The controller runs on one replica at a time, the holder of the Lease
    /// `streamspace-controller` in the mirror namespace; when it dies,
    /// another replica takes over after about this long.
    #[arg(long, env = "CONTROLLER_LEASE_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(3..=300))]
    pub controller_lease_seconds: u64,
}

impl KubeArgs {
    /// The controller's options; `identity` names this replica in its Lease.
    pub fn options(&self, identity: &str) -> Option<crate::k8s::KubeOptions> {
        let enabled = self
            .enabled
            .unwrap_or_else(|| std::env::var_os("KUBERNETES_SERVICE_HOST").is_some());
        enabled.then(|| crate::k8s::KubeOptions {
            kubeconfig: self.kubeconfig.clone(),
            namespace: Some(self.watch_namespace.clone()).filter(|n| !n.is_empty()),
            mirror_namespace: self.mirror_namespace.clone(),
            identity: identity.to_string(),
            lease_seconds: self.controller_lease_seconds,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// A new CA: <out>/ca.crt and <out>/ca.key.
    Ca {
        #[arg(long, default_value = "pki")]
        out: PathBuf,
    },
    /// A server certificate signed by <ca-dir>/ca.*: <out>/server.crt and .key.
    Server {
        /// Where ca.crt and ca.key are; defaults to --out.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        #[arg(long, default_value = "pki")]
        out: PathBuf,
        /// DNS names (repeatable).
        #[arg(long = "dns", default_values_t = vec!["localhost".to_string()])]
        dns: Vec<String>,
        /// IP addresses (repeatable).
        #[arg(long = "ip", default_values_t = vec!["127.0.0.1".parse::<IpAddr>().expect("ip")])]
        ips: Vec<IpAddr>,
    },
    /// An agent client certificate: <out>/agent-<id>.crt and .key.
    Agent {
        /// Where ca.crt and ca.key are; defaults to --out.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        #[arg(long, default_value = "pki")]
        out: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "streamspace.local")]
        trust_domain: String,
    },
    /// The CA, server and (optionally) agent certificates as Secrets of type
    /// kubernetes.io/tls (tls.crt, tls.key, ca.crt); existing ones are kept.
    Kubernetes(crate::certs::KubernetesArgs),
}

async fn certs(cmd: CertsCommand) -> anyhow::Result<()> {
    let say = |what: &str, (c, k): (PathBuf, PathBuf)| {
        println!("{what}: certificate {} key {}", c.display(), k.display());
    };
    match cmd {
        CertsCommand::Ca { out } => say("CA", pki::new_ca("StreamSpace CA")?.save(&out, "ca")?),
        CertsCommand::Server {
            ca_dir,
            out,
            dns,
            ips,
        } => {
            let ca = Pem::load(ca_dir.as_ref().unwrap_or(&out), "ca")?;
            say(
                "server",
                pki::new_server(&ca, &dns, &ips)?.save(&out, "server")?,
            )
        }
        CertsCommand::Agent {
            ca_dir,
            out,
            id,
            trust_domain,
        } => {
            let ca = Pem::load(ca_dir.as_ref().unwrap_or(&out), "ca")?;
            let pem = pki::new_agent(&ca, &trust_domain, &id)?;
            say(
                &format!("agent {id} ({})", pki::agent_uri(&trust_domain, &id)),
                pem.save(&out, &format!("agent-{id}"))?,
            )
        }
        CertsCommand::Kubernetes(a) => return crate::certs::run(a).await,
    }
    Ok(())
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    // Watched until shutdown: edits (a revoked token) apply without a restart.
    let (tokens, _watcher) = Tokens::watch_file(&a.tokens_file, Duration::from_secs(1))
        .map_err(|e| anyhow::anyhow!("--tokens-file: {e}"))?;
    // Watched until shutdown too: renewed certificates apply to new handshakes.
    let files = TlsFiles {
        server_cert: a.tls_cert.clone(),
        server_key: a.tls_key.clone(),
        agent_ca: a.agent_ca.clone(),
    };
    let (tls, _tls_watcher) = ServerTls::watch_files(&files, Duration::from_secs(1))
        .context("--tls-cert / --tls-key / --agent-ca")?;
    let cfg = ServerConfig {
        agent_addr: a.agent_addr,
        api_addr: a.api_addr,
        database_url: a.database_url.clone(),
        replica_id: {
            crate::core::validate::short_text("--replica-id", &a.replica_id)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            a.replica_id.clone()
        },
        tls,
        tokens,
        oidc: a.oidc.config()?,
        hub: a.tuning.hub(),
        lifecycle: a.tuning.lifecycle(),
        quotas: a.tuning.quotas()?,
        metrics_addr: a.tuning.metrics_addr,
        kube: a.kube.options(&a.replica_id),
        edge: a.tuning.edge(),
        limits: a.tuning.limits(),
        health_addr: a.health_addr,
        audit: if a.audit_log.is_empty() {
            Default::default()
        } else {
            crate::audit::AuditLog::open(a.audit_log.as_ref())
                .with_context(|| format!("--audit-log {}", a.audit_log))?
        },
    };
    let cp = ControlPlane::start(cfg).await?;
    streamspace_runtime_util::shutdown_signal().await;
    cp.shutdown().await;
    Ok(())
}

/// Entry point of the binary.
pub async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    use streamspace_runtime_util::telemetry;
    let endpoint = telemetry::endpoint(Some(&cli.otlp_endpoint));
    let traces = telemetry::init(
        &cli.log_format,
        "streamspace-control-plane",
        endpoint.as_deref(),
    )?;
    if traces.enabled() {
        crate::core::trace::install(crate::core::trace::Bridge {
            current: telemetry::current_traceparent,
            set_parent: telemetry::set_parent_traceparent,
        });
    }
    match cli.command {
        Command::Serve(a) => serve(*a).await,
        Command::Dev(a) => crate::dev::run(a).await,
        Command::Certs(c) => certs(c).await,
    }
}

/// The host name (what a pod's is set to), else "local".
fn default_replica_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(extra: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut argv = vec![
            "streamspace-control-plane",
            "serve",
            "--tls-cert=c",
            "--tls-key=k",
            "--agent-ca=ca",
            "--tokens-file=t",
        ];
        argv.extend(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(a) => Ok(*a),
            other => panic!("parsed as {other:?}"),
        }
    }

    /// `--kubernetes` alone turns the controller on; `=true`/`=false` and
    /// the older ` true`/` false` still work; a bare flag does not swallow
    /// the next flag; absent leaves the in-cluster default.
    #[test]
    fn kubernetes_is_a_flag_with_an_optional_value() {
        let on = |extra: &[&str]| serve(extra).unwrap().kube.enabled;
        assert_eq!(on(&["--kubernetes"]), Some(true));
        assert_eq!(on(&["--kubernetes=true"]), Some(true));
        assert_eq!(on(&["--kubernetes=false"]), Some(false));
        assert_eq!(on(&[]), None);
        let a = serve(&["--kubernetes", "--kubeconfig", "x"]).unwrap();
        assert_eq!(a.kube.enabled, Some(true));
        assert_eq!(a.kube.kubeconfig, Some(PathBuf::from("x")));
        let a = serve(&["--kubernetes", "--watch-namespace=team-a"]).unwrap();
        assert_eq!(a.kube.enabled, Some(true));
        assert_eq!(a.kube.watch_namespace, "team-a");
        assert!(serve(&["--kubernetes=maybe"]).is_err());
        assert_eq!(on(&["--kubernetes", "false"]), Some(false));
        assert_eq!(on(&["--kubernetes", "true"]), Some(true));
    }

    /// `--health-addr` takes an address; empty (the default) means none.
    #[test]
    fn health_addr_is_optional() {
        let health = |extra: &[&str]| serve(extra).map(|a| a.health_addr);
        assert_eq!(health(&[]).unwrap(), None);
        assert_eq!(health(&["--health-addr="]).unwrap(), None);
        assert_eq!(
            health(&["--health-addr", "0.0.0.0:8081"]).unwrap(),
            Some("0.0.0.0:8081".parse().unwrap())
        );
        assert!(health(&["--health-addr=localhost"]).is_err());
    }

    /// OIDC is off without an issuer (or with an empty one); with one, the
    /// audience is required and the defaults are preferred_username, groups
    /// and 60 s of clock skew.
    #[test]
    fn oidc_flags() {
        let cfg = |extra: &[&str]| serve(extra).unwrap().oidc.config();
        assert!(cfg(&[]).unwrap().is_none());
        assert!(cfg(&["--oidc-issuer="]).unwrap().is_none());
        let e = cfg(&["--oidc-issuer=https://idp"]).unwrap_err();
        assert!(e.to_string().starts_with("--oidc-audience"), "{e}");
        let c = cfg(&["--oidc-issuer=https://idp", "--oidc-audience=ss"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username_claim.as_str(), c.groups_claim.as_str()),
            ("preferred_username", "groups")
        );
        assert_eq!(
            (c.clock_skew, c.admin_group),
            (Duration::from_secs(60), None)
        );
        let c = cfg(&[
            "--oidc-issuer=https://idp",
            "--oidc-audience=ss",
            "--oidc-username-claim=email",
            "--admin-group=ops",
            "--oidc-clock-skew=5s",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.username_claim, "email");
        assert_eq!(c.admin_group.as_deref(), Some("ops"));
        assert_eq!(c.clock_skew, Duration::from_secs(5));
        let e = cfg(&[
            "--oidc-issuer=https://idp",
            "--oidc-audience=ss",
            "--oidc-ca=/nonexistent",
        ])
        .unwrap_err();
        assert!(format!("{e:#}").contains("--oidc-ca"), "{e:#}");
    }

    async fn certs_in(args: &[&str]) -> anyhow::Result<()> {
        let mut argv = vec!["streamspace-control-plane", "certs"];
        argv.extend(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Certs(c) => certs(c).await,
            other => panic!("parsed as {other:?}"),
        }
    }

    /// `certs server|agent --out DIR` finds the CA in DIR, where `certs ca
    /// --out DIR` put it; `--ca-dir` still points elsewhere.
    #[tokio::test]
    async fn the_ca_is_read_from_out_unless_ca_dir_says_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let other = tmp.path().join("other");
        let (dir_s, other_s) = (dir.to_str().unwrap(), other.to_str().unwrap());
        certs_in(&["ca", "--out", dir_s]).await.unwrap();
        certs_in(&["server", "--out", dir_s]).await.unwrap();
        certs_in(&["agent", "--id", "a1", "--out", dir_s])
            .await
            .unwrap();
        assert!(Pem::exists(&dir, "server") && Pem::exists(&dir, "agent-a1"));
        let e = certs_in(&["server", "--out", other_s]).await.unwrap_err();
        assert!(format!("{e:#}").contains("ca.crt"), "{e:#}");
        certs_in(&["agent", "--id", "a2", "--ca-dir", dir_s, "--out", other_s])
            .await
            .unwrap();
        assert!(Pem::exists(&other, "agent-a2"));
    }
}
