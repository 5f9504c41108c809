//! One connection's worth of sync between a replica and the relay.
//!
//! [`Link`] drives a [`ClientSession`] against a [`Replica`]: the session checks each frame
//! against the phase and owns what the phase gathers; the link does what the replica must, and
//! gives the session the answers it asks for. Its parts live beside it: pushing local nodes as
//! packs and settling their outcomes ([`push`]), decoding the relay's sketch ([`sketch`],
//! protocol/README.md §5.7), comparing bucket summaries ([`refine`], §5.9) and changing the
//! subscription ([`subscribe`], §7.5).

mod push;
mod refine;
mod sketch;
mod subscribe;

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::{InsertError, Replica};
use crate::node::{Node, NodeId, TreeHash};
use crate::pattern::{PatternError, PatternSet};
use crate::protocol::{
    Capabilities, EncodeError, ErrorMessage, Outcome, Plan, RelayLimits, TreeRoot, Welcome,
};
use crate::recon::ibf::SketchKey;
use crate::session::{ClientError, ClientEvent, ClientSession, Fallback, HelloSnapshot};

pub use push::{OverLimit, SizeLimit};

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
    /// The relay broke the protocol (or the session was driven out of turn).
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
    /// An `ack` names no pack in flight.
    #[error("ack for pack {0}, which is not in flight")]
    UnknownAck(u64),
    /// An `ack` does not carry one outcome per node of its pack.
    #[error("ack for pack {number} has {outcomes} outcomes for {nodes} nodes")]
    AckOutcomes {
        /// The pack.
        number: u64,
        /// Nodes the pack carried.
        nodes: usize,
        /// Outcomes the ack carries.
        outcomes: usize,
    },
    /// A `resolved` entry names a node that is not waiting for its outcome: never sent on
    /// this connection, or settled already.
    #[error("resolved entry for node {0}, which is not waiting for an outcome")]
    UnknownResolved(NodeId),
    /// A `resolved` entry says `pending`, where only final outcomes go (§7.1).
    #[error("resolved entry for node {0} is not final")]
    PendingResolved(NodeId),
    /// `subscribed` lists a pattern that does not parse.
    #[error("subscribed lists a bad pattern: {0}")]
    SubscribedPattern(PatternError),
    /// After catch-up the synced set differed from the relay's. The replica forgot what it knew
    /// about the relay, so the next connection reconciles by id list.
    #[error("replica diverged from the relay after catch-up; resyncing by id list")]
    Diverged,
}

/// Drives one connection for a replica: feed it every received frame, send what it returns.
pub struct Link {
    /// The protocol's side of the connection: phase, capabilities, epoch, limits, credit.
    session: ClientSession,
    /// The next `pack` (or subscription change) number.
    next_pack: u64,
    /// Packs sent and not acked yet, with their nodes in order.
    inflight: HashMap<u64, Vec<NodeId>>,
    /// Sent in this connection and not yet settled.
    outstanding: HashSet<NodeId>,
    /// Unsynced nodes before this position were already sent on this connection (valid while
    /// the replica's generation is `push_generation`).
    push_from: usize,
    push_generation: u64,
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
        // An `in_sync` answer is about exactly the nodes `hello` described.
        let at_hello = HelloSnapshot {
            len: replica.len(),
            generation: replica.generation(),
        };
        let (session, hello) =
            ClientSession::start(hints, capabilities, window, subscribe, at_hello)?;
        let link = Self {
            session,
            next_pack: 1,
            inflight: HashMap::new(),
            outstanding: HashSet::new(),
            push_from: 0,
            push_generation: replica.generation(),
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
        self.session.limits()
    }

    /// Handles one frame from the relay.
    pub fn handle_frame(
        &mut self,
        replica: &mut Replica,
        frame: &[u8],
    ) -> Result<LinkOutput, LinkError> {
        let mut out = LinkOutput::default();
        match self.session.handle_frame(frame)? {
            ClientEvent::Partial => {}
            ClientEvent::Welcome { welcome, at_hello } => {
                self.welcome(replica, welcome, at_hello, &mut out)?;
            }
            ClientEvent::Needed { sent, need } => {
                // The relay holds every id we sent that it does not need; nodes written after
                // the `ids` frames were built are not covered.
                replica.reset_sync(|id| sent.contains(id) && !need.contains(id));
            }
            ClientEvent::Sketch { key, sketch } => {
                self.answer_sketch(replica, key, sketch, &mut out)?;
            }
            ClientEvent::Buckets {
                fallback,
                summaries,
            } => {
                if let Some(fallback) = fallback {
                    out.events.push(SyncEvent::Plan(Plan::Refine));
                    if fallback == Fallback::Unverified {
                        // The relay did not confirm our decode: nothing it implied can be
                        // trusted.
                        replica.forget_sync();
                    }
                }
                if let Some(summaries) = summaries {
                    self.answer_buckets(replica, summaries, &mut out)?;
                }
            }
            ClientEvent::Relist { key, depth, relist } => {
                self.answer_relist(replica, key, depth, &relist, &mut out)?;
            }
            ClientEvent::Missing {
                key,
                covered,
                missing,
            } => {
                // Every node we held at `bucket_ids` time except the missing ones is the
                // relay's (§5.9 step 8).
                replica.reset_scope_sync(|id| {
                    covered.contains(id) && !missing.contains(&key.short_id(id))
                });
            }
            ClientEvent::Batch(batch) => {
                for node in batch.nodes {
                    self.arrived(replica, node, &mut out)?;
                }
                replica.complete_through(self.session.epoch(), batch.through);
                out.send.extend(self.session.poll_credit()?);
            }
            ClientEvent::CaughtUp { done, key } => {
                let root_differs = match (done.root, key) {
                    (Some(root), Some(key)) => synced_root(replica, key) != root,
                    // A root we cannot check (a plan without a sketch key) is not trusted either
                    // way.
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if replica.synced_digest() != done.digest || root_differs {
                    replica.forget_sync();
                    return Err(LinkError::Diverged);
                }
                replica.complete_through(self.session.epoch(), done.seq);
                out.events.push(SyncEvent::Synced { seq: done.seq });
            }
            ClientEvent::Ack(ack) => self.acked(replica, ack, &mut out)?,
            ClientEvent::Resolved(resolved) => self.resolved(replica, resolved, &mut out)?,
            ClientEvent::Broadcast(broadcast) => {
                // The session checked that the numbers fit in a u64.
                let seqs = broadcast.first_seq..=u64::MAX;
                for (node, seq) in broadcast.nodes.into_iter().zip(seqs) {
                    self.arrived(replica, node, &mut out)?;
                    self.received(replica, seq);
                }
            }
            ClientEvent::Subscribed(done) => self.subscribed(replica, done, &mut out)?,
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

    /// `welcome`: the replica enters the relay's epoch; plan `in_sync` confirms what `hello`
    /// described, plan `send_ids` lists every id (§5.4).
    fn welcome(
        &mut self,
        replica: &mut Replica,
        welcome: Welcome,
        mut at_hello: HelloSnapshot,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        out.events.push(SyncEvent::Plan(welcome.plan));
        if replica.enter_epoch(welcome.epoch) {
            // Marks were forgotten, no node moved: what `hello` described still holds.
            at_hello.generation = replica.generation();
        }
        match welcome.plan {
            Plan::InSync => {
                // The relay holds what the replica held at `hello`: its first `at_hello.len`
                // nodes, as long as nothing moved since (the generation says). Nodes written
                // since are not covered and must still be pushed. Only the unsynced ones need
                // marking, so this costs O(unsynced).
                if replica.generation() == at_hello.generation {
                    // The relay compared the scope: nodes outside the subscription are still
                    // pushed (and acked as duplicates if it holds them).
                    for id in replica.unsynced_before(at_hello.len) {
                        if replica.in_scope(&id) {
                            replica.mark_synced(&id);
                        }
                    }
                    replica.complete_through(welcome.epoch, welcome.seq);
                }
                // Otherwise the replica lost nodes meanwhile: claim nothing; pushing the
                // unsynced nodes gets them acked (as duplicates) instead.
                out.events.push(SyncEvent::Synced { seq: welcome.seq });
            }
            Plan::SendIds => {
                let ids = replica.ids().copied().collect();
                out.send.extend(self.session.send_ids(ids)?);
            }
            Plan::CatchUp | Plan::Sketch | Plan::Refine => {}
        }
        Ok(())
    }

    /// A node from the relay (catch-up or live): stored, and reported if it is new.
    fn arrived(
        &mut self,
        replica: &mut Replica,
        node: Node,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let id = node.id;
        if replica
            .insert(node, true)
            .map_err(|error| bad_node(replica, id, error))?
        {
            out.events
                .extend(replica.get(&id).cloned().map(SyncEvent::Arrived));
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

#[cfg(test)]
mod tests;
