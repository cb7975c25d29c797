//! The plugin runtime: loads WebAssembly components (built-in or from a
//! path), checks them against the WIT contract, caches their compiled form,
//! and runs them in a sandbox with a fuel budget per call, a memory cap per
//! instance and an epoch deadline as a wall-clock backstop.
//!
//! wasmtime types stay inside this crate; [`TierPlugin`] and [`GatePlugin`]
//! speak plain Rust. The crate knows nothing of storage, configuration files
//! or DuckDB: a plugin host (the engine, the example host, a test kit) hands
//! it component bytes, limits and partitions.

mod bindings;
mod cache;
mod clocks;
pub mod contract;
mod gate;
mod output;
mod sandbox;
mod tier;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

pub use cache::{ArtifactCache, LoadStats};
pub use contract::{Contract, World, accepted_wit_versions, host_wit_version};
pub use gate::{GateInstance, GatePlugin, NodeInfo};
pub use output::sanitize;
pub use sandbox::{CallCounts, CallStats};
pub use tier::{TierDescription, TierInstance, TierPlugin};

use sandbox::PluginState;

/// The largest component file read (policies are hundreds of KiB).
const MAX_COMPONENT_BYTES: u64 = 256 << 20;

/// Components embedded in a host binary, by the name `builtin:NAME` refers to.
pub type Builtins = &'static [(&'static str, &'static [u8])];

/// Sandbox limits in effect for one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Fuel per call.
    pub fuel_per_call: u64,
    /// Linear memory per instance, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock deadline per call.
    pub call_timeout: Duration,
}

impl Default for PluginLimits {
    /// 2·10⁹ fuel (about a second of work), 256 MiB, 5 s: generous for a
    /// policy over a partition of 100,000 files, tight enough that a runaway
    /// plugin is stopped quickly.
    fn default() -> Self {
        Self { fuel_per_call: 2_000_000_000, memory_bytes: 256 << 20, call_timeout: Duration::from_secs(5) }
    }
}

/// A plugin failure, naming the plugin (and, where it applies, the export).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The wasmtime engine could not be created.
    #[error("cannot start the WebAssembly engine: {message}")]
    Engine {
        /// Why.
        message: String,
    },
    /// The plugin spec names no known built-in.
    #[error("unknown built-in plugin {name:?} (available: {available})")]
    UnknownBuiltin {
        /// The name after `builtin:`.
        name: String,
        /// The built-in names, comma-separated.
        available: String,
    },
    /// The component file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid component.
    #[error("plugin {plugin} is not a valid WebAssembly component: {cause}")]
    Compile {
        /// The plugin.
        plugin: String,
        /// The compiler's message.
        cause: String,
    },
    /// The component breaks the contract (world, version, imports).
    #[error("plugin {plugin} {reason}")]
    Incompatible {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
    /// `configure` refused the configuration.
    #[error("plugin {plugin} refused its configuration: {message}")]
    Config {
        /// The plugin.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// A call used up its fuel budget.
    #[error("plugin {plugin} exhausted its fuel budget of {fuel} units in {export}")]
    OutOfFuel {
        /// The plugin.
        plugin: String,
        /// The export called.
        export: &'static str,
        /// The budget.
        fuel: u64,
    },
    /// A call ran past its wall-clock deadline.
    #[error("plugin {plugin} ran past its {timeout:?} deadline in {export}")]
    Deadline {
        /// The plugin.
        plugin: String,
        /// The export called.
        export: &'static str,
        /// The deadline.
        timeout: Duration,
    },
    /// The instance tried to grow its memory past the cap.
    #[error("plugin {plugin} exceeded its memory limit of {} in {export}", compactor_model::units::format_bytes(*limit))]
    OutOfMemory {
        /// The plugin.
        plugin: String,
        /// The export called.
        export: &'static str,
        /// The cap in bytes.
        limit: u64,
    },
    /// A trap: a panic, an `unreachable`, a bad memory access…
    #[error("plugin {plugin} trapped in {export}: {cause}")]
    Trap {
        /// The plugin.
        plugin: String,
        /// The export called.
        export: &'static str,
        /// The trap and the plugin's last error log (a panic message).
        cause: String,
    },
    /// An earlier failure disabled this instance.
    #[error("plugin {plugin} is disabled after an earlier failure: {earlier}")]
    Disabled {
        /// The plugin.
        plugin: String,
        /// The earlier failure.
        earlier: String,
    },
}

/// Where a component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// `builtin:NAME`, embedded in the binary.
    Builtin(String),
    /// A `.wasm` component on disk.
    Path(PathBuf),
}

impl PluginSource {
    /// Parses `builtin:NAME` or a path (relative paths resolve against
    /// `base_dir`).
    pub fn parse(spec: &str, base_dir: &Path) -> Self {
        match spec.strip_prefix("builtin:") {
            Some(name) => Self::Builtin(name.to_owned()),
            None => {
                let path = Path::new(spec);
                Self::Path(if path.is_absolute() { path.to_owned() } else { base_dir.join(path) })
            }
        }
    }
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Builtin(name) => write!(f, "builtin:{name}"),
            Self::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A component checked against the contract and compiled, ready to
/// pre-instantiate.
pub struct LoadedComponent {
    /// Display name for logs and errors.
    pub name: Arc<str>,
    /// What the contract check found.
    pub contract: Contract,
    /// How it was loaded.
    pub stats: LoadStats,
    /// SHA-256 of the component's bytes, hex: which build is running.
    pub content_hash: String,
    component: Component,
}

/// Loads and links components. One per process is enough; it is cheap to
/// clone.
#[derive(Clone)]
pub struct PluginRuntime {
    engine: &'static Engine,
    linker: Arc<Linker<PluginState>>,
    cache: ArtifactCache,
    builtins: Builtins,
}

impl PluginRuntime {
    /// A runtime whose compiled components are cached in `cache`, with no
    /// built-in components (see [`PluginRuntime::with_builtins`]).
    pub fn new(cache: ArtifactCache) -> Result<Self, PluginError> {
        let engine = sandbox::shared_engine()?;
        let mut linker = Linker::new(engine);
        let link_error = |e: wasmtime::Error| PluginError::Engine { message: format!("{e:#}") };
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link_error)?;
        bindings::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state).map_err(link_error)?;
        clocks::add_capped_sleeps(&mut linker).map_err(link_error)?;
        Ok(Self { engine, linker: Arc::new(linker), cache, builtins: &[] })
    }

    /// This runtime, resolving `builtin:NAME` among `builtins`.
    pub fn with_builtins(mut self, builtins: Builtins) -> Self {
        self.builtins = builtins;
        self
    }

    /// The names `builtin:NAME` resolves.
    pub(crate) fn builtin_names(&self) -> Vec<&'static str> {
        self.builtins.iter().map(|(name, _)| *name).collect()
    }

    fn source_bytes(&self, source: &PluginSource) -> Result<std::borrow::Cow<'static, [u8]>, PluginError> {
        match source {
            PluginSource::Builtin(name) => self
                .builtins
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, bytes)| (*bytes).into())
                .ok_or_else(|| PluginError::UnknownBuiltin { name: name.clone(), available: self.builtin_names().join(", ") }),
            PluginSource::Path(path) => {
                let read_error = |source| PluginError::Read { path: path.clone(), source };
                // Not a device, a FIFO or something huge: read only a regular
                // file of a component's size.
                let metadata = std::fs::metadata(path).map_err(read_error)?;
                if !metadata.is_file() || metadata.len() > MAX_COMPONENT_BYTES {
                    return Err(read_error(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("not a regular file of at most {} MiB", MAX_COMPONENT_BYTES >> 20),
                    )));
                }
                std::fs::read(path).map(Into::into).map_err(read_error)
            }
        }
    }

    /// Reads, compiles (or loads from the cache) and checks a component.
    pub fn load(&self, source: &PluginSource) -> Result<LoadedComponent, PluginError> {
        let name: Arc<str> = source.to_string().into();
        let bytes = self.source_bytes(source)?;
        // wasmtime would parse anything else as WAT text and quote it in the
        // error: a secret in a mistyped path must not reach the logs or API.
        let is_text = matches!(source, PluginSource::Path(path) if path.extension().is_some_and(|e| e == "wat"));
        if !is_text && !bytes.starts_with(b"\0asm") {
            return Err(PluginError::Compile {
                plugin: name.to_string(),
                cause: "not a WebAssembly component (the file does not start with the \\0asm header)".into(),
            });
        }
        let (component, stats) =
            self.cache.load(self.engine, &bytes).map_err(|e| PluginError::Compile { plugin: name.to_string(), cause: format!("{e:#}") })?;
        let contract =
            contract::check(self.engine, &component).map_err(|reason| PluginError::Incompatible { plugin: name.to_string(), reason })?;
        let content_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        Ok(LoadedComponent { name, contract, stats, content_hash, component })
    }

    /// Loads a tier policy.
    pub fn load_tier(&self, source: &PluginSource) -> Result<TierPlugin, PluginError> {
        self.tier(self.load(source)?)
    }

    /// Loads a cluster gate.
    pub fn load_gate(&self, source: &PluginSource) -> Result<GatePlugin, PluginError> {
        self.gate(self.load(source)?)
    }

    /// Pre-instantiates a loaded tier-policy component.
    pub fn tier(&self, loaded: LoadedComponent) -> Result<TierPlugin, PluginError> {
        TierPlugin::new(self, loaded)
    }

    /// Pre-instantiates a loaded cluster-gate component.
    pub fn gate(&self, loaded: LoadedComponent) -> Result<GatePlugin, PluginError> {
        GatePlugin::new(self, loaded)
    }

    fn instantiate_pre(&self, loaded: &LoadedComponent) -> Result<wasmtime::component::InstancePre<PluginState>, PluginError> {
        self.linker
            .instantiate_pre(&loaded.component)
            .map_err(|e| PluginError::Incompatible { plugin: loaded.name.to_string(), reason: format!("cannot be linked: {e:#}") })
    }
}

fn wrong_world(loaded: &LoadedComponent, expected: World) -> PluginError {
    PluginError::Incompatible {
        plugin: loaded.name.to_string(),
        reason: format!("is a {} component, but a {expected} component is needed here", loaded.contract.world),
    }
}
