//! A room plus the relay sessions connected to it: the types, the entry points, and what
//! every part shares. Each kind of work has its own module.

mod fanout;
mod join;
mod reconcile;
mod stream;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::durability::{Durability, Ledger};
use super::recon::{Scope, bucket_summaries, plan_against, tree_root};
use super::subscriptions::{ClassId, ClassRecon, Subscriptions};
use super::{
    Admitted, BatchStep, BucketIdsError, BucketRound, Room, SessionId, Settled, Submission,
};
use crate::node::NodeId;
use crate::node::Rejection;
use crate::pattern::{Pattern, PatternSet};
use crate::protocol::{
    self, Ack, BucketSketch, Capabilities, CatchUpDone, CloseCode, Message, MessageType, Need,
    Outcome, PROTOCOL_VERSION, Pack, Plan, PresenceUpdate, RelayLimits, Resolved, Subscribed,
    SyncHints, Welcome,
};
use crate::recon::estimator::EstimatorError;
use crate::recon::ibf::MAX_LOG2_CELLS;
use crate::recon::index::SetIndex;
use crate::recon::{ReconPath, RelaySide, SetDigest};
use crate::session::Cursor;
use crate::session::{
    Ending, Fault, Reaction, RefineRound, RelaySession, RelaySessionConfig, Relisting, Request,
    SessionError, SketchRound, Start, Stream,
};

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
    /// The highest arrival number the frame may reveal: it is not sent before nodes up to it
    /// are stored (see [`super::durability`]).
    pub through: u64,
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

/// An outbox with every audience resolved to the sessions it names now: what a driver queues.
#[derive(Debug, Default)]
#[must_use]
pub struct Delivery {
    /// Frames to queue, in order.
    pub frames: Vec<Addressed>,
    /// Sessions to close after their frames are queued.
    pub closes: Vec<(SessionId, CloseCode)>,
    /// As [`Outbox::fetches`].
    pub fetches: Vec<Vec<u64>>,
    /// As [`Outbox::persist`].
    pub persist: Option<u64>,
}

/// One frame and the sessions it goes to.
#[derive(Debug, Clone)]
pub struct Addressed {
    /// Receivers, as they were when the frame was resolved (shared, not copied, when the
    /// frame was held for a write: a broadcast's list is made once).
    pub to: Arc<[SessionId]>,
    /// The encoded frame, shared by every receiver.
    pub frame: Bytes,
    /// Paced by the receiver's credit (see [`Outgoing::paced`]).
    pub paced: bool,
}

impl Delivery {
    /// The frames session `id` receives, in order.
    pub fn frames_for(&self, id: SessionId) -> impl Iterator<Item = &Bytes> + '_ {
        self.frames
            .iter()
            .filter(move |a| a.to.contains(&id))
            .map(|a| &a.frame)
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

/// A connected session: its machine (which owns its phase's state) and what the room keeps
/// about it beside that.
struct Member {
    session: RelaySession,
    /// The peer number other sessions know this one by (`welcome.peer`, presence).
    peer: u64,
    presence: Bytes,
    /// The session's subscription and its class; `None` receives every node.
    subscription: Option<(Arc<PatternSet>, ClassId)>,
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
    /// Shared, not copied, when the driver hands every hub the same: every loaded room keeps
    /// its hub.
    config: Arc<HubConfig>,
    /// Boxed: a B-tree node holds eleven values, so inline members would cost an idle room
    /// of one session eleven members' worth (~4.7 KiB).
    members: BTreeMap<SessionId, Box<Member>>,
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
    /// Serves `room` under `config` (a [`HubConfig`], or one shared by several hubs).
    pub fn new(mut room: Room, config: impl Into<Arc<HubConfig>>) -> Self {
        let config = config.into();
        // A room fresh from a bulk load must not answer sketches the slow way.
        room.warm_indexes();
        let max_frame = config.session.limits.max_frame as usize;
        let ledger = Ledger::new(config.durability, room.seq(), max_frame);
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
        let error = SessionError::new(
            Fault::StoreUnavailable,
            None,
            "the relay could not store accepted nodes; reconnect and push again",
        );
        let everyone: Vec<SessionId> = self.members.keys().copied().collect();
        for id in everyone {
            self.reject(id, error.clone(), &mut out);
        }
        out
    }

    /// Nodes up to this arrival number are stored.
    pub fn durable_seq(&self) -> u64 {
        self.ledger.durable()
    }

    /// Whether a client that holds every node up to `after` and the ancestry of `heads` holds
    /// stored nodes only: its catch-up may then end at the last stored node, since the digest
    /// of its set as of that number is known (the unstored nodes follow as broadcasts).
    fn holds_stored_only(&self, after: u64, heads: &[NodeId]) -> bool {
        let durable = self.ledger.durable();
        // Parents have lower numbers than their children: the heads bound the ancestry.
        after <= durable
            && heads
                .iter()
                .all(|head| self.room.seq_of(head).is_none_or(|seq| seq <= durable))
    }

    /// Holds what `out` must not send yet (see [`super::durability`]): frames that may reveal
    /// unstored nodes, and anything for a session whose earlier output is held.
    fn settle(&mut self, mut out: Outbox) -> Outbox {
        let seq = self.room.seq();
        if self.ledger.is_clear(seq) {
            return out;
        }
        let frames = std::mem::take(&mut out.frames);
        for frame in frames {
            let to: Vec<SessionId> = self.recipients(frame.to.clone()).collect();
            let now = self.ledger.admit_frame(&frame, to);
            if !now.is_empty() {
                out.frames.push(Outgoing {
                    to: Audience::Many(now.into()),
                    ..frame
                });
            }
        }
        let closes = std::mem::take(&mut out.closes);
        out.closes = closes
            .into_iter()
            .filter(|(id, code)| self.ledger.admit_close(*id, *code))
            .collect();
        out.persist = out.persist.max(self.ledger.request(seq));
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
            .iter_mut()
            .filter_map(|(id, m)| Some((*id, m.session.stream_mut()?.waiting_on()?)))
            .collect();
        for (id, seq) in waiting {
            if failed.contains(&seq) {
                let error = SessionError::new(
                    Fault::StoreUnavailable,
                    None,
                    "the relay could not read stored history; reconnect to resume",
                );
                self.reject(id, error, &mut out);
            } else if let Some(stream) = self.stream_of(id) {
                stream.resume();
                self.pump(id, &mut out);
            }
        }
        self.room.trim_payloads();
        self.settle(out)
    }

    /// The stream session `id` is in, if it is streaming.
    fn stream_of(&mut self, id: SessionId) -> Option<&mut Stream> {
        self.members.get_mut(&id)?.session.stream_mut()
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
            Box::new(Member {
                session: RelaySession::new(self.config.session, deadline),
                peer: self.last_peer,
                presence: Bytes::new(),
                subscription: None,
            }),
        );
    }

    /// Forgets a pending handshake deadline. The last one gone frees the set's node, which a
    /// B-tree keeps even when empty: most rooms see handshakes only now and then.
    fn handshake_done(&mut self, deadline: Instant, id: SessionId) {
        self.handshakes.remove(&(deadline, id));
        if self.handshakes.is_empty() {
            self.handshakes = BTreeSet::new();
        }
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

    /// Resolves every audience of `out` to the sessions it names now. Every driver delivers
    /// through this, so all of them address frames alike.
    pub fn resolve(&self, out: Outbox) -> Delivery {
        let frames = out
            .frames
            .into_iter()
            .map(|o| Addressed {
                to: match o.to {
                    Audience::Many(ids) => ids,
                    to => self.recipients(to).collect(),
                },
                frame: o.frame,
                paced: o.paced,
            })
            .collect();
        Delivery {
            frames,
            closes: out.closes,
            fetches: out.fetches,
            persist: out.persist,
        }
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
            Reaction::Reject(error) => self.reject(id, error, &mut out),
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
                self.start_stream(id, cursor, Ending::AtLatest, out);
            }
            Request::Want {
                shorts,
                shared,
                sketch,
            } => self.settle_want(id, &shorts, shared, sketch, out),
            Request::Retry(sketch) => self.retry(id, sketch, out),
            Request::BucketIds {
                differing,
                shorts,
                sketches,
                round,
                relisting,
            } => {
                let answer = (differing, shorts.as_slice(), sketches.as_slice());
                self.settle_bucket_ids(id, round, relisting, answer, out);
            }
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
                // Presence reveals no node.
                let through = self.ledger.durable();
                self.send_through(Audience::PresencePeers { except: id }, update, through, out);
            }
        }
    }

    /// Queues `message`, which may reveal any node admitted so far.
    fn send(&mut self, to: Audience, message: Message, out: &mut Outbox) {
        let through = self.room.seq();
        self.send_through(to, message, through, out);
    }

    /// Queues `message`, which reveals no node numbered after `through`.
    fn send_through(&mut self, to: Audience, message: Message, through: u64, out: &mut Outbox) {
        match message.encode() {
            Ok(frame) => out.frames.push(Outgoing {
                to,
                frame,
                paced: false,
                through,
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

    /// Sends `error` to session `id`, and closes it if the error ends the session.
    fn reject(&mut self, id: SessionId, error: SessionError, out: &mut Outbox) {
        self.send(
            Audience::One(id),
            Message::ErrorMessage(error.to_message()),
            out,
        );
        if let Some(code) = error.close_code() {
            self.close(id, code, out);
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
        if let Some(deadline) = member.session.handshake_deadline() {
            self.handshake_done(deadline, id);
        }
        self.unsubscribed.remove(&id);
        if !member.presence.is_empty() {
            let left = Message::PresenceUpdate(PresenceUpdate {
                peer: member.peer,
                state: Bytes::new(),
            });
            let through = self.ledger.durable();
            self.send_through(Audience::PresencePeers { except: id }, left, through, out);
        }
        true
    }
}
