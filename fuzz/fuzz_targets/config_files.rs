#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_server::fuzz::config_files(data));
