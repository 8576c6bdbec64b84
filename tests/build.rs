//! Generates a gRPC client from the seed's `image_recognition.proto` exactly as the seed wrote
//! it (`proto/`, byte-identical to `../shared/seed/`): the tests call Tessera the way a seed
//! client does, so wire compatibility is tested, not assumed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not compiled in: a path package's hash does not include where it
    // is, so two checkouts sharing a target directory share this script's binary.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let proto = root.join("image_recognition.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&root])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
