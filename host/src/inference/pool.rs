//! The inference pool: one per loaded model version. A bounded queue of jobs, worker threads that
//! each own a `ModelWorker`, deadline checks before and after a job, reservations (a job that would
//! finish after its deadline behind the accepted ones is refused at once), dynamic batching, and a
//! worker that panics failing only its batch.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{BatchStats, Batching, EngineConfig, EngineKind, LoadError, LoadedModel, ModelIo};
use super::{onnxruntime, tract};
use crate::error::{ErrorKind, RequestError, Stage};

/// A loaded, optimized model and the workers that run it.
pub struct InferencePool {
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    input_shape: Vec<usize>,
    output_len: usize,
    io: ModelIo,
    load: Arc<Load>,
    /// Jobs that can run at the same time (worker threads).
    parallel_jobs: usize,
    /// The batching in force (batch size capped by the engine's).
    batching: Batching,
}

/// What the pool has accepted and how fast it gets through it; shared with the workers.
#[derive(Default)]
struct Load {
    /// Jobs accepted and not yet answered (queued and running).
    in_flight: AtomicUsize,
    /// Moving average of one job's run time, microseconds; 0 until a job has run.
    job_us: AtomicU64,
    /// Runs made and the jobs they carried (see [`BatchStats`]).
    batches: AtomicU64,
    images: AtomicU64,
}

impl Load {
    /// Weight of the newest job in the moving average (1/8: a few jobs to follow a change in
    /// load, not fooled by one slow run).
    const NEW_JOB_WEIGHT: f64 = 0.125;

    /// Two workers finishing at once may lose one sample between the load and the store: an
    /// estimate, so no lock on the workers' path.
    fn record(&self, took: Duration) {
        let us = took.as_micros() as f64;
        let old = self.job_us.load(Ordering::Relaxed) as f64;
        let new = if old == 0.0 { us } else { old + Self::NEW_JOB_WEIGHT * (us - old) };
        self.job_us.store(new as u64, Ordering::Relaxed);
    }

    /// When a job accepted now would be done, with `ahead` jobs in front of it and `parallel`
    /// running at once; `None` before the first job has been timed.
    fn estimated_finish(&self, now: Instant, ahead: usize, parallel: usize) -> Option<Instant> {
        let job_us = self.job_us.load(Ordering::Relaxed);
        if job_us == 0 {
            return None;
        }
        let rounds = (ahead / parallel.max(1) + 1) as u64;
        Some(now + Duration::from_micros(job_us.saturating_mul(rounds)))
    }
}

struct Job {
    input: Vec<f32>,
    deadline: Instant,
    reply: Sender<Result<Vec<f32>, RequestError>>,
}

impl InferencePool {
    /// Loads `path` with the engine `kind` and starts the workers `engine` asks for, one
    /// input per run.
    pub fn load(
        path: &Path,
        input_shape: &[usize],
        kind: EngineKind,
        engine: &EngineConfig,
    ) -> Result<Self, LoadError> {
        Self::load_batched(path, input_shape, kind, engine, Batching::default())
    }

    /// [`Self::load`] with dynamic batching (capped by what the engine can batch).
    pub fn load_batched(
        path: &Path,
        input_shape: &[usize],
        kind: EngineKind,
        engine: &EngineConfig,
        batching: Batching,
    ) -> Result<Self, LoadError> {
        let model: Arc<dyn LoadedModel> = match kind {
            EngineKind::Tract => Arc::new(tract::TractModel::load(path, input_shape, engine)?),
            EngineKind::Onnxruntime => onnxruntime::load(path, input_shape, engine)?,
        };
        let io = model.io();
        if io.input_shape != input_shape {
            return Err(LoadError {
                path: path.display().to_string(),
                message: format!("the model's input is {:?}, not {input_shape:?} as model.toml says", io.input_shape),
            });
        }
        if batching.max_batch_size > 1 && model.max_batch() <= 1 {
            tracing::warn!(
                path = %path.display(),
                engine = %kind,
                max_batch_size = batching.max_batch_size,
                "this engine runs one input at a time here: dynamic batching is off for this model"
            );
        }
        Ok(Self::start(model, engine, batching))
    }

    /// Starts the workers for a loaded model.
    pub fn start(model: Arc<dyn LoadedModel>, engine: &EngineConfig, batching: Batching) -> Self {
        let batching = Batching {
            max_batch_size: batching.max_batch_size.clamp(1, model.max_batch().max(1)),
            max_queue_delay: batching.max_queue_delay,
        };
        let (tx, rx) = crossbeam_channel::bounded::<Job>(engine.queue_len.max(1));
        let workers = model.parallel_jobs().max(1);
        let load = Arc::new(Load::default());
        let handles = (0..workers)
            .map(|i| {
                let (model, rx, load) = (model.clone(), rx.clone(), load.clone());
                std::thread::Builder::new()
                    .name(format!("tessera-infer-{i}"))
                    .spawn(move || worker(model, rx, load, workers, batching))
                    .expect("spawning an inference thread")
            })
            .collect();
        InferencePool {
            jobs: Some(tx),
            workers: handles,
            input_shape: model.io().input_shape.clone(),
            output_len: model.io().output_shape.iter().product(),
            io: model.io().clone(),
            load,
            parallel_jobs: workers,
            batching,
        }
    }

    /// The batching in force and what it has done; `None` when this pool runs one input at a
    /// time.
    pub fn batch_stats(&self) -> Option<BatchStats> {
        (self.batching.max_batch_size > 1).then(|| BatchStats {
            max_batch_size: self.batching.max_batch_size,
            max_queue_delay_microseconds: self.batching.max_queue_delay.as_micros() as u64,
            batches: self.load.batches.load(Ordering::Relaxed),
            images: self.load.images.load(Ordering::Relaxed),
        })
    }

    /// The model's input and output as its engine sees them.
    pub fn io(&self) -> &ModelIo {
        &self.io
    }

    /// The input shape the plan was optimized for.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Number of output values (classes).
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// Runs one input, waiting at most until `deadline`. Blocks: call it off async workers.
    pub fn run(&self, input: Vec<f32>, deadline: Instant) -> Result<Vec<f32>, RequestError> {
        self.reserve(deadline)?.run(input, deadline)
    }

    /// Jobs accepted and not finished (running or queued).
    pub fn in_flight(&self) -> usize {
        self.load.in_flight.load(Ordering::Relaxed)
    }

    /// Takes a place in this pool's work before the input exists, so a request that could not
    /// finish in time is refused before anything is spent on it (decoding a photo costs as
    /// much as the inference of a small model). `Overloaded` when the jobs already accepted,
    /// at the measured time per job, would keep this one past `deadline`; `DeadlineExceeded`
    /// when none are waiting and the job alone would overrun it.
    pub fn reserve(&self, deadline: Instant) -> Result<Reservation<'_>, RequestError> {
        let ahead = self.load.in_flight.fetch_add(1, Ordering::AcqRel);
        let reservation = Reservation { pool: self, counted: true };
        if let Some(finish) = self.load.estimated_finish(Instant::now(), ahead, self.parallel_jobs)
            && finish > deadline
        {
            let job_ms = self.load.job_us.load(Ordering::Relaxed) as f64 / 1e3;
            if ahead < self.parallel_jobs {
                // Nothing to wait for: the deadline is shorter than the work itself, and
                // retrying would not help.
                let left_ms = deadline.saturating_duration_since(Instant::now()).as_secs_f64() * 1e3;
                return Err(RequestError::new(
                    ErrorKind::DeadlineExceeded,
                    Stage::Inference,
                    format!(
                        "{left_ms:.0} ms of the deadline were left for inference, which takes about {job_ms:.0} ms; \
                         allow more time"
                    ),
                ));
            }
            return Err(RequestError::new(
                ErrorKind::Overloaded,
                Stage::Inference,
                format!(
                    "{ahead} images are ahead of this one (about {job_ms:.0} ms each on {} workers): it could not \
                     finish before its deadline; retry shortly",
                    self.parallel_jobs
                ),
            ));
        }
        Ok(reservation)
    }
}

/// A place taken in an [`InferencePool`]'s work by [`InferencePool::reserve`]; given back when
/// dropped unused.
pub struct Reservation<'a> {
    pool: &'a InferencePool,
    /// Still counted in the pool's in-flight jobs by this reservation (the worker takes over
    /// the count once the job is queued).
    counted: bool,
}

impl<'a> Reservation<'a> {
    /// Runs `input` in the place taken, waiting at most until `deadline`. Blocks.
    pub fn run(self, input: Vec<f32>, deadline: Instant) -> Result<Vec<f32>, RequestError> {
        self.submit(input, deadline)?.wait()
    }

    /// Queues `input` in the place taken and returns at once: the caller may do other work
    /// while a worker runs it, then [`Submitted::wait`]s for the answer until `deadline`.
    pub fn submit(mut self, input: Vec<f32>, deadline: Instant) -> Result<Submitted, RequestError> {
        let pool = self.pool;
        let expected: usize = pool.input_shape.iter().product();
        if input.len() != expected {
            return Err(RequestError::new(
                ErrorKind::Internal,
                Stage::Inference,
                format!("input has {} values but the model takes {:?} = {expected}", input.len(), pool.input_shape),
            ));
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        let jobs = pool.jobs.as_ref().expect("pool is running until dropped");
        let sent = jobs.try_send(Job { input, deadline, reply });
        if sent.is_ok() {
            self.counted = false;
        }
        match sent {
            Ok(()) => Ok(Submitted { answer, deadline }),
            Err(TrySendError::Full(_)) => Err(RequestError::new(
                ErrorKind::Overloaded,
                Stage::Inference,
                "the inference queue is full; retry shortly",
            )),
            Err(TrySendError::Disconnected(_)) => {
                Err(RequestError::new(ErrorKind::Internal, Stage::Inference, "the inference workers have stopped"))
            }
        }
    }
}

/// An input queued for a worker ([`Reservation::submit`]).
pub struct Submitted {
    answer: crossbeam_channel::Receiver<Result<Vec<f32>, RequestError>>,
    deadline: Instant,
}

impl Submitted {
    /// The model's output, waiting for it until the deadline. Blocks.
    pub fn wait(self) -> Result<Vec<f32>, RequestError> {
        match self.answer.recv_deadline(self.deadline) {
            Ok(result) => result,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(deadline_exceeded()),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(RequestError::new(
                ErrorKind::Internal,
                Stage::Inference,
                "an inference worker stopped while running this request",
            )),
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.pool.load.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for InferencePool {
    fn drop(&mut self) {
        // Closing the queue ends each worker's loop once the jobs already queued are done.
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn deadline_exceeded() -> RequestError {
    RequestError::new(
        ErrorKind::DeadlineExceeded,
        Stage::Inference,
        "the request deadline passed before inference finished",
    )
}

fn worker(model: Arc<dyn LoadedModel>, jobs: Receiver<Job>, load: Arc<Load>, parallel_jobs: usize, batching: Batching) {
    crate::cpu::compute_thread();
    let spreads = model.spreads_when_alone();
    let mut worker = match model.clone().worker() {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "inference worker could not start");
            return;
        }
    };
    let alone = || load.in_flight.load(Ordering::Relaxed) <= 1;
    let answer = |job: Job, result: Result<Vec<f32>, RequestError>| {
        load.in_flight.fetch_sub(1, Ordering::AcqRel);
        let _ = job.reply.send(result);
    };
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        // The jobs queued behind this one, and those arriving within the delay.
        let until = Instant::now() + batching.max_queue_delay;
        while batch.len() < batching.max_batch_size {
            match jobs.recv_deadline(until) {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let (mut batch, expired): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|job| now < job.deadline);
        for job in expired {
            answer(job, Err(deadline_exceeded()));
        }
        if batch.is_empty() {
            continue;
        }
        let had_every_thread = spreads && alone();
        // A panic in the engine (a bug, or a model it cannot run) fails this batch's requests,
        // not the worker: without this the thread would die with the jobs' reply channels, and
        // the pool would shrink by one worker per panic until nothing answered.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let [job] = &mut batch[..] {
                worker.run(std::mem::take(&mut job.input), &alone).map(|output| vec![output])
            } else {
                let inputs = batch.iter_mut().map(|job| std::mem::take(&mut job.input)).collect();
                worker.run_batch(inputs, &alone)
            }
        }));
        let result = match run {
            Ok(result) => result,
            Err(panic) => {
                let message = format!("the inference engine panicked: {}", crate::error::panic_message(&*panic));
                tracing::error!(%message, "inference failed; the worker starts afresh");
                // Its state may be half-updated: a fresh one for the next job.
                match model.clone().worker() {
                    Ok(fresh) => worker = fresh,
                    Err(e) => tracing::error!(error = %e, "inference worker could not restart; keeping the old one"),
                }
                Err(message)
            }
        };
        // A reservation estimates the time of a job on one worker: a job that had every thread
        // took about 1/threads of that; a batch's jobs share its time.
        let slots = if had_every_thread { parallel_jobs } else { 1 };
        load.record(now.elapsed() * slots as u32 / batch.len() as u32);
        load.batches.fetch_add(1, Ordering::Relaxed);
        load.images.fetch_add(batch.len() as u64, Ordering::Relaxed);
        match result {
            Ok(outputs) if outputs.len() == batch.len() => {
                for (job, output) in batch.into_iter().zip(outputs) {
                    answer(job, Ok(output));
                }
            }
            Ok(outputs) => {
                let message = format!("the engine answered {} outputs for a batch of {}", outputs.len(), batch.len());
                for job in batch {
                    answer(job, Err(RequestError::new(ErrorKind::Internal, Stage::Inference, message.clone())));
                }
            }
            Err(message) => {
                for job in batch {
                    answer(job, Err(RequestError::new(ErrorKind::Internal, Stage::Inference, message.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::inference::{EngineMode, ModelWorker};

    /// An engine that panics on an input starting with -1 and echoes any other.
    struct Fragile(ModelIo);

    struct FragileWorker;

    impl LoadedModel for Fragile {
        fn io(&self) -> &ModelIo {
            &self.0
        }
        fn spreads_when_alone(&self) -> bool {
            false
        }
        fn parallel_jobs(&self) -> usize {
            1
        }
        fn worker(self: Arc<Self>) -> Result<Box<dyn ModelWorker>, String> {
            Ok(Box::new(FragileWorker))
        }
    }

    impl ModelWorker for FragileWorker {
        fn run(&mut self, input: Vec<f32>, _: &(dyn Fn() -> bool + Sync)) -> Result<Vec<f32>, String> {
            assert!(input[0] != -1.0, "the engine cannot run this");
            Ok(input)
        }
    }

    #[test]
    fn a_panicking_engine_fails_the_request_and_the_worker_serves_on() {
        let io = ModelIo {
            input_name: "x".into(),
            input_shape: vec![1, 2],
            input_dtype: "F32".into(),
            output_name: "y".into(),
            output_shape: vec![1, 2],
            output_dtype: "F32".into(),
        };
        let engine = EngineConfig { mode: EngineMode::Latency, threads: 1, queue_len: 4 };
        let pool = InferencePool::start(Arc::new(Fragile(io)), &engine, Batching::default());
        let deadline = || Instant::now() + Duration::from_secs(5);
        for _ in 0..3 {
            let err = pool.run(vec![-1.0, 0.0], deadline()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Internal);
            assert!(err.message.contains("panicked: the engine cannot run this"), "{}", err.message);
            assert_eq!(pool.run(vec![2.0, 3.0], deadline()).unwrap(), vec![2.0, 3.0], "the one worker is still there");
        }
    }

    #[test]
    fn reservations_count_rounds_of_parallel_jobs_at_the_measured_time_per_job() {
        let load = Load::default();
        let now = Instant::now();
        assert_eq!(load.estimated_finish(now, 10, 2), None, "no estimate before a job has run");
        load.record(Duration::from_millis(100));
        let after = |ms| Some(now + Duration::from_millis(ms));
        assert_eq!(load.estimated_finish(now, 0, 2), after(100));
        assert_eq!(load.estimated_finish(now, 1, 2), after(100), "runs beside the one job ahead");
        assert_eq!(load.estimated_finish(now, 2, 2), after(200));
        assert_eq!(load.estimated_finish(now, 5, 2), after(300));
        load.record(Duration::from_millis(200));
        assert_eq!(load.job_us.load(Ordering::Relaxed), 112_500, "the average moves 1/8 of the way");
    }

    #[test]
    fn a_job_that_cannot_meet_its_deadline_is_refused_at_once() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shapes/1/model.onnx");
        let shape = [1, 3, 224, 224];
        let engine = EngineConfig { mode: EngineMode::Adaptive, threads: 2, queue_len: 8 };
        let pool = InferencePool::load(&path, &shape, EngineKind::Tract, &engine).unwrap();
        let input = vec![0f32; 3 * 224 * 224];
        pool.run(input.clone(), Instant::now() + Duration::from_secs(30)).unwrap();
        // One job has been timed (milliseconds); a deadline a microsecond away cannot be met,
        // even with nothing ahead: the deadline is too short, waiting would not help.
        let err = pool.run(input.clone(), Instant::now() + Duration::from_micros(1)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::DeadlineExceeded, "{err:?}");
        assert!(err.message.contains("allow more time"), "{}", err.message);
        // With jobs ahead on every worker (counted as the pool counts them), it is an overload.
        pool.load.in_flight.fetch_add(4, Ordering::AcqRel);
        let err = pool.run(input.clone(), Instant::now() + Duration::from_millis(2)).unwrap_err();
        pool.load.in_flight.fetch_sub(4, Ordering::AcqRel);
        assert_eq!(err.kind, ErrorKind::Overloaded, "{err:?}");
        assert!(err.message.contains("before its deadline"), "{}", err.message);
        // And the refusals took nothing from the pool.
        assert_eq!(pool.load.in_flight.load(Ordering::Relaxed), 0);
        pool.run(input, Instant::now() + Duration::from_secs(30)).unwrap();
    }

    #[test]
    fn modes_parse_by_name() {
        assert_eq!("adaptive".parse::<EngineMode>(), Ok(EngineMode::Adaptive));
        assert_eq!("latency".parse::<EngineMode>(), Ok(EngineMode::Latency));
        let err = "fast".parse::<EngineMode>().unwrap_err();
        // The names are serde's (tessera.toml's), listed in the error.
        assert!(err.contains("`adaptive`, `throughput`, `latency`"), "{err}");
        assert_eq!(EngineMode::default(), EngineMode::Adaptive);
    }
}
