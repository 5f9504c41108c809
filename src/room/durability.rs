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

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::SessionId;
use super::hub::{Audience, Outbox, Outgoing};
use crate::protocol::CloseCode;

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
}

impl Ledger {
    /// A ledger for a room whose nodes up to `durable` are stored.
    pub(super) fn new(mode: Durability, durable: u64) -> Self {
        Self {
            mode,
            durable,
            persisting: None,
            held: VecDeque::new(),
            gone: HashSet::new(),
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
                    out.frames.push(Outgoing {
                        to: Audience::Many(to),
                        frame,
                        paced,
                    });
                }
            }
            let gone = &self.gone;
            out.closes
                .extend(held.closes.into_iter().filter(|(id, _)| !gone.contains(id)));
        }
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

#[cfg(test)]
mod tests;
