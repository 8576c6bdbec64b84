//! `tessera-loadgen`: the one load shape `just bench-peers` puts on every system.
//!
//! Closed loop: `--concurrency N` clients, each with its own keep-alive connection, sending the
//! next request as soon as the previous answer arrives. Open loop: `--rate R` requests per
//! second on a fixed schedule whatever the answers do, latency counted from the scheduled start
//! (so a server that falls behind is charged for the queue it builds, not hidden by it).
//! HTTP targets (`http://.../v1/classify`) get the raw image body; Open Inference Protocol
//! targets (`http://.../v2/models/{model}/infer`) get the image as a BYTES input in the binary
//! tensor extension, as tritonclient sends it; gRPC targets (`grpc://host:port`) get the seed's
//! `ImageRecognitionService/Recognize` with a 2 s deadline, as the seed's Go client sets it.
//!
//! A closed-loop client that gets a refusal with `Retry-After` waits that long (at most 1 s)
//! before its next request, as a well-behaved HTTP client does; gRPC peers have no such signal
//! (their overload shows as deadline errors after the full 2 s).
//!
//! It prints one JSON object: requests, errors by kind, rps, latency percentiles, the top-1
//! labels seen, Tessera's per-stage `timings_ms` (first answers and settled ones), and, given
//! `--server-pid`, the server's CPU seconds per answered image and its peak RSS.
//!
//! A load tool is not Tessera's core, but none packaged here speaks both HTTP and gRPC with
//! the same client shape, and the comparison is only fair if every system sees the same one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::Mutex;

mod pb {
    tonic::include_proto!("image_recognition");
}

/// Client-side bound on one answer: a request still open after this is an error, never a hang.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The seed's Go client deadline.
const GRPC_DEADLINE: Duration = Duration::from_secs(2);

/// Answers whose `timings_ms` are reported as "first after start".
const FIRST_ANSWERS: usize = 5;

#[derive(Parser, Debug)]
#[command(about = "Closed- or open-loop load over HTTP (Tessera) or gRPC (the seed's service)")]
struct Cli {
    /// `http://127.0.0.1:8080/v1/classify?...` or `grpc://127.0.0.1:50051`.
    #[arg(long)]
    url: String,
    /// The image to send.
    #[arg(long)]
    image: std::path::PathBuf,
    /// Closed loop with this many clients (one connection each).
    #[arg(long, conflicts_with = "rate")]
    concurrency: Option<usize>,
    /// Open loop at this many requests per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 15.0)]
    duration_s: f64,
    /// Unmeasured seconds before (same load).
    #[arg(long, default_value_t = 0.0)]
    warmup_s: f64,
    /// Most requests in flight in open loop (more are counted as `client_overflow` errors).
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// The server's process id: report its CPU time per answered image and its peak RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A name for this system, copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

/// One answered (or failed) request.
struct Sample {
    started: Instant,
    latency: Duration,
    outcome: Result<Answer, String>,
    /// The server's Retry-After on a refusal (capped at 1 s).
    retry_after: Option<Duration>,
}

struct Answer {
    label: String,
    timings: Option<Value>,
}

enum Target {
    /// `oip`: the path is an Open Inference Protocol `.../infer`.
    Http {
        authority: String,
        addr: String,
        path_and_query: String,
        oip: bool,
    },
    Grpc {
        endpoint: String,
    },
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
        if let Some(rest) = url.strip_prefix("http://") {
            let (authority, path) = rest.split_once('/').map_or((rest, "/"), |(a, p)| (a, p));
            let path_and_query = format!("/{}", path.trim_start_matches('/'));
            let oip = path_and_query.starts_with("/v2/models/") && path_and_query.ends_with("/infer");
            return Ok(Target::Http {
                authority: authority.to_string(),
                addr: authority.to_string(),
                path_and_query,
                oip,
            });
        }
        if let Some(rest) = url.strip_prefix("grpc://") {
            return Ok(Target::Grpc { endpoint: format!("http://{rest}") });
        }
        bail!("--url must start with http:// or grpc://, got {url:?}")
    }
}

/// One client connection: an HTTP/1.1 keep-alive connection or a gRPC channel.
enum Conn {
    Http(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Grpc(pb::image_recognition_service_client::ImageRecognitionServiceClient<tonic::transport::Channel>),
}

/// The longest a pooled connection may sit idle and still be reused (servers close idle
/// keep-alive connections; Tessera after 10 s by default).
const IDLE_REUSE: Duration = Duration::from_secs(2);

impl Conn {
    fn is_open(&self) -> bool {
        match self {
            Conn::Http(send) => !send.is_closed(),
            Conn::Grpc(_) => true,
        }
    }
}

async fn connect(target: &Target) -> anyhow::Result<Conn> {
    match target {
        Target::Http { addr, .. } => {
            let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true)?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            Ok(Conn::Http(send))
        }
        Target::Grpc { endpoint } => {
            let channel =
                tonic::transport::Endpoint::from_shared(endpoint.clone())?.tcp_nodelay(true).connect().await?;
            let client = pb::image_recognition_service_client::ImageRecognitionServiceClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            Ok(Conn::Grpc(client))
        }
    }
}

async fn send(
    conn: &mut Conn,
    target: &Target,
    image: &Bytes,
    image_type: &str,
    retry_after: &mut Option<Duration>,
) -> Result<Answer, String> {
    match (conn, target) {
        (Conn::Http(send), Target::Http { authority, path_and_query, oip, .. }) => {
            send.ready().await.map_err(|e| format!("connection: {e}"))?;
            let req = http::Request::post(path_and_query.as_str()).header(http::header::HOST, authority.as_str());
            let req = if *oip {
                let (header_len, body) = oip_request(image);
                req.header(http::header::CONTENT_TYPE, "application/octet-stream")
                    .header("inference-header-content-length", header_len)
                    .body(Full::new(body))
            } else {
                req.header(http::header::CONTENT_TYPE, format!("image/{image_type}")).body(Full::new(image.clone()))
            }
            .map_err(|e| e.to_string())?;
            let resp = send.send_request(req).await.map_err(|e| format!("connection: {e}"))?;
            let status = resp.status();
            let resp_retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let body = resp.into_body().collect().await.map_err(|e| format!("connection: {e}"))?.to_bytes();
            if !status.is_success() {
                // A closed-loop client honours Retry-After (capped at 1 s), as a well-behaved
                // HTTP client would; without it a 503 becomes a busy loop of refusals.
                *retry_after = resp_retry_after.map(|s| Duration::from_secs(s.min(1)));
                let code = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(String::from))
                    .unwrap_or_default();
                return Err(format!("http_{} {code}", status.as_u16()).trim().to_string());
            }
            let v: Value = serde_json::from_slice(&body).map_err(|e| format!("bad json: {e}"))?;
            if *oip {
                let outputs = v["outputs"].as_array().map(Vec::as_slice).unwrap_or_default();
                let label = outputs.iter().find(|o| o["name"] == "label").map(|o| &o["data"][0]);
                return Ok(Answer {
                    label: label.and_then(Value::as_str).unwrap_or_default().to_string(),
                    timings: None,
                });
            }
            Ok(Answer {
                label: v["label"].as_str().unwrap_or_default().to_string(),
                timings: Some(v["timings_ms"].clone()),
            })
        }
        (Conn::Grpc(client), Target::Grpc { .. }) => {
            let mut req = tonic::Request::new(pb::ImageRequest {
                image_data: image.to_vec(),
                image_type: image_type.to_string(),
            });
            req.set_timeout(GRPC_DEADLINE);
            let resp = client.recognize(req).await.map_err(|s| format!("grpc_{:?}", s.code()))?;
            Ok(Answer { label: resp.into_inner().label, timings: None })
        }
        _ => unreachable!("connections are made for their target"),
    }
}

/// An Open Inference Protocol request carrying `image` as a one-element BYTES input named
/// `image` in the binary tensor extension (the JSON header, then the element as a 4-byte
/// little-endian length and the bytes): the header's length and the body.
fn oip_request(image: &Bytes) -> (usize, Bytes) {
    let header = json!({"inputs": [{
        "name": "image", "datatype": "BYTES", "shape": [1],
        "parameters": {"binary_data_size": 4 + image.len()},
    }]})
    .to_string();
    let mut body = Vec::with_capacity(header.len() + 4 + image.len());
    body.extend_from_slice(header.as_bytes());
    body.extend_from_slice(&(image.len() as u32).to_le_bytes());
    body.extend_from_slice(image);
    (header.len(), Bytes::from(body))
}

async fn timed(conn: &mut Conn, target: &Target, image: &Bytes, image_type: &str, started: Instant) -> Sample {
    let mut retry_after = None;
    let outcome =
        match tokio::time::timeout(CLIENT_TIMEOUT, send(conn, target, image, image_type, &mut retry_after)).await {
            Ok(r) => r,
            Err(_) => Err("client_timeout".into()),
        };
    Sample { started, latency: started.elapsed(), outcome, retry_after }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One runtime thread: the client must take as little of the 2 cores as it can.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = rt.block_on(run(&cli))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn run(cli: &Cli) -> anyhow::Result<Value> {
    let target = Arc::new(Target::parse(&cli.url)?);
    let image = Bytes::from(std::fs::read(&cli.image).with_context(|| format!("reading {}", cli.image.display()))?);
    let image_type = cli.image.extension().and_then(|e| e.to_str()).unwrap_or("jpeg").to_lowercase();
    let image_type = if image_type == "jpg" { "jpeg".to_string() } else { image_type };
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(cli.warmup_s);
    let end = measure_from + Duration::from_secs_f64(cli.duration_s);
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let mut cpu_before = None;
    // CPU time is sampled at the start of the measured window, after the warm-up.
    let pid = cli.server_pid;

    if let Some(rate) = cli.rate {
        if rate <= 0.0 {
            bail!("--rate must be positive");
        }
        // Pooled connections with when they were last used: one idle for IDLE_REUSE is dropped,
        // not reused, so the server closing idle keep-alive connections (after its
        // header_read_timeout_ms) never races a request onto a connection it is closing.
        let conns = Arc::new(Mutex::new(Vec::<(Conn, Instant)>::new()));
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut next = start;
        let mut tasks = Vec::new();
        while next < end {
            tokio::time::sleep_until(next.into()).await;
            if cpu_before.is_none() && next >= measure_from {
                cpu_before = pid.map(cpu_seconds).transpose()?;
            }
            let scheduled = next;
            next += interval;
            if in_flight.load(Ordering::Relaxed) >= cli.max_in_flight {
                samples.lock().await.push(Sample {
                    started: scheduled,
                    latency: Duration::ZERO,
                    outcome: Err("client_overflow".into()),
                    retry_after: None,
                });
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let (target, image, image_type) = (target.clone(), image.clone(), image_type.clone());
            let (conns, samples, in_flight) = (conns.clone(), samples.clone(), in_flight.clone());
            tasks.push(tokio::spawn(async move {
                let pooled = {
                    let mut pool = conns.lock().await;
                    std::iter::from_fn(|| pool.pop()).find(|(c, used)| used.elapsed() < IDLE_REUSE && c.is_open())
                }
                .map(|(c, _)| c);
                let mut conn = match pooled {
                    Some(c) => c,
                    None => match connect(&target).await {
                        Ok(c) => c,
                        Err(e) => {
                            samples.lock().await.push(Sample {
                                started: scheduled,
                                latency: scheduled.elapsed(),
                                outcome: Err(format!("connect: {e}")),
                                retry_after: None,
                            });
                            in_flight.fetch_sub(1, Ordering::Relaxed);
                            return;
                        }
                    },
                };
                let sample = timed(&mut conn, &target, &image, &image_type, scheduled).await;
                let keep = !matches!(&sample.outcome, Err(e) if e.starts_with("connection") || e == "client_timeout");
                samples.lock().await.push(sample);
                if keep {
                    conns.lock().await.push((conn, Instant::now()));
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    } else {
        let clients = cli.concurrency.unwrap_or(1).max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let mut conn = connect(&target).await?;
            let (target, image, image_type) = (target.clone(), image.clone(), image_type.clone());
            let (samples, stop) = (samples.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sample = timed(&mut conn, &target, &image, &image_type, Instant::now()).await;
                    if let Some(wait) = sample.retry_after {
                        samples.lock().await.push(sample);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    let broken =
                        matches!(&sample.outcome, Err(e) if e.starts_with("connection") || e == "client_timeout");
                    samples.lock().await.push(sample);
                    if broken {
                        match connect(&target).await {
                            Ok(c) => conn = c,
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                }
            }));
        }
        tokio::time::sleep_until(measure_from.into()).await;
        cpu_before = pid.map(cpu_seconds).transpose()?;
        tokio::time::sleep_until(end.into()).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
    }
    let cpu_after = pid.map(cpu_seconds).transpose()?;
    let samples = std::mem::take(&mut *samples.lock().await);
    Ok(summarize(cli, &samples, measure_from, end, cpu_before.zip(cpu_after), pid))
}

/// User + system CPU seconds of a process so far (`/proc/<pid>/stat`, fields 14 and 15).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("server pid {pid}"))?;
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on; getconf says so without libc.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak resident set of a process, MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn summarize(
    cli: &Cli,
    samples: &[Sample],
    measure_from: Instant,
    end: Instant,
    cpu: Option<(f64, f64)>,
    pid: Option<u32>,
) -> Value {
    let mut first: Vec<&Sample> = samples.iter().filter(|s| s.outcome.is_ok()).collect();
    first.sort_by_key(|s| s.started);
    let first_timings: Vec<Value> =
        first.iter().take(FIRST_ANSWERS).filter_map(|s| s.outcome.as_ref().ok()?.timings.clone()).collect();
    let measured: Vec<&Sample> = samples.iter().filter(|s| s.started >= measure_from && s.started < end).collect();
    let mut lat: Vec<f64> =
        measured.iter().filter(|s| s.outcome.is_ok()).map(|s| s.latency.as_secs_f64() * 1e3).collect();
    lat.sort_by(f64::total_cmp);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut labels: BTreeMap<String, usize> = BTreeMap::new();
    let mut stage_sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for s in &measured {
        match &s.outcome {
            Ok(a) => {
                *labels.entry(a.label.clone()).or_default() += 1;
                if let Some(Value::Object(t)) = &a.timings {
                    for (k, v) in t {
                        let e = stage_sums.entry(k.clone()).or_default();
                        e.0 += v.as_f64().unwrap_or(0.0);
                        e.1 += 1;
                    }
                }
            }
            Err(e) => *errors.entry(e.clone()).or_default() += 1,
        }
    }
    // How fast each kind of failure came back (a refusal must be fast to be useful).
    let mut error_latencies: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for s in &measured {
        if let Err(e) = &s.outcome {
            error_latencies.entry(e.clone()).or_default().push(s.latency.as_secs_f64() * 1e3);
        }
    }
    let error_latency_ms: BTreeMap<String, Value> = error_latencies
        .into_iter()
        .map(|(e, mut l)| {
            l.sort_by(f64::total_cmp);
            let summary = json!({
                "p50": round(percentile(&l, 50.0), 2),
                "p99": round(percentile(&l, 99.0), 2),
                "max": round(l.last().copied().unwrap_or(f64::NAN), 2),
            });
            (e, summary)
        })
        .collect();
    let window = (end - measure_from).as_secs_f64();
    let ok = lat.len();
    let settled: BTreeMap<String, f64> =
        stage_sums.into_iter().map(|(k, (s, n))| (k, round(s / n as f64, 2))).collect();
    json!({
        "label": cli.label,
        "url": cli.url,
        "image": cli.image.display().to_string(),
        "mode": if cli.rate.is_some() { "open" } else { "closed" },
        "concurrency": cli.concurrency,
        "rate": cli.rate,
        "duration_s": window,
        "requests": measured.len(),
        "ok": ok,
        "errors": errors,
        "error_latency_ms": error_latency_ms,
        "rps": round(ok as f64 / window, 2),
        "p50_ms": round(percentile(&lat, 50.0), 1),
        "p90_ms": round(percentile(&lat, 90.0), 1),
        "p99_ms": round(percentile(&lat, 99.0), 1),
        "max_ms": round(lat.last().copied().unwrap_or(f64::NAN), 1),
        "top1": labels,
        "cpu_s_per_image": cpu.filter(|_| ok > 0).map(|(a, b)| round((b - a) / ok as f64, 4)),
        "server_peak_rss_mib": pid.and_then(peak_rss_mib).map(|m| round(m, 1)),
        "timings_ms_first": first_timings,
        "timings_ms_settled": settled,
    })
}
