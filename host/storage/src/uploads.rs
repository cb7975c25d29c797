//! Multipart uploads whose id is known, so that recovery can abort the
//! upload of a job that died mid-way (S3 keeps its parts, billed, until the
//! upload is completed or aborted). `object_store`'s `WriteMultipart` hides
//! the id; on S3 the job uploads through `MultipartStore` instead and
//! records the id next to its manifest first.

use std::sync::Arc;

use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, PutPayload};

/// The multipart API of a store, under its key prefix.
#[derive(Clone)]
pub struct TrackedUploads {
    store: Arc<dyn MultipartStore>,
    prefix: String,
}

impl std::fmt::Debug for TrackedUploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedUploads").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl TrackedUploads {
    pub(crate) fn new(store: Arc<dyn MultipartStore>, prefix: &str) -> Self {
        Self { store, prefix: prefix.trim_matches('/').to_owned() }
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() { crate::object_path(key) } else { crate::object_path(&format!("{}/{key}", self.prefix)) }
    }

    /// Starts an upload of `key`; returns its id.
    pub async fn create(&self, key: &str) -> object_store::Result<MultipartId> {
        self.store.create_multipart(&self.path(key)).await
    }

    /// Uploads part `index` (0-based).
    pub(crate) async fn put_part(&self, key: &str, id: &MultipartId, index: usize, data: PutPayload) -> object_store::Result<PartId> {
        self.store.put_part(&self.path(key), id, index, data).await
    }

    /// Completes the upload: the object appears, whole.
    pub async fn complete(&self, key: &str, id: &MultipartId, parts: Vec<PartId>) -> object_store::Result<()> {
        self.store.complete_multipart(&self.path(key), id, parts).await.map(|_| ())
    }

    /// Aborts the upload and frees its parts; an upload already gone is
    /// success.
    pub async fn abort(&self, key: &str, id: &MultipartId) -> object_store::Result<()> {
        match self.store.abort_multipart(&self.path(key), id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
