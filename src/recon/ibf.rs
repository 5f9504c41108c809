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
mod tests;
