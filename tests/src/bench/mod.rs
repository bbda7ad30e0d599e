//! `streamspace-bench`: runs the real control plane and simulated agents over
//! real mTLS on loopback, each in its own process, and prints what they cost
//! next to a bare tonic echo baseline measured in the same run.
//! docs/BENCHMARKS.md explains every figure and holds a recorded run.
//!
//! Subcommands: `run` (the benchmark), and two it starts as child processes:
//! `agents` (simulated agents) and `echo-server` (the baseline's server).

mod agents;
mod api;
mod baseline;
mod children;
mod echo;
mod failover;
mod latency;
mod measure;
mod overhead;
mod replicas;
mod report;
mod retention;
mod scale;
mod throughput;
mod verify;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use self::latency::Store;
use self::measure::fmt_dur;
use self::report::{Report, Target};

#[derive(Debug, Parser)]
#[command(
    name = "streamspace-bench",
    version,
    about = "Benchmarks the StreamSpace control plane against a bare tonic baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the benchmark and print the results table.
    Run(RunArgs),
    /// (internal) N simulated agents, driven over stdin/stdout.
    Agents(agents::AgentsArgs),
    /// (internal) the baseline's echo server.
    EchoServer(echo::EchoServerArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    Baseline,
    Latency,
    Throughput,
    Scale,
    Failover,
    /// Not part of `all` (it runs two 10-minute windows): the commands
    /// table and the database file with and without `--retention 1m`.
    Retention,
    /// Not part of `all` (six windows and a Jaeger): throughput and p99 with
    /// metrics and with tracing on, against neither.
    Overhead,
    /// Not part of `all` (PostgreSQL, two windows): the throughput load
    /// against one replica and against `--replicas N`.
    Replicas,
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Which scenario; the baseline always runs (targets are ratios to it).
    #[arg(long, env = "BENCH_SCENARIO", value_enum, default_value = "all")]
    scenario: Scenario,
    /// Smaller sizes for a fast smoke run (fewer agents, shorter windows).
    #[arg(long, env = "BENCH_QUICK")]
    quick: bool,
    /// PostgreSQL server for the latency scenario (`scripts/postgres.sh start`);
    /// a fresh database is created on it per run.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:55432/postgres"
    )]
    postgres_url: String,
    /// Fail instead of reporting PostgreSQL as not measured when it is unreachable.
    #[arg(long, env = "BENCH_REQUIRE_POSTGRES")]
    require_postgres: bool,
    /// Keep the temporary directory (logs of every process) after the run.
    #[arg(long, env = "BENCH_KEEP")]
    keep: bool,
    /// Commands timed per store in the latency scenario.
    #[arg(long, env = "BENCH_LATENCY_SAMPLES")]
    latency_samples: Option<u64>,
    /// Agents in the throughput scenario.
    #[arg(long, env = "BENCH_THROUGHPUT_AGENTS")]
    throughput_agents: Option<u64>,
    /// Seconds of load in the throughput scenario.
    #[arg(long, env = "BENCH_THROUGHPUT_SECONDS")]
    throughput_seconds: Option<u64>,
    /// Concurrent API clients in the throughput scenario.
    #[arg(long, env = "BENCH_CONCURRENCY")]
    concurrency: Option<u64>,
    /// Agents in the scale scenario (and idle connections in the baseline).
    #[arg(long, env = "BENCH_SCALE_AGENTS")]
    scale_agents: Option<u64>,
    /// Seconds of the steady-state CPU window (baseline and scale).
    #[arg(long, env = "BENCH_STEADY_SECONDS")]
    steady_seconds: Option<u64>,
    /// Sessions in the failover scenario.
    #[arg(long, env = "BENCH_FAILOVER_SESSIONS")]
    failover_sessions: Option<u64>,
    /// Seconds of each of the retention scenario's two windows.
    #[arg(long, env = "BENCH_RETENTION_SECONDS")]
    retention_seconds: Option<u64>,
    /// Seconds of each of the overhead scenario's six windows.
    #[arg(long, env = "BENCH_OVERHEAD_SECONDS")]
    overhead_seconds: Option<u64>,
    /// Control-plane replicas compared with one in the replicas scenario
    /// (PostgreSQL; `--scenario replicas`).
    #[arg(long, env = "BENCH_REPLICAS", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(2..=16))]
    replicas: u64,
}

/// How big each scenario is.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub rtt_samples: u64,
    pub pipelined_frames: u64,
    pub handshake_time: Duration,
    /// Idle connections in the baseline: as many as agents in the scale scenario.
    pub conns: u64,
    pub steady_window: Duration,
    pub many_time: Duration,
    pub latency_samples: u64,
    pub throughput_agents: u64,
    pub throughput_time: Duration,
    pub concurrency: u64,
    pub scale_agents: u64,
    pub failover_sessions: u64,
    pub retention_time: Duration,
    pub overhead_time: Duration,
}

impl Sizes {
    fn from(a: &RunArgs) -> Self {
        let q = |full: u64, quick: u64| if a.quick { quick } else { full };
        let scale_agents = a.scale_agents.unwrap_or(q(10_000, 1_000));
        Self {
            rtt_samples: q(20_000, 2_000),
            pipelined_frames: q(200_000, 20_000),
            handshake_time: Duration::from_secs(q(5, 2)),
            conns: scale_agents,
            steady_window: Duration::from_secs(a.steady_seconds.unwrap_or(q(30, 10))),
            many_time: Duration::from_secs(q(10, 3)),
            latency_samples: a.latency_samples.unwrap_or(q(3_000, 300)),
            throughput_agents: a.throughput_agents.unwrap_or(q(1_000, 100)),
            throughput_time: Duration::from_secs(a.throughput_seconds.unwrap_or(q(30, 5))),
            concurrency: a.concurrency.unwrap_or(q(256, 64)),
            scale_agents,
            failover_sessions: a.failover_sessions.unwrap_or(q(100, 20)),
            retention_time: Duration::from_secs(a.retention_seconds.unwrap_or(q(600, 60))),
            overhead_time: Duration::from_secs(a.overhead_seconds.unwrap_or(q(60, 10))),
        }
    }
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    streamspace_runtime_util::init_logging("text");
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Cmd::Run(a) => rt.block_on(run(a)),
        Cmd::Agents(a) => rt.block_on(agents::run(a)),
        Cmd::EchoServer(a) => rt.block_on(echo::serve(a)),
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / (1 << 20) as f64)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {mem}, Linux {}", kernel.trim())
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let nofile = measure::raise_nofile_limit()?;
    let z = Sizes::from(&a);
    let want = |s: Scenario| a.scenario == Scenario::All || a.scenario == s;
    if cfg!(debug_assertions) {
        eprintln!(
            "[bench] WARNING: a debug build; figures mean little. Use cargo build --release --workspace --bins."
        );
    }
    let need = z.conns.max(z.scale_agents) + 256;
    anyhow::ensure!(
        need <= nofile,
        "{} connections need about {need} open files per process; the hard limit is {nofile} (ulimit -Hn)",
        z.conns
    );
    let lab = children::Lab::new()?;
    eprintln!(
        "[bench] {}; scratch directory {}",
        machine(),
        lab.dir.path().display()
    );
    let mut report = Report::default();
    let mut failures: Vec<String> = vec![];
    let mut fail = |what: &str, e: anyhow::Error| {
        eprintln!("[bench] {what} FAILED: {e:#}");
        failures.push(format!("{what}: {e:#}"));
    };

    let base = baseline::run(&lab, &z, &mut report).await?;
    let rtt_bound = base.rtt_p99 * 20;

    if want(Scenario::Latency) {
        let r = latency::run(&lab, &z, &mut report, &Store::Sqlite).await;
        match r {
            Ok(r) => report.target(Target {
                name: "accepted->succeeded p99, 1 agent, SQLite <= 20x baseline p99 RTT".into(),
                measured: fmt_dur(r.p99),
                bound: fmt_dur(rtt_bound),
                ratio: Some(r.p99.as_secs_f64() / base.rtt_p99.as_secs_f64()),
                pass: Some(r.p99 <= rtt_bound),
                note: String::new(),
            }),
            Err(e) => fail("latency (SQLite)", e),
        }
        match latency::fresh_postgres(&a.postgres_url).await {
            Ok(url) => {
                if let Err(e) = latency::run(&lab, &z, &mut report, &Store::Postgres(url)).await {
                    fail("latency (PostgreSQL)", e);
                }
            }
            Err(why) if a.require_postgres => fail("latency (PostgreSQL)", anyhow::anyhow!(why)),
            Err(why) => {
                eprintln!("[bench] PostgreSQL not measured: {why}");
                report.add("2 latency", "PostgreSQL", format!("not measured: {why}"));
            }
        }
    }

    if want(Scenario::Throughput) {
        match throughput::run(&lab, &z, &mut report).await {
            Ok(r) => report.target(Target {
                name: format!(
                    ">= 10,000 durable commands/s, {} agents, SQLite",
                    measure::fmt_int(r.agents)
                ),
                measured: measure::fmt_rate(r.commands_per_sec),
                bound: "10,000/s".into(),
                ratio: Some(r.commands_per_sec / base.many_round_trips),
                pass: Some(r.commands_per_sec >= 10_000.0),
                note: "ratio: to baseline 1,000-conn round trips/s".into(),
            }),
            Err(e) => fail("throughput", e),
        }
    }

    // Only when asked for by name: two long windows.
    if a.scenario == Scenario::Retention {
        match retention::run(&lab, &z, &mut report).await {
            Ok(runs) => {
                let (base, pruned) = (&runs[0], &runs[1]);
                let ratio = pruned.commands_per_sec / base.commands_per_sec;
                report.target(Target {
                    name: "--retention 1m: throughput vs no pruning (same run), >= 0.9".into(),
                    measured: measure::fmt_rate(pruned.commands_per_sec),
                    bound: format!("{} x 0.9", measure::fmt_rate(base.commands_per_sec)),
                    ratio: Some(ratio),
                    pass: Some(ratio >= 0.9),
                    note: "ratio: to the same load with the default 7d retention".into(),
                });
                let half = pruned.samples.len() / 2;
                let late = pruned.samples[half..]
                    .iter()
                    .map(|s| s.rows)
                    .max()
                    .unwrap_or(0);
                let early = pruned.samples[..half]
                    .iter()
                    .map(|s| s.rows)
                    .max()
                    .unwrap_or(0);
                report.target(Target {
                    name:
                        "--retention 1m: commands table bounded (2nd half max <= 1.2x 1st half max)"
                            .into(),
                    measured: measure::fmt_int(late.max(0) as u64),
                    bound: measure::fmt_int((early.max(0) as f64 * 1.2) as u64),
                    ratio: (early > 0).then(|| late as f64 / early as f64),
                    pass: Some(late as f64 <= early as f64 * 1.2),
                    note: format!(
                        "without pruning: {} rows at the end",
                        measure::fmt_int(base.max_rows().max(0) as u64)
                    ),
                });
            }
            Err(e) => fail("retention", e),
        }
    }

    // Only when asked for by name: six windows and a trace backend.
    if a.scenario == Scenario::Overhead {
        match overhead::run(&lab, &z, &mut report).await {
            Ok(o) => {
                let off = o.configs[0].rate();
                let noise = format!("noise (two off windows): {:.1}%", o.noise * 100.0);
                for (c, floor, goal) in [
                    (&o.configs[1], 0.97, "metrics: throughput >= 0.97x off"),
                    (
                        &o.configs[2],
                        0.85,
                        "tracing at 1.0: throughput >= 0.85x off",
                    ),
                ] {
                    let ratio = c.rate() / off;
                    report.target(Target {
                        name: goal.into(),
                        measured: measure::fmt_rate(c.rate()),
                        bound: format!("{} x {floor}", measure::fmt_rate(off)),
                        ratio: Some(ratio),
                        pass: Some(ratio >= floor),
                        note: format!(
                            "p99 {} vs {} off; {noise}",
                            fmt_dur(c.p99()),
                            fmt_dur(o.configs[0].p99())
                        ),
                    });
                }
            }
            Err(e) => fail("overhead", e),
        }
    }

    // Only when asked for by name: PostgreSQL, two windows.
    if a.scenario == Scenario::Replicas {
        let url = a.postgres_url.clone();
        let fresh = || latency::fresh_postgres(&url);
        match replicas::run(&lab, &z, &mut report, a.replicas as usize, fresh).await {
            Ok(runs) => {
                let (one, many) = (&runs[0], &runs[1]);
                // No goal: the figures say what a second and third replica
                // cost or bring on one PostgreSQL server.
                report.add(
                    "7 replicas",
                    &format!("{} replicas / 1 replica: commands/s, p99", many.replicas),
                    format!(
                        "{:.2}x ({} vs {}), p99 {} vs {}",
                        many.commands_per_sec / one.commands_per_sec,
                        measure::fmt_rate(many.commands_per_sec),
                        measure::fmt_rate(one.commands_per_sec),
                        fmt_dur(many.p99),
                        fmt_dur(one.p99)
                    ),
                );
            }
            Err(e) => fail("replicas", e),
        }
    }

    if want(Scenario::Scale) {
        match scale::run(&lab, &z, &mut report).await {
            Ok(r) => {
                let n = measure::fmt_int(r.agents);
                let kib_bound = base.kib_per_conn * 1.6;
                report.target(Target {
                    name: format!("RSS per agent at {n} agents <= 1.6x baseline per connection"),
                    measured: format!("{:.1} KiB", r.kib_per_agent),
                    bound: format!("{kib_bound:.1} KiB"),
                    ratio: Some(r.kib_per_agent / base.kib_per_conn),
                    pass: Some(r.kib_per_agent <= kib_bound),
                    note: String::new(),
                });
                report.target(Target {
                    name: format!("all {n} agents re-attached <= 20 s after kill -9 + restart"),
                    measured: r
                        .reattach
                        .map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64())),
                    bound: "20 s".into(),
                    ratio: None,
                    pass: Some(r.reattach.is_some_and(|d| d <= Duration::from_secs(20))),
                    note: String::new(),
                });
                report.target(Target {
                    name: format!("steady-state heartbeat CPU, {n} agents <= 2x baseline"),
                    measured: format!("{:.2}%", r.steady_cpu),
                    bound: format!("{:.2}%", base.heartbeat_cpu * 2.0),
                    ratio: Some(r.steady_cpu / base.heartbeat_cpu.max(0.01)),
                    pass: Some(r.steady_cpu <= base.heartbeat_cpu * 2.0),
                    note: String::new(),
                });
            }
            Err(e) => fail("scale", e),
        }
    }

    if want(Scenario::Failover) {
        match failover::run(&lab, &z, &mut report).await {
            Ok(r) => report.add(
                "5 failover",
                "verdict",
                format!(
                    "none lost, none duplicated ({:.2} s)",
                    r.recovery.as_secs_f64()
                ),
            ),
            Err(e) => fail("failover", e),
        }
    }

    println!(
        "\n## streamspace-bench results ({}{})\n",
        machine(),
        if a.quick { ", --quick" } else { "" }
    );
    println!("{}", report.render());
    if a.keep {
        let kept = lab.dir.keep();
        println!("logs kept in {}", kept.display());
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "{} scenario(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}
