//! One WebSocket connection: moves frames between the socket and its room task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;

use super::outbound::{self, QueueStats};
use super::rooms::{RoomCommand, RoomSender};
use super::upgrade::Socket;
use crate::protocol::CloseCode;
use crate::room::SessionId;

/// Per-connection transport settings.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionSettings {
    /// Byte limit of the outbound queue; overflow closes with "resync required".
    pub queue_limit: usize,
    /// Interval between keepalive pings.
    pub ping_interval: Duration,
    /// Silence (no frame, no pong) after which the connection is closed.
    pub idle_timeout: Duration,
    /// How long to wait for a close frame to drain before dropping the socket.
    pub close_timeout: Duration,
    /// Oldest a live frame may be when it leaves the queue; older means the receiver cannot keep
    /// up, and it is closed with "resync required". Credit-paced catch-up is exempt.
    pub max_lag: Duration,
    /// Largest message the writer makes by joining queued broadcasts: the relay's frame
    /// limit, which [`run`](super::run) copies from the room settings.
    pub(crate) max_frame: usize,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            queue_limit: 8 * 1024 * 1024,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            close_timeout: Duration::from_secs(5),
            max_lag: Duration::from_secs(5),
            max_frame: 1024 * 1024,
        }
    }
}

/// Most queued frames written per flush.
const MAX_BURST: usize = 64;

/// Counters for one connection, logged when it closes.
#[derive(Default)]
struct Tally {
    frames_in: u64,
    frames_out: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// Runs one connection until either side ends it.
///
/// Not an `async fn`, and neither is [`pump`]: the future of one keeps every argument twice (as
/// passed, and moved into its body), and a connection carries these futures while it is open.
#[allow(clippy::manual_async_fn)] // On purpose, as said above.
pub fn run(
    socket: Socket,
    session: SessionId,
    room: RoomSender,
    settings: &ConnectionSettings,
    stats: Arc<QueueStats>,
    open: &AtomicU64,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> {
    async move {
        let started = Instant::now();
        open.fetch_add(1, Ordering::Relaxed);
        let (queue, mut inbound) = outbound::queue(settings.queue_limit, stats);
        let mut tally = Tally::default();
        let code = if room
            .send(RoomCommand::Connect { session, queue })
            .await
            .is_err()
        {
            // Outside a shutdown, a room task only goes away when its store failed to load it.
            let code = if shutdown.is_cancelled() {
                CloseCode::GoingAway
            } else {
                CloseCode::StoreUnavailable
            };
            refuse(socket, code, settings).await;
            code
        } else {
            pump(
                socket,
                session,
                &room,
                &mut inbound,
                settings,
                &shutdown,
                &mut tally,
            )
            .await
        };
        // The room may already be gone during shutdown; nothing to tell it then.
        let _room_gone = room.send(RoomCommand::Disconnect { session }).await;
        open.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(
            session,
            close = code.code(),
            reason = code.meaning(),
            secs = started.elapsed().as_secs_f64(),
            frames_in = tally.frames_in,
            frames_out = tally.frames_out,
            bytes_in = tally.bytes_in,
            bytes_out = tally.bytes_out,
            "connection closed"
        );
    }
}

/// Moves frames both ways until the connection ends, then closes it; returns the close code.
#[allow(clippy::manual_async_fn)] // On purpose: see `run`.
fn pump(
    socket: Socket,
    session: SessionId,
    room: &RoomSender,
    inbound: &mut outbound::Inbound,
    settings: &ConnectionSettings,
    shutdown: &CancellationToken,
    tally: &mut Tally,
) -> impl Future<Output = CloseCode> {
    async move {
        let (mut sink, mut stream) = socket.split();
        // The first ping is due one interval after connecting, not immediately.
        let mut ping = tokio::time::interval_at(
            Instant::now() + settings.ping_interval,
            settings.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let code = loop {
            // The frames to write. They are written out here, after the select: inside it, the
            // select's output would wait beside the write in this future.
            let (frames, live) = tokio::select! {
                biased;
                () = shutdown.cancelled() => break CloseCode::GoingAway,
                // Whatever is already queued goes out in the same flush: one syscall for a burst
                // of broadcasts instead of one per frame.
                next = inbound.next(MAX_BURST) => {
                    let burst = match next {
                        outbound::Next::Close(code) => break code,
                        outbound::Next::Frames(burst) => burst,
                    };
                    let live = burst.iter().any(|q| q.queued_at.is_some());
                    let lagging = burst
                        .iter()
                        .filter_map(|q| q.queued_at)
                        .any(|at| at.elapsed() > settings.max_lag);
                    if lagging {
                        // The receiver cannot keep up with the room: better a typed close now and a
                        // catch-up later than an ever-growing delay.
                        tracing::info!(session, "live frames waited past --max-lag; closing with resync required");
                        break CloseCode::ResyncRequired;
                    }
                    let frames = outbound::coalesce(burst, settings.max_frame);
                    for frame in &frames {
                        tally.frames_out += 1;
                        tally.bytes_out += frame.len() as u64;
                    }
                    (frames, live)
                }
                received = stream.next() => {
                    last_heard = Instant::now();
                    match received {
                        Some(Ok(WsMessage::Binary(bytes))) => {
                            tally.frames_in += 1;
                            tally.bytes_in += bytes.len() as u64;
                            if room.send(RoomCommand::Frame { session, bytes }).await.is_err() {
                                break CloseCode::GoingAway;
                            }
                        }
                        // Text frames are not part of the protocol; the session answers them as
                        // malformed, like any other bad frame.
                        Some(Ok(WsMessage::Text(text))) => {
                            tally.frames_in += 1;
                            let bytes = bytes::Bytes::copy_from_slice(text.as_str().as_bytes());
                            if room.send(RoomCommand::Frame { session, bytes }).await.is_err() {
                                break CloseCode::GoingAway;
                            }
                        }
                        // Raw frames only appear when writing; pings are answered by tungstenite.
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                        Some(Ok(WsMessage::Close(_))) | None => return CloseCode::Normal,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "websocket read failed");
                            let too_big = matches!(e, WsError::Capacity(CapacityError::MessageTooLong { .. }));
                            break if too_big { CloseCode::TooBig } else { return CloseCode::Normal };
                        }
                    }
                    continue;
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > settings.idle_timeout {
                        break CloseCode::IdleTimeout;
                    }
                    if sink.send(WsMessage::Ping(bytes::Bytes::new())).await.is_err() {
                        return CloseCode::Normal;
                    }
                    continue;
                }
            };
            let write = async {
                for frame in frames {
                    sink.feed(WsMessage::Binary(frame)).await?;
                }
                sink.flush().await
            };
            // A write that takes longer than live frames may lag (or, for credit-paced catch-up,
            // longer than the idle window) means the reader has stalled.
            let stall = if live {
                settings.max_lag
            } else {
                settings.idle_timeout
            };
            // Writing may block on a slow reader; a close request must still get through.
            tokio::select! {
                sent = write => {
                    if sent.is_err() { return CloseCode::Normal; }
                }
                () = tokio::time::sleep(stall) => {
                    tracing::info!(session, live, "a write stalled; closing with resync required");
                    break CloseCode::ResyncRequired;
                }
                code = inbound.closed() => break code,
                () = shutdown.cancelled() => break CloseCode::GoingAway,
            }
        };
        let farewell = async {
            // Frames queued before the close (an `error` explaining it, say) still go out, except
            // after an overflow: that client must resync anyway and is not reading.
            if code != CloseCode::ResyncRequired {
                for queued in inbound.drain() {
                    sink.send(WsMessage::Binary(queued.frame)).await?;
                }
            }
            let close = CloseFrame {
                code: code.code().into(),
                reason: code.meaning().into(),
            };
            sink.send(WsMessage::Close(Some(close))).await
        };
        // Best effort, bounded: a stalled peer may never read any of it.
        if let Ok(Err(e)) = tokio::time::timeout(settings.close_timeout, farewell).await {
            tracing::debug!(error = %e, "close handshake failed");
        }
        if code == CloseCode::TooBig {
            // The rest of the refused frame is still arriving. Closing the socket with unread
            // input would reset the connection, and a client still busy writing would lose the
            // close frame; so read and discard until it stops sending (bounded in time).
            if let Ok(mut socket) = sink.reunite(stream) {
                discard_input(socket.get_mut(), settings.close_timeout).await;
            }
        }
        code
    }
}

/// Quiet time after which a refused client is taken to have stopped sending.
const DISCARD_QUIET: Duration = Duration::from_millis(250);

/// Reads and drops whatever the peer still sends, until it closes, stays quiet for
/// [`DISCARD_QUIET`], or `limit` has passed. Nothing is buffered beyond one read.
async fn discard_input(io: &mut (impl tokio::io::AsyncRead + Unpin), limit: Duration) {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + limit;
    // On the heap: an array here would sit in every connection task's future, used or not.
    let mut scratch = vec![0u8; 8192];
    loop {
        let quiet = (Instant::now() + DISCARD_QUIET).min(deadline);
        match tokio::time::timeout_at(quiet, io.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// Closes a connection that never reached its room.
async fn refuse(mut socket: Socket, code: CloseCode, settings: &ConnectionSettings) {
    let close = CloseFrame {
        code: code.code().into(),
        reason: code.meaning().into(),
    };
    let sent = tokio::time::timeout(
        settings.close_timeout,
        socket.send(WsMessage::Close(Some(close))),
    );
    if let Ok(Err(e)) = sent.await {
        tracing::debug!(error = %e, "close handshake failed");
    }
}
