//! Tessera's HTTP API as a client sees it: the response contract for every class, every image
//! container and pixel format, accuracy on held-out images, precise JSON errors for bad input,
//! configuration errors that name the key, and the admin routes' token and listener.

use super::*;

type BadCase<'a> = (&'a str, Vec<u8>, &'a str, Vec<(&'a str, &'a str)>, u16, &'a str);

#[test]
fn classifies_every_class_with_the_full_response_contract() {
    let server = Server::start(&[]);
    let cases = shapes(CLASSES_SEED, 2);
    for case in &cases {
        let (status, body, headers) = server.classify(&read(&case.path), "?top_k=3", &[]);
        assert_eq!(status, 200, "{}: {body}", case.path.display());
        assert_eq!(body["label"], case.label.as_str(), "{}: {body}", case.path.display());
        let top = body["top_k"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["label"], body["label"]);
        assert_eq!(top[0]["score"], body["confidence"]);
        assert!(top.windows(2).all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64()), "{body}");
        assert_eq!(top[0]["index"], LABELS.iter().position(|l| *l == case.label).unwrap());
        assert_eq!(body["model"]["name"], "shapes");
        assert_eq!(body["model"]["version"], "1");
        for stage in ["preprocess", "inference", "postprocess", "rules", "total"] {
            assert!(body["timings_ms"][stage].as_f64().is_some_and(|t| t >= 0.0), "{stage}: {body}");
        }
        assert_eq!(body["decision"]["rule"], "rules-threshold");
        assert_eq!(body["decision"]["accepted"], body["confidence"].as_f64().unwrap() >= 0.5);
        assert_eq!(headers["x-request-id"].to_str().unwrap(), body["request_id"].as_str().unwrap());
    }

    // top_k is capped at the number of classes; the default is 5.
    let image = read(&cases[0].path);
    assert_eq!(server.classify(&image, "?top_k=100", &[]).1["top_k"].as_array().unwrap().len(), 8);
    assert_eq!(server.classify(&image, "", &[]).1["top_k"].as_array().unwrap().len(), 5);
    // An explicit model and version, image/* and octet-stream content types, a client request id.
    let (status, body, headers) = server.classify(
        &image,
        "?model=shapes&version=1",
        &[("content-type", "image/png"), ("x-request-id", "req-42")],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["request_id"], "req-42");
    assert_eq!(headers["x-request-id"], "req-42");
    assert_eq!(server.classify(&image, "", &[("content-type", "application/octet-stream")]).0, 200);

    // A multipart/form-data upload with the image in the field `image`.
    let part =
        reqwest::blocking::multipart::Part::bytes(image.clone()).file_name("x.png").mime_str("image/png").unwrap();
    let form = reqwest::blocking::multipart::Form::new().text("note", "hello").part("image", part);
    let resp = client().post(server.url("/v1/classify?top_k=1")).multipart(form).send().unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["label"], cases[0].label.as_str());

    // Listings and probes.
    let models: Value = client().get(server.url("/v1/models")).send().unwrap().json().unwrap();
    assert_eq!(models["models"][0]["name"], "shapes");
    assert_eq!(models["models"][0]["ready_versions"], serde_json::json!(["1"]));
    assert_eq!(models["models"][0]["versions"][0]["state"], "ready");
    let one: Value = client().get(server.url("/v1/models/shapes")).send().unwrap().json().unwrap();
    assert_eq!(one["name"], "shapes");
    assert_eq!(client().get(server.url("/v1/models/nope")).send().unwrap().status(), 404);
    assert_eq!(models["models"][0]["labels"].as_array().unwrap().len(), 8);
    assert_eq!(client().get(server.url("/healthz")).send().unwrap().status(), 200);
    assert_eq!(client().get(server.url("/readyz")).send().unwrap().status(), 200);
}

#[test]
fn every_container_and_pixel_format_is_decoded() {
    let server = Server::start(&[]);
    let cases = shapes(CLASSES_SEED, 2);
    let sources: Vec<_> = cases.iter().filter(|c| c.path.extension().is_some_and(|e| e == "png")).take(3).collect();
    assert!(!sources.is_empty());
    for case in sources {
        let out = root().join("target/test-data/variants").join(case.path.file_stem().unwrap());
        let status = std::process::Command::new(root().join(".venv/bin/python"))
            .arg(root().join("tests/tools/make_variants.py"))
            .arg(&case.path)
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        let listing = std::fs::read_to_string(out.join("variants.csv")).unwrap();
        for line in listing.lines().skip(1) {
            let (file, colour) = line.split_once(',').unwrap();
            let (status, body, _) = server.classify(&read(&out.join(file)), "", &[]);
            assert_eq!(status, 200, "{file}: {body}");
            // Grey variants lose the colour contrast the model may rely on; the rest must agree.
            if colour == "yes" {
                assert_eq!(body["label"], case.label.as_str(), "{file} of {}: {body}", case.path.display());
            }
        }
    }
}

#[test]
fn held_out_accuracy_over_http_is_at_least_95_percent() {
    let server = Server::start(&[]);
    let cases = shapes(ACCURACY_SEED, 50);
    assert!(cases.len() >= 400);
    let mut wrong = Vec::new();
    for case in &cases {
        let (status, body, _) = server.classify(&read(&case.path), "?top_k=1", &[]);
        assert_eq!(status, 200, "{}: {body}", case.path.display());
        if body["label"] != case.label.as_str() {
            wrong.push(format!("{} → {}", case.path.file_name().unwrap().to_string_lossy(), body["label"]));
        }
    }
    let accuracy = 1.0 - wrong.len() as f64 / cases.len() as f64;
    println!("held-out top-1 accuracy over HTTP: {accuracy:.4} ({} images); wrong: {wrong:?}", cases.len());
    assert!(accuracy >= 0.95, "accuracy {accuracy:.4} < 0.95; wrong: {wrong:?}");
}

#[test]
fn bad_input_gets_a_precise_json_error_and_the_server_keeps_serving() {
    let server = Server::start(&["--max-body-bytes", "1000000"]);
    let case = &shapes(CLASSES_SEED, 2)[0];
    let good = read(&case.path);
    let mut truncated = png(300, 200);
    truncated.truncate(truncated.len() / 2);
    let tiff = b"II*\x00\x08\x00\x00\x00\x00\x00".to_vec();
    let mut truncated_jpeg = jpeg(640, 480);
    assert_eq!(server.classify(&truncated_jpeg, "", &[]).0, 200, "the whole JPEG is fine");
    truncated_jpeg.truncate(truncated_jpeg.len() * 2 / 3);

    // (what, body, query, headers, expected status, expected code)
    let cases: Vec<BadCase> = vec![
        ("empty body", vec![], "", vec![], 400, "invalid_image"),
        ("not an image", b"definitely not an image".to_vec(), "", vec![], 400, "invalid_image"),
        ("truncated image", truncated, "", vec![], 400, "invalid_image"),
        // Both JPEG decoders would fill the missing rows with grey and answer 200; Pillow
        // refuses such a file, and so do we.
        ("truncated JPEG", truncated_jpeg, "", vec![], 400, "invalid_image"),
        ("text content type", good.clone(), "", vec![("content-type", "text/plain")], 415, "unsupported_media_type"),
        (
            "json content type",
            good.clone(),
            "",
            vec![("content-type", "application/json")],
            415,
            "unsupported_media_type",
        ),
        ("TIFF is not decoded", tiff, "", vec![], 415, "unsupported_media_type"),
        ("40 MP+ header", bmp_header(10_000, 5_000), "", vec![], 422, "image_too_large"),
        // 36 MP, under the pixel limit, but 288 MB of RGBA16 + 108 MB of RGB: over the decoder's
        // max_decode_alloc_bytes (192 MiB), refused before anything is allocated.
        ("36 MP RGBA16 header", png_rgba16_header(6_000, 6_000), "", vec![], 422, "image_too_large"),
        ("top_k=0", good.clone(), "?top_k=0", vec![], 400, "bad_request"),
        ("top_k not a number", good.clone(), "?top_k=three", vec![], 400, "bad_request"),
        ("unknown parameter", good.clone(), "?colour=red", vec![], 400, "bad_request"),
        ("unknown model", good.clone(), "?model=nope", vec![], 404, "model_not_found"),
        ("unknown version", good.clone(), "?version=99", vec![], 404, "model_not_found"),
        ("bad deadline header", good.clone(), "", vec![("x-request-timeout-ms", "soon")], 400, "bad_request"),
        ("body over the limit", vec![0u8; 1_000_001], "", vec![], 413, "payload_too_large"),
    ];
    for (what, body, query, headers, status, code) in cases {
        let (got, json, resp_headers) = server.classify(&body, query, &headers);
        assert_error(got, &json, status, code);
        assert!(resp_headers.contains_key("x-request-id"), "{what}");
        assert_still_serving(&server, &good, &case.label);
    }

    // A declared length over the limit is refused before the body is sent at all.
    let answer = raw_exchange(
        &server.addr,
        b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 50000000\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // A client that sends the whole of a body over the limit before reading (curl, most
    // libraries) gets the 413 too, not a reset connection: the server reads and drops the rest.
    let mut whole = b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nContent-Length: 1900000\r\n\r\n".to_vec();
    whole.resize(whole.len() + 1_900_000, 7);
    let answer = raw_exchange(&server.addr, &whole);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // A chunked body is cut off as soon as it passes the limit.
    let mut chunked = b"POST /v1/classify HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(b"10000\r\n");
        chunked.extend_from_slice(&[7u8; 0x10000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(&server.addr, &chunked);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_still_serving(&server, &good, &case.label);

    // Unknown routes and methods are JSON errors too.
    let resp = client().get(server.url("/nope")).send().unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<Value>().unwrap()["error"]["code"], "not_found");
    let resp = client().get(server.url("/v1/classify")).send().unwrap();
    assert_eq!(resp.status(), 405);
}

#[test]
fn invalid_configuration_fails_fast_naming_the_key() {
    let dir = root().join("target/test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad-tessera.toml");
    std::fs::write(&cfg, "[limits]\ndeadline_ms = 0\n").unwrap();
    let out = std::process::Command::new(support::tessera_bin())
        .current_dir(root())
        .args(["--config", cfg.to_str().unwrap(), "classify", "x.png"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limits.deadline_ms"), "{stderr}");

    std::fs::write(&cfg, "[limits]\nmax_body_byts = 5\n").unwrap();
    let out = std::process::Command::new(support::tessera_bin())
        .args(["--config", cfg.to_str().unwrap(), "classify", "x.png"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_body_byts"));

    // A guest path that does not exist stops `serve` with the path in the error.
    let out = std::process::Command::new(support::tessera_bin())
        .current_dir(root())
        .args(["serve", "--addr", "127.0.0.1:0", "--preprocess", "/nonexistent/pre.wasm"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pre.wasm"));
}

#[test]
fn admin_routes_need_the_token_when_one_is_configured() {
    let token = "s3cret-token-of-20-chars";
    let server = Server::start(&["--admin-token", token, "--no-watch"]);
    let resp = client().post(server.url("/v1/admin/reload")).send().unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.json::<Value>().unwrap()["error"]["code"], "unauthorized");
    let resp = client().post(server.url("/v1/admin/reload")).bearer_auth("wrong-token-wrong-token").send().unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client().post(server.url("/v1/admin/reload")).bearer_auth(token).send().unwrap();
    assert_eq!(resp.status(), 200);
    let report: Value = resp.json().unwrap();
    assert_eq!(report["guests"], "unchanged", "{report}");
    assert_eq!(report["models"][0]["ready_versions"], serde_json::json!(["1"]));
    // The admin listener needs no token; it serves the admin routes and probes only.
    assert_eq!(client().post(server.admin_url("/v1/admin/reload")).send().unwrap().status(), 200);
    assert_eq!(client().get(server.admin_url("/readyz")).send().unwrap().status(), 200);
    let resp = client().post(server.admin_url("/v1/classify")).body(png(64, 64)).send().unwrap();
    assert_eq!(resp.status(), 404);
}

#[test]
fn without_a_token_admin_routes_are_only_on_the_admin_listener() {
    let server = Server::start(&["--no-watch"]);
    // Even from loopback (a reverse proxy's requests all are), the main address refuses them.
    let resp = client().post(server.url("/v1/admin/reload")).send().unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.json::<Value>().unwrap()["error"]["code"], "forbidden");
    assert_eq!(client().post(server.admin_url("/v1/admin/reload")).send().unwrap().status(), 200);
    // `--admin-addr off`: nowhere without a token.
    let no_admin = Server::start(&["--no-watch", "--admin-addr", "off"]);
    assert!(no_admin.admin_addr.is_none());
    assert_eq!(client().post(no_admin.url("/v1/admin/reload")).send().unwrap().status(), 403);
}
