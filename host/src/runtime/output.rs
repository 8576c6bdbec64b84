//! The output cap as a factor: the most a guest may hand the host in one crossing
//! (`limits.guest_output_bytes`), enforced by wasmtime's hostcall fuel.

use wasmtime::Store;
use wasmtime::component::Linker;

use super::GuestState;
use super::factor::{Call, Factor, Grants, Instance, World};

/// `limits.guest_output_bytes`, configured once.
pub(super) struct OutputFactor {
    pub(super) max_bytes: usize,
}

/// One call's cap: the configured one, or more where the stage needs it.
pub(super) struct OutputCap {
    pub(super) bytes: usize,
}

impl OutputFactor {
    pub(super) fn new(limits: &crate::config::Limits) -> Self {
        OutputFactor { max_bytes: usize::try_from(limits.guest_output_bytes).unwrap_or(usize::MAX) }
    }
}

impl Factor for OutputFactor {
    type InstanceState = OutputCap;

    /// Nothing to link: the cap is the store's.
    fn link(&self, _linker: &mut Linker<GuestState>, _world: World, _grants: &Grants) -> wasmtime::Result<()> {
        Ok(())
    }

    fn instance_state(&self, _instance: &Instance<'_>) -> OutputCap {
        OutputCap { bytes: self.max_bytes }
    }

    /// wasmtime counts the bytes it lifts out of the guest (strings, lists) against this
    /// "hostcall fuel" on every crossing, a result included, and fails the call once it runs
    /// out, before copying: a guest returning a 100 MB `reason` costs the host nothing (its
    /// 128 MiB default let it through as a 100 MB HTTP body).
    fn prepare_store(&self, store: &mut Store<GuestState>) {
        let bytes = store.data().output.bytes;
        store.set_hostcall_fuel(bytes);
    }

    /// The call's cap, and the fuel afresh: whatever instantiation spent is not the call's.
    fn begin_call(&self, store: &mut Store<GuestState>, call: &Call) {
        store.data_mut().output.bytes = call.output_bytes;
        store.set_hostcall_fuel(call.output_bytes);
    }
}
