//! Scenario 7, observability overhead (only with `--scenario overhead`): the
//! throughput load against three control planes that differ in one flag —
//! nothing (`off`), `--metrics-addr` with a Prometheus-style scrape every
//! second (`metrics`), and `--otlp-endpoint` to a real Jaeger with every
//! trace sampled (`tracing`, the SDK's default `parentbased_always_on`: the
//! load's calls carry no `traceparent`, so each starts a sampled trace).
//! Each configuration runs twice, interleaved (off, metrics, tracing, off,
//! metrics, tracing), so the two `off` windows show the noise of the
//! machine; the figures are the mean of a configuration's two windows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Sizes;
use super::api::{Api, Watcher};
use super::children::{AgentsChild, CpChild, Lab, free_addr};
use super::measure::{fmt_dur, fmt_rate};
use super::report::Report;
use super::throughput::load;

const S: &str = "7 overhead";

/// One configuration's windows.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub label: &'static str,
    pub rates: Vec<f64>,
    pub p99s: Vec<Duration>,
}

impl Config {
    pub fn rate(&self) -> f64 {
        self.rates.iter().sum::<f64>() / self.rates.len().max(1) as f64
    }

    pub fn p99(&self) -> Duration {
        let n = self.p99s.len().max(1) as u32;
        self.p99s.iter().sum::<Duration>() / n
    }
}

/// What the scenario measured: `off`, `metrics`, `tracing`.
pub struct Overhead {
    pub configs: Vec<Config>,
    /// |off₁ − off₂| / mean(off): the run-to-run noise.
    pub noise: f64,
}

/// Scrapes `/metrics` every second while the window runs (what Prometheus
/// would cost the control plane).
fn scraper(addr: SocketAddr, until: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while Instant::now() < until {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                let _ = s
                    .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
                    .await;
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn window(
    lab: &Lab,
    z: &Sizes,
    label: &str,
    round: usize,
) -> anyhow::Result<(f64, Duration)> {
    // Jaeger runs only during its window (and is gone before the next), so
    // its ingest does not weigh on the other configurations.
    let mut jaeger = None;
    let (extra, metrics) = match label {
        "metrics" => {
            let addr = free_addr()?;
            (vec![format!("--metrics-addr={addr}")], Some(addr))
        }
        "tracing" => {
            let j = streamspace_tests::jaeger::Jaeger::start(&lab.path(&format!("jaeger-{round}")))
                .await
                .ok_or_else(|| {
                    anyhow::anyhow!("jaeger is not on PATH (scripts/tools.sh install jaeger)")
                })?;
            let extra = vec![format!("--otlp-endpoint=http://{}", j.otlp)];
            jaeger = Some(j);
            (extra, None)
        }
        _ => (vec![], None),
    };
    let db = format!(
        "sqlite://{}",
        lab.path(&format!("overhead-{label}-{round}.db")).display()
    );
    let cp = CpChild::start_with(lab, &format!("cp-overhead-{label}-{round}"), &db, &extra).await?;
    let api = Api::connect(lab, cp.api_addr, 8).await?;
    api.put_template().await?;
    let n = z.throughput_agents;
    let mut agents =
        AgentsChild::start(lab, &format!("ov{label}{round}"), cp.agent_addr, n, 1000).await?;
    agents
        .wait_attached(Duration::from_secs(60 + n / 100))
        .await?;
    let watch = Watcher::start(&api).await?;
    let t0 = Instant::now();
    let scrape = metrics.map(|m| scraper(m, t0 + z.overhead_time));
    let (mut lat, commands, _) = load(
        std::slice::from_ref(&api),
        &watch,
        z.concurrency,
        z.overhead_time,
        Arc::default(),
    )
    .await?;
    let elapsed = t0.elapsed();
    if let Some(s) = scrape {
        s.abort();
    }
    agents.stop().await?;
    drop(cp);
    drop(jaeger);
    let rate = commands as f64 / elapsed.as_secs_f64();
    let p99 = lat.pct(99.0);
    eprintln!(
        "[bench] overhead {label} (round {round}): {} commands/s, p99 {}",
        fmt_rate(rate),
        fmt_dur(p99)
    );
    Ok((rate, p99))
}

pub async fn run(lab: &Lab, z: &Sizes, report: &mut Report) -> anyhow::Result<Overhead> {
    let mut configs = vec![
        Config {
            label: "off",
            ..Default::default()
        },
        Config {
            label: "metrics",
            ..Default::default()
        },
        Config {
            label: "tracing",
            ..Default::default()
        },
    ];
    for round in 0..2 {
        for c in configs.iter_mut() {
            let (rate, p99) = window(lab, z, c.label, round).await?;
            c.rates.push(rate);
            c.p99s.push(p99);
        }
    }
    let off = &configs[0];
    let noise = (off.rates[0] - off.rates[1]).abs() / off.rate();
    let secs = z.overhead_time.as_secs();
    for c in &configs {
        report.add(
            S,
            &format!("{}: commands/s, two {secs} s windows (mean)", c.label),
            format!(
                "{} ({})",
                fmt_rate(c.rate()),
                c.rates
                    .iter()
                    .map(|r| fmt_rate(*r))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        report.add(
            S,
            &format!("{}: accepted->succeeded p99 (mean of the windows)", c.label),
            fmt_dur(c.p99()),
        );
    }
    report.add(
        S,
        "noise: the two `off` windows differ by",
        format!("{:.1}%", noise * 100.0),
    );
    Ok(Overhead { configs, noise })
}
