//! Relay fan-out: one writer, N receivers in one room, small nodes at a target rate.
//!
//! The relay is the release `weft serve` binary in its own process, pinned to CPU 0 with
//! `taskset` when available; this process is the load generator, pinned to CPU 1. Receivers are
//! raw tokio-tungstenite connections that speak the protocol through `weft::protocol` (`hello`
//! with empty hints → `welcome`), all on one single-threaded runtime; the writer runs on its
//! own thread and sends one `pack` of one node (~100-byte payload carrying its send time) per
//! tick. Each receiver decodes every `broadcast`, checks that arrival numbers are contiguous
//! and records latency = receive time − send time. Receivers decode broadcasts with a
//! borrowing view of the wire layout (no allocation per node) so that the generator, which has
//! one core like the relay, is not the bottleneck; `--full-decode` uses `weft::protocol::decode`
//! instead, and `--smoke` runs both on every frame and fails on any disagreement.
//!
//! For each receiver count and offered rate (deliveries/s = nodes/s × receivers) it prints the
//! achieved deliveries/s, p50/p99/max latency, WebSocket messages a receiver got per node
//! delivered (below 1 when the relay joins broadcasts), CPU of relay and generator, and every
//! loss or close. A receiver that misses a node while staying open is a silent loss and fails the
//! bench; a close with 4000 "resync required" is the relay's typed answer to overload and is
//! reported. The sweep for one receiver count stops once a step saturates. Then two overload
//! runs: the largest receiver count at twice its best achieved rate, and a slow-consumer run
//! (a fraction of receivers stop reading) on a relay with a smaller `--queue-limit`, checking
//! that stalled receivers get a contiguous prefix and then lose the connection (typed close),
//! never a gap, and that relay RSS stays bounded; it reports how long after the writer's first
//! node the relay closed the last stalled receiver (from the relay's log). Last, the idle-room
//! pack → ack latency: one pack at a time into a quiet room ([`idle`]).
//!
//! ```text
//! cargo bench --bench fanout                         # full sweep, N = 100 and 1000
//! cargo bench --bench fanout -- --smoke              # a few seconds; exit 1 on wrong results
//! cargo bench --bench fanout -- --receivers 1000 --rates 200k,400k --duration 5 --json
//! ```
//!
//! Flags: `--receivers N[,N..]`, `--rates R[,R..]` (deliveries/s, `k`/`m` suffixes),
//! `--duration SECS` per step, `--warmup SECS` (excluded from statistics), `--payload BYTES`,
//! `--drain SECS` (how long to wait for late deliveries), `--no-overload`,
//! `--overload-duration SECS`, `--slow-queue-limit BYTES`, `--slow-fraction F`,
//! `--full-decode`, `--json`,
//! `--smoke`. `WEFT_BENCH_RELAY=/path/to/weft` runs another relay build.

#![allow(clippy::disallowed_methods)] // A bench owns its clock.

mod common;
// In a folder of its own: a file directly in benches/ would be taken for another bench.
#[path = "fanout/idle.rs"]
mod idle;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde::de::IgnoredAny;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use weft::node::RoomId;
use weft::protocol::{self, Message, Outcome, Pack};

use common::{Flags, Output, Relay, ms, now_ns, percentile, si};

const RELAY_CPU: usize = 0;
const GENERATOR_CPU: usize = 1;
/// Receivers' tungstenite read buffer. Small on purpose: tungstenite zero-fills the whole
/// spare buffer on every read attempt (including the one that finds the socket empty), so a
/// large buffer costs a memset per received frame.
const RECEIVER_READ_BUFFER: usize = 4096;

/// Everything one step needs.
#[derive(Clone, Debug)]
struct StepSpec {
    label: &'static str,
    receivers: usize,
    /// Receivers that stop reading right after the handshake until the writer is done.
    stalled: usize,
    /// Offered deliveries per second.
    rate: f64,
    duration: Duration,
    warmup: Duration,
    payload: usize,
    drain: Duration,
    decode: Decode,
}

impl StepSpec {
    fn node_rate(&self) -> f64 {
        self.rate / self.receivers.max(1) as f64
    }

    fn total_nodes(&self) -> u64 {
        (self.node_rate() * self.duration.as_secs_f64())
            .ceil()
            .max(1.0) as u64
    }

    fn warm_nodes(&self) -> u64 {
        let warm = (self.node_rate() * self.warmup.as_secs_f64()).floor() as u64;
        warm.min(self.total_nodes() / 2)
    }
}

/// What the writer saw.
#[derive(Debug, Default)]
struct WriterReport {
    sent: u64,
    accepted: u64,
    rejected: u64,
    max_seq: u64,
    /// Send time of the first node counted in the statistics.
    first_measured_ns: u64,
    start_ns: u64,
    end_ns: u64,
    error: Option<String>,
}

/// Live progress shared between receivers and the coordinator.
struct Progress {
    /// Highest contiguous arrival number each receiver holds.
    last: Vec<AtomicU64>,
    /// Set when a receiver's connection ended.
    ended: Vec<AtomicBool>,
    ready: AtomicUsize,
    failed: AtomicUsize,
}

/// What one receiver saw.
#[derive(Debug, Default)]
struct ReceiverReport {
    stalled: bool,
    /// Latencies in microseconds of nodes past the warm-up.
    latencies: Vec<u32>,
    measured: u64,
    received: u64,
    last_recv_ns: u64,
    last_seq: u64,
    /// First arrival number that was skipped, if any.
    gap: Option<(u64, u64)>,
    close: Option<u16>,
    /// How the connection ended when it was not a close frame.
    error: Option<String>,
    other_frames: u64,
    /// WebSocket messages received after joining, of every kind.
    messages: u64,
}

/// One step's result.
#[derive(Debug)]
struct StepResult {
    spec: StepSpec,
    writer: WriterReport,
    sent_rate: f64,
    achieved: f64,
    deliveries: u64,
    p50: u32,
    p99: u32,
    max: u32,
    closes: BTreeMap<String, usize>,
    /// Open receivers that skipped an arrival number: silent loss.
    gaps: usize,
    /// Receivers that neither got everything nor were closed before the drain deadline.
    late: usize,
    /// Stalled receivers that ended with a contiguous prefix (the typed-close path).
    stalled_ok: usize,
    relay_cpu: f64,
    gen_cpu: f64,
    /// CPU other processes on the machine took during the step (% of one CPU).
    other_cpu: f64,
    rss_start: u64,
    rss_end: u64,
    rss_max: u64,
    overflow_logs: usize,
    /// WebSocket messages per node delivered, over the receivers that kept reading.
    msgs_per_node: f64,
    /// Seconds from the writer's first node to the relay's decision to close the last stalled
    /// receiver, read from its log (steps with stalled receivers).
    stall_to_close: Option<f64>,
}

impl StepResult {
    fn clean(&self) -> bool {
        self.closes.is_empty()
            && self.gaps == 0
            && self.late == 0
            && self.writer.error.is_none()
            && self.writer.rejected == 0
    }

    /// The relay kept up: no loss, no close, nearly the offered rate.
    fn kept_up(&self) -> bool {
        self.clean()
            && self.achieved >= 0.9 * self.spec.rate
            && self.sent_rate >= 0.9 * self.spec.rate
    }

    fn closes_text(&self) -> String {
        if self.closes.is_empty() {
            return "-".into();
        }
        self.closes
            .iter()
            .map(|(code, n)| format!("{n}x{code}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.spec.receivers.to_string(),
            si(self.spec.rate),
            si(self.sent_rate),
            si(self.achieved),
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            format!("{:.3}", self.msgs_per_node),
            self.closes_text(),
            self.gaps.to_string(),
            self.late.to_string(),
            format!("{:.0}%", self.relay_cpu),
            format!(
                "{:.0}%{}",
                self.gen_cpu,
                if self.gen_cpu >= 90.0 { "!" } else { "" }
            ),
            format!("{:.0}%", self.other_cpu),
            format!("{}", self.rss_max / 1024),
        ]
    }

    fn json(&self, bench_info: &serde_json::Value) -> serde_json::Value {
        json!({
            "bench": "fanout",
            "kind": self.spec.label,
            "receivers": self.spec.receivers,
            "stalled_receivers": self.spec.stalled,
            "payload_bytes": self.spec.payload,
            "offered_deliveries_per_s": self.spec.rate,
            "sent_deliveries_per_s": self.sent_rate,
            "achieved_deliveries_per_s": self.achieved,
            "deliveries": self.deliveries,
            "nodes_sent": self.writer.sent,
            "nodes_accepted": self.writer.accepted,
            "p50_ms": f64::from(self.p50) / 1000.0,
            "p99_ms": f64::from(self.p99) / 1000.0,
            "max_ms": f64::from(self.max) / 1000.0,
            "ws_messages_per_node": self.msgs_per_node,
            "stall_to_close_s": self.stall_to_close,
            "closes": self.closes,
            "silent_gaps": self.gaps,
            "late": self.late,
            "stalled_contiguous": self.stalled_ok,
            "relay_overflow_closes_logged": self.overflow_logs,
            "relay_cpu_pct": self.relay_cpu,
            "generator_cpu_pct": self.gen_cpu,
            "other_processes_cpu_pct": self.other_cpu,
            "relay_rss_start_kib": self.rss_start,
            "relay_rss_end_kib": self.rss_end,
            "relay_rss_max_kib": self.rss_max,
            "writer_error": self.writer.error,
            "setup": bench_info,
        })
    }
}

const HEADERS: [&str; 15] = [
    "N",
    "offered/s",
    "sent/s",
    "achieved/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "msgs/node",
    "closes",
    "gaps",
    "late",
    "relay cpu",
    "gen cpu",
    "other cpu",
    "rss MiB",
];

fn main() -> ExitCode {
    let flags = Flags::parse(&[
        "receivers",
        "rates",
        "duration",
        "warmup",
        "payload",
        "drain",
        "no-overload",
        "overload-duration",
        "slow-queue-limit",
        "slow-fraction",
        "full-decode",
        "json",
        "smoke",
    ]);
    let out = Output {
        json: flags.has("json"),
    };
    match run(&flags, &out) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            out.note("FAILED: see the rows marked above");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fanout bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(flags: &Flags, out: &Output) -> anyhow::Result<bool> {
    let smoke = flags.has("smoke");
    let receivers = flags.list("receivers", if smoke { &[20] } else { &[100, 1000] });
    let duration = Duration::from_secs_f64(flags.value("duration", if smoke { 1.0 } else { 3.0 }));
    let warmup = Duration::from_secs_f64(flags.value("warmup", if smoke { 0.2 } else { 0.5 }));
    let payload: usize = flags.value("payload", 100);
    let drain = Duration::from_secs_f64(flags.value("drain", if smoke { 5.0 } else { 15.0 }));
    let overload = !smoke && !flags.has("no-overload");
    let decode = if smoke {
        Decode::Check
    } else if flags.has("full-decode") {
        Decode::Full
    } else {
        Decode::View
    };

    now_ns();
    let gen_pinned = common::pin_process(GENERATOR_CPU);
    let max_n = receivers.iter().copied().max().unwrap_or(0);
    common::check_fd_budget(max_n + 16)?;
    let relay = Relay::spawn(&[], Some(RELAY_CPU))?;
    let setup = json!({
        "relay": common::weft_binary().display().to_string(),
        "relay_pinned_cpu": relay.pinned.then_some(RELAY_CPU),
        "generator_pinned_cpu": gen_pinned.then_some(GENERATOR_CPU),
        "cpus": common::cpu_count(),
        "broadcast_decode": format!("{decode:?}"),
    });
    out.note(format!(
        "fanout: relay {} (pid {}, {}), generator {}; payload {payload} B, {}s per step \
         ({}s warm-up excluded), one node per pack, receivers decode: {decode:?}; load average {}",
        relay.addr,
        relay.pid(),
        if relay.pinned {
            format!("pinned to CPU {RELAY_CPU}")
        } else {
            "not pinned".into()
        },
        if gen_pinned {
            format!("pinned to CPU {GENERATOR_CPU}")
        } else {
            "not pinned".into()
        },
        duration.as_secs_f64(),
        warmup.as_secs_f64(),
        common::load_average(),
    ));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut ok = true;
    let mut rows = Vec::new();
    let mut results: Vec<StepResult> = Vec::new();
    let mut step_no = 0u64;
    for &n in &receivers {
        let n = n as usize;
        let rates = match flags.list("rates", &[]) {
            r if !r.is_empty() => r,
            _ if smoke => vec![2_000, 10_000],
            _ if n <= 100 => vec![
                25_000, 50_000, 100_000, 150_000, 200_000, 300_000, 400_000, 500_000, 700_000,
                1_000_000, 1_300_000, 1_600_000, 2_000_000,
            ],
            _ => vec![
                50_000, 100_000, 200_000, 300_000, 400_000, 500_000, 600_000, 800_000, 1_000_000,
                1_300_000,
            ],
        };
        for rate in rates {
            step_no += 1;
            let spec = StepSpec {
                label: "sweep",
                receivers: n,
                stalled: 0,
                rate: rate as f64,
                duration,
                warmup,
                payload,
                drain,
                decode,
            };
            let result = runtime.block_on(run_step(&relay, spec, step_no))?;
            out.record(result.json(&setup));
            // Silent loss or a failed writer is always wrong. In smoke runs (low rates) so is
            // any close or undelivered node; timing is not judged, CI machines are noisy.
            let failed = result.gaps > 0
                || result.writer.error.is_some()
                || result.writer.rejected > 0
                || (smoke && !result.clean());
            if failed {
                ok = false;
                out.note(format!("FAIL: {result:?}"));
            }
            let saturated = !result.kept_up() || result.p99 > 1_000_000;
            rows.push(result.row());
            results.push(result);
            if saturated && !smoke {
                break;
            }
        }
    }
    out.note("\nsweep (one writer, one node of ~100 B per pack; deliveries = nodes × receivers):");
    out.table(&HEADERS, &rows);
    out.note(
        "(gen cpu ! = the generator used ≥ 90% of its core: latency there may include time \
         frames waited for the generator; other cpu = other processes on the machine)",
    );

    // Best rates per receiver count.
    let mut best_rows = Vec::new();
    for &n in &receivers {
        let best = |limit_us: u32| {
            results
                .iter()
                .filter(|r| r.spec.receivers == n as usize && r.clean() && r.p99 < limit_us)
                .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
        };
        let cell = |r: Option<&StepResult>| match r {
            Some(r) => format!("{}/s (p99 {} ms)", si(r.achieved), ms(r.p99)),
            None => "none".into(),
        };
        let b50 = best(50_000);
        let b100 = best(100_000);
        out.record(json!({
            "bench": "fanout",
            "kind": "best",
            "receivers": n,
            "best_p99_under_50ms_per_s": b50.map(|r| r.achieved),
            "best_p99_under_100ms_per_s": b100.map(|r| r.achieved),
            "setup": setup,
        }));
        // DESIGN.md §11: ≥ 100k/s at N = 100 and ≥ 400k/s at N = 1000, p99 < 50 ms; peers
        // measured (best with p99 < 100 ms) y-sweet 30k/100k, Hocuspocus 50k/≥199k.
        let (target, peers) = match n {
            100 => ("≥ 100k/s", "y-sweet 30k, Hocuspocus 50k"),
            1000 => ("≥ 400k/s", "y-sweet 100k, Hocuspocus ≥ 199k"),
            _ => ("-", "-"),
        };
        best_rows.push(vec![
            n.to_string(),
            cell(b50),
            cell(b100),
            target.into(),
            peers.into(),
        ]);
    }
    out.note("\nbest achieved deliveries/s with no loss and no close:");
    out.table(
        &[
            "N",
            "p99 < 50 ms",
            "p99 < 100 ms",
            "target (p99 < 50 ms)",
            "peers (p99 < 100 ms)",
        ],
        &best_rows,
    );

    // Idle room: one pack at a time, each into a quiet room.
    step_no += 1;
    let (idle_receivers, idle_packs) = if smoke { (4, 50) } else { (10, 300) };
    let latencies = runtime.block_on(idle::pack_to_ack(
        &relay,
        &format!("idle-{step_no}"),
        idle_receivers,
        idle_packs,
        payload,
        RECEIVER_READ_BUFFER,
    ))?;
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    out.record(json!({
        "bench": "fanout",
        "kind": "idle_pack_to_ack",
        "receivers": idle_receivers,
        "packs": idle_packs,
        "p50_ms": f64::from(p50) / 1000.0,
        "p99_ms": f64::from(p99) / 1000.0,
        "setup": setup,
    }));
    out.note(format!(
        "\nidle room, {idle_packs} packs one at a time ({idle_receivers} receivers): pack → ack \
         p50 {} ms, p99 {} ms (target p50 ≤ 0.5 ms on memory://)",
        ms(p50),
        ms(p99)
    ));

    // Overload: the largest N at twice what it achieved, then slow consumers.
    let mut over_rows = Vec::new();
    if overload && max_n > 0 {
        let top = results
            .iter()
            .filter(|r| r.spec.receivers == max_n as usize)
            .map(|r| r.achieved.max(r.spec.rate * 0.5))
            .fold(0.0, f64::max);
        step_no += 1;
        let spec = StepSpec {
            label: "overload",
            receivers: max_n as usize,
            stalled: 0,
            rate: (top * 2.0).max(10_000.0),
            duration: Duration::from_secs_f64(flags.value("overload-duration", 5.0)),
            warmup,
            payload,
            drain,
            decode,
        };
        let result = runtime.block_on(run_step(&relay, spec, step_no))?;
        out.record(result.json(&setup));
        if result.gaps > 0 {
            ok = false;
        }
        over_rows.push((
            result.row(),
            "relay saturated, all receivers read at full speed".to_owned(),
        ));
    }
    drop(relay);

    if overload || smoke {
        let queue_limit: u64 =
            flags.value("slow-queue-limit", if smoke { 64 * 1024 } else { 1 << 20 });
        let fraction: f64 = flags.value("slow-fraction", 0.1);
        // Enough bytes per stalled receiver to fill its kernel buffers (the relay's send
        // buffer autotunes up to `tcp_wmem` max, 4 MiB by default) and then the queue.
        let (n, rate, secs, slow_payload) = if smoke {
            (4usize, 2_000.0, 1.5, 16 * 1024)
        } else {
            (100, 60_000.0, flags.value("overload-duration", 5.0), 4096)
        };
        let stalled = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
        let relay = Relay::spawn(
            &["--queue-limit".into(), queue_limit.to_string()],
            Some(RELAY_CPU),
        )?;
        step_no += 1;
        let spec = StepSpec {
            label: "slow_consumers",
            receivers: n,
            stalled,
            rate,
            duration: Duration::from_secs_f64(secs),
            warmup,
            payload: slow_payload,
            drain,
            decode,
        };
        let result = runtime.block_on(run_step(&relay, spec, step_no))?;
        out.record(result.json(&setup));
        // Each stalled receiver must end after a contiguous prefix, and the relay must have
        // chosen "resync required": seen as close code 4000 when the close frame got through,
        // or in the relay's log when the stalled socket could not take it in time.
        let resync_closes = result.closes.get("4000").copied().unwrap_or(0);
        let typed = result.stalled_ok == stalled
            && (resync_closes >= stalled || result.overflow_logs >= stalled);
        // RSS bound: the queues of the stalled receivers plus generous slack for the rest.
        let rss_bound = result.rss_start + stalled as u64 * (queue_limit / 1024) + 64 * 1024;
        let bounded = result.rss_max <= rss_bound;
        if result.gaps > 0 || result.late > 0 || !typed || !bounded {
            ok = false;
            out.note(format!(
                "FAIL slow consumers: typed={typed} bounded={bounded} (max {} KiB, bound {rss_bound} KiB): {result:?}",
                result.rss_max
            ));
        }
        over_rows.push((
            result.row(),
            format!(
                "{stalled} of {n} receivers stop reading (4 KiB rcvbuf), relay --queue-limit {queue_limit}, \
                 {slow_payload} B payload: {} of {stalled} got a contiguous prefix then lost the \
                 connection; relay logged {} overflow closes; last stalled receiver closed {} after \
                 the first node (--max-lag 5 s); RSS {} → max {} KiB",
                result.stalled_ok,
                result.overflow_logs,
                result
                    .stall_to_close
                    .map_or("at an unknown time".into(), |s| format!("{s:.2} s")),
                result.rss_start,
                result.rss_max
            ),
        ));
    }
    if !over_rows.is_empty() {
        out.note("\noverload:");
        let (rows, notes): (Vec<_>, Vec<_>) = over_rows.into_iter().unzip();
        out.table(&HEADERS, &rows);
        for note in notes {
            out.note(format!("  - {note}"));
        }
    }
    Ok(ok)
}

/// Runs one step on a fresh room: connect every receiver, run the writer, wait for the drain.
async fn run_step(relay: &Relay, spec: StepSpec, step_no: u64) -> anyhow::Result<StepResult> {
    let room_name = format!("fanout-{step_no}-{}", spec.receivers);
    let room = RoomId::new(&room_name)?;
    let url = relay.url(&room_name);
    let n = spec.receivers;
    let progress = Arc::new(Progress {
        last: (0..n).map(|_| AtomicU64::new(0)).collect(),
        ended: (0..n).map(|_| AtomicBool::new(false)).collect(),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let stop = CancellationToken::new();
    let release = CancellationToken::new();
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let warm = spec.warm_nodes();
    let connecting = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let stalled = i < spec.stalled;
        let ctx = ReceiverCtx {
            index: i,
            url: url.clone(),
            addr: relay.addr,
            stalled,
            warm,
            progress: progress.clone(),
            stop: stop.clone(),
            release: release.clone(),
            target: target.clone(),
            connecting: connecting.clone(),
            decode: spec.decode,
        };
        tasks.push(tokio::spawn(receiver(ctx)));
    }
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    while progress.ready.load(Ordering::Acquire) + progress.failed.load(Ordering::Acquire) < n {
        if Instant::now() > setup_deadline {
            bail!("receivers did not connect within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failed = progress.failed.load(Ordering::Acquire);
    if failed > 0 {
        stop.cancel();
        let first = futures::future::join_all(tasks)
            .await
            .into_iter()
            .filter_map(|r| r.ok())
            .find_map(|r| r.error);
        bail!("{failed} receivers could not join: {first:?}");
    }

    let rss_start = relay.rss_kib()?;
    let mut rss_max = rss_start;
    let relay_cpu0 = relay.cpu_time();
    let gen_cpu0 = common::cpu_time(std::process::id());
    let busy0 = common::machine_busy();
    let wall0 = Instant::now();

    let writer_wall = std::time::SystemTime::now();
    let writer = {
        let url = url.clone();
        let spec = spec.clone();
        std::thread::spawn(move || writer(&url, &room, &spec))
    };
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        rss_max = rss_max.max(relay.rss_kib().unwrap_or(0));
    }
    let report = writer.join().unwrap_or_else(|_| WriterReport {
        error: Some("writer thread panicked".into()),
        ..WriterReport::default()
    });
    target.store(report.max_seq, Ordering::Release);

    // Wait for the readers to catch up (or be closed), then let the stalled ones read.
    let done = |from: usize| {
        (from..n).all(|i| {
            progress.ended[i].load(Ordering::Acquire)
                || progress.last[i].load(Ordering::Acquire) >= report.max_seq
        })
    };
    let deadline = Instant::now() + spec.drain;
    while !done(spec.stalled) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        rss_max = rss_max.max(relay.rss_kib().unwrap_or(0));
    }
    let relay_cpu = relay.cpu_time().saturating_sub(relay_cpu0);
    let gen_cpu = common::cpu_time(std::process::id()).saturating_sub(gen_cpu0);
    let busy = common::machine_busy().saturating_sub(busy0);
    let other_cpu = busy.saturating_sub(relay_cpu + gen_cpu);
    let wall = wall0.elapsed();
    rss_max = rss_max.max(relay.rss_kib().unwrap_or(0));
    release.cancel();
    let deadline = Instant::now() + spec.drain;
    while !done(0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rss_end = relay.rss_kib().unwrap_or(0);
    stop.cancel();
    let mut receivers = Vec::with_capacity(n);
    for task in tasks {
        receivers.push(task.await.context("receiver task panicked")?);
    }

    // Aggregate.
    let mut latencies: Vec<u32> = Vec::new();
    let mut deliveries = 0u64;
    let mut last_recv = 0u64;
    let mut closes: BTreeMap<String, usize> = BTreeMap::new();
    let mut gaps = 0;
    let mut late = 0;
    let mut stalled_ok = 0;
    let (mut messages, mut received) = (0u64, 0u64);
    for r in &mut receivers {
        let ended = r.close.is_some() || r.error.is_some();
        if let Some(code) = r.close {
            *closes.entry(code.to_string()).or_default() += 1;
        } else if let Some(e) = &r.error {
            *closes.entry(format!("eof({e})")).or_default() += 1;
        }
        if r.gap.is_some() {
            gaps += 1;
        } else if !ended && r.last_seq < report.max_seq {
            late += 1;
        }
        if r.stalled {
            if r.gap.is_none() && ended && r.last_seq < report.max_seq {
                stalled_ok += 1;
            }
            continue;
        }
        deliveries += r.measured;
        messages += r.messages;
        received += r.received;
        last_recv = last_recv.max(r.last_recv_ns);
        latencies.append(&mut r.latencies);
    }
    latencies.sort_unstable();
    let window = last_recv.saturating_sub(report.first_measured_ns).max(1) as f64 / 1e9;
    let sent_window = report.end_ns.saturating_sub(report.start_ns).max(1) as f64 / 1e9;
    let sent_rate = report.sent as f64 * n as f64 / sent_window;
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall.as_secs_f64();
    Ok(StepResult {
        achieved: deliveries as f64 / window,
        sent_rate,
        deliveries,
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or(0),
        closes,
        gaps,
        late,
        stalled_ok,
        relay_cpu: pct(relay_cpu),
        gen_cpu: pct(gen_cpu),
        other_cpu: pct(other_cpu),
        rss_start,
        rss_end,
        rss_max,
        overflow_logs: relay.log_count("outbound queue overflow"),
        msgs_per_node: messages as f64 / received.max(1) as f64,
        stall_to_close: (spec.stalled > 0)
            .then(|| last_resync_close(relay, writer_wall))
            .flatten(),
        writer: report,
        spec,
    })
}

struct ReceiverCtx {
    index: usize,
    url: String,
    addr: std::net::SocketAddr,
    stalled: bool,
    warm: u64,
    progress: Arc<Progress>,
    stop: CancellationToken,
    release: CancellationToken,
    target: Arc<AtomicU64>,
    connecting: Arc<Semaphore>,
    decode: Decode,
}

async fn receiver(ctx: ReceiverCtx) -> ReceiverReport {
    let mut report = ReceiverReport {
        stalled: ctx.stalled,
        ..ReceiverReport::default()
    };
    if ctx.stalled {
        // A small kernel receive buffer so the relay's queue fills quickly.
        let joined = async {
            let _permit = ctx.connecting.acquire().await?;
            let mut ws = common::connect_small_rcvbuf(ctx.addr, &ctx.url, 4096).await?;
            let (_, seq) = common::join(&mut ws).await?;
            anyhow::Ok((ws, seq))
        }
        .await;
        match joined {
            Ok((ws, seq)) => {
                ctx.progress.ready.fetch_add(1, Ordering::AcqRel);
                tokio::select! {
                    () = ctx.release.cancelled() => {}
                    () = ctx.stop.cancelled() => {}
                }
                read_loop(ws, seq, &ctx, &mut report).await;
            }
            Err(e) => {
                report.error = Some(format!("{e:#}"));
                ctx.progress.failed.fetch_add(1, Ordering::AcqRel);
            }
        }
    } else {
        let joined = async {
            let _permit = ctx.connecting.acquire().await?;
            let mut ws = common::connect(&ctx.url, RECEIVER_READ_BUFFER).await?;
            let (_, seq) = common::join(&mut ws).await?;
            anyhow::Ok((ws, seq))
        }
        .await;
        match joined {
            Ok((ws, seq)) => {
                ctx.progress.ready.fetch_add(1, Ordering::AcqRel);
                read_loop(ws, seq, &ctx, &mut report).await;
            }
            Err(e) => {
                report.error = Some(format!("{e:#}"));
                ctx.progress.failed.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    ctx.progress.ended[ctx.index].store(true, Ordering::Release);
    report
}

/// Reads broadcasts until the relay closes, the stream fails, or the coordinator stops the
/// step (or, for a stalled receiver, until it holds everything).
async fn read_loop<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    start_seq: u64,
    ctx: &ReceiverCtx,
    report: &mut ReceiverReport,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut expected = start_seq + 1;
    let mut stamps = Vec::new();
    report.last_seq = start_seq;
    let stopped = ctx.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        if ctx.stalled && report.last_seq >= ctx.target.load(Ordering::Acquire) {
            return;
        }
        let message = tokio::select! {
            biased;
            m = ws.next() => m,
            () = &mut stopped => return,
        };
        if matches!(message, Some(Ok(_))) {
            report.messages += 1;
        }
        match message {
            Some(Ok(WsMessage::Binary(frame))) => {
                let now = now_ns();
                stamps.clear();
                let Some(first_seq) = view_broadcast(&frame, ctx.decode, &mut stamps) else {
                    report.other_frames += 1;
                    continue;
                };
                if first_seq != expected && report.gap.is_none() {
                    report.gap = Some((expected, first_seq));
                }
                for &(sent, number) in &stamps {
                    report.received += 1;
                    if number >= ctx.warm {
                        report.measured += 1;
                        let us = now.saturating_sub(sent) / 1000;
                        report.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                }
                report.last_recv_ns = now;
                if report.gap.is_none() {
                    expected = first_seq + stamps.len() as u64;
                    report.last_seq = expected - 1;
                    ctx.progress.last[ctx.index].store(report.last_seq, Ordering::Release);
                }
            }
            Some(Ok(WsMessage::Close(close))) => {
                report.close = Some(close.map_or(1005, |c| u16::from(c.code)));
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                report.error = Some(short_error(&e.to_string()));
                return;
            }
            None => {
                report.error = Some("eof".into());
                return;
            }
        }
    }
}

/// How receivers decode `broadcast` frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decode {
    /// `weft::protocol::decode`: every node fully materialized (allocations per node).
    Full,
    /// A borrowing view of the same MessagePack layout: no allocation per node, so the
    /// generator is not the bottleneck. Other frame types still go through `Full`.
    View,
    /// Both, failing the frame when they disagree (smoke runs).
    Check,
}

/// `[type, [first_seq, [node...]]]` where a node is
/// `[id, parents, depth, author, path, blobs, payload]` (protocol/README.md).
#[derive(serde::Deserialize)]
struct BroadcastView<'a>(u8, #[serde(borrow)] (u64, Vec<NodeView<'a>>));

#[derive(serde::Deserialize)]
struct NodeView<'a>(
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    IgnoredAny,
    #[serde(borrow, with = "serde_bytes_borrowed")] &'a [u8],
);

/// Borrows a MessagePack `bin` without copying it.
mod serde_bytes_borrowed {
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'de [u8], D::Error> {
        <&[u8] as serde::Deserialize>::deserialize(d)
    }
}

/// The first arrival number of a `broadcast` frame, with each node's (send time, number)
/// pushed to `stamps`; `None` for any other or undecodable frame.
fn view_broadcast(frame: &[u8], decode: Decode, stamps: &mut Vec<(u64, u64)>) -> Option<u64> {
    let full = |stamps: &mut Vec<(u64, u64)>| match protocol::decode(frame) {
        Ok(Message::Broadcast(b)) => {
            for node in &b.nodes {
                stamps.push(common::node_stamp(node)?);
            }
            Some(b.first_seq)
        }
        _ => None,
    };
    let view = |stamps: &mut Vec<(u64, u64)>| {
        let BroadcastView(ty, (first_seq, nodes)) = rmp_serde::from_slice(frame).ok()?;
        if ty != protocol::MessageType::Broadcast.code() {
            return None;
        }
        for NodeView(.., payload) in nodes {
            let sent = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
            let number = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
            stamps.push((sent, number));
        }
        Some(first_seq)
    };
    match decode {
        Decode::Full => full(stamps),
        Decode::View => view(stamps),
        Decode::Check => {
            let mut again = Vec::new();
            let a = view(stamps);
            let b = full(&mut again);
            (a == b && *stamps == again).then_some(a).flatten()
        }
    }
}

/// Seconds from `since` to the relay's last "closing with resync required" decision in its
/// log, from the log's UTC timestamps (`2026-01-02T03:04:05.678901Z …`); `None` without one.
fn last_resync_close(relay: &Relay, since: std::time::SystemTime) -> Option<f64> {
    let log = std::fs::read_to_string(&relay.log).ok()?;
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64()
        % 86_400.0;
    log.lines()
        .filter(|line| line.contains("closing with resync required"))
        .filter_map(|line| {
            // Seconds of the day: the log and `since` are both UTC.
            let time = line.split_whitespace().next()?.split('T').nth(1)?;
            let mut parts = time.trim_end_matches('Z').split(':');
            let (h, m, s): (f64, f64, f64) = (
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
            );
            Some((h * 3600.0 + m * 60.0 + s - since).rem_euclid(86_400.0))
        })
        .reduce(f64::max)
}

fn short_error(e: &str) -> String {
    if e.contains("reset") {
        "reset".into()
    } else if e.contains("without closing handshake") {
        "no close frame".into()
    } else {
        e.chars().take(40).collect()
    }
}

/// The writer: its own thread and runtime, so its pacing does not wait behind the receivers.
fn writer(url: &str, room: &RoomId, spec: &StepSpec) -> WriterReport {
    common::pin_current_thread(GENERATOR_CPU);
    let mut report = WriterReport::default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    if let Err(e) = runtime.block_on(write(url, room, spec, &mut report)) {
        report.error = Some(format!("{e:#}"));
    }
    report
}

async fn write(
    url: &str,
    room: &RoomId,
    spec: &StepSpec,
    report: &mut WriterReport,
) -> anyhow::Result<()> {
    let mut ws = common::connect(url, 64 * 1024).await?;
    common::join(&mut ws).await?;
    let (mut sink, mut stream) = ws.split();
    let total = spec.total_nodes();
    let warm = spec.warm_nodes();
    // Acks come back on their own task so the pacing loop never waits for them.
    let acks = tokio::spawn(async move {
        let (mut accepted, mut rejected, mut max_seq, mut acked) = (0u64, 0u64, 0u64, 0u64);
        while acked < total {
            match stream.next().await {
                Some(Ok(WsMessage::Binary(frame))) => {
                    if let Ok(Message::Ack(ack)) = protocol::decode(&frame) {
                        acked += 1;
                        for outcome in ack.outcomes {
                            match outcome {
                                Outcome::Accepted(seq) => {
                                    accepted += 1;
                                    max_seq = max_seq.max(seq);
                                }
                                _ => rejected += 1,
                            }
                        }
                    }
                }
                Some(Ok(WsMessage::Close(c))) => bail!("writer closed by the relay: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("writer connection ended"),
            }
        }
        anyhow::Ok((accepted, rejected, max_seq))
    });
    let period = 1.0 / spec.node_rate();
    let start = Instant::now();
    report.start_ns = now_ns();
    let mut parent = None;
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 * period);
        if due > Instant::now() {
            sink.flush().await?;
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = now_ns();
        if k == warm {
            report.first_measured_ns = sent;
        }
        let node = common::timed_node(room, parent, k, sent, spec.payload);
        parent = Some((node.id, node.depth));
        let frame = Message::Pack(Pack {
            number: k,
            nodes: vec![node],
        })
        .encode()?;
        sink.feed(WsMessage::Binary(frame)).await?;
        report.sent += 1;
    }
    sink.flush().await?;
    report.end_ns = now_ns();
    let wait = spec.drain + spec.duration;
    let (accepted, rejected, max_seq) = tokio::time::timeout(wait, acks)
        .await
        .context("acks did not arrive in time")???;
    report.accepted = accepted;
    report.rejected = rejected;
    report.max_seq = max_seq;
    // Closing politely keeps the relay's log free of errors.
    let _closed = sink.close().await;
    Ok(())
}
