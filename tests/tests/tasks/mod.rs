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
