//! The reconciliation state one side keeps for one set, updated on every insert.
//!
//! A [`SetIndex`] holds the three structures sessions need, so no session ever rebuilds
//! anything proportional to the set:
//!
//! - a large [`Ibf`] that [`sketch`](SetIndex::sketch) folds to the size a session needs;
//! - a short id → id map, to turn decoded short ids back into nodes;
//! - a [`PrefixTree`] for hard divergence and for verifying a decode against its root.
//!
//! The sketch is sized for differences up to [`MAX_SKETCH_FRACTION`] of the set (beyond that,
//! prefix-tree refinement is cheaper), and doubles, rebuilt from the short ids, whenever the set
//! outgrows it: O(1) amortized per insert.

use std::collections::HashMap;

use super::ibf::{Ibf, K, MAX_LOG2_CELLS, SketchError, SketchKey};
use super::prefix_tree::{PrefixTree, Summary};
use crate::node::NodeId;

/// Largest difference, as a fraction of the set, that the persistent sketch is sized for.
pub const MAX_SKETCH_FRACTION: f64 = 0.2;

/// Cells per expected difference when sizing a session's sketch (decodes ~99% of the time
/// with three sub-tables).
pub const CELLS_PER_DIFFERENCE: f64 = 1.5;

/// Smallest sketch, as a power of two per sub-table.
const MIN_LOG2: u8 = 4;

/// Reconciliation state for one set of ids.
pub struct SetIndex {
    key: SketchKey,
    sketch: Ibf,
    shorts: HashMap<u64, NodeId>,
    /// Ids whose short id was already taken by another id. Such an id cannot be named by a
    /// sketch; sessions that meet one fall back to the prefix tree.
    collisions: u64,
    tree: PrefixTree,
}

/// Sub-table size (power of two) for decoding `difference` elements.
pub fn log2_for(difference: u64) -> u8 {
    // f64 is exact far beyond any realistic difference; the ceiling keeps α ≥ CELLS_PER_DIFFERENCE.
    let cells = (difference as f64 * CELLS_PER_DIFFERENCE / K as f64)
        .ceil()
        .max(1.0);
    let log2 = cells.log2().ceil();
    if log2 >= f64::from(MAX_LOG2_CELLS) {
        MAX_LOG2_CELLS
    } else {
        // In range 0..MAX_LOG2_CELLS by the check above.
        (log2.max(0.0) as u8).max(MIN_LOG2)
    }
}

impl SetIndex {
    /// An empty index under `key`.
    pub fn new(key: SketchKey) -> Self {
        Self {
            key,
            sketch: Ibf::new_clamped(MIN_LOG2),
            shorts: HashMap::new(),
            collisions: 0,
            tree: PrefixTree::new(),
        }
    }

    /// The key short ids are derived under.
    pub fn key(&self) -> &SketchKey {
        &self.key
    }

    /// Number of ids.
    pub fn len(&self) -> u64 {
        self.tree.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Ids that share a short id with an earlier one (see [`SetIndex`]).
    pub fn collisions(&self) -> u64 {
        self.collisions
    }

    /// Adds an id; returns whether it was new. O(K + prefix-tree depth), amortized.
    pub fn insert(&mut self, id: NodeId) -> bool {
        if !self.tree.insert(id) {
            return false;
        }
        let short = self.key.short_id(&id);
        match self.shorts.entry(short) {
            std::collections::hash_map::Entry::Occupied(_) => self.collisions += 1,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(id);
                self.sketch.insert(short);
            }
        }
        self.grow_if_needed();
        true
    }

    fn grow_if_needed(&mut self) {
        let wanted = log2_for((self.len() as f64 * MAX_SKETCH_FRACTION) as u64);
        if wanted <= self.sketch.log2() {
            return;
        }
        // Doubling at least, so rebuilds stay O(1) amortized per insert.
        let mut bigger = Ibf::new_clamped(wanted.max(self.sketch.log2().saturating_add(1)));
        for short in self.shorts.keys() {
            bigger.insert(*short);
        }
        self.sketch = bigger;
    }

    /// A sketch of the set sized to decode `difference` elements, folded from the persistent
    /// one (cost: one pass over it). Fails if the persistent sketch is smaller than asked:
    /// such a difference is prefix-tree territory.
    pub fn sketch(&self, difference: u64) -> Result<Ibf, SketchError> {
        self.sketch.fold(log2_for(difference))
    }

    /// The sketch at an exact size, e.g. to match a peer's.
    pub fn sketch_at(&self, log2: u8) -> Result<Ibf, SketchError> {
        self.sketch.fold(log2)
    }

    /// The id behind a decoded short id.
    pub fn resolve(&self, short: u64) -> Option<NodeId> {
        self.shorts.get(&short).copied()
    }

    /// The prefix tree.
    pub fn tree(&mut self) -> &mut PrefixTree {
        &mut self.tree
    }

    /// The collision-resistant root of the set.
    pub fn root(&mut self) -> Summary {
        self.tree.root()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn key() -> SketchKey {
        SketchKey([5; 32])
    }

    fn ids(rng: &mut StdRng, n: usize) -> Vec<NodeId> {
        (0..n).map(|_| NodeId(rng.random())).collect()
    }

    #[test]
    fn sizes_follow_the_difference() {
        assert_eq!(log2_for(0), MIN_LOG2);
        assert_eq!(log2_for(1_000), 9); // 500 cells per sub-table → 512
        assert_eq!(log2_for(u64::MAX), MAX_LOG2_CELLS);
    }

    #[test]
    fn grows_and_still_folds_to_what_a_fresh_build_gives() {
        let mut rng = StdRng::seed_from_u64(1);
        let all = ids(&mut rng, 50_000);
        let mut index = SetIndex::new(key());
        for id in &all {
            assert!(index.insert(*id));
        }
        assert!(!index.insert(all[0]));
        assert_eq!(index.len(), 50_000);
        // Sized for 20% of the set.
        assert!(index.sketch.log2() >= log2_for(10_000));
        let mut fresh = Ibf::new(8).unwrap();
        for id in &all {
            fresh.insert(key().short_id(id));
        }
        assert_eq!(index.sketch_at(8).unwrap(), fresh);
    }

    #[test]
    fn a_session_decodes_and_resolves_the_difference() {
        let mut rng = StdRng::seed_from_u64(2);
        let common = ids(&mut rng, 20_000);
        let only_relay = ids(&mut rng, 300);
        let only_client = ids(&mut rng, 200);
        let mut relay = SetIndex::new(key());
        let mut client = SetIndex::new(key());
        common.iter().chain(&only_relay).for_each(|id| {
            relay.insert(*id);
        });
        common.iter().chain(&only_client).for_each(|id| {
            client.insert(*id);
        });
        // Both sides fold to the same size for the expected difference (here: known, 500).
        let diff = relay
            .sketch(500)
            .unwrap()
            .subtract(&client.sketch(500).unwrap())
            .unwrap();
        let decoded = diff.decode().unwrap();
        let relay_only: BTreeSet<NodeId> = decoded
            .ours
            .iter()
            .map(|s| relay.resolve(*s).unwrap())
            .collect();
        let client_only: BTreeSet<NodeId> = decoded
            .theirs
            .iter()
            .map(|s| client.resolve(*s).unwrap())
            .collect();
        assert_eq!(relay_only, only_relay.iter().copied().collect());
        assert_eq!(client_only, only_client.iter().copied().collect());
        assert_ne!(relay.root(), client.root());
    }
}
