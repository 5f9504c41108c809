//! Presence: ephemeral per-peer state, never stored (protocol/README.md §8).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Client to relay: replaces this peer's presence state. Empty clears it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Opaque application state, at most `max_presence` bytes.
    pub state: Bytes,
}

/// Relay to client: a peer's presence changed. Empty state means the peer cleared it or left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceUpdate {
    /// The peer's number from its `welcome`.
    pub peer: u64,
    /// The peer's state.
    pub state: Bytes,
}
