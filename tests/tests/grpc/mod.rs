//! The seed's gRPC service: a Rust client generated from the seed's unchanged proto
//! (`tests/build.rs`), and a Python grpcio client with the standard health and reflection
//! clients (`tests/tools/grpc_client.py`).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::support::{Server, root, shapes};
use crate::{CLASSES_SEED, read};

mod seed {
    tonic::include_proto!("image_recognition");
}

use seed::ImageRequest;
use seed::image_recognition_service_client::ImageRecognitionServiceClient;

type Client = ImageRecognitionServiceClient<tonic::transport::Channel>;

pub(crate) fn connect(rt: &tokio::runtime::Runtime, server: &Server) -> Client {
    let addr = server.grpc_addr.as_ref().expect("the server has a gRPC listener");
    rt.block_on(ImageRecognitionServiceClient::connect(format!("http://{addr}")))
        .unwrap()
        .max_encoding_message_size(64 << 20)
}

pub(crate) fn request(image: Vec<u8>, image_type: &str) -> tonic::Request<ImageRequest> {
    tonic::Request::new(ImageRequest { image_data: image, image_type: image_type.into() })
}

/// Asserts a failed call's code and that it says which of our errors it was.
fn assert_status(result: Result<tonic::Response<seed::RecognitionResponse>, tonic::Status>, code: Code, ours: &str) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(!status.message().is_empty());
    if !ours.is_empty() {
        assert_eq!(status.metadata().get("tessera-error-code").unwrap(), ours, "{status:?}");
        assert!(status.metadata().get("tessera-error-stage").is_some(), "{status:?}");
        assert!(status.metadata().get("x-request-id").is_some(), "{status:?}");
    }
}

/// Noise compresses to nothing: a PNG of `w × h` noisy pixels is about `3·w·h` bytes.
fn noisy_png(w: u32, h: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn a_client_of_the_seeds_unchanged_proto_gets_the_http_answers_and_precise_status_codes() {
    let server = Server::start(&[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut client = connect(&rt, &server);

    for case in shapes(CLASSES_SEED, 1) {
        let image = read(&case.path);
        let (status, http, _) = server.classify(&image, "", &[]);
        assert_eq!(status, 200, "{http}");
        let answer = rt.block_on(client.recognize(request(image, "png"))).unwrap();
        assert!(answer.metadata().get("x-request-id").is_some());
        let answer = answer.into_inner();
        assert_eq!(answer.label, case.label, "{}", case.path.display());
        assert_eq!(answer.label, http["label"].as_str().unwrap());
        assert_eq!(answer.confidence, http["confidence"].as_f64().unwrap() as f32);
    }
    let image = read(&shapes(CLASSES_SEED, 1)[0].path);
    let label = shapes(CLASSES_SEED, 1)[0].label.clone();

    // A client's request id comes back.
    let mut req = request(image.clone(), "image/png");
    req.metadata_mut().insert("x-request-id", MetadataValue::from_static("grpc-7"));
    assert_eq!(rt.block_on(client.recognize(req)).unwrap().metadata().get("x-request-id").unwrap(), "grpc-7");

    // Bad input: business errors as INVALID_ARGUMENT with our code.
    assert_status(rt.block_on(client.recognize(request(Vec::new(), "png"))), Code::InvalidArgument, "invalid_image");
    assert_status(
        rt.block_on(client.recognize(request(b"not an image at all".to_vec(), "gif"))),
        Code::InvalidArgument,
        "invalid_image",
    );
    let mut bomb = crate::support::bmp_header(10_000, 5_000);
    bomb.extend_from_slice(&[0; 16]);
    assert_status(rt.block_on(client.recognize(request(bomb, "bmp"))), Code::InvalidArgument, "image_too_large");

    // grpc-timeout is the deadline: too short to run anything is DEADLINE_EXCEEDED from us (we
    // answer 50 ms before the client's deadline, so 40 ms leaves us none but beats tonic's timer).
    let mut req = request(image.clone(), "png");
    req.set_timeout(Duration::from_millis(40));
    assert_status(rt.block_on(client.recognize(req)), Code::DeadlineExceeded, "deadline_exceeded");
    let mut req = request(image.clone(), "png");
    req.set_timeout(Duration::from_secs(5));
    assert_eq!(rt.block_on(client.recognize(req)).unwrap().into_inner().label, label);

    // Messages over tonic's default 4 MiB are accepted up to max_body_bytes (16 MiB here);
    // over it, tonic refuses the message from its length prefix.
    let big = noisy_png(1300, 1300);
    assert!(big.len() > 4 << 20, "{} bytes", big.len());
    let answer = rt.block_on(client.recognize(request(big, "png"))).unwrap().into_inner();
    assert!(!answer.label.is_empty());
    assert_status(rt.block_on(client.recognize(request(vec![0; 17 << 20], "png"))), Code::OutOfRange, "");

    // None of that hurt the server.
    assert_eq!(rt.block_on(client.recognize(request(image.clone(), "png"))).unwrap().into_inner().label, label);
    assert_eq!(server.classify(&image, "", &[]).1["label"], label.as_str());

    // `--grpc-addr off`: HTTP only.
    let http_only = Server::start(&["--grpc-addr", "off"]);
    assert!(http_only.grpc_addr.is_none());
    assert_eq!(http_only.classify(&image, "", &[]).0, 200);
}

fn python_client(server: &Server, proto: &str, image: &std::path::Path, scene: &std::path::Path) -> Value {
    let python = root().join(".venv/bin/python");
    let out = Command::new(python)
        .arg(root().join("tests/tools/grpc_client.py"))
        .args(["--addr", server.grpc_addr.as_ref().unwrap(), "--proto"])
        .arg(root().join("proto").join(proto))
        .arg("--image")
        .arg(image)
        .arg("--scene")
        .arg(scene)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn python_grpcio_clients_of_both_protos_health_and_reflection_work() {
    let server = Server::start(&[]);
    let case = &shapes(CLASSES_SEED, 1)[3];
    let (_, http, _) = server.classify(&read(&case.path), "", &[]);

    let scene = &crate::support::scenes(737_373, 200)[2];
    let seed = python_client(&server, "image_recognition.proto", &case.path, &scene.path);
    assert_eq!(seed["recognize"]["label"], case.label.as_str(), "{seed}");
    assert_eq!(seed["recognize"]["label"], http["label"], "{seed}");
    assert_eq!(seed["recognize"]["request_id"], "py-1", "{seed}");
    assert_eq!(seed["corrupt"]["code"], "INVALID_ARGUMENT", "{seed}");
    assert_eq!(seed["corrupt"]["metadata"]["tessera-error-code"], "invalid_image", "{seed}");
    assert!(seed.get("extended").is_none(), "the seed's messages have no extensions: {seed}");
    assert_eq!(seed["health"]["(server)"], "SERVING", "{seed}");
    assert_eq!(seed["health"]["image_recognition.ImageRecognitionService"], "SERVING", "{seed}");
    let services = seed["reflection"]["services"].as_array().unwrap();
    for name in ["image_recognition.ImageRecognitionService", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == name), "{name} not listed: {seed}");
    }
    assert!(seed["reflection"]["descriptor_bytes"].as_u64().unwrap() > 100, "{seed}");

    assert!(seed.get("task").is_none(), "the seed's service has no RunTask: {seed}");
    let ours = python_client(&server, "tessera_image_recognition.proto", &case.path, &scene.path);
    let extended = &ours["extended"];
    assert_eq!(extended["top_k"].as_array().unwrap().len(), 3, "{ours}");
    assert_eq!(extended["top_k"][0], case.label.as_str(), "{ours}");
    assert_eq!(extended["model"], "shapes", "{ours}");
    assert_eq!(extended["model_version"], "1", "{ours}");
    assert_eq!(extended["rule"], "rules-threshold", "{ours}");
    assert!(extended["total_ms"].as_f64().unwrap() > 0.0, "{ours}");
    assert!(!extended["request_id"].as_str().unwrap().is_empty(), "{ours}");
    assert_eq!(ours["missing_model"]["code"], "NOT_FOUND", "{ours}");
    assert_eq!(ours["missing_model"]["metadata"]["tessera-error-code"], "model_not_found", "{ours}");
    assert_eq!(extended["pipeline"], "default", "{ours}");
    let guests =
        serde_json::json!([["preprocess", "preprocess"], ["postprocess", "postprocess"], ["rules", "rules-threshold"]]);
    assert_eq!(extended["guests"], guests, "{ours}");
    assert_eq!(ours["missing_pipeline"]["code"], "NOT_FOUND", "{ours}");
    assert_eq!(ours["missing_pipeline"]["metadata"]["tessera-error-code"], "pipeline_not_found", "{ours}");

    // RunTask answers what POST /v1/tasks/detect answers.
    let task = &ours["task"];
    assert_eq!((&task["task"], &task["answer"]), (&serde_json::json!("detect"), &serde_json::json!("detections")));
    let http: Value = crate::support::client()
        .post(server.url("/v1/tasks/detect?threshold=0.3"))
        .body(read(&scene.path))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let want = http["answer"]["detections"].as_array().unwrap();
    let got = task["detections"].as_array().unwrap();
    assert!(!want.is_empty() && want.len() == got.len(), "gRPC {task} vs HTTP {http}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g[0], w["label"], "gRPC {task} vs HTTP {http}");
        for (a, b) in g[2].as_array().unwrap().iter().zip(w["box"].as_array().unwrap()) {
            assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-3, "gRPC {task} vs HTTP {http}");
        }
    }
    assert_eq!(task["guests"], serde_json::json!([["task", "task-detect"]]), "{ours}");
    assert_eq!(ours["missing_task"]["code"], "NOT_FOUND", "{ours}");
    assert_eq!(ours["missing_task"]["metadata"]["tessera-error-code"], "task_not_found", "{ours}");
    assert_eq!(ours["bad_task_param"]["code"], "INVALID_ARGUMENT", "{ours}");
}

#[test]
fn grpc_connections_over_max_connections_are_closed_at_once() {
    let server = Server::start(&["--max-connections", "2"]);
    let addr = server.grpc_addr.clone().unwrap();
    let image = read(&shapes(CLASSES_SEED, 2)[0].path);
    // Two idle sockets (no HTTP/2 preface) take every gRPC connection; a third is closed at once.
    let mut idle: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut third = std::net::TcpStream::connect(&addr).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let read = std::io::Read::read_to_end(&mut third, &mut rest);
    assert!(read.is_ok() && rest.is_empty(), "over max_connections the connection is closed, not kept: {read:?}");
    // The HTTP listener has its own budget: it is untouched.
    let (status, body, _) = server.classify(&image, "", &[]);
    assert_eq!(status, 200, "{body}");
    // One idle socket gone, a real client gets its place.
    idle.pop();
    std::thread::sleep(Duration::from_millis(200));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut client = connect(&rt, &server);
    let answer = rt.block_on(client.recognize(request(image, "image/png"))).expect("a call within the cap");
    assert!(!answer.into_inner().label.is_empty());
    assert!(server.stderr().contains("gRPC connection refused: at max_connections"), "{}", server.stderr());
}
