//! `/metrics`: scraped after known traffic over HTTP and gRPC, the numbers add up.

use std::collections::BTreeMap;

use crate::support::{Server, client, guest, shapes};
use crate::{CLASSES_SEED, read};

/// `name{labels}` → value, for every sample of a scrape.
pub(crate) fn scrape(server: &Server) -> BTreeMap<String, f64> {
    let resp = client().get(server.url("/metrics")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = resp.text().unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// The value of one sample; 0 when absent (a counter never incremented has no sample).
fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// The sum over every sample of `name` whose labels contain all of `labels`.
fn sum(m: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_count_known_traffic_per_protocol_stage_model_and_guest() {
    let probe = guest("probe-rules");
    let server = Server::start(&["--rule", probe.to_str().unwrap()]);
    let case = &shapes(CLASSES_SEED, 1)[0];
    let image = read(&case.path);
    let before = scrape(&server);
    assert_eq!(get(&before, "tessera_requests_in_flight"), 0.0);
    assert!(before.keys().any(|k| k.starts_with("tessera_build_info{")), "{before:?}");
    assert_eq!(get(&before, r#"tessera_model_versions_loaded{model="shapes"}"#), 1.0);
    assert_eq!(get(&before, r#"tessera_model_version_state{model="shapes",version="1",state="ready"}"#), 1.0);
    assert_eq!(get(&before, r#"tessera_inference_queue_depth{model="shapes",version="1"}"#), 0.0);

    // HTTP: 3 answers, a corrupt image, an unknown model, top_k=0, a trapping rule.
    for _ in 0..3 {
        assert_eq!(server.classify(&image, "", &[]).0, 200);
    }
    assert_eq!(server.classify(b"not an image", "", &[]).0, 400);
    assert_eq!(server.classify(&image, "?model=nope", &[]).0, 404);
    assert_eq!(server.classify(&image, "?top_k=0", &[]).0, 400);
    assert_eq!(server.classify(&image, "", &[("x-probe", "trap")]).0, 500);
    // gRPC: 2 answers and a corrupt image.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut grpc = crate::grpc::connect(&rt, &server);
    for _ in 0..2 {
        rt.block_on(grpc.recognize(crate::grpc::request(image.clone(), "png"))).unwrap();
    }
    rt.block_on(grpc.recognize(crate::grpc::request(b"not an image".to_vec(), "png"))).unwrap_err();

    let m = scrape(&server);
    let http = r#"protocol="http",endpoint="/v1/classify""#;
    let rpc = r#"protocol="grpc",endpoint="image_recognition.ImageRecognitionService/Recognize""#;
    assert_eq!(get(&m, &format!(r#"tessera_requests_total{{{http},code="ok"}}"#)), 3.0, "{m:?}");
    assert_eq!(get(&m, &format!(r#"tessera_requests_total{{{http},code="invalid_image"}}"#)), 1.0);
    assert_eq!(get(&m, &format!(r#"tessera_requests_total{{{http},code="model_not_found"}}"#)), 1.0);
    assert_eq!(get(&m, &format!(r#"tessera_requests_total{{{http},code="bad_request"}}"#)), 1.0);
    assert_eq!(get(&m, &format!(r#"tessera_requests_total{{{http},code="guest_trap"}}"#)), 1.0);
    assert_eq!(get(&m, &format!(r#"tessera_requests_total{{{rpc},code="ok"}}"#)), 2.0);
    assert_eq!(get(&m, &format!(r#"tessera_requests_total{{{rpc},code="invalid_image"}}"#)), 1.0);
    assert_eq!(get(&m, &format!("tessera_request_duration_seconds_count{{{http}}}")), 7.0);
    assert_eq!(get(&m, &format!("tessera_request_duration_seconds_count{{{rpc}}}")), 3.0);

    // Business vs system: 2 corrupt images + unknown model + top_k=0 are the callers'; the trap is ours.
    assert_eq!(sum(&m, "tessera_errors_total", &[r#"class="business""#, r#"code="invalid_image""#]), 2.0);
    let rejected = get(&m, r#"tessera_errors_total{class="business",code="rule_rejected",stage="rules"}"#);
    assert_eq!(sum(&m, "tessera_errors_total", &[r#"class="business""#]) - rejected, 4.0, "{m:?}");
    assert_eq!(sum(&m, "tessera_errors_total", &[r#"class="system""#]), 1.0, "{m:?}");
    assert_eq!(get(&m, r#"tessera_errors_total{class="system",code="guest_trap",stage="rules"}"#), 1.0);

    // Per model: 5 classifications completed; the 2 corrupt images and the trap failed after
    // the model was resolved (the unknown model and top_k=0 were refused before).
    assert_eq!(get(&m, r#"tessera_inference_request_success_total{model="shapes",version="1"}"#), 5.0);
    assert_eq!(sum(&m, "tessera_inference_request_failure_total", &[r#"model="shapes""#]), 3.0);
    for stage in ["preprocess", "inference", "postprocess", "rules"] {
        let key = format!(r#"tessera_stage_duration_seconds_count{{stage="{stage}",model="shapes"}}"#);
        assert_eq!(get(&m, &key), 5.0, "{key}");
    }

    // Per guest: preprocess ran 8 times (2 refused the bytes), the rule 6 times (one trapped).
    let calls = |guest: &str, stage: &str| {
        get(&m, &format!(r#"tessera_guest_call_duration_seconds_count{{guest="{guest}",stage="{stage}"}}"#))
    };
    let instantiations = |guest: &str, stage: &str| {
        get(&m, &format!(r#"tessera_guest_instantiate_duration_seconds_count{{guest="{guest}",stage="{stage}"}}"#))
    };
    assert_eq!(calls("preprocess", "preprocess"), 6.0);
    assert_eq!(instantiations("preprocess", "preprocess"), 6.0);
    assert_eq!(
        get(&m, r#"tessera_guest_failures_total{guest="preprocess",stage="preprocess",code="invalid_image"}"#),
        2.0
    );
    assert_eq!(calls("postprocess", "postprocess"), 6.0);
    assert_eq!(calls("probe-rules", "rules"), 5.0);
    assert_eq!(get(&m, r#"tessera_guest_failures_total{guest="probe-rules",stage="rules",code="guest_trap"}"#), 1.0);
    let decisions = sum(&m, "tessera_rule_decisions_total", &[r#"rule="probe-rules""#]);
    assert_eq!(decisions, 5.0);
    assert_eq!(
        get(&m, r#"tessera_rule_decisions_total{rule="probe-rules",decision="rejected"}"#),
        get(&m, r#"tessera_errors_total{class="business",code="rule_rejected",stage="rules"}"#),
    );

    // Nothing is left running.
    assert_eq!(get(&m, "tessera_requests_in_flight"), 0.0);
    // A finished call's instance goes back to the pool on the runtime's reaper thread, just
    // after its answer: give it a moment.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while get(&scrape(&server), "tessera_guest_instances_in_use") != 0.0 {
        assert!(std::time::Instant::now() < until, "guest instances were never returned to the pool");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(get(&m, r#"tessera_inference_queue_depth{model="shapes",version="1"}"#), 0.0);
}
