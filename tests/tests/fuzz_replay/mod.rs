//! The fuzz targets' committed corpus (`fuzz/corpus/<target>/`: the seeds and every input that
//! once broke a target), replayed on stable through the same entry points `just fuzz` fuzzes:
//! each input must pass the target's invariants (no panic, refusals are client errors).

use crate::support::root;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = root().join("fuzz/corpus").join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} has no inputs", dir.display());
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
            let message =
                panic.downcast_ref::<String>().cloned().or(panic.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("{target}: {} fails: {}", path.display(), message.unwrap_or_default());
        }
    }
    println!("{target}: {} inputs replayed", inputs.len());
}

#[test]
fn the_fuzz_corpus_replays_through_every_target() {
    use tessera_server::fuzz;
    replay("decode", tessera_preprocess::fuzz_decode);
    replay("http_request", fuzz::http_request);
    replay("oip_rest", fuzz::oip_rest);
    replay("oip_grpc", fuzz::oip_grpc);
    replay("tessera_grpc", fuzz::tessera_grpc);
    replay("config_files", fuzz::config_files);
}
