//! Room: admission.

use super::*;

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
