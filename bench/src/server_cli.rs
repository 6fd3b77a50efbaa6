//! What the benchmark's echo servers share: the command line, the listening line, the file
//! descriptor limit, the listening socket, and (for the tokio and mio peers) a small codec of their
//! own, byte-compatible with hydrogen's framings but independent of them.
//!
//! Every server binary follows the same contract, which the suite relies on:
//!
//! - `--addr HOST:PORT` (default `127.0.0.1:0`), `--framing simple|u32` (default `u32`),
//!   `--threads N` (default 2), `--max-frame BYTES` (default 1 MiB: the largest `u32` payload),
//!   `--block-ms N` (default 0: a frame whose payload starts with [`BLOCK_PREFIX`] makes the
//!   frame handling sleep N ms, blocking its thread, before the echo), and `--max-buffered BYTES`
//!   (hydrogen only: `Config::max_buffered`; the other servers refuse it), `--proxy-protocol`
//!   (hydrogen_echo only: `Config::proxy_protocol`; the others refuse it); anything else prints
//!   the usage on stderr and exits with status 2. [`ServerCli`] is the clap definition.
//! - Once bound, exactly one line `listening on ADDR` goes to stdout, and nothing else.
//! - Every frame is echoed on its connection, in order, in the same framing. (The chat servers
//!   of the fan-out benchmark, `hydrogen_chat` and `tokio_chat`, take the same command line and
//!   relay every frame, unchanged, to every other connection instead;
//!   [`parse_args_about`] gives them their own `--help` text.)
//! - SIGINT and SIGTERM end the process with status 0.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::ops::Range;
use std::path::PathBuf;
use std::process;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use socket2::{Domain, Protocol, Socket, Type};

/// The largest payload a `u32` frame may announce by default (`--max-frame`): 1 MiB. A larger
/// prefix closes the connection.
pub const U32_MAX_FRAME: usize = 1024 * 1024;

/// A frame whose payload starts with these bytes makes the server sleep `--block-ms` before
/// echoing it (the stalls benchmark's stand-in for a handler that blocks).
pub const BLOCK_PREFIX: &[u8] = b"BLOCK";

/// Whether a frame with this payload is to be delayed by `--block-ms`.
#[inline]
pub fn is_block_frame(payload: &[u8]) -> bool {
    payload.starts_with(BLOCK_PREFIX)
}

/// Sleeps `block` (blocking the calling thread, on purpose) if `payload` is a `BLOCK` frame.
#[inline]
pub fn maybe_block(payload: &[u8], block: Duration) {
    if !block.is_zero() && is_block_frame(payload) {
        std::thread::sleep(block);
    }
}

/// The `listen(2)` backlog of every server.
pub const BACKLOG: i32 = 1024;

/// Size of the per-thread buffer the tokio and mio servers read into.
pub const READ_CHUNK: usize = 64 * 1024;

/// A read buffer keeping a small leftover in a much larger allocation is shrunk above this.
const LEFTOVER_SHRINK_ABOVE: usize = 64 * 1024;

/// The wire format of the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `0x01`, payload length (u16 big-endian), payload, `0x17`.
    Simple,
    /// Payload length (u32 big-endian, at most `max`: [`U32_MAX_FRAME`] unless `--max-frame`
    /// says otherwise), payload.
    U32 {
        /// The largest payload accepted.
        max: usize,
    },
}

/// The input cannot be a frame of the connection's framing; the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadFrame {
    /// A SimpleFrame that does not start with `0x01`.
    StartByte(u8),
    /// A SimpleFrame whose byte after the payload is not `0x17`.
    EndByte(u8),
    /// A `u32` prefix over the framing's bound.
    TooLarge {
        /// What the prefix announced.
        announced: u32,
        /// The bound.
        max: usize,
    },
}

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadFrame::StartByte(b) => write!(f, "bad start byte 0x{b:02x}"),
            BadFrame::EndByte(b) => write!(f, "bad end byte 0x{b:02x}"),
            BadFrame::TooLarge { announced, max } => {
                write!(f, "frame of {announced} bytes over {max}")
            }
        }
    }
}

impl std::error::Error for BadFrame {}

impl From<BadFrame> for io::Error {
    fn from(err: BadFrame) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

impl Framing {
    const SIMPLE_START: u8 = 0x01;
    const SIMPLE_END: u8 = 0x17;

    /// Looks for one complete frame at the start of `buf`: its payload's position and the
    /// length of the whole frame, or `None` if more bytes are needed. Malformed input is
    /// reported as soon as the offending byte is there.
    #[inline]
    pub fn decode(self, buf: &[u8]) -> Result<Option<(Range<usize>, usize)>, BadFrame> {
        match self {
            Framing::Simple => {
                let Some(&first) = buf.first() else {
                    return Ok(None);
                };
                if first != Self::SIMPLE_START {
                    return Err(BadFrame::StartByte(first));
                }
                let Some(&[hi, lo]) = buf.get(1..3) else {
                    return Ok(None);
                };
                let end = 3 + usize::from(u16::from_be_bytes([hi, lo]));
                match buf.get(end) {
                    None => Ok(None),
                    Some(&Self::SIMPLE_END) => Ok(Some((3..end, end + 1))),
                    Some(&other) => Err(BadFrame::EndByte(other)),
                }
            }
            Framing::U32 { max } => {
                let Some(&[a, b, c, d]) = buf.get(..4) else {
                    return Ok(None);
                };
                let announced = u32::from_be_bytes([a, b, c, d]);
                let len = announced as usize;
                if len > max {
                    return Err(BadFrame::TooLarge { announced, max });
                }
                let end = 4 + len;
                if buf.len() < end {
                    return Ok(None);
                }
                Ok(Some((4..end, end)))
            }
        }
    }

    /// Appends one frame carrying `payload` to `out`. Only called with payloads that came out
    /// of [`decode`](Framing::decode) in the same framing, so they always fit.
    #[inline]
    pub fn encode(self, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            Framing::Simple => {
                let len = u16::try_from(payload.len()).expect("SimpleFrame payload over 64 KiB");
                out.reserve(payload.len() + 4);
                out.push(Self::SIMPLE_START);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(payload);
                out.push(Self::SIMPLE_END);
            }
            Framing::U32 { .. } => {
                let len = u32::try_from(payload.len()).expect("u32 frame payload over 4 GiB");
                out.reserve(payload.len() + 4);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(payload);
            }
        }
    }

    /// Decodes every complete frame at the start of `buf`, appends its echo to `out`, and
    /// returns how many bytes of `buf` those frames occupy. A `BLOCK` frame first sleeps
    /// `block` (see [`maybe_block`]).
    pub fn echo_all(
        self,
        buf: &[u8],
        out: &mut Vec<u8>,
        block: Duration,
    ) -> Result<usize, BadFrame> {
        let mut pos = 0;
        while let Some((payload, consumed)) = self.decode(&buf[pos..])? {
            let payload = &buf[pos..][payload];
            maybe_block(payload, block);
            self.encode(payload, out);
            pos += consumed;
        }
        Ok(pos)
    }

    /// Echoes the frames in `leftover` followed by `data` into `out`, leaving in `leftover` only
    /// the bytes of a trailing incomplete frame.
    ///
    /// `leftover` stays unallocated as long as frames arrive whole, and is freed once the frame
    /// it holds completes, so an idle connection keeps no read buffer.
    ///
    /// # Errors
    ///
    /// Malformed input. `out` then already holds the replies to the frames before it, which the
    /// caller writes before closing the connection (as hydrogen does).
    pub fn echo_ingest(
        self,
        leftover: &mut Vec<u8>,
        data: &[u8],
        out: &mut Vec<u8>,
        block: Duration,
    ) -> Result<(), BadFrame> {
        if leftover.is_empty() {
            let used = self.echo_all(data, out, block)?;
            leftover.extend_from_slice(&data[used..]);
            return Ok(());
        }
        leftover.extend_from_slice(data);
        let used = self.echo_all(leftover, out, block)?;
        if used == leftover.len() {
            *leftover = Vec::new();
        } else if used > 0 {
            leftover.drain(..used);
            if leftover.capacity() > LEFTOVER_SHRINK_ABOVE
                && leftover.len() < leftover.capacity() / 4
            {
                leftover.shrink_to(leftover.len());
            }
        }
        Ok(())
    }
}

/// The command line every server takes (see the module documentation).
#[derive(Debug, Clone, Parser)]
#[command(
    // A flag given twice: the last one counts, as with the hand-written parsers before.
    args_override_self = true,
    about = "An echo server for the benchmark suite: every frame comes back on its connection.",
    after_help = "Prints `listening on ADDR` once bound; exits with status 0 on SIGINT or SIGTERM."
)]
pub struct ServerCli {
    /// Address to listen on (port 0: any free port)
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0", value_parser = resolve)]
    pub addr: SocketAddr,
    /// Wire format
    #[arg(long, value_enum, default_value_t = FramingName::U32)]
    pub framing: FramingName,
    /// Worker threads
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub threads: usize,
    /// Largest u32 payload accepted (1048576: 1 MiB)
    #[arg(long, value_name = "BYTES", default_value_t = U32_MAX_FRAME as u32)]
    pub max_frame: u32,
    /// A frame whose payload starts with `BLOCK` sleeps N ms (blocking its thread) before its
    /// echo
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = RangedU64ValueParser::<u64>::new().range(..=3_600_000))]
    pub block_ms: u64,
    /// hydrogen_echo only: Config::max_buffered (default none); the other servers refuse it
    #[arg(long, value_name = "BYTES",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_buffered: Option<usize>,
    /// Serve TLS with the certificate chain in this PEM file (with --tls-key); tokio_echo, and
    /// hydrogen_echo when built with the `hydrogen-tls` feature; the other servers refuse it
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// hydrogen_echo only: Config::proxy_protocol (every connection starts with a PROXY v1 or
    /// v2 header, from loopback); the other servers refuse it
    #[arg(long)]
    pub proxy_protocol: bool,
}

/// The names of the framings on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FramingName {
    /// 0x01, u16 BE length, payload, 0x17
    Simple,
    /// u32 BE length, payload
    U32,
}

/// `--addr`: the first address `HOST:PORT` resolves to.
fn resolve(v: &str) -> Result<SocketAddr, String> {
    v.to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "resolves to nothing".to_string())
}

/// The parsed command line, as the servers use it.
#[derive(Debug, Clone)]
pub struct ServerArgs {
    /// Where to listen (port 0: any free port).
    pub addr: SocketAddr,
    /// The framing of every connection.
    pub framing: Framing,
    /// Worker threads.
    pub threads: usize,
    /// The largest `u32` payload accepted (`--max-frame`); also inside `framing` when it is
    /// [`Framing::U32`].
    pub max_frame: usize,
    /// How long a `BLOCK` frame blocks its thread before the echo (`--block-ms`; zero: never).
    pub block: Duration,
    /// `--max-buffered`: hydrogen's `Config::max_buffered`. The tokio and mio servers refuse
    /// it (see [`refuse_max_buffered`]).
    pub max_buffered: Option<usize>,
    /// `--tls-cert` and `--tls-key`: serve TLS with these PEM files. Only tokio_echo and a
    /// hydrogen_echo built with the `hydrogen-tls` feature do; the others refuse it (see
    /// [`refuse_tls`]).
    pub tls: Option<TlsFiles>,
    /// `--proxy-protocol`: hydrogen's `Config::proxy_protocol` (the default `proxy_from`,
    /// loopback, trusts the load generator). The other servers refuse it (see
    /// [`refuse_proxy_protocol`]).
    pub proxy_protocol: bool,
}

/// The PEM files of `--tls-cert` and `--tls-key` (always given together).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

impl From<ServerCli> for ServerArgs {
    fn from(cli: ServerCli) -> ServerArgs {
        let max_frame = cli.max_frame as usize;
        ServerArgs {
            addr: cli.addr,
            framing: match cli.framing {
                FramingName::Simple => Framing::Simple,
                FramingName::U32 => Framing::U32 { max: max_frame },
            },
            threads: cli.threads,
            max_frame,
            block: Duration::from_millis(cli.block_ms),
            max_buffered: cli.max_buffered,
            tls: match (cli.tls_cert, cli.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                // clap requires each with the other.
                _ => None,
            },
            proxy_protocol: cli.proxy_protocol,
        }
    }
}

/// The clap command of the server called `name`.
fn command(name: &'static str) -> clap::Command {
    ServerCli::command().name(name).bin_name(name)
}

/// Parses the command line. `--help` prints the usage and exits with status 0; an error
/// prints it on stderr and exits with status 2.
pub fn parse_args(name: &'static str) -> ServerArgs {
    parse_with(command(name))
}

/// [`parse_args`] for a server that does another job than the echo (the chat servers of the
/// fan-out benchmark): the same flags, with `about` as the description in `--help`.
pub fn parse_args_about(name: &'static str, about: &'static str) -> ServerArgs {
    parse_with(command(name).about(about))
}

fn parse_with(mut command: clap::Command) -> ServerArgs {
    let matches = command.get_matches_mut();
    ServerCli::from_arg_matches(&matches)
        .unwrap_or_else(|err| err.format(&mut command).exit())
        .into()
}

/// For the servers without `Config::max_buffered` (tokio, mio): `--max-buffered` prints an
/// error and the usage on stderr and exits with status 2, rather than being silently ignored.
pub fn refuse_max_buffered(name: &'static str, args: &ServerArgs) {
    if args.max_buffered.is_some() {
        command(name)
            .error(
                ErrorKind::ArgumentConflict,
                "--max-buffered is only supported by hydrogen_echo",
            )
            .exit();
    }
}

/// For the servers without a PROXY protocol reader (all but hydrogen_echo): `--proxy-protocol`
/// prints an error and the usage on stderr and exits with status 2, rather than taking the
/// header for the connection's first frame.
pub fn refuse_proxy_protocol(name: &'static str, args: &ServerArgs) {
    if args.proxy_protocol {
        usage_error(name, "--proxy-protocol is only supported by hydrogen_echo");
    }
}

/// For the servers that do not speak TLS (mio_echo, the chat servers): `--tls-cert` prints an
/// error and the usage on stderr and exits with status 2, rather than serving plain TCP to a
/// client that expects TLS.
pub fn refuse_tls(name: &'static str, args: &ServerArgs) {
    if args.tls.is_some() {
        usage_error(name, "--tls-cert/--tls-key: this server does not speak TLS");
    }
}

/// Prints `message` and the usage of the server `name` on stderr, and exits with status 2.
pub fn usage_error(name: &'static str, message: &str) -> ! {
    command(name)
        .error(ErrorKind::ArgumentConflict, message)
        .exit()
}

/// Raises the soft limit on open files to the hard limit, so that up to 15,000 connections fit.
/// A failure is reported on stderr and otherwise ignored.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                eprintln!("warning: cannot raise RLIMIT_NOFILE from {soft} to {hard}: {err}");
            }
        }
        Ok(_) => {}
        Err(err) => eprintln!("warning: cannot read RLIMIT_NOFILE: {err}"),
    }
}

/// Prints the one line the suite waits for, `listening on ADDR`, and flushes it.
pub fn print_listening(addr: SocketAddr) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}

/// A non-blocking listening socket on `addr` with `SO_REUSEADDR` (and `SO_REUSEPORT` if asked)
/// and a backlog of [`BACKLOG`].
pub fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Prints `error` on stderr and exits with status 1.
pub fn fail(name: &str, error: impl std::fmt::Display) -> ! {
    eprintln!("{name}: {error}");
    process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(framing: Framing, chunks: &[&[u8]]) -> Result<(Vec<u8>, usize), BadFrame> {
        let mut leftover = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            framing.echo_ingest(&mut leftover, chunk, &mut out, Duration::ZERO)?;
        }
        Ok((out, leftover.len()))
    }

    #[test]
    fn simple_frames_echo_whole_and_split() {
        let mut wire = Vec::new();
        for p in [&b"hello"[..], b"", &[0x17; 300]] {
            Framing::Simple.encode(p, &mut wire);
        }
        assert_eq!(&wire[..9], [1, 0, 5, b'h', b'e', b'l', b'l', b'o', 0x17]);
        for split in 0..=wire.len() {
            let (a, b) = wire.split_at(split);
            assert_eq!(echo(Framing::Simple, &[a, b]).unwrap(), (wire.clone(), 0));
        }
        assert_eq!(echo(Framing::Simple, &[&[2]]), Err(BadFrame::StartByte(2)));
        assert_eq!(
            echo(Framing::Simple, &[&[1, 0, 1, b'x', 0x18]]),
            Err(BadFrame::EndByte(0x18))
        );
    }

    const U32: Framing = Framing::U32 { max: U32_MAX_FRAME };

    #[test]
    fn u32_frames_echo_and_bound() {
        let mut wire = Vec::new();
        for p in [&b"hello"[..], b"", &vec![7u8; U32_MAX_FRAME]] {
            U32.encode(p, &mut wire);
        }
        assert_eq!(&wire[..9], [0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        let chunks: Vec<&[u8]> = wire.chunks(1000).collect();
        assert_eq!(echo(U32, &chunks).unwrap(), (wire.clone(), 0));
        let over = (U32_MAX_FRAME as u32 + 1).to_be_bytes();
        assert_eq!(
            echo(U32, &[&over]),
            Err(BadFrame::TooLarge {
                announced: U32_MAX_FRAME as u32 + 1,
                max: U32_MAX_FRAME
            })
        );
        assert_eq!(echo(U32, &[&[0, 0, 0]]).unwrap(), (vec![], 3));
    }

    #[test]
    fn u32_bound_follows_max_frame() {
        let small = Framing::U32 { max: 10 };
        let mut wire = Vec::new();
        small.encode(&[1; 10], &mut wire);
        assert_eq!(echo(small, &[&wire]).unwrap(), (wire.clone(), 0));
        assert_eq!(
            echo(small, &[&11u32.to_be_bytes()]),
            Err(BadFrame::TooLarge {
                announced: 11,
                max: 10
            })
        );
        // 16 MiB: a prefix announcing 8,000,000 bytes is a frame still to come, not an error.
        let big = Framing::U32 { max: 16 << 20 };
        let prefix = 8_000_000u32.to_be_bytes();
        assert_eq!(big.decode(&prefix), Ok(None));
        assert!(U32.decode(&prefix).is_err());
    }

    #[test]
    fn block_frames() {
        assert!(is_block_frame(b"BLOCK"));
        assert!(is_block_frame(b"BLOCK and more"));
        assert!(!is_block_frame(b"BLOC"));
        assert!(!is_block_frame(b"xBLOCK"));
        assert!(!is_block_frame(b""));
        // A BLOCK frame is echoed like any other, after the sleep.
        let mut wire = Vec::new();
        U32.encode(b"BLOCK 1", &mut wire);
        U32.encode(b"ping", &mut wire);
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        let used = U32
            .echo_all(&wire, &mut out, Duration::from_millis(20))
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert_eq!((used, out), (wire.len(), wire.clone()));
    }

    fn args(v: &[&str]) -> Result<Option<ServerArgs>, clap::Error> {
        match ServerCli::try_parse_from(std::iter::once(&"hydrogen_echo").chain(v)) {
            Ok(cli) => Ok(Some(cli.into())),
            Err(e) if e.kind() == ErrorKind::DisplayHelp => Ok(None),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn clap_definition() {
        ServerCli::command().debug_assert();
        command("mio_echo").debug_assert();
    }

    #[test]
    fn arguments() {
        let a = args(&[]).unwrap().unwrap();
        assert_eq!(a.addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(a.framing, U32);
        assert_eq!(a.threads, 2);
        assert_eq!(a.max_frame, U32_MAX_FRAME);
        assert_eq!(a.block, Duration::ZERO);
        assert_eq!(a.max_buffered, None);
        assert_eq!(a.tls, None);
        assert!(!a.proxy_protocol);
        assert!(args(&["--proxy-protocol"]).unwrap().unwrap().proxy_protocol);
        assert!(args(&["--proxy-protocol=yes"]).is_err());
        let a = args(&["--tls-cert", "c.pem", "--tls-key", "/k.pem"])
            .unwrap()
            .unwrap();
        assert_eq!(
            a.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "/k.pem".into()
            })
        );
        let a = args(&[
            "--framing",
            "simple",
            "--threads",
            "3",
            "--addr",
            "127.0.0.1:9",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.framing, Framing::Simple);
        assert_eq!(a.threads, 3);
        assert_eq!(a.addr.port(), 9);
        assert!(args(&["--bogus"]).is_err());
        assert!(args(&["--threads", "0"]).is_err());
        assert!(args(&["--threads"]).is_err());
        assert!(args(&["--help"]).unwrap().is_none());
        assert!(args(&["-h"]).unwrap().is_none());
        let a = args(&["--threads", "3", "--threads", "4"])
            .unwrap()
            .unwrap();
        assert_eq!(a.threads, 4);

        let a = args(&[
            "--max-frame",
            "16777216",
            "--block-ms",
            "100",
            "--max-buffered",
            "67108864",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.framing, Framing::U32 { max: 16 << 20 });
        assert_eq!(a.max_frame, 16 << 20);
        assert_eq!(a.block, Duration::from_millis(100));
        assert_eq!(a.max_buffered, Some(64 << 20));
        // The bound is kept with the simple framing too (where it does not apply).
        let a = args(&["--framing", "simple", "--max-frame", "5"])
            .unwrap()
            .unwrap();
        assert_eq!((a.framing, a.max_frame), (Framing::Simple, 5));
        for bad in [
            &["--max-frame", "-1"][..],
            &["--max-frame", "4294967296"],
            &["--max-frame"],
            &["--block-ms", "x"],
            &["--block-ms", "3600001"],
            &["--max-buffered", "0"],
            &["--max-buffered", "lots"],
            &["--framing", "json"],
            &["--tls-cert", "c.pem"],
            &["--tls-key", "k.pem"],
            &["--tls-cert"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }
}
