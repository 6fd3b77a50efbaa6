//! The load generator behind the `fanout_load` binary: a chat room against a server that relays
//! every frame a client sends to every *other* connected client (`hydrogen_chat`, `tokio_chat`).
//!
//! The room has `receivers + senders` members, all connected before any frame is sent (then
//! [`SETTLE`] for the server to take them in). Connections `0..senders` are the senders; each
//! sends `rate` frames per second, open loop: frame `k` of a sender is due at `origin + k /
//! rate`, an absolute deadline, so that pacing does not drift; a sender that finds several
//! frames due (it fell behind) sends them all at once, and how late the first of them was is
//! recorded (`behind_max_ms`). The senders' origins are spread over one period so that they do
//! not all send at the same instant. Every member, senders included, reads what it is sent.
//!
//! A frame is `u32` length-prefixed; its payload (`payload` bytes, at least [`HEADER`]) is the
//! sender's index (u32 BE), its sequence number (u64 BE), the time it was written in nanoseconds
//! of `CLOCK_MONOTONIC` (u64 BE; the same clock in every process, so comparable with the
//! receiver's), a magic, and a filler pattern that depends on the sender and the sequence
//! number. Every connection checks every frame it receives, byte for byte, and per sender:
//!
//! - sequence numbers must increase: a gap counts the frames skipped as lost; a repeat or a
//!   number going backwards is an error, and so is a frame from the connection itself, a
//!   malformed frame, or a connection the server closes;
//! - the delivery latency (receive time − send time) goes into an HDR histogram.
//!
//! The phases: warm-up (senders already sending), then `MEASURE_START` on stdout (histograms and
//! counters are reset), the window, `MEASURE_END`, then a drain of at most [`DRAIN`]: the
//! senders stop, and every connection waits for the last frame of every other sender. Frames
//! still missing at the end of the drain are reported as `undelivered` (they may still be queued
//! in the server); frames skipped (a gap) from the opening of the window to the end of the drain
//! as `lost`. Deliveries and latencies count in the window only. Then one `RESULT key=value ...`
//! line. A connection that receives nothing for [`STALL`] while other members send ends the run
//! with an error.
//!
//! Event-driven with `mio` on `threads` threads, each owning one `Poll` (edge-triggered) and the
//! connections `i` with `i % threads` equal to its number.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::{CommandFactory, Parser};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use nix::time::{ClockId, clock_gettime};
use socket2::SockRef;

use crate::cli;
use crate::load::{
    connect_all, new_histogram, poll_once, print_line, quantiles, raise_nofile_limit, resolve, secs,
};
use crate::server_cli::{Framing, U32_MAX_FRAME};

const NAME: &str = "fanout_load";

/// The payload starts with: sender index (u32 BE), sequence number (u64 BE), send time (u64
/// BE, nanoseconds of `CLOCK_MONOTONIC`), magic.
pub const HEADER: usize = 24;
const MAGIC: [u8; 4] = *b"HyFo";
/// The filler after the header is a window into a fixed pseudo-random pattern, starting at an
/// offset that depends on the sender and the sequence number, in `0..PATTERN_PERIOD`.
const PATTERN_PERIOD: usize = 251;

const MAX_CONNS: u64 = 100_000;
const MAX_SENDERS: u64 = 10_000;
const MAX_THREADS: u64 = 64;
const MAX_SECS: f64 = 3600.0;
const MAX_RATE: f64 = 1_000_000.0;

/// After every connection is open, before the first frame: time for the server to take the
/// members in.
pub const SETTLE: Duration = Duration::from_millis(200);
/// A connection that receives nothing for this long while other members send is an error.
pub const STALL: Duration = Duration::from_secs(10);
/// After the window: how long the connections wait for the senders' last frames.
pub const DRAIN: Duration = Duration::from_secs(3);
/// Poll timeout when nothing is due sooner: how often the workers look at the phase.
const TICK: Duration = Duration::from_millis(20);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per readiness event before a connection yields to the others in its thread.
const READ_BUDGET: usize = 16;

/// The command line of `fanout_load`; [`parse_args`] checks it and makes it [`Options`].
#[derive(Debug, Clone, Parser)]
#[command(
    // A flag given twice: the last one counts, as in the other binaries.
    args_override_self = true,
    name = NAME,
    about = "Drives a chat server (every frame relayed to every other member): RECEIVERS + \
             SENDERS members, each sender open-loop at RATE frames/s; every member checks the \
             order per sender and records delivery latency. Prints MEASURE_START and \
             MEASURE_END around the measured window, then one RESULT line."
)]
struct FanoutCli {
    /// Server address
    #[arg(long, value_name = "HOST:PORT", value_parser = resolve)]
    addr: SocketAddr,
    /// Members that only receive
    #[arg(long, value_name = "R", default_value_t = 100,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=MAX_CONNS))]
    receivers: usize,
    /// Members that send (and receive the other senders' frames)
    #[arg(long, value_name = "S", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_SENDERS))]
    senders: usize,
    /// Frames per second per sender, fractions allowed
    #[arg(long, value_name = "F", default_value_t = 100.0, value_parser = rate)]
    rate: f64,
    /// Payload bytes per frame, at least 24
    #[arg(long, value_name = "BYTES", default_value_t = 64,
          value_parser = RangedU64ValueParser::<usize>::new()
              .range(HEADER as u64..=U32_MAX_FRAME as u64))]
    payload: usize,
    /// Measured window in seconds, fractions allowed
    #[arg(long, value_name = "S", default_value_t = 5.0, value_parser = cli::secs(0.001, MAX_SECS))]
    secs: f64,
    /// Seconds of sending before the window opens
    #[arg(long, value_name = "W", default_value_t = 1.0, value_parser = cli::secs(0.0, MAX_SECS))]
    warmup: f64,
    /// Generator threads
    #[arg(long, value_name = "T", default_value_t = 2,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_THREADS))]
    threads: usize,
}

/// `--rate`: frames per second, from 1 to [`MAX_RATE`].
fn rate(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(r) if (1.0..=MAX_RATE).contains(&r) => Ok(r),
        _ => Err(format!("expected frames per second from 1 to {MAX_RATE}")),
    }
}

/// The options of `fanout_load`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Server address.
    pub addr: SocketAddr,
    /// Members that only receive.
    pub receivers: usize,
    /// Members that send too.
    pub senders: usize,
    /// Frames per second per sender.
    pub rate: f64,
    /// Payload bytes per frame.
    pub payload: usize,
    /// Measured window, seconds.
    pub secs: f64,
    /// Warm-up before the window, seconds.
    pub warmup: f64,
    /// Generator threads.
    pub threads: usize,
}

impl Options {
    /// Members of the room.
    pub fn members(&self) -> usize {
        self.receivers + self.senders
    }
}

/// Parses the command line, program name first. `--help` comes back as an error of kind
/// [`DisplayHelp`](clap::error::ErrorKind::DisplayHelp): [`clap::Error::exit`] prints either.
pub fn parse_args<I, T>(args: I) -> Result<Options, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let c = FanoutCli::try_parse_from(args)?;
    let opts = Options {
        addr: c.addr,
        receivers: c.receivers,
        senders: c.senders,
        rate: c.rate,
        payload: c.payload,
        secs: c.secs,
        warmup: c.warmup,
        threads: c.threads,
    };
    let invalid =
        |e: String| FanoutCli::command().error(clap::error::ErrorKind::ValueValidation, e);
    if opts.members() < 2 {
        return Err(invalid(
            "a room needs at least two members (--receivers + --senders)".into(),
        ));
    }
    if opts.members() as u64 > MAX_CONNS {
        return Err(invalid(format!(
            "--receivers + --senders exceeds {MAX_CONNS}"
        )));
    }
    Ok(opts)
}

/// Now, in nanoseconds of `CLOCK_MONOTONIC`.
fn now_ns() -> u64 {
    // CLOCK_MONOTONIC is always there on Linux.
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// What the header of a received frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    sender: u32,
    seq: u64,
    sent_ns: u64,
}

/// Builds and checks the frames.
struct Payloads {
    size: usize,
    senders: u32,
    /// `size - HEADER + PATTERN_PERIOD` pseudo-random bytes.
    pattern: Vec<u8>,
}

impl Payloads {
    fn new(size: usize, senders: usize) -> Payloads {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let pattern = (0..size - HEADER + PATTERN_PERIOD)
            .map(|_| {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        Payloads {
            size,
            senders: u32::try_from(senders).expect("senders fit in u32"),
            pattern,
        }
    }

    fn filler(&self, sender: u32, seq: u64) -> &[u8] {
        let start =
            ((seq % PATTERN_PERIOD as u64) as usize + sender as usize * 31) % PATTERN_PERIOD;
        &self.pattern[start..start + self.size - HEADER]
    }

    /// Appends the whole frame (u32 prefix and payload) `seq` of `sender`, stamped `sent_ns`.
    fn encode(&self, sender: u32, seq: u64, sent_ns: u64, out: &mut Vec<u8>) {
        out.reserve(4 + self.size);
        out.extend_from_slice(&(self.size as u32).to_be_bytes());
        out.extend_from_slice(&sender.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&sent_ns.to_be_bytes());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(self.filler(sender, seq));
    }

    /// Checks a received payload: its size, magic, sender and filler. Returns its header.
    fn check(&self, p: &[u8]) -> Result<Stamp, String> {
        if p.len() != self.size {
            return Err(format!(
                "a frame of {} payload bytes, expected {}",
                p.len(),
                self.size
            ));
        }
        let stamp = Stamp {
            sender: u32::from_be_bytes(p[0..4].try_into().expect("4 bytes")),
            seq: u64::from_be_bytes(p[4..12].try_into().expect("8 bytes")),
            sent_ns: u64::from_be_bytes(p[12..20].try_into().expect("8 bytes")),
        };
        if p[20..24] != MAGIC {
            return Err(format!("a frame with a bad magic {:02x?}", &p[20..24]));
        }
        if stamp.sender >= self.senders {
            return Err(format!(
                "a frame from sender {}, but there are {} senders",
                stamp.sender, self.senders
            ));
        }
        let filler = self.filler(stamp.sender, stamp.seq);
        if p[HEADER..] != *filler {
            let at = p[HEADER..]
                .iter()
                .zip(filler)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "frame {} of sender {} differs at payload byte {}: expected 0x{:02x}, got 0x{:02x}",
                stamp.seq,
                stamp.sender,
                HEADER + at,
                filler[at],
                p[HEADER + at]
            ));
        }
        Ok(stamp)
    }
}

/// Takes in sequence number `seq` of a sender whose next expected one is `*next`: returns how
/// many were skipped (lost), or an error for a repeat or a number going backwards.
fn advance(next: &mut u64, seq: u64) -> Result<u64, String> {
    if seq < *next {
        let last = *next - 1;
        let what = if seq == last {
            "a repeat"
        } else {
            "out of order"
        };
        return Err(format!("frame {seq} after frame {last}: {what}"));
    }
    let skipped = seq - *next;
    *next = seq + 1;
    Ok(skipped)
}

/// A sender's side of a member: its pacing and the bytes not yet written.
struct Outbox {
    /// Its sender index.
    sender: u32,
    /// The next sequence number.
    seq: u64,
    /// When frame 0 was due, ns.
    origin_ns: u64,
    /// Nanoseconds between two frames.
    period_ns: f64,
    wbuf: Vec<u8>,
    wpos: usize,
}

impl Outbox {
    /// When frame `seq` is due, ns.
    fn deadline(&self, seq: u64) -> u64 {
        self.origin_ns + (seq as f64 * self.period_ns) as u64
    }
}

/// One member of the room.
struct Member {
    stream: TcpStream,
    /// Connection index (the senders first).
    index: usize,
    /// The sending side, for a sender.
    out: Option<Outbox>,
    /// The next sequence number expected from each sender.
    next: Vec<u64>,
    /// Received bytes not yet forming a whole frame.
    rbuf: Vec<u8>,
    /// When it last received a frame (or sending began), ns.
    last_rx_ns: u64,
    /// Whether it is in the worker's list of connections to read again.
    queued: bool,
}

/// Counters of one worker, or of all of them merged.
struct Tally {
    /// Delivery latencies in the window, ns.
    hist: Histogram<u64>,
    /// Frames received in the window, by all connections.
    deliveries: u64,
    /// Frames sent in the window.
    sent: u64,
    /// Frames skipped, from the opening of the window to the end of the drain.
    lost: u64,
    /// Frames still missing at the end of the drain.
    undelivered: u64,
    /// How late a frame was sent after its deadline at most, in the window, ns.
    behind_max_ns: u64,
    /// The connections, closed only once every worker is done.
    members: Vec<Member>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: new_histogram(),
            deliveries: 0,
            sent: 0,
            lost: 0,
            undelivered: 0,
            behind_max_ns: 0,
            members: Vec::new(),
        }
    }

    /// Zeroes the counters the window counts.
    fn reset(&mut self) {
        self.hist.reset();
        self.deliveries = 0;
        self.sent = 0;
        self.lost = 0;
        self.behind_max_ns = 0;
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const DRAINING: u8 = 2;
const STOP: u8 = 3;

/// Not yet published in [`Shared::finals`].
const UNPUBLISHED: u64 = u64::MAX;

/// State shared by the main thread and the workers.
struct Shared {
    phase: AtomicU8,
    /// Set by a worker that fails, so that everything stops early.
    failed: AtomicBool,
    /// Per sender, once the drain starts: how many frames it sent in all.
    finals: Vec<AtomicU64>,
}

impl Member {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> String {
        format!("connection {}: {what}: {e}", self.index)
    }

    /// Whether any other member sends to it.
    fn expects_frames(&self, senders: usize) -> bool {
        senders > 1 || self.out.is_none()
    }

    /// Writes as much of the outbox as the socket takes.
    fn flush(&mut self) -> Result<(), String> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        while out.wpos < out.wbuf.len() {
            match self.stream.write(&out.wbuf[out.wpos..]) {
                Ok(0) => {
                    return Err(format!(
                        "connection {}: write accepted no bytes",
                        self.index
                    ));
                }
                Ok(n) => out.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(format!(
                        "connection {}: write failed (connection lost?): {e}",
                        self.index
                    ));
                }
            }
        }
        out.wbuf.clear();
        out.wpos = 0;
        Ok(())
    }

    /// Whether everything it has to write is written.
    fn flushed(&self) -> bool {
        self.out.as_ref().is_none_or(|o| o.wpos == o.wbuf.len())
    }

    /// Frames of the other senders it has not received, once all the finals are published.
    fn missing(&self, finals: &[AtomicU64]) -> u64 {
        let own = self.out.as_ref().map(|o| o.sender as usize);
        (0..finals.len())
            .filter(|&s| Some(s) != own)
            .map(|s| {
                let last = finals[s].load(Ordering::Acquire);
                if last == UNPUBLISHED {
                    1
                } else {
                    last.saturating_sub(self.next[s])
                }
            })
            .sum()
    }

    /// Takes in received bytes, checking every whole frame (see [`Worker::frame`]).
    fn consume(&mut self, data: &[u8], w: &mut Worker, now_ns: u64) -> Result<(), String> {
        if self.rbuf.is_empty() {
            let used = self.frames(data, w, now_ns)?;
            self.rbuf.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.extend_from_slice(data);
            let used = self.frames(&buf, w, now_ns)?;
            buf.drain(..used);
            self.rbuf = buf;
        }
        Ok(())
    }

    /// Checks every whole frame at the start of `buf`; returns the bytes they take.
    fn frames(&mut self, buf: &[u8], w: &mut Worker, now_ns: u64) -> Result<usize, String> {
        let mut pos = 0;
        while let Some((payload, len)) = w
            .framing
            .decode(&buf[pos..])
            .map_err(|e| self.err("malformed frame", e))?
        {
            let stamp = w
                .payloads
                .check(&buf[pos..][payload])
                .map_err(|e| self.err("received", e))?;
            let own = self.out.as_ref().map(|o| o.sender);
            if own == Some(stamp.sender) {
                return Err(self.err(
                    "received its own frame",
                    format!(
                        "sequence {} (the server must relay to the others only)",
                        stamp.seq
                    ),
                ));
            }
            let skipped = advance(&mut self.next[stamp.sender as usize], stamp.seq)
                .map_err(|e| format!("connection {}: sender {}: {e}", self.index, stamp.sender))?;
            if w.counting_lost {
                w.tally.lost += skipped;
            }
            if w.measuring {
                w.tally.deliveries += 1;
                w.tally
                    .hist
                    .saturating_record(now_ns.saturating_sub(stamp.sent_ns).max(1));
            }
            pos += len;
        }
        self.last_rx_ns = now_ns;
        Ok(pos)
    }

    /// Up to [`READ_BUDGET`] reads. Returns whether the socket has been read dry.
    fn read_some(&mut self, buf: &mut [u8], w: &mut Worker) -> Result<bool, String> {
        for _ in 0..READ_BUDGET {
            match self.stream.read(buf) {
                Ok(0) => return Err(self.err("closed by the server", "end of stream")),
                Ok(n) => {
                    self.consume(&buf[..n], w, now_ns())?;
                    // A short read on a stream socket means its buffer is empty: with
                    // edge-triggered epoll, more data will bring a new event (epoll(7)).
                    if n < buf.len() {
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err("read failed (connection lost?)", e)),
            }
        }
        Ok(false)
    }

    /// Sends the frames that are due; returns how many, and how late the first was, ns.
    fn pace(&mut self, payloads: &Payloads, now_ns: u64) -> Result<(u64, u64), String> {
        let Some(out) = self.out.as_mut() else {
            return Ok((0, 0));
        };
        let first = out.deadline(out.seq);
        let mut n = 0;
        while out.deadline(out.seq) <= now_ns {
            payloads.encode(out.sender, out.seq, now_ns, &mut out.wbuf);
            out.seq += 1;
            n += 1;
        }
        if n == 0 {
            return Ok((0, 0));
        }
        self.flush()?;
        Ok((n, now_ns - first))
    }

    /// Sets `SO_LINGER` 0, so that closing resets the connection and leaves no `TIME_WAIT`.
    fn set_abortive_close(&self) {
        let _ = SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

/// What a worker thread uses while handling frames.
struct Worker {
    framing: Framing,
    payloads: Payloads,
    tally: Tally,
    measuring: bool,
    counting_lost: bool,
}

fn worker(
    share: Vec<(usize, std::net::TcpStream)>,
    opts: &Options,
    shared: &Shared,
    start_ns: u64,
) -> Result<Tally, String> {
    let mut poll = Poll::new().map_err(|e| format!("creating a poll: {e}"))?;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_CHUNK];
    let period_ns = 1e9 / opts.rate;
    let mut members = Vec::with_capacity(share.len());
    for (tok, (index, s)) in share.into_iter().enumerate() {
        let mut stream = TcpStream::from_std(s);
        let out = (index < opts.senders).then(|| Outbox {
            sender: index as u32,
            seq: 0,
            // Spread the senders over one period.
            origin_ns: start_ns + (period_ns * index as f64 / opts.senders as f64) as u64,
            period_ns,
            wbuf: Vec::new(),
            wpos: 0,
        });
        let interest = if out.is_some() {
            stream
                .set_nodelay(true)
                .map_err(|e| format!("connection {index}: TCP_NODELAY: {e}"))?;
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .register(&mut stream, Token(tok), interest)
            .map_err(|e| format!("registering a socket: {e}"))?;
        members.push(Member {
            stream,
            index,
            out,
            next: vec![0; opts.senders],
            rbuf: Vec::new(),
            last_rx_ns: start_ns,
            queued: false,
        });
    }
    let senders: Vec<usize> = (0..members.len())
        .filter(|&t| members[t].out.is_some())
        .collect();
    let mut w = Worker {
        framing: Framing::U32 { max: opts.payload },
        payloads: Payloads::new(opts.payload, opts.senders),
        tally: Tally::new(),
        measuring: false,
        counting_lost: false,
    };
    // Connections that used up their read budget and must be read again without an event.
    let mut ready: Vec<usize> = Vec::new();
    let mut drain_start: Option<Instant> = None;
    let mut last_check_ns = start_ns;
    loop {
        if shared.failed.load(Ordering::Relaxed) {
            break;
        }
        match shared.phase.load(Ordering::Acquire) {
            MEASURE if !w.measuring => {
                w.tally.reset();
                w.measuring = true;
                w.counting_lost = true;
            }
            DRAINING if drain_start.is_none() => {
                w.measuring = false;
                drain_start = Some(Instant::now());
                for m in &members {
                    if let Some(out) = &m.out {
                        shared.finals[out.sender as usize].store(out.seq, Ordering::Release);
                    }
                }
            }
            STOP => break,
            _ => {}
        }
        if let Some(t0) = drain_start {
            let done = members
                .iter()
                .all(|m| m.flushed() && m.missing(&shared.finals) == 0);
            if done || t0.elapsed() >= DRAIN {
                break;
            }
        }

        // Send what is due, and work out how long to wait for the next.
        let now = now_ns();
        let mut timeout = TICK;
        if drain_start.is_none() {
            for &tok in &senders {
                let m = &mut members[tok];
                let (n, behind) = m.pace(&w.payloads, now)?;
                if w.measuring {
                    w.tally.sent += n;
                    if n > 0 {
                        w.tally.behind_max_ns = w.tally.behind_max_ns.max(behind);
                    }
                }
                if let Some(out) = &m.out {
                    let next = out.deadline(out.seq);
                    timeout = timeout.min(Duration::from_nanos(next.saturating_sub(now)));
                }
            }
        }
        if !ready.is_empty() {
            timeout = Duration::ZERO;
        }
        poll_once(&mut poll, &mut events, timeout)?;
        for ev in events.iter() {
            let tok = ev.token().0;
            let m = &mut members[tok];
            if ev.is_error() {
                let e = m
                    .stream
                    .take_error()
                    .ok()
                    .flatten()
                    .map_or("socket error".to_string(), |e| e.to_string());
                return Err(m.err("connection lost", e));
            }
            if ev.is_writable() {
                m.flush()?;
            }
            if (ev.is_readable() || ev.is_read_closed()) && !m.queued {
                m.queued = true;
                ready.push(tok);
            }
        }
        let mut i = 0;
        while i < ready.len() {
            let m = &mut members[ready[i]];
            if m.read_some(&mut buf, &mut w)? {
                m.queued = false;
                ready.swap_remove(i);
            } else {
                i += 1;
            }
        }

        // Stalls, once a second, until the drain.
        let now = now_ns();
        if drain_start.is_none() && now - last_check_ns >= 1_000_000_000 {
            last_check_ns = now;
            for m in &members {
                let quiet = now.saturating_sub(m.last_rx_ns);
                if m.expects_frames(opts.senders) && quiet > STALL.as_nanos() as u64 {
                    return Err(format!(
                        "connection {}: nothing received for {:.1} s while other members send",
                        m.index,
                        quiet as f64 / 1e9
                    ));
                }
            }
        }
    }
    w.tally.undelivered = members.iter().map(|m| m.missing(&shared.finals)).sum();
    for m in &members {
        m.set_abortive_close();
    }
    w.tally.members = members;
    Ok(w.tally)
}

/// Sleeps until `deadline`, in short steps, returning early (false) if a worker failed.
fn sleep_until(deadline: Instant, shared: &Shared) -> bool {
    loop {
        if shared.failed.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        thread::sleep((deadline - now).min(Duration::from_millis(10)));
    }
}

/// Runs the room as the options say, printing the markers and the `RESULT` line on stdout.
///
/// # Errors
///
/// A description of the first failure: a malformed, repeated or out-of-order frame, a frame
/// relayed back to its sender, a lost connection, a stall, or a connection that could not be
/// opened.
pub fn run(opts: &Options) -> Result<(), String> {
    let conns = opts.members();
    raise_nofile_limit(NAME, conns)?;
    let (streams, retries) = connect_all(opts.addr, conns)?;
    thread::sleep(SETTLE);
    let threads = opts.threads.min(conns);
    // Connection i goes to thread i % threads.
    let mut shares: Vec<Vec<(usize, std::net::TcpStream)>> =
        (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in streams.into_iter().enumerate() {
        shares[i % threads].push((i, s));
    }
    let shares: Vec<_> = shares.into_iter().map(Mutex::new).collect();
    let shared = Shared {
        phase: AtomicU8::new(WARMUP),
        failed: AtomicBool::new(false),
        finals: (0..opts.senders)
            .map(|_| AtomicU64::new(UNPUBLISHED))
            .collect(),
    };
    let start_ns = now_ns();
    let (results, window) = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (shared, shares) = (&shared, &shares);
                thread::Builder::new()
                    .name(format!("fanout-{t}"))
                    .spawn_scoped(scope, move || {
                        let share = std::mem::take(&mut *shares[t].lock().expect("share lock"));
                        let r = worker(share, opts, shared, start_ns);
                        if r.is_err() {
                            shared.failed.store(true, Ordering::Relaxed);
                        }
                        r
                    })
                    .expect("spawning a worker thread")
            })
            .collect();
        let mut window = 0.0;
        if sleep_until(Instant::now() + secs(opts.warmup), &shared) {
            shared.phase.store(MEASURE, Ordering::Release);
            let t0 = Instant::now();
            print_line("MEASURE_START");
            let completed = sleep_until(t0 + secs(opts.secs), &shared);
            shared.phase.store(DRAINING, Ordering::Release);
            window = t0.elapsed().as_secs_f64();
            if completed {
                print_line("MEASURE_END");
            }
        } else {
            shared.phase.store(STOP, Ordering::Release);
        }
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a worker thread panicked".to_string()))
            })
            .collect();
        (results, window)
    });
    let mut total = Tally::new();
    // Dropped (closing every connection) only once all the workers are done.
    let mut members = Vec::new();
    for r in results {
        let t = r?;
        total
            .hist
            .add(&t.hist)
            .map_err(|e| format!("merging histograms: {e:?}"))?;
        total.deliveries += t.deliveries;
        total.sent += t.sent;
        total.lost += t.lost;
        total.undelivered += t.undelivered;
        total.behind_max_ns = total.behind_max_ns.max(t.behind_max_ns);
        members.extend(t.members);
    }
    drop(members);
    if total.deliveries == 0 {
        return Err("no frame delivered during the measured window".to_string());
    }
    let fanout = (conns - 1) as f64;
    let offered = total.sent as f64 * fanout / window;
    let dps = total.deliveries as f64 / window;
    print_line(&format!(
        "RESULT mode=fanout receivers={} senders={} rate={} payload={} secs={:.2} sent={} \
         offered_dps={:.1} deliveries={} dps={:.1} {} lost={} undelivered={} \
         behind_max_ms={:.3} retries={} errors=0",
        opts.receivers,
        opts.senders,
        opts.rate,
        opts.payload,
        window,
        total.sent,
        offered,
        total.deliveries,
        dps,
        quantiles(&total.hist),
        total.lost,
        total.undelivered,
        total.behind_max_ns as f64 / 1e6,
        retries,
    ));
    eprintln!(
        "{NAME}: {} receivers + {} senders at {}/s: {:.0} deliveries/s of {:.0} offered, \
         latency p50 {:.0} µs p99 {:.0} µs max {:.0} µs, lost {}, undelivered {}, pacing \
         behind at most {:.1} ms",
        opts.receivers,
        opts.senders,
        opts.rate,
        dps,
        offered,
        total.hist.value_at_quantile(0.5) as f64 / 1e3,
        total.hist.value_at_quantile(0.99) as f64 / 1e3,
        total.hist.max() as f64 / 1e3,
        total.lost,
        total.undelivered,
        total.behind_max_ns as f64 / 1e6
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_detect_changes() {
        let p = Payloads::new(64, 3);
        let mut wire = Vec::new();
        p.encode(2, 17, 123_456_789, &mut wire);
        assert_eq!(wire.len(), 4 + 64);
        assert_eq!(wire[..4], 64u32.to_be_bytes());
        let payload = &wire[4..];
        let stamp = p.check(payload).unwrap();
        assert_eq!(
            stamp,
            Stamp {
                sender: 2,
                seq: 17,
                sent_ns: 123_456_789
            }
        );
        let mut bad = payload.to_vec();
        bad[40] ^= 1;
        assert!(p.check(&bad).unwrap_err().contains("byte 40"));
        let mut bad = payload.to_vec();
        bad[4..12].copy_from_slice(&18u64.to_be_bytes());
        assert!(p.check(&bad).is_err(), "the filler depends on the sequence");
        let mut other = Vec::new();
        p.encode(3 - 1, 17, 0, &mut other);
        assert!(
            Payloads::new(64, 2).check(&other[4..]).is_err(),
            "sender 2 of 2"
        );
        assert!(p.check(&payload[..63]).is_err());
        let mut bad = payload.to_vec();
        bad[20] = b'x';
        assert!(p.check(&bad).unwrap_err().contains("magic"));
        // The smallest payload is the header alone.
        let p = Payloads::new(HEADER, 1);
        let mut wire = Vec::new();
        p.encode(0, 0, 1, &mut wire);
        assert_eq!(p.check(&wire[4..]).unwrap().sent_ns, 1);
    }

    #[test]
    fn sequences_count_gaps_and_refuse_repeats() {
        let mut next = 0;
        assert_eq!(advance(&mut next, 0), Ok(0));
        assert_eq!(advance(&mut next, 1), Ok(0));
        assert_eq!(advance(&mut next, 5), Ok(3));
        assert_eq!(next, 6);
        assert_eq!(
            advance(&mut next, 5),
            Err("frame 5 after frame 5: a repeat".into())
        );
        assert_eq!(
            advance(&mut next, 2),
            Err("frame 2 after frame 5: out of order".into())
        );
        assert_eq!(next, 6);
        // A member that joined late sees its first frame of a sender after a gap.
        let mut next = 0;
        assert_eq!(advance(&mut next, 40), Ok(40));
    }

    #[test]
    fn deadlines_are_absolute() {
        let out = Outbox {
            sender: 0,
            seq: 0,
            origin_ns: 1_000,
            period_ns: 1e9 / 3.0,
            wbuf: Vec::new(),
            wpos: 0,
        };
        assert_eq!(out.deadline(0), 1_000);
        assert_eq!(out.deadline(3), 1_000 + 1_000_000_000);
        assert_eq!(out.deadline(3_000_000), 1_000 + 1_000_000_000_000_000);
    }

    #[test]
    fn clock_is_monotonic_ns() {
        let a = now_ns();
        thread::sleep(Duration::from_millis(2));
        let b = now_ns();
        assert!(b - a >= 2_000_000, "{a} {b}");
    }

    #[test]
    fn parses_options() {
        FanoutCli::command().debug_assert();
        let args = |s: &str| parse_args(std::iter::once(NAME).chain(s.split_whitespace()));
        let o = args("--addr 127.0.0.1:9").unwrap();
        assert_eq!(
            (o.receivers, o.senders, o.rate, o.payload),
            (100, 1, 100.0, 64)
        );
        assert_eq!((o.secs, o.warmup, o.threads), (5.0, 1.0, 2));
        let o = args(
            "--addr 127.0.0.1:9 --receivers 1000 --senders 4 --rate 200 --payload 24 \
             --secs 0.5 --warmup 0 --threads 3 --rate 250.5",
        )
        .unwrap();
        assert_eq!(
            (o.receivers, o.senders, o.rate, o.payload),
            (1000, 4, 250.5, 24)
        );
        assert_eq!(
            (o.secs, o.warmup, o.threads, o.members()),
            (0.5, 0.0, 3, 1004)
        );
        assert!(args("--addr 127.0.0.1:9 --receivers 0 --senders 2").is_ok());
        for bad in [
            "--receivers 10",
            "--addr 127.0.0.1:9 --receivers 0 --senders 1",
            "--addr 127.0.0.1:9 --senders 0",
            "--addr 127.0.0.1:9 --payload 23",
            "--addr 127.0.0.1:9 --payload 1048577",
            "--addr 127.0.0.1:9 --rate 0.5",
            "--addr 127.0.0.1:9 --rate 2000000",
            "--addr 127.0.0.1:9 --receivers 100000 --senders 1",
            "--addr 127.0.0.1:9 --threads 0",
            "--addr 127.0.0.1:9 --secs 0",
            "--addr 127.0.0.1:9 --bogus",
        ] {
            assert!(args(bad).is_err(), "{bad}");
        }
        let help = args("--help").unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
    }
}
