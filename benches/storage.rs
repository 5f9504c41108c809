//! Durable writes and cold loads.
//!
//! 1. **Writes.** For each store and each writer count (`--writers`, default 8 and 64), the
//!    relay runs in this process (`weft::server::run` over a `PackStore`) and that many
//!    connections each push one node per `pack` and wait for its `ack`, for `--secs` seconds.
//!    The stores, in one run: `memory://` (durability off), a local directory (every object
//!    fsynced before its ack), an s3s-fs S3-compatible server the bench starts itself (skipped
//!    with a note if s3s-fs is not installed), and process memory behind a fixed latency added
//!    to every object_store call (`--latency-ms`, default 20: an S3-like store). Every store
//!    sits behind a wrapper that counts its calls: those made while a commit runs are the round
//!    trips an ack waits for. Each row prints acks per second, ack latency (p50/p99, from
//!    sending the pack to reading its ack), broadcast latency seen by a passive receiver (from
//!    the writer's send to the receiver's read), store round trips per commit and the mean
//!    latency of one, and acks per second as a ratio to `memory://` and to the closed-loop
//!    bound `writers / (round trips per commit × call latency)` (with the nominal latency for
//!    the slow store).
//!
//!    On the slow store the bench also probes the room's handshake and catch-up, first while
//!    the room is idle, then while the writers commit: connect → `welcome`, `hello` →
//!    `catch_up_done` of an empty client whose subscription matches nothing (the handshake
//!    alone), and `hello` → `catch_up_done` of one subscribed to the room's 1,000 seed nodes
//!    (a catch-up). Each room is seeded with those nodes before the relay starts.
//! 2. **Cold load.** `--nodes` nodes (default 1,000,000; one chain, ~100-byte payloads) are
//!    written to a local store, in commits of 10,000 nodes. A fresh release `weft serve` then
//!    starts on that store. The bench times a first client from connecting to its `welcome`
//!    (the room loads in between: every pack read and checked, every node validated and
//!    indexed), then a second, empty client's full catch-up, and prints the relay's RSS before
//!    the load, after it and after the catch-up. This runs twice in the same run: with the
//!    relay's default payload budget (catch-up reads older encodings back from the packs) and
//!    with every encoding in memory.
//!
//! ```text
//! cargo bench --bench storage                        # 8 and 64 writers × 5 s, 1,000,000-node load
//! cargo bench --bench storage -- --json
//! cargo bench --bench storage -- --smoke             # 8 writers × 1 s, 20,000 nodes
//! ```
//!
//! Flags: `--writers N[,N…]`, `--secs S`, `--latency-ms MS`, `--nodes N`, `--window-ms MS`
//! (the relay's commit window, default: the relay's default), `--json`, `--smoke`.

#![allow(clippy::disallowed_methods)] // A bench owns its clock.

mod common;
#[path = "storage/objects.rs"]
mod objects;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::SinkExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use weft::node::{Node, NodeId, RoomId};
use weft::protocol::{
    self, Capabilities, Credit, Hello, Message, Outcome, PROTOCOL_VERSION, Pack, Plan, SyncHints,
};
use weft::server::{ServerConfig, ServerStats};
use weft::store::{PackStore, Store};

use common::{Flags, Output, Relay};
use objects::{CallStats, Commits, Measured, S3Server};

/// Nodes per commit when the cold-load room is written.
const LOAD_COMMIT: usize = 10_000;

/// The room the writers write to.
const WRITE_ROOM: &str = "bench-writes";

/// Nodes each write room holds before the writers start, under `seed/`: what a catch-up probe
/// fetches.
const SEED_NODES: usize = 1_000;

/// Probe pairs (a handshake, then a catch-up) run in the idle room.
const IDLE_PROBES: usize = 100;

/// Pause between probe pairs while the writers commit.
const PROBE_PAUSE: Duration = Duration::from_millis(10);

struct Settings {
    window_ms: Option<u64>,
    writers: Vec<u64>,
    secs: u64,
    latency_ms: u64,
    nodes: usize,
    json: bool,
    smoke: bool,
}

/// A store the writes run on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Local,
    S3,
    Slow,
}

/// One write run: a store and a writer count.
struct Writes {
    store: String,
    writers: usize,
    acks: u64,
    secs: f64,
    latencies_us: Vec<u64>,
    broadcast_us: Vec<u64>,
    commits: u64,
    round_trips: f64,
    call_latency_s: f64,
    commit_latency_s: f64,
    other_calls: u64,
    /// The closed-loop bound on acks per second.
    bound: f64,
    probes: Option<(Probes, Probes)>,
}

impl Writes {
    fn per_sec(&self) -> f64 {
        self.acks as f64 / self.secs
    }
}

/// Milliseconds at percentile `p` (0..=100) of microsecond samples (sorted here).
fn pct_ms(samples: &[u64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    common::percentile(&sorted, p) as f64 / 1000.0
}

/// Handshake and catch-up samples, in microseconds.
#[derive(Default)]
struct Probes {
    welcome_us: Vec<u64>,
    handshake_us: Vec<u64>,
    catch_up_us: Vec<u64>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storage bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let flags = Flags::parse(&[
        "writers",
        "secs",
        "latency-ms",
        "nodes",
        "window-ms",
        "json",
        "smoke",
    ]);
    let smoke = flags.has("smoke");
    let settings = Settings {
        window_ms: flags.has("window-ms").then(|| flags.value("window-ms", 2)),
        writers: flags.list("writers", if smoke { &[8] } else { &[8, 64] }),
        secs: flags.value("secs", if smoke { 1 } else { 5 }),
        latency_ms: flags.value("latency-ms", 20),
        nodes: flags.value("nodes", if smoke { 20_000 } else { 1_000_000 }),
        json: flags.has("json"),
        smoke,
    };
    let out = Output {
        json: settings.json,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let s3 = S3Server::start()?;
    if s3.is_none() {
        out.note("s3s-fs not found (cargo install s3s-fs@0.14.1 --features binary --locked): its rows are skipped");
    }
    let mut runs = Vec::new();
    for backend in [Backend::Memory, Backend::Local, Backend::S3, Backend::Slow] {
        if backend == Backend::S3 && s3.is_none() {
            continue;
        }
        for &writers in &settings.writers {
            let writers = usize::try_from(writers)?;
            let number = runs.len();
            let run = rt.block_on(writes(&settings, backend, s3.as_ref(), writers, number))?;
            runs.push(run);
        }
    }
    report_writes(&settings, &out, &runs);

    let load = tempfile::tempdir()?;
    rt.block_on(cold_load(&settings, load.path()))?;
    Ok(())
}

/// The objects a write run stores to, with its name and the latency added to every call.
fn objects_for(
    settings: &Settings,
    backend: Backend,
    s3: Option<&S3Server>,
    dir: &std::path::Path,
) -> anyhow::Result<(String, Arc<dyn ObjectStore>, Duration)> {
    Ok(match backend {
        Backend::Memory => (
            "memory".into(),
            Arc::new(object_store::memory::InMemory::new()),
            Duration::ZERO,
        ),
        Backend::Local => (
            "local".into(),
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir)?.with_fsync(true)),
            Duration::ZERO,
        ),
        Backend::S3 => (
            "s3s-fs".into(),
            s3.context("no s3s-fs server")?.objects()?,
            Duration::ZERO,
        ),
        Backend::Slow => (
            format!("+{} ms", settings.latency_ms),
            Arc::new(object_store::memory::InMemory::new()),
            Duration::from_millis(settings.latency_ms),
        ),
    })
}

/// `writers` writers pushing for `settings.secs` against an in-process relay on `backend`,
/// with a passive receiver, and probes on the slow store.
async fn writes(
    settings: &Settings,
    backend: Backend,
    s3: Option<&S3Server>,
    writers: usize,
    number: usize,
) -> anyhow::Result<Writes> {
    let dir = tempfile::tempdir()?;
    let (name, inner, delay) = objects_for(settings, backend, s3, dir.path())?;
    let stats = Arc::new(CallStats::default());
    let objects = Arc::new(Measured {
        inner,
        delay,
        stats: stats.clone(),
    });
    // Each run in a fresh prefix: s3s-fs serves one bucket for the whole bench.
    let prefix = ObjectPath::from(format!("run-{number}"));
    let packs = PackStore::new(objects, prefix, format!("{name} (bench)"));
    let room = RoomId::new(WRITE_ROOM)?;
    packs.append_nodes(&room, 1, &seed_nodes(&room)?).await?;
    let store: Arc<dyn Store> = Arc::new(Commits {
        inner: packs,
        stats: stats.clone(),
    });
    let mut config = ServerConfig::default();
    if let Some(ms) = settings.window_ms {
        config.rooms.commit_window = Duration::from_millis(ms);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/v1/rooms/{WRITE_ROOM}", listener.local_addr()?);
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(weft::server::run(
        listener,
        config,
        store,
        Arc::new(ServerStats::default()),
        async move {
            let _ = stopped.await;
        },
    ));

    let probing = backend == Backend::Slow;
    let idle_probes = if probing {
        let count = if settings.smoke { 5 } else { IDLE_PROBES };
        let mut probes = Probes::default();
        // The first connect loads the room: not a sample.
        probe(&url, "seed/**").await?;
        for _ in 0..count {
            probe_pair(&url, &mut probes).await?;
        }
        Some(probes)
    } else {
        None
    };

    let (receiver_done, receiver_stop) = tokio::sync::watch::channel(false);
    let receiver = tokio::spawn(receiver_loop(url.clone(), receiver_stop));
    let stop = Instant::now() + Duration::from_secs(settings.secs);
    let before = (
        stats.commits.load(std::sync::atomic::Ordering::Relaxed),
        stats.commit_us.load(std::sync::atomic::Ordering::Relaxed),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            writer_loop(&url, writer, stop).await
        }));
    }
    let busy = probing.then(|| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut probes = Probes::default();
            while Instant::now() < stop {
                probe_pair(&url, &mut probes).await?;
                tokio::time::sleep(PROBE_PAUSE).await;
            }
            Ok::<_, anyhow::Error>(probes)
        })
    });
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let busy = match busy {
        Some(task) => Some(task.await??),
        None => None,
    };
    // Broadcasts of the last acks are on their way: give them a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = receiver_done.send(true);
    let broadcast_us = receiver.await??;
    let _ = stop_server.send(());
    server.await??;

    use std::sync::atomic::Ordering::Relaxed;
    let commits = stats.commits.load(Relaxed) - before.0;
    let commit_us = stats.commit_us.load(Relaxed) - before.1;
    let round_trips = stats.round_trips_per_commit();
    let call_latency_s = if delay.is_zero() {
        stats.call_latency_s()
    } else {
        delay.as_secs_f64()
    };
    let bound = writers as f64 / (round_trips * call_latency_s).max(1e-9);
    Ok(Writes {
        store: name,
        writers,
        acks: latencies.len() as u64,
        secs,
        latencies_us: latencies,
        broadcast_us,
        commits,
        round_trips,
        call_latency_s,
        commit_latency_s: commit_us as f64 / 1e6 / commits.max(1) as f64,
        other_calls: stats.other_calls.load(Relaxed),
        bound,
        probes: idle_probes.zip(busy),
    })
}

/// The nodes a write room starts with: one chain under `seed/`.
fn seed_nodes(room: &RoomId) -> anyhow::Result<Vec<Node>> {
    let mut nodes: Vec<Node> = Vec::with_capacity(SEED_NODES);
    for i in 0..SEED_NODES {
        let parents: Vec<&Node> = nodes.last().into_iter().collect();
        let payload = format!("seed {i:>6} {}", "s".repeat(88));
        nodes.push(Node::child_of(room, &parents, "seed/n", payload).context("seed node")?);
    }
    Ok(nodes)
}

/// One writer: a chain of its own, one node per pack, each waiting for its ack. Each node
/// carries its send time for the receiver.
async fn writer_loop(url: &str, writer: usize, stop: Instant) -> anyhow::Result<Vec<u64>> {
    let room = RoomId::new(WRITE_ROOM)?;
    let mut ws = common::connect(url, 64 * 1024).await?;
    common::join(&mut ws).await?;
    let mut latencies = Vec::new();
    let mut parent: Option<(NodeId, u64)> = None;
    let mut number = 0u64;
    while Instant::now() < stop {
        number += 1;
        let node = common::timed_node(&room, parent, number, common::now_ns(), 96);
        let depth = node.depth;
        let id = node.id;
        let frame = Message::Pack(Pack {
            number,
            nodes: vec![node],
        })
        .encode()?;
        let sent = Instant::now();
        ws.send(WsMessage::Binary(frame)).await?;
        loop {
            match common::next_frame(&mut ws).await? {
                Message::Ack(ack) if ack.number == number => {
                    if !matches!(ack.outcomes.as_slice(), [Outcome::Accepted(_)]) {
                        bail!("writer {writer}: {:?}", ack.outcomes);
                    }
                    break;
                }
                // Other writers' nodes.
                Message::Broadcast(_) => {}
                other => bail!("writer {writer}: unexpected {:?}", other.message_type()),
            }
        }
        latencies.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
        parent = Some((id, depth));
    }
    Ok(latencies)
}

/// A passive receiver: joins, then notes each broadcast node's latency from its writer's send
/// until `stop`.
async fn receiver_loop(
    url: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<u64>> {
    let mut ws = common::connect(&url, 256 * 1024).await?;
    common::join(&mut ws).await?;
    let mut latencies = Vec::new();
    loop {
        let frame = tokio::select! {
            frame = common::next_frame(&mut ws) => frame?,
            _ = stop.changed() => return Ok(latencies),
        };
        if let Message::Broadcast(broadcast) = frame {
            let now = common::now_ns();
            for node in &broadcast.nodes {
                if let Some((sent, _)) = common::node_stamp(node) {
                    latencies.push(now.saturating_sub(sent) / 1000);
                }
            }
        }
    }
}

/// A handshake probe, then a catch-up probe.
async fn probe_pair(url: &str, probes: &mut Probes) -> anyhow::Result<()> {
    let (welcome, handshake) = probe(url, "probe/none/**").await?;
    probes.welcome_us.push(welcome);
    probes.handshake_us.push(handshake);
    let (_, catch_up) = probe(url, "seed/**").await?;
    probes.catch_up_us.push(catch_up);
    Ok(())
}

/// A fresh, empty client subscribed to `pattern`: microseconds from connecting to its
/// `welcome`, and from sending `hello` to `catch_up_done`.
async fn probe(url: &str, pattern: &str) -> anyhow::Result<(u64, u64)> {
    const WINDOW: u64 = 1 << 20;
    let us = |since: Instant| u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
    let connecting = Instant::now();
    let mut ws = common::connect(url, 256 * 1024).await?;
    let hello = Message::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities: Capabilities::SUBSCRIPTIONS,
        hints: SyncHints::default(),
        credit: WINDOW,
        subscribe: Some(vec![pattern.to_owned()]),
    })
    .encode()?;
    let sent = Instant::now();
    ws.send(WsMessage::Binary(hello)).await?;
    let mut welcome = None;
    loop {
        let frame = common::next_binary(&mut ws).await?;
        match protocol::decode(&frame)? {
            Message::Welcome(w) => {
                welcome = Some(us(connecting));
                if w.plan == Plan::InSync {
                    let done = us(sent);
                    return Ok((welcome.unwrap_or(done), done));
                }
            }
            Message::Batch(_) => {
                let credit = Message::Credit(Credit {
                    bytes: frame.len() as u64,
                })
                .encode()?;
                ws.send(WsMessage::Binary(credit)).await?;
            }
            Message::CatchUpDone(_) => {
                let done = us(sent);
                let welcome = welcome.context("catch_up_done before welcome")?;
                return Ok((welcome, done));
            }
            // Live traffic and subscription notices may come meanwhile.
            _ => {}
        }
    }
}

fn report_writes(settings: &Settings, out: &Output, runs: &[Writes]) {
    let memory = |writers: usize| {
        runs.iter()
            .find(|w| w.store == "memory" && w.writers == writers)
            .map_or(0.0, Writes::per_sec)
    };
    for w in runs {
        out.record(json!({
            "bench": "storage_writes",
            "store": w.store,
            "writers": w.writers,
            "secs": w.secs,
            "acks": w.acks,
            "acks_per_s": w.per_sec(),
            "ack_p50_ms": pct_ms(&w.latencies_us, 50.0),
            "ack_p99_ms": pct_ms(&w.latencies_us, 99.0),
            "broadcast_p50_ms": pct_ms(&w.broadcast_us, 50.0),
            "broadcast_p99_ms": pct_ms(&w.broadcast_us, 99.0),
            "commits": w.commits,
            "nodes_per_commit": w.acks as f64 / w.commits.max(1) as f64,
            "round_trips_per_commit": w.round_trips,
            "call_latency_ms": w.call_latency_s * 1e3,
            "commit_latency_ms": w.commit_latency_s * 1e3,
            "background_calls": w.other_calls,
            "bound_acks_per_s": w.bound,
            "vs_bound": w.per_sec() / w.bound,
            "vs_memory": w.per_sec() / memory(w.writers).max(1e-9),
        }));
    }
    out.note(format!(
        "durable writes: one node per pack, each writer waits for its ack, {} s per row; bound = \
         writers / (store round trips per commit × store call latency)",
        settings.secs
    ));
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|w| {
            vec![
                w.store.clone(),
                w.writers.to_string(),
                format!("{:.0}", w.per_sec()),
                format!("{:.2}", pct_ms(&w.latencies_us, 50.0)),
                format!("{:.2}", pct_ms(&w.latencies_us, 99.0)),
                format!("{:.2}", pct_ms(&w.broadcast_us, 99.0)),
                format!("{:.1}", w.acks as f64 / w.commits.max(1) as f64),
                format!("{:.2}", w.round_trips),
                format!("{:.3}", w.call_latency_s * 1e3),
                format!("{:.2}", w.commit_latency_s * 1e3),
                format!("{:.0}", w.bound),
                format!("{:.2}", w.per_sec() / w.bound),
                format!("{:.2}", w.per_sec() / memory(w.writers).max(1e-9)),
            ]
        })
        .collect();
    out.table(
        &[
            "store",
            "writers",
            "acks/s",
            "ack p50 ms",
            "ack p99 ms",
            "bcast p99 ms",
            "nodes/commit",
            "RT/commit",
            "call ms",
            "commit ms",
            "bound/s",
            "× bound",
            "× memory",
        ],
        &rows,
    );
    for w in runs {
        let Some((idle, busy)) = &w.probes else {
            continue;
        };
        out.note(format!(
            "{} store, {} writers: p99 (ms) idle room → committing room ({} → {} probes)",
            w.store,
            w.writers,
            idle.welcome_us.len(),
            busy.welcome_us.len()
        ));
        let line = |what: &str, idle: &[u64], busy: &[u64]| {
            let (i, b) = (pct_ms(idle, 99.0), pct_ms(busy, 99.0));
            format!("  {what:<44} {i:>7.2} → {b:>7.2}  (+{:.2})", b - i)
        };
        out.note(line(
            "connect → welcome",
            &idle.welcome_us,
            &busy.welcome_us,
        ));
        out.note(line(
            "hello → catch_up_done, nothing subscribed",
            &idle.handshake_us,
            &busy.handshake_us,
        ));
        out.note(line(
            &format!("catch-up of {SEED_NODES} nodes (hello → done)"),
            &idle.catch_up_us,
            &busy.catch_up_us,
        ));
        out.note(format!(
            "  broadcast p99 {:.2} ms vs one commit {:.2} ms + 2 ms",
            pct_ms(&w.broadcast_us, 99.0),
            w.commit_latency_s * 1e3
        ));
        out.record(json!({
            "bench": "storage_probes",
            "store": w.store,
            "writers": w.writers,
            "idle_welcome_p99_ms": pct_ms(&idle.welcome_us, 99.0),
            "busy_welcome_p99_ms": pct_ms(&busy.welcome_us, 99.0),
            "idle_handshake_p99_ms": pct_ms(&idle.handshake_us, 99.0),
            "busy_handshake_p99_ms": pct_ms(&busy.handshake_us, 99.0),
            "idle_catch_up_p99_ms": pct_ms(&idle.catch_up_us, 99.0),
            "busy_catch_up_p99_ms": pct_ms(&busy.catch_up_us, 99.0),
            "broadcast_p99_ms": pct_ms(&w.broadcast_us, 99.0),
            "commit_latency_ms": w.commit_latency_s * 1e3,
        }));
    }
}

/// Payload budgets the cold load runs with: the relay's default, and one no room reaches
/// (every encoding stays in memory).
const LOAD_BUDGETS: [(&str, Option<u64>); 2] =
    [("default (64 MiB)", None), ("unlimited", Some(1 << 20))];

/// Writes a `settings.nodes`-node room; then, for each payload budget, times a fresh relay's
/// first `welcome` on it and a full catch-up of an empty client.
async fn cold_load(settings: &Settings, dir: &std::path::Path) -> anyhow::Result<()> {
    let room = RoomId::new("bench-load")?;
    let location = dir.to_str().context("store path")?;
    let store = Arc::new(weft::store::open(location)?);
    let written = Instant::now();
    write_chain(&store, &room, settings.nodes).await?;
    let write_secs = written.elapsed().as_secs_f64();
    // Let a background compaction finish, as it would on a relay that kept running.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let objects = std::fs::read_dir(dir.join("rooms/r-bench-load/packs"))?.count();
    if !settings.json {
        println!(
            "cold load: {} nodes in {} pack objects (written in {write_secs:.1} s)",
            settings.nodes, objects
        );
    }
    for (label, budget_mib) in LOAD_BUDGETS {
        let mut extra = vec!["--store".to_owned(), location.to_owned()];
        if let Some(mib) = budget_mib {
            extra.extend(["--payload-budget-mib".to_owned(), mib.to_string()]);
        }
        let relay = Relay::spawn(&extra, None)?;
        let rss_before = relay.rss_kib()?;
        let started = Instant::now();
        let mut ws = common::connect(&relay.url("bench-load"), 64 * 1024).await?;
        let welcome = common::send_hello(&mut ws, 0).await?;
        let load_secs = started.elapsed().as_secs_f64();
        if welcome.seq != settings.nodes as u64 {
            bail!(
                "the loaded room has {} nodes, not {}",
                welcome.seq,
                settings.nodes
            );
        }
        let rss_loaded = relay.rss_kib()?;
        // A second, empty client reads the whole room: with a budget, most of it comes back
        // from the packs by range reads.
        let started = Instant::now();
        let mut reader = common::connect(&relay.url("bench-load"), 1 << 20).await?;
        let (_, through) = common::join(&mut reader).await?;
        let catch_up_secs = started.elapsed().as_secs_f64();
        if through != settings.nodes as u64 {
            bail!("the catch-up ended at {through}, not {}", settings.nodes);
        }
        let rss_caught_up = relay.rss_kib()?;
        drop((ws, reader));
        if settings.json {
            println!(
                "{}",
                json!({
                    "bench": "storage_cold_load",
                    "payload_budget": label,
                    "nodes": settings.nodes,
                    "pack_objects": objects,
                    "write_s": write_secs,
                    "load_to_welcome_s": load_secs,
                    "full_catch_up_s": catch_up_secs,
                    "rss_before_kib": rss_before,
                    "rss_loaded_kib": rss_loaded,
                    "rss_after_catch_up_kib": rss_caught_up,
                })
            );
        } else {
            println!(
                "  payload budget {label}: first welcome after {load_secs:.2} s; full catch-up \
                 of an empty client {catch_up_secs:.2} s; relay RSS {} MiB before, {} MiB \
                 loaded, {} MiB after the catch-up",
                rss_before / 1024,
                rss_loaded / 1024,
                rss_caught_up / 1024
            );
        }
    }
    Ok(())
}

/// One chain of `n` nodes with ~100-byte payloads, committed `LOAD_COMMIT` at a time.
async fn write_chain(store: &PackStore, room: &RoomId, n: usize) -> anyhow::Result<()> {
    let epoch = 1;
    let mut parent: Option<Node> = None;
    let mut batch = Vec::with_capacity(LOAD_COMMIT);
    for i in 0..n {
        let parents: Vec<&Node> = parent.iter().collect();
        let payload = format!("node {i:>10} {}", "y".repeat(84));
        let node = Node::child_of(room, &parents, "bench/load", payload).context("node")?;
        parent = Some(node.clone());
        batch.push(node);
        if batch.len() == LOAD_COMMIT || i + 1 == n {
            store.append_nodes(room, epoch, &batch).await?;
            batch.clear();
        }
    }
    Ok(())
}
