//! A peer that does not read: under the default policy it is disconnected once its outbound
//! queue would pass `max_outbound`; under `OutboundPolicy::Reject` sends fail with `QueueFull`
//! and the connection stays open. Memory stays bounded either way, and a peer that pauses and
//! then reads gets every byte, in order.
//!
//! The tests measure the whole process (RSS), so they run one at a time.

mod common;

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use hydrogen::client::Client;
use hydrogen::{Config, LengthPrefixed, OutboundPolicy, SendError};

use common::{DEADLINE, Recorder, RssProbe, TestServer, config, serial};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
const FRAME: usize = 64 * KIB;

fn codec() -> LengthPrefixed {
    LengthPrefixed::new(MIB)
}

/// The third field of a `/proc/sys/net/ipv4/tcp_[rw]mem` file: the most the kernel lets a
/// socket buffer grow to.
fn tcp_mem_max(which: &str) -> usize {
    let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{which}")).unwrap();
    text.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn a_peer_that_never_reads_is_disconnected_as_a_slow_consumer() {
    let _serial = serial();
    let handler = Arc::new(Recorder::new(codec(), |_, _| {}));
    let server = TestServer::start(config(2), handler.clone()); // Disconnect, 4 MiB
    let max_outbound = Config::default().max_outbound;
    let _silent = TcpStream::connect(server.addr).unwrap(); // never reads
    let socket = handler.nth_opened(1);
    let memory = RssProbe::start();

    let (tx, rx) = bounded(1);
    let sender_socket = socket.clone();
    thread::spawn(move || {
        let frame = vec![0xA5u8; FRAME];
        let (mut accepted, mut attempted) = (0usize, 0usize);
        let mut error = None;
        while attempted < GIB {
            attempted += FRAME;
            match sender_socket.send(&frame) {
                Ok(()) => accepted += FRAME,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let _ = tx.send((accepted, attempted, error));
    });
    let (accepted, attempted, error) = rx
        .recv_timeout(DEADLINE)
        .expect("the sender finished (deadlock?)");

    assert!(
        matches!(error, Some(SendError::Closed)),
        "the send failed with {error:?} after {} KiB accepted",
        accepted / KIB
    );
    let kernel = tcp_mem_max("tcp_wmem") + tcp_mem_max("tcp_rmem");
    assert!(
        accepted <= max_outbound + kernel + FRAME,
        "{} KiB accepted before Closed; the budget is {} KiB plus {} KiB of kernel buffers",
        accepted / KIB,
        max_outbound / KIB,
        kernel / KIB
    );
    assert!(
        attempted < 64 * MIB,
        "the sender attempted {} MiB",
        attempted / MIB
    );
    assert_eq!(handler.removal_of(socket.id()), "slow_consumer");
    assert!(socket.is_closed());
    assert!(matches!(socket.send(b"more"), Err(SendError::Closed)));
    let memory = memory.assert_growth_below(64 * MIB as u64, "slow consumer, disconnect");
    eprintln!(
        "disconnect: {} KiB accepted, {} KiB attempted; {memory}",
        accepted / KIB,
        attempted / KIB,
    );
    server.stop().unwrap();
}

/// Frame `n` of a sequence: its number, then the filler.
fn numbered(buf: &mut [u8], n: u64) {
    buf[..8].copy_from_slice(&n.to_be_bytes());
}

#[test]
fn with_the_reject_policy_sends_fail_with_queue_full_and_the_connection_stays() {
    let _serial = serial();
    let handler = Arc::new(Recorder::echo(codec()));
    let server = TestServer::start(
        Config {
            outbound_policy: OutboundPolicy::Reject,
            ..config(2)
        },
        handler.clone(),
    );
    let silent = TcpStream::connect(server.addr).unwrap(); // does not read, for now
    let socket = handler.nth_opened(1);
    let mut other = Client::connect(server.addr, codec()).unwrap();
    other.set_read_timeout(Some(DEADLINE)).unwrap();
    let memory = RssProbe::start();

    let sending = Arc::new(AtomicBool::new(true));
    let (full_tx, full_rx) = bounded(1);
    let (done_tx, done_rx) = bounded(1);
    let sender_socket = socket.clone();
    let sender_flag = sending.clone();
    thread::spawn(move || {
        let mut frame = vec![0x5Au8; FRAME];
        let start = Instant::now();
        let (mut accepted, mut attempted, mut full) = (0u64, 0usize, 0u64);
        let mut error = None;
        while attempted < GIB && start.elapsed() < Duration::from_secs(10) {
            attempted += FRAME;
            numbered(&mut frame, accepted);
            match sender_socket.send(&frame) {
                Ok(()) => accepted += 1,
                Err(SendError::QueueFull) => {
                    full += 1;
                    if full == 1 {
                        let _ = full_tx.send(());
                    }
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        sender_flag.store(false, Ordering::Release);
        let _ = done_tx.send((accepted, attempted, full, error, start.elapsed()));
    });

    // Once the queue is full, the other connection is served as usual, during the flood of
    // rejected sends.
    full_rx
        .recv_timeout(DEADLINE)
        .expect("a QueueFull within the deadline");
    let mut echoes_during = 0u32;
    let mut worst = Duration::ZERO;
    for i in 0..100_000u32 {
        let still_sending = sending.load(Ordering::Acquire);
        let t = Instant::now();
        other.send(&i.to_be_bytes()).unwrap();
        assert_eq!(other.recv().unwrap().expect("echo"), i.to_be_bytes());
        worst = worst.max(t.elapsed());
        if !still_sending {
            break;
        }
        echoes_during += 1;
    }
    let (accepted, attempted, full, error, took) =
        done_rx.recv_timeout(DEADLINE).expect("the sender finished");

    assert!(
        error.is_none(),
        "a send failed with {error:?} after {accepted} frames accepted"
    );
    assert!(full > 0, "no QueueFull in {} MiB of sends", attempted / MIB);
    assert!(!socket.is_closed(), "the rejecting connection was closed");
    assert!(
        handler.removed.lock().is_empty(),
        "a connection was removed"
    );
    assert!(
        echoes_during > 0,
        "no echo completed while the sender ran ({took:?})"
    );
    let memory = memory.assert_growth_below(64 * MIB as u64, "slow consumer, reject");
    eprintln!(
        "reject: {accepted} frames accepted, {full} QueueFull, {} MiB attempted in {took:?}; \
         {echoes_during} echoes meanwhile (worst {worst:?}); {memory}",
        attempted / MIB,
    );

    // No hole: the peer, reading now, gets exactly the accepted frames in order, and the
    // connection takes new ones.
    let mut reader = Client::from_stream(silent, codec());
    reader.set_read_timeout(Some(DEADLINE)).unwrap();
    for n in 0..accepted {
        let frame = reader.recv().unwrap().expect("frame");
        assert_eq!(frame.len(), FRAME);
        assert_eq!(
            frame[..8],
            n.to_be_bytes(),
            "frame {n} missing or reordered"
        );
    }
    socket.send(b"after").unwrap();
    assert_eq!(reader.recv().unwrap().expect("frame"), b"after");
    server.stop().unwrap();
}

/// A deterministic pattern: frame `i` is its number, then a window into pseudo-random bytes
/// that starts at an offset depending on `i`.
struct Pattern(Vec<u8>);

impl Pattern {
    fn new() -> Pattern {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let noise = (0..FRAME + 256)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        Pattern(noise)
    }

    fn body(&self, i: u64) -> &[u8] {
        let offset = (i as usize * 37) % 256;
        &self.0[offset..offset + FRAME - 8]
    }

    fn fill(&self, buf: &mut Vec<u8>, i: u64) {
        buf.clear();
        buf.extend_from_slice(&i.to_be_bytes());
        buf.extend_from_slice(self.body(i));
    }
}

#[test]
fn a_peer_that_pauses_then_reads_gets_every_byte_in_order() {
    let _serial = serial();
    const TOTAL: usize = 256 * MIB;
    const FRAMES: u64 = (TOTAL / FRAME) as u64;
    const PAUSE_UNTIL: usize = 8 * MIB;
    let handler = Arc::new(Recorder::new(codec(), |_, _| {}));
    let server = TestServer::start(
        Config {
            outbound_policy: OutboundPolicy::Reject,
            ..config(2)
        },
        handler.clone(),
    );
    let paused = TcpStream::connect(server.addr).unwrap();
    let socket = handler.nth_opened(1);
    let pattern = Arc::new(Pattern::new());
    let memory = RssProbe::start();

    let (queued_tx, queued_rx) = bounded(1);
    let (done_tx, done_rx) = bounded(1);
    let sender_pattern = pattern.clone();
    let sender_socket = socket.clone();
    thread::spawn(move || {
        let start = Instant::now();
        let mut frame = Vec::with_capacity(FRAME);
        let (mut accepted, mut full) = (0usize, 0u64);
        let mut result = Ok(());
        let mut told = false;
        'frames: for i in 0..FRAMES {
            sender_pattern.fill(&mut frame, i);
            loop {
                match sender_socket.send(&frame) {
                    Ok(()) => break,
                    Err(SendError::QueueFull) => {
                        full += 1;
                        if !told {
                            // The pause filled the queue before the target: read now.
                            told = true;
                            let _ = queued_tx.send((accepted, full));
                        }
                        if start.elapsed() > Duration::from_secs(60) {
                            result = Err(format!("gave up at frame {i} after {full} QueueFull"));
                            break 'frames;
                        }
                        thread::sleep(Duration::from_millis(1)); // retry later
                    }
                    Err(e) => {
                        result = Err(format!("frame {i}: {e}"));
                        break 'frames;
                    }
                }
            }
            accepted += FRAME;
            if !told && accepted >= PAUSE_UNTIL {
                told = true;
                let _ = queued_tx.send((accepted, full));
            }
        }
        let _ = done_tx.send((result, full, start.elapsed()));
    });

    // The client pauses until about 8 MiB are queued for it, then reads it all.
    let (queued_at_resume, full_at_resume) = queued_rx
        .recv_timeout(DEADLINE)
        .expect("the sender queued 8 MiB or filled the queue");
    let mut reader = Client::from_stream(paused, codec());
    reader.set_read_timeout(Some(DEADLINE)).unwrap();
    let start = Instant::now();
    for i in 0..FRAMES {
        let frame = reader
            .recv()
            .unwrap_or_else(|e| panic!("frame {i}: {e}"))
            .unwrap_or_else(|| panic!("frame {i}: end of stream"));
        assert_eq!(frame.len(), FRAME, "frame {i} has the wrong length");
        assert_eq!(
            frame[..8],
            i.to_be_bytes(),
            "frame {i} missing or reordered"
        );
        assert!(frame[8..] == *pattern.body(i), "frame {i} corrupted");
    }
    let read_for = start.elapsed();
    let (result, full, sent_for) = done_rx.recv_timeout(DEADLINE).expect("the sender finished");
    result.unwrap();
    let memory = memory.assert_growth_below(64 * MIB as u64, "pause then drain");
    eprintln!(
        "pause then drain: resumed with {} KiB queued ({full_at_resume} QueueFull by then); \
         256 MiB sent in {sent_for:?} with {full} QueueFull retries, read in {read_for:?}; \
         {memory}",
        queued_at_resume / KIB
    );
    assert!(!socket.is_closed());
    assert!(handler.removed.lock().is_empty());
    server.stop().unwrap();
}
