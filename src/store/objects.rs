//! Rooms in an object store (protocol/storage.md): immutable packs of accepted nodes, and a
//! manifest per room that is never overwritten — each new generation is created only if it
//! does not exist, which fences out a second relay writing the same room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::pack::{self, LAYOUT_VERSION, Manifest, PackEntry};
use super::{StoreError, StoreReport, StoredRoom};
use crate::node::{Node, RoomId};

/// Packs of one room read at the same time during a load.
const LOAD_CONCURRENCY: usize = 8;

/// Rooms stored as packs and manifests in any [`ObjectStore`].
pub struct PackStore {
    objects: Arc<dyn ObjectStore>,
    prefix: Path,
    /// What the store is, for logs and `weft store check`.
    description: String,
    /// The last manifest read or written per room: the next append creates its successor.
    manifests: Mutex<HashMap<RoomId, Manifest>>,
}

impl PackStore {
    /// Rooms under `prefix` in `objects`.
    pub fn new(objects: Arc<dyn ObjectStore>, prefix: Path, description: String) -> Self {
        Self {
            objects,
            prefix,
            description,
            manifests: Mutex::new(HashMap::new()),
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

    fn layout_path(&self) -> Path {
        self.prefix.clone().join("weft-layout.json")
    }

    fn cached(&self, room: &RoomId) -> Result<Option<Manifest>, StoreError> {
        let manifests = self.manifests.lock().map_err(|_| poisoned())?;
        Ok(manifests.get(room).cloned())
    }

    fn remember(&self, room: &RoomId, manifest: Manifest) -> Result<(), StoreError> {
        let mut manifests = self.manifests.lock().map_err(|_| poisoned())?;
        manifests.insert(room.clone(), manifest);
        Ok(())
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
        let bytes = self
            .objects
            .get(&path)
            .await
            .map_err(backend)?
            .bytes()
            .await
            .map_err(backend)?;
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

    async fn read_pack(
        &self,
        room: &RoomId,
        entry: &PackEntry,
        epoch: u64,
    ) -> Result<Vec<Node>, StoreError> {
        let path = self.room_dir(room).join("packs").join(entry.name.as_str());
        let bytes = self
            .objects
            .get(&path)
            .await
            .map_err(backend)?
            .bytes()
            .await
            .map_err(backend)?;
        let corrupt = |e: pack::FormatError| StoreError::Corrupt(format!("{path}: {e}"));
        let (header, nodes) = pack::decode_pack(&bytes, room).map_err(corrupt)?;
        pack::check_pack(header, entry, epoch).map_err(corrupt)?;
        Ok(nodes)
    }

    async fn load_room(&self, room: &RoomId) -> Result<Option<StoredRoom>, StoreError> {
        let Some(manifest) = self.newest_manifest(room).await? else {
            return Ok(None);
        };
        let epoch = manifest.epoch;
        let packs: Vec<Vec<Node>> = futures::stream::iter(manifest.packs.clone())
            .map(|entry| async move { self.read_pack(room, &entry, epoch).await })
            .buffered(LOAD_CONCURRENCY)
            .try_collect()
            .await?;
        self.remember(room, manifest)?;
        Ok(Some(StoredRoom {
            epoch,
            nodes: packs.into_iter().flatten().collect(),
        }))
    }

    async fn append_nodes(
        &self,
        room: &RoomId,
        epoch: u64,
        nodes: &[Node],
    ) -> Result<(), StoreError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let current = match self.cached(room)? {
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
        let first = current.next_seq();
        let (bytes, _) = pack::encode_pack(epoch, first, nodes);
        let name = format!("{first:020}-{:016x}.pack", rand::random::<u64>());
        let size = bytes.len() as u64;
        let path = self.room_dir(room).join("packs").join(name.as_str());
        if !self.create(&path, bytes).await? {
            return Err(StoreError::Backend(format!("{path} exists already")));
        }
        let mut next = current.clone();
        next.generation += 1;
        next.packs.push(PackEntry {
            name,
            first,
            count: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
            bytes: size,
        });
        let manifest_path = self.manifest_path(room, next.generation);
        if !self.create(&manifest_path, next.encode()).await? {
            // Someone else wrote this room since we read it. Forget our view so a reload
            // starts from theirs.
            self.manifests.lock().map_err(|_| poisoned())?.remove(room);
            return Err(StoreError::Conflict(format!(
                "{manifest_path} was created by another writer"
            )));
        }
        let generation = next.generation;
        self.remember(room, next)?;
        self.forget_manifest(room, generation.saturating_sub(2));
        Ok(())
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
        let read = self
            .objects
            .get(&probe)
            .await
            .map_err(backend)?
            .bytes()
            .await
            .map_err(backend)?;
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
    fn load<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> BoxFuture<'a, Result<Option<StoredRoom>, StoreError>> {
        Box::pin(self.load_room(room))
    }

    fn append<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: u64,
        nodes: &'a [Node],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.append_nodes(room, epoch, nodes))
    }

    fn check(&self) -> BoxFuture<'_, Result<StoreReport, StoreError>> {
        Box::pin(self.check_store())
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

fn backend(e: object_store::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn poisoned() -> StoreError {
    StoreError::Backend("manifest cache lock poisoned".into())
}
