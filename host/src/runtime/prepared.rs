//! Instances made before their call. A loaded guest ([`Loaded`]) is what each of its
//! instances is made from; a request may instantiate the guests of its later stages while its
//! model runs (`Runner::classify_with`), on its own thread, so that those stages pay only for
//! their calls: instantiating a Python or Go component wires dozens of core modules together,
//! 0.5–0.9 ms served (docs/PERFORMANCE.md), while the request thread would otherwise wait for
//! the inference worker.
//!
//! Made by the request that calls it, on that request's thread: an instance is still used by one
//! call and dropped after it (nothing one call leaves in an instance reaches another: the
//! state-leak test in tests/containment), and its data is in the caches of the core that calls
//! it. (Instances made ahead on a thread of their own, a pool refilled in the background, were
//! tried first: the call then read what instantiation wrote from the other core's caches, and a
//! Python call took 0.5 ms longer, all the instantiation saved; docs/PERFORMANCE.md.)
//! What is made ahead is only what instantiation makes from the component; everything that
//! belongs to the call (its deadline, its `inference` backend, its output cap, its place among
//! the live instances) is set on the store when the call begins (`Factor::begin_call`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Engine, Store};

use super::factor::{Grants, Instance};
use super::stdio::GuestLog;
use super::{Factors, GuestState};

/// Makes a store for one instance of a guest.
pub(super) struct StoreMaker {
    pub(super) engine: Engine,
    pub(super) factors: Factors,
}

impl StoreMaker {
    /// A fresh store for an instance granted `grants`, logging through `log`, holding each
    /// factor's instance state and trapping once `deadline` passes (a start function that
    /// loops); a call sets its own deadline when it begins.
    pub(super) fn store(&self, grants: &Grants, log: &Arc<GuestLog>, deadline: Instant) -> Store<GuestState> {
        let mut store = Store::new(&self.engine, self.factors.instance_state(&Instance { grants, log }));
        self.factors.prepare_store(&mut store);
        set_deadline(&mut store, deadline);
        store.epoch_deadline_trap();
        store
    }
}

/// Sets `store`'s epoch deadline to `deadline` (at least one tick).
pub(super) fn set_deadline(store: &mut Store<GuestState>, deadline: Instant) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    store.set_epoch_deadline((remaining.as_millis() as u64).div_ceil(crate::config::EPOCH_TICK_MS).max(1));
}

/// A world's typed instantiation from a guest's `InstancePre`.
type Instantiate<I> = Box<dyn Fn(&mut Store<GuestState>) -> wasmtime::Result<I> + Send + Sync>;

/// A loaded guest: its grants, its log budget (shared by all its instances) and its
/// `InstancePre` as its world's typed instantiation (`I` is the world's typed instance).
pub(super) struct Loaded<I> {
    grants: Grants,
    log: Arc<GuestLog>,
    instantiate: Instantiate<I>,
}

impl<I> Loaded<I> {
    pub(super) fn new(
        grants: Grants,
        log: GuestLog,
        instantiate: impl Fn(&mut Store<GuestState>) -> wasmtime::Result<I> + Send + Sync + 'static,
    ) -> Self {
        Loaded { grants, log: Arc::new(log), instantiate: Box::new(instantiate) }
    }

    /// A fresh instance in a fresh store, and how long making it took; an instantiation that
    /// failed is kept as it failed, for the call to report.
    pub(super) fn instantiate(&self, maker: &StoreMaker, deadline: Instant) -> Prepared<I> {
        let started = Instant::now();
        let mut store = maker.store(&self.grants, &self.log, deadline);
        let instance = (self.instantiate)(&mut store);
        Prepared { store, instance, took: started.elapsed() }
    }
}

/// One instance of a guest, made before its call (or just now, for a call that had none).
pub(super) struct Prepared<I> {
    pub(super) store: Store<GuestState>,
    pub(super) instance: wasmtime::Result<I>,
    /// How long instantiating took.
    pub(super) took: Duration,
}
