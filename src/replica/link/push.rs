//! Local nodes out as `pack`s, and their outcomes back (protocol/README.md §7.1).

use std::collections::HashSet;

use bytes::Bytes;

use super::{Link, LinkError, LinkOutput, SyncEvent};
use crate::node::{Node, NodeId};
use crate::protocol::{Ack, Message, Outcome, Pack, Resolved};
use crate::replica::Replica;

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

impl Link {
    /// An `ack`: one outcome per node of the pack it names, in order.
    pub(super) fn acked(
        &mut self,
        replica: &mut Replica,
        ack: Ack,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let ids = self
            .inflight
            .remove(&ack.number)
            .ok_or(LinkError::UnknownAck(ack.number))?;
        if ids.len() != ack.outcomes.len() {
            return Err(LinkError::AckOutcomes {
                number: ack.number,
                nodes: ids.len(),
                outcomes: ack.outcomes.len(),
            });
        }
        for (id, outcome) in ids.into_iter().zip(ack.outcomes) {
            self.settle(replica, id, outcome, out);
        }
        Ok(())
    }

    /// A `resolved` frame: final outcomes of our nodes that were pending (§7.1). Checked whole
    /// before any entry settles, as an ack is.
    pub(super) fn resolved(
        &mut self,
        replica: &mut Replica,
        resolved: Resolved,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        // An entry's node waits no longer once an earlier entry settled it.
        let mut named = HashSet::new();
        for (id, outcome) in &resolved.outcomes {
            if !self.outstanding.contains(id) || !named.insert(id) {
                return Err(LinkError::UnknownResolved(*id));
            }
            if *outcome == Outcome::Pending {
                return Err(LinkError::PendingResolved(*id));
            }
        }
        for (id, outcome) in resolved.outcomes {
            self.settle(replica, id, outcome, out);
        }
        Ok(())
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
                    replica.received_seq(self.session.epoch(), seq);
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

    /// Packs for every unsynced node not yet sent on this connection, within the relay's limits.
    /// Empty until the session is steady. A node over a limit from `welcome` is not sent: it is
    /// removed from the replica with its descendants and reported as [`SyncEvent::TooLarge`].
    pub fn push(&mut self, replica: &mut Replica) -> Result<LinkOutput, LinkError> {
        let mut out = LinkOutput::default();
        if !self.session.is_steady() {
            return Ok(out);
        }
        let limits = *self.session.limits();
        let max_nodes = (limits.max_pack_nodes as usize).max(1);
        let max_bytes = (limits.max_frame as usize).saturating_sub(PACK_OVERHEAD);
        let max_payload = limits.node.max_payload as usize;
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
                Some((SizeLimit::Frame, frame, limits.max_frame as usize))
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
}
