//! Build helper for the C and Go guests (`just guests`), so that building them needs no
//! `cargo install`: wit-bindgen's C and Go generators, called as libraries the way the
//! `wit-bindgen` command calls them, and the WASI preview1 → component adapter of the wasmtime
//! the host runs.
//!
//! ```text
//! tessera-bindgen c|go WIT_DIR WORLD OUT_DIR   bindings for WORLD into OUT_DIR
//! tessera-bindgen adapter OUT                  the preview1 reactor adapter
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use wit_bindgen_core::wit_parser::Resolve;
use wit_bindgen_core::{Files, WorldGenerator};

fn generate(mut generator: Box<dyn WorldGenerator>, wit: &Path, world: &str, out: &Path) -> anyhow::Result<()> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_path(wit).with_context(|| format!("reading {}", wit.display()))?;
    let world = resolve.select_world(&[package], Some(world))?;
    let mut files = Files::default();
    generator.generate(&mut resolve, world, &mut files)?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["c", wit, world, out] => generate(wit_bindgen_c::Opts::default().build(), wit.as_ref(), world, out.as_ref()),
        ["go", wit, world, out] => generate(wit_bindgen_go::Opts::default().build(), wit.as_ref(), world, out.as_ref()),
        ["adapter", out] => {
            let out = PathBuf::from(out);
            std::fs::write(&out, wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER)
                .with_context(|| format!("writing {}", out.display()))
        }
        _ => bail!("usage: tessera-bindgen c|go WIT_DIR WORLD OUT_DIR | adapter OUT"),
    }
}
