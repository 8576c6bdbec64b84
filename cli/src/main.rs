//! The `tessera` command: argument parsing, the allocator and report printing; everything else
//! is the public API of the `tessera` library and the `tessera-server` crate.

/// The server's allocator. glibc's malloc raises its mmap threshold to the largest block freed
/// so far, after which request bodies and inference buffers of a few MiB come from per-thread
/// arenas, are carved up by small allocations once freed, and cannot be returned: under the
/// soak's mixed photo sizes RSS rose 17 % from minute 5 to 30 before levelling off. Tried in
/// 6-minute soaks (docs/RELIABILITY.md, "Soak"): a fixed mmap threshold kept RSS flat at ~75 MiB
/// but cost 23 % of capacity (every large buffer mapped and faulted in afresh); `malloc_trim`
/// every 5 s did not stop the growth (the freed space is fragmented, not free pages); mimalloc
/// held it flat at ~320 MiB; jemalloc held it at 90–117 MiB at the same capacity.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (its `malloc_conf`, under the crate's `_rjem_`
/// prefix): purge freed pages on background threads rather than only when the same thread
/// allocates again, after 1 s instead of 10 s, so an idle server hands memory back too.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: Option<&'static std::ffi::c_char> = {
    const OPTIONS: &[u8] = b"background_thread:true,dirty_decay_ms:1000\0";
    // SAFETY: a NUL-terminated byte string that lives for the whole program; jemalloc reads it
    // as a C string.
    Some(unsafe { &*OPTIONS.as_ptr().cast::<std::ffi::c_char>() })
};

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tessera::{ClassifyRequest, Config, Host, RuleConfig};

#[derive(Parser)]
#[command(name = "tessera", version, about = "Image classification: native tract inference, WebAssembly guest stages")]
struct Cli {
    /// A tessera.toml; flags override its values.
    #[arg(long, global = true, env = "TESSERA_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP and gRPC APIs until SIGINT/SIGTERM.
    Serve {
        /// HTTP listen address.
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// gRPC listen address (default 127.0.0.1:50051, the seed's port), or `off`.
        #[arg(long, value_parser = |s: &str| tessera::config::addr_or_off::parse(s).map(GrpcAddr))]
        grpc_addr: Option<GrpcAddr>,
        /// Admin listen address (default 127.0.0.1:8081), or `off`: `/v1/admin/*` without a
        /// token. On --addr they need --admin-token.
        #[arg(long, value_parser = |s: &str| tessera::config::addr_or_off::parse(s).map(GrpcAddr))]
        admin_addr: Option<GrpcAddr>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
        /// Export traces to this OpenTelemetry collector (OTLP/gRPC, e.g. http://127.0.0.1:4317).
        #[arg(long, env = "TESSERA_OTLP_ENDPOINT")]
        otlp_endpoint: Option<String>,
    },
    /// Classify one image through the full pipeline, without a server, and print the JSON.
    Classify {
        image: PathBuf,
        #[arg(long)]
        top_k: Option<u32>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        version: Option<String>,
    },
    /// Say how a guest component would load: the Tessera world it fits, what becomes of each
    /// import under the WASI grants given (else those the config gives it, else the default),
    /// its exports, and where the config uses it with which grants.
    Inspect {
        component: PathBuf,
        /// WASI grants, comma-separated (clocks, random, stdout, stderr) or `none`; default:
        /// those of the component's first place in the config, else clocks,random.
        #[arg(long, value_parser = parse_grants)]
        wasi: Option<Grants>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compile a guest component ahead of time into a .cwasm that serve, classify and inspect load
    /// without compiling: native code for this build and engine settings, loaded only from a
    /// trusted path (owned by this user or root, writable by no one else).
    Compile {
        component: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Generate code for this target triple (e.g. aarch64-unknown-linux-gnu) instead of
        /// this machine, at its baseline CPU unless --cpu says more
        #[arg(long)]
        target: Option<String>,
        /// CPU features to compile for: native (this machine's, the default without --target),
        /// baseline, x86-64-v2, x86-64-v3, or Cranelift flags (has_avx2,has_fma). A .cwasm
        /// loads only where every feature it was compiled with exists
        #[arg(long)]
        cpu: Option<String>,
    },
    /// Run a rules guest against conformance tables (TOML: a configuration and the decisions
    /// it must give; guests/conformance/RULES.md), without a server or a model. Exits 1 when a
    /// case fails.
    TestRules {
        component: PathBuf,
        #[arg(required = true)]
        tables: Vec<PathBuf>,
        /// WASI grants, as for `inspect`.
        #[arg(long, value_parser = parse_grants)]
        wasi: Option<Grants>,
        /// Run each table this many times and report the median warm instantiate and call
        /// times (rounds after the first).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Load a model and run it once within a memory cap, in this process, and print one JSON
    /// line: what `serve` runs in a child process before it loads a new model version.
    #[command(name = "probe-model", hide = true)]
    ProbeModel {
        model: PathBuf,
        /// The input shape, comma-separated (1,3,224,224).
        #[arg(long, value_delimiter = ',', required = true)]
        shape: Vec<usize>,
        #[arg(long, default_value = "tract")]
        engine: String,
        #[arg(long)]
        memory_bytes: u64,
        #[arg(long)]
        parent_pid: Option<u32>,
        #[arg(long)]
        onnxruntime_library: Option<PathBuf>,
    },
    /// Write the preprocess stage's tensors for IMAGES (raw little-endian f32, concatenated in
    /// order) to OUT: the exact model inputs the server computes, for training tools.
    Preprocess {
        #[arg(long)]
        out: PathBuf,
        /// A file listing one image path per line (in addition to IMAGES).
        #[arg(long)]
        list: Option<PathBuf>,
        /// The model's model.toml (its weights are not needed).
        #[arg(long, default_value = "models/shapes/model.toml")]
        manifest: PathBuf,
        images: Vec<PathBuf>,
    },
}

/// `--grpc-addr`, `--admin-addr`: an address or `off` (clap reads `Option<Option<_>>` as a flag whose value is
/// optional, hence the wrapper).
#[derive(Clone)]
struct GrpcAddr(Option<std::net::SocketAddr>);

/// `--wasi`: grants (a wrapper: clap reads a `Vec` as a list of flags).
#[derive(Clone)]
struct Grants(Vec<tessera::WasiGrant>);

fn parse_grants(text: &str) -> Result<Grants, String> {
    match text.trim() {
        "" | "none" => Ok(Grants(Vec::new())),
        list => list.split(',').map(|g| g.trim().parse()).collect::<Result<_, _>>().map(Grants),
    }
}

/// Flags that override the config file, one per key.
#[derive(Args)]
struct Overrides {
    /// Model repository directory.
    #[arg(long, global = true)]
    models: Option<PathBuf>,
    #[arg(long, global = true)]
    default_model: Option<String>,
    /// Preprocess guest component (.wasm).
    #[arg(long, global = true)]
    preprocess: Option<PathBuf>,
    /// Postprocess guest component (.wasm).
    #[arg(long, global = true)]
    postprocess: Option<PathBuf>,
    /// Rules guest component; repeat for a chain. Replaces the configured rules.
    #[arg(long = "rule", global = true)]
    rules: Vec<PathBuf>,
    /// Directory for compiled guest components.
    #[arg(long, global = true)]
    compile_cache_dir: Option<PathBuf>,
    /// Compile guests afresh and keep nothing on disk.
    #[arg(long, global = true, conflicts_with = "compile_cache_dir")]
    no_compile_cache: bool,
    /// Let tract use Intel AMX for int8 models ([inference.tract] amx_int8 in docs/API.md).
    #[arg(long, global = true)]
    amx_int8: bool,
    /// Do not watch model and guest files for changes.
    #[arg(long, global = true)]
    no_watch: bool,
    /// Bearer token for /v1/admin/* (else they answer loopback clients only).
    #[arg(long, global = true, env = "TESSERA_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Run no rules guests.
    #[arg(long, global = true, conflicts_with = "rules")]
    no_rules: bool,
    #[arg(long, global = true)]
    max_body_bytes: Option<u64>,
    #[arg(long, global = true)]
    max_image_pixels: Option<u64>,
    #[arg(long, global = true)]
    max_decode_alloc_bytes: Option<u64>,
    #[arg(long, global = true)]
    deadline_ms: Option<u64>,
    #[arg(long, global = true)]
    guest_memory_bytes: Option<u64>,
    #[arg(long, global = true)]
    guest_memory_total_bytes: Option<u64>,
    #[arg(long, global = true)]
    max_concurrent_requests: Option<u32>,
    #[arg(long, global = true)]
    inference_workers: Option<u32>,
    /// adaptive (default), throughput or latency.
    #[arg(long, global = true)]
    inference_mode: Option<tessera::EngineMode>,
    #[arg(long, global = true)]
    inference_queue_len: Option<u32>,
    #[arg(long, global = true)]
    shutdown_grace_ms: Option<u64>,
    #[arg(long, global = true)]
    header_read_timeout_ms: Option<u64>,
    #[arg(long, global = true)]
    max_connections: Option<u32>,
    #[arg(long, global = true)]
    model_load_memory_bytes: Option<u64>,
    #[arg(long, global = true)]
    model_load_timeout_ms: Option<u64>,
}

impl Overrides {
    fn apply(self, c: &mut Config) {
        let l = &mut c.limits;
        macro_rules! set {
            ($($field:ident => $target:expr),* $(,)?) => { $(if let Some(v) = self.$field { $target = v; })* };
        }
        set!(
            models => c.models_dir,
            preprocess => c.guests.preprocess,
            postprocess => c.guests.postprocess,
            max_body_bytes => l.max_body_bytes,
            max_image_pixels => l.max_image_pixels,
            max_decode_alloc_bytes => l.max_decode_alloc_bytes,
            deadline_ms => l.deadline_ms,
            guest_memory_bytes => l.guest_memory_bytes,
            guest_memory_total_bytes => l.guest_memory_total_bytes,
            max_concurrent_requests => l.max_concurrent_requests,
            inference_workers => l.inference_workers,
            inference_queue_len => l.inference_queue_len,
            shutdown_grace_ms => l.shutdown_grace_ms,
            header_read_timeout_ms => l.header_read_timeout_ms,
            max_connections => l.max_connections,
            model_load_memory_bytes => l.model_load_memory_bytes,
            model_load_timeout_ms => l.model_load_timeout_ms,
        );
        if self.no_compile_cache {
            c.compile_cache_dir = None;
        } else if self.compile_cache_dir.is_some() {
            c.compile_cache_dir = self.compile_cache_dir;
        }
        if let Some(mode) = self.inference_mode {
            c.inference_mode = mode;
        }
        if self.amx_int8 {
            c.inference.tract.amx_int8 = true;
        }
        if self.no_watch {
            c.watch = false;
        }
        if self.admin_token.is_some() {
            c.admin_token = self.admin_token;
        }
        if self.default_model.is_some() {
            c.default_model = self.default_model;
        }
        if self.no_rules {
            c.guests.rules.clear();
        } else if !self.rules.is_empty() {
            c.guests.rules = self.rules.into_iter().map(RuleConfig::new).collect();
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::ProbeModel { model, shape, engine, memory_bytes, parent_pid, onnxruntime_library } = cli.command {
        let engine = serde_json::from_value(serde_json::Value::String(engine))?;
        let args = tessera::probe::ProbeArgs {
            path: model,
            input_shape: shape,
            engine,
            memory_bytes,
            parent_pid,
            onnxruntime_library,
        };
        std::process::exit(tessera::probe::child_main(&args));
    }
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::embedded_default(),
    };
    cli.overrides.apply(&mut config);
    // This binary probes model loads with itself (its hidden `probe-model`).
    config.inference.load_probe.resolve_auto(std::env::current_exe().ok());
    match cli.command {
        Command::Serve { addr, grpc_addr, admin_addr, log_json, otlp_endpoint } => {
            if otlp_endpoint.is_some() {
                config.telemetry.otlp_endpoint = otlp_endpoint;
                config.validate()?;
            }
            // Kept to the end: dropping it flushes the last spans.
            let _telemetry = tessera_server::init_telemetry(log_json, &config.telemetry)?;
            if let Some(addr) = addr {
                config.addr = addr;
            }
            if let Some(GrpcAddr(grpc_addr)) = grpc_addr {
                config.grpc_addr = grpc_addr;
            }
            if let Some(GrpcAddr(admin_addr)) = admin_addr {
                config.admin_addr = admin_addr;
            }
            tessera_server::serve(config)
        }
        Command::Classify { image, top_k, model, version } => {
            let host = Host::builder().config(config).build()?;
            let bytes = std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
            let context = host.context().with_model(model, version).with_top_k(top_k.map(u64::from))?;
            let result = host.classify(&ClassifyRequest::new(bytes, context))?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(())
        }
        Command::Inspect { component, wasi, json } => {
            // Without --wasi: the grants of the component's first place in the config, if it has one.
            let places = config.guest_places(&component);
            let grants = match (wasi, places.first()) {
                (Some(g), _) => g.0,
                (None, Some(place)) => place.wasi.clone(),
                (None, None) => tessera::config::DEFAULT_WASI_GRANTS.to_vec(),
            };
            let report = tessera::inspect(&config, &component, &grants)?;
            if json {
                let mut out = serde_json::to_value(&report)?;
                out["grants"] = serde_json::to_value(&grants)?;
                out["configured"] = serde_json::to_value(&places)?;
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let kind = if report.precompiled { "precompiled" } else { "WebAssembly" };
                println!("component {} ({kind}, {} bytes)", report.path.display(), report.bytes);
                let grants: Vec<String> = grants.iter().map(|g| format!("{g:?}").to_lowercase()).collect();
                println!("grants: {}", if grants.is_empty() { "none".into() } else { grants.join(", ") });
                for place in &places {
                    let wasi: Vec<String> = place.wasi.iter().map(|g| format!("{g:?}").to_lowercase()).collect();
                    let wasi = if wasi.is_empty() { "none".into() } else { wasi.join(", ") };
                    println!("configured: pipeline {}, {} stage, granted {wasi}", place.pipeline, place.stage);
                }
                match (&report.world, &report.fits) {
                    (Some(world), Ok(())) => println!("world: {world}: loads"),
                    (Some(world), Err(why)) => println!("world: {world}: does not load: {why}"),
                    (None, Err(why)) => println!("world: none: {why}"),
                    (None, Ok(())) => println!("world: none"),
                }
                println!("imports:");
                for import in &report.imports {
                    println!("  {:<48} {}", import.name, import.status);
                }
                println!("exports: {}", report.exports.join(", "));
                println!(
                    "(linked: every guest gets it, granting nothing: empty environment, no directory, output \
                     discarded unless stdout/stderr are granted; not granted: calls fail naming the function; \
                     refused: the component does not load)"
                );
            }
            if report.fits.is_err() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Compile { component, output, target, cpu } => {
            let started = std::time::Instant::now();
            let target = tessera::CompileTarget { triple: target, cpu };
            let report = tessera::compile(&config, &component, &output, &target)?;
            println!(
                "compiled {} ({}) into {} ({} bytes) in {} ms",
                component.display(),
                report.world.unwrap_or("guest"),
                output.display(),
                report.bytes,
                started.elapsed().as_millis()
            );
            Ok(())
        }
        Command::TestRules { component, tables, wasi, repeat, json } => {
            let grants = wasi.map_or_else(|| tessera::config::DEFAULT_WASI_GRANTS.to_vec(), |g| g.0);
            let mut reports = Vec::new();
            for path in &tables {
                let table = tessera::read_table(path).map_err(anyhow::Error::msg)?;
                reports.push(tessera::test_rules(&config, &component, &grants, path, &table, repeat)?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for report in &reports {
                    for case in &report.cases {
                        let mark = if case.passed { "ok  " } else { "FAIL" };
                        println!(
                            "{mark} {}: {} ({} µs + {} µs)",
                            report.table.display(),
                            case.name,
                            case.instantiate_us,
                            case.call_us
                        );
                        if let Some(expected) = &case.expected {
                            println!("       expected {expected}\n       got      {}", case.got);
                        }
                    }
                }
                for report in &reports {
                    if let Some((instantiate, call)) = report.warm_median_us {
                        println!(
                            "warm median over {} rounds: instantiate {instantiate} µs, call {call} µs",
                            repeat - 1
                        );
                    }
                }
                let all: Vec<_> = reports.iter().flat_map(|r| &r.cases).collect();
                let passed = all.iter().filter(|c| c.passed).count();
                println!("{passed}/{} cases pass for {}", all.len(), component.display());
            }
            if !reports.iter().all(|r| r.passed()) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::ProbeModel { .. } => unreachable!("handled before the configuration is read"),
        Command::Preprocess { out, list, manifest, mut images } => {
            if let Some(list) = list {
                let text = std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
                images.extend(text.lines().filter(|l| !l.trim().is_empty()).map(PathBuf::from));
            }
            let pre = tessera::Preprocessor::new(&config, &manifest)?;
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?,
            );
            for path in &images {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let tensor = pre.run(&bytes).with_context(|| format!("preprocessing {}", path.display()))?;
                for v in tensor {
                    file.write_all(&v.to_le_bytes())?;
                }
            }
            file.flush()?;
            eprintln!("wrote {} tensors to {}", images.len(), out.display());
            Ok(())
        }
    }
}
