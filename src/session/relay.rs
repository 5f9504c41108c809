//! The relay's side of one session.

use std::time::Instant;

use bytes::Bytes;

use crate::node::NodeId;
use crate::pattern::Pattern;
use crate::protocol::{
    self, BucketSketch, Capabilities, Hello, Message, MessageType, PROTOCOL_VERSION, Pack,
    RelayLimits, SyncHints,
};
use crate::recon::SetDigest;

use super::error::{Fault, SessionError};
use phase::{BucketListing, Phase};
pub use phase::{Ending, RefineRound, Relisting, SketchRound, Start, Stream};

mod phase;

/// Errors tolerated before a session is closed with
/// [`CloseCode::ProtocolViolation`](crate::protocol::CloseCode::ProtocolViolation).
pub const MAX_ERRORS: u32 = 8;

/// What the room must do for a session after a frame.
#[derive(Debug)]
#[must_use]
pub enum Request {
    /// A valid `hello`: plan the path, then call [`RelaySession::welcome`].
    Join {
        /// The client's replica summary.
        hints: SyncHints,
        /// Negotiated capabilities.
        capabilities: Capabilities,
        /// The patterns the session subscribes to, or `None` for every node.
        subscribe: Option<Vec<Pattern>>,
    },
    /// `subscribe` (`add`) or `unsubscribe` patterns (steady sessions only).
    ChangeSubscription {
        /// The client's number for the change.
        number: u64,
        /// Parsed patterns.
        patterns: Vec<Pattern>,
        /// Add them, or remove them.
        add: bool,
    },
    /// The client's complete id list (plan `SendIds`).
    Ids(Vec<NodeId>),
    /// The client decoded the sketch (plan `Sketch`): the short ids it lacks and the digest
    /// of the set it believes both sides share.
    Want {
        /// Short ids of room nodes the client lacks.
        shorts: Vec<u64>,
        /// Digest of the client's shared set.
        shared: SetDigest,
        /// The sketch it decoded.
        sketch: SketchRound,
    },
    /// The client could not decode `sketch`: extend it, or refine.
    Retry(SketchRound),
    /// The client's answer to the bucket summaries (plan `Refine`).
    BucketIds {
        /// Bitmap of the buckets whose summaries differ.
        differing: Bytes,
        /// Short ids of the client's nodes in the buckets it lists.
        shorts: Vec<u64>,
        /// Its sketches of the buckets it does not list.
        sketches: Vec<BucketSketch>,
        /// The summaries it answers.
        round: RefineRound,
        /// In a second round: what the first settled.
        relisting: Option<Box<Relisting>>,
    },
    /// Credit grew; send more catch-up if any is due.
    Pump,
    /// New nodes to validate, store and broadcast.
    Pack(Pack),
    /// New presence state for this peer.
    Presence(Bytes),
}

/// The session's reaction to one received frame.
#[derive(Debug)]
#[must_use]
pub enum Reaction {
    /// Nothing to do (a frame that only updated session state).
    None,
    /// Hand this to the room.
    Request(Request),
    /// Send the error's `error` frame, then close the session if the error says so.
    Reject(SessionError),
}

/// Sans-IO relay session: checks every frame against the phase and the negotiated limits,
/// tracks catch-up credit, and owns every piece of state a phase needs (the sketch or bucket
/// round that is out, the ids being collected, the stream's cursor). It never touches room
/// data: the room acts on its [`Request`]s, which carry the phase's state it needs, and moves
/// it on with [`welcome`](Self::welcome), [`sketch_sent`](Self::sketch_sent),
/// [`refine`](Self::refine), [`stream`](Self::stream) and [`caught_up`](Self::caught_up).
/// A frame the phase does not take is a typed error in every phase.
#[derive(Debug)]
pub struct RelaySession {
    phase: Phase,
    config: RelaySessionConfig,
    capabilities: Capabilities,
    /// Catch-up credit in bytes: what the client granted minus the size of every batch queued.
    /// Negative while a batch that did not fit is being repaid (§6.2); never above
    /// `config.max_credit`.
    balance: i64,
    errors: u32,
}

/// Per-session policy of the relay.
#[derive(Clone, Copy, Debug)]
pub struct RelaySessionConfig {
    /// Limits announced in `welcome` and enforced here.
    pub limits: RelayLimits,
    /// Most catch-up credit a client may hold, bounding queued catch-up bytes.
    pub max_credit: u64,
    /// Most ids one id list may hold in total (32 bytes of relay memory each).
    pub max_total_ids: usize,
}

impl Default for RelaySessionConfig {
    fn default() -> Self {
        Self {
            limits: RelayLimits::default(),
            max_credit: 4 * 1024 * 1024,
            max_total_ids: 4_000_000,
        }
    }
}

impl RelaySession {
    /// A session that has just connected and must send `hello` by `deadline`.
    pub fn new(config: RelaySessionConfig, deadline: Option<Instant>) -> Self {
        Self {
            phase: Phase::AwaitHello { deadline },
            config,
            capabilities: Capabilities::NONE,
            balance: 0,
            errors: 0,
        }
    }

    /// Capabilities negotiated in `hello` (none before it).
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// The time by which `hello` is due, until the session is welcomed.
    pub fn handshake_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitHello { deadline } | Phase::Joining { deadline } => deadline,
            _ => None,
        }
    }

    /// Whether the session receives live broadcasts.
    pub fn is_steady(&self) -> bool {
        matches!(self.phase, Phase::Steady)
    }

    /// Whether the session is streaming catch-up (or a backfill).
    pub fn is_streaming(&self) -> bool {
        matches!(self.phase, Phase::Streaming(_))
    }

    /// Whether the stream in progress is a backfill (it ends with `subscribed`, not
    /// `catch_up_done`).
    pub fn is_backfilling(&self) -> bool {
        matches!(&self.phase, Phase::Streaming(stream)
            if matches!(stream.ending(), Ending::Subscribed(_)))
    }

    /// Whether the session was welcomed (and is not closed).
    pub fn has_joined(&self) -> bool {
        !matches!(
            self.phase,
            Phase::AwaitHello { .. } | Phase::Joining { .. } | Phase::Closed
        )
    }

    /// Whether the balance allows another batch (it is above zero).
    pub fn has_credit(&self) -> bool {
        self.balance > 0
    }

    /// Records that a batch of `bytes` was queued. A batch larger than the balance leaves it
    /// negative: the overdraft is repaid by the next grants rather than written off, so the
    /// bytes in flight never exceed what the client granted plus one frame.
    pub fn spend_credit(&mut self, bytes: u64) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.balance = self.balance.saturating_sub(bytes);
    }

    /// Adds a grant to the balance, capped at `config.max_credit` (credit above the cap is
    /// discarded, §6.2).
    fn grant_credit(&mut self, bytes: u64) {
        let cap = i64::try_from(self.config.max_credit).unwrap_or(i64::MAX);
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.balance = self.balance.saturating_add(bytes).min(cap);
    }

    /// `welcome` is queued with `start`'s plan: the session moves to the phase that plan
    /// begins with, owning its state.
    pub fn welcome(&mut self, start: Start) {
        self.phase = match start {
            Start::InSync { .. } => Phase::Steady,
            Start::CatchUp {
                cursor,
                stored_only,
            } => {
                let ending = if stored_only {
                    Ending::AtStored
                } else {
                    Ending::AtLatest
                };
                Phase::Streaming(Box::new(Stream::new(cursor, ending)))
            }
            Start::SendIds => Phase::CollectingIds(Vec::new()),
            Start::Sketch(sketch) => Phase::AwaitWant {
                shorts: Vec::new(),
                sketch,
            },
            Start::Refine(round) => Phase::CollectingBucketIds {
                listing: Box::default(),
                round,
                relisting: None,
            },
        };
    }

    /// The extension of a sketch the client could not decode is queued: the session
    /// collects `want` again.
    pub fn sketch_sent(&mut self, sketch: SketchRound) {
        self.phase = Phase::AwaitWant {
            shorts: Vec::new(),
            sketch,
        };
    }

    /// Bucket summaries are queued (the plan, or the sketch path gave up), or a second
    /// round of `bucket_ids` is due after `relisting`: the session collects `bucket_ids`.
    pub fn refine(&mut self, round: RefineRound, relisting: Option<Box<Relisting>>) {
        self.phase = Phase::CollectingBucketIds {
            listing: Box::default(),
            round,
            relisting,
        };
    }

    /// Reconciliation is settled (its `need` or `missing` frames are queued), or a
    /// subscription grew: `stream` starts, paced by credit.
    pub fn stream(&mut self, stream: Stream) {
        self.phase = Phase::Streaming(Box::new(stream));
    }

    /// The stream in progress, if the session is streaming.
    pub fn stream_mut(&mut self) -> Option<&mut Stream> {
        match &mut self.phase {
            Phase::Streaming(stream) => Some(stream),
            _ => None,
        }
    }

    /// The stream reached its end and its last frame is queued: the session is live.
    /// Returns how the stream ends (`None` if it was not streaming).
    pub fn caught_up(&mut self) -> Option<Ending> {
        let Phase::Streaming(stream) = &self.phase else {
            return None;
        };
        let ending = stream.ending();
        self.phase = Phase::Steady;
        Some(ending)
    }

    /// The connection is gone or being closed; every later frame is ignored.
    pub fn close(&mut self) {
        self.phase = Phase::Closed;
    }

    /// Handles one received binary frame.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Reaction {
        if matches!(self.phase, Phase::Closed) {
            return Reaction::None;
        }
        let message = match protocol::decode(frame) {
            Ok(message) => message,
            Err(e) => {
                // A garbled hello leaves nothing to talk about.
                if matches!(self.phase, Phase::AwaitHello { .. }) {
                    return self.fatal(SessionError::decode(&e));
                }
                return self.complain(SessionError::decode(&e));
            }
        };
        let ty = message.message_type();
        match (&mut self.phase, message) {
            (Phase::AwaitHello { .. }, Message::Hello(hello)) => self.accept_hello(hello),
            (Phase::AwaitHello { .. }, _) => self.fatal(SessionError::new(
                Fault::Unexpected,
                Some(ty),
                "the first frame must be hello",
            )),
            (Phase::CollectingIds(collected), Message::Ids(chunk)) => {
                let max = self.config.limits.max_ids as usize;
                if chunk.ids.len() > max {
                    return self.complain(limit(ty, format!("more than {max} ids in one frame")));
                }
                let total = self.config.max_total_ids;
                if collected.len().saturating_add(chunk.ids.len()) > total {
                    return self.complain(SessionError::new(
                        Fault::ListTooLong,
                        Some(ty),
                        format!("id list longer than {total}"),
                    ));
                }
                collected.extend(chunk.ids);
                if chunk.last {
                    let ids = std::mem::take(collected);
                    self.phase = Phase::Settling;
                    Reaction::Request(Request::Ids(ids))
                } else {
                    Reaction::None
                }
            }
            (
                Phase::AwaitWant {
                    shorts: collected,
                    sketch,
                },
                Message::Want(want),
            ) => {
                let total = self.config.max_total_ids;
                let shorts = match protocol::unpack_shorts(&want.shorts) {
                    Ok(shorts) => shorts,
                    Err(e) => return self.complain(malformed(ty, e.to_string())),
                };
                if collected.len().saturating_add(shorts.len()) > total {
                    return self.complain(SessionError::new(
                        Fault::ListTooLong,
                        Some(ty),
                        format!("want list longer than {total}"),
                    ));
                }
                match (want.last, want.shared) {
                    (true, Some(shared)) => {
                        collected.extend(shorts);
                        let shorts = std::mem::take(collected);
                        let sketch = *sketch;
                        self.phase = Phase::Settling;
                        Reaction::Request(Request::Want {
                            shorts,
                            shared,
                            sketch,
                        })
                    }
                    (false, None) => {
                        collected.extend(shorts);
                        Reaction::None
                    }
                    _ => self.complain(malformed(
                        ty,
                        "the shared digest comes with the last want frame, and only then".into(),
                    )),
                }
            }
            (Phase::AwaitWant { sketch, .. }, Message::Retry(_)) => {
                let sketch = *sketch;
                self.phase = Phase::Settling;
                Reaction::Request(Request::Retry(sketch))
            }
            (
                Phase::CollectingBucketIds {
                    listing,
                    round,
                    relisting,
                },
                Message::BucketIds(chunk),
            ) => {
                let BucketListing {
                    differing,
                    shorts,
                    sketches,
                    sketch_bytes,
                } = &mut **listing;
                let total = self.config.max_total_ids;
                let more = match protocol::unpack_shorts(&chunk.shorts) {
                    Ok(more) => more,
                    Err(e) => return self.complain(malformed(ty, e.to_string())),
                };
                let more_sketches = match protocol::unpack_bucket_sketches(&chunk.sketches) {
                    Ok(more) => more,
                    Err(e) => return self.complain(malformed(ty, e.to_string())),
                };
                match (differing.is_some(), chunk.differing.is_empty()) {
                    (false, true) => {
                        return self.complain(malformed(
                            ty,
                            "the first bucket_ids frame carries the bitmap".into(),
                        ));
                    }
                    (true, false) => {
                        return self.complain(malformed(
                            ty,
                            "only the first bucket_ids frame carries the bitmap".into(),
                        ));
                    }
                    (false, false) => *differing = Some(chunk.differing),
                    (true, true) => {}
                }
                // Sketch bytes count as that many bytes of short ids.
                *sketch_bytes = sketch_bytes.saturating_add(chunk.sketches.len());
                let size = shorts
                    .len()
                    .saturating_add(more.len())
                    .saturating_add(*sketch_bytes / protocol::SHORT_BYTES);
                if size > total {
                    return self.complain(SessionError::new(
                        Fault::ListTooLong,
                        Some(ty),
                        format!("bucket id list longer than {total}"),
                    ));
                }
                shorts.extend(more);
                sketches.extend(more_sketches);
                if chunk.last {
                    let differing = differing.take().unwrap_or_default();
                    let shorts = std::mem::take(shorts);
                    let sketches = std::mem::take(sketches);
                    let round = *round;
                    let relisting = relisting.take();
                    self.phase = Phase::Settling;
                    Reaction::Request(Request::BucketIds {
                        differing,
                        shorts,
                        sketches,
                        round,
                        relisting,
                    })
                } else {
                    Reaction::None
                }
            }
            (
                Phase::CollectingIds(_)
                | Phase::AwaitWant { .. }
                | Phase::CollectingBucketIds { .. }
                | Phase::Settling
                | Phase::Streaming(_)
                | Phase::Steady,
                Message::Credit(c),
            ) => {
                self.grant_credit(c.bytes);
                Reaction::Request(Request::Pump)
            }
            // A backfill streams while the session is live: its packs are still taken.
            (Phase::Steady, Message::Pack(pack)) => self.take_pack(pack),
            (Phase::Streaming(stream), Message::Pack(pack))
                if matches!(stream.ending(), Ending::Subscribed(_)) =>
            {
                self.take_pack(pack)
            }
            (Phase::Steady, message @ (Message::Subscribe(_) | Message::Unsubscribe(_)))
                if self.capabilities.contains(Capabilities::SUBSCRIPTIONS) =>
            {
                let (number, sources, add) = match message {
                    Message::Subscribe(c) => (c.number, c.patterns, true),
                    Message::Unsubscribe(c) => (c.number, c.patterns, false),
                    _ => return Reaction::None,
                };
                match self.parse_patterns(&sources, ty) {
                    Ok(patterns) => Reaction::Request(Request::ChangeSubscription {
                        number,
                        patterns,
                        add,
                    }),
                    // A bad pattern is the application's input, not a broken client: like a
                    // rejected node it does not count toward the error limit (§9.1).
                    Err(error) => self.complain(error),
                }
            }
            (_, Message::Presence(p)) if self.capabilities.contains(Capabilities::PRESENCE) => {
                let max = self.config.limits.max_presence as usize;
                if p.state.len() > max {
                    return self.complain(limit(ty, format!("presence state over {max} bytes")));
                }
                Reaction::Request(Request::Presence(p.state))
            }
            // A client reporting an error about our frames: nothing to fix on this side.
            (_, Message::ErrorMessage(e)) => {
                tracing::debug!(code = e.code, detail = %e.detail, "client reported an error");
                Reaction::None
            }
            (_, _) => self.complain(SessionError::new(
                Fault::Unexpected,
                Some(ty),
                format!("{ty:?} is not allowed now"),
            )),
        }
    }

    fn accept_hello(&mut self, hello: Hello) -> Reaction {
        if hello.min_version > PROTOCOL_VERSION || hello.max_version < PROTOCOL_VERSION {
            let detail = format!(
                "relay speaks version {PROTOCOL_VERSION}, client {}..={}",
                hello.min_version, hello.max_version
            );
            return self.complain(SessionError::new(
                Fault::UnsupportedVersion,
                Some(MessageType::Hello),
                detail,
            ));
        }
        self.capabilities = hello.capabilities.intersect(Capabilities::SUPPORTED);
        self.grant_credit(hello.credit);
        let subscribe = match hello.subscribe {
            None => None,
            Some(_) if !self.capabilities.contains(Capabilities::SUBSCRIPTIONS) => {
                return self.fatal(SessionError::new(
                    Fault::Unexpected,
                    Some(MessageType::Hello),
                    "hello.subscribe needs the subscriptions capability",
                ));
            }
            Some(sources) => match self.parse_patterns(&sources, MessageType::Hello) {
                Ok(patterns) => Some(patterns),
                // The session cannot start without knowing what it subscribes to.
                Err(error) => return self.fatal(error),
            },
        };
        if let Phase::AwaitHello { deadline } = self.phase {
            self.phase = Phase::Joining { deadline };
        }
        Reaction::Request(Request::Join {
            hints: hello.hints,
            capabilities: self.capabilities,
            subscribe,
        })
    }

    fn take_pack(&mut self, pack: Pack) -> Reaction {
        let max = self.config.limits.max_pack_nodes as usize;
        if pack.nodes.len() > max {
            let detail = format!("more than {max} nodes in one pack");
            return self.complain(limit(MessageType::Pack, detail));
        }
        Reaction::Request(Request::Pack(pack))
    }

    /// Parses patterns under the announced limits; the error names the first bad one.
    fn parse_patterns(
        &self,
        sources: &[String],
        ty: MessageType,
    ) -> Result<Vec<Pattern>, SessionError> {
        let limits = &self.config.limits.patterns;
        if sources.len() > usize::from(limits.max_patterns) {
            return Err(SessionError::new(
                Fault::BadPattern,
                Some(ty),
                format!("more than {} patterns", limits.max_patterns),
            ));
        }
        sources
            .iter()
            .map(|source| {
                Pattern::parse(source, limits).map_err(|reason| {
                    SessionError::new(
                        Fault::BadPattern,
                        Some(ty),
                        format!("pattern {source:?}: {reason}"),
                    )
                })
            })
            .collect()
    }

    /// Reports an error; the session ends over it if its fault says so, or if it is one
    /// counted error too many.
    fn complain(&mut self, error: SessionError) -> Reaction {
        if error.counts() {
            self.errors = self.errors.saturating_add(1);
            if self.errors >= MAX_ERRORS {
                return self.fatal(error);
            }
        }
        if error.close_code().is_some() {
            self.phase = Phase::Closed;
        }
        Reaction::Reject(error)
    }

    /// An error the session ends over, whatever its fault.
    fn fatal(&mut self, error: SessionError) -> Reaction {
        self.phase = Phase::Closed;
        Reaction::Reject(error.ending())
    }
}

fn malformed(ty: MessageType, detail: String) -> SessionError {
    SessionError::new(Fault::Malformed, Some(ty), detail)
}

fn limit(ty: MessageType, detail: String) -> SessionError {
    SessionError::new(Fault::LimitExceeded, Some(ty), detail)
}

#[cfg(test)]
mod tests;
