//! Rooms in an object store (protocol/storage.md): immutable packs of accepted nodes, each
//! commit one pack created only if its name (its first arrival number) is free, which fences
//! out a second relay writing the same room; manifests checkpoint the list of packs.
//!
//! [`PackStore`] glues the parts together: this module reads and writes packs and serves
//! loads and range reads; [`head`](super::head) rebuilds a room's head from the newest
//! manifest and the commit packs after it, and checkpoints it; [`manifest`](super::manifest)
//! finds and creates manifest generations; [`compact`](super::compact) merges small packs in
//! the background. Background work runs on the store's task tracker, and
//! [`PackStore::shutdown`] stops and awaits it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::compact::LARGE_PACK_BYTES;
use super::head::{HEAD_TRUST, Head, View, commit_name};
use super::pack::{self, FormatError, LAYOUT_VERSION, Manifest, PackEntry, RecordIndex};
use super::{Conflict, RoomReader, StoreError, StoreReport};
use crate::node::RoomId;

/// Packs of one room read at the same time during a load, at most.
const LOAD_CONCURRENCY: usize = 8;

/// Bytes of packs a load reads ahead of the room (or one pack, if larger).
const LOAD_READ_AHEAD: u64 = 64 << 20;

/// Nodes decoded at a time during a load.
const LOAD_CHUNK: usize = 4096;

/// Rooms stored as packs and manifests in any [`ObjectStore`]. Cheap to clone; clones share
/// one store, including its background work and [`shutdown`](Self::shutdown).
#[derive(Clone)]
pub struct PackStore {
    inner: Arc<Packs>,
}

/// The state behind a [`PackStore`], shared with its background tasks.
pub(super) struct Packs {
    pub(super) objects: Arc<dyn ObjectStore>,
    prefix: Path,
    /// What the store is, for logs and `weft store check`.
    description: String,
    rooms: Mutex<HashMap<RoomId, Arc<RoomSlot>>>,
    /// Compactions and deferred deletes: none of them is needed for what was acknowledged,
    /// so shutdown cancels them (`cancel`) and waits until they have stopped (`tasks`).
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// What this process knows of one stored room.
pub(super) struct RoomSlot {
    /// The room's head. Never held across an await: commits and publishes serialise on
    /// their own locks below.
    view: Mutex<View>,
    /// Held across a commit's pack create (and a load), so this process creates one commit
    /// pack of the room at a time, each after the last.
    pub(super) commit: tokio::sync::Mutex<()>,
    /// Held across a manifest create, so a checkpoint and a merge never race for a
    /// generation.
    pub(super) publish: tokio::sync::Mutex<()>,
    /// A compaction of this room is running.
    pub(super) compacting: AtomicBool,
    /// A checkpoint of this room is scheduled or running.
    pub(super) checkpointing: AtomicBool,
    /// Where the records of the room's packs lie, by pack name, for range reads: learnt when
    /// a pack is written or read whole.
    indexes: Mutex<HashMap<String, Arc<RecordIndex>>>,
}

impl Default for RoomSlot {
    fn default() -> Self {
        Self {
            view: Mutex::new(View::Unknown),
            commit: tokio::sync::Mutex::default(),
            publish: tokio::sync::Mutex::default(),
            compacting: AtomicBool::new(false),
            checkpointing: AtomicBool::new(false),
            indexes: Mutex::default(),
        }
    }
}

impl RoomSlot {
    /// Runs `f` on the room's view.
    pub(super) fn with_view<T>(&self, f: impl FnOnce(&mut View) -> T) -> Result<T, StoreError> {
        let mut view = self.view.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(f(&mut view))
    }

    /// A copy of the room's head, if this process knows it.
    pub(super) fn head(&self) -> Result<Option<Manifest>, StoreError> {
        self.with_view(|view| match view {
            View::Known(head) => Some(head.manifest.clone()),
            View::Unknown | View::Stale(_) => None,
        })
    }

    fn index(&self, pack: &str) -> Option<Arc<RecordIndex>> {
        self.indexes.lock().ok()?.get(pack).cloned()
    }

    fn remember_index(&self, pack: &str, index: RecordIndex) -> Arc<RecordIndex> {
        let index = Arc::new(index);
        if let Ok(mut indexes) = self.indexes.lock() {
            indexes.insert(pack.to_owned(), index.clone());
        }
        index
    }

    fn forget_indexes_all(&self) {
        if let Ok(mut indexes) = self.indexes.lock() {
            indexes.clear();
        }
    }

    pub(super) fn forget_indexes<'a>(&self, packs: impl IntoIterator<Item = &'a PackEntry>) {
        if let Ok(mut indexes) = self.indexes.lock() {
            for pack in packs {
                indexes.remove(&pack.name);
            }
        }
    }
}

impl PackStore {
    /// Rooms under `prefix` in `objects`.
    pub fn new(objects: Arc<dyn ObjectStore>, prefix: Path, description: String) -> Self {
        Self {
            inner: Arc::new(Packs {
                objects,
                prefix,
                description,
                rooms: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
            }),
        }
    }

    /// An ephemeral store in process memory (`memory://`).
    pub fn memory() -> Self {
        Self::new(
            Arc::new(object_store::memory::InMemory::new()),
            Path::default(),
            "memory://".into(),
        )
    }

    /// Stops the store's background work (compactions, deferred deletes) and waits until it
    /// has stopped. Nothing acknowledged depends on it: a merge cut short leaves the newest
    /// manifest as it was and at most an unreferenced pack. Appends still work afterwards,
    /// but start no more background work.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl Packs {
    pub(super) fn room_dir(&self, room: &RoomId) -> Path {
        // Room ids may be "." or "..", which are not valid path segments on their own.
        self.prefix
            .clone()
            .join("rooms")
            .join(format!("r-{}", room.as_str()))
    }

    pub(super) fn pack_path(&self, room: &RoomId, name: &str) -> Path {
        self.room_dir(room).join("packs").join(name)
    }

    fn layout_path(&self) -> Path {
        self.prefix.clone().join("weft-layout.json")
    }

    pub(super) fn slot(&self, room: &RoomId) -> Result<Arc<RoomSlot>, StoreError> {
        let mut rooms = self.rooms.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(rooms.entry(room.clone()).or_default().clone())
    }

    /// Runs `work` on the store's tracker until it ends or the store shuts down.
    pub(super) fn background(&self, work: impl Future<Output = ()> + Send + 'static) {
        if self.cancel.is_cancelled() {
            return;
        }
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = work => {}
            }
        });
    }

    /// An object's whole contents.
    pub(super) async fn read_object(&self, path: &Path) -> Result<Bytes, StoreError> {
        let found = self.objects.get(path).await.map_err(backend("get", path))?;
        found.bytes().await.map_err(backend("get", path))
    }

    /// Reads a whole pack without decoding it: its bytes and record index, remembered.
    /// `None` if the object does not exist.
    pub(super) async fn open_pack(
        &self,
        room: &RoomId,
        entry: &PackEntry,
        epoch: u64,
    ) -> Result<Option<(Bytes, Arc<RecordIndex>)>, StoreError> {
        let path = self.pack_path(room, &entry.name);
        let bytes = match self.objects.get(&path).await {
            Ok(found) => found.bytes().await.map_err(backend("get", &path))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(backend("get", &path)(e)),
        };
        let (header, index) = pack::open_pack(&bytes).map_err(corrupt(&path))?;
        pack::check_pack(header, entry, epoch).map_err(corrupt(&path))?;
        let index = self.slot(room)?.remember_index(&entry.name, index);
        Ok(Some((bytes, index)))
    }

    async fn read_room<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> Result<Option<RoomReader<'a>>, StoreError> {
        let slot = self.slot(room)?;
        let manifest = {
            let _committing = slot.commit.lock().await;
            let found = self.discover(room).await?;
            // A fresh read replaces whatever this process knew, a stale view included.
            slot.with_view(|view| {
                *view = match &found {
                    Some(manifest) => View::Known(Head::new(manifest.clone())),
                    None => View::Unknown,
                }
            })?;
            found
        };
        let Some(manifest) = manifest else {
            return Ok(None);
        };
        let epoch = manifest.epoch;
        let entries = manifest.packs;
        // Packs are read ahead of the room, a bounded number of bytes at a time, and decoded
        // a chunk at a time as the room takes them: a load never holds much more than the
        // room it builds, so the heap it leaves behind is not larger either.
        let largest = entries.iter().map(|e| e.bytes).max().unwrap_or(0).max(1);
        let read_ahead = usize::try_from(LOAD_READ_AHEAD / largest)
            .unwrap_or(usize::MAX)
            .clamp(1, LOAD_CONCURRENCY);
        let nodes = futures::stream::iter(entries)
            .map(move |entry| async move {
                let path = self.pack_path(room, &entry.name);
                let (bytes, index) =
                    self.open_pack(room, &entry, epoch).await?.ok_or_else(|| {
                        StoreError::Missing {
                            path: path.to_string(),
                        }
                    })?;
                // Each node comes with its record, a slice of the pack, which the room keeps
                // as its encoding while it is resident. That pins the pack: a large one is
                // copied record by record instead, so what stays resident after a load costs
                // at most a large pack more than the payload budget.
                let pin = entry.bytes < LARGE_PACK_BYTES;
                let chunks = (0..index.len()).step_by(LOAD_CHUNK).map(move |start| {
                    let end = (start + LOAD_CHUNK).min(index.len());
                    let mut nodes =
                        pack::decode_records(&bytes, &index, start..end).map_err(corrupt(&path))?;
                    if !pin {
                        for node in &mut nodes {
                            node.wire = Bytes::copy_from_slice(&node.wire);
                        }
                    }
                    Ok(nodes)
                });
                Ok::<_, StoreError>(futures::stream::iter(chunks))
            })
            .buffered(read_ahead)
            .try_flatten();
        Ok(Some(RoomReader {
            epoch,
            nodes: Box::pin(nodes),
        }))
    }

    /// One commit (protocol/storage.md, "Writing"): the records become the commit pack
    /// named by the head's next arrival number, created only if that name is free. That
    /// create is the only write the caller waits for; the manifest follows in the background.
    async fn append_records(
        self: &Arc<Self>,
        room: &RoomId,
        epoch: u64,
        records: &[Bytes],
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let slot = self.slot(room)?;
        let _committing = slot.commit.lock().await;
        let (head, confirmed) = self.head_for_commit(room, &slot, epoch).await?;
        if head.epoch != epoch {
            return Err(StoreError::Conflict(Conflict::Epoch {
                stored: head.epoch,
                asked: epoch,
            }));
        }
        if confirmed.elapsed() > HEAD_TRUST {
            let _publishing = slot.publish.lock().await;
            let checked = self.confirm(room, &head).await;
            stale_on_conflict(&slot, checked)?;
        }
        let created = self
            .write_commit(room, epoch, head.next_seq(), records)
            .await;
        let entry = stale_on_conflict(&slot, created)?;
        let grown = slot.with_view(|view| match view {
            View::Known(known) => {
                known.manifest.packs.push(entry);
                known.checkpoint_due = true;
                known.confirmed = tokio::time::Instant::now();
                Some(known.manifest.clone())
            }
            View::Unknown | View::Stale(_) => None,
        })?;
        let grown = grown.ok_or(StoreError::Bug("a room's head vanished during a commit"))?;
        self.checkpoint_soon(room, &slot);
        self.compact_if_due(room, &slot, &grown);
        Ok(())
    }

    /// The head a commit extends, read from the store if this process does not know it
    /// (a new room starts in `epoch`), and when the store last confirmed it; the caller
    /// holds the commit lock. A stale view is a conflict: the room must be read again.
    async fn head_for_commit(
        &self,
        room: &RoomId,
        slot: &RoomSlot,
        epoch: u64,
    ) -> Result<(Manifest, tokio::time::Instant), StoreError> {
        let known = slot.with_view(|view| match view {
            View::Known(head) => Ok(Some((head.manifest.clone(), head.confirmed))),
            View::Stale(conflict) => Err(StoreError::Conflict(conflict.clone())),
            View::Unknown => Ok(None),
        })??;
        if let Some(known) = known {
            return Ok(known);
        }
        let found = self
            .discover(room)
            .await?
            .unwrap_or_else(|| Manifest::new(room, epoch));
        let head = Head::new(found.clone());
        let confirmed = head.confirmed;
        slot.with_view(|view| *view = View::Known(head))?;
        Ok((found, confirmed))
    }

    /// Creates the commit pack of `records`, numbered from `first`; returns its entry. The
    /// name taken already is a conflict, unless it holds exactly these bytes: then it is
    /// this commit's own earlier attempt, whose answer was lost, and the commit is durable.
    async fn write_commit(
        &self,
        room: &RoomId,
        epoch: u64,
        first: u64,
        records: &[Bytes],
    ) -> Result<PackEntry, StoreError> {
        let (bytes, index) = pack::encode_pack(epoch, first, records);
        let bytes = Bytes::from(bytes);
        let entry = PackEntry {
            name: commit_name(first),
            first,
            count: u32::try_from(records.len()).unwrap_or(u32::MAX),
            bytes: bytes.len() as u64,
        };
        let path = self.pack_path(room, &entry.name);
        if !self.create(&path, PutPayload::from(bytes.clone())).await? {
            let lost = || {
                StoreError::Conflict(Conflict::Pack {
                    path: path.to_string(),
                })
            };
            match self.objects.get(&path).await {
                Ok(found) => {
                    let stored = found.bytes().await.map_err(backend("get", &path))?;
                    if stored != bytes {
                        return Err(lost());
                    }
                }
                Err(object_store::Error::NotFound { .. }) => return Err(lost()),
                Err(e) => return Err(backend("get", &path)(e)),
            }
        }
        self.slot(room)?.remember_index(&entry.name, index);
        Ok(entry)
    }

    /// Writes `records`, numbered from `first`, as a merged pack under a fresh name (only a
    /// manifest makes it part of the room); returns its entry.
    pub(super) async fn write_pack(
        &self,
        room: &RoomId,
        epoch: u64,
        first: u64,
        records: &[Bytes],
    ) -> Result<PackEntry, StoreError> {
        let (bytes, index) = pack::encode_pack(epoch, first, records);
        let entry = PackEntry {
            name: pack_name(first),
            first,
            count: u32::try_from(records.len()).unwrap_or(u32::MAX),
            bytes: bytes.len() as u64,
        };
        let path = self.pack_path(room, &entry.name);
        if !self.create(&path, bytes.into()).await? {
            return Err(StoreError::Exists {
                path: path.to_string(),
            });
        }
        self.slot(room)?.remember_index(&entry.name, index);
        Ok(entry)
    }

    /// Reads the records of `seqs` (ascending arrival numbers) with range reads, located
    /// through the cached manifest. A pack merged away since (deleted after its grace period),
    /// or a number past the cached manifest, sends the read through the newest manifest once
    /// more.
    async fn fetch_records(&self, room: &RoomId, seqs: &[u64]) -> Result<Vec<Bytes>, StoreError> {
        match self.fetch_once(room, seqs, false).await {
            // Another writer may have added them, or a compaction merged their pack away.
            Err(StoreError::NotStored { .. } | StoreError::Missing { .. }) => {
                self.fetch_once(room, seqs, true).await
            }
            result => result,
        }
    }

    /// One attempt of [`fetch_records`](Self::fetch_records), through the newest manifest if
    /// `refresh` (or nothing is cached).
    async fn fetch_once(
        &self,
        room: &RoomId,
        seqs: &[u64],
        refresh: bool,
    ) -> Result<Vec<Bytes>, StoreError> {
        let Some(&first) = seqs.first() else {
            return Ok(Vec::new());
        };
        let slot = self.slot(room)?;
        let known = if refresh { None } else { slot.head()? };
        // Read through a fresh head, which is not kept: the room's writer owns its view.
        let manifest = match known {
            Some(manifest) => manifest,
            None => self
                .discover(room)
                .await?
                .ok_or(StoreError::NotStored { seq: first })?,
        };
        let (epoch, wanted) = (manifest.epoch, locate(&manifest, seqs)?);
        let mut out = Vec::with_capacity(seqs.len());
        for (entry, positions) in wanted {
            let path = self.pack_path(room, &entry.name);
            let missing = || StoreError::Missing {
                path: path.to_string(),
            };
            let short = || corrupt(&path)(FormatError::Mismatch("node count"));
            // Copies, not slices: a record kept in memory must not pin a whole read buffer.
            let Some(index) = slot.index(&entry.name) else {
                let (bytes, index) = self
                    .open_pack(room, &entry, epoch)
                    .await?
                    .ok_or_else(missing)?;
                for position in positions {
                    let record = index
                        .range(position)
                        .and_then(|r| bytes.get(r.start as usize..r.end as usize))
                        .ok_or_else(short)?;
                    out.push(Bytes::copy_from_slice(record));
                }
                continue;
            };
            let ranges: Option<Vec<_>> = positions.iter().map(|p| index.range(*p)).collect();
            let ranges = ranges.ok_or_else(short)?;
            match self.objects.get_ranges(&path, &ranges).await {
                Ok(parts) => out.extend(parts.iter().map(|p| Bytes::copy_from_slice(p))),
                Err(object_store::Error::NotFound { .. }) => return Err(missing()),
                Err(e) => return Err(backend("get", &path)(e)),
            }
        }
        Ok(out)
    }

    /// Forgets the room's head and record indexes, unless a compaction or checkpoint still
    /// works from them (it keeps the slot, and with it the room's single writer view).
    fn release(&self, room: &RoomId) {
        let Ok(mut rooms) = self.rooms.lock() else {
            return;
        };
        if let Some(slot) = rooms.get(room) {
            if slot.compacting.load(Ordering::Acquire) || slot.checkpointing.load(Ordering::Acquire)
            {
                slot.forget_indexes_all();
            } else {
                rooms.remove(room);
            }
        }
    }

    async fn check_store(&self) -> Result<StoreReport, StoreError> {
        // Reachable and writable: create, read back and delete a probe object.
        let probe = self
            .prefix
            .clone()
            .join(format!("weft-probe-{:016x}", rand::random::<u64>()));
        let payload = Bytes::from_static(b"weft store check");
        if !self.create(&probe, payload.clone().into()).await? {
            return Err(StoreError::Exists {
                path: probe.to_string(),
            });
        }
        // Commits are fenced by create-if-absent: a store that lets a second create through
        // could not keep two writers apart.
        if self.create(&probe, payload.clone().into()).await? {
            return Err(StoreError::NoConditionalCreate {
                path: probe.to_string(),
            });
        }
        let read = self.read_object(&probe).await?;
        self.objects
            .delete(&probe)
            .await
            .map_err(backend("delete", &probe))?;
        if read != payload {
            return Err(corrupt(&probe)(FormatError::ReadBack));
        }
        // The layout marker: written on first use, and it must match this relay's version.
        let marker = self.layout_path();
        let layout = match self.objects.get(&marker).await {
            Ok(found) => {
                let bytes = found.bytes().await.map_err(backend("get", &marker))?;
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| corrupt(&marker)(FormatError::Json(e)))?;
                value
                    .get("layout")
                    .and_then(serde_json::Value::as_u64)
                    .ok_or_else(|| corrupt(&marker)(FormatError::NoLayout))?
            }
            Err(object_store::Error::NotFound { .. }) => {
                let body = serde_json::json!({ "layout": LAYOUT_VERSION }).to_string();
                // Lost a race with another relay writing the same marker: same version.
                self.create(&marker, body.into_bytes().into()).await?;
                u64::from(LAYOUT_VERSION)
            }
            Err(e) => return Err(backend("get", &marker)(e)),
        };
        if layout != u64::from(LAYOUT_VERSION) {
            return Err(corrupt(&marker)(FormatError::Layout(layout)));
        }
        Ok(StoreReport {
            description: self.description.clone(),
            layout: LAYOUT_VERSION,
        })
    }
}

impl super::Store for PackStore {
    fn read<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> BoxFuture<'a, Result<Option<RoomReader<'a>>, StoreError>> {
        Box::pin(self.inner.read_room(room))
    }

    fn append<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: u64,
        records: &'a [Bytes],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.inner.append_records(room, epoch, records))
    }

    fn fetch<'a>(
        &'a self,
        room: &'a RoomId,
        seqs: &'a [u64],
    ) -> BoxFuture<'a, Result<Vec<Bytes>, StoreError>> {
        Box::pin(self.inner.fetch_records(room, seqs))
    }

    fn release(&self, room: &RoomId) {
        self.inner.release(room);
    }

    fn check(&self) -> BoxFuture<'_, Result<StoreReport, StoreError>> {
        Box::pin(self.inner.check_store())
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.shutdown())
    }

    fn describe(&self) -> String {
        self.inner.description.clone()
    }
}

/// The packs holding `seqs` (ascending), each with the positions of the wanted records in
/// it, in order.
fn locate(manifest: &Manifest, seqs: &[u64]) -> Result<Vec<(PackEntry, Vec<usize>)>, StoreError> {
    let mut wanted: Vec<(PackEntry, Vec<usize>)> = Vec::new();
    for &seq in seqs {
        let after = manifest.packs.partition_point(|p| p.first <= seq);
        let entry = after
            .checked_sub(1)
            .and_then(|i| manifest.packs.get(i))
            .filter(|p| seq - p.first < u64::from(p.count))
            .ok_or(StoreError::NotStored { seq })?;
        let position = usize::try_from(seq - entry.first).unwrap_or(usize::MAX);
        match wanted.last_mut() {
            Some((last, positions)) if last.name == entry.name => positions.push(position),
            _ => wanted.push((entry.clone(), vec![position])),
        }
    }
    Ok(wanted)
}

/// A fresh name for a merged pack starting at arrival number `first`.
fn pack_name(first: u64) -> String {
    format!("{first:020}-{:016x}.pack", rand::random::<u64>())
}

/// Maps an object_store error on `op` at `path` to [`StoreError::Backend`].
pub(super) fn backend(
    op: &'static str,
    path: &Path,
) -> impl FnOnce(object_store::Error) -> StoreError {
    let path = path.to_string();
    move |source| StoreError::Backend { op, path, source }
}

/// Maps a format error in the object at `path` to [`StoreError::Corrupt`].
pub(super) fn corrupt(path: &Path) -> impl Fn(FormatError) -> StoreError {
    let path = path.to_string();
    move |source| StoreError::Corrupt {
        path: path.clone(),
        source,
    }
}

/// Passes `result` on; a conflict also marks the room's view stale, so nothing more is
/// written from it until the room is read again.
fn stale_on_conflict<T>(slot: &RoomSlot, result: Result<T, StoreError>) -> Result<T, StoreError> {
    if let Err(StoreError::Conflict(conflict)) = &result {
        slot.with_view(|view| *view = View::Stale(conflict.clone()))?;
    }
    result
}
