//! TLS for the built-in framings (the `tls` feature), on [rustls](https://docs.rs/rustls) 0.23.
//!
//! A [`TlsTransport`] serves TLS with either framing: give it a [`TlsConfig`] (a certificate
//! chain and its private key, from PEM files or a `rustls::ServerConfig` of your own) and a
//! codec, and run the server with it. The handler does not change: it sees frames, and the
//! handshake's outcome through [`Socket::tls_info`](crate::Socket::tls_info),
//! [`Socket::alpn_protocol`](crate::Socket::alpn_protocol) and
//! [`Socket::server_name`](crate::Socket::server_name), all known from `on_connection_opened`
//! on.
//!
//! ```no_run
//! use hydrogen::tls::{TlsConfig, TlsTransport};
//! use hydrogen::{Config, Handler, Server, Socket};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type Session = ();
//!
//!     fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
//!         // The handshake is done: what the client asked for is known.
//!         println!("{:?} for {:?}", socket.alpn_protocol(), socket.server_name());
//!     }
//!
//!     fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
//!         let _ = socket.send(frame);
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // A bad file, a bad key or a key that does not match the certificate fails here.
//!     let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?
//!         .with_alpn(vec![b"hydrogen/1".to_vec()]);
//!     let config = Config { port: 4433, ..Config::default() };
//!     let framing = config.framing;
//!     Server::bind(config)?.run_with(TlsTransport::new(tls, framing), Echo)?;
//!     Ok(())
//! }
//! ```
//!
//! # The connection's life
//!
//! - **Handshake.** A connection reaches the handler only once its handshake is done (the
//!   [establishment phase](crate::Stream#establishment)): `on_connection_opened` then runs,
//!   and frames follow. A client that fails the handshake (plaintext sent to the TLS port, a
//!   protocol error, an unknown certificate authority on its side) or stalls in it for
//!   [`Config::handshake_timeout`](crate::Config::handshake_timeout) (10 s by default,
//!   [`CloseReason::HandshakeTimeout`](crate::CloseReason::HandshakeTimeout)) is closed
//!   without any callback; it is counted in the metrics. Stalled handshakes cost a timer
//!   entry and a rustls session each, and are never waited on: everyone else is served as
//!   usual.
//! - **Closing.** A local close ([`Socket::close`](crate::Socket::close)) and the server's
//!   drain write what is queued, then a TLS `close_notify`, then close the TCP connection. A
//!   peer's `close_notify` is a clean end: the frames it sent before it are delivered, the
//!   replies are written, `close_notify` is answered, and the connection is removed as
//!   [`CloseReason::PeerClosed`](crate::CloseReason::PeerClosed). A TCP end of stream
//!   without `close_notify` could be a truncation by an attacker, so it is not reported as a
//!   clean close: it is [`CloseReason::Protocol`](crate::CloseReason::Protocol) with an
//!   [`std::io::ErrorKind::UnexpectedEof`] error that says
//!   so (after every frame that arrived before it is delivered).
//! - **Errors.** A TLS protocol error (a bad record, a failed decryption) sends rustls's alert
//!   and closes the connection as [`CloseReason::Protocol`](crate::CloseReason::Protocol).
//!
//! # The crypto provider: aws-lc-rs
//!
//! rustls does no cryptography itself; a provider does. hydrogen enables exactly one,
//! **aws-lc-rs**, rustls's default: it has the fastest AES-GCM and ChaCha20-Poly1305 on
//! x86-64 of the two providers rustls ships, the post-quantum key exchange rustls prefers
//! (X25519MLKEM768), and a FIPS-validated build (rustls's `fips` feature) for deployments that
//! need one. `ring` builds faster and has no C toolchain needs beyond `cc`, which is its main
//! appeal; it is not enabled. The configurations hydrogen builds name the provider explicitly
//! ([`rustls::crypto::aws_lc_rs::default_provider`]), so they keep working if another crate
//! in the build enables `ring` as well (rustls then has no process default). The protocol
//! versions (TLS 1.2 and 1.3) and cipher suites are rustls's defaults. A
//! `rustls::ServerConfig` of your own ([`TlsConfig::from_rustls`]) may use any provider.
//!
//! # Memory and fairness
//!
//! Each connection's plaintext waits in hydrogen's own write queue (where
//! [`Config::max_outbound`](crate::Config::max_outbound), group lag policies and the memory
//! ceiling see it) and is encrypted as the socket drains, at most [`TLS_BUFFER_LIMIT`] bytes
//! ahead of it. A frame is never dropped or torn: whatever the socket does not take stays
//! queued, in order. The transport runs rustls's unbuffered server session, and hydrogen owns
//! every buffer: records are read into a per-thread buffer and decrypted there, their
//! plaintext moved into the frame decoder at once, and only an incomplete record's bytes are
//! kept; frames are encrypted into a per-thread buffer and written with one `write`, and only
//! what the socket does not take is kept. An idle TLS connection thus holds no buffer, only
//! the session's keys and state (about 2.3 KB of heap; rustls's buffered `ServerConnection`,
//! which [`TlsStream::new`] still runs, holds 4 KB more for its incoming records). Reads go
//! until the socket is drained (`WouldBlock` or a short read: the socket is watched
//! edge-triggered) or the read budget is spent. Output that reads produce (handshake
//! messages, alerts, session tickets, a key update's answer) is written without waiting for
//! a frame to be sent.

mod buffered;
mod config;
mod sni;
mod stream;
mod unbuffered;

use std::io;

pub use rustls;

pub use self::config::{TlsConfig, TlsError, TlsErrorKind, client_config, roots_from_pem_file};
pub use self::stream::{TLS_BUFFER_LIMIT, TlsSocket, TlsStream};

use crate::net::NetStream;
use crate::transport::Accepted;
use crate::{Codec, Framing, Transport};

/// A [`Transport`] that serves TLS: each accepted connection gets a [`TlsStream`] with a
/// rustls server session from the [`TlsConfig`] and a clone of the codec.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use hydrogen::tls::{TlsConfig, TlsTransport};
/// use hydrogen::{Config, LengthPrefixed, Server};
/// # struct H; impl hydrogen::Handler for H { type Session = (); }
///
/// let tls = TlsConfig::from_pem_files("cert.pem", "key.pem")?;
/// let transport = TlsTransport::new(tls, LengthPrefixed::new(1 << 20));
/// Server::bind(Config::default())?.run_with(transport, H)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TlsTransport<C = Framing> {
    tls: TlsConfig,
    codec: C,
    read_budget: usize,
}

impl<C: Codec + Clone + Sync> TlsTransport<C> {
    /// Serves TLS with `tls`, framing the plaintext with `codec`.
    pub fn new(tls: TlsConfig, codec: C) -> TlsTransport<C> {
        TlsTransport {
            tls,
            codec,
            read_budget: TlsStream::<C>::DEFAULT_READ_BUDGET,
        }
    }

    /// Sets how many bytes (of TLS records) one read of a connection takes at most before
    /// other connections get a turn; see [`TlsStream::with_read_budget`].
    pub fn with_read_budget(mut self, bytes: usize) -> TlsTransport<C> {
        self.read_budget = bytes.max(1);
        self
    }

    /// The TLS configuration.
    pub fn tls(&self) -> &TlsConfig {
        &self.tls
    }
}

impl<C: Codec + Clone + Sync> Transport for TlsTransport<C> {
    type Stream = TlsStream<C, NetStream>;

    /// Starts a server session for the connection; the handshake runs as the runtime reads.
    ///
    /// # Errors
    ///
    /// rustls refused to start a session (it does not with a working configuration).
    fn open(&self, conn: Accepted) -> io::Result<TlsStream<C, NetStream>> {
        let session =
            rustls::server::UnbufferedServerConnection::new(self.tls.server_config().clone())
                .map_err(|err| io::Error::other(format!("cannot start a TLS session: {err}")))?;
        Ok(
            TlsStream::unbuffered(session, conn.into_stream(), self.codec.clone())
                .with_read_budget(self.read_budget),
        )
    }
}
