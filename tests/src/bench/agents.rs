//! `streamspace-bench agents`: N simulated agents in one process, each the
//! real agent stream client (`streamspace_agent::Client`) over its own mTLS
//! connection with its own certificate, on `NoopRuntime` (every command
//! acknowledged and succeeded at once), so only the control plane and the
//! protocol are measured.
//!
//! The parent drives it over stdin, one word per line, each answered by one
//! JSON line on stdout: `stats` (counters), `mark` (remember every agent's
//! attach count, so `since_mark` counts re-attaches from here), `quit`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use streamspace::v1 as pb;
use streamspace_agent::client::ClientStats;
use streamspace_agent::runtime::StatusSink;
use streamspace_agent::runtime::noop::NoopRuntime;
use streamspace_agent::{Client, ClientConfig, ClientTls};
use streamspace_control_plane::pki::{self, Pem};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Args)]
pub struct AgentsArgs {
    /// How many agents.
    #[arg(long, env = "BENCH_AGENTS_COUNT")]
    pub count: u64,
    /// The control plane's agent endpoint, e.g. https://127.0.0.1:7443.
    #[arg(long, env = "BENCH_AGENTS_URL")]
    pub url: String,
    /// Directory with ca.crt and ca.key: signs one certificate per agent.
    #[arg(long, env = "BENCH_AGENTS_PKI_DIR")]
    pub pki_dir: std::path::PathBuf,
    #[arg(
        long,
        env = "BENCH_AGENTS_TRUST_DOMAIN",
        default_value = "test.streamspace"
    )]
    pub trust_domain: String,
    /// Agent ids are <prefix>-00000, <prefix>-00001, ...
    #[arg(long, env = "BENCH_AGENTS_ID_PREFIX", default_value = "bench")]
    pub id_prefix: String,
    /// New agents started per second (a thundering herd at start-up measures
    /// nothing useful; the restart measurement has its herd anyway).
    #[arg(long, env = "BENCH_AGENTS_RAMP", default_value_t = 1000)]
    pub ramp_per_second: u64,
    /// Reconnect backoff, as the real agent's defaults.
    #[arg(long, env = "BENCH_AGENTS_BACKOFF_BASE_MS", default_value_t = 250)]
    pub backoff_base_ms: u64,
    #[arg(long, env = "BENCH_AGENTS_BACKOFF_MAX_MS", default_value_t = 30_000)]
    pub backoff_max_ms: u64,
}

pub async fn run(a: AgentsArgs) -> anyhow::Result<()> {
    let nofile = super::measure::raise_nofile_limit()?;
    anyhow::ensure!(
        a.count + 64 <= nofile,
        "{} agents need {} open files; the hard limit is {nofile}",
        a.count,
        a.count + 64
    );
    let ca = Pem::load(&a.pki_dir, "ca").context("--pki-dir: loading ca.crt/ca.key")?;
    let shutdown = CancellationToken::new();
    let stats: Arc<std::sync::Mutex<Vec<Arc<ClientStats>>>> = Default::default();

    // Certificates first (CPU-bound), then agents at the ramp rate, while the
    // parent can already ask for counters.
    let ids: Vec<String> = (0..a.count)
        .map(|i| format!("{}-{i:05}", a.id_prefix))
        .collect();
    let certs = {
        let (ca, td) = (ca.clone(), a.trust_domain.clone());
        let ids = ids.clone();
        tokio::task::spawn_blocking(move || {
            ids.iter()
                .map(|id| pki::new_agent(&ca, &td, id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await??
    };
    let starter = {
        let (stats, shutdown, a) = (stats.clone(), shutdown.clone(), a.clone());
        let ca_cert = ca.cert.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            for (i, (id, pem)) in ids.into_iter().zip(certs).enumerate() {
                let cfg = ClientConfig {
                    agent_id: id,
                    control_plane_url: a.url.clone(),
                    platform: "bench".into(),
                    region: "bench".into(),
                    capacity: pb::Capacity::default(),
                    tls: ClientTls {
                        ca: ca_cert.clone(),
                        cert: pem.cert,
                        key: pem.key,
                        server_name: Some("localhost".into()),
                        files: None,
                    },
                    backoff_base: Duration::from_millis(a.backoff_base_ms),
                    backoff_cap: Duration::from_millis(a.backoff_max_ms),
                    fencing_token: Arc::new(AtomicU64::new(0)),
                };
                let (sink, statuses) = StatusSink::channel(4096);
                let client = Arc::new(Client::new(cfg, Arc::new(NoopRuntime::new(sink)), statuses));
                stats.lock().expect("stats").push(client.stats.clone());
                let token = shutdown.clone();
                tokio::spawn(async move { client.run(token).await });
                if a.ramp_per_second > 0 {
                    let due =
                        began + Duration::from_secs_f64((i + 1) as f64 / a.ramp_per_second as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
            }
        })
    };

    let mut marks: Vec<u64> = vec![];
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let all = stats.lock().expect("stats").clone();
        match line.trim() {
            "mark" => {
                marks = all
                    .iter()
                    .map(|s| s.attaches.load(Ordering::Relaxed))
                    .collect()
            }
            "stats" => {}
            "quit" => break,
            other => anyhow::bail!("unknown request {other:?}: expected stats, mark or quit"),
        }
        let mut attached = 0;
        let mut since_mark = 0;
        let (mut applied, mut duplicates) = (0, 0);
        for (i, s) in all.iter().enumerate() {
            let n = s.attaches.load(Ordering::Relaxed);
            attached += u64::from(n > 0);
            since_mark += u64::from(n > marks.get(i).copied().unwrap_or(0));
            applied += s.applied.load(Ordering::Relaxed);
            duplicates += s.duplicates.load(Ordering::Relaxed);
        }
        let answer = serde_json::json!({
            "started": all.len(),
            "attached": attached,
            "since_mark": since_mark,
            "applied": applied,
            "duplicates": duplicates,
        });
        out.write_all(format!("{answer}\n").as_bytes()).await?;
        out.flush().await?;
    }
    starter.abort();
    shutdown.cancel();
    // Give streams a moment to close cleanly; the parent does not wait long.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}
