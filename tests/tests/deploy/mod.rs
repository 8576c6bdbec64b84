//! The container and cluster set-up (deploy/, Dockerfile), checked without Docker or a cluster:
//! the image's configuration serves with guests precompiled the way the Dockerfile does it (for
//! a baseline CPU, not this machine's), and every manifest passes its schema and agrees with
//! what that server answers (tests/tools/validate_deploy.py).

use crate::support::{Server, client, precompile_for_baseline, root, shapes};
use crate::{CLASSES_SEED, read};

#[test]
fn the_container_config_serves_baseline_precompiled_guests_and_the_manifests_agree_with_it() {
    let dir = root().join(format!("target/test-data/deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let guests = dir.join("guests");
    std::fs::create_dir_all(&guests).unwrap();
    for name in ["preprocess", "postprocess", "rules-threshold"] {
        precompile_for_baseline(name, &guests);
    }
    // The image's own configuration, its paths moved to this checkout's (models, guests).
    let image_config = std::fs::read_to_string(root().join("deploy/tessera.container.toml")).unwrap();
    let config = image_config
        .replace("\"/models\"", &format!("{:?}", root().join("models")))
        .replace("/opt/tessera/guests/", &format!("{}/", guests.display()));
    assert_ne!(config, image_config);
    let config_path = dir.join("tessera.toml");
    std::fs::write(&config_path, config).unwrap();
    let server = Server::start(&["--config", config_path.to_str().unwrap(), "--admin-addr", "off"]);
    assert!(server.stderr().contains("precompiled=true"), "{}", server.stderr());

    // A real answer through the baseline-compiled guests.
    let case = &shapes(CLASSES_SEED, 2)[0];
    let (status, body, _) = server.classify(&read(&case.path), "", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["label"], case.label.as_str(), "{body}");

    // What the manifests point at, asked of this server.
    let mut served = Vec::new();
    for path in ["/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"] {
        let resp = client().get(server.url(path)).send().unwrap();
        if resp.status() == 200 {
            served.push(path);
        }
    }
    let metrics = dir.join("metrics.txt");
    std::fs::write(&metrics, client().get(server.url("/metrics")).send().unwrap().text().unwrap()).unwrap();
    let out = std::process::Command::new(root().join(".venv/bin/python"))
        .current_dir(root())
        .arg(root().join("tests/tools/validate_deploy.py"))
        .arg("--metrics")
        .arg(&metrics)
        .arg("--served-paths")
        .arg(served.join(","))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{report}");
    assert!(report.contains("the server answered every probe and scrape path"), "{report}");
    assert!(report.contains("fits kserve's models"), "{report}");
    assert!(report.contains("valid against the Prometheus Operator schema"), "{report}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
