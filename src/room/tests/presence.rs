//! Hub: presence.

use super::*;

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
