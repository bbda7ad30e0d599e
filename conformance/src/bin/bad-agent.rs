//! `bad-agent`: a small StreamSpace agent (process runtime, just enough of
//! it) that breaks one rule on purpose, so that the kit's own tests can show
//! each case fails the agents it should, naming the rule:
//! - `ack-twice`: two CommandAcks per delivery (breaks ack-then-result);
//! - `no-heartbeat`: never sends a Heartbeat (breaks heartbeat-interval);
//! - `result-for-unknown-id`: after each result, one more for a command id
//!   that was never sent (breaks no-unknown-ids);
//! - `no-status-after-result`: sends a session's status before a command's
//!   result only, never right after it (breaks status-after-result);
//! - `ignore-max-in-flight`: applies stops concurrently whatever
//!   Welcome.max_in_flight says (breaks max-in-flight);
//! - `none`: behaves (as far as it goes).
//!
//! It reads the agents' shared environment (CONTROL_PLANE_URL, AGENT_ID,
//! AGENT_TLS_CERT, AGENT_TLS_KEY, AGENT_CA_CERT, AGENT_TLS_SERVER_NAME,
//! MAX_SESSIONS, SESSION_PORTS, BACKOFF_BASE_MS, BACKOFF_MAX_MS). Sessions are
//! kept in memory only: it does not survive a restart with its sessions.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use streamspace::v1 as pb;
use streamspace::v1::agent_frame::Frame as Out;
use streamspace::v1::command::Action;
use streamspace::v1::command_result::Outcome;
use streamspace::v1::control_frame::Frame as In;
use streamspace_conformance::Error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Misbehave {
    None,
    AckTwice,
    NoHeartbeat,
    ResultForUnknownId,
    IgnoreMaxInFlight,
    NoStatusAfterResult,
}

#[derive(Debug, Parser)]
#[command(
    name = "bad-agent",
    about = "A StreamSpace agent that breaks one rule on purpose"
)]
struct Args {
    /// Which rule to break.
    #[arg(long, value_enum, env = "BAD_AGENT_MISBEHAVE", default_value = "none")]
    misbehave: Misbehave,
    #[arg(long, env = "CONTROL_PLANE_URL")]
    control_plane_url: String,
    #[arg(long, env = "AGENT_ID")]
    agent_id: String,
    #[arg(long, env = "AGENT_TLS_CERT")]
    tls_cert: String,
    #[arg(long, env = "AGENT_TLS_KEY")]
    tls_key: String,
    #[arg(long, env = "AGENT_CA_CERT")]
    ca_cert: String,
    #[arg(long, env = "AGENT_TLS_SERVER_NAME", default_value = "localhost")]
    tls_server_name: String,
    #[arg(long, env = "MAX_SESSIONS", default_value_t = 100)]
    max_sessions: u32,
    #[arg(long, env = "SESSION_PORTS", default_value = "20000-29999")]
    session_ports: String,
    #[arg(long, env = "BACKOFF_BASE_MS", default_value_t = 250)]
    backoff_base_ms: u64,
    #[arg(long, env = "BACKOFF_MAX_MS", default_value_t = 30000)]
    backoff_max_ms: u64,
}

struct Session {
    pid: i32,
    url: String,
    child: tokio::process::Child,
}

struct Agent {
    args: Args,
    sessions: HashMap<String, Session>,
    done: HashMap<String, pb::CommandResult>,
    /// The latest status sent per session, sent again after each result.
    latest: HashMap<String, Out>,
    next_port: u16,
    last_port: u16,
}

type Tx = mpsc::Sender<pb::AgentFrame>;

fn frame(f: Out) -> pb::AgentFrame {
    pb::AgentFrame { frame: Some(f) }
}

fn status(session: &str, phase: pb::SessionPhase, url: &str) -> Out {
    Out::Status(pb::SessionStatus {
        session_id: session.into(),
        phase: phase as i32,
        url: url.into(),
        ..Default::default()
    })
}

fn failed(reason: pb::FailureReason, message: &str) -> Outcome {
    Outcome::Failed(pb::CommandFailed {
        reason: reason as i32,
        message: message.chars().take(200).collect(),
        retryable: false,
    })
}

impl Agent {
    fn read(path: &str) -> Result<String, Error> {
        std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))
    }

    async fn stream(&mut self) -> Result<Option<Duration>, Error> {
        let a = &self.args;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(Self::read(&a.ca_cert)?))
            .identity(Identity::from_pem(
                Self::read(&a.tls_cert)?,
                Self::read(&a.tls_key)?,
            ))
            .domain_name(a.tls_server_name.clone());
        let channel = Endpoint::from_shared(a.control_plane_url.clone())
            .map_err(|e| Error::Usage(format!("CONTROL_PLANE_URL: {e}")))?
            .tls_config(tls)?
            .connect()
            .await?;
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(256);
        let hello = pb::Hello {
            agent_id: a.agent_id.clone(),
            platform: "process".into(),
            capacity: Some(pb::Capacity {
                max_sessions: a.max_sessions,
                ..Default::default()
            }),
            agent_version: "bad-agent".into(),
            protocol_version: streamspace::PROTOCOL_VERSION as i32,
            ..Default::default()
        };
        let _ = tx.send(frame(Out::Hello(hello))).await;
        let refused = |s: tonic::Status| Error::Usage(format!("attach: {s}"));
        let mut inbound = client
            .attach(ReceiverStream::new(rx))
            .await
            .map_err(refused)?
            .into_inner();
        let interval = match inbound.message().await.map_err(refused)? {
            Some(pb::ControlFrame {
                frame: Some(In::Welcome(w)),
            }) if w.protocol_version == streamspace::PROTOCOL_VERSION as i32 => w
                .heartbeat_interval
                .and_then(|d| Duration::try_from(d).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(10)),
            _ => {
                return Err(Error::Usage(
                    "expected Welcome of protocol version 1".into(),
                ));
            }
        };
        let (st_tx, mut st_rx) = mpsc::channel::<Out>(64);
        let mut beat = tokio::time::interval(interval);
        let mut seq = 0;
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if self.args.misbehave != Misbehave::NoHeartbeat {
                        seq += 1;
                        let _ = tx.send(frame(Out::Heartbeat(pb::Heartbeat { sequence: seq, in_use: None, active_sessions: vec![] }))).await;
                    }
                }
                Some(s) = st_rx.recv() => self.say(&tx, s).await,
                m = inbound.message() => match m.map_err(refused)? {
                    None => return Ok(None),
                    Some(pb::ControlFrame { frame: Some(In::Command(c)) }) => self.command(c, &tx, &st_tx).await,
                    Some(pb::ControlFrame { frame: Some(In::Drain(d)) }) => {
                        return Ok(Some(d.reconnect_after.and_then(|d| Duration::try_from(d).ok()).unwrap_or_default()));
                    }
                    Some(_) => {}
                },
            }
        }
    }

    async fn command(&mut self, c: pb::Command, tx: &Tx, st_tx: &mpsc::Sender<Out>) {
        let ack = || {
            frame(Out::Ack(pb::CommandAck {
                command_id: c.command_id.clone(),
            }))
        };
        let _ = tx.send(ack()).await;
        if self.args.misbehave == Misbehave::AckTwice {
            let _ = tx.send(ack()).await;
        }
        if self.args.misbehave == Misbehave::IgnoreMaxInFlight
            && matches!(c.action, Some(Action::Stop(_)))
            && !self.done.contains_key(&c.command_id)
        {
            // Stopped in the background while the next command is applied.
            let sess = self.sessions.remove(&c.session_id);
            let (tx, id, s) = (tx.clone(), c.command_id.clone(), c.session_id.clone());
            let ok = pb::CommandResult {
                command_id: id.clone(),
                outcome: Some(Outcome::Succeeded(pb::CommandSucceeded {})),
            };
            self.done.insert(id, ok.clone());
            tokio::spawn(async move {
                if let Some(sess) = sess {
                    stop(sess).await;
                }
                let _ = tx
                    .send(frame(status(&s, pb::SessionPhase::Stopped, "")))
                    .await;
                let _ = tx.send(frame(Out::Result(ok))).await;
            });
            return;
        }
        let result = match self.done.get(&c.command_id) {
            Some(r) => r.clone(),
            None => {
                let outcome = self.apply(&c, tx, st_tx).await;
                let r = pb::CommandResult {
                    command_id: c.command_id.clone(),
                    outcome: Some(outcome),
                };
                self.done.insert(c.command_id.clone(), r.clone());
                r
            }
        };
        let _ = tx.send(frame(Out::Result(result))).await;
        if self.args.misbehave != Misbehave::NoStatusAfterResult
            && let Some(st) = self.latest.get(&c.session_id)
        {
            let _ = tx.send(frame(st.clone())).await;
        }
        if self.args.misbehave == Misbehave::ResultForUnknownId {
            let extra = pb::CommandResult {
                command_id: uuid::Uuid::new_v4().to_string(),
                outcome: Some(Outcome::Succeeded(pb::CommandSucceeded {})),
            };
            let _ = tx.send(frame(Out::Result(extra))).await;
        }
    }

    async fn apply(&mut self, c: &pb::Command, tx: &Tx, st_tx: &mpsc::Sender<Out>) -> Outcome {
        use pb::FailureReason as R;
        use pb::SessionPhase as P;
        let s = c.session_id.as_str();
        let ok = Outcome::Succeeded(pb::CommandSucceeded {});
        let group = |sess: &Session, sig| killpg(Pid::from_raw(sess.pid), sig);
        match &c.action {
            Some(Action::Start(start)) => {
                if let Some(sess) = self.sessions.get_mut(s)
                    && sess.child.try_wait().ok().flatten().is_none()
                {
                    let st = status(s, P::Running, &sess.url);
                    self.say(tx, st).await;
                    return ok;
                }
                let w = start.workload.clone().unwrap_or_default();
                // Ports another process holds (another kit run) are skipped.
                while self.next_port <= self.last_port
                    && std::net::TcpListener::bind(("127.0.0.1", self.next_port)).is_err()
                {
                    self.next_port += 1;
                }
                if w.command.is_empty() || self.next_port > self.last_port {
                    return failed(R::Invalid, "no command, or no free port");
                }
                let port = self.next_port;
                self.next_port += 1;
                let argv: Vec<String> = w
                    .command
                    .iter()
                    .map(|a| a.replace("${PORT}", &port.to_string()))
                    .collect();
                let child = tokio::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .env("PORT", port.to_string())
                    .process_group(0)
                    .stdin(std::process::Stdio::null())
                    .spawn();
                let Ok(child) = child else {
                    return failed(R::Image, "the command cannot be executed");
                };
                let url = format!("http://127.0.0.1:{port}/");
                let (id, u, st) = (s.to_string(), url.clone(), st_tx.clone());
                tokio::spawn(async move {
                    for _ in 0..600 {
                        if tokio::net::TcpStream::connect(("127.0.0.1", port))
                            .await
                            .is_ok()
                        {
                            let _ = st.send(status(&id, P::Running, &u)).await;
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                });
                let pid = child.id().unwrap_or(0) as i32;
                self.sessions.insert(s.into(), Session { pid, url, child });
                let st = status(s, P::Provisioning, "");
                self.say(tx, st).await;
                ok
            }
            Some(Action::Stop(_)) => {
                if let Some(sess) = self.sessions.remove(s) {
                    stop(sess).await;
                }
                let st = status(s, P::Stopped, "");
                self.say(tx, st).await;
                ok
            }
            Some(Action::Hibernate(_)) | Some(Action::Wake(_)) => {
                let Some(sess) = self.sessions.get(s) else {
                    return failed(R::NotFound, "no such session");
                };
                let (sig, phase, url) = match c.action {
                    Some(Action::Hibernate(_)) => (Signal::SIGSTOP, P::Hibernated, ""),
                    _ => (Signal::SIGCONT, P::Running, sess.url.as_str()),
                };
                let _ = group(sess, sig);
                let st = status(s, phase, url);
                self.say(tx, st).await;
                ok
            }
            None => failed(R::Invalid, "no action"),
        }
    }
}

impl Agent {
    /// Sends a status and keeps it as the session's latest (until STOPPED).
    async fn say(&mut self, tx: &Tx, st: Out) {
        if let Out::Status(x) = &st {
            if x.phase == pb::SessionPhase::Stopped as i32 {
                self.latest.remove(&x.session_id);
            } else {
                self.latest.insert(x.session_id.clone(), st.clone());
            }
        }
        let _ = tx.send(frame(st)).await;
    }
}

/// SIGTERM to the session's group, SIGKILL after 3 s.
async fn stop(mut sess: Session) {
    let group = |sig| killpg(Pid::from_raw(sess.pid), sig);
    let _ = group(Signal::SIGTERM);
    let _ = group(Signal::SIGCONT);
    if tokio::time::timeout(Duration::from_secs(3), sess.child.wait())
        .await
        .is_err()
    {
        let _ = group(Signal::SIGKILL);
        let _ = sess.child.wait().await;
    }
    let _ = killpg(Pid::from_raw(sess.pid), Signal::SIGKILL);
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let (lo, hi) = args
        .session_ports
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .unwrap_or((20000, 29999));
    let (base, cap) = (
        Duration::from_millis(args.backoff_base_ms),
        Duration::from_millis(args.backoff_max_ms),
    );
    let mut agent = Agent {
        args,
        sessions: HashMap::new(),
        done: HashMap::new(),
        latest: HashMap::new(),
        next_port: lo,
        last_port: hi,
    };
    let mut delay = base;
    loop {
        match agent.stream().await {
            Ok(Some(after)) => {
                delay = base;
                tokio::time::sleep(after).await;
            }
            Ok(None) => tokio::time::sleep(base).await,
            Err(e) => {
                eprintln!("bad-agent: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(cap);
            }
        }
    }
}
