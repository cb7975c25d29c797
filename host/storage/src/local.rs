//! Local disk: `object_store`'s `LocalFileSystem`, plus the one thing it
//! lacks and leases need — `PutMode::Update`, a compare-and-swap on the
//! object's ETag. The swap runs under an exclusive `flock` on a hidden
//! sidecar file next to the object, which every process on the host honours
//! (and NFSv4 forwards to the server), then writes a temporary file, syncs
//! it, renames it over the object and syncs the directory. Every other put
//! is synced too before it returns, as an object store acknowledges only
//! durable writes.

use std::fs::{File, Metadata};
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, Result, UpdateVersion,
};

const STORE: &str = "LocalFileSystem";

/// `LocalFileSystem` with `PutMode::Update`.
#[derive(Debug)]
pub(crate) struct LocalStore {
    inner: Arc<LocalFileSystem>,
    root: PathBuf,
}

impl LocalStore {
    /// The directory `root`, which must exist.
    pub(crate) fn new(root: &FsPath) -> Result<Self> {
        let inner = LocalFileSystem::new_with_prefix(root)?.with_automatic_cleanup(true);
        Ok(Self { inner: Arc::new(inner), root: std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned()) })
    }

    fn update(&self, location: &Path, payload: PutPayload, expected: UpdateVersion) -> Result<PutResult> {
        let path = self.root.join(location.as_ref());
        let generic = |source: std::io::Error| object_store::Error::Generic { store: STORE, source: Box::new(source) };
        let precondition = |why: String| object_store::Error::Precondition { path: location.to_string(), source: why.into() };
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
            return Err(precondition("not a file".into()));
        };
        let sidecar = File::options().create(true).truncate(false).write(true).open(dir.join(format!(".{name}.cas"))).map_err(generic)?;
        lock_within(&sidecar, LOCK_WAIT).map_err(generic)?;
        let current = match std::fs::metadata(&path) {
            Ok(metadata) => e_tag(&metadata),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(precondition("the object does not exist".into())),
            Err(e) => return Err(generic(e)),
        };
        if expected.e_tag.as_deref() != Some(current.as_str()) {
            return Err(precondition(format!("version {current} does not match {:?}", expected.e_tag)));
        }
        let staging = dir.join(format!(".{name}.cas-{}", std::process::id()));
        let written = (|| {
            let mut file = File::create(&staging)?;
            for chunk in payload.iter() {
                file.write_all(chunk)?;
            }
            file.sync_all()?;
            std::fs::rename(&staging, &path)?;
            sync_dir(dir)?;
            std::fs::metadata(&path)
        })();
        let metadata = written.inspect_err(|_| {
            let _ = std::fs::remove_file(&staging);
        });
        Ok(PutResult { e_tag: Some(e_tag(&metadata.map_err(generic)?)), version: None })
    }
}

/// The objects under `prefix` of the store at `root` (with `delimiter`,
/// one level, and the sub-directories as `{prefix}{name}/`), named exactly
/// as the file system names them, for a listing `object_store` cannot make
/// (it stops at the first name it refuses), and the entries whose name is
/// not UTF-8, set aside (shown percent-encoded).
/// Symbolic links are not followed; the staging files of the store's own
/// writes (`{name}#{n}`) are left out, as `object_store` leaves them out.
pub(crate) fn walk(
    root: &FsPath,
    prefix: &str,
    delimiter: bool,
) -> (Vec<compactor_model::FileMeta>, Vec<String>, Vec<compactor_model::SetAside>) {
    let (mut objects, mut dirs, mut set_aside) = (Vec::new(), Vec::new(), Vec::new());
    let mut pending = vec![prefix.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                let shown = percent_encoding::percent_encode(name.as_encoded_bytes(), percent_encoding::CONTROLS);
                let reason = "its name is not UTF-8 (shown percent-encoded)".to_owned();
                set_aside.push(compactor_model::SetAside { key: format!("{dir}{shown}"), reason });
                continue;
            };
            let key = format!("{dir}{name}");
            let Ok(metadata) = entry.path().symlink_metadata() else { continue };
            if metadata.is_dir() {
                if delimiter { dirs.push(format!("{key}/")) } else { pending.push(format!("{key}/")) }
            } else if metadata.is_file() && !is_staging(name) {
                let last_modified = metadata.modified().map(chrono::DateTime::<chrono::Utc>::from).unwrap_or_default();
                objects.push(compactor_model::FileMeta { key, size: metadata.len(), last_modified });
            }
        }
    }
    (objects, dirs, set_aside)
}

/// A staging file of the local store's writes: `{name}#{digits}`.
pub(crate) fn is_staging(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// How long a swap waits for another process's swap of the same object: a
/// swap holds the lock for microseconds, so a longer wait means its holder is
/// stopped (SIGSTOP, a frozen VM), and waiting on would stop this engine too.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes `file`'s exclusive lock, giving up after `wait`.
fn lock_within(file: &File, wait: std::time::Duration) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < wait => std::thread::sleep(std::time::Duration::from_millis(1)),
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "another process holds the object's swap lock"));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// `LocalFileSystem`'s ETag scheme, so that a version read by `get` or
/// `head` matches what `update` compares.
fn e_tag(metadata: &Metadata) -> String {
    let inode = std::os::unix::fs::MetadataExt::ino(metadata);
    let mtime = metadata.modified().ok().and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).unwrap_or_default().as_micros();
    format!("{inode:x}-{mtime:x}-{:x}", metadata.len())
}

/// Makes a directory entry (a new or renamed file in `dir`) durable.
fn sync_dir(dir: &FsPath) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes the file at `path` and its directory entry durable.
pub(crate) fn sync_file_and_dir(path: &FsPath) -> std::io::Result<()> {
    File::open(path)?.sync_all()?;
    path.parent().map_or(Ok(()), sync_dir)
}

impl std::fmt::Display for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        match opts.mode {
            PutMode::Update(expected) => {
                let (this, location) = (Self { inner: self.inner.clone(), root: self.root.clone() }, location.clone());
                tokio::task::spawn_blocking(move || this.update(&location, payload, expected))
                    .await
                    .map_err(|e| object_store::Error::Generic { store: STORE, source: Box::new(e) })?
            }
            _ => {
                // Durable before it is acknowledged, as on an object store:
                // a manifest or an outcome must survive a power loss before
                // any input is deleted.
                let result = self.inner.put_opts(location, payload, opts).await?;
                let path = self.root.join(location.as_ref());
                tokio::task::spawn_blocking(move || sync_file_and_dir(&path))
                    .await
                    .map_err(|e| object_store::Error::Generic { store: STORE, source: Box::new(e) })?
                    .map_err(|e| object_store::Error::Generic { store: STORE, source: Box::new(e) })?;
                Ok(result)
            }
        }
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.inner.delete(location).await
    }

    fn delete_stream<'a>(&'a self, locations: BoxStream<'a, Result<Path>>) -> BoxStream<'a, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn update_swaps_only_the_version_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path()).unwrap();
        let key = Path::from("a/lease");
        let created = store.put_opts(&key, "one".into(), PutMode::Create.into()).await.unwrap();
        let read = store.head(&key).await.unwrap();
        assert_eq!(read.e_tag, created.e_tag, "get and put agree on the version");
        let version = UpdateVersion { e_tag: read.e_tag, version: None };
        let swapped = store.put_opts(&key, "two".into(), PutMode::Update(version.clone()).into()).await.unwrap();
        let stale = store.put_opts(&key, "three".into(), PutMode::Update(version).into()).await;
        assert!(matches!(stale, Err(object_store::Error::Precondition { .. })), "{stale:?}");
        let current = UpdateVersion { e_tag: swapped.e_tag, version: None };
        store.put_opts(&key, "four".into(), PutMode::Update(current).into()).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap().bytes().await.unwrap(), "four");
        let missing =
            store.put_opts(&Path::from("a/none"), "x".into(), PutMode::Update(UpdateVersion { e_tag: None, version: None }).into()).await;
        assert!(matches!(missing, Err(object_store::Error::Precondition { .. })));
    }

    #[test]
    fn concurrent_swaps_from_one_version_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let store = Arc::new(LocalStore::new(dir.path()).unwrap());
        let key = Path::from("lease");
        let created = runtime.block_on(store.put_opts(&key, "0".into(), PutMode::Create.into())).unwrap();
        let version = UpdateVersion { e_tag: created.e_tag, version: None };
        let winners: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (store, key, version) = (store.clone(), key.clone(), version.clone());
                    scope.spawn(move || usize::from(store.update(&key, format!("{i}").into(), version).is_ok()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1);
    }

    #[test]
    fn a_stopped_swapper_delays_others_but_never_stops_them() {
        let dir = tempfile::tempdir().unwrap();
        let held = File::create(dir.path().join(".lease.cas")).unwrap();
        held.lock().unwrap();
        let other = File::open(dir.path().join(".lease.cas")).unwrap();
        let error = lock_within(&other, std::time::Duration::from_millis(50)).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        drop(held);
        lock_within(&other, std::time::Duration::from_millis(50)).unwrap();
    }
}
