//! Memory limits as a factor (`factor.rs`): each store's cap on its instance's linear memory and
//! tables (`MemoryLimiter`, `limits.guest_memory_bytes`), and the process-wide budget every live
//! guest instance reserves from (`MemoryBudget`, `limits.guest_memory_total_bytes`); `LiveStore`
//! counts the stores alive. Nothing to link: the limiter is the store's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::component::Linker;
use wasmtime::{ResourceLimiter, Store};

use super::GuestState;
use super::factor::{Call, Factor, Grants, Instance, World};

/// The memory limits, configured once from `limits`.
pub(super) struct MemoryFactor {
    instance_bytes: usize,
    /// Shared by every store of the runtime.
    pub(super) budget: Arc<MemoryBudget>,
    /// Stores (one guest instance each) in a call now, or just after it until the reaper
    /// drops them; instances made ahead are not counted until a call takes them.
    live_stores: Arc<AtomicUsize>,
}

/// One instance's part: its limiter, and once a call takes it, its place in the count of live
/// stores.
pub(super) struct InstanceMemory {
    pub(super) limiter: MemoryLimiter,
    live: Option<LiveStore>,
}

impl MemoryFactor {
    pub(super) fn new(limits: &crate::config::Limits) -> Self {
        MemoryFactor {
            instance_bytes: usize::try_from(limits.guest_memory_bytes).unwrap_or(usize::MAX),
            budget: Arc::new(MemoryBudget::new(usize::try_from(limits.guest_memory_total_bytes).unwrap_or(usize::MAX))),
            live_stores: Arc::default(),
        }
    }

    /// Guest instances in a call now.
    pub(super) fn live_instances(&self) -> usize {
        self.live_stores.load(Ordering::Relaxed)
    }
}

impl Factor for MemoryFactor {
    type InstanceState = InstanceMemory;

    fn link(&self, _linker: &mut Linker<GuestState>, _world: World, _grants: &Grants) -> wasmtime::Result<()> {
        Ok(())
    }

    fn instance_state(&self, _instance: &Instance<'_>) -> InstanceMemory {
        InstanceMemory { limiter: MemoryLimiter::new(self.instance_bytes, self.budget.clone()), live: None }
    }

    fn prepare_store(&self, store: &mut Store<GuestState>) {
        store.limiter(|s| &mut s.memory.limiter);
    }

    fn begin_call(&self, store: &mut Store<GuestState>, _call: &Call) {
        store.data_mut().memory.live = Some(LiveStore::new(&self.live_stores));
    }
}

/// Counts a store as alive from its creation until it is dropped.
pub(super) struct LiveStore(Arc<AtomicUsize>);

impl LiveStore {
    pub(super) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        LiveStore(count.clone())
    }
}

impl Drop for LiveStore {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Caps the linear memory of a store's instance, all its memories together (a Python or JS
/// component has several), and remembers that it refused one, so a guest that dies from an
/// allocation failure is reported as out of memory rather than as a generic trap. (wasmtime's
/// `StoreLimits` caps each memory alone and does not record the refusal.)
pub(super) struct MemoryLimiter {
    max_bytes: usize,
    /// The bytes of every memory the store has, as this limiter allowed them to grow (wasmtime
    /// asks it for each memory's initial size too, from 0).
    used: usize,
    /// The process-wide budget `used` is reserved from, and handed back to when the store
    /// (and so this limiter) is dropped.
    pub(super) budget: Arc<MemoryBudget>,
    pub(super) refused: Option<Refusal>,
}

/// Which limit refused a memory growth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Refusal {
    /// `limits.guest_memory_bytes`: the guest's own.
    Guest,
    /// `limits.guest_memory_total_bytes`: every live guest's together; the request is not at
    /// fault, the host is busy.
    Budget,
}

impl MemoryLimiter {
    pub(super) fn new(max_bytes: usize, budget: Arc<MemoryBudget>) -> Self {
        MemoryLimiter { max_bytes, used: 0, budget, refused: None }
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.budget.release(self.used);
    }
}

/// `limits.guest_memory_total_bytes`: the linear memory every live guest instance holds,
/// together, so that many concurrent large decodes cannot take more than that from the host
/// (each is also capped alone). Counted as the limiters grant it, not as pages are touched.
#[derive(Debug)]
pub(super) struct MemoryBudget {
    pub(super) total: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub(super) fn new(total: usize) -> Self {
        MemoryBudget { total, used: AtomicUsize::new(0) }
    }

    /// Takes `bytes` from the budget if that many are left.
    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.total)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes granted to live guests now.
    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Past the memory's own maximum wasmtime refuses the growth whatever we answer: count
        // nothing (wasmtime calls this for each memory's initial size too, from 0, in
        // vm/memory.rs, so `used` covers every memory).
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let growth = desired.saturating_sub(current);
        let total = self.used.saturating_add(growth);
        if total > self.max_bytes {
            self.refused = Some(Refusal::Guest);
            return Ok(false);
        }
        if !self.budget.reserve(growth) {
            self.refused = Some(Refusal::Budget);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Table elements (function references) one guest instance may hold.
pub(super) const MAX_TABLE_ELEMENTS: usize = 100_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_counts_every_memory_of_a_store() {
        let mut limiter = MemoryLimiter::new(100, Arc::new(MemoryBudget::new(1000)));
        assert!(limiter.memory_growing(0, 40, None).unwrap(), "first memory's initial size");
        assert!(limiter.memory_growing(0, 40, None).unwrap(), "second memory's initial size");
        assert!(limiter.memory_growing(40, 60, None).unwrap(), "grows within the cap: 100 in all");
        assert_eq!(limiter.refused, None);
        assert!(!limiter.memory_growing(40, 60, Some(50)).unwrap(), "past the memory's own maximum");
        assert_eq!(limiter.refused, None, "that refusal is the module's, not the cap's");
        assert!(!limiter.memory_growing(40, 41, None).unwrap(), "101 in all is refused");
        assert_eq!(limiter.refused, Some(Refusal::Guest));
    }

    #[test]
    fn the_process_budget_counts_every_live_store_and_gets_its_bytes_back() {
        let budget = Arc::new(MemoryBudget::new(150));
        let mut first = MemoryLimiter::new(100, budget.clone());
        let mut second = MemoryLimiter::new(100, budget.clone());
        assert!(first.memory_growing(0, 100, None).unwrap());
        assert!(second.memory_growing(0, 50, None).unwrap(), "150 in all");
        assert!(!second.memory_growing(50, 51, None).unwrap(), "within its own cap, past the budget");
        assert_eq!(second.refused, Some(Refusal::Budget));
        assert_eq!(budget.used(), 150, "a refused growth takes nothing");
        drop(first);
        assert_eq!(budget.used(), 50, "a dropped store hands its memory back");
        let mut third = MemoryLimiter::new(100, budget.clone());
        assert!(third.memory_growing(0, 100, None).unwrap());
        drop((second, third));
        assert_eq!(budget.used(), 0);
    }
}
