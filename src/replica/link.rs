//! One connection's worth of sync between a replica and the relay.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::{InsertError, Replica};
use crate::node::{Node, NodeId, TreeHash};
use crate::pattern::PatternSet;
use crate::protocol::{
    self, BucketSketch, BucketSummary, Buckets, Capabilities, EncodeError, ErrorMessage, Ids,
    Message, MessageType, Missing, Outcome, Pack, Plan, RelayLimits, Retry, Sketch, TreeRoot,
};
use crate::recon::ibf::{self, Cell, Ibf, K, SketchError, SketchKey};
use crate::recon::prefix_tree::Prefix;
use crate::recon::refine::BucketView;
use crate::session::{ClientError, ClientEvent, ClientSession};

/// Something the application may want to know after a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// The relay chose how this connection reconciles (at `welcome`, and again if a sketch
    /// falls back to refinement).
    Plan(Plan),
    /// Reconciliation finished and was verified: the replica holds the relay's set as of `seq`.
    Synced {
        /// The relay arrival number the replica is now complete up to.
        seq: u64,
    },
    /// A node from the relay was stored (catch-up or live); a copy of it, made while it is
    /// at hand, so that the application need not look it up again.
    Arrived(Node),
    /// Final outcome of one of our nodes: accepted, duplicate or rejected. Rejected nodes and
    /// their descendants have been removed from the replica.
    Settled {
        /// The node.
        id: NodeId,
        /// What the relay did with it.
        outcome: Outcome,
    },
    /// A peer's presence changed (empty state: cleared or left).
    Presence {
        /// The peer's number.
        peer: u64,
        /// Its state.
        state: Bytes,
    },
    /// The relay complained about one of our frames.
    RelayError(ErrorMessage),
    /// One of our nodes is over a limit the relay announced in `welcome`, so the relay can never
    /// accept it. It was not sent, and it and its descendants have been removed from the
    /// replica.
    TooLarge {
        /// The node.
        id: NodeId,
        /// Which limit it exceeds, and by how much.
        over: OverLimit,
    },
    /// A subscription change is complete: the replica now copies `patterns` and holds every
    /// matching node up to `seq`.
    Subscribed {
        /// The whole subscription, canonical and sorted.
        patterns: Vec<String>,
        /// The relay arrival number the replica is complete up to.
        seq: u64,
    },
}

/// A node over one of the relay's size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    /// Which limit.
    pub limit: SizeLimit,
    /// The node's size against that limit, in bytes.
    pub size: u64,
    /// The limit, in bytes.
    pub max: u64,
}

/// A size limit from `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeLimit {
    /// `max_payload`: the payload alone.
    Payload,
    /// `max_frame`: the node in a `pack` frame of its own.
    Frame,
}

/// Envelope, pack header and number take under 16 bytes.
const PACK_OVERHEAD: usize = 16;

/// What to send and report after a frame.
#[derive(Debug, Default)]
#[must_use]
pub struct LinkOutput {
    /// Frames to send, in order.
    pub send: Vec<Bytes>,
    /// Events for the application.
    pub events: Vec<SyncEvent>,
}

/// The connection must be dropped; reconnecting starts a fresh [`Link`].
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The relay broke the protocol.
    #[error(transparent)]
    Session(#[from] ClientError),
    /// A frame could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The relay sent a node the replica cannot store. If a parent was missing, the replica
    /// forgot what it knew about the relay, as for [`Diverged`](Self::Diverged).
    #[error("relay sent node {id} that cannot be stored: {error}")]
    BadNode {
        /// The node.
        id: NodeId,
        /// Why.
        error: InsertError,
    },
    /// An `ack` did not match the pack it names.
    #[error("ack for unknown pack {0} or with the wrong number of outcomes")]
    BadAck(u64),
    /// A reconciliation frame (`sketch`, `buckets`, `missing`) could not be used.
    #[error("relay sent an unusable {what:?} frame: {detail}")]
    BadRecon {
        /// The frame's type.
        what: MessageType,
        /// What was wrong.
        detail: String,
    },
    /// After catch-up the synced set differed from the relay's. The replica forgot what it knew
    /// about the relay, so the next connection reconciles by id list.
    #[error("replica diverged from the relay after catch-up; resyncing by id list")]
    Diverged,
}

/// Drives one connection for a replica: feed it every received frame, send what it returns.
pub struct Link {
    session: ClientSession,
    epoch: u64,
    limits: RelayLimits,
    next_pack: u64,
    inflight: HashMap<u64, Vec<NodeId>>,
    /// Sent in this connection and not yet settled.
    outstanding: HashSet<NodeId>,
    need: HashSet<NodeId>,
    /// The replica's size and digest when `hello` was built: an `InSync` answer is about
    /// exactly those nodes, not about any written since.
    hello_len: usize,
    hello_generation: u64,
    /// Unsynced nodes before this position were already sent on this connection (valid while
    /// the replica's generation is `push_generation`).
    push_from: usize,
    push_generation: u64,
    /// The ids sent in `ids` frames, or covered by `bucket_ids`: the relay's `need` or
    /// `missing` answer is about exactly those.
    ids_sent: HashSet<NodeId>,
    /// Sketch reconciliation in progress.
    sketch: SketchState,
    /// Refinement in progress.
    refine: RefineState,
}

/// The relay's sketch as it arrives, and the last complete one (kept for an extension).
#[derive(Default)]
struct SketchState {
    key: Option<SketchKey>,
    /// Cells of the sketch (or extension) being received, with its size and kind.
    receiving: Option<(u8, bool)>,
    cells: Vec<Cell>,
    /// The last complete sketch, which an extension builds on.
    complete: Option<Ibf>,
    /// The replica's sync marks were set from a decode the relay has not verified yet.
    tentative: bool,
}

/// Bucket summaries as they arrive, then the relay's `missing` answer.
#[derive(Default)]
struct RefineState {
    depth: u8,
    expected: u64,
    key: Option<SketchKey>,
    summaries: Vec<BucketSummary>,
    missing: Vec<u64>,
    /// The relay asked for a second round (some bucket sketch did not settle).
    relisted: bool,
}

impl Link {
    /// Starts a connection; returns the link and the `hello` frame to send first.
    pub fn start(
        replica: &Replica,
        capabilities: Capabilities,
        window: u64,
    ) -> Result<(Self, Bytes), LinkError> {
        let sketches = Capabilities::IBF.union(Capabilities::MST);
        // After a failed verification, short ids might fail the same way again: reconcile by
        // the exact id list once, then offer sketches again.
        let capabilities = if replica.needs_exact_resync() {
            Capabilities(capabilities.0 & !sketches.0)
        } else {
            capabilities
        };
        let hints = replica.hints(capabilities.contains(sketches));
        let subscribe = replica.subscription().map(PatternSet::canonical);
        let capabilities = if subscribe.is_some() {
            capabilities.union(Capabilities::SUBSCRIPTIONS)
        } else {
            capabilities
        };
        let (session, hello) = ClientSession::start(hints, capabilities, window, subscribe)?;
        let link = Self {
            session,
            epoch: 0,
            limits: RelayLimits::default(),
            next_pack: 1,
            inflight: HashMap::new(),
            outstanding: HashSet::new(),
            need: HashSet::new(),
            hello_len: replica.len(),
            hello_generation: replica.generation(),
            push_from: 0,
            push_generation: replica.generation(),
            ids_sent: HashSet::new(),
            sketch: SketchState::default(),
            refine: RefineState::default(),
        };
        Ok((link, hello))
    }

    /// Whether reconciliation is over and local nodes flow as packs.
    pub fn is_steady(&self) -> bool {
        self.session.is_steady()
    }

    /// Capabilities in effect.
    pub fn capabilities(&self) -> Capabilities {
        self.session.capabilities()
    }

    /// Limits the relay announced (defaults before `welcome`).
    pub fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    /// Handles one frame from the relay.
    pub fn handle_frame(
        &mut self,
        replica: &mut Replica,
        frame: &[u8],
    ) -> Result<LinkOutput, LinkError> {
        let mut out = LinkOutput::default();
        match self.session.handle_frame(frame)? {
            ClientEvent::Welcome(welcome) => {
                self.epoch = welcome.epoch;
                self.limits = welcome.limits();
                out.events.push(SyncEvent::Plan(welcome.plan));
                if replica.enter_epoch(welcome.epoch) {
                    // Marks were forgotten, no node moved: what `hello` described still holds.
                    self.hello_generation = replica.generation();
                }
                match welcome.plan {
                    Plan::InSync => {
                        // The relay holds what the replica held at `hello`: its first
                        // `hello_len` nodes, as long as nothing moved since (the generation
                        // says). Nodes written since are not covered and must still be pushed.
                        // Only the unsynced ones need marking, so this costs O(unsynced).
                        if replica.generation() == self.hello_generation {
                            // The relay compared the scope: nodes outside the subscription
                            // are still pushed (and acked as duplicates if it holds them).
                            for id in replica.unsynced_before(self.hello_len) {
                                if replica.in_scope(&id) {
                                    replica.mark_synced(&id);
                                }
                            }
                            replica.complete_through(self.epoch, welcome.seq);
                        }
                        // Otherwise the replica lost nodes meanwhile: claim nothing; pushing
                        // the unsynced nodes gets them acked (as duplicates) instead.
                        out.events.push(SyncEvent::Synced { seq: welcome.seq });
                    }
                    Plan::CatchUp | Plan::Sketch | Plan::Refine => {}
                    Plan::SendIds => self.send_ids(replica, &mut out)?,
                }
            }
            ClientEvent::Sketch(sketch) => self.on_sketch(replica, sketch, &mut out)?,
            ClientEvent::Buckets(buckets) => self.on_buckets(replica, buckets, &mut out)?,
            ClientEvent::Missing(missing) => self.on_missing(replica, missing, &mut out)?,
            ClientEvent::Need(need) => {
                self.need.extend(need.ids);
                if need.last {
                    // The relay holds every id we sent that it does not need; nodes written
                    // after the `ids` frames were built are not covered.
                    let need = std::mem::take(&mut self.need);
                    let sent = std::mem::take(&mut self.ids_sent);
                    replica.reset_sync(|id| sent.contains(id) && !need.contains(id));
                }
            }
            ClientEvent::Batch(batch) => {
                self.sketch.tentative = false;
                for node in batch.nodes {
                    let id = node.id;
                    if replica
                        .insert(node, true)
                        .map_err(|error| bad_node(replica, id, error))?
                    {
                        out.events
                            .extend(replica.get(&id).cloned().map(SyncEvent::Arrived));
                    }
                }
                replica.complete_through(self.epoch, batch.through);
                out.send.extend(self.session.poll_credit()?);
            }
            ClientEvent::CaughtUp(done) => {
                let root_differs = match (done.root, self.sketch.key.or(self.refine.key)) {
                    (Some(root), Some(key)) => synced_root(replica, key) != root,
                    // A root we cannot check (no sketch key yet) is not trusted either way.
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if replica.synced_digest() != done.digest || root_differs {
                    replica.forget_sync();
                    return Err(LinkError::Diverged);
                }
                replica.complete_through(self.epoch, done.seq);
                out.events.push(SyncEvent::Synced { seq: done.seq });
            }
            ClientEvent::Ack(ack) => {
                let ids = self
                    .inflight
                    .remove(&ack.number)
                    .ok_or(LinkError::BadAck(ack.number))?;
                if ids.len() != ack.outcomes.len() {
                    return Err(LinkError::BadAck(ack.number));
                }
                for (id, outcome) in ids.into_iter().zip(ack.outcomes) {
                    self.settle(replica, id, outcome, &mut out);
                }
            }
            ClientEvent::Resolved(resolved) => {
                for (id, outcome) in resolved.outcomes {
                    if self.outstanding.contains(&id) {
                        self.settle(replica, id, outcome, &mut out);
                    }
                }
            }
            ClientEvent::Broadcast(broadcast) => {
                for (node, seq) in broadcast.nodes.into_iter().zip(broadcast.first_seq..) {
                    let id = node.id;
                    if replica
                        .insert(node, true)
                        .map_err(|error| bad_node(replica, id, error))?
                    {
                        out.events
                            .extend(replica.get(&id).cloned().map(SyncEvent::Arrived));
                    }
                    self.received(replica, seq);
                }
            }
            ClientEvent::Subscribed(done) => {
                let patterns = super::read_subscription(&done.patterns)
                    .map_err(|e| bad_frame(MessageType::Subscribed)(e.to_string()))?;
                replica.subscription_changed(patterns, self.epoch, done.seq);
                out.events.push(SyncEvent::Subscribed {
                    patterns: done.patterns,
                    seq: done.seq,
                });
            }
            ClientEvent::Presence(update) => {
                out.events.push(SyncEvent::Presence {
                    peer: update.peer,
                    state: update.state,
                });
            }
            ClientEvent::RelayError(error) => out.events.push(SyncEvent::RelayError(error)),
        }
        if self.session.is_steady() {
            let pushed = self.push(replica)?;
            out.send.extend(pushed.send);
            out.events.extend(pushed.events);
        }
        Ok(out)
    }

    fn settle(
        &mut self,
        replica: &mut Replica,
        id: NodeId,
        outcome: Outcome,
        out: &mut LinkOutput,
    ) {
        match outcome {
            Outcome::Accepted(seq) | Outcome::Duplicate(seq) => {
                replica.mark_synced(&id);
                // A subscribed replica's watermark moves with broadcasts only: the ack of a
                // pack comes before the broadcasts of the lower-numbered nodes it released from
                // the orphan buffer (§7.1), so it says nothing about those.
                if replica.subscription().is_none() {
                    replica.received_seq(self.epoch, seq);
                }
            }
            // Still waiting for parents on the relay; a `resolved` entry settles it.
            Outcome::Pending => return,
            // The parents did not reach the relay in time (a subset replica cannot supply
            // parents outside its subscription): the node stays, unsynced, and the next
            // connection pushes it again.
            Outcome::Rejected(reason) if reason.is_transient() => {}
            Outcome::Rejected(_) => replica.discard(&id),
        }
        self.outstanding.remove(&id);
        out.events.push(SyncEvent::Settled { id, outcome });
    }

    /// Node `seq` arrived live. A subscribed replica never sees the numbers of nodes outside
    /// its subscription, but in steady state the relay broadcasts every matching node in
    /// order, so the watermark moves straight to `seq`; during a backfill older matching
    /// nodes are still on their way, and `subscribed` sets it.
    fn received(&mut self, replica: &mut Replica, seq: u64) {
        if replica.subscription().is_none() {
            replica.received_seq(self.epoch, seq);
        } else if !self.session.is_backfilling() {
            replica.complete_through(self.epoch, seq);
        }
    }

    /// A `subscribe` (`add`) or `unsubscribe` of `patterns`, if the session is steady and
    /// negotiated subscriptions and no other change is in flight; the relay answers with a
    /// backfill and [`SyncEvent::Subscribed`].
    pub fn change_subscription(
        &mut self,
        patterns: Vec<String>,
        add: bool,
    ) -> Result<Option<Bytes>, LinkError> {
        if !self
            .session
            .capabilities()
            .contains(Capabilities::SUBSCRIPTIONS)
        {
            return Ok(None);
        }
        let number = self.next_pack;
        self.next_pack += 1;
        Ok(self.session.change_subscription(number, patterns, add)?)
    }

    /// Packs for every unsynced node not yet sent on this connection, within the relay's limits.
    /// Empty until the session is steady. A node over a limit from `welcome` is not sent: it is
    /// removed from the replica with its descendants and reported as [`SyncEvent::TooLarge`].
    pub fn push(&mut self, replica: &mut Replica) -> Result<LinkOutput, LinkError> {
        let mut out = LinkOutput::default();
        if !self.session.is_steady() {
            return Ok(out);
        }
        let max_nodes = (self.limits.max_pack_nodes as usize).max(1);
        let max_bytes = (self.limits.max_frame as usize).saturating_sub(PACK_OVERHEAD);
        let max_payload = self.limits.node.max_payload as usize;
        let mut nodes = Vec::new();
        let mut size = 0usize;
        let mut too_large = Vec::new();
        let mut doomed = HashSet::new();
        // Only nodes after the cursor are new to this connection: a push per frame must not
        // rescan everything already in flight.
        if replica.generation() != self.push_generation {
            self.push_generation = replica.generation();
            self.push_from = 0;
        }
        for (pos, node) in replica.unsynced_from(self.push_from) {
            self.push_from = pos.saturating_add(1);
            if self.outstanding.contains(&node.id) {
                continue;
            }
            // Built on a node that is never sent: it goes with that node.
            if node.parents.iter().any(|p| doomed.contains(p)) {
                doomed.insert(node.id);
                continue;
            }
            let node_size = node.wire_size_bound();
            let over = if node.payload.len() > max_payload {
                Some((SizeLimit::Payload, node.payload.len(), max_payload))
            } else if node_size > max_bytes {
                let frame = node_size.saturating_add(PACK_OVERHEAD);
                Some((SizeLimit::Frame, frame, self.limits.max_frame as usize))
            } else {
                None
            };
            if let Some((limit, size, max)) = over {
                let over = OverLimit {
                    limit,
                    size: size as u64,
                    max: max as u64,
                };
                doomed.insert(node.id);
                too_large.push((node.id, over));
                continue;
            }
            if !nodes.is_empty()
                && (nodes.len() >= max_nodes || size.saturating_add(node_size) > max_bytes)
            {
                out.send.push(self.pack(std::mem::take(&mut nodes))?);
                size = 0;
            }
            size = size.saturating_add(node_size);
            nodes.push(node.clone());
        }
        if !nodes.is_empty() {
            out.send.push(self.pack(nodes)?);
        }
        for (id, over) in too_large {
            replica.discard(&id);
            out.events.push(SyncEvent::TooLarge { id, over });
        }
        Ok(out)
    }

    /// Our nodes sent on this connection and not settled yet.
    pub fn in_flight(&self) -> impl Iterator<Item = &NodeId> {
        self.outstanding.iter()
    }

    fn pack(&mut self, nodes: Vec<Node>) -> Result<Bytes, LinkError> {
        let number = self.next_pack;
        self.next_pack = self.next_pack.saturating_add(1);
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        self.outstanding.extend(ids.iter().copied());
        self.inflight.insert(number, ids);
        Ok(Message::Pack(Pack { number, nodes }).encode()?)
    }

    /// A `sketch` frame: collect its cells; once the sketch is complete, decode it against
    /// the replica's own and answer `want` or `retry` (protocol/README.md §5.7).
    fn on_sketch(
        &mut self,
        replica: &mut Replica,
        frame: Sketch,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let bad = bad_frame(MessageType::Sketch);
        let key = SketchKey::from_wire(&frame.key).ok_or_else(|| bad("bad key".into()))?;
        if self.sketch.key.is_some_and(|k| k != key) {
            return Err(bad("the key changed within the session".into()));
        }
        self.sketch.key = Some(key);
        let shape = (frame.log2, frame.extension);
        match self.sketch.receiving {
            None => self.sketch.receiving = Some(shape),
            Some(current) if current == shape => {}
            Some(_) => return Err(bad("a frame of another sketch arrived mid-sketch".into())),
        }
        let cells = ibf::decode_cells(&frame.cells).map_err(|e| bad(e.to_string()))?;
        // A whole sketch at log2 has K·2^log2 cells; an extension half of that.
        let expected_log2 = if frame.extension {
            frame
                .log2
                .checked_sub(1)
                .ok_or_else(|| bad("extension to size 2^0".into()))?
        } else {
            frame.log2
        };
        if expected_log2 > ibf::MAX_LOG2_CELLS {
            return Err(bad(SketchError::BadSize.to_string()));
        }
        let expected = K << expected_log2;
        if self.sketch.cells.len().saturating_add(cells.len()) > expected {
            return Err(bad("more cells than the sketch holds".into()));
        }
        self.sketch.cells.extend(cells);
        if self.sketch.cells.len() < expected {
            return Ok(());
        }
        self.sketch.receiving = None;
        let cells = std::mem::take(&mut self.sketch.cells);
        let relay = if frame.extension {
            let previous = self
                .sketch
                .complete
                .take()
                .filter(|p| p.log2() == expected_log2)
                .ok_or_else(|| bad("an extension without the sketch it extends".into()))?;
            previous.extend(cells)
        } else {
            Ibf::from_cells(frame.log2, cells)
        }
        .map_err(|e| bad(e.to_string()))?;
        self.decode_sketch(replica, key, relay, out)
    }

    fn decode_sketch(
        &mut self,
        replica: &mut Replica,
        key: SketchKey,
        relay: Ibf,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let sets = replica.sets(key);
        let ours = sets
            .sketch_at(relay.log2())
            .map_err(|e| bad_frame(MessageType::Sketch)(e.to_string()))?;
        let decoded = relay.subtract(&ours).and_then(Ibf::decode);
        // Short ids we alone hold must name our nodes; otherwise the decode is garbage.
        let outcome = decoded.map(|diff| {
            let only_ours: Option<Vec<NodeId>> = diff
                .theirs
                .iter()
                .map(|short| sets.resolve(*short))
                .collect();
            (diff.ours, only_ours)
        });
        let (want, only_ours) = match outcome {
            Ok((want, Some(only_ours))) => (want, only_ours),
            failed => {
                let cells_left = match failed {
                    Err(SketchError::Undecodable { remaining }) => remaining as u64,
                    _ => 0,
                };
                self.sketch.complete = Some(relay);
                out.send
                    .push(Message::Retry(Retry { cells_left }).encode()?);
                return Ok(());
            }
        };
        let mut shared = replica.digest();
        for id in &only_ours {
            shared.remove(id);
        }
        // Everything but what we alone hold is the relay's, as far as the decode says; the
        // relay checks the shared root before streaming, and says `buckets` if it disagrees.
        let only_ours: HashSet<NodeId> = only_ours.into_iter().collect();
        let mut unsynced = replica.unsynced_before(replica.len());
        unsynced.retain(|id| replica.in_scope(id));
        // Marking node by node costs a tree update each: fine for a few unsynced nodes, while a
        // replica that trusted nothing is re-derived in one pass.
        let many = unsynced.len() as u64 > replica.scope_len() / 8;
        if many || only_ours.iter().any(|id| replica.is_synced(id)) {
            replica.reset_scope_sync(|id| !only_ours.contains(id));
        } else {
            for id in unsynced.iter().filter(|id| !only_ours.contains(*id)) {
                replica.mark_synced(id);
            }
        }
        self.sketch.tentative = true;
        let max_frame = self.limits.max_frame as usize;
        for message in protocol::want_messages(&want, shared, max_frame) {
            out.send.push(message.encode()?);
        }
        Ok(())
    }

    /// A `buckets` frame: collect summaries; after the last, answer `bucket_ids` with the
    /// differing buckets and our short ids in them (protocol/README.md §5.9).
    fn on_buckets(
        &mut self,
        replica: &mut Replica,
        frame: Buckets,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let bad = bad_frame(MessageType::Buckets);
        if self.refine.summaries.is_empty() && self.sketch.key.is_some() {
            out.events.push(SyncEvent::Plan(Plan::Refine));
        }
        if std::mem::take(&mut self.sketch.tentative) {
            // The relay did not confirm our decode: nothing it implied can be trusted.
            replica.forget_sync();
        }
        let key = SketchKey::from_wire(&frame.key).ok_or_else(|| bad("bad key".into()))?;
        if frame.depth == 0 || frame.depth > crate::recon::MAX_REFINE_DEPTH {
            return Err(bad(format!("bucket depth {}", frame.depth)));
        }
        if self.refine.summaries.is_empty() {
            self.refine.depth = frame.depth;
            self.refine.expected = frame.expected;
            self.refine.key = Some(key);
        } else if self.refine.depth != frame.depth
            || self.refine.expected != frame.expected
            || self.refine.key != Some(key)
        {
            return Err(bad("depth, expected or key changed between frames".into()));
        }
        let buckets = 1usize << (4 * usize::from(frame.depth));
        let summaries = protocol::unpack_buckets(&frame.summaries)
            .ok_or_else(|| bad("truncated summaries".into()))?;
        if self.refine.summaries.len().saturating_add(summaries.len()) > buckets {
            return Err(bad("more summaries than buckets".into()));
        }
        self.refine.summaries.extend(summaries);
        if !frame.last {
            return Ok(());
        }
        if self.refine.summaries.len() != buckets {
            return Err(bad("fewer summaries than buckets".into()));
        }
        let theirs = std::mem::take(&mut self.refine.summaries);
        let depth = self.refine.depth;
        let relay_total = theirs
            .iter()
            .fold(0u64, |sum, (count, _)| sum.saturating_add(*count));
        let larger_total = relay_total.max(replica.scope_len());
        let max_frame = self.limits.max_frame as usize;
        let sets = replica.sets(key);
        let mine = sets.tree_mut().level(depth);
        let tree = sets.tree();
        let mut differing = vec![0u8; protocol::bucket_bitmap_len(depth)];
        let mut shorts = Vec::new();
        let mut sketches = Vec::new();
        for (bucket, (summary, theirs)) in mine.iter().zip(&theirs).enumerate() {
            if summary.truncated() == *theirs {
                continue;
            }
            protocol::mark_bucket(&mut differing, bucket);
            let Some(prefix) = Prefix::from_index(depth, bucket) else {
                continue;
            };
            let view = BucketView {
                relay_count: theirs.0,
                client_count: summary.count,
                expected: self.refine.expected,
                larger_total,
            };
            // Whichever is smaller: the bucket's sketch, or our short ids in it.
            // An entry never spans frames: it must fit beside the bitmap in one.
            let room = max_frame.saturating_sub(differing.len() + protocol::FRAME_SLACK);
            match view.sketch_log2(room) {
                Some(log2) => {
                    let mut sketch = Ibf::new_clamped(log2);
                    tree.for_each_under(&prefix, |id| sketch.insert(key.short_id(id)));
                    sketches.push(BucketSketch {
                        bucket: bucket as u64,
                        count: summary.count,
                        log2,
                        cells: Bytes::from(ibf::encode_cells(sketch.cells())),
                    });
                }
                None => tree.for_each_under(&prefix, |id| shorts.push(key.short_id(id))),
            }
        }
        // The relay's `missing` answer is about the nodes held now; later ones stay unsynced.
        self.ids_sent = replica.ids().copied().collect();
        for message in protocol::bucket_ids_messages(&differing, &shorts, &sketches, max_frame) {
            out.send.push(message.encode()?);
        }
        Ok(())
    }

    /// A `missing` frame: after the last, every node we held at `bucket_ids` time except the
    /// missing ones is the relay's — unless the relay asks us to list the buckets whose
    /// sketches it could not settle first (one second round, by lists).
    fn on_missing(
        &mut self,
        replica: &mut Replica,
        frame: Missing,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let bad = bad_frame(MessageType::Missing);
        let shorts = protocol::unpack_shorts(&frame.shorts).map_err(|e| bad(e.to_string()))?;
        self.refine.missing.extend(shorts);
        if !frame.last {
            return Ok(());
        }
        let Some(key) = self.refine.key else {
            return Ok(());
        };
        if !frame.relist.is_empty() {
            let buckets = 1usize << (4 * usize::from(self.refine.depth));
            let expected = protocol::bucket_bitmap_len(self.refine.depth);
            if self.refine.relisted || frame.relist.len() != expected {
                return Err(bad("a relist the session cannot follow".into()));
            }
            self.refine.relisted = true;
            let tree = replica.sets(key).tree();
            let mut shorts = Vec::new();
            for bucket in 0..buckets {
                let listed = protocol::bucket_marked(&frame.relist, bucket);
                if let Some(prefix) = Prefix::from_index(self.refine.depth, bucket)
                    && listed
                {
                    tree.for_each_under(&prefix, |id| shorts.push(key.short_id(id)));
                }
            }
            let max_frame = self.limits.max_frame as usize;
            for message in protocol::bucket_ids_messages(&frame.relist, &shorts, &[], max_frame) {
                out.send.push(message.encode()?);
            }
            return Ok(());
        }
        let missing: HashSet<u64> = std::mem::take(&mut self.refine.missing)
            .into_iter()
            .collect();
        let covered = std::mem::take(&mut self.ids_sent);
        replica.reset_scope_sync(|id| covered.contains(id) && !missing.contains(&key.short_id(id)));
        Ok(())
    }

    fn send_ids(&mut self, replica: &Replica, out: &mut LinkOutput) -> Result<(), LinkError> {
        let chunk = (self.limits.max_ids as usize).max(1);
        let ids: Vec<NodeId> = replica.ids().copied().collect();
        self.ids_sent = ids.iter().copied().collect();
        let mut chunks = ids.chunks(chunk).peekable();
        if chunks.peek().is_none() {
            out.send.push(
                Message::Ids(Ids {
                    ids: Vec::new(),
                    last: true,
                })
                .encode()?,
            );
        }
        while let Some(part) = chunks.next() {
            let last = chunks.peek().is_none();
            out.send.push(
                Message::Ids(Ids {
                    ids: part.to_vec(),
                    last,
                })
                .encode()?,
            );
        }
        Ok(())
    }
}

/// The prefix-tree root of the replica's synced nodes in scope: its tree minus the unsynced
/// ones.
fn synced_root(replica: &mut Replica, key: SketchKey) -> TreeRoot {
    let unsynced: Vec<NodeId> = replica
        .unsynced()
        .map(|n| n.id)
        .filter(|id| replica.in_scope(id))
        .collect();
    let root = replica.sets(key).tree_mut().root_without(&unsynced);
    TreeRoot {
        count: root.count,
        hash: TreeHash(root.hash),
    }
}

/// The relay sent a node the replica cannot store. A missing parent means the relay skipped it
/// because of what the replica claimed to hold (its watermark or synced heads), so those claims
/// are wrong: forget them, or every reconnection would send the same hints and fail the same
/// way.
fn bad_node(replica: &mut Replica, id: NodeId, error: InsertError) -> LinkError {
    if matches!(error, InsertError::MissingParent(_)) {
        replica.forget_sync();
    }
    LinkError::BadNode { id, error }
}

/// The error for an unusable reconciliation frame of type `what`, from its detail.
fn bad_frame(what: MessageType) -> impl Fn(String) -> LinkError {
    move |detail| LinkError::BadRecon { what, detail }
}
