//! `weft serve`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use weft::server::{self, ServerConfig, ServerStats};
use weft::store::Store;

use super::{store_lock, units};

/// Flags of `weft serve`.
///
/// Sizes take units (`1 MiB`, `256KiB`, `1MB`) and durations take units (`5s`, `500ms`, `2m`);
/// a bare number means what each flag's help says.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on: PORT (on loopback), IP:PORT or HOST:PORT. Loopback by default; use
    /// 0.0.0.0:7788 to accept remote clients.
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:7788", value_parser = units::listen)]
    listen: String,
    /// Where rooms are stored: a directory (created if missing), `memory://` (gone on exit),
    /// or `s3://bucket/prefix`, `gs://…`, `az://…` configured from the standard environment
    /// variables.
    #[arg(long, env = "WEFT_STORE", default_value = "./weft-data")]
    store: String,
    /// How long a room waits for more accepted nodes before writing them in one commit (acks
    /// and broadcasts follow the write); a bare number is milliseconds. With 0, a commit starts
    /// as soon as the room is idle, and nodes accepted while it is in flight form the next one.
    #[arg(long, env = "WEFT_COMMIT_WINDOW_MS", default_value = "0ms", value_parser = units::milliseconds)]
    commit_window_ms: Duration,
    /// How long a room without sessions stays loaded; a bare number is seconds.
    #[arg(long, env = "WEFT_ROOM_IDLE_SECS", default_value = "60s", value_parser = units::seconds)]
    room_idle_secs: Duration,
    /// Stored node encodings each loaded room keeps in memory (the newest history); a catch-up
    /// reads older ones back from the store. A bare number is MiB; 0 keeps none.
    #[arg(long, env = "WEFT_PAYLOAD_BUDGET_MIB", default_value = DEFAULT_BUDGET, value_parser = units::mebibytes)]
    payload_budget_mib: u64,
    /// Largest WebSocket frame accepted (a bare number is bytes); larger ones close with 1009.
    #[arg(long, env = "WEFT_MAX_FRAME", default_value = "1MiB", value_parser = units::bytes::<u32>)]
    max_frame: u32,
    /// Largest node payload (a bare number is bytes).
    #[arg(long, env = "WEFT_MAX_PAYLOAD", default_value = "256KiB", value_parser = units::bytes::<u32>)]
    max_payload: u32,
    /// Most nodes in one pack.
    #[arg(long, env = "WEFT_MAX_PACK_NODES", default_value_t = 1024)]
    max_pack_nodes: u32,
    /// Most simultaneous connections.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS", default_value_t = 16 * 1024)]
    max_connections: usize,
    /// Outbound bytes queued for one connection before it is closed with 4000 "resync required"
    /// (a bare number is bytes).
    #[arg(long, env = "WEFT_QUEUE_LIMIT", default_value = "8MiB", value_parser = units::bytes::<usize>)]
    queue_limit: usize,
    /// How long a live frame may wait in a connection's queue before the receiver is deemed
    /// unable to keep up and closed with 4000 "resync required"; a bare number is seconds.
    #[arg(long, env = "WEFT_MAX_LAG", default_value = "5s", value_parser = units::seconds)]
    max_lag: Duration,
    /// How long a new connection has to send `hello`; a bare number is seconds.
    #[arg(long, env = "WEFT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = units::seconds)]
    handshake_timeout: Duration,
    /// Time between keepalive pings; a bare number is seconds.
    #[arg(long, env = "WEFT_PING_INTERVAL", default_value = "15s", value_parser = units::seconds)]
    ping_interval: Duration,
    /// Silence after which a connection is closed with 4004; a bare number is seconds.
    #[arg(long, env = "WEFT_IDLE_TIMEOUT", default_value = "45s", value_parser = units::seconds)]
    idle_timeout: Duration,
    /// Nodes allowed to wait for missing parents, per room.
    #[arg(long, env = "WEFT_ORPHAN_LIMIT", default_value_t = 4096)]
    orphan_limit: usize,
    /// How long a node may wait for missing parents; a bare number is seconds.
    #[arg(long, env = "WEFT_ORPHAN_TTL", default_value = "30s", value_parser = units::seconds)]
    orphan_ttl: Duration,
}

/// `DEFAULT_PAYLOAD_BUDGET` as `--help` shows it.
const DEFAULT_BUDGET: &str = "64MiB";

/// The keepalive and lag timers cannot run with a zero period (tokio's interval refuses one).
const MIN_TIMER: Duration = Duration::from_millis(1);

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
        config.rooms.hub.handshake_timeout = self.handshake_timeout;
        config.rooms.orphans.max_nodes = self.orphan_limit;
        config.rooms.orphans.ttl = self.orphan_ttl;
        config.rooms.commit_window = self.commit_window_ms;
        config.rooms.idle_eviction = self.room_idle_secs;
        config.rooms.payload_budget =
            usize::try_from(self.payload_budget_mib).unwrap_or(usize::MAX);
        config.connection.queue_limit = self.queue_limit;
        config.connection.max_lag = self.max_lag.max(MIN_TIMER);
        config.connection.ping_interval = self.ping_interval.max(MIN_TIMER);
        config.connection.idle_timeout = self.idle_timeout.max(MIN_TIMER);
        Ok(config)
    }
}

/// Binds, serves until SIGINT or SIGTERM, then drains.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    // Held until the relay exits, so `weft import` cannot write this store behind its back.
    let _lock = match store_lock::lock(&args.store) {
        Ok(lock) => lock,
        Err(store_lock::LockError::Held(path)) => bail!(
            "another relay is serving {} (it holds {}); stop it first, or give this one \
             another --store",
            args.store,
            path.display()
        ),
        Err(store_lock::LockError::Other(e)) => return Err(e),
    };
    let store = weft::store::open(&args.store)?;
    // Fail fast on a store that is unreachable, read-only or of another layout version.
    let report = store
        .check()
        .await
        .with_context(|| format!("store {} is not usable", args.store))?;
    tracing::info!(store = %report.description, layout = report.layout, "store ready");
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(args.listen.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_shows_the_library_default_budget() {
        assert_eq!(
            units::mebibytes(DEFAULT_BUDGET).ok(),
            u64::try_from(weft::server::DEFAULT_PAYLOAD_BUDGET).ok()
        );
    }
}
