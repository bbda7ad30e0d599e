//! The domain core: sessions, durable commands and agents as plain Rust.
//! Imports neither tonic, kube nor sqlx; adapters around it translate.

pub mod lifecycle;
pub mod model;
pub mod placement;
pub mod quantity;
pub mod roster;
pub mod steps;
pub mod store;
pub mod validate;

pub use lifecycle::{
    Caller, EventKind, Lifecycle, LifecycleConfig, LifecycleError, NewSession, SessionEvent,
};
