//! One task per room: it owns the room's [`Hub`], applies frames in order, makes new nodes
//! durable through the [`Store`] and only then delivers acks and broadcasts.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::outbound::Outbound;
use crate::node::{Node, RoomId};
use crate::protocol::CloseCode;
use crate::room::{Hub, HubConfig, OrphanLimits, Outbox, Room, SessionId};
use crate::store::{Store, StoreError};

/// Commands from connections to their room task.
#[derive(Debug)]
pub enum RoomCommand {
    /// A connection joined; its frames go to `queue`.
    Connect {
        /// The connection's session id.
        session: SessionId,
        /// Where to queue frames for it.
        queue: Outbound,
    },
    /// A binary frame the connection received.
    Frame {
        /// Who sent it.
        session: SessionId,
        /// The frame.
        bytes: Bytes,
    },
    /// The connection ended.
    Disconnect {
        /// Who left.
        session: SessionId,
    },
}

/// Room-wide settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoomSettings {
    /// Session policy.
    pub hub: HubConfig,
    /// Orphan buffer bounds.
    pub orphans: OrphanLimits,
}

/// Live room tasks by room id. Creating a task happens under the map's entry lock, so
/// concurrent first connects share one task and one load (single-flight).
pub struct Rooms {
    tasks: DashMap<RoomId, mpsc::Sender<RoomCommand>>,
    store: Arc<dyn Store>,
    settings: RoomSettings,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Commands a room task may have waiting before senders feel backpressure.
const ROOM_QUEUE: usize = 1024;

impl Rooms {
    /// An empty registry whose tasks run on `tracker` and stop on `shutdown`.
    pub fn new(
        store: Arc<dyn Store>,
        settings: RoomSettings,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            tasks: DashMap::new(),
            store,
            settings,
            tracker,
            shutdown,
        }
    }

    /// The command channel of `room`'s task, starting the task on first use.
    pub fn get(&self, room: &RoomId) -> mpsc::Sender<RoomCommand> {
        self.tasks
            .entry(room.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(ROOM_QUEUE);
                let task = RoomTask {
                    room: room.clone(),
                    store: self.store.clone(),
                    settings: self.settings,
                    queues: HashMap::new(),
                };
                let span = tracing::info_span!("room", room = %room);
                self.tracker
                    .spawn(task.run(rx, self.shutdown.clone()).instrument(span));
                tx
            })
            .clone()
    }
}

struct RoomTask {
    room: RoomId,
    store: Arc<dyn Store>,
    settings: RoomSettings,
    queues: HashMap<SessionId, Outbound>,
}

impl RoomTask {
    async fn run(mut self, mut commands: mpsc::Receiver<RoomCommand>, shutdown: CancellationToken) {
        // Commands wait in the channel while the room loads, so nobody sees a partial room.
        let Some(mut hub) = self.load().await else {
            return self.refuse_all(commands).await;
        };
        loop {
            let deadline = hub.poll_timeout().map(Instant::from_std);
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    if self.handle(&mut hub, command).await.is_err() {
                        // The in-memory room may now hold nodes that are not durable. Nothing
                        // was said about them; drop every session and start over from the store.
                        for (_, mut queue) in self.queues.drain() {
                            queue.close(CloseCode::Internal);
                        }
                        match self.load().await {
                            Some(reloaded) => hub = reloaded,
                            None => return self.refuse_all(commands).await,
                        }
                    }
                }
                () = sleep_until(deadline) => {
                    let outbox = hub.handle_timeout(Instant::now().into_std());
                    self.deliver(&mut hub, outbox);
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Without its history the room cannot serve anyone; close whoever arrives.
    async fn refuse_all(self, mut commands: mpsc::Receiver<RoomCommand>) {
        while let Some(command) = commands.recv().await {
            if let RoomCommand::Connect { mut queue, .. } = command {
                queue.close(CloseCode::Internal);
            }
        }
    }

    async fn load(&self) -> Option<Hub> {
        let limits = self.settings.hub.session.limits.node;
        match self.store.load(&self.room).await {
            Ok(stored) => {
                let (epoch, nodes) = match stored {
                    Some(stored) => (stored.epoch, stored.nodes),
                    None => (rand::random::<u64>(), Vec::new()),
                };
                let mut room = Room::new(self.room.clone(), epoch, limits, self.settings.orphans);
                for node in nodes {
                    if let Err(reason) = room.restore(node) {
                        tracing::error!(%reason, "stored node failed validation; room not loaded");
                        return None;
                    }
                }
                room.warm_indexes();
                tracing::info!(nodes = room.seq(), epoch, "room loaded");
                Some(Hub::new(room, self.settings.hub))
            }
            Err(e) => {
                tracing::error!(error = %e, "room failed to load");
                None
            }
        }
    }

    /// Applies one command. An error means the store failed and nothing was delivered.
    async fn handle(&mut self, hub: &mut Hub, command: RoomCommand) -> Result<(), StoreError> {
        match command {
            RoomCommand::Connect { session, queue } => {
                hub.connect(session, Instant::now().into_std());
                self.queues.insert(session, queue);
            }
            RoomCommand::Frame { session, bytes } => {
                let before = hub.room().seq();
                let outbox = hub.handle_frame(session, &bytes, Instant::now().into_std());
                let after = hub.room().seq();
                if after > before {
                    // Durable before anyone hears about it.
                    let fresh: Vec<Node> = (before + 1..=after)
                        .filter_map(|seq| hub.room().node_at(seq))
                        .cloned()
                        .collect();
                    if let Err(e) = self
                        .store
                        .append(&self.room, hub.room().epoch(), &fresh)
                        .await
                    {
                        tracing::error!(error = %e, "store append failed; reloading the room");
                        return Err(e);
                    }
                }
                self.deliver(hub, outbox);
            }
            RoomCommand::Disconnect { session } => {
                self.queues.remove(&session);
                let outbox = hub.disconnect(session);
                self.deliver(hub, outbox);
            }
        }
        Ok(())
    }

    /// Queues an outbox's frames; a recipient whose queue overflows is closed with
    /// "resync required" and removed from the hub (which may produce more frames).
    fn deliver(&mut self, hub: &mut Hub, outbox: Outbox) {
        let mut pending = vec![outbox];
        while let Some(outbox) = pending.pop() {
            let mut overflowed = Vec::new();
            let now = Instant::now();
            for outgoing in &outbox.frames {
                let queued_at = (!outgoing.paced).then_some(now);
                for session in hub.recipients(outgoing.to) {
                    let Some(queue) = self.queues.get(&session) else {
                        continue;
                    };
                    let pushed = queue.push(outgoing.frame.clone(), queued_at);
                    if pushed.is_err() && !overflowed.contains(&session) {
                        overflowed.push(session);
                    }
                }
            }
            for (session, code) in outbox.closes {
                if let Some(mut queue) = self.queues.remove(&session) {
                    queue.close(code);
                }
            }
            for session in overflowed {
                if let Some(mut queue) = self.queues.remove(&session) {
                    tracing::info!(
                        session,
                        "outbound queue overflow; closing with resync required"
                    );
                    queue.close(CloseCode::ResyncRequired);
                }
                pending.push(hub.disconnect(session));
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
