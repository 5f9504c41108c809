//! `hello` / `welcome`: version and capability negotiation, sync hints and the chosen path
//! (protocol/README.md §4).

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::node::{NodeId, NodeLimits};
use crate::pattern::PatternLimits;
use crate::recon::SetDigest;

/// The protocol versions this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// A set of capability flags. An absent flag means *not supported*; the session uses the
/// intersection of both sides' sets (protocol/README.md §4.3).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// No capabilities.
    pub const NONE: Self = Self(0);
    /// Ephemeral per-peer presence state (`presence`, `presence_update`).
    pub const PRESENCE: Self = Self(1 << 0);
    /// Sketch reconciliation: plan `sketch`, messages `sketch`, `want`, `retry` (§5.7).
    pub const IBF: Self = Self(1 << 1);
    /// Prefix-tree refinement: plan `refine`, messages `buckets`, `bucket_ids`, `missing`
    /// (§5.9).
    pub const MST: Self = Self(1 << 2);
    /// Path-pattern subscriptions: `hello.subscribe`, messages `subscribe`, `unsubscribe`,
    /// `subscribed` (§7.5).
    pub const SUBSCRIPTIONS: Self = Self(1 << 3);
    /// Everything this build implements.
    pub const SUPPORTED: Self = Self::PRESENCE
        .union(Self::IBF)
        .union(Self::MST)
        .union(Self::SUBSCRIPTIONS);

    /// Flags present in either set.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Flags present in both sets. Unknown bits from a newer peer drop out here.
    pub fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// Whether every flag of `flags` is set.
    pub fn contains(self, flags: Self) -> bool {
        self.0 & flags.0 == flags.0
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Capabilities({:#x})", self.0)
    }
}

/// "I have everything the relay numbered up to `seq` in `epoch`."
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// The room epoch the sequence number belongs to.
    pub epoch: u64,
    /// Highest arrival sequence number the client is complete up to.
    pub seq: u64,
}

/// What the client tells the relay about its replica so the relay can pick one path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncHints {
    /// Digest of every node the client holds, synced or not. The empty set's digest travels
    /// as nil (protocol/README.md §4.1), so a fresh client's `hello` stays small.
    #[serde(with = "empty_digest_as_nil")]
    pub digest: SetDigest,
    /// The client's watermark in the room's current epoch, if it has synced before.
    pub watermark: Option<Watermark>,
    /// Heads of the client's *synced* subset (nodes the relay acked or sent). A client that
    /// offers `ibf` sends none: the relay plans from the watermark and counts instead.
    pub heads: Vec<NodeId>,
    /// How many of the client's nodes are not known to be held by the relay.
    pub unsynced: u64,
    /// A difference estimator over every node the client holds (§5.7.1), sent by a client
    /// that offers `ibf` and has no watermark; `None` otherwise.
    pub estimator: Option<Bytes>,
}

/// First frame of a session, client to relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Lowest protocol version the client speaks.
    pub min_version: u16,
    /// Highest protocol version the client speaks.
    pub max_version: u16,
    /// Capabilities the client supports.
    pub capabilities: Capabilities,
    /// Replica summary for path selection.
    pub hints: SyncHints,
    /// Initial catch-up credit in bytes (protocol/README.md §6.2).
    pub credit: u64,
    /// The patterns the session subscribes to (§7.5), or `None` for every node. Only with the
    /// `subscriptions` capability.
    pub subscribe: Option<Vec<String>>,
}

/// The reconciliation path the relay chose, as carried in `welcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Plan {
    /// Nothing to exchange; the session is in steady state.
    InSync = 0,
    /// The relay streams `batch` frames, then `catch_up_done`.
    CatchUp = 1,
    /// The client sends `ids` frames; the relay answers `need`, then streams like `CatchUp`.
    SendIds = 2,
    /// The relay sends its `sketch`; the client answers `want` (or `retry`), then the relay
    /// streams like `CatchUp`.
    Sketch = 3,
    /// The relay sends `buckets`; the client answers `bucket_ids`, the relay `missing`, then
    /// it streams like `CatchUp`.
    Refine = 4,
}

impl Serialize for Plan {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(*self as u8)
    }
}

impl<'de> Deserialize<'de> for Plan {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match u8::deserialize(deserializer)? {
            0 => Ok(Self::InSync),
            1 => Ok(Self::CatchUp),
            2 => Ok(Self::SendIds),
            3 => Ok(Self::Sketch),
            4 => Ok(Self::Refine),
            other => Err(serde::de::Error::custom(format_args!(
                "unknown plan {other}"
            ))),
        }
    }
}

/// Limits the relay enforces, announced so clients can size their frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayLimits {
    /// Largest frame the relay accepts, in bytes.
    pub max_frame: u32,
    /// Most nodes in one `pack`.
    pub max_pack_nodes: u32,
    /// Most ids in one `ids` frame.
    pub max_ids: u32,
    /// Largest presence state, in bytes.
    pub max_presence: u32,
    /// Per-node limits.
    pub node: NodeLimits,
    /// Subscription pattern limits (§3.5).
    pub patterns: PatternLimits,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_frame: 1024 * 1024,
            max_pack_nodes: 1024,
            max_ids: 16 * 1024,
            max_presence: 4 * 1024,
            node: NodeLimits::default(),
            patterns: PatternLimits::default(),
        }
    }
}

/// The relay's answer to `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version the session uses.
    pub version: u16,
    /// Capabilities both sides support.
    pub capabilities: Capabilities,
    /// This session's peer number, as seen in `presence_update`.
    pub peer: u64,
    /// The room's epoch; watermarks from other epochs are ignored.
    pub epoch: u64,
    /// The room's latest arrival sequence number when the plan was made.
    pub seq: u64,
    /// The chosen reconciliation path.
    pub plan: Plan,
    /// Limits the relay enforces; `None` when they are the defaults of
    /// [`RelayLimits::default`] (protocol/README.md §4.2), which is what a `welcome` costs
    /// most of the time.
    pub limits: Option<RelayLimits>,
}

impl Welcome {
    /// The limits in effect: the ones sent, or the defaults.
    pub fn limits(&self) -> RelayLimits {
        self.limits.unwrap_or_default()
    }
}

/// `SyncHints::digest` on the wire: nil for the empty set, `[count, sum]` otherwise. The empty
/// digest written out is refused, so every value keeps exactly one encoding.
mod empty_digest_as_nil {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::recon::SetDigest;

    pub fn serialize<S: Serializer>(digest: &SetDigest, serializer: S) -> Result<S::Ok, S::Error> {
        let empty = *digest == SetDigest::default();
        (!empty).then_some(digest).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SetDigest, D::Error> {
        match Option::<SetDigest>::deserialize(deserializer)? {
            None => Ok(SetDigest::default()),
            Some(digest) if digest == SetDigest::default() => Err(serde::de::Error::custom(
                "the empty set's digest is sent as nil",
            )),
            Some(digest) => Ok(digest),
        }
    }
}
