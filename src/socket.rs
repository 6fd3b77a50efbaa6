//! [`Socket`]: a handle to one connection, usable from any thread.

use std::fmt;
use std::io;
use std::sync::Arc;

use crate::group::{Members, Membership};
use crate::net::PeerAddr;
use crate::proxy::ProxyHeader;
use crate::stream::TlsInfo;

/// What a connection handle needs from the connection behind it. Implemented by the
/// generic connection type, so that [`Socket`] itself is not generic over the stream.
pub(crate) trait Link: Send + Sync {
    fn id(&self) -> u64;
    /// The client's address (from the PROXY header, if one was read).
    fn peer_addr(&self) -> PeerAddr;
    /// The PROXY header the connection began with.
    fn proxy_header(&self) -> Option<&ProxyHeader>;
    /// The socket's peer (the proxy), when a PROXY header was read.
    fn proxy_addr(&self) -> Option<&PeerAddr>;
    /// What the stream learned while being established, if it said anything.
    fn tls_info(&self) -> Option<&TlsInfo>;
    fn send(&self, frame: &[u8]) -> Result<(), SendError>;
    fn close(&self);
    fn is_closed(&self) -> bool;
    fn pause_reading(&self);
    fn resume_reading(&self);
    fn hold(&self);
    fn release(&self);
    /// A group the connection is in has a new frame: makes sure a worker takes it.
    fn group_ready(&self);
    /// Closes the connection as a member that fell too far behind.
    fn close_slow(&self);
    /// Records a group membership, so that the close leaves the group; `false` if closed.
    fn join_group(&self, membership: Membership) -> bool;
    fn leave_group(&self, group: &Arc<Members>);
}

/// A handle to one connection: cheap to clone, usable from any thread, at any time.
///
/// A `Socket` points at its own connection and nothing else: once that connection is closed,
/// [`send`](Socket::send) fails with [`SendError::Closed`], even after the server has reused the
/// connection's table slot or file descriptor number for a new connection.
#[derive(Clone)]
pub struct Socket {
    link: Arc<dyn Link>,
}

impl Socket {
    pub(crate) fn new(link: Arc<dyn Link>) -> Socket {
        Socket { link }
    }

    pub(crate) fn link(&self) -> &dyn Link {
        &*self.link
    }

    /// This connection's id: unique among all connections of all servers in this process, never
    /// reused.
    pub fn id(&self) -> u64 {
        self.link.id()
    }

    /// The peer's address: a TCP address, or a Unix-domain peer.
    ///
    /// With [`Config::proxy_protocol`](crate::Config::proxy_protocol) on, it is the client's
    /// address from the PROXY header (the proxy's own is [`proxy_addr`](Socket::proxy_addr)),
    /// except for a connection of the proxy's own (a v2 `LOCAL` header, such as a health
    /// check, or a v1 `UNKNOWN` one), which keeps the socket's peer.
    pub fn peer_addr(&self) -> PeerAddr {
        self.link.peer_addr()
    }

    /// The address of the proxy the connection came through: the socket's own peer, when a
    /// PROXY header was read ([`Config::proxy_protocol`](crate::Config::proxy_protocol));
    /// `None` otherwise.
    pub fn proxy_addr(&self) -> Option<&PeerAddr> {
        self.link.proxy_addr()
    }

    /// The PROXY header the connection began with
    /// ([`Config::proxy_protocol`](crate::Config::proxy_protocol)): the addresses the proxy
    /// saw, and a v2 header's TLVs (such as the SNI or unique ID HAProxy can send). `None`
    /// without the PROXY protocol.
    pub fn proxy_header(&self) -> Option<&ProxyHeader> {
        self.link.proxy_header()
    }

    /// What the connection's TLS handshake negotiated ([`Stream::tls_info`](crate::Stream::tls_info)):
    /// the ALPN protocol, the server name the client asked for (SNI), the protocol version and
    /// cipher suite. Known from [`on_connection_opened`](crate::Handler::on_connection_opened)
    /// on, since a connection reaches the handler only once its handshake is done. `None` for
    /// a connection without TLS.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.link.tls_info()
    }

    /// The application protocol the client and server agreed on with ALPN, such as `b"h2"`:
    /// `None` without TLS, or when the client offered none the server accepts (or the server
    /// configured none). Shorthand for [`tls_info`](Socket::tls_info).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls_info()?.alpn_protocol()
    }

    /// The host name the client asked for in its TLS handshake (SNI): `None` without TLS, or
    /// when the client sent none (as when it connected to an IP address). Shorthand for
    /// [`tls_info`](Socket::tls_info).
    pub fn server_name(&self) -> Option<&str> {
        self.tls_info()?.server_name()
    }

    /// Sends one frame to this connection.
    ///
    /// It never blocks and never calls back into the handler: it takes this connection's
    /// lock just long enough to queue the frame and write what the socket takes at once. So
    /// it may be called from any thread, from any callback, and while holding locks of your
    /// own.
    ///
    /// Frames sent through handles of one connection go out in the order the `send` calls
    /// returned. From a thread other than the one running this connection's callback, the frame is
    /// written at once if the socket can take it; from inside this connection's own callback it is
    /// queued and written, together with the other replies, when the callback returns. Bytes the
    /// socket cannot take yet stay queued and are written as soon as it can, with no further
    /// input from the peer.
    ///
    /// # Errors
    ///
    /// - [`SendError::Closed`]: the connection is closed or closing; the frame is dropped.
    /// - [`SendError::Rejected`]: the stream refused this frame (for example, it is too large for
    ///   the framing); the connection stays open.
    /// - [`SendError::QueueFull`]: the peer is not reading and the queue reached
    ///   [`Config::max_outbound`](crate::Config::max_outbound) (with
    ///   [`OutboundPolicy::Reject`](crate::OutboundPolicy::Reject); under the default policy the
    ///   connection is closed instead and the error is `Closed`).
    pub fn send(&self, frame: &[u8]) -> Result<(), SendError> {
        self.link.send(frame)
    }

    /// Closes this connection.
    ///
    /// Reading stops and frames not yet delivered are dropped; what is queued is written if the
    /// socket takes it without blocking, and the connection is then closed and removed
    /// ([`CloseReason::Local`](crate::CloseReason::Local)). Returns at once; the removal callback
    /// runs later, on a worker. Closing a closed connection does nothing.
    pub fn close(&self) {
        self.link.close()
    }

    /// Whether the connection is closed or closing: once true, `send` fails.
    pub fn is_closed(&self) -> bool {
        self.link.is_closed()
    }

    /// Stops reading this connection until [`resume_reading`](Socket::resume_reading).
    ///
    /// No frame is delivered while paused, not even the rest of a batch already read (those
    /// wait, in order, and come first on resuming). The kernel's buffers fill, and TCP flow
    /// control then slows the peer down: read backpressure, for a consumer that cannot keep
    /// up. Sending, closing and the timeouts work as usual; note that an idle timeout counts a
    /// paused connection whose peer has stopped sending as idle. Frames held back were
    /// accepted: like work in flight, they keep the connection open after the peer's close
    /// and through the drain (up to its timeout), until they are delivered. Pausing a paused
    /// connection does nothing.
    pub fn pause_reading(&self) {
        self.link.pause_reading()
    }

    /// Reads this connection again after [`pause_reading`](Socket::pause_reading): the frames
    /// held back are delivered first, then what arrived meanwhile. Resuming a connection that
    /// is not paused does nothing.
    pub fn resume_reading(&self) {
        self.link.resume_reading()
    }

    /// Keeps the connection open for work in flight: while any [`Hold`] on it is alive, the
    /// peer's close does not remove it (it is removed, as `PeerClosed`, once the last hold is
    /// dropped and the replies are written), and the server's drain waits for it, up to
    /// [`Config::drain_timeout`](crate::Config::drain_timeout). Take one before handing a
    /// request to threads of your own, and drop it after sending the reply. Frames offloaded
    /// to the blocking pool ([`Handler::offload`](crate::Handler::offload)) hold the
    /// connection without this.
    ///
    /// A hold does not keep a connection open against errors, a local close, timeouts or the
    /// end of the drain.
    pub fn hold(&self) -> Hold {
        self.link.hold();
        Hold {
            socket: self.clone(),
        }
    }
}

/// Work in flight on a connection: see [`Socket::hold`]. Dropping it lets the connection
/// close.
#[derive(Debug)]
#[must_use = "the connection is held only while the Hold is alive"]
pub struct Hold {
    socket: Socket,
}

impl Hold {
    /// The connection held.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.socket.link.release();
    }
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.id())
            .field("peer", &self.peer_addr())
            .finish()
    }
}

/// The error of [`Socket::send`].
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed or closing.
    Closed,
    /// The stream refused the frame (for example, too large for the framing). The connection is
    /// unaffected.
    Rejected(io::Error),
    /// The connection's outbound queue is full ([`Config::max_outbound`](crate::Config::max_outbound)
    /// under [`OutboundPolicy::Reject`](crate::OutboundPolicy::Reject)): the peer is not reading.
    /// The frame was not queued; the connection stays open.
    QueueFull,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("connection closed"),
            SendError::Rejected(e) => write!(f, "frame rejected: {e}"),
            SendError::QueueFull => f.write_str("outbound queue full"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Closed | SendError::QueueFull => None,
            SendError::Rejected(e) => Some(e),
        }
    }
}

impl From<SendError> for io::Error {
    fn from(err: SendError) -> io::Error {
        match err {
            SendError::Closed => io::Error::new(io::ErrorKind::NotConnected, "connection closed"),
            SendError::Rejected(e) => e,
            SendError::QueueFull => {
                io::Error::new(io::ErrorKind::WouldBlock, "outbound queue full")
            }
        }
    }
}
