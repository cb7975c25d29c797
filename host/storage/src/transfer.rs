//! Moving whole files between the store and local disk: downloads, the
//! create-only upload of one request or of parts, bulk deletes, and the
//! early write-back of a file being written. The job decides when each runs
//! (lease checks, deadlines, crash points); these say how.

use std::path::{Path as FsPath, PathBuf};

use futures::StreamExt;
use object_store::{MultipartId, PutMode, PutOptions, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Storage, StorageError, TrackedUploads, object_path};

impl Storage {
    /// Copies `key` into the file `local` and returns its size; `None` when
    /// the object does not exist. On a local store the file is hard-linked
    /// (Parquet files are never modified in place, so a link is a faithful
    /// copy that costs nothing), or copied by the kernel across file
    /// systems.
    pub async fn download(&self, key: &str, local: &FsPath) -> Result<Option<u64>, StorageError> {
        let result = match self.store.get(&object_path(key)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.object_error("read", key, e)),
        };
        let local_error = |e: std::io::Error| self.object_error("download", key, local_io(e));
        if let object_store::GetResultPayload::File(mut file, path) = result.payload {
            let local = local.to_owned();
            let copied = tokio::task::spawn_blocking(move || {
                let size = file.metadata()?.len();
                if std::fs::hard_link(&path, &local).is_ok() {
                    return Ok(size);
                }
                let mut out = std::fs::File::create(&local)?;
                std::io::copy(&mut file, &mut out)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|copied| copied);
            return copied.map(Some).map_err(local_error);
        }
        let mut stream = result.into_stream();
        let mut file = tokio::fs::File::create(local).await.map_err(local_error)?;
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    size += chunk.len() as u64;
                    file.write_all(&chunk).await.map_err(local_error)?;
                }
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.object_error("read", key, e)),
            }
        }
        file.flush().await.map_err(local_error)?;
        Ok(Some(size))
    }

    /// Creates `key` from the file `local` in one request, only if no object
    /// has that name. On a local store the file is hard-linked into place:
    /// `link` fails if the name exists, so this is create-only and atomic,
    /// like the store's own put (the caller syncs it, [`Storage::sync`]).
    pub async fn create_from_file(&self, local: &FsPath, key: &str) -> Result<(), StorageError> {
        if let Some(target) = self.local_path(key) {
            if let Some(dir) = target.parent() {
                tokio::fs::create_dir_all(dir).await.map_err(|e| self.object_error("create", key, local_io(e)))?;
            }
            match tokio::fs::hard_link(local, &target).await {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(self.already_exists(key)),
                Err(e) => tracing::debug!(error = %e, "cannot link the output into place; uploading a copy"),
            }
        }
        let bytes = tokio::fs::read(local).await.map_err(|e| self.object_error("create", key, local_io(e)))?;
        self.store
            .put_opts(&object_path(key), bytes.into(), PutOptions::from(PutMode::Create))
            .await
            .map(drop)
            .map_err(|e| self.object_error("create", key, e))
    }

    /// Fails when `key` exists. A multipart upload cannot be conditional, so
    /// it is preceded by this check (names are unique per job: a safety net).
    pub async fn ensure_absent(&self, key: &str) -> Result<(), StorageError> {
        match self.store.head(&object_path(key)).await {
            Ok(_) => Err(self.already_exists(key)),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.object_error("stat", key, e)),
        }
    }

    /// Uploads the file `local` to `key` in parts of `part_size` bytes,
    /// through `object_store`'s own multipart writer (its upload id stays
    /// hidden: stores without [`TrackedUploads`]). `after_part` runs each
    /// time another `part_size` bytes are handed to the writer.
    pub async fn upload_in_parts(
        &self,
        local: &FsPath,
        key: &str,
        part_size: u64,
        mut after_part: impl FnMut(),
    ) -> Result<(), StorageError> {
        let error = |e: object_store::Error| self.object_error("upload", key, e);
        let upload = self.store.put_multipart(&object_path(key)).await.map_err(error)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size as usize);
        let mut file = tokio::fs::File::open(local).await.map_err(|e| error(local_io(e)))?;
        let mut buffer = vec![0u8; (part_size as usize).min(8 << 20)];
        let (mut sent, mut parts) = (0u64, 0u64);
        loop {
            let n = file.read(&mut buffer).await.map_err(|e| error(local_io(e)))?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(2).await.map_err(error)?;
            writer.write(&buffer[..n]);
            sent += n as u64;
            if sent / part_size > parts {
                parts = sent / part_size;
                after_part();
            }
        }
        writer.finish().await.map(drop).map_err(error)
    }

    fn already_exists(&self, key: &str) -> StorageError {
        self.object_error(
            "create",
            key,
            object_store::Error::AlreadyExists { path: key.to_owned(), source: "refusing to overwrite it".into() },
        )
    }

    /// Deletes `keys` — the first alone, the rest in bulk (one request per
    /// 1,000 keys on S3) — and returns those that could not be deleted; a
    /// key already gone counts as deleted. `between` runs after the first
    /// delete; its error stops the rest.
    pub async fn delete_all(&self, keys: &[String], between: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Vec<String>> {
        let Some((first, rest)) = keys.split_first() else { return Ok(Vec::new()) };
        let mut deleted = std::collections::HashSet::new();
        match self.delete(first).await {
            Ok(()) => {
                deleted.insert(first.clone());
            }
            Err(e) => tracing::warn!(file = %first, error = %e, "cannot delete compacted input"),
        }
        between()?;
        let locations = futures::stream::iter(rest.iter().map(|k| Ok(object_path(k)))).boxed();
        let results: Vec<_> = self.store.delete_stream(locations).collect().await;
        for result in results {
            match result {
                Ok(path) => {
                    deleted.insert(path.to_string());
                }
                Err(object_store::Error::NotFound { path, .. }) => {
                    deleted.insert(path);
                }
                Err(e) => tracing::warn!(error = %e, "cannot delete a compacted input"),
            }
        }
        // A store may name a missing object by another path than its key
        // (the local store gives the file's): ask about the ones not
        // confirmed.
        let mut undeleted = Vec::new();
        for key in keys.iter().filter(|k| !deleted.contains(*k)) {
            if !matches!(self.size(key).await, Ok(None)) {
                undeleted.push(key.clone());
            }
        }
        Ok(undeleted)
    }
}

impl TrackedUploads {
    /// Sends the file `local` as the parts of upload `id` of `key`, each of
    /// `part_size` bytes, and returns them for [`TrackedUploads::complete`].
    /// `before_part` runs before each part is sent (its error stops the
    /// upload) and once more at the end; `after_part` after each.
    pub async fn put_file_parts(
        &self,
        local: &FsPath,
        key: &str,
        id: &MultipartId,
        part_size: u64,
        mut before_part: impl FnMut() -> anyhow::Result<()>,
        mut after_part: impl FnMut(),
    ) -> anyhow::Result<Vec<object_store::multipart::PartId>> {
        use anyhow::Context;
        let mut file = tokio::fs::File::open(local).await.with_context(|| format!("cannot open {}", local.display()))?;
        let mut parts = Vec::new();
        loop {
            let mut part = Vec::with_capacity(part_size as usize);
            (&mut file).take(part_size).read_to_end(&mut part).await?;
            if part.is_empty() {
                break;
            }
            before_part()?;
            parts.push(self.put_part(key, id, parts.len(), part.into()).await.with_context(|| format!("cannot upload a part of {key}"))?);
            after_part();
        }
        before_part()?;
        Ok(parts)
    }
}

/// A local file error, as the store's error.
fn local_io(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic { store: "local file", source: Box::new(e) }
}

impl Storage {
    /// Whether a file under `dir` reaches this store by a hard link (a local
    /// store on the same file system): only then is the file the lake will
    /// hold the one being written, and its early write-back
    /// ([`EarlyWriteback`]) worth the I/O; across file systems it is copied.
    pub fn links_from(&self, dir: &FsPath) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(root) = self.local_root() else { return false };
        match (std::fs::metadata(root), std::fs::metadata(dir)) {
            (Ok(lake), Ok(dir)) => lake.dev() == dir.dev(),
            _ => false,
        }
    }
}

/// Starts writing a file back to disk while another process writes it, so
/// that its later `fsync` finds little left to do. Stops (after one last
/// push) when dropped.
pub struct EarlyWriteback {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EarlyWriteback {
    const INTERVAL: std::time::Duration = std::time::Duration::from_millis(25);

    /// Starts pushing `path` (opened once it exists) every 25 ms.
    pub fn start(path: PathBuf) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                let mut file = None;
                loop {
                    let last = !matches!(stopped.recv_timeout(Self::INTERVAL), Err(std::sync::mpsc::RecvTimeoutError::Timeout));
                    if file.is_none() {
                        file = std::fs::File::open(&path).ok();
                    }
                    if let Some(file) = &file {
                        // SAFETY: a valid descriptor; SYNC_FILE_RANGE_WRITE only
                        // starts the write-back of dirty pages, it waits for none.
                        unsafe {
                            libc::sync_file_range(std::os::fd::AsRawFd::as_raw_fd(file), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
                        }
                    }
                    if last {
                        return;
                    }
                }
            })
            .ok();
        Self { stop: Some(stop), thread }
    }
}

impl Drop for EarlyWriteback {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 21 §4i: the write-back ran where the output is copied, not
    /// linked (temp directory on another file system): I/O for nothing.
    #[test]
    fn only_a_local_store_on_the_same_file_system_links_from_a_directory() {
        let lake = tempfile::tempdir().unwrap();
        let beside = tempfile::tempdir().unwrap();
        let local = Storage::local(lake.path()).unwrap();
        assert!(local.links_from(beside.path()));
        assert!(!Storage::in_memory().links_from(beside.path()));
        let shm = std::path::Path::new("/dev/shm");
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata(shm).is_ok_and(|m| m.dev() != std::fs::metadata(lake.path()).map(|l| l.dev()).unwrap_or(0)) {
            let other = tempfile::tempdir_in(shm).unwrap();
            assert!(!local.links_from(other.path()), "another file system: the output is copied");
        }
    }

    #[tokio::test]
    async fn files_go_up_create_only_and_come_back_whole() {
        let lake = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("out.parquet");
        std::fs::write(&source, vec![7u8; 10_000]).unwrap();
        for storage in [Storage::local(lake.path()).unwrap(), Storage::in_memory()] {
            storage.create_from_file(&source, "db/m/a.parquet").await.unwrap();
            let again = storage.create_from_file(&source, "db/m/a.parquet").await.unwrap_err();
            assert!(again.to_string().contains("db/m/a.parquet"), "{again}");
            assert!(storage.ensure_absent("db/m/a.parquet").await.is_err());
            let mut parts = 0;
            storage.ensure_absent("db/m/b.parquet").await.unwrap();
            storage.upload_in_parts(&source, "db/m/b.parquet", 3_000, || parts += 1).await.unwrap();
            assert_eq!(parts, 3, "10,000 bytes cross 3,000 three times");
            for key in ["db/m/a.parquet", "db/m/b.parquet"] {
                let back = work.path().join(format!("back-{}", key.replace('/', "_")));
                assert_eq!(storage.download(key, &back).await.unwrap(), Some(10_000));
                assert_eq!(std::fs::read(&back).unwrap(), vec![7u8; 10_000]);
                std::fs::remove_file(&back).unwrap();
            }
            assert_eq!(storage.download("db/m/gone.parquet", &work.path().join("gone")).await.unwrap(), None);
            let keys: Vec<String> = ["db/m/a.parquet", "db/m/gone.parquet", "db/m/b.parquet"].map(String::from).to_vec();
            assert!(storage.delete_all(&keys, || Ok(())).await.unwrap().is_empty(), "a key already gone counts as deleted");
            assert_eq!(storage.size("db/m/b.parquet").await.unwrap(), None);
        }
    }
}
