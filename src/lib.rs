//! The StreamSpace protocol: the `streamspace.v1` protobuf contract compiled
//! for Rust (messages with prost, services with tonic). Every other language
//! generates its own bindings from the same `proto/` files.
#![forbid(unsafe_code)]

pub mod names;

/// Generated types of package `streamspace.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("streamspace.v1");
}

/// Encoded `FileDescriptorSet` of every StreamSpace proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/streamspace_descriptor.bin"));

/// The protocol version agents and control plane speak.
pub const PROTOCOL_VERSION: v1::ProtocolVersion = v1::ProtocolVersion::ProtocolVersion1;
