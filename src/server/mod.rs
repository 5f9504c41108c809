//! The relay server: axum routes, one task per connection, one task per room.
//!
//! [`run`] takes an already-bound listener (tests bind port 0) and a shutdown future. On
//! shutdown it stops accepting, closes every connection with 1001 "going away", and waits for
//! every connection and room task to finish.
//!
//! Routes: `GET /v1/rooms/{room}` (WebSocket upgrade), `GET /livez`, `GET /readyz`.

mod connection;
mod inbox;
mod outbound;
mod rooms;
mod upgrade;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use connection::ConnectionSettings;
pub use outbound::QueueStats;
pub use rooms::{DEFAULT_PAYLOAD_BUDGET, RoomSettings, StoreHealth};

use crate::node::RoomId;
use crate::store::Store;
use upgrade::Upgrade;

/// Everything the relay can be told.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Room and session policy.
    pub rooms: RoomSettings,
    /// Transport policy per connection.
    pub connection: ConnectionSettings,
    /// Most simultaneous WebSocket connections; more get HTTP 503.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            rooms: RoomSettings::default(),
            connection: ConnectionSettings::default(),
            max_connections: 16 * 1024,
        }
    }
}

impl ServerConfig {
    /// Caps catch-up credit so that what an honest client may have in flight (the cap plus one
    /// overdrawn frame, protocol/README.md §6.2) fits the outbound queue, and gives each
    /// connection the frame limit its joined broadcasts must keep to.
    fn with_limits_applied(mut self) -> Self {
        let max_frame = u64::from(self.rooms.hub.session.limits.max_frame);
        let queue_limit = self.connection.queue_limit as u64;
        if queue_limit < max_frame.saturating_mul(2) {
            tracing::warn!(
                queue_limit,
                max_frame,
                "the outbound queue limit is less than twice the frame limit: catch-up sends \
                 one batch at a time, and a receiver of large frames may be closed with 4000"
            );
        }
        let credit = &mut self.rooms.hub.session.max_credit;
        *credit = (*credit).min(queue_limit.saturating_sub(max_frame).max(1));
        // Broadcasts joined in a connection's queue stay within the limit the relay announces.
        self.connection.max_frame = usize::try_from(max_frame).unwrap_or(usize::MAX);
        self
    }
}

/// Live counters of a running server.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    /// Outbound queue totals.
    pub queues: Arc<QueueStats>,
    /// Whether the store is failing (then `/readyz` answers 503).
    pub store: Arc<StoreHealth>,
    /// Rooms loaded (or loading) now.
    pub rooms: AtomicU64,
}

/// Per-connection socket read buffer.
const READ_BUFFER: usize = 1024;

struct AppState {
    rooms: rooms::Rooms,
    store: Arc<dyn Store>,
    config: ServerConfig,
    stats: Arc<ServerStats>,
    permits: Arc<Semaphore>,
    next_session: AtomicU64,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Serves until `shutdown` completes, then drains. `stats` is updated while it runs.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    store: Arc<dyn Store>,
    stats: Arc<ServerStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = config.with_limits_applied();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let state = Arc::new(AppState {
        store: store.clone(),
        rooms: rooms::Rooms::new(
            store.clone(),
            config.rooms,
            stats.clone(),
            tracker.clone(),
            cancel.clone(),
        ),
        permits: Arc::new(Semaphore::new(config.max_connections)),
        config,
        stats,
        next_session: AtomicU64::new(1),
        tracker: tracker.clone(),
        shutdown: cancel.clone(),
    });
    let app = Router::new()
        .route("/v1/rooms/{room}", get(upgrade))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state);
    let stop = cancel.clone();
    // Receivers rarely send, so Nagle's algorithm would hold small broadcasts back until a
    // delayed ACK (up to ~40 ms); every frame is written whole, so nothing is gained by waiting.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        if let Err(e) = bound_kernel_backlog(tcp) {
            tracing::debug!(error = %e, "cannot bound the socket's send buffer");
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await;
    // Upgraded connections and room tasks are not axum's; wait for them here.
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    // Rooms may start store work (compactions) until they stop: stop it last.
    store.close().await;
    result
}

/// Unsent bytes the kernel may hold for one connection. Left to itself it autotunes the send
/// buffer up to `tcp_wmem` (4 MiB by default), where a reader's backlog is invisible: frames
/// that wait there do not age in the outbound queue, and `max_lag` sees the lag only seconds
/// later. Past this bound writes wait, so the backlog stays in the queue, where it is measured.
const KERNEL_BACKLOG: u32 = 64 * 1024;

/// Caps what the kernel holds unsent for `tcp` at [`KERNEL_BACKLOG`]. On Linux this is
/// `TCP_NOTSENT_LOWAT`, which leaves the bytes in flight alone (a long link keeps its
/// throughput); elsewhere the whole send buffer is capped.
fn bound_kernel_backlog(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return socket.set_tcp_notsent_lowat(KERNEL_BACKLOG);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return socket.set_send_buffer_size(KERNEL_BACKLOG as usize);
}

/// How long `/readyz` waits for a store probe.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// 503 while the store is failing, so a balancer sends new clients elsewhere. Once a store
/// call failed, each request probes the store (a small write, read and delete) until one
/// succeeds.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.stats.store.is_failing() {
        let probe = tokio::time::timeout(READY_PROBE_TIMEOUT, state.store.check()).await;
        let probe =
            probe.unwrap_or_else(|elapsed| Err(crate::store::StoreError::TimedOut(elapsed)));
        state.stats.store.record(&probe);
        if let Err(e) = probe {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store failing: {}", e.report()),
            )
                .into_response();
        }
    }
    "ready".into_response()
}

async fn upgrade(
    Path(room): Path<String>,
    State(state): State<Arc<AppState>>,
    mut request: Request,
) -> Response {
    let Ok(room) = RoomId::new(&room) else {
        return (StatusCode::BAD_REQUEST, "invalid room id").into_response();
    };
    let ws = match Upgrade::from_request(&mut request) {
        Ok(ws) => ws,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(permit) = state.permits.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let max_frame = state.config.rooms.hub.session.limits.max_frame as usize;
    let session = state.next_session.fetch_add(1, Ordering::Relaxed);
    let room_tx = state.rooms.get(&room);
    let task_state = state.clone();
    // tungstenite's default 128 KiB read buffer would be most of an idle connection's memory
    // and is zero-filled on every read. Clients mostly send small frames; a large pack simply
    // takes more reads (the frame buffer still grows to fit it).
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    let (response, connection) = ws.accept(ws_config);
    // Boxed until it resolves: inline, the upgrade's state would stay in the connection task
    // for the connection's whole life.
    let connection = Box::pin(connection);
    let span = tracing::info_span!("conn", room = %room, session);
    let tracker = state.tracker.clone();
    tracker.spawn(tracing::Instrument::instrument(
        async move {
            let Some(socket) = connection.await else {
                return;
            };
            connection::run(
                socket,
                session,
                room_tx,
                &task_state.config.connection,
                task_state.stats.queues.clone(),
                &task_state.stats.connections,
                task_state.shutdown.clone(),
            )
            .await;
            drop(permit);
        },
        span,
    ));
    response
}
