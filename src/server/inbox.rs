//! The bounded command queue in front of a room task.
//!
//! Used instead of `tokio::sync::mpsc` for memory: tokio's channel allocates a block of 32
//! slots and a cache-padded header up front (~2 KiB for [`RoomCommand`](super::rooms::RoomCommand)),
//! which every room pays even when idle. Here a room pays a small shared header, and the queue
//! grows with what is waiting. Backpressure is the same: a sender waits for one of `capacity`
//! permits. The mutex is held only to push or pop, never across an await.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, Semaphore};

struct Queue<T> {
    items: VecDeque<T>,
    /// The receiver closed or dropped its end: nothing more is accepted.
    closed: bool,
}

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    /// Wakes the receiver: an item arrived, or the last sender left.
    wake: Notify,
    /// One permit per free slot.
    slots: Semaphore,
    /// Live [`Sender`]s.
    senders: AtomicUsize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending end; clone it for every producer.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving end, owned by the room task.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// The receiver is gone or closed; the value was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed<T>(pub T);

/// A queue of at most `capacity` waiting items.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            closed: false,
        }),
        wake: Notify::new(),
        slots: Semaphore::new(capacity),
        senders: AtomicUsize::new(1),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Queues `value`, waiting while the queue is full. Fails once the receiver is closed.
    pub async fn send(&self, value: T) -> Result<(), Closed<T>> {
        let Ok(permit) = self.shared.slots.acquire().await else {
            return Err(Closed(value));
        };
        let mut queue = self.shared.lock();
        if queue.closed {
            return Err(Closed(value));
        }
        // The receiver gives the slot back when it takes the item.
        permit.forget();
        queue.items.push_back(value);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Number of live senders, this one included.
    pub fn strong_count(&self) -> usize {
        self.shared.senders.load(Ordering::Acquire)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.wake.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once the queue is empty and closed or without senders.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut queue = self.shared.lock();
                if let Some(value) = queue.items.pop_front() {
                    if queue.items.is_empty() {
                        // An idle room keeps no slots (four are ~200 bytes): the next command
                        // costs one small allocation instead.
                        queue.items = VecDeque::new();
                    }
                    drop(queue);
                    self.shared.slots.add_permits(1);
                    return Some(value);
                }
                if queue.closed || self.shared.senders.load(Ordering::Acquire) == 0 {
                    return None;
                }
            }
            // A send or the last sender's drop between the unlock and here leaves a permit,
            // so this cannot miss it.
            self.shared.wake.notified().await;
        }
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.shared.lock().items.is_empty()
    }

    /// Refuses further sends; what is already queued can still be received.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
        self.shared.slots.close();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn delivers_in_order_and_ends_with_the_last_sender() {
        let (tx, mut rx) = channel(4);
        let other = tx.clone();
        assert_eq!(tx.strong_count(), 2);
        tx.send(1).await.unwrap();
        other.send(2).await.unwrap();
        drop(other);
        assert_eq!(tx.strong_count(), 1);
        assert!(!rx.is_empty());
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert!(rx.is_empty());
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_full_queue_holds_senders_back() {
        let (tx, mut rx) = channel(2);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(20), tx.send(3)).await;
        assert!(blocked.is_err(), "a third send must wait");
        let waiting = tokio::spawn(async move { tx.send(3).await });
        assert_eq!(rx.recv().await, Some(1));
        waiting.await.unwrap().unwrap();
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn closing_refuses_sends_but_drains_what_waits() {
        let (tx, mut rx) = channel(4);
        tx.send(1).await.unwrap();
        rx.close();
        assert_eq!(tx.send(2).await, Err(Closed(2)));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, None);
        drop(rx);
        assert_eq!(tx.send(3).await, Err(Closed(3)));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_send_and_for_the_last_drop() {
        let (tx, mut rx) = channel::<u32>(4);
        let receiver = tokio::spawn(async move { (rx.recv().await, rx.recv().await) });
        tokio::task::yield_now().await;
        tx.send(7).await.unwrap();
        drop(tx);
        assert_eq!(receiver.await.unwrap(), (Some(7), None));
    }
}
