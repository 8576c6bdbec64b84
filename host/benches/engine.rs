//! Engine benchmark: every engine Tessera offers, and the Python onnxruntime a user would
//! otherwise pick, on the default model, seeded ResNet-18/50 and the depthwise MobileNetV2,
//! batch 1, same thread count, one invocation, figures as ratios. Reproduce with
//! `just bench-engine` (`BENCH_MODELS=resnet50,mobilenetv2` runs only those).
//!
//! Systems, each in two modes:
//! - tract fp32, and tract on the int8 QOperator graph `models/tools/quantize.py` makes for it
//!   (on AMX when this process gets it, and on AVX-512 VNNI in a child process of this bench,
//!   since tract fixes its CPU features once per process);
//! - Tessera's onnxruntime engine (the `.venv` wheel's library) on the fp32 graph and on the
//!   int8 QDQ graph (`quantize.py --format qdq`);
//! - Python onnxruntime on the same two graphs (`models/tools/ort_bench.py`).
//!
//! Modes: throughput = Tessera with THREADS workers (tract: single-threaded ones; onnxruntime:
//! its one session over THREADS intra-op threads) and 2×THREADS concurrent callers, against the
//! faster of Python onnxruntime's THREADS 1-thread sessions / one THREADS-thread session;
//! latency = one caller, THREADS threads on each image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera::internals::tract::profile_ops;
use tessera::internals::{EngineConfig, InferencePool};
use tessera::{EngineKind, EngineMode};

const THREADS: usize = 2;
const SECONDS: u64 = 8;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[derive(Clone)]
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

/// `callers` concurrent callers of `model` on Tessera's `kind` engine, for SECONDS.
fn tessera(model: &Path, kind: EngineKind, mode: EngineMode, callers: usize) -> Figures {
    let pool =
        InferencePool::load(model, &[1, 3, 224, 224], kind, &EngineConfig { mode, threads: THREADS, queue_len: 64 })
            .unwrap_or_else(|e| panic!("loading {} on {kind}: {e}", model.display()));
    let input: Vec<f32> = (0..3 * 224 * 224).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let far = || Instant::now() + Duration::from_secs(60);
    pool.run(input.clone(), far()).unwrap(); // warm-up
    let stop = Instant::now() + Duration::from_secs(SECONDS);
    let mut latencies: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                s.spawn(|| {
                    let mut ms = Vec::new();
                    while Instant::now() < stop {
                        let t = Instant::now();
                        pool.run(input.clone(), far()).unwrap();
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
    tessera::internals::request_amx_int8(true); // as the parent process runs them
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
            s.spawn(|| pool.run(input.clone(), far).unwrap());
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
    assert!(!tessera::internals::request_amx_int8(false));
    let json = |f: Figures| serde_json::json!({"images_per_s": f.images_per_s, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms});
    let (throughput, latency) = both_modes(model, EngineKind::Tract);
    println!("{}", serde_json::json!({"throughput": json(throughput), "latency": json(latency)}));
}

/// (throughput, latency) of `model` on Tessera's `kind` engine.
fn both_modes(model: &Path, kind: EngineKind) -> (Figures, Figures) {
    (tessera(model, kind, EngineMode::Throughput, 2 * THREADS), tessera(model, kind, EngineMode::Latency, 1))
}

/// (throughput, latency) of Python onnxruntime on `model`, and its single-core sgemm GFLOP/s.
fn python_ort(model: &Path) -> (Figures, Figures, f64) {
    let o = ort(model);
    eprintln!("Python onnxruntime {} on {}: {o}", o["onnxruntime"], model.display());
    let (sessions, shared) = (fig(&o["throughput_sessions"]), fig(&o["throughput_shared"]));
    let throughput = if sessions.images_per_s >= shared.images_per_s { sessions } else { shared };
    (throughput, fig(&o["latency"]), o["sgemm_gflops_per_core"].as_f64().unwrap())
}

fn fig(v: &Value) -> Figures {
    Figures {
        images_per_s: v["images_per_s"].as_f64().unwrap(),
        p50_ms: v["p50_ms"].as_f64().unwrap(),
        p99_ms: v["p99_ms"].as_f64().unwrap(),
    }
}

/// One benchmarked model: its fp32 graph, the int8 QOperator graph for tract and the int8
/// QDQ graph for onnxruntime, and its GFLOP per image (2 × multiply-adds of its Conv/Gemm).
struct Bench {
    name: &'static str,
    gflop: f64,
    fp32: PathBuf,
    int8: PathBuf,
    qdq: PathBuf,
}

fn benches() -> Vec<Bench> {
    let seeded = |name: &'static str, gflop: f64| Bench {
        name,
        gflop,
        fp32: root().join(format!("build/models/{name}/1/model.onnx")),
        int8: root().join(format!("build/models/{name}-int8/1/model.onnx")),
        qdq: root().join(format!("build/models/{name}-qdq/1/model.onnx")),
    };
    vec![
        Bench {
            name: "shapes",
            gflop: 0.107,
            fp32: root().join("models/shapes/1/model.onnx"),
            int8: root().join("models/shapes-int8/1/model.onnx"),
            qdq: root().join("build/models/shapes-qdq/1/model.onnx"),
        },
        seeded("resnet18", 3.63),
        seeded("resnet50", 8.18),
        seeded("mobilenetv2", 0.60),
    ]
}

/// One system's figures on one model.
struct Row {
    system: String,
    int8: bool,
    throughput: Figures,
    latency: Figures,
}

/// What a table needs above it (docs/PERFORMANCE.md): the command, the date, the commit (and
/// whether the tree had changes) and the CPU with the vector extensions our kernels choose by.
fn run_header() -> String {
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let dirty = if run("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == name).map(|(_, v)| v.trim()))
    };
    let flags: Vec<&str> = field("flags").unwrap_or("").split_whitespace().collect();
    let isa: Vec<&str> = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"]
        .into_iter()
        .filter(|f| flags.contains(f))
        .collect();
    format!(
        "`./run bench-engine`, {}, commit {}{dirty}, {} ({} CPUs; {}; {})",
        run("date", &["-u", "+%F"]),
        run("git", &["rev-parse", "--short", "HEAD"]),
        field("model name").unwrap_or("unknown CPU"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if isa.is_empty() { "no AVX2".to_string() } else { isa.join(" ") },
        std::env::consts::ARCH,
    )
}

fn main() {
    if let Some(model) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&model));
    }
    if let Ok(spec) = std::env::var(RSS_CHILD_ENV) {
        return rss_child(&spec);
    }
    let amx = tessera::internals::request_amx_int8(true);
    println!("{}\n", run_header());
    println!(
        "# Engines: tract, Tessera's onnxruntime and Python onnxruntime, batch 1, {THREADS} threads, {SECONDS} s per setup\n"
    );
    println!(
        "× ort fp32: images/s over Python onnxruntime's on the fp32 graph in the same mode (the engine a \
         user would otherwise pick); × ort same: over Python onnxruntime's on the same precision \
         (int8 rows: its QDQ graph). % of sgemm: fp32 GFLOP/s over {THREADS} × the single-core OpenBLAS \
         sgemm rate measured in the same run (a reference, not the CPU's peak: a model can pass 100 %).\n"
    );
    println!(
        "| model | system | throughput img/s | × ort fp32 | × ort same | latency p50 / p99 ms | latency img/s | × ort fp32 | × ort same | % of sgemm, throughput |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut profiles = Vec::new();
    let mut rss = Vec::new();
    let only = std::env::var("BENCH_MODELS").unwrap_or_default();
    for b in benches().into_iter().filter(|b| only.is_empty() || only.split(',').any(|o| o == b.name)) {
        for model in [&b.fp32, &b.int8, &b.qdq] {
            assert!(model.is_file(), "{} is missing: run `just models`", model.display());
        }
        // Each engine's fp32 run right before Python's, then the int8 ones: the pairs that are
        // compared see the same state of this (noisy, shared) machine.
        let mut rows = Vec::new();
        let (t, l) = both_modes(&b.fp32, EngineKind::Tract);
        rows.push(Row { system: "tract fp32".into(), int8: false, throughput: t, latency: l });
        let (t, l) = both_modes(&b.fp32, EngineKind::Onnxruntime);
        rows.push(Row { system: "Tessera onnxruntime fp32".into(), int8: false, throughput: t, latency: l });
        let (ort_fp32_t, ort_fp32_l, sgemm) = python_ort(&b.fp32);
        let (t, l) = both_modes(&b.int8, EngineKind::Tract);
        let int8_engine = if amx { "AMX" } else { "no AMX on this CPU" };
        rows.push(Row { system: format!("tract int8 ({int8_engine})"), int8: true, throughput: t, latency: l });
        if amx {
            let (t, l) = tract_without_amx(&b.int8);
            rows.push(Row { system: "tract int8 (AVX-512 VNNI)".into(), int8: true, throughput: t, latency: l });
        }
        let (t, l) = both_modes(&b.qdq, EngineKind::Onnxruntime);
        rows.push(Row { system: "Tessera onnxruntime int8 QDQ".into(), int8: true, throughput: t, latency: l });
        let (ort_int8_t, ort_int8_l, _) = python_ort(&b.qdq);
        let reference = sgemm * THREADS as f64;
        eprintln!("reference rate (single-thread sgemm × {THREADS} cores): {reference:.0} GFLOP/s");
        rows.push(Row {
            system: "Python onnxruntime fp32".into(),
            int8: false,
            throughput: ort_fp32_t.clone(),
            latency: ort_fp32_l.clone(),
        });
        rows.push(Row {
            system: "Python onnxruntime int8 QDQ".into(),
            int8: true,
            throughput: ort_int8_t.clone(),
            latency: ort_int8_l.clone(),
        });
        for r in &rows {
            let (same_t, same_l) = if r.int8 { (&ort_int8_t, &ort_int8_l) } else { (&ort_fp32_t, &ort_fp32_l) };
            let sgemm_share = if r.int8 {
                "(int8)".to_string()
            } else {
                format!("{:.0} %", 100.0 * r.throughput.images_per_s * b.gflop / reference)
            };
            let (t, l) = (&r.throughput, &r.latency);
            println!(
                "| {} | {} | {:.1} | **{:.2}×** | {:.2}× | {:.1} / {:.1} | {:.1} | **{:.2}×** | {:.2}× | {sgemm_share} |",
                b.name,
                r.system,
                t.images_per_s,
                t.images_per_s / ort_fp32_t.images_per_s,
                t.images_per_s / same_t.images_per_s,
                l.p50_ms,
                l.p99_ms,
                l.images_per_s,
                l.images_per_s / ort_fp32_l.images_per_s,
                l.images_per_s / same_l.images_per_s,
            );
        }
        for (precision, model) in [("fp32", &b.fp32), ("int8", &b.int8)] {
            profiles.push((
                format!("{} {precision}", b.name),
                profile_ops(model, &[1, 3, 224, 224], 3).expect("profiling"),
            ));
            let (one, four) = (rss_added(model, 1), rss_added(model, 4));
            let size = std::fs::metadata(model).map(|m| m.len() as f64 / (1 << 20) as f64).unwrap_or(0.0);
            rss.push(format!(
                "{} tract {precision} ({size:.0} MiB of ONNX): +{one:.0} MiB with 1 worker, +{four:.0} MiB with 4 workers",
                b.name
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
