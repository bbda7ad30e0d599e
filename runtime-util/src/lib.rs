//! Process plumbing every StreamSpace binary needs the same way: how logs are
//! written, which signals stop the process and how kubelet probes it. It lives in its own small crate
//! so the control plane and the agent share it without either depending on the
//! other, and so the protocol crate (the wire contract, used by clients in
//! every language's image of it) stays free of a logging stack.
//!
//! # Layout
//! - `lib.rs`: [`init_logging`] (text or JSON `tracing` output on stderr,
//!   filtered by `RUST_LOG`) and [`shutdown_signal`] (SIGINT or SIGTERM).
//! - `health.rs`: [`HealthEndpoint`], the plaintext `grpc.health.v1`
//!   listener kubelet probes talk to (`--health-addr`).
//! - `telemetry.rs`: [`telemetry::init`] (logs plus, when an OTLP endpoint
//!   is configured, traces) and the W3C trace-context helpers that link a
//!   command's spans across processes.
//! - `metrics_http.rs`: the plain-HTTP `/metrics` listener (`--metrics-addr`)
//!   serving a registry rendered at scrape time, and the shared histogram
//!   buckets.
#![forbid(unsafe_code)]

pub mod health;
pub mod metrics_http;
pub mod telemetry;

pub use health::{HealthEndpoint, parse_health_addr};

/// Logs through `tracing`: readable text by default, or JSON when `format`
/// is `"json"`. The filter comes from `RUST_LOG`, `info` when unset. Calling
/// it twice keeps the first set-up.
pub fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
