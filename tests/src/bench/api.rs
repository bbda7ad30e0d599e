//! The benchmark as an API client: a few TLS connections to the public API
//! with the admin token, the benchmark template, and a `Watcher` that follows
//! `WatchSessions` and tells each waiting command when its session reached
//! the state the command asked for.
//!
//! How a command is timed: a waiter is registered (session name, wanted
//! phase, at least the generation the command will carry) *before* the
//! request is sent, because the agent can finish before the API response is
//! back. The clock starts just before the request is sent and stops when the
//! watch event showing the wanted state arrives. That overstates
//! accepted→succeeded by the API call's own latency (reported separately);
//! it never understates it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use streamspace::v1 as pb;
use streamspace_tests::{Authed, Sessions, bearer};
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::children::Lab;

pub type Admin = pb::agent_admin_service_client::AgentAdminServiceClient<Authed>;
pub type Templates = pb::template_service_client::TemplateServiceClient<Authed>;

/// The template every benchmark session uses. Simulated agents ignore the
/// command; the real agent (failover) runs it.
pub const TEMPLATE: &str = "bench";

async fn connect(lab: &Lab, addr: std::net::SocketAddr) -> anyhow::Result<Authed> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&lab.pki.ca.cert))
        .domain_name("localhost");
    let ch: Channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to the API on {addr}"))?;
    Ok(InterceptedService::new(ch, bearer(&lab.admin_token)))
}

/// API clients over `n` connections, handed out round-robin.
pub struct Api {
    conns: Vec<Authed>,
    next: std::sync::atomic::AtomicUsize,
}

impl Api {
    pub async fn connect(lab: &Lab, addr: std::net::SocketAddr, n: usize) -> anyhow::Result<Self> {
        let mut conns = vec![];
        for _ in 0..n.max(1) {
            conns.push(connect(lab, addr).await?);
        }
        Ok(Self {
            conns,
            next: Default::default(),
        })
    }

    fn conn(&self) -> Authed {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.conns[i % self.conns.len()].clone()
    }

    pub fn sessions(&self) -> Sessions {
        Sessions::new(self.conn())
    }

    pub fn admin(&self) -> Admin {
        Admin::new(self.conn()).max_decoding_message_size(64 << 20)
    }

    /// Installs the benchmark template.
    pub async fn put_template(&self) -> anyhow::Result<()> {
        self.put_template_running("python3").await
    }

    /// Installs the benchmark template with `python` as the interpreter.
    pub async fn put_template_running(&self, python: &str) -> anyhow::Result<()> {
        let t = pb::Template {
            name: TEMPLATE.into(),
            display_name: "Benchmark".into(),
            description: "A static file server; simulated agents run nothing.".into(),
            image: "python:3.12-slim".into(),
            command: [
                python,
                "-m",
                "http.server",
                "${PORT}",
                "--bind",
                "127.0.0.1",
            ]
            .map(String::from)
            .to_vec(),
            ports: vec![pb::PortSpec {
                name: "http".into(),
                container_port: 8000,
            }],
            streaming_port: "http".into(),
            ..Default::default()
        };
        Templates::new(self.conn())
            .put_template(pb::PutTemplateRequest { template: Some(t) })
            .await
            .context("PutTemplate")?;
        Ok(())
    }

    /// (connected, total) agents as the control plane sees them.
    pub async fn agents_connected(&self) -> anyhow::Result<(usize, usize)> {
        let agents = self
            .admin()
            .list_agents(pb::ListAgentsRequest {})
            .await
            .context("ListAgents")?
            .into_inner()
            .agents;
        Ok((agents.iter().filter(|a| a.connected).count(), agents.len()))
    }

    /// Every session, all pages.
    pub async fn all_sessions(&self) -> anyhow::Result<Vec<pb::Session>> {
        let mut out = vec![];
        let mut token = String::new();
        loop {
            let r = self
                .sessions()
                .list_sessions(pb::ListSessionsRequest {
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .context("ListSessions")?
                .into_inner();
            out.extend(r.sessions);
            if r.next_page_token.is_empty() {
                return Ok(out);
            }
            token = r.next_page_token;
        }
    }
}

/// The state a command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The session shows this phase at this generation or later.
    Phase(pb::SessionPhase, u64),
    /// The session is gone.
    Deleted,
}

impl Want {
    /// Some(Ok) when `ev` (None: the session is gone) shows the wanted state,
    /// Some(Err) when it shows the command failed, None while neither.
    fn outcome(&self, ev: Option<&pb::SessionEvent>) -> Option<Result<(), String>> {
        let deleted = |e: &pb::SessionEvent| e.r#type == pb::session_event::Type::Deleted as i32;
        match (self, ev) {
            (Want::Deleted, None) => Some(Ok(())),
            (Want::Deleted, Some(e)) => deleted(e).then_some(Ok(())),
            (Want::Phase(..), None) => Some(Err("the session is gone".into())),
            (Want::Phase(p, g), Some(e)) => {
                let s = e.session.as_ref()?;
                if deleted(e) {
                    Some(Err("the session was deleted".into()))
                } else if s.generation < *g {
                    None
                } else if s.phase == *p as i32 {
                    Some(Ok(()))
                } else if s.phase == pb::SessionPhase::Failed as i32 {
                    Some(Err(format!("the session FAILED: {}", s.message)))
                } else {
                    None
                }
            }
        }
    }
}

/// When the wanted state was seen, or why it never will be.
pub type Outcome = Result<Instant, String>;

struct Waiter {
    want: Want,
    done: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Waiting {
    by_session: HashMap<String, Vec<Waiter>>,
}

/// Follows `WatchSessions` for every session (admin) and wakes waiters.
#[derive(Clone)]
pub struct Watcher {
    waiting: Arc<Mutex<Waiting>>,
    /// How often the watch fell behind and was re-established.
    pub resyncs: Arc<std::sync::atomic::AtomicU64>,
}

impl Watcher {
    /// Opens the watch; events are read by a background task until the API goes away.
    pub async fn start(api: &Api) -> anyhow::Result<Self> {
        let w = Self {
            waiting: Default::default(),
            resyncs: Default::default(),
        };
        let stream = open_watch(api.sessions()).await?;
        let (me, sessions) = (w.clone(), api.sessions());
        tokio::spawn(async move { me.follow(stream, sessions).await });
        Ok(w)
    }

    /// Registers interest in `name` reaching `want`; call before sending the request.
    pub fn expect(&self, name: &str, want: Want) -> oneshot::Receiver<Outcome> {
        let (done, rx) = oneshot::channel();
        self.waiting
            .lock()
            .expect("watch lock")
            .by_session
            .entry(name.to_string())
            .or_default()
            .push(Waiter { want, done });
        rx
    }

    fn resolve(&self, name: &str, ev: Option<&pb::SessionEvent>, at: Instant) {
        let mut w = self.waiting.lock().expect("watch lock");
        let Some(list) = w.by_session.get_mut(name) else {
            return;
        };
        let mut keep = vec![];
        for waiter in list.drain(..) {
            match waiter.want.outcome(ev) {
                Some(r) => {
                    let _ = waiter.done.send(r.map(|()| at));
                }
                None if !waiter.done.is_closed() => keep.push(waiter),
                None => {}
            }
        }
        if keep.is_empty() {
            w.by_session.remove(name);
        } else {
            *list = keep;
        }
    }

    async fn follow(&self, mut stream: tonic::Streaming<pb::SessionEvent>, mut api: Sessions) {
        loop {
            match stream.message().await {
                Ok(Some(ev)) => {
                    let at = Instant::now();
                    if let Some(name) = ev.session.as_ref().map(|s| s.name.clone()) {
                        self.resolve(&name, Some(&ev), at);
                    }
                }
                Ok(None) | Err(_) => {
                    // Fell behind (ABORTED) or the stream broke: watch again,
                    // then look up everything still awaited, so nothing that
                    // happened in between is missed.
                    self.resyncs
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match open_watch(api.clone()).await {
                        Ok(s) => stream = s,
                        Err(_) => return,
                    }
                    let names: Vec<String> = self
                        .waiting
                        .lock()
                        .expect("watch lock")
                        .by_session
                        .keys()
                        .cloned()
                        .collect();
                    for name in names {
                        let at = Instant::now();
                        match api
                            .get_session(pb::GetSessionRequest { name: name.clone() })
                            .await
                        {
                            Ok(s) => {
                                let ev = pb::SessionEvent {
                                    r#type: pb::session_event::Type::Modified as i32,
                                    session: Some(s.into_inner()),
                                };
                                self.resolve(&name, Some(&ev), at);
                            }
                            Err(e) if e.code() == tonic::Code::NotFound => {
                                self.resolve(&name, None, at)
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
        }
    }
}

async fn open_watch(mut api: Sessions) -> anyhow::Result<tonic::Streaming<pb::SessionEvent>> {
    Ok(api
        .watch_sessions(pb::WatchSessionsRequest::default())
        .await
        .context("WatchSessions")?
        .into_inner())
}

/// Waits for a registered expectation, failing loudly if it never comes:
/// an accepted command that never takes effect is a lost command.
pub async fn arrived(
    rx: oneshot::Receiver<Outcome>,
    what: &str,
    within: Duration,
) -> anyhow::Result<Instant> {
    match tokio::time::timeout(within, rx).await {
        Ok(Ok(Ok(at))) => Ok(at),
        Ok(Ok(Err(why))) => bail!("LOST: {what} did not happen: {why}"),
        Ok(Err(_)) => bail!("LOST: the watcher stopped before {what}"),
        Err(_) => bail!("LOST: {what} did not happen within {within:?}"),
    }
}

/// A user action that makes the control plane issue one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Hibernate,
    Wake,
    Delete,
}

/// How long one command took.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    /// Request sent -> the wanted state seen on the watch.
    pub total: Duration,
    /// Request sent -> API response (the command is durable).
    pub call: Duration,
}

/// Issues `op` on session `name` (whose next generation is `generation`) and
/// waits until it took effect. `Ok(None)`: the API refused it as overloaded
/// (RESOURCE_EXHAUSTED / UNAVAILABLE), so no command was accepted.
pub async fn command(
    api: &mut Sessions,
    watch: &Watcher,
    op: Op,
    name: &str,
    generation: u64,
    within: Duration,
) -> anyhow::Result<Option<Timed>> {
    let want = match op {
        Op::Create | Op::Wake => Want::Phase(pb::SessionPhase::Running, generation),
        Op::Hibernate => Want::Phase(pb::SessionPhase::Hibernated, generation),
        Op::Delete => Want::Deleted,
    };
    let rx = watch.expect(name, want);
    let t0 = Instant::now();
    let name_s = name.to_string();
    let r = match op {
        Op::Create => {
            api.create_session(pb::CreateSessionRequest {
                name: name_s,
                template: TEMPLATE.into(),
                ..Default::default()
            })
            .await
        }
        Op::Hibernate => {
            api.hibernate_session(pb::HibernateSessionRequest { name: name_s })
                .await
        }
        Op::Wake => {
            api.wake_session(pb::WakeSessionRequest { name: name_s })
                .await
        }
        Op::Delete => {
            api.delete_session(pb::DeleteSessionRequest {
                name: name_s,
                delete_home: false,
            })
            .await
        }
    };
    let call = t0.elapsed();
    let s = match r {
        Ok(s) => s.into_inner(),
        Err(e)
            if matches!(
                e.code(),
                tonic::Code::ResourceExhausted | tonic::Code::Unavailable
            ) =>
        {
            return Ok(None);
        }
        Err(e) => bail!("{op:?} {name}: {e}"),
    };
    if op != Op::Delete && s.generation != generation {
        bail!(
            "{op:?} {name}: expected generation {generation}, the API answered {}",
            s.generation
        );
    }
    let at = arrived(rx, &format!("{op:?} of session {name}"), within).await?;
    Ok(Some(Timed {
        total: at.saturating_duration_since(t0),
        call,
    }))
}
