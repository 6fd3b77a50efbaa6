//! The [`Stream`] trait: one connection's transport and framing.

use std::io;
use std::os::fd::AsFd;

use crate::{Frames, SharedFrame};

/// What [`Stream::recv`] saw when it stopped reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvStatus {
    /// The socket reported `WouldBlock`: everything available has been read. The library calls
    /// `recv` again when the socket becomes readable.
    Drained,
    /// The stream stopped early (for example, it used up its read budget) while more may be
    /// available. The library calls `recv` again soon, after giving other connections a turn.
    MoreAvailable,
    /// The peer closed its side (a read returned 0 bytes). Frames decoded before the end are in the
    /// batch and are delivered; the library calls `recv` no more.
    Eof,
}

/// One connection's transport and framing.
///
/// The library owns every `Stream` it is given: it calls these methods from its worker threads,
/// never two at a time for one connection, always with the socket in non-blocking mode. The
/// built-in [`Framed`](crate::Framed) stream covers the common framings; implement this trait for a
/// framing of your own (see `examples/custom_stream.rs`) or a transport with its own buffering,
/// such as TLS.
///
/// # Contract
///
/// - The file descriptor ([`AsFd`]) is the socket the library watches with epoll. It must stay
///   the same for the stream's whole life.
/// - The library watches the socket *edge-triggered*: it is told only when new bytes arrive or
///   buffer space frees up. So [`recv`](Stream::recv) must read until the socket reports
///   `WouldBlock` or a read returns fewer bytes than asked for (both mean everything that had
///   arrived was read; return [`RecvStatus::Drained`]), or return
///   [`RecvStatus::MoreAvailable`] when it stops early; and [`flush`](Stream::flush) must write
///   until its queue is empty or the socket reports `WouldBlock`. After the peer hangs up the
///   library calls `recv` again until it reports [`RecvStatus::Eof`] or an error, so a short
///   read never hides the end of the stream. Likewise once the peer has sent urgent
///   (`MSG_OOB`) data, at whose mark a read stops short with more input behind it: the
///   library calls `recv` again until a call reads nothing new.
/// - `WouldBlock` is never an error: `recv` returns the status, `flush` returns `Ok` with output
///   still pending.
/// - Any error returned by `recv` or `flush` closes the connection. An error of kind
///   [`io::ErrorKind::InvalidData`] is reported as a protocol error; frames pushed before the
///   error are still delivered first.
/// - An error from [`send`](Stream::send) is returned to the caller of
///   [`Socket::send`](crate::Socket::send) and leaves the connection open (for example, a frame
///   too large for the framing).
/// - Writes must not raise `SIGPIPE`: write with `MSG_NOSIGNAL` (the standard library's
///   `TcpStream` already does).
/// - These methods run with the connection's lock held: they must not block, and must not call
///   back into the library (for example, through a [`Socket`](crate::Socket)).
///
/// # Establishment
///
/// A stream may have an opening phase before it carries frames: a TLS handshake, say (or a
/// header such as the PROXY protocol's). Such a stream reports
/// [`is_established`](Stream::is_established) `false` until the phase is over. The library then
/// registers and reads the connection as usual, writing what the stream queues (handshake
/// messages), but the handler hears nothing of it: `on_connection_opened` runs after the
/// [`recv`](Stream::recv) that leaves the stream established, and then every frame of that
/// batch is delivered. A connection that closes before it is established (a failed or
/// abandoned handshake, a [`Config::handshake_timeout`](crate::Config::handshake_timeout))
/// gets no callback at all; it is counted in the metrics and the
/// [`RunSummary`](crate::RunSummary). While a stream is not established it must push no
/// frames: frames pushed then close the connection as a protocol error.
pub trait Stream: AsFd + Send + 'static {
    /// Reads what the socket has and appends every complete frame to `frames`, in order.
    ///
    /// Bytes of an incomplete frame stay buffered in the stream until the rest arrives.
    fn recv(&mut self, frames: &mut Frames) -> io::Result<RecvStatus>;

    /// Queues one frame for writing; it may also write at once.
    ///
    /// Frames are written in the order they were sent, and a partial write keeps the rest of the
    /// bytes queued, in order. The library calls [`flush`](Stream::flush) afterwards.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Writes queued bytes until none are left or the socket reports `WouldBlock`.
    fn flush(&mut self) -> io::Result<()>;

    /// Queues a frame broadcast to a [`Group`](crate::Group), after the frames queued before
    /// it. The library hands a member its group frames when it writes to it, as many as keep
    /// [`pending_output`](Stream::pending_output) under 64 KiB; the rest wait in the group. A stream that can hold shared bytes keeps a reference to the frame's encoding
    /// ([`SharedFrame::encoded`]) instead of a copy; the default sends a copy of the payload
    /// with [`send`](Stream::send).
    ///
    /// # Errors
    ///
    /// As for [`send`](Stream::send): the frame is refused, the connection stays open.
    fn send_shared(&mut self, frame: &SharedFrame) -> io::Result<()> {
        self.send(frame.payload())
    }

    /// How many bytes are queued and not yet written (0 when nothing is pending).
    ///
    /// The library asks after every `recv` and every `send`, so a stream that must write while
    /// reading (a TLS handshake, say) is flushed without any frame being sent. The count is
    /// also what the outbound budget is checked against; a stream that cannot count exactly
    /// should report an estimate, never 0 while anything is pending.
    fn pending_output(&self) -> usize;

    /// Whether bytes are queued and not yet written.
    fn has_pending_output(&self) -> bool {
        self.pending_output() > 0
    }

    /// Bytes of memory the stream holds for input not yet delivered (an incomplete frame),
    /// counted with [`pending_output`](Stream::pending_output) against
    /// [`Config::max_buffered`](crate::Config::max_buffered). The default says none, which
    /// leaves the stream's input out of the ceiling.
    fn buffered_input(&self) -> usize {
        0
    }

    /// Whether the stream holds the start of a frame whose rest has not arrived. The library
    /// times such frames out ([`Config::frame_timeout`](crate::Config::frame_timeout)). The
    /// default says no, which leaves the stream to idle timeouts only.
    fn has_partial_frame(&self) -> bool {
        false
    }

    /// Whether the stream's opening phase (a TLS handshake, say) is over, so that the
    /// connection is handed to the handler (see [Establishment](#establishment)). Asked at
    /// accept and after each [`recv`](Stream::recv) until it says `true`; once `true` it must
    /// stay `true`. The default says `true`: the stream carries frames from the start.
    fn is_established(&self) -> bool {
        true
    }

    /// What the stream's TLS handshake negotiated, shown to the handler through
    /// [`Socket::tls_info`](crate::Socket::tls_info). Asked once, as the stream becomes
    /// established. The default says `None`: no TLS.
    fn tls_info(&self) -> Option<TlsInfo> {
        None
    }

    /// Shuts the connection down in both directions. Called once, just before the stream is
    /// dropped; its error is only logged.
    fn shutdown(&mut self) -> io::Result<()>;
}

/// What a connection's TLS handshake negotiated, as the handler sees it through
/// [`Socket::tls_info`](crate::Socket::tls_info) (also [`Socket::alpn_protocol`](crate::Socket::alpn_protocol)
/// and [`Socket::server_name`](crate::Socket::server_name)).
///
/// Made by the stream ([`Stream::tls_info`]) from whatever TLS library it uses; the built-in
/// TLS stream (the `tls` feature) fills in every field.
///
/// ```
/// use hydrogen::TlsInfo;
///
/// let info = TlsInfo::new()
///     .with_alpn_protocol(b"h2".to_vec())
///     .with_server_name("example.com")
///     .with_protocol_version("TLSv1_3");
/// assert_eq!(info.alpn_protocol(), Some(&b"h2"[..]));
/// assert_eq!(info.server_name(), Some("example.com"));
/// assert_eq!(info.cipher_suite(), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    alpn_protocol: Option<Vec<u8>>,
    server_name: Option<String>,
    protocol_version: Option<String>,
    cipher_suite: Option<String>,
}

impl TlsInfo {
    /// Nothing known yet.
    pub fn new() -> TlsInfo {
        TlsInfo::default()
    }

    /// With the ALPN protocol agreed on.
    pub fn with_alpn_protocol(mut self, protocol: Vec<u8>) -> TlsInfo {
        self.alpn_protocol = Some(protocol);
        self
    }

    /// With the host name the client asked for (SNI).
    pub fn with_server_name(mut self, name: impl Into<String>) -> TlsInfo {
        self.server_name = Some(name.into());
        self
    }

    /// With the protocol version, such as `"TLSv1_3"`.
    pub fn with_protocol_version(mut self, version: impl Into<String>) -> TlsInfo {
        self.protocol_version = Some(version.into());
        self
    }

    /// With the cipher suite, such as `"TLS13_AES_128_GCM_SHA256"`.
    pub fn with_cipher_suite(mut self, suite: impl Into<String>) -> TlsInfo {
        self.cipher_suite = Some(suite.into());
        self
    }

    /// The application protocol agreed on with ALPN (such as `b"h2"`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.alpn_protocol.as_deref()
    }

    /// The host name the client asked for (SNI), if it sent one.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// The TLS version negotiated, such as `"TLSv1_3"`.
    pub fn protocol_version(&self) -> Option<&str> {
        self.protocol_version.as_deref()
    }

    /// The cipher suite negotiated, such as `"TLS13_AES_128_GCM_SHA256"`.
    pub fn cipher_suite(&self) -> Option<&str> {
        self.cipher_suite.as_deref()
    }
}
