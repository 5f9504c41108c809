//! Argument parsing and subcommand dispatch.

mod client_cmds;
mod serve;
mod store_cmds;
mod units;

use std::path::PathBuf;
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
    /// Relay base URL.
    #[arg(long, env = "WEFT_SERVER", default_value = "ws://127.0.0.1:7788")]
    server: String,
    /// Room id (1-128 characters of A-Z a-z 0-9 . _ ~ -).
    #[arg(long, env = "WEFT_ROOM")]
    room: RoomId,
    /// Keep a local replica in this file, so later runs only fetch what is new.
    #[arg(long, env = "WEFT_REPLICA")]
    replica: Option<PathBuf>,
    /// Give up after this long without reaching the relay or an ack (`30s`, `2m`; a bare
    /// number is seconds).
    #[arg(long, env = "WEFT_TIMEOUT", default_value = "30s", value_parser = units::seconds)]
    timeout: Duration,
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
