//! Scenario 3, throughput: many simulated agents on SQLite; `concurrency`
//! API clients each loop "create a session, wait until RUNNING, delete it,
//! wait until it is gone" as fast as the API takes them for the window.
//! Every create and every delete is one durable command (start, stop); the
//! rate is commands completed per second. Control-plane CPU and memory are
//! sampled over the window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Sizes;
use super::api::{Api, Op, Watcher, command};
use super::children::{AgentsChild, CpChild, Lab};
use super::measure::{Latencies, cpu_percent, fmt_dur, fmt_int, fmt_rate, sample};
use super::report::Report;
use super::verify;

const S: &str = "3 throughput";

#[derive(Debug, Clone, Default)]
pub struct ThroughputResult {
    pub agents: u64,
    pub commands_per_sec: f64,
}

struct Worker {
    lat: Latencies,
    commands: u64,
    refused: u64,
}

/// The load: `concurrency` clients (client `w` on `apis[w % len]`) loop "create, wait until RUNNING, delete,
/// wait until gone" for `window`. Returns the latencies, the commands
/// completed and the refusals; `done` counts completed commands as they
/// happen (for sampling during the window).
pub async fn load(
    apis: &[Api],
    watch: &Watcher,
    concurrency: u64,
    window: Duration,
    done: Arc<AtomicU64>,
) -> anyhow::Result<(Latencies, u64, u64)> {
    let within = Duration::from_secs(120);
    let deadline = Instant::now() + window;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let api = &apis[w as usize % apis.len()];
            let (mut sessions, watch, done) = (api.sessions(), watch.clone(), done.clone());
            tokio::spawn(async move {
                let mut me = Worker {
                    lat: Latencies::default(),
                    commands: 0,
                    refused: 0,
                };
                let mut i = 0;
                while Instant::now() < deadline {
                    let name = format!("tp-{w}-{i}");
                    i += 1;
                    for (op, generation) in [(Op::Create, 1), (Op::Delete, 2)] {
                        loop {
                            match command(&mut sessions, &watch, op, &name, generation, within)
                                .await?
                            {
                                Some(t) => {
                                    me.lat.push(t.total);
                                    me.commands += 1;
                                    done.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                None => {
                                    me.refused += 1;
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            }
                        }
                    }
                }
                anyhow::Ok(me)
            })
        })
        .collect();
    let (mut lat, mut commands, mut refused) = (Latencies::default(), 0, 0);
    for w in workers {
        let me = w.await??;
        lat.extend(me.lat);
        commands += me.commands;
        refused += me.refused;
    }
    Ok((lat, commands, refused))
}

pub async fn run(lab: &Lab, z: &Sizes, report: &mut Report) -> anyhow::Result<ThroughputResult> {
    let db = format!("sqlite://{}", lab.path("throughput.db").display());
    let cp = CpChild::start(lab, "cp-throughput", &db).await?;
    let pid = cp.pid()?;
    let api = Api::connect(lab, cp.api_addr, 8).await?;
    api.put_template().await?;
    let n = z.throughput_agents;
    let mut agents = AgentsChild::start(lab, "tp", cp.agent_addr, n, 1000).await?;
    agents
        .wait_attached(Duration::from_secs(60 + n / 100))
        .await?;
    let watch = Watcher::start(&api).await?;

    let s0 = sample(pid)?;
    let t0 = Instant::now();
    let (mut lat, commands, refused) = load(
        std::slice::from_ref(&api),
        &watch,
        z.concurrency,
        z.throughput_time,
        Arc::default(),
    )
    .await?;
    let elapsed = t0.elapsed();
    let s1 = sample(pid)?;
    let redelivered = verify::commands(&mut agents, &api, commands, 0).await?;

    let rate = commands as f64 / elapsed.as_secs_f64();
    let label = format!("{} agents, {} clients", fmt_int(n), z.concurrency);
    report.add(
        S,
        &format!("{label}: durable commands completed (SQLite)"),
        format!(
            "{} ({} in {:.1} s)",
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
    report.add(
        S,
        &format!("{label}: control-plane CPU / RSS at end / peak RSS"),
        format!(
            "{:.0}% of a core / {} KiB / {} KiB",
            cpu_percent(&s0, &s1),
            fmt_int(s1.rss_kib),
            fmt_int(s1.peak_rss_kib)
        ),
    );
    report.add(
        S,
        &format!("{label}: refused as overloaded / re-deliveries / watch resyncs"),
        format!(
            "{refused} / {redelivered} / {}",
            watch.resyncs.load(std::sync::atomic::Ordering::Relaxed)
        ),
    );
    agents.stop().await?;
    drop(cp);
    Ok(ThroughputResult {
        agents: n,
        commands_per_sec: rate,
    })
}
