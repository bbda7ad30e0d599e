//! Kubernetes-style CPU and memory quantities: the protocol crate's rules
//! (agents apply the same ones), re-exported where the core uses them.

pub use streamspace::quantity::*;
