//! `streamspace-control-plane dev`: the embedded default. On loopback it runs
//! SQLite in a data directory, a dev PKI (generated if missing), the control
//! plane and a local agent with the process runtime, seeds a few templates and
//! an admin token, and prints the grpcurl commands to try it. Ctrl-C stops
//! everything, sessions included.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use streamspace::v1 as pb;
use streamspace_agent::runtime::{StatusSink, process::ProcessRuntime};
use streamspace_agent::{Client, ClientConfig, ClientTls};
use tokio_util::sync::CancellationToken;

use crate::core::Caller;
use crate::core::model::{Port, ResourceList, Resources, Template};
use crate::grpc::auth::Tokens;
use crate::pki::{self, Pem};
use crate::server::{ControlPlane, ServerConfig, ServerTls, TlsMaterial};

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Where the database, certificates, tokens and session state live.
    #[arg(long, env = "STREAMSPACE_DATA_DIR", default_value = "./dev-data")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub api_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub agent_addr: SocketAddr,
    #[command(flatten)]
    pub tuning: crate::tuning::Tuning,
}

const AGENT_ID: &str = "local";

/// The dev PKI under `<dir>`: CA, server certificate for localhost/127.0.0.1,
/// and the local agent's certificate; each created only if missing.
pub fn ensure_pki(dir: &Path, trust_domain: &str) -> anyhow::Result<()> {
    if !Pem::exists(dir, "ca") {
        pki::new_ca("StreamSpace dev CA")?.save(dir, "ca")?;
    }
    let ca = Pem::load(dir, "ca")?;
    if !Pem::exists(dir, "server") {
        let ips = ["127.0.0.1".parse()?, "::1".parse()?];
        pki::new_server(&ca, &["localhost".to_string()], &ips)?.save(dir, "server")?;
    }
    let agent = format!("agent-{AGENT_ID}");
    if !Pem::exists(dir, &agent) {
        pki::new_agent(&ca, trust_domain, AGENT_ID)?.save(dir, &agent)?;
    }
    Ok(())
}

/// The admin token in `<dir>/tokens.csv`, created with a random token if missing.
fn ensure_tokens(path: &Path) -> anyhow::Result<(Tokens, String)> {
    if !path.exists() {
        let token = format!("dev-admin-{}", uuid::Uuid::new_v4().simple());
        let user = format!("dev-user-{}", uuid::Uuid::new_v4().simple());
        std::fs::write(
            path,
            format!("# token,user,role\n{token},admin,admin\n{user},alice,user\n"),
        )?;
    }
    let text = std::fs::read_to_string(path)?;
    let admin = text
        .lines()
        .find(|l| l.ends_with(",admin,admin"))
        .and_then(|l| l.split(',').next())
        .context("tokens.csv has no admin line")?
        .to_string();
    Ok((Tokens::parse(&text).map_err(anyhow::Error::msg)?, admin))
}

/// Templates the embedded default starts with.
pub fn dev_templates() -> Vec<Template> {
    let small = Resources {
        requests: ResourceList {
            cpu: "100m".into(),
            memory: "64Mi".into(),
        },
        limits: ResourceList {
            cpu: "1".into(),
            memory: "256Mi".into(),
        },
    };
    vec![
        Template {
            name: "static-files".into(),
            display_name: "Static file server".into(),
            description: "Serves the session's home directory over HTTP (python3 only).".into(),
            image: "python:3.12-slim".into(),
            command: vec![
                "python3".into(),
                "-m".into(),
                "http.server".into(),
                "${PORT}".into(),
                "--bind".into(),
                "127.0.0.1".into(),
            ],
            ports: vec![Port {
                name: "http".into(),
                container_port: 8000,
            }],
            streaming_port: "http".into(),
            default_resources: small.clone(),
            ..Template::default()
        },
        Template {
            name: "notebook-home".into(),
            display_name: "Persistent home file server".into(),
            description: "Like static-files, with the user's home kept across sessions.".into(),
            image: "python:3.12-slim".into(),
            command: vec![
                "python3".into(),
                "-m".into(),
                "http.server".into(),
                "${PORT}".into(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--directory".into(),
                "${HOME}".into(),
            ],
            ports: vec![Port {
                name: "http".into(),
                container_port: 8000,
            }],
            streaming_port: "http".into(),
            default_resources: small,
            persistent_home: true,
            home_size: "1Gi".into(),
            ..Template::default()
        },
        Template {
            name: "firefox-browser".into(),
            display_name: "Firefox".into(),
            description: "Firefox streamed over noVNC (kubernetes runtime).".into(),
            image: "jlesage/firefox:latest".into(),
            ports: vec![Port {
                name: "http".into(),
                container_port: 5800,
            }],
            streaming_port: "http".into(),
            default_resources: Resources {
                requests: ResourceList {
                    cpu: "500m".into(),
                    memory: "1Gi".into(),
                },
                limits: ResourceList {
                    cpu: "2".into(),
                    memory: "2Gi".into(),
                },
            },
            run_as_root: true,
            ..Template::default()
        },
    ]
}

pub async fn run(a: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let dir = std::fs::canonicalize(&a.data_dir)?;
    let pki_dir = dir.join("pki");
    ensure_pki(&pki_dir, &a.tuning.trust_domain)?;
    let (tokens, admin_token) = ensure_tokens(&dir.join("tokens.csv"))?;
    let server = Pem::load(&pki_dir, "server")?;
    let ca = Pem::load(&pki_dir, "ca")?;
    let cfg = ServerConfig {
        agent_addr: a.agent_addr,
        api_addr: a.api_addr,
        database_url: format!("sqlite://{}", dir.join("streamspace.db").display()),
        replica_id: "local".into(),
        tls: ServerTls::new(&TlsMaterial {
            server_cert: server.cert,
            server_key: server.key,
            agent_ca: ca.cert.clone(),
        })?,
        tokens,
        oidc: None,
        hub: a.tuning.hub(),
        lifecycle: a.tuning.lifecycle(),
        quotas: a.tuning.quotas()?,
        metrics_addr: a.tuning.metrics_addr,
        kube: None,
        edge: a.tuning.edge(),
        limits: a.tuning.limits(),
        health_addr: None,
        audit: Default::default(),
    };
    let cp = ControlPlane::start(cfg).await?;
    let admin = Caller::admin("admin");
    for t in dev_templates() {
        if cp.lifecycle.store().get_template(&t.name).await?.is_none() {
            cp.lifecycle.put_template(&admin, t).await?;
        }
    }

    let agent_pem = Pem::load(&pki_dir, &format!("agent-{AGENT_ID}"))?;
    let (sink, statuses) = StatusSink::channel(4096);
    let runtime = Arc::new(ProcessRuntime::open(
        &dir.join("agent"),
        sink,
        Duration::from_secs(5),
        true,
    )?);
    let client = Client::new(
        ClientConfig {
            agent_id: AGENT_ID.into(),
            control_plane_url: format!("https://{}", cp.agent_addr),
            platform: "process".into(),
            region: "local".into(),
            capacity: pb::Capacity {
                max_sessions: 50,
                cpu_millis: 0,
                memory_bytes: 0,
            },
            tls: ClientTls {
                ca: ca.cert,
                cert: agent_pem.cert,
                key: agent_pem.key,
                server_name: Some("localhost".into()),
                files: None,
            },
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            fencing_token: Arc::new(AtomicU64::new(0)),
        },
        runtime,
        statuses,
    );
    let stop_agent = CancellationToken::new();
    let s = stop_agent.clone();
    let agent = tokio::spawn(async move { client.run(s).await });

    print_walkthrough(&dir, cp.api_addr, &admin_token);
    streamspace_runtime_util::shutdown_signal().await;
    eprintln!("\nstopping: sessions, agent, control plane ...");
    stop_agent.cancel();
    let _ = agent.await;
    cp.shutdown().await;
    Ok(())
}

fn print_walkthrough(dir: &Path, api: SocketAddr, token: &str) {
    let ca = dir.join("pki").join("ca.crt");
    let g = format!(
        "grpcurl -cacert {} -H \"authorization: Bearer $STREAMSPACE_TOKEN\"",
        ca.display()
    );
    println!(
        r#"
StreamSpace is running (embedded default).
  API (TLS + bearer token):  {api}
  data directory:            {dir}
  admin token:               {token}

Try it (another terminal):
  export STREAMSPACE_TOKEN={token}
  grpcurl -cacert {ca} {api} list
  grpcurl -cacert {ca} {api} grpc.health.v1.Health/Check
  {g} {api} streamspace.v1.TemplateService/ListTemplates
  {g} -d '{{"name":"demo","template":"static-files"}}' {api} streamspace.v1.SessionService/CreateSession
  {g} -d '{{"send_initial":true}}' {api} streamspace.v1.SessionService/WatchSessions     # Ctrl-C once RUNNING
  {g} -d '{{"name":"demo"}}' {api} streamspace.v1.SessionService/GetSession              # "url": open it
  curl "$({g} -d '{{"name":"demo"}}' {api} streamspace.v1.SessionService/GetSession | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')"
  {g} -d '{{"name":"demo"}}' {api} streamspace.v1.SessionService/HibernateSession
  {g} -d '{{"name":"demo"}}' {api} streamspace.v1.SessionService/WakeSession
  {g} -d '{{"name":"demo"}}' {api} streamspace.v1.SessionService/DeleteSession

Ctrl-C stops everything, sessions included.
"#,
        dir = dir.display(),
        ca = ca.display(),
    );
}
