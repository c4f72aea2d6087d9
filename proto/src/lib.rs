//! The bank.v1 contracts. The module tree mirrors the protobuf package.

pub mod bank {
    pub mod v1 {
        tonic::include_proto!("bank.v1");
    }
}

pub use bank::v1;

pub mod rest;

/// Encoded `FileDescriptorSet` of every bank.v1 file (and its imports), for
/// gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("bank_descriptor");
