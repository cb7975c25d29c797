//! The component side of the SDK (wasm only): the adapters that bind a
//! [`TierPolicy`](crate::TierPolicy) or [`ClusterGate`](crate::ClusterGate) to
//! the generated WIT exports, and the instance's configured state.

use std::marker::PhantomData;

/// Routes panic messages to the host log so that the host's error names the
/// cause, not just "unreachable executed".
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| crate::log(crate::Level::Error, &format!("panic: {info}"))));
    });
}

/// Parses the JSON config the host hands to `configure`; serde's message names
/// the offending key.
fn parse_config<C: serde::de::DeserializeOwned>(json: &str) -> Result<C, String> {
    serde_json::from_str(json).map_err(|e| format!("invalid config: {e}"))
}

/// The configured plugin of this instance. Components are single-threaded and
/// `configure` runs once per instance, before any other call.
mod instance {
    use std::any::Any;
    use std::cell::RefCell;

    thread_local! {
        static CONFIGURED: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    pub(crate) fn set<T: 'static>(value: T) {
        CONFIGURED.with(|slot| *slot.borrow_mut() = Some(Box::new(value)));
    }

    pub(crate) fn with<T: 'static, R>(f: impl FnOnce(&T) -> R) -> R {
        CONFIGURED.with(|slot| {
            let slot = slot.borrow();
            let value = slot.as_ref().and_then(|v| v.downcast_ref::<T>()).expect("the host called the plugin before `configure`");
            f(value)
        })
    }
}

#[cfg(feature = "tier")]
pub use tier::TierAdapter;

#[cfg(feature = "tier")]
mod tier {
    use super::*;
    use crate::tier_bindings::compactor::policy::types as wit;
    use crate::tier_bindings::exports::compactor::policy::explain::Guest as ExplainGuest;
    use crate::tier_bindings::exports::compactor::policy::tier::Guest;
    use crate::{FileInfo, Partition, PartitionLevel, TierPolicy, Timestamp};

    fn partition_from_wit(partition: wit::Partition) -> Partition {
        Partition {
            database: partition.database,
            measurement: partition.measurement,
            path: partition.path,
            time: Timestamp(partition.time_ms),
            files: partition
                .files
                .into_iter()
                .map(|f| FileInfo { path: f.path, size_bytes: f.size_bytes, last_modified: Timestamp(f.last_modified_ms) })
                .collect(),
        }
    }

    /// Binds a [`TierPolicy`] to the WIT export; used by `export_tier_policy!`.
    #[doc(hidden)]
    pub struct TierAdapter<T>(PhantomData<T>);

    impl<T: TierPolicy> Guest for TierAdapter<T> {
        fn configure(config: String) -> Result<(), String> {
            install_panic_hook();
            let config = parse_config::<T::Config>(&config)?;
            instance::set(T::new(config)?);
            Ok(())
        }

        fn info() -> wit::TierInfo {
            let info = instance::with(|p: &T| p.info());
            wit::TierInfo {
                name: info.name,
                description: info.description,
                partition_level: match info.partition_level {
                    PartitionLevel::Hour => wit::PartitionLevel::Hour,
                    PartitionLevel::Day => wit::PartitionLevel::Day,
                },
                output_suffix: info.output_suffix,
                min_files: info.min_files,
                effective_config: info.effective_config.to_string(),
            }
        }

        fn is_compacted_file(name: String) -> bool {
            instance::with(|p: &T| p.is_compacted_file(&name))
        }

        fn should_compact(files: Vec<String>, partition_time_ms: i64, now_ms: i64) -> bool {
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            instance::with(|p: &T| p.should_compact(&files, Timestamp(partition_time_ms), Timestamp(now_ms)))
        }

        fn select_candidates(partition: wit::Partition, now_ms: i64) -> Vec<wit::Candidate> {
            let partition = partition_from_wit(partition);
            instance::with(|p: &T| p.select_candidates(&partition, Timestamp(now_ms)))
                .into_iter()
                .map(|c| wit::Candidate { files: c.files })
                .collect()
        }
    }

    impl<T: TierPolicy> ExplainGuest for TierAdapter<T> {
        fn explain(partition: wit::Partition, now_ms: i64) -> String {
            let partition = partition_from_wit(partition);
            instance::with(|p: &T| p.explain(&partition, Timestamp(now_ms)))
        }
    }
}

#[cfg(feature = "gate")]
pub use gate::GateAdapter;

#[cfg(feature = "gate")]
mod gate {
    use super::*;
    use crate::gate_bindings::compactor::policy::types as wit;
    use crate::gate_bindings::exports::compactor::policy::gate::Guest;
    use crate::{ClusterGate, NodeInfo};

    /// Binds a [`ClusterGate`] to the WIT export; used by `export_cluster_gate!`.
    #[doc(hidden)]
    pub struct GateAdapter<T>(PhantomData<T>);

    impl<T: ClusterGate> Guest for GateAdapter<T> {
        fn configure(config: String) -> Result<(), String> {
            install_panic_hook();
            let config = parse_config::<T::Config>(&config)?;
            instance::set(T::new(config)?);
            Ok(())
        }

        fn can_compact(node: wit::NodeInfo) -> bool {
            instance::with(|g: &T| g.can_compact(&node.into()))
        }

        fn role(node: wit::NodeInfo) -> String {
            instance::with(|g: &T| g.role(&node.into()))
        }
    }

    impl From<wit::NodeInfo> for NodeInfo {
        fn from(n: wit::NodeInfo) -> Self {
            Self {
                id: n.id,
                role: n.role,
                holds_compactor_lease: n.holds_compactor_lease,
                lease_assigned: n.lease_assigned,
                labels: n.labels,
            }
        }
    }
}

/// Exports a [`TierPolicy`](crate::TierPolicy) type as this component's `tier`
/// and `explain` interfaces (the `explained-tier-policy` world).
#[cfg(feature = "tier")]
#[macro_export]
macro_rules! export_tier_policy {
    ($policy:ty) => {
        type __CompactorTierExport = $crate::TierAdapter<$policy>;
        $crate::tier_bindings::__export_tier_world!(__CompactorTierExport with_types_in $crate::tier_bindings);
    };
}

/// Exports a [`ClusterGate`](crate::ClusterGate) type as this component's `gate` interface.
#[cfg(feature = "gate")]
#[macro_export]
macro_rules! export_cluster_gate {
    ($gate:ty) => {
        type __CompactorGateExport = $crate::GateAdapter<$gate>;
        $crate::gate_bindings::__export_gate_world!(__CompactorGateExport with_types_in $crate::gate_bindings);
    };
}
