//! The compactor engine: merges the many small Parquet files of a
//! time-series lake into few large sorted ones, with the decision of *what* to
//! compact taken by sandboxed WebAssembly tier policies.
//!
//! The modules follow the data flow:
//!
//! ```text
//! storage listing ─► planner ─► tier policy (plugin) ─► validated candidates ─► batches
//! ```
//!
//! - [`config`]: the TOML configuration, defaults and validation;
//! - [`storage`]: `object_store` access, listing and partition paths;
//! - [`plugin`]: the wasmtime runtime that loads, limits and calls components;
//! - [`builtin`]: the components embedded in the binary (`builtin:hourly`, …);
//! - [`tier`]: configured tiers and Arc's batch splitting;
//! - [`manifest`]: Arc-compatible recovery manifests in `_compaction_state/`
//!   and recovery;
//! - [`job`]: one batch compacted by DuckDB in a child process;
//! - [`completion`]: completion manifests, the watcher and the manifest bridge;
//! - [`lock`]: partition locks across processes;
//! - [`manager`]: cycles: recovery, then plan and execute each tier;
//! - [`planner`]: one cycle's plan, as data.

pub mod builtin;
pub mod completion;
pub mod config;
pub mod job;
pub mod lock;
pub mod manager;
pub mod manifest;
pub mod planner;
pub mod sample;
pub mod scheduler;
pub mod plugin;
pub mod storage;
pub mod tier;
pub mod units;
pub mod verify;
