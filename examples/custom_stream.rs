//! A `Stream` of your own: newline-delimited text instead of the built-in binary framings.
//!
//! Most servers use [`hydrogen::Framed`] with a built-in codec. This example shows what it takes
//! to implement [`hydrogen::Stream`] yourself, following its contract (see `src/stream.rs`):
//!
//! - `recv` reads until the socket says `WouldBlock` (→ `Drained`), or stops after a per-call
//!   byte budget (→ `MoreAvailable`), or sees the end of the stream (→ `Eof`);
//! - `send` only queues; `flush` writes until the queue is empty or the socket says
//!   `WouldBlock`, keeping the unwritten rest;
//! - malformed input (here: a line over 64 KiB) is an `InvalidData` error, which the server
//!   reports as a protocol error and closes the connection.
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
//! The line splitting is a pure function with unit tests: `cargo test --example custom_stream`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitCode;

use hydrogen::{CloseReason, Config, Frames, Handler, RecvStatus, Server, Socket, Stream};

/// The longest line accepted or sent, in bytes, without its line ending.
const MAX_LINE: usize = 64 * 1024;

/// Bytes one `recv` call reads at most before it lets other connections have a turn.
const READ_BUDGET: usize = 256 * 1024;

/// Size of each read from the socket.
const CHUNK: usize = 16 * 1024;

/// An empty write queue keeps its allocation only up to this capacity.
const WBUF_KEEP: usize = 4 * 1024;

mod support;

const USAGE: &str = "\
Usage: custom_stream [--addr HOST:PORT]

A line-based server (newline-delimited text) built on a hand-written hydrogen::Stream:
every line received is sent back in upper case.

Options:
  --addr HOST:PORT   address to listen on (default 127.0.0.1:1338; [::1]:PORT for IPv6)
  -h, --help         print this help
";

/// Newline-delimited text over a non-blocking TCP socket.
struct LineStream {
    tcp: TcpStream,
    /// Received bytes of a line whose `\n` has not arrived yet (and nothing else between calls).
    rbuf: Vec<u8>,
    /// Queued output; `wbuf[..wpos]` is already written.
    wbuf: Vec<u8>,
    wpos: usize,
}

impl LineStream {
    fn new(tcp: TcpStream) -> LineStream {
        LineStream {
            tcp,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
        }
    }

    /// Appends `data` to the partial line and pushes every line it completes.
    fn ingest(&mut self, data: &[u8], frames: &mut Frames) -> io::Result<()> {
        // `rbuf` holds no '\n' between calls, so the search can start at the new bytes.
        let searched = self.rbuf.len();
        self.rbuf.extend_from_slice(data);
        let used = split_lines(&self.rbuf, searched, MAX_LINE, |line| frames.push(line))?;
        self.rbuf.drain(..used);
        if self.rbuf.is_empty() && self.rbuf.capacity() > CHUNK {
            self.rbuf = Vec::new(); // a long line is done: do not keep its memory around
        }
        Ok(())
    }
}

/// Finds the complete lines in `buf` and passes each, without its `\n` (and without a `\r`
/// just before it), to `emit`. Returns how many bytes of `buf` the lines used; the rest is the
/// start of a line that is not complete yet.
///
/// `searched` says how many bytes at the start of `buf` are already known to hold no `\n`, so a
/// long line arriving in many small reads is not scanned again and again.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] if a line is longer than `max_line` bytes (line ending not
/// counted), or if the incomplete rest already is. Lines before it have been emitted.
fn split_lines(
    buf: &[u8],
    searched: usize,
    max_line: usize,
    mut emit: impl FnMut(&[u8]),
) -> io::Result<usize> {
    let mut start = 0;
    let mut from = searched.min(buf.len());
    while let Some(offset) = buf[from..].iter().position(|&b| b == b'\n') {
        let end = from + offset;
        let line = strip_cr(&buf[start..end]);
        if line.len() > max_line {
            return Err(line_too_long(max_line));
        }
        emit(line);
        start = end + 1;
        from = start;
    }
    // The rest is too long already, unless only by a '\r' that the '\n' still to come ends.
    if strip_cr(&buf[start..]).len() > max_line {
        return Err(line_too_long(max_line));
    }
    Ok(start)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn line_too_long(max_line: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("line longer than {max_line} bytes"),
    )
}

impl Stream for LineStream {
    fn recv(&mut self, frames: &mut Frames) -> io::Result<RecvStatus> {
        let mut chunk = [0u8; CHUNK];
        let mut read = 0;
        loop {
            if read >= READ_BUDGET {
                // More may be waiting: the server calls us again after other connections.
                return Ok(RecvStatus::MoreAvailable);
            }
            match (&self.tcp).read(&mut chunk) {
                Ok(0) => {
                    // End of stream: a last line without '\n' still counts.
                    if !self.rbuf.is_empty() {
                        frames.push(strip_cr(&self.rbuf));
                        self.rbuf = Vec::new();
                    }
                    return Ok(RecvStatus::Eof);
                }
                Ok(n) => {
                    read += n;
                    self.ingest(&chunk[..n], frames)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(RecvStatus::Drained),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
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
        if line.len() > MAX_LINE {
            return Err(line_too_long(MAX_LINE));
        }
        self.wbuf.reserve(line.len() + 1);
        self.wbuf.extend_from_slice(line);
        self.wbuf.push(b'\n');
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.wpos < self.wbuf.len() {
            // std's TcpStream writes with MSG_NOSIGNAL: a closed peer gives EPIPE, not SIGPIPE.
            match (&self.tcp).write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Keep the unwritten rest; drop the written part once it is most of it.
                    if self.wpos > self.wbuf.len() / 2 {
                        self.wbuf.drain(..self.wpos);
                        self.wpos = 0;
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.wpos = 0;
        if self.wbuf.capacity() > WBUF_KEEP {
            self.wbuf = Vec::new();
        } else {
            self.wbuf.clear();
        }
        Ok(())
    }

    fn pending_output(&self) -> usize {
        self.wbuf.len() - self.wpos
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

/// Answers every line with the line in upper case.
struct Upper;

impl Handler<LineStream> for Upper {
    fn on_new_connection(&self, tcp: TcpStream, _peer: SocketAddr) -> io::Result<LineStream> {
        tcp.set_nodelay(true)?;
        Ok(LineStream::new(tcp))
    }

    fn on_frame(&self, socket: &Socket, line: &[u8]) {
        // Fails only if the connection is already closing.
        let _ = socket.send(&line.to_ascii_uppercase());
    }

    fn on_connection_removed(&self, socket: &Socket, reason: &CloseReason) {
        // A line over the limit shows up here as a protocol error.
        if reason.is_error() {
            tracing::warn!(peer = %socket.peer_addr(), %reason, "connection dropped");
        }
    }
}

fn parse_args() -> Result<Option<Config>, String> {
    let mut config = Config {
        port: 1338,
        ..Config::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => {
                let value = args.next().ok_or("--addr needs a value")?;
                (config.addr, config.port) = support::parse_addr(&value)?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(config))
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(Some(config)) => config,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("error: {err}\n(run with --help for usage)");
            return ExitCode::from(2);
        }
    };
    support::init_logging();

    let server = match Server::<LineStream, Upper>::bind(config) {
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
    if let Err(err) = server.run(Upper) {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(buf: &[u8], searched: usize, max: usize) -> io::Result<(Vec<Vec<u8>>, usize)> {
        let mut out = Vec::new();
        let used = split_lines(buf, searched, max, |l| out.push(l.to_vec()))?;
        Ok((out, used))
    }

    #[test]
    fn splits_complete_lines_and_keeps_the_rest() {
        let (got, used) = lines(b"one\ntwo\r\n\nthr", 0, 100).unwrap();
        assert_eq!(got, [&b"one"[..], b"two", b""]);
        assert_eq!(used, 10);
    }

    #[test]
    fn only_a_final_cr_is_stripped() {
        let (got, _) = lines(b"a\rb\r\r\n", 0, 100).unwrap();
        assert_eq!(got, [&b"a\rb\r"[..]]);
    }

    #[test]
    fn nothing_complete_uses_nothing() {
        assert_eq!(lines(b"", 0, 100).unwrap(), (vec![], 0));
        assert_eq!(lines(b"partial", 0, 100).unwrap(), (vec![], 0));
    }

    #[test]
    fn searched_prefix_is_not_scanned_again() {
        // The caller promises the first 3 bytes hold no '\n'; the line still starts at 0.
        let (got, used) = lines(b"abcde\nf", 3, 100).unwrap();
        assert_eq!(got, [&b"abcde"[..]]);
        assert_eq!(used, 6);
        // A promise past the end is harmless.
        assert_eq!(lines(b"ab", 10, 100).unwrap(), (vec![], 0));
    }

    #[test]
    fn line_length_limit() {
        // Exactly the limit, with or without '\r', is fine.
        assert!(lines(b"abcd\n", 0, 4).is_ok());
        assert!(lines(b"abcd\r\n", 0, 4).is_ok());
        assert!(lines(b"abcd\r", 0, 4).is_ok()); // the '\n' may still come
        // One more byte is not, complete or not.
        let err = lines(b"abcde\n", 0, 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = lines(b"ok\nabcde", 0, 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(lines(b"abcde\r", 0, 4).is_err());
    }

    #[test]
    fn lines_before_a_bad_one_are_emitted() {
        let mut out = Vec::new();
        let res = split_lines(b"ok\ntoolong\n", 0, 4, |l| out.push(l.to_vec()));
        assert!(res.is_err());
        assert_eq!(out, [b"ok".to_vec()]);
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
