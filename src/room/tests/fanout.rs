//! Hub: fan-out.

use super::*;

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
