//! Durable writes and cold loads, against the release `weft serve` binary.
//!
//! 1. **Writes.** `--writers` connections each push one node per `pack` and wait for its `ack`,
//!    for `--secs` seconds. This runs twice in the same run: on a local directory store (group
//!    commit, every object fsynced before its ack) and on `memory://` (durability off). The
//!    bench prints acks per second and ack latency (p50/p99/max, from sending the pack to
//!    reading its ack). For the local store it also prints nodes per commit: acks divided by
//!    the manifest generations written.
//! 2. **Cold load.** `--nodes` nodes (default 1,000,000; one chain, ~100-byte payloads) are
//!    written to a local store, in commits of 10,000 nodes. A fresh relay then starts on that
//!    store. The bench times a first client from connecting to its `welcome` (the room loads
//!    in between: every pack read and checked, every node validated and indexed), then a second,
//!    empty client's full catch-up, and prints the relay's RSS before the load, after it and
//!    after the catch-up. This runs twice in the same run: with the relay's default payload
//!    budget (catch-up reads older encodings back from the packs) and with every encoding in
//!    memory.
//!
//! ```text
//! cargo bench --bench storage                        # 8 writers × 5 s, 1,000,000-node load
//! cargo bench --bench storage -- --json
//! cargo bench --bench storage -- --smoke             # 2 writers × 1 s, 20,000 nodes
//! ```
//!
//! Flags: `--writers N`, `--secs S`, `--nodes N`, `--window-ms MS` (the relay's
//! `--commit-window-ms`, default: the relay's default), `--json`, `--smoke`.

#![allow(clippy::disallowed_methods)] // A bench owns its clock.

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use weft::node::{Node, RoomId};
use weft::protocol::{Message, Outcome, Pack};
use weft::store::{PackStore, Store};

use common::{Flags, Relay};

/// Nodes per commit when the cold-load room is written.
const LOAD_COMMIT: usize = 10_000;

struct Settings {
    window_ms: Option<u64>,
    writers: usize,
    secs: u64,
    nodes: usize,
    json: bool,
}

/// One write run.
struct Writes {
    store: &'static str,
    acks: u64,
    secs: f64,
    latencies_us: Vec<u64>,
    commits: Option<u64>,
}

impl Writes {
    fn per_sec(&self) -> f64 {
        self.acks as f64 / self.secs
    }

    fn pct(&self, p: f64) -> f64 {
        common::percentile(&self.latencies_us, p * 100.0) as f64 / 1000.0
    }
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
    let flags = Flags::parse(&["writers", "secs", "nodes", "window-ms", "json", "smoke"]);
    let smoke = flags.has("smoke");
    let settings = Settings {
        window_ms: flags.has("window-ms").then(|| flags.value("window-ms", 2)),
        writers: flags.value("writers", if smoke { 2 } else { 8 }),
        secs: flags.value("secs", if smoke { 1 } else { 5 }),
        nodes: flags.value("nodes", if smoke { 20_000 } else { 1_000_000 }),
        json: flags.has("json"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let local = tempfile::tempdir()?;
    let durable = rt.block_on(writes(
        &settings,
        "local",
        local.path().to_str().unwrap_or(""),
    ))?;
    let commits = count_generations(local.path(), "bench-writes")?;
    let durable = Writes {
        commits: Some(commits),
        ..durable
    };
    let volatile = rt.block_on(writes(&settings, "memory", "memory://"))?;
    report_writes(&settings, &[&durable, &volatile]);

    let load = tempfile::tempdir()?;
    rt.block_on(cold_load(&settings, load.path()))?;
    Ok(())
}

/// Writers pushing for `settings.secs` against a relay on `store`.
async fn writes(settings: &Settings, name: &'static str, store: &str) -> anyhow::Result<Writes> {
    let mut extra = vec!["--store".to_owned(), store.to_owned()];
    if let Some(ms) = settings.window_ms {
        extra.extend(["--commit-window-ms".to_owned(), ms.to_string()]);
    }
    let relay = Relay::spawn(&extra, None)?;
    let url = relay.url("bench-writes");
    let stop = Instant::now() + Duration::from_secs(settings.secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..settings.writers {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            writer_loop(&url, writer, stop).await
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(Writes {
        store: name,
        acks: latencies.len() as u64,
        secs,
        latencies_us: latencies,
        commits: None,
    })
}

/// One writer: a chain of its own, one node per pack, each waiting for its ack.
async fn writer_loop(url: &str, writer: usize, stop: Instant) -> anyhow::Result<Vec<u64>> {
    let room = RoomId::new("bench-writes")?;
    let mut ws = common::connect(url, 64 * 1024).await?;
    common::join(&mut ws).await?;
    let mut latencies = Vec::new();
    let mut parent: Option<Node> = None;
    let mut number = 0u64;
    while Instant::now() < stop {
        number += 1;
        let parents: Vec<&Node> = parent.iter().collect();
        let payload = format!("writer {writer} node {number} {}", "x".repeat(64));
        let node = Node::child_of(&room, &parents, "bench/w", payload).context("node")?;
        let frame = Message::Pack(Pack {
            number,
            nodes: vec![node.clone()],
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
        parent = Some(node);
    }
    Ok(latencies)
}

/// Manifest generations written for `room` in a local store: one per commit.
fn count_generations(store: &std::path::Path, room: &str) -> anyhow::Result<u64> {
    let dir = store
        .join("rooms")
        .join(format!("r-{room}"))
        .join("manifest");
    let newest = std::fs::read_dir(&dir)
        .with_context(|| format!("no manifests in {}", dir.display()))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_suffix(".json")?.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0);
    Ok(newest)
}

fn report_writes(settings: &Settings, runs: &[&Writes]) {
    if settings.json {
        for w in runs {
            println!(
                "{}",
                json!({
                    "bench": "storage_writes",
                    "store": w.store,
                    "writers": settings.writers,
                    "secs": w.secs,
                    "acks": w.acks,
                    "acks_per_s": w.per_sec(),
                    "ack_p50_ms": w.pct(0.50),
                    "ack_p99_ms": w.pct(0.99),
                    "ack_max_ms": w.pct(1.0),
                    "commits": w.commits,
                    "nodes_per_commit": w.commits.map(|c| w.acks as f64 / c.max(1) as f64),
                })
            );
        }
        return;
    }
    println!(
        "durable writes: {} writers, one node per pack, each waits for its ack, {} s per store",
        settings.writers, settings.secs
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>16}",
        "store", "acks/s", "p50 ms", "p99 ms", "max ms", "nodes/commit"
    );
    for w in runs {
        let per_commit = w
            .commits
            .map(|c| format!("{:.1}", w.acks as f64 / c.max(1) as f64))
            .unwrap_or_else(|| "—".into());
        println!(
            "{:<8} {:>10.0} {:>10.2} {:>10.2} {:>10.2} {:>16}",
            w.store,
            w.per_sec(),
            w.pct(0.50),
            w.pct(0.99),
            w.pct(1.0),
            per_commit
        );
    }
    if let [durable, volatile] = runs {
        println!(
            "durable / memory: {:.2}× the acks per second",
            durable.per_sec() / volatile.per_sec()
        );
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
