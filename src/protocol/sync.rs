//! Reconciliation and catch-up frames: `ids`, `need`, `batch`, `catch_up_done`, `credit`
//! (protocol/README.md §5–§6).

use serde::{Deserialize, Serialize};

use crate::node::{Node, NodeId};
use crate::recon::SetDigest;

/// Client to relay, plan `SendIds`: a chunk of the client's node ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ids {
    /// Ids in this chunk, any order.
    pub ids: Vec<NodeId>,
    /// True on the final chunk.
    pub last: bool,
}

/// Relay to client, after the last `ids`: a chunk of ids the client holds and the relay lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    /// Ids the client must push.
    pub ids: Vec<NodeId>,
    /// True on the final chunk.
    pub last: bool,
}

/// Relay to client: catch-up nodes, parents before children.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// After this batch the client holds every node numbered up to `through`: the resume point.
    pub through: u64,
    /// The nodes, in arrival order.
    pub nodes: Vec<Node>,
}

/// Relay to client: catch-up is complete; live `broadcast`s follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpDone {
    /// The room's arrival number at this point: the client's new watermark.
    pub seq: u64,
    /// Digest of the room at `seq`; the client's synced set must equal it.
    pub digest: SetDigest,
    /// After plans `sketch` and `refine`: the room's prefix-tree root at `seq`, which the
    /// client's synced set must also have (protocol/README.md §5.10); absent otherwise.
    pub root: Option<super::TreeRoot>,
}

/// Client to relay: grants more catch-up credit, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// Additional bytes of `batch` frames the relay may send.
    pub bytes: u64,
}
