//! A real HAProxy in front of the echo example, over the PROXY protocol.
//!
//! Each test starts two instances of `examples/echo` (child processes, `--proxy-protocol
//! --addr 127.0.0.1:0 --threads 2`, logging at `hydrogen=debug` to stderr, which a reader
//! thread collects so that the test can search it while they run), and one HAProxy
//! (`haproxy -db -f CFG`, a child too) whose configuration is written at test time into a
//! temporary directory of the test's own: a `mode tcp` frontend on a free loopback port,
//! `balance roundrobin` over servers `a` and `b` (the two instances) with `send-proxy-v2` (or
//! `send-proxy`, v1) and health checks every 100 ms (`fall 2 rise 1`), and an admin stats
//! socket, which the tests read (`show stat`) to see each server UP or DOWN. HAProxy has to be
//! installed (`haproxy` on `PATH`, or its path in `HAPROXY`): without it the tests fail.
//!
//! Clients bind their own source address (127.0.0.10, 127.0.0.11, ...) before connecting to
//! the frontend, so each instance's `connection opened ... peer=CLIENT proxy=HAPROXY` log line
//! shows whether the address in the PROXY header made it through.
//!
//! HAProxy 2.6 sends a PROXY header with its health checks too when the server has
//! `send-proxy(-v2)`: a v2 `LOCAL` header (no addresses; the connection keeps its own peer,
//! 127.0.0.1), or with v1 a `PROXY TCP4` line naming HAProxy's own two socket addresses. Either
//! is accepted: the check connections are logged as opened (then reset by HAProxy, which is how
//! it ends a check).
//!
//! # What a client sees in the rolling restart
//!
//! `rolling_restart_behind_haproxy_loses_no_reply` runs clients that loop request/reply
//! through HAProxy and sends SIGTERM to instance `a` in the middle. The drain
//! (`src/runtime/housekeeping.rs`, `begin_drain`) shuts `a`'s listener at once (new connections
//! are refused, so HAProxy's `retries`/`option redispatch` send them to `b`, and its checks
//! mark `a` DOWN), delivers no new frame to the handler, keeps reading and discarding input
//! (so that the close is a FIN, not a reset), and closes each connection once its queued
//! replies are written. So a client on `a` sees its connection end cleanly (HAProxy passes the
//! close on as end of stream), either between a reply and its next request or, if its next
//! request was already on the way, with that request unanswered: the drain read it and dropped
//! it without delivering it. That is what the library promises (replies to frames the handler
//! got are written before the close; `drain_timeout`, 5 s by default, is far longer than
//! needed here, so `abandoned 0`), not more: a request in flight when the drain starts may get
//! no reply, and the client cannot tell whether it was handled (the echo's is not). Since each
//! client has one request in flight at a time, at most one request per broken connection goes
//! unanswered. A connection that reached `a`'s backlog just before the listener was shut
//! (HAProxy connected, the instance never accepted it) is reset by the kernel: HAProxy then
//! closes the client's connection too, its first request unanswered. The client reconnects
//! and carries on with its next request; once `a` has exited every connection goes to `b`,
//! and none of them breaks. In practice (HAProxy 2.6 on loopback, 8 clients) each of `a`'s
//! four connections ends with end of stream and its one request in flight unanswered; none is
//! reset, and the reconnections are redispatched to `b`. The test prints these counts.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hydrogen::SimpleFrame;
use hydrogen::client::Client;
use nix::sys::signal::{Signal, kill};
use parking_lot::Mutex;
use socket2::{Domain, Type};

use common::{ChildGuard as Guard, DEADLINE, wait_until};

// ---------------------------------------------------------------------------------------------
// Child processes.

/// A text buffer a reader thread fills from a child's pipe until it closes.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<String>>);

impl Output {
    fn collect(&self, pipe: impl Read + Send + 'static) -> JoinHandle<()> {
        let out = self.clone();
        thread::spawn(move || {
            let mut lines = BufReader::new(pipe);
            // Bounded by the pipe: it ends when the child exits (or is killed).
            loop {
                let mut line = String::new();
                match lines.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => out.0.lock().push_str(&line),
                }
            }
        })
    }

    fn text(&self) -> String {
        self.0.lock().clone()
    }
}

/// HAProxy's binary: `$HAPROXY`, else `haproxy` found on `PATH`. Panics if there is none:
/// these tests need a real HAProxy (CI installs the `haproxy` package).
fn haproxy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HAPROXY") {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("haproxy"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "haproxy is not installed: no `haproxy` on PATH ({}). These tests run a real \
                 HAProxy in front of the echo example; install it (Debian: apt-get install \
                 haproxy) or set HAPROXY to its path.",
                path.to_string_lossy()
            )
        })
}

/// One `connection opened` log line of an instance.
#[derive(Debug, Clone)]
struct Opened {
    /// The client's address: from the PROXY header, or the socket's peer for `LOCAL`.
    peer: SocketAddr,
    /// The socket's own peer (HAProxy's side), logged when a PROXY header was read.
    proxy: Option<SocketAddr>,
}

/// An echo example instance behind HAProxy (`--proxy-protocol`), with its output collected.
struct Echo {
    child: Guard,
    addr: SocketAddr,
    stdout: Output,
    stderr: Output,
    readers: Vec<JoinHandle<()>>,
}

impl Echo {
    fn start() -> Echo {
        let mut child = Guard(
            Command::new(common::example_binary("echo"))
                .args([
                    "--proxy-protocol",
                    "--addr",
                    "127.0.0.1:0",
                    "--threads",
                    "2",
                ])
                .env("RUST_LOG", "hydrogen=debug")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the echo example"),
        );
        let stderr = Output::default();
        let stderr_reader = stderr.collect(child.0.stderr.take().unwrap());
        let mut out = BufReader::new(child.0.stdout.take().unwrap());
        let mut line = String::new();
        // Returns at the first line, or at end of stream if the example fails to start.
        out.read_line(&mut line).expect("read the first line");
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let _ = child.wait_exit(DEADLINE);
                panic!(
                    "unexpected first line {line:?} from the echo example; stderr: {}",
                    stderr.text()
                )
            })
            .parse()
            .expect("an address");
        let stdout = Output::default();
        let stdout_reader = stdout.collect(out);
        Echo {
            child,
            addr,
            stdout,
            stderr,
            readers: vec![stderr_reader, stdout_reader],
        }
    }

    /// Every `connection opened` line logged so far.
    fn opened(&self) -> Vec<Opened> {
        parse_opened(&self.stderr.text())
    }

    /// Whether a `connection opened` line names `peer` as the client.
    fn served(&self, peer: SocketAddr) -> bool {
        self.opened().iter().any(|o| o.peer == peer)
    }

    /// The connections opened for clients (not HAProxy's own checks, from 127.0.0.1).
    fn client_connections(&self) -> Vec<Opened> {
        self.opened()
            .into_iter()
            .filter(|o| o.peer.ip() != Ipv4Addr::LOCALHOST)
            .collect()
    }

    /// Waits for the reader threads to see end of stream (after the child exited).
    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
    }
}

fn parse_opened(log: &str) -> Vec<Opened> {
    log.lines()
        .filter(|line| line.contains("connection opened"))
        .map(|line| {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|token| token.strip_prefix(name))
                    .map(|value| {
                        value
                            .parse::<SocketAddr>()
                            .unwrap_or_else(|_| panic!("bad {name} in {line:?}"))
                    })
            };
            Opened {
                peer: field("peer=").unwrap_or_else(|| panic!("no peer= in {line:?}")),
                proxy: field("proxy="),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// HAProxy.

/// A directory of the test's own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hydrogen-haproxy-{}-{name}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How HAProxy talks to the servers.
#[derive(Clone, Copy)]
struct Setup {
    /// `send-proxy-v2` or `send-proxy`.
    send_proxy: &'static str,
    /// Lines added to `defaults`.
    defaults: &'static str,
}

/// A running HAProxy: frontend `fe` on `frontend`, backend `be` with servers `a` and `b`.
/// Fields drop in order: the process is killed before its directory is removed.
struct Haproxy {
    _child: Guard,
    frontend: SocketAddr,
    stats: PathBuf,
    stderr: Output,
    _dir: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

fn haproxy_config(dir: &Path, port: u16, setup: Setup, a: SocketAddr, b: SocketAddr) -> String {
    let server = |name: &str, addr: SocketAddr| {
        format!(
            "    server {name} {addr} {} check inter 100ms fall 2 rise 1\n",
            setup.send_proxy
        )
    };
    format!(
        "global\n\
         \x20   nbthread 1\n\
         \x20   stats socket {stats} level admin\n\
         \x20   stats timeout 10s\n\
         defaults\n\
         \x20   mode tcp\n\
         \x20   timeout connect 3s\n\
         \x20   timeout client 5s\n\
         \x20   timeout server 5s\n\
         {defaults}\
         frontend fe\n\
         \x20   bind 127.0.0.1:{port}\n\
         \x20   default_backend be\n\
         backend be\n\
         \x20   balance roundrobin\n\
         {a}{b}",
        stats = dir.join("admin.sock").display(),
        defaults = setup.defaults,
        a = server("a", a),
        b = server("b", b),
    )
}

impl Haproxy {
    /// Starts HAProxy in the foreground in front of `a` and `b`. The frontend's port is one the
    /// kernel just gave out; if another process takes it first, HAProxy fails to bind and
    /// exits, and this tries again with another.
    fn start(name: &str, setup: Setup, a: SocketAddr, b: SocketAddr) -> Haproxy {
        let binary = haproxy_binary();
        let dir = TempDir::new(name);
        let cfg = dir.0.join("haproxy.cfg");
        let stats = dir.0.join("admin.sock");
        let mut failures = Vec::new();
        for _attempt in 0..5 {
            let port = free_port();
            std::fs::write(&cfg, haproxy_config(&dir.0, port, setup, a, b))
                .expect("write haproxy.cfg");
            let _ = std::fs::remove_file(&stats);
            let mut child = Guard(
                Command::new(&binary)
                    .arg("-db")
                    .arg("-f")
                    .arg(&cfg)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display())),
            );
            let stderr = Output::default();
            let reader = stderr.collect(child.0.stderr.take().unwrap());
            // HAProxy binds every listener before it serves the stats socket: once the socket
            // answers, the frontend is bound.
            let start = Instant::now();
            loop {
                if let Some(status) = child.0.try_wait().expect("try_wait") {
                    // The pipe is closed: the reader ends once it has copied the last lines.
                    reader.join().expect("reader thread");
                    failures.push(format!("port {port}: exit {status}: {}", stderr.text()));
                    break;
                }
                if query(&stats, "show stat").is_ok_and(|stat| stat.contains("fe,FRONTEND")) {
                    return Haproxy {
                        _child: child,
                        frontend: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                        stats,
                        stderr,
                        _dir: dir,
                    };
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "haproxy did not answer on its stats socket within {DEADLINE:?}: {}",
                    stderr.text()
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("haproxy failed to start 5 times: {failures:#?}");
    }

    /// Column `column` of server `name` of backend `be`, from `show stat` (CSV).
    fn stat(&self, name: &str, column: &str) -> Option<String> {
        let stat = query(&self.stats, "show stat").ok()?;
        let mut lines = stat.lines();
        let header: Vec<&str> = lines.next()?.strip_prefix("# ")?.split(',').collect();
        let index = |name: &str| header.iter().position(|c| *c == name);
        let (px, sv, col) = (index("pxname")?, index("svname")?, index(column)?);
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|row| row.len() > px.max(sv).max(col) && row[px] == "be" && row[sv] == name)
            .map(|row| row[col].to_string())
    }

    /// Server `name`'s status (`UP`, `DOWN`, `UP 1/2`, ...) and last check result (`L4OK`...).
    fn server(&self, name: &str) -> Option<(String, String)> {
        Some((self.stat(name, "status")?, self.stat(name, "check_status")?))
    }

    /// Waits until server `name` is UP after a check that passed.
    #[track_caller]
    fn wait_up(&self, name: &str) {
        let start = Instant::now();
        loop {
            let state = self.server(name);
            if state
                .as_ref()
                .is_some_and(|(status, check)| status == "UP" && check == "L4OK")
            {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "server {name} not UP within {DEADLINE:?}: {state:?}; haproxy: {}",
                self.stderr.text()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Sends one command to HAProxy's stats socket and reads the answer to its end.
fn query(socket: &Path, command: &str) -> io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// The source address of client `i`: 127.0.0.(10 + i).
fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + u8::try_from(i).expect("few clients"))
}

/// A SimpleFrame client bound to `source` (port chosen by the kernel), connected to `to`, with a
/// read timeout of [`DEADLINE`].
fn connect_from(source: Ipv4Addr, to: SocketAddr) -> io::Result<Client<SimpleFrame>> {
    let socket = socket2::Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect(&to.into())?;
    let tcp = TcpStream::from(socket);
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(DEADLINE))?;
    Ok(Client::from_stream(tcp, SimpleFrame))
}

fn local_addr(client: &Client<SimpleFrame>) -> SocketAddr {
    client.get_ref().local_addr().expect("local_addr")
}

// ---------------------------------------------------------------------------------------------
// Tests 1 and 2: the client's address reaches the server.

/// Runs `clients` clients through HAProxy (`send_proxy`) and checks what the instances logged.
fn client_addresses_pass_through(name: &str, send_proxy: &'static str, clients: usize) {
    let a = Echo::start();
    let b = Echo::start();
    let setup = Setup {
        send_proxy,
        defaults: "",
    };
    let haproxy = Haproxy::start(name, setup, a.addr, b.addr);
    haproxy.wait_up("a");
    haproxy.wait_up("b");

    // Every client connects (round robin: a, b, a, ...), then each sends a few frames in turn,
    // so that all are open at once.
    let mut conns: Vec<(SocketAddr, Client<SimpleFrame>)> = (0..clients)
        .map(|i| {
            let client = connect_from(source(i), haproxy.frontend)
                .unwrap_or_else(|e| panic!("client {i}: connect to {}: {e}", haproxy.frontend));
            (local_addr(&client), client)
        })
        .collect();
    for round in 0..3 {
        for (i, (_, client)) in conns.iter_mut().enumerate() {
            let frames: Vec<Vec<u8>> = (0..2)
                .map(|j| format!("client {i} round {round} frame {j}").into_bytes())
                .collect();
            for frame in &frames {
                client.send(frame).expect("send");
            }
            for frame in &frames {
                let reply = client
                    .recv()
                    .unwrap_or_else(|e| panic!("client {i}: no reply: {e}"))
                    .unwrap_or_else(|| panic!("client {i}: closed before its reply"));
                assert_eq!(
                    String::from_utf8_lossy(&reply),
                    String::from_utf8_lossy(frame),
                    "client {i}: reply"
                );
            }
        }
    }

    // Each client's own address and port, as the PROXY header gave it, in one log or the
    // other; HAProxy's side of the connection is 127.0.0.1.
    let peers: Vec<SocketAddr> = conns.iter().map(|(addr, _)| *addr).collect();
    wait_until("every client's connection in the instances' logs", || {
        peers.iter().all(|p| a.served(*p) || b.served(*p))
    });
    let (on_a, on_b) = (a.client_connections(), b.client_connections());
    for (i, peer) in peers.iter().enumerate() {
        assert_eq!(peer.ip(), source(i), "client {i} bound its source address");
        let logged: Vec<&Opened> = on_a
            .iter()
            .chain(&on_b)
            .filter(|o| o.peer == *peer)
            .collect();
        assert_eq!(
            logged.len(),
            1,
            "client {i} ({peer}) logged once: a {on_a:?}, b {on_b:?}"
        );
        let proxy = logged[0]
            .proxy
            .unwrap_or_else(|| panic!("client {i}: no proxy= in {:?}", logged[0]));
        assert_eq!(
            proxy.ip(),
            Ipv4Addr::LOCALHOST,
            "client {i}: HAProxy's side"
        );
        assert_ne!(proxy, *peer, "client {i}: the proxy is not the client");
    }
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "round robin over both instances: a served {on_a:?}, b served {on_b:?}"
    );

    // The health checks carry a PROXY header too (v2 LOCAL, or a v1 line naming HAProxy
    // itself): the instances accept them (no refusal), and both servers stay UP.
    for (name, echo) in [("a", &a), ("b", &b)] {
        wait_until("a health check connection in the log", || {
            echo.opened()
                .iter()
                .any(|o| o.peer.ip() == Ipv4Addr::LOCALHOST)
        });
        let log = echo.stderr.text();
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("connection refused"))
            .collect();
        assert!(
            refused.is_empty(),
            "instance {name} refused connections: {refused:#?}"
        );
        let checks: Vec<Opened> = echo
            .opened()
            .into_iter()
            .filter(|o| o.peer.ip() == Ipv4Addr::LOCALHOST)
            .collect();
        for check in &checks {
            // v2 LOCAL: the socket's own peer stands (and is logged as the proxy too, since a
            // header was read); v1: a TCP4 line with HAProxy's own addresses, the socket's.
            assert_eq!(check.proxy, Some(check.peer), "instance {name}: {check:?}");
        }
        let state = haproxy.server(name);
        assert_eq!(
            state,
            Some(("UP".to_string(), "L4OK".to_string())),
            "server {name} after the traffic ({} check connections opened)",
            checks.len()
        );
    }
    drop(conns);
}

#[test]
fn haproxy_send_proxy_v2_passes_client_addresses_and_health_checks_keep_backends_up() {
    client_addresses_pass_through("v2", "send-proxy-v2", 8);
}

#[test]
fn haproxy_send_proxy_v1_passes_client_addresses() {
    client_addresses_pass_through("v1", "send-proxy", 4);
}

// ---------------------------------------------------------------------------------------------
// Test 3: a rolling restart.

/// How one client connection ended.
#[derive(Debug, Clone, PartialEq)]
enum End {
    /// The test stopped the client: the connection never broke.
    Stopped,
    /// End of stream from HAProxy.
    Eof,
    /// A reset (or a broken pipe) while waiting for a reply.
    Reset,
    /// Sending the request failed: it never left.
    SendFailed(String),
    /// Anything else: a timeout, a frame cut short, a wrong reply. Always a failure.
    Failed(String),
}

/// One connection of a client.
#[derive(Debug, Clone)]
struct Conn {
    local: SocketAddr,
    /// Requests answered, all correctly (a wrong reply ends the connection as `Failed`).
    replies: u64,
    /// Sent, then the connection closed before its reply: 0 or 1.
    unanswered: u64,
    /// Opened after instance a had exited.
    after_exit: bool,
    end: End,
}

/// What the client threads share with the test.
struct Shared {
    frontend: SocketAddr,
    stop: AtomicBool,
    a_exited: AtomicBool,
    /// Replies received, per client.
    replies: Vec<AtomicU64>,
    /// Replies received after a exited, per client.
    replies_after_exit: Vec<AtomicU64>,
}

/// The upper bounds of a client's loop, in time and count.
const CLIENT_TIME_LIMIT: Duration = Duration::from_secs(40);
const CLIENT_MAX_REQUESTS: u64 = 2_000_000;
const CLIENT_MAX_CONNECTIONS: usize = 1_000;

/// Client `id`'s loop: request/reply, reconnecting after a close, until told to stop.
fn run_client(id: usize, shared: &Shared) -> Vec<Conn> {
    let start = Instant::now();
    let mut conns = Vec::new();
    let mut requests = 0u64;
    let mut connect_failures = 0;
    let over = |requests: u64| {
        shared.stop.load(Ordering::Acquire)
            || start.elapsed() > CLIENT_TIME_LIMIT
            || requests >= CLIENT_MAX_REQUESTS
    };
    while !over(requests) && conns.len() < CLIENT_MAX_CONNECTIONS {
        let after_exit = shared.a_exited.load(Ordering::Acquire);
        let mut client = match connect_from(source(id), shared.frontend) {
            Ok(client) => client,
            Err(err) => {
                // HAProxy's frontend never stops listening: this would be a failure, but
                // record it rather than give up at once.
                connect_failures += 1;
                if connect_failures > 20 {
                    conns.push(Conn {
                        local: SocketAddr::from((source(id), 0)),
                        replies: 0,
                        unanswered: 0,
                        after_exit,
                        end: End::Failed(format!("connect failed 20 times: {err}")),
                    });
                    break;
                }
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let mut conn = Conn {
            local: local_addr(&client),
            replies: 0,
            unanswered: 0,
            after_exit,
            end: End::Stopped,
        };
        while !over(requests) {
            requests += 1;
            let frame = format!("client {id} request {requests}");
            if let Err(err) = client.send(frame.as_bytes()) {
                conn.end = End::SendFailed(err.to_string());
                break;
            }
            match client.recv() {
                Ok(Some(reply)) if reply == frame.as_bytes() => {
                    conn.replies += 1;
                    shared.replies[id].fetch_add(1, Ordering::Relaxed);
                    if shared.a_exited.load(Ordering::Acquire) {
                        shared.replies_after_exit[id].fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Some(reply)) => {
                    conn.end = End::Failed(format!(
                        "sent {frame:?}, got {:?}",
                        String::from_utf8_lossy(&reply)
                    ));
                    break;
                }
                Ok(None) => {
                    conn.unanswered += 1;
                    conn.end = End::Eof;
                    break;
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    conn.unanswered += 1;
                    conn.end = End::Reset;
                    break;
                }
                Err(err) => {
                    conn.unanswered += 1;
                    conn.end = End::Failed(format!("waiting for the reply to {frame:?}: {err}"));
                    break;
                }
            }
        }
        let failed = matches!(conn.end, End::Failed(_));
        conns.push(conn);
        if failed {
            break;
        }
    }
    conns
}

#[test]
fn rolling_restart_behind_haproxy_loses_no_reply() {
    const CLIENTS: usize = 8;
    const BEFORE: u64 = 20;
    const AFTER: u64 = 30;

    let mut a = Echo::start();
    let b = Echo::start();
    let setup = Setup {
        send_proxy: "send-proxy-v2",
        defaults: "    option redispatch\n    retries 3\n",
    };
    let haproxy = Haproxy::start("rolling", setup, a.addr, b.addr);
    haproxy.wait_up("a");
    haproxy.wait_up("b");

    let shared = Arc::new(Shared {
        frontend: haproxy.frontend,
        stop: AtomicBool::new(false),
        a_exited: AtomicBool::new(false),
        replies: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
        replies_after_exit: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
    });
    let clients: Vec<JoinHandle<Vec<Conn>>> = (0..CLIENTS)
        .map(|id| {
            let shared = shared.clone();
            thread::spawn(move || run_client(id, &shared))
        })
        .collect();
    // Stops the clients however the test ends, so that they never outlive it by much.
    struct StopOnDrop(Arc<Shared>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop.store(true, Ordering::Release);
        }
    }
    let _stop = StopOnDrop(shared.clone());

    // Traffic flows on both instances.
    wait_until(
        "every client answered a few times, on both instances",
        || {
            shared
                .replies
                .iter()
                .all(|r| r.load(Ordering::Relaxed) >= BEFORE)
                && !a.client_connections().is_empty()
                && !b.client_connections().is_empty()
        },
    );
    let on_a_before = a.client_connections().len();

    // The restart of a: SIGTERM, the drain, a clean exit.
    let signalled = Instant::now();
    kill(a.child.pid(), Signal::SIGTERM).expect("send SIGTERM to a");
    let status = a
        .child
        .wait_exit(DEADLINE)
        .unwrap_or_else(|| panic!("instance a did not exit within {DEADLINE:?} of SIGTERM"));
    let exit_took = signalled.elapsed();
    shared.a_exited.store(true, Ordering::Release);
    a.join_readers();
    let a_log = a.stderr.text();
    assert!(
        status.success(),
        "instance a: exit status {status}; stderr: {a_log}"
    );
    let summary = a_log
        .lines()
        .find(|l| l.starts_with("drained "))
        .unwrap_or_else(|| panic!("no summary in a's stderr: {a_log}"))
        .to_string();
    assert!(
        summary.contains("abandoned 0"),
        "instance a left replies unwritten: {summary}"
    );
    assert!(
        a.stdout.text().contains("shut down"),
        "a's stdout: {:?}",
        a.stdout.text()
    );

    // After a's exit, every client carries on, on b; and so do new clients, whether or not
    // HAProxy has marked a DOWN yet (its checks need two failures): until then its connections
    // to a are refused, and HAProxy redispatches them to b.
    let fresh: Vec<SocketAddr> = (0..4)
        .map(|j| {
            let mut client = connect_from(Ipv4Addr::new(127, 0, 0, 40 + j), haproxy.frontend)
                .expect("connect a new client");
            let local = local_addr(&client);
            let frame = format!("new client {local}");
            client.send(frame.as_bytes()).expect("send");
            let reply = client.recv();
            assert!(
                matches!(&reply, Ok(Some(r)) if r == frame.as_bytes()),
                "new client {local} after a exited: {reply:?}"
            );
            local
        })
        .collect();
    for local in &fresh {
        wait_until("a new client in b's log", || b.served(*local));
    }
    wait_until("every client answered again after a exited", || {
        shared
            .replies_after_exit
            .iter()
            .all(|r| r.load(Ordering::Relaxed) >= AFTER)
    });
    shared.stop.store(true, Ordering::Release);
    let reports: Vec<Vec<Conn>> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread panicked"))
        .collect();
    wait_until("a down in HAProxy's stats", || {
        haproxy
            .server("a")
            .is_some_and(|(status, _)| status.starts_with("DOWN"))
    });

    // What the clients saw.
    let all: Vec<&Conn> = reports.iter().flatten().collect();
    let count = |f: &dyn Fn(&Conn) -> bool| all.iter().filter(|c| f(c)).count();
    let broken = count(&|c| c.end != End::Stopped);
    let eof = count(&|c| c.end == End::Eof);
    let reset = count(&|c| c.end == End::Reset);
    let send_failed = count(&|c| matches!(c.end, End::SendFailed(_)));
    let unanswered: u64 = all.iter().map(|c| c.unanswered).sum();
    let replies: u64 = all.iter().map(|c| c.replies).sum();
    let after_exit = count(&|c| c.after_exit);
    let a_peers: Vec<SocketAddr> = parse_opened(&a_log).iter().map(|o| o.peer).collect();
    let a_stat = |column| haproxy.stat("a", column).unwrap_or_default();
    let report = format!(
        "{} connections by {CLIENTS} clients ({after_exit} opened after a exited), {replies} \
         replies; a served {on_a_before} client connections before SIGTERM and exited \
         {exit_took:?} after it ({summary}); broken connections: {broken} ({eof} end of \
         stream, {reset} reset, {send_failed} send failed), requests unanswered at a close: \
         {unanswered}; HAProxy on a: {} connection errors, {} retries, {} redispatches",
        all.len(),
        a_stat("econ"),
        a_stat("wretr"),
        a_stat("wredis"),
    );
    eprintln!("rolling restart: {report}");

    let failures: Vec<(usize, &Conn)> = reports
        .iter()
        .enumerate()
        .flat_map(|(id, conns)| conns.iter().map(move |c| (id, c)))
        .filter(|(_, c)| matches!(c.end, End::Failed(_)))
        .collect();
    assert!(
        failures.is_empty(),
        "wrong replies, timeouts or cut frames: {failures:#?}; {report}"
    );
    // A client's source port may come round again for a later connection of the same client:
    // the log lines of such a port cannot tell its connections apart, so they are not used.
    let ambiguous = |conn: &Conn| all.iter().filter(|c| c.local == conn.local).count() > 1;
    for (id, conns) in reports.iter().enumerate() {
        for (n, conn) in conns.iter().enumerate() {
            // One request in flight at a time: a close loses at most that one.
            assert!(conn.unanswered <= 1, "client {id}: {conn:?}; {report}");
            if conn.end != End::Stopped {
                // Broken by a's drain (or by a's backlog reset), never on b.
                assert!(
                    !conn.after_exit,
                    "client {id}: a connection opened after a exited broke: {conn:?}; {report}"
                );
                assert!(
                    ambiguous(conn) || !b.served(conn.local),
                    "client {id}: a connection to b broke: {conn:?}; {report}"
                );
                // ...and the client reconnected and was served again.
                assert!(
                    conns[n + 1..].iter().any(|later| later.replies > 0),
                    "client {id} did not get a reply after its connection broke: {conns:#?}"
                );
            }
        }
        // Connections opened after a exited were b's, and none broke.
        for conn in conns.iter().filter(|c| c.after_exit) {
            assert!(
                ambiguous(conn) || !a_peers.contains(&conn.local),
                "client {id}: {conn:?} in a's log"
            );
            wait_until("a connection opened after a exited in b's log", || {
                b.served(conn.local)
            });
        }
    }
    // Connections that broke: each at a's close (logged by a), or refused from a's backlog.
    let broken_on_a = all
        .iter()
        .filter(|c| c.end != End::Stopped && a_peers.contains(&c.local))
        .count();
    eprintln!(
        "rolling restart: {broken_on_a} of the {broken} broken connections were opened on a \
         (the others never reached its handler)"
    );
    assert!(
        broken >= 1,
        "a's clients lost their connections to the drain: {report}"
    );
}
