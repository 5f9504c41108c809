//! Set reconciliation: how a session learns what the client and the relay each lack.
//!
//! [`choose_path`] picks exactly one path per session (protocol/README.md §5.1):
//!
//! 1. **In sync** — equal [`SetDigest`]s, nothing to send.
//! 2. **Catch-up** — the client's synced set is known (its heads' ancestry, or everything up to
//!    a watermark of this epoch); the relay streams the rest.
//! 3. **Id list** — the baseline for clients without sketches: the client lists its ids.
//! 4. **Sketch** (capabilities `ibf` + `mst`) — the room's invertible Bloom filter ([`ibf`],
//!    kept per room by [`index`]), sized from a watermark or the client's [`estimator`].
//! 5. **Refine** — hard divergence: compare [`prefix_tree`] buckets and settle each differing
//!    one by an id list or a small sketch ([`refine`]).
//!
//! Pure: no I/O, no clock.

mod digest;
pub mod estimator;
pub mod ibf;
pub mod index;
pub mod prefix_tree;
pub mod refine;

pub use digest::SetDigest;
pub use refine::{MAX_REFINE_DEPTH, refine_depth};

/// A hash map with a fast, randomly seeded hasher, for the hot maps keyed by ids and short ids
/// (std's SipHash costs several times more per lookup; the random seed keeps crafted keys from
/// piling into one bucket).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The set counterpart of [`FastMap`].
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

use crate::node::NodeId;

use estimator::Estimate;
use index::{MAX_SKETCH_FRACTION, log2_for};

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
    /// Send the room's sketch at `2^log2` cells per sub-table (capability `ibf`).
    Sketch {
        /// Cells per sub-table, as a power of two.
        log2: u8,
    },
    /// Compare prefix-tree buckets at `depth` (capability `mst`).
    Refine {
        /// Prefix length in hex digits.
        depth: u8,
        /// Expected size of the difference, from which the client sizes bucket sketches.
        expected: u64,
    },
}

/// What the planner needs to know about the client, from its `hello` (protocol/README.md
/// §4.1): the room layer builds it from the hints and the negotiated capabilities.
#[derive(Clone, Copy, Debug)]
pub struct ClientSide<'a> {
    /// Digest of every node the client holds (in its scope).
    pub digest: SetDigest,
    /// `(epoch, seq)`: the client holds every node numbered up to `seq` in that epoch.
    pub watermark: Option<(u64, u64)>,
    /// Heads of the client's synced subset.
    pub heads: &'a [NodeId],
    /// How many of the client's nodes are not synced.
    pub unsynced: u64,
    /// Both sides can sketch and refine (capabilities `ibf` and `mst`).
    pub sketches: bool,
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
/// holds a node; `estimate` is the difference measured from the client's estimator, if it
/// sent a valid one.
pub fn choose_path(
    client: &ClientSide<'_>,
    relay: RelaySide,
    estimate: Option<Estimate>,
    knows: impl Fn(&NodeId) -> bool,
) -> ReconPath {
    if client.digest == relay.digest {
        return ReconPath::InSync;
    }
    // A watermark from another epoch, or from the future, says nothing about this room.
    let after = match client.watermark {
        Some((epoch, seq)) if epoch == relay.epoch && seq <= relay.seq => seq,
        _ => 0,
    };
    // The sketch path needs refinement as its fallback, so it takes both capabilities.
    if client.sketches {
        return plan_with_sketches(client, relay, after, estimate);
    }
    let synced_set_is_empty = client.heads.is_empty() && after == 0;
    if client.heads.iter().all(knows) && (synced_set_is_empty || !client.heads.is_empty()) {
        ReconPath::CatchUp { after }
    } else {
        ReconPath::IdList
    }
}

/// §5.7.2: the plan for a client that negotiated `ibf` and `mst`.
fn plan_with_sketches(
    client: &ClientSide<'_>,
    relay: RelaySide,
    after: u64,
    estimate: Option<Estimate>,
) -> ReconPath {
    let (ours, theirs) = (relay.digest.count, client.digest.count);
    // An empty client, or one complete up to a watermark of this epoch, lacks exactly the
    // nodes numbered after it; whatever it holds beyond that it pushes itself.
    if theirs == 0 || after > 0 {
        return ReconPath::CatchUp { after };
    }
    let (difference, beyond_estimator) = match estimate {
        Some(Estimate::About(d)) => (d, false),
        Some(Estimate::AtLeast(d)) => (d, true),
        // A client that synced in another epoch: its synced nodes are (assumed) in the room,
        // so the room's extra nodes plus its unsynced ones bound the difference.
        None => {
            let synced = theirs.saturating_sub(client.unsynced);
            let extra = ours.saturating_sub(synced);
            (extra.saturating_add(client.unsynced), false)
        }
    };
    // The digests differ, so something does.
    let difference = difference.max(1);
    let smaller = ours.min(theirs) as f64;
    let larger = ours.max(theirs);
    if beyond_estimator {
        // Past what the estimator measures: expect everything to differ, so buckets are listed.
        ReconPath::Refine {
            depth: refine_depth(larger),
            expected: larger,
        }
    } else if difference as f64 > MAX_SKETCH_FRACTION * smaller {
        ReconPath::Refine {
            depth: refine_depth(larger),
            expected: difference,
        }
    } else {
        ReconPath::Sketch {
            log2: log2_for(difference),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Capabilities, SyncHints, Watermark};

    /// The planner fed from a `hello`'s hints, as the room layer feeds it.
    fn choose_path(
        hints: &SyncHints,
        relay: RelaySide,
        capabilities: Capabilities,
        estimate: Option<Estimate>,
        knows: impl Fn(&NodeId) -> bool,
    ) -> ReconPath {
        let client = ClientSide {
            digest: hints.digest,
            watermark: hints.watermark.map(|w| (w.epoch, w.seq)),
            heads: &hints.heads,
            unsynced: hints.unsynced,
            sketches: capabilities.contains(Capabilities::IBF.union(Capabilities::MST)),
        };
        super::choose_path(&client, relay, estimate, knows)
    }

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
            ..SyncHints::default()
        }
    }

    #[test]
    fn equal_digests_are_in_sync() {
        let mut d = SetDigest::default();
        d.insert(&NodeId([1; 32]));
        assert_eq!(
            choose_path(
                &hints(d, None, vec![]),
                relay(d),
                Capabilities::PRESENCE,
                None,
                |_| false
            ),
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
            baseline(&h, relay(relay_digest), |_| true),
            ReconPath::CatchUp { after: 40 }
        );
        // Another epoch's watermark is ignored, not trusted.
        let h = hints(
            SetDigest::default(),
            Some(Watermark { epoch: 8, seq: 40 }),
            vec![NodeId([1; 32])],
        );
        assert_eq!(
            baseline(&h, relay(relay_digest), |_| true),
            ReconPath::CatchUp { after: 0 }
        );
    }

    #[test]
    fn empty_client_catches_up_from_zero() {
        let mut relay_digest = SetDigest::default();
        relay_digest.insert(&NodeId([1; 32]));
        let h = hints(SetDigest::default(), None, vec![]);
        assert_eq!(
            baseline(&h, relay(relay_digest), |_| false),
            ReconPath::CatchUp { after: 0 }
        );
    }

    /// The plan for a client without sketch capabilities.
    fn baseline(h: &SyncHints, relay: RelaySide, knows: impl Fn(&NodeId) -> bool) -> ReconPath {
        choose_path(h, relay, Capabilities::PRESENCE, None, knows)
    }

    fn digest_of(n: u8) -> SetDigest {
        SetDigest::of(&(0..n).map(|i| NodeId([i; 32])).collect::<Vec<_>>())
    }

    const SKETCHES: Capabilities = Capabilities::IBF.union(Capabilities::MST);

    #[test]
    fn sketch_clients_catch_up_from_a_current_watermark_without_heads() {
        let wm = Some(Watermark { epoch: 7, seq: 40 });
        let h = hints(digest_of(3), wm, vec![]);
        assert_eq!(
            choose_path(&h, relay(digest_of(5)), SKETCHES, None, |_| false),
            ReconPath::CatchUp { after: 40 }
        );
        // An empty client streams everything, estimator or not.
        let h = hints(SetDigest::default(), None, vec![]);
        let estimate = Some(Estimate::AtLeast(1_000));
        assert_eq!(
            choose_path(&h, relay(digest_of(5)), SKETCHES, estimate, |_| false),
            ReconPath::CatchUp { after: 0 }
        );
    }

    /// A relay of `count` nodes (the digest's sum does not matter to sizing).
    fn relay_of(count: u64) -> RelaySide {
        RelaySide {
            digest: SetDigest {
                count,
                ..SetDigest::default()
            },
            epoch: 7,
            seq: count,
        }
    }

    #[test]
    fn sketch_size_follows_the_estimate_and_hard_cases_refine() {
        let relay_side = relay_of(1_000_000);
        let mut h = hints(digest_of(2), None, vec![]);
        h.digest.count = 1_000_000;
        let plan = |estimate| choose_path(&h, relay_side, SKETCHES, Some(estimate), |_| false);
        assert_eq!(plan(Estimate::About(1_000)), ReconPath::Sketch { log2: 9 });
        assert_eq!(plan(Estimate::About(10)), ReconPath::Sketch { log2: 4 });
        // Above 20% of the smaller set, or beyond what the estimator measures: refine.
        assert_eq!(
            plan(Estimate::About(300_000)),
            ReconPath::Refine {
                depth: 3,
                expected: 300_000
            }
        );
        assert_eq!(
            plan(Estimate::AtLeast(10)),
            ReconPath::Refine {
                depth: 3,
                expected: 1_000_000
            }
        );
        // Only one of the two capabilities: the baseline.
        assert_eq!(
            choose_path(
                &h,
                relay_side,
                Capabilities::IBF,
                Some(Estimate::About(10)),
                |_| false
            ),
            ReconPath::CatchUp { after: 0 }
        );
    }

    #[test]
    fn a_previous_epoch_watermark_sizes_from_counts() {
        let relay_side = relay_of(10_500);
        // 10,000 synced nodes (held by the relay) and 300 unsynced: 500 + 300 differ.
        let mut h = hints(digest_of(2), Some(Watermark { epoch: 6, seq: 9 }), vec![]);
        h.digest.count = 10_300;
        h.unsynced = 300;
        assert_eq!(
            choose_path(&h, relay_side, SKETCHES, None, |_| false),
            ReconPath::Sketch {
                log2: index::log2_for(800)
            }
        );
    }

    #[test]
    fn unknown_heads_need_the_id_list() {
        let h = hints(SetDigest::default(), None, vec![NodeId([9; 32])]);
        let mut relay_digest = SetDigest::default();
        relay_digest.insert(&NodeId([1; 32]));
        assert_eq!(
            baseline(&h, relay(relay_digest), |_| false),
            ReconPath::IdList
        );
        // A watermark without heads claims a synced set it does not describe.
        let h = hints(
            SetDigest::default(),
            Some(Watermark { epoch: 7, seq: 3 }),
            vec![],
        );
        assert_eq!(
            baseline(&h, relay(relay_digest), |_| true),
            ReconPath::IdList
        );
    }
}
