//! Generates a gRPC client from the seed's `image_recognition.proto` exactly as the seed wrote
//! it (`proto/`, byte-identical to `../shared/seed/`): the tests call Tessera the way a seed
//! client does, so wire compatibility is tested, not assumed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let proto = root.join("image_recognition.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&root])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
