//! The load generator behind the `loadgen` binary.
//!
//! Three modes, all against an echo server on loopback:
//!
//! - **echo**: a closed loop. Every connection keeps `depth` frames in flight; each reply is
//!   verified byte for byte and in order, its round-trip time recorded, and a new frame sent in its
//!   place. Event-driven with `mio` on `threads` threads, each owning one `Poll` and a share of the
//!   connections.
//! - **idle**: opens the connections, checks each with one echoed frame, then holds them open with
//!   no traffic for the measured window, and checks them once more before closing.
//! - **churn**: `conns` concurrent loops of connect, send one frame, read and verify its echo,
//!   close. The client closes abortively (`SO_LINGER` 0) so that ephemeral ports do not pile up in
//!   `TIME_WAIT`.
//!
//! With `--proxy v1|v2` (churn only) every connection starts with a PROXY protocol header, as a
//! load balancer in front of the server would send it: [`proxy_header`], a v1 `TCP4` line or a
//! v2 `PROXY` header with IPv4 addresses and no TLVs, for a made-up client (203.0.113.x, a
//! documentation range, its port varying with the cycle) and destination (192.0.2.1:443). It
//! goes out in the same `write` as the cycle's frame, so the header costs the client no extra
//! system call; the server (hydrogen_echo `--proxy-protocol`) must strip it before the frame,
//! and a server that takes it for a frame fails the cycle.
//!
//! With `--tls-ca FILE` every connection speaks TLS: rustls's client (`ClientConnection`, see
//! [`crate::tls`]) over the same non-blocking sockets and the same mio loops, verifying the
//! server's certificate for `localhost` against FILE as the only root. The frames, their checks
//! and the timings are the same; a frame's round trip runs from its plaintext being queued, so
//! it includes the encryption and decryption at both ends (and, for the first frames of a
//! connection, the handshake). Churn's cycle is then connect, full handshake (no resumption),
//! one echo, close.
//!
//! Output on stdout, for the suite to parse: `MEASURE_START` when the measured window opens (after
//! the warm-up), `MEASURE_END` when it closes, then one `RESULT key=value ...` line. Any
//! verification failure, lost connection or stall is an error: [`run`] returns it and the binary
//! exits with status 1.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::{CommandFactory, Parser, ValueEnum};
use hdrhistogram::Histogram;
use hydrogen::codec::{Codec, Decoded, FrameError, LengthPrefixed, SimpleFrame};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::{ClientConfig, ClientConnection};
use socket2::SockRef;

use crate::cli;

const MAX_CONNS: usize = 100_000;
const MAX_DEPTH: usize = 4096;
const MAX_THREADS: usize = 64;
const MAX_SECS: f64 = 3600.0;
/// The payload starts with a header: connection index (u32 BE), sequence number (u64 BE), magic.
const HEADER: usize = 16;
const MAGIC: [u8; 4] = *b"HyLg";
/// The filler after the header is a window into a fixed pseudo-random pattern, starting at an
/// offset that depends on the connection and the sequence number, in `0..PATTERN_PERIOD`.
const PATTERN_PERIOD: usize = 251;
/// Bound on the bytes in flight over all connections (`conns * depth * size`).
const MAX_BYTES_IN_FLIGHT: usize = 1 << 30;

/// Connects in flight at once while opening connections.
const CONNECT_IN_FLIGHT: usize = 256;
/// Attempts per connection before giving up; a refused or timed-out connect is retried.
const CONNECT_ATTEMPTS: u32 = 5;
/// How long one connect attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on opening all the connections.
const CONNECT_DEADLINE: Duration = Duration::from_secs(60);
/// Bound on waiting for the check echo of every connection in idle mode.
const PING_DEADLINE: Duration = Duration::from_secs(30);
/// A frame without a reply for this long is a stall, reported as an error.
const STALL: Duration = Duration::from_secs(10);
/// Poll timeout: how often the workers look at the phase and the clock when idle.
const TICK: Duration = Duration::from_millis(20);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per readiness event before a connection yields to the others in its thread.
const READ_BUDGET: usize = 16;
/// TLS records read from the socket in one [`Conn::read1`] without any plaintext coming out
/// (handshake messages, tickets, partial records) before it lets the others have a turn.
const TLS_READS_PER_CALL: usize = 64;

/// Histogram range: 1 ns to 1 hour, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Wire format of the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Framing {
    /// 0x01, u16 BE length, payload, 0x17
    Simple,
    /// u32 BE length, payload
    U32,
}

impl Framing {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Framing::Simple => "simple",
            Framing::U32 => "u32",
        }
    }

    fn max_payload(self) -> usize {
        match self {
            Framing::Simple => SimpleFrame.max_payload(),
            Framing::U32 => LengthPrefixed::default().max_payload(),
        }
    }
}

/// What the load generator does; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Closed loop, DEPTH frames in flight per connection
    Echo,
    /// Open N connections, hold them without traffic for S seconds
    Idle,
    /// N loops of connect, one echo, close
    Churn,
}

impl Mode {
    /// The name used on the command line and in the `RESULT` line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Idle => "idle",
            Mode::Churn => "churn",
        }
    }
}

/// Command-line options of `loadgen`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Server address.
    pub addr: SocketAddr,
    /// Wire format.
    pub framing: Framing,
    /// What to do.
    pub mode: Mode,
    /// Connections, or concurrent loops in churn mode.
    pub conns: usize,
    /// Frames in flight per connection (echo mode).
    pub depth: usize,
    /// Payload bytes per frame.
    pub size: usize,
    /// Measured window, seconds.
    pub secs: f64,
    /// Warm-up before the window, seconds (echo and churn).
    pub warmup: f64,
    /// Generator threads.
    pub threads: usize,
    /// `--tls-ca`: speak TLS with this client configuration (the file's certificates as the
    /// roots, server name `localhost`).
    pub tls: Option<Arc<ClientConfig>>,
    /// `--proxy`: start every connection with a PROXY protocol header of this version (churn
    /// mode only).
    pub proxy: Option<Proxy>,
}

/// A PROXY protocol version, for `--proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proxy {
    /// The text line: `PROXY TCP4 SRC DST SPORT DPORT\r\n`
    V1,
    /// The binary header: signature, version 2 PROXY, TCP over IPv4, 12 address bytes
    V2,
}

impl Proxy {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Proxy::V1 => "v1",
            Proxy::V2 => "v2",
        }
    }
}

/// The 12-byte signature that starts every v2 header.
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Appends the PROXY header of `version` saying that the client `src` connected to `dst`:
/// a v1 `TCP4` line, or a v2 `PROXY` command for TCP over IPv4 with no TLVs (28 bytes), built
/// by hand from the specification (HAProxy's `doc/proxy-protocol.txt`).
pub fn proxy_header(version: Proxy, src: SocketAddrV4, dst: SocketAddrV4, out: &mut Vec<u8>) {
    match version {
        Proxy::V1 => {
            let _ = write!(
                out,
                "PROXY TCP4 {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            );
        }
        Proxy::V2 => {
            out.extend_from_slice(&PROXY_V2_SIGNATURE);
            // Version 2, command PROXY; AF_INET, STREAM; 12 bytes of addresses follow.
            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
            out.extend_from_slice(&src.ip().octets());
            out.extend_from_slice(&dst.ip().octets());
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        }
    }
}

/// The made-up client of loop `index`'s cycle `seq`, for its PROXY header: 203.0.113.1–254
/// (TEST-NET-3), port 1024–65023.
fn proxy_client(index: u32, seq: u64) -> SocketAddrV4 {
    let host = (index % 254) as u8 + 1;
    let port = 1024 + (seq % 64_000) as u16;
    SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, host), port)
}

/// The made-up destination of every PROXY header: 192.0.2.1:443 (TEST-NET-1).
const PROXY_DESTINATION: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 443);

/// The command line of `loadgen`; [`parse_args`] checks it and makes it [`Options`].
#[derive(Debug, Clone, Parser)]
#[command(
    // A flag given twice: the last one counts, as with the hand-written parsers before.
    args_override_self = true,
    name = "loadgen",
    about = "Drives an echo server and verifies every reply. Prints MEASURE_START and \
             MEASURE_END around the measured window, then one RESULT line."
)]
pub struct LoadCli {
    /// Server address
    #[arg(long, value_name = "HOST:PORT", value_parser = resolve)]
    addr: SocketAddr,
    /// Wire format
    #[arg(long, value_enum, default_value_t = Framing::U32)]
    framing: Framing,
    /// What to do
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    mode: Mode,
    /// Connections, or concurrent loops for churn
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_CONNS as u64))]
    conns: usize,
    /// Frames in flight per connection in echo mode
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_DEPTH as u64))]
    depth: usize,
    /// Payload bytes per frame, at least 16
    #[arg(long, value_name = "B", default_value_t = 64,
          value_parser = RangedU64ValueParser::<usize>::new().range(HEADER as u64..))]
    size: usize,
    /// Measured window in seconds, fractions allowed
    #[arg(long, value_name = "S", default_value_t = 5.0, value_parser = cli::secs(0.001, MAX_SECS))]
    secs: f64,
    /// Seconds of load before the window opens
    #[arg(long, value_name = "W", default_value_t = 1.0, value_parser = cli::secs(0.0, MAX_SECS))]
    warmup: f64,
    /// Generator threads
    #[arg(long, value_name = "T", default_value_t = 2,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_THREADS as u64))]
    threads: usize,
    /// Speak TLS, trusting the certificates in this PEM file (and no others) for the server
    /// name localhost
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Churn only: start every connection with a PROXY protocol header of this version (the
    /// server must expect it: hydrogen_echo --proxy-protocol)
    #[arg(long, value_enum, value_name = "VERSION")]
    proxy: Option<Proxy>,
}

/// `--addr`: the first address `HOST:PORT` resolves to.
pub(crate) fn resolve(v: &str) -> Result<SocketAddr, String> {
    v.to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "no address".to_string())
}

impl LoadCli {
    /// The options, once the flags are checked against each other.
    fn options(self) -> Result<Options, String> {
        let LoadCli {
            addr,
            framing,
            mode,
            conns,
            depth,
            size,
            secs,
            warmup,
            threads,
            tls_ca,
            proxy,
        } = self;
        if let Some(p) = proxy
            && mode != Mode::Churn
        {
            return Err(format!("--proxy {}: only with --mode churn", p.name()));
        }
        if proxy.is_some() && tls_ca.is_some() {
            return Err("--proxy with --tls-ca is not supported".to_string());
        }
        if size > framing.max_payload() {
            return Err(format!(
                "--size {size}: the {} framing carries at most {} bytes",
                framing.name(),
                framing.max_payload()
            ));
        }
        if conns.saturating_mul(depth).saturating_mul(size) > MAX_BYTES_IN_FLIGHT {
            return Err(format!(
                "--conns x --depth x --size exceeds {MAX_BYTES_IN_FLIGHT} bytes in flight"
            ));
        }
        let tls = match tls_ca {
            Some(ca) => Some(crate::tls::client_config(&ca).map_err(|e| format!("--tls-ca: {e}"))?),
            None => None,
        };
        Ok(Options {
            addr,
            framing,
            mode,
            conns,
            depth,
            size,
            secs,
            warmup,
            threads,
            tls,
            proxy,
        })
    }
}

/// Parses the command line, program name first. `--help` comes back as an error of kind
/// [`DisplayHelp`](clap::error::ErrorKind::DisplayHelp): [`clap::Error::exit`] prints either.
pub fn parse_args<I, T>(args: I) -> Result<Options, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    LoadCli::try_parse_from(args)?
        .options()
        .map_err(|e| LoadCli::command().error(clap::error::ErrorKind::ValueValidation, e))
}

/// Runs the load as the options say, printing the markers and the `RESULT` line on stdout.
///
/// # Errors
///
/// A description of the first failure: a reply that differs from its frame, a lost connection, a
/// stall, or a connection that could not be opened.
pub fn run(opts: &Options) -> Result<(), String> {
    raise_nofile_limit("loadgen", opts.conns)?;
    match opts.mode {
        Mode::Echo => run_echo(opts),
        Mode::Idle => run_idle(opts),
        Mode::Churn => run_churn(opts),
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, and checks that `conns` sockets fit.
pub(crate) fn raise_nofile_limit(name: &str, conns: usize) -> Result<(), String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit(NOFILE): {e}"))?;
    let mut limit = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => limit = hard,
            Err(e) => eprintln!("{name}: warning: cannot raise RLIMIT_NOFILE to {hard}: {e}"),
        }
    }
    // A few descriptors for stdio, the polls and the eventfds of mio.
    let needed = conns as u64 + 64;
    if limit < needed {
        return Err(format!(
            "{conns} connections need about {needed} file descriptors, \
             but RLIMIT_NOFILE is {limit} (hard limit {hard})"
        ));
    }
    Ok(())
}

pub(crate) fn print_line(line: &str) {
    let mut out = io::stdout().lock();
    // If stdout is gone there is no one to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// `p50_us=.. p99_us=.. p999_us=.. max_us=..` of a histogram in nanoseconds.
pub(crate) fn quantiles(h: &Histogram<u64>) -> String {
    format!(
        "p50_us={:.2} p99_us={:.2} p999_us={:.2} max_us={:.2}",
        us(h.value_at_quantile(0.50)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max())
    )
}

/// Either built-in codec.
#[derive(Clone, Copy)]
enum AnyCodec {
    Simple(SimpleFrame),
    U32(LengthPrefixed),
}

impl AnyCodec {
    fn new(framing: Framing) -> AnyCodec {
        match framing {
            Framing::Simple => AnyCodec::Simple(SimpleFrame),
            Framing::U32 => AnyCodec::U32(LengthPrefixed::default()),
        }
    }

    fn encode(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        match self {
            AnyCodec::Simple(c) => c.encode(payload, out),
            AnyCodec::U32(c) => c.encode(payload, out),
        }
    }

    fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, FrameError> {
        match self {
            AnyCodec::Simple(c) => c.decode(buf),
            AnyCodec::U32(c) => c.decode(buf),
        }
    }
}

/// Builds and checks the frames: payload = header (connection, sequence, magic) + filler.
struct Frames {
    codec: AnyCodec,
    size: usize,
    /// `size - HEADER + PATTERN_PERIOD` pseudo-random bytes.
    pattern: Vec<u8>,
    /// Scratch payload for encoding.
    payload: Vec<u8>,
}

impl Frames {
    fn new(framing: Framing, size: usize) -> Frames {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let pattern = (0..size - HEADER + PATTERN_PERIOD)
            .map(|_| {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        Frames {
            codec: AnyCodec::new(framing),
            size,
            pattern,
            payload: Vec::with_capacity(size),
        }
    }

    fn filler(&self, conn: u32, seq: u64) -> &[u8] {
        let start = ((seq % PATTERN_PERIOD as u64) as usize + conn as usize * 17) % PATTERN_PERIOD;
        &self.pattern[start..start + self.size - HEADER]
    }

    /// Appends the frame `seq` of connection `conn` to `out`.
    fn encode(&mut self, conn: u32, seq: u64, out: &mut Vec<u8>) {
        let mut payload = std::mem::take(&mut self.payload);
        payload.clear();
        payload.extend_from_slice(&conn.to_be_bytes());
        payload.extend_from_slice(&seq.to_be_bytes());
        payload.extend_from_slice(&MAGIC);
        payload.extend_from_slice(self.filler(conn, seq));
        // The size was checked against the framing's limit when parsing the options.
        self.codec
            .encode(&payload, out)
            .expect("payload size within the framing's limit");
        self.payload = payload;
    }

    /// Checks that `got` is exactly the payload of frame `seq` of connection `conn`.
    fn check(&self, conn: u32, seq: u64, got: &[u8]) -> Result<(), String> {
        let head = |b: &[u8]| -> String {
            if b.len() >= HEADER {
                let c = u32::from_be_bytes(b[0..4].try_into().expect("4 bytes"));
                let s = u64::from_be_bytes(b[4..12].try_into().expect("8 bytes"));
                format!("(connection {c}, sequence {s})")
            } else {
                "(too short for a header)".to_string()
            }
        };
        if got.len() != self.size {
            return Err(format!(
                "connection {conn}: reply to frame {seq} has {} payload bytes, expected {}; \
                 it claims to be {}",
                got.len(),
                self.size,
                head(got)
            ));
        }
        let mut want = [0u8; HEADER];
        want[0..4].copy_from_slice(&conn.to_be_bytes());
        want[4..12].copy_from_slice(&seq.to_be_bytes());
        want[12..16].copy_from_slice(&MAGIC);
        if got[..HEADER] != want {
            return Err(format!(
                "connection {conn}: expected the reply to frame {seq} (in order), got the header \
                 of {} (magic {:02x?})",
                head(got),
                &got[12..16]
            ));
        }
        let filler = self.filler(conn, seq);
        if got[HEADER..] != *filler {
            let at = got[HEADER..]
                .iter()
                .zip(filler)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "connection {conn}: reply to frame {seq} differs at payload byte {}: \
                 expected 0x{:02x}, got 0x{:02x}",
                HEADER + at,
                filler[at],
                got[HEADER + at]
            ));
        }
        Ok(())
    }
}

/// One connection: frames sent and not yet answered, and the partial frames in each direction.
struct Conn {
    stream: TcpStream,
    /// The TLS session over `stream` (`--tls-ca`): `wbuf` goes into its plaintext writer and
    /// the bytes read come out of its plaintext reader. Boxed: rustls's state is large.
    tls: Option<Box<ClientConnection>>,
    index: u32,
    next_send: u64,
    next_recv: u64,
    /// Send time of each frame in flight, oldest first.
    sent_at: VecDeque<Instant>,
    /// Received bytes not yet forming a whole frame.
    rbuf: Vec<u8>,
    /// Encoded frames not yet written, from `wpos`.
    wbuf: Vec<u8>,
    wpos: usize,
}

/// What one `read` gave.
enum Read1 {
    Data(usize),
    WouldBlock,
}

/// A fresh TLS client session for `localhost` if `tls` is set.
fn tls_session(tls: Option<&Arc<ClientConfig>>) -> Result<Option<Box<ClientConnection>>, String> {
    tls.map(|config| {
        ClientConnection::new(config.clone(), crate::tls::server_name())
            .map(Box::new)
            .map_err(|e| format!("starting a TLS session: {e}"))
    })
    .transpose()
}

impl Conn {
    fn new(
        stream: TcpStream,
        tls: Option<Box<ClientConnection>>,
        index: u32,
        first_seq: u64,
    ) -> Conn {
        Conn {
            stream,
            tls,
            index,
            next_send: first_seq,
            next_recv: first_seq,
            sent_at: VecDeque::new(),
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
        }
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> String {
        format!("connection {}: {what}: {e}", self.index)
    }

    /// Encodes the next `n` frames into the write buffer, stamped `now`.
    fn queue(&mut self, frames: &mut Frames, n: usize, now: Instant) {
        for _ in 0..n {
            frames.encode(self.index, self.next_send, &mut self.wbuf);
            self.sent_at.push_back(now);
            self.next_send += 1;
        }
    }

    /// Writes as much of the write buffer as the socket takes.
    fn flush(&mut self) -> Result<(), String> {
        if self.tls.is_some() {
            return self.flush_tls();
        }
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(self.err("write", "the socket accepted no bytes")),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err("write failed (connection lost?)", e)),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(())
    }

    /// TLS: moves the write buffer into the session's plaintext writer (rustls holds it until
    /// the handshake is done, and takes no more than its buffer limit at a time) and writes the
    /// session's records until the socket would block or nothing is left.
    fn flush_tls(&mut self) -> Result<(), String> {
        let tls = self.tls.as_mut().expect("a TLS connection");
        loop {
            if self.wpos < self.wbuf.len() {
                match tls.writer().write(&self.wbuf[self.wpos..]) {
                    Ok(n) => self.wpos += n,
                    Err(e) => return Err(format!("connection {}: TLS write: {e}", self.index)),
                }
            }
            if !tls.wants_write() {
                // Everything is on the socket, or rustls waits for the handshake (or for room
                // in its buffer) before it takes the rest; a later flush gives it.
                break;
            }
            match tls.write_tls(&mut self.stream) {
                Ok(0) => return Err(self.err("write", "the socket accepted no bytes")),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err("write failed (connection lost?)", e)),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        Ok(())
    }

    /// TLS: [`Conn::read1`]'s plaintext: what the session already decrypted, else records read
    /// from the socket and processed (answering handshake messages on the way) until some
    /// plaintext comes out or the socket would block. A bounded number of records per call:
    /// after [`TLS_READS_PER_CALL`] without plaintext it returns `Data(0)` to yield.
    fn read1_tls(&mut self, buf: &mut [u8]) -> Result<Read1, String> {
        for _ in 0..TLS_READS_PER_CALL {
            let tls = self.tls.as_mut().expect("a TLS connection");
            match tls.reader().read(buf) {
                Ok(0) => {
                    return Err(format!(
                        "connection {}: closed by the server (TLS close_notify) with {} \
                         frame(s) in flight",
                        self.index,
                        self.sent_at.len()
                    ));
                }
                Ok(n) => return Ok(Read1::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.err("TLS read", e)),
            }
            match tls.read_tls(&mut self.stream) {
                Ok(0) => {
                    return Err(format!(
                        "connection {}: closed by the server with {} frame(s) in flight",
                        self.index,
                        self.sent_at.len()
                    ));
                }
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        // Tell the server why (a best-effort alert), then fail.
                        let _ = tls.write_tls(&mut self.stream);
                        return Err(self.err("TLS", e));
                    }
                    // Handshake replies, and the frames rustls held until the handshake ended.
                    self.flush_tls()?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read1::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err("read failed (connection lost?)", e)),
            }
        }
        Ok(Read1::Data(0))
    }

    /// One `read` into `buf` (of plaintext, with TLS). End of stream is an error: the server
    /// must not close. `Data(0)` only with TLS: records came but no plaintext yet; read again.
    fn read1(&mut self, buf: &mut [u8]) -> Result<Read1, String> {
        if self.tls.is_some() {
            return self.read1_tls(buf);
        }
        loop {
            return match self.stream.read(buf) {
                Ok(0) => Err(format!(
                    "connection {}: closed by the server with {} frame(s) in flight",
                    self.index,
                    self.sent_at.len()
                )),
                Ok(n) => Ok(Read1::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Read1::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(self.err("read failed (connection lost?)", e)),
            };
        }
    }

    /// Takes in received bytes: verifies every whole reply, passes its round-trip time in
    /// nanoseconds to `on_reply`, and returns how many replies there were.
    fn consume(
        &mut self,
        data: &[u8],
        frames: &mut Frames,
        now: Instant,
        on_reply: &mut impl FnMut(u64),
    ) -> Result<usize, String> {
        if self.rbuf.is_empty() {
            let (used, n) = self.decode_replies(data, frames, now, on_reply)?;
            self.rbuf.extend_from_slice(&data[used..]);
            Ok(n)
        } else {
            let mut buf = std::mem::take(&mut self.rbuf);
            buf.extend_from_slice(data);
            let result = self.decode_replies(&buf, frames, now, on_reply);
            if let Ok((used, _)) = result {
                buf.drain(..used);
            }
            self.rbuf = buf;
            result.map(|(_, n)| n)
        }
    }

    /// Returns (bytes used, replies).
    fn decode_replies(
        &mut self,
        buf: &[u8],
        frames: &mut Frames,
        now: Instant,
        on_reply: &mut impl FnMut(u64),
    ) -> Result<(usize, usize), String> {
        let mut pos = 0;
        let mut n = 0;
        loop {
            let rest = &buf[pos..];
            let Decoded { payload, consumed } = match frames.codec.decode(rest) {
                Ok(Some(d)) => d,
                Ok(None) => return Ok((pos, n)),
                Err(e) => return Err(self.err("malformed reply", e)),
            };
            if consumed == 0 || consumed > rest.len() || payload.end > consumed {
                return Err(self.err("codec", "inconsistent decode result"));
            }
            let Some(sent) = self.sent_at.pop_front() else {
                return Err(format!(
                    "connection {}: a reply arrived with no frame in flight (next expected \
                     sequence {})",
                    self.index, self.next_recv
                ));
            };
            frames.check(self.index, self.next_recv, &rest[payload])?;
            self.next_recv += 1;
            on_reply(now.saturating_duration_since(sent).as_nanos() as u64);
            pos += consumed;
            n += 1;
        }
    }

    /// The age of the oldest frame still waiting for its reply.
    fn oldest_wait(&self, now: Instant) -> Option<Duration> {
        self.sent_at
            .front()
            .map(|t| now.saturating_duration_since(*t))
    }

    /// Sets `SO_LINGER` 0, so that dropping the stream resets the connection and leaves no
    /// `TIME_WAIT` behind.
    fn set_abortive_close(&self) {
        // Best effort: at worst the socket lingers in TIME_WAIT.
        let _ = SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

/// True if this connect failure is worth another attempt.
fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::TimedOut
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
    )
}

/// After a writable event on a connecting socket: `Ok(true)` when connected, `Ok(false)` when
/// still connecting, `Err` when the connect failed.
fn check_connected(s: &TcpStream) -> io::Result<bool> {
    if let Some(e) = s.take_error()? {
        return Err(e);
    }
    match s.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// Opens `n` connections with at most [`CONNECT_IN_FLIGHT`] connects pending at once, retrying
/// refused or timed-out ones. Returns non-blocking streams in index order and the retry count.
pub(crate) fn connect_all(
    addr: SocketAddr,
    n: usize,
) -> Result<(Vec<std::net::TcpStream>, u64), String> {
    let mut poll = Poll::new().map_err(|e| format!("creating a poll: {e}"))?;
    let mut events = Events::with_capacity(1024);
    let mut pending: Vec<Option<(TcpStream, Instant)>> = (0..n).map(|_| None).collect();
    let mut done: Vec<Option<std::net::TcpStream>> = (0..n).map(|_| None).collect();
    let mut attempts = vec![0u32; n];
    // (connection index, not before)
    let start = Instant::now();
    let mut queue: VecDeque<(usize, Instant)> = (0..n).map(|i| (i, start)).collect();
    let mut in_flight = 0;
    let mut connected = 0;
    let mut retries = 0u64;
    let mut last_scan = start;

    // Schedules connection `i` again, or fails after too many attempts.
    let mut retry = |i: usize,
                     e: io::Error,
                     attempts: &[u32],
                     queue: &mut VecDeque<(usize, Instant)>|
     -> Result<(), String> {
        if attempts[i] >= CONNECT_ATTEMPTS || !retryable(&e) {
            return Err(format!(
                "connecting to {addr} (connection {i}, attempt {}): {e}",
                attempts[i]
            ));
        }
        retries += 1;
        let backoff = Duration::from_millis(100 * u64::from(attempts[i]));
        queue.push_back((i, Instant::now() + backoff));
        Ok(())
    };

    while connected < n {
        let now = Instant::now();
        if now.duration_since(start) > CONNECT_DEADLINE {
            return Err(format!(
                "connecting to {addr}: only {connected} of {n} connections open after {:?}",
                CONNECT_DEADLINE
            ));
        }
        // Start connects, up to the bound. Entries not yet due stay queued.
        let mut deferred = 0;
        while in_flight < CONNECT_IN_FLIGHT && deferred < queue.len() {
            let Some((i, not_before)) = queue.pop_front() else {
                break;
            };
            if not_before > now {
                queue.push_back((i, not_before));
                deferred += 1;
                continue;
            }
            attempts[i] += 1;
            match TcpStream::connect(addr) {
                Ok(mut s) => {
                    poll.registry()
                        .register(&mut s, Token(i), Interest::WRITABLE)
                        .map_err(|e| format!("registering a socket: {e}"))?;
                    pending[i] = Some((s, now));
                    in_flight += 1;
                }
                Err(e) => retry(i, e, &attempts, &mut queue)?,
            }
        }
        match poll.poll(&mut events, Some(Duration::from_millis(10))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let Some((s, _)) = pending[i].as_ref() else {
                continue;
            };
            match check_connected(s) {
                Ok(false) => {}
                Ok(true) => {
                    let (mut s, _) = pending[i].take().expect("pending");
                    poll.registry()
                        .deregister(&mut s)
                        .map_err(|e| format!("deregistering a socket: {e}"))?;
                    done[i] = Some(std::net::TcpStream::from(s));
                    in_flight -= 1;
                    connected += 1;
                }
                Err(e) => {
                    pending[i] = None;
                    in_flight -= 1;
                    retry(i, e, &attempts, &mut queue)?;
                }
            }
        }
        // Time out slow attempts, looking at most ten times a second.
        let now = Instant::now();
        if now.duration_since(last_scan) >= Duration::from_millis(100) {
            last_scan = now;
            for (i, slot) in pending.iter_mut().enumerate() {
                if let Some((_, t)) = slot
                    && now.duration_since(*t) > CONNECT_TIMEOUT
                {
                    *slot = None;
                    in_flight -= 1;
                    let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                    retry(i, e, &attempts, &mut queue)?;
                }
            }
        }
    }
    let streams = done
        .into_iter()
        .map(|s| s.expect("every connection is open"))
        .collect();
    Ok((streams, retries))
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// State shared by the main thread and the workers.
struct Shared {
    phase: AtomicU8,
    /// Set by a worker that fails, so that the main thread stops everything early.
    failed: AtomicBool,
}

/// What a worker measured during the window.
struct Tally {
    hist: Histogram<u64>,
    count: u64,
    retries: u64,
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

pub(crate) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Runs the worker threads of echo or churn mode around the warm-up and the measured window.
/// Returns the merged tally and the window's length in seconds.
fn run_workers<W>(threads: usize, opts: &Options, work: W) -> Result<(Tally, f64), String>
where
    W: Fn(usize, &Shared) -> Result<Tally, String> + Sync,
{
    let shared = Shared {
        phase: AtomicU8::new(WARMUP),
        failed: AtomicBool::new(false),
    };
    let (results, window) = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let shared = &shared;
                let work = &work;
                thread::Builder::new()
                    .name(format!("loadgen-{t}"))
                    .spawn_scoped(scope, move || {
                        let r = work(t, shared);
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
            shared.phase.store(STOP, Ordering::Release);
            window = t0.elapsed().as_secs_f64();
            if completed {
                print_line("MEASURE_END");
            }
        }
        shared.phase.store(STOP, Ordering::Release);
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a worker thread panicked".to_string()))
            })
            .collect();
        (results, window)
    });
    let mut total = Tally {
        hist: new_histogram(),
        count: 0,
        retries: 0,
    };
    for r in results {
        let t = r?;
        total
            .hist
            .add(&t.hist)
            .map_err(|e| format!("merging histograms: {e:?}"))?;
        total.count += t.count;
        total.retries += t.retries;
    }
    Ok((total, window))
}

/// Tracks the phase as a worker sees it.
struct PhaseView {
    measuring: bool,
}

impl PhaseView {
    /// Returns false once it is time to stop; resets the tally when the window opens.
    fn update(&mut self, shared: &Shared, hist: &mut Histogram<u64>, count: &mut u64) -> bool {
        if shared.failed.load(Ordering::Relaxed) {
            return false;
        }
        match shared.phase.load(Ordering::Acquire) {
            STOP => false,
            MEASURE => {
                if !self.measuring {
                    self.measuring = true;
                    hist.reset();
                    *count = 0;
                }
                true
            }
            _ => true,
        }
    }
}

pub(crate) fn poll_once(
    poll: &mut Poll,
    events: &mut Events,
    timeout: Duration,
) -> Result<(), String> {
    match poll.poll(events, Some(timeout)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        Err(e) => Err(format!("poll: {e}")),
    }
}

fn run_echo(opts: &Options) -> Result<(), String> {
    let (streams, connect_retries) = connect_all(opts.addr, opts.conns)?;
    let threads = opts.threads.min(opts.conns);
    // Connection i goes to thread i % threads.
    let mut shares: Vec<Vec<(u32, std::net::TcpStream)>> =
        (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in streams.into_iter().enumerate() {
        shares[i % threads].push((i as u32, s));
    }
    let shares: Vec<_> = shares.into_iter().map(std::sync::Mutex::new).collect();
    let (tally, window) = run_workers(threads, opts, |t, shared| {
        let share = std::mem::take(&mut *shares[t].lock().expect("share lock"));
        echo_worker(share, opts, shared)
    })?;
    if tally.count == 0 {
        return Err("no replies at all during the measured window".to_string());
    }
    print_line(&format!(
        "RESULT mode=echo conns={} depth={} size={} secs={:.2} frames={} fps={:.1} {} retries={} errors=0",
        opts.conns,
        opts.depth,
        opts.size,
        window,
        tally.count,
        tally.count as f64 / window,
        quantiles(&tally.hist),
        connect_retries + tally.retries,
    ));
    Ok(())
}

fn echo_worker(
    share: Vec<(u32, std::net::TcpStream)>,
    opts: &Options,
    shared: &Shared,
) -> Result<Tally, String> {
    let mut poll = Poll::new().map_err(|e| format!("creating a poll: {e}"))?;
    let mut events = Events::with_capacity(1024);
    let mut frames = Frames::new(opts.framing, opts.size);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut hist = new_histogram();
    let mut count = 0u64;
    let mut view = PhaseView { measuring: false };

    let mut conns = Vec::with_capacity(share.len());
    for (tok, (index, s)) in share.into_iter().enumerate() {
        let mut stream = TcpStream::from_std(s);
        stream
            .set_nodelay(true)
            .map_err(|e| format!("connection {index}: TCP_NODELAY: {e}"))?;
        poll.registry()
            .register(
                &mut stream,
                Token(tok),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("registering a socket: {e}"))?;
        conns.push(Conn::new(stream, tls_session(opts.tls.as_ref())?, index, 0));
    }
    let now = Instant::now();
    for c in &mut conns {
        c.queue(&mut frames, opts.depth, now);
        c.flush()?;
    }

    // Connections that used up their read budget and must be read again without an event.
    let mut ready: VecDeque<usize> = VecDeque::new();
    let mut again: Vec<usize> = Vec::new();
    let mut last_stall_check = Instant::now();
    while view.update(shared, &mut hist, &mut count) {
        let timeout = if ready.is_empty() {
            TICK
        } else {
            Duration::ZERO
        };
        poll_once(&mut poll, &mut events, timeout)?;
        for ev in events.iter() {
            let tok = ev.token().0;
            let c = &mut conns[tok];
            if ev.is_error() {
                let e = c
                    .stream
                    .take_error()
                    .ok()
                    .flatten()
                    .map_or("socket error".to_string(), |e| e.to_string());
                return Err(c.err("connection lost", e));
            }
            if ev.is_writable() {
                c.flush()?;
            }
            if ev.is_readable() || ev.is_read_closed() {
                ready.push_back(tok);
            }
        }
        let measuring = view.measuring;
        let mut record = |ns: u64| {
            if measuring {
                hist.saturating_record(ns.max(1));
            }
        };
        // Each ready connection: up to READ_BUDGET reads; each read's replies are answered with
        // new frames in a single write.
        while let Some(tok) = ready.pop_front() {
            let c = &mut conns[tok];
            let mut drained = false;
            for _ in 0..READ_BUDGET {
                match c.read1(&mut buf)? {
                    Read1::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Read1::Data(n) => {
                        let now = Instant::now();
                        let k = c.consume(&buf[..n], &mut frames, now, &mut record)?;
                        if measuring {
                            count += k as u64;
                        }
                        if k > 0 {
                            c.queue(&mut frames, k, now);
                            c.flush()?;
                        }
                    }
                }
            }
            if !drained {
                again.push(tok);
            }
        }
        ready.extend(again.drain(..));

        let now = Instant::now();
        if now.duration_since(last_stall_check) >= Duration::from_secs(1) {
            last_stall_check = now;
            check_stalls(&conns, now)?;
        }
    }
    for c in &conns {
        c.set_abortive_close();
    }
    Ok(Tally {
        hist,
        count,
        retries: 0,
    })
}

fn check_stalls(conns: &[Conn], now: Instant) -> Result<(), String> {
    for c in conns {
        if let Some(wait) = c.oldest_wait(now)
            && wait > STALL
        {
            return Err(format!(
                "connection {}: no reply to frame {} for {:.1} s ({} frame(s) in flight)",
                c.index,
                c.next_recv,
                wait.as_secs_f64(),
                c.sent_at.len()
            ));
        }
    }
    Ok(())
}

/// Idle mode's check: one frame on every connection, and wait for every echo.
fn ping_all(
    poll: &mut Poll,
    conns: &mut [Conn],
    frames: &mut Frames,
    hist: &mut Histogram<u64>,
) -> Result<(), String> {
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_CHUNK];
    let now = Instant::now();
    for c in conns.iter_mut() {
        c.queue(frames, 1, now);
        c.flush()?;
    }
    let mut waiting = conns.len();
    let start = Instant::now();
    let mut record = |ns: u64| hist.saturating_record(ns.max(1));
    while waiting > 0 {
        if start.elapsed() > PING_DEADLINE {
            let c = conns
                .iter()
                .find(|c| !c.sent_at.is_empty())
                .expect("a connection is waiting");
            return Err(format!(
                "{waiting} connection(s) got no echo within {PING_DEADLINE:?}, e.g. connection {}",
                c.index
            ));
        }
        poll_once(poll, &mut events, TICK)?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if ev.is_writable() {
                c.flush()?;
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                while let Read1::Data(n) = c.read1(&mut buf)? {
                    let k = c.consume(&buf[..n], frames, Instant::now(), &mut record)?;
                    waiting -= k;
                }
            }
        }
    }
    Ok(())
}

fn run_idle(opts: &Options) -> Result<(), String> {
    let (streams, retries) = connect_all(opts.addr, opts.conns)?;
    let mut poll = Poll::new().map_err(|e| format!("creating a poll: {e}"))?;
    let mut conns = Vec::with_capacity(streams.len());
    for (i, s) in streams.into_iter().enumerate() {
        let mut stream = TcpStream::from_std(s);
        stream
            .set_nodelay(true)
            .map_err(|e| format!("connection {i}: TCP_NODELAY: {e}"))?;
        poll.registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("registering a socket: {e}"))?;
        conns.push(Conn::new(
            stream,
            tls_session(opts.tls.as_ref())?,
            i as u32,
            0,
        ));
    }
    let mut frames = Frames::new(opts.framing, opts.size);
    let mut hist = new_histogram();
    ping_all(&mut poll, &mut conns, &mut frames, &mut hist)?;

    print_line("MEASURE_START");
    let t0 = Instant::now();
    let deadline = t0 + secs(opts.secs);
    while Instant::now() < deadline {
        thread::sleep((deadline - Instant::now()).min(Duration::from_millis(100)));
    }
    let window = t0.elapsed().as_secs_f64();
    print_line("MEASURE_END");

    // Every connection must still be there after the idle period.
    ping_all(&mut poll, &mut conns, &mut frames, &mut hist)?;
    for c in &conns {
        c.set_abortive_close();
    }
    drop(conns);
    print_line(&format!(
        "RESULT mode=idle conns={} size={} secs={:.2} pings={} {} retries={} errors=0",
        opts.conns,
        opts.size,
        window,
        hist.len(),
        quantiles(&hist),
        retries
    ));
    Ok(())
}

fn run_churn(opts: &Options) -> Result<(), String> {
    let threads = opts.threads.min(opts.conns);
    let (tally, window) = run_workers(threads, opts, |t, shared| {
        // Loop i goes to thread i % threads.
        let loops: Vec<u32> = (t..opts.conns).step_by(threads).map(|i| i as u32).collect();
        churn_worker(&loops, opts, shared)
    })?;
    if tally.count == 0 {
        return Err("no cycle completed during the measured window".to_string());
    }
    print_line(&format!(
        "RESULT mode=churn conns={} size={} proxy={} secs={:.2} cycles={} cps={:.1} {} retries={} \
         errors=0",
        opts.conns,
        opts.size,
        opts.proxy.map_or("none", Proxy::name),
        window,
        tally.count,
        tally.count as f64 / window,
        quantiles(&tally.hist),
        tally.retries
    ));
    Ok(())
}

/// One churn loop: its connection of the current cycle, if any.
struct Cycle {
    index: u32,
    seq: u64,
    conn: Option<Conn>,
    connected: bool,
    started: Instant,
    /// Start of the current connect attempt.
    attempt_started: Instant,
    attempts: u32,
    /// `--tls-ca`: every cycle's connection gets a new session (no resumption).
    tls: Option<Arc<ClientConfig>>,
}

impl Cycle {
    /// Starts a connect for the current cycle.
    fn connect(&mut self, poll: &Poll, tok: usize, addr: SocketAddr) -> Result<(), String> {
        loop {
            self.attempts += 1;
            self.attempt_started = Instant::now();
            match TcpStream::connect(addr) {
                Ok(mut s) => {
                    poll.registry()
                        .register(&mut s, Token(tok), Interest::READABLE | Interest::WRITABLE)
                        .map_err(|e| format!("registering a socket: {e}"))?;
                    let session = tls_session(self.tls.as_ref())?;
                    self.conn = Some(Conn::new(s, session, self.index, self.seq));
                    self.connected = false;
                    return Ok(());
                }
                Err(e) if retryable(&e) && self.attempts < CONNECT_ATTEMPTS => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(format!("loop {}: connecting to {addr}: {e}", self.index));
                }
            }
        }
    }

    /// Drops a failed connect attempt and starts another, or gives up.
    fn reconnect(
        &mut self,
        poll: &Poll,
        tok: usize,
        addr: SocketAddr,
        e: io::Error,
    ) -> Result<(), String> {
        if let Some(mut c) = self.conn.take() {
            let _ = poll.registry().deregister(&mut c.stream);
        }
        if !retryable(&e) || self.attempts >= CONNECT_ATTEMPTS {
            return Err(format!(
                "loop {}: connecting to {addr} (attempt {}): {e}",
                self.index, self.attempts
            ));
        }
        self.connect(poll, tok, addr)
    }
}

fn churn_worker(loops: &[u32], opts: &Options, shared: &Shared) -> Result<Tally, String> {
    let mut poll = Poll::new().map_err(|e| format!("creating a poll: {e}"))?;
    let mut events = Events::with_capacity(256);
    let mut frames = Frames::new(opts.framing, opts.size);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut hist = new_histogram();
    let mut count = 0u64;
    let mut retries = 0u64;
    let mut view = PhaseView { measuring: false };
    let now = Instant::now();
    let mut cycles: Vec<Cycle> = loops
        .iter()
        .map(|&index| Cycle {
            index,
            seq: 0,
            conn: None,
            connected: false,
            started: now,
            attempt_started: now,
            attempts: 0,
            tls: opts.tls.clone(),
        })
        .collect();
    for (tok, cy) in cycles.iter_mut().enumerate() {
        cy.connect(&poll, tok, opts.addr)?;
    }
    let mut ignore = |_ns: u64| {};
    let mut last_check = Instant::now();
    while view.update(shared, &mut hist, &mut count) {
        poll_once(&mut poll, &mut events, TICK)?;
        for ev in events.iter() {
            let tok = ev.token().0;
            let cy = &mut cycles[tok];
            let Some(c) = cy.conn.as_mut() else {
                continue;
            };
            if !cy.connected {
                match check_connected(&c.stream) {
                    Ok(false) => continue,
                    Ok(true) => {
                        cy.connected = true;
                        c.stream
                            .set_nodelay(true)
                            .map_err(|e| c.err("TCP_NODELAY", e))?;
                        if let Some(version) = opts.proxy {
                            let client = proxy_client(cy.index, cy.seq);
                            proxy_header(version, client, PROXY_DESTINATION, &mut c.wbuf);
                        }
                        c.queue(&mut frames, 1, Instant::now());
                    }
                    Err(e) => {
                        retries += 1;
                        cy.reconnect(&poll, tok, opts.addr, e)?;
                        continue;
                    }
                }
            }
            c.flush()?;
            let mut complete = false;
            while let Read1::Data(n) = c.read1(&mut buf)? {
                if c.consume(&buf[..n], &mut frames, Instant::now(), &mut ignore)? > 0 {
                    complete = true;
                    break;
                }
            }
            if !complete {
                continue;
            }
            if !c.rbuf.is_empty() {
                return Err(c.err("extra bytes after the echo", c.rbuf.len()));
            }
            // Cycle done: reset the connection (no TIME_WAIT), time the whole cycle.
            let mut c = cy.conn.take().expect("connection");
            c.set_abortive_close();
            let _ = poll.registry().deregister(&mut c.stream);
            drop(c);
            let end = Instant::now();
            if view.measuring {
                hist.saturating_record((end - cy.started).as_nanos().max(1) as u64);
                count += 1;
            }
            cy.seq += 1;
            cy.attempts = 0;
            cy.started = end;
            cy.connect(&poll, tok, opts.addr)?;
        }
        // Timeouts, a few times a second.
        let now = Instant::now();
        if now.duration_since(last_check) >= Duration::from_millis(100) {
            last_check = now;
            for (tok, cy) in cycles.iter_mut().enumerate() {
                if !cy.connected
                    && cy.conn.is_some()
                    && now.duration_since(cy.attempt_started) > CONNECT_TIMEOUT
                {
                    retries += 1;
                    let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                    cy.reconnect(&poll, tok, opts.addr, e)?;
                } else if cy.connected && now.duration_since(cy.started) > STALL {
                    return Err(format!(
                        "loop {}: no echo for frame {} within {STALL:?}",
                        cy.index, cy.seq
                    ));
                }
            }
        }
    }
    for cy in &cycles {
        if let Some(c) = &cy.conn {
            c.set_abortive_close();
        }
    }
    Ok(Tally {
        hist,
        count,
        retries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_detect_changes() {
        for framing in [Framing::U32, Framing::Simple] {
            let mut f = Frames::new(framing, 64);
            let mut wire = Vec::new();
            f.encode(3, 17, &mut wire);
            let d = f.codec.decode(&wire).unwrap().unwrap();
            assert_eq!(d.consumed, wire.len());
            let payload = wire[d.payload.clone()].to_vec();
            f.check(3, 17, &payload).unwrap();
            assert!(f.check(3, 18, &payload).is_err());
            assert!(f.check(4, 17, &payload).is_err());
            let mut bad = payload.clone();
            bad[40] ^= 1;
            let e = f.check(3, 17, &bad).unwrap_err();
            assert!(e.contains("byte 40"), "{e}");
            assert!(f.check(3, 17, &payload[..63]).is_err());
        }
    }

    #[test]
    fn parses_options() {
        LoadCli::command().debug_assert();
        let args = |s: &str| parse_args(std::iter::once("loadgen").chain(s.split_whitespace()));
        let o = args("--addr 127.0.0.1:9 --mode churn --conns 8").unwrap();
        assert_eq!(o.mode, Mode::Churn);
        assert_eq!(o.conns, 8);
        assert_eq!(o.framing, Framing::U32);
        assert_eq!((o.depth, o.size, o.threads), (1, 64, 2));
        assert_eq!((o.secs, o.warmup), (5.0, 1.0));
        let o = args("--addr 127.0.0.1:9 --framing simple --mode idle --depth 4 --size 16 --secs 0.5 --warmup 0 --threads 3").unwrap();
        assert_eq!((o.framing, o.mode), (Framing::Simple, Mode::Idle));
        assert_eq!((o.depth, o.size, o.threads), (4, 16, 3));
        assert_eq!((o.secs, o.warmup), (0.5, 0.0));
        let o = args("--addr 127.0.0.1:9 --conns 8 --conns 9").unwrap();
        assert_eq!(o.conns, 9);
        assert!(args("--conns 8").is_err());
        assert!(args("--addr 127.0.0.1:9 --size 15").is_err());
        assert!(args("--addr 127.0.0.1:9 --framing simple --size 70000").is_err());
        assert!(args("--addr 127.0.0.1:9 --conns 100001").is_err());
        assert!(args("--addr 127.0.0.1:9 --depth 0").is_err());
        assert!(args("--addr 127.0.0.1:9 --threads 65").is_err());
        assert!(args("--addr 127.0.0.1:9 --secs 0").is_err());
        assert!(args("--addr 127.0.0.1:9 --conns 100000 --depth 4096 --size 64").is_err());
        let help = args("--help").unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(args("--addr 127.0.0.1:9").unwrap().tls.is_none());
        assert!(args("--addr 127.0.0.1:9").unwrap().proxy.is_none());
        let o = args("--addr 127.0.0.1:9 --mode churn --proxy v2").unwrap();
        assert_eq!(o.proxy, Some(Proxy::V2));
        assert!(args("--addr 127.0.0.1:9 --mode churn --proxy v3").is_err());
        assert!(args("--addr 127.0.0.1:9 --proxy v1").is_err());
        assert!(args("--addr 127.0.0.1:9 --mode idle --proxy v1").is_err());
    }

    /// The headers loadgen sends are what hydrogen's own parser reads back, whole, for the
    /// addresses given.
    #[test]
    fn proxy_headers_parse() {
        let dst = PROXY_DESTINATION;
        for (version, seq) in [
            (Proxy::V1, 0),
            (Proxy::V2, 0),
            (Proxy::V1, 70_000),
            (Proxy::V2, 63_999),
        ] {
            let src = proxy_client(300, seq);
            let mut wire = Vec::new();
            proxy_header(version, src, dst, &mut wire);
            let (header, len) = hydrogen::proxy::parse_header(&wire).unwrap().unwrap();
            assert_eq!(len, wire.len(), "{version:?}");
            assert_eq!(header.version(), if version == Proxy::V1 { 1 } else { 2 });
            assert_eq!(header.source(), Some(SocketAddr::V4(src)));
            assert_eq!(header.destination(), Some(SocketAddr::V4(dst)));
            // A frame after it is left alone.
            wire.extend_from_slice(&[0, 0, 0, 1, 7]);
            let (_, again) = hydrogen::proxy::parse_header(&wire).unwrap().unwrap();
            assert_eq!(again, len);
        }
        let mut v1 = Vec::new();
        proxy_header(Proxy::V1, proxy_client(6, 5), dst, &mut v1);
        assert_eq!(v1, b"PROXY TCP4 203.0.113.7 192.0.2.1 1029 443\r\n");
        let mut v2 = Vec::new();
        proxy_header(Proxy::V2, proxy_client(6, 5), dst, &mut v2);
        assert_eq!(v2.len(), 28);
        assert_eq!(proxy_client(253, 0).ip().octets()[3], 254);
        assert_eq!(
            proxy_client(254, 64_000),
            SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 1024)
        );
    }

    #[test]
    fn parses_tls_ca() {
        let args = |s: &str| parse_args(std::iter::once("loadgen").chain(s.split_whitespace()));
        let dir =
            std::env::temp_dir().join(format!("hydrogen-bench-loadgen-ca-{}", std::process::id()));
        let files = crate::tls::write_test_cert(&dir).unwrap();
        let ca = files.cert.display();
        let o = args(&format!("--addr 127.0.0.1:9 --mode churn --tls-ca {ca}")).unwrap();
        assert!(o.tls.is_some());
        // Not a certificate, not there, no value: usage errors naming the flag.
        for bad in [
            format!("--addr 127.0.0.1:9 --tls-ca {}", files.key.display()),
            "--addr 127.0.0.1:9 --tls-ca /nonexistent/ca.pem".to_string(),
            "--addr 127.0.0.1:9 --tls-ca".to_string(),
        ] {
            let e = args(&bad).unwrap_err().to_string();
            assert!(e.contains("--tls-ca"), "{bad}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
