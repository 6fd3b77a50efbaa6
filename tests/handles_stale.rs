//! Guarantee 5: a handle whose connection closed never reaches the connection that reused its
//! table slot and its file descriptor number. Alone in its test binary, so no other test
//! takes the descriptor number between the two connections.

mod common;

use std::sync::Arc;

use hydrogen::client::Client;
use hydrogen::{Config, SendError, SimpleFrame};

use common::{DEADLINE, Recorder, TestServer, wait_until};

#[test]
fn stale_handle_fails_and_the_new_tenant_receives_nothing() {
    let handler = Arc::new(Recorder::new(SimpleFrame, |_, _| {}));
    // A one-slot table: the second connection must take the first one's slot.
    let config = Config {
        max_threads: 2,
        pre_allocated: 1,
        ..Config::default()
    };
    let server = TestServer::start(config, handler.clone());

    let first = Client::connect(server.addr, SimpleFrame).unwrap();
    let stale = handler.nth_opened(1);
    drop(first);
    assert_eq!(handler.removal_of(stale.id()), "peer_closed");

    let mut second = Client::connect(server.addr, SimpleFrame).unwrap();
    second.set_read_timeout(Some(DEADLINE)).unwrap();
    let fresh = handler.nth_opened(2);
    let fds = handler.fds.lock().clone();
    assert_eq!(
        fds[0], fds[1],
        "the new connection reuses the descriptor number"
    );
    assert_ne!(stale.id(), fresh.id());

    assert!(stale.is_closed());
    assert!(matches!(stale.send(b"stale"), Err(SendError::Closed)));
    stale.close(); // must not touch the new tenant either
    fresh.send(b"fresh").unwrap();
    assert_eq!(
        second.recv().unwrap().unwrap(),
        b"fresh",
        "nothing stale came first"
    );
    assert!(!fresh.is_closed());

    // Still serving the new tenant after the stale close.
    fresh.send(b"again").unwrap();
    assert_eq!(second.recv().unwrap().unwrap(), b"again");
    wait_until("exactly one removal so far", || {
        handler.removed.lock().len() == 1
    });
    server.stop().unwrap();
    assert_eq!(handler.removal_of(fresh.id()), "shutdown");
}
