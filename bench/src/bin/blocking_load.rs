//! `blocking_load`: the closed-loop client of the blocking-work benchmark.
//!
//! Opens `--conns` connections to a blocking server (see `hydrogen_bench::blocking`), one thread
//! and one blocking socket (`TCP_NODELAY`) each. Every connection sends one SimpleFrame request
//! (16-byte payload: connection index u64 BE, sequence number u64 BE), waits for the reply,
//! checks that it is the request's payload byte for byte, and sends the next one at once. A
//! reply's latency runs from just before the request is written to the read that completes it,
//! recorded in an HDR histogram (nanoseconds, 3 significant digits; per thread, merged at the
//! end).
//!
//! Output on stdout, like `loadgen`: `MEASURE_START` after the warm-up (the histograms and
//! counts are reset then), `MEASURE_END` when the window closes, then one
//! `RESULT key=value ...` line. A reply counts if it completes inside the window. `--work-ms`
//! is only used to compute the ideal rate, `conns * 1000 / work_ms` requests per second, and the
//! ratios to it; it must be the server's. A human summary goes to stderr.
//!
//! A wrong or out-of-order reply, a connection closed or reset by the server, a request without
//! a reply within the stall bound (10 s, or ten times the work if that is longer), or a
//! connection that cannot be opened ends the run with a message on stderr and status 1.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use clap::builder::RangedU64ValueParser;
use hdrhistogram::Histogram;
use hydrogen_bench::blocking::{self, MAX_WORK_MS};
use hydrogen_bench::cli;
use hydrogen_bench::server_cli::{self, Framing};

const NAME: &str = "blocking_load";
const MAX_CONNS: u64 = 10_000;
const MAX_SECS: f64 = 3600.0;
/// How long one connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on opening all the connections.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// A request without a reply for this long (or ten times the work, if longer) is a stall.
const STALL: Duration = Duration::from_secs(10);
/// Stack of the connection threads: they only hold a histogram handle and small buffers.
const STACK: usize = 256 * 1024;

/// The command line.
#[derive(Debug, Clone, Parser)]
#[command(
    // A flag given twice: the last one counts, as in the other binaries.
    args_override_self = true,
    name = NAME,
    about = "Closed-loop load for a blocking-work server: each connection sends one SimpleFrame \
             request, waits for its reply, checks it and sends the next. Prints MEASURE_START and \
             MEASURE_END around the measured window, then one RESULT line."
)]
struct Cli {
    /// Server address
    #[arg(long, value_name = "HOST:PORT", value_parser = resolve)]
    addr: SocketAddr,
    /// Connections, one request in flight each
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_CONNS))]
    conns: usize,
    /// Measured window in seconds, fractions allowed
    #[arg(long, value_name = "S", default_value_t = 5.0, value_parser = cli::secs(0.001, MAX_SECS))]
    secs: f64,
    /// Seconds of load before the window opens
    #[arg(long, value_name = "W", default_value_t = 1.0, value_parser = cli::secs(0.0, MAX_SECS))]
    warmup: f64,
    /// The server's work per request, ms: only used for the ideal rate and the ratios to it
    #[arg(long, value_name = "M", default_value_t = 20,
          value_parser = RangedU64ValueParser::<u64>::new().range(1..=MAX_WORK_MS))]
    work_ms: u64,
}

/// `--addr`: the first address `HOST:PORT` resolves to.
fn resolve(v: &str) -> Result<SocketAddr, String> {
    v.to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "resolves to nothing".to_string())
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// State shared by the main thread and the connection threads.
struct Shared {
    phase: AtomicU8,
    /// Set by a connection thread that fails, so that everything stops early.
    failed: AtomicBool,
    /// The first failure.
    error: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, e: String) {
        let mut first = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
        self.failed.store(true, Ordering::Release);
    }
}

/// What one connection measured during the window.
struct Tally {
    hist: Histogram<u64>,
    count: u64,
}

/// Histogram range: 1 ns to 1 hour, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

fn print_line(line: &str) {
    let mut out = io::stdout().lock();
    // If stdout is gone there is no one to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Opens the connections one after the other, each within [`CONNECT_TIMEOUT`], all within
/// [`CONNECT_DEADLINE`]. The first failure ends it.
fn connect_all(addr: SocketAddr, n: usize, stall: Duration) -> Result<Vec<TcpStream>, String> {
    let start = Instant::now();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if start.elapsed() > CONNECT_DEADLINE {
            return Err(format!(
                "connecting to {addr}: only {i} of {n} connections open after {CONNECT_DEADLINE:?}"
            ));
        }
        let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| {
            format!("cannot connect to {addr} (connection {i} of {n}): {e}; is the server running?")
        })?;
        let setup = |s: &TcpStream| -> io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(stall))?;
            s.set_write_timeout(Some(stall))
        };
        setup(&s).map_err(|e| format!("connection {i}: socket options: {e}"))?;
        out.push(s);
    }
    Ok(out)
}

/// One connection's closed loop, until the phase says stop or something fails.
fn connection(
    index: u64,
    mut stream: TcpStream,
    shared: &Shared,
    stall: Duration,
) -> Result<Tally, String> {
    let mut hist = new_histogram();
    let mut count = 0u64;
    let mut measuring = false;
    let mut wire = Vec::with_capacity(32);
    let mut rbuf: Vec<u8> = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    let mut seq = 0u64;
    loop {
        if shared.failed.load(Ordering::Acquire) {
            break;
        }
        let payload = blocking::request(index, seq);
        wire.clear();
        Framing::Simple.encode(&payload, &mut wire);
        let sent = Instant::now();
        stream.write_all(&wire).map_err(|e| {
            format!("connection {index}: writing request {seq}: {e} (connection lost?)")
        })?;
        let reply = loop {
            if let Some((reply, consumed)) = Framing::Simple
                .decode(&rbuf)
                .map_err(|e| format!("connection {index}: malformed reply to request {seq}: {e}"))?
            {
                if consumed != rbuf.len() {
                    return Err(format!(
                        "connection {index}: {} unexpected byte(s) after the reply to request \
                         {seq} (more than one reply to one request?)",
                        rbuf.len() - consumed
                    ));
                }
                break reply;
            }
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(format!(
                        "connection {index}: closed by the server while waiting for the reply \
                         to request {seq}"
                    ));
                }
                Ok(n) => rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!(
                        "connection {index}: no reply to request {seq} within {:.1} s (stall)",
                        stall.as_secs_f64()
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "connection {index}: reading the reply to request {seq}: {e} \
                         (connection lost?)"
                    ));
                }
            }
        };
        let done = Instant::now();
        blocking::check_reply(index, seq, &rbuf[reply])?;
        rbuf.clear();
        seq += 1;
        match shared.phase.load(Ordering::Acquire) {
            MEASURE => {
                if !measuring {
                    // Everything before the window is warm-up.
                    measuring = true;
                    hist.reset();
                    count = 0;
                }
                hist.saturating_record((done - sent).as_nanos().max(1) as u64);
                count += 1;
            }
            STOP => break,
            _ => {}
        }
    }
    Ok(Tally { hist, count })
}

/// Sleeps until `deadline`, in short steps, returning early (false) if a connection failed.
fn sleep_until(deadline: Instant, shared: &Shared) -> bool {
    loop {
        if shared.failed.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(10)));
    }
}

/// Quantiles of a histogram in nanoseconds, as microseconds.
fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn run(cli: &Cli) -> Result<(), String> {
    server_cli::raise_nofile_limit();
    let work = Duration::from_millis(cli.work_ms);
    let stall = STALL.max(work * 10);
    let streams = connect_all(cli.addr, cli.conns, stall)?;
    // Clones to shut the sockets down with, waking every thread at once if one fails.
    let clones: Vec<TcpStream> = streams
        .iter()
        .map(TcpStream::try_clone)
        .collect::<io::Result<_>>()
        .map_err(|e| format!("cloning a socket: {e}"))?;
    let shared = Shared {
        phase: AtomicU8::new(WARMUP),
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    let (tallies, window) = thread::scope(|scope| {
        let mut handles = Vec::with_capacity(streams.len());
        for (i, s) in streams.into_iter().enumerate() {
            let shared = &shared;
            let spawned = thread::Builder::new()
                .name(format!("conn-{i}"))
                .stack_size(STACK)
                .spawn_scoped(scope, move || {
                    let r = connection(i as u64, s, shared, stall);
                    if let Err(e) = &r {
                        shared.fail(e.clone());
                    }
                    r
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    shared.fail(format!("starting the thread of connection {i}: {e}"));
                    break;
                }
            }
        }
        let mut window = 0.0;
        if sleep_until(
            Instant::now() + Duration::from_secs_f64(cli.warmup),
            &shared,
        ) {
            shared.phase.store(MEASURE, Ordering::Release);
            let t0 = Instant::now();
            print_line("MEASURE_START");
            let completed = sleep_until(t0 + Duration::from_secs_f64(cli.secs), &shared);
            shared.phase.store(STOP, Ordering::Release);
            window = t0.elapsed().as_secs_f64();
            if completed {
                print_line("MEASURE_END");
            }
        }
        shared.phase.store(STOP, Ordering::Release);
        if shared.failed.load(Ordering::Acquire) {
            for c in &clones {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        let mut tallies = Vec::with_capacity(handles.len());
        for h in handles {
            match h.join() {
                Ok(Ok(t)) => tallies.push(t),
                // The first failure is in `shared.error`.
                Ok(Err(_)) => {}
                Err(_) => shared.fail("a connection thread panicked".to_string()),
            }
        }
        (tallies, window)
    });
    if let Some(e) = shared.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut hist = new_histogram();
    let mut count = 0u64;
    for t in &tallies {
        hist.add(&t.hist)
            .map_err(|e| format!("merging histograms: {e:?}"))?;
        count += t.count;
    }
    if count == 0 {
        return Err("no replies at all during the measured window".to_string());
    }
    let rps = count as f64 / window;
    let ideal = cli.conns as f64 * 1000.0 / cli.work_ms as f64;
    let work_us = cli.work_ms as f64 * 1000.0;
    let (p50, p99, p999, max) = (
        us(&hist, 0.50),
        us(&hist, 0.99),
        us(&hist, 0.999),
        hist.max() as f64 / 1000.0,
    );
    print_line(&format!(
        "RESULT mode=blocking conns={} work_ms={} secs={window:.2} requests={count} \
         rps={rps:.1} p50_us={p50:.2} p99_us={p99:.2} p999_us={p999:.2} max_us={max:.2} \
         ideal_rps={ideal:.1} ratio_to_ideal={:.4} p99_over_work={:.4} errors=0",
        cli.conns,
        cli.work_ms,
        rps / ideal,
        p99 / work_us,
    ));
    eprintln!(
        "{NAME}: {rps:.0} req/s = {:.3}x ideal ({ideal:.0}); p50 {:.2} ms, p99 {:.2} ms \
         ({:.3}x the {} ms work), max {:.2} ms",
        rps / ideal,
        p50 / 1000.0,
        p99 / 1000.0,
        p99 / work_us,
        cli.work_ms,
        max / 1000.0
    );
    Ok(())
}

fn main() -> ExitCode {
    // Usage errors exit with status 2, `--help` with 0.
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{NAME}: error: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(s: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once(NAME).chain(s.split_whitespace()))
    }

    #[test]
    fn arguments() {
        Cli::command().debug_assert();
        let c = args("--addr 127.0.0.1:9").unwrap();
        assert_eq!(c.addr.port(), 9);
        assert_eq!((c.conns, c.secs, c.warmup, c.work_ms), (50, 5.0, 1.0, 20));
        let c = args("--addr 127.0.0.1:9 --conns 3 --secs 0.5 --warmup 0 --work-ms 7").unwrap();
        assert_eq!((c.conns, c.secs, c.warmup, c.work_ms), (3, 0.5, 0.0, 7));
        for bad in [
            "--conns 3",
            "--addr 127.0.0.1:9 --conns 0",
            "--addr 127.0.0.1:9 --conns 10001",
            "--addr 127.0.0.1:9 --work-ms 0",
            "--addr 127.0.0.1:9 --secs 0",
            "--addr 127.0.0.1:9 --depth 2",
        ] {
            assert!(args(bad).is_err(), "{bad}");
        }
    }

    /// A loopback server that answers each request after `answer` says how.
    fn server(answer: fn(u64, &[u8], &mut Vec<u8>)) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { break };
                thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 256];
                    let mut n = 0u64;
                    while let Ok(k) = s.read(&mut chunk) {
                        if k == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..k]);
                        while let Ok(Some((p, used))) = Framing::Simple.decode(&buf) {
                            let mut out = Vec::new();
                            answer(n, &buf[p], &mut out);
                            n += 1;
                            buf.drain(..used);
                            if s.write_all(&out).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn one_connection(addr: SocketAddr) -> Result<Tally, String> {
        let stall = Duration::from_secs(2);
        let mut streams = connect_all(addr, 1, stall)?;
        let shared = Shared {
            phase: AtomicU8::new(MEASURE),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        };
        thread::scope(|scope| {
            let h = scope.spawn(|| connection(0, streams.remove(0), &shared, stall));
            thread::sleep(Duration::from_millis(100));
            shared.phase.store(STOP, Ordering::Release);
            h.join().unwrap()
        })
    }

    #[test]
    fn counts_echoes_and_rejects_bad_replies() {
        let echo = server(|_, p, out| Framing::Simple.encode(p, out));
        let t = one_connection(echo).unwrap();
        assert!(t.count > 10 && t.hist.len() == t.count, "{}", t.count);

        // The reply to the request before the last one, from the third request on.
        let stale = server(|n, p, out| {
            let mut p = p.to_vec();
            if n >= 2 {
                p[15] -= 1;
            }
            Framing::Simple.encode(&p, out)
        });
        let e = one_connection(stale).map(|t| t.count).unwrap_err();
        assert!(e.contains("request 2") && e.contains("out of order"), "{e}");

        let twice = server(|_, p, out| {
            Framing::Simple.encode(p, out);
            Framing::Simple.encode(p, out);
        });
        let e = one_connection(twice).map(|t| t.count).unwrap_err();
        // Both replies usually come in one read; if not, the second is taken for the next one's.
        assert!(
            e.contains("unexpected byte") || e.contains("out of order"),
            "{e}"
        );

        let silent = server(|_, _, _| {});
        let started = Instant::now();
        let e = one_connection(silent).map(|t| t.count).unwrap_err();
        assert!(e.contains("no reply to request 0"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn connect_failure_is_quick_and_clear() {
        // A port nothing listens on: bind one, then close it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let started = Instant::now();
        let e = connect_all(addr, 3, STALL).unwrap_err();
        assert!(
            e.contains("cannot connect") && e.contains("connection 0 of 3"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}
