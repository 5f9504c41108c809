//! The storage seam: where rooms come from and where accepted nodes go.
//!
//! The relay loads a room through [`Store::load`] the first time a client asks for it and
//! hands every newly accepted node to [`Store::append`] **before** any ack or broadcast for it
//! leaves the relay. [`PackStore`] keeps rooms as packs and manifests in any object store
//! (local directory, memory, S3, GCS, Azure); [`open`] makes one from a location string.

mod objects;
pub mod pack;

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use objects::PackStore;

use crate::node::{Node, RoomId};
use crate::protocol;

/// A room as stored: its epoch and its nodes in arrival order.
#[derive(Debug, Clone)]
pub struct StoredRoom {
    /// Epoch of the arrival numbering. A store that loses a room's numbering must start a new
    /// epoch so clients do not trust stale watermarks.
    pub epoch: u64,
    /// Accepted nodes, parents before children.
    pub nodes: Vec<Node>,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (unreachable, refused, timed out); nothing from the failed call is
    /// durable, and trying again later may succeed.
    #[error("store backend failed: {0}")]
    Backend(String),
    /// Stored bytes fail their checks (a torn or altered object, an unknown layout): the room
    /// is not served rather than served wrong.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Another writer changed the room since this relay read it (or the room is stored in
    /// another epoch): this relay's view is stale and must be reloaded.
    #[error("store conflict: {0}")]
    Conflict(String),
    /// The store location cannot be used as given.
    #[error("bad store location: {0}")]
    Location(String),
}

/// What `weft store check` learned about a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReport {
    /// The store, as configured.
    pub description: String,
    /// The storage layout version found (or just written) in it.
    pub layout: u32,
}

/// A stored room being read: its epoch, then its nodes in arrival order, a batch (a few
/// thousand nodes) at a time, so a reader never holds the whole stored form and the loaded
/// room at once.
pub struct RoomReader<'a> {
    /// Epoch of the arrival numbering.
    pub epoch: u64,
    /// Nodes in arrival order, parents before children, in batches. An error ends the read:
    /// the room must not be used.
    pub nodes: BoxStream<'a, Result<Vec<Node>, StoreError>>,
}

/// Where rooms live.
pub trait Store: Send + Sync + 'static {
    /// Starts reading a stored room, or `None` if it has never been written.
    fn read<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> BoxFuture<'a, Result<Option<RoomReader<'a>>, StoreError>>;

    /// The whole stored room at once, or `None` if it has never been written.
    fn load<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> BoxFuture<'a, Result<Option<StoredRoom>, StoreError>> {
        Box::pin(async move {
            let Some(reader) = self.read(room).await? else {
                return Ok(None);
            };
            let batches: Vec<Vec<Node>> = reader.nodes.try_collect().await?;
            Ok(Some(StoredRoom {
                epoch: reader.epoch,
                nodes: batches.into_iter().flatten().collect(),
            }))
        })
    }

    /// Makes `records` (the wire encodings of new nodes, in arrival order, following what is
    /// stored) part of the room. Returns only once they are as durable as this store gets; on
    /// an error none of them may be assumed stored.
    fn append<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: u64,
        records: &'a [Bytes],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// [`append`](Self::append) for decoded nodes.
    fn append_nodes<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: u64,
        nodes: &'a [Node],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let records: Vec<Bytes> = nodes.iter().map(protocol::encode_node).collect();
            self.append(room, epoch, &records).await
        })
    }

    /// Reads back the stored records (node wire encodings) of the nodes with arrival numbers
    /// `seqs` (ascending), in that order, with range reads. The caller checks each record
    /// against the id it expects.
    fn fetch<'a>(
        &'a self,
        room: &'a RoomId,
        seqs: &'a [u64],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, StoreError>>;

    /// The relay unloaded the room: forget what was cached to read or write it.
    fn release(&self, room: &RoomId);

    /// Checks that the store is reachable and writable and holds a layout this relay reads.
    fn check(&self) -> BoxFuture<'_, Result<StoreReport, StoreError>>;

    /// The store, as configured (for logs).
    fn describe(&self) -> String;
}

/// Opens the store at `location` (see README, "Storage"):
///
/// - a filesystem path (the default `./weft-data`): a local directory, created if missing,
///   every write fsynced before it counts;
/// - `memory://`: process memory, gone on exit;
/// - `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` (and the other forms
///   object_store parses), configured from the standard `AWS_*`, `GOOGLE_*` and `AZURE_*`
///   environment variables (for S3-compatible servers: `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`).
pub fn open(location: &str) -> Result<PackStore, StoreError> {
    let bad = |e: &dyn std::fmt::Display| StoreError::Location(format!("{location}: {e}"));
    if location == "memory://" || location == "memory:" {
        return Ok(PackStore::memory());
    }
    if let Some(path) = local_dir(location) {
        return local(&path, location);
    }
    let url = url::Url::parse(location).map_err(|e| bad(&e))?;
    if url.scheme() == "file" {
        return Err(bad(&"not a local path"));
    }
    // Cloud clients speak TLS through rustls with ring; a provider installed earlier (by the
    // embedding application) is kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (objects, prefix) =
        object_store::parse_url_opts(&url, std::env::vars()).map_err(|e| bad(&e))?;
    Ok(PackStore::new(
        Arc::from(objects),
        prefix,
        location.to_owned(),
    ))
}

/// The directory of a local store location (a path or a `file://` URL), or `None` for any
/// other store.
pub fn local_dir(location: &str) -> Option<std::path::PathBuf> {
    if location == "memory:" {
        return None;
    }
    if !location.contains("://") {
        return Some(location.into());
    }
    let url = url::Url::parse(location).ok()?;
    (url.scheme() == "file")
        .then(|| url.to_file_path().ok())
        .flatten()
}

fn local(path: &std::path::Path, location: &str) -> Result<PackStore, StoreError> {
    // create_dir_all would only say "File exists".
    if path.exists() && !path.is_dir() {
        return Err(StoreError::Location(format!("{location}: not a directory")));
    }
    std::fs::create_dir_all(path).map_err(|e| StoreError::Location(format!("{location}: {e}")))?;
    let objects = object_store::local::LocalFileSystem::new_with_prefix(path)
        .map_err(|e| StoreError::Location(format!("{location}: {e}")))?
        .with_fsync(true);
    Ok(PackStore::new(
        Arc::new(objects),
        object_store::path::Path::default(),
        location.to_owned(),
    ))
}
