//! hydrogen: TCP servers on Linux that hold very many connections and exchange small framed
//! messages with low latency.
//!
//! You provide a [`Handler`] (what to do with each connection and frame); the library accepts
//! connections, watches them with epoll, reads and decodes frames, runs your callbacks on a pool
//! of worker threads, and writes replies, queuing what the socket cannot take yet.
//!
//! - [`Server`] binds and runs; a [`ShutdownHandle`] stops it and lists the open connections
//!   ([`ShutdownHandle::connections`]).
//! - [`Handler`] receives the callbacks, with a per-connection [`Handler::Session`];
//!   [`Socket`] is a handle to one connection that sends from any thread.
//! - [`Stream`] is one connection's transport and framing, and a [`Transport`] makes one for
//!   each accepted socket. [`Framed`] implements it for the built-in framings, [`SimpleFrame`]
//!   (compatible with the `simple-stream` crate) and [`LengthPrefixed`] (u32 big-endian
//!   length), chosen at run time with [`Config::framing`], so most servers never implement
//!   either.
//! - [`Group`] broadcasts a frame to many connections, encoded once and shared, with a
//!   [`LagPolicy`] per member.
//! - [`Handler::offload`] runs blocking work on a pool, each connection's frames in order.
//! - Metrics go through the [`metrics`](https://docs.rs/metrics) crate's facade (see
//!   [Metrics](#metrics)).
//! - [`client::Client`] is a small blocking client for the same framings.
//! - With the `tls` feature, `hydrogen::tls` serves TLS (rustls, aws-lc-rs) in either framing:
//!   `TlsConfig` (PEM files or a `rustls::ServerConfig`, ALPN), `TlsTransport`, and
//!   `Client::connect_tls`. A TLS connection reaches the handler once its handshake is done
//!   ([`Stream::is_established`], [`Config::handshake_timeout`]), and
//!   [`Socket::alpn_protocol`], [`Socket::server_name`] and [`Socket::tls_info`] tell what it
//!   negotiated.
//! - Behind a load balancer, [`Config::proxy_protocol`] reads a PROXY protocol header (v1 or
//!   v2, [`proxy`]) from each connection, and [`Socket::peer_addr`] is the client it names.
//!   A server listens on several addresses ([`Config::listen`]: TCP, IPv6, Unix-domain paths;
//!   [`PeerAddr`] says which kind of peer), shares its port with other processes
//!   ([`Config::reuse_port`]), and sets socket options ([`Config::keepalive`],
//!   [`Config::tcp_user_timeout`], [`Config::recv_buffer`]) through socket2.
//!
//! # Guarantees
//!
//! For each connection, frames reach [`Handler::on_frame`] in order and exactly once, and the
//! callbacks of one connection never run at the same time. Frames sent through a [`Socket`] go out
//! in order, whole, without waiting for the peer to speak. A [`Socket`] whose connection has
//! closed fails with [`SendError::Closed`]; it never reaches a later connection. Every opened
//! connection gets exactly one [`Handler::on_connection_removed`], with a [`CloseReason`].
//! Frames the peer sent just before closing are delivered, and replies to them are written.
//! Frames broadcast to a [`Group`] from one thread reach every member in that order (across
//! all the member's groups, and before what is sent to it after them), and a broadcast never
//! waits for a member's socket.
//!
//! # Metrics
//!
//! Install a recorder of the [`metrics`](https://docs.rs/metrics) facade (Prometheus, StatsD,
//! anything) before the first [`Server::run`] of the process: the handles are registered then,
//! once, and shared by every server of the process. Without a recorder they do nothing.
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `hydrogen_connections_open` | gauge | connections open now |
//! | `hydrogen_connections_accepted_total` | counter | connections accepted (with TLS, those whose handshake then fails included) |
//! | `hydrogen_connections_opened_total` | counter | connections that reached the handler (`on_connection_opened` ran): accepted ones less those refused by the transport, the TLS handshake or the PROXY check |
//! | `hydrogen_connections_refused_total` | counter | connections refused at `max_connections` |
//! | `hydrogen_connections_closed_total{reason}` | counter | closes, by [`CloseReason::kind`] (`handshake_timeout`, `proxy_refused` and `proxy_header_timeout` among them: connections that never reached the handler; a refusal of an untrusted proxy source is counted here and not as accepted) |
//! | `hydrogen_frames_received_total`, `hydrogen_frame_bytes_received_total` | counter | frames (and their payload bytes) delivered to the handler |
//! | `hydrogen_frames_sent_total`, `hydrogen_frame_bytes_sent_total` | counter | frames (and payload bytes) queued to connections, broadcast frames counted per member as it takes them |
//! | `hydrogen_buffered_bytes` | gauge | bytes held in outbound queues and incomplete inbound frames |
//! | `hydrogen_accept_pauses_total` | counter | times accepting paused for lack of descriptors or memory |
//! | `hydrogen_callback_seconds` | histogram | time in the handler's `on_frame` calls, per batch of one connection's frames (per frame on the blocking pool) |
//!
//! # Example
//!
//! An echo server on a free port, one client, and a clean shutdown:
//!
//! ```
//! use std::io;
//! use std::thread;
//!
//! use hydrogen::client::Client;
//! use hydrogen::{Config, Handler, Server, SimpleFrame, Socket};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type Session = ();
//!
//!     fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
//!         // Fails only if the connection is already gone.
//!         let _ = socket.send(frame);
//!     }
//! }
//!
//! fn main() -> io::Result<()> {
//!     let config = Config { port: 0, max_threads: 2, ..Config::default() };
//!     let server = Server::bind(config)?;
//!     let addr = server.local_addr()?;
//!     let stop = server.shutdown_handle();
//!     let running = thread::spawn(move || server.run(Echo));
//!
//!     let mut client = Client::connect(addr, SimpleFrame)?;
//!     client.send(b"hello")?;
//!     assert_eq!(client.recv()?.as_deref(), Some(&b"hello"[..]));
//!
//!     stop.shutdown();
//!     let summary = running.join().expect("server thread panicked")?;
//!     assert_eq!(summary.accepted, 1);
//!     Ok(())
//! }
//! ```
#![deny(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
mod config;
mod framed;
mod frames;
mod group;
mod handler;
mod net;
pub mod proxy;
mod runtime;
mod server;
mod socket;
mod stream;
mod sys;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;

pub use codec::{Codec, Decoded, FrameError, LengthPrefixed, SimpleFrame};
pub use config::{Config, OutboundPolicy};
pub use framed::{Framed, LengthPrefixedStream, SimpleStream};
pub use frames::{Frames, Iter};
pub use group::{Group, LagPolicy, OnLag, SharedFrame};
pub use handler::{CloseReason, Handler};
/// CIDR ranges, as [`Config::proxy_from`] takes them (the `ipnet` crate's type).
pub use ipnet::IpNet;
pub use net::{Keepalive, ListenAddr, NetStream, PeerAddr};
pub use server::{ConnectionInfo, RunSummary, Server, ShutdownHandle};
pub use socket::{Hold, SendError, Socket};
pub use stream::{RecvStatus, Stream, TlsInfo};
pub use transport::{Accepted, Framing, Transport, UnknownFraming};

/// Internals that the fuzz targets (`fuzz/`) and `tests/fuzz_regressions.rs` check. Not part of
/// the API: anything here may change or go in any release.
#[doc(hidden)]
pub mod __fuzz {
    use crate::codec::Deframer;

    pub use crate::codec::deframer::{RBUF_MIN, RBUF_SHRINK_ABOVE, RBUF_STEP_MAX, rbuf_len_for};

    /// The allocated capacity of the deframer's read buffer (0 when it holds no allocation).
    pub fn read_buffer_capacity<C>(deframer: &Deframer<C>) -> usize {
        deframer.capacity()
    }
}

/// The README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
