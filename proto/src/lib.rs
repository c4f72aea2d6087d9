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

/// The gRPC paths (`/bank.v1.Service/Method`) of every method of `service`
/// (a full name such as `bank.v1.AuthService`); empty for an unknown one.
pub fn method_paths(service: &str) -> Vec<String> {
    let pool =
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("the build's own descriptor set decodes");
    pool.get_service_by_name(service)
        .map(|s| s.methods().map(|m| format!("/{}/{}", s.full_name(), m.name())).collect())
        .unwrap_or_default()
}
