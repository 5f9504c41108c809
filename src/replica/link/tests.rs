//! [`Link`] against a real hub (what a handshake answer may confirm), and against frames made by
//! hand for what a hub never sends: acks and resolved entries that are not ours, a refuted
//! decode, the last arrival number.

use std::time::Instant;

use bytes::Bytes;

use super::{Link, LinkError, SyncEvent};
use crate::node::{Node, NodeId, NodeLimits, RoomId};
use crate::pattern::PatternSet;
use crate::protocol::{
    self, Ack, Broadcast, Buckets, Capabilities, Message, Outcome, Plan, Resolved, Sketch,
    Subscribed, Welcome,
};
use crate::recon::SetDigest;
use crate::recon::ibf::{self, SketchKey};
use crate::recon::index::SetIndex;
use crate::replica::{Replica, read_subscription};
use crate::room::{Hub, HubConfig, OrphanLimits, Room};

fn room() -> RoomId {
    RoomId::new("replica-tests").unwrap()
}

fn node(parents: &[&Node], path: &str, payload: &str) -> Node {
    Node::child_of(&room(), parents, path, payload.as_bytes().to_vec()).unwrap()
}

fn patterns(list: &[&str]) -> PatternSet {
    let list: Vec<String> = list.iter().map(ToString::to_string).collect();
    read_subscription(&list).unwrap()
}

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn hub_with(nodes: &[&Node]) -> Hub {
    let mut r = Room::new(room(), 3, NodeLimits::default(), OrphanLimits::default());
    for n in nodes {
        r.restore((*n).clone()).unwrap();
    }
    Hub::new(r, HubConfig::immediate())
}

/// Delivers `frames` from the client to the hub and returns what the hub sent back to it.
fn to_hub(hub: &mut Hub, frames: Vec<Bytes>, t: Instant) -> Vec<Bytes> {
    let mut back = Vec::new();
    for frame in frames {
        let out = hub.handle_frame(1, &frame, t);
        back.extend(hub.resolve(out).frames_for(1).cloned());
    }
    back
}

fn plan(frame: &Bytes) -> Plan {
    match protocol::decode(frame).unwrap() {
        Message::Welcome(w) => w.plan,
        other => panic!("{other:?}"),
    }
}

#[test]
fn in_sync_confirms_only_what_hello_described() {
    let t = now();
    let a = node(&[], "doc", "a");
    let mut hub = hub_with(&[&a]);
    let mut replica = Replica::new(room());
    replica.insert(a.clone(), true).unwrap();
    let (mut link, hello) = Link::start(&replica, Capabilities::NONE, 1 << 16).unwrap();
    hub.connect(1, t);
    let welcome = to_hub(&mut hub, vec![hello], t);
    assert_eq!(plan(&welcome[0]), Plan::InSync);
    // The application writes before the welcome arrives.
    let late = replica
        .create("doc", "written during the handshake")
        .unwrap();
    let out = link.handle_frame(&mut replica, &welcome[0]).unwrap();
    assert!(out.events.contains(&SyncEvent::Synced { seq: 1 }));
    assert!(replica.is_synced(&a.id));
    assert!(!replica.is_synced(&late), "the relay never saw it");
    // It is pushed right away and accepted.
    assert_eq!(out.send.len(), 1);
    let back = to_hub(&mut hub, out.send, t);
    let out = link.handle_frame(&mut replica, &back[0]).unwrap();
    assert_eq!(
        out.events,
        vec![SyncEvent::Settled {
            id: late,
            outcome: Outcome::Accepted(2)
        }]
    );
    assert_eq!(hub.room().seq_of(&late), Some(2));
    assert_eq!(replica.watermark().map(|w| w.seq), Some(2));
}

#[test]
fn need_confirms_only_the_ids_that_were_sent() {
    let t = now();
    let a = node(&[], "doc", "a");
    let b = node(&[&a], "doc", "b");
    let mut hub = hub_with(&[&a]);
    // The replica believes the relay holds b (a relay that lost it): heads unknown, so the
    // relay asks for the id list.
    let mut replica = Replica::new(room());
    replica.insert(a.clone(), true).unwrap();
    replica.insert(b.clone(), true).unwrap();
    let (mut link, hello) = Link::start(&replica, Capabilities::NONE, 1 << 16).unwrap();
    hub.connect(1, t);
    let welcome = to_hub(&mut hub, vec![hello], t);
    assert_eq!(plan(&welcome[0]), Plan::SendIds);
    let ids = link.handle_frame(&mut replica, &welcome[0]).unwrap().send;
    // Written after the ids went out: the relay's `need` cannot mention it.
    let late = replica.create("doc", "written after ids").unwrap();
    let mut pending = to_hub(&mut hub, ids, t);
    let mut settled = Vec::new();
    while let Some(frame) = pending.first().cloned() {
        pending.remove(0);
        let out = link
            .handle_frame(&mut replica, &frame)
            .unwrap_or_else(|e| panic!("{e}"));
        for e in out.events {
            if let SyncEvent::Settled { id, outcome } = e {
                settled.push((id, outcome));
            }
        }
        pending.extend(to_hub(&mut hub, out.send, t));
    }
    assert!(link.is_steady());
    assert_eq!(
        settled,
        vec![(b.id, Outcome::Accepted(2)), (late, Outcome::Accepted(3))]
    );
    assert_eq!(replica.synced_digest(), hub.room().digest());
}

/// Runs a connection between `replica` and `hub` until neither side has anything to send;
/// returns the events the link reported.
fn converse(hub: &mut Hub, replica: &mut Replica, capabilities: Capabilities) -> Vec<SyncEvent> {
    let t = now();
    let (mut link, hello) = Link::start(replica, capabilities, 1 << 20).unwrap();
    hub.connect(1, t);
    let mut pending = to_hub(hub, vec![hello], t);
    let mut events = Vec::new();
    // Bounded: a handful of round trips, each answered at once.
    for _ in 0..10_000 {
        let Some(frame) = pending.first().cloned() else {
            break;
        };
        pending.remove(0);
        let out = link
            .handle_frame(replica, &frame)
            .unwrap_or_else(|e| panic!("{e}"));
        events.extend(out.events);
        pending.extend(to_hub(hub, out.send, t));
    }
    assert!(
        pending.is_empty() && link.is_steady(),
        "the conversation ended"
    );
    let _ = hub.disconnect(1);
    events
}

/// A subscribed client without a watermark (it changed its subscription offline, or the
/// relay started a new epoch) reconciles its matching nodes by sketch or refinement against
/// the class's structures: no id list, nothing outside the subscription sent, and its own
/// writes at other paths pushed as usual.
#[test]
fn a_subscribed_client_without_a_watermark_reconciles_its_subset_by_sketch() {
    // Three interleaved chains from one root, one per path: the subscribed replica's nodes
    // form one chain (one head) whose parents outside the subscription it never sees.
    const PATHS: [&str; 3] = ["docs/a", "notes/b", "misc/c"];
    let root = node(&[], "misc/root", "root");
    let mut chain = vec![root.clone()];
    let mut tips = [root.clone(), root.clone(), root];
    for i in 0..900 {
        let next = node(&[&tips[i % 3]], PATHS[i % 3], &format!("n{i}"));
        tips[i % 3] = next.clone();
        chain.push(next);
    }
    let docs: Vec<&Node> = chain
        .iter()
        .filter(|n| n.path.starts_with("docs/"))
        .collect();
    // Holding all but 5 of the 300 matching nodes is a small difference (sketch); holding a
    // third of them is a large one (refine).
    for (held, expected_plan) in [(295, Plan::Sketch), (100, Plan::Refine)] {
        let mut hub = hub_with(&chain.iter().collect::<Vec<_>>());
        let mut replica = Replica::new(room());
        replica.set_subscription(Some(patterns(&["docs/**"])));
        for n in docs.iter().take(held) {
            replica.insert((*n).clone(), true).unwrap();
        }
        let local_doc = replica.create("docs/local", "offline").unwrap();
        let local_misc = replica
            .create("misc/mine", "outside the subscription")
            .unwrap();
        assert!(replica.watermark().is_none());
        let events = converse(
            &mut hub,
            &mut replica,
            Capabilities::IBF.union(Capabilities::MST),
        );
        let plans: Vec<Plan> = events
            .iter()
            .filter_map(|e| match e {
                SyncEvent::Plan(p) => Some(*p),
                _ => None,
            })
            .collect();
        assert_eq!(plans.first(), Some(&expected_plan), "{plans:?}");
        assert!(!plans.contains(&Plan::SendIds));
        // The replica holds every matching node and nothing else of the room's.
        for n in &docs {
            assert!(replica.contains(&n.id));
        }
        let foreign = chain
            .iter()
            .filter(|n| !n.path.starts_with("docs/") && replica.contains(&n.id))
            .count();
        assert_eq!(foreign, 0, "nothing outside the subscription was sent");
        // Its own nodes reached the relay, and everything it holds is synced.
        assert!(hub.room().contains(&local_doc) && hub.room().contains(&local_misc));
        assert_eq!(replica.unsynced().count(), 0);
        let mut matching: Vec<_> = docs.iter().map(|n| n.id).collect();
        matching.push(local_doc);
        assert_eq!(replica.synced_digest(), SetDigest::of(&matching));
        // A second connection is in sync at once, from the watermark.
        let events = converse(
            &mut hub,
            &mut replica,
            Capabilities::IBF.union(Capabilities::MST),
        );
        assert_eq!(events.first(), Some(&SyncEvent::Plan(Plan::InSync)));
    }
}

// ---------------------------------------------------------------------------------------------
// Frames made by hand: what a relay may not send, and edges a hub does not reach

const EPOCH: u64 = 3;

fn key() -> SketchKey {
    SketchKey([5; 16])
}

fn frame(message: Message) -> Bytes {
    message.encode().unwrap()
}

fn welcome(plan: Plan, capabilities: Capabilities) -> Bytes {
    frame(Message::Welcome(Welcome {
        version: protocol::PROTOCOL_VERSION,
        capabilities,
        peer: 1,
        epoch: EPOCH,
        seq: 40,
        plan,
        limits: None,
    }))
}

/// A link that was told `in_sync`, with one of our nodes out in pack 1.
fn one_pack_out(replica: &mut Replica) -> (Link, NodeId) {
    let (mut link, _hello) = Link::start(replica, Capabilities::SUPPORTED, 1 << 16).unwrap();
    let out = link
        .handle_frame(replica, &welcome(Plan::InSync, Capabilities::SUPPORTED))
        .unwrap();
    assert!(out.send.is_empty());
    let id = replica.create("doc", "mine").unwrap();
    let out = link.push(replica).unwrap();
    assert!(matches!(protocol::decode(&out.send[0]).unwrap(), Message::Pack(p) if p.number == 1));
    (link, id)
}

fn ack(number: u64, outcomes: Vec<Outcome>) -> Bytes {
    frame(Message::Ack(Ack { number, outcomes }))
}

fn resolved(outcomes: Vec<(NodeId, Outcome)>) -> Bytes {
    frame(Message::Resolved(Resolved { outcomes }))
}

#[test]
fn an_ack_must_answer_a_pack_in_flight_node_for_node() {
    let mut replica = Replica::new(room());
    let (mut link, _) = one_pack_out(&mut replica);
    assert!(matches!(
        link.handle_frame(&mut replica, &ack(2, vec![Outcome::Accepted(41)])),
        Err(LinkError::UnknownAck(2))
    ));
    let mut replica = Replica::new(room());
    let (mut link, _) = one_pack_out(&mut replica);
    assert!(matches!(
        link.handle_frame(&mut replica, &ack(1, Vec::new())),
        Err(LinkError::AckOutcomes {
            number: 1,
            nodes: 1,
            outcomes: 0
        })
    ));
}

/// [`one_pack_out`], and the ack said `pending`.
fn one_node_pending(replica: &mut Replica) -> (Link, NodeId) {
    let (mut link, id) = one_pack_out(replica);
    let out = link
        .handle_frame(replica, &ack(1, vec![Outcome::Pending]))
        .unwrap();
    assert!(out.events.is_empty(), "pending settles nothing");
    (link, id)
}

#[test]
fn resolved_entries_must_name_our_pending_nodes_with_final_outcomes() {
    let stranger = NodeId([9; 32]);
    let mut replica = Replica::new(room());
    let (mut link, _) = one_node_pending(&mut replica);
    let result = link.handle_frame(
        &mut replica,
        &resolved(vec![(stranger, Outcome::Accepted(41))]),
    );
    assert!(matches!(result, Err(LinkError::UnknownResolved(id)) if id == stranger));

    let mut replica = Replica::new(room());
    let (mut link, id) = one_node_pending(&mut replica);
    let result = link.handle_frame(&mut replica, &resolved(vec![(id, Outcome::Pending)]));
    assert!(matches!(result, Err(LinkError::PendingResolved(p)) if p == id));

    let mut replica = Replica::new(room());
    let (mut link, id) = one_node_pending(&mut replica);
    let out = link
        .handle_frame(&mut replica, &resolved(vec![(id, Outcome::Accepted(41))]))
        .unwrap();
    assert_eq!(
        out.events,
        vec![SyncEvent::Settled {
            id,
            outcome: Outcome::Accepted(41)
        }]
    );
    assert!(replica.is_synced(&id));
    // Settled: a second entry for it is not ours to take, nor two in one frame.
    let again = link.handle_frame(&mut replica, &resolved(vec![(id, Outcome::Accepted(41))]));
    assert!(matches!(again, Err(LinkError::UnknownResolved(settled)) if settled == id));
    let mut replica = Replica::new(room());
    let (mut link, id) = one_node_pending(&mut replica);
    let twice = resolved(vec![
        (id, Outcome::Accepted(41)),
        (id, Outcome::Accepted(41)),
    ]);
    let result = link.handle_frame(&mut replica, &twice);
    assert!(matches!(result, Err(LinkError::UnknownResolved(settled)) if settled == id));
    assert!(
        !replica.is_synced(&id),
        "a refused frame settles none of its entries"
    );
}

#[test]
fn subscribed_with_a_pattern_that_does_not_parse_is_refused() {
    let mut replica = Replica::new(room());
    let (mut link, _hello) = Link::start(&replica, Capabilities::SUPPORTED, 1 << 16).unwrap();
    let _ = link
        .handle_frame(
            &mut replica,
            &welcome(Plan::InSync, Capabilities::SUPPORTED),
        )
        .unwrap();
    let change = link.change_subscription(vec!["a/**".into()], true).unwrap();
    let number = match change.map(|f| protocol::decode(&f).unwrap()) {
        Some(Message::Subscribe(s)) => s.number,
        other => panic!("{other:?}"),
    };
    let done = frame(Message::Subscribed(Subscribed {
        number,
        patterns: vec![String::new()],
        seq: 40,
    }));
    assert!(matches!(
        link.handle_frame(&mut replica, &done),
        Err(LinkError::SubscribedPattern(_))
    ));
}

/// Plan `sketch` against a relay that holds our nodes and two more: the decode marks ours
/// synced and wants the two; `buckets` after that say the relay did not verify it, so the
/// marks go, while `buckets` instead of a sketch leave the marks the replica had.
#[test]
fn buckets_after_our_want_drop_the_marks_the_decode_implied() {
    let ours: Vec<Node> = (0..10)
        .map(|i| node(&[], "doc", &format!("n{i}")))
        .collect();
    let mut sets = SetIndex::new(key());
    for n in &ours {
        sets.insert(n.id);
    }
    let mut relay = sets.sketch_at(4).unwrap();
    relay.insert(0xdead);
    relay.insert(0xbeef);
    let sketch = frame(Message::Sketch(Sketch {
        log2: 4,
        extension: false,
        key: Bytes::copy_from_slice(key().wire()),
        cells: Bytes::from(ibf::encode_cells(relay.cells())),
    }));
    let buckets = frame(Message::Buckets(Buckets {
        depth: 1,
        expected: 2,
        key: Bytes::copy_from_slice(key().wire()),
        summaries: protocol::pack_buckets(&[(1, [0; 16])]),
        last: false,
    }));
    let sketches = Capabilities::IBF.union(Capabilities::MST);

    let mut replica = Replica::new(room());
    for n in &ours {
        replica.insert(n.clone(), false).unwrap();
    }
    let (mut link, _hello) = Link::start(&replica, sketches, 1 << 16).unwrap();
    let _ = link
        .handle_frame(&mut replica, &welcome(Plan::Sketch, sketches))
        .unwrap();
    let out = link.handle_frame(&mut replica, &sketch).unwrap();
    let want = match protocol::decode(&out.send[0]).unwrap() {
        Message::Want(w) => protocol::unpack_shorts(&w.shorts).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(want.len(), 2, "the relay's two");
    assert!(
        ours.iter().all(|n| replica.is_synced(&n.id)),
        "marked at once"
    );
    let out = link.handle_frame(&mut replica, &buckets).unwrap();
    assert_eq!(out.events, vec![SyncEvent::Plan(Plan::Refine)]);
    assert!(
        ours.iter().all(|n| !replica.is_synced(&n.id)),
        "and dropped"
    );

    let mut replica = Replica::new(room());
    for n in &ours {
        replica.insert(n.clone(), true).unwrap();
    }
    let (mut link, _hello) = Link::start(&replica, sketches, 1 << 16).unwrap();
    let _ = link
        .handle_frame(&mut replica, &welcome(Plan::Sketch, sketches))
        .unwrap();
    let out = link.handle_frame(&mut replica, &buckets).unwrap();
    assert_eq!(out.events, vec![SyncEvent::Plan(Plan::Refine)]);
    assert!(
        ours.iter().all(|n| replica.is_synced(&n.id)),
        "nothing to drop"
    );
}

#[test]
fn a_broadcast_may_end_at_the_last_arrival_number() {
    let mut replica = Replica::new(room());
    let (mut link, _) = one_pack_out(&mut replica);
    let live = node(&[], "doc", "from a peer");
    let broadcast = frame(Message::Broadcast(Broadcast {
        first_seq: u64::MAX,
        nodes: vec![live.clone()],
    }));
    let out = link.handle_frame(&mut replica, &broadcast).unwrap();
    assert_eq!(out.events, vec![SyncEvent::Arrived(live)]);
}
