//! Durability as an effect of the hub: nothing a client hears may depend on a node that is not
//! stored yet.
//!
//! The hub admits nodes at once (so later frames can build on them). Every frame it makes is
//! tagged with the highest arrival number it may reveal ([`Outgoing::through`]): an `ack`,
//! `broadcast` or `resolved` the room's latest number, a catch-up `batch` its resume point, a
//! `welcome`, sketch or presence update only what is stored. A frame whose number is not stored
//! yet is held, with its recipients fixed then, and the hub asks its driver to persist through
//! that number ([`Outbox::persist`]), one write at a time; the driver answers
//! [`Hub::persisted`](super::Hub::persisted) or
//! [`Hub::persist_failed`](super::Hub::persist_failed), and the held frames whose numbers are
//! now stored go out. Nodes admitted while a write is in flight form the next one.
//!
//! A write usually releases many packs' output at once (group commit), and with it one
//! `broadcast` per pack for the same receivers. Those whose arrival numbers follow one another
//! are joined into one frame, still encoded once for all of them: a receiver then pays one
//! message per write, not one per node.
//!
//! Order is kept per session: once a session has a frame held, everything after it for that
//! session is held behind it, so no session hears its frames in another order than the hub
//! made them. Sessions with nothing held are served at once, so a handshake or a catch-up of
//! stored history never waits for a commit of someone else's nodes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::hub::{Audience, Outbox, Outgoing};
use super::{Admitted, SessionId};
use crate::protocol::{BATCH_OVERHEAD, BroadcastRun, CloseCode, join_broadcasts};

/// When the hub's output may leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Output waits until the nodes it may reveal are stored: the driver persists what
    /// [`Outbox::persist`] asks for and reports back. What a relay needs.
    #[default]
    Effect,
    /// Admitted nodes count as stored at once and output is never held: for harnesses that
    /// exercise reconciliation without a store.
    Immediate,
}

/// What waits in the ledger.
#[derive(Debug)]
enum Waiting {
    /// A frame, for the recipients it had when it was made.
    Frame {
        to: Arc<[SessionId]>,
        frame: Bytes,
        paced: bool,
    },
    /// A close, queued after the session's held frames.
    Close(SessionId, CloseCode),
}

/// Output held until nodes up to `through` are stored.
#[derive(Debug)]
struct Held {
    through: u64,
    waiting: Waiting,
}

/// Output held for a write, and the sessions it names.
#[derive(Debug, Default)]
struct Backlog {
    /// Held output, in the order it was made.
    held: VecDeque<Held>,
    /// How many held entries name each session: its later output waits behind them.
    pending: HashMap<SessionId, usize>,
    /// Sessions whose connection ended while output for them was held: it is dropped.
    gone: HashSet<SessionId>,
}

/// The hub's side of persistence: what is stored, what is being written, what waits for it.
#[derive(Debug)]
pub(super) struct Ledger {
    mode: Durability,
    /// Nodes up to this arrival number are stored.
    durable: u64,
    /// A write through this arrival number was asked for and has not been answered.
    persisting: Option<u64>,
    /// Made when output is first held. Boxed: inline, its empty collections would take ~130
    /// bytes of every loaded room, and a room that is only read never holds anything.
    backlog: Option<Box<Backlog>>,
    /// Admitted nodes not stored yet, ascending, with their senders: a session that turns
    /// steady before they are stored hears them as broadcasts.
    unstored: Vec<Admitted>,
    /// Largest frame a released `broadcast` may grow to by joining.
    max_frame: usize,
}

impl Ledger {
    /// A ledger for a room whose nodes up to `durable` are stored; released broadcasts are
    /// joined up to `max_frame` bytes.
    pub(super) fn new(mode: Durability, durable: u64, max_frame: usize) -> Self {
        Self {
            max_frame,
            mode,
            durable,
            persisting: None,
            backlog: None,
            unstored: Vec::new(),
        }
    }

    /// Nodes up to this arrival number are stored.
    pub(super) fn durable(&self) -> u64 {
        self.durable
    }

    /// Nodes were admitted (in arrival order).
    pub(super) fn admitted(&mut self, admitted: &[Admitted]) {
        if self.mode == Durability::Effect {
            let durable = self.durable;
            self.unstored
                .extend(admitted.iter().filter(|a| a.seq > durable).copied());
        }
    }

    /// Admitted nodes not stored yet, ascending.
    pub(super) fn unstored(&self) -> &[Admitted] {
        &self.unstored
    }

    /// The connection of `id` ended: output held for it will not be released.
    pub(super) fn departed(&mut self, id: SessionId) {
        if let Some(backlog) = &mut self.backlog
            && backlog.pending.contains_key(&id)
        {
            backlog.gone.insert(id);
        }
    }

    /// Whether output for `id` is held: its later output waits behind it.
    fn is_pending(&self, id: SessionId) -> bool {
        self.backlog
            .as_ref()
            .is_some_and(|backlog| backlog.pending.contains_key(&id))
    }

    /// Holds `waiting` until nodes up to `through` are stored, naming `ids`.
    fn hold(&mut self, through: u64, waiting: Waiting, ids: &[SessionId]) {
        let backlog = self.backlog.get_or_insert_with(Box::default);
        for id in ids {
            *backlog.pending.entry(*id).or_default() += 1;
        }
        backlog.held.push_back(Held { through, waiting });
    }

    /// Whether output made now, with the room at arrival number `seq`, goes out as it is:
    /// every admitted node is stored and nothing is held.
    pub(super) fn is_clear(&mut self, seq: u64) -> bool {
        if self.mode == Durability::Immediate {
            self.durable = self.durable.max(seq);
            return true;
        }
        seq <= self.durable && self.backlog.as_ref().is_none_or(|b| b.held.is_empty())
    }

    /// Splits `frame` between the recipients that may have it now and those that must wait
    /// (it may reveal an unstored node, or they have earlier output held). Returns the
    /// recipients served now.
    pub(super) fn admit_frame(&mut self, frame: &Outgoing, to: Vec<SessionId>) -> Vec<SessionId> {
        let storable = frame.through <= self.durable;
        let (now, later): (Vec<SessionId>, Vec<SessionId>) = to
            .into_iter()
            .partition(|id| storable && !self.is_pending(*id));
        if !later.is_empty() {
            let to: Arc<[SessionId]> = later.into();
            let waiting = Waiting::Frame {
                to: to.clone(),
                frame: frame.frame.clone(),
                paced: frame.paced,
            };
            self.hold(frame.through, waiting, &to);
        }
        now
    }

    /// Whether closing `id` now keeps its order: otherwise the close is held behind its
    /// frames.
    pub(super) fn admit_close(&mut self, id: SessionId, code: CloseCode) -> bool {
        if !self.is_pending(id) {
            return true;
        }
        self.hold(self.durable, Waiting::Close(id, code), &[id]);
        false
    }

    /// The write to ask the driver for, with the room at `room_seq`: none while one is in
    /// flight or when everything is stored.
    pub(super) fn request(&mut self, room_seq: u64) -> Option<u64> {
        if self.persisting.is_some() || room_seq <= self.durable {
            return None;
        }
        self.persisting = Some(room_seq);
        Some(room_seq)
    }

    /// A write through `seq` succeeded: releases what waited for it, in order, and asks for
    /// the next write if nodes were admitted meanwhile (`room_seq` is the room's number now).
    pub(super) fn persisted(&mut self, seq: u64, room_seq: u64) -> Outbox {
        self.durable = self.durable.max(seq);
        if self.persisting.is_some_and(|asked| asked <= self.durable) {
            self.persisting = None;
        }
        let durable = self.durable;
        self.unstored.retain(|a| a.seq > durable);
        let mut out = Outbox::default();
        let mut joiner = Joiner {
            max_frame: self.max_frame,
            open: None,
        };
        if let Some(backlog) = &mut self.backlog {
            backlog.release_through(durable, &mut joiner, &mut out);
        }
        joiner.finish(&mut out.frames);
        out.persist = self.request(room_seq);
        out
    }

    /// The write failed for good: what waited for it will never be sent.
    pub(super) fn failed(&mut self) {
        self.backlog = None;
        self.unstored.clear();
        self.persisting = None;
    }
}

impl Backlog {
    /// Releases, in order, the held output whose nodes are stored through `durable`: frames
    /// through `joiner` into `out`, closes into `out`.
    fn release_through(&mut self, durable: u64, joiner: &mut Joiner, out: &mut Outbox) {
        while self.held.front().is_some_and(|h| h.through <= durable) {
            let Some(held) = self.held.pop_front() else {
                break;
            };
            match held.waiting {
                Waiting::Frame { to, frame, paced } => {
                    for id in to.iter() {
                        self.release(*id);
                    }
                    let to: Arc<[SessionId]> = if self.gone.is_empty() {
                        to
                    } else {
                        to.iter()
                            .filter(|id| !self.gone.contains(id))
                            .copied()
                            .collect()
                    };
                    if !to.is_empty() {
                        joiner.push(&mut out.frames, to, frame, paced, held.through);
                    }
                }
                Waiting::Close(id, code) => {
                    self.release(id);
                    if !self.gone.contains(&id) {
                        out.closes.push((id, code));
                    }
                }
            }
        }
        if self.held.is_empty() {
            self.gone.clear();
        }
    }

    /// One held entry naming `id` went out.
    fn release(&mut self, id: SessionId) {
        if let Some(count) = self.pending.get_mut(&id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.pending.remove(&id);
            }
        }
    }
}

/// Joins released `broadcast` frames: a run that follows the open one, for the same
/// recipients, becomes part of it, up to `max_frame` bytes. A frame only ever moves earlier,
/// and only past frames that none of its recipients receives, so every session still gets its
/// frames in the order the hub made them.
struct Joiner {
    max_frame: usize,
    open: Option<Open>,
}

/// The broadcast being joined.
struct Open {
    /// Where its first frame sits in the output; the joined frame replaces it there.
    index: usize,
    to: Arc<[SessionId]>,
    /// Recipients made from the hub's session map come sorted: look them up by bisection.
    sorted: bool,
    runs: Vec<BroadcastRun>,
    /// Bytes of the runs' nodes.
    len: usize,
}

impl Joiner {
    /// Adds a released frame (`through` as [`Outgoing::through`]) to `out`.
    fn push(
        &mut self,
        out: &mut Vec<Outgoing>,
        to: Arc<[SessionId]>,
        frame: Bytes,
        paced: bool,
        through: u64,
    ) {
        let run = if paced {
            None
        } else {
            BroadcastRun::parse(&frame)
        };
        let Some(run) = run else {
            if self.open.as_ref().is_some_and(|open| open.reaches(&to)) {
                self.finish(out);
            }
            out.push(Outgoing {
                to: Audience::Many(to),
                frame,
                paced,
                through,
            });
            return;
        };
        if let Some(open) = &mut self.open {
            if open.takes(&to, &run, self.max_frame) {
                open.len = open.len.saturating_add(run.nodes_len());
                open.runs.push(run);
                return;
            }
        }
        self.finish(out);
        self.open = Some(Open {
            index: out.len(),
            sorted: to.is_sorted(),
            to: to.clone(),
            len: run.nodes_len(),
            runs: vec![run],
        });
        out.push(Outgoing {
            to: Audience::Many(to),
            frame,
            paced,
            through,
        });
    }

    /// Puts the open broadcast, joined, in its place.
    fn finish(&mut self, out: &mut [Outgoing]) {
        let Some(open) = self.open.take() else {
            return;
        };
        if open.runs.len() < 2 {
            return;
        }
        if let (Some(joined), Some(slot)) = (join_broadcasts(&open.runs), out.get_mut(open.index)) {
            slot.frame = joined;
        }
    }
}

impl Open {
    /// Whether `run`, for `to`, can join this broadcast.
    fn takes(&self, to: &Arc<[SessionId]>, run: &BroadcastRun, max_frame: usize) -> bool {
        let size = self
            .len
            .saturating_add(run.nodes_len())
            .saturating_add(BATCH_OVERHEAD);
        self.runs
            .last()
            .is_some_and(|last| last.is_followed_by(run))
            && size <= max_frame
            && (Arc::ptr_eq(&self.to, to) || *self.to == **to)
    }

    /// Whether a frame for `to` reaches one of this broadcast's recipients.
    fn reaches(&self, to: &[SessionId]) -> bool {
        to.iter().any(|id| {
            if self.sorted {
                self.to.binary_search(id).is_ok()
            } else {
                self.to.contains(id)
            }
        })
    }
}

#[cfg(test)]
mod tests;
