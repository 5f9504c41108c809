//! The byte-bounded queue between a room task and one connection's writer.
//!
//! A `VecDeque` behind a mutex plus one `Notify`, rather than a channel: an idle connection
//! then costs no preallocated channel blocks, which matters at thousands of idle connections.
//! The mutex is held only to push or drain, never across an await.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::protocol::{BATCH_OVERHEAD, BroadcastRun, CloseCode, join_broadcasts};

/// Totals shared by every queue of a server, for metrics and tests.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Bytes queued for all connections and not yet written to a socket.
    pub queued_bytes: AtomicUsize,
    /// Connections closed because their queue overflowed.
    pub overflows: AtomicUsize,
}

/// A queued frame. `queued_at` is set for live frames, whose age tells how far the receiver lags;
/// credit-paced catch-up frames carry `None`.
#[derive(Debug)]
pub struct Queued {
    /// The encoded frame.
    pub frame: Bytes,
    /// When a live frame entered the queue.
    pub queued_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Queued>,
    bytes: usize,
    /// Set once by the room (overflow, protocol violation...); the writer stops at it.
    close: Option<CloseCode>,
    /// The room task dropped its end: nothing more will come.
    room_gone: bool,
    /// The connection dropped its end: pushes are discarded.
    connection_gone: bool,
}

impl State {
    /// Takes the oldest frames, at most `max`. Taking them all hands the queue's buffer to the
    /// writer instead of copying out of it: the copy would be one allocation per burst all the
    /// same, and this way an idle connection keeps no buffer (four slots are ~200 bytes).
    fn take(&mut self, max: usize) -> Vec<Queued> {
        if max >= self.frames.len() {
            Vec::from(std::mem::take(&mut self.frames))
        } else {
            self.frames.drain(..max).collect()
        }
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
    limit: usize,
    stats: Arc<QueueStats>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The room task's end: push frames, or close the connection.
#[derive(Debug)]
pub struct Outbound {
    shared: Arc<Shared>,
}

/// The connection's end.
#[derive(Debug)]
pub struct Inbound {
    shared: Arc<Shared>,
}

/// A push did not fit: the queue would exceed its byte limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// What the writer should do next.
#[derive(Debug)]
pub enum Next {
    /// Write these frames (at most the requested number), oldest first.
    Frames(Vec<Queued>),
    /// Close with this code.
    Close(CloseCode),
}

/// Creates a queue holding at most `limit` bytes of frames.
pub fn queue(limit: usize, stats: Arc<QueueStats>) -> (Outbound, Inbound) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Notify::new(),
        limit,
        stats,
    });
    (
        Outbound {
            shared: shared.clone(),
        },
        Inbound { shared },
    )
}

impl Outbound {
    /// Queues a frame unless that would exceed the byte limit. Never blocks: the room task must
    /// not wait for one slow reader.
    pub fn push(&self, frame: Bytes, queued_at: Option<Instant>) -> Result<(), Overflow> {
        let len = frame.len();
        let mut state = self.shared.lock();
        if state.connection_gone {
            return Ok(());
        }
        if state.bytes.saturating_add(len) > self.shared.limit {
            self.shared.stats.overflows.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow);
        }
        state.bytes = state.bytes.saturating_add(len);
        state.frames.push_back(Queued { frame, queued_at });
        drop(state);
        self.shared
            .stats
            .queued_bytes
            .fetch_add(len, Ordering::Relaxed);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Asks the connection to close with `code`; the first request wins.
    pub fn close(&mut self, code: CloseCode) {
        self.shared.lock().close.get_or_insert(code);
        self.shared.wake.notify_one();
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        self.shared.lock().room_gone = true;
        self.shared.wake.notify_one();
    }
}

impl Inbound {
    /// Waits for frames (up to `max` of them) or a close request. Queued frames come first
    /// unless a close was requested.
    pub async fn next(&self, max: usize) -> Next {
        loop {
            if let Some(next) = self.poll(max) {
                return next;
            }
            self.shared.wake.notified().await;
        }
    }

    /// Waits until a close is requested or the room is gone (while a write is in flight).
    pub async fn closed(&self) -> CloseCode {
        loop {
            if let Some(code) = self.close_code() {
                return code;
            }
            self.shared.wake.notified().await;
        }
    }

    /// Takes whatever is queued without waiting (for the farewell flush).
    pub fn drain(&self) -> Vec<Queued> {
        let mut state = self.shared.lock();
        let frames = state.take(usize::MAX);
        self.release(&mut state, &frames);
        frames
    }

    fn poll(&self, max: usize) -> Option<Next> {
        let mut state = self.shared.lock();
        if let Some(code) = state.close {
            return Some(Next::Close(code));
        }
        if !state.frames.is_empty() {
            let frames = state.take(max);
            self.release(&mut state, &frames);
            return Some(Next::Frames(frames));
        }
        state.room_gone.then_some(Next::Close(CloseCode::GoingAway))
    }

    fn close_code(&self) -> Option<CloseCode> {
        let state = self.shared.lock();
        state
            .close
            .or(state.room_gone.then_some(CloseCode::GoingAway))
    }

    fn release(&self, state: &mut State, frames: &[Queued]) {
        let bytes: usize = frames.iter().map(|q| q.frame.len()).sum();
        state.bytes = state.bytes.saturating_sub(bytes);
        self.shared
            .stats
            .queued_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A burst's frames as the WebSocket messages to write, in order. Live `broadcast` frames whose
/// runs follow one another are joined into one message of at most `max_frame` bytes: a
/// receiver that has fallen a little behind catches up in fewer, larger messages instead of
/// paying one per node. A frame not joined with another is written as it is, still shared with
/// every other receiver of it.
pub fn coalesce(burst: Vec<Queued>, max_frame: usize) -> Vec<Bytes> {
    let mut messages = Vec::with_capacity(burst.len());
    let mut runs: Vec<BroadcastRun> = Vec::new();
    let mut len = 0usize;
    for queued in burst {
        let run = queued
            .queued_at
            .and_then(|_| BroadcastRun::parse(&queued.frame));
        let Some(run) = run else {
            messages.extend(join_broadcasts(&std::mem::take(&mut runs)));
            messages.push(queued.frame);
            continue;
        };
        let joined_len = len
            .saturating_add(run.nodes_len())
            .saturating_add(BATCH_OVERHEAD);
        let follows = runs.last().is_some_and(|last| last.is_followed_by(&run));
        if !follows || joined_len > max_frame {
            messages.extend(join_broadcasts(&std::mem::take(&mut runs)));
            len = 0;
        }
        len = len.saturating_add(run.nodes_len());
        runs.push(run);
    }
    messages.extend(join_broadcasts(&runs));
    messages
}

impl Drop for Inbound {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.connection_gone = true;
        // Frames never written still count in the server total; give them back.
        let left = std::mem::take(&mut state.bytes);
        state.frames.clear();
        self.shared
            .stats
            .queued_bytes
            .fetch_sub(left, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Node, RoomId};
    use crate::protocol::{broadcast_frame, encode_node};

    fn wire(path: &str) -> Bytes {
        let room = RoomId::new("q").unwrap();
        encode_node(&Node::child_of(&room, &[], path, vec![1u8; 40]).unwrap())
    }

    fn live(frame: Bytes) -> Queued {
        Queued {
            frame,
            queued_at: Some(Instant::now()),
        }
    }

    #[test]
    fn consecutive_broadcasts_leave_as_one_message() {
        let (a, b, c) = (wire("a"), wire("b"), wire("c"));
        let burst = vec![
            live(broadcast_frame(5, &[&a])),
            live(broadcast_frame(6, &[&b, &c])),
        ];
        assert_eq!(
            coalesce(burst, 1 << 20),
            [broadcast_frame(5, &[&a, &b, &c])]
        );
    }

    #[test]
    fn a_frame_alone_is_written_as_it_is() {
        let frame = broadcast_frame(5, &[&wire("a")]);
        let out = coalesce(vec![live(frame.clone())], 1 << 20);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ptr(), frame.as_ptr(), "shared, not copied");
    }

    #[test]
    fn gaps_other_frames_paced_frames_and_the_frame_limit_keep_messages_apart() {
        let (a, b) = (wire("a"), wire("b"));
        let one = |seq| broadcast_frame(seq, &[&a]);
        let other = Bytes::from_static(&[0x92, 0x07, 0x91, 0x05]);
        let burst = vec![
            live(one(1)),
            live(one(3)), // a gap: nodes 2 were not for this receiver
            live(other.clone()),
            live(one(4)),
            Queued {
                frame: one(5),
                queued_at: None,
            },
        ];
        assert_eq!(
            coalesce(burst, 1 << 20),
            [one(1), one(3), other, one(4), one(5)]
        );
        // Two nodes do not fit a frame limit made for one.
        let limit = broadcast_frame(1, &[&a]).len() + 1;
        let burst = vec![live(one(1)), live(broadcast_frame(2, &[&b]))];
        assert_eq!(coalesce(burst, limit).len(), 2);
    }
}
