//! Typed bindings generated from `wit/policy.wit`, the same file the guest
//! SDK is generated from. Nothing outside `plugin` sees these types.

/// The `tier-policy` world.
pub(crate) mod tier {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "tier-policy",
    });
}

/// The `explained-tier-policy` world (1.1.0), for its `explain` export
/// only: it is looked up apart, because a 1.0.0 component lacks it.
pub(crate) mod explained {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "explained-tier-policy",
        with: {
            "compactor:policy/types": super::tier::compactor::policy::types,
            "compactor:policy/log": super::tier::compactor::policy::log,
        },
    });
}

/// The `cluster-gate` world; shares `types` and `log` with the tier world.
pub(crate) mod gate {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "cluster-gate",
        with: {
            "compactor:policy/types": super::tier::compactor::policy::types,
            "compactor:policy/log": super::tier::compactor::policy::log,
        },
    });
}

pub(crate) use tier::compactor::policy::{log, types};
