//! Generates the prost types for `hanmadi.proto` with a pure-Rust protobuf
//! compiler (protox), so building needs no system `protoc`.
//!
//! Besides `hanmadi.v1.rs`, the build writes the schema's encoded
//! `FileDescriptorSet` to `$OUT_DIR/hanmadi_descriptor.bin`. The crate exposes
//! it as `FILE_DESCRIPTOR_SET`, the input a JSON mapping generator
//! (pbjson-build) or a reflection-based encoder needs.

use std::path::PathBuf;

use prost::Message as _;

const SCHEMA: &str = "hanmadi.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={SCHEMA}");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);

    let descriptors = protox::compile([SCHEMA], ["."])?;
    std::fs::write(
        out_dir.join("hanmadi_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    prost_build::Config::new()
        // `bytes` fields decode as `bytes::Bytes`: slices of the frame's
        // buffer rather than copies, and cheap to clone.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
