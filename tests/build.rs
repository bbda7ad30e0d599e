//! Compiles the benchmark's echo service (`proto/bench/v1/echo.proto`) with
//! protox (pure Rust, no protoc), like the workspace root does for the
//! streamspace.v1 contract. Only `streamspace-bench` uses it.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = PathBuf::from("proto/bench/v1/echo.proto");
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile([&file], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
