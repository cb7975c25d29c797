//! The components embedded in the `compactor` binary, built from `plugins/`
//! by `build.rs`: `builtin:hourly` and `builtin:daily` (Arc's tiers),
//! `builtin:binpack` (size-aware bin-packing) and `builtin:role` (Arc's role
//! gate).
//!
//! A crate of its own so that editing a policy rebuilds only these bytes and
//! relinks, and so that a plugin host chooses whether to embed them.

/// Every built-in component: (name after `builtin:`, component bytes).
pub const BUILTINS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/builtins.rs"));
