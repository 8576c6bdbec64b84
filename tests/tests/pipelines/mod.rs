//! Named pipelines: config gives some models other guests, and a request may select a pipeline
//! by name (`pipeline=`); the response says which one ran.

use serde_json::{Value, json};

use crate::support::{Server, client, config_with_rules, guest, guests_ran as ran, pairs, root, shapes};
use crate::{CLASSES_SEED, assert_error, read};

#[test]
fn a_request_gets_its_models_pipeline_or_the_one_it_names() {
    let dir = root().join(format!("target/test-data/pipelines-{}", std::process::id()));
    let config = config_with_rules(
        &dir,
        &format!(
            "[[guests.rules]]\npath = {threshold:?}\n[guests.rules.config]\n\"min-confidence\" = \"0.5\"\n\
             [pipelines.reference]\nmodels = [\"shapes-int8\"]\n\
             [[pipelines.reference.rules]]\npath = {reference:?}\n\
             [pipelines.reference.rules.config]\n\"category.circle\" = \"round\"\n\"default-category\" = \"shape\"\n\
             [[pipelines.reference.rules]]\npath = {threshold:?}\n\
             [pipelines.reference.rules.config]\n\"min-confidence\" = \"0.99999\"\n\
             [pipelines.bare]\nrules = []\npreprocess_wasi = []\n",
            threshold = guest("rules-threshold"),
            reference = guest("rules-rust"),
        ),
    );
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let case = shapes(CLASSES_SEED, 1).into_iter().find(|c| c.label == "circle").unwrap();
    let image = read(&case.path);
    let common = [("preprocess", "preprocess"), ("postprocess", "postprocess")];

    // The default model has no pipeline of its own: [guests].
    let (status, body, _) = server.classify(&image, "", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pipeline"], "default", "{body}");
    assert_eq!(ran(&body), pairs(&[common[0], common[1], ("rules", "rules-threshold")]), "{body}");

    // shapes-int8 is in `reference`'s models; the same component twice in one chain, each
    // with its own config (the second one's threshold rejects).
    let (status, body, _) = server.classify(&image, "?model=shapes-int8", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pipeline"], "reference", "{body}");
    assert_eq!(body["label"], "circle", "{body}");
    let expected = [common[0], common[1], ("rules", "rules-rust"), ("rules", "rules-threshold")];
    assert_eq!(ran(&body), pairs(&expected), "{body}");
    assert_eq!(body["decision"]["accepted"], false, "{body}");
    assert_eq!(body["decision"]["rule"], "rules-threshold", "{body}");

    // A request names a pipeline: it wins over the model's.
    let (status, body, _) = server.classify(&image, "?model=shapes-int8&pipeline=default", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pipeline"], "default", "{body}");
    assert_eq!(body["decision"]["rule"], "rules-threshold", "{body}");
    assert_eq!(body["decision"]["accepted"], true, "{body}");
    let (status, body, _) = server.classify(&image, "?pipeline=reference&top_k=2", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"]["name"], "shapes", "{body}");
    assert_eq!(ran(&body)[2], ("rules".to_string(), "rules-rust".to_string()), "{body}");
    assert_eq!(body["top_k"].as_array().unwrap().len(), 2, "{body}");
    // `rules = []`: preprocess and postprocess from [guests], no rules; its preprocess guest
    // linked with no WASI at all (`preprocess_wasi = []`) runs as well.
    let (status, body, _) = server.classify(&image, "?pipeline=bare", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(ran(&body), pairs(&common), "{body}");
    assert_eq!(body["decision"]["reason"], "no rules configured", "{body}");
    assert_eq!(body["decision"]["rule"], Value::Null, "{body}");

    let (status, body, _) = server.classify(&image, "?pipeline=nope", &[]);
    assert_error(status, &body, 404, "pipeline_not_found");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"nope\"") && message.contains("bare, default, reference"), "{body}");

    // Listings say which pipeline serves which model.
    let listed: Value = client().get(server.url("/v1/pipelines")).send().unwrap().json().unwrap();
    let by_name = |name: &str| listed["pipelines"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned();
    let reference = by_name("reference").unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(reference["models"], json!(["shapes-int8"]), "{listed}");
    assert_eq!(reference["rules"], json!(["rules-rust", "rules-threshold"]), "{listed}");
    assert_eq!(reference["preprocess"], "preprocess", "{listed}");
    assert_eq!(by_name("default").unwrap()["models"], json!(["shapes"]), "{listed}");
    assert_eq!(by_name("bare").unwrap()["models"], json!([]), "{listed}");
    // Each stage's grants: the defaults, or the pipeline's own.
    assert_eq!(by_name("default").unwrap()["preprocess_wasi"], json!(["clocks", "random"]), "{listed}");
    assert_eq!(by_name("bare").unwrap()["preprocess_wasi"], json!([]), "{listed}");
    assert_eq!(by_name("bare").unwrap()["postprocess_wasi"], json!(["clocks", "random"]), "{listed}");
    let models: Value = client().get(server.url("/v1/models")).send().unwrap().json().unwrap();
    let int8 = models["models"].as_array().unwrap().iter().find(|m| m["name"] == "shapes-int8").unwrap();
    assert_eq!(int8["pipeline"], "reference", "{models}");
    let _ = std::fs::remove_dir_all(&dir);
}
