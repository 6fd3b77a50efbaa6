//! The blocking pool: frames a handler offloads run off the I/O workers, each connection's in
//! order with its inline frames; work in flight holds a half-closed connection and the drain.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use hydrogen::{CloseReason, Config, Handler, LengthPrefixed, Socket};
use parking_lot::Mutex;

use common::{DEADLINE, TestServer, length_config, reason_kind, wait_until};

/// A frame: a kind byte (`B`: blocking, offloaded; anything else: inline), then a u64 sequence
/// number, big-endian.
fn frame(kind: u8, seq: u64) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&seq.to_be_bytes());
    f
}

fn seq_of(frame: &[u8]) -> u64 {
    u64::from_be_bytes(frame[1..9].try_into().expect("a sequence number"))
}

/// Per connection: the next sequence number expected, and how often another one came.
#[derive(Default)]
struct Seen {
    next: u64,
    out_of_order: u64,
}

/// Offloads `B` frames, which sleep `work` on the pool; echoes every frame.
struct Work {
    work: Duration,
    /// `offload` calls: each is made on the I/O worker just before a frame goes to the pool.
    asked: AtomicU64,
    /// `B` frames that ran on a pool thread (by its name), and that started.
    on_pool: AtomicU64,
    started: AtomicU64,
    /// (connection, reason kind, frames seen, out of order).
    removed: Mutex<Vec<(u64, &'static str, u64, u64)>>,
}

impl Work {
    fn new(work: Duration) -> Arc<Work> {
        Arc::new(Work {
            work,
            asked: AtomicU64::new(0),
            on_pool: AtomicU64::new(0),
            started: AtomicU64::new(0),
            removed: Mutex::new(Vec::new()),
        })
    }

    #[track_caller]
    fn removal(&self) -> (u64, &'static str, u64, u64) {
        wait_until("the connection to be removed", || {
            !self.removed.lock().is_empty()
        });
        self.removed.lock()[0]
    }
}

impl Handler for Work {
    type Session = Seen;

    fn offload(&self, frame: &[u8]) -> bool {
        self.asked.fetch_add(1, Ordering::AcqRel);
        frame[0] == b'B'
    }

    fn on_frame(&self, seen: &mut Seen, socket: &Socket, frame: &[u8]) {
        if seq_of(frame) != seen.next {
            seen.out_of_order += 1;
        }
        seen.next = seq_of(frame) + 1;
        if frame[0] == b'B' {
            self.started.fetch_add(1, Ordering::AcqRel);
            let name = thread::current().name().unwrap_or("").to_string();
            if name.starts_with("hydrogen-blocking") {
                self.on_pool.fetch_add(1, Ordering::AcqRel);
            }
            thread::sleep(self.work);
        }
        let _ = socket.send(frame);
    }

    fn on_connection_removed(&self, seen: Seen, socket: &Socket, reason: &CloseReason) {
        self.removed.lock().push((
            socket.id(),
            reason_kind(reason),
            seen.next,
            seen.out_of_order,
        ));
    }
}

#[test]
fn offloaded_and_inline_frames_keep_their_order() {
    const CLIENTS: u64 = 4;
    const FRAMES: u64 = 200;
    let handler = Work::new(Duration::from_millis(1));
    let server =
        TestServer::start_with(length_config(2), LengthPrefixed::default(), handler.clone());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut client = server.connect_length();
            thread::spawn(move || {
                // Every frame pipelined at once: inline frames queue behind offloaded ones.
                for seq in 0..FRAMES {
                    let kind = if seq % 10 == 3 { b'B' } else { b'I' };
                    client.feed(&frame(kind, seq)).unwrap();
                }
                client.flush().unwrap();
                for seq in 0..FRAMES {
                    let reply = client.recv().unwrap().expect("a reply");
                    assert_eq!(seq_of(&reply), seq, "replies in order");
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    wait_until("every connection removed", || {
        handler.removed.lock().len() == CLIENTS as usize
    });
    for &(_, kind, seen, out_of_order) in handler.removed.lock().iter() {
        assert_eq!(kind, "peer_closed");
        assert_eq!(
            seen, FRAMES,
            "every frame handled, the session kept throughout"
        );
        assert_eq!(out_of_order, 0);
    }
    assert_eq!(
        handler.on_pool.load(Ordering::Acquire),
        CLIENTS * FRAMES / 10
    );
    server.stop().unwrap();
}

/// Regression: a peer that sent a request and shut its write side got nothing, the
/// connection removed as soon as nothing was queued, with the reply still being computed.
#[test]
fn half_close_with_offloaded_work_gets_its_reply() {
    let handler = Work::new(Duration::from_millis(100));
    let server =
        TestServer::start_with(length_config(2), LengthPrefixed::default(), handler.clone());
    let mut client = server.connect_length();
    client.send(&frame(b'B', 0)).unwrap();
    client.send(&frame(b'I', 1)).unwrap();
    client.shutdown_write().unwrap();
    assert_eq!(
        seq_of(&client.recv().unwrap().expect("the offloaded reply")),
        0
    );
    assert_eq!(
        seq_of(&client.recv().unwrap().expect("the reply after it")),
        1
    );
    assert_eq!(client.recv().unwrap(), None, "then the server closes");
    let (_, kind, seen, out_of_order) = handler.removal();
    assert_eq!((kind, seen, out_of_order), ("peer_closed", 2, 0));
    server.stop().unwrap();
}

/// Regression: a request in flight at `shutdown()` got no reply, yet the summary said it
/// was drained.
#[test]
fn drain_waits_for_work_in_flight() {
    let handler = Work::new(Duration::from_millis(200));
    let server = TestServer::start_with(
        Config {
            drain_timeout: DEADLINE,
            ..length_config(2)
        },
        LengthPrefixed::default(),
        handler.clone(),
    );
    let mut client = server.connect_length();
    client.send(&frame(b'B', 0)).unwrap();
    wait_until("the work to start", || {
        handler.started.load(Ordering::Acquire) == 1
    });
    server.shutdown.shutdown();
    assert_eq!(seq_of(&client.recv().unwrap().expect("the reply")), 0);
    assert_eq!(client.recv().unwrap(), None);
    let summary = server.stop().unwrap();
    assert_eq!((summary.drained, summary.abandoned), (1, 0));
    assert_eq!(handler.removal().1, "shutdown");
}

/// The drain's deadline cuts off work not started: the summary counts the connection as
/// abandoned, and its reason says the drain did not finish.
#[test]
fn drain_timeout_counts_cut_off_work_as_abandoned() {
    let handler = Work::new(Duration::from_millis(300));
    let server = TestServer::start_with(
        Config {
            drain_timeout: Duration::from_millis(50),
            ..length_config(2)
        },
        LengthPrefixed::default(),
        handler.clone(),
    );
    let mut client = server.connect_length();
    client.feed(&frame(b'B', 0)).unwrap();
    client.feed(&frame(b'B', 1)).unwrap();
    client.flush().unwrap();
    wait_until("the work to start", || {
        handler.started.load(Ordering::Acquire) == 1
    });
    let summary = server.stop().unwrap();
    assert_eq!((summary.drained, summary.abandoned), (0, 1));
    let (_, kind, seen, _) = handler.removal();
    assert_eq!(kind, "shutdown_unflushed");
    assert_eq!(seen, 1, "the second frame never ran");
    assert_eq!(
        handler.started.load(Ordering::Acquire),
        1,
        "run returned with no callback left running"
    );
}

/// Regression: a job still waiting for a pool thread when the drain's deadline passed had
/// its frames dropped silently, and its connection was counted as drained.
#[test]
fn drain_timeout_counts_a_job_not_started_as_abandoned() {
    let handler = Work::new(Duration::from_millis(300));
    let server = TestServer::start_with(
        Config {
            blocking_threads: 1,
            drain_timeout: Duration::from_millis(50),
            ..length_config(2)
        },
        LengthPrefixed::default(),
        handler.clone(),
    );
    let mut running = server.connect_length();
    running.send(&frame(b'B', 0)).unwrap();
    wait_until("the first job to start", || {
        handler.started.load(Ordering::Acquire) == 1
    });
    // The only pool thread is busy: this one's job waits in the pool's queue.
    let mut waiting = server.connect_length();
    waiting.send(&frame(b'B', 0)).unwrap();
    wait_until("the second frame to go to the pool", || {
        handler.asked.load(Ordering::Acquire) == 2
    });
    let summary = server.stop().unwrap();
    assert_eq!(
        handler.started.load(Ordering::Acquire),
        1,
        "the second never ran"
    );
    assert_eq!(
        (summary.drained, summary.abandoned),
        (1, 1),
        "the finished one drained, the cut-off one abandoned"
    );
    let removed = handler.removed.lock();
    let never_ran = removed.iter().find(|r| r.2 == 0).expect("its removal");
    assert_eq!(never_ran.1, "shutdown_unflushed");
    drop(removed);
    drop((running, waiting));
}

/// A [`Socket::hold`] taken for work on threads of the application's own holds a half-closed
/// connection the way offloaded work does.
#[test]
fn a_hold_keeps_a_half_closed_connection_until_released() {
    struct Later;
    impl Handler for Later {
        type Session = ();
        fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
            let hold = socket.hold();
            let frame = frame.to_vec();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                let _ = hold.socket().send(&frame);
                drop(hold);
            });
        }
    }
    let server = TestServer::start_with(length_config(2), LengthPrefixed::default(), Later);
    let mut client = server.connect_length();
    client.send(b"later").unwrap();
    client.shutdown_write().unwrap();
    assert_eq!(client.recv().unwrap().as_deref(), Some(&b"later"[..]));
    assert_eq!(client.recv().unwrap(), None);
    let summary = server.stop().unwrap();
    assert_eq!(summary.accepted, 1);
}

/// With no pool, offloaded frames run on the I/O workers, in order.
#[test]
fn no_pool_runs_offloaded_frames_inline() {
    let handler = Work::new(Duration::from_millis(1));
    let server = TestServer::start_with(
        Config {
            blocking_threads: 0,
            ..length_config(2)
        },
        LengthPrefixed::default(),
        handler.clone(),
    );
    let mut client = server.connect_length();
    for seq in 0..10 {
        client.feed(&frame(b'B', seq)).unwrap();
    }
    client.flush().unwrap();
    for seq in 0..10 {
        assert_eq!(seq_of(&client.recv().unwrap().unwrap()), seq);
    }
    assert_eq!(handler.on_pool.load(Ordering::Acquire), 0);
    assert_eq!(handler.started.load(Ordering::Acquire), 10);
    drop(client);
    server.stop().unwrap();
}
