//! The domain core of StreamSpace: sessions, durable commands and agents as
//! plain Rust. It depends on neither tonic, sqlx, rusqlite nor kube, and Cargo
//! enforces that: the gRPC and Kubernetes adapters (in the control plane) and
//! the store adapters (`streamspace-store`) depend on this crate, never the
//! other way round. What the core needs from the outside it names as a trait
//! ([`store::Store`]) or a plain type, and the adapters implement it. The one
//! outside crate it uses is the protocol crate, for the shared name rules
//! (`streamspace::names`) that agents apply too.
//!
//! # Layout
//! - `model.rs`: the domain types (session, command, template, agent record,
//!   phases and actions).
//! - `steps.rs`: the lifecycle as pure functions: state in, change out.
//! - `lifecycle.rs`: [`Lifecycle`], the service that runs the steps inside
//!   store transitions and publishes session events.
//! - `streams.rs`: what an agent's stream asks of the core (attach and
//!   detach with the fencing rules, next commands to send, heartbeats) and
//!   the memory of which session each delivered command belongs to.
//! - `store.rs`: the [`store::Store`] trait (the persistence boundary) and its
//!   write/filter types.
//! - `revocation.rs`: the agent deny list (revoke, unrevoke, enforce) and
//!   the rules for its targets.
//! - `replicas.rs`: several replicas on one shared store: other replicas'
//!   writes applied here, presence, take-overs, lost wake-ups.
//! - `roster.rs`: the agents attached right now and the attach rules
//!   (one stream per agent, fencing tokens, heartbeats).
//! - `placement.rs`: which agent takes a new session, over plain
//!   [`placement::Candidate`]s (the roster produces them).
//! - `policy.rs`: the idle timeout and the maximum duration as pure
//!   functions of a session and the time; `activity.rs`: the lifecycle's
//!   side of them (activity from users and agents, the enforcement sweep).
//! - `outbox.rs`: the operators' outbox tools (list, read, retry, cancel
//!   commands).
//! - `validate.rs`: what a template or a request must satisfy.
//! - `quantity.rs`: Kubernetes-style CPU and memory quantities.
//! - `trace.rs`: the trace context a command carries, and the seam through
//!   which the binary links spans (the core has no OpenTelemetry).
#![forbid(unsafe_code)]

pub mod activity;
pub mod lifecycle;
pub mod model;
pub mod outbox;
pub mod placement;
pub mod policy;
pub mod quantity;
pub mod quota;
pub mod replicas;
pub mod revocation;
pub mod roster;
pub mod steps;
pub mod store;
pub mod streams;
pub mod trace;
pub mod validate;

pub use lifecycle::{
    Caller, EventKind, Lifecycle, LifecycleConfig, LifecycleError, NewSession, SessionEvent,
};
