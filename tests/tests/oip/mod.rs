//! KServe Open Inference Protocol v2 over HTTP: tritonclient, unchanged (`tests/tools/oip_client.py`),
//! and the error format the protocol defines.

use std::process::Command;

use serde_json::Value;

use crate::support::{Server, client, root, shapes, tessera_bin};
use crate::{CLASSES_SEED, read};

#[test]
fn tritonclient_http_and_grpc_run_the_pipeline_on_an_image_and_the_model_alone_on_a_tensor() {
    let server = Server::start(&[]);
    let case = &shapes(CLASSES_SEED, 1)[6];
    let (_, http, _) = server.classify(&read(&case.path), "", &[]);
    let scene = &crate::support::scenes(737_373, 200)[3];
    // The model's input for this image, as the serving preprocess guest makes it.
    let tensor = root().join(format!("target/test-data/oip-{}.f32", std::process::id()));
    let status = Command::new(tessera_bin())
        .current_dir(root())
        .args(["preprocess", "--out"])
        .arg(&tensor)
        .arg(&case.path)
        .status()
        .unwrap();
    assert!(status.success());

    let out = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/tools/oip_client.py"))
        .args(["--url", &server.addr, "--grpc", server.grpc_addr.as_ref().unwrap(), "--model", "shapes", "--image"])
        .arg(&case.path)
        .arg("--tensor")
        .arg(&tensor)
        .args(["--task", "detect", "--scene"])
        .arg(&scene.path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&tensor);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(seen["live"], true, "{seen}");
    assert_eq!(seen["ready"], true, "{seen}");
    assert_eq!(seen["model_ready"], true, "{seen}");
    assert_eq!(seen["missing_ready"], false, "{seen}");
    assert_eq!(seen["server"]["name"], "tessera");
    let meta = &seen["metadata"];
    assert_eq!(meta["inputs"][0]["datatype"], "FP32", "{meta}");
    assert_eq!(meta["inputs"][0]["shape"], serde_json::json!([1, 3, 224, 224]), "{meta}");
    assert_eq!(meta["inputs"][1]["name"], "image", "{meta}");
    // Tensors are named as in the ONNX graph, which is what a client of the model expects.
    assert_eq!(meta["inputs"][0]["name"], "input", "{meta}");
    assert_eq!(meta["outputs"][0]["name"], "logits", "{meta}");
    assert_eq!(meta["versions"], serde_json::json!(["1"]), "{meta}");

    let pipeline = &seen["pipeline"];
    assert_eq!(pipeline["label"], case.label.as_str(), "{seen}");
    assert_eq!(pipeline["label"], http["label"], "{seen}");
    assert!((pipeline["confidence"].as_f64().unwrap() - http["confidence"].as_f64().unwrap()).abs() < 1e-6);
    assert_eq!(pipeline["top_k_labels"].as_array().unwrap().len(), 3, "{seen}");
    assert_eq!(pipeline["top_k_labels"][0], case.label.as_str(), "{seen}");
    assert_eq!(pipeline["id"], "oip-1");
    assert_eq!(pipeline["decision_rule"], "rules-threshold");
    assert_eq!(pipeline["pipeline"], "default", "{seen}");

    // The detect task, served as a model: its answer is what POST /v1/tasks/detect answers.
    let task = &seen["task"];
    assert_eq!((&task["ready"], &task["grpc_ready"]), (&Value::Bool(true), &Value::Bool(true)), "{task}");
    assert_eq!(task["metadata"]["platform"], "tessera_task", "{task}");
    assert_eq!(task["metadata"]["outputs"][0]["name"], "answer", "{task}");
    assert_eq!(task["http_model_name"], "detect", "{task}");
    let direct: Value = client()
        .post(server.url("/v1/tasks/detect?threshold=0.3"))
        .body(read(&scene.path))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(!direct["answer"]["detections"].as_array().unwrap().is_empty(), "{direct}");
    assert_eq!(task["http"], direct["answer"], "{task}");
    assert_eq!(task["grpc"], direct["answer"], "{task}");

    // The model alone on the same input gives the same class, through binary and JSON tensors.
    let index = http["top_k"][0]["index"].as_u64().unwrap();
    for mode in ["tensor_binary", "tensor_json"] {
        assert_eq!(seen[mode]["shape"], serde_json::json!([1, 8]), "{seen}");
        assert_eq!(seen[mode]["argmax"], index, "{mode}: {seen}");
    }

    let errors = &seen["errors"];
    assert_eq!(errors["missing_model"]["status"], "404", "{seen}");
    assert_eq!(errors["wrong_shape"]["status"], "400", "{seen}");
    assert!(errors["wrong_shape"]["message"].as_str().unwrap().contains("takes shape"), "{seen}");
    assert_eq!(errors["corrupt_image"]["status"], "400", "{seen}");
    assert_eq!(errors["missing_pipeline"]["status"], "404", "{seen}");
    assert!(errors["missing_pipeline"]["message"].as_str().unwrap().contains("no pipeline named"), "{seen}");

    // The same over gRPC (inference.GRPCInferenceService), tritonclient.grpc unchanged.
    let g = &seen["grpc"];
    for key in ["live", "ready", "model_ready"] {
        assert_eq!(g[key], true, "{key}: {g}");
    }
    assert_eq!(g["missing_ready"], false, "{g}");
    assert_eq!(g["inputs"][1], serde_json::json!(["image", "BYTES"]), "{g}");
    assert_eq!(g["pipeline"]["label"], case.label.as_str(), "{g}");
    assert_eq!(g["pipeline"]["top_k_labels"].as_array().unwrap().len(), 3, "{g}");
    assert_eq!(g["pipeline"]["id"], "oip-g", "{g}");
    assert_eq!(g["pipeline"]["decision_rule"], "rules-threshold", "{g}");
    assert_eq!(g["pipeline"]["pipeline"], "default", "{g}");
    assert_eq!(g["tensor"]["shape"], serde_json::json!([1, 8]), "{g}");
    assert_eq!(g["tensor"]["argmax"], index, "{g}");
    assert_eq!(g["missing_model"]["status"], "StatusCode.NOT_FOUND", "{g}");
}

#[test]
fn oip_errors_are_an_error_string_and_routes_are_checked() {
    let server = Server::start(&[]);
    let post = |path: &str, body: &str| {
        let resp = client().post(server.url(path)).body(body.to_string()).send().unwrap();
        (resp.status().as_u16(), resp.json::<Value>().unwrap())
    };
    let (status, body) = post("/v2/models/shapes/infer", "{not json");
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("not valid"), "{body}");
    let (status, body) = post("/v2/models/shapes/infer", r#"{"inputs": []}"#);
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("exactly one input"), "{body}");
    let (status, body) = post(
        "/v2/models/shapes/infer",
        r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1]}]}"#,
    );
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("INT8"), "{body}");
    let (status, _) = post("/v2/models/shapes/versions/7/infer", r#"{"inputs": []}"#);
    assert_eq!(status, 400, "the body is checked first");
    let resp = client().get(server.url("/v2/models/shapes/versions/7/ready")).send().unwrap();
    assert_eq!(resp.status(), 503);
    let resp = client().get(server.url("/v2/models/shapes/versions/1/ready")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client().get(server.url("/v2/models/shapes/versions/1")).send().unwrap();
    assert_eq!(resp.json::<Value>().unwrap()["name"], "shapes");
    let resp = client().delete(server.url("/v2/models/shapes/infer")).send().unwrap();
    assert_eq!(resp.status(), 405);
    assert!(resp.json::<Value>().unwrap()["error"].is_string());
    let resp = client().get(server.url("/v2/nothing/here")).send().unwrap();
    assert_eq!(resp.status(), 404);
}
