//! The StreamSpace control plane: the session API, the agent hub, the
//! Kubernetes controller and the wiring that runs them over a store.
//!
//! Layers, enforced by Cargo: `streamspace-core` (domain, no tonic/sqlx/kube)
//! <- `streamspace-store` (SQL) and this crate's adapters (`grpc`, `k8s`)
//! <- `server` (wiring) <- `cli` (flags). The core and the store are
//! re-exported as [`core`] and [`store`] so callers keep one path.
//!
//! This crate depends on the agent crate for one reason: `dev` runs a local
//! agent in the same process (control plane + process-runtime agent on
//! loopback). Nothing else here uses the agent crate.
//!
//! # Layout
//! - `audit.rs`: the audit log (one JSON line per state-changing API call).
//! - `cli.rs`: the binary's flags and subcommands (`serve`, `dev`, `certs`).
//! - `oidc_flags.rs`: `serve`'s flags for users from an OIDC identity provider.
//! - `tuning.rs`: flags shared by `serve` and `dev` (timeouts, limits).
//! - `dev.rs`: the embedded default (`dev`): SQLite, a dev PKI, a local agent.
//! - `server.rs`: wires store, lifecycle, gRPC services and listeners.
//! - `metrics.rs`: Prometheus metrics (`--metrics-addr`): command stage
//!   histograms fed by the agent hub, the store's write transactions, the
//!   Session controller's reconciles, gauges read at each scrape.
//! - `listen.rs`: TLS listeners with connection limits and first-request deadlines.
//! - `tls.rs`: the listeners' certificates, replaced without a restart when their files change.
//! - `watch.rs`: polls files and applies a settled, usable change.
//! - `reflection.rs`: health and reflection limited to one listener's services.
//! - `pki.rs`: CA, server and agent certificates.
//! - `quotas.rs`: the `--quotas` file (quotas from the configuration).
//! - `certs.rs`: the same certificates as Kubernetes Secrets (`certs kubernetes`).
//! - `grpc/`: the gRPC adapters (agent stream hub, session/admin services,
//!   auth with static tokens and OIDC, wire <-> domain conversion).
//! - `k8s/`: the Session/Template CRDs and the embedded controller.
#![forbid(unsafe_code)]

pub use streamspace_core as core;
pub use streamspace_store as store;

pub mod audit;
pub mod certs;
pub mod cli;
pub mod dev;
pub mod grpc;
pub mod k8s;
pub mod listen;
pub mod metrics;
pub mod oidc_flags;
pub mod pki;
pub mod quotas;
pub mod reflection;
pub mod server;
pub mod tls;
pub mod tuning;
pub mod watch;
