//! A room's head (protocol/storage.md, "Writing", "Recovery" and "Checkpoints"): what this
//! process knows of a stored room, which is the newest manifest followed by the commit packs
//! written after it. A commit is one create-if-absent put of a pack named by its first arrival
//! number, so the pack is the fence and the ack follows that one write; manifests are
//! checkpoints written in the background, and a load rebuilds the head from the newest one
//! plus the commit packs that chain on from its end.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tokio::time::Instant;

use super::objects::{Packs, RoomSlot, backend, corrupt};
use super::pack::{self, FormatError, Manifest, PackEntry};
use super::{Conflict, StoreError};
use crate::node::RoomId;

/// How long after a commit the head is checkpointed into a manifest: the commits of that
/// time share one manifest write.
const CHECKPOINT_DELAY: Duration = Duration::from_millis(200);

/// How long a head is trusted without asking the store again. A writer whose head is older
/// confirms it first (one listing of the manifests and one of the packs after its end): a
/// merged-away commit pack is deleted no sooner than [`MERGED_PACK_GRACE`] after the
/// manifest that replaced it, so a writer that confirmed within this time cannot create a
/// commit pack under a name another writer used and has since deleted.
///
/// [`MERGED_PACK_GRACE`]: super::compact::MERGED_PACK_GRACE
pub(super) const HEAD_TRUST: Duration = Duration::from_secs(10);

/// What this process knows of one room's stored state.
pub(super) enum View {
    /// Not read yet: the next use reads it from the store.
    Unknown,
    /// Read or written by this process.
    Known(Head),
    /// Another writer changed the room. Nothing more is written from this view; the next
    /// read of the room starts over.
    Stale(Conflict),
}

/// A room as this process knows it.
pub(super) struct Head {
    /// The room's packs in arrival order, the newest manifest's followed by the commit packs
    /// after it; `generation` is the newest manifest generation known to exist.
    pub(super) manifest: Manifest,
    /// Some packs of `manifest` are in no manifest yet: a checkpoint is wanted.
    pub(super) checkpoint_due: bool,
    /// When the store last confirmed this head: a load, or a pack create that succeeded.
    pub(super) confirmed: Instant,
}

impl Head {
    pub(super) fn new(manifest: Manifest) -> Self {
        Self {
            manifest,
            checkpoint_due: false,
            confirmed: Instant::now(),
        }
    }
}

/// The name of the commit pack whose first arrival number is `first`.
pub(super) fn commit_name(first: u64) -> String {
    format!("{first:020}.pack")
}

/// The first arrival number a commit pack's name (`{first:020}.pack`) says, if it is one.
fn commit_first(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".pack")?;
    let all_digits = digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit());
    all_digits.then(|| digits.parse().ok()).flatten()
}

/// The first arrival number any pack's name starts with (commit packs, and merged or older
/// packs named `{first:020}-{nonce}.pack`).
pub(super) fn pack_first(name: &str) -> Option<u64> {
    let digits = name.get(..20)?;
    let rest = name.get(20..)?;
    let shaped = rest == ".pack" || (rest.starts_with('-') && rest.ends_with(".pack"));
    (shaped && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// A pack object found by listing.
struct Listed {
    first: u64,
    name: String,
    bytes: u64,
    commit: bool,
}

impl Packs {
    /// Rebuilds the room's head from the store: the newest manifest, then the commit packs
    /// that chain on from its end (protocol/storage.md, "Recovery"). `None` if the room was
    /// never written.
    pub(super) async fn discover(&self, room: &RoomId) -> Result<Option<Manifest>, StoreError> {
        let manifest = self.newest_manifest(room).await?;
        let next = manifest.as_ref().map_or(1, Manifest::next_seq);
        let mut tail: Vec<Listed> = self.packs_from(room, next).await?;
        tail.retain(|p| p.commit);
        tail.sort_by_key(|p| p.first);
        let (Some(head), Some(last)) = (tail.first(), tail.last()) else {
            return Ok(manifest);
        };
        let dir = self.room_dir(room).join("packs");
        if head.first != next {
            // Commit packs start only where a pack ended, so this is a hole in the chain.
            return Err(corrupt(&dir)(FormatError::Gap {
                pack: head.name.clone(),
                next,
            }));
        }
        let epoch = match &manifest {
            Some(manifest) => manifest.epoch,
            None => self.header(room, &head.name).await?.epoch,
        };
        // Each pack's count follows from the next pack's name; the last one's from its
        // header. A load checks every header against these entries.
        let last_header = self.header(room, &last.name).await?;
        let path = self.pack_path(room, &last.name);
        if last_header.first != last.first || last_header.epoch != epoch {
            return Err(corrupt(&path)(FormatError::Mismatch(
                "header of the last pack",
            )));
        }
        let mut manifest = manifest.unwrap_or_else(|| Manifest::new(room, epoch));
        for (i, pack) in tail.iter().enumerate() {
            let count = match tail.get(i + 1) {
                Some(following) => following.first - pack.first,
                None => u64::from(last_header.count),
            };
            let count = u32::try_from(count)
                .ok()
                .filter(|count| *count > 0)
                .ok_or_else(|| corrupt(&path)(FormatError::Mismatch("node count")))?;
            manifest.packs.push(PackEntry {
                name: pack.name.clone(),
                first: pack.first,
                count,
                bytes: pack.bytes,
            });
        }
        Ok(Some(manifest))
    }

    /// The room's pack objects whose names start at arrival number `from` or later.
    async fn packs_from(&self, room: &RoomId, from: u64) -> Result<Vec<Listed>, StoreError> {
        let dir = self.room_dir(room).join("packs");
        let listing = match from.checked_sub(1).filter(|before| *before > 0) {
            // Names sort by their 20-digit first number; `{n}-….pack` sorts before `{n}.pack`.
            Some(before) => self
                .objects
                .list_with_offset(Some(&dir), &self.pack_path(room, &commit_name(before))),
            None => self.objects.list(Some(&dir)),
        };
        let listed: Vec<_> = listing.try_collect().await.map_err(backend("list", &dir))?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_owned();
                let first = pack_first(&name).filter(|first| *first >= from)?;
                Some(Listed {
                    first,
                    commit: commit_first(&name).is_some(),
                    name,
                    bytes: meta.size,
                })
            })
            .collect())
    }

    /// A pack's header, read by range.
    async fn header(&self, room: &RoomId, name: &str) -> Result<pack::PackHeader, StoreError> {
        let path = self.pack_path(room, name);
        let bytes = self
            .objects
            .get_range(&path, 0..pack::HEADER_LEN)
            .await
            .map_err(backend("get", &path))?;
        pack::read_header(&bytes).map_err(corrupt(&path))
    }

    /// Confirms a head the store has not confirmed for [`HEAD_TRUST`]: no newer manifest and
    /// no pack past its end may exist. The caller holds the room's publish lock, so no
    /// checkpoint of this process is in flight.
    pub(super) async fn confirm(&self, room: &RoomId, head: &Manifest) -> Result<(), StoreError> {
        let (newest, after) = futures::try_join!(
            self.newest_generation(room),
            self.packs_from(room, head.next_seq())
        )?;
        if let Some(pack) = after.first() {
            let path = self.pack_path(room, &pack.name).to_string();
            return Err(StoreError::Conflict(Conflict::Changed { path }));
        }
        if newest.is_some_and(|newest| newest > head.generation) {
            let path = self.manifest_path(room, newest.unwrap_or_default());
            let path = path.to_string();
            return Err(StoreError::Conflict(Conflict::Changed { path }));
        }
        Ok(())
    }

    /// Writes the room's head as a manifest soon, off the ack path: commits that come in
    /// meanwhile share the write.
    pub(super) fn checkpoint_soon(self: &Arc<Self>, room: &RoomId, slot: &Arc<RoomSlot>) {
        if slot.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (packs, room, slot) = (self.clone(), room.clone(), slot.clone());
        self.background(async move {
            // Bounded: each round writes what was due, and a new round needs a new commit.
            loop {
                tokio::time::sleep(CHECKPOINT_DELAY).await;
                if let Err(e) = packs.checkpoint(&room, &slot).await {
                    tracing::warn!(error = %e.report(), %room, "checkpoint failed; the packs stay readable, and the next commit retries");
                }
                slot.checkpointing.store(false, Ordering::Release);
                // A commit after the snapshot saw the flag still set and left it to us.
                let due = slot
                    .with_view(|view| matches!(view, View::Known(h) if h.checkpoint_due))
                    .unwrap_or(false);
                if !due || slot.checkpointing.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }

    /// Writes the next manifest generation with the room's head, if a commit is in none yet.
    async fn checkpoint(&self, room: &RoomId, slot: &RoomSlot) -> Result<(), StoreError> {
        let _publishing = slot.publish.lock().await;
        let snapshot = slot.with_view(|view| match view {
            View::Known(head) if head.checkpoint_due => {
                head.checkpoint_due = false;
                Some(head.manifest.clone())
            }
            _ => None,
        })?;
        let Some(snapshot) = snapshot else {
            return Ok(());
        };
        self.publish_head(room, slot, &snapshot).await
    }

    /// Creates the manifest generation after `snapshot.generation` listing `snapshot`'s
    /// packs, and notes it in the head; the caller holds the publish lock. A generation taken
    /// by another writer makes the view stale; another failure leaves a checkpoint due.
    pub(super) async fn publish_head(
        &self,
        room: &RoomId,
        slot: &RoomSlot,
        snapshot: &Manifest,
    ) -> Result<(), StoreError> {
        match self.publish(room, snapshot).await {
            Ok(generation) => slot.with_view(|view| {
                if let View::Known(head) = view {
                    head.manifest.generation = head.manifest.generation.max(generation);
                }
            }),
            Err(StoreError::Conflict(conflict)) => {
                slot.with_view(|view| *view = View::Stale(conflict.clone()))?;
                Err(StoreError::Conflict(conflict))
            }
            Err(e) => {
                slot.with_view(|view| {
                    if let View::Known(head) = view {
                        head.checkpoint_due = true;
                    }
                })?;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_names_are_the_first_arrival_number_alone() {
        assert_eq!(commit_name(42), "00000000000000000042.pack");
        assert_eq!(commit_first(&commit_name(42)), Some(42));
        // Merged and older packs carry a nonce: they are not commit packs.
        let merged = "00000000000000000042-3f9c0a1b2c3d4e5f.pack";
        assert_eq!(commit_first(merged), None);
        assert_eq!(pack_first(merged), Some(42));
        assert_eq!(pack_first(&commit_name(7)), Some(7));
        for other in ["42.pack", "0000000000000000004x.pack", "notes.txt", ""] {
            assert_eq!(commit_first(other), None, "{other:?}");
            assert_eq!(pack_first(other), None, "{other:?}");
        }
    }
}
