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
