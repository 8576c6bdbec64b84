//! Task guests (`world task`, `[tasks.<name>]`, `POST /v1/tasks/{name}`): the whole request in
//! one guest, calling the host's models through `engines`. `guests/task-classify` is the default
//! classification as a task: it must answer what `/v1/classify` answers, call only the models its
//! config names, and fail a bad request or an unknown task with a clear error.

use serde_json::Value;

use crate::support::{Server, client, config_with_rules, guest, root, shapes};
use crate::{CLASSES_SEED, assert_error, read};

fn task_server(dir_name: &str) -> (Server, std::path::PathBuf) {
    let dir = root().join(format!("target/test-data/{dir_name}-{}", std::process::id()));
    let config = config_with_rules(
        &dir,
        &format!(
            "[[guests.rules]]\npath = {:?}\n[tasks.classify]\npath = {:?}\nmodels = [\"shapes\"]\n",
            guest("rules-threshold"),
            guest("task-classify")
        ),
    );
    (Server::start(&["--config", config.to_str().unwrap()]), dir)
}

fn run_task(server: &Server, task: &str, body: &[u8], query: &str) -> (u16, Value) {
    let resp = client()
        .post(server.url(&format!("/v1/tasks/{task}{query}")))
        .header("content-type", "image/png")
        .body(body.to_vec())
        .send()
        .expect("request failed");
    let status = resp.status().as_u16();
    (status, resp.json().expect("a JSON body"))
}

#[test]
fn a_classification_task_answers_what_the_pipeline_answers() {
    let (server, dir) = task_server("tasks");
    let cases = shapes(CLASSES_SEED, 4);
    for case in &cases {
        let image = read(&case.path);
        let (status, body) = run_task(&server, "classify", &image, "?top_k=3");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["task"], "classify", "{body}");
        let classes = body["answer"]["classes"].as_array().expect("a classes answer");
        assert_eq!(classes.len(), 3, "{body}");
        assert_eq!(classes[0]["label"], case.label.as_str(), "{body}");
        assert_eq!(body["guests"][0]["stage"], "task", "{body}");
        assert!(body["timings_ms"]["task"].as_f64().unwrap() > 0.0, "{body}");

        let (status, pipeline, _) = server.classify(&image, "?top_k=3", &[]);
        assert_eq!(status, 200, "{pipeline}");
        for (a, b) in classes.iter().zip(pipeline["top_k"].as_array().unwrap()) {
            assert_eq!(a["label"], b["label"], "task {body} vs pipeline {pipeline}");
            let (x, y) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
            assert!((x - y).abs() < 1e-4, "task score {x} vs pipeline {y}");
        }
    }

    // Counted per task and outcome.
    let counted = |outcome: &str| {
        crate::metrics::scrape(&server)
            .iter()
            .filter(|(k, _)| {
                k.starts_with("tessera_task_duration_seconds_count{")
                    && k.contains("task=\"classify\"")
                    && k.contains(&format!("outcome=\"{outcome}\""))
            })
            .map(|(_, v)| *v)
            .sum::<f64>()
    };
    assert_eq!(counted("ok"), cases.len() as f64);

    let body: Value = client().get(server.url("/v1/tasks")).send().unwrap().json().unwrap();
    assert_eq!(
        body["tasks"],
        serde_json::json!([{"name": "classify", "guest": "task-classify", "models": ["shapes"], "wasi": ["clocks", "random"]}])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_task_gets_a_clear_error_for_what_it_may_not_do() {
    let (server, dir) = task_server("tasks-bad");
    let image = read(&shapes(CLASSES_SEED, 1)[0].path);

    // A model its config does not name, though the repository has it.
    let (status, body) = run_task(&server, "classify", &image, "?model=shapes-int8");
    assert_error(status, &body, 400, "bad_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("may not call model \"shapes-int8\""), "{body}");
    assert_eq!(body["error"]["stage"], "task", "{body}");

    // The task's own checks and the image decoder's.
    let (status, body) = run_task(&server, "classify", &image, "?top_k=0");
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = run_task(&server, "classify", b"not an image", "");
    assert_error(status, &body, 400, "bad_request");

    // No such task, and names that could not be one.
    let (status, body) = run_task(&server, "nope", &image, "");
    assert_error(status, &body, 404, "task_not_found");
    assert!(body["error"]["message"].as_str().unwrap().contains("configured: classify"), "{body}");
    let (status, body) = run_task(&server, "..%2Fetc", &image, "");
    assert_error(status, &body, 404, "task_not_found");

    // GET is not how a task runs.
    let resp = client().get(server.url("/v1/tasks/classify")).send().unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap();
    assert_eq!((status, &body["error"]["code"]), (405, &serde_json::json!("method_not_allowed")), "{body}");

    // The server serves on.
    let (status, body) = run_task(&server, "classify", &image, "");
    assert_eq!(status, 200, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A hostile task guest (`tests/guests/probe-task`) is contained like a hostile rule: each
/// misbehaviour gets its clear error, and the server serves on.
#[test]
fn hostile_tasks_are_contained() {
    let dir = root().join(format!("target/test-data/tasks-hostile-{}", std::process::id()));
    let config = config_with_rules(
        &dir,
        &format!(
            "[[guests.rules]]\npath = {:?}\n[tasks.probe]\npath = {:?}\nmodels = [\"shapes\"]\n\
             [tasks.classify]\npath = {:?}\nmodels = [\"shapes\"]\n",
            guest("rules-threshold"),
            guest("probe-task"),
            guest("task-classify")
        ),
    );
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let image = read(&shapes(CLASSES_SEED, 1)[0].path);
    let probe = |what: &str| {
        let started = std::time::Instant::now();
        let resp = client()
            .post(server.url(&format!("/v1/tasks/probe?probe={what}")))
            .header("x-request-timeout-ms", "1000")
            .body(Vec::new())
            .send()
            .expect("request failed");
        let status = resp.status().as_u16();
        let body: Value = resp.json().expect("a JSON body");
        assert!(started.elapsed() < std::time::Duration::from_secs(3), "{what}: {:?}", started.elapsed());
        (status, body)
    };
    let message = |body: &Value| body["error"]["message"].as_str().unwrap_or_default().to_string();

    let (status, body) = probe("none");
    assert_eq!((status, &body["answer"]["json"]["values"]), (200, &serde_json::json!(8)), "{body}");
    let (status, body) = probe("loop");
    assert_error(status, &body, 504, "deadline_exceeded");
    let (status, body) = probe("engine-flood");
    assert_error(status, &body, 500, "guest_failed");
    assert!(message(&body).contains("guest_infer_calls (16)"), "{body}");
    let (status, body) = probe("huge");
    assert_error(status, &body, 500, "guest_failed");
    assert!(message(&body).contains("guest_output_bytes"), "{body}");
    let (status, body) = probe("not-given");
    assert_error(status, &body, 400, "bad_request");
    assert!(message(&body).contains("may not call model \"shapes-int8\""), "{body}");
    let (status, body) = probe("wrong-shape");
    assert_error(status, &body, 400, "bad_request");
    assert!(message(&body).contains("[1, 3, 8, 8]"), "{body}");
    let (status, body) = probe("bad-json");
    assert_error(status, &body, 500, "guest_failed");
    assert!(message(&body).contains("does not parse"), "{body}");

    for _ in 0..3 {
        let (status, body) = run_task(&server, "classify", &image, "");
        assert_eq!(status, 200, "{body}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Held-out detection scenes: train_detect.py trains on seed 1 and validates on 1001.
const SCENES_SEED: u64 = 737_373;

/// `POST /v1/tasks/{task}{query}` of one scene: its detections as (label, score, box).
fn detect(server: &Server, task: &str, scene: &crate::support::Scene, query: &str) -> Vec<(String, f64, [f64; 4])> {
    let (status, body) = run_task(server, task, &read(&scene.path), query);
    assert_eq!(status, 200, "{}: {body}", scene.path.display());
    body["answer"]["detections"]
        .as_array()
        .unwrap_or_else(|| panic!("a detections answer: {body}"))
        .iter()
        .map(|d| {
            let b: Vec<f64> = d["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            (d["label"].as_str().unwrap().to_string(), d["score"].as_f64().unwrap(), [b[0], b[1], b[2], b[3]])
        })
        .collect()
}

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Mean average precision at IoU 0.5 over the classes present (PASCAL VOC's all-point
/// interpolation): per class, detections best first, each a hit when it overlaps an object of
/// its class not yet matched by at least 0.5.
fn map50(found: &[Vec<(String, f64, [f64; 4])>], scenes: &[crate::support::Scene]) -> f64 {
    let mut aps = Vec::new();
    for label in crate::LABELS {
        let total = scenes.iter().flat_map(|s| &s.objects).filter(|(l, _)| l == label).count();
        if total == 0 {
            continue;
        }
        let mut ranked: Vec<(f64, usize, [f64; 4])> = found
            .iter()
            .enumerate()
            .flat_map(|(i, dets)| dets.iter().filter(|d| d.0 == label).map(move |d| (d.1, i, d.2)))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut matched: Vec<Vec<bool>> = scenes.iter().map(|s| vec![false; s.objects.len()]).collect();
        let (mut hits, mut points) = (0usize, Vec::new());
        for (n, (_, i, b)) in ranked.iter().enumerate() {
            let best = scenes[*i]
                .objects
                .iter()
                .enumerate()
                .filter(|(_, (l, _))| l == label)
                .map(|(j, (_, truth))| (j, iou(b, truth)))
                .max_by(|x, y| x.1.total_cmp(&y.1));
            if let Some((j, overlap)) = best
                && overlap >= 0.5
                && !matched[*i][j]
            {
                matched[*i][j] = true;
                hits += 1;
            }
            points.push((hits as f64 / total as f64, hits as f64 / (n + 1) as f64));
        }
        // Area under the precision envelope (the best precision at any recall at least this one).
        let mut ap = 0.0;
        let mut prev_recall = 0.0;
        for k in 0..points.len() {
            let precision = points[k..].iter().map(|p| p.1).fold(0.0, f64::max);
            ap += (points[k].0 - prev_recall) * precision;
            prev_recall = points[k].0;
        }
        aps.push(ap);
    }
    aps.iter().sum::<f64>() / aps.len() as f64
}

#[test]
fn the_embedded_default_detects_shapes_with_map_at_least_0_9() {
    let server = Server::start(&[]);
    let listed: Value = client().get(server.url("/v1/tasks")).send().unwrap().json().unwrap();
    assert_eq!(
        listed["tasks"],
        serde_json::json!([{"name": "detect", "guest": "task-detect", "models": ["shapes-detect"], "wasi": ["clocks", "random"]}])
    );
    let scenes = crate::support::scenes(SCENES_SEED, 200);
    // The detector is no classifier: /v1/classify says so and names what runs it.
    let (status, body, _) = server.classify(&read(&scenes[0].path), "?model=shapes-detect", &[]);
    assert_error(status, &body, 400, "bad_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("does not classify"), "{body}");
    // Ranked down to a score of 0.05, as detection benchmarks evaluate (a low threshold only
    // adds low-ranked detections, which cannot lower the precision envelope above them).
    let found: Vec<_> = scenes.iter().map(|s| detect(&server, "detect", s, "?threshold=0.05")).collect();
    for (scene, dets) in scenes.iter().zip(&found) {
        let size = image_size(&scene.path);
        for (label, score, b) in dets {
            assert!(crate::LABELS.contains(&label.as_str()) && (0.05..=1.0).contains(score), "{label} {score}");
            assert!(b[0] <= b[2] && b[1] <= b[3] && b[0] >= 0.0 && b[1] >= 0.0, "{b:?}");
            assert!(b[2] <= size.0 as f64 && b[3] <= size.1 as f64, "{b:?} outside {size:?}");
        }
    }
    let map = map50(&found, &scenes);
    let objects: usize = scenes.iter().map(|s| s.objects.len()).sum();
    // At the task's default threshold (0.3), what a client gets without asking.
    let served: Vec<_> = found.iter().map(|d| d.iter().filter(|x| x.1 >= 0.3).cloned().collect()).collect();
    println!(
        "detect: mAP@0.5 {map:.4} over {} held-out scenes ({objects} objects); {:.4} at the default threshold 0.3",
        scenes.len(),
        map50(&served, &scenes)
    );
    assert!(map >= 0.9, "mAP@0.5 {map:.4} < 0.9");
}

/// Width and height of a PNG or JPEG from its header.
fn image_size(path: &std::path::Path) -> (u32, u32) {
    let out = std::process::Command::new(root().join(".venv/bin/python"))
        .args(["-c", "import sys; from PIL import Image, ImageOps; print(*ImageOps.exif_transpose(Image.open(sys.argv[1])).size)"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn the_python_detection_task_finds_what_the_rust_one_finds() {
    let dir = root().join(format!("target/test-data/tasks-detect-{}", std::process::id()));
    let config = config_with_rules(
        &dir,
        &format!(
            "[[guests.rules]]\npath = {:?}\n[tasks.detect]\npath = {:?}\nmodels = [\"shapes-detect\"]\n\
             [tasks.detect-python]\npath = {:?}\nmodels = [\"shapes-detect\"]\n",
            guest("rules-threshold"),
            guest("task-detect"),
            guest("task-detect-python")
        ),
    );
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let scenes = crate::support::scenes(SCENES_SEED, 200);
    let mut compared = 0;
    for scene in scenes.iter().take(12) {
        let rust = detect(&server, "detect", scene, "");
        let python = detect(&server, "detect-python", scene, "");
        assert_eq!(rust.len(), python.len(), "{}: rust {rust:?} python {python:?}", scene.path.display());
        for (r, p) in rust.iter().zip(&python) {
            assert_eq!(r.0, p.0, "{}: rust {rust:?} python {python:?}", scene.path.display());
            assert!((r.1 - p.1).abs() < 1e-4, "scores {} vs {}", r.1, p.1);
            assert!(r.2.iter().zip(&p.2).all(|(a, b)| (a - b).abs() < 0.01), "boxes {:?} vs {:?}", r.2, p.2);
        }
        compared += rust.len();
    }
    assert!(compared >= 12, "only {compared} detections compared");

    // Its own checks and the Rust image component's, composed into it.
    let image = read(&scenes[0].path);
    let (status, body) = run_task(&server, "detect-python", &image, "?threshold=2");
    assert_error(status, &body, 400, "bad_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("threshold must be"), "{body}");
    let (status, body) = run_task(&server, "detect-python", b"not an image", "");
    assert_error(status, &body, 400, "bad_request");
    let (status, body) = run_task(&server, "detect", b"not an image", "");
    assert_error(status, &body, 400, "bad_request");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A photo is sent as the camera stored it, with an EXIF orientation: boxes are in the pixels of
/// the image as it is seen (turned), not as its bytes lie.
#[test]
fn detection_boxes_follow_exif_orientation() {
    let server = Server::start(&[]);
    let scene = &crate::support::scenes(SCENES_SEED, 200)[1];
    let upright = detect(&server, "detect", scene, "");
    assert!(!upright.is_empty());
    // The same pixels stored turned a quarter clockwise, with orientation 6 (rotate back 90°
    // clockwise to view) so that a viewer shows them upright again; JPEG at high quality.
    let turned = root().join(format!("target/test-data/scene-exif-{}.jpg", std::process::id()));
    let status = std::process::Command::new(root().join(".venv/bin/python"))
        .args([
            "-c",
            "import sys; from PIL import Image\n\
             im = Image.open(sys.argv[1]).convert('RGB')\n\
             exif = Image.Exif(); exif[0x0112] = 6\n\
             im.transpose(Image.Transpose.ROTATE_90).save(sys.argv[2], quality=97, exif=exif.tobytes())",
        ])
        .arg(&scene.path)
        .arg(&turned)
        .status()
        .unwrap();
    assert!(status.success());
    let image = read(&turned);
    let (status, body) = run_task(&server, "detect", &image, "");
    assert_eq!(status, 200, "{body}");
    let seen: Vec<(String, [f64; 4])> = body["answer"]["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let b: Vec<f64> = d["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            (d["label"].as_str().unwrap().to_string(), [b[0], b[1], b[2], b[3]])
        })
        .collect();
    for (label, _, b) in &upright {
        assert!(
            seen.iter().any(|(l, s)| l == label && iou(s, b) > 0.8),
            "{label} {b:?} upright, not in the turned image's {seen:?}"
        );
    }
    let _ = std::fs::remove_file(&turned);
}

/// A task's component and the model it calls are swapped under load, as the pipeline's are:
/// no request fails, and new requests reach the new version and the new component.
#[test]
fn a_task_and_its_model_swap_under_load_without_a_failed_request() {
    let base = root().join(format!("target/test-data/task-swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (models, guests) = (base.join("models"), base.join("guests"));
    let detect_dir = root().join("models/shapes-detect");
    for f in ["model.toml", "labels.txt"] {
        crate::install(&detect_dir.join(f), &models.join("shapes-detect").join(f));
    }
    let toml = models.join("shapes-detect/model.toml");
    std::fs::write(&toml, std::fs::read_to_string(&toml).unwrap() + "version_policy = \"all\"\n").unwrap();
    let onnx = detect_dir.join("1/model.onnx");
    crate::install(&onnx, &models.join("shapes-detect/1/model.onnx"));
    let task_wasm = guests.join("detect.wasm");
    crate::install(&guest("task-detect"), &task_wasm);
    std::fs::create_dir_all(&base).unwrap();
    let config = base.join("tessera.toml");
    std::fs::write(
        &config,
        format!(
            "models_dir = {models:?}\ndefault_model = \"shapes-detect\"\ncompile_cache_dir = {:?}\n\
             [guests]\npreprocess = {:?}\npostprocess = {:?}\nrules = []\n\
             [tasks.detect]\npath = {task_wasm:?}\nmodels = [\"shapes-detect\"]\n",
            root().join("target/cache/components"),
            guest("preprocess"),
            guest("postprocess"),
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let scene = &crate::support::scenes(SCENES_SEED, 200)[0];
    let body = read(&scene.path);
    let want = detect(&server, "detect", scene, "");
    assert!(!want.is_empty());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (url, body, stop) = (server.url("/v1/tasks/detect"), body.clone(), stop.clone());
            let labels: Vec<String> = want.iter().map(|d| d.0.clone()).collect();
            std::thread::spawn(move || {
                let (client, mut guests) = (client(), std::collections::BTreeMap::<String, usize>::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let resp = client.post(&url).body(body.clone()).send().unwrap();
                    let status = resp.status();
                    let answer: Value = resp.json().unwrap();
                    assert_eq!(status, 200, "{answer}");
                    let got: Vec<&str> = answer["answer"]["detections"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d["label"].as_str().unwrap())
                        .collect();
                    assert_eq!(got, labels, "{answer}");
                    *guests.entry(answer["guests"][0]["name"].as_str().unwrap().to_string()).or_default() += 1;
                }
                guests
            })
        })
        .collect();

    // A second version of the model: the task's calls move to it.
    crate::install(&onnx, &models.join("shapes-detect/2/model.onnx"));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let m: Value = client().get(server.url("/v1/models/shapes-detect")).send().unwrap().json().unwrap();
        if m["ready_versions"] == serde_json::json!(["1", "2"]) {
            break;
        }
        assert!(std::time::Instant::now() < until, "version 2 never became ready: {m}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::remove_dir_all(models.join("shapes-detect/1")).unwrap();
    // The component replaced by the Python one (same answers): the watcher reloads it. Which one
    // answers shows in how each quotes a bad parameter back (Rust "x", Python 'x').
    let quoted = || run_task(&server, "detect", &body, "?threshold=x").1["error"]["message"].to_string();
    assert!(quoted().contains(r#"got \"x\""#), "{}", quoted());
    crate::install(&guest("task-detect-python"), &task_wasm);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !quoted().contains("got 'x'") {
        assert!(std::time::Instant::now() < until, "the task was not reloaded: {}", server.stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut served = 0;
    for handle in load {
        served += handle.join().unwrap().values().sum::<usize>();
    }
    println!("task requests served during the swaps: {served}");
    assert!(served > 0);
    let _ = std::fs::remove_dir_all(&base);
}

/// `wasi:nn` for a task granted `nn` (`tests/guests/probe-nn`): `load-by-name` reaches the models
/// its config names, `compute` runs them on the host's engines and answers what `/v1/classify`
/// answers; what it may not do gets the wasi-nn error code that says why; a task not granted
/// `nn` is refused the interface by name.
#[test]
fn wasi_nn_serves_a_task_its_models_by_name() {
    let dir = root().join(format!("target/test-data/tasks-nn-{}", std::process::id()));
    let config = config_with_rules(
        &dir,
        &format!(
            "[[guests.rules]]\npath = {:?}\n[tasks.nn]\npath = {probe:?}\nmodels = [\"shapes\"]\n\
             wasi = [\"clocks\", \"random\", \"nn\"]\n[tasks.denied]\npath = {probe:?}\nmodels = [\"shapes\"]\n",
            guest("rules-threshold"),
            probe = guest("probe-nn"),
        ),
    );
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    for case in shapes(CLASSES_SEED, 1).iter().take(4) {
        let image = read(&case.path);
        let (status, body) = run_task(&server, "nn", &image, "");
        assert_eq!(status, 200, "{body}");
        let (_, pipeline, _) = server.classify(&image, "?top_k=3", &[]);
        let classes = body["answer"]["classes"].as_array().unwrap_or_else(|| panic!("{body}"));
        for (a, b) in classes.iter().zip(pipeline["top_k"].as_array().unwrap()) {
            assert_eq!(a["label"], b["label"], "wasi-nn {body} vs pipeline {pipeline}");
            assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-4);
        }
        assert_eq!(classes[0]["label"], case.label.as_str(), "{body}");
    }
    let image = read(&shapes(CLASSES_SEED, 1)[0].path);
    let nn = |query: &str| run_task(&server, "nn", &image, query);
    let (status, body) = nn("?nn=outputs&model=shapes:1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["answer"]["json"], serde_json::json!({"name": "logits", "dimensions": [1, 8], "type": "Fp32"}));
    let code = |body: &Value| body["answer"]["json"]["code"].as_str().unwrap_or_default().to_string();
    let data = |body: &Value| body["answer"]["json"]["data"].as_str().unwrap_or_default().to_string();
    let (_, body) = nn("?model=shapes-int8");
    assert_eq!(code(&body), "NotFound", "{body}");
    assert!(data(&body).contains("may not call model \"shapes-int8\""), "{body}");
    let (_, body) = nn("?model=nope");
    assert_eq!(code(&body), "NotFound", "{body}");
    let (_, body) = nn("?nn=load");
    assert_eq!(code(&body), "Security", "{body}");
    assert!(data(&body).contains("load-by-name"), "{body}");
    let (_, body) = nn("?nn=u8");
    assert_eq!(code(&body), "InvalidArgument", "{body}");
    assert!(data(&body).contains("FP32"), "{body}");
    let (status, body) = nn("?nn=flood");
    assert_error(status, &body, 500, "guest_failed");
    assert!(body["error"]["message"].as_str().unwrap().contains("guest_infer_calls"), "{body}");

    let (status, body) = run_task(&server, "denied", &image, "");
    assert_error(status, &body, 500, "guest_trap");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("wasi:nn/graph") && message.contains("not granted"), "{body}");

    // The server serves on.
    let (status, body) = run_task(&server, "nn", &image, "");
    assert_eq!(status, 200, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}
