//! Generated WIT bindings, private to the runtime. Only the runtime converts between these
//! types and the host's own; nothing above `runtime` sees them.

pub mod rules {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "rules",
        // `infer` may end the guest's call (a trap) rather than answer: past
        // `limits.guest_infer_calls` a guest that ignored the error could call on.
        imports: { "tessera:vision/inference.infer": trappable },
    });
}

pub mod preprocessor {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "preprocessor",
        with: { "tessera:vision/types": super::rules::tessera::vision::types },
    });
}

pub mod postprocessor {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "postprocessor",
        with: { "tessera:vision/types": super::rules::tessera::vision::types },
    });
}

pub mod task {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "task",
        with: { "tessera:vision/types": super::rules::tessera::vision::types },
        // `run` may end the guest's call (a trap) rather than answer, as `infer` does.
        imports: { "tessera:vision/engines.run": trappable },
    });
}

pub use rules::tessera::vision::{inference, types};
pub use task::tessera::vision::{engines, tasks};
