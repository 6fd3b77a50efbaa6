//! The `tls_read` target: arbitrary bytes from a peer, read by the library's own server-side
//! TLS stream (`hydrogen::tls::TlsStream`, what `TlsTransport` gives each connection), over a
//! Unix socket pair so that no network is involved.
//!
//! The input is what a client sends before closing its side. The stream is driven as the
//! server drives it (`recv` until the end or an error, `flush` after each call) and must
//! neither panic nor hold more than a bounded amount of memory; every call must end.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};

use hydrogen::tls::rustls::server::UnbufferedServerConnection;
use hydrogen::tls::rustls::{ServerConfig, ServerConnection};
use hydrogen::tls::{TlsConfig, TlsStream};
use hydrogen::{Frames, LengthPrefixed, RecvStatus, Stream};

/// A throwaway self-signed certificate for `localhost` and its key, made for this target
/// (`openssl req`); they protect nothing.
const CERT: &[u8] = include_bytes!("../tls/cert.pem");
const KEY: &[u8] = include_bytes!("../tls/key.pem");

/// The most input fed: a Unix socket's buffer takes it all at once.
const MAX_INPUT: usize = 64 * 1024;

fn config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            TlsConfig::from_pem(CERT, KEY)
                .expect("the fuzz certificate loads")
                .with_alpn(vec![b"hydrogen/1".to_vec()])
                .server_config()
                .clone()
        })
        .clone()
}

/// Feeds `data` to both server-side TLS streams' read paths: the unbuffered session, which
/// `TlsTransport` uses, and the buffered one (`TlsStream::new`).
pub fn check_tls_read(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    check_unbuffered(data);
    check_buffered(data);
}

/// A socket pair whose peer end has written `data` and closed its side: (server end, peer
/// end). The peer end is kept open until the stream is done, so that what the server writes
/// (alerts) does not meet a closed socket (libFuzzer's process does not ignore SIGPIPE).
fn peer_sent(data: &[u8]) -> (UnixStream, UnixStream) {
    let (server, mut peer) = UnixStream::pair().expect("socketpair");
    server.set_nonblocking(true).expect("non-blocking");
    peer.write_all(data)
        .expect("the socket buffer takes the input");
    peer.shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    (server, peer)
}

/// The unbuffered stream stops at a short read (`Drained`), as `Framed` does; the server
/// then reads on after the peer's hang-up, and so does this loop.
fn check_unbuffered(data: &[u8]) {
    let (server, _peer) = peer_sent(data);
    let session = UnbufferedServerConnection::new(config()).expect("a server session");
    let stream = TlsStream::unbuffered(session, server, LengthPrefixed::new(1 << 16));
    drive(stream, data.len(), true);
}

fn check_buffered(data: &[u8]) {
    let (server, _peer) = peer_sent(data);
    let session = ServerConnection::new(config()).expect("a server session");
    let stream = TlsStream::new(session, server, LengthPrefixed::new(1 << 16));
    drive(stream, data.len(), false);
}

/// Runs `recv` (and `flush`) until the end or an error: at most one call per input byte
/// and two more, each of which must end.
fn drive(mut stream: TlsStream<LengthPrefixed, UnixStream>, len: usize, drained_ok: bool) {
    let mut frames = Frames::new();
    for _ in 0..=len + 2 {
        let status = stream.recv(&mut frames);
        frames.clear();
        let _ = stream.flush();
        assert!(
            stream.buffered_input() <= (1 << 16) + 4 + 64 * 1024,
            "the frame buffer grew past the frame limit"
        );
        match status {
            Ok(RecvStatus::Drained) if drained_ok => {}
            Ok(RecvStatus::Drained) => panic!("Drained with the peer's end in the socket"),
            Ok(RecvStatus::MoreAvailable) => {}
            Ok(RecvStatus::Eof) | Err(_) => {
                let _ = stream.shutdown();
                return;
            }
        }
    }
    panic!("recv never reached the end of {len} bytes");
}
