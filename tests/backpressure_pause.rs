//! Read backpressure: a connection paused by the application, or with frames waiting for a
//! full blocking pool, is not read, so the kernel's buffers fill and TCP stops the peer; on
//! resuming, everything it sent is delivered, in order, nothing lost.

mod common;

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use hydrogen::client::Client;
use hydrogen::{CloseReason, Codec, Config, Handler, LengthPrefixed, Socket};
use parking_lot::Mutex;

use common::{DEADLINE, TestServer, config, reason_kind, wait_until};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Payload of each flood frame.
const FRAME: usize = KIB;
/// Where a flood gives up if nothing pushes back: far beyond what the kernel buffers.
const FLOOD_CAP: usize = 256 * MIB;
/// The most the kernel's buffers hold on loopback (send plus receive buffer, autotuned up to
/// `tcp_wmem`/`tcp_rmem` maxima of a few MiB each) plus a read batch of the server.
const KERNEL_BOUND: usize = 48 * MIB;

/// Frame `i` of a flood: its number, then filler.
fn flood_frame(i: u64) -> Vec<u8> {
    let mut payload = i.to_be_bytes().to_vec();
    payload.resize(FRAME, (i % 251) as u8);
    let mut wire = Vec::new();
    LengthPrefixed::default()
        .encode(&payload, &mut wire)
        .unwrap();
    wire
}

/// Writes flood frames without blocking until the socket stops taking bytes for 300 ms (the
/// peer's window is shut) or [`FLOOD_CAP`] is reached. Returns the bytes written and the
/// frames started (the last may be partial: the rest is written by [`finish_frame`]).
fn flood(tcp: &TcpStream) -> (usize, u64, Vec<u8>) {
    tcp.set_nonblocking(true).unwrap();
    let mut written = 0;
    let mut frames = 0;
    let mut last_progress = Instant::now();
    let mut pending = flood_frame(0);
    let deadline = Instant::now() + DEADLINE;
    while written < FLOOD_CAP && Instant::now() < deadline {
        match (&*tcp).write(&pending) {
            Ok(n) => {
                written += n;
                last_progress = Instant::now();
                pending.drain(..n);
                if pending.is_empty() {
                    frames += 1;
                    pending = flood_frame(frames);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if last_progress.elapsed() > Duration::from_millis(300) {
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("flood write: {e}"),
        }
    }
    tcp.set_nonblocking(false).unwrap();
    // A partly written frame counts as sent once finished.
    let partial = pending.len() < flood_frame(frames).len();
    (
        written,
        frames + u64::from(partial),
        if partial { pending } else { Vec::new() },
    )
}

/// Records frames (their numbers) and pauses on the first, or on a `pause` payload.
struct Pauser {
    sockets: Mutex<Vec<Socket>>,
    numbers: Mutex<Vec<u64>>,
    payloads: Mutex<Vec<Vec<u8>>>,
    pause_on_first: bool,
    removed: Mutex<Vec<&'static str>>,
}

impl Pauser {
    fn new(pause_on_first: bool) -> Arc<Pauser> {
        Arc::new(Pauser {
            sockets: Mutex::new(Vec::new()),
            numbers: Mutex::new(Vec::new()),
            payloads: Mutex::new(Vec::new()),
            pause_on_first,
            removed: Mutex::new(Vec::new()),
        })
    }
}

impl Handler for Pauser {
    type Session = u64;

    fn on_connection_opened(&self, _: &mut u64, socket: &Socket) {
        self.sockets.lock().push(socket.clone());
    }

    fn on_frame(&self, count: &mut u64, socket: &Socket, frame: &[u8]) {
        *count += 1;
        if frame.len() >= 8 {
            self.numbers
                .lock()
                .push(u64::from_be_bytes(frame[..8].try_into().unwrap()));
        }
        self.payloads.lock().push(frame.to_vec());
        if (self.pause_on_first && *count == 1) || frame == b"pause" {
            socket.pause_reading();
        }
    }

    fn on_connection_removed(&self, _: u64, _: &Socket, reason: &CloseReason) {
        self.removed.lock().push(reason_kind(reason));
    }
}

fn length_config(threads: usize) -> Config {
    Config {
        framing: LengthPrefixed::default().into(),
        // The flood is held by the pause, not by the memory ceiling.
        max_buffered: None,
        ..config(threads)
    }
}

#[test]
fn pause_reading_holds_back_the_rest_of_a_batch() {
    let handler = Pauser::new(false);
    let server =
        TestServer::start_with(length_config(2), LengthPrefixed::default(), handler.clone());
    let mut client = Client::connect(server.addr, LengthPrefixed::default()).unwrap();
    // One write: the server reads all four in one batch.
    for payload in [&b"one"[..], b"pause", b"three", b"four"] {
        client.feed(payload).unwrap();
    }
    client.flush().unwrap();
    wait_until("two frames", || handler.payloads.lock().len() >= 2);
    // Nothing wakes the connection while paused; give a broken pause time to show.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        handler.payloads.lock().len(),
        2,
        "nothing delivered while paused"
    );
    handler.sockets.lock()[0].resume_reading();
    wait_until("all four frames", || handler.payloads.lock().len() == 4);
    assert_eq!(
        *handler.payloads.lock(),
        [&b"one"[..], b"pause", b"three", b"four"].map(<[u8]>::to_vec)
    );
    drop(client);
    wait_until("the removal", || !handler.removed.lock().is_empty());
    assert_eq!(handler.removed.lock()[0], "peer_closed");
    server.stop().unwrap();
}

/// A peer flooding a paused connection is stopped by TCP after the kernel's buffers, and
/// every frame it sent arrives once reading resumes.
#[test]
fn paused_flood_stops_at_the_kernel_buffers() {
    let handler = Pauser::new(true);
    let server =
        TestServer::start_with(length_config(2), LengthPrefixed::default(), handler.clone());
    let tcp = TcpStream::connect(server.addr).unwrap();
    let (written, frames, rest) = flood(&tcp);
    eprintln!(
        "the flood stopped after {} KiB, {frames} frames",
        written / KIB
    );
    assert!(
        written < KERNEL_BOUND,
        "the peer wrote {} MiB into a paused connection",
        written / MIB
    );
    assert_eq!(
        handler.numbers.lock().len(),
        1,
        "only the first frame, then paused"
    );

    handler.sockets.lock()[0].resume_reading();
    (&tcp).write_all(&rest).unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    wait_until("the removal", || !handler.removed.lock().is_empty());
    assert_eq!(handler.removed.lock()[0], "peer_closed");
    let numbers = handler.numbers.lock();
    assert_eq!(
        numbers.len() as u64,
        frames,
        "every frame written was delivered"
    );
    assert!(
        numbers.iter().enumerate().all(|(i, &n)| n == i as u64),
        "in order"
    );
    drop(numbers);
    server.stop().unwrap();
}

/// Offloads every frame; the first blocks until the test opens the gate.
struct Gated {
    gate: Receiver<()>,
    started: AtomicU64,
    numbers: Mutex<Vec<u64>>,
    removed: Mutex<Vec<&'static str>>,
}

impl Handler for Gated {
    type Session = ();

    fn offload(&self, _: &[u8]) -> bool {
        true
    }

    fn on_frame(&self, _: &mut (), _: &Socket, frame: &[u8]) {
        if self.started.fetch_add(1, Ordering::AcqRel) == 0 {
            self.gate.recv_timeout(DEADLINE).expect("the gate opens");
        }
        self.numbers
            .lock()
            .push(u64::from_be_bytes(frame[..8].try_into().unwrap()));
    }

    fn on_connection_removed(&self, _: (), _: &Socket, reason: &CloseReason) {
        self.removed.lock().push(reason_kind(reason));
    }
}

/// With every pool thread busy and `blocking_queue` frames waiting, the connection is not
/// read: the flood stops at the kernel's buffers instead of in the server's memory.
#[test]
fn full_pool_flood_stops_at_the_kernel_buffers() {
    let (open, gate): (Sender<()>, Receiver<()>) = bounded(1);
    let handler = Arc::new(Gated {
        gate,
        started: AtomicU64::new(0),
        numbers: Mutex::new(Vec::new()),
        removed: Mutex::new(Vec::new()),
    });
    let server = TestServer::start_with(
        Config {
            blocking_threads: 1,
            blocking_queue: 64,
            ..length_config(2)
        },
        LengthPrefixed::default(),
        handler.clone(),
    );
    let tcp = TcpStream::connect(server.addr).unwrap();
    let (written, frames, rest) = flood(&tcp);
    eprintln!(
        "the flood stopped after {} KiB, {frames} frames",
        written / KIB
    );
    assert!(
        written < KERNEL_BOUND,
        "the peer wrote {} MiB while the pool was full",
        written / MIB
    );
    assert_eq!(handler.started.load(Ordering::Acquire), 1);

    open.send(()).unwrap();
    (&tcp).write_all(&rest).unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    wait_until("the removal", || !handler.removed.lock().is_empty());
    assert_eq!(handler.removed.lock()[0], "peer_closed");
    let numbers = handler.numbers.lock();
    assert_eq!(
        numbers.len() as u64,
        frames,
        "every frame written was handled"
    );
    assert!(
        numbers.iter().enumerate().all(|(i, &n)| n == i as u64),
        "in order"
    );
    drop(numbers);
    server.stop().unwrap();
}
