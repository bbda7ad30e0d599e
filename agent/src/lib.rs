//! The StreamSpace agent: dials the control plane, receives typed commands on
//! one mTLS stream and applies them on a runtime (process; kubernetes).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod capacity;
pub mod client;
pub mod config;
pub mod dedup;
pub mod frames;
pub mod identity;
pub mod lease;
pub mod metrics;
pub mod runtime;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use client::{Client, ClientConfig, ClientTls};
pub use config::AgentArgs;

/// Builds the runtime the flags ask for and runs the agent until `shutdown`.
pub async fn run(args: AgentArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cfg = args.client_config()?;
    // Liveness only: the process runs, whether it leads or stands by.
    let probe = match args.health_addr {
        Some(addr) => Some(
            streamspace_runtime_util::HealthEndpoint::start(
                addr,
                true,
                shutdown.clone().cancelled_owned(),
            )
            .await
            .with_context(|| format!("binding the health listener on {addr}"))?,
        ),
        None => None,
    };
    let sink = runtime::StatusSink::new();
    let statuses = sink.clone();
    let kube = if args.platform == "kubernetes" || args.enable_ha {
        Some(args.kube_client().await?)
    } else {
        None
    };
    let rt: Arc<dyn runtime::Runtime> = match (args.platform.as_str(), &kube) {
        ("process", _) => Arc::new(
            runtime::process::ProcessRuntime::open_with_ports(
                &args.data_dir,
                sink,
                Duration::from_secs(args.stop_grace_seconds),
                args.stop_sessions_on_exit,
                runtime::ports::PortAllocator::with_lock_dir(
                    args.session_ports,
                    args.port_lock_dir
                        .clone()
                        .unwrap_or_else(runtime::ports::default_lock_dir),
                ),
            )?
            .with_start_wait(Duration::from_secs(args.start_wait_seconds)),
        ),
        ("kubernetes", Some(k)) => {
            runtime::kubernetes::KubernetesRuntime::start(k.clone(), args.object_config(), sink)
                .await?
        }
        (other, _) => anyhow::bail!("--platform: expected kubernetes or process, got {other:?}"),
    };
    let mut client = Client::new(cfg, rt, statuses);
    let mut elector = None;
    let mut leadership = None;
    if args.enable_ha {
        let mut lease_cfg = args.lease_config()?;
        let kube = kube.clone().expect("kube client with HA");
        lease_cfg.owner =
            lease::pod_owner(kube.clone(), &args.namespace, &lease_cfg.identity).await;
        let api = kube::Api::namespaced(kube, &args.namespace);
        let (tx, rx) = tokio::sync::watch::channel(None);
        elector = Some(tokio::spawn(lease::run(
            api,
            lease_cfg,
            tx,
            shutdown.clone(),
        )));
        client = client.with_leadership(rx.clone());
        leadership = Some(rx);
    }
    let mut metrics_task = None;
    if let Some(addr) = args.metrics_addr {
        let m = Arc::new(metrics::AgentMetrics::new(leadership));
        let (_, task) = metrics::serve(addr, m.clone(), shutdown.clone())
            .await
            .with_context(|| format!("binding the metrics listener on {addr}"))?;
        metrics_task = Some(task);
        client = client.with_metrics(Some(m));
    }
    client.run(shutdown).await;
    if let Some(e) = elector {
        let _ = e.await;
    }
    if let Some((_, task)) = probe {
        let _ = task.await;
    }
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    Ok(())
}
