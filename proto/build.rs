//! Generates Rust for bank.v1 with a vendored protoc (no protoc install needed)
//! and writes the descriptor set that server reflection and Envoy's JSON
//! transcoder use.
use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "bank/v1/types.proto",
    "bank/v1/auth.proto",
    "bank/v1/command.proto",
    "bank/v1/query.proto",
    "bank/v1/events.proto",
    "bank/v1/notification.proto",
    // Not used from Rust (tonic-types has them): listed so the descriptor set
    // carries the error detail types Envoy needs to render google.rpc.Status
    // details as JSON for REST clients.
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let wkt = protoc_bin_vendored::include_path()?;
    let protos: Vec<PathBuf> = PROTOS.iter().map(PathBuf::from).collect();
    println!("cargo:rerun-if-changed=bank");
    println!("cargo:rerun-if-changed=google");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("bank_descriptor.bin"))
        // Deterministic encoding: event hashes are computed over encoded bytes.
        .btree_map(".")
        .compile_with_config(config, &protos, &[PathBuf::from("."), wkt])?;
    Ok(())
}
