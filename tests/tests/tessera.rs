//! End-to-end tests: the real `tessera` binary over HTTP and gRPC on ephemeral loopback ports,
//! and the library's embedding API, one module per theme. Guests and the binary are built by
//! `just test` first. What the themes share (seeds, labels, error checks) is here; the servers,
//! clients and images are in `support/`.

mod containment;
mod deploy;
mod edge;
mod embedding;
mod engines;
mod fuzz_replay;
mod grpc;
mod http_api;
mod languages;
mod metrics;
mod oip;
mod page;
mod pipelines;
mod repository;
mod resilience;
mod support;
mod tasks;
mod telemetry;
mod wasi;

use std::time::{Duration, Instant};

use serde_json::Value;

use support::{
    Server, bmp_header, client, finish_upload, guest, jpeg, png, png_rgba16_header, raw_exchange, root, shapes,
    start_upload,
};

/// Seeds of held-out image sets: never used by models/tools/train.py (1 and 1001).
const CLASSES_SEED: u64 = 9_001;
const ACCURACY_SEED: u64 = 424_242;

/// Held-out images for the int8 agreement test (quantize.py calibrates on seed 77).
const INT8_SEED: u64 = 515_151;

const LABELS: [&str; 8] = ["circle", "square", "triangle", "star", "cross", "ring", "crescent", "hexagon"];

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn assert_error(status: u16, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(e["stage"].is_string(), "{body}");
    assert!(e["request_id"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

/// After any error the server must still classify correctly.
fn assert_still_serving(server: &Server, image: &[u8], label: &str) {
    let (status, body, _) = server.classify(image, "", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["label"], label, "{body}");
}

/// Copies `src` to `dst` through a temporary file and a rename, as a deployment should, so
/// the watcher never sees a half-written file.
fn install(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    let tmp = dst.with_extension("partial");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}
