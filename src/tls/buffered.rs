//! The buffered session: a `rustls::ServerConnection`, which keeps its own incoming-record and
//! output buffers, between the socket and hydrogen's frame decoder and write queue. What
//! [`TlsStream::new`](super::TlsStream::new) runs; [`TlsTransport`](super::TlsTransport) uses
//! the unbuffered session instead (`unbuffered.rs`), which keeps no buffer while idle.
//!
//! Sans-I/O all the way: rustls only ever sees the socket through `read_tls` and `write_tls`,
//! one non-blocking call at a time, never through `rustls::Stream` or `complete_io` (which
//! loop until the session is satisfied and can spin or deadlock on a non-blocking socket).

use std::fmt;
use std::io::{self, BufRead, IoSlice, Write};
use std::os::fd::{AsFd, BorrowedFd};

use rustls::ServerConnection;

use super::stream::{TLS_BUFFER_LIMIT, TlsSocket, end_of_stream, session_info};
use crate::codec::{Codec, Deframer, WriteQueue};
use crate::{Frames, RecvStatus, SharedFrame, Stream, TlsInfo};

pub(super) struct Buffered<C, S> {
    socket: S,
    tls: ServerConnection,
    /// The plaintext's read side, and the codec.
    input: Deframer<C>,
    /// Encoded frames not yet handed to rustls.
    output: WriteQueue,
    /// Plaintext handed to rustls since its output was last written out: an estimate of the
    /// encrypted bytes it holds, for [`pending_output`](Stream::pending_output).
    in_tls: usize,
    pub(super) read_budget: usize,
    /// rustls failed (a protocol error, its alert queued or sent) or the framing did: nothing
    /// more is read.
    failed: bool,
    /// The peer's `close_notify` arrived (or the TCP stream ended): nothing more is read.
    read_done: bool,
    /// rustls processed the peer's `close_notify`.
    peer_closed: bool,
}

impl<C: Codec, S: TlsSocket> Buffered<C, S> {
    /// Runs `session` (a new rustls server session) over `socket` (non-blocking, as the server
    /// gives it), framing the plaintext with `codec`.
    pub(super) fn new(
        mut session: ServerConnection,
        socket: S,
        codec: C,
        read_budget: usize,
    ) -> Buffered<C, S> {
        session.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Buffered {
            socket,
            tls: session,
            input: Deframer::new(codec),
            output: WriteQueue::new(),
            in_tls: 0,
            read_budget,
            failed: false,
            read_done: false,
            peer_closed: false,
        }
    }

    /// The rustls session.
    pub(super) fn session(&self) -> &ServerConnection {
        &self.tls
    }

    pub(super) fn codec(&self) -> &C {
        self.input.codec()
    }

    pub(super) fn get_ref(&self) -> &S {
        &self.socket
    }

    /// Moves the plaintext rustls holds into the frame decoder. Called after every
    /// `process_new_packets`, so rustls's plaintext buffer (16 KiB) never fills: a full one
    /// would make `read_tls` refuse, with the socket still readable and no new edge to come.
    fn drain_plaintext(&mut self, frames: &mut Frames) -> io::Result<()> {
        let mut reader = self.tls.reader();
        loop {
            let taken = match reader.fill_buf() {
                Ok([]) => return Ok(()), // `close_notify`: the end, seen by the caller
                Ok(plain) => {
                    let n = plain.len();
                    self.input.ingest(plain, frames)?;
                    n
                }
                // Nothing more for now, or the TCP stream ended without `close_notify`
                // (the caller reports that).
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            reader.consume(taken);
        }
    }

    /// Lets rustls process what `read_tls` gave it and takes the plaintext out. On a TLS
    /// error the alert rustls queued is written at once (as far as the socket takes it) and
    /// nothing is read again.
    fn process(&mut self, frames: &mut Frames) -> io::Result<()> {
        match self.tls.process_new_packets() {
            Ok(state) => self.peer_closed |= state.peer_has_closed(),
            Err(err) => {
                self.failed = true;
                let _ = self.write_tls_out();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TLS error: {err}"),
                ));
            }
        }
        if !self.tls.is_handshaking() {
            // rustls queues its answer to a peer's KeyUpdate until the next record it sends;
            // an empty write moves it into the output now (it sends no empty record), so an
            // idle connection answers too.
            let _ = self.tls.writer().write(&[]);
        }
        if let Err(err) = self.drain_plaintext(frames) {
            self.failed = true;
            return Err(err);
        }
        Ok(())
    }

    /// Writes rustls's encrypted output to the socket until none is left (`Ok(true)`) or the
    /// socket is full (`Ok(false)`).
    fn write_tls_out(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted no bytes",
                    ));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.in_tls = 0;
        Ok(true)
    }

    /// How the stream ended once reading is over (see [`end_of_stream`]).
    fn end(&self) -> io::Result<RecvStatus> {
        end_of_stream(self.tls.is_handshaking(), self.peer_closed, &self.input)
    }
}

impl<C: Codec, S: TlsSocket> Stream for Buffered<C, S> {
    /// Reads TLS records until the socket reports `WouldBlock` ([`RecvStatus::Drained`]), the
    /// peer closes ([`RecvStatus::Eof`] after its `close_notify`) or the read budget is spent
    /// ([`RecvStatus::MoreAvailable`]), pushing every complete frame of the plaintext.
    ///
    /// # Errors
    ///
    /// - A TLS protocol error (rustls's alert is sent), or malformed framing in the plaintext:
    ///   [`io::ErrorKind::InvalidData`].
    /// - The TCP stream ended without `close_notify`, during the handshake, or in the middle
    ///   of a frame: [`io::ErrorKind::UnexpectedEof`], after the frames before it.
    /// - Any socket error other than `WouldBlock` and `Interrupted`.
    fn recv(&mut self, frames: &mut Frames) -> io::Result<RecvStatus> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS session has failed",
            ));
        }
        if self.read_done {
            return self.end();
        }
        let mut read = 0;
        loop {
            // rustls reads a record or so per call: loop until the socket is drained, as
            // edge-triggered readiness needs.
            let got = match self.tls.read_tls(&mut self.socket) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.process(frames)?;
                    return if self.peer_closed {
                        self.read_done = true;
                        self.end()
                    } else {
                        Ok(RecvStatus::Drained)
                    };
                }
                Err(e) => return Err(e),
            };
            self.process(frames)?;
            if got == 0 || self.peer_closed {
                // The TCP stream's end, or `close_notify` (after which rustls reads no more).
                self.read_done = true;
                return self.end();
            }
            read += got;
            if read >= self.read_budget {
                return Ok(RecvStatus::MoreAvailable);
            }
        }
    }

    /// Encodes `frame` onto the write queue. Nothing is written until [`flush`](Stream::flush).
    ///
    /// # Errors
    ///
    /// The codec's [`FrameError`](crate::FrameError) as [`io::ErrorKind::InvalidData`]; the
    /// queue is then unchanged.
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.output.push(self.input.codec_mut(), frame)?;
        Ok(())
    }

    /// Writes rustls's output, then hands it more of the queue and writes again, until the
    /// queue is empty or the socket reports `WouldBlock`. Before the handshake is over only
    /// rustls's own messages go out.
    ///
    /// # Errors
    ///
    /// Any socket error other than `WouldBlock` and `Interrupted`, or
    /// [`io::ErrorKind::WriteZero`] if the socket accepts no bytes.
    fn flush(&mut self) -> io::Result<()> {
        loop {
            if !self.write_tls_out()? {
                return Ok(());
            }
            if self.output.is_empty() || self.tls.is_handshaking() {
                return Ok(());
            }
            let before = self.output.pending();
            self.output.write_to(&mut IntoTls(&mut self.tls))?;
            self.in_tls += before - self.output.pending();
            if before == self.output.pending() {
                return Ok(()); // rustls took nothing (its session failed): nothing to write
            }
        }
    }

    /// Queues the frame's shared encoding as [`Framed`](crate::Framed) does (a small one
    /// copied, a larger one by reference); it is encrypted once it reaches the front of the
    /// queue.
    fn send_shared(&mut self, frame: &SharedFrame) -> io::Result<()> {
        let wire = frame.wire(self.input.codec_mut())?;
        if wire.len() <= crate::framed::SHARED_COPY {
            self.output.push_bytes(&wire);
        } else {
            self.output.push_shared(wire.into_owned());
        }
        Ok(())
    }

    /// The queue's bytes, plus an estimate of rustls's encrypted output (never 0 while it has
    /// some, handshake messages and alerts included).
    fn pending_output(&self) -> usize {
        let tls = if self.tls.wants_write() {
            self.in_tls.max(1)
        } else {
            0
        };
        self.output.pending() + tls
    }

    fn buffered_input(&self) -> usize {
        self.input.buffered_input()
    }

    fn has_partial_frame(&self) -> bool {
        self.input.has_partial_frame()
    }

    /// Once the TLS handshake is over.
    fn is_established(&self) -> bool {
        !self.tls.is_handshaking()
    }

    /// The ALPN protocol, the SNI name, the protocol version and the cipher suite.
    fn tls_info(&self) -> Option<TlsInfo> {
        Some(session_info(&self.tls, self.tls.server_name()))
    }

    /// Writes what the socket takes at once of the queue, then `close_notify` (unless the
    /// session failed: its alert goes instead), then shuts the socket down.
    fn shutdown(&mut self) -> io::Result<()> {
        if !self.failed {
            let _ = self.flush();
            self.tls.send_close_notify();
        }
        let _ = self.write_tls_out();
        self.socket.shutdown_both()
    }
}

/// rustls's plaintext writer as a non-blocking writer for [`WriteQueue::write_to`]: a full
/// buffer (no byte taken) is `WouldBlock`, so the rest stays queued, in order.
struct IntoTls<'a>(&'a mut ServerConnection);

impl Write for IntoTls<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        took(self.0.writer().write(buf)?, buf.is_empty())
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let empty = bufs.iter().all(|b| b.is_empty());
        took(self.0.writer().write_vectored(bufs)?, empty)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn took(n: usize, empty: bool) -> io::Result<usize> {
    if n == 0 && !empty {
        Err(io::ErrorKind::WouldBlock.into())
    } else {
        Ok(n)
    }
}

impl<C, S: AsFd> AsFd for Buffered<C, S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl<C: fmt::Debug, S: fmt::Debug> fmt::Debug for Buffered<C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("socket", &self.socket)
            .field("codec", self.input.codec())
            .field("handshaking", &self.tls.is_handshaking())
            .field("buffered_in", &self.input.partial().len())
            .field("pending_out", &self.output.pending())
            .field("read_budget", &self.read_budget)
            .finish()
    }
}
