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

    /// Shuts the connection down in both directions. Called once, just before the stream is
    /// dropped; its error is only logged.
    fn shutdown(&mut self) -> io::Result<()>;
}
