//! Subscription changes mid-session (protocol/README.md §7.5).

use serde::{Deserialize, Serialize};

/// Client to relay: add patterns to the session's subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Chosen by the client; echoed in `subscribed`.
    pub number: u64,
    /// Patterns to add (§3.5).
    pub patterns: Vec<String>,
}

/// Client to relay: remove patterns from the session's subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// Chosen by the client; echoed in `subscribed`.
    pub number: u64,
    /// Patterns to remove, compared in canonical form; unknown ones are ignored.
    pub patterns: Vec<String>,
}

/// Relay to client: a subscription change is complete, backfill included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The number of the `subscribe` or `unsubscribe` this answers.
    pub number: u64,
    /// The whole subscription now, in canonical form, sorted.
    pub patterns: Vec<String>,
    /// The client now holds every node up to this arrival number that matches the
    /// subscription (the backfill is complete); live `broadcast`s follow from here.
    pub seq: u64,
}
