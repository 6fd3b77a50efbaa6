//! The [`Handler`] trait (the server's callbacks) and [`CloseReason`].

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::Socket;
#[cfg(doc)]
use crate::Stream;

/// The application's side of the server: callbacks the worker threads make.
///
/// One instance serves every connection, shared by reference among the workers, so it is
/// `Sync`. What belongs to one connection (a login, its subscriptions, a parser's mode) goes
/// in its [`Session`](Handler::Session): built when the connection opens, handed to each of
/// its callbacks as `&mut`, with no lock, and given back to
/// [`on_connection_removed`](Handler::on_connection_removed) at the end. Other threads reach a
/// connection through its [`Socket`] only.
///
/// ```
/// use hydrogen::{Handler, Socket};
///
/// /// Counts each connection's frames, and replies with the count.
/// struct Counter;
///
/// impl Handler for Counter {
///     type Session = u64;
///
///     fn on_frame(&self, frames: &mut u64, socket: &Socket, _frame: &[u8]) {
///         *frames += 1;
///         let _ = socket.send(frames.to_string().as_bytes());
///     }
/// }
/// ```
///
/// # What callbacks may do
///
/// - For one connection, callbacks never run at the same time, and they run in order:
///   [`on_connection_opened`](Handler::on_connection_opened), then
///   [`on_frame`](Handler::on_frame) once per frame in arrival order, then
///   [`on_connection_removed`](Handler::on_connection_removed) exactly once.
///   Callbacks for different connections run in parallel on different workers.
/// - No lock of the library is held during a callback: from inside one you may send to this or
///   any other connection, close any connection, or hand a [`Socket`] to another thread.
///   [`Socket::send`] takes the connection's lock only for as long as it queues and writes
///   without blocking, and never calls back into your code, so it may be called while you
///   hold a lock of your own.
/// - Callbacks should not block the I/O workers. Work that blocks (a database query, a file
///   read, a computation of milliseconds) belongs on the blocking pool: return `true` from
///   [`offload`](Handler::offload) for such frames, and size the pool with
///   [`Config::blocking_threads`](crate::Config::blocking_threads). Each connection's frames
///   still run one at a time and in order, and replies go out in order; the I/O workers never
///   wait for the pool. While a connection has work on the pool, a half-close by the peer
///   does not remove it (the replies are written first) and the server's drain waits for the
///   work, up to [`Config::drain_timeout`](crate::Config::drain_timeout).
/// - A callback that blocks on an I/O worker all the same stalls only its own connection while
///   another worker is free. The worker that last waited on epoll runs the first event it
///   received itself, without handing it off (that is what makes a request/reply round trip
///   cheap); if it is still busy after about a millisecond, an idle worker takes over the
///   polling. So with `max_threads` workers, up to `max_threads - 1` callbacks may block at
///   once while the others are served, each delayed by at most a millisecond or two when a
///   worker starts blocking. When every worker is in a callback, nothing is read, accepted or
///   written (except sends from other threads) until one returns. With `max_threads: 1` there
///   is nobody to take over, and a blocking callback delays every connection by as long as it
///   blocks.
///
/// # Transports
///
/// How an accepted socket becomes a [`Stream`](crate::Stream) (the framing, and later TLS) is
/// the [`Transport`](crate::Transport)'s job, not the handler's: [`Server::run`](crate::Server::run)
/// uses the configured [`Framing`](crate::Framing), and
/// [`Server::run_with`](crate::Server::run_with) takes any transport. The handler sees only
/// frames, so it does not change when the transport does.
pub trait Handler: Send + Sync + 'static {
    /// What the handler keeps for each connection. Created with [`Default`] as the connection
    /// opens, passed to every callback of the connection, dropped after
    /// [`on_connection_removed`](Handler::on_connection_removed) (which receives it by value).
    /// Use `()` for none: it costs nothing.
    type Session: Default + Send + 'static;

    /// Called once a connection is set up, before its first frame is delivered, with its
    /// freshly made session to fill in. Keep the [`Socket`] (cloned) to send to this
    /// connection later, from anywhere.
    fn on_connection_opened(&self, session: &mut Self::Session, socket: &Socket) {
        let _ = (session, socket);
    }

    /// Called for every complete frame, in the order the peer sent them, on an I/O worker or,
    /// when [`offload`](Handler::offload) said so, on the blocking pool.
    ///
    /// Reply with [`Socket::send`]. Copy the frame if you need it after returning.
    fn on_frame(&self, session: &mut Self::Session, socket: &Socket, frame: &[u8]) {
        let _ = (session, socket, frame);
    }

    /// Called exactly once for every connection that was opened, after it is closed and after
    /// its last [`on_frame`](Handler::on_frame) returned: its socket is closed and every
    /// [`Socket::send`] to it now fails. The session is yours to keep or drop.
    fn on_connection_removed(&self, session: Self::Session, socket: &Socket, reason: &CloseReason) {
        let _ = (session, socket, reason);
    }

    /// Whether `frame` is to be handled on the blocking pool instead of the I/O worker that
    /// read it. Called on the I/O worker, for each frame, while the connection has no work on
    /// the pool; once it has, every later frame of the connection queues behind that work (so
    /// order holds) until the pool has run it all. Return `true` always to run the whole
    /// handler on the pool. The default says `false`: everything runs on the I/O workers.
    ///
    /// With [`Config::blocking_threads`](crate::Config::blocking_threads) at 0 there is no
    /// pool, and the frame runs on the I/O worker (a warning is logged once).
    fn offload(&self, frame: &[u8]) -> bool {
        let _ = frame;
        false
    }
}

/// A shared handler is a handler: run the server with an `Arc<H>` and keep a clone to read the
/// handler's state from other threads.
impl<H: Handler> Handler for Arc<H> {
    type Session = H::Session;

    fn on_connection_opened(&self, session: &mut Self::Session, socket: &Socket) {
        (**self).on_connection_opened(session, socket)
    }

    fn on_frame(&self, session: &mut Self::Session, socket: &Socket, frame: &[u8]) {
        (**self).on_frame(session, socket, frame)
    }

    fn on_connection_removed(&self, session: Self::Session, socket: &Socket, reason: &CloseReason) {
        (**self).on_connection_removed(session, socket, reason)
    }

    fn offload(&self, frame: &[u8]) -> bool {
        (**self).offload(frame)
    }
}

/// Why a connection was removed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed the connection in an orderly way (end of stream), after every frame it
    /// sent was delivered and the replies queued by then were written.
    PeerClosed,
    /// The peer reset the connection, or it broke (`ECONNRESET`, `EPIPE`, `ECONNABORTED`).
    Reset,
    /// The peer broke the framing protocol (for example a wrong start byte, a frame over the
    /// maximum length, or end of stream in the middle of a frame).
    Protocol(io::Error),
    /// Any other I/O error on the socket.
    Io(io::Error),
    /// The application closed it with [`Socket::close`].
    Local,
    /// No bytes moved either way for [`Config::idle_timeout`](crate::Config::idle_timeout).
    IdleTimeout,
    /// The peer started a frame and did not finish it within
    /// [`Config::frame_timeout`](crate::Config::frame_timeout).
    FrameTimeout,
    /// The stream was not established (a TLS handshake not finished) within
    /// [`Config::handshake_timeout`](crate::Config::handshake_timeout). Such a connection never
    /// reached the handler, so no callback reports this reason; it is counted in the metrics.
    HandshakeTimeout,
    /// With [`Config::proxy_protocol`](crate::Config::proxy_protocol) on, the connection sent
    /// no complete PROXY header within
    /// [`Config::proxy_header_timeout`](crate::Config::proxy_header_timeout). It never reached
    /// the handler; it is counted in the metrics and
    /// [`RunSummary::proxy_timed_out`](crate::RunSummary::proxy_timed_out).
    ProxyHeaderTimeout,
    /// With [`Config::proxy_protocol`](crate::Config::proxy_protocol) on, the connection was
    /// refused before reaching the handler: it came from a source outside
    /// [`Config::proxy_from`](crate::Config::proxy_from), or its PROXY header was missing or
    /// malformed (the error says which). Counted in the metrics and
    /// [`RunSummary::proxy_refused`](crate::RunSummary::proxy_refused).
    ProxyRefused(io::Error),
    /// The peer did not read fast enough: its outbound queue would have grown past
    /// [`Config::max_outbound`](crate::Config::max_outbound) under
    /// [`OutboundPolicy::Disconnect`](crate::OutboundPolicy::Disconnect).
    SlowConsumer,
    /// The server was shut down. `flushed` tells whether everything queued for the connection
    /// was written before it was closed (the drain finished within
    /// [`Config::drain_timeout`](crate::Config::drain_timeout)).
    Shutdown {
        /// Every queued byte was written.
        flushed: bool,
    },
    /// A callback (or a method of the [`Stream`]) panicked while serving this connection; the
    /// panic's message. The worker thread caught it and goes on serving everyone else.
    Panicked(String),
    /// The server held more than 1.5 times
    /// [`Config::max_buffered`](crate::Config::max_buffered) across all connections, and this
    /// one held among the most (in an incomplete inbound frame or its outbound queue).
    MaxBuffered,
}

impl CloseReason {
    /// Every [`kind`](CloseReason::kind), in declaration order.
    pub const KINDS: &'static [&'static str] = &[
        "peer_closed",
        "reset",
        "protocol",
        "io",
        "local",
        "idle_timeout",
        "frame_timeout",
        "handshake_timeout",
        "proxy_header_timeout",
        "proxy_refused",
        "slow_consumer",
        "shutdown",
        "shutdown_unflushed",
        "panicked",
        "max_buffered",
    ];

    /// A short, stable name for the reason, without its details: `"peer_closed"`, `"reset"`,
    /// `"protocol"`, `"io"`, `"local"`, `"idle_timeout"`, `"frame_timeout"`,
    /// `"handshake_timeout"`, `"proxy_header_timeout"`, `"proxy_refused"`, `"slow_consumer"`, `"shutdown"` (flushed), `"shutdown_unflushed"`, `"panicked"` or
    /// `"max_buffered"`: the `reason` label of the close counter, for instance.
    pub fn kind(&self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Reset => "reset",
            CloseReason::Protocol(_) => "protocol",
            CloseReason::Io(_) => "io",
            CloseReason::Local => "local",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::FrameTimeout => "frame_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::ProxyHeaderTimeout => "proxy_header_timeout",
            CloseReason::ProxyRefused(_) => "proxy_refused",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown { flushed: true } => "shutdown",
            CloseReason::Shutdown { flushed: false } => "shutdown_unflushed",
            CloseReason::Panicked(_) => "panicked",
            CloseReason::MaxBuffered => "max_buffered",
        }
    }

    /// Sorts an error returned by a [`Stream`] into a reason.
    pub(crate) fn from_io(err: io::Error) -> CloseReason {
        match err.kind() {
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => CloseReason::Protocol(err),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => CloseReason::Reset,
            _ => CloseReason::Io(err),
        }
    }

    /// Whether the connection ended because something went wrong or a limit was hit (not a
    /// close by either side, nor the server's shutdown).
    pub fn is_error(&self) -> bool {
        matches!(
            self,
            CloseReason::Reset
                | CloseReason::Protocol(_)
                | CloseReason::Io(_)
                | CloseReason::Panicked(_)
                | CloseReason::IdleTimeout
                | CloseReason::FrameTimeout
                | CloseReason::HandshakeTimeout
                | CloseReason::ProxyHeaderTimeout
                | CloseReason::ProxyRefused(_)
                | CloseReason::SlowConsumer
                | CloseReason::MaxBuffered
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("closed by the peer"),
            CloseReason::Reset => f.write_str("reset by the peer"),
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::Local => f.write_str("closed by the application"),
            CloseReason::IdleTimeout => f.write_str("idle for too long"),
            CloseReason::FrameTimeout => f.write_str("a frame took too long to arrive"),
            CloseReason::HandshakeTimeout => {
                f.write_str("the connection was not established (TLS handshake) in time")
            }
            CloseReason::ProxyHeaderTimeout => {
                f.write_str("no PROXY protocol header arrived in time")
            }
            CloseReason::ProxyRefused(e) => write!(f, "refused by the PROXY protocol check: {e}"),
            CloseReason::SlowConsumer => f.write_str("the peer read too slowly"),
            CloseReason::Shutdown { flushed: true } => f.write_str("server shut down"),
            CloseReason::Shutdown { flushed: false } => {
                f.write_str("server shut down before the queued output was written")
            }
            CloseReason::Panicked(msg) => write!(f, "a callback panicked: {msg}"),
            CloseReason::MaxBuffered => {
                f.write_str("the server held too much memory and this connection held the most")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_sort_into_reasons() {
        let r = CloseReason::from_io(io::Error::from(io::ErrorKind::InvalidData));
        assert!(matches!(r, CloseReason::Protocol(_)));
        let r = CloseReason::from_io(io::Error::from(io::ErrorKind::UnexpectedEof));
        assert!(matches!(r, CloseReason::Protocol(_)));
        let r = CloseReason::from_io(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(matches!(r, CloseReason::Reset));
        let r = CloseReason::from_io(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(matches!(r, CloseReason::Reset));
        let r = CloseReason::from_io(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(matches!(r, CloseReason::Io(_)));
        assert!(r.is_error());
        assert!(!CloseReason::Local.is_error());
        assert_eq!(CloseReason::PeerClosed.to_string(), "closed by the peer");
        for (reason, kind) in [
            (CloseReason::Local, "local"),
            (
                CloseReason::Shutdown { flushed: false },
                "shutdown_unflushed",
            ),
            (CloseReason::MaxBuffered, "max_buffered"),
            (CloseReason::HandshakeTimeout, "handshake_timeout"),
            (CloseReason::ProxyHeaderTimeout, "proxy_header_timeout"),
            (
                CloseReason::ProxyRefused(io::Error::other("untrusted")),
                "proxy_refused",
            ),
        ] {
            assert_eq!(reason.kind(), kind);
            assert!(CloseReason::KINDS.contains(&kind));
        }
    }
}
