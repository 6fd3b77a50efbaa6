//! Shutdown under load: the drain writes what is queued to a peer that reads late, gives up on
//! one that never reads once `drain_timeout` passes, and senders racing the shutdown neither
//! panic nor deadlock, and only ever see `Ok` or `Closed`.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{Recording, TestHandler};
use crossbeam_channel::{RecvTimeoutError, bounded, unbounded};
use hydrogen::client::Client;
use hydrogen::{
    Accepted, CloseReason, Codec, Config, Handler, LengthPrefixed, LengthPrefixedStream,
    OutboundPolicy, SendError, Socket, Transport,
};

use common::{DEADLINE, Recorder, TestServer, config, serial, wait_until};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const FRAME: usize = 64 * KIB;

fn codec() -> LengthPrefixed {
    LengthPrefixed::new(MIB)
}

/// Connects with a small receive buffer (the other half of [`SmallSendBuffer`]).
fn connect_small_window(addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket.set_recv_buffer_size(16 * KIB).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// A [`Recorder`] whose connections get a small kernel send buffer, so that what the server
/// sends to a peer that does not read stays in the library's queue instead of disappearing
/// into the kernel (whose buffers grow to several MiB on loopback).
struct SmallSendBuffer(Arc<Recorder<LengthPrefixed>>);

impl Handler for SmallSendBuffer {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        self.0.on_connection_opened(&mut (), socket)
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        self.0.on_frame(&mut (), socket, frame)
    }

    fn on_connection_removed(&self, _: (), socket: &Socket, reason: &CloseReason) {
        self.0.on_connection_removed((), socket, reason)
    }
}

/// The recorder's transport, with a small send buffer on every socket.
struct SmallBuffers(Recording<LengthPrefixed>);

impl Transport for SmallBuffers {
    type Stream = LengthPrefixedStream;

    fn open(&self, conn: Accepted) -> io::Result<LengthPrefixedStream> {
        socket2::SockRef::from(conn.stream()).set_send_buffer_size(16 * KIB)?;
        self.0.open(conn)
    }
}

impl TestHandler for SmallSendBuffer {
    type Transport = SmallBuffers;

    fn transport(&self) -> SmallBuffers {
        SmallBuffers(self.0.transport())
    }
}

/// Frame `i` of a transfer: its number, then bytes that depend on it.
fn frame(i: usize) -> Vec<u8> {
    let mut f = (i as u64).to_be_bytes().to_vec();
    f.extend((8..FRAME).map(|k| (k * 31 + i * 7 + k / 1000) as u8));
    f
}

#[test]
fn drain_writes_everything_queued_to_a_peer_that_reads_after_shutdown() {
    let _serial = serial();
    const FRAMES: usize = 32; // 2 MiB
    let handler = Arc::new(Recorder::new(codec(), |_, _| {}));
    let server = TestServer::start(
        Config {
            outbound_policy: OutboundPolicy::Reject,
            max_outbound: 8 * MIB,
            drain_timeout: Duration::from_secs(10),
            ..config(2)
        },
        SmallSendBuffer(handler.clone()),
    );
    let tcp = connect_small_window(server.addr);
    let socket = handler.nth_opened(1);
    for i in 0..FRAMES {
        socket
            .send(&frame(i))
            .unwrap_or_else(|e| panic!("frame {i}: {e}"));
    }

    // Shutdown is requested while 2 MiB wait for the peer; the peer starts reading late.
    let requested = Instant::now();
    server.shutdown.shutdown();
    thread::sleep(Duration::from_millis(200)); // the peer is slow to read
    assert!(
        !socket.is_closed(),
        "the drain closed the connection with its output still queued"
    );
    let mut reader = Client::from_stream(tcp, codec());
    reader.set_read_timeout(Some(DEADLINE)).unwrap();
    for i in 0..FRAMES {
        let got = reader
            .recv()
            .unwrap_or_else(|e| panic!("frame {i}: {e}"))
            .unwrap_or_else(|| panic!("frame {i}: end of stream"));
        assert!(got == frame(i), "frame {i} corrupted or out of order");
    }
    assert_eq!(reader.recv().unwrap(), None, "then end of stream");
    let drained_after = requested.elapsed();

    let summary = server.stop().unwrap();
    assert_eq!(handler.removal_of(socket.id()), "shutdown");
    assert_eq!(
        (summary.accepted, summary.drained, summary.abandoned),
        (1, 1, 0),
        "{summary:?}"
    );
    eprintln!("drain: 2 MiB delivered {drained_after:?} after the shutdown request; {summary:?}");
}

#[test]
fn drain_gives_up_on_a_peer_that_never_reads() {
    let _serial = serial();
    const DRAIN: Duration = Duration::from_millis(300);
    let handler = Arc::new(Recorder::new(codec(), |_, _| {}));
    let server = TestServer::start(
        Config {
            outbound_policy: OutboundPolicy::Reject,
            max_outbound: 8 * MIB,
            drain_timeout: DRAIN,
            ..config(2)
        },
        SmallSendBuffer(handler.clone()),
    );
    let _silent = connect_small_window(server.addr); // never reads
    let socket = handler.nth_opened(1);
    // Fill the queue to the brim.
    let mut accepted = 0;
    loop {
        match socket.send(&frame(accepted)) {
            Ok(()) => accepted += 1,
            Err(SendError::QueueFull) => break,
            Err(e) => panic!("frame {accepted}: {e}"),
        }
        assert!(accepted < 1024, "64 MiB accepted without QueueFull");
    }

    let (tx, rx) = bounded(1);
    let start = Instant::now();
    thread::spawn(move || {
        let _ = tx.send(server.stop());
    });
    let summary = rx
        .recv_timeout(DEADLINE)
        .expect("run returned within the deadline")
        .unwrap();
    let took = start.elapsed();
    assert_eq!(handler.removal_of(socket.id()), "shutdown_unflushed");
    assert_eq!((summary.drained, summary.abandoned), (0, 1), "{summary:?}");
    assert!(
        took >= DRAIN - Duration::from_millis(50),
        "run returned after {took:?}, before the {DRAIN:?} drain timeout"
    );
    eprintln!(
        "abandon: {accepted} frames accepted before QueueFull, run returned {took:?} after stop"
    );
}

/// What one sender saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    closed: u64,
    ok_after_closed: u64,
    ok_after_stop: u64,
    sends_after_stop: u64,
    other: Vec<String>,
}

#[test]
fn shutdown_with_sends_in_flight_neither_panics_nor_deadlocks() {
    let _serial = serial();
    const CONNS: usize = 4;
    let handler = Arc::new(Recorder::new(codec(), |_, _| {}));
    let server = TestServer::start(
        Config {
            // Room enough that a reader falling behind on a busy machine is not cut off as a
            // slow consumer before the shutdown.
            max_outbound: 64 * MIB,
            drain_timeout: Duration::from_secs(2),
            ..config(2)
        },
        handler.clone(),
    );

    // Four clients that read everything, checking the sequence numbers, until the end.
    let mut readers = Vec::new();
    for k in 0..CONNS {
        let mut c = Client::connect(server.addr, codec()).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        handler.nth_opened(k + 1);
        readers.push(thread::spawn(move || {
            let mut next = 0u64;
            loop {
                match c.recv() {
                    Ok(Some(f)) => {
                        assert_eq!(f, next.to_be_bytes(), "conn {k}: frame {next} out of order");
                        next += 1;
                    }
                    Ok(None) => return Ok(next),
                    Err(e) => return Err(format!("conn {k} after {next} frames: {e}")),
                }
            }
        }));
    }
    let sockets: Vec<_> = handler.opened.lock().clone();
    assert_eq!(sockets.len(), CONNS);

    let stopped = Arc::new(AtomicBool::new(false));
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..CONNS).map(|_| AtomicU64::new(0)).collect());
    let go = Arc::new(Barrier::new(CONNS + 1));
    let (results_tx, results_rx) = unbounded();
    for (k, socket) in sockets.iter().enumerate() {
        let socket = socket.clone();
        let (stopped, sent, go, results_tx) = (
            stopped.clone(),
            sent.clone(),
            go.clone(),
            results_tx.clone(),
        );
        thread::spawn(move || {
            go.wait();
            let mut t = Tally::default();
            let start = Instant::now();
            // Send until the server has stopped, then 100 more (all must fail), within bounds.
            while t.sends_after_stop < 100 && start.elapsed() < DEADLINE * 2 {
                let after_stop = stopped.load(Ordering::Acquire);
                match socket.send(&t.ok.to_be_bytes()) {
                    Ok(()) => {
                        t.ok += 1;
                        sent[k].store(t.ok, Ordering::Relaxed);
                        if t.closed > 0 {
                            t.ok_after_closed += 1;
                        }
                        if after_stop {
                            t.ok_after_stop += 1;
                        }
                    }
                    Err(SendError::Closed) => t.closed += 1,
                    Err(e) => t.other.push(e.to_string()),
                }
                if after_stop {
                    t.sends_after_stop += 1;
                }
            }
            let _ = results_tx.send((k, t));
        });
    }
    drop(results_tx);
    go.wait();

    // Shut down in the middle of it, once every sender is well under way.
    wait_until("every sender to have sent 2000 frames", || {
        sent.iter().all(|n| n.load(Ordering::Relaxed) >= 2000)
    });
    let at_shutdown: Vec<u64> = sent.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    let (stop_tx, stop_rx) = bounded(1);
    let stopping = thread::spawn(move || {
        let _ = stop_tx.send(server.stop());
    });
    let summary = stop_rx
        .recv_timeout(DEADLINE)
        .expect("run returned (no deadlock)")
        .expect("run succeeded");
    stopped.store(true, Ordering::Release);
    stopping.join().unwrap();

    let mut tallies = Vec::new();
    loop {
        match results_rx.recv_timeout(DEADLINE) {
            Ok(r) => tallies.push(r),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("a sender is stuck (deadlock?)"),
        }
    }
    assert_eq!(tallies.len(), CONNS, "a sender panicked: {tallies:?}");
    tallies.sort_by_key(|(k, _)| *k);
    for (k, t) in &tallies {
        assert!(
            t.other.is_empty(),
            "conn {k}: errors other than Closed: {t:?}"
        );
        assert_eq!(t.ok_after_closed, 0, "conn {k}: Ok after Closed: {t:?}");
        assert_eq!(t.ok_after_stop, 0, "conn {k}: Ok after run returned: {t:?}");
        assert_eq!(t.sends_after_stop, 100, "conn {k}: {t:?}");
        assert!(t.closed >= 100, "conn {k}: {t:?}");
        assert!(sockets[*k].is_closed());
        assert!(matches!(sockets[*k].send(b"late"), Err(SendError::Closed)));
    }
    // Each reader got, in order, every frame that was accepted (all of them when the drain
    // flushed the connection), then end of stream.
    for (k, reader) in readers.into_iter().enumerate() {
        let received = reader.join().unwrap().unwrap();
        let accepted = tallies[k].1.ok;
        let reason = handler.removal_of(sockets[k].id());
        match reason {
            "shutdown" => assert_eq!(received, accepted, "conn {k}: flushed, yet frames lost"),
            "shutdown_unflushed" => assert!(received <= accepted, "conn {k}"),
            other => panic!("conn {k} removed as {other}"),
        }
    }
    assert_eq!(
        summary.drained + summary.abandoned,
        CONNS as u64,
        "{summary:?}"
    );
    eprintln!(
        "in-flight: at shutdown {at_shutdown:?} frames sent; totals {:?}; {summary:?}",
        tallies
            .iter()
            .map(|(_, t)| (t.ok, t.closed))
            .collect::<Vec<_>>()
    );
}

/// The peer speaks during the drain (a pipelining client, say), so the server holds input it
/// will not read when it closes. The drain must still deliver everything it reports as
/// flushed, then end the stream.
#[test]
fn drain_delivers_everything_to_a_peer_that_sends_during_it() {
    let _serial = serial();
    const FRAMES: usize = 32; // 2 MiB
    let handler = Arc::new(Recorder::new(codec(), |_, _| {}));
    let server = TestServer::start(
        Config {
            outbound_policy: OutboundPolicy::Reject,
            max_outbound: 8 * MIB,
            drain_timeout: Duration::from_secs(10),
            ..config(2)
        },
        SmallSendBuffer(handler.clone()),
    );
    // An idle connection: the drain closes it at once, which shows the drain has begun.
    let _probe = TcpStream::connect(server.addr).unwrap();
    let probe = handler.nth_opened(1);
    let tcp = connect_small_window(server.addr);
    let socket = handler.nth_opened(2);
    for i in 0..FRAMES {
        socket
            .send(&frame(i))
            .unwrap_or_else(|e| panic!("frame {i}: {e}"));
    }
    server.shutdown.shutdown();
    assert_eq!(handler.removal_of(probe.id()), "shutdown");
    assert!(
        !socket.is_closed(),
        "the drain closed the connection with its output still queued"
    );

    // The peer sends a frame the draining server will not read, then reads everything: at
    // full speed at first, slowly for the last 128 KiB.
    let mut tcp = tcp;
    tcp.write_all(&[0, 0, 0, 3, b'm', b'o', b'r', b'e'][..])
        .unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut expected = Vec::new();
    for i in 0..FRAMES {
        codec().encode(&frame(i), &mut expected).unwrap();
    }
    let mut received = Vec::with_capacity(expected.len());
    let mut buf = vec![0u8; 64 * KIB];
    let outcome = loop {
        let slow = received.len() + 128 * KIB >= expected.len();
        let want = if slow { KIB } else { buf.len() };
        match tcp.read(&mut buf[..want]) {
            Ok(0) => break Ok(()),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
        if slow {
            thread::sleep(Duration::from_millis(1)); // a slow reader
        }
        assert!(
            received.len() <= expected.len(),
            "more bytes than were sent"
        );
    };
    drop(tcp); // a server that lingers for the peer's end of stream gets it now
    let summary = server.stop().unwrap();
    let reason = handler.removal_of(socket.id());
    assert!(
        received == expected && outcome.is_ok(),
        "the peer got {} of {} bytes ({}), then {outcome:?} instead of end of stream, while \
         the server reported the connection as {reason} ({summary:?})",
        received.len(),
        expected.len(),
        if expected.starts_with(&received) {
            "a prefix"
        } else {
            "corrupted"
        }
    );
    assert_eq!(reason, "shutdown");
    assert_eq!((summary.drained, summary.abandoned), (2, 0), "{summary:?}");
}

/// `drain_timeout: Duration::MAX` ("as long as it takes") overflowed the deadline: release
/// builds gave up at the first drain tick (100 ms) and debug builds panicked. The peer here
/// starts reading well after that tick, and must still get everything.
#[test]
fn drain_timeout_max_overflowed_the_deadline() {
    let _serial = serial();
    const FRAMES: usize = 16; // 1 MiB
    let handler = Arc::new(Recorder::new(codec(), |_, _| {}));
    let server = TestServer::start(
        Config {
            outbound_policy: OutboundPolicy::Reject,
            max_outbound: 8 * MIB,
            drain_timeout: Duration::MAX,
            ..config(2)
        },
        SmallSendBuffer(handler.clone()),
    );
    let tcp = connect_small_window(server.addr);
    let socket = handler.nth_opened(1);
    for i in 0..FRAMES {
        socket
            .send(&frame(i))
            .unwrap_or_else(|e| panic!("frame {i}: {e}"));
    }
    server.shutdown.shutdown();
    // Not a synchronisation: time must pass, several drain ticks, for a wrapped deadline to
    // show. A correct server keeps waiting for the peer.
    thread::sleep(Duration::from_millis(350));
    assert!(
        !socket.is_closed(),
        "the drain gave up although its timeout is Duration::MAX"
    );
    let mut reader = Client::from_stream(tcp, codec());
    reader.set_read_timeout(Some(DEADLINE)).unwrap();
    for i in 0..FRAMES {
        let got = reader
            .recv()
            .unwrap_or_else(|e| panic!("frame {i}: {e}"))
            .unwrap_or_else(|| panic!("frame {i}: end of stream"));
        assert!(got == frame(i), "frame {i} corrupted or out of order");
    }
    assert_eq!(reader.recv().unwrap(), None, "then end of stream");
    let summary = server.stop().unwrap();
    assert_eq!(handler.removal_of(socket.id()), "shutdown");
    assert_eq!((summary.drained, summary.abandoned), (1, 0), "{summary:?}");
}
