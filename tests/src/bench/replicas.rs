//! `--scenario replicas`: the throughput load (create, wait until RUNNING,
//! delete, wait until gone) on PostgreSQL, first against one control-plane
//! replica, then against `--replicas N` replicas sharing a fresh database of
//! the same server, in the same run. With N replicas the simulated agents
//! are spread evenly over them and each API client talks to one replica
//! (round robin), so most commands are accepted by a replica that does not
//! hold the agent: the figures include the hop through PostgreSQL's
//! NOTIFY. The one watch runs on the first replica and sees every change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Sizes;
use super::api::{Api, Watcher};
use super::children::{AgentsChild, CpChild, Lab};
use super::measure::{Latencies, fmt_dur, fmt_int, fmt_rate};
use super::report::Report;
use super::throughput::load;

const S: &str = "7 replicas";

/// One configuration's figures.
#[derive(Debug, Clone)]
pub struct ReplicasRun {
    pub replicas: usize,
    pub commands_per_sec: f64,
    pub p99: Duration,
}

/// Runs 1 and then `n` replicas on fresh databases made by `fresh` (one per
/// configuration).
pub async fn run<F, Fut>(
    lab: &Lab,
    z: &Sizes,
    report: &mut Report,
    n: usize,
    fresh: F,
) -> anyhow::Result<Vec<ReplicasRun>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let mut runs = vec![];
    for count in [1, n.max(1)] {
        let db = fresh().await.map_err(anyhow::Error::msg)?;
        runs.push(one(lab, z, report, count, &db).await?);
    }
    Ok(runs)
}

async fn one(
    lab: &Lab,
    z: &Sizes,
    report: &mut Report,
    count: usize,
    db: &str,
) -> anyhow::Result<ReplicasRun> {
    let mut cps = vec![];
    for r in 0..count {
        let name = format!("cp-replicas{count}-{r}");
        let extra = vec![format!("--replica-id={name}")];
        cps.push(CpChild::start_with(lab, &name, db, &extra).await?);
    }
    let mut apis = vec![];
    for cp in &cps {
        apis.push(Api::connect(lab, cp.api_addr, 8).await?);
    }
    apis[0].put_template().await?;
    let per = (z.throughput_agents / count as u64).max(1);
    let mut agents = vec![];
    for (r, cp) in cps.iter().enumerate() {
        agents.push(
            AgentsChild::start(lab, &format!("rp{count}-{r}"), cp.agent_addr, per, 1000).await?,
        );
    }
    for a in &mut agents {
        a.wait_attached(Duration::from_secs(60 + per / 100)).await?;
    }
    // Every replica must know the others' agents before placing on them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let watch = Watcher::start(&apis[0]).await?;
    let t0 = Instant::now();
    let (mut lat, commands, refused): (Latencies, u64, u64) = load(
        &apis,
        &watch,
        z.concurrency,
        z.throughput_time,
        Arc::default(),
    )
    .await?;
    let elapsed = t0.elapsed();
    // Exactly once across the replicas: the agents applied what was accepted.
    let deadline = Instant::now() + Duration::from_secs(30);
    let applied = loop {
        let mut applied = 0;
        for a in &mut agents {
            applied += a.counts().await?.applied;
        }
        if applied >= commands || Instant::now() > deadline {
            break applied;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    anyhow::ensure!(
        applied == commands,
        "{count} replicas: {commands} commands accepted and completed, {applied} applied by the agents"
    );
    let rate = commands as f64 / elapsed.as_secs_f64();
    let label = format!(
        "{count} replica(s), {} agents, {} clients, PostgreSQL",
        fmt_int(per * count as u64),
        z.concurrency
    );
    report.add(
        S,
        &format!("{label}: durable commands completed"),
        format!(
            "{} ({} in {:.1} s, {refused} refused as overloaded)",
            fmt_rate(rate),
            fmt_int(commands),
            elapsed.as_secs_f64()
        ),
    );
    report.add(
        S,
        &format!("{label}: accepted->succeeded p50 / p99"),
        format!("{} / {}", fmt_dur(lat.pct(50.0)), fmt_dur(lat.pct(99.0))),
    );
    for a in agents {
        a.stop().await?;
    }
    drop(cps);
    Ok(ReplicasRun {
        replicas: count,
        commands_per_sec: rate,
        p99: lat.pct(99.0),
    })
}
