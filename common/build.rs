//! Compiles `proto/` with protox (pure Rust), so no `protoc` is needed on the build machine.

use std::path::PathBuf;

/// Messages with a plaintext secret field.
const SECRET_BEARING: [&str; 3] = [
    ".hookrelay.v1.AgentEndpoint",
    ".hookrelay.v1.CreateEndpointResponse",
    ".hookrelay.v1.RotateEndpointSecretResponse",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files = ["admin.proto", "agent.proto", "emit.proto", "resources.proto"]
        .map(|file| proto_root.join("hookrelay/v1").join(file));
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let descriptors = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("hookrelay_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        .compile_well_known_types(false)
        // Messages that carry signing secrets get a hand-written Debug that redacts them (src/proto.rs).
        .skip_debug(SECRET_BEARING)
        // A request that does not decode is the caller's mistake: INVALID_ARGUMENT, not prost's INTERNAL.
        .codec_path("crate::proto::codec::ProstCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
