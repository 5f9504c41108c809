//! Catch-up throughput of a fresh client against a raw WebSocket stream of the same bytes.
//!
//! A room is populated with `--nodes` nodes (default 100,000; one chain, ~100-byte payloads)
//! through `pack` frames. Then a fresh client catches up from nothing, timed from `hello` to
//! `catch_up_done`, in three forms:
//!
//! - **relay → read only**: tokio-tungstenite speaking `weft::protocol` directly: `hello` with
//!   empty hints and a credit window (`--window`, default 4 MiB, the relay's cap) and a
//!   `credit` frame returning each batch's bytes as it arrives (as the reference client does);
//!   the timed loop only reads each frame's type, and every batch is decoded and checked after
//!   the clock stops. This is the like-for-like comparison with the raw stream below;
//! - **relay → decode inline**: the same client decoding every `batch` as it arrives;
//! - **relay → weft Client**: the real `weft::client::Client` until `wait_synced` (it validates
//!   and stores every node in its replica and emits an event per node).
//!
//! In the same run, the frames the relay sent (captured from the first read-only run: every
//! `batch` plus `catch_up_done`) are replayed by a plain tokio-tungstenite server to a client
//! that only reads them: the **raw stream** ceiling; and once more to a client that also
//! decodes them, the ceiling for a decoding client. Ratios are medians of `--iters`
//! interleaved runs (target: relay ≥ 70% of the raw stream of the same bytes).
//!
//! Fairness: the relay runs in this process (`weft::server::run` with the default
//! `ServerConfig` and the in-memory store) on its own thread and single-threaded tokio runtime
//! pinned to CPU 0; the raw server gets exactly the same kind of thread, runtime and CPU. The
//! clients run on the main thread, pinned to CPU 1. Both servers write one frame per `send`.
//! Every run is verified (node count, distinct ids, set digest equal to the room's); a wrong
//! result exits non-zero.
//!
//! ```text
//! cargo bench --bench catchup                      # 100,000 nodes, 3 iterations
//! cargo bench --bench catchup -- --nodes 1000000 --iters 1 --json
//! cargo bench --bench catchup -- --smoke           # 2,000 nodes, one iteration
//! ```
//!
//! Flags: `--nodes N`, `--payload BYTES`, `--window BYTES`, `--iters K`, `--json`, `--smoke`.

#![allow(clippy::disallowed_methods)] // A bench owns its clock.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use weft::client::{Client, ClientConfig};
use weft::node::{Node, NodeId, RoomId};
use weft::protocol::{self, Credit, Message, Outcome, Pack, Plan};
use weft::recon::SetDigest;
use weft::server::{ServerConfig, ServerStats};
use weft::store::PackStore;

use common::{Flags, Output, median, si};

const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
const ROOM: &str = "catchup";

fn main() -> ExitCode {
    let flags = Flags::parse(&["nodes", "payload", "window", "iters", "json", "smoke"]);
    let out = Output {
        json: flags.has("json"),
    };
    match run(&flags, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("catchup bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A server on its own pinned thread and single-threaded runtime.
struct ServerThread {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pinned: bool,
}

impl ServerThread {
    fn start<F, Fut>(name: &str, serve: F) -> anyhow::Result<Self>
    where
        F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let pinned = common::pin_current_thread(SERVER_CPU);
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _told = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::bind("127.0.0.1:0").await {
                        Ok(listener) => {
                            let addr = listener.local_addr().map_err(|e| e.to_string());
                            let _told = ready_tx.send(addr.map(|a| (a, pinned)));
                            serve(listener, stop_rx).await;
                        }
                        Err(e) => {
                            let _told = ready_tx.send(Err(e.to_string()));
                        }
                    }
                });
            })?;
        let (addr, pinned) = ready_rx
            .recv()
            .context("server thread died")?
            .map_err(anyhow::Error::msg)?;
        Ok(Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
            pinned,
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _already_stopped = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _panicked = thread.join();
        }
    }
}

/// One timed catch-up.
struct Run {
    secs: f64,
    nodes: u64,
    bytes: u64,
}

fn run(flags: &Flags, out: &Output) -> anyhow::Result<()> {
    let smoke = flags.has("smoke");
    let count: u64 = flags.value("nodes", if smoke { 2_000 } else { 100_000 });
    let payload: usize = flags.value("payload", 100);
    let window: u64 = flags.value("window", 4 << 20);
    let iters: usize = flags.value("iters", if smoke { 1 } else { 3 });
    ensure!(
        count > 0 && iters > 0,
        "--nodes and --iters must be positive"
    );

    common::now_ns();
    let client_pinned = common::pin_current_thread(CLIENT_CPU);
    let relay = ServerThread::start("relay", |listener, stop| async move {
        let stats = Arc::new(ServerStats::default());
        let store = Arc::new(PackStore::memory());
        let shutdown = async move {
            let _stopped = stop.await;
        };
        if let Err(e) =
            weft::server::run(listener, ServerConfig::default(), store, stats, shutdown).await
        {
            eprintln!("relay failed: {e}");
        }
    })?;
    let frames: Arc<Mutex<Arc<Vec<Bytes>>>> = Arc::default();
    let raw = {
        let frames = frames.clone();
        ServerThread::start("raw", move |listener, stop| {
            raw_server(listener, stop, frames)
        })?
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let base = format!("ws://{}", relay.addr);
        let url = format!("{base}/v1/rooms/{ROOM}");
        let room = RoomId::new(ROOM)?;

        // Populate.
        let nodes = make_nodes(&room, count, payload);
        let expected_digest = SetDigest::of(nodes.iter().map(|n| &n.id));
        let expected_ids: HashSet<NodeId> = nodes.iter().map(|n| n.id).collect();
        let started = Instant::now();
        populate(&url, &nodes).await?;
        let populate_secs = started.elapsed().as_secs_f64();
        drop(nodes);
        out.note(format!(
            "catchup: {count} nodes ({payload} B payload) populated in {populate_secs:.2} s \
             ({}/s through pack+ack); servers {}, clients {}; window {window} B; {iters} \
             iteration(s), medians",
            si(count as f64 / populate_secs),
            if relay.pinned && raw.pinned {
                format!("pinned to CPU {SERVER_CPU}")
            } else {
                "not pinned".into()
            },
            if client_pinned {
                format!("pinned to CPU {CLIENT_CPU}")
            } else {
                "not pinned".into()
            },
        ));

        let mut relay_read = Vec::new();
        let mut relay_raw = Vec::new();
        let mut relay_client = Vec::new();
        let mut raw_read = Vec::new();
        let mut raw_decode = Vec::new();
        let raw_url = format!("ws://{}/", raw.addr);
        let busy0 = common::machine_busy();
        let own0 = common::cpu_time(std::process::id());
        let wall0 = Instant::now();
        for iter in 0..iters {
            let (run, captured) =
                relay_raw_client(&url, window, count, &expected_ids, expected_digest, false)
                    .await?;
            relay_read.push(run);
            let (run, _) =
                relay_raw_client(&url, window, count, &expected_ids, expected_digest, true).await?;
            relay_raw.push(run);
            if iter == 0 {
                *frames.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(captured);
            }
            let stream_bytes = relay_raw.last().map_or(0, |r: &Run| r.bytes);
            relay_client.push(
                weft_client(&base, &room, window, count, expected_digest, stream_bytes).await?,
            );
            raw_read.push(raw_stream(&raw_url, count, false).await?);
            raw_decode.push(raw_stream(&raw_url, count, true).await?);
        }
        let other = common::machine_busy()
            .saturating_sub(busy0)
            .saturating_sub(common::cpu_time(std::process::id()).saturating_sub(own0));
        let other_pct = 100.0 * other.as_secs_f64() / wall0.elapsed().as_secs_f64();
        let captured = frames.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let frame_count = captured.len();
        let max_frame = captured.iter().map(Bytes::len).max().unwrap_or(0);
        let encode = encode_cost(&captured, iters)?;
        let splice = splice_cost(&captured, iters)?;

        let rows_data = [
            ("relay → read only (decode after)", &relay_read),
            ("relay → raw client, decode inline", &relay_raw),
            ("relay → weft::client::Client", &relay_client),
            ("raw stream → read only (ceiling)", &raw_read),
            ("raw stream → read + decode", &raw_decode),
        ];
        let med = |runs: &Vec<Run>| median(&runs.iter().map(|r| r.secs).collect::<Vec<_>>());
        let ceiling = med(&raw_read);
        let decode_ceiling = med(&raw_decode);
        let mut rows = Vec::new();
        for (name, runs) in rows_data {
            let secs = med(runs);
            let bytes = runs.first().map_or(0, |r| r.bytes);
            let nodes = runs.first().map_or(0, |r| r.nodes);
            let all: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.1}", r.secs * 1e3))
                .collect();
            out.record(json!({
                "bench": "catchup",
                "variant": name,
                "nodes": nodes,
                "bytes": bytes,
                "frames": frame_count,
                "secs_median": secs,
                "secs_all": runs.iter().map(|r| r.secs).collect::<Vec<_>>(),
                "nodes_per_s": nodes as f64 / secs,
                "mb_per_s": bytes as f64 / secs / 1e6,
                "ratio_vs_raw_read": ceiling / secs,
                "ratio_vs_raw_decode": decode_ceiling / secs,
                "window": window,
                "server_pinned_cpu": (relay.pinned && raw.pinned).then_some(SERVER_CPU),
                "client_pinned_cpu": client_pinned.then_some(CLIENT_CPU),
            }));
            rows.push(vec![
                name.to_owned(),
                format!("{:.1}", secs * 1e3),
                all.join(" "),
                si(nodes as f64 / secs),
                format!("{:.1}", bytes as f64 / secs / 1e6),
                format!("{:.0}%", 100.0 * ceiling / secs),
                format!("{:.0}%", 100.0 * decode_ceiling / secs),
            ]);
        }
        out.note(format!(
            "stream: {frame_count} frames, {} bytes of batches (largest frame {max_frame} B); \
             other processes used {other_pct:.0}% of a CPU meanwhile",
            relay_read.first().map_or(0, |r| r.bytes)
        ));
        out.table(
            &[
                "variant",
                "ms",
                "ms (all runs)",
                "nodes/s",
                "MB/s",
                "vs raw read",
                "vs raw+decode",
            ],
            &rows,
        );
        out.note(format!(
            "diagnostic: cloning the nodes of those batches and encoding them again (what the \
             relay's room task does per batch) takes {:.1} ms on one core here ({}/s)",
            encode * 1e3,
            si(count as f64 / encode),
        ));
        out.note(format!(
            "diagnostic: building the same frames from per-node encodings kept in advance takes \
             {:.1} ms ({}/s), byte-identical",
            splice * 1e3,
            si(count as f64 / splice),
        ));
        for (variant, secs) in [
            ("diagnostic: clone + encode batches in-process", encode),
            ("diagnostic: splice pre-encoded nodes in-process", splice),
        ] {
            out.record(json!({
                "bench": "catchup",
                "variant": variant,
                "nodes": count,
                "secs_median": secs,
                "nodes_per_s": count as f64 / secs,
            }));
        }
        out.note(format!(
            "relay catch-up = {:.0}% of the raw stream of the same bytes (read only; target ≥ 70%), \
             {:.0}% of it with a decoding client on both sides",
            100.0 * ceiling / med(&relay_read),
            100.0 * decode_ceiling / med(&relay_raw),
        ));
        anyhow::Ok(())
    })?;
    drop(raw);
    drop(relay);
    Ok(())
}

/// A chain of `count` nodes, each on top of the previous one.
fn make_nodes(room: &RoomId, count: u64, payload: usize) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::with_capacity(count as usize);
    for k in 0..count {
        let parent = nodes.last().map(|n| (n.id, n.depth));
        nodes.push(common::timed_node(room, parent, k, 0, payload));
    }
    nodes
}

/// Pushes every node in packs of 1,000 and waits until all are accepted.
async fn populate(url: &str, nodes: &[Node]) -> anyhow::Result<()> {
    let mut ws = common::connect(url, 64 * 1024).await?;
    let (welcome, _) = common::join(&mut ws).await?;
    ensure!(welcome.plan == Plan::InSync, "the room is not empty");
    let (mut sink, mut stream) = ws.split();
    let packs: Vec<&[Node]> = nodes.chunks(1000).collect();
    let pack_count = packs.len();
    let expected = nodes.len();
    let acks = tokio::spawn(async move {
        let mut accepted = 0usize;
        for _ in 0..pack_count {
            let frame = loop {
                match stream.next().await {
                    Some(Ok(WsMessage::Binary(b))) => break b,
                    Some(Ok(WsMessage::Close(c))) => bail!("closed while populating: {c:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("connection ended while populating"),
                }
            };
            match protocol::decode(&frame)? {
                Message::Ack(ack) => {
                    accepted += ack
                        .outcomes
                        .iter()
                        .filter(|o| matches!(o, Outcome::Accepted(_)))
                        .count();
                }
                other => bail!("expected ack, got {:?}", other.message_type()),
            }
        }
        ensure!(
            accepted == expected,
            "{accepted} of {expected} nodes accepted"
        );
        anyhow::Ok(())
    });
    for (number, chunk) in packs.into_iter().enumerate() {
        let frame = Message::Pack(Pack {
            number: number as u64,
            nodes: chunk.to_vec(),
        })
        .encode()?;
        sink.send(WsMessage::Binary(frame)).await?;
    }
    acks.await??;
    let _closed = sink.close().await;
    Ok(())
}

/// Timed catch-up with the raw protocol client; returns the run and the frames received
/// (every `batch`, then `catch_up_done`). With `decode_inline` every batch is decoded as it
/// arrives, like a real client; without, the timed loop only reads each frame's type (like the
/// read-only raw-stream client) and everything is decoded and checked after the clock stops.
async fn relay_raw_client(
    url: &str,
    window: u64,
    count: u64,
    expected: &HashSet<NodeId>,
    expected_digest: SetDigest,
    decode_inline: bool,
) -> anyhow::Result<(Run, Vec<Bytes>)> {
    let mut ws = common::connect(url, 128 * 1024).await?;
    let mut frames = Vec::new();
    let mut ids: Vec<NodeId> = Vec::with_capacity(count as usize);
    let mut bytes = 0u64;
    let mut through = 0u64;
    let mut check_batch = |frame: &Bytes, ids: &mut Vec<NodeId>| -> anyhow::Result<bool> {
        match protocol::decode(frame)? {
            Message::Batch(batch) => {
                ensure!(batch.through > through, "batch `through` went backwards");
                through = batch.through;
                ids.extend(batch.nodes.iter().map(|n| n.id));
                Ok(false)
            }
            Message::CatchUpDone(_) => Ok(true),
            other => bail!("unexpected {:?} during catch-up", other.message_type()),
        }
    };
    let start = Instant::now();
    let welcome = common::send_hello(&mut ws, window).await?;
    ensure!(welcome.plan == Plan::CatchUp, "expected plan catch-up");
    loop {
        let frame = common::next_binary(&mut ws).await?;
        let last = if decode_inline {
            check_batch(&frame, &mut ids)?
        } else {
            protocol::peek_type(&frame) == Some(protocol::MessageType::CatchUpDone)
        };
        if last {
            frames.push(frame);
            break;
        }
        bytes += frame.len() as u64;
        // Like the reference client: return each batch's bytes as it arrives.
        let credit = Message::Credit(Credit {
            bytes: frame.len() as u64,
        })
        .encode()?;
        frames.push(frame);
        ws.send(WsMessage::Binary(credit)).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let _closed = ws.close(None).await;
    // Verified outside the timed part.
    if !decode_inline {
        for frame in &frames {
            check_batch(frame, &mut ids)?;
        }
    }
    let Some(Ok(Message::CatchUpDone(done))) = frames.last().map(|f| protocol::decode(f)) else {
        bail!("the stream did not end with catch_up_done");
    };
    ensure!(
        ids.len() as u64 == count,
        "got {} of {count} nodes",
        ids.len()
    );
    ensure!(
        done.seq == count,
        "catch_up_done at {} instead of {count}",
        done.seq
    );
    let digest = SetDigest::of(&ids);
    ensure!(
        digest == expected_digest && done.digest == expected_digest,
        "catch-up delivered the wrong set"
    );
    let distinct: HashSet<NodeId> = ids.into_iter().collect();
    ensure!(
        &distinct == expected,
        "catch-up delivered the wrong set of ids"
    );
    Ok((
        Run {
            secs,
            nodes: count,
            bytes,
        },
        frames,
    ))
}

/// Median time to rebuild the captured batches from their nodes: clone every node (the relay
/// clones them out of the room's log) and encode the `batch` frame.
fn encode_cost(frames: &[Bytes], iters: usize) -> anyhow::Result<f64> {
    let mut batches = Vec::new();
    for frame in frames {
        if let Message::Batch(batch) = protocol::decode(frame)? {
            batches.push(batch);
        }
    }
    let mut times = Vec::new();
    for _ in 0..iters {
        let start = Instant::now();
        let mut total = 0usize;
        for batch in &batches {
            let again = Message::Batch(protocol::Batch {
                through: batch.through,
                nodes: batch.nodes.clone(),
            })
            .encode()?;
            total += again.len();
        }
        times.push(start.elapsed().as_secs_f64());
        ensure!(
            total
                == frames.iter().map(Bytes::len).sum::<usize>()
                    - frames.last().map_or(0, Bytes::len),
            "re-encoded batches differ in size"
        );
    }
    Ok(median(&times))
}

/// Median time to build the same batch frames from per-node encodings made in advance (as a
/// relay that kept each node's encoded bytes could): envelope, `through`, array header, then
/// one copy per node. Checks the result is byte-identical to what the relay sent.
fn splice_cost(frames: &[Bytes], iters: usize) -> anyhow::Result<f64> {
    let mut batches = Vec::new();
    for frame in frames {
        if let Message::Batch(batch) = protocol::decode(frame)? {
            let nodes: Vec<Vec<u8>> = batch
                .nodes
                .iter()
                .map(rmp_serde::to_vec)
                .collect::<Result<_, _>>()?;
            let size: usize = nodes.iter().map(Vec::len).sum();
            batches.push((batch.through, nodes, size, frame.clone()));
        }
    }
    let mut times = Vec::new();
    for _ in 0..iters {
        let start = Instant::now();
        let mut built = Vec::with_capacity(batches.len());
        for (through, nodes, size, _) in &batches {
            let mut buf = Vec::with_capacity(size + 32);
            // `[5, [through, [nodes...]]]`
            buf.extend_from_slice(&[0x92, 5, 0x92]);
            rmp::encode::write_uint(&mut buf, *through)?;
            rmp::encode::write_array_len(&mut buf, nodes.len() as u32)?;
            for node in nodes {
                buf.extend_from_slice(node);
            }
            built.push(Bytes::from(buf));
        }
        times.push(start.elapsed().as_secs_f64());
        for (frame, (_, _, _, original)) in built.iter().zip(&batches) {
            ensure!(frame == original, "spliced batch differs from the relay's");
        }
    }
    Ok(median(&times))
}

/// Timed catch-up with the real client.
async fn weft_client(
    base: &str,
    room: &RoomId,
    window: u64,
    count: u64,
    expected_digest: SetDigest,
    stream_bytes: u64,
) -> anyhow::Result<Run> {
    let mut config = ClientConfig::new(base, room.clone());
    config.window = window;
    let start = Instant::now();
    let (client, mut events) = Client::start(config)?;
    // An application reads its events; so does this one, on the side.
    let reader = tokio::spawn(async move { while events.recv().await.is_some() {} });
    tokio::time::timeout(Duration::from_secs(600), client.wait_synced())
        .await
        .context("client did not sync within 600 s")??;
    let secs = start.elapsed().as_secs_f64();
    let (len, digest) = client.with_replica(|r| (r.len() as u64, r.digest()));
    client.close().await?;
    reader.abort();
    ensure!(len == count, "client holds {len} of {count} nodes");
    ensure!(digest == expected_digest, "client holds the wrong set");
    Ok(Run {
        secs,
        nodes: count,
        // The relay sends the same batches to every empty client with the same window.
        bytes: stream_bytes,
    })
}

/// Timed read of the captured frames from the raw server; optionally decoding each one.
async fn raw_stream(url: &str, count: u64, decode: bool) -> anyhow::Result<Run> {
    let mut ws = common::connect(url, 128 * 1024).await?;
    let start = Instant::now();
    ws.send(WsMessage::Binary(Bytes::from_static(b"go")))
        .await?;
    let mut bytes = 0u64;
    let mut nodes = 0u64;
    let mut ids: Vec<NodeId> = Vec::with_capacity(if decode { count as usize } else { 0 });
    loop {
        let frame = common::next_binary(&mut ws).await?;
        if decode {
            match protocol::decode(&frame)? {
                Message::Batch(batch) => {
                    bytes += frame.len() as u64;
                    nodes += batch.nodes.len() as u64;
                    ids.extend(batch.nodes.iter().map(|n| n.id));
                }
                Message::CatchUpDone(_) => break,
                other => bail!("raw stream carried {:?}", other.message_type()),
            }
        } else {
            // The last frame is `catch_up_done`: tiny; batches are large.
            if protocol::peek_type(&frame) == Some(protocol::MessageType::CatchUpDone) {
                break;
            }
            bytes += frame.len() as u64;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _closed = ws.close(None).await;
    if decode {
        ensure!(
            nodes == count,
            "raw stream decoded {nodes} of {count} nodes"
        );
    }
    Ok(Run {
        secs,
        nodes: count,
        bytes,
    })
}

/// The ceiling: a plain WebSocket server that, per connection, waits for one message and then
/// sends the captured frames, one `send` each, like the relay's connection writer.
async fn raw_server(
    listener: TcpListener,
    stop: oneshot::Receiver<()>,
    frames: Arc<Mutex<Arc<Vec<Bytes>>>>,
) {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _nodelay = stream.set_nodelay(true);
        let frames = frames.lock().unwrap_or_else(|e| e.into_inner()).clone();
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            if !matches!(ws.next().await, Some(Ok(WsMessage::Binary(_)))) {
                return;
            }
            for frame in frames.iter() {
                if ws.send(WsMessage::Binary(frame.clone())).await.is_err() {
                    return;
                }
            }
            // Wait for the client's close.
            while let Some(Ok(_)) = ws.next().await {}
        });
    }
}
