//! [`TlsStream`]: a rustls server session between a socket and hydrogen's frame decoder and
//! write queue. The session is rustls's unbuffered one (`unbuffered.rs`, what
//! [`TlsTransport`](super::TlsTransport) uses) or its buffered `ServerConnection`
//! (`buffered.rs`, for [`TlsStream::new`]).
//!
//! Sans-I/O all the way: rustls never sees the socket but through hydrogen's own
//! non-blocking reads and writes (or `read_tls` and `write_tls`, one call at a time), never
//! through `rustls::Stream` or `complete_io` (which loop until the session is satisfied and
//! can spin or deadlock on a non-blocking socket).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use rustls::ServerConnection;
use rustls::server::UnbufferedServerConnection;

use super::buffered::Buffered;
use super::unbuffered::Unbuffered;
use crate::codec::{Codec, Deframer};
use crate::{Frames, RecvStatus, SharedFrame, Stream, TlsInfo};

/// The most plaintext encrypted ahead of the socket for one connection, in bytes: plaintext
/// beyond it waits in hydrogen's write queue, unencrypted, until the socket has taken the
/// records made of it. (For the buffered session of [`TlsStream::new`], the most encrypted
/// output rustls holds, set explicitly: its own default.)
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// A socket a [`TlsStream`] can run over: a [`NetStream`](crate::NetStream) (what the server
/// accepts, TCP or Unix-domain), a [`TcpStream`] or a [`UnixStream`]. Sealed.
pub trait TlsSocket: Read + Write + AsFd + Send + 'static + sealed::Sealed {
    /// Shuts both directions down; a socket no longer connected is not an error.
    fn shutdown_both(&self) -> io::Result<()>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::net::TcpStream {}
    impl Sealed for std::os::unix::net::UnixStream {}
    impl Sealed for crate::net::NetStream {}
}

impl TlsSocket for crate::net::NetStream {
    fn shutdown_both(&self) -> io::Result<()> {
        not_connected_is_fine(self.shutdown(Shutdown::Both))
    }
}

impl TlsSocket for TcpStream {
    fn shutdown_both(&self) -> io::Result<()> {
        not_connected_is_fine(self.shutdown(Shutdown::Both))
    }
}

impl TlsSocket for UnixStream {
    fn shutdown_both(&self) -> io::Result<()> {
        not_connected_is_fine(self.shutdown(Shutdown::Both))
    }
}

/// What a session negotiated, for [`Stream::tls_info`]: the ALPN protocol, `server_name`
/// (SNI), the protocol version and the cipher suite. Shared by both session kinds.
pub(super) fn session_info(tls: &rustls::CommonState, server_name: Option<&str>) -> TlsInfo {
    let mut info = TlsInfo::new();
    if let Some(alpn) = tls.alpn_protocol() {
        info = info.with_alpn_protocol(alpn.to_vec());
    }
    if let Some(name) = server_name {
        info = info.with_server_name(name);
    }
    if let Some(version) = tls.protocol_version() {
        info = info.with_protocol_version(format!("{version:?}"));
    }
    if let Some(suite) = tls.negotiated_cipher_suite() {
        info = info.with_cipher_suite(format!("{:?}", suite.suite()));
    }
    info
}

/// How a session's stream ended once reading is over: the peer's `close_notify` is a clean
/// end (between frames: `input` must hold no partial frame), a TCP end without it a
/// truncation, or a close during the handshake. Shared by both session kinds.
pub(super) fn end_of_stream<C: Codec>(
    handshaking: bool,
    peer_closed: bool,
    input: &Deframer<C>,
) -> io::Result<RecvStatus> {
    if !peer_closed {
        let why = if handshaking {
            "the peer closed the connection during the TLS handshake"
        } else {
            "the peer ended the TCP stream without a TLS close_notify: a possible truncation, \
             not a clean close"
        };
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
    }
    input.eof()?;
    Ok(RecvStatus::Eof)
}

fn not_connected_is_fine(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

/// A [`Stream`] that speaks TLS (a rustls server session) on its socket and frames the
/// plaintext with a [`Codec`]: what [`TlsTransport`](super::TlsTransport) gives each
/// connection.
///
/// - Reads: TLS records are read until the socket reports `WouldBlock` (with the unbuffered
///   session, or a read comes back short, as in [`Framed`](crate::Framed)), the peer closes,
///   or the read budget is spent ([`RecvStatus::MoreAvailable`]); rustls processes the records
///   as they arrive, and their plaintext goes at once into a [`Deframer`](crate::codec::Deframer),
///   which keeps only an incomplete frame's bytes.
/// - Writes: frames are encoded into a [`WriteQueue`](crate::codec::WriteQueue) (broadcasts by
///   reference, as in [`Framed`](crate::Framed)); [`flush`](Stream::flush) encrypts the
///   queue's bytes ([`TLS_BUFFER_LIMIT`] at a time) and writes the records to the socket,
///   until the queue is empty or the socket is full. Output of rustls's own (handshake, alerts,
///   session tickets, key updates) counts as pending, so the server writes it without a frame
///   being sent.
/// - The stream is [established](Stream::is_established) once the handshake is over; the
///   handler hears of the connection then.
/// - [`shutdown`](Stream::shutdown) writes what the socket takes at once, then
///   `close_notify`, then closes the socket.
///
/// With rustls's unbuffered session ([`TlsStream::unbuffered`], what the transport uses) the
/// stream owns every buffer, and an idle connection holds none: reads go into a per-thread
/// buffer and only an incomplete record's bytes are kept, records are encrypted into a
/// per-thread buffer and only what the socket does not take is kept. rustls's buffered
/// `ServerConnection` ([`TlsStream::new`]) keeps about 4 KB more per connection, for the
/// connection's whole life (its 4 KiB incoming-record buffer).
///
/// See the [module documentation](super) for how each end of a connection is reported.
pub struct TlsStream<C, S = TcpStream> {
    inner: Inner<C, S>,
}

/// The unbuffered session, what every connection the transport accepts has, is kept inline: a
/// box would cost each connection an allocation and a pointer to follow on every call.
#[allow(clippy::large_enum_variant)]
enum Inner<C, S> {
    Unbuffered(Unbuffered<C, S>),
    Buffered(Box<Buffered<C, S>>),
}

/// Runs `$body` with `$s` bound to the session, whichever kind it is.
macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Inner::Unbuffered($s) => $body,
            Inner::Buffered($s) => $body,
        }
    };
}

impl<C> TlsStream<C> {
    /// How many bytes of TLS records one [`recv`](Stream::recv) reads at most, unless changed
    /// with [`with_read_budget`](TlsStream::with_read_budget): 256 KiB, as
    /// [`Framed::DEFAULT_READ_BUDGET`](crate::Framed::DEFAULT_READ_BUDGET).
    pub const DEFAULT_READ_BUDGET: usize = 256 * 1024;
}

impl<C: Codec, S: TlsSocket> TlsStream<C, S> {
    /// Runs `session` (a new rustls unbuffered server session) over `socket` (non-blocking,
    /// as the server gives it), framing the plaintext with `codec`. What
    /// [`TlsTransport`](super::TlsTransport) does for each connection.
    pub fn unbuffered(session: UnbufferedServerConnection, socket: S, codec: C) -> TlsStream<C, S> {
        TlsStream {
            inner: Inner::Unbuffered(Unbuffered::new(
                session,
                socket,
                codec,
                TlsStream::<C>::DEFAULT_READ_BUDGET,
            )),
        }
    }

    /// Runs `session` (a new rustls buffered server session) over `socket` (non-blocking, as
    /// the server gives it), framing the plaintext with `codec`. It behaves as
    /// [`unbuffered`](TlsStream::unbuffered) does, but rustls keeps its own buffers, about 4 KB
    /// more per connection.
    pub fn new(session: ServerConnection, socket: S, codec: C) -> TlsStream<C, S> {
        TlsStream {
            inner: Inner::Buffered(Box::new(Buffered::new(
                session,
                socket,
                codec,
                TlsStream::<C>::DEFAULT_READ_BUDGET,
            ))),
        }
    }

    /// Sets how many bytes of TLS records one [`recv`](Stream::recv) reads at most before it
    /// returns [`RecvStatus::MoreAvailable`]. A budget of 0 is treated as 1.
    pub fn with_read_budget(mut self, bytes: usize) -> TlsStream<C, S> {
        each!(&mut self.inner, s => s.read_budget = bytes.max(1));
        self
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        each!(&self.inner, s => s.get_ref())
    }

    /// The rustls session's state, to look at what was negotiated (protocol version, cipher
    /// suite, ALPN protocol, the peer's certificates).
    pub fn session(&self) -> &rustls::CommonState {
        match &self.inner {
            Inner::Unbuffered(s) => s.session(),
            Inner::Buffered(s) => s.session(),
        }
    }

    /// The server name (SNI) the client asked for, once the handshake is over.
    pub fn server_name(&self) -> Option<&str> {
        match &self.inner {
            Inner::Unbuffered(s) => s.server_name(),
            Inner::Buffered(s) => s.session().server_name(),
        }
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        each!(&self.inner, s => s.codec())
    }
}

impl<C: Codec, S: TlsSocket> Stream for TlsStream<C, S> {
    /// Reads TLS records until the socket reports `WouldBlock` or, with the unbuffered
    /// session, a read comes back short ([`RecvStatus::Drained`]), the peer closes ([`RecvStatus::Eof`] after its `close_notify`) or the read budget is spent
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
        each!(&mut self.inner, s => s.recv(frames))
    }

    /// Encodes `frame` onto the write queue. Nothing is written until [`flush`](Stream::flush).
    ///
    /// # Errors
    ///
    /// The codec's [`FrameError`](crate::FrameError) as [`io::ErrorKind::InvalidData`]; the
    /// queue is then unchanged.
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        each!(&mut self.inner, s => s.send(frame))
    }

    /// Writes the encrypted output kept, then encrypts more of the queue and writes again,
    /// until the queue is empty or the socket reports `WouldBlock`. Before the handshake is
    /// over only rustls's own messages go out.
    ///
    /// # Errors
    ///
    /// Any socket error other than `WouldBlock` and `Interrupted`, or
    /// [`io::ErrorKind::WriteZero`] if the socket accepts no bytes.
    fn flush(&mut self) -> io::Result<()> {
        each!(&mut self.inner, s => s.flush())
    }

    /// Queues the frame's shared encoding as [`Framed`](crate::Framed) does (a small one
    /// copied, a larger one by reference); it is encrypted once it reaches the front of the
    /// queue.
    fn send_shared(&mut self, frame: &SharedFrame) -> io::Result<()> {
        each!(&mut self.inner, s => s.send_shared(frame))
    }

    /// The queue's bytes, plus the encrypted output not yet written (never 0 while there is
    /// some, handshake messages and alerts included).
    fn pending_output(&self) -> usize {
        each!(&self.inner, s => s.pending_output())
    }

    fn buffered_input(&self) -> usize {
        each!(&self.inner, s => s.buffered_input())
    }

    fn has_partial_frame(&self) -> bool {
        each!(&self.inner, s => s.has_partial_frame())
    }

    /// Once the TLS handshake is over.
    fn is_established(&self) -> bool {
        each!(&self.inner, s => s.is_established())
    }

    /// The ALPN protocol, the SNI name, the protocol version and the cipher suite.
    fn tls_info(&self) -> Option<TlsInfo> {
        each!(&self.inner, s => s.tls_info())
    }

    /// Writes what the socket takes at once of the queue, then `close_notify` (unless the
    /// session failed: its alert goes instead), then shuts the socket down.
    fn shutdown(&mut self) -> io::Result<()> {
        each!(&mut self.inner, s => s.shutdown())
    }
}

impl<C, S: AsFd> AsFd for TlsStream<C, S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        each!(&self.inner, s => s.as_fd())
    }
}

impl<C: fmt::Debug, S: fmt::Debug> fmt::Debug for TlsStream<C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        each!(&self.inner, s => s.fmt(f))
    }
}
