//! Fairness: one connection flooding the server with small frames does not starve 63 others
//! that ping-pong one frame at a time.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::TestHandler;
use hydrogen::client::Client;
use hydrogen::{
    Accepted, CloseReason, Codec, Config, Handler, LengthPrefixed, LengthPrefixedStream, Socket,
    Transport,
};
use parking_lot::Mutex;

use common::{DEADLINE, TestServer, config, reason_kind, wait_until};

const PING_PONGERS: usize = 63;
const FLOOD_FOR: Duration = Duration::from_secs(3);

/// Echoes everything and notes who came and went (not every frame: the flood brings millions,
/// and a shared lock per frame would measure the test, not the server).
#[derive(Default)]
struct Echo {
    opened: Mutex<Vec<(u64, SocketAddr)>>,
    removed: Mutex<Vec<(u64, &'static str)>>,
}

impl Handler for Echo {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        self.opened
            .lock()
            .push((socket.id(), socket.peer_addr().tcp().unwrap()));
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        let _ = socket.send(frame);
    }

    fn on_connection_removed(&self, _: (), socket: &Socket, reason: &CloseReason) {
        self.removed.lock().push((socket.id(), reason_kind(reason)));
    }
}

impl Transport for Echo {
    type Stream = LengthPrefixedStream;

    fn open(&self, conn: Accepted) -> io::Result<LengthPrefixedStream> {
        let tcp = conn.into_tcp()?;
        tcp.set_nodelay(true)?;
        Ok(LengthPrefixedStream::new(tcp, LengthPrefixed::new(1024)))
    }
}

impl TestHandler for Arc<Echo> {
    type Transport = Arc<Echo>;

    fn transport(&self) -> Arc<Echo> {
        self.clone()
    }
}

#[test]
fn a_flooding_connection_does_not_starve_63_ping_pongers() {
    let codec = LengthPrefixed::new(1024);
    let handler = Arc::new(Echo::default());
    let server = TestServer::start(
        Config {
            // The flood's echoes pile up if its drainer is descheduled for a while: room enough
            // that the flooder is never cut off as a slow consumer, which would end the test's
            // premise early (checked below).
            max_outbound: 256 << 20,
            ..config(2)
        },
        handler.clone(),
    );
    let addr = server.addr;
    let flooding = Arc::new(AtomicBool::new(true));
    let go = Arc::new(Barrier::new(PING_PONGERS + 2));

    // The flooder: 32 KiB batches of 16-byte frames, as fast as the socket takes them.
    let flood_tcp = TcpStream::connect(addr).unwrap();
    let flood_addr = flood_tcp.local_addr().unwrap();
    flood_tcp.set_nodelay(true).unwrap();
    let mut drain_tcp = flood_tcp.try_clone().unwrap();
    drain_tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let flooder = {
        let (flooding, go) = (flooding.clone(), go.clone());
        thread::spawn(move || {
            let mut batch = Vec::with_capacity(32 * 1024);
            let mut codec = codec;
            while batch.len() + 20 <= 32 * 1024 {
                codec.encode(&[0x42; 16], &mut batch).unwrap();
            }
            let mut tcp = flood_tcp;
            let mut sent = 0u64;
            go.wait();
            let start = Instant::now();
            while start.elapsed() < FLOOD_FOR {
                tcp.write_all(&batch).expect("flood write");
                sent += batch.len() as u64;
            }
            flooding.store(false, Ordering::Release);
            (tcp, sent)
        })
    };
    // Its drainer reads whatever comes back, without decoding.
    let drainer = {
        let flooding = flooding.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut received = 0u64;
            let mut received_during = 0u64;
            loop {
                match drain_tcp.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        received += n as u64;
                        if flooding.load(Ordering::Acquire) {
                            received_during = received;
                        }
                    }
                    Err(e) => panic!("flood drain: {e} after {received} bytes"),
                }
            }
            (received, received_during)
        })
    };

    // The ping-pongers: one frame out, its echo back, measured, while the flood lasts.
    let pongers: Vec<_> = (0..PING_PONGERS)
        .map(|k| {
            let (flooding, go) = (flooding.clone(), go.clone());
            let mut c = Client::connect(addr, codec).unwrap();
            c.set_read_timeout(Some(DEADLINE)).unwrap();
            thread::spawn(move || {
                let mut rtts = Vec::new();
                go.wait();
                let mut n = 0u32;
                while flooding.load(Ordering::Acquire) {
                    let payload = [&(k as u32).to_be_bytes()[..], &n.to_be_bytes()[..]].concat();
                    let t = Instant::now();
                    c.send(&payload).unwrap();
                    let reply = c
                        .recv()
                        .unwrap_or_else(|e| panic!("ponger {k}, frame {n}: {e}"))
                        .unwrap_or_else(|| panic!("ponger {k}, frame {n}: closed"));
                    rtts.push(t.elapsed());
                    assert_eq!(reply, payload, "ponger {k}, frame {n}");
                    n += 1;
                }
                rtts
            })
        })
        .collect();
    go.wait();

    let per_ponger: Vec<Vec<Duration>> = pongers.into_iter().map(|p| p.join().unwrap()).collect();
    let (flood_tcp, flood_sent) = flooder.join().unwrap();
    // Stop the flood connection and collect what its drainer saw.
    flood_tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let (flood_received, flood_received_during) = drainer.join().unwrap();

    let mut all: Vec<Duration> = per_ponger.iter().flatten().copied().collect();
    all.sort_unstable();
    let max = *all.last().expect("round trips");
    let p99 = all[(all.len() * 99 / 100).min(all.len() - 1)];
    let p50 = all[all.len() / 2];
    let fewest = per_ponger.iter().map(Vec::len).min().unwrap();
    let figures = format!(
        "{} round trips by {PING_PONGERS} ping-pongers: p50 {p50:?}, p99 {p99:?}, max {max:?}, \
         fewest per ponger {fewest}; flood sent {} KiB, {} KiB echoed during the flood, {} KiB \
         in all",
        all.len(),
        flood_sent / 1024,
        flood_received_during / 1024,
        flood_received / 1024,
    );
    eprintln!("fairness: {figures}");
    assert!(max < Duration::from_secs(1), "max round trip: {figures}");
    assert!(
        p99 < Duration::from_millis(250),
        "p99 round trip: {figures}"
    );
    assert!(fewest >= 20, "a ping-ponger was starved: {figures}");
    // The premise: the flood ran, and was served, the whole time.
    assert_eq!(
        flood_received, flood_sent,
        "every flood frame echoed: {figures}"
    );
    assert!(flood_received_during > 0, "{figures}");
    let flood_id = handler
        .opened
        .lock()
        .iter()
        .find(|(_, peer)| *peer == flood_addr)
        .expect("the flood connection was opened")
        .0;
    wait_until("the flood connection's removal", || {
        handler.removed.lock().iter().any(|(id, _)| *id == flood_id)
    });
    let reasons = handler.removed.lock().clone();
    assert!(
        reasons.iter().all(|(_, kind)| *kind == "peer_closed"),
        "every connection (the flooder included) closed by its peer: {reasons:?}"
    );
    server.stop().unwrap();
}
