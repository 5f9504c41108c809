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
    while let Some(batch) = unpack(room.next_batch(cursor, budget, u64::MAX)) {
        assert!(!batch.nodes.is_empty());
        batches.push(batch);
        assert!(batches.len() < 100_000, "cursor does not end");
    }
    // Done is sticky.
    assert!(matches!(
        room.next_batch(cursor, budget, u64::MAX),
        BatchStep::Done
    ));
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

/// `nodes` admitted into a room with a payload budget, all marked stored.
fn budgeted(nodes: &[Node], budget: usize) -> Room {
    let mut room = empty_room().with_payload_budget(budget);
    accept_all(&mut room, &nodes.iter().collect::<Vec<_>>(), t0());
    room.mark_stored(room.seq());
    room
}

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

mod admission;
mod catch_up;
mod cursors;
mod fanout;
mod handshake;
mod payload_budget;
mod presence;
mod subscriptions;
