//! A room plus the relay sessions connected to it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::durability::{Durability, Ledger};
use super::recon::{Scope, bucket_summaries, plan_against, tree_root};
use super::subscriptions::{ClassId, ClassRecon, Subscriptions};
use super::{
    Admitted, BatchStep, BucketIdsError, BucketRound, Cursor, Room, SessionId, Settled, Submission,
};
use crate::node::NodeId;
use crate::node::Rejection;
use crate::pattern::{Pattern, PatternSet};
use crate::protocol::{
    self, Ack, BucketSketch, Capabilities, CatchUpDone, CloseCode, ErrorCode, ErrorMessage,
    Message, MessageType, Need, Outcome, PROTOCOL_VERSION, Pack, Plan, PresenceUpdate, RelayLimits,
    Resolved, Subscribed, SyncHints, Welcome,
};
use crate::recon::estimator::EstimatorError;
use crate::recon::ibf::MAX_LOG2_CELLS;
use crate::recon::index::SetIndex;
use crate::recon::{ReconPath, RelaySide, SetDigest};
use crate::session::{Reaction, RelaySession, RelaySessionConfig, Request};

/// Policy for every session of a hub.
#[derive(Clone, Copy, Debug)]
pub struct HubConfig {
    /// Per-session limits and credit.
    pub session: RelaySessionConfig,
    /// How long a connection may take to send `hello`.
    pub handshake_timeout: Duration,
    /// Whether output waits for the driver to store admitted nodes.
    pub durability: Durability,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            session: RelaySessionConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            durability: Durability::Effect,
        }
    }
}

impl HubConfig {
    /// The default policy with [`Durability::Immediate`]: for harnesses that exercise sessions
    /// and reconciliation without a store behind the hub.
    pub fn immediate() -> Self {
        Self {
            durability: Durability::Immediate,
            ..Self::default()
        }
    }
}

/// Who receives an outgoing frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// One session.
    One(SessionId),
    /// These sessions (a broadcast routed by subscriptions).
    Many(Arc<[SessionId]>),
    /// Every session in steady state without a subscription, except one.
    Unsubscribed {
        /// Session left out, if any.
        except: Option<SessionId>,
    },
    /// Every session in steady state, except one (the sender of what is broadcast).
    Live {
        /// Session left out, if any.
        except: Option<SessionId>,
    },
    /// Every joined session that negotiated presence, except the one whose state changed.
    PresencePeers {
        /// The peer the update is about.
        except: SessionId,
    },
}

/// One frame for an audience. Frames are encoded once, whatever the audience's size.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Receivers.
    pub to: Audience,
    /// The encoded frame.
    pub frame: Bytes,
    /// Paced by the receiver's credit (catch-up `batch`): it may wait in a queue as long as the
    /// receiver's link needs, so it never counts as the receiver lagging behind.
    pub paced: bool,
}

/// Everything a hub call wants sent or closed, in order.
#[derive(Debug, Default)]
#[must_use]
pub struct Outbox {
    /// Frames to queue, in order.
    pub frames: Vec<Outgoing>,
    /// Sessions to close after their frames are queued. The hub has already forgotten them.
    pub closes: Vec<(SessionId, CloseCode)>,
    /// Stored nodes (arrival numbers, ascending) whose encodings catch-up needs back from the
    /// store: hand the result to [`Hub::fetched`].
    pub fetches: Vec<Vec<u64>>,
    /// Store every admitted node up to this arrival number (at least), then call
    /// [`Hub::persisted`] or [`Hub::persist_failed`]. At most one is asked for at a time.
    pub persist: Option<u64>,
}

impl Outbox {
    /// Appends `later`'s output after this one's.
    pub fn extend(&mut self, later: Outbox) {
        self.frames.extend(later.frames);
        self.closes.extend(later.closes);
        self.fetches.extend(later.fetches);
        self.persist = self.persist.max(later.persist);
    }
}

/// Where a session's sketch reconciliation stands.
#[derive(Debug, Clone, Copy)]
enum Recon {
    /// No sketch or buckets out.
    Idle,
    /// The sketch at `log2` is out, made at arrival number `at_seq`; `extended` once the one
    /// extension was sent.
    Sketch {
        log2: u8,
        at_seq: u64,
        extended: bool,
    },
    /// Buckets at `depth` are out, made at arrival number `at_seq`; `expected` is the
    /// difference they announce.
    Refine {
        depth: u8,
        at_seq: u64,
        expected: u64,
    },
}

/// How a session's reconciliation starts, as planned at `hello`.
enum Start {
    InSync,
    CatchUp(Cursor),
    SendIds,
    /// Plan `sketch` or `refine`.
    Recon(Recon),
}

impl Start {
    /// The start of `path`, planned at arrival number `at_seq`; `catch_up` makes the cursor
    /// of a catch-up after a watermark.
    fn from_path(path: ReconPath, at_seq: u64, catch_up: impl FnOnce(u64) -> Cursor) -> Self {
        match path {
            ReconPath::InSync => Self::InSync,
            ReconPath::CatchUp { after } => Self::CatchUp(catch_up(after)),
            ReconPath::IdList => Self::SendIds,
            ReconPath::Sketch { log2 } => Self::Recon(Recon::Sketch {
                log2,
                at_seq,
                extended: false,
            }),
            ReconPath::Refine { depth, expected } => Self::Recon(Recon::Refine {
                depth,
                at_seq,
                expected,
            }),
        }
    }
}

/// What a session reconciles: the room, or the matching nodes of its class `class` (topped up to
/// the latest node). `None` if the class is gone.
fn scope<'a>(
    room: &'a Room,
    subscriptions: &'a mut Subscriptions,
    class: Option<ClassId>,
) -> Option<Scope<'a>> {
    match class {
        None => Some(room.scope()),
        Some(class) => subscriptions.scope(class, room),
    }
}

/// The sketch structures a session reconciles against, for roots and bucket summaries; as
/// [`scope`].
fn sets_mut<'a>(
    room: &'a mut Room,
    subscriptions: &'a mut Subscriptions,
    class: Option<ClassId>,
) -> Option<&'a mut SetIndex> {
    match class {
        None => Some(room.sets_mut()),
        Some(class) => subscriptions
            .recon_mut(class, room)
            .map(ClassRecon::sets_mut),
    }
}

/// A refinement whose first round left buckets to relist.
#[derive(Debug)]
struct Relisting {
    /// The buckets the second round must cover.
    buckets: Bytes,
    /// What the first round settled.
    cursor: Cursor,
}

struct Member {
    session: RelaySession,
    /// The peer number other sessions know this one by (`welcome.peer`, presence).
    peer: u64,
    cursor: Option<Cursor>,
    recon: Recon,
    relisting: Option<Relisting>,
    /// The session reconciles by sketch or refinement: `catch_up_done` carries the root.
    verify_root: bool,
    presence: Bytes,
    /// Set until `hello` arrives.
    handshake_deadline: Option<Instant>,
    /// Catch-up waits for the store to return this node's encoding.
    waiting_on: Option<u64>,
    /// The session's subscription and its class; `None` receives every node.
    subscription: Option<(Arc<PatternSet>, ClassId)>,
    /// The stream in progress is the backfill of this `subscribe`.
    backfill: Option<u64>,
}

/// A room and its sessions. Every input is a method; every output is an [`Outbox`].
///
/// Method kinds: [`connect`](Self::connect) / [`disconnect`](Self::disconnect) for connection
/// lifecycle, [`handle_frame`](Self::handle_frame) for received bytes,
/// [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout) is due, and
/// [`recipients`](Self::recipients) to resolve an [`Audience`]. The driver queues the outbox's
/// frames in order, then closes the listed sessions.
pub struct Hub {
    room: Room,
    config: HubConfig,
    members: BTreeMap<SessionId, Member>,
    /// Nodes asked of the store and not back yet, so no read is asked twice.
    fetching: HashSet<u64>,
    subscriptions: Subscriptions,
    /// What is stored, and the output waiting for it.
    ledger: Ledger,
    /// Sessions that have not sent `hello`, by deadline: the driver's timer asks for the
    /// earliest after every frame, so this must not cost a pass over every session.
    handshakes: BTreeSet<(Instant, SessionId)>,
    /// Joined sessions without a subscription: a routed broadcast reaches them in one frame,
    /// resolved without a pass over the subscribed ones.
    unsubscribed: BTreeSet<SessionId>,
    /// The last peer number given out. Peers are numbered per room, not from the relay's
    /// session ids, so a client learns nothing about connections to other rooms.
    last_peer: u64,
}

impl Hub {
    /// Serves `room`.
    pub fn new(mut room: Room, config: HubConfig) -> Self {
        // A room fresh from a bulk load must not answer sketches the slow way.
        room.warm_indexes();
        let ledger = Ledger::new(config.durability, room.seq());
        Self {
            ledger,
            room,
            config,
            members: BTreeMap::new(),
            fetching: HashSet::new(),
            subscriptions: Subscriptions::default(),
            handshakes: BTreeSet::new(),
            unsubscribed: BTreeSet::new(),
            last_peer: 0,
        }
    }

    /// The write [`Outbox::persist`] asked for succeeded: nodes up to `seq` are stored.
    /// Returns the output that waited for them, and possibly the next write to make.
    pub fn persisted(&mut self, seq: u64) -> Outbox {
        self.room.mark_stored(seq.min(self.room.seq()));
        let out = self.ledger.persisted(seq, self.room.seq());
        self.room.trim_payloads();
        out
    }

    /// The write [`Outbox::persist`] asked for failed for good. Nothing that waited for it is
    /// sent: every session gets `StoreUnavailable` and is closed, and the driver must replace
    /// this hub with one loaded from the store (the unstored nodes were never acknowledged).
    pub fn persist_failed(&mut self) -> Outbox {
        self.ledger.failed();
        let mut out = Outbox::default();
        let error = Message::ErrorMessage(ErrorMessage::new(
            ErrorCode::StoreUnavailable,
            None,
            "the relay could not store accepted nodes; reconnect and push again",
        ));
        let everyone: Vec<SessionId> = self.members.keys().copied().collect();
        for id in everyone {
            self.send(Audience::One(id), error.clone(), &mut out);
            self.close(id, CloseCode::StoreUnavailable, &mut out);
        }
        out
    }

    /// Nodes up to this arrival number are stored.
    pub fn durable_seq(&self) -> u64 {
        self.ledger.durable()
    }

    /// Holds `out` while it may reveal unstored nodes (see [`super::durability`]).
    fn settle(&mut self, mut out: Outbox) -> Outbox {
        let seq = self.room.seq();
        if !self.ledger.must_hold(seq) {
            return out;
        }
        let frames = std::mem::take(&mut out.frames)
            .into_iter()
            .map(|o| (self.recipients(o.to).collect(), o.frame, o.paced))
            .collect();
        let closes = std::mem::take(&mut out.closes);
        out.persist = self.ledger.hold(seq, frames, closes);
        out
    }

    /// The store answered a fetch the hub asked for in [`Outbox::fetches`]: the encodings of
    /// `seqs`, in order, or why it could not. Sessions waiting for them carry on; a session
    /// whose next node cannot be read back gets `StoreUnavailable` and is closed, since its
    /// catch-up cannot continue (it may reconnect and resume).
    pub fn fetched(&mut self, seqs: &[u64], records: Result<Vec<Bytes>, String>) -> Outbox {
        let mut out = Outbox::default();
        let mut failed: HashSet<u64> = HashSet::new();
        match records {
            Ok(records) if records.len() == seqs.len() => {
                for (seq, record) in seqs.iter().zip(records) {
                    if let Err(e) = self.room.restore_payload(*seq, record) {
                        tracing::error!(error = %e, "a record read back from the store is wrong");
                        failed.insert(*seq);
                    }
                }
            }
            Ok(records) => {
                tracing::error!(asked = seqs.len(), got = records.len(), "short read");
                failed.extend(seqs);
            }
            Err(e) => {
                tracing::error!(error = %e, "catch-up read from the store failed");
                failed.extend(seqs);
            }
        }
        for seq in seqs {
            self.fetching.remove(seq);
        }
        let waiting: Vec<(SessionId, u64)> = self
            .members
            .iter()
            .filter_map(|(id, m)| Some((*id, m.waiting_on?)))
            .collect();
        for (id, seq) in waiting {
            if failed.contains(&seq) {
                let error = ErrorMessage::new(
                    ErrorCode::StoreUnavailable,
                    None,
                    "the relay could not read stored history; reconnect to resume",
                );
                self.send(Audience::One(id), Message::ErrorMessage(error), &mut out);
                self.close(id, CloseCode::StoreUnavailable, &mut out);
            } else if let Some(member) = self.members.get_mut(&id) {
                member.waiting_on = None;
                self.pump(id, &mut out);
            }
        }
        self.room.trim_payloads();
        self.settle(out)
    }

    /// The room.
    pub fn room(&self) -> &Room {
        &self.room
    }

    /// Number of connected sessions.
    pub fn session_count(&self) -> usize {
        self.members.len()
    }

    /// A new connection; it must send `hello` within the handshake timeout.
    pub fn connect(&mut self, id: SessionId, now: Instant) {
        let deadline = now.checked_add(self.config.handshake_timeout);
        if let Some(deadline) = deadline {
            self.handshakes.insert((deadline, id));
        }
        self.last_peer = self.last_peer.saturating_add(1);
        self.members.insert(
            id,
            Member {
                session: RelaySession::new(self.config.session),
                peer: self.last_peer,
                cursor: None,
                recon: Recon::Idle,
                relisting: None,
                verify_root: false,
                presence: Bytes::new(),
                handshake_deadline: deadline,
                waiting_on: None,
                subscription: None,
                backfill: None,
            },
        );
    }

    /// A connection ended (or the driver is closing it, e.g. on queue overflow).
    pub fn disconnect(&mut self, id: SessionId) -> Outbox {
        let mut out = Outbox::default();
        self.forget(id, &mut out);
        self.ledger.departed(id);
        self.settle(out)
    }

    /// Sessions an audience currently resolves to.
    pub fn recipients(&self, audience: Audience) -> impl Iterator<Item = SessionId> + '_ {
        let (single, listed) = match &audience {
            Audience::One(id) => (Some(*id), Vec::new()),
            Audience::Many(ids) => (None, ids.to_vec()),
            Audience::Unsubscribed { except } => {
                let steady = |id: &SessionId| {
                    Some(*id) != *except
                        && self.members.get(id).is_some_and(|m| m.session.is_steady())
                };
                (
                    None,
                    self.unsubscribed.iter().copied().filter(steady).collect(),
                )
            }
            _ => (None, Vec::new()),
        };
        let by_state = matches!(
            audience,
            Audience::Live { .. } | Audience::PresencePeers { .. }
        );
        let many = by_state.then(|| {
            self.members.iter().filter_map(move |(id, m)| {
                let wanted = match audience {
                    Audience::One(_) | Audience::Many(_) | Audience::Unsubscribed { .. } => false,
                    Audience::Live { except } => m.session.is_steady() && Some(*id) != except,
                    Audience::PresencePeers { except } => {
                        *id != except
                            && m.session.has_joined()
                            && m.session.capabilities().contains(Capabilities::PRESENCE)
                    }
                };
                wanted.then_some(*id)
            })
        });
        single
            .into_iter()
            .chain(listed)
            .chain(many.into_iter().flatten())
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let handshake = self.handshakes.first().map(|(deadline, _)| *deadline);
        handshake.into_iter().chain(self.room.next_expiry()).min()
    }

    /// Closes sessions that never said `hello` and expires orphans.
    pub fn handle_timeout(&mut self, now: Instant) -> Outbox {
        let mut out = Outbox::default();
        let late: Vec<SessionId> = self
            .handshakes
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, id)| *id)
            .collect();
        for id in late {
            self.close(id, CloseCode::HandshakeTimeout, &mut out);
        }
        let expired = self.room.expire_orphans(now);
        let outcomes = expired
            .into_iter()
            .map(|(origin, id)| (origin, id, Outcome::Rejected(Rejection::OrphanExpired)));
        self.send_resolved(outcomes, &mut out);
        self.settle(out)
    }

    /// Handles one frame received from a session.
    pub fn handle_frame(&mut self, id: SessionId, frame: &[u8], now: Instant) -> Outbox {
        let mut out = Outbox::default();
        let Some(member) = self.members.get_mut(&id) else {
            return out;
        };
        match member.session.handle_frame(frame) {
            Reaction::None => {}
            Reaction::Error(error) => {
                self.send(Audience::One(id), Message::ErrorMessage(error), &mut out)
            }
            Reaction::Close(code, error) => {
                if let Some(error) = error {
                    self.send(Audience::One(id), Message::ErrorMessage(error), &mut out);
                }
                self.close(id, code, &mut out);
            }
            Reaction::Request(request) => self.serve(id, request, now, &mut out),
        }
        self.settle(out)
    }

    fn serve(&mut self, id: SessionId, request: Request, now: Instant, out: &mut Outbox) {
        match request {
            Request::Join {
                hints,
                capabilities,
                subscribe: None,
            } => self.join(id, &hints, capabilities, out),
            Request::Join {
                hints,
                capabilities,
                subscribe: Some(patterns),
            } => self.join_subscribed(id, &hints, capabilities, patterns, out),
            Request::ChangeSubscription {
                number,
                patterns,
                add,
            } => self.change_subscription(id, number, &patterns, add, out),
            Request::Ids(ids) => {
                let (need, cursor) = self.room.id_list_cursor(ids);
                self.send_need(id, need, out);
                self.start_stream(id, cursor, out);
            }
            Request::Want { shorts, shared } => self.settle_want(id, &shorts, shared, out),
            Request::Retry => self.retry(id, out),
            Request::BucketIds {
                differing,
                shorts,
                sketches,
            } => self.settle_bucket_ids(id, differing, &shorts, &sketches, out),
            Request::Pump => self.pump(id, out),
            Request::Pack(pack) => self.submit(id, pack, now, out),
            Request::Presence(state) => {
                let Some(member) = self.members.get_mut(&id) else {
                    return;
                };
                member.presence = state.clone();
                let update = Message::PresenceUpdate(PresenceUpdate {
                    peer: member.peer,
                    state,
                });
                self.send(Audience::PresencePeers { except: id }, update, out);
            }
        }
    }

    fn join(
        &mut self,
        id: SessionId,
        hints: &SyncHints,
        capabilities: Capabilities,
        out: &mut Outbox,
    ) {
        self.unsubscribed.insert(id);
        let (path, estimator_error) = self.room.plan(hints, capabilities);
        if let Some(e) = estimator_error {
            self.estimator_error(id, &e, out);
        }
        let start = Start::from_path(path, self.room.seq(), |after| {
            self.room.catch_up_cursor(after, &hints.heads)
        });
        self.welcome(id, capabilities, start, None, out);
    }

    fn estimator_error(&mut self, id: SessionId, error: &EstimatorError, out: &mut Outbox) {
        let error = ErrorMessage::new(
            ErrorCode::Malformed,
            Some(MessageType::Hello),
            error.to_string(),
        );
        self.send(Audience::One(id), Message::ErrorMessage(error), out);
    }

    /// Answers `hello` with `welcome` and starts the planned reconciliation.
    fn welcome(
        &mut self,
        id: SessionId,
        capabilities: Capabilities,
        start: Start,
        subscription: Option<(Arc<PatternSet>, ClassId)>,
        out: &mut Outbox,
    ) {
        let (plan, cursor, recon) = match start {
            Start::InSync => (Plan::InSync, None, Recon::Idle),
            Start::CatchUp(cursor) => (Plan::CatchUp, Some(cursor), Recon::Idle),
            Start::SendIds => (Plan::SendIds, None, Recon::Idle),
            Start::Recon(recon @ Recon::Sketch { .. }) => (Plan::Sketch, None, recon),
            Start::Recon(recon) => (Plan::Refine, None, recon),
        };
        let Some(peer) = self.members.get(&id).map(|m| m.peer) else {
            return;
        };
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            capabilities,
            peer,
            epoch: self.room.epoch(),
            seq: self.room.seq(),
            plan,
            limits: (self.config.session.limits != RelayLimits::default())
                .then_some(self.config.session.limits),
        };
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        member.session.welcome(plan);
        member.cursor = cursor;
        member.recon = recon;
        member.verify_root = matches!(plan, Plan::Sketch | Plan::Refine);
        member.subscription = subscription;
        if let Some(deadline) = member.handshake_deadline.take() {
            self.handshakes.remove(&(deadline, id));
        }
        self.send(Audience::One(id), Message::Welcome(welcome), out);
        match recon {
            Recon::Sketch { log2, at_seq, .. } => self.send_sketch(id, log2, false, at_seq, out),
            Recon::Refine {
                depth, expected, ..
            } => self.send_buckets(id, depth, expected, out),
            Recon::Idle => {}
        }
        self.send_present_peers(id, capabilities, out);
        self.pump(id, out);
    }

    /// The subscription class session `id` reconciles, if it has a subscription.
    fn class_of(&self, id: SessionId) -> Option<ClassId> {
        let member = self.members.get(&id)?;
        member.subscription.as_ref().map(|(_, class)| *class)
    }

    /// A subscribed session's class is gone: a relay bug, not the client's fault.
    fn lost_class(&mut self, id: SessionId, out: &mut Outbox) {
        tracing::error!(session = id, "subscribed session without its class");
        let error = ErrorMessage::new(ErrorCode::Internal, None, "subscription state lost");
        self.send(Audience::One(id), Message::ErrorMessage(error), out);
        self.close(id, CloseCode::Internal, out);
    }

    /// A session that negotiated presence hears every peer's current state after `welcome`.
    fn send_present_peers(&mut self, id: SessionId, capabilities: Capabilities, out: &mut Outbox) {
        if !capabilities.contains(Capabilities::PRESENCE) {
            return;
        }
        let mut present: Vec<(u64, Bytes)> = self
            .members
            .iter()
            .filter(|(other, m)| **other != id && !m.presence.is_empty())
            .map(|(_, m)| (m.peer, m.presence.clone()))
            .collect();
        present.sort_unstable_by_key(|(peer, _)| *peer);
        for (peer, state) in present {
            self.send(
                Audience::One(id),
                Message::PresenceUpdate(PresenceUpdate { peer, state }),
                out,
            );
        }
    }

    /// Queues the room's sketch (or its extension) for a session. A sketch the room cannot
    /// make (a size beyond the largest) sends the session to refinement instead.
    fn send_sketch(
        &mut self,
        id: SessionId,
        log2: u8,
        extension: bool,
        at_seq: u64,
        out: &mut Outbox,
    ) {
        let max_frame = self.config.session.limits.max_frame as usize;
        let class = self.class_of(id);
        let Some(scope) = scope(&self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        match self
            .room
            .sketch_frames(scope, log2, extension, at_seq, max_frame)
        {
            Ok(frames) => {
                for frame in frames {
                    out.frames.push(Outgoing {
                        to: Audience::One(id),
                        frame,
                        paced: false,
                    });
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "no sketch at that size; refining");
                self.start_refine(id, sketch_capacity(log2), out);
            }
        }
    }

    /// Abandons the sketch path for a session and sends bucket summaries, announcing an
    /// `expected` difference: what the abandoned sketch could not hold.
    fn start_refine(&mut self, id: SessionId, expected: u64, out: &mut Outbox) {
        let class = self.class_of(id);
        let Some(sets) = sets_mut(&mut self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        let depth = crate::recon::refine_depth(sets.len());
        let at_seq = self.room.seq();
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        member.session.refine();
        member.recon = Recon::Refine {
            depth,
            at_seq,
            expected,
        };
        self.send_buckets(id, depth, expected, out);
    }

    fn send_buckets(&mut self, id: SessionId, depth: u8, expected: u64, out: &mut Outbox) {
        let max_frame = self.config.session.limits.max_frame as usize;
        let class = self.class_of(id);
        let Some(sets) = sets_mut(&mut self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        let summaries = bucket_summaries(sets, depth);
        let key = self.room.sketch_key_wire();
        for message in protocol::buckets_messages(depth, expected, key, &summaries, max_frame) {
            self.send(Audience::One(id), message, out);
        }
    }

    /// The client decoded the sketch: verify its shared root, then stream what it lacks.
    fn settle_want(&mut self, id: SessionId, shorts: &[u64], shared: SetDigest, out: &mut Outbox) {
        let Some(Recon::Sketch { log2, at_seq, .. }) = self.members.get(&id).map(|m| m.recon)
        else {
            return;
        };
        let class = self.class_of(id);
        let Some(scope) = scope(&self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        match self.room.settle_want(scope, shorts, shared, at_seq) {
            Some(cursor) => self.start_stream(id, cursor, out),
            None => {
                tracing::debug!("shared root mismatch after a sketch decode; refining");
                self.start_refine(id, sketch_capacity(log2), out);
            }
        }
    }

    /// The client could not decode: extend the sketch once, then refine.
    fn retry(&mut self, id: SessionId, out: &mut Outbox) {
        let Some(Recon::Sketch {
            log2,
            at_seq,
            extended,
        }) = self.members.get(&id).map(|m| m.recon)
        else {
            return;
        };
        if extended || log2 >= MAX_LOG2_CELLS {
            // The difference did not fit this sketch: at least its cell count is a fair guess.
            self.start_refine(id, sketch_capacity(log2), out);
            return;
        }
        let log2 = log2 + 1;
        if let Some(member) = self.members.get_mut(&id) {
            member.recon = Recon::Sketch {
                log2,
                at_seq,
                extended: true,
            };
        }
        self.send_sketch(id, log2, true, at_seq, out);
    }

    /// A round of `bucket_ids` is in: answer `missing`, then stream, or (first round, some
    /// bucket sketch did not settle) ask for those buckets' lists.
    fn settle_bucket_ids(
        &mut self,
        id: SessionId,
        differing: Bytes,
        shorts: &[u64],
        sketches: &[BucketSketch],
        out: &mut Outbox,
    ) {
        let class = self.class_of(id);
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let Recon::Refine { depth, at_seq, .. } = member.recon else {
            return;
        };
        let relisting = member.relisting.take();
        let Some(scope) = scope(&self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        let round = BucketRound {
            depth,
            at_seq,
            differing: &differing,
            shorts,
            sketches,
        };
        let settled = match relisting {
            Some(Relisting { buckets, .. }) if buckets != differing => Err(BucketIdsError::Relist),
            Some(Relisting { cursor, .. }) => {
                self.room.settle_bucket_ids(scope, round, Some(cursor))
            }
            None => self.room.settle_bucket_ids(scope, round, None),
        };
        match settled {
            Ok(Settled {
                missing,
                cursor,
                relist,
            }) => {
                let max_frame = self.config.session.limits.max_frame as usize;
                for message in protocol::missing_messages(&missing, &relist, max_frame) {
                    self.send(Audience::One(id), message, out);
                }
                if relist.is_empty() {
                    self.start_stream(id, cursor, out);
                } else if let Some(member) = self.members.get_mut(&id) {
                    member.relisting = Some(Relisting {
                        buckets: Bytes::from(relist),
                        cursor,
                    });
                    member.session.refine();
                }
            }
            Err(e) => {
                let error = ErrorMessage::new(
                    ErrorCode::Malformed,
                    Some(MessageType::BucketIds),
                    e.to_string(),
                );
                self.send(Audience::One(id), Message::ErrorMessage(error), out);
                self.close(id, CloseCode::ProtocolViolation, out);
            }
        }
    }

    /// Reconciliation is settled: stream the cursor as catch-up.
    fn start_stream(&mut self, id: SessionId, cursor: Cursor, out: &mut Outbox) {
        if let Some(member) = self.members.get_mut(&id) {
            let cursor = match &member.subscription {
                Some((set, _)) => cursor.filtered(set.clone()),
                None => cursor,
            };
            member.cursor = Some(cursor);
            member.waiting_on = None;
            member.recon = Recon::Idle;
            member.session.need_sent();
        }
        self.pump(id, out);
    }

    fn send_need(&mut self, id: SessionId, need: Vec<NodeId>, out: &mut Outbox) {
        let chunk = (self.config.session.limits.max_ids as usize).max(1);
        let mut chunks = need.chunks(chunk).peekable();
        if chunks.peek().is_none() {
            self.send(
                Audience::One(id),
                Message::Need(Need {
                    ids: Vec::new(),
                    last: true,
                }),
                out,
            );
        }
        while let Some(ids) = chunks.next() {
            let last = chunks.peek().is_none();
            self.send(
                Audience::One(id),
                Message::Need(Need {
                    ids: ids.to_vec(),
                    last,
                }),
                out,
            );
        }
    }

    /// `hello` with a subscription (§7.5, §5.11): the session reconciles the matching subset
    /// only. Its class (shared by every session with the same subscription) lists the matching
    /// nodes, so planning and the catch-up cost what matches, not the room; a client that
    /// lost its watermark reconciles by sketch against the class's own sketch structures.
    fn join_subscribed(
        &mut self,
        id: SessionId,
        hints: &SyncHints,
        capabilities: Capabilities,
        patterns: Vec<Pattern>,
        out: &mut Outbox,
    ) {
        let set = Arc::new(PatternSet::new(patterns));
        let class_id = self.subscriptions.join(id, set.clone(), &self.room);
        let Some(class) = self.subscriptions.class(class_id) else {
            return self.lost_class(id, out);
        };
        let epoch = self.room.epoch();
        let seq = self.room.seq();
        let watermark = hints
            .watermark
            .filter(|w| w.epoch == epoch && w.seq <= seq)
            .map(|w| w.seq);
        let sketches = capabilities.contains(Capabilities::IBF.union(Capabilities::MST));
        // `hints.digest` covers the client's matching nodes only.
        let path = if hints.digest == class.digest(&self.room) {
            ReconPath::InSync
        } else if let Some(after) = watermark {
            ReconPath::CatchUp { after }
        } else if hints.digest.count == 0 {
            ReconPath::CatchUp { after: 0 }
        } else if sketches && self.subscriptions.allow_recon(class_id, &self.room) {
            self.plan_class(id, hints, capabilities, class_id, out)
        } else {
            // No sketches, or the classes' sketch structures are at their bound.
            ReconPath::IdList
        };
        let Some(class) = self.subscriptions.class(class_id) else {
            return self.lost_class(id, out);
        };
        let start = Start::from_path(path, seq, |after| {
            let explicit = class.seqs_after(&self.room, after, |_| true);
            Cursor::new(explicit, seq.saturating_add(1)).filtered(set.clone())
        });
        self.welcome(id, capabilities, start, Some((set, class_id)), out);
    }

    /// The sketch or refinement plan of a subscribed client that holds matching nodes but no
    /// watermark: sized from its estimator against the class's.
    fn plan_class(
        &mut self,
        id: SessionId,
        hints: &SyncHints,
        capabilities: Capabilities,
        class: ClassId,
        out: &mut Outbox,
    ) -> ReconPath {
        let Some(recon) = self.subscriptions.recon_mut(class, &self.room) else {
            return ReconPath::IdList;
        };
        let side = RelaySide {
            digest: recon.digest(),
            epoch: self.room.epoch(),
            seq: self.room.seq(),
        };
        let (path, error) = plan_against(hints, capabilities, side, recon.estimator(), |_| false);
        if let Some(e) = error {
            self.estimator_error(id, &e, out);
        }
        path
    }

    /// `subscribe` / `unsubscribe`: changes the session's subscription, streams what newly
    /// matches (a backfill, paced like catch-up), then answers `subscribed`.
    fn change_subscription(
        &mut self,
        id: SessionId,
        number: u64,
        patterns: &[Pattern],
        add: bool,
        out: &mut Outbox,
    ) {
        let Some(member) = self.members.get(&id) else {
            return;
        };
        let old = member.subscription.as_ref().map_or_else(
            || Arc::new(PatternSet::new([Pattern::everything()])),
            |(set, _)| set.clone(),
        );
        let new = if add {
            old.with(patterns)
        } else {
            old.without(patterns)
        };
        let max = self.config.session.limits.patterns.max_patterns;
        if new.len() > usize::from(max) {
            let error = ErrorMessage::new(
                ErrorCode::BadPattern,
                Some(MessageType::Subscribe),
                format!("the subscription would hold more than {max} patterns"),
            );
            return self.send(Audience::One(id), Message::ErrorMessage(error), out);
        }
        let seq = self.room.seq();
        if new == *old {
            let done = Subscribed {
                number,
                patterns: new.canonical(),
                seq,
            };
            return self.send(Audience::One(id), Message::Subscribed(done), out);
        }
        if let Some((_, class)) = member.subscription.clone() {
            self.subscriptions.leave(id, class);
        }
        let new = Arc::new(new);
        let class = self.subscriptions.join(id, new.clone(), &self.room);
        // Newly matching history: the nodes of the paths the new subscription matches and the
        // old did not.
        let explicit: Vec<u64> = self
            .subscriptions
            .class(class)
            .map(|class| class.seqs_after(&self.room, 0, |path| !old.matches(path)))
            .unwrap_or_default();
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        member.subscription = Some((new.clone(), class));
        self.unsubscribed.remove(&id);
        if explicit.is_empty() {
            let done = Subscribed {
                number,
                patterns: new.canonical(),
                seq,
            };
            return self.send(Audience::One(id), Message::Subscribed(done), out);
        }
        member.session.backfill();
        member.backfill = Some(number);
        member.waiting_on = None;
        member.cursor = Some(Cursor::new(explicit, seq.saturating_add(1)).filtered(new));
        self.pump(id, out);
    }

    /// Streams catch-up while the session has credit; finishes it when the log is exhausted.
    fn pump(&mut self, id: SessionId, out: &mut Outbox) {
        let max_frame = self.config.session.limits.max_frame as usize;
        loop {
            let Some(member) = self.members.get_mut(&id) else {
                return;
            };
            if !member.session.is_catching_up()
                || !member.session.has_credit()
                || member.waiting_on.is_some()
            {
                return;
            }
            let Some(cursor) = member.cursor.as_mut() else {
                return;
            };
            match self.room.next_batch(cursor, max_frame) {
                BatchStep::Batch { frame, .. } => {
                    member.session.spend_credit(frame.len() as u64);
                    out.frames.push(Outgoing {
                        to: Audience::One(id),
                        frame,
                        paced: true,
                    });
                }
                BatchStep::Fetch(seqs) => {
                    member.waiting_on = seqs.first().copied();
                    let new: Vec<u64> = seqs
                        .into_iter()
                        .filter(|seq| self.fetching.insert(*seq))
                        .collect();
                    if !new.is_empty() {
                        out.fetches.push(new);
                    }
                    return;
                }
                BatchStep::Done => {
                    member.cursor = None;
                    member.session.caught_up();
                    let seq = self.room.seq();
                    let backfill = member.backfill.take();
                    let verify_root = member.verify_root;
                    let class_id = member.subscription.as_ref().map(|(_, class)| *class);
                    let class = class_id.and_then(|class| self.subscriptions.class(class));
                    if let Some(number) = backfill {
                        let patterns = class.map(|c| c.set().canonical()).unwrap_or_default();
                        let done = Subscribed {
                            number,
                            patterns,
                            seq,
                        };
                        self.send(Audience::One(id), Message::Subscribed(done), out);
                        return;
                    }
                    // A subscribed session holds the matching subset: its digest is the class's.
                    let digest = class.map_or(self.room.digest(), |c| c.digest(&self.room));
                    // Sketch and refine sessions decided what to send from short ids and
                    // digests; the root (of the class's nodes for a subscribed session) makes
                    // the result collision-resistant (§5.10).
                    let root = if verify_root {
                        sets_mut(&mut self.room, &mut self.subscriptions, class_id).map(tree_root)
                    } else {
                        None
                    };
                    let done = CatchUpDone { seq, digest, root };
                    self.send(Audience::One(id), Message::CatchUpDone(done), out);
                    return;
                }
            }
        }
    }

    fn submit(&mut self, id: SessionId, pack: Pack, now: Instant, out: &mut Outbox) {
        let Submission {
            outcomes,
            admitted,
            resolved,
        } = self.room.submit(id, pack.nodes, now);
        if self.subscriptions.has_classes() {
            for a in &admitted {
                let Some(node) = self.room.node_at(a.seq) else {
                    continue;
                };
                let first = self
                    .room
                    .path_nodes(node.path())
                    .is_some_and(|nodes| nodes.seqs().first() == Some(&a.seq));
                if first {
                    self.subscriptions.new_path(&node.path);
                }
            }
        }
        self.send(
            Audience::One(id),
            Message::Ack(Ack {
                number: pack.number,
                outcomes,
            }),
            out,
        );
        if !admitted.is_empty() {
            self.broadcast(&admitted, Audience::Live { except: Some(id) }, out);
            // Released orphans of other peers still reach the sender, which never gets its own
            // nodes echoed back.
            if self.members.get(&id).is_some_and(|m| m.session.is_steady()) {
                let others: Vec<Admitted> = admitted
                    .iter()
                    .filter(|a| a.origin != id)
                    .copied()
                    .collect();
                for run in others.chunk_by(|a, b| a.seq.checked_add(1) == Some(b.seq)) {
                    self.broadcast(run, Audience::One(id), out);
                }
            }
        }
        self.send_resolved(resolved, out);
    }

    /// Broadcasts consecutive admitted nodes, from their stored encodings, to the sessions of
    /// `to` whose subscription they match: sessions that get the same nodes share frames,
    /// one per run of consecutive numbers (§7.3, §7.5).
    fn broadcast(&mut self, admitted: &[Admitted], to: Audience, out: &mut Outbox) {
        if self.subscriptions.is_empty() {
            return self.broadcast_run(admitted, to, out);
        }
        // Sessions without a subscription get everything, in one frame resolved when it is
        // queued; subscribed ones are found through the pattern index, so the cost is what
        // matches, never one test per session.
        let (except, only) = match to {
            Audience::Live { except } => (except, None),
            Audience::One(id) => (None, Some(id)),
            _ => return self.broadcast_run(admitted, to, out),
        };
        match only {
            Some(id) => {
                if self
                    .members
                    .get(&id)
                    .is_some_and(|m| m.subscription.is_none())
                {
                    self.broadcast_run(admitted, Audience::One(id), out);
                }
            }
            None => self.broadcast_run(admitted, Audience::Unsubscribed { except }, out),
        }
        let wanted = |hub: &Self, session: SessionId| {
            let listed = match only {
                Some(id) => session == id,
                None => Some(session) != except,
            };
            listed
                && hub
                    .members
                    .get(&session)
                    .is_some_and(|m| m.session.is_steady())
        };
        // Most packs admit one node: its matching sessions are the audience.
        if let [single] = admitted {
            let Some(node) = self.room.node_at(single.seq) else {
                return;
            };
            let mut sessions = self.subscriptions.sessions_matching(node.path());
            sessions.retain(|s| wanted(self, *s));
            if !sessions.is_empty() {
                self.broadcast_run(admitted, Audience::Many(sessions.into()), out);
            }
            return;
        }
        let mut picked: BTreeMap<SessionId, Vec<usize>> = BTreeMap::new();
        for (index, a) in admitted.iter().enumerate() {
            let Some(node) = self.room.node_at(a.seq) else {
                continue;
            };
            for session in self.subscriptions.sessions_matching(node.path()) {
                if wanted(self, session) {
                    picked.entry(session).or_default().push(index);
                }
            }
        }
        let mut groups: BTreeMap<Vec<usize>, Vec<SessionId>> = BTreeMap::new();
        for (session, indexes) in picked {
            groups.entry(indexes).or_default().push(session);
        }
        for (indexes, sessions) in groups {
            let nodes: Vec<Admitted> = indexes
                .iter()
                .filter_map(|i| admitted.get(*i))
                .copied()
                .collect();
            let audience = Audience::Many(sessions.into());
            for run in nodes.chunk_by(|a, b| a.seq.checked_add(1) == Some(b.seq)) {
                self.broadcast_run(run, audience.clone(), out);
            }
        }
    }

    /// One `broadcast` frame of consecutive admitted nodes.
    fn broadcast_run(&mut self, admitted: &[Admitted], to: Audience, out: &mut Outbox) {
        let Some(first) = admitted.first() else {
            return;
        };
        let wires: Vec<&Bytes> = admitted
            .iter()
            .filter_map(|a| self.room.wire_at(a.seq))
            .collect();
        let frame = protocol::broadcast_frame(first.seq, &wires);
        out.frames.push(Outgoing {
            to,
            frame,
            paced: false,
        });
    }

    fn send_resolved(
        &mut self,
        resolved: impl IntoIterator<Item = (SessionId, NodeId, Outcome)>,
        out: &mut Outbox,
    ) {
        let mut by_origin: BTreeMap<SessionId, Vec<(NodeId, Outcome)>> = BTreeMap::new();
        for (origin, id, outcome) in resolved {
            by_origin.entry(origin).or_default().push((id, outcome));
        }
        for (origin, outcomes) in by_origin {
            if self
                .members
                .get(&origin)
                .is_some_and(|m| m.session.is_steady())
            {
                self.send(
                    Audience::One(origin),
                    Message::Resolved(Resolved { outcomes }),
                    out,
                );
            }
        }
    }

    fn send(&mut self, to: Audience, message: Message, out: &mut Outbox) {
        match message.encode() {
            Ok(frame) => out.frames.push(Outgoing {
                to,
                frame,
                paced: false,
            }),
            Err(e) => {
                // Never drop silently: whoever should have received it resyncs.
                tracing::error!(error = %e, ty = ?message.message_type(), "cannot encode a frame");
                let victims: Vec<SessionId> = self.recipients(to).collect();
                for victim in victims {
                    self.close(victim, CloseCode::Internal, out);
                }
            }
        }
    }

    fn close(&mut self, id: SessionId, code: CloseCode, out: &mut Outbox) {
        if self.forget(id, out) {
            out.closes.push((id, code));
        }
    }

    /// Removes a session; tells presence peers it left. Returns whether it was known.
    fn forget(&mut self, id: SessionId, out: &mut Outbox) -> bool {
        let Some(member) = self.members.remove(&id) else {
            return false;
        };
        if let Some((_, class)) = &member.subscription {
            self.subscriptions.leave(id, *class);
        }
        if let Some(deadline) = member.handshake_deadline {
            self.handshakes.remove(&(deadline, id));
        }
        self.unsubscribed.remove(&id);
        if !member.presence.is_empty() {
            let left = Message::PresenceUpdate(PresenceUpdate {
                peer: member.peer,
                state: Bytes::new(),
            });
            self.send(Audience::PresencePeers { except: id }, left, out);
        }
        true
    }
}

/// Differences a sketch at `2^log2` cells per sub-table was sized for (§5.7.4): what a
/// refinement after it announces as `expected`.
fn sketch_capacity(log2: u8) -> u64 {
    let cells = (crate::recon::ibf::K as u64) << log2.min(MAX_LOG2_CELLS);
    (cells as f64 / crate::recon::index::CELLS_PER_DIFFERENCE) as u64
}
