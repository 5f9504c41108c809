//! The relay session's phases and what each one owns (protocol/README.md §2).
//!
//! Every piece of per-session reconciliation and streaming state lives in the variant of the
//! phase it belongs to, so the room cannot find a sketch round in a steady session or a cursor
//! in one still collecting ids: the room reads a phase's state through the request it answers,
//! and hands the next phase's state over when it moves the session on.

use std::time::Instant;

use bytes::Bytes;

use crate::node::NodeId;
use crate::protocol::{BucketSketch, Plan};
use crate::recon::ReconPath;

use super::super::Cursor;

/// A sketch that is out: `2^log2` cells per sub-table, made at arrival number `at_seq`;
/// `extended` once its one extension was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SketchRound {
    /// Cells per sub-table, as a power of two.
    pub log2: u8,
    /// The room's arrival number when the sketch was made.
    pub at_seq: u64,
    /// Whether this is the extension (no further one follows).
    pub extended: bool,
}

/// Bucket summaries that are out: at `depth`, made at arrival number `at_seq`, announcing an
/// `expected` difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefineRound {
    /// Prefix-tree depth of the buckets.
    pub depth: u8,
    /// The room's arrival number when the summaries were made.
    pub at_seq: u64,
    /// The difference the summaries announce.
    pub expected: u64,
}

/// A refinement whose first round left buckets to list again.
#[derive(Debug)]
pub struct Relisting {
    /// The buckets the second round must cover (a bitmap, as in `missing`).
    pub buckets: Bytes,
    /// What the first round settled.
    pub cursor: Cursor,
}

/// How a session's reconciliation starts, as the room planned it at `hello`.
#[derive(Debug)]
pub enum Start {
    /// In sync as of arrival number `at`.
    InSync {
        /// The number `welcome.seq` carries.
        at: u64,
    },
    /// Stream `cursor` (plan `catch_up`).
    CatchUp {
        /// What the client lacks.
        cursor: Cursor,
        /// The client holds stored nodes only, so the stream may end at the last stored one
        /// (the rest follows as broadcasts once stored, §6.1).
        stored_only: bool,
    },
    /// Collect the client's id list (plan `send_ids`).
    SendIds,
    /// The sketch goes out (plan `sketch`).
    Sketch(SketchRound),
    /// Bucket summaries go out (plan `refine`).
    Refine(RefineRound),
}

impl Start {
    /// The start of `path`, planned at arrival number `at_seq`; `catch_up` makes the cursor
    /// of a catch-up after a watermark, and says whether it streams stored nodes only.
    pub fn from_path(
        path: ReconPath,
        at_seq: u64,
        catch_up: impl FnOnce(u64) -> (Cursor, bool),
    ) -> Self {
        match path {
            ReconPath::InSync => Self::InSync { at: at_seq },
            ReconPath::CatchUp { after } => {
                let (cursor, stored_only) = catch_up(after);
                Self::CatchUp {
                    cursor,
                    stored_only,
                }
            }
            ReconPath::IdList => Self::SendIds,
            ReconPath::Sketch { log2 } => Self::Sketch(SketchRound {
                log2,
                at_seq,
                extended: false,
            }),
            ReconPath::Refine { depth, expected } => Self::Refine(RefineRound {
                depth,
                at_seq,
                expected,
            }),
        }
    }

    /// The plan `welcome` announces.
    pub fn plan(&self) -> Plan {
        match self {
            Self::InSync { .. } => Plan::InSync,
            Self::CatchUp { .. } => Plan::CatchUp,
            Self::SendIds => Plan::SendIds,
            Self::Sketch(_) => Plan::Sketch,
            Self::Refine(_) => Plan::Refine,
        }
    }
}

/// How a stream ends, and so how far it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// At the last stored node, with `catch_up_done` (plan `catch_up` of a client that holds
    /// stored nodes only).
    AtStored,
    /// At the room's latest node, with `catch_up_done`.
    AtLatest,
    /// At the room's latest node, with `catch_up_done` carrying the set root: the client
    /// decided what to send from short ids and digests (plans `sketch` and `refine`, §5.10).
    AtLatestWithRoot,
    /// At the room's latest node, with `subscribed` answering this change number.
    Subscribed(u64),
}

/// A stream of history in progress: catch-up after reconciliation, or a subscription's
/// backfill.
#[derive(Debug)]
pub struct Stream {
    cursor: Cursor,
    /// The next node's encoding is being read back from the store.
    waiting_on: Option<u64>,
    ending: Ending,
}

impl Stream {
    /// A stream of `cursor` that ends as `ending` says.
    pub fn new(cursor: Cursor, ending: Ending) -> Self {
        Self {
            cursor,
            waiting_on: None,
            ending,
        }
    }

    /// Where the stream stands.
    pub fn cursor_mut(&mut self) -> &mut Cursor {
        &mut self.cursor
    }

    /// How the stream ends.
    pub fn ending(&self) -> Ending {
        self.ending
    }

    /// The stream cannot go on until node `seq` is read back from the store.
    pub fn wait_for(&mut self, seq: u64) {
        self.waiting_on = Some(seq);
    }

    /// The node the stream waits for, if any.
    pub fn waiting_on(&self) -> Option<u64> {
        self.waiting_on
    }

    /// The node it waited for is back.
    pub fn resume(&mut self) {
        self.waiting_on = None;
    }
}

/// The differing-bucket bitmap and lists of a `bucket_ids` answer, as its frames arrive.
#[derive(Debug, Default)]
pub(super) struct BucketListing {
    pub(super) differing: Option<Bytes>,
    pub(super) shorts: Vec<u64>,
    pub(super) sketches: Vec<BucketSketch>,
    /// Bytes of bucket sketches so far: they count against the id-list bound.
    pub(super) sketch_bytes: usize,
}

/// Where a relay session is.
#[derive(Debug)]
pub(super) enum Phase {
    /// Waiting for `hello` until `deadline` (none if the clock could not hold it).
    AwaitHello {
        deadline: Option<Instant>,
    },
    /// `hello` was taken; the room is planning the session.
    Joining {
        deadline: Option<Instant>,
    },
    /// Plan `send_ids`: collecting the client's ids until `last`.
    CollectingIds(Vec<NodeId>),
    /// The sketch is out; collecting `want` short ids until `last`, or a `retry`.
    AwaitWant {
        shorts: Vec<u64>,
        sketch: SketchRound,
    },
    /// Bucket summaries are out; collecting `bucket_ids` until `last`.
    CollectingBucketIds {
        /// Boxed: inline, the listing would make every phase, and so every session, ~70 bytes
        /// larger; only a session in refinement needs one.
        listing: Box<BucketListing>,
        round: RefineRound,
        /// Set in the second round: what the first settled.
        relisting: Option<Box<Relisting>>,
    },
    /// The room is answering what the client listed.
    Settling,
    /// Catch-up or backfill streams, paced by credit. Boxed: a cursor is most of a phase's
    /// size and only a streaming session needs one.
    Streaming(Box<Stream>),
    Steady,
    Closed,
}
