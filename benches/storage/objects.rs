//! The stores the storage bench runs the relay on, each behind a wrapper that counts (and
//! optionally slows) every object_store call, and an s3s-fs server the bench starts itself.
//!
//! Round trips per commit are counted, not inferred: [`Commits`] runs each `append` (the
//! write an ack waits for) inside a task-local scope, and [`Measured`] counts the calls made
//! inside that scope. Background work (checkpoints, compactions, deletes) runs on its own
//! tasks, outside the scope, so it is counted apart.

use std::fmt;
use std::net::TcpStream as StdStream;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use weft::node::RoomId;
use weft::store::{PackStore, RoomReader, Store, StoreError, StoreReport};

tokio::task_local! {
    /// Set while a commit (`Store::append`) runs: calls made then are on the ack path.
    static ON_ACK_PATH: ();
}

/// Calls counted by [`Measured`] and [`Commits`].
#[derive(Debug, Default)]
pub struct CallStats {
    /// Commits (`append` calls).
    pub commits: AtomicU64,
    /// Microseconds spent in commits, in total.
    pub commit_us: AtomicU64,
    /// object_store calls made by commits: the round trips acks wait for.
    pub ack_path_calls: AtomicU64,
    /// Microseconds those calls took, in total.
    pub ack_path_us: AtomicU64,
    /// object_store calls made by anything else (loads, checkpoints, compactions, deletes).
    pub other_calls: AtomicU64,
}

impl CallStats {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Store calls an ack waited for, per commit.
    pub fn round_trips_per_commit(&self) -> f64 {
        Self::get(&self.ack_path_calls) as f64 / Self::get(&self.commits).max(1) as f64
    }

    /// Mean latency of one ack-path store call, in seconds.
    pub fn call_latency_s(&self) -> f64 {
        Self::get(&self.ack_path_us) as f64 / 1e6 / Self::get(&self.ack_path_calls).max(1) as f64
    }
}

/// `inner` with `delay` added before every call, counting calls into `stats`.
#[derive(Debug)]
pub struct Measured {
    pub inner: Arc<dyn ObjectStore>,
    pub delay: Duration,
    pub stats: Arc<CallStats>,
}

impl fmt::Display for Measured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Measured({}, +{:?})", self.inner, self.delay)
    }
}

/// A call in progress: counted when it ends, as ack-path or other.
struct Call {
    started: Instant,
    on_ack_path: bool,
    stats: Arc<CallStats>,
}

impl Measured {
    /// Starts counting a call and waits out the added latency.
    async fn begin(&self) -> Call {
        let call = Call {
            started: Instant::now(),
            on_ack_path: ON_ACK_PATH.try_with(|_| ()).is_ok(),
            stats: self.stats.clone(),
        };
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        call
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.on_ack_path {
            let us = self.started.elapsed().as_micros() as u64;
            self.stats.ack_path_calls.fetch_add(1, Ordering::Relaxed);
            self.stats.ack_path_us.fetch_add(us, Ordering::Relaxed);
        } else {
            self.stats.other_calls.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[async_trait]
impl ObjectStore for Measured {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let _call = self.begin().await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let _call = self.begin().await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let _call = self.begin().await;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let _call = self.begin().await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // One call per object deleted, each after the added latency.
        let (inner, delay, stats) = (self.inner.clone(), self.delay, self.stats.clone());
        let on_ack_path = ON_ACK_PATH.try_with(|_| ()).is_ok();
        Box::pin(locations.then(move |location| {
            let (inner, stats) = (inner.clone(), stats.clone());
            async move {
                let _call = Call {
                    started: Instant::now(),
                    on_ack_path,
                    stats,
                };
                tokio::time::sleep(delay).await;
                let location = location?;
                let mut done = inner.delete_stream(futures::stream::iter([Ok(location)]).boxed());
                done.next().await.unwrap_or_else(|| {
                    Err(object_store::Error::Generic {
                        store: "measured",
                        source: "delete returned nothing".into(),
                    })
                })
            }
        }))
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.list_after(prefix, None)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.list_after(prefix, Some(offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let _call = self.begin().await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let _call = self.begin().await;
        self.inner.copy_opts(from, to, options).await
    }
}

impl Measured {
    /// A listing: one call, its latency before the first item.
    fn list_after(
        &self,
        prefix: Option<&Path>,
        offset: Option<&Path>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = match offset {
            Some(offset) => self.inner.list_with_offset(prefix, offset),
            None => self.inner.list(prefix),
        };
        let call = Call {
            started: Instant::now(),
            on_ack_path: ON_ACK_PATH.try_with(|_| ()).is_ok(),
            stats: self.stats.clone(),
        };
        let delay = self.delay;
        Box::pin(
            futures::stream::once(async move {
                tokio::time::sleep(delay).await;
                // The listing ends when the stream is dropped; counted then.
                inner.map(move |item| {
                    let _ = &call;
                    item
                })
            })
            .flatten(),
        )
    }
}

/// A [`PackStore`] whose commits are timed and whose store calls during a commit count as
/// ack-path round trips.
pub struct Commits {
    pub inner: PackStore,
    pub stats: Arc<CallStats>,
}

impl Store for Commits {
    fn read<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> BoxFuture<'a, Result<Option<RoomReader<'a>>, StoreError>> {
        self.inner.read(room)
    }

    fn append<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: u64,
        records: &'a [Bytes],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let started = Instant::now();
        let stats = self.stats.clone();
        ON_ACK_PATH
            .scope((), self.inner.append(room, epoch, records))
            .map(move |result| {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                let us = started.elapsed().as_micros() as u64;
                stats.commit_us.fetch_add(us, Ordering::Relaxed);
                result
            })
            .boxed()
    }

    fn fetch<'a>(
        &'a self,
        room: &'a RoomId,
        seqs: &'a [u64],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, StoreError>> {
        self.inner.fetch(room, seqs)
    }

    fn release(&self, room: &RoomId) {
        self.inner.release(room);
    }

    fn check(&self) -> BoxFuture<'_, Result<StoreReport, StoreError>> {
        self.inner.check()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

// ---------------------------------------------------------------------------------------------
// s3s-fs

/// Credentials and bucket of the bench's S3 server.
const ACCESS_KEY: &str = "weft-bench-access";
const SECRET_KEY: &str = "weft-bench-secret";
const BUCKET: &str = "weft-bench";

/// A running s3s-fs over a temporary directory on a loopback port, stopped on drop.
pub struct S3Server {
    child: Child,
    endpoint: String,
    _root: tempfile::TempDir,
}

impl S3Server {
    /// Starts s3s-fs (from `PATH` or `~/.cargo/bin`; CI installs it) with an empty bucket, or
    /// `None` if it is not installed.
    pub fn start() -> anyhow::Result<Option<Self>> {
        let Some(binary) = find_s3s_fs() else {
            return Ok(None);
        };
        let root = tempfile::tempdir()?;
        // s3s-fs serves each directory under its root as a bucket.
        std::fs::create_dir(root.path().join(BUCKET))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("s3s-fs did not start")?;
        let mut server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _root: root,
        };
        // Up to 10 s, in 20 ms steps.
        for _ in 0..500 {
            if StdStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Some(server));
            }
            if server.child.try_wait()?.is_some() {
                bail!("s3s-fs exited before listening");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("s3s-fs did not listen on {port}")
    }

    /// A client for the bucket.
    pub fn objects(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        // As `weft::store::open` does for cloud stores: TLS through rustls with ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_bucket_name(BUCKET)
                .with_region("us-east-1")
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .with_allow_http(true)
                .build()?,
        ))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_s3s_fs() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    for (var, sub) in [("CARGO_HOME", "bin"), ("HOME", ".cargo/bin")] {
        if let Some(home) = std::env::var_os(var) {
            dirs.push(PathBuf::from(home).join(sub));
        }
    }
    dirs.into_iter()
        .map(|dir| dir.join("s3s-fs"))
        .find(|candidate| candidate.is_file())
}
