//! Fault injection at the object-store layer, for the randomized tests: a
//! wrapper that makes a request fail before it reaches the store, or reach
//! it and then report an error (a lost answer), chosen by a seed.
//!
//! `COMPACTOR_STORE_FAULTS="seed=7,rate=0.05"` wraps every store this
//! process opens — the engine's and each job's, since jobs inherit the
//! environment. Each process mixes its id into the seed, so that the engine
//! and its jobs do not fail in lockstep; the seed still picks the sequence.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    Result,
};

/// The environment variable that turns fault injection on.
pub const FAULTS_ENV: &str = "COMPACTOR_STORE_FAULTS";

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Fails without reaching the store.
    Before,
    /// Reaches the store, then reports an error.
    After,
}

/// A store whose requests fail at `rate`, by a seeded sequence.
#[derive(Debug)]
pub(crate) struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    seed: u64,
    rate: f64,
    counter: AtomicU64,
}

impl FaultyStore {
    /// Wraps `inner` when `COMPACTOR_STORE_FAULTS` asks for it.
    pub(crate) fn from_env(inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        let Ok(spec) = std::env::var(FAULTS_ENV) else { return inner };
        let mut seed = 0;
        let mut rate = 0.0;
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("seed", value)) => seed = value.trim().parse().unwrap_or(0),
                Some(("rate", value)) => rate = value.trim().parse().unwrap_or(0.0),
                _ => {}
            }
        }
        if rate <= 0.0 {
            return inner;
        }
        tracing::warn!(seed, rate, "injecting object-store faults ({FAULTS_ENV})");
        let seed = seed ^ (u64::from(std::process::id()) << 32);
        Arc::new(Self { inner, seed, rate, counter: AtomicU64::new(0) })
    }

    /// The next fault: SplitMix64 over (seed, request number).
    fn next(&self, can_land: bool) -> Fault {
        let mut z = self.seed.wrapping_add(self.counter.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let draw = (z >> 11) as f64 / (1u64 << 53) as f64;
        if draw >= self.rate {
            Fault::None
        } else if can_land && draw < self.rate / 2.0 {
            Fault::After
        } else {
            Fault::Before
        }
    }

    fn error(what: &str, location: &Path) -> object_store::Error {
        object_store::Error::Generic { store: "faults", source: format!("injected fault: {what} {location}").into() }
    }
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        match self.next(true) {
            Fault::Before => Err(Self::error("put failed", location)),
            Fault::After => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(Self::error("put landed, answer lost", location))
            }
            Fault::None => self.inner.put_opts(location, payload, opts).await,
        }
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        match self.next(false) {
            Fault::None => self.inner.put_multipart_opts(location, opts).await,
            _ => Err(Self::error("multipart upload failed", location)),
        }
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        match self.next(false) {
            Fault::None => self.inner.get_opts(location, options).await,
            _ => Err(Self::error("get failed", location)),
        }
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        match self.next(true) {
            Fault::Before => Err(Self::error("delete failed", location)),
            Fault::After => {
                self.inner.delete(location).await?;
                Err(Self::error("delete landed, answer lost", location))
            }
            Fault::None => self.inner.delete(location).await,
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.next(false) {
            Fault::None => self.inner.list(prefix),
            _ => {
                let location = prefix.cloned().unwrap_or_default();
                futures::stream::once(async move { Err(Self::error("list failed", &location)) }).boxed()
            }
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        match self.next(false) {
            Fault::None => self.inner.list_with_delimiter(prefix).await,
            _ => Err(Self::error("list failed", &prefix.cloned().unwrap_or_default())),
        }
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        match self.next(false) {
            Fault::None => self.inner.copy(from, to).await,
            _ => Err(Self::error("copy failed", to)),
        }
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        match self.next(false) {
            Fault::None => self.inner.copy_if_not_exists(from, to).await,
            _ => Err(Self::error("copy failed", to)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_and_both_kinds_show_up() {
        let store = FaultyStore { inner: Arc::new(object_store::memory::InMemory::new()), seed: 7, rate: 0.2, counter: AtomicU64::new(0) };
        let faults: Vec<Fault> = (0..10_000).map(|_| store.next(true)).collect();
        let failed = faults.iter().filter(|f| **f != Fault::None).count();
        assert!((1_700..2_300).contains(&failed), "{failed}");
        assert!(faults.contains(&Fault::After) && faults.contains(&Fault::Before));
    }
}
