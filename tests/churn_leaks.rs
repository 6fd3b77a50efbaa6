//! Connection churn: 100,000 connect / echo / close cycles leave no descriptor behind, and
//! every connection is accepted, served and removed exactly once. Alone in its binary because
//! it counts the process's open descriptors.

mod common;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use common::TestHandler;
use hydrogen::client::Client;
use hydrogen::{
    Accepted, CloseReason, Handler, LengthPrefixed, LengthPrefixedStream, Socket, Transport,
};
use parking_lot::Mutex;

use common::{
    DEADLINE, TestServer, config, count_open_fds, reason_kind, reset_on_close, wait_until,
};

const THREADS: usize = 4;
const CYCLES_PER_THREAD: usize = 25_000;
const CYCLES: u64 = (THREADS * CYCLES_PER_THREAD) as u64;

/// Echoes, and counts instead of recording (a recorder would keep 100,000 sockets alive).
#[derive(Default)]
struct CountingEcho {
    opened: AtomicU64,
    frames: AtomicU64,
    removed: AtomicU64,
    reasons: Mutex<HashMap<&'static str, u64>>,
}

impl Handler for CountingEcho {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), _: &Socket) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        let _ = socket.send(frame);
    }

    fn on_connection_removed(&self, _: (), _: &Socket, reason: &CloseReason) {
        *self.reasons.lock().entry(reason_kind(reason)).or_default() += 1;
        self.removed.fetch_add(1, Ordering::Release);
    }
}

impl Transport for CountingEcho {
    type Stream = LengthPrefixedStream;

    fn open(&self, conn: Accepted) -> io::Result<LengthPrefixedStream> {
        let tcp = conn.into_tcp()?;
        tcp.set_nodelay(true)?;
        Ok(LengthPrefixedStream::new(tcp, LengthPrefixed::new(1024)))
    }
}

impl TestHandler for Arc<CountingEcho> {
    type Transport = Arc<CountingEcho>;

    fn transport(&self) -> Arc<CountingEcho> {
        self.clone()
    }
}

#[test]
fn a_hundred_thousand_connect_echo_close_cycles_leak_nothing() {
    let handler = Arc::new(CountingEcho::default());
    let server = TestServer::start(config(2), handler.clone());
    let fds_at_start = count_open_fds();
    let addr = server.addr;
    let start = Instant::now();

    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..CYCLES_PER_THREAD {
                    let payload = ((t * CYCLES_PER_THREAD + i) as u64).to_be_bytes();
                    let mut c = Client::connect(addr, LengthPrefixed::new(1024))
                        .unwrap_or_else(|e| panic!("thread {t}, cycle {i}: connect: {e}"));
                    c.set_read_timeout(Some(DEADLINE)).unwrap();
                    c.send(&payload).unwrap();
                    let reply = c
                        .recv()
                        .unwrap_or_else(|e| panic!("thread {t}, cycle {i}: {e}"))
                        .unwrap_or_else(|| panic!("thread {t}, cycle {i}: closed"));
                    assert_eq!(reply, payload, "thread {t}, cycle {i}");
                    // Close with a reset (SO_LINGER 0) rather than a FIN. The side that closes
                    // first keeps its end in TIME_WAIT for 60 s, and on loopback that side's
                    // ephemeral port stays taken meanwhile: 100,000 orderly closes would exhaust
                    // the ~28,000 ports of the default range (32768-60999). A reset leaves no
                    // TIME_WAIT behind on either side.
                    reset_on_close(c.get_ref());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client thread failed");
    }
    let cycles_took = start.elapsed();

    let removal_wait = Instant::now();
    wait_until("every connection to be removed", || {
        handler.removed.load(Ordering::Acquire) == CYCLES
    });
    let removed_after = removal_wait.elapsed();
    // A connection's descriptor is closed before its `on_connection_removed` runs, so the
    // count must be back at once.
    let fds_now = count_open_fds();
    let reasons = handler.reasons.lock().clone();
    assert_eq!(
        fds_now, fds_at_start,
        "open descriptors: {fds_at_start} after the server started, {fds_now} after \
         {CYCLES} cycles"
    );
    assert_eq!(handler.opened.load(Ordering::Relaxed), CYCLES);
    assert_eq!(handler.frames.load(Ordering::Relaxed), CYCLES);
    assert_eq!(
        reasons.get("reset").copied().unwrap_or(0),
        CYCLES,
        "removal reasons: {reasons:?}"
    );

    let summary = server.stop().unwrap();
    assert_eq!(summary.accepted, CYCLES, "{summary:?}");
    assert_eq!(summary.refused, 0, "{summary:?}");
    assert_eq!(
        handler.removed.load(Ordering::Acquire),
        CYCLES,
        "no removal at shutdown"
    );
    eprintln!(
        "churn: {CYCLES} cycles in {cycles_took:?} ({:.0}/s), last removal {removed_after:?} \
         later; fds {fds_at_start} -> {fds_now}; {summary:?}",
        CYCLES as f64 / cycles_took.as_secs_f64()
    );
}
