//! Compaction (protocol/storage.md, "Compaction"): each commit writes one pack, so runs of
//! small packs are merged in the background into one pack of the next size tier, and packs
//! left unreferenced are collected.
//!
//! A merge only ever adds objects until its manifest is published, and that publish is a
//! create-only write under the room's publish lock: a merge cut short at any point (by
//! shutdown, a crash or a failure) leaves the newest manifest as it was, and at most an
//! unreferenced merged pack, which readers ignore and [`Packs::collect_garbage`] deletes
//! later. Merged packs carry a nonce in their name, so they never take a commit pack's name.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::StoreError;
use super::head::{View, pack_first};
use super::objects::{Packs, RoomSlot};
use super::pack::{self, Manifest, PackEntry};
use crate::node::RoomId;

/// Consecutive packs of one size tier are merged into one pack of the next tier once there
/// are this many: a room is a logarithmic number of objects, and each byte is rewritten about
/// once per tier.
const COMPACT_RUN: usize = 16;

/// How long merged packs stay readable after the manifest that replaced them. More than
/// twice [`HEAD_TRUST`](super::head::HEAD_TRUST): see there.
pub(super) const MERGED_PACK_GRACE: Duration = Duration::from_secs(30);

/// An unreferenced pack older than this is garbage: left by a writer that stopped between its
/// pack and its manifest, or during a merge's grace period. Younger ones may be a commit in
/// flight.
const GARBAGE_AGE: Duration = Duration::from_secs(3600);

/// Packs this large are left as they are.
pub(super) const LARGE_PACK_BYTES: u64 = 64 * 1024 * 1024;

impl Packs {
    /// Starts compacting the room in the background if `manifest` has a run to merge and no
    /// compaction of the room is running.
    pub(super) fn compact_if_due(
        self: &Arc<Self>,
        room: &RoomId,
        slot: &Arc<RoomSlot>,
        manifest: &Manifest,
    ) {
        if compaction_run(manifest).is_none() || slot.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (packs, room, slot) = (self.clone(), room.clone(), slot.clone());
        self.background(async move { packs.compact_while_needed(&room, &slot).await });
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
                        tracing::warn!(error = %e.report(), %room, "compaction failed; retried later");
                        slot.compacting.store(false, Ordering::Release);
                        return;
                    }
                }
            }
            slot.compacting.store(false, Ordering::Release);
            // An append that made a run after the last check saw the flag still set and left
            // it to us: look once more, and carry on unless someone else took over.
            let due = slot
                .head()
                .ok()
                .flatten()
                .is_some_and(|m| compaction_run(&m).is_some());
            if !due || slot.compacting.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    /// Merges the room's newest run of small packs into one, in the background of the room:
    /// the reading and writing happen outside the publish lock, which is only taken to
    /// publish the new manifest (a checkpoint of the whole head, with the run replaced). The
    /// merged packs are deleted after a grace period. `Ok(true)` if it merged a run.
    async fn compact(&self, room: &RoomId) -> Result<bool, StoreError> {
        let slot = self.slot(room)?;
        let Some(head) = slot.head()? else {
            return Ok(false);
        };
        let Some(run) = compaction_run(&head).map(<[PackEntry]>::to_vec) else {
            return Ok(false);
        };
        let epoch = head.epoch;
        let mut records = Vec::new();
        for entry in &run {
            let Some((bytes, index)) = self.open_pack(room, entry, epoch).await? else {
                return Err(StoreError::Missing {
                    path: self.pack_path(room, &entry.name).to_string(),
                });
            };
            records.extend(pack::records(&bytes, &index));
        }
        let first = run.first().map_or(1, |entry| entry.first);
        let merged = self.write_pack(room, epoch, first, &records).await?;
        let publishing = slot.publish.lock().await;
        // Commits only add packs at the end, and only merges (under this lock) replace any,
        // so the run is still where it was unless the room was read again meanwhile.
        let snapshot = slot.with_view(|view| {
            let View::Known(head) = view else {
                return None;
            };
            let start = run_position(&head.manifest, &run)?;
            let mut next = head.manifest.clone();
            next.packs
                .splice(start..start + run.len(), [merged.clone()]);
            head.checkpoint_due = false;
            Some(next)
        })?;
        let Some(snapshot) = snapshot else {
            return Ok(false);
        };
        self.publish_head(room, &slot, &snapshot).await?;
        slot.with_view(|view| {
            if let View::Known(head) = view {
                if let Some(start) = run_position(&head.manifest, &run) {
                    head.manifest
                        .packs
                        .splice(start..start + run.len(), [merged.clone()]);
                }
            }
        })?;
        slot.forget_indexes(&run);
        drop(publishing);
        // A reader that listed the previous manifest a moment ago may still be reading these
        // packs: delete them only after a grace period. (A relay that stops before leaves
        // them unreferenced, which readers ignore and a later collection deletes.)
        let objects = self.objects.clone();
        let paths: Vec<Path> = run.iter().map(|e| self.pack_path(room, &e.name)).collect();
        self.background(async move {
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

    /// Deletes the room's unreferenced packs older than [`GARBAGE_AGE`] that start before the
    /// head's end. Best effort: runs after compactions, and a failure only leaves garbage for
    /// the next one.
    #[allow(clippy::disallowed_methods)] // The store is runtime code: it owns the clock.
    async fn collect_garbage(&self, room: &RoomId) {
        let Some(head) = self
            .slot(room)
            .ok()
            .and_then(|slot| slot.head().ok().flatten())
        else {
            return;
        };
        let referenced: Vec<String> = head.packs.iter().map(|p| p.name.clone()).collect();
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
        let now = std::time::SystemTime::now();
        for name in garbage(&listed, &referenced, head.next_seq(), now) {
            let path = self.pack_path(room, &name);
            if let Err(e) = self.objects.delete(&path).await {
                tracing::debug!(error = %e, %path, "garbage pack not deleted");
            }
        }
    }
}

/// Packs in `listed` (name, last modified) that `referenced` does not name, that start before
/// arrival number `next` (a pack at or past the head's end may be another writer's commit)
/// and that are older than [`GARBAGE_AGE`] at `now`.
fn garbage(
    listed: &[(String, std::time::SystemTime)],
    referenced: &[String],
    next: u64,
    now: std::time::SystemTime,
) -> Vec<String> {
    listed
        .iter()
        .filter(|(name, modified)| {
            pack_first(name).is_some_and(|first| first < next)
                && !referenced.contains(name)
                && now
                    .duration_since(*modified)
                    .is_ok_and(|age| age > GARBAGE_AGE)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Where `run` lies in `manifest`'s packs, if it is there unchanged.
fn run_position(manifest: &Manifest, run: &[PackEntry]) -> Option<usize> {
    let head = run.first()?;
    let start = manifest.packs.iter().position(|p| p.name == head.name)?;
    (manifest.packs.get(start..start + run.len()) == Some(run)).then_some(start)
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
        let name = |first: u64, nonce: &str| format!("{first:020}{nonce}.pack");
        let listed = vec![
            (name(1, ""), old),
            (name(1, "-00000000000000aa"), old),
            (name(2, "-00000000000000bb"), young),
            (name(9, ""), old),
            ("notes.txt".to_owned(), old),
        ];
        let referenced = vec![name(1, "")];
        // Arrival number 9 is past the head's end: maybe another writer's commit.
        assert_eq!(
            garbage(&listed, &referenced, 9, now),
            vec![name(1, "-00000000000000aa")]
        );
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
