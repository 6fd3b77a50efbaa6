//! `stalls`: reproduces runtime stalls of the echo servers and measures them, hydrogen against
//! tokio in the same run on the same machine, and writes a Markdown report with "vs tokio"
//! ratios. It reports; it does not judge (no figure makes it fail). See `bench/README.md`,
//! section "Stalls".
//!
//! Scenarios (u32 framing, loopback, a fresh server process per run, hydrogen then tokio):
//!
//! - `uploaders` (`--threads 2`): U connections stream 64 KiB frames as fast as the socket takes
//!   them (a second thread per connection reads and discards the echoes) while one probe
//!   connection ping-pongs 16-byte frames; then SIGTERM with the uploaders still running, and the
//!   time until the server process exits.
//! - `blocking` (`--threads 8 --block-ms 100`): 20 ping-pong connections while one more sends
//!   `BLOCK` frames, each of which blocks the server thread handling it for 100 ms.
//! - `memory` (`--threads 2 --max-frame 16777216`): attackers announce 8,000,000-byte frames,
//!   send 3 MiB of them and hold the connection; the server's RSS afterwards, and one
//!   well-behaved ping-pong connection during the attack.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use hydrogen_bench::child::{
    Guard, describe, kill_children_on_signals, rss_kib, sibling_binaries, start_server,
};
use hydrogen_bench::cli::{self, List};
use hydrogen_bench::report;
use hydrogen_bench::server_cli;
use nix::sys::signal::{Signal, kill};

const ALL_SCENARIOS: [&str; 3] = ["uploaders", "blocking", "memory"];
/// The servers, in run order; ratios are against the last.
const SERVERS: [&str; 2] = ["hydrogen", "tokio"];

/// Probe and ping-pong payload size.
const PING_SIZE: usize = 16;
/// Uploaders' frame payload.
const UPLOAD_FRAME: usize = 64 * 1024;
/// How long the uploaders run before the probe's window starts.
const UPLOAD_WARMUP: Duration = Duration::from_millis(300);
/// Blocking scenario: ping-pong connections, and how long a BLOCK frame blocks.
const BLOCK_PINGERS: usize = 20;
const BLOCK_MS: u64 = 100;
/// Memory scenario: what an attacker announces, and how much of it it sends.
const ATTACK_ANNOUNCED: u32 = 8_000_000;
const ATTACK_SENT: usize = 3 * 1024 * 1024;
const ATTACK_MAX_FRAME: usize = 16 * 1024 * 1024;
const ATTACK_MAX_BUFFERED: usize = 64 * 1024 * 1024;
/// How long the attackers may take to write; after that they stop where they are.
const ATTACK_WRITE_LIMIT: Duration = Duration::from_secs(10);
const ATTACK_WRITE_LIMIT_SMOKE: Duration = Duration::from_secs(3);
/// Between the end of the attackers' writes and the RSS reading.
const ATTACK_SETTLE: Duration = Duration::from_secs(1);
/// A round trip unanswered this long breaks the run; also the connect timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the background loops look at their stop flag while blocked on a socket.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// After SIGTERM, a server not gone within this is killed and reported as hung.
const HANG_LIMIT: Duration = Duration::from_secs(30);
/// Samples kept per connection at most (a bound on memory, far above what a window yields).
const MAX_SAMPLES: usize = 2_000_000;

/// The command line; [`Cli::args`] fills in the defaults that depend on `--smoke`.
#[derive(Debug, Parser)]
#[command(
    // A flag given twice: the last one counts, as with the hand-written parsers before.
    args_override_self = true,
    name = "stalls",
    about = "Reproduces runtime stalls against hydrogen_echo and tokio_echo (fresh server per \
             run, hydrogen then tokio) and writes OUT/stalls.md (printed to stdout too). \
             Reports, does not judge.",
    after_help = "\
Scenarios:
  uploaders   --threads 2: 0, 2 and 4 connections streaming 64 KiB frames, one probe
              ping-ponging 16 B frames; then SIGTERM with the uploaders running (shutdown ms)
  blocking    --threads 8 --block-ms 100: 20 ping-pong connections, one sending BLOCK frames
  memory      --threads 2 --max-frame 16777216: 300 attackers each announce 8,000,000 bytes,
              send 3 MiB and hold; server RSS, one ping-pong connection meanwhile; hydrogen
              with and without --max-buffered 67108864, tokio once

Exits with status 1 if a run failed (server did not start, a connection broke, or the server
took over 30 s to exit after SIGTERM: then it is killed and reported as hung). A connection
without an echo for 10 s is a stall, reported as a lower bound (>=), not a failure.
The server binaries must sit next to this executable:
build with `cargo build --release -p hydrogen-bench`."
)]
struct Cli {
    /// Measured window, seconds (default 5; --smoke: 1)
    #[arg(long, value_name = "S", value_parser = cli::secs(0.1, 600.0))]
    secs: Option<f64>,
    /// Comma-separated, from uploaders,blocking,memory
    #[arg(long, value_name = "LIST", default_value_t = List::of(&ALL_SCENARIOS),
          value_parser = cli::list_of(&ALL_SCENARIOS))]
    scenarios: List,
    /// A quick check: 1 s windows, uploaders only with 2, memory with 30 attackers (well under
    /// a minute); explicit flags still win
    #[arg(long)]
    smoke: bool,
    /// Output directory
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    out: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
struct Args {
    secs: f64,
    scenarios: Vec<String>,
    smoke: bool,
    out: PathBuf,
}

impl Cli {
    fn args(self) -> Args {
        let mut scenarios = self.scenarios.0;
        scenarios.sort_by_key(|s| ALL_SCENARIOS.iter().position(|a| a == s));
        Args {
            secs: self.secs.unwrap_or(if self.smoke { 1.0 } else { 5.0 }),
            scenarios,
            smoke: self.smoke,
            out: self.out,
        }
    }
}

/// Round-trip times of a set of connections, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Latency {
    count: usize,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    /// A connection got no echo within [`IO_TIMEOUT`]: its last round trip counts as the time
    /// it waited, so the max (and any percentile equal to it) is a lower bound.
    starved: bool,
}

impl Latency {
    /// Whether `v` (one of the figures) is only a lower bound.
    fn censored(&self, v: f64) -> bool {
        self.starved && v >= self.max_us
    }

    /// A figure, µs, with `≥` when it is a lower bound.
    fn cell(&self, v: f64) -> String {
        let n = fmt_us(v);
        if self.censored(v) {
            format!("≥ {n}")
        } else {
            n
        }
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100) of sorted values: the smallest value with at
/// least p % of the values at or below it.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Summary of round-trip times given in nanoseconds; `None` without any. `starved`: the largest
/// is a wait cut short (see [`Latency::starved`]).
fn summarize(mut ns: Vec<u64>, starved: bool) -> Option<Latency> {
    ns.sort_unstable();
    let us = |v: u64| v as f64 / 1000.0;
    Some(Latency {
        count: ns.len(),
        p50_us: us(percentile(&ns, 50.0)?),
        p99_us: us(percentile(&ns, 99.0)?),
        max_us: us(*ns.last()?),
        starved,
    })
}

/// How many connections (each a list of round trips, nanoseconds) had one of `at_least` or more.
fn stalled_count(conns: &[Vec<u64>], at_least: Duration) -> usize {
    let ns = at_least.as_nanos() as u64;
    conns.iter().filter(|c| c.iter().any(|&v| v >= ns)).count()
}

/// How the server ended after SIGTERM.
#[derive(Debug, Clone, PartialEq)]
enum Shutdown {
    /// Exited this long after SIGTERM, with this status.
    Exited { ms: f64, status: String },
    /// Still running [`HANG_LIMIT`] after SIGTERM; killed.
    Hung,
}

/// What one run measured; which fields are set depends on the scenario.
#[derive(Debug, Clone, Default)]
struct Measured {
    /// The probe (uploaders, memory) or the ping-pong connections together (blocking).
    latency: Option<Latency>,
    /// Uploaders: bytes per second they wrote during the probe's window.
    upload_rate: Option<f64>,
    /// Blocking: round trips of the BLOCK connection.
    blocker_count: Option<usize>,
    /// Blocking: ping-pong connections with at least one round trip of `BLOCK_MS` or more.
    stalled_conns: Option<usize>,
    /// Memory: the server's VmRSS after the attack, KiB.
    rss_kib: Option<u64>,
    /// Memory: bytes the attackers' writes got accepted by the kernel, all together.
    attack_bytes: Option<u64>,
    /// Memory: attackers that sent all their bytes, and those the server closed.
    attackers_done: usize,
    attackers_closed: usize,
    shutdown: Option<Shutdown>,
}

/// One row of the report.
struct Row {
    scenario: &'static str,
    server: &'static str,
    /// What sets this row apart from the others of its server in the scenario ("2 uploaders").
    variant: String,
    /// The server's command line beyond `--addr` and `--framing`.
    server_args: Vec<String>,
    result: Result<Measured, String>,
}

impl Row {
    fn failed(&self) -> bool {
        match &self.result {
            Err(_) => true,
            Ok(m) => matches!(m.shutdown, Some(Shutdown::Hung)),
        }
    }
}

/// What a run needs besides its own parameters.
struct Ctx {
    bin_dir: PathBuf,
    secs: f64,
    smoke: bool,
}

fn window(ctx: &Ctx) -> Duration {
    Duration::from_secs_f64(ctx.secs)
}

/// A connected client socket with `TCP_NODELAY` and [`IO_TIMEOUT`] on reads and writes.
fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    Ok(s)
}

/// A u32-framed frame carrying `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The `seq`-th ping payload: `BLOCK` and a filler for the blocker, else the sequence number
/// and a filler (never starting with `BLOCK`).
fn ping_payload(seq: u64, block: bool) -> [u8; PING_SIZE] {
    let mut p = [b'.'; PING_SIZE];
    if block {
        p[..5].copy_from_slice(server_cli::BLOCK_PREFIX);
    } else {
        p[..8].copy_from_slice(&seq.to_be_bytes());
    }
    p
}

/// What one ping-pong connection saw.
#[derive(Debug, Default)]
struct Pings {
    /// Round-trip times, nanoseconds.
    samples: Vec<u64>,
    /// It stopped because an echo did not come within [`IO_TIMEOUT`] (or the frame could not
    /// be written within it); the last sample is that wait.
    starved: bool,
}

/// Ping-pong on a new connection until `deadline` or `stop`: one frame, wait for its echo
/// (checked byte for byte), repeat. A round trip longer than [`IO_TIMEOUT`] is a stall, not a
/// failure: it ends the loop with [`Pings::starved`]. A closed connection or a wrong echo is a
/// failure.
fn ping_pong(
    addr: SocketAddr,
    block: bool,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<Pings, String> {
    let mut s = connect(addr)?;
    let mut samples = Vec::new();
    let mut reply = vec![0u8; 4 + PING_SIZE];
    let what = if block { "BLOCK connection" } else { "ping" };
    let mut seq = 0u64;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) && samples.len() < MAX_SAMPLES
    {
        let f = frame(&ping_payload(seq, block));
        let t0 = Instant::now();
        match s.write_all(&f).and_then(|()| s.read_exact(&mut reply)) {
            Ok(()) => samples.push(t0.elapsed().as_nanos() as u64),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                samples.push(t0.elapsed().as_nanos() as u64);
                return Ok(Pings {
                    samples,
                    starved: true,
                });
            }
            Err(e) => return Err(format!("{what}: frame {seq}: {e}")),
        }
        if reply != f {
            return Err(format!(
                "{what}: echo of frame {seq} differs from the frame"
            ));
        }
        seq += 1;
    }
    Ok(Pings {
        samples,
        starved: false,
    })
}

/// Whether an I/O error only means "try again" (timeouts of a socket with one set included).
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// One uploader: writes 64 KiB frames (partial writes resumed, so the framing holds) until
/// `stop` or an error, counting the bytes in `written`; a second thread reads and discards the
/// echoes. Both look at `stop` every [`POLL_SLICE`].
fn uploader<'scope, 'env>(
    scope: &'scope thread::Scope<'scope, 'env>,
    addr: SocketAddr,
    stop: &'env AtomicBool,
    written: &'env AtomicU64,
) -> Result<(), String> {
    let w = connect(addr)?;
    let r = w.try_clone().map_err(|e| format!("uploader: {e}"))?;
    w.set_write_timeout(Some(POLL_SLICE))
        .and_then(|()| r.set_read_timeout(Some(POLL_SLICE)))
        .map_err(|e| format!("uploader: {e}"))?;
    let data = frame(&vec![b'u'; UPLOAD_FRAME]);
    scope.spawn(move || {
        let mut w = w;
        let mut pos = 0;
        while !stop.load(Ordering::Relaxed) {
            match w.write(&data[pos..]) {
                Ok(0) => break,
                Ok(n) => {
                    written.fetch_add(n as u64, Ordering::Relaxed);
                    pos = (pos + n) % data.len();
                }
                Err(e) if transient(&e) => {}
                Err(_) => break,
            }
        }
    });
    scope.spawn(move || {
        let mut r = r;
        let mut buf = vec![0u8; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if transient(&e) => {}
                Err(_) => break,
            }
        }
    });
    Ok(())
}

/// A started server, its log, its address.
struct Running {
    guard: Guard,
    addr: SocketAddr,
    name: &'static str,
}

fn start(ctx: &Ctx, row: &Row, log: &mut File) -> Result<Running, String> {
    let _ = writeln!(
        log,
        "=== {} {} ({})",
        row.scenario,
        row.variant,
        report::utc_now()
    );
    let args: Vec<&str> = row.server_args.iter().map(String::as_str).collect();
    let (guard, addr) = start_server(&ctx.bin_dir, row.server, &args, log)?;
    Ok(Running {
        guard,
        addr,
        name: row.server,
    })
}

impl Running {
    /// An error if the server exited on its own.
    fn check_alive(&mut self) -> Result<(), String> {
        match self.guard.child.try_wait() {
            Ok(Some(status)) => Err(format!(
                "{}_echo exited during the run ({})",
                self.name,
                describe(status)
            )),
            _ => Ok(()),
        }
    }

    /// SIGTERM and the time until the process is gone; killed after [`HANG_LIMIT`].
    fn terminate(&mut self) -> Result<Shutdown, String> {
        self.check_alive()?;
        let t0 = Instant::now();
        kill(self.guard.pid(), Signal::SIGTERM).map_err(|e| format!("SIGTERM: {e}"))?;
        loop {
            match self.guard.child.try_wait() {
                Ok(Some(status)) => {
                    return Ok(Shutdown::Exited {
                        ms: t0.elapsed().as_secs_f64() * 1000.0,
                        status: describe(status),
                    });
                }
                Ok(None) if t0.elapsed() >= HANG_LIMIT => {
                    let _ = self.guard.child.kill();
                    let _ = self.guard.child.wait();
                    return Ok(Shutdown::Hung);
                }
                Ok(None) => thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(format!("waiting for the server: {e}")),
            }
        }
    }
}

/// Sets its flag when dropped: created first thing in each scenario's thread scope, so that
/// `stop` is set on the way out whatever happens and no background loop (they all poll it)
/// outlives the scenario.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Uploaders: U streaming connections, one probe, then SIGTERM with the uploaders running.
fn run_uploaders(ctx: &Ctx, srv: &mut Running, uploaders: usize) -> Result<Measured, String> {
    let addr = srv.addr;
    let written = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let stop = &stop;
    thread::scope(|scope| -> Result<Measured, String> {
        let _set = SetOnDrop(stop);
        for _ in 0..uploaders {
            uploader(scope, addr, stop, &written)?;
        }
        if uploaders > 0 {
            thread::sleep(UPLOAD_WARMUP);
        }
        let before = written.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let pings = ping_pong(addr, false, t0 + window(ctx), stop)?;
        let secs = t0.elapsed().as_secs_f64();
        let uploaded = written.load(Ordering::Relaxed) - before;
        srv.check_alive()?;
        // The uploaders are still running: that is the point of the shutdown figure.
        let shutdown = srv.terminate()?;
        Ok(Measured {
            latency: summarize(pings.samples, pings.starved),
            upload_rate: (uploaders > 0).then(|| uploaded as f64 / secs),
            shutdown: Some(shutdown),
            ..Measured::default()
        })
    })
}

/// Blocking: 20 ping-pong connections and one BLOCK connection, all for the window.
fn run_blocking(ctx: &Ctx, srv: &mut Running) -> Result<Measured, String> {
    let addr = srv.addr;
    let deadline = Instant::now() + window(ctx);
    let stop = AtomicBool::new(false);
    let stop = &stop;
    let (pings, blocker) = thread::scope(|scope| -> Result<(Vec<Pings>, Pings), String> {
        let _set = SetOnDrop(stop);
        let pingers: Vec<_> = (0..BLOCK_PINGERS)
            .map(|_| scope.spawn(move || ping_pong(addr, false, deadline, stop)))
            .collect();
        let blocker = scope.spawn(move || ping_pong(addr, true, deadline, stop));
        let mut all = Vec::new();
        let mut first_err = None;
        for p in pingers {
            match p
                .join()
                .unwrap_or_else(|_| Err("ping thread panicked".into()))
            {
                Ok(s) => all.push(s),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let blocker = blocker
            .join()
            .unwrap_or_else(|_| Err("BLOCK thread panicked".into()));
        match first_err {
            Some(e) => Err(e),
            None => Ok((all, blocker?)),
        }
    })?;
    srv.check_alive()?;
    let shutdown = srv.terminate()?;
    let per_conn: Vec<Vec<u64>> = pings.iter().map(|p| p.samples.clone()).collect();
    let stalled = stalled_count(&per_conn, Duration::from_millis(BLOCK_MS));
    let starved = pings.iter().any(|p| p.starved);
    Ok(Measured {
        latency: summarize(per_conn.concat(), starved),
        blocker_count: Some(blocker.samples.len()),
        stalled_conns: Some(stalled),
        shutdown: Some(shutdown),
        ..Measured::default()
    })
}

/// One attacker: its socket (non-blocking) and how many of its bytes the kernel took.
struct Attacker {
    s: TcpStream,
    sent: usize,
    closed: bool,
}

/// The next bytes attacker `a` has to send: the rest of the prefix, then filler.
fn attack_bytes<'a>(sent: usize, prefix: &'a [u8; 4], filler: &'a [u8]) -> &'a [u8] {
    if sent < 4 {
        &prefix[sent..]
    } else {
        let left = (4 + ATTACK_SENT).saturating_sub(sent);
        &filler[..left.min(filler.len())]
    }
}

/// Memory: the attackers write what they can within the limit, hold; RSS after
/// [`ATTACK_SETTLE`]; one ping-pong connection from the first connect to the RSS reading.
fn run_memory(ctx: &Ctx, srv: &mut Running, attackers: usize) -> Result<Measured, String> {
    let addr = srv.addr;
    let pid = srv.guard.pid();
    let limit = if ctx.smoke {
        ATTACK_WRITE_LIMIT_SMOKE
    } else {
        ATTACK_WRITE_LIMIT
    };
    let mut conns: Vec<Attacker> = Vec::with_capacity(attackers);
    let stop = AtomicBool::new(false);
    let stop = &stop;
    let (samples, rss) = thread::scope(|scope| -> Result<(Pings, u64), String> {
        let _set = SetOnDrop(stop);
        // A safety bound only: `stop` ends it once the RSS is read.
        let deadline = Instant::now() + limit + ATTACK_SETTLE + IO_TIMEOUT + window(ctx);
        let pinger = scope.spawn(move || ping_pong(addr, false, deadline, stop));
        for _ in 0..attackers {
            let s = connect(addr)?;
            s.set_nonblocking(true)
                .map_err(|e| format!("attacker: {e}"))?;
            conns.push(Attacker {
                s,
                sent: 0,
                closed: false,
            });
        }
        let prefix = ATTACK_ANNOUNCED.to_be_bytes();
        let filler = vec![b'a'; 64 * 1024];
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            let mut progress = false;
            let mut pending = false;
            for a in conns
                .iter_mut()
                .filter(|a| !a.closed && a.sent < 4 + ATTACK_SENT)
            {
                pending = true;
                match a.s.write(attack_bytes(a.sent, &prefix, &filler)) {
                    Ok(0) => a.closed = true,
                    Ok(n) => {
                        a.sent += n;
                        progress = true;
                    }
                    Err(e) if transient(&e) => {}
                    Err(_) => a.closed = true,
                }
            }
            if !pending {
                break;
            }
            if !progress {
                thread::sleep(Duration::from_millis(1));
            }
        }
        thread::sleep(ATTACK_SETTLE);
        let rss = rss_kib(pid)?;
        stop.store(true, Ordering::Relaxed);
        let samples = pinger
            .join()
            .unwrap_or_else(|_| Err("ping thread panicked".into()))?;
        Ok((samples, rss))
    })?;
    srv.check_alive()?;
    // The attackers are still connected, their frames incomplete.
    let shutdown = srv.terminate()?;
    Ok(Measured {
        latency: summarize(samples.samples, samples.starved),
        rss_kib: Some(rss),
        attack_bytes: Some(conns.iter().map(|a| a.sent as u64).sum()),
        attackers_done: conns.iter().filter(|a| a.sent == 4 + ATTACK_SENT).count(),
        attackers_closed: conns.iter().filter(|a| a.closed).count(),
        shutdown: Some(shutdown),
        ..Measured::default()
    })
}

/// The rows to run, in order: per scenario, per variant, hydrogen then tokio.
fn plan(args: &Args) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut push = |scenario, server, variant: String, server_args: &[String]| {
        rows.push(Row {
            scenario,
            server,
            variant,
            server_args: server_args.to_vec(),
            result: Err("not run".to_string()),
        });
    };
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for s in &args.scenarios {
        match s.as_str() {
            "uploaders" => {
                let counts: &[usize] = if args.smoke { &[2] } else { &[0, 2, 4] };
                for &u in counts {
                    for server in SERVERS {
                        push(
                            "uploaders",
                            server,
                            format!("{u}"),
                            &owned(&["--threads", "2"]),
                        );
                    }
                }
            }
            "blocking" => {
                let a = owned(&["--threads", "8", "--block-ms", &BLOCK_MS.to_string()]);
                for server in SERVERS {
                    push("blocking", server, String::new(), &a);
                }
            }
            "memory" => {
                let mf = ATTACK_MAX_FRAME.to_string();
                let base = owned(&["--threads", "2", "--max-frame", &mf]);
                let mut capped = base.clone();
                capped.extend(owned(&["--max-buffered", &ATTACK_MAX_BUFFERED.to_string()]));
                push("memory", "hydrogen", "default".into(), &base);
                push(
                    "memory",
                    "hydrogen",
                    format!("--max-buffered {}", ATTACK_MAX_BUFFERED),
                    &capped,
                );
                push("memory", "tokio", "default".into(), &base);
            }
            _ => unreachable!("validated scenario"),
        }
    }
    rows
}

fn attackers(args: &Args) -> usize {
    if args.smoke { 30 } else { 300 }
}

fn run_row(ctx: &Ctx, args: &Args, row: &Row, log: &mut File) -> Result<Measured, String> {
    let mut srv = start(ctx, row, log)?;
    match row.scenario {
        "uploaders" => {
            let u = row.variant.parse().map_err(|_| "bad uploader count")?;
            run_uploaders(ctx, &mut srv, u)
        }
        "blocking" => run_blocking(ctx, &mut srv),
        "memory" => run_memory(ctx, &mut srv, attackers(args)),
        other => Err(format!("unknown scenario {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

fn fmt_us(v: f64) -> String {
    report::thousands(v.round())
}

/// `value / tokio` to two decimals, or a dash when either is missing or tokio's is zero.
fn ratio(value: Option<f64>, tokio: Option<f64>) -> String {
    match (value, tokio) {
        (Some(v), Some(t)) if t > 0.0 && v.is_finite() => format!("{:.2}", v / t),
        _ => "—".to_string(),
    }
}

fn fmt_shutdown(s: &Option<Shutdown>) -> (String, String) {
    match s {
        Some(Shutdown::Exited { ms, status }) => (report::thousands(ms.round()), status.clone()),
        Some(Shutdown::Hung) => (
            "hung".into(),
            format!("killed after {} s", HANG_LIMIT.as_secs()),
        ),
        None => ("—".into(), "—".into()),
    }
}

/// The row of the tokio server with the same variant (for uploaders: the same count; for
/// memory: the only tokio row).
fn tokio_peer<'a>(rows: &'a [Row], row: &Row) -> Option<&'a Measured> {
    rows.iter()
        .find(|r| {
            r.scenario == row.scenario
                && r.server == "tokio"
                && (row.scenario == "memory" || r.variant == row.variant)
        })
        .and_then(|r| r.result.as_ref().ok())
}

/// The p99 ratio to tokio's, `≥` when this row's p99 is a lower bound, `≤` when tokio's is.
fn p99_ratio(m: &Measured, tokio: Option<&Measured>) -> String {
    let (Some(l), Some(t)) = (m.latency, tokio.and_then(|t| t.latency)) else {
        return "—".to_string();
    };
    let r = ratio(Some(l.p99_us), Some(t.p99_us));
    match (l.censored(l.p99_us), t.censored(t.p99_us)) {
        (false, false) => r,
        (true, false) => format!("≥ {r}"),
        (false, true) => format!("≤ {r}"),
        (true, true) => "—".to_string(),
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / (1024.0 * 1024.0))
}

fn failed_cells(n: usize) -> String {
    " — |".repeat(n)
}

fn tables(rows: &[Row], args: &Args) -> String {
    let mut md = String::new();
    let secs = args.secs;
    let has = |s: &str| rows.iter().any(|r| r.scenario == s);
    if has("uploaders") {
        let _ = writeln!(
            md,
            "## uploaders\n\nServers `--threads 2`. U connections each write {} KiB frames as fast \
             as the socket takes them (a second thread per connection reads and discards the \
             echoes); one probe connection ping-pongs {PING_SIZE}-byte frames for {secs} s. Then \
             SIGTERM with the uploaders still running: shutdown ms is the time until the process \
             is gone.\n",
            UPLOAD_FRAME / 1024
        );
        md.push_str(
            "| server | uploaders | upload MiB/s | probe round trips | p50 µs | p99 µs | max µs \
             | p99 vs tokio | shutdown ms | exit |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
        );
        for r in rows.iter().filter(|r| r.scenario == "uploaders") {
            let _ = write!(md, "| {} | {} |", r.server, r.variant);
            match &r.result {
                Ok(m) => {
                    let (sd, exit) = fmt_shutdown(&m.shutdown);
                    let up = m.upload_rate.map_or("—".into(), mib);
                    let _ = write!(md, " {up} |");
                    write_latency(&mut md, m.latency);
                    let _ = writeln!(
                        md,
                        " {} | {sd} | {exit} |",
                        p99_ratio(m, tokio_peer(rows, r))
                    );
                }
                Err(_) => {
                    let _ = writeln!(md, "{} FAILED |", failed_cells(8));
                }
            }
        }
        md.push('\n');
    }
    if has("blocking") {
        let _ = writeln!(
            md,
            "## blocking\n\nServers `--threads 8 --block-ms {BLOCK_MS}`. {BLOCK_PINGERS} \
             connections ping-pong {PING_SIZE}-byte frames (one in flight each, a thread each) \
             for {secs} s, while one more sends `BLOCK` frames one at a time, each of which \
             sleeps {BLOCK_MS} ms in the server's frame handling. Latency: the {BLOCK_PINGERS} \
             connections together; \"stalled\" counts those of them that waited {BLOCK_MS} ms \
             or more at least once.\n"
        );
        md.push_str(
            "| server | round trips | p50 µs | p99 µs | max µs | p99 vs tokio | stalled \
             | BLOCK round trips | shutdown ms | exit |\n\
             |---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
        );
        for r in rows.iter().filter(|r| r.scenario == "blocking") {
            let _ = write!(md, "| {} |", r.server);
            match &r.result {
                Ok(m) => {
                    let (sd, exit) = fmt_shutdown(&m.shutdown);
                    write_latency(&mut md, m.latency);
                    let _ = writeln!(
                        md,
                        " {} | {}/{BLOCK_PINGERS} | {} | {sd} | {exit} |",
                        p99_ratio(m, tokio_peer(rows, r)),
                        m.stalled_conns.map_or("—".into(), |c| c.to_string()),
                        m.blocker_count
                            .map_or("—".into(), |c| report::thousands(c as f64))
                    );
                }
                Err(_) => {
                    let _ = writeln!(md, "{} FAILED |", failed_cells(8));
                }
            }
        }
        md.push('\n');
    }
    if has("memory") {
        let n = attackers(args);
        let limit = if args.smoke {
            ATTACK_WRITE_LIMIT_SMOKE
        } else {
            ATTACK_WRITE_LIMIT
        };
        let _ = writeln!(
            md,
            "## memory\n\nServers `--threads 2 --max-frame {ATTACK_MAX_FRAME}`. {n} attacker \
             connections each send a u32 prefix announcing {} bytes, then {} MiB of payload \
             (never the rest), and hold the connection; writes are non-blocking and stop after \
             {} s whatever is left. {} s later the server's VmRSS is read. One well-behaved \
             connection ping-pongs {PING_SIZE}-byte frames from before the first attacker \
             connects until then. \"accepted MiB\" is what the kernel took from the attackers' \
             writes (all of it reached the server's socket, not necessarily the server).\n",
            report::thousands(f64::from(ATTACK_ANNOUNCED)),
            ATTACK_SENT / (1024 * 1024),
            limit.as_secs(),
            ATTACK_SETTLE.as_secs(),
        );
        md.push_str(
            "| server | variant | RSS MiB | RSS vs tokio | accepted MiB | attackers done | closed \
             by server | probe round trips | probe p99 µs | shutdown ms | exit |\n\
             |---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
        );
        for r in rows.iter().filter(|r| r.scenario == "memory") {
            let _ = write!(md, "| {} | {} |", r.server, r.variant);
            match &r.result {
                Ok(m) => {
                    let rss = m.rss_kib.map(|k| k as f64 * 1024.0);
                    let tokio_rss = tokio_peer(rows, r)
                        .and_then(|t| t.rss_kib)
                        .map(|k| k as f64 * 1024.0);
                    let (sd, exit) = fmt_shutdown(&m.shutdown);
                    let _ = writeln!(
                        md,
                        " {} | {} | {} | {}/{n} | {} | {} | {} | {sd} | {exit} |",
                        rss.map_or("—".into(), mib),
                        ratio(rss, tokio_rss),
                        m.attack_bytes.map_or("—".into(), |b| mib(b as f64)),
                        m.attackers_done,
                        m.attackers_closed,
                        m.latency
                            .map_or("0".into(), |l| report::thousands(l.count as f64)),
                        m.latency.map_or("—".into(), |l| l.cell(l.p99_us)),
                    );
                }
                Err(_) => {
                    let _ = writeln!(md, "{} FAILED |", failed_cells(8));
                }
            }
        }
        md.push('\n');
    }
    let starved = rows
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .any(|m| m.latency.is_some_and(|l| l.starved));
    if starved {
        let _ = writeln!(
            md,
            "`≥`: a connection got no echo within {} s (or could not write its frame within it) \
             and stopped there; that wait counts as its last round trip, so the figure is a lower \
             bound (and a ratio with `≤` is an upper bound, tokio's figure being the lower \
             bound). The server was still running: this is a stall, not a failure.\n",
            IO_TIMEOUT.as_secs()
        );
    }
    let failures: Vec<&Row> = rows.iter().filter(|r| r.failed()).collect();
    if !failures.is_empty() {
        md.push_str("## failures\n\n");
        for r in failures {
            let what = match &r.result {
                Err(e) => e.clone(),
                Ok(_) => format!(
                    "did not exit within {} s of SIGTERM; killed",
                    HANG_LIMIT.as_secs()
                ),
            };
            let _ = writeln!(md, "- {} {} {}: {what}", r.scenario, r.server, r.variant);
        }
        md.push('\n');
    }
    md
}

/// The cells round trips, p50, p99, max (`—` without samples).
fn write_latency(md: &mut String, l: Option<Latency>) {
    match l {
        Some(l) => {
            let _ = write!(
                md,
                " {} | {} | {} | {} |",
                report::thousands(l.count as f64),
                l.cell(l.p50_us),
                l.cell(l.p99_us),
                l.cell(l.max_us)
            );
        }
        None => md.push_str(" 0 | — | — | — |"),
    }
}

fn markdown(rows: &[Row], args: &Args, elapsed: Duration) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Stalls: hydrogen against tokio\n\n\
         - date: {}\n- kernel: {}\n- CPU: {} ({} logical CPUs available)\n\
         - window: {} s{}; servers run in turn, hydrogen then tokio, a fresh process each, \
         u32 framing on loopback\n- run time: {:.0} s\n\
         - command: `stalls {}`\n\n\
         Ratios are hydrogen / tokio for the same load: above 1 means hydrogen is worse. One run \
         per row on a shared machine: read them as orders of magnitude, not percentages.\n",
        report::utc_now(),
        report::kernel_release(),
        report::cpu_model(),
        report::cpu_count(),
        args.secs,
        if args.smoke { " (smoke)" } else { "" },
        elapsed.as_secs_f64(),
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
    );
    md.push_str(&tables(rows, args));
    md
}

/// One progress line for stderr.
fn progress(row: &Row) -> String {
    match &row.result {
        Err(e) => format!("FAILED: {e}"),
        Ok(m) => {
            let mut s = String::new();
            if let Some(l) = m.latency {
                let _ = write!(
                    s,
                    "n={} p50={:.0}us p99={:.0}us max={:.0}us{}",
                    l.count,
                    l.p50_us,
                    l.p99_us,
                    l.max_us,
                    if l.starved { " (starved)" } else { "" }
                );
            }
            if let Some(c) = m.blocker_count {
                let _ = write!(s, " block_n={c}");
            }
            if let Some(c) = m.stalled_conns {
                let _ = write!(s, " stalled={c}/{BLOCK_PINGERS}");
            }
            if let Some(k) = m.rss_kib {
                let _ = write!(s, " rss={}MiB", k / 1024);
            }
            let (sd, exit) = fmt_shutdown(&m.shutdown);
            let _ = write!(s, " shutdown={sd}ms exit={exit}");
            s
        }
    }
}

fn open_log(dir: &Path, server: &str) -> Result<File, String> {
    let path = dir.join(format!("stalls-{server}.log"));
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| format!("creating {}: {e}", path.display()))
}

fn run(args: &Args) -> Result<bool, String> {
    let names: Vec<String> = SERVERS.iter().map(|s| format!("{s}_echo")).collect();
    let bin_dir = sibling_binaries(&names)?;
    server_cli::raise_nofile_limit();
    kill_children_on_signals("stalls");
    let logs = args.out.join("logs");
    fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let mut log_files = Vec::new();
    for s in SERVERS {
        log_files.push(open_log(&logs, s)?);
    }
    let ctx = Ctx {
        bin_dir,
        secs: args.secs,
        smoke: args.smoke,
    };
    let mut rows = plan(args);
    let total = rows.len();
    let started = Instant::now();
    for (i, row) in rows.iter_mut().enumerate() {
        eprint!(
            "[{:>2}/{total}] {:<9} {:<8} {:<24} ",
            i + 1,
            row.scenario,
            row.server,
            row.variant
        );
        let log = &mut log_files[SERVERS.iter().position(|s| *s == row.server).unwrap_or(0)];
        row.result = run_row(&ctx, args, row, log);
        eprintln!("{}", progress(row));
    }
    let md = markdown(&rows, args, started.elapsed());
    let path = args.out.join("stalls.md");
    fs::write(&path, &md).map_err(|e| format!("writing {}: {e}", path.display()))?;
    println!("{md}");
    eprintln!("stalls: wrote {}", path.display());
    Ok(!rows.iter().any(Row::failed))
}

fn main() -> ExitCode {
    // Usage errors exit with status 2, `--help` with 0.
    let args = Cli::parse().args();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("stalls: some runs failed; see the report");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("stalls: error: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Option<Args>, clap::Error> {
        match Cli::try_parse_from(std::iter::once(&"stalls").chain(v)) {
            Ok(cli) => Ok(Some(cli.args())),
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok(None),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn arguments() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let a = args(&[]).unwrap().unwrap();
        assert_eq!(a.secs, 5.0);
        assert_eq!(a.scenarios, ALL_SCENARIOS);
        assert!(!a.smoke);
        assert_eq!(a.out, PathBuf::from("bench/results"));
        let a = args(&["--smoke"]).unwrap().unwrap();
        assert_eq!((a.secs, a.smoke), (1.0, true));
        let a = args(&["--smoke", "--secs", "2", "--scenarios", "memory,uploaders"])
            .unwrap()
            .unwrap();
        assert_eq!(a.secs, 2.0);
        assert_eq!(a.scenarios, ["uploaders", "memory"]);
        let a = args(&["--out", "/tmp/x"]).unwrap().unwrap();
        assert_eq!(a.out, PathBuf::from("/tmp/x"));
        assert!(args(&["--help"]).unwrap().is_none());
        assert!(args(&["--scenarios", "idle"]).is_err());
        assert!(args(&["--secs"]).is_err());
        assert!(args(&["--secs", "0"]).is_err());
        assert!(args(&["--bogus"]).is_err());
        let a = args(&["--scenarios", "memory", "--scenarios", "blocking"])
            .unwrap()
            .unwrap();
        assert_eq!(a.scenarios, ["blocking"]);
    }

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99.0), Some(990));
        // One stall in 200 samples is above p99's rank 198.
        let mut v = vec![10u64; 199];
        v.push(100_000);
        assert_eq!(percentile(&v, 99.0), Some(10));
        let l = summarize(vec![3000, 1000, 2000, 100_000], false).unwrap();
        assert_eq!(l.count, 4);
        assert_eq!((l.p50_us, l.p99_us, l.max_us), (2.0, 100.0, 100.0));
        assert!(summarize(Vec::new(), false).is_none());
        let l = summarize(vec![1000, 10_000_000_000], true).unwrap();
        assert_eq!(l.cell(l.p50_us), "1");
        assert_eq!(l.cell(l.max_us), "≥ 10,000,000");
        let conns = [vec![1, 2], vec![5, 100_000_000], vec![], vec![99_999_999]];
        assert_eq!(stalled_count(&conns, Duration::from_millis(100)), 1);
    }

    #[test]
    fn payloads_and_attack_bytes() {
        let f = frame(&ping_payload(1, false));
        assert_eq!(f.len(), 4 + PING_SIZE);
        assert_eq!(&f[..4], &(PING_SIZE as u32).to_be_bytes());
        assert!(!server_cli::is_block_frame(&f[4..]));
        assert!(server_cli::is_block_frame(&ping_payload(1, true)));
        let prefix = ATTACK_ANNOUNCED.to_be_bytes();
        let filler = [b'a'; 10];
        assert_eq!(attack_bytes(0, &prefix, &filler), &prefix);
        assert_eq!(attack_bytes(3, &prefix, &filler), &prefix[3..]);
        assert_eq!(attack_bytes(4, &prefix, &filler).len(), 10);
        assert_eq!(attack_bytes(ATTACK_SENT - 1, &prefix, &filler).len(), 5);
        assert!(attack_bytes(4 + ATTACK_SENT, &prefix, &filler).is_empty());
    }

    #[test]
    fn plans_and_ratios() {
        let full = plan(&args(&[]).unwrap().unwrap());
        let names: Vec<_> = full
            .iter()
            .map(|r| format!("{} {} {}", r.scenario, r.server, r.variant))
            .collect();
        assert_eq!(names.len(), 6 + 2 + 3);
        assert_eq!(names[0], "uploaders hydrogen 0");
        assert_eq!(names[1], "uploaders tokio 0");
        assert_eq!(names[8], "memory hydrogen default");
        assert_eq!(names[10], "memory tokio default");
        assert!(full[9].server_args.contains(&"--max-buffered".to_string()));
        assert!(!full[10].server_args.contains(&"--max-buffered".to_string()));
        let smoke = plan(&args(&["--smoke"]).unwrap().unwrap());
        assert_eq!(smoke.len(), 2 + 2 + 3);
        assert_eq!(smoke[0].variant, "2");
        assert_eq!(ratio(Some(50.0), Some(25.0)), "2.00");
        assert_eq!(ratio(Some(50.0), Some(0.0)), "—");
        assert_eq!(ratio(None, Some(1.0)), "—");
    }

    #[test]
    fn report_rows_and_failures() {
        let a = args(&["--scenarios", "blocking"]).unwrap().unwrap();
        let mut rows = plan(&a);
        let m = |p99| Measured {
            latency: Some(Latency {
                count: 10,
                p50_us: 1.0,
                p99_us: p99,
                max_us: p99,
                starved: false,
            }),
            blocker_count: Some(3),
            stalled_conns: Some(2),
            shutdown: Some(Shutdown::Exited {
                ms: 2.0,
                status: "0".into(),
            }),
            ..Measured::default()
        };
        rows[0].result = Ok(m(300.0));
        rows[1].result = Ok(m(100.0));
        let md = tables(&rows, &a);
        assert!(
            md.contains("| hydrogen | 10 | 1 | 300 | 300 | 3.00 | 2/20 | 3 | 2 | 0 |"),
            "{md}"
        );
        assert!(!md.contains("failures"));
        rows[1].result = Ok(Measured {
            shutdown: Some(Shutdown::Hung),
            ..m(100.0)
        });
        assert!(rows[1].failed());
        rows[0].result = Err("boom".into());
        let md = tables(&rows, &a);
        assert!(md.contains("FAILED"));
        assert!(md.contains("- blocking hydrogen : boom"), "{md}");
        assert!(md.contains("| hung |"), "{md}");

        let starved = |p99| Measured {
            latency: Some(Latency {
                starved: true,
                ..m(p99).latency.unwrap()
            }),
            ..m(p99)
        };
        assert_eq!(p99_ratio(&m(300.0), Some(&m(100.0))), "3.00");
        assert_eq!(p99_ratio(&starved(300.0), Some(&m(100.0))), "≥ 3.00");
        assert_eq!(p99_ratio(&m(300.0), Some(&starved(100.0))), "≤ 3.00");
        assert_eq!(p99_ratio(&starved(300.0), Some(&starved(100.0))), "—");
        assert_eq!(p99_ratio(&m(300.0), None), "—");
        rows[0].result = Ok(starved(300.0));
        let md = tables(&rows, &a);
        assert!(md.contains("| ≥ 300 | ≥ 300 | ≥ 3.00 |"), "{md}");
        assert!(md.contains("lower bound"), "{md}");
    }
}
