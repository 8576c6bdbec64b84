//! Tessera's end-to-end tests live in `tests/tessera.rs` (one integration-test binary); this
//! crate has no library code of its own.
