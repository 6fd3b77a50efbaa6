//! A `Stream` of your own: newline-delimited text instead of the built-in binary framings.
//!
//! Most servers use [`hydrogen::Framed`] with a built-in codec. This example shows what it takes
//! to implement [`hydrogen::Stream`] yourself, following its contract (see `src/stream.rs`), on
//! the I/O-free halves `Framed` itself is made of:
//!
//! - a [`Codec`] for the framing: `Lines`, which finds the `\n`;
//! - a [`Deframer`] for the read side: `recv` hands it the socket, and it reads until the
//!   socket says `WouldBlock` (→ `Drained`), or stops after a per-call byte budget
//!   (→ `MoreAvailable`), or sees the end of the stream (→ `Eof`), keeping the bytes of an
//!   incomplete line;
//! - a [`WriteQueue`] for the write side: `send` only queues; `flush` writes until the queue is
//!   empty or the socket says `WouldBlock`, keeping the unwritten rest;
//! - malformed input (here: a line over 64 KiB) is an `InvalidData` error, which the server
//!   reports as a protocol error and closes the connection.
//!
//! Swap the `TcpStream` for another transport (a Unix socket, a TLS session feeding decrypted
//! bytes to [`Deframer::ingest`]) and the rest stays the same.
//!
//! Each line a client sends is answered with the same line in upper case. Lines end with `\n`;
//! a `\r` before it is dropped; a last line without `\n` before the client closes is delivered
//! too.
//!
//! Run it and talk to it with any line-based tool:
//!
//! ```text
//! cargo run --example custom_stream                 # listens on 127.0.0.1:1338
//! cargo run --example custom_stream -- --addr 127.0.0.1:5000
//! printf 'hello\nworld\n' | nc -q1 127.0.0.1 1338   # prints HELLO and WORLD
//! ```
//!
//! The line framing is tested without sockets: `cargo test --example custom_stream`.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitCode;

use hydrogen::codec::{Codec, Decoded, Deframer, FrameError, WriteQueue};
use hydrogen::{
    Accepted, CloseReason, Config, Frames, Handler, RecvStatus, Server, Socket, Stream, Transport,
};

/// The longest line accepted or sent, in bytes, without its line ending.
const MAX_LINE: usize = 64 * 1024;

/// Bytes one `recv` call reads at most before it lets other connections have a turn.
const READ_BUDGET: usize = 256 * 1024;

/// An empty write queue keeps its allocation only up to this capacity.
const WBUF_KEEP: usize = 4 * 1024;

mod support;

/// A line-based server (newline-delimited text) built on a hand-written hydrogen::Stream:
/// every line received is sent back in upper case.
#[derive(Debug, clap::Parser)]
#[command(name = "custom_stream")]
struct Cli {
    /// Address to listen on, HOST:PORT ([::1]:PORT for IPv6).
    #[arg(long, default_value = "127.0.0.1:1338", value_parser = support::parse_addr)]
    addr: (String, u16),
}

/// Newline-delimited text: a line, then `\n`. On decoding, a `\r` just before the `\n` is not
/// part of the line.
#[derive(Debug)]
struct Lines {
    /// The longest line, line ending not counted.
    max_line: usize,
    /// How many bytes at the start of the frame being decoded are known to hold no `\n`, so a
    /// long line arriving in many small reads is not scanned again and again. This relies on
    /// the way a `Deframer` calls `decode`: after `Ok(None)`, the next call is given the same
    /// bytes followed by new ones.
    searched: usize,
}

impl Lines {
    fn new(max_line: usize) -> Lines {
        Lines {
            max_line,
            searched: 0,
        }
    }

    fn too_long(&self, len: usize) -> FrameError {
        FrameError::TooLarge {
            len: len as u64,
            max: self.max_line,
        }
    }
}

impl Codec for Lines {
    /// Appends the line and `\n`. The caller checks that the line holds no `\n` (see
    /// `LineStream::send`).
    fn encode(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if line.len() > self.max_line {
            return Err(self.too_long(line.len()));
        }
        out.reserve(line.len() + 1);
        out.extend_from_slice(line);
        out.push(b'\n');
        Ok(())
    }

    /// One line from the start of `buf`, without its `\n` (and a `\r` just before it).
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] if the line is longer than `max_line`, or if the incomplete rest
    /// already is (unless only by a `\r` that the `\n` still to come ends).
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, FrameError> {
        let from = self.searched.min(buf.len());
        let Some(offset) = buf[from..].iter().position(|&b| b == b'\n') else {
            let len = strip_cr(buf).len();
            if len > self.max_line {
                return Err(self.too_long(len));
            }
            self.searched = buf.len();
            return Ok(None);
        };
        self.searched = 0;
        let end = from + offset;
        let len = strip_cr(&buf[..end]).len();
        if len > self.max_line {
            return Err(self.too_long(len));
        }
        Ok(Some(Decoded {
            payload: 0..len,
            consumed: end + 1,
        }))
    }

    fn max_payload(&self) -> usize {
        self.max_line
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Newline-delimited text over a non-blocking TCP socket.
struct LineStream {
    tcp: TcpStream,
    /// Received bytes of a line whose `\n` has not arrived yet.
    input: Deframer<Lines>,
    /// Queued output.
    output: WriteQueue,
}

impl LineStream {
    fn new(tcp: TcpStream) -> LineStream {
        LineStream {
            tcp,
            input: Deframer::new(Lines::new(MAX_LINE)),
            output: WriteQueue::with_keep(WBUF_KEEP),
        }
    }
}

impl Stream for LineStream {
    fn recv(&mut self, frames: &mut Frames) -> io::Result<RecvStatus> {
        match self.input.read_from(&mut &self.tcp, READ_BUDGET, frames) {
            // End of stream in the middle of a line: a last line without '\n' still counts.
            Err(e)
                if e.kind() == io::ErrorKind::UnexpectedEof && self.input.has_partial_frame() =>
            {
                frames.push(strip_cr(self.input.partial()));
                Ok(RecvStatus::Eof)
            }
            other => other,
        }
    }

    fn send(&mut self, line: &[u8]) -> io::Result<()> {
        // An error here reaches the caller of `Socket::send` as `SendError::Rejected` and
        // leaves the connection open.
        if line.contains(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a line cannot contain '\\n'",
            ));
        }
        self.output.push(self.input.codec_mut(), line)?;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        // std's TcpStream writes with MSG_NOSIGNAL: a closed peer gives EPIPE, not SIGPIPE.
        self.output.write_to(&mut &self.tcp)
    }

    fn pending_output(&self) -> usize {
        self.output.pending()
    }

    fn buffered_input(&self) -> usize {
        self.input.buffered_input()
    }

    fn has_partial_frame(&self) -> bool {
        self.input.has_partial_frame()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        match self.tcp.shutdown(Shutdown::Both) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        }
    }
}

impl AsFd for LineStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.tcp.as_fd()
    }
}

/// The transport: every accepted connection becomes a `LineStream` (with `TCP_NODELAY` already
/// set, by `Config::nodelay`).
struct Lined;

impl Transport for Lined {
    type Stream = LineStream;

    fn open(&self, conn: Accepted) -> io::Result<LineStream> {
        Ok(LineStream::new(conn.into_tcp()?))
    }
}

/// Answers every line with the line in upper case.
struct Upper;

impl Handler for Upper {
    type Session = ();

    fn on_frame(&self, _: &mut (), socket: &Socket, line: &[u8]) {
        // Fails only if the connection is already closing.
        let _ = socket.send(&line.to_ascii_uppercase());
    }

    fn on_connection_removed(&self, _: (), socket: &Socket, reason: &CloseReason) {
        // A line over the limit shows up here as a protocol error.
        if reason.is_error() {
            tracing::warn!(peer = %socket.peer_addr(), %reason, "connection dropped");
        }
    }
}

fn main() -> ExitCode {
    let cli = <Cli as clap::Parser>::parse();
    let config = Config {
        addr: cli.addr.0,
        port: cli.addr.1,
        ..Config::default()
    };
    support::init_logging();

    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(addr) => println!("listening on {addr}"),
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    }
    // Runs until the process is interrupted; see `echo.rs` for a clean shutdown on signals.
    if let Err(err) = server.run_with(Lined, Upper) {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `reads` to a deframer with the `Lines` codec (at most `max` bytes a line), as a
    /// socket would deliver them; returns the lines and the bytes of the incomplete one.
    fn lines(reads: &[&[u8]], max: usize) -> io::Result<(Vec<Vec<u8>>, usize)> {
        let mut input = Deframer::new(Lines::new(max));
        let mut frames = Frames::new();
        for read in reads {
            input.ingest(read, &mut frames)?;
        }
        let got = frames.iter().map(<[u8]>::to_vec).collect();
        Ok((got, input.partial().len()))
    }

    #[test]
    fn splits_complete_lines_and_keeps_the_rest() {
        let (got, left) = lines(&[b"one\ntwo\r\n\nthr"], 100).unwrap();
        assert_eq!(got, [&b"one"[..], b"two", b""]);
        assert_eq!(left, 3);
        // The same, one byte at a time.
        let bytes: Vec<&[u8]> = b"one\ntwo\r\n\nthr".chunks(1).collect();
        assert_eq!(lines(&bytes, 100).unwrap(), (got, 3));
    }

    #[test]
    fn only_a_final_cr_is_stripped() {
        let (got, _) = lines(&[b"a\rb\r\r\n"], 100).unwrap();
        assert_eq!(got, [&b"a\rb\r"[..]]);
    }

    #[test]
    fn nothing_complete_uses_nothing() {
        assert_eq!(lines(&[b""], 100).unwrap(), (vec![], 0));
        assert_eq!(lines(&[b"partial"], 100).unwrap(), (vec![], 7));
    }

    #[test]
    fn searched_prefix_is_not_scanned_again() {
        let mut codec = Lines::new(100);
        assert_eq!(codec.decode(b"abc").unwrap(), None);
        assert_eq!(codec.searched, 3);
        // The first 3 bytes are known to hold no '\n'; the line still starts at 0.
        let line = codec.decode(b"abcde\nf").unwrap().unwrap();
        assert_eq!((line.payload, line.consumed), (0..5, 6));
        assert_eq!(codec.searched, 0, "the next line starts afresh");
        // A line arriving a byte at a time is whole in the end.
        let long = [b'x'; 5000];
        let mut reads: Vec<&[u8]> = long.chunks(1).collect();
        reads.push(b"\n");
        let (got, left) = lines(&reads, 5000).unwrap();
        assert_eq!((got, left), (vec![long.to_vec()], 0));
    }

    #[test]
    fn line_length_limit() {
        // Exactly the limit, with or without '\r', is fine.
        assert!(lines(&[b"abcd\n"], 4).is_ok());
        assert!(lines(&[b"abcd\r\n"], 4).is_ok());
        assert!(lines(&[b"abcd\r"], 4).is_ok()); // the '\n' may still come
        // One more byte is not, complete or not.
        let err = lines(&[b"abcde\n"], 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = lines(&[b"ok\nabcde"], 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(lines(&[b"abcde\r"], 4).is_err());
        assert!(lines(&[b"ab", b"c", b"de"], 4).is_err());
    }

    #[test]
    fn lines_before_a_bad_one_are_emitted() {
        let mut input = Deframer::new(Lines::new(4));
        let mut frames = Frames::new();
        assert!(input.ingest(b"ok\ntoolong\n", &mut frames).is_err());
        assert_eq!(frames.iter().collect::<Vec<_>>(), [b"ok"]);
    }

    #[test]
    fn encoding() {
        let mut out = WriteQueue::new();
        let mut codec = Lines::new(4);
        out.push(&mut codec, b"abcd").unwrap();
        out.push(&mut codec, b"").unwrap();
        assert_eq!(out.chunk(), b"abcd\n\n");
        assert!(out.push(&mut codec, b"abcde").is_err());
        assert_eq!(out.pending(), 6);
    }
    #[test]
    fn addresses() {
        assert_eq!(
            support::parse_addr("127.0.0.1:1338").unwrap(),
            ("127.0.0.1".into(), 1338)
        );
        assert_eq!(support::parse_addr("[::1]:80").unwrap(), ("::1".into(), 80));
        assert_eq!(
            support::parse_addr("localhost:0").unwrap(),
            ("localhost".into(), 0)
        );
        assert!(support::parse_addr("1338").is_err());
        assert!(support::parse_addr(":1338").is_err());
        assert!(support::parse_addr("host:99999").is_err());
    }
}
