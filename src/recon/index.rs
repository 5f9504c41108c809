//! The reconciliation state one side keeps for one set, updated on every insert.
//!
//! A [`SetIndex`] holds the three structures sessions need, so no session ever rebuilds
//! anything proportional to the set:
//!
//! - a *pyramid* of sketches, one per size from `2^MIN_LOG2` (16) cells per sub-table up to the
//!   top level, so the sketch a session needs is a copy of one level
//!   ([`sketch_at`](SetIndex::sketch_at)), and an extension after a failed decode (see
//!   [`Ibf::extend`]) is the lower halves of the next level;
//! - a short id → id map, to turn decoded short ids back into nodes;
//! - a [`PrefixTree`] for hard divergence and for verifying a decode against its root.
//!
//! The top level is sized for differences up to [`MAX_SKETCH_FRACTION`] of the set (beyond that,
//! prefix-tree refinement is cheaper), and grows (at least doubling), rebuilt from the short
//! ids, whenever the set outgrows it; the new levels below it are folded from it. An insert
//! updates [`K`] cells per level (42 at a million ids: levels 4..=17) and costs O(1) amortized
//! for growth.
//!
//! Memory: the levels together hold about twice the top level's cells, stored as 16-byte cells
//! (the count kept in 32 bits, wrapping: only its value modulo 256 matters, see [`super::ibf`])
//! rather than [`Cell`]'s 24. At a million ids that is 2 × 3 × 2^17 × 16 B ≈ 12.6 MB, ~13 bytes
//! per id, next to ~86 for the short-id map and ~50 for the prefix tree (measured).

use super::FastMap;
use super::ibf::{Cell, Ibf, K, MAX_LOG2_CELLS, Placement, SketchError, SketchKey};
use super::prefix_tree::{PrefixTree, Summary};
use crate::node::NodeId;

/// Largest difference, as a fraction of the set, that the persistent sketches are sized for.
pub const MAX_SKETCH_FRACTION: f64 = 0.2;

/// Cells per expected difference when sizing a session's sketch.
///
/// Three sub-tables peel with high probability above ~1.23 cells per difference; 1.3 leaves a
/// margin and decodes most of the time, and rounding up to a power of two usually adds more. A
/// failed decode is not wasted: the retry is an *extension* to the next size that sends only
/// the cells the peer cannot derive from the first sketch, so first sketch plus extension cost
/// exactly what the larger sketch alone would have. Over-provisioning every first attempt (the
/// former 1.5) would cost more on average than the occasional extra round trip.
pub const CELLS_PER_DIFFERENCE: f64 = 1.3;

/// Smallest level the pyramid keeps, as a power of two per sub-table.
const MIN_LOG2: u8 = 4;

/// A cell as the pyramid stores it: 16 bytes instead of [`Cell`]'s 24. The count wraps at 32
/// bits, which changes nothing a peer sees (counts travel modulo 256) and nothing a decode
/// does (peeling counts modulo 256); it equals the true count below 2^31 elements per cell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PackedCell {
    short: u64,
    check: u32,
    count: i32,
}

impl PackedCell {
    fn toggle(&mut self, placement: &Placement, delta: i32) {
        self.count = self.count.wrapping_add(delta);
        self.short ^= placement.short();
        self.check ^= placement.check();
    }

    fn add(&mut self, other: &PackedCell) {
        self.count = self.count.wrapping_add(other.count);
        self.short ^= other.short;
        self.check ^= other.check;
    }

    fn cell(&self) -> Cell {
        Cell {
            count: i64::from(self.count),
            short: self.short,
            check: self.check,
        }
    }
}

/// `K × 2^log2` packed cells holding `shorts`.
fn build_level(shorts: impl Iterator<Item = u64>, log2: u8) -> Vec<PackedCell> {
    let mut cells = vec![PackedCell::default(); K << log2];
    for short in shorts {
        toggle_level(&mut cells, log2, &Placement::new(short), 1);
    }
    cells
}

fn toggle_level(cells: &mut [PackedCell], log2: u8, placement: &Placement, delta: i32) {
    for index in placement.cells(log2) {
        if let Some(cell) = cells.get_mut(index) {
            cell.toggle(placement, delta);
        }
    }
}

/// The level below `cells` (at `2^log2` per sub-table, `log2 ≥ 1`): cell `i` of each sub-table
/// plus cell `i + 2^(log2−1)`.
fn fold_level(cells: &[PackedCell], log2: u8) -> Vec<PackedCell> {
    let width = 1usize << log2;
    let half = width / 2;
    let mut out = Vec::with_capacity(cells.len() / 2);
    for table in cells.chunks_exact(width) {
        let (low, high) = table.split_at(half);
        out.extend(low.iter().zip(high).map(|(l, h)| {
            let mut sum = *l;
            sum.add(h);
            sum
        }));
    }
    out
}

/// Reconciliation state for one set of ids.
pub struct SetIndex {
    key: SketchKey,
    /// Bulk loading: inserts skip the sketch levels, which [`build_levels`](Self::build_levels)
    /// makes in one pass at the end (a fraction of the cost of maintaining them per insert).
    deferred: bool,
    /// The structures, made on the first insert: an empty set (an idle room) holds only its
    /// key, not ~150 bytes of empty maps and tree.
    sets: Option<Box<Sets>>,
}

/// The structures of a non-empty set.
#[derive(Default)]
struct Sets {
    /// Level `MIN_LOG2 + i` at index `i`, up to the top level.
    levels: Vec<Vec<PackedCell>>,
    /// Short id → (id, ordinal): the ordinal is the number of ids inserted before it, so a
    /// set filled in arrival order (a room) finds an id's arrival number in the same lookup.
    shorts: FastMap<u64, (NodeId, u64)>,
    /// Ids whose short id was already taken by another id. Such an id cannot be named by a
    /// sketch; sessions that meet one fall back to the prefix tree.
    collisions: u64,
    tree: PrefixTree,
}

/// The tree of an empty set, for [`SetIndex::tree`] before the first insert.
static EMPTY_TREE: PrefixTree = PrefixTree::new();

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
            deferred: false,
            sets: None,
        }
    }

    /// The key short ids are derived under.
    pub fn key(&self) -> &SketchKey {
        &self.key
    }

    /// Number of ids.
    pub fn len(&self) -> u64 {
        self.tree().len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.tree().is_empty()
    }

    /// Ids that share a short id with an earlier one (see [`SetIndex`]).
    pub fn collisions(&self) -> u64 {
        self.sets.as_ref().map_or(0, |sets| sets.collisions)
    }

    /// The largest level kept, as a power of two per sub-table: sized for differences up to
    /// [`MAX_SKETCH_FRACTION`] of the set.
    pub fn top_log2(&self) -> u8 {
        let levels = self.sets.as_ref().map_or(0, |sets| sets.levels.len());
        // At most MAX_LOG2_CELLS − MIN_LOG2 + 1 levels, so the sum fits.
        MIN_LOG2.saturating_add(u8::try_from(levels.saturating_sub(1)).unwrap_or(0))
    }

    /// Adds an id; returns whether it was new. O(K × levels + prefix-tree depth), amortized.
    pub fn insert(&mut self, id: NodeId) -> bool {
        let short = self.key.short_id(&id);
        let deferred = self.deferred;
        let sets = self.sets.get_or_insert_with(Box::default);
        let ordinal = sets.tree.len();
        if !sets.tree.insert(id) {
            return false;
        }
        match sets.shorts.entry(short) {
            std::collections::hash_map::Entry::Occupied(_) => sets.collisions += 1,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((id, ordinal));
                if deferred {
                    return true;
                }
                if sets.levels.is_empty() {
                    sets.levels.push(build_level(std::iter::empty(), MIN_LOG2));
                }
                let placement = Placement::new(short);
                for (log2, level) in (MIN_LOG2..).zip(sets.levels.iter_mut()) {
                    toggle_level(level, log2, &placement, 1);
                }
            }
        }
        self.grow_if_needed();
        true
    }

    /// The same set under another key (a new room epoch): short ids and sketch levels are
    /// rebuilt in one pass over `ids`, which must list the set's ids in insertion order; the
    /// prefix tree does not depend on the key and is kept. O(n), about a third of inserting
    /// every id again.
    pub fn rekey<'a>(&mut self, key: SketchKey, ids: impl Iterator<Item = &'a NodeId>) {
        self.key = key;
        self.deferred = false;
        let top = self.top_log2();
        let Some(sets) = self.sets.as_mut() else {
            return;
        };
        sets.collisions = 0;
        let mut shorts = FastMap::default();
        shorts.reserve(usize::try_from(sets.tree.len()).unwrap_or(0));
        for (ordinal, id) in (0u64..).zip(ids) {
            match shorts.entry(key.short_id(id)) {
                std::collections::hash_map::Entry::Occupied(_) => sets.collisions += 1,
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert((*id, ordinal));
                }
            }
        }
        sets.shorts = shorts;
        sets.levels = sets.pyramid(top);
    }

    /// Starts a bulk load: until [`build_levels`](Self::build_levels), inserts leave the sketch
    /// levels alone (sketches are then built from the short ids: right, but O(set)).
    pub fn defer_levels(&mut self) {
        if !self.deferred {
            self.deferred = true;
            if let Some(sets) = self.sets.as_mut() {
                sets.levels.clear();
            }
        }
    }

    /// Ends a bulk load: builds every level, from the short ids once. O(set).
    pub fn build_levels(&mut self) {
        if !self.deferred {
            return;
        }
        self.deferred = false;
        let Some(sets) = self.sets.as_mut().filter(|sets| !sets.shorts.is_empty()) else {
            return;
        };
        let wanted = log2_for((sets.tree.len() as f64 * MAX_SKETCH_FRACTION) as u64);
        sets.levels = sets.pyramid(wanted.max(MIN_LOG2));
    }

    fn grow_if_needed(&mut self) {
        if self.deferred {
            return;
        }
        let top = self.top_log2();
        let Some(sets) = self.sets.as_mut() else {
            return;
        };
        let wanted = log2_for((sets.tree.len() as f64 * MAX_SKETCH_FRACTION) as u64);
        if wanted <= top {
            return;
        }
        // Doubling at least, so rebuilds stay O(1) amortized per insert.
        let new_top = wanted.max(top.saturating_add(1)).min(MAX_LOG2_CELLS);
        // The levels up to `top` stay right; build the new top and fold it down to top + 1.
        let mut fresh = vec![build_level(sets.shorts.keys().copied(), new_top)];
        for log2 in (top.saturating_add(2)..=new_top).rev() {
            let below = fresh.last().map(|cells| fold_level(cells, log2));
            fresh.extend(below);
        }
        sets.levels.extend(fresh.into_iter().rev());
    }

    /// A sketch of the set sized to decode `difference` elements (see [`log2_for`] and
    /// [`sketch_at`](Self::sketch_at) for the cost).
    pub fn sketch(&self, difference: u64) -> Result<Ibf, SketchError> {
        self.sketch_at(log2_for(difference))
    }

    /// The sketch at `2^log2` cells per sub-table, for any `log2 ≤ MAX_LOG2_CELLS`:
    ///
    /// - up to the top level, a copy of one level: O(its size), nothing proportional to the
    ///   set (below the smallest level, a fold of it: O(48 cells));
    /// - above the top level, built from the short ids: O(set). Only differences beyond
    ///   [`MAX_SKETCH_FRACTION`] of the set ask for that, and those are usually better served
    ///   by prefix-tree refinement.
    pub fn sketch_at(&self, log2: u8) -> Result<Ibf, SketchError> {
        if log2 > MAX_LOG2_CELLS {
            return Err(SketchError::BadSize);
        }
        if log2 < MIN_LOG2 {
            return self.sketch_at(MIN_LOG2)?.fold(log2);
        }
        let sets = self.sets.as_deref();
        let level = sets.and_then(|sets| sets.levels.get(usize::from(log2 - MIN_LOG2)));
        match level {
            Some(level) => Ibf::from_cells(log2, level.iter().map(PackedCell::cell).collect()),
            None => {
                let shorts = sets
                    .into_iter()
                    .flat_map(|sets| sets.shorts.keys().copied());
                let cells = build_level(shorts, log2);
                Ibf::from_cells(log2, cells.iter().map(PackedCell::cell).collect())
            }
        }
    }

    /// Whether `id`, which is in the set and has short id `short`, is the id that short id
    /// names (no other id took it first). Free while the set has no collisions.
    pub fn names(&self, id: &NodeId, short: u64) -> bool {
        self.collisions() == 0 || self.locate(short).is_some_and(|(named, _)| named == *id)
    }

    /// The id behind a short id, if any.
    pub fn resolve(&self, short: u64) -> Option<NodeId> {
        self.locate(short).map(|(id, _)| id)
    }

    /// The id behind a short id and its ordinal (how many ids were inserted before it).
    pub fn locate(&self, short: u64) -> Option<(NodeId, u64)> {
        self.sets.as_ref()?.shorts.get(&short).copied()
    }

    /// The prefix tree.
    pub fn tree_mut(&mut self) -> &mut PrefixTree {
        &mut self.sets.get_or_insert_with(Box::default).tree
    }

    /// The prefix tree, read-only (listing ids needs no cached hash).
    pub fn tree(&self) -> &PrefixTree {
        self.sets.as_ref().map_or(&EMPTY_TREE, |sets| &sets.tree)
    }

    /// The collision-resistant root of the set.
    pub fn root(&mut self) -> Summary {
        match self.sets.as_mut() {
            Some(sets) => sets.tree.root(),
            // Hashing the empty tree needs no stored structures.
            None => PrefixTree::new().root(),
        }
    }
}

impl Sets {
    /// Every level from `MIN_LOG2` to `top`: the top built from the short ids, the rest
    /// folded from it.
    fn pyramid(&self, top: u8) -> Vec<Vec<PackedCell>> {
        let mut levels = vec![build_level(self.shorts.keys().copied(), top)];
        for log2 in (MIN_LOG2.saturating_add(1)..=top).rev() {
            let below = levels.last().map(|cells| fold_level(cells, log2));
            levels.extend(below);
        }
        levels.reverse();
        levels
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn key() -> SketchKey {
        SketchKey([5; crate::recon::ibf::KEY_BYTES])
    }

    fn ids(rng: &mut StdRng, n: usize) -> Vec<NodeId> {
        (0..n).map(|_| NodeId(rng.random())).collect()
    }

    #[test]
    fn rekeying_equals_building_under_the_new_key() {
        let mut rng = StdRng::seed_from_u64(11);
        let all = ids(&mut rng, 30_000);
        let mut index = SetIndex::new(key());
        for id in &all {
            index.insert(*id);
        }
        let other = SketchKey([9; crate::recon::ibf::KEY_BYTES]);
        index.rekey(other, all.iter());
        let mut fresh = SetIndex::new(other);
        for id in &all {
            fresh.insert(*id);
        }
        assert_eq!(index.top_log2(), fresh.top_log2());
        for log2 in 0..=fresh.top_log2() {
            assert_eq!(index.sketch_at(log2), fresh.sketch_at(log2), "level {log2}");
        }
        for (ordinal, id) in (0u64..).zip(&all) {
            assert_eq!(index.locate(other.short_id(id)), Some((*id, ordinal)));
        }
        assert_eq!(index.root(), fresh.root());
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
        assert!(index.top_log2() >= log2_for(10_000));
        let mut fresh = Ibf::new(8).unwrap();
        for id in &all {
            fresh.insert(key().short_id(id));
        }
        assert_eq!(index.sketch_at(8).unwrap(), fresh);
    }

    fn fresh(log2: u8, ids: &[NodeId]) -> Ibf {
        let mut ibf = Ibf::new(log2).unwrap();
        let mut seen = BTreeSet::new();
        for id in ids {
            let short = key().short_id(id);
            if seen.insert(short) {
                ibf.insert(short);
            }
        }
        ibf
    }

    #[test]
    fn pyramid_levels_equal_fresh_builds_across_growth() {
        let mut rng = StdRng::seed_from_u64(3);
        let all = ids(&mut rng, 40_000);
        let mut index = SetIndex::new(key());
        assert_eq!(index.top_log2(), MIN_LOG2);
        let mut growths = 0;
        for (n, id) in all.iter().enumerate() {
            let top = index.top_log2();
            index.insert(*id);
            let grew = index.top_log2() != top;
            growths += usize::from(grew);
            // Right after every growth, and at a few points in between.
            if grew || n % 9_999 == 0 {
                let inserted = &all[..=n];
                for log2 in MIN_LOG2..=index.top_log2() {
                    assert_eq!(
                        index.sketch_at(log2).unwrap(),
                        fresh(log2, inserted),
                        "level {log2} after {} ids",
                        n + 1
                    );
                }
            }
        }
        assert!(growths >= 6, "{growths} growths");
        assert_eq!(index.top_log2(), log2_for(8_000));
    }

    /// A bulk load (levels deferred, then built once) ends with the same levels as inserting
    /// one by one, answers right while deferred, and goes on incrementally afterwards.
    #[test]
    fn bulk_loads_build_the_same_levels() {
        let mut rng = StdRng::seed_from_u64(8);
        let all = ids(&mut rng, 30_000);
        let mut one_by_one = SetIndex::new(key());
        let mut bulk = SetIndex::new(key());
        bulk.defer_levels();
        for id in &all[..20_000] {
            one_by_one.insert(*id);
            bulk.insert(*id);
        }
        // Deferred: sketches come from the short ids, and are right.
        assert_eq!(bulk.sketch_at(6).unwrap(), fresh(6, &all[..20_000]));
        bulk.build_levels();
        assert_eq!(bulk.top_log2(), one_by_one.top_log2());
        for id in &all[20_000..] {
            one_by_one.insert(*id);
            bulk.insert(*id);
        }
        assert_eq!(bulk.top_log2(), one_by_one.top_log2());
        for log2 in MIN_LOG2..=bulk.top_log2() {
            assert_eq!(
                bulk.sketch_at(log2).unwrap(),
                one_by_one.sketch_at(log2).unwrap()
            );
        }
    }

    #[test]
    fn any_size_can_be_asked_for() {
        let mut rng = StdRng::seed_from_u64(4);
        let all = ids(&mut rng, 3_000);
        let mut index = SetIndex::new(key());
        all.iter().for_each(|id| {
            index.insert(*id);
        });
        let top = index.top_log2();
        assert_eq!(top, log2_for(600));
        // Below the smallest level, between, at the top and above it.
        for log2 in [0, 2, MIN_LOG2, top, top + 1, top + 5] {
            assert_eq!(index.sketch_at(log2).unwrap(), fresh(log2, &all), "{log2}");
        }
        assert_eq!(index.sketch(10_000).unwrap(), fresh(log2_for(10_000), &all));
        assert_eq!(
            index.sketch_at(MAX_LOG2_CELLS + 1),
            Err(SketchError::BadSize)
        );
        // An extension is the lower halves of the next level, whichever side of the top.
        for log2 in [MIN_LOG2, top, top + 1] {
            let next = index.sketch_at(log2 + 1).unwrap();
            let extended = index
                .sketch_at(log2)
                .unwrap()
                .extend(next.lower_halves().unwrap())
                .unwrap();
            assert_eq!(extended, next);
        }
    }

    #[test]
    fn empty_index_sketches_are_empty() {
        let index = SetIndex::new(key());
        assert!(index.is_empty());
        assert_eq!(index.sketch(0).unwrap(), Ibf::new(MIN_LOG2).unwrap());
        assert_eq!(index.sketch_at(9).unwrap(), Ibf::new(9).unwrap());
        assert_eq!(index.tree().len(), 0);
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
