//! The planning core: what a cycle would do, computed from listed files and
//! a policy, with nothing stored or changed. The engine's planner, the
//! partition outlook, the API's candidates and debt, and the plugin
//! author's convergence simulator all plan through it, so they agree on
//! Arc's batching, the validation of a policy's answer, the 2-file rule,
//! output names and request costs.
//!
//! - [`batching`]: Arc's candidates, clamp and batch splitting;
//! - [`validate_answer`]: what a policy may answer;
//! - [`plan_tier`]: one tier's batches over the listed files;
//! - [`predict_outputs`]: the listing a later tier of the same cycle sees;
//! - [`batch_cost`]: the store requests a batch makes;
//! - [`probe`]: when a policy will select a partition, and why not now.

mod answer;
pub mod batching;
mod cost;
mod plan;
mod policy;
pub mod probe;

pub use answer::validate_answer;
pub use batching::{Candidate, split_into_batches};
pub use cost::{batch_cost, lease_mark_cost, list_pages};
pub use plan::{
    BatchRef, Listing, MeasurementShare, OwnsMeasurement, PartitionVerdict, Plan, PlanOptions, PlanProblem, PlannedBatch, PlannedTier,
    TierId, TierSummary, plan_tier, predict_outputs,
};
pub use policy::{PartitionPolicy, PolicyFactory};

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default()
}
