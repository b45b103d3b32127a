//! Compiles `proto/arbor.proto` with a vendored `protoc`, so building Arbor
//! needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/arbor.proto");
    tonic_prost_build::configure()
        .codec_path("crate::codec::ArborCodec")
        .compile_protos(&["proto/arbor.proto"], &["proto"])?;
    Ok(())
}
