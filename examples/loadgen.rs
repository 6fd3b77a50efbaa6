//! A load generator for the echo server: throughput and round-trip latency.
//!
//! Opens `--conns` connections and, on each, repeatedly sends a batch of `--depth` frames in one
//! write and then reads the `--depth` echoed frames, for `--secs` seconds. Every payload carries
//! its connection and sequence number, and every reply is checked byte for byte and in order: a
//! wrong or missing reply stops the run with an error. Frames are written and read with the
//! library's codecs (`Codec::encode`, `Codec::decode` over a read buffer) on plain blocking
//! `std::net::TcpStream`s with `TCP_NODELAY`.
//!
//! One thread per connection, up to 64 threads; beyond that each thread drives several
//! connections in turn (sending a batch on each, then reading the replies of each), so latencies
//! then include the client's own turn-taking.
//!
//! A frame's round-trip time runs from just before the write of its batch to the return of the
//! read that completed its reply.
//!
//! ```text
//! cargo run --release --example echo -- --addr 127.0.0.1:4000 &
//! cargo run --release --example loadgen -- --addr 127.0.0.1:4000 --secs 3
//! cargo run --release --example loadgen -- --addr 127.0.0.1:4000 --conns 100 --depth 16
//! ```
//!
//! Prints a few lines of results, then a one-line summary such as
//! `conns=1 depth=1 size=64 frames=... fps=... p50=..us p99=..us p999=..us max=..us`.
//! The `--framing` must match the server's.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hydrogen::{Codec, LengthPrefixed, SimpleFrame};

const USAGE: &str = "\
Usage: loadgen [--addr HOST:PORT] [--framing simple|u32] [--conns N] [--depth K]
               [--size B] [--secs S]

Sends frames to an echo server, checks every reply, and reports throughput and latency.

Options:
  --addr HOST:PORT       server address (default 127.0.0.1:1337)
  --framing simple|u32   the server's framing (default simple)
  --conns N              connections (default 1)
  --depth K              frames in flight per connection, sent in one write (default 1)
  --size B               payload bytes per frame (default 64)
  --secs S               duration in seconds, fractions allowed (default 5, at most 600)
  -h, --help             print this help
";

/// At most this many threads; more connections share them.
const MAX_THREADS: usize = 64;
const MAX_CONNS: usize = 65_536;
const MAX_DEPTH: usize = 65_536;
const MAX_SECS: f64 = 600.0;
/// How long to wait for the server: to connect, and for each read.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Round-trip times kept, over all threads: 4 bytes each while running. Beyond it a long run
/// keeps a uniform sample (see [`Samples`]).
const MAX_SAMPLES: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Simple,
    U32,
}

impl Framing {
    fn name(self) -> &'static str {
        match self {
            Framing::Simple => "simple",
            Framing::U32 => "u32",
        }
    }

    fn max_payload(self) -> usize {
        match self {
            Framing::Simple => SimpleFrame::MAX_PAYLOAD,
            Framing::U32 => LengthPrefixed::DEFAULT_MAX_FRAME_LEN,
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    addr: String,
    framing: Framing,
    conns: usize,
    depth: usize,
    size: usize,
    secs: f64,
}

fn parse_num<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    name: &str,
    value: &str,
    min: T,
    max: T,
) -> Result<T, String> {
    match value.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!(
            "{name} {value:?}: expected a number from {min} to {max}"
        )),
    }
}

/// `Ok(None)` means `--help`.
fn parse_args() -> Result<Option<Opts>, String> {
    let mut opts = Opts {
        addr: "127.0.0.1:1337".to_string(),
        framing: Framing::Simple,
        conns: 1,
        depth: 1,
        size: 64,
        secs: 5.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => opts.addr = value("--addr")?,
            "--framing" => {
                opts.framing = match value("--framing")?.as_str() {
                    "simple" => Framing::Simple,
                    "u32" => Framing::U32,
                    other => {
                        return Err(format!(
                            "--framing {other:?}: expected \"simple\" or \"u32\""
                        ));
                    }
                }
            }
            "--conns" => opts.conns = parse_num("--conns", &value("--conns")?, 1, MAX_CONNS)?,
            "--depth" => opts.depth = parse_num("--depth", &value("--depth")?, 1, MAX_DEPTH)?,
            "--size" => {
                let v = value("--size")?;
                opts.size = v
                    .parse()
                    .map_err(|_| format!("--size {v:?}: expected a number of bytes"))?;
            }
            "--secs" => {
                let v = value("--secs")?;
                opts.secs = match v.parse::<f64>() {
                    Ok(s) if s > 0.0 && s <= MAX_SECS => s,
                    _ => {
                        return Err(format!(
                            "--secs {v:?}: expected more than 0 and at most 600"
                        ));
                    }
                };
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let max = opts.framing.max_payload();
    if opts.size > max {
        return Err(format!(
            "--size {}: the {} framing carries at most {max} bytes",
            opts.size,
            opts.framing.name()
        ));
    }
    Ok(Some(opts))
}

/// Writes the payload of frame `seq` of connection `conn` into `out`: the sequence number
/// (little-endian, as many of its 8 bytes as fit), then bytes that depend on both numbers and
/// the position, so a frame from another connection or position does not match by chance.
fn fill_payload(out: &mut Vec<u8>, conn: usize, seq: u64, size: usize) {
    out.clear();
    let head = seq.to_le_bytes();
    let n = size.min(head.len());
    out.extend_from_slice(&head[..n]);
    let salt = (conn as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq;
    out.extend((n..size).map(|i| (salt.rotate_left(i as u32 % 64) as u8) ^ (i as u8)));
}

/// Describes how `got` differs from the expected payload of frame `seq`.
fn mismatch(conn: usize, seq: u64, expected: &[u8], got: &[u8]) -> String {
    let mut msg = format!("connection {conn}: reply to frame {seq} does not match: ");
    if got.len() != expected.len() {
        msg += &format!("{} bytes, expected {}", got.len(), expected.len());
    } else {
        let at = got.iter().zip(expected).position(|(a, b)| a != b);
        msg += &format!("first difference at byte {}", at.unwrap_or(0));
    }
    if got.len() >= 8 && expected.len() >= 8 {
        let their = u64::from_le_bytes(got[..8].try_into().unwrap());
        msg += &format!(" (it carries sequence number {their})");
    }
    msg
}

/// One connection's socket, codec and read state.
struct Conn<C> {
    index: usize,
    tcp: TcpStream,
    codec: C,
    /// Received bytes not decoded yet: `rbuf[rpos..]`.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Sequence number of the next frame to send, and of the next reply expected.
    next_send: u64,
    next_recv: u64,
    /// When the batch in flight was written.
    sent_at: Instant,
}

/// Buffers shared by the connections of one thread, and its results.
struct Worker {
    size: usize,
    depth: usize,
    wbuf: Vec<u8>,
    payload: Vec<u8>,
    expected: Vec<u8>,
    chunk: Vec<u8>,
    rtts: Samples,
}

/// The round-trip times one thread measured, in nanoseconds (saturating at about 4.3 s).
///
/// Every frame is recorded until `cap` samples are held. Then every other sample is dropped and
/// from then on only every other frame is recorded, and so on: the stride doubles each time, so
/// however long the run, memory stays bounded and the samples stay spread evenly over it. Each
/// sample stands for `stride` frames. The maximum is tracked exactly.
struct Samples {
    rtts: Vec<u32>,
    /// Record frame number `seen` when it is a multiple of this (a power of two).
    stride: u64,
    seen: u64,
    /// Even, so a frame at the cap is a multiple of the doubled stride.
    cap: usize,
    max: u32,
}

impl Samples {
    fn new(cap: usize) -> Samples {
        Samples {
            rtts: Vec::new(),
            stride: 1,
            seen: 0,
            cap: (cap & !1).max(2),
            max: 0,
        }
    }

    fn record(&mut self, rtt: Duration) {
        let rtt = u32::try_from(rtt.as_nanos()).unwrap_or(u32::MAX);
        self.max = self.max.max(rtt);
        if self.seen.is_multiple_of(self.stride) {
            if self.rtts.len() >= self.cap {
                let mut i = 0;
                self.rtts.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.stride *= 2;
            }
            if self.seen.is_multiple_of(self.stride) {
                self.rtts.push(rtt);
            }
        }
        self.seen += 1;
    }
}

impl Worker {
    /// Encodes `depth` frames and writes them in one go.
    fn send_batch<C: Codec>(&mut self, conn: &mut Conn<C>) -> Result<(), String> {
        self.wbuf.clear();
        for _ in 0..self.depth {
            fill_payload(&mut self.payload, conn.index, conn.next_send, self.size);
            conn.codec
                .encode(&self.payload, &mut self.wbuf)
                .map_err(|e| format!("cannot encode a frame: {e}"))?;
            conn.next_send += 1;
        }
        conn.sent_at = Instant::now();
        conn.tcp
            .write_all(&self.wbuf)
            .map_err(|e| format!("connection {}: write failed: {e}", conn.index))
    }

    /// Reads until every frame of the batch in flight has come back, checking each.
    fn recv_batch<C: Codec>(&mut self, conn: &mut Conn<C>) -> Result<(), String> {
        let mut received_at = conn.sent_at;
        while conn.next_recv < conn.next_send {
            // Decode what is buffered.
            let decoded = conn
                .codec
                .decode(&conn.rbuf[conn.rpos..])
                .map_err(|e| format!("connection {}: bad frame from server: {e}", conn.index))?;
            if let Some(d) = decoded {
                let frame = &conn.rbuf[conn.rpos..][d.payload];
                fill_payload(&mut self.expected, conn.index, conn.next_recv, self.size);
                if frame != self.expected.as_slice() {
                    return Err(mismatch(conn.index, conn.next_recv, &self.expected, frame));
                }
                self.rtts.record(received_at.duration_since(conn.sent_at));
                conn.rpos += d.consumed;
                conn.next_recv += 1;
                continue;
            }

            // Need more bytes: drop what is decoded, then read.
            conn.rbuf.drain(..conn.rpos);
            conn.rpos = 0;
            let n = match conn.tcp.read(&mut self.chunk) {
                Ok(0) => {
                    return Err(format!(
                        "connection {}: the server closed the connection, {} replies \
                         outstanding (is --framing the server's?)",
                        conn.index,
                        conn.next_send - conn.next_recv
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!(
                        "connection {}: no reply within {} s ({} outstanding)",
                        conn.index,
                        IO_TIMEOUT.as_secs(),
                        conn.next_send - conn.next_recv
                    ));
                }
                Err(e) => return Err(format!("connection {}: read failed: {e}", conn.index)),
            };
            received_at = Instant::now();
            conn.rbuf.extend_from_slice(&self.chunk[..n]);
        }
        if conn.rpos < conn.rbuf.len() {
            return Err(format!(
                "connection {}: {} bytes received beyond the frames sent",
                conn.index,
                conn.rbuf.len() - conn.rpos
            ));
        }
        conn.rbuf.clear();
        conn.rpos = 0;
        Ok(())
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(tcp)
}

/// What one thread measured.
struct Outcome {
    frames: u64,
    rtts: Samples,
}

/// Drives the connections with the given indices until the deadline, or until another thread
/// fails.
fn drive<C: Codec + Clone>(
    opts: &Opts,
    addr: SocketAddr,
    codec: C,
    indices: Vec<usize>,
    max_samples: usize,
    start: &Barrier,
    failed: &AtomicBool,
) -> Result<Outcome, String> {
    let connected: Result<Vec<Conn<C>>, String> = indices
        .iter()
        .map(|&index| {
            let tcp = connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            Ok(Conn {
                index,
                tcp,
                codec: codec.clone(),
                rbuf: Vec::new(),
                rpos: 0,
                next_send: 0,
                next_recv: 0,
                sent_at: Instant::now(),
            })
        })
        .collect();
    // Every thread reaches the barrier, connected or not, so none waits forever.
    start.wait();
    let mut conns = connected.inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
    let deadline = Instant::now() + Duration::from_secs_f64(opts.secs);

    let mut worker = Worker {
        size: opts.size,
        depth: opts.depth,
        wbuf: Vec::new(),
        payload: Vec::with_capacity(opts.size),
        expected: Vec::with_capacity(opts.size),
        chunk: vec![0; READ_CHUNK],
        rtts: Samples::new(max_samples),
    };
    let result = (|| {
        while Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
            for conn in &mut conns {
                worker.send_batch(conn)?;
            }
            for conn in &mut conns {
                worker.recv_batch(conn)?;
            }
        }
        Ok(())
    })();
    if result.is_err() {
        failed.store(true, Ordering::Relaxed);
    }
    result.map(|()| Outcome {
        frames: conns.iter().map(|c| c.next_recv).sum(),
        rtts: worker.rtts,
    })
}

fn run<C: Codec + Clone>(opts: &Opts, addr: SocketAddr, codec: C) -> Result<(), String> {
    let threads = opts.conns.min(MAX_THREADS);
    let start = Barrier::new(threads + 1);
    let failed = AtomicBool::new(false);

    let (outcomes, elapsed) = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                // Connections t, t + threads, t + 2 * threads, ...
                let indices: Vec<usize> = (t..opts.conns).step_by(threads).collect();
                let codec = codec.clone();
                let (start, failed) = (&start, &failed);
                thread::Builder::new()
                    .name(format!("loadgen-{t}"))
                    .spawn_scoped(scope, move || {
                        drive(
                            opts,
                            addr,
                            codec,
                            indices,
                            MAX_SAMPLES / threads,
                            start,
                            failed,
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        start.wait();
        let began = Instant::now();
        let outcomes: Vec<Result<Outcome, String>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect();
        Ok::<_, String>((outcomes, began.elapsed()))
    })?;

    // Report the first error; the others are usually its consequence.
    let mut frames = 0;
    let mut max = 0;
    let mut rtts = Vec::new();
    for outcome in outcomes {
        let outcome = outcome?;
        frames += outcome.frames;
        max = max.max(outcome.rtts.max);
        let weight = outcome.rtts.stride;
        rtts.extend(outcome.rtts.rtts.into_iter().map(|rtt| (rtt, weight)));
    }
    report(opts, frames, elapsed, rtts, max);
    Ok(())
}

/// Nearest-rank percentiles of weighted samples `(value, weight)`, which it sorts.
fn percentiles(samples: &mut [(u32, u64)], qs: &[f64]) -> Vec<u32> {
    samples.sort_unstable();
    let total: u64 = samples.iter().map(|&(_, w)| w).sum();
    qs.iter()
        .map(|&q| {
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total.max(1));
            let mut seen = 0;
            samples
                .iter()
                .find(|&&(_, w)| {
                    seen += w;
                    seen >= rank
                })
                .map_or(0, |&(v, _)| v)
        })
        .collect()
}

fn report(opts: &Opts, frames: u64, elapsed: Duration, mut rtts: Vec<(u32, u64)>, max: u32) {
    let us = |ns: u32| f64::from(ns) / 1000.0;
    let p = percentiles(&mut rtts, &[0.50, 0.99, 0.999]);
    let (p50, p99, p999, max) = (us(p[0]), us(p[1]), us(p[2]), us(max));
    let secs = elapsed.as_secs_f64();
    let fps = frames as f64 / secs;
    let mib = fps * opts.size as f64 / (1024.0 * 1024.0);
    let saturated = if max == us(u32::MAX) {
        " (or more)"
    } else {
        ""
    };

    println!(
        "{} framing={} conns={} depth={} size={} secs={:.2}",
        opts.addr,
        opts.framing.name(),
        opts.conns,
        opts.depth,
        opts.size,
        secs
    );
    println!(
        "throughput: {frames} frames in {secs:.2} s = {fps:.0} frames/s ({mib:.1} MiB/s of \
         payload each way)"
    );
    println!(
        "latency: p50 {p50:.1} us, p99 {p99:.1} us, p99.9 {p999:.1} us, max {max:.1} us{saturated}"
    );
    println!(
        "conns={} depth={} size={} frames={frames} fps={fps:.0} p50={p50:.1}us p99={p99:.1}us \
         p999={p999:.1}us max={max:.1}us",
        opts.conns, opts.depth, opts.size
    );
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("error: {err}\n(run with --help for usage)");
            return ExitCode::from(2);
        }
    };
    let addr = match opts.addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            eprintln!("error: --addr {:?} resolves to nothing", opts.addr);
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("error: --addr {:?}: {err}", opts.addr);
            return ExitCode::from(2);
        }
    };
    let result = match opts.framing {
        Framing::Simple => run(&opts, addr, SimpleFrame),
        Framing::U32 => run(&opts, addr, LengthPrefixed::default()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_differ_by_connection_and_sequence() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        fill_payload(&mut a, 0, 7, 64);
        fill_payload(&mut b, 0, 7, 64);
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(a[..8], 7u64.to_le_bytes());
        fill_payload(&mut b, 1, 7, 64);
        assert_ne!(a, b);
        fill_payload(&mut b, 0, 8, 64);
        assert_ne!(a, b);
        fill_payload(&mut a, 0, 1, 3);
        assert_eq!(a, [1, 0, 0]);
        fill_payload(&mut a, 0, 1, 0);
        assert!(a.is_empty());
    }

    #[test]
    fn samples_thin_out_evenly() {
        let mut s = Samples::new(8);
        for i in 0..100u64 {
            s.record(Duration::from_nanos(i));
        }
        // Cap 8 reached at frame 8 (stride 2), 16 (stride 4), 32 (stride 8), 64 (stride 16).
        assert_eq!(s.stride, 16);
        assert_eq!(s.rtts, [0, 16, 32, 48, 64, 80, 96]);
        assert_eq!(s.max, 99);
    }

    #[test]
    fn weighted_percentiles() {
        let mut v: Vec<(u32, u64)> = (1..=1000).map(|x| (x, 1)).collect();
        assert_eq!(
            percentiles(&mut v, &[0.5, 0.99, 0.999, 1.0]),
            [500, 990, 999, 1000]
        );
        // One sample standing for 9 frames outweighs the other.
        let mut v = vec![(5, 1), (1, 9)];
        assert_eq!(percentiles(&mut v, &[0.5, 0.9, 0.91]), [1, 1, 5]);
        assert_eq!(percentiles(&mut [], &[0.5]), [0]);
    }

    #[test]
    fn round_trip_through_both_codecs() {
        fn check<C: Codec>(mut codec: C) {
            let mut wire = Vec::new();
            let mut payload = Vec::new();
            for seq in 0..3 {
                fill_payload(&mut payload, 5, seq, 100);
                codec.encode(&payload, &mut wire).unwrap();
            }
            let mut pos = 0;
            for seq in 0..3 {
                let d = codec.decode(&wire[pos..]).unwrap().unwrap();
                fill_payload(&mut payload, 5, seq, 100);
                assert_eq!(&wire[pos..][d.payload], payload.as_slice());
                pos += d.consumed;
            }
            assert_eq!(pos, wire.len());
        }
        check(SimpleFrame);
        check(LengthPrefixed::default());
    }
}
