//! Shared setup for loopback integration tests: a real relay on 127.0.0.1 and raw clients.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use weft::client::{Client, ClientConfig, Event};
use weft::node::{Node, RoomId};
use weft::protocol::{self, Capabilities, Hello, Message, PROTOCOL_VERSION, SyncHints};
use weft::server::{self, ServerConfig, ServerStats};
use weft::store::{PackStore, Store};

/// Upper bound for anything a test waits for; tests finish far sooner when healthy.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A relay running in this process on an ephemeral loopback port.
pub struct Relay {
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Relay {
    pub async fn start() -> Self {
        Self::start_with(ServerConfig::default()).await
    }

    pub async fn start_with(config: ServerConfig) -> Self {
        Self::start_with_store(config, Arc::new(PackStore::memory())).await
    }

    /// A relay over `store`, which may hold rooms already.
    pub async fn start_with_store(config: ServerConfig, store: Arc<dyn Store>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ServerStats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, config, store, stats.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stats,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn room_url(&self, room: &str) -> String {
        format!("ws://{}/v1/rooms/{room}", self.addr)
    }

    /// Stops the relay and waits until every connection and room task has finished.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("relay drains in time")
                .unwrap()
                .unwrap();
        }
    }
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A client speaking the protocol by hand, for tests that need exact frames.
pub struct Raw {
    pub socket: Socket,
}

impl Raw {
    pub async fn connect(relay: &Relay, room: &str) -> Self {
        Self::connect_url(&relay.room_url(room)).await
    }

    pub async fn connect_url(url: &str) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Self { socket }
    }

    pub async fn send(&mut self, message: Message) {
        self.send_bytes(message.encode().unwrap()).await;
    }

    pub async fn send_bytes(&mut self, bytes: Bytes) {
        self.socket.send(WsMessage::Binary(bytes)).await.unwrap();
    }

    /// Sends hello with empty hints and a generous window; returns the welcome.
    pub async fn join_empty(&mut self) -> protocol::Welcome {
        self.send(Message::Hello(hello(SyncHints::default()))).await;
        match self.recv().await {
            Message::Welcome(welcome) => welcome,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Joins with empty hints and reads until catch-up is done; returns the caught-up nodes.
    pub async fn join_and_catch_up(&mut self) -> Vec<Node> {
        let welcome = self.join_empty().await;
        let mut nodes = Vec::new();
        if welcome.plan == protocol::Plan::InSync {
            return nodes;
        }
        loop {
            match self.recv().await {
                Message::Batch(batch) => nodes.extend(batch.nodes),
                Message::CatchUpDone(_) => return nodes,
                Message::PresenceUpdate(_) => {}
                other => panic!("unexpected during catch-up: {other:?}"),
            }
        }
    }

    /// The next protocol frame (skipping pings); panics on close or timeout.
    pub async fn recv(&mut self) -> Message {
        match self.next_event().await {
            RawEvent::Frame(message) => message,
            RawEvent::Closed(code) => panic!("closed with {code:?} while waiting for a frame"),
        }
    }

    /// The next protocol frame and its size in bytes (what a client credits back, §6.2).
    pub async fn recv_sized(&mut self) -> (Message, u64) {
        match self.next_sized_frame().await {
            Ok(frame) => frame,
            Err(code) => panic!("closed with {code:?} while waiting for a frame"),
        }
    }

    /// The next protocol frame and its size, or the close code if the relay closed first.
    pub async fn next_sized_frame(&mut self) -> Result<(Message, u64), Option<u16>> {
        match self.next_sized_event().await {
            (RawEvent::Frame(message), len) => Ok((message, len)),
            (RawEvent::Closed(code), _) => Err(code),
        }
    }

    /// The next frame or the close code.
    pub async fn next_event(&mut self) -> RawEvent {
        self.next_sized_event().await.0
    }

    async fn next_sized_event(&mut self) -> (RawEvent, u64) {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("relay answers in time");
            match next {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    let message = protocol::decode(&bytes).unwrap();
                    return (RawEvent::Frame(message), bytes.len() as u64);
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return (RawEvent::Closed(frame.map(|f| u16::from(f.code))), 0);
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return (RawEvent::Closed(None), 0),
            }
        }
    }

    /// Reads until the relay closes; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let RawEvent::Closed(code) = self.next_event().await {
                return code;
            }
        }
    }
}

#[derive(Debug)]
pub enum RawEvent {
    Frame(Message),
    Closed(Option<u16>),
}

pub fn hello(hints: SyncHints) -> Hello {
    Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities: Capabilities::SUPPORTED,
        hints,
        credit: 8 * 1024 * 1024,
        subscribe: None,
    }
}

pub fn room(name: &str) -> RoomId {
    RoomId::new(name).unwrap()
}

/// A root node or a child of `parents` in `room`.
pub fn node(room_name: &str, parents: &[&Node], path: &str, payload: &str) -> Node {
    Node::child_of(&room(room_name), parents, path, payload.as_bytes().to_vec()).unwrap()
}

/// Starts a client for `room` and waits for its first sync.
pub async fn synced_client(
    relay: &Relay,
    room_name: &str,
) -> (Client, tokio::sync::mpsc::Receiver<Event>) {
    let mut config = ClientConfig::new(relay.url(), room(room_name));
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    let (client, events) = Client::start(config).unwrap();
    tokio::time::timeout(PATIENCE, client.wait_synced())
        .await
        .expect("client syncs in time")
        .unwrap();
    (client, events)
}

/// Waits until `check` holds, polling; panics after [`PATIENCE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends one HTTP/1.1 request for `path` with the extra `headers` (each `Name: value`), and
/// returns the status and the body.
pub async fn http_get(relay: &Relay, path: &str, headers: &[&str]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(relay.addr).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}
