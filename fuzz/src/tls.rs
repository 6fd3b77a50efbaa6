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

/// Feeds `data` to a server-side TLS stream's read path.
pub fn check_tls_read(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    let (server, mut peer) = UnixStream::pair().expect("socketpair");
    server.set_nonblocking(true).expect("non-blocking");
    peer.write_all(data)
        .expect("the socket buffer takes the input");
    peer.shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let session = ServerConnection::new(config()).expect("a server session");
    let mut stream = TlsStream::new(session, server, LengthPrefixed::new(1 << 16));
    let mut frames = Frames::new();
    // Each call reads at least one byte or ends, so the input bounds the calls.
    for _ in 0..=data.len() + 1 {
        let status = stream.recv(&mut frames);
        frames.clear();
        let _ = stream.flush();
        assert!(
            stream.buffered_input() <= (1 << 16) + 4 + 64 * 1024,
            "the frame buffer grew past the frame limit"
        );
        match status {
            Ok(RecvStatus::Drained) => panic!("Drained with the peer's end in the socket"),
            Ok(RecvStatus::MoreAvailable) => {}
            Ok(RecvStatus::Eof) | Err(_) => {
                let _ = stream.shutdown();
                return;
            }
        }
    }
    panic!("recv never reached the end of {} bytes", data.len());
}
