//! The bounded buffer where nodes wait for missing parents.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::node::{Node, NodeId, Rejection};

use super::SessionId;

/// Bounds of one room's orphan buffer.
#[derive(Clone, Copy, Debug)]
pub struct OrphanLimits {
    /// Most nodes waiting at once.
    pub max_nodes: usize,
    /// Most payload and header bytes waiting at once.
    pub max_bytes: usize,
    /// How long a node may wait before it is rejected with `OrphanExpired`.
    pub ttl: Duration,
}

impl Default for OrphanLimits {
    fn default() -> Self {
        Self {
            max_nodes: 4096,
            max_bytes: 16 * 1024 * 1024,
            ttl: Duration::from_secs(30),
        }
    }
}

struct Orphan {
    node: Node,
    /// Sessions that sent it and wait for its final outcome (first sender first).
    origins: Vec<SessionId>,
    /// Parents not yet in the room.
    missing: usize,
    expires: Instant,
}

/// Nodes whose parents are not (yet) in the room, indexed by the parents they wait for. The
/// buffer exists only while some node waits: most rooms never hold an orphan, and its maps
/// cost ~130 bytes inline.
pub(super) struct Orphans {
    limits: OrphanLimits,
    buffer: Option<Box<Buffer>>,
}

/// The waiting nodes.
///
/// Invariant: every id in `waiting` lists and `expiry` is either in `by_id` or stale; stale
/// entries are skipped when read and removed with their orphan.
#[derive(Default)]
struct Buffer {
    by_id: HashMap<NodeId, Orphan>,
    /// Missing parent -> orphans waiting for it.
    waiting: HashMap<NodeId, Vec<NodeId>>,
    /// Insertion order, which is expiry order because the TTL is fixed.
    expiry: VecDeque<(Instant, NodeId)>,
    bytes: usize,
}

impl Orphans {
    pub(super) fn new(limits: OrphanLimits) -> Self {
        Self {
            limits,
            buffer: None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.buffer.as_ref().map_or(0, |b| b.by_id.len())
    }

    pub(super) fn contains(&self, id: &NodeId) -> bool {
        self.buffer
            .as_ref()
            .is_some_and(|b| b.by_id.contains_key(id))
    }

    /// Another session sent a node that is already waiting: it hears the final outcome too.
    pub(super) fn add_origin(&mut self, id: &NodeId, origin: SessionId) {
        if let Some(orphan) = self.buffer.as_mut().and_then(|b| b.by_id.get_mut(id)) {
            if !orphan.origins.contains(&origin) {
                orphan.origins.push(origin);
            }
        }
    }

    /// Earliest time an orphan expires.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.buffer.as_ref()?.expiry.front().map(|(at, _)| *at)
    }

    /// Parks `node` until `missing` parents arrive.
    pub(super) fn insert(
        &mut self,
        node: Node,
        origin: SessionId,
        missing: Vec<NodeId>,
        now: Instant,
    ) -> Result<(), Rejection> {
        let size = node.heap_size();
        let bytes = self.buffer.as_ref().map_or(0, |b| b.bytes);
        if self.len() >= self.limits.max_nodes || bytes.saturating_add(size) > self.limits.max_bytes
        {
            return Err(Rejection::OrphanBufferFull);
        }
        let expires = now.checked_add(self.limits.ttl).unwrap_or(now);
        let buffer = self.buffer.get_or_insert_with(Box::default);
        let id = node.id;
        for parent in &missing {
            buffer.waiting.entry(*parent).or_default().push(id);
        }
        buffer.expiry.push_back((expires, id));
        buffer.bytes = buffer.bytes.saturating_add(size);
        buffer.by_id.insert(
            id,
            Orphan {
                node,
                origins: vec![origin],
                missing: missing.len(),
                expires,
            },
        );
        Ok(())
    }

    /// `parent` arrived: returns the orphans that now have every parent, removed from the buffer.
    pub(super) fn parent_arrived(&mut self, parent: &NodeId) -> Vec<(Node, Vec<SessionId>)> {
        let Some(buffer) = self.buffer.as_mut() else {
            return Vec::new();
        };
        let Some(waiters) = buffer.waiting.remove(parent) else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        for id in waiters {
            let Some(orphan) = buffer.by_id.get_mut(&id) else {
                continue;
            };
            orphan.missing = orphan.missing.saturating_sub(1);
            if orphan.missing == 0 {
                if let Some(orphan) = buffer.remove(&id) {
                    ready.push((orphan.node, orphan.origins));
                }
            }
        }
        self.free_if_empty();
        ready
    }

    /// Removes every orphan whose time is up; returns `(origin, id)` for each of its senders.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<(SessionId, NodeId)> {
        let mut expired = Vec::new();
        let Some(buffer) = self.buffer.as_mut() else {
            return expired;
        };
        while let Some(&(at, id)) = buffer.expiry.front() {
            if at > now {
                break;
            }
            buffer.expiry.pop_front();
            // Skip stale entries: admitted orphans leave their expiry entry behind.
            let current = buffer.by_id.get(&id).is_some_and(|o| o.expires == at);
            if current {
                if let Some(orphan) = buffer.remove(&id) {
                    expired.extend(orphan.origins.into_iter().map(|origin| (origin, id)));
                }
            }
        }
        self.free_if_empty();
        expired
    }

    /// Drops the buffer once no node waits (what is left are stale expiry entries).
    fn free_if_empty(&mut self) {
        if self.buffer.as_ref().is_some_and(|b| b.by_id.is_empty()) {
            self.buffer = None;
        }
    }
}

impl Buffer {
    fn remove(&mut self, id: &NodeId) -> Option<Orphan> {
        let orphan = self.by_id.remove(id)?;
        self.bytes = self.bytes.saturating_sub(orphan.node.heap_size());
        for parent in &orphan.node.parents {
            if let Some(list) = self.waiting.get_mut(parent) {
                list.retain(|waiter| waiter != id);
                if list.is_empty() {
                    self.waiting.remove(parent);
                }
            }
        }
        Some(orphan)
    }
}
