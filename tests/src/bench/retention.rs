//! Scenario 6, retention: the throughput load for a long window (10
//! minutes at full size), twice in one run — with the default retention (7
//! days: nothing is pruned, the baseline) and with `--retention 1m` — and
//! every 30 s the number of rows in the commands table, the database file's
//! size (with its WAL) and the commands completed in that interval. With
//! retention the table and the file must level off; the throughput must not
//! drop beyond noise (the ratio of the two runs' rates, and of each run's
//! last interval to its first).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Sizes;
use super::api::{Api, Watcher};
use super::children::{AgentsChild, CpChild, Lab};
use super::measure::{fmt_int, fmt_rate};
use super::report::Report;
use super::throughput::load;

const S: &str = "6 retention";
/// How often the table and the file are sampled.
const EVERY: Duration = Duration::from_secs(30);

/// One sample: seconds into the window, rows, bytes, commands completed in
/// the interval before it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at_secs: u64,
    pub rows: i64,
    pub bytes: u64,
    pub interval_commands: u64,
}

#[derive(Debug, Clone, Default)]
pub struct RetentionRun {
    pub label: String,
    pub commands_per_sec: f64,
    pub samples: Vec<Sample>,
}

impl RetentionRun {
    pub fn max_rows(&self) -> i64 {
        self.samples.iter().map(|s| s.rows).max().unwrap_or(0)
    }
    pub fn max_bytes(&self) -> u64 {
        self.samples.iter().map(|s| s.bytes).max().unwrap_or(0)
    }
    /// Rate of the last interval over the first.
    pub fn drift(&self) -> f64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(a), Some(b)) if a.interval_commands > 0 => {
                b.interval_commands as f64 / a.interval_commands as f64
            }
            _ => 0.0,
        }
    }
}

fn db_bytes(path: &Path) -> u64 {
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let wal = path.with_extension("db-wal");
    len(path) + len(&wal)
}

async fn rows(pool: &sqlx::SqlitePool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM commands")
        .fetch_one(pool)
        .await?)
}

/// One window of load against a fresh control plane and database.
async fn one(
    lab: &Lab,
    z: &Sizes,
    label: &str,
    retention: Option<&str>,
) -> anyhow::Result<RetentionRun> {
    let file = lab.path(&format!("retention-{}.db", retention.unwrap_or("default")));
    let db = format!("sqlite://{}", file.display());
    let extra: Vec<String> = retention
        .map(|r| format!("--retention={r}"))
        .into_iter()
        .collect();
    let cp = CpChild::start_with(lab, &format!("cp-retention-{label}"), &db, &extra).await?;
    let api = Api::connect(lab, cp.api_addr, 8).await?;
    api.put_template().await?;
    let n = z.throughput_agents;
    let mut agents = AgentsChild::start(lab, &format!("rt{label}"), cp.agent_addr, n, 1000).await?;
    agents
        .wait_attached(Duration::from_secs(60 + n / 100))
        .await?;
    let watch = Watcher::start(&api).await?;
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}?mode=ro", file.display()))
        .await?;

    let done = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let window = z.retention_time;
    let sampler = {
        let (done, file, label) = (done.clone(), file.clone(), label.to_string());
        tokio::spawn(async move {
            let mut samples = vec![];
            let mut last = 0;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
            while t0.elapsed() < window {
                tick.tick().await;
                let now = done.load(Ordering::Relaxed);
                let s = Sample {
                    at_secs: t0.elapsed().as_secs(),
                    rows: rows(&pool).await.unwrap_or(-1),
                    bytes: db_bytes(&file),
                    interval_commands: now - last,
                };
                eprintln!("[bench] retention {label}: {s:?}");
                samples.push(s);
                last = now;
            }
            samples
        })
    };
    let (_, commands, _) = load(
        std::slice::from_ref(&api),
        &watch,
        z.concurrency,
        window,
        done,
    )
    .await?;
    let elapsed = t0.elapsed();
    let samples = sampler.await?;
    agents.stop().await?;
    drop(cp);
    Ok(RetentionRun {
        label: label.to_string(),
        commands_per_sec: commands as f64 / elapsed.as_secs_f64(),
        samples,
    })
}

pub async fn run(lab: &Lab, z: &Sizes, report: &mut Report) -> anyhow::Result<Vec<RetentionRun>> {
    let runs = vec![
        one(lab, z, "7d", None).await?,
        one(lab, z, "1m", Some("1m")).await?,
    ];
    let mins = z.retention_time.as_secs_f64() / 60.0;
    for r in &runs {
        let last = r.samples.last().copied();
        report.add(
            S,
            &format!(
                "--retention {}: commands completed over {mins:.0} min",
                r.label
            ),
            fmt_rate(r.commands_per_sec),
        );
        report.add(
            S,
            &format!("--retention {}: commands rows at end / most", r.label),
            format!(
                "{} / {}",
                fmt_int(last.map_or(0, |s| s.rows.max(0) as u64)),
                fmt_int(r.max_rows().max(0) as u64)
            ),
        );
        report.add(
            S,
            &format!("--retention {}: database + WAL at end / most", r.label),
            format!(
                "{} KiB / {} KiB",
                fmt_int(last.map_or(0, |s| s.bytes) / 1024),
                fmt_int(r.max_bytes() / 1024)
            ),
        );
        report.add(
            S,
            &format!("--retention {}: last 30 s rate / first 30 s rate", r.label),
            format!("{:.2}", r.drift()),
        );
        let series: Vec<String> = r
            .samples
            .iter()
            .map(|s| format!("{}s:{}", s.at_secs, s.rows))
            .collect();
        report.add(
            S,
            &format!("--retention {}: rows over time", r.label),
            series.join(" "),
        );
    }
    Ok(runs)
}
