//! A store wrapper that counts requests by kind, so that a cycle can report
//! what it cost. LIST counts pages of up to 1,000 keys, as S3 bills them;
//! multipart uploads count the create, every part and the completion.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    Result, UploadPart,
};

pub use compactor_model::RequestCost;

/// Request counters shared by a wrapped store and its reader.
#[derive(Debug, Default)]
pub struct RequestCounts {
    list: AtomicU64,
    get: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
}

impl RequestCounts {
    /// The counts so far.
    pub fn snapshot(&self) -> RequestCost {
        RequestCost {
            list: self.list.load(Ordering::Relaxed),
            get: self.get.load(Ordering::Relaxed),
            put: self.put.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts the requests made through `inner`.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counts: Arc<RequestCounts>,
}

impl CountingStore {
    /// Wraps `inner`, counting into `counts`.
    pub fn new(inner: Arc<dyn ObjectStore>, counts: Arc<RequestCounts>) -> Self {
        Self { inner, counts }
    }
}

impl std::fmt::Display for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    counts: Arc<RequestCounts>,
}

#[async_trait::async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        RequestCounts::bump(&self.counts.put);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        RequestCounts::bump(&self.counts.put);
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        RequestCounts::bump(&self.counts.delete);
        self.inner.abort().await
    }
}

#[async_trait::async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        RequestCounts::bump(&self.counts.put);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        RequestCounts::bump(&self.counts.put);
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload { inner, counts: self.counts.clone() }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        RequestCounts::bump(&self.counts.get);
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        RequestCounts::bump(&self.counts.delete);
        self.inner.delete(location).await
    }

    fn delete_stream<'a>(&'a self, locations: BoxStream<'a, Result<Path>>) -> BoxStream<'a, Result<Path>> {
        let counts = self.counts.clone();
        let mut seen = 0u64;
        // Bulk deletes take up to 1,000 keys a request.
        let locations = locations
            .inspect(move |_| {
                if seen.is_multiple_of(1000) {
                    RequestCounts::bump(&counts.delete);
                }
                seen += 1;
            })
            .boxed();
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        RequestCounts::bump(&self.counts.list);
        let counts = self.counts.clone();
        let mut seen = 0u64;
        self.inner
            .list(prefix)
            .inspect(move |_| {
                seen += 1;
                // Every further 1,000 keys is another page.
                if seen > 1 && seen % 1000 == 1 {
                    RequestCounts::bump(&counts.list);
                }
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        RequestCounts::bump(&self.counts.list);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        RequestCounts::bump(&self.counts.put);
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        RequestCounts::bump(&self.counts.put);
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn counts_each_kind_and_list_pages() {
        let counts = Arc::new(RequestCounts::default());
        let store = CountingStore::new(Arc::new(InMemory::new()), counts.clone());
        for i in 0..1500 {
            store.put(&Path::from(format!("k/{i}")), "x".into()).await.unwrap();
        }
        let listed: Vec<_> = store.list(Some(&Path::from("k"))).collect().await;
        assert_eq!(listed.len(), 1500);
        store.get(&Path::from("k/1")).await.unwrap();
        store.delete(&Path::from("k/1")).await.unwrap();
        let bulk = futures::stream::iter((2..1500).map(|i| Ok(Path::from(format!("k/{i}"))))).boxed();
        assert_eq!(store.delete_stream(bulk).collect::<Vec<_>>().await.len(), 1498);
        assert_eq!(counts.snapshot(), RequestCost { list: 2, get: 1, put: 1500, delete: 3 }, "one delete, then 1,498 in two bulk requests");
    }
}
