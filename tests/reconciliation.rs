//! Sketch reconciliation (protocol/README.md §5.6–§5.10) against ground truth: a pure `Hub` and
//! a `Link` exchange frames in memory until idle, then both sides must hold exactly the union,
//! with nothing left unsynced, and a second connection must find them in sync.
//!
//! Histories are real node DAGs: shared writer chains, plus nodes only one side holds, either
//! *scattered* (each forks off a random shared node) or *clustered* (one long chain).

use std::collections::HashSet;
use std::time::Instant;

use bytes::Bytes;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft::node::{DigestSum, Node, NodeId, NodeLimits, RoomId};
use weft::protocol::{
    self, Capabilities, CloseCode, ErrorCode, Message, MessageType, Plan, Sketch, Want,
};
use weft::recon::SetDigest;
use weft::recon::ibf::{self, Cell, Placement, SketchError, SketchKey};
use weft::replica::{Link, LinkError, Replica, SyncEvent};
use weft::room::{Hub, HubConfig, OrphanLimits, Room};
use weft::session::{ClientError, Misbehaved};

const EPOCH: u64 = 9;
const WAVES: usize = 10_000;

/// The hub's clock: only handshake timeouts read it, and these sessions finish at once.
#[allow(clippy::disallowed_methods)] // one real instant to start the virtual clock from
fn now() -> Instant {
    Instant::now()
}

fn room_id() -> RoomId {
    RoomId::new("recon").unwrap()
}

fn key() -> SketchKey {
    SketchKey::for_room(&room_id(), EPOCH)
}

/// Who holds a generated node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Both,
    Relay,
    Client,
}

struct History {
    /// In a parents-first order.
    nodes: Vec<(Node, Side)>,
}

impl History {
    fn generate(seed: u64, shared: usize, relay: usize, client: usize, clustered: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let room = room_id();
        let mut nodes: Vec<(Node, Side)> = Vec::new();
        let mut shared_at: Vec<usize> = Vec::new();
        for i in 0..shared {
            // Three writer chains that merge now and then.
            let mut parents: Vec<&Node> = Vec::new();
            if let Some(p) = i.checked_sub(3) {
                parents.push(&nodes[shared_at[p]].0);
            }
            if i % 50 == 49 {
                parents.push(&nodes[shared_at[i - 1]].0);
            }
            let node = Node::child_of(&room, &parents, "doc", format!("s{seed}-{i}")).unwrap();
            shared_at.push(nodes.len());
            nodes.push((node, Side::Both));
        }
        for (side, count) in [(Side::Relay, relay), (Side::Client, client)] {
            let mut last: Option<usize> = None;
            for i in 0..count {
                let parent = match (clustered, last) {
                    (true, Some(l)) => Some(l),
                    _ if shared_at.is_empty() => None,
                    _ => Some(shared_at[rng.random_range(0..shared_at.len())]),
                };
                let parents: Vec<&Node> = parent.map(|p| &nodes[p].0).into_iter().collect();
                let payload = format!("{side:?}{seed}-{i}");
                let node = Node::child_of(&room, &parents, "doc", payload).unwrap();
                last = Some(nodes.len());
                nodes.push((node, side));
            }
        }
        Self { nodes }
    }

    fn held_by(&self, relay: bool) -> impl Iterator<Item = &Node> {
        let wanted = if relay { Side::Relay } else { Side::Client };
        self.nodes
            .iter()
            .filter(move |(_, s)| *s == Side::Both || *s == wanted)
            .map(|(n, _)| n)
    }

    fn union(&self) -> HashSet<NodeId> {
        self.nodes.iter().map(|(n, _)| n.id).collect()
    }

    fn room(&self) -> Room {
        let mut room = Room::new(
            room_id(),
            EPOCH,
            NodeLimits::default(),
            OrphanLimits::default(),
        );
        for n in self.held_by(true) {
            room.restore(n.clone()).unwrap();
        }
        room.warm_indexes();
        room
    }

    /// The client's replica: `synced` shared nodes marked synced, with a watermark from an
    /// earlier epoch; otherwise nothing synced and no watermark (a cold client).
    fn replica(&self, synced: bool) -> Replica {
        let mut replica = Replica::new(room_id());
        for (n, side) in &self.nodes {
            match side {
                Side::Both => replica.insert(n.clone(), synced).unwrap(),
                Side::Client => replica.insert(n.clone(), false).unwrap(),
                Side::Relay => continue,
            };
        }
        if synced {
            replica.complete_through(EPOCH - 1, 1);
        }
        replica
    }
}

/// What one connection did.
#[derive(Debug, Default)]
struct Session {
    plans: Vec<Plan>,
    sent_up: Vec<MessageType>,
    relay_errors: Vec<ErrorCode>,
    closes: Vec<CloseCode>,
    link_error: Option<String>,
    /// `bucket_ids` rounds the client sent (a round ends with a `last` frame).
    bucket_rounds: usize,
    /// Buckets the client settled by a sketch rather than its id list.
    bucket_sketches: usize,
}

/// Runs one connection until nothing is in flight.
fn connect(hub: &mut Hub, replica: &mut Replica, sid: u64, caps: Capabilities) -> Session {
    connect_through(hub, replica, sid, caps, |frame| frame)
}

/// [`connect`], with every relay frame passed through `tamper` on its way to the client.
fn connect_through(
    hub: &mut Hub,
    replica: &mut Replica,
    sid: u64,
    caps: Capabilities,
    tamper: impl Fn(Bytes) -> Bytes,
) -> Session {
    run(hub, replica, sid, caps, |frame| frame, tamper)
}

/// [`connect`], with every client frame passed through `tamper` on its way to the relay.
fn connect_up_through(
    hub: &mut Hub,
    replica: &mut Replica,
    sid: u64,
    caps: Capabilities,
    tamper: impl FnMut(Bytes) -> Bytes,
) -> Session {
    run(hub, replica, sid, caps, tamper, |frame| frame)
}

fn run(
    hub: &mut Hub,
    replica: &mut Replica,
    sid: u64,
    caps: Capabilities,
    mut up_tamper: impl FnMut(Bytes) -> Bytes,
    tamper: impl Fn(Bytes) -> Bytes,
) -> Session {
    let now = now();
    let mut session = Session::default();
    hub.connect(sid, now);
    let (mut link, hello) = Link::start(replica, caps, 1 << 20).unwrap();
    let mut up = vec![hello];
    for _ in 0..WAVES {
        if up.is_empty() {
            break;
        }
        let mut down = Vec::new();
        for frame in std::mem::take(&mut up) {
            let frame = up_tamper(frame);
            session.sent_up.extend(protocol::peek_type(&frame));
            if let Ok(Message::BucketIds(ids)) = protocol::decode(&frame) {
                session.bucket_rounds += usize::from(ids.last);
                session.bucket_sketches += protocol::unpack_bucket_sketches(&ids.sketches)
                    .unwrap()
                    .len();
            }
            let out = hub.handle_frame(sid, &frame, now);
            let out = hub.resolve(out);
            session.closes.extend(out.closes.iter().map(|(_, c)| *c));
            down.extend(out.frames_for(sid).cloned().map(&tamper));
        }
        for frame in down {
            if let Ok(Message::ErrorMessage(e)) = protocol::decode(&frame) {
                session.relay_errors.extend(ErrorCode::from_code(e.code));
            }
            match link.handle_frame(replica, &frame) {
                Ok(out) => {
                    for e in out.events {
                        if let SyncEvent::Plan(plan) = e {
                            session.plans.push(plan);
                        }
                    }
                    up.extend(out.send);
                }
                Err(e) => {
                    session.link_error = Some(e.to_string());
                    let _ = hub.disconnect(sid);
                    return session;
                }
            }
        }
        up.extend(link.push(replica).unwrap().send);
    }
    assert!(up.is_empty(), "the exchange did not settle");
    let _ = hub.disconnect(sid);
    session
}

const SKETCHES: Capabilities = Capabilities::IBF.union(Capabilities::MST);

/// Reconciles `history` and checks the outcome against ground truth; returns the plans.
fn reconcile(history: &History, synced: bool) -> Vec<Plan> {
    let mut hub = Hub::new(history.room(), HubConfig::immediate());
    let mut replica = history.replica(synced);
    let first = connect(&mut hub, &mut replica, 1, SKETCHES);
    assert_eq!(first.link_error, None);
    assert!(first.relay_errors.is_empty(), "{:?}", first.relay_errors);
    assert!(first.closes.is_empty(), "{:?}", first.closes);
    let union = history.union();
    let room: HashSet<NodeId> = hub.room().nodes().map(|n| *n.id()).collect();
    let held: HashSet<NodeId> = replica.ids().copied().collect();
    assert_eq!(room.len(), union.len(), "relay holds the union");
    assert_eq!(room, union);
    assert_eq!(held, union, "client holds the union");
    assert_eq!(replica.unsynced().count(), 0, "nothing left unsynced");
    // Verified: the next connection finds both sides equal.
    let again = connect(&mut hub, &mut replica, 2, SKETCHES);
    assert_eq!(again.plans, vec![Plan::InSync]);
    first.plans
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any sizes, any split of the difference, clustered or scattered, cold or prev-epoch.
    #[test]
    fn sessions_converge_to_the_union(
        seed in any::<u64>(),
        shared in 0usize..2_500,
        relay_share in 0u32..=100,
        fraction in prop_oneof![0.0f64..0.05, 0.0f64..1.0],
        clustered in any::<bool>(),
        synced in any::<bool>(),
    ) {
        let d = ((shared.max(1) as f64) * fraction).round() as usize;
        let relay = d * relay_share as usize / 100;
        let history = History::generate(seed, shared, relay, d - relay, clustered);
        let plans = reconcile(&history, synced);
        prop_assert!(!plans.is_empty());
    }
}

/// The sizes of the scenarios, once each, at the top of the range.
#[test]
fn large_sets_converge_with_one_sketch() {
    for (shared, relay, client, clustered) in [
        (100_000, 0, 0, false),
        (100_000, 500, 500, false),
        (100_000, 1_000, 0, true),
        (100_000, 0, 1_000, false),
        (20_000, 2_000, 2_000, false),
    ] {
        let history = History::generate(7, shared, relay, client, clustered);
        let plans = reconcile(&history, false);
        let expected = if relay + client == 0 {
            Plan::InSync
        } else {
            Plan::Sketch
        };
        assert_eq!(plans.first(), Some(&expected), "{shared} {relay} {client}");
    }
}

#[test]
fn hard_divergence_refines_and_converges() {
    // 60% of the union differs: beyond what a sketch is sized for.
    let history = History::generate(3, 2_000, 1_500, 1_500, false);
    assert_eq!(reconcile(&history, false), vec![Plan::Refine]);
    // A client that lost part of what it believed synced: sized from counts, too small.
    let (history, mut hub, mut replica) = relay_lost_synced_nodes();
    let session = connect(&mut hub, &mut replica, 1, SKETCHES);
    assert_eq!(session.link_error, None);
    assert_eq!(session.plans, vec![Plan::Sketch, Plan::Refine]);
    let retries = session.sent_up.iter().filter(|t| **t == MessageType::Retry);
    assert_eq!(retries.count(), 2, "one extension, then refinement");
    // ~200 ids per bucket and ~25 differences each: sketches are smaller than the lists.
    assert!(session.bucket_sketches >= 8, "{session:?}");
    assert_eq!(session.bucket_rounds, 1, "every bucket sketch settled");
    assert_converged(&history, &mut hub, &mut replica);
}

/// 3,000 shared nodes and 400 the client believes synced (the relay lost them in an epoch
/// change): sized from counts, the sketch is far too small.
fn relay_lost_synced_nodes() -> (History, Hub, Replica) {
    let history = History::generate(4, 3_000, 0, 400, false);
    let hub = Hub::new(history.room(), HubConfig::immediate());
    let mut replica = history.replica(true);
    for (n, side) in &history.nodes {
        if *side == Side::Client {
            replica.mark_synced(&n.id);
        }
    }
    (history, hub, replica)
}

/// Both sides hold the union, the client trusts all of it, and the next session agrees.
fn assert_converged(history: &History, hub: &mut Hub, replica: &mut Replica) {
    let room: HashSet<NodeId> = hub.room().nodes().map(|n| *n.id()).collect();
    assert_eq!(room, history.union());
    let held: HashSet<NodeId> = replica.ids().copied().collect();
    assert_eq!(held, history.union());
    assert_eq!(replica.unsynced().count(), 0);
    let again = connect(hub, replica, 2, SKETCHES);
    assert_eq!(again.plans, vec![Plan::InSync]);
}

/// The client that lost nodes it believed synced (see above), with its bucket sketches
/// emptied on the way: the relay cannot settle those buckets, asks for their lists in a
/// second round, and the session still converges and verifies.
#[test]
fn bucket_sketches_that_do_not_settle_are_relisted() {
    let (history, mut hub, mut replica) = relay_lost_synced_nodes();
    let emptied = std::cell::Cell::new(0usize);
    let blank_sketches = |frame: Bytes| -> Bytes {
        let Ok(Message::BucketIds(mut ids)) = protocol::decode(&frame) else {
            return frame;
        };
        let mut entries = protocol::unpack_bucket_sketches(&ids.sketches).unwrap();
        if entries.is_empty() {
            return frame;
        }
        for entry in &mut entries {
            entry.cells = Bytes::from(vec![0u8; entry.cells.len()]);
        }
        emptied.set(emptied.get() + entries.len());
        ids.sketches = protocol::pack_bucket_sketches(&entries);
        Message::BucketIds(ids).encode().unwrap()
    };
    let session = connect_up_through(&mut hub, &mut replica, 1, SKETCHES, blank_sketches);
    assert_eq!(session.link_error, None);
    assert!(
        session.relay_errors.is_empty(),
        "{:?}",
        session.relay_errors
    );
    assert!(emptied.get() >= 8);
    assert_eq!(
        session.bucket_rounds, 2,
        "one round of sketches, one of lists"
    );
    assert_converged(&history, &mut hub, &mut replica);
}

/// After a sketch that failed twice, `buckets.expected` is the capacity of the last sketch
/// sent (the extension at `2^(m+1)`: ⌊3 · 2^(m+1) / 1.3⌋), not the estimate it started from
/// (§5.9 step 1); `retry.cells_left` is diagnostic and changes nothing.
#[test]
fn buckets_after_a_failed_sketch_expect_the_last_sketch_capacity() {
    let history = History::generate(12, 1_000, 30, 30, false);
    let replica = history.replica(false);
    let frames_of = |out: weft::room::Outbox| -> Vec<Message> {
        out.frames
            .iter()
            .map(|o| protocol::decode(&o.frame).unwrap())
            .collect()
    };
    for cells_left in [0, 7, u64::MAX] {
        let mut hub = Hub::new(history.room(), HubConfig::immediate());
        hub.connect(1, now());
        let (_, hello) = Link::start(&replica, SKETCHES, 1 << 20).unwrap();
        let first = frames_of(hub.handle_frame(1, &hello, now()));
        let log2 = first
            .iter()
            .find_map(|m| match m {
                Message::Sketch(s) => Some(s.log2),
                _ => None,
            })
            .expect("plan sketch sends a sketch");
        let retry = Message::Retry(protocol::Retry { cells_left })
            .encode()
            .unwrap();
        let extension = frames_of(hub.handle_frame(1, &retry, now()));
        assert!(
            matches!(extension.first(), Some(Message::Sketch(s)) if s.extension && s.log2 == log2 + 1),
            "{extension:?}"
        );
        let refine = frames_of(hub.handle_frame(1, &retry, now()));
        let Some(Message::Buckets(buckets)) = refine.first() else {
            panic!("expected buckets, got {refine:?}");
        };
        let capacity = ((3u64 << (log2 + 1)) as f64 / 1.3) as u64;
        assert_eq!(
            buckets.expected, capacity,
            "sketch at 2^{log2}, extended once"
        );
    }
}

/// `bucket_ids` a relay must refuse: sketches for buckets not marked as differing, twice for
/// one bucket, truncated; a second round that is not exactly the relisted buckets by lists.
#[test]
fn bad_bucket_sketches_get_typed_errors() {
    let history = History::generate(12, 1_000, 30, 30, false);
    let replica = history.replica(false);
    let send = |hub: &mut Hub, message: Message| {
        let out = hub.handle_frame(1, &message.encode().unwrap(), now());
        let frames: Vec<Message> = out
            .frames
            .iter()
            .map(|o| protocol::decode(&o.frame).unwrap())
            .collect();
        let closes: Vec<CloseCode> = out.closes.iter().map(|(_, code)| *code).collect();
        (frames, closes)
    };
    // Two failed decodes take the session to refinement at depth 1: 16 buckets.
    let refining = || {
        let mut hub = Hub::new(history.room(), HubConfig::immediate());
        hub.connect(1, now());
        let (_, hello) = Link::start(&replica, SKETCHES, 1 << 20).unwrap();
        let _ = hub.handle_frame(1, &hello, now());
        let _ = send(&mut hub, Message::Retry(protocol::Retry { cells_left: 1 }));
        let (frames, _) = send(&mut hub, Message::Retry(protocol::Retry { cells_left: 1 }));
        assert!(matches!(frames.first(), Some(Message::Buckets(b)) if b.depth == 1));
        hub
    };
    let entry = |bucket: u64, fill: u8| protocol::BucketSketch {
        bucket,
        count: 60,
        log2: 2,
        cells: Bytes::from(vec![fill; 12 * ibf::CELL_BYTES]),
    };
    let bucket_ids = |differing: &'static [u8], entries: &[protocol::BucketSketch]| {
        Message::BucketIds(protocol::BucketIds {
            differing: Bytes::from_static(differing),
            shorts: Bytes::new(),
            sketches: protocol::pack_bucket_sketches(entries),
            last: true,
        })
    };
    let is_error_and_close = |(frames, closes): (Vec<Message>, Vec<CloseCode>)| {
        assert!(
            matches!(frames.as_slice(), [Message::ErrorMessage(e)] if e.code == ErrorCode::Malformed.code()),
            "{frames:?}"
        );
        assert_eq!(closes, vec![CloseCode::ProtocolViolation]);
    };
    // A sketch for bucket 3, which the bitmap does not mark.
    let mut hub = refining();
    is_error_and_close(send(&mut hub, bucket_ids(&[0x01, 0], &[entry(3, 0)])));
    // Two sketches for bucket 0.
    let mut hub = refining();
    is_error_and_close(send(
        &mut hub,
        bucket_ids(&[0x01, 0], &[entry(0, 0), entry(0, 1)]),
    ));
    // A truncated entry: a typed error; the session stays open.
    let mut hub = refining();
    let (frames, closes) = send(
        &mut hub,
        Message::BucketIds(protocol::BucketIds {
            differing: Bytes::from_static(&[0x01, 0]),
            shorts: Bytes::new(),
            sketches: Bytes::from_static(&[0, 60, 2, 9, 9]),
            last: true,
        }),
    );
    assert!(matches!(frames.as_slice(), [Message::ErrorMessage(_)]));
    assert!(closes.is_empty());
    // A garbage sketch does not settle: the relay asks for that bucket's list...
    let mut hub = refining();
    let (frames, closes) = send(&mut hub, bucket_ids(&[0x01, 0], &[entry(0, 0x5a)]));
    assert!(closes.is_empty());
    let Some(Message::Missing(missing)) = frames.last() else {
        panic!("expected missing, got {frames:?}");
    };
    assert!(missing.last);
    assert_eq!(&missing.relist[..], &[0x01, 0]);
    // ...and refuses a second round that covers other buckets, or sketches again.
    let mut second = refining();
    let _ = send(&mut second, bucket_ids(&[0x01, 0], &[entry(0, 0x5a)]));
    is_error_and_close(send(&mut second, bucket_ids(&[0x03, 0], &[])));
    is_error_and_close(send(&mut hub, bucket_ids(&[0x01, 0], &[entry(0, 0x5a)])));
    // Sketch bytes count against the session's id bound.
    let mut config = HubConfig::immediate();
    config.session.max_total_ids = 10;
    let mut hub = Hub::new(history.room(), config);
    hub.connect(1, now());
    let (_, hello) = Link::start(&replica, SKETCHES, 1 << 20).unwrap();
    let _ = hub.handle_frame(1, &hello, now());
    let _ = send(&mut hub, Message::Retry(protocol::Retry { cells_left: 1 }));
    let _ = send(&mut hub, Message::Retry(protocol::Retry { cells_left: 1 }));
    let (frames, closes) = send(&mut hub, bucket_ids(&[0x01, 0], &[entry(0, 0)]));
    assert!(
        matches!(frames.as_slice(), [Message::ErrorMessage(e)] if e.code == ErrorCode::LimitExceeded.code())
    );
    assert_eq!(closes, vec![CloseCode::ProtocolViolation]);
}

/// Relay-only nodes ground so that, under the room's key, all of them share their cells at the
/// smallest sketch size and still collide after one extension: peeling is stuck twice, the
/// session refines and still converges.
#[test]
fn ids_ground_to_collide_in_the_sketch_fall_back_to_refinement() {
    let room = room_id();
    let mut history = History::generate(5, 500, 0, 0, false);
    let base = history.nodes[17].0.clone();
    let target = Placement::new(key().short_id(&base.id)).cells(5);
    let mut grinding = 0u64;
    while history.nodes.len() < 500 + 12 {
        grinding += 1;
        let node = Node::child_of(&room, &[&base], "x", format!("grind {grinding}")).unwrap();
        if Placement::new(key().short_id(&node.id)).cells(5) == target {
            history.nodes.push((node, Side::Relay));
        }
    }
    let plans = reconcile(&history, false);
    assert_eq!(plans, vec![Plan::Sketch, Plan::Refine]);
}

/// Sketch frames a relay could send that a client must refuse with a typed error, leaving its
/// replica as it was.
#[test]
fn garbage_sketches_are_typed_errors_and_change_nothing() {
    let history = History::generate(6, 300, 10, 10, false);
    let welcome_for = |hub: &mut Hub, replica: &mut Replica| {
        let now = now();
        hub.connect(1, now);
        let (mut link, hello) = Link::start(replica, SKETCHES, 1 << 20).unwrap();
        let out = hub.handle_frame(1, &hello, now);
        let welcome = out
            .frames
            .iter()
            .find(|o| protocol::peek_type(&o.frame) == Some(MessageType::Welcome))
            .unwrap()
            .frame
            .clone();
        let _ = link.handle_frame(replica, &welcome).unwrap();
        link
    };
    let good_key = Bytes::copy_from_slice(key().wire());
    let cells = |n: usize| Bytes::from(ibf::encode_cells(&vec![Cell::default(); n]));
    let cases: Vec<(&str, Sketch, Misbehaved)> = vec![
        (
            "short key",
            Sketch {
                log2: 4,
                extension: false,
                key: Bytes::from_static(&[1; 3]),
                cells: cells(48),
            },
            Misbehaved::BadKey(MessageType::Sketch),
        ),
        (
            "partial cell",
            Sketch {
                log2: 4,
                extension: false,
                key: good_key.clone(),
                cells: Bytes::from(vec![0u8; 13 * 2 + 5]),
            },
            Misbehaved::SketchCells(SketchError::BadSize),
        ),
        (
            "more cells than the size holds",
            Sketch {
                log2: 4,
                extension: false,
                key: good_key.clone(),
                cells: cells(49),
            },
            Misbehaved::SketchOverfull,
        ),
        (
            "size beyond the largest",
            Sketch {
                log2: 60,
                extension: false,
                key: good_key.clone(),
                cells: cells(3),
            },
            Misbehaved::SketchSize(60),
        ),
        (
            "extension without a sketch",
            Sketch {
                log2: 5,
                extension: true,
                key: good_key.clone(),
                cells: cells(48),
            },
            Misbehaved::ExtensionWithoutSketch,
        ),
    ];
    for (what, sketch, reason) in cases {
        let mut hub = Hub::new(history.room(), HubConfig::immediate());
        let mut replica = history.replica(false);
        let before: Vec<(NodeId, bool)> = replica
            .ids()
            .map(|id| (*id, replica.is_synced(id)))
            .collect();
        let mut link = welcome_for(&mut hub, &mut replica);
        let frame = Message::Sketch(sketch).encode().unwrap();
        let result = link.handle_frame(&mut replica, &frame);
        assert!(
            matches!(
                &result,
                Err(LinkError::Session(ClientError::Misbehaved(refused))) if *refused == reason
            ),
            "{what}: {result:?}"
        );
        let after: Vec<(NodeId, bool)> = replica
            .ids()
            .map(|id| (*id, replica.is_synced(id)))
            .collect();
        assert_eq!(before, after, "{what}");
    }
}

/// A crafted sketch whose "pure" cells name short ids the client does not hold decodes to
/// nonsense: the client asks for a retry instead of trusting it.
#[test]
fn a_sketch_naming_unknown_ids_is_retried_not_trusted() {
    let history = History::generate(8, 200, 0, 0, false);
    let mut replica = history.replica(false);
    let mut sketch = replica.sets(key()).sketch_at(4).unwrap();
    // One element only the client "holds": a short id it does not have.
    sketch.remove(0xdead_beef);
    let (mut link, _hello) = Link::start(&replica, SKETCHES, 1 << 20).unwrap();
    // A relay holding the same set would answer in sync; play a lying one by hand.
    let welcome = Message::Welcome(protocol::Welcome {
        version: protocol::PROTOCOL_VERSION,
        capabilities: SKETCHES,
        peer: 1,
        epoch: EPOCH,
        seq: 200,
        plan: Plan::Sketch,
        limits: None,
    });
    let _ = link
        .handle_frame(&mut replica, &welcome.encode().unwrap())
        .unwrap();
    let frame = Message::Sketch(Sketch {
        log2: 4,
        extension: false,
        key: Bytes::copy_from_slice(key().wire()),
        cells: Bytes::from(ibf::encode_cells(sketch.cells())),
    })
    .encode()
    .unwrap();
    let out = link.handle_frame(&mut replica, &frame).unwrap();
    let sent: Vec<Option<MessageType>> = out.send.iter().map(|f| protocol::peek_type(f)).collect();
    assert_eq!(sent, vec![Some(MessageType::Retry)]);
    assert_eq!(replica.unsynced().count(), 200, "nothing was marked synced");
}

/// What a relay does with bad `want` frames: typed errors, a refinement when the claimed root
/// is wrong, and a close when the list is beyond its bound.
#[test]
fn bad_wants_get_typed_errors_or_refinement() {
    let history = History::generate(9, 1_000, 30, 30, false);
    let start = |hub: &mut Hub| {
        let replica = history.replica(false);
        let now = now();
        hub.connect(1, now);
        let (_, hello) = Link::start(&replica, SKETCHES, 1 << 20).unwrap();
        let out = hub.handle_frame(1, &hello, now);
        assert!(
            out.frames
                .iter()
                .any(|o| protocol::peek_type(&o.frame) == Some(MessageType::Sketch))
        );
    };
    let send = |hub: &mut Hub, message: Message| {
        let out = hub.handle_frame(1, &message.encode().unwrap(), now());
        let types: Vec<MessageType> = out
            .frames
            .iter()
            .filter_map(|o| protocol::peek_type(&o.frame))
            .collect();
        let closes: Vec<CloseCode> = out.closes.iter().map(|(_, code)| *code).collect();
        (types, closes)
    };
    // Short ids that are not a whole number of words.
    let mut hub = Hub::new(history.room(), HubConfig::immediate());
    start(&mut hub);
    let (types, closes) = send(
        &mut hub,
        Message::Want(Want {
            shorts: Bytes::from_static(&[1, 2, 3]),
            last: true,
            shared: Some(SetDigest {
                count: 1,
                sum: DigestSum([0; 32]),
            }),
        }),
    );
    assert_eq!((types, closes), (vec![MessageType::ErrorMessage], vec![]));
    // A shared root on a frame that is not the last.
    let (types, _) = send(
        &mut hub,
        Message::Want(Want {
            shorts: Bytes::new(),
            last: false,
            shared: Some(SetDigest {
                count: 1,
                sum: DigestSum([0; 32]),
            }),
        }),
    );
    assert_eq!(types, vec![MessageType::ErrorMessage]);
    // Made-up short ids and a wrong digest: not trusted, the relay refines.
    let (types, closes) = send(
        &mut hub,
        Message::Want(Want {
            shorts: protocol::pack_shorts([1, 2, 3]),
            last: true,
            shared: Some(SetDigest {
                count: 1_030,
                sum: DigestSum([7; 32]),
            }),
        }),
    );
    assert!(closes.is_empty());
    assert!(
        types.iter().all(|t| *t == MessageType::Buckets) && !types.is_empty(),
        "{types:?}"
    );
    // A bitmap of the wrong length for the buckets sent: error, then close.
    let (types, closes) = send(
        &mut hub,
        Message::BucketIds(protocol::BucketIds {
            differing: Bytes::from_static(&[0xff]),
            shorts: Bytes::new(),
            sketches: Bytes::new(),
            last: true,
        }),
    );
    assert_eq!(types, vec![MessageType::ErrorMessage]);
    assert_eq!(closes, vec![CloseCode::ProtocolViolation]);

    // A want list beyond the relay's bound closes the session.
    let mut config = HubConfig::immediate();
    config.session.max_total_ids = 10;
    let mut hub = Hub::new(history.room(), config);
    start(&mut hub);
    let (types, closes) = send(
        &mut hub,
        Message::Want(Want {
            shorts: protocol::pack_shorts(0..11),
            last: false,
            shared: None,
        }),
    );
    assert_eq!(types, vec![MessageType::ErrorMessage]);
    assert_eq!(closes, vec![CloseCode::ProtocolViolation]);
}

/// A client with a current watermark catches up without a sketch, and one whose hello
/// carries a malformed estimator gets a typed error and still converges.
#[test]
fn watermarks_skip_sketches_and_bad_estimators_are_reported() {
    let history = History::generate(10, 800, 40, 0, true);
    let mut hub = Hub::new(history.room(), HubConfig::immediate());
    let mut replica = history.replica(true);
    replica.complete_through(EPOCH, 800);
    let session = connect(&mut hub, &mut replica, 1, SKETCHES);
    assert_eq!(session.plans, vec![Plan::CatchUp]);
    assert_eq!(
        replica.ids().count(),
        history.union().len(),
        "caught up by watermark"
    );

    let history = History::generate(11, 800, 5, 5, false);
    let mut hub = Hub::new(history.room(), HubConfig::immediate());
    let replica = history.replica(false);
    let mut hints = replica.hints(true);
    hints.estimator = Some(Bytes::from_static(&[0; 65]));
    let hello = sketch_hello(hints);
    let now = now();
    hub.connect(1, now);
    let out = hub.handle_frame(1, &hello.encode().unwrap(), now);
    let first = protocol::decode(&out.frames[0].frame).unwrap();
    match first {
        Message::ErrorMessage(e) => {
            assert_eq!(e.code, ErrorCode::Malformed.code());
            assert_eq!(e.message_type, MessageType::Hello.code());
        }
        other => panic!("expected an error first, got {other:?}"),
    }
    // Then the welcome: the hello was accepted, as if it carried no estimator.
    let second = protocol::decode(&out.frames[1].frame).unwrap();
    assert!(matches!(second, Message::Welcome(_)), "{second:?}");
    assert!(out.closes.is_empty());
    // The estimator error does not count toward the limit of 8: only the 8th malformed frame
    // after it closes the session.
    for i in 1..=8 {
        let out = hub.handle_frame(1, &[0xc1], now);
        assert_eq!(out.closes.is_empty(), i < 8, "malformed frame {i}");
    }
}

/// A relay whose `catch_up_done` root disagrees with what it streamed (a decode that went
/// wrong in a way the digests missed, or a lying relay) is caught by the client: it forgets
/// its sync state, and its next session reconciles by the exact id list.
#[test]
fn a_wrong_root_at_catch_up_done_is_caught_and_resynced_exactly() {
    let history = History::generate(12, 1_500, 20, 20, false);
    let mut hub = Hub::new(history.room(), HubConfig::immediate());
    let mut replica = history.replica(false);
    let lie = |frame: Bytes| match protocol::decode(&frame) {
        Ok(Message::CatchUpDone(mut done)) => {
            if let Some(root) = done.root.as_mut() {
                root.hash.0[0] ^= 1;
            }
            Message::CatchUpDone(done).encode().unwrap()
        }
        _ => frame,
    };
    let session = connect_through(&mut hub, &mut replica, 1, SKETCHES, lie);
    assert_eq!(session.plans, vec![Plan::Sketch]);
    let error = session.link_error.expect("the client refuses the root");
    assert!(error.contains("diverged"), "{error}");
    assert!(replica.needs_exact_resync());
    assert_eq!(replica.watermark(), None);
    // Next time: no sketches offered, the exact id list, and the union on both sides.
    let again = connect(&mut hub, &mut replica, 2, SKETCHES);
    assert_eq!(again.plans, vec![Plan::SendIds]);
    assert!(again.sent_up.contains(&MessageType::Ids));
    let held: HashSet<NodeId> = replica.ids().copied().collect();
    assert_eq!(held, history.union());
    assert_eq!(replica.unsynced().count(), 0);
}

/// Hints whose counts contradict each other (more unsynced nodes than nodes, a count far from
/// the digest's set) only mis-size the plan: the session still converges, with no error.
#[test]
fn inconsistent_counts_in_hints_cannot_break_a_session() {
    let history = History::generate(13, 2_000, 30, 30, false);
    for (unsynced, count) in [
        (u64::MAX, None),
        (0, Some(u64::MAX)),
        (5, Some(1)),
        (0, Some(0)),
    ] {
        let mut hub = Hub::new(history.room(), HubConfig::immediate());
        let mut replica = history.replica(true);
        let mut hints = replica.hints(true);
        hints.unsynced = unsynced;
        if let Some(count) = count {
            hints.digest.count = count;
        }
        let hello = sketch_hello(hints);
        // Replay the doctored hello through a link-driven session: swap it in for the real one.
        let session = connect_with_hello(&mut hub, &mut replica, hello.encode().unwrap());
        assert_eq!(session.link_error, None, "{unsynced} {count:?}");
        assert!(session.closes.is_empty());
        let room: HashSet<NodeId> = hub.room().nodes().map(|n| *n.id()).collect();
        let held: HashSet<NodeId> = replica.ids().copied().collect();
        assert_eq!(
            room,
            history.union(),
            "{unsynced} {count:?}: {:?}",
            session.plans
        );
        assert_eq!(
            held,
            history.union(),
            "{unsynced} {count:?}: {:?}",
            session.plans
        );
    }
}

/// A `hello` offering sketches with `hints`.
fn sketch_hello(hints: protocol::SyncHints) -> Message {
    Message::Hello(protocol::Hello {
        min_version: 1,
        max_version: 1,
        capabilities: SKETCHES,
        hints,
        credit: 1 << 20,
        subscribe: None,
    })
}

/// [`connect`] with the hello replaced by `hello`.
fn connect_with_hello(hub: &mut Hub, replica: &mut Replica, hello: Bytes) -> Session {
    let mut first = true;
    connect_up_through(hub, replica, 1, SKETCHES, move |frame| {
        if std::mem::take(&mut first) {
            hello.clone()
        } else {
            frame
        }
    })
}
