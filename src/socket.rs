//! [`Socket`]: a handle to one connection, usable from any thread.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a connection handle needs from the connection behind it. Implemented by the
/// generic connection type, so that [`Socket`] itself is not generic over the stream.
pub(crate) trait Link: Send + Sync {
    fn id(&self) -> u64;
    fn peer_addr(&self) -> SocketAddr;
    fn send(&self, frame: &[u8]) -> Result<(), SendError>;
    fn close(&self);
    fn is_closed(&self) -> bool;
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

    /// This connection's id: unique among all connections of all servers in this process, never
    /// reused.
    pub fn id(&self) -> u64 {
        self.link.id()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.link.peer_addr()
    }

    /// Sends one frame to this connection.
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
