//! Prefix-tree refinement on the client's side (protocol/README.md §5.9).

use std::collections::HashSet;

use bytes::Bytes;

use super::{Link, LinkError, LinkOutput, SyncEvent, bad_frame};
use crate::protocol::{self, BucketSketch, BucketSummary, Buckets, MessageType, Missing, Plan};
use crate::recon::ibf::{self, Ibf, SketchKey};
use crate::recon::prefix_tree::Prefix;
use crate::recon::refine::BucketView;
use crate::replica::Replica;

/// Bucket summaries as they arrive, then the relay's `missing` answer.
#[derive(Default)]
pub(super) struct RefineState {
    depth: u8,
    expected: u64,
    pub(super) key: Option<SketchKey>,
    summaries: Vec<BucketSummary>,
    missing: Vec<u64>,
    /// The relay asked for a second round (some bucket sketch did not settle).
    relisted: bool,
}

impl Link {
    /// A `buckets` frame: collect summaries; after the last, answer `bucket_ids` with the
    /// differing buckets and our short ids in them (protocol/README.md §5.9).
    pub(super) fn on_buckets(
        &mut self,
        replica: &mut Replica,
        frame: Buckets,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let bad = bad_frame(MessageType::Buckets);
        if self.refine.summaries.is_empty() && self.sketch.key.is_some() {
            out.events.push(SyncEvent::Plan(Plan::Refine));
        }
        if std::mem::take(&mut self.sketch.tentative) {
            // The relay did not confirm our decode: nothing it implied can be trusted.
            replica.forget_sync();
        }
        let key = SketchKey::from_wire(&frame.key).ok_or_else(|| bad("bad key".into()))?;
        if frame.depth == 0 || frame.depth > crate::recon::MAX_REFINE_DEPTH {
            return Err(bad(format!("bucket depth {}", frame.depth)));
        }
        if self.refine.summaries.is_empty() {
            self.refine.depth = frame.depth;
            self.refine.expected = frame.expected;
            self.refine.key = Some(key);
        } else if self.refine.depth != frame.depth
            || self.refine.expected != frame.expected
            || self.refine.key != Some(key)
        {
            return Err(bad("depth, expected or key changed between frames".into()));
        }
        let buckets = 1usize << (4 * usize::from(frame.depth));
        let summaries = protocol::unpack_buckets(&frame.summaries)
            .ok_or_else(|| bad("truncated summaries".into()))?;
        if self.refine.summaries.len().saturating_add(summaries.len()) > buckets {
            return Err(bad("more summaries than buckets".into()));
        }
        self.refine.summaries.extend(summaries);
        if !frame.last {
            return Ok(());
        }
        if self.refine.summaries.len() != buckets {
            return Err(bad("fewer summaries than buckets".into()));
        }
        let theirs = std::mem::take(&mut self.refine.summaries);
        let depth = self.refine.depth;
        let relay_total = theirs
            .iter()
            .fold(0u64, |sum, (count, _)| sum.saturating_add(*count));
        let larger_total = relay_total.max(replica.scope_len());
        let max_frame = self.limits.max_frame as usize;
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
                expected: self.refine.expected,
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
        self.ids_sent = replica.ids().copied().collect();
        for message in protocol::bucket_ids_messages(&differing, &shorts, &sketches, max_frame) {
            out.send.push(message.encode()?);
        }
        Ok(())
    }

    /// A `missing` frame: after the last, every node we held at `bucket_ids` time except the
    /// missing ones is the relay's — unless the relay asks us to list the buckets whose
    /// sketches it could not settle first (one second round, by lists).
    pub(super) fn on_missing(
        &mut self,
        replica: &mut Replica,
        frame: Missing,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let bad = bad_frame(MessageType::Missing);
        let shorts = protocol::unpack_shorts(&frame.shorts).map_err(|e| bad(e.to_string()))?;
        self.refine.missing.extend(shorts);
        if !frame.last {
            return Ok(());
        }
        let Some(key) = self.refine.key else {
            return Ok(());
        };
        if !frame.relist.is_empty() {
            let buckets = 1usize << (4 * usize::from(self.refine.depth));
            let expected = protocol::bucket_bitmap_len(self.refine.depth);
            if self.refine.relisted || frame.relist.len() != expected {
                return Err(bad("a relist the session cannot follow".into()));
            }
            self.refine.relisted = true;
            let tree = replica.sets(key).tree();
            let mut shorts = Vec::new();
            for bucket in 0..buckets {
                let listed = protocol::bucket_marked(&frame.relist, bucket);
                if let Some(prefix) = Prefix::from_index(self.refine.depth, bucket)
                    && listed
                {
                    tree.for_each_under(&prefix, |id| shorts.push(key.short_id(id)));
                }
            }
            let max_frame = self.limits.max_frame as usize;
            for message in protocol::bucket_ids_messages(&frame.relist, &shorts, &[], max_frame) {
                out.send.push(message.encode()?);
            }
            return Ok(());
        }
        let missing: HashSet<u64> = std::mem::take(&mut self.refine.missing)
            .into_iter()
            .collect();
        let covered = std::mem::take(&mut self.ids_sent);
        replica.reset_scope_sync(|id| covered.contains(id) && !missing.contains(&key.short_id(id)));
        Ok(())
    }
}
