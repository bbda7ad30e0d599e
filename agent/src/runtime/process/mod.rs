//! The `process` runtime: a session is the template's command run as a local
//! process group on a free loopback port. State lives in `<dir>/sessions/<id>.json`
//! so a restarted agent re-adopts what it runs instead of starting it twice.
//!
//! Running once the port accepts connections; hibernate = SIGSTOP, wake =
//! SIGCONT, stop = SIGTERM then SIGKILL after a grace period. The URL is
//! `http://127.0.0.1:<port>/`.
//!
//! A start waits (at most [`DEFAULT_START_WAIT`], see
//! [`ProcessRuntime::with_start_wait`]) for the process to open its port: a
//! process that exits before it does fails the start as retryable
//! (`CRASH_LOOP`), so the control plane tries it again with backoff; a
//! process still starting after the wait is left to come up, and its later
//! exit is a crash reported in its status.

mod procfs;
mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use streamspace::v1 as pb;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::names::{check_session, check_user};
use super::ports::{PortAllocator, PortRange};
use super::{Runtime, RuntimeError, StatusSink, status};
use procfs::{SPAWN_ENV, alive, find_tagged, gone_within, proc_stat, signal_group};
use state::{Layout, ProcState, io_err};

use pb::FailureReason as R;
use pb::SessionPhase as P;

/// How long a start waits for its process to open its port, unless told.
pub const DEFAULT_START_WAIT: Duration = Duration::from_secs(10);

/// The first outcome of a freshly spawned process, handed from its monitor
/// to the start that waits for it: `None` once the port answers, `Some(why)`
/// if the process exited first. Whoever takes the sender out first decides:
/// the monitor (it hands the outcome over) or the start giving up waiting
/// (the monitor then reports as for any session).
type Startup = Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Option<String>>>>>;

fn take(startup: &Option<Startup>) -> Option<tokio::sync::oneshot::Sender<Option<String>>> {
    startup
        .as_ref()
        .and_then(|s| s.lock().unwrap_or_else(|e| e.into_inner()).take())
}

struct Proc {
    state: ProcState,
    /// Set while we stop it, so its exit is not reported as a crash.
    stopping: Arc<AtomicBool>,
    /// Set once the monitor saw the process ready (port open).
    ready: Arc<AtomicBool>,
}

pub struct ProcessRuntime {
    layout: Layout,
    status: StatusSink,
    procs: Arc<Mutex<HashMap<String, Proc>>>,
    /// Ports of live sessions: never two at once on one port.
    ports: Arc<PortAllocator>,
    stop_grace: Duration,
    ready_timeout: Duration,
    /// How long a start waits for the process to open its port.
    start_wait: Duration,
    /// Stop every session when the agent exits (the embedded default does).
    stop_on_exit: bool,
    /// The `setsid` program, if the machine has one (see `spawn`).
    setsid: Option<PathBuf>,
}

/// The executable `cmd` names: a path, or a name looked up on PATH.
fn resolve(cmd: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| executable(p))
}

fn substitute(arg: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(arg.to_string(), |a, (k, v)| {
        a.replace(&format!("${{{k}}}"), v)
    })
}

/// Waits (briefly) until `pid` leads its own process group. `setsid` makes
/// the child a session and group leader a moment after spawn returns; a
/// signal for the session's group sent before that would miss it, or (sent
/// to the process alone) stop it while it is still in the agent's group,
/// where the agent's death would hang it up. Returns at once when the child
/// got its group before exec (no `setsid` program) or has already exited.
async fn leads_its_group(pid: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))) {
            Ok(g) if g.as_raw() != pid && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            _ => return,
        }
    }
}

impl ProcessRuntime {
    /// Opens the state directory with the default session port range (see
    /// [`open_with_ports`](Self::open_with_ports)).
    pub fn open(
        dir: &Path,
        status: StatusSink,
        stop_grace: Duration,
        stop_on_exit: bool,
    ) -> Result<Self, RuntimeError> {
        Self::open_with_ports(
            dir,
            status,
            stop_grace,
            stop_on_exit,
            PortAllocator::new(PortRange::default()),
        )
    }

    /// Opens the state directory and re-adopts every session whose process is
    /// still alive (forgetting the ones that died while the agent was away).
    /// Session processes get ports from `ports`.
    pub fn open_with_ports(
        dir: &Path,
        status: StatusSink,
        stop_grace: Duration,
        stop_on_exit: bool,
        ports: PortAllocator,
    ) -> Result<Self, RuntimeError> {
        let layout = Layout::new(dir);
        layout.create()?;
        let rt = Self {
            layout,
            status,
            procs: Arc::new(Mutex::new(HashMap::new())),
            ports: Arc::new(ports),
            stop_grace,
            ready_timeout: Duration::from_secs(60),
            start_wait: DEFAULT_START_WAIT,
            stop_on_exit,
            setsid: ["/usr/bin/setsid", "/bin/setsid"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists()),
        };
        if rt.setsid.is_none() {
            warn!("no setsid program: a hibernated session may not survive an agent crash");
        }
        let mut procs = HashMap::new();
        let entries = std::fs::read_dir(rt.layout.sessions())
            .map_err(|e| io_err("reading session state", e))?;
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(mut st) = serde_json::from_str::<ProcState>(&text) else {
                warn!(path = %path.display(), "ignoring unreadable session state");
                continue;
            };
            if let Err(e) = check_session(&st.session) {
                warn!(path = %path.display(), error = %e, "ignoring session state with an invalid session id");
                continue;
            }
            if st.pid == 0 {
                // The agent died while starting this session: the process
                // may or may not have been spawned.
                match find_tagged(&st.spawn_tag) {
                    Some((pid, start_time)) if !st.spawn_tag.is_empty() => {
                        info!(session = %st.session, pid, "found the process of an interrupted start");
                        st.pid = pid;
                        st.start_time = start_time;
                        rt.layout.save(&st)?;
                    }
                    _ => {
                        info!(session = %st.session, "an interrupted start spawned nothing");
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                }
            }
            if alive(st.pid, st.start_time) {
                info!(session = %st.session, pid = st.pid, "re-adopted running session");
                rt.ports.adopt(st.port);
                // Whether its port answers now: the first Hello's inventory
                // says RUNNING only of what serves (the monitor keeps probing
                // the others), and must not wait for the monitor to say so.
                let serving = std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], st.port)),
                    Duration::from_millis(200),
                )
                .is_ok();
                let p = Proc {
                    state: st.clone(),
                    stopping: Arc::new(AtomicBool::new(false)),
                    ready: Arc::new(AtomicBool::new(serving)),
                };
                procs.insert(st.session.clone(), p);
            } else {
                info!(session = %st.session, pid = st.pid, "session process gone while the agent was away");
                let _ = std::fs::remove_file(&path);
            }
        }
        // Monitors start only once the table holds every adopted session: a
        // monitor takes the table's lock, so one started earlier could hold
        // it here (and a monitor must find its session in the table).
        let mut table = rt
            .procs
            .try_lock()
            .expect("no monitor runs before the table is filled");
        for p in procs.values() {
            // Level-triggered: a session recorded hibernated is stopped, even
            // if the stop was lost (the agent died as it sent it).
            if p.state.hibernated {
                signal_group(p.state.pid, Signal::SIGSTOP);
            }
            rt.monitor(p, None, None);
        }
        table.extend(procs);
        drop(table);
        Ok(rt)
    }

    /// How long a start waits for its process to open its port (capped at
    /// the time a process has to do so); zero: a start returns once the
    /// process is spawned.
    pub fn with_start_wait(mut self, wait: Duration) -> Self {
        self.start_wait = wait.min(self.ready_timeout);
        self
    }

    fn report(&self, st: &ProcState, phase: P, reason: R, message: &str) {
        let url = if phase == P::Running {
            st.url()
        } else {
            String::new()
        };
        self.status
            .report(&st.session, phase, &url, reason, message, &st.workload());
    }

    /// Watches a session process: reports RUNNING once its port accepts
    /// connections, reaps it (our child) or polls it (adopted after a
    /// restart), and reports a crash if it exits while we did not stop it.
    /// While a start waits on `startup`, the port opening or the exit is
    /// handed to it instead (see [`Startup`]).
    fn monitor(&self, p: &Proc, child: Option<tokio::process::Child>, startup: Option<Startup>) {
        let (st, stopping, ready) = (p.state.clone(), p.stopping.clone(), p.ready.clone());
        let (procs, sink, layout, ports, ready_timeout) = (
            self.procs.clone(),
            self.status.clone(),
            self.layout.clone(),
            self.ports.clone(),
            self.ready_timeout,
        );
        // Under the command's span (the caller's); it ends when the port
        // answers or the wait gives up, not when the process exits.
        let probe_span =
            tracing::info_span!("process.port_probe", session = %st.session, port = st.port);
        tokio::spawn(async move {
            let probe = async {
                let _span = probe_span;
                let deadline = tokio::time::Instant::now() + ready_timeout;
                loop {
                    if tokio::net::TcpStream::connect(("127.0.0.1", st.port))
                        .await
                        .is_ok()
                    {
                        return true;
                    }
                    if tokio::time::Instant::now() > deadline {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let wait = async {
                match child {
                    Some(mut c) => match c.wait().await {
                        Ok(s) => format!("the process exited ({s})"),
                        Err(e) => format!("waiting for the process failed: {e}"),
                    },
                    None => {
                        while alive(st.pid, st.start_time) {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        "the process exited".to_string()
                    }
                }
            };
            tokio::pin!(probe, wait);
            let why = tokio::select! {
                ok = &mut probe => {
                    if ok {
                        ready.store(true, Ordering::SeqCst);
                        let hibernated = procs.lock().await.get(&st.session).is_some_and(|p| p.state.hibernated);
                        if !stopping.load(Ordering::SeqCst) && !hibernated {
                            sink.report(&st.session, P::Running, &st.url(), R::Unspecified, "", &st.workload());
                        }
                    } else if !stopping.load(Ordering::SeqCst) {
                        sink.report(&st.session, P::Failed, "", R::CrashLoop,
                            &format!("the process did not open port {} within {ready_timeout:?}", st.port), &st.workload());
                    }
                    // A start still waiting returns now, after the status.
                    if let Some(tx) = take(&startup) {
                        let _ = tx.send(None);
                    }
                    wait.await
                }
                why = &mut wait => why,
            };
            let waiting = take(&startup);
            if exited(&st, &stopping, &procs, &layout, &ports).await {
                match waiting {
                    Some(tx) => {
                        let _ = tx.send(Some(why));
                    }
                    None => {
                        warn!(session = %st.session, pid = st.pid, %why, "session process died");
                        sink.report(
                            &st.session,
                            P::Failed,
                            "",
                            R::CrashLoop,
                            &why,
                            &st.workload(),
                        );
                    }
                }
            }
        });
    }

    /// Waits for the first outcome of the process `spawn` started (see
    /// [`Startup`]): its port opening, or its exit, which fails the start as
    /// retryable after a STOPPED status (nothing runs while the control plane
    /// waits to try again). After `start_wait` the process is left to come up.
    async fn first_outcome(
        &self,
        st: &ProcState,
        startup: Startup,
        mut rx: tokio::sync::oneshot::Receiver<Option<String>>,
    ) -> Result<(), RuntimeError> {
        let outcome = match tokio::time::timeout(self.start_wait, &mut rx).await {
            Ok(r) => r.ok().flatten(),
            Err(_) => {
                if take(&Some(startup)).is_some() {
                    return Ok(());
                }
                // The monitor took it first: its outcome is on the way.
                rx.await.ok().flatten()
            }
        };
        let Some(why) = outcome else {
            return Ok(());
        };
        let mut message = format!("{why} before it opened port {}", st.port);
        if let Some(line) = self
            .layout
            .log_path(&st.session)
            .ok()
            .and_then(|p| last_line(&p))
        {
            message.push_str(&format!("; its last output: {line:?}"));
        }
        warn!(session = %st.session, pid = st.pid, %message, "session process died while starting");
        self.report(st, P::Stopped, R::Unspecified, &message);
        Err(RuntimeError::new(R::CrashLoop, message, true))
    }

    #[tracing::instrument(name = "process.spawn", skip_all, fields(session))]
    async fn spawn(
        &self,
        session: &str,
        start: &pb::StartSession,
    ) -> Result<
        (
            Proc,
            Startup,
            tokio::sync::oneshot::Receiver<Option<String>>,
        ),
        RuntimeError,
    > {
        let w = start.workload.clone().unwrap_or_default();
        if w.command.is_empty() {
            return Err(RuntimeError::new(
                R::Invalid,
                format!(
                    "template {:?} has no command; the process runtime runs commands, not images",
                    start.template
                ),
                false,
            ));
        }
        let program = resolve(&w.command[0]).ok_or_else(|| {
            RuntimeError::new(
                R::Image,
                format!(
                    "command {:?} cannot be executed: not found or not executable",
                    w.command[0]
                ),
                false,
            )
        })?;
        let home = self.layout.home(session, &start.user, w.persistent_home)?;
        let state_path = self.layout.state_path(session)?;
        let log_path = self.layout.log_path(session)?;
        // The claim's host-wide lock becomes the child's stdin (see
        // `PortAllocator`).
        let mut claim = self
            .ports
            .allocate()
            .map_err(|e| RuntimeError::new(R::Platform, e.to_string(), true))?;
        let port = claim.port;
        // From here on, every failure gives the port back.
        let release = |e: RuntimeError| {
            self.ports.release(port);
            e
        };
        std::fs::create_dir_all(&home)
            .map_err(|e| release(io_err("creating the home directory", e)))?;
        let port_s = port.to_string();
        let home_s = home.display().to_string();
        let vars = [
            ("PORT", port_s.as_str()),
            ("SESSION_ID", session),
            ("USER", start.user.as_str()),
            ("HOME", home_s.as_str()),
        ];
        let args: Vec<String> = w.command.iter().map(|a| substitute(a, &vars)).collect();
        let requested = super::requested(w.resources.as_ref());
        // Record the intent before spawning (see `ProcState::pid`).
        let mut st = ProcState {
            session: session.to_string(),
            user: start.user.clone(),
            pid: 0,
            spawn_tag: uuid::Uuid::new_v4().to_string(),
            start_time: 0,
            port,
            hibernated: false,
            home,
            persistent_home: w.persistent_home,
            cpu_millis: requested.0,
            memory_bytes: requested.1,
        };
        self.layout.save(&st).map_err(release)?;
        let forget = |e: RuntimeError| {
            let _ = std::fs::remove_file(&state_path);
            release(e)
        };
        let log = std::fs::File::create(&log_path)
            .map_err(|e| forget(io_err("creating the session log", e)))?;
        let log2 = log
            .try_clone()
            .map_err(|e| forget(io_err("creating the session log", e)))?;
        // `setsid` (util-linux) makes the process a session and group leader
        // with the same pid. A group of its own is not enough: when the agent
        // dies, a process group with a stopped (hibernated) member that becomes
        // orphaned gets SIGHUP from the kernel and dies. A new session's group
        // is orphaned from the start, so the agent's death changes nothing.
        let mut cmd = match &self.setsid {
            Some(setsid) => {
                let mut c = tokio::process::Command::new(setsid);
                c.arg(&program);
                c
            }
            None => {
                let mut c = tokio::process::Command::new(&program);
                c.process_group(0);
                c
            }
        };
        cmd.args(&args[1..])
            .envs(w.env.iter())
            .env("PORT", &port_s)
            .env("SESSION_ID", session)
            .env("USER", &start.user)
            .env("HOME", &home_s)
            .env(SPAWN_ENV, &st.spawn_tag)
            .current_dir(&st.home)
            .stdin(claim.stdin())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| {
            forget(RuntimeError::new(
                R::Image,
                format!("command {:?} cannot be executed: {e}", args[0]),
                false,
            ))
        })?;
        let pid = child
            .id()
            .map(|p| p as i32)
            .ok_or_else(|| forget(io_err("spawning", "no pid")))?;
        st.pid = pid;
        st.start_time = proc_stat(pid).map(|(_, t)| t).unwrap_or(0);
        if let Err(e) = self.layout.save(&st) {
            signal_group(pid, Signal::SIGKILL);
            let _ = child.wait().await;
            return Err(forget(e));
        }
        leads_its_group(pid).await;
        info!(session, pid, port, command = ?args, "session process started");
        let p = Proc {
            state: st.clone(),
            stopping: Arc::new(AtomicBool::new(false)),
            ready: Arc::new(AtomicBool::new(false)),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let startup: Startup = Arc::new(std::sync::Mutex::new(Some(tx)));
        self.monitor(&p, Some(child), Some(startup.clone()));
        Ok((p, startup, rx))
    }
}

/// A session's process is gone: unless we stopped it (or a newer process
/// replaced it), it is forgotten and its port free again; true: the caller
/// reports why.
async fn exited(
    st: &ProcState,
    stopping: &AtomicBool,
    procs: &Mutex<HashMap<String, Proc>>,
    layout: &Layout,
    ports: &PortAllocator,
) -> bool {
    if stopping.load(Ordering::SeqCst) {
        return false;
    }
    let mut procs = procs.lock().await;
    if procs.get(&st.session).is_none_or(|p| p.state.pid != st.pid) {
        return false;
    }
    procs.remove(&st.session);
    ports.release(st.port);
    layout.forget(&st.session);
    true
}

/// The last non-empty line a session process printed, bounded (its log's
/// last 4 KiB, at most 200 characters).
fn last_line(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(200).collect())
}

#[async_trait]
impl Runtime for ProcessRuntime {
    async fn inventory(&self) -> Result<Vec<pb::SessionStatus>, RuntimeError> {
        let procs = self.procs.lock().await;
        Ok(procs
            .values()
            .map(|p| {
                let st = &p.state;
                let (phase, url) = match (st.hibernated, p.ready.load(Ordering::SeqCst)) {
                    (true, _) => (P::Hibernated, String::new()),
                    (false, true) => (P::Running, st.url()),
                    (false, false) => (P::Provisioning, String::new()),
                };
                status(&st.session, phase, &url, R::Unspecified, "", &st.workload())
            })
            .collect())
    }

    async fn start(&self, session: &str, start: &pb::StartSession) -> Result<(), RuntimeError> {
        check_session(session)?;
        check_user(&start.user)?;
        let mut procs = self.procs.lock().await;
        if let Some(p) = procs.get_mut(session) {
            if alive(p.state.pid, p.state.start_time) {
                if p.state.hibernated {
                    signal_group(p.state.pid, Signal::SIGCONT);
                    p.state.hibernated = false;
                    self.layout.save(&p.state)?;
                }
                let phase = if p.ready.load(Ordering::SeqCst) {
                    P::Running
                } else {
                    P::Provisioning
                };
                self.report(&p.state, phase, R::Unspecified, "already running");
                return Ok(());
            }
            if let Some(dead) = procs.remove(session) {
                self.ports.release(dead.state.port);
            }
        }
        let (p, startup, rx) = self.spawn(session, start).await?;
        self.report(
            &p.state,
            P::Provisioning,
            R::Unspecified,
            "process started; waiting for its port",
        );
        let st = p.state.clone();
        procs.insert(session.to_string(), p);
        drop(procs);
        self.first_outcome(&st, startup, rx).await
    }

    async fn stop(&self, session: &str, delete_home: bool) -> Result<(), RuntimeError> {
        check_session(session)?;
        let mut procs = self.procs.lock().await;
        let Some(p) = procs.remove(session) else {
            self.layout.forget(session);
            self.status
                .report(session, P::Stopped, "", R::Unspecified, "not running", "");
            return Ok(());
        };
        p.stopping.store(true, Ordering::SeqCst);
        let st = &p.state;
        signal_group(st.pid, Signal::SIGTERM);
        signal_group(st.pid, Signal::SIGCONT);
        if !gone_within(st.pid, st.start_time, self.stop_grace).await {
            warn!(
                session,
                pid = st.pid,
                "process ignored SIGTERM; sending SIGKILL"
            );
            signal_group(st.pid, Signal::SIGKILL);
            gone_within(st.pid, st.start_time, Duration::from_secs(5)).await;
        }
        // Children of the session that left its group are not followed; the
        // group itself is gone.
        signal_group(st.pid, Signal::SIGKILL);
        self.ports.release(st.port);
        self.layout.forget(session);
        if (!st.persistent_home || delete_home)
            && let Err(e) = self.layout.remove_home(&st.home)
        {
            warn!(session, error = %e, "home directory not removed");
        }
        info!(session, pid = st.pid, "session process stopped");
        self.report(st, P::Stopped, R::Unspecified, "");
        Ok(())
    }

    async fn hibernate(&self, session: &str) -> Result<(), RuntimeError> {
        check_session(session)?;
        let mut procs = self.procs.lock().await;
        let p = procs
            .get_mut(session)
            .ok_or_else(|| RuntimeError::not_found(session))?;
        signal_group(p.state.pid, Signal::SIGSTOP);
        if !p.state.hibernated {
            p.state.hibernated = true;
            self.layout.save(&p.state)?;
        }
        self.report(
            &p.state,
            P::Hibernated,
            R::Unspecified,
            "process stopped (SIGSTOP)",
        );
        Ok(())
    }

    async fn wake(&self, session: &str) -> Result<(), RuntimeError> {
        check_session(session)?;
        let mut procs = self.procs.lock().await;
        let p = procs
            .get_mut(session)
            .ok_or_else(|| RuntimeError::not_found(session))?;
        signal_group(p.state.pid, Signal::SIGCONT);
        if p.state.hibernated {
            p.state.hibernated = false;
            self.layout.save(&p.state)?;
        }
        let phase = if p.ready.load(Ordering::SeqCst) {
            P::Running
        } else {
            P::Provisioning
        };
        self.report(&p.state, phase, R::Unspecified, "");
        Ok(())
    }

    /// Sessions with a record, and what the ones not hibernated request.
    fn in_use(&self) -> pb::Capacity {
        let Ok(procs) = self.procs.try_lock() else {
            return pb::Capacity::default();
        };
        let live = procs.values().filter(|p| !p.state.hibernated);
        pb::Capacity {
            max_sessions: procs.len() as u32,
            cpu_millis: live.clone().map(|p| p.state.cpu_millis).sum(),
            memory_bytes: live.map(|p| p.state.memory_bytes).sum(),
        }
    }

    /// Sessions with an established TCP connection to their port (a user,
    /// or anything else that talks to the session).
    fn active_sessions(&self) -> Vec<String> {
        let Ok(procs) = self.procs.try_lock() else {
            return Vec::new();
        };
        if procs.is_empty() {
            return Vec::new();
        }
        let ports = procfs::established_local_ports();
        procs
            .iter()
            .filter(|(_, p)| !p.state.hibernated && ports.contains(&p.state.port))
            .map(|(id, _)| id.clone())
            .collect()
    }

    async fn shutdown(&self) {
        if !self.stop_on_exit {
            return;
        }
        let ids: Vec<String> = self.procs.lock().await.keys().cloned().collect();
        for id in ids {
            let _ = self.stop(&id, false).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime on `dir` (stop grace `grace`) and the sink its statuses
    /// go to; the start wait is the default unless the test sets one.
    fn open(dir: &Path, grace: Duration) -> (ProcessRuntime, StatusSink) {
        let (sink, statuses) = StatusSink::channel(16);
        let rt = ProcessRuntime::open(dir, sink, grace, false).unwrap();
        (rt, statuses)
    }

    fn intent(dir: &Path, session: &str, tag: &str) {
        let st = ProcState {
            session: session.into(),
            user: "alice".into(),
            pid: 0,
            spawn_tag: tag.into(),
            start_time: 0,
            port: 20000,
            hibernated: false,
            home: dir.join("scratch").join(session),
            persistent_home: false,
            cpu_millis: 0,
            memory_bytes: 0,
        };
        std::fs::create_dir_all(dir.join("sessions")).unwrap();
        std::fs::write(
            dir.join("sessions").join(format!("{session}.json")),
            serde_json::to_string(&st).unwrap(),
        )
        .unwrap();
    }

    /// An agent killed after spawning but before recording the pid: the
    /// restarted runtime finds the process by its tag and adopts it, so a
    /// re-sent start does not run the session twice.
    #[tokio::test]
    async fn an_interrupted_start_is_adopted_not_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let tag = uuid::Uuid::new_v4().to_string();
        intent(dir.path(), "s1", &tag);
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .env(SPAWN_ENV, &tag)
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Wait until exec has replaced the environment.
        for _ in 0..100 {
            if find_tagged(&tag).is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (rt, _rx) = open(dir.path(), Duration::from_secs(1));
        let inv = rt.inventory().await.unwrap();
        assert_eq!(inv.len(), 1, "{inv:?}");
        assert_eq!(inv[0].workload, format!("pid {pid}"));
        let saved: ProcState = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("sessions/s1.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(saved.pid, pid, "the pid is recorded now");
        rt.stop("s1", false).await.unwrap();
        let _ = child.wait();
        assert!(find_tagged(&tag).is_none(), "stopped");
    }

    /// Heartbeats report what the running sessions request; a hibernated
    /// session keeps its record (a session) but not its CPU and memory, and
    /// a restarted runtime knows the requests from the records.
    #[tokio::test]
    async fn in_use_sums_the_requests_of_running_sessions() {
        let dir = tempfile::tempdir().unwrap();
        // `sleep` opens no port: a start does not wait for one.
        let (rt, _rx) = open(dir.path(), Duration::from_secs(5));
        let rt = rt.with_start_wait(Duration::ZERO);
        let start = |cpu: &str, mem: &str| pb::StartSession {
            user: "alice".into(),
            template: "t".into(),
            workload: Some(pb::WorkloadSpec {
                command: vec!["sleep".into(), "60".into()],
                resources: Some(pb::Resources {
                    requests: Some(pb::ResourceList {
                        cpu: cpu.into(),
                        memory: mem.into(),
                    }),
                    limits: None,
                }),
                ..Default::default()
            }),
        };
        rt.start("u1", &start("500m", "1Gi")).await.unwrap();
        rt.start("u2", &start("2", "512Mi")).await.unwrap();
        let u = rt.in_use();
        assert_eq!(
            (u.max_sessions, u.cpu_millis, u.memory_bytes),
            (2, 2500, 1536 << 20)
        );
        rt.hibernate("u2").await.unwrap();
        let u = rt.in_use();
        assert_eq!(
            (u.max_sessions, u.cpu_millis, u.memory_bytes),
            (2, 500, 1 << 30)
        );
        drop(rt);
        let (rt, _rx) = open(dir.path(), Duration::from_secs(5));
        rt.inventory().await.unwrap();
        assert_eq!(rt.in_use().cpu_millis, 500, "known again after a restart");
        rt.stop("u1", false).await.unwrap();
        rt.stop("u2", false).await.unwrap();
    }

    fn shell(script: &str) -> pb::StartSession {
        pb::StartSession {
            user: "alice".into(),
            template: "t".into(),
            workload: Some(pb::WorkloadSpec {
                command: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            }),
        }
    }

    /// A process that exits before it opens its port fails the start as
    /// retryable, saying how it exited and what it printed last; the session
    /// is STOPPED (nothing runs), forgotten, and a new start runs afresh.
    #[tokio::test]
    async fn a_process_that_exits_while_starting_fails_the_start_retryably() {
        let dir = tempfile::tempdir().unwrap();
        let (rt, statuses) = open(dir.path(), Duration::from_secs(1));
        let e = rt
            .start("crash", &shell("echo 'no config file' >&2; exit 3"))
            .await
            .unwrap_err();
        assert_eq!(e.reason, R::CrashLoop);
        assert!(e.retryable);
        assert!(e.message.contains("exit status: 3"), "{}", e.message);
        assert!(e.message.contains("\"no config file\""), "{}", e.message);
        let last = statuses.take_latest("crash").unwrap();
        assert_eq!(last.phase, P::Stopped as i32, "{last:?}");
        assert!(rt.procs.lock().await.is_empty());
        assert!(!dir.path().join("sessions/crash.json").exists());
        assert!(rt.inventory().await.unwrap().is_empty());
    }

    /// A start returns once the port answers, after the RUNNING status; one
    /// still starting when the wait ends is left PROVISIONING. The serving
    /// start has the default wait: it returns when the port answers, and a
    /// busy machine may take longer than a short wait to start Python.
    #[tokio::test]
    async fn a_start_waits_for_the_port_then_leaves_the_process_to_come_up() {
        let dir = tempfile::tempdir().unwrap();
        let (rt, statuses) = open(dir.path(), Duration::from_secs(1));
        rt.start(
            "serves",
            &shell("exec python3 -m http.server --bind 127.0.0.1 \"$PORT\""),
        )
        .await
        .unwrap();
        let s = statuses.take_latest("serves").unwrap();
        assert_eq!(s.phase, P::Running as i32, "{s:?}");
        rt.stop("serves", false).await.unwrap();
        drop(rt);
        let (rt, statuses) = open(dir.path(), Duration::from_secs(1));
        let rt = rt.with_start_wait(Duration::from_millis(300));
        rt.start("silent", &shell("exec sleep 60")).await.unwrap();
        let s = statuses.take_latest("silent").unwrap();
        assert_eq!(s.phase, P::Provisioning as i32, "{s:?}");
        rt.stop("silent", false).await.unwrap();
    }

    /// An agent killed after writing the intent but before spawning: nothing
    /// to adopt, and the record is dropped.
    #[tokio::test]
    async fn an_intent_without_a_process_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        intent(dir.path(), "s2", &uuid::Uuid::new_v4().to_string());
        let (rt, _rx) = open(dir.path(), Duration::from_secs(1));
        assert!(rt.inventory().await.unwrap().is_empty());
        assert!(!dir.path().join("sessions/s2.json").exists());
    }
}

#[cfg(test)]
mod hostile_tests;
