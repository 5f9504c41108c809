//! One connection's worth of sync between a replica and the relay.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::{InsertError, Replica};
use crate::node::NodeId;
use crate::protocol::{
    Capabilities, EncodeError, ErrorMessage, Ids, Message, Outcome, Pack, Plan, RelayLimits,
};
use crate::session::{ClientError, ClientEvent, ClientSession};

/// Something the application may want to know after a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// Reconciliation finished and was verified: the replica holds the relay's set as of `seq`.
    Synced {
        /// The relay arrival number the replica is now complete up to.
        seq: u64,
    },
    /// A node from the relay was stored (catch-up or live).
    Arrived(NodeId),
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
}

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
    /// The ids sent in `ids` frames: the relay's `need` answer is about exactly those.
    ids_sent: HashSet<NodeId>,
}

impl Link {
    /// Starts a connection; returns the link and the `hello` frame to send first.
    pub fn start(
        replica: &Replica,
        capabilities: Capabilities,
        window: u64,
    ) -> Result<(Self, Bytes), LinkError> {
        let (session, hello) = ClientSession::start(replica.hints(), capabilities, window)?;
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
                self.limits = welcome.limits;
                replica.enter_epoch(welcome.epoch);
                match welcome.plan {
                    Plan::InSync => {
                        // The relay holds what the replica held at `hello`: its first
                        // `hello_len` nodes, as long as nothing moved since (the generation
                        // says). Nodes written since are not covered and must still be pushed.
                        // Only the unsynced ones need marking, so this costs O(unsynced).
                        if replica.generation() == self.hello_generation {
                            for id in replica.unsynced_before(self.hello_len) {
                                replica.mark_synced(&id);
                            }
                            replica.complete_through(self.epoch, welcome.seq);
                        }
                        // Otherwise the replica lost nodes meanwhile: claim nothing; pushing
                        // the unsynced nodes gets them acked (as duplicates) instead.
                        out.events.push(SyncEvent::Synced { seq: welcome.seq });
                    }
                    Plan::CatchUp => {}
                    Plan::SendIds => self.send_ids(replica, &mut out)?,
                }
            }
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
                for node in batch.nodes {
                    let id = node.id;
                    if replica
                        .insert(node, true)
                        .map_err(|error| bad_node(replica, id, error))?
                    {
                        out.events.push(SyncEvent::Arrived(id));
                    }
                }
                replica.complete_through(self.epoch, batch.through);
                out.send.extend(self.session.poll_credit()?);
            }
            ClientEvent::CaughtUp(done) => {
                if replica.synced_digest() != done.digest {
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
                        out.events.push(SyncEvent::Arrived(id));
                    }
                    replica.received_seq(self.epoch, seq);
                }
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
            out.send.extend(self.push(replica)?);
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
                replica.received_seq(self.epoch, seq);
            }
            // Still waiting for parents on the relay; a `resolved` entry settles it.
            Outcome::Pending => return,
            Outcome::Rejected(_) => replica.discard(&id),
        }
        self.outstanding.remove(&id);
        out.events.push(SyncEvent::Settled { id, outcome });
    }

    /// Packs for every unsynced node not yet sent on this connection, within the relay's limits.
    /// Empty until the session is steady.
    pub fn push(&mut self, replica: &Replica) -> Result<Vec<Bytes>, LinkError> {
        if !self.session.is_steady() {
            return Ok(Vec::new());
        }
        let max_nodes = (self.limits.max_pack_nodes as usize).max(1);
        // Envelope, pack header and number take under 16 bytes.
        let max_bytes = (self.limits.max_frame as usize).saturating_sub(16);
        let mut frames = Vec::new();
        let mut nodes = Vec::new();
        let mut size = 0usize;
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
            let node_size = node.wire_size_bound();
            if !nodes.is_empty()
                && (nodes.len() >= max_nodes || size.saturating_add(node_size) > max_bytes)
            {
                frames.push(self.pack(std::mem::take(&mut nodes))?);
                size = 0;
            }
            size = size.saturating_add(node_size);
            nodes.push(node.clone());
        }
        if !nodes.is_empty() {
            frames.push(self.pack(nodes)?);
        }
        Ok(frames)
    }

    fn pack(&mut self, nodes: Vec<crate::node::Node>) -> Result<Bytes, LinkError> {
        let number = self.next_pack;
        self.next_pack = self.next_pack.saturating_add(1);
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        self.outstanding.extend(ids.iter().copied());
        self.inflight.insert(number, ids);
        Ok(Message::Pack(Pack { number, nodes }).encode()?)
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
