//! [`Transport`]: how an accepted connection becomes a [`Stream`]; [`Accepted`], what it is
//! given; [`Framing`], the built-in framings chosen at run time.

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::str::FromStr;

use crate::codec::{Codec, Decoded, FrameError, LengthPrefixed, SimpleFrame};
use crate::net::{NetStream, PeerAddr};
use crate::{Framed, Stream};

/// Turns each accepted connection into the [`Stream`] the server drives: the framing, and
/// whatever wraps the socket (TLS, say).
///
/// [`Server::run`](crate::Server::run) uses the configured [`Framing`];
/// [`Server::run_with`](crate::Server::run_with) takes any transport. Every [`Codec`] that is
/// `Clone + Sync` is a transport: each connection gets a [`Framed`] stream with a clone of it.
///
/// `open` runs on a worker thread for every accepted connection, before any callback of the
/// [`Handler`](crate::Handler). It must not block. An error (or a panic) refuses the
/// connection: its socket is closed, it is logged at debug level, and no callback runs for it.
///
/// ```
/// use std::io;
/// use hydrogen::{Accepted, LengthPrefixed, Transport};
///
/// /// Length-prefixed frames of at most 4 KiB, and only from loopback peers.
/// struct LocalOnly;
///
/// impl Transport for LocalOnly {
///     type Stream = hydrogen::LengthPrefixedStream;
///
///     fn open(&self, conn: Accepted) -> io::Result<Self::Stream> {
///         if !conn.peer_addr().ip().is_some_and(|ip| ip.is_loopback()) {
///             return Err(io::Error::new(io::ErrorKind::PermissionDenied, "not a local peer"));
///         }
///         Ok(hydrogen::Framed::new(conn.into_stream(), LengthPrefixed::new(4096)))
///     }
/// }
/// ```
pub trait Transport: Send + Sync + 'static {
    /// The stream each connection gets.
    type Stream: Stream;

    /// Builds the stream for a newly accepted connection.
    ///
    /// # Errors
    ///
    /// Any error refuses the connection.
    fn open(&self, conn: Accepted) -> io::Result<Self::Stream>;
}

impl<C: Codec + Clone + Sync> Transport for C {
    type Stream = Framed<C>;

    fn open(&self, conn: Accepted) -> io::Result<Framed<C>> {
        Ok(Framed::new(conn.into_stream(), self.clone()))
    }
}

/// A shared transport is a transport.
impl<T: Transport> Transport for std::sync::Arc<T> {
    type Stream = T::Stream;

    fn open(&self, conn: Accepted) -> io::Result<T::Stream> {
        (**self).open(conn)
    }
}

/// A connection just accepted, handed to [`Transport::open`]: TCP, or Unix-domain on a
/// [`ListenAddr::Unix`](crate::ListenAddr::Unix) listener.
///
/// The socket is in non-blocking mode, with the options the [`Config`](crate::Config) asks for
/// (`TCP_NODELAY` unless [`Config::nodelay`](crate::Config::nodelay) is off, keepalive, and so
/// on) already set.
///
/// With [`Config::proxy_protocol`](crate::Config::proxy_protocol) on, `open` runs at accept,
/// before the PROXY header is read: [`peer_addr`](Accepted::peer_addr) is then the proxy's
/// address, and the stream's first bytes are the connection's own (the server takes the
/// header off the socket before the stream's first read).
#[derive(Debug)]
pub struct Accepted {
    stream: NetStream,
    peer: PeerAddr,
}

impl Accepted {
    pub(crate) fn new(stream: NetStream, peer: PeerAddr) -> Accepted {
        Accepted { stream, peer }
    }

    /// The address of the socket's peer.
    pub fn peer_addr(&self) -> &PeerAddr {
        &self.peer
    }

    /// The socket, for reading or setting options.
    pub fn stream(&self) -> &NetStream {
        &self.stream
    }

    /// The TCP socket; `None` for a Unix-domain connection.
    pub fn tcp(&self) -> Option<&TcpStream> {
        self.stream.tcp()
    }

    /// Takes the socket, to wrap it in a stream.
    pub fn into_stream(self) -> NetStream {
        self.stream
    }

    /// Takes the TCP socket.
    ///
    /// # Errors
    ///
    /// A Unix-domain connection ([`io::ErrorKind::Unsupported`]): use
    /// [`into_stream`](Accepted::into_stream).
    pub fn into_tcp(self) -> io::Result<TcpStream> {
        match self.stream {
            NetStream::Tcp(tcp) => Ok(tcp),
            NetStream::Unix(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{} is a Unix-domain connection, not TCP", self.peer),
            )),
        }
    }
}

/// The built-in framings, chosen at run time: [`Config::framing`](crate::Config::framing) for
/// [`Server::run`](crate::Server::run). It is a [`Codec`] itself, so it also serves as a
/// transport for [`Server::run_with`](crate::Server::run_with) or a codec for the
/// [`Client`](crate::client::Client).
///
/// Parses from `"simple"` and `"length"` (also `"u32"` or `"length-prefixed"`), for command
/// lines:
///
/// ```
/// use hydrogen::Framing;
///
/// let framing: Framing = "length".parse().unwrap();
/// assert_eq!(framing, Framing::LengthPrefixed(hydrogen::LengthPrefixed::default()));
/// assert_eq!(framing.to_string(), "length");
/// assert!("morse".parse::<Framing>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Framing {
    /// [`SimpleFrame`]: the `simple-stream` crate's format. The default.
    Simple(SimpleFrame),
    /// [`LengthPrefixed`]: a u32 big-endian length, then the payload.
    LengthPrefixed(LengthPrefixed),
}

impl Default for Framing {
    fn default() -> Framing {
        Framing::Simple(SimpleFrame)
    }
}

impl From<SimpleFrame> for Framing {
    fn from(codec: SimpleFrame) -> Framing {
        Framing::Simple(codec)
    }
}

impl From<LengthPrefixed> for Framing {
    fn from(codec: LengthPrefixed) -> Framing {
        Framing::LengthPrefixed(codec)
    }
}

impl Codec for Framing {
    #[inline]
    fn encode(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        match self {
            Framing::Simple(c) => c.encode(payload, out),
            Framing::LengthPrefixed(c) => c.encode(payload, out),
        }
    }

    #[inline]
    fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, FrameError> {
        match self {
            Framing::Simple(c) => c.decode(buf),
            Framing::LengthPrefixed(c) => c.decode(buf),
        }
    }

    fn max_payload(&self) -> usize {
        match self {
            Framing::Simple(c) => c.max_payload(),
            Framing::LengthPrefixed(c) => c.max_payload(),
        }
    }

    fn encoding_key(&self) -> Option<&'static str> {
        match self {
            Framing::Simple(c) => c.encoding_key(),
            Framing::LengthPrefixed(c) => c.encoding_key(),
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::Simple(_) => "simple",
            Framing::LengthPrefixed(_) => "length",
        })
    }
}

/// The error of parsing a [`Framing`] from a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFraming(String);

impl fmt::Display for UnknownFraming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown framing {:?}: expected \"simple\" or \"length\" (also \"u32\")",
            self.0
        )
    }
}

impl std::error::Error for UnknownFraming {}

impl FromStr for Framing {
    type Err = UnknownFraming;

    fn from_str(s: &str) -> Result<Framing, UnknownFraming> {
        match s.to_ascii_lowercase().as_str() {
            "simple" => Ok(Framing::Simple(SimpleFrame)),
            "length" | "u32" | "length-prefixed" => {
                Ok(Framing::LengthPrefixed(LengthPrefixed::default()))
            }
            _ => Err(UnknownFraming(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_codes_like_the_codec_it_names() {
        for (mut framing, mut wire_of) in [
            (
                Framing::default(),
                Box::new(|p: &[u8]| {
                    let mut out = Vec::new();
                    SimpleFrame.encode(p, &mut out).unwrap();
                    out
                }) as Box<dyn FnMut(&[u8]) -> Vec<u8>>,
            ),
            (
                "u32".parse().unwrap(),
                Box::new(|p: &[u8]| {
                    let mut out = Vec::new();
                    LengthPrefixed::default().encode(p, &mut out).unwrap();
                    out
                }),
            ),
        ] {
            let mut out = Vec::new();
            framing.encode(b"hello", &mut out).unwrap();
            assert_eq!(out, wire_of(b"hello"), "{framing}");
            let decoded = framing.decode(&out).unwrap().unwrap();
            assert_eq!(&out[decoded.payload], b"hello");
            assert_eq!(framing.decode(&out[..2]).unwrap(), None);
        }
        assert_eq!(
            Framing::from(LengthPrefixed::new(3)).max_payload(),
            LengthPrefixed::new(3).max_payload()
        );
        let err = "SIMPLE ".parse::<Framing>().unwrap_err();
        assert!(err.to_string().contains("expected"), "{err}");
        assert_eq!("Simple".parse::<Framing>(), Ok(Framing::default()));
    }
}
