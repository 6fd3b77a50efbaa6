//! Guarantee 1: per connection, frames reach the handler in order, exactly once, and the
//! callbacks of one connection never overlap, with many connections on many workers.

mod common;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use common::TestHandler;
use hydrogen::client::Client;
use hydrogen::{
    Accepted, CloseReason, Handler, LengthPrefixed, LengthPrefixedStream, Socket, Transport,
};
use parking_lot::Mutex;

use common::{TestServer, config, wait_until};

const CONNECTIONS: usize = 64;
const FRAMES: u64 = 20_000;
/// A frame with this sequence number asks for the count received so far.
const REPORT: u64 = u64::MAX;

#[derive(Default)]
struct Track {
    in_callback: AtomicBool,
    next: AtomicU64,
    overlaps: AtomicU64,
    out_of_order: AtomicU64,
}

#[derive(Default)]
struct Sequencer {
    conns: Mutex<HashMap<u64, Arc<Track>>>,
    removed: AtomicU64,
}

impl Sequencer {
    fn track(&self, socket: &Socket) -> Arc<Track> {
        self.conns.lock().get(&socket.id()).expect("opened").clone()
    }

    /// Marks the connection as inside a callback for the duration of `f`, counting overlaps.
    fn exclusive<T>(&self, track: &Track, f: impl FnOnce() -> T) -> T {
        if track.in_callback.swap(true, Ordering::AcqRel) {
            track.overlaps.fetch_add(1, Ordering::Relaxed);
        }
        let out = f();
        // Widen the window in which an overlap would be seen.
        thread::yield_now();
        track.in_callback.store(false, Ordering::Release);
        out
    }
}

impl Handler for Sequencer {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), socket: &Socket) {
        let track = Arc::new(Track::default());
        self.conns.lock().insert(socket.id(), track.clone());
        self.exclusive(&track, || ());
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        let track = self.track(socket);
        self.exclusive(&track, || {
            let seq = u64::from_be_bytes(frame.try_into().expect("8-byte frame"));
            if seq == REPORT {
                let got = track.next.load(Ordering::Relaxed);
                socket.send(&got.to_be_bytes()).expect("reply");
                return;
            }
            let expected = track.next.fetch_add(1, Ordering::Relaxed);
            if seq != expected {
                track.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    fn on_connection_removed(&self, _: (), socket: &Socket, _: &CloseReason) {
        let track = self.track(socket);
        self.exclusive(&track, || ());
        self.removed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Transport for Sequencer {
    type Stream = LengthPrefixedStream;

    fn open(&self, conn: Accepted) -> io::Result<LengthPrefixedStream> {
        let tcp = conn.into_tcp()?;
        Ok(LengthPrefixedStream::new(tcp, LengthPrefixed::default()))
    }
}

impl TestHandler for Arc<Sequencer> {
    type Transport = Arc<Sequencer>;

    fn transport(&self) -> Arc<Sequencer> {
        self.clone()
    }
}

#[test]
fn frames_arrive_in_order_exactly_once_without_overlap() {
    let handler = Arc::new(Sequencer::default());
    let server = TestServer::start(config(8), handler.clone());
    let addr = server.addr;

    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            thread::spawn(move || {
                let mut client = Client::connect(addr, LengthPrefixed::default()).unwrap();
                // Pipeline in bursts so reads on the server see many frames at once, split at
                // arbitrary points.
                for seq in 0..FRAMES {
                    client.feed(&seq.to_be_bytes()).unwrap();
                    if seq.is_multiple_of(997) {
                        client.flush().unwrap();
                    }
                }
                client.send(&REPORT.to_be_bytes()).unwrap();
                let reply = client.recv().unwrap().expect("count reply");
                u64::from_be_bytes(reply.as_slice().try_into().unwrap())
            })
        })
        .collect();
    for client in clients {
        assert_eq!(
            client.join().unwrap(),
            FRAMES,
            "frames seen before the report"
        );
    }

    wait_until("every connection removed", || {
        handler.removed.load(Ordering::Relaxed) == CONNECTIONS as u64
    });
    let conns = handler.conns.lock();
    assert_eq!(conns.len(), CONNECTIONS);
    for track in conns.values() {
        assert_eq!(track.next.load(Ordering::Relaxed), FRAMES);
        assert_eq!(track.out_of_order.load(Ordering::Relaxed), 0);
        assert_eq!(track.overlaps.load(Ordering::Relaxed), 0);
    }
    drop(conns);
    server.stop().unwrap();
}
