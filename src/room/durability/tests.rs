//! The hub's output waits for the writes it asks for, and only for those.

use std::time::Instant;

use super::*;
use crate::node::{Node, NodeLimits, RoomId};
use crate::protocol::{self, Capabilities, Hello, Message, PROTOCOL_VERSION, Pack, Presence};
use crate::protocol::{Outcome, SyncHints};
use crate::room::{Hub, HubConfig, OrphanLimits, Room};

/// An arbitrary origin for the virtual clock; only offsets from it matter.
#[allow(clippy::disallowed_methods)]
fn t0() -> Instant {
    Instant::now()
}

fn room_id() -> RoomId {
    RoomId::new("durability-tests").unwrap()
}

fn hub() -> Hub {
    let room = Room::new(room_id(), 7, NodeLimits::default(), OrphanLimits::default());
    Hub::new(room, HubConfig::default())
}

fn node(parents: &[&Node], path: &str) -> Node {
    Node::child_of(&room_id(), parents, path, path.as_bytes().to_vec()).unwrap()
}

fn hello() -> Vec<u8> {
    hello_with(Capabilities::PRESENCE, SyncHints::default(), None)
}

fn hello_with(capabilities: Capabilities, hints: SyncHints, subscribe: Option<&str>) -> Vec<u8> {
    let hello = Message::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities,
        hints,
        credit: 1 << 20,
        subscribe: subscribe.map(|pattern| vec![pattern.into()]),
    });
    hello.encode().unwrap().to_vec()
}

/// Session 1 stores node a, then pushes its child b, whose write is left in flight. Returns
/// both nodes and the writes the two pushes asked for, once a is stored and then for b.
fn write_in_flight(hub: &mut Hub) -> (Node, Node, Option<u64>, Option<u64>) {
    let now = t0();
    let a = node(&[], "a");
    let _ = hub.handle_frame(1, &pack(1, &[&a]), now);
    let after_a = hub.persisted(1).persist;
    let b = node(&[&a], "b");
    let for_b = hub.handle_frame(1, &pack(2, &[&b]), now).persist;
    (a, b, after_a, for_b)
}

fn pack(number: u64, nodes: &[&Node]) -> Vec<u8> {
    let pack = Message::Pack(Pack {
        number,
        nodes: nodes.iter().map(|n| (*n).clone()).collect(),
    });
    pack.encode().unwrap().to_vec()
}

/// Every frame of `out` with its recipients, decoded.
fn sent(hub: &Hub, out: &Outbox) -> Vec<(Vec<SessionId>, Message)> {
    let out = Outbox {
        frames: out.frames.clone(),
        ..Outbox::default()
    };
    hub.resolve(out)
        .frames
        .into_iter()
        .map(|a| (a.to.to_vec(), protocol::decode(&a.frame).unwrap()))
        .collect()
}

/// A hub with sessions 1 (writer) and 2 (reader), both steady in an empty room.
fn two_sessions() -> Hub {
    let mut hub = hub();
    let now = t0();
    for id in [1, 2] {
        hub.connect(id, now);
        let out = hub.handle_frame(id, &hello(), now);
        assert!(out.persist.is_none(), "nothing to store yet");
        assert!(!out.frames.is_empty(), "an idle room answers at once");
    }
    hub
}

#[test]
fn acks_and_broadcasts_wait_for_the_write_they_depend_on() {
    let mut hub = two_sessions();
    let now = t0();
    let a = node(&[], "a");
    let out = hub.handle_frame(1, &pack(1, &[&a]), now);
    assert_eq!(out.persist, Some(1), "one write, through the admitted node");
    assert!(
        out.frames.is_empty(),
        "no ack or broadcast before the write"
    );
    assert_eq!(hub.room().seq(), 1, "the node is admitted meanwhile");
    // A second pack while the write is in flight: admitted, held, and no second write yet.
    let b = node(&[&a], "b");
    let out = hub.handle_frame(1, &pack(2, &[&b]), now);
    assert_eq!(out.persist, None, "at most one write in flight");
    assert!(out.frames.is_empty());
    // Presence made meanwhile keeps its place behind them.
    let presence = Message::Presence(Presence {
        state: bytes::Bytes::from_static(b"here"),
    });
    let out = hub.handle_frame(2, &presence.encode().unwrap(), now);
    assert!(out.frames.is_empty());
    // The first write succeeds: what depended on it goes out, in order; the rest waits for
    // the next write, which is asked for at once.
    let out = hub.persisted(1);
    assert_eq!(
        out.persist,
        Some(2),
        "the nodes admitted meanwhile form the next write"
    );
    let released = sent(&hub, &out);
    assert!(
        matches!(&released[..], [(to1, Message::Ack(ack)), (to2, Message::Broadcast(b))]
            if to1 == &[1] && ack.outcomes == [Outcome::Accepted(1)]
            && to2 == &[2] && b.first_seq == 1),
        "{released:?}"
    );
    let out = hub.persisted(2);
    assert_eq!(out.persist, None);
    let released = sent(&hub, &out);
    assert!(
        matches!(&released[..], [(_, Message::Ack(ack)), (_, Message::Broadcast(_)), (to, Message::PresenceUpdate(_))]
            if ack.outcomes == [Outcome::Accepted(2)] && to == &[1]),
        "{released:?}"
    );
    assert_eq!(hub.durable_seq(), 2);
}

#[test]
fn a_failed_write_closes_every_session_and_sends_nothing_that_waited() {
    let mut hub = two_sessions();
    let now = t0();
    let a = node(&[], "a");
    let out = hub.handle_frame(1, &pack(1, &[&a]), now);
    assert_eq!(out.persist, Some(1));
    let out = hub.persist_failed();
    let frames = sent(&hub, &out);
    assert_eq!(frames.len(), 2, "{frames:?}");
    for (_, message) in &frames {
        assert!(
            matches!(message, Message::ErrorMessage(e) if e.code == crate::protocol::ErrorCode::StoreUnavailable.code()),
            "{message:?}"
        );
    }
    let mut closed = out.closes.clone();
    closed.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(
        closed,
        vec![
            (1, CloseCode::StoreUnavailable),
            (2, CloseCode::StoreUnavailable)
        ]
    );
    assert_eq!(hub.session_count(), 0);
}

#[test]
fn output_for_a_session_that_left_is_dropped_not_released() {
    let mut hub = two_sessions();
    let now = t0();
    let a = node(&[], "a");
    let _ = hub.handle_frame(1, &pack(1, &[&a]), now);
    let _ = hub.disconnect(2);
    let out = hub.persisted(1);
    let released = sent(&hub, &out);
    assert!(
        matches!(&released[..], [(to, Message::Ack(_))] if to == &[1]),
        "the broadcast to the departed session is dropped: {released:?}"
    );
}

#[test]
fn immediate_durability_holds_nothing() {
    let room = Room::new(room_id(), 7, NodeLimits::default(), OrphanLimits::default());
    let mut hub = Hub::new(room, HubConfig::immediate());
    let now = t0();
    hub.connect(1, now);
    let _ = hub.handle_frame(1, &hello(), now);
    let out = hub.handle_frame(1, &pack(1, &[&node(&[], "a")]), now);
    assert_eq!(out.persist, None);
    assert!(matches!(sent(&hub, &out).first(), Some((to, Message::Ack(_))) if to == &[1]));
    assert_eq!(hub.durable_seq(), 1);
}

#[test]
fn a_handshake_during_a_write_is_served_from_stored_history_at_once() {
    let mut hub = two_sessions();
    let now = t0();
    // Node b is admitted; its write is in flight when session 3 says hello.
    let (a, b, after_a, for_b) = write_in_flight(&mut hub);
    assert_eq!(after_a, None);
    assert_eq!(for_b, Some(2));
    hub.connect(3, now);
    let out = hub.handle_frame(3, &hello(), now);
    let answered = sent(&hub, &out);
    let stored_digest = crate::recon::SetDigest::of([&a.id]);
    assert!(
        matches!(&answered[..], [(_, Message::Welcome(_)), (_, Message::Batch(batch)), (_, Message::CatchUpDone(done))]
            if batch.nodes.len() == 1 && batch.nodes[0].id == a.id
            && done.seq == 1 && done.digest == stored_digest),
        "welcome, the stored node and catch_up_done as of it go out during the write: {answered:?}"
    );
    assert!(answered.iter().all(|(to, _)| to == &[3]));
    // Once b is stored, session 3 hears it as a broadcast, right after its catch-up.
    let out = hub.persisted(2);
    let released = sent(&hub, &out);
    let to_3: Vec<&Message> = released
        .iter()
        .filter(|(to, _)| to.contains(&3))
        .map(|(_, m)| m)
        .collect();
    assert!(
        matches!(&to_3[..], [Message::Broadcast(b3)] if b3.first_seq == 2 && b3.nodes.len() == 1 && b3.nodes[0].id == b.id),
        "{released:?}"
    );
    let to_2 = released.iter().filter(|(to, _)| to.contains(&2)).count();
    assert_eq!(to_2, 1, "session 2 gets b once: {released:?}");
}

#[test]
fn a_session_with_held_output_hears_later_frames_behind_it() {
    let mut hub = two_sessions();
    let now = t0();
    let a = node(&[], "a");
    let _ = hub.handle_frame(1, &pack(1, &[&a]), now);
    // Session 2's presence reveals no node, but session 1 has an ack held: it waits behind.
    let presence = Message::Presence(Presence {
        state: bytes::Bytes::from_static(b"here"),
    });
    let out = hub.handle_frame(2, &presence.encode().unwrap(), now);
    assert!(out.frames.is_empty(), "{:?}", sent(&hub, &out));
    // Session 1's own presence goes to session 2 at once only if 2 has nothing held; 2 has
    // the broadcast of a held, so it waits too.
    let out = hub.handle_frame(1, &presence.encode().unwrap(), now);
    assert!(out.frames.is_empty(), "{:?}", sent(&hub, &out));
    // A third session, with nothing held, hears both presences at once.
    hub.connect(3, now);
    let out = hub.handle_frame(3, &hello(), now);
    let answered = sent(&hub, &out);
    let presences = answered
        .iter()
        .filter(|(to, m)| to == &[3] && matches!(m, Message::PresenceUpdate(_)))
        .count();
    assert_eq!(presences, 2, "{answered:?}");
    let out = hub.persisted(1);
    let released = sent(&hub, &out);
    assert!(
        matches!(&released[..], [(to1, Message::Ack(_)), (to2, Message::Broadcast(_)), (p2, Message::PresenceUpdate(_)), (p1, Message::PresenceUpdate(_)), (to3, Message::Broadcast(_))]
            if to1 == &[1] && to2 == &[2] && p2 == &[1] && p1 == &[2] && to3 == &[3]),
        "{released:?}"
    );
}

#[test]
fn a_client_holding_the_stored_nodes_is_in_sync_at_once_during_a_write() {
    let mut hub = two_sessions();
    let now = t0();
    let (a, b, _, for_b) = write_in_flight(&mut hub);
    assert_eq!(for_b, Some(2));
    let hints = SyncHints {
        digest: crate::recon::SetDigest::of([&a.id]),
        ..SyncHints::default()
    };
    hub.connect(3, now);
    let out = hub.handle_frame(3, &hello_with(Capabilities::NONE, hints, None), now);
    let answered = sent(&hub, &out);
    assert!(
        matches!(&answered[..], [(to, Message::Welcome(w))]
            if to == &[3] && w.plan == protocol::Plan::InSync && w.seq == 1),
        "in sync as of the stored node, before the write ends: {answered:?}"
    );
    let out = hub.persisted(2);
    let released = sent(&hub, &out);
    assert!(
        released.iter().any(|(to, m)| to == &[3]
            && matches!(m, Message::Broadcast(x) if x.first_seq == 2 && x.nodes[0].id == b.id)),
        "{released:?}"
    );
}

#[test]
fn a_subscribed_catch_up_during_a_write_claims_no_unstored_number() {
    let mut hub = two_sessions();
    let now = t0();
    let _ = write_in_flight(&mut hub);
    hub.connect(3, now);
    let hello = hello_with(Capabilities::SUBSCRIPTIONS, SyncHints::default(), Some("a"));
    let out = hub.handle_frame(3, &hello, now);
    let answered = sent(&hub, &out);
    assert!(
        matches!(&answered[..], [(_, Message::Welcome(_)), (_, Message::Batch(batch)), (_, Message::CatchUpDone(done))]
            if batch.through == 1 && batch.nodes.len() == 1 && done.seq == 1),
        "the matching stored node, its resume point and catch_up_done all within the stored nodes: {answered:?}"
    );
    let out = hub.persisted(2);
    let released = sent(&hub, &out);
    assert!(
        released.iter().all(|(to, _)| !to.contains(&3)),
        "b does not match: {released:?}"
    );
}

/// Packs 2 and 3 admitted while the write of pack 1 is in flight, then that write and the next
/// one done: what the second write released.
fn second_write(hub: &mut Hub, between: Option<&[u8]>) -> Vec<(Vec<SessionId>, Message)> {
    let now = t0();
    let a = node(&[], "a");
    let b = node(&[&a], "b");
    let c = node(&[&b], "c");
    let _ = hub.handle_frame(1, &pack(1, &[&a]), now);
    let _ = hub.handle_frame(1, &pack(2, &[&b]), now);
    if let Some(frame) = between {
        let _ = hub.handle_frame(1, frame, now);
    }
    let _ = hub.handle_frame(1, &pack(3, &[&c]), now);
    let out = hub.persisted(1);
    assert_eq!(out.persist, Some(3));
    let out = hub.persisted(3);
    sent(hub, &out)
}

#[test]
fn one_write_releases_one_broadcast_per_audience_for_consecutive_nodes() {
    let mut hub = two_sessions();
    let released = second_write(&mut hub, None);
    assert!(
        matches!(&released[..], [(w1, Message::Ack(a2)), (r, Message::Broadcast(b)), (w2, Message::Ack(a3))]
            if w1 == &[1] && w2 == &[1] && r == &[2]
            && a2.outcomes == [Outcome::Accepted(2)] && a3.outcomes == [Outcome::Accepted(3)]
            && b.first_seq == 2 && b.nodes.len() == 2),
        "the reader gets nodes 2 and 3 in one frame: {released:?}"
    );
}

#[test]
fn a_frame_for_the_same_receiver_in_between_keeps_broadcasts_apart() {
    let mut hub = two_sessions();
    let presence = Message::Presence(Presence {
        state: bytes::Bytes::from_static(b"here"),
    });
    let presence = presence.encode().unwrap();
    let released = second_write(&mut hub, Some(&presence));
    let for_reader: Vec<&Message> = released
        .iter()
        .filter(|(to, _)| to.contains(&2))
        .map(|(_, m)| m)
        .collect();
    assert!(
        matches!(&for_reader[..], [Message::Broadcast(b2), Message::PresenceUpdate(_), Message::Broadcast(b3)]
            if b2.first_seq == 2 && b2.nodes.len() == 1 && b3.first_seq == 3 && b3.nodes.len() == 1),
        "the presence update stays between the nodes it came between: {released:?}"
    );
}

#[test]
fn joined_broadcasts_stay_within_the_frame_limit() {
    let mut config = HubConfig::default();
    // Room for one of these nodes per frame, not two.
    config.session.limits.max_frame = 150;
    let room = Room::new(room_id(), 7, NodeLimits::default(), OrphanLimits::default());
    let mut hub = Hub::new(room, config);
    let now = t0();
    for id in [1, 2] {
        hub.connect(id, now);
        let _ = hub.handle_frame(id, &hello(), now);
    }
    let released = second_write(&mut hub, None);
    let broadcasts: Vec<u64> = released
        .iter()
        .filter_map(|(_, m)| match m {
            Message::Broadcast(b) if b.nodes.len() == 1 => Some(b.first_seq),
            _ => None,
        })
        .collect();
    assert_eq!(broadcasts, [2, 3], "{released:?}");
}
