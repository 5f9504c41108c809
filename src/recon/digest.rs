//! An order-independent, incrementally maintained digest of a set of node ids.

use serde::{Deserialize, Serialize};

use crate::node::{DigestSum, NodeId};

/// `(count, sum)` where `sum` is the sum of all ids read as 256-bit little-endian integers,
/// modulo 2^256 (protocol/README.md §5.2).
///
/// Insertion is O(1) and order-independent, so the relay keeps one per room and a session's
/// "in sync" check costs nothing. Two different sets with equal digests need equal counts and
/// equal sums; ids are blake3 outputs, so for an honest client whose extra nodes the attacker
/// cannot predict this is a second-preimage problem on a 256-bit sum. A false "in sync" cannot
/// be produced by a third party. A client can only fool itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SetDigest {
    /// Number of ids in the set.
    pub count: u64,
    /// Sum of the ids modulo 2^256, little-endian.
    pub sum: DigestSum,
}

impl SetDigest {
    /// Adds one id. The caller guarantees the id is not already in the set.
    pub fn insert(&mut self, id: &NodeId) {
        self.count = self.count.wrapping_add(1);
        self.add_to_sum(&id.0);
    }

    /// Adds the digest of a disjoint set: the result is the digest of the union.
    pub fn merge(&mut self, other: &SetDigest) {
        self.count = self.count.wrapping_add(other.count);
        self.add_to_sum(&other.sum.0);
    }

    fn add_to_sum(&mut self, value: &[u8; 32]) {
        let (mut sum, add) = (limbs(&self.sum.0), limbs(value));
        let mut carry = false;
        for (acc, add) in sum.iter_mut().zip(add) {
            let (partial, overflow_a) = acc.overflowing_add(add);
            let (total, overflow_b) = partial.overflowing_add(u64::from(carry));
            *acc = total;
            carry = overflow_a || overflow_b;
        }
        self.sum.0 = bytes(sum);
    }

    /// Takes out one id. The caller guarantees the id is in the set.
    pub fn remove(&mut self, id: &NodeId) {
        self.count = self.count.wrapping_sub(1);
        let (mut sum, sub) = (limbs(&self.sum.0), limbs(&id.0));
        let mut borrow = false;
        for (acc, sub) in sum.iter_mut().zip(sub) {
            let (partial, under_a) = acc.overflowing_sub(sub);
            let (total, under_b) = partial.overflowing_sub(u64::from(borrow));
            *acc = total;
            borrow = under_a || under_b;
        }
        self.sum.0 = bytes(sum);
    }

    /// The digest of a set given by its ids.
    pub fn of<'a>(ids: impl IntoIterator<Item = &'a NodeId>) -> Self {
        let mut digest = Self::default();
        for id in ids {
            digest.insert(id);
        }
        digest
    }
}

/// A 256-bit little-endian number as four 64-bit limbs, least significant first.
fn limbs(bytes: &[u8; 32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (limb, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        *limb = u64::from_le_bytes(word);
    }
    out
}

fn bytes(limbs: [u64; 4]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, limb) in out.chunks_exact_mut(8).zip(limbs) {
        chunk.copy_from_slice(&limb.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_disjoint_digests_gives_the_union() {
        let ids: Vec<NodeId> = (0u8..40)
            .map(|i| NodeId([i.wrapping_mul(97); 32]))
            .collect();
        let (left, right) = ids.split_at(17);
        let mut merged = SetDigest::of(left);
        merged.merge(&SetDigest::of(right));
        assert_eq!(merged, SetDigest::of(&ids));
        // Sums wrap like inserts do.
        let max = NodeId([0xff; 32]);
        let mut wrapped = SetDigest::of([&max]);
        wrapped.merge(&SetDigest::of([&max]));
        assert_eq!(wrapped, SetDigest::of([&max, &max]));
    }

    #[test]
    fn order_does_not_matter() {
        let ids: Vec<NodeId> = (0u8..50)
            .map(|i| NodeId([i.wrapping_mul(77); 32]))
            .collect();
        let forward = SetDigest::of(&ids);
        let backward = SetDigest::of(ids.iter().rev());
        assert_eq!(forward, backward);
        assert_eq!(forward.count, 50);
    }

    #[test]
    fn carries_propagate_and_wrap() {
        let mut d = SetDigest::default();
        d.insert(&NodeId([0xff; 32]));
        let mut one = [0u8; 32];
        one[0] = 1;
        d.insert(&NodeId(one));
        assert_eq!(d.sum, DigestSum([0; 32]), "2^256 - 1 + 1 wraps to zero");
        assert_eq!(d.count, 2);
    }

    #[test]
    fn remove_undoes_insert_with_borrows() {
        let ids = [NodeId([0xff; 32]), NodeId([1; 32]), NodeId([0x80; 32])];
        let mut d = SetDigest::of(&ids);
        d.remove(&ids[0]);
        assert_eq!(d, SetDigest::of(&ids[1..]));
        d.remove(&ids[2]);
        d.remove(&ids[1]);
        assert_eq!(d, SetDigest::default());
    }

    #[test]
    fn different_sets_differ() {
        let a = SetDigest::of(&[NodeId([1; 32]), NodeId([2; 32])]);
        let b = SetDigest::of(&[NodeId([1; 32]), NodeId([3; 32])]);
        assert_ne!(a, b);
    }
}
