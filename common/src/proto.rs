//! Code generated from `proto/hookrelay/v1`, and the encoded descriptor set for gRPC server reflection.

#[allow(clippy::all, missing_docs)]
/// Messages and services of the `hookrelay.v1` package.
pub mod v1 {
    tonic::include_proto!("hookrelay.v1");
}

/// The encoded `FileDescriptorSet` of every hookrelay proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hookrelay_descriptor.bin"));
