//! The relay's side of sketch reconciliation (protocol/README.md §5.7–§5.9): the frames a
//! room sends for plans `sketch` and `refine`, and how it settles the client's answers.
//!
//! Every answer is about the room *as of* the arrival number at which the sketch or the
//! buckets were made: nodes admitted later are left out of extensions and of the verified
//! root, and reach the client through the catch-up tail instead.
//!
//! A session reconciles a [`Scope`]: the whole room, or, for a subscribed session, the nodes of
//! its subscription class (§5.11), whose sketch structures the class keeps.

use bytes::Bytes;

use super::subscriptions::Class;
use super::{Cursor, LoggedNode, Room};
use crate::node::{NodeId, TreeHash};
use crate::protocol::{
    self, BucketSketch, BucketSummary, Capabilities, Message, Sketch, SyncHints, TreeRoot,
};
use crate::recon::estimator::{Estimator, EstimatorError};
use crate::recon::ibf::{self, Ibf, SketchError, SketchKey};
use crate::recon::index::SetIndex;
use crate::recon::prefix_tree;
use crate::recon::{self, ReconPath, RelaySide, refine};
use crate::recon::{FastMap, FastSet, SetDigest};

/// The client's `bucket_ids` cannot be read against the buckets the room sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BucketIdsError {
    /// The differing-bucket bitmap has the wrong length.
    #[error("bucket bitmap of {got} bytes, expected {expected} for depth {depth}")]
    Bitmap {
        /// Bytes received.
        got: usize,
        /// Bytes a bitmap of that depth has.
        expected: usize,
        /// The depth the room sent.
        depth: u8,
    },
    /// A bucket sketch names a bucket that is not marked as differing (or does not exist).
    #[error("bucket sketch for bucket {0}, which is not marked as differing")]
    NotDiffering(u64),
    /// Two bucket sketches name the same bucket.
    #[error("two bucket sketches for bucket {0}")]
    Duplicate(u64),
    /// The second round re-lists buckets: it must list exactly the ones the room asked for,
    /// by short ids only.
    #[error("the second bucket_ids round must list exactly the relisted buckets, without sketches")]
    Relist,
}

/// One round of the client's `bucket_ids`, collected.
#[derive(Debug, Clone, Copy)]
pub struct BucketRound<'a> {
    /// Depth of the buckets the room sent.
    pub depth: u8,
    /// Arrival number at which the buckets were made.
    pub at_seq: u64,
    /// Bitmap of the buckets the round covers.
    pub differing: &'a [u8],
    /// The client's short ids in the buckets it lists.
    pub shorts: &'a [u64],
    /// The client's sketches of the buckets it does not list.
    pub sketches: &'a [BucketSketch],
}

/// How a round of `bucket_ids` was settled.
#[derive(Debug)]
pub struct Settled {
    /// Short ids of the client's nodes the room lacks.
    pub missing: Vec<u64>,
    /// The room's nodes the client lacks, as far as settled, then everything admitted since.
    pub cursor: Cursor,
    /// Bitmap of the buckets whose sketch did not settle (the client lists them next);
    /// empty when none.
    pub relist: Vec<u8>,
}

/// The set a session reconciles: the whole room, or the matching nodes of one subscription
/// class, as its sketch structures hold them.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    sets: &'a SetIndex,
    digest: SetDigest,
    /// The structures hold every member numbered up to this.
    through: u64,
    /// The class, or `None` for the whole room.
    class: Option<&'a Class>,
}

impl<'a> Scope<'a> {
    /// A class's matching nodes, held in `sets` up to `through`, with digest `digest`.
    pub fn class(sets: &'a SetIndex, digest: SetDigest, through: u64, class: &'a Class) -> Self {
        Self {
            sets,
            digest,
            through,
            class: Some(class),
        }
    }

    fn contains(&self, node: &LoggedNode) -> bool {
        self.class.is_none_or(|c| c.set().matches(node.path()))
    }

    /// The member a short id names, with its arrival number.
    fn locate(&self, room: &Room, short: u64) -> Option<(NodeId, u64)> {
        match self.class {
            // The room fills its index in arrival order: ordinal + 1 is the arrival number,
            // found in the same lookup.
            None => {
                let (id, ordinal) = self.sets.locate(short)?;
                Some((id, ordinal.checked_add(1)?))
            }
            Some(_) => {
                let id = self.sets.resolve(short)?;
                Some((id, room.seq_of(&id)?))
            }
        }
    }
}

/// Picks the reconciliation path for a client's hints against one side's set (`side`,
/// `estimator`): the room's, or a class's. A malformed estimator is reported and ignored (the
/// set is then sized from counts).
pub fn plan_against(
    hints: &SyncHints,
    capabilities: Capabilities,
    side: RelaySide,
    estimator: &Estimator,
    knows: impl Fn(&NodeId) -> bool,
) -> (ReconPath, Option<EstimatorError>) {
    let (estimate, error) = match hints.estimator.as_deref().map(Estimator::decode) {
        Some(Ok(received)) => (Some(estimator.estimate(&received)), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let client = recon::ClientSide {
        digest: hints.digest,
        watermark: hints.watermark.map(|w| (w.epoch, w.seq)),
        heads: &hints.heads,
        unsynced: hints.unsynced,
        sketches: capabilities.contains(Capabilities::IBF.union(Capabilities::MST)),
    };
    let path = recon::choose_path(&client, side, estimate, knows);
    (path, error)
}

/// A prefix-tree root as `catch_up_done` carries it. Cached between insertions: a session
/// pays only for the paths changed since the last call.
pub fn tree_root(sets: &mut SetIndex) -> TreeRoot {
    let root = sets.root();
    TreeRoot {
        count: root.count,
        hash: TreeHash(root.hash),
    }
}

/// Summaries of every prefix of `depth` hex digits, in order, as they travel in `buckets`.
pub fn bucket_summaries(sets: &mut SetIndex, depth: u8) -> Vec<BucketSummary> {
    sets.tree_mut()
        .level(depth)
        .iter()
        .map(prefix_tree::Summary::truncated)
        .collect()
}

impl Room {
    /// The whole room as a reconciliation scope.
    pub fn scope(&self) -> Scope<'_> {
        Scope {
            sets: &self.sets,
            digest: self.digest,
            through: self.seq(),
            class: None,
        }
    }

    /// The room's sketch key (every class's structures use it too).
    pub fn sketch_key(&self) -> SketchKey {
        *self.sets.key()
    }

    /// The room's sketch structures: for `catch_up_done` roots and bucket summaries.
    pub fn sets_mut(&mut self) -> &mut SetIndex {
        &mut self.sets
    }

    /// Picks the reconciliation path for a client's hints and the negotiated capabilities.
    /// A malformed estimator is reported and ignored (the room then sizes from counts).
    pub fn plan(
        &self,
        hints: &SyncHints,
        capabilities: Capabilities,
    ) -> (ReconPath, Option<EstimatorError>) {
        let side = RelaySide {
            digest: self.digest,
            epoch: self.epoch,
            seq: self.seq(),
        };
        plan_against(hints, capabilities, side, &self.estimator, |id| {
            self.contains(id)
        })
    }

    /// Builds the sketch levels after a bulk load (see [`Room::restore`]) and hashes the
    /// prefix tree where it changed, so that the next session pays only for its own
    /// difference. The server calls it after loading a room.
    pub fn warm_indexes(&mut self) {
        self.sets.build_levels();
        self.sets.root();
    }

    /// The room's sketch key as it travels in `sketch` and `buckets`.
    pub fn sketch_key_wire(&self) -> Bytes {
        Bytes::copy_from_slice(self.sets.key().wire())
    }

    /// The scope's sketch at `2^log2` cells per sub-table, as it was at arrival number
    /// `at_seq` (nodes added later are taken out again).
    fn sketch_as_of(&self, scope: Scope<'_>, log2: u8, at_seq: u64) -> Result<Ibf, SketchError> {
        let mut sketch = scope.sets.sketch_at(log2)?;
        for seq in at_seq.saturating_add(1)..=scope.through {
            if let Some(node) = self.node_at(seq) {
                let short = scope.sets.key().short_id(&node.id);
                // Only members are in the sketch, and of those not an id whose short id
                // collided.
                if scope.sets.resolve(short) == Some(node.id) {
                    sketch.remove(short);
                }
            }
        }
        Ok(sketch)
    }

    /// `sketch` frames: the whole sketch at `log2`, or (`extension`) the lower halves of the
    /// sketch at `log2` that extend the one at `log2 − 1` the client already holds. Each frame
    /// stays under `max_frame` bytes.
    pub fn sketch_frames(
        &self,
        scope: Scope<'_>,
        log2: u8,
        extension: bool,
        at_seq: u64,
        max_frame: usize,
    ) -> Result<Vec<Bytes>, SketchError> {
        let sketch = self.sketch_as_of(scope, log2, at_seq)?;
        let cells = if extension {
            sketch.lower_halves()?
        } else {
            sketch.cells().to_vec()
        };
        let per_frame = (max_frame.saturating_sub(protocol::FRAME_SLACK) / ibf::CELL_BYTES).max(1);
        let key = self.sketch_key_wire();
        let mut frames = Vec::new();
        for chunk in cells.chunks(per_frame) {
            let message = Message::Sketch(Sketch {
                log2,
                extension,
                key: key.clone(),
                cells: Bytes::from(ibf::encode_cells(chunk)),
            });
            // Encoding a struct of integers and byte strings into a Vec cannot fail.
            if let Ok(frame) = message.encode() {
                frames.push(frame);
            }
        }
        Ok(frames)
    }

    /// Settles a decoded sketch: the client lacks the nodes behind `shorts` and believes both
    /// sides share a set with digest `shared`. Returns the catch-up cursor if the scope's set
    /// as of `at_seq`, minus those nodes, has exactly that digest; `None` if not (the decode
    /// was wrong, or the client is): the caller refines instead. Costs O(shorts + nodes
    /// admitted since `at_seq`); the collision-resistant check follows at `catch_up_done`.
    pub fn settle_want(
        &self,
        scope: Scope<'_>,
        shorts: &[u64],
        shared: SetDigest,
        at_seq: u64,
    ) -> Option<Cursor> {
        let mut expected = scope.digest;
        for seq in at_seq.saturating_add(1)..=scope.through {
            let node = self.node_at(seq)?;
            if scope.contains(node) {
                expected.remove(&node.id);
            }
        }
        let mut lacking = Vec::with_capacity(shorts.len());
        for short in shorts {
            let (id, seq) = scope.locate(self, *short)?;
            if seq > at_seq {
                return None;
            }
            lacking.push(seq);
            expected.remove(&id);
        }
        lacking.sort_unstable();
        // A short id listed twice would have been subtracted twice.
        if lacking.windows(2).any(|w| w.first() == w.get(1)) || expected != shared {
            return None;
        }
        Some(Cursor::new(lacking, at_seq.saturating_add(1)))
    }

    /// Settles a round of the client's `bucket_ids` (protocol/README.md §5.9). In the first
    /// round (`earlier` is `None`) the room sends every node it held at `at_seq` in a
    /// differing bucket and every one admitted since, except those the client listed or
    /// whose bucket sketch says the client holds them; a bucket whose sketch does not settle
    /// goes into `relist`. The second round (`earlier`: the first round's cursor) covers
    /// exactly the relisted buckets, by lists only, and adds to that cursor.
    pub fn settle_bucket_ids(
        &self,
        scope: Scope<'_>,
        round: BucketRound<'_>,
        earlier: Option<Cursor>,
    ) -> Result<Settled, BucketIdsError> {
        let BucketRound {
            depth,
            at_seq,
            differing,
            shorts,
            sketches,
        } = round;
        let buckets = 1usize << (4 * usize::from(depth));
        let expected = protocol::bucket_bitmap_len(depth);
        if differing.len() != expected {
            return Err(BucketIdsError::Bitmap {
                got: differing.len(),
                expected,
                depth,
            });
        }
        let relisting = earlier.is_some();
        if relisting && !sketches.is_empty() {
            return Err(BucketIdsError::Relist);
        }
        // Per sketched bucket: the client's sketch, and the room's (short id, arrival number)
        // pairs in the bucket as of `at_seq`.
        type Sketched<'a> = (&'a BucketSketch, Vec<(u64, u64)>);
        let mut sketched: FastMap<usize, Sketched<'_>> = FastMap::default();
        for sketch in sketches {
            let bucket = usize::try_from(sketch.bucket)
                .ok()
                .filter(|b| *b < buckets && protocol::bucket_marked(differing, *b))
                .ok_or(BucketIdsError::NotDiffering(sketch.bucket))?;
            if sketched.insert(bucket, (sketch, Vec::new())).is_some() {
                return Err(BucketIdsError::Duplicate(sketch.bucket));
            }
        }
        // One pass over the log, in arrival order: a node in a differing bucket (or admitted
        // since the buckets were made: had the client held one in a bucket it found equal,
        // that bucket would have differed) is sent unless the client listed it. Matching takes
        // the short id out of the list, so what is left is what the room lacks. A second
        // round only revisits its buckets as of `at_seq`: the first sent everything later.
        let mut unmatched: FastSet<u64> = shorts.iter().copied().collect();
        let key = *scope.sets.key();
        let mut lacking = Vec::new();
        // The scope's members in arrival order: the log, or the class's nodes.
        let members: Box<dyn Iterator<Item = (u64, &NodeId)>> = match scope.class {
            None => Box::new((1u64..).zip(self.log.iter().map(|entry| &entry.id))),
            Some(class) => Box::new(
                class
                    .seqs_after(self, 0, |_| true)
                    .into_iter()
                    .filter_map(|seq| Some((seq, &self.node_at(seq)?.id))),
            ),
        };
        for (seq, id) in members {
            let bucket = prefix_tree::prefix_of(id, depth);
            let differs = protocol::bucket_marked(differing, bucket);
            let settled_before = seq <= at_seq;
            let visit = if relisting {
                differs && settled_before
            } else {
                differs || !settled_before
            };
            if !visit {
                continue;
            }
            let short = key.short_id(id);
            if let Some((_, ours)) = sketched.get_mut(&bucket) {
                // Sketches are of the buckets as of `at_seq`; later nodes are sent anyway.
                if settled_before {
                    ours.push((short, seq));
                } else {
                    lacking.push(seq);
                }
                continue;
            }
            // An id whose short id another id took cannot be named: sent anyway, never lost.
            let held = unmatched.remove(&short) && scope.sets.names(id, short);
            if !held {
                lacking.push(seq);
            }
        }
        let mut missing: Vec<u64> = unmatched.into_iter().collect();
        let mut relist = Vec::new();
        for (bucket, (sketch, mut ours)) in sketched {
            ours.sort_unstable();
            let shorts: Vec<u64> = ours.iter().map(|(short, _)| *short).collect();
            let settled = ibf::decode_cells(&sketch.cells)
                .and_then(|cells| Ibf::from_cells(sketch.log2, cells))
                .and_then(|theirs| refine::settle_bucket(&shorts, theirs, sketch.count));
            match settled {
                Ok(difference) => {
                    missing.extend(difference.client_only);
                    for short in difference.relay_only {
                        if let Ok(at) = shorts.binary_search(&short)
                            && let Some((_, seq)) = ours.get(at)
                        {
                            lacking.push(*seq);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(bucket, error = %e, "bucket sketch did not settle; relisting");
                    if relist.is_empty() {
                        relist = vec![0u8; expected];
                    }
                    protocol::mark_bucket(&mut relist, bucket);
                }
            }
        }
        // Deterministic frames: the answer must not depend on hash-map iteration order.
        missing.sort_unstable();
        lacking.sort_unstable();
        let cursor = match earlier {
            Some(mut cursor) => {
                cursor.extend_explicit(lacking);
                cursor
            }
            None => Cursor::new(lacking, self.seq().saturating_add(1)),
        };
        Ok(Settled {
            missing,
            cursor,
            relist,
        })
    }
}
