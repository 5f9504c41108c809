//! A room hub driven by up to three sessions with a virtual clock (protocol/README.md §2, §5–§8).
//!
//! The input is a sequence of operations: connect and disconnect, raw frames, and structured
//! frames (hello with various hints, packs of nodes drawn from a pool that mixes valid, orphaned
//! and corrupted nodes, credit, ids, presence), plus clock advances. After every step:
//!
//! - the room's digest equals `SetDigest::of` its node ids, its arrival numbers are 1..=seq,
//!   every node's parents are present with lower numbers, depths follow the rule and every node
//!   passes its own checks; the heads are exactly the nodes nobody names as parent;
//! - store writes the hub asks for complete when the input says (`Persist`), succeed or fail;
//!   no frame ever leaves naming a node (an `ack`, `broadcast`, `resolved`, `batch` or
//!   `catch_up_done` number) before the write that stores it succeeded, and a failed write
//!   closes every session and the room reloads from what was stored;
//! - every frame the hub emits decodes and is one the relay may send;
//! - a broadcast carries consecutive numbers matching the room, and never carries a node back to
//!   the session whose pack just admitted it;
//! - an ack answers a pack its session sent, one outcome per node, and accepted / duplicate
//!   numbers point at that node;
//! - `catch_up_done` carries the digest (and root) of the room's nodes up to its number, and a
//!   session that joined with an empty replica has received, by then, exactly those.

#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use weft::node::{AuthorKey, BlobHash, BlobRef, DigestSum, Node, NodeId, NodeLimits, RoomId};
use weft::pattern::{Pattern, PatternSet};
use weft::protocol::{
    self, BucketIds, Capabilities, Credit, Direction, Hello, Ids, Message, Outcome, Pack, Presence,
    Retry, Subscribe, SyncHints, Unsubscribe, Want, Watermark,
};
use weft::recon::prefix_tree::PrefixTree;
use weft::recon::SetDigest;
use weft::recon::ibf::SketchKey;
use weft::room::{Durability, Hub, HubConfig, OrphanLimits, Outbox, Room, SessionId};
use weft::session::RelaySessionConfig;

const SLOTS: usize = 3;

#[derive(Arbitrary, Debug)]
enum Op {
    Connect(u8),
    Disconnect(u8),
    Hello {
        slot: u8,
        capabilities: u8,
        credit: u16,
        /// Patterns by index into `PATTERNS`, or none (every node).
        subscribe: Option<Vec<u8>>,
        hints: HintsChoice,
        min_version: u8,
    },
    Raw {
        slot: u8,
        frame: Vec<u8>,
    },
    Pack {
        slot: u8,
        number: u8,
        nodes: Vec<NodeSpec>,
    },
    Credit {
        slot: u8,
        bytes: u16,
    },
    Ids {
        slot: u8,
        picks: Vec<u8>,
        unknown: bool,
        last: bool,
    },
    Presence {
        slot: u8,
        state: Vec<u8>,
    },
    /// `subscribe` (or `unsubscribe`) with patterns by index into `PATTERNS`.
    Subscribe {
        slot: u8,
        number: u8,
        add: bool,
        picks: Vec<u8>,
    },
    /// Short ids of the room's own nodes (by pool index) or made up, with a shared root.
    Want {
        slot: u8,
        picks: Vec<u8>,
        made_up: Vec<u64>,
        last: bool,
        shared: Option<(u8, bool)>,
    },
    Retry {
        slot: u8,
    },
    BucketIds {
        slot: u8,
        differing: Vec<u8>,
        shorts: Vec<u64>,
        /// Bucket sketch entries: (bucket, count, log2, cell fill), or raw bytes.
        sketches: Vec<(u16, u16, u8, u8)>,
        raw_sketches: Option<Vec<u8>>,
        last: bool,
    },
    /// A valid frame with one byte changed.
    Corrupt {
        slot: u8,
        at: u16,
        byte: u8,
    },
    Advance {
        millis: u16,
    },
    /// The store write in flight, if any, completes.
    Persist {
        fail: bool,
    },
}

#[derive(Arbitrary, Debug)]
enum HintsChoice {
    Empty,
    InSync,
    Claim {
        heads: Vec<u8>,
        watermark: Option<(bool, u8)>,
        digest_of: Vec<u8>,
        unsynced: u8,
        /// Estimator bytes, valid or not (protocol/README.md §5.7.2).
        estimator: Option<Vec<u8>>,
    },
}

/// A node to create: parents are indexes into the pool of every node created so far.
#[derive(Arbitrary, Debug)]
struct NodeSpec {
    parents: Vec<u8>,
    depth_error: i8,
    path: u8,
    payload: Vec<u8>,
    author: bool,
    blob: Option<u16>,
    corruption: Corruption,
    /// Reuse a pool node instead of creating one (duplicates, orphans that already exist).
    reuse: Option<u8>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Corruption {
    None,
    ClaimedId,
    Payload,
    UnsortedParents,
    BadPath,
}

/// Subscription patterns: valid ones over `PATHS`, and some a relay must refuse.
const PATTERNS: &[&str] = &[
    "**", "a/**", "a/*", "*/b", "a*", "**/b", r"a\*", "b", "x/**/y", "a**", "", "a//b", "../a",
];

fn patterns(picks: &[u8]) -> Vec<String> {
    picks
        .iter()
        .take(80)
        .map(|p| PATTERNS[usize::from(*p) % PATTERNS.len()].to_owned())
        .collect()
}

const PATHS: &[&str] = &[
    "a",
    "a/b",
    "notes/today",
    "x.y/z-1",
    "ü/ß",
    "",
    "/a",
    "a//b",
    "..",
];

fn room_id() -> RoomId {
    RoomId::new("fuzz").expect("valid room id")
}

#[allow(clippy::disallowed_methods)] // one real instant as the virtual clock's origin
fn orphan_limits() -> OrphanLimits {
    OrphanLimits {
        max_nodes: 8,
        max_bytes: 512,
        ttl: Duration::from_secs(5),
    }
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

#[derive(Default)]
struct Peer {
    id: Option<SessionId>,
    /// Whether a hello was sent on this connection.
    hello_sent: bool,
    /// Joined with an empty replica: what it received must end up equal to the room.
    fresh: bool,
    received: HashSet<NodeId>,
    through: u64,
    /// The subscription the relay must have accepted in `hello`: what it sends must match.
    /// Cleared (no checks) once the peer changes it mid-session.
    filter: Option<PatternSet>,
    /// Subscribed in `hello`: parents outside the subscription are never sent.
    subscribed: bool,
    /// Packs sent and not answered yet, oldest first: (number, node ids).
    packs: Vec<(u64, Vec<NodeId>)>,
    /// Nodes its acks accepted: never broadcast back to it.
    accepted: HashSet<NodeId>,
}

struct World {
    hub: Hub,
    now: Instant,
    next_id: SessionId,
    peers: [Peer; SLOTS],
    pool: Vec<Node>,
    limits: NodeLimits,
    config: HubConfig,
    /// The store write asked for and not completed: through this arrival number.
    write: Option<u64>,
}

impl World {
    fn new() -> Self {
        let limits = NodeLimits {
            max_payload: 64,
            max_parents: 4,
            max_path_len: 16,
            max_path_segments: 3,
            max_blobs: 1,
        };
        let room = Room::new(
            room_id(),
            9,
            limits,
            orphan_limits(),
        );
        let mut session = RelaySessionConfig::default();
        session.limits.node = limits;
        session.limits.max_frame = 600;
        session.limits.max_pack_nodes = 6;
        session.limits.max_ids = 5;
        session.limits.max_presence = 16;
        session.max_credit = 2_000;
        session.max_total_ids = 12;
        let config = HubConfig {
            session,
            handshake_timeout: Duration::from_secs(3),
            durability: Durability::Effect,
        };
        Self {
            hub: Hub::new(room, config),
            now: origin(),
            next_id: 1,
            peers: Default::default(),
            pool: Vec::new(),
            limits,
            config,
            write: None,
        }
    }

    fn slot(&self, slot: u8) -> usize {
        usize::from(slot) % SLOTS
    }

    fn connect(&mut self, slot: usize) {
        if let Some(old) = self.peers[slot].id.take() {
            let out = self.hub.disconnect(old);
            self.deliver(out);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.hub.connect(id, self.now);
        self.peers[slot] = Peer {
            id: Some(id),
            ..Peer::default()
        };
    }

    fn pick<'a>(&'a self, picks: &[u8]) -> Vec<&'a Node> {
        if self.pool.is_empty() {
            return Vec::new();
        }
        picks
            .iter()
            .map(|p| &self.pool[usize::from(*p) % self.pool.len()])
            .collect()
    }

    fn make_node(&mut self, spec: &NodeSpec) -> Node {
        if let (Some(i), false) = (spec.reuse, self.pool.is_empty()) {
            return self.pool[usize::from(i) % self.pool.len()].clone();
        }
        let parents: Vec<&Node> = self.pick(&spec.parents[..spec.parents.len().min(5)]);
        let depth = Node::expected_depth(parents.iter().map(|p| p.depth)).unwrap_or(0);
        let depth = depth.saturating_add_signed(i64::from(spec.depth_error % 2));
        let parent_ids: Vec<NodeId> = parents.iter().map(|p| p.id).collect();
        let path = PATHS[usize::from(spec.path) % PATHS.len()];
        let blobs = spec
            .blob
            .map(|size| {
                vec![BlobRef {
                    hash: BlobHash([7; 32]),
                    size: u64::from(size),
                }]
            })
            .unwrap_or_default();
        let author = spec.author.then_some(AuthorKey([3; 32]));
        let payload = spec.payload[..spec.payload.len().min(80)].to_vec();
        let mut node = Node::new(&room_id(), parent_ids, depth, author, path, blobs, payload);
        match spec.corruption {
            Corruption::None => {}
            Corruption::ClaimedId => node.id.0[0] ^= 1,
            Corruption::Payload => node.payload = bytes::Bytes::from_static(b"tampered"),
            Corruption::UnsortedParents => node.parents.reverse(),
            Corruption::BadPath => node.path = "a//b".into(),
        }
        if matches!(spec.corruption, Corruption::None) {
            self.pool.push(node.clone());
        }
        node
    }

    fn hints(&self, choice: &HintsChoice) -> SyncHints {
        match choice {
            HintsChoice::Empty => SyncHints::default(),
            HintsChoice::InSync => SyncHints {
                digest: self.hub.room().digest(),
                watermark: None,
                heads: vec![],
                ..SyncHints::default()
            },
            HintsChoice::Claim {
                heads,
                watermark,
                digest_of,
                unsynced,
                estimator,
            } => SyncHints {
                digest: SetDigest::of(self.pick(digest_of).iter().map(|n| &n.id)),
                watermark: watermark.map(|(same_epoch, seq)| Watermark {
                    epoch: if same_epoch {
                        self.hub.room().epoch()
                    } else {
                        1
                    },
                    seq: u64::from(seq),
                }),
                heads: self
                    .pick(&heads[..heads.len().min(4)])
                    .iter()
                    .map(|n| n.id)
                    .collect(),
                unsynced: u64::from(*unsynced),
                estimator: estimator.clone().map(bytes::Bytes::from),
            },
        }
    }

    fn send(&mut self, slot: usize, message: &Message) {
        let frame = message.encode().expect("valid messages encode");
        self.send_raw(slot, &frame);
    }

    fn send_raw(&mut self, slot: usize, frame: &[u8]) {
        let Some(id) = self.peers[slot].id else {
            return;
        };
        let peer = &mut self.peers[slot];
        match protocol::decode(frame) {
            Ok(Message::Pack(p)) => peer
                .packs
                .push((p.number, p.nodes.iter().map(|n| n.id).collect())),
            Ok(Message::Hello(hello)) if !peer.hello_sent => {
                peer.hello_sent = true;
                peer.fresh = hello.hints == SyncHints::default();
                peer.subscribed = hello.subscribe.is_some();
                let limits = RelaySessionConfig::default().limits.patterns;
                peer.filter = hello.subscribe.as_ref().and_then(|sources| {
                    let parsed: Option<Vec<Pattern>> = sources
                        .iter()
                        .map(|p| Pattern::parse(p, &limits).ok())
                        .collect();
                    parsed.map(PatternSet::new)
                });
            }
            Ok(Message::Subscribe(_) | Message::Unsubscribe(_)) => {
                peer.filter = None;
                peer.fresh = false;
                // A backfill is a stream of its own: its resume points start over from the
                // oldest newly matching node.
                peer.through = 0;
            }
            _ => {}
        }
        let out = self.hub.handle_frame(id, frame, self.now);
        self.deliver(out);
    }

    /// The write in flight completes.
    fn persist(&mut self, fail: bool) {
        let Some(through) = self.write.take() else {
            return;
        };
        if !fail {
            let out = self.hub.persisted(through);
            return self.deliver(out);
        }
        let out = self.hub.persist_failed();
        assert_eq!(self.hub.session_count(), 0, "a failed write closes every session");
        self.deliver(out);
        // The room reloads from what was stored, in the same epoch.
        let durable = usize::try_from(self.hub.durable_seq()).unwrap_or(usize::MAX);
        let old = self.hub.room();
        let mut room = Room::new(room_id(), old.epoch(), self.limits, orphan_limits());
        for logged in old.nodes().take(durable) {
            let node = logged.node().expect("the fuzzed room keeps every encoding");
            room.restore(node).expect("stored nodes reload");
        }
        self.hub = Hub::new(room, self.config);
    }

    /// Checks every emitted frame and updates what each peer received.
    fn deliver(&mut self, out: Outbox) {
        // Output that may reveal unstored nodes is held until the write it asks for is
        // reported. Nothing held may already be out.
        let durable = self.hub.durable_seq();
        for outgoing in &out.frames {
            assert!(
                revealed_seq(&outgoing.frame) <= durable,
                "a frame left before the store held what it names"
            );
        }
        if let Some(through) = out.persist {
            assert!(self.write.is_none(), "two writes in flight");
            assert!(through > durable && through <= self.hub.room().seq());
            self.write = Some(through);
        }
        let room = self.hub.room();
        for outgoing in &out.frames {
            let message = protocol::decode(&outgoing.frame).expect("relay frames decode");
            let ty = message.message_type();
            assert_ne!(
                ty.direction(),
                Direction::ClientToRelay,
                "relay sent {ty:?}"
            );
            let to: Vec<SessionId> = self.hub.recipients(outgoing.to.clone()).collect();
            match &message {
                Message::Broadcast(b) => {
                    assert!(!b.nodes.is_empty());
                    for (k, node) in b.nodes.iter().enumerate() {
                        let seq = b.first_seq + k as u64;
                        assert_eq!(room.node_at(seq).map(|n| *n.id()), Some(node.id));
                    }
                }
                Message::Resolved(r) => {
                    for (id, outcome) in &r.outcomes {
                        match outcome {
                            Outcome::Accepted(seq) => {
                                assert_eq!(room.node_at(*seq).map(|n| *n.id()), Some(*id));
                            }
                            Outcome::Rejected(_) => {}
                            other => panic!("resolved carries {other:?}"),
                        }
                    }
                }
                _ => {}
            }
            for peer in self.peers.iter_mut() {
                let Some(id) = peer.id else { continue };
                if !to.contains(&id) {
                    continue;
                }
                match &message {
                    Message::Welcome(_) => {}
                    Message::Ack(ack) => {
                        // The oldest unanswered pack it answers: packs answered by an error
                        // instead are skipped.
                        let matches = |(number, ids): &(u64, Vec<NodeId>)| {
                            *number == ack.number
                                && ids.len() == ack.outcomes.len()
                                && ids.iter().zip(&ack.outcomes).all(|(id, outcome)| {
                                    match outcome {
                                        Outcome::Accepted(seq) | Outcome::Duplicate(seq) => {
                                            room.node_at(*seq).map(|n| *n.id()) == Some(*id)
                                        }
                                        Outcome::Pending | Outcome::Rejected(_) => true,
                                    }
                                })
                        };
                        let Some(at) = peer.packs.iter().position(matches) else {
                            panic!("an ack that answers no pack of its session: {ack:?}");
                        };
                        let (_, ids) = peer.packs.remove(at);
                        peer.packs.drain(..at);
                        for (id, outcome) in ids.iter().zip(&ack.outcomes) {
                            if matches!(outcome, Outcome::Accepted(_)) {
                                peer.accepted.insert(*id);
                            }
                        }
                    }
                    Message::Batch(batch) => {
                        assert!(batch.through >= peer.through, "resume point went back");
                        assert!(batch.through <= room.seq());
                        peer.through = batch.through;
                        for node in &batch.nodes {
                            if let Some(filter) = &peer.filter {
                                assert!(
                                    filter.matches(&node.path),
                                    "sent outside the subscription"
                                );
                            }
                            if peer.fresh && !peer.subscribed {
                                assert!(
                                    node.parents.iter().all(|p| peer.received.contains(p)),
                                    "a batch sent a child before its parent"
                                );
                            }
                            peer.received.insert(node.id);
                        }
                    }
                    Message::CatchUpDone(done) => {
                        assert!(done.seq <= room.seq());
                        // The room as of the number the stream reached.
                        let upto = usize::try_from(done.seq).unwrap_or(usize::MAX);
                        let expected = match &peer.filter {
                            Some(filter) => SetDigest::of(
                                room.nodes()
                                    .take(upto)
                                    .filter(|n| filter.matches(n.path()))
                                    .map(|n| n.id()),
                            ),
                            None if peer.subscribed => done.digest,
                            None => SetDigest::of(room.nodes().take(upto).map(|n| n.id())),
                        };
                        assert_eq!(done.digest, expected);
                        // After a sketch or refinement, the root is of the same set: the
                        // class's nodes for a subscribed session.
                        if let Some(root) = done.root
                            && (peer.filter.is_some() || !peer.subscribed)
                        {
                            let mut tree = PrefixTree::new();
                            for node in room.nodes().take(upto) {
                                if peer.filter.as_ref().is_none_or(|f| f.matches(node.path())) {
                                    tree.insert(*node.id());
                                }
                            }
                            let ours = tree.root();
                            assert_eq!((root.count, root.hash.0), (ours.count, ours.hash));
                        }
                        if peer.fresh {
                            assert_eq!(
                                SetDigest::of(&peer.received),
                                done.digest,
                                "catch-up from empty did not deliver the room"
                            );
                        }
                    }
                    Message::Broadcast(b) => {
                        for node in &b.nodes {
                            assert!(
                                !peer.accepted.contains(&node.id),
                                "a node was echoed to its sender"
                            );
                        }
                        if let Some(filter) = &peer.filter {
                            for node in &b.nodes {
                                assert!(
                                    filter.matches(&node.path),
                                    "sent outside the subscription"
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        for (closed, _) in &out.closes {
            for peer in self.peers.iter_mut() {
                if peer.id == Some(*closed) {
                    *peer = Peer::default();
                }
            }
        }
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Connect(slot) => {
                let slot = self.slot(*slot);
                self.connect(slot);
            }
            Op::Disconnect(slot) => {
                let slot = self.slot(*slot);
                if let Some(id) = self.peers[slot].id.take() {
                    let out = self.hub.disconnect(id);
                    self.deliver(out);
                }
            }
            Op::Hello {
                slot,
                capabilities,
                credit,
                subscribe,
                hints,
                min_version,
            } => {
                let slot = self.slot(*slot);
                let hints = self.hints(hints);
                let message = Message::Hello(Hello {
                    min_version: u16::from(*min_version % 3),
                    max_version: 1,
                    capabilities: Capabilities(u64::from(*capabilities)),
                    hints,
                    credit: u64::from(*credit),
                    subscribe: subscribe.as_deref().map(patterns),
                });
                self.send(slot, &message);
            }
            Op::Raw { slot, frame } => {
                let slot = self.slot(*slot);
                self.send_raw(slot, frame);
            }
            Op::Subscribe {
                slot,
                number,
                add,
                picks,
            } => {
                let slot = self.slot(*slot);
                let number = u64::from(*number);
                let patterns = patterns(picks);
                let message = if *add {
                    Message::Subscribe(Subscribe { number, patterns })
                } else {
                    Message::Unsubscribe(Unsubscribe { number, patterns })
                };
                self.send(slot, &message);
            }
            Op::Want {
                slot,
                picks,
                made_up,
                last,
                shared,
            } => {
                let slot = self.slot(*slot);
                let key = SketchKey::for_room(&room_id(), self.hub.room().epoch());
                let mut shorts: Vec<u64> = self
                    .pick(&picks[..picks.len().min(16)])
                    .iter()
                    .map(|n| key.short_id(&n.id))
                    .collect();
                shorts.extend(made_up.iter().take(16));
                // The room's own digest (as if the client held all of it) or garbage.
                let shared = shared.map(|(count, honest)| {
                    if honest {
                        self.hub.room().digest()
                    } else {
                        SetDigest {
                            count: u64::from(count),
                            sum: DigestSum([count; 32]),
                        }
                    }
                });
                let message = Message::Want(Want {
                    shorts: protocol::pack_shorts(shorts),
                    last: *last,
                    shared,
                });
                self.send(slot, &message);
            }
            Op::Retry { slot } => {
                let slot = self.slot(*slot);
                self.send(slot, &Message::Retry(Retry { cells_left: 3 }));
            }
            Op::BucketIds {
                slot,
                differing,
                shorts,
                sketches,
                raw_sketches,
                last,
            } => {
                let slot = self.slot(*slot);
                let sketches = match raw_sketches {
                    Some(raw) => bytes::Bytes::from(raw.clone()),
                    None => {
                        let entries: Vec<protocol::BucketSketch> = sketches
                            .iter()
                            .take(8)
                            .map(|(bucket, count, log2, fill)| {
                                let log2 = log2 % 4;
                                protocol::BucketSketch {
                                    bucket: u64::from(*bucket),
                                    count: u64::from(*count),
                                    log2,
                                    cells: bytes::Bytes::from(vec![*fill; (3usize << log2) * 13]),
                                }
                            })
                            .collect();
                        protocol::pack_bucket_sketches(&entries)
                    }
                };
                let message = Message::BucketIds(BucketIds {
                    differing: bytes::Bytes::from(differing.clone()),
                    shorts: protocol::pack_shorts(shorts.iter().take(64).copied()),
                    sketches,
                    last: *last,
                });
                self.send(slot, &message);
            }
            Op::Pack {
                slot,
                number,
                nodes,
            } => {
                let slot = self.slot(*slot);
                let nodes: Vec<Node> = nodes.iter().take(8).map(|s| self.make_node(s)).collect();
                let message = Message::Pack(Pack {
                    number: u64::from(*number),
                    nodes,
                });
                self.send(slot, &message);
            }
            Op::Credit { slot, bytes } => {
                let slot = self.slot(*slot);
                let message = Message::Credit(Credit {
                    bytes: u64::from(*bytes),
                });
                self.send(slot, &message);
            }
            Op::Ids {
                slot,
                picks,
                unknown,
                last,
            } => {
                let slot = self.slot(*slot);
                let mut ids: Vec<NodeId> = self
                    .pick(&picks[..picks.len().min(8)])
                    .iter()
                    .map(|n| n.id)
                    .collect();
                if *unknown {
                    ids.push(NodeId([0x5a; 32]));
                }
                self.send(slot, &Message::Ids(Ids { ids, last: *last }));
            }
            Op::Presence { slot, state } => {
                let slot = self.slot(*slot);
                let message = Message::Presence(Presence {
                    state: bytes::Bytes::from(state[..state.len().min(24)].to_vec()),
                });
                self.send(slot, &message);
            }
            Op::Corrupt { slot, at, byte } => {
                let slot = self.slot(*slot);
                let pool_node = self.pool.first().cloned();
                let message = match pool_node {
                    Some(node) => Message::Pack(Pack {
                        number: 1,
                        nodes: vec![node],
                    }),
                    None => Message::Credit(Credit { bytes: 100 }),
                };
                let mut frame = message.encode().expect("encodes").to_vec();
                let at = usize::from(*at) % frame.len();
                frame[at] = *byte;
                self.send_raw(slot, &frame);
            }
            Op::Advance { millis } => {
                self.now += Duration::from_millis(u64::from(*millis) * 10);
                if self.hub.poll_timeout().is_some_and(|t| t <= self.now) {
                    let out = self.hub.handle_timeout(self.now);
                    self.deliver(out);
                }
            }
            Op::Persist { fail } => self.persist(*fail),
        }
        self.check_room();
    }

    fn check_room(&self) {
        let room = self.hub.room();
        let nodes: Vec<Node> = room
            .nodes()
            .map(|logged| {
                let node = logged.node().expect("the fuzzed room keeps every encoding");
                let kept = (logged.id(), logged.parents(), logged.depth(), logged.path());
                let decoded = (
                    &node.id,
                    node.parents.as_slice(),
                    node.depth,
                    node.path.as_str(),
                );
                assert_eq!(kept, decoded, "what the room keeps is the node's");
                node
            })
            .collect();
        assert_eq!(room.seq(), nodes.len() as u64);
        assert_eq!(room.digest(), SetDigest::of(nodes.iter().map(|n| &n.id)));
        let mut named_as_parent = HashSet::new();
        let mut depth_of: HashMap<NodeId, u64> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            let seq = i as u64 + 1;
            assert_eq!(room.seq_of(&node.id), Some(seq));
            assert_eq!(node.check(room.id(), &self.limits), Ok(()));
            for parent in &node.parents {
                let parent_seq = room.seq_of(parent).expect("parents are present");
                assert!(parent_seq < seq, "a parent arrived after its child");
                named_as_parent.insert(*parent);
            }
            let expected = Node::expected_depth(node.parents.iter().map(|p| depth_of[p]));
            assert_eq!(expected, Some(node.depth), "depth rule");
            depth_of.insert(node.id, node.depth);
        }
        let heads: HashSet<NodeId> = room.heads().copied().collect();
        let expected: HashSet<NodeId> = nodes
            .iter()
            .map(|n| n.id)
            .filter(|id| !named_as_parent.contains(id))
            .collect();
        assert_eq!(heads, expected, "heads");
        assert!(room.orphan_count() <= 8);
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut world = World::new();
    for slot in 0..SLOTS {
        world.connect(slot);
    }
    for op in ops.iter().take(64) {
        world.step(op);
    }
    // What is still held goes out, and is checked, once its write is done.
    world.persist(false);
    world.check_room();
});

/// The highest arrival number a relay frame names (0 for frames that name none).
fn revealed_seq(frame: &[u8]) -> u64 {
    let numbered = |outcome: &Outcome| match outcome {
        Outcome::Accepted(seq) | Outcome::Duplicate(seq) => *seq,
        _ => 0,
    };
    match protocol::decode(frame) {
        Ok(Message::Ack(ack)) => ack.outcomes.iter().map(numbered).max().unwrap_or(0),
        Ok(Message::Resolved(r)) => r.outcomes.iter().map(|(_, o)| numbered(o)).max().unwrap_or(0),
        Ok(Message::Broadcast(b)) => b.first_seq + b.nodes.len() as u64 - 1,
        Ok(Message::Batch(b)) => b.through,
        Ok(Message::CatchUpDone(d)) => d.seq,
        // Only plan `in_sync` makes `welcome.seq` the client's watermark.
        Ok(Message::Welcome(w)) if w.plan == protocol::Plan::InSync => w.seq,
        Ok(Message::Subscribed(s)) => s.seq,
        _ => 0,
    }
}
