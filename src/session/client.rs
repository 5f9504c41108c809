//! The client's side of one session (protocol/README.md §2.2).
//!
//! [`ClientSession`] checks every relay frame against where the session is, gathers what
//! arrives over several frames, and hands the replica layer one [`ClientEvent`] per frame. Each
//! phase is a state of its own that owns what only that phase knows (rustls style): the ids a
//! `need` answer is about, the sketch being received, the bucket summaries, the `missing` short
//! ids. A transition consumes the state it leaves, so nothing one phase gathered can be seen, or
//! go stale, in another. What lasts for the whole connection (capabilities, epoch, limits,
//! catch-up credit) sits beside the state.
//!
//! How to drive it:
//!
//! 1. [`start`](ClientSession::start) returns the `hello` frame to send first.
//! 2. Feed every relay frame to [`handle_frame`](ClientSession::handle_frame) and act on its
//!    event. Four events hand the client the turn, and the session takes no frame until it is
//!    answered: `welcome` with plan `send_ids` ([`send_ids`](ClientSession::send_ids)), a
//!    complete sketch ([`want`](ClientSession::want) or [`retry`](ClientSession::retry)),
//!    complete bucket summaries ([`bucket_ids`](ClientSession::bucket_ids)) and a relist
//!    ([`relist`](ClientSession::relist)). Each answer returns the frames to send.
//! 3. After every `batch`, send what [`poll_credit`](ClientSession::poll_credit) returns.
//! 4. In steady state, [`change_subscription`](ClientSession::change_subscription) asks for a
//!    backfill.
//!
//! Every error is final: the session is then [failed](ClientPhase::Failed), and the connection
//! is dropped; the next one starts a fresh session (§2.2).

mod error;
mod refine;
mod sketch;

use std::collections::HashSet;

use bytes::Bytes;

use crate::node::NodeId;
use crate::protocol::{
    self, Ack, Batch, Broadcast, Capabilities, CatchUpDone, Credit, EncodeError, ErrorMessage,
    Hello, Ids, Message, Need, PROTOCOL_VERSION, Plan, PresenceUpdate, RelayLimits, Resolved,
    Subscribe, Subscribed, SyncHints, Unsubscribe, Welcome,
};
use crate::recon::ibf::{Ibf, SketchKey};

pub use error::{ClientError, Misbehaved};
use refine::RefinePlan;
pub use refine::{Fallback, Summaries};
use sketch::SketchPlan;

/// Where a client session is: the phases of protocol/README.md §2.2, with the steps of plans
/// `sketch` and `refine` told apart. The four phases named "owes" are the client's turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPhase {
    /// `hello` is out.
    AwaitWelcome,
    /// Plan `send_ids`: the client owes its `ids`.
    ListingIds,
    /// Our `ids` are out; `need` frames arrive until the last.
    AwaitNeed,
    /// Plan `sketch`, before its first frame (or `buckets`, when the relay has no sketch to send).
    AwaitSketch,
    /// Cells of a sketch, or of its extension, are arriving.
    Sketching,
    /// A complete sketch is with the client, which owes `want` or `retry`.
    Decoding,
    /// Our `want` is out: the stream follows, or `buckets` if the relay does not verify it.
    Wanted,
    /// Our `retry` is out: the extension follows, or `buckets`.
    Retried,
    /// Our `retry` of the extension is out: `buckets` follow.
    RetriedExtension,
    /// Plan `refine`, or the sketch path's fallback: `buckets` arrive until the last.
    Refining,
    /// Every bucket summary is with the client, which owes `bucket_ids`.
    ListingBuckets,
    /// Our `bucket_ids` are out; `missing` frames arrive until the last.
    AwaitMissing,
    /// The relay asked for a second round; the client owes the relisted buckets' ids.
    Relisting,
    /// `batch` frames arrive until `catch_up_done`.
    CatchingUp,
    /// Live: packs out, acks and broadcasts in.
    Steady,
    /// Steady, with a subscription change out: its backfill, then `subscribed`.
    Backfilling,
    /// A frame or a call was refused; the connection must be dropped.
    Failed,
}

impl ClientPhase {
    /// Whether it is the client's turn: it owes the relay an answer and takes no frame until
    /// it has given it.
    pub fn owes_answer(self) -> bool {
        matches!(
            self,
            Self::ListingIds | Self::Decoding | Self::ListingBuckets | Self::Relisting
        )
    }
}

/// The client's set as its `hello` described it. An `in_sync` answer is about exactly that set,
/// so the session keeps this until `welcome` and hands it back then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloSnapshot {
    /// How many nodes the client held, counted in its own order.
    pub len: usize,
    /// The client's counter that moves whenever those nodes may have moved in that order.
    pub generation: u64,
}

/// A frame from the relay, checked against the phase, with what the phase gathered for it.
#[derive(Debug)]
#[must_use]
pub enum ClientEvent {
    /// Part of a message that spans frames (`need`, `sketch`, `buckets`, `missing`) was taken
    /// in; nothing to do until the rest arrives.
    Partial,
    /// The relay accepted `hello` and chose a plan. After plan `send_ids`, answer with
    /// [`ClientSession::send_ids`].
    Welcome {
        /// The frame.
        welcome: Welcome,
        /// What [`ClientSession::start`] was given: the set an `in_sync` plan is about.
        at_hello: HelloSnapshot,
    },
    /// The last `need` (§5.4): the relay holds every id of `sent` that is not in `need`.
    Needed {
        /// The ids our `ids` frames listed.
        sent: HashSet<NodeId>,
        /// The ids the relay lacks, from every `need` frame.
        need: HashSet<NodeId>,
    },
    /// The relay's sketch is complete, or extended (§5.7.5): decode it, then answer with
    /// [`ClientSession::want`] or [`ClientSession::retry`].
    Sketch {
        /// The room's sketch key.
        key: SketchKey,
        /// The relay's sketch.
        sketch: Ibf,
    },
    /// A `buckets` frame (§5.9).
    Buckets {
        /// On the first one of plan `sketch`: why the sketch path gave up.
        fallback: Option<Fallback>,
        /// With the last one: every summary. Answer with [`ClientSession::bucket_ids`].
        summaries: Option<Summaries>,
    },
    /// The last `missing` asks for a second round (§5.9 step 7): answer with
    /// [`ClientSession::relist`] and our short ids in the buckets `relist` marks.
    Relist {
        /// The room's sketch key.
        key: SketchKey,
        /// The buckets' depth.
        depth: u8,
        /// Bitmap of the buckets to list, as in `differing`.
        relist: Bytes,
    },
    /// The last `missing` (§5.9 step 8): the relay holds every node of `covered` whose short
    /// id under `key` is not in `missing`.
    Missing {
        /// The room's sketch key.
        key: SketchKey,
        /// The nodes held when our first `bucket_ids` was built.
        covered: HashSet<NodeId>,
        /// Short ids the relay lacks, from every `missing` frame of both rounds.
        missing: HashSet<u64>,
    },
    /// Catch-up or backfill nodes; then send [`ClientSession::poll_credit`].
    Batch(Batch),
    /// Catch-up finished; the session is steady. Verify it (§5.5).
    CaughtUp {
        /// The frame.
        done: CatchUpDone,
        /// The key its root is checked under: the one plan `sketch` or `refine` used; `None`
        /// after the other plans.
        key: Option<SketchKey>,
    },
    /// Outcomes of one of our packs.
    Ack(Ack),
    /// Final outcomes of nodes that were pending.
    Resolved(Resolved),
    /// Live nodes from other peers.
    Broadcast(Broadcast),
    /// A peer's presence changed.
    Presence(PresenceUpdate),
    /// The relay complained about one of our frames.
    RelayError(ErrorMessage),
    /// The subscription change in flight is complete.
    Subscribed(Subscribed),
}

/// Sans-IO client session: builds `hello` and the reconciliation answers, checks the relay's
/// frames against the phase and keeps catch-up credit topped up. The replica layer acts on the
/// [`ClientEvent`]s.
#[derive(Debug)]
pub struct ClientSession {
    state: State,
    /// What we offered until `welcome`, then what both sides support.
    capabilities: Capabilities,
    /// The relay's epoch (0 until `welcome`).
    epoch: u64,
    /// The relay's limits (the defaults until `welcome`).
    limits: RelayLimits,
    /// Catch-up bytes received since the last `credit` frame.
    consumed: u64,
}

/// One state per phase, each owning what only it knows.
#[derive(Debug)]
enum State {
    AwaitWelcome(HelloSnapshot),
    SendIds(SendIds),
    Sketch(SketchPlan),
    Refine(RefinePlan),
    CatchingUp(CatchingUp),
    Steady,
    Backfilling(Backfill),
    Failed,
}

/// Plan `send_ids` (§5.4).
#[derive(Debug)]
enum SendIds {
    /// The client owes its `ids` frames.
    Listing,
    /// Our `ids` are out; `need` lists arrive until the last.
    AwaitNeed {
        /// Every id our `ids` frames listed: what the `need` answer is about.
        sent: HashSet<NodeId>,
        /// The relay's `need` lists so far.
        need: HashSet<NodeId>,
    },
}

/// Catch-up (§6).
#[derive(Debug)]
struct CatchingUp {
    /// The key `catch_up_done.root` is checked under (see [`ClientEvent::CaughtUp`]).
    key: Option<SketchKey>,
}

/// A subscription change is out (§7.5).
#[derive(Debug)]
struct Backfill {
    /// Its number, which `subscribed` must echo.
    number: u64,
}

impl State {
    fn phase(&self) -> ClientPhase {
        match self {
            Self::AwaitWelcome(_) => ClientPhase::AwaitWelcome,
            Self::SendIds(SendIds::Listing) => ClientPhase::ListingIds,
            Self::SendIds(SendIds::AwaitNeed { .. }) => ClientPhase::AwaitNeed,
            Self::Sketch(plan) => plan.phase(),
            Self::Refine(plan) => plan.phase(),
            Self::CatchingUp(_) => ClientPhase::CatchingUp,
            Self::Steady => ClientPhase::Steady,
            Self::Backfilling(_) => ClientPhase::Backfilling,
            Self::Failed => ClientPhase::Failed,
        }
    }
}

/// The error for a call the phase does not allow.
fn misuse(call: &'static str, state: &State) -> ClientError {
    ClientError::Misuse {
        call,
        phase: state.phase(),
    }
}

/// Encodes reconciliation messages into frames.
fn encode_all(messages: Vec<Message>) -> Result<Vec<Bytes>, ClientError> {
    messages
        .iter()
        .map(|message| message.encode().map_err(ClientError::from))
        .collect()
}

impl ClientSession {
    /// Starts a session; returns it with the encoded `hello` to send first. `at_hello`
    /// describes the set `hints` were made from; it comes back with `welcome`.
    pub fn start(
        hints: SyncHints,
        capabilities: Capabilities,
        window: u64,
        subscribe: Option<Vec<String>>,
        at_hello: HelloSnapshot,
    ) -> Result<(Self, Bytes), EncodeError> {
        let hello = Message::Hello(Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            capabilities,
            hints,
            // With zero credit the relay would never send the batch that triggers a grant.
            credit: window.max(1),
            subscribe,
        })
        .encode()?;
        let session = Self {
            state: State::AwaitWelcome(at_hello),
            capabilities,
            epoch: 0,
            limits: RelayLimits::default(),
            consumed: 0,
        };
        Ok((session, hello))
    }

    /// Where the session is.
    pub fn phase(&self) -> ClientPhase {
        self.state.phase()
    }

    /// Capabilities in effect (what we offered until `welcome`, then the intersection).
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// The relay's epoch, from `welcome` (0 before).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Limits the relay announced (defaults before `welcome`).
    pub fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    /// Whether catch-up is over and packs may be sent (also while a backfill streams).
    pub fn is_steady(&self) -> bool {
        matches!(self.state, State::Steady | State::Backfilling(_))
    }

    /// Whether a subscription change is waiting for its `subscribed`.
    pub fn is_backfilling(&self) -> bool {
        matches!(self.state, State::Backfilling(_))
    }

    /// The largest frame the relay takes, as a length.
    fn max_frame(&self) -> usize {
        self.limits.max_frame as usize
    }

    /// Runs one step of the machine: the current state goes in and the next comes out. The
    /// session stays failed after an error, which is final.
    fn advance<T>(
        &mut self,
        step: impl FnOnce(&mut Self, State) -> Result<(State, T), ClientError>,
    ) -> Result<T, ClientError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        let (next, out) = step(self, state)?;
        self.state = next;
        Ok(out)
    }

    /// Handles one received frame.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<ClientEvent, ClientError> {
        self.advance(|session, state| session.step(state, frame))
    }

    fn step(&mut self, state: State, frame: &[u8]) -> Result<(State, ClientEvent), ClientError> {
        let phase = state.phase();
        if phase.owes_answer() || phase == ClientPhase::Failed {
            return Err(misuse("handle_frame", &state));
        }
        let message = protocol::decode(frame)?;
        let ty = message.message_type();
        let next = match (state, message) {
            // An `error` may come in every phase, `presence_update` in every one after
            // `welcome` (§2).
            (state, Message::ErrorMessage(error)) => (state, ClientEvent::RelayError(error)),
            (state, Message::PresenceUpdate(update)) if phase != ClientPhase::AwaitWelcome => {
                (state, ClientEvent::Presence(update))
            }
            (State::AwaitWelcome(at_hello), Message::Welcome(welcome)) => {
                self.welcome(at_hello, welcome)?
            }
            (State::SendIds(SendIds::AwaitNeed { sent, need }), Message::Need(frame)) => {
                need_frame(sent, need, frame)?
            }
            (State::Sketch(plan), Message::Sketch(sketch)) => {
                let (plan, event) = plan.sketch(sketch)?;
                (State::Sketch(plan), event)
            }
            (State::Sketch(plan), Message::Buckets(buckets)) => {
                let (fallback, key) = plan.fallback()?;
                RefinePlan::first(buckets, key, Some(fallback))?
            }
            (State::Refine(plan), Message::Buckets(buckets)) => plan.buckets(buckets)?,
            (State::Refine(plan), Message::Missing(missing)) => plan.missing(missing)?,
            // The first batch (or, with nothing to stream, `catch_up_done`) confirms a `want`.
            (State::Sketch(SketchPlan::Wanted { key }), Message::Batch(batch)) => {
                let next = State::CatchingUp(CatchingUp { key: Some(key) });
                self.batch(next, frame, batch)
            }
            (State::Sketch(SketchPlan::Wanted { key }), Message::CatchUpDone(done)) => {
                let key = Some(key);
                (State::Steady, ClientEvent::CaughtUp { done, key })
            }
            (state @ (State::CatchingUp(_) | State::Backfilling(_)), Message::Batch(batch)) => {
                self.batch(state, frame, batch)
            }
            (State::CatchingUp(CatchingUp { key }), Message::CatchUpDone(done)) => {
                (State::Steady, ClientEvent::CaughtUp { done, key })
            }
            (State::Backfilling(Backfill { number }), Message::Subscribed(done)) => {
                if done.number != number {
                    return Err(Misbehaved::SubscribedNumber {
                        expected: number,
                        got: done.number,
                    }
                    .into());
                }
                (State::Steady, ClientEvent::Subscribed(done))
            }
            (state @ (State::Steady | State::Backfilling(_)), Message::Ack(ack)) => {
                (state, ClientEvent::Ack(ack))
            }
            (state @ (State::Steady | State::Backfilling(_)), Message::Resolved(resolved)) => {
                (state, ClientEvent::Resolved(resolved))
            }
            // Broadcasts queued before the relay read our `subscribe` still arrive.
            (state @ (State::Steady | State::Backfilling(_)), Message::Broadcast(broadcast)) => {
                let span = broadcast.nodes.len().saturating_sub(1) as u64;
                if broadcast.first_seq.checked_add(span).is_none() {
                    return Err(Misbehaved::SeqOverflow {
                        first_seq: broadcast.first_seq,
                        nodes: broadcast.nodes.len(),
                    }
                    .into());
                }
                (state, ClientEvent::Broadcast(broadcast))
            }
            _ => return Err(Misbehaved::Unexpected { ty, phase }.into()),
        };
        Ok(next)
    }

    /// `welcome` (§4.2): fixes version, capabilities, epoch, limits and the plan.
    fn welcome(
        &mut self,
        at_hello: HelloSnapshot,
        welcome: Welcome,
    ) -> Result<(State, ClientEvent), ClientError> {
        if welcome.version != PROTOCOL_VERSION {
            return Err(ClientError::Version(welcome.version));
        }
        let capabilities = self.capabilities.intersect(welcome.capabilities);
        let sketches = Capabilities::IBF.union(Capabilities::MST);
        let next = match welcome.plan {
            // A relay plans these only when both sides set `ibf` and `mst` (§5.1): a client
            // that left them out (after a failed verification) must not get them.
            Plan::Sketch | Plan::Refine if !capabilities.contains(sketches) => {
                return Err(Misbehaved::PlanNotNegotiated(welcome.plan).into());
            }
            Plan::InSync => State::Steady,
            Plan::CatchUp => State::CatchingUp(CatchingUp { key: None }),
            Plan::SendIds => State::SendIds(SendIds::Listing),
            Plan::Sketch => State::Sketch(SketchPlan::AwaitSketch),
            Plan::Refine => State::Refine(RefinePlan::AwaitBuckets),
        };
        self.capabilities = capabilities;
        self.epoch = welcome.epoch;
        self.limits = welcome.limits();
        Ok((next, ClientEvent::Welcome { welcome, at_hello }))
    }

    /// A `batch`: counted against the credit window.
    fn batch(&mut self, next: State, frame: &[u8], batch: Batch) -> (State, ClientEvent) {
        // usize -> u64 cannot truncate on supported targets.
        self.consumed = self.consumed.saturating_add(frame.len() as u64);
        (next, ClientEvent::Batch(batch))
    }

    /// Answers `welcome` with plan `send_ids` (§5.4): `ids` is every id the client holds. Returns
    /// the `ids` frames, at most `max_ids` ids each; at least one, the last marked.
    pub fn send_ids(&mut self, ids: Vec<NodeId>) -> Result<Vec<Bytes>, ClientError> {
        let chunk = (self.limits.max_ids as usize).max(1);
        self.advance(|_, state| {
            let State::SendIds(SendIds::Listing) = state else {
                return Err(misuse("send_ids", &state));
            };
            let mut parts: Vec<&[NodeId]> = ids.chunks(chunk).collect();
            if parts.is_empty() {
                parts.push(&[]);
            }
            let count = parts.len();
            let frames = parts
                .into_iter()
                .enumerate()
                .map(|(i, part)| {
                    let last = i.saturating_add(1) == count;
                    Message::Ids(Ids {
                        ids: part.to_vec(),
                        last,
                    })
                })
                .collect();
            let frames = encode_all(frames)?;
            let sent = ids.into_iter().collect();
            let next = SendIds::AwaitNeed {
                sent,
                need: HashSet::new(),
            };
            Ok((State::SendIds(next), frames))
        })
    }

    /// A `subscribe` (`add`) or `unsubscribe` frame; the relay answers with a backfill and
    /// `subscribed`, which must carry `number`. `None` unless the session is steady, negotiated
    /// subscriptions and has no other change in flight.
    pub fn change_subscription(
        &mut self,
        number: u64,
        patterns: Vec<String>,
        add: bool,
    ) -> Result<Option<Bytes>, ClientError> {
        let subscriptions = self.capabilities.contains(Capabilities::SUBSCRIPTIONS);
        self.advance(|_, state| {
            if !matches!(state, State::Steady) || !subscriptions {
                return Ok((state, None));
            }
            let message = if add {
                Message::Subscribe(Subscribe { number, patterns })
            } else {
                Message::Unsubscribe(Unsubscribe { number, patterns })
            };
            let frame = message.encode()?;
            Ok((State::Backfilling(Backfill { number }), Some(frame)))
        })
    }

    /// A `credit` frame returning what the batches received so far consumed, so the relay's
    /// allowance stays at the window. Granted after every batch rather than after half the
    /// window: the relay may cap credit below the window (protocol/README.md §6.2), and a
    /// few bytes per batch of up to a frame are negligible.
    pub fn poll_credit(&mut self) -> Result<Option<Bytes>, ClientError> {
        let streaming = matches!(self.state, State::CatchingUp(_) | State::Backfilling(_));
        if !streaming || self.consumed == 0 {
            return Ok(None);
        }
        let bytes = std::mem::take(&mut self.consumed);
        Ok(Some(Message::Credit(Credit { bytes }).encode()?))
    }
}

/// A `need` frame: the ids must be ones our `ids` listed.
fn need_frame(
    sent: HashSet<NodeId>,
    mut need: HashSet<NodeId>,
    frame: Need,
) -> Result<(State, ClientEvent), ClientError> {
    if let Some(id) = frame.ids.iter().find(|id| !sent.contains(id)) {
        return Err(Misbehaved::NeedNotListed(*id).into());
    }
    need.extend(frame.ids);
    if !frame.last {
        let next = State::SendIds(SendIds::AwaitNeed { sent, need });
        return Ok((next, ClientEvent::Partial));
    }
    let next = State::CatchingUp(CatchingUp { key: None });
    Ok((next, ClientEvent::Needed { sent, need }))
}

#[cfg(test)]
mod tests;
