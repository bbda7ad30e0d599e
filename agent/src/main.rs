//! `streamspace-agent`: see `streamspace_agent::AgentArgs` for the flags.
use clap::Parser;
use streamspace_agent::{AgentArgs, run};
use streamspace_runtime_util::{shutdown_signal, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = AgentArgs::parse();
    let endpoint = telemetry::endpoint(Some(&args.otlp_endpoint));
    let _traces = telemetry::init(&args.log_format, "streamspace-agent", endpoint.as_deref())?;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        s.cancel();
    });
    run(args, shutdown).await
}
