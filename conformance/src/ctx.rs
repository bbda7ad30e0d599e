//! What a case works with: its own directory, PKI, listener, transcript and
//! agent process, plus helpers to build commands and to count workloads.
//! Dropping the context kills the agent and every workload the case started.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamspace::v1 as pb;
use streamspace::v1::command::Action;
use streamspace::v1::control_frame::Frame as ToAgent;

use crate::agent::{AgentProc, Launch, log_tail};
use crate::conn::Conn;
use crate::error::{Error, Result, broke};
use crate::pki::Pki;
use crate::server::KitServer;
use crate::transcript::Transcript;

/// The kit's settings for every case.
#[derive(Clone)]
pub struct Settings {
    pub agent_cmd: String,
    pub agent_id: String,
    /// First port of the SESSION_PORTS range (100 ports).
    pub port_base: u16,
    /// Kept after the run (for debugging), else removed.
    pub keep_dirs: bool,
}

pub const MAX_SESSIONS: u32 = 4;

pub struct Ctx {
    pub rule: &'static str,
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub server: KitServer,
    pub launch: Launch,
    pub agent: Option<AgentProc>,
    pub transcript: Arc<Mutex<Transcript>>,
    pub agent_id: String,
    /// Every workload started appends its pid to `<marks>/<session>`.
    pub marks: PathBuf,
}

impl Ctx {
    pub async fn new(settings: &Settings, rule: &'static str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("conformance-{rule}-"))
            .tempdir()
            .map_err(|e| Error::io("creating a temporary directory in", std::env::temp_dir(), e))?;
        let pki = Pki::new(dir.path(), &settings.agent_id)?;
        let server = KitServer::start(&pki).await?;
        let data = dir.path().join("data");
        let marks = dir.path().join("marks");
        for d in [&data, &marks] {
            std::fs::create_dir_all(d).map_err(|e| Error::io("creating", d, e))?;
        }
        let p = settings.port_base;
        let env = [
            (
                "CONTROL_PLANE_URL",
                format!("https://127.0.0.1:{}", server.addr.port()),
            ),
            ("AGENT_ID", settings.agent_id.clone()),
            ("AGENT_TLS_CERT", pki.agent_cert_path.display().to_string()),
            ("AGENT_TLS_KEY", pki.agent_key_path.display().to_string()),
            ("AGENT_CA_CERT", pki.ca_path.display().to_string()),
            ("AGENT_TLS_SERVER_NAME", "localhost".into()),
            ("AGENT_DATA_DIR", data.display().to_string()),
            ("PLATFORM", "process".into()),
            ("REGION", "conformance".into()),
            ("MAX_SESSIONS", MAX_SESSIONS.to_string()),
            ("SESSION_PORTS", format!("{p}-{}", p + 99)),
            ("BACKOFF_BASE_MS", "50".into()),
            ("BACKOFF_MAX_MS", "1000".into()),
            ("STOP_GRACE_SECONDS", "2".into()),
            ("LOG_FORMAT", "text".into()),
            ("NO_COLOR", "1".into()),
        ];
        let launch = Launch {
            command: settings.agent_cmd.clone(),
            env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            log: dir.path().join("agent.log"),
        };
        let mut dir = dir;
        dir.disable_cleanup(settings.keep_dirs);
        Ok(Self {
            rule,
            dir,
            pki,
            server,
            launch,
            agent: None,
            transcript: Arc::new(Mutex::new(Transcript::for_agent(&settings.agent_id))),
            agent_id: settings.agent_id.clone(),
            marks,
        })
    }

    pub fn fail(&self, message: impl Into<String>) -> Error {
        broke(self.rule, message)
    }

    pub fn note(&self, line: impl Into<String>) {
        self.transcript
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(line);
    }

    /// The transcript's placeholder of a command id (`<cmd-N>`).
    pub fn tag(&self, id: &str) -> String {
        self.transcript
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .id(id)
    }

    pub fn transcript_text(&self) -> String {
        self.transcript
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .text()
    }

    pub fn start_agent(&mut self) -> Result<()> {
        self.agent = Some(AgentProc::spawn(&self.launch)?);
        Ok(())
    }

    pub async fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill9().await;
        }
        self.note(".. agent killed (SIGKILL to its process group)");
    }

    /// The next Attach (not answered yet: Hello comes next). Fails at once
    /// if the agent exits meanwhile.
    pub async fn accept(&mut self, within: Duration) -> Result<Conn> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let tick = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            match tokio::time::timeout_at(tick, self.server.accepted.recv()).await {
                Ok(Some(a)) => return Ok(Conn::new(self.rule, a, self.transcript.clone())),
                Ok(None) => return Err(self.fail("the kit's listener stopped")),
                Err(_) => {}
            }
            if let Some(status) = self.agent.as_mut().and_then(|a| a.exited()) {
                return Err(self.fail(format!("the agent exited ({status}) instead of attaching")));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.fail(format!("the agent did not attach within {within:?}")));
            }
        }
    }

    /// Accept, read Hello, answer with `welcome`.
    pub async fn attach(&mut self, welcome: pb::Welcome) -> Result<(Conn, pb::Hello)> {
        let mut conn = self.accept(Duration::from_secs(15)).await?;
        let hello = conn.hello(Duration::from_secs(10)).await?;
        conn.send(ToAgent::Welcome(welcome)).await?;
        Ok((conn, hello))
    }

    /// A start of `session` whose workload serves HTTP on $PORT and records
    /// each of its starts in the case's marks.
    pub fn start(&self, session: &str) -> pb::Command {
        let mark = self.marks.join(session).display().to_string();
        // `--foreground` keeps timeout in the session's process group (it
        // would make a group of its own otherwise, which signals to the
        // session's group would miss). The marks directory in every
        // workload's command line lets the kit find leftovers.
        let script = "echo $$ >> \"$1\"; \
            exec timeout --foreground 300 python3 -m http.server --bind 127.0.0.1 \"$2\" --directory \"$3\"";
        let dir = self.marks.display().to_string();
        let argv = ["sh", "-c", script, "workload", &mark, "${PORT}", &dir];
        command(
            session,
            Action::Start(pb::StartSession {
                user: "alice".into(),
                template: "conformance-http".into(),
                workload: Some(pb::WorkloadSpec {
                    command: argv.iter().map(|s| s.to_string()).collect(),
                    streaming_port: "http".into(),
                    ports: vec![pb::PortSpec {
                        name: "http".into(),
                        container_port: 8080,
                    }],
                    ..Default::default()
                }),
            }),
        )
    }

    /// How many workloads of `session` were started so far.
    pub fn workloads(&self, session: &str) -> usize {
        std::fs::read_to_string(self.marks.join(session))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// The agent's log, for a failure message.
    pub fn agent_log(&self) -> String {
        log_tail(&self.launch.log, 20)
    }

    /// Kills every workload the case started and anything they left: each
    /// process whose command line names the case's marks directory.
    fn kill_workloads(&self) {
        let needle = self.marks.display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                use nix::sys::signal::{Signal, kill};
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = kill(pid, Signal::SIGKILL);
                let _ = kill(pid, Signal::SIGCONT);
            }
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.agent.take();
        self.kill_workloads();
    }
}

/// A command with a fresh id.
pub fn command(session: &str, action: Action) -> pb::Command {
    pb::Command {
        command_id: uuid::Uuid::new_v4().to_string(),
        session_id: session.into(),
        session_generation: 1,
        deadline: None,
        trace_context: Default::default(),
        action: Some(action),
    }
}

pub fn stop(session: &str) -> pb::Command {
    command(session, Action::Stop(pb::StopSession { delete_home: true }))
}

pub fn hibernate(session: &str) -> pb::Command {
    command(session, Action::Hibernate(pb::HibernateSession {}))
}

pub fn wake(session: &str) -> pb::Command {
    command(session, Action::Wake(pb::WakeSession {}))
}

impl Ctx {
    /// Like [`Ctx::start`], but the workload takes 1 s to exit after SIGTERM
    /// and records when it got SIGTERM and when it exited (ns since the
    /// epoch) in `<marks>/<session>.log`.
    pub fn start_slow_exit(&self, session: &str) -> pb::Command {
        let mut c = self.start(session);
        let script = "echo $$ >> \"$1\"; \
            trap 'echo \"term $(date +%s%N)\" >> \"$1.log\"; sleep 1; echo \"exit $(date +%s%N)\" >> \"$1.log\"; exit 0' TERM; \
            timeout --foreground 300 python3 -m http.server --bind 127.0.0.1 \"$2\" --directory \"$3\" & wait";
        if let Some(Action::Start(st)) = &mut c.action
            && let Some(w) = &mut st.workload
        {
            w.command[2] = script.into();
        }
        c
    }
}
