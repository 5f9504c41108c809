//! Argument parsing and subcommand dispatch.

mod client_cmds;
mod serve;
mod store_cmds;
mod store_lock;
mod units;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use weft::node::RoomId;

/// weft: a WebSocket room relay for collaborative and local-first apps.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, propagate_version = true)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `weft=debug`.
    #[arg(long, env = "WEFT_LOG", default_value = "info", global = true)]
    log: String,
    /// Log line format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay.
    Serve(serve::ServeArgs),
    /// Create one node on top of the room's current heads and wait for the relay's ack; prints
    /// the node id.
    Push(client_cmds::PushArgs),
    /// Print the room's nodes: catch-up first, then live ones.
    Tail(client_cmds::TailArgs),
    /// Save the room's history into a local replica file.
    Pull(client_cmds::PullArgs),
    /// Work on a store directly: `weft store check`.
    Store(store_cmds::StoreArgs),
    /// Write a room from a store into a single file.
    Export(store_cmds::ExportArgs),
    /// Add a room's nodes from a file written by `weft export` to a store.
    Import(store_cmds::ImportArgs),
}

/// Where and which room a client command talks to.
#[derive(Debug, Args)]
struct Target {
    /// The relay: its base URL (`ws://HOST:PORT`), or a room's URL (`ws://HOST:PORT/v1/rooms/ROOM`,
    /// as `weft serve` prints it), which also names the room.
    #[arg(long, env = "WEFT_SERVER", default_value = "ws://127.0.0.1:7788")]
    server: String,
    /// Room id (1-128 characters of A-Z a-z 0-9 . _ ~ -). Not needed when `--server` is a
    /// room URL.
    #[arg(long, env = "WEFT_ROOM")]
    room: Option<RoomId>,
    /// Give up after this long without reaching the relay or an ack (`30s`, `2m`; a bare
    /// number is seconds).
    #[arg(long, env = "WEFT_TIMEOUT", default_value = "30s", value_parser = units::seconds)]
    timeout: Duration,
}

impl Target {
    /// The relay's base URL and the room: `--server` may be a room URL, and then `--room` is
    /// optional but must agree.
    fn resolve(&self) -> anyhow::Result<(String, RoomId)> {
        let (base, from_url) = split_room_url(&self.server)?;
        match (from_url, &self.room) {
            (Some(a), Some(b)) if &a != b => anyhow::bail!(
                "--server {} names room {a}, but --room says {b}; give one of them",
                self.server
            ),
            (Some(room), _) => Ok((base, room)),
            (None, Some(room)) => Ok((base, room.clone())),
            (None, None) => anyhow::bail!(
                "which room? give --room ROOM, or a room URL as --server \
                 (ws://HOST:PORT/v1/rooms/ROOM)"
            ),
        }
    }
}

/// `server` without a trailing `/v1/rooms/ROOM`, and that room if it had one.
fn split_room_url(server: &str) -> anyhow::Result<(String, Option<RoomId>)> {
    let trimmed = server.trim_end_matches('/');
    // Only the path counts: `://` keeps a bare `ws://host` from matching.
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        return Ok((server.to_owned(), None));
    };
    let Some((authority, room)) = rest.split_once("/v1/rooms/") else {
        return Ok((server.to_owned(), None));
    };
    let room = room.parse::<RoomId>().map_err(|e| {
        anyhow::anyhow!("--server {server}: the room in the URL is not a room id: {e}")
    })?;
    Ok((format!("{scheme}://{authority}"), Some(room)))
}

/// "1 new node", "N new nodes" (for `adjective` "new ").
pub(crate) fn nodes(n: usize, adjective: &str) -> String {
    let noun = if n == 1 { "node" } else { "nodes" };
    format!("{n} {adjective}{noun}")
}

/// Sets up stderr logging.
pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs the chosen subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Push(args) => client_cmds::push(args).await,
        Command::Tail(args) => client_cmds::tail(args).await,
        Command::Pull(args) => client_cmds::pull(args).await,
        Command::Store(args) => store_cmds::store(args).await,
        Command::Export(args) => store_cmds::export(args).await,
        Command::Import(args) => store_cmds::import(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_urls_split_into_base_and_room() {
        let split = |s: &str| split_room_url(s).map_err(|e| e.to_string());
        let room = |s: &str| RoomId::new(s).ok();
        assert_eq!(
            split("ws://127.0.0.1:7788/v1/rooms/notes"),
            Ok(("ws://127.0.0.1:7788".into(), room("notes")))
        );
        assert_eq!(
            split("ws://h:1/v1/rooms/notes/"),
            Ok(("ws://h:1".into(), room("notes")))
        );
        assert_eq!(split("ws://h:1"), Ok(("ws://h:1".into(), None)));
        assert_eq!(split("ws://h:1/"), Ok(("ws://h:1/".into(), None)));
        assert!(split("ws://h:1/v1/rooms/a/b").is_err());
    }
}
