//! A model version is loaded and run once in a child process before the server loads it.
//!
//! An ONNX file can make its engine allocate without bound while it loads: an `Expand` of one
//! constant to 60000 × 60000 is folded (14.4 GB) by tract's analysis in `into_typed()`, long
//! before any size check of ours could run, and onnxruntime folds constants the same way. A
//! failed allocation aborts a Rust process, and with overcommit the allocation does not even
//! fail: the server fills the machine's memory and never becomes ready. Memory cannot be
//! capped per thread, so the bound lives in a process: `tessera probe-model` (the child side,
//! [`child_main`]) caps its own address space (`RLIMIT_AS`), loads the file with the engine
//! `model.toml` names, runs it once on a zero input (a graph can as well explode at run time)
//! and reports on stdout; the parent ([`LoadProbe::check`]) bounds it in time and turns every
//! way it can end (an error, a panic, an abort, a signal, the timeout) into the version's
//! failure reason. Only a version whose probe passed is loaded in the server's process.
//!
//! The probe is a second load: it costs a process start, one load and one run per new version
//! (the server's own load follows), which reloads only pay for files that changed. A library
//! embedder gets it by naming a `tessera` binary (`[inference] load_probe`); without one, loads
//! are in-process and unguarded.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{EngineConfig, EngineKind, EngineMode, LoadError, LoadedModel};

/// The hidden subcommand of the `tessera` binary that runs [`child_main`].
pub const SUBCOMMAND: &str = "probe-model";

/// How a server bounds the loads of its model versions.
#[derive(Debug, Clone)]
pub struct LoadProbe {
    /// A `tessera` binary (its `probe-model` subcommand).
    pub executable: PathBuf,
    /// The child's address-space cap (`limits.model_load_memory_bytes`).
    pub memory_bytes: u64,
    /// How long load + one run may take (`limits.model_load_timeout_ms`).
    pub timeout: Duration,
    /// `[inference.onnxruntime] library`, for models that ask for onnxruntime.
    pub onnxruntime_library: Option<PathBuf>,
    /// Set when the server stops: a running probe is killed and its version fails as
    /// cancelled, so a stopping server does not wait for a load to finish.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// What a probe that passed measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeReport {
    pub load_ms: u64,
    pub run_ms: u64,
    /// The child's peak resident set (`VmHWM`).
    pub peak_rss_bytes: u64,
}

/// The child's one line on stdout.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Outcome {
    Passed(ProbeReport),
    Failed { error: String },
}

/// How often the parent looks whether the child has ended.
const POLL: Duration = Duration::from_millis(10);
/// How much of the child's stderr a failure reason quotes.
const STDERR_TAIL: usize = 600;

impl LoadProbe {
    /// Loads and runs `path` once in a child process, within the memory and time bounds; the
    /// error says why it did not pass, naming the bound it hit.
    pub fn check(&self, path: &Path, input_shape: &[usize], kind: EngineKind) -> Result<ProbeReport, LoadError> {
        let fail = |message: String| LoadError { path: path.display().to_string(), message };
        let shape = input_shape.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        let mut command = Command::new(&self.executable);
        command
            .arg(SUBCOMMAND)
            .arg(path)
            .args(["--shape", &shape, "--engine", &kind.to_string()])
            .args(["--memory-bytes", &self.memory_bytes.to_string()])
            .args(["--parent-pid", &std::process::id().to_string()])
            // The child reads no configuration, and its panics need no backtrace.
            .env_remove("TESSERA_CONFIG")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(library) = &self.onnxruntime_library {
            command.arg("--onnxruntime-library").arg(library);
        }
        let cancelled = || self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));
        if cancelled() {
            return Err(fail("cancelled: the server is stopping".into()));
        }
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| fail(format!("cannot start the load probe {}: {e}", self.executable.display())))?;
        // Read both pipes while the child runs, so a chatty child cannot block on a full pipe.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(pipe) = pipe {
                    let _ = pipe.take(1 << 20).read_to_string(&mut text);
                }
                text
            })
        };
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if cancelled() => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail("cancelled: the server is stopping".into()));
                }
                Ok(None) if started.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!(
                        "loading and running it once took longer than limits.model_load_timeout_ms ({} ms); stopped",
                        self.timeout.as_millis()
                    )));
                }
                Ok(None) => std::thread::sleep(POLL),
                Err(e) => return Err(fail(format!("waiting for the load probe: {e}"))),
            }
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        match serde_json::from_str::<Outcome>(stdout.trim()) {
            Ok(Outcome::Passed(report)) if status.success() => Ok(report),
            Ok(Outcome::Failed { error }) => Err(fail(error)),
            _ => Err(fail(self.died(status, &stderr))),
        }
    }

    /// Why a child that printed no outcome ended, with the end of what it said.
    fn died(&self, status: std::process::ExitStatus, stderr: &str) -> String {
        use std::os::unix::process::ExitStatusExt;
        let how = match status.signal() {
            Some(libc::SIGABRT) => "aborted".to_string(),
            Some(libc::SIGKILL) => "was killed (SIGKILL: the kernel's OOM killer?)".to_string(),
            Some(signal) => format!("was killed by signal {signal}"),
            None => format!("exited with {status}"),
        };
        let said = tail(stderr.trim(), STDERR_TAIL);
        let said = if said.is_empty() { String::new() } else { format!(": {said}") };
        format!(
            "the load probe {how} while loading it within limits.model_load_memory_bytes ({} MiB){said}",
            self.memory_bytes >> 20
        )
    }
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// What `tessera probe-model` was asked to do.
#[derive(Debug, Clone)]
pub struct ProbeArgs {
    pub path: PathBuf,
    pub input_shape: Vec<usize>,
    pub engine: EngineKind,
    pub memory_bytes: u64,
    /// The server whose death ends this probe.
    pub parent_pid: Option<u32>,
    pub onnxruntime_library: Option<PathBuf>,
}

/// The child's side: bounds itself, loads, runs once, prints one JSON line; returns the exit
/// code. Meant for a process of its own (it lowers that process's address-space limit).
pub fn child_main(args: &ProbeArgs) -> i32 {
    if let Err(error) = bound_self(args) {
        return print(&Outcome::Failed { error });
    }
    super::configure_onnxruntime(args.onnxruntime_library.clone());
    // A panic is reported in the outcome line, not as a backtrace on stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let run = std::panic::catch_unwind(|| load_and_run(args));
    let outcome = match run {
        Ok(Ok(report)) => Outcome::Passed(report),
        Ok(Err(error)) => Outcome::Failed { error },
        Err(panic) => Outcome::Failed {
            error: format!(
                "loading panicked within limits.model_load_memory_bytes ({1} MiB): {0}",
                crate::error::panic_message(&*panic),
                args.memory_bytes >> 20
            ),
        },
    };
    print(&outcome)
}

fn print(outcome: &Outcome) -> i32 {
    println!("{}", serde_json::to_string(outcome).expect("an outcome serialises"));
    match outcome {
        Outcome::Passed(_) => 0,
        Outcome::Failed { .. } => 1,
    }
}

/// Dies with the server (a probe outliving it would hold its memory), and caps its own
/// address space: an allocation past the cap fails at once instead of being overcommitted.
fn bound_self(args: &ProbeArgs) -> Result<(), String> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and setrlimit only change this process's own attributes;
    // their arguments are plain integers and a struct that lives across the call.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(format!("prctl(PR_SET_PDEATHSIG): {}", std::io::Error::last_os_error()));
        }
        let cap = libc::rlimit { rlim_cur: args.memory_bytes, rlim_max: args.memory_bytes };
        if libc::setrlimit(libc::RLIMIT_AS, &cap) != 0 {
            return Err(format!("setrlimit(RLIMIT_AS): {}", std::io::Error::last_os_error()));
        }
    }
    // The server may have gone before the death signal was armed.
    if args.parent_pid.is_some_and(|pid| std::os::unix::process::parent_id() != pid) {
        return Err("the server that asked for this probe has gone".into());
    }
    Ok(())
}

fn load_and_run(args: &ProbeArgs) -> Result<ProbeReport, String> {
    // One thread: the probe bounds memory and time, not speed, and spawns no thread pool.
    let engine = EngineConfig { mode: EngineMode::Throughput, threads: 1, queue_len: 1 };
    let started = Instant::now();
    let model: std::sync::Arc<dyn LoadedModel> = match args.engine {
        EngineKind::Tract => std::sync::Arc::new(
            super::tract::TractModel::load(&args.path, &args.input_shape, &engine).map_err(|e| e.message)?,
        ),
        EngineKind::Onnxruntime => {
            super::onnxruntime::load(&args.path, &args.input_shape, &engine).map_err(|e| e.message)?
        }
    };
    let load_ms = started.elapsed().as_millis() as u64;
    let input = vec![0f32; args.input_shape.iter().product()];
    let started = Instant::now();
    model.worker()?.run(input, &|| true)?;
    let run_ms = started.elapsed().as_millis() as u64;
    Ok(ProbeReport { load_ms, run_ms, peak_rss_bytes: peak_rss_bytes().unwrap_or(0) })
}

/// `VmHWM` of /proc/self/status: this process's peak resident set.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_of_a_message_is_cut_on_a_character_boundary() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }

    #[test]
    fn outcomes_round_trip_as_one_json_line() {
        let passed = Outcome::Passed(ProbeReport { load_ms: 1, run_ms: 2, peak_rss_bytes: 3 });
        let text = serde_json::to_string(&passed).unwrap();
        assert!(matches!(serde_json::from_str(&text).unwrap(), Outcome::Passed(r) if r.run_ms == 2));
        let failed = serde_json::to_string(&Outcome::Failed { error: "no".into() }).unwrap();
        assert!(matches!(serde_json::from_str(&failed).unwrap(), Outcome::Failed { error } if error == "no"));
    }
}
