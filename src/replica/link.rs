//! One connection's worth of sync between a replica and the relay.
//!
//! [`Link`] is the entry point; its parts live beside it: pushing local nodes as packs and
//! settling their outcomes ([`push`]), the sketch path ([`sketch`], protocol/README.md §5.7)
//! and prefix-tree refinement ([`refine`], §5.9).

mod push;
mod refine;
mod sketch;

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::{InsertError, Replica};
use crate::node::{Node, NodeId, TreeHash};
use crate::pattern::PatternSet;
use crate::protocol::{
    Capabilities, EncodeError, ErrorMessage, Ids, Message, MessageType, Outcome, Plan, RelayLimits,
    TreeRoot,
};
use crate::recon::ibf::SketchKey;
use crate::session::{ClientError, ClientEvent, ClientSession};

pub use push::{OverLimit, SizeLimit};
use refine::RefineState;
use sketch::SketchState;

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
