//! Regression tests for runtime defects found with traffic the other tests did not make:
//! urgent data, connections that never stop sending, and callbacks that block. Each test is
//! named after the bug it pins down.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::TestHandler;
use crossbeam_channel::{Receiver, Sender, bounded};
use hydrogen::{Accepted, Config, Framed, Handler, LengthPrefixed, Socket, Transport};

use common::{DEADLINE, Recorder, TestServer, config};

const KIB: usize = 1 << 10;

/// A u32 length-prefixed frame.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Reads one u32 length-prefixed frame.
fn read_frame(tcp: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0; 4];
    tcp.read_exact(&mut len)?;
    let mut payload = vec![0; u32::from_be_bytes(len) as usize];
    tcp.read_exact(&mut payload)?;
    Ok(payload)
}

/// A frame, one urgent byte, another frame: the read stopped at the urgent mark, the short
/// read was taken for "drained", and the second frame waited in the kernel until the peer
/// sent something else. Both echoes must come back with nothing more sent. (The urgent byte
/// itself is out of band: it is not part of the stream.)
#[test]
fn urgent_byte_stranded_the_next_frame() {
    let handler = Arc::new(Recorder::echo(LengthPrefixed::new(64 * KIB)));
    let server = TestServer::start(config(2), handler.clone());
    for round in 0..20 {
        let mut tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let (first, second) = (format!("first {round}"), format!("second {round}"));
        tcp.write_all(&framed(first.as_bytes())).unwrap();
        socket2::SockRef::from(&tcp).send_out_of_band(b"!").unwrap();
        tcp.write_all(&framed(second.as_bytes())).unwrap();
        let a = read_frame(&mut tcp).unwrap_or_else(|e| panic!("round {round}, first: {e}"));
        assert_eq!(a, first.as_bytes(), "round {round}");
        let b = read_frame(&mut tcp)
            .unwrap_or_else(|e| panic!("round {round}: the frame after the urgent byte: {e}"));
        assert_eq!(b, second.as_bytes(), "round {round}");
    }
}

/// What the workload handler does with a frame, by its first byte.
const UPLOAD: u8 = b'U';
const BLOCK: u8 = b'B';

/// Echoes frames, except that upload frames (`U...`) cost 200 µs each and are not answered,
/// and a block frame (`B...`) blocks its callback until the test releases it.
struct Workload {
    /// Upload frames handled so far.
    uploads: AtomicU64,
    entered: Sender<()>,
    release: Receiver<()>,
}

impl Workload {
    fn new() -> (Arc<Workload>, Receiver<()>, Sender<()>) {
        let (entered, entered_rx) = bounded(16);
        let (release_tx, release) = bounded(16);
        (
            Arc::new(Workload {
                uploads: AtomicU64::new(0),
                entered,
                release,
            }),
            entered_rx,
            release_tx,
        )
    }
}

impl Handler for Workload {
    type Session = ();

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        match frame.first() {
            Some(&UPLOAD) => {
                self.uploads.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_micros(200));
            }
            Some(&BLOCK) => {
                let _ = self.entered.send(());
                let _ = self.release.recv_timeout(DEADLINE);
                let _ = socket.send(frame);
            }
            _ => {
                let _ = socket.send(frame);
            }
        }
    }
}

impl Transport for Workload {
    type Stream = Framed<LengthPrefixed>;

    fn open(&self, conn: Accepted) -> io::Result<Framed<LengthPrefixed>> {
        let tcp = conn.into_tcp()?;
        tcp.set_nodelay(true)?;
        // A small read budget: a connection that keeps sending uses its turn up quickly and
        // goes back to the queue with input left.
        Ok(Framed::new(tcp, LengthPrefixed::new(64 * KIB)).with_read_budget(4 * KIB))
    }
}

impl TestHandler for Arc<Workload> {
    type Transport = Arc<Workload>;

    fn transport(&self) -> Arc<Workload> {
        self.clone()
    }
}

/// Sends one frame and waits (with a read timeout) for its echo.
fn round_trip(addr: SocketAddr, payload: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.write_all(&framed(payload))?;
    read_frame(&mut tcp)
}

/// Connections that send upload frames faster than the server handles them, until `stop` is
/// set or `limit` passes.
fn start_uploaders(
    addr: SocketAddr,
    n: usize,
    stop: &Arc<AtomicBool>,
    limit: Duration,
) -> Vec<thread::JoinHandle<u64>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            let mut tcp = TcpStream::connect(addr).unwrap();
            tcp.set_write_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            thread::spawn(move || {
                let chunk: Vec<u8> = (0..64).flat_map(|_| framed(&[UPLOAD; 1020])).collect();
                let start = Instant::now();
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
                    match tcp.write(&chunk) {
                        Ok(n) => sent += n as u64,
                        Err(e) if common::is_timeout(&e) => {}
                        Err(_) => break, // the server closed it (shutdown)
                    }
                }
                sent
            })
        })
        .collect()
}

/// A worker always ran a queued task before it polled, and turns that ended with input left
/// queued themselves again: with at least as many busy uploaders as workers the queue never
/// emptied and nobody entered `epoll_wait`. New connections were not accepted, new frames not
/// read, and the shutdown notice not seen. Here a probe must be served while four uploaders
/// keep both workers busy, the shutdown must complete within its drain timeout, and queued
/// work and polling must have taken turns: the longest run of queued tasks with nobody
/// polling stays a small constant.
#[test]
fn busy_uploaders_starved_polling() {
    let (handler, _, _) = Workload::new();
    let server = TestServer::start(
        Config {
            drain_timeout: Duration::from_secs(2),
            ..config(2)
        },
        handler.clone(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let uploaders = start_uploaders(server.addr, 4, &stop, Duration::from_secs(30));
    // Every uploader sends far more than its turn reads: once all four are being served,
    // their turns fill the queue.
    common::wait_until("uploads to be served", || {
        handler.uploads.load(Ordering::Relaxed) > 400
    });
    for i in 0..5 {
        let probe = format!("probe {i}");
        let echo = round_trip(server.addr, probe.as_bytes(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("probe {i} not served while uploaders run: {e}"));
        assert_eq!(echo, probe.as_bytes());
    }
    let (tx, rx) = bounded(1);
    thread::spawn(move || {
        let _ = tx.send(server.stop());
    });
    let summary = rx
        .recv_timeout(DEADLINE)
        .expect("shutdown returned under load")
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = uploaders.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(sent > 0);
    assert_eq!(summary.accepted, 4 + 5, "{summary:?}");
    // Before the fix, thousands of queued turns ran between two polls.
    assert!(
        summary.longest_poll_gap <= 64,
        "{} queued tasks ran with nobody polling: {summary:?}",
        summary.longest_poll_gap
    );
}

/// The leader ran its first event's callback itself and idle workers slept on the queue: while
/// that callback blocked, nobody polled, however many workers were free. Here one callback
/// blocks until released; meanwhile other connections, new and old, must be served.
#[test]
fn blocking_callback_froze_every_connection() {
    let (handler, entered, release) = Workload::new();
    let server = TestServer::start(config(4), handler);
    let mut old = TcpStream::connect(server.addr).unwrap();
    old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    old.write_all(&framed(b"before")).unwrap();
    assert_eq!(read_frame(&mut old).unwrap(), b"before");

    let mut blocker = TcpStream::connect(server.addr).unwrap();
    blocker.set_read_timeout(Some(DEADLINE)).unwrap();
    blocker.write_all(&framed(b"warm-up")).unwrap();
    assert_eq!(read_frame(&mut blocker).unwrap(), b"warm-up");
    // The only event in flight: the worker that polls runs this callback itself.
    blocker.write_all(&framed(&[BLOCK; 8])).unwrap();
    entered
        .recv_timeout(DEADLINE)
        .expect("the blocking callback started");
    for i in 0..5 {
        let probe = format!("while blocked {i}");
        old.write_all(&framed(probe.as_bytes())).unwrap();
        let echo = read_frame(&mut old)
            .unwrap_or_else(|e| panic!("an open connection frozen by a blocked callback: {e}"));
        assert_eq!(echo, probe.as_bytes());
        let echo = round_trip(server.addr, probe.as_bytes(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("a new connection frozen by a blocked callback: {e}"));
        assert_eq!(echo, probe.as_bytes());
    }
    release.send(()).unwrap();
    assert_eq!(read_frame(&mut blocker).unwrap(), [BLOCK; 8]);
    let summary = server.stop().unwrap();
    assert_eq!(summary.accepted, 2 + 5, "{summary:?}");
}
