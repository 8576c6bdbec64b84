//! Generates the gRPC client for the seed's `image_recognition.proto` (the repository's copy in
//! `proto/`, byte-identical to the seed's) with `protox`: no system `protoc` needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not compiled in: a path package's hash does not include where it
    // is, so two checkouts sharing a target directory share this script's binary.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = root.join("image_recognition.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&root])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
