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
//! of two by adding its halves together ([`Ibf::fold`]): sizes nest.
//!
//! The relay keeps every size from small to large, each updated in O(K) per insert (see
//! [`super::index`]), so a session's sketch is a copy, and a failed decode is retried by
//! *extension*: level `L` is the fold of level `L + 1`, so cell `i` of level `L` is cell `i`
//! plus cell `i + 2^L` of level `L + 1` in each sub-table. Sending only the lower half of every
//! sub-table at `L + 1` ([`Ibf::lower_halves`]) lets the receiver rebuild the upper halves from
//! the level-`L` cells it already holds ([`Ibf::extend`]): a retry costs no byte the first
//! attempt did not need.
//!
//! A cell holds the sum of counts, the XOR of short ids and the XOR of checksums. Subtracting two
//! sketches cancels the common elements; peeling the pure cells (count ±1, checksum matching,
//! short id hashing to that very cell) recovers the short ids each side alone holds. Peeling
//! uses a worklist that never holds a cell twice and stops after at most as many peels as there
//! are cells, whatever the input, so crafted sketches cost O(cells) work. A decode that leaves
//! cells non-empty fails; it never returns a partial answer as complete.
//!
//! **Cell layout.** In memory a [`Cell`] is `count: i64, short: u64, check: u32`. On the wire
//! ([`encode_cells`]) it is [`CELL_BYTES`] = 13 bytes: `short` (u64 LE), `check` (u32 LE), then
//! `count` modulo 256 as one byte, read back sign-extended (`i8` → `i64`). All count arithmetic
//! here is therefore taken modulo 256: a cell is pure when its count is ±1 modulo 256 and empty
//! when its count is 0 modulo 256. One byte suffices because the count does not guard purity —
//! the checksum (and the cell's position) does, exactly as with full counts, since a cell with
//! several elements can have count ±1 anyway — and the count of a truly pure cell is exactly
//! ±1, so modulo 256 it still gives the side. Hence a sketch subtracted from a wire-decoded one
//! peels the same whatever the true counts were.

use crate::node::{NodeId, RoomId};

/// Sub-tables per sketch: each element lands in one cell of each.
pub const K: usize = 3;

/// Largest sub-table size, as a power of two (2^24 cells per sub-table).
pub const MAX_LOG2_CELLS: u8 = 24;

/// Bytes per cell on the wire (see [`encode_cells`]).
pub const CELL_BYTES: usize = 13;

/// Bytes per short id in `want`, `bucket_ids` and `missing`: a u64, little-endian.
pub const SHORT_BYTES: usize = 8;

/// The per-room, per-epoch key that maps ids to short ids.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SketchKey(pub [u8; KEY_BYTES]);

/// Bytes in a sketch key.
pub const KEY_BYTES: usize = 16;

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
        let (first, second) = id.leading_words();
        mix(mix(first ^ k0) ^ second ^ k1)
    }

    /// The key of room `room` in epoch `epoch`: blake3 in key-derivation mode over both. A
    /// room's epoch is drawn at random when the room is created, so nobody can know the key
    /// before the epoch exists; clients never derive it, they receive it with the sketch.
    pub fn for_room(room: &RoomId, epoch: u64) -> Self {
        let mut h = blake3::Hasher::new_derive_key("weft 2025 recon sketch key v1");
        h.update(&(room.as_str().len() as u64).to_le_bytes());
        h.update(room.as_str().as_bytes());
        h.update(&epoch.to_le_bytes());
        let derived = h.finalize();
        Self(
            derived
                .as_bytes()
                .first_chunk()
                .copied()
                .unwrap_or_default(),
        )
    }

    /// The key's bytes, as they travel (protocol/README.md §5.7.1).
    pub fn wire(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// A key received on the wire; `None` unless it is exactly [`KEY_BYTES`] long.
    pub fn from_wire(bytes: &[u8]) -> Option<Self> {
        <[u8; KEY_BYTES]>::try_from(bytes).ok().map(Self)
    }

    fn words(&self) -> [u64; 2] {
        let mut words = [0u64; 2];
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

    fn sub(&self, other: &Cell) -> Cell {
        Cell {
            count: self.count.wrapping_sub(other.count),
            short: self.short ^ other.short,
            check: self.check ^ other.check,
        }
    }

    /// Empty, counting modulo 256 (see the module doc).
    fn is_empty(&self) -> bool {
        self.short == 0 && self.check == 0 && wire_count(self.count) == 0
    }

    /// Looks like exactly one element (count ±1 modulo 256 and a matching checksum); returns
    /// its sign. The caller also checks that the element hashes to this cell.
    fn pure(&self) -> Option<i64> {
        let sign = match wire_count(self.count) as i8 {
            1 => 1,
            -1 => -1,
            _ => return None,
        };
        (checksum(self.short) == self.check).then_some(sign)
    }
}

/// A count modulo 256, as one wire byte (two's complement truncation).
fn wire_count(count: i64) -> u8 {
    count.to_le_bytes().first().copied().unwrap_or_default()
}

/// Packs cells for the wire, [`CELL_BYTES`] each: short id (u64 LE), checksum (u32 LE), count
/// modulo 256 (one byte). See the module doc for why one count byte is enough.
pub fn encode_cells(cells: &[Cell]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cells.len().saturating_mul(CELL_BYTES));
    for cell in cells {
        out.extend_from_slice(&cell.short.to_le_bytes());
        out.extend_from_slice(&cell.check.to_le_bytes());
        out.push(wire_count(cell.count));
    }
    out
}

/// Unpacks [`encode_cells`] output; the count byte is read as a signed byte. Fails with
/// [`SketchError::BadSize`] unless the length is a multiple of [`CELL_BYTES`].
pub fn decode_cells(bytes: &[u8]) -> Result<Vec<Cell>, SketchError> {
    if bytes.len() % CELL_BYTES != 0 {
        return Err(SketchError::BadSize);
    }
    Ok(bytes
        .chunks_exact(CELL_BYTES)
        .map(|chunk| {
            let mut fields = [0u8; CELL_BYTES];
            fields.copy_from_slice(chunk);
            let [s0, s1, s2, s3, s4, s5, s6, s7, c0, c1, c2, c3, count] = fields;
            Cell {
                count: i64::from(i8::from_le_bytes([count])),
                short: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
                check: u32::from_le_bytes([c0, c1, c2, c3]),
            }
        })
        .collect())
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
    masked(mix(short ^ salt), log2)
}

fn masked(hash: u64, log2: u8) -> usize {
    let mask = 1u64
        .checked_shl(u32::from(log2))
        .unwrap_or(0)
        .wrapping_sub(1);
    // log2 ≤ MAX_LOG2_CELLS, so the masked value fits in usize on every supported target.
    usize::try_from(hash & mask).unwrap_or_default()
}

/// Where one short id lands in a sketch of *any* size: its per-sub-table hashes (its cell in a
/// sub-table of `2^m` cells is the hash modulo `2^m`) and its checksum. Computing it once lets a
/// caller update sketches of many sizes with [`K`] mixes in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    short: u64,
    hashes: [u64; K],
    check: u32,
}

impl Placement {
    /// The placement of `short`.
    pub fn new(short: u64) -> Self {
        Self {
            short,
            hashes: SALTS.map(|salt| mix(short ^ salt)),
            check: checksum(short),
        }
    }

    /// The short id.
    pub fn short(&self) -> u64 {
        self.short
    }

    /// The short id's checksum.
    pub fn check(&self) -> u32 {
        self.check
    }

    /// The index of the element's cell in each sub-table, in the flat layout of a sketch with
    /// `2^log2` cells per sub-table (sub-table after sub-table, as [`Ibf::cells`]).
    pub fn cells(&self, log2: u8) -> [usize; K] {
        let width = 1usize.checked_shl(u32::from(log2)).unwrap_or(0);
        let mut out = [0usize; K];
        for (table, (index, hash)) in out.iter_mut().zip(self.hashes).enumerate() {
            *index = table.wrapping_mul(width).wrapping_add(masked(hash, log2));
        }
        out
    }
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
        let placement = Placement::new(short);
        for index in placement.cells(self.log2) {
            if let Some(cell) = self.cells.get_mut(index) {
                cell.count = cell.count.wrapping_add(delta);
                cell.short ^= placement.short;
                cell.check ^= placement.check;
            }
        }
    }

    /// The first half of every sub-table (`K × 2^(log2 − 1)` cells, sub-table after sub-table):
    /// what a sender sends to *extend* a peer's sketch at `log2 − 1` to this size (see
    /// [`extend`](Self::extend)). [`SketchError::BadSize`] at `log2 = 0`.
    pub fn lower_halves(&self) -> Result<Vec<Cell>, SketchError> {
        if self.log2 == 0 {
            return Err(SketchError::BadSize);
        }
        let width = 1usize << self.log2;
        Ok(self
            .cells
            .chunks_exact(width)
            .flat_map(|table| table.iter().take(width / 2).copied())
            .collect())
    }

    /// The sketch at `log2 + 1`, from this one (level `L = log2`, e.g. as a peer sent it) and
    /// the lower halves of level `L + 1` ([`lower_halves`](Self::lower_halves) of the peer's
    /// sketch there). Since cell `i` of level `L` is cell `i` plus cell `i + 2^L` of level
    /// `L + 1`, each upper-half cell is this sketch's cell minus the lower-half one (counts
    /// wrapping, so wire-truncated counts stay right modulo 256). [`SketchError::BadSize`]
    /// unless `lower` holds `K × 2^L` cells and `L + 1 ≤ MAX_LOG2_CELLS`.
    pub fn extend(&self, lower: Vec<Cell>) -> Result<Ibf, SketchError> {
        if self.log2 >= MAX_LOG2_CELLS || lower.len() != self.cells.len() {
            return Err(SketchError::BadSize);
        }
        let width = 1usize << self.log2;
        let mut cells = Vec::with_capacity(self.cells.len() * 2);
        for (folded, low) in self
            .cells
            .chunks_exact(width)
            .zip(lower.chunks_exact(width))
        {
            cells.extend_from_slice(low);
            cells.extend(folded.iter().zip(low).map(|(f, l)| f.sub(l)));
        }
        Ibf::from_cells(self.log2 + 1, cells)
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
            .map(|(a, b)| a.sub(b))
            .collect();
        Ok(Ibf {
            log2: self.log2,
            cells,
        })
    }

    /// Peels a difference sketch (see [`subtract`](Self::subtract)). Work is O(cells) whatever
    /// the input: at most one peel per cell, and the worklist never holds a cell twice. Counts
    /// are taken modulo 256 (see the module doc), so wire-decoded sketches peel too.
    pub fn decode(mut self) -> Result<Difference, SketchError> {
        let mut out = Difference::default();
        let mut queued = vec![false; self.cells.len()];
        let mut work: Vec<usize> = Vec::new();
        for (index, flag) in queued.iter_mut().enumerate() {
            if self.cell_pure(index).is_some() {
                *flag = true;
                work.push(index);
            }
        }
        // Every real element is peeled once; more peels than cells means a crafted sketch.
        let mut budget = self.cells.len();
        while let Some(index) = work.pop() {
            if let Some(flag) = queued.get_mut(index) {
                *flag = false;
            }
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
            for target in Placement::new(short).cells(self.log2) {
                if let Some(cell) = self.cells.get_mut(target) {
                    cell.toggle(short, -sign);
                }
                if self.cell_pure(target).is_none() {
                    continue;
                }
                if let Some(flag) = queued.get_mut(target).filter(|flag| !**flag) {
                    *flag = true;
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

    /// The sign of the one element cell `index` holds, if it looks pure *and* that element
    /// hashes to this very cell (a free extra check against false purity).
    fn cell_pure(&self, index: usize) -> Option<i64> {
        let cell = self.cells.get(index)?;
        let sign = cell.pure()?;
        let width = 1usize << self.log2;
        (slot(cell.short, index / width, self.log2) == index % width).then_some(sign)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn key() -> SketchKey {
        SketchKey([7; KEY_BYTES])
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
                assert_decode_is_consistent(&ibf);
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

    /// Decoding either fails or returns elements that rebuild exactly these cells (counts
    /// modulo 256, as peeling sees them).
    fn assert_decode_is_consistent(ibf: &Ibf) {
        if let Ok(diff) = ibf.clone().decode() {
            let mut rebuilt = Ibf::new(ibf.log2()).unwrap();
            diff.ours.iter().for_each(|s| rebuilt.insert(*s));
            diff.theirs.iter().for_each(|s| rebuilt.remove(*s));
            assert_eq!(encode_cells(rebuilt.cells()), encode_cells(ibf.cells()));
        }
    }

    /// What the peer receives: the sketch through the wire, counts truncated.
    fn through_wire(ibf: &Ibf) -> Ibf {
        Ibf::from_cells(
            ibf.log2(),
            decode_cells(&encode_cells(ibf.cells())).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn wire_packing_round_trips() {
        let mut rng = StdRng::seed_from_u64(10);
        let cells: Vec<Cell> = (0..100)
            .map(|_| Cell {
                count: rng.random_range(-128..=127),
                short: rng.random(),
                check: rng.random(),
            })
            .collect();
        let bytes = encode_cells(&cells);
        assert_eq!(bytes.len(), cells.len() * CELL_BYTES);
        assert_eq!(decode_cells(&bytes).unwrap(), cells);
        // Layout: short LE, check LE, count byte.
        let one = Cell {
            count: -2,
            short: 0x0102_0304_0506_0708,
            check: 0x0a0b_0c0d,
        };
        assert_eq!(
            encode_cells(&[one]),
            vec![8, 7, 6, 5, 4, 3, 2, 1, 0x0d, 0x0c, 0x0b, 0x0a, 0xfe]
        );
        // Larger counts travel modulo 256, sign-extended on arrival.
        let big = Cell { count: 300, ..one };
        assert_eq!(decode_cells(&encode_cells(&[big])).unwrap()[0].count, 44);
        let big = Cell { count: 200, ..one };
        assert_eq!(decode_cells(&encode_cells(&[big])).unwrap()[0].count, -56);
        assert_eq!(decode_cells(&[0; 12]), Err(SketchError::BadSize));
        assert_eq!(decode_cells(&[]), Ok(vec![]));
    }

    #[test]
    fn peels_with_wire_truncated_counts() {
        // 3 × 16 cells for 20,000 common ids: ~400 per cell, far beyond one signed byte.
        let mut rng = StdRng::seed_from_u64(11);
        let common = random_ids(&mut rng, 20_000);
        let only_relay = random_ids(&mut rng, 7);
        let only_client = random_ids(&mut rng, 5);
        let relay: Vec<NodeId> = common.iter().chain(&only_relay).copied().collect();
        let client: Vec<NodeId> = common.iter().chain(&only_client).copied().collect();
        let relay_sketch = sketch(4, &relay);
        assert!(relay_sketch.cells().iter().all(|c| c.count > 127));
        let received = through_wire(&relay_sketch);
        assert_ne!(received, relay_sketch);
        // Either order of subtraction, and both sides truncated, peel the same.
        let diff = received
            .subtract(&sketch(4, &client))
            .unwrap()
            .decode()
            .unwrap();
        assert_decoded(&diff, &only_relay, &only_client);
        let diff = sketch(4, &client)
            .subtract(&received)
            .unwrap()
            .decode()
            .unwrap();
        assert_decoded(&diff, &only_client, &only_relay);
        let diff = received
            .subtract(&through_wire(&sketch(4, &client)))
            .unwrap()
            .decode()
            .unwrap();
        assert_decoded(&diff, &only_relay, &only_client);
    }

    #[test]
    fn extension_rebuilds_the_next_level() {
        let mut rng = StdRng::seed_from_u64(12);
        let ids = random_ids(&mut rng, 3_000);
        for log2 in 1..=10u8 {
            let next = sketch(log2, &ids);
            let level = next.fold(log2 - 1).unwrap();
            assert_eq!(level, sketch(log2 - 1, &ids));
            let lower = next.lower_halves().unwrap();
            assert_eq!(lower.len(), K << (log2 - 1));
            assert_eq!(level.extend(lower.clone()).unwrap(), next);
            // Through the wire (counts modulo 256), the rebuilt level matches modulo 256.
            let lower_wire = decode_cells(&encode_cells(&lower)).unwrap();
            let rebuilt = through_wire(&level).extend(lower_wire).unwrap();
            assert_eq!(encode_cells(rebuilt.cells()), encode_cells(next.cells()));
        }
        assert_eq!(
            Ibf::new(0).unwrap().lower_halves(),
            Err(SketchError::BadSize)
        );
        let level = sketch(3, &ids);
        assert_eq!(
            level.extend(vec![Cell::default(); 5]),
            Err(SketchError::BadSize)
        );
        let top = Ibf::new(MAX_LOG2_CELLS).unwrap();
        let lower = vec![Cell::default(); top.cells().len()];
        assert_eq!(top.extend(lower), Err(SketchError::BadSize));
    }

    #[test]
    fn a_failed_decode_succeeds_after_extension() {
        // 3 × 64 cells cannot hold 240 differences; 3 × 128 can (α = 1.6).
        let mut rng = StdRng::seed_from_u64(13);
        let mut extended_ok = 0;
        for _ in 0..20 {
            let common = random_ids(&mut rng, 2_000);
            let only_relay = random_ids(&mut rng, 140);
            let only_client = random_ids(&mut rng, 100);
            let relay: Vec<NodeId> = common.iter().chain(&only_relay).copied().collect();
            let client: Vec<NodeId> = common.iter().chain(&only_client).copied().collect();
            // The relay sends level 6; the client's own sketch at 6 does not peel.
            let sent = through_wire(&sketch(7, &relay).fold(6).unwrap());
            let first = sent.subtract(&sketch(6, &client)).unwrap().decode();
            assert!(matches!(first, Err(SketchError::Undecodable { .. })));
            // The extension: lower halves of level 7 only, as many cells as level 6.
            let lower = encode_cells(&sketch(7, &relay).lower_halves().unwrap());
            assert_eq!(lower.len(), sent.cells().len() * CELL_BYTES);
            let full = sent.extend(decode_cells(&lower).unwrap()).unwrap();
            match full.subtract(&sketch(7, &client)).unwrap().decode() {
                Ok(diff) => {
                    assert_decoded(&diff, &only_relay, &only_client);
                    extended_ok += 1;
                }
                Err(SketchError::Undecodable { .. }) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(extended_ok >= 18, "only {extended_ok} of 20 decoded");
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
    fn room_keys_differ_by_room_and_epoch() {
        let a = RoomId::new("a").unwrap();
        let b = RoomId::new("b").unwrap();
        assert_eq!(SketchKey::for_room(&a, 1), SketchKey::for_room(&a, 1));
        assert_ne!(SketchKey::for_room(&a, 1), SketchKey::for_room(&a, 2));
        assert_ne!(SketchKey::for_room(&a, 1), SketchKey::for_room(&b, 1));
        let key = SketchKey::for_room(&a, 1);
        assert_eq!(SketchKey(*key.wire()), key);
    }

    #[test]
    fn keys_change_the_mapping() {
        let id = NodeId([3; 32]);
        assert_ne!(
            SketchKey([1; KEY_BYTES]).short_id(&id),
            SketchKey([2; KEY_BYTES]).short_id(&id)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_wire_bytes_never_panic_and_terminate(
            log2 in 0u8..=7,
            seed in proptest::prelude::any::<u64>(),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..(K << 7) * CELL_BYTES),
            counts in proptest::collection::vec(-3i8..=3, 0..(K << 7)),
        ) {
            // Arbitrary lengths only decode at multiples of CELL_BYTES.
            proptest::prop_assert_eq!(decode_cells(&bytes).is_ok(), bytes.len() % CELL_BYTES == 0);
            // Exactly sized garbage, with pure-looking cells mixed in, against a real sketch.
            let n = K << log2;
            let mut wire: Vec<u8> = bytes.iter().copied().cycle().take(n * CELL_BYTES).collect();
            if wire.len() < n * CELL_BYTES {
                wire.resize(n * CELL_BYTES, 0);
            }
            let mut cells = decode_cells(&wire).unwrap();
            for (cell, count) in cells.iter_mut().zip(&counts) {
                cell.count = i64::from(*count);
                if *count == 1 || *count == -1 {
                    cell.check = checksum(cell.short);
                }
            }
            let garbage = Ibf::from_cells(log2, cells).unwrap();
            let mut rng = StdRng::seed_from_u64(seed);
            let real = sketch(log2, &random_ids(&mut rng, 50));
            assert_decode_is_consistent(&garbage);
            let diff = garbage.subtract(&real).unwrap();
            assert_decode_is_consistent(&diff);
            // Extending garbage by garbage is as safe.
            if let Ok(lower) = decode_cells(&wire) {
                if let Ok(extended) = garbage.extend(lower) {
                    assert_decode_is_consistent(&extended);
                }
            }
        }
    }
}
