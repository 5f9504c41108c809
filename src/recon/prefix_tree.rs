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
mod tests;
