//! Why a client session cannot go on.
//!
//! Kept apart as rustls keeps its errors: a frame that does not decode (malformed), a valid
//! message the relay may not send there or with those contents (it misbehaved), a version we
//! do not speak (incompatible), and a call the caller made out of turn (misuse).

use super::ClientPhase;
use crate::node::NodeId;
use crate::protocol::{DecodeError, EncodeError, MessageType, Plan, ShortsLengthError};
use crate::recon::ibf::SketchError;

/// The session cannot go on. Unless the caller is at fault ([`Misuse`](Self::Misuse),
/// [`Encode`](Self::Encode)), the relay broke the protocol: the connection should be dropped and
/// re-established (protocol/README.md §2.2).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The frame did not decode.
    #[error("relay sent an undecodable frame: {0}")]
    Decode(#[from] DecodeError),
    /// The relay chose a protocol version we did not offer.
    #[error("relay chose protocol version {0}, which this client does not speak")]
    Version(u16),
    /// A valid message the relay may not send now, or with these contents.
    #[error("relay broke the protocol: {0}")]
    Misbehaved(#[from] Misbehaved),
    /// One of our frames could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The caller drove the session out of turn: a frame while it owed an answer, an answer
    /// nothing asked for, anything after an error. A bug in the caller, not in the relay.
    #[error("{call} called while the session is {phase:?}")]
    Misuse {
        /// The method called.
        call: &'static str,
        /// Where the session was.
        phase: ClientPhase,
    },
}

/// How the relay broke the protocol, one reason per rule (protocol/README.md §2.2, §5, §7).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misbehaved {
    /// A message this phase does not take (§2.2).
    #[error("{ty:?} while {phase:?}")]
    Unexpected {
        /// The message.
        ty: MessageType,
        /// Where the session was.
        phase: ClientPhase,
    },
    /// Plan `sketch` or `refine` without both sides setting `ibf` and `mst` (§5.1).
    #[error("plan {0:?} without the ibf and mst capabilities")]
    PlanNotNegotiated(Plan),
    /// `need` names an id our `ids` did not list (§5.4).
    #[error("need names {0}, which our ids did not list")]
    NeedNotListed(NodeId),
    /// A `broadcast` whose arrival numbers run past the largest (§7.3).
    #[error("broadcast of {nodes} nodes from arrival number {first_seq} overflows")]
    SeqOverflow {
        /// Its first number.
        first_seq: u64,
        /// Its nodes.
        nodes: usize,
    },
    /// `subscribed` answers another change than the one in flight (§7.5).
    #[error("subscribed answers change {got}, but change {expected} is in flight")]
    SubscribedNumber {
        /// The change in flight.
        expected: u64,
        /// The number `subscribed` carries.
        got: u64,
    },
    /// A `sketch` or `buckets` key that is not 16 bytes (§5.7.1).
    #[error("{0:?} frame with a key that is not 16 bytes")]
    BadKey(MessageType),
    /// A `sketch` or `buckets` frame under another key than the session's earlier ones
    /// (§5.7.1: one key per room and epoch).
    #[error("{0:?} frame under another sketch key than before")]
    KeyChanged(MessageType),
    /// A sketch larger than the largest (§5.7.3).
    #[error("sketch of 2^{0} cells per sub-table, beyond the largest")]
    SketchSize(u8),
    /// A `sketch` frame of another size or kind while a sketch was arriving (§5.7.5 step 1).
    #[error("a frame of another sketch arrived mid-sketch")]
    SketchShapeChanged,
    /// The cells do not make a sketch: not whole 13-byte cells (§5.7.3).
    #[error("sketch cells: {0}")]
    SketchCells(SketchError),
    /// More cells than the sketch holds.
    #[error("more cells than the sketch holds")]
    SketchOverfull,
    /// An extension before any sketch (§5.7.5 step 4).
    #[error("a sketch extension without the sketch it extends")]
    ExtensionWithoutSketch,
    /// An extension that is not twice the sketch it extends (§5.7.5 step 4).
    #[error("an extension to 2^{got} cells of a sketch of 2^{base}")]
    ExtensionSize {
        /// The size of the sketch we hold.
        base: u8,
        /// The size of the extension.
        got: u8,
    },
    /// A whole sketch after our `retry`, where only its extension may come (§5.7.5 step 4).
    #[error("a whole sketch after our retry")]
    NotAnExtension,
    /// A bucket depth outside 1..=4 (§5.9).
    #[error("bucket depth {0}")]
    BucketDepth(u8),
    /// `buckets` frames disagree on the depth (§5.9 step 1).
    #[error("bucket depth changed from {was} to {now} between frames")]
    BucketDepthChanged {
        /// The first frame's.
        was: u8,
        /// This frame's.
        now: u8,
    },
    /// `buckets` frames disagree on the expected difference (§5.9 step 1).
    #[error("expected difference changed from {was} to {now} between frames")]
    ExpectedChanged {
        /// The first frame's.
        was: u64,
        /// This frame's.
        now: u64,
    },
    /// Bucket summaries that end inside one (§5.9 step 1).
    #[error("truncated bucket summaries")]
    SummariesTruncated,
    /// More summaries than buckets.
    #[error("more summaries than the {buckets} buckets")]
    SummariesOverfull {
        /// Buckets at the depth.
        buckets: usize,
    },
    /// The last `buckets` frame leaves buckets without a summary.
    #[error("{got} summaries for {buckets} buckets")]
    SummariesMissing {
        /// Summaries received.
        got: usize,
        /// Buckets at the depth.
        buckets: usize,
    },
    /// `missing` short ids that are not whole 8-byte words (§5.9 step 5).
    #[error("missing: {0}")]
    MissingShorts(ShortsLengthError),
    /// A `relist` on a `missing` frame other than the last (§5.9 step 5).
    #[error("relist on a missing frame that is not the last")]
    RelistNotLast,
    /// A `relist` bitmap of the wrong length (§5.9 step 5).
    #[error("relist of {got} bytes where the bitmap has {expected}")]
    RelistLength {
        /// Its length.
        got: usize,
        /// The bitmap's length at the buckets' depth.
        expected: usize,
    },
    /// A `relist` after the second round (§5.9 step 7: a relay never asks for a third).
    #[error("a relist after the second round")]
    SecondRelist,
}
