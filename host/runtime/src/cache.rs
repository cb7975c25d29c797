//! The on-disk cache of compiled components. An artifact is keyed by the
//! SHA-256 of the component bytes and the engine's compatibility hash, and
//! only artifacts this cache wrote are ever loaded: deserialising native code
//! is only safe for trusted input.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LoadStats {
    /// Whether a cached artifact was used.
    pub cache_hit: bool,
    /// Time to compile (zero on a cache hit).
    #[serde(with = "millis")]
    pub compile_time: Duration,
    /// Total time to obtain the loaded component.
    #[serde(with = "millis")]
    pub load_time: Duration,
}

mod millis {
    pub(super) fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: Option<PathBuf>,
}

impl ArtifactCache {
    /// `$XDG_CACHE_HOME/compactor/components`, else
    /// `~/.cache/compactor/components`, else a directory under the system
    /// temp dir.
    pub fn default_dir() -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("compactor").join("components")
    }

    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: Some(dir.into()) }
    }

    /// No caching: every load compiles.
    pub fn disabled() -> Self {
        Self { dir: None }
    }

    fn artifact_path(&self, engine: &Engine, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let digest = Sha256::digest(bytes);
        Some(dir.join(format!("{}-{:016x}.cwasm", hex::encode(digest), hasher.finish())))
    }

    /// The compiled form of `bytes`: from the cache when present, otherwise
    /// compiled and stored (a cache that cannot be written is only logged).
    pub fn load(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<(Component, LoadStats)> {
        let started = Instant::now();
        let path = self.artifact_path(engine, bytes);
        if let Some(path) = path.as_deref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `store` below from
            // `Engine::precompile_component` output, under a name that binds
            // it to these exact component bytes and this engine's settings.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(component) => {
                    let stats = LoadStats { cache_hit: true, compile_time: Duration::ZERO, load_time: started.elapsed() };
                    return Ok((component, stats));
                }
                Err(e) => tracing::warn!(artifact = %path.display(), error = %e, "ignoring unusable cached artifact"),
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        let compile_time = started.elapsed();
        if let Some(path) = &path
            && let Err(e) = store(path, &compiled)
        {
            tracing::warn!(artifact = %path.display(), error = %e, "cannot cache compiled component");
        }
        // SAFETY: `compiled` was produced just above by this engine.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, LoadStats { cache_hit: false, compile_time, load_time: started.elapsed() }))
    }
}

/// Writes atomically: a reader sees the whole artifact or none.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let staged = dir.join(format!(".{}.{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact"), std::process::id()));
    std::fs::write(&staged, bytes)?;
    std::fs::rename(&staged, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&staged);
    })
}
