//! Unit tests of [`Replica`]: storage invariants, sync marks, watermarks and the file format.

use std::collections::{BTreeSet, HashSet};

use bytes::Bytes;

use super::file::{REPLICA_FORMAT, ReplicaFile};
use super::*;

fn room() -> RoomId {
    RoomId::new("replica-tests").unwrap()
}

fn node(parents: &[&Node], path: &str, payload: &str) -> Node {
    Node::child_of(&room(), parents, path, payload.as_bytes().to_vec()).unwrap()
}

fn ids<'a>(it: impl IntoIterator<Item = &'a NodeId>) -> BTreeSet<NodeId> {
    it.into_iter().copied().collect()
}

/// Recomputes every derived field from the stored nodes and compares.
fn assert_consistent(r: &Replica) {
    let all: Vec<&Node> = r.nodes().collect();
    assert_eq!(all.len(), r.len());
    let mut seen = HashSet::new();
    for n in &all {
        assert!(
            n.parents.iter().all(|p| seen.contains(p)),
            "parent after child"
        );
        assert!(seen.insert(n.id), "stored twice");
    }
    let referenced: HashSet<NodeId> = all.iter().flat_map(|n| n.parents.iter().copied()).collect();
    let heads: BTreeSet<NodeId> = all
        .iter()
        .map(|n| n.id)
        .filter(|id| !referenced.contains(id))
        .collect();
    assert_eq!(ids(r.heads()), heads);
    assert_eq!(r.digest(), SetDigest::of(all.iter().map(|n| &n.id)));
    // Synced subset: ancestor-closed, digest and heads match.
    let synced: Vec<&Node> = all.iter().copied().filter(|n| r.is_synced(&n.id)).collect();
    for n in &synced {
        assert!(
            n.parents.iter().all(|p| r.is_synced(p)),
            "synced node with unsynced parent"
        );
    }
    assert_eq!(
        r.synced_digest(),
        SetDigest::of(synced.iter().map(|n| &n.id))
    );
    let synced_referenced: HashSet<NodeId> = synced
        .iter()
        .flat_map(|n| n.parents.iter().copied())
        .collect();
    let synced_heads: Vec<NodeId> = synced
        .iter()
        .map(|n| n.id)
        .filter(|id| !synced_referenced.contains(id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if synced_heads.len() <= MAX_HELLO_HEADS {
        assert_eq!(r.hints(false).heads, synced_heads);
    }
    let unsynced: Vec<NodeId> = r.unsynced().map(|n| n.id).collect();
    let expected: Vec<NodeId> = all
        .iter()
        .filter(|n| !r.is_synced(&n.id))
        .map(|n| n.id)
        .collect();
    assert_eq!(unsynced, expected);
}

/// root ─ a ─ b        (a, b on one branch)
///      └ c            (c concurrent with a)
fn small() -> (Replica, [Node; 4]) {
    let root = node(&[], "doc", "root");
    let a = node(&[&root], "doc", "a");
    let b = node(&[&a], "doc", "b");
    let c = node(&[&root], "side", "c");
    let mut r = Replica::new(room());
    for n in [&root, &a, &b, &c] {
        assert_eq!(r.insert(n.clone(), false), Ok(true));
    }
    (r, [root, a, b, c])
}

#[test]
fn insert_maintains_heads_and_digest() {
    let (mut r, [root, a, b, c]) = small();
    assert_consistent(&r);
    assert_eq!(r.len(), 4);
    assert_eq!(ids(r.heads()), ids([&b.id, &c.id]));
    assert_eq!(r.digest(), SetDigest::of([&root.id, &a.id, &b.id, &c.id]));
    assert!(r.contains(&a.id) && r.get(&a.id) == Some(&a));
    // A duplicate changes nothing.
    let digest = r.digest();
    assert_eq!(r.insert(a.clone(), false), Ok(false));
    assert_eq!((r.len(), r.digest()), (4, digest));
    // Missing parents and invalid nodes are refused without effect.
    let stranger = node(&[], "x", "elsewhere");
    let orphan = node(&[&stranger], "x", "orphan");
    assert_eq!(
        r.insert(orphan, false),
        Err(InsertError::MissingParent(stranger.id))
    );
    let mut tampered = node(&[&b], "doc", "t");
    tampered.payload = Bytes::from_static(b"changed");
    assert_eq!(
        r.insert(tampered, false),
        Err(InsertError::Invalid(Rejection::HashMismatch))
    );
    let foreign = Node::new(
        &RoomId::new("other").unwrap(),
        vec![],
        0,
        None,
        "x",
        vec![],
        b"x".to_vec(),
    );
    assert_eq!(
        r.insert(foreign, false),
        Err(InsertError::Invalid(Rejection::HashMismatch))
    );
    assert_eq!((r.len(), r.digest()), (4, digest));
    assert_consistent(&r);
    // The replica does not enforce the relay's payload limit, only integrity.
    let big = node(&[&c], "big", &"x".repeat(300 * 1024));
    assert_eq!(r.insert(big, false), Ok(true));
    assert_consistent(&r);
}

#[test]
fn the_depth_rule_is_checked_against_the_parents_held() {
    let (mut r, [root, a, _, c]) = small();
    let at = |parents: &[&Node], depth: u64, payload: &str| {
        let ids = parents.iter().map(|p| p.id).collect();
        Node::new(
            &room(),
            ids,
            depth,
            None,
            "doc",
            vec![],
            payload.as_bytes().to_vec(),
        )
    };
    let digest = r.digest();
    // a and c are at depth 1: a child of both is at 2, nothing else.
    for wrong in [0, 1, 3, u64::MAX] {
        assert_eq!(
            r.insert(at(&[&a, &c], wrong, "x"), true),
            Err(InsertError::Invalid(Rejection::DepthMismatch)),
            "depth {wrong}"
        );
    }
    assert_eq!(
        r.insert(at(&[], 1, "a root below the top"), true),
        Err(InsertError::Invalid(Rejection::DepthMismatch))
    );
    assert_eq!(r.digest(), digest);
    assert_eq!(r.insert(at(&[&a, &c], 2, "x"), true), Ok(true));
    assert_consistent(&r);
    // A subscribed replica lacking a parent knows only a lower bound: deeper than the
    // parents it holds.
    let elsewhere = node(&[&root], "misc/x", "elsewhere");
    let mut subset = Replica::new(room());
    subset.set_subscription(Some(patterns(&["doc"])));
    for n in [&root, &a] {
        assert_eq!(subset.insert(n.clone(), true), Ok(true));
    }
    assert_eq!(
        subset.insert(at(&[&a, &elsewhere], 1, "y"), true),
        Err(InsertError::Invalid(Rejection::DepthMismatch))
    );
    assert_eq!(subset.insert(at(&[&a, &elsewhere], 9, "y"), true), Ok(true));
    assert_consistent_subset(&subset);
}

#[test]
fn a_synced_arrival_marks_its_unsynced_ancestors() {
    let mut r = Replica::new(room());
    let root = node(&[], "doc", "root");
    let mine = node(&[&root], "doc", "mine");
    let theirs = node(&[&mine], "doc", "theirs");
    assert_eq!(r.insert(root.clone(), true), Ok(true));
    assert_eq!(r.insert(mine.clone(), false), Ok(true));
    assert!(!r.is_synced(&mine.id));
    // The relay holds what its nodes name.
    assert_eq!(r.insert(theirs.clone(), true), Ok(true));
    assert!(r.is_synced(&mine.id) && r.is_synced(&theirs.id));
    assert_eq!(r.unsynced().count(), 0);
    assert_consistent(&r);
}

#[test]
fn create_builds_on_every_head() {
    let (mut r, [_, _, b, c]) = small();
    let merge = r.create("doc", "merge").unwrap();
    let m = r.get(&merge).unwrap().clone();
    assert_eq!(
        m.parents,
        ids([&b.id, &c.id]).into_iter().collect::<Vec<_>>()
    );
    assert_eq!(m.depth, b.depth.max(c.depth) + 1);
    assert_eq!(ids(r.heads()), ids([&merge]));
    assert!(!r.is_synced(&merge));
    assert_consistent(&r);
    // On an empty replica, a root.
    let mut empty = Replica::new(room());
    let root = empty.create("a", "1").unwrap();
    assert_eq!(empty.get(&root).unwrap().depth, 0);
    assert!(empty.get(&root).unwrap().parents.is_empty());
    // Bad paths are the caller's error, and say which rule they break.
    assert_eq!(
        empty.create("a//b", "x"),
        Err(InsertError::BadPath {
            path: "a//b".into(),
            problem: crate::node::PathError::EmptySegment
        })
    );
    assert_eq!(empty.len(), 1);
}

#[test]
fn mark_synced_closes_over_ancestors() {
    let (mut r, [root, a, b, c]) = small();
    assert_eq!(r.synced_digest(), SetDigest::default());
    assert!(r.hints(false).heads.is_empty());
    r.mark_synced(&b.id);
    for n in [&root, &a, &b] {
        assert!(r.is_synced(&n.id));
    }
    assert!(!r.is_synced(&c.id));
    assert_eq!(r.hints(false).heads, vec![b.id]);
    assert_eq!(r.synced_digest(), SetDigest::of([&root.id, &a.id, &b.id]));
    assert_eq!(r.unsynced().map(|n| n.id).collect::<Vec<_>>(), vec![c.id]);
    assert_consistent(&r);
    // Marking an ancestor again, or an unknown id, changes nothing.
    r.mark_synced(&a.id);
    r.mark_synced(&NodeId([9; 32]));
    assert_eq!(r.hints(false).heads, vec![b.id]);
    r.mark_synced(&c.id);
    assert_eq!(ids(&r.hints(false).heads), ids([&b.id, &c.id]));
    assert_eq!(r.synced_digest(), r.digest());
    assert_consistent(&r);
    // Inserting a known node as synced marks it.
    let (mut r, [_, a, ..]) = small();
    assert_eq!(r.insert(a.clone(), true), Ok(false));
    assert!(r.is_synced(&a.id));
    assert_eq!(r.hints(false).heads, vec![a.id]);
    assert_consistent(&r);
}

#[test]
fn reset_sync_rederives_every_flag() {
    let (mut r, [root, a, b, c]) = small();
    r.mark_synced(&b.id);
    r.mark_synced(&c.id);
    let keep: HashSet<NodeId> = [root.id, c.id].into_iter().collect();
    r.reset_sync(|id| keep.contains(id));
    assert!(r.is_synced(&root.id) && r.is_synced(&c.id));
    assert!(!r.is_synced(&a.id) && !r.is_synced(&b.id));
    assert_eq!(r.hints(false).heads, vec![c.id]);
    assert_eq!(r.synced_digest(), SetDigest::of([&root.id, &c.id]));
    assert_consistent(&r);
    r.reset_sync(|_| true);
    assert_eq!(r.synced_digest(), r.digest());
    assert_eq!(r.unsynced().count(), 0);
    assert_consistent(&r);
    r.reset_sync(|_| false);
    assert_eq!(r.synced_digest(), SetDigest::default());
    assert_eq!(r.unsynced().count(), 4);
    assert_consistent(&r);
}

#[test]
fn forget_sync_drops_marks_and_watermark() {
    let (mut r, [_, _, b, _]) = small();
    r.mark_synced(&b.id);
    r.complete_through(1, 3);
    r.received_seq(1, 5);
    r.forget_sync();
    assert_eq!(r.watermark(), None);
    assert_eq!(r.synced_digest(), SetDigest::default());
    assert_eq!(r.hints(false).watermark, None);
    // The next hello names a head no relay knows, so the relay asks for the id list instead of
    // streaming the whole room.
    let heads = r.hints(false).heads;
    assert_eq!(heads.len(), 1);
    assert!(!r.contains(&heads[0]));
    // It survives a discard, and a whole-set answer ends it.
    r.discard(&NodeId([7; 32]));
    assert_eq!(r.hints(false).heads, heads);
    r.reset_sync(|_| false);
    assert!(r.hints(false).heads.is_empty());
    // The gap bookkeeping is gone too: a fresh watermark does not absorb the old 5.
    r.complete_through(1, 4);
    assert_eq!(r.watermark(), Some(Watermark { epoch: 1, seq: 4 }));
    assert_eq!(r.len(), 4);
    assert_consistent(&r);
    // An empty replica has nothing to list: it just catches up.
    let mut empty = Replica::new(room());
    empty.forget_sync();
    assert!(empty.hints(false).heads.is_empty());
}

#[test]
fn discard_removes_the_node_and_its_descendants() {
    let (mut r, [root, a, b, c]) = small();
    r.mark_synced(&c.id);
    r.complete_through(2, 9);
    let d = node(&[&b, &c], "doc", "d");
    let e = node(&[&c], "side", "e");
    r.insert(d.clone(), false).unwrap();
    r.insert(e.clone(), false).unwrap();
    r.discard(&a.id);
    assert_eq!(ids(r.ids()), ids([&root.id, &c.id, &e.id]));
    assert_eq!(ids(r.heads()), ids([&e.id]));
    assert_eq!(r.digest(), SetDigest::of([&root.id, &c.id, &e.id]));
    // Sync flags and watermark of the kept nodes survive.
    assert!(r.is_synced(&c.id) && r.is_synced(&root.id) && !r.is_synced(&e.id));
    assert_eq!(r.watermark(), Some(Watermark { epoch: 2, seq: 9 }));
    assert_consistent(&r);
    // Discarding an unknown id is harmless.
    r.discard(&NodeId([7; 32]));
    assert_eq!(r.len(), 3);
    assert_consistent(&r);
    // New local nodes build on what is left.
    let next = r.create("doc", "next").unwrap();
    assert_eq!(r.get(&next).unwrap().parents, vec![e.id]);
}

#[test]
fn watermark_advances_over_filled_gaps_only() {
    let mut r = Replica::new(room());
    // Without a watermark in the epoch, single arrivals say nothing.
    r.received_seq(1, 1);
    assert_eq!(r.watermark(), None);
    r.complete_through(1, 5);
    assert_eq!(r.watermark(), Some(Watermark { epoch: 1, seq: 5 }));
    r.received_seq(1, 7);
    r.received_seq(1, 9);
    assert_eq!(r.watermark().unwrap().seq, 5, "gap at 6");
    r.received_seq(1, 6);
    assert_eq!(
        r.watermark().unwrap().seq,
        7,
        "6 fills the gap up to 7; 8 missing"
    );
    r.received_seq(1, 3);
    r.received_seq(1, 7);
    assert_eq!(r.watermark().unwrap().seq, 7, "old numbers change nothing");
    r.received_seq(1, 8);
    assert_eq!(r.watermark().unwrap().seq, 9);
    // Another epoch's arrivals are ignored.
    r.received_seq(2, 10);
    assert_eq!(r.watermark(), Some(Watermark { epoch: 1, seq: 9 }));
    // complete_through never goes back, and absorbs arrivals above it.
    r.complete_through(1, 4);
    assert_eq!(r.watermark().unwrap().seq, 9);
    r.received_seq(1, 12);
    r.received_seq(1, 14);
    r.complete_through(1, 11);
    assert_eq!(r.watermark().unwrap().seq, 12);
    r.complete_through(1, 14);
    assert_eq!(r.watermark().unwrap().seq, 14);
    r.received_seq(1, 15);
    assert_eq!(r.watermark().unwrap().seq, 15, "no stale entry left below");
    // complete_through in another epoch replaces the watermark.
    r.complete_through(3, 2);
    assert_eq!(r.watermark(), Some(Watermark { epoch: 3, seq: 2 }));
    r.received_seq(3, 3);
    assert_eq!(r.watermark().unwrap().seq, 3);
}

#[test]
fn entering_another_epoch_drops_the_watermark() {
    let mut r = Replica::new(room());
    r.complete_through(1, 5);
    r.received_seq(1, 7);
    r.enter_epoch(1);
    assert_eq!(r.watermark(), Some(Watermark { epoch: 1, seq: 5 }));
    r.enter_epoch(2);
    assert_eq!(r.watermark(), None);
    assert_eq!(r.hints(false).watermark, None);
    // The old epoch's pending arrivals do not leak into the new one.
    r.complete_through(2, 6);
    assert_eq!(r.watermark(), Some(Watermark { epoch: 2, seq: 6 }));
}

#[test]
fn a_subscribed_replica_forgets_its_sync_marks_in_another_epoch() {
    let doc = node(&[], "docs/a", "doc");
    let mine = node(&[&doc], "misc/mine", "outside the subscription");
    let mut whole = Replica::new(room());
    let mut subset = Replica::new(room());
    subset.set_subscription(Some(patterns(&["docs/**"])));
    for r in [&mut whole, &mut subset] {
        assert!(!r.enter_epoch(1));
        r.insert(doc.clone(), true).unwrap();
        r.insert(mine.clone(), true).unwrap();
        // The same epoch again keeps everything.
        assert!(!r.enter_epoch(1));
        assert!(r.is_synced(&mine.id));
    }
    // A whole-room replica's marks are re-derived by the answer to its next hello, whatever
    // the epoch; a subset replica's answers cover its scope only, so it forgets them all.
    assert!(!whole.enter_epoch(2));
    assert!(whole.is_synced(&mine.id));
    assert!(subset.enter_epoch(2));
    assert_eq!(subset.unsynced().count(), 2);
    assert_eq!(subset.synced_digest(), SetDigest::default());
    // The epoch is kept in the file: marks made after reading it back are of epoch 2.
    let mut back = Replica::from_bytes(&subset.to_bytes().unwrap()).unwrap();
    back.mark_synced(&mine.id);
    assert!(!back.enter_epoch(2));
    assert!(back.is_synced(&mine.id));
}

#[test]
fn hints_describe_the_synced_subset() {
    let (mut r, [_, a, ..]) = small();
    r.mark_synced(&a.id);
    r.complete_through(4, 2);
    let hints = r.hints(false);
    assert_eq!(hints.digest, r.digest(), "digest covers unsynced nodes too");
    assert_eq!(hints.heads, vec![a.id]);
    assert_eq!(hints.watermark, Some(Watermark { epoch: 4, seq: 2 }));
    // Too many synced heads: a head the relay cannot know forces the id list.
    let mut wide = Replica::new(room());
    let root = node(&[], "r", "r");
    wide.insert(root.clone(), true).unwrap();
    for i in 0..=MAX_HELLO_HEADS {
        wide.insert(node(&[&root], "w", &i.to_string()), true)
            .unwrap();
    }
    let heads = wide.hints(false).heads;
    assert_eq!(heads.len(), 1);
    assert!(!wide.contains(&heads[0]));
}

#[test]
fn file_round_trip_keeps_everything() {
    let (mut r, [_, a, _, c]) = small();
    r.mark_synced(&a.id);
    r.enter_epoch(3);
    r.complete_through(3, 17);
    // A node above the watermark arrived: the next hello names the synced heads so that the
    // relay skips it, after a restart from the file too.
    r.received_seq(3, 19);
    assert!(!r.hints(true).heads.is_empty());
    let d = node(&[&c], "side", "d");
    r.insert(d, false).unwrap();
    let bytes = r.to_bytes().unwrap();
    let back = Replica::from_bytes(&bytes).unwrap();
    assert_eq!(back.room(), r.room());
    assert_eq!(
        back.ids().collect::<Vec<_>>(),
        r.ids().collect::<Vec<_>>(),
        "same order"
    );
    for id in r.ids() {
        assert_eq!(back.is_synced(id), r.is_synced(id));
        assert_eq!(back.get(id), r.get(id));
    }
    assert_eq!(back.digest(), r.digest());
    assert_eq!(back.synced_digest(), r.synced_digest());
    assert_eq!(back.hints(false), r.hints(false));
    assert_eq!(back.hints(true), r.hints(true));
    assert_eq!(back.watermark(), r.watermark());
    assert_consistent(&back);
    // The empty replica round-trips too.
    let empty = Replica::new(room());
    let back = Replica::from_bytes(&empty.to_bytes().unwrap()).unwrap();
    assert!(back.is_empty());
    assert_eq!(back.watermark(), None);
}

fn file(format: u32, room: &str, nodes: Vec<(Node, bool)>) -> Vec<u8> {
    rmp_serde::to_vec(&ReplicaFile {
        format,
        room: room.to_owned(),
        watermark: None,
        sketch_key: None,
        nodes,
        subscription: None,
        epoch: None,
        ahead: Vec::new(),
    })
    .unwrap()
}

#[test]
fn corrupted_files_give_typed_errors() {
    let (r, [root, a, ..]) = small();
    let good = r.to_bytes().unwrap();
    // Not MessagePack of the right shape.
    for bad in [
        &b""[..],
        &b"\xc1"[..],
        &b"not a replica"[..],
        &good[..good.len() / 2],
    ] {
        assert!(
            matches!(Replica::from_bytes(bad), Err(ReplicaFileError::Decode(_))),
            "{bad:?}"
        );
    }
    // A format from the future.
    assert!(matches!(
        Replica::from_bytes(&file(REPLICA_FORMAT + 1, "replica-tests", vec![])),
        Err(ReplicaFileError::Format(f)) if f == REPLICA_FORMAT + 1
    ));
    // An invalid room id.
    assert!(matches!(
        Replica::from_bytes(&file(REPLICA_FORMAT, "no/slashes", vec![])),
        Err(ReplicaFileError::Room)
    ));
    // A tampered node.
    let mut tampered = a.clone();
    tampered.payload = Bytes::from_static(b"evil");
    let bytes = file(
        REPLICA_FORMAT,
        "replica-tests",
        vec![(root.clone(), true), (tampered, false)],
    );
    assert!(matches!(
        Replica::from_bytes(&bytes),
        Err(ReplicaFileError::Node(InsertError::Invalid(
            Rejection::HashMismatch
        )))
    ));
    // Nodes of another room: their ids no longer match.
    let bytes = file(REPLICA_FORMAT, "another-room", vec![(root.clone(), true)]);
    assert!(matches!(
        Replica::from_bytes(&bytes),
        Err(ReplicaFileError::Node(InsertError::Invalid(
            Rejection::HashMismatch
        )))
    ));
    // Children before parents.
    let bytes = file(
        REPLICA_FORMAT,
        "replica-tests",
        vec![(a.clone(), false), (root.clone(), false)],
    );
    assert!(matches!(
        Replica::from_bytes(&bytes),
        Err(ReplicaFileError::Node(InsertError::MissingParent(p))) if p == root.id
    ));
    // A flipped byte anywhere in a valid file never yields different nodes: either an error,
    // or the same node set (only flags or the watermark can change undetected).
    for i in 0..good.len() {
        let mut bytes = good.clone();
        bytes[i] ^= 0x01;
        if let Ok(back) = Replica::from_bytes(&bytes) {
            assert_eq!(
                ids(back.ids()),
                ids(r.ids()),
                "byte {i} changed the node set"
            );
        }
    }
}

fn patterns(list: &[&str]) -> PatternSet {
    let list: Vec<String> = list.iter().map(ToString::to_string).collect();
    super::read_subscription(&list).unwrap()
}

#[test]
fn a_subscribed_replica_takes_vouched_nodes_whose_parents_it_lacks() {
    let root = node(&[], "misc/root", "root");
    let doc = node(&[&root], "docs/a", "doc");
    let mut whole = Replica::new(room());
    // A whole-room replica insists on parents first.
    assert_eq!(
        whole.insert(doc.clone(), true),
        Err(InsertError::MissingParent(root.id))
    );
    let mut subset = Replica::new(room());
    subset.set_subscription(Some(patterns(&["docs/**"])));
    assert_eq!(subset.insert(doc.clone(), true), Ok(true));
    assert!(subset.is_synced(&doc.id));
    assert_eq!(subset.synced_digest(), SetDigest::of([&doc.id]));
    assert_eq!(ids(subset.heads()), ids([&doc.id]));
    assert_consistent_subset(&subset);
    // Writing on top of it works, and the file keeps the subscription and the nodes.
    let mine = subset.create("docs/b", "mine").unwrap();
    let back = Replica::from_bytes(&subset.to_bytes().unwrap()).unwrap();
    assert_eq!(back.subscription(), Some(&patterns(&["docs/**"])));
    assert!(back.contains(&doc.id) && back.contains(&mine));
    assert!(back.is_synced(&doc.id) && !back.is_synced(&mine));
    // Asking for the whole room keeps it a subset replica (`**`) while parents are missing.
    subset.set_subscription(None);
    assert_eq!(subset.subscription(), Some(&patterns(&["**"])));
    // The missing parent arrives later (the subscription grew): it goes back before its
    // child, is not a head, and the sync marks and file stay right.
    assert_eq!(subset.insert(root.clone(), true), Ok(true));
    let order: Vec<NodeId> = subset.ids().copied().collect();
    assert_eq!(order, vec![root.id, doc.id, mine]);
    assert_eq!(ids(subset.heads()), ids([&mine]));
    assert_eq!(subset.synced_digest(), SetDigest::of([&root.id, &doc.id]));
    assert_eq!(
        subset.unsynced().map(|n| n.id).collect::<Vec<_>>(),
        vec![mine]
    );
    assert_consistent_subset(&subset);
    let back = Replica::from_bytes(&subset.to_bytes().unwrap()).unwrap();
    assert_eq!(back.ids().copied().collect::<Vec<_>>(), order);
}

/// The subset replica's invariants: parents first unless absent, synced parents of synced
/// nodes, and the digests.
fn assert_consistent_subset(r: &Replica) {
    let order: Vec<NodeId> = r.ids().copied().collect();
    let mut seen = HashSet::new();
    for id in &order {
        let node = r.get(id).unwrap();
        for parent in &node.parents {
            assert!(
                seen.contains(parent) || !r.contains(parent),
                "parent after child"
            );
            if r.is_synced(id) && r.contains(parent) {
                assert!(r.is_synced(parent));
            }
        }
        seen.insert(*id);
    }
    assert_eq!(r.digest(), SetDigest::of(&order));
}

#[test]
fn a_subset_replica_with_more_heads_than_a_node_may_name_builds_on_the_deepest() {
    let mut subset = Replica::new(room());
    subset.set_subscription(Some(patterns(&["docs/**"])));
    // 100 matching nodes whose children (at other paths) the replica never sees: 100 heads.
    let mut tip = node(&[], "misc/root", "root");
    let mut held = Vec::new();
    for i in 0..100 {
        let doc = node(&[&tip], "docs/a", &format!("doc {i}"));
        tip = node(&[&doc], "misc/b", &format!("other {i}"));
        subset.insert(doc.clone(), true).unwrap();
        held.push(doc);
    }
    assert_eq!(subset.heads().count(), 100);
    let mine = subset.create("docs/mine", "on top").unwrap();
    let parents = &subset.get(&mine).unwrap().parents;
    let max = usize::from(NodeLimits::default().max_parents);
    assert_eq!(parents.len(), max);
    // The deepest ones: the last `max` written.
    assert_eq!(
        ids(parents.iter()),
        ids(held[100 - max..].iter().map(|n| &n.id))
    );
    assert_eq!(subset.heads().count(), 100 - max + 1);
}

#[test]
fn changing_the_subscription_drops_the_watermark_and_subscribed_sets_it() {
    let (mut r, _) = small();
    r.complete_through(7, 40);
    assert_eq!(r.watermark().map(|w| w.seq), Some(40));
    // The same subscription keeps it; another drops it (it counted other nodes).
    r.set_subscription(None);
    assert_eq!(r.watermark().map(|w| w.seq), Some(40));
    r.set_subscription(Some(patterns(&["docs/**"])));
    assert_eq!(r.watermark(), None);
    r.subscription_changed(patterns(&["docs/**", "notes/**"]), 7, 55);
    assert_eq!(r.watermark(), Some(Watermark { epoch: 7, seq: 55 }));
    assert_eq!(r.subscription().map(PatternSet::len), Some(2));
}
