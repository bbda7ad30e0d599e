//! The StreamSpace control plane: the session API, the agent hub, the durable
//! command lifecycle and the store.
//!
//! Layers: `core` (domain, no tonic/sqlx) <- `store` (sqlx) and `grpc`
//! (tonic) adapters <- `server` (wiring) <- `cli` (flags).
#![forbid(unsafe_code)]

pub mod cli;
pub mod core;
pub mod dev;
pub mod grpc;
pub mod k8s;
pub mod listen;
pub mod pki;
pub mod server;
pub mod store;
