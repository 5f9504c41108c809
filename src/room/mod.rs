//! One room's state and the glue that serves its sessions.
//!
//! [`Room`] is the data: the arrival log (every accepted node numbered 1, 2, 3… in the order
//! it was admitted, which is also a topological order), the id index, heads, the set digest and
//! the orphan buffer. [`Hub`] owns a room plus the relay sessions connected to it and turns
//! received frames into outgoing frames for an audience (one peer, or every live peer).
//!
//! Both are pure: the server runs one hub per room on its own task and moves bytes; the
//! property tests drive the very same hub through a simulated network.

mod durability;
mod hub;
mod orphans;
mod paths;
mod recon;
mod subscriptions;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::node::{Node, NodeId, NodeLimits, Rejection, RoomId};
use bytes::Bytes;

use crate::protocol::{self, Outcome};
use crate::recon::estimator::Estimator;
use crate::recon::ibf::SketchKey;
use crate::recon::index::SetIndex;
use crate::recon::{FastMap, SetDigest};
use crate::session::Cursor;

pub use durability::Durability;
pub use hub::{Addressed, Audience, Delivery, Hub, HubConfig, Outbox, Outgoing};
pub use orphans::OrphanLimits;
pub use recon::{BucketIdsError, BucketRound, Settled};

/// Identifies one connection to a room; also its presence peer number.
pub type SessionId = u64;

/// An accepted node and the session it came from, as produced by [`Room::submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The node's arrival number.
    pub seq: u64,
    /// The session that sent it.
    pub origin: SessionId,
}

/// The result of submitting a pack.
#[derive(Debug, Default)]
pub struct Submission {
    /// One outcome per submitted node, in order.
    pub outcomes: Vec<Outcome>,
    /// Every node admitted by this submission, including released orphans, in arrival order
    /// (consecutive numbers).
    pub admitted: Vec<Admitted>,
    /// Final outcomes of earlier orphans, for their origin sessions.
    pub resolved: Vec<(SessionId, NodeId, Outcome)>,
}

/// One room's history and indexes.
///
/// Invariants: `log[i]` has arrival number `i + 1`; every parent of a logged node is logged
/// earlier; `sets` holds exactly the logged ids, inserted in arrival order, and `collided` the
/// ones among them whose short id another took; `digest` and `heads` describe exactly the
/// logged set.
pub struct Room {
    id: RoomId,
    epoch: u64,
    limits: NodeLimits,
    log: Vec<LoggedNode>,
    /// Ids whose short id another id took first, with their arrival numbers. Every other id
    /// is found through `sets`, whose short-id map also gives its arrival number: one map
    /// instead of two at 40 bytes per node. Short ids are keyed by a per-epoch secret, so this
    /// stays (practically always) empty.
    collided: FastMap<NodeId, u64>,
    /// Every path in the log, once (nodes of one document share it), with the nodes that
    /// carry it: subscriptions match paths, not nodes.
    paths: HashMap<Arc<str>, PathNodes>,
    /// The same paths as a tree of segments, for matching subscriptions.
    path_tree: paths::PathTree,
    heads: HashSet<NodeId>,
    digest: SetDigest,
    /// Sketch, short ids and prefix tree of the logged set, for sketch reconciliation.
    sets: SetIndex,
    /// Difference estimator of the logged set, for sizing sketches.
    estimator: Estimator,
    orphans: orphans::Orphans,
    payloads: Payloads,
}

/// Which node encodings stay in memory. Nodes up to `stored_through` are in the store and may
/// give theirs up: the oldest first, so what stays is the newest history (what reconnecting
/// clients lack), plus what was read back lately for a catch-up, which goes first.
#[derive(Debug)]
struct Payloads {
    /// Encoded bytes that may stay resident.
    budget: usize,
    /// Encoded bytes resident now.
    resident: usize,
    /// Nodes up to this arrival number are stored, and may be evicted.
    stored_through: u64,
    /// Nodes below this arrival number were considered for eviction in arrival order.
    next_oldest: u64,
    /// Nodes made resident again by [`Room::restore_payload`], oldest first.
    read_back: VecDeque<u64>,
}

/// The nodes that carry one path.
#[derive(Debug, Default)]
pub struct PathNodes {
    seqs: Vec<u64>,
    digest: SetDigest,
}

impl PathNodes {
    /// Their arrival numbers, ascending.
    pub fn seqs(&self) -> &[u64] {
        &self.seqs
    }

    /// Their digest.
    pub fn digest(&self) -> SetDigest {
        self.digest
    }
}

/// Why a payload read back from the store was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// No node has that arrival number.
    #[error("no node {0}")]
    Unknown(u64),
    /// The record is not the node with that arrival number.
    #[error("stored record of node {0} does not match its id")]
    Mismatch(u64),
}

/// One step of catch-up.
#[derive(Debug)]
pub enum BatchStep {
    /// A `batch` frame, assembled from the nodes' stored encodings.
    Batch {
        /// The frame's resume point.
        through: u64,
        /// Nodes in the frame.
        count: usize,
        /// The encoded frame.
        frame: Bytes,
    },
    /// Nothing left: the cursor reached the end of the log.
    Done,
    /// The next nodes' encodings are not in memory: read these arrival numbers back from the
    /// store (about one batch's worth, ascending), hand them to
    /// [`Room::restore_payload`], and ask again.
    Fetch(Vec<u64>),
}

/// An accepted node as the room keeps it: what reconciliation, catch-up and admission need,
/// and its wire encoding (made once, shared by every `batch` and `broadcast` that carries it)
/// while it is resident. The author, blobs and payload are only in the encoding.
#[derive(Debug)]
pub struct LoggedNode {
    id: NodeId,
    depth: u64,
    parents: Box<[NodeId]>,
    path: Arc<str>,
    /// Length of the encoding, known even while it is not resident.
    wire_len: u32,
    wire: Option<Bytes>,
}

impl LoggedNode {
    /// `wire` is `node`'s encoding ([`protocol::encode_node`]).
    fn new(node: Node, path: Arc<str>, wire: Bytes) -> Self {
        Self {
            id: node.id,
            depth: node.depth,
            parents: node.parents.into_boxed_slice(),
            path,
            wire_len: u32::try_from(wire.len()).unwrap_or(u32::MAX),
            wire: Some(wire),
        }
    }

    /// The node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// Its depth.
    pub fn depth(&self) -> u64 {
        self.depth
    }

    /// Its parents, ascending.
    pub fn parents(&self) -> &[NodeId] {
        &self.parents
    }

    /// Its path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Its wire encoding, if resident.
    pub fn wire(&self) -> Option<&Bytes> {
        self.wire.as_ref()
    }

    /// The whole node, decoded from its encoding, if resident.
    pub fn node(&self) -> Option<Node> {
        rmp_serde::from_slice(self.wire.as_ref()?).ok()
    }
}

impl Room {
    /// An empty room.
    pub fn new(id: RoomId, epoch: u64, limits: NodeLimits, orphan_limits: OrphanLimits) -> Self {
        let key = SketchKey::for_room(&id, epoch);
        Self {
            id,
            epoch,
            limits,
            log: Vec::new(),
            collided: FastMap::default(),
            paths: HashMap::new(),
            path_tree: paths::PathTree::default(),
            heads: HashSet::new(),
            digest: SetDigest::default(),
            sets: SetIndex::new(key),
            estimator: Estimator::new(),
            orphans: orphans::Orphans::new(orphan_limits),
            payloads: Payloads {
                budget: usize::MAX,
                resident: 0,
                stored_through: 0,
                next_oldest: 1,
                read_back: VecDeque::new(),
            },
        }
    }

    /// Keeps at most about `bytes` of stored node encodings in memory (unlimited by
    /// default); the rest is read back from the store when a catch-up needs it.
    pub fn with_payload_budget(mut self, bytes: usize) -> Self {
        self.payloads.budget = bytes;
        self
    }

    /// Encoded bytes of the nodes resident in memory.
    pub fn resident_payload_bytes(&self) -> usize {
        self.payloads.resident
    }

    /// The room's id.
    pub fn id(&self) -> &RoomId {
        &self.id
    }

    /// The epoch arrival numbers belong to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The latest arrival number (0 for an empty room).
    pub fn seq(&self) -> u64 {
        self.log.len() as u64
    }

    /// Digest of every accepted node.
    pub fn digest(&self) -> SetDigest {
        self.digest
    }

    /// Accepted nodes nobody has built on yet.
    pub fn heads(&self) -> impl Iterator<Item = &NodeId> {
        self.heads.iter()
    }

    /// Number of nodes waiting for parents.
    pub fn orphan_count(&self) -> usize {
        self.orphans.len()
    }

    /// Whether a node is accepted.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.seq_of(id).is_some()
    }

    /// The arrival number of an accepted node.
    pub fn seq_of(&self, id: &NodeId) -> Option<u64> {
        let short = self.sets.key().short_id(id);
        match self.sets.locate(short) {
            // `sets` numbers ids in insertion order, which for a room is arrival order.
            Some((found, ordinal)) if found == *id => ordinal.checked_add(1),
            _ => self.collided.get(id).copied(),
        }
    }

    /// The node with an arrival number.
    pub fn node_at(&self, seq: u64) -> Option<&LoggedNode> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.log.get(index)
    }

    fn node_at_mut(&mut self, seq: u64) -> Option<&mut LoggedNode> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.log.get_mut(index)
    }

    /// The wire encoding of the node with an arrival number, if resident.
    pub fn wire_at(&self, seq: u64) -> Option<&Bytes> {
        self.node_at(seq)?.wire()
    }

    /// An accepted node by id.
    pub fn get(&self, id: &NodeId) -> Option<&LoggedNode> {
        self.node_at(self.seq_of(id)?)
    }

    /// Every accepted node in arrival order.
    pub fn nodes(&self) -> impl Iterator<Item = &LoggedNode> {
        self.log.iter()
    }

    /// Every distinct path, with the nodes that carry it.
    pub fn paths(&self) -> impl Iterator<Item = (&Arc<str>, &PathNodes)> {
        self.paths.iter()
    }

    /// Every distinct path that some of `patterns` matches, each once, sorted (see
    /// [`paths::PathTree`]).
    pub fn paths_matching(&self, patterns: &[crate::pattern::Pattern]) -> Vec<Arc<str>> {
        self.path_tree.matching(patterns)
    }

    /// The nodes that carry `path`.
    pub fn path_nodes(&self, path: &str) -> Option<&PathNodes> {
        self.paths.get(path)
    }

    /// Earliest time an orphan expires, for the driver's timer.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.orphans.next_expiry()
    }

    /// Validates and admits nodes in order (protocol/README.md §7.1). Nodes whose parents are
    /// missing wait in the orphan buffer; any node admitted here releases the orphans it
    /// completes. Nothing already accepted is touched by a bad node.
    pub fn submit(&mut self, origin: SessionId, nodes: Vec<Node>, now: Instant) -> Submission {
        let mut out = Submission {
            outcomes: Vec::with_capacity(nodes.len()),
            ..Default::default()
        };
        for node in nodes {
            let outcome = self.submit_one(origin, node, now, &mut out);
            out.outcomes.push(outcome);
        }
        out
    }

    fn submit_one(
        &mut self,
        origin: SessionId,
        node: Node,
        now: Instant,
        out: &mut Submission,
    ) -> Outcome {
        if let Err(reason) = node.check(&self.id, &self.limits) {
            return Outcome::Rejected(reason);
        }
        if let Some(seq) = self.seq_of(&node.id) {
            return Outcome::Duplicate(seq);
        }
        if self.orphans.contains(&node.id) {
            self.orphans.add_origin(&node.id, origin);
            return Outcome::Pending;
        }
        let missing: Vec<NodeId> = node
            .parents
            .iter()
            .filter(|p| !self.contains(p))
            .copied()
            .collect();
        if !missing.is_empty() {
            return match self.orphans.insert(node, origin, missing, now) {
                Ok(()) => Outcome::Pending,
                Err(reason) => Outcome::Rejected(reason),
            };
        }
        let outcome = self.admit_checked(node, origin, out);
        if let Outcome::Accepted(seq) = outcome {
            self.release_orphans(seq, out);
        }
        outcome
    }

    /// Admits a node whose parents are all present, if its depth is right.
    fn admit_checked(&mut self, node: Node, origin: SessionId, out: &mut Submission) -> Outcome {
        let parent_depths = node
            .parents
            .iter()
            .filter_map(|p| self.get(p))
            .map(LoggedNode::depth);
        if Node::expected_depth(parent_depths) != Some(node.depth) {
            return Outcome::Rejected(Rejection::DepthMismatch);
        }
        let wire = protocol::encode_node(&node);
        let seq = self.append(node, wire);
        out.admitted.push(Admitted { seq, origin });
        Outcome::Accepted(seq)
    }

    /// Admits the orphans that the node at `seq` completes, and theirs in turn.
    fn release_orphans(&mut self, seq: u64, out: &mut Submission) {
        let mut arrived = vec![seq];
        while let Some(seq) = arrived.pop() {
            let Some(id) = self.node_at(seq).map(|n| n.id) else {
                continue;
            };
            for (orphan, origins) in self.orphans.parent_arrived(&id) {
                let orphan_id = orphan.id;
                // Broadcasts skip the first sender; every sender gets a `resolved` entry.
                let first = origins.first().copied().unwrap_or_default();
                let outcome = self.admit_checked(orphan, first, out);
                if let Outcome::Accepted(seq) = outcome {
                    arrived.push(seq);
                }
                out.resolved.extend(
                    origins
                        .into_iter()
                        .map(|origin| (origin, orphan_id, outcome)),
                );
            }
        }
    }

    /// Appends a node whose parents are present and whose depth was checked, with its
    /// encoding.
    fn append(&mut self, node: Node, wire: Bytes) -> u64 {
        for parent in &node.parents {
            self.heads.remove(parent);
        }
        self.heads.insert(node.id);
        self.digest.insert(&node.id);
        self.sets.insert(node.id);
        self.estimator.insert(&node.id);
        let seq = self.seq().saturating_add(1);
        let short = self.sets.key().short_id(&node.id);
        if self
            .sets
            .locate(short)
            .is_none_or(|(owner, _)| owner != node.id)
        {
            self.collided.insert(node.id, seq);
        }
        let path = match self.paths.get_key_value(node.path.as_str()) {
            Some((path, _)) => path.clone(),
            None => {
                let path: Arc<str> = Arc::from(node.path.as_str());
                self.path_tree.insert(&path);
                path
            }
        };
        let nodes = self.paths.entry(path.clone()).or_default();
        nodes.seqs.push(seq);
        nodes.digest.insert(&node.id);
        let logged = LoggedNode::new(node, path, wire);
        self.payloads.resident = self
            .payloads
            .resident
            .saturating_add(logged.wire_len as usize);
        self.log.push(logged);
        self.seq()
    }

    /// Nodes up to `seq` are in the store: their encodings may leave memory, down to the
    /// payload budget.
    pub fn mark_stored(&mut self, seq: u64) {
        self.payloads.stored_through = self.payloads.stored_through.max(seq.min(self.seq()));
        self.trim_payloads();
    }

    /// Takes back the encoding of the stored node `seq`, read from the store: it must be the
    /// node's own encoding (its content hashes to the node's id in this room). It stays
    /// resident until [`trim_payloads`](Self::trim_payloads) makes room.
    pub fn restore_payload(&mut self, seq: u64, record: Bytes) -> Result<(), PayloadError> {
        let room = self.id.clone();
        let logged = self.node_at(seq).ok_or(PayloadError::Unknown(seq))?;
        if logged.wire.is_some() {
            return Ok(());
        }
        let expected = logged.id;
        let node = Node::decode_checked(&record, &room);
        if node.is_none_or(|node| node.id != expected) {
            return Err(PayloadError::Mismatch(seq));
        }
        let len = record.len();
        if let Some(logged) = self.node_at_mut(seq) {
            logged.wire = Some(record);
        }
        self.payloads.resident = self.payloads.resident.saturating_add(len);
        self.payloads.read_back.push_back(seq);
        Ok(())
    }

    /// Evicts stored encodings while more than the budget is resident: those read back
    /// first, then the oldest.
    pub fn trim_payloads(&mut self) {
        while self.payloads.resident > self.payloads.budget {
            let seq = match self.payloads.read_back.pop_front() {
                Some(seq) => seq,
                None if self.payloads.next_oldest <= self.payloads.stored_through => {
                    let seq = self.payloads.next_oldest;
                    self.payloads.next_oldest += 1;
                    seq
                }
                None => return,
            };
            if let Some(wire) = self.node_at_mut(seq).and_then(|n| n.wire.take()) {
                self.payloads.resident = self.payloads.resident.saturating_sub(wire.len());
            }
        }
    }

    /// Loads an already-accepted node (from storage): checks it fully, then appends it.
    /// Restoring is a bulk load: the sketch levels are built once, by
    /// [`warm_indexes`](Self::warm_indexes), which the loader calls at the end (and
    /// [`Hub::new`](super::Hub::new) calls again, in case it did not).
    pub fn restore(&mut self, node: Node) -> Result<u64, Rejection> {
        let wire = protocol::encode_node(&node);
        self.restore_encoded(node, wire)
    }

    /// [`restore`](Self::restore) for a node read together with its encoding (a stored
    /// record, checked to be `node`'s canonical encoding): the room keeps `wire` as it is
    /// instead of encoding the node again.
    pub fn restore_encoded(&mut self, node: Node, wire: Bytes) -> Result<u64, Rejection> {
        node.check(&self.id, &self.limits)?;
        if let Some(seq) = self.seq_of(&node.id) {
            return Ok(seq);
        }
        let parent_depths: Option<Vec<u64>> = node
            .parents
            .iter()
            .map(|p| self.get(p).map(LoggedNode::depth))
            .collect();
        let Some(parent_depths) = parent_depths else {
            return Err(Rejection::DepthMismatch);
        };
        if Node::expected_depth(parent_depths) != Some(node.depth) {
            return Err(Rejection::DepthMismatch);
        }
        self.sets.defer_levels();
        let seq = self.append(node, wire);
        self.mark_stored(seq);
        Ok(seq)
    }

    /// Expires orphans whose time is up; returns `(origin, id)` of each.
    pub fn expire_orphans(&mut self, now: Instant) -> Vec<(SessionId, NodeId)> {
        self.orphans.expire(now)
    }

    /// Catch-up for a client whose synced set is the ancestry of `heads` and which holds every
    /// node numbered up to `after` (protocol/README.md §5.3). Costs O(seq − after).
    pub fn catch_up_cursor(&self, after: u64, heads: &[NodeId]) -> Cursor {
        let end = self.seq();
        if heads.is_empty() {
            return Cursor::new(Vec::new(), after.saturating_add(1));
        }
        // Walk down the log: marked numbers are ancestors of the client's heads, the rest is
        // what it lacks. Parents always have lower numbers, so one pass suffices.
        let mut marked: HashSet<u64> = heads
            .iter()
            .filter_map(|h| self.seq_of(h))
            .filter(|&s| s > after)
            .collect();
        let mut missing = Vec::new();
        let mut seq = end;
        while seq > after {
            if marked.remove(&seq) {
                if let Some(node) = self.node_at(seq) {
                    let parents = node.parents.iter().filter_map(|p| self.seq_of(p));
                    marked.extend(parents.filter(|&s| s > after));
                }
            } else {
                missing.push(seq);
            }
            seq -= 1;
        }
        missing.reverse();
        Cursor::new(missing, end.saturating_add(1))
    }

    /// Catch-up from a client's full id list: returns the ids the room lacks (deduplicated) and
    /// a cursor over the nodes the client lacks. Costs O(seq + ids).
    pub fn id_list_cursor(&self, client_ids: Vec<NodeId>) -> (Vec<NodeId>, Cursor) {
        let client: HashSet<NodeId> = client_ids.into_iter().collect();
        let mut need: Vec<NodeId> = client
            .iter()
            .filter(|id| !self.contains(id))
            .copied()
            .collect();
        // Deterministic frames: the answer must not depend on hash-set iteration order.
        need.sort_unstable();
        let missing: Vec<u64> = self
            .nodes()
            .zip(1u64..)
            .filter(|(node, _)| !client.contains(&node.id))
            .map(|(_, seq)| seq)
            .collect();
        let cursor = Cursor::new(missing, self.seq().saturating_add(1));
        (need, cursor)
    }

    /// The next batch of at most `budget` bytes (always at least one node when any is left, so
    /// a large node never stalls catch-up), of nodes numbered up to `end`. Copies the stored
    /// encodings; encodes nothing. A batch ends before the first node whose encoding is not
    /// resident; when that node is next, the answer is [`BatchStep::Fetch`].
    pub fn next_batch(&self, cursor: &mut Cursor, budget: usize, end: u64) -> BatchStep {
        let mut wires: Vec<&Bytes> = Vec::new();
        let mut size = protocol::BATCH_OVERHEAD;
        while let Some(seq) = self.cursor_next(cursor, end) {
            let Some(node) = self.node_at(seq) else { break };
            if !cursor.admits(node.path()) {
                cursor.advance();
                continue;
            }
            let Some(wire) = node.wire() else {
                if wires.is_empty() {
                    return BatchStep::Fetch(self.cold_run(cursor, budget, end));
                }
                break;
            };
            if !wires.is_empty() && size.saturating_add(wire.len()) > budget {
                break;
            }
            size = size.saturating_add(wire.len());
            wires.push(wire);
            cursor.advance();
        }
        if wires.is_empty() {
            return BatchStep::Done;
        }
        // The resume point, claimed no further than `end`: nodes after it are not this
        // stream's yet.
        let through = cursor.resume_point().min(end);
        let frame = protocol::batch_frame(through, &wires);
        BatchStep::Batch {
            through,
            count: wires.len(),
            frame,
        }
    }

    /// The non-resident nodes among the next batch's worth (`budget` bytes) from the cursor.
    fn cold_run(&self, cursor: &Cursor, budget: usize, end: u64) -> Vec<u64> {
        let (explicit, tail_next) = cursor.ahead();
        let end = end.min(self.seq());
        let explicit = explicit.iter().copied().take_while(|seq| *seq <= end);
        let tail = tail_next..=end;
        let mut size = protocol::BATCH_OVERHEAD;
        let mut cold = Vec::new();
        for seq in explicit.chain(tail) {
            let Some(node) = self.node_at(seq) else { break };
            if !cursor.admits(node.path()) {
                continue;
            }
            if !cold.is_empty() && size.saturating_add(node.wire_len as usize) > budget {
                break;
            }
            size = size.saturating_add(node.wire_len as usize);
            if node.wire.is_none() {
                cold.push(seq);
            }
        }
        cold
    }

    /// The cursor's next arrival number, if it is at most `end`.
    fn cursor_next(&self, cursor: &Cursor, end: u64) -> Option<u64> {
        let next = cursor.next();
        (next <= end.min(self.seq())).then_some(next)
    }
}

#[cfg(test)]
mod tests;
