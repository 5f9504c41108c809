//! A client's local copy of one room, and the glue that syncs it over one connection.
//!
//! [`Replica`] holds nodes in an order where parents come first, marks which ones the relay is
//! known to hold (*synced*: acked by the relay or received from it), and keeps the hints a
//! `hello` needs: the digest of everything, the heads of the synced subset and the watermark.
//! The synced subset is always closed under ancestry, so its heads describe it exactly.
//!
//! A *subscribed* replica copies only the nodes whose paths match its patterns
//! (protocol/README.md §7.5) and reconciles only those: its digests, estimator and sketch
//! structures cover the matching nodes it holds (its *scope*), while nodes it wrote at other
//! paths are pushed and acked like any other but take no part in reconciliation.
//!
//! [`Link`] drives a [`ClientSession`](crate::session::ClientSession) against a replica for the
//! lifetime of one connection. Both are pure; the tokio client and the network simulator in
//! the tests run the same code. [`replay`] turns a replica into application state.

mod file;
mod link;
pub mod replay;

use std::collections::{BTreeSet, HashSet};

use bytes::Bytes;

use crate::node::{Node, NodeId, NodeLimits, PathError, Rejection, RoomId};
use crate::pattern::{Pattern, PatternError, PatternLimits, PatternSet};
use crate::protocol::{SyncHints, Watermark};
use crate::recon::estimator::Estimator;
use crate::recon::ibf::SketchKey;
use crate::recon::index::SetIndex;
use crate::recon::{FastMap, FastSet, SetDigest};

pub use file::ReplicaFileError;
pub use link::{Link, LinkError, LinkOutput, OverLimit, SizeLimit, SyncEvent};

/// Most heads a `hello` carries; a replica with more synced heads than this asks for the id list.
pub const MAX_HELLO_HEADS: usize = 256;

struct Entry {
    node: Node,
    synced: bool,
}

/// A local replica of one room.
///
/// Invariants: `entries` holds every node once, parents before children, and `index` maps each
/// id to its position there; every parent of a stored node is stored, or (in a subscribed
/// replica only) listed in `absent`; synced nodes' stored parents are synced; `heads` and
/// `synced_heads` describe the stored and synced sets exactly, and `digest`, `synced_digest`,
/// `estimator` and `sets` the stored and synced nodes in scope; `unsynced` holds exactly the
/// positions of the nodes that are not synced.
pub struct Replica {
    room: RoomId,
    /// The nodes in order. A vector rather than map values, so that growing the map moves
    /// small `(id, position)` pairs and never the nodes themselves.
    entries: Vec<Entry>,
    index: FastMap<NodeId, usize>,
    heads: BTreeSet<NodeId>,
    digest: SetDigest,
    synced_heads: BTreeSet<NodeId>,
    synced_digest: SetDigest,
    /// Positions of every node the relay is not known to hold. Kept so that pushing after
    /// every frame costs O(unsynced), not O(replica).
    unsynced: BTreeSet<usize>,
    watermark: Option<Watermark>,
    /// The relay epoch the sync marks refer to, once a relay named one.
    epoch: Option<u64>,
    /// Arrival numbers above the watermark already received, waiting for the gap below them.
    ahead: BTreeSet<u64>,
    /// What the replica knew about the relay was found wrong and forgotten; until a whole-set
    /// answer (in sync, or `need`) arrives, `hello` asks for the id list rather than for the
    /// whole room.
    resync: bool,
    /// Bumped whenever nodes may have moved in `entries` or become unsynced again, so a reader
    /// that remembers positions (the link's push cursor) knows to start over.
    generation: u64,
    /// Sketch, short ids and prefix tree of every node in scope, under the room's sketch key
    /// once a relay has named it.
    sets: Option<SetIndex>,
    /// Difference estimator of every node in scope, sent in `hello` when there is no
    /// watermark.
    estimator: Estimator,
    /// The patterns this replica copies (protocol/README.md §7.5), or `None` for the whole
    /// room. A subscribed replica holds a subset that is not closed under ancestry, and its
    /// watermark counts only matching nodes.
    subscription: Option<PatternSet>,
    /// Parents named by stored nodes but not stored (a subscribed replica's view of the rest
    /// of the room). One arriving later is put back before its children.
    absent: FastSet<NodeId>,
}

/// Why a node could not be added to a replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The node failed its own checks.
    #[error("invalid node: {0}")]
    Invalid(Rejection),
    /// The path breaks a rule of protocol/README.md §3.2.
    #[error("bad path {path:?}: {problem}")]
    BadPath {
        /// The path as given.
        path: String,
        /// The rule it breaks.
        problem: PathError,
    },
    /// A parent is not in the replica.
    #[error("parent {0} is not in the replica")]
    MissingParent(NodeId),
}

// Not `#[from]`: the message already says the reason, so it is not also a `source` that error
// reports would print a second time.
impl From<Rejection> for InsertError {
    fn from(reason: Rejection) -> Self {
        Self::Invalid(reason)
    }
}

impl Replica {
    /// An empty replica of `room`.
    pub fn new(room: RoomId) -> Self {
        Self {
            room,
            entries: Vec::new(),
            index: FastMap::default(),
            heads: BTreeSet::new(),
            digest: SetDigest::default(),
            synced_heads: BTreeSet::new(),
            synced_digest: SetDigest::default(),
            unsynced: BTreeSet::new(),
            watermark: None,
            epoch: None,
            ahead: BTreeSet::new(),
            resync: false,
            generation: 0,
            sets: None,
            estimator: Estimator::new(),
            subscription: None,
            absent: FastSet::default(),
        }
    }

    /// The patterns this replica copies, or `None` for the whole room.
    pub fn subscription(&self) -> Option<&PatternSet> {
        self.subscription.as_ref()
    }

    /// Copies only the nodes matching `patterns` from now on (`None`: the whole room). The
    /// watermark counted the old subscription's nodes, so a change drops it; the next
    /// connection reconciles the new subset. O(n) when the subscription changes.
    pub fn set_subscription(&mut self, patterns: Option<PatternSet>) {
        // A replica that lacks parents of what it holds stays a subset replica: the whole
        // room is then the pattern `**`, and the missing parents arrive like any other node.
        let patterns = match patterns {
            None if !self.absent.is_empty() => Some(PatternSet::new([Pattern::everything()])),
            patterns => patterns,
        };
        if patterns != self.subscription {
            self.rescope(patterns);
            self.watermark = None;
            self.ahead.clear();
        }
    }

    /// The relay completed a subscription change (`subscribed`): the replica copies
    /// `patterns` and holds every matching node up to `seq` in `epoch`.
    pub fn subscription_changed(&mut self, patterns: PatternSet, epoch: u64, seq: u64) {
        if self.subscription.as_ref() != Some(&patterns) {
            self.rescope(Some(patterns));
        }
        self.watermark = Some(Watermark { epoch, seq });
        self.ahead.clear();
    }

    /// Changes the subscription and recomputes what covers the scope: digests, estimator and
    /// sketch structures. O(n).
    fn rescope(&mut self, patterns: Option<PatternSet>) {
        self.subscription = patterns;
        self.digest = SetDigest::default();
        self.synced_digest = SetDigest::default();
        self.estimator = Estimator::new();
        let key = self.sets.take().map(|sets| *sets.key());
        for entry in &self.entries {
            if covered_by(self.subscription.as_ref(), &entry.node) {
                self.digest.insert(&entry.node.id);
                self.estimator.insert(&entry.node.id);
                if entry.synced {
                    self.synced_digest.insert(&entry.node.id);
                }
            }
        }
        if let Some(key) = key {
            self.sets(key);
        }
    }

    /// Whether a node's path is in the scope this replica reconciles: its subscription, or the
    /// whole room.
    fn covers(&self, node: &Node) -> bool {
        covered_by(self.subscription.as_ref(), node)
    }

    /// Whether a held node is in scope (see the module docs).
    pub fn in_scope(&self, id: &NodeId) -> bool {
        self.entry(id).is_some_and(|e| self.covers(&e.node))
    }

    /// A held node's entry.
    fn entry(&self, id: &NodeId) -> Option<&Entry> {
        self.index.get(id).and_then(|pos| self.entries.get(*pos))
    }

    /// Number of nodes in scope.
    pub fn scope_len(&self) -> u64 {
        self.digest.count
    }

    /// The room this replica copies.
    pub fn room(&self) -> &RoomId {
        &self.room
    }

    /// Number of nodes held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the replica holds no node.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a node is held.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.index.contains_key(id)
    }

    /// A node by id.
    pub fn get(&self, id: &NodeId) -> Option<&Node> {
        self.entry(id).map(|e| &e.node)
    }

    /// Whether the relay is known to hold the node.
    pub fn is_synced(&self, id: &NodeId) -> bool {
        self.entry(id).is_some_and(|e| e.synced)
    }

    /// Every node, parents before children.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.entries.iter().map(|e| &e.node)
    }

    /// Ids of every node.
    pub fn ids(&self) -> impl Iterator<Item = &NodeId> {
        self.entries.iter().map(|e| &e.node.id)
    }

    /// Nodes the relay is not known to hold, parents before children.
    pub fn unsynced(&self) -> impl Iterator<Item = &Node> {
        self.unsynced_from(0).map(|(_, node)| node)
    }

    /// Unsynced nodes at or after position `from` of the node order, with their positions.
    pub fn unsynced_from(&self, from: usize) -> impl Iterator<Item = (usize, &Node)> {
        self.unsynced
            .range(from..)
            .filter_map(|pos| Some((*pos, &self.entries.get(*pos)?.node)))
    }

    /// Ids of the unsynced nodes among the first `len` of the node order.
    pub fn unsynced_before(&self, len: usize) -> Vec<NodeId> {
        self.unsynced
            .range(..len)
            .filter_map(|pos| Some(self.entries.get(*pos)?.node.id))
            .collect()
    }

    /// Changes whenever node positions may have moved or nodes became unsynced again.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Heads of the whole replica: the parents of the next local node.
    pub fn heads(&self) -> impl Iterator<Item = &NodeId> {
        self.heads.iter()
    }

    /// Digest of every node in scope (every node held, without a subscription).
    pub fn digest(&self) -> SetDigest {
        self.digest
    }

    /// Digest of the synced nodes in scope.
    pub fn synced_digest(&self) -> SetDigest {
        self.synced_digest
    }

    /// The relay arrival number this replica is complete up to, with its epoch.
    pub fn watermark(&self) -> Option<Watermark> {
        self.watermark
    }

    /// What `hello` tells the relay. With `sketches` (the client offers `ibf` and `mst`) the
    /// relay plans from the watermark and counts, so heads travel only when the replica holds
    /// synced nodes numbered above its watermark (they let the relay skip those); a replica
    /// without a watermark adds its difference estimator. Digest and estimator cover the
    /// scope.
    pub fn hints(&self, sketches: bool) -> SyncHints {
        let unsynced = self.unsynced.len() as u64;
        if sketches {
            let estimator = (self.watermark.is_none() && self.scope_len() > 0).then(|| {
                let strata = crate::recon::estimator::strata_for(self.scope_len());
                Bytes::from(self.estimator.encode(strata))
            });
            let beyond_watermark =
                !self.ahead.is_empty() && self.synced_heads.len() <= MAX_HELLO_HEADS;
            let heads = if beyond_watermark {
                self.synced_heads.iter().copied().collect()
            } else {
                Vec::new()
            };
            return SyncHints {
                digest: self.digest,
                watermark: self.watermark,
                heads,
                unsynced,
                estimator,
            };
        }
        let unknown_head = self.synced_heads.len() > MAX_HELLO_HEADS || self.resync;
        let heads: Vec<NodeId> = if unknown_head {
            // Not describable in one hello, or forgotten: name a head the relay cannot know so
            // that it asks for the id list. (With no heads at all it would stream the whole
            // room, most of which this replica holds.)
            vec![NodeId([0; 32])]
        } else {
            self.synced_heads.iter().copied().collect()
        };
        SyncHints {
            digest: self.digest,
            watermark: self.watermark,
            heads,
            unsynced,
            estimator: None,
        }
    }

    /// Whether the replica's last reconciliation failed verification: until a whole-set answer
    /// arrives it should reconcile by the exact id list, not by short ids again.
    pub fn needs_exact_resync(&self) -> bool {
        self.resync
    }

    /// The replica's sketch index under `key`, built from every node in scope if it is new
    /// or the key changed (O(n) then, O(1) otherwise).
    pub fn sets(&mut self, key: SketchKey) -> &mut SetIndex {
        let current = self.sets.take();
        let in_scope = self
            .entries
            .iter()
            .filter(|e| self.covers(&e.node))
            .map(|e| &e.node.id);
        let sets = match current {
            Some(sets) if *sets.key() == key => sets,
            // A new epoch's key: the prefix tree is kept, short ids and sketches rebuilt.
            Some(mut sets) => {
                sets.rekey(key, in_scope);
                sets
            }
            None => {
                let mut fresh = SetIndex::new(key);
                for id in in_scope {
                    fresh.insert(*id);
                }
                fresh
            }
        };
        self.sets.insert(sets)
    }

    /// Creates a local node on top of the current heads and stores it unsynced. With more
    /// heads than a node may name (a subset replica, whose nodes' children at other paths it
    /// never sees, collects many), it builds on the deepest ones.
    pub fn create(&mut self, path: &str, payload: impl Into<Bytes>) -> Result<NodeId, InsertError> {
        crate::node::path_problem(path, &NodeLimits::default()).map_err(|problem| {
            InsertError::BadPath {
                path: path.to_owned(),
                problem,
            }
        })?;
        let mut parents: Vec<&Node> = self.heads.iter().filter_map(|id| self.get(id)).collect();
        let max_parents = usize::from(NodeLimits::default().max_parents);
        if parents.len() > max_parents {
            parents.sort_by_key(|n| std::cmp::Reverse((n.depth, n.id)));
            parents.truncate(max_parents);
        }
        // No node can follow a parent at the largest depth.
        let node =
            Node::child_of(&self.room, &parents, path, payload).ok_or(Rejection::DepthMismatch)?;
        let id = node.id;
        self.insert(node, false)?;
        Ok(id)
    }

    /// Stores a node (checked) whose parents are all held. Returns whether it was new.
    /// `synced` also marks it (and so its ancestors) as held by the relay.
    ///
    /// Checks the node itself ([`Node::check`]) and the depth rule against the parents held
    /// (protocol/README.md §3.3): exactly when all of them are, as a lower bound when a
    /// subscribed replica lacks some.
    pub fn insert(&mut self, node: Node, synced: bool) -> Result<bool, InsertError> {
        if let Some(&pos) = self.index.get(&node.id) {
            if synced {
                self.mark_synced_at(pos);
            }
            return Ok(false);
        }
        // The relay enforces its own payload limit; the replica only checks integrity.
        let limits = NodeLimits {
            max_payload: u32::MAX,
            ..NodeLimits::default()
        };
        node.check(&self.room, &limits)?;
        let parents = self.parents(&node);
        // A subscribed replica takes the relay's word for parents outside its subscription,
        // which the relay never sends (and keeps them absent in its file); a whole-room
        // replica gets parents first, and a missing one means its own claims were wrong.
        if let Some(missing) = parents.missing
            && self.subscription.is_none()
        {
            return Err(InsertError::MissingParent(missing));
        }
        let depth_ok = match (parents.missing, parents.deepest) {
            (None, deepest) => Node::expected_depth(deepest) == Some(node.depth),
            (Some(_), Some(deepest)) => node.depth > deepest,
            (Some(_), None) => true,
        };
        if !depth_ok {
            return Err(InsertError::Invalid(Rejection::DepthMismatch));
        }
        self.store(node, synced, &parents);
        Ok(true)
    }

    /// What the replica holds of a node's parents.
    fn parents(&self, node: &Node) -> Parents {
        let mut parents = Parents {
            missing: None,
            deepest: None,
            synced: true,
        };
        for parent in &node.parents {
            match self.entry(parent) {
                Some(entry) => {
                    parents.deepest = parents.deepest.max(Some(entry.node.depth));
                    parents.synced &= entry.synced;
                }
                None => parents.missing = parents.missing.or(Some(*parent)),
            }
        }
        parents
    }

    /// Appends a new node, without checks; `parents` describes its parents.
    fn store(&mut self, node: Node, synced: bool, parents: &Parents) {
        let id = node.id;
        let late = !self.absent.is_empty() && self.absent.remove(&id);
        for parent in &node.parents {
            self.heads.remove(parent);
        }
        if parents.missing.is_some() {
            for parent in &node.parents {
                if !self.index.contains_key(parent) {
                    self.absent.insert(*parent);
                }
            }
        }
        // A parent that arrives after its children is not a head.
        if !late {
            self.heads.insert(id);
        }
        let covered = self.covers(&node);
        if covered {
            self.digest.insert(&id);
            self.estimator.insert(&id);
            if let Some(sets) = self.sets.as_mut() {
                sets.insert(id);
            }
        }
        let pos = self.entries.len();
        self.index.insert(id, pos);
        // A synced node on synced parents (everything catch-up and broadcasts bring) is
        // marked directly; otherwise `mark_synced_at` walks up the unsynced ancestors.
        let direct = synced && parents.synced && !late;
        self.entries.push(Entry {
            node,
            synced: direct,
        });
        if direct {
            if let Some(entry) = self.entries.get(pos) {
                for parent in &entry.node.parents {
                    self.synced_heads.remove(parent);
                }
            }
            self.synced_heads.insert(id);
            if covered {
                self.synced_digest.insert(&id);
            }
        } else {
            self.unsynced.insert(pos);
            if synced {
                self.mark_synced_at(pos);
            }
        }
        if late {
            self.restore_order();
        }
    }

    /// A parent arrived after nodes that name it (a subscribed replica receiving what its
    /// subscription now covers): puts the order back to parents first, by depth (a parent is
    /// always shallower than its children), and re-derives the sync marks and positions.
    /// O(n log n), and only when that happens.
    fn restore_order(&mut self) {
        // Stable: nodes of equal depth keep their order.
        self.entries.sort_by_key(|e| e.node.depth);
        for (pos, entry) in self.entries.iter().enumerate() {
            self.index.insert(entry.node.id, pos);
        }
        let resync = self.resync;
        self.rederive_sync(|_, entry, _| entry.synced);
        self.resync = resync;
    }

    /// Marks a node and every unsynced ancestor as held by the relay.
    pub fn mark_synced(&mut self, id: &NodeId) {
        if let Some(&pos) = self.index.get(id) {
            self.mark_synced_at(pos);
        }
    }

    /// [`mark_synced`](Self::mark_synced) for the node at `pos`.
    fn mark_synced_at(&mut self, pos: usize) {
        match self.entries.get(pos) {
            Some(entry) if !entry.synced => self.synced_heads.insert(entry.node.id),
            _ => return,
        };
        let mut stack = vec![pos];
        while let Some(next) = stack.pop() {
            let Some(entry) = self.entries.get_mut(next) else {
                continue;
            };
            if entry.synced {
                continue;
            }
            entry.synced = true;
            self.unsynced.remove(&next);
            if covered_by(self.subscription.as_ref(), &entry.node) {
                self.synced_digest.insert(&entry.node.id);
            }
            for parent in &entry.node.parents {
                self.synced_heads.remove(parent);
                stack.extend(self.index.get(parent).copied());
            }
        }
    }

    /// Re-derives every sync flag: a node is synced if `synced(id)` says so, or if a synced
    /// node descends from it (the relay holds the ancestors of whatever it holds). Used when an
    /// answer about every node held arrives (`need`). One pass back and one forward over the
    /// node order: O(n), no per-node tree updates.
    pub fn reset_sync(&mut self, synced: impl Fn(&NodeId) -> bool) {
        self.rederive_sync(|id, _, _| synced(id));
    }

    /// As [`reset_sync`](Self::reset_sync), for an answer about the scope (in sync, a sketch
    /// decode, `missing`): `synced` decides for the nodes in scope, and the others keep their
    /// flags.
    pub fn reset_scope_sync(&mut self, synced: impl Fn(&NodeId) -> bool) {
        self.rederive_sync(|id, entry, in_scope| if in_scope { synced(id) } else { entry.synced });
    }

    /// Re-derives every flag from `synced(id, entry, in scope)` and ancestry.
    fn rederive_sync(&mut self, synced: impl Fn(&NodeId, &Entry, bool) -> bool) {
        self.resync = false;
        self.generation = self.generation.wrapping_add(1);
        self.synced_digest = SetDigest::default();
        self.synced_heads.clear();
        // Backwards, children before parents: parents of synced nodes are synced too, and a
        // synced node no synced child named is a head of the synced subset.
        let mut named_by_synced_child: FastSet<NodeId> = FastSet::default();
        let mut flags = vec![false; self.entries.len()];
        for (pos, entry) in self.entries.iter().enumerate().rev() {
            let id = &entry.node.id;
            let by_child = named_by_synced_child.remove(id);
            let in_scope = covered_by(self.subscription.as_ref(), &entry.node);
            if !(by_child || synced(id, entry, in_scope)) {
                continue;
            }
            if let Some(flag) = flags.get_mut(pos) {
                *flag = true;
            }
            if !by_child {
                self.synced_heads.insert(*id);
            }
            named_by_synced_child.extend(entry.node.parents.iter().copied());
        }
        let mut unsynced = BTreeSet::new();
        for (pos, (entry, synced)) in self.entries.iter_mut().zip(flags).enumerate() {
            entry.synced = synced;
            if synced && covered_by(self.subscription.as_ref(), &entry.node) {
                self.synced_digest.insert(&entry.node.id);
            }
            if !synced {
                unsynced.insert(pos);
            }
        }
        self.unsynced = unsynced;
    }

    /// Forgets everything learned about the relay (after a verification mismatch). The next
    /// `hello` asks for the id list.
    pub fn forget_sync(&mut self) {
        self.reset_sync(|_| false);
        self.watermark = None;
        self.ahead.clear();
        self.resync = !self.is_empty();
    }

    /// Drops a node the relay rejected, with every descendant (they can never be accepted).
    /// O(n); rejections are rare.
    pub fn discard(&mut self, id: &NodeId) {
        let mut gone: HashSet<NodeId> = HashSet::new();
        gone.insert(*id);
        for entry in &self.entries {
            if entry.node.parents.iter().any(|p| gone.contains(p)) {
                gone.insert(entry.node.id);
            }
        }
        let kept: Vec<(Node, bool)> = std::mem::take(&mut self.entries)
            .into_iter()
            .filter(|e| !gone.contains(&e.node.id))
            .map(|e| (e.node, e.synced))
            .collect();
        let (watermark, epoch, ahead) =
            (self.watermark, self.epoch, std::mem::take(&mut self.ahead));
        let resync = self.resync;
        let generation = self.generation.wrapping_add(1);
        let key = self.sets.as_ref().map(|sets| *sets.key());
        let subscription = self.subscription.take();
        *self = Self::new(self.room.clone());
        self.subscription = subscription;
        if let Some(key) = key {
            self.sets = Some(SetIndex::new(key));
        }
        self.generation = generation;
        // Kept nodes were checked on the way in and keep their order, so parents come first.
        for (node, synced) in kept {
            let parents = self.parents(&node);
            self.store(node, synced, &parents);
        }
        self.watermark = watermark;
        self.epoch = epoch;
        self.ahead = ahead;
        self.resync = resync && !self.is_empty();
    }

    /// Starts a session in `epoch`: a watermark from another epoch is dropped. A subscribed
    /// replica also forgets sync marks made in another epoch (that relay may have lost those
    /// nodes): the answers it gets cover only its scope, so marks outside it would never be
    /// checked again. Those nodes are pushed again (acked as duplicates where the relay has
    /// them). Returns whether marks were forgotten; O(n) then.
    pub fn enter_epoch(&mut self, epoch: u64) -> bool {
        if self.watermark.is_some_and(|w| w.epoch != epoch) {
            self.watermark = None;
            self.ahead.clear();
        }
        let stale = self.epoch != Some(epoch) && self.unsynced.len() < self.entries.len();
        self.epoch = Some(epoch);
        if !(stale && self.subscription.is_some()) {
            return false;
        }
        let resync = self.resync;
        self.rederive_sync(|_, _, _| false);
        self.resync = resync;
        true
    }

    /// The replica holds every node numbered up to `seq` in `epoch`.
    pub fn complete_through(&mut self, epoch: u64, seq: u64) {
        let current = self
            .watermark
            .filter(|w| w.epoch == epoch)
            .map_or(0, |w| w.seq);
        if seq >= current {
            self.watermark = Some(Watermark { epoch, seq });
            self.ahead = self.ahead.split_off(&seq.saturating_add(1));
            self.absorb_ahead();
        }
    }

    /// One node numbered `seq` arrived (broadcast or ack); advances the watermark over gaps
    /// that are now filled.
    pub fn received_seq(&mut self, epoch: u64, seq: u64) {
        let Some(current) = self.watermark.filter(|w| w.epoch == epoch) else {
            return;
        };
        if seq > current.seq {
            self.ahead.insert(seq);
            self.absorb_ahead();
        }
    }

    fn absorb_ahead(&mut self) {
        while let Some(mut w) = self.watermark {
            let next = w.seq.saturating_add(1);
            if !self.ahead.remove(&next) {
                break;
            }
            w.seq = next;
            self.watermark = Some(w);
        }
    }
}

/// What a replica holds of a new node's parents.
struct Parents {
    /// A parent that is not held, if any.
    missing: Option<NodeId>,
    /// The largest depth among the parents held.
    deepest: Option<u64>,
    /// Whether every parent held is synced.
    synced: bool,
}

/// Whether `node` is in the scope of a replica with `subscription` (`None`: the whole room).
/// A free function so that it can be called while the replica's entries are borrowed.
fn covered_by(subscription: Option<&PatternSet>, node: &Node) -> bool {
    subscription.is_none_or(|s| s.matches(&node.path))
}

/// Patterns a relay or an earlier run already accepted, read back whatever limits they met.
pub fn read_subscription(patterns: &[String]) -> Result<PatternSet, PatternError> {
    let limits = PatternLimits::widest();
    let parsed: Result<Vec<Pattern>, PatternError> = patterns
        .iter()
        .map(|p| Pattern::parse(p, &limits))
        .collect();
    Ok(PatternSet::new(parsed?))
}

#[cfg(test)]
mod tests;
