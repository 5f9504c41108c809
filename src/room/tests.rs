//! Unit tests of [`Room`] (admission, orphans, catch-up cursors) and [`Hub`] (sessions, plans,
//! flow control, presence and fan-out), driven with raw frames and a virtual clock.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::node::{BlobHash, BlobRef};
use crate::pattern::{Pattern, PatternLimits};
use crate::protocol::{
    self, Capabilities, CatchUpDone, CloseCode, Credit, ErrorCode, Hello, Ids, Message,
    MessageType, PROTOCOL_VERSION, Pack, Plan, Presence, RelayLimits, Watermark, Welcome,
};
use crate::protocol::{Batch, SyncHints};
use crate::session::RelaySessionConfig;

const EPOCH: u64 = 7;

fn room_id() -> RoomId {
    RoomId::new("room-tests").unwrap()
}

/// An arbitrary origin for the virtual clock; only offsets from it matter.
#[allow(clippy::disallowed_methods)]
fn t0() -> Instant {
    Instant::now()
}

fn empty_room() -> Room {
    Room::new(
        room_id(),
        EPOCH,
        NodeLimits::default(),
        OrphanLimits::default(),
    )
}

/// A valid node on top of `parents`.
fn node(parents: &[&Node], path: &str, payload: &str) -> Node {
    Node::child_of(&room_id(), parents, path, payload.as_bytes().to_vec()).unwrap()
}

/// Everything observable about a room's accepted state.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    seq: u64,
    digest: SetDigest,
    heads: BTreeSet<NodeId>,
    log: Vec<NodeId>,
    orphans: usize,
}

fn snapshot(room: &Room) -> Snapshot {
    Snapshot {
        seq: room.seq(),
        digest: room.digest(),
        heads: room.heads().copied().collect(),
        log: room.nodes().map(|n| *n.id()).collect(),
        orphans: room.orphan_count(),
    }
}

fn accept_all(room: &mut Room, nodes: &[&Node], now: Instant) {
    let sub = room.submit(99, nodes.iter().map(|n| (*n).clone()).collect(), now);
    for outcome in sub.outcomes {
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Room: admission

#[test]
fn duplicates_are_idempotent() {
    let now = t0();
    let mut room = empty_room();
    let a = node(&[], "a", "1");
    let b = node(&[&a], "b", "2");
    let first = room.submit(1, vec![a.clone(), b.clone()], now);
    assert_eq!(
        first.outcomes,
        vec![Outcome::Accepted(1), Outcome::Accepted(2)]
    );
    let before = snapshot(&room);
    for _ in 0..2 {
        let again = room.submit(2, vec![b.clone(), a.clone()], now);
        assert_eq!(
            again.outcomes,
            vec![Outcome::Duplicate(2), Outcome::Duplicate(1)]
        );
        assert!(again.admitted.is_empty());
        assert!(again.resolved.is_empty());
        assert_eq!(snapshot(&room), before);
    }
    // A pack that repeats a node within itself admits it once.
    let c = node(&[&b], "c", "3");
    let sub = room.submit(1, vec![c.clone(), c.clone()], now);
    assert_eq!(
        sub.outcomes,
        vec![Outcome::Accepted(3), Outcome::Duplicate(3)]
    );
    assert_eq!(sub.admitted, vec![Admitted { seq: 3, origin: 1 }]);
}

#[test]
fn orphan_waits_then_is_admitted_when_its_parent_arrives() {
    let now = t0();
    let mut room = empty_room();
    let parent = node(&[], "p", "parent");
    let child = node(&[&parent], "c", "child");
    let sub = room.submit(1, vec![child.clone()], now);
    assert_eq!(sub.outcomes, vec![Outcome::Pending]);
    assert!(sub.admitted.is_empty());
    assert_eq!((room.seq(), room.orphan_count()), (0, 1));
    assert!(room.get(&child.id).is_none());
    // Resubmitting a waiting orphan (here from another session) is still pending, is not
    // stored twice, and both senders hear the final outcome.
    let again = room.submit(3, vec![child.clone()], now);
    assert_eq!(again.outcomes, vec![Outcome::Pending]);
    assert_eq!(room.orphan_count(), 1);

    let sub = room.submit(2, vec![parent.clone()], now);
    assert_eq!(sub.outcomes, vec![Outcome::Accepted(1)]);
    assert_eq!(
        sub.admitted,
        vec![
            Admitted { seq: 1, origin: 2 },
            Admitted { seq: 2, origin: 1 }
        ]
    );
    assert_eq!(
        sub.resolved,
        vec![
            (1, child.id, Outcome::Accepted(2)),
            (3, child.id, Outcome::Accepted(2))
        ]
    );
    assert_eq!(room.orphan_count(), 0);
    assert_eq!(room.seq_of(&child.id), Some(2));
    assert_eq!(room.heads().copied().collect::<Vec<_>>(), vec![child.id]);
    assert_eq!(room.digest(), SetDigest::of([&parent.id, &child.id]));
}

#[test]
fn orphan_chain_is_released_in_cascade_parents_first() {
    let now = t0();
    let mut room = empty_room();
    let root = node(&[], "r", "0");
    let c1 = node(&[&root], "r", "1");
    let c2 = node(&[&c1], "r", "2");
    let c3 = node(&[&c2], "r", "3");
    let side = node(&[&c1], "s", "side");
    let merge = node(&[&c3, &side], "r", "merge");
    // Children arrive first, deepest first, from several sessions.
    for (origin, n) in [(1, &merge), (2, &c3), (1, &side), (3, &c2), (1, &c1)] {
        let sub = room.submit(origin, vec![n.clone()], now);
        assert_eq!(sub.outcomes, vec![Outcome::Pending]);
    }
    assert_eq!((room.seq(), room.orphan_count()), (0, 5));

    let sub = room.submit(4, vec![root.clone()], now);
    assert_eq!(sub.outcomes, vec![Outcome::Accepted(1)]);
    assert_eq!(room.orphan_count(), 0);
    assert_eq!(room.seq(), 6);
    let seqs: Vec<u64> = sub.admitted.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6], "consecutive arrival numbers");
    // Arrival order is topological.
    let log: Vec<&LoggedNode> = room.nodes().collect();
    for (i, n) in log.iter().enumerate() {
        for p in n.parents() {
            let ps = room.seq_of(p).unwrap();
            assert!(ps <= i as u64, "parent of #{} logged after it", i + 1);
        }
    }
    // Every orphan resolved to its own origin, accepted with its arrival number.
    let mut resolved = sub.resolved.clone();
    resolved.sort_by_key(|(_, id, _)| room.seq_of(id));
    let expected: Vec<(SessionId, NodeId, Outcome)> = [(1, &c1), (3, &c2), (2, &c3), (1, &side)]
        .into_iter()
        .chain([(1, &merge)])
        .map(|(o, n)| (o, n.id, Outcome::Accepted(room.seq_of(&n.id).unwrap())))
        .collect::<Vec<_>>();
    let mut expected = expected;
    expected.sort_by_key(|(_, id, _)| room.seq_of(id));
    assert_eq!(resolved, expected);
    for a in &sub.admitted {
        let id = *room.node_at(a.seq).unwrap().id();
        let origin = if id == root.id {
            4
        } else {
            expected.iter().find(|(_, i, _)| *i == id).unwrap().0
        };
        assert_eq!(a.origin, origin);
    }
    assert_eq!(room.heads().copied().collect::<Vec<_>>(), vec![merge.id]);
}

#[test]
fn orphan_with_two_missing_parents_waits_for_both() {
    let now = t0();
    let mut room = empty_room();
    let a = node(&[], "a", "a");
    let b = node(&[], "b", "b");
    let m = node(&[&a, &b], "m", "m");
    assert_eq!(
        room.submit(1, vec![m.clone()], now).outcomes,
        vec![Outcome::Pending]
    );
    let sub = room.submit(2, vec![a.clone()], now);
    assert!(sub.resolved.is_empty());
    assert_eq!(room.orphan_count(), 1);
    let sub = room.submit(2, vec![b.clone()], now);
    assert_eq!(sub.resolved, vec![(1, m.id, Outcome::Accepted(3))]);
}

#[test]
fn orphans_expire_with_a_typed_reason() {
    let now = t0();
    let ttl = Duration::from_secs(5);
    let limits = OrphanLimits {
        ttl,
        ..OrphanLimits::default()
    };
    let mut room = Room::new(room_id(), EPOCH, NodeLimits::default(), limits);
    let parent = node(&[], "p", "p");
    let child = node(&[&parent], "c", "c");
    assert_eq!(
        room.submit(1, vec![child.clone()], now).outcomes,
        vec![Outcome::Pending]
    );
    assert_eq!(room.next_expiry(), Some(now + ttl));
    assert!(
        room.expire_orphans(now + ttl - Duration::from_millis(1))
            .is_empty()
    );
    assert_eq!(room.expire_orphans(now + ttl), vec![(1, child.id)]);
    assert_eq!((room.orphan_count(), room.next_expiry()), (0, None));
    // The parent arriving later admits only itself.
    let sub = room.submit(2, vec![parent.clone()], now + ttl);
    assert_eq!(sub.admitted.len(), 1);
    assert!(sub.resolved.is_empty());
    assert!(room.get(&child.id).is_none());
}

#[test]
fn admitted_orphans_do_not_expire_later() {
    let now = t0();
    let limits = OrphanLimits {
        ttl: Duration::from_secs(1),
        ..OrphanLimits::default()
    };
    let mut room = Room::new(room_id(), EPOCH, NodeLimits::default(), limits);
    let parent = node(&[], "p", "p");
    let child = node(&[&parent], "c", "c");
    let _ = room.submit(1, vec![child.clone()], now);
    let _ = room.submit(1, vec![parent], now);
    assert!(
        room.expire_orphans(now + Duration::from_secs(60))
            .is_empty()
    );
    assert_eq!(room.seq_of(&child.id), Some(2));
}

#[test]
fn orphan_buffer_limits_reject_with_buffer_full() {
    let now = t0();
    let missing = node(&[], "missing", "x");
    let by_count = OrphanLimits {
        max_nodes: 2,
        ..OrphanLimits::default()
    };
    let mut room = Room::new(room_id(), EPOCH, NodeLimits::default(), by_count);
    let orphans: Vec<Node> = (0..3)
        .map(|i| node(&[&missing], "o", &i.to_string()))
        .collect();
    let sub = room.submit(1, orphans.clone(), now);
    assert_eq!(
        sub.outcomes,
        vec![
            Outcome::Pending,
            Outcome::Pending,
            Outcome::Rejected(Rejection::OrphanBufferFull)
        ]
    );
    assert_eq!(room.orphan_count(), 2);
    // The refused one was not kept: the parent admits the two that waited.
    let sub = room.submit(1, vec![missing.clone()], now);
    assert_eq!(sub.admitted.len(), 3);
    assert!(room.get(&orphans[2].id).is_none());

    let by_bytes = OrphanLimits {
        max_bytes: 100,
        ..OrphanLimits::default()
    };
    let mut room = Room::new(room_id(), EPOCH, NodeLimits::default(), by_bytes);
    let small = node(&[&missing], "o", "small");
    let big = node(&[&missing], "o", &"x".repeat(100));
    let sub = room.submit(1, vec![big, small], now);
    assert_eq!(
        sub.outcomes,
        vec![
            Outcome::Rejected(Rejection::OrphanBufferFull),
            Outcome::Pending
        ]
    );
    assert_eq!(room.orphan_count(), 1);
}

#[test]
fn every_rejection_is_reported_and_leaves_the_room_unchanged() {
    let now = t0();
    let limits = NodeLimits {
        max_payload: 8,
        max_parents: 2,
        max_path_len: 16,
        max_path_segments: 3,
        max_blobs: 1,
    };
    let mut room = Room::new(room_id(), EPOCH, limits, OrphanLimits::default());
    let a = node(&[], "a", "a");
    let b = node(&[], "b", "b");
    let c = node(&[], "c", "c");
    accept_all(&mut room, &[&a, &b, &c], now);
    let before = snapshot(&room);

    let mut tampered = node(&[&a], "t", "x");
    tampered.payload = Bytes::from_static(b"y");
    let mut other_room = node(&[&a], "t", "x");
    other_room.id = Node::new(
        &RoomId::new("elsewhere").unwrap(),
        vec![a.id],
        1,
        None,
        "t",
        vec![],
        b"x".to_vec(),
    )
    .id;
    let too_big = node(&[&a], "t", "123456789");
    let three_parents = node(&[&a, &b, &c], "t", "x");
    let mut unsorted = node(&[&a, &b], "t", "x");
    unsorted.parents.reverse();
    unsorted.id = unsorted.content_id(&room_id());
    let blob = |i: u8| BlobRef {
        hash: BlobHash([i; 32]),
        size: 1,
    };
    let two_blobs = Node::new(
        &room_id(),
        vec![a.id],
        1,
        None,
        "t",
        vec![blob(1), blob(2)],
        b"x".to_vec(),
    );
    let bad_depth_root = Node::new(&room_id(), vec![], 1, None, "t", vec![], b"x".to_vec());
    let bad_depth_child = Node::new(&room_id(), vec![a.id], 5, None, "t", vec![], b"x".to_vec());
    let mut cases: Vec<(Node, Rejection)> = vec![
        (tampered, Rejection::HashMismatch),
        (other_room, Rejection::HashMismatch),
        (too_big, Rejection::PayloadTooLarge),
        (three_parents, Rejection::TooManyParents),
        (unsorted, Rejection::ParentsNotSorted),
        (two_blobs, Rejection::TooManyBlobs),
        (bad_depth_root, Rejection::DepthMismatch),
        (bad_depth_child, Rejection::DepthMismatch),
    ];
    for path in [
        "",
        "/t",
        "t/",
        "t//u",
        "t/../u",
        ".",
        "a/b/c/d",
        "t\n",
        "0123456789abcdefg",
    ] {
        cases.push((
            Node::new(&room_id(), vec![a.id], 1, None, path, vec![], b"x".to_vec()),
            Rejection::BadPath,
        ));
    }
    // Every reason a node can be refused on its own (the orphan reasons have their own tests).
    let covered: HashSet<Rejection> = cases.iter().map(|(_, r)| *r).collect();
    let orphan_reasons = [Rejection::OrphanExpired, Rejection::OrphanBufferFull];
    for reason in Rejection::ALL {
        assert!(
            covered.contains(&reason) || orphan_reasons.contains(&reason),
            "{reason:?} untested"
        );
    }

    for (bad, reason) in cases {
        let sub = room.submit(1, vec![bad.clone()], now);
        assert_eq!(sub.outcomes, vec![Outcome::Rejected(reason)], "{bad:?}");
        assert!(sub.admitted.is_empty() && sub.resolved.is_empty());
        assert_eq!(snapshot(&room), before, "{reason:?} changed the room");
        // Nor does a bad node disturb the good ones around it in the same pack.
        let good = node(&[&a], "ok", &room.seq().to_string());
        let sub = room.submit(1, vec![bad, good.clone()], now);
        assert_eq!(sub.outcomes[0], Outcome::Rejected(reason));
        assert!(matches!(sub.outcomes[1], Outcome::Accepted(_)));
        assert_eq!(room.seq(), before.seq + 1);
        // Rebuild the reference state without `good` for the next case.
        room = Room::new(room_id(), EPOCH, limits, OrphanLimits::default());
        accept_all(&mut room, &[&a, &b, &c], now);
    }
}

#[test]
fn an_orphan_with_a_wrong_depth_is_rejected_on_release() {
    let now = t0();
    let mut room = empty_room();
    let parent = node(&[], "p", "p");
    let wrong = Node::new(
        &room_id(),
        vec![parent.id],
        3,
        None,
        "c",
        vec![],
        b"c".to_vec(),
    );
    assert_eq!(
        room.submit(1, vec![wrong.clone()], now).outcomes,
        vec![Outcome::Pending]
    );
    let sub = room.submit(2, vec![parent], now);
    assert_eq!(
        sub.resolved,
        vec![(1, wrong.id, Outcome::Rejected(Rejection::DepthMismatch))]
    );
    assert_eq!((room.seq(), room.orphan_count()), (1, 0));
}

#[test]
fn restore_checks_nodes_and_is_idempotent() {
    let mut room = empty_room();
    let a = node(&[], "a", "a");
    let b = node(&[&a], "b", "b");
    assert_eq!(room.restore(b.clone()), Err(Rejection::DepthMismatch));
    assert_eq!(room.restore(a.clone()), Ok(1));
    assert_eq!(room.restore(b.clone()), Ok(2));
    assert_eq!(room.restore(a), Ok(1));
    let mut tampered = b;
    tampered.payload = Bytes::from_static(b"zz");
    assert_eq!(room.restore(tampered), Err(Rejection::HashMismatch));
    assert_eq!(room.seq(), 2);
}

// ---------------------------------------------------------------------------------------------
// Room: catch-up cursors

/// A random DAG of `n` nodes built by `writers` concurrent writers that occasionally merge.
fn random_dag(rng: &mut StdRng, n: usize, writers: usize) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    // Each writer's tip, as an index into `nodes`.
    let mut tips: Vec<Option<usize>> = vec![None; writers];
    for i in 0..n {
        let w = rng.random_range(0..writers);
        let mut parents: Vec<&Node> = Vec::new();
        if let Some(t) = tips[w] {
            parents.push(&nodes[t]);
        }
        if rng.random_bool(0.3) {
            let other = rng.random_range(0..writers);
            if let Some(t) = tips[other] {
                if !parents.iter().any(|p| p.id == nodes[t].id) {
                    parents.push(&nodes[t]);
                }
            }
        }
        let n = node(&parents, &format!("w{w}"), &i.to_string());
        nodes.push(n);
        tips[w] = Some(nodes.len() - 1);
    }
    nodes
}

/// Every ancestor of `heads` in `room`, heads included.
fn ancestry(room: &Room, heads: &[NodeId]) -> HashSet<NodeId> {
    let mut seen = HashSet::new();
    let mut stack: Vec<NodeId> = heads.to_vec();
    while let Some(id) = stack.pop() {
        if seen.insert(id) {
            stack.extend(room.get(&id).unwrap().parents().iter().copied());
        }
    }
    seen
}

/// A hub configuration with the given limits and defaults elsewhere.
fn with_limits(limits: RelayLimits) -> HubConfig {
    HubConfig {
        session: RelaySessionConfig {
            limits,
            ..RelaySessionConfig::default()
        },
        ..HubConfig::default()
    }
}

/// Decodes a prepared batch frame and checks it against its summary.
fn unpack(step: BatchStep) -> Option<Batch> {
    let BatchStep::Batch {
        through,
        count,
        frame,
    } = step
    else {
        return None;
    };
    let Message::Batch(batch) = protocol::decode(&frame).unwrap() else {
        panic!("next_batch produced a frame that is not a batch");
    };
    assert_eq!((batch.through, batch.nodes.len()), (through, count));
    Some(batch)
}

fn drain(room: &Room, cursor: &mut Cursor, budget: usize) -> Vec<Batch> {
    let mut batches = Vec::new();
    while let Some(batch) = unpack(room.next_batch(cursor, budget)) {
        assert!(!batch.nodes.is_empty());
        batches.push(batch);
        assert!(batches.len() < 100_000, "cursor does not end");
    }
    // Done is sticky.
    assert!(matches!(room.next_batch(cursor, budget), BatchStep::Done));
    batches
}

fn seqs(room: &Room, batches: &[Batch]) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| &b.nodes)
        .map(|n| room.seq_of(&n.id).unwrap())
        .collect()
}

/// A client state: heads of an ancestor-closed subset of `room`, and the largest watermark
/// consistent with it.
fn client_state(rng: &mut StdRng, room: &Room) -> (Vec<NodeId>, u64, HashSet<NodeId>) {
    let n = room.seq();
    let picks = rng.random_range(0..4);
    let heads: Vec<NodeId> = (0..picks)
        .map(|_| room.node_at(rng.random_range(1..=n)).unwrap().id)
        .collect();
    let held = ancestry(room, &heads);
    // Trim to real heads (no head an ancestor of another), as a replica would report them.
    let heads: Vec<NodeId> = heads
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|h| {
            !heads
                .iter()
                .any(|o| o != h && ancestry(room, &[*o]).contains(h))
        })
        .collect();
    let mut watermark = 0;
    while room
        .node_at(watermark + 1)
        .is_some_and(|n| held.contains(&n.id))
    {
        watermark += 1;
    }
    // Sometimes claim a lower watermark than possible (an older one), never a higher one.
    let watermark = if rng.random_bool(0.3) {
        rng.random_range(0..=watermark)
    } else {
        watermark
    };
    (heads, watermark, held)
}

#[test]
fn catch_up_cursor_sends_exactly_the_missing_nodes_parents_first() {
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut room = empty_room();
        let dag = random_dag(&mut rng, 60, 3);
        accept_all(&mut room, &dag.iter().collect::<Vec<_>>(), t0());
        for _ in 0..10 {
            let (heads, after, held) = client_state(&mut rng, &room);
            let mut cursor = room.catch_up_cursor(after, &heads);
            let sent = seqs(&room, &drain(&room, &mut cursor, 1 << 20));
            let expected: Vec<u64> = (1..=room.seq())
                .filter(|s| !held.contains(room.node_at(*s).unwrap().id()))
                .collect();
            assert_eq!(sent, expected, "seed {seed} heads {heads:?} after {after}");
            // Parents first: every parent is held or sent earlier.
            let mut have = held.clone();
            for s in sent {
                let n = room.node_at(s).unwrap();
                assert!(n.parents.iter().all(|p| have.contains(p)), "seed {seed}");
                have.insert(n.id);
            }
        }
    }
}

#[test]
fn catch_up_cursor_without_heads_streams_after_the_watermark() {
    let mut room = empty_room();
    let mut rng = StdRng::seed_from_u64(1);
    let dag = random_dag(&mut rng, 10, 2);
    accept_all(&mut room, &dag.iter().collect::<Vec<_>>(), t0());
    let mut cursor = room.catch_up_cursor(0, &[]);
    assert_eq!(
        seqs(&room, &drain(&room, &mut cursor, 1 << 20)),
        (1..=10).collect::<Vec<_>>()
    );
    let mut cursor = room.catch_up_cursor(4, &[]);
    assert_eq!(
        seqs(&room, &drain(&room, &mut cursor, 1 << 20)),
        (5..=10).collect::<Vec<_>>()
    );
}

#[test]
fn cursor_follows_nodes_admitted_during_catch_up() {
    let now = t0();
    let mut room = empty_room();
    let a = node(&[], "a", "a");
    let b = node(&[&a], "b", "b");
    accept_all(&mut room, &[&a, &b], now);
    let mut cursor = room.catch_up_cursor(0, &[]);
    let first = unpack(room.next_batch(&mut cursor, 1)).expect("something sent");
    assert_eq!((first.nodes.len(), first.through), (1, 1));
    let c = node(&[&b], "c", "c");
    accept_all(&mut room, &[&c], now);
    assert_eq!(seqs(&room, &drain(&room, &mut cursor, 1 << 20)), vec![2, 3]);
}

#[test]
fn batches_respect_the_frame_budget() {
    let mut room = empty_room();
    let mut rng = StdRng::seed_from_u64(2);
    let mut prev: Vec<Node> = Vec::new();
    for i in 0..80 {
        let size = rng.random_range(0..600);
        let parents: Vec<&Node> = prev.last().into_iter().collect();
        let n = node(&parents, "p", &format!("{i}{}", "x".repeat(size)));
        prev.push(n);
    }
    accept_all(&mut room, &prev.iter().collect::<Vec<_>>(), t0());
    for budget in [1, 200, 700, 1500, 4096, 1 << 20] {
        let mut cursor = room.catch_up_cursor(0, &[]);
        let batches = drain(&room, &mut cursor, budget);
        assert_eq!(
            seqs(&room, &batches),
            (1..=80).collect::<Vec<_>>(),
            "{budget}"
        );
        for batch in &batches {
            let len = Message::Batch(batch.clone()).encode().unwrap().len();
            if batch.nodes.len() > 1 {
                assert!(len <= budget, "batch of {len} bytes over budget {budget}");
            }
        }
        if budget == 1 {
            assert!(batches.iter().all(|b| b.nodes.len() == 1));
        }
        if budget >= 4096 {
            // Not one node per frame when more fit.
            assert!(batches.len() < 80);
        }
    }
}

#[test]
fn through_is_a_resume_point() {
    for seed in 0..30u64 {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let mut room = empty_room();
        let dag = random_dag(&mut rng, 50, 3);
        accept_all(&mut room, &dag.iter().collect::<Vec<_>>(), t0());
        let (heads, after, held) = client_state(&mut rng, &room);
        let budget = rng.random_range(100..2000);
        let mut cursor = room.catch_up_cursor(after, &heads);
        let all = drain(&room, &mut cursor, budget);
        let total = seqs(&room, &all);
        let mut have = held.clone();
        for k in 0..all.len() {
            // A client that received batches 0..=k and reconnects with watermark = through and
            // the same heads gets exactly the rest.
            have.extend(all[k].nodes.iter().map(|n| n.id));
            let through = all[k].through;
            for s in 1..=through {
                assert!(
                    have.contains(room.node_at(s).unwrap().id()),
                    "seed {seed}: through {through} claims #{s}, not held"
                );
            }
            let mut resumed = room.catch_up_cursor(through, &heads);
            let rest = seqs(&room, &drain(&room, &mut resumed, budget));
            let sent_so_far: usize = all[..=k].iter().map(|b| b.nodes.len()).sum();
            assert_eq!(rest, total[sent_so_far..].to_vec(), "seed {seed} batch {k}");
        }
    }
}

#[test]
fn id_list_cursor_gives_need_and_missing_nodes() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut room = empty_room();
    let dag = random_dag(&mut rng, 40, 3);
    accept_all(&mut room, &dag.iter().collect::<Vec<_>>(), t0());
    // The client holds an arbitrary (not ancestor-closed) subset, plus ids the room lacks,
    // some repeated.
    let unknown: Vec<NodeId> = (0..5u8).map(|i| NodeId([i + 1; 32])).collect();
    let mut client: Vec<NodeId> = dag
        .iter()
        .filter(|_| rng.random_bool(0.5))
        .map(|n| n.id)
        .collect();
    client.extend(&unknown);
    client.extend(&unknown[..2]);
    client.push(dag[0].id);
    let (need, mut cursor) = room.id_list_cursor(client.clone());
    let need: BTreeSet<NodeId> = need.into_iter().collect();
    assert_eq!(need, unknown.iter().copied().collect());
    let held: HashSet<NodeId> = client.into_iter().collect();
    let sent = seqs(&room, &drain(&room, &mut cursor, 500));
    let expected: Vec<u64> = (1..=room.seq())
        .filter(|s| !held.contains(room.node_at(*s).unwrap().id()))
        .collect();
    assert_eq!(sent, expected);
    // An empty list needs nothing and gets everything.
    let (need, mut cursor) = room.id_list_cursor(vec![]);
    assert!(need.is_empty());
    assert_eq!(
        seqs(&room, &drain(&room, &mut cursor, 500)),
        (1..=40).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Hub harness

/// A hub with a clock; every outbox is resolved to recipients at once, as a driver must.
struct Relay {
    hub: Hub,
    now: Instant,
}

/// What one hub call produced, resolved.
#[derive(Debug, Default)]
struct Sent {
    /// `(recipient, frame bytes, decoded)` in order.
    frames: Vec<(SessionId, Bytes, Message)>,
    /// Frames in the outbox before resolution (encode-once check).
    encoded: usize,
    closes: Vec<(SessionId, CloseCode)>,
    /// Reads the hub asked of the store.
    fetches: Vec<Vec<u64>>,
}

impl Sent {
    fn to(&self, id: SessionId) -> Vec<&Message> {
        self.frames
            .iter()
            .filter(|(to, ..)| *to == id)
            .map(|(_, _, m)| m)
            .collect()
    }
}

impl Relay {
    fn new(room: Room) -> Self {
        Self::with_config(room, HubConfig::default())
    }

    fn with_config(room: Room, config: HubConfig) -> Self {
        Self {
            hub: Hub::new(room, config),
            now: t0(),
        }
    }

    /// What the hub's output amounts to once every write it asks for has succeeded at once.
    fn resolve(&mut self, mut out: Outbox) -> Sent {
        while let Some(through) = out.persist.take() {
            let released = self.hub.persisted(through);
            out.extend(released);
        }
        let delivery = self.hub.resolve(out);
        let mut sent = Sent {
            encoded: delivery.frames.len(),
            closes: delivery.closes,
            fetches: delivery.fetches,
            ..Sent::default()
        };
        for addressed in delivery.frames {
            let message = protocol::decode(&addressed.frame).unwrap();
            for &to in addressed.to.iter() {
                sent.frames
                    .push((to, addressed.frame.clone(), message.clone()));
            }
        }
        sent
    }

    fn frame(&mut self, id: SessionId, message: Message) -> Sent {
        let bytes = message.encode().unwrap();
        self.raw(id, &bytes)
    }

    fn raw(&mut self, id: SessionId, bytes: &[u8]) -> Sent {
        let out = self.hub.handle_frame(id, bytes, self.now);
        self.resolve(out)
    }

    /// Connects `id` and sends a hello; returns the hub's answer.
    fn join(&mut self, id: SessionId, hints: SyncHints, credit: u64, caps: Capabilities) -> Sent {
        self.hub.connect(id, self.now);
        self.frame(id, hello(hints, credit, caps))
    }

    fn timeout(&mut self, at: Instant) -> Sent {
        self.now = at;
        let out = self.hub.handle_timeout(at);
        self.resolve(out)
    }
}

fn hello(hints: SyncHints, credit: u64, capabilities: Capabilities) -> Message {
    Message::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities,
        hints,
        credit,
        subscribe: None,
    })
}

fn hints_of(room: &Room) -> SyncHints {
    SyncHints {
        digest: room.digest(),
        watermark: Some(Watermark {
            epoch: room.epoch(),
            seq: room.seq(),
        }),
        heads: room.heads().copied().collect(),
        ..SyncHints::default()
    }
}

fn welcome_of(messages: &[&Message]) -> Welcome {
    match messages.first() {
        Some(Message::Welcome(w)) => w.clone(),
        other => panic!("expected welcome first, got {other:?}"),
    }
}

fn pack(number: u64, nodes: &[&Node]) -> Message {
    Message::Pack(Pack {
        number,
        nodes: nodes.iter().map(|n| (*n).clone()).collect(),
    })
}

fn populated(nodes: &[&Node]) -> Room {
    let mut room = empty_room();
    accept_all(&mut room, nodes, t0());
    room
}

/// Joins `id` with an empty replica and plenty of credit, and returns once it is steady.
fn join_steady(relay: &mut Relay, id: SessionId, caps: Capabilities) -> Sent {
    let hints = if relay.hub.room().seq() == 0 {
        SyncHints::default()
    } else {
        hints_of(relay.hub.room())
    };
    let sent = relay.join(id, hints, 1 << 20, caps);
    assert_eq!(welcome_of(&sent.to(id)).plan, Plan::InSync);
    sent
}

// ---------------------------------------------------------------------------------------------
// Hub: handshake

#[test]
fn in_sync_hello_is_answered_in_one_round_trip() {
    let a = node(&[], "a", "a");
    let b = node(&[&a], "b", "b");
    let mut relay = Relay::new(populated(&[&a, &b]));
    let sent = relay.join(1, hints_of(relay.hub.room()), 0, Capabilities::NONE);
    assert_eq!(sent.frames.len(), 1, "{:?}", sent.frames);
    let welcome = welcome_of(&sent.to(1));
    assert_eq!(
        (welcome.plan, welcome.epoch, welcome.seq, welcome.peer),
        (Plan::InSync, EPOCH, 2, 1)
    );
    assert_eq!(welcome.version, PROTOCOL_VERSION);
    assert!(sent.frames[0].1.len() < 300, "welcome is small");
    // Steady at once: it may push and receives broadcasts.
    assert_eq!(
        relay
            .hub
            .recipients(Audience::Live { except: None })
            .collect::<Vec<_>>(),
        vec![1]
    );
    let c = node(&[&b], "c", "c");
    let sent = relay.frame(1, pack(1, &[&c]));
    assert!(matches!(sent.to(1)[..], [Message::Ack(_)]));
    // An empty room and an empty client are in sync too.
    let mut relay = Relay::new(empty_room());
    let sent = relay.join(1, SyncHints::default(), 0, Capabilities::NONE);
    assert_eq!(welcome_of(&sent.to(1)).plan, Plan::InSync);
}

#[test]
fn capabilities_are_intersected() {
    let mut relay = Relay::new(empty_room());
    let offered = Capabilities(Capabilities::PRESENCE.0 | (1 << 40));
    let sent = relay.join(1, SyncHints::default(), 0, offered);
    assert_eq!(welcome_of(&sent.to(1)).capabilities, Capabilities::PRESENCE);
    let sent = relay.join(2, SyncHints::default(), 0, Capabilities(1 << 40));
    assert_eq!(welcome_of(&sent.to(2)).capabilities, Capabilities::NONE);
}

#[test]
fn handshake_timeout_closes_with_4001() {
    let mut relay = Relay::new(empty_room());
    let start = relay.now;
    relay.hub.connect(1, start);
    relay.hub.connect(2, start + Duration::from_secs(5));
    let deadline = start + HubConfig::default().handshake_timeout;
    assert_eq!(relay.hub.poll_timeout(), Some(deadline));
    let sent = relay.timeout(deadline - Duration::from_millis(1));
    assert!(sent.closes.is_empty());
    let sent = relay.timeout(deadline);
    assert_eq!(sent.closes, vec![(1, CloseCode::HandshakeTimeout)]);
    assert_eq!(sent.closes[0].1.code(), 4001);
    assert_eq!(relay.hub.session_count(), 1);
    // A session that said hello in time is not timed out.
    relay.now = deadline;
    let sent = relay.frame(2, hello(SyncHints::default(), 0, Capabilities::NONE));
    assert_eq!(welcome_of(&sent.to(2)).plan, Plan::InSync);
    assert_eq!(relay.hub.poll_timeout(), None);
    let sent = relay.timeout(deadline + Duration::from_secs(60));
    assert!(sent.closes.is_empty());
    assert_eq!(relay.hub.session_count(), 1);
}

#[test]
fn bad_hello_closes_with_4002() {
    let not_hello = Message::Credit(Credit { bytes: 5 });
    for first in [
        vec![0xc1],
        vec![0x92, 0x01, 0xc0],
        b"hello".to_vec(),
        not_hello.encode().unwrap().to_vec(),
    ] {
        let mut relay = Relay::new(empty_room());
        relay.hub.connect(1, relay.now);
        let sent = relay.raw(1, &first);
        assert_eq!(sent.closes, vec![(1, CloseCode::ProtocolViolation)]);
        assert_eq!(sent.closes[0].1.code(), 4002);
        assert!(matches!(sent.to(1)[..], [Message::ErrorMessage(_)]));
        assert_eq!(relay.hub.session_count(), 0);
        // Later frames from the closed session are ignored.
        let sent = relay.frame(1, hello(SyncHints::default(), 0, Capabilities::NONE));
        assert!(sent.frames.is_empty() && sent.closes.is_empty());
    }
}

#[test]
fn unsupported_version_closes_with_4003_and_an_error() {
    for (min, max) in [(2, 3), (0, 0)] {
        let mut relay = Relay::new(empty_room());
        relay.hub.connect(1, relay.now);
        let sent = relay.frame(
            1,
            Message::Hello(Hello {
                min_version: min,
                max_version: max,
                capabilities: Capabilities::NONE,
                hints: SyncHints::default(),
                credit: 0,
                subscribe: None,
            }),
        );
        assert_eq!(sent.closes, vec![(1, CloseCode::UnsupportedVersion)]);
        assert_eq!(sent.closes[0].1.code(), 4003);
        match sent.to(1)[..] {
            [Message::ErrorMessage(e)] => {
                assert_eq!(e.code, ErrorCode::UnsupportedVersion.code());
                assert_eq!(e.message_type, MessageType::Hello.code());
            }
            ref other => panic!("{other:?}"),
        }
    }
}

#[test]
fn errors_after_hello_keep_the_session_until_the_limit() {
    let mut relay = Relay::new(empty_room());
    let _ = join_steady(&mut relay, 1, Capabilities::NONE);
    let a = node(&[], "a", "a");
    for i in 1..crate::session::relay::MAX_ERRORS {
        let sent = relay.raw(1, &[0x92, 0x05]);
        assert!(sent.closes.is_empty(), "closed after {i} errors");
        assert!(matches!(sent.to(1)[..], [Message::ErrorMessage(_)]));
        // The session still works between errors.
        if i == 1 {
            let sent = relay.frame(1, pack(1, &[&a]));
            assert!(matches!(sent.to(1)[..], [Message::Ack(_)]));
        }
    }
    let sent = relay.raw(1, &[0x92, 0x05]);
    assert_eq!(sent.closes, vec![(1, CloseCode::ProtocolViolation)]);
    assert_eq!(relay.hub.room().seq(), 1, "accepted state survives");
}

#[test]
fn pack_over_the_node_limit_is_refused_whole() {
    let config = with_limits(RelayLimits {
        max_pack_nodes: 2,
        ..RelayLimits::default()
    });
    let mut relay = Relay::with_config(empty_room(), config);
    let _ = join_steady(&mut relay, 1, Capabilities::NONE);
    let a = node(&[], "a", "a");
    let b = node(&[&a], "b", "b");
    let c = node(&[&b], "c", "c");
    let sent = relay.frame(1, pack(1, &[&a, &b, &c]));
    match sent.to(1)[..] {
        [Message::ErrorMessage(e)] => assert_eq!(e.code, ErrorCode::LimitExceeded.code()),
        ref other => panic!("{other:?}"),
    }
    assert_eq!(relay.hub.room().seq(), 0);
}

// ---------------------------------------------------------------------------------------------
// Room: payload budget

/// `nodes` admitted into a room with a payload budget, all marked stored.
fn budgeted(nodes: &[Node], budget: usize) -> Room {
    let mut room = empty_room().with_payload_budget(budget);
    accept_all(&mut room, &nodes.iter().collect::<Vec<_>>(), t0());
    room.mark_stored(room.seq());
    room
}

#[test]
fn stored_nodes_leave_memory_oldest_first_down_to_the_budget() {
    let mut rng = StdRng::seed_from_u64(31);
    let dag = random_dag(&mut rng, 200, 3);
    let full = populated(&dag.iter().collect::<Vec<_>>());
    let total = full.resident_payload_bytes();
    assert_eq!(
        total,
        full.nodes().map(|n| n.wire().unwrap().len()).sum::<usize>()
    );
    for budget in [0, 1, total / 3, total - 1, total, usize::MAX] {
        let room = budgeted(&dag, budget);
        assert!(room.resident_payload_bytes() <= budget, "budget {budget}");
        // What stays is a suffix of the log: the newest history.
        let resident: Vec<bool> = room.nodes().map(|n| n.wire().is_some()).collect();
        let first = resident.iter().position(|r| *r).unwrap_or(resident.len());
        assert!(resident[first..].iter().all(|r| *r), "budget {budget}");
        let kept: usize = room.nodes().filter_map(|n| n.wire()).map(Bytes::len).sum();
        assert_eq!(kept, room.resident_payload_bytes());
        // Everything else about the room is unchanged.
        assert_eq!(snapshot(&room), snapshot(&full));
    }
    // Nodes not yet stored stay, whatever the budget.
    let mut room = empty_room().with_payload_budget(0);
    accept_all(&mut room, &dag.iter().collect::<Vec<_>>(), t0());
    room.mark_stored(150);
    assert!((1..=150).all(|s| room.wire_at(s).is_none()));
    assert!((151..=200).all(|s| room.wire_at(s).is_some()));
    room.mark_stored(10_000);
    assert_eq!(room.resident_payload_bytes(), 0);
}

#[test]
fn a_payload_read_back_must_be_the_nodes_own_encoding() {
    let a = node(&[], "a", "alpha");
    let b = node(&[&a], "b", "beta");
    let full = populated(&[&a, &b]);
    let mut room = budgeted(&[a.clone(), b.clone()], 0);
    let wire_a = full.wire_at(1).unwrap().clone();
    let wire_b = full.wire_at(2).unwrap().clone();
    assert_eq!(
        room.restore_payload(1, wire_b.clone()),
        Err(PayloadError::Mismatch(1))
    );
    let mut flipped = wire_a.to_vec();
    *flipped.last_mut().unwrap() ^= 1;
    assert_eq!(
        room.restore_payload(1, Bytes::from(flipped)),
        Err(PayloadError::Mismatch(1))
    );
    assert_eq!(
        room.restore_payload(1, Bytes::from_static(b"\xc1")),
        Err(PayloadError::Mismatch(1))
    );
    assert_eq!(
        room.restore_payload(3, wire_a.clone()),
        Err(PayloadError::Unknown(3))
    );
    assert_eq!(room.resident_payload_bytes(), 0);
    assert!(room.wire_at(1).is_none());
    room.restore_payload(1, wire_a.clone()).unwrap();
    assert_eq!(room.wire_at(1), Some(&wire_a));
    assert_eq!(room.node_at(1).unwrap().node(), Some(a));
    // Taking it twice counts it once; trimming evicts what was read back.
    room.restore_payload(1, wire_a.clone()).unwrap();
    assert_eq!(room.resident_payload_bytes(), wire_a.len());
    room.trim_payloads();
    assert_eq!(room.resident_payload_bytes(), 0);
    assert!(room.wire_at(1).is_none());
}

#[test]
fn catch_up_over_a_budget_reads_cold_nodes_back_and_sends_the_same_nodes() {
    let mut seeds_that_read = 0;
    for seed in 0..30u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dag = random_dag(&mut rng, 300, 3);
        let full = populated(&dag.iter().collect::<Vec<_>>());
        let total = full.resident_payload_bytes();
        let budget = rng.random_range(0..=total / 2);
        let mut room = budgeted(&dag, budget);
        let (heads, watermark, _) = client_state(&mut rng, &full);
        let frame_budget = rng.random_range(200..4000);
        let expected = seqs(
            &full,
            &drain(
                &full,
                &mut full.catch_up_cursor(watermark, &heads),
                frame_budget,
            ),
        );
        let cold_at_start: HashSet<u64> =
            (1..=300).filter(|s| room.wire_at(*s).is_none()).collect();
        let mut cursor = room.catch_up_cursor(watermark, &heads);
        let mut sent = Vec::new();
        let mut fetches = 0;
        for _ in 0..100_000 {
            match room.next_batch(&mut cursor, frame_budget) {
                BatchStep::Batch { frame, .. } => {
                    let Message::Batch(batch) = protocol::decode(&frame).unwrap() else {
                        panic!("not a batch");
                    };
                    sent.extend(batch.nodes.iter().map(|n| room.seq_of(&n.id).unwrap()));
                    room.trim_payloads();
                }
                BatchStep::Fetch(cold) => {
                    fetches += 1;
                    assert!(!cold.is_empty());
                    assert!(cold.windows(2).all(|w| w[0] < w[1]), "ascending");
                    let bytes: usize = cold.iter().map(|s| full.wire_at(*s).unwrap().len()).sum();
                    assert!(
                        cold.len() == 1 || bytes <= frame_budget,
                        "one batch's worth"
                    );
                    for seq in cold {
                        assert!(room.wire_at(seq).is_none(), "asked for a resident node");
                        room.restore_payload(seq, full.wire_at(seq).unwrap().clone())
                            .unwrap();
                    }
                }
                BatchStep::Done => break,
            }
        }
        assert_eq!(sent, expected, "seed {seed}");
        if expected.iter().any(|s| cold_at_start.contains(s)) {
            assert!(
                fetches > 0,
                "seed {seed}: cold nodes were sent without a read"
            );
            seeds_that_read += 1;
        }
        room.trim_payloads();
        assert!(room.resident_payload_bytes() <= budget);
    }
    assert!(
        seeds_that_read >= 10,
        "only {seeds_that_read} seeds read anything back"
    );
}

// ---------------------------------------------------------------------------------------------
// Hub: catch-up, id list and credit

/// Drives a catching-up session: returns every batch received (granting `grant` bytes of credit
/// each time the relay stops) and the `catch_up_done`.
fn finish_catch_up(
    relay: &mut Relay,
    id: SessionId,
    mut sent: Sent,
    grant: u64,
) -> (Vec<Batch>, CatchUpDone) {
    let mut batches = Vec::new();
    for _ in 0..10_000 {
        for message in sent.to(id) {
            match message {
                Message::Batch(b) => batches.push(b.clone()),
                Message::CatchUpDone(done) => return (batches, done.clone()),
                _ => {}
            }
        }
        sent = relay.frame(id, Message::Credit(Credit { bytes: grant }));
        assert!(
            !sent.to(id).is_empty(),
            "credit granted but nothing was sent"
        );
    }
    panic!("catch-up did not finish");
}

#[test]
fn catch_up_over_the_hub_sends_the_missing_nodes_then_done() {
    let mut rng = StdRng::seed_from_u64(4);
    let dag = random_dag(&mut rng, 30, 2);
    let room = populated(&dag.iter().collect::<Vec<_>>());
    let mut relay = Relay::new(room);
    let held = [dag[0].id, dag[1].id];
    let heads: Vec<NodeId> = held
        .iter()
        .copied()
        .filter(|h| {
            !held
                .iter()
                .any(|o| relay.hub.room().get(o).unwrap().parents().contains(h))
        })
        .collect();
    let hints = SyncHints {
        digest: SetDigest::of(&held),
        watermark: Some(Watermark {
            epoch: EPOCH,
            seq: 2,
        }),
        heads,
        ..SyncHints::default()
    };
    let sent = relay.join(1, hints, 1 << 20, Capabilities::NONE);
    let welcome = welcome_of(&sent.to(1));
    assert_eq!((welcome.plan, welcome.seq), (Plan::CatchUp, 30));
    let (batches, done) = finish_catch_up(&mut relay, 1, sent, 1 << 20);
    assert_eq!(
        seqs(relay.hub.room(), &batches),
        (3..=30).collect::<Vec<_>>()
    );
    assert_eq!(batches.last().unwrap().through, 30);
    assert_eq!((done.seq, done.digest), (30, relay.hub.room().digest()));
    assert_eq!(
        relay
            .hub
            .recipients(Audience::Live { except: None })
            .collect::<Vec<_>>(),
        vec![1]
    );
}

/// Answers the reads the hub asks for from `store`, in order, until none is left; collects
/// what was sent and (in `fetches`) every read answered. `fail` decides which reads fail.
fn serve_reads(
    relay: &mut Relay,
    mut sent: Sent,
    store: &Room,
    fail: impl Fn(&[u64]) -> bool,
) -> Sent {
    let mut all = Sent::default();
    let mut pending: std::collections::VecDeque<Vec<u64>> = Default::default();
    for _ in 0..10_000 {
        all.frames.append(&mut sent.frames);
        all.closes.append(&mut sent.closes);
        pending.extend(sent.fetches.drain(..));
        let Some(seqs) = pending.pop_front() else {
            return all;
        };
        let records = if fail(&seqs) {
            Err("injected".to_owned())
        } else {
            Ok(seqs
                .iter()
                .map(|s| store.wire_at(*s).unwrap().clone())
                .collect())
        };
        let out = relay.hub.fetched(&seqs, records);
        all.fetches.push(seqs);
        sent = relay.resolve(out);
    }
    panic!("reads do not end");
}

#[test]
fn catch_up_from_a_budgeted_hub_reads_back_from_the_store_once_per_node() {
    let mut rng = StdRng::seed_from_u64(41);
    let dag = random_dag(&mut rng, 400, 2);
    let full = populated(&dag.iter().collect::<Vec<_>>());
    let config = with_limits(RelayLimits {
        max_frame: 2000,
        ..RelayLimits::default()
    });
    let mut relay = Relay::with_config(budgeted(&dag, 0), config);
    // Two cold clients join together: they need the same nodes, which are read once.
    let first = relay.join(1, SyncHints::default(), 1 << 30, Capabilities::NONE);
    let second = relay.join(2, SyncHints::default(), 1 << 30, Capabilities::NONE);
    assert!(!first.fetches.is_empty());
    assert!(
        second.fetches.is_empty(),
        "second client read the same nodes again"
    );
    let mut joined = first;
    joined.frames.extend(second.frames);
    let sent = serve_reads(&mut relay, joined, &full, |_| false);
    let read: Vec<u64> = sent.fetches.iter().flatten().copied().collect();
    let unique: HashSet<u64> = read.iter().copied().collect();
    assert_eq!(unique.len(), read.len(), "a node was read twice");
    assert_eq!(unique, (1..=400).collect::<HashSet<_>>());
    for id in [1, 2] {
        let batches: Vec<Batch> = sent
            .to(id)
            .into_iter()
            .filter_map(|m| match m {
                Message::Batch(b) => Some(b.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(seqs(&full, &batches), (1..=400).collect::<Vec<_>>());
        assert!(matches!(sent.to(id).last(), Some(Message::CatchUpDone(_))));
    }
    assert_eq!(
        relay.hub.room().resident_payload_bytes(),
        0,
        "trimmed after use"
    );
}

#[test]
fn a_failed_read_back_closes_only_the_sessions_waiting_for_it() {
    let mut rng = StdRng::seed_from_u64(42);
    let dag = random_dag(&mut rng, 100, 2);
    let full = populated(&dag.iter().collect::<Vec<_>>());
    let mut relay = Relay::new(budgeted(&dag, 0));
    // A steady session that holds everything.
    let hints = SyncHints {
        digest: full.digest(),
        watermark: Some(Watermark {
            epoch: EPOCH,
            seq: 100,
        }),
        heads: full.heads().copied().collect(),
        ..SyncHints::default()
    };
    let steady = relay.join(7, hints, 1 << 20, Capabilities::NONE);
    assert!(steady.fetches.is_empty());
    let cold = relay.join(1, SyncHints::default(), 1 << 20, Capabilities::NONE);
    let sent = serve_reads(&mut relay, cold, &full, |seqs| seqs.contains(&50));
    assert!(sent.to(1).iter().any(|m| matches!(m,
        Message::ErrorMessage(e) if e.code == ErrorCode::StoreUnavailable.code())));
    assert_eq!(sent.closes, vec![(1, CloseCode::StoreUnavailable)]);
    assert!(
        !sent
            .to(1)
            .iter()
            .any(|m| matches!(m, Message::CatchUpDone(_)))
    );
    // The room and the other session are untouched; a new client gets everything.
    assert_eq!(snapshot(relay.hub.room()), snapshot(&full));
    let c = node(&[&dag[99]], "c", "after the failure");
    let acked = relay.frame(7, pack(1, &[&c]));
    assert!(matches!(acked.to(7)[..], [Message::Ack(_)]));
    // Once stored, the new node leaves memory too (budget 0): the store now holds it.
    let mut full = full;
    accept_all(&mut full, &[&c], t0());
    let again = relay.join(2, SyncHints::default(), 1 << 20, Capabilities::NONE);
    let sent = serve_reads(&mut relay, again, &full, |_| false);
    assert!(matches!(sent.to(2).last(), Some(Message::CatchUpDone(d)) if d.seq == 101));
}

#[test]
fn no_batch_without_credit_and_catch_up_resumes_on_credit() {
    let mut rng = StdRng::seed_from_u64(5);
    let dag = random_dag(&mut rng, 40, 2);
    // Small frames, so catch-up takes many batches.
    let config = with_limits(RelayLimits {
        max_frame: 400,
        ..RelayLimits::default()
    });
    let mut relay = Relay::with_config(populated(&dag.iter().collect::<Vec<_>>()), config);
    // No credit: welcome only, and nothing on later calls that do not grant credit.
    let sent = relay.join(1, SyncHints::default(), 0, Capabilities::NONE);
    assert_eq!(sent.frames.len(), 1);
    assert_eq!(welcome_of(&sent.to(1)).plan, Plan::CatchUp);
    let sent = relay.timeout(relay.now + Duration::from_secs(1));
    assert!(sent.frames.is_empty());
    // A one-byte grant buys exactly one batch (never zero, never more). The batch overdraws the
    // balance, and the overdraft is repaid, not written off: a second byte buys nothing, and the
    // next batch comes only once the grants since add up to the last batch's size.
    let mut received = Vec::new();
    let mut sent = relay.frame(1, Message::Credit(Credit { bytes: 1 }));
    for batch in 1.. {
        match sent.to(1)[..] {
            [Message::Batch(b)] => {
                let len = sent.frames[0].1.len() as u64;
                assert!(len <= 400 || b.nodes.len() == 1);
                received.extend(
                    b.nodes
                        .iter()
                        .map(|n| relay.hub.room().seq_of(&n.id).unwrap()),
                );
                let sent_on_one_byte = relay.frame(1, Message::Credit(Credit { bytes: 1 }));
                assert!(
                    sent_on_one_byte.frames.is_empty(),
                    "batch {batch}: the overdraft of {len} bytes was written off"
                );
                // The rest of the batch's size brings the balance back to one byte.
                sent = relay.frame(1, Message::Credit(Credit { bytes: len - 1 }));
            }
            [Message::CatchUpDone(done)] => {
                assert_eq!(done.seq, 40);
                break;
            }
            ref other => panic!("batch {batch}: {other:?}"),
        }
        assert!(batch <= 40, "at least one node per batch");
    }
    assert_eq!(received, (1..=40).collect::<Vec<_>>());
    assert!(
        relay
            .hub
            .recipients(Audience::Live { except: None })
            .eq([1])
    );
}

/// A client that grants a window and then returns each batch's size as it consumes it (§6.2)
/// never has more than the window plus one frame outstanding, however the node sizes mix, so a
/// catch-up stays within any queue of at least the credit cap plus a frame.
#[test]
fn crediting_what_was_consumed_keeps_outstanding_bytes_within_the_window() {
    let mut rng = StdRng::seed_from_u64(12);
    let max_payload = NodeLimits::default().max_payload as usize;
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..160 {
        // Sizes from 10 B to the payload limit, spread over orders of magnitude.
        let size = match i % 4 {
            0 => 10,
            1 => rng.random_range(10..2_000),
            2 => rng.random_range(2_000..100_000),
            _ => rng.random_range(100_000..=max_payload - 8),
        };
        let parents: Vec<&Node> = nodes.last().into_iter().collect();
        let n = node(&parents, &format!("mix/{i}"), &"z".repeat(size));
        nodes.push(n);
    }
    let mut relay = Relay::new(populated(&nodes.iter().collect::<Vec<_>>()));
    let max_frame = u64::from(RelayLimits::default().max_frame);
    let cap = RelaySessionConfig::default().max_credit;
    for window in [1, 300_000, cap, 4 * cap] {
        let id = window;
        let mut sent = relay.join(id, SyncHints::default(), window, Capabilities::NONE);
        // Frames the relay queued and the client has not consumed yet.
        let mut unread: VecDeque<u64> = VecDeque::new();
        let mut received = 0;
        let mut done = false;
        for _ in 0..100_000 {
            for (to, frame, message) in &sent.frames {
                if *to != id {
                    continue;
                }
                match message {
                    Message::Batch(b) => {
                        unread.push_back(frame.len() as u64);
                        received += b.nodes.len();
                    }
                    Message::CatchUpDone(_) => done = true,
                    _ => {}
                }
            }
            let outstanding: u64 = unread.iter().sum();
            assert!(
                outstanding <= window.min(cap) + max_frame,
                "window {window}: {outstanding} bytes outstanding"
            );
            // The client is slow: it consumes one frame per step and credits exactly its size.
            let Some(consumed) = unread.pop_front() else {
                break;
            };
            sent = relay.frame(id, Message::Credit(Credit { bytes: consumed }));
        }
        assert!(done, "window {window}: catch-up did not finish");
        assert_eq!(received, nodes.len(), "window {window}");
    }
}

/// Peer numbers count the room's own connections, whatever session ids the relay gave them,
/// so a client cannot learn how many connections other rooms had; presence names the same
/// numbers, and a number is not reused after its session left.
#[test]
fn peers_are_numbered_per_room() {
    let mut first = Relay::new(empty_room());
    let mut second = Relay::new(empty_room());
    let caps = Capabilities::PRESENCE;
    assert_eq!(
        welcome_of(&first.join(100, SyncHints::default(), 1, caps).to(100)).peer,
        1
    );
    assert_eq!(
        welcome_of(&second.join(150, SyncHints::default(), 1, caps).to(150)).peer,
        1
    );
    assert_eq!(
        welcome_of(&first.join(200, SyncHints::default(), 1, caps).to(200)).peer,
        2
    );
    let sent = first.frame(
        100,
        Message::Presence(Presence {
            state: Bytes::from_static(b"here"),
        }),
    );
    match &sent.to(200)[..] {
        [Message::PresenceUpdate(update)] => assert_eq!(update.peer, 1),
        other => panic!("{other:?}"),
    }
    let _ = first.hub.disconnect(200);
    let sent = first.join(300, SyncHints::default(), 1, caps);
    assert_eq!(welcome_of(&sent.to(300)).peer, 3);
    // The late joiner hears peer 1's state under its peer number.
    match &sent.to(300)[1..] {
        [Message::PresenceUpdate(update)] => {
            assert_eq!((update.peer, &update.state[..]), (1, &b"here"[..]))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn credit_bounds_each_pump_by_spent_bytes() {
    let big: Vec<Node> = {
        let mut v: Vec<Node> = Vec::new();
        for i in 0..20 {
            let parents: Vec<&Node> = v.last().into_iter().collect();
            let n = node(&parents, "big", &format!("{i}{}", "x".repeat(10_000)));
            v.push(n);
        }
        v
    };
    let config = with_limits(RelayLimits {
        max_frame: 25_000,
        ..RelayLimits::default()
    });
    let mut relay = Relay::with_config(populated(&big.iter().collect::<Vec<_>>()), config);
    let sent = relay.join(1, SyncHints::default(), 30_000, Capabilities::NONE);
    let batch_bytes: Vec<usize> = sent
        .frames
        .iter()
        .filter(|(_, _, m)| matches!(m, Message::Batch(_)))
        .map(|(_, b, _)| b.len())
        .collect();
    // Every batch is within the frame limit; the relay stops once 30 kB are spent, so it
    // queued at most one frame beyond the credit.
    assert!(batch_bytes.iter().all(|&b| b <= 25_000), "{batch_bytes:?}");
    let total: usize = batch_bytes.iter().sum();
    assert!((30_000..30_000 + 25_000).contains(&total), "{total}");
    assert!(
        !sent
            .frames
            .iter()
            .any(|(_, _, m)| matches!(m, Message::CatchUpDone(_)))
    );
    let first: usize = sent
        .frames
        .iter()
        .filter_map(|(_, _, m)| match m {
            Message::Batch(b) => Some(b.nodes.len()),
            _ => None,
        })
        .sum();
    let (rest, done) = finish_catch_up(&mut relay, 1, Sent::default(), 30_000);
    let received = first + rest.iter().map(|b| b.nodes.len()).sum::<usize>();
    assert_eq!(received, 20);
    assert_eq!(done.seq, 20);
}

#[test]
fn id_list_over_the_hub_gives_need_and_nodes() {
    let mut rng = StdRng::seed_from_u64(6);
    let dag = random_dag(&mut rng, 20, 2);
    let mut relay = Relay::new(populated(&dag.iter().collect::<Vec<_>>()));
    // The client holds a few room nodes and three of its own the room lacks, with a head the
    // room does not know.
    let own_root = node(&[], "own", "1");
    let own_a = node(&[&own_root], "own", "2");
    let own_b = node(&[&own_a], "own", "3");
    let mut client_ids: Vec<NodeId> = dag.iter().take(5).map(|n| n.id).collect();
    client_ids.extend([own_root.id, own_a.id, own_b.id]);
    let hints = SyncHints {
        digest: SetDigest::of(&client_ids),
        watermark: None,
        heads: vec![own_b.id],
        ..SyncHints::default()
    };
    let sent = relay.join(1, hints, 1 << 20, Capabilities::NONE);
    assert_eq!(welcome_of(&sent.to(1)).plan, Plan::SendIds);
    assert_eq!(sent.frames.len(), 1);
    // Ids in two chunks; nothing happens until the last.
    let sent = relay.frame(
        1,
        Message::Ids(Ids {
            ids: client_ids[..4].to_vec(),
            last: false,
        }),
    );
    assert!(sent.frames.is_empty());
    let sent = relay.frame(
        1,
        Message::Ids(Ids {
            ids: client_ids[4..].to_vec(),
            last: true,
        }),
    );
    let messages = sent.to(1);
    let need = match messages.first() {
        Some(Message::Need(need)) => need.clone(),
        other => panic!("{other:?}"),
    };
    assert!(need.last);
    let need: BTreeSet<NodeId> = need.ids.into_iter().collect();
    assert_eq!(
        need,
        [own_root.id, own_a.id, own_b.id].into_iter().collect()
    );
    let (batches, done) = finish_catch_up(&mut relay, 1, sent, 1 << 20);
    let held: HashSet<NodeId> = client_ids.iter().copied().collect();
    let expected: Vec<u64> = (1..=20)
        .filter(|s| !held.contains(relay.hub.room().node_at(*s).unwrap().id()))
        .collect();
    assert_eq!(seqs(relay.hub.room(), &batches), expected);
    assert_eq!(done.digest, relay.hub.room().digest());
    // Now steady, the client pushes what the relay needed.
    let sent = relay.frame(1, pack(1, &[&own_root, &own_a, &own_b]));
    match sent.to(1)[..] {
        [Message::Ack(ack)] => assert_eq!(
            ack.outcomes,
            vec![
                Outcome::Accepted(21),
                Outcome::Accepted(22),
                Outcome::Accepted(23)
            ]
        ),
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn need_is_chunked_by_max_ids() {
    let config = with_limits(RelayLimits {
        max_ids: 2,
        ..RelayLimits::default()
    });
    let a = node(&[], "a", "a");
    let mut relay = Relay::with_config(populated(&[&a]), config);
    let unknown: Vec<NodeId> = (1..=5u8).map(|i| NodeId([i; 32])).collect();
    let hints = SyncHints {
        digest: SetDigest::of(&unknown),
        watermark: None,
        heads: vec![unknown[4]],
        ..SyncHints::default()
    };
    let sent = relay.join(1, hints, 1 << 20, Capabilities::NONE);
    assert_eq!(welcome_of(&sent.to(1)).plan, Plan::SendIds);
    let mut sent = Sent::default();
    for chunk in unknown.chunks(2) {
        sent = relay.frame(
            1,
            Message::Ids(Ids {
                ids: chunk.to_vec(),
                last: chunk.contains(&unknown[4]),
            }),
        );
    }
    let needs: Vec<_> = sent
        .to(1)
        .into_iter()
        .filter_map(|m| match m {
            Message::Need(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(needs.len(), 3);
    assert!(needs.iter().all(|n| n.ids.len() <= 2));
    assert_eq!(
        needs.iter().map(|n| n.last).collect::<Vec<_>>(),
        vec![false, false, true]
    );
    let all: BTreeSet<NodeId> = needs.into_iter().flat_map(|n| n.ids).collect();
    assert_eq!(all, unknown.into_iter().collect());
}

// ---------------------------------------------------------------------------------------------
// Hub: fan-out

#[test]
fn broadcast_reaches_every_steady_session_but_the_sender_encoded_once() {
    let a = node(&[], "a", "a");
    let mut relay = Relay::new(populated(&[&a]));
    for id in 1..=3 {
        let _ = join_steady(&mut relay, id, Capabilities::NONE);
    }
    // Session 4 is catching up and has no credit; session 5 has not said hello.
    let sent = relay.join(4, SyncHints::default(), 0, Capabilities::NONE);
    assert_eq!(welcome_of(&sent.to(4)).plan, Plan::CatchUp);
    relay.hub.connect(5, relay.now);

    let b = node(&[&a], "b", "b");
    let c = node(&[&b], "c", "c");
    let sent = relay.frame(1, pack(9, &[&b, &c]));
    assert_eq!(sent.encoded, 2, "one ack and one broadcast frame");
    match sent.to(1)[..] {
        [Message::Ack(ack)] => {
            assert_eq!(ack.number, 9);
            assert_eq!(
                ack.outcomes,
                vec![Outcome::Accepted(2), Outcome::Accepted(3)]
            );
        }
        ref other => panic!("{other:?}"),
    }
    let broadcasts: Vec<&(SessionId, Bytes, Message)> = sent
        .frames
        .iter()
        .filter(|(_, _, m)| matches!(m, Message::Broadcast(_)))
        .collect();
    let receivers: Vec<SessionId> = broadcasts.iter().map(|(to, ..)| *to).collect();
    assert_eq!(receivers, vec![2, 3]);
    // The same bytes, not a copy per receiver.
    assert_eq!(broadcasts[0].1.as_ptr(), broadcasts[1].1.as_ptr());
    match &broadcasts[0].2 {
        Message::Broadcast(bc) => {
            assert_eq!(bc.first_seq, 2);
            assert_eq!(bc.nodes, vec![b.clone(), c.clone()]);
        }
        _ => unreachable!(),
    }
    // Duplicates and rejections broadcast nothing.
    let sent = relay.frame(2, pack(1, &[&b]));
    assert_eq!(sent.encoded, 1);

    // The catching-up session gets everything through catch-up, then live traffic.
    let (batches, done) = finish_catch_up(&mut relay, 4, Sent::default(), 1 << 20);
    assert_eq!(
        seqs(relay.hub.room(), &batches),
        vec![1, 2, 3],
        "catch-up covers nodes admitted after the plan"
    );
    assert_eq!(done.seq, 3);
    let d = node(&[&c], "d", "d");
    let sent = relay.frame(2, pack(2, &[&d]));
    let receivers: BTreeSet<SessionId> = sent
        .frames
        .iter()
        .filter(|(_, _, m)| matches!(m, Message::Broadcast(_)))
        .map(|(to, ..)| *to)
        .collect();
    assert_eq!(receivers, [1, 3, 4].into_iter().collect());
}

#[test]
fn orphan_resolution_reaches_its_origin_and_everyone_sees_the_release() {
    let a = node(&[], "a", "a");
    let mut relay = Relay::new(populated(&[&a]));
    for id in 1..=3 {
        let _ = join_steady(&mut relay, id, Capabilities::NONE);
    }
    let b = node(&[&a], "b", "b");
    let c = node(&[&b], "c", "c");
    // Session 1 sends the child before anyone sent its parent.
    let sent = relay.frame(1, pack(1, &[&c]));
    assert_eq!(sent.frames.len(), 1);
    match sent.to(1)[..] {
        [Message::Ack(ack)] => assert_eq!(ack.outcomes, vec![Outcome::Pending]),
        ref other => panic!("{other:?}"),
    }
    // Session 2 sends the parent: both are admitted.
    let sent = relay.frame(2, pack(1, &[&b]));
    let to1 = sent.to(1);
    let to2 = sent.to(2);
    let to3 = sent.to(3);
    // Session 1 learns the final outcome and receives the parent (in the run [b, c]).
    assert!(to1.iter().any(|m| matches!(m,
        Message::Resolved(r) if r.outcomes == vec![(c.id, Outcome::Accepted(3))])));
    assert!(to1.iter().any(|m| matches!(m,
        Message::Broadcast(bc) if bc.nodes.iter().any(|n| n.id == b.id))));
    // The sender of the parent gets its ack, and the released child as a broadcast.
    assert!(matches!(to2[0], Message::Ack(ack) if ack.outcomes == vec![Outcome::Accepted(2)]));
    assert!(to2.iter().any(|m| matches!(m,
        Message::Broadcast(bc) if bc.first_seq == 3 && bc.nodes == vec![c.clone()])));
    assert!(!to2.iter().any(|m| matches!(m, Message::Resolved(_))));
    // A bystander sees both, in order.
    match to3[..] {
        [Message::Broadcast(bc)] => {
            assert_eq!(bc.first_seq, 2);
            assert_eq!(bc.nodes, vec![b.clone(), c.clone()]);
        }
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn expired_orphans_are_resolved_as_rejected() {
    let ttl = Duration::from_secs(3);
    let room = Room::new(
        room_id(),
        EPOCH,
        NodeLimits::default(),
        OrphanLimits {
            ttl,
            ..OrphanLimits::default()
        },
    );
    let mut relay = Relay::new(room);
    let _ = join_steady(&mut relay, 1, Capabilities::NONE);
    let parent = node(&[], "p", "p");
    let child = node(&[&parent], "c", "c");
    let _ = relay.frame(1, pack(1, &[&child]));
    let expiry = relay.now + ttl;
    assert_eq!(relay.hub.poll_timeout(), Some(expiry));
    let sent = relay.timeout(expiry);
    match sent.to(1)[..] {
        [Message::Resolved(r)] => assert_eq!(
            r.outcomes,
            vec![(child.id, Outcome::Rejected(Rejection::OrphanExpired))]
        ),
        ref other => panic!("{other:?}"),
    }
    assert_eq!(relay.hub.room().orphan_count(), 0);
    assert_eq!(relay.hub.poll_timeout(), None);
}

// ---------------------------------------------------------------------------------------------
// Hub: presence

fn presence(state: &[u8]) -> Message {
    Message::Presence(Presence {
        state: Bytes::copy_from_slice(state),
    })
}

fn presence_updates(messages: &[&Message]) -> Vec<(u64, Bytes)> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::PresenceUpdate(u) => Some((u.peer, u.state.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn presence_reaches_peers_late_joiners_and_leaves() {
    let mut relay = Relay::new(empty_room());
    let _ = join_steady(&mut relay, 1, Capabilities::PRESENCE);
    let _ = join_steady(&mut relay, 2, Capabilities::PRESENCE);
    let _ = join_steady(&mut relay, 3, Capabilities::NONE);

    let sent = relay.frame(1, presence(b"cursor@1"));
    assert_eq!(sent.encoded, 1);
    assert_eq!(
        presence_updates(&sent.to(2)),
        vec![(1, Bytes::from_static(b"cursor@1"))]
    );
    assert!(sent.to(1).is_empty(), "no echo to the sender");
    assert!(sent.to(3).is_empty(), "not negotiated");
    let _ = relay.frame(2, presence(b"cursor@2"));
    let _ = relay.frame(2, presence(b"cursor@2b"));

    // A late joiner receives every current non-empty state after its welcome.
    let sent = relay.join(4, SyncHints::default(), 0, Capabilities::PRESENCE);
    let to4 = sent.to(4);
    assert!(matches!(to4[0], Message::Welcome(_)));
    let mut states = presence_updates(&to4);
    states.sort();
    assert_eq!(
        states,
        vec![
            (1, Bytes::from_static(b"cursor@1")),
            (2, Bytes::from_static(b"cursor@2b"))
        ]
    );
    // Clearing sends an empty state; a peer without state leaves silently.
    let sent = relay.frame(2, presence(b""));
    let mut got: Vec<SessionId> = sent.frames.iter().map(|(to, ..)| *to).collect();
    got.sort();
    assert_eq!(got, vec![1, 4]);
    assert!(presence_updates(&sent.to(1))[0].1.is_empty());
    let out = relay.hub.disconnect(2);
    let sent = relay.resolve(out);
    assert!(sent.frames.is_empty());
    // Leaving with a state tells the others it is gone.
    let out = relay.hub.disconnect(1);
    let sent = relay.resolve(out);
    assert_eq!(
        presence_updates(&sent.to(4)),
        vec![(1, Bytes::new())],
        "leave is an empty state"
    );
    assert!(sent.to(3).is_empty());
    assert_eq!(relay.hub.session_count(), 2);
    // A joiner after the leave sees nothing from the departed peer.
    let sent = relay.join(5, SyncHints::default(), 0, Capabilities::PRESENCE);
    assert!(presence_updates(&sent.to(5)).is_empty());
}

#[test]
fn presence_limits_and_capability_are_enforced() {
    let mut relay = Relay::new(empty_room());
    let _ = join_steady(&mut relay, 1, Capabilities::PRESENCE);
    let _ = join_steady(&mut relay, 2, Capabilities::NONE);
    let max = RelayLimits::default().max_presence as usize;
    let sent = relay.frame(1, presence(&vec![1; max + 1]));
    match sent.to(1)[..] {
        [Message::ErrorMessage(e)] => assert_eq!(e.code, ErrorCode::LimitExceeded.code()),
        ref other => panic!("{other:?}"),
    }
    let sent = relay.frame(2, presence(b"x"));
    match sent.to(2)[..] {
        [Message::ErrorMessage(e)] => assert_eq!(e.code, ErrorCode::Unexpected.code()),
        ref other => panic!("{other:?}"),
    }
    assert!(sent.to(1).is_empty());
}

#[test]
fn disconnect_forgets_the_session() {
    let mut relay = Relay::new(empty_room());
    let _ = join_steady(&mut relay, 1, Capabilities::NONE);
    let _ = join_steady(&mut relay, 2, Capabilities::NONE);
    let _ = relay.hub.disconnect(1);
    assert_eq!(relay.hub.session_count(), 1);
    let a = node(&[], "a", "a");
    let sent = relay.frame(2, pack(1, &[&a]));
    assert!(sent.to(1).is_empty());
    // Frames from a forgotten session are ignored.
    let b = node(&[&a], "b", "b");
    let sent = relay.frame(1, pack(1, &[&b]));
    assert!(sent.frames.is_empty());
    assert_eq!(relay.hub.room().seq(), 1);
}

#[test]
fn the_sketch_index_numbers_ids_in_arrival_order() {
    let mut room = empty_room();
    let mut parents: Vec<Node> = Vec::new();
    for i in 0..200 {
        let refs: Vec<&Node> = parents.iter().rev().take(2).collect();
        let node = node(&refs, "p", &format!("{i}"));
        room.restore(node.clone()).unwrap();
        parents.push(node);
    }
    let key = *room.sets.key();
    for (seq, node) in (1u64..).zip(room.nodes()) {
        let (id, ordinal) = room.sets.locate(key.short_id(&node.id)).unwrap();
        assert_eq!((id, ordinal + 1), (node.id, seq));
    }
}

// ---------------------------------------------------------------------------------------------
// Hub: subscriptions

const SUBS: Capabilities = Capabilities::SUBSCRIPTIONS;

/// Connects `id` with a subscription and sends its hello.
fn join_subscribed(
    relay: &mut Relay,
    id: SessionId,
    hints: SyncHints,
    patterns: &[&str],
    caps: Capabilities,
) -> Sent {
    relay.hub.connect(id, relay.now);
    let message = Message::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities: caps,
        hints,
        credit: 1 << 30,
        subscribe: Some(patterns.iter().map(|p| (*p).to_owned()).collect()),
    });
    relay.frame(id, message)
}

/// A room with nodes under `docs/`, `notes/` and `misc/`, each chained on the previous one so
/// that subscribed subsets are not closed under ancestry.
fn mixed_room(n: usize) -> Vec<Node> {
    let dirs = ["docs/a", "notes/b", "misc/c", "docs/deep/d"];
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let parents: Vec<&Node> = nodes.last().into_iter().collect();
        nodes.push(node(&parents, dirs[i % dirs.len()], &i.to_string()));
    }
    nodes
}

fn nodes_sent(messages: &[&Message]) -> Vec<NodeId> {
    messages
        .iter()
        .flat_map(|m| match m {
            Message::Batch(b) => b.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
            Message::Broadcast(b) => b.nodes.iter().map(|n| n.id).collect(),
            _ => Vec::new(),
        })
        .collect()
}

fn matching(nodes: &[Node], prefix: &[&str]) -> Vec<NodeId> {
    nodes
        .iter()
        .filter(|n| prefix.iter().any(|p| n.path.starts_with(p)))
        .map(|n| n.id)
        .collect()
}

#[test]
fn a_subscribed_cold_client_gets_only_the_matching_nodes_and_their_digest() {
    let dag = mixed_room(40);
    let mut relay = Relay::new(populated(&dag.iter().collect::<Vec<_>>()));
    let sent = join_subscribed(&mut relay, 1, SyncHints::default(), &["docs/**"], SUBS);
    let welcome = welcome_of(&sent.to(1));
    assert_eq!(welcome.plan, Plan::CatchUp);
    assert!(welcome.capabilities.contains(SUBS));
    let expected = matching(&dag, &["docs/"]);
    assert_eq!(nodes_sent(&sent.to(1)), expected);
    let Some(Message::CatchUpDone(done)) = sent.to(1).last().copied() else {
        panic!("no catch_up_done");
    };
    assert_eq!(done.digest, SetDigest::of(&expected));
    assert_eq!(done.seq, 40);
    // Reconnecting with that watermark: nothing matching is new, so in sync at once; after
    // more nodes, only the matching new ones come.
    let hints = SyncHints {
        digest: SetDigest::of(&expected),
        watermark: Some(Watermark {
            epoch: EPOCH,
            seq: 40,
        }),
        ..SyncHints::default()
    };
    let sent = join_subscribed(&mut relay, 2, hints.clone(), &["docs/**"], SUBS);
    assert_eq!(welcome_of(&sent.to(2)).plan, Plan::InSync);
    // The same, but holding a matching node the relay has not seen (the digest covers the
    // client's matching nodes): not in sync (in sync would mark it as held); the catch-up is
    // empty and the client pushes its node afterwards.
    let mut with_offline = expected.clone();
    with_offline.push(NodeId([7; 32]));
    let offline = SyncHints {
        digest: SetDigest::of(&with_offline),
        unsynced: 1,
        ..hints.clone()
    };
    let sent = join_subscribed(&mut relay, 4, offline, &["docs/**"], SUBS);
    assert_eq!(welcome_of(&sent.to(4)).plan, Plan::CatchUp);
    assert!(nodes_sent(&sent.to(4)).is_empty());
    assert!(matches!(sent.to(4).last(), Some(Message::CatchUpDone(_))));
    // An unsynced node outside the subscription is not in the digest: the subset is in sync
    // (the client still pushes that node).
    let outside = SyncHints {
        unsynced: 1,
        ..hints.clone()
    };
    let sent = join_subscribed(&mut relay, 5, outside, &["docs/**"], SUBS);
    assert_eq!(welcome_of(&sent.to(5)).plan, Plan::InSync);
    let more: Vec<Node> = ["notes/x", "docs/y", "misc/z"]
        .iter()
        .map(|p| node(&[dag.last().unwrap()], p, "more"))
        .collect();
    let _ = join_steady(&mut relay, 9, Capabilities::NONE);
    let _ = relay.frame(9, pack(1, &more.iter().collect::<Vec<_>>()));
    let sent = join_subscribed(&mut relay, 3, hints, &["docs/**"], SUBS);
    assert_eq!(welcome_of(&sent.to(3)).plan, Plan::CatchUp);
    assert_eq!(nodes_sent(&sent.to(3)), vec![more[1].id]);
}

#[test]
fn broadcasts_reach_only_the_sessions_whose_subscription_matches() {
    let root = node(&[], "misc/root", "root");
    let mut relay = Relay::new(populated(&[&root]));
    let hints = hints_of(relay.hub.room());
    let _ = join_subscribed(&mut relay, 1, hints.clone(), &["docs/**"], SUBS);
    let _ = join_subscribed(&mut relay, 2, hints.clone(), &["notes/*", "**/deep"], SUBS);
    let _ = join_steady(&mut relay, 3, Capabilities::NONE);
    let _ = join_steady(&mut relay, 4, Capabilities::NONE);
    let docs = node(&[&root], "docs/a/b", "1");
    let notes = node(&[&docs], "notes/n", "2");
    let misc = node(&[&notes], "misc/x", "3");
    let deep = node(&[&misc], "docs/deep", "4");
    let sent = relay.frame(4, pack(1, &[&docs, &notes, &misc, &deep]));
    assert_eq!(nodes_sent(&sent.to(1)), vec![docs.id, deep.id]);
    assert_eq!(nodes_sent(&sent.to(2)), vec![notes.id, deep.id]);
    assert_eq!(
        nodes_sent(&sent.to(3)),
        vec![docs.id, notes.id, misc.id, deep.id]
    );
    assert!(nodes_sent(&sent.to(4)).is_empty(), "no echo to the sender");
    // Runs of consecutive numbers: session 1 gets two broadcasts (2, then 5), each with the
    // numbers of its nodes.
    let firsts: Vec<u64> = sent
        .to(1)
        .iter()
        .filter_map(|m| match m {
            Message::Broadcast(b) => Some(b.first_seq),
            _ => None,
        })
        .collect();
    assert_eq!(firsts, vec![2, 5]);
    // Session 2's leaving drops its patterns: routing then tests nothing for it.
    let _ = relay.hub.disconnect(2);
    let more = node(&[&deep], "notes/m", "5");
    let sent = relay.frame(4, pack(2, &[&more]));
    assert!(nodes_sent(&sent.to(1)).is_empty());
    assert_eq!(nodes_sent(&sent.to(3)), vec![more.id]);
}

#[test]
fn subscribing_backfills_what_newly_matches_then_says_subscribed() {
    let dag = mixed_room(20);
    let mut relay = Relay::new(populated(&dag.iter().collect::<Vec<_>>()));
    let sent = join_subscribed(&mut relay, 1, SyncHints::default(), &["docs/**"], SUBS);
    assert!(matches!(sent.to(1).last(), Some(Message::CatchUpDone(_))));
    let _ = join_steady(&mut relay, 9, Capabilities::NONE);
    // Backfill of notes: the 5 notes nodes, then `subscribed`.
    let sent = relay.frame(
        1,
        Message::Subscribe(protocol::Subscribe {
            number: 7,
            patterns: vec!["notes/**".into(), "docs/**".into()],
        }),
    );
    assert_eq!(nodes_sent(&sent.to(1)), matching(&dag, &["notes/"]));
    match sent.to(1).last() {
        Some(Message::Subscribed(s)) => {
            assert_eq!(s.number, 7);
            assert_eq!(s.patterns, vec!["docs/**", "notes/**"]);
            assert_eq!(s.seq, 20);
        }
        other => panic!("expected subscribed, got {other:?}"),
    }
    // Now notes are broadcast to it, misc still not.
    let n = node(&[dag.last().unwrap()], "notes/new", "n");
    let m = node(&[&n], "misc/new", "m");
    let sent = relay.frame(9, pack(1, &[&n, &m]));
    assert_eq!(nodes_sent(&sent.to(1)), vec![n.id]);
    // Unsubscribing is answered at once and stops the notes.
    let sent = relay.frame(
        1,
        Message::Unsubscribe(protocol::Unsubscribe {
            number: 8,
            patterns: vec!["notes/**".into(), "never/subscribed".into()],
        }),
    );
    match &sent.to(1)[..] {
        [Message::Subscribed(s)] => assert_eq!(s.patterns, vec!["docs/**"]),
        other => panic!("{other:?}"),
    }
    let n2 = node(&[&m], "notes/again", "n2");
    let sent = relay.frame(9, pack(2, &[&n2]));
    assert!(nodes_sent(&sent.to(1)).is_empty());
}

#[test]
fn nodes_admitted_during_a_backfill_are_in_the_stream_not_broadcast() {
    let dag = mixed_room(40);
    let config = with_limits(RelayLimits {
        max_frame: 300,
        ..RelayLimits::default()
    });
    let mut relay = Relay::with_config(populated(&dag.iter().collect::<Vec<_>>()), config);
    // Little credit: the backfill stops after a batch.
    relay.hub.connect(1, relay.now);
    let hello = Message::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities: SUBS,
        hints: hints_of(relay.hub.room()),
        credit: 300,
        subscribe: Some(vec!["docs/**".into()]),
    });
    let _ = relay.frame(1, hello);
    let _ = join_steady(&mut relay, 9, Capabilities::NONE);
    let member_credit_spent = relay.frame(
        1,
        Message::Subscribe(protocol::Subscribe {
            number: 1,
            patterns: vec!["notes/**".into()],
        }),
    );
    let mut received = nodes_sent(&member_credit_spent.to(1));
    assert!(
        !matches!(
            member_credit_spent.to(1).last(),
            Some(Message::Subscribed(_))
        ),
        "the backfill should wait for credit"
    );
    // A notes node admitted meanwhile, and a pack from the backfilling session itself.
    let late = node(&[dag.last().unwrap()], "notes/late", "late");
    let sent = relay.frame(9, pack(1, &[&late]));
    assert!(
        !nodes_sent(&sent.to(1)).contains(&late.id),
        "broadcast to a backfilling session"
    );
    let own = node(&[&late], "docs/own", "own");
    let sent = relay.frame(1, pack(1, &[&own]));
    assert!(matches!(sent.to(1).first(), Some(Message::Ack(_))));
    let mut subscribed = None;
    for _ in 0..100 {
        let sent = relay.frame(1, Message::Credit(Credit { bytes: 1 << 20 }));
        received.extend(nodes_sent(&sent.to(1)));
        if let Some(Message::Subscribed(s)) = sent.to(1).last() {
            subscribed = Some(s.clone());
            break;
        }
    }
    let subscribed = subscribed.expect("the backfill ends");
    assert_eq!(subscribed.seq, 42);
    let mut expected = matching(&dag, &["notes/"]);
    expected.push(late.id);
    // Its own node matches too and arrives in the stream (a client drops the duplicate).
    expected.push(own.id);
    assert_eq!(received, expected);
}

#[test]
fn bad_patterns_get_typed_errors_naming_the_pattern() {
    let mut relay = Relay::new(populated(&[&node(&[], "a", "a")]));
    // In hello: refused, and the session closes.
    let sent = join_subscribed(&mut relay, 1, SyncHints::default(), &["ok/**", "a**"], SUBS);
    match &sent.to(1)[..] {
        [Message::ErrorMessage(e)] => {
            assert_eq!(e.code, ErrorCode::BadPattern.code());
            assert!(e.detail.contains("\"a**\""), "{}", e.detail);
            assert!(e.detail.contains("whole segment"), "{}", e.detail);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sent.closes, vec![(1, CloseCode::ProtocolViolation)]);
    // Without the capability, a subscription in hello is a protocol violation.
    let sent = join_subscribed(
        &mut relay,
        2,
        SyncHints::default(),
        &["docs/**"],
        Capabilities::NONE,
    );
    assert_eq!(sent.closes, vec![(2, CloseCode::ProtocolViolation)]);
    // Mid-session: an error, and the session and its subscription stay.
    let hints = hints_of(relay.hub.room());
    let _ = join_subscribed(&mut relay, 3, hints, &["a"], SUBS);
    for (patterns, needle) in [
        (vec!["x//y".to_owned()], "\"x//y\""),
        (vec![r"x\y".to_owned()], "may only escape"),
        (vec!["z".repeat(300)], "at most 256"),
        ((0..65).map(|i| format!("p{i}")).collect(), "more than 64"),
    ] {
        let sent = relay.frame(
            3,
            Message::Subscribe(protocol::Subscribe {
                number: 1,
                patterns,
            }),
        );
        match &sent.to(3)[..] {
            [Message::ErrorMessage(e)] => {
                assert_eq!(e.code, ErrorCode::BadPattern.code());
                assert!(e.detail.contains(needle), "{}", e.detail);
            }
            other => panic!("{other:?}"),
        }
        assert!(sent.closes.is_empty());
    }
    // The whole subscription is bounded too, not only one frame of it.
    for i in 0..63 {
        let sent = relay.frame(
            3,
            Message::Subscribe(protocol::Subscribe {
                number: i,
                patterns: vec![format!("q{i}")],
            }),
        );
        assert!(matches!(sent.to(3)[..], [Message::Subscribed(_)]), "{i}");
    }
    let sent = relay.frame(
        3,
        Message::Subscribe(protocol::Subscribe {
            number: 99,
            patterns: vec!["one/more".into()],
        }),
    );
    match &sent.to(3)[..] {
        [Message::ErrorMessage(e)] => assert_eq!(e.code, ErrorCode::BadPattern.code()),
        other => panic!("{other:?}"),
    }
    // A session without the capability cannot subscribe later either.
    let _ = join_steady(&mut relay, 4, Capabilities::NONE);
    let sent = relay.frame(
        4,
        Message::Subscribe(protocol::Subscribe {
            number: 1,
            patterns: vec!["a".into()],
        }),
    );
    match &sent.to(4)[..] {
        [Message::ErrorMessage(e)] => assert_eq!(e.code, ErrorCode::Unexpected.code()),
        other => panic!("{other:?}"),
    }
}

/// A bad pattern is the application's input: it gets `BadPattern` however often it comes, and
/// never counts toward the error limit (§9.1), while malformed frames still do.
#[test]
fn bad_patterns_do_not_count_toward_the_error_limit() {
    let mut relay = Relay::new(populated(&[&node(&[], "a", "a")]));
    let hints = hints_of(relay.hub.room());
    let _ = join_subscribed(&mut relay, 1, hints, &["a"], SUBS);
    for number in 0..20 {
        let sent = relay.frame(
            1,
            Message::Subscribe(protocol::Subscribe {
                number,
                patterns: vec!["a**".into()],
            }),
        );
        match &sent.to(1)[..] {
            [Message::ErrorMessage(e)] => assert_eq!(e.code, ErrorCode::BadPattern.code()),
            other => panic!("bad subscribe {number}: {other:?}"),
        }
        assert!(sent.closes.is_empty(), "closed after {number} bad patterns");
    }
    let sent = relay.frame(
        1,
        Message::Subscribe(protocol::Subscribe {
            number: 21,
            patterns: vec!["b/**".into()],
        }),
    );
    assert!(matches!(sent.to(1)[..], [Message::Subscribed(_)]));
    // Malformed frames still count: the 8th closes the session.
    for i in 1..=8 {
        let sent = relay.raw(1, &[0xc1]);
        assert_eq!(sent.closes.is_empty(), i < 8, "error {i}");
    }
}

/// A session without a subscription holds `**`: subscribing adds nothing to it, and
/// unsubscribing `**` then leaves no pattern at all, not the ones "added" before (§7.5).
#[test]
fn subscribing_without_a_subscription_changes_nothing() {
    let docs = node(&[], "docs/a", "d");
    let notes = node(&[&docs], "notes/a", "n");
    let mut relay = Relay::new(populated(&[&docs, &notes]));
    let _ = join_steady(&mut relay, 1, SUBS);
    let sent = relay.frame(
        1,
        Message::Subscribe(protocol::Subscribe {
            number: 1,
            patterns: vec!["docs/**".into()],
        }),
    );
    match &sent.to(1)[..] {
        [Message::Subscribed(s)] => assert_eq!(s.patterns, vec!["**".to_owned()]),
        other => panic!("{other:?}"),
    }
    let sent = relay.frame(
        1,
        Message::Unsubscribe(protocol::Unsubscribe {
            number: 2,
            patterns: vec!["**".into()],
        }),
    );
    match &sent.to(1)[..] {
        [Message::Subscribed(s)] => assert!(s.patterns.is_empty(), "{:?}", s.patterns),
        other => panic!("{other:?}"),
    }
    // It now receives nothing, docs included.
    let _ = join_steady(&mut relay, 2, Capabilities::NONE);
    let later = node(&[&notes], "docs/b", "b");
    let sent = relay.frame(2, pack(1, &[&later]));
    assert!(nodes_sent(&sent.to(1)).is_empty());
}

/// `hello.subscribe = []` is a subscription to nothing, not to everything (§4.1): the empty
/// client is in sync with the empty set of matching nodes, and no broadcast reaches it.
#[test]
fn an_empty_subscription_in_hello_matches_nothing() {
    let first = node(&[], "docs/a", "d");
    let mut relay = Relay::new(populated(&[&first]));
    let sent = join_subscribed(&mut relay, 1, SyncHints::default(), &[], SUBS);
    assert_eq!(welcome_of(&sent.to(1)).plan, Plan::InSync);
    assert!(nodes_sent(&sent.to(1)).is_empty());
    let _ = join_steady(&mut relay, 2, Capabilities::NONE);
    let later = node(&[&first], "docs/b", "b");
    let sent = relay.frame(2, pack(1, &[&later]));
    assert!(nodes_sent(&sent.to(1)).is_empty());
    assert!(matches!(sent.to(2).first(), Some(Message::Ack(_))));
}

#[test]
fn the_path_tree_finds_exactly_the_paths_a_subscription_matches() {
    use crate::pattern::{Pattern, PatternLimits, PatternSet};
    let mut rng = StdRng::seed_from_u64(77);
    let segments = ["a", "b", "ab", "x.md", "y.md", "*"];
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..400 {
        let depth = rng.random_range(1..5);
        let path: Vec<&str> = (0..depth)
            .map(|_| segments[rng.random_range(0..segments.len())])
            .collect();
        let parents: Vec<&Node> = nodes.last().into_iter().collect();
        nodes.push(node(&parents, &path.join("/"), &i.to_string()));
    }
    let room = populated(&nodes.iter().collect::<Vec<_>>());
    let pieces = ["a", "b", "*", "**", "*.md", "a*", r"\*", "x.md"];
    for _ in 0..300 {
        let patterns: Vec<Pattern> = (0..rng.random_range(1..4))
            .filter_map(|_| {
                let len = rng.random_range(1..5);
                let source: Vec<&str> = (0..len)
                    .map(|_| pieces[rng.random_range(0..pieces.len())])
                    .collect();
                Pattern::parse(&source.join("/"), &PatternLimits::default()).ok()
            })
            .collect();
        let set = PatternSet::new(patterns);
        let mut expected: Vec<&str> = room
            .paths()
            .map(|(path, _)| path.as_ref())
            .filter(|path| set.matches(path))
            .collect();
        expected.sort_unstable();
        let found = room.paths_matching(set.patterns());
        let found: Vec<&str> = found.iter().map(|p| p.as_ref()).collect();
        assert_eq!(found, expected, "{:?}", set.canonical());
    }
}

#[test]
fn a_new_subscription_sees_paths_that_arrived_after_its_patterns_were_first_used() {
    let root = node(&[], "a/x", "root");
    let mut relay = Relay::new(populated(&[&root]));
    let hints = hints_of(relay.hub.room());
    let _ = join_subscribed(&mut relay, 1, hints, &["**/x"], SUBS);
    let _ = join_steady(&mut relay, 9, Capabilities::NONE);
    let bx = node(&[&root], "b/x", "bx");
    let cy = node(&[&bx], "c/y", "cy");
    let dz = node(&[&cy], "d/z", "dz");
    let _ = relay.frame(9, pack(1, &[&bx, &cy, &dz]));
    // `**/x` was matched against the room when session 1 joined; the paths that came later
    // are filed under it too, so a new subscription built from it is complete.
    let sent = join_subscribed(&mut relay, 2, SyncHints::default(), &["**/x", "c/*"], SUBS);
    assert_eq!(nodes_sent(&sent.to(2)), vec![root.id, bx.id, cy.id]);
    let Some(Message::CatchUpDone(done)) = sent.to(2).last().copied() else {
        panic!("no catch_up_done");
    };
    assert_eq!(done.digest, SetDigest::of([&root.id, &bx.id, &cy.id]));
}

#[test]
fn classes_outlive_their_last_session_until_newer_idle_ones_push_them_out() {
    use super::subscriptions::{MAX_IDLE_CLASSES, Subscriptions};
    let root = node(&[], "docs/x", "root");
    let room = populated(&[&root]);
    let mut subs = Subscriptions::default();
    let set = |p: &str| {
        Arc::new(PatternSet::new([Pattern::parse(
            p,
            &PatternLimits::default(),
        )
        .unwrap()]))
    };
    let first = subs.join(1, set("docs/**"), &room);
    assert!(!subs.is_empty());
    subs.leave(1, first);
    // Idle: kept, but nobody is subscribed.
    assert!(subs.class(first).is_some());
    assert!(subs.is_empty() && subs.has_classes());
    // Joining it again reuses it; leaving makes it the most recently used idle class.
    assert_eq!(subs.join(2, set("docs/**"), &room), first);
    subs.leave(2, first);
    let mut later = Vec::new();
    for i in 0..MAX_IDLE_CLASSES {
        let key = subs.join(10 + i as u64, set(&format!("n{i}/**")), &room);
        subs.leave(10 + i as u64, key);
        later.push(key);
    }
    // One more idle class than allowed: the least recently used went, with its pattern.
    assert!(subs.class(first).is_none());
    assert!(later.iter().all(|key| subs.class(*key).is_some()));
    assert!(subs.sessions_matching("docs/x").is_empty());
}

#[test]
fn class_sketch_structures_are_bounded_and_idle_ones_give_way() {
    use super::subscriptions::Subscriptions;
    let mut nodes = vec![node(&[], "docs/a", "0")];
    for i in 1..10 {
        let parent = nodes.last().unwrap().clone();
        nodes.push(node(&[&parent], "docs/a", &i.to_string()));
    }
    let room = populated(&nodes.iter().collect::<Vec<_>>());
    // No floor: the classes' structures may hold twice the room's 10 nodes.
    let mut subs = Subscriptions::with_recon_floor(0);
    let set = |p: &str| {
        Arc::new(PatternSet::new([Pattern::parse(
            p,
            &PatternLimits::default(),
        )
        .unwrap()]))
    };
    let docs = subs.join(1, set("docs/**"), &room);
    assert!(subs.allow_recon(docs, &room));
    let scope = subs.scope(docs, &room);
    assert!(scope.is_some());
    let everything = subs.join(2, set("**"), &room);
    assert!(subs.allow_recon(everything, &room));
    let _ = subs.scope(everything, &room);
    // A third class of 10 nodes would make 30.
    let star = subs.join(3, set("docs/*"), &room);
    assert!(!subs.allow_recon(star, &room));
    // Built structures are always allowed to their own class.
    assert!(subs.allow_recon(docs, &room));
    // Once a class is idle, its structures give way.
    subs.leave(2, everything);
    assert!(subs.allow_recon(star, &room));
}
