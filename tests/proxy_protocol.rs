//! The PROXY protocol on accept (`Config::proxy_protocol`), against an in-process server,
//! with headers written by hand: what reaches the handler (the client's address, the
//! proxy's, the TLVs), and every refusal, each of which closes only its own connection
//! before any callback while the server goes on serving the others.
//!
//! `tests/haproxy.rs` puts a real HAProxy in front instead.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hydrogen::client::Client;
use hydrogen::proxy::{ProxyCommand, ProxyHeader};
use hydrogen::{CloseReason, Config, Handler, IpNet, PeerAddr, RunSummary, SimpleFrame, Socket};
use parking_lot::Mutex;
use socket2::{Domain, Socket as RawSocket, Type};

use common::{DEADLINE, TestServer, assert_closed_by_server, wait_until};

/// What the handler saw of one connection when it opened.
#[derive(Debug, Clone)]
struct Opened {
    peer: PeerAddr,
    proxy: Option<PeerAddr>,
    header: Option<ProxyHeader>,
}

/// Echoes, and records every opened connection and every removal.
#[derive(Default)]
struct Seen {
    opened: Mutex<Vec<Opened>>,
    removed: AtomicUsize,
}

/// The handler: a shared [`Seen`].
struct Echoer(Arc<Seen>);

impl Handler for Echoer {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        self.0.opened.lock().push(Opened {
            peer: socket.peer_addr(),
            proxy: socket.proxy_addr().cloned(),
            header: socket.proxy_header().cloned(),
        });
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        let _ = socket.send(frame);
    }

    fn on_connection_removed(&self, _: (), _: &Socket, _: &CloseReason) {
        self.0.removed.fetch_add(1, Ordering::SeqCst);
    }
}

fn proxy_config() -> Config {
    Config {
        max_threads: 2,
        proxy_protocol: true,
        ..Config::default()
    }
}

fn start(config: Config) -> (TestServer, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let server = TestServer::start_with(config, SimpleFrame, Echoer(seen.clone()));
    (server, seen)
}

/// A TCP connection to `to` from the source address `from` (any 127.x address).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = RawSocket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let tcp = TcpStream::from(socket);
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp
}

/// Writes `header`, then checks that a frame comes back echoed: the connection reached the
/// handler.
fn echo_after(tcp: TcpStream, header: &[u8], payload: &[u8]) -> Client<SimpleFrame> {
    (&tcp).write_all(header).unwrap();
    let mut client = Client::from_stream(tcp, SimpleFrame);
    client.send(payload).unwrap();
    assert_eq!(client.recv().unwrap().as_deref(), Some(payload));
    client
}

/// A v2 header: `command` 0 (LOCAL) or 1 (PROXY), family/protocol byte, then `body`.
fn v2(command: u8, family_protocol: u8, body: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x20 | command);
    out.push(family_protocol);
    out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A v2 TCP over IPv4 body: 203.0.113.9:50000 to 198.51.100.1:443, then `tlvs`.
fn v4_body(tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = vec![203, 0, 113, 9, 198, 51, 100, 1];
    body.extend_from_slice(&50000u16.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    for (kind, value) in tlvs {
        body.push(*kind);
        body.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        body.extend_from_slice(value);
    }
    body
}

fn only_opened(seen: &Seen) -> Opened {
    wait_until("the connection to open", || !seen.opened.lock().is_empty());
    let opened = seen.opened.lock();
    assert_eq!(opened.len(), 1, "{opened:?}");
    opened[0].clone()
}

/// After refusals: a good client is still served, and no refused connection reached the
/// handler. Returns the summary.
fn still_serving(server: TestServer, seen: &Seen, refused: usize) -> RunSummary {
    let tcp = connect_from("127.0.0.1", server.addr);
    echo_after(
        tcp,
        b"PROXY TCP4 192.0.2.1 127.0.0.1 1000 2000\r\n",
        b"still here",
    );
    let opened = seen.opened.lock().clone();
    assert_eq!(opened.len(), 1, "only the good client opened: {opened:?}");
    assert_eq!(
        opened[0].peer,
        "192.0.2.1:1000".parse::<SocketAddr>().unwrap()
    );
    let summary = server.stop().unwrap();
    assert_eq!(
        summary.proxy_refused + summary.proxy_timed_out,
        refused as u64,
        "{summary:?}"
    );
    assert_eq!(
        summary.opened, 1,
        "refused ones are not opened: {summary:?}"
    );
    assert_eq!(
        seen.removed.load(Ordering::SeqCst),
        1,
        "only the good client was removed"
    );
    summary
}

#[test]
fn v1_header_gives_the_handler_the_client_address_and_keeps_the_proxys() {
    let (server, seen) = start(proxy_config());
    let tcp = connect_from("127.0.0.1", server.addr);
    let real = tcp.local_addr().unwrap();
    let client = echo_after(
        tcp,
        b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 7000\r\n",
        b"hello",
    );
    let opened = only_opened(&seen);
    assert_eq!(opened.peer, "192.0.2.7:4242".parse::<SocketAddr>().unwrap());
    assert_eq!(opened.proxy, Some(PeerAddr::Tcp(real)));
    let header = opened.header.expect("the header");
    assert_eq!(header.version(), 1);
    assert_eq!(
        header.destination(),
        Some("127.0.0.1:7000".parse().unwrap())
    );
    drop(client);
    server.stop().unwrap();
}

#[test]
fn v1_tcp6_header_gives_an_ipv6_client() {
    let (server, seen) = start(proxy_config());
    let tcp = connect_from("127.0.0.1", server.addr);
    let _client = echo_after(tcp, b"PROXY TCP6 2001:db8::5 ::1 6000 7000\r\n", b"six");
    assert_eq!(
        only_opened(&seen).peer,
        "[2001:db8::5]:6000".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn v2_header_from_a_trusted_source_sets_the_claimed_address_and_its_tlvs_are_reachable() {
    let (server, seen) = start(proxy_config());
    let tcp = connect_from("127.0.0.1", server.addr);
    let real = tcp.local_addr().unwrap();
    let header = v2(
        1,
        0x11,
        &v4_body(&[
            (0x02, b"api.example.com"),
            (0x05, b"req-0001"),
            (0xE3, b"x"),
        ]),
    );
    let _client = echo_after(tcp, &header, b"v2");
    let opened = only_opened(&seen);
    assert_eq!(
        opened.peer,
        "203.0.113.9:50000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(opened.proxy, Some(PeerAddr::Tcp(real)));
    let header = opened.header.expect("the header");
    assert_eq!(header.version(), 2);
    assert_eq!(header.command(), ProxyCommand::Proxy);
    assert_eq!(header.authority(), Some("api.example.com"));
    assert_eq!(header.unique_id(), Some(&b"req-0001"[..]));
    assert_eq!(header.tlv(0xE3), Some(&b"x"[..]));
    assert_eq!(header.tlvs().count(), 3);
}

#[test]
fn v2_local_keeps_the_real_socket_addresses() {
    let (server, seen) = start(proxy_config());
    let tcp = connect_from("127.0.0.1", server.addr);
    let real = tcp.local_addr().unwrap();
    let _client = echo_after(tcp, &v2(0, 0x00, &[]), b"health");
    let opened = only_opened(&seen);
    assert_eq!(opened.peer, PeerAddr::Tcp(real));
    let header = opened.header.expect("the header");
    assert_eq!(header.command(), ProxyCommand::Local);
    assert_eq!(header.source(), None);
}

#[test]
fn a_header_arriving_a_byte_at_a_time_is_reassembled_and_the_frame_behind_it_kept() {
    let (server, seen) = start(proxy_config());
    for header in [
        b"PROXY TCP4 192.0.2.8 127.0.0.1 4243 7000\r\n".to_vec(),
        v2(1, 0x11, &v4_body(&[(0x05, b"frag")])),
    ] {
        let tcp = connect_from("127.0.0.1", server.addr);
        // One byte per write, TCP_NODELAY on: each arrives on its own unless the kernel
        // happens to merge some, and the server must cope either way. The pause only makes
        // separate arrivals likely; the result does not depend on it.
        for byte in &header {
            (&tcp).write_all(std::slice::from_ref(byte)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        // The header's last byte and a frame in one write: the frame must not be lost.
        let mut client = Client::from_stream(tcp, SimpleFrame);
        client.send(b"behind the header").unwrap();
        assert_eq!(
            client.recv().unwrap().as_deref(),
            Some(&b"behind the header"[..])
        );
    }
    wait_until("both to open", || seen.opened.lock().len() == 2);
    let peers: Vec<PeerAddr> = seen.opened.lock().iter().map(|o| o.peer.clone()).collect();
    assert!(peers.contains(&PeerAddr::Tcp("192.0.2.8:4243".parse().unwrap())));
    assert!(peers.contains(&PeerAddr::Tcp("203.0.113.9:50000".parse().unwrap())));
}

#[test]
fn header_and_first_frames_in_one_write_are_all_delivered() {
    let (server, seen) = start(proxy_config());
    let tcp = connect_from("127.0.0.1", server.addr);
    let mut bytes = b"PROXY TCP4 192.0.2.9 127.0.0.1 1 2\r\n".to_vec();
    for i in 0..5u8 {
        bytes.extend_from_slice(&[0x01, 0x00, 0x01, i, 0x17]);
    }
    (&tcp).write_all(&bytes).unwrap();
    let mut client = Client::from_stream(tcp, SimpleFrame);
    for i in 0..5u8 {
        assert_eq!(client.recv().unwrap(), Some(vec![i]), "frame {i}");
    }
    assert_eq!(
        only_opened(&seen).peer,
        "192.0.2.9:1".parse::<SocketAddr>().unwrap()
    );
}

/// Sends `bytes` as the connection's start and checks the server closes it.
fn refused_after(server: &TestServer, from: &str, bytes: &[u8], what: &str) {
    let tcp = connect_from(from, server.addr);
    // The server may close before all is written (a reset then): fine.
    let _ = (&tcp).write_all(bytes);
    assert_closed_by_server(&tcp, what);
}

#[test]
fn a_missing_header_closes_only_that_connection() {
    let (server, seen) = start(proxy_config());
    // A client that does not know about the proxy and sends a frame straight away.
    refused_after(
        &server,
        "127.0.0.1",
        &[0x01, 0x00, 0x02, b'h', b'i', 0x17],
        "frame",
    );
    // An HTTP request, and a TLS ClientHello's first bytes.
    refused_after(&server, "127.0.0.1", b"GET / HTTP/1.1\r\n\r\n", "http");
    refused_after(&server, "127.0.0.1", &[0x16, 0x03, 0x01, 0x00, 0x05], "tls");
    let summary = still_serving(server, &seen, 3);
    assert_eq!(summary.proxy_refused, 3);
}

#[test]
fn over_long_and_malformed_v1_lines_are_refused() {
    let (server, seen) = start(proxy_config());
    let mut long = b"PROXY TCP4 ".to_vec();
    long.resize(200, b'1');
    refused_after(&server, "127.0.0.1", &long, "no CRLF within 107 bytes");
    for line in [
        &b"PROXY TCP4 192.0.2.7 127.0.0.1 4242\r\n"[..],
        b"PROXY TCP4 999.0.2.7 127.0.0.1 1 2\r\n",
        b"PROXY TCP9 192.0.2.7 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\n",
        b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\rX",
    ] {
        refused_after(&server, "127.0.0.1", line, &String::from_utf8_lossy(line));
    }
    let summary = still_serving(server, &seen, 6);
    assert_eq!(summary.proxy_refused, 6);
}

#[test]
fn unknown_v2_command_family_protocol_and_oversized_headers_are_refused() {
    let (server, seen) = start(proxy_config());
    let mut oversized = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    oversized.extend_from_slice(&[0x21, 0x11, 0x20, 0x00]); // 8 KiB announced
    for bytes in [
        v2(2, 0x11, &v4_body(&[])),                             // command 2
        v2(1, 0x51, &v4_body(&[])),                             // family 5
        v2(1, 0x14, &v4_body(&[])),                             // protocol 4
        v2(1, 0x12, &v4_body(&[])),                             // UDP
        v2(1, 0x11, &v4_body(&[])[..8]),                        // addresses cut short
        v2(1, 0x11, &[&v4_body(&[])[..], &[4, 0, 9]].concat()), // TLV past the end
        oversized,
    ] {
        refused_after(&server, "127.0.0.1", &bytes, &format!("{bytes:?}"));
    }
    let summary = still_serving(server, &seen, 7);
    assert_eq!(summary.proxy_refused, 7);
}

#[test]
fn a_header_from_an_untrusted_source_is_refused() {
    let config = Config {
        proxy_from: vec!["127.0.0.1/32".parse::<IpNet>().unwrap()],
        ..proxy_config()
    };
    let (server, seen) = start(config);
    // A valid header, but from 127.0.0.2, which is not an allowed proxy: it could claim
    // any address.
    refused_after(
        &server,
        "127.0.0.2",
        b"PROXY TCP4 10.0.0.1 127.0.0.1 1 2\r\n",
        "untrusted",
    );
    refused_after(&server, "127.0.0.3", &[], "untrusted and silent");
    let summary = still_serving(server, &seen, 2);
    assert_eq!(summary.proxy_refused, 2);
}

#[test]
fn a_silent_connection_is_closed_at_the_header_timeout_and_never_reaches_the_handler() {
    let config = Config {
        proxy_header_timeout: Duration::from_millis(300),
        ..proxy_config()
    };
    let (server, seen) = start(config);
    let silent = connect_from("127.0.0.1", server.addr);
    // A slowloris: part of a header, then nothing.
    let dribbler = connect_from("127.0.0.1", server.addr);
    (&dribbler).write_all(b"PROXY TCP4 192.0.2").unwrap();
    assert_closed_by_server(&silent, "silent");
    assert_closed_by_server(&dribbler, "dribbler");
    let summary = still_serving(server, &seen, 2);
    assert_eq!(summary.proxy_timed_out, 2);
}

#[test]
fn a_peer_that_closes_mid_header_never_reaches_the_handler() {
    let (server, seen) = start(proxy_config());
    let tcp = connect_from("127.0.0.1", server.addr);
    (&tcp).write_all(b"PROXY TCP4 192.0.2.1 127.").unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = (&tcp).read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    let summary = still_serving(server, &seen, 1);
    assert_eq!(summary.proxy_refused, 1);
}

#[test]
fn without_proxy_protocol_a_header_is_just_bytes() {
    // Off by default: a PROXY line is not special, so SimpleFrame refuses it (0x50 is not
    // its start byte) and the peer is the socket's.
    let (server, seen) = start(Config {
        max_threads: 2,
        ..Config::default()
    });
    let tcp = connect_from("127.0.0.1", server.addr);
    let real = tcp.local_addr().unwrap();
    let mut client = Client::from_stream(tcp.try_clone().unwrap(), SimpleFrame);
    client.send(b"plain").unwrap();
    assert_eq!(client.recv().unwrap().as_deref(), Some(&b"plain"[..]));
    let opened = only_opened(&seen);
    assert_eq!(opened.peer, PeerAddr::Tcp(real));
    assert_eq!(opened.proxy, None);
    assert!(opened.header.is_none());
    (&tcp)
        .write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
        .unwrap();
    assert_closed_by_server(&tcp, "a PROXY line as a frame");
    let summary = server.stop().unwrap();
    assert_eq!(summary.proxy_refused, 0);
}

#[test]
fn many_refusals_at_once_do_not_disturb_a_served_client() {
    let (server, seen) = start(Config {
        proxy_header_timeout: Duration::from_secs(30),
        ..proxy_config()
    });
    let tcp = connect_from("127.0.0.1", server.addr);
    let mut served = echo_after(tcp, b"PROXY TCP4 192.0.2.50 127.0.0.1 5 6\r\n", b"0");
    // 200 silent connections pending their header, 50 refused, while the served client
    // keeps exchanging frames.
    let silent: Vec<TcpStream> = (0..200)
        .map(|_| connect_from("127.0.0.1", server.addr))
        .collect();
    for i in 0..50u32 {
        refused_after(&server, "127.0.0.1", b"NOT A HEADER\r\n", "bad");
        served.send(&i.to_be_bytes()).unwrap();
        assert_eq!(served.recv().unwrap(), Some(i.to_be_bytes().to_vec()));
    }
    assert_eq!(seen.opened.lock().len(), 1);
    drop(served);
    // Stopped with the silent ones still connected: the drain closes them, uncounted as
    // refusals (closing them first would count each as a header cut short).
    let summary = server.stop().unwrap();
    assert_eq!(summary.proxy_refused, 50, "{summary:?}");
    drop(silent);
}

#[test]
fn a_proxy_on_a_dual_stack_listener_is_trusted_by_its_ipv4_address() {
    // `[::]` takes IPv4 too (Linux's default), and an IPv4 proxy's address comes as
    // `::ffff:127.0.0.1`: it must match 127.0.0.0/8 all the same.
    let mapped_by_default =
        std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").map_or(true, |v| v.trim() == "0");
    assert!(mapped_by_default, "this test needs net.ipv6.bindv6only = 0");
    let server = hydrogen::Server::bind(Config {
        addr: "::".into(),
        port: 0,
        ..proxy_config()
    })
    .unwrap();
    let port = server.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let shutdown = server.shutdown_handle();
    let handler = Echoer(seen.clone());
    let thread = std::thread::spawn(move || server.run(handler));
    let tcp = connect_from("127.0.0.1", SocketAddr::from(([127, 0, 0, 1], port)));
    let real = tcp.local_addr().unwrap();
    let _client = echo_after(tcp, b"PROXY TCP4 192.0.2.60 127.0.0.1 60 70\r\n", b"mapped");
    let opened = only_opened(&seen);
    assert_eq!(opened.peer, "192.0.2.60:60".parse::<SocketAddr>().unwrap());
    let Some(PeerAddr::Tcp(proxy)) = opened.proxy else {
        panic!("{opened:?}")
    };
    assert_eq!(proxy.ip().to_canonical(), real.ip());
    shutdown.shutdown();
    thread.join().unwrap().unwrap();
}
