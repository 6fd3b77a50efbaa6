//! TLS (the `tls` feature) with real clients: hydrogen's own blocking client (rustls), a raw
//! rustls client session, Python's `ssl` module and `openssl s_client`, against a self-signed
//! certificate made with `openssl req` at test time.
#![cfg(feature = "tls")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hydrogen::client::Client;
use hydrogen::tls::rustls;
use hydrogen::tls::{TlsConfig, TlsErrorKind, TlsTransport};
use hydrogen::{CloseReason, Codec, Config, Framing, Handler, LengthPrefixed, SimpleFrame, Socket};
use parking_lot::Mutex;

use common::{DEADLINE, TestServer, assert_closed_by_server, wait_until};

/// A temporary directory with a certificate for `localhost` and its key (PKCS#8), and a
/// second, unrelated key.
struct Certs {
    dir: PathBuf,
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

impl Certs {
    #[track_caller]
    fn make() -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "hydrogen-tls-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Certs { dir };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,DNS:alt.example",
            // A self-signed end-entity certificate (webpki refuses a CA as one).
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            certs.key().to_str().unwrap(),
            "-out",
            certs.cert().to_str().unwrap(),
        ]);
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-out",
            certs.other_key().to_str().unwrap(),
        ]);
        certs
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn other_key(&self) -> PathBuf {
        self.dir.join("other-key.pem")
    }

    fn config(&self) -> TlsConfig {
        TlsConfig::from_pem_files(self.cert(), self.key()).expect("the test certificate loads")
    }

    fn roots(&self) -> rustls::RootCertStore {
        hydrogen::tls::roots_from_pem_file(self.cert()).unwrap()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[track_caller]
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs (.ci/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A connection as `on_connection_opened` saw it: id, ALPN, SNI, protocol version.
type Opened = (u64, Option<Vec<u8>>, Option<String>, Option<String>);

/// What the handler saw of each connection.
#[derive(Default)]
struct Seen {
    /// (id, ALPN, SNI, protocol version) at `on_connection_opened`.
    opened: Mutex<Vec<Opened>>,
    frames: AtomicU64,
    /// (id, kind, message).
    removed: Mutex<Vec<(u64, &'static str, String)>>,
    /// `Socket::peer_addr` at `on_connection_opened`, in order.
    peers: Mutex<Vec<String>>,
}

/// Echoes every frame; `close me` closes the connection instead.
struct Echo(Arc<Seen>);

impl Handler for Echo {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        let tls = socket.tls_info().expect("a TLS connection has TlsInfo");
        self.0.peers.lock().push(socket.peer_addr().to_string());
        self.0.opened.lock().push((
            socket.id(),
            socket.alpn_protocol().map(<[u8]>::to_vec),
            socket.server_name().map(str::to_string),
            tls.protocol_version().map(str::to_string),
        ));
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        self.0.frames.fetch_add(1, Ordering::Relaxed);
        if frame == b"close me" {
            socket.close();
        } else {
            let _ = socket.send(frame);
        }
    }

    fn on_connection_removed(&self, _: (), socket: &Socket, reason: &CloseReason) {
        self.0
            .removed
            .lock()
            .push((socket.id(), reason.kind(), reason.to_string()));
    }
}

impl Seen {
    #[track_caller]
    fn removal(&self, id: u64) -> (&'static str, String) {
        wait_until("the removal", || {
            self.removed.lock().iter().any(|r| r.0 == id)
        });
        let removed = self.removed.lock();
        let r = removed.iter().find(|r| r.0 == id).unwrap();
        (r.1, r.2.clone())
    }

    #[track_caller]
    fn nth_opened(&self, n: usize) -> u64 {
        wait_until("a connection to open", || self.opened.lock().len() >= n);
        self.opened.lock()[n - 1].0
    }
}

fn start(certs: &Certs, tls: TlsConfig, config: Config) -> (TestServer, Arc<Seen>) {
    let _ = certs;
    let seen = Arc::new(Seen::default());
    let framing = config.framing;
    let server =
        TestServer::start_with(config, TlsTransport::new(tls, framing), Echo(seen.clone()));
    (server, seen)
}

fn tls_config(threads: usize, framing: Framing) -> Config {
    Config {
        max_threads: threads,
        framing,
        ..Config::default()
    }
}

#[track_caller]
fn connect<C: Codec>(addr: SocketAddr, codec: C, certs: &Certs) -> Client<C> {
    let client = Client::connect_tls(addr, codec, "localhost", certs.roots()).expect("handshake");
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client
}

#[test]
fn echo_in_both_framings_with_large_frames() {
    let certs = Certs::make();
    for framing in [
        Framing::Simple(SimpleFrame),
        Framing::LengthPrefixed(LengthPrefixed::default()),
    ] {
        let (server, seen) = start(&certs, certs.config(), tls_config(2, framing));
        let mut client = connect(server.addr, framing, &certs);
        for payload in [&b"hello"[..], b"", &[0x17; 60_000][..]] {
            client.send(payload).unwrap();
            assert_eq!(
                client.recv().unwrap().as_deref(),
                Some(payload),
                "{framing}"
            );
        }
        // Many 60,000-byte frames at once: more than rustls's buffer and the socket's.
        let big: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        for _ in 0..20 {
            client.feed(&big).unwrap();
        }
        client.flush().unwrap();
        for i in 0..20 {
            assert_eq!(
                client.recv().unwrap().as_deref(),
                Some(&big[..]),
                "frame {i}"
            );
        }
        let opened = seen.opened.lock().clone();
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].2.as_deref(), Some("localhost"), "SNI");
        assert_eq!(opened[0].1, None, "no ALPN configured");
        assert!(opened[0].3.as_deref().unwrap().starts_with("TLSv1_"));
        drop(client);
        server.stop().unwrap();
    }
}

#[test]
fn fifty_concurrent_clients() {
    let certs = Arc::new(Certs::make());
    let (server, seen) = start(&certs, certs.config(), tls_config(2, Framing::default()));
    let addr = server.addr;
    let clients: Vec<_> = (0..50u32)
        .map(|n| {
            let certs = certs.clone();
            thread::spawn(move || {
                let mut client = connect(addr, SimpleFrame, &certs);
                for i in 0..20u32 {
                    let payload = format!("client {n} frame {i}");
                    client.send(payload.as_bytes()).unwrap();
                    assert_eq!(client.recv().unwrap().unwrap(), payload.as_bytes());
                }
                client.shutdown_write().unwrap();
                assert_eq!(client.recv().unwrap(), None, "a clean end");
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
    assert_eq!(seen.frames.load(Ordering::Relaxed), 50 * 20);
    wait_until("every removal", || seen.removed.lock().len() == 50);
    assert!(
        seen.removed.lock().iter().all(|r| r.1 == "peer_closed"),
        "{:?}",
        seen.removed.lock()
    );
    server.stop().unwrap();
}

/// Many small frames in one write: far more than rustls's 16 KiB plaintext buffer arrives in
/// one edge, so the plaintext must be taken out after every record.
#[test]
fn more_than_16_kib_of_small_frames_at_once() {
    let certs = Certs::make();
    let (server, _seen) = start(&certs, certs.config(), tls_config(2, Framing::default()));
    let mut client = connect(server.addr, SimpleFrame, &certs);
    const N: usize = 5_000; // 5,000 x 14 bytes = 70 KB
    for i in 0..N {
        client.feed(format!("small {i:05}").as_bytes()).unwrap();
    }
    client.flush().unwrap();
    for i in 0..N {
        assert_eq!(
            client.recv().unwrap().unwrap(),
            format!("small {i:05}").as_bytes()
        );
    }
    drop(client);
    server.stop().unwrap();
}

#[test]
fn close_notify_both_ways() {
    let certs = Certs::make();
    let (server, seen) = start(&certs, certs.config(), tls_config(2, Framing::default()));

    // The peer's close_notify: a clean close, answered by the server's.
    let mut client = connect(server.addr, SimpleFrame, &certs);
    client.send(b"hi").unwrap();
    assert_eq!(client.recv().unwrap().unwrap(), b"hi");
    client.shutdown_write().unwrap();
    assert_eq!(
        client.recv().unwrap(),
        None,
        "the server answered with close_notify"
    );
    let id = seen.nth_opened(1);
    assert_eq!(seen.removal(id).0, "peer_closed");

    // A local close: the queued reply, then close_notify, then the TCP close.
    let mut client = connect(server.addr, SimpleFrame, &certs);
    client.feed(b"before").unwrap();
    client.feed(b"close me").unwrap();
    client.flush().unwrap();
    assert_eq!(client.recv().unwrap().unwrap(), b"before");
    assert_eq!(
        client.recv().unwrap(),
        None,
        "close_notify, not a truncation"
    );
    let id = seen.nth_opened(2);
    assert_eq!(seen.removal(id).0, "local");

    // The drain: close_notify too.
    let mut client = connect(server.addr, SimpleFrame, &certs);
    client.send(b"x").unwrap();
    assert_eq!(client.recv().unwrap().unwrap(), b"x");
    let id = seen.nth_opened(3);
    server.stop().unwrap();
    assert_eq!(seen.removal(id).0, "shutdown");
    assert_eq!(client.recv().unwrap(), None, "close_notify at shutdown");
}

/// Frames sent just before the peer's close_notify (in the same flight) are delivered and
/// answered, as frames before a FIN are without TLS.
#[test]
fn frames_just_before_close_notify_are_answered() {
    let certs = Certs::make();
    let (server, seen) = start(&certs, certs.config(), tls_config(2, Framing::default()));
    for round in 0..10 {
        let (mut tls, mut tcp) = raw_client(server.addr, &certs, vec![]);
        let mut wire = Vec::new();
        for i in 0..50 {
            SimpleFrame
                .encode(format!("{round}/{i}").as_bytes(), &mut wire)
                .unwrap();
        }
        tls.writer().write_all(&wire).unwrap();
        tls.send_close_notify();
        while tls.wants_write() {
            tls.write_tls(&mut tcp).unwrap();
        }
        let got = read_to_close_notify(&mut tls, &mut tcp);
        assert_eq!(
            got, wire,
            "round {round}: every frame answered, then close_notify"
        );
    }
    wait_until("every removal", || seen.removed.lock().len() == 10);
    assert!(seen.removed.lock().iter().all(|r| r.1 == "peer_closed"));
    server.stop().unwrap();
}

#[test]
fn tcp_eof_without_close_notify_is_a_truncation() {
    let certs = Certs::make();
    let (server, seen) = start(&certs, certs.config(), tls_config(2, Framing::default()));
    let mut client = connect(server.addr, SimpleFrame, &certs);
    client.send(b"last words").unwrap();
    assert_eq!(client.recv().unwrap().unwrap(), b"last words");
    // A TCP FIN with no close_notify before it.
    client
        .get_ref()
        .shutdown(std::net::Shutdown::Write)
        .unwrap();
    let id = seen.nth_opened(1);
    let (kind, message) = seen.removal(id);
    assert_eq!(kind, "protocol", "{message}");
    assert!(message.contains("without a TLS close_notify"), "{message}");
    server.stop().unwrap();
}

#[test]
fn plaintext_to_the_tls_port_is_closed_and_others_are_served() {
    let certs = Certs::make();
    let (server, seen) = start(&certs, certs.config(), tls_config(2, Framing::default()));
    let mut plain = TcpStream::connect(server.addr).unwrap();
    let mut wire = Vec::new();
    SimpleFrame
        .encode(b"hello in the clear", &mut wire)
        .unwrap();
    plain.write_all(&wire).unwrap();
    assert_closed_by_server(&plain, "a plaintext client");

    let mut client = connect(server.addr, SimpleFrame, &certs);
    client.send(b"still fine").unwrap();
    assert_eq!(client.recv().unwrap().unwrap(), b"still fine");
    drop(client);
    let summary = server.stop().unwrap();
    assert_eq!(summary.accepted, 2, "the plaintext client was accepted");
    assert_eq!(summary.opened, 1, "but not opened: {summary:?}");
    assert_eq!(seen.opened.lock().len(), 1, "but never reached the handler");
    assert_eq!(seen.removed.lock().len(), 1, "and got no removal either");
}

/// Thousands of peers that connect and never finish the handshake hold nobody up, and are
/// closed by the handshake timeout: with no idle or frame timeout set, that is the only
/// timeout that can close them.
#[test]
fn stalled_handshakes_time_out_and_others_are_served() {
    let certs = Certs::make();
    let config = Config {
        handshake_timeout: Some(Duration::from_secs(3)),
        idle_timeout: None,
        frame_timeout: None,
        ..tls_config(2, Framing::default())
    };
    let (server, seen) = start(&certs, certs.config(), config);
    let mut stalled = Vec::new();
    for i in 0..2_000 {
        let mut tcp = TcpStream::connect(server.addr).unwrap();
        if i % 2 == 0 {
            // The start of a ClientHello record, and then nothing.
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .unwrap();
        }
        stalled.push(tcp);
    }
    // Everyone else is served at once meanwhile.
    let started = Instant::now();
    let mut client = connect(server.addr, SimpleFrame, &certs);
    client.send(b"served").unwrap();
    assert_eq!(client.recv().unwrap().unwrap(), b"served");
    // Served while the stalled ones still wait for their timeout, not after it.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a handshake and echo took {:?} beside the stalled ones",
        started.elapsed()
    );
    for tcp in &stalled {
        assert_closed_by_server(tcp, "a stalled handshake");
    }
    // The served client is still open: only the stalled ones timed out.
    client.send(b"after").unwrap();
    assert_eq!(client.recv().unwrap().unwrap(), b"after");
    assert_eq!(server.shutdown.connections().len(), 1);
    assert!(
        seen.removed.lock().is_empty(),
        "no callback for a handshake"
    );
    drop(client);
    server.stop().unwrap();
}

#[test]
fn alpn_and_sni_are_visible_to_the_handler() {
    let certs = Certs::make();
    let tls = certs
        .config()
        .with_alpn(vec![b"hydrogen/2".to_vec(), b"hydrogen/1".to_vec()]);
    let (server, seen) = start(&certs, tls, tls_config(2, Framing::default()));
    let mut client_config = (*hydrogen::tls::client_config(certs.roots())).clone();
    client_config.alpn_protocols = vec![b"other".to_vec(), b"hydrogen/1".to_vec()];
    let mut client = Client::connect_tls_with(
        server.addr,
        SimpleFrame,
        "alt.example",
        Arc::new(client_config),
    )
    .unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(
        client.tls_session().unwrap().alpn_protocol(),
        Some(&b"hydrogen/1"[..])
    );
    client.send(b"x").unwrap();
    assert_eq!(client.recv().unwrap().unwrap(), b"x");
    let opened = seen.opened.lock().clone();
    assert_eq!(opened[0].1.as_deref(), Some(&b"hydrogen/1"[..]));
    assert_eq!(opened[0].2.as_deref(), Some("alt.example"));

    // A client that offers only protocols the server does not speak is refused.
    let mut only_other = (*hydrogen::tls::client_config(certs.roots())).clone();
    only_other.alpn_protocols = vec![b"other".to_vec()];
    let err = Client::connect_tls_with(server.addr, SimpleFrame, "localhost", Arc::new(only_other))
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("application"),
        "{err}"
    );
    drop(client);
    server.stop().unwrap();
    assert_eq!(seen.opened.lock().len(), 1);
}

#[test]
fn bad_certificates_and_keys_are_clear_errors_at_config_time() {
    let certs = Certs::make();
    let err = TlsConfig::from_pem_files(certs.cert(), certs.other_key()).unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::KeyMismatch, "{err}");
    let message = err.to_string();
    assert!(message.contains("does not match"), "{message}");
    assert!(
        message.contains(certs.other_key().to_str().unwrap())
            && message.contains(certs.cert().to_str().unwrap()),
        "names both files: {message}"
    );
    assert!(std::error::Error::source(&err).is_some());

    let missing = certs.dir.join("missing.pem");
    let err = TlsConfig::from_pem_files(&missing, certs.key()).unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::Read);
    assert!(err.to_string().contains("missing.pem"), "{err}");
    assert_eq!(err.path(), Some(missing.as_path()));

    // The key file given as the certificate: no certificate in it.
    let err = TlsConfig::from_pem_files(certs.key(), certs.key()).unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::Missing, "{err}");
    assert!(err.to_string().contains("no certificate"), "{err}");
    // The certificate given as the key.
    let err = TlsConfig::from_pem_files(certs.cert(), certs.cert()).unwrap_err();
    assert_eq!(err.kind(), TlsErrorKind::Missing, "{err}");
    assert!(err.to_string().contains("private key"), "{err}");
    // Garbage inside a PEM block.
    let garbage = certs.dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = TlsConfig::from_pem_files(&garbage, certs.key()).unwrap_err();
    assert!(err.to_string().contains("garbage.pem"), "{err}");
}

#[test]
fn rsa_and_sec1_keys_load() {
    let certs = Certs::make();
    let dir = &certs.dir;
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    // RSA (PKCS#1, "RSA PRIVATE KEY").
    openssl(&["genrsa", "-traditional", "-out", &path("rsa.pem"), "2048"]);
    openssl(&[
        "req",
        "-x509",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-key",
        &path("rsa.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-out",
        &path("rsa-cert.pem"),
    ]);
    assert!(
        std::fs::read_to_string(dir.join("rsa.pem"))
            .unwrap()
            .contains("RSA PRIVATE KEY")
    );
    TlsConfig::from_pem_files(dir.join("rsa-cert.pem"), dir.join("rsa.pem")).unwrap();
    // SEC1 ("EC PRIVATE KEY").
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &path("ec.pem"),
    ]);
    openssl(&[
        "req",
        "-x509",
        "-key",
        &path("ec.pem"),
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-out",
        &path("ec-cert.pem"),
    ]);
    assert!(
        std::fs::read_to_string(dir.join("ec.pem"))
            .unwrap()
            .contains("EC PRIVATE KEY")
    );
    TlsConfig::from_pem_files(dir.join("ec-cert.pem"), dir.join("ec.pem")).unwrap();
}

/// A KeyUpdate from the client on an idle connection is answered at once: rustls queues the
/// answer until it next sends, so the stream must push it out and report it pending.
#[test]
fn key_update_on_an_idle_connection_is_answered() {
    let certs = Certs::make();
    let (server, _seen) = start(&certs, certs.config(), tls_config(2, Framing::default()));
    let (mut tls, mut tcp) = raw_client(server.addr, &certs, vec![]);
    // A round trip first, so the session tickets are out of the way.
    let mut wire = Vec::new();
    SimpleFrame.encode(b"before", &mut wire).unwrap();
    tls.writer().write_all(&wire).unwrap();
    flush_tls(&mut tls, &mut tcp);
    assert_eq!(read_plain(&mut tls, &mut tcp, wire.len()), wire);

    tls.refresh_traffic_keys().expect("TLS 1.3 key update");
    flush_tls(&mut tls, &mut tcp);
    // No frame is sent, yet the server writes its KeyUpdate.
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 4096];
    let n = tcp
        .read(&mut buf)
        .expect("the server's answer, within the deadline");
    assert!(n > 0, "the server closed instead");
    tls.read_tls(&mut &buf[..n]).unwrap();
    let state = tls.process_new_packets().expect("a valid KeyUpdate");
    assert_eq!(state.plaintext_bytes_to_read(), 0, "only the key update");
    // And the connection goes on under the new keys.
    let mut wire = Vec::new();
    SimpleFrame.encode(b"after", &mut wire).unwrap();
    tls.writer().write_all(&wire).unwrap();
    flush_tls(&mut tls, &mut tcp);
    assert_eq!(read_plain(&mut tls, &mut tcp, wire.len()), wire);
    server.stop().unwrap();
}

#[test]
fn python_ssl_client_echoes_in_both_framings() {
    let certs = Certs::make();
    for (framing, name) in [
        (Framing::Simple(SimpleFrame), "simple"),
        (Framing::LengthPrefixed(LengthPrefixed::default()), "length"),
    ] {
        let (server, seen) = start(
            &certs,
            certs.config().with_alpn(vec![b"hydrogen/1".to_vec()]),
            tls_config(2, framing),
        );
        let script = r#"
import socket, ssl, struct, sys
port, cafile, framing = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
ctx.set_alpn_protocols(["hydrogen/1"])
def frame(p):
    if framing == "simple":
        return b"\x01" + struct.pack(">H", len(p)) + p + b"\x17"
    return struct.pack(">I", len(p)) + p
def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise SystemExit("closed early")
        out += chunk
    return out
with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "hydrogen/1", s.selected_alpn_protocol()
        payloads = [b"hello", b"", bytes(range(256)) * 234]
        wire = b"".join(frame(p) for p in payloads)
        s.sendall(wire)
        assert recv_exact(s, len(wire)) == wire
        version = s.version()
        s.unwrap()
print("ok", version)
"#;
        let out = Command::new("python3")
            .args([
                "-c",
                script,
                &server.addr.port().to_string(),
                certs.cert().to_str().unwrap(),
                name,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("python3 runs (.ci/run installs it)");
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok TLSv1.3"));
        let id = seen.nth_opened(1);
        assert_eq!(
            seen.removal(id).0,
            "peer_closed",
            "Python's unwrap sends close_notify"
        );
        assert_eq!(seen.opened.lock()[0].1.as_deref(), Some(&b"hydrogen/1"[..]));
        server.stop().unwrap();
    }
}

#[test]
fn openssl_s_client_verifies_and_negotiates() {
    let certs = Certs::make();
    let (server, seen) = start(
        &certs,
        certs.config().with_alpn(vec![b"hydrogen/1".to_vec()]),
        tls_config(2, Framing::default()),
    );
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &server.addr.to_string(),
            "-servername",
            "localhost",
            "-CAfile",
            certs.cert().to_str().unwrap(),
            "-verify_return_error",
            "-alpn",
            "hydrogen/1",
            "-ign_eof",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    // One frame, then stdin's end; with -ign_eof s_client waits for the server's reply, and
    // exits when the server closes (the handler closes on "close me").
    let mut wire = Vec::new();
    SimpleFrame.encode(b"from s_client", &mut wire).unwrap();
    SimpleFrame.encode(b"close me", &mut wire).unwrap();
    child.stdin.take().unwrap().write_all(&wire).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("s_client did not finish");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = out.stdout;
    let text = String::from_utf8_lossy(&stdout);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("ALPN protocol: hydrogen/1"), "{text}");
    let mut echoed = Vec::new();
    SimpleFrame.encode(b"from s_client", &mut echoed).unwrap();
    assert!(
        stdout.windows(echoed.len()).any(|w| w == echoed),
        "the echo is in s_client's output: {text}"
    );
    let id = seen.nth_opened(1);
    assert_eq!(seen.removal(id).0, "local");
    assert_eq!(seen.opened.lock()[0].2.as_deref(), Some("localhost"));
    server.stop().unwrap();
}

// ---------------------------------------------------------------------------------------------
// A raw rustls client session over a blocking socket, for what the blocking client hides.

fn raw_client(
    addr: SocketAddr,
    certs: &Certs,
    alpn: Vec<Vec<u8>>,
) -> (rustls::ClientConnection, TcpStream) {
    let mut config = (*hydrogen::tls::client_config(certs.roots())).clone();
    config.alpn_protocols = alpn;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let start = Instant::now();
    while tls.is_handshaking() {
        assert!(start.elapsed() < DEADLINE, "handshake");
        tls.complete_io(&mut tcp).unwrap();
    }
    (tls, tcp)
}

fn flush_tls(tls: &mut rustls::ClientConnection, tcp: &mut TcpStream) {
    while tls.wants_write() {
        tls.write_tls(tcp).unwrap();
    }
}

/// Reads `n` bytes of plaintext.
fn read_plain(tls: &mut rustls::ClientConnection, tcp: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    rustls::Stream::new(tls, tcp)
        .read_exact(&mut out)
        .expect("the reply");
    out
}

/// Reads plaintext until the server's close_notify (a TCP end without it fails).
fn read_to_close_notify(tls: &mut rustls::ClientConnection, tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    match rustls::Stream::new(tls, tcp).read_to_end(&mut out) {
        Ok(_) => out,
        Err(err) => panic!("after {} bytes: {err}", out.len()),
    }
}

/// Group broadcasts reach TLS members: the shared encoding is queued by reference and
/// encrypted per member, in order, whole, with large and small frames mixed.
#[test]
fn group_broadcasts_reach_tls_members_in_order() {
    struct Room(hydrogen::Group);
    impl Handler for Room {
        type Session = ();
        fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
            self.0.join(socket);
            let _ = socket.send(b"joined");
        }
        fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
            self.0.broadcast_except(frame, socket);
        }
    }
    let certs = Certs::make();
    let server = TestServer::start_with(
        tls_config(2, Framing::default()),
        TlsTransport::new(certs.config(), Framing::default()),
        Room(hydrogen::Group::new()),
    );
    let mut members: Vec<_> = (0..3)
        .map(|_| {
            let mut client = connect(server.addr, SimpleFrame, &certs);
            assert_eq!(client.recv().unwrap().unwrap(), b"joined");
            client
        })
        .collect();
    let frames: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            let len = if i % 10 == 0 { 50_000 } else { 20 };
            vec![(i % 251) as u8; len]
        })
        .collect();
    for frame in &frames {
        members[0].feed(frame).unwrap();
    }
    members[0].flush().unwrap();
    for member in &mut members[1..] {
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(&member.recv().unwrap().unwrap(), frame, "frame {i}");
        }
    }
    drop(members);
    server.stop().unwrap();
}

#[test]
fn a_proxy_header_comes_before_the_tls_handshake() {
    // HAProxy in TCP mode in front of a TLS server: the header, then the ClientHello,
    // possibly in one segment. The header is taken off first; the handshake gets the rest.
    let certs = Certs::make();
    let config = Config {
        proxy_protocol: true,
        ..tls_config(2, Framing::Simple(SimpleFrame))
    };
    let (server, seen) = start(&certs, certs.config(), config);
    let mut config = (*hydrogen::tls::client_config(certs.roots())).clone();
    config.alpn_protocols = Vec::new();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    // Header and ClientHello in one write.
    let mut first = b"PROXY TCP4 198.51.100.20 127.0.0.1 3333 443\r\n".to_vec();
    tls.write_tls(&mut first).unwrap();
    tcp.write_all(&first).unwrap();
    let start = Instant::now();
    while tls.is_handshaking() {
        assert!(start.elapsed() < DEADLINE, "handshake");
        tls.complete_io(&mut tcp).unwrap();
    }
    tls.writer()
        .write_all(&[0x01, 0x00, 0x02, b'o', b'k', 0x17])
        .unwrap();
    flush_tls(&mut tls, &mut tcp);
    assert_eq!(
        read_plain(&mut tls, &mut tcp, 6),
        [0x01, 0x00, 0x02, b'o', b'k', 0x17]
    );
    assert_eq!(seen.peers.lock().as_slice(), ["198.51.100.20:3333"]);
    // Without the header, the ClientHello is refused as a missing header.
    let plain_tls = TcpStream::connect(server.addr).unwrap();
    let mut hello = Vec::new();
    let mut tls2 = rustls::ClientConnection::new(
        hydrogen::tls::client_config(certs.roots()),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    tls2.write_tls(&mut hello).unwrap();
    (&plain_tls).write_all(&hello).unwrap();
    assert_closed_by_server(&plain_tls, "a ClientHello with no PROXY header");
    let summary = server.stop().unwrap();
    assert_eq!(summary.proxy_refused, 1, "{summary:?}");
    assert_eq!(seen.peers.lock().len(), 1);
}

#[test]
fn plaintext_sent_a_second_fatal_alert() {
    // Found by the tls_read fuzz target on the unbuffered session: after a record error,
    // the stream asked rustls for its alert while handing it the bad bytes again, so rustls
    // failed on them a second time and queued a second fatal alert (a debug assertion in
    // rustls, a panic on the worker). The stream must send one alert and stop.
    use hydrogen::Stream;
    use std::os::unix::net::UnixStream;
    let certs = Certs::make();
    let session =
        rustls::server::UnbufferedServerConnection::new(certs.config().server_config().clone())
            .unwrap();
    let (server, mut peer) = UnixStream::pair().unwrap();
    server.set_nonblocking(true).unwrap();
    peer.write_all(&[0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0x17])
        .unwrap();
    let mut stream = hydrogen::tls::TlsStream::unbuffered(session, server, SimpleFrame);
    let mut frames = hydrogen::Frames::new();
    let err = stream.recv(&mut frames).expect_err("not TLS");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(frames.is_empty());
    let _ = stream.shutdown();
    drop(stream);
    let mut sent = Vec::new();
    peer.read_to_end(&mut sent).unwrap();
    // One alert record (content type 21, 2 bytes of alert), nothing after it.
    assert_eq!(sent.len(), 7, "{sent:?}");
    assert_eq!(sent[0], 0x15, "{sent:?}");
}
