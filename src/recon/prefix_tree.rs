//! A 16-ary Merkle tree over node ids, keyed by id prefix (one hex digit per level).
//!
//! Why this shape: node ids are blake3 outputs, so they are uniformly spread and a prefix tree
//! is balanced without any rebalancing; a prefix names the same range on both sides, so peers
//! can compare "the ids starting with `3f`" without agreeing on anything else. The general
//! Merkle search tree needs the same property from hashed keys, which ids already have.
//!
//! Shape rule, canonical so that equal sets give equal hashes: the ids under a prefix form a
//! *leaf* when there are at most [`LEAF_MAX`] of them, and a *branch* of 16 children otherwise.
//! A leaf hashes its ids in ascending order; a branch hashes its children's hashes. The shape
//! under a prefix depends only on the ids under it, so two sets agree on a prefix's hash exactly
//! when they hold the same ids there (up to blake3 collisions). The root hash is therefore a
//! collision-resistant digest of the whole set, unlike additive or XOR digests.
//!
//! The set only grows (rooms are append-only), so leaves split and never merge. Hashes are
//! cached per subtree and recomputed lazily along the paths that changed. Two reads serve
//! reconciliation without touching the set: [`PrefixTree::root_without`] (the root of the set
//! minus a few ids, to verify a decoded sketch against the peer's root) and
//! [`PrefixTree::level`] (every bucket summary at one depth, buckets numbered by
//! [`prefix_of`] and [`Prefix::from_index`]).

use crate::node::NodeId;

/// Most ids a leaf holds before it splits into 16 children.
pub const LEAF_MAX: usize = 32;

const LEAF_DOMAIN: &[u8] = b"weft/prefix-tree/leaf/v1\0";
const BRANCH_DOMAIN: &[u8] = b"weft/prefix-tree/branch/v1\0";

/// A prefix of an id, in hex digits (nibbles), at most 64 of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    bytes: [u8; 32],
    nibbles: u8,
}

impl Prefix {
    /// The empty prefix: every id.
    pub const ROOT: Prefix = Prefix {
        bytes: [0; 32],
        nibbles: 0,
    };

    /// Number of hex digits.
    pub fn len(&self) -> usize {
        usize::from(self.nibbles)
    }

    /// Whether this is the root prefix.
    pub fn is_empty(&self) -> bool {
        self.nibbles == 0
    }

    /// This prefix extended by one digit, or `None` at full length or for a digit above 15.
    pub fn child(&self, digit: u8) -> Option<Prefix> {
        if self.nibbles >= 64 || digit > 15 {
            return None;
        }
        let mut bytes = self.bytes;
        let byte = bytes.get_mut(usize::from(self.nibbles / 2))?;
        *byte |= if self.nibbles % 2 == 0 {
            digit << 4
        } else {
            digit
        };
        Some(Prefix {
            bytes,
            nibbles: self.nibbles + 1,
        })
    }

    /// Whether `id` starts with this prefix.
    pub fn covers(&self, id: &NodeId) -> bool {
        (0..self.nibbles).all(|i| nibble(id, i) == self.digit(i))
    }

    /// The prefix of `depth` digits whose digits, read as a base-16 number, equal `index`: the
    /// bucket [`prefix_of`] names. `None` for `depth` above [`MAX_LEVEL_DEPTH`] or `index` at
    /// or above `16^depth`.
    pub fn from_index(depth: u8, index: usize) -> Option<Prefix> {
        if depth > MAX_LEVEL_DEPTH || index >= buckets(depth) {
            return None;
        }
        let mut prefix = Prefix::ROOT;
        for position in (0..depth).rev() {
            let digit = (index >> (4 * u32::from(position))) & 0x0f;
            prefix = prefix.child(u8::try_from(digit).ok()?)?;
        }
        Some(prefix)
    }

    fn digit(&self, index: u8) -> Option<u8> {
        let byte = *self.bytes.get(usize::from(index / 2))?;
        Some(if index % 2 == 0 {
            byte >> 4
        } else {
            byte & 0x0f
        })
    }
}

/// Deepest level [`PrefixTree::level`], [`prefix_of`] and [`Prefix::from_index`] handle:
/// 16^4 = 65,536 buckets.
pub const MAX_LEVEL_DEPTH: u8 = 4;

/// Number of buckets at `depth` (clamped to [`MAX_LEVEL_DEPTH`]).
fn buckets(depth: u8) -> usize {
    1usize << (4 * u32::from(depth.min(MAX_LEVEL_DEPTH)))
}

/// The bucket of `id` at `depth`: its first `depth` hex digits read as a base-16 number, so
/// buckets are numbered in prefix order (see [`Prefix::from_index`]). Depths above
/// [`MAX_LEVEL_DEPTH`] count as [`MAX_LEVEL_DEPTH`].
pub fn prefix_of(id: &NodeId, depth: u8) -> usize {
    (0..depth.min(MAX_LEVEL_DEPTH)).fold(0usize, |index, position| {
        (index << 4) | usize::from(nibble(id, position).unwrap_or(0))
    })
}

fn nibble(id: &NodeId, index: u8) -> Option<u8> {
    let byte = *id.as_bytes().get(usize::from(index / 2))?;
    Some(if index % 2 == 0 {
        byte >> 4
    } else {
        byte & 0x0f
    })
}

/// A subtree's hash and id count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Ids under the prefix.
    pub count: u64,
    /// Hash of the ids under the prefix, by the shape rule.
    pub hash: [u8; 32],
}

/// Bytes of a bucket's hash as `buckets` carries it (protocol/README.md §5.9).
pub const BUCKET_HASH_BYTES: usize = 16;

/// A bucket summary as it travels: `(count, first 16 bytes of the prefix-tree hash)`.
pub type BucketSummary = (u64, [u8; BUCKET_HASH_BYTES]);

impl Summary {
    /// The summary as `buckets` carries it: the count and the first 16 hash bytes
    /// (protocol/README.md §5.9).
    pub fn truncated(&self) -> BucketSummary {
        (
            self.count,
            self.hash.first_chunk().copied().unwrap_or_default(),
        )
    }
}

enum Tree {
    Leaf(Vec<NodeId>),
    Branch(Box<[Subtree; 16]>),
}

struct Subtree {
    tree: Tree,
    count: u64,
    /// Cached hash; `None` after a change below.
    hash: Option<[u8; 32]>,
}

impl Subtree {
    const fn empty() -> Self {
        Self {
            tree: Tree::Leaf(Vec::new()),
            count: 0,
            hash: None,
        }
    }

    /// Inserts `id` (whose first `depth` digits lead here). Returns whether it was new.
    fn insert(&mut self, id: NodeId, depth: u8) -> bool {
        let added = match &mut self.tree {
            Tree::Leaf(ids) => {
                if ids.contains(&id) {
                    return false;
                }
                ids.push(id);
                if ids.len() > LEAF_MAX && depth < 64 {
                    let ids = std::mem::take(ids);
                    let mut children: Box<[Subtree; 16]> =
                        Box::new(std::array::from_fn(|_| Subtree::empty()));
                    for moved in ids {
                        if let Some(child) =
                            nibble(&moved, depth).and_then(|d| children.get_mut(usize::from(d)))
                        {
                            child.insert(moved, depth + 1);
                        }
                    }
                    self.tree = Tree::Branch(children);
                }
                true
            }
            Tree::Branch(children) => {
                match nibble(&id, depth).and_then(|d| children.get_mut(usize::from(d))) {
                    Some(child) => child.insert(id, depth + 1),
                    None => false,
                }
            }
        };
        if added {
            self.count += 1;
            self.hash = None;
        }
        added
    }

    fn hash(&mut self) -> [u8; 32] {
        if let Some(hash) = self.hash {
            return hash;
        }
        let hash = match &mut self.tree {
            Tree::Leaf(ids) => {
                ids.sort_unstable();
                leaf_hash(ids.iter())
            }
            Tree::Branch(children) => {
                let mut h = blake3::Hasher::new();
                h.update(BRANCH_DOMAIN);
                for child in children.iter_mut() {
                    h.update(&child.hash());
                }
                *h.finalize().as_bytes()
            }
        };
        self.hash = Some(hash);
        hash
    }
}

/// What a subtree reduces to once some ids are taken out: its remaining ids, listed (not yet
/// sorted or hashed) when few enough to form a leaf by the shape rule, else its summary.
enum Reduced {
    Listed(Vec<NodeId>),
    Hashed(Summary),
}

impl Reduced {
    fn count(&self) -> u64 {
        match self {
            Reduced::Listed(ids) => ids.len() as u64,
            Reduced::Hashed(summary) => summary.count,
        }
    }

    fn summary(self) -> Summary {
        match self {
            Reduced::Listed(mut ids) => {
                ids.sort_unstable();
                Summary {
                    count: ids.len() as u64,
                    hash: leaf_hash(ids.iter()),
                }
            }
            Reduced::Hashed(summary) => summary,
        }
    }
}

/// `node` (reached through `depth` digits) without the ids of `excluded` (sorted, deduplicated,
/// all starting with this node's prefix). Descends only where `excluded` has ids; elsewhere
/// uses counts and cached hashes (canonical: this tree has the shape rule's shape), and lists
/// ids only when what remains of a branch is small enough to be a leaf.
fn reduce(node: &mut Subtree, depth: u8, excluded: &[NodeId]) -> Reduced {
    let children = match &mut node.tree {
        _ if excluded.is_empty() => {
            return Reduced::Hashed(Summary {
                count: node.count,
                hash: node.hash(),
            });
        }
        Tree::Leaf(ids) => {
            return Reduced::Listed(
                ids.iter()
                    .filter(|id| excluded.binary_search(id).is_err())
                    .copied()
                    .collect(),
            );
        }
        Tree::Branch(children) => children,
    };
    // Sorted ids under one prefix are grouped by their next digit.
    let mut rest = excluded;
    let mut reduced: Vec<(usize, Reduced)> = Vec::new();
    let mut count = 0u64;
    for (digit, child) in (0u8..).zip(children.iter_mut()) {
        let split = rest.partition_point(|id| nibble(id, depth) == Some(digit));
        let (mine, after) = rest.split_at(split);
        rest = after;
        if mine.is_empty() {
            count += child.count;
        } else {
            let child_reduced = reduce(child, depth + 1, mine);
            count += child_reduced.count();
            reduced.push((usize::from(digit), child_reduced));
        }
    }
    if count <= LEAF_MAX as u64 {
        // The remaining ids form one leaf. Reduced children hold at most `count` ids, so they
        // come back listed; untouched ones are small enough to list.
        let mut ids = Vec::with_capacity(LEAF_MAX);
        let mut reduced = reduced.into_iter().peekable();
        for (index, child) in children.iter().enumerate() {
            match reduced.next_if(|(at, _)| *at == index) {
                Some((_, Reduced::Listed(mut listed))) => ids.append(&mut listed),
                None => collect(child, &Prefix::ROOT, depth + 1, &mut ids),
                // Not reached (a hashed child holds more than LEAF_MAX ids); kept correct.
                Some((_, Reduced::Hashed(_))) => {
                    let mut all = Vec::new();
                    collect(child, &Prefix::ROOT, depth + 1, &mut all);
                    ids.extend(
                        all.into_iter()
                            .filter(|id| excluded.binary_search(id).is_err()),
                    );
                }
            }
        }
        return Reduced::Listed(ids);
    }
    let mut h = blake3::Hasher::new();
    h.update(BRANCH_DOMAIN);
    let mut reduced = reduced.into_iter().peekable();
    for (index, child) in children.iter_mut().enumerate() {
        let hash = match reduced.next_if(|(at, _)| *at == index) {
            Some((_, child_reduced)) => child_reduced.summary().hash,
            None => child.hash(),
        };
        h.update(&hash);
    }
    Reduced::Hashed(Summary {
        count,
        hash: *h.finalize().as_bytes(),
    })
}

/// Appends the summaries of every prefix of `target` digits under `node` (reached through
/// `depth` digits), in prefix order.
fn fill_level(node: &mut Subtree, depth: u8, target: u8, empty: &Summary, out: &mut Vec<Summary>) {
    if depth >= target {
        out.push(Summary {
            count: node.count,
            hash: node.hash(),
        });
        return;
    }
    match &mut node.tree {
        Tree::Branch(children) => {
            for child in children.iter_mut() {
                fill_level(child, depth + 1, target, empty, out);
            }
        }
        // A leaf above the target depth: its ids split into leaves, one per prefix below it.
        Tree::Leaf(ids) => {
            ids.sort_unstable();
            let below = target - depth;
            let start = out.len();
            out.resize(start + buckets(below), *empty);
            // Sorted ids are grouped by prefix; the bucket index is the digits below `depth`.
            let mut rest: &[NodeId] = ids;
            while let Some(first) = rest.first() {
                let bucket = (depth..target).fold(0usize, |index, position| {
                    (index << 4) | usize::from(nibble(first, position).unwrap_or(0))
                });
                let split = rest.partition_point(|id| {
                    (depth..target).all(|position| nibble(id, position) == nibble(first, position))
                });
                let (group, after) = rest.split_at(split.max(1));
                rest = after;
                if let Some(slot) = out.get_mut(start + bucket) {
                    *slot = Summary {
                        count: group.len() as u64,
                        hash: leaf_hash(group.iter()),
                    };
                }
            }
        }
    }
}

fn leaf_hash<'a>(sorted: impl Iterator<Item = &'a NodeId>) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(LEAF_DOMAIN);
    for id in sorted {
        h.update(id.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// The tree over one set of ids.
pub struct PrefixTree {
    root: Subtree,
}

impl Default for PrefixTree {
    fn default() -> Self {
        Self::new()
    }
}

impl PrefixTree {
    /// An empty tree.
    pub const fn new() -> Self {
        Self {
            root: Subtree::empty(),
        }
    }

    /// Number of ids.
    pub fn len(&self) -> u64 {
        self.root.count
    }

    /// Whether the tree holds no id.
    pub fn is_empty(&self) -> bool {
        self.root.count == 0
    }

    /// Adds an id; returns whether it was new. O(depth + LEAF_MAX).
    pub fn insert(&mut self, id: NodeId) -> bool {
        self.root.insert(id, 0)
    }

    /// The root summary: a collision-resistant digest of the whole set.
    pub fn root(&mut self) -> Summary {
        Summary {
            count: self.root.count,
            hash: self.root.hash(),
        }
    }

    /// The summary of the ids under `prefix`, by the shape rule, whatever this tree's own
    /// shape below it.
    pub fn summary(&mut self, prefix: &Prefix) -> Summary {
        let mut node = &mut self.root;
        for depth in 0..prefix.nibbles {
            match &mut node.tree {
                Tree::Branch(children) => {
                    let next = prefix
                        .digit(depth)
                        .and_then(|d| children.get_mut(usize::from(d)));
                    match next {
                        Some(child) => node = child,
                        None => {
                            return Summary {
                                count: 0,
                                hash: leaf_hash(std::iter::empty()),
                            };
                        }
                    }
                }
                // A leaf above the prefix: the ids under the prefix are a subset of at most
                // LEAF_MAX ids, so by the shape rule they form a leaf too.
                Tree::Leaf(ids) => {
                    let mut under: Vec<&NodeId> =
                        ids.iter().filter(|id| prefix.covers(id)).collect();
                    under.sort_unstable();
                    return Summary {
                        count: under.len() as u64,
                        hash: leaf_hash(under.into_iter()),
                    };
                }
            }
        }
        Summary {
            count: node.count,
            hash: node.hash(),
        }
    }

    /// The root summary of the set without the ids in `excluded` (ids not in the set are
    /// ignored), by the shape rule, as a fresh tree of the remaining ids would give it. Neither
    /// changes nor copies the tree: descends only into subtrees holding excluded ids and
    /// reuses cached hashes elsewhere; where the rest of a subtree is small enough to be a leaf,
    /// it is hashed as one. O(|excluded| × depth × 16 + leaf sizes), plus sorting `excluded`.
    pub fn root_without(&mut self, excluded: &[NodeId]) -> Summary {
        let mut excluded = excluded.to_vec();
        excluded.sort_unstable();
        excluded.dedup();
        reduce(&mut self.root, 0, &excluded).summary()
    }

    /// The summaries of all `16^depth` prefixes of `depth` digits, in prefix order (the order
    /// of [`prefix_of`]), each equal to [`summary`](Self::summary) of that prefix. One walk of
    /// the tree down to `depth`. Empty for `depth` above [`MAX_LEVEL_DEPTH`].
    pub fn level(&mut self, depth: u8) -> Vec<Summary> {
        if depth > MAX_LEVEL_DEPTH {
            return Vec::new();
        }
        let empty = Summary {
            count: 0,
            hash: leaf_hash(std::iter::empty()),
        };
        let mut out = Vec::with_capacity(buckets(depth));
        fill_level(&mut self.root, 0, depth, &empty, &mut out);
        out
    }

    /// Every id under `prefix`, ascending.
    pub fn ids_under(&self, prefix: &Prefix) -> Vec<NodeId> {
        let mut out = Vec::new();
        collect(&self.root, prefix, 0, &mut out);
        out.sort_unstable();
        out
    }

    /// Calls `f` with every id under `prefix`, in no particular order, without allocating.
    pub fn for_each_under(&self, prefix: &Prefix, mut f: impl FnMut(&NodeId)) {
        visit(&self.root, prefix, 0, &mut f);
    }
}

fn collect(node: &Subtree, prefix: &Prefix, depth: u8, out: &mut Vec<NodeId>) {
    visit(node, prefix, depth, &mut |id| out.push(*id));
}

fn visit(node: &Subtree, prefix: &Prefix, depth: u8, f: &mut impl FnMut(&NodeId)) {
    match &node.tree {
        Tree::Leaf(ids) => ids.iter().filter(|id| prefix.covers(id)).for_each(f),
        Tree::Branch(children) => {
            if depth < prefix.nibbles {
                let child = prefix
                    .digit(depth)
                    .and_then(|d| children.get(usize::from(d)));
                if let Some(child) = child {
                    visit(child, prefix, depth + 1, f);
                }
            } else {
                for child in children.iter() {
                    visit(child, prefix, depth + 1, f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn ids(rng: &mut StdRng, n: usize) -> Vec<NodeId> {
        (0..n).map(|_| NodeId(rng.random())).collect()
    }

    fn tree(ids: &[NodeId]) -> PrefixTree {
        let mut t = PrefixTree::new();
        for id in ids {
            t.insert(*id);
        }
        t
    }

    #[test]
    fn equal_sets_have_equal_roots_whatever_the_insert_order() {
        let mut rng = StdRng::seed_from_u64(1);
        let set = ids(&mut rng, 3_000);
        let mut reversed = set.clone();
        reversed.reverse();
        assert_eq!(tree(&set).root(), tree(&reversed).root());
        let mut other = set.clone();
        other.pop();
        assert_ne!(tree(&set).root(), tree(&other).root());
        assert_eq!(tree(&set).root().count, 3_000);
    }

    #[test]
    fn duplicates_are_ignored_and_hashes_track_inserts() {
        let mut rng = StdRng::seed_from_u64(2);
        let set = ids(&mut rng, 500);
        let mut t = tree(&set);
        let before = t.root();
        assert!(!t.insert(set[7]));
        assert_eq!(t.root(), before);
        assert!(t.insert(NodeId([9; 32])));
        assert_ne!(t.root(), before);
    }

    #[test]
    fn summaries_do_not_depend_on_the_local_shape() {
        // The small tree is one leaf; the big one has split. A prefix's summary over the shared
        // ids must agree.
        let mut rng = StdRng::seed_from_u64(3);
        let shared = ids(&mut rng, 20);
        let extra: Vec<NodeId> = ids(&mut rng, 5_000);
        let mut small = tree(&shared);
        let mut big = tree(&shared);
        for id in &extra {
            big.insert(*id);
        }
        for id in &shared {
            // A full-length prefix under each shared id holds exactly that id in both trees.
            let mut p = Prefix::ROOT;
            for i in 0..64u8 {
                p = p.child(nibble(id, i).unwrap()).unwrap();
            }
            assert_eq!(small.summary(&p), big.summary(&p));
            assert_eq!(small.summary(&p).count, 1);
        }
    }

    #[test]
    fn a_prefix_summary_depends_only_on_the_ids_under_it() {
        let mut rng = StdRng::seed_from_u64(7);
        let all = ids(&mut rng, 20_000);
        let mut big = tree(&all);
        for _ in 0..40 {
            let mut prefix = Prefix::ROOT;
            for _ in 0..rng.random_range(1..=3) {
                prefix = prefix.child(rng.random_range(0..16)).unwrap();
            }
            let under: Vec<NodeId> = all.iter().copied().filter(|id| prefix.covers(id)).collect();
            let mut only = tree(&under);
            assert_eq!(big.summary(&prefix), only.summary(&prefix), "{prefix:?}");
            assert_eq!(big.summary(&prefix).count, under.len() as u64);
            assert_eq!(big.ids_under(&prefix), {
                let mut sorted = under.clone();
                sorted.sort_unstable();
                sorted
            });
        }
    }

    #[test]
    fn ids_sharing_long_prefixes_still_split_and_compare() {
        // Adversarial ids: all share 30 bytes, so the tree must go deep.
        let base = [0xabu8; 32];
        let set: Vec<NodeId> = (0..=255u8)
            .flat_map(|x| {
                (0..2u8).map(move |y| {
                    let mut b = base;
                    b[30] = x;
                    b[31] = y;
                    NodeId(b)
                })
            })
            .collect();
        let mut a = tree(&set);
        let mut b = tree(&set[1..]);
        assert_ne!(a.root(), b.root());
        assert_eq!(a.root_without(&set[..1]), b.root());
        // The one differing bucket at every depth is the one holding set[0].
        for depth in 1..=MAX_LEVEL_DEPTH {
            let differing: Vec<usize> = a
                .level(depth)
                .iter()
                .zip(b.level(depth))
                .enumerate()
                .filter(|(_, (x, y))| *x != y)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(differing, vec![prefix_of(&set[0], depth)]);
        }
    }

    /// Random ids; with `narrow`, all share their first two bytes, so the tree goes deeper.
    fn some_ids(rng: &mut StdRng, n: usize, narrow: bool) -> Vec<NodeId> {
        (0..n)
            .map(|_| {
                let mut bytes: [u8; 32] = rng.random();
                if narrow {
                    bytes[0] = 0x5a;
                    bytes[1] = 0xc3;
                }
                NodeId(bytes)
            })
            .collect()
    }

    /// `root_without(excluded)` against a fresh tree of what remains.
    fn check_root_without(set: &[NodeId], excluded: &[NodeId]) {
        let mut t = tree(set);
        let before = t.root();
        let gone: BTreeSet<NodeId> = excluded.iter().copied().collect();
        let rest: Vec<NodeId> = set
            .iter()
            .copied()
            .filter(|id| !gone.contains(id))
            .collect();
        assert_eq!(t.root_without(excluded), tree(&rest).root());
        // The tree itself is unchanged.
        assert_eq!(t.root(), before);
        assert_eq!(t.root_without(&[]), before);
    }

    #[test]
    fn root_without_collapses_branches_into_leaves() {
        let mut rng = StdRng::seed_from_u64(8);
        // Just above a split: taking out a few ids must hash the rest as one leaf.
        let set = some_ids(&mut rng, LEAF_MAX + 3, false);
        check_root_without(&set, &set[..3]);
        check_root_without(&set, &set[..4]);
        check_root_without(&set, &set[..2]);
        check_root_without(&set, &set);
        // Nested collapse: a deep, narrow tree.
        let set = some_ids(&mut rng, 200, true);
        check_root_without(&set, &set[..170]);
        check_root_without(&set, &set[..168]);
        // Excluded ids outside the set, duplicated ids, and an empty set.
        let outside = some_ids(&mut rng, 10, true);
        let mut excluded: Vec<NodeId> = outside.clone();
        excluded.extend_from_slice(&set[..5]);
        excluded.extend_from_slice(&set[..5]);
        check_root_without(&set, &excluded);
        check_root_without(&[], &outside);
    }

    #[test]
    fn levels_match_prefix_summaries() {
        let mut rng = StdRng::seed_from_u64(9);
        for n in [0, 20, 40, 700, 5_000] {
            let set = some_ids(&mut rng, n, false);
            let mut t = tree(&set);
            for depth in 0..=3u8 {
                let level = t.level(depth);
                assert_eq!(level.len(), 1 << (4 * depth));
                for (index, summary) in level.iter().enumerate() {
                    let prefix = Prefix::from_index(depth, index).unwrap();
                    assert_eq!(prefix.len(), usize::from(depth));
                    assert_eq!(*summary, t.summary(&prefix), "n {n} depth {depth} {index}");
                }
                let total: u64 = level.iter().map(|s| s.count).sum();
                assert_eq!(total, n as u64);
            }
            assert_eq!(t.level(0), vec![t.root()]);
            let level = t.level(4);
            assert_eq!(level.len(), 65_536);
            for id in &set {
                let bucket = prefix_of(id, 4);
                assert!(Prefix::from_index(4, bucket).unwrap().covers(id));
                assert_eq!(
                    level[bucket],
                    t.summary(&Prefix::from_index(4, bucket).unwrap())
                );
            }
            assert!(t.level(MAX_LEVEL_DEPTH + 1).is_empty());
        }
    }

    #[test]
    fn bucket_indexes_name_prefixes() {
        let id = NodeId([0xa5; 32]);
        assert_eq!(prefix_of(&id, 0), 0);
        assert_eq!(prefix_of(&id, 1), 0xa);
        assert_eq!(prefix_of(&id, 3), 0xa5a);
        assert_eq!(prefix_of(&id, 9), 0xa5a5);
        let p = Prefix::from_index(3, 0xa5a).unwrap();
        assert_eq!(
            p,
            Prefix::ROOT
                .child(0xa)
                .unwrap()
                .child(5)
                .unwrap()
                .child(0xa)
                .unwrap()
        );
        assert_eq!(Prefix::from_index(0, 0), Some(Prefix::ROOT));
        assert_eq!(Prefix::from_index(0, 1), None);
        assert_eq!(Prefix::from_index(2, 256), None);
        assert_eq!(Prefix::from_index(MAX_LEVEL_DEPTH + 1, 0), None);
        for index in 0..256 {
            let p = Prefix::from_index(2, index).unwrap();
            let mut bytes = [0u8; 32];
            bytes[0] = u8::try_from(index).unwrap();
            assert!(p.covers(&NodeId(bytes)));
            assert_eq!(prefix_of(&NodeId(bytes), 2), index);
        }
    }

    proptest::proptest! {
        #[test]
        fn root_without_equals_a_fresh_build(
            seed in proptest::prelude::any::<u64>(),
            n in proptest::prop_oneof![0usize..120, 0usize..3_000],
            percent_out in proptest::prop_oneof![0u32..=100, 80u32..=100],
            outside in 0usize..20,
            narrow in proptest::prelude::any::<bool>(),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let set = some_ids(&mut rng, n, narrow);
            let mut excluded: Vec<NodeId> = set
                .iter()
                .copied()
                .filter(|_| rng.random_range(0..100) < percent_out)
                .collect();
            excluded.extend(some_ids(&mut rng, outside, narrow));
            check_root_without(&set, &excluded);
        }
    }

    #[test]
    fn prefixes() {
        let p = Prefix::ROOT.child(0xa).unwrap().child(0x5).unwrap();
        assert_eq!(p.len(), 2);
        assert!(p.covers(&NodeId([0xa5; 32])));
        assert!(!p.covers(&NodeId([0xa6; 32])));
        assert_eq!(Prefix::ROOT.child(16), None);
    }
}
