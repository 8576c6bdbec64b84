#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera::internals::fuzz::config_files(data));
