//! Prefix-tree refinement on the replica's side (protocol/README.md §5.9): comparing the
//! relay's bucket summaries with the replica's and listing or sketching the buckets that
//! differ.

use bytes::Bytes;

use super::{Link, LinkError, LinkOutput};
use crate::protocol::{self, BucketSketch};
use crate::recon::ibf::{self, Ibf, SketchKey};
use crate::recon::prefix_tree::Prefix;
use crate::recon::refine::BucketView;
use crate::replica::Replica;
use crate::session::Summaries;

impl Link {
    /// Every bucket summary is in: answer `bucket_ids` with the differing buckets and, for
    /// each, our short ids in it or a sketch of them (§5.9 steps 2–3).
    pub(super) fn answer_buckets(
        &mut self,
        replica: &mut Replica,
        theirs: Summaries,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let Summaries {
            key,
            depth,
            expected,
            buckets: theirs,
        } = theirs;
        let relay_total = theirs
            .iter()
            .fold(0u64, |sum, (count, _)| sum.saturating_add(*count));
        let larger_total = relay_total.max(replica.scope_len());
        let max_frame = self.session.limits().max_frame as usize;
        let sets = replica.sets(key);
        let mine = sets.tree_mut().level(depth);
        let tree = sets.tree();
        let mut differing = vec![0u8; protocol::bucket_bitmap_len(depth)];
        let mut shorts = Vec::new();
        let mut sketches = Vec::new();
        for (bucket, (summary, theirs)) in mine.iter().zip(&theirs).enumerate() {
            if summary.truncated() == *theirs {
                continue;
            }
            protocol::mark_bucket(&mut differing, bucket);
            let Some(prefix) = Prefix::from_index(depth, bucket) else {
                continue;
            };
            let view = BucketView {
                relay_count: theirs.0,
                client_count: summary.count,
                expected,
                larger_total,
            };
            // Whichever is smaller: the bucket's sketch, or our short ids in it.
            // An entry never spans frames: it must fit beside the bitmap in one.
            let room = max_frame.saturating_sub(differing.len() + protocol::FRAME_SLACK);
            match view.sketch_log2(room) {
                Some(log2) => {
                    let mut sketch = Ibf::new_clamped(log2);
                    tree.for_each_under(&prefix, |id| sketch.insert(key.short_id(id)));
                    sketches.push(BucketSketch {
                        bucket: bucket as u64,
                        count: summary.count,
                        log2,
                        cells: Bytes::from(ibf::encode_cells(sketch.cells())),
                    });
                }
                None => tree.for_each_under(&prefix, |id| shorts.push(key.short_id(id))),
            }
        }
        // The relay's `missing` answer is about the nodes held now; later ones stay unsynced.
        let covered = replica.ids().copied().collect();
        let frames = self
            .session
            .bucket_ids(&differing, &shorts, &sketches, covered)?;
        out.send.extend(frames);
        Ok(())
    }

    /// The relay could not settle some bucket sketches: list our short ids in the buckets
    /// `relist` marks, in a second round of `bucket_ids` (§5.9 step 7).
    pub(super) fn answer_relist(
        &mut self,
        replica: &mut Replica,
        key: SketchKey,
        depth: u8,
        relist: &[u8],
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let tree = replica.sets(key).tree();
        let mut shorts = Vec::new();
        let buckets = 1usize << (4 * usize::from(depth));
        for bucket in (0..buckets).filter(|bucket| protocol::bucket_marked(relist, *bucket)) {
            if let Some(prefix) = Prefix::from_index(depth, bucket) {
                tree.for_each_under(&prefix, |id| shorts.push(key.short_id(id)));
            }
        }
        out.send.extend(self.session.relist(&shorts)?);
        Ok(())
    }
}
