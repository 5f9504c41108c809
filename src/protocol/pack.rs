//! Steady-state frames: `pack`, `ack`, `resolved`, `broadcast` (protocol/README.md §7).

use serde::{Deserialize, Serialize};

use crate::node::{Node, NodeId, Rejection};

/// Client to relay: new nodes, parents before children where possible.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pack {
    /// Client-chosen number echoed in the `ack`.
    pub number: u64,
    /// The nodes.
    pub nodes: Vec<Node>,
}

/// What happened to one node of a `pack`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored and broadcast with this arrival number.
    Accepted(u64),
    /// Already in the room with this arrival number; nothing changed.
    Duplicate(u64),
    /// Parents missing; the node waits in the orphan buffer. A `resolved` entry follows.
    Pending,
    /// Refused; nothing was stored.
    Rejected(Rejection),
}

const ACCEPTED: u8 = 0;
const DUPLICATE: u8 = 1;
const PENDING: u8 = 2;
const REJECTED: u8 = 3;

// Encoded as `[code, value]` so an ack costs a few bytes per node.
impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let pair = match *self {
            Self::Accepted(seq) => (ACCEPTED, seq),
            Self::Duplicate(seq) => (DUPLICATE, seq),
            Self::Pending => (PENDING, 0),
            Self::Rejected(reason) => (REJECTED, u64::from(reason.code())),
        };
        pair.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let (code, value) = <(u8, u64)>::deserialize(deserializer)?;
        match code {
            ACCEPTED => Ok(Self::Accepted(value)),
            DUPLICATE => Ok(Self::Duplicate(value)),
            PENDING if value == 0 => Ok(Self::Pending),
            REJECTED => u16::try_from(value)
                .ok()
                .and_then(Rejection::from_code)
                .map(Self::Rejected)
                .ok_or_else(|| D::Error::custom(format_args!("unknown rejection {value}"))),
            _ => Err(D::Error::custom(format_args!(
                "unknown outcome [{code}, {value}]"
            ))),
        }
    }
}

/// Relay to client: the outcome of each node of one `pack`, in pack order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The `pack`'s number.
    pub number: u64,
    /// One outcome per node, same order as the pack.
    pub outcomes: Vec<Outcome>,
}

/// Relay to client: final outcomes for nodes an earlier `ack` reported `Pending`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// Node id and its final outcome (`Accepted` or `Rejected`).
    pub outcomes: Vec<(NodeId, Outcome)>,
}

/// Relay to subscribers: nodes admitted to the room with consecutive arrival numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broadcast {
    /// Arrival number of the first node; the rest follow consecutively.
    pub first_seq: u64,
    /// The nodes.
    pub nodes: Vec<Node>,
}
