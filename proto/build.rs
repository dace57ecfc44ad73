//! Generates the prost types for `hanmadi.proto` with a pure-Rust protobuf
//! compiler (protox), so building needs no system `protoc`.
//!
//! Besides `hanmadi.v1.rs`, the build writes the schema's encoded
//! `FileDescriptorSet` to `$OUT_DIR/hanmadi_descriptor.bin` and, from it,
//! `hanmadi.v1.serde.rs`: serde impls of protobuf's canonical JSON mapping
//! (pbjson), so the WebSocket JSON subprotocol and the HTTP API never map a
//! field by hand.

use std::path::PathBuf;

use prost::Message as _;

const SCHEMA: &str = "hanmadi.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={SCHEMA}");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);

    let descriptors = protox::compile([SCHEMA], ["."])?;
    let encoded = descriptors.encode_to_vec();
    std::fs::write(out_dir.join("hanmadi_descriptor.bin"), &encoded)?;
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        // Field names as written in the schema (snake_case), which the JSON
        // mapping allows and the HTTP API uses too; parsing accepts both.
        .preserve_proto_field_names()
        // Like the binary encoding, a newer peer's extra fields are skipped.
        .ignore_unknown_fields()
        .build(&[".hanmadi.v1"])?;

    prost_build::Config::new()
        // `bytes` fields decode as `bytes::Bytes`: slices of the frame's
        // buffer rather than copies, and cheap to clone.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
