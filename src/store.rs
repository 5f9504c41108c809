//! The storage seam: where rooms come from and where accepted nodes go.
//!
//! The relay loads a room through [`Store::load`] the first time a client asks for it and
//! hands every newly accepted node to [`Store::append`] **before** any ack or broadcast for it
//! leaves the relay. This version ships [`MemoryStore`] (ephemeral); durable stores plug in
//! behind the same trait.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::future::BoxFuture;

use crate::node::{Node, RoomId};

/// A room as stored: its epoch and its nodes in arrival order.
#[derive(Debug, Clone)]
pub struct StoredRoom {
    /// Epoch of the arrival numbering. A store that loses a room's numbering must start a new
    /// epoch so clients do not trust stale watermarks.
    pub epoch: u64,
    /// Accepted nodes, parents before children.
    pub nodes: Vec<Node>,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed; nothing from the failed call is durable.
    #[error("store backend failed: {0}")]
    Backend(String),
}

/// Where rooms live.
pub trait Store: Send + Sync + 'static {
    /// The stored room, or `None` if it has never been written.
    fn load<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> BoxFuture<'a, Result<Option<StoredRoom>, StoreError>>;

    /// Makes `nodes` (new, in arrival order, following what is stored) part of the room.
    /// Returns only once they are as durable as this store gets.
    fn append<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: u64,
        nodes: &'a [Node],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Keeps rooms in process memory: fast, and gone when the process exits.
#[derive(Default)]
pub struct MemoryStore {
    // Held only for a map lookup and a Vec extend, never across an await.
    rooms: Mutex<HashMap<RoomId, StoredRoom>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn load<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> BoxFuture<'a, Result<Option<StoredRoom>, StoreError>> {
        let result = self
            .rooms
            .lock()
            .map(|rooms| rooms.get(room).cloned())
            .map_err(|_| StoreError::Backend("memory store lock poisoned".into()));
        Box::pin(async move { result })
    }

    fn append<'a>(
        &'a self,
        room: &'a RoomId,
        epoch: u64,
        nodes: &'a [Node],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let result = self
            .rooms
            .lock()
            .map(|mut rooms| {
                let stored = rooms.entry(room.clone()).or_insert_with(|| StoredRoom {
                    epoch,
                    nodes: Vec::new(),
                });
                stored.nodes.extend_from_slice(nodes);
            })
            .map_err(|_| StoreError::Backend("memory store lock poisoned".into()));
        Box::pin(async move { result })
    }
}
