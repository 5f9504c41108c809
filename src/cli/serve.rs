//! `weft serve`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use weft::server::{self, DEFAULT_PAYLOAD_BUDGET, ServerConfig, ServerStats};
use weft::store::Store;

/// Flags of `weft serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Loopback by default; use 0.0.0.0:7788 to accept remote clients.
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:7788")]
    listen: SocketAddr,
    /// Where rooms are stored: a directory (created if missing), `memory://` (gone on exit),
    /// or `s3://bucket/prefix`, `gs://…`, `az://…` configured from the standard environment
    /// variables.
    #[arg(long, env = "WEFT_STORE", default_value = "./weft-data")]
    store: String,
    /// Milliseconds a room waits for more accepted nodes before writing them in one commit
    /// (acks and broadcasts follow the write). With 0, a commit starts as soon as the room is
    /// idle, and nodes accepted while it is in flight form the next one.
    #[arg(long, env = "WEFT_COMMIT_WINDOW_MS", default_value_t = 0)]
    commit_window_ms: u64,
    /// Seconds a room without sessions stays loaded.
    #[arg(long, env = "WEFT_ROOM_IDLE_SECS", default_value_t = 60)]
    room_idle_secs: u64,
    /// MiB of stored node encodings each loaded room keeps in memory (the newest history);
    /// a catch-up reads older ones back from the store. 0 keeps none.
    #[arg(long, env = "WEFT_PAYLOAD_BUDGET_MIB", default_value_t = (DEFAULT_PAYLOAD_BUDGET >> 20) as u64)]
    payload_budget_mib: u64,
    /// Largest WebSocket frame accepted, in bytes; larger ones close with 1009.
    #[arg(long, env = "WEFT_MAX_FRAME", default_value_t = 1024 * 1024)]
    max_frame: u32,
    /// Largest node payload, in bytes.
    #[arg(long, env = "WEFT_MAX_PAYLOAD", default_value_t = 256 * 1024)]
    max_payload: u32,
    /// Most nodes in one pack.
    #[arg(long, env = "WEFT_MAX_PACK_NODES", default_value_t = 1024)]
    max_pack_nodes: u32,
    /// Most simultaneous connections.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS", default_value_t = 16 * 1024)]
    max_connections: usize,
    /// Bytes queued for one connection before it is closed with 4000 "resync required".
    #[arg(long, env = "WEFT_QUEUE_LIMIT", default_value_t = 8 * 1024 * 1024)]
    queue_limit: usize,
    /// Seconds a live frame may wait in a connection's queue before the receiver is deemed unable
    /// to keep up and closed with 4000 "resync required".
    #[arg(long, env = "WEFT_MAX_LAG", default_value_t = 5)]
    max_lag: u64,
    /// Seconds a new connection has to send `hello`.
    #[arg(long, env = "WEFT_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    handshake_timeout: u64,
    /// Seconds between keepalive pings.
    #[arg(long, env = "WEFT_PING_INTERVAL", default_value_t = 15)]
    ping_interval: u64,
    /// Seconds of silence after which a connection is closed with 4004.
    #[arg(long, env = "WEFT_IDLE_TIMEOUT", default_value_t = 45)]
    idle_timeout: u64,
    /// Nodes allowed to wait for missing parents, per room.
    #[arg(long, env = "WEFT_ORPHAN_LIMIT", default_value_t = 4096)]
    orphan_limit: usize,
    /// Seconds a node may wait for missing parents.
    #[arg(long, env = "WEFT_ORPHAN_TTL", default_value_t = 30)]
    orphan_ttl: u64,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<ServerConfig> {
        if self.max_payload >= self.max_frame {
            bail!("--max-payload must be smaller than --max-frame");
        }
        let mut config = ServerConfig {
            max_connections: self.max_connections,
            ..ServerConfig::default()
        };
        let limits = &mut config.rooms.hub.session.limits;
        limits.max_frame = self.max_frame;
        limits.max_pack_nodes = self.max_pack_nodes;
        limits.node.max_payload = self.max_payload;
        config.rooms.hub.handshake_timeout = Duration::from_secs(self.handshake_timeout);
        config.rooms.orphans.max_nodes = self.orphan_limit;
        config.rooms.orphans.ttl = Duration::from_secs(self.orphan_ttl);
        config.rooms.commit_window = Duration::from_millis(self.commit_window_ms);
        config.rooms.idle_eviction = Duration::from_secs(self.room_idle_secs);
        config.rooms.payload_budget =
            usize::try_from(self.payload_budget_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        config.connection.queue_limit = self.queue_limit;
        config.connection.max_lag = Duration::from_secs(self.max_lag.max(1));
        config.connection.ping_interval = Duration::from_secs(self.ping_interval.max(1));
        config.connection.idle_timeout = Duration::from_secs(self.idle_timeout.max(1));
        Ok(config)
    }
}

/// Binds, serves until SIGINT or SIGTERM, then drains.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let store = weft::store::open(&args.store)?;
    // Fail fast on a store that is unreachable, read-only or of another layout version.
    let report = store
        .check()
        .await
        .with_context(|| format!("store {} is not usable", args.store))?;
    tracing::info!(store = %report.description, layout = report.layout, "store ready");
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, store = %args.store, "weft relay listening on ws://{addr}/v1/rooms/{{room}}");
    let stats = Arc::new(ServerStats::default());
    server::run(listener, config, Arc::new(store), stats, shutdown).await?;
    tracing::info!("relay stopped");
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now, so a signal that arrives before the server
/// polls the returned future is not lost, and resolves when either arrives.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutdown requested; draining connections");
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot watch Ctrl-C; the relay runs until killed");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown requested; draining connections");
    })
}
