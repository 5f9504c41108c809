//! One task per room: it owns the room's [`Hub`], applies frames in order, and runs the writes
//! the hub asks for.
//!
//! **Group commit.** The hub holds back everything that may reveal a node not yet stored, and
//! asks for a write through the newest admitted node ([`Outbox::persist`]); this task writes
//! every admitted node not yet stored in one append, beside the room's other work, and tells the
//! hub when it is done ([`Hub::persisted`]). At most one write is in flight; the nodes admitted
//! meanwhile form the next. A write that keeps failing closes every session of the room with
//! `StoreUnavailable` ([`Hub::persist_failed`]) and reloads the room from the store, which drops
//! the unstored nodes: they were never acked.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::ServerStats;
use super::inbox;
use super::outbound::Outbound;
use crate::node::RoomId;
use crate::protocol::CloseCode;
use crate::room::{Addressed, Hub, HubConfig, OrphanLimits, Outbox, Room, SessionId};
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

/// A connection's handle on its room task.
pub type RoomSender = inbox::Sender<RoomCommand>;

type RoomReceiver = inbox::Receiver<RoomCommand>;

/// Room-wide settings.
#[derive(Clone, Copy, Debug)]
pub struct RoomSettings {
    /// Session policy.
    pub hub: HubConfig,
    /// Orphan buffer bounds.
    pub orphans: OrphanLimits,
    /// How long a room gathers admitted nodes before writing them in one commit.
    pub commit_window: Duration,
    /// A commit starts at once when this many nodes wait.
    pub commit_max_nodes: u64,
    /// A room without sessions is unloaded after this long; the next connection loads it
    /// again from the store.
    pub idle_eviction: Duration,
    /// Bytes of stored node encodings each loaded room keeps in memory; catch-up reads the
    /// rest back from the store.
    pub payload_budget: usize,
}

impl Default for RoomSettings {
    fn default() -> Self {
        Self {
            hub: HubConfig::default(),
            orphans: OrphanLimits::default(),
            // A commit starts as soon as the room has nothing else to do; nodes admitted while
            // one is in flight form the next, so sessions share commits under load without
            // paying a fixed delay when the room is quiet.
            commit_window: Duration::ZERO,
            commit_max_nodes: 4096,
            idle_eviction: Duration::from_secs(60),
            payload_budget: DEFAULT_PAYLOAD_BUDGET,
        }
    }
}

/// Default [`RoomSettings::payload_budget`]: 64 MiB per room keeps the recent history of
/// busy rooms in memory while a room of millions of nodes stays well under a gigabyte.
pub const DEFAULT_PAYLOAD_BUDGET: usize = 64 << 20;

/// Whether the store answered the last call (a load, a commit, or a `/readyz` probe):
/// `/readyz` reports it, and probes the store again while it is failing.
#[derive(Debug)]
pub struct StoreHealth {
    failing: AtomicBool,
}

impl Default for StoreHealth {
    fn default() -> Self {
        Self {
            failing: AtomicBool::new(false),
        }
    }
}

impl StoreHealth {
    /// True after a store call failed, until one succeeds.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Notes how a store call went.
    pub fn record<T>(&self, result: &Result<T, StoreError>) {
        self.failing.store(result.is_err(), Ordering::Relaxed);
    }
}

/// Attempts of one commit (or catch-up read) before the room gives up on it.
const STORE_ATTEMPTS: u32 = 3;

/// Pause before the second attempt; doubled for each further one.
const STORE_BACKOFF: Duration = Duration::from_millis(50);

/// Live room tasks by room id. Creating a task happens under the map's entry lock, so
/// concurrent first connects share one task and one load (single-flight).
pub struct Rooms {
    shared: Arc<Shared>,
    next_task: AtomicU64,
    tracker: TaskTracker,
}

/// What the registry and every room task share. One allocation for the server: every loaded
/// room keeps its task, which holds one handle on this instead of a handle (or a copy) of each.
struct Shared {
    /// Room tasks by room, each with a number that tells a task's own entry from a successor's.
    tasks: DashMap<RoomId, (u64, RoomSender)>,
    store: Arc<dyn Store>,
    settings: RoomSettings,
    /// `settings.hub`, which every room's hub shares.
    hub: Arc<HubConfig>,
    /// `rooms` counts the room tasks; `store` is told how every store call went.
    stats: Arc<ServerStats>,
    shutdown: CancellationToken,
}

/// Most commands a room reads after a commit is wanted before it starts the commit anyway:
/// waiting frames usually bring more nodes for it, but a room that is never idle must commit.
const COMMIT_DEFER_LIMIT: u32 = 64;

/// Commands a room task may have waiting before senders feel backpressure.
const ROOM_QUEUE: usize = 1024;

impl Rooms {
    /// An empty registry whose tasks run on `tracker` and stop on `shutdown`.
    pub fn new(
        store: Arc<dyn Store>,
        settings: RoomSettings,
        stats: Arc<ServerStats>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                tasks: DashMap::new(),
                store,
                hub: Arc::new(settings.hub),
                settings,
                stats,
                shutdown,
            }),
            next_task: AtomicU64::new(1),
            tracker,
        }
    }

    /// The command channel of `room`'s task, starting the task on first use.
    pub fn get(&self, room: &RoomId) -> RoomSender {
        self.shared
            .tasks
            .entry(room.clone())
            .or_insert_with(|| {
                let (tx, rx) = inbox::channel(ROOM_QUEUE);
                let number = self.next_task.fetch_add(1, Ordering::Relaxed);
                self.shared.stats.rooms.fetch_add(1, Ordering::Relaxed);
                // Boxed: the task's future holds it, and would otherwise also keep the copies
                // moved into `run` (async fn arguments stay in the future).
                let task = Box::new(RoomTask {
                    room: room.clone(),
                    number,
                    shared: self.shared.clone(),
                    commands: rx,
                    queues: HashMap::new(),
                    commit_at: None,
                    commit: None,
                    commit_when_idle: false,
                    gather: None,
                    to_fetch: Vec::new(),
                });
                let span = tracing::info_span!("room", room = %room);
                self.tracker.spawn(task.run().instrument(span));
                (number, tx)
            })
            .1
            .clone()
    }
}

struct RoomTask {
    room: RoomId,
    number: u64,
    /// Shared, not copied: every loaded room keeps its task, so the task stays small.
    shared: Arc<Shared>,
    /// What connections send. Here rather than an argument of [`run`](Self::run): its future
    /// would keep an argument twice (as passed and moved into the body).
    commands: RoomReceiver,
    queues: HashMap<SessionId, Outbound>,
    /// When the write the hub asked for is due to start (with a commit window).
    commit_at: Option<Instant>,
    /// The commit in flight, if any: it runs beside the room, which keeps serving.
    commit: Option<BoxFuture<'static, Committed>>,
    /// A commit is wanted as soon as no command is waiting (no commit window).
    commit_when_idle: bool,
    /// The next commit waits for the writers the last one acked (`gather_time`).
    gather: Option<Gather>,
    /// Reads of stored encodings the hub asked for, not started yet.
    to_fetch: Vec<Vec<u64>>,
}

/// [`ServerStats::rooms`] counts a room until its task's state is gone, whichever way
/// [`run`](RoomTask::run) ends. Counted here rather than by an async block around `run`: that
/// would keep what it moves into `run` a second time, in every loaded room's future.
impl Drop for RoomTask {
    fn drop(&mut self) {
        self.shared.stats.rooms.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A finished read of stored encodings: the arrival numbers asked for and the records.
type Fetched = (Vec<u64>, Result<Vec<Bytes>, StoreError>);

/// A finished commit: the arrival number it stored through and how long the write took, or
/// why it failed.
type Committed = (u64, Duration, Result<(), StoreError>);

/// A room's timers.
struct Deadlines {
    /// The hub's ([`Hub::poll_timeout`]).
    hub: Option<Instant>,
    /// The write the hub asked for is due to start (none while one is in flight).
    commit: Option<Instant>,
    /// The idle room is unloaded.
    evict: Option<Instant>,
}

impl Deadlines {
    /// The first of them.
    fn earliest(&self) -> Option<Instant> {
        [self.hub, self.commit, self.evict]
            .into_iter()
            .flatten()
            .min()
    }
}

/// What a room does after handling a wakeup.
enum Then {
    /// Waits for the next one.
    Serve,
    /// Loads the room again: a commit failed for good.
    Reload,
    /// Writes what is left and stops: the server is shutting down.
    Drain,
}

impl RoomTask {
    async fn run(mut self: Box<Self>) {
        // Commands wait in the channel while the room loads, so nobody sees a partial room.
        // Loading and retiring are boxed, here and below: inline, their state would take room
        // in this future, which every room carries for as long as it is loaded.
        let Some(mut hub) = Box::pin(self.load()).await else {
            return Box::pin(self.retire()).await;
        };
        let mut idle_since: Option<Instant> = None;
        // Reads of stored encodings for catch-up, running beside the room; made on the first.
        let mut fetches: Option<FuturesUnordered<BoxFuture<'static, Fetched>>> = None;
        // Commands read since a commit was wanted (see `COMMIT_DEFER_LIMIT`).
        let mut deferred = 0u32;
        loop {
            for seqs in std::mem::take(&mut self.to_fetch) {
                let fetch = self.fetch(seqs);
                fetches
                    .get_or_insert_with(FuturesUnordered::new)
                    .push(fetch);
            }
            // Once as many nodes wait as the last commit held, its writers are back: no
            // reason to wait out the rest of the gathering time.
            if let Some(gather) = self.gather
                && self.commit.is_none()
                && self.commit_at.is_some()
                && hub.room().seq().saturating_sub(hub.durable_seq()) >= gather.nodes
            {
                self.gather = None;
                self.commit_at = None;
                self.commit = self.start_commit(&hub);
            }
            // Frames already waiting are read first, so the nodes they bring share the commit;
            // but only so many, or a busy room would never commit.
            if self.commit_when_idle
                && self.commit.is_none()
                && (self.commands.is_empty() || deferred >= COMMIT_DEFER_LIMIT)
            {
                self.commit_when_idle = false;
                deferred = 0;
                self.commit = self.start_commit(&hub);
            }
            let idle = hub.session_count() == 0
                && self.commit.is_none()
                && hub.room().seq() == hub.durable_seq();
            idle_since = if idle {
                Some(idle_since.unwrap_or_else(Instant::now))
            } else {
                None
            };
            // One timer for the three deadlines (a timer is ~140 bytes of this future); one of
            // them is served per wakeup, the others on the next turn if they are due too.
            let wake = self.deadlines(&hub, idle_since).earliest();
            let mut then = Then::Serve;
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(command) = command else { return };
                    if self.commit_when_idle {
                        deferred += 1;
                    }
                    self.handle(&mut hub, command);
                }
                Some((seqs, records)) = next_fetched(&mut fetches) => {
                    if fetches.as_ref().is_some_and(FuturesUnordered::is_empty) {
                        fetches = None;
                    }
                    self.shared.stats.store.record(&records);
                    let outbox = hub.fetched(&seqs, records.map_err(|e| e.to_string()));
                    self.emit(&mut hub, outbox);
                }
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    // The same deadlines as before the wait (nothing they depend on changes
                    // during it), made again rather than kept in this future across it.
                    let due = self.deadlines(&hub, idle_since);
                    if due.hub.is_some_and(|at| at <= now) {
                        let outbox = hub.handle_timeout(now.into_std());
                        self.emit(&mut hub, outbox);
                    } else if due.commit.is_some_and(|at| at <= now) {
                        self.commit_at = None;
                        self.commit = self.start_commit(&hub);
                    } else if due.evict.is_some_and(|at| at <= now) {
                        if self.evict() {
                            self.shared.store.release(&self.room);
                            tracing::info!("idle room unloaded");
                            return;
                        }
                        // A connection holds a handle and is about to join: stay.
                        idle_since = None;
                    }
                }
                Some((through, took, result)) = maybe(&mut self.commit) => {
                    self.commit = None;
                    match result {
                        Ok(()) => {
                            // A commit of several writers' nodes: their next packs are a round
                            // trip away, and a commit started before they arrive would leave
                            // them for the one after, so that writers take turns in two groups.
                            // Its nodes and those that came during it: as many as are writing.
                            let nodes = hub.room().seq().saturating_sub(hub.durable_seq());
                            self.gather = gather_time(took)
                                .filter(|_| {
                                    nodes > 1 && self.shared.settings.commit_window.is_zero()
                                })
                                .map(|wait| Gather {
                                    until: Instant::now() + wait,
                                    nodes,
                                });
                            let outbox = hub.persisted(through);
                            self.emit(&mut hub, outbox);
                        }
                        Err(e) => {
                            tracing::error!(error = %e.report(), "commit failed; closing the room's sessions");
                            let outbox = hub.persist_failed();
                            self.deliver(&mut hub, outbox);
                            self.abandon_sessions();
                            // Reads for the sessions just closed are of no use to anyone now.
                            fetches = None;
                            then = Then::Reload;
                        }
                    }
                }
                () = self.shared.shutdown.cancelled() => then = Then::Drain,
            }
            // Out here, so that nothing of the select (its output included) waits beside the
            // load or the drain.
            match then {
                Then::Serve => {}
                Then::Reload => match Box::pin(self.load()).await {
                    Some(reloaded) => hub = reloaded,
                    None => break,
                },
                Then::Drain => {
                    // Whatever gets stored may still be delivered; the rest was never acked.
                    let in_flight = self.commit.take();
                    Box::pin(self.drain_commits(&mut hub, in_flight)).await;
                    return;
                }
            }
        }
        Box::pin(self.retire()).await;
    }

    /// When the room must wake up next for each of its timers, with the room idle since
    /// `idle_since`.
    fn deadlines(&self, hub: &Hub, idle_since: Option<Instant>) -> Deadlines {
        Deadlines {
            hub: hub.poll_timeout().map(Instant::from_std),
            commit: if self.commit.is_none() {
                self.commit_at
            } else {
                None
            },
            evict: idle_since.map(|since| since + self.shared.settings.idle_eviction),
        }
    }

    /// At shutdown: finishes the commit in flight and writes what is left, delivering what
    /// waited for them; if a write fails, closes every session (nothing unstored was acked).
    async fn drain_commits(
        &mut self,
        hub: &mut Hub,
        mut in_flight: Option<BoxFuture<'static, Committed>>,
    ) {
        loop {
            let commit = match in_flight.take() {
                Some(commit) => commit,
                None => match self.start_commit(hub) {
                    Some(commit) => commit,
                    None => return,
                },
            };
            match commit.await {
                (through, _, Ok(())) => {
                    let outbox = hub.persisted(through);
                    self.emit(hub, outbox);
                }
                (_, _, Err(e)) => {
                    tracing::error!(error = %e.report(), "commit failed at shutdown");
                    let outbox = hub.persist_failed();
                    self.deliver(hub, outbox);
                    self.abandon_sessions();
                    return;
                }
            }
        }
    }

    /// Leaves the registry if no connection holds a handle on this task. The check and the
    /// removal happen under the registry's lock, which is also where connections get their
    /// handle, so no connection can reach an unloaded room; the next one starts a new task.
    fn evict(&self) -> bool {
        self.shared
            .tasks
            .remove_if(&self.room, |_, (number, sender)| {
                *number == self.number && sender.strong_count() == 1
            })
            .is_some()
    }

    /// Without its history the room cannot serve anyone: leave the registry, so the next
    /// connection starts a fresh task that tries to load again, and turn away whoever is
    /// already queued.
    async fn retire(mut self: Box<Self>) {
        self.shared
            .tasks
            .remove_if(&self.room, |_, (number, _)| *number == self.number);
        self.commands.close();
        while let Some(command) = self.commands.recv().await {
            if let RoomCommand::Connect { mut queue, .. } = command {
                queue.close(CloseCode::StoreUnavailable);
            }
        }
    }

    async fn load(&mut self) -> Option<Hub> {
        match self.read().await {
            Ok(room) => {
                tracing::info!(nodes = room.seq(), epoch = room.epoch(), "room loaded");
                Some(Hub::new(room, self.shared.hub.clone()))
            }
            Err(e) => {
                tracing::error!(error = %e.report(), "room failed to load");
                // A load that works says nothing about writes: only failures are noted.
                self.shared.stats.store.record::<()>(&Err(e));
                None
            }
        }
    }

    /// Reads the stored room pack by pack, restoring each node (fully checked) as it comes.
    // `&mut`, though it only reads: the task holds a commit future, which is `Send` but not
    // `Sync`, so a shared borrow of the task may not live across an await.
    async fn read(&mut self) -> Result<Room, StoreError> {
        let settings = &self.shared.settings;
        let limits = settings.hub.session.limits.node;
        let Some(mut reader) = self.shared.store.read(&self.room).await? else {
            let epoch = rand::random::<u64>();
            return Ok(
                Room::new(self.room.clone(), epoch, limits, settings.orphans)
                    .with_payload_budget(settings.payload_budget),
            );
        };
        let mut room = Room::new(self.room.clone(), reader.epoch, limits, settings.orphans)
            .with_payload_budget(settings.payload_budget);
        while let Some(batch) = reader.nodes.next().await {
            for stored in batch? {
                let id = stored.node.id;
                room.restore_encoded(stored.node, stored.wire)
                    .map_err(|reason| StoreError::InvalidNode { id, reason })?;
            }
        }
        room.warm_indexes();
        Ok(room)
    }

    /// Applies one command.
    fn handle(&mut self, hub: &mut Hub, command: RoomCommand) {
        match command {
            RoomCommand::Connect { session, queue } => {
                hub.connect(session, Instant::now().into_std());
                self.queues.insert(session, queue);
            }
            RoomCommand::Frame { session, bytes } => {
                let outbox = hub.handle_frame(session, &bytes, Instant::now().into_std());
                self.emit(hub, outbox);
            }
            RoomCommand::Disconnect { session } => {
                self.queues.remove(&session);
                let outbox = hub.disconnect(session);
                self.emit(hub, outbox);
            }
        }
    }

    /// Delivers an outbox (the hub has held back what must wait for a write), starts the
    /// reads it asks for, and schedules the write it asks for.
    fn emit(&mut self, hub: &mut Hub, mut outbox: Outbox) {
        self.to_fetch.append(&mut outbox.fetches);
        if outbox.persist.is_some() && self.commit.is_none() {
            let waiting = hub.room().seq().saturating_sub(hub.durable_seq());
            if waiting >= self.shared.settings.commit_max_nodes {
                self.commit_at = None;
                self.commit = self.start_commit(hub);
            } else if self.shared.settings.commit_window.is_zero() {
                match self.gather.filter(|g| g.until > Instant::now()) {
                    // A slow commit of several writers just ended: wait for their nodes.
                    Some(gather) => self.commit_at = Some(gather.until),
                    // Started once the room has read what is waiting for it (see `run`), not
                    // through a timer: tokio rounds a timer up to the next millisecond, which
                    // would be most of an idle room's pack → ack time.
                    None => self.commit_when_idle = true,
                }
            } else {
                let due = Instant::now() + self.shared.settings.commit_window;
                self.commit_at = Some(self.commit_at.map_or(due, |at| at.min(due)));
            }
        }
        self.deliver(hub, outbox);
    }

    /// A write of every admitted node not yet stored (retrying a failing store a few times),
    /// as a future that runs beside the room; `None` if everything is stored.
    fn start_commit(&mut self, hub: &Hub) -> Option<BoxFuture<'static, Committed>> {
        let from = hub.durable_seq().saturating_add(1);
        let to = hub.room().seq();
        if to < from {
            return None;
        }
        // Unstored nodes are always resident: only stored ones give up their encoding.
        let fresh: Option<Vec<Bytes>> = (from..=to)
            .map(|seq| hub.room().wire_at(seq).cloned())
            .collect();
        let (shared, room) = (self.shared.clone(), self.room.clone());
        let epoch = hub.room().epoch();
        Some(Box::pin(async move {
            let started = Instant::now();
            let Some(fresh) = fresh else {
                let lost = StoreError::Bug("an unstored node lost its encoding");
                return (to, started.elapsed(), Err(lost));
            };
            let fresh = fresh.as_slice();
            let (shared, room) = (&shared, &room);
            let result = with_retries("commit", || async move {
                let result = shared.store.append(room, epoch, fresh).await;
                shared.stats.store.record(&result);
                result
            })
            .await;
            (to, started.elapsed(), result)
        }))
    }

    /// Reads stored encodings back (retrying a failing store a few times), beside the room.
    fn fetch(&self, seqs: Vec<u64>) -> BoxFuture<'static, Fetched> {
        let shared = self.shared.clone();
        let room = self.room.clone();
        Box::pin(async move {
            let result = with_retries("catch-up read", || shared.store.fetch(&room, &seqs)).await;
            (seqs, result)
        })
    }

    /// The store failed: the hub has told and closed its sessions; close whatever queue is
    /// left (a connection the hub has not heard of yet) the same way.
    fn abandon_sessions(&mut self) {
        self.commit_at = None;
        self.commit_when_idle = false;
        for (_, mut queue) in self.queues.drain() {
            queue.close(CloseCode::StoreUnavailable);
        }
    }

    /// Queues an outbox's frames; a recipient whose queue overflows is closed with
    /// "resync required" and removed from the hub (which may produce more frames).
    fn deliver(&mut self, hub: &mut Hub, outbox: Outbox) {
        let delivery = hub.resolve(outbox);
        let mut overflowed = Vec::new();
        let now = Instant::now();
        for Addressed { to, frame, paced } in delivery.frames {
            let queued_at = (!paced).then_some(now);
            for &session in to.iter() {
                let Some(queue) = self.queues.get(&session) else {
                    continue;
                };
                let pushed = queue.push(frame.clone(), queued_at);
                if pushed.is_err() && !overflowed.contains(&session) {
                    overflowed.push(session);
                }
            }
        }
        for (session, code) in delivery.closes {
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
            let outbox = hub.disconnect(session);
            self.emit(hub, outbox);
        }
    }
}

/// Runs a store call, trying again after backend failures (`STORE_ATTEMPTS` in all, the
/// pause doubling from `STORE_BACKOFF`).
async fn with_retries<T, F>(what: &str, mut call: impl FnMut() -> F) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut pause = STORE_BACKOFF;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.is_transient() && attempt < STORE_ATTEMPTS => {
                tracing::warn!(error = %e.report(), attempt, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The next finished read; never, while none runs.
async fn next_fetched(
    fetches: &mut Option<FuturesUnordered<BoxFuture<'static, Fetched>>>,
) -> Option<Fetched> {
    match fetches {
        Some(fetches) if !fetches.is_empty() => fetches.next().await,
        _ => std::future::pending().await,
    }
}

/// The commit's result once it finishes; never, if there is none.
/// A commit that waits for the writers the previous one acked.
#[derive(Clone, Copy, Debug)]
struct Gather {
    /// It starts then at the latest.
    until: Instant,
    /// It starts as soon as this many nodes wait: the previous commit's and those that came
    /// while it ran.
    nodes: u64,
}

/// How long a commit that follows one of `last` may wait for the nodes of the writers that
/// one acked: a quarter of it, at most `MAX_GATHER`, so the writers share one commit instead
/// of taking turns in two. The wait ends early once they are back (see `RoomTask::run`).
/// Nothing for a commit under 1 ms: a timer rounds up to the next millisecond, more than
/// such a commit takes.
fn gather_time(last: Duration) -> Option<Duration> {
    (last >= Duration::from_millis(1)).then(|| (last / 4).min(MAX_GATHER))
}

/// The longest a commit waits for the writers the previous one acked.
const MAX_GATHER: Duration = Duration::from_millis(10);

async fn maybe(commit: &mut Option<BoxFuture<'static, Committed>>) -> Option<Committed> {
    match commit {
        Some(commit) => Some(commit.await),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
