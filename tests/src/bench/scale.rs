//! Scenario 4, connection scale: N simulated agents attached and sending
//! heartbeats every 10 s (the default interval). Control-plane memory per
//! agent (RSS growth from an idle control plane, divided by N) and CPU over a
//! steady-state window; then the control plane is killed with SIGKILL and
//! restarted on the same database and addresses, and the time until every
//! agent has attached again is measured (counted by the agents, which see
//! Welcome, and confirmed by AgentAdminService.ListAgents).

use std::time::{Duration, Instant};

use anyhow::bail;

use super::Sizes;
use super::api::Api;
use super::children::{AgentsChild, CpChild, Lab};
use super::measure::{cpu_percent, fmt_int, sample};
use super::report::Report;

const S: &str = "4 scale";

#[derive(Debug, Clone, Default)]
pub struct ScaleResult {
    pub agents: u64,
    pub kib_per_agent: f64,
    pub steady_cpu: f64,
    /// Kill -> every agent attached again.
    pub reattach: Option<Duration>,
}

/// How many agents the control plane lists as connected: polls until it is
/// `n` or `within` passes, and returns the last count. Fewer than `n` is a
/// finding (streams closed for missed heartbeats), not an error.
async fn cp_connected(api: &Api, n: u64, within: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + within;
    loop {
        let connected = api.agents_connected().await?.0 as u64;
        if connected >= n || Instant::now() > deadline {
            return Ok(connected);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn run(lab: &Lab, z: &Sizes, report: &mut Report) -> anyhow::Result<ScaleResult> {
    let db = format!("sqlite://{}", lab.path("scale.db").display());
    let mut cp = CpChild::start(lab, "cp-scale", &db).await?;
    let api = Api::connect(lab, cp.api_addr, 1).await?;
    api.put_template().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = sample(cp.pid()?)?;

    let n = z.scale_agents;
    let ramp = 500;
    let t0 = Instant::now();
    let mut agents = AgentsChild::start(lab, "scale", cp.agent_addr, n, ramp).await?;
    agents
        .wait_attached(Duration::from_secs(120 + n / ramp * 2))
        .await?;
    report.add(
        S,
        &format!("{} agents attached (started {ramp}/s)", fmt_int(n)),
        format!("{:.1} s", t0.elapsed().as_secs_f64()),
    );
    let listed = cp_connected(&api, n, Duration::from_secs(60)).await?;
    report.add(
        S,
        "agents the control plane lists as connected, settled",
        format!("{} of {}", fmt_int(listed), fmt_int(n)),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let loaded = sample(cp.pid()?)?;
    let kib_per_agent = loaded.rss_kib.saturating_sub(idle.rss_kib) as f64 / n as f64;
    report.add(
        S,
        &format!("control-plane RSS per agent ({} agents)", fmt_int(n)),
        format!(
            "{kib_per_agent:.1} KiB ({} -> {} KiB)",
            fmt_int(idle.rss_kib),
            fmt_int(loaded.rss_kib)
        ),
    );

    let s0 = sample(cp.pid()?)?;
    tokio::time::sleep(z.steady_window).await;
    let s1 = sample(cp.pid()?)?;
    let steady_cpu = cpu_percent(&s0, &s1);
    report.add(
        S,
        &format!(
            "control-plane CPU, steady state ({} s window)",
            z.steady_window.as_secs()
        ),
        format!("{steady_cpu:.2}% of a core"),
    );

    // Kill -9, restart, and count re-attaches.
    agents.mark().await?;
    let killed = Instant::now();
    cp.kill9().await;
    cp.restart().await?;
    let listening = killed.elapsed();
    let within = Duration::from_secs(180);
    let reattach = match agents
        .wait_until("every agent to attach again", within, |c| c.since_mark >= n)
        .await
    {
        Ok((_, at)) => Some(at - killed),
        Err(e) => {
            eprintln!("[bench] {e}");
            None
        }
    };
    let api = Api::connect(lab, cp.api_addr, 1).await?;
    report.add(
        S,
        &format!(
            "kill -9 + restart: listening again / all {} agents attached again",
            fmt_int(n)
        ),
        format!(
            "{:.2} s / {}",
            listening.as_secs_f64(),
            reattach
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| format!("not within {} s", within.as_secs()))
        ),
    );
    let listed = cp_connected(&api, n, Duration::from_secs(30)).await?;
    report.add(
        S,
        "agents the control plane lists as connected after the restart",
        format!("{} of {}", fmt_int(listed), fmt_int(n)),
    );
    let c = agents.counts().await?;
    if c.applied > 0 {
        bail!(
            "DUPLICATED or stray commands: no session exists, yet agents applied {}",
            c.applied
        );
    }
    agents.stop().await?;
    drop(cp);
    Ok(ScaleResult {
        agents: n,
        kib_per_agent,
        steady_cpu,
        reattach,
    })
}
