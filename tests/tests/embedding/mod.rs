//! Embedding without the server: the C example (`capi/examples/classify.c`) compiled with the
//! system's C compiler against the generated header and `libtessera_capi.so`, and the Rust
//! example (`host/examples/embed.rs`), both run on labelled images and a corrupt one.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{config_with_rules, guest, png, root, shapes};
use crate::{CLASSES_SEED, read};

fn run(program: &Path, config: &Path, image: &Path) -> Output {
    Command::new(program).arg(config).arg(image).output().unwrap()
}

#[test]
fn the_c_and_rust_examples_classify_as_the_server_does_and_report_errors_by_code() {
    let dir = root().join(format!("target/test-data/embedding-{}", std::process::id()));
    let config = config_with_rules(
        &dir,
        &format!(
            "[[guests.rules]]\npath = {:?}\nconfig = {{ \"min-confidence\" = \"0.5\" }}\n",
            guest("rules-threshold")
        ),
    );
    let lib_dir = root().join("target/release");
    assert!(
        lib_dir.join("libtessera_capi.so").is_file(),
        "target/release/libtessera_capi.so is missing: run the tests with `./run test` (it builds the C API)"
    );
    let example = root().join("capi/examples/classify.c");
    let lines = std::fs::read_to_string(&example).unwrap().lines().count();
    assert!(lines <= 20, "the C example is {lines} lines: the promise is 20 at most");

    // The compiler an agent's build would use: $CC, else cc. Warnings are errors, so a header
    // that C compilers complain about fails here.
    let c_program = dir.join("classify");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-I"])
        .arg(root().join("capi/include"))
        .arg(&example)
        .arg("-o")
        .arg(&c_program)
        .arg("-L")
        .arg(&lib_dir)
        .arg("-ltessera_capi")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .output()
        .unwrap_or_else(|e| panic!("{cc}: {e} (install a C compiler; ./run installs clang)"));
    assert!(out.status.success(), "{cc} failed: {}", String::from_utf8_lossy(&out.stderr));
    let rust_program = root().join("target/release/examples/embed");
    assert!(rust_program.is_file(), "{} is missing: run `./run test`", rust_program.display());

    for case in shapes(CLASSES_SEED, 2).iter().take(4) {
        let mut answers = Vec::new();
        for program in [&c_program, &rust_program] {
            let out = run(program, &config, &case.path);
            assert!(out.status.success(), "{}: {}", program.display(), String::from_utf8_lossy(&out.stderr));
            let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(body["label"], case.label.as_str(), "{}: {body}", program.display());
            assert_eq!(body["model"]["name"], "shapes");
            let top_k: Vec<(u64, String, f64)> = body["top_k"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["index"].as_u64().unwrap(),
                        p["label"].as_str().unwrap().to_string(),
                        p["score"].as_f64().unwrap(),
                    )
                })
                .collect();
            answers.push((top_k, body["decision"]["accepted"].clone()));
        }
        // Same classes in the same order and the same decision; scores to float rounding.
        let (c, rust) = (&answers[0], &answers[1]);
        assert_eq!(c.1, rust.1, "C and Rust decide alike on {}", case.path.display());
        assert_eq!(c.0.len(), rust.0.len());
        for (a, b) in c.0.iter().zip(&rust.0) {
            assert!(a.0 == b.0 && a.1 == b.1 && (a.2 - b.2).abs() < 1e-4, "{a:?} vs {b:?} on {}", case.path.display());
        }
    }

    // A corrupt image: the C example prints the code's name and the message, exits 1.
    let corrupt = dir.join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff\xe0 this is not a JPEG").unwrap();
    let out = run(&c_program, &config, &corrupt);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("invalid_image: "), "{stderr}");
    // A config that does not parse: code `config`, the message names the file.
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "models_dir = [").unwrap();
    let out = run(&c_program, &broken, &corrupt);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("config: ") && stderr.contains("broken.toml"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_library_runs_the_same_pipeline_without_http() {
    let host = tessera::Host::builder()
        .models(root().join("models"))
        .compile_cache_dir(Some(root().join("target/cache/components")))
        .preprocess(guest("preprocess"))
        .postprocess(guest("postprocess"))
        .rules(vec![tessera::RuleConfig {
            config: [("min-confidence".to_string(), "0.99999".to_string()), ("allow".to_string(), "star".to_string())]
                .into(),
            ..tessera::RuleConfig::new(guest("rules-threshold"))
        }])
        .build()
        .unwrap();
    for case in shapes(CLASSES_SEED, 2).iter().take(8) {
        let result = host.classify(&tessera::ClassifyRequest::new(read(&case.path), host.context())).unwrap();
        assert_eq!(result.label, case.label);
        // The strict rule rejects as a business outcome, not an error.
        if !result.decision.accepted {
            assert!(result.decision.category.is_some());
        }
    }
    let err = host.classify(&tessera::ClassifyRequest::new(b"nope".to_vec(), host.context())).unwrap_err();
    assert_eq!(err.kind, tessera::ErrorKind::InvalidImage);
    assert_eq!(err.stage, tessera::Stage::Preprocess);
    let req = tessera::ClassifyRequest::new(png(64, 64), host.context().with_model(Some("missing".into()), None));
    assert_eq!(host.classify(&req).unwrap_err().kind, tessera::ErrorKind::ModelNotFound);
}
