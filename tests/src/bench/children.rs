//! The processes a benchmark run starts, each measured on its own: the real
//! `streamspace-control-plane serve` binary, the simulated agents
//! (`streamspace-bench agents`), the echo server (`streamspace-bench
//! echo-server`) and the real `streamspace-agent`. Binaries are found next to
//! this one (build with `cargo build --release --workspace --bins`). A `Lab`
//! is the run's temporary directory with its PKI and admin token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use streamspace_tests::TestPki;
use streamspace_tests::pki::TRUST_DOMAIN;

/// A binary built next to this one.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating streamspace-bench")?;
    let p = me
        .parent()
        .context("streamspace-bench has no directory")?
        .join(name);
    if !p.exists() {
        bail!(
            "{} is missing: build every binary first with `cargo build --release --workspace --bins`",
            p.display()
        );
    }
    Ok(p)
}

/// A loopback address free right now (bound and released).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_listening(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The run's scratch space: logs, databases, PKI, tokens.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    pub admin_token: String,
    pub tokens_file: PathBuf,
}

impl Lab {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("streamspace-bench-")
            .tempdir()?;
        let pki = TestPki::new();
        let admin_token = format!("bench-admin-{}", uuid::Uuid::new_v4().simple());
        let tokens_file = dir.path().join("tokens.csv");
        std::fs::write(&tokens_file, format!("{admin_token},admin,admin\n"))?;
        Ok(Self {
            dir,
            pki,
            admin_token,
            tokens_file,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pki_dir(&self) -> &Path {
        self.pki.dir.path()
    }
}

fn log_to(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((Stdio::from(f.try_clone()?), Stdio::from(f)))
}

fn kill9(child: &mut Option<Child>) -> Option<Child> {
    let mut c = child.take()?;
    let _ = c.start_kill();
    Some(c)
}

/// `streamspace-control-plane serve`, restartable on the same addresses and database.
pub struct CpChild {
    pub api_addr: SocketAddr,
    pub agent_addr: SocketAddr,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl CpChild {
    /// Starts it and waits until both listeners accept connections.
    pub async fn start(lab: &Lab, name: &str, database_url: &str) -> anyhow::Result<Self> {
        Self::start_with(lab, name, database_url, &[]).await
    }

    /// [`CpChild::start`] with more flags for `serve`.
    pub async fn start_with(
        lab: &Lab,
        name: &str,
        database_url: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let (api_addr, agent_addr) = (free_addr()?, free_addr()?);
        let pki = lab.pki_dir();
        let args = vec![
            "serve".to_string(),
            format!("--api-addr={api_addr}"),
            format!("--agent-addr={agent_addr}"),
            format!("--database-url={database_url}"),
            format!("--tls-cert={}", pki.join("server.crt").display()),
            format!("--tls-key={}", pki.join("server.key").display()),
            format!("--agent-ca={}", pki.join("ca.crt").display()),
            format!("--tokens-file={}", lab.tokens_file.display()),
            format!("--trust-domain={TRUST_DOMAIN}"),
            // The load generator is one caller: the per-caller API limits would measure themselves.
            "--api-rate=0".to_string(),
            "--max-watches=0".to_string(),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect();
        let mut cp = Self {
            api_addr,
            agent_addr,
            log: lab.path(&format!("{name}.log")),
            args,
            child: None,
        };
        cp.restart().await?;
        Ok(cp)
    }

    /// (Re)starts the process and waits until it listens.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let (out, err) = log_to(&self.log)?;
        let child = Command::new(sibling("streamspace-control-plane")?)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .context("starting streamspace-control-plane")?;
        self.child = Some(child);
        let within = Duration::from_secs(60);
        wait_listening(self.api_addr, within).await?;
        wait_listening(self.agent_addr, within).await?;
        Ok(())
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .context("the control plane is not running")
    }

    /// SIGKILL, no chance to clean up.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = kill9(&mut self.child) {
            let _ = c.wait().await;
        }
    }
}

/// Counters the simulated-agents process reports (see `agents.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentCounts {
    /// Agents whose stream reached Welcome at least once.
    pub attached: u64,
    /// Agents that reached Welcome again since the last `mark`.
    pub since_mark: u64,
    /// Commands applied (first deliveries), summed over agents.
    pub applied: u64,
    /// Deliveries recognised as duplicates, summed over agents.
    pub duplicates: u64,
}

/// The simulated agents: `streamspace-bench agents`, driven over stdin/stdout.
pub struct AgentsChild {
    pub count: u64,
    child: Option<Child>,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl AgentsChild {
    /// Starts `count` agents against `agent_addr`, `ramp` new agents per second.
    pub async fn start(
        lab: &Lab,
        name: &str,
        agent_addr: SocketAddr,
        count: u64,
        ramp: u64,
    ) -> anyhow::Result<Self> {
        let (_, err) = log_to(&lab.path(&format!("{name}.log")))?;
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "agents".to_string(),
                format!("--count={count}"),
                format!("--url=https://{agent_addr}"),
                format!("--pki-dir={}", lab.pki_dir().display()),
                format!("--trust-domain={TRUST_DOMAIN}"),
                format!("--id-prefix={name}"),
                format!("--ramp-per-second={ramp}"),
            ])
            .env(
                "RUST_LOG",
                std::env::var("BENCH_AGENTS_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .context("starting the simulated agents")?;
        let stdin = child.stdin.take().context("agents stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("agents stdout")?).lines();
        Ok(Self {
            count,
            child: Some(child),
            stdin,
            stdout,
        })
    }

    async fn ask(&mut self, what: &str) -> anyhow::Result<AgentCounts> {
        self.stdin.write_all(format!("{what}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let line = self
            .stdout
            .next_line()
            .await?
            .context("the simulated agents exited (see agents log)")?;
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("agents answered {line:?}, expected JSON"))?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok(AgentCounts {
            attached: n("attached"),
            since_mark: n("since_mark"),
            applied: n("applied"),
            duplicates: n("duplicates"),
        })
    }

    pub async fn counts(&mut self) -> anyhow::Result<AgentCounts> {
        self.ask("stats").await
    }

    /// Remembers every agent's attach count; `since_mark` counts from here.
    pub async fn mark(&mut self) -> anyhow::Result<AgentCounts> {
        self.ask("mark").await
    }

    /// Waits until `f(counts)` holds; returns the counts and when it first held.
    pub async fn wait_until(
        &mut self,
        what: &str,
        within: Duration,
        f: impl Fn(&AgentCounts) -> bool,
    ) -> anyhow::Result<(AgentCounts, Instant)> {
        let deadline = Instant::now() + within;
        loop {
            let c = self.counts().await?;
            if f(&c) {
                return Ok((c, Instant::now()));
            }
            if Instant::now() > deadline {
                bail!("timed out after {within:?} waiting for {what}; agents report {c:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_attached(&mut self, within: Duration) -> anyhow::Result<AgentCounts> {
        let n = self.count;
        let what = format!("{n} agents to attach");
        Ok(self.wait_until(&what, within, |c| c.attached >= n).await?.0)
    }

    /// Asks the agents to stop and waits for the process.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stdin.write_all(b"quit\n").await;
        if let Some(mut c) = self.child.take()
            && tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
        {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        Ok(())
    }
}

/// `streamspace-bench echo-server`, the baseline's server, in its own process.
pub struct EchoChild {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl EchoChild {
    pub async fn start(lab: &Lab) -> anyhow::Result<Self> {
        let addr = free_addr()?;
        let (out, err) = log_to(&lab.path("echo-server.log"))?;
        let child = Command::new(std::env::current_exe()?)
            .args([
                "echo-server".to_string(),
                format!("--addr={addr}"),
                format!("--pki-dir={}", lab.pki_dir().display()),
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .context("starting the echo server")?;
        wait_listening(addr, Duration::from_secs(30)).await?;
        Ok(Self {
            addr,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .context("the echo server is not running")
    }

    pub async fn stop(mut self) {
        if let Some(mut c) = kill9(&mut self.child) {
            let _ = c.wait().await;
        }
    }
}

/// The real `streamspace-agent` with the process runtime, restartable.
pub struct AgentBinary {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl AgentBinary {
    pub fn start(lab: &Lab, id: &str, agent_addr: SocketAddr) -> anyhow::Result<Self> {
        let (cert, key) = lab.pki.agent(id);
        let data_dir = lab.path(&format!("{id}-data"));
        let args = vec![
            format!("--agent-id={id}"),
            format!("--control-plane-url=https://{agent_addr}"),
            "--platform=process".into(),
            "--region=bench".into(),
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
            format!("--ca-cert={}", lab.pki.ca_path().display()),
            "--tls-server-name=localhost".into(),
            format!("--data-dir={}", data_dir.display()),
            "--stop-grace-seconds=2".into(),
        ];
        let mut a = Self {
            args,
            log: lab.path(&format!("{id}.log")),
            child: None,
        };
        a.restart()?;
        Ok(a)
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        let (out, err) = log_to(&self.log)?;
        self.child = Some(
            Command::new(sibling("streamspace-agent")?)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .kill_on_drop(true)
                .spawn()
                .context("starting streamspace-agent")?,
        );
        Ok(())
    }

    pub async fn kill9(&mut self) {
        if let Some(mut c) = kill9(&mut self.child) {
            let _ = c.wait().await;
        }
    }
}
