//! Rooms in an object store (protocol/storage.md): immutable packs of accepted nodes, and a
//! manifest per room that is never overwritten — each new generation is created only if it
//! does not exist, which fences out a second relay writing the same room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::pack::{self, LAYOUT_VERSION, Manifest, PackEntry, RecordIndex};
use super::{RoomReader, StoreError, StoreReport};
use crate::node::RoomId;

/// Packs of one room read at the same time during a load, at most.
const LOAD_CONCURRENCY: usize = 8;

/// Bytes of packs a load reads ahead of the room (or one pack, if larger).
const LOAD_READ_AHEAD: u64 = 64 << 20;

/// Nodes decoded at a time during a load.
const LOAD_CHUNK: usize = 4096;

/// Consecutive packs of one size tier are merged into one pack of the next tier once there
/// are this many: a room is a logarithmic number of objects, and each byte is rewritten about
/// once per tier.
const COMPACT_RUN: usize = 16;

/// How long merged packs stay readable after the manifest that replaced them.
const MERGED_PACK_GRACE: Duration = Duration::from_secs(30);

/// An unreferenced pack older than this is garbage: left by a writer that stopped between its
/// pack and its manifest, or during a merge's grace period. Younger ones may be a commit in
/// flight.
const GARBAGE_AGE: Duration = Duration::from_secs(3600);

/// Packs this large are left as they are.
const LARGE_PACK_BYTES: u64 = 64 * 1024 * 1024;

/// Rooms stored as packs and manifests in any [`ObjectStore`]. Cheap to clone.
#[derive(Clone)]
pub struct PackStore {
    inner: Arc<Packs>,
}

struct Packs {
    objects: Arc<dyn ObjectStore>,
    prefix: Path,
    /// What the store is, for logs and `weft store check`.
    description: String,
    rooms: Mutex<HashMap<RoomId, Arc<RoomSlot>>>,
}

/// What this process knows of one stored room.
#[derive(Default)]
struct RoomSlot {
    /// The last manifest read or written: the next change creates its successor. Held across
    /// a manifest write, so an append and a compaction never race for a generation.
    manifest: tokio::sync::Mutex<Option<Manifest>>,
    /// A compaction of this room is running.
    compacting: AtomicBool,
    /// Where the records of the room's packs lie, by pack name, for range reads: learnt when
    /// a pack is written or read whole.
    indexes: Mutex<HashMap<String, Arc<RecordIndex>>>,
}

impl RoomSlot {
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

    fn forget_indexes<'a>(&self, packs: impl IntoIterator<Item = &'a PackEntry>) {
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
}

impl Packs {
    fn room_dir(&self, room: &RoomId) -> Path {
        // Room ids may be "." or "..", which are not valid path segments on their own.
        self.prefix
            .clone()
            .join("rooms")
            .join(format!("r-{}", room.as_str()))
    }

    fn manifest_path(&self, room: &RoomId, generation: u64) -> Path {
        self.room_dir(room)
            .join("manifest")
            .join(format!("{generation:020}.json"))
    }

    fn pack_path(&self, room: &RoomId, name: &str) -> Path {
        self.room_dir(room).join("packs").join(name)
    }

    fn layout_path(&self) -> Path {
        self.prefix.clone().join("weft-layout.json")
    }

    fn slot(&self, room: &RoomId) -> Result<Arc<RoomSlot>, StoreError> {
        let mut rooms = self.rooms.lock().map_err(|_| poisoned())?;
        Ok(rooms.entry(room.clone()).or_default().clone())
    }

    /// The newest manifest of a room, or `None` if the room was never written.
    async fn newest_manifest(&self, room: &RoomId) -> Result<Option<Manifest>, StoreError> {
        let dir = self.room_dir(room).join("manifest");
        let listed: Vec<_> = self
            .objects
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(backend)?;
        let newest = listed
            .iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?;
                name.strip_suffix(".json")?.parse::<u64>().ok()
            })
            .max();
        let Some(generation) = newest else {
            return Ok(None);
        };
        let path = self.manifest_path(room, generation);
        let bytes = self.read_object(&path).await?;
        let manifest = Manifest::decode(&bytes, room)
            .map_err(|e| StoreError::Corrupt(format!("{path}: {e}")))?;
        if manifest.generation != generation {
            return Err(StoreError::Corrupt(format!(
                "{path}: says generation {}",
                manifest.generation
            )));
        }
        Ok(Some(manifest))
    }

    /// An object's whole contents.
    async fn read_object(&self, path: &Path) -> Result<bytes::Bytes, StoreError> {
        let found = self.objects.get(path).await.map_err(backend)?;
        found.bytes().await.map_err(backend)
    }

    /// Reads a whole pack without decoding it: its bytes and record index, remembered.
    /// `None` if the object does not exist.
    async fn open_pack(
        &self,
        room: &RoomId,
        entry: &PackEntry,
        epoch: u64,
    ) -> Result<Option<(Bytes, Arc<RecordIndex>)>, StoreError> {
        let path = self.pack_path(room, &entry.name);
        let bytes = match self.objects.get(&path).await {
            Ok(found) => found.bytes().await.map_err(backend)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        let corrupt = |e: pack::FormatError| StoreError::Corrupt(format!("{path}: {e}"));
        let (header, index) = pack::open_pack(&bytes).map_err(corrupt)?;
        pack::check_pack(header, entry, epoch).map_err(corrupt)?;
        let index = self.slot(room)?.remember_index(&entry.name, index);
        Ok(Some((bytes, index)))
    }

    async fn read_room<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> Result<Option<RoomReader<'a>>, StoreError> {
        let Some(manifest) = self.newest_manifest(room).await? else {
            return Ok(None);
        };
        let epoch = manifest.epoch;
        let entries = manifest.packs.clone();
        *self.slot(room)?.manifest.lock().await = Some(manifest);
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
                let opened = self.open_pack(room, &entry, epoch).await?;
                let (bytes, index) = opened
                    .ok_or_else(|| StoreError::Backend(format!("{path} is listed but missing")))?;
                let chunks = (0..index.len()).step_by(LOAD_CHUNK).map(move |start| {
                    let end = (start + LOAD_CHUNK).min(index.len());
                    pack::decode_records(&bytes, &index, start..end)
                        .map_err(|e| StoreError::Corrupt(format!("{path}: {e}")))
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
        let mut cached = slot.manifest.lock().await;
        let current = match cached.take() {
            Some(manifest) => manifest,
            None => self
                .newest_manifest(room)
                .await?
                .unwrap_or_else(|| Manifest::new(room, epoch)),
        };
        if current.epoch != epoch {
            return Err(StoreError::Conflict(format!(
                "room is stored in epoch {}, not {epoch}",
                current.epoch
            )));
        }
        let entry = match self
            .write_pack(room, epoch, current.next_seq(), records)
            .await
        {
            Ok(entry) => entry,
            Err(e) => {
                *cached = Some(current);
                return Err(e);
            }
        };
        let mut next = current.clone();
        next.packs.push(entry);
        let next = match self.publish(room, &current, next).await {
            Ok(next) => next,
            Err(e) => {
                // On a conflict the view is stale: leave the cache empty so the next call
                // reads what the other writer made. On other errors keep it.
                if !matches!(e, StoreError::Conflict(_)) {
                    *cached = Some(current);
                }
                return Err(e);
            }
        };
        let compact = compaction_run(&next).is_some();
        *cached = Some(next);
        drop(cached);
        if compact && !slot.compacting.swap(true, Ordering::AcqRel) {
            let packs = self.clone();
            let room = room.clone();
            tokio::spawn(async move { packs.compact_while_needed(&room, &slot).await });
        }
        Ok(())
    }

    /// Runs compactions of a room until none is due; the caller set `slot.compacting`.
    async fn compact_while_needed(&self, room: &RoomId, slot: &RoomSlot) {
        loop {
            // Appends that came in meanwhile may have made another run: merge until none.
            loop {
                match self.compact(room).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, %room, "compaction failed; retried later");
                        slot.compacting.store(false, Ordering::Release);
                        return;
                    }
                }
            }
            slot.compacting.store(false, Ordering::Release);
            // An append that made a run after the last check saw the flag still set and left
            // it to us: look once more, and carry on unless someone else took over.
            let due = slot
                .manifest
                .lock()
                .await
                .as_ref()
                .is_some_and(|m| compaction_run(m).is_some());
            if !due || slot.compacting.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    /// Deletes the room's unreferenced packs older than [`GARBAGE_AGE`]. Best effort: runs
    /// after compactions, and a failure only leaves garbage for the next one.
    #[allow(clippy::disallowed_methods)] // The store is runtime code: it owns the clock.
    async fn collect_garbage(&self, room: &RoomId) {
        let referenced: Vec<String> = match self.slot(room) {
            Ok(slot) => match slot.manifest.lock().await.as_ref() {
                Some(manifest) => manifest.packs.iter().map(|p| p.name.clone()).collect(),
                None => return,
            },
            Err(_) => return,
        };
        let dir = self.room_dir(room).join("packs");
        let Ok(listed) = self.objects.list(Some(&dir)).try_collect::<Vec<_>>().await else {
            return;
        };
        let listed: Vec<(String, std::time::SystemTime)> = listed
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_owned();
                Some((name, std::time::SystemTime::from(meta.last_modified)))
            })
            .collect();
        for name in garbage(&listed, &referenced, std::time::SystemTime::now()) {
            let path = self.pack_path(room, &name);
            if let Err(e) = self.objects.delete(&path).await {
                tracing::debug!(error = %e, %path, "garbage pack not deleted");
            }
        }
    }

    /// Writes `records`, numbered from `first`, as a new pack; returns its manifest entry.
    async fn write_pack(
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
        if !self.create(&path, bytes).await? {
            return Err(StoreError::Backend(format!("{path} exists already")));
        }
        self.slot(room)?.remember_index(&entry.name, index);
        Ok(entry)
    }

    /// Creates manifest generation `current + 1` with `next`'s packs; the caller holds the
    /// room's manifest lock. A generation that exists already means another writer: conflict.
    async fn publish(
        &self,
        room: &RoomId,
        current: &Manifest,
        mut next: Manifest,
    ) -> Result<Manifest, StoreError> {
        next.generation = current.generation + 1;
        let path = self.manifest_path(room, next.generation);
        if !self.create(&path, next.encode()).await? {
            return Err(StoreError::Conflict(format!(
                "{path} was created by another writer"
            )));
        }
        self.forget_manifest(room, next.generation.saturating_sub(2));
        Ok(next)
    }

    /// Merges the room's trailing run of small packs into one, in the background of the room:
    /// the reading and writing happen outside the manifest lock, which is only taken to
    /// publish the new manifest. The merged packs are deleted afterwards. `Ok(true)` if it
    /// merged a run.
    async fn compact(&self, room: &RoomId) -> Result<bool, StoreError> {
        let slot = self.slot(room)?;
        let (epoch, run) = {
            let cached = slot.manifest.lock().await;
            let Some(manifest) = cached.as_ref() else {
                return Ok(false);
            };
            let Some(run) = compaction_run(manifest) else {
                return Ok(false);
            };
            (manifest.epoch, run.to_vec())
        };
        let mut records = Vec::new();
        for entry in &run {
            let Some((bytes, index)) = self.open_pack(room, entry, epoch).await? else {
                return Err(StoreError::Backend(format!(
                    "pack {} is missing",
                    entry.name
                )));
            };
            records.extend(pack::records(&bytes, &index));
        }
        let first = run.first().map_or(1, |entry| entry.first);
        let merged = self.write_pack(room, epoch, first, &records).await?;
        let mut cached = slot.manifest.lock().await;
        let Some(current) = cached.take() else {
            return Ok(false);
        };
        // Appends only add packs at the end, so the run is still where it was.
        let start = run
            .first()
            .and_then(|head| current.packs.iter().position(|p| p.name == head.name));
        let still_there = start.is_some_and(|start| {
            current.packs.get(start..start + run.len()) == Some(run.as_slice())
        });
        let Some(start) = start.filter(|_| still_there) else {
            *cached = Some(current);
            return Ok(false);
        };
        let mut next = current.clone();
        next.packs.splice(start..start + run.len(), [merged]);
        match self.publish(room, &current, next).await {
            Ok(next) => {
                *cached = Some(next);
                slot.forget_indexes(&run);
            }
            Err(e) => {
                if !matches!(e, StoreError::Conflict(_)) {
                    *cached = Some(current);
                }
                return Err(e);
            }
        }
        drop(cached);
        // A reader that listed the previous manifest a moment ago may still be reading these
        // packs: delete them only after a grace period. (A relay that stops before leaves
        // them unreferenced, which readers ignore.)
        let objects = self.objects.clone();
        let paths: Vec<Path> = run.iter().map(|e| self.pack_path(room, &e.name)).collect();
        tokio::spawn(async move {
            tokio::time::sleep(MERGED_PACK_GRACE).await;
            for path in paths {
                if let Err(e) = objects.delete(&path).await {
                    tracing::debug!(error = %e, %path, "merged pack not deleted");
                }
            }
        });
        tracing::debug!(%room, packs = run.len(), nodes = records.len(), "compacted");
        self.collect_garbage(room).await;
        Ok(true)
    }

    /// Reads the records of `seqs` (ascending arrival numbers) with range reads, located
    /// through the cached manifest. A pack merged away since (deleted after its grace period),
    /// or a number past the cached manifest, sends the read through the newest manifest once
    /// more.
    async fn fetch_records(&self, room: &RoomId, seqs: &[u64]) -> Result<Vec<Bytes>, StoreError> {
        match self.fetch_once(room, seqs, false).await? {
            Some(records) => Ok(records),
            None => self.fetch_once(room, seqs, true).await?.ok_or_else(|| {
                StoreError::Backend("a pack of the newest manifest is missing".into())
            }),
        }
    }

    /// One attempt of [`fetch_records`](Self::fetch_records); `Ok(None)` if a pack is gone or
    /// (unless `refresh`) a number is not in the cached manifest.
    async fn fetch_once(
        &self,
        room: &RoomId,
        seqs: &[u64],
        refresh: bool,
    ) -> Result<Option<Vec<Bytes>>, StoreError> {
        let slot = self.slot(room)?;
        let (epoch, wanted) = {
            let mut cached = slot.manifest.lock().await;
            if refresh || cached.is_none() {
                *cached = self.newest_manifest(room).await?;
            }
            let Some(manifest) = cached.as_ref() else {
                return Err(StoreError::Corrupt(format!("room {room} is not stored")));
            };
            match locate(manifest, seqs) {
                Ok(wanted) => (manifest.epoch, wanted),
                // Another writer may have added them: look at the newest manifest.
                Err(_) if !refresh => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        let mut out = Vec::with_capacity(seqs.len());
        for (entry, positions) in wanted {
            // Copies, not slices: a record kept in memory must not pin a whole read buffer.
            let Some(index) = slot.index(&entry.name) else {
                let Some((bytes, index)) = self.open_pack(room, &entry, epoch).await? else {
                    return Ok(None);
                };
                for position in positions {
                    let record = index
                        .range(position)
                        .and_then(|r| bytes.get(r.start as usize..r.end as usize))
                        .ok_or_else(|| short_pack(&entry))?;
                    out.push(Bytes::copy_from_slice(record));
                }
                continue;
            };
            let ranges: Option<Vec<_>> = positions.iter().map(|p| index.range(*p)).collect();
            let ranges = ranges.ok_or_else(|| short_pack(&entry))?;
            let path = self.pack_path(room, &entry.name);
            match self.objects.get_ranges(&path, &ranges).await {
                Ok(parts) => out.extend(parts.iter().map(|p| Bytes::copy_from_slice(p))),
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(Some(out))
    }

    /// Forgets the room's cached manifest and record indexes, unless a compaction still
    /// works from them (it keeps the slot, and with it the room's single writer view).
    fn release(&self, room: &RoomId) {
        let Ok(mut rooms) = self.rooms.lock() else {
            return;
        };
        if let Some(slot) = rooms.get(room) {
            if slot.compacting.load(Ordering::Acquire) {
                slot.forget_indexes_all();
            } else {
                rooms.remove(room);
            }
        }
    }

    /// Creates an object that must not exist yet; `Ok(false)` if it does.
    async fn create(&self, path: &Path, bytes: Vec<u8>) -> Result<bool, StoreError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .objects
            .put_opts(path, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    /// Deletes an old manifest generation in the background: loads read only the newest, and
    /// keeping one older one helps an operator see what changed last.
    fn forget_manifest(&self, room: &RoomId, generation: u64) {
        if generation == 0 {
            return;
        }
        let objects = self.objects.clone();
        let path = self.manifest_path(room, generation);
        tokio::spawn(async move {
            if let Err(e) = objects.delete(&path).await {
                tracing::debug!(error = %e, %path, "old manifest not deleted");
            }
        });
    }

    async fn check_store(&self) -> Result<StoreReport, StoreError> {
        // Reachable and writable: create, read back and delete a probe object.
        let probe = self
            .prefix
            .clone()
            .join(format!("weft-probe-{:016x}", rand::random::<u64>()));
        let payload = b"weft store check".to_vec();
        if !self.create(&probe, payload.clone()).await? {
            return Err(StoreError::Backend(format!("{probe} exists already")));
        }
        let read = self.read_object(&probe).await?;
        self.objects.delete(&probe).await.map_err(backend)?;
        if read.as_ref() != payload.as_slice() {
            return Err(StoreError::Corrupt(
                "probe object read back differently".into(),
            ));
        }
        // The layout marker: written on first use, and it must match this relay's version.
        let marker = self.layout_path();
        let layout = match self.objects.get(&marker).await {
            Ok(found) => {
                let bytes = found.bytes().await.map_err(backend)?;
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("{marker}: {e}")))?;
                let layout = value
                    .get("layout")
                    .and_then(serde_json::Value::as_u64)
                    .ok_or_else(|| StoreError::Corrupt(format!("{marker}: no layout")))?;
                u32::try_from(layout).unwrap_or(u32::MAX)
            }
            Err(object_store::Error::NotFound { .. }) => {
                let body = serde_json::json!({ "layout": LAYOUT_VERSION }).to_string();
                // Lost a race with another relay writing the same marker: same version.
                self.create(&marker, body.into_bytes()).await?;
                LAYOUT_VERSION
            }
            Err(e) => return Err(backend(e)),
        };
        if layout != LAYOUT_VERSION {
            return Err(StoreError::Corrupt(format!(
                "store layout version {layout}; this relay reads {LAYOUT_VERSION}"
            )));
        }
        Ok(StoreReport {
            description: self.description.clone(),
            layout,
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

    fn describe(&self) -> String {
        self.inner.description.clone()
    }
}

/// Packs in `listed` (name, last modified) that `referenced` does not name and that are older
/// than [`GARBAGE_AGE`] at `now`.
fn garbage(
    listed: &[(String, std::time::SystemTime)],
    referenced: &[String],
    now: std::time::SystemTime,
) -> Vec<String> {
    listed
        .iter()
        .filter(|(name, modified)| {
            name.ends_with(".pack")
                && !referenced.contains(name)
                && now
                    .duration_since(*modified)
                    .is_ok_and(|age| age > GARBAGE_AGE)
        })
        .map(|(name, _)| name.clone())
        .collect()
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
            .ok_or_else(|| {
                StoreError::Corrupt(format!("node {seq} is in no pack of the manifest"))
            })?;
        let position = usize::try_from(seq - entry.first).unwrap_or(usize::MAX);
        match wanted.last_mut() {
            Some((last, positions)) if last.name == entry.name => positions.push(position),
            _ => wanted.push((entry.clone(), vec![position])),
        }
    }
    Ok(wanted)
}

fn short_pack(entry: &PackEntry) -> StoreError {
    StoreError::Corrupt(format!("pack {} has fewer records than listed", entry.name))
}

/// A fresh pack name starting at arrival number `first`.
fn pack_name(first: u64) -> String {
    format!("{first:020}-{:016x}.pack", rand::random::<u64>())
}

/// A pack's size tier: under 4 KiB, under 64 KiB, under 1 MiB, … (factors of 16); `None`
/// for packs that are never merged again.
fn tier(bytes: u64) -> Option<u32> {
    let units = bytes / 4096;
    (bytes < LARGE_PACK_BYTES).then(|| if units == 0 { 0 } else { units.ilog(16) + 1 })
}

/// The newest run of at least [`COMPACT_RUN`] consecutive packs of one tier, if any.
fn compaction_run(manifest: &Manifest) -> Option<&[PackEntry]> {
    let packs = &manifest.packs;
    let mut end = packs.len();
    while let Some(before) = packs.get(..end).filter(|before| !before.is_empty()) {
        let last = before.last().and_then(|p| tier(p.bytes));
        let len = before
            .iter()
            .rev()
            .take_while(|p| tier(p.bytes) == last)
            .count();
        if last.is_some() && len >= COMPACT_RUN {
            return before.get(end - len..);
        }
        end -= len;
    }
    None
}

fn backend(e: object_store::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn poisoned() -> StoreError {
    StoreError::Backend("manifest cache lock poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(sizes: &[u64]) -> Manifest {
        let mut manifest = Manifest::new(&RoomId::new("t").unwrap(), 1);
        for (i, bytes) in sizes.iter().enumerate() {
            manifest.packs.push(PackEntry {
                name: format!("p{i}"),
                first: i as u64 + 1,
                count: 1,
                bytes: *bytes,
            });
        }
        manifest
    }

    fn run_names(sizes: &[u64]) -> Option<(String, usize)> {
        let manifest = manifest(sizes);
        compaction_run(&manifest).map(|run| (run[0].name.clone(), run.len()))
    }

    #[test]
    fn only_old_unreferenced_packs_are_garbage() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let old = now - GARBAGE_AGE - Duration::from_secs(1);
        let young = now - Duration::from_secs(5);
        let listed = vec![
            ("kept.pack".to_owned(), old),
            ("orphan.pack".to_owned(), old),
            ("in-flight.pack".to_owned(), young),
            ("notes.txt".to_owned(), old),
        ];
        let referenced = vec!["kept.pack".to_owned()];
        assert_eq!(garbage(&listed, &referenced, now), vec!["orphan.pack"]);
    }

    #[test]
    fn tiers_grow_by_sixteen() {
        assert_eq!(tier(0), Some(0));
        assert_eq!(tier(4095), Some(0));
        assert_eq!(tier(4096), Some(1));
        assert_eq!(tier(65_535), Some(1));
        assert_eq!(tier(65_536), Some(2));
        assert_eq!(tier(LARGE_PACK_BYTES), None);
    }

    #[test]
    fn the_newest_long_run_of_one_tier_is_merged() {
        // Fifteen small packs: not yet.
        assert_eq!(run_names(&[100; 15]), None);
        // Sixteen: all of them.
        assert_eq!(run_names(&[100; 16]), Some(("p0".into(), 16)));
        // A larger pack, then sixteen small ones: only the small ones.
        let mut sizes = vec![200_000];
        sizes.extend([100; 16]);
        assert_eq!(run_names(&sizes), Some(("p1".into(), 16)));
        // Sixteen mid-size packs followed by a few small ones: the mid-size run.
        let mut sizes = vec![10_000; 16];
        sizes.extend([100; 3]);
        assert_eq!(run_names(&sizes), Some(("p0".into(), 16)));
        // Large packs are never merged.
        assert_eq!(run_names(&[LARGE_PACK_BYTES; 20]), None);
    }
}
