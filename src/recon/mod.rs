//! Set reconciliation: how a session learns what the client and the relay each lack.
//!
//! This version carries the baseline every peer supports (protocol/README.md §5):
//!
//! 1. **In sync** — equal [`SetDigest`]s, nothing to send.
//! 2. **Catch-up** — the client's synced heads are all known to the relay, so the client's synced
//!    set is exactly their ancestry; the relay streams the rest, starting after the client's
//!    watermark when it has one.
//! 3. **Id list** — anything else: the client lists its ids, the relay answers with what it needs
//!    and streams what the client lacks.
//!
//! [`choose_path`] is the planner seam: sketch-based paths join it as new [`ReconPath`] variants
//! gated on negotiated capabilities, without touching the session phases. Their building blocks
//! are here already, not yet negotiated on the wire: [`ibf`] (a foldable invertible Bloom
//! filter over keyed short ids), [`estimator`] (a compact difference estimator to size it on
//! first contact) and [`prefix_tree`] (a 16-ary Merkle tree by id prefix, for hard divergence
//! and for verifying a decoded result against a collision-resistant root). Pure: no I/O, no
//! clock.

mod digest;
pub mod estimator;
pub mod ibf;
pub mod index;
pub mod prefix_tree;

pub use digest::SetDigest;

use crate::node::NodeId;
use crate::protocol::{SyncHints, Watermark};

/// The single reconciliation path the relay picks for a session from the client's hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconPath {
    /// Both sides hold the same set.
    InSync,
    /// The client's synced set is the ancestry of its synced heads; stream the rest, skipping
    /// everything at or below `after` (the client's watermark in this epoch, else 0).
    CatchUp {
        /// Arrival sequence number the client is known to be complete up to.
        after: u64,
    },
    /// The client must list its ids.
    IdList,
}

/// What the planner needs to know about the relay's side of a room.
#[derive(Clone, Copy, Debug)]
pub struct RelaySide {
    /// Digest of everything the room holds.
    pub digest: SetDigest,
    /// The room's current epoch: arrival numbers are only comparable within one epoch.
    pub epoch: u64,
    /// The room's latest arrival sequence number.
    pub seq: u64,
}

/// Picks the reconciliation path (protocol/README.md §5.1). `knows` tells whether the room
/// holds a node.
pub fn choose_path(
    client: &SyncHints,
    relay: RelaySide,
    knows: impl Fn(&NodeId) -> bool,
) -> ReconPath {
    if client.digest == relay.digest {
        return ReconPath::InSync;
    }
    // A watermark from another epoch, or from the future, says nothing about this room.
    let after = match client.watermark {
        Some(Watermark { epoch, seq }) if epoch == relay.epoch && seq <= relay.seq => seq,
        _ => 0,
    };
    let synced_set_is_empty = client.heads.is_empty() && after == 0;
    if client.heads.iter().all(knows) && (synced_set_is_empty || !client.heads.is_empty()) {
        ReconPath::CatchUp { after }
    } else {
        ReconPath::IdList
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(digest: SetDigest) -> RelaySide {
        RelaySide {
            digest,
            epoch: 7,
            seq: 100,
        }
    }

    fn hints(digest: SetDigest, watermark: Option<Watermark>, heads: Vec<NodeId>) -> SyncHints {
        SyncHints {
            digest,
            watermark,
            heads,
        }
    }

    #[test]
    fn equal_digests_are_in_sync() {
        let mut d = SetDigest::default();
        d.insert(&NodeId([1; 32]));
        assert_eq!(
            choose_path(&hints(d, None, vec![]), relay(d), |_| false),
            ReconPath::InSync
        );
    }

    #[test]
    fn known_heads_catch_up_after_the_watermark() {
        let mut relay_digest = SetDigest::default();
        relay_digest.insert(&NodeId([1; 32]));
        let wm = Some(Watermark { epoch: 7, seq: 40 });
        let h = hints(SetDigest::default(), wm, vec![NodeId([1; 32])]);
        assert_eq!(
            choose_path(&h, relay(relay_digest), |_| true),
            ReconPath::CatchUp { after: 40 }
        );
        // Another epoch's watermark is ignored, not trusted.
        let h = hints(
            SetDigest::default(),
            Some(Watermark { epoch: 8, seq: 40 }),
            vec![NodeId([1; 32])],
        );
        assert_eq!(
            choose_path(&h, relay(relay_digest), |_| true),
            ReconPath::CatchUp { after: 0 }
        );
    }

    #[test]
    fn empty_client_catches_up_from_zero() {
        let mut relay_digest = SetDigest::default();
        relay_digest.insert(&NodeId([1; 32]));
        let h = hints(SetDigest::default(), None, vec![]);
        assert_eq!(
            choose_path(&h, relay(relay_digest), |_| false),
            ReconPath::CatchUp { after: 0 }
        );
    }

    #[test]
    fn unknown_heads_need_the_id_list() {
        let h = hints(SetDigest::default(), None, vec![NodeId([9; 32])]);
        let mut relay_digest = SetDigest::default();
        relay_digest.insert(&NodeId([1; 32]));
        assert_eq!(
            choose_path(&h, relay(relay_digest), |_| false),
            ReconPath::IdList
        );
        // A watermark without heads claims a synced set it does not describe.
        let h = hints(
            SetDigest::default(),
            Some(Watermark { epoch: 7, seq: 3 }),
            vec![],
        );
        assert_eq!(
            choose_path(&h, relay(relay_digest), |_| true),
            ReconPath::IdList
        );
    }
}
