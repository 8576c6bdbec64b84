//! The committed C header is what cbindgen makes of `src/lib.rs` today.

use std::path::Path;

#[test]
fn the_committed_header_is_what_cbindgen_generates_from_the_source() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("capi/cbindgen.toml");
    // with_src parses the one file the API lives in; no `cargo metadata`, no dependency parsing.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let committed_path = dir.join("include/tessera.h");
    if std::env::var_os("TESSERA_BLESS").is_some() {
        std::fs::write(&committed_path, &generated).expect("write include/tessera.h");
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "capi/include/tessera.h is stale: regenerate it with `TESSERA_BLESS=1 cargo test --release -p tessera-capi`"
    );
}
