//! `[limits]`: every named limit (bodies, connections, deadlines, guest memory and calls, model
//! loading, queues), with its default, and what the others follow from (in-flight requests from
//! the inference threads).

use serde::{Deserialize, Serialize};

/// Every limit the host enforces, each with its unit in its name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted; larger ones get 413 before the rest is read.
    pub max_body_bytes: u64,
    /// Largest image (width × height) decoded; larger ones get 422 from their header alone.
    pub max_image_pixels: u64,
    /// Largest allocation an image decoder may make inside the guest.
    pub max_decode_alloc_bytes: u64,
    /// Default and upper bound of a request's deadline; clients may shorten it with
    /// `x-request-timeout-ms`.
    pub deadline_ms: u64,
    /// Linear memory one guest instance may grow to, all its memories together.
    pub guest_memory_bytes: u64,
    /// Address space reserved for each guest memory in wasmtime's pool (256 or more of them,
    /// each followed by a 32 MiB guard). The default, 4 GiB, lets guest code skip bounds
    /// checks, but the pool then reserves about 1 TiB, more than an aarch64 board with a
    /// 39-bit address space (512 GiB, e.g. Raspberry Pi OS kernels) has: there, set it to
    /// `guest_memory_bytes` (guest code then checks bounds). At least `guest_memory_bytes`;
    /// a .cwasm loads only where it was compiled with the same value (`tessera compile
    /// --config`).
    pub guest_memory_reservation_bytes: u64,
    /// Linear memory every guest instance alive may hold together (a process-wide budget);
    /// a guest that would go past it fails its request with 503 `overloaded`.
    pub guest_memory_total_bytes: u64,
    /// Bytes of each guest memory (and table) a pool slot keeps resident between calls, reset
    /// in place instead of returned to the kernel, so the next instance of the same guest does
    /// not fault them in again; 0 returns everything. Used only where the kernel can report
    /// dirty pages (Linux ≥ 6.7, PAGEMAP_SCAN), so a reset copies only what a call wrote.
    pub guest_keep_resident_bytes: u64,
    /// Bytes of output (granted stdout/stderr) one guest may put in the log per second, all its
    /// calls together, beyond each call's own 16 KiB; the rest is counted
    /// (`tessera_guest_output_dropped_bytes_total`) and said in one warning a minute.
    pub guest_log_bytes_per_second: u64,
    /// Bytes a guest may hand the host in one crossing: a rules or postprocess result, an
    /// `inference.infer` input (the preprocess result may be as large as the model's input
    /// tensor). Past it the call fails before the host copies more.
    pub guest_output_bytes: u64,
    /// `inference.infer` calls one rules guest call may make; the next one ends the call with
    /// `guest_failed` (the calls share the serving queue with requests).
    pub guest_infer_calls: u32,
    /// Requests in the pipeline at once; more get 503 with `Retry-After`. 0 (the default):
    /// [`REQUESTS_PER_INFERENCE_THREAD`] per inference thread ([`Limits::concurrent_requests`]).
    pub max_concurrent_requests: u32,
    /// Inference threads per loaded model version (workers in throughput mode, matrix-multiply
    /// threads in latency mode); 0 = one per core.
    pub inference_workers: u32,
    /// Inference jobs waiting for a worker per model version; more get 503.
    pub inference_queue_len: u32,
    /// How long a stopping server waits for in-flight requests.
    pub shutdown_grace_ms: u64,
    /// How long an HTTP/1 client may take to send a request's headers, and how long an idle
    /// keep-alive connection waits for the next request, before it is closed (slowloris).
    pub header_read_timeout_ms: u64,
    /// Connections open at once on each listener (HTTP, gRPC, each its own budget); one more is
    /// closed as soon as it is accepted.
    pub max_connections: u32,
    /// Address space a model version's load probe may use (`[inference] load_probe`): loading
    /// the file and running it once; past it the version fails and is never loaded.
    pub model_load_memory_bytes: u64,
    /// How long a load probe may take to load a version and run it once.
    pub model_load_timeout_ms: u64,
}

/// Requests in flight per inference thread when `limits.max_concurrent_requests` is 0 (auto),
/// plus one: [`Limits::concurrent_requests`].
///
/// Past about two per thread a request only waits for a core. Measured at twice the server's
/// capacity (2 cores, the default model, `just overload`, docs/RELIABILITY.md): the former fixed
/// 64 let admitted requests queue to a p99 of 0.43 s (14× their p99 at 70 % load); caps of 4
/// and 5 kept it at 1.4–1.6×, 6 at 2.0–2.2×, and every cap refused the excess in under 10 ms.
pub const REQUESTS_PER_INFERENCE_THREAD: u32 = 2;

impl Limits {
    /// `inference_workers`, with 0 resolved to one per core.
    pub fn inference_threads(&self) -> usize {
        match self.inference_workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n as usize,
        }
    }

    /// `max_concurrent_requests`, with 0 (auto) resolved to [`REQUESTS_PER_INFERENCE_THREAD`]
    /// per inference thread plus one (5 on 2 cores).
    pub fn concurrent_requests(&self) -> u32 {
        match self.max_concurrent_requests {
            0 => REQUESTS_PER_INFERENCE_THREAD
                .saturating_mul(self.inference_threads().try_into().unwrap_or(u32::MAX))
                .saturating_add(1),
            n => n,
        }
    }
}

/// Epoch ticks drive guest deadlines: a guest overruns its deadline by at most one tick.
pub const EPOCH_TICK_MS: u64 = 5;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            max_image_pixels: 40_000_000,
            max_decode_alloc_bytes: 192 << 20,
            deadline_ms: 2_000,
            guest_memory_bytes: 256 << 20,
            guest_memory_reservation_bytes: 4 << 30,
            guest_memory_total_bytes: 2 << 30,
            guest_keep_resident_bytes: 1 << 20,
            guest_log_bytes_per_second: 64 << 10,
            guest_output_bytes: 4 << 20,
            guest_infer_calls: 16,
            max_concurrent_requests: 0,
            inference_workers: 0,
            inference_queue_len: 64,
            shutdown_grace_ms: 10_000,
            header_read_timeout_ms: 10_000,
            max_connections: 1_024,
            model_load_memory_bytes: 8 << 30,
            model_load_timeout_ms: 120_000,
        }
    }
}
