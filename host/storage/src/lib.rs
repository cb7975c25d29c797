//! Object storage access through the `object_store` crate: opening a store
//! from its URL, listing, reading and writing objects, with errors that name
//! the key that failed.

mod azure;
mod counting;
pub mod faults;
pub mod lease;
mod local;
mod names;
mod raw;
mod s3;
mod transfer;
mod uploads;

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

pub use azure::AzureConfig;
pub use compactor_model::SetAside;
pub use compactor_model::{FileMeta, is_eligible_input};
pub use counting::{CountingStore, RequestCost, RequestCounts};
pub use names::object_path;
use names::{is_hidden, raw_key_problem, unnamable};
pub use s3::S3Config;
pub use transfer::EarlyWriteback;
pub use uploads::TrackedUploads;

/// Root of Arc's recovery manifests; never a database.
pub const COMPACTION_STATE_ROOT: &str = "_compaction_state";

/// A storage error, naming the URL or key involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The store could not be opened.
    #[error("cannot open storage {url}: {message}")]
    Open {
        /// The configured URL.
        url: String,
        /// Why.
        message: String,
    },
    /// A listing failed.
    #[error("cannot list {prefix:?} in {store}: {source}")]
    List {
        /// The store's description.
        store: String,
        /// The listed prefix.
        prefix: String,
        /// The cause (boxed: `object_store::Error` is large, and every
        /// `Result` of this crate carries it).
        source: Box<object_store::Error>,
    },
    /// A listing of the engine's own state found an object that cannot be
    /// named.
    #[error("cannot list {key:?} in {store}: {reason}")]
    Unnamable {
        /// The store's description.
        store: String,
        /// The key, as the store spells it.
        key: String,
        /// Why it cannot be named.
        reason: String,
    },
    /// An object operation failed.
    #[error("cannot {operation} {key:?} in {store}: {source}")]
    Object {
        /// `read`, `write`, `delete`, `stat`.
        operation: &'static str,
        /// The store's description.
        store: String,
        /// The key.
        key: String,
        /// The cause (boxed: `object_store::Error` is large, and every
        /// `Result` of this crate carries it).
        source: Box<object_store::Error>,
    },
}

/// One level of a listing ([`Storage::list_level`]).
#[derive(Debug, Clone, Default)]
pub struct Level {
    /// Keys of the objects directly under the prefix.
    pub objects: Vec<String>,
    /// Names of the sub-directories.
    pub dirs: Vec<String>,
    /// Entries of the level that `object_store` cannot name.
    pub set_aside: Vec<SetAside>,
}

/// A recursive listing ([`Storage::list_objects`]).
#[derive(Debug, Clone, Default)]
pub struct Listed {
    /// The objects, except hidden ones.
    pub files: Vec<FileMeta>,
    /// Objects `object_store` cannot name, left where they are.
    pub set_aside: Vec<SetAside>,
}

/// How a job process opens the same store again. It never holds secrets:
/// those travel in the job's environment ([`Storage::child_env`]). At the
/// job's JSON edge it is Arc's `storage_type` and `storage_config` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreDescriptor {
    /// A local directory.
    Local {
        /// Its canonical path.
        base_path: PathBuf,
    },
    /// An S3 bucket: Arc's S3 fields and the other non-secret options.
    S3(S3Config),
    /// An Azure Blob Storage container: Arc's Azure fields, the prefix and
    /// the other non-secret options.
    Azure(AzureConfig),
}

impl StoreDescriptor {
    /// Arc's `storage_type`.
    pub fn storage_type(&self) -> &'static str {
        match self {
            Self::Local { .. } => "local",
            Self::S3(_) => "s3",
            Self::Azure(_) => "azure",
        }
    }

    /// Arc's `storage_config`: the settings as a JSON object.
    pub fn storage_config(&self) -> String {
        let json = match self {
            Self::Local { base_path } => serde_json::json!({ "base_path": base_path.display().to_string() }),
            Self::S3(config) => serde_json::to_value(config).unwrap_or_default(),
            Self::Azure(config) => serde_json::to_value(config).unwrap_or_default(),
        };
        json.to_string()
    }

    /// Reads Arc's pair.
    pub fn from_arc(storage_type: &str, storage_config: &str) -> Result<Self, StorageError> {
        let open_error = |message: String| StorageError::Open { url: format!("{storage_type} {storage_config}"), message };
        let invalid = |e: serde_json::Error| open_error(format!("invalid storage config: {e}"));
        match storage_type {
            "local" => {
                #[derive(serde::Deserialize)]
                struct Local {
                    base_path: PathBuf,
                }
                let local: Local = serde_json::from_str(storage_config).map_err(invalid)?;
                Ok(Self::Local { base_path: local.base_path })
            }
            "s3" => Ok(Self::S3(serde_json::from_str(storage_config).map_err(invalid)?)),
            "azure" => Ok(Self::Azure(serde_json::from_str(storage_config).map_err(invalid)?)),
            other => Err(open_error(format!("unsupported storage type: {other}"))),
        }
    }
}

/// A lake's object store.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    description: String,
    descriptor: Option<StoreDescriptor>,
    /// Credentials a job process needs, passed in its environment (never in
    /// its JSON config, logs or manifests).
    child_env: Vec<(String, String)>,
    /// Multipart uploads with known ids, where the store has them (S3).
    uploads: Option<TrackedUploads>,
    /// Lists what `object_store` cannot (S3, Azure: a page with a key it
    /// refuses to name fails whole); see [`raw::RawLister`].
    raw_lister: Option<Arc<dyn raw::RawLister>>,
    /// Objects written once and never changed, read once
    /// ([`Storage::read_immutable`]).
    immutable: Arc<std::sync::Mutex<std::collections::HashMap<String, Bytes>>>,
    /// How long a write may still land after its process is gone; see
    /// [`Storage::late_write_window`].
    late_writes: Option<std::time::Duration>,
}

/// object_store's default request timeout, used when `[storage.options]`
/// sets none.
const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The request timeout `options` give a remote store (`timeout`, a humantime
/// string), or object_store's default.
fn request_timeout(options: &BTreeMap<String, String>) -> std::time::Duration {
    options.get("timeout").and_then(|t| humantime::parse_duration(t).ok()).unwrap_or(DEFAULT_REQUEST_TIMEOUT)
}

/// Retry options, read by the engine (object_store has no string keys for
/// them): `max_retries` (default 10) and `retry_timeout` (e.g. `"3m"`).
pub(crate) const RETRY_OPTIONS: &[&str] = &["max_retries", "retry_timeout"];

pub(crate) fn retry_config(options: &BTreeMap<String, String>) -> anyhow::Result<object_store::RetryConfig> {
    let mut retry = object_store::RetryConfig::default();
    if let Some(n) = options.get("max_retries") {
        retry.max_retries = n.parse().map_err(|_| anyhow::anyhow!("storage option max_retries: expected a number, got {n:?}"))?;
    }
    if let Some(t) = options.get("retry_timeout") {
        retry.retry_timeout =
            humantime::parse_duration(t).map_err(|e| anyhow::anyhow!("storage option retry_timeout: {e} (e.g. \"30s\")"))?;
    }
    Ok(retry)
}

/// The store under `prefix`, with faults injected when the tests ask for them.
pub(crate) fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    let store = if prefix.is_empty() { store } else { Arc::new(PrefixStore::new(store, prefix)) };
    faults::FaultyStore::from_env(store)
}

impl StorageError {
    /// The object-store error behind this one, if any.
    pub fn object_store_error(&self) -> Option<&object_store::Error> {
        match self {
            Self::List { source, .. } | Self::Object { source, .. } => Some(source),
            Self::Open { .. } | Self::Unnamable { .. } => None,
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl Storage {
    /// Opens the store at `url` (`file://`, `memory://`, `s3://`, `az://`
    /// and Azure's other schemes, or a plain local path resolved against
    /// `base_dir`), passing `options` to the `object_store` builder.
    pub fn open(url: &str, options: &BTreeMap<String, String>, base_dir: &FsPath) -> Result<Self, StorageError> {
        let open_error = |message: String| StorageError::Open { url: url.to_owned(), message };
        if !url.contains("://") {
            return Self::local(&base_dir.join(url)).map_err(|e| open_error(e.to_string()));
        }
        let parsed = url::Url::parse(url).map_err(|e| open_error(e.to_string()))?;
        if parsed.scheme() == "file" {
            let path = parsed.to_file_path().map_err(|()| open_error("not a local path".into()))?;
            return Self::local(&path).map_err(|e| open_error(e.to_string()));
        }
        if parsed.scheme() == "memory" {
            return Ok(Self::in_memory());
        }
        if parsed.scheme() == "s3" || parsed.scheme() == "s3a" {
            return s3::open(&parsed, options).map_err(|e| open_error(e.to_string()));
        }
        if matches!(parsed.scheme(), "az" | "azure" | "adl" | "abfs" | "abfss") {
            return azure::open(&parsed, options).map_err(|e| open_error(e.to_string()));
        }
        let (store, prefix) = object_store::parse_url_opts(&parsed, options.iter()).map_err(|e| open_error(e.to_string()))?;
        let store: Arc<dyn ObjectStore> =
            if prefix.as_ref().is_empty() { Arc::from(store) } else { Arc::new(PrefixStore::new(store, prefix)) };
        Ok(Self {
            store: faults::FaultyStore::from_env(store),
            description: redact_url(&parsed),
            descriptor: None,
            child_env: Vec::new(),
            uploads: None,
            raw_lister: None,
            immutable: Default::default(),
            late_writes: Some(request_timeout(options)),
        })
    }

    /// A local directory, which must exist. Directories emptied by deletes
    /// are removed.
    pub fn local(root: &FsPath) -> Result<Self, StorageError> {
        let store = local::LocalStore::new(root)
            .map_err(|e| StorageError::Open { url: root.display().to_string(), message: format!("{e} (does the directory exist?)") })?;
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
        Ok(Self {
            store: faults::FaultyStore::from_env(Arc::new(store)),
            description: format!("file://{}", root.display()),
            descriptor: Some(StoreDescriptor::Local { base_path: root }),
            child_env: Vec::new(),
            uploads: None,
            raw_lister: None,
            immutable: Default::default(),
            late_writes: None,
        })
    }

    /// Opens the store `descriptor` describes, in a job process.
    pub fn from_descriptor(descriptor: &StoreDescriptor) -> Result<Self, StorageError> {
        match descriptor {
            StoreDescriptor::Local { base_path } => Self::local(base_path),
            StoreDescriptor::S3(config) => s3::from_config(config)
                .map_err(|e| StorageError::Open { url: format!("s3://{}/{}", config.bucket, config.prefix), message: e.to_string() }),
            StoreDescriptor::Azure(config) => {
                azure::from_config(config).map_err(|e| StorageError::Open { url: config.url(), message: e.to_string() })
            }
        }
    }

    /// How a child process rebuilds this store; `None` for stores other
    /// processes cannot see (in-memory).
    pub fn descriptor(&self) -> Option<&StoreDescriptor> {
        self.descriptor.as_ref()
    }

    /// Environment variables a job process needs to reach this store
    /// (credentials given in the config); empty when it inherits them.
    pub fn child_env(&self) -> &[(String, String)] {
        &self.child_env
    }

    /// A fresh, empty in-memory store (for tests and benchmarks).
    pub fn in_memory() -> Self {
        Self::from_store(Arc::new(InMemory::new()), "memory://")
    }

    /// Wraps any `object_store` implementation.
    pub fn from_store(store: Arc<dyn ObjectStore>, description: impl Into<String>) -> Self {
        Self {
            store,
            description: description.into(),
            descriptor: None,
            child_env: Vec::new(),
            uploads: None,
            raw_lister: None,
            immutable: Default::default(),
            late_writes: None,
        }
    }

    /// The same store, taken to let a write land up to `window` after its
    /// process is gone (for tests of what a remote store does with an
    /// in-memory one).
    #[cfg(test)]
    pub(crate) fn with_late_writes(self, window: std::time::Duration) -> Self {
        Self { late_writes: Some(window), ..self }
    }

    /// How long after it was sent a write may still land in the store when
    /// the process that sent it is gone: a remote store completes a request
    /// whose body it received, within the request timeout as far as the
    /// ownership model assumes. `None` where a write cannot outlive its
    /// process: on local disk a write is a system call, over once the
    /// process is (and then visible to every process of the host).
    pub fn late_write_window(&self) -> Option<std::time::Duration> {
        self.late_writes
    }

    /// The same store, counting every request it makes from now on.
    pub fn counted(&self) -> (Storage, Arc<RequestCounts>) {
        let counts = Arc::new(RequestCounts::default());
        let store = Arc::new(CountingStore::new(self.store.clone(), counts.clone()));
        (Storage { store, ..self.clone() }, counts)
    }

    /// Multipart uploads whose ids the job can record, so that recovery can
    /// abort a dead job's upload; `None` where the store keeps no parts
    /// (local disk stages them next to the target, see
    /// [`Storage::discard_staged_uploads`]).
    pub fn tracked_uploads(&self) -> Option<&TrackedUploads> {
        self.uploads.as_ref()
    }

    /// The underlying store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Every object under `prefix` (recursively; `""` is the whole store),
    /// except names starting with `.`. A missing prefix is an empty listing.
    /// Fails when the store holds an object under `prefix` that
    /// `object_store` cannot name: for the engine's own state, where
    /// skipping an object could hide a manifest. Data listings use
    /// [`Storage::list_objects`].
    pub async fn list(&self, prefix: &str) -> Result<Vec<FileMeta>, StorageError> {
        let listed = self.list_objects(prefix).await?;
        match listed.set_aside.into_iter().next() {
            Some(SetAside { key, reason }) => Err(StorageError::Unnamable { store: self.description.clone(), key, reason }),
            None => Ok(listed.files),
        }
    }

    /// Every object under `prefix`, like [`Storage::list`], where the ones
    /// `object_store` cannot name are set aside (by name, with the reason)
    /// instead of failing the listing: one such object must not stop the
    /// rest of its measurement.
    pub async fn list_objects(&self, prefix: &str) -> Result<Listed, StorageError> {
        let location = (!prefix.is_empty()).then(|| object_path(prefix.trim_end_matches('/')));
        let list_error = |source: object_store::Error| StorageError::List {
            store: self.description.clone(),
            prefix: prefix.to_owned(),
            source: Box::new(source),
        };
        let mut stream = self.store.list(location.as_ref());
        let mut listed = Listed::default();
        while let Some(item) = stream.next().await {
            match item {
                Ok(object) => {
                    listed.files.push(FileMeta { key: object.location.to_string(), size: object.size, last_modified: object.last_modified })
                }
                // The listing stops at the first key it cannot name (on S3
                // the whole page fails); list again, by exact names.
                Err(object_store::Error::InvalidPath { source }) => {
                    drop(stream);
                    listed = match self.list_raw(prefix, false).await? {
                        Some((listed, _)) => listed,
                        None => Listed { files: Vec::new(), set_aside: vec![unnamable(&source)] },
                    };
                    break;
                }
                Err(e) => return Err(list_error(e)),
            }
        }
        listed.files.retain(|f| !is_hidden(&f.key));
        listed.set_aside.retain(|s| !is_hidden(&s.key));
        self.without_symlinks(&mut listed);
        Ok(listed)
    }

    /// A listing by exact names, for where `object_store` stops at a key it
    /// cannot name: S3 and Azure through their [`raw::RawLister`], local disk by walking the
    /// directories. The objects and sub-directories (with `delimiter`: one
    /// level) `object_store` can name, and the others set aside; `None` for
    /// a store that cannot be listed that way.
    async fn list_raw(&self, prefix: &str, delimiter: bool) -> Result<Option<(Listed, Vec<String>)>, StorageError> {
        let (objects, dirs, set_aside) = if let Some(raw) = &self.raw_lister {
            let raw = raw.list(prefix, delimiter).await.map_err(|e| StorageError::List {
                store: self.description.clone(),
                prefix: prefix.to_owned(),
                source: Box::new(object_store::Error::Generic { store: raw.store_name(), source: e.into() }),
            })?;
            let objects = raw.objects.into_iter().map(|o| FileMeta { key: o.key, size: o.size, last_modified: o.last_modified }).collect();
            (objects, raw.dirs, Vec::new())
        } else if let Some(root) = self.local_root() {
            let prefix = prefix.to_owned();
            tokio::task::spawn_blocking(move || local::walk(&root, &prefix, delimiter)).await.map_err(|e| StorageError::List {
                store: self.description.clone(),
                prefix: String::new(),
                source: Box::new(object_store::Error::Generic { store: "LocalFileSystem", source: e.into() }),
            })?
        } else {
            return Ok(None);
        };
        let mut listed = Listed { files: Vec::new(), set_aside };
        for object in objects {
            match raw_key_problem(&object.key) {
                None => listed.files.push(object),
                Some(set_aside) => listed.set_aside.push(set_aside),
            }
        }
        let mut names = Vec::new();
        for dir in dirs {
            let name = dir.strip_prefix(prefix).unwrap_or(&dir).trim_end_matches('/');
            match raw_key_problem(&format!("{prefix}{name}")) {
                None if !name.is_empty() && !name.contains('/') => names.push(name.to_owned()),
                _ => listed.set_aside.push(SetAside { key: dir.clone(), reason: "a directory object stores cannot name".to_owned() }),
            }
        }
        Ok(Some((listed, names)))
    }

    /// On local disk, sets aside files reached through a symbolic link (a
    /// linked file, or one under a linked directory): the local store
    /// follows links, so a link inside the lake would make one file appear
    /// under two keys — and two partitions, two leases — and its rows be
    /// merged twice.
    fn without_symlinks(&self, listed: &mut Listed) {
        let Some(root) = self.local_root() else { return };
        let mut real_dirs: std::collections::HashMap<std::path::PathBuf, bool> = std::collections::HashMap::new();
        let mut linked = Vec::new();
        listed.files.retain(|file| {
            let path = root.join(&file.key);
            let Some(dir) = path.parent() else { return false };
            // A file deleted since the listing (another job's input) is
            // dropped without a word: it is gone, not linked.
            let Ok(metadata) = std::fs::symlink_metadata(&path) else { return false };
            let real_dir = *real_dirs.entry(dir.to_owned()).or_insert_with(|| std::fs::canonicalize(dir).is_ok_and(|c| c == dir));
            let keep = real_dir && !metadata.file_type().is_symlink();
            if !keep {
                linked.push(SetAside { key: file.key.clone(), reason: "reached through a symbolic link in the lake".to_owned() });
            }
            keep
        });
        listed.set_aside.extend(linked);
    }

    /// One level under `prefix`: the keys of its objects and the names of its
    /// sub-directories, each sorted, except names starting with `.`. Entries
    /// `object_store` cannot name are left out of both and listed in
    /// [`Level::set_aside`].
    pub async fn list_level(&self, prefix: &str) -> Result<Level, StorageError> {
        let location = (!prefix.is_empty()).then(|| object_path(prefix.trim_end_matches('/')));
        let (mut dirs, mut objects, mut set_aside) = match self.store.list_with_delimiter(location.as_ref()).await {
            Ok(listing) => (
                listing.common_prefixes.iter().filter_map(|p| p.filename()).map(str::to_owned).collect::<Vec<_>>(),
                listing.objects.iter().map(|o| o.location.to_string()).collect::<Vec<_>>(),
                Vec::new(),
            ),
            // The level holds an entry object_store cannot name, and its
            // listing fails whole: list it again, by exact names.
            Err(object_store::Error::InvalidPath { source }) => match self.list_raw(prefix, true).await? {
                Some((listed, dirs)) => (dirs, listed.files.into_iter().map(|f| f.key).collect(), listed.set_aside),
                None => (Vec::new(), Vec::new(), vec![unnamable(&source)]),
            },
            Err(source) => {
                return Err(StorageError::List { store: self.description.clone(), prefix: prefix.to_owned(), source: Box::new(source) });
            }
        };
        let visible = |name: &str| !name.is_empty() && !name.starts_with('.');
        dirs.retain(|d| visible(d));
        objects.retain(|key| visible(key.rsplit('/').next().unwrap_or(key)));
        set_aside.retain(|s| !is_hidden(&s.key));
        dirs.sort();
        objects.sort();
        Ok(Level { objects, dirs, set_aside })
    }

    /// Removes what an interrupted multipart upload of `key` left behind.
    /// The local store stages parts in `{key}#{n}` files next to the target;
    /// other stores keep incomplete uploads invisible (S3 lifecycle rules
    /// expire them), so there is nothing to do.
    pub fn discard_staged_uploads(&self, key: &str) {
        let Some(root) = self.local_root() else { return };
        let target = root.join(key);
        let (Some(dir), Some(name)) = (target.parent(), target.file_name().and_then(|n| n.to_str())) else { return };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let staged = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(name))
                .and_then(|rest| rest.strip_prefix('#'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if staged && let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a staged upload");
            }
        }
    }

    /// On local disk, removes the staging files (`{name}#{n}`) that writes of
    /// dead processes left under `prefix`, once older than `settled`: the
    /// local store writes each object to such a file and then links it into
    /// place, so a process killed in between leaves one behind. A live
    /// writer's staging file lives for milliseconds; removing one only fails
    /// that write. Returns how many were removed.
    pub fn remove_stale_staging(&self, prefix: &str, settled: std::time::Duration) -> usize {
        let Some(root) = self.local_root() else { return 0 };
        let Some(cutoff) = std::time::SystemTime::now().checked_sub(settled) else { return 0 };
        let mut removed = 0;
        let mut dirs = vec![root.join(prefix)];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else { continue };
                if kind.is_dir() {
                    dirs.push(entry.path());
                    continue;
                }
                let staged = entry.file_name().to_str().is_some_and(local::is_staging);
                // Only a staging file's age is read: the walk passes every
                // lease object of the lake.
                let old = || entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
                if staged && old() && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// The file behind `key` when this is a local store.
    pub(crate) fn local_path(&self, key: &str) -> Option<std::path::PathBuf> {
        self.local_root().map(|root| root.join(key))
    }

    /// Makes `key` durable when this is a local store and the file was put
    /// there outside the store (a linked output, the parts of a multipart
    /// upload); the store's own puts are durable already. Other stores
    /// acknowledge a write only once it is durable.
    pub fn sync(&self, key: &str) -> Result<(), StorageError> {
        let Some(path) = self.local_path(key) else { return Ok(()) };
        local::sync_file_and_dir(&path)
            .map_err(|e| self.object_error("sync", key, object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(e) }))
    }

    /// The root directory when this is a local store.
    pub fn local_root(&self) -> Option<std::path::PathBuf> {
        match &self.descriptor {
            Some(StoreDescriptor::Local { base_path }) => Some(base_path.clone()),
            _ => None,
        }
    }

    /// The whole content of `key`.
    pub async fn read(&self, key: &str) -> Result<Bytes, StorageError> {
        let result = self.store.get(&object_path(key)).await.map_err(|e| self.object_error("read", key, e))?;
        result.bytes().await.map_err(|e| self.object_error("read", key, e))
    }

    /// The content of `key`, an object that is created once and never
    /// changed (a job's outcome): read from the store the first time only,
    /// so that what a recovery or a plan looks at every cycle costs no
    /// request once known.
    pub async fn read_immutable(&self, key: &str) -> Result<Bytes, StorageError> {
        if let Some(bytes) = self.immutable.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(bytes.clone());
        }
        let bytes = self.read(key).await?;
        self.immutable.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_owned(), bytes.clone());
        Ok(bytes)
    }

    /// Forgets the objects under `prefix` read by
    /// [`Storage::read_immutable`] for which `listed` is false (deleted).
    pub fn forget_immutable(&self, prefix: &str, listed: impl Fn(&str) -> bool) {
        self.immutable.lock().unwrap_or_else(|e| e.into_inner()).retain(|key, _| !key.starts_with(prefix) || listed(key));
    }

    /// Writes `bytes` to `key`, replacing any previous object.
    pub async fn write(&self, key: &str, bytes: impl Into<PutPayload>) -> Result<(), StorageError> {
        self.store.put(&object_path(key), bytes.into()).await.map_err(|e| self.object_error("write", key, e))?;
        Ok(())
    }

    /// The content of `key` and its version, or `None` when it does not
    /// exist.
    pub async fn read_versioned(&self, key: &str) -> Result<Option<(Bytes, UpdateVersion)>, StorageError> {
        let result = match self.store.get(&object_path(key)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.object_error("read", key, e)),
        };
        let version = UpdateVersion { e_tag: result.meta.e_tag.clone(), version: result.meta.version.clone() };
        let bytes = result.bytes().await.map_err(|e| self.object_error("read", key, e))?;
        Ok(Some((bytes, version)))
    }

    /// Compare-and-swap: writes `bytes` to `key` only if the object is still
    /// at `expected` (`None`: only if it does not exist). `Ok(false)` when
    /// another writer came first.
    pub async fn swap(&self, key: &str, expected: Option<UpdateVersion>, bytes: impl Into<PutPayload>) -> Result<bool, StorageError> {
        let mode = match expected {
            Some(version) => PutMode::Update(version),
            None => PutMode::Create,
        };
        match self.store.put_opts(&object_path(key), bytes.into(), PutOptions::from(mode)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.object_error("write", key, e)),
        }
    }

    /// Deletes `key`; a missing object is success.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&object_path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.object_error("delete", key, e)),
        }
    }

    /// The size of `key`, or `None` when it does not exist.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self.store.head(&object_path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.object_error("stat", key, e)),
        }
    }

    /// The error of `operation` on `key` in this store, for callers that
    /// reach the store another way (a multipart API, a parse of what was read).
    pub fn object_error(&self, operation: &'static str, key: &str, source: object_store::Error) -> StorageError {
        StorageError::Object { operation, store: self.description.clone(), key: key.to_owned(), source: Box::new(source) }
    }
}

/// The URL without credentials or query, safe to log.
fn redact_url(url: &url::Url) -> String {
    let mut safe = url.clone();
    let _ = safe.set_password(None);
    let _ = safe.set_username("");
    safe.set_query(None);
    safe.to_string()
}

/// Databases of the lake: top-level directories, except hidden ones,
/// `compaction` and `_compaction_state` (Arc's reserved names); top-level
/// entries that cannot be named are in [`Level::set_aside`].
pub async fn discover_databases(storage: &Storage) -> Result<Level, StorageError> {
    let mut level = storage.list_level("").await?;
    level.dirs.retain(|n| n != "compaction" && n != COMPACTION_STATE_ROOT);
    Ok(level)
}

/// Measurements of `database`: its immediate sub-directories.
pub async fn discover_measurements(storage: &Storage, database: &str) -> Result<Level, StorageError> {
    storage.list_level(&format!("{database}/")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store_with(keys: &[&str]) -> Storage {
        let storage = Storage::in_memory();
        for key in keys {
            storage.write(key, Bytes::from_static(b"x")).await.unwrap();
        }
        storage
    }

    #[tokio::test]
    async fn databases_skip_hidden_and_reserved_names() {
        let storage = store_with(&[
            "db1/cpu/2025/01/01/00/file1.parquet",
            "db1/mem/2025/01/01/00/file1.parquet",
            "db2/disk/2025/01/01/00/file1.parquet",
            ".hidden/table/2025/01/01/00/file1.parquet",
            "_compaction_state/hourly/db1/x.json",
            "compaction/x/y",
        ])
        .await;
        assert_eq!(discover_databases(&storage).await.unwrap().dirs, ["db1", "db2"]);
        assert_eq!(discover_measurements(&storage, "db1").await.unwrap().dirs, ["cpu", "mem"]);
    }

    #[tokio::test]
    async fn pseudo_database_measurements_are_relative() {
        let storage = store_with(&["rocket-01/factory/temps/2026/08/19/10/a.parquet"]).await;
        assert_eq!(discover_measurements(&storage, "rocket-01/factory").await.unwrap().dirs, ["temps"]);
    }

    #[tokio::test]
    async fn listing_hides_dot_names_and_missing_prefix_is_empty() {
        let storage = store_with(&["db/cpu/2025/01/01/00/.tmp.parquet", "db/cpu/2025/01/01/00/a.parquet"]).await;
        let keys: Vec<String> = storage.list("db/cpu/").await.unwrap().into_iter().map(|f| f.key).collect();
        assert_eq!(keys, ["db/cpu/2025/01/01/00/a.parquet"]);
        assert!(storage.list("nope/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn files_reached_through_symlinks_are_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let hour = dir.path().join("db/cpu/2026/04/11/10");
        std::fs::create_dir_all(&hour).unwrap();
        std::fs::write(hour.join("a.parquet"), "x").unwrap();
        std::os::unix::fs::symlink(&hour, dir.path().join("db/cpu/2026/04/11/alias")).unwrap();
        std::os::unix::fs::symlink(hour.join("a.parquet"), hour.join("b.parquet")).unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        let listed = storage.list_objects("db/").await.unwrap();
        let keys: Vec<String> = listed.files.into_iter().map(|f| f.key).collect();
        assert_eq!(keys, ["db/cpu/2026/04/11/10/a.parquet"]);
        let mut aside: Vec<String> = listed.set_aside.into_iter().map(|s| s.key).collect();
        aside.sort();
        let expected = ["db/cpu/2026/04/11/10/b.parquet", "db/cpu/2026/04/11/alias/a.parquet", "db/cpu/2026/04/11/alias/b.parquet"];
        assert_eq!(aside, expected, "and named");
    }

    #[test]
    fn only_settled_staging_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("_compaction_state/hourly/db");
        std::fs::create_dir_all(&state).unwrap();
        for name in ["m.json#1", "m.json", "notes#draft"] {
            std::fs::write(state.join(name), "x").unwrap();
        }
        let storage = Storage::local(dir.path()).unwrap();
        assert_eq!(storage.remove_stale_staging("_compaction_state", std::time::Duration::from_secs(60)), 0, "too fresh");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(storage.remove_stale_staging("_compaction_state", std::time::Duration::from_millis(10)), 1);
        assert!(!state.join("m.json#1").exists() && state.join("m.json").exists() && state.join("notes#draft").exists());
    }

    #[test]
    fn credentials_are_redacted() {
        let url = url::Url::parse("s3://key:secret@bucket/prefix?token=x").unwrap();
        assert_eq!(redact_url(&url), "s3://bucket/prefix");
    }
}
