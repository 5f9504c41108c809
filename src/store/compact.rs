//! Compaction (protocol/storage.md, "Compaction"): each commit writes one pack, so runs of
//! small packs are merged in the background into one pack of the next size tier, and packs
//! left unreferenced are collected.
//!
//! A merge only ever adds objects until its manifest is published, and that publish is a
//! create-only write under the room's manifest lock: a merge cut short at any point (by
//! shutdown, a crash or a failure) leaves the newest manifest as it was, and at most an
//! unreferenced pack, which readers ignore and [`Packs::collect_garbage`] deletes later.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::StoreError;
use super::objects::{Packs, RoomSlot};
use super::pack::{self, Manifest, PackEntry};
use crate::node::RoomId;

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
                return Err(StoreError::Missing {
                    path: self.pack_path(room, &entry.name).to_string(),
                });
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
