//! Process-level hardening, in child processes (the test binary re-runs itself with an
//! environment variable selecting the child's role):
//!
//! - a peer that resets while the server writes to it must not kill the process with
//!   `SIGPIPE`, even with `SIGPIPE` at its default disposition (fatal);
//! - out of descriptors (`RLIMIT_NOFILE`), the server pauses accepting without spinning, keeps
//!   serving the connections it has, and resumes once descriptors free up.

mod common;

use std::env;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded};
use hydrogen::client::Client;
use hydrogen::{Config, LengthPrefixed, OutboundPolicy, SendError};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::socket::{MsgFlags, send};

use common::{DEADLINE, Recorder, TestServer, config, is_timeout, reset_on_close};

/// The environment variable that makes the test binary play a child's part.
const ROLE: &str = "HYDROGEN_HARDENING_CHILD";

/// The role this process was started in, if it is a child.
fn role() -> Option<String> {
    env::var(ROLE).ok()
}

/// The test binary, told to run only `test` in `role`.
fn child_command(test: &str, role: &str) -> Command {
    let mut cmd = Command::new(env::current_exe().expect("current_exe"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env_remove("RUST_LOG");
    cmd
}

/// A child process, killed (by its own id) if the test fails before it exits.
struct ChildGuard(Child);

impl ChildGuard {
    /// Waits for the child to exit, for at most `limit`.
    #[track_caller]
    fn wait_for_exit(&mut self, limit: Duration, what: &str) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "{what}: the child did not exit within {limit:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SIGPIPE

#[test]
fn a_peer_reset_during_writes_does_not_raise_sigpipe() {
    match role().as_deref() {
        Some("sigpipe") => return sigpipe_child(false),
        Some("sigpipe-control") => return sigpipe_child(true),
        Some(_) => return,
        None => {}
    }
    const TEST: &str = "a_peer_reset_during_writes_does_not_raise_sigpipe";

    let mut child = ChildGuard(
        child_command(TEST, "sigpipe")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the child"),
    );
    let status = child.wait_for_exit(DEADLINE * 3, "sigpipe child");
    assert_eq!(
        status.signal(),
        None,
        "the child was killed by signal {:?} ({status})",
        status.signal().map(Signal::try_from)
    );
    assert!(status.success(), "the child failed: {status}");

    // The control: the same child, which then writes to a reset socket itself without
    // MSG_NOSIGNAL, must die of SIGPIPE. This shows the child's disposition is really the
    // default one, and that the check above can fail.
    let mut control = ChildGuard(
        child_command(TEST, "sigpipe-control")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the control child"),
    );
    let status = control.wait_for_exit(DEADLINE * 3, "control child");
    assert_eq!(
        status.signal(),
        Some(Signal::SIGPIPE as i32),
        "the control child was not killed by SIGPIPE: {status}"
    );
}

/// Several rounds of: a peer that does not read, the server's queue filled for it from
/// another thread, then the peer resets while that thread keeps sending. The turn that sees
/// the reset flushes the queued output into the dead socket: `EPIPE`, and `SIGPIPE` unless the
/// write says `MSG_NOSIGNAL`.
fn sigpipe_child(control: bool) {
    // SAFETY: restoring the default disposition installs no handler, so no Rust code runs in
    // signal context; this process is a child started for this test alone.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.expect("signal");
    const ROUNDS: usize = 10;
    let handler = Arc::new(Recorder::new(LengthPrefixed::new(1 << 20), |_, _| {}));
    let server = TestServer::start(
        Config {
            outbound_policy: OutboundPolicy::Reject,
            ..config(2)
        },
        handler.clone(),
    );
    for round in 0..ROUNDS {
        let peer = TcpStream::connect(server.addr).unwrap();
        let socket = handler.nth_opened(round + 1);
        let (full_tx, full_rx) = bounded(1);
        let (done_tx, done_rx) = bounded(1);
        let sender = socket.clone();
        thread::spawn(move || {
            let frame = vec![0x33u8; 64 * 1024];
            let start = Instant::now();
            let mut told = false;
            let outcome = loop {
                match sender.send(&frame) {
                    Ok(()) => {}
                    Err(SendError::QueueFull) => {
                        if !told {
                            told = true;
                            let _ = full_tx.send(());
                        }
                    }
                    Err(e) => break Ok(e),
                }
                if start.elapsed() > DEADLINE {
                    break Err("still sending after the deadline");
                }
            };
            let _ = done_tx.send(outcome);
        });
        full_rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("round {round}: the queue never filled"));
        reset_on_close(&peer);
        drop(peer);
        let outcome = done_rx
            .recv_timeout(DEADLINE * 2)
            .unwrap_or_else(|_| panic!("round {round}: the sender is stuck"));
        assert!(
            matches!(outcome, Ok(SendError::Closed)),
            "round {round}: {outcome:?}"
        );
        assert_eq!(handler.removal_of(socket.id()), "reset", "round {round}");
    }
    server.stop().unwrap();

    if control {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        reset_on_close(&peer);
        drop(peer);
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            // A plain send(2): the reset makes the first failing one ECONNRESET and the next
            // one EPIPE, which raises SIGPIPE.
            let _ = send(ours.as_raw_fd(), b"x", MsgFlags::empty());
            thread::sleep(Duration::from_millis(1));
        }
        eprintln!("control child: still alive after writing to a reset socket");
    }
}

// ---------------------------------------------------------------------------------------------
// RLIMIT_NOFILE

const NOFILE: u64 = 256;
const CLIENTS: usize = 300;

#[test]
fn out_of_descriptors_the_server_pauses_accepting_without_spinning_then_resumes() {
    match role().as_deref() {
        Some("nofile") => return nofile_child(),
        Some(_) => return,
        None => {}
    }
    const TEST: &str =
        "out_of_descriptors_the_server_pauses_accepting_without_spinning_then_resumes";
    let mut child = ChildGuard(
        child_command(TEST, "nofile")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child"),
    );
    let pid = child.0.id();

    // The child prints `port N` once it serves; its other output is the test harness's.
    let stdout = child.0.stdout.take().unwrap();
    let (line_tx, line_rx) = unbounded();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = line_tx.send(line);
        }
    });
    let port: u16 = loop {
        let line = line_rx
            .recv_timeout(DEADLINE)
            .expect("the child prints its port");
        // The harness may have begun the line (`test NAME ... `) before the child printed.
        if let Some((_, port)) = line.split_once("port ") {
            break port.trim().parse().expect("a port number");
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    // 300 clients each send one frame and do not wait for the reply yet.
    let codec = LengthPrefixed::new(1024);
    let mut clients: Vec<Option<Client<LengthPrefixed>>> = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut c =
            Client::connect(addr, codec).unwrap_or_else(|e| panic!("client {i}: connect: {e}"));
        c.send(&(i as u32).to_be_bytes()).unwrap();
        c.get_ref().set_nonblocking(true).unwrap();
        clients.push(Some(c));
    }

    // The connections the child could accept are served.
    let mut answered = vec![false; CLIENTS];
    let first_wave = poll_replies(&mut clients, &mut answered, |n, quiet| {
        n >= CLIENTS / 2 && quiet > Duration::from_millis(300)
    });
    let served = answered.iter().filter(|a| **a).count();
    assert!(
        served >= CLIENTS / 2,
        "only {served} of {CLIENTS} clients answered in {first_wave:?} (RLIMIT_NOFILE {NOFILE})"
    );
    assert!(
        served < CLIENTS,
        "all {CLIENTS} answered: the descriptor limit was never reached"
    );

    // Paused, the child does not spin: sample its CPU time over a second.
    let before = cpu_ticks(pid);
    thread::sleep(Duration::from_secs(1)); // the sampling interval
    let after = cpu_ticks(pid);
    let burned = after - before;
    assert!(
        burned < 30,
        "the paused child burned {burned} ticks of 10 ms in 1 s (an accept spin burns ~100)"
    );

    // 150 answered clients leave; those waiting in the backlog are then served.
    let mut dropped = 0;
    for (c, answered) in clients.iter_mut().zip(&answered) {
        if *answered && dropped < CLIENTS / 2 {
            *c = None;
            dropped += 1;
        }
    }
    let waiting = CLIENTS - served;
    let resumed = poll_replies(&mut clients, &mut answered, |n, _| n == CLIENTS);
    let total = answered.iter().filter(|a| **a).count();
    assert_eq!(
        total,
        CLIENTS,
        "{} of the {waiting} backlogged clients answered within {resumed:?} after {dropped} left",
        total - served
    );
    // The survivors of the first wave are still served too.
    for (i, c) in clients.iter_mut().enumerate() {
        if let Some(c) = c {
            c.get_ref().set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(DEADLINE)).unwrap();
            c.send(b"again").unwrap();
            assert_eq!(
                c.recv().unwrap().as_deref(),
                Some(&b"again"[..]),
                "client {i}"
            );
        }
    }
    eprintln!(
        "nofile: {served} of {CLIENTS} served at first ({first_wave:?}), paused child burned \
         {burned} ticks in 1 s; the {waiting} backlogged were served within {resumed:?} after \
         {dropped} left"
    );

    drop(clients);
    drop(child.0.stdin.take()); // end of stdin: the child stops its server and exits
    let status = child.wait_for_exit(DEADLINE, "nofile child");
    assert!(status.success(), "the child failed: {status}");
}

/// Polls the clients that have not answered yet, without blocking, until `done(answered,
/// time since the last new answer)` holds; returns how long it took. A client closed by the
/// server, or a wrong reply, fails the test; so does [`DEADLINE`] passing.
#[track_caller]
fn poll_replies(
    clients: &mut [Option<Client<LengthPrefixed>>],
    answered: &mut [bool],
    done: impl Fn(usize, Duration) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut last_new = Instant::now();
    loop {
        for (i, c) in clients.iter_mut().enumerate() {
            let Some(c) = c else { continue };
            if answered[i] {
                continue;
            }
            match c.recv() {
                Ok(Some(reply)) => {
                    assert_eq!(reply, (i as u32).to_be_bytes(), "client {i}");
                    answered[i] = true;
                    last_new = Instant::now();
                }
                Ok(None) => panic!("client {i}: closed by the server"),
                Err(e) if is_timeout(&e) => {}
                Err(e) => panic!("client {i}: {e}"),
            }
        }
        let n = answered.iter().filter(|a| **a).count();
        if done(n, last_new.elapsed()) {
            return start.elapsed();
        }
        if start.elapsed() > DEADLINE {
            return start.elapsed(); // the caller's assertion reports it
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The CPU time (user + system, all threads) of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // After the command name (in parentheses, possibly with spaces): field 3 onwards.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[14 - 3].parse().unwrap();
    let stime: u64 = fields[15 - 3].parse().unwrap();
    utime + stime
}

/// Serves on a port it prints, with at most 256 descriptors, until stdin closes.
fn nofile_child() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, NOFILE, hard).expect("lower RLIMIT_NOFILE");
    let server = TestServer::start(
        Config {
            max_connections: 10_000, // far above what the descriptors allow
            ..config(2)
        },
        Arc::new(Recorder::echo(LengthPrefixed::new(1024))),
    );
    println!("\nport {}", server.addr.port());
    io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    let _ = io::stdin().read_to_end(&mut rest);
    let summary = server.stop().expect("the server ran without error");
    eprintln!("nofile child: {summary:?}");
    assert!(summary.accepted >= CLIENTS as u64, "{summary:?}");
}
