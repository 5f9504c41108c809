//! Prefix-tree refinement (protocol/README.md §5.9): how deep to compare, and how each
//! differing bucket is settled — by the client's id list, or by a small sketch when that is
//! smaller.
//!
//! Both sides reason per bucket about the same numbers: the relay's count (from its summary),
//! the client's count, and the relay's expectation of the whole difference. The client sizes a
//! bucket's sketch from them; the relay subtracts its own sketch of the bucket and peels.

use super::ibf::{self, Ibf, SHORT_BYTES, SketchError};

/// Largest `log2` a bucket sketch may have: 3 · 2^16 cells is far beyond any frame.
pub const MAX_BUCKET_SKETCH_LOG2: u8 = 16;

/// Deepest bucket level a refinement uses: 16^4 = 65,536 buckets.
pub const MAX_REFINE_DEPTH: u8 = 4;

/// Ids per bucket a refinement aims for at most: small enough that a differing bucket costs
/// little to list, large enough that summaries stay a small fraction of the id lists.
const REFINE_BUCKET_TARGET: u64 = 512;

/// Bucket depth for refining sets of up to `larger` ids: the shallowest level whose buckets
/// hold at most 512 ids on average (at least 1, at most [`MAX_REFINE_DEPTH`]).
pub fn refine_depth(larger: u64) -> u8 {
    let mut depth = 1u8;
    let mut buckets = 16u64;
    while depth < MAX_REFINE_DEPTH && buckets.saturating_mul(REFINE_BUCKET_TARGET) < larger {
        depth += 1;
        buckets = buckets.saturating_mul(16);
    }
    depth
}

/// What is known about one differing bucket when the client chooses how to settle it.
#[derive(Clone, Copy, Debug)]
pub struct BucketView {
    /// Ids the relay holds in the bucket (its summary's count).
    pub relay_count: u64,
    /// Ids the client holds in the bucket.
    pub client_count: u64,
    /// The relay's expectation of the whole difference (`buckets.expected`).
    pub expected: u64,
    /// The larger of the two sets' sizes.
    pub larger_total: u64,
}

impl BucketView {
    /// The difference to size the bucket's sketch for: the count gap (a lower bound), or the
    /// bucket's share of the expected difference, whichever is larger.
    pub fn expected_difference(&self) -> u64 {
        let gap = self.relay_count.abs_diff(self.client_count);
        let size = self.relay_count.max(self.client_count);
        let share = u128::from(self.expected) * u128::from(size);
        let share = share.div_ceil(u128::from(self.larger_total.max(1)));
        gap.max(u64::try_from(share).unwrap_or(u64::MAX)).max(1)
    }

    /// `Some(log2)` when a sketch of the bucket at `2^log2` cells per sub-table costs fewer
    /// bytes than listing the client's short ids and fits in `room` bytes; `None` to list.
    pub fn sketch_log2(&self, room: usize) -> Option<u8> {
        let log2 = bucket_sketch_log2(self.expected_difference())?;
        let sketch_bytes = (ibf::K << log2) * ibf::CELL_BYTES + ENTRY_HEADER_BYTES;
        let list_bytes = usize::try_from(self.client_count)
            .unwrap_or(usize::MAX)
            .saturating_mul(SHORT_BYTES);
        (sketch_bytes < list_bytes && sketch_bytes <= room).then_some(log2)
    }
}

/// Upper bound of an entry's bucket index, count and size fields (§5.9).
const ENTRY_HEADER_BYTES: usize = 8;

/// Smallest size whose `3 · 2^log2` cells are at least `2d + 4`. Small sketches peel less
/// reliably than large ones (two elements sharing all three cells is likely in a handful of
/// cells), so buckets get twice the cells per difference the room's sketch gets, plus slack;
/// a failed bucket costs a second round, not correctness. `None` beyond the largest size.
pub fn bucket_sketch_log2(difference: u64) -> Option<u8> {
    let cells = difference.saturating_mul(2).saturating_add(4);
    let per_table = cells.div_ceil(ibf::K as u64);
    let log2 = per_table.next_power_of_two().trailing_zeros();
    u8::try_from(log2)
        .ok()
        .filter(|log2| *log2 <= MAX_BUCKET_SKETCH_LOG2)
}

/// A bucket settled by its sketch, as short ids.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BucketDifference {
    /// Short ids only the relay holds in the bucket.
    pub relay_only: Vec<u64>,
    /// Short ids only the client holds in the bucket.
    pub client_only: Vec<u64>,
}

/// Settles one bucket: the relay's short ids in it against the client's sketch of it and its
/// count. Fails unless the difference peels completely, every id it puts on the relay's side
/// is one of `relay`'s and none on the client's side is, and the counts agree; the caller then
/// asks for the client's list. `relay` must be sorted. Costs O(relay + cells).
pub fn settle_bucket(
    relay: &[u64],
    client: Ibf,
    client_count: u64,
) -> Result<BucketDifference, SketchError> {
    let mut ours = Ibf::new(client.log2())?;
    for short in relay {
        ours.insert(*short);
    }
    let difference = ours.subtract(&client)?.decode()?;
    let held = |short: &u64| relay.binary_search(short).is_ok();
    let consistent = difference.ours.iter().all(held)
        && !difference.theirs.iter().any(held)
        && (relay.len() as u64)
            .checked_sub(difference.ours.len() as u64)
            .and_then(|shared| shared.checked_add(difference.theirs.len() as u64))
            == Some(client_count);
    if !consistent {
        return Err(SketchError::Undecodable { remaining: 0 });
    }
    Ok(BucketDifference {
        relay_only: difference.ours,
        client_only: difference.theirs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn sketch_of(log2: u8, shorts: &[u64]) -> Ibf {
        let mut ibf = Ibf::new(log2).unwrap();
        for short in shorts {
            ibf.insert(*short);
        }
        ibf
    }

    #[test]
    fn depth_grows_with_the_set() {
        assert_eq!(refine_depth(0), 1);
        assert_eq!(refine_depth(16 * 512), 1);
        assert_eq!(refine_depth(16 * 512 + 1), 2);
        assert_eq!(refine_depth(100_000), 2);
        assert_eq!(refine_depth(1_000_000), 3);
        assert_eq!(refine_depth(u64::MAX), MAX_REFINE_DEPTH);
    }

    #[test]
    fn sizes_cover_twice_the_difference() {
        assert_eq!(bucket_sketch_log2(1), Some(1));
        assert_eq!(bucket_sketch_log2(2), Some(2));
        for d in [1u64, 3, 10, 100, 1000] {
            let log2 = bucket_sketch_log2(d).unwrap();
            let cells = 3u64 << log2;
            assert!(cells >= 2 * d + 4, "d {d}: {cells} cells");
            assert!(
                cells < 2 * (2 * d + 4),
                "d {d}: {cells} cells is more than twice"
            );
        }
        assert_eq!(bucket_sketch_log2(u64::MAX), None);
    }

    #[test]
    fn a_sketch_is_chosen_only_when_smaller_than_the_list() {
        let view = |relay_count, client_count, expected| BucketView {
            relay_count,
            client_count,
            expected,
            larger_total: 1_000_000,
        };
        // 500 ids, a couple of differences: 12 cells (156 B) beat 3,984 B of short ids.
        assert_eq!(view(500, 498, 2_000).sketch_log2(1 << 20), Some(2));
        // Half the bucket differs: the list is smaller.
        assert_eq!(view(500, 250, 500_000).sketch_log2(1 << 20), None);
        // A near-empty client lists its few ids.
        assert_eq!(view(500, 3, 10).sketch_log2(1 << 20), None);
        // A sketch that does not fit the frame is listed.
        assert_eq!(view(500, 498, 2_000).sketch_log2(100), None);
    }

    #[test]
    fn settles_a_bucket_and_reports_both_sides() {
        let mut rng = StdRng::seed_from_u64(9);
        for trial in 0..200 {
            let shared: Vec<u64> = (0..300).map(|_| rng.random()).collect();
            let relay_extra: Vec<u64> = (0..trial % 5).map(|_| rng.random()).collect();
            let client_extra: Vec<u64> = (0..trial % 3).map(|_| rng.random()).collect();
            let mut relay: Vec<u64> = shared.iter().chain(&relay_extra).copied().collect();
            relay.sort_unstable();
            let client: Vec<u64> = shared.iter().chain(&client_extra).copied().collect();
            let d = (relay_extra.len() + client_extra.len()) as u64;
            let log2 = bucket_sketch_log2(d).unwrap();
            let result = settle_bucket(&relay, sketch_of(log2, &client), client.len() as u64);
            // Small sketches may fail now and then; a success is always exact.
            if let Ok(mut diff) = result {
                diff.relay_only.sort_unstable();
                diff.client_only.sort_unstable();
                let mut want_relay = relay_extra.clone();
                want_relay.sort_unstable();
                let mut want_client = client_extra.clone();
                want_client.sort_unstable();
                assert_eq!(diff.relay_only, want_relay);
                assert_eq!(diff.client_only, want_client);
            }
        }
    }

    #[test]
    fn inconsistent_counts_and_foreign_ids_fail() {
        let mut rng = StdRng::seed_from_u64(4);
        let ids: Vec<u64> = (0..5).map(|_| rng.random()).collect();
        let mut relay: Vec<u64> = ids[..4].to_vec();
        relay.sort_unstable();
        let client = sketch_of(3, &[ids[0], ids[1], ids[2], ids[4]]);
        let settled = settle_bucket(&relay, client.clone(), 4).unwrap();
        assert_eq!(settled.relay_only, vec![ids[3]]);
        assert_eq!(settled.client_only, vec![ids[4]]);
        // The same sketch with a count that does not add up.
        assert!(settle_bucket(&relay, client, 7).is_err());
        // A sketch claiming the client lacks one of the relay's ids it says it holds: the
        // id peels onto the client's side, yet the relay holds it.
        let crafted = sketch_of(3, &[ids[0], ids[1], ids[2], ids[3], ids[3]]);
        assert!(settle_bucket(&relay, crafted, 5).is_err());
    }
}
