//! Reconciliation benchmark (issue 3, item 7): weft's engine and the `negentropy` crate on the
//! *same* sets in the *same* run.
//!
//! `cargo bench --bench recon -- [--n N] [--json] [--smoke] [--only SCENARIO]` (`--only`
//! runs the scenarios whose key contains SCENARIO, e.g. `d1000`).
//!
//! Every scenario is a real room history: `Node`s on a few parallel writer chains with
//! occasional merges (the *backbone*), plus, where the scenario has a symmetric difference,
//! relay-only and client-only nodes forking off the backbone at uniformly scattered points of
//! the arrival order (each also building on the previous node of its own side half the time).
//! A node's timestamp for negentropy is its position in that global order; the relay admits
//! its nodes into a `Room` in that order and the client inserts its own into a `Replica` in
//! that order, so both protocols reconcile exactly the same id sets.
//!
//! **weft** drives the real pure `Hub` and a `Link` in memory, in waves (every frame in flight
//! one way is delivered, then every frame the other way), until both are idle:
//!
//! - *round trips* (`rtt`): flights of reconciliation messages toward the client (`welcome`,
//!   `sketch`, `need`, `buckets`, `missing`) until it is steady: the round trips until the
//!   client knows the whole difference. *flights*: one-way flights of reconciliation messages
//!   either way (adding `hello`, `ids`, `want`, `retry`, `bucket_ids`) until both sides know
//!   what to send; catch-up `batch`, `credit` and `catch_up_done` frames are the node stream,
//!   not turns of the exchange;
//! - *bytes*: every reconciliation message in full (and `catch_up_done`), plus the framing of
//!   `batch` and `pack` frames (not the encoded nodes inside) and `credit` frames, until the
//!   client is steady and has queued its pushes; acks after that are not counted;
//! - the client (its `Link` and `Replica`) runs on a thread of its own, and builds its replica
//!   there, as a separate process would: otherwise freeing the client's memory on the relay's
//!   thread makes the allocator's housekeeping land in relay calls (up to ~10 ms at 1M);
//! - *CPU*: wall time on this one thread (the crate forbids `unsafe`, so no thread CPU clock)
//!   of the `Hub` calls that handle the client's reconciliation messages (the relay plans,
//!   answers, verifies, builds the catch-up cursor and sends at most one batch: the client's
//!   credit window is one byte) or, after a sketch or refinement, send `catch_up_done` (with
//!   the prefix-tree root), and of
//!   the `Link` calls that start the session and handle the
//!   relay's reconciliation messages and `catch_up_done`. Index building (room and replica
//!   indexes, prefix-tree hashes, negentropy storage) is not counted, as a relay and a client
//!   keep them across sessions;
//! - *correct*: no link error, relay error or close; afterwards the replica and the room hold
//!   exactly the union of both sides, and nothing in the replica is left unsynced.
//!   `redundant` counts nodes that crossed although the receiver already had them.
//!
//! weft offers `ibf` and `mst`. Its paths depend on what the client knows about the relay, so
//! the scattered scenarios run weft twice: `prev-epoch` (the client's shared nodes are synced,
//! its watermark and sketch key are from an earlier epoch of the room, e.g. after a relay
//! restore: the relay sizes the sketch from counts, and the client rebuilds its sketch index
//! under the new key within the session) and `cold` (the client holds its nodes and the room's
//! sketch key but no sync state: it sends its estimator). "client lacks the newest 1,000" and
//! "in sync" use a client synced with a current watermark; "client empty" an empty replica.
//!
//! **negentropy** 0.5 (`NegentropyStorageVector`, `Negentropy::owned`, frame size limit 0): the
//! client initiates; a round trip is one client message and the relay's answer; CPU is the
//! wall time of `initiate`/`reconcile_with_ids` (client) and `reconcile` (relay); correct means
//! the have/need ids equal the ground truth.
//!
//! Round trips at d = 1,000 (`d1000_rtt_spread`): a cold client's session on 300 different
//! difference sets of n = min(N, 20,000) (20 with `--smoke`), for the distribution and p99 of
//! round trips (a sketch sized from an estimate fails to decode now and then).
//!
//! Sessions per second at d = 1,000: the relay side of the d = 1,000 session (the recorded
//! client messages replayed against the same relay state, a fresh session each time) repeated
//! for about two seconds (half a second with `--smoke`).
//!
//! New engines plug in through [`Engine`]: take a [`Scenario`] and a [`ClientState`], return a
//! [`Measured`].

use std::collections::HashSet;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use weft::node::{Node, NodeId, NodeLimits, RoomId};
use weft::protocol::{self, Capabilities, Message, MessageType, Outcome, Plan};
use weft::recon::ibf::SketchKey;
use weft::replica::{Link, Replica, SyncEvent};
use weft::room::{Hub, HubConfig, OrphanLimits, Room};

const ROOM: &str = "bench-recon";
/// Epoch of the relay's room; `prev-epoch` clients carry a watermark from the one before.
const EPOCH: u64 = 2;
/// Parallel writer chains in the backbone.
const CHAINS: u64 = 4;
/// The client's catch-up credit window: one byte, so each grant releases one batch and the
/// relay's reconciliation CPU includes at most one batch of streaming.
const WINDOW: u64 = 1;
/// What weft's client offers: sketch reconciliation with refinement.
const SKETCHES: Capabilities = Capabilities::IBF.union(Capabilities::MST);
/// Wave limit of one session, far above any legitimate exchange.
const MAX_WAVES: usize = 1_000_000;

// -------------------------------------------------------------------------------------------------
// Arguments, clock, randomness

struct Args {
    n: usize,
    json: bool,
    smoke: bool,
    /// Run only the scenarios whose key contains this.
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        n: 1_000_000,
        json: false,
        smoke: false,
        only: None,
    };
    let mut n = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => args.json = true,
            "--smoke" => args.smoke = true,
            "--only" => args.only = Some(it.next().ok_or("--only needs a scenario key")?),
            // `cargo bench` passes this to harness-less benches.
            "--bench" => {}
            "--n" => {
                let v = it.next().ok_or("--n needs a value")?;
                n = Some(parse_count(&v).ok_or_else(|| format!("bad --n {v}"))?);
            }
            other => match other.strip_prefix("--n=") {
                Some(v) => n = Some(parse_count(v).ok_or_else(|| format!("bad --n {v}"))?),
                None => return Err(format!("unknown argument {other}")),
            },
        }
    }
    args.n = n.unwrap_or(if args.smoke { 100_000 } else { 1_000_000 });
    if args.n < 20 {
        return Err("--n must be at least 20".into());
    }
    Ok(args)
}

/// `1000000`, `1_000_000`, `1,000,000`, `100k`, `1M`.
fn parse_count(s: &str) -> Option<usize> {
    let s: String = s.chars().filter(|c| *c != '_' && *c != ',').collect();
    let (digits, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1_000),
        'm' | 'M' => (&s[..s.len() - 1], 1_000_000),
        _ => (s.as_str(), 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(mult)
}

/// The benchmark's only clock: wall time on the calling thread.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// Times `f`, adding the elapsed wall time to `acc`.
fn timed<T>(acc: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = now();
    let out = f();
    *acc += start.elapsed();
    out
}

/// splitmix64: deterministic, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

fn room_id() -> RoomId {
    RoomId::new(ROOM).unwrap_or_else(|_| unreachable!("the bench room id is valid"))
}

// -------------------------------------------------------------------------------------------------
// Scenarios

/// Which side holds a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Both,
    RelayOnly,
    ClientOnly,
}

/// Nodes shared by every scenario of a run: `n` nodes on [`CHAINS`] writer chains with merges.
struct Backbone {
    nodes: Vec<Node>,
}

impl Backbone {
    fn build(n: usize) -> Self {
        let room = room_id();
        let mut rng = Rng(0x5eed);
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        let mut tips: Vec<Option<usize>> = vec![None; CHAINS as usize];
        for i in 0..n {
            let chain = rng.below(CHAINS) as usize;
            let mut parents: Vec<&Node> = Vec::with_capacity(2);
            if let Some(t) = tips[chain] {
                parents.push(&nodes[t]);
            }
            // One node in eight also merges another writer's tip.
            if rng.below(8) == 0 {
                let other = rng.below(CHAINS) as usize;
                if let Some(t) = tips[other].filter(|_| other != chain) {
                    parents.push(&nodes[t]);
                }
            }
            let node = child(&room, &parents, &format!("doc/w{chain}"), i as u64, 0);
            nodes.push(node);
            tips[chain] = Some(i);
        }
        Self { nodes }
    }
}

/// A small node: 16 bytes of payload, unique by `(counter, tag)`.
fn child(room: &RoomId, parents: &[&Node], path: &str, counter: u64, tag: u64) -> Node {
    let mut payload = Vec::with_capacity(16);
    payload.extend_from_slice(&counter.to_le_bytes());
    payload.extend_from_slice(&tag.to_le_bytes());
    Node::child_of(room, parents, path, payload).unwrap_or_else(|| unreachable!("small depths"))
}

/// Index of a node: below the backbone's length a backbone node, else `extra[i - len]`.
type Ref = u32;

/// Two sets of real nodes, with a global order (negentropy timestamps, relay arrival order,
/// client insertion order).
struct Scenario<'a> {
    key: &'static str,
    title: String,
    n: usize,
    backbone: &'a Backbone,
    extra: Vec<Node>,
    /// Every node of either side, in global order.
    items: Vec<(Ref, Side)>,
    /// How the weft client's sync state is set up, one weft run per entry.
    states: Vec<ClientState>,
    /// Measure sessions per second on this scenario.
    throughput: bool,
}

impl Scenario<'_> {
    fn node(&self, r: Ref) -> &Node {
        let r = r as usize;
        match self.backbone.nodes.get(r) {
            Some(node) => node,
            None => &self.extra[r - self.backbone.nodes.len()],
        }
    }

    fn relay_items(&self) -> impl Iterator<Item = (u64, &Node)> {
        self.side_items(|s| s != Side::ClientOnly)
    }

    fn client_items(&self) -> impl Iterator<Item = (u64, &Node)> {
        self.side_items(|s| s != Side::RelayOnly)
    }

    fn side_items(&self, keep: impl Fn(Side) -> bool) -> impl Iterator<Item = (u64, &Node)> {
        self.items
            .iter()
            .zip(0u64..)
            .filter(move |((_, s), _)| keep(*s))
            .map(|((r, _), ts)| (ts, self.node(*r)))
    }

    fn only(&self, side: Side) -> HashSet<NodeId> {
        self.items
            .iter()
            .filter(|(_, s)| *s == side)
            .map(|(r, _)| self.node(*r).id)
            .collect()
    }

    /// Size of the symmetric difference.
    fn d(&self) -> usize {
        self.items.iter().filter(|(_, s)| *s != Side::Both).count()
    }

    /// The first `len` backbone nodes, each on the side `side(index)` says.
    fn prefix(len: usize, side: impl Fn(usize) -> Side) -> Vec<(Ref, Side)> {
        (0..len).map(|i| (i as Ref, side(i))).collect()
    }

    fn in_sync(backbone: &Backbone, n: usize) -> Scenario<'_> {
        Scenario {
            key: "in_sync",
            title: "in sync".into(),
            n,
            backbone,
            extra: Vec::new(),
            items: Self::prefix(n, |_| Side::Both),
            states: vec![ClientState::Synced],
            throughput: false,
        }
    }

    fn newest(backbone: &Backbone, n: usize, lack: usize) -> Scenario<'_> {
        let lack = lack.min(n);
        Scenario {
            key: "lacks_newest",
            title: format!("client lacks newest {}", thousands(lack as u64)),
            n,
            backbone,
            extra: Vec::new(),
            items: Self::prefix(n, |i| {
                if i < n - lack {
                    Side::Both
                } else {
                    Side::RelayOnly
                }
            }),
            states: vec![ClientState::Synced],
            throughput: false,
        }
    }

    fn client_empty(backbone: &Backbone, n: usize) -> Scenario<'_> {
        Scenario {
            key: "client_empty",
            title: "client empty".into(),
            n,
            backbone,
            extra: Vec::new(),
            items: Self::prefix(n, |_| Side::RelayOnly),
            states: vec![ClientState::Empty],
            throughput: false,
        }
    }

    /// Each side holds `n` nodes: `n - d/2` shared backbone nodes, and `d/2` of its own forking
    /// off the backbone at uniformly random points of the global order.
    fn scattered<'b>(
        backbone: &'b Backbone,
        n: usize,
        d: usize,
        key: &'static str,
        title: String,
    ) -> Scenario<'b> {
        Self::scattered_seeded(backbone, n, d, key, title, 0)
    }

    /// [`scattered`](Self::scattered) with other differences for each `seed`.
    fn scattered_seeded<'b>(
        backbone: &'b Backbone,
        n: usize,
        d: usize,
        key: &'static str,
        title: String,
        seed: u64,
    ) -> Scenario<'b> {
        let half = (d / 2).min(n);
        let common = n - half;
        let room = room_id();
        let mut rng = Rng(0xd1ff ^ d as u64 ^ seed.rotate_left(32));
        // Labels of every slot in global order: shuffle which slots are differences.
        let mut labels: Vec<Side> = Vec::with_capacity(common + 2 * half);
        labels.extend(std::iter::repeat_n(Side::Both, common));
        labels.extend(std::iter::repeat_n(Side::RelayOnly, half));
        labels.extend(std::iter::repeat_n(Side::ClientOnly, half));
        for i in (1..labels.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            labels.swap(i, j);
        }
        let base = backbone.nodes.len();
        let mut extra: Vec<Node> = Vec::with_capacity(2 * half);
        let mut items = Vec::with_capacity(labels.len());
        let mut next_common = 0usize;
        let mut last_own: [Option<usize>; 2] = [None, None];
        for side in labels {
            match side {
                Side::Both => {
                    items.push((next_common as Ref, Side::Both));
                    next_common += 1;
                }
                Side::RelayOnly | Side::ClientOnly => {
                    let s = usize::from(side == Side::ClientOnly);
                    let mut parents: Vec<&Node> = Vec::with_capacity(2);
                    if let Some(p) = next_common.checked_sub(1) {
                        parents.push(&backbone.nodes[p]);
                    }
                    if let Some(p) = last_own[s].filter(|_| rng.below(2) == 0) {
                        parents.push(&extra[p]);
                    }
                    let path = if s == 0 { "doc/relay" } else { "doc/client" };
                    let tag = 1 + s as u64 + 2 * seed;
                    let node = child(&room, &parents, path, extra.len() as u64, tag);
                    last_own[s] = Some(extra.len());
                    items.push(((base + extra.len()) as Ref, side));
                    extra.push(node);
                }
            }
        }
        Scenario {
            key,
            title,
            n,
            backbone,
            extra,
            items,
            states: vec![ClientState::PrevEpoch, ClientState::Cold],
            throughput: false,
        }
    }
}

/// What the weft client knows about the relay before the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    /// Everything it holds is synced, with a watermark in the room's epoch at its last relay
    /// node.
    Synced,
    /// Its shared nodes are synced, its own are not; its watermark and sketch key are from an
    /// earlier epoch (so it rebuilds its sketch index in the session).
    PrevEpoch,
    /// It holds its nodes (and the room's current sketch key, kept in its replica file) but no
    /// sync state: nothing synced, no watermark. It sends its estimator.
    Cold,
    /// Nothing at all.
    Empty,
}

impl ClientState {
    fn label(self) -> &'static str {
        match self {
            Self::Synced => "synced",
            Self::PrevEpoch => "prev-epoch",
            Self::Cold => "cold",
            Self::Empty => "empty",
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Engines

/// What one engine measured on one scenario.
#[derive(Debug, Default, Clone)]
struct Measured {
    /// The path the engine took, if it has several.
    path: String,
    /// Round trips until the client knows the whole difference.
    rtt: u64,
    /// One-way flights of reconciliation messages until both sides know what to send.
    flights: u64,
    /// Client to relay.
    bytes_up: u64,
    /// Relay to client.
    bytes_down: u64,
    relay_cpu: Duration,
    /// weft only: the relay's reconciliation calls replayed with no catch-up credit, so that
    /// no `batch` is assembled in them (mean over repeats). `relay_cpu` includes the first
    /// batch the credit releases; this isolates the reconciliation work.
    relay_no_batch: Option<Duration>,
    client_cpu: Duration,
    correct: bool,
    /// Why the result is wrong, or anything else worth a note.
    note: String,
    /// Nodes that crossed although the receiver already had them.
    redundant_nodes: u64,
    /// Of the bytes: the framing of node streams (`batch`, `pack`, `credit`), the rest being
    /// reconciliation messages proper.
    stream_framing_bytes: u64,
    /// Wall time of the whole session until idle (reconciliation, streaming, pushes, acks).
    session: Duration,
    sessions_per_s: Option<f64>,
}

impl Measured {
    fn bytes(&self) -> u64 {
        self.bytes_up + self.bytes_down
    }

    fn fail(&mut self, why: impl Into<String>) {
        self.correct = false;
        if !self.note.is_empty() {
            self.note.push_str("; ");
        }
        self.note.push_str(&why.into());
    }
}

/// A reconciliation engine under test. `state` describes the client's knowledge about the
/// relay for engines that keep some (others ignore it); `throughput` asks for sessions per
/// second on the relay side, measured for about that long.
trait Engine {
    fn name(&self) -> &'static str;
    fn run(&self, sc: &Scenario, state: ClientState, throughput: Option<Duration>) -> Measured;
}

/// The `negentropy` crate.
struct NegentropyPeer;

fn neg_storage<'a>(items: impl Iterator<Item = (u64, &'a Node)>) -> NegentropyStorageVector {
    let mut storage = NegentropyStorageVector::new();
    for (ts, node) in items {
        storage
            .insert(ts, Id::from_byte_array(node.id.0))
            .unwrap_or_else(|e| panic!("negentropy insert: {e}"));
    }
    storage
        .seal()
        .unwrap_or_else(|e| panic!("negentropy seal: {e}"));
    storage
}

impl Engine for NegentropyPeer {
    fn name(&self) -> &'static str {
        "negentropy"
    }

    fn run(&self, sc: &Scenario, _state: ClientState, throughput: Option<Duration>) -> Measured {
        let mut m = Measured {
            path: "ranges".into(),
            correct: true,
            ..Default::default()
        };
        let client_storage = neg_storage(sc.client_items());
        let relay_storage = neg_storage(sc.relay_items());
        let replay_storage = throughput.map(|_| relay_storage.clone());
        let result = (|| -> Result<Vec<Vec<u8>>, negentropy::Error> {
            let mut client = Negentropy::owned(client_storage, 0)?;
            let mut relay = Negentropy::owned(relay_storage, 0)?;
            let (mut have, mut need) = (Vec::new(), Vec::new());
            let mut sent = Vec::new();
            let mut msg = timed(&mut m.client_cpu, || client.initiate())?;
            loop {
                m.rtt += 1;
                m.flights += 2;
                m.bytes_up += msg.len() as u64;
                let answer = timed(&mut m.relay_cpu, || relay.reconcile(&msg))?;
                m.bytes_down += answer.len() as u64;
                sent.push(msg);
                let next = timed(&mut m.client_cpu, || {
                    client.reconcile_with_ids(&answer, &mut have, &mut need)
                })?;
                match next {
                    Some(next) => msg = next,
                    None => break,
                }
                if m.rtt > 10_000 {
                    m.fail("more than 10,000 round trips");
                    break;
                }
            }
            let have: HashSet<NodeId> = have.iter().map(|id| NodeId(**id)).collect();
            let need: HashSet<NodeId> = need.iter().map(|id| NodeId(**id)).collect();
            if have != sc.only(Side::ClientOnly) {
                m.fail(format!("have: {} ids, wrong", have.len()));
            }
            if need != sc.only(Side::RelayOnly) {
                m.fail(format!("need: {} ids, wrong", need.len()));
            }
            Ok(sent)
        })();
        match result {
            Err(e) => m.fail(format!("negentropy error: {e}")),
            Ok(sent) => {
                if let (Some(budget), Some(storage)) = (throughput, replay_storage) {
                    m.sessions_per_s = Some(repeat_for(budget, || {
                        let mut relay = Negentropy::borrowed(&storage, 0)
                            .unwrap_or_else(|e| panic!("negentropy: {e}"));
                        for msg in &sent {
                            let _ = relay.reconcile(msg);
                        }
                    }));
                }
            }
        }
        m
    }
}

/// Replays the relay side of a finished reconciliation on fresh sessions (the room is as it
/// was at `hello`): sessions per second if `throughput` gives a budget, and the relay's time
/// without catch-up credit. Returns the wall time spent.
fn replay_relay_side(
    hub: &mut Hub,
    m: &mut Measured,
    frames: &[Bytes],
    throughput: Option<Duration>,
    t0: Instant,
) -> Duration {
    let mut next_sid = 1_000u64;
    let start = now();
    let mut replay = |frames: &[Bytes]| {
        next_sid += 1;
        hub.connect(next_sid, t0);
        for f in frames {
            let _ = hub.handle_frame(next_sid, f, t0);
        }
        let _ = hub.disconnect(next_sid);
    };
    m.sessions_per_s = throughput.map(|budget| repeat_for(budget, || replay(frames)));
    let no_credit = without_credit(frames);
    let rate = repeat_for(NO_BATCH_BUDGET, || replay(&no_credit));
    m.relay_no_batch = Some(Duration::from_secs_f64(1.0 / rate));
    start.elapsed()
}

/// Time spent replaying a session's reconciliation frames without credit.
const NO_BATCH_BUDGET: Duration = Duration::from_millis(50);

/// A session's client frames with the `hello`'s catch-up credit set to zero: replayed, they
/// make the relay reconcile without assembling any `batch`.
fn without_credit(frames: &[Bytes]) -> Vec<Bytes> {
    frames
        .iter()
        .map(|frame| match protocol::decode(frame) {
            Ok(Message::Hello(mut hello)) => {
                hello.credit = 0;
                Message::Hello(hello)
                    .encode()
                    .unwrap_or_else(|_| frame.clone())
            }
            _ => frame.clone(),
        })
        .collect()
}

/// Runs `session` repeatedly for about `budget` (at least three times); sessions per second.
fn repeat_for(budget: Duration, mut session: impl FnMut()) -> f64 {
    let start = now();
    let mut count = 0u64;
    while count < 3 || start.elapsed() < budget {
        session();
        count += 1;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// weft as it is on `main`: the pure `Hub` and a `Link`, in memory.
struct WeftCurrent;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Up,
    Down,
}

/// Per-session accounting of the weft exchange.
#[derive(Default)]
struct Tally {
    m: Measured,
    last_dir: Option<Dir>,
    /// One-way flights of reconciliation messages until both sides know what to send.
    flights: u64,
    /// Flights toward the client: the round trips until the client knows the difference.
    answers: u64,
    /// The client is steady and its pushes are queued: stop counting.
    done: bool,
    plan: Option<Plan>,
    /// The sketch needed its extension.
    extended: bool,
    /// The sketch path fell back to refinement.
    refined: bool,
    nodes_down: u64,
    arrived: u64,
    /// Client frames of reconciliation, for replaying the relay side.
    recon_up: Vec<Bytes>,
}

impl Tally {
    fn turn(&mut self, dir: Dir) {
        if self.last_dir != Some(dir) {
            self.flights += 1;
            if dir == Dir::Down {
                self.answers += 1;
            }
            self.last_dir = Some(dir);
        }
    }

    /// Accounts one frame in flight.
    fn frame(&mut self, dir: Dir, frame: &Bytes) {
        let ty = protocol::peek_type(frame);
        if dir == Dir::Down && ty == Some(MessageType::Batch) {
            self.nodes_down += nodes_in(frame);
        }
        if dir == Dir::Down
            && ty == Some(MessageType::Welcome)
            && let Ok(Message::Welcome(w)) = protocol::decode(frame)
        {
            self.plan = Some(w.plan);
        }
        if dir == Dir::Up && ty == Some(MessageType::Retry) {
            self.extended = true;
        }
        if dir == Dir::Down && ty == Some(MessageType::Buckets) && self.plan == Some(Plan::Sketch) {
            self.refined = true;
        }
        if self.done {
            return;
        }
        let counted = match ty {
            Some(ty) if is_exchange(ty) => {
                self.turn(dir);
                if dir == Dir::Up {
                    self.recon_up.push(frame.clone());
                }
                frame.len()
            }
            // The end of the stream, not a turn of the exchange.
            Some(MessageType::CatchUpDone) => frame.len(),
            Some(MessageType::Batch | MessageType::Pack | MessageType::Broadcast) => {
                let overhead = node_frame_overhead(frame);
                self.m.stream_framing_bytes += overhead as u64;
                overhead
            }
            Some(MessageType::Credit) => {
                self.m.stream_framing_bytes += frame.len() as u64;
                frame.len()
            }
            // Acks, presence, errors: not part of reconciliation.
            _ => 0,
        } as u64;
        match dir {
            Dir::Up => self.m.bytes_up += counted,
            Dir::Down => self.m.bytes_down += counted,
        }
    }
}

/// Messages of the reconciliation exchange proper (each flight of them is a turn).
fn is_exchange(ty: MessageType) -> bool {
    matches!(
        ty,
        MessageType::Hello
            | MessageType::Welcome
            | MessageType::Ids
            | MessageType::Need
            | MessageType::Sketch
            | MessageType::Want
            | MessageType::Retry
            | MessageType::Buckets
            | MessageType::BucketIds
            | MessageType::Missing
    )
}

/// Bytes of a `batch`/`broadcast`/`pack` frame before its nodes: `[type, [head, [nodes…]]]`.
fn node_frame_overhead(frame: &[u8]) -> usize {
    let mut rest = frame;
    let _ = (|| -> Option<()> {
        rmp::decode::read_array_len(&mut rest).ok()?;
        rmp::decode::read_int::<u64, _>(&mut rest).ok()?;
        rmp::decode::read_array_len(&mut rest).ok()?;
        rmp::decode::read_int::<u64, _>(&mut rest).ok()?;
        rmp::decode::read_array_len(&mut rest).ok()?;
        Some(())
    })();
    frame.len() - rest.len()
}

fn nodes_in(frame: &[u8]) -> u64 {
    let mut rest = frame;
    (|| -> Option<u64> {
        rmp::decode::read_array_len(&mut rest).ok()?;
        rmp::decode::read_int::<u64, _>(&mut rest).ok()?;
        rmp::decode::read_array_len(&mut rest).ok()?;
        rmp::decode::read_int::<u64, _>(&mut rest).ok()?;
        rmp::decode::read_array_len(&mut rest).ok().map(u64::from)
    })()
    .unwrap_or(0)
}

impl WeftCurrent {
    fn build_room(sc: &Scenario) -> Room {
        let mut room = Room::new(
            room_id(),
            EPOCH,
            NodeLimits::default(),
            OrphanLimits::default(),
        );
        for (_, node) in sc.relay_items() {
            room.restore(node.clone())
                .unwrap_or_else(|e| panic!("relay node refused: {e:?}"));
        }
        // As the server does after loading a room: hash the prefix tree once, so sessions pay
        // only for what changed since.
        room.warm_indexes();
        room
    }

    /// The client's replica, from the scenario alone (the relay numbers its nodes in the
    /// scenario's order, so arrival numbers follow from it).
    fn build_replica(sc: &Scenario, state: ClientState) -> Replica {
        let mut replica = Replica::new(room_id());
        if state == ClientState::Empty {
            return replica;
        }
        let mut relay_seq = 0u64;
        let mut last_shared_seq = 0u64;
        // The relay's arrival number just before the first node the client lacks.
        let mut complete_through: Option<u64> = None;
        for (r, side) in &sc.items {
            if *side != Side::ClientOnly {
                relay_seq += 1;
            }
            match side {
                Side::RelayOnly => {
                    complete_through.get_or_insert(relay_seq - 1);
                    continue;
                }
                Side::Both => last_shared_seq = relay_seq,
                Side::ClientOnly => {}
            }
            let synced = match state {
                ClientState::Synced => true,
                ClientState::PrevEpoch => *side == Side::Both,
                ClientState::Cold | ClientState::Empty => false,
            };
            replica
                .insert(sc.node(*r).clone(), synced)
                .unwrap_or_else(|e| panic!("client node refused: {e}"));
        }
        match state {
            ClientState::Synced => {
                replica.complete_through(EPOCH, complete_through.unwrap_or(relay_seq));
            }
            ClientState::PrevEpoch => {
                replica.complete_through(EPOCH - 1, last_shared_seq);
                replica.sets(SketchKey::for_room(&room_id(), EPOCH - 1));
            }
            ClientState::Cold => {
                replica.sets(SketchKey::for_room(&room_id(), EPOCH));
            }
            ClientState::Empty => {}
        }
        replica
    }
}

/// The client's `Link` and `Replica` on a thread of their own: the relay's core and caches are
/// not the client's, as when they run in different processes.
struct ClientThread<'scope> {
    jobs: mpsc::Sender<Bytes>,
    replies: mpsc::Receiver<ClientReply>,
    thread: std::thread::ScopedJoinHandle<'scope, Replica>,
}

/// What the client thread did with one frame.
struct ClientReply {
    spent: Duration,
    result: Result<(Vec<SyncEvent>, Vec<Bytes>), String>,
    became_steady: bool,
}

impl<'scope> ClientThread<'scope> {
    /// Builds the replica (untimed, so its memory belongs to that thread, as in a client
    /// process) and starts the link (timed) on a new thread; returns the `hello` and its cost.
    fn start<'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        build: impl FnOnce() -> Replica + Send + 'scope,
    ) -> (Self, Result<(Bytes, Duration), String>) {
        let (jobs, job_rx) = mpsc::channel::<Bytes>();
        let (reply_tx, replies) = mpsc::channel::<ClientReply>();
        let (start_tx, start_rx) = mpsc::channel();
        let thread = scope.spawn(move || {
            let mut replica = build();
            let mut spent = Duration::ZERO;
            let started = timed(&mut spent, || Link::start(&replica, SKETCHES, WINDOW));
            let mut link = match started {
                Ok((link, hello)) => {
                    let _ = start_tx.send(Ok((hello, spent)));
                    link
                }
                Err(e) => {
                    let _ = start_tx.send(Err(e.to_string()));
                    return replica;
                }
            };
            for frame in job_rx {
                let was_steady = link.is_steady();
                let mut spent = Duration::ZERO;
                let result = timed(&mut spent, || link.handle_frame(&mut replica, &frame))
                    .map(|out| (out.events, out.send))
                    .map_err(|e| e.to_string());
                let became_steady = !was_steady && link.is_steady();
                let reply = ClientReply {
                    spent,
                    result,
                    became_steady,
                };
                if reply_tx.send(reply).is_err() {
                    break;
                }
            }
            replica
        });
        let started = start_rx
            .recv()
            .unwrap_or_else(|_| Err("client thread died".into()));
        (
            Self {
                jobs,
                replies,
                thread,
            },
            started,
        )
    }

    fn handle(&mut self, frame: Bytes) -> ClientReply {
        let died = || ClientReply {
            spent: Duration::ZERO,
            result: Err("client thread died".into()),
            became_steady: false,
        };
        if self.jobs.send(frame).is_err() {
            return died();
        }
        self.replies.recv().unwrap_or_else(|_| died())
    }

    /// Stops the thread and hands back the replica.
    fn finish(self) -> Replica {
        drop(self.jobs);
        self.thread
            .join()
            .unwrap_or_else(|_| panic!("client thread panicked"))
    }
}

impl Engine for WeftCurrent {
    fn name(&self) -> &'static str {
        "weft"
    }

    fn run(&self, sc: &Scenario, state: ClientState, throughput: Option<Duration>) -> Measured {
        std::thread::scope(|scope| Self::session(scope, sc, state, throughput))
    }
}

impl WeftCurrent {
    fn session<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        sc: &'scope Scenario,
        state: ClientState,
        throughput: Option<Duration>,
    ) -> Measured {
        let room = Self::build_room(sc);
        let mut hub = Hub::new(room, HubConfig::immediate());
        let t0 = now();
        let sid = 1;
        let mut t = Tally {
            m: Measured {
                correct: true,
                ..Default::default()
            },
            ..Default::default()
        };
        hub.connect(sid, t0);
        let (mut client, started) =
            ClientThread::start(scope, move || Self::build_replica(sc, state));
        // The session starts once the client holds its replica.
        let session_start = now();
        let hello = match started {
            Ok((hello, spent)) => {
                t.m.client_cpu += spent;
                hello
            }
            Err(e) => {
                t.m.fail(format!("link start: {e}"));
                return t.m;
            }
        };
        let mut up: Vec<Bytes> = vec![hello];
        let mut down: Vec<Bytes> = Vec::new();
        let mut replayed = false;
        let mut replay_time = Duration::ZERO;
        let mut waves = 0;
        while !(up.is_empty() && down.is_empty()) {
            waves += 1;
            if waves > MAX_WAVES {
                t.m.fail("session did not go idle");
                break;
            }
            // Before the client's pushes reach the relay, the room is as it was at `hello`:
            // replay the relay side of this session there.
            if t.done && !replayed {
                replayed = true;
                replay_time = replay_relay_side(&mut hub, &mut t.m, &t.recon_up, throughput, t0);
            }
            for frame in std::mem::take(&mut up) {
                t.frame(Dir::Up, &frame);
                let ty = protocol::peek_type(&frame);
                let recon = ty.is_some_and(is_exchange);
                let mut spent = Duration::ZERO;
                let out = timed(&mut spent, || hub.handle_frame(sid, &frame, t0));
                // After a sketch or refinement, the call that finishes catch-up computes the
                // root for the final check: it counts too.
                let verified_plan = matches!(t.plan, Some(Plan::Sketch | Plan::Refine));
                let finishes = verified_plan
                    && out
                        .frames
                        .iter()
                        .any(|o| protocol::peek_type(&o.frame) == Some(MessageType::CatchUpDone));
                if (recon || finishes) && !t.done {
                    t.m.relay_cpu += spent;
                }
                if !out.closes.is_empty() {
                    t.m.fail(format!("relay closed the session: {:?}", out.closes));
                }
                down.extend(hub.resolve(out).frames_for(sid).cloned());
            }
            let mut pushes_now = false;
            for frame in std::mem::take(&mut down) {
                t.frame(Dir::Down, &frame);
                let ty = protocol::peek_type(&frame);
                if ty == Some(MessageType::ErrorMessage) {
                    t.m.fail(format!("relay error frame: {:?}", protocol::decode(&frame)));
                }
                if ty == Some(MessageType::Ack)
                    && let Ok(Message::Ack(ack)) = protocol::decode(&frame)
                {
                    let dups = ack
                        .outcomes
                        .iter()
                        .filter(|o| matches!(o, Outcome::Duplicate(_)));
                    t.m.redundant_nodes += dups.count() as u64;
                }
                let recon = ty.is_some_and(|ty| is_exchange(ty) || ty == MessageType::CatchUpDone);
                let reply = client.handle(frame);
                if recon && !t.done {
                    t.m.client_cpu += reply.spent;
                }
                match reply.result {
                    Ok((events, send)) => {
                        for e in &events {
                            match e {
                                SyncEvent::Arrived(_) => t.arrived += 1,
                                SyncEvent::RelayError(e) => t.m.fail(format!("relay error {e:?}")),
                                SyncEvent::Settled {
                                    outcome: Outcome::Rejected(r),
                                    ..
                                } => t.m.fail(format!("node rejected: {r:?}")),
                                _ => {}
                            }
                        }
                        if reply.became_steady {
                            pushes_now = true;
                        }
                        up.extend(send);
                    }
                    Err(e) => {
                        t.m.fail(format!("link error: {e}"));
                        let _ = client.finish();
                        return t.m;
                    }
                }
            }
            if pushes_now {
                // The client knows what to push: count what it queued (pack framing, the last
                // credit), then stop counting. The packs reach the relay in the next wave,
                // after the relay-side replay.
                for f in &up {
                    t.frame(Dir::Up, f);
                }
                t.done = true;
            }
        }
        if !t.done {
            t.m.fail("the client never became steady");
        }
        if !replayed {
            // Nothing to push: the session went idle as soon as the client was steady.
            replay_time = replay_relay_side(&mut hub, &mut t.m, &t.recon_up, throughput, t0);
        }
        let replica = client.finish();
        // Less the relay-side replay, which ran in the middle.
        t.m.session = session_start.elapsed().saturating_sub(replay_time);
        t.m.rtt = t.answers;
        t.m.flights = t.flights;
        t.m.redundant_nodes += t.nodes_down.saturating_sub(t.arrived);
        t.m.path = match t.plan {
            Some(Plan::InSync) => "in-sync",
            Some(Plan::CatchUp) => "catch-up",
            Some(Plan::SendIds) => "id-list",
            Some(Plan::Sketch) if t.refined => "sketch→refine",
            Some(Plan::Sketch) if t.extended => "sketch+ext",
            Some(Plan::Sketch) => "sketch",
            Some(Plan::Refine) => "refine",
            None => "none",
        }
        .to_owned();
        // Ground truth: both hold the union, and the client trusts all of it.
        let union: HashSet<NodeId> = sc.items.iter().map(|(r, _)| sc.node(*r).id).collect();
        let room_ids: HashSet<NodeId> = hub.room().nodes().map(|n| *n.id()).collect();
        let replica_ids: HashSet<NodeId> = replica.ids().copied().collect();
        if room_ids != union {
            t.m.fail(format!(
                "room holds {} nodes, union is {}",
                room_ids.len(),
                union.len()
            ));
        }
        if replica_ids != union {
            t.m.fail(format!(
                "replica holds {} nodes, union is {}",
                replica_ids.len(),
                union.len()
            ));
        }
        let unsynced = replica.unsynced().count();
        if unsynced > 0 {
            t.m.fail(format!("{unsynced} replica nodes left unsynced"));
        }
        if hub.room().orphan_count() > 0 {
            t.m.fail(format!("{} orphans in the room", hub.room().orphan_count()));
        }
        t.m
    }
}

// -------------------------------------------------------------------------------------------------
// Round trips at d = 1,000 over many difference sets

/// How often a cold client's d = 1,000 session needed more than one round trip: the sketch is
/// sized from an estimate, and a decode fails now and then (then the extension, or refinement,
/// costs a round trip each).
struct Spread {
    n: usize,
    trials: usize,
    by_rtt: std::collections::BTreeMap<u64, usize>,
    wrong: usize,
    max_ratio: f64,
}

impl Spread {
    fn p99(&self) -> u64 {
        let mut seen = 0;
        for (rtt, count) in &self.by_rtt {
            seen += count;
            if seen * 100 >= self.trials * 99 {
                return *rtt;
            }
        }
        0
    }

    fn line(&self) -> String {
        let counts: Vec<String> = self
            .by_rtt
            .iter()
            .map(|(rtt, count)| format!("{count}× {rtt} RTT"))
            .collect();
        format!(
            "round trips at d = 1,000, cold client, {} difference sets of n = {}: {} (p99 {}), \
             worst {:.2}× d·32, wrong {}",
            self.trials,
            thousands(self.n as u64),
            counts.join(", "),
            self.p99(),
            self.max_ratio,
            self.wrong
        )
    }

    fn json(&self) -> serde_json::Value {
        let by_rtt: serde_json::Map<String, serde_json::Value> = self
            .by_rtt
            .iter()
            .map(|(rtt, count)| (rtt.to_string(), (*count).into()))
            .collect();
        serde_json::json!({
            "scenario": "d1000_rtt_spread",
            "n": self.n,
            "d": 1000,
            "trials": self.trials,
            "rtt_counts": by_rtt,
            "rtt_p99": self.p99(),
            "max_ratio_d32": self.max_ratio,
            "correct": self.wrong == 0,
        })
    }
}

fn rtt_spread(args: &Args, progress: &dyn Fn(&str)) -> Spread {
    let n = args.n.min(20_000);
    let wanted = args
        .only
        .as_ref()
        .is_none_or(|only| "d1000_rtt_spread".contains(only.as_str()));
    let trials = match (wanted, args.smoke) {
        (false, _) => 0,
        (true, true) => 20,
        (true, false) => 300,
    };
    progress(&format!(
        "d = 1,000 round trips over {trials} difference sets (n = {})",
        thousands(n as u64)
    ));
    let backbone = Backbone::build(n);
    let mut spread = Spread {
        n,
        trials,
        by_rtt: Default::default(),
        wrong: 0,
        max_ratio: 0.0,
    };
    for seed in 1..=trials as u64 {
        let sc = Scenario::scattered_seeded(&backbone, n, 1_000, "spread", String::new(), seed);
        let m = WeftCurrent.run(&sc, ClientState::Cold, None);
        *spread.by_rtt.entry(m.rtt).or_default() += 1;
        spread.wrong += usize::from(!m.correct);
        let ratio = ratio_d32(m.bytes(), sc.d()).unwrap_or(0.0);
        spread.max_ratio = spread.max_ratio.max(ratio);
    }
    spread
}

// -------------------------------------------------------------------------------------------------
// Output

/// One printed row: an engine's result on a scenario (with negentropy's beside it).
struct Row {
    scenario: String,
    title: String,
    state: ClientState,
    n: usize,
    d: usize,
    weft: Measured,
    neg: Measured,
}

fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.1}")
    }
}

fn ratio_d32(bytes: u64, d: usize) -> Option<f64> {
    (d > 0).then(|| bytes as f64 / (d as f64 * 32.0))
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        None => "—".into(),
        Some(r) if r >= 100.0 => format!("{r:.0}×"),
        Some(r) => format!("{r:.2}×"),
    }
}

fn quotient(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn json_f64(v: Option<f64>) -> serde_json::Value {
    v.filter(|v| v.is_finite())
        .map_or(serde_json::Value::Null, serde_json::Value::from)
}

fn row_json(r: &Row) -> serde_json::Value {
    let w = &r.weft;
    let g = &r.neg;
    let mut v = serde_json::json!({
        "scenario": r.scenario,
        "title": r.title,
        "engine": "weft-current",
        "client_state": r.state.label(),
        "path": w.path,
        "n": r.n,
        "d": r.d,
        "rtt": w.rtt,
        "flights": w.flights,
        "bytes_up": w.bytes_up,
        "bytes_down": w.bytes_down,
        "bytes": w.bytes(),
        "ratio_d32": json_f64(ratio_d32(w.bytes(), r.d)),
        "relay_cpu_ms": w.relay_cpu.as_secs_f64() * 1e3,
        "relay_cpu_no_batch_ms": json_f64(w.relay_no_batch.map(|d| d.as_secs_f64() * 1e3)),
        "client_cpu_ms": w.client_cpu.as_secs_f64() * 1e3,
        "correct": w.correct,
        "redundant_nodes": w.redundant_nodes,
        "recon_message_bytes": w.bytes() - w.stream_framing_bytes,
        "stream_framing_bytes": w.stream_framing_bytes,
        "session_wall_ms": w.session.as_secs_f64() * 1e3,
        "note": w.note,
        "negentropy_rtt": g.rtt,
        "negentropy_flights": g.flights,
        "negentropy_bytes_up": g.bytes_up,
        "negentropy_bytes_down": g.bytes_down,
        "negentropy_bytes": g.bytes(),
        "negentropy_ratio_d32": json_f64(ratio_d32(g.bytes(), r.d)),
        "negentropy_relay_cpu_ms": g.relay_cpu.as_secs_f64() * 1e3,
        "negentropy_client_cpu_ms": g.client_cpu.as_secs_f64() * 1e3,
        "negentropy_correct": g.correct,
        "bytes_vs_negentropy": json_f64(quotient(w.bytes() as f64, g.bytes() as f64)),
        "rtt_vs_negentropy": json_f64(quotient(w.rtt as f64, g.rtt as f64)),
        "relay_cpu_vs_negentropy": json_f64(quotient(
            w.relay_cpu.as_secs_f64(),
            g.relay_cpu.as_secs_f64()
        )),
        "client_cpu_vs_negentropy": json_f64(quotient(
            w.client_cpu.as_secs_f64(),
            g.client_cpu.as_secs_f64()
        )),
        "cpu_clock": "wall time, one thread",
    });
    if let (Some(ws), Some(gs)) = (w.sessions_per_s, g.sessions_per_s)
        && let Some(obj) = v.as_object_mut()
    {
        obj.insert("sessions_per_s".into(), ws.into());
        obj.insert("negentropy_sessions_per_s".into(), gs.into());
    }
    v
}

/// One table line: `versus` is negentropy's result on a weft line, `None` on its own line.
fn cells(r: &Row, m: &Measured, versus: Option<&Measured>) -> Vec<String> {
    let (engine, client) = match versus {
        Some(_) => ("weft", r.state.label()),
        None => ("negentropy", "—"),
    };
    let vs = |f: &dyn Fn(&Measured) -> f64| {
        versus.map_or(String::new(), |g| fmt_ratio(quotient(f(m), f(g))))
    };
    vec![
        r.title.clone(),
        engine.into(),
        client.into(),
        m.path.clone(),
        m.rtt.to_string(),
        m.flights.to_string(),
        thousands(m.bytes_up),
        thousands(m.bytes_down),
        thousands(m.bytes()),
        fmt_ratio(ratio_d32(m.bytes(), r.d)),
        ms(m.relay_cpu),
        m.relay_no_batch.map_or(String::new(), ms),
        ms(m.client_cpu),
        if m.correct { "yes" } else { "NO" }.into(),
        vs(&|x| x.bytes() as f64),
        vs(&|x| x.relay_cpu.as_secs_f64()),
        vs(&|x| x.client_cpu.as_secs_f64()),
        versus.map_or(String::new(), |_| thousands(m.redundant_nodes)),
        versus.map_or(String::new(), |_| ms(m.session)),
    ]
}

fn print_table(rows: &[Row], n: usize) {
    println!(
        "reconciliation, n = {} per side; weft = current engine (Hub + Link in memory), \
         negentropy 0.5 same sets, same run; CPU = wall ms on one thread",
        thousands(n as u64)
    );
    println!(
        "bytes exclude node content (weft counts batch/pack/credit framing); relay/client ms = \
         reconciliation calls only; no-batch = the relay's calls replayed without catch-up \
         credit (no batch assembled); session ms = weft's whole session to idle (streaming, \
         pushes, acks); redund. = nodes sent to a side that had them"
    );
    let headers = [
        "scenario",
        "engine",
        "client",
        "path",
        "rtt",
        "flights",
        "up B",
        "down B",
        "total B",
        "×d·32",
        "relay ms",
        "no-batch",
        "client ms",
        "ok",
        "bytes ×neg",
        "relay ×neg",
        "client ×neg",
        "redund.",
        "session ms",
    ];
    // Negentropy's result is the same for every weft client state of a scenario: one line,
    // after the scenario's last weft line.
    let mut ordered: Vec<Vec<String>> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        ordered.push(cells(r, &r.weft, Some(&r.neg)));
        if rows.get(i + 1).is_none_or(|next| next.title != r.title) {
            ordered.push(cells(r, &r.neg, None));
        }
    }
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            ordered
                .iter()
                .map(|l| l[i].chars().count())
                .chain([headers[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i < 4 {
                let _ = write!(s, "{c}{} ", " ".repeat(pad));
            } else {
                let _ = write!(s, "{}{c} ", " ".repeat(pad));
            }
        }
        println!("{}", s.trim_end());
    };
    line(&headers.map(String::from));
    for l in &ordered {
        line(l);
    }
    for r in rows {
        if let (Some(ws), Some(gs)) = (r.weft.sessions_per_s, r.neg.sessions_per_s) {
            println!(
                "sessions/s per core at {} (relay side, {} client): weft {:.1}, negentropy {:.1} \
                 (×{:.2})",
                r.title,
                r.state.label(),
                ws,
                gs,
                ws / gs
            );
        }
    }
    for r in rows {
        for (engine, m) in [("weft", &r.weft), ("negentropy", &r.neg)] {
            if !m.note.is_empty() {
                println!(
                    "note: {} / {engine} / {}: {}",
                    r.title,
                    r.state.label(),
                    m.note
                );
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "recon bench: {e}\nusage: cargo bench --bench recon -- [--n N] [--json] [--smoke] \
                 [--only SCENARIO]"
            );
            return ExitCode::from(2);
        }
    };
    let n = args.n;
    let budget = Duration::from_millis(if args.smoke { 500 } else { 2_000 });
    let started = now();
    let progress = |what: &str| {
        eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
    };
    progress(&format!(
        "building the backbone: {} nodes",
        thousands(n as u64)
    ));
    let backbone = Backbone::build(n);
    let big_d = (n / 10).max(2);
    type Make<'a> = Box<dyn Fn() -> Scenario<'a> + 'a>;
    let bb = &backbone;
    let makers: Vec<Make> = vec![
        Box::new(move || Scenario::in_sync(bb, n)),
        Box::new(move || Scenario::scattered(bb, n, 10, "d10", "d = 10".into())),
        Box::new(move || {
            let mut sc = Scenario::scattered(
                bb,
                n,
                1_000,
                "d1000_scattered",
                "d = 1,000 scattered".into(),
            );
            sc.throughput = true;
            sc
        }),
        Box::new(move || {
            Scenario::scattered(
                bb,
                n,
                big_d,
                "d_tenth",
                format!("d = {}", thousands(big_d as u64)),
            )
        }),
        Box::new(move || Scenario::newest(bb, n, 1_000)),
        Box::new(move || Scenario::scattered(bb, n, n, "half_divergent", "50% divergent".into())),
        Box::new(move || Scenario::client_empty(bb, n)),
    ];
    let engines: (WeftCurrent, NegentropyPeer) = (WeftCurrent, NegentropyPeer);
    let mut rows: Vec<Row> = Vec::new();
    for make in &makers {
        let sc = make();
        if args
            .only
            .as_ref()
            .is_some_and(|only| !sc.key.contains(only.as_str()))
        {
            continue;
        }
        let d = sc.d();
        let tp = sc.throughput.then_some(budget);
        progress(&format!("{}: {}", sc.title, engines.1.name()));
        let neg = engines.1.run(&sc, ClientState::Empty, tp);
        for &state in &sc.states {
            progress(&format!(
                "{}: {} ({})",
                sc.title,
                engines.0.name(),
                state.label()
            ));
            let weft = engines.0.run(&sc, state, tp);
            let row = Row {
                scenario: if sc.states.len() > 1 && state == ClientState::Cold {
                    format!("{}_cold", sc.key)
                } else {
                    sc.key.to_owned()
                },
                title: sc.title.clone(),
                state,
                n: sc.n,
                d,
                weft,
                neg: neg.clone(),
            };
            if args.json {
                println!("{}", row_json(&row));
            }
            rows.push(row);
        }
    }
    let spread = rtt_spread(&args, &progress);
    progress("done");
    if !args.json {
        if !rows.is_empty() {
            print_table(&rows, n);
        }
        if spread.trials > 0 {
            println!("{}", spread.line());
        }
    } else if spread.trials > 0 {
        println!("{}", spread.json());
    }
    let wrong: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            let w = (!r.weft.correct).then(|| format!("{} weft ({})", r.title, r.state.label()));
            let g = (!r.neg.correct).then(|| format!("{} negentropy", r.title));
            w.into_iter().chain(g)
        })
        .chain((spread.wrong > 0).then(|| format!("{} d = 1,000 spread sessions", spread.wrong)))
        .collect();
    if wrong.is_empty() {
        ExitCode::SUCCESS
    } else {
        // Any wrong result fails the run, smoke or full, so nobody quotes a wrong table.
        eprintln!("recon bench: WRONG results: {}", wrong.join(", "));
        ExitCode::FAILURE
    }
}
