//! Engine benchmark: tract (both scheduling modes) against onnxruntime (Python, the engine a
//! user would otherwise pick) on seeded ResNet-18 and ResNet-50 at batch 1, same thread count,
//! one invocation, figures as ratios. Reproduce with `just bench-engine`.
//!
//! - throughput: tract with THREADS single-threaded workers and 2×THREADS concurrent callers,
//!   vs the faster of onnxruntime's THREADS 1-thread sessions / one THREADS-thread session;
//! - latency: tract with one worker whose matmuls use THREADS threads, one caller, vs one
//!   onnxruntime session with THREADS intra-op threads, one caller.
//!
//! tract runs each model in fp32 and as the int8 graph `models/tools/quantize.py` makes of
//! it, on AMX (this process asks for it) and on AVX-512 VNNI (a child process of this bench,
//! since tract fixes its CPU features once per process). onnxruntime runs fp32: the engine a
//! user would otherwise pick, and the target.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera::inference::tract::profile_ops;
use tessera::inference::{EngineConfig, EngineKind, EngineMode, InferencePool};

const THREADS: usize = 2;
const SECONDS: u64 = 8;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

struct Figures {
    images_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Set in the child process that measures tract without AMX.
const CHILD_ENV: &str = "TESSERA_ENGINE_BENCH_NO_AMX";
/// Set in the child processes that measure resident memory: `WORKERS:MODEL`.
const RSS_CHILD_ENV: &str = "TESSERA_ENGINE_BENCH_RSS";

fn tract(model: &Path, mode: EngineMode, callers: usize) -> Figures {
    let pool = InferencePool::load(
        model,
        &[1, 3, 224, 224],
        EngineKind::Tract,
        &EngineConfig { mode, threads: THREADS, queue_len: 64 },
    )
    .expect("loading the model");
    let input: Vec<f32> = (0..3 * 224 * 224).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let far = || Instant::now() + Duration::from_secs(60);
    pool.infer(input.clone(), far()).unwrap(); // warm-up
    let stop = Instant::now() + Duration::from_secs(SECONDS);
    let mut latencies: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                s.spawn(|| {
                    let mut ms = Vec::new();
                    while Instant::now() < stop {
                        let t = Instant::now();
                        pool.infer(input.clone(), far()).unwrap();
                        ms.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    ms
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    latencies.sort_by(f64::total_cmp);
    Figures {
        images_per_s: latencies.len() as f64 / SECONDS as f64,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    }
}

/// This process's resident set size in MiB (Linux).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Resident memory added by loading `model` with `workers` workers (and running one image on
/// each), measured in a fresh child process so no freed memory of an earlier model is reused.
fn rss_added(model: &Path, workers: usize) -> f64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(RSS_CHILD_ENV, format!("{workers}:{}", model.display()))
        .output()
        .expect("running the bench's RSS child process");
    assert!(out.status.success(), "RSS child failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("RSS child output")
}

fn rss_child(spec: &str) {
    let (workers, model) = spec.split_once(':').unwrap();
    let workers: usize = workers.parse().unwrap();
    tessera::inference::request_amx_int8(true); // as the parent process runs them
    let input = vec![0.5f32; 3 * 224 * 224];
    let far = Instant::now() + Duration::from_secs(60);
    let before = rss_mib();
    let pool = InferencePool::load(
        Path::new(model),
        &[1, 3, 224, 224],
        EngineKind::Tract,
        &EngineConfig { mode: EngineMode::Throughput, threads: workers, queue_len: 8 },
    )
    .unwrap();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| pool.infer(input.clone(), far).unwrap());
        }
    });
    println!("{:.1}", rss_mib() - before);
}

fn ort(model: &Path) -> Value {
    // numpy must be single-threaded for the per-core sgemm figure; the machine's OpenBLAS
    // overrides slow a current numpy, so they are dropped for this measurement only.
    let out = Command::new(root().join(".venv/bin/python"))
        .env("OPENBLAS_NUM_THREADS", "1")
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .arg(root().join("models/tools/ort_bench.py"))
        .arg(model)
        .args(["--threads", &THREADS.to_string(), "--seconds", &SECONDS.to_string()])
        .output()
        .expect("running ort_bench.py");
    assert!(out.status.success(), "ort_bench.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("ort_bench.py output")
}

/// tract on `model` in a child process without AMX: (throughput, latency).
fn tract_without_amx(model: &Path) -> (Figures, Figures) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, model)
        .output()
        .expect("running the bench's child process");
    assert!(out.status.success(), "child bench failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("child bench output");
    (fig(&v["throughput"]), fig(&v["latency"]))
}

fn child(model: &Path) {
    assert!(!tessera::inference::request_amx_int8(false));
    let json = |f: Figures| serde_json::json!({"images_per_s": f.images_per_s, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms});
    let throughput = tract(model, EngineMode::Throughput, 2 * THREADS);
    let latency = tract(model, EngineMode::Latency, 1);
    println!("{}", serde_json::json!({"throughput": json(throughput), "latency": json(latency)}));
}

fn fig(v: &Value) -> Figures {
    Figures {
        images_per_s: v["images_per_s"].as_f64().unwrap(),
        p50_ms: v["p50_ms"].as_f64().unwrap(),
        p99_ms: v["p99_ms"].as_f64().unwrap(),
    }
}

fn main() {
    if let Some(model) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&model));
    }
    if let Ok(spec) = std::env::var(RSS_CHILD_ENV) {
        return rss_child(&spec);
    }
    let amx = tessera::inference::request_amx_int8(true);
    println!("# Engine: tract vs onnxruntime fp32, batch 1, {THREADS} threads, {SECONDS} s per setup\n");
    println!(
        "| model | tract engine | mode | tract img/s | tract p50 / p99 ms | onnxruntime fp32 img/s | ort p50 / p99 ms | tract/ort img/s | % of FP32 peak, tract / ort |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // GFLOP per image (2 × multiply-adds) of the torchvision architectures at 224×224.
    let mut profiles = Vec::new();
    let mut rss = Vec::new();
    // `BENCH_MODELS=mobilenetv2,resnet50` runs only those.
    let only = std::env::var("BENCH_MODELS").unwrap_or_default();
    let archs = [("resnet18", 3.64, true), ("resnet50", 8.21, true), ("mobilenetv2", 0.60, true)];
    for (arch, gflop, with_int8) in
        archs.into_iter().filter(|(a, _, _)| only.is_empty() || only.split(',').any(|o| o == *a))
    {
        let fp32 = root().join(format!("build/models/{arch}/1/model.onnx"));
        let int8 = root().join(format!("build/models/{arch}-int8/1/model.onnx"));
        let models = if with_int8 { vec![("fp32", &fp32), ("int8", &int8)] } else { vec![("fp32", &fp32)] };
        for (_, model) in &models {
            assert!(model.is_file(), "{} is missing: run `just models`", model.display());
        }
        let mut engines =
            vec![("fp32", tract(&fp32, EngineMode::Throughput, 2 * THREADS), tract(&fp32, EngineMode::Latency, 1))];
        if with_int8 {
            engines.push((
                if amx { "int8, AMX" } else { "int8 (no AMX on this CPU)" },
                tract(&int8, EngineMode::Throughput, 2 * THREADS),
                tract(&int8, EngineMode::Latency, 1),
            ));
        }
        if amx && with_int8 {
            let (throughput, latency) = tract_without_amx(&int8);
            engines.push(("int8, AVX-512 VNNI", throughput, latency));
        }
        let o = ort(&fp32);
        let (sessions, shared) = (fig(&o["throughput_sessions"]), fig(&o["throughput_shared"]));
        let ort_throughput = if sessions.images_per_s >= shared.images_per_s { sessions } else { shared };
        let ort_latency = fig(&o["latency"]);
        let peak = o["sgemm_gflops_per_core"].as_f64().unwrap() * THREADS as f64;
        for (engine, throughput, latency) in &engines {
            for (mode, t, r) in [("throughput", throughput, &ort_throughput), ("latency", latency, &ort_latency)] {
                let tract_peak = if engine.starts_with("fp32") {
                    format!("{:.0} %", 100.0 * t.images_per_s * gflop / peak)
                } else {
                    "(int8)".to_string()
                };
                println!(
                    "| {arch} | {engine} | {mode} | {:.1} | {:.1} / {:.1} | {:.1} | {:.1} / {:.1} | **{:.2}×** | {tract_peak} / {:.0} % |",
                    t.images_per_s,
                    t.p50_ms,
                    t.p99_ms,
                    r.images_per_s,
                    r.p50_ms,
                    r.p99_ms,
                    t.images_per_s / r.images_per_s,
                    100.0 * r.images_per_s * gflop / peak,
                );
            }
        }
        eprintln!("onnxruntime {} setups for {arch}: {o}", o["onnxruntime"]);
        eprintln!("FP32 peak (single-thread sgemm × {THREADS} cores): {peak:.0} GFLOP/s");
        for (precision, model) in models {
            profiles
                .push((format!("{arch} {precision}"), profile_ops(model, &[1, 3, 224, 224], 3).expect("profiling")));
            let (one, four) = (rss_added(model, 1), rss_added(model, 4));
            let size = std::fs::metadata(model).map(|m| m.len() as f64 / (1 << 20) as f64).unwrap_or(0.0);
            rss.push(format!(
                "{arch} {precision} ({size:.0} MiB of ONNX): +{one:.0} MiB with 1 worker, +{four:.0} MiB with 4 workers"
            ));
        }
    }
    println!("\n## Resident memory per loaded version\n");
    for line in rss {
        println!("- {line}");
    }
    for (what, ops) in profiles {
        let total: f64 = ops.iter().map(|o| o.ms).sum();
        println!("\n## tract per-op profile, {what}, 1 thread (3 runs; {total:.1} ms per run)\n");
        println!("| op | nodes | ms per run | share |");
        println!("|---|---|---|---|");
        for o in ops.iter().take(10) {
            println!("| {} | {} | {:.2} | {:.1} % |", o.op, o.nodes, o.ms, 100.0 * o.ms / total);
        }
        for o in ops.iter().take(2) {
            println!("\nslowest {}: {}", o.op, o.slowest_node);
        }
    }
}
