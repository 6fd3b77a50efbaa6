//! A panic in any callback is caught: only that connection is removed (with
//! `CloseReason::Panicked`), the worker keeps running and everyone else is served.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::TestHandler;
use hydrogen::client::Client;
use hydrogen::{Accepted, CloseReason, Handler, SimpleFrame, SimpleStream, Socket, Transport};
use parking_lot::Mutex;

use common::{DEADLINE, TestServer, config, reason_kind, wait_until};

/// Panics where told to, echoes otherwise.
#[derive(Default)]
struct Grenade {
    in_new_connection: AtomicBool,
    in_opened: AtomicBool,
    in_removed: AtomicBool,
    removed: Mutex<Vec<(u64, &'static str)>>,
    removals: AtomicUsize,
}

impl Handler for Grenade {
    type Session = ();

    fn on_connection_opened(&self, _: &mut (), _: &Socket) {
        if self.in_opened.swap(false, Ordering::AcqRel) {
            panic!("boom in on_connection_opened");
        }
    }

    fn on_frame(&self, _: &mut (), socket: &Socket, frame: &[u8]) {
        if frame == b"panic" {
            panic!("boom in on_frame");
        }
        let _ = socket.send(frame);
    }

    fn on_connection_removed(&self, _: (), socket: &Socket, reason: &CloseReason) {
        self.removed.lock().push((socket.id(), reason_kind(reason)));
        self.removals.fetch_add(1, Ordering::AcqRel);
        if self.in_removed.swap(false, Ordering::AcqRel) {
            panic!("boom in on_connection_removed");
        }
    }
}

impl Transport for Grenade {
    type Stream = SimpleStream;

    fn open(&self, conn: Accepted) -> io::Result<SimpleStream> {
        let tcp = conn.into_tcp()?;
        if self.in_new_connection.swap(false, Ordering::AcqRel) {
            panic!("boom in on_new_connection");
        }
        Ok(SimpleStream::new(tcp, SimpleFrame))
    }
}

impl TestHandler for Arc<Grenade> {
    type Transport = Arc<Grenade>;

    fn transport(&self) -> Arc<Grenade> {
        self.clone()
    }
}

/// Connects and checks a round trip works.
#[track_caller]
fn healthy(addr: SocketAddr) -> Client<SimpleFrame> {
    let mut c = Client::connect(addr, SimpleFrame).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.send(b"ping").unwrap();
    assert_eq!(c.recv().unwrap().unwrap(), b"ping");
    c
}

#[test]
fn a_panic_in_any_callback_closes_only_that_connection() {
    let handler = Arc::new(Grenade::default());
    // One worker: if a panic killed it, nothing would be served afterwards.
    let server = TestServer::start(config(1), handler.clone());
    let mut bystander = healthy(server.addr);

    // on_frame
    let mut victim = healthy(server.addr);
    victim.send(b"panic").unwrap();
    assert_eq!(
        victim.recv().unwrap(),
        None,
        "the panicking connection is closed"
    );
    wait_until("the removal", || {
        handler.removed.lock().iter().any(|(_, k)| *k == "panicked")
    });

    // on_new_connection: the connection is refused, no removal callback.
    handler.in_new_connection.store(true, Ordering::Release);
    let mut refused = Client::connect(server.addr, SimpleFrame).unwrap();
    refused.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = refused.send(b"anyone?");
    assert!(
        matches!(refused.recv(), Ok(None) | Err(_)),
        "refused connection is closed"
    );

    // on_connection_opened
    handler.in_opened.store(true, Ordering::Release);
    let mut opened_victim = Client::connect(server.addr, SimpleFrame).unwrap();
    opened_victim.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = opened_victim.send(b"hello?");
    assert!(matches!(opened_victim.recv(), Ok(None) | Err(_)));
    wait_until("two panicked removals", || {
        handler
            .removed
            .lock()
            .iter()
            .filter(|(_, k)| *k == "panicked")
            .count()
            == 2
    });

    // on_connection_removed: logged, nothing else to do; the server keeps going.
    handler.in_removed.store(true, Ordering::Release);
    drop(healthy(server.addr));
    wait_until("its removal", || {
        handler.removals.load(Ordering::Acquire) == 3
    });

    // The bystander never noticed, and new connections are served.
    for _ in 0..3 {
        bystander.send(b"still there").unwrap();
        assert_eq!(bystander.recv().unwrap().unwrap(), b"still there");
    }
    drop(healthy(server.addr));
    server.stop().unwrap();

    let removed = handler.removed.lock().clone();
    let panicked = removed.iter().filter(|(_, k)| *k == "panicked").count();
    assert_eq!(panicked, 2, "{removed:?}");
    // Every opened connection removed exactly once (bystander at shutdown).
    let mut ids: Vec<u64> = removed.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), removed.len(), "no connection removed twice");
}
