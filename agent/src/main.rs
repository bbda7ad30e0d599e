//! `streamspace-agent`: see `streamspace_agent::AgentArgs` for the flags.
use clap::Parser;
use streamspace_agent::{AgentArgs, run};
use streamspace_runtime_util::{init_logging, shutdown_signal};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = AgentArgs::parse();
    init_logging(&args.log_format);
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        s.cancel();
    });
    run(args, shutdown).await
}
