//! A partitioned invertible Bloom filter over keyed 64-bit short ids.
//!
//! Every node id maps to a *short id*: a keyed 64-bit mix of the id (see
//! [`SketchKey::short_id`]), with a key per room and epoch, so nobody without the key can aim
//! ids at chosen cells ahead of time. The short id
//! alone decides the id's cells (one in each of [`K`] sub-tables) and its checksum, so a decoder
//! that peels a short id out of one cell can remove it from the others.
//!
//! Each sub-table has `2^m` cells and an element's cell is `mix(short) mod 2^m`. Because
//! `(x mod 2^M) mod 2^m = x mod 2^m`, a sketch built at size `2^M` *folds* to any smaller power
//! of two by adding its halves together: the relay keeps one large sketch per room, updated in
//! O(K) per insert, and folds it to the size a session needs instead of rebuilding it.
//!
//! A cell holds the sum of counts, the XOR of short ids and the XOR of checksums. Subtracting two
//! sketches cancels the common elements; peeling the pure cells (count ±1, checksum matching)
//! recovers the short ids each side alone holds. Peeling uses a worklist and stops after at most
//! as many peels as there are cells, whatever the input, so crafted sketches cost bounded work.
//! A decode that leaves cells non-empty fails; it never returns a partial answer as complete.

use crate::node::NodeId;

/// Sub-tables per sketch: each element lands in one cell of each.
pub const K: usize = 3;

/// Largest sub-table size, as a power of two (2^24 cells per sub-table).
pub const MAX_LOG2_CELLS: u8 = 24;

/// The per-room, per-epoch key that maps ids to short ids.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SketchKey(pub [u8; 32]);

impl std::fmt::Debug for SketchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are not secrets from clients, but they do not belong in logs either.
        f.write_str("SketchKey(..)")
    }
}

impl SketchKey {
    /// The short id of a node id under this key.
    ///
    /// Ids are already uniform blake3 outputs, so a keyed 64-bit mixer over their first 16 bytes
    /// is enough to hide the mapping from anyone without the key, at a few nanoseconds per id
    /// (a keyed blake3 per id would cost ~76 ns: 76 ms to sketch a million ids from scratch).
    pub fn short_id(&self, id: &NodeId) -> u64 {
        let [k0, k1, ..] = self.words();
        let [
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
            a7,
            b0,
            b1,
            b2,
            b3,
            b4,
            b5,
            b6,
            b7,
            ..,
        ] = *id.as_bytes();
        let first = u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]);
        let second = u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]);
        mix(mix(first ^ k0) ^ second ^ k1)
    }

    fn words(&self) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(self.0.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *word = u64::from_le_bytes(bytes);
        }
        words
    }
}

/// One cell: count, XOR of short ids, XOR of checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    /// Elements added minus elements removed (or subtracted).
    pub count: i64,
    /// XOR of the short ids in the cell.
    pub short: u64,
    /// XOR of the short ids' checksums.
    pub check: u32,
}

impl Cell {
    fn toggle(&mut self, short: u64, delta: i64) {
        self.count = self.count.wrapping_add(delta);
        self.short ^= short;
        self.check ^= checksum(short);
    }

    fn add(&mut self, other: &Cell) {
        self.count = self.count.wrapping_add(other.count);
        self.short ^= other.short;
        self.check ^= other.check;
    }

    fn is_empty(&self) -> bool {
        *self == Cell::default()
    }

    /// Holds exactly one element (count ±1 and a matching checksum); returns its sign.
    fn pure(&self) -> Option<i64> {
        let sign = match self.count {
            1 => 1,
            -1 => -1,
            _ => return None,
        };
        (checksum(self.short) == self.check).then_some(sign)
    }
}

/// SplitMix64 finalizer: a bijective mixer with full avalanche.
pub(super) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Independent salts per sub-table and for the checksum.
const SALTS: [u64; K] = [
    0x9e37_79b9_7f4a_7c15,
    0xc2b2_ae3d_27d4_eb4f,
    0x1656_67b1_9e37_79f9,
];
const CHECK_SALT: u64 = 0x27d4_eb2f_1656_67c5;

fn checksum(short: u64) -> u32 {
    let [a, b, c, d, ..] = mix(short ^ CHECK_SALT).to_le_bytes();
    u32::from_le_bytes([a, b, c, d])
}

/// The cell of `short` within sub-table `table` of `2^log2` cells.
fn slot(short: u64, table: usize, log2: u8) -> usize {
    let salt = SALTS.get(table).copied().unwrap_or_default();
    let mask = (1u64 << log2).wrapping_sub(1);
    // log2 ≤ MAX_LOG2_CELLS, so the masked value fits in usize on every supported target.
    usize::try_from(mix(short ^ salt) & mask).unwrap_or_default()
}

/// Why a sketch could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SketchError {
    /// The two sketches have different sizes.
    #[error("sketch sizes differ: 2^{0} and 2^{1} cells per sub-table")]
    SizeMismatch(u8, u8),
    /// A size outside 2^0..=2^MAX_LOG2_CELLS, or a cell count that does not match it.
    #[error("invalid sketch size")]
    BadSize,
    /// Folding can only shrink a sketch.
    #[error("cannot fold a sketch of 2^{from} cells per sub-table to 2^{to}")]
    CannotGrow {
        /// Current size.
        from: u8,
        /// Requested size.
        to: u8,
    },
    /// Peeling stopped with non-empty cells: the difference is larger than the sketch can hold
    /// (or the sketch was crafted). Retry larger or refine another way.
    #[error("sketch did not decode ({remaining} non-empty cells left)")]
    Undecodable {
        /// Cells still non-empty when peeling stopped.
        remaining: usize,
    },
}

/// What a decoded difference says, as short ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Difference {
    /// In the minuend (`self` in [`Ibf::subtract`]) only.
    pub ours: Vec<u64>,
    /// In the subtrahend only.
    pub theirs: Vec<u64>,
}

/// A partitioned IBF: [`K`] sub-tables of `2^log2` cells each, stored one after the other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ibf {
    log2: u8,
    cells: Vec<Cell>,
}

impl Ibf {
    /// An empty sketch with `2^log2` cells per sub-table.
    pub fn new(log2: u8) -> Result<Self, SketchError> {
        if log2 > MAX_LOG2_CELLS {
            return Err(SketchError::BadSize);
        }
        Ok(Self {
            log2,
            cells: vec![Cell::default(); K << log2],
        })
    }

    /// An empty sketch with `2^min(log2, MAX_LOG2_CELLS)` cells per sub-table.
    pub fn new_clamped(log2: u8) -> Self {
        let log2 = log2.min(MAX_LOG2_CELLS);
        Self {
            log2,
            cells: vec![Cell::default(); K << log2],
        }
    }

    /// Rebuilds a sketch from received cells, checking that their number matches the size.
    pub fn from_cells(log2: u8, cells: Vec<Cell>) -> Result<Self, SketchError> {
        if log2 > MAX_LOG2_CELLS || cells.len() != K << log2 {
            return Err(SketchError::BadSize);
        }
        Ok(Self { log2, cells })
    }

    /// Cells per sub-table, as a power of two.
    pub fn log2(&self) -> u8 {
        self.log2
    }

    /// All cells, sub-table after sub-table.
    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    /// Adds one element by its short id. O(K).
    pub fn insert(&mut self, short: u64) {
        self.toggle(short, 1);
    }

    /// Removes one element by its short id. O(K).
    pub fn remove(&mut self, short: u64) {
        self.toggle(short, -1);
    }

    fn toggle(&mut self, short: u64, delta: i64) {
        let width = 1usize << self.log2;
        for table in 0..K {
            let index = table * width + slot(short, table, self.log2);
            if let Some(cell) = self.cells.get_mut(index) {
                cell.toggle(short, delta);
            }
        }
    }

    /// The same sketch at `2^to` cells per sub-table: each cell is the sum of the cells that map
    /// onto it. Costs one pass over this sketch; the result equals a sketch built at that size.
    pub fn fold(&self, to: u8) -> Result<Self, SketchError> {
        if to > self.log2 {
            return Err(SketchError::CannotGrow {
                from: self.log2,
                to,
            });
        }
        let (from_width, to_width) = (1usize << self.log2, 1usize << to);
        let mut folded = Self::new(to)?;
        for (index, cell) in self.cells.iter().enumerate() {
            let (table, offset) = (index / from_width, index % from_width);
            if let Some(target) = folded.cells.get_mut(table * to_width + offset % to_width) {
                target.add(cell);
            }
        }
        Ok(folded)
    }

    /// `self − other`, cell by cell. Common elements cancel.
    pub fn subtract(&self, other: &Ibf) -> Result<Ibf, SketchError> {
        if self.log2 != other.log2 {
            return Err(SketchError::SizeMismatch(self.log2, other.log2));
        }
        let cells = self
            .cells
            .iter()
            .zip(&other.cells)
            .map(|(a, b)| Cell {
                count: a.count.wrapping_sub(b.count),
                short: a.short ^ b.short,
                check: a.check ^ b.check,
            })
            .collect();
        Ok(Ibf {
            log2: self.log2,
            cells,
        })
    }

    /// Peels a difference sketch (see [`subtract`](Self::subtract)). Work is linear in the
    /// number of cells and bounded whatever the input.
    pub fn decode(mut self) -> Result<Difference, SketchError> {
        let width = 1usize << self.log2;
        let mut out = Difference::default();
        let mut work: Vec<usize> = (0..self.cells.len())
            .filter(|&i| self.cell_pure(i).is_some())
            .collect();
        // Every real element is peeled once; more peels than cells means a crafted sketch.
        let mut budget = self.cells.len();
        while let Some(index) = work.pop() {
            let Some(sign) = self.cell_pure(index) else {
                continue;
            };
            let Some(short) = self.cells.get(index).map(|c| c.short) else {
                continue;
            };
            if budget == 0 {
                break;
            }
            budget -= 1;
            let side = if sign > 0 {
                &mut out.ours
            } else {
                &mut out.theirs
            };
            side.push(short);
            for table in 0..K {
                let target = table * width + slot(short, table, self.log2);
                if let Some(cell) = self.cells.get_mut(target) {
                    cell.toggle(short, -sign);
                }
                if self.cell_pure(target).is_some() {
                    work.push(target);
                }
            }
        }
        let remaining = self.cells.iter().filter(|c| !c.is_empty()).count();
        if remaining > 0 {
            return Err(SketchError::Undecodable { remaining });
        }
        Ok(out)
    }

    fn cell_pure(&self, index: usize) -> Option<i64> {
        self.cells.get(index).and_then(Cell::pure)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn key() -> SketchKey {
        SketchKey([7; 32])
    }

    fn random_ids(rng: &mut StdRng, n: usize) -> Vec<NodeId> {
        (0..n).map(|_| NodeId(rng.random())).collect()
    }

    fn sketch(log2: u8, ids: &[NodeId]) -> Ibf {
        let mut ibf = Ibf::new(log2).unwrap();
        for id in ids {
            ibf.insert(key().short_id(id));
        }
        ibf
    }

    fn shorts(ids: &[NodeId]) -> BTreeSet<u64> {
        ids.iter().map(|id| key().short_id(id)).collect()
    }

    /// The decoded difference names exactly these ids on each side.
    fn assert_decoded(diff: &Difference, ours: &[NodeId], theirs: &[NodeId]) {
        assert_eq!(
            diff.ours.iter().copied().collect::<BTreeSet<_>>(),
            shorts(ours)
        );
        assert_eq!(
            diff.theirs.iter().copied().collect::<BTreeSet<_>>(),
            shorts(theirs)
        );
    }

    #[test]
    fn decodes_exactly_the_symmetric_difference() {
        let mut rng = StdRng::seed_from_u64(1);
        let common = random_ids(&mut rng, 5_000);
        let only_a = random_ids(&mut rng, 300);
        let only_b = random_ids(&mut rng, 200);
        let a: Vec<NodeId> = common.iter().chain(&only_a).copied().collect();
        let b: Vec<NodeId> = common.iter().chain(&only_b).copied().collect();
        // 3 × 512 cells for 500 differences: α ≈ 3.
        let diff = sketch(9, &a)
            .subtract(&sketch(9, &b))
            .unwrap()
            .decode()
            .unwrap();
        assert_decoded(&diff, &only_a, &only_b);
        assert_eq!(diff.ours.len() + diff.theirs.len(), 500);
    }

    #[test]
    fn folding_equals_building_small() {
        let mut rng = StdRng::seed_from_u64(2);
        let ids = random_ids(&mut rng, 2_000);
        let big = sketch(14, &ids);
        for to in [0, 3, 8, 14] {
            assert_eq!(big.fold(to).unwrap(), sketch(to, &ids), "fold to 2^{to}");
        }
        assert_eq!(
            big.fold(15),
            Err(SketchError::CannotGrow { from: 14, to: 15 })
        );
    }

    #[test]
    fn success_rate_at_alpha_one_and_a_half() {
        // d = 1,000 in 3 × 512 cells (α ≈ 1.54): nearly always decodes; a failure is reported,
        // never a wrong answer.
        let mut rng = StdRng::seed_from_u64(3);
        let mut ok = 0;
        for _ in 0..50 {
            let only_a = random_ids(&mut rng, 500);
            let only_b = random_ids(&mut rng, 500);
            match sketch(9, &only_a)
                .subtract(&sketch(9, &only_b))
                .unwrap()
                .decode()
            {
                Ok(diff) => {
                    assert_decoded(&diff, &only_a, &only_b);
                    ok += 1;
                }
                Err(SketchError::Undecodable { remaining }) => assert!(remaining > 0),
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(ok >= 45, "only {ok} of 50 decoded");
    }

    #[test]
    fn too_small_a_sketch_fails_instead_of_lying() {
        let mut rng = StdRng::seed_from_u64(4);
        let only_a = random_ids(&mut rng, 400);
        let result = sketch(6, &only_a)
            .subtract(&Ibf::new(6).unwrap())
            .unwrap()
            .decode();
        assert!(matches!(result, Err(SketchError::Undecodable { .. })));
    }

    #[test]
    fn garbage_cells_cost_bounded_work_and_never_panic() {
        let mut rng = StdRng::seed_from_u64(5);
        for log2 in [0u8, 1, 4, 8] {
            for _ in 0..200 {
                let cells = (0..K << log2)
                    .map(|_| Cell {
                        count: rng.random_range(-2..=2),
                        short: rng.random(),
                        check: rng.random(),
                    })
                    .collect();
                let ibf = Ibf::from_cells(log2, cells).unwrap();
                // Decoding either fails or returns elements that rebuild exactly these cells.
                if let Ok(diff) = ibf.clone().decode() {
                    let mut rebuilt = Ibf::new(log2).unwrap();
                    diff.ours.iter().for_each(|s| rebuilt.insert(*s));
                    diff.theirs.iter().for_each(|s| rebuilt.remove(*s));
                    assert_eq!(rebuilt, ibf);
                }
            }
        }
        // Pure-looking cells crafted to re-appear after peeling still stop.
        let short = 42u64;
        let crafted = vec![
            Cell {
                count: 1,
                short,
                check: checksum(short)
            };
            K
        ];
        assert!(
            Ibf::from_cells(0, crafted)
                .unwrap()
                .decode()
                .is_ok_and(|d| d.ours == vec![42])
        );
        assert_eq!(
            Ibf::from_cells(3, vec![Cell::default(); 5]),
            Err(SketchError::BadSize)
        );
        assert_eq!(Ibf::new(MAX_LOG2_CELLS + 1), Err(SketchError::BadSize));
    }

    #[test]
    fn insert_then_remove_is_empty() {
        let mut rng = StdRng::seed_from_u64(6);
        let ids = random_ids(&mut rng, 100);
        let mut ibf = sketch(5, &ids);
        for id in &ids {
            ibf.remove(key().short_id(id));
        }
        assert_eq!(ibf, Ibf::new(5).unwrap());
    }

    #[test]
    fn keys_change_the_mapping() {
        let id = NodeId([3; 32]);
        assert_ne!(
            SketchKey([1; 32]).short_id(&id),
            SketchKey([2; 32]).short_id(&id)
        );
    }
}
