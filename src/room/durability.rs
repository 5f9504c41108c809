//! Durability as an effect of the hub: nothing a client hears may depend on a node that is not
//! stored yet.
//!
//! The hub admits nodes at once (so later frames can build on them), but every output it
//! produces while admitted nodes are not yet stored is held, in order, with the arrival number
//! it may reveal. The hub asks its driver to persist through that number ([`Outbox::persist`]),
//! one write at a time; the driver answers [`Hub::persisted`](super::Hub::persisted) or
//! [`Hub::persist_failed`](super::Hub::persist_failed), and the held outputs whose numbers are
//! now stored go out. Nodes admitted while a write is in flight form the next one.
//!
//! Output is held whole and in order rather than per frame: everything after an uncommitted
//! admission waits (including handshakes and presence), so no session can see frames in another
//! order than the hub made them, and a frame held for a write goes to the sessions it was meant
//! for when it was made, not to whoever joined since.
//!
//! A write usually releases many packs' output at once (group commit), and with it one
//! `broadcast` per pack for the same receivers. Those whose arrival numbers follow one another
//! are joined into one frame, still encoded once for all of them: a receiver then pays one
//! message per write, not one per node.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::SessionId;
use super::hub::{Audience, Outbox, Outgoing};
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

/// Output made while admitted nodes were not stored yet, with its recipients fixed then.
#[derive(Debug)]
struct Held {
    /// The highest arrival number the output may reveal.
    through: u64,
    frames: Vec<(Arc<[SessionId]>, Bytes, bool)>,
    closes: Vec<(SessionId, CloseCode)>,
}

/// The hub's side of persistence: what is stored, what is being written, what waits for it.
#[derive(Debug)]
pub(super) struct Ledger {
    mode: Durability,
    /// Nodes up to this arrival number are stored.
    durable: u64,
    /// A write through this arrival number was asked for and has not been answered.
    persisting: Option<u64>,
    held: VecDeque<Held>,
    /// Sessions whose connection ended while output for them was held: it is dropped.
    gone: HashSet<SessionId>,
    /// Largest frame a released `broadcast` may grow to by joining.
    max_frame: usize,
}

impl Ledger {
    /// A ledger for a room whose nodes up to `durable` are stored; released broadcasts are
    /// joined up to `max_frame` bytes.
    pub(super) fn new(mode: Durability, durable: u64, max_frame: usize) -> Self {
        Self {
            mode,
            durable,
            persisting: None,
            held: VecDeque::new(),
            gone: HashSet::new(),
            max_frame,
        }
    }

    /// Nodes up to this arrival number are stored.
    pub(super) fn durable(&self) -> u64 {
        self.durable
    }

    /// The connection of `id` ended: output held for it will not be released.
    pub(super) fn departed(&mut self, id: SessionId) {
        if !self.held.is_empty() {
            self.gone.insert(id);
        }
    }

    /// Whether output made now, with the room at arrival number `seq`, must wait: some
    /// admitted node is not stored, or earlier output is still waiting (order is kept).
    pub(super) fn must_hold(&mut self, seq: u64) -> bool {
        if self.mode == Durability::Immediate {
            self.durable = self.durable.max(seq);
            return false;
        }
        seq > self.durable || !self.held.is_empty()
    }

    /// Holds output that may reveal nodes up to `seq`, its recipients already fixed. Returns
    /// the write to ask the driver for, unless one is in flight.
    pub(super) fn hold(
        &mut self,
        seq: u64,
        frames: Vec<(Arc<[SessionId]>, Bytes, bool)>,
        closes: Vec<(SessionId, CloseCode)>,
    ) -> Option<u64> {
        self.held.push_back(Held {
            through: seq,
            frames,
            closes,
        });
        self.request(seq)
    }

    /// A write through `seq` succeeded: releases what waited for it, in order, and asks for
    /// the next write if nodes were admitted meanwhile (`room_seq` is the room's number now).
    pub(super) fn persisted(&mut self, seq: u64, room_seq: u64) -> Outbox {
        self.durable = self.durable.max(seq);
        if self.persisting.is_some_and(|asked| asked <= self.durable) {
            self.persisting = None;
        }
        let mut out = Outbox::default();
        let mut joiner = Joiner {
            max_frame: self.max_frame,
            open: None,
        };
        while self.held.front().is_some_and(|h| h.through <= self.durable) {
            let Some(held) = self.held.pop_front() else {
                break;
            };
            for (to, frame, paced) in held.frames {
                let to: Arc<[SessionId]> = if self.gone.is_empty() {
                    to
                } else {
                    to.iter()
                        .filter(|id| !self.gone.contains(id))
                        .copied()
                        .collect()
                };
                if !to.is_empty() {
                    joiner.push(&mut out.frames, to, frame, paced);
                }
            }
            let gone = &self.gone;
            out.closes
                .extend(held.closes.into_iter().filter(|(id, _)| !gone.contains(id)));
        }
        joiner.finish(&mut out.frames);
        if self.held.is_empty() {
            self.gone.clear();
        }
        if room_seq > self.durable {
            out.persist = self.request(room_seq);
        }
        out
    }

    /// The write failed for good: what waited for it will never be sent.
    pub(super) fn failed(&mut self) {
        self.held.clear();
        self.gone.clear();
        self.persisting = None;
    }

    /// Asks for a write through `seq` unless one is in flight.
    fn request(&mut self, seq: u64) -> Option<u64> {
        if self.persisting.is_some() {
            return None;
        }
        self.persisting = Some(seq);
        Some(seq)
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
    fn push(&mut self, out: &mut Vec<Outgoing>, to: Arc<[SessionId]>, frame: Bytes, paced: bool) {
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
