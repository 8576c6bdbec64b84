#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::internals::fuzz::tessera_grpc(data));
