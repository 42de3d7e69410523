//! Generates the gRPC code from `proto/` with protox (a protobuf compiler in Rust), so the
//! build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["truevault/node/v1/node.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // The enrollment token is a secret: its Debug is written by hand (lib.rs).
        .skip_debug([".truevault.node.v1.EnrollRequest"])
        .compile_fds(files)?;
    Ok(())
}
