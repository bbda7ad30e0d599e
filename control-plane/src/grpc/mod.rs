//! gRPC adapters: thin services that translate between the wire
//! (`streamspace.v1`) and the core. `tonic::Status` lives only here.

pub mod admin;
pub mod agent;
pub mod auth;
pub mod convert;
pub mod edge_status;
pub mod limits;
pub mod observe;
pub mod oidc;
pub mod session;
