//! Helpers shared by the end-to-end benches: flags, the relay process, CPU pinning, raw
//! protocol connections, timed nodes, percentiles and output.
//!
//! The benches speak the wire protocol directly through `weft::protocol` over
//! tokio-tungstenite, so the load generator costs one decode per frame and nothing else.

// Each bench uses a different subset of these helpers.
#![allow(dead_code)]

use std::fmt::Display;
use std::fs::File;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use weft::node::{Node, NodeId, RoomId};
use weft::protocol::{
    self, Capabilities, Credit, Hello, Message, PROTOCOL_VERSION, Plan, SyncHints, Welcome,
};

// ---------------------------------------------------------------------------------------------
// Flags

/// Command-line flags: `--name value`, `--name=value` and bare `--switch`.
pub struct Flags {
    args: Vec<String>,
}

impl Flags {
    /// Parses the process arguments. `cargo bench` appends `--bench`; it is ignored. Any flag
    /// not in `known` (names without the leading dashes) is an error, so typos do not
    /// silently run the default configuration.
    pub fn parse(known: &[&str]) -> Self {
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        for arg in &args {
            if let Some(name) = arg.strip_prefix("--") {
                let name = name.split('=').next().unwrap_or(name);
                if name == "help" {
                    println!("flags: {}", known.join(", "));
                    std::process::exit(0);
                }
                if !known.contains(&name) {
                    eprintln!("unknown flag --{name}; known: {}", known.join(", "));
                    std::process::exit(2);
                }
            }
        }
        Self { args }
    }

    /// Whether a bare switch is present.
    pub fn has(&self, name: &str) -> bool {
        let flag = format!("--{name}");
        self.args.contains(&flag)
    }

    fn raw(&self, name: &str) -> Option<String> {
        let flag = format!("--{name}");
        let prefix = format!("--{name}=");
        let mut it = self.args.iter();
        while let Some(arg) = it.next() {
            if *arg == flag {
                return it.next().cloned();
            }
            if let Some(v) = arg.strip_prefix(&prefix) {
                return Some(v.to_owned());
            }
        }
        None
    }

    /// A value, or `default` when the flag is absent. Exits on a malformed value.
    pub fn value<T: FromStr>(&self, name: &str, default: T) -> T {
        match self.raw(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("bad value for --{name}: {v:?}");
                std::process::exit(2)
            }),
        }
    }

    /// A comma-separated list, or `default` when absent. Accepts `k`/`m` suffixes for numbers.
    pub fn list(&self, name: &str, default: &[u64]) -> Vec<u64> {
        match self.raw(name) {
            None => default.to_vec(),
            Some(v) => v
                .split(',')
                .map(|s| {
                    parse_count(s).unwrap_or_else(|| {
                        eprintln!("bad value in --{name}: {s:?}");
                        std::process::exit(2)
                    })
                })
                .collect(),
        }
    }
}

/// `400k` → 400000, `1m` → 1000000, `25000` → 25000.
pub fn parse_count(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (digits, mult) = match s.strip_suffix('k') {
        Some(d) => (d, 1_000.0),
        None => match s.strip_suffix('m') {
            Some(d) => (d, 1_000_000.0),
            None => (s.as_str(), 1.0),
        },
    };
    let value: f64 = digits.parse().ok()?;
    (value >= 0.0).then(|| (value * mult).round() as u64)
}

// ---------------------------------------------------------------------------------------------
// Clock

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process. Every thread of a bench shares the base,
/// so a timestamp written by one thread can be compared with a reading on another.
pub fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------------------------------------
// Processes, CPUs and memory

/// Whether `taskset` can be run here.
pub fn taskset_available() -> bool {
    Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// CPUs this machine has online (not just those this process may run on, which pinning
/// narrows).
pub fn cpu_count() -> usize {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").ok();
    let count = online.as_deref().map(|list| {
        list.trim()
            .split(',')
            .map(|range| match range.split_once('-') {
                Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                    (Ok(a), Ok(b)) if b >= a => b - a + 1,
                    _ => 0,
                },
                None => usize::from(range.parse::<usize>().is_ok()),
            })
            .sum::<usize>()
    });
    match count {
        Some(n) if n > 0 => n,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Pins every thread of this process (and threads it creates later) to `cpu`.
pub fn pin_process(cpu: usize) -> bool {
    pin_task(std::process::id(), cpu, true)
}

/// Pins the calling thread (and threads it creates later) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> bool {
    // `/proc/thread-self` links to `PID/task/TID`: the thread id without libc.
    let Ok(link) = std::fs::read_link("/proc/thread-self") else {
        return false;
    };
    let Some(tid) = link
        .file_name()
        .and_then(|t| t.to_str())
        .and_then(|t| t.parse::<u32>().ok())
    else {
        return false;
    };
    pin_task(tid, cpu, false)
}

fn pin_task(id: u32, cpu: usize, all_threads: bool) -> bool {
    if !taskset_available() || cpu >= cpu_count() {
        return false;
    }
    let mut cmd = Command::new("taskset");
    if all_threads {
        cmd.arg("-a");
    }
    cmd.args(["-p", "-c", &cpu.to_string(), &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Resident set size of a process, from `/proc/PID/status` `VmRSS`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start at field 3.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name; USER_HZ is 100 on
    // every Linux this runs on.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Busy CPU time of the whole machine so far (all CPUs, everything but idle and iowait), from
/// `/proc/stat`. The difference to the relay's and the generator's own CPU time over a step is
/// what other processes took: the noise on a shared machine.
pub fn machine_busy() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    let Some(line) = stat.lines().next() else {
        return Duration::ZERO;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Duration::from_millis(busy * 10)
}

/// The 1-minute load average, to print beside results.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The soft limit on open files of this process (inherited by the relay it spawns).
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Fails early when `needed` sockets would not fit under the open-files limit.
pub fn check_fd_budget(needed: u64) -> anyhow::Result<()> {
    match open_files_limit() {
        Some(limit) if needed + 64 > limit => bail!(
            "{needed} connections need more open files than the limit of {limit}; \
             raise it (ulimit -n) or lower the count"
        ),
        _ => Ok(()),
    }
}

/// Path of the release `weft` binary: `$WEFT_BENCH_RELAY` if set (to compare another build),
/// else the one cargo builds for benches and names in `CARGO_BIN_EXE_weft`, else
/// `$CARGO_TARGET_DIR/release/weft`.
pub fn weft_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEFT_BENCH_RELAY").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(path) = option_env!("CARGO_BIN_EXE_weft") {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    PathBuf::from(target).join("release").join("weft")
}

/// A relay running as a child process (the release `weft serve`), killed on drop.
pub struct Relay {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Whether it runs under `taskset -c CPU`.
    pub pinned: bool,
    /// Its stderr (logs).
    pub log: PathBuf,
}

impl Relay {
    /// Starts `weft serve` on a free loopback port with `extra` flags, pinned to `cpu` when
    /// `taskset` is available, and waits until it accepts connections. Without a `--store`
    /// in `extra` the relay keeps rooms in memory: the other benches measure the relay, and
    /// `storage` measures what durability costs.
    pub fn spawn(extra: &[String], cpu: Option<usize>) -> anyhow::Result<Self> {
        let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let binary = weft_binary();
        if !binary.exists() {
            bail!(
                "relay binary {} not found; run `cargo build --release`",
                binary.display()
            );
        }
        let pin = cpu.filter(|&c| taskset_available() && c < cpu_count());
        let mut cmd = match pin {
            Some(cpu) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", &cpu.to_string()]).arg(&binary);
                cmd
            }
            None => Command::new(&binary),
        };
        let log = std::env::temp_dir().join(format!("weft-bench-relay-{port}.log"));
        cmd.args(["serve", "--listen", &addr.to_string()])
            .args(extra);
        if !extra.iter().any(|flag| flag == "--store") {
            cmd.args(["--store", "memory://"]);
        }
        cmd.env("WEFT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut relay = Self {
            child,
            addr,
            pinned: pin.is_some(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = relay.child.try_wait()? {
                bail!(
                    "relay exited at start ({status}); see {}",
                    relay.log.display()
                );
            }
            if StdStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(relay);
            }
            if Instant::now() > deadline {
                bail!("relay did not listen on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// WebSocket URL of a room.
    pub fn url(&self, room: &str) -> String {
        format!("ws://{}/v1/rooms/{room}", self.addr)
    }

    /// Current resident set size in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid())
    }

    /// CPU time used so far.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid())
    }

    /// Lines of its log containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|s| s.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Our own child, by its handle: nothing else is touched.
        let _already_gone = self.child.kill();
        let _reaped = self.child.wait();
        let _kept_on_failure = std::fs::remove_file(&self.log);
    }
}

// ---------------------------------------------------------------------------------------------
// Raw protocol connections

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Client socket settings: frames up to 64 MiB and a chosen read buffer (small, so a thousand
/// connections stay cheap on the generator's side).
pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// Opens a WebSocket to `url` with Nagle disabled.
pub async fn connect(url: &str, read_buffer: usize) -> anyhow::Result<Ws> {
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config(read_buffer)), true)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
    Ok(ws)
}

/// Opens a WebSocket over a socket whose kernel receive buffer is capped at `rcvbuf` bytes,
/// so a reader that stops reading backs up into the relay quickly (slow-consumer runs).
pub async fn connect_small_rcvbuf(
    addr: SocketAddr,
    url: &str,
    rcvbuf: u32,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(rcvbuf)?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config(4096)))
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok(ws)
}

/// The `hello` of a client with an empty replica.
pub fn hello(credit: u64) -> Bytes {
    Message::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities: Capabilities::NONE,
        hints: SyncHints::default(),
        credit,
        subscribe: None,
    })
    .encode()
    .expect("hello encodes")
}

/// Sends `hello` (empty hints, `credit` bytes of catch-up credit) and reads up to `welcome`.
pub async fn send_hello<S>(ws: &mut WebSocketStream<S>, credit: u64) -> anyhow::Result<Welcome>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(WsMessage::Binary(hello(credit))).await?;
    match next_frame(ws).await? {
        Message::Welcome(w) => Ok(w),
        other => bail!("expected welcome, got {:?}", other.message_type()),
    }
}

/// Handshake of an empty client: `hello` → `welcome`, then, on plan `CatchUp`, every batch up
/// to `catch_up_done` (returning credit after every batch). Returns the welcome and the arrival number
/// from which live broadcasts continue.
pub async fn join<S>(ws: &mut WebSocketStream<S>) -> anyhow::Result<(Welcome, u64)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    const WINDOW: u64 = 1 << 20;
    let welcome = send_hello(ws, WINDOW).await?;
    match welcome.plan {
        Plan::InSync => {
            let seq = welcome.seq;
            Ok((welcome, seq))
        }
        Plan::CatchUp => loop {
            let frame = next_binary(ws).await?;
            match protocol::decode(&frame)? {
                Message::Batch(_) => {
                    // Like the reference client: return each batch's bytes as it arrives.
                    let bytes = frame.len() as u64;
                    let credit = Message::Credit(Credit { bytes }).encode()?;
                    ws.send(WsMessage::Binary(credit)).await?;
                }
                Message::CatchUpDone(done) => return Ok((welcome, done.seq)),
                other => bail!("unexpected {:?} during catch-up", other.message_type()),
            }
        },
        Plan::SendIds | Plan::Sketch | Plan::Refine => {
            bail!(
                "an empty client was asked to reconcile ({:?})",
                welcome.plan
            )
        }
    }
}

/// The next binary frame; fails on close or error.
pub async fn next_binary<S>(ws: &mut WebSocketStream<S>) -> anyhow::Result<Bytes>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Binary(b))) => return Ok(b),
            Some(Ok(WsMessage::Close(c))) => bail!("closed by the relay: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// The next decoded frame.
pub async fn next_frame<S>(ws: &mut WebSocketStream<S>) -> anyhow::Result<Message>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = next_binary(ws).await?;
    Ok(protocol::decode(&frame)?)
}

// ---------------------------------------------------------------------------------------------
// Nodes

/// A node whose payload starts with its send time (`now_ns`, 8 bytes LE) and its number
/// (8 bytes LE), padded to `payload_len` bytes; chained on `parent`.
pub fn timed_node(
    room: &RoomId,
    parent: Option<(NodeId, u64)>,
    number: u64,
    sent_ns: u64,
    payload_len: usize,
) -> Node {
    let mut payload = Vec::with_capacity(payload_len.max(16));
    payload.extend_from_slice(&sent_ns.to_le_bytes());
    payload.extend_from_slice(&number.to_le_bytes());
    payload.resize(payload_len.max(16), b'x');
    let (parents, depth) = match parent {
        Some((id, depth)) => (vec![id], depth + 1),
        None => (Vec::new(), 0),
    };
    Node::new(room, parents, depth, None, "bench/w", Vec::new(), payload)
}

/// Send time and number carried by a [`timed_node`] payload.
pub fn node_stamp(node: &Node) -> Option<(u64, u64)> {
    let sent = node.payload.get(0..8)?.try_into().ok()?;
    let number = node.payload.get(8..16)?.try_into().ok()?;
    Some((u64::from_le_bytes(sent), u64::from_le_bytes(number)))
}

// ---------------------------------------------------------------------------------------------
// Statistics and output

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of unsorted values.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `1234567.0` → `1.23M`, `45600.0` → `45.6k`.
pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u32) -> String {
    format!("{:.2}", f64::from(us) / 1000.0)
}

/// Where results go: a readable table, and with `--json` one JSON object per measurement on
/// stdout (the tables then go to stderr so stdout stays machine-readable).
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints a line of prose (to stderr in JSON mode).
    pub fn note(&self, line: impl Display) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// Emits one measurement as JSON (only in JSON mode).
    pub fn record(&self, value: serde_json::Value) {
        if self.json {
            println!("{value}");
        }
    }

    /// Prints a table with right-aligned columns.
    pub fn table(&self, headers: &[&str], rows: &[Vec<String>]) {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        self.note(line(headers.iter().map(|h| h.to_string()).collect()));
        self.note(
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  "),
        );
        for row in rows {
            self.note(line(row.clone()));
        }
    }
}
