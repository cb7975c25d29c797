//! Load-time checks of a component against the contract: which world it
//! exports, which WIT version it was built for, and that it imports nothing
//! beyond `log` and the capability-free WASI interfaces a Rust guest links.

use semver::Version;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The WIT package this host speaks.
pub const WIT_PACKAGE: &str = "compactor:policy";

/// The version of [`WIT_PACKAGE`] this host was built against; components of
/// the same major version are accepted.
pub fn host_wit_version() -> Version {
    Version::new(1, 1, 0)
}

/// The contract versions this host accepts, as a semver range: every
/// version of its major (components built for an earlier minor keep
/// loading; the host supplies what they lack).
pub fn accepted_wit_versions() -> String {
    let host = host_wit_version();
    format!(">={}.0.0, <{}.0.0", host.major, host.major + 1)
}

/// The world a component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// `tier-policy`: exports `compactor:policy/tier`.
    TierPolicy,
    /// `cluster-gate`: exports `compactor:policy/gate`.
    ClusterGate,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TierPolicy => "tier-policy",
            Self::ClusterGate => "cluster-gate",
        })
    }
}

/// What the checks learnt about a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Contract {
    /// The world it exports.
    pub world: World,
    /// The version of `compactor:policy` it was built against.
    #[serde(serialize_with = "crate::contract::display")]
    pub wit_version: Version,
    /// Every import, by name.
    pub imports: Vec<String>,
    /// Whether it exports `explain` (WIT 1.1.0): then it says why it selects
    /// a partition or not; otherwise the host explains.
    pub exports_explain: bool,
}

pub(crate) fn display<S: serde::Serializer>(v: &Version, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// WASI interfaces a Rust `wasm32-wasip2` guest imports even when unused.
/// They are linked with nothing granted: no preopened directory, an empty
/// environment, closed stdin, discarded output, a frozen clock and seeded
/// randomness.
const GRANTED_WASI: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
];

/// Splits `package:ns/interface@version` into the unversioned name and the
/// version.
fn split_version(name: &str) -> (&str, Option<Version>) {
    match name.split_once('@') {
        Some((base, version)) => (base, Version::parse(version).ok()),
        None => (name, None),
    }
}

/// Checks `component` against the contract. The error says what is wrong in
/// words an operator can act on.
pub fn check(engine: &Engine, component: &Component) -> Result<Contract, String> {
    let ty = component.component_type();
    let host = host_wit_version();
    let mut found = None;
    let mut exports_explain = false;
    let mut export_names = Vec::new();
    for (name, _) in ty.exports(engine) {
        export_names.push(name.to_owned());
        let (base, version) = split_version(name);
        if base == "compactor:policy/explain" {
            exports_explain = version.is_some_and(|v| v.major == host.major);
            continue;
        }
        let world = match base {
            "compactor:policy/tier" => World::TierPolicy,
            "compactor:policy/gate" => World::ClusterGate,
            _ => continue,
        };
        let version = version.ok_or_else(|| format!("exports {name} without a version; rebuild it with the compactor plugin SDK"))?;
        if version.major != host.major {
            return Err(format!(
                "was built for WIT {WIT_PACKAGE}@{version}, but this host speaks {WIT_PACKAGE}@{}.x ({host}); rebuild it against {WIT_PACKAGE}@{host}",
                host.major
            ));
        }
        found = Some((world, version));
    }
    let Some((world, wit_version)) = found else {
        return Err(format!(
            "exports neither {WIT_PACKAGE}/tier nor {WIT_PACKAGE}/gate (exports: [{}]); build it with the compactor plugin SDK",
            export_names.join(", ")
        ));
    };

    let mut imports = Vec::new();
    for (name, _) in ty.imports(engine) {
        let (base, version) = split_version(name);
        let allowed = match base {
            // `types` holds only type definitions; `log` is the one host function.
            "compactor:policy/log" | "compactor:policy/types" => version.as_ref().is_some_and(|v| v.major == host.major),
            _ => GRANTED_WASI.contains(&base) && version.as_ref().is_some_and(|v| v.major == 0 && v.minor == 2),
        };
        if !allowed {
            return Err(format!(
                "imports {name}, which is outside the {WIT_PACKAGE} contract (plugins may import only {WIT_PACKAGE}/types, {WIT_PACKAGE}/log and capability-free WASI 0.2 interfaces; no network, filesystem or environment)"
            ));
        }
        imports.push(name.to_owned());
    }
    Ok(Contract { world, wit_version, imports, exports_explain })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_split_from_names() {
        assert_eq!(split_version("compactor:policy/tier@1.2.0"), ("compactor:policy/tier", Some(Version::new(1, 2, 0))));
        assert_eq!(split_version("local:x/y"), ("local:x/y", None));
    }
}
