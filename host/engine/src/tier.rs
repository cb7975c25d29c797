//! Arc's candidates and batch splitting, from the planning core.

pub use compactor_planning::batching::*;
