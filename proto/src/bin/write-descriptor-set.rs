//! Writes the bank.v1 descriptor set (with imports) to a file, for Envoy's
//! gRPC-JSON transcoder: generated from proto/ at build time, never committed.

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "bank.pb".into());
    std::fs::write(&path, bank_proto::FILE_DESCRIPTOR_SET)?;
    println!("wrote {path}");
    Ok(())
}
