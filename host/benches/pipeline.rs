//! Tessera's baseline benchmark: every figure is a ratio of two things measured side by side
//! in this one run (the machines are shared and noisy). Reproduce with `just bench`.
//!
//! 1. per-stage share of end-to-end time (default model, in-process pipeline);
//! 2. component instantiation per request vs the guest call itself;
//! 3. the WASM preprocess guest vs the same code built natively, on a 1080p JPEG;
//! 4. HTTP requests/s (loopback, `hey` pinned to its own core) vs in-process pipeline and raw
//!    in-process inference of the same model.

use std::io::{BufRead, BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::EngineMode;
use tessera::internals::EngineConfig;
use tessera::internals::ModelRepository;
use tessera::internals::{self, Runtime};
use tessera::{ClassifyRequest, Config, Host};

const ITERATIONS: usize = 200;
const JPEG_ITERATIONS: usize = 40;
const LOAD_SECONDS: u64 = 8;
const LOAD_CONCURRENCY: usize = 4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn config() -> Config {
    let root = root();
    let mut c = Config {
        models_dir: root.join("models"),
        compile_cache_dir: Some(root.join("target/cache/components")),
        ..Config::default()
    };
    c.guests.preprocess = root.join("target/guests/preprocess.wasm");
    c.guests.postprocess = root.join("target/guests/postprocess.wasm");
    for r in &mut c.guests.rules {
        r.path = root.join(&r.path);
    }
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A 1920×1080 photo-like JPEG (gradients + texture + noise), encoded at quality 90.
fn jpeg_1080p() -> Vec<u8> {
    let img = image::RgbImage::from_fn(1920, 1080, |x, y| {
        let n = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) % 32;
        let r = (x * 255 / 1920) as u8 ^ (n as u8);
        let g = (y * 255 / 1080) as u8;
        let b = (((x / 40 + y / 40) % 2) * 120) as u8 + n as u8;
        image::Rgb([r, g, b])
    });
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
    out.into_inner()
}

/// A 320×240 PNG of a star-ish disc on a gradient, like the shapes images.
fn small_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(320, 240, |x, y| {
        let (dx, dy) = (x as f32 - 160.0, y as f32 - 120.0);
        if dx * dx + dy * dy < 60.0 * 60.0 {
            image::Rgb([230, 40, 40])
        } else {
            image::Rgb([(x / 2) as u8, 90, (y / 2) as u8])
        }
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Runs `f` from `threads` threads for `secs` seconds, returns completions per second.
fn throughput(threads: usize, secs: u64, f: impl Fn() + Sync) -> f64 {
    let stop = Instant::now() + Duration::from_secs(secs);
    let counts: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while Instant::now() < stop {
                        f();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    counts.iter().sum::<usize>() as f64 / secs as f64
}

fn main() {
    let config = config();
    let host = Host::builder().config(config.clone()).build().expect("build with `just build` first");
    let png = small_png();
    let jpeg = jpeg_1080p();
    println!("# Tessera baseline benchmark\n");

    // 1. Per-stage share of end-to-end time.
    for (name, img) in [("320x240 PNG", &png), ("1920x1080 JPEG", &jpeg)] {
        let mut sums = [0f64; 5];
        for _ in 0..ITERATIONS {
            let t = host.classify(&ClassifyRequest::new(img.clone(), host.context())).unwrap().timings_ms;
            for (s, v) in sums.iter_mut().zip([t.preprocess, t.inference, t.postprocess, t.rules, t.total]) {
                *s += v;
            }
        }
        let total = sums[4];
        println!(
            "stage share, {name} ({ITERATIONS} requests, mean total {:.2} ms): preprocess {:.1}%, inference {:.1}%, postprocess {:.1}%, rules {:.1}%, other {:.1}%",
            total / ITERATIONS as f64,
            100.0 * sums[0] / total,
            100.0 * sums[1] / total,
            100.0 * sums[2] / total,
            100.0 * sums[3] / total,
            100.0 * (total - sums[..4].iter().sum::<f64>()) / total,
        );
    }

    // 2. Instantiation vs call.
    let runtime = Runtime::new(&config.limits, config.compile_cache_dir.as_deref()).unwrap();
    let pre = runtime.load_preprocess(&config.guests.preprocess, internals::default_grants()).unwrap();
    let post = runtime.load_postprocess(&config.guests.postprocess, internals::default_grants()).unwrap();
    let engine = EngineConfig { mode: EngineMode::Throughput, threads: 2, queue_len: 64 };
    let repo = ModelRepository::load(&config.models_dir, engine).unwrap();
    let model = repo.snapshot().get("shapes").unwrap().clone();
    let version = model.resolve(None).unwrap();
    let spec = model.manifest.spec_view(&model.name, version.version, model.labels.len() as u32);
    let far = || Instant::now() + Duration::from_secs(10);
    let (mut pi, mut pc, mut qi, mut qc) = (vec![], vec![], vec![], vec![]);
    let logits = vec![0.5f32; model.labels.len()];
    for _ in 0..ITERATIONS {
        let (_, p) = runtime.preprocess(&pre, &png, None, &spec, &config.limits, far()).unwrap();
        pi.push(p.instantiate.as_secs_f64() * 1e6);
        pc.push(p.call.as_secs_f64() * 1e6);
        let (_, p) = runtime.postprocess(&post, None, logits.clone(), &spec, &model.labels, 5, far()).unwrap();
        qi.push(p.instantiate.as_secs_f64() * 1e6);
        qc.push(p.call.as_secs_f64() * 1e6);
    }
    let (pi, pc, qi, qc) = (median(pi), median(pc), median(qi), median(qc));
    println!(
        "instantiate vs call, preprocess (320x240 PNG): {pi:.1} µs vs {pc:.1} µs (instantiation = {:.3}× the call)",
        pi / pc
    );
    println!(
        "instantiate vs call, postprocess (8 logits): {qi:.1} µs vs {qc:.1} µs (instantiation = {:.3}× the call)",
        qi / qc
    );

    // 3. WASM vs native preprocess, 1080p JPEG, interleaved.
    let native_spec = tessera_preprocess::Spec {
        height: 224,
        width: 224,
        resize: 256,
        mean: model.manifest.mean,
        std: model.manifest.std,
    };
    let native_limits = tessera_preprocess::Limits {
        max_pixels: config.limits.max_image_pixels,
        max_alloc_bytes: config.limits.max_decode_alloc_bytes,
    };
    let (mut wasm, mut native) = (vec![], vec![]);
    for _ in 0..JPEG_ITERATIONS {
        let t = Instant::now();
        let (a, _) = runtime.preprocess(&pre, &jpeg, None, &spec, &config.limits, far()).unwrap();
        wasm.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let b = tessera_preprocess::preprocess(&jpeg, &native_spec, &native_limits).unwrap();
        native.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(a.len(), b.len());
        let max_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max_diff < 1e-5, "WASM and native preprocess differ by {max_diff}");
    }
    let (w, n) = (median(wasm), median(native));
    println!(
        "preprocess 1920x1080 JPEG: WASM {w:.2} ms vs native {n:.2} ms (WASM/native = {:.2}×; outputs identical within 1e-5)",
        w / n
    );

    // 4. Throughput: raw inference, in-process pipeline, HTTP.
    let (input, _) = runtime.preprocess(&pre, &png, None, &spec, &config.limits, far()).unwrap();
    let raw = throughput(LOAD_CONCURRENCY, LOAD_SECONDS, || {
        version.pool.run(input.clone(), far()).unwrap();
    });
    let host = Arc::new(host);
    let pipeline = throughput(LOAD_CONCURRENCY, LOAD_SECONDS, || {
        host.classify(&ClassifyRequest::new(png.clone(), host.context())).unwrap();
    });
    drop(repo);
    match http_rps(&png) {
        Some(http) => println!(
            "throughput ({LOAD_CONCURRENCY} concurrent, {LOAD_SECONDS} s each): raw inference {raw:.0}/s, in-process pipeline {pipeline:.0}/s, HTTP {http:.0} req/s → HTTP/raw inference = {:.2}×, HTTP/in-process pipeline = {:.2}×",
            http / raw,
            http / pipeline
        ),
        None => println!(
            "throughput: raw inference {raw:.0}/s, in-process pipeline {pipeline:.0}/s (pipeline/raw = {:.2}×); HTTP skipped: `hey` or target/release/tessera missing (just bench installs hey)",
            pipeline / raw
        ),
    }
}

/// Starts the real server and loads it with `hey` (pinned to the last core when `taskset` is
/// there), returning requests/s.
fn http_rps(png: &[u8]) -> Option<f64> {
    let bin = root().join("target/release/tessera");
    if !bin.is_file() || Command::new("hey").arg("-h").stderr(Stdio::null()).stdout(Stdio::null()).status().is_err() {
        return None;
    }
    let mut server = Command::new(&bin)
        .current_dir(root())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take()?).read_line(&mut line).ok()?;
    let addr = line.trim().strip_prefix("tessera listening on http://")?.to_string();
    let ready = Instant::now() + Duration::from_secs(60);
    while Command::new("curl")
        .args(["-sf", &format!("http://{addr}/readyz")])
        .stdout(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        if Instant::now() > ready {
            let _ = server.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = std::env::temp_dir().join("tessera-bench.png");
    std::fs::write(&body, png).ok()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut cmd = if cores > 1 && Command::new("taskset").arg("-V").stdout(Stdio::null()).status().is_ok() {
        let mut c = Command::new("taskset");
        c.args(["-c", &(cores - 1).to_string(), "hey"]);
        c
    } else {
        Command::new("hey")
    };
    let out = cmd
        .args([
            "-z",
            &format!("{LOAD_SECONDS}s"),
            "-c",
            &LOAD_CONCURRENCY.to_string(),
            "-m",
            "POST",
            "-T",
            "image/png",
            "-D",
        ])
        .arg(&body)
        .arg(format!("http://{addr}/v1/classify"))
        .output()
        .ok()?;
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    // hey lists "[status]\tcount responses" under "Status code distribution:".
    let failures: Vec<&str> = text.lines().filter(|l| l.contains("responses") && !l.contains("[200]")).collect();
    if !failures.is_empty() {
        eprintln!("hey saw non-200 answers: {failures:?}");
    }
    text.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok())
}
