//! WASI for guests, denied by default: a rules guest built for `wasm32-wasip2`
//! (`tests/guests/probe-wasi`, whose standard library imports WASI as other languages' runtimes
//! do) loads, sees an empty environment and no files, reaches the clock it is granted, writes
//! into the host's log within a budget, and a call to an interface it was not given (a socket)
//! fails the request naming the function, while the host keeps serving.

use crate::support::{Server, config_with_rules, guest, root, shapes};
use crate::{CLASSES_SEED, read};

/// Bytes of `guest`'s output its budgets dropped, every stream and budget together.
fn dropped_output(server: &Server, guest: &str) -> f64 {
    crate::metrics::scrape(server)
        .iter()
        .filter(|(k, _)| k.starts_with("tessera_guest_output_dropped_bytes_total{") && k.contains(guest))
        .map(|(_, v)| v)
        .sum()
}

fn reason(body: &serde_json::Value) -> &str {
    body["decision"]["reason"].as_str().unwrap_or_default()
}

#[test]
fn a_wasi_guest_gets_nothing_it_was_not_granted() {
    // The default grants (clocks, random) plus stdout through a config file.
    let dir = root().join(format!("target/test-data/wasi-{}", std::process::id()));
    let probe = guest("probe-wasi");
    let config = config_with_rules(
        &dir,
        &format!("[[guests.rules]]\npath = {probe:?}\nwasi = [\"clocks\", \"random\", \"stdout\"]\n"),
    );
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let case = &shapes(CLASSES_SEED, 2)[0];
    let image = read(&case.path);
    let probe_with = |what: &str| server.classify(&image, "", &[("x-probe", what), ("x-request-id", what)]);

    let (status, body, _) = probe_with("env");
    assert_eq!(status, 200, "{body}");
    assert_eq!(reason(&body), "env: 0 vars, 0 args", "{body}");

    let (status, body, _) = probe_with("file");
    assert_eq!(status, 200, "{body}");
    assert!(reason(&body).starts_with("file: ") && !reason(&body).contains("read"), "{body}");

    let (status, body, _) = probe_with("clock");
    assert_eq!(status, 200, "{body}");
    assert_eq!(reason(&body), "clock: true", "granted clocks tell the time: {body}");

    // stdout is granted: a line reaches the log with its guest and request; stderr is not: gone.
    let (status, body, _) = probe_with("print");
    assert_eq!(status, 200, "{body}");
    let log = server.stderr();
    let line =
        log.lines().find(|l| l.contains("probe-wasi says hello on stdout")).expect("the guest's line in the log");
    assert!(line.contains("request_id=\"print\"") && line.contains("guest=probe-wasi"), "{line}");
    assert!(!log.contains("hello on stderr"), "stderr was not granted");

    // 64 MiB of output costs the host a counter: the request answers, the log stays small, and
    // a second flood is counted as well but not warned about again within the minute.
    for _ in 0..2 {
        let (status, body, _) = probe_with("flood");
        assert_eq!(status, 200, "{body}");
    }
    let log = server.stderr();
    assert_eq!(log.matches("guest output over its budget was dropped").count(), 1, "{log}");
    assert!(log.len() < 1 << 20, "the log grew to {} bytes", log.len());
    let dropped = dropped_output(&server, "probe-wasi");
    assert!(dropped >= f64::from(2 * ((64 << 20) - (16 << 10))), "counted {dropped} bytes dropped");

    // Sockets were never granted: the call traps, naming the function, and the host serves on.
    let (status, body, _) = probe_with("net");
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "guest_trap", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("wasi:sockets/"), "the trap names the denied function: {message}");
    let (status, body, _) = probe_with("accept");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["label"], case.label.as_str());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A guest granted stdout that writes 4 GiB to it in one call is answered, and costs the host a
/// counter: the log keeps its 16 KiB, and the server's RSS after 60 more requests is within
/// 16 MiB of what it was after 60 before (nothing of the output is held).
#[test]
fn four_gib_of_guest_output_cost_the_host_a_counter() {
    let dir = root().join(format!("target/test-data/wasi-flood-{}", std::process::id()));
    let probe = guest("probe-wasi");
    let config = config_with_rules(&dir, &format!("[[guests.rules]]\npath = {probe:?}\nwasi = [\"stdout\"]\n"));
    let server = Server::start(&["--config", config.to_str().unwrap(), "--deadline-ms", "60000"]);
    let case = &shapes(CLASSES_SEED, 1)[0];
    let image = read(&case.path);
    let sixty = || {
        for _ in 0..60 {
            let (status, body, _) = server.classify(&image, "", &[]);
            assert_eq!((status, reason(&body)), (200, "probe accepts"), "{body}");
        }
    };
    sixty();
    let rss_before = crate::languages::rss_bytes(server.pid());
    let started = std::time::Instant::now();
    let (status, body, _) = server.classify(&image, "", &[("x-probe", "flood"), ("x-probe-mib", "4096")]);
    let took = started.elapsed();
    assert_eq!((status, reason(&body)), (200, "flood: 4096 MiB"), "{body}");
    sixty();
    let rss_after = crate::languages::rss_bytes(server.pid());
    eprintln!("4 GiB of output answered in {took:?}; RSS {} -> {} MiB", rss_before >> 20, rss_after >> 20);
    assert!(rss_after <= rss_before + (16 << 20), "RSS grew from {} to {} MiB", rss_before >> 20, rss_after >> 20);
    assert!(server.stderr().len() < 1 << 20, "the log grew to {} bytes", server.stderr().len());
    let dropped = dropped_output(&server, "probe-wasi");
    assert!(dropped >= 4096.0 * f64::from(1 << 20) - f64::from(16 << 10), "counted {dropped} bytes dropped");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The preprocess stage gets the WASI its pipeline grants and nothing else
/// (`tests/guests/probe-preprocess`, which writes to stderr on every call and reads the clock
/// when the image is `clock`): granted stderr reaches the log with the guest's name, ungranted
/// goes nowhere, and an ungranted clock traps naming itself.
#[test]
fn a_preprocess_guest_gets_the_wasi_its_pipeline_grants() {
    let dir = root().join(format!("target/test-data/wasi-preprocess-{}", std::process::id()));
    let probe = guest("probe-preprocess");
    let config = config_with_rules(
        &dir,
        &format!(
            "[[guests.rules]]\npath = {:?}\n\
             [pipelines.granted]\npreprocess = {probe:?}\npreprocess_wasi = [\"stderr\", \"clocks\"]\n\
             [pipelines.denied]\npreprocess = {probe:?}\npreprocess_wasi = []\n",
            guest("rules-threshold")
        ),
    );
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let image = read(&shapes(CLASSES_SEED, 1)[0].path);
    let hellos = || server.stderr().matches("probe-preprocess says hello on stderr").count();

    let (status, body, _) = server.classify(&image, "?pipeline=granted", &[("x-request-id", "granted")]);
    assert_eq!(status, 200, "{body}");
    let log = server.stderr();
    let line = log.lines().find(|l| l.contains("probe-preprocess says hello")).expect("the guest's line in the log");
    assert!(line.contains("guest=probe-preprocess") && line.contains("request_id=\"granted\""), "{line}");
    let (status, body, _) = server.classify(&image, "?pipeline=denied", &[]);
    assert_eq!((status, hellos()), (200, 1), "stderr not granted: nothing more in the log; {body}");

    let (status, body, _) = server.classify(b"clock", "?pipeline=granted", &[("content-type", "image/png")]);
    assert_eq!(status, 200, "{body}");
    assert!(server.stderr().contains("probe-preprocess read the clock: true"));
    let (status, body, _) = server.classify(b"clock", "?pipeline=denied", &[("content-type", "image/png")]);
    assert_eq!(
        (status, body["error"]["code"].as_str(), body["error"]["stage"].as_str()),
        (500, Some("guest_trap"), Some("preprocess")),
        "{body}"
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("wasi:clocks/wall-clock"), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guest_without_its_clock_grant_traps_naming_the_clock() {
    let dir = root().join(format!("target/test-data/wasi-none-{}", std::process::id()));
    let config = config_with_rules(&dir, &format!("[[guests.rules]]\npath = {:?}\nwasi = []\n", guest("probe-wasi")));
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let image = read(&shapes(CLASSES_SEED, 2)[0].path);
    let (status, body, _) = server.classify(&image, "", &[("x-probe", "clock")]);
    assert_eq!(status, 500, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("wasi:clocks/wall-clock"), "{message}");
    // What it was granted still works.
    let (status, body, _) = server.classify(&image, "", &[("x-probe", "env")]);
    assert_eq!(status, 200, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_component_with_imports_no_one_provides_is_refused_naming_all_of_them() {
    let dir = root().join(format!("target/test-data/wasi-unknown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (wat, wasm) = (dir.join("acme.wat"), dir.join("acme.wasm"));
    std::fs::write(
        &wat,
        "(component (import \"acme:db/query\" (instance)) (import \"acme:net/fetch@1.0.0\" (instance)))",
    )
    .unwrap();
    let status = std::process::Command::new(root().join(".venv/bin/wasm-tools"))
        .arg("parse")
        .arg(&wat)
        .arg("-o")
        .arg(&wasm)
        .status()
        .unwrap();
    assert!(status.success());
    let case = &shapes(CLASSES_SEED, 2)[0];
    let out = std::process::Command::new(crate::support::tessera_bin())
        .current_dir(root())
        .args(["classify", "--no-watch", "--rule"])
        .arg(&wasm)
        .arg(&case.path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("acme:db/query") && stderr.contains("acme:net/fetch@1.0.0"),
        "every import named: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inspect_says_how_a_component_would_load() {
    let inspect = |component: &std::path::Path, grants: &str| {
        let out = std::process::Command::new(crate::support::tessera_bin())
            .current_dir(root())
            .args(["inspect", "--json", "--wasi", grants])
            .arg(component)
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report)
    };
    let (code, report) = inspect(&guest("probe-wasi"), "clocks");
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["world"], "rules");
    assert_eq!(report["fits"], serde_json::json!({"Ok": null}), "{report}");
    assert_eq!(report["exports"], serde_json::json!(["decide"]));
    let status = |name: &str| {
        report["imports"].as_array().unwrap().iter().find(|i| i["name"].as_str().unwrap().starts_with(name)).unwrap()
            ["status"]
            .clone()
    };
    assert_eq!(status("wasi:clocks/wall-clock"), "granted");
    assert_eq!(status("wasi:cli/environment"), "linked");
    assert_eq!(status("wasi:sockets/tcp-create-socket"), "not granted");
    assert_eq!(status("tessera:vision/types"), "tessera");

    let (code, report) = inspect(&guest("preprocess"), "");
    assert_eq!((code, &report["world"]), (Some(0), &serde_json::json!("preprocessor")), "{report}");

    // Without --wasi, a component the config uses is inspected with the grants it has there,
    // and every place it has is reported: the preprocess stage's grants, as a rule's.
    let dir = root().join(format!("target/test-data/inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tessera.toml");
    let preprocess = guest("preprocess");
    std::fs::write(
        &config,
        format!(
            "[guests]\npreprocess = {preprocess:?}\npreprocess_wasi = []\n\
             [pipelines.debug]\npreprocess_wasi = [\"stderr\", \"clocks\"]\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(crate::support::tessera_bin())
        .current_dir(root())
        .arg("--config")
        .arg(&config)
        .args(["inspect", "--json"])
        .arg(&preprocess)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["grants"], serde_json::json!([]), "{report}");
    assert_eq!(
        report["configured"],
        serde_json::json!([
            {"pipeline": "default", "stage": "preprocess", "wasi": []},
            {"pipeline": "debug", "stage": "preprocess", "wasi": ["stderr", "clocks"]},
        ]),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_compile_cache_is_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = root().join(format!("target/test-data/cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let inspect = || {
        std::process::Command::new(crate::support::tessera_bin())
            .current_dir(root())
            .arg("--compile-cache-dir")
            .arg(&dir)
            .arg("inspect")
            .arg(guest("rules-threshold"))
            .output()
            .unwrap()
    };
    let out = inspect();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "a cache others could write to is narrowed to its owner");
    // Owned by someone else (only root can arrange that): refused, since its code would run here.
    if std::os::unix::fs::chown(&dir, Some(65534), None).is_ok() {
        let out = inspect();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("is owned by user 65534"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
