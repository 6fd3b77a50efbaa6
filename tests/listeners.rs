//! Listeners beyond the one `Config::addr`: a Unix-domain socket path (its peer type, file
//! mode, PROXY headers over it, and the file's removal), IPv4 and IPv6 together, and
//! `SO_REUSEPORT` shared by two processes (the echo example with `--reuse-port`), with the
//! clear error a second process gets without it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use hydrogen::client::Client;
use hydrogen::{Config, Handler, ListenAddr, PeerAddr, Server, SimpleFrame, Socket};
use parking_lot::Mutex;

use common::{ChildGuard, DEADLINE, wait_until};

/// Echoes, and records each opened connection's peer.
#[derive(Clone, Default)]
struct Peers(Arc<Mutex<Vec<PeerAddr>>>);

impl Handler for Peers {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        self.0.lock().push(socket.peer_addr());
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        let _ = socket.send(frame);
    }
}

/// A fresh path for a socket file, in a directory of its own.
fn socket_path(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("hydrogen-listeners-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("echo.sock")
}

/// SimpleFrame by hand over a Unix-domain stream (the blocking client is TCP only).
fn unix_echo(stream: &mut UnixStream, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x01];
    frame.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(payload);
    frame.push(0x17);
    stream.write_all(&frame).unwrap();
    let mut head = [0u8; 3];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x01, "start byte");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes([head[1], head[2]])) + 1];
    stream.read_exact(&mut body).unwrap();
    assert_eq!(body.pop(), Some(0x17), "end byte");
    body
}

fn run_in_background(
    server: Server,
    handler: Peers,
) -> (
    hydrogen::ShutdownHandle,
    thread::JoinHandle<std::io::Result<hydrogen::RunSummary>>,
) {
    let shutdown = server.shutdown_handle();
    let thread = thread::spawn(move || server.run(handler));
    (shutdown, thread)
}

#[test]
fn unix_domain_listener_serves_beside_tcp_with_its_mode_and_removes_its_file() {
    let path = socket_path("mode");
    let config = Config {
        addr: "127.0.0.1".into(),
        port: 0,
        max_threads: 2,
        listen: vec![ListenAddr::Unix(path.clone())],
        unix_mode: Some(0o660),
        ..Config::default()
    };
    let server = Server::bind(config).unwrap();
    let addrs = server.local_addrs().unwrap();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(addrs[1], ListenAddr::Unix(path.clone()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket file mode {mode:o}");
    let tcp_addr = server.local_addr().unwrap();
    let peers = Peers::default();
    let (shutdown, thread) = run_in_background(server, peers.clone());

    let mut unix = UnixStream::connect(&path).unwrap();
    unix.set_read_timeout(Some(DEADLINE)).unwrap();
    for i in 0..20u8 {
        assert_eq!(unix_echo(&mut unix, &[i; 100]), vec![i; 100]);
    }
    let mut tcp = Client::connect(tcp_addr, SimpleFrame).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.send(b"tcp too").unwrap();
    assert_eq!(tcp.recv().unwrap().as_deref(), Some(&b"tcp too"[..]));

    let seen = peers.0.lock().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].is_unix(), "{seen:?}");
    assert_eq!(seen[0].to_string(), "unix:(unnamed)");
    assert_eq!(seen[1], PeerAddr::Tcp(tcp.get_ref().local_addr().unwrap()));

    shutdown.shutdown();
    let summary = thread.join().unwrap().unwrap();
    assert_eq!(summary.accepted, 2, "{summary:?}");
    assert!(
        !path.exists(),
        "the socket file is removed when the server stops"
    );
    // Its connection was drained: end of stream, cleanly.
    let mut rest = Vec::new();
    unix.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn a_stale_socket_file_is_replaced_and_a_live_one_is_an_error() {
    let path = socket_path("stale");
    // A dead server's file: bound, then its socket closed without removing the file.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let config = || Config {
        addr: "127.0.0.1".into(),
        port: 0,
        max_threads: 1,
        listen: vec![ListenAddr::Unix(path.clone())],
        ..Config::default()
    };
    let first = Server::bind(config()).expect("a stale file is replaced");
    let Err(err) = Server::bind(config()) else {
        panic!("a live socket is not taken over")
    };
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    drop(first);
    assert!(!path.exists());
}

#[test]
fn proxy_headers_over_a_unix_listener_are_read() {
    // A local proxy (HAProxy's `server ... /path send-proxy-v2`) over a Unix socket: a
    // trusted source, whatever proxy_from says.
    let path = socket_path("proxy");
    let config = Config {
        addr: "127.0.0.1".into(),
        port: 0,
        max_threads: 2,
        listen: vec![ListenAddr::Unix(path.clone())],
        proxy_protocol: true,
        proxy_from: vec!["10.0.0.0/8".parse().unwrap()],
        ..Config::default()
    };
    let server = Server::bind(config).unwrap();
    let peers = Peers::default();
    let (shutdown, thread) = run_in_background(server, peers.clone());
    let mut unix = UnixStream::connect(&path).unwrap();
    unix.set_read_timeout(Some(DEADLINE)).unwrap();
    unix.write_all(b"PROXY TCP4 192.0.2.44 127.0.0.1 5555 80\r\n")
        .unwrap();
    assert_eq!(unix_echo(&mut unix, b"via unix"), b"via unix");
    assert_eq!(
        peers.0.lock().as_slice(),
        [PeerAddr::Tcp("192.0.2.44:5555".parse().unwrap())]
    );
    shutdown.shutdown();
    thread.join().unwrap().unwrap();
}

#[test]
fn ipv4_and_ipv6_listeners_on_one_server() {
    let config = Config {
        addr: "127.0.0.1".into(),
        port: 0,
        max_threads: 2,
        listen: vec!["[::1]:0".parse().unwrap()],
        ..Config::default()
    };
    let server = Server::bind(config).unwrap();
    let addrs = server.local_addrs().unwrap();
    let ListenAddr::Tcp(v6) = addrs[1].clone() else {
        panic!("{addrs:?}")
    };
    assert!(v6.is_ipv6() && v6.port() != 0, "{v6}");
    let v4 = server.local_addr().unwrap();
    let peers = Peers::default();
    let (shutdown, thread) = run_in_background(server, peers.clone());
    for addr in [v4, v6] {
        let mut client = Client::connect(addr, SimpleFrame).unwrap();
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        client.send(addr.to_string().as_bytes()).unwrap();
        assert_eq!(client.recv().unwrap(), Some(addr.to_string().into_bytes()));
    }
    let seen = peers.0.lock().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].ip().unwrap().is_ipv4(), "{seen:?}");
    assert_eq!(seen[1].ip(), Some("::1".parse().unwrap()), "{seen:?}");
    shutdown.shutdown();
    thread.join().unwrap().unwrap();
}

#[test]
fn ipv6_as_the_main_address() {
    let config = Config {
        addr: "::1".into(),
        port: 0,
        max_threads: 1,
        ..Config::default()
    };
    let server = Server::bind(config).unwrap();
    let addr = server.local_addr().unwrap();
    assert_eq!(addr.ip(), "::1".parse::<std::net::IpAddr>().unwrap());
    let (shutdown, thread) = run_in_background(server, Peers::default());
    let mut client = Client::connect(addr, SimpleFrame).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.send(b"[::1]").unwrap();
    assert_eq!(client.recv().unwrap().as_deref(), Some(&b"[::1]"[..]));
    shutdown.shutdown();
    thread.join().unwrap().unwrap();
}

/// An echo example process, killed if the test ends first; its stderr collected.
struct Echo {
    child: ChildGuard,
    addr: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
}

impl Echo {
    fn start(args: &[&str]) -> Echo {
        let mut child = Command::new(common::example_binary("echo"))
            .args(args)
            .env("RUST_LOG", "hydrogen=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the echo example");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = BufReader::new(child.stderr.take().unwrap());
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut line = String::new();
            while pipe.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().push_str(&line);
                line.clear();
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok());
        Echo {
            child: ChildGuard(child),
            addr,
            stderr,
        }
    }

    /// How many connections it has logged as opened.
    fn opened(&self) -> usize {
        self.stderr.lock().matches("connection opened").count()
    }

    /// Waits for it to exit by itself, and returns its stderr.
    fn wait_exit(&mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait_exit(DEADLINE).expect("did not exit");
        // The reader thread may still be copying the last lines.
        wait_until("stderr to be read to its end", || {
            Arc::strong_count(&self.stderr) == 1
        });
        (status, self.stderr.lock().clone())
    }
}

#[test]
fn two_processes_share_a_port_with_reuse_port() {
    let first = Echo::start(&["--addr", "127.0.0.1:0", "--threads", "1", "--reuse-port"]);
    let addr = first.addr.expect("the first instance listens");
    let port = addr.to_string();
    let second = Echo::start(&["--addr", &port, "--threads", "1", "--reuse-port"]);
    assert_eq!(
        second.addr,
        Some(addr),
        "the second instance binds the same port"
    );

    // The kernel spreads connections over the two by a hash of the 4-tuple: with 64
    // connections, the odds of all landing on one are 2^-63.
    for i in 0..64u32 {
        let mut client = Client::connect(addr, SimpleFrame).unwrap();
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        client.send(&i.to_be_bytes()).unwrap();
        assert_eq!(client.recv().unwrap(), Some(i.to_be_bytes().to_vec()));
    }
    let start = Instant::now();
    while first.opened() + second.opened() < 64 && start.elapsed() < DEADLINE {
        thread::sleep(std::time::Duration::from_millis(5));
    }
    let (a, b) = (first.opened(), second.opened());
    assert_eq!(a + b, 64, "every connection logged once");
    assert!(a > 0 && b > 0, "both instances served: {a} and {b}");
}

#[test]
fn without_reuse_port_a_second_process_gets_a_clear_error() {
    let first = Echo::start(&["--addr", "127.0.0.1:0", "--threads", "1"]);
    let addr = first.addr.expect("the first instance listens").to_string();
    let mut second = Echo::start(&["--addr", &addr, "--threads", "1", "--reuse-port"]);
    assert_eq!(second.addr, None);
    let (status, stderr) = second.wait_exit();
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("cannot bind {addr}")) && stderr.contains("in use"),
        "stderr: {stderr}"
    );
    // The first is unharmed.
    let mut client = Client::connect(first.addr.unwrap(), SimpleFrame).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.send(b"still mine").unwrap();
    assert_eq!(client.recv().unwrap().as_deref(), Some(&b"still mine"[..]));
}

/// The options an accepted socket was found with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    nodelay: bool,
    keepalive: bool,
    idle: std::time::Duration,
    interval: std::time::Duration,
    count: u32,
    user_timeout: Option<std::time::Duration>,
    recv_buffer: usize,
    send_buffer: usize,
}

/// SimpleFrame, recording the options of each accepted socket as the transport gets it.
struct Inspect(Arc<Mutex<Vec<Options>>>);

impl hydrogen::Transport for Inspect {
    type Stream = hydrogen::Framed<SimpleFrame>;

    fn open(&self, conn: hydrogen::Accepted) -> std::io::Result<Self::Stream> {
        let tcp = conn.tcp().expect("a TCP connection");
        let sock = socket2::SockRef::from(tcp);
        self.0.lock().push(Options {
            nodelay: sock.tcp_nodelay()?,
            keepalive: sock.keepalive()?,
            idle: sock.tcp_keepalive_time()?,
            interval: sock.tcp_keepalive_interval()?,
            count: sock.tcp_keepalive_retries()?,
            user_timeout: sock.tcp_user_timeout()?,
            recv_buffer: sock.recv_buffer_size()?,
            send_buffer: sock.send_buffer_size()?,
        });
        Ok(hydrogen::Framed::new(conn.into_stream(), SimpleFrame))
    }
}

/// Runs an echo server with `config` on a free loopback port, exchanges one frame, and
/// returns the options its accepted socket had.
fn options_of(config: Config) -> Options {
    let server = Server::bind(Config {
        addr: "127.0.0.1".into(),
        port: 0,
        max_threads: 1,
        ..config
    })
    .unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = server.shutdown_handle();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let transport = Inspect(seen.clone());
    let thread = thread::spawn(move || server.run_with(transport, Peers::default()));
    let mut client = Client::connect(addr, SimpleFrame).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client.send(b"x").unwrap();
    assert_eq!(client.recv().unwrap().as_deref(), Some(&b"x"[..]));
    shutdown.shutdown();
    thread.join().unwrap().unwrap();
    seen.lock()[0].clone()
}

#[test]
fn socket_options_from_config_are_set_on_accepted_sockets() {
    use std::time::Duration;
    let options = options_of(Config {
        nodelay: true,
        keepalive: Some(hydrogen::Keepalive {
            idle: Duration::from_secs(42),
            interval: Duration::from_secs(7),
            count: 3,
        }),
        tcp_user_timeout: Some(Duration::from_millis(12_500)),
        recv_buffer: Some(96 * 1024),
        send_buffer: Some(160 * 1024),
        ..Config::default()
    });
    assert!(options.nodelay && options.keepalive, "{options:?}");
    assert_eq!(
        (options.idle, options.interval, options.count),
        (Duration::from_secs(42), Duration::from_secs(7), 3)
    );
    assert_eq!(options.user_timeout, Some(Duration::from_millis(12_500)));
    // Linux doubles what is asked for its bookkeeping.
    assert_eq!(options.recv_buffer, 2 * 96 * 1024, "{options:?}");
    assert_eq!(options.send_buffer, 2 * 160 * 1024, "{options:?}");

    // The defaults: TCP_NODELAY on, no keepalive, no user timeout.
    let options = options_of(Config::default());
    assert!(options.nodelay && !options.keepalive, "{options:?}");
    assert_eq!(options.user_timeout, None);
}
