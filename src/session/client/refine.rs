//! Plan `refine` on the client's side (protocol/README.md §5.9), also the sketch path's
//! fallback: the relay's bucket summaries arrive, the client answers `bucket_ids`, the relay
//! answers `missing`, and perhaps asks for one more round of lists.

use std::collections::HashSet;

use bytes::Bytes;

use super::{
    CatchingUp, ClientError, ClientEvent, ClientPhase, ClientSession, Misbehaved, State,
    encode_all, misuse,
};
use crate::node::NodeId;
use crate::protocol::{self, BucketSketch, BucketSummary, Buckets, MessageType, Missing};
use crate::recon::MAX_REFINE_DEPTH;
use crate::recon::ibf::SketchKey;

/// Why the sketch path moved to refinement (§5.7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No `want` went out: the sketch did not decode (after `retry`), or the relay had no
    /// sketch of the size needed.
    Undecoded,
    /// The relay did not verify our `want`: the sync marks our decode implied are wrong and
    /// must go before answering (§5.7.5 step 5).
    Unverified,
}

/// Every bucket summary of the relay's `buckets` frames (§5.9 step 1).
#[derive(Debug)]
pub struct Summaries {
    /// The room's sketch key.
    pub key: SketchKey,
    /// Prefix length in hex digits, 1 to 4.
    pub depth: u8,
    /// The relay's expectation of the whole difference.
    pub expected: u64,
    /// One summary per bucket, in bucket order: exactly `16^depth`.
    pub buckets: Vec<BucketSummary>,
}

/// Where plan `refine` is.
#[derive(Debug)]
pub(super) enum RefinePlan {
    /// Plan `refine`, before the first `buckets` frame.
    AwaitBuckets,
    /// `buckets` frames are arriving.
    Receiving(Summaries),
    /// Every summary is with the client, which owes `bucket_ids`.
    Listing { key: SketchKey, depth: u8 },
    /// Our `bucket_ids` are out; `missing` frames are arriving.
    AwaitMissing(MissingIn),
    /// The relay asked for `relist`: the client owes those buckets' ids.
    Relisting { missing: MissingIn, relist: Bytes },
}

/// The relay's `missing` answer as it arrives, and what it is about.
#[derive(Debug)]
pub(super) struct MissingIn {
    key: SketchKey,
    depth: u8,
    /// Every node the client held when it built its first `bucket_ids`.
    covered: HashSet<NodeId>,
    /// Short ids from the `missing` frames so far, of both rounds.
    missing: HashSet<u64>,
    round: Round,
}

/// A round of `bucket_ids` (§5.9 steps 3 and 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Lists and sketches; the relay may ask for a relist.
    First,
    /// Lists of the relisted buckets; the relay asks for nothing more.
    Second,
}

/// Buckets at `depth`: 16^depth.
fn buckets_at(depth: u8) -> usize {
    1usize << (4 * usize::from(depth.min(MAX_REFINE_DEPTH)))
}

impl RefinePlan {
    pub(super) fn phase(&self) -> ClientPhase {
        match self {
            Self::AwaitBuckets | Self::Receiving(_) => ClientPhase::Refining,
            Self::Listing { .. } => ClientPhase::ListingBuckets,
            Self::AwaitMissing(_) => ClientPhase::AwaitMissing,
            Self::Relisting { .. } => ClientPhase::Relisting,
        }
    }

    /// The first `buckets` frame, which fixes key, depth and expected difference for the rest.
    /// `known` is the key a sketch came under, if one did; `fallback` why a sketch path gave up.
    pub(super) fn first(
        frame: Buckets,
        known: Option<SketchKey>,
        fallback: Option<Fallback>,
    ) -> Result<(State, ClientEvent), ClientError> {
        let key =
            SketchKey::from_wire(&frame.key).ok_or(Misbehaved::BadKey(MessageType::Buckets))?;
        if known.is_some_and(|known| known != key) {
            return Err(Misbehaved::KeyChanged(MessageType::Buckets).into());
        }
        if frame.depth == 0 || frame.depth > MAX_REFINE_DEPTH {
            return Err(Misbehaved::BucketDepth(frame.depth).into());
        }
        let summaries = Summaries {
            key,
            depth: frame.depth,
            expected: frame.expected,
            buckets: Vec::new(),
        };
        take_buckets(summaries, frame, fallback)
    }

    /// A `buckets` frame after plan `refine`'s `welcome`: every frame carries the same key,
    /// depth and expected difference (§5.9 step 1).
    pub(super) fn buckets(self, frame: Buckets) -> Result<(State, ClientEvent), ClientError> {
        let summaries = match self {
            Self::AwaitBuckets => return Self::first(frame, None, None),
            Self::Receiving(summaries) => summaries,
            other => {
                let phase = other.phase();
                let ty = MessageType::Buckets;
                return Err(Misbehaved::Unexpected { ty, phase }.into());
            }
        };
        let key =
            SketchKey::from_wire(&frame.key).ok_or(Misbehaved::BadKey(MessageType::Buckets))?;
        if key != summaries.key {
            return Err(Misbehaved::KeyChanged(MessageType::Buckets).into());
        }
        if frame.depth != summaries.depth {
            return Err(Misbehaved::BucketDepthChanged {
                was: summaries.depth,
                now: frame.depth,
            }
            .into());
        }
        if frame.expected != summaries.expected {
            return Err(Misbehaved::ExpectedChanged {
                was: summaries.expected,
                now: frame.expected,
            }
            .into());
        }
        take_buckets(summaries, frame, None)
    }

    /// A `missing` frame: its short ids join the answer; the last one settles the round, or
    /// asks for a relist (first round only).
    pub(super) fn missing(self, frame: Missing) -> Result<(State, ClientEvent), ClientError> {
        let Self::AwaitMissing(mut answer) = self else {
            let phase = self.phase();
            let ty = MessageType::Missing;
            return Err(Misbehaved::Unexpected { ty, phase }.into());
        };
        let shorts = protocol::unpack_shorts(&frame.shorts).map_err(Misbehaved::MissingShorts)?;
        if !frame.last && !frame.relist.is_empty() {
            return Err(Misbehaved::RelistNotLast.into());
        }
        answer.missing.extend(shorts);
        if !frame.last {
            let next = State::Refine(Self::AwaitMissing(answer));
            return Ok((next, ClientEvent::Partial));
        }
        if frame.relist.is_empty() {
            let MissingIn {
                key,
                covered,
                missing,
                ..
            } = answer;
            let next = State::CatchingUp(CatchingUp { key: Some(key) });
            return Ok((
                next,
                ClientEvent::Missing {
                    key,
                    covered,
                    missing,
                },
            ));
        }
        if answer.round == Round::Second {
            return Err(Misbehaved::SecondRelist.into());
        }
        let expected = protocol::bucket_bitmap_len(answer.depth);
        if frame.relist.len() != expected {
            return Err(Misbehaved::RelistLength {
                got: frame.relist.len(),
                expected,
            }
            .into());
        }
        let event = ClientEvent::Relist {
            key: answer.key,
            depth: answer.depth,
            relist: frame.relist.clone(),
        };
        let next = Self::Relisting {
            missing: answer,
            relist: frame.relist,
        };
        Ok((State::Refine(next), event))
    }
}

/// A `buckets` frame's summaries join the ones received; the last frame must complete them.
fn take_buckets(
    mut summaries: Summaries,
    frame: Buckets,
    fallback: Option<Fallback>,
) -> Result<(State, ClientEvent), ClientError> {
    let buckets = buckets_at(summaries.depth);
    let more = protocol::unpack_buckets(&frame.summaries).ok_or(Misbehaved::SummariesTruncated)?;
    if summaries.buckets.len().saturating_add(more.len()) > buckets {
        return Err(Misbehaved::SummariesOverfull { buckets }.into());
    }
    summaries.buckets.extend(more);
    if !frame.last {
        let next = State::Refine(RefinePlan::Receiving(summaries));
        let event = ClientEvent::Buckets {
            fallback,
            summaries: None,
        };
        return Ok((next, event));
    }
    if summaries.buckets.len() != buckets {
        return Err(Misbehaved::SummariesMissing {
            got: summaries.buckets.len(),
            buckets,
        }
        .into());
    }
    let next = RefinePlan::Listing {
        key: summaries.key,
        depth: summaries.depth,
    };
    let event = ClientEvent::Buckets {
        fallback,
        summaries: Some(summaries),
    };
    Ok((State::Refine(next), event))
}

impl ClientSession {
    /// Answers complete bucket summaries (§5.9 steps 2–3) with the `bucket_ids` frames:
    /// `differing` is the bitmap of the buckets whose summaries differ, `shorts` our short ids in
    /// the ones we list, `sketches` the others. `covered` is every node we hold now: the relay's
    /// `missing` answer is about exactly those.
    pub fn bucket_ids(
        &mut self,
        differing: &[u8],
        shorts: &[u64],
        sketches: &[BucketSketch],
        covered: HashSet<NodeId>,
    ) -> Result<Vec<Bytes>, ClientError> {
        let max_frame = self.max_frame();
        self.advance(|_, state| {
            let State::Refine(RefinePlan::Listing { key, depth }) = state else {
                return Err(misuse("bucket_ids", &state));
            };
            let messages = protocol::bucket_ids_messages(differing, shorts, sketches, max_frame);
            let frames = encode_all(messages)?;
            let answer = MissingIn {
                key,
                depth,
                covered,
                missing: HashSet::new(),
                round: Round::First,
            };
            Ok((State::Refine(RefinePlan::AwaitMissing(answer)), frames))
        })
    }

    /// Answers a relist (§5.9 step 7) with the second round of `bucket_ids`: `shorts` are our
    /// short ids in the relisted buckets.
    pub fn relist(&mut self, shorts: &[u64]) -> Result<Vec<Bytes>, ClientError> {
        let max_frame = self.max_frame();
        self.advance(|_, state| {
            let State::Refine(RefinePlan::Relisting { missing, relist }) = state else {
                return Err(misuse("relist", &state));
            };
            let messages = protocol::bucket_ids_messages(&relist, shorts, &[], max_frame);
            let frames = encode_all(messages)?;
            let answer = MissingIn {
                round: Round::Second,
                ..missing
            };
            Ok((State::Refine(RefinePlan::AwaitMissing(answer)), frames))
        })
    }
}
