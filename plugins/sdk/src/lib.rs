//! Write compactor tier policies and cluster gates in plain Rust.
//!
//! A tier policy is one type implementing [`TierPolicy`] and one line of
//! [`export_tier_policy!`]; a cluster gate is one type implementing
//! [`ClusterGate`] and [`export_cluster_gate!`]. The generated WIT bindings
//! stay private: policy code sees only the types of this crate.
//!
//! ```ignore
//! use compactor_plugin_sdk::{export_tier_policy, Candidate, Partition, TierInfo, TierPolicy, Timestamp};
//!
//! #[derive(serde::Deserialize, Default)]
//! #[serde(deny_unknown_fields)]
//! struct Config { min_files: Option<usize> }
//!
//! struct EveryTen { min_files: usize }
//!
//! impl TierPolicy for EveryTen {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(Self { min_files: config.min_files.unwrap_or(10) })
//!     }
//!     fn info(&self) -> TierInfo { TierInfo::hourly("every-ten", "compacts hours with ten files") }
//!     fn is_compacted_file(&self, name: &str) -> bool { name.ends_with("_every-ten.parquet") }
//!     fn should_compact(&self, files: &[&str], _: Timestamp, _: Timestamp) -> bool {
//!         files.len() >= self.min_files
//!     }
//! }
//!
//! export_tier_policy!(EveryTen);
//! ```
//!
//! Plugins run without filesystem, network, environment or clock: everything
//! a decision needs arrives as arguments. Panics are reported to the host
//! (with their message) and end the call.

pub mod arc;
mod time;

#[cfg(target_family = "wasm")]
mod export;
#[cfg(feature = "gate")]
mod gate;
#[cfg(feature = "tier")]
mod tier;

#[cfg(all(target_family = "wasm", feature = "gate"))]
#[doc(hidden)]
pub use export::GateAdapter;
#[cfg(all(target_family = "wasm", feature = "tier"))]
#[doc(hidden)]
pub use export::TierAdapter;
#[cfg(feature = "gate")]
pub use gate::{ClusterGate, NodeInfo};
#[cfg(feature = "tier")]
pub use tier::{Candidate, FileInfo, Partition, PartitionLevel, TierInfo, TierPolicy};
pub use time::{DAY_MS, HOUR_MS, Timestamp};

/// Re-exported so plugins never pin their own, incompatible version.
pub use serde;
/// Re-exported so plugins never pin their own, incompatible version.
pub use serde_json;

// The bindings exist only in components; natively (tests, benchmarks) a
// policy is a plain Rust type.

/// Generated bindings of the `explained-tier-policy` world (a `tier-policy`
/// that also exports `explain`, WIT 1.1.0). Not part of the API.
#[cfg(all(feature = "tier", target_family = "wasm"))]
#[doc(hidden)]
pub mod tier_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "explained-tier-policy",
        pub_export_macro: true,
        export_macro_name: "__export_tier_world",
        default_bindings_module: "compactor_plugin_sdk::tier_bindings",
    });
}

/// Generated bindings of the `cluster-gate` world. Not part of the API.
#[cfg(all(feature = "gate", target_family = "wasm"))]
#[doc(hidden)]
pub mod gate_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "cluster-gate",
        pub_export_macro: true,
        export_macro_name: "__export_gate_world",
        default_bindings_module: "compactor_plugin_sdk::gate_bindings",
    });
}

/// Log levels of [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed diagnostics.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal events.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

/// Sends one message to the host's log, attributed to this plugin (natively:
/// to stderr).
pub fn log(level: Level, message: &str) {
    // Each world's bindings have their own `Level`; map onto whichever is built.
    #[allow(unused_macros)]
    macro_rules! send {
        ($($wit:tt)*) => {{
            use $($wit)* as wit;
            let level = match level {
                Level::Trace => wit::Level::Trace,
                Level::Debug => wit::Level::Debug,
                Level::Info => wit::Level::Info,
                Level::Warn => wit::Level::Warn,
                Level::Error => wit::Level::Error,
            };
            wit::log(level, message);
        }};
    }
    #[cfg(all(feature = "tier", target_family = "wasm"))]
    send!(tier_bindings::compactor::policy::log);
    #[cfg(all(feature = "gate", not(feature = "tier"), target_family = "wasm"))]
    send!(gate_bindings::compactor::policy::log);
    #[cfg(not(target_family = "wasm"))]
    eprintln!("{level:?}: {message}");
    #[cfg(all(target_family = "wasm", not(any(feature = "tier", feature = "gate"))))]
    let _ = (level, message);
}

/// Natively a policy is a plain Rust type (for tests and benchmarks):
/// exporting is a no-op.
#[cfg(not(target_family = "wasm"))]
#[macro_export]
macro_rules! export_tier_policy {
    ($policy:ty) => {};
}

/// Natively a gate is a plain Rust type: exporting is a no-op.
#[cfg(not(target_family = "wasm"))]
#[macro_export]
macro_rules! export_cluster_gate {
    ($gate:ty) => {};
}
