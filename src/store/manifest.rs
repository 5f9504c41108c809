//! A room's manifests in the object store (protocol/storage.md, "Manifests" and
//! "Checkpoints"): one object per generation, found by listing; each new generation is created
//! only if it does not exist yet, so two writers never both publish one; old generations are
//! deleted in the background, one kept behind the newest.

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::objects::{Packs, backend};
use super::pack::{FormatError, Manifest};
use super::{Conflict, StoreError};
use crate::node::RoomId;

impl Packs {
    /// Where generation `generation` of the room's manifest lives.
    pub(super) fn manifest_path(&self, room: &RoomId, generation: u64) -> Path {
        self.room_dir(room)
            .join("manifest")
            .join(format!("{generation:020}.json"))
    }

    /// The newest manifest generation of a room, or `None` if it has none.
    pub(super) async fn newest_generation(&self, room: &RoomId) -> Result<Option<u64>, StoreError> {
        let dir = self.room_dir(room).join("manifest");
        let listed: Vec<_> = self
            .objects
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(backend("list", &dir))?;
        Ok(listed
            .iter()
            .filter_map(|meta| generation_of(meta.location.filename()?))
            .max())
    }

    /// The newest manifest of a room, or `None` if it has none.
    pub(super) async fn newest_manifest(
        &self,
        room: &RoomId,
    ) -> Result<Option<Manifest>, StoreError> {
        let Some(generation) = self.newest_generation(room).await? else {
            return Ok(None);
        };
        let path = self.manifest_path(room, generation);
        let bytes = self.read_object(&path).await?;
        let corrupt = |source| StoreError::Corrupt {
            path: path.to_string(),
            source,
        };
        let manifest = Manifest::decode(&bytes, room).map_err(corrupt)?;
        if manifest.generation != generation {
            return Err(corrupt(FormatError::Generation {
                named: generation,
                found: manifest.generation,
            }));
        }
        Ok(Some(manifest))
    }

    /// Creates manifest generation `snapshot.generation + 1` listing `snapshot`'s packs, and
    /// returns that generation; the caller holds the room's publish lock. A generation that
    /// exists already means another writer: conflict.
    pub(super) async fn publish(
        &self,
        room: &RoomId,
        snapshot: &Manifest,
    ) -> Result<u64, StoreError> {
        let mut next = snapshot.clone();
        next.generation = snapshot.generation.saturating_add(1);
        let path = self.manifest_path(room, next.generation);
        if !self.create(&path, next.encode().into()).await? {
            return Err(StoreError::Conflict(Conflict::Generation {
                path: path.to_string(),
            }));
        }
        self.forget_manifest(room, next.generation.saturating_sub(2));
        Ok(next.generation)
    }

    /// Creates an object that must not exist yet; `Ok(false)` if it does.
    pub(super) async fn create(
        &self,
        path: &Path,
        payload: PutPayload,
    ) -> Result<bool, StoreError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self.objects.put_opts(path, payload, options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(backend("put", path)(e)),
        }
    }

    /// Deletes an old manifest generation in the background: loads read only the newest, and
    /// keeping one older one helps an operator see what changed last. Shutdown may cut it
    /// short; the generation then stays, which readers do not mind.
    fn forget_manifest(&self, room: &RoomId, generation: u64) {
        if generation == 0 {
            return;
        }
        let objects = self.objects.clone();
        let path = self.manifest_path(room, generation);
        self.background(async move {
            if let Err(e) = objects.delete(&path).await {
                tracing::debug!(error = %e, %path, "old manifest not deleted");
            }
        });
    }
}

/// The generation a manifest object's name says (`{generation:020}.json`), if it is one.
fn generation_of(name: &str) -> Option<u64> {
    name.strip_suffix(".json")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_manifest_names_have_a_generation() {
        assert_eq!(generation_of("00000000000000000042.json"), Some(42));
        assert_eq!(generation_of("00000000000000000042.json.tmp"), None);
        assert_eq!(generation_of("notes.json"), None);
        assert_eq!(generation_of("00000000000000000042"), None);
    }
}
