//! Test harness for cross-component tests: a PKI made per test, the control
//! plane in-process or as a real process, agents as real processes, API
//! clients with bearer tokens, a test OpenID Connect issuer, and waiting on conditions with deadlines.
//!
//! Store selection: `STREAMSPACE_TEST_STORE=postgres` with
//! `STREAMSPACE_TEST_POSTGRES_URL=postgres://...` gives every test its own
//! database on that server; otherwise each test gets a SQLite file. Under
//! `CI=true` a requested component that is missing fails the test.
#![forbid(unsafe_code)]

pub mod chaos;
pub mod edge;
pub mod faults;
pub mod helm;
pub mod jaeger;
pub mod k8s;
pub mod oidc;
pub mod pki;
pub mod pods;
pub mod postgres;
pub mod procs;
pub mod prom;
pub mod seeds;
pub mod service;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use streamspace::v1 as pb;
use streamspace_control_plane::core::Caller;
use streamspace_control_plane::grpc::auth::Tokens;
use streamspace_control_plane::server::{ControlPlane, ServerConfig, ServerTls, TlsMaterial};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use pki::TestPki;

/// Tokens every test control plane accepts.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
pub const ALICE_TOKEN: &str = "alice-token-0123456789";
pub const BOB_TOKEN: &str = "bob-token-0123456789ab";
/// carol is a user with the extra roles `students` and `gpu` (role quotas).
pub const CAROL_TOKEN: &str = "carol-token-0123456789a";

pub fn tokens_csv() -> String {
    format!(
        "{ADMIN_TOKEN},admin,admin\n{ALICE_TOKEN},alice,user\n{BOB_TOKEN},bob,user\n{CAROL_TOKEN},carol,user,students;gpu\n"
    )
}

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// What a test starts from: logging, a PKI, a temporary directory (removed
/// with it) and a database on the store the run asks for.
pub struct Scratch {
    pub pki: TestPki,
    pub tmp: tempfile::TempDir,
    pub db: String,
}

impl Scratch {
    pub async fn new() -> Self {
        init();
        let pki = TestPki::new();
        let tmp = tempfile::tempdir().unwrap();
        let db = database_url(tmp.path()).await;
        Self { pki, tmp, db }
    }

    /// An in-process control plane on this scratch's PKI and database.
    pub async fn cp(&self, o: &CpOptions) -> ControlPlane {
        start_cp(&self.pki, &self.db, o).await
    }
}

/// A database URL for one test, on the store the run asks for.
pub async fn database_url(dir: &std::path::Path) -> String {
    let store = std::env::var("STREAMSPACE_TEST_STORE").unwrap_or_else(|_| "sqlite".into());
    match store.as_str() {
        "postgres" => postgres_url().await,
        "sqlite" => format!("sqlite://{}", dir.join("streamspace.db").display()),
        other => panic!("STREAMSPACE_TEST_STORE={other:?}: expected sqlite or postgres"),
    }
}

/// A fresh database on the real PostgreSQL server of the run
/// (`STREAMSPACE_TEST_POSTGRES_URL`, which scripts/test.sh sets); panics
/// without one.
pub async fn postgres_url() -> String {
    let Ok(base) = std::env::var("STREAMSPACE_TEST_POSTGRES_URL") else {
        panic!(
            "this test needs PostgreSQL: STREAMSPACE_TEST_POSTGRES_URL is not set (scripts/test.sh starts PostgreSQL and sets it)"
        );
    };
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is not reachable: {e}"));
    let db = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    let (prefix, _) = base.rsplit_once('/').expect("postgres url has a database");
    format!("{prefix}/{db}")
}

/// `s` without terminal colour codes (for reading logs).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for c in it.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until `f` returns Some, polling every 50 ms, or panics after `secs`.
pub async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Adds `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;
pub type Sessions = pb::session_service_client::SessionServiceClient<Authed>;
pub type Templates = pb::template_service_client::TemplateServiceClient<Authed>;
pub type Admin = pb::agent_admin_service_client::AgentAdminServiceClient<Authed>;

/// A TLS channel to `addr` trusting the test CA.
pub async fn channel(pki: &TestPki, addr: std::net::SocketAddr) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca.cert))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect to API")
}

pub fn bearer(token: &str) -> Bearer {
    Bearer(format!("Bearer {token}").parse().unwrap())
}

/// API clients for one caller.
#[derive(Clone)]
pub struct Api {
    pub sessions: Sessions,
    pub templates: Templates,
    pub admin: Admin,
}

impl Api {
    pub async fn connect(pki: &TestPki, addr: std::net::SocketAddr, token: &str) -> Api {
        let ch = channel(pki, addr).await;
        Api {
            sessions: pb::session_service_client::SessionServiceClient::with_interceptor(
                ch.clone(),
                bearer(token),
            ),
            templates: pb::template_service_client::TemplateServiceClient::with_interceptor(
                ch.clone(),
                bearer(token),
            ),
            admin: pb::agent_admin_service_client::AgentAdminServiceClient::with_interceptor(
                ch,
                bearer(token),
            ),
        }
    }

    pub async fn get(&mut self, name: &str) -> Result<pb::Session, tonic::Status> {
        self.sessions
            .get_session(pb::GetSessionRequest { name: name.into() })
            .await
            .map(|r| r.into_inner())
    }

    /// Waits until session `name` is in `phase`; returns it.
    pub async fn wait_phase(
        &mut self,
        name: &str,
        phase: pb::SessionPhase,
        secs: u64,
    ) -> pb::Session {
        let mut last = None;
        let r = tokio::time::timeout(Duration::from_secs(secs), async {
            loop {
                if let Ok(s) = self.get(name).await {
                    if s.phase == phase as i32 {
                        return s;
                    }
                    last = Some(s);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        r.unwrap_or_else(|_| {
            panic!("session {name} did not reach {phase:?} in {secs}s; last seen: {last:#?}")
        })
    }

    /// Waits until session `name` is gone (NOT_FOUND).
    pub async fn wait_gone(&mut self, name: &str, secs: u64) {
        let mut sessions = self.sessions.clone();
        wait_for(&format!("session {name} to be deleted"), secs, || {
            let mut s = sessions.clone();
            let name = name.to_string();
            async move {
                match s.get_session(pb::GetSessionRequest { name }).await {
                    Err(e) if e.code() == tonic::Code::NotFound => Some(()),
                    _ => None,
                }
            }
        })
        .await;
        let _ = &mut sessions;
    }

    /// Puts the embedded default's templates through the API (admin only).
    /// Waits until `n` agents are connected (the caller must be an admin).
    pub async fn wait_agents(&self, n: usize, secs: u64) {
        let admin = self.admin.clone();
        wait_for(&format!("{n} agents to attach"), secs, || {
            let mut admin = admin.clone();
            async move {
                let r = admin.list_agents(pb::ListAgentsRequest {}).await.ok()?;
                (r.into_inner().agents.iter().filter(|a| a.connected).count() == n).then_some(())
            }
        })
        .await
    }

    pub async fn put_dev_templates(&mut self) {
        for t in streamspace_control_plane::dev::dev_templates() {
            let template = Some(streamspace_control_plane::grpc::convert::template_pb(&t));
            self.templates
                .put_template(pb::PutTemplateRequest { template })
                .await
                .expect("put template");
        }
    }

    pub async fn create(
        &mut self,
        name: &str,
        template: &str,
    ) -> Result<pb::Session, tonic::Status> {
        self.sessions
            .create_session(pb::CreateSessionRequest {
                name: name.into(),
                template: template.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }
}

/// Settings for an in-process control plane.
#[derive(Clone)]
pub struct CpOptions {
    pub heartbeat: Duration,
    pub command_timeout: Duration,
    /// Run the embedded Session controller against the test cluster.
    pub kube: Option<streamspace_control_plane::k8s::KubeOptions>,
    /// Commands outstanding on one agent at once.
    pub max_in_flight: u32,
    /// Serve the plaintext health listener (on a free loopback port).
    pub health: bool,
    /// Per-caller API limits; none by default (tests are one fast caller).
    pub limits: streamspace_control_plane::grpc::limits::LimitConfig,
    /// Accept users from this OpenID Connect issuer too.
    pub oidc: Option<streamspace_control_plane::grpc::oidc::OidcConfig>,
    /// How long before its maximum duration a session is warned.
    pub max_duration_warning: Duration,
    /// Automatic retries of a retryable failure.
    pub command_retries: u32,
    /// Quotas from the configuration.
    pub quotas: Vec<streamspace_control_plane::core::quota::Quota>,
    /// Serve `/metrics` (on a free loopback port).
    pub metrics: bool,
    /// `--replica-id` ("" = "local").
    pub replica_id: String,
}

impl Default for CpOptions {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(500),
            command_timeout: Duration::from_secs(60),
            kube: None,
            max_in_flight: 64,
            health: false,
            limits: streamspace_control_plane::grpc::limits::LimitConfig {
                rate: 0.0,
                burst: 1,
                max_watches: 0,
            },
            oidc: None,
            max_duration_warning: Duration::from_secs(300),
            command_retries: 3,
            quotas: vec![],
            metrics: false,
            replica_id: String::new(),
        }
    }
}

/// The control plane config a test uses, listening on 127.0.0.1:0.
pub fn server_config(pki: &TestPki, database_url: &str, o: &CpOptions) -> ServerConfig {
    let mut hub = streamspace_control_plane::grpc::agent::HubConfig {
        heartbeat_interval: o.heartbeat,
        max_in_flight: o.max_in_flight,
        trust_domain: pki::TRUST_DOMAIN.into(),
        ..Default::default()
    };
    hub.drain_grace = Duration::from_secs(2);
    ServerConfig {
        agent_addr: "127.0.0.1:0".parse().unwrap(),
        api_addr: "127.0.0.1:0".parse().unwrap(),
        database_url: database_url.into(),
        replica_id: if o.replica_id.is_empty() {
            "local".into()
        } else {
            o.replica_id.clone()
        },
        tls: ServerTls::new(&TlsMaterial {
            server_cert: pki.server.cert.clone(),
            server_key: pki.server.key.clone(),
            agent_ca: pki.ca.cert.clone(),
        })
        .unwrap(),
        tokens: Tokens::parse(&tokens_csv()).unwrap(),
        oidc: o.oidc.clone(),
        hub,
        lifecycle: streamspace_control_plane::core::LifecycleConfig {
            command_timeout: o.command_timeout,
            max_duration_warning: o.max_duration_warning,
            retention: std::time::Duration::from_secs(7 * 86_400),
            command_retries: o.command_retries,
            retry_backoff: Duration::from_millis(200),
        },
        quotas: o.quotas.clone(),
        metrics_addr: o.metrics.then(|| "127.0.0.1:0".parse().unwrap()),
        kube: o.kube.clone(),
        edge: Default::default(),
        health_addr: o.health.then(|| "127.0.0.1:0".parse().unwrap()),
        limits: o.limits,
        audit: Default::default(),
    }
}

/// Starts an in-process control plane with the dev templates.
pub async fn start_cp(pki: &TestPki, database_url: &str, o: &CpOptions) -> ControlPlane {
    let cp = ControlPlane::start(server_config(pki, database_url, o))
        .await
        .expect("control plane starts");
    let admin = Caller::admin("admin");
    for t in streamspace_control_plane::dev::dev_templates() {
        cp.lifecycle.put_template(&admin, t).await.unwrap();
    }
    cp
}

/// `rel`, a path in the repository of the running test. Read when the test
/// runs (cargo sets CARGO_MANIFEST_DIR for it), not when it was built: one
/// target directory may hold builds of several checkouts (a cached build
/// of another clone is fresh for this one when its sources are older), and
/// a path compiled in would point into the checkout that built it.
pub fn repo_path(rel: &str) -> PathBuf {
    let tests = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    tests.join("..").join(rel)
}

/// The workspace's target directory (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(t);
    }
    repo_path("target")
}

/// A built binary of the workspace (`cargo build --workspace` first).
pub fn binary(name: &str) -> PathBuf {
    let profile = std::env::var("STREAMSPACE_TEST_PROFILE").unwrap_or_else(|_| "debug".into());
    let p = target_dir().join(profile).join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Reads the state letter of a process from /proc (R, S, T, Z, ...).
pub fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

/// Pid from a session's `workload` field ("pid N").
pub fn session_pid(s: &pb::Session) -> i32 {
    s.workload
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("session {} has no pid workload: {:?}", s.name, s.workload))
}

/// Whether `url` answers an HTTP GET with a 2xx status.
pub async fn http_ok(url: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let hostport = rest.split('/').next().unwrap_or_default();
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(hostport),
    )
    .await
    else {
        return false;
    };
    if s.write_all(format!("GET / HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = vec![0u8; 64];
    let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.0 2") || head.starts_with("HTTP/1.1 2")
}

/// A raw agent-side connection for protocol tests.
pub mod raw {
    use std::net::SocketAddr;
    use std::time::Duration;

    use streamspace::v1 as pb;
    use streamspace_control_plane::pki::Pem;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

    pub type AgentClient = pb::agent_service_client::AgentServiceClient<Channel>;

    /// Connects to the agent port trusting `ca`, presenting `identity` if any.
    pub async fn connect(
        ca: &str,
        addr: SocketAddr,
        identity: Option<&Pem>,
    ) -> Result<AgentClient, String> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some(id) = identity {
            tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
        }
        let ch = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(pb::agent_service_client::AgentServiceClient::new(ch))
    }

    pub fn hello(id: &str) -> pb::AgentFrame {
        pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
                agent_id: id.into(),
                platform: "process".into(),
                region: "test".into(),
                capacity: Some(pb::Capacity {
                    max_sessions: 10,
                    ..Default::default()
                }),
                agent_version: "test".into(),
                protocol_version: streamspace::PROTOCOL_VERSION as i32,
                fencing_token: 0,
                inventory: vec![],
                supported_protocol_versions: vec![],
            })),
        }
    }

    pub struct RawStream {
        pub tx: mpsc::Sender<pb::AgentFrame>,
        pub rx: tonic::Streaming<pb::ControlFrame>,
        /// The control plane's answer to Hello.
        pub welcome: pb::Welcome,
    }

    /// Opens Attach sending `first` frames; Err is the status the server answered with.
    pub async fn attach(
        client: &mut AgentClient,
        first: Vec<pb::AgentFrame>,
    ) -> Result<RawStream, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        for f in first {
            tx.send(f).await.unwrap();
        }
        let mut rx = client.attach(ReceiverStream::new(rx)).await?.into_inner();
        // The server answers Hello with Welcome or ends the stream with a status.
        match tokio::time::timeout(Duration::from_secs(15), rx.message()).await {
            Ok(Ok(Some(pb::ControlFrame {
                frame: Some(pb::control_frame::Frame::Welcome(welcome)),
            }))) => Ok(RawStream { tx, rx, welcome }),
            Ok(Ok(other)) => Err(tonic::Status::unknown(format!(
                "expected Welcome, got {other:?}"
            ))),
            Ok(Err(s)) => Err(s),
            Err(_) => Err(tonic::Status::deadline_exceeded("no answer to hello")),
        }
    }

    /// The next command the control plane sends on `s` (other frames are
    /// skipped); panics after 15 s.
    pub async fn next_command(s: &mut RawStream) -> pb::Command {
        loop {
            let f = tokio::time::timeout(Duration::from_secs(15), s.rx.message())
                .await
                .expect("a command within 15 s")
                .expect("the stream stays open")
                .expect("a frame");
            if let Some(pb::control_frame::Frame::Command(c)) = f.frame {
                return c;
            }
        }
    }

    /// Acks `c` and answers it with `outcome`, then (on success) a RUNNING
    /// status of its session.
    pub async fn answer(s: &RawStream, c: &pb::Command, outcome: pb::command_result::Outcome) {
        use pb::agent_frame::Frame as Out;
        let ok = matches!(outcome, pb::command_result::Outcome::Succeeded(_));
        let mut frames = vec![
            Out::Ack(pb::CommandAck {
                command_id: c.command_id.clone(),
            }),
            Out::Result(pb::CommandResult {
                command_id: c.command_id.clone(),
                outcome: Some(outcome),
            }),
        ];
        if ok {
            frames.push(Out::Status(pb::SessionStatus {
                session_id: c.session_id.clone(),
                phase: pb::SessionPhase::Running as i32,
                url: "http://127.0.0.1:1/".into(),
                ..Default::default()
            }));
        }
        for f in frames {
            s.tx.send(pb::AgentFrame { frame: Some(f) }).await.unwrap();
        }
    }

    /// A failed outcome with a scripted message.
    pub fn failed(reason: pb::FailureReason, retryable: bool) -> pb::command_result::Outcome {
        pb::command_result::Outcome::Failed(pb::CommandFailed {
            reason: reason as i32,
            message: "scripted fault".into(),
            retryable,
        })
    }

    /// The status a stream ends with (after any frames).
    pub async fn end_status(rx: &mut tonic::Streaming<pb::ControlFrame>) -> tonic::Status {
        loop {
            match tokio::time::timeout(Duration::from_secs(15), rx.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return tonic::Status::ok("stream ended"),
                Ok(Err(s)) => return s,
                Err(_) => return tonic::Status::deadline_exceeded("stream did not end"),
            }
        }
    }
}

/// Every live process whose environment says SESSION_ID=<name> (the process
/// runtime sets it): the ground truth for "exactly once".
pub fn session_processes(name: &str) -> Vec<i32> {
    processes_with_env(&format!("SESSION_ID={name}"))
}

/// SIGKILLs every process of session `name` (they outlive a killed agent):
/// what a test leaves behind.
pub fn kill_session_processes(name: &str) {
    for pid in session_processes(name) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Every live (not zombie) process whose environment contains `entry` (`NAME=value`).
pub fn processes_with_env(entry: &str) -> Vec<i32> {
    let mut pids = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == entry.as_bytes())
            && proc_state(pid).is_some_and(|s| s != 'Z')
        {
            pids.push(pid);
        }
    }
    pids
}
