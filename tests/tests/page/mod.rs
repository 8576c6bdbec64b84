//! `GET /`: the page to try Tessera, served self-contained and used in a real headless Chromium
//! (`tests/tools/page_test.py`, Selenium on Debian's chromium and chromium-driver).

use std::process::Command;

use serde_json::Value;

use crate::support::{Server, client, root, shapes};
use crate::{CLASSES_SEED, read};

#[test]
fn the_page_is_one_self_contained_file() {
    let server = Server::start(&[]);
    let response = client().get(server.url("/")).send().unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let page = response.text().unwrap();
    assert!(page.contains("<title>Tessera</title>"));
    // Nothing from a CDN or any other origin: no absolute URL anywhere in the file.
    assert!(!page.contains("://"), "the page names another origin");
    // Only on the main address: the admin listener serves admin routes only.
    let admin = client().get(server.admin_url("/")).send().unwrap();
    assert_eq!(admin.status(), 404);
    let post = client().post(server.url("/")).send().unwrap();
    assert_eq!(post.status(), 405);
}

#[test]
fn a_browser_uploads_an_image_and_sees_the_answer() {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).is_file(),
            "{tool} is missing: `./run test` installs Debian's chromium and chromium-driver"
        );
    }
    let server = Server::start(&[]);
    let case = &shapes(CLASSES_SEED, 2)[0];
    // What the API says about this image is what the page must show.
    let (status, body, _) = server.classify(&read(&case.path), "", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["label"], case.label.as_str(), "{body}");
    // A detection task's boxes are drawn over the image: as many as the API answers.
    let scene = &crate::support::scenes(737_373, 200)[0];
    let resp = client().post(server.url("/v1/tasks/detect")).body(read(&scene.path)).send().unwrap();
    let detected: Value = resp.json().unwrap();
    let boxes = detected["answer"]["detections"].as_array().unwrap_or_else(|| panic!("{detected}")).len();
    assert!(boxes > 0, "{detected}");
    let bad = root().join("target/test-logs/page-not-an-image.png");
    std::fs::write(&bad, b"this is not an image").unwrap();
    let out = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/tools/page_test.py"))
        .args(["--url", &server.url("/"), "--label", &case.label])
        .arg("--image")
        .arg(&case.path)
        .arg("--bad")
        .arg(&bad)
        .args(["--task", "detect", "--boxes", &boxes.to_string(), "--scene"])
        .arg(&scene.path)
        .arg("--screenshot")
        .arg(root().join("target/test-logs/page-detect.png"))
        .output()
        .expect("running tests/tools/page_test.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["label"], case.label.as_str(), "{seen}");
    // The model list comes from /v1/models: every model of the repository.
    assert_eq!(seen["models"], serde_json::json!(["shapes", "shapes-detect", "shapes-int8"]), "{seen}");
    assert_eq!(seen["boxes_drawn"], boxes, "{seen}");
    assert!(seen["timings"]["inference"].as_f64().unwrap() > 0.0, "{seen}");
}
