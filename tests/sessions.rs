//! Sessions: each connection's own state, made as it opens, handed to its callbacks with no
//! lock, given back at its removal and dropped after it.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hydrogen::client::Client;
use hydrogen::{CloseReason, Handler, SimpleFrame, Socket};
use parking_lot::Mutex;

use common::{DEADLINE, TestServer, config, wait_until};

/// Dropped sessions, and the events in order, across the test's connections.
static DROPPED: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Tally {
    peer: Option<SocketAddr>,
    frames: u64,
    bytes: usize,
}

impl Drop for Tally {
    fn drop(&mut self) {
        if self.peer.is_some() {
            DROPPED.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[derive(Default)]
struct Counting {
    /// (peer, frames, bytes, sessions dropped before this removal)
    removed: Mutex<Vec<(SocketAddr, u64, usize, usize)>>,
}

impl Handler for Counting {
    type Session = Tally;

    fn on_connection_opened(&self, tally: &mut Tally, socket: &Socket) {
        assert_eq!(tally.frames, 0, "a fresh session");
        tally.peer = socket.peer_addr().tcp();
    }

    fn on_frame(&self, tally: &mut Tally, socket: &Socket, frame: &[u8]) {
        tally.frames += 1;
        tally.bytes += frame.len();
        let _ = socket.send(tally.frames.to_string().as_bytes());
    }

    fn on_connection_removed(&self, tally: Tally, _: &Socket, _: &CloseReason) {
        let dropped = DROPPED.load(Ordering::Acquire);
        self.removed.lock().push((
            tally.peer.expect("set when opened"),
            tally.frames,
            tally.bytes,
            dropped,
        ));
        // `tally` is dropped here, after the callback's work.
    }
}

#[test]
fn each_connection_has_its_own_session_until_removed() {
    let handler = Arc::new(Counting::default());
    let server = TestServer::start_with(config(2), SimpleFrame, handler.clone());
    let mut clients: Vec<_> = (0..3)
        .map(|_| {
            let c = Client::connect(server.addr, SimpleFrame).unwrap();
            c.set_read_timeout(Some(DEADLINE)).unwrap();
            c
        })
        .collect();
    // Interleaved: client i sends i + 1 frames per round, for three rounds.
    for round in 1..=3u64 {
        for (i, client) in clients.iter_mut().enumerate() {
            for k in 1..=(i as u64 + 1) {
                client.send(b"abc").unwrap();
                let count = (i as u64 + 1) * (round - 1) + k;
                assert_eq!(
                    client.recv().unwrap().unwrap(),
                    count.to_string().as_bytes(),
                    "client {i}: its own count"
                );
            }
        }
    }
    let peers: Vec<SocketAddr> = clients
        .iter()
        .map(|c| c.get_ref().local_addr().unwrap())
        .collect();
    drop(clients);
    wait_until("every removal", || handler.removed.lock().len() == 3);
    wait_until("every session dropped", || {
        DROPPED.load(Ordering::Acquire) == 3
    });
    let removed = handler.removed.lock();
    for (i, peer) in peers.iter().enumerate() {
        let &(_, frames, bytes, _) = removed
            .iter()
            .find(|r| r.0 == *peer)
            .expect("each client's removal");
        assert_eq!(frames, 3 * (i as u64 + 1));
        assert_eq!(bytes, 3 * frames as usize);
    }
    assert!(
        removed.iter().all(|r| r.3 < 3),
        "no session is dropped before its own removal"
    );
    drop(removed);
    server.stop().unwrap();
}
