//! The StreamSpace protocol: the `streamspace.v1` protobuf contract compiled
//! for Rust (messages with prost, services with tonic). Every other language
//! generates its own bindings from the same `proto/` files.
#![forbid(unsafe_code)]

pub mod names;
pub mod quantity;
pub mod version;

pub use version::{PROTOCOL_VERSION, SUPPORTED_PROTOCOL_VERSIONS};

/// Generated types of package `streamspace.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("streamspace.v1");
}

/// Encoded `FileDescriptorSet` of every StreamSpace proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/streamspace_descriptor.bin"));
