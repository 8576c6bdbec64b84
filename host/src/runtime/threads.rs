//! The runtime's own threads: the epoch ticker that interrupts guests past their deadline, and
//! the reaper that drops finished stores off the request's path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Engine, Store};

use super::GuestState;
use crate::config::EPOCH_TICK_MS;

/// Advances the engine's epoch every `EPOCH_TICK_MS` on its own OS thread: a tokio task could
/// be starved exactly when every worker is inside a looping guest.
pub(super) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(super) fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop, thread: Some(thread) }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Drops finished stores on a thread of its own. Dropping a store returns its instance to the
/// pool, which resets the slot: the kept-resident pages a call dirtied are copied back from the
/// memory image and the rest handed to the kernel (`madvise`), 0.2–0.4 ms for a Python or JS
/// rules guest and more after a large decode. A request need not wait for it: its answer does
/// not depend on the reset, only the next instance in that slot does, and wasmtime hands that
/// slot out again only once the reset is done.
pub(super) struct Reaper {
    tx: Option<std::sync::mpsc::SyncSender<Store<GuestState>>>,
    thread: Option<JoinHandle<()>>,
}

impl Reaper {
    /// Up to `backlog` stores wait; past that the caller drops its own (the request pays the
    /// reset, as it would without a reaper), so a slow reaper never holds more pool slots.
    pub(super) fn start(backlog: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Store<GuestState>>(backlog);
        let thread = std::thread::Builder::new()
            .name("tessera-reaper".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .expect("spawning the store reaper thread");
        Reaper { tx: Some(tx), thread: Some(thread) }
    }

    pub(super) fn retire(&self, store: Store<GuestState>) {
        if let Some(tx) = &self.tx
            && let Err(std::sync::mpsc::TrySendError::Full(store) | std::sync::mpsc::TrySendError::Disconnected(store)) =
                tx.try_send(store)
        {
            drop(store);
        }
    }
}

impl Drop for Reaper {
    /// Waits for the stores already handed over, so none outlives the runtime's engine users.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
