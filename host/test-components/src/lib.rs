//! Paths of the guest components that tests and examples load, built by
//! `build.rs`: [`HOSTILE`] misbehaves on purpose through the SDK, [`RAW`]
//! and [`RAW_GATE`] misbehave without it (plain `wit-bindgen`, the default
//! panic hook, `println!`, sleeps; the sandbox tests), and [`EXAMPLE_POLICY`]
//! is `examples/policy`, [`POLICY_TEMPLATE`] `examples/policy-template`. Only dev-dependencies and the
//! example host depend on this crate, so the production binary never
//! carries them.

include!(concat!(env!("OUT_DIR"), "/components.rs"));
