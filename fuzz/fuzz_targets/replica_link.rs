//! Relay frames into a client's `replica::Link` and `Replica` (protocol/README.md §2.2, §5–§8).
//!
//! The input is a sequence of operations: raw frames, structured relay frames (welcome with any
//! plan, batches, need lists, acks, resolved entries, broadcasts, catch_up_done with a right or
//! wrong digest, presence and error frames) built from a pool of valid nodes, local writes, and
//! reconnects. A `LinkError` ends the connection, as it would for the real client, and the next
//! operation reconnects; but it never says the link drove its session out of turn or could not
//! encode a frame. After every step the replica's documented invariants must hold:
//!
//! - every node once, parents before children, every parent stored, every node self-consistent;
//! - synced nodes' parents are synced;
//! - `digest`, `synced_digest`, `heads` and `hints` describe the stored and synced sets exactly;
//! - `unsynced` lists exactly the unsynced nodes, in order;
//! - the replica survives its own file format unchanged;
//! - every frame the link sends decodes and is a client-to-relay frame.

#![no_main]

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use weft::node::{Node, NodeId, NodeLimits, Rejection, RoomId};
use weft::protocol::{
    self, Ack, Batch, Broadcast, Buckets, Capabilities, CatchUpDone, Direction, ErrorCode,
    ErrorMessage, Message, Missing, Need, Outcome, Plan, PresenceUpdate, RelayLimits, Resolved,
    Sketch, Subscribed, Welcome,
};
use weft::recon::SetDigest;
use weft::recon::ibf::{self, SketchKey};
use weft::recon::index::SetIndex;
use weft::recon::prefix_tree::PrefixTree;
use weft::replica::{Link, LinkError, MAX_HELLO_HEADS, Replica};
use weft::session::ClientError;

#[derive(Arbitrary, Debug)]
enum Op {
    /// The relay's room grows by one node (not sent anywhere yet).
    Grow {
        parents: Vec<u8>,
        path: u8,
        payload: u8,
    },
    /// The application writes locally.
    Create {
        path: u8,
        payload: u8,
    },
    Reconnect,
    Raw(Vec<u8>),
    Welcome {
        plan: u8,
        /// Capability bits the relay claims (plans `sketch` and `refine` need `ibf` and `mst`).
        capabilities: u8,
        epoch: bool,
        seq: u8,
        small_limits: bool,
    },
    Need {
        picks: Vec<u8>,
        last: bool,
    },
    Batch {
        through: u8,
        picks: Vec<u8>,
        tamper: bool,
    },
    CatchUpDone {
        right_digest: bool,
        seq: u8,
    },
    Ack {
        number: u8,
        outcomes: Vec<OutcomeSpec>,
    },
    Resolved {
        entries: Vec<(u8, OutcomeSpec)>,
    },
    Broadcast {
        first_seq: u8,
        picks: Vec<u8>,
    },
    Presence {
        peer: u8,
        state: Vec<u8>,
    },
    Error(u16),
    /// The relay's real sketch of its nodes (or garbage cells), whole or as an extension.
    Sketch {
        log2: u8,
        extension: bool,
        honest: bool,
        garbage: Vec<u8>,
        foreign_key: bool,
    },
    /// The relay's real bucket summaries (or garbage).
    Buckets {
        depth: u8,
        expected: u32,
        honest: bool,
        garbage: Vec<u8>,
        last: bool,
    },
    Missing {
        picks: Vec<u8>,
        made_up: Vec<u64>,
        last: bool,
        relist: Vec<u8>,
    },
    /// The replica copies only these patterns (by index into `PATTERNS`) from the next
    /// connection on, or the whole room.
    Subscription(Option<Vec<u8>>),
    /// The application changes the subscription on the live connection.
    ChangeSubscription {
        add: bool,
        picks: Vec<u8>,
    },
    /// The relay says a subscription change is complete (in the right phase or not).
    Subscribed {
        number: u8,
        picks: Vec<u8>,
        seq: u8,
    },
}

const PATTERNS: &[&str] = &["**", "a", "a/**", "notes/*", "*/ß", "**/b"];

fn patterns(picks: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = picks
        .iter()
        .take(6)
        .map(|p| PATTERNS[usize::from(*p) % PATTERNS.len()].to_owned())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum OutcomeSpec {
    Accepted(u8),
    Duplicate(u8),
    Pending,
    Rejected(u8),
}

impl OutcomeSpec {
    fn outcome(self) -> Outcome {
        match self {
            Self::Accepted(s) => Outcome::Accepted(u64::from(s)),
            Self::Duplicate(s) => Outcome::Duplicate(u64::from(s)),
            Self::Pending => Outcome::Pending,
            Self::Rejected(r) => {
                Outcome::Rejected(Rejection::ALL[usize::from(r) % Rejection::ALL.len()])
            }
        }
    }
}

const PATHS: &[&str] = &["a", "a/b", "notes/today", "ü/ß"];

fn room_id() -> RoomId {
    RoomId::new("demo").expect("valid room id")
}

struct World {
    replica: Replica,
    link: Option<Link>,
    /// Nodes the relay holds, parents first.
    relay: Vec<Node>,
    /// Every node id either side ever made, for acks, needs and resolved entries.
    known: Vec<NodeId>,
    next_payload: u64,
}

impl World {
    fn new() -> Self {
        Self {
            replica: Replica::new(room_id()),
            link: None,
            relay: Vec::new(),
            known: Vec::new(),
            next_payload: 0,
        }
    }

    fn pick_relay(&self, picks: &[u8]) -> Vec<Node> {
        if self.relay.is_empty() {
            return Vec::new();
        }
        picks
            .iter()
            .take(8)
            .map(|p| self.relay[usize::from(*p) % self.relay.len()].clone())
            .collect()
    }

    fn pick_known(&self, pick: u8) -> NodeId {
        if self.known.is_empty() {
            return NodeId([pick; 32]);
        }
        self.known[usize::from(pick) % self.known.len()]
    }

    fn key(&self) -> SketchKey {
        SketchKey::for_room(&room_id(), 1)
    }

    fn ensure_link(&mut self) {
        if self.link.is_none() {
            let (link, hello) =
                Link::start(&self.replica, Capabilities::SUPPORTED, 4096).expect("hello encodes");
            check_sent(&[hello]);
            self.link = Some(link);
        }
    }

    fn feed(&mut self, frame: &[u8]) {
        self.ensure_link();
        let Some(link) = self.link.as_mut() else {
            return;
        };
        match link.handle_frame(&mut self.replica, frame) {
            Ok(out) => check_sent(&out.send),
            Err(error) => {
                check_error(&error);
                // The connection is dropped; the next frame starts a new one.
                self.link = None;
            }
        }
    }

    fn send(&mut self, message: Message) {
        let frame = message.encode().expect("valid messages encode");
        self.feed(&frame);
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Grow {
                parents,
                path,
                payload,
            } => {
                let mut parents = self.pick_relay(&parents[..parents.len().min(3)]);
                parents.sort_by_key(|n| n.id);
                parents.dedup_by_key(|n| n.id);
                let depth = Node::expected_depth(parents.iter().map(|p| p.depth)).unwrap_or(0);
                self.next_payload += 1;
                let node = Node::new(
                    &room_id(),
                    parents.iter().map(|p| p.id).collect(),
                    depth,
                    None,
                    PATHS[usize::from(*path) % PATHS.len()],
                    vec![],
                    [*payload].repeat(usize::from(*payload % 4)),
                );
                self.known.push(node.id);
                self.relay.push(node);
            }
            Op::Create { path, payload } => {
                self.next_payload += 1;
                let payload = [vec![*payload], self.next_payload.to_le_bytes().to_vec()].concat();
                if let Ok(id) = self
                    .replica
                    .create(PATHS[usize::from(*path) % PATHS.len()], payload)
                {
                    self.known.push(id);
                }
                if let Some(link) = self.link.as_mut() {
                    match link.push(&mut self.replica) {
                        Ok(out) => check_sent(&out.send),
                        Err(error) => {
                            check_error(&error);
                            self.link = None;
                        }
                    }
                }
            }
            Op::Reconnect => self.link = None,
            Op::Raw(frame) => self.feed(frame),
            Op::Welcome {
                plan,
                capabilities,
                epoch,
                seq,
                small_limits,
            } => {
                let mut limits = RelayLimits::default();
                if *small_limits {
                    limits.max_ids = 2;
                    limits.max_pack_nodes = 2;
                    limits.max_frame = 300;
                }
                self.send(Message::Welcome(Welcome {
                    version: 1,
                    capabilities: Capabilities(
                        u64::from(*capabilities) & Capabilities::SUPPORTED.0,
                    ),
                    peer: 1,
                    epoch: u64::from(*epoch),
                    seq: u64::from(*seq),
                    plan: [
                        Plan::InSync,
                        Plan::CatchUp,
                        Plan::SendIds,
                        Plan::Sketch,
                        Plan::Refine,
                    ][usize::from(*plan) % 5],
                    limits: Some(limits),
                }));
            }
            Op::Sketch {
                log2,
                extension,
                honest,
                garbage,
                foreign_key,
            } => {
                let key = if *foreign_key {
                    SketchKey([7; 16])
                } else {
                    self.key()
                };
                let log2 = log2 % 7;
                let cells = if *honest {
                    let mut sets = SetIndex::new(key);
                    self.relay.iter().for_each(|n| {
                        sets.insert(n.id);
                    });
                    let sketch = sets.sketch_at(log2).expect("small sizes exist");
                    let cells = if *extension {
                        sketch.lower_halves().unwrap_or_default()
                    } else {
                        sketch.cells().to_vec()
                    };
                    Bytes::from(ibf::encode_cells(&cells))
                } else {
                    Bytes::from(garbage.clone())
                };
                self.send(Message::Sketch(Sketch {
                    log2,
                    extension: *extension,
                    key: Bytes::copy_from_slice(key.wire()),
                    cells,
                }));
            }
            Op::Buckets {
                depth,
                expected,
                honest,
                garbage,
                last,
            } => {
                let depth = 1 + depth % 2;
                let summaries = if *honest {
                    let mut tree = PrefixTree::new();
                    self.relay.iter().for_each(|n| {
                        tree.insert(n.id);
                    });
                    let level: Vec<protocol::BucketSummary> =
                        tree.level(depth).iter().map(|s| s.truncated()).collect();
                    protocol::pack_buckets(&level)
                } else {
                    Bytes::from(garbage.clone())
                };
                self.send(Message::Buckets(Buckets {
                    depth,
                    expected: u64::from(*expected),
                    key: Bytes::copy_from_slice(self.key().wire()),
                    summaries,
                    last: *last || *honest,
                }));
            }
            Op::Missing {
                picks,
                made_up,
                last,
                relist,
            } => {
                let key = self.key();
                let shorts = picks
                    .iter()
                    .take(8)
                    .map(|p| key.short_id(&self.pick_known(*p)))
                    .chain(made_up.iter().take(8).copied());
                self.send(Message::Missing(Missing {
                    shorts: protocol::pack_shorts(shorts),
                    last: *last,
                    relist: Bytes::from(relist.clone()),
                }));
            }
            Op::Need { picks, last } => {
                let ids = picks.iter().take(8).map(|p| self.pick_known(*p)).collect();
                self.send(Message::Need(Need { ids, last: *last }));
            }
            Op::Batch {
                through,
                picks,
                tamper,
            } => {
                let mut nodes = self.pick_relay(picks);
                if let (true, Some(node)) = (*tamper, nodes.first_mut()) {
                    node.payload = Bytes::from_static(b"tampered");
                }
                self.send(Message::Batch(Batch {
                    through: u64::from(*through),
                    nodes,
                }));
            }
            Op::CatchUpDone { right_digest, seq } => {
                let digest = if *right_digest {
                    self.replica.synced_digest()
                } else {
                    SetDigest::of(self.relay.iter().map(|n| &n.id))
                };
                self.send(Message::CatchUpDone(CatchUpDone {
                    seq: u64::from(*seq),
                    digest,
                    root: None,
                }));
            }
            Op::Ack { number, outcomes } => {
                self.send(Message::Ack(Ack {
                    number: u64::from(*number % 8),
                    outcomes: outcomes.iter().take(8).map(|o| o.outcome()).collect(),
                }));
            }
            Op::Resolved { entries } => {
                let outcomes = entries
                    .iter()
                    .take(8)
                    .map(|(p, o)| (self.pick_known(*p), o.outcome()))
                    .collect();
                self.send(Message::Resolved(Resolved { outcomes }));
            }
            Op::Broadcast { first_seq, picks } => {
                let nodes = self.pick_relay(picks);
                self.send(Message::Broadcast(Broadcast {
                    first_seq: u64::from(*first_seq),
                    nodes,
                }));
            }
            Op::Presence { peer, state } => {
                self.send(Message::PresenceUpdate(PresenceUpdate {
                    peer: u64::from(*peer),
                    state: Bytes::from(state.clone()),
                }));
            }
            Op::Subscription(picks) => {
                // The fuzzer's patterns are all valid.
                let set = picks
                    .as_deref()
                    .and_then(|p| weft::replica::read_subscription(&patterns(p)).ok());
                self.replica.set_subscription(set);
            }
            Op::ChangeSubscription { add, picks } => {
                if let Some(link) = self.link.as_mut() {
                    match link.change_subscription(patterns(picks), *add) {
                        Ok(frame) => check_sent(&frame.into_iter().collect::<Vec<_>>()),
                        Err(error) => {
                            check_error(&error);
                            self.link = None;
                        }
                    }
                }
            }
            Op::Subscribed { number, picks, seq } => {
                self.send(Message::Subscribed(Subscribed {
                    number: u64::from(*number),
                    patterns: patterns(picks),
                    seq: u64::from(*seq),
                }));
            }
            Op::Error(code) => {
                self.send(Message::ErrorMessage(ErrorMessage {
                    code: *code,
                    message_type: 8,
                    detail: ErrorCode::Unexpected.meaning().into(),
                }));
            }
        }
        check_replica(&self.replica);
    }
}

/// A link answers every turn its session hands it, and encodes every frame it makes.
fn check_error(error: &LinkError) {
    assert!(
        !matches!(
            error,
            LinkError::Encode(_)
                | LinkError::Session(ClientError::Misuse { .. } | ClientError::Encode(_))
        ),
        "the link failed on its own: {error}"
    );
}

fn check_sent(frames: &[Bytes]) {
    for frame in frames {
        let message = protocol::decode(frame).expect("the link sends valid frames");
        assert_ne!(message.message_type().direction(), Direction::RelayToClient);
    }
}

fn check_replica(replica: &Replica) {
    let limits = NodeLimits {
        max_payload: u32::MAX,
        ..NodeLimits::default()
    };
    let order: Vec<NodeId> = replica.ids().copied().collect();
    assert_eq!(order.len(), replica.len());
    let mut seen: HashSet<NodeId> = HashSet::new();
    let mut named_as_parent: HashSet<NodeId> = HashSet::new();
    let mut synced_children: HashMap<NodeId, bool> = HashMap::new();
    for id in &order {
        let node = replica.get(id).expect("listed nodes are stored");
        assert_eq!(node.id, *id);
        assert_eq!(node.check(replica.room(), &limits), Ok(()));
        for parent in &node.parents {
            // A subscribed replica may lack parents outside its subscription (the relay
            // vouched for them); any parent it holds comes first.
            let absent = !replica.contains(parent);
            assert!(
                seen.contains(parent) || (absent && replica.subscription().is_some()),
                "parent after child, or missing"
            );
            named_as_parent.insert(*parent);
            if replica.is_synced(id) && !absent {
                assert!(
                    replica.is_synced(parent),
                    "synced node with an unsynced parent"
                );
                synced_children.insert(*parent, true);
            }
        }
        assert!(seen.insert(*id), "a node is listed twice");
    }
    // Digests cover the scope: the nodes matching the subscription, or all of them.
    let in_scope = |id: &NodeId| {
        replica
            .subscription()
            .is_none_or(|s| replica.get(id).is_some_and(|n| s.matches(&n.path)))
    };
    let scope: Vec<NodeId> = order.iter().copied().filter(in_scope).collect();
    assert_eq!(replica.digest(), SetDigest::of(&scope));
    assert_eq!(replica.scope_len(), scope.len() as u64);
    let synced: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|id| replica.is_synced(id))
        .collect();
    let synced_in_scope: Vec<NodeId> = synced.iter().copied().filter(in_scope).collect();
    assert_eq!(replica.synced_digest(), SetDigest::of(&synced_in_scope));
    let heads: HashSet<NodeId> = replica.heads().copied().collect();
    let expected: HashSet<NodeId> = order
        .iter()
        .copied()
        .filter(|id| !named_as_parent.contains(id))
        .collect();
    assert_eq!(heads, expected, "heads");
    let unsynced: Vec<NodeId> = replica.unsynced().map(|n| n.id).collect();
    let expected: Vec<NodeId> = order
        .iter()
        .copied()
        .filter(|id| !replica.is_synced(id))
        .collect();
    assert_eq!(unsynced, expected, "unsynced");
    let hints = replica.hints(false);
    assert_eq!(hints.digest, replica.digest());
    let synced_heads: HashSet<NodeId> = synced
        .iter()
        .copied()
        .filter(|id| !synced_children.contains_key(id))
        .collect();
    // Either the synced heads exactly, or the one head no relay can know, which asks for the
    // id list (more than MAX_HELLO_HEADS heads, or sync state forgotten).
    let sentinel = [NodeId([0; 32])];
    if synced_heads.len() > MAX_HELLO_HEADS {
        assert_eq!(hints.heads, sentinel, "too many heads for one hello");
    } else if hints.heads != sentinel {
        let hinted: HashSet<NodeId> = hints.heads.iter().copied().collect();
        assert_eq!(hinted, synced_heads, "hello heads are the synced heads");
        assert_eq!(hinted.len(), hints.heads.len(), "no repeated head");
    }
    assert_eq!(hints.watermark, replica.watermark());
    let bytes = replica.to_bytes().expect("a replica serializes");
    let back = Replica::from_bytes(&bytes).expect("and reads back");
    assert_eq!(
        back.ids().collect::<Vec<_>>(),
        order.iter().collect::<Vec<_>>()
    );
    assert_eq!(back.synced_digest(), replica.synced_digest());
    assert_eq!(back.watermark(), replica.watermark());
    assert_eq!(back.subscription(), replica.subscription());
}

fuzz_target!(|ops: Vec<Op>| {
    let mut world = World::new();
    for op in ops.iter().take(96) {
        world.step(op);
    }
});
