//! Sketch reconciliation frames, negotiated with the `ibf` and `mst` capabilities:
//! `sketch`, `want`, `retry`, `buckets`, `bucket_ids`, `missing` (protocol/README.md §5.7–§5.9).
//!
//! Bulk fields (cells, short ids, bucket summaries) travel as one MessagePack `bin` each, in the
//! fixed layouts of the spec, so a million short ids cost 8 MB and not 9 MB of integer markers.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Message;
use crate::node::TreeHash;
use crate::recon::SetDigest;
use crate::recon::ibf::CELL_BYTES;

pub use crate::recon::ibf::SHORT_BYTES;

/// Bytes of a sketch key on the wire.
pub const KEY_BYTES: usize = 16;

/// Relay to client, plan `sketch`: the relay's set as an invertible Bloom filter, possibly
/// split over several frames (cells are appended in order until the sketch is complete).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sketch {
    /// Cells per sub-table of the sketch being sent, as a power of two.
    pub log2: u8,
    /// `false`: the cells are the whole sketch at `log2`. `true`: they are the lower half of
    /// each sub-table at `log2`, extending the client's sketch at `log2 − 1` (§5.7).
    pub extension: bool,
    /// The room's sketch key (16 bytes) that maps ids to short ids and cells.
    pub key: Bytes,
    /// Packed cells, 13 bytes each (§5.7).
    pub cells: Bytes,
}

/// A set's prefix-tree root (protocol/README.md §5.8): a collision-resistant digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRoot {
    /// Number of ids in the set.
    pub count: u64,
    /// Prefix-tree root hash of the set.
    pub hash: TreeHash,
}

/// Client to relay after a successful decode: short ids of the nodes it lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    /// Packed short ids (8 bytes each).
    pub shorts: Bytes,
    /// True on the final frame.
    pub last: bool,
    /// On the final frame: the digest of the set both sides should now share (what the client
    /// holds minus what it alone holds); absent before.
    pub shared: Option<SetDigest>,
}

/// Client to relay: the sketch did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Cells left non-empty when peeling stopped (diagnostic).
    pub cells_left: u64,
}

/// Relay to client, plan `refine` (or after a failed sketch): prefix-tree bucket summaries at
/// one depth, in bucket order, possibly over several frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buckets {
    /// Prefix length in hex digits: there are 16^depth buckets.
    pub depth: u8,
    /// The relay's expectation of the whole difference (ids in one set only), from which the
    /// client sizes bucket sketches (§5.9).
    pub expected: u64,
    /// The room's sketch key (16 bytes): the client names its ids in `bucket_ids` by the
    /// short ids it gives.
    pub key: Bytes,
    /// Packed summaries: per bucket, its id count as a LEB128 varint, then the first 16 bytes
    /// of its prefix-tree hash (§5.9).
    pub summaries: Bytes,
    /// True on the final frame.
    pub last: bool,
}

/// Client to relay, after the last `buckets`: the differing buckets and the client's short ids
/// in them, possibly over several frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketIds {
    /// On the first frame: a bitmap of 16^depth bits (bucket `i` is bit `i % 8` of byte
    /// `i / 8`), set for every bucket whose summary differs. Empty on later frames.
    pub differing: Bytes,
    /// Packed short ids of the client's nodes in the differing buckets it lists (8 bytes
    /// each).
    pub shorts: Bytes,
    /// Packed bucket sketches for the differing buckets it does not list (§5.9): see
    /// [`BucketSketch`].
    pub sketches: Bytes,
    /// True on the final frame.
    pub last: bool,
}

/// One differing bucket settled by a small sketch instead of an id list. On the wire: the
/// bucket index and the client's id count in it as LEB128 varints, `log2` as one byte, then
/// `3 · 2^log2` cells of 13 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketSketch {
    /// Bucket index at the depth of the `buckets` being answered.
    pub bucket: u64,
    /// Ids the client holds in the bucket.
    pub count: u64,
    /// Cells per sub-table, as a power of two.
    pub log2: u8,
    /// Packed cells, 13 bytes each.
    pub cells: Bytes,
}

pub use crate::recon::refine::MAX_BUCKET_SKETCH_LOG2;

impl BucketSketch {
    /// Bytes this entry takes on the wire.
    pub fn wire_len(&self) -> usize {
        varint_len(self.bucket) + varint_len(self.count) + 1 + self.cells.len()
    }

    fn pack_into(&self, out: &mut Vec<u8>) {
        put_varint(out, self.bucket);
        put_varint(out, self.count);
        out.push(self.log2);
        out.extend_from_slice(&self.cells);
    }
}

/// Packs bucket sketches, one entry after the other.
pub fn pack_bucket_sketches(sketches: &[BucketSketch]) -> Bytes {
    let mut out = Vec::with_capacity(sketches.iter().map(BucketSketch::wire_len).sum());
    for sketch in sketches {
        sketch.pack_into(&mut out);
    }
    Bytes::from(out)
}

/// Why packed bucket sketches could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BucketSketchError {
    /// The bytes end inside an entry.
    #[error("bucket sketch entry truncated")]
    Truncated,
    /// `log2` is beyond [`MAX_BUCKET_SKETCH_LOG2`].
    #[error("bucket sketch log2 {0} too large")]
    TooLarge(u8),
}

/// Reads packed bucket sketches.
pub fn unpack_bucket_sketches(mut bytes: &[u8]) -> Result<Vec<BucketSketch>, BucketSketchError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let bucket = take_varint(&mut bytes).ok_or(BucketSketchError::Truncated)?;
        let count = take_varint(&mut bytes).ok_or(BucketSketchError::Truncated)?;
        let (&log2, rest) = bytes.split_first().ok_or(BucketSketchError::Truncated)?;
        if log2 > MAX_BUCKET_SKETCH_LOG2 {
            return Err(BucketSketchError::TooLarge(log2));
        }
        let len = (3usize << log2) * CELL_BYTES;
        let (cells, rest) = rest
            .split_at_checked(len)
            .ok_or(BucketSketchError::Truncated)?;
        out.push(BucketSketch {
            bucket,
            count,
            log2,
            cells: Bytes::copy_from_slice(cells),
        });
        bytes = rest;
    }
    Ok(out)
}

/// Relay to client, after the last `bucket_ids`: short ids of the client's nodes the relay
/// lacks; the client pushes those nodes once steady.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// Packed short ids (8 bytes each).
    pub shorts: Bytes,
    /// True on the final frame.
    pub last: bool,
    /// On the final frame: a bitmap of the buckets whose sketch did not decode, which the
    /// client lists in a second `bucket_ids` round; empty when every bucket is settled.
    pub relist: Bytes,
}

/// Bytes of a bucket bitmap (`differing`, `relist`) at `depth`: one bit per bucket.
pub fn bucket_bitmap_len(depth: u8) -> usize {
    (1usize << (4 * usize::from(depth))).div_ceil(8)
}

/// Whether `bucket` is marked in a bucket bitmap (bucket `i` is bit `i % 8` of byte `i / 8`).
pub fn bucket_marked(bitmap: &[u8], bucket: usize) -> bool {
    bitmap
        .get(bucket / 8)
        .is_some_and(|byte| byte & (1 << (bucket % 8)) != 0)
}

/// Marks `bucket` in a bucket bitmap; a bucket beyond it is ignored.
pub fn mark_bucket(bitmap: &mut [u8], bucket: usize) {
    if let Some(byte) = bitmap.get_mut(bucket / 8) {
        *byte |= 1 << (bucket % 8);
    }
}

/// Why packed short ids could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} bytes is not a whole number of 8-byte short ids")]
pub struct ShortsLengthError(pub usize);

/// Packs short ids, 8 bytes little-endian each.
pub fn pack_shorts(shorts: impl IntoIterator<Item = u64>) -> Bytes {
    let mut out = Vec::new();
    for short in shorts {
        out.extend_from_slice(&short.to_le_bytes());
    }
    Bytes::from(out)
}

/// Reads packed short ids.
pub fn unpack_shorts(bytes: &[u8]) -> Result<Vec<u64>, ShortsLengthError> {
    let chunks = bytes.chunks_exact(SHORT_BYTES);
    if !chunks.remainder().is_empty() {
        return Err(ShortsLengthError(bytes.len()));
    }
    Ok(chunks
        .map(|c| {
            let mut word = [0u8; SHORT_BYTES];
            word.copy_from_slice(c);
            u64::from_le_bytes(word)
        })
        .collect())
}

/// Frame overhead budget for the envelope and the fixed fields of a bulk frame: what a
/// sender keeps free of `max_frame` when it fills a frame with cells, ids or entries.
pub const FRAME_SLACK: usize = 64;

/// Bytes of a bucket hash on the wire: the first 16 bytes of the prefix-tree hash.
pub use crate::recon::prefix_tree::{BUCKET_HASH_BYTES, BucketSummary};

/// `missing` messages for `shorts`, each under `max_frame` bytes; always at least one, the
/// last carrying `relist`.
pub fn missing_messages(shorts: &[u64], relist: &[u8], max_frame: usize) -> Vec<Message> {
    short_chunks(shorts, max_frame.saturating_sub(relist.len()))
        .map(|(shorts, last)| {
            Message::Missing(Missing {
                shorts,
                last,
                relist: if last {
                    Bytes::copy_from_slice(relist)
                } else {
                    Bytes::new()
                },
            })
        })
        .collect()
}

/// `want` messages for `shorts`, each under `max_frame` bytes; always at least one, the last
/// carrying `shared`.
pub fn want_messages(shorts: &[u64], shared: SetDigest, max_frame: usize) -> Vec<Message> {
    short_chunks(shorts, max_frame)
        .map(|(shorts, last)| {
            Message::Want(Want {
                shorts,
                last,
                shared: last.then_some(shared),
            })
        })
        .collect()
}

/// Packed chunks of at most a frame's worth of short ids, with a `last` flag; one empty chunk
/// for no ids.
fn short_chunks(shorts: &[u64], max_frame: usize) -> impl Iterator<Item = (Bytes, bool)> + '_ {
    let per_frame = (max_frame.saturating_sub(FRAME_SLACK) / SHORT_BYTES).max(1);
    frame_chunks(shorts, per_frame).map(|(chunk, last)| (pack_shorts(chunk.iter().copied()), last))
}

/// `items` in chunks of `per_frame`, each with a `last` flag; one empty chunk for no items, so
/// that a list always ends with a frame that says `last`.
fn frame_chunks<T>(items: &[T], per_frame: usize) -> impl Iterator<Item = (&[T], bool)> {
    let count = items.len().div_ceil(per_frame).max(1);
    let mut chunks = items.chunks(per_frame);
    (1..=count).map(move |i| (chunks.next().unwrap_or_default(), i == count))
}

/// Bytes `value` takes as LEB128.
fn varint_len(value: u64) -> usize {
    (64 - value.leading_zeros() as usize).div_ceil(7).max(1)
}

/// LEB128: seven bits per byte, least significant first, high bit set on all but the last.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads one LEB128 varint of at most 10 bytes.
fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        let bits = u64::from(byte & 0x7f);
        value |= bits.checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Packs bucket summaries: per bucket, its count as a LEB128 varint, then its hash bytes.
pub fn pack_buckets(summaries: &[BucketSummary]) -> Bytes {
    let mut out = Vec::with_capacity(summaries.len() * (BUCKET_HASH_BYTES + 3));
    for (count, hash) in summaries {
        put_varint(&mut out, *count);
        out.extend_from_slice(hash);
    }
    Bytes::from(out)
}

/// `buckets` messages for every bucket at `depth`, in order, each under `max_frame` bytes.
pub fn buckets_messages(
    depth: u8,
    expected: u64,
    key: Bytes,
    summaries: &[BucketSummary],
    max_frame: usize,
) -> Vec<Message> {
    // A summary takes at most 10 + 16 bytes.
    let per_frame = (max_frame.saturating_sub(FRAME_SLACK) / (10 + BUCKET_HASH_BYTES)).max(1);
    frame_chunks(summaries, per_frame)
        .map(|(chunk, last)| {
            Message::Buckets(Buckets {
                depth,
                expected,
                key: key.clone(),
                summaries: pack_buckets(chunk),
                last,
            })
        })
        .collect()
}

/// Reads packed bucket summaries.
pub fn unpack_buckets(mut bytes: &[u8]) -> Option<Vec<BucketSummary>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let count = take_varint(&mut bytes)?;
        let (hash, rest) = bytes.split_at_checked(BUCKET_HASH_BYTES)?;
        let mut fixed = [0u8; BUCKET_HASH_BYTES];
        fixed.copy_from_slice(hash);
        out.push((count, fixed));
        bytes = rest;
    }
    Some(out)
}

/// `bucket_ids` messages for `differing`, `shorts` and `sketches`, each under `max_frame`
/// bytes; always at least one, the first carrying the bitmap. Sketches come first, as many
/// whole entries per frame as fit (an entry larger than a frame travels alone), then shorts.
pub fn bucket_ids_messages(
    differing: &[u8],
    shorts: &[u64],
    sketches: &[BucketSketch],
    max_frame: usize,
) -> Vec<Message> {
    // The bitmap travels once, in the first frame; size every frame as if it carried it.
    let budget = max_frame
        .saturating_sub(differing.len())
        .saturating_sub(FRAME_SLACK);
    let mut bodies: Vec<(Bytes, Bytes)> = Vec::new();
    let mut packed = Vec::new();
    for sketch in sketches {
        if !packed.is_empty() && packed.len() + sketch.wire_len() > budget {
            bodies.push((Bytes::new(), Bytes::from(std::mem::take(&mut packed))));
        }
        sketch.pack_into(&mut packed);
    }
    if !packed.is_empty() {
        bodies.push((Bytes::new(), Bytes::from(packed)));
    }
    if !shorts.is_empty() || bodies.is_empty() {
        let per_frame = (budget / SHORT_BYTES).max(1);
        bodies.extend(
            frame_chunks(shorts, per_frame)
                .map(|(chunk, _)| (pack_shorts(chunk.iter().copied()), Bytes::new())),
        );
    }
    let count = bodies.len();
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, (shorts, sketches))| {
            Message::BucketIds(BucketIds {
                differing: if i == 0 {
                    Bytes::copy_from_slice(differing)
                } else {
                    Bytes::new()
                },
                shorts,
                sketches,
                last: i + 1 == count,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorts_round_trip_and_reject_partial_words() {
        let shorts = vec![0, 1, u64::MAX, 0x0102_0304_0506_0708];
        let packed = pack_shorts(shorts.iter().copied());
        assert_eq!(packed.len(), 32);
        assert_eq!(&packed[24..], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(unpack_shorts(&packed).unwrap(), shorts);
        assert_eq!(unpack_shorts(&packed[..7]), Err(ShortsLengthError(7)));
        assert_eq!(unpack_shorts(&[]).unwrap(), Vec::<u64>::new());
    }

    fn entry(bucket: u64, log2: u8) -> BucketSketch {
        BucketSketch {
            bucket,
            count: 300,
            log2,
            cells: Bytes::from(vec![7u8; (3usize << log2) * CELL_BYTES]),
        }
    }

    #[test]
    fn bucket_sketches_round_trip_and_reject_bad_entries() {
        let entries = vec![entry(0, 0), entry(4095, 2)];
        let packed = pack_bucket_sketches(&entries);
        assert_eq!(
            packed.len(),
            entries.iter().map(BucketSketch::wire_len).sum::<usize>()
        );
        // Bucket 0, count 300 (ac 02), log2 0, then 3 cells.
        assert_eq!(&packed[..4], &[0x00, 0xac, 0x02, 0x00]);
        assert_eq!(unpack_bucket_sketches(&packed).unwrap(), entries);
        assert_eq!(
            unpack_bucket_sketches(&packed[..packed.len() - 1]),
            Err(BucketSketchError::Truncated)
        );
        assert_eq!(
            unpack_bucket_sketches(&[0, 1, MAX_BUCKET_SKETCH_LOG2 + 1]),
            Err(BucketSketchError::TooLarge(MAX_BUCKET_SKETCH_LOG2 + 1))
        );
    }

    #[test]
    fn bucket_ids_frames_stay_under_the_frame_limit_and_keep_everything() {
        let differing = vec![0xffu8; 512];
        let shorts: Vec<u64> = (0..3000).collect();
        let sketches: Vec<BucketSketch> = (0..40).map(|b| entry(b, 3)).collect();
        let max_frame = 4096;
        let messages = bucket_ids_messages(&differing, &shorts, &sketches, max_frame);
        let (mut got_shorts, mut got_sketches) = (Vec::new(), Vec::new());
        for (i, message) in messages.iter().enumerate() {
            assert!(message.encode().unwrap().len() <= max_frame);
            let Message::BucketIds(frame) = message else {
                panic!("not bucket_ids: {message:?}");
            };
            assert_eq!(frame.differing.is_empty(), i > 0);
            assert_eq!(frame.last, i + 1 == messages.len());
            got_shorts.extend(unpack_shorts(&frame.shorts).unwrap());
            got_sketches.extend(unpack_bucket_sketches(&frame.sketches).unwrap());
        }
        assert_eq!(got_shorts, shorts);
        assert_eq!(got_sketches, sketches);
        let empty = bucket_ids_messages(&[1], &[], &[], max_frame);
        assert_eq!(empty.len(), 1);
    }
}
