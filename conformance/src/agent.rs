//! The agent under test: a shell command line run with `sh -c` in a process
//! group of its own, configured through the environment every StreamSpace
//! agent reads (see [`ENV_DOC`]). Its output goes to a log file whose tail
//! accompanies a failure. Killing it kills its whole group with SIGKILL;
//! session processes the agent started in sessions of their own survive it,
//! as they would a crash.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::{Error, Result};

/// What the kit sets for the agent under test (shown by `--help`).
pub const ENV_DOC: &str = "\
Environment of the agent under test (set by the kit for every case):
  CONTROL_PLANE_URL      https://127.0.0.1:<port> (the kit's mTLS listener)
  AGENT_ID               the agent id under test (--agent-id)
  AGENT_TLS_CERT/KEY     client certificate (SAN URI spiffe://conformance.streamspace/agent/<id>) and key
  AGENT_CA_CERT          CA of the kit's server certificate (valid for 127.0.0.1 and localhost)
  AGENT_TLS_SERVER_NAME  localhost
  AGENT_DATA_DIR         a fresh directory per case (kept across the restart in inventory-after-restart)
  PLATFORM               process
  REGION                 conformance
  MAX_SESSIONS           4
  SESSION_PORTS          a 100-port range inside 20000-29999, chosen per run
  BACKOFF_BASE_MS        50 (100 in reconnect-backoff, 250 in refusal-not-retried-tightly)
  BACKOFF_MAX_MS         1000 (30000 in refusal-not-retried-tightly)
  STOP_GRACE_SECONDS     2
  LOG_FORMAT             text
  NO_COLOR               1
The agent's stdout and stderr go to <case dir>/agent.log; the last lines are shown on failure.";

/// How to start the agent under test for one case.
#[derive(Clone)]
pub struct Launch {
    pub command: String,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl Launch {
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value,
            None => self.env.push((key.to_string(), value)),
        }
    }
}

/// A running agent under test.
pub struct AgentProc {
    child: tokio::process::Child,
    pgid: i32,
}

impl AgentProc {
    pub fn spawn(l: &Launch) -> Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&l.log)
            .map_err(|e| Error::io("opening", &l.log, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("opening", &l.log, e))?;
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&l.command)
            .envs(l.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io("starting the agent with", "sh -c", e))?;
        let pgid = child.id().map(|p| p as i32).unwrap_or(0);
        Ok(Self { child, pgid })
    }

    /// SIGKILL to the agent's whole process group, then reaps it.
    pub async fn kill9(&mut self) {
        self.signal_group();
        let _ = self.child.wait().await;
    }

    fn signal_group(&self) {
        if self.pgid > 0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Whether the agent has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.signal_group();
    }
}

/// The last `n` lines of the agent's log.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
