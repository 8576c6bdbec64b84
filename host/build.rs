//! The engines' versions for the `build_info` metric, from the lockfile (what was built).

use std::error::Error;
use std::path::PathBuf;

/// This package's directory, read when the script runs: cargo's hash of a path package does not
/// include where it is, so two checkouts sharing a target directory share this script's binary,
/// and a path compiled into it (`env!`) would be the other checkout's.
fn manifest_dir() -> Result<PathBuf, Box<dyn Error>> {
    Ok(PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?))
}

fn main() -> Result<(), Box<dyn Error>> {
    let lock_path = manifest_dir()?.join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock_path.display());
    let lock = std::fs::read_to_string(&lock_path)?;
    for (package, var) in [("wasmtime", "TESSERA_WASMTIME_VERSION"), ("tract-onnx", "TESSERA_TRACT_VERSION")] {
        let version = locked_version(&lock, package).ok_or(format!("{package} is not in Cargo.lock"))?;
        println!("cargo:rustc-env={var}={version}");
    }
    Ok(())
}

/// The version of `package` in a Cargo.lock (the first, if several).
fn locked_version(lock: &str, package: &str) -> Option<String> {
    let name_line = format!("name = \"{package}\"");
    let mut lines = lock.lines();
    lines.find(|l| *l == name_line)?;
    let version = lines.next()?.strip_prefix("version = \"")?.strip_suffix('"')?;
    Some(version.to_string())
}
