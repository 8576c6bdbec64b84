//! The model repository: unreadable directories and labels that stay inside them, hostile models
//! that fail alone within the load bounds, how the default model is chosen, and versions and
//! guests swapped under load without a failed request.

use super::*;

/// Polls `/v1/models/shapes` until `ready` holds, for at most 30 s.
fn wait_for_models(server: &Server, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let status: Value = client().get(server.url("/v1/models/shapes")).send().unwrap().json().unwrap();
        if ready(&status) {
            return status;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A model directory that cannot be read is listed as failed with its reason (not only
/// logged); `labels` cannot make the server read a file outside the model's directory, by
/// `..`, an absolute path or a symlink; the listing shows no server paths.
#[test]
fn unreadable_model_directories_are_listed_failed_and_labels_stay_inside_them() {
    let base = root().join(format!("target/test-data/broken-models-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let models = base.join("models");
    let shapes_dir = root().join("models/shapes");
    let manifest = std::fs::read_to_string(shapes_dir.join("model.toml")).unwrap();
    for name in ["shapes", "dotdot", "absolute", "symlink", "garbled"] {
        for f in ["model.toml", "labels.txt", "1/model.onnx"] {
            install(&shapes_dir.join(f), &models.join(name).join(f));
        }
    }
    let labels = |name: &str, labels: &str| {
        let toml = manifest.replace("labels = \"labels.txt\"", &format!("labels = {labels:?}"));
        assert_ne!(toml, manifest, "the manifest names its labels as expected");
        std::fs::write(models.join(name).join("model.toml"), toml).unwrap();
    };
    labels("dotdot", "../shapes/labels.txt");
    labels("absolute", shapes_dir.join("labels.txt").to_str().unwrap());
    labels("symlink", "outside.txt");
    std::os::unix::fs::symlink(shapes_dir.join("labels.txt"), models.join("symlink/outside.txt")).unwrap();
    std::fs::write(models.join("garbled/model.toml"), "input_shape = [1, 3,\n").unwrap();

    let server = Server::start(&["--models", models.to_str().unwrap(), "--default-model", "shapes"]);
    let listing: Value = client().get(server.url("/v1/models")).send().unwrap().json().unwrap();
    let entry = |name: &str| {
        listing["models"].as_array().unwrap().iter().find(|m| m["name"] == name).cloned().unwrap_or_else(|| {
            panic!("{name} is not listed: {listing}");
        })
    };
    assert_eq!(entry("shapes")["ready_versions"], serde_json::json!(["1"]), "{listing}");
    assert!(entry("shapes").get("error").is_none(), "{listing}");
    for (name, says) in [
        ("dotdot", "inside the model directory"),
        ("absolute", "inside the model directory"),
        ("symlink", "outside the model directory"),
        ("garbled", "model.toml"),
    ] {
        let model = entry(name);
        assert_eq!(model["state"], "failed", "{model}");
        assert_eq!(model["ready_versions"], serde_json::json!([]), "{model}");
        assert!(model["error"].as_str().unwrap().contains(says), "{name}: {model}");
    }
    let one: Value = client().get(server.url("/v1/models/garbled")).send().unwrap().json().unwrap();
    assert_eq!(one["state"], "failed", "{one}");
    let text = listing.to_string();
    for private in [base.to_str().unwrap(), root().to_str().unwrap()] {
        assert!(!text.contains(private), "the listing shows a server path ({private}): {text}");
    }
    let (status, body, _) = server.classify(&read(&shapes(CLASSES_SEED, 2)[0].path), "?model=dotdot", &[]);
    assert_error(status, &body, 404, "model_not_found");
    assert_still_serving(&server, &read(&shapes(CLASSES_SEED, 2)[0].path), &shapes(CLASSES_SEED, 2)[0].label);
    drop(server);
    let _ = std::fs::remove_dir_all(&base);
}

/// A model file that makes its engine allocate without bound while it loads (an `Expand` of one
/// constant to 60000 × 60000 floats, 14.4 GB, folded at load) or that takes too long to load and
/// run once fails alone, with the bound it hit, at start and on a hot reload; the server never
/// allocates it (each new version is first loaded in a memory- and time-bounded child process)
/// and keeps serving the others. A server told to stop while a load runs exits at once.
#[test]
fn hostile_models_fail_alone_within_load_bounds_and_a_stop_during_a_load_is_prompt() {
    let base = root().join(format!("target/test-data/hostile-models-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let models = base.join("models");
    let shapes_dir = root().join("models/shapes");
    for f in ["model.toml", "labels.txt", "1/model.onnx"] {
        install(&shapes_dir.join(f), &models.join("shapes").join(f));
    }
    let fixtures = root().join("tests/fixtures/models");
    for (name, file) in [("bomb", "expand-bomb.onnx"), ("slow", "slow.onnx")] {
        let manifest = std::fs::read_to_string(shapes_dir.join("model.toml")).unwrap();
        std::fs::create_dir_all(models.join(name)).unwrap();
        std::fs::write(models.join(name).join("model.toml"), manifest).unwrap();
        std::fs::write(models.join(name).join("labels.txt"), "a\nb\nc\n").unwrap();
        install(&fixtures.join(file), &models.join(name).join("1/model.onnx"));
    }
    let models_arg = models.to_str().unwrap();
    let image = read(&shapes(CLASSES_SEED, 1)[0].path);
    let label = shapes(CLASSES_SEED, 1)[0].label.clone();

    // slow.onnx runs for seconds (40 matmuls of 672 x 2048 x 2048): past a 1.5 s bound.
    let server = Server::start(&[
        "--models",
        models_arg,
        "--default-model",
        "shapes",
        "--model-load-timeout-ms",
        "1500",
        "--model-load-memory-bytes",
        &(4u64 << 30).to_string(),
    ]);
    let listing: Value = client().get(server.url("/v1/models")).send().unwrap().json().unwrap();
    let reason = |name: &str| {
        let model = listing["models"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap().clone();
        assert_eq!(model["ready_versions"], serde_json::json!([]), "{model}");
        assert_eq!(model["versions"][0]["state"], "failed", "{model}");
        model["versions"][0]["reason"].as_str().unwrap().to_string()
    };
    let bomb = reason("bomb");
    assert!(bomb.contains("failed to allocate") && bomb.contains("model_load_memory_bytes (4096 MiB)"), "{bomb}");
    let slow = reason("slow");
    assert!(slow.contains("limits.model_load_timeout_ms (1500 ms)"), "{slow}");
    assert_still_serving(&server, &image, &label);
    // The bomb never reached the server's own memory.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let peak_kib: u64 =
        status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(peak_kib < 1 << 20, "the server's peak RSS is {peak_kib} KiB");

    // The same file copied in as a new version of a serving model: that version fails, the
    // last good one keeps serving.
    install(&fixtures.join("expand-bomb.onnx"), &models.join("shapes/2/model.onnx"));
    let report: Value = client().post(server.admin_url("/v1/admin/reload")).send().unwrap().json().unwrap();
    let shapes_now = wait_for_models(&server, "version 2 to fail", |m| m["versions"].to_string().contains("failed"));
    assert_eq!(shapes_now["ready_versions"], serde_json::json!(["1"]), "{shapes_now} after {report}");
    assert!(shapes_now["versions"].to_string().contains("failed to allocate"), "{shapes_now}");
    let (status, body, _) = server.classify(&image, "", &[]);
    assert_eq!((status, body["model"]["version"].as_str()), (200, Some("1")), "{body}");
    assert_still_serving(&server, &image, &label);
    drop(server);

    // Stopped while slow.onnx's probe runs (no time bound this time): the server exits at once
    // and leaves no probe behind.
    std::fs::remove_dir_all(models.join("shapes/2")).unwrap();
    let mut child = std::process::Command::new(support::tessera_bin())
        .current_dir(root())
        .args(["serve", "--addr", "127.0.0.1:0", "--grpc-addr", "off", "--admin-addr", "off", "--no-watch"])
        .args(["--models", models_arg, "--default-model", "shapes"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let probing = Instant::now() + Duration::from_secs(30);
    let probe_of_slow = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("probe-model {models_arg}/slow")])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    };
    while !probe_of_slow() {
        assert!(Instant::now() < probing, "slow.onnx's load probe never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = Instant::now();
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let code = child.wait().unwrap();
    let took = stopped.elapsed();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(code.success(), "{code}: {log}");
    assert!(took < Duration::from_secs(2), "SIGTERM during a load took {took:?} to stop the server: {log}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!probe_of_slow(), "a load probe outlived its server: {log}");
    let _ = std::fs::remove_dir_all(&base);
}

/// The model a request without `model` gets is the configured one, else the repository's
/// (`repository.toml`), else the only one; with several and none named, the request is told to
/// name one. A directory whose name sorts first never takes over.
#[test]
fn the_default_model_is_configured_or_the_only_one_never_the_first_by_name() {
    let base = root().join(format!("target/test-data/default-model-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let models = base.join("models");
    for name in ["shapes", "a-copy"] {
        for f in ["model.toml", "labels.txt", "1/model.onnx"] {
            install(&root().join("models/shapes").join(f), &models.join(name).join(f));
        }
    }
    let case = &shapes(CLASSES_SEED, 2)[0];
    let image = read(&case.path);
    let server = Server::start(&["--models", models.to_str().unwrap()]);
    let (status, body, _) = server.classify(&image, "", &[]);
    assert_error(status, &body, 400, "bad_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("name a model"), "{body}");
    let (status, body, _) = server.classify(&image, "?model=shapes", &[]);
    assert_eq!((status, body["model"]["name"].as_str()), (200, Some("shapes")), "{body}");
    let listing: Value = client().get(server.url("/v1/models")).send().unwrap().json().unwrap();
    assert!(listing["models"].as_array().unwrap().iter().all(|m| m["default"] == false), "{listing}");

    // The repository's owner names one; a reload picks it up.
    std::fs::write(models.join("repository.toml"), "default_model = \"shapes\"\n").unwrap();
    let reload = client().post(server.admin_url("/v1/admin/reload")).send().unwrap();
    assert_eq!(reload.status(), 200);
    let (status, body, _) = server.classify(&image, "", &[]);
    assert_eq!((status, body["model"]["name"].as_str()), (200, Some("shapes")), "{body}");
    drop(server);

    // The host's config wins over the repository's.
    let server = Server::start(&["--models", models.to_str().unwrap(), "--default-model", "a-copy"]);
    let (status, body, _) = server.classify(&image, "", &[]);
    assert_eq!((status, body["model"]["name"].as_str()), (200, Some("a-copy")), "{body}");
    drop(server);

    // One model: it is the default.
    std::fs::remove_file(models.join("repository.toml")).unwrap();
    std::fs::remove_dir_all(models.join("shapes")).unwrap();
    let server = Server::start(&["--models", models.to_str().unwrap()]);
    let (status, body, _) = server.classify(&image, "", &[]);
    assert_eq!((status, body["model"]["name"].as_str()), (200, Some("a-copy")), "{body}");
    drop(server);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn versions_and_guests_swap_under_load_without_a_failed_request() {
    // A private model repository and guest directory this test may change under the server.
    let base = root().join(format!("target/test-data/hot-swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (models, guests) = (base.join("models"), base.join("guests"));
    let shapes_dir = root().join("models/shapes");
    let onnx = shapes_dir.join("1/model.onnx");
    for f in ["model.toml", "labels.txt"] {
        install(&shapes_dir.join(f), &models.join("shapes").join(f));
    }
    let toml = models.join("shapes/model.toml");
    let manifest = std::fs::read_to_string(&toml).unwrap() + "version_policy = \"all\"\n";
    std::fs::write(&toml, manifest).unwrap();
    install(&onnx, &models.join("shapes/1/model.onnx"));
    install(&guest("postprocess"), &guests.join("postprocess.wasm"));
    // The cap is named so the pool's warm-slot bound below does not depend on this machine's cores.
    let server = Server::start(&[
        "--models",
        models.to_str().unwrap(),
        "--postprocess",
        guests.join("postprocess.wasm").to_str().unwrap(),
        "--max-concurrent-requests",
        "4",
    ]);
    let case = &shapes(CLASSES_SEED, 2)[0];
    let good = read(&case.path);

    // Two clients classify in a loop for the whole test; every answer must be a 200.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (url, good, stop, label) = (server.url("/v1/classify"), good.clone(), stop.clone(), case.label.clone());
            std::thread::spawn(move || {
                let (client, mut seen) = (client(), std::collections::BTreeMap::<String, usize>::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let resp = client.post(&url).body(good.clone()).send().unwrap();
                    let status = resp.status();
                    let body: Value = resp.json().unwrap();
                    assert_eq!(status, 200, "{body}");
                    assert_eq!(body["label"], label.as_str());
                    *seen.entry(body["model"]["version"].as_str().unwrap().to_string()).or_default() += 1;
                }
                seen
            })
        })
        .collect();

    // Add version 2: the watcher loads it and new requests move to it.
    install(&onnx, &models.join("shapes/2/model.onnx"));
    wait_for_models(&server, "version 2", |m| m["ready_versions"] == serde_json::json!(["1", "2"]));
    assert_eq!(server.classify(&good, "", &[]).1["model"]["version"], "2");
    assert_eq!(server.classify(&good, "?version=1", &[]).1["model"]["version"], "1");

    // A broken version 3 is reported and never serves; version 2 keeps serving.
    std::fs::create_dir_all(models.join("shapes/3")).unwrap();
    std::fs::write(models.join("shapes/3/model.onnx.partial"), b"not an onnx model").unwrap();
    std::fs::rename(models.join("shapes/3/model.onnx.partial"), models.join("shapes/3/model.onnx")).unwrap();
    let status = wait_for_models(&server, "version 3 to fail", |m| {
        m["versions"].as_array().unwrap().iter().any(|v| v["version"] == "3" && v["state"] == "failed")
    });
    assert!(status["versions"][2]["reason"].as_str().unwrap().contains("model.onnx"), "{status}");
    assert_eq!(server.classify(&good, "", &[]).1["model"]["version"], "2");
    std::fs::remove_dir_all(models.join("shapes/3")).unwrap();

    // Replace version 2 in place, remove version 1, and swap the postprocess guest.
    install(&onnx, &models.join("shapes/2/model.onnx"));
    std::fs::remove_dir_all(models.join("shapes/1")).unwrap();
    wait_for_models(&server, "version 1 to go", |m| m["ready_versions"] == serde_json::json!(["2"]));
    install(&guest("postprocess"), &guests.join("postprocess.wasm"));
    // An explicit reload (loopback needs no token) reports what it did.
    let report: Value = client().post(server.admin_url("/v1/admin/reload")).send().unwrap().json().unwrap();
    assert!(report["guests"] == "reloaded" || report["guests"] == "unchanged", "{report}");
    assert_eq!(server.classify(&good, "?version=1", &[]).0, 404);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for handle in load {
        for (version, n) in handle.join().unwrap() {
            *seen.entry(version).or_default() += n;
        }
    }
    println!("requests served per version during the swaps: {seen:?}");
    assert!(seen.contains_key("1") && seen.contains_key("2"), "{seen:?}");
    assert!(server.stderr().contains("guest components reloaded"), "{}", server.stderr());

    // Reloaded guests reuse the pool slots their predecessors warmed: each reload makes new
    // modules, and with wasmtime's default (cold slots first until 100 are warm) every one took
    // a fresh slot, which keeps up to limits.guest_keep_resident_bytes resident after its module
    // is gone: RSS grew with every reload. Now the warm slots stay within one spare per request
    // (4 here) plus the slots the requests themselves used at once; 12 reloads of 3 guests would
    // have left 36 or more.
    for _ in 0..12 {
        install(&guest("postprocess"), &guests.join("postprocess.wasm"));
        let report: Value = client().post(server.admin_url("/v1/admin/reload")).send().unwrap().json().unwrap();
        // The watcher may have seen the new file first.
        assert!(report["guests"] == "reloaded" || report["guests"] == "unchanged", "{report}");
        assert_eq!(server.classify(&good, "", &[]).0, 200);
    }
    let reloads = server.stderr().matches("guest components reloaded").count();
    assert!(reloads >= 13, "{reloads} guest reloads logged");
    let warm = metrics::scrape(&server)["tessera_guest_pool_warm_memories"];
    assert!((1.0..=16.0).contains(&warm), "{warm} warm guest memory slots after 12 guest reloads");
    let _ = std::fs::remove_dir_all(&base);
}
