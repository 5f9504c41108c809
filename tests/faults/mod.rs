//! An object store that fails on demand: errors, latency, and writes that stop halfway. It
//! wraps a real store, so whatever did get written is there to be read back.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// What goes wrong, switchable while a relay runs.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every write fails.
    pub fail_writes: AtomicBool,
    /// Manifest writes fail; packs still land (a crash between the two writes).
    pub fail_manifests: AtomicBool,
    /// Packs are written half, then the write fails (a torn write).
    pub tear_packs: AtomicBool,
    /// Milliseconds added to every write.
    pub write_latency_ms: AtomicU64,
    /// Milliseconds added to every read and listing.
    pub read_latency_ms: AtomicU64,
    /// Manifest writes that succeeded.
    pub manifests_written: AtomicU64,
    /// Listings of a manifest directory (one per room load).
    pub manifest_listings: AtomicU64,
    /// Reads of pack objects fail.
    pub fail_pack_reads: AtomicBool,
    /// Ranged reads of pack objects return every range with its last byte flipped.
    pub corrupt_pack_ranges: AtomicBool,
    /// Ranged reads of pack objects that succeeded.
    pub pack_range_reads: AtomicU64,
    /// Writes begun (counted before any latency).
    pub writes_started: AtomicU64,
}

impl Faults {
    pub fn set(flag: &AtomicBool, on: bool) {
        flag.store(on, Ordering::SeqCst);
    }
}

/// `inner`, with `faults` applied.
#[derive(Debug)]
pub struct Faulty {
    pub inner: Arc<dyn ObjectStore>,
    pub faults: Arc<Faults>,
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: format!("injected fault: {what}").into(),
    }
}

fn is_manifest(path: &Path) -> bool {
    path.as_ref().contains("/manifest/")
}

fn is_pack(path: &Path) -> bool {
    path.as_ref().ends_with(".pack")
}

async fn pause(ms: &AtomicU64) {
    let ms = ms.load(Ordering::SeqCst);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.faults.writes_started.fetch_add(1, Ordering::SeqCst);
        pause(&self.faults.write_latency_ms).await;
        let faults = &self.faults;
        if faults.fail_writes.load(Ordering::SeqCst) {
            return Err(injected("write"));
        }
        if is_manifest(location) && faults.fail_manifests.load(Ordering::SeqCst) {
            return Err(injected("manifest write"));
        }
        if is_pack(location) && faults.tear_packs.load(Ordering::SeqCst) {
            let bytes: Bytes = payload.into();
            let half = PutPayload::from(bytes.slice(..bytes.len() / 2));
            self.inner.put_opts(location, half, opts).await?;
            return Err(injected("torn pack write"));
        }
        let result = self.inner.put_opts(location, payload, opts).await?;
        if is_manifest(location) {
            faults.manifests_written.fetch_add(1, Ordering::SeqCst);
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        if self.faults.fail_writes.load(Ordering::SeqCst) {
            return Err(injected("multipart write"));
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        pause(&self.faults.read_latency_ms).await;
        if is_pack(location) && self.faults.fail_pack_reads.load(Ordering::SeqCst) {
            return Err(injected("pack read"));
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        pause(&self.faults.read_latency_ms).await;
        let faults = &self.faults;
        if is_pack(location) && faults.fail_pack_reads.load(Ordering::SeqCst) {
            return Err(injected("ranged pack read"));
        }
        let parts = self.inner.get_ranges(location, ranges).await?;
        if !is_pack(location) {
            return Ok(parts);
        }
        faults.pack_range_reads.fetch_add(1, Ordering::SeqCst);
        if !faults.corrupt_pack_ranges.load(Ordering::SeqCst) {
            return Ok(parts);
        }
        Ok(parts
            .into_iter()
            .map(|part| {
                let mut bytes = part.to_vec();
                if let Some(last) = bytes.last_mut() {
                    *last ^= 0x01;
                }
                Bytes::from(bytes)
            })
            .collect())
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if prefix.is_some_and(|p| p.as_ref().ends_with("/manifest")) {
            self.faults.manifest_listings.fetch_add(1, Ordering::SeqCst);
        }
        let latency = self.faults.read_latency_ms.load(Ordering::SeqCst);
        let inner = self.inner.list(prefix);
        if latency == 0 {
            return inner;
        }
        // Delay the first item, as a slow listing would.
        Box::pin(
            futures::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(latency)).await;
                inner
            })
            .flatten(),
        )
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        pause(&self.faults.read_latency_ms).await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        if self.faults.fail_writes.load(Ordering::SeqCst) {
            return Err(injected("copy"));
        }
        self.inner.copy_opts(from, to, options).await
    }
}
