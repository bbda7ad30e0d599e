//! Real processes: the agent and control-plane binaries, killed with SIGKILL
//! and restarted by crash tests. Output goes to log files next to their data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::pki::{TRUST_DOMAIN, TestPki};
use crate::strip_ansi;

/// A free loopback port (bound and released).
/// Runs `c` with `stdin` written to its standard input (then closed) and
/// its output captured; panics if it cannot be started.
pub fn output_with_stdin(c: &mut Command, stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{:?} must run: {e}", c.get_program()));
    let mut input = child.stdin.take().unwrap();
    // A program that exits without reading (a refusal) closes the pipe:
    // what it printed is the answer, not the write error.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().unwrap()
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn log_file(dir: &Path, name: &str) -> (Stdio, Stdio) {
    std::fs::create_dir_all(dir).unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap();
    (Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
}

/// An agent process with the process runtime.
pub struct AgentProc {
    pub id: String,
    pub data_dir: PathBuf,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl AgentProc {
    /// An agent with the process runtime.
    pub fn spawn(pki: &TestPki, id: &str, agent_addr: SocketAddr, data_dir: &Path) -> Self {
        Self::spawn_with(pki, id, agent_addr, data_dir, &["--platform=process"], &[])
    }

    /// An agent with extra flags (e.g. `--platform=kubernetes`) and environment.
    pub fn spawn_with(
        pki: &TestPki,
        id: &str,
        agent_addr: SocketAddr,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let (cert, key) = pki.agent(id);
        let mut cmd = vec![
            crate::binary("streamspace-agent").display().to_string(),
            format!("--agent-id={id}"),
            format!("--control-plane-url=https://{agent_addr}"),
            "--region=test".into(),
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
            format!("--ca-cert={}", pki.ca_path().display()),
            "--tls-server-name=localhost".into(),
            format!("--data-dir={}", data_dir.display()),
            "--stop-grace-seconds=2".into(),
            "--backoff-base-ms=50".into(),
            "--backoff-max-ms=1000".into(),
        ];
        cmd.extend(extra.iter().map(|s| s.to_string()));
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut a = Self {
            id: id.into(),
            data_dir: data_dir.into(),
            cmd,
            env,
            child: None,
        };
        a.start();
        a
    }

    /// An agent written in another language (the SDK agents), configured
    /// the way every StreamSpace agent is: by the environment variables the
    /// Rust agent's flags read (`CONTROL_PLANE_URL`, `AGENT_ID`, ...).
    pub fn external(
        pki: &TestPki,
        program: &Path,
        id: &str,
        agent_addr: SocketAddr,
        data_dir: &Path,
    ) -> Self {
        let (cert, key) = pki.agent(id);
        let env = [
            ("CONTROL_PLANE_URL", format!("https://{agent_addr}")),
            ("AGENT_ID", id.to_string()),
            ("AGENT_TLS_CERT", cert.display().to_string()),
            ("AGENT_TLS_KEY", key.display().to_string()),
            ("AGENT_CA_CERT", pki.ca_path().display().to_string()),
            ("AGENT_TLS_SERVER_NAME", "localhost".into()),
            ("AGENT_DATA_DIR", data_dir.display().to_string()),
            ("PLATFORM", "process".into()),
            ("REGION", "test".into()),
            ("MAX_SESSIONS", "10".into()),
            ("STOP_GRACE_SECONDS", "2".into()),
            ("BACKOFF_BASE_MS", "50".into()),
            ("BACKOFF_MAX_MS", "1000".into()),
        ];
        std::fs::create_dir_all(data_dir).expect("agent data dir");
        let mut a = Self {
            id: id.into(),
            data_dir: data_dir.into(),
            cmd: vec![program.display().to_string()],
            env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            child: None,
        };
        a.start();
        a
    }

    pub fn start(&mut self) {
        let (out, err) = log_file(&self.data_dir, "agent.log");
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .env("RUST_LOG", "info")
            .envs(self.env.iter().cloned())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            print_tail(&format!("agent {}", self.id), &self.log(), 60);
        }
        // Session processes are in their own groups: stop what the test left,
        // including a process whose start was interrupted before its pid was
        // recorded (found by the tag the runtime puts in its environment).
        if let Ok(entries) = std::fs::read_dir(self.data_dir.join("sessions")) {
            for e in entries.flatten() {
                let Ok(t) = std::fs::read_to_string(e.path()) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                    continue;
                };
                let mut pids: Vec<i32> = v["pid"].as_i64().map(|p| p as i32).into_iter().collect();
                if let Some(tag) = v["spawn_tag"].as_str().filter(|t| !t.is_empty()) {
                    pids.extend(crate::processes_with_env(&format!(
                        "STREAMSPACE_SPAWN={tag}"
                    )));
                }
                for pid in pids.into_iter().filter(|p| *p > 0) {
                    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

/// Prints the last `n` lines of a process's log (shown with a failing test's
/// output), after the warnings and errors logged before them (at most `n`,
/// the latest): what went wrong is often well before the end.
pub fn print_tail(what: &str, log: &str, n: usize) {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(n);
    let plain: Vec<String> = lines[..from].iter().map(|l| strip_ansi(l)).collect();
    let earlier: Vec<&String> = plain
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    if !earlier.is_empty() {
        let skip = earlier.len().saturating_sub(n);
        eprintln!(
            "----- {} warnings and errors of the {what} log before its last lines -----",
            earlier.len() - skip
        );
        for l in &earlier[skip..] {
            eprintln!("{l}");
        }
    }
    eprintln!(
        "----- last {} lines of the {what} log -----",
        lines.len() - from
    );
    for l in &lines[from..] {
        eprintln!("{l}");
    }
    eprintln!("----- end of the {what} log -----");
}

/// A control-plane process (`serve`), restartable on the same database.
pub struct CpProc {
    pub api_addr: SocketAddr,
    pub agent_addr: SocketAddr,
    pub dir: PathBuf,
    cmd: Vec<String>,
    child: Option<Child>,
}

impl CpProc {
    pub fn spawn(pki: &TestPki, database_url: &str, dir: &Path, heartbeat_ms: u64) -> Self {
        Self::spawn_with(pki, database_url, dir, heartbeat_ms, &[])
    }

    /// With extra flags, e.g. `--kubernetes=true --kubeconfig=...`.
    pub fn spawn_with(
        pki: &TestPki,
        database_url: &str,
        dir: &Path,
        heartbeat_ms: u64,
        extra: &[&str],
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let tokens = dir.join("tokens.csv");
        std::fs::write(&tokens, crate::tokens_csv()).unwrap();
        let (api_addr, agent_addr) = (free_addr(), free_addr());
        let cmd = vec![
            crate::binary("streamspace-control-plane")
                .display()
                .to_string(),
            "serve".into(),
            format!("--api-addr={api_addr}"),
            format!("--agent-addr={agent_addr}"),
            format!("--database-url={database_url}"),
            format!("--tls-cert={}", pki.dir.path().join("server.crt").display()),
            format!("--tls-key={}", pki.dir.path().join("server.key").display()),
            format!("--agent-ca={}", pki.ca_path().display()),
            format!("--tokens-file={}", tokens.display()),
            format!("--trust-domain={TRUST_DOMAIN}"),
            format!("--heartbeat-interval-ms={heartbeat_ms}"),
        ];
        let mut cmd = cmd;
        // Tests drive the API as one or two callers far above a person's rate:
        // no per-caller limits unless the test sets them.
        for (flag, off) in [
            ("--api-rate", "--api-rate=0"),
            ("--max-watches", "--max-watches=0"),
        ] {
            if !extra.iter().any(|a| a.starts_with(flag)) {
                cmd.push(off.into());
            }
        }
        cmd.extend(extra.iter().map(|s| s.to_string()));
        let mut cp = Self {
            api_addr,
            agent_addr,
            dir: dir.into(),
            cmd,
            child: None,
        };
        cp.start();
        cp
    }

    pub fn start(&mut self) {
        let (out, err) = log_file(&self.dir, "control-plane.log");
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .env("RUST_LOG", "info")
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn control plane");
        self.child = Some(child);
    }

    /// Waits until the API port accepts connections.
    pub async fn ready(&self) {
        let addr = self.api_addr;
        crate::wait_for("control plane to listen", 30, || async move {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// SIGTERM: the control plane shuts down in order. Returns at once; the
    /// process is reaped by [`CpProc::wait`] or on drop.
    pub fn sigterm(&self) {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
    }

    /// Waits for the process to exit; its status.
    pub fn wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.take().and_then(|mut c| c.wait().ok())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("control-plane.log")).unwrap_or_default()
    }
}

impl Drop for CpProc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            print_tail("control-plane", &self.log(), 60);
        }
    }
}
