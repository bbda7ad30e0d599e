//! Scenario 2, command latency: one simulated agent, commands issued one at a
//! time through the public API, each waited for on `WatchSessions` before the
//! next (see `api.rs` for how a command is timed). Sessions cycle create ->
//! hibernate -> wake -> hibernate -> wake -> delete, so every command kind is
//! in the sample. Run on SQLite and on a fresh PostgreSQL database.

use std::time::Duration;

use anyhow::Context;

use super::Sizes;
use super::api::{Api, Op, Watcher, command};
use super::children::{AgentsChild, CpChild, Lab};
use super::measure::{Latencies, fmt_dur};
use super::report::Report;
use super::verify;

const S: &str = "2 latency";

/// Where the control plane keeps its state.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite,
    Postgres(String),
}

#[derive(Debug, Clone, Default)]
pub struct LatencyResult {
    pub p99: Duration,
}

const CYCLE: [Op; 6] = [
    Op::Create,
    Op::Hibernate,
    Op::Wake,
    Op::Hibernate,
    Op::Wake,
    Op::Delete,
];

pub async fn run(
    lab: &Lab,
    z: &Sizes,
    report: &mut Report,
    store: &Store,
) -> anyhow::Result<LatencyResult> {
    let (label, db) = match store {
        Store::Sqlite => (
            "SQLite",
            format!("sqlite://{}", lab.path("latency.db").display()),
        ),
        Store::Postgres(url) => ("PostgreSQL", url.clone()),
    };
    let tag = label.to_lowercase();
    let cp = CpChild::start(lab, &format!("cp-latency-{tag}"), &db).await?;
    let api = Api::connect(lab, cp.api_addr, 1).await?;
    api.put_template().await?;
    let mut agents = AgentsChild::start(lab, &format!("lat-{tag}"), cp.agent_addr, 1, 1000).await?;
    agents.wait_attached(Duration::from_secs(60)).await?;
    let watch = Watcher::start(&api).await?;
    let mut sessions = api.sessions();
    let within = Duration::from_secs(60);

    let warmup = (z.latency_samples / 20).max(12);
    let (mut total, mut call) = (Latencies::default(), Latencies::default());
    let mut issued = 0u64;
    let mut i = 0;
    while (total.len() as u64) < z.latency_samples {
        let name = format!("lat-{i}");
        for (g, op) in CYCLE.iter().enumerate() {
            let t = command(&mut sessions, &watch, *op, &name, g as u64 + 1, within)
                .await?
                .with_context(|| format!("{op:?} {name}: refused as overloaded with one client"))?;
            issued += 1;
            if issued > warmup {
                total.push(t.total);
                call.push(t.call);
            }
        }
        i += 1;
    }
    let redelivered = verify::commands(&mut agents, &api, issued, 0).await?;

    let n = total.len();
    report.add(
        S,
        &format!("{label}: accepted->succeeded, 1 agent, {n} commands, p50 / p90 / p99 / p99.9"),
        format!(
            "{} / {} / {} / {}",
            fmt_dur(total.pct(50.0)),
            fmt_dur(total.pct(90.0)),
            fmt_dur(total.pct(99.0)),
            fmt_dur(total.pct(99.9))
        ),
    );
    report.add(
        S,
        &format!("{label}: API call alone (command durable), p50 / p99"),
        format!("{} / {}", fmt_dur(call.pct(50.0)), fmt_dur(call.pct(99.0))),
    );
    report.add(
        S,
        &format!("{label}: commands accepted / applied once / re-deliveries"),
        format!("{issued} / {issued} / {redelivered}"),
    );
    agents.stop().await?;
    drop(cp);
    Ok(LatencyResult {
        p99: total.pct(99.0),
    })
}

/// A fresh database on the PostgreSQL server at `base`, or why there is none.
pub async fn fresh_postgres(base: &str) -> Result<String, String> {
    use sqlx::Connection;
    let mut admin = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(base))
        .await
        .map_err(|_| format!("PostgreSQL at {base} did not answer within 5 s"))?
        .map_err(|e| format!("PostgreSQL at {base} is not reachable: {e}"))?;
    let db = format!("bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .map_err(|e| format!("CREATE DATABASE on {base}: {e}"))?;
    let (prefix, _) = base
        .rsplit_once('/')
        .ok_or_else(|| format!("{base}: expected postgres://USER@HOST:PORT/DB"))?;
    Ok(format!("{prefix}/{db}"))
}
