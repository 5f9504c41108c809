//! The storage seam: where rooms come from and where accepted nodes go.
//!
//! The relay loads a room through [`Store::load`] the first time a client asks for it and
//! hands every newly accepted node to [`Store::append`] **before** any ack or broadcast for it
//! leaves the relay. [`PackStore`] keeps rooms as packs and manifests in any object store
//! (local directory, memory, S3, GCS, Azure); [`open`] makes one from a location string.

mod compact;
mod head;
mod manifest;
mod objects;
pub mod pack;

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

pub use objects::PackStore;
pub use pack::StoredNode;

use crate::node::{Node, NodeId, Rejection, RoomId};
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

/// A storage failure. Each variant says what failed and keeps what caused it as its
/// [`source`](std::error::Error::source), so a report prints the chain once
/// ([`StoreError::report`]). [`is_transient`](Self::is_transient) tells the failures worth
/// retrying from corruption and conflicts.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (unreachable, refused, timed out) on `op` at `path`; nothing from
    /// the failed call is durable, and trying again later may succeed.
    #[error("store backend failed to {op} {path}")]
    Backend {
        /// What was asked of the backend: `get`, `put`, `list` or `delete`.
        op: &'static str,
        /// The object (or, for a list, the directory).
        path: String,
        /// What the backend said.
        #[source]
        source: object_store::Error,
    },
    /// The store did not answer in time.
    #[error("the store did not answer in time")]
    TimedOut(#[source] tokio::time::error::Elapsed),
    /// An object the newest manifest lists is gone (a pack merged away between reading the
    /// manifest and the pack): reading again through the newest manifest may succeed.
    #[error("{path} is listed but missing")]
    Missing {
        /// The object.
        path: String,
    },
    /// An object that had to be new exists already (a pack or probe name was taken); a new
    /// attempt picks another name.
    #[error("{path} exists already")]
    Exists {
        /// The object.
        path: String,
    },
    /// Stored bytes fail their checks (a torn or altered object, an unknown layout): the room
    /// is not served rather than served wrong.
    #[error("stored object {path} is corrupt")]
    Corrupt {
        /// The object.
        path: String,
        /// What is wrong with it.
        #[source]
        source: pack::FormatError,
    },
    /// A stored node fails the room's validation (it is not a node of this room, or its
    /// parents are not before it).
    #[error("stored node {id} failed validation")]
    InvalidNode {
        /// The node's claimed id.
        id: NodeId,
        /// Why the room refused it.
        #[source]
        reason: Rejection,
    },
    /// An arrival number the room's newest manifest does not list (or the room is not
    /// stored at all).
    #[error("node {seq} is not stored")]
    NotStored {
        /// The arrival number asked for.
        seq: u64,
    },
    /// Another writer changed the room since this relay read it (or the room is stored in
    /// another epoch): this relay's view is stale and must be reloaded.
    #[error("store conflict: {0}")]
    Conflict(Conflict),
    /// The store let a second create of the same name through: it cannot fence writers
    /// (commits rely on create-if-absent), so it is not used.
    #[error("{path} was created twice: the store does not honour create-if-absent")]
    NoConditionalCreate {
        /// The probe object.
        path: String,
    },
    /// The store location cannot be used as given.
    #[error("bad store location {location}")]
    Location {
        /// The location, as given.
        location: String,
        /// Why it cannot be used.
        #[source]
        source: LocationError,
    },
    /// A lock of the store's cache was poisoned by a panic elsewhere.
    #[error("the store's cache lock is poisoned")]
    Poisoned,
    /// The relay broke one of its own invariants around the store (a bug, not a store
    /// failure).
    #[error("relay bug: {0}")]
    Bug(&'static str),
}

impl StoreError {
    /// True for failures that may pass if the call is made again (the backend failed or was
    /// slow, a listed object vanished, a fresh name was taken); false for corruption,
    /// conflicts and misuse, which a retry would only repeat.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Backend { .. } | Self::TimedOut(_) | Self::Missing { .. } | Self::Exists { .. }
        )
    }

    /// The error followed by its sources, `: `-separated, for logs and messages.
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }
}

/// How another writer got in the way (see [`StoreError::Conflict`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// The manifest generation this checkpoint was to create exists: another writer created
    /// it.
    #[error("{path} was created by another writer")]
    Generation {
        /// The manifest object.
        path: String,
    },
    /// The commit pack for these arrival numbers exists with other contents: another writer
    /// committed them first.
    #[error("{path} was created by another writer")]
    Pack {
        /// The pack object.
        path: String,
    },
    /// The store holds a manifest or pack this relay's view of the room does not know (found
    /// when a view not confirmed for a while is checked before a commit).
    #[error("{path} was written by another writer")]
    Changed {
        /// The object found.
        path: String,
    },
    /// The room is stored in another epoch than the write is for.
    #[error("the room is stored in epoch {stored}, not {asked}")]
    Epoch {
        /// The stored room's epoch.
        stored: u64,
        /// The epoch the write was for.
        asked: u64,
    },
}

/// Why a store location cannot be used (see [`StoreError::Location`]).
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    /// Neither a path nor a URL.
    #[error("not a URL")]
    Url(#[source] url::ParseError),
    /// A `file://` URL that names no local path.
    #[error("not a local path")]
    NotLocal,
    /// A path that exists and is not a directory.
    #[error("not a directory")]
    NotADirectory,
    /// The directory cannot be created.
    #[error("cannot create the directory")]
    CreateDir(#[source] std::io::Error),
    /// object_store refused the location (an unknown scheme, missing configuration).
    #[error("object store refused it")]
    ObjectStore(#[source] object_store::Error),
}

/// An error and its sources, `: `-separated (see [`StoreError::report`]).
pub struct Report<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
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
    /// Nodes in arrival order, parents before children, in batches, each with its stored
    /// record (its canonical wire encoding). An error ends the read: the room must not be
    /// used.
    pub nodes: BoxStream<'a, Result<Vec<StoredNode>, StoreError>>,
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
            let batches: Vec<Vec<StoredNode>> = reader.nodes.try_collect().await?;
            Ok(Some(StoredRoom {
                epoch: reader.epoch,
                nodes: batches.into_iter().flatten().map(|s| s.node).collect(),
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

    /// Stops the store's background work (compactions, deferred deletes) and waits until it
    /// has stopped. Called once nothing writes any more: the server calls it after its rooms
    /// have stopped. What was appended stays durable; work cut short leaves the store
    /// consistent.
    fn close(&self) -> BoxFuture<'_, ()>;

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
    let bad = |source| StoreError::Location {
        location: location.to_owned(),
        source,
    };
    if location == "memory://" || location == "memory:" {
        return Ok(PackStore::memory());
    }
    if let Some(path) = local_dir(location) {
        return local(&path, location);
    }
    let url = url::Url::parse(location).map_err(|e| bad(LocationError::Url(e)))?;
    if url.scheme() == "file" {
        return Err(bad(LocationError::NotLocal));
    }
    // Cloud clients speak TLS through rustls with ring; a provider installed earlier (by the
    // embedding application) is kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (objects, prefix) = object_store::parse_url_opts(&url, std::env::vars())
        .map_err(|e| bad(LocationError::ObjectStore(e)))?;
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
    let bad = |source| StoreError::Location {
        location: location.to_owned(),
        source,
    };
    // create_dir_all would only say "File exists".
    if path.exists() && !path.is_dir() {
        return Err(bad(LocationError::NotADirectory));
    }
    std::fs::create_dir_all(path).map_err(|e| bad(LocationError::CreateDir(e)))?;
    let objects = object_store::local::LocalFileSystem::new_with_prefix(path)
        .map_err(|e| bad(LocationError::ObjectStore(e)))?
        .with_fsync(true);
    Ok(PackStore::new(
        Arc::new(objects),
        object_store::path::Path::default(),
        location.to_owned(),
    ))
}
