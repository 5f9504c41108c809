//! The byte-bounded queue between a room task and one connection's writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::protocol::CloseCode;

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

/// The room task's end: push frames, or close the connection.
#[derive(Debug)]
pub struct Outbound {
    frames: mpsc::UnboundedSender<Queued>,
    close: Option<oneshot::Sender<CloseCode>>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    stats: Arc<QueueStats>,
}

/// The connection's end.
#[derive(Debug)]
pub struct Inbound {
    /// Frames to write, in order.
    pub frames: mpsc::UnboundedReceiver<Queued>,
    /// Fires when the room wants the connection closed (overflow, protocol violation...).
    /// Closed without a value when the room task is gone.
    pub close: oneshot::Receiver<CloseCode>,
    queued: Arc<AtomicUsize>,
    stats: Arc<QueueStats>,
}

/// A push did not fit: the queue would exceed its byte limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Creates a queue holding at most `limit` bytes of frames.
pub fn queue(limit: usize, stats: Arc<QueueStats>) -> (Outbound, Inbound) {
    let (frames_tx, frames_rx) = mpsc::unbounded_channel();
    let (close_tx, close_rx) = oneshot::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let outbound = Outbound {
        frames: frames_tx,
        close: Some(close_tx),
        queued: queued.clone(),
        limit,
        stats: stats.clone(),
    };
    let inbound = Inbound {
        frames: frames_rx,
        close: close_rx,
        queued,
        stats,
    };
    (outbound, inbound)
}

impl Outbound {
    /// Queues a frame unless that would exceed the byte limit. Never blocks: the room task must
    /// not wait for one slow reader.
    pub fn push(&self, frame: Bytes, queued_at: Option<Instant>) -> Result<(), Overflow> {
        let len = frame.len();
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) > self.limit {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow);
        }
        if self.frames.send(Queued { frame, queued_at }).is_err() {
            // The connection is gone; its task already reported the disconnect.
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Ok(());
        }
        self.stats.queued_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Asks the connection to close with `code` once.
    pub fn close(&mut self, code: CloseCode) {
        if let Some(close) = self.close.take() {
            // An error means the connection already ended, which is what we want anyway.
            let _already_gone = close.send(code);
        }
    }
}

impl Inbound {
    /// Marks a received frame as leaving the queue (written or dropped).
    pub fn release(&self, frame: &Bytes) {
        self.queued.fetch_sub(frame.len(), Ordering::AcqRel);
        self.stats
            .queued_bytes
            .fetch_sub(frame.len(), Ordering::Relaxed);
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        // Frames never written still count in the server total; give them back.
        let left = self.queued.swap(0, Ordering::AcqRel);
        self.stats.queued_bytes.fetch_sub(left, Ordering::Relaxed);
    }
}
