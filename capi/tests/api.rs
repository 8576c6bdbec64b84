//! The C API called as C calls it (raw pointers, status codes), against the library's own answer
//! for the same bytes: one host shared by threads that classify and reload at once, every error
//! a code plus a message, null everywhere a pointer is taken.
//!
//! Needs the repository's models and the guests `just guests` builds (`./run test` does both).

use std::ffi::{CStr, CString, c_char};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};

use tessera_capi::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A config with the repository's models and default guests, in a directory of its own.
fn config(name: &str) -> PathBuf {
    let dir = root().join(format!("target/test-data/capi-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let guest = |g: &str| {
        let path = root().join(format!("target/guests/{g}.wasm"));
        assert!(path.is_file(), "{} is missing: run `./run test` (it builds the guests)", path.display());
        path
    };
    let path = dir.join("tessera.toml");
    let toml = format!(
        "models_dir = {:?}\ncompile_cache_dir = {:?}\n[guests]\npreprocess = {:?}\npostprocess = {:?}\n\
         [[guests.rules]]\npath = {:?}\nconfig = {{ \"min-confidence\" = \"0.5\" }}\n",
        root().join("models"),
        root().join("target/cache/components"),
        guest("preprocess"),
        guest("postprocess"),
        guest("rules-threshold"),
    );
    std::fs::write(&path, toml).unwrap();
    path
}

/// A 96×96 PNG of a filled circle (a shape the default model knows), varied by `seed`.
fn circle_png(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(96, 96, |x, y| {
        let (dx, dy) = (x as i32 - 48, y as i32 - 48);
        if dx * dx + dy * dy < (20 + seed as i32 % 10).pow(2) {
            image::Rgb([230, 40, 40])
        } else {
            image::Rgb([20, 20, 60])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Takes a string the library returned, freeing it.
fn take(s: *mut c_char) -> String {
    assert!(!s.is_null(), "a string was expected");
    // SAFETY: a live string from the library, freed right after the copy.
    let copy = unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_string();
    unsafe { tessera_string_free(s) };
    copy
}

struct SharedHost(*mut TesseraHost);
// SAFETY: the C API's contract: a host is used from any number of threads at once.
unsafe impl Send for SharedHost {}
unsafe impl Sync for SharedHost {}

impl SharedHost {
    /// Through a method, so closures capture the `SharedHost` (Sync), not its pointer field.
    fn ptr(&self) -> *mut TesseraHost {
        self.0
    }
}

fn new_host(config: &Path) -> SharedHost {
    let path = CString::new(config.to_str().unwrap()).unwrap();
    let (mut host, mut error) = (null_mut(), null_mut());
    // SAFETY: valid C string and out-pointers.
    let status = unsafe { tessera_host_new(path.as_ptr(), &mut host, &mut error) };
    assert_eq!(
        status,
        TesseraStatus::Ok,
        "tessera_host_new: {}",
        if error.is_null() { String::new() } else { take(error) }
    );
    assert!(error.is_null(), "no message on success");
    SharedHost(host)
}

#[test]
fn threads_classify_and_reload_through_one_host_and_agree_with_the_library() {
    let config = config("threads");
    let library = tessera::Host::builder().config(tessera::Config::from_file(&config).unwrap()).build().unwrap();
    let host = new_host(&config);
    let images: Vec<Vec<u8>> = (0..4).map(circle_png).collect();
    let expected: Vec<tessera::Classification> = images
        .iter()
        .map(|i| library.classify(&tessera::ClassifyRequest::new(i.clone(), library.context())).unwrap())
        .collect();

    std::thread::scope(|s| {
        for t in 0..4 {
            let (host, images, expected) = (&host, &images, &expected);
            s.spawn(move || {
                for round in 0..6 {
                    let i = (t + round) % images.len();
                    let want = &expected[i];
                    let (mut out, mut json, mut error) = (null_mut(), null_mut(), null_mut());
                    // SAFETY: a live host, a byte buffer of its length, valid out-pointers.
                    let status = unsafe {
                        tessera_classify(host.ptr(), null(), images[i].as_ptr(), images[i].len(), &mut out, &mut error)
                    };
                    assert_eq!(status, TesseraStatus::Ok);
                    // SAFETY: a classification from tessera_classify, freed below.
                    let c = unsafe { &*out };
                    let text = |p: *const c_char| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string();
                    assert_eq!(text(c.label), want.label);
                    // Scores agree to float rounding: a lone request's convolutions are split over
                    // the inference threads, concurrent ones are not, and the sums differ in order.
                    let close = |a: f32, b: f32| (a - b).abs() < 1e-4;
                    assert!(close(c.confidence, want.confidence), "{} vs {}", c.confidence, want.confidence);
                    assert_eq!((text(c.model), text(c.version)), (want.model.name.clone(), want.model.version.clone()));
                    assert_eq!((c.accepted, text(c.reason)), (want.decision.accepted, want.decision.reason.clone()));
                    // SAFETY: top_k points at top_k_len predictions while `out` lives.
                    let top_k = unsafe { std::slice::from_raw_parts(c.top_k, c.top_k_len) };
                    assert_eq!(top_k.len(), want.top_k.len());
                    for (got, want) in top_k.iter().zip(&want.top_k) {
                        assert_eq!((got.index, text(got.label)), (want.index, want.label.clone()));
                        assert!(close(got.score, want.score), "{} vs {}", got.score, want.score);
                    }
                    assert!(c.total_ms > 0.0);
                    unsafe { tessera_classification_free(out) };

                    // SAFETY: as above.
                    let status = unsafe {
                        tessera_classify_json(
                            host.ptr(),
                            null(),
                            images[i].as_ptr(),
                            images[i].len(),
                            &mut json,
                            &mut error,
                        )
                    };
                    assert_eq!(status, TesseraStatus::Ok);
                    let body: serde_json::Value = serde_json::from_str(&take(json)).unwrap();
                    assert_eq!(body["label"], want.label.as_str());
                    assert_eq!(body["top_k"].as_array().unwrap().len(), want.top_k.len());
                    assert!(body["timings_ms"]["inference"].as_f64().unwrap() > 0.0);
                }
            });
        }
        // Reloads while the threads classify: nothing changed on disk, so nothing may fail.
        s.spawn(|| {
            for _ in 0..3 {
                let (mut report, mut error) = (null_mut(), null_mut());
                // SAFETY: a live host and valid out-pointers.
                let status = unsafe { tessera_reload(host.ptr(), &mut report, &mut error) };
                assert_eq!(status, TesseraStatus::Ok);
                let report: serde_json::Value = serde_json::from_str(&take(report)).unwrap();
                assert_eq!(report["guests"], "unchanged");
                assert!(report["models"].as_array().unwrap().iter().any(|m| m["name"] == "shapes"), "{report}");
            }
        });
    });
    // SAFETY: every thread that used it has ended.
    unsafe { tessera_host_free(host.ptr()) };
}

#[test]
fn every_failure_is_a_code_and_a_message_and_null_is_refused_not_dereferenced() {
    let host = new_host(&config("errors"));
    let (mut json, mut error) = (null_mut(), null_mut());
    let garbage = b"not an image at all";
    // SAFETY: a live host, a buffer of its length, valid out-pointers.
    let status =
        unsafe { tessera_classify_json(host.ptr(), null(), garbage.as_ptr(), garbage.len(), &mut json, &mut error) };
    assert_eq!(status, TesseraStatus::InvalidImage);
    assert!(json.is_null(), "no answer on failure");
    assert!(!take(error).is_empty());
    // SAFETY: static strings.
    let name = |s: i32| unsafe { CStr::from_ptr(tessera_status_name(s)) }.to_str().unwrap();
    assert_eq!(name(status as i32), "invalid_image");
    assert_eq!((name(0), name(17), name(-1), name(99)), ("ok", "guest_trap", "unknown", "unknown"));

    let model = CString::new("no-such-model").unwrap();
    let image = circle_png(0);
    // SAFETY: as above; an error message is optional.
    let status = unsafe {
        tessera_classify_json(host.ptr(), model.as_ptr(), image.as_ptr(), image.len(), &mut json, null_mut())
    };
    assert_eq!(status, TesseraStatus::ModelNotFound);
    // An empty buffer may be null.
    let status = unsafe { tessera_classify_json(host.ptr(), null(), null(), 0, &mut json, &mut error) };
    assert_eq!(status, TesseraStatus::InvalidImage);
    take(error);

    // Null where a value is needed: refused with a message.
    let status = unsafe { tessera_classify_json(null(), null(), image.as_ptr(), image.len(), &mut json, &mut error) };
    assert_eq!((status, take(error)), (TesseraStatus::InvalidArgument, "host is null".to_string()));
    let status = unsafe { tessera_classify_json(host.ptr(), null(), null(), 10, &mut json, &mut error) };
    assert_eq!((status, take(error)), (TesseraStatus::InvalidArgument, "image is null".to_string()));
    let status = unsafe { tessera_classify(host.ptr(), null(), image.as_ptr(), image.len(), null_mut(), &mut error) };
    assert_eq!(status, TesseraStatus::InvalidArgument);
    take(error);

    // A config that does not exist, and one that names a guest that does not exist.
    let missing = CString::new("/nonexistent/tessera.toml").unwrap();
    let mut other = null_mut();
    let status = unsafe { tessera_host_new(missing.as_ptr(), &mut other, &mut error) };
    assert_eq!(status, TesseraStatus::Config);
    assert!(take(error).contains("/nonexistent/tessera.toml"));
    let bad = config("bad-guest");
    std::fs::write(
        &bad,
        format!("models_dir = {:?}\n[guests]\npreprocess = \"/nonexistent/pre.wasm\"\n", root().join("models")),
    )
    .unwrap();
    let bad = CString::new(bad.to_str().unwrap()).unwrap();
    let status = unsafe { tessera_host_new(bad.as_ptr(), &mut other, &mut error) };
    assert_eq!(status, TesseraStatus::Build);
    assert!(take(error).contains("/nonexistent/pre.wasm"));
    assert!(other.is_null());

    // Every free takes null.
    unsafe {
        tessera_string_free(null_mut());
        tessera_classification_free(null_mut());
        tessera_host_free(null_mut());
        tessera_host_free(host.ptr());
    }
    assert_eq!(unsafe { CStr::from_ptr(tessera_version()) }.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}
