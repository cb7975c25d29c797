//! The components embedded in the binary, built from `plugins/` by
//! `build.rs`: `builtin:hourly` and `builtin:daily` (Arc's tiers),
//! `builtin:binpack` (size-aware bin-packing) and `builtin:role` (Arc's role
//! gate).

mod generated {
    include!(concat!(env!("OUT_DIR"), "/components.rs"));
}

#[doc(hidden)]
pub use generated::{EXAMPLE_COMPONENT, HOSTILE_COMPONENT};

/// The bytes of built-in component `name`.
pub fn component(name: &str) -> Option<&'static [u8]> {
    generated::BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, bytes)| *bytes)
}

/// Names of every built-in component.
pub fn names() -> Vec<&'static str> {
    generated::BUILTINS.iter().map(|(n, _)| *n).collect()
}
