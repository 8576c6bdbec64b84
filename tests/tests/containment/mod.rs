//! Guests contained: a guest that traps, loops or hoards memory fails only its own call, guests
//! together stay within the process's memory budget, and the WASM preprocess gives its native
//! build's tensors.

use super::*;

#[test]
fn trapping_looping_and_hoarding_guests_are_contained() {
    let probe = guest("probe-rules");
    let server = Server::start(&["--rule", probe.to_str().unwrap(), "--guest-memory-bytes", "67108864"]);
    let case = &shapes(CLASSES_SEED, 2)[0];
    let good = read(&case.path);

    let (status, body, _) = server.classify(&good, "", &[("x-probe", "trap")]);
    assert_error(status, &body, 500, "guest_trap");
    assert_eq!(body["error"]["stage"], "rules");
    assert_still_serving(&server, &good, &case.label);

    let started = Instant::now();
    let (status, body, _) = server.classify(&good, "", &[("x-probe", "loop"), ("x-request-timeout-ms", "400")]);
    let elapsed = started.elapsed();
    assert_error(status, &body, 504, "deadline_exceeded");
    assert_eq!(body["error"]["stage"], "rules", "the error names the stage that ran out of time");
    assert!(elapsed < Duration::from_millis(1_500), "an endless loop took {elapsed:?} to stop with a 400 ms deadline");
    assert_still_serving(&server, &good, &case.label);

    let (status, body, _) = server.classify(&good, "", &[("x-probe", "oom")]);
    assert_error(status, &body, 500, "guest_memory_exceeded");
    assert_still_serving(&server, &good, &case.label);

    // A 32 MiB answer is refused before the host copies it (limits.guest_output_bytes, 4 MiB).
    let (status, body, _) = server.classify(&good, "", &[("x-probe", "huge")]);
    assert_error(status, &body, 500, "guest_failed");
    assert!(body["error"]["message"].as_str().unwrap().contains("guest_output_bytes"), "{body}");
    assert!(body.to_string().len() < 4096, "the error is small");
    assert_still_serving(&server, &good, &case.label);

    // Every request gets a fresh instance: a guest counting its calls in a global sees 1 each
    // time, however many requests came before.
    for _ in 0..3 {
        let (status, body, _) = server.classify(&good, "", &[("x-probe", "count")]);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["decision"]["reason"], "call 1 of this instance", "state leaked between requests: {body}");
    }

    // A guest that imports the host's inference interface can call the model.
    let (status, body, _) = server.classify(&good, "", &[("x-probe", "infer")]);
    assert_eq!(status, 200, "{body}");
    assert!(body["decision"]["reason"].as_str().unwrap().contains("returned 8 logits"), "{body}");

    // A guest calling the model 10 000 times is stopped at limits.guest_infer_calls (16).
    let (status, body, _) = server.classify(&good, "", &[("x-probe", "infer-flood")]);
    assert_error(status, &body, 500, "guest_failed");
    assert!(body["error"]["message"].as_str().unwrap().contains("guest_infer_calls (16)"), "{body}");
    assert_still_serving(&server, &good, &case.label);

    // A looping guest on one request does not stall the others.
    let slow = {
        let (url, good) = (server.url("/v1/classify"), good.clone());
        std::thread::spawn(move || {
            client()
                .post(url)
                .header("x-probe", "loop")
                .header("x-request-timeout-ms", "1500")
                .body(good)
                .send()
                .unwrap()
                .status()
        })
    };
    for _ in 0..5 {
        assert_still_serving(&server, &good, &case.label);
    }
    assert_eq!(slow.join().unwrap(), 504);
}

/// `limits.guest_memory_total_bytes`: guests alive at once share one budget. One holding 48 MiB
/// of a 96 MiB budget leaves too little for a second such guest (503, the host is busy, not the
/// request wrong) but enough for ordinary requests, and its memory comes back when it ends.
#[test]
fn guests_together_stay_within_the_process_memory_budget() {
    let probe = guest("probe-rules");
    let server = Server::start(&[
        "--rule",
        probe.to_str().unwrap(),
        "--guest-memory-bytes",
        "67108864",
        "--guest-memory-total-bytes",
        "100663296",
    ]);
    let case = &shapes(CLASSES_SEED, 2)[0];
    let good = read(&case.path);
    let in_use = || metrics::scrape(&server).get("tessera_guest_memory_bytes").copied().unwrap_or(-1.0);
    let wait_for = |what: &str, done: &dyn Fn(f64) -> bool| {
        let until = Instant::now() + Duration::from_secs(10);
        while !done(in_use()) {
            assert!(Instant::now() < until, "guest memory never {what}: {}", in_use());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(in_use(), 0.0, "no guest runs");

    let holder = {
        let (url, good) = (server.url("/v1/classify"), good.clone());
        std::thread::spawn(move || {
            let resp = client()
                .post(url)
                .header("x-probe", "hold")
                .header("x-request-timeout-ms", "2000")
                .body(good)
                .send()
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().unwrap())
        })
    };
    wait_for("reached 48 MiB", &|bytes| bytes >= f64::from(48 << 20));

    let (status, body, headers) = server.classify(&good, "", &[("x-probe", "hold")]);
    assert_error(status, &body, 503, "overloaded");
    assert!(body["error"]["message"].as_str().unwrap().contains("limits.guest_memory_total_bytes"), "{body}");
    assert_eq!(body["error"]["stage"], "rules", "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    for _ in 0..3 {
        assert_still_serving(&server, &good, &case.label);
    }

    let (status, body) = holder.join().unwrap();
    assert_error(status, &body, 504, "deadline_exceeded");
    wait_for("came back to 0", &|bytes| bytes == 0.0);
    // The whole budget is there again: a guest may take 48 MiB.
    let (status, body, _) = server.classify(&good, "", &[("x-probe", "hold"), ("x-request-timeout-ms", "300")]);
    assert_error(status, &body, 504, "deadline_exceeded");
    assert_still_serving(&server, &good, &case.label);
}

#[test]
fn the_wasm_preprocess_matches_its_native_build() {
    let mut config = tessera::Config::default();
    config.guests.preprocess = guest("preprocess");
    config.compile_cache_dir = Some(root().join("target/cache/components"));
    let wasm = tessera::Preprocessor::new(&config, &root().join("models/shapes/model.toml")).unwrap();
    let spec = tessera_preprocess::Spec {
        height: 224,
        width: 224,
        resize: 256,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
    let limits = tessera_preprocess::Limits {
        max_pixels: config.limits.max_image_pixels,
        max_alloc_bytes: config.limits.max_decode_alloc_bytes,
    };
    let mut images: Vec<Vec<u8>> = shapes(CLASSES_SEED, 2).iter().map(|c| read(&c.path)).collect();
    images.push(png(2000, 3)); // extreme aspect ratio
    images.push(png(3, 900));
    for image in &images {
        let a = wasm.run(image).unwrap();
        let b = tessera_preprocess::preprocess(image, &spec, &limits).unwrap();
        assert_eq!(a.len(), b.len());
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max < 1e-5, "WASM and native preprocess differ by {max}");
    }
}
