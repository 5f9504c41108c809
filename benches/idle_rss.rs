//! Relay memory per idle connection.
//!
//! Starts the release `weft serve` binary (pinned to CPU 0 with `taskset` when available),
//! reads its `VmRSS` from `/proc/PID/status`, opens N WebSocket connections that complete the
//! handshake (`hello` with empty hints → `welcome`, plan in-sync on an empty room) and stay
//! idle, and reads `VmRSS` again. Two layouts, each on a fresh relay: all N in one room, and
//! one room per connection. Reports KiB per idle connection over the whole N and the marginal
//! cost between N/2 and N (which leaves out one-time growth), then RSS after every connection
//! closed, after opening the same N again (churn: growth there is a leak, not allocator
//! caching) and after closing those. Kernel socket buffers are not part of `VmRSS` and are not
//! counted.
//!
//! Targets (DESIGN.md §11): ≤ 8 KiB per idle connection; peers measured 12.5 KiB (y-sweet)
//! and 25.4 KiB (Hocuspocus).
//!
//! ```text
//! cargo bench --bench idle_rss                        # N = 1000
//! cargo bench --bench idle_rss -- --connections 10000 --json
//! cargo bench --bench idle_rss -- --smoke             # N = 50; exit 1 if a handshake fails
//! ```
//!
//! Flags: `--connections N`, `--settle SECS` (wait before each reading), `--json`, `--smoke`.
//! `WEFT_BENCH_RELAY=/path/to/weft` measures another relay build.

#![allow(clippy::disallowed_methods)] // A bench owns its clock.

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weft::protocol::Plan;

use common::{Flags, Output, Relay};

const RELAY_CPU: usize = 0;

fn main() -> ExitCode {
    let flags = Flags::parse(&["connections", "settle", "json", "smoke"]);
    let out = Output {
        json: flags.has("json"),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("idle_rss: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&flags, &out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle_rss bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy)]
enum Layout {
    OneRoom,
    RoomPerConnection,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::OneRoom => "one room",
            Layout::RoomPerConnection => "N rooms",
        }
    }

    fn room(self, i: usize) -> String {
        match self {
            Layout::OneRoom => "idle".into(),
            Layout::RoomPerConnection => format!("idle-{i}"),
        }
    }
}

async fn run(flags: &Flags, out: &Output) -> anyhow::Result<()> {
    let smoke = flags.has("smoke");
    let n: usize = flags.value("connections", if smoke { 50 } else { 1000 });
    let settle = Duration::from_secs_f64(flags.value("settle", if smoke { 0.15 } else { 1.0 }));
    if n < 2 {
        bail!("--connections must be at least 2");
    }
    common::check_fd_budget(n as u64)?;
    let mut rows = Vec::new();
    let mut pinned = false;
    for layout in [Layout::OneRoom, Layout::RoomPerConnection] {
        let relay = Relay::spawn(&[], Some(RELAY_CPU))?;
        pinned = relay.pinned;
        let stop = CancellationToken::new();
        let gate = Arc::new(Semaphore::new(64));
        // One connection and room first, so one-time allocations are in the baseline.
        let warm = open(&relay, "warm".into(), gate.clone(), stop.clone()).await?;
        stop_all(vec![warm], &stop).await;
        let stop = CancellationToken::new();
        tokio::time::sleep(settle).await;
        let before = relay.rss_kib()?;

        let half = n / 2;
        let mut conns = open_many(&relay, layout, 0..half, &gate, &stop).await?;
        tokio::time::sleep(settle).await;
        let at_half = relay.rss_kib()?;
        conns.extend(open_many(&relay, layout, half..n, &gate, &stop).await?);
        tokio::time::sleep(settle).await;
        let after = relay.rss_kib()?;
        let open_count = conns.len();
        stop_all(conns, &stop).await;
        tokio::time::sleep(settle * 2).await;
        let closed = relay.rss_kib()?;
        // Churn: the same connections again. If freed memory is reused, the second peak is
        // no higher than the first; growth here is a leak, not allocator caching.
        let stop = CancellationToken::new();
        let conns = open_many(&relay, layout, 0..n, &gate, &stop).await?;
        tokio::time::sleep(settle).await;
        let again = relay.rss_kib()?;
        stop_all(conns, &stop).await;
        tokio::time::sleep(settle * 2).await;
        let closed_again = relay.rss_kib()?;

        let per_conn = (after as f64 - before as f64) / n as f64;
        let marginal = (after as f64 - at_half as f64) / (n - half) as f64;
        out.record(json!({
            "bench": "idle_rss",
            "layout": layout.name(),
            "connections": open_count,
            "relay_pinned_cpu": relay.pinned.then_some(RELAY_CPU),
            "rss_before_kib": before,
            "rss_half_kib": at_half,
            "rss_after_kib": after,
            "rss_after_close_kib": closed,
            "rss_second_round_kib": again,
            "rss_after_second_close_kib": closed_again,
            "kib_per_connection": per_conn,
            "kib_per_connection_marginal": marginal,
            "target_kib": 8.0,
        }));
        rows.push(vec![
            layout.name().to_owned(),
            open_count.to_string(),
            format!("{:.1}", before as f64 / 1024.0),
            format!("{:.1}", after as f64 / 1024.0),
            format!("{per_conn:.2}"),
            format!("{marginal:.2}"),
            format!("{:.1}", closed as f64 / 1024.0),
            format!("{:.1}", again as f64 / 1024.0),
            format!("{:.1}", closed_again as f64 / 1024.0),
        ]);
    }
    out.note(format!(
        "idle_rss: relay VmRSS before and after N idle connections that completed the handshake \
         (relay {}); target ≤ 8 KiB/conn, y-sweet 12.5, Hocuspocus 25.4",
        if pinned {
            format!("pinned to CPU {RELAY_CPU}")
        } else {
            "not pinned".into()
        }
    ));
    out.table(
        &[
            "layout",
            "N",
            "RSS before MiB",
            "RSS after MiB",
            "KiB/conn",
            "KiB/conn N/2→N",
            "after close",
            "2nd round",
            "after 2nd close",
        ],
        &rows,
    );
    Ok(())
}

async fn open_many(
    relay: &Relay,
    layout: Layout,
    range: std::ops::Range<usize>,
    gate: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let opening: Vec<_> = range
        .map(|i| {
            let url = relay.url(&layout.room(i));
            let gate = gate.clone();
            let stop = stop.clone();
            tokio::spawn(async move { open_url(url, gate, stop).await })
        })
        .collect();
    let mut conns = Vec::with_capacity(opening.len());
    let mut failures = 0;
    let mut first_error = None;
    for task in opening {
        match task.await? {
            Ok(handle) => conns.push(handle),
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        stop_all(conns, stop).await;
        bail!("{failures} connections failed the handshake; first: {e:#}");
    }
    Ok(conns)
}

async fn open(
    relay: &Relay,
    room: String,
    gate: Arc<Semaphore>,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    open_url(relay.url(&room), gate, stop).await
}

/// Connects and handshakes; then a task keeps the connection idle (answering pings) until
/// `stop`, and closes it politely.
async fn open_url(
    url: String,
    gate: Arc<Semaphore>,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let mut ws = {
        let _permit = gate.acquire().await?;
        let mut ws = common::connect(&url, 4096).await?;
        let (welcome, _) = common::join(&mut ws).await?;
        if welcome.plan != Plan::InSync {
            bail!(
                "expected plan in-sync on an empty room, got {:?}",
                welcome.plan
            );
        }
        ws
    };
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                m = ws.next() => if !matches!(m, Some(Ok(_))) { return },
            }
        }
        // Best effort: the relay may already be gone.
        let _closed = ws.close(None).await;
    }))
}

async fn stop_all(conns: Vec<JoinHandle<()>>, stop: &CancellationToken) {
    stop.cancel();
    for conn in conns {
        // A panicked idle task has nothing left to clean up.
        let _ended = conn.await;
    }
}
