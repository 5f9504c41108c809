//! The driver task: one connection at a time to the relay, the link's frames moved in and out,
//! and reconnection with backoff.

use super::*;

pub(super) struct Driver {
    config: ClientConfig,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<Event>,
    /// The subscription change in flight (patterns, add), with its callers.
    subscribing: Vec<(Vec<String>, bool, oneshot::Sender<Vec<String>>)>,
    /// Our nodes that were in flight when the relay closed a connection for a bad frame, with
    /// how many times that happened.
    strikes: HashMap<NodeId, u32>,
}

/// Why a connection ended.
enum Ended {
    /// The application closed the client.
    Stop,
    /// Lost; reconnect.
    Lost(String),
    /// The relay closed the connection with `code`; `in_flight` are our nodes it had not
    /// settled.
    Closed {
        reason: String,
        code: u16,
        in_flight: Vec<NodeId>,
    },
}

/// A connection that lasted this long was healthy: the next failure starts the backoff over.
/// One that ends sooner (a relay that closes it right after the handshake, every time) counts
/// as a failure, so the delay keeps growing.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(10);

/// The failure count after a connection attempt: reset by a connection that stayed up for
/// [`HEALTHY_CONNECTION`], otherwise one more.
fn failures_after(failures: u32, connected_for: Option<Duration>) -> u32 {
    let before = match connected_for {
        Some(lasted) if lasted >= HEALTHY_CONNECTION => 0,
        _ => failures,
    };
    before.saturating_add(1)
}

/// Close codes that blame the frames we sent (protocol/README.md §9.2): sending the same ones
/// again gets the same close.
fn blames_our_frames(code: u16) -> bool {
    matches!(code, 1009 | 4002)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Driver {
    /// A driver for `config` that takes commands from the client handle and sends it events.
    pub(super) fn new(
        config: ClientConfig,
        shared: Arc<Shared>,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::Sender<Event>,
    ) -> Self {
        Self {
            config,
            shared,
            commands,
            events,
            subscribing: Vec::new(),
            strikes: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let url = self.config.room_url();
        let mut failures: u32 = 0;
        // Logged once per change, not on every attempt.
        let mut last_reason: Option<String> = None;
        loop {
            // Relay frames are at most 1 MiB by default; leave room for relays configured higher.
            let ws_config = WebSocketConfig::default()
                .max_message_size(Some(64 << 20))
                .max_frame_size(Some(64 << 20));
            let mut connected_for = None;
            let (reason, kind) =
                match tokio_tungstenite::connect_async_with_config(&url, Some(ws_config), true)
                    .await
                {
                    Ok((socket, _)) => {
                        let connected_at = tokio::time::Instant::now();
                        self.emit(Event::Connected).await;
                        let ended = self.connection(socket).await;
                        connected_for = Some(connected_at.elapsed());
                        // A change the relay did not confirm is made locally: the next
                        // connection reconciles the new subset from scratch.
                        for (patterns, add, waiter) in std::mem::take(&mut self.subscribing) {
                            let _gone = waiter.send(self.subscribe_offline(&patterns, add));
                        }
                        match ended {
                            Ended::Stop => return,
                            Ended::Lost(reason) => (reason, DisconnectKind::Other),
                            Ended::Closed {
                                reason,
                                code,
                                in_flight,
                            } => {
                                if blames_our_frames(code) {
                                    self.strike(&in_flight, &reason);
                                }
                                (reason, DisconnectKind::Closed(code))
                            }
                        }
                    }
                    Err(e) => connect_failure(&e),
                };
            if last_reason.as_ref() != Some(&reason) {
                tracing::debug!(url = %url, %reason, "relay connection failed or ended; retrying with backoff");
                last_reason = Some(reason.clone());
            }
            self.emit(Event::Disconnected { reason, kind }).await;
            failures = failures_after(failures, connected_for);
            let delay = backoff(self.config.backoff_min, self.config.backoff_max, failures);
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            // While offline, pushes simply wait in the replica; only a close ends the wait early.
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    command = self.commands.recv() => match command {
                        None | Some(Command::Close) => return,
                        Some(Command::Push | Command::Presence) => {}
                        Some(Command::Subscribe { patterns, add, done }) => {
                            let _gone = done.send(self.subscribe_offline(&patterns, add));
                        }
                    },
                }
            }
        }
    }

    /// The relay closed a connection for a bad frame while `in_flight` were unsettled: count it
    /// against each of them, and give up on those it happened to [`GIVE_UP_AFTER`] times.
    fn strike(&mut self, in_flight: &[NodeId], reason: &str) {
        for id in in_flight {
            let strikes = self.strikes.entry(*id).or_insert(0);
            *strikes = strikes.saturating_add(1);
            if *strikes < GIVE_UP_AFTER {
                continue;
            }
            self.strikes.remove(id);
            tracing::warn!(%id, %reason, "giving up on a node the relay keeps refusing");
            self.shared.replica().discard(id);
            self.answer(*id, Answer::GaveUp(reason.to_owned()));
        }
    }

    /// Tells whoever pushed `id` how it ended.
    fn answer(&self, id: NodeId, answer: Answer) {
        let waiter = self
            .shared
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        if let Some(waiter) = waiter {
            // The pusher may have stopped waiting; the outcome is in the replica anyway.
            let _gone = waiter.send(answer);
        }
    }

    async fn connection(&mut self, mut socket: Socket) -> Ended {
        let start = Link::start(
            &self.shared.replica(),
            self.config.capabilities,
            self.config.window,
        );
        let (mut link, hello) = match start {
            Ok(started) => started,
            Err(e) => return Ended::Lost(e.to_string()),
        };
        if let Err(e) = socket.send(WsMessage::Binary(hello)).await {
            return Ended::Lost(e.to_string());
        }
        let mut welcomed = false;
        // Silence is measured from the relay's side only: whatever arrives from it (frames,
        // pings, pongs) moves the deadline, and nothing the application does locally does.
        let silent = || Ended::Lost("relay silent for too long".into());
        let idle = tokio::time::sleep(self.config.idle_timeout);
        tokio::pin!(idle);
        loop {
            let mut outgoing: Vec<Bytes> = Vec::new();
            tokio::select! {
                () = &mut idle => return silent(),
                received = socket.next() => {
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + self.config.idle_timeout);
                    let frame = match received {
                        Some(Ok(WsMessage::Binary(frame))) => frame,
                        Some(Ok(WsMessage::Close(Some(close)))) => {
                            let code = u16::from(close.code);
                            return Ended::Closed {
                                reason: format!("closed {code}: {}", close.reason),
                                code,
                                in_flight: link.in_flight().copied().collect(),
                            };
                        }
                        Some(Ok(WsMessage::Close(None))) => return Ended::Lost("closed".into()),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Ended::Lost(e.to_string()),
                        None => return Ended::Lost("connection ended".into()),
                    };
                    let output = link.handle_frame(&mut self.shared.replica(), &frame);
                    let output = match output {
                        Ok(output) => output,
                        Err(e) => return Ended::Lost(e.to_string()),
                    };
                    if !welcomed {
                        welcomed = true;
                        outgoing.extend(self.presence_frame(&link));
                    }
                    outgoing.extend(output.send);
                    self.apply_all(output.events).await;
                }
                command = self.commands.recv() => match command {
                    None | Some(Command::Close) => {
                        // Best effort: the relay may already be gone, or too silent to wait for.
                        let _closing =
                            tokio::time::timeout_at(idle.deadline(), socket.close(None)).await;
                        return Ended::Stop;
                    }
                    Some(Command::Push) => {
                        let pushed = link.push(&mut self.shared.replica());
                        match pushed {
                            Ok(output) => {
                                outgoing.extend(output.send);
                                self.apply_all(output.events).await;
                            }
                            Err(e) => return Ended::Lost(e.to_string()),
                        }
                    }
                    Some(Command::Presence) if welcomed => outgoing.extend(self.presence_frame(&link)),
                    Some(Command::Presence) => {}
                    Some(Command::Subscribe { patterns, add, done }) => {
                        match link.change_subscription(patterns.clone(), add) {
                            Ok(Some(frame)) => {
                                outgoing.push(frame);
                                self.subscribing.push((patterns, add, done));
                            }
                            // Not steady yet (or the relay cannot subscribe): change the
                            // replica's subscription and reconnect with it.
                            Ok(None) => {
                                let _gone = done.send(self.subscribe_offline(&patterns, add));
                                return Ended::Lost("subscription changed; reconnecting".into());
                            }
                            Err(e) => return Ended::Lost(e.to_string()),
                        }
                    }
                },
            }
            for frame in outgoing {
                // A relay that stops reading while it stays silent blocks the write once the
                // socket buffers fill; the deadline still holds.
                match tokio::time::timeout_at(
                    idle.deadline(),
                    socket.send(WsMessage::Binary(frame)),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::Lost(e.to_string()),
                    Err(_) => return silent(),
                }
            }
        }
    }

    /// Applies a subscription change to the replica alone; returns the new subscription.
    fn subscribe_offline(&self, patterns: &[String], add: bool) -> Vec<String> {
        let mut replica = self.shared.replica();
        let limits = PatternLimits::default();
        let parse = |list: &[String]| -> Vec<Pattern> {
            list.iter()
                .filter_map(|p| Pattern::parse(p, &limits).ok())
                .collect()
        };
        let current = replica
            .subscription()
            .cloned()
            .unwrap_or_else(|| PatternSet::new([Pattern::everything()]));
        let changes = parse(patterns);
        let next = if add {
            current.with(&changes)
        } else {
            current.without(&changes)
        };
        let canonical = next.canonical();
        replica.set_subscription(Some(next));
        canonical
    }

    /// The current presence state as a frame, if presence was negotiated and a state is set.
    fn presence_frame(&self, link: &Link) -> Option<Bytes> {
        if !link.capabilities().contains(Capabilities::PRESENCE) {
            return None;
        }
        let state = self
            .shared
            .presence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if state.is_empty() {
            return None;
        }
        Message::Presence(Presence { state }).encode().ok()
    }

    /// Applies a frame's events in order. Arrived nodes go to the application in runs through
    /// one channel reservation each, rather than one per node: a catch-up batch carries
    /// thousands of them.
    async fn apply_all(&mut self, events: Vec<SyncEvent>) {
        let mut nodes = Vec::new();
        for event in events {
            match event {
                SyncEvent::Arrived(node) => {
                    nodes.push(node);
                    if nodes.len() >= NODE_EVENTS_PER_RESERVATION {
                        self.emit_nodes(&mut nodes).await;
                    }
                }
                other => {
                    self.emit_nodes(&mut nodes).await;
                    self.apply(other).await;
                }
            }
        }
        self.emit_nodes(&mut nodes).await;
    }

    /// Sends `nodes` as [`Event::Node`]s, in order, and empties the list.
    async fn emit_nodes(&self, nodes: &mut Vec<Node>) {
        if nodes.is_empty() {
            return;
        }
        match self.events.reserve_many(nodes.len()).await {
            Ok(permits) => {
                for (permit, node) in permits.zip(nodes.drain(..)) {
                    permit.send(Event::Node(node));
                }
            }
            // A dropped receiver means the application does not want events.
            Err(_) => nodes.clear(),
        }
    }

    async fn apply(&mut self, event: SyncEvent) {
        match event {
            SyncEvent::Synced { seq } => {
                self.shared.syncs.send_modify(|n| *n = n.saturating_add(1));
                self.emit(Event::Synced { seq }).await;
            }
            SyncEvent::Arrived(node) => self.emit(Event::Node(node)).await,
            SyncEvent::Settled { id, outcome } => {
                self.strikes.remove(&id);
                self.answer(id, Answer::Outcome(outcome));
            }
            SyncEvent::TooLarge { id, over } => {
                self.strikes.remove(&id);
                self.answer(id, Answer::TooLarge(over));
            }
            SyncEvent::Presence { peer, state } => self.emit(Event::Presence { peer, state }).await,
            SyncEvent::Plan(plan) => self.emit(Event::Reconciling { plan }).await,
            SyncEvent::RelayError(error) => self.emit(Event::RelayError(error)).await,
            SyncEvent::Subscribed { patterns, seq } => {
                for (_, _, waiter) in self.subscribing.drain(..) {
                    let _gone = waiter.send(patterns.clone());
                }
                self.emit(Event::Subscribed { patterns, seq }).await;
            }
        }
    }

    async fn emit(&self, event: Event) {
        // A dropped receiver means the application does not want events.
        let _unwanted = self.events.send(event).await;
    }
}

/// The most node events sent under one reservation of the event channel (capacity 1,024):
/// large enough to make the reservation's cost vanish per node, small enough that the
/// application starts reading long before the channel would have to drain completely.
const NODE_EVENTS_PER_RESERVATION: usize = 64;

/// Exponential backoff with jitter: a random delay in `[d/2, d]`, `d = min · 2^failures` capped.
fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
    let full = min.saturating_mul(factor).min(max);
    let half = full / 2;
    half + full
        .saturating_sub(half)
        .mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_while_connections_end_soon_after_the_handshake() {
        let soon = Some(Duration::from_millis(50));
        let mut failures = 0;
        for expected in 1..=5 {
            failures = failures_after(failures, soon);
            assert_eq!(failures, expected);
        }
        // Refused attempts count the same way.
        assert_eq!(failures_after(failures, None), 6);
        // A connection that stayed up starts the backoff over.
        assert_eq!(failures_after(6, Some(HEALTHY_CONNECTION)), 1);
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        assert!(backoff(min, max, 1) <= Duration::from_millis(200));
        assert!(backoff(min, max, 5) >= Duration::from_millis(1600));
    }
}
