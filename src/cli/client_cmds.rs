//! `weft push`, `weft tail`, `weft pull`: scriptable clients.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use clap::{ArgGroup, Args};
use tokio::sync::mpsc;
use tokio::time::Instant;
use weft::client::{Client, ClientConfig, DisconnectKind, Event};
use weft::node::{Node, NodeLimits, path_problem};

use super::{Target, nodes};

/// Flags of `weft push`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("payload").required(true).args(["data", "file"])))]
pub struct PushArgs {
    #[command(flatten)]
    target: Target,
    /// Keep a local replica in this file, so later runs only fetch what is new.
    #[arg(long, env = "WEFT_REPLICA")]
    replica: Option<PathBuf>,
    /// The node's path, e.g. `docs/readme`.
    #[arg(long)]
    path: String,
    /// Payload given inline (for large ones, use --file, or --file - for stdin).
    #[arg(long)]
    data: Option<String>,
    /// Payload read from a file (`-` for stdin).
    #[arg(long)]
    file: Option<PathBuf>,
}

/// Flags of `weft tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    target: Target,
    /// Keep a local replica in this file: later runs print only the nodes that are new since
    /// (see --from-start).
    #[arg(long, env = "WEFT_REPLICA")]
    replica: Option<PathBuf>,
    /// With --replica: print the nodes the replica already holds first, so the output is the
    /// whole room (or subscription) again.
    #[arg(long, requires = "replica")]
    from_start: bool,
    /// One JSON object per line: id, parents, depth, path, payload or payload_b64.
    #[arg(long)]
    json: bool,
    /// Exit after catch-up instead of following live nodes.
    #[arg(long)]
    once: bool,
    /// Only nodes whose path matches this pattern (`*` within a segment, `**` any depth);
    /// repeat for several. Without it, the whole room.
    #[arg(long = "subscribe", value_name = "PATTERN")]
    subscribe: Vec<String>,
}

/// Flags of `weft pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    target: Target,
    /// Replica file to write (an existing one is updated incrementally).
    #[arg(long)]
    out: PathBuf,
    /// Only nodes whose path matches this pattern; repeat for several. Give the same ones on
    /// every pull of a replica file: a pull without them copies the whole room.
    #[arg(long = "subscribe", value_name = "PATTERN")]
    subscribe: Vec<String>,
}

fn start(
    target: &Target,
    replica: Option<PathBuf>,
    subscribe: &[String],
) -> anyhow::Result<(Client, mpsc::Receiver<Event>, String)> {
    let (server, room) = target.resolve()?;
    let mut config = ClientConfig::new(server, room);
    config.replica_file = replica;
    config.subscribe = (!subscribe.is_empty()).then(|| subscribe.to_vec());
    let url = config.room_url();
    let (client, events) = Client::start(config).context("cannot start the client")?;
    Ok((client, events, url))
}

/// Whether a failure to reach the relay ends the command at once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// A one-shot command: a refused connection, an HTTP status or an unusable URL will not
    /// fix itself before the timeout, so say so now.
    Never,
    /// A long-running command: keep retrying until the timeout, logging each new reason once.
    UntilTimeout,
}

/// Reads events until the first reconciliation completes, or fails at `deadline` with the last
/// connection error seen (or at once, for a setup error under [`Retry::Never`]). Nodes that
/// arrive meanwhile go to `on_node`.
async fn until_synced(
    events: &mut mpsc::Receiver<Event>,
    deadline: Instant,
    url: &str,
    retry: Retry,
    mut on_node: impl FnMut(&Node) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut last_error = String::from("no answer");
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| {
                anyhow!("relay at {url} not reachable or not syncing in time (last: {last_error})")
            })?;
        match event {
            Some(Event::Synced { .. }) => return Ok(()),
            Some(Event::Node(node)) => on_node(&node)?,
            Some(Event::Disconnected { reason, kind }) => {
                if retry == Retry::Never && kind.is_setup_error() {
                    bail!("{}", setup_error(url, &reason, kind));
                }
                if reason != last_error {
                    tracing::warn!(%url, %reason, "relay not reachable; retrying");
                }
                last_error = reason;
            }
            Some(Event::RelayError(e)) => {
                tracing::warn!(code = e.code, detail = %e.detail, "relay error")
            }
            Some(Event::Reconciling { plan }) => tracing::debug!(?plan, "reconciling"),
            Some(Event::Connected | Event::Presence { .. } | Event::Subscribed { .. }) => {}
            None => bail!("client stopped"),
        }
    }
}

/// What a setup error means, naming the URL that was tried.
fn setup_error(url: &str, reason: &str, kind: DisconnectKind) -> String {
    match kind {
        DisconnectKind::Refused => {
            format!("cannot connect to {url}: connection refused (is `weft serve` running there?)")
        }
        DisconnectKind::Http(404) => format!(
            "{url} answered {reason}: there is no relay route there; --server takes the relay's \
             base URL (ws://HOST:PORT) or a room URL (ws://HOST:PORT/v1/rooms/ROOM)"
        ),
        DisconnectKind::Http(_) => {
            format!("{url} answered {reason} instead of accepting the WebSocket connection")
        }
        _ => format!("cannot connect to {url}: {reason}"),
    }
}

/// `weft push`.
pub async fn push(args: PushArgs) -> anyhow::Result<()> {
    // Before connecting: a bad path must not wait for the relay to be refused.
    if let Err(problem) = path_problem(&args.path, &NodeLimits::default()) {
        bail!("bad path {:?}: {problem}", args.path);
    }
    let payload = match (&args.data, &args.file) {
        (Some(data), _) => data.clone().into_bytes(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .context("cannot read stdin")?;
            buf
        }
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        (None, None) => bail!("give --data or --file"),
    };
    let deadline = Instant::now() + args.target.timeout;
    let (client, mut events, url) = start(&args.target, args.replica.clone(), &[])?;
    until_synced(&mut events, deadline, &url, Retry::Never, |_| Ok(())).await?;
    // The driver keeps emitting events; nobody reads them from here on.
    drop(events);
    let id = tokio::time::timeout_at(deadline, client.push(&args.path, payload))
        .await
        .map_err(|_| anyhow!("no ack from the relay in time"))??;
    println!("{id}");
    client.close().await.context("cannot save the replica")?;
    Ok(())
}

/// `weft tail`.
pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.target.timeout;
    let (client, mut events, url) = start(&args.target, args.replica.clone(), &args.subscribe)?;
    let print = |node: &Node| print_node(node, args.json);
    if args.from_start {
        // Only the replica file's nodes so far: arrivals are still queued as events.
        let held: Vec<Node> = client.with_replica(|r| r.nodes().cloned().collect());
        for node in &held {
            print(node)?;
        }
    }
    let retry = if args.once {
        Retry::Never
    } else {
        Retry::UntilTimeout
    };
    until_synced(&mut events, deadline, &url, retry, print).await?;
    if !args.once {
        let mut last_reason = None;
        while let Some(event) = events.recv().await {
            match event {
                Event::Node(node) => print(&node)?,
                // The client retries by itself, with backoff; say each new reason once.
                Event::Disconnected { reason, .. } if last_reason.as_ref() != Some(&reason) => {
                    tracing::warn!(%url, %reason, "disconnected; reconnecting");
                    last_reason = Some(reason);
                }
                Event::Synced { .. } => last_reason = None,
                _ => {}
            }
        }
    }
    client.close().await.context("cannot save the replica")?;
    Ok(())
}

/// `weft pull`.
pub async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.target.timeout;
    let (client, mut events, url) = start(&args.target, Some(args.out.clone()), &args.subscribe)?;
    // Each node event is a node new to the replica.
    let mut new = 0usize;
    let count = |_: &Node| {
        new += 1;
        Ok(())
    };
    until_synced(&mut events, deadline, &url, Retry::Never, count).await?;
    drop(events);
    let held = client.with_replica(|r| r.len());
    client
        .close()
        .await
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!(
        "pulled {}; {} now holds {}",
        nodes(new, "new "),
        args.out.display(),
        nodes(held, "")
    );
    Ok(())
}

fn print_node(node: &Node, json: bool) -> anyhow::Result<()> {
    let text = std::str::from_utf8(&node.payload).ok();
    if json {
        let mut line = serde_json::json!({
            "id": node.id.to_hex(),
            "parents": node.parents.iter().map(|p| p.to_hex()).collect::<Vec<_>>(),
            "depth": node.depth,
            "path": node.path,
        });
        match text {
            Some(text) => line["payload"] = text.into(),
            None => {
                line["payload_b64"] = base64::engine::general_purpose::STANDARD
                    .encode(&node.payload)
                    .into()
            }
        }
        if let Some(author) = &node.author {
            line["author"] = author.to_hex().into();
        }
        writeln!(std::io::stdout().lock(), "{line}")?;
    } else {
        let payload = match text {
            Some(text) => text.to_owned(),
            None => format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(&node.payload)
            ),
        };
        writeln!(
            std::io::stdout().lock(),
            "{} {} {}",
            node.id,
            node.path,
            payload
        )?;
    }
    Ok(())
}
