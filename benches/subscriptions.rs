//! Path-pattern subscriptions (protocol/README.md §7.5): routing cost, deliveries, and the
//! scoped handshake.
//!
//! The path tree is `org{0..10}/team{0..20}/proj{0..10}/{doc0..doc49}.md` plus a `README` per
//! project: 110,000 distinct paths. Each subscribed session holds 5 patterns drawn from a mix a
//! real app would use: a whole team (`org3/team7/**`), a project's markdown
//! (`org3/team7/proj2/*.md`), one document everywhere in an org (`org3/**/doc12.md`), every
//! README (`**/README`) and one exact document.
//!
//! 1. **Routing, in process.** One hub, 10,000 sessions (`--sessions`) with 5 patterns each,
//!    20,000 nodes already in the room; a writer pushes `--nodes` nodes, one per `pack`, at
//!    random paths. The same run repeats with 10,000 sessions without subscriptions. Printed:
//!    hub time per pushed node (admission, routing, frame building), the routing share (the
//!    difference between the two runs), deliveries per node and hub deliveries per second,
//!    and, for scale, what testing every pattern of every session would cost per node.
//! 2. **End to end.** The release relay binary; `--e2e-sessions` WebSocket receivers
//!    (default 10,000) join one room with 5 patterns each and read every frame; a writer
//!    pushes nodes one per `pack`, up to 16 packs unacked, for `--secs` seconds. Then the same
//!    with receivers that subscribe to nothing in particular. Printed: nodes/s, deliveries/s
//!    (nodes received, summed over receivers), and deliveries per node.
//! 3. **Handshake, in process.** A room of `--room-nodes` nodes (default 1,000,000) over the
//!    same tree. Timed `hello` → `welcome` (credit 0, so planning only): the first session of a
//!    subscription (makes the class), a second one (class exists), a client whose watermark
//!    is current (`in_sync`), one 1,000 nodes behind, and an unsubscribed cold client. Then
//!    clients without a watermark (a changed subscription, or a new relay epoch) that hold all
//!    but 10 of their subscription's nodes (`ibf` + `mst`): the first of a class (builds the
//!    class's sketch structures) and the next one (`hello` → `welcome` and the sketch), and a
//!    whole reconciliation of a real replica through `replica::Link`: hub time, round trips,
//!    bytes each way, and what the id list would have sent instead.
//!
//! ```text
//! cargo bench --bench subscriptions
//! cargo bench --bench subscriptions -- --smoke        # small sizes; checks, then exits
//! ```
//!
//! Flags: `--sessions N`, `--nodes N`, `--e2e-sessions N`, `--secs S`, `--room-nodes N`,
//! `--json`, `--smoke`.

#![allow(clippy::disallowed_methods)] // A bench owns its clock.

mod common;

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use weft::node::{Node, NodeId, NodeLimits, RoomId};
use weft::pattern::{Pattern, PatternLimits, PatternSet};
use weft::protocol::{
    self, Capabilities, Hello, Message, Outcome, PROTOCOL_VERSION, Pack, Plan, SyncHints, Watermark,
};
use weft::recon::SetDigest;
use weft::recon::estimator::{Estimator, strata_for};
use weft::replica::{Link, Replica, SyncEvent};
use weft::room::{Hub, HubConfig, OrphanLimits, Room, SessionId};

use common::{Flags, Output, Relay, si};

const ORGS: usize = 10;

/// Packs the end-to-end writer keeps unacked.
const WRITE_WINDOW: u64 = 16;
const TEAMS: usize = 20;
const PROJECTS: usize = 10;
const DOCS: usize = 50;

struct Settings {
    sessions: usize,
    nodes: usize,
    e2e_sessions: usize,
    secs: u64,
    room_nodes: usize,
    smoke: bool,
}

fn main() -> ExitCode {
    let flags = Flags::parse(&[
        "sessions",
        "nodes",
        "e2e-sessions",
        "secs",
        "room-nodes",
        "json",
        "smoke",
    ]);
    let smoke = flags.has("smoke");
    let settings = Settings {
        sessions: flags.value("sessions", if smoke { 500 } else { 10_000 }),
        nodes: flags.value("nodes", if smoke { 200 } else { 2_000 }),
        e2e_sessions: flags.value("e2e-sessions", if smoke { 200 } else { 10_000 }),
        secs: flags.value("secs", if smoke { 1 } else { 5 }),
        room_nodes: flags.value("room-nodes", if smoke { 20_000 } else { 1_000_000 }),
        smoke,
    };
    let out = Output {
        json: flags.has("json"),
    };
    match run(&settings, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("subscriptions bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: &Settings, out: &Output) -> anyhow::Result<()> {
    routing(settings, out)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(end_to_end(settings, out))?;
    handshake(settings, out)
}

fn room_id() -> RoomId {
    RoomId::new("bench-subs").expect("valid room id")
}

/// A random path of the tree.
fn random_path(rng: &mut StdRng) -> String {
    let (o, t, p) = (
        rng.random_range(0..ORGS),
        rng.random_range(0..TEAMS),
        rng.random_range(0..PROJECTS),
    );
    if rng.random_bool(0.02) {
        format!("org{o}/team{t}/proj{p}/README")
    } else {
        let d = rng.random_range(0..DOCS);
        format!("org{o}/team{t}/proj{p}/doc{d}.md")
    }
}

/// Five patterns of the kinds listed in the module docs.
fn random_patterns(rng: &mut StdRng) -> Vec<String> {
    let (o, t, p, d) = (
        rng.random_range(0..ORGS),
        rng.random_range(0..TEAMS),
        rng.random_range(0..PROJECTS),
        rng.random_range(0..DOCS),
    );
    let (o2, t2, p2) = (
        rng.random_range(0..ORGS),
        rng.random_range(0..TEAMS),
        rng.random_range(0..PROJECTS),
    );
    vec![
        format!("org{o}/team{t}/**"),
        format!("org{o2}/team{t2}/proj{p2}/*.md"),
        format!("org{o}/**/doc{d}.md"),
        "**/README".to_owned(),
        format!("org{o2}/team{t}/proj{p}/doc{d}.md"),
    ]
}

/// `n` nodes in a chain at random paths.
fn chain(rng: &mut StdRng, n: usize, parent: Option<&Node>) -> Vec<Node> {
    let room = room_id();
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    for i in 0..n {
        let parents: Vec<&Node> = nodes.last().or(parent).into_iter().collect();
        let payload = format!("edit {i:>8} {}", "z".repeat(60));
        let node = Node::child_of(&room, &parents, random_path(rng), payload).expect("depth");
        nodes.push(node);
    }
    nodes
}

fn hello(subscribe: Option<Vec<String>>, hints: SyncHints, credit: u64) -> Vec<u8> {
    let capabilities = if subscribe.is_some() {
        Capabilities::SUBSCRIPTIONS
    } else {
        Capabilities::NONE
    };
    hello_with(capabilities, subscribe, hints, credit)
}

fn hello_with(
    capabilities: Capabilities,
    subscribe: Option<Vec<String>>,
    hints: SyncHints,
    credit: u64,
) -> Vec<u8> {
    Message::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities,
        hints,
        credit,
        subscribe,
    })
    .encode()
    .expect("hello encodes")
    .to_vec()
}

/// A hub over `room`, with `sessions` steady sessions (subscribed or not) and an unsubscribed
/// writer as session 0.
fn hub_with_sessions(room: Room, sessions: usize, subscribed: bool, rng: &mut StdRng) -> Hub {
    let mut hub = Hub::new(room, HubConfig::immediate());
    let now = Instant::now();
    let seq = hub.room().seq();
    let in_sync = |hub: &Hub| SyncHints {
        digest: hub.room().digest(),
        watermark: Some(Watermark {
            epoch: hub.room().epoch(),
            seq,
        }),
        ..SyncHints::default()
    };
    hub.connect(0, now);
    let _ = hub.handle_frame(0, &hello(None, in_sync(&hub), 0), now);
    for id in 1..=sessions as SessionId {
        hub.connect(id, now);
        let subscribe = subscribed.then(|| random_patterns(rng));
        // A subscribed client's digest covers its subset, which this one does not claim: it
        // catches up from its current watermark (nothing to send) and needs credit for that.
        let _ = hub.handle_frame(id, &hello(subscribe, in_sync(&hub), 1 << 20), now);
    }
    hub
}

struct RoutingRun {
    secs: f64,
    deliveries: u64,
}

/// Pushes `nodes` one per pack from session 0; hub time and node deliveries.
fn push_all(hub: &mut Hub, nodes: &[Node]) -> RoutingRun {
    let now = Instant::now();
    let mut deliveries = 0u64;
    let mut busy = Duration::ZERO;
    for (number, node) in (1u64..).zip(nodes) {
        let frame = Message::Pack(Pack {
            number,
            nodes: vec![node.clone()],
        })
        .encode()
        .expect("pack encodes");
        let started = Instant::now();
        let outbox = hub.handle_frame(0, &frame, now);
        let outbox = hub.resolve(outbox);
        let mut recipients = 0u64;
        for outgoing in outbox.frames {
            if protocol::peek_type(&outgoing.frame) == Some(protocol::MessageType::Broadcast) {
                recipients += outgoing.to.len() as u64;
            }
        }
        busy += started.elapsed();
        deliveries += recipients;
    }
    RoutingRun {
        secs: busy.as_secs_f64(),
        deliveries,
    }
}

fn routing(settings: &Settings, out: &Output) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let prefill = chain(&mut rng, 20_000, None);
    let pushed = chain(&mut rng, settings.nodes, prefill.last());
    let room_of = |nodes: &[Node]| -> anyhow::Result<Room> {
        let mut room = Room::new(room_id(), 1, NodeLimits::default(), OrphanLimits::default());
        for node in nodes {
            room.restore(node.clone())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(room)
    };
    let mut patterns_rng = StdRng::seed_from_u64(11);
    let built = Instant::now();
    let mut filtered = hub_with_sessions(
        room_of(&prefill)?,
        settings.sessions,
        true,
        &mut patterns_rng,
    );
    let join_secs = built.elapsed().as_secs_f64();
    let mut unfiltered = hub_with_sessions(
        room_of(&prefill)?,
        settings.sessions,
        false,
        &mut patterns_rng,
    );
    let with = push_all(&mut filtered, &pushed);
    let without = push_all(&mut unfiltered, &pushed);
    // What not indexing would cost: every pattern of every session tested per node.
    let mut naive_rng = StdRng::seed_from_u64(11);
    let limits = PatternLimits::default();
    let all_patterns: Vec<Vec<Pattern>> = (0..settings.sessions)
        .map(|_| {
            random_patterns(&mut naive_rng)
                .iter()
                .filter_map(|p| Pattern::parse(p, &limits).ok())
                .collect()
        })
        .collect();
    let sample = pushed.len().min(200);
    let started = Instant::now();
    let mut naive_matches = 0u64;
    for node in pushed.iter().take(sample) {
        for patterns in &all_patterns {
            if patterns.iter().any(|p| p.matches(&node.path)) {
                naive_matches += 1;
            }
        }
    }
    let naive_us = started.elapsed().as_secs_f64() * 1e6 / sample as f64;
    let n = pushed.len() as f64;
    let per_node_us = |run: &RoutingRun| run.secs * 1e6 / n;
    let routing_us = per_node_us(&with) - per_node_us(&without);
    if settings.smoke {
        // Each subscribed session holds `**/README`, so every README reaches all of them, and
        // nothing reaches a session more than once per node.
        let max = settings.sessions as u64 * pushed.len() as u64;
        if with.deliveries == 0 || with.deliveries > max {
            bail!("filtered deliveries {} out of range", with.deliveries);
        }
        if without.deliveries != max {
            bail!("unfiltered deliveries {} != {max}", without.deliveries);
        }
        let sampled = naive_matches as f64 / sample as f64;
        let measured = with.deliveries as f64 / n;
        if (sampled - measured).abs() > measured * 0.5 + 5.0 {
            bail!("the index routes {measured:.1} per node, the naive test {sampled:.1}");
        }
    }
    if out.json {
        println!(
            "{}",
            json!({
                "bench": "subscriptions_routing",
                "sessions": settings.sessions,
                "patterns_per_session": 5,
                "nodes": pushed.len(),
                "join_all_s": join_secs,
                "hub_us_per_node_filtered": per_node_us(&with),
                "hub_us_per_node_unfiltered": per_node_us(&without),
                "routing_us_per_node": routing_us,
                "deliveries_per_node_filtered": with.deliveries as f64 / n,
                "deliveries_per_node_unfiltered": without.deliveries as f64 / n,
                "hub_deliveries_per_s_filtered": with.deliveries as f64 / with.secs,
                "hub_deliveries_per_s_unfiltered": without.deliveries as f64 / without.secs,
                "naive_us_per_node": naive_us,
            })
        );
    } else {
        out.note(format!(
            "routing, in process: {} sessions × 5 patterns, {} nodes pushed one per pack \
             (joining all sessions took {join_secs:.2} s)",
            settings.sessions,
            pushed.len()
        ));
        out.note(format!(
            "  subscribed:   {:.1} µs of hub time per node, {:.1} deliveries per node, {} \
             deliveries/s",
            per_node_us(&with),
            with.deliveries as f64 / n,
            si(with.deliveries as f64 / with.secs)
        ));
        out.note(format!(
            "  unfiltered:   {:.1} µs of hub time per node, {:.0} deliveries per node, {} \
             deliveries/s (one frame for everyone; queueing is the driver's)",
            per_node_us(&without),
            without.deliveries as f64 / n,
            si(without.deliveries as f64 / without.secs)
        ));
        out.note(format!(
            "  routing by the pattern index: {routing_us:.1} µs per node; testing every \
             pattern of every session instead: {naive_us:.0} µs per node"
        ));
    }
    Ok(())
}

/// One end-to-end run: receivers joined (subscribed or not), a writer pushing for `secs`.
struct E2eRun {
    nodes: u64,
    deliveries: u64,
    secs: f64,
}

async fn end_to_end(settings: &Settings, out: &Output) -> anyhow::Result<()> {
    common::check_fd_budget(settings.e2e_sessions as u64 + 16)?;
    let subscribed = e2e_run(settings, true).await?;
    let unfiltered = e2e_run(settings, false).await?;
    let rate = |run: &E2eRun, v: u64| v as f64 / run.secs;
    if settings.smoke && (subscribed.nodes == 0 || unfiltered.deliveries == 0) {
        bail!("nothing was delivered");
    }
    for (label, run) in [("subscribed", &subscribed), ("unfiltered", &unfiltered)] {
        if out.json {
            println!(
                "{}",
                json!({
                    "bench": "subscriptions_end_to_end",
                    "case": label,
                    "receivers": settings.e2e_sessions,
                    "nodes_per_s": rate(run, run.nodes),
                    "deliveries_per_s": rate(run, run.deliveries),
                    "deliveries_per_node": run.deliveries as f64 / run.nodes.max(1) as f64,
                })
            );
        } else {
            out.note(format!(
                "end to end, {} receivers, {label}: {} nodes/s acked, {} deliveries/s, {:.1} \
                 deliveries per node",
                settings.e2e_sessions,
                si(rate(run, run.nodes)),
                si(rate(run, run.deliveries)),
                run.deliveries as f64 / run.nodes.max(1) as f64
            ));
        }
    }
    Ok(())
}

async fn e2e_run(settings: &Settings, subscribed: bool) -> anyhow::Result<E2eRun> {
    let relay = Relay::spawn(&[], None)?;
    let url = relay.url("bench-subs");
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut rng = StdRng::seed_from_u64(3);
    let mut joining = Vec::with_capacity(settings.e2e_sessions);
    for _ in 0..settings.e2e_sessions {
        let subscribe = subscribed.then(|| random_patterns(&mut rng));
        let (url, gate, stop, delivered) =
            (url.clone(), gate.clone(), stop.clone(), delivered.clone());
        joining.push(tokio::spawn(async move {
            receiver(url, subscribe, gate, stop, delivered).await
        }));
    }
    let mut readers = Vec::with_capacity(joining.len());
    for join in joining {
        readers.push(join.await??);
    }
    // The writer: one node per pack, up to `WRITE_WINDOW` packs unacked, so that the rate
    // measures the relay's routing and fan-out rather than one ack round trip per node.
    let mut ws = common::connect(&url, 1 << 20).await?;
    common::send_hello(&mut ws, 0).await?;
    let mut write_rng = StdRng::seed_from_u64(5);
    let started = Instant::now();
    let mut parent: Option<Node> = None;
    let mut sent = 0u64;
    let mut nodes = 0u64;
    loop {
        let writing = started.elapsed() < Duration::from_secs(settings.secs);
        if writing && sent - nodes < WRITE_WINDOW {
            let parents: Vec<&Node> = parent.iter().collect();
            let node = Node::child_of(
                &room_id(),
                &parents,
                random_path(&mut write_rng),
                "x".repeat(80),
            )
            .context("node")?;
            sent += 1;
            let frame = Message::Pack(Pack {
                number: sent,
                nodes: vec![node.clone()],
            })
            .encode()?;
            ws.send(WsMessage::Binary(frame)).await?;
            parent = Some(node);
            continue;
        }
        if sent == nodes {
            break;
        }
        if let Message::Ack(ack) = common::next_frame(&mut ws).await? {
            if !matches!(ack.outcomes.as_slice(), [Outcome::Accepted(_)]) {
                bail!("push not accepted: {:?}", ack.outcomes);
            }
            nodes += 1;
        }
    }
    // Deliveries still in flight count: wait until the count stops moving (bounded).
    let mut last = delivered.load(Ordering::Relaxed);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    for reader in readers {
        let _ = reader.await;
    }
    Ok(E2eRun {
        nodes,
        deliveries: delivered.load(Ordering::Relaxed),
        secs,
    })
}

/// Joins with `subscribe` on an empty room, then counts broadcast frames (one node each:
/// the writer sends one node per pack) until `stop`.
async fn receiver(
    url: String,
    subscribe: Option<Vec<String>>,
    gate: Arc<tokio::sync::Semaphore>,
    stop: tokio_util::sync::CancellationToken,
    delivered: Arc<AtomicU64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut ws = {
        let _permit = gate.acquire().await?;
        // A small read buffer: the generator reads 10,000 sockets, and a large buffer per
        // read costs it more than the relay spends per delivery.
        let mut ws = common::connect(&url, 4096).await?;
        ws.send(WsMessage::Binary(
            hello(subscribe, SyncHints::default(), 1 << 20).into(),
        ))
        .await?;
        match common::next_frame(&mut ws).await? {
            Message::Welcome(w) if w.plan == Plan::InSync => {}
            other => bail!(
                "expected an in-sync welcome, got {:?}",
                other.message_type()
            ),
        }
        ws
    };
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                m = ws.next() => match m {
                    Some(Ok(WsMessage::Binary(frame))) => {
                        // The relay joins queued broadcasts into one frame: count its nodes.
                        let run = protocol::BroadcastRun::parse(&frame);
                        if let Some(count) = run.and_then(|r| Some(r.next_seq()? - r.first_seq())) {
                            delivered.fetch_add(count, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
        let _closed = ws.close(None).await;
    }))
}

/// The timed `hello` → `welcome` of one session (credit 0: planning only).
fn timed_join(hub: &mut Hub, id: SessionId, frame: &[u8]) -> anyhow::Result<(f64, Plan)> {
    let now = Instant::now();
    hub.connect(id, now);
    let started = Instant::now();
    let outbox = hub.handle_frame(id, frame, now);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let first = outbox.frames.first().context("no welcome")?;
    match protocol::decode(&first.frame)? {
        Message::Welcome(w) => Ok((ms, w.plan)),
        other => bail!("expected welcome, got {:?}", other.message_type()),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn handshake(settings: &Settings, out: &Output) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(21);
    let built = Instant::now();
    let mut room = Room::new(room_id(), 1, NodeLimits::default(), OrphanLimits::default());
    let mut parent: Option<Node> = None;
    for i in 0..settings.room_nodes {
        let parents: Vec<&Node> = parent.iter().collect();
        let node = Node::child_of(&room_id(), &parents, random_path(&mut rng), format!("n{i}"))
            .context("node")?;
        parent = Some(node.clone());
        room.restore(node).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut hub = Hub::new(room, HubConfig::immediate());
    let build_secs = built.elapsed().as_secs_f64();
    let seq = hub.room().seq();
    let epoch = hub.room().epoch();
    // A client complete up to `behind` nodes before the end holds the matching nodes up to
    // there: its digest covers those.
    let watermark = |hub: &Hub, patterns: &[String], behind: u64| -> anyhow::Result<SyncHints> {
        let limits = PatternLimits::default();
        let set = PatternSet::new(
            patterns
                .iter()
                .map(|p| Pattern::parse(p, &limits))
                .collect::<Result<Vec<_>, _>>()?,
        );
        let through = seq - behind.min(seq);
        let held: Vec<NodeId> = (1..=through)
            .filter_map(|s| hub.room().node_at(s))
            .filter(|n| set.matches(n.path()))
            .map(|n| *n.id())
            .collect();
        Ok(SyncHints {
            digest: SetDigest::of(&held),
            watermark: Some(Watermark {
                epoch,
                seq: through,
            }),
            ..SyncHints::default()
        })
    };
    let mut next_id: SessionId = 1;
    let mut cases: Vec<(&str, Vec<f64>, Plan)> = Vec::new();
    let mut patterns_rng = StdRng::seed_from_u64(31);
    let mut first = Vec::new();
    let mut second = Vec::new();
    let mut in_sync = Vec::new();
    let mut behind = Vec::new();
    let mut plans = [Plan::InSync; 4];
    for _ in 0..5 {
        let patterns = random_patterns(&mut patterns_rng);
        for (slot, (times, hints)) in [
            (&mut first, SyncHints::default()),
            (&mut second, SyncHints::default()),
            (&mut in_sync, watermark(&hub, &patterns, 0)?),
            (&mut behind, watermark(&hub, &patterns, 1_000)?),
        ]
        .into_iter()
        .enumerate()
        {
            let frame = hello(Some(patterns.clone()), hints, 0);
            let (ms, plan) = timed_join(&mut hub, next_id, &frame)?;
            next_id += 1;
            times.push(ms);
            plans[slot] = plan;
        }
    }
    let mut unsubscribed = Vec::new();
    let mut unsubscribed_plan = Plan::InSync;
    for _ in 0..5 {
        let (ms, plan) = timed_join(&mut hub, next_id, &hello(None, SyncHints::default(), 0))?;
        next_id += 1;
        unsubscribed.push(ms);
        unsubscribed_plan = plan;
    }
    cases.push((
        "first session of a subscription, empty client",
        first,
        plans[0],
    ));
    cases.push(("same subscription again, empty client", second, plans[1]));
    cases.push(("watermark current", in_sync, plans[2]));
    cases.push(("watermark 1,000 nodes behind", behind, plans[3]));
    cases.push((
        "no subscription, empty client",
        unsubscribed,
        unsubscribed_plan,
    ));
    if settings.smoke
        && (plans != [Plan::CatchUp, Plan::CatchUp, Plan::InSync, Plan::CatchUp]
            || unsubscribed_plan != Plan::CatchUp)
    {
        bail!("unexpected plans {plans:?} / {unsubscribed_plan:?}");
    }
    let sketched = sketch_handshakes(&mut hub, &mut next_id)?;
    if settings.smoke
        && (sketched.plans != [Plan::Sketch; 2] || sketched.whole.plan != Plan::Sketch)
    {
        bail!(
            "unexpected sketch plans {:?} / {:?}",
            sketched.plans,
            sketched.whole.plan
        );
    }
    cases.push((
        "no watermark, 10 matching nodes missing, first of its class",
        sketched.first,
        sketched.plans[0],
    ));
    cases.push((
        "no watermark, 10 matching nodes missing, class structures ready",
        sketched.next,
        sketched.plans[1],
    ));
    if !out.json {
        out.note(format!(
            "handshake, in process: a room of {} nodes over {} distinct paths (built in {build_secs:.1} s); \
             hello → welcome with credit 0, median of 5 subscriptions",
            settings.room_nodes,
            hub.room().paths().count()
        ));
    }
    for (label, times, plan) in cases {
        let ms = median(times);
        if out.json {
            println!(
                "{}",
                json!({
                    "bench": "subscriptions_handshake",
                    "room_nodes": settings.room_nodes,
                    "case": label,
                    "plan": format!("{plan:?}"),
                    "median_ms": ms,
                })
            );
        } else {
            out.note(format!("  {label}: {ms:.3} ms ({plan:?})"));
        }
    }
    let whole = &sketched.whole;
    if out.json {
        println!(
            "{}",
            json!({
                "bench": "subscriptions_scoped_sketch",
                "room_nodes": settings.room_nodes,
                "matching_nodes": whole.matching,
                "plan": format!("{:?}", whole.plan),
                "hub_ms": whole.hub_ms,
                "round_trips": whole.round_trips,
                "bytes_up": whole.up,
                "bytes_down": whole.down,
                "id_list_bytes": whole.matching * 32,
            })
        );
    } else {
        out.note(format!(
            "  whole reconciliation, {} matching nodes, 10 missing: {:?}, hub {:.2} ms, {} round \
             trip(s) to catch_up_done, {} B up, {} B down (the id list alone: {} B up)",
            si(whole.matching as f64),
            whole.plan,
            whole.hub_ms,
            whole.round_trips,
            si(whole.up as f64),
            si(whole.down as f64),
            si((whole.matching * 32) as f64)
        ));
    }
    Ok(())
}

struct Sketched {
    first: Vec<f64>,
    next: Vec<f64>,
    plans: [Plan; 2],
    whole: Whole,
}

/// One reconciliation of a real replica, hub side.
struct Whole {
    matching: u64,
    plan: Plan,
    hub_ms: f64,
    round_trips: u32,
    up: u64,
    down: u64,
}

/// Clients without a watermark holding all but 10 of their subscription's nodes, for 5
/// subscriptions: `hello` → `welcome` and the sketch for the first of the class and the next,
/// then one whole reconciliation.
fn sketch_handshakes(hub: &mut Hub, next_id: &mut SessionId) -> anyhow::Result<Sketched> {
    let limits = PatternLimits::default();
    let sketches = Capabilities::SUBSCRIPTIONS
        .union(Capabilities::IBF)
        .union(Capabilities::MST);
    let mut rng = StdRng::seed_from_u64(41);
    let mut sketched = Sketched {
        first: Vec::new(),
        next: Vec::new(),
        plans: [Plan::InSync; 2],
        whole: Whole {
            matching: 0,
            plan: Plan::InSync,
            hub_ms: 0.0,
            round_trips: 0,
            up: 0,
            down: 0,
        },
    };
    let mut last = None;
    for _ in 0..5 {
        let patterns = random_patterns(&mut rng);
        let set = PatternSet::new(
            patterns
                .iter()
                .map(|p| Pattern::parse(p, &limits))
                .collect::<Result<Vec<_>, _>>()?,
        );
        let matching: Vec<Node> = hub
            .room()
            .nodes()
            .filter(|n| set.matches(n.path()))
            .map(|n| n.node().context("resident node"))
            .collect::<anyhow::Result<_>>()?;
        // Ten missing, spread over the arrival order.
        let gap = (matching.len() / 10).max(1);
        let held: Vec<NodeId> = matching
            .iter()
            .enumerate()
            .filter(|(i, _)| i % gap != gap / 2)
            .map(|(_, n)| n.id)
            .collect();
        let mut estimator = Estimator::new();
        for id in &held {
            estimator.insert(id);
        }
        let hints = SyncHints {
            digest: SetDigest::of(&held),
            estimator: Some(estimator.encode(strata_for(held.len() as u64)).into()),
            ..SyncHints::default()
        };
        for (slot, times) in [&mut sketched.first, &mut sketched.next]
            .into_iter()
            .enumerate()
        {
            let frame = hello_with(sketches, Some(patterns.clone()), hints.clone(), 0);
            let (ms, plan) = timed_join(hub, *next_id, &frame)?;
            *next_id += 1;
            times.push(ms);
            sketched.plans[slot] = plan;
        }
        let mut replica = Replica::new(room_id());
        replica.set_subscription(Some(set.clone()));
        let held: HashSet<NodeId> = held.into_iter().collect();
        for n in matching {
            if held.contains(&n.id) {
                replica
                    .insert(n, true)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        last = Some(replica);
    }
    let mut replica = last.context("no subscription")?;
    sketched.whole = reconcile(hub, *next_id, &mut replica, sketches)?;
    *next_id += 1;
    Ok(sketched)
}

/// Runs a whole connection of `replica` against `hub` in process, up to `catch_up_done`.
fn reconcile(
    hub: &mut Hub,
    id: SessionId,
    replica: &mut Replica,
    capabilities: Capabilities,
) -> anyhow::Result<Whole> {
    let (mut link, hello) = Link::start(replica, capabilities, 1 << 20)?;
    let now = Instant::now();
    hub.connect(id, now);
    let mut whole = Whole {
        matching: 0,
        plan: Plan::InSync,
        hub_ms: 0.0,
        round_trips: 1,
        up: hello.len() as u64,
        down: 0,
    };
    let mut outgoing = vec![hello];
    // Bounded: a reconciliation takes a few round trips plus the catch-up's credit updates.
    for _ in 0..1_000 {
        let mut incoming = Vec::new();
        let started = Instant::now();
        for frame in outgoing.drain(..) {
            let outbox = hub.handle_frame(id, &frame, now);
            incoming.extend(hub.resolve(outbox).frames_for(id).cloned());
        }
        whole.hub_ms += started.elapsed().as_secs_f64() * 1e3;
        let mut synced = false;
        for frame in incoming {
            whole.down += frame.len() as u64;
            let out = link.handle_frame(replica, &frame)?;
            for event in out.events {
                match event {
                    SyncEvent::Plan(plan) => whole.plan = plan,
                    SyncEvent::Synced { .. } => synced = true,
                    _ => {}
                }
            }
            whole.up += out.send.iter().map(|f| f.len() as u64).sum::<u64>();
            outgoing.extend(out.send);
        }
        if synced {
            whole.matching = replica.scope_len();
            return Ok(whole);
        }
        whole.round_trips += 1;
    }
    bail!("no catch_up_done")
}
