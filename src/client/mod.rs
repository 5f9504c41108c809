//! The Rust client: a local [`Replica`] kept in sync with a room through the relay.
//!
//! [`Client::start`] spawns a driver task that connects, reconciles, pushes local nodes and
//! applies arriving ones, and reconnects with jittered exponential backoff when the connection
//! drops. Everything protocol-related happens in the pure [`Link`]; this module only moves
//! bytes, keeps time and wakes waiters.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use weft::client::{Client, ClientConfig};
//! let config = ClientConfig::new("ws://127.0.0.1:7788", "notes".parse()?);
//! let (client, mut events) = Client::start(config)?;
//! client.wait_synced().await?;
//! let id = client.push("todo/1", "buy milk").await?;
//! println!("acked {id}");
//! while let Some(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```

#![allow(clippy::disallowed_methods)] // The driver owns the clock and the jitter RNG.

mod driver;

use driver::Driver;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::node::{Node, NodeId, Rejection, RoomId};
use crate::pattern::{Pattern, PatternError, PatternLimits, PatternSet};
use crate::protocol::{Capabilities, ErrorMessage, Message, Outcome, Plan, Presence};
use crate::replica::{
    InsertError, Link, OverLimit, Replica, ReplicaFileError, SizeLimit, SyncEvent,
};

/// How a client connects.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Relay base URL, e.g. `ws://127.0.0.1:7788`.
    pub server: String,
    /// The room.
    pub room: RoomId,
    /// Capabilities to offer.
    pub capabilities: Capabilities,
    /// Catch-up credit window in bytes.
    pub window: u64,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Replica file: loaded at start if it exists, written by [`Client::save`] and on close.
    pub replica_file: Option<PathBuf>,
    /// Silence from the relay after which the connection is presumed dead and re-established.
    /// The relay pings every 15 s by default, so a live connection is never this quiet.
    pub idle_timeout: Duration,
    /// Path patterns to copy (protocol/README.md §3.5, §7.5); `None` copies the whole room.
    /// A replica file made under another subscription keeps its nodes but reconciles again.
    pub subscribe: Option<Vec<String>>,
}

impl ClientConfig {
    /// Defaults for `server` and `room`.
    pub fn new(server: impl Into<String>, room: RoomId) -> Self {
        Self {
            server: server.into(),
            room,
            capabilities: Capabilities::SUPPORTED,
            window: 2 * 1024 * 1024,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            replica_file: None,
            idle_timeout: Duration::from_secs(60),
            subscribe: None,
        }
    }

    /// The room's WebSocket URL: `server` + `/v1/rooms/{room}`.
    pub fn room_url(&self) -> String {
        format!(
            "{}/v1/rooms/{}",
            self.server.trim_end_matches('/'),
            self.room
        )
    }
}

/// What happens on the client, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection to the relay is open.
    Connected,
    /// The relay chose how this connection reconciles (protocol/README.md §5.1); a sketch that
    /// falls back to refinement reports `Refine` afterwards.
    Reconciling {
        /// The plan.
        plan: Plan,
    },
    /// The replica holds everything the relay held at arrival number `seq`.
    Synced {
        /// Relay arrival number.
        seq: u64,
    },
    /// A node from another peer (or from catch-up) is now in the replica.
    Node(Node),
    /// A peer's presence changed; empty state means cleared or left.
    Presence {
        /// The peer.
        peer: u64,
        /// Its state.
        state: Bytes,
    },
    /// The relay complained about one of our frames.
    RelayError(ErrorMessage),
    /// A subscription change is complete: the replica copies `patterns` and holds every
    /// matching node up to `seq`.
    Subscribed {
        /// The whole subscription, canonical and sorted.
        patterns: Vec<String>,
        /// Relay arrival number.
        seq: u64,
    },
    /// The connection dropped, or a connection attempt failed; the client reconnects by itself.
    Disconnected {
        /// Why, for people.
        reason: String,
        /// Why, for programs.
        kind: DisconnectKind,
    },
}

/// What ended a connection or a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectKind {
    /// Nothing accepted the TCP connection at the relay's address.
    Refused,
    /// The server answered the WebSocket upgrade with this HTTP status instead (404: no relay
    /// route at that URL; 503: the relay is at its connection limit).
    Http(u16),
    /// This build cannot connect to the URL (e.g. `wss://` without TLS support).
    Unsupported,
    /// The relay closed the connection with this close code (protocol/README.md §9.2).
    Closed(u16),
    /// Anything else: the network, a timeout, a broken frame.
    Other,
}

impl DisconnectKind {
    /// Whether the attempt failed on how the client is set up, or on whether a relay runs
    /// there, rather than on a connection that worked: a refused connection, an HTTP status,
    /// an unusable URL. A one-shot tool should stop and say so; a long-running client keeps
    /// retrying, since the relay may come up or be fixed.
    pub fn is_setup_error(self) -> bool {
        matches!(self, Self::Refused | Self::Http(_) | Self::Unsupported)
    }
}

/// A failed connection attempt, as an event's reason and kind.
fn connect_failure(error: &tokio_tungstenite::tungstenite::Error) -> (String, DisconnectKind) {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::UrlError;
    match error {
        Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            ("connection refused".into(), DisconnectKind::Refused)
        }
        Error::Http(response) => {
            let status = response.status();
            let name = status.canonical_reason().unwrap_or("");
            (
                format!("HTTP {} {name}", status.as_u16())
                    .trim_end()
                    .to_owned(),
                DisconnectKind::Http(status.as_u16()),
            )
        }
        Error::Url(UrlError::TlsFeatureNotEnabled) => (
            "wss:// needs TLS, which this build of weft does not include; use a ws:// URL".into(),
            DisconnectKind::Unsupported,
        ),
        Error::Url(e) => (e.to_string(), DisconnectKind::Unsupported),
        other => (other.to_string(), DisconnectKind::Other),
    }
}

/// The client could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The replica file could not be read.
    #[error("cannot read replica file: {0}")]
    Io(std::io::Error),
    /// The replica file is not valid.
    #[error(transparent)]
    File(#[from] ReplicaFileError),
    /// A subscription pattern is invalid.
    #[error(transparent)]
    Pattern(#[from] SubscribeError),
    /// `server` is not a WebSocket URL.
    #[error("relay URL {server:?} {problem}")]
    BadServer {
        /// The URL as given.
        server: String,
        /// What is wrong with it, and what to write instead.
        problem: String,
    },
    /// The replica file belongs to another room.
    #[error("replica file is for room {found}, not {wanted}")]
    WrongRoom {
        /// Room in the file.
        found: RoomId,
        /// Room configured.
        wanted: RoomId,
    },
}

/// A push did not end in an ack.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The node could not be created locally.
    #[error("cannot create node: {0}")]
    Local(InsertError),
    /// The relay refused the node. A final refusal removed it from the replica; after a
    /// transient one ([`Rejection::is_transient`]: its parents did not reach the relay in
    /// time) it stays and is pushed again on the next connection.
    #[error("relay rejected the node: {0}")]
    Rejected(Rejection),
    /// The node is over a size limit the relay announced, so it was never sent: no relay with
    /// these limits can accept it. It was removed from the replica, with its descendants.
    #[error("{}", too_large(.0))]
    TooLarge(OverLimit),
    /// The relay closed the connection every time the node was sent ([`GIVE_UP_AFTER`] times),
    /// with a close code that says the frame itself is at fault (1009 too big, 4002 protocol
    /// violation). It was removed from the replica, with its descendants.
    #[error(
        "the relay closed the connection each of the {GIVE_UP_AFTER} times this node was sent ({reason}); giving up on it"
    )]
    GaveUp {
        /// The last close, e.g. `closed 1009: message too big`.
        reason: String,
    },
    /// The client shut down before the relay answered.
    #[error("client closed before the node was acked")]
    Closed,
}

/// How many closes for the same node's frame make the client give up on that node.
pub const GIVE_UP_AFTER: u32 = 3;

/// The message of [`PushError::TooLarge`].
fn too_large(over: &OverLimit) -> String {
    // A measured size reads best rounded; a configured limit is usually a whole number of
    // some unit, and then it is shown exactly.
    let size = bytesize::ByteSize(over.size).display().iec().to_string();
    let max = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        .into_iter()
        .find(|(unit, _)| over.max >= *unit && over.max % unit == 0)
        .map_or_else(
            || bytesize::ByteSize(over.max).display().iec().to_string(),
            |(unit, name)| format!("{} {name}", over.max / unit),
        );
    match over.limit {
        SizeLimit::Payload => format!(
            "payload is {size}; this relay accepts at most {max} per node — keep large files \
             out of the room and push a reference to them (blobs are not in protocol v1 yet)"
        ),
        SizeLimit::Frame => format!(
            "node is {size} as a frame; this relay accepts frames of at most {max} — shorten \
             the payload"
        ),
    }
}

/// How a pushed node ended, as the driver tells its waiter.
enum Answer {
    Outcome(Outcome),
    TooLarge(OverLimit),
    GaveUp(String),
}

// The conversions below are written out rather than `#[from]`: each message already says its
// cause, so the cause is not also a `source` that error reports would print a second time.
impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<InsertError> for PushError {
    fn from(e: InsertError) -> Self {
        Self::Local(e)
    }
}

/// The client is closed.
#[derive(Debug, thiserror::Error)]
#[error("client is closed")]
pub struct Closed;

/// A subscription change was not made.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// A pattern is invalid (the same rules as the relay's defaults, §3.5).
    #[error("pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// Why it is refused.
        reason: PatternError,
    },
    /// The client shut down before the relay answered.
    #[error("client closed before the subscription changed")]
    Closed,
}

enum Command {
    Push,
    Presence,
    Close,
    /// Add (`add`) or remove patterns; answered with the whole subscription once it holds.
    Subscribe {
        patterns: Vec<String>,
        add: bool,
        done: oneshot::Sender<Vec<String>>,
    },
}

/// Refuses a `server` that is not a `ws://` or `wss://` URL, with what to write instead.
fn check_server(server: &str) -> Result<(), StartError> {
    let bad = |problem: String| {
        Err(StartError::BadServer {
            server: server.to_owned(),
            problem,
        })
    };
    let Some((scheme, rest)) = server.split_once("://") else {
        return bad(format!("has no scheme: write ws://{server}"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "ws" | "wss" => Ok(()),
        "http" => bad(format!(
            "is an HTTP URL; the relay speaks WebSocket: write ws://{rest}"
        )),
        "https" => bad(format!(
            "is an HTTPS URL; the relay speaks WebSocket: write wss://{rest}"
        )),
        _ => bad("must start with ws:// or wss://".into()),
    }
}

/// `patterns` parsed, or the first invalid one.
fn parse_subscription(patterns: &[String]) -> Result<PatternSet, SubscribeError> {
    let limits = PatternLimits::default();
    let parsed: Result<Vec<Pattern>, SubscribeError> = patterns
        .iter()
        .map(|p| {
            Pattern::parse(p, &limits).map_err(|reason| SubscribeError::Pattern {
                pattern: p.clone(),
                reason,
            })
        })
        .collect();
    Ok(PatternSet::new(parsed?))
}

struct Shared {
    /// Held only for synchronous replica work, never across an await.
    replica: Mutex<Replica>,
    waiters: Mutex<HashMap<NodeId, oneshot::Sender<Answer>>>,
    /// Number of completed reconciliations.
    syncs: watch::Sender<u64>,
    presence: Mutex<Bytes>,
}

impl Shared {
    fn replica(&self) -> MutexGuard<'_, Replica> {
        // A panic while holding the lock cannot leave a half-applied frame behind (frames are
        // applied by pure code that does not panic), so a poisoned lock is still usable.
        self.replica
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A handle to a running client. Cheap to share behind an `Arc`.
pub struct Client {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    replica_file: Option<PathBuf>,
}

impl Client {
    /// Loads the replica (from the file, if configured and present) and starts connecting.
    /// Returns the client and its event stream; events wait for the receiver, so read them or
    /// drop the receiver.
    pub fn start(config: ClientConfig) -> Result<(Self, mpsc::Receiver<Event>), StartError> {
        check_server(&config.server)?;
        let replica = match &config.replica_file {
            Some(path) if path.exists() => {
                let replica = Replica::from_bytes(&std::fs::read(path)?)?;
                if replica.room() != &config.room {
                    return Err(StartError::WrongRoom {
                        found: replica.room().clone(),
                        wanted: config.room,
                    });
                }
                replica
            }
            _ => Replica::new(config.room.clone()),
        };
        let mut replica = replica;
        let subscription = config
            .subscribe
            .as_deref()
            .map(parse_subscription)
            .transpose()?;
        replica.set_subscription(subscription);
        let shared = Arc::new(Shared {
            replica: Mutex::new(replica),
            waiters: Mutex::new(HashMap::new()),
            syncs: watch::Sender::new(0),
            presence: Mutex::new(Bytes::new()),
        });
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::channel(1024);
        let replica_file = config.replica_file.clone();
        let driver = Driver::new(config, shared.clone(), commands_rx, events_tx);
        let task = tokio::spawn(driver.run());
        Ok((
            Self {
                shared,
                commands: commands_tx,
                task,
                replica_file,
            },
            events_rx,
        ))
    }

    /// Waits until the replica has reconciled with the relay at least once.
    pub async fn wait_synced(&self) -> Result<(), Closed> {
        let mut syncs = self.shared.syncs.subscribe();
        syncs
            .wait_for(|n| *n > 0)
            .await
            .map(|_| ())
            .map_err(|_| Closed)
    }

    /// Creates a node at `path` on top of the replica's heads and waits for the relay's ack.
    pub async fn push(&self, path: &str, payload: impl Into<Bytes>) -> Result<NodeId, PushError> {
        let (tx, rx) = oneshot::channel();
        // The waiter is registered before the driver can see the node: otherwise it might push
        // it and settle its ack (with nobody waiting) in between, and this push would hang.
        let id = {
            let mut waiters = self.waiters();
            let id = self.shared.replica().create(path, payload)?;
            waiters.insert(id, tx);
            id
        };
        self.commands
            .send(Command::Push)
            .map_err(|_| PushError::Closed)?;
        match rx.await {
            Ok(Answer::Outcome(Outcome::Accepted(_) | Outcome::Duplicate(_))) => Ok(id),
            Ok(Answer::Outcome(Outcome::Rejected(reason))) => Err(PushError::Rejected(reason)),
            Ok(Answer::TooLarge(over)) => Err(PushError::TooLarge(over)),
            Ok(Answer::GaveUp(reason)) => Err(PushError::GaveUp { reason }),
            Ok(Answer::Outcome(Outcome::Pending)) | Err(_) => Err(PushError::Closed),
        }
    }

    /// Adds path patterns to the subscription and waits until the relay has backfilled what
    /// they newly match; returns the whole subscription. Offline, the change is made locally
    /// and the next connection reconciles the new subset.
    pub async fn subscribe(&self, patterns: &[String]) -> Result<Vec<String>, SubscribeError> {
        self.change_subscription(patterns, true).await
    }

    /// Removes path patterns from the subscription (compared in canonical form); returns the
    /// whole subscription.
    pub async fn unsubscribe(&self, patterns: &[String]) -> Result<Vec<String>, SubscribeError> {
        self.change_subscription(patterns, false).await
    }

    async fn change_subscription(
        &self,
        patterns: &[String],
        add: bool,
    ) -> Result<Vec<String>, SubscribeError> {
        let patterns = parse_subscription(patterns)?.canonical();
        let (done, answer) = oneshot::channel();
        self.commands
            .send(Command::Subscribe {
                patterns,
                add,
                done,
            })
            .map_err(|_| SubscribeError::Closed)?;
        answer.await.map_err(|_| SubscribeError::Closed)
    }

    /// Sets this peer's presence state (sent now and after every reconnect).
    pub fn set_presence(&self, state: impl Into<Bytes>) -> Result<(), Closed> {
        *self
            .shared
            .presence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state.into();
        self.commands.send(Command::Presence).map_err(|_| Closed)
    }

    /// Runs `f` on the replica.
    pub fn with_replica<R>(&self, f: impl FnOnce(&Replica) -> R) -> R {
        f(&self.shared.replica())
    }

    /// Writes the replica file (atomically: temp file, then rename).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.replica_file else {
            return Ok(());
        };
        let bytes = self
            .shared
            .replica()
            .to_bytes()
            .map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, path)
    }

    /// Closes the connection, stops the driver and saves the replica file.
    pub async fn close(mut self) -> std::io::Result<()> {
        // If the driver already ended there is nothing to stop.
        let _already_stopped = self.commands.send(Command::Close);
        if let Err(e) = (&mut self.task).await {
            tracing::warn!(error = %e, "client driver ended abnormally");
        }
        self.save()
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<NodeId, oneshot::Sender<Answer>>> {
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_names_the_size_and_the_limit() {
        let over = OverLimit {
            limit: SizeLimit::Payload,
            size: 5 << 20,
            max: 256 << 10,
        };
        assert!(
            too_large(&over)
                .starts_with("payload is 5.0 MiB; this relay accepts at most 256 KiB per node"),
            "{}",
            too_large(&over)
        );
        let odd = OverLimit {
            limit: SizeLimit::Frame,
            size: 2_000_000,
            max: 1536 << 10,
        };
        assert!(
            too_large(&odd).starts_with(
                "node is 1.9 MiB as a frame; this relay accepts frames of at most 1536 KiB"
            ),
            "{}",
            too_large(&odd)
        );
    }
}
